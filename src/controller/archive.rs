//! The archiver: what each container of Barge's pods prints, read through the API server
//! (as `kubectl logs` reads it) and written to the log archive before the pod or its node goes.
//!
//! A container's output is read once when it ends, and while it runs every checkpoint
//! interval (sooner when it prints a lot, so the kubelet's log rotation never outruns it); a
//! pod Barge is about to stop is followed until its container exits, so a trap's last lines
//! are kept. Where a read resumes is kept in the archive itself (the chunks' names and the
//! last chunk's last line), so a restarted operator goes on where the last one left off.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::{Api, LogParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::archive::s3::Bucket;
use crate::archive::{ChunkBuilder, Cursor, StreamId, container_stream, parse_line};
use crate::provider::local::KWOK_ANNOTATION;

/// How often the archiver looks at the pods (a scan of the pod store, no request).
const TICK: Duration = Duration::from_secs(1);
/// Reads at once: each holds a request through the API server to a kubelet.
const CONCURRENT_READS: usize = 8;
/// A checkpoint that read this much reads again after [`BUSY_CHECKPOINT`]: the kubelet
/// rotates a container's log at 10 MiB (`containerLogMaxSize`), and serves only the newest
/// file.
const BUSY_BYTES: usize = 1024 * 1024;
const BUSY_CHECKPOINT: Duration = Duration::from_secs(5);
/// How long a read that failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often output past its retention is looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How often a followed container's output is written while it prints (a follow can last a
/// pod's whole grace period).
const FOLLOW_FLUSH: Duration = Duration::from_secs(5);
/// How long a stop waits for the follow read of the pod it stops to open.
const FOLLOW_OPEN: Duration = Duration::from_secs(3);

/// What the archiver needs to know beyond the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a running container's output is read.
    pub checkpoint: Duration,
    /// Also read pods on simulated (kwok) nodes, which serve no output of their own unless
    /// kwok is told to (benchmarks).
    pub simulated: bool,
    /// Days archived output is kept (0: for ever).
    pub retention_days: u32,
}

/// One container of one pod: what is known of its stream.
#[derive(Debug)]
struct Track {
    stream: StreamId,
    pod: String,
    namespace: String,
    container: String,
    /// Where reading resumes; `None` until read from the archive.
    cursor: Option<Cursor>,
    /// A read of it is in flight.
    busy: bool,
    /// Its next checkpoint (or retry).
    next_read: Instant,
}

impl Track {
    /// A container of `pod` before any read of it (none for a pod Barge did not mark).
    fn of(pod: &Pod, container: &str, next_read: Instant) -> Option<Track> {
        let namespace = pod.namespace().unwrap_or_default();
        Some(Track {
            stream: container_stream(&namespace, &pod.name_any(), pod.annotations(), container)?,
            pod: pod.name_any(),
            namespace,
            container: container.to_string(),
            cursor: None,
            busy: false,
            next_read,
        })
    }
}

/// Why a container is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// It ended: everything to the end, and the stream is closed.
    Final,
    /// It runs: what it printed since the last read.
    Checkpoint,
    /// Its pod is being stopped: follow it until it exits.
    Follow,
    /// Its pod is gone: close the stream with what was read.
    Close,
}

/// What a container is doing, as its status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    NotYet,
    Runs,
    Ended,
}

/// Whether and how a container is read now. Pure.
pub fn due(
    state: Running,
    deleting: bool,
    busy: bool,
    ended: bool,
    next_read: Instant,
    now: Instant,
) -> Option<Read> {
    if busy || ended {
        return None;
    }
    match state {
        Running::Ended => Some(Read::Final),
        Running::Runs if deleting => Some(Read::Follow),
        Running::Runs if now >= next_read => Some(Read::Checkpoint),
        _ => None,
    }
}

fn container_state(s: &ContainerStatus) -> Running {
    match &s.state {
        Some(st) if st.terminated.is_some() => Running::Ended,
        Some(st) if st.running.is_some() => Running::Runs,
        // Waiting after having run (a restart, which Barge's pods do not do) reads as ended.
        _ if s.last_state.as_ref().is_some_and(|l| l.terminated.is_some()) => Running::Ended,
        _ => Running::NotYet,
    }
}

type Key = (String, String); // (pod uid, container)

