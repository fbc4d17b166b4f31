//! Status of a DindDaemon, computed from what the cluster shows: pure, so it is unit-tested.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::build::docker_hosts;
use crate::cache::{self, DiskUsage};
use crate::crd::{DaemonEndpoint, DindDaemon, DindDaemonStatus, EndpointDisk, LastPrune};
use crate::names::Names;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What the reconciler observed, the input of [`compute`].
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub statefulset: Option<&'a StatefulSet>,
    /// Our daemon pods.
    pub pods: &'a [Pod],
    /// Pods that are not ours but mount one of our volumes (`pod`, `claim`).
    pub intruders: Vec<(String, String)>,
    /// Storage driver per pod name, as the daemons reported it.
    pub drivers: Vec<(String, String)>,
    /// Disk usage per pod name, as the daemons reported it.
    pub disks: Vec<(String, DiskUsage)>,
    /// The last prune per pod name that this operator process saw (older ones stay in status).
    pub prunes: Vec<(String, LastPrune)>,
    /// Why the last apply failed, if it did: the `Degraded` reason (`ApplyFailed`,
    /// `NameConflict`) and the refusal, named.
    pub apply_error: Option<(&'static str, String)>,
    /// Why the StatefulSet cannot create daemon pods (see [`pods_refused`]).
    pub pods_refused: Option<String>,
    /// A raised `storage.size` not yet in effect (see `controller::volumes`).
    pub growth: Option<Growth>,
    /// Daemon pods the client Service routes to (ready endpoints of its EndpointSlices). A
    /// daemon is ready only once it answers *and* is routed: Ready means a client can connect.
    pub routed: Vec<String>,
}

/// Volumes asked to grow (`storage.size` raised) that have not yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The apiserver refused to expand a claim (its StorageClass does not allow it): `Degraded`,
    /// reason `VolumeNotExpandable`.
    Refused(String),
    /// Claims raised, volumes not yet as large: `Progressing`, reason `VolumeExpanding`.
    Waiting(String),
}

/// A daemon that restarted counts as failing until it has run this long without a restart:
/// a crash loop passes through short `Running` spells, which must not read as recovered.
pub const STABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a daemon pod is failing, if it is: waiting in a crash loop or on an image, or
/// restarted less than [`STABLE_AFTER`] ago; with dind-init's last words where there are some.
fn pod_failure(pod: &Pod, now: &Time) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let state = cs.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref()).and_then(|w| Some((w.reason.as_deref()?, w.message.clone())));
        let reason = match waiting {
            Some((
                reason @ ("CrashLoopBackOff" | "ImagePullBackOff" | "ErrImagePull" | "CreateContainerConfigError" | "CreateContainerError"),
                _,
            )) => reason.to_string(),
            _ if cs.restart_count == 0 => return None,
            // Restarted: failing while it is down, and until it has stayed up for a while.
            _ => match state.and_then(|s| s.running.as_ref()) {
                Some(running) if running.started_at.as_ref().is_some_and(|t| up_for(t, now) >= STABLE_AFTER) => return None,
                Some(_) => format!("restarted {} time(s), up for less than {}s", cs.restart_count, STABLE_AFTER.as_secs()),
                None => format!("restarted {} time(s)", cs.restart_count),
            },
        };
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| state.and_then(|s| s.terminated.as_ref()))
            .and_then(|t| t.message.clone())
            .map(|m| m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string())
            .filter(|m| !m.is_empty());
        let detail = last.or_else(|| waiting.and_then(|(_, m)| m)).unwrap_or_default();
        Some(format!("pod {} {reason}: {detail}", pod.name_any()))
    })
}

fn up_for(started: &Time, now: &Time) -> std::time::Duration {
    std::time::Duration::try_from(now.0.duration_since(started.0)).unwrap_or_default()
}

