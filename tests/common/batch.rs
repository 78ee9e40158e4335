//! Keys for the AWS Batch API, issued as a user issues them: `barge credentials create`.

use std::process::Command;

use serde_json::Value;

pub struct Key {
    pub id: String,
    pub secret: String,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `barge credentials create --namespace NS [--queues a,b] [--admin]`, keeping the key in
/// `credentials_ns`.
pub fn create_key(credentials_ns: &str, namespace: &str, queues: &[&str], admin: bool) -> Key {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_barge"));
    cmd.args(["credentials", "create", "--namespace", namespace, "--format", "json"])
        .env("BARGE_CREDENTIALS_NAMESPACE", credentials_ns);
    if admin {
        cmd.arg("--admin");
    }
    if !queues.is_empty() {
        cmd.args(["--queues", &queues.join(",")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "credentials create: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Key {
        id: v["AccessKeyId"].as_str().unwrap().into(),
        secret: v["SecretAccessKey"].as_str().unwrap().into(),
    }
}
