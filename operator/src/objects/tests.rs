use super::*;
use crate::crd::{DindDaemonSpec, StorageDriver};
use crate::model::names::{CLIENT_LABEL, TLS_DIGEST_ANNOTATION};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use time::OffsetDateTime;

fn daemon(spec: serde_json::Value) -> DindDaemon {
    let spec: DindDaemonSpec = serde_json::from_value(spec).unwrap();
    let mut dd = DindDaemon::new("ci", spec);
    dd.metadata.namespace = Some("builds".into());
    dd.metadata.uid = Some("0000-uid".into());
    dd
}

fn defaults() -> Defaults {
    Defaults { operator_namespace: Some("ops".into()), ..Defaults::of("docker:28.5.2-dind", "dind-init:test") }
}

fn certs() -> tls::Bundle {
    let names = tls::server_names("ci", "builds", "ci-daemons");
    tls::plan(None, None, None, "builds", "ci", &names, OffsetDateTime::now_utc()).unwrap().bundle
}

fn pod(o: &Owned) -> PodSpec {
    o.statefulset.spec.clone().unwrap().template.spec.unwrap()
}

#[test]
fn minimal_spec_builds_every_owned_object_with_owner_refs() {
    let dd = daemon(json!({"replicas": 2}));
    let o = build(&dd, &defaults(), Some(&certs())).unwrap();
    let metas = [
        &o.statefulset.metadata,
        &o.headless_service.metadata,
        &o.client_service.metadata,
        &o.network_policy.metadata,
        &o.disruption_budget.as_ref().unwrap().metadata,
        &o.secrets.as_ref().unwrap().ca.metadata,
        &o.secrets.as_ref().unwrap().server.metadata,
        &o.secrets.as_ref().unwrap().client.metadata,
    ];
    for m in metas {
        let refs = m.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].kind, "DindDaemon");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("builds"));
    }
    let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
    assert_eq!(names, ["ci", "ci-daemons", "ci", "ci", "ci", "ci-ca", "ci-server-tls", "ci-client"]);
    // A drain evicts one daemon at a time, by the pods' (stable) selector.
    let budget = o.disruption_budget.as_ref().unwrap().spec.clone().unwrap();
    assert_eq!(budget.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    assert_eq!(budget.selector.unwrap().match_labels, o.statefulset.spec.as_ref().unwrap().selector.match_labels);

    let sts = o.statefulset.spec.clone().unwrap();
    assert_eq!(sts.replicas, Some(2));
    assert_eq!(sts.service_name.as_deref(), Some("ci-daemons"));
    let claims = sts.volume_claim_templates.unwrap();
    assert_eq!(claims[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "20Gi");
    assert_eq!(sts.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(), Some("Delete"));

    let pod = pod(&o);
    assert_eq!(pod.enable_service_links, Some(false));
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("dind-init:test"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("docker:28.5.2-dind"));
    assert_eq!(c.command.as_ref().unwrap(), &vec!["/dind/bin/dind-init".to_string()]);
    // Half the default 20Gi volume for the build cache, in bytes, for dockerd's own GC.
    let gc = r#"--daemon-config={"builder":{"gc":{"defaultKeepStorage":"10737418240","enabled":true}}}"#;
    assert_eq!(c.args.as_ref().unwrap(), &vec!["--port=2376", "--shutdown-timeout=15", "--tls-dir=/certs/server", gc]);
    assert!(pod.termination_grace_period_seconds.unwrap() > DOCKERD_SHUTDOWN_TIMEOUT);
    let live = c.liveness_probe.as_ref().unwrap();
    assert_eq!(live.exec.as_ref().unwrap().command.as_ref().unwrap()[1], "probe");
    // A restart kills every build: only after two minutes without an answer.
    assert!(live.period_seconds.unwrap() * live.failure_threshold.unwrap() >= 120);
    assert!(c.readiness_probe.is_none() && c.startup_probe.is_none(), "Ready comes from the start gate, not a probe period");
    // The start gate: the container counts as started once dockerd answers.
    let gate = c.lifecycle.as_ref().unwrap().post_start.as_ref().unwrap().exec.as_ref().unwrap().command.clone().unwrap();
    assert_eq!(gate[..2], ["/dind/bin/dind-init".to_string(), "wait".to_string()]);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.se_linux_options.as_ref().unwrap().type_.as_deref(), Some("spc_t"));
    assert_eq!(sc.app_armor_profile.as_ref().unwrap().type_, "Unconfined");

    let secrets = o.secrets.clone().unwrap();
    let client = secrets.client.data.unwrap();
    assert!(["ca.pem", "cert.pem", "key.pem"].iter().all(|k| client.contains_key(*k)));
    let server = secrets.server.data.unwrap();
    assert!(!server.contains_key("ca.key"), "the CA key must not be mounted into daemon pods");
    assert!(secrets.ca.data.unwrap().contains_key("ca.key"));

    let np = o.network_policy.spec.unwrap();
    let ingress = np.ingress.unwrap();
    let from = ingress[0].from.clone().unwrap();
    assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[CLIENT_LABEL], "ci");
    // The operator: its pods in its own namespace only (was: any namespace, so any pod that
    // labelled itself like the operator reached every daemon).
    let operator = &from[1];
    let namespaces = operator.namespace_selector.as_ref().unwrap().match_labels.clone().unwrap();
    assert_eq!(namespaces, std::collections::BTreeMap::from([("kubernetes.io/metadata.name".to_string(), "ops".to_string())]));
    assert_eq!(operator.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app.kubernetes.io/name"], "dind-operator");
    assert_eq!(from.len(), 2);
    // Out of cluster (no namespace known) the operator needs no peer: none is admitted.
    let outside = build(&dd, &Defaults { operator_namespace: None, ..defaults() }, Some(&certs())).unwrap();
    assert_eq!(outside.network_policy.spec.unwrap().ingress.unwrap()[0].from.as_ref().unwrap().len(), 1);
    // Ports containers publish on the daemon: from client pods only, TCP and UDP.
    let published = &ingress[1];
    let peers = published.from.clone().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[CLIENT_LABEL], "ci");
    let ports = published.ports.clone().unwrap();
    assert_eq!(ports.iter().map(|p| p.protocol.clone().unwrap()).collect::<Vec<_>>(), ["TCP", "UDP"]);
    assert!(ports.iter().all(|p| p.port == Some(IntOrString::Int(1024)) && p.end_port == Some(65535)));
}

