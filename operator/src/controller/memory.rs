//! What the operator remembers between reconciles, per DindDaemon: its last apply (so an
//! unchanged one costs no request), the storage driver of each daemon pod (asked once) and its
//! disk usage (asked every minute), what pruning needs (images' last use, the last prune), and its
//! consecutive failures (for backoff). Pruned when what it describes is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::applied::Applied;
use crate::crd::LastPrune;
use crate::disk::DiskUsage;
use crate::disk::prune::ImageUse;

/// The first retry of a failed reconcile comes after this long, then twice as long each time.
pub const BACKOFF_START: Duration = Duration::from_secs(5);
/// Retries never wait longer than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The delay before retrying after `failures` consecutive failures (1 = the first).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

#[derive(Debug, Default)]
pub struct Memory {
    /// The last successful apply of each DindDaemon, by `namespace/name`.
    applied: Mutex<HashMap<String, Applied>>,
    /// Storage driver per daemon pod uid, asked once per pod over mTLS.
    drivers: Mutex<HashMap<String, String>>,
    /// Disk usage per daemon pod uid, and when it was asked (again after `DISK_EVERY`).
    disks: Mutex<HashMap<String, (Instant, DiskUsage)>>,
    /// What pruning needs to remember per daemon pod uid (see [`Pruning`]).
    pruning: Mutex<HashMap<String, Pruning>>,
    /// The server certificate (DER) each daemon pod uid was last seen serving while it was the
    /// current one: no handshake with that pod until the certificate changes (`cert_roll`).
    serving: Mutex<HashMap<String, Vec<u8>>>,
    /// Consecutive failed reconciles, by `namespace/name`.
    failures: Streaks,
    /// Connections to a routed client Service that were refused, by `namespace/name`.
    route_checks: Streaks,
    /// Pool leases (`ns/claim/id`) this process has seen held by a pod: when that pod is gone
    /// the lease ends at once (without this memory, after the grace; see `volume_pool::ended`).
    pub held_leases: Mutex<std::collections::BTreeSet<String>>,
    /// Disk answers (`/system/df`, up to `MAX_DF_ANSWER` each) being read at once, process-wide.
    pub disk_reads: DiskReads,
}

/// At most [`DiskReads::AT_ONCE`] daemons' disk answers are read at a time in the whole process
/// (16 reconciles at once, each asking all its replicas, would otherwise hold up to hundreds of
/// 16 MiB answers at once under the operator's 256 Mi limit).
#[derive(Debug)]
pub struct DiskReads(pub tokio::sync::Semaphore);

impl DiskReads {
    pub const AT_ONCE: usize = 4;
}

impl Default for DiskReads {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(Self::AT_ONCE))
    }
}

/// What pruning remembers of one daemon pod.
#[derive(Clone, Debug, Default)]
pub struct Pruning {
    /// When its images were last used.
    pub uses: ImageUse,
    /// Up to when its events were read (unix seconds, the operator's clock).
    pub events_until: Option<i64>,
    /// Its last prune that freed something.
    pub last: Option<LastPrune>,
}

/// How many times in a row something happened, by `namespace/name` of a DindDaemon.
#[derive(Debug, Default)]
struct Streaks(Mutex<HashMap<String, u32>>);

impl Streaks {
    /// One more in a row; the new count (None if the lock is poisoned).
    fn bump(&self, key: &str) -> Option<u32> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Some(*n)
    }

    fn end(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }

    /// Drops the streaks of DindDaemons that are gone (walks only when there are more streaks
    /// than DindDaemons).
    fn prune(&self, daemons: usize, daemon_exists: &impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.0.lock()
            && m.len() > daemons
        {
            m.retain(|k, _| daemon_exists(k));
        }
    }

    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or_default()
    }
}

/// After this many refused connections to a Service its EndpointSlice is trusted alone (the
/// operator may simply not reach the cluster network the way clients do).
pub const ROUTE_CHECKS: u32 = 14;

