use super::*;

fn target(tls: bool) -> Target {
    Target {
        name: "ci".into(),
        namespace: "builds".into(),
        tls,
        port: if tls { 2376 } else { 2375 },
        replicas: vec!["ci-0".into(), "ci-1".into(), "ci-2".into()],
        ready: vec!["ci-0".into(), "ci-1".into(), "ci-2".into()],
        client_secret: "ci-client".into(),
        init_image: "dind-init:test".into(),
        per_pod: None,
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "build", "namespace": "builds", "labels": {"dind.dev/inject": "ci"}, "futureMetaField": {"x": 1}},
        "spec": {
            "containers": [
                {"name": "build", "image": "docker:29-cli", "futureContainerField": [1, 2]},
                {"name": "own", "image": "x", "env": [{"name": "DOCKER_HOST", "value": "tcp://elsewhere:2376"}]}
            ],
            "futureSpecField": true
        }
    })
}

fn apply(pod: &Value, patch: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn env_of(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn a_labelled_pod_gets_env_certs_config_label_and_the_wait_container() {
    let p = plan(&pod(), &target(true), 120).unwrap();
    let out = apply(&pod(), &p.patch);
    let host = p.docker_host.clone();
    assert!(host.starts_with("tcp://ci-") && host.ends_with(".ci-daemons.builds.svc:2376"), "{host}");
    assert_eq!(
        env_of(&out["spec"]["containers"][0]),
        vec![
            ("DOCKER_HOST".into(), host.clone()),
            ("DOCKER_TLS_VERIFY".into(), "1".into()),
            ("DOCKER_CERT_PATH".into(), "/dind/client-certs".into()),
            ("DOCKER_CONFIG".into(), "/dind/docker-config".into()),
        ]
    );
    assert_eq!(out["metadata"]["labels"]["dind.dev/client"], "ci");
    assert_eq!(out["metadata"]["annotations"]["dind.dev/docker-host"], host.as_str());
    let wait = &out["spec"]["initContainers"][0];
    assert_eq!(wait["name"], "dind-wait");
    assert_eq!(wait["image"], "dind-init:test");
    assert!(wait["args"].as_array().unwrap().contains(&json!(format!("--host={host}"))));
    assert!(wait["args"].as_array().unwrap().contains(&json!("--certs=/dind/client-certs")));
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "ci-client"));
    assert!(volumes.iter().any(|v| v["name"] == "dind-docker-config" && v["emptyDir"].is_object()));
    let mounts = out["spec"]["containers"][0]["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(p.injected, vec!["build".to_string()]);
}

#[test]
fn containers_with_their_own_docker_host_and_opted_out_ones_are_untouched() {
    let mut pod = pod();
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "sidecar", "image": "y"}));
    pod["metadata"]["annotations"] = json!({"dind.dev/opt-out-containers": " sidecar ,other"});
    let out = apply(&pod, &plan(&pod, &target(true), 120).unwrap().patch);
    assert_eq!(out["spec"]["containers"][1], pod["spec"]["containers"][1], "own DOCKER_HOST");
    assert_eq!(out["spec"]["containers"][2], pod["spec"]["containers"][2], "opted out");
}

#[test]
fn unknown_fields_survive_the_patch() {
    let out = apply(&pod(), &plan(&pod(), &target(true), 120).unwrap().patch);
    assert_eq!(out["metadata"]["futureMetaField"], json!({"x": 1}));
    assert_eq!(out["spec"]["futureSpecField"], json!(true));
    assert_eq!(out["spec"]["containers"][0]["futureContainerField"], json!([1, 2]));
}

#[test]
fn re_invocation_and_re_submission_inject_nothing_twice() {
    let first = plan(&pod(), &target(true), 120).unwrap();
    let out = apply(&pod(), &first.patch);
    // The ready set changed meanwhile: the pod keeps the replica it was given.
    let mut later = target(true);
    later.ready = vec!["ci-2".into()];
    let again = plan(&out, &later, 120).unwrap();
    assert!(again.patch.is_empty(), "{:#?}", again.patch);
    assert_eq!(again.docker_host, first.docker_host);
}

#[test]
fn tls_off_gives_plain_env_and_no_certificates() {
    let p = plan(&pod(), &target(false), 120).unwrap();
    let out = apply(&pod(), &p.patch);
    let env = env_of(&out["spec"]["containers"][0]);
    assert_eq!(env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["DOCKER_HOST", "DOCKER_CONFIG"]);
    assert!(p.docker_host.ends_with(":2375"));
    assert!(!out.to_string().contains("ci-client"));
    assert!(!out.to_string().contains("--certs"));
}

