//! moto's own AWS Batch tests (from moto's sdist, run by pytest in server mode) against
//! Barge's AWS Batch API. A router (`tests/batch_api/moto_router.py`) stands where moto's
//! server mode expects moto: requests signed for `batch` go to Barge, signed again with an
//! admin key Barge issued; IAM, EC2, ECS and moto's reset go to a moto server of this test's
//! own. The selection, and why the rest is left out, is `tests/batch_api/moto_tests.txt`.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::batch::{create_key, free_port};
use common::*;

const SELECTION: &str = include_str!("batch_api/moto_tests.txt");

fn moto_venv() -> String {
    std::env::var("BARGE_MOTO_VENV")
        .expect("BARGE_MOTO_VENV is not set: run these tests with `make test` (hack/cluster.sh builds moto's venv and suite)")
}

/// A child process that gets SIGKILL when this test process ends.
fn spawn(cmd: &mut Command, log: &str) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log_path(log)).unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child with us.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("{log} starts: {e}"))
}

async fn answers(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else { return false };
    let Some(authority) = uri.authority() else { return false };
    tokio::net::TcpStream::connect(authority.as_str()).await.is_ok()
}

/// The test ids of the selection: one per line, `#` starts a comment.
fn selected() -> Vec<String> {
    SELECTION
        .lines()
        .map(|line| line.split('#').next().unwrap().trim())
        .filter(|line| !line.is_empty())
        .map(|id| format!("tests/test_batch/{id}"))
        .collect()
}

#[tokio::test]
async fn motos_own_batch_tests_pass_against_barge() {
    let client = client().await;
    install_crds(&client).await;
    let credentials_ns = namespace(&client, "moto-keys").await;
    let jobs_ns = namespace(&client, "moto-jobs").await;
    let api_port = free_port();
    spawn_operator_for_process(
        "moto-suite",
        &[
            ("BARGE_BATCH_API_ADDR", &format!("127.0.0.1:{api_port}")),
            ("BARGE_CREDENTIALS_NAMESPACE", &credentials_ns),
            // moto's tests expect ARNs of eu-central-1 and moto's account.
            ("BARGE_BATCH_API_REGION", "eu-central-1"),
            ("BARGE_BATCH_API_ACCOUNT_ID", "123456789012"),
        ],
    );
    let key = create_key(&credentials_ns, &jobs_ns, &[], true);
    let venv = moto_venv();

    let moto_port = free_port();
    let moto_server = spawn(
        Command::new(format!("{venv}/bin/moto_server")).args([
            "-H",
            "127.0.0.1",
            "-p",
            &moto_port.to_string(),
        ]),
        "moto-suite-moto",
    );
    let router_port = free_port();
    let barge = format!("http://127.0.0.1:{api_port}");
    let moto = format!("http://127.0.0.1:{moto_port}");
    let router_process = spawn(
        Command::new(format!("{venv}/bin/python")).args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/batch_api/moto_router.py"),
            &router_port.to_string(),
            &barge,
            &moto,
            "eu-central-1",
            &key.id,
            &key.secret,
        ]),
        "moto-suite-router",
    );
    let router = format!("http://127.0.0.1:{router_port}");
    for url in [&barge, &moto, &router] {
        eventually(&format!("{url} answers"), Duration::from_secs(60), || async {
            answers(url).await.then_some(())
        })
        .await;
    }
    // The key is read from its Secret by a watch: wait until Barge knows it.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // BARGE_MOTO_TESTS=all runs the whole of moto's Batch suite, to see how the rest fares.
    let all = std::env::var("BARGE_MOTO_TESTS").is_ok_and(|v| v == "all");
    let ids = if all { vec!["tests/test_batch".to_string()] } else { selected() };
    let out = Command::new(format!("{venv}/bin/python"))
        .args([
            "-m",
            "pytest",
            "-q",
            "-rfE",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-m",
            "not requires_docker",
        ])
        .args(&ids)
        .current_dir(format!("{venv}/suite"))
        .env("TEST_SERVER_MODE", "true")
        .env("TEST_SERVER_MODE_ENDPOINT", &router)
        .env("AWS_ACCESS_KEY_ID", "FOOBARKEY")
        .env("AWS_SECRET_ACCESS_KEY", "FOOBARSECRET")
        .env("AWS_DEFAULT_REGION", "eu-central-1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    for mut child in [moto_server, router_process] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "moto's Batch tests failed against Barge:\n{report}");
    // Every selected test ran and passed: none skipped or deselected on the way.
    let summary = report.lines().rev().find(|l| l.contains(" passed")).unwrap_or_default();
    let passed: usize = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, word)| word.starts_with("passed"))
        .and_then(|(n, _)| n.trim_start_matches('=').parse().ok())
        .unwrap_or(0);
    if !all {
        assert!(!summary.contains("skipped") && !summary.contains("deselected"), "{summary}");
        assert!(passed >= selected().len(), "{passed} passed of {} selected: {summary}", selected().len());
    }
}
