use super::*;
use serde_json::json;

#[test]
fn pods_map_to_the_daemons_they_concern() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "thief", "namespace": "b", "labels": {"dind.dev/daemon": "own"}},
        "spec": {"containers": [], "volumes": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "docker-my-ci-12"}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "docker-own-0"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "data-x-0"}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "docker-x-y"}}
        ]}
    }))
    .unwrap();
    let refs: Vec<String> = daemons_of_pod(pod).iter().map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name)).collect();
    assert_eq!(refs, ["b/own", "b/my-ci"]);
    // A claim of DindDaemon `ci-big` concerns `ci-big`, never `ci`.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "x", "namespace": "b"},
        "spec": {"containers": [], "volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "docker-ci-big-0"}}]}
    }))
    .unwrap();
    assert_eq!(daemons_of_pod(pod).iter().map(|r| r.name.clone()).collect::<Vec<_>>(), ["ci-big"]);
}

fn cm(name: &str, data: &str) -> k8s_openapi::api::core::v1::ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"v": data}})).unwrap()
}

#[test]
fn relevant_changes_forget_what_a_relist_no_longer_shows() {
    fn h(c: &k8s_openapi::api::core::v1::ConfigMap) -> u64 {
        hash_of(&c.data)
    }
    let mut f = RelevantChanges::default();
    let names = |v: Vec<k8s_openapi::api::core::v1::ConfigMap>| v.iter().map(ResourceExt::name_any).collect::<Vec<_>>();
    assert!(f.pass(watcher::Event::Init, h).is_empty());
    assert_eq!(names(f.pass(watcher::Event::InitApply(cm("a", "1")), h)), ["a"]);
    assert_eq!(names(f.pass(watcher::Event::InitApply(cm("b", "1")), h)), ["b"]);
    assert!(f.pass(watcher::Event::InitDone, h).is_empty());
    assert!(f.pass(watcher::Event::Apply(cm("a", "1")), h).is_empty(), "unchanged content wakes nothing");
    assert_eq!(names(f.pass(watcher::Event::Apply(cm("a", "2")), h)), ["a"]);
    // The watch broke; b was deleted meanwhile: the re-list does not show it.
    f.pass(watcher::Event::Init, h);
    assert!(f.pass(watcher::Event::InitApply(cm("a", "2")), h).is_empty());
    assert_eq!(f.len(), 2);
    assert!(f.pass(watcher::Event::InitDone, h).is_empty());
    assert_eq!(f.len(), 1, "the vanished object is forgotten");
}

#[test]
fn slim_statefulsets_keep_status_and_the_claim_template_sizes_only() {
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "ci", "annotations": {"a": "b"}},
        "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "dockerd", "image": "docker:dind"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "docker", "labels": {"x": "y"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}}]},
        "status": {"replicas": 2, "readyReplicas": 1, "currentRevision": "r1"}
    }))
    .unwrap();
    slim_statefulset(&mut sts);
    assert_eq!(crate::objects::claim_size(&sts), Some("1Gi"));
    let spec = sts.spec.as_ref().unwrap();
    assert!(spec.template.spec.is_none() && spec.replicas.is_none(), "the pod template is dropped");
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert!(claim.metadata.labels.is_none() && claim.spec.as_ref().unwrap().storage_class_name.is_none());
    let status = sts.status.as_ref().unwrap();
    assert_eq!((status.replicas, status.ready_replicas, status.current_revision.as_deref()), (2, Some(1), None));
}

#[test]
fn slim_pods_keep_what_status_reads() {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ci-0", "labels": {"dind.dev/daemon": "ci", "controller-revision-hash": "ci-5d8"}, "annotations": {"big": "x"}},
        "spec": {"containers": [{"name": "dockerd", "image": "docker:dind", "args": ["a", "b"]}],
                 "volumes": [{"name": "docker", "persistentVolumeClaim": {"claimName": "docker-ci-0"}},
                             {"name": "tmp", "emptyDir": {}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "1.2.3.4",
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                   "containerStatuses": [{"name": "dockerd", "image": "docker:dind", "imageID": "sha", "ready": true, "restartCount": 2,
                                          "state": {"running": {}}}],
                   "initContainerStatuses": [{"name": "dind-install", "image": "dind-init", "imageID": "", "ready": false,
                                              "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": "m"}}}]}
    }))
    .unwrap();
    slim_pod(&mut pod);
    assert!(pod.metadata.annotations.is_none());
    assert_eq!(pod.labels().len(), 1, "only the daemon label stays");
    let spec = pod.spec.as_ref().unwrap();
    assert!(spec.containers.is_empty());
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 1);
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
    assert!(status.host_ip.is_none());
    assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
    let cs = &status.container_statuses.as_ref().unwrap()[0];
    assert_eq!((cs.ready, cs.restart_count, cs.image.as_str()), (true, 2, ""));
    let init = &status.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(init.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(daemons_of_pod(pod).len(), 1, "slimming keeps what the trigger maps on");
}

#[test]
fn an_unrelated_pod_keeps_only_its_identity() {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "b", "uid": "u", "labels": {"app": "web"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-1"}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    slim_pod(&mut pod);
    assert!(pod.status.is_none());
    assert!(pod.spec.as_ref().unwrap().volumes.is_none(), "a claim not named like a daemon's volume is dropped");
    assert_eq!((pod.metadata.name.as_deref(), pod.metadata.uid.as_deref()), (Some("web-1"), Some("u")));
    assert!(pod.metadata.creation_timestamp.is_none() && pod.metadata.labels.is_none());
    // A foreign pod on a daemon's volume keeps what intruder detection reads.
    let mut thief: Pod = serde_json::from_value(json!({
        "metadata": {"name": "thief", "namespace": "b"},
        "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "docker-ci-0"}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    slim_pod(&mut thief);
    assert_eq!(thief.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(daemons_of_pod(thief).len(), 1);
}

#[test]
fn a_sidecar_pod_keeps_its_label_and_phase_and_wakes_its_dind_daemon() {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "job-x", "namespace": "b", "labels": {"dind.dev/sidecar": "job", "app": "ci"},
            "annotations": {"dind.dev/volume-lease": "job-cache-0/abc", "big": "x"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Succeeded"}
    }))
    .unwrap();
    slim_pod(&mut pod);
    assert_eq!(pod.metadata.labels.clone().unwrap().len(), 1);
    assert_eq!(pod.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"));
    // Its lease stays (the volume pool reads holders from the cache), nothing else.
    assert_eq!(crate::model::volume_pool::lease_of_pod(&pod), Some(("job-cache-0".into(), "abc".into())));
    assert_eq!(pod.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
    let woken = daemons_of_pod(pod);
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].name, "job");
}

#[test]
fn a_route_keeps_the_service_and_its_ready_pods() {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "ci-x1", "namespace": "b", "labels": {"kubernetes.io/service-name": "ci", "dind.dev/daemon": "ci"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "ci-0"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "ci-1"}}
        ]
    }))
    .unwrap();
    assert_eq!(route_of(&slice), Some(Route { service: "ci".into(), pods: vec!["ci-0".into()] }));
    assert_eq!(daemon_of_labelled(slice).map(|r| r.name), Some("ci".to_string()));
}
