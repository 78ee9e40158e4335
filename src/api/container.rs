//! A job's container as AWS Batch's `containerProperties` describes it: image, command,
//! resources, and the rest of AWS's fields (volumes, Linux parameters, user, secrets, IAM
//! role, logging), each checked here as the API server's rules check it.
//!
//! What most jobs leave out is kept behind one box, so that a job held in memory with a
//! container of its own costs no more than before these fields existed.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation on a ServiceAccount binding it to an IAM role, as IRSA reads it.
pub const ANNOTATION_IRSA_ROLE: &str = "eks.amazonaws.com/role-arn";
/// Annotation on a ServiceAccount binding it to an IAM role through an EKS Pod Identity
/// association (which the Kubernetes API cannot see): the namespace's owner says it here.
pub const ANNOTATION_POD_IDENTITY_ROLE: &str = "barge.dev/role-arn";
/// The key of a Kubernetes Secret that holds a whole AWS secret or parameter.
pub const WHOLE_SECRET_KEY: &str = "value";
/// The largest `linuxParameters.maxSwap` a pod can be given: Kubernetes gives pods whose
/// requests equal their limits (every Barge container) no swap.
pub const MAX_SWAP_ON_KUBERNETES: i64 = 0;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// vCPUs the container needs, e.g. 1 or 0.5.
    #[serde(default = "default_vcpus")]
    #[x_kube(validation = Rule::new("self > 0.0").message("vcpus must be greater than 0"))]
    pub vcpus: f64,
    /// Memory as a Kubernetes quantity, e.g. 2Gi or 512Mi.
    #[serde(default = "default_memory")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("memory must be a positive quantity such as 2Gi or 512Mi"))]
    pub memory: String,
    #[serde(default)]
    pub gpus: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { vcpus: default_vcpus(), memory: default_memory(), gpus: 0 }
    }
}

fn default_vcpus() -> f64 {
    1.0
}
fn default_memory() -> String {
    "2Gi".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!self.name.startsWith('AWS_BATCH_')").message("environment variables named AWS_BATCH_* are reserved: Barge sets them on every job's pod"))]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// The container of a job or of one range of a multi-node job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ContainerFields", into = "ContainerFields")]
pub struct ContainerSpec {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub privileged: bool,
    /// AWS's other container fields; `None` when the container gives none of them.
    pub extra: Option<Box<ContainerExtra>>,
}

impl ContainerSpec {
    /// The fields beyond image, command and resources (all empty for most containers).
    pub fn extra(&self) -> &ContainerExtra {
        static NONE: std::sync::OnceLock<ContainerExtra> = std::sync::OnceLock::new();
        self.extra.as_deref().unwrap_or_else(|| NONE.get_or_init(ContainerExtra::default))
    }

    pub fn extra_mut(&mut self) -> &mut ContainerExtra {
        self.extra.get_or_insert_with(Default::default)
    }
}

/// AWS's container fields beyond image, command, environment and resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerExtra {
    /// Volumes the container's `mountPoints` name: a host path, an EFS file system, or
    /// (with neither) an empty scratch directory for the attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_parameters: Option<LinuxParameters>,
    /// Refused: a Kubernetes pod cannot set its container's resource limits (the node's
    /// container runtime sets them for every container).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("size(self) == 0").message("ulimits cannot be set on a Kubernetes pod: the node's container runtime sets them (containerd: nofile 1048576); leave ulimits out"))]
    pub ulimits: Vec<Ulimit>,
    /// `UID` or `UID:GID`, numeric: the container's `runAsUser` and `runAsGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,10}(:[0-9]{1,10})?$')").message("user must be a numeric UID or UID:GID (Kubernetes runs containers as numbers, e.g. 65534 for nobody)"))]
    #[schemars(length(max = 32))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly_root_filesystem: bool,
    /// Environment variables read from Kubernetes Secrets of the job's namespace; see
    /// [`secret_source`] for which Secret and key an AWS secret or parameter names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub secrets: Vec<SecretRef>,
    /// The IAM role the job's container acts as: the job runs as the ServiceAccount of
    /// its namespace that is bound to this role (annotated `eks.amazonaws.com/role-arn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$')").message("jobRoleArn must be an IAM role ARN, arn:aws:iam::ACCOUNT:role/NAME"))]
    #[schemars(length(max = 2048))]
    pub job_role_arn: Option<String>,
    /// Kept and described; on a cluster the kubelet's own credentials pull images and
    /// read Secrets, so nothing assumes this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    /// Runs the container only on nodes of this instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Local disk the container may use: its `ephemeral-storage` request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    /// Kept and described: where the container's output goes on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
    /// The registry credentials of a private image: an image pull Secret, named by the
    /// same rule as `secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<RepositoryCredentials>,
}

