//! What each of AWS's container fields becomes on the pod: volumes and mounts, shared
//! memory and tmpfs, devices, the user, a read-only root, secrets, the IAM role's
//! ServiceAccount, the instance type, local disk and private registry credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource, LocalObjectReference,
    NFSVolumeSource, PodSpec, ResourceRequirements, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::LABEL_INSTANCE_TYPE;
use crate::api::container::{ContainerSpec, efs_dns_name, parse_user, secret_source};
use crate::api::task::{Role, TaskSpec, layout};
use crate::k8s::quantities;
use crate::resources::Res;

/// What a pod needs from the cluster to honour a container's fields.
pub struct PodInputs<'a> {
    /// The job's namespace, whose ServiceAccounts `role_account` looks among.
    pub namespace: &'a str,
    /// The region EFS file systems are reached in (their DNS names carry it).
    pub region: &'a str,
    /// The ServiceAccount of the job's namespace bound to an IAM role, by the role's ARN.
    pub role_account: &'a dyn Fn(&str) -> Option<String>,
}

impl PodInputs<'_> {
    /// For pods whose containers name no role and no EFS volume.
    pub fn none() -> PodInputs<'static> {
        PodInputs { namespace: "", region: DEFAULT_REGION, role_account: &|_| None }
    }
}

/// The region EFS DNS names use when the operator is not told one (`AWS_REGION`).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Why a job whose role has no ServiceAccount cannot run, in words that say what to create.
pub fn missing_role_account(role: &str, namespace: &str) -> String {
    format!(
        "No ServiceAccount in namespace {namespace} is bound to jobRoleArn {role}: create one annotated \
         eks.amazonaws.com/role-arn: {role} (IRSA) or barge.dev/role-arn: {role} (EKS Pod Identity)"
    )
}

/// The pod of a job whose container is `c`, requesting `request`.
pub fn container_pod_spec(
    c: &ContainerSpec,
    request: Res,
    inputs: &PodInputs<'_>,
) -> Result<PodSpec, String> {
    let parts = container_parts(c, "main", "", request, inputs)?;
    let mut spec = PodSpec::default();
    parts.into_pod(&mut spec, false);
    Ok(spec)
}

/// The pod of a task: its essential containers as the pod's containers, the others as
/// sidecars (started first, stopped once the essential ones end) or, when something waits
/// for their SUCCESS, init containers, in the order `dependsOn` asks.
pub fn task_pod_spec(task: &TaskSpec, inputs: &PodInputs<'_>) -> Result<PodSpec, String> {
    let order = layout(task)?;
    let mut spec = PodSpec::default();
    for (i, role) in order {
        let tc = &task.containers[i];
        let mut c = tc.container.clone();
        // The task's volumes are every container's to mount; its role is every container's.
        for v in &task.volumes {
            if !c.extra().volumes.iter().any(|w| w.name == v.name) {
                c.extra_mut().volumes.push(v.clone());
            }
        }
        if let Some(role) = &task.task_role_arn
            && c.extra().job_role_arn.is_none()
        {
            c.extra_mut().job_role_arn = Some(role.clone());
        }
        let request = container_request(&c)?;
        let parts = container_parts(&c, &tc.name, &format!("{}-", tc.name), request, inputs)
            .map_err(|e| format!("container {}: {e}", tc.name))?;
        match role {
            Role::Main => parts.into_pod(&mut spec, false),
            Role::Init => parts.into_pod(&mut spec, true),
            Role::Sidecar => {
                let mut parts = parts;
                parts.container.restart_policy = Some("Always".into());
                parts.into_pod(&mut spec, true);
            }
        }
    }
    spec.termination_grace_period_seconds = task.containers.iter().filter_map(|c| c.stop_timeout).max();
    if task.pid_mode.as_deref() == Some("task") {
        spec.share_process_namespace = Some(true);
    }
    let accounts: std::collections::BTreeSet<_> =
        task.containers.iter().filter_map(|c| c.container.extra().job_role_arn.clone()).collect();
    if accounts.len() > 1 {
        return Err(
            "the task's containers name different jobRoleArns; a pod runs as one ServiceAccount".into()
        );
    }
    Ok(spec)
}

