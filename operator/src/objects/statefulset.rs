//! The StatefulSet of daemons: one pod per daemon (`dind-init` installed by an init container,
//! then run as PID 1 of the daemon image) with its own volume for the data root.

use std::collections::BTreeMap;

use dind_contract::{BIN_DIR, DATA_ROOT, SERVER_TLS_DIR, args};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, ExecAction, Lifecycle, LifecycleHandler,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SELinuxOptions,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use super::dind_init::{DOCKERD_SHUTDOWN_TIMEOUT, DindInitSource, Listen, dind_init_args};
use super::{Defaults, meta};
use crate::crd::{DEFAULT_REQUESTS, DindDaemon, SecurityMode};
use crate::error::Result;
use crate::model::names::{CLAIM_TEMPLATE, Names, TLS_DIGEST_ANNOTATION};
use crate::model::tls;

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

/// `binary` with `args`: an exec command.
fn command(binary: &str, args: Vec<String>) -> Vec<String> {
    std::iter::once(binary.to_string()).chain(args).collect()
}

/// How long the postStart gate waits for dockerd's first answer (a first start on a slow volume).
pub const START_TIMEOUT_MS: u64 = 120_000;

/// The postStart gate: blocks until dockerd answers `/_ping`. The kubelet counts the container
/// as running only once it returns, so the pod turns Ready the moment Docker answers instead of
/// at the next tick of a probe period (measured: apply → Ready 3.81 s → see docs/pool-mode.md).
fn start_gate(binary: &str) -> Lifecycle {
    Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction { command: Some(command(binary, args::Check { wait: true, timeout_ms: START_TIMEOUT_MS }.render())) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The liveness probe: `/_ping`, lenient, because a restart kills every running build: dockerd
/// must fail to answer within 5 s six times in a row, 20 s apart (two minutes), before it is
/// restarted. A busy dockerd answers `/_ping` in milliseconds.
fn liveness(binary: &str) -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(command(binary, args::Check { wait: false, timeout_ms: 5000 }.render())) }),
        period_seconds: Some(20),
        timeout_seconds: Some(10),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

/// The init container that copies `dind-init` into the `dind-bin` volume (the init image is
/// FROM scratch and holds only the binary).
pub fn install_container(image: String) -> Container {
    Container {
        name: "install-dind-init".into(),
        image: Some(image),
        command: Some(command(dind_contract::INIT_IMAGE_BINARY, args::Install { dir: BIN_DIR.into() }.render())),
        volume_mounts: Some(vec![VolumeMount { name: "dind-bin".into(), mount_path: BIN_DIR.into(), ..Default::default() }]),
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
    }
}

/// The daemon container: the daemon image with `dind-init` (from `dind-bin`, or the image's own)
/// as PID 1.
pub fn daemon_container(
    dd: &DindDaemon,
    defaults: &Defaults,
    dind_init: &DindInitSource,
    args: Vec<String>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let spec = &dd.spec;
    let binary = dind_init.binary();
    Container {
        name: "dockerd".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        command: Some(vec![binary.clone()]),
        args: Some(args),
        volume_mounts: Some(mounts),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(security_context(spec.security.mode)),
        // Start: the postStart gate holds the container until dockerd answers (up to 2 minutes
        // for a first start on a slow volume); with no readiness probe it is Ready from then on.
        // A dockerd that stops answering later is restarted by the liveness probe (2 min), and
        // one that exits ends PID 1 and so the container. dind-init's last error (e.g. the lock
        // holder) shows in the pod's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        lifecycle: Some(start_gate(&binary)),
        liveness_probe: Some(liveness(&binary)),
        ..Default::default()
    }
}

/// `crd::DEFAULT_REQUESTS`, as a container's resources.
fn default_resources() -> ResourceRequirements {
    let requests = DEFAULT_REQUESTS.iter().map(|(k, v)| ((*k).to_string(), Quantity((*v).to_string()))).collect();
    ResourceRequirements { requests: Some(requests), ..Default::default() }
}

/// The PVC retention policy string for `storage.retainOnDelete`.
fn retention(retain: bool) -> String {
    if retain { "Retain" } else { "Delete" }.to_string()
}

