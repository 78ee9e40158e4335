//! JobQueue status: job counts per phase, the oldest RUNNABLE job, and whether the
//! queue is blocked and why, written on a short tick from the counts the job watch keeps.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Resource;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::context::Shared;
use super::tally::QueueTally;
use crate::api::batch_job::JobPhase;
use crate::api::{
    Condition, ConditionType, JobQueue, JobQueueStatus, State, condition, condition_true, set_condition,
};
use crate::k8s::apply_status;
use crate::metrics::QueuePhase;
use crate::state::NodeHold;

pub async fn run(ctx: Arc<Shared>) {
    loop {
        tokio::time::sleep(ctx.tunables.queue_interval).await;
        if !ctx.ready() {
            continue;
        }
        let mut tallies: HashMap<String, QueueTally> = ctx
            .tally
            .lock()
            .expect("job tally lock")
            .queues()
            .map(|(q, t)| (q.to_string(), t.clone()))
            .collect();
        publish_counts(&tallies);
        let blocked = ctx.handoff.blocked();
        let holds = ctx.handoff.holds();
        let mut usage = ctx.handoff.take_share_usage();
        let api: Api<JobQueue> = Api::all(ctx.client.clone());
        for queue in ctx.queues.state() {
            let tally = tallies.remove(&queue.name_any()).unwrap_or_default();
            let mut status = status_for(&queue, &tally, blocked.get(&queue.name_any()));
            let held = NodeHold::condition(holds.iter().filter(|h| h.queue == queue.name_any()));
            set_condition(&mut status.conditions, held.generation(queue.metadata.generation));
            if let Some(recorded) = usage.remove(&queue.name_any()) {
                status.fair_share_usage = Some(recorded);
            }
            let was_blocked = is_blocked(queue.status.as_ref());
            match apply_status(&api, queue.as_ref(), queue.status.as_ref(), &status).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(queue = %queue.name_any(), error = %e, "status update failed");
                    continue;
                }
            }
            if is_blocked(Some(&status)) && !was_blocked {
                let note = condition(&status.conditions, ConditionType::Blocked)
                    .map(|c| crate::k8s::event_note(c.message.clone()));
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
fn publish_counts(tallies: &HashMap<String, QueueTally>) {
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
    s.is_some_and(|s| condition_true(&s.conditions, ConditionType::Blocked).is_some())
}

fn status_for(queue: &JobQueue, tally: &QueueTally, head_waits: Option<&String>) -> JobQueueStatus {
    let mut s = queue.status.clone().unwrap_or_default();
    s.jobs = tally.counts.clone();
    s.oldest_runnable_since = tally.oldest_runnable();
    s.observed_generation = queue.metadata.generation;
    let g = queue.metadata.generation;
    let blocked = if queue.spec.state == State::Disabled {
        Condition::new(
            ConditionType::Blocked,
            true,
            "QueueDisabled",
            "The queue is DISABLED: it admits no jobs",
        )
    } else if s.jobs.runnable > 0
        && s.jobs.starting + s.jobs.running == 0
        && let Some(why) = head_waits
    {
        Condition::new(ConditionType::Blocked, true, "HeadJobWaiting", why.clone())
    } else {
        Condition::new(ConditionType::Blocked, false, "NotBlocked", "")
    };
    set_condition(&mut s.conditions, blocked.generation(g));
    s
}
