//! Status of a DindDaemon, computed from what the cluster shows: pure, so it is unit-tested.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{DaemonEndpoint, DindDaemon, DindDaemonStatus, EndpointDisk, LastPrune};
use crate::disk::{self as docker_disk, DiskUsage};
use crate::model::names::Names;
use crate::objects::docker_hosts;

mod disk;
mod refusals;
#[cfg(test)]
mod tests;

use disk::{disk_pressure, endpoint_disk, fullest, last_prune};
pub use refusals::{PSA_ENFORCE_PRIVILEGED, REFUSAL_WINDOW, Refusal, pods_refused};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What the reconciler observed, the input of [`compute`].
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub statefulset: Option<&'a StatefulSet>,
    /// Our daemon pods, each with what was learnt of it.
    pub daemons: &'a [DaemonPod],
    /// Pods that are not ours but mount one of our volumes (`pod`, `claim`).
    pub intruders: Vec<(String, String)>,
    /// Why the last apply failed, if it did: the `Degraded` reason (`ApplyFailed`,
    /// `NameConflict`) and the refusal, named.
    pub apply_error: Option<(&'static str, String)>,
    /// Why the StatefulSet cannot create daemon pods (see [`pods_refused`]).
    pub pods_refused: Option<String>,
    /// A raised `storage.size` not yet in effect (see `controller::volumes`).
    pub growth: Option<Growth>,
}

/// One daemon pod as a reconcile saw it: the pod (slimmed), what its daemon answered, and
/// whether the client Service routes to it.
#[derive(Clone, Debug, Default)]
pub struct DaemonPod {
    pub pod: Pod,
    /// Its storage driver, as the daemon reported it.
    pub driver: Option<String>,
    /// Its disk usage, as the daemon reported it.
    pub disk: Option<DiskUsage>,
    /// Its last prune that this operator process saw (an older one stays in status).
    pub last_prune: Option<LastPrune>,
    /// The client Service routes to it (a ready endpoint of its EndpointSlices). A daemon is
    /// ready only once it answers *and* is routed: Ready means a client can connect.
    pub routed: bool,
}

impl DaemonPod {
    /// A pod nothing was learnt of yet.
    pub fn of(pod: Pod) -> Self {
        Self { pod, ..Default::default() }
    }