/// The delay before connection attempt `n` (1 = the second) to a routed Service: every 200 ms
/// for the first two seconds (kube-proxy follows an EndpointSlice within about a second), then
/// every 5 s; all fourteen take about 17 s.
pub fn route_recheck(n: u32) -> Duration {
    if n <= 10 { Duration::from_millis(200) } else { Duration::from_secs(5) }
}

impl Memory {
    /// The last apply of `key`, if it was of this very DindDaemon (same uid).
    pub fn last_apply(&self, key: &str, uid: &str) -> Option<Applied> {
        self.applied.lock().ok()?.get(key).filter(|a| a.owner_uid == uid).cloned()
    }

    pub fn remember_apply(&self, key: &str, applied: Applied) {
        if let Ok(mut m) = self.applied.lock() {
            m.insert(key.to_string(), applied);
        }
    }

    pub fn driver(&self, pod_uid: &str) -> Option<String> {
        self.drivers.lock().ok()?.get(pod_uid).cloned()
    }

    pub fn remember_driver(&self, pod_uid: &str, driver: &str) {
        if let Ok(mut m) = self.drivers.lock() {
            m.insert(pod_uid.to_string(), driver.to_string());
        }
    }

    /// The disk usage a pod reported last, and when.
    pub fn disk(&self, pod_uid: &str) -> Option<(Instant, DiskUsage)> {
        self.disks.lock().ok()?.get(pod_uid).cloned()
    }

    pub fn remember_disk(&self, pod_uid: &str, usage: DiskUsage) {
        if let Ok(mut m) = self.disks.lock() {
            m.insert(pod_uid.to_string(), (Instant::now(), usage));
        }
    }

    /// What pruning remembers of a pod (a default for one not seen yet).
    pub fn pruning(&self, pod_uid: &str) -> Pruning {
        self.pruning.lock().ok().and_then(|m| m.get(pod_uid).cloned()).unwrap_or_default()
    }

    /// A pod's last prune alone (status reads it every reconcile; the image-use map stays).
    pub fn last_prune(&self, pod_uid: &str) -> Option<LastPrune> {
        self.pruning.lock().ok()?.get(pod_uid)?.last.clone()
    }

    pub fn remember_pruning(&self, pod_uid: &str, pruning: Pruning) {
        if let Ok(mut m) = self.pruning.lock() {
            m.insert(pod_uid.to_string(), pruning);
        }
    }

    /// Whether pod `pod_uid` was seen serving `certificate` (DER).
    pub fn serves(&self, pod_uid: &str, certificate: &[u8]) -> bool {
        self.serving.lock().ok().is_some_and(|m| m.get(pod_uid).is_some_and(|der| der == certificate))
    }

    pub fn remember_serving(&self, pod_uid: &str, certificate: &[u8]) {
        if let Ok(mut m) = self.serving.lock() {
            m.insert(pod_uid.to_string(), certificate.to_vec());
        }
    }

    /// Counts a failure of `key`; returns how many in a row.
    pub fn failed(&self, key: &str) -> u32 {
        self.failures.bump(key).unwrap_or(1)
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.end(key);
    }

    /// Counts a refused connection to `key`'s Service; returns how many in a row.
    pub fn route_refused(&self, key: &str) -> u32 {
        self.route_checks.bump(key).unwrap_or(ROUTE_CHECKS)
    }

    /// The Service accepted a connection, or there is nothing to check any more.
    pub fn route_settled(&self, key: &str) {
        self.route_checks.end(key);
    }

