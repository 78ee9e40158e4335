//! JobTriggers: each ENABLED trigger has a reader of its SQS queue that turns the S3 object
//! events it receives into BatchJobs (`crate::trigger` decides; this module reads, creates
//! and deletes).
//!
//! Exactly once: a job's name is derived from its object (bucket, key, version), a message
//! is deleted only once each of its objects' jobs exists (made now, or found made by an
//! earlier delivery), and its visibility is extended while Barge still works on it. A
//! message that cannot be read or matches no filter is reported (an Event, the status, the
//! metric), sent to the dead-letter queue if there is one, and deleted. At most
//! `maxActiveJobs` of a trigger's jobs are unfinished: past it Barge receives nothing and the
//! messages wait in SQS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

mod batch;

use super::context::Shared;
use crate::api::job_trigger::{ANNOTATION_TRIGGER_OBJECT, ANNOTATION_TRIGGER_VERSION, LABEL_TRIGGER};
use crate::api::{BatchJob, Condition, ConditionType, JobTrigger, JobTriggerStatus, State, set_condition};
use crate::k8s::apply_status;
use crate::metrics::{TriggerOutcome, metrics};
use crate::provider::objects::ObjectWriter;
use crate::provider::sqs::{Message, SqsQueue};
use crate::trigger::{self, ObjectEvent};

/// How often the set of readers is compared with the triggers, short of a change.
const SUPERVISE_EVERY: Duration = Duration::from_secs(5);
/// The first and the longest wait after SQS or the API server fails.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The longest receive while the trigger has unfinished jobs (its status counts them).
const ACTIVE_POLL: Duration = Duration::from_secs(5);
/// How often a trigger at its limit looks again for a finished job.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Keys of a credentials Secret.
const KEY_ID: &str = "AWS_ACCESS_KEY_ID";
const SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// A running reader: the uid and generation of the trigger it reads for, and its task.
struct Running {
    uid: Option<String>,
    generation: Option<i64>,
    task: JoinHandle<()>,
}

