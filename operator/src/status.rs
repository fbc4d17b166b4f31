//! Status of a DindDaemon, computed from what the cluster shows: pure, so it is unit-tested.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{DaemonEndpoint, DindDaemon, DindDaemonStatus};
use crate::resources::{Names, docker_hosts};

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
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a daemon pod is failing, if it is: a crash loop with dind-init's last words, or an
/// image that cannot be pulled.
fn pod_failure(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let waiting = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        if !matches!(
            reason,
            "CrashLoopBackOff" | "ImagePullBackOff" | "ErrImagePull" | "CreateContainerConfigError" | "CreateContainerError"
        ) {
            return None;
        }
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .map(|m| m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string())
            .filter(|m| !m.is_empty());
        Some(match last {
            Some(msg) => format!("pod {} {}: {}", pod.name_any(), reason, msg),
            None => format!("pod {} {}: {}", pod.name_any(), reason, waiting.message.clone().unwrap_or_default()),
        })
    })
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

    let endpoints: Vec<DaemonEndpoint> = replica_hosts
        .into_iter()
        .map(|(pod_name, host)| {
            let pod = observed.pods.iter().find(|p| p.name_any() == pod_name);
            DaemonEndpoint {
                ready: pod.is_some_and(pod_ready),
                storage_driver: observed.drivers.iter().find(|(p, _)| *p == pod_name).map(|(_, d)| d.clone()),
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
        condition(READY, false, "DaemonsNotReady", format!("{ready_replicas}/{desired} daemons ready"), generation, &now)
    };
    let progressing = if !rolled_out {
        condition(PROGRESSING, true, "RollingOut", "the StatefulSet is rolling out the current spec".into(), generation, &now)
    } else if !all_ready && desired > 0 {
        condition(PROGRESSING, true, "Starting", format!("waiting for {} daemon(s)", desired - ready_replicas), generation, &now)
    } else {
        condition(PROGRESSING, false, "Complete", "the current spec is rolled out".into(), generation, &now)
    };
    let failures: Vec<String> = observed.pods.iter().filter_map(pod_failure).collect();
    let degraded = if let Some((pod, claim)) = observed.intruders.first() {
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
    } else {
        condition(DEGRADED, false, "AsExpected", "no daemon is failing".into(), generation, &now)
    };

    let previous = dd.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = [ready, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect();

    let docker_host = if desired == 1 { Some(service_host) } else { endpoints.first().map(|e| e.docker_host.clone()) };
    DindDaemonStatus {
        observed_generation: generation,
        ready_replicas,
        ready: Some(format!("{ready_replicas}/{desired}")),
        docker_host,
        endpoints,
        client_secret_name: dd.spec.tls.enabled.then(|| Names::of(&name).client_secret),
        storage_driver,
        conditions,
    }
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
            &Observed { statefulset: Some(&s), pods: &pods, drivers: vec![("ci-0".into(), "overlay2".into())], ..Default::default() },
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
    fn several_daemons_point_at_one_daemon_not_a_balancer() {
        let d = dd(2);
        let pods = [pod("ci-0", true), pod("ci-1", false)];
        let s = sts(2, 2);
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &pods, ..Default::default() }, at(1));
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
        let first = compute(&d, &Observed { statefulset: Some(&s), pods: &not_ready, ..Default::default() }, at(10));
        d.status = Some(first);
        let second = compute(&d, &Observed { statefulset: Some(&s), pods: &not_ready, ..Default::default() }, at(20));
        assert_eq!(get(&second, READY).last_transition_time, at(10));
        d.status = Some(second);
        let ready = [pod("ci-0", true)];
        let third = compute(&d, &Observed { statefulset: Some(&s), pods: &ready, ..Default::default() }, at(30));
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
            &Observed { statefulset: Some(&s), pods: &pods, intruders: vec![("thief".into(), "docker-ci-0".into())], ..Default::default() },
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
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &[crashing], ..Default::default() }, at(1));
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
        let st = compute(&d, &Observed { statefulset: Some(&s), pods: &[pod("ci-0", true)], ..Default::default() }, at(1));
        assert_eq!(get(&st, PROGRESSING).reason, "RollingOut");
    }
}