#[test]
fn full_spec_reaches_dind_init_and_the_pod() {
    let dd = daemon(json!({
        "image": "docker:27-dind", "initImage": "reg/dind-init:1", "replicas": 3, "port": 3376,
        "storage": {"size": "50Gi", "storageClassName": "fast", "retainOnDelete": true},
        "daemon": {"mtu": 1400, "registryMirrors": ["https://mirror.local"], "insecureRegistries": ["r.local:5000"],
                   "storageDriver": "vfs", "extraArgs": ["--debug"], "config": {"log-level": "warn"}},
        "resources": {"limits": {"memory": "4Gi"}},
        "security": {"mode": "Capabilities", "runtimeClassName": "sysbox-runc"},
        "nodeSelector": {"pool": "builds"},
        "tolerations": [{"key": "builds", "operator": "Exists"}]
    }));
    let o = build(&dd, &defaults(), Some(&certs())).unwrap();
    let sts = o.statefulset.spec.clone().unwrap();
    assert_eq!(sts.replicas, Some(3));
    let claim = &sts.volume_claim_templates.unwrap()[0];
    assert_eq!(claim.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("fast"));
    assert_eq!(sts.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(), Some("Retain"));
    let pod = pod(&o);
    assert_eq!(pod.runtime_class_name.as_deref(), Some("sysbox-runc"));
    assert_eq!(pod.node_selector.unwrap()["pool"], "builds");
    assert_eq!(pod.tolerations.unwrap().len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("docker:27-dind"));
    assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "4Gi");
    assert!(c.resources.as_ref().unwrap().requests.is_none(), "given resources replace the default whole");
    let args = c.args.clone().unwrap();
    for want in [
        "--port=3376",
        "--mtu=1400",
        "--storage-driver=vfs",
        "--registry-mirror=https://mirror.local",
        "--insecure-registry=r.local:5000",
        r#"--daemon-config={"builder":{"gc":{"defaultKeepStorage":"26843545600","enabled":true}},"log-level":"warn"}"#,
    ] {
        assert!(args.contains(&want.to_string()), "{want} missing from {args:?}");
    }
    assert_eq!(&args[args.len() - 2..], ["--", "--debug"]);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap().add.as_ref().unwrap();
    assert!(caps.contains(&"SYS_ADMIN".to_string()) && !caps.contains(&"SYS_RESOURCE".to_string()));
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "Unconfined");
    assert_eq!(o.client_service.spec.unwrap().ports.unwrap()[0].port, 3376);
    assert_eq!(StorageDriver::Vfs.as_str(), "vfs");
}