    pub fn name(&self) -> String {
        self.pod.name_any()
    }
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

/// Waiting reasons that no amount of waiting fixes: the image cannot be pulled, or the
/// container cannot be made.
const IMAGE_OR_CONFIG: &[&str] =
    &["ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"];

/// Why a daemon pod is failing, if it is: waiting in a crash loop or on an image, or
/// restarted less than [`STABLE_AFTER`] ago; with dind-init's last words where there are some.
fn pod_failure(pod: &Pod, now: &Time) -> Option<String> {
    let status = pod.status.as_ref()?;
    // An init container (dind-init's install) that cannot start: the daemon waits behind it.
    let init = status.init_container_statuses.iter().flatten().find_map(|cs| {
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref().filter(|r| IMAGE_OR_CONFIG.contains(r))?;
        Some(format!("pod {} init container {} {reason}: {}", pod.name_any(), cs.name, w.message.clone().unwrap_or_default()))
    });
    if init.is_some() {
        return init;
    }
    let statuses = status.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let state = cs.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref()).and_then(|w| Some((w.reason.as_deref()?, w.message.clone())));
        let reason = match waiting {
            Some((reason, _)) if reason == "CrashLoopBackOff" || IMAGE_OR_CONFIG.contains(&reason) => reason.to_string(),
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
pub fn recheck_after<'a>(pods: impl IntoIterator<Item = &'a Pod>, now: &Time) -> Option<std::time::Duration> {
    pods.into_iter()
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
    let volume = docker_disk::volume_bytes(&dd.spec);

    let endpoints: Vec<DaemonEndpoint> = replica_hosts
        .into_iter()
        .map(|(pod_name, host)| {
            let daemon = observed.daemons.iter().find(|d| d.name() == pod_name);
            DaemonEndpoint {
                ready: daemon.is_some_and(|d| pod_ready(&d.pod) && d.routed),
                storage_driver: daemon.and_then(|d| d.driver.clone()),
                disk: daemon.and_then(|d| {
                    Some(EndpointDisk { last_prune: last_prune(dd, d, &pod_name), ..endpoint_disk(d.disk.as_ref()?, volume) })
                }),
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
        let unrouted: Vec<String> = observed.daemons.iter().filter(|d| pod_ready(&d.pod) && !d.routed).map(DaemonPod::name).collect();
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
    let failures: Vec<String> = observed.daemons.iter().filter_map(|d| pod_failure(&d.pod, &now)).collect();
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
    let selector = Names::of(&name).selector().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    DindDaemonStatus {
        observed_generation: generation,
        ready_replicas,
        replicas: i32::try_from(observed.daemons.len()).unwrap_or(i32::MAX),
        selector: Some(selector),
        ready: Some(format!("{ready_replicas}/{desired}")),
        docker_host,
        endpoints,
        client_secret_name: crate::objects::certificates_wanted(dd).then(|| Names::of(&name).client_secret),
        storage_driver,
        disk,
        volumes: Vec::new(),
        conditions,
    }
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
/// are not ours (`Degraded/NameConflict`: the pool is that much smaller); `stuck`: leases whose
/// pod has been terminating too long, `(claim, pod, minutes)` (`Degraded/LeaseStuck`).
pub fn sidecar(
    dd: &DindDaemon,
    volumes: Vec<crate::crd::PoolVolume>,
    taken: &[String],
    stuck: &[(String, String, i64)],
    now: Time,
) -> DindDaemonStatus {
    let generation = dd.metadata.generation;
    let name = dd.name_any();
    let ready = condition(
        READY,
        true,
        "SidecarTemplate",
        format!(
            "pods labelled {}={name} in namespaces labelled {}={} get a daemon of their own",
            crate::model::names::SIDECAR_LABEL,
            crate::model::names::INJECTION_NAMESPACE_LABEL.0,
            crate::model::names::INJECTION_NAMESPACE_LABEL.1
        ),
        generation,
        &now,
    );
    let progressing =
        condition(PROGRESSING, false, "Complete", "nothing to roll out: sidecars start with their pods".into(), generation, &now);
    let degraded = if !taken.is_empty() {
        let message = format!(
            "claims of these names exist and are not this pool's, so the pool is short of them: {}; delete them, or label them {}={name} to hand them over",
            taken.join(", "),
            crate::model::names::VOLUME_POOL_LABEL
        );
        condition(DEGRADED, true, "NameConflict", message, generation, &now)
    } else if !stuck.is_empty() {
        let held: Vec<String> =
            stuck.iter().map(|(claim, pod, minutes)| format!("{claim} is held by pod {pod}, terminating for {minutes} min")).collect();
        let message = format!(
            "{}: a lease ends only once its pod is gone, and a pod on a lost node never goes; if its node is lost, kubectl delete pod --force --grace-period=0 frees the volume",
            held.join("; ")
        );
        condition(DEGRADED, true, "LeaseStuck", message, generation, &now)
    } else {
        condition(DEGRADED, false, "AsExpected", "no daemon runs on its own".into(), generation, &now)
    };
    DindDaemonStatus {
        observed_generation: generation,
        ready_replicas: 0,
        replicas: 0,
        selector: None,
        ready: Some("sidecar".into()),
        docker_host: Some(crate::objects::sidecar_docker_host(dd)),
        endpoints: Vec::new(),
        client_secret_name: None,
        storage_driver: dd.spec.daemon.storage_driver.map(|d| d.as_str().to_string()),
        disk: None,
        volumes,
        conditions: keep_transition_times(dd, [ready, progressing, degraded]),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(status: Option<&'a DindDaemonStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}
