//! Prometheus metrics of the operator, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// injected, unchanged (already injected), skipped (not ours), refused.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DaemonLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub name: String,
    pub pod: String,
}

/// The operator's metrics; cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    /// Reconciles that found every owned object as they last applied it, and wrote none.
    pub unchanged: Counter,
    /// Status writes (a reconcile writes status only when it changed).
    pub status_updates: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub ready_daemons: Family<DaemonLabels, Gauge>,
    pub leader: Gauge,
    /// Pod admissions by the injection webhook, by outcome.
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_seconds: Histogram,
    /// Per-pod client certificate requests, by outcome (minted, refused, failed).
    pub certificates: Family<AdmissionLabels, Counter>,
    pub certificate_seconds: Histogram,
    /// What each daemon keeps on its volume (`/system/df`), as of the last ask.
    pub disk_used_bytes: Family<PodLabels, Gauge>,
    pub build_cache_bytes: Family<PodLabels, Gauge>,
    pub images: Family<PodLabels, Gauge>,
    /// Prunes that freed something, and the bytes they freed.
    pub prunes: Counter,
    pub pruned_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            unchanged: Counter::default(),
            status_updates: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            ready_daemons: Family::default(),
            leader: Gauge::default(),
            admissions: Family::default(),
            admission_seconds: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            certificates: Family::default(),
            certificate_seconds: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            disk_used_bytes: Family::default(),
            build_cache_bytes: Family::default(),
            images: Family::default(),
            prunes: Counter::default(),
            pruned_bytes: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `dind_operator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dind_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register("reconciles_unchanged", "Reconciles that had nothing to apply", self.unchanged.clone());
        r.register("status_updates", "DindDaemon status writes", self.status_updates.clone());
        r.register("reconcile_errors", "Reconciles that failed, by error kind", self.errors.clone());
        r.register("reconcile_duration_seconds", "Time a reconcile took", self.duration.clone());
        r.register("ready_daemons", "Ready daemons per DindDaemon", self.ready_daemons.clone());
        r.register("leader", "1 while this replica holds the leader lease", self.leader.clone());
        r.register("webhook_admissions", "Pods the injection webhook answered, by outcome", self.admissions.clone());
        r.register("webhook_admission_duration_seconds", "Time the injection webhook took per pod", self.admission_seconds.clone());
        r.register(
            "client_certificates",
            "Per-pod client certificate requests, by outcome (minted, refused, failed)",
            self.certificates.clone(),
        );
        r.register(
            "client_certificate_duration_seconds",
            "Time a per-pod client certificate request took",
            self.certificate_seconds.clone(),
        );
        r.register("daemon_disk_used_bytes", "Bytes a daemon keeps on its volume (docker system df)", self.disk_used_bytes.clone());
        r.register("daemon_build_cache_bytes", "Bytes of a daemon's build cache", self.build_cache_bytes.clone());
        r.register("daemon_images", "Images a daemon holds", self.images.clone());
        r.register("prunes", "Prunes of daemons that freed something", self.prunes.clone());
        r.register("pruned_bytes", "Bytes prunes freed (as /system/df counts them)", self.pruned_bytes.clone());
    }

    /// A prune that freed something.
    pub fn record_prune(&self, freed: u64) {
        self.prunes.inc();
        self.pruned_bytes.inc_by(freed);
    }

    /// The figures of one daemon's `/system/df`.
    pub fn record_disk(&self, namespace: &str, name: &str, pod: &str, usage: &crate::disk::DiskUsage) {
        let labels = PodLabels { namespace: namespace.into(), name: name.into(), pod: pod.into() };
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.disk_used_bytes.get_or_create(&labels).set(gauge(usage.used_bytes()));
        self.build_cache_bytes.get_or_create(&labels).set(gauge(usage.build_cache_bytes));
        self.images.get_or_create(&labels).set(i64::from(usage.images));
    }
}