#[test]
fn ephemeral_storage_uses_an_empty_dir_and_tls_off_mounts_no_secret() {
    let dd = daemon(json!({"storage": {"ephemeral": true}, "tls": {"enabled": false}, "port": 2375}));
    // TLS is decided once: off means no certificates are made and no Secret is built.
    assert!(!certificates_wanted(&dd));
    let o = build(&dd, &defaults(), None).unwrap();
    assert!(o.secrets.is_none());
    assert!(o.statefulset.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.is_none());
    let sts = o.statefulset.spec.clone().unwrap();
    assert!(sts.volume_claim_templates.is_none());
    let pod = pod(&o);
    let vols = pod.volumes.unwrap();
    // Limited (default 20Gi): a build that fills it gets the daemon evicted, not the node's
    // other pods.
    let data = vols.iter().find(|v| v.name == "docker").unwrap();
    assert_eq!(data.empty_dir.as_ref().unwrap().size_limit.as_ref().map(|q| q.0.as_str()), Some("20Gi"));
    assert!(!vols.iter().any(|v| v.name == "server-tls"));
    // No resources given: the default requests, so the scheduler counts the daemon.
    let requests = pod.containers[0].resources.clone().unwrap().requests.unwrap();
    assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("100m", "256Mi"));
    assert!(pod.containers[0].resources.clone().unwrap().limits.is_none());
    let args = pod.containers[0].args.clone().unwrap();
    assert!(args.contains(&"--tls=false".to_string()) && args.contains(&"--port=2375".to_string()));
}