/// What one container of a task requests.
pub fn container_request(c: &ContainerSpec) -> Result<Res, String> {
    let millicpu = (c.resources.vcpus * 1000.0).ceil() as u64;
    let mib = crate::resources::parse_mib(&c.resources.memory).map_err(|e| e.to_string())?;
    Ok(Res::new(millicpu, mib, c.resources.gpus))
}

/// One container and what it brings to its pod.
struct Parts {
    container: Container,
    volumes: Vec<Volume>,
    service_account: Option<String>,
    share_process_namespace: bool,
    node_selector: BTreeMap<String, String>,
    pull_secrets: Vec<LocalObjectReference>,
}

impl Parts {
    /// Adds the container (to the init containers when `init`) and what it brings; a
    /// volume of a name already there is the same volume.
    fn into_pod(self, spec: &mut PodSpec, init: bool) {
        let list =
            if init { spec.init_containers.get_or_insert_with(Vec::new) } else { &mut spec.containers };
        list.push(self.container);
        if !self.volumes.is_empty() {
            let volumes = spec.volumes.get_or_insert_with(Vec::new);
            for v in self.volumes {
                if !volumes.iter().any(|w| w.name == v.name) {
                    volumes.push(v);
                }
            }
        }
        if self.service_account.is_some() {
            spec.service_account_name = self.service_account;
        }
        if self.share_process_namespace {
            spec.share_process_namespace = Some(true);
        }
        if !self.node_selector.is_empty() {
            spec.node_selector.get_or_insert_with(BTreeMap::new).extend(self.node_selector);
        }
        for s in self.pull_secrets {
            let secrets = spec.image_pull_secrets.get_or_insert_with(Vec::new);
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
    }
}

/// Container `c` named `name`; the volumes Barge adds for it (shared memory, tmpfs,
/// devices) are named with `own` before them.
fn container_parts(
    c: &ContainerSpec,
    name: &str,
    own: &str,
    request: Res,
    inputs: &PodInputs<'_>,
) -> Result<Parts, String> {
    crate::api::container::check(c, "")?;
    let x = c.extra();
    let mut amounts = quantities(request);
    if let Some(e) = &x.ephemeral_storage {
        amounts.insert("ephemeral-storage".into(), Quantity(format!("{}Gi", e.size_in_gib)));
    }
    let mut env: Vec<EnvVar> = c.env.iter().map(|e| plain_env(&e.name, &e.value)).collect();
    for s in &x.secrets {
        let (secret, key) = secret_source(&s.value_from)?;
        env.push(EnvVar {
            name: s.name.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: secret, key, optional: Some(false) }),
                ..Default::default()
            }),
        });
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for v in &x.volumes {
        let volume = match (&v.efs_volume_configuration, v.host.as_ref().and_then(|h| h.source_path.as_ref()))
        {
            (Some(efs), _) => Volume {
                nfs: Some(NFSVolumeSource {
                    server: efs_dns_name(&efs.file_system_id, inputs.region),
                    path: efs.root_directory.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| "/".into()),
                    read_only: None,
                }),
                ..named_volume(&v.name)
            },
            (None, Some(path)) => Volume {
                host_path: Some(HostPathVolumeSource { path: path.clone(), type_: None }),
                ..named_volume(&v.name)
            },
            // AWS's Docker volume with no host path: scratch space for the attempt.
            (None, None) => {
                Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..named_volume(&v.name) }
            }
        };
        volumes.push(volume);
    }
    for m in &x.mount_points {
        mounts.push(VolumeMount {
            name: volume_name(&m.source_volume),
            mount_path: m.container_path.clone(),
            read_only: m.read_only.then_some(true),
            ..Default::default()
        });
    }
    let mut security = SecurityContext::default();
    if c.privileged {
        security.privileged = Some(true);
    }
    if x.readonly_root_filesystem {
        security.read_only_root_filesystem = Some(true);
    }
    if let Some(user) = &x.user {
        let (uid, gid) = parse_user(user)?;
        security.run_as_user = Some(uid);
        security.run_as_group = gid;
    }
    let mut share_process_namespace = false;
    if let Some(l) = &x.linux_parameters {
        if let Some(mib) = l.shared_memory_size {
            let volume = format!("{own}dev-shm");
            volumes.push(memory_volume(&volume, mib));
            mounts.push(mount(&volume, "/dev/shm", false));
        }
        for (i, t) in l.tmpfs.iter().enumerate() {
            let volume = format!("{own}tmpfs-{i}");
            volumes.push(memory_volume(&volume, t.size));
            mounts.push(mount(&volume, &t.container_path, t.mount_options.iter().any(|o| o == "ro")));
        }
        for (i, d) in l.devices.iter().enumerate() {
            let volume = format!("{own}device-{i}");
            volumes.push(Volume {
                name: volume.clone(),
                host_path: Some(HostPathVolumeSource { path: d.host_path.clone(), type_: None }),
                ..Default::default()
            });
            let path = d.container_path.clone().unwrap_or_else(|| d.host_path.clone());
            mounts.push(mount(&volume, &path, false));
        }
        share_process_namespace = l.init_process_enabled;
    }
    let service_account = match &x.job_role_arn {
        None => None,
        Some(role) => {
            Some((inputs.role_account)(role).ok_or_else(|| missing_role_account(role, inputs.namespace))?)
        }
    };
    let mut node_selector = BTreeMap::new();
    if let Some(t) = &x.instance_type {
        node_selector.insert(LABEL_INSTANCE_TYPE.to_string(), t.clone());
    }
    let mut pull_secrets = Vec::new();
    if let Some(r) = &x.repository_credentials {
        let (secret, _) = secret_source(&r.credentials_parameter)?;
        pull_secrets.push(LocalObjectReference { name: secret });
    }
    let container = Container {
        name: name.into(),
        image: Some(c.image.clone()),
        command: (!c.command.is_empty()).then(|| c.command.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(amounts.clone()),
            limits: Some(amounts),
            ..Default::default()
        }),
        security_context: (security != SecurityContext::default()).then_some(security),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    Ok(Parts { container, volumes, service_account, share_process_namespace, node_selector, pull_secrets })
}