impl ContainerExtra {
    fn is_empty(&self) -> bool {
        *self == ContainerExtra::default()
    }
}

/// How a container is written: every field flat, as in `containerProperties`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.linuxParameters) || !has(self.linuxParameters.devices) || size(self.linuxParameters.devices) == 0 || (has(self.privileged) && self.privileged)").message("linuxParameters.devices needs privileged: true (a pod reaches a host device only when privileged)"))]
pub struct ContainerFields {
    #[x_kube(validation = Rule::new("size(self) > 0").message("container.image is required, e.g. busybox:1.36"))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub resources: Resources,
    /// Runs the container privileged (AWS's `containerProperties.privileged`): the
    /// cluster's Pod Security admission decides whether the namespace allows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(flatten)]
    pub extra: ContainerExtra,
}

impl From<ContainerFields> for ContainerSpec {
    fn from(f: ContainerFields) -> Self {
        ContainerSpec {
            image: f.image,
            command: f.command,
            args: f.args,
            env: f.env,
            resources: f.resources,
            privileged: f.privileged,
            extra: (!f.extra.is_empty()).then(|| Box::new(f.extra)),
        }
    }
}

impl From<ContainerSpec> for ContainerFields {
    fn from(c: ContainerSpec) -> Self {
        ContainerFields {
            image: c.image,
            command: c.command,
            args: c.args,
            env: c.env,
            resources: c.resources,
            privileged: c.privileged,
            extra: c.extra.map(|e| *e).unwrap_or_default(),
        }
    }
}

impl JsonSchema for ContainerSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ContainerSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        ContainerFields::json_schema(generator)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.host) && has(self.efsVolumeConfiguration))").message("a volume is a host path or an EFS file system, not both"))]
#[x_kube(validation = Rule::new("!has(self.s3filesVolumeConfiguration)").message("s3filesVolumeConfiguration cannot be mounted on a pod: Amazon S3 Files needs its own mount helper on the node; copy the data in the job, or mount a PersistentVolume from eksProperties"))]
pub struct Volume {
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]{1,255}$')").message("a volume name is 1 to 255 letters, numbers, hyphens and underscores"))]
    #[schemars(length(max = 255))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efs_volume_configuration: Option<EfsVolume>,
    /// Refused: see the message.
    #[serde(default, rename = "s3filesVolumeConfiguration", skip_serializing_if = "Option::is_none")]
    pub s3files_volume_configuration: Option<S3FilesVolume>,
}

/// An Amazon S3 Files file system (refused: a pod cannot mount it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3FilesVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_system_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit_encryption_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_point_arn: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// A path on the node; absent, the volume is an empty directory for the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
}

