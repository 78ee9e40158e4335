//! Two replicas with leader election: one acts, the other waits; killing the leader mid-run
//! hands over within about a lease duration, and no job runs twice. The leader's /metrics
//! report the numbers the API shows.

mod common;

use std::time::{Duration, Instant};

use barge::api::batch_job::JobPhase;
use barge::api::{ComputeEnvironment, JobQueue};
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE_SECONDS: u64 = 6;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from a replica's metrics server: (status line, body).
async fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The value of the sample `name{labels}` in a scrape.
fn sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test]
async fn killing_the_leader_hands_over_without_running_a_job_twice_and_metrics_match_the_api() {
    let client = client().await;
    install_crds(&client).await;
    let e = Env::new(client.clone(), "ha").await;
    let lease = format!("barge-ha-{}", suffix());
    let ports = [free_port(), free_port()];
    let mut replicas = Vec::new();
    for (i, name) in ["replica-a", "replica-b"].iter().enumerate() {
        let bind = format!("127.0.0.1:{}", ports[i]);
        let env = [
            ("BARGE_LEADER_ELECT", "true"),
            ("POD_NAMESPACE", e.ns.as_str()),
            ("POD_NAME", name),
            ("BARGE_LEASE_NAME", lease.as_str()),
            ("BARGE_LEASE_DURATION_SECONDS", "6"),
            ("BARGE_METRICS_BIND", bind.as_str()),
        ];
        replicas.push(spawn_operator_with(name, &env));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &e.ns);
    let first = eventually("a leader", WAIT, || holder(&leases, &lease)).await;
    let (leader, standby) = if first == "replica-a" { (0, 1) } else { (1, 0) };
    // Both answer their probes: the standby is ready to take over.
    for port in ports {
        eventually("the probes to answer 200", WAIT, || async {
            let (status, _) = get(port, "/readyz").await?;
            status.contains("200").then_some(())
        })
        .await;
    }
    let (_, standby_metrics) = get(ports[standby], "/metrics").await.unwrap();
    assert_eq!(sample(&standby_metrics, "barge_leader "), Some(0.0));

    let ce = e
        .ce("ce", json!({"instanceTypes": ["m6i.2xlarge"], "maxvCpus": 16, "scaleDownDelaySeconds": 600}))
        .await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    const JOBS: usize = 30;
    for i in 0..JOBS {
        e.job(&format!("j{i}"), &q, 1.0, json!({"sim.barge.dev/duration": "3s"}), json!({})).await;
    }
    let succeeded = || async {
        let jobs = e.jobs.list(&ListParams::default()).await.ok()?.items;
        Some(
            jobs.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded)).count(),
        )
    };
    eventually("a third of the jobs to succeed", WAIT, || async {
        (succeeded().await? >= JOBS / 3).then_some(())
    })
    .await;

    // Kill the leader mid-run; the standby must take the Lease.
    replicas[leader].kill().unwrap();
    let _ = replicas[leader].wait();
    let killed = Instant::now();
    let standby_name = if standby == 0 { "replica-a" } else { "replica-b" };
    eventually("the standby to lead", WAIT, || async {
        (holder(&leases, &lease).await? == standby_name).then_some(())
    })
    .await;
    let handover = killed.elapsed();
    eprintln!(
        "leader killed: the standby took over after {:.1} s (lease {LEASE_SECONDS} s)",
        handover.as_secs_f64()
    );
    assert!(handover < Duration::from_secs(LEASE_SECONDS * 2 + 2), "handover took {handover:?}");

    eventually("every job to succeed", Duration::from_secs(120), || async {
        (succeeded().await? == JOBS).then_some(())
    })
    .await;
    // One attempt and one pod per job: nothing ran twice across the handover.
    for j in e.jobs.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(j.status.unwrap().attempts.len(), 1);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &e.ns);
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), JOBS);

    // The new leader's metrics say what the API says.
    let port = ports[standby];
    let queues: Api<JobQueue> = Api::all(client.clone());
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    eventually("metrics to match the queue and compute environment statuses", WAIT, || async {
        let (_, scrape) = get(port, "/metrics").await?;
        let qs = queues.get(&q).await.ok()?.status?;
        let cs = ces.get(&ce).await.ok()?.status?;
        let metric = |phase: &str| sample(&scrape, &format!("barge_jobs{{queue=\"{q}\",phase=\"{phase}\"}}"));
        let ce_metric = |m: &str| sample(&scrape, &format!("{m}{{compute_environment=\"{ce}\"}}"));
        let vcpus = |kind: &str| {
            sample(
                &scrape,
                &format!("barge_compute_environment_vcpus{{compute_environment=\"{ce}\",kind=\"{kind}\"}}"),
            )
        };
        let matches = qs.jobs.succeeded as usize == JOBS
            && metric("SUCCEEDED")? == qs.jobs.succeeded as f64
            && metric("RUNNABLE")? == qs.jobs.runnable as f64
            && ce_metric("barge_compute_environment_nodes")? == cs.nodes as f64
            && vcpus("current")? == cs.total_vcpus as f64
            && vcpus("max")? == 16.0
            && sample(&scrape, "barge_leader ")? == 1.0
            && sample(&scrape, "barge_admissions_total")? >= 1.0;
        matches.then_some(())
    })
    .await;
    let _ = replicas[standby].kill();
    let _ = replicas[standby].wait();
    e.cleanup(&[&ce]).await;
}
