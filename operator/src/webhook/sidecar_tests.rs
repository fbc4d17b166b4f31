use super::*;
use crate::crd::DindDaemon;
use crate::objects::{Defaults, sidecar};

fn parts() -> Sidecar {
    parts_of(json!({"mode": "Sidecar", "storage": {"size": "5Gi"}, "resources": {"limits": {"memory": "2Gi"}}}))
}

/// A pod shaped like an actions-runner-controller runner: a runner container with a work volume.
fn runner_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner", "labels": {"dind.dev/sidecar": "job"}, "futureField": 1},
        "spec": {
            "containers": [{"name": "runner", "image": "runner", "volumeMounts": [
                {"name": "work", "mountPath": "/home/runner/_work"},
                {"name": "config", "mountPath": "/etc/runner", "readOnly": true}]}],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "config", "configMap": {"name": "c"}}],
        }
    })
}

fn apply(pod: &Value, patch: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

#[test]
fn the_daemon_is_a_native_sidecar_before_the_containers_with_a_socket_only() {
    let out = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts()).unwrap().patch);
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["dind-install", "dind-daemon"]);
    let daemon = &inits[1];
    assert_eq!(daemon["restartPolicy"], "Always");
    let args: Vec<&str> = daemon["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--tcp=false") && args.contains(&"--socket=/dind/sock/docker.sock"), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--port") || a.starts_with("--tls")), "{args:?}");
    assert!(daemon.get("ports").is_none(), "nothing listens on the pod network");
    assert_eq!(daemon["lifecycle"]["postStart"]["exec"]["command"][1], "wait");
    assert_eq!(daemon["resources"]["limits"]["memory"], "2Gi");
    let data = out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "dind-data").unwrap().clone();
    assert_eq!(data["emptyDir"]["sizeLimit"], "5Gi");
    let runner = &out["spec"]["containers"][0];
    assert_eq!(runner["env"], json!([{"name": "DOCKER_HOST", "value": "unix:///dind/sock/docker.sock"}]));
    assert!(runner["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "dind-operator-sock" && m["mountPath"] == "/dind/sock"));
    assert_eq!(out["metadata"]["futureField"], 1);
    assert_eq!(out["metadata"]["annotations"]["dind.dev/sidecar-injected"], "job");
}

#[test]
fn the_workspace_is_mounted_at_the_same_path_in_the_daemon() {
    let out = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts()).unwrap().patch);
    let mounts = out["spec"]["initContainers"][1]["volumeMounts"].as_array().unwrap().clone();
    assert!(mounts.iter().any(|m| m["name"] == "work" && m["mountPath"] == "/home/runner/_work"), "{mounts:?}");
    assert!(!mounts.iter().any(|m| m["name"] == "config"), "a ConfigMap is no workspace");
    // Reserved paths are never mirrored.
    let mut pod = runner_pod();
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "work", "mountPath": "/var/lib/docker"}, {"name": "work", "mountPath": "/tmp"}]);
    let out = apply(&pod, &plan(&pod, "job", &parts()).unwrap().patch);
    let mounts = out["spec"]["initContainers"][1]["volumeMounts"].as_array().unwrap().clone();
    assert_eq!(mounts.iter().filter(|m| m["name"] == "work").count(), 0, "{mounts:?}");
}

#[test]
fn re_invocation_injects_nothing_twice_and_new_containers_get_docker() {
    let first = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts()).unwrap().patch);
    assert!(plan(&first, "job", &parts()).unwrap().patch.is_empty());
    // Another webhook added a container after us.
    let mut later = first.clone();
    later["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "late", "image": "x"}));
    let out = apply(&later, &plan(&later, "job", &parts()).unwrap().patch);
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 2);
    assert_eq!(out["spec"]["containers"][1]["env"][0]["name"], "DOCKER_HOST");
}

#[test]
fn a_container_or_volume_named_like_ours_is_refused_not_overwritten() {
    let mut pod = runner_pod();
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "dind-daemon", "image": "mine"}));
    let err = plan(&pod, "job", &parts()).unwrap_err();
    assert!(err.0.contains("dind-daemon") && err.0.contains("rename"), "{}", err.0);
    let mut pod = runner_pod();
    pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "dind-operator-sock", "emptyDir": {}}));
    assert!(plan(&pod, "job", &parts()).unwrap_err().0.contains("dind-operator-sock"));
}

