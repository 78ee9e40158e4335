//! `barge run`: logging, providers, the metrics and probe server, leader election, and then
//! the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing_subscriber::EnvFilter;

use crate::controller::{self, Options};
use crate::lease::LeaseLock;
use crate::metrics::{self, metrics};
use crate::provider::Providers;
use crate::provider::ec2::{Ec2Provider, Ec2Settings};
use crate::provider::local::LocalProvider;
use crate::provider::sqs::SqsQueue;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Enable the local provider (simulated kwok nodes).
    #[arg(long, env = "BARGE_LOCAL_PROVIDER", default_value_t = true, action = clap::ArgAction::Set)]
    local_provider: bool,
    /// Local provider: how often the simulated Spot market takes back a Spot node, per node
    /// and hour (0: never). The attempts on it end as host loss and are retried.
    #[arg(long, env = "BARGE_LOCAL_SPOT_INTERRUPTIONS", default_value_t = 0.0)]
    local_spot_interruptions: f64,
    /// Local provider: the simulated Spot market's seed (prices and interruptions).
    #[arg(long, env = "BARGE_LOCAL_SPOT_SEED", default_value_t = 1)]
    local_spot_seed: u64,
    /// Enable the ec2 provider (credentials, region and endpoint from the AWS chain).
    #[arg(long, env = "BARGE_EC2_PROVIDER", default_value_t = false, action = clap::ArgAction::Set)]
    ec2_provider: bool,
    /// Name of this installation, tagged on every instance as barge.dev/cluster.
    #[arg(long, env = "BARGE_CLUSTER_NAME", default_value = "barge")]
    cluster_name: String,
    /// How long an instance type that had no EC2 capacity is skipped.
    #[arg(long, env = "BARGE_CAPACITY_COOLDOWN_SECONDS", default_value_t = 180)]
    capacity_cooldown_seconds: u64,
    /// How long an instance may run without its node joining before it is terminated.
    #[arg(long, env = "BARGE_REGISTRATION_TIMEOUT_SECONDS", default_value_t = 600)]
    registration_timeout_seconds: u64,
    /// An SQS queue EC2's instance notices arrive on (an EventBridge rule sends it Spot
    /// interruption warnings, rebalance recommendations and state changes); repeatable, one
    /// per region. Credentials and endpoint (AWS_ENDPOINT_URL_SQS) from the AWS chain.
    #[arg(long = "interruption-queue-url", env = "BARGE_INTERRUPTION_QUEUE_URL", value_delimiter = ',')]
    interruption_queue_urls: Vec<String>,
    /// How long one receive from an interruption queue waits for a message (SQS long
    /// polling, at most 20).
    #[arg(long, env = "BARGE_INTERRUPTION_QUEUE_WAIT_SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=20))]
    interruption_queue_wait_seconds: u64,
    /// Run only while holding the leader Lease (for several replicas).
    #[arg(long, env = "BARGE_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "BARGE_LEASE_NAME", default_value = "barge-leader")]
    lease_name: String,
    /// How long a leader that stops renewing keeps the Lease.
    #[arg(long, env = "BARGE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "BARGE_METRICS_BIND", default_value = "0.0.0.0:8080")]
    metrics_bind: SocketAddr,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, env = "BARGE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "BARGE_LOG_JSON")]
    log_json: bool,
    /// Serve the AWS Batch API here (e.g. 0.0.0.0:8443); off unless set.
    #[arg(long, env = "BARGE_BATCH_API_ADDR")]
    batch_api_addr: Option<SocketAddr>,
    /// The region the AWS Batch API answers for (in ARNs).
    #[arg(long, env = "BARGE_BATCH_API_REGION", default_value = "us-east-1")]
    batch_api_region: String,
    /// The account id in the AWS Batch API's ARNs.
    #[arg(long, env = "BARGE_BATCH_API_ACCOUNT_ID", default_value = "000000000000")]
    batch_api_account_id: String,
    /// Requests each AWS Batch API key may make per second (0: no limit). AWS's own SubmitJob
    /// quota is 50 a second.
    #[arg(long, env = "BARGE_BATCH_API_REQUESTS_PER_SECOND", default_value_t = 50)]
    batch_api_requests_per_second: u32,
    /// Serve the AWS Batch API over HTTPS with this PEM certificate chain (with --batch-api-tls-key).
    #[arg(long, env = "BARGE_BATCH_API_TLS_CERT", requires = "batch_api_tls_key")]
    batch_api_tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --batch-api-tls-cert.
    #[arg(long, env = "BARGE_BATCH_API_TLS_KEY", requires = "batch_api_tls_cert")]
    batch_api_tls_key: Option<std::path::PathBuf>,
    /// Namespace of the Secrets holding the AWS Batch API's keys (see `barge credentials`).
    #[arg(long, env = "BARGE_CREDENTIALS_NAMESPACE", default_value = crate::batch_api::DEFAULT_CREDENTIALS_NAMESPACE)]
    credentials_namespace: String,
    /// Name of this replica, in events and in the leader Lease.
    #[arg(long, env = "POD_NAME", default_value = "barge")]
    instance: String,
    /// apiserver requests a second this operator makes at most, after a burst of
    /// --kube-api-burst (0: no limit). Its watches count once each, when they open.
    #[arg(long, env = "BARGE_KUBE_API_QPS", default_value_t = 1000)]
    kube_api_qps: u32,
    /// apiserver requests this operator may make at once before --kube-api-qps applies.
    #[arg(long, env = "BARGE_KUBE_API_BURST", default_value_t = 2000)]
    kube_api_burst: u32,
    /// Changes one of the loops' tunables, e.g. `scheduling-tick=500ms` (repeatable; see
    /// `controller::Tunables` for the names and defaults).
    #[arg(long = "tune", env = "BARGE_TUNE", value_delimiter = ',', value_name = "NAME=VALUE")]
    tune: Vec<String>,
    #[command(flatten)]
    archive: super::ArchiveArgs,
    /// How often a running container's output is archived (sooner while it prints more
    /// than a MiB between reads); a container's output is read once more when it ends.
    #[arg(long, env = "BARGE_LOGS_CHECKPOINT_SECONDS", default_value_t = 60)]
    logs_checkpoint_seconds: u64,
    /// Archive the output of pods on simulated (kwok) nodes too (benchmarks: kwok serves
    /// what it is told to).
    #[arg(long, env = "BARGE_LOGS_SIMULATED", default_value_t = false, action = clap::ArgAction::Set)]
    logs_simulated: bool,
    /// Days archived output is kept (0: for ever, or as the bucket's lifecycle rule says).
    #[arg(long, env = "BARGE_LOGS_RETENTION_DAYS", default_value_t = 0)]
    logs_retention_days: u32,
    /// Let a JobTrigger that names no credentials Secret read its SQS queue with the
    /// operator's own AWS credentials (any namespace's trigger could then read any queue
    /// the operator may).
    #[arg(long, env = "BARGE_TRIGGER_OPERATOR_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    trigger_operator_credentials: bool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut tunables = controller::Tunables::default();
    for setting in &args.tune {
        tunables.set(setting).map_err(|e| anyhow::anyhow!("--tune {e}"))?;
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},kube=warn,aws=warn", args.log_level)));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        local_provider = args.local_provider,
        ec2_provider = args.ec2_provider,
        leader_elect = args.leader_elect,
        instance = %args.instance,
        "starting Barge"
    );
    let limit = crate::throttle::Limit::new(args.kube_api_qps, args.kube_api_burst);
    tracing::info!(
        qps = args.kube_api_qps,
        burst = limit.map_or(0, |l| l.burst.get()),
        "apiserver request limit"
    );
    let client = kube_client(limit).await?;

    // /readyz: the stores have synced, or this replica is a standby waiting for the Lease.
    let synced = Arc::new(AtomicBool::new(false));
    let ready = {
        let (synced, elect) = (synced.clone(), args.leader_elect);
        Arc::new(move || synced.load(Ordering::Acquire) || (elect && metrics().leader.get() == 0))
    };
    tokio::spawn(metrics::serve(args.metrics_bind, ready));
    let archive = args.archive.bucket().await;
    if let Some(b) = &archive {
        tracing::info!(bucket = b.name(), prefix = %args.archive.prefix, "containers' output is archived");
    }
    // Every replica answers the AWS Batch API, leader or not.
    if let Some(addr) = args.batch_api_addr {
        let config = crate::batch_api::Config {
            addr,
            archive: archive.clone(),
            retention_days: args.logs_retention_days,
            region: args.batch_api_region.clone(),
            account_id: args.batch_api_account_id.clone(),
            credentials_namespace: args.credentials_namespace.clone(),
            requests_per_second: std::num::NonZeroU32::new(args.batch_api_requests_per_second),
            tls: args
                .batch_api_tls_cert
                .clone()
                .zip(args.batch_api_tls_key.clone())
                .map(|(cert, key)| crate::batch_api::TlsFiles { cert, key }),
            // MANAGED environments made through the API launch EC2 instances when this
            // operator runs the ec2 provider, else simulated nodes.
            managed_provider: match args.ec2_provider {
                true => crate::api::compute_environment::Provider::Ec2,
                false => crate::api::compute_environment::Provider::Local,
            },
        };
        // A certificate that does not load stops the operator at start, not at the first request.
        let tls = config.tls.as_ref().map(crate::batch_api::tls_acceptor).transpose()?;
        tokio::spawn(crate::batch_api::serve(client.clone(), config, tls));
    }

    let providers = Providers {
        local: args.local_provider.then(|| {
            let market = crate::capacity::spot::SpotMarket {
                seed: args.local_spot_seed,
                interruptions_per_node_hour: args.local_spot_interruptions.max(0.0),
                ..Default::default()
            };
            Box::new(LocalProvider::new(client.clone(), market)) as _
        }),
        ec2: if args.ec2_provider {
            let settings = Ec2Settings {
                cluster: args.cluster_name.clone(),
                capacity_cooldown: Duration::from_secs(args.capacity_cooldown_seconds),
                registration_timeout: Duration::from_secs(args.registration_timeout_seconds),
            };
            Some(Box::new(Ec2Provider::new(settings).await) as _)
        } else {
            None
        },
    };
    let mut notice_queues = Vec::new();
    for url in args.interruption_queue_urls.iter().filter(|u| !u.is_empty()) {
        notice_queues.push(Arc::new(SqsQueue::new(url.clone()).await));
    }
    let options = Options {
        instance: args.instance.clone(),
        synced,
        tunables,
        notice_queues,
        notice_wait: Duration::from_secs(args.interruption_queue_wait_seconds),
        trigger_operator_credentials: args.trigger_operator_credentials,
        // EFS volumes are reached in the cluster's region: the AWS chain's, else the one
        // the AWS Batch API answers for.
        region: std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| args.batch_api_region.clone()),
        archive: archive.map(|bucket| {
            let settings = controller::archive::Settings {
                checkpoint: Duration::from_secs(args.logs_checkpoint_seconds.max(1)),
                simulated: args.logs_simulated,
                retention_days: args.logs_retention_days,
            };
            (bucket, settings)
        }),
    };
    let operator = controller::run(client.clone(), providers, options);
    if !args.leader_elect {
        return Ok(operator.await?);
    }
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(client, &args.lease_namespace),
        &args.lease_name,
        &args.instance,
        Duration::from_secs(args.lease_duration_seconds),
    );
    Ok(lock.lead(operator).await??)
}

/// kube's default client for the inferred config, with the request limit under it.
async fn kube_client(limit: Option<crate::throttle::Limit>) -> anyhow::Result<Client> {
    let config = kube::Config::infer().await?;
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(match limit {
        Some(limit) => builder.with_layer(&crate::throttle::ThrottleLayer::new(limit)).build(),
        None => builder.build(),
    })
}