/// A user's volume name as a pod volume's (a DNS label); Barge's own volumes have names no
/// user volume maps to (`dev-shm`, `tmpfs-N`, `device-N` get a `u-` prefix when a user's).
fn volume_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(50)
        .collect();
    // FNV-1a: the same name gives the same volume in every version of Barge.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    // The hash keeps `a_b` and `a-b` apart; the prefix keeps clear of Barge's own.
    format!("u-{}-{hash:08x}", mapped.trim_matches('-'))
}

fn named_volume(name: &str) -> Volume {
    Volume { name: volume_name(name), ..Default::default() }
}

fn memory_volume(name: &str, mib: u32) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(format!("{mib}Mi"))),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value, inputs: &PodInputs<'_>) -> Result<PodSpec, String> {
        let mut v = serde_json::json!({"image": "busybox:1.35", "command": ["true"]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let c: ContainerSpec = serde_json::from_value(v).unwrap();
        container_pod_spec(&c, Res::new(1000, 2048, 0), inputs)
    }

    #[test]
    fn every_container_field_shows_on_the_pod() {
        let accounts =
            |role: &str| (role == "arn:aws:iam::123456789012:role/etl").then(|| "etl-runner".to_string());
        let inputs = PodInputs { namespace: "team-a", region: "eu-west-1", role_account: &accounts };
        let pod = spec(
            serde_json::json!({
                "privileged": true,
                "user": "1000:2000",
                "readonlyRootFilesystem": true,
                "volumes": [
                    {"name": "scratch", "host": {"sourcePath": "/mnt/scratch"}},
                    {"name": "shared", "efsVolumeConfiguration": {"fileSystemId": "fs-0123456789abcdef0", "rootDirectory": "/data"}},
                    {"name": "work"}
                ],
                "mountPoints": [
                    {"containerPath": "/scratch", "sourceVolume": "scratch"},
                    {"containerPath": "/shared", "sourceVolume": "shared", "readOnly": true},
                    {"containerPath": "/work", "sourceVolume": "work"}
                ],
                "linuxParameters": {
                    "sharedMemorySize": 512,
                    "tmpfs": [{"containerPath": "/run/cache", "size": 64, "mountOptions": ["ro", "noexec"]}],
                    "devices": [{"hostPath": "/dev/fuse"}],
                    "initProcessEnabled": true,
                    "maxSwap": 0, "swappiness": 60
                },
                "secrets": [{"name": "DB_PASSWORD", "valueFrom": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf:password::"}],
                "jobRoleArn": "arn:aws:iam::123456789012:role/etl",
                "instanceType": "m6i.large",
                "ephemeralStorage": {"sizeInGiB": 30},
                "repositoryCredentials": {"credentialsParameter": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:registry-XyZ123"}
            }),
            &inputs,
        )
        .unwrap();
        let text = serde_json::to_value(&pod).unwrap();
        let main = &text["containers"][0];
        assert_eq!(
            main["securityContext"],
            serde_json::json!({
                "privileged": true, "readOnlyRootFilesystem": true, "runAsUser": 1000, "runAsGroup": 2000
            })
        );
        assert_eq!(main["resources"]["limits"]["ephemeral-storage"], "30Gi");
        let env = main["env"].as_array().unwrap();
        assert_eq!(
            env[0]["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "prod-db", "key": "password", "optional": false})
        );
        let volumes = text["volumes"].as_array().unwrap();
        let by_mount = |path: &str| {
            let m = main["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap()
                .clone();
            let v = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("{m} in {volumes:?}"))
                .clone();
            (m, v)
        };
        assert_eq!(by_mount("/scratch").1["hostPath"]["path"], "/mnt/scratch");
        let (m, v) = by_mount("/shared");
        assert_eq!(
            v["nfs"],
            serde_json::json!({"server": "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com", "path": "/data"})
        );
        assert_eq!(m["readOnly"], true);
        assert_eq!(by_mount("/work").1["emptyDir"], serde_json::json!({}));
        assert_eq!(
            by_mount("/dev/shm").1["emptyDir"],
            serde_json::json!({"medium": "Memory", "sizeLimit": "512Mi"})
        );
        let (m, v) = by_mount("/run/cache");
        assert_eq!(
            (v["emptyDir"]["sizeLimit"].as_str(), m["readOnly"].as_bool()),
            (Some("64Mi"), Some(true))
        );
        assert_eq!(by_mount("/dev/fuse").1["hostPath"]["path"], "/dev/fuse");
        assert_eq!(text["shareProcessNamespace"], true);
        assert_eq!(text["serviceAccountName"], "etl-runner");
        assert_eq!(text["nodeSelector"][LABEL_INSTANCE_TYPE], "m6i.large");
        assert_eq!(text["imagePullSecrets"], serde_json::json!([{"name": "registry"}]));
    }

    #[test]
    fn a_role_no_service_account_is_bound_to_is_refused_naming_it() {
        let e = spec(
            serde_json::json!({"jobRoleArn": "arn:aws:iam::123456789012:role/other"}),
            &PodInputs::none(),
        )
        .unwrap_err();
        assert!(
            e.contains("arn:aws:iam::123456789012:role/other") && e.contains("eks.amazonaws.com/role-arn"),
            "{e}"
        );
    }

    #[test]
    fn user_volume_names_never_meet_barges_own() {
        assert_ne!(volume_name("a_b"), volume_name("a-b"));
        assert!(volume_name("dev-shm").starts_with("u-dev-shm-"));
        assert!(volume_name(&"x".repeat(255)).len() <= 63);
    }
}