/// An EFS file system, mounted over NFS v4.1 from its DNS name in the operator's region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.transitEncryption) || self.transitEncryption == 'DISABLED'").message("efsVolumeConfiguration.transitEncryption ENABLED needs the EFS CSI driver's TLS mount: make a PersistentVolume of driver efs.csi.aws.com and mount its claim from eksProperties (Barge mounts EFS over plain NFS)"))]
#[x_kube(validation = Rule::new("!has(self.authorizationConfig) || ((!has(self.authorizationConfig.accessPointId) || self.authorizationConfig.accessPointId == '') && (!has(self.authorizationConfig.iam) || self.authorizationConfig.iam == 'DISABLED'))").message("efsVolumeConfiguration.authorizationConfig (an access point or IAM authorization) needs the EFS CSI driver: make a PersistentVolume of driver efs.csi.aws.com and mount its claim from eksProperties"))]
pub struct EfsVolume {
    #[x_kube(validation = Rule::new("self.matches('^fs-[0-9a-f]{8,40}$')").message("fileSystemId is an EFS file system id such as fs-0123456789abcdef0"))]
    #[schemars(length(max = 64))]
    pub file_system_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_directory: Option<String>,
    /// DISABLED (the default). ENABLED is refused: see the README.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub transit_encryption: Option<String>,
    /// Ignored as on AWS without transit encryption: NFS is port 2049.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit_encryption_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_config: Option<EfsAuthorization>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EfsAuthorization {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub access_point_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub iam: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("mountPoints[].containerPath must be an absolute path"))]
    #[schemars(length(max = 4096))]
    pub container_path: String,
    #[schemars(length(max = 255))]
    pub source_volume: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinuxParameters {
    /// MiB of /dev/shm: a memory-backed emptyDir of that size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("linuxParameters.sharedMemorySize is MiB, at least 1"))]
    pub shared_memory_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tmpfs: Vec<Tmpfs>,
    /// Host devices, mounted into a privileged container at `containerPath`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub devices: Vec<Device>,
    /// Runs an init process as PID 1 that reaps zombies: the pod shares one process
    /// namespace, whose PID 1 is the pause process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_process_enabled: bool,
    /// MiB of swap: only 0 (no swap) can be honoured, which is what Kubernetes gives a
    /// container whose requests equal its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self <= 0").message("linuxParameters.maxSwap above 0 cannot be honoured: Kubernetes gives a pod whose requests equal its limits no swap; leave maxSwap out or set 0"))]
    pub max_swap: Option<i64>,
    /// Accepted with `maxSwap` 0 or none, where it has no effect (as on AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("linuxParameters.swappiness is between 0 and 100"))]
    pub swappiness: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tmpfs {
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("tmpfs[].containerPath must be an absolute path"))]
    #[schemars(length(max = 4096))]
    pub container_path: String,
    /// MiB.
    #[x_kube(validation = Rule::new("self >= 1").message("tmpfs[].size is MiB, at least 1"))]
    pub size: u32,
    /// `ro` mounts it read-only; Kubernetes mounts memory volumes with its own options, so
    /// the others are kept and not applied (see the README).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[x_kube(validation = Rule::new("self.startsWith('/dev/')").message("devices[].hostPath must be a device under /dev/"))]
    #[schemars(length(max = 4096))]
    pub host_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    /// READ, WRITE, MKNOD: a privileged container has all three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ulimit {
    pub name: String,
    pub soft_limit: i64,
    pub hard_limit: i64,
}

/// An environment variable from a secret (`secrets[]`, `logConfiguration.secretOptions[]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
    /// A Secrets Manager secret's ARN (with AWS's `:json-key:version-stage:version-id`
    /// suffixes), an SSM parameter's ARN, or a parameter's name.
    #[x_kube(validation = Rule::new("size(self) > 0").message("secrets[].valueFrom names a Secrets Manager secret or an SSM parameter"))]
    #[schemars(length(max = 2048))]
    pub value_from: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralStorage {
    #[serde(rename = "sizeInGiB")]
    pub size_in_gib: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_options: Vec<SecretRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryCredentials {
    pub credentials_parameter: String,
}

/// Which Kubernetes Secret of the job's namespace, and which key of it, stands for an AWS
/// secret or parameter:
/// - a Secrets Manager ARN `arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX` is the
///   Secret named after NAME (its random six-character suffix dropped), key `value`, or the
///   JSON key when the ARN names one (`…:NAME-XXXXXX:username::`);
/// - an SSM parameter's ARN `arn:aws:ssm:REGION:ACCOUNT:parameter/PATH` or its name `PATH`
///   is the Secret named after PATH, key `value`.
///
/// Names become Secret names by lower-casing them and turning `/`, `_`, `.` and spaces into
/// `-` (leading and trailing ones dropped): `prod/db_password` is `prod-db-password`. A
/// version stage other than AWSCURRENT, or a version id, cannot be chosen on a Secret.
pub fn secret_source(value_from: &str) -> Result<(String, String), String> {
    let bad = |why: &str| Err(format!("secret {value_from:?}: {why}"));
    let (name, key) = if let Some(rest) = value_from.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        if parts.len() < 5 {
            return bad("is not an ARN of a Secrets Manager secret or an SSM parameter");
        }
        let (service, resource) = (parts[1], parts[4]);
        if let (Some(secret), "secretsmanager") = (resource.strip_prefix("secret:"), service) {
            let mut fields = secret.split(':');
            let full = fields.next().unwrap_or_default();
            let json_key = fields.next().unwrap_or_default();
            let stage = fields.next().unwrap_or_default();
            let version = fields.next().unwrap_or_default();
            if !(stage.is_empty() || stage == "AWSCURRENT") || !version.is_empty() {
                return bad(
                    "names a version stage or id; a Kubernetes Secret holds one version (the one synced)",
                );
            }
            // The ARN's name ends in a hyphen and six random characters AWS adds.
            let name = match full.rsplit_once('-') {
                Some((n, suffix)) if suffix.len() == 6 && !n.is_empty() => n,
                _ => full,
            };
            let key = if json_key.is_empty() { WHOLE_SECRET_KEY } else { json_key };
            (name.to_string(), key.to_string())
        } else if let (Some(path), "ssm") = (resource.strip_prefix("parameter"), service) {
            (path.to_string(), WHOLE_SECRET_KEY.to_string())
        } else {
            return bad("is not an ARN of a Secrets Manager secret or an SSM parameter");
        }
    } else {
        (value_from.to_string(), WHOLE_SECRET_KEY.to_string())
    };
    let secret = kube_name(&name);
    if secret.is_empty() {
        return bad("names nothing a Kubernetes Secret can be named after");
    }
    if !valid_secret_key(&key) {
        return bad("its JSON key is not a valid Secret key (letters, digits, -, _ and .)");
    }
    Ok((secret, key))
}