#[test]
fn a_leased_volume_replaces_the_emptydir() {
    let dd: DindDaemon = serde_json::from_value(json!({
        "apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "job", "namespace": "ci", "uid": "u1"},
        "spec": {"mode": "Sidecar", "volumePool": {"size": 2}}
    }))
    .unwrap();
    let parts = sidecar(&dd, &defaults(), Some("job-cache-1")).unwrap();
    let out = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts).unwrap().patch);
    let data = out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "dind-data").unwrap().clone();
    assert_eq!(data["persistentVolumeClaim"]["claimName"], "job-cache-1");
    assert!(data.get("emptyDir").is_none());
}

fn parts_of(spec: Value) -> Sidecar {
    parts_with(spec, &defaults())
}

fn parts_with(spec: Value, defaults: &Defaults) -> Sidecar {
    let dd: DindDaemon = serde_json::from_value(json!({
        "apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon",
        "metadata": {"name": "job", "namespace": "ci", "uid": "u1"}, "spec": spec
    }))
    .unwrap();
    sidecar(&dd, defaults, None).unwrap()
}

/// The operator's defaults in these tests: an image without dind-init, so it is copied in.
fn defaults() -> Defaults {
    Defaults::of("docker:28.5.2-dind", "dind-init:test")
}

