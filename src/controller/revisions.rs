//! The registered JobDefinition revisions, from the ControllerRevision watch, and the
//! resolution of a job's `jobDefinition` to one revision, fixed in the job's status when
//! it is first seen.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::Result;
use crate::api::BatchJob;
use crate::api::job_definition::{
    DefinitionRef, DefinitionState, JobDefinition, JobDefinitionSpec, revision_object_name,
};

/// Label on the ControllerRevisions of job definitions: the definition's name.
pub const LABEL_JOB_DEFINITION: &str = "barge.dev/job-definition";
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