/// A name made a valid Kubernetes object name (a DNS subdomain of at most 253 characters).
fn kube_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '-' => c,
            _ => '-',
        })
        .take(253)
        .collect();
    mapped.trim_matches('-').to_string()
}

fn valid_secret_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `UID` or `UID:GID`.
pub fn parse_user(user: &str) -> Result<(i64, Option<i64>), String> {
    let number = |s: &str| s.parse::<u32>().map(i64::from).ok();
    let parsed = match user.split_once(':') {
        None => number(user).map(|u| (u, None)),
        Some((u, g)) => number(u).zip(number(g)).map(|(u, g)| (u, Some(g))),
    };
    parsed.ok_or_else(|| {
        format!("user {user:?} must be a numeric UID or UID:GID (Kubernetes runs containers as numbers, e.g. 65534 for nobody)")
    })
}

/// The AWS-only fields of a container that a pod cannot honour, checked as the API
/// server's rules check them (the AWS Batch API refuses them with the same words).
pub fn check(c: &ContainerSpec, at: &str) -> Result<(), String> {
    let Some(x) = c.extra.as_deref() else { return Ok(()) };
    if !x.ulimits.is_empty() {
        return Err(format!(
            "{at}ulimits cannot be set on a Kubernetes pod: the node's container runtime sets them (containerd: nofile 1048576); leave ulimits out"
        ));
    }
    if let Some(u) = &x.user {
        parse_user(u).map_err(|e| format!("{at}{e}"))?;
    }
    for m in &x.mount_points {
        if !x.volumes.iter().any(|v| v.name == m.source_volume) {
            return Err(format!(
                "{at}mountPoints: sourceVolume {:?} is not one of volumes[].name",
                m.source_volume
            ));
        }
        if !m.container_path.starts_with('/') {
            return Err(format!("{at}mountPoints: containerPath {:?} must be absolute", m.container_path));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for v in &x.volumes {
        if !names.insert(v.name.as_str()) {
            return Err(format!("{at}volumes: the name {:?} is given twice", v.name));
        }
        if v.host.as_ref().and_then(|h| h.source_path.as_ref()).is_some()
            && v.efs_volume_configuration.is_some()
        {
            return Err(format!(
                "{at}volumes[{}]: a volume is a host path or an EFS file system, not both",
                v.name
            ));
        }
        if let Some(efs) = &v.efs_volume_configuration {
            check_efs(efs, &format!("{at}volumes[{}].efsVolumeConfiguration.", v.name))?;
        }
        if v.s3files_volume_configuration.is_some() {
            return Err(format!(
                "{at}volumes[{}].s3filesVolumeConfiguration cannot be mounted on a pod: Amazon S3 Files needs its own mount helper on the node; copy the data in the job, or mount a PersistentVolume from eksProperties",
                v.name
            ));
        }
    }
    if let Some(l) = &x.linux_parameters {
        if !l.devices.is_empty() && !c.privileged {
            return Err(format!(
                "{at}linuxParameters.devices needs privileged: true (a pod reaches a host device only when privileged)"
            ));
        }
        if l.max_swap.is_some_and(|s| s > MAX_SWAP_ON_KUBERNETES) {
            return Err(format!(
                "{at}linuxParameters.maxSwap above 0 cannot be honoured: Kubernetes gives a pod whose requests equal its limits no swap; leave maxSwap out or set 0"
            ));
        }
        if l.swappiness.is_some_and(|s| !(0..=100).contains(&s)) {
            return Err(format!("{at}linuxParameters.swappiness is between 0 and 100"));
        }
        if l.shared_memory_size == Some(0) {
            return Err(format!("{at}linuxParameters.sharedMemorySize is MiB, at least 1"));
        }
        for t in &l.tmpfs {
            if t.size == 0 || !t.container_path.starts_with('/') {
                return Err(format!(
                    "{at}linuxParameters.tmpfs: {:?} needs an absolute containerPath and a size of at least 1 MiB",
                    t.container_path
                ));
            }
        }
    }
    for s in x.secrets.iter().chain(x.log_configuration.iter().flat_map(|l| &l.secret_options)) {
        secret_source(&s.value_from).map_err(|e| format!("{at}secrets[{}]: {e}", s.name))?;
    }
    if let Some(r) = &x.repository_credentials {
        secret_source(&r.credentials_parameter).map_err(|e| format!("{at}repositoryCredentials: {e}"))?;
    }
    if let Some(role) = &x.job_role_arn
        && role_name(role).is_none()
    {
        return Err(format!(
            "{at}jobRoleArn {role:?} must be an IAM role ARN, arn:aws:iam::ACCOUNT:role/NAME"
        ));
    }
    Ok(())
}

fn check_efs(efs: &EfsVolume, at: &str) -> Result<(), String> {
    if efs.transit_encryption.as_deref().is_some_and(|t| t != "DISABLED") {
        return Err(format!(
            "{at}transitEncryption ENABLED needs the EFS CSI driver's TLS mount: make a PersistentVolume of driver efs.csi.aws.com and mount its claim from eksProperties (Barge mounts EFS over plain NFS)"
        ));
    }
    if let Some(a) = &efs.authorization_config
        && (a.access_point_id.as_deref().is_some_and(|p| !p.is_empty())
            || a.iam.as_deref().is_some_and(|i| i != "DISABLED"))
    {
        return Err(format!(
            "{at}authorizationConfig (an access point or IAM authorization) needs the EFS CSI driver: make a PersistentVolume of driver efs.csi.aws.com and mount its claim from eksProperties"
        ));
    }
    let id = efs.file_system_id.as_str();
    let valid = id.strip_prefix("fs-").is_some_and(|h| {
        (8..=40).contains(&h.len()) && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    });
    if !valid {
        return Err(format!(
            "{at}fileSystemId {id:?} is not an EFS file system id such as fs-0123456789abcdef0"
        ));
    }
    Ok(())
}

/// The role's name, from `arn:aws:iam::ACCOUNT:role/PATH/NAME`.
pub fn role_name(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let (partition, service, _region, account, resource) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = partition.starts_with("aws")
        && service == "iam"
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit());
    let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
    (ok && !name.is_empty()).then_some(name)
}

/// Whether an annotation binds a ServiceAccount to an IAM role.
pub fn role_annotation(key: &str) -> bool {
    key == ANNOTATION_IRSA_ROLE || key == ANNOTATION_POD_IDENTITY_ROLE
}

/// The ServiceAccount of namespace `ns` among `accounts` bound to IAM role `role`, the
/// first by name when several are. Only a ServiceAccount of the job's own namespace is
/// ever chosen: a namespace runs as a role only when its owner bound one of its accounts.
pub fn role_account<'a>(
    accounts: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    ns: &str,
    role: &str,
) -> Option<String> {
    accounts
        .filter(|m| m.namespace.as_deref() == Some(ns))
        .filter(|m| m.annotations.iter().flatten().any(|(k, v)| role_annotation(k) && v == role))
        .filter_map(|m| m.name.clone())
        .min()
}

