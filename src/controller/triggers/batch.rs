//! A batched trigger: objects gather until `batch.size` of them (or the oldest has waited
//! `batch.windowSeconds`), then become one array job whose children read their object from
//! an index Barge writes to S3. Messages stay hidden in SQS while their objects wait, their
//! visibility extended, and are deleted once each of their objects is in a job. A job's
//! objects are listed on it (`barge.dev/trigger-objects`): a redelivered message whose
//! object is in a batch already makes nothing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::{Done, Reader};
use crate::api::job_trigger::{
    ANNOTATION_TRIGGER_OBJECT, ANNOTATION_TRIGGER_OBJECTS, ArrayBatch, LABEL_TRIGGER,
};
use crate::provider::objects::ObjectWriter;
use crate::provider::sqs::{Message, SqsQueue};
use crate::trigger;

/// An object waiting for its batch.
struct Pending {
    object: String,
    line: String,
    message: String,
    since: Instant,
}

/// A message some of whose objects wait.
struct Held {
    message: Message,
    outstanding: usize,
}

pub(super) struct Batcher {
    size: usize,
    window: Duration,
    bucket: String,
    prefix: String,
    index_parameter: String,
    /// Writes the indexes, with the trigger's credentials.
    pub(super) writer: ObjectWriter,
    pending: VecDeque<Pending>,
    held: HashMap<String, Held>,
    /// Objects this reader put in a job (the job store may not show it yet).
    made: HashSet<String>,
    extended: Instant,
}

impl Batcher {
    pub(super) fn new(spec: &ArrayBatch, writer: ObjectWriter) -> Self {
        let location = spec.index_location.trim_start_matches("s3://");
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Batcher {
            size: spec.size as usize,
            window: Duration::from_secs(spec.window_seconds.into()),
            bucket: bucket.to_string(),
            prefix,
            index_parameter: spec.index_parameter.clone(),
            writer,
            pending: VecDeque::new(),
            held: HashMap::new(),
            made: HashSet::new(),
            extended: Instant::now(),
        }
    }

    /// How long a receive may wait before a batch is due or held messages need more time.
    pub(super) fn until_due(&self, visibility: Duration) -> Duration {
        let Some(oldest) = self.pending.front() else { return Duration::MAX };
        let batch = self.window.saturating_sub(oldest.since.elapsed());
        let extend = (visibility / 2).saturating_sub(self.extended.elapsed());
        batch.min(extend).max(Duration::from_secs(1))
    }

    fn due(&self) -> bool {
        self.pending.len() >= self.size
            || self.pending.front().is_some_and(|p| p.since.elapsed() >= self.window)
    }
}

impl Reader {
    /// Objects already in one of the trigger's jobs.
    fn in_jobs(&self, b: &Batcher) -> HashSet<String> {
        let mut objects = b.made.clone();
        for job in self.ctx.jobs.state() {
            if job.labels().get(LABEL_TRIGGER) == Some(&self.label)
                && job.namespace().as_deref() == Some(&self.ns)
                && let Some(list) = job.annotations().get(ANNOTATION_TRIGGER_OBJECTS)
            {
                objects.extend(list.split(',').map(str::to_string));
            }
        }
        objects
    }

    /// Takes the objects of new messages into the batch; messages with nothing left to wait
    /// for are settled at once.
    pub(super) async fn gather(
        &mut self,
        b: &mut Batcher,
        messages: Vec<Message>,
        queue: &SqsQueue,
        dead_letter: Option<&SqsQueue>,
    ) {
        let in_jobs = self.in_jobs(b);
        for m in messages {
            let accepted = match self.accept(&m) {
                Ok(a) => a,
                Err(done) => {
                    self.settle(queue, dead_letter, std::slice::from_ref(&m), vec![done]).await;
                    continue;
                }
            };
            let mut outstanding = 0;
            for a in accepted {
                if in_jobs.contains(&a.object) || b.pending.iter().any(|p| p.object == a.object) {
                    self.made(super::Made::Existed);
                    continue;
                }
                let line = trigger::index_line(&a.event, &a.parameters);
                b.pending.push_back(Pending {
                    object: a.object,
                    line,
                    message: m.id.clone(),
                    since: Instant::now(),
                });
                outstanding += 1;
            }
            if outstanding == 0 {
                self.settle(queue, dead_letter, std::slice::from_ref(&m), vec![Done::Handled]).await;
            } else if let Some(h) = b.held.get_mut(&m.id) {
                // The same message again (its visibility ran out): the newest receipt deletes it.
                h.message = m;
                h.outstanding += outstanding;
            } else {
                if b.held.is_empty() {
                    // Its visibility timeout starts now; the first extension is due at half of it.
                    b.extended = Instant::now();
                }
                b.held.insert(m.id.clone(), Held { message: m, outstanding });
            }
        }
    }