/// When a restarted daemon will have been up for [`STABLE_AFTER`], if one is on its way there:
/// the time to look again, since no watch event marks that moment.
pub fn recheck_after(pods: &[Pod], now: &Time) -> Option<std::time::Duration> {
    pods.iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter(|cs| cs.restart_count > 0)
        .filter_map(|cs| cs.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| up_for(t, now))
        .filter(|up| *up < STABLE_AFTER)
        .map(|up| STABLE_AFTER - up + std::time::Duration::from_secs(1))
        .min()
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The new status. `lastTransitionTime` of a condition is kept when its status did not change.
pub fn compute(dd: &DindDaemon, observed: &Observed<'_>, now: Time) -> DindDaemonStatus {
    let namespace = dd.namespace().unwrap_or_default();
    let name = dd.name_any();
    let desired = dd.spec.replicas;
    let generation = dd.metadata.generation;
    let (service_host, replica_hosts) = docker_hosts(dd, &namespace);
    let volume = cache::volume_bytes(&dd.spec);

    let endpoints: Vec<DaemonEndpoint> = replica_hosts
        .into_iter()
        .map(|(pod_name, host)| {
            let pod = observed.pods.iter().find(|p| p.name_any() == pod_name);
            DaemonEndpoint {
                ready: pod.is_some_and(pod_ready) && observed.routed.contains(&pod_name),
                storage_driver: observed.drivers.iter().find(|(p, _)| *p == pod_name).map(|(_, d)| d.clone()),
                disk: observed
                    .disks
                    .iter()
                    .find(|(p, _)| *p == pod_name)
                    .map(|(_, d)| EndpointDisk { last_prune: last_prune(dd, observed, &pod_name), ..endpoint_disk(d, volume) }),
                name: pod_name,
                docker_host: host,
            }
        })
        .collect();
    let ready_replicas = i32::try_from(endpoints.iter().filter(|e| e.ready).count()).unwrap_or(i32::MAX);

    let mut drivers: Vec<&str> = endpoints.iter().filter_map(|e| e.storage_driver.as_deref()).collect();
    drivers.sort_unstable();
    drivers.dedup();
    let storage_driver = match drivers.as_slice() {
        [] => dd.spec.daemon.storage_driver.map(|d| d.as_str().to_string()),
        [one] => Some((*one).to_string()),
        _ => Some("mixed".to_string()),
    };

    let sts_status = observed.statefulset.and_then(|s| s.status.clone()).unwrap_or_default();
    let sts_generation = observed.statefulset.and_then(|s| s.metadata.generation);
    let rolled_out = observed.statefulset.is_some()
        && sts_status.observed_generation >= sts_generation
        && sts_status.updated_replicas.unwrap_or(0) >= desired
        && sts_status.replicas <= desired;

    let all_ready = desired > 0 && ready_replicas == desired;
    let ready = if all_ready {
        condition(READY, true, "DaemonsReady", format!("{ready_replicas}/{desired} daemons answer /_ping"), generation, &now)
    } else if desired == 0 {
        condition(READY, false, "ScaledToZero", "replicas is 0".into(), generation, &now)
    } else {
        let unrouted: Vec<String> =
            observed.pods.iter().filter(|p| pod_ready(p) && !observed.routed.contains(&p.name_any())).map(ResourceExt::name_any).collect();
        let detail =
            if unrouted.is_empty() { String::new() } else { format!(" ({} answer; not yet routed by the Service)", unrouted.join(", ")) };
        condition(READY, false, "DaemonsNotReady", format!("{ready_replicas}/{desired} daemons ready{detail}"), generation, &now)
    };
    let progressing = if !rolled_out {
        condition(PROGRESSING, true, "RollingOut", "the StatefulSet is rolling out the current spec".into(), generation, &now)
    } else if let Some(Growth::Waiting(message)) = &observed.growth {
        condition(PROGRESSING, true, "VolumeExpanding", message.clone(), generation, &now)
    } else if !all_ready && desired > 0 {
        condition(PROGRESSING, true, "Starting", format!("waiting for {} daemon(s)", desired - ready_replicas), generation, &now)
    } else {
        condition(PROGRESSING, false, "Complete", "the current spec is rolled out".into(), generation, &now)
    };
    let failures: Vec<String> = observed.pods.iter().filter_map(|p| pod_failure(p, &now)).collect();
    let degraded = if let Some((reason, error)) = &observed.apply_error {
        condition(DEGRADED, true, reason, format!("the spec cannot be applied: {error}"), generation, &now)
    } else if let Some(Growth::Refused(message)) = &observed.growth {
        condition(DEGRADED, true, "VolumeNotExpandable", message.clone(), generation, &now)
    } else if let Some(refusal) = &observed.pods_refused {
        condition(DEGRADED, true, "PodsRefused", refusal.clone(), generation, &now)
    } else if let Some((pod, claim)) = observed.intruders.first() {
        condition(
            DEGRADED,
            true,
            "VolumeInUse",
            format!("pod {pod} mounts {claim}, the volume of a daemon of {name}: dockerd needs it exclusively; delete that pod"),
            generation,
            &now,
        )
    } else if !failures.is_empty() {
        condition(DEGRADED, true, "DaemonFailing", failures.join("; "), generation, &now)
    } else if let Some(pressure) = disk_pressure(dd, &endpoints) {
        condition(DEGRADED, true, "DiskPressure", pressure, generation, &now)
    } else {
        condition(DEGRADED, false, "AsExpected", "no daemon is failing".into(), generation, &now)
    };

    let conditions = keep_transition_times(dd, [ready, progressing, degraded]);

    let disk = fullest(&endpoints);
    let docker_host = if desired == 1 { Some(service_host) } else { endpoints.first().map(|e| e.docker_host.clone()) };
    DindDaemonStatus {
        observed_generation: generation,
        ready_replicas,
        ready: Some(format!("{ready_replicas}/{desired}")),
        docker_host,
        endpoints,
        client_secret_name: dd.spec.tls.enabled.then(|| Names::of(&name).client_secret),
        storage_driver,
        disk,
        volumes: Vec::new(),
        conditions,
    }
}

/// A daemon's last prune: as this process saw it, else as status showed it (an operator that
/// restarted remembers none).
fn last_prune(dd: &DindDaemon, observed: &Observed<'_>, pod_name: &str) -> Option<LastPrune> {
    observed.prunes.iter().find(|(p, _)| p == pod_name).map(|(_, l)| l.clone()).or_else(|| {
        let before = dd.status.as_ref()?.endpoints.iter().find(|e| e.name == pod_name)?;
        before.disk.as_ref()?.last_prune.clone()
    })
}

fn endpoint_disk(usage: &DiskUsage, volume: Option<u64>) -> EndpointDisk {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    EndpointDisk {
        volume_bytes: volume.map(signed),
        used_bytes: signed(usage.used_bytes()),
        used_percent: volume.and_then(|v| cache::used_percent(usage, v)).map(|p| i32::try_from(p).unwrap_or(i32::MAX)),
        build_cache_bytes: signed(usage.build_cache_bytes),
        images: i32::try_from(usage.images).unwrap_or(i32::MAX),
        last_prune: None,
    }
}

fn bytes(v: i64) -> String {
    cache::human(u64::try_from(v).unwrap_or(0))
}

/// The Disk column: the fullest daemon, `37% of 20Gi` (or `1.2Gi` on an emptyDir).
fn fullest(endpoints: &[DaemonEndpoint]) -> Option<String> {
    let disks = endpoints.iter().filter_map(|e| e.disk.as_ref());
    let top = disks.max_by_key(|d| (d.used_percent, d.used_bytes))?;
    Some(match (top.used_percent, top.volume_bytes) {
        (Some(p), Some(v)) => format!("{p}% of {}", bytes(v)),
        _ => bytes(top.used_bytes),
    })
}

/// Daemons past `cache.highWaterPercent`, named with what fills them.
fn disk_pressure(dd: &DindDaemon, endpoints: &[DaemonEndpoint]) -> Option<String> {
    let mark = dd.spec.cache.high_water_percent;
    let full: Vec<String> = endpoints
        .iter()
        .filter_map(|e| {
            let d = e.disk.as_ref()?;
            let p = d.used_percent.filter(|p| *p >= mark)?;
            Some(format!(
                "{} uses {p}% of {} (build cache {}, {} images)",
                e.name,
                bytes(d.volume_bytes.unwrap_or_default()),
                bytes(d.build_cache_bytes),
                d.images
            ))
        })
        .collect();
    (!full.is_empty()).then(|| {
        format!(
            "{}; past cache.highWaterPercent {mark}%: builds will fail with \"no space left on device\" (lower cache.buildCacheKeep, remove images, or give the daemon a larger volume)",
            full.join("; ")
        )
    })
}

/// Conditions whose status did not change keep the time of their last transition.
fn keep_transition_times(dd: &DindDaemon, conditions: [Condition; 3]) -> Vec<Condition> {
    let previous = dd.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    conditions
        .into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// The status of a `Sidecar`-mode DindDaemon: a template, Ready once accepted (and its pool's
/// claims made); its daemons start and stop with the pods that ask for them. `volumes`: the
/// pool, if it has one (`volume_pool::status`); `taken`: pool claim names held by objects that
/// are not ours (`Degraded/NameConflict`: the pool is that much smaller).
pub fn sidecar(dd: &DindDaemon, volumes: Vec<crate::crd::PoolVolume>, taken: &[String], now: Time) -> DindDaemonStatus {
    let generation = dd.metadata.generation;
    let name = dd.name_any();
    let ready = condition(
        READY,
        true,
        "SidecarTemplate",
        format!(
            "pods labelled {}={name} in namespaces labelled {}={} get a daemon of their own",
            crate::names::SIDECAR_LABEL,
            crate::names::INJECTION_NAMESPACE_LABEL.0,
            crate::names::INJECTION_NAMESPACE_LABEL.1
        ),
        generation,
        &now,
    );
    let progressing =
        condition(PROGRESSING, false, "Complete", "nothing to roll out: sidecars start with their pods".into(), generation, &now);
    let degraded = if taken.is_empty() {
        condition(DEGRADED, false, "AsExpected", "no daemon runs on its own".into(), generation, &now)
    } else {
        let message = format!(
            "claims of these names exist and are not this pool's, so the pool is short of them: {}; delete them, or label them {}={name} to hand them over",
            taken.join(", "),
            crate::names::VOLUME_POOL_LABEL
        );
        condition(DEGRADED, true, "NameConflict", message, generation, &now)
    };
    DindDaemonStatus {
        observed_generation: generation,
        ready_replicas: 0,
        ready: Some("sidecar".into()),
        docker_host: Some(crate::build::sidecar_docker_host(dd)),
        endpoints: Vec::new(),
        client_secret_name: None,
        storage_driver: dd.spec.daemon.storage_driver.map(|d| d.as_str().to_string()),
        disk: None,
        volumes,
        conditions: keep_transition_times(dd, [ready, progressing, degraded]),
    }
}

/// How recent a `FailedCreate` event must be to explain missing pods (the StatefulSet
/// controller retries with backoff and records each failure).
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The PSA label a namespace needs for daemon pods (privileged, or every capability).
pub const PSA_ENFORCE_PRIVILEGED: &str = "pod-security.kubernetes.io/enforce=privileged";

/// A `FailedCreate` of the StatefulSet controller: what the operator keeps of its event (the
/// watch of such events feeds them; see `controller::run`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The StatefulSet refused (the DindDaemon's name) and its uid, when the event names it.
    pub statefulset: String,
    pub statefulset_uid: Option<String>,
    /// When the refusal was last seen (events count repeats: the latest of them).
    pub seen: k8s_openapi::jiff::Timestamp,
    pub message: String,
}

impl Refusal {
    /// The refusal an event records, if it is a StatefulSet's `FailedCreate` with a time.
    pub fn of_event(e: &k8s_openapi::api::core::v1::Event) -> Option<Self> {
        let about = &e.involved_object;
        if about.kind.as_deref() != Some("StatefulSet") || e.reason.as_deref() != Some("FailedCreate") {
            return None;
        }
        let seen = [
            e.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0),
            e.last_timestamp.as_ref().map(|t| t.0),
            e.event_time.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max()?;
        Some(Self {
            statefulset: about.name.clone()?,
            statefulset_uid: about.uid.clone(),
            seen,
            message: e.message.clone().unwrap_or_default(),
        })
    }
}

/// Why the StatefulSet controller cannot create daemon pods, from its `FailedCreate` events:
/// the newest seen within [`REFUSAL_WINDOW`] of `now` and after `newest_pod` was made (an
/// older one was overcome since), with the fix when it is Pod Security Admission's refusal.
pub fn pods_refused(
    refusals: &[Refusal],
    now: k8s_openapi::jiff::Timestamp,
    newest_pod: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    let window = k8s_openapi::jiff::SignedDuration::try_from(REFUSAL_WINDOW).ok()?;
    let newest =
        refusals.iter().filter(|r| now.duration_since(r.seen) <= window && newest_pod.is_none_or(|p| r.seen > p)).max_by_key(|r| r.seen)?;
    let message = &newest.message;
    let advice = if message.contains("PodSecurity") {
        format!("; daemon pods run privileged: label the namespace {PSA_ENFORCE_PRIVILEGED}")
    } else {
        String::new()
    };
    Some(format!("the StatefulSet cannot create daemon pods: {message}{advice}"))
}

/// The condition of `type_`, if present.
pub fn find<'a>(status: Option<&'a DindDaemonStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DindDaemonSpec;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    #[test]
    fn a_sidecar_template_is_ready_with_the_socket_and_no_endpoints() {
        let spec: DindDaemonSpec = serde_json::from_value(json!({"mode": "Sidecar"})).unwrap();
        let mut d = DindDaemon::new("job", spec);
        d.metadata.generation = Some(1);
        let s = sidecar(&d, Vec::new(), &[], Time(Timestamp::now()));
        assert_eq!(s.ready.as_deref(), Some("sidecar"));
        assert_eq!(s.docker_host.as_deref(), Some("unix:///dind/sock/docker.sock"));
        assert!(s.endpoints.is_empty() && s.client_secret_name.is_none());
        let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "SidecarTemplate"));
        assert!(ready.message.contains("dind.dev/sidecar=job"));
        let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(degraded.status, "False");
        // A pool claim's name held by someone else's claim: said, by name.
        let s = sidecar(&d, Vec::new(), &["job-cache-1".into()], Time(Timestamp::now()));
        let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "NameConflict"));
        assert!(degraded.message.contains("job-cache-1") && degraded.message.contains("dind.dev/volume-pool=job"), "{}", degraded.message);
    }

    #[test]
    fn missing_pods_are_explained_by_the_latest_recent_refusal_with_the_psa_fix() {
        let event = |message: &str, minutes_ago: i64| -> Refusal {
            let at = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_mins(minutes_ago);
            let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({"metadata": {"name": "e"},
                "involvedObject": {"kind": "StatefulSet", "name": "ci", "uid": "u1"}, "reason": "FailedCreate",
                "message": message, "count": 3, "firstTimestamp": (at - k8s_openapi::jiff::SignedDuration::from_mins(5)).to_string(),
                "lastTimestamp": at.to_string()}))
            .unwrap();
            Refusal::of_event(&event).unwrap()
        };
        let psa = r#"create Pod ci-0 in StatefulSet ci failed error: pods "ci-0" is forbidden: violates PodSecurity "baseline:latest": privileged"#;
        let quota = "create Pod ci-0 in StatefulSet ci failed error: exceeded quota: pods";
        let why = pods_refused(&[event(quota, 3), event(psa, 1)], Timestamp::now(), None).unwrap();
        assert!(
            why.contains("violates PodSecurity") && why.ends_with("label the namespace pod-security.kubernetes.io/enforce=privileged"),
            "{why}"
        );
        let why = pods_refused(&[event(quota, 1), event(psa, 3)], Timestamp::now(), None).unwrap();
        assert!(why.contains("exceeded quota") && !why.contains("pod-security"), "the newest wins: {why}");
        assert_eq!(pods_refused(&[event(psa, 11)], Timestamp::now(), None), None, "an old refusal explains nothing now");
        assert_eq!(pods_refused(&[], Timestamp::now(), None), None);
        // A pod made after the refusal: overcome (a rollout's missing pod is no refusal).
        let pod_made = Some(Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(30));
        assert_eq!(pods_refused(&[event(psa, 1)], Timestamp::now(), pod_made), None);
        // The event tells which StatefulSet, and only a FailedCreate of a StatefulSet counts.
        let kept = event(psa, 1);
        assert_eq!((kept.statefulset.as_str(), kept.statefulset_uid.as_deref()), ("ci", Some("u1")));
        let other: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({"metadata": {"name": "e"},
            "involvedObject": {"kind": "ReplicaSet", "name": "ci"}, "reason": "FailedCreate", "lastTimestamp": Timestamp::now().to_string()}))
        .unwrap();
        assert_eq!(Refusal::of_event(&other), None);
        let st = compute(&dd(1), &Observed { pods_refused: Some(why), routed: all_routed(), ..Default::default() }, at(1));
        let c = get(&st, DEGRADED);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "PodsRefused"));
    }

    fn dd(replicas: i32) -> DindDaemon {
        let spec: DindDaemonSpec = serde_json::from_value(json!({"replicas": replicas})).unwrap();
        let mut d = DindDaemon::new("ci", spec);
        d.metadata.namespace = Some("b".into());
        d.metadata.generation = Some(2);
        d
    }

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn sts(replicas: i32, updated: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "ci", "generation": 1},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": updated}
        }))
        .unwrap()
    }

    /// Every daemon pod of these tests is routed by the Service, unless a test says otherwise.
    fn all_routed() -> Vec<String> {
        (0..4).map(|i| format!("ci-{i}")).collect()
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn get<'a>(s: &'a DindDaemonStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn one_ready_daemon_is_ready_with_the_service_address() {
        let d = dd(1);
        let pods = [pod("ci-0", true)];
        let s = sts(1, 1);
        let st = compute(
            &d,
            &Observed {
                statefulset: Some(&s),
                pods: &pods,
                drivers: vec![("ci-0".into(), "overlay2".into())],
                routed: vec!["ci-0".into()],
                ..Default::default()
            },
            at(100),
        );
        assert_eq!(st.ready.as_deref(), Some("1/1"));
        assert_eq!(st.docker_host.as_deref(), Some("tcp://ci.b.svc:2376"));
        assert_eq!(st.client_secret_name.as_deref(), Some("ci-client"));
        assert_eq!(st.storage_driver.as_deref(), Some("overlay2"));
        assert_eq!(get(&st, READY).status, "True");
        assert_eq!(get(&st, PROGRESSING).status, "False");
        assert_eq!(get(&st, DEGRADED).status, "False");
        assert_eq!(st.observed_generation, Some(2));
    }

    #[test]
    fn disk_use_shows_per_daemon_in_the_column_and_past_the_high_water_mark_degrades() {
        let d = dd(2); // storage.size defaults to 20Gi, cache.highWaterPercent to 85
        let pods = [pod("ci-0", true), pod("ci-1", true)];
        let s = sts(2, 2);
        let usage = |gib: u64| DiskUsage { images_bytes: gib << 30, images: 3, build_cache_bytes: 1 << 30, ..Default::default() };
        let observe = |a: u64, b: u64| Observed {
            statefulset: Some(&s),
            pods: &pods,
            routed: all_routed(),
            disks: vec![("ci-0".into(), usage(a)), ("ci-1".into(), usage(b))],
            ..Default::default()
        };
        let st = compute(&d, &observe(3, 7), at(1));
        assert_eq!(st.disk.as_deref(), Some("40% of 20Gi"), "the fullest: 7Gi + 1Gi of 20Gi");
        let e = st.endpoints[0].disk.clone().unwrap();
        assert_eq!(
            (e.used_bytes, e.build_cache_bytes, e.images, e.used_percent, e.volume_bytes),
            (4 << 30, 1 << 30, 3, Some(20), Some(20 << 30))
        );
        assert_eq!(get(&st, DEGRADED).status, "False");
        let st = compute(&d, &observe(3, 17), at(1));
        let degraded = get(&st, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "DiskPressure"));
        assert!(degraded.message.contains("ci-1 uses 90% of 20Gi (build cache 1Gi, 3 images)"), "{}", degraded.message);
        assert!(!degraded.message.contains("ci-0"), "{}", degraded.message);
    }

    #[test]
    fn the_last_prune_shows_per_daemon_and_survives_an_operator_restart() {
        let mut d = dd(2);
        let pods = [pod("ci-0", true), pod("ci-1", true)];
        let s = sts(2, 2);
        let prune =
            LastPrune { time: "2026-12-01T10:00:00Z".into(), freed_bytes: 5 << 20, reason: "Idle".into(), removed: "1 image".into() };
        let usage = DiskUsage { images_bytes: 1 << 30, images: 1, ..Default::default() };
        let disks = vec![("ci-0".into(), usage.clone()), ("ci-1".into(), usage)];
        let seen = Observed {
            statefulset: Some(&s),
            pods: &pods,
            routed: all_routed(),
            disks: disks.clone(),
            prunes: vec![("ci-1".into(), prune.clone())],
            ..Default::default()
        };
        let st = compute(&d, &seen, at(1));
        assert_eq!(st.endpoints[0].disk.as_ref().unwrap().last_prune, None);
        assert_eq!(st.endpoints[1].disk.as_ref().unwrap().last_prune.as_ref(), Some(&prune));
        // A restarted operator has seen no prune: status keeps the one it showed.
        d.status = Some(st);
        let restarted = Observed { statefulset: Some(&s), pods: &pods, routed: all_routed(), disks, ..Default::default() };
        let st = compute(&d, &restarted, at(2));
        assert_eq!(st.endpoints[1].disk.as_ref().unwrap().last_prune.as_ref(), Some(&prune));
    }

    #[test]
    fn volumes_that_cannot_grow_degrade_and_growing_ones_progress() {
        let d = dd(1);
        let pods = [pod("ci-0", true)];
        let s = sts(1, 1);
        let seen = |growth| Observed { statefulset: Some(&s), pods: &pods, routed: vec!["ci-0".into()], growth, ..Default::default() };
        let st = compute(&d, &seen(Some(Growth::Refused("docker-ci-0: forbidden".into()))), at(1));
        let degraded = get(&st, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "VolumeNotExpandable"));
        assert!(degraded.message.contains("docker-ci-0: forbidden"));
        assert_eq!(get(&st, READY).status, "True", "the daemon keeps serving on its old volume");
        let st = compute(&d, &seen(Some(Growth::Waiting("docker-ci-0 has 1Gi of 2Gi".into()))), at(1));
        let progressing = get(&st, PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "VolumeExpanding"));
        assert_eq!(get(&st, DEGRADED).status, "False");
        assert_eq!(get(&compute(&d, &seen(None), at(1)), PROGRESSING).status, "False");
    }

    #[test]
    fn several_daemons_point_at_one_daemon_not_a_balancer() {
        let d = dd(2);
        let pods = [pod("ci-0", true), pod("ci-1", false)];
        let s = sts(2, 2);
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, routed: all_routed(), ..Default::default() }, at(1));
        assert_eq!(st.docker_host.as_deref(), Some("tcp://ci-0.ci-daemons.b.svc:2376"));
        assert_eq!(st.endpoints.len(), 2);
        assert!(st.endpoints[0].ready && !st.endpoints[1].ready);
        assert_eq!(st.ready.as_deref(), Some("1/2"));
        assert_eq!(get(&st, READY).reason, "DaemonsNotReady");
        assert_eq!(get(&st, PROGRESSING).reason, "Starting");
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_moves_when_it_flips() {
        let mut d = dd(1);
        let s = sts(1, 1);
        let not_ready = [pod("ci-0", false)];
        let first = compute(&d, &Observed { statefulset: Some(&s), pods: &not_ready, routed: all_routed(), ..Default::default() }, at(10));
        d.status = Some(first);
        let second = compute(&d, &Observed { statefulset: Some(&s), pods: &not_ready, routed: all_routed(), ..Default::default() }, at(20));
        assert_eq!(get(&second, READY).last_transition_time, at(10));
        d.status = Some(second);
        let ready = [pod("ci-0", true)];
        let third = compute(&d, &Observed { statefulset: Some(&s), pods: &ready, routed: all_routed(), ..Default::default() }, at(30));
        assert_eq!(get(&third, READY).last_transition_time, at(30));
        assert_eq!(get(&third, DEGRADED).last_transition_time, at(10), "Degraded stayed False");
    }

    #[test]
    fn a_foreign_pod_on_our_volume_is_degraded_and_named() {
        let d = dd(1);
        let pods = [pod("ci-0", true)];
        let s = sts(1, 1);
        let st = compute(
            &d,
            &Observed {
                statefulset: Some(&s),
                pods: &pods,
                intruders: vec![("thief".into(), "docker-ci-0".into())],
                routed: all_routed(),
                ..Default::default()
            },
            at(1),
        );
        let c = get(&st, DEGRADED);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "VolumeInUse"));
        assert!(c.message.contains("thief") && c.message.contains("docker-ci-0"));
        assert_eq!(get(&st, READY).status, "True", "the first daemon keeps serving");
    }

    #[test]
    fn a_crash_loop_is_degraded_with_dind_inits_last_words() {
        let d = dd(1);
        let crashing: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ci-0"},
            "status": {"containerStatuses": [{
                "name": "dockerd", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "starting\n/var/lib/docker/.dind-init.lock is in use by another daemon (host x pid 1)\n"}}
            }]}
        }))
        .unwrap();
        let s = sts(1, 1);
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &[crashing], routed: all_routed(), ..Default::default() }, at(1));
        let c = get(&st, DEGRADED);
        assert_eq!(c.reason, "DaemonFailing");
        assert!(c.message.contains("in use by another daemon"), "{}", c.message);
    }

    #[test]
    fn a_stale_statefulset_is_progressing() {
        let d = dd(1);
        let s: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "ci", "generation": 3},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 0}
        }))
        .unwrap();
        let st =
            compute(&d, &Observed { statefulset: Some(&s), pods: &[pod("ci-0", true)], routed: all_routed(), ..Default::default() }, at(1));
        assert_eq!(get(&st, PROGRESSING).reason, "RollingOut");
    }

    fn restarted(state: serde_json::Value, restarts: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "ci-0"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{
                "name": "dockerd", "image": "x", "imageID": "", "ready": true, "restartCount": restarts,
                "state": state,
                "lastState": {"terminated": {"exitCode": 2, "message": "dind-init: --shutdown-timeout: given twice\n"}}
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_daemon_that_keeps_restarting_is_degraded_until_it_stays_up() {
        // Measured: 4 restarts, and Degraded=False "no daemon is failing" during the Running
        // spells of the crash loop, flipping on every cycle.
        let d = dd(1);
        let s = sts(1, 1);
        let started = |secs: i64| json!({"running": {"startedAt": at(secs).0.to_string()}});
        for (state, now) in
            [(started(100), 110), (json!({"terminated": {"exitCode": 2}}), 110), (json!({"waiting": {"reason": "CrashLoopBackOff"}}), 110)]
        {
            let pods = [restarted(state.clone(), 4)];
            let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, routed: all_routed(), ..Default::default() }, at(now));
            let c = get(&st, DEGRADED);
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "DaemonFailing"), "{state}");
            assert!(c.message.contains("given twice"), "dind-init's last words: {}", c.message);
        }
        // Up for 10 s: look again when it has been up for STABLE_AFTER.
        let pods = [restarted(started(100), 4)];
        let again = recheck_after(&pods, &at(110)).unwrap();
        assert_eq!(again.as_secs(), STABLE_AFTER.as_secs() - 10 + 1);
        // Up long enough: recovered, and nothing left to re-check.
        let later = at(100 + i64::try_from(STABLE_AFTER.as_secs()).unwrap());
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, routed: all_routed(), ..Default::default() }, later.clone());
        assert_eq!(get(&st, DEGRADED).status, "False");
        assert_eq!(recheck_after(&pods, &later), None);
        // Never restarted: not failing.
        let fresh = [restarted(started(100), 0)];
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &fresh, routed: all_routed(), ..Default::default() }, at(101));
        assert_eq!(get(&st, DEGRADED).status, "False");
    }

    #[test]
    fn a_refused_apply_is_degraded_with_the_apiservers_words() {
        let d = dd(1);
        let s = sts(1, 1);
        let error = "applying StatefulSet ci: ApiError: StatefulSet.apps \"ci\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than ...".to_string();
        let st = compute(
            &d,
            &Observed {
                statefulset: Some(&s),
                pods: &[pod("ci-0", true)],
                apply_error: Some(("ApplyFailed", error)),
                routed: all_routed(),
                ..Default::default()
            },
            at(1),
        );
        let c = get(&st, DEGRADED);
        assert_eq!((c.status.as_str(), c.reason.as_str(), c.observed_generation), ("True", "ApplyFailed", Some(2)));
        assert!(c.message.contains("StatefulSet ci") && c.message.contains("Forbidden"), "{}", c.message);
        assert_eq!(get(&st, READY).status, "True", "the running daemons keep serving");
    }

    #[test]
    fn a_daemon_is_ready_only_once_its_service_routes_to_it() {
        // Measured before: the first connection right after Ready was refused; the Service
        // routed about a second later.
        let d = dd(1);
        let s = sts(1, 1);
        let pods = [pod("ci-0", true)];
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, ..Default::default() }, at(1));
        let c = get(&st, READY);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "DaemonsNotReady"));
        assert!(c.message.contains("ci-0 answer; not yet routed"), "{}", c.message);
        assert!(!st.endpoints[0].ready);
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, routed: vec!["ci-0".into()], ..Default::default() }, at(2));
        assert_eq!(get(&st, READY).status, "True");
    }
}
