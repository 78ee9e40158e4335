//! The `barge` command: the operator (`barge run`) and its tools.

use clap::{Parser, Subcommand};
use kube::Client;
use tracing_subscriber::EnvFilter;

use barge::controller::{self, Options};
use barge::provider::Providers;
use barge::provider::ec2::{Ec2Provider, Ec2Settings};
use barge::provider::local::LocalProvider;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "barge",
    version,
    about = "AWS Batch-style job queues and compute environments for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or in-cluster config).
    Run {
        /// Enable the local provider (simulated kwok nodes).
        #[arg(long, env = "BARGE_LOCAL_PROVIDER", default_value_t = true, action = clap::ArgAction::Set)]
        local_provider: bool,
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
        /// Log as JSON lines instead of text.
        #[arg(long, env = "BARGE_LOG_JSON")]
        log_json: bool,
        /// Name of this operator instance in events.
        #[arg(long, env = "POD_NAME", default_value = "barge")]
        instance: String,
    },
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", barge::api::crds_yaml()),
        Command::Run {
            local_provider,
            ec2_provider,
            cluster_name,
            capacity_cooldown_seconds,
            registration_timeout_seconds,
            log_json,
            instance,
        } => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
            let logs = tracing_subscriber::fmt().with_env_filter(filter);
            if log_json {
                logs.json().init()
            } else {
                logs.init()
            }
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting Barge");
            let client = Client::try_default().await?;
            let providers = Providers {
                local: local_provider.then(|| Box::new(LocalProvider::new(client.clone())) as _),
                ec2: if ec2_provider {
                    let settings = Ec2Settings {
                        cluster: cluster_name,
                        capacity_cooldown: Duration::from_secs(capacity_cooldown_seconds),
                        registration_timeout: Duration::from_secs(registration_timeout_seconds),
                    };
                    Some(Box::new(Ec2Provider::new(client.clone(), settings).await) as _)
                } else {
                    None
                },
            };
            controller::run(client, providers, Options { instance }).await?;
        }
    }
    Ok(())
}
