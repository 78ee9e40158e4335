//! Leader election with a `coordination.k8s.io/v1` Lease, so that several replicas can run
//! and only one acts. A replica takes the Lease when nobody holds it or when its holder has
//! not renewed it for a whole lease duration, as this replica measured it on its own clock
//! (so clock skew between nodes does not matter). The leader renews every third of the
//! duration; if it cannot, it stops acting and exits, and the Deployment restarts it as a
//! standby. On a clean shutdown it gives the Lease up, so the standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::metrics::metrics;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder's last renewal as this replica saw it change, and when it saw it.
    observed: std::sync::Mutex<Option<(String, Instant)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("lost the leader lease {0}: another replica holds it or it could not be renewed")]
pub struct LostLease(String);

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease; true when this replica holds it afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() {
            // Someone else holds it: wait until their renewals stop for a whole duration.
            let seen = format!("{holder:?}/{:?}", spec.renew_time.as_ref().map(|t| t.0));
            let mut observed = self.observed.lock().expect("observed lock");
            match observed.as_ref() {
                Some((s, at)) if *s == seen => {
                    let duration =
                        spec.lease_duration_seconds.map_or(self.duration, |d| Duration::from_secs(d as u64));
                    if at.elapsed() < duration {
                        return Ok(false);
                    }
                }
                _ => {
                    *observed = Some((seen, Instant::now()));
                    return Ok(false);
                }
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine { spec.acquire_time } else { None };
        let updated = Lease { metadata: lease.metadata.clone(), spec: Some(self.spec(acquire, transitions)) };
        // The resourceVersion in the metadata makes this a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, if this replica holds it.
    pub async fn release(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else { return };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let released = Lease { metadata: lease.metadata, spec: Some(spec) };
        match self.api.replace(&self.name, &PostParams::default(), &released).await {
            Ok(_) => info!(lease = %self.name, "leader lease released"),
            Err(e) => warn!(error = %e, "could not release the leader lease"),
        }
    }

    /// Waits until this replica leads, then runs `work` while renewing the Lease. Returns
    /// `work`'s result (releasing the Lease), or `LostLease` when renewal fails.
    pub async fn lead<T>(&self, work: impl Future<Output = T>) -> Result<T, LostLease> {
        let retry = self.duration / 5;
        metrics().leader.set(0);
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: cannot read the lease"),
            }
            tokio::time::sleep(retry).await;
        }
        info!(lease = %self.name, identity = %self.identity, "became the leader");
        metrics().leader.set(1);
        let renew = async {
            let mut last_renewal = Instant::now();
            loop {
                tokio::time::sleep(self.duration / 3).await;
                match self.try_acquire().await {
                    Ok(true) => last_renewal = Instant::now(),
                    Ok(false) => return,
                    Err(e) => {
                        warn!(error = %e, "leader election: renewal failed");
                        // Stop before the others may take over.
                        if last_renewal.elapsed() > self.duration * 2 / 3 {
                            return;
                        }
                    }
                }
            }
        };
        let out = tokio::select! {
            out = work => Ok(out),
            _ = renew => Err(LostLease(self.name.clone())),
        };
        metrics().leader.set(0);
        if out.is_ok() {
            self.release().await;
        }
        out
    }
}
