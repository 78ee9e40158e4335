//! Shipping: the Helm chart lints, installs and uninstalls cleanly; the plain manifests in
//! deploy/ match the chart and install with `kubectl apply -k`; under either, the operator
//! runs a job with nothing but the chart's RBAC (it authenticates with the chart's
//! ServiceAccount token). Also: the chart's CRDs match the code, the Grafana dashboard only
//! uses metrics that exist, and the Argo CD health checks judge sample objects right.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use barge::api::batch_job::JobPhase;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One operator at a time in this binary: the two install flows run one after the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command from the repository root; panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); `make test` puts it on PATH"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

#[test]
fn the_chart_lints_and_the_generated_files_are_in_sync() {
    let lint = run("helm", &["lint", "charts/barge"]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // Invalid values are refused by values.schema.json.
    let bad = Command::new("helm")
        .args(["template", "x", "charts/barge", "--kube-version", "1.33.0", "--set", "logLevel=loud"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(read("charts/barge/crds/barge.dev.yaml"), barge::api::crds_yaml(), "run `make generate`");
    // Offline, as a user renders it for GitOps: helm assumes the Kubernetes version of the
    // client libraries it was built with, which the chart's kubeVersion accepts.
    let offline = run("helm", &["template", "t", "charts/barge"]);
    assert!(offline.contains("kind: Deployment"), "{offline}");
    let rendered = run(
        "helm",
        &[
            "template",
            "barge",
            "charts/barge",
            "--namespace",
            "barge-system",
            "--kube-version",
            "1.33.0",
            "--include-crds",
            "-f",
            "deploy/values.yaml",
        ],
    );
    let committed = read("deploy/barge.yaml");
    let body = committed.split_once('\n').map(|(_, b)| b).unwrap_or_default();
    assert_eq!(body, rendered, "deploy/barge.yaml is stale: run `make generate`");
    let health = read("deploy/argocd/health-checks.yaml");
    for kind in ["BatchJob", "ComputeEnvironment", "JobDefinition", "JobQueue"] {
        let script = read(&format!("deploy/argocd/health/{kind}.lua"));
        let first = script.lines().next().unwrap();
        assert!(health.contains(&format!("    {first}")), "{kind} is missing from health-checks.yaml");
    }
}

#[test]
fn the_dashboard_parses_and_uses_only_metrics_barge_exports() {
    let dashboard: Value = serde_json::from_str(&read("charts/barge/dashboards/barge.json")).unwrap();
    // Every family Barge registers (labelled families show once they have a series), with
    // the suffixes Prometheus adds.
    use barge::metrics::*;
    let m = metrics();
    let ce = CeLabel { compute_environment: "ce".into() };
    m.jobs.get_or_create(&QueuePhase { queue: "q".into(), phase: "RUNNABLE".into() }).set(1);
    m.ce_vcpus.get_or_create(&CeVcpus { compute_environment: "ce".into(), kind: "max".into() }).set(1);
    m.ce_nodes.get_or_create(&ce).set(1);
    m.ce_cost_per_hour.get_or_create(&ce).set(1.0);
    let controller = ControllerLabel { controller: "batchjob".into() };
    m.reconciles.get_or_create(&controller).inc();
    m.reconcile_errors.get_or_create(&controller).inc();
    m.reconcile_seconds.get_or_create(&controller).observe(0.1);
    m.ec2_call("CreateFleet", Some("InsufficientInstanceCapacity"));
    let text = m.encode();
    let mut exported = std::collections::HashSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        match kind {
            "counter" => {
                exported.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
            _ => {
                exported.insert(name.to_string());
            }
        }
    }
    let mut used = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        used.push(v.as_str().unwrap().to_string());
                    }
                    stack.push(v);
                }
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    let mut names = 0;
    for expr in &used {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("barge_") {
                names += 1;
                assert!(exported.contains(word), "the dashboard uses {word}, which Barge does not export");
            }
        }
    }
    assert!(names >= 12, "the dashboard should chart Barge's metrics ({names} references)");
}

/// Runs an Argo CD health script on an object with the Lua interpreter Argo CD embeds
/// (5.1); returns (status, message).
fn health(kind: &str, obj: Value) -> (String, String) {
    let lua = mlua::Lua::new();
    let value = mlua::LuaSerdeExt::to_value(&lua, &obj).unwrap();
    lua.globals().set("obj", value).unwrap();
    let script = read(&format!("deploy/argocd/health/{kind}.lua"));
    let hs: mlua::Table = lua.load(&script).eval().unwrap();
    (hs.get("status").unwrap(), hs.get::<Option<String>>("message").unwrap().unwrap_or_default())
}

