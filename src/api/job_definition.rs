//! JobDefinition: what a job runs, registered once and submitted against many times, with
//! revisions numbered as AWS Batch numbers them. Also the pure resolution of a BatchJob
//! against a definition: AWS precedence (the job's value wins), `Ref::` parameters, tags.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use super::batch_job::{BatchJobSpec, ContainerOverrides, ContainerSpec, RetryStrategy, Timeout};

/// ACTIVE or INACTIVE, as AWS Batch says of job definitions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DefinitionState {
    #[default]
    Active,
    /// Deregistered: no new job may use any of its revisions; submitted jobs keep theirs.
    Inactive,
}

impl DefinitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionState::Active => "ACTIVE",
            DefinitionState::Inactive => "INACTIVE",
        }
    }
}

/// A job definition. Every change of its spec (other than `state`) registers a new revision.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "JobDefinition",
    namespaced,
    shortname = "jd",
    category = "barge",
    status = "JobDefinitionStatus",
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.container.image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.container) != has(self.podTemplate)").message("set exactly one of container or podTemplate"))]
#[serde(rename_all = "camelCase")]
pub struct JobDefinitionSpec {
    /// INACTIVE deregisters the definition (all its revisions) for new jobs.
    #[serde(default)]
    pub state: DefinitionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// A full pod template, for what `container` cannot say. Its first container is the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::batch_job::pod_template_schema")]
    pub pod_template: Option<Box<PodTemplateSpec>>,
    /// Defaults for the `Ref::name` placeholders of the command and args.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Tags of jobs using the definition, when `propagateTags` (see BatchJob `tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 128 && size(self[k]) <= 256)").message("a tag key is at most 128 characters and a value at most 256"))]
    pub tags: BTreeMap<String, String>,
    /// Whether the definition's tags go on the pods of its jobs too.
    #[serde(default)]
    pub propagate_tags: bool,
    /// Within a queue, higher runs first; a job's own `schedulingPriority` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_priority: Option<i32>,
}

impl JobDefinitionSpec {
    /// What a revision holds: the spec without `state`, which changes no revision.
    pub fn revision_content(&self) -> JobDefinitionSpec {
        JobDefinitionSpec { state: DefinitionState::Active, ..self.clone() }
    }

    /// The image of the job's container, for listings.
    pub fn image(&self) -> Option<&str> {
        match (&self.container, &self.pod_template) {
            (Some(c), _) => Some(c.image.as_str()),
            (None, Some(t)) => t.spec.as_ref()?.containers.first()?.image.as_deref(),
            _ => None,
        }
    }
}

/// One registered revision, as status lists it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDefinitionStatus {
    /// The latest revision: what `name` alone means to a job submitted now.
    #[serde(default)]
    pub revision: u32,
    /// ACTIVE, or INACTIVE once deregistered (or being deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DefinitionState>,
    /// Every revision, oldest first. Each is kept, unchanged, in a ControllerRevision named
    /// `NAME-REVISION` owned by the definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A job's `jobDefinition`: `name` (the latest ACTIVE revision at submission) or
/// `name:revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionRef<'a> {
    pub name: &'a str,
    pub revision: Option<u32>,
}

impl<'a> DefinitionRef<'a> {
    pub fn parse(s: &'a str) -> Result<Self, String> {
        match s.rsplit_once(':') {
            None => Ok(DefinitionRef { name: s, revision: None }),
            Some((name, rev)) => match rev.parse::<u32>() {
                Ok(r) if r >= 1 && !name.is_empty() => Ok(DefinitionRef { name, revision: Some(r) }),
                _ => Err(format!("jobDefinition {s:?} is not NAME or NAME:REVISION (a revision from 1)")),
            },
        }
    }
}

/// The ControllerRevision that holds revision `revision` of definition `name`.
pub fn revision_object_name(name: &str, revision: u32) -> String {
    format!("{name}-{revision}")
}

/// What a job runs once its definition (if any) is applied: the job's own values where it
/// gives them, the definition's otherwise. Borrowed where nothing had to change.
#[derive(Clone, Debug, PartialEq)]
pub struct Work<'a> {
    pub container: Option<Cow<'a, ContainerSpec>>,
    pub pod_template: Option<Cow<'a, PodTemplateSpec>>,
    pub retry_strategy: Cow<'a, RetryStrategy>,
    pub timeout: Option<&'a Timeout>,
    pub scheduling_priority: i32,
    /// Tags to label the job's pods with (the definition's only when propagated).
    pub tags: BTreeMap<&'a str, &'a str>,
}