pub fn daemon_statefulset(
    dd: &DindDaemon,
    defaults: &Defaults,
    certs: Option<&tls::Bundle>,
    names: &Names,
    owner: &OwnerReference,
) -> Result<StatefulSet> {
    let spec = &dd.spec;
    let dind_init = DindInitSource::of(spec, defaults);
    let install_image = dind_init.install_image();
    let mut volumes = Vec::new();
    let mut mounts = vec![VolumeMount { name: CLAIM_TEMPLATE.into(), mount_path: DATA_ROOT.into(), ..Default::default() }];
    if let Some(bin) = dind_init.bin_volume("dind-bin") {
        volumes.push(bin);
        mounts.push(VolumeMount { name: "dind-bin".into(), mount_path: BIN_DIR.into(), read_only: Some(true), ..Default::default() });
    }
    if certs.is_some() {
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
    if let Some((volume, mount)) = super::registry_cas::mounted(dd) {
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut claims = None;
    let size = spec.storage.size().to_string();
    if spec.storage.ephemeral {
        // Limited: past it the kubelet evicts the daemon, not the node's other pods.
        let empty_dir = EmptyDirVolumeSource { size_limit: Some(Quantity(size)), ..Default::default() };
        volumes.push(Volume { name: CLAIM_TEMPLATE.into(), empty_dir: Some(empty_dir), ..Default::default() });
    } else {
        claims = Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(CLAIM_TEMPLATE.into()), labels: Some(names.selector()), ..Default::default() },
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
    let args = dind_init_args(dd, Listen::Tcp { tls: certs.is_some() })?;
    let install = install_image.map(|image| install_container(image.to_string()));
    let mut daemon = daemon_container(dd, defaults, &dind_init, args, mounts);
    daemon.ports = Some(vec![ContainerPort {
        name: Some("docker".into()),
        container_port: spec.port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    Ok(StatefulSet {
        metadata: meta(dd, names, &names.statefulset, owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless_service.clone()),
            selector: LabelSelector { match_labels: Some(names.selector()), ..Default::default() },
            // Daemons are independent; there is no ordering to wait for.
            pod_management_policy: Some("Parallel".into()),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(retention(spec.storage.retain_on_delete)),
                when_scaled: Some(retention(spec.storage.retain_on_delete)),
            }),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.labels()),
                    // No certificate digest: a renewed certificate must not restart every
                    // daemon at once (see `model::cert_roll`).
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: install.map(|i| vec![i]),
                    containers: vec![daemon],
                    volumes: Some(volumes),
                    // Kubernetes would inject DIND_* service variables into the daemon's env.
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(DOCKERD_SHUTDOWN_TIMEOUT + 30),
                    node_selector: super::placed(spec.node_selector.as_ref(), defaults),
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

/// Keeps the certificate digest an operator before 0.1 (issue 24) put in the pod template of the
/// StatefulSet that exists: dropping it would restart every daemon at the upgrade, which is what
/// leaving it out prevents.
pub fn keep_cert_digest(sts: &mut StatefulSet, existing: Option<&StatefulSet>) {
    let Some(value) =
        existing.and_then(|e| e.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(TLS_DIGEST_ANNOTATION).cloned())
    else {
        return;
    };
    if let Some(meta) = sts.spec.as_mut().map(|s| s.template.metadata.get_or_insert_with(Default::default)) {
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(TLS_DIGEST_ANNOTATION.to_string(), value);
    }
}

/// The size of a StatefulSet's volume claim template (`storage.size` when it was made).
pub fn claim_size(sts: &StatefulSet) -> Option<&str> {
    let template =
        sts.spec.as_ref()?.volume_claim_templates.as_ref()?.iter().find(|c| c.metadata.name.as_deref() == Some(CLAIM_TEMPLATE))?;
    Some(template.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?.0.as_str())
}

/// Keeps the claim template's size of the StatefulSet that exists (`existing`): the apiserver
/// refuses any change to volume claim templates, so a raised `storage.size` grows the claims
/// themselves (`controller::volumes`), never the template.
pub fn keep_claim_size(sts: &mut StatefulSet, existing: Option<&str>) {
    let Some(existing) = existing else { return };
    let templates = sts.spec.as_mut().and_then(|s| s.volume_claim_templates.as_mut());
    for template in templates.into_iter().flatten().filter(|c| c.metadata.name.as_deref() == Some(CLAIM_TEMPLATE)) {
        if let Some(requests) = template.spec.as_mut().and_then(|s| s.resources.as_mut()).and_then(|r| r.requests.as_mut()) {
            requests.insert("storage".into(), Quantity(existing.to_string()));
        }
    }
}
