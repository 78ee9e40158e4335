//! JobDefinition revisions: each change of a definition's spec is registered as the next
//! revision, kept unchanged in a ControllerRevision owned by the definition (as a
//! StatefulSet keeps its revisions); a deleted definition stays while jobs run its revisions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::context::{Shared, failure_key};
use super::revisions::LABEL_JOB_DEFINITION;
use crate::api::job_definition::{
    DefinitionState, JobDefinition, JobDefinitionSpec, JobDefinitionStatus, RevisionSummary,
    revision_object_name,
};
use crate::api::{Condition, ConditionType, set_condition};
use crate::k8s::apply_status;
use crate::{Error, Result};

/// Label on the ControllerRevisions of job definitions: the definition's name.
/// Holds a deleted definition until no unfinished job needs its revisions.
pub const FINALIZER: &str = "barge.dev/revisions-in-use";
/// A deleted definition whose revisions still run is looked at this often.
const IN_USE_RECHECK: Duration = Duration::from_secs(5);

#[instrument(skip_all, fields(jd = %jd.name_any(), ns = jd.namespace().unwrap_or_default()))]
pub async fn reconcile(jd: Arc<JobDefinition>, ctx: Arc<Shared>) -> Result<Action> {
    if !ctx.ready() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), &jd.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, jd, |event| async {
        match event {
            Finalizer::Apply(jd) => register(&jd, &ctx).await,
            Finalizer::Cleanup(jd) => release(&jd, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Registers the spec as a new revision if it differs from the latest, and says so in status.
async fn register(jd: &JobDefinition, ctx: &Shared) -> Result<Action> {
    let (ns, name) = (jd.namespace().unwrap_or_default(), jd.name_any());
    let defs = &ctx.definitions;
    let content = jd.spec.revision_content();
    let latest = defs.latest(&ns, &name);
    let mut status = jd.status.clone().unwrap_or_default();
    if latest.as_ref().is_none_or(|(_, spec)| **spec != content) {
        let next = defs.numbers(&ns, &name).last().map_or(1, |r| r + 1);
        let cr = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(revision_object_name(&name, next)),
                namespace: Some(ns.clone()),
                labels: Some([(LABEL_JOB_DEFINITION.to_string(), label_value(&name))].into()),
                owner_references: Some(vec![jd.controller_owner_ref(&()).expect("a definition has a uid")]),
                ..Default::default()
            },
            data: Some(RawExtension(serde_json::to_value(&content).expect("a spec serialises"))),
            revision: next as i64,
        };
        let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
        match api.create(&PostParams::default(), &cr).await {
            Ok(created) => {
                // Known at once, so that the next look does not register it again.
                defs.index.applied(&created);
                info!(definition = %name, revision = next, "registered a job definition revision");
            }
            Err(kube::Error::Api(r)) if r.code == 409 => {
                // The watch has not shown it yet: look again when it has.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(kube::Error::Api(r)) if r.code == 422 => {
                set_condition(
                    &mut status.conditions,
                    Condition::new(ConditionType::Registered, false, "InvalidName", r.message.clone())
                        .generation(jd.meta().generation),
                );
                write_status(ctx, jd, &status).await?;
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e.into()),
        }
        status.revision = next;
    } else if let Some((rev, _)) = latest {
        status.revision = rev;
    }
    status.status = Some(jd.spec.state);
    status.observed_generation = jd.meta().generation;
    status.revisions = summaries(ctx, &ns, &name, status.revision, &content);
    set_condition(
        &mut status.conditions,
        Condition::new(
            ConditionType::Registered,
            true,
            "Registered",
            format!("Revision {} is the latest", status.revision),
        )
        .generation(jd.meta().generation),
    );
    write_status(ctx, jd, &status).await?;
    Ok(Action::await_change())
}

/// Status's list of revisions; the one just registered may not be in the store yet.
fn summaries(
    ctx: &Shared,
    ns: &str,
    name: &str,
    latest: u32,
    content: &JobDefinitionSpec,
) -> Vec<RevisionSummary> {
    let mut numbers = ctx.definitions.numbers(ns, name);
    if !numbers.contains(&latest) {
        numbers.push(latest);
    }
    numbers
        .into_iter()
        .map(|revision| {
            let cr = ctx
                .definitions
                .revisions
                .get(&ObjectRef::new(&revision_object_name(name, revision)).within(ns));
            let registered_at = cr
                .as_ref()
                .and_then(|c| c.metadata.creation_timestamp.as_ref())
                .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()));
            let image = match ctx.definitions.get(ns, name, revision) {
                Some(spec) => spec.image().map(str::to_string),
                None if revision == latest => content.image().map(str::to_string),
                None => None,
            };
            RevisionSummary { revision, registered_at, image }
        })
        .collect()
}

/// A deleted definition goes once no unfinished job runs one of its revisions.
async fn release(jd: &JobDefinition, ctx: &Shared) -> Result<Action> {
    let (ns, name) = (jd.namespace().unwrap_or_default(), jd.name_any());
    let prefix = format!("{name}:");
    let users = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| {
            let s = j.status.as_ref();
            !s.is_some_and(|s| s.phase.is_finished())
                && s.and_then(|s| s.job_definition.as_deref()).is_some_and(|p| p.starts_with(&prefix))
        })
        .count();
    if users == 0 {
        return Ok(Action::await_change());
    }
    let mut status = jd.status.clone().unwrap_or_default();
    status.status = Some(DefinitionState::Inactive);
    set_condition(
        &mut status.conditions,
        Condition::new(
            ConditionType::Deleting,
            true,
            "RevisionsInUse",
            format!("Deleted; kept until {users} unfinished job(s) that run its revisions end"),
        ),
    );
    write_status(ctx, jd, &status).await?;
    Err(Error::Waiting(format!("{users} unfinished job(s) still run revisions of {name}")))
}

async fn write_status(ctx: &Shared, jd: &JobDefinition, status: &JobDefinitionStatus) -> Result<()> {
    let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), &jd.namespace().unwrap_or_default());
    apply_status(&api, jd, jd.status.as_ref(), status).await?;
    Ok(())
}

fn label_value(s: &str) -> String {
    let v: String = s.chars().take(63).collect();
    v.trim_end_matches(['-', '.', '_']).to_string()
}

pub fn error_policy(jd: Arc<JobDefinition>, err: &Error, ctx: Arc<Shared>) -> Action {
    if err.is_waiting() {
        return Action::requeue(IN_USE_RECHECK);
    }
    warn!(jd = %jd.name_any(), error = %err, kind = err.kind(), "reconcile failed");
    ctx.retry_after(&failure_key(jd.as_ref()), err)
}
