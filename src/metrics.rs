//! Prometheus metrics, and the small HTTP server that serves them with the health probes.
//!
//! One registry for the process; the loops update it where they already hold the numbers
//! (the queue status loop counts jobs, the capacity pass knows vCPUs and cost, the scheduling
//! pass admits), so metrics never cost an extra list or watch.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueuePhase {
    pub queue: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CeLabel {
    pub compute_environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CeVcpus {
    pub compute_environment: String,
    /// desired, current, allocated or max.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ec2Call {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ec2Error {
    pub operation: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeKind {
    /// spot_interruption, rebalance_recommendation, state_change (acted on), duplicate,
    /// unknown_instance, other or malformed (dropped).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerOutcome {
    /// `NAMESPACE/NAME` of the JobTrigger.
    pub trigger: String,
    /// received (messages), job_created, duplicate (objects), rejected, retried, test_event
    /// (messages).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 5 ms … about 23 h.
    Histogram::new(exponential_buckets(0.005, 3.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub jobs: Family<QueuePhase, Gauge>,
    pub runnable_seconds: Histogram,
    pub admissions: Counter,
    pub scheduling_pass_seconds: Histogram,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ControllerLabel, Counter>,
    pub reconcile_seconds: HistogramFamily<ControllerLabel>,
    pub ce_vcpus: Family<CeVcpus, Gauge>,
    pub ce_nodes: Family<CeLabel, Gauge>,
    pub ce_cost_per_hour: Family<CeLabel, FloatGauge>,
    pub ec2_calls: Family<Ec2Call, Counter>,
    pub ec2_errors: Family<Ec2Error, Counter>,
    pub leader: Gauge,
    pub kube_throttled_requests: Counter,
    pub kube_throttled_seconds: Counter<f64, AtomicU64>,
    pub instance_notices: Family<NoticeKind, Counter>,
    pub job_steps_deferred: Counter,
    /// Lines of containers' output written to the log archive, and reads or writes of it
    /// that failed (each is tried again).
    pub log_lines_archived: Counter,
    pub log_archive_errors: Counter,
    pub job_step_line: Gauge,
    pub trigger_messages: Family<TriggerOutcome, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("barge");
        let jobs = Family::<QueuePhase, Gauge>::default();
        let runnable_seconds = Histogram::new(exponential_buckets(0.05, 3.0, 14));
        let admissions = Counter::default();
        let scheduling_pass_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let reconcile_errors = Family::<ControllerLabel, Counter>::default();
        let reconcile_seconds: HistogramFamily<ControllerLabel> =
            Family::new_with_constructor(seconds_histogram);
        let ce_vcpus = Family::<CeVcpus, Gauge>::default();
        let ce_nodes = Family::<CeLabel, Gauge>::default();
        let ce_cost_per_hour = Family::<CeLabel, FloatGauge>::default();
        let ec2_calls = Family::<Ec2Call, Counter>::default();
        let ec2_errors = Family::<Ec2Error, Counter>::default();
        let leader = Gauge::default();
        let kube_throttled_requests = Counter::default();
        let kube_throttled_seconds = Counter::<f64, AtomicU64>::default();
        let instance_notices = Family::<NoticeKind, Counter>::default();
        let job_steps_deferred = Counter::default();
        let log_lines_archived = Counter::default();
        let log_archive_errors = Counter::default();
        let job_step_line = Gauge::default();
        let trigger_messages = Family::<TriggerOutcome, Counter>::default();
        // The registry holds clones: the struct keeps handles to the same metrics.
        let r = &mut registry;
        r.register("jobs", "BatchJobs per queue and phase", jobs.clone());
        r.register(
            "job_runnable_seconds",
            "Time jobs spent RUNNABLE before admission",
            runnable_seconds.clone(),
        );
        r.register(
            "admissions",
            "Jobs and array children admitted onto a compute environment",
            admissions.clone(),
        );
        r.register(
            "scheduling_pass_seconds",
            "Time one scheduling pass spends deciding (the pod creations it waits for excluded)",
            scheduling_pass_seconds.clone(),
        );
        r.register("reconciles", "Reconciles per controller", reconciles.clone());
        r.register("reconcile_errors", "Failed reconciles per controller", reconcile_errors.clone());
        r.register("reconcile_seconds", "Reconcile duration per controller", reconcile_seconds.clone());
        r.register("compute_environment_vcpus", "vCPUs of a compute environment by kind", ce_vcpus.clone());
        r.register("compute_environment_nodes", "Nodes of a compute environment", ce_nodes.clone());
        r.register(
            "compute_environment_cost_per_hour",
            "Estimated USD per hour of a compute environment's nodes",
            ce_cost_per_hour.clone(),
        );
        r.register("ec2_api_calls", "EC2 API calls by operation", ec2_calls.clone());
        r.register("ec2_api_errors", "EC2 API errors by operation and code", ec2_errors.clone());
        r.register("leader", "1 while this replica is the leader", leader.clone());
        r.register(
            "kube_client_throttled_requests",
            "apiserver requests that waited for the client-side limit (--kube-api-qps)",
            kube_throttled_requests.clone(),
        );
        r.register(
            "kube_client_throttled_seconds",
            "Time apiserver requests waited for the client-side limit",
            kube_throttled_seconds.clone(),
        );
        r.register(
            "instance_notices",
            "EC2 instance notices read from SQS, by what Barge made of them",
            instance_notices.clone(),
        );
        r.register(
            "job_steps_deferred",
            "Job phase steps (RUNNABLE before a pod, STARTING, RUNNING) that waited for the step-write budget",
            job_steps_deferred.clone(),
        );
        r.register(
            "log_lines_archived",
            "Lines of containers' output written to the log archive",
            log_lines_archived.clone(),
        );
        r.register(
            "log_archive_errors",
            "Reads of containers' output or writes to the log archive that failed and are tried again",
            log_archive_errors.clone(),
        );
        r.register(
            "job_step_line",
            "Jobs waiting for the step-write budget to write the step they are in",
            job_step_line.clone(),
        );
        r.register(
            "trigger_messages",
            "What JobTriggers made of the SQS messages they read, by trigger and outcome",
            trigger_messages.clone(),
        );
        let build: Family<BuildInfo, Gauge> = Family::default();
        build.get_or_create(&BuildInfo { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("build_info", "Barge's version", build);
        Metrics {
            registry,
            jobs,
            runnable_seconds,
            admissions,
            scheduling_pass_seconds,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            ce_vcpus,
            ce_nodes,
            ce_cost_per_hour,
            ec2_calls,
            ec2_errors,
            leader,
            kube_throttled_requests,
            kube_throttled_seconds,
            instance_notices,
            job_steps_deferred,
            log_lines_archived,
            log_archive_errors,
            job_step_line,
            trigger_messages,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Counts an EC2 call and its error code, if any.
    pub fn ec2_call(&self, operation: &str, error: Option<&str>) {
        self.ec2_calls.get_or_create(&Ec2Call { operation: operation.into() }).inc();
        if let Some(code) = error {
            self.ec2_errors.get_or_create(&Ec2Error { operation: operation.into(), code: code.into() }).inc();
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Times a reconcile and counts it (and its error) under `controller`.
pub async fn timed<T, E>(controller: &str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let label = ControllerLabel { controller: controller.into() };
    let start = Instant::now();
    let out = f.await;
    let m = metrics();
    m.reconciles.get_or_create(&label).inc();
    m.reconcile_seconds.get_or_create(&label).observe(start.elapsed().as_secs_f64());
    if out.is_err() {
        m.reconcile_errors.get_or_create(&label).inc();
    }
    out
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (`ready()` says so)
/// until the process ends.
pub async fn serve(addr: SocketAddr, ready: Arc<dyn Fn() -> bool + Send + Sync>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve metrics and probes");
            return std::future::pending().await;
        }
    };
    info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = ready.clone();
                async move { Ok::<_, Infallible>(respond(req.uri().path(), ready.as_ref())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(path: &str, ready: &(dyn Fn() -> bool + Send + Sync)) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/metrics" => {
            (StatusCode::OK, metrics().encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" if ready() => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n".to_string(), "text/plain"),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string(), "text/plain"),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_barge_prefix() {
        let m = metrics();
        m.jobs.get_or_create(&QueuePhase { queue: "q".into(), phase: "RUNNABLE".into() }).set(3);
        m.ec2_call("CreateFleet", Some("RequestLimitExceeded"));
        let text = m.encode();
        assert!(text.contains("barge_jobs{queue=\"q\",phase=\"RUNNABLE\"} 3"), "{text}");
        assert!(text.contains(
            "barge_ec2_api_errors_total{operation=\"CreateFleet\",code=\"RequestLimitExceeded\"} 1"
        ));
        assert!(text.contains("barge_build_info{version=\""));
    }
}