#[test]
fn with_tcp_the_daemon_makes_its_certificates_and_the_containers_get_tls_to_localhost() {
    let parts = parts_of(json!({"mode": "Sidecar", "sidecar": {"tcp": true}}));
    let out = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts).unwrap().patch);
    let daemon = &out["spec"]["initContainers"][1];
    let args: Vec<&str> = daemon["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for want in ["--port=2376", "--socket=/dind/sock/docker.sock", "--tls-generate=/dind/certs"] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    assert!(!args.contains(&"--tcp=false"), "{args:?}");
    assert!(
        daemon["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "dind-operator-certs" && m["mountPath"] == "/dind/certs")
    );
    let runner = &out["spec"]["containers"][0];
    assert_eq!(
        runner["env"],
        json!([{"name": "DOCKER_HOST", "value": "tcp://localhost:2376"}, {"name": "DOCKER_TLS_VERIFY", "value": "1"},
               {"name": "DOCKER_CERT_PATH", "value": "/dind/client-certs"}])
    );
    let certs = runner["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "dind-operator-certs").unwrap().clone();
    assert_eq!(certs, json!({"name": "dind-operator-certs", "mountPath": "/dind/client-certs", "subPath": "client", "readOnly": true}));
    assert!(out["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "dind-operator-certs" && v["emptyDir"].is_object()));
    // Applied again (a re-invocation): nothing more to do.
    assert!(plan(&out, "job", &parts).unwrap().patch.is_empty());
}

#[test]
fn with_tcp_and_tls_off_the_containers_get_plain_tcp_and_no_certificates() {
    let parts = parts_of(json!({"mode": "Sidecar", "sidecar": {"tcp": true}, "tls": {"enabled": false}, "port": 2375}));
    let out = apply(&runner_pod(), &plan(&runner_pod(), "job", &parts).unwrap().patch);
    let args: Vec<&str> = out["spec"]["initContainers"][1]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--port=2375") && args.contains(&"--tls=false"), "{args:?}");
    assert_eq!(out["spec"]["containers"][0]["env"], json!([{"name": "DOCKER_HOST", "value": "tcp://localhost:2375"}]));
    assert!(!out["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "dind-operator-certs"));
}

/// Seen before: a Sidecar DindDaemon with `security.runtimeClassName` injected a pod with none,
/// so a daemon meant for sysbox ran privileged under runc. The runtime class is the pod's.
#[test]
fn the_daemons_runtime_class_becomes_the_pods_and_another_is_refused() {
    let parts = parts_of(json!({"mode": "Sidecar", "security": {"runtimeClassName": "sysbox-runc"}}));
    let pod = runner_pod();
    let patched = apply(&pod, &plan(&pod, "job", &parts).unwrap().patch);
    assert_eq!(patched["spec"]["runtimeClassName"], "sysbox-runc");
    // Re-invoked: nothing more to do.
    assert!(plan(&patched, "job", &parts).unwrap().patch.is_empty());
    let mut same = runner_pod();
    same["spec"]["runtimeClassName"] = json!("sysbox-runc");
    assert_eq!(apply(&same, &plan(&same, "job", &parts).unwrap().patch)["spec"]["runtimeClassName"], "sysbox-runc");
    let mut other = runner_pod();
    other["spec"]["runtimeClassName"] = json!("gvisor");
    let refusal = plan(&other, "job", &parts).unwrap_err().0;
    assert!(refusal.contains("\"gvisor\"") && refusal.contains("spec.security.runtimeClassName"), "{refusal}");
    // Without one, the pod keeps whatever it has.
    let plain = parts_of(json!({"mode": "Sidecar"}));
    assert!(apply(&other, &plan(&other, "job", &plain).unwrap().patch)["spec"]["runtimeClassName"] == "gvisor");
}

/// Seen before: a container with `runAsUser: 1001` got "permission denied" on the socket
/// (root:docker, 0660). The socket's group is now a supplemental group of the whole pod.
#[test]
fn every_container_of_the_pod_gets_the_sockets_group_and_the_pods_own_settings_stay() {
    let gid = dind_contract::client_pod::SOCKET_GID;
    let pod = runner_pod();
    let patched = apply(&pod, &plan(&pod, "job", &parts()).unwrap().patch);
    assert_eq!(patched["spec"]["securityContext"]["supplementalGroups"], json!([gid]));
    let mut own = runner_pod();
    own["spec"]["securityContext"] = json!({"runAsUser": 1001, "supplementalGroups": [5], "futureField": true});
    let patched = apply(&own, &plan(&own, "job", &parts()).unwrap().patch);
    assert_eq!(patched["spec"]["securityContext"], json!({"runAsUser": 1001, "supplementalGroups": [5, gid], "futureField": true}));
    assert!(plan(&patched, "job", &parts()).unwrap().patch.is_empty(), "re-invoked: nothing twice");
    // dockerd is told the same group.
    let args = &parts().init_containers[1].args;
    assert!(args.iter().flatten().any(|a| *a == format!("--socket-group={gid}")), "{args:?}");
}

/// Seen before: a `hostNetwork` pod got a sidecar whose dockerd ran in the node's network
/// namespace.
#[test]
fn a_host_network_pod_is_refused() {
    let mut pod = runner_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let refusal = plan(&pod, "job", &parts()).unwrap_err().0;
    assert!(refusal.contains("hostNetwork") && refusal.contains("\"job\""), "{refusal}");
    pod["spec"]["hostNetwork"] = json!(false);
    assert!(plan(&pod, "job", &parts()).is_ok());
}

/// The platform's placement (a dedicated node pool) is laid over the sidecar pod's nodeSelector
/// (before: sidecar pods got no placement check at all); a pod asking for another value of one
/// of its labels is refused.
#[test]
fn the_platforms_placement_is_the_sidecar_pods() {
    let placed = Defaults { placement: [("dind.dev/pool".to_string(), "builds".to_string())].into(), ..defaults() };
    let parts = parts_with(json!({"mode": "Sidecar"}), &placed);
    let mut pod = runner_pod();
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "cp-1"});
    let patched = apply(&pod, &plan(&pod, "job", &parts).unwrap().patch);
    assert_eq!(patched["spec"]["nodeSelector"], json!({"kubernetes.io/hostname": "cp-1", "dind.dev/pool": "builds"}));
    assert!(plan(&patched, "job", &parts).unwrap().patch.is_empty(), "re-invoked: nothing more");
    let mut other = runner_pod();
    other["spec"]["nodeSelector"] = json!({"dind.dev/pool": "gpu"});
    let refusal = plan(&other, "job", &parts).unwrap_err().0;
    assert!(refusal.contains("dind.dev/pool=gpu") && refusal.contains("dind.dev/pool=builds"), "{refusal}");
}

/// Allowed toleration keys hold for sidecar pods too (before: a job's pod tolerating, say,
/// CriticalAddonsOnly took its privileged daemon onto nodes kept for the control plane). The
/// tolerations Kubernetes adds to every pod itself are always allowed.
#[test]
fn a_sidecar_pod_tolerates_only_the_allowed_taints() {
    let limited = Defaults { toleration_keys: Some(vec!["dind.dev/pool".to_string()]), ..defaults() };
    let parts = parts_with(json!({"mode": "Sidecar"}), &limited);
    let mut pod = runner_pod();
    pod["spec"]["tolerations"] = json!([
        {"key": "dind.dev/pool", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    assert!(plan(&pod, "job", &parts).is_ok());
    pod["spec"]["tolerations"].as_array_mut().unwrap().push(json!({"key": "CriticalAddonsOnly", "operator": "Exists"}));
    let refusal = plan(&pod, "job", &parts).unwrap_err().0;
    assert!(refusal.contains("\"CriticalAddonsOnly\"") && refusal.contains("allowedTolerationKeys"), "{refusal}");
    pod["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
    assert!(plan(&pod, "job", &parts).unwrap_err().0.contains("every taint"));
    assert!(plan(&pod, "job", &parts_with(json!({"mode": "Sidecar"}), &defaults())).is_ok(), "no list: any");
}

fn mounts_of(c: &Value) -> Vec<(String, String, Option<String>)> {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
                m["subPath"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// GitLab Runner's Kubernetes executor, its dind service deleted: `tcp://docker:2376`, the
/// certificates expected in `/certs/client` (the emptyDir its runner config mounts there).
fn gitlab_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner-abc-project-1-concurrent-0", "labels": {"dind.dev/sidecar": "job"}},
        "spec": {
            "containers": [{"name": "build", "image": "docker:29", "env": [
                {"name": "DOCKER_HOST", "value": "tcp://docker:2376"}, {"name": "DOCKER_TLS_CERTDIR", "value": "/certs"},
                {"name": "DOCKER_TLS_VERIFY", "value": "1"}, {"name": "DOCKER_CERT_PATH", "value": "/certs/client"}],
                "volumeMounts": [{"name": "repo", "mountPath": "/builds"}, {"name": "docker-certs", "mountPath": "/certs/client"}]}],
            "volumes": [{"name": "repo", "emptyDir": {}}, {"name": "docker-certs", "emptyDir": {"medium": "Memory"}}],
        }
    })
}

#[test]
fn gitlab_runners_convention_reaches_the_sidecar_unchanged() {
    let parts = parts_of(json!({"mode": "Sidecar", "sidecar": {"tcp": true}}));
    let p = plan(&gitlab_pod(), "job", &parts).unwrap();
    let out = apply(&gitlab_pod(), &p.patch);
    let build = &out["spec"]["containers"][0];
    // Its environment is its own; the certificates are where it looks for them.
    assert_eq!(build["env"], gitlab_pod()["spec"]["containers"][0]["env"]);
    assert!(mounts_of(build).contains(&("dind-operator-certs".into(), "/certs/client".into(), Some("client".into()))), "{build}");
    assert!(!mounts_of(build).iter().any(|m| m.0 == "docker-certs"), "the empty directory is replaced: {build}");
    assert_eq!(out["spec"]["hostAliases"], json!([{"ip": "127.0.0.1", "hostnames": ["docker"]}]));
    // The workspace is the daemon's too; the certificates' old directory is not.
    let daemon_mounts = mounts_of(&out["spec"]["initContainers"][1]);
    assert!(daemon_mounts.iter().any(|m| m.0 == "repo" && m.1 == "/builds"), "{daemon_mounts:?}");
    assert!(!daemon_mounts.iter().any(|m| m.0 == "docker-certs"), "{daemon_mounts:?}");
    assert_eq!(p.injected, ["build (its own DOCKER_HOST)"]);
    assert!(plan(&out, "job", &parts).unwrap().patch.is_empty(), "re-invocation changes nothing");
    // A socket-only DindDaemon cannot serve it: refused, saying what to set.
    let e = plan(&gitlab_pod(), "job", &self::parts()).unwrap_err().0;
    assert!(e.contains("spec.sidecar.tcp: true"), "{e}");
    let other_port = parts_of(json!({"mode": "Sidecar", "sidecar": {"tcp": true}, "port": 2377}));
    assert!(plan(&gitlab_pod(), "job", &other_port).unwrap_err().0.contains("port 2376"));
}

#[test]
fn tektons_dind_sidecar_example_without_its_sidecar_gets_ours() {
    // Tekton's example: a step with tcp://localhost:2376 and the volume `dind-certs` (an
    // emptyDir) at /certs/client; the volume's name was ours before (refused: "already has a
    // volume named dind-certs").
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "docker-build-pod", "labels": {"dind.dev/sidecar": "job"}},
        "spec": {
            "containers": [{"name": "step-docker-build", "image": "docker", "env": [
                {"name": "DOCKER_HOST", "value": "tcp://localhost:2376"}, {"name": "DOCKER_TLS_VERIFY", "value": "1"},
                {"name": "DOCKER_CERT_PATH", "value": "/certs/client"}],
                "volumeMounts": [{"name": "dind-certs", "mountPath": "/certs/client"}, {"name": "tekton-internal-workspace", "mountPath": "/workspace"}]}],
            "volumes": [{"name": "dind-certs", "emptyDir": {}}, {"name": "tekton-internal-workspace", "emptyDir": {}}],
        }
    });
    let parts = parts_of(json!({"mode": "Sidecar", "sidecar": {"tcp": true}}));
    let out = apply(&pod, &plan(&pod, "job", &parts).unwrap().patch);
    let step = &out["spec"]["containers"][0];
    assert!(mounts_of(step).contains(&("dind-operator-certs".into(), "/certs/client".into(), Some("client".into()))), "{step}");
    assert!(out["spec"].get("hostAliases").is_none(), "localhost needs no alias");
}

#[test]
fn actions_runner_controllers_dind_mode_gets_our_socket_at_var_run() {
    // ARC's dind mode without its dind container: the runner's DOCKER_HOST is
    // unix:///var/run/docker.sock, /var/run an emptyDir named dind-sock (ours was, before).
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner-x", "labels": {"dind.dev/sidecar": "job"}},
        "spec": {
            "initContainers": [{"name": "init-dind-externals", "image": "runner", "command": ["cp"],
                "volumeMounts": [{"name": "dind-externals", "mountPath": "/home/runner/tmpDir"}]}],
            "containers": [{"name": "runner", "image": "runner", "env": [{"name": "DOCKER_HOST", "value": "unix:///var/run/docker.sock"}],
                "volumeMounts": [{"name": "work", "mountPath": "/home/runner/_work"}, {"name": "dind-sock", "mountPath": "/var/run"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "dind-sock", "emptyDir": {}}, {"name": "dind-externals", "emptyDir": {}}],
        }
    });
    let out = apply(&pod, &plan(&pod, "job", &parts()).unwrap().patch);
    let runner = out["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "runner").unwrap().clone();
    assert_eq!(runner["env"], json!([{"name": "DOCKER_HOST", "value": "unix:///var/run/docker.sock"}]));
    let mounts = mounts_of(&runner);
    assert!(mounts.contains(&("dind-operator-sock".into(), "/var/run".into(), None)), "{mounts:?}");
    assert!(!mounts.iter().any(|m| m.0 == "dind-sock"), "{mounts:?}");
    // The socket is in the group every container of the pod has.
    assert!(out["spec"]["securityContext"]["supplementalGroups"].as_array().unwrap().contains(&json!(2375)));
    // A container whose DOCKER_HOST names another daemon is left alone.
    let mut remote = pod.clone();
    remote["spec"]["containers"][0]["env"][0]["value"] = json!("tcp://builder.example:2376");
    let out = apply(&remote, &plan(&remote, "job", &parts()).unwrap().patch);
    assert!(mounts_of(&out["spec"]["containers"][0]).iter().any(|m| m.0 == "dind-sock"));
}