    /// Forgets everything about one DindDaemon.
    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.applied.lock() {
            m.remove(key);
        }
        self.succeeded(key);
        self.route_settled(key);
    }

    /// Forgets DindDaemons that are gone and pods that are gone. Cheap unless some are: a map is
    /// walked only when it holds more entries than there are live objects.
    pub fn prune(
        &self,
        daemons: usize,
        daemon_exists: impl Fn(&str) -> bool,
        pods: usize,
        live_pods: impl FnOnce() -> HashSet<String>,
    ) -> Vec<String> {
        let (mut drivers, mut disks, mut pruning, mut serving) =
            (self.drivers.lock(), self.disks.lock(), self.pruning.lock(), self.serving.lock());
        if let (Ok(drivers), Ok(disks), Ok(pruning), Ok(serving)) = (drivers.as_mut(), disks.as_mut(), pruning.as_mut(), serving.as_mut())
            && (drivers.len() > pods || disks.len() > pods || pruning.len() > pods || serving.len() > pods)
        {
            let live = live_pods();
            drivers.retain(|uid, _| live.contains(uid));
            disks.retain(|uid, _| live.contains(uid));
            pruning.retain(|uid, _| live.contains(uid));
            serving.retain(|uid, _| live.contains(uid));
        }
        drop((drivers, disks, pruning, serving));
        let gone: Vec<String> = match self.applied.lock() {
            Ok(m) if m.len() > daemons => m.keys().filter(|k| !daemon_exists(k)).cloned().collect(),
            _ => Vec::new(),
        };
        for key in &gone {
            self.forget(key);
        }
        self.failures.prune(daemons, &daemon_exists);
        self.route_checks.prune(daemons, &daemon_exists);
        gone
    }

    /// Sizes of the maps (applied, drivers, failures), for tests.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.applied.lock().map(|m| m.len()).unwrap_or_default(),
            self.drivers.lock().map(|m| m.len()).unwrap_or_default(),
            self.failures.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn no_more_disk_answers_are_read_at_once_than_the_bound() {
        let memory = std::sync::Arc::new(Memory::default());
        let (now, most) = (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
        let reads = (0..20).map(|_| {
            let (memory, now, most) = (memory.clone(), now.clone(), most.clone());
            tokio::spawn(async move {
                let _permit = memory.disk_reads.0.acquire().await.unwrap();
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for r in reads.collect::<Vec<_>>() {
            r.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), DiskReads::AT_ONCE);
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn route_rechecks_are_quick_for_two_seconds_then_slow_and_stop_after_fourteen() {
        let waits: Vec<u64> = (1..ROUTE_CHECKS).map(|n| route_recheck(n).as_millis() as u64).collect();
        assert_eq!(waits, [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 5000, 5000, 5000]);
        let m = Memory::default();
        assert_eq!((m.route_refused("a/x"), m.route_refused("a/x")), (1, 2));
        m.route_settled("a/x");
        assert_eq!(m.route_refused("a/x"), 1);
    }

    #[test]
    fn failures_count_until_a_success_and_prune_drops_the_gone() {
        let m = Memory::default();
        assert_eq!((m.failed("a/x"), m.failed("a/x"), m.failed("a/y")), (1, 2, 1));
        m.succeeded("a/x");
        assert_eq!(m.failed("a/x"), 1);
        m.remember_driver("pod-1", "overlay2");
        m.remember_driver("pod-2", "vfs");
        m.remember_pruning("pod-1", Pruning { events_until: Some(1), ..Default::default() });
        m.remember_serving("pod-1", b"leaf-1");
        m.remember_serving("pod-2", b"leaf-1");
        assert!(m.serves("pod-1", b"leaf-1") && !m.serves("pod-1", b"leaf-2"), "a renewed certificate is asked again");
        m.prune(1, |k| k == "a/x", 1, || HashSet::from(["pod-2".to_string()]));
        assert_eq!(m.sizes(), (0, 1, 1));
        assert_eq!(m.driver("pod-2").as_deref(), Some("vfs"));
        assert_eq!(m.pruning("pod-1").events_until, None, "a gone pod's pruning is forgotten");
        assert!(!m.serves("pod-1", b"leaf-1") && m.serves("pod-2", b"leaf-1"), "a gone pod's certificate is forgotten");
    }
}
