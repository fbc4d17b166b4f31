//! Leader election on a coordination.k8s.io Lease, so that two replicas never both reconcile.
//!
//! The holder renews every `renew` interval; a candidate takes the lease only once it has not
//! been renewed for `duration`. Every write carries the resourceVersion it read, so two
//! candidates cannot both win the same race (the apiserver refuses the second with 409).
//!
//! The holder steps down *before* its lease can expire: when it has not confirmed a renewal
//! for `renew_deadline` (< `duration`, as client-go's leader election does), counted from the
//! moment the last successful renewal was sent, and every renewal is bounded by what is left of
//! that deadline, so a renewal that hangs cannot keep a stale leader writing beside a new one.
//! (kube-rs has no leader election of its own. Of the crates that add one, kube-leader-election
//! pins kube 0.96 and kube-coordinate kube 2; kube-lease-manager 0.13 resolves with kube 5 but
//! does not document what it does when a renewal hangs, the case this module exists for, so
//! this small, tested one stays ours until that is checked.)

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew: Duration,
    renew_deadline: Duration,
}

/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder steps down when it could not renew for this long: 5 s before the lease expires.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews (and a candidate retries).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration: LEASE_DURATION,
            renew: RETRY_PERIOD,
            renew_deadline: RENEW_DEADLINE,
        }
    }

    /// Blocks until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(false) if !logged => {
                    info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Renews until leadership is lost or cannot be confirmed within the renew deadline; then
    /// returns (the caller must stop writing at once).
    pub async fn hold(&self) {
        hold_with(self.renew, self.renew_deadline, || self.try_acquire_or_renew(), &self.name).await;
    }

    /// Gives the lease up at shutdown, so a standby takes over without waiting it out.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    warn!(error = %e, "could not release the lease");
                }
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() }, spec: Some(self.spec(now, None, 0)) };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(secs)) => *t + SignedDuration::from_secs(i64::from(secs)) < now,
            _ => true,
        };
        let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !mine && !expired && !vacant {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

/// Renews every `period` and returns once leadership is lost (`Ok(false)`) or no renewal has
/// succeeded for `deadline`, counted from when the last successful one was sent (the lease's
/// renewTime is set before sending, so its expiry is at least `duration` after that moment).
/// Each attempt may take only what is left of the deadline.
async fn hold_with<F, Fut, E>(period: Duration, deadline: Duration, mut renew: F, lease: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let sent = tokio::time::Instant::now();
        let left = deadline.saturating_sub(sent.duration_since(confirmed));
        if left.is_zero() {
            warn!(lease, ?deadline, "no renewal confirmed within the renew deadline; stepping down");
            return;
        }
        match tokio::time::timeout(left, renew()).await {
            Ok(Ok(true)) => confirmed = sent,
            Ok(Ok(false)) => {
                warn!(lease, "lease taken by another replica");
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "could not renew the lease"),
            Err(_) => warn!(lease, "renewing the lease did not answer in time"),
        }
        if confirmed.elapsed() >= deadline {
            warn!(lease, ?deadline, "no renewal confirmed within the renew deadline; stepping down");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_steps_down_before_the_lease_expires() {
        // Two renewals succeed, then the apiserver stops answering (the request hangs).
        let calls = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let c = calls.clone();
        hold_with(
            RETRY_PERIOD,
            RENEW_DEADLINE,
            move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Ok::<bool, String>(true)
                    } else {
                        std::future::pending::<()>().await;
                        Ok(true)
                    }
                }
            },
            "test",
        )
        .await;
        // The last confirmed renewal was sent at 2 x RETRY_PERIOD; the lease runs until 15 s
        // after it. Stepping down must come before that, at the renew deadline.
        let last_ok = RETRY_PERIOD * 2;
        let stepped_down = started.elapsed();
        assert!(stepped_down <= last_ok + RENEW_DEADLINE, "stepped down after {stepped_down:?}");
        assert!(stepped_down < last_ok + LEASE_DURATION, "overlap with a successor");
        assert!(stepped_down >= last_ok + RENEW_DEADLINE - Duration::from_millis(1), "stepped down too early: {stepped_down:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_step_down_at_the_deadline_and_a_lost_lease_at_once() {
        let started = tokio::time::Instant::now();
        hold_with(RETRY_PERIOD, RENEW_DEADLINE, || async { Err::<bool, _>("refused") }, "test").await;
        assert!(started.elapsed() <= RENEW_DEADLINE, "{:?}", started.elapsed());
        let started = tokio::time::Instant::now();
        hold_with(RETRY_PERIOD, RENEW_DEADLINE, || async { Ok::<bool, String>(false) }, "test").await;
        assert_eq!(started.elapsed(), RETRY_PERIOD);
    }
}
