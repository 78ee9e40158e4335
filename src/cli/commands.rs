//! The user commands: read and write the three resources through the API server, as
//! kubectl would, and explain what the operator wrote into their statuses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::output::{self, age, bar, phase, structured, table};
use super::{Common, Format};
use crate::api::batch_job::{BatchJobStatus, JobPhase};
use crate::api::job_definition::DefinitionRef;
use crate::api::{BatchJob, ComputeEnvironment, JobDefinition, JobQueue};

pub(super) async fn client() -> anyhow::Result<Client> {
    Client::try_default().await.context(
        "cannot reach a cluster: set KUBECONFIG (or run inside a cluster) as for kubectl, \
         e.g. `eval \"$(hack/cluster.sh env)\"` for the local one",
    )
}

pub(super) fn jobs_api(client: &Client, common: &Common) -> Api<BatchJob> {
    match &common.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::default_namespaced(client.clone()),
    }
}

/// A friendlier error for a missing job.
pub(super) async fn get_job(api: &Api<BatchJob>, name: &str) -> anyhow::Result<BatchJob> {
    match api.get_opt(name).await? {
        Some(j) => Ok(j),
        None => bail!("no BatchJob {name} in this namespace: check the name, or pass -n <namespace>"),
    }
}

fn blocked_reason(q: &JobQueue) -> String {
    q.status
        .as_ref()
        .and_then(|s| crate::api::condition_true(&s.conditions, crate::api::ConditionType::Blocked))
        .map_or_else(String::new, |c| c.message.clone())
}

pub async fn queues(common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let mut queues = Api::<JobQueue>::all(client).list(&ListParams::default()).await?.items;
    queues.sort_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then(a.name_any().cmp(&b.name_any())));
    if structured(common.output, &queues)? {
        return Ok(());
    }
    if queues.is_empty() {
        println!("No job queues. Create one with `kubectl apply -f` (see examples/job-queues.yaml).");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let s = q.status.clone().unwrap_or_default();
            let c = s.jobs;
            vec![
                q.name_any(),
                q.spec.priority.to_string(),
                format!("{:?}", q.spec.state).to_uppercase(),
                c.submitted.to_string(),
                c.pending.to_string(),
                c.runnable.to_string(),
                c.starting.to_string(),
                c.running.to_string(),
                c.succeeded.to_string(),
                c.failed.to_string(),
                age(s.oldest_runnable_since),
                blocked_reason(q),
            ]
        })
        .collect();
    let header = [
        "QUEUE",
        "PRIORITY",
        "STATE",
        "SUBMITTED",
        "PENDING",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "OLDEST-RUNNABLE",
        "BLOCKED",
    ];
    print!("{}", table(&header, &rows));
    Ok(())
}

pub async fn describe(name: &str, common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let job = get_job(&jobs_api(&client, common), name).await?;
    if structured(common.output, &job)? {
        return Ok(());
    }
    let s = job.status.clone().unwrap_or_default();
    print!("{}", summary(&job, &s));
    if !s.attempts.is_empty() {
        println!("\nAttempts:");
        print!("{}", indent(&attempts_table(&s)));
    }
    if let Some(m) = s.multi_node.as_deref().filter(|m| !m.nodes.is_empty()) {
        println!("\nNodes (attempt {}):", m.attempt);
        print!("{}", indent(&nodes_table(m)));
    }
    // For a waiting job: everything that could hold it.
    if matches!(s.phase, JobPhase::Submitted | JobPhase::Pending | JobPhase::Runnable) {
        println!("\nWhy it waits:");
        println!("  {}", s.status_reason.clone().unwrap_or_else(|| "not looked at by Barge yet".into()));
        describe_queue(&client, &job).await?;
        let jobs = jobs_api(&client, common);
        for d in &job.spec.depends_on {
            let state = match jobs.get_opt(&d.job_name).await? {
                None => "does not exist".to_string(),
                Some(dep) => dep.status.map_or("SUBMITTED".into(), |s| s.phase.as_str().to_string()),
            };
            println!("  Depends on {}: {state}", d.job_name);
        }
    }
    Ok(())
}

