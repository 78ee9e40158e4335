//! The EC2 side of the test bed: moto (started by `make test`), a fault-injecting proxy in
//! front of it that the operator talks to, and a node bridge that plays the kubelet of
//! each instance Barge launches.
//!
//! - The **proxy** forwards EC2 Query API calls to moto and records them. Per compute
//!   environment (found from the `barge.dev/compute-environment` tag in the request) it
//!   can answer `RequestLimitExceeded` or `InternalError` for the next N launch calls, and
//!   refuse chosen instance types with `InsufficientInstanceCapacity` the way EC2 does:
//!   in CreateFleet's error set, while the other overrides may still be fulfilled.
//! - The **bridge** polls moto for running instances tagged for a cluster and creates a
//!   kwok Node for each, with the instance type's shape and `aws:///<zone>/<id>` as its
//!   providerID; it deletes the Node when the instance terminates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::json;

pub const CE_TAG: &str = "barge.dev/compute-environment";

/// Faults for one compute environment's launch calls.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Instance types EC2 has no capacity for.
    pub no_capacity: HashSet<String>,
    /// The next this many launch calls are throttled (RequestLimitExceeded).
    pub throttle: u32,
    /// The next this many launch calls fail with a 500 InternalError.
    pub server_errors: u32,
}

/// One call the operator made.
#[derive(Clone, Debug)]
pub struct Call {
    pub action: String,
    pub compute_environment: Option<String>,
    pub params: Vec<(String, String)>,
    /// The fault answered instead of (or on top of) moto's reply.
    pub injected: Option<String>,
}

impl Call {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ProxyState {
    faults: HashMap<String, Faults>,
    calls: Vec<Call>,
}

pub struct Ec2Proxy {
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
}

pub fn moto_url() -> String {
    std::env::var("BARGE_MOTO_URL").expect("BARGE_MOTO_URL: the moto server `make test` starts")
}

/// moto's default subnets of us-east-1a and us-east-1b (zone order), and an AMI it knows:
/// what stands in for an account's own in the tests.
pub async fn moto_subnets_and_image() -> (Vec<String>, String) {
    let ec2 = moto().await;
    let mut subnets: Vec<(String, String)> = ec2
        .describe_subnets()
        .send()
        .await
        .unwrap()
        .subnets()
        .iter()
        .filter_map(|s| Some((s.availability_zone()?.to_string(), s.subnet_id()?.to_string())))
        .filter(|(zone, _)| zone == "us-east-1a" || zone == "us-east-1b")
        .collect();
    subnets.sort();
    subnets.dedup_by(|a, b| a.0 == b.0);
    assert!(!subnets.is_empty(), "moto has default subnets");
    let image = ec2.describe_images().send().await.unwrap().images()[0].image_id().unwrap().to_string();
    (subnets.into_iter().map(|(_, id)| id).collect(), image)
}

/// A client straight to moto (not through the proxy): what the tests use to look.
pub async fn moto() -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// An SQS client straight to moto, for the queue EC2's instance notices arrive on.
pub async fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// An EventBridge event about an EC2 instance, as the rule delivers it to SQS.
pub fn ec2_event(detail_type: &str, detail: serde_json::Value) -> String {
    json!({
        "version": "0", "id": uuid_like(), "detail-type": detail_type,
        "source": "aws.ec2", "account": "123456789012", "time": "2026-12-04T12:00:00Z",
        "region": "us-east-1", "resources": [], "detail": detail,
    })
    .to_string()
}

fn uuid_like() -> String {
    format!("{:032x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// Starts a runtime on its own thread that outlives every test's runtime.
fn background<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    });
}