#[test]
fn several_replicas_get_their_own_docker_hosts() {
    let dd = daemon(json!({"replicas": 2}));
    let (service, replicas) = docker_hosts(&dd, "builds");
    assert_eq!(service, "tcp://ci.builds.svc:2376");
    assert_eq!(
        replicas,
        vec![
            ("ci-0".to_string(), "tcp://ci-0.ci-daemons.builds.svc:2376".to_string()),
            ("ci-1".to_string(), "tcp://ci-1.ci-daemons.builds.svc:2376".to_string())
        ]
    );
    let o = build(&dd, &defaults(), Some(&certs())).unwrap();
    assert_eq!(o.client_service.spec.unwrap().session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(o.headless_service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

/// A renewed certificate does not change the pod template (which would restart every daemon at
/// once, killing their builds: `model::cert_roll` restarts each when idle); a digest an older
/// operator wrote into the template is kept, so upgrading restarts nothing either.
#[test]
fn a_new_server_certificate_leaves_the_pod_template_alone() {
    let dd = daemon(json!({}));
    let a = build(&dd, &defaults(), Some(&certs())).unwrap();
    let b = build(&dd, &defaults(), Some(&certs())).unwrap();
    assert_eq!(a.statefulset.spec.as_ref().unwrap().template, b.statefulset.spec.as_ref().unwrap().template);
    let mut older = a.statefulset.clone();
    older.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().annotations =
        Some([(TLS_DIGEST_ANNOTATION.to_string(), "0123456789abcdef".to_string())].into());
    let mut rebuilt = b.statefulset.clone();
    crate::objects::keep_cert_digest(&mut rebuilt, Some(&older));
    assert_eq!(rebuilt.spec.unwrap().template, older.spec.clone().unwrap().template);
    let mut fresh = b.statefulset;
    crate::objects::keep_cert_digest(&mut fresh, None);
    assert!(fresh.spec.unwrap().template.metadata.unwrap().annotations.is_none());
}

#[test]
fn egress_is_open_by_default_and_restricted_on_request_with_the_metadata_service_denied() {
    let open = build(&daemon(json!({})), &defaults(), None).unwrap().network_policy.spec.unwrap();
    assert_eq!(open.policy_types.unwrap(), ["Ingress"]);
    assert!(open.egress.is_none());
    let np = build(&daemon(json!({"egress": {"restricted": true}})), &defaults(), None).unwrap().network_policy.spec.unwrap();
    assert_eq!(np.policy_types.unwrap(), ["Ingress", "Egress"]);
    let rules = np.egress.unwrap();
    let blocks: Vec<_> = rules[0].to.clone().unwrap().into_iter().map(|p| p.ip_block.unwrap()).collect();
    assert_eq!(blocks[0].cidr, "0.0.0.0/0");
    assert_eq!(blocks[0].except.as_deref(), Some(&["169.254.169.254/32".to_string()][..]), "each exception inside its own block");
    assert_eq!(blocks[1].cidr, "::/0");
    assert_eq!(blocks[1].except.as_deref(), Some(&["fd00:ec2::254/128".to_string()][..]));
    let dns: Vec<_> = rules[1].ports.clone().unwrap().into_iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(dns, [(Some(IntOrString::Int(53)), Some("UDP".into())), (Some(IntOrString::Int(53)), Some("TCP".into()))]);
    // DNS to any resolver but the denied CIDRs (seen before: to any address, the metadata
    // service's port 53 included).
    let dns_to: Vec<_> = rules[1].to.clone().unwrap().into_iter().map(|p| p.ip_block.unwrap()).collect();
    assert_eq!(dns_to, blocks, "DNS anywhere but where egress is denied");
    // Narrowed to a registry network: a denied CIDR outside it needs no exception.
    let narrow = daemon(
        json!({"egress": {"restricted": true, "allowedCIDRs": ["10.20.0.0/16"], "deniedCIDRs": ["10.20.5.0/24", "169.254.169.254/32"]}}),
    );
    let np = build(&narrow, &defaults(), None).unwrap().network_policy.spec.unwrap();
    let block = np.egress.unwrap()[0].to.clone().unwrap()[0].ip_block.clone().unwrap();
    assert_eq!((block.cidr.as_str(), block.except), ("10.20.0.0/16", Some(vec!["10.20.5.0/24".to_string()])));
}

#[test]
fn cidr_containment() {
    use super::network_policy::cidr_within;
    assert!(cidr_within("169.254.169.254/32", "0.0.0.0/0"));
    assert!(cidr_within("10.1.2.0/24", "10.1.0.0/16"));
    assert!(cidr_within("10.1.0.0/16", "10.1.0.0/16"));
    assert!(!cidr_within("10.2.0.0/24", "10.1.0.0/16"));
    assert!(!cidr_within("10.0.0.0/8", "10.1.0.0/16"), "wider is not within");
    assert!(!cidr_within("fd00:ec2::254/128", "0.0.0.0/0"), "families do not mix");
    assert!(cidr_within("fd00:ec2::254/128", "::/0"));
    assert!(cidr_within("fd00:ec2::254/128", "fd00::/8"));
    assert!(!cidr_within("nonsense", "0.0.0.0/0"));
    assert!(!cidr_within("10.0.0.0/33", "0.0.0.0/0"));
}

#[test]
fn one_daemon_gets_no_disruption_budget_as_it_would_allow_every_eviction() {
    let one = build(&daemon(json!({})), &defaults(), None).unwrap();
    assert!(one.disruption_budget.is_none());
    // Kept when replicas drop to one: built on its own, the same budget as with two.
    let two = build(&daemon(json!({"replicas": 2})), &defaults(), None).unwrap();
    let kept = crate::objects::disruption_budget(&daemon(json!({}))).unwrap();
    assert_eq!(Some(kept), two.disruption_budget);
}

#[test]
fn a_daemon_image_that_carries_dind_init_needs_no_install_container() {
    let o = build(&daemon(json!({"dindInitPath": "/usr/local/bin/dind-init"})), &defaults(), Some(&certs())).unwrap();
    let pod = pod(&o);
    assert!(pod.init_containers.is_none(), "{:?}", pod.init_containers);
    assert!(pod.volumes.iter().flatten().all(|v| v.name != "dind-bin"), "no dind-bin volume");
    let c = &pod.containers[0];
    assert!(c.volume_mounts.iter().flatten().all(|m| m.name != "dind-bin"));
    let binary = "/usr/local/bin/dind-init".to_string();
    assert_eq!(c.command.as_ref().unwrap(), &vec![binary.clone()]);
    assert_eq!(c.lifecycle.as_ref().unwrap().post_start.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap()[0], binary);
    assert_eq!(c.liveness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap()[0], binary);

    let s = sidecar(&daemon(json!({"mode": "Sidecar", "dindInitPath": "/usr/local/bin/dind-init"})), &defaults(), None).unwrap();
    assert_eq!(s.init_containers.len(), 1, "the daemon alone: {:?}", s.init_containers.iter().map(|c| &c.name).collect::<Vec<_>>());
    assert_eq!(s.init_containers[0].command.as_ref().unwrap(), &vec![binary]);
    assert!(s.volumes.iter().all(|v| v.name != "dind-bin"));
    assert!(s.init_containers[0].volume_mounts.iter().flatten().all(|m| m.name != "dind-bin"));
    let copied = sidecar(&daemon(json!({"mode": "Sidecar"})), &defaults(), None).unwrap();
    assert_eq!(copied.init_containers.len(), 2, "copied in by the install container first");
}

/// The platform team's default image carries dind-init (the chart's own daemon image does): a
/// DindDaemon that leaves the image alone runs it from there; one that brings its own image, or
/// asks for a copy from an init image, gets the install container; its own path always wins.
#[test]
fn the_default_image_runs_its_own_dind_init_and_any_other_image_gets_a_copy() {
    let carried = Defaults { image_dind_init_path: Some("/usr/local/bin/dind-init".into()), ..defaults() };
    let source = |spec: Value, defaults: &Defaults| DindInitSource::of(&daemon(spec).spec, defaults);
    let in_image = |p: &str| DindInitSource::InImage(p.into());
    let copied = |i: &str| DindInitSource::Copied(i.into());
    assert_eq!(source(json!({}), &carried), in_image("/usr/local/bin/dind-init"));
    assert_eq!(source(json!({}), &defaults()), copied("dind-init:test"), "a default image without it");
    assert_eq!(source(json!({"image": "docker:29.0.0-dind"}), &carried), copied("dind-init:test"), "its own image");
    assert_eq!(source(json!({"initImage": "mirror/dind-init:1"}), &carried), copied("mirror/dind-init:1"), "asked for a copy");
    assert_eq!(source(json!({"image": "x", "dindInitPath": "/bin/dind-init"}), &defaults()), in_image("/bin/dind-init"));
    assert_eq!(source(json!({"dindInitPath": "/bin/dind-init"}), &carried), in_image("/bin/dind-init"), "its own path wins");

    // What gets built from it, pool and sidecar alike.
    let pool = build(&daemon(json!({})), &carried, None).unwrap();
    assert!(pod(&pool).init_containers.is_none());
    assert_eq!(pod(&pool).containers[0].command.as_ref().unwrap(), &vec!["/usr/local/bin/dind-init".to_string()]);
    assert_eq!(sidecar(&daemon(json!({"mode": "Sidecar"})), &carried, None).unwrap().init_containers.len(), 1);
    let own = sidecar(&daemon(json!({"mode": "Sidecar", "image": "docker:29.0.0-dind"})), &carried, None).unwrap();
    assert_eq!(own.init_containers.len(), 2);
    assert_eq!(own.init_containers[0].image.as_deref(), Some("dind-init:test"));
    assert_eq!(own.init_containers[1].command.as_ref().unwrap(), &vec![format!("{}/dind-init", dind_contract::BIN_DIR)]);
}

#[test]
fn the_claim_template_keeps_the_size_the_statefulset_was_made_with() {
    let made = build(&daemon(json!({"storage": {"size": "1Gi"}})), &defaults(), None).unwrap().statefulset;
    assert_eq!(claim_size(&made), Some("1Gi"));
    let mut raised = build(&daemon(json!({"storage": {"size": "2Gi"}})), &defaults(), None).unwrap().statefulset;
    assert_eq!(claim_size(&raised), Some("2Gi"));
    keep_claim_size(&mut raised, claim_size(&made));
    assert_eq!(claim_size(&raised), Some("1Gi"), "templates are immutable: the claims grow instead");
    let mut fresh = raised.clone();
    keep_claim_size(&mut fresh, None);
    assert_eq!(claim_size(&fresh), Some("1Gi"), "no StatefulSet yet: as built");
    let ephemeral = build(&daemon(json!({"storage": {"ephemeral": true}})), &defaults(), None).unwrap().statefulset;
    assert_eq!(claim_size(&ephemeral), None);
}

/// The project's daemon image (daemon/Dockerfile) is built on the Docker version the operator
/// names as its default, and puts dind-init where the chart says it is.
#[test]
fn the_daemon_image_recipe_matches_the_defaults() {
    let dockerfile = include_str!("../../../daemon/Dockerfile");
    let version = format!("ARG DOCKER_VERSION={}\n", crate::crd::DEFAULT_DOCKER_VERSION);
    assert!(dockerfile.contains(&version), "daemon/Dockerfile must say {version:?}");
    let helpers = include_str!("../../../charts/dind-operator/templates/_helpers.tpl");
    for path in ["COPY ${TARGETARCH}/dind-init /usr/local/bin/dind-init", "ENTRYPOINT [\"/usr/local/bin/dind-init\"]"] {
        assert!(dockerfile.contains(path), "daemon/Dockerfile: {path:?}");
    }
    assert!(helpers.contains("\n/usr/local/bin/dind-init\n"), "the chart's default dindInitPath moved");
}

#[test]
fn registry_cas_are_mounted_where_dockerd_looks_in_pool_and_sidecar_daemons() {
    let spec = json!({"daemon": {"registryCAs": [
        {"registry": "registry.corp.example:5000", "configMap": "corp-ca"},
        {"registry": "10.0.0.1", "configMap": "lab", "key": "root.pem"}
    ]}});
    let dd = daemon(spec.clone());
    let pod = pod(&build(&dd, &defaults(), Some(&certs())).unwrap());
    let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "dind-registry-cas").unwrap();
    let sources = volume.projected.unwrap().sources.unwrap();
    let items: Vec<_> = sources
        .iter()
        .map(|s| {
            let cm = s.config_map.as_ref().unwrap();
            let item = &cm.items.as_ref().unwrap()[0];
            (cm.name.as_str(), item.key.as_str(), item.path.as_str())
        })
        .collect();
    assert_eq!(items, [("corp-ca", "ca.crt", "registry.corp.example:5000/ca.crt"), ("lab", "root.pem", "10.0.0.1/ca.crt")]);
    let mount = pod.containers[0].volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "dind-registry-cas").unwrap().clone();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/docker/certs.d", Some(true)));

    let mut sidecar_spec = spec;
    sidecar_spec["mode"] = json!("Sidecar");
    let parts = sidecar(&daemon(sidecar_spec), &defaults(), None).unwrap();
    assert!(parts.volumes.iter().any(|v| v.name == "dind-registry-cas"));
    let d = parts.init_containers.last().unwrap();
    assert!(d.volume_mounts.as_ref().unwrap().iter().any(|m| m.name == "dind-registry-cas" && m.mount_path == "/etc/docker/certs.d"));
    // None asked, none mounted.
    assert!(pod_has_no_registry_cas(&daemon(json!({}))));
}

fn pod_has_no_registry_cas(dd: &DindDaemon) -> bool {
    let pod = pod(&build(dd, &defaults(), Some(&certs())).unwrap());
    pod.volumes.unwrap_or_default().iter().all(|v| v.name != "dind-registry-cas")
}

/// Where the nodes have Kubernetes image volumes, a daemon image without dind-init gets the init
/// image mounted at BIN_DIR instead of an install container copying it there; an image that
/// carries it is unchanged.
#[test]
fn with_image_volumes_dind_init_is_mounted_from_the_init_image_and_nothing_is_copied() {
    let mounted = Defaults { init_image_volume: true, ..defaults() };
    let own = json!({"image": "docker:29.0.0-dind"});
    assert_eq!(DindInitSource::of(&daemon(own.clone()).spec, &mounted), DindInitSource::Mounted("dind-init:test".into()));
    let carried = Defaults { image_dind_init_path: Some("/usr/local/bin/dind-init".into()), ..mounted.clone() };
    assert_eq!(DindInitSource::of(&daemon(json!({})).spec, &carried), DindInitSource::InImage("/usr/local/bin/dind-init".into()));

    let binary = format!("{}/dind-init", dind_contract::BIN_DIR);
    let pool = build(&daemon(own.clone()), &mounted, None).unwrap();
    let spec = pod(&pool);
    assert!(spec.init_containers.is_none(), "no install container");
    assert_eq!(spec.containers[0].command.as_ref().unwrap(), &vec![binary.clone()]);
    let bin = spec.volumes.iter().flatten().find(|v| v.name == "dind-bin").unwrap();
    let image = bin.image.as_ref().unwrap();
    assert_eq!((image.reference.as_deref(), image.pull_policy.as_deref()), (Some("dind-init:test"), Some("IfNotPresent")));
    assert!(bin.empty_dir.is_none());
    let mount = spec.containers[0].volume_mounts.iter().flatten().find(|m| m.name == "dind-bin").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (dind_contract::BIN_DIR, Some(true)));

    let mut sidecar_spec = own;
    sidecar_spec["mode"] = json!("Sidecar");
    let s = sidecar(&daemon(sidecar_spec), &mounted, None).unwrap();
    assert_eq!(s.init_containers.len(), 1, "the daemon alone");
    assert_eq!(s.init_containers[0].command.as_ref().unwrap(), &vec![binary]);
    assert!(s.volumes.iter().any(|v| v.image.as_ref().and_then(|i| i.reference.as_deref()) == Some("dind-init:test")));
}

