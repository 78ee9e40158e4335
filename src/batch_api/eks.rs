//! AWS Batch on EKS's `eksProperties.podProperties`: a pod written in Kubernetes' own words,
//! which is what a JobDefinition's `podTemplate` holds. RegisterJobDefinition maps one onto
//! the other here, member by member; DescribeJobDefinitions and DescribeJobs map it back.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult};

/// The members of each EKS shape Barge serves, as AWS's model names them. Each becomes the
/// Kubernetes field of the same name.
const POD_PROPERTIES: &[&str] = &[
    "serviceAccountName",
    "hostNetwork",
    "dnsPolicy",
    "imagePullSecrets",
    "containers",
    "initContainers",
    "volumes",
    "metadata",
    "shareProcessNamespace",
    "securityContext",
];
const POD_SECURITY_CONTEXT: &[&str] =
    &["runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "fsGroup"];
const CAPABILITIES: &[&str] = &["add", "drop"];
const SECCOMP_PROFILE: &[&str] = &["type", "localhostProfile"];
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "resources",
    "volumeMounts",
    "securityContext",
];
const SECURITY_CONTEXT: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "capabilities",
    "seccompProfile",
];
const VOLUME: &[&str] = &["name", "hostPath", "emptyDir", "secret", "persistentVolumeClaim"];
const VOLUME_MOUNT: &[&str] = &["name", "mountPath", "subPath", "readOnly"];
const METADATA: &[&str] = &["labels", "annotations", "namespace"];
const RESOURCES: &[&str] = &["limits", "requests"];
const DNS_POLICIES: &[&str] = &["Default", "ClusterFirst", "ClusterFirstWithHostNet"];

/// The members served of each EKS shape, for the test that walks AWS's model.
pub const SERVED: &[(&str, &[&str])] = &[
    ("EksPodProperties", POD_PROPERTIES),
    ("EksContainer", CONTAINER),
    ("EksContainerSecurityContext", SECURITY_CONTEXT),
    ("EksVolume", VOLUME),
    ("EksContainerVolumeMount", VOLUME_MOUNT),
    ("EksMetadata", METADATA),
    ("EksContainerResourceRequirements", RESOURCES),
    ("EksPodSecurityContext", POD_SECURITY_CONTEXT),
    ("EksContainerLinuxCapabilities", CAPABILITIES),
    ("EksSeccompProfile", SECCOMP_PROFILE),
];

/// Checks a security context's members, and its seccomp profile's and capabilities'.
fn security_context(sc: &Value, allowed: &[&str], at: &str) -> ApiResult<()> {
    let sc = object(sc, at)?;
    only(sc, allowed, &format!("{at}."))?;
    if let Some(p) = sc.get("seccompProfile") {
        only(object(p, &format!("{at}.seccompProfile"))?, SECCOMP_PROFILE, &format!("{at}.seccompProfile."))?;
    }
    if let Some(c) = sc.get("capabilities") {
        only(object(c, &format!("{at}.capabilities"))?, CAPABILITIES, &format!("{at}.capabilities."))?;
    }
    Ok(())
}

fn only(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> ApiResult<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::client(format!("{at}{k} is not supported by Barge"))),
    }
}

fn object<'a>(v: &'a Value, at: &str) -> ApiResult<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| ApiError::client(format!("{at} must be an object")))
}

fn list<'a>(v: Option<&'a Value>, at: &str) -> ApiResult<Vec<&'a Map<String, Value>>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, item)| object(item, &format!("{at}[{i}]"))).collect()
        }
        Some(_) => Err(ApiError::client(format!("{at} must be a list"))),
    }
}

/// `podProperties` as the pod template of a JobDefinition in namespace `ns`.
pub fn pod_template(pod: &Value, ns: &str, at: &str) -> ApiResult<PodTemplateSpec> {
    let p = object(pod, at)?;
    only(p, POD_PROPERTIES, at)?;
    if let Some(d) = p.get("dnsPolicy").and_then(Value::as_str)
        && !DNS_POLICIES.contains(&d)
    {
        return Err(ApiError::client(format!(
            "{at}dnsPolicy must be one of {}, not {d:?}",
            DNS_POLICIES.join(", ")
        )));
    }
    if let Some(sc) = p.get("securityContext") {
        security_context(sc, POD_SECURITY_CONTEXT, &format!("{at}securityContext"))?;
    }
    let mut spec = p.clone();
    let metadata = spec.remove("metadata").unwrap_or(json!({}));
    let meta = object(&metadata, &format!("{at}metadata"))?;
    only(meta, METADATA, &format!("{at}metadata."))?;
    if let Some(other) = meta.get("namespace").and_then(Value::as_str).filter(|n| *n != ns) {
        return Err(ApiError::client(format!(
            "{at}metadata.namespace {other:?}: a job runs in its key's namespace, {ns}"
        )));
    }
    let meta = json!({"labels": meta.get("labels"), "annotations": meta.get("annotations")});
    let containers = list(p.get("containers"), &format!("{at}containers"))?;
    if containers.is_empty() {
        return Err(ApiError::client(format!("{at}containers must contain at least one container")));
    }
    for (kind, items) in [("containers", containers), ("initContainers", list(p.get("initContainers"), at)?)]
    {
        let fixed: Vec<Value> = items
            .into_iter()
            .enumerate()
            .map(|(i, c)| container(c, &format!("{at}{kind}[{i}].")))
            .collect::<ApiResult<_>>()?;
        spec.insert(kind.into(), Value::Array(fixed));
    }
    for (i, v) in list(p.get("volumes"), &format!("{at}volumes"))?.into_iter().enumerate() {
        only(v, VOLUME, &format!("{at}volumes[{i}]."))?;
    }
    let template = json!({"metadata": meta, "spec": spec});
    serde_json::from_value(strip_nulls(template)).map_err(|e| ApiError::client(format!("{at}: {e}")))
}

