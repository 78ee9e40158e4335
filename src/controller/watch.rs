//! Watch → store: each kind's watch fills a reflector store, drops on the way in what no
//! loop reads, rings the scheduling pass and hands each change to a callback.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::warn;

use super::pod;
use crate::api::BatchJob;

/// How every watch retries once the apiserver stops answering: from 250 ms, doubling, to at
/// most 4 s (with jitter), and from the start again after a minute without errors. kube's
/// default goes to 30 s, so after a 10-s outage the operator could sleep another 13 s
/// before it looked again.
pub(crate) fn backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(4))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// What a watch saw, as handed to its `on_event`.
pub(super) enum Seen<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
    /// The watch begins to list everything again (each object then comes as `Applied`).
    Relisting,
    /// The watch listed everything again and its store was replaced: objects deleted
    /// meanwhile left without a `Deleted`.
    Relisted,
}

/// Watches a kind into a store; every event rings `wake` and is handed to `on_event`.
/// `prune` drops, on the way in, what no loop reads of this kind; `before` sees each event
/// while the store still holds what it replaces.
pub(super) fn plain_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    wake: Arc<Notify>,
    prune: impl Fn(&mut K) + Send + 'static,
    before: impl Fn(&watcher::Event<K>, &Store<K>) + Send + 'static,
    on_event: impl Fn(Seen<'_, K>) + Send + 'static,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    // The stores hold every job and pod: what no loop reads is dropped on the way in.
    let watch = watcher(api, config).backoff(backoff()).modify(move |obj| {
        prune_object(obj);
        prune(obj);
    });
    let previous = store.clone();
    let watch = watch.inspect_ok(move |ev| before(ev, &previous));
    let drive = watch.reflect(writer).for_each(move |ev| {
        match ev {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => on_event(Seen::Applied(&obj)),
            Ok(watcher::Event::Delete(obj)) => on_event(Seen::Deleted(&obj)),
            Ok(watcher::Event::InitDone) => on_event(Seen::Relisted),
            Ok(watcher::Event::Init) => on_event(Seen::Relisting),
            Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
        }
        wake.notify_one();
        ready(())
    });
    (store, drive)
}

/// What no store keeps of any object: managedFields, and kubectl's copy of the last
/// applied manifest.
pub fn prune_object<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// What the job store keeps of a job: of its labels only the trigger that made it (its
/// trigger counts its active jobs), and of its annotations those copied to its pods and a
/// batched trigger's list of the job's objects (its trigger finds a redelivered object there). A job's labels and annotations are maps of their own, which
/// over 100,000 held jobs is a fifth of the operator's memory.
pub fn prune_job(job: &mut BatchJob) {
    if let Some(l) = job.metadata.labels.as_mut() {
        l.retain(|k, _| k == crate::api::job_trigger::LABEL_TRIGGER);
        if l.is_empty() {
            job.metadata.labels = None;
        }
    }
    if let Some(a) = job.metadata.annotations.as_mut() {
        a.retain(|k, _| {
            k.starts_with(pod::COPIED_ANNOTATION_PREFIX)
                || k == crate::api::job_trigger::ANNOTATION_TRIGGER_OBJECTS
        });
        if a.is_empty() {
            job.metadata.annotations = None;
        }
    }
}