#[test]
fn context_mode_sets_only_the_docker_configuration() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({"dind.dev/docker-env": "context"});
    let out = apply(&pod, &plan(&pod, &target(true), 120).unwrap().patch);
    assert_eq!(env_of(&out["spec"]["containers"][0]), vec![("DOCKER_CONFIG".to_string(), "/dind/docker-config".to_string())]);
    pod["metadata"]["annotations"] = json!({"dind.dev/docker-env": "socket"});
    let err = plan(&pod, &target(true), 120).unwrap_err();
    assert!(err.0.contains("dind.dev/docker-env") && err.0.contains("socket"), "{}", err.0);
}

#[test]
fn the_users_init_containers_get_docker_after_the_wait_container() {
    let mut pod = pod();
    pod["spec"]["initContainers"] = json!([{"name": "prepare", "image": "z", "restartPolicy": "Always"}]);
    let out = apply(&pod, &plan(&pod, &target(true), 120).unwrap().patch);
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["dind-wait", "prepare"]);
    assert_eq!(inits[1]["restartPolicy"], "Always");
    assert!(env_of(&inits[1]).iter().any(|(k, _)| k == "DOCKER_HOST"));
}

#[test]
fn conflicts_are_refused_with_a_message_naming_them() {
    let mut p = pod();
    p["metadata"]["labels"]["dind.dev/client"] = json!("other");
    assert!(plan(&p, &target(true), 120).unwrap_err().0.contains("dind.dev/client=other"));

    let mut p = pod();
    p["spec"]["volumes"] = json!([{"name": "dind-client-certs", "emptyDir": {}}]);
    assert!(plan(&p, &target(true), 120).unwrap_err().0.contains("dind-client-certs"));

    let mut p = pod();
    p["spec"]["initContainers"] = json!([{"name": "dind-wait", "image": "mine"}]);
    assert!(plan(&p, &target(true), 120).unwrap_err().0.contains("dind-wait"));

    let mut p = pod();
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/dind/docker-config/"}]);
    let err = plan(&p, &target(true), 120).unwrap_err().0;
    assert!(err.contains("\"build\"") && err.contains("cfg") && err.contains("/dind/docker-config"), "{err}");

    let mut none = target(true);
    none.replicas.clear();
    none.ready.clear();
    assert!(plan(&pod(), &none, 120).unwrap_err().0.contains("0 replicas"));
}

#[test]
fn the_replica_is_chosen_among_ready_ones_by_the_sticky_key() {
    let mut t = target(true);
    t.ready = vec!["ci-1".into()];
    let host = plan(&pod(), &t, 120).unwrap().docker_host;
    assert_eq!(host, "tcp://ci-1.ci-daemons.builds.svc:2376");
    // None ready: any replica (the wait container waits for it).
    t.ready.clear();
    let host = plan(&pod(), &t, 120).unwrap().docker_host;
    assert!(t.replicas.iter().any(|r| host.contains(&format!("{r}.ci-daemons"))));
    // Same key, same replica.
    let mut a = pod();
    a["metadata"]["labels"]["dind.dev/sticky-key"] = json!("pipeline-9");
    let mut b = a.clone();
    b["metadata"]["name"] = json!("other-pod");
    assert_eq!(plan(&a, &target(true), 120).unwrap().docker_host, plan(&b, &target(true), 120).unwrap().docker_host);
}

#[test]
fn the_jobs_registry_credentials_are_merged_by_the_wait_container() {
    let mut p = pod();
    // A dockerconfigjson Secret at ~/.docker (items) in one container, by subPath in another.
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "regcred", "mountPath": "/root/.docker", "readOnly": true}]);
    p["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "push", "image": "y",
        "volumeMounts": [{"name": "other", "mountPath": "/home/u/.docker/config.json", "subPath": ".dockerconfigjson"}]
    }));
    for mode in ["env", "context"] {
        p["metadata"]["annotations"] = json!({"dind.dev/docker-env": mode});
        let out = apply(&p, &plan(&p, &target(true), 120).unwrap().patch);
        let wait = &out["spec"]["initContainers"][0];
        let args = wait["args"].as_array().unwrap();
        assert!(args.contains(&json!("--merge=/dind/job-docker-config/0/config.json")), "{mode}: {args:?}");
        assert!(args.contains(&json!("--merge=/dind/job-docker-config/1/config.json")), "{mode}: {args:?}");
        let mounts = wait["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({"name": "regcred", "mountPath": "/dind/job-docker-config/0", "readOnly": true})));
        assert!(mounts.contains(
            &json!({"name": "other", "mountPath": "/dind/job-docker-config/1/config.json", "readOnly": true, "subPath": ".dockerconfigjson"})
        ));
        assert!(env_of(&out["spec"]["containers"][0]).contains(&("DOCKER_CONFIG".into(), "/dind/docker-config".into())));
        // Injected once: nothing more the second time.
        assert!(plan(&out, &target(true), 120).unwrap().patch.is_empty());
    }
}

