//! Short runs of three chaos scenarios (`make chaos` runs all six at full size, see
//! `benches/chaos.rs`): the operator SIGKILLed again and again while jobs are submitted and
//! run, kube-apiserver stopped mid-run, and generated hostile objects for every kind. Each
//! must end with nothing lost, nothing run twice, no panic and no crash.

mod common;

use std::time::Duration;

use common::chaos::{self, cluster};
use common::{client, install_crds};

/// One scenario at a time: each runs operators of its own, and one stops the apiserver.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn an_operator_killed_every_four_seconds_loses_and_doubles_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let out = chaos::operator_kills(&client, 200, 1, 4, Duration::from_secs(4)).await;
    eprintln!("{}", out.md());
    out.assert_clean();
    assert_eq!(out.succeeded, 200, "{out:#?}");
    assert_eq!(out.retried, 0, "a kill is not a failed attempt: {out:#?}");
}

#[tokio::test]
async fn kube_apiserver_stopped_for_ten_seconds_mid_run_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let out = chaos::fault_mid_run(&client, "kube-apiserver stopped 10 s", 150, 2, 1, |ops| async move {
        cluster(&["stop-for", "kube-apiserver", "10"]).await;
        ops
    })
    .await;
    eprintln!("{}", out.md());
    out.assert_clean();
    assert_eq!(out.succeeded, 150, "{out:#?}");
    assert!(out.recovery_max().is_some_and(|r| r < Duration::from_secs(60)), "{out:#?}");
}

#[tokio::test]
async fn hostile_objects_are_refused_or_judged_and_valid_jobs_still_run() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let out = chaos::hostile_objects(&client, 120, 20, 7).await;
    eprintln!("{}\n{}", out.md(), out.notes.join("\n"));
    out.assert_clean();
    assert_eq!(out.succeeded, 20, "{out:#?}");
}
