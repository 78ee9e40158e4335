//! Kubernetes helpers every shell uses: the one server-side-apply status writer,
//! delete-if-present, and conversions between Nodes, quantities and `Res`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::api::compute_environment::CapacityType;
use crate::api::{
    ComputeEnvironment, Interruption, LABEL_CAPACITY_TYPE, LABEL_COMPUTE_ENVIRONMENT, LABEL_INTERRUPTION,
};
use crate::resources::{GPU_RESOURCE, QuantityError, Res, parse_mib, parse_millicpu};

/// Writes `status` as the object's status under Barge's field manager (server-side
/// apply). A status equal to `current` is not written; an object deleted meanwhile has
/// nothing left to report on. Returns whether it wrote.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, status: &S) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(&obj.name_any(), &params, &Patch::Apply(&patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes an object; one already gone is fine.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_with(api, name, &DeleteParams::default()).await
}

/// Deletes an object with `params`; one already gone is fine.
pub async fn delete_with<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The "namespace/name" key a namespaced object is indexed by.
pub fn ns_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The namespace and name of a "namespace/name" key (a key without `/` names a
/// cluster-scoped object).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The resources of a requests/allocatable map; a quantity that does not parse is an error.
pub fn res_of(amounts: &BTreeMap<String, Quantity>) -> Result<Res, QuantityError> {
    let get = |k: &str, parse: fn(&str) -> Result<u64, QuantityError>| {
        amounts.get(k).map(|q| parse(&q.0)).transpose().map(Option::unwrap_or_default)
    };
    Ok(Res::new(get("cpu", parse_millicpu)?, get("memory", parse_mib)?, gpus_of(amounts)))
}

/// The resources of a map written by someone else (a node, a pod): what does not parse
/// counts as none.
pub fn res_of_lossy(amounts: &BTreeMap<String, Quantity>) -> Res {
    let get = |k: &str, parse: fn(&str) -> Result<u64, QuantityError>| {
        amounts.get(k).and_then(|q| parse(&q.0).ok()).unwrap_or(0)
    };
    Res::new(get("cpu", parse_millicpu), get("memory", parse_mib), gpus_of(amounts))
}

fn gpus_of(amounts: &BTreeMap<String, Quantity>) -> u32 {
    amounts.get(GPU_RESOURCE).and_then(|q| q.0.parse().ok()).unwrap_or(0)
}

/// `r` as a requests/limits/capacity map (GPUs only when there are some).
pub fn quantities(r: Res) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::from([
        ("cpu".to_string(), Quantity(format!("{}m", r.millicpu))),
        ("memory".to_string(), Quantity(format!("{}Mi", r.memory_mib))),
    ]);
    if r.gpus > 0 {
        m.insert(GPU_RESOURCE.into(), Quantity(r.gpus.to_string()));
    }
    m
}

/// The node's allocatable resources, if it says.
pub fn node_allocatable(node: &Node) -> Res {
    node.status.as_ref().and_then(|s| s.allocatable.as_ref()).map_or(Res::ZERO, res_of_lossy)
}

/// vCPUs of the node's capacity (what the instance is sold as).
pub fn node_vcpus(node: &Node) -> u32 {
    node.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("cpu"))
        .and_then(|q| parse_millicpu(&q.0).ok())
        .map_or(0, |m| (m / 1000) as u32)
}

pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn node_is_cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
        || node.meta().deletion_timestamp.is_some()
}

/// What EC2 warned of the node's instance, if anything.
pub fn node_interruption(node: &Node) -> Option<Interruption> {
    node.labels().get(LABEL_INTERRUPTION).and_then(|v| Interruption::parse(v))
}

/// Why the attempts on an EC2 node ended when its host went away, in AWS Batch's words.
pub fn lost_host_reason(node: &Node) -> Option<String> {
    let id = node_instance_id(node)?;
    Some(match node_interruption(node) {
        Some(Interruption::Spot) => format!("Host EC2 (instance {id}) Spot interruption"),
        _ => format!("Host EC2 (instance {id}) terminated."),
    })
}

pub fn node_compute_environment(node: &Node) -> Option<&str> {
    node.labels().get(LABEL_COMPUTE_ENVIRONMENT).map(String::as_str)
}

/// The EC2 instance id in a node's `spec.providerID` (`aws:///<zone>/<instance-id>`).
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let id = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// The EC2 instance behind a node, if it is one.
pub fn node_instance_id(node: &Node) -> Option<&str> {
    node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).and_then(instance_id)
}

/// The key a Node is known by to its provider: the instance id of an EC2 node, else its name.
pub fn node_key(node: &Node) -> String {
    node_instance_id(node).map(str::to_string).unwrap_or_else(|| node.name_any())
}

/// The labels every node of `ce` carries, whichever provider made it.
pub fn node_labels(ce: &ComputeEnvironment) -> BTreeMap<String, String> {
    let mut labels = ce.spec.node_labels.clone();
    labels.insert(LABEL_COMPUTE_ENVIRONMENT.into(), ce.name_any());
    let capacity_type = match ce.spec.capacity_type {
        CapacityType::OnDemand => "on-demand",
        CapacityType::Spot => "spot",
    };
    labels.insert(LABEL_CAPACITY_TYPE.into(), capacity_type.into());
    labels
}

/// The taints every node of `ce` carries.
pub fn node_taints(ce: &ComputeEnvironment) -> Vec<Taint> {
    ce.spec
        .node_taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_back_as_the_resources_they_were_written_from() {
        let r = Res::new(2500, 3072, 1);
        assert_eq!(res_of(&quantities(r)).unwrap(), r);
        assert_eq!(res_of_lossy(&quantities(r)), r);
    }

    #[test]
    fn a_bad_quantity_is_an_error_when_strict_and_none_when_lossy() {
        let m = BTreeMap::from([
            ("cpu".to_string(), Quantity("lots".into())),
            ("memory".to_string(), Quantity("1Gi".into())),
        ]);
        assert!(res_of(&m).is_err());
        assert_eq!(res_of_lossy(&m), Res::new(0, 1024, 0));
    }

    #[test]
    fn instance_ids_come_from_aws_provider_ids_only() {
        assert_eq!(instance_id("aws:///us-east-1a/i-0123456789abcdef0"), Some("i-0123456789abcdef0"));
        assert_eq!(instance_id("aws:///i-0abc"), Some("i-0abc"));
        assert_eq!(instance_id("kwok://node-1"), None);
        assert_eq!(instance_id("aws:///us-east-1a/not-an-instance"), None);
    }
}

/// The most an Event's note may hold (the API server refuses longer ones).
pub const EVENT_NOTE_MAX: usize = 1024;

/// `note` cut to fit an Event (at a character boundary, ending in `…`), so that a long
/// message (many launch errors at once, a long status reason) still gets its event.
pub fn event_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_MAX {
        return note;
    }
    let ellipsis = "…";
    let mut end = EVENT_NOTE_MAX - ellipsis.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &note[..end])
}

#[cfg(test)]
mod event_note_tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_to_what_an_event_holds_at_a_character_boundary() {
        assert_eq!(event_note("short".into()), "short");
        let long = "é".repeat(1000); // 2,000 bytes
        let cut = event_note(long);
        assert!(cut.len() <= EVENT_NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