impl Ec2Proxy {
    /// The proxy of this test process (started on first use).
    pub fn get() -> &'static Ec2Proxy {
        static PROXY: OnceLock<Ec2Proxy> = OnceLock::new();
        PROXY.get_or_init(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let state = Arc::new(Mutex::new(ProxyState::default()));
            let st = state.clone();
            background(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let upstream: HttpClient<HttpConnector, Full<Bytes>> =
                    HttpClient::builder(TokioExecutor::new()).build_http();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (st, upstream) = (st.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |req| handle(req, st.clone(), upstream.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Ec2Proxy { url, state }
        })
    }

    pub fn set_faults(&self, ce: &str, faults: Faults) {
        self.state.lock().unwrap().faults.insert(ce.to_string(), faults);
    }

    /// Calls of `action` made for `ce`.
    pub fn calls(&self, action: &str, ce: &str) -> Vec<Call> {
        let st = self.state.lock().unwrap();
        st.calls
            .iter()
            .filter(|c| c.action == action && c.compute_environment.as_deref() == Some(ce))
            .cloned()
            .collect()
    }
}

fn error_response(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>injected</RequestID></Response>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn capacity_error_item(ty: &str, subnet: &str, lifecycle: &str) -> String {
    format!(
        "<item><launchTemplateAndOverrides><overrides><instanceType>{ty}</instanceType><subnetId>{subnet}\
         </subnetId></overrides></launchTemplateAndOverrides><lifecycle>{lifecycle}</lifecycle>\
         <errorCode>InsufficientInstanceCapacity</errorCode><errorMessage>We currently do not have \
         sufficient {ty} capacity in the Availability Zone you requested.</errorMessage></item>"
    )
}

/// Drops the CreateFleet overrides of types without capacity, renumbering the rest;
/// returns the new parameters and the error items for what was dropped.
fn drop_overrides(
    params: &[(String, String)],
    no_capacity: &HashSet<String>,
) -> (Vec<(String, String)>, Vec<String>) {
    const PREFIX: &str = "LaunchTemplateConfigs.1.Overrides.";
    let mut groups: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    let mut rest = Vec::new();
    for (k, v) in params {
        match k.strip_prefix(PREFIX).and_then(|r| r.split_once('.')) {
            Some((n, field)) if n.parse::<u32>().is_ok() => {
                groups.entry(n.parse().unwrap()).or_default().push((field.to_string(), v.clone()))
            }
            _ => rest.push((k.clone(), v.clone())),
        }
    }
    let lifecycle = match params.iter().find(|(k, _)| k.ends_with("DefaultTargetCapacityType")) {
        Some((_, v)) if v == "spot" => "spot",
        _ => "on-demand",
    };
    let mut errors = Vec::new();
    let mut kept = 0;
    for fields in groups.into_values() {
        let get = |f: &str| fields.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone()).unwrap_or_default();
        let ty = get("InstanceType");
        if no_capacity.contains(&ty) {
            errors.push(capacity_error_item(&ty, &get("SubnetId"), lifecycle));
            continue;
        }
        kept += 1;
        for (f, v) in fields {
            rest.push((format!("{PREFIX}{kept}.{f}"), v));
        }
    }
    (rest, errors)
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<ProxyState>>,
    upstream: HttpClient<HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.clone()).unwrap_or_default();
    let ce = params.iter().find(|(k, v)| k.ends_with(".Key") && v == CE_TAG).and_then(|(k, _)| {
        let value_key = format!("{}.Value", k.trim_end_matches(".Key"));
        params.iter().find(|(k2, _)| *k2 == value_key).map(|(_, v)| v.clone())
    });
    let launch = action == "CreateFleet" || action == "RunInstances";
    let mut injected = None;
    let mut error_items = Vec::new();
    let mut reply = None;
    {
        let mut s = st.lock().unwrap();
        if launch && let Some(f) = ce.as_ref().and_then(|c| s.faults.get_mut(c)) {
            if f.throttle > 0 {
                f.throttle -= 1;
                injected = Some("RequestLimitExceeded".to_string());
                reply = Some(error_response(503, "RequestLimitExceeded", "Request limit exceeded."));
            } else if f.server_errors > 0 {
                f.server_errors -= 1;
                injected = Some("InternalError".to_string());
                reply = Some(error_response(500, "InternalError", "An internal error has occurred."));
            } else if action == "RunInstances" {
                let ty = params.iter().find(|(k, _)| k == "InstanceType").map(|(_, v)| v.clone());
                if ty.is_some_and(|t| f.no_capacity.contains(&t)) {
                    injected = Some("InsufficientInstanceCapacity".to_string());
                    reply = Some(error_response(
                        500,
                        "InsufficientInstanceCapacity",
                        "We currently do not have sufficient capacity in the Availability Zone you requested.",
                    ));
                }
            } else if !f.no_capacity.is_empty() {
                let (kept, errors) = drop_overrides(&params, &f.no_capacity);
                if !errors.is_empty() {
                    injected = Some("InsufficientInstanceCapacity".to_string());
                    error_items = errors;
                    params = kept;
                }
            }
        }
        s.calls.push(Call {
            action: action.clone(),
            compute_environment: ce,
            params: params.clone(),
            injected,
        });
    }
    if let Some(r) = reply {
        return Ok(r);
    }
    let overrides_left = params.iter().any(|(k, _)| k.starts_with("LaunchTemplateConfigs.1.Overrides."));
    if !error_items.is_empty() && !overrides_left {
        // Nothing left to launch: EC2 answers with only the error set.
        let body = format!(
            "<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>injected\
             </requestId><fleetId>fleet-injected</fleetId><errorSet>{}</errorSet><fleetInstanceSet/>\
             </CreateFleetResponse>",
            error_items.join("")
        );
        return Ok(Response::builder()
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(body)))
            .unwrap());
    }
    let new_body: String =
        form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish();
    let mut builder = Request::builder().method(parts.method).uri(format!("{}{}", moto_url(), parts.uri));
    for (k, v) in parts.headers.iter() {
        if k != "content-length" && k != "host" {
            builder = builder.header(k, v);
        }
    }
    let forwarded = builder.body(Full::new(Bytes::from(new_body))).unwrap();
    let resp = match upstream.request(forwarded).await {
        Ok(r) => r,
        Err(e) => return Ok(error_response(502, "ProxyError", &e.to_string())),
    };
    let (mut parts, body) = resp.into_parts();
    let mut bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !error_items.is_empty() {
        let text = String::from_utf8_lossy(&bytes).to_string();
        let items = format!("<errorSet>{}</errorSet>", error_items.join(""));
        bytes = Bytes::from(text.replacen(
            "</CreateFleetResponse>",
            &format!("{items}</CreateFleetResponse>"),
            1,
        ));
    }
    parts.headers.remove("content-length");
    Ok(Response::from_parts(parts, Full::new(bytes)))
}