/// The prefix AWS Batch keeps for the variables it sets.
pub const RESERVED_ENV_PREFIX: &str = "AWS_BATCH_";

/// What `job` runs: from its own spec, or from `def`, the revision its `jobDefinition`
/// resolved to. Fails with a reason a user can act on.
pub fn work<'a>(job: &'a BatchJobSpec, def: Option<&'a JobDefinitionSpec>) -> Result<Work<'a>, String> {
    let no_retry: Cow<'a, RetryStrategy> = Cow::Owned(RetryStrategy::default());
    let Some(def) = def else {
        if job.job_definition.is_some() {
            return Err("its job definition is not resolved yet".into());
        }
        let work = Work {
            container: job.container.as_deref().map(Cow::Borrowed),
            pod_template: job.pod_template.as_deref().map(Cow::Borrowed),
            retry_strategy: job.retry_strategy.as_deref().map_or(no_retry, Cow::Borrowed),
            timeout: job.timeout.as_deref(),
            scheduling_priority: job.scheduling_priority.unwrap_or(0),
            tags: job.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        };
        check_env(&work)?;
        return Ok(work);
    };
    let params = |name: &str| job.parameters.get(name).or_else(|| def.parameters.get(name));
    let overrides = job.container_overrides.as_deref();
    let mut container = def.container.as_deref().map(Cow::Borrowed);
    let mut pod_template = def.pod_template.as_deref().map(Cow::Borrowed);
    if let Some(c) = &mut container {
        if c.command.iter().chain(&c.args).any(|a| a.contains(REF)) {
            let c = c.to_mut();
            c.command.iter_mut().chain(c.args.iter_mut()).for_each(|a| substitute_in_place(a, &params));
        }
        if let Some(o) = overrides {
            apply_overrides(c.to_mut(), o);
        }
    }
    if let Some(t) = &mut pod_template {
        let has_refs = t
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .is_some_and(|c| c.command.iter().chain(c.args.iter()).flatten().any(|a| a.contains(REF)));
        if has_refs && let Some(c) = t.to_mut().spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.command
                .iter_mut()
                .chain(c.args.iter_mut())
                .flatten()
                .for_each(|a| substitute_in_place(a, &params));
        }
        if let Some(o) = overrides {
            apply_template_overrides(t.to_mut(), o)?;
        }
    }
    let propagate = job.propagate_tags.unwrap_or(def.propagate_tags);
    let mut tags: BTreeMap<&str, &str> = BTreeMap::new();
    if propagate {
        tags.extend(def.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    tags.extend(job.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let work = Work {
        container,
        pod_template,
        retry_strategy: match (&job.retry_strategy, &def.retry_strategy) {
            (Some(r), _) => Cow::Borrowed(r),
            (None, Some(r)) => Cow::Borrowed(r),
            (None, None) => no_retry,
        },
        timeout: job.timeout.as_deref().or(def.timeout.as_ref()),
        scheduling_priority: job.scheduling_priority.or(def.scheduling_priority).unwrap_or(0),
        tags,
    };
    check_env(&work)?;
    Ok(work)
}

/// What a job submitted against a definition may change of it, as AWS Batch's
fn apply_overrides(c: &mut ContainerSpec, o: &ContainerOverrides) {
    if let Some(cmd) = &o.command {
        c.command = cmd.clone();
        c.args.clear();
    }
    for e in &o.environment {
        match c.env.iter_mut().find(|x| x.name == e.name) {
            Some(x) => x.value = e.value.clone(),
            None => c.env.push(e.clone()),
        }
    }
    if let Some(v) = o.vcpus {
        c.resources.vcpus = v;
    }
    if let Some(m) = &o.memory {
        c.resources.memory = m.clone();
    }
    if let Some(g) = o.gpus {
        c.resources.gpus = g;
    }
}

/// Overrides of a pod-template definition apply to its first (the job's) container; vCPUs,
/// memory and GPUs become that container's requests and limits.
fn apply_template_overrides(t: &mut PodTemplateSpec, o: &ContainerOverrides) -> Result<(), String> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let Some(c) = t.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return Err("the definition's pod template has no container".into());
    };
    if let Some(cmd) = &o.command {
        c.command = Some(cmd.clone());
        c.args = None;
    }
    let env = c.env.get_or_insert_with(Vec::new);
    for e in &o.environment {
        env.retain(|x| x.name != e.name);
        env.push(k8s_openapi::api::core::v1::EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            value_from: None,
        });
    }
    let mut set = |key: &str, q: String| {
        let r = c.resources.get_or_insert_with(Default::default);
        r.requests.get_or_insert_with(BTreeMap::new).insert(key.into(), Quantity(q.clone()));
        r.limits.get_or_insert_with(BTreeMap::new).insert(key.into(), Quantity(q));
    };
    if let Some(v) = o.vcpus {
        set("cpu", format!("{}m", (v * 1000.0).ceil() as u64));
    }
    if let Some(m) = &o.memory {
        set("memory", m.clone());
    }
    if let Some(g) = o.gpus {
        set(crate::resources::GPU_RESOURCE, g.to_string());
    }
    Ok(())
}