/// One container: its members checked, requests taken from limits where only limits are
/// given (as Kubernetes does, and as AWS Batch on EKS reads them).
fn container(c: &Map<String, Value>, at: &str) -> ApiResult<Value> {
    only(c, CONTAINER, at)?;
    if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::client(format!("{at} must contain image")));
    }
    let mut c = c.clone();
    if !c.contains_key("name") {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
        let base = image.rsplit('/').next().unwrap_or(image).split([':', '@']).next().unwrap_or("main");
        c.insert("name".into(), json!(if base.is_empty() { "main" } else { base }));
    }
    if let Some(sc) = c.get("securityContext") {
        only(
            object(sc, &format!("{at}securityContext"))?,
            SECURITY_CONTEXT,
            &format!("{at}securityContext."),
        )?;
    }
    for (i, m) in list(c.get("volumeMounts"), &format!("{at}volumeMounts"))?.into_iter().enumerate() {
        only(m, VOLUME_MOUNT, &format!("{at}volumeMounts[{i}]."))?;
    }
    for e in list(c.get("env"), &format!("{at}env"))? {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.starts_with(crate::api::job_definition::RESERVED_ENV_PREFIX) {
            return Err(ApiError::client(format!(
                "{at}env: {name} is reserved (variables named AWS_BATCH_* are set by Barge)"
            )));
        }
    }
    if let Some(r) = c.get_mut("resources").and_then(Value::as_object_mut) {
        only(r, RESOURCES, &format!("{at}resources."))?;
        let limits = r.get("limits").and_then(Value::as_object).cloned().unwrap_or_default();
        let requests = r.entry("requests").or_insert_with(|| json!({}));
        if let Some(requests) = requests.as_object_mut() {
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
    Ok(Value::Object(c))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

/// `eksPropertiesOverride`: the named containers' image, command, args, env and resources,
/// and labels and annotations for the pod.
pub fn pod_overrides(v: &Value, ns: &str) -> ApiResult<crate::api::overrides::PodOverrides> {
    use crate::api::overrides::{NamedOverride, PodOverrides};
    let at = "eksPropertiesOverride.";
    let top = object(v, at)?;
    only(top, &["podProperties"], at)?;
    let Some(pod) = top.get("podProperties") else { return Ok(PodOverrides::default()) };
    let at = "eksPropertiesOverride.podProperties.";
    let p = object(pod, at)?;
    only(p, &["containers", "initContainers", "metadata"], at)?;
    let mut out = PodOverrides::default();
    if let Some(meta) = p.get("metadata") {
        let meta = object(meta, &format!("{at}metadata"))?;
        only(meta, METADATA, &format!("{at}metadata."))?;
        if let Some(other) = meta.get("namespace").and_then(Value::as_str).filter(|n| *n != ns) {
            return Err(ApiError::client(format!(
                "{at}metadata.namespace {other:?}: a job runs in its key's namespace, {ns}"
            )));
        }
        let map = |k: &str| -> ApiResult<std::collections::BTreeMap<String, String>> {
            match meta.get(k) {
                None | Some(Value::Null) => Ok(Default::default()),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| ApiError::client(format!("{at}metadata.{k} is a map of strings"))),
            }
        };
        out.labels = map("labels")?;
        out.annotations = map("annotations")?;
    }
    for (kind, into) in [("containers", &mut out.containers), ("initContainers", &mut out.init_containers)] {
        for (i, c) in list(p.get(kind), &format!("{at}{kind}"))?.into_iter().enumerate() {
            let cat = format!("{at}{kind}[{i}].");
            only(c, &["name", "image", "command", "args", "env", "resources"], &cat)?;
            let strings = |k: &str| -> ApiResult<Option<Vec<String>>> {
                c.get(k)
                    .map(|v| serde_json::from_value(v.clone()))
                    .transpose()
                    .map_err(|_| ApiError::client(format!("{cat}{k} is a list of strings")))
            };
            let env: Vec<super::shapes::KeyValuePair> = c
                .get("env")
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()
                .map_err(|_| ApiError::client(format!("{cat}env is a list of name and value")))?
                .unwrap_or_default();
            into.push(NamedOverride {
                name: c.get("name").and_then(Value::as_str).map(str::to_string),
                image: c.get("image").and_then(Value::as_str).map(str::to_string),
                command: strings("command")?,
                args: strings("args")?,
                env: super::shapes::environment(&env, &cat)?,
                resources: c
                    .get("resources")
                    .map(|r| resource_override(r, &format!("{cat}resources")))
                    .transpose()?,
            });
        }
    }
    Ok(out)
}

/// EKS `resources`: `limits` and `requests`, each a map of quantities.
fn resource_override(r: &Value, at: &str) -> ApiResult<crate::api::overrides::ResourceOverride> {
    let r = object(r, at)?;
    only(r, RESOURCES, &format!("{at}."))?;
    let map = |k: &str| -> ApiResult<std::collections::BTreeMap<String, String>> {
        match r.get(k) {
            None | Some(Value::Null) => Ok(Default::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| ApiError::client(format!("{at}.{k} is a map of quantities"))),
        }
    };
    Ok(crate::api::overrides::ResourceOverride { limits: map("limits")?, requests: map("requests")? })
}

/// A pod template as `eksProperties.podProperties`: the members of AWS's shape it holds.
pub fn pod_properties(t: &PodTemplateSpec) -> Value {
    let spec = serde_json::to_value(t.spec.clone().unwrap_or_default()).unwrap_or_default();
    let mut out = Map::new();
    for key in POD_PROPERTIES.iter().filter(|k| **k != "metadata") {
        if let Some(v) = spec.get(*key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    // AWS answers a container's lists even when empty.
    for kind in ["containers", "initContainers"] {
        for c in out.get_mut(kind).and_then(Value::as_array_mut).into_iter().flatten() {
            for list in ["command", "args", "env"] {
                c.as_object_mut().map(|o| o.entry(list).or_insert(json!([])));
            }
        }
    }
    let meta = t.metadata.clone().unwrap_or_default();
    let mut m = Map::new();
    if let Some(l) = meta.labels {
        m.insert("labels".into(), json!(l));
    }
    if let Some(a) = meta.annotations {
        m.insert("annotations".into(), json!(a));
    }
    if !m.is_empty() {
        out.insert("metadata".into(), Value::Object(m));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eks_pod_properties_become_the_pod_template_and_come_back() {
        let pod = json!({
            "serviceAccountName": "runner",
            "dnsPolicy": "ClusterFirst",
            "shareProcessNamespace": true,
            "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}, "namespace": "team-a"},
            "initContainers": [{"name": "fetch", "image": "busybox:1.35", "command": ["true"]}],
            "containers": [
                {"name": "app", "image": "busybox:1.35", "command": ["sleep", "1"],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                 "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true},
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                {"image": "registry.example/sidecar:2", "command": ["sleep", "1"]}
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
        });
        let t = pod_template(&pod, "team-a", "eksProperties.podProperties.").unwrap();
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("runner"));
        assert_eq!(spec.containers[1].name, "sidecar");
        let requests = spec.containers[0].resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["memory"].0, "512Mi", "requests default to limits");
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "fetch");
        let back = pod_properties(&t);
        assert_eq!(back["metadata"], json!({"labels": {"team": "a"}, "annotations": {"note": "x"}}));
        assert_eq!(back["containers"][0]["securityContext"]["runAsUser"], 1000);
        assert_eq!(back["volumes"], pod["volumes"]);
    }

    #[test]
    fn what_the_eks_shape_does_not_have_or_another_namespace_is_refused() {
        let refused = |pod: Value| pod_template(&pod, "team-a", "p.").unwrap_err().message;
        let c = json!([{"image": "i"}]);
        assert!(refused(json!({"containers": c, "affinity": {}})).contains("p.affinity"));
        assert!(refused(json!({"containers": c, "metadata": {"namespace": "team-b"}})).contains("team-b"));
        assert!(refused(json!({"containers": []})).contains("must contain at least one container"));
        assert!(refused(json!({"containers": [{"command": ["true"]}]})).contains("must contain image"));
        assert!(
            refused(json!({"containers": [{"image": "i", "ports": []}]})).contains("containers[0].ports")
        );
        assert!(
            refused(
                json!({"containers": [{"image": "i", "env": [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]}]})
            )
            .contains("reserved")
        );
        assert!(refused(json!({"containers": c, "dnsPolicy": "None"})).contains("dnsPolicy"));
    }
}