    /// Makes the batches that are due: writes each index, creates its array job, and settles
    /// the messages whose objects are all in jobs.
    pub(super) async fn flush(&mut self, b: &mut Batcher, queue: &SqsQueue, dead_letter: Option<&SqsQueue>) {
        while b.due() {
            let n = b.size.min(b.pending.len());
            let batch: Vec<Pending> = b.pending.drain(..n).collect();
            let objects: Vec<String> = batch.iter().map(|p| p.object.clone()).collect();
            let hash = trigger::batch_id(&objects);
            let name = trigger::named(&self.prefix(), &hash);
            let key = format!("{}{}/{}/{name}.jsonl", b.prefix, self.ns, self.trigger.name_any());
            let uri = format!("s3://{}/{key}", b.bucket);
            let index: String = batch.iter().map(|p| format!("{}\n", p.line)).collect();
            let outcome = match b.writer.put(&b.bucket, &key, index, "application/x-ndjson").await {
                Err(e) => Err(Err(format!("could not write the index {uri}: {e}"))),
                Ok(()) => {
                    let annotations = BTreeMap::from([
                        (ANNOTATION_TRIGGER_OBJECT.to_string(), uri.clone()),
                        (ANNOTATION_TRIGGER_OBJECTS.to_string(), objects.join(",")),
                    ]);
                    let parameters = BTreeMap::from([(b.index_parameter.clone(), uri.clone())]);
                    // A batch of one is a plain job: AWS Batch arrays have two children at least.
                    let array = (batch.len() > 1).then_some(batch.len());
                    match self.job_for(&hash, parameters, array, annotations) {
                        Ok(job) => self.create(job).await,
                        Err(why) => Err(Ok(why)),
                    }
                }
            };
            let done = match outcome {
                Ok(made) => {
                    self.made(made);
                    b.made.extend(objects);
                    self.write_status().await;
                    None
                }
                Err(Ok(why)) => Some(Done::Rejected(format!("batch {name}: {why}"))),
                Err(Err(why)) => {
                    // Tried again on the next pass; the messages stay hidden meanwhile.
                    self.status.last_error = Some(why);
                    b.pending.extend(batch);
                    return;
                }
            };
            let mut finished = Vec::new();
            let mut rejected = Vec::new();
            for p in &batch {
                let Some(h) = b.held.get_mut(&p.message) else { continue };
                h.outstanding -= 1;
                if h.outstanding == 0 {
                    let held = b.held.remove(&p.message).expect("held message");
                    match &done {
                        None => finished.push(held.message),
                        Some(Done::Rejected(why)) => rejected.push((held.message, why.clone())),
                        Some(_) => {}
                    }
                }
            }
            let handled = finished.iter().map(|_| Done::Handled).collect();
            self.settle(queue, dead_letter, &finished, handled).await;
            for (m, why) in rejected {
                self.settle(queue, dead_letter, std::slice::from_ref(&m), vec![Done::Rejected(why)]).await;
            }
        }
    }

    /// Keeps the held messages hidden: every half visibility timeout they get another.
    pub(super) async fn keep_hidden(&mut self, b: &mut Batcher, queue: &SqsQueue, visibility: Duration) {
        if b.held.is_empty() || b.extended.elapsed() < visibility / 2 {
            return;
        }
        let receipts: Vec<String> = b.held.values().map(|h| h.message.receipt.clone()).collect();
        match queue.extend(&receipts, visibility).await {
            Ok(()) => b.extended = Instant::now(),
            Err(e) => self.status.last_error = Some(format!("could not keep waiting messages hidden: {e}")),
        }
    }
}
