use super::*;
use crate::crd::DindDaemonSpec;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

#[test]
fn a_sidecar_template_is_ready_with_the_socket_and_no_endpoints() {
    let spec: DindDaemonSpec = serde_json::from_value(json!({"mode": "Sidecar"})).unwrap();
    let mut d = DindDaemon::new("job", spec);
    d.metadata.generation = Some(1);
    let s = sidecar(&d, Vec::new(), &[], &[], Time(Timestamp::now()));
    assert_eq!(s.ready.as_deref(), Some("sidecar"));
    assert_eq!(s.docker_host.as_deref(), Some("unix:///dind/sock/docker.sock"));
    assert!(s.endpoints.is_empty() && s.client_secret_name.is_none());
    let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "SidecarTemplate"));
    assert!(ready.message.contains("dind.dev/sidecar=job"));
    let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!(degraded.status, "False");
    // A pool claim's name held by someone else's claim: said, by name.
    let s = sidecar(&d, Vec::new(), &["job-cache-1".into()], &[], Time(Timestamp::now()));
    let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "NameConflict"));
    assert!(degraded.message.contains("job-cache-1") && degraded.message.contains("dind.dev/volume-pool=job"), "{}", degraded.message);
    // Seen before: a lease held by a pod stuck Terminating (a lost node) never ended, silently.
    let stuck = [("job-cache-0".to_string(), "ci/lost".to_string(), 30)];
    let s = sidecar(&d, Vec::new(), &[], &stuck, Time(Timestamp::now()));
    let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "LeaseStuck"));
    assert!(degraded.message.contains("job-cache-0 is held by pod ci/lost, terminating for 30 min"), "{}", degraded.message);
    assert!(degraded.message.contains("--force --grace-period=0"), "{}", degraded.message);
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
    let psa =
        r#"create Pod ci-0 in StatefulSet ci failed error: pods "ci-0" is forbidden: violates PodSecurity "baseline:latest": privileged"#;
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
    let st = compute(&dd(1), &Observed { pods_refused: Some(why), ..Default::default() }, at(1));
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

/// Daemon pods the client Service routes to (as most of these tests have them).
fn routed(pods: &[Pod]) -> Vec<DaemonPod> {
    pods.iter().map(|p| DaemonPod { routed: true, ..DaemonPod::of(p.clone()) }).collect()
}

/// Daemon pods the client Service does not route to yet.
fn unrouted(pods: &[Pod]) -> Vec<DaemonPod> {
    pods.iter().cloned().map(DaemonPod::of).collect()
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
            daemons: &[DaemonPod { driver: Some("overlay2".into()), ..routed(&pods).remove(0) }],

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
    assert_eq!(st.replicas, 1, "daemon pods that exist, for the scale subresource");
    assert_eq!(st.selector.as_deref(), Some("app.kubernetes.io/name=dind,dind.dev/daemon=ci"));
}

#[test]
fn disk_use_shows_per_daemon_in_the_column_and_past_the_high_water_mark_degrades() {
    let d = dd(2); // storage.size defaults to 20Gi, cache.highWaterPercent to 85
    let pods = [pod("ci-0", true), pod("ci-1", true)];
    let s = sts(2, 2);
    let usage = |gib: u64| DiskUsage { images_bytes: gib << 30, images: 3, build_cache_bytes: 1 << 30, ..Default::default() };
    let with_disks = |a: u64, b: u64| -> Vec<DaemonPod> {
        routed(&pods).into_iter().zip([a, b]).map(|(d, gib)| DaemonPod { disk: Some(usage(gib)), ..d }).collect()
    };
    let (low, high) = (with_disks(3, 7), with_disks(3, 17));
    let observe = |daemons| Observed { statefulset: Some(&s), daemons, ..Default::default() };
    let st = compute(&d, &observe(&low), at(1));
    assert_eq!(st.disk.as_deref(), Some("40% of 20Gi"), "the fullest: 7Gi + 1Gi of 20Gi");
    let e = st.endpoints[0].disk.clone().unwrap();
    assert_eq!(
        (e.used_bytes, e.build_cache_bytes, e.images, e.used_percent, e.volume_bytes),
        (4 << 30, 1 << 30, 3, Some(20), Some(20 << 30))
    );
    assert_eq!(get(&st, DEGRADED).status, "False");
    let st = compute(&d, &observe(&high), at(1));
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
    let prune = LastPrune { time: "2026-12-01T10:00:00Z".into(), freed_bytes: 5 << 20, reason: "Idle".into(), removed: "1 image".into() };
    let usage = DiskUsage { images_bytes: 1 << 30, images: 1, ..Default::default() };
    let restarted: Vec<DaemonPod> = routed(&pods).into_iter().map(|d| DaemonPod { disk: Some(usage.clone()), ..d }).collect();
    let mut daemons = restarted.clone();
    daemons[1].last_prune = Some(prune.clone());
    let seen = Observed { statefulset: Some(&s), daemons: &daemons, ..Default::default() };
    let st = compute(&d, &seen, at(1));
    assert_eq!(st.endpoints[0].disk.as_ref().unwrap().last_prune, None);
    assert_eq!(st.endpoints[1].disk.as_ref().unwrap().last_prune.as_ref(), Some(&prune));
    // A restarted operator has seen no prune: status keeps the one it showed.
    d.status = Some(st);
    let restarted = Observed { statefulset: Some(&s), daemons: &restarted, ..Default::default() };
    let st = compute(&d, &restarted, at(2));
    assert_eq!(st.endpoints[1].disk.as_ref().unwrap().last_prune.as_ref(), Some(&prune));
}