pub struct Archiver {
    bucket: Bucket,
    client: Client,
    settings: Settings,
    tracks: Mutex<HashMap<Key, Track>>,
    /// Containers whose streams are closed, while their pods remain.
    closed: Mutex<HashSet<Key>>,
    reads: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Archiver {
    pub fn new(client: Client, bucket: Bucket, settings: Settings) -> Arc<Archiver> {
        Arc::new(Archiver {
            bucket,
            client,
            settings,
            tracks: Mutex::default(),
            closed: Mutex::default(),
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
        })
    }

    /// Whether the pod's output is read at all: it runs on a real node (a simulated one
    /// prints nothing), or simulated ones are read too.
    fn reads_node(&self, nodes: &Store<Node>, node: &str) -> bool {
        self.settings.simulated
            || nodes.get(&ObjectRef::new(node)).is_some_and(|n| {
                n.annotations().get(KWOK_ANNOTATION.0).is_none_or(|v| v != KWOK_ANNOTATION.1)
            })
    }

    /// One look at every pod: starts the reads that are due; returns the nodes with output
    /// not archived yet.
    fn scan(self: &Arc<Self>, pods: &Store<Pod>, nodes: &Store<Node>) -> HashSet<String> {
        let now = Instant::now();
        let mut unarchived = HashSet::new();
        let mut seen: HashSet<Key> = HashSet::new();
        let mut start: Vec<(Key, Read)> = Vec::new();
        {
            let mut tracks = lock(&self.tracks);
            let closed = lock(&self.closed);
            for pod in pods.state() {
                let (Some(uid), Some(node)) =
                    (pod.uid(), pod.spec.as_ref().and_then(|s| s.node_name.clone()))
                else {
                    continue;
                };
                if !self.reads_node(nodes, &node) {
                    continue;
                }
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let status = pod.status.as_ref();
                let containers = status
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .chain(status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten());
                for c in containers {
                    let key = (uid.clone(), c.name.clone());
                    seen.insert(key.clone());
                    if closed.contains(&key) {
                        continue;
                    }
                    let state = container_state(c);
                    if state == Running::NotYet {
                        continue;
                    }
                    let t = match tracks.entry(key.clone()) {
                        Entry::Occupied(t) => t.into_mut(),
                        Entry::Vacant(v) => match Track::of(&pod, &c.name, now + self.settings.checkpoint) {
                            Some(t) => v.insert(t),
                            None => continue, // not marked by Barge
                        },
                    };
                    if state == Running::Ended {
                        unarchived.insert(node.clone());
                    }
                    let ended = t.cursor.as_ref().is_some_and(|c| c.end);
                    if let Some(read) = due(state, deleting, t.busy, ended, t.next_read, now) {
                        t.busy = true;
                        start.push((key, read));
                    }
                }
            }
            // Pods that went: close their streams with what was read.
            for (key, t) in tracks.iter_mut() {
                if !seen.contains(key) && !t.busy {
                    t.busy = true;
                    start.push((key.clone(), Read::Close));
                }
            }
        }
        lock(&self.closed).retain(|k| seen.contains(k));
        for (key, read) in start {
            let me = self.clone();
            tokio::spawn(async move { me.read(key, read, None).await });
        }
        unarchived
    }

    /// Before Barge stops a pod: follow each of its running containers to its end, and
    /// return once the reads have opened (or [`FOLLOW_OPEN`] passed).
    pub async fn before_stop(self: &Arc<Self>, pod: &Pod, nodes: &Store<Node>) {
        let (Some(uid), Some(node)) = (pod.uid(), pod.spec.as_ref().and_then(|s| s.node_name.clone())) else {
            return;
        };
        if !self.reads_node(nodes, &node) {
            return;
        }
        let mut opened = Vec::new();
        {
            let mut tracks = lock(&self.tracks);
            let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
            for c in statuses.into_iter().flatten().filter(|c| container_state(c) == Running::Runs) {
                let key = (uid.clone(), c.name.clone());
                let t = match tracks.entry(key.clone()) {
                    Entry::Occupied(t) => t.into_mut(),
                    Entry::Vacant(v) => match Track::of(pod, &c.name, Instant::now()) {
                        Some(t) => v.insert(t),
                        None => continue,
                    },
                };
                if t.busy {
                    continue; // a checkpoint runs; the scan follows the pod once it is deleting
                }
                t.busy = true;
                let (tx, rx) = oneshot::channel();
                opened.push(rx);
                let me = self.clone();
                tokio::spawn(async move { me.read(key, Read::Follow, Some(tx)).await });
            }
        }
        for rx in opened {
            let _ = tokio::time::timeout(FOLLOW_OPEN, rx).await;
        }
    }

    /// One read of one container into the archive; the track is free again after it.
    async fn read(self: Arc<Self>, key: Key, read: Read, opened: Option<oneshot::Sender<()>>) {
        let _permit = match read {
            // A follow lasts as long as the container: it takes no turn from the others.
            Read::Follow => None,
            _ => Some(self.reads.clone().acquire_owned().await.expect("never closed")),
        };
        let (stream, pod, namespace, container, cursor) = {
            let tracks = lock(&self.tracks);
            let Some(t) = tracks.get(&key) else { return };
            (t.stream.clone(), t.pod.clone(), t.namespace.clone(), t.container.clone(), t.cursor.clone())
        };
        let outcome = async {
            let mut cursor = match cursor {
                Some(c) => c,
                None => self.resume(&stream).await?,
            };
            if cursor.end {
                return Ok((cursor, 0));
            }
            if read == Read::Close {
                if cursor.next_seq > 0 {
                    let (chunk, body) = ChunkBuilder::default().take(cursor.next_seq, true);
                    self.bucket.put(&stream, &chunk, body).await?;
                    cursor.next_seq += 1;
                }
                cursor.end = true;
                return Ok((cursor, 0));
            }
            self.copy(&stream, &pod, &namespace, &container, cursor, read, opened).await
        }
        .await;
        let now = Instant::now();
        let mut tracks = lock(&self.tracks);
        let Some(t) = tracks.get_mut(&key) else { return };
        t.busy = false;
        match outcome {
            Ok((cursor, bytes)) => {
                let ended = cursor.end;
                t.cursor = Some(cursor);
                t.next_read =
                    now + if bytes >= BUSY_BYTES { BUSY_CHECKPOINT } else { self.settings.checkpoint };
                if ended {
                    debug!(stream = %t.stream.name, "archived");
                    tracks.remove(&key);
                    if read != Read::Close {
                        lock(&self.closed).insert(key);
                    }
                }
            }
            Err(Failed { cursor, error }) => {
                crate::metrics::metrics().log_archive_errors.inc();
                warn!(pod = %t.pod, container = %t.container, %error, "could not archive a container's output; trying again");
                if cursor.is_some() {
                    t.cursor = cursor;
                }
                t.next_read = now + RETRY_AFTER;
                if read == Read::Close {
                    // The pod is gone: nothing more to read, and what was read is kept.
                    tracks.remove(&key);
                }
            }
        }
    }

    /// Where a stream resumes, from the archive.
    async fn resume(&self, stream: &StreamId) -> Result<Cursor, Failed> {
        let chunks = self.bucket.chunks(stream).await.map_err(Failed::from)?;
        let last = chunks.iter().rev().find(|c| c.chunk.lines > 0);
        let body = match last {
            Some(l) => Some(self.bucket.read(&l.key).await.map_err(Failed::from)?),
            None => None,
        };
        let listed: Vec<_> = chunks.iter().map(|c| c.chunk.clone()).collect();
        Ok(Cursor::resume(&listed, body.as_deref()))
    }

    /// Reads the container's output from the cursor on and writes it in chunks; returns the
    /// cursor after the last chunk written and the bytes read.
    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        stream: &StreamId,
        pod: &str,
        namespace: &str,
        container: &str,
        mut cursor: Cursor,
        read: Read,
        opened: Option<oneshot::Sender<()>>,
    ) -> Result<(Cursor, usize), Failed> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = LogParams {
            container: Some(container.to_string()),
            timestamps: true,
            follow: read == Read::Follow,
            since_time: cursor.since().and_then(|t| t.to_rfc3339().parse().ok()),
            ..LogParams::default()
        };
        let mut committed = cursor.clone();
        let mut lines = match api.log_stream(pod, &params).await {
            Ok(s) => s,
            Err(e) => {
                return Err(Failed { cursor: Some(committed), error: format!("reading pod {pod}: {e}") });
            }
        };
        if let Some(tx) = opened {
            let _ = tx.send(());
        }
        cursor.begin_read();
        let mut builder = ChunkBuilder::default();
        let (mut bytes, mut buf, mut last_put) = (0, Vec::new(), Instant::now());
        loop {
            buf.clear();
            let n = match lines.read_until(b'\n', &mut buf).await {
                Ok(n) => n,
                Err(e) if read == Read::Follow => {
                    // A follow cut short (the pod went): keep what came.
                    debug!(%pod, error = %e, "the followed output ended");
                    0
                }
                Err(e) => {
                    return Err(Failed { cursor: Some(committed), error: format!("reading pod {pod}: {e}") });
                }
            };
            if n == 0 {
                break;
            }
            bytes += n;
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            let Some((ns, _)) = parse_line(line) else { continue };
            if !cursor.admit(ns) {
                continue;
            }
            builder.push(ns, line);
            if builder.full() || (read == Read::Follow && last_put.elapsed() >= FOLLOW_FLUSH) {
                let lines_in = self.put(stream, &mut builder, &mut cursor, false).await;
                lines_in.map_err(|e| Failed { cursor: Some(committed.clone()), error: e })?;
                committed = cursor.clone();
                last_put = Instant::now();
            }
        }
        let end = read == Read::Final;
        if end || !builder.is_empty() {
            self.put(stream, &mut builder, &mut cursor, end)
                .await
                .map_err(|e| Failed { cursor: Some(committed.clone()), error: e })?;
            cursor.end = end;
        }
        Ok((cursor, bytes))
    }

    /// Writes what the builder holds as the stream's next chunk.
    async fn put(
        &self,
        stream: &StreamId,
        builder: &mut ChunkBuilder,
        cursor: &mut Cursor,
        end: bool,
    ) -> Result<(), String> {
        let (chunk, body) = builder.take(cursor.next_seq, end);
        let lines = chunk.lines;
        self.bucket.put(stream, &chunk, body).await.map_err(|e| e.to_string())?;
        cursor.next_seq += 1;
        crate::metrics::metrics().log_lines_archived.inc_by(lines.into());
        Ok(())
    }
}

