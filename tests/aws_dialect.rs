//! Every member of AWS Batch's job-definition shapes, as botocore's service model (from the
//! pinned aws-cli venv) has them, is served by Barge, refused with a message, or listed as
//! ignored: a member added to the model, or dropped from Barge, fails here.

use std::collections::BTreeSet;
use std::process::Command;

use barge::api::container::ContainerExtra;
use barge::batch_api::definitions::{
    IGNORED_CONTAINER_FIELDS, IGNORED_TASK_FIELDS, SERVED_CONTAINER_FIELDS, SERVED_TASK_CONTAINER_FIELDS,
    SERVED_TASK_FIELDS,
};
use serde_json::Value;

/// botocore's shapes of the Batch service: name → shape.
fn model() -> Value {
    let bin = std::env::var("BARGE_AWS_CLIENTS_BIN").expect(
        "BARGE_AWS_CLIENTS_BIN is not set: run with `make test` (hack/cluster.sh builds the aws-cli venv)",
    );
    let script = "import botocore.session, json, sys; \
                  m = botocore.session.get_session().get_service_model('batch'); \
                  json.dump(m._service_description['shapes'], sys.stdout)";
    let out = Command::new(format!("{bin}/python")).args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The properties of a schema node, following `$ref`s into `definitions`/`$defs`, array
/// items and nullable `anyOf`s.
fn properties<'a>(root: &'a Value, node: &'a Value) -> Option<&'a serde_json::Map<String, Value>> {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next()?;
        let defs = root.get("$defs").or(root.get("definitions"))?;
        return properties(root, defs.get(name)?);
    }
    if let Some(items) = node.get("items") {
        return properties(root, items);
    }
    for alt in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = node.get(alt).and_then(Value::as_array) {
            return list.iter().find_map(|n| properties(root, n));
        }
    }
    node.get("properties")?.as_object()
}

/// Walks the model's `shape` beside Barge's schema `node`, collecting members Barge lacks.
fn walk(model: &Value, shape: &str, root: &Value, node: &Value, at: &str, missing: &mut Vec<String>) {
    let s = &model[shape];
    let target = match s["type"].as_str() {
        Some("list") => s["member"]["shape"].as_str().unwrap_or_default().to_string(),
        _ => shape.to_string(),
    };
    let Some(members) = model[&target]["members"].as_object() else { return };
    let Some(props) = properties(root, node) else {
        missing.push(format!("{at} (Barge keeps no fields of it)"));
        return;
    };
    for (name, m) in members {
        match props.get(name) {
            None => missing.push(format!("{at}.{name}")),
            Some(child) => walk(
                model,
                m["shape"].as_str().unwrap_or_default(),
                root,
                child,
                &format!("{at}.{name}"),
                missing,
            ),
        }
    }
}

/// The members of the model's `shape` that are neither in `served`, `ignored` nor (walked
/// into) Barge's `ContainerExtra`.
fn unmapped(model: &Value, shape: &str, served: &[&str], ignored: &[&str]) -> Vec<String> {
    let members = model[shape]["members"].as_object().unwrap_or_else(|| panic!("{shape} in the model"));
    let schema = serde_json::to_value(schemars::schema_for!(ContainerExtra)).unwrap();
    let extra = schema["properties"].as_object().unwrap();
    let served: BTreeSet<&str> = served.iter().copied().collect();
    let ignored: BTreeSet<&str> = ignored.iter().copied().collect();
    assert!(served.is_disjoint(&ignored), "{shape}: a member both served and ignored");
    for name in served.iter().chain(&ignored) {
        assert!(members.contains_key(*name), "{name} is not a member of AWS's {shape}");
    }
    let mut missing = Vec::new();
    for (name, m) in members {
        if served.contains(name.as_str()) || ignored.contains(name.as_str()) {
            continue;
        }
        match extra.get(name) {
            None => missing.push(format!("{shape}.{name}")),
            Some(node) => walk(
                model,
                m["shape"].as_str().unwrap(),
                &schema,
                node,
                &format!("{shape}.{name}"),
                &mut missing,
            ),
        }
    }
    missing
}

#[test]
fn every_member_of_awss_container_properties_is_served_or_listed_as_ignored() {
    let model = model();
    let members =
        model["ContainerProperties"]["members"].as_object().expect("ContainerProperties in the model");
    assert!(members.len() >= 20, "the model's ContainerProperties has {} members", members.len());
    let missing = unmapped(&model, "ContainerProperties", SERVED_CONTAINER_FIELDS, IGNORED_CONTAINER_FIELDS);
    assert!(
        missing.is_empty(),
        "members of AWS's shapes Barge neither serves nor lists as ignored: {missing:#?}"
    );
    // Every field of Barge's container is one of AWS's, by the same name.
    let schema = serde_json::to_value(schemars::schema_for!(ContainerExtra)).unwrap();
    for name in schema["properties"].as_object().unwrap().keys() {
        assert!(members.contains_key(name), "{name} is not a member of AWS's ContainerProperties");
    }
}

#[test]
fn every_member_of_awss_ecs_task_shapes_is_served_refused_or_listed_as_ignored() {
    let model = model();
    // A task container is a container (the same fields) with a name, an essential flag and
    // dependencies; FireLens log routing is refused by name (see the README).
    // (`vcpus` and `memory` are ContainerProperties' legacy members only.)
    let members = model["TaskContainerProperties"]["members"].as_object().unwrap();
    let served: Vec<&str> = SERVED_CONTAINER_FIELDS
        .iter()
        .filter(|f| members.contains_key(**f))
        .chain(SERVED_TASK_CONTAINER_FIELDS)
        .copied()
        .collect();
    let missing = unmapped(&model, "TaskContainerProperties", &served, &["firelensConfiguration"]);
    assert_eq!(missing, Vec::<String>::new(), "TaskContainerProperties members Barge does not map");
    let task = model["EcsTaskProperties"]["members"].as_object().unwrap();
    let unknown: Vec<&String> = task
        .keys()
        .filter(|k| !SERVED_TASK_FIELDS.contains(&k.as_str()) && !IGNORED_TASK_FIELDS.contains(&k.as_str()))
        .collect();
    assert!(unknown.is_empty(), "EcsTaskProperties members Barge neither serves nor ignores: {unknown:?}");
}

#[test]
fn every_member_of_awss_eks_pod_shapes_is_served() {
    let model = model();
    let mut missing = Vec::new();
    for (shape, served) in barge::batch_api::eks::SERVED {
        let members = model[*shape]["members"].as_object().unwrap_or_else(|| panic!("{shape} in the model"));
        for name in members.keys().filter(|m| !served.contains(&m.as_str())) {
            missing.push(format!("{shape}.{name}"));
        }
        for name in served.iter().filter(|m| !members.contains_key(**m)) {
            missing.push(format!("{shape}.{name} (served, but not in the model)"));
        }
    }
    assert!(missing.is_empty(), "EKS members Barge neither serves nor refuses with a message: {missing:#?}");
}