/// The job's fields, one per line.
fn summary(job: &BatchJob, s: &BatchJobStatus) -> String {
    let ns = job.namespace().unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<20}{v}\n", format!("{k}:")));
    line("Name", format!("{ns}/{}", job.name_any()));
    line("Queue", job.spec.job_queue.clone());
    line("Phase", phase(s.phase.as_str()));
    line("Reason", s.status_reason.clone().unwrap_or_else(|| "-".into()));
    if let Some(c) = &job.spec.container {
        let r = &c.resources;
        line("Container", format!("{} ({} vCPU, {} memory, {} GPU)", c.image, r.vcpus, r.memory, r.gpus));
    }
    if let Some(d) = &job.spec.job_definition {
        line(
            "Job definition",
            match &s.job_definition {
                Some(pinned) if pinned != d => format!("{pinned} (submitted as {d})"),
                Some(pinned) => pinned.clone(),
                None => format!("{d} (not resolved yet)"),
            },
        );
        if !job.spec.parameters.is_empty() {
            let p: Vec<String> = job.spec.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line("Parameters", p.join(", "));
        }
    }
    if let Some(ce) = &s.compute_environment {
        line("Compute environment", ce.clone());
    }
    if let Some(node) = &s.node_name {
        line("Node", node.clone());
    }
    line("Created", age(s.created_at) + " ago");
    if let Some(t) = s.started_at {
        line("Started", age(Some(t)) + " ago");
    }
    if let Some(t) = s.stopped_at {
        line("Stopped", age(Some(t)) + " ago");
    }
    if let Some(m) = &s.multi_node {
        line("Nodes", format!("{} (main node {})", m.progress, m.main_node));
    }
    if let Some(a) = &s.array {
        line(
            "Array",
            format!(
                "{} {} of {} succeeded, {} failed, {} running, {} waiting",
                bar(a.succeeded as u64, a.failed as u64, a.size as u64, 20),
                a.succeeded,
                a.size,
                a.failed,
                a.running + a.starting,
                a.runnable + a.pending
            ),
        );
        if !a.failed_indexes.is_empty() {
            line("Failed indexes", a.failed_indexes.clone());
        }
    }
    out
}

/// One row per node of a multi-node job that has a pod.
fn nodes_table(m: &crate::api::batch_job::MultiNodeStatus) -> String {
    let rows: Vec<Vec<String>> = m
        .nodes
        .iter()
        .map(|n| {
            let index =
                if n.index == m.main_node { format!("{} (main)", n.index) } else { n.index.to_string() };
            vec![
                index,
                n.phase.as_str().to_string(),
                n.node_name.clone().unwrap_or_else(|| "-".into()),
                n.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                n.pod_name.clone(),
            ]
        })
        .collect();
    table(&["NODE", "PHASE", "ON", "EXIT", "POD"], &rows)
}

/// One row per attempt.
fn attempts_table(s: &BatchJobStatus) -> String {
    let rows: Vec<Vec<String>> = s
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let took = match (a.started_at, a.stopped_at) {
                (Some(b), Some(e)) => output::duration((e - b).num_seconds()),
                (Some(b), None) => output::duration((chrono::Utc::now() - b).num_seconds()) + "+",
                _ => "-".into(),
            };
            vec![
                (i + 1).to_string(),
                a.node_name.clone().unwrap_or_else(|| "-".into()),
                a.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                took,
                a.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["#", "NODE", "EXIT", "TOOK", "REASON"], &rows)
}