/// Plays the kubelet for the instances of `cluster`: a Node per running instance, gone
/// when the instance is. Instances of `never_join` types never get a Node.
pub fn start_node_bridge(cluster: &str, never_join: HashSet<String>) {
    let cluster = cluster.to_string();
    background(async move {
        let kube = super::client().await;
        let nodes: Api<Node> = Api::all(kube);
        let ec2 = moto().await;
        let mut joined: HashMap<String, String> = HashMap::new();
        let mut gone: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(out) = ec2
                .describe_instances()
                .filters(Filter::builder().name("tag:barge.dev/cluster").values(&cluster).build())
                .send()
                .await
            else {
                continue;
            };
            for inst in out.reservations().iter().flat_map(|r| r.instances()) {
                let id = inst.instance_id().unwrap_or_default().to_string();
                let state =
                    inst.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                let ty = inst.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default();
                if state == "running" && !joined.contains_key(&id) && !never_join.contains(&ty) {
                    let Some(shape) = barge::capacity::catalog::lookup(&ty) else { continue };
                    let zone = inst.placement().and_then(|p| p.availability_zone()).unwrap_or("us-east-1a");
                    let name = format!("ip-{}.ec2.internal", id.trim_start_matches("i-"));
                    let q = |r: barge::resources::Res| json!({"cpu": format!("{}m", r.millicpu), "memory": format!("{}Mi", r.memory_mib), "pods": "110"});
                    let node: Node = serde_json::from_value(json!({
                        "metadata": {
                            "name": name,
                            "labels": {
                                "node.kubernetes.io/instance-type": ty,
                                "topology.kubernetes.io/zone": zone,
                                "kubernetes.io/hostname": name,
                                "type": "kwok",
                            },
                            "annotations": {"kwok.x-k8s.io/node": "fake"},
                        },
                        "spec": {"providerID": format!("aws:///{zone}/{id}")},
                        "status": {"capacity": q(shape.capacity()), "allocatable": q(shape.allocatable())},
                    }))
                    .unwrap();
                    match nodes.create(&PostParams::default(), &node).await {
                        Ok(_) => {
                            joined.insert(id, name);
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {
                            joined.insert(id, name);
                        }
                        Err(e) => eprintln!("node bridge: {e}"),
                    }
                } else if matches!(state.as_str(), "shutting-down" | "terminated")
                    && let Some(name) = joined.get(&id)
                    && gone.insert(id.clone())
                {
                    let _ = barge::k8s::delete_if_present(&nodes, name).await;
                }
            }
        }
    });
}
