//! The `barge` command line: the operator (`barge run`) and the user commands (`queues`,
//! `definitions`, `describe`, `submit`, `cancel`, `terminate`, `watch`, `logs`). Installed as `kubectl-barge`, the
//! same binary is the kubectl plugin: `kubectl barge queues`.

mod commands;
mod credentials;
mod logs;
mod operator;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use operator::RunArgs;

#[derive(Parser)]
#[command(
    name = "barge",
    version,
    about = "AWS Batch-style job queues and compute environments for Kubernetes",
    long_about = "AWS Batch-style job queues and compute environments for Kubernetes.\n\n\
        Submit jobs to queues, see why they wait, and follow them to the end. Every command \
        uses the cluster and namespace of your kubeconfig (KUBECONFIG), like kubectl; as the \
        kubectl plugin it is `kubectl barge …`.",
    after_help = "Examples:\n  \
        barge queues\n  \
        barge submit --queue bulk --image busybox --vcpus 2 --memory 4Gi -- sh -c 'echo hi'\n  \
        barge submit --queue bulk --image busybox --array-size 100 -- ./work.sh\n  \
        barge submit --queue bulk --definition render -p frame=42 --vcpus 4\n  \
        barge definitions\n  \
        barge describe jd render\n  \
        barge describe my-job\n  \
        barge watch my-job\n  \
        barge logs my-job -f\n  \
        barge logs my-array --index 3 --attempt 2\n  \
        barge cancel my-job --reason 'wrong input'\n  \
        barge credentials create --namespace team-a"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to print objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    #[default]
    Table,
    Json,
    Yaml,
}

/// Where containers' output is archived: an S3-compatible bucket (the operator writes it,
/// `barge logs` and the CloudWatch Logs endpoint read it). Credentials from the AWS chain.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ArchiveArgs {
    /// The bucket (no archive unless set).
    #[arg(long = "logs-s3-bucket", env = "BARGE_LOGS_S3_BUCKET")]
    pub bucket: Option<String>,
    /// A prefix for every key in the bucket (e.g. `barge/`).
    #[arg(long = "logs-s3-prefix", env = "BARGE_LOGS_S3_PREFIX", default_value = "")]
    pub prefix: String,
    /// The bucket's region (default: the AWS chain's).
    #[arg(long = "logs-s3-region", env = "BARGE_LOGS_S3_REGION")]
    pub region: Option<String>,
    /// An S3-compatible endpoint such as MinIO's, reached with path-style addresses.
    #[arg(long = "logs-s3-endpoint", env = "BARGE_LOGS_S3_ENDPOINT")]
    pub endpoint: Option<String>,
}

impl ArchiveArgs {
    pub fn is_set(&self) -> bool {
        self.bucket.as_deref().is_some_and(|b| !b.is_empty())
    }

    /// The bucket, when one is set.
    pub async fn bucket(&self) -> Option<crate::archive::s3::Bucket> {
        let bucket = self.bucket.clone().filter(|_| self.is_set())?;
        let settings = crate::archive::s3::Settings {
            bucket,
            prefix: self.prefix.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone().filter(|e| !e.is_empty()),
        };
        Some(crate::archive::s3::Bucket::new(&settings).await)
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Namespace of the jobs (default: the kubeconfig's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or the in-cluster config).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Every job queue: priority, state, jobs per phase, oldest RUNNABLE job and why it is blocked.
    Queues {
        #[command(flatten)]
        common: Common,
    },
    /// A job's phase, reason, attempts and, for a waiting job, everything it waits for;
    /// or, as `describe jd NAME`, a job definition and its revisions.
    Describe {
        /// The job's name; or `jd` (`jobdefinition`) followed by a definition's name.
        job: String,
        /// With `jd`: the definition.
        name: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every job definition of the namespace: latest revision, status, image, revisions.
    Definitions {
        #[command(flatten)]
        common: Common,
    },
    /// Submit a job from flags (the command after `--`) or from a file.
    Submit(Box<commands::SubmitArgs>),
    /// Cancel a job that has not started yet.
    Cancel {
        job: String,
        /// Why; shown in the job's status.
        #[arg(long, default_value = "Cancelled by user")]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a job, running or not; its current attempt is ended.
    Terminate {
        job: String,
        /// Why; shown in the job's status.
        #[arg(long, default_value = "Terminated by user")]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
    /// What a job's container printed: the last attempt unless told (`--attempt`), a
    /// child of an array job by `--index`, a node of a multi-node job by `--node`.
    Logs(Box<logs::LogsArgs>),
    /// Keys for the AWS Batch API (`barge run --batch-api-addr`): create, list, revoke.
    #[command(subcommand)]
    Credentials(credentials::CredentialsCommand),
    /// Follow a job (or every job of a queue) with progress bars until it is done.
    Watch {
        /// The job to follow.
        job: Option<String>,
        /// Follow the jobs of this queue (in the namespace) instead.
        #[arg(long, conflicts_with = "job")]
        queue: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// Runs the command line.
pub async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => operator::run(*args).await,
        Command::Crd => {
            print!("{}", crate::api::crds_yaml());
            Ok(())
        }
        Command::Queues { common } => commands::queues(&common).await,
        Command::Describe { job, name, common } => match (job.as_str(), name) {
            ("jd" | "jobdefinition" | "jobdefinitions" | "definition", Some(name)) => {
                commands::describe_definition(&name, &common).await
            }
            ("bj" | "batchjob" | "job", Some(name)) => commands::describe(&name, &common).await,
            (_, Some(extra)) => anyhow::bail!(
                "`describe {job} {extra}`: give a job's name, or `jd` and a job definition's name"
            ),
            (_, None) => commands::describe(&job, &common).await,
        },
        Command::Definitions { common } => commands::definitions(&common).await,
        Command::Submit(args) => commands::submit(*args).await,
        Command::Cancel { job, reason, common } => commands::stop(&job, "cancel", &reason, &common).await,
        Command::Terminate { job, reason, common } => {
            commands::stop(&job, "terminate", &reason, &common).await
        }
        Command::Watch { job, queue, common } => commands::watch(job, queue, &common).await,
        Command::Logs(args) => logs::logs(*args).await,
        Command::Credentials(c) => credentials::run(c).await,
    }
}

/// A file argument: `-` is standard input.
fn read_file(path: &PathBuf) -> anyhow::Result<String> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
