//! JobDefinition revisions: each change of a definition's spec is registered as the next
//! revision, kept unchanged in a ControllerRevision owned by the definition (as a
//! StatefulSet keeps its revisions); and the resolution of a job's `jobDefinition` to one
//! revision, which is fixed in the job's status when it is first seen.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::Shared;
use crate::api::job_definition::{
    DefinitionRef, DefinitionState, JobDefinition, JobDefinitionSpec, JobDefinitionStatus, RevisionSummary,
    revision_object_name,
};
use crate::api::{BatchJob, Condition, set_condition};
use crate::{Error, FIELD_MANAGER, Result};

/// Label on the ControllerRevisions of job definitions: the definition's name.
pub const LABEL_JOB_DEFINITION: &str = "barge.dev/job-definition";
/// Holds a deleted definition until no unfinished job needs its revisions.
pub const FINALIZER: &str = "barge.dev/revisions-in-use";
/// A definition may be applied a moment after the jobs that use it (one `kubectl apply` of
/// several files); only after this long is a missing one an error.
pub const MISSING_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// The registered revisions, from the ControllerRevision watch: which revisions each
/// definition has, and each revision's content, decoded once.
#[derive(Default)]
pub struct RevisionIndex {
    numbers: Mutex<HashMap<(String, String), BTreeSet<u32>>>,
    decoded: Mutex<HashMap<String, Arc<JobDefinitionSpec>>>,
}

fn owner_of(cr: &ControllerRevision) -> Option<(String, String, u32)> {
    let owner = cr.owner_references().iter().find(|o| o.kind == "JobDefinition")?;
    Some((cr.namespace()?, owner.name.clone(), u32::try_from(cr.revision).ok()?))
}

impl RevisionIndex {
    pub fn applied(&self, cr: &ControllerRevision) {
        if let Some((ns, name, rev)) = owner_of(cr) {
            self.numbers.lock().expect("revision index lock").entry((ns, name)).or_default().insert(rev);
        }
    }

    pub fn deleted(&self, cr: &ControllerRevision) {
        if let Some((ns, name, rev)) = owner_of(cr) {
            let mut numbers = self.numbers.lock().expect("revision index lock");
            if let Some(set) = numbers.get_mut(&(ns.clone(), name.clone())) {
                set.remove(&rev);
                if set.is_empty() {
                    numbers.remove(&(ns, name));
                }
            }
        }
        if let Some(uid) = cr.uid() {
            self.decoded.lock().expect("revision index lock").remove(&uid);
        }
    }
}

/// The job definitions and their revisions, as the watches show them.
pub struct Definitions {
    pub definitions: Store<JobDefinition>,
    pub revisions: Store<ControllerRevision>,
    pub index: Arc<RevisionIndex>,
}

impl Definitions {
    /// Revision `revision` of definition `name`, if it is registered.
    pub fn get(&self, ns: &str, name: &str, revision: u32) -> Option<Arc<JobDefinitionSpec>> {
        let cr = self.revisions.get(&ObjectRef::new(&revision_object_name(name, revision)).within(ns))?;
        if owner_of(&cr).is_none_or(|(_, owner, rev)| owner != name || rev != revision) {
            return None;
        }
        let uid = cr.uid()?;
        if let Some(spec) = self.index.decoded.lock().expect("revision index lock").get(&uid) {
            return Some(spec.clone());
        }
        let spec: JobDefinitionSpec = match serde_json::from_value(cr.data.as_ref()?.0.clone()) {
            Ok(s) => s,
            Err(e) => {
                warn!(revision = %cr.name_any(), error = %e, "a job definition revision does not decode");
                return None;
            }
        };
        let spec = Arc::new(spec);
        self.index.decoded.lock().expect("revision index lock").insert(uid, spec.clone());
        Some(spec)
    }