#[test]
fn an_own_docker_config_in_a_volume_is_merged_and_one_elsewhere_is_kept_or_refused() {
    let mut p = pod();
    p["spec"]["containers"][0]["env"] = json!([{"name": "DOCKER_CONFIG", "value": "/cfg"}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/cfg"}]);
    let out = apply(&p, &plan(&p, &target(true), 120).unwrap().patch);
    assert!(out["spec"]["initContainers"][0]["args"].as_array().unwrap().contains(&json!("--merge=/dind/job-docker-config/0/config.json")));
    assert_eq!(env_of(&out["spec"]["containers"][0]).iter().filter(|(k, _)| k == "DOCKER_CONFIG").count(), 1);
    assert!(env_of(&out["spec"]["containers"][0]).contains(&("DOCKER_CONFIG".into(), "/dind/docker-config".into())));

    // Not in a volume: kept in mode env (DOCKER_HOST reaches the daemon), refused in mode context.
    p["spec"]["containers"][0]["volumeMounts"] = json!([]);
    let out = apply(&p, &plan(&p, &target(true), 120).unwrap().patch);
    assert!(env_of(&out["spec"]["containers"][0]).contains(&("DOCKER_CONFIG".into(), "/cfg".into())));
    p["metadata"]["annotations"] = json!({"dind.dev/docker-env": "context"});
    let err = plan(&p, &target(true), 120).unwrap_err().0;
    assert!(err.contains("\"build\"") && err.contains("DOCKER_CONFIG=/cfg") && err.contains("mode env"), "{err}");
}

#[test]
fn a_per_pod_client_gets_the_certificate_sidecar_a_token_of_our_audience_and_no_secret() {
    let mut t = target(true);
    t.namespace = "dind".into();
    t.per_pod = Some(PerPod { operator: "https://op-webhook.ops.svc:443".into(), operator_ca: "PEM".into() });
    let mut tenant = pod();
    tenant["metadata"]["namespace"] = json!("team-a");
    tenant["metadata"]["labels"]["dind.dev/inject-namespace"] = json!("dind");
    let p = plan(&tenant, &t, 120).unwrap();
    let out = apply(&tenant, &p.patch);
    assert!(p.docker_host.ends_with(".ci-daemons.dind.svc:2376"), "the daemon's namespace: {}", p.docker_host);
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    let certs = volumes.iter().find(|v| v["name"] == "dind-client-certs").unwrap();
    assert_eq!(certs["emptyDir"]["medium"], "Memory", "{certs}");
    assert!(volumes.iter().all(|v| v.get("secret").is_none()), "no Secret is mounted: {volumes:?}");
    let token = volumes.iter().find(|v| v["name"] == "dind-token").unwrap();
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "dind.dev/client-certificates");
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["dind-certs", "dind-wait"]);
    let sidecar = &inits[0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    let args: Vec<String> = serde_json::from_value(sidecar["args"].clone()).unwrap();
    let parsed = dind_contract::args::ClientCerts::parse(&args[1..]).unwrap().unwrap();
    assert_eq!(parsed.daemon, "dind/ci");
    assert_eq!(parsed.operator, "https://op-webhook.ops.svc:443");
    for c in inits {
        let sc = &c["securityContext"];
        assert_eq!((sc["runAsNonRoot"].as_bool(), sc["seccompProfile"]["type"].as_str()), (Some(true), Some("RuntimeDefault")), "{c}");
        let mounts = c["volumeMounts"].as_array().unwrap();
        let token_seen = mounts.iter().any(|m| m["name"] == "dind-token");
        assert_eq!(token_seen, c["name"] == "dind-certs", "only the sidecar sees the token: {c}");
    }
    // The job's containers read the certificates (read-only) as before.
    let build = &out["spec"]["containers"][0];
    assert!(build["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "dind-client-certs" && m["readOnly"] == true));
    // Re-invocation changes nothing.
    assert!(plan(&out, &t, 120).unwrap().patch.is_empty());
}