const REF: &str = "Ref::";

fn substitute_in_place<'p>(arg: &mut String, params: &impl Fn(&str) -> Option<&'p String>) {
    if arg.contains(REF) {
        *arg = substitute(arg, params).into_owned();
    }
}

/// Replaces each `Ref::name` in `arg` (a name is letters, digits, `_` and `-`) with the
/// parameter's value; a placeholder with no value stays as written.
pub fn substitute<'s, 'p>(arg: &'s str, params: &impl Fn(&str) -> Option<&'p String>) -> Cow<'s, str> {
    if !arg.contains(REF) {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find(REF) {
        out.push_str(&rest[..at]);
        let after = &rest[at + REF.len()..];
        let len =
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(after.len());
        let name = &after[..len];
        match params(name).filter(|_| !name.is_empty()) {
            Some(v) => out.push_str(v),
            None => {
                out.push_str(REF);
                out.push_str(name);
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// AWS Batch sets the `AWS_BATCH_*` variables itself and refuses them from users.
fn check_env(work: &Work<'_>) -> Result<(), String> {
    let names: Vec<&str> = match (&work.container, &work.pod_template) {
        (Some(c), _) => c.env.iter().map(|e| e.name.as_str()).collect(),
        (None, Some(t)) => t
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .map(|e| e.name.as_str())
            .collect(),
        _ => Vec::new(),
    };
    match names.into_iter().find(|n| n.starts_with(RESERVED_ENV_PREFIX)) {
        Some(n) => Err(format!(
            "environment variable {n} uses the reserved prefix {RESERVED_ENV_PREFIX}; Barge sets those itself"
        )),
        None => Ok(()),
    }
}

/// A tag as a pod label: the key as written when it is a valid label key outside Barge's
/// own `barge.dev/` names, else `tag.barge.dev/` and the key made label-safe; the value
/// made label-safe. Label-safe: characters other than letters, digits, `-`, `_` and `.`
/// become `_`, at most 63 characters, beginning and ending with a letter or digit.
pub fn tag_label(key: &str, value: &str) -> Option<(String, String)> {
    let key = if valid_label_key(key) && !key.starts_with("barge.dev/") {
        key.to_string()
    } else {
        let name = label_safe(key);
        if name.is_empty() {
            return None;
        }
        format!("tag.barge.dev/{name}")
    };
    Some((key, label_safe(value)))
}

fn label_safe(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(63)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty() && name.len() <= 63 && label_safe(name) == name;
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::EnvVar;

    fn def() -> JobDefinitionSpec {
        serde_json::from_value(serde_json::json!({
            "container": {
                "image": "render:1",
                "command": ["render", "--frame", "Ref::frame", "--codec=Ref::codec", "Ref::missing"],
                "env": [{"name": "MODE", "value": "fast"}],
                "resources": {"vcpus": 2, "memory": "4Gi"}
            },
            "parameters": {"codec": "mp4", "frame": "1"},
            "retryStrategy": {"attempts": 3},
            "tags": {"team": "film", "cost centre": "42"},
            "schedulingPriority": 5
        }))
        .unwrap()
    }

    fn job(extra: serde_json::Value) -> BatchJobSpec {
        let mut v = serde_json::json!({"jobQueue": "q", "jobDefinition": "render"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parameters_fill_placeholders_job_values_first_and_unknown_ones_stay() {
        let d = def();
        let j = job(serde_json::json!({"parameters": {"frame": "42"}}));
        let w = work(&j, Some(&d)).unwrap();
        assert_eq!(w.container.unwrap().command, ["render", "--frame", "42", "--codec=mp4", "Ref::missing"]);
    }

    #[test]
    fn a_definition_without_placeholders_or_overrides_is_borrowed_not_copied() {
        let mut d = def();
        d.container.as_mut().unwrap().command = vec!["true".into()];
        let j = job(serde_json::json!({}));
        let w = work(&j, Some(&d)).unwrap();
        assert!(matches!(w.container, Some(Cow::Borrowed(_))));
        assert_eq!(w.scheduling_priority, 5);
        assert_eq!(w.retry_strategy.attempts, 3);
    }

    #[test]
    fn the_jobs_values_win_over_the_definitions() {
        let d = def();
        let j = job(serde_json::json!({
            "containerOverrides": {
                "command": ["sh", "-c", "echo Ref::frame"],
                "environment": [{"name": "MODE", "value": "slow"}, {"name": "EXTRA", "value": "1"}],
                "vcpus": 4, "memory": "8Gi"
            },
            "retryStrategy": {"attempts": 1},
            "timeout": {"attemptDurationSeconds": 600},
            "schedulingPriority": 9
        }));
        let w = work(&j, Some(&d)).unwrap();
        let c = w.container.unwrap();
        // Overrides are taken as given: AWS substitutes the definition's command only.
        assert_eq!(c.command, ["sh", "-c", "echo Ref::frame"]);
        assert_eq!(
            c.env.iter().map(|e| (e.name.as_str(), e.value.as_str())).collect::<Vec<_>>(),
            [("MODE", "slow"), ("EXTRA", "1")]
        );
        assert_eq!((c.resources.vcpus, c.resources.memory.as_str()), (4.0, "8Gi"));
        assert_eq!(w.retry_strategy.attempts, 1);
        assert_eq!(w.timeout.unwrap().attempt_duration_seconds, 600);
        assert_eq!(w.scheduling_priority, 9);
    }

    #[test]
    fn definition_tags_reach_the_pods_only_when_propagated() {
        let mut d = def();
        let j = job(serde_json::json!({"tags": {"run": "7"}}));
        assert_eq!(work(&j, Some(&d)).unwrap().tags, BTreeMap::from([("run", "7")]));
        d.propagate_tags = true;
        let tags = work(&j, Some(&d)).unwrap().tags;
        assert_eq!(tags, BTreeMap::from([("run", "7"), ("team", "film"), ("cost centre", "42")]));
        let j = job(serde_json::json!({"propagateTags": false}));
        assert!(work(&j, Some(&d)).unwrap().tags.is_empty());
    }

    #[test]
    fn reserved_variables_are_refused() {
        let mut d = def();
        d.container.as_mut().unwrap().env.push(EnvVar { name: "AWS_BATCH_JOB_ID".into(), value: "x".into() });
        let err = work(&job(serde_json::json!({})), Some(&d)).unwrap_err();
        assert!(err.contains("AWS_BATCH_JOB_ID") && err.contains("reserved"), "{err}");
    }

    #[test]
    fn references_parse_as_aws_writes_them() {
        assert_eq!(DefinitionRef::parse("render").unwrap(), DefinitionRef { name: "render", revision: None });
        assert_eq!(DefinitionRef::parse("render:7").unwrap().revision, Some(7));
        assert!(DefinitionRef::parse("render:0").is_err());
        assert!(DefinitionRef::parse("render:x").is_err());
        assert!(DefinitionRef::parse(":3").is_err());
    }

    #[test]
    fn tags_become_valid_labels() {
        assert_eq!(tag_label("team", "film"), Some(("team".into(), "film".into())));
        assert_eq!(tag_label("example.com/owner", "a b"), Some(("example.com/owner".into(), "a_b".into())));
        assert_eq!(tag_label("cost centre", "42"), Some(("tag.barge.dev/cost_centre".into(), "42".into())));
        assert_eq!(
            tag_label("barge.dev/job-name", "x"),
            Some(("tag.barge.dev/barge.dev_job-name".into(), "x".into()))
        );
        let (_, v) = tag_label("k", &"x".repeat(100)).unwrap();
        assert_eq!(v.len(), 63);
        assert_eq!(tag_label("k", "-v-").unwrap().1, "v");
        assert_eq!(tag_label("!!!", "v"), None);
    }

    #[test]
    fn a_state_change_is_no_new_revision() {
        let mut d = def();
        let before = d.revision_content();
        d.state = DefinitionState::Inactive;
        assert_eq!(d.revision_content(), before);
    }
}