/// The platform's placement is laid over a pool daemon's nodeSelector, its values winning: a spec
/// that names a control-plane host still needs the dedicated pool's label.
#[test]
fn the_platforms_placement_is_laid_over_the_specs_node_selector() {
    let placed = Defaults { placement: [("dind.dev/pool".to_string(), "builds".to_string())].into(), ..defaults() };
    let dd = daemon(json!({"nodeSelector": {"kubernetes.io/hostname": "cp-1", "dind.dev/pool": "gpu"}}));
    let selector = pod(&build(&dd, &placed, None).unwrap()).node_selector.unwrap();
    assert_eq!(
        selector,
        [("dind.dev/pool".to_string(), "builds".to_string()), ("kubernetes.io/hostname".to_string(), "cp-1".to_string())].into()
    );
    assert!(pod(&build(&daemon(json!({})), &defaults(), None).unwrap()).node_selector.is_none(), "none without placement");
}

#[test]
fn a_grant_admits_exactly_the_granted_namespaces_pods_labelled_as_clients() {
    let dd = daemon(json!({"clients": {
        "namespaceSelector": {"matchLabels": {"dind.dev/tenant": "true"}},
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["build"]}]},
    }}));
    let np = build(&dd, &defaults(), Some(&certs())).unwrap().network_policy.spec.unwrap();
    let ingress = np.ingress.unwrap();
    for rule in &ingress {
        let from = rule.from.clone().unwrap();
        let granted: Vec<_> = from
            .iter()
            .filter(|p| {
                p.namespace_selector.as_ref().is_some_and(|n| n.match_labels.as_ref().is_some_and(|l| l.contains_key("dind.dev/tenant")))
            })
            .collect();
        assert_eq!(granted.len(), 1, "one grant peer in {from:?}");
        let pods = granted[0].pod_selector.as_ref().unwrap();
        let labels = pods.match_labels.clone().unwrap();
        assert_eq!(labels[CLIENT_LABEL], "ci");
        assert_eq!(labels["dind.dev/inject-namespace"], "builds");
        assert_eq!(pods.match_expressions.as_ref().unwrap()[0].key, "app");
    }
    // The daemon port and the published ports alike.
    assert_eq!(ingress[0].ports.as_ref().unwrap()[0].port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2376)));
    assert_eq!(ingress[1].ports.as_ref().unwrap()[0].end_port, Some(65535));
    // Without a grant: no peer of another namespace but the operator's.
    let plain = build(&daemon(json!({})), &defaults(), Some(&certs())).unwrap().network_policy.spec.unwrap();
    assert_eq!(plain.ingress.unwrap()[1].from.as_ref().unwrap().len(), 1);
}
