//! The build step: a DindDaemon's spec in, every object it owns out. Pure: no client, no clock,
//! no randomness (certificates are made by `tls` and passed in), so it is unit-tested whole.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, ExecAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, SELinuxOptions, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{DEFAULT_STORAGE_SIZE, DindDaemon, SecurityMode};
use crate::error::{Error, Result};
use crate::tls;

/// Label every owned object carries; its value is the DindDaemon's name.
pub const DAEMON_LABEL: &str = "dind.dev/daemon";
/// Carried by every object the operator makes; its watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label a pod needs to reach a daemon through the NetworkPolicy; value: the DindDaemon's name.
pub const CLIENT_LABEL: &str = "dind.dev/client";
/// Pod-template annotation: a digest of the server certificate, so a re-issue rolls the pods
/// (dockerd reads its certificates only at start).
pub const TLS_DIGEST_ANNOTATION: &str = "dind.dev/server-cert-digest";
/// Where the operator itself runs: its pods may reach daemons to read their storage driver.
pub const OPERATOR_NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "dind-operator");

/// Mount points inside the daemon pod.
const DIND_BIN_DIR: &str = "/dind/bin";
const SERVER_TLS_DIR: &str = "/certs/server";
const DATA_ROOT: &str = "/var/lib/docker";
/// dockerd's grace for its containers; the pod's grace must exceed it so dockerd exits cleanly.
pub const DOCKERD_SHUTDOWN_TIMEOUT: i64 = 15;

/// Every capability but SYS_RESOURCE (which the Capabilities mode exists to avoid).
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// What the platform team configured on the operator (Helm values → flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub image: String,
    pub init_image: String,
}

/// Deterministic names of the owned objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub statefulset: String,
    pub headless_service: String,
    pub client_service: String,
    pub server_secret: String,
    pub client_secret: String,
    pub ca_secret: String,
    pub network_policy: String,
}

impl Names {
    pub fn of(name: &str) -> Self {
        Self {
            statefulset: name.to_string(),
            headless_service: format!("{name}-daemons"),
            client_service: name.to_string(),
            server_secret: format!("{name}-server-tls"),
            client_secret: format!("{name}-client"),
            ca_secret: format!("{name}-ca"),
            network_policy: name.to_string(),
        }
    }
}

/// Every object a DindDaemon owns, ready for server-side apply.
#[derive(Clone, Debug)]
pub struct Owned {
    pub statefulset: StatefulSet,
    pub headless_service: Service,
    pub client_service: Service,
    pub network_policy: NetworkPolicy,
    pub ca_secret: Secret,
    pub server_secret: Secret,
    pub client_secret: Secret,
}

/// The DOCKER_HOST of the client Service and of each replica.
pub fn docker_hosts(dd: &DindDaemon, namespace: &str) -> (String, Vec<(String, String)>) {
    let name = dd.name_any();
    let names = Names::of(&name);
    let port = dd.spec.port;
    let service = format!("tcp://{}.{namespace}.svc:{port}", names.client_service);
    let replicas = (0..dd.spec.replicas)
        .map(|i| {
            let pod = format!("{name}-{i}");
            let host = format!("tcp://{pod}.{}.{namespace}.svc:{port}", names.headless_service);
            (pod, host)
        })
        .collect();
    (service, replicas)
}

pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "dind".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), crate::controller::FIELD_MANAGER.to_string()),
        (DAEMON_LABEL.to_string(), name.to_string()),
    ])
}

/// The pod selector: stable across spec changes (a StatefulSet's selector is immutable).
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(DAEMON_LABEL.to_string(), name.to_string()), ("app.kubernetes.io/name".to_string(), "dind".to_string())])
}

