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

/// A program of the venv whose `bin` is `bin` (aws-cli, boto3, a workflow engine), with only
/// Barge's endpoint (for AWS Batch and CloudWatch Logs), the key and a region set.
pub fn venv_tool(bin: &str, program: &str, port: u16, key: &Key) -> Command {
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(format!("{bin}/{program}"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ENDPOINT_URL_BATCH", &endpoint)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", &endpoint)
        .env("AWS_ACCESS_KEY_ID", &key.id)
        .env("AWS_SECRET_ACCESS_KEY", &key.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    cmd
}

/// The aws-cli and boto3 venv's `bin` (hack/cluster.sh builds it).
pub fn clients_bin() -> String {
    std::env::var("BARGE_AWS_CLIENTS_BIN")
        .expect("BARGE_AWS_CLIENTS_BIN is not set: run these tests with `make test` (hack/cluster.sh builds the aws-cli and boto3 venv)")
}

/// The environment of an operator with the AWS Batch API on `port` (keys kept in
/// `credentials_ns`) and the log archive in `bucket` of moto's S3 at `moto`, read every 2 s
/// while a container runs.
pub fn archive_operator_env(
    port: u16,
    credentials_ns: &str,
    bucket: &str,
    moto: &str,
) -> Vec<(String, String)> {
    [
        ("BARGE_BATCH_API_ADDR", format!("127.0.0.1:{port}")),
        ("BARGE_CREDENTIALS_NAMESPACE", credentials_ns.to_string()),
        ("BARGE_BATCH_API_REGION", "us-east-1".into()),
        ("BARGE_LOGS_S3_BUCKET", bucket.to_string()),
        ("BARGE_LOGS_S3_ENDPOINT", moto.to_string()),
        ("BARGE_LOGS_CHECKPOINT_SECONDS", "2".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
