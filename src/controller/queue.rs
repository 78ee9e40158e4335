//! JobQueue status: job counts per phase, the oldest RUNNABLE job, and whether the
//! queue is blocked and why, written on a short tick from the counts the job watch keeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::Resource;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;
use tracing::warn;

use super::Shared;
use crate::FIELD_MANAGER;
use crate::api::batch_job::JobPhase;
use crate::api::job_queue::JobCounts;
use crate::api::{Condition, JobQueue, JobQueueStatus, State, set_condition};
use crate::metrics::QueuePhase;

/// Queue statuses are aggregates: refreshing them this often is plenty.
const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    counts: JobCounts,
    oldest_runnable: Option<DateTime<Utc>>,
}

pub async fn run(ctx: Arc<Shared>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        if !ctx.ready() {
            continue;
        }
        let mut tallies: HashMap<String, Tally> = ctx
            .tally
            .lock()
            .expect("job tally lock")
            .queues()
            .map(|(q, t)| {
                (q.to_string(), Tally { counts: t.counts.clone(), oldest_runnable: t.oldest_runnable() })
            })
            .collect();
        publish_counts(&tallies);
        let blocked = ctx.blocked.lock().expect("blocked lock").clone();
        let mut usage = std::mem::take(&mut *ctx.share_usage.lock().expect("share usage lock"));
        for queue in ctx.queues.state() {
            let tally = tallies.remove(&queue.name_any()).unwrap_or_default();
            let mut status = status_for(&queue, tally, blocked.get(&queue.name_any()));
            if let Some(recorded) = usage.remove(&queue.name_any()) {
                status.fair_share_usage = Some(recorded);
            }
            if queue.status.as_ref() == Some(&status) {
                continue;
            }
            let was_blocked = is_blocked(queue.status.as_ref());
            if let Err(e) = write_status(&ctx, &queue, &status).await {
                warn!(queue = %queue.name_any(), error = %e, "status update failed");
                continue;
            }
            if is_blocked(Some(&status)) && !was_blocked {
                let note = status.conditions.iter().find(|c| c.type_ == "Blocked").map(|c| c.message.clone());
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "Blocked".into(),
                    note,
                    action: "Schedule".into(),
                    secondary: None,
                };
                let _ = ctx.recorder.publish(&ev, &queue.object_ref(&())).await;
            }
        }
    }
}

/// Jobs per queue and phase, as the queues' statuses count them, for `/metrics`.
fn publish_counts(tallies: &HashMap<String, Tally>) {
    let jobs = &crate::metrics::metrics().jobs;
    jobs.clear();
    for (queue, t) in tallies {
        let c = &t.counts;
        for (phase, n) in [
            (JobPhase::Submitted, c.submitted),
            (JobPhase::Pending, c.pending),
            (JobPhase::Runnable, c.runnable),
            (JobPhase::Starting, c.starting),
            (JobPhase::Running, c.running),
            (JobPhase::Succeeded, c.succeeded),
            (JobPhase::Failed, c.failed),
        ] {
            let labels = QueuePhase { queue: queue.clone(), phase: phase.as_str().into() };
            jobs.get_or_create(&labels).set(n as i64);
        }
    }
}

fn is_blocked(s: Option<&JobQueueStatus>) -> bool {
    s.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Blocked" && c.status == "True"))
}

fn status_for(queue: &JobQueue, tally: Tally, head_waits: Option<&String>) -> JobQueueStatus {
    let mut s = queue.status.clone().unwrap_or_default();
    s.jobs = tally.counts;
    s.oldest_runnable_since = tally.oldest_runnable;
    s.observed_generation = queue.metadata.generation;
    let g = queue.metadata.generation;
    let blocked = if queue.spec.state == State::Disabled {
        Condition::new("Blocked", true, "QueueDisabled", "The queue is DISABLED: it admits no jobs")
    } else if s.jobs.runnable > 0
        && s.jobs.starting + s.jobs.running == 0
        && let Some(why) = head_waits
    {
        Condition::new("Blocked", true, "HeadJobWaiting", why.clone())
    } else {
        Condition::new("Blocked", false, "NotBlocked", "")
    };
    set_condition(&mut s.conditions, blocked.generation(g));
    s
}

async fn write_status(ctx: &Shared, queue: &JobQueue, status: &JobQueueStatus) -> kube::Result<()> {
    let api: Api<JobQueue> = Api::all(ctx.client.clone());
    let patch = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "status": status});
    api.patch_status(&queue.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}