fn meta(dd: &DindDaemon, name: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: dd.namespace(),
        labels: Some(labels(&dd.name_any())),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Builds every owned object. Fails only on a DindDaemon without name/namespace/uid.
pub fn build(dd: &DindDaemon, defaults: &Defaults, certs: &tls::Bundle) -> Result<Owned> {
    let owner = dd.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let name = dd.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    dd.metadata.namespace.as_ref().ok_or(Error::MissingField("metadata.namespace"))?;
    let names = Names::of(&name);
    Ok(Owned {
        statefulset: daemon_statefulset(dd, defaults, certs, &names, &owner)?,
        headless_service: headless_service(dd, &names, &owner),
        client_service: client_service(dd, &names, &owner),
        network_policy: network_policy(dd, &names, &owner),
        ca_secret: secret(dd, &names.ca_secret, &owner, None, [("ca.crt", &certs.ca.cert_pem), ("ca.key", &certs.ca.key_pem)]),
        server_secret: secret(
            dd,
            &names.server_secret,
            &owner,
            Some("kubernetes.io/tls"),
            [("ca.crt", &certs.ca.cert_pem), ("tls.crt", &certs.server.cert_pem), ("tls.key", &certs.server.key_pem)],
        ),
        // The file names the Docker CLI expects in DOCKER_CERT_PATH.
        client_secret: secret(
            dd,
            &names.client_secret,
            &owner,
            None,
            [("ca.pem", &certs.ca.cert_pem), ("cert.pem", &certs.client.cert_pem), ("key.pem", &certs.client.key_pem)],
        ),
    })
}

fn secret<const N: usize>(dd: &DindDaemon, name: &str, owner: &OwnerReference, type_: Option<&str>, data: [(&str, &String); N]) -> Secret {
    Secret {
        metadata: meta(dd, name, owner),
        type_: Some(type_.unwrap_or("Opaque").to_string()),
        data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

/// The certificate pair stored under `cert_key`/`key_key` of a Secret, if both are there.
pub fn pair_from_secret(secret: &Secret, cert_key: &str, key_key: &str) -> Option<tls::Pair> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(tls::Pair { cert_pem: text(cert_key)?, key_pem: text(key_key)? })
}

/// The pairs kept in a DindDaemon's CA, server and client Secrets (the inverse of `build`).
pub fn pairs_from_secrets(
    ca: Option<&Secret>,
    server: Option<&Secret>,
    client: Option<&Secret>,
) -> (Option<tls::Pair>, Option<tls::Pair>, Option<tls::Pair>) {
    (
        ca.and_then(|s| pair_from_secret(s, "ca.crt", "ca.key")),
        server.and_then(|s| pair_from_secret(s, "tls.crt", "tls.key")),
        client.and_then(|s| pair_from_secret(s, "cert.pem", "key.pem")),
    )
}

/// dind-init's arguments for this spec: everything the daemon needs, as flags we own.
pub fn dind_init_args(dd: &DindDaemon) -> Result<Vec<String>> {
    let spec = &dd.spec;
    let mut args = vec![format!("--port={}", spec.port), format!("--shutdown-timeout={DOCKERD_SHUTDOWN_TIMEOUT}")];
    if spec.tls.enabled {
        args.push(format!("--tls-dir={SERVER_TLS_DIR}"));
    } else {
        args.push("--tls=false".to_string());
    }
    if let Some(mtu) = spec.daemon.mtu {
        args.push(format!("--mtu={mtu}"));
    }
    if let Some(driver) = spec.daemon.storage_driver {
        args.push(format!("--storage-driver={}", driver.as_str()));
    }
    args.extend(spec.daemon.registry_mirrors.iter().map(|m| format!("--registry-mirror={m}")));
    args.extend(spec.daemon.insecure_registries.iter().map(|r| format!("--insecure-registry={r}")));
    if let Some(config) = &spec.daemon.config {
        let json = serde_json::to_string(config).map_err(|source| Error::Serialize { what: "daemon.config", source })?;
        args.push(format!("--daemon-config={json}"));
    }
    if !spec.daemon.extra_args.is_empty() {
        args.push("--".to_string());
        args.extend(spec.daemon.extra_args.iter().cloned());
    }
    Ok(args)
}

fn security_context(mode: SecurityMode) -> SecurityContext {
    // The seed's LSM warning: an inner Docker's profiles conflict with the outer one's, so
    // AppArmor is unconfined and SELinux uses spc_t ("super privileged container").
    let base = SecurityContext {
        app_armor_profile: Some(AppArmorProfile { type_: "Unconfined".into(), localhost_profile: None }),
        se_linux_options: Some(SELinuxOptions { type_: Some("spc_t".into()), ..Default::default() }),
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        ..Default::default()
    };
    match mode {
        SecurityMode::Privileged => SecurityContext { privileged: Some(true), allow_privilege_escalation: Some(true), ..base },
        SecurityMode::Capabilities => SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(true),
            capabilities: Some(Capabilities { add: Some(CAPABILITIES.iter().map(|c| (*c).to_string()).collect()), drop: None }),
            seccomp_profile: Some(SeccompProfile { type_: "Unconfined".into(), localhost_profile: None }),
            ..base
        },
    }
}

fn probe(period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(vec![format!("{DIND_BIN_DIR}/dind-init"), "probe".into()]) }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

/// The PVC retention policy string for `storage.retainOnDelete`.
fn retention(retain: bool) -> String {
    if retain { "Retain" } else { "Delete" }.to_string()
}

pub fn daemon_statefulset(
    dd: &DindDaemon,
    defaults: &Defaults,
    certs: &tls::Bundle,
    names: &Names,
    owner: &OwnerReference,
) -> Result<StatefulSet> {
    let spec = &dd.spec;
    let name = dd.name_any();
    let mut volumes = vec![Volume {
        name: "dind-bin".into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("64Mi".into())), ..Default::default() }),
        ..Default::default()
    }];
    let mut mounts = vec![
        VolumeMount { name: "docker".into(), mount_path: DATA_ROOT.into(), ..Default::default() },
        VolumeMount { name: "dind-bin".into(), mount_path: DIND_BIN_DIR.into(), read_only: Some(true), ..Default::default() },
    ];
    if spec.tls.enabled {
        volumes.push(Volume {
            name: "server-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.server_secret.clone()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "server-tls".into(),
            mount_path: SERVER_TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut claims = None;
    if spec.storage.ephemeral {
        volumes.push(Volume { name: "docker".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() });
    } else {
        let size = spec.storage.size.clone().unwrap_or_else(|| DEFAULT_STORAGE_SIZE.to_string());
        claims = Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some("docker".into()), labels: Some(selector(&name)), ..Default::default() },
            spec: Some(PersistentVolumeClaimSpec {
                // One daemon per volume: dockerd must have /var/lib/docker to itself.
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    let args = dind_init_args(dd)?;
    let install = Container {
        name: "install-dind-init".into(),
        image: Some(spec.init_image.clone().unwrap_or_else(|| defaults.init_image.clone())),
        command: Some(vec!["/dind-init".into(), "install".into(), DIND_BIN_DIR.into()]),
        volume_mounts: Some(vec![VolumeMount { name: "dind-bin".into(), mount_path: DIND_BIN_DIR.into(), ..Default::default() }]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let daemon = Container {
        name: "dockerd".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        command: Some(vec![format!("{DIND_BIN_DIR}/dind-init")]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("docker".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(mounts),
        resources: spec.resources.clone(),
        security_context: Some(security_context(spec.security.mode)),
        // Startup: up to 2 minutes for a first start on a slow volume; then readiness every 5 s.
        // dind-init's last error (e.g. the lock holder) shows in the pod's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        startup_probe: Some(probe(1, 120)),
        readiness_probe: Some(probe(5, 2)),
        ..Default::default()
    };
    let digest = certs_digest(&certs.server.cert_pem);
    Ok(StatefulSet {
        metadata: meta(dd, &names.statefulset, owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless_service.clone()),
            selector: LabelSelector { match_labels: Some(selector(&name)), ..Default::default() },
            // Daemons are independent; there is no ordering to wait for.
            pod_management_policy: Some("Parallel".into()),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(retention(spec.storage.retain_on_delete)),
                when_scaled: Some(retention(spec.storage.retain_on_delete)),
            }),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: spec.tls.enabled.then(|| BTreeMap::from([(TLS_DIGEST_ANNOTATION.to_string(), digest)])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![install]),
                    containers: vec![daemon],
                    volumes: Some(volumes),
                    // Kubernetes would inject DIND_* service variables into the daemon's env.
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(DOCKERD_SHUTDOWN_TIMEOUT + 30),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    runtime_class_name: spec.security.runtime_class_name.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// A short digest of the server certificate (FNV-1a; identity, not security).
fn certs_digest(pem: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pem.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn service_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("docker".into()),
        port,
        target_port: Some(IntOrString::String("docker".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Per-daemon DNS names (NAME-i.NAME-daemons.NS.svc), also for daemons not yet ready.
pub fn headless_service(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(dd, &names.headless_service, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&dd.name_any())),
            ports: Some(vec![service_port(dd.spec.port)]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service (NAME.NS.svc). Sticky per client so that, with several daemons, one
/// client's build and run land on the same daemon.
pub fn client_service(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(dd, &names.client_service, owner),
        spec: Some(ServiceSpec {
            selector: Some(selector(&dd.name_any())),
            ports: Some(vec![service_port(dd.spec.port)]),
            session_affinity: Some("ClientIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Admits the daemon port only from pods labelled `dind.dev/client: NAME` (same namespace),
/// and from the operator (which asks each daemon for its storage driver).
pub fn network_policy(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> NetworkPolicy {
    let name = dd.name_any();
    NetworkPolicy {
        metadata: meta(dd, &names.network_policy, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(&name)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(CLIENT_LABEL.to_string(), name.clone())])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(OPERATOR_NAME_LABEL.0.to_string(), OPERATOR_NAME_LABEL.1.to_string())])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(dd.spec.port)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DindDaemonSpec, StorageDriver};
    use serde_json::json;
    use time::OffsetDateTime;

    fn daemon(spec: serde_json::Value) -> DindDaemon {
        let spec: DindDaemonSpec = serde_json::from_value(spec).unwrap();
        let mut dd = DindDaemon::new("ci", spec);
        dd.metadata.namespace = Some("builds".into());
        dd.metadata.uid = Some("0000-uid".into());
        dd
    }

    fn defaults() -> Defaults {
        Defaults { image: "docker:28.5.2-dind".into(), init_image: "dind-init:test".into() }
    }

    fn certs() -> tls::Bundle {
        let names = tls::server_names("ci", "builds", "ci-daemons", 1);
        tls::plan(None, None, None, "builds", "ci", &names, OffsetDateTime::now_utc()).unwrap().bundle
    }

    fn pod(o: &Owned) -> PodSpec {
        o.statefulset.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn minimal_spec_builds_every_owned_object_with_owner_refs() {
        let dd = daemon(json!({}));
        let o = build(&dd, &defaults(), &certs()).unwrap();
        let metas = [
            &o.statefulset.metadata,
            &o.headless_service.metadata,
            &o.client_service.metadata,
            &o.network_policy.metadata,
            &o.ca_secret.metadata,
            &o.server_secret.metadata,
            &o.client_secret.metadata,
        ];
        for m in metas {
            let refs = m.owner_references.as_ref().unwrap();
            assert_eq!(refs.len(), 1);
            assert_eq!(refs[0].kind, "DindDaemon");
            assert_eq!(refs[0].controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("builds"));
        }
        let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
        assert_eq!(names, ["ci", "ci-daemons", "ci", "ci", "ci-ca", "ci-server-tls", "ci-client"]);

        let sts = o.statefulset.spec.clone().unwrap();
        assert_eq!(sts.replicas, Some(1));
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
        assert_eq!(c.args.as_ref().unwrap(), &vec!["--port=2376", "--shutdown-timeout=15", "--tls-dir=/certs/server"]);
        assert!(pod.termination_grace_period_seconds.unwrap() > DOCKERD_SHUTDOWN_TIMEOUT);
        assert_eq!(c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap()[1], "probe");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(true));
        assert_eq!(sc.se_linux_options.as_ref().unwrap().type_.as_deref(), Some("spc_t"));
        assert_eq!(sc.app_armor_profile.as_ref().unwrap().type_, "Unconfined");

        let client = o.client_secret.data.unwrap();
        assert!(["ca.pem", "cert.pem", "key.pem"].iter().all(|k| client.contains_key(*k)));
        let server = o.server_secret.data.unwrap();
        assert!(!server.contains_key("ca.key"), "the CA key must not be mounted into daemon pods");
        assert!(o.ca_secret.data.unwrap().contains_key("ca.key"));

        let np = o.network_policy.spec.unwrap();
        let from = np.ingress.unwrap()[0].from.clone().unwrap();
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[CLIENT_LABEL], "ci");
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
        let o = build(&dd, &defaults(), &certs()).unwrap();
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
        let args = c.args.clone().unwrap();
        for want in [
            "--port=3376",
            "--mtu=1400",
            "--storage-driver=vfs",
            "--registry-mirror=https://mirror.local",
            "--insecure-registry=r.local:5000",
            r#"--daemon-config={"log-level":"warn"}"#,
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
        let o = build(&dd, &defaults(), &certs()).unwrap();
        let sts = o.statefulset.spec.clone().unwrap();
        assert!(sts.volume_claim_templates.is_none());
        let pod = pod(&o);
        let vols = pod.volumes.unwrap();
        assert!(vols.iter().any(|v| v.name == "docker" && v.empty_dir.is_some()));
        assert!(!vols.iter().any(|v| v.name == "server-tls"));
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
        let o = build(&dd, &defaults(), &certs()).unwrap();
        assert_eq!(o.client_service.spec.unwrap().session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(o.headless_service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    }

    #[test]
    fn a_new_server_certificate_changes_the_pod_template() {
        let dd = daemon(json!({}));
        let a = build(&dd, &defaults(), &certs()).unwrap();
        let b = build(&dd, &defaults(), &certs()).unwrap();
        let ann =
            |o: &Owned| o.statefulset.spec.clone().unwrap().template.metadata.unwrap().annotations.unwrap()[TLS_DIGEST_ANNOTATION].clone();
        assert_ne!(ann(&a), ann(&b));
        let (ca, server, client) = pairs_from_secrets(Some(&a.ca_secret), Some(&a.server_secret), Some(&a.client_secret));
        let kept = tls::Bundle { ca: ca.unwrap(), server: server.unwrap(), client: client.unwrap() };
        let again = build(&dd, &defaults(), &kept).unwrap();
        assert_eq!(ann(&a), ann(&again));
    }
}