#[test]
fn argo_cd_health_checks_judge_sample_objects() {
    let job = |status: Value| json!({"spec": {"jobQueue": "q"}, "status": status});
    assert_eq!(health("BatchJob", json!({"spec": {}})).0, "Progressing");
    assert_eq!(health("BatchJob", job(json!({"phase": "SUCCEEDED"}))).0, "Healthy");
    let failed =
        health("BatchJob", job(json!({"phase": "FAILED", "statusReason": "Essential container exited"})));
    assert_eq!(failed, ("Degraded".into(), "FAILED: Essential container exited".into()));
    let misfit = job(
        json!({"phase": "RUNNABLE", "statusReason": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - too big"}),
    );
    assert_eq!(health("BatchJob", misfit).0, "Degraded");
    let waiting =
        job(json!({"phase": "RUNNABLE", "statusReason": "Waiting for compute environment ce to scale up"}));
    assert_eq!(health("BatchJob", waiting).0, "Progressing");

    assert_eq!(health("JobQueue", json!({"spec": {"state": "DISABLED"}})).0, "Suspended");
    let blocked = json!({"spec": {"state": "ENABLED"}, "status": {"jobs": {"runnable": 3},
        "conditions": [{"type": "Blocked", "status": "True", "message": "Job queue q is DISABLED"}]}});
    assert_eq!(health("JobQueue", blocked).0, "Degraded");
    let fine = json!({"spec": {}, "status": {"jobs": {"runnable": 1, "running": 4},
        "conditions": [{"type": "Blocked", "status": "False", "message": ""}]}});
    assert_eq!(health("JobQueue", fine), ("Healthy".into(), "1 runnable, 4 running".into()));

    let jd =
        |spec: Value, status: Value| json!({"metadata": {"generation": 2}, "spec": spec, "status": status});
    assert_eq!(health("JobDefinition", json!({"spec": {}})).0, "Progressing");
    assert_eq!(
        health("JobDefinition", jd(json!({}), json!({"revision": 2, "observedGeneration": 2}))),
        ("Healthy".into(), "Revision 2".into())
    );
    assert_eq!(
        health("JobDefinition", jd(json!({}), json!({"revision": 1, "observedGeneration": 1}))).0,
        "Progressing"
    );
    let inactive = jd(json!({"state": "INACTIVE"}), json!({"revision": 2, "observedGeneration": 2}));
    assert_eq!(health("JobDefinition", inactive).0, "Suspended");
    let refused = json!({"revision": 1, "observedGeneration": 1,
        "conditions": [{"type": "Registered", "status": "False", "message": "name too long"}]});
    assert_eq!(health("JobDefinition", jd(json!({}), refused)), ("Degraded".into(), "name too long".into()));

    let ce = |status: Value| json!({"spec": {"state": "ENABLED"}, "status": status});
    let ready = json!([{"type": "Ready", "status": "True", "message": "ok"}]);
    assert_eq!(
        health("ComputeEnvironment", ce(json!({"nodes": 2, "readyNodes": 2, "conditions": ready}))).0,
        "Healthy"
    );
    assert_eq!(
        health("ComputeEnvironment", ce(json!({"nodes": 3, "readyNodes": 1, "conditions": ready}))),
        ("Progressing".into(), "1 of 3 nodes ready".into())
    );
    let broken =
        json!([{"type": "Ready", "status": "False", "message": "Unknown instance types ignored: x9"}]);
    assert_eq!(health("ComputeEnvironment", ce(json!({"conditions": broken}))).0, "Degraded");
}

/// A kubeconfig for the same cluster that authenticates as a ServiceAccount.
fn service_account_kubeconfig(ns: &str, sa: &str, file: &Path) {
    let token = run("kubectl", &["create", "token", sa, "-n", ns, "--duration", "2h"]);
    let admin = std::env::var("KUBECONFIG").unwrap();
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    config["users"] = json!([{"name": "sa", "user": {"token": token.trim()}}]);
    let context = config["contexts"][0]["name"].clone();
    config["contexts"][0]["context"]["user"] = json!("sa");
    config["current-context"] = context;
    std::fs::write(file, serde_yaml::to_string(&config).unwrap()).unwrap();
}

/// Starts the operator as `sa` in `ns`, with leader election in `ns`.
fn operator_as(ns: &str, sa: &str, log: &str, local_provider: bool) -> std::process::Child {
    operator_as_with(ns, sa, log, local_provider, &[])
}

fn operator_as_with(
    ns: &str,
    sa: &str,
    log: &str,
    local_provider: bool,
    extra: &[(&str, &str)],
) -> std::process::Child {
    let kubeconfig = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{log}.kubeconfig"));
    service_account_kubeconfig(ns, sa, &kubeconfig);
    let provider = if local_provider { "true" } else { "false" };
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("BARGE_LOCAL_PROVIDER", provider),
        ("BARGE_LEADER_ELECT", "true"),
        ("POD_NAMESPACE", ns),
        ("BARGE_LEASE_NAME", "barge-leader"),
    ];
    env.extend_from_slice(extra);
    spawn_operator_with(log, &env)
}

fn can(ns: &str, sa: &str, verb: &str, resource: &str) -> bool {
    can_in("default", ns, sa, verb, resource)
}

/// Whether ServiceAccount `ns`/`sa` may `verb` `resource` in namespace `target`.
fn can_in(target: &str, ns: &str, sa: &str, verb: &str, resource: &str) -> bool {
    let as_user = format!("system:serviceaccount:{ns}:{sa}");
    let out = Command::new("kubectl")
        .args(["auth", "can-i", verb, resource, "-n", target, "--as", &as_user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

async fn a_job_runs(e: &Env, ce_spec: Value) {
    let ce = e.ce("ce", ce_spec).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("hello", &q, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    e.wait_phase("hello", JobPhase::Succeeded).await;
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(e.client.clone());
    e.cleanup(&[&ce]).await;
    eventually("the compute environment to be deleted", WAIT, || async {
        ces.get_opt(&ce).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn helm_install_runs_a_job_under_the_charts_rbac_and_uninstall_leaves_only_the_crds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    let ns = format!("barge-helm-{}", suffix());
    run(
        "helm",
        &[
            "install",
            "barge",
            "charts/barge",
            "--namespace",
            &ns,
            "--create-namespace",
            "--wait=false",
            "--set",
            "providers.local=true",
            "--set",
            "replicas=0",
        ],
    );
    assert!(can(&ns, "barge", "create", "pods"));
    assert!(can(&ns, "barge", "create", "nodes"), "the local provider may create nodes");
    assert!(!can(&ns, "barge", "create", "deployments"), "nothing beyond what Barge uses");
    assert!(!can(&ns, "barge", "get", "secrets"));
    // A namespace whose JobTriggers name a credentials Secret lets Barge read its Secrets,
    // and no other namespace's, by binding the chart's ClusterRole there.
    let tenant = common::namespace(&client, "trigger-tenant").await;
    run(
        "kubectl",
        &[
            "create",
            "rolebinding",
            "barge-trigger-keys",
            "-n",
            &tenant,
            "--clusterrole=barge-trigger-credentials",
            &format!("--serviceaccount={ns}:barge"),
        ],
    );
    assert!(can_in(&tenant, &ns, "barge", "get", "secrets"));
    assert!(!can_in(&tenant, &ns, "barge", "list", "secrets"), "one named Secret at a time, never a list");
    assert!(!can(&ns, "barge", "get", "secrets"), "only where a namespace binds it");
    let mut operator = operator_as(&ns, "barge", "helm", true);
    let e = Env::new(client.clone(), "helm-job").await;
    a_job_runs(&e, json!({"instanceTypes": ["m6i"], "maxvCpus": 8, "scaleDownDelaySeconds": 600})).await;
    let _ = operator.kill();
    let _ = operator.wait();

    run("helm", &["uninstall", "barge", "--namespace", &ns, "--wait"]);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(roles.get_opt("barge").await.unwrap().is_none(), "the ClusterRole is removed");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.list(&Default::default()).await.unwrap().items.is_empty());
    let left = run(
        "kubectl",
        &[
            "get",
            "sa,role,rolebinding,service,configmap",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/instance=barge",
            "-o",
            "name",
        ],
    );
    assert!(left.trim().is_empty(), "left behind: {left}");
    // What Helm documents it keeps: the CRDs.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get_opt("batchjobs.barge.dev").await.unwrap().is_some());
}

#[tokio::test]
async fn kubectl_apply_k_deploy_runs_a_job_under_its_rbac() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    run("kubectl", &["apply", "--server-side", "--force-conflicts", "-k", "deploy/"]);
    // No container image here: the operator runs outside the cluster as the ServiceAccount.
    run("kubectl", &["scale", "deployment/barge", "-n", "barge-system", "--replicas=0"]);
    assert!(!can("barge-system", "barge", "create", "nodes"), "no local provider: no node creation");
    assert!(can("barge-system", "barge", "delete", "nodes"));
    let mut operator = operator_as("barge-system", "barge", "kustomize", false);
    // Without the local provider the capacity is an existing node of the environment.
    let e = Env::new(client.clone(), "kustomize-job").await;
    let ce_name = format!("{}-ce", e.tag);
    let labels = [
        ("barge.dev/compute-environment".to_string(), ce_name.clone()),
        ("node.kubernetes.io/instance-type".to_string(), "m6i.xlarge".to_string()),
        ("type".to_string(), "kwok".to_string()),
    ];
    let node = format!("{ce_name}-node");
    kwok_node(&client, &node, "4", "16Gi", labels.into_iter().collect()).await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i.xlarge"], "minvCpus": 4, "maxvCpus": 4})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("hello", &q, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    e.wait_phase("hello", JobPhase::Succeeded).await;
    // Barge cannot remove a node of a provider it does not run: remove it first.
    delete_node(&client, &node).await;
    e.cleanup(&[&ce]).await;
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    eventually("the compute environment to be deleted", WAIT, || async {
        ces.get_opt(&ce).await.ok()?.is_none().then_some(())
    })
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    run("kubectl", &["delete", "-k", "deploy/", "-l", "app.kubernetes.io/instance=barge", "--wait=false"]);
    run("kubectl", &["delete", "namespace", "barge-system", "--wait=false"]);
}

/// What `kubectl auth can-i` answers for `user` (exit code 1 is a "no", not a failure).
/// `resource/sub` asks about a subresource (kubectl would read `sub` as an object's name).
fn user_can(user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if let Some(sub) = sub {
        args.extend(["--subresource", sub]);
    }
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let out = Command::new("kubectl").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn namespace_users_submit_jobs_through_the_aggregated_roles_and_touch_nothing_else() {
    let client = client().await;
    install_crds(&client).await;
    // The chart's user roles under a release name of their own (no clash with the installs).
    let roles = run("helm", &["template", "users", "charts/barge", "-s", "templates/user-roles.yaml"]);
    let mut apply = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply.stdin.take().unwrap().write_all(roles.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success(), "the user roles apply");

    let (mine, theirs) = (namespace(&client, "rbac-mine").await, namespace(&client, "rbac-theirs").await);
    let (alice, bob) = (format!("alice-{}", suffix()), format!("bob-{}", suffix()));
    for (user, role) in [(&alice, "edit"), (&bob, "view")] {
        run(
            "kubectl",
            &[
                "create",
                "rolebinding",
                &format!("{role}-{user}"),
                "--clusterrole",
                role,
                "--user",
                user,
                "-n",
                &mine,
            ],
        );
    }
    // The controller-manager folds the aggregated rules into edit and view.
    eventually("Barge's rules aggregated into edit and view", WAIT, || async {
        (user_can(&alice, "create", "batchjobs.barge.dev", Some(&mine))
            && user_can(&bob, "list", "batchjobs.barge.dev", Some(&mine)))
        .then_some(())
    })
    .await;
    assert!(user_can(&alice, "patch", "batchjobs.barge.dev", Some(&mine)), "cancel or terminate");
    assert!(!user_can(&alice, "patch", "batchjobs.barge.dev/status", Some(&mine)), "status is Barge's");
    assert!(!user_can(&alice, "create", "batchjobs.barge.dev", Some(&theirs)), "another namespace");
    assert!(!user_can(&alice, "list", "batchjobs.barge.dev", Some(&theirs)));
    for resource in ["jobqueues.barge.dev", "computeenvironments.barge.dev"] {
        for verb in ["create", "patch", "delete"] {
            assert!(!user_can(&alice, verb, resource, None), "alice may not {verb} {resource}");
        }
    }
    assert!(!user_can(&bob, "create", "batchjobs.barge.dev", Some(&mine)), "view cannot submit");
    // The cluster operator's role: queues and environments, bound cluster-wide.
    let carol = format!("carol-{}", suffix());
    run(
        "kubectl",
        &["create", "clusterrolebinding", &carol, "--clusterrole", "users-barge-admin", "--user", &carol],
    );
    for resource in ["jobqueues.barge.dev", "computeenvironments.barge.dev"] {
        assert!(user_can(&carol, "create", resource, None), "the admin role may create {resource}");
    }
    assert!(!user_can(&carol, "patch", "computeenvironments.barge.dev/status", None), "status is Barge's");
    assert!(!user_can(&carol, "create", "pods", Some(&mine)), "nothing beyond Barge's resources");

    // And for real, through the API server as alice.
    let job = |ns: &str| {
        format!(
            "apiVersion: barge.dev/v1alpha1\nkind: BatchJob\nmetadata: {{name: hello, namespace: {ns}}}\n\
             spec: {{jobQueue: q, container: {{image: busybox:1.36}}}}\n"
        )
    };
    let submit = |ns: &str| {
        let mut c = Command::new("kubectl")
            .args(["create", "--as", &alice, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(job(ns).as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert!(submit(&mine).0, "alice submits in her namespace");
    let (ok, err) = submit(&theirs);
    assert!(!ok && err.contains("forbidden"), "alice is refused elsewhere: {err}");

    for ns in [&mine, &theirs] {
        run("kubectl", &["delete", "namespace", ns, "--wait=false"]);
    }
    run("kubectl", &["delete", "clusterrolebinding", &carol]);
    run("kubectl", &["delete", "clusterrole", "users-barge-view", "users-barge-edit", "users-barge-admin"]);
}

/// aws-cli v1 from the test bed's venv, with only the endpoint, a key and a region.
fn aws_cli(port: u16, key: &Value, args: &[&str]) -> Result<Value, String> {
    let bin = std::env::var("BARGE_AWS_CLIENTS_BIN").expect("BARGE_AWS_CLIENTS_BIN (set by `make test`)");
    let out = Command::new(format!("{bin}/aws"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ENDPOINT_URL_BATCH", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", key["AccessKeyId"].as_str().unwrap())
        .env("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"].as_str().unwrap())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args(["batch"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(json!({})))
}

#[tokio::test]
async fn the_charts_batch_api_answers_aws_cli_under_its_rbac() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    let ns = format!("barge-api-{}", suffix());
    let release = format!("api{}", suffix());
    run(
        "helm",
        &[
            "install",
            &release,
            "charts/barge",
            "--namespace",
            &ns,
            "--create-namespace",
            "--wait=false",
            "--set",
            "providers.local=true",
            "--set",
            "replicas=0",
            "--set",
            "batchApi.enabled=true",
        ],
    );
    let sa = format!("{release}-barge");
    let secrets_in = |namespace: &str| {
        let out = Command::new("kubectl")
            .args([
                "auth",
                "can-i",
                "list",
                "secrets",
                "-n",
                namespace,
                "--as",
                &format!("system:serviceaccount:{ns}:{sa}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(secrets_in(&ns), "the endpoint reads its keys in its own namespace");
    assert!(!secrets_in("default"), "and nowhere else");
    assert!(can(&ns, &sa, "create", "batchjobs.barge.dev"));
    let services = run("kubectl", &["get", "service", "-n", &ns, "-o", "name"]);
    assert!(services.contains(&format!("service/{release}-barge-batch-api")), "{services}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut operator = operator_as_with(
        &ns,
        &sa,
        "helm-batch-api",
        true,
        &[("BARGE_BATCH_API_ADDR", &addr), ("BARGE_CREDENTIALS_NAMESPACE", &ns)],
    );
    let e = Env::new(client.clone(), "helm-api").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 8, "scaleDownDelaySeconds": 600})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    let key: Value = serde_json::from_str(&run(
        env!("CARGO_BIN_EXE_barge"),
        &["credentials", "create", "--namespace", &e.ns, "--operator-namespace", &ns, "--format", "json"],
    ))
    .unwrap();
    eventually("the endpoint answers the key", WAIT, || async {
        aws_cli(port, &key, &["describe-job-queues"]).ok()
    })
    .await;
    aws_cli(
        port,
        &key,
        &[
            "register-job-definition",
            "--job-definition-name",
            "hello",
            "--type",
            "container",
            "--container-properties",
            r#"{"image": "busybox:1.36", "command": ["echo", "hi"]}"#,
            "--tags",
            "sim.barge.dev/duration=1s",
            "--propagate-tags",
        ],
    )
    .unwrap();
    let job = aws_cli(
        port,
        &key,
        &["submit-job", "--job-name", "hello", "--job-queue", &q, "--job-definition", "hello"],
    )
    .unwrap();
    let id = job["jobId"].as_str().unwrap().to_string();
    eventually("the job submitted through the chart's endpoint succeeds", WAIT, || async {
        let d = aws_cli(port, &key, &["describe-jobs", "--jobs", &id]).ok()?;
        (d["jobs"][0]["status"] == "SUCCEEDED").then_some(())
    })
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    e.cleanup(&[&ce]).await;
    let _ = Api::<barge::api::JobQueue>::all(client.clone()).delete(&q, &Default::default()).await;
    run("helm", &["uninstall", &release, "--namespace", &ns, "--wait"]);
}
