//! The ec2 provider: compute environments backed by EC2 On-Demand or Spot instances.
//!
//! - Launches go through **CreateFleet type `instant`** when the environment has a launch
//!   template: every type that holds the packed jobs is an override (× every subnet), the
//!   environment's allocation strategy becomes the fleet's. Without a launch template, or
//!   when `securityGroupIds` / `instanceProfile` are set (fleet overrides cannot carry
//!   them), **RunInstances** is used, one type and subnet at a time in order of preference.
//! - Every instance is tagged `barge.dev/cluster` and `barge.dev/compute-environment`, so
//!   the periodic sync finds them all with one DescribeInstances per region: it labels the
//!   Node an instance registers as (matched by `spec.providerID`), deletes the Node of an
//!   instance that is going away (Spot interruption), and terminates instances no node
//!   claimed in time or whose compute environment is gone.
//! - An offering (region, type, On-Demand or Spot) that reports no capacity is not asked
//!   for again until its cooldown ends. API errors (throttling, 5xx) are retried by the SDK
//!   with jittered backoff, then the environment backs off exponentially.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType,
    IamInstanceProfileSpecification, InstanceMarketOptionsRequest, InstanceType as Ec2Type,
    LaunchTemplateSpecification, MarketType, OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy,
    SpotMarketOptions, SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use rand::Rng;
use tracing::{debug, info, warn};

use super::{LaunchReport, Launched, NodeProvider, SyncReport};
use crate::api::compute_environment::{AllocationStrategy, CapacityType};
use crate::api::{ComputeEnvironment, LABEL_COMPUTE_ENVIRONMENT};
use crate::capacity::{InstanceType, Offer, catalog};
use crate::k8s::{lost_host_reason, node_instance_id, node_key};
use crate::{ProviderError, Result};

/// Tag naming the Barge installation (cluster) an instance belongs to.
pub const TAG_CLUSTER: &str = "barge.dev/cluster";

/// Error codes that mean "no capacity for this offering now": cool it down, try another.
const CAPACITY_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "InsufficientHostCapacity",
    "Unsupported",
];

/// How long a freshly launched instance may be missing from DescribeInstances (EC2 is
/// eventually consistent) before the sync stops counting it.
const DESCRIBE_GRACE: Duration = Duration::from_secs(60);
/// Longest backoff between launch attempts of one environment after API errors.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Ec2Settings {
    /// Value of the `barge.dev/cluster` tag: one Barge installation's instances.
    pub cluster: String,
    /// How long an offering that had no capacity is skipped.
    pub capacity_cooldown: Duration,
    /// How long an instance may run without its Node appearing before it is terminated.
    pub registration_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Market {
    OnDemand,
    Spot,
}

impl Market {
    fn of(ce: &ComputeEnvironment) -> Market {
        match ce.spec.capacity_type {
            CapacityType::OnDemand => Market::OnDemand,
            CapacityType::Spot => Market::Spot,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Market::OnDemand => "On-Demand",
            Market::Spot => "Spot",
        }
    }
}

/// An instance Barge launched, as last described (or as launched, until described).
#[derive(Clone, Debug)]
struct Instance {
    region: String,
    compute_environment: String,
    instance_type: String,
    state: String,
    /// Seconds since the epoch.
    launched_at: i64,
    /// When this operator last saw it in a launch or a describe.
    seen: Instant,
}

#[derive(Default)]
struct State {
    /// Offerings with no capacity: until when, and what EC2 said.
    unavailable: HashMap<(String, String, Market), (Instant, String)>,
    instances: HashMap<String, Instance>,
    /// Per environment: no launch before this instant, after this many failures in a row.
    backoff: HashMap<String, (Instant, u32)>,
    /// Latest Spot price per (region, type), lowest across zones, and when it was read.
    spot_prices: HashMap<(String, String), f64>,
    spot_prices_read: HashMap<String, Instant>,
}