/// The API server's rule that a container's mount points name its volumes (a task's
/// containers name the task's, which its own rule checks).
#[macro_export]
macro_rules! mounts_name_volumes_rule {
    ($c:literal) => {
        concat!(
            "!has(",
            $c,
            ") || !has(",
            $c,
            ".mountPoints) || ",
            $c,
            ".mountPoints.all(m, has(",
            $c,
            ".volumes) && ",
            $c,
            ".volumes.exists(v, v.name == m.sourceVolume))"
        )
    };
}

/// The NFS server of an EFS file system: its DNS name in `region`.
pub fn efs_dns_name(file_system_id: &str, region: &str) -> String {
    format!("{file_system_id}.efs.{region}.amazonaws.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_without_aws_extras_holds_no_box_and_round_trips() {
        let plain: ContainerSpec = serde_json::from_value(serde_json::json!({"image": "busybox"})).unwrap();
        assert!(plain.extra.is_none());
        let full = serde_json::json!({
            "image": "busybox",
            "user": "1000:1000",
            "readonlyRootFilesystem": true,
            "volumes": [{"name": "scratch", "host": {"sourcePath": "/mnt/scratch"}}],
            "mountPoints": [{"containerPath": "/scratch", "sourceVolume": "scratch"}],
            "linuxParameters": {"sharedMemorySize": 256, "tmpfs": [{"containerPath": "/tmp", "size": 64}]},
            "secrets": [{"name": "DB", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"}],
            "jobRoleArn": "arn:aws:iam::123456789012:role/etl"
        });
        let c: ContainerSpec = serde_json::from_value(full.clone()).unwrap();
        assert!(c.extra.is_some());
        assert_eq!(c.extra().user.as_deref(), Some("1000:1000"));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["linuxParameters"], full["linuxParameters"]);
        assert_eq!(back["mountPoints"], full["mountPoints"]);
        assert_eq!(serde_json::from_value::<ContainerSpec>(back).unwrap(), c);
        assert!(check(&c, "").is_ok());
    }

    #[test]
    fn aws_secrets_and_parameters_name_a_secret_and_key_by_the_documented_rule() {
        let sm = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db_password-AbCdEf";
        assert_eq!(secret_source(sm).unwrap(), ("prod-db-password".into(), "value".into()));
        let key = format!("{sm}:username::");
        assert_eq!(secret_source(&key).unwrap(), ("prod-db-password".into(), "username".into()));
        assert_eq!(secret_source(&format!("{sm}:username:AWSCURRENT:")).unwrap().1, "username");
        let staged = secret_source(&format!("{sm}:username:AWSPREVIOUS:")).unwrap_err();
        assert!(staged.contains("version stage"), "{staged}");
        let ssm = "arn:aws:ssm:us-east-1:123456789012:parameter/team/API_KEY";
        assert_eq!(secret_source(ssm).unwrap(), ("team-api-key".into(), "value".into()));
        assert_eq!(secret_source("api.token").unwrap(), ("api-token".into(), "value".into()));
        assert!(secret_source("arn:aws:s3:::bucket").is_err());
        assert!(secret_source("///").is_err());
    }

    #[test]
    fn what_a_pod_cannot_honour_is_refused_naming_the_field() {
        let refused = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"image": "i"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            check(&serde_json::from_value(v).unwrap(), "containerProperties.").unwrap_err()
        };
        let e = refused(serde_json::json!({"ulimits": [{"name": "nofile", "softLimit": 1, "hardLimit": 2}]}));
        assert!(e.starts_with("containerProperties.ulimits"), "{e}");
        assert!(refused(serde_json::json!({"user": "nobody"})).contains("numeric UID"));
        let devices = serde_json::json!({"linuxParameters": {"devices": [{"hostPath": "/dev/fuse"}]}});
        assert!(refused(devices).contains("needs privileged"));
        assert!(refused(serde_json::json!({"linuxParameters": {"maxSwap": 1024}})).contains("maxSwap"));
        let mount = serde_json::json!({"mountPoints": [{"containerPath": "/d", "sourceVolume": "nope"}]});
        assert!(refused(mount).contains("\"nope\" is not one of volumes"));
        let tls = serde_json::json!({"volumes": [{"name": "efs", "efsVolumeConfiguration":
            {"fileSystemId": "fs-12345678", "transitEncryption": "ENABLED"}}]});
        assert!(refused(tls).contains("transitEncryption ENABLED"));
        let ap = serde_json::json!({"volumes": [{"name": "efs", "efsVolumeConfiguration":
            {"fileSystemId": "fs-12345678", "authorizationConfig": {"accessPointId": "fsap-1"}}}]});
        assert!(refused(ap).contains("authorizationConfig"));
        assert!(refused(serde_json::json!({"jobRoleArn": "etl"})).contains("jobRoleArn"));
        assert_eq!(role_name("arn:aws:iam::123456789012:role/team/etl"), Some("etl"));
    }
}