#[test]
fn volumes_that_cannot_grow_degrade_and_growing_ones_progress() {
    let d = dd(1);
    let pods = [pod("ci-0", true)];
    let s = sts(1, 1);
    let daemons = routed(&pods);
    let seen = |growth| Observed { statefulset: Some(&s), daemons: &daemons, growth, ..Default::default() };
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
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&pods), ..Default::default() }, at(1));
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
    let first = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&not_ready), ..Default::default() }, at(10));
    d.status = Some(first);
    let second = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&not_ready), ..Default::default() }, at(20));
    assert_eq!(get(&second, READY).last_transition_time, at(10));
    d.status = Some(second);
    let ready = [pod("ci-0", true)];
    let third = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&ready), ..Default::default() }, at(30));
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
            daemons: &routed(&pods),
            intruders: vec![("thief".into(), "docker-ci-0".into())],

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
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&[crashing]), ..Default::default() }, at(1));
    let c = get(&st, DEGRADED);
    assert_eq!(c.reason, "DaemonFailing");
    assert!(c.message.contains("in use by another daemon"), "{}", c.message);
}

#[test]
fn an_image_that_cannot_be_pulled_is_degraded_naming_it_in_the_daemon_or_its_install_container() {
    let d = dd(1);
    let s = sts(1, 1);
    let message = "Back-off pulling image \"reg.example/dind-init:9\": not found";
    for (field, name) in [("initContainerStatuses", "dind-install"), ("containerStatuses", "dockerd")] {
        let mut pod = json!({"metadata": {"name": "ci-0"}, "status": {}});
        pod["status"][field] = json!([{"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}}}]);
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&[pod]), ..Default::default() }, at(1));
        let c = get(&st, DEGRADED);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "DaemonFailing"), "{field}");
        assert!(c.message.contains("ImagePullBackOff") && c.message.contains("reg.example/dind-init:9"), "{field}: {}", c.message);
    }
}

#[test]
fn a_stale_statefulset_is_progressing() {
    let d = dd(1);
    let s: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "ci", "generation": 3},
        "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 0}
    }))
    .unwrap();
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&[pod("ci-0", true)]), ..Default::default() }, at(1));
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
        let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&pods), ..Default::default() }, at(now));
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
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&pods), ..Default::default() }, later.clone());
    assert_eq!(get(&st, DEGRADED).status, "False");
    assert_eq!(recheck_after(&pods, &later), None);
    // Never restarted: not failing.
    let fresh = [restarted(started(100), 0)];
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&fresh), ..Default::default() }, at(101));
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
            daemons: &routed(&[pod("ci-0", true)]),
            apply_error: Some(("ApplyFailed", error)),

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
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &unrouted(&pods), ..Default::default() }, at(1));
    let c = get(&st, READY);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "DaemonsNotReady"));
    assert!(c.message.contains("ci-0 answer; not yet routed"), "{}", c.message);
    assert!(!st.endpoints[0].ready);
    let st = compute(&d, &Observed { statefulset: Some(&s), daemons: &routed(&pods), ..Default::default() }, at(2));
    assert_eq!(get(&st, READY).status, "True");
}