/// How often Spot prices are read again.
const SPOT_PRICE_REFRESH: Duration = Duration::from_secs(600);

pub struct Ec2Provider {
    settings: Ec2Settings,
    config: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
    state: Mutex<State>,
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Ec2Provider {
    /// Reads credentials, region and endpoint from the standard AWS chain (IRSA, Pod
    /// Identity, environment; `AWS_ENDPOINT_URL_EC2` for a test endpoint).
    pub async fn new(settings: Ec2Settings) -> Self {
        let retry = RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(500))
            .with_max_backoff(Duration::from_secs(10));
        let config = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry).load().await;
        Ec2Provider { settings, config, clients: Mutex::default(), state: Mutex::default() }
    }

    fn region_of(&self, ce: &ComputeEnvironment) -> String {
        ce.spec
            .region
            .clone()
            .or_else(|| self.config.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".into())
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("clients lock");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.config)
                    .region(aws_config::Region::new(region.to_string()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }

    fn is_unavailable(&self, region: &str, ty: &str, market: Market) -> bool {
        let mut st = self.state.lock().expect("ec2 state lock");
        let key = (region.to_string(), ty.to_string(), market);
        match st.unavailable.get(&key) {
            Some((until, _)) if *until > Instant::now() => true,
            Some(_) => {
                st.unavailable.remove(&key);
                false
            }
            None => false,
        }
    }

    fn cool_down(&self, region: &str, ty: &str, market: Market, why: String) {
        warn!(region, instance_type = ty, market = market.as_str(), %why, "offering cooled down");
        self.state.lock().expect("ec2 state lock").unavailable.insert(
            (region.to_string(), ty.to_string(), market),
            (Instant::now() + self.settings.capacity_cooldown, why),
        );
    }

    /// Seconds until the environment may launch again, if it is backing off.
    fn backing_off(&self, ce: &str) -> Option<u64> {
        let st = self.state.lock().expect("ec2 state lock");
        let (until, _) = st.backoff.get(ce)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs() + 1)
    }

    fn record_failure(&self, ce: &str) {
        let mut st = self.state.lock().expect("ec2 state lock");
        let failures = st.backoff.get(ce).map_or(0, |(_, n)| *n) + 1;
        let base = Duration::from_secs(1 << failures.min(7)).min(MAX_BACKOFF);
        let jitter = rand::rng().random_range(0.5..1.0);
        st.backoff.insert(ce.to_string(), (Instant::now() + base.mul_f64(jitter), failures));
    }

    fn record_success(&self, ce: &str) {
        self.state.lock().expect("ec2 state lock").backoff.remove(ce);
    }

    fn remember(&self, id: &str, region: &str, ce: &str, ty: &str) {
        self.state.lock().expect("ec2 state lock").instances.insert(
            id.to_string(),
            Instance {
                region: region.into(),
                compute_environment: ce.into(),
                instance_type: ty.into(),
                state: "pending".into(),
                launched_at: now_secs(),
                seen: Instant::now(),
            },
        );
    }

    fn tags(&self, ce: &ComputeEnvironment) -> TagSpecification {
        let mut tags = vec![
            Tag::builder().key(TAG_CLUSTER).value(&self.settings.cluster).build(),
            Tag::builder().key(LABEL_COMPUTE_ENVIRONMENT).value(ce.name_any()).build(),
            Tag::builder().key("Name").value(format!("barge/{}", ce.name_any())).build(),
        ];
        tags.extend(ce.spec.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()));
        TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build()
    }

    /// The Spot price cap for a type: `bidPercentage` of its On-Demand price.
    fn max_price(ce: &ComputeEnvironment, ty: &InstanceType) -> Option<String> {
        let pct = ce.spec.bid_percentage?;
        Some(format!("{:.5}", ty.price * pct as f64 / 100.0))
    }

    /// Whether the launch must use RunInstances rather than CreateFleet, and why.
    pub fn needs_run_instances(ce: &ComputeEnvironment) -> Option<&'static str> {
        if ce.spec.launch_template.is_none() {
            Some("CreateFleet needs a launch template")
        } else if !ce.spec.security_group_ids.is_empty() || ce.spec.instance_profile.is_some() {
            Some("CreateFleet overrides cannot set security groups or an instance profile")
        } else {
            None
        }
    }

    async fn create_fleet(
        &self,
        ce: &ComputeEnvironment,
        region: &str,
        options: &[&'static InstanceType],
        count: u32,
        report: &mut LaunchReport,
    ) -> Result<()> {
        let market = Market::of(ce);
        let lt = ce.spec.launch_template.as_ref().expect("create_fleet is only used with a launch template");
        let spec = FleetLaunchTemplateSpecificationRequest::builder()
            .set_launch_template_id(lt.id.clone())
            .set_launch_template_name(lt.name.clone())
            .version(lt.version.clone().unwrap_or_else(|| "$Default".into()))
            .build();
        let mut overrides = Vec::new();
        for (rank, ty) in options.iter().enumerate() {
            for subnet in &ce.spec.subnets {
                let mut o = FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(Ec2Type::from(ty.name))
                    .subnet_id(subnet)
                    .set_image_id(ce.spec.image_id.clone())
                    .priority(rank as f64);
                if market == Market::Spot {
                    o = o.set_max_price(Self::max_price(ce, ty));
                }
                overrides.push(o.build());
            }
        }
        let config = FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(spec)
            .set_overrides(Some(overrides))
            .build();
        let capacity_type = match market {
            Market::OnDemand => DefaultTargetCapacityType::OnDemand,
            Market::Spot => DefaultTargetCapacityType::Spot,
        };
        let spot_strategy = match ce.spec.allocation_strategy {
            AllocationStrategy::SpotCapacityOptimized => SpotAllocationStrategy::CapacityOptimizedPrioritized,
            AllocationStrategy::SpotPriceCapacityOptimized => SpotAllocationStrategy::PriceCapacityOptimized,
            _ => SpotAllocationStrategy::LowestPrice,
        };
        let out = self
            .client(region)
            .create_fleet()
            .r#type(FleetType::Instant)
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(count as i32)
                    .default_target_capacity_type(capacity_type)
                    .build(),
            )
            .on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            )
            .spot_options(SpotOptionsRequest::builder().allocation_strategy(spot_strategy).build())
            .launch_template_configs(config)
            .tag_specifications(self.tags(ce))
            .send()
            .await;
        let out = counted("CreateFleet", out).map_err(|e| describe_error("CreateFleet", e))?;
        for inst in out.instances() {
            let ty_name = inst.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default();
            let ty = options.iter().find(|t| t.name == ty_name).copied().unwrap_or(options[0]);
            for id in inst.instance_ids() {
                self.remember(id, region, &ce.name_any(), ty.name);
                report.launched.push(Launched { key: id.clone(), ty });
            }
        }
        for err in out.errors() {
            let code = err.error_code().unwrap_or("Unknown");
            let ty = err
                .launch_template_and_overrides()
                .and_then(|l| l.overrides())
                .and_then(|o| o.instance_type())
                .map(|t| t.as_str().to_string());
            let msg = format!("{code}: {}", err.error_message().unwrap_or(""));
            if CAPACITY_ERRORS.contains(&code)
                && let Some(ty) = &ty
            {
                self.cool_down(region, ty, market, msg.clone());
            }
            let what = ty.map_or_else(String::new, |t| format!(" for {t}"));
            report.problems.push(format!("CreateFleet{what}: {msg}"));
        }
        Ok(())
    }

    async fn run_instances(
        &self,
        ce: &ComputeEnvironment,
        region: &str,
        options: &[&'static InstanceType],
        count: u32,
        report: &mut LaunchReport,
    ) -> Result<()> {
        let market = Market::of(ce);
        let client = self.client(region);
        for ty in options {
            let mut last_capacity_error = None;
            for subnet in &ce.spec.subnets {
                let mut req = client
                    .run_instances()
                    .instance_type(Ec2Type::from(ty.name))
                    .min_count(1)
                    .max_count(count as i32)
                    .subnet_id(subnet)
                    .set_image_id(ce.spec.image_id.clone())
                    .set_security_group_ids(
                        (!ce.spec.security_group_ids.is_empty()).then(|| ce.spec.security_group_ids.clone()),
                    )
                    .tag_specifications(self.tags(ce));
                if let Some(lt) = &ce.spec.launch_template {
                    req = req.launch_template(
                        LaunchTemplateSpecification::builder()
                            .set_launch_template_id(lt.id.clone())
                            .set_launch_template_name(lt.name.clone())
                            .set_version(lt.version.clone())
                            .build(),
                    );
                }
                if let Some(p) = &ce.spec.instance_profile {
                    let spec = if p.starts_with("arn:") {
                        IamInstanceProfileSpecification::builder().arn(p).build()
                    } else {
                        IamInstanceProfileSpecification::builder().name(p).build()
                    };
                    req = req.iam_instance_profile(spec);
                }
                if market == Market::Spot {
                    req = req.instance_market_options(
                        InstanceMarketOptionsRequest::builder()
                            .market_type(MarketType::Spot)
                            .spot_options(
                                SpotMarketOptions::builder().set_max_price(Self::max_price(ce, ty)).build(),
                            )
                            .build(),
                    );
                }
                match counted("RunInstances", req.send().await) {
                    Ok(out) => {
                        for inst in out.instances() {
                            if let Some(id) = inst.instance_id() {
                                self.remember(id, region, &ce.name_any(), ty.name);
                                report.launched.push(Launched { key: id.to_string(), ty });
                            }
                        }
                        return Ok(());
                    }
                    Err(e) if e.code().is_some_and(|c| CAPACITY_ERRORS.contains(&c)) => {
                        let msg = format!("{}: {}", e.code().unwrap_or(""), e.message().unwrap_or(""));
                        // No capacity in this subnet's zone: try the next subnet.
                        report.problems.push(format!("RunInstances for {} in {subnet}: {msg}", ty.name));
                        last_capacity_error = Some(msg);
                    }
                    Err(e) => return Err(describe_error("RunInstances", e).into()),
                }
            }
            // No zone had capacity for this type: skip it for a while, try the next type.
            if let Some(msg) = last_capacity_error {
                self.cool_down(region, ty.name, market, msg);
            }
        }
        Ok(())
    }

    async fn terminate_ids(&self, region: &str, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        info!(region, instances = ?ids, "terminating instances");
        let out = self.client(region).terminate_instances().set_instance_ids(Some(ids.clone())).send().await;
        match counted("TerminateInstances", out) {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {}
            Err(e) => return Err(describe_error("TerminateInstances", e).into()),
        }
        let mut st = self.state.lock().expect("ec2 state lock");
        for id in ids {
            if let Some(i) = st.instances.get_mut(&id) {
                i.state = "shutting-down".into();
            }
        }
        Ok(())
    }

    /// Every instance of this cluster in `region`: id, environment tag, type, state, launch time.
    async fn describe(&self, region: &str) -> Result<Vec<(String, Instance)>> {
        let mut pages = self
            .client(region)
            .describe_instances()
            .filters(
                Filter::builder().name(format!("tag:{TAG_CLUSTER}")).values(&self.settings.cluster).build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                counted("DescribeInstances", page).map_err(|e| describe_error("DescribeInstances", e))?;
            for inst in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = inst.instance_id() else { continue };
                let tag = |k: &str| inst.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value());
                out.push((
                    id.to_string(),
                    Instance {
                        region: region.into(),
                        compute_environment: tag(LABEL_COMPUTE_ENVIRONMENT).unwrap_or_default().into(),
                        instance_type: inst
                            .instance_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                        state: inst
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_string())
                            .unwrap_or_default(),
                        launched_at: inst.launch_time().map_or_else(now_secs, |t| t.secs()),
                        seen: Instant::now(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Reads the current Spot prices of the Spot environments' types in `region`.
    async fn refresh_spot_prices(&self, region: &str, ces: &[Arc<ComputeEnvironment>]) -> Result<()> {
        let due = {
            let st = self.state.lock().expect("ec2 state lock");
            st.spot_prices_read.get(region).is_none_or(|t| t.elapsed() > SPOT_PRICE_REFRESH)
        };
        let types: BTreeSet<&'static str> = ces
            .iter()
            .filter(|c| Market::of(c) == Market::Spot && self.region_of(c) == region)
            .flat_map(|c| catalog::resolve(&c.spec.instance_types).0)
            .map(|t| t.name)
            .collect();
        if !due || types.is_empty() {
            return Ok(());
        }
        let out = self
            .client(region)
            .describe_spot_price_history()
            .set_instance_types(Some(types.iter().map(|t| Ec2Type::from(*t)).collect()))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from(SystemTime::now()))
            .send()
            .await;
        let out = counted("DescribeSpotPriceHistory", out)
            .map_err(|e| describe_error("DescribeSpotPriceHistory", e))?;
        let mut st = self.state.lock().expect("ec2 state lock");
        for p in out.spot_price_history() {
            let (Some(ty), Some(price)) =
                (p.instance_type(), p.spot_price().and_then(|s| s.parse::<f64>().ok()))
            else {
                continue;
            };
            let key = (region.to_string(), ty.as_str().to_string());
            let entry = st.spot_prices.entry(key).or_insert(price);
            *entry = entry.min(price);
        }
        st.spot_prices_read.insert(region.to_string(), Instant::now());
        Ok(())
    }

    fn regions(&self, ces: &[Arc<ComputeEnvironment>]) -> BTreeSet<String> {
        let mut regions: BTreeSet<String> = ces
            .iter()
            .filter(|c| c.spec.provider == crate::api::compute_environment::Provider::Ec2)
            .map(|c| self.region_of(c))
            .collect();
        regions
            .extend(self.state.lock().expect("ec2 state lock").instances.values().map(|i| i.region.clone()));
        regions
    }
}

/// Counts an EC2 call (and its error code) in the metrics; passes the result on.
fn counted<T, E, R>(
    operation: &str,
    r: std::result::Result<T, aws_sdk_ec2::error::SdkError<E, R>>,
) -> std::result::Result<T, aws_sdk_ec2::error::SdkError<E, R>>
where
    E: ProvideErrorMetadata,
{
    let code = r.as_ref().err().map(|e| e.code().unwrap_or("Unknown").to_string());
    crate::metrics::metrics().ec2_call(operation, code.as_deref());
    r
}

/// An EC2 call's error, in words and by kind (the SDK error kept as its source).
fn describe_error<E, R>(op: &str, e: aws_sdk_ec2::error::SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{op} failed: {code}: {msg}"),
        (Some(code), None) => format!("{op} failed: {code}"),
        _ => format!("{op} failed: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
    };
    match e.code() {
        Some(c) if CAPACITY_ERRORS.contains(&c) => ProviderError::Capacity(message),
        Some(c) if c.contains("Throttl") || c == "RequestLimitExceeded" => ProviderError::Throttled(message),
        // Credentials that fail now may be rotated or fixed in IAM without any change to the
        // environment: those are retried (with backoff), not left waiting for a change.
        Some(c) if c.starts_with("InvalidParameter") => ProviderError::Misconfigured(message),
        Some(c) if c.ends_with(".NotFound") => ProviderError::NotFound(message),
        _ => ProviderError::Other { message, source: Some(Box::new(e)) },
    }
}

fn is_going_away(state: &str) -> bool {
    matches!(state, "shutting-down" | "terminated" | "stopping" | "stopped")
}

impl NodeProvider for Ec2Provider {
    fn launch<'a>(&'a self, ce: &'a ComputeEnvironment, offers: &'a [Offer]) -> BoxFuture<'a, LaunchReport> {
        Box::pin(async move {
            let mut report = LaunchReport::default();
            let name = ce.name_any();
            if let Some(secs) = self.backing_off(&name) {
                report
                    .problems
                    .push(format!("EC2 calls are backing off after errors; next launch in {secs}s"));
                return report;
            }
            let region = self.region_of(ce);
            let market = Market::of(ce);
            for offer in offers {
                let options: Vec<&'static InstanceType> = offer
                    .options
                    .iter()
                    .copied()
                    .filter(|t| !self.is_unavailable(&region, t.name, market))
                    .collect();
                if options.is_empty() {
                    continue;
                }
                let result = match Self::needs_run_instances(ce) {
                    Some(why) => {
                        debug!(why, "launching with RunInstances");
                        self.run_instances(ce, &region, &options, offer.count, &mut report).await
                    }
                    None => self.create_fleet(ce, &region, &options, offer.count, &mut report).await,
                };
                match result {
                    Ok(()) => self.record_success(&name),
                    Err(e) => {
                        self.record_failure(&name);
                        report.problems.push(e.to_string());
                        break;
                    }
                }
            }
            report
        })
    }

    fn terminate<'a>(&'a self, ce: &'a ComputeEnvironment, node: &'a Node) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = node_key(node);
            if key.starts_with("i-") {
                self.terminate_ids(&self.region_of(ce), vec![key]).await?;
            }
            Ok(())
        })
    }

    fn cleanup<'a>(
        &'a self,
        ce: &'a ComputeEnvironment,
        _nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let region = self.region_of(ce);
            let name = ce.name_any();
            let alive: Vec<String> = self
                .describe(&region)
                .await?
                .into_iter()
                .filter(|(_, i)| i.compute_environment == name && i.state != "terminated")
                .map(|(id, _)| id)
                .collect();
            let to_terminate: Vec<String> = {
                let st = self.state.lock().expect("ec2 state lock");
                alive
                    .iter()
                    .filter(|id| st.instances.get(*id).is_none_or(|i| i.state != "shutting-down"))
                    .cloned()
                    .collect()
            };
            self.terminate_ids(&region, to_terminate).await?;
            Ok(alive.is_empty())
        })
    }

    fn unavailable(&self, ce: &ComputeEnvironment) -> Vec<(&'static str, String)> {
        let (types, _) = catalog::resolve(&ce.spec.instance_types);
        let region = self.region_of(ce);
        let market = Market::of(ce);
        let st = self.state.lock().expect("ec2 state lock");
        types
            .iter()
            .filter_map(|t| {
                let (until, why) = st.unavailable.get(&(region.clone(), t.name.to_string(), market))?;
                let left = until.checked_duration_since(Instant::now())?;
                Some((
                    t.name,
                    format!(
                        "{why} ({} {} in {region}; retried in {}s)",
                        t.name,
                        market.as_str(),
                        left.as_secs() + 1
                    ),
                ))
            })
            .collect()
    }

    fn sync<'a>(
        &'a self,
        ces: &'a [Arc<ComputeEnvironment>],
        nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<SyncReport>> {
        Box::pin(async move {
            let mut report = SyncReport::default();
            for region in self.regions(ces) {
                if let Err(e) = self.refresh_spot_prices(&region, ces).await {
                    warn!(error = %e, "could not read Spot prices; costs use the On-Demand price");
                }
                let described = self.describe(&region).await?;
                let instances: HashMap<String, Instance> = {
                    let mut st = self.state.lock().expect("ec2 state lock");
                    // Launches not described yet are kept for a while (eventual consistency).
                    st.instances.retain(|id, i| {
                        i.region != region
                            || described.iter().any(|(d, _)| d == id)
                            || i.seen.elapsed() < DESCRIBE_GRACE
                    });
                    for (id, inst) in described {
                        st.instances.insert(id, inst);
                    }
                    st.instances
                        .iter()
                        .filter(|(_, i)| i.region == region)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                let mut claimed: HashMap<&str, &Node> = HashMap::new();
                for node in nodes {
                    let Some(id) = node_instance_id(node) else { continue };
                    let Some(inst) = instances.get(id) else { continue };
                    claimed.insert(id, node);
                    if is_going_away(&inst.state) {
                        let why = lost_host_reason(node)
                            .unwrap_or_else(|| format!("Host EC2 (instance {id}) terminated."));
                        report.gone.push((node.name_any(), why));
                    } else if node.labels().get(LABEL_COMPUTE_ENVIRONMENT) != Some(&inst.compute_environment)
                    {
                        report.register.push((node.name_any(), inst.compute_environment.clone()));
                    }
                }
                let mut orphans = Vec::new();
                let now = now_secs();
                for (id, inst) in &instances {
                    if claimed.contains_key(id.as_str()) || is_going_away(&inst.state) {
                        continue;
                    }
                    let ce = ces.iter().find(|c| c.name_any() == inst.compute_environment);
                    if ce.is_none() {
                        info!(instance = %id, ce = %inst.compute_environment, "instance of a deleted compute environment");
                        orphans.push(id.clone());
                    } else if now - inst.launched_at > self.settings.registration_timeout.as_secs() as i64 {
                        let why = format!(
                            "instance {id} did not register as a node within {}s",
                            self.settings.registration_timeout.as_secs()
                        );
                        let market = ce.map_or(Market::OnDemand, |c| Market::of(c));
                        self.cool_down(&region, &inst.instance_type, market, why);
                        orphans.push(id.clone());
                    }
                }
                self.terminate_ids(&region, orphans).await?;
            }
            Ok(report)
        })
    }

    fn launch_failed(&self, key: &str) -> bool {
        let st = self.state.lock().expect("ec2 state lock");
        st.instances.get(key).is_some_and(|i| is_going_away(&i.state))
    }

    fn price(&self, ce: &ComputeEnvironment, ty: &InstanceType) -> f64 {
        match Market::of(ce) {
            Market::OnDemand => ty.price,
            // The current Spot price, else what a Spot node may cost at most.
            Market::Spot => {
                let st = self.state.lock().expect("ec2 state lock");
                let cap = ty.price * ce.spec.bid_percentage.unwrap_or(100) as f64 / 100.0;
                st.spot_prices.get(&(self.region_of(ce), ty.name.to_string())).map_or(cap, |p| p.min(cap))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_instances_is_used_where_create_fleet_cannot_express_the_launch() {
        let ce = |extra: serde_json::Value| -> ComputeEnvironment {
            let mut spec = serde_json::json!({
                "provider": "ec2", "instanceTypes": ["m6i"], "maxvCpus": 8, "subnets": ["subnet-1"],
            });
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(serde_json::json!({
                "apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
                "metadata": {"name": "ce"}, "spec": spec,
            }))
            .unwrap()
        };
        let lt = serde_json::json!({"launchTemplate": {"name": "nodes"}});
        assert_eq!(Ec2Provider::needs_run_instances(&ce(lt.clone())), None);
        assert!(Ec2Provider::needs_run_instances(&ce(serde_json::json!({"imageId": "ami-1"}))).is_some());
        let mut with_sg = lt;
        with_sg["securityGroupIds"] = serde_json::json!(["sg-1"]);
        assert!(Ec2Provider::needs_run_instances(&ce(with_sg)).is_some());
    }
}