    /// Every registered revision number of `name`, oldest first.
    pub fn numbers(&self, ns: &str, name: &str) -> Vec<u32> {
        let numbers = self.index.numbers.lock().expect("revision index lock");
        numbers
            .get(&(ns.to_string(), name.to_string()))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The latest registered revision of `name` and its content.
    pub fn latest(&self, ns: &str, name: &str) -> Option<(u32, Arc<JobDefinitionSpec>)> {
        self.numbers(ns, name).into_iter().rev().find_map(|r| self.get(ns, name, r).map(|s| (r, s)))
    }
}

/// Where a job's `jobDefinition` stands.
#[derive(Clone, Debug)]
pub enum Resolution {
    /// The job names no definition.
    NotUsed,
    /// It runs this revision (`NAME:REVISION`).
    Pinned(String, Arc<JobDefinitionSpec>),
    /// It waits, for this reason (the definition is about to exist or to register).
    Waiting(String),
    /// It cannot run, for this reason.
    Failed(String),
}

/// The revision a job runs: the one in its status once fixed, else the one its
/// `jobDefinition` means now.
pub fn resolve(defs: &Definitions, job: &BatchJob, now: DateTime<Utc>) -> Resolution {
    let Some(wanted) = job.spec.job_definition.as_deref() else {
        return Resolution::NotUsed;
    };
    let ns = job.namespace().unwrap_or_default();
    if let Some(pinned) = job.status.as_ref().and_then(|s| s.job_definition.as_deref()) {
        return match DefinitionRef::parse(pinned) {
            Ok(DefinitionRef { name, revision: Some(r) }) => match defs.get(&ns, name, r) {
                Some(spec) => Resolution::Pinned(pinned.to_string(), spec),
                None => Resolution::Failed(format!("Job definition {pinned} does not exist")),
            },
            _ => Resolution::Failed(format!("Job definition {pinned} does not exist")),
        };
    }
    let r = match DefinitionRef::parse(wanted) {
        Ok(r) => r,
        Err(e) => return Resolution::Failed(e),
    };
    let young = job.meta().creation_timestamp.as_ref().is_none_or(|t| {
        now - DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()).unwrap_or(now) < MISSING_GRACE
    });
    let missing = |what: String| {
        if young {
            Resolution::Waiting(format!("Waiting for job definition {what} (does not exist yet)"))
        } else {
            Resolution::Failed(format!("Job definition {what} does not exist"))
        }
    };
    let Some(def) = defs.definitions.get(&ObjectRef::new(r.name).within(&ns)) else {
        return missing(wanted.to_string());
    };
    if def.spec.state == DefinitionState::Inactive || def.meta().deletion_timestamp.is_some() {
        return Resolution::Failed(format!("Job definition {wanted} is INACTIVE"));
    }
    match r.revision {
        Some(rev) => match defs.get(&ns, r.name, rev) {
            Some(spec) => Resolution::Pinned(wanted.to_string(), spec),
            None => missing(wanted.to_string()),
        },
        None => match defs.latest(&ns, r.name) {
            // The latest revision must be what the definition says now: a change applied
            // just before the job is registered as a new revision first.
            Some((rev, spec)) if *spec == def.spec.revision_content() => {
                Resolution::Pinned(format!("{}:{rev}", r.name), spec)
            }
            _ => {
                Resolution::Waiting(format!("Waiting for job definition {} to register its revision", r.name))
            }
        },
    }
}

/// The revision a job already fixed, for building its pods and reading its request.
pub fn pinned(defs: &Definitions, job: &BatchJob) -> Result<Option<Arc<JobDefinitionSpec>>, String> {
    if job.spec.job_definition.is_none() {
        return Ok(None);
    }
    match job.status.as_ref().and_then(|s| s.job_definition.as_deref()) {
        None => Err("its job definition is not resolved yet".into()),
        Some(p) => match DefinitionRef::parse(p) {
            Ok(DefinitionRef { name, revision: Some(r) }) => {
                let ns = job.namespace().unwrap_or_default();
                defs.get(&ns, name, r).map(Some).ok_or_else(|| format!("Job definition {p} does not exist"))
            }
            _ => Err(format!("Job definition {p} does not exist")),
        },
    }
}

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
                    Condition::new("Registered", false, "InvalidName", r.message.clone())
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
            "Registered",
            true,
            "Registered",
            format!("Revision {} is the latest", status.revision),
        )
        .generation(jd.meta().generation),
    );
    if jd.status.as_ref() != Some(&status) {
        write_status(ctx, jd, &status).await?;
    }
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
            "Deleting",
            true,
            "RevisionsInUse",
            format!("Deleted; kept until {users} unfinished job(s) that run its revisions end"),
        ),
    );
    if jd.status.as_ref() != Some(&status) {
        write_status(ctx, jd, &status).await?;
    }
    Err(Error::Waiting(format!("{users} unfinished job(s) still run revisions of {name}")))
}

async fn write_status(ctx: &Shared, jd: &JobDefinition, status: &JobDefinitionStatus) -> Result<()> {
    let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), &jd.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition", "status": status});
    match api
        .patch_status(&jd.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(r)) if r.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn label_value(s: &str) -> String {
    let v: String = s.chars().take(63).collect();
    v.trim_end_matches(['-', '.', '_']).to_string()
}

pub fn error_policy(jd: Arc<JobDefinition>, err: &Error, _ctx: Arc<Shared>) -> Action {
    match err {
        Error::Finalizer(e)
            if matches!(**e, kube::runtime::finalizer::Error::CleanupFailed(Error::Waiting(_))) =>
        {
            Action::requeue(Duration::from_secs(5))
        }
        _ => {
            warn!(jd = %jd.name_any(), error = %err, kind = err.kind(), "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}