/// Keeps one reader per ENABLED trigger, started again when its spec changes. Never returns.
pub(super) async fn run(
    ctx: Arc<Shared>,
    triggers: Store<JobTrigger>,
    changed: Arc<Notify>,
    lend_credentials: bool,
) {
    let mut readers: HashMap<ObjectRef<JobTrigger>, Running> = HashMap::new();
    loop {
        if ctx.ready() {
            let all = triggers.state();
            let enabled: HashMap<_, _> = all
                .iter()
                .filter(|t| t.spec.state == State::Enabled && t.metadata.deletion_timestamp.is_none())
                .map(|t| (ObjectRef::from_obj(t.as_ref()), t.clone()))
                .collect();
            readers.retain(|key, Running { uid, generation, task }| {
                let current =
                    enabled.get(key).is_some_and(|t| t.uid() == *uid && t.metadata.generation == *generation);
                if !current {
                    task.abort();
                    debug!(trigger = %key, "stopped reading");
                }
                current && !task.is_finished()
            });
            for (key, t) in enabled {
                readers.entry(key).or_insert_with(|| {
                    let reader = Reader::new(ctx.clone(), t.clone());
                    Running {
                        uid: t.uid(),
                        generation: t.metadata.generation,
                        task: tokio::spawn(reader.run(lend_credentials)),
                    }
                });
            }
            for t in all.iter().filter(|t| t.spec.state == State::Disabled) {
                let mut status = t.status.clone().unwrap_or_default();
                set_condition(
                    &mut status.conditions,
                    Condition::new(
                        ConditionType::Ready,
                        false,
                        "Disabled",
                        "the trigger is DISABLED: its messages wait in SQS",
                    ),
                );
                status.observed_generation = t.metadata.generation;
                let api: Api<JobTrigger> =
                    Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
                if let Err(e) = apply_status(&api, t.as_ref(), t.status.as_ref(), &status).await {
                    warn!(trigger = %t.name_any(), error = %e, "could not write a trigger's status");
                }
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}

/// What became of one message.
enum Done {
    /// Every object in it has its job: delete it.
    Handled,
    /// Not an object event, or none that passes the filter: report it and let it go.
    Rejected(String),
    /// Could not finish (the API server did not answer): SQS delivers it again.
    Retry(String),
}

/// The trigger's queue, its dead-letter queue, and the credentials both are read with (the
/// chain's when `None`).
type Connected = (SqsQueue, Option<SqsQueue>, Option<aws_credential_types::Credentials>);

/// An object of a message that passes the filter.
struct Accepted {
    /// Its id (`trigger::object_id`).
    object: String,
    event: ObjectEvent,
    parameters: BTreeMap<String, String>,
}

/// What creating one object's job came to.
enum Made {
    Created,
    Existed,
}

/// One trigger's reader, for one generation of its spec.
struct Reader {
    ctx: Arc<Shared>,
    trigger: Arc<JobTrigger>,
    ns: String,
    /// `NAMESPACE/NAME`, in logs, metrics and dead letters.
    id: String,
    label: String,
    api: Api<JobTrigger>,
    jobs: Api<BatchJob>,
    status: JobTriggerStatus,
    written: Option<JobTriggerStatus>,
    /// Jobs made that the job store has not shown yet (they count as active).
    unseen: HashSet<String>,
    /// The last error a Warning event was published for (one per distinct error).
    warned: Option<String>,
}

impl Reader {
    fn new(ctx: Arc<Shared>, trigger: Arc<JobTrigger>) -> Self {
        let ns = trigger.namespace().unwrap_or_default();
        let mut status = trigger.status.clone().unwrap_or_default();
        status.observed_generation = trigger.metadata.generation;
        Reader {
            api: Api::namespaced(ctx.client.clone(), &ns),
            jobs: Api::namespaced(ctx.client.clone(), &ns),
            label: label_value(&trigger.name_any()),
            id: format!("{ns}/{}", trigger.name_any()),
            written: trigger.status.clone(),
            ctx,
            trigger,
            ns,
            status,
            unseen: HashSet::new(),
            warned: None,
        }
    }

    /// The key its failures are counted under.
    fn key(&self) -> String {
        format!("trigger/{}", self.id)
    }

    async fn run(mut self, lend_credentials: bool) {
        let spec = self.trigger.spec.clone();
        let (mut queue, mut dead_letter, credentials) = self.connected(lend_credentials).await;
        let mut batcher = match &spec.batch {
            Some(b) => {
                let writer = ObjectWriter::new(spec.source.sqs.region.clone(), credentials).await;
                Some(batch::Batcher::new(b, writer))
            }
            None => None,
        };
        info!(trigger = %self.id, queue = %queue.url, batch = ?spec.batch.as_ref().map(|b| b.size), "reading S3 events");
        let visibility = Duration::from_secs(spec.source.sqs.visibility_timeout_seconds.into());
        let wait = Duration::from_secs(spec.source.sqs.wait_time_seconds.into());
        let max = u64::from(spec.max_active_jobs);
        loop {
            let active = self.active();
            self.status.active_jobs = active;
            if active >= max {
                self.ready(format!(
                    "reading {}; {active} jobs are not finished, the most maxActiveJobs allows: new messages wait in SQS",
                    queue.url
                ));
                if let Some(b) = batcher.as_mut() {
                    self.keep_hidden(b, &queue, visibility).await;
                }
                self.write_status().await;
                tokio::time::sleep(FULL_LOOK_EVERY).await;
                continue;
            }
            let room = usize::try_from(max - active).unwrap_or(usize::MAX);
            // While jobs run, a shorter poll keeps status.activeJobs current; a waiting batch
            // is made when it is due.
            let mut wait = if active > 0 { wait.min(ACTIVE_POLL) } else { wait };
            if let Some(b) = &batcher {
                wait = wait.min(b.until_due(visibility));
            }
            let messages = match queue.receive_some(wait, room, Some(visibility)).await {
                Ok(m) => m,
                Err(e) => {
                    self.failed("QueueUnreadable", format!("cannot read {}: {e}", queue.url)).await;
                    // The Secret may have been rotated since: read it again.
                    let credentials;
                    (queue, dead_letter, credentials) = self.connected(lend_credentials).await;
                    if let Some(b) = batcher.as_mut() {
                        b.writer = ObjectWriter::new(spec.source.sqs.region.clone(), credentials).await;
                    }
                    continue;
                }
            };
            self.ctx.failures.succeeded(&self.key());
            self.warned = None;
            self.status.last_error = None;
            self.ready(format!("reading {}", queue.url));
            if !messages.is_empty() {
                self.status.messages_received += messages.len() as u64;
                self.status.last_message_time = Some(Utc::now());
                self.count("received", messages.len());
                match batcher.as_mut() {
                    Some(b) => self.gather(b, messages, &queue, dead_letter.as_ref()).await,
                    None => {
                        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
                        let done = {
                            let work = self.handle_all(&messages);
                            with_heartbeat(&queue, &receipts, visibility, work).await
                        };
                        // Counted before the messages go: a stop between the two leaves
                        // them to come back as duplicates, never a job made and not counted.
                        self.write_status().await;
                        self.settle(&queue, dead_letter.as_ref(), &messages, done).await;
                    }
                }
            }
            if let Some(b) = batcher.as_mut() {
                self.flush(b, &queue, dead_letter.as_ref()).await;
                self.keep_hidden(b, &queue, visibility).await;
            }
            self.status.active_jobs = self.active();
            self.write_status().await;
        }
    }

    /// Connects, reporting each failure and trying again until it works.
    async fn connected(&mut self, lend: bool) -> Connected {
        loop {
            match self.connect(lend).await {
                Ok(c) => return c,
                Err((reason, message)) => self.failed(reason, message).await,
            }
        }
    }

    /// The trigger's queue and dead-letter queue, with the credentials its Secret holds.
    async fn connect(&mut self, lend: bool) -> Result<Connected, (&'static str, String)> {
        let sqs = &self.trigger.spec.source.sqs;
        let credentials = match &sqs.credentials_secret {
            Some(name) => Some(self.credentials(name).await?),
            None if lend => None,
            None => {
                return Err((
                    "NoCredentials",
                    "source.sqs.credentialsSecret names no Secret, and this operator lends its own \
                     credentials to no trigger (--trigger-operator-credentials)"
                        .into(),
                ));
            }
        };
        let queue = SqsQueue::with(sqs.queue_url.clone(), sqs.region.clone(), credentials.clone()).await;
        let dead_letter = match &self.trigger.spec.dead_letter {
            Some(d) => {
                Some(SqsQueue::with(d.queue_url.clone(), sqs.region.clone(), credentials.clone()).await)
            }
            None => None,
        };
        Ok((queue, dead_letter, credentials))
    }

    /// The keys in Secret `name` of the trigger's namespace (never another namespace's).
    async fn credentials(
        &self,
        name: &str,
    ) -> Result<aws_credential_types::Credentials, (&'static str, String)> {
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let secret = secrets.get(name).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                ("NoCredentials", format!("Secret {name} of namespace {} does not exist", self.ns))
            }
            kube::Error::Api(s) if s.code == 403 => (
                "NoCredentials",
                format!(
                    "Barge may not read Secret {name} of namespace {}: bind the chart's ClusterRole \
                     <release>-trigger-credentials to the operator's ServiceAccount in this namespace",
                    self.ns
                ),
            ),
            e => ("NoCredentials", format!("cannot read Secret {name}: {e}")),
        })?;
        let data = secret.data.unwrap_or_default();
        let value = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
        let (Some(id), Some(key)) = (value(KEY_ID), value(SECRET_KEY)) else {
            return Err(("NoCredentials", format!("Secret {name} lacks {KEY_ID} or {SECRET_KEY}")));
        };
        Ok(aws_credential_types::Credentials::new(id, key, value(SESSION_TOKEN), None, "barge-trigger"))
    }

    /// The trigger's jobs not yet finished, by the job store and the jobs made since.
    fn active(&mut self) -> u64 {
        let mut active = 0;
        for job in self.ctx.jobs.state() {
            if job.labels().get(LABEL_TRIGGER) != Some(&self.label)
                || job.namespace().as_deref() != Some(&self.ns)
            {
                continue;
            }
            self.unseen.remove(&job.name_any());
            if !job.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
                active += 1;
            }
        }
        active + self.unseen.len() as u64
    }

    async fn handle_all(&mut self, messages: &[Message]) -> Vec<Done> {
        let mut done = Vec::with_capacity(messages.len());
        for m in messages {
            done.push(self.handle(m).await);
        }
        done
    }

    /// The objects of a message that pass the filter, with their parameters; or what to do
    /// with a message that has none.
    fn accept(&mut self, m: &Message) -> Result<Vec<Accepted>, Done> {
        let events = match trigger::parse(&m.body) {
            Ok(trigger::Message::Events(events)) => events,
            Ok(trigger::Message::Test) => {
                self.count("test_event", 1);
                return Err(Done::Handled);
            }
            Err(why) => return Err(Done::Rejected(format!("message {}: {why}", m.id))),
        };
        let spec = &self.trigger.spec;
        let mut accepted = Vec::with_capacity(events.len());
        let mut refused = None;
        for event in events {
            if let Some(why) = trigger::rejected_by(&spec.filter, &event) {
                refused = Some(why);
                continue;
            }
            let parameters = trigger::parameters(&spec.parameters, &event)
                .map_err(|why| Done::Rejected(format!("message {}: {why}", m.id)))?;
            accepted.push(Accepted { object: trigger::object_id(&event, &m.id), event, parameters });
        }
        match (accepted.is_empty(), refused) {
            (true, Some(why)) => {
                Err(Done::Rejected(format!("message {}: no object passes the filter: {why}", m.id)))
            }
            _ => Ok(accepted),
        }
    }

    /// One job per object.
    async fn handle(&mut self, m: &Message) -> Done {
        let accepted = match self.accept(m) {
            Ok(a) => a,
            Err(done) => return done,
        };
        for a in accepted {
            let mut annotations = BTreeMap::from([(
                ANNOTATION_TRIGGER_OBJECT.to_string(),
                format!("s3://{}/{}", a.event.bucket, a.event.key),
            )]);
            if let Some(v) = &a.event.version {
                annotations.insert(ANNOTATION_TRIGGER_VERSION.to_string(), v.clone());
            }
            let job = match self.job_for(&a.object, a.parameters, None, annotations) {
                Ok(job) => job,
                Err(why) => return Done::Rejected(format!("message {}: {why}", m.id)),
            };
            match self.create(job).await {
                Ok(made) => self.made(made),
                Err(Ok(why)) => return Done::Rejected(format!("message {}: {why}", m.id)),
                Err(Err(why)) => return Done::Retry(why),
            }
        }
        Done::Handled
    }

    fn made(&mut self, made: Made) {
        match made {
            Made::Created => {
                self.status.jobs_created += 1;
                self.count("job_created", 1);
            }
            Made::Existed => {
                self.status.duplicates_suppressed += 1;
                self.count("duplicate", 1);
            }
        }
    }

    /// The job named `PREFIX-<hash>` from the template, with `parameters` over its own, an
    /// array of `array` children if given.
    fn job_for(
        &self,
        hash: &str,
        parameters: BTreeMap<String, String>,
        array: Option<usize>,
        annotations: BTreeMap<String, String>,
    ) -> Result<BatchJob, String> {
        let spec = &self.trigger.spec;
        let mut all: BTreeMap<String, String> =
            spec.job_template.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.extend(parameters);
        let mut template = serde_json::to_value(&spec.job_template).map_err(|e| e.to_string())?;
        let fields = template.as_object_mut().ok_or("the job template is not an object")?;
        fields.remove("jobNamePrefix");
        fields.insert("parameters".into(), serde_json::to_value(all).map_err(|e| e.to_string())?);
        if let Some(size) = array {
            fields.insert("array".into(), serde_json::json!({"size": size}));
        }
        let job_spec = serde_json::from_value(template).map_err(|e| format!("the job template: {e}"))?;
        let mut job = BatchJob::new(&trigger::named(&self.prefix(), hash), job_spec);
        job.metadata.namespace = Some(self.ns.clone());
        job.metadata.labels = Some([(LABEL_TRIGGER.to_string(), self.label.clone())].into());
        job.metadata.annotations = Some(annotations);
        Ok(job)
    }

    /// The first part of its jobs' names.
    fn prefix(&self) -> String {
        self.trigger.spec.job_template.job_name_prefix.clone().unwrap_or_else(|| self.trigger.name_any())
    }

    /// Creates the job, or finds it made. `Err(Ok(why))`: the API server refuses it (the
    /// message is rejected); `Err(Err(why))`: try again later.
    async fn create(&mut self, job: BatchJob) -> Result<Made, Result<String, String>> {
        let name = job.name_any();
        if self.unseen.contains(&name) || self.ctx.jobs.get(&ObjectRef::new(&name).within(&self.ns)).is_some()
        {
            return Ok(Made::Existed);
        }
        let params = PostParams { field_manager: Some(crate::FIELD_MANAGER.into()), ..Default::default() };
        match self.jobs.create(&params, &job).await {
            Ok(_) => {
                self.unseen.insert(name);
                Ok(Made::Created)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Made::Existed),
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                Err(Ok(format!("the API server refused job {name}: {}", s.message)))
            }
            Err(e) => Err(Err(format!("could not create job {name}: {e}"))),
        }
    }

    /// Deletes what is done with, dead-letters what is rejected, keeps what is to be retried.
    async fn settle(
        &mut self,
        queue: &SqsQueue,
        dead_letter: Option<&SqsQueue>,
        messages: &[Message],
        done: Vec<Done>,
    ) {
        let mut delete = Vec::new();
        for (m, done) in messages.iter().zip(done) {
            match done {
                Done::Handled => delete.push(m.receipt.clone()),
                Done::Retry(why) => {
                    self.count("retried", 1);
                    warn!(trigger = %self.id, error = %why, "a message is left for SQS to deliver again");
                    self.status.last_error = Some(why);
                }
                Done::Rejected(why) => {
                    if let Some(dl) = dead_letter {
                        let attributes = [("BargeReason", why.as_str()), ("BargeTrigger", self.id.as_str())];
                        if let Err(e) = dl.send(&m.body, &attributes).await {
                            let error = format!("could not send a rejected message to {}: {e}", dl.url);
                            warn!(trigger = %self.id, %error, "a rejected message is left in SQS");
                            self.status.last_error = Some(error);
                            continue;
                        }
                    }
                    self.status.rejected += 1;
                    self.count("rejected", 1);
                    warn!(trigger = %self.id, reason = %why, "rejected a message");
                    let note = match dead_letter {
                        Some(dl) => format!("{why} (sent to {})", dl.url),
                        None => format!("{why} (deleted: the trigger has no deadLetter queue)"),
                    };
                    self.publish(EventType::Warning, "MessageRejected", note).await;
                    self.status.last_rejection = Some(why);
                    delete.push(m.receipt.clone());
                }
            }
        }
        if let Err(e) = queue.delete(&delete).await {
            // The jobs exist: a redelivered message finds them and is deleted then.
            warn!(trigger = %self.id, error = %e, "could not delete handled messages");
            self.status.last_error = Some(format!("could not delete handled messages: {e}"));
        }
    }

    fn ready(&mut self, message: String) {
        set_condition(
            &mut self.status.conditions,
            Condition::new(ConditionType::Ready, true, "Reading", message),
        );
    }

    /// Reports a failure (the status, one Warning event per distinct error) and waits.
    async fn failed(&mut self, reason: &'static str, message: String) {
        let pause = self.ctx.failures.failed(&self.key(), RETRY_FIRST, RETRY_MAX);
        warn!(trigger = %self.id, %reason, error = %message, retry_in = ?pause, "trigger cannot read its queue");
        set_condition(
            &mut self.status.conditions,
            Condition::new(ConditionType::Ready, false, reason, message.clone()),
        );
        self.status.last_error = Some(message.clone());
        if self.warned.as_ref() != Some(&message) {
            self.publish(EventType::Warning, reason, message.clone()).await;
            self.warned = Some(message);
        }
        self.write_status().await;
        tokio::time::sleep(pause).await;
    }

    async fn write_status(&mut self) {
        match apply_status(&self.api, self.trigger.as_ref(), self.written.as_ref(), &self.status).await {
            Ok(_) => self.written = Some(self.status.clone()),
            Err(e) => warn!(trigger = %self.id, error = %e, "could not write the trigger's status"),
        }
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::k8s::event_note(note)),
            action: "Trigger".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &self.trigger.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }

    fn count(&self, outcome: &str, n: usize) {
        metrics()
            .trigger_messages
            .get_or_create(&TriggerOutcome { trigger: self.id.clone(), outcome: outcome.into() })
            .inc_by(n as u64);
    }
}

/// Runs `work` while keeping `receipts` hidden: every half `visibility` they get another.
async fn with_heartbeat<T>(
    queue: &SqsQueue,
    receipts: &[String],
    visibility: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + visibility / 2, visibility / 2);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = beat.tick() => {
                if let Err(e) = queue.extend(receipts, visibility).await {
                    warn!(queue = %queue.url, error = %e, "could not extend messages' visibility");
                }
            }
        }
    }
}

/// A trigger's name as a label value (at most 63 characters).
fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(name.as_bytes()).iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", name[..52].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_trigger_names_make_label_values_that_stay_apart() {
        assert_eq!(label_value("thumbnails"), "thumbnails");
        let a = label_value(&format!("{}-a", "t".repeat(70)));
        let b = label_value(&format!("{}-b", "t".repeat(70)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }
}