/// A read that failed, with the cursor after what it did write.
struct Failed {
    cursor: Option<Cursor>,
    error: String,
}

impl From<crate::archive::s3::Error> for Failed {
    fn from(e: crate::archive::s3::Error) -> Self {
        Failed { cursor: None, error: e.to_string() }
    }
}

/// The archiver's loop: a scan a second; the nodes with output not archived yet are kept
/// from scale-down.
pub async fn run(ctx: Arc<super::Shared>) {
    let Some(archiver) = ctx.archive.clone() else {
        return std::future::pending().await;
    };
    info!(bucket = archiver.bucket.name(), "archiving containers' output");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    loop {
        tick.tick().await;
        if !ctx.ready() {
            continue;
        }
        let days = archiver.settings.retention_days;
        if days > 0 && swept.elapsed() >= SWEEP_EVERY {
            swept = Instant::now();
            let before = chrono::Utc::now() - chrono::Duration::days(days.into());
            let bucket = archiver.bucket.clone();
            tokio::spawn(async move {
                match bucket.sweep(before).await {
                    Ok(n) => info!(chunks = n, days, "removed archived output past its retention"),
                    Err(e) => warn!(error = %e, "could not remove archived output past its retention"),
                }
            });
        }
        let unarchived = archiver.scan(&ctx.pods, &ctx.nodes);
        ctx.cluster.set_unarchived(unarchived);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_container_is_read_to_its_end_once() {
        let now = Instant::now();
        assert_eq!(due(Running::Ended, false, false, false, now, now), Some(Read::Final));
        assert_eq!(due(Running::Ended, false, true, false, now, now), None, "a read is in flight");
        assert_eq!(due(Running::Ended, false, false, true, now, now), None, "its stream is closed");
    }

    #[test]
    fn a_running_container_is_read_at_its_checkpoints_and_followed_when_stopped() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        assert_eq!(due(Running::Runs, false, false, false, later, now), None);
        assert_eq!(due(Running::Runs, false, false, false, now, later), Some(Read::Checkpoint));
        assert_eq!(due(Running::Runs, true, false, false, later, now), Some(Read::Follow));
        assert_eq!(due(Running::NotYet, true, false, false, now, later), None);
    }
}