/// The job's queue and its compute environments, as far as they could hold it.
async fn describe_queue(client: &Client, job: &BatchJob) -> anyhow::Result<()> {
    match Api::<JobQueue>::all(client.clone()).get_opt(&job.spec.job_queue).await? {
        None => println!("  Queue {} does not exist.", job.spec.job_queue),
        Some(q) => {
            let st = q.status.clone().unwrap_or_default();
            println!(
                "  Queue {}: {}, priority {}, {} runnable, {} running{}",
                q.name_any(),
                format!("{:?}", q.spec.state).to_uppercase(),
                q.spec.priority,
                st.jobs.runnable,
                st.jobs.running,
                match blocked_reason(&q) {
                    r if r.is_empty() => String::new(),
                    r => format!("; blocked: {r}"),
                }
            );
            let ces = Api::<ComputeEnvironment>::all(client.clone());
            for o in &q.spec.compute_environment_order {
                match ces.get_opt(&o.compute_environment).await? {
                    None => println!("  Compute environment {} does not exist.", o.compute_environment),
                    Some(ce) => {
                        let cs = ce.status.clone().unwrap_or_default();
                        println!(
                            "  Compute environment {}: {} of max {} vCPUs, {} nodes; {}",
                            ce.name_any(),
                            cs.total_vcpus,
                            ce.spec.max_vcpus,
                            cs.nodes,
                            cs.message.unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn definitions_api(client: &Client, common: &Common) -> Api<JobDefinition> {
    match &common.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::default_namespaced(client.clone()),
    }
}

fn revision_list(d: &JobDefinition) -> String {
    let s = d.status.clone().unwrap_or_default();
    let numbers: Vec<u32> = s.revisions.iter().map(|r| r.revision).collect();
    crate::scheduler::ranges::encode(&numbers)
}

pub async fn definitions(common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let mut defs = definitions_api(&client, common).list(&ListParams::default()).await?.items;
    defs.sort_by_key(|d| d.name_any());
    if structured(common.output, &defs)? {
        return Ok(());
    }
    if defs.is_empty() {
        println!(
            "No job definitions. Create one with `kubectl apply -f` (see examples/job-definition.yaml)."
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = defs
        .iter()
        .map(|d| {
            let s = d.status.clone().unwrap_or_default();
            vec![
                d.name_any(),
                if s.revision == 0 { "-".into() } else { s.revision.to_string() },
                s.status.unwrap_or(d.spec.state).as_str().to_string(),
                d.spec.image().unwrap_or("-").to_string(),
                revision_list(d),
                age(d.metadata.creation_timestamp.as_ref().and_then(|t| {
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.0.as_millisecond())
                })),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "REVISION", "STATUS", "IMAGE", "REVISIONS", "AGE"], &rows));
    Ok(())
}

pub async fn describe_definition(name: &str, common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let Some(d) = definitions_api(&client, common).get_opt(name).await? else {
        bail!("no JobDefinition {name} in this namespace: see `barge definitions`, or pass -n <namespace>");
    };
    if structured(common.output, &d)? {
        return Ok(());
    }
    let s = d.status.clone().unwrap_or_default();
    println!("{:<20}{}/{}", "Name:", d.namespace().unwrap_or_default(), d.name_any());
    println!("{:<20}{}", "Status:", s.status.unwrap_or(d.spec.state).as_str());
    println!(
        "{:<20}{}",
        "Latest revision:",
        if s.revision == 0 { "none yet".into() } else { s.revision.to_string() }
    );
    println!("{:<20}{}", "Image:", d.spec.image().unwrap_or("-"));
    if let Some(c) = &d.spec.container {
        let r = &c.resources;
        println!("{:<20}{} vCPU, {} memory, {} GPU", "Resources:", r.vcpus, r.memory, r.gpus);
        if !c.command.is_empty() {
            println!("{:<20}{}", "Command:", c.command.join(" "));
        }
    }
    if !d.spec.parameters.is_empty() {
        let p: Vec<String> = d.spec.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{:<20}{}", "Parameter defaults:", p.join(", "));
    }
    for c in &s.conditions {
        if c.is_true() && c.type_ == crate::api::ConditionType::Deleting.as_str() || c.status == "False" {
            println!("{:<20}{}", format!("{}:", c.type_), c.message);
        }
    }
    if !s.revisions.is_empty() {
        println!("\nRevisions (each one unchanged; submit against NAME:REVISION to pin one):");
        let rows: Vec<Vec<String>> = s
            .revisions
            .iter()
            .rev()
            .map(|r| {
                vec![
                    format!("{}:{}", d.name_any(), r.revision),
                    r.image.clone().unwrap_or_else(|| "-".into()),
                    age(r.registered_at) + " ago",
                ]
            })
            .collect();
        print!("{}", indent(&table(&["REVISION", "IMAGE", "REGISTERED"], &rows)));
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[derive(clap::Args, Clone, Debug)]
pub struct SubmitArgs {
    /// Job queue to submit to.
    #[arg(long, short = 'q', required_unless_present = "file")]
    queue: Option<String>,
    /// Container image.
    #[arg(long, required_unless_present_any = ["file", "definition"], conflicts_with = "definition")]
    image: Option<String>,
    /// Run a job definition, `NAME` (its latest revision) or `NAME:REVISION`.
    #[arg(long, short = 'd')]
    definition: Option<String>,
    /// A value for the definition's `Ref::NAME` placeholders, as NAME=VALUE (repeatable).
    #[arg(long = "parameter", short = 'p', value_name = "NAME=VALUE", value_parser = parse_key_value, requires = "definition")]
    parameters: Vec<(String, String)>,
    /// An environment variable of the container, as NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// A tag of the job, as KEY=VALUE (repeatable); its pods carry tags as labels.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    tags: Vec<(String, String)>,
    /// Name of the job (default: generated from the image).
    #[arg(long)]
    name: Option<String>,
    /// vCPUs per job (or per array child); default 1, or the definition's.
    #[arg(long)]
    vcpus: Option<f64>,
    /// Memory per job, as a Kubernetes quantity; default 2Gi, or the definition's.
    #[arg(long)]
    memory: Option<String>,
    /// GPUs per job; default 0, or the definition's.
    #[arg(long)]
    gpus: Option<u32>,
    /// Run as an array job of this many children (2-10000).
    #[arg(long)]
    array_size: Option<u32>,
    /// Attempts per job, 1-10.
    #[arg(long)]
    attempts: Option<u32>,
    /// Seconds an attempt may run (at least 60).
    #[arg(long)]
    timeout: Option<u32>,
    /// Jobs (in the namespace) that must succeed first.
    #[arg(long, value_delimiter = ',')]
    depends_on: Vec<String>,
    /// Annotations of the job, as KEY=VALUE (repeatable).
    #[arg(long = "annotate", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    annotations: Vec<(String, String)>,
    /// Submit a BatchJob manifest (YAML or JSON; `-` for standard input) instead of flags.
    #[arg(long, short = 'f', conflicts_with_all = ["queue", "image"])]
    file: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    common: Common,
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let api = jobs_api(&client, &args.common);
    let job: BatchJob = match &args.file {
        Some(path) => serde_yaml::from_str(&super::read_file(path)?)
            .with_context(|| format!("{} is not a BatchJob manifest", path.display()))?,
        None => {
            let env: Vec<serde_json::Value> =
                args.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
            let (base, mut spec) = match &args.definition {
                Some(d) => {
                    let name = DefinitionRef::parse(d).map_err(anyhow::Error::msg)?.name.to_string();
                    let mut overrides = serde_json::Map::new();
                    if !args.command.is_empty() {
                        overrides.insert("command".into(), json!(args.command));
                    }
                    if !env.is_empty() {
                        overrides.insert("environment".into(), json!(env));
                    }
                    for (k, v) in [
                        ("vcpus", args.vcpus.map(|v| json!(v))),
                        ("memory", args.memory.as_ref().map(|v| json!(v))),
                        ("gpus", args.gpus.map(|v| json!(v))),
                    ] {
                        if let Some(v) = v {
                            overrides.insert(k.into(), v);
                        }
                    }
                    let mut spec = json!({"jobQueue": args.queue, "jobDefinition": d});
                    if !overrides.is_empty() {
                        spec["containerOverrides"] = serde_json::Value::Object(overrides);
                    }
                    if !args.parameters.is_empty() {
                        spec["parameters"] =
                            args.parameters.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                    }
                    (name, spec)
                }
                None => {
                    let image = args.image.clone().unwrap_or_default();
                    let base =
                        image.rsplit('/').next().unwrap_or("job").split([':', '@']).next().unwrap_or("job");
                    let mut spec = json!({
                        "jobQueue": args.queue,
                        "container": {
                            "image": image,
                            "resources": {
                                "vcpus": args.vcpus.unwrap_or(1.0),
                                "memory": args.memory.clone().unwrap_or_else(|| "2Gi".into()),
                                "gpus": args.gpus.unwrap_or(0),
                            },
                        },
                    });
                    if !args.command.is_empty() {
                        spec["container"]["command"] = json!(args.command);
                    }
                    if !env.is_empty() {
                        spec["container"]["env"] = json!(env);
                    }
                    (base.to_string(), spec)
                }
            };
            if !args.tags.is_empty() {
                spec["tags"] = args.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            }
            if let Some(n) = args.array_size {
                spec["array"] = json!({"size": n});
            }
            if let Some(n) = args.attempts {
                spec["retryStrategy"] = json!({"attempts": n});
            }
            if let Some(t) = args.timeout {
                spec["timeout"] = json!({"attemptDurationSeconds": t});
            }
            if !args.depends_on.is_empty() {
                spec["dependsOn"] = args.depends_on.iter().map(|d| json!({"jobName": d})).collect();
            }
            let mut metadata = match &args.name {
                Some(n) => json!({"name": n}),
                None => json!({"generateName": format!("{}-", sanitize(&base))}),
            };
            if !args.annotations.is_empty() {
                let map: serde_json::Map<String, serde_json::Value> =
                    args.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                metadata["annotations"] = serde_json::Value::Object(map);
            }
            serde_json::from_value(json!({
                "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": metadata, "spec": spec,
            }))?
        }
    };
    let created = api.create(&PostParams::default(), &job).await.map_err(|e| match e {
        kube::Error::Api(s) => anyhow::anyhow!("the API server refused the job: {}", s.message),
        e => e.into(),
    })?;
    if !structured(args.common.output, &created)? {
        println!(
            "batchjob/{} submitted to queue {}. Follow it with `barge watch {}`.",
            created.name_any(),
            created.spec.job_queue,
            created.name_any()
        );
    }
    Ok(())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A DNS-label-safe name stem.
fn sanitize(s: &str) -> String {
    let s: String =
        s.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s = s.trim_matches('-');
    if s.is_empty() { "job".into() } else { s.chars().take(40).collect() }
}

/// Sets `spec.cancel` or `spec.terminate`.
pub async fn stop(name: &str, field: &str, reason: &str, common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let api = jobs_api(&client, common);
    let job = get_job(&api, name).await?;
    let patch = json!({"spec": {field: {"reason": reason}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if common.output == Format::Table {
        let phase = job.status.map(|s| s.phase.as_str().to_string()).unwrap_or_default();
        println!("batchjob/{name} ({phase}): {field} requested: {reason}");
    }
    Ok(())
}

/// Polls until the job (or every job of the queue) has ended, redrawing progress.
pub async fn watch(job: Option<String>, queue: Option<String>, common: &Common) -> anyhow::Result<()> {
    let client = client().await?;
    let api = jobs_api(&client, common);
    if job.is_none() && queue.is_none() {
        bail!("name a job (`barge watch my-job`) or a queue (`barge watch --queue bulk`)");
    }
    let tty = output::colour_enabled();
    let mut last = String::new();
    loop {
        let (text, done) = match (&job, &queue) {
            (Some(name), _) => {
                let j = get_job(&api, name).await?;
                let s = j.status.clone().unwrap_or_default();
                let p = s.phase.as_str();
                let text = match &s.array {
                    Some(a) => format!(
                        "{name} {} {} {}/{} succeeded, {} failed, {} running",
                        phase(p),
                        bar(a.succeeded as u64, a.failed as u64, a.size as u64, 30),
                        a.succeeded,
                        a.size,
                        a.failed,
                        a.running + a.starting
                    ),
                    None => match &s.multi_node {
                        Some(m) => format!(
                            "{name} {} nodes {} {}",
                            phase(p),
                            m.progress,
                            s.status_reason.unwrap_or_default()
                        ),
                        None => format!("{name} {} {}", phase(p), s.status_reason.unwrap_or_default()),
                    },
                };
                (text, matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed))
            }
            (None, Some(q)) => {
                let jobs: Vec<BatchJob> = api
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|j| &j.spec.job_queue == q)
                    .collect();
                let count = |p: JobPhase| {
                    jobs.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase == p)).count()
                };
                let (ok, bad) = (count(JobPhase::Succeeded), count(JobPhase::Failed));
                let running = count(JobPhase::Running) + count(JobPhase::Starting);
                let text = format!(
                    "queue {q} {} {ok}/{} succeeded, {bad} failed, {running} running",
                    bar(ok as u64, bad as u64, jobs.len() as u64, 30),
                    jobs.len()
                );
                (text, !jobs.is_empty() && ok + bad == jobs.len())
            }
            _ => unreachable!("checked above"),
        };
        if text != last {
            if tty {
                print!("\r\x1b[2K{text}");
                std::io::Write::flush(&mut std::io::stdout())?;
            } else {
                println!("{text}");
            }
            last = text;
        }
        if done {
            if tty {
                println!();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
