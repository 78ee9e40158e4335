//! `make chaos`: six failure scenarios on a fresh local cluster, each bounded in count and
//! time, and what they cost: jobs submitted, SUCCEEDED, FAILED, lost (never finished),
//! duplicated (a second pod for one attempt), retried attempts, time to recover (from the
//! fault's end to Barge's next status write), operator panics and crashes, and for EC2 the
//! instances left after the environment is deleted. Writes `bench/results/chaos.md` and
//! `.csv`.
//!
//! 1. the operator SIGKILLed every 5 s while `CHAOS_JOBS` (2,000) short jobs are submitted
//!    and run;
//! 2. kube-apiserver stopped for 20 s mid-run, then started again;
//! 3. etcd paused (SIGSTOP) for 10 s;
//! 4. two replicas with leader election, the leader SIGKILLed under load;
//! 5. `ec2` through moto and the fault proxy, `CHAOS_EC2_JOBS` (200) jobs of an instance each:
//!    a throttling storm, no capacity on every type but one, 5xx answers, Spot instances
//!    reclaimed under running jobs, then the environment deleted;
//! 6. 500 generated invalid or hostile objects for every kind beside 100 valid jobs.
//!
//! `CHAOS_ONLY=1,3` runs only those scenarios.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::Duration;

use common::chaos::{self, Outcome, cluster};

fn arg(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs: usize = arg("CHAOS_JOBS").map_or(2000, |v| v.parse().expect("CHAOS_JOBS is a number"));
    let ec2_jobs: usize =
        arg("CHAOS_EC2_JOBS").map_or(200, |v| v.parse().expect("CHAOS_EC2_JOBS is a number"));
    let only: Option<Vec<u32>> =
        arg("CHAOS_ONLY").map(|v| v.split(',').map(|s| s.trim().parse().unwrap()).collect());
    let runs = |i: u32| only.as_ref().is_none_or(|o| o.contains(&i));
    let out = std::path::PathBuf::from(arg("BENCH_OUT").unwrap_or_else(|| "bench/results".into()));
    let client = common::client().await;
    common::install_crds(&client).await;

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut done = |o: Outcome| {
        eprintln!("{}\n{}", o.md(), o.notes.join("\n"));
        outcomes.push(o);
    };
    if runs(1) {
        done(chaos::operator_kills(&client, jobs, 1, 12, Duration::from_secs(5)).await);
    }
    if runs(2) {
        done(
            chaos::fault_mid_run(&client, "kube-apiserver stopped 20 s", jobs, 2, 1, |ops| async move {
                cluster(&["stop-for", "kube-apiserver", "20"]).await;
                ops
            })
            .await,
        );
    }
    if runs(3) {
        done(
            chaos::fault_mid_run(&client, "etcd paused 10 s", jobs, 2, 1, |ops| async move {
                cluster(&["pause-for", "etcd", "10"]).await;
                ops
            })
            .await,
        );
    }
    if runs(4) {
        let c = client.clone();
        done(
            chaos::fault_mid_run(&client, "leader SIGKILLed (2 replicas)", jobs, 2, 2, |ops| async move {
                // The namespace holding the Lease is the workload's: found from the replicas.
                let lease_ns = ops.lease_namespace().to_string();
                chaos::kill_leader(&c, ops, &lease_ns).await
            })
            .await,
        );
    }
    if runs(5) {
        done(chaos::ec2_at_scale(&client, ec2_jobs, 30, ec2_jobs / 10).await);
    }
    if runs(6) {
        done(chaos::hostile_objects(&client, 500, 100, 2026).await);
    }

    std::fs::create_dir_all(&out).unwrap();
    let mut csv = std::fs::File::create(out.join("chaos.csv")).unwrap();
    writeln!(csv, "{}", Outcome::CSV_HEADER).unwrap();
    let mut md = format!("{}\n", Outcome::MD_HEADER);
    for o in &outcomes {
        writeln!(csv, "{}", o.csv()).unwrap();
        md.push_str(&o.md());
        md.push('\n');
    }
    md.push('\n');
    for o in &outcomes {
        for n in &o.notes {
            md.push_str(&format!("- {}: {n}\n", o.scenario));
        }
    }
    std::fs::write(out.join("chaos.md"), &md).unwrap();
    println!("{md}");
    let clean = outcomes.iter().all(|o| {
        o.lost == 0 && o.duplicated == 0 && o.panics == 0 && o.crashes == 0 && o.leaked.unwrap_or(0) == 0
    });
    println!(
        "wrote {}/chaos.md and chaos.csv; {}",
        out.display(),
        if clean {
            "nothing lost, doubled, leaked or crashed"
        } else {
            "SOME SCENARIO LOST, DOUBLED, LEAKED OR CRASHED"
        }
    );
    if !clean {
        std::process::exit(1);
    }
}
