//! A job's changes to the named containers of its definition's pod template or task (AWS's
//! `eksPropertiesOverride` and `ecsPropertiesOverride`), and the pod labels and annotations
//! it adds: each given value wins over the definition's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::container::{EnvVar, Resources};
use super::task::TaskSpec;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub containers: Vec<NamedOverride>,
    /// The pod template's init containers (a task has none of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub init_containers: Vec<NamedOverride>,
    /// Added to the pod's labels (the definition's of the same key lose).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Changes to one container, found by name (a definition with one container may leave the
/// name out, as AWS allows).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Added to the container's environment; a name both give takes this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// The container's resources, replacing the definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceOverride>,
}

/// A container's resources, in place of the definition's: Kubernetes' `limits` and
/// `requests` of `cpu`, `memory` and `nvidia.com/gpu` (a request left out is its limit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOverride {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
}

impl ResourceOverride {
    /// The amount of `key`: its limit, else its request.
    fn amount(&self, key: &str) -> Option<&str> {
        self.limits.get(key).or(self.requests.get(key)).map(String::as_str)
    }
}

/// The one of `names` an override means: by name, or the only one when it names none.
fn target(o: &NamedOverride, names: &[&str], what: &str) -> Result<usize, String> {
    match &o.name {
        Some(n) => names
            .iter()
            .position(|c| c == n)
            .ok_or_else(|| format!("podOverrides names {what} {n:?}, which the definition does not have")),
        None if names.len() == 1 => Ok(0),
        None => {
            Err(format!("podOverrides: the definition has {} {what}s; name the one to override", names.len()))
        }
    }
}

pub fn apply_to_template(t: &mut PodTemplateSpec, p: &PodOverrides) -> Result<(), String> {
    let meta = t.metadata.get_or_insert_with(Default::default);
    if !p.labels.is_empty() {
        meta.labels.get_or_insert_with(BTreeMap::new).extend(p.labels.clone());
    }
    if !p.annotations.is_empty() {
        meta.annotations.get_or_insert_with(BTreeMap::new).extend(p.annotations.clone());
    }
    let spec = t.spec.as_mut().ok_or("the definition's pod template has no spec")?;
    for (list, overrides, what) in [
        (&mut spec.containers, &p.containers, "container"),
        (spec.init_containers.get_or_insert_with(Vec::new), &p.init_containers, "init container"),
    ] {
        let names: Vec<String> = list.iter().map(|c| c.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for o in overrides {
            let at = target(o, &names, what)?;
            apply_to_container(&mut list[at], o);
        }
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    Ok(())
}

fn apply_to_container(c: &mut Container, o: &NamedOverride) {
    if let Some(i) = &o.image {
        c.image = Some(i.clone());
    }
    if let Some(cmd) = &o.command {
        c.command = Some(cmd.clone());
    }
    if let Some(a) = &o.args {
        c.args = Some(a.clone());
    }
    set_env(c, &o.env);
    if let Some(r) = &o.resources {
        let map = |m: &BTreeMap<String, String>| {
            (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
        };
        c.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: map(&r.limits),
            requests: map(&r.requests),
            ..Default::default()
        });
    }
}

/// Sets each variable on a pod template's container: a name already there takes the new
/// value, at the end.
pub fn set_env(c: &mut Container, vars: &[EnvVar]) {
    let env = c.env.get_or_insert_with(Vec::new);
    for e in vars {
        env.retain(|x| x.name != e.name);
        env.push(k8s_openapi::api::core::v1::EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            value_from: None,
        });
    }
}

pub fn apply_to_task(t: &mut TaskSpec, p: &PodOverrides) -> Result<(), String> {
    if !p.init_containers.is_empty() || !p.labels.is_empty() || !p.annotations.is_empty() {
        return Err("podOverrides of a task take containers only (as ecsPropertiesOverride does)".into());
    }
    let names: Vec<String> = t.containers.iter().map(|c| c.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for o in &p.containers {
        let at = target(o, &names, "container")?;
        let c = &mut t.containers[at].container;
        if let Some(i) = &o.image {
            c.image = i.clone();
        }
        if let Some(cmd) = &o.command {
            c.command = cmd.clone();
            c.args.clear();
        }
        if let Some(a) = &o.args {
            c.args = a.clone();
        }
        for e in &o.env {
            match c.env.iter_mut().find(|x| x.name == e.name) {
                Some(x) => x.value = e.value.clone(),
                None => c.env.push(e.clone()),
            }
        }
        if let Some(r) = &o.resources {
            let Resources { vcpus, memory, gpus } = &mut c.resources;
            if let Some(cpu) = r.amount("cpu") {
                let m =
                    crate::resources::parse_millicpu(cpu).map_err(|e| format!("podOverrides cpu: {e}"))?;
                *vcpus = m as f64 / 1000.0;
            }
            if let Some(m) = r.amount("memory") {
                *memory = m.to_string();
            }
            if let Some(g) = r.amount(crate::resources::GPU_RESOURCE) {
                *gpus = g.parse().map_err(|_| format!("podOverrides {g:?} GPUs is not a count"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_the_named_containers_and_the_pods_metadata() {
        let mut t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"team": "a"}},
            "spec": {"initContainers": [{"name": "fetch", "image": "busybox"}],
                     "containers": [{"name": "app", "image": "app:1", "env": [{"name": "MODE", "value": "x"}]},
                                    {"name": "side", "image": "side:1"}]}
        }))
        .unwrap();
        let p: PodOverrides = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "app", "image": "app:2", "args": ["--fast"], "env": [{"name": "MODE", "value": "y"}],
                            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
            "initContainers": [{"command": ["true"]}],
            "labels": {"run": "7"}
        }))
        .unwrap();
        apply_to_template(&mut t, &p).unwrap();
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["metadata"]["labels"], serde_json::json!({"team": "a", "run": "7"}));
        let app = &v["spec"]["containers"][0];
        assert_eq!((app["image"].as_str(), app["args"][0].as_str()), (Some("app:2"), Some("--fast")));
        assert_eq!(app["env"], serde_json::json!([{"name": "MODE", "value": "y"}]));
        assert_eq!(
            app["resources"],
            serde_json::json!({"requests": {"cpu": "2", "memory": "1Gi"}}),
            "replaced whole"
        );
        assert_eq!(v["spec"]["initContainers"][0]["command"], serde_json::json!(["true"]));
        let unnamed: PodOverrides =
            serde_json::from_value(serde_json::json!({"containers": [{"image": "x"}]})).unwrap();
        assert!(apply_to_template(&mut t, &unnamed).unwrap_err().contains("name the one"));
        let unknown: PodOverrides =
            serde_json::from_value(serde_json::json!({"containers": [{"name": "nope", "image": "x"}]}))
                .unwrap();
        assert!(apply_to_template(&mut t, &unknown).unwrap_err().contains("\"nope\""));
    }
}
