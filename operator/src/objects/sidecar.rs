//! The daemon a `Sidecar`-mode DindDaemon puts into each pod that asks for it (pure): the same
//! `dind-init` and daemon container as a pool daemon, but a native sidecar (an init container
//! with `restartPolicy: Always`, Kubernetes ≥ 1.29) that answers on a unix socket in a volume
//! shared with the pod's containers (and, with `spec.sidecar.tcp`, on the pod's TCP port too,
//! with mutual TLS from certificates it makes in the pod), with /var/lib/docker in an emptyDir
//! of the pod or a volume of the pool.
//!
//! Start: the postStart gate (`dind-init wait`, every 20 ms) holds the sidecar until dockerd
//! answers, and the kubelet starts the pod's containers only after a sidecar's postStart
//! returns; a startup probe would be asked at most once a second. Stop: when the pod's
//! containers have ended, the kubelet sends the sidecar SIGTERM; dind-init forwards it and
//! dockerd stops its containers within `--shutdown-timeout` and exits 0.

use dind_contract::client_pod::{CERTS_DIR, SOCKET, SOCKET_DIR};
use dind_contract::{BIN_DIR, DATA_ROOT, generated_tls};
use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::Defaults;
use super::dind_init::{DindInitSource, Listen, dind_init_args};
use super::statefulset::{daemon_container, install_container};
use crate::crd::DindDaemon;
use crate::error::Result;
use crate::model::names;

/// What the webhook adds to a pod: two init containers (install, then the daemon as a native
/// sidecar), in this order, and their volumes; and what each of the pod's containers gets to
/// reach the daemon: `env` (`DOCKER_HOST` first) and `mounts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sidecar {
    pub init_containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<VolumeMount>,
    /// `spec.security.runtimeClassName`: the pod's runtime class (a pod-level setting: every
    /// container of the pod runs under it, as the daemon must).
    pub runtime_class_name: Option<String>,
    /// The platform's placement (`Defaults::placement`): node labels the whole pod must be
    /// scheduled by, since its daemon is.
    pub placement: std::collections::BTreeMap<String, String>,
    /// The taint keys the pod may tolerate (`Defaults::toleration_keys`); None: any.
    pub toleration_keys: Option<Vec<String>>,
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), ..Default::default() }
}

fn empty_dir(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity(size.into())), ..Default::default() }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: read_only.then_some(true), ..Default::default() }
}

/// The DOCKER_HOST of the pod's containers (also the DindDaemon's `status.dockerHost`).
pub fn sidecar_docker_host(dd: &DindDaemon) -> String {
    if dd.spec.sidecar.as_ref().is_some_and(|s| s.tcp) { format!("tcp://localhost:{}", dd.spec.port) } else { format!("unix://{SOCKET}") }
}

/// The sidecar of `dd`; /var/lib/docker is pool claim `claim` when the pod leased one, else an
/// emptyDir of `storage.size`.
pub fn sidecar(dd: &DindDaemon, defaults: &Defaults, claim: Option<&str>) -> Result<Sidecar> {
    let spec = &dd.spec;
    let dind_init = DindInitSource::of(spec, defaults);
    let install_image = dind_init.install_image();
    let bin_volume = dind_init.bin_volume(names::SIDECAR_BIN_VOLUME);
    let install = install_image.map(|image| {
        let mut install = install_container(image.to_string());
        install.name = names::SIDECAR_INSTALL.into();
        install.volume_mounts =
            Some(vec![mount(names::SIDECAR_BIN_VOLUME, BIN_DIR, false), mount(names::NO_TOKEN_VOLUME, names::TOKEN_DIR, true)]);
        install
    });
    // The DindDaemon's images run in the job's pod, but not with its service-account token.
    let mut mounts = vec![
        mount(names::SIDECAR_DATA_VOLUME, DATA_ROOT, false),
        mount(names::SIDECAR_SOCKET_VOLUME, SOCKET_DIR, false),
        mount(names::NO_TOKEN_VOLUME, names::TOKEN_DIR, true),
    ];
    if bin_volume.is_some() {
        mounts.insert(1, mount(names::SIDECAR_BIN_VOLUME, BIN_DIR, true));
    }
    // What the pod's containers get. The socket is always there (and what the start gate asks).
    let docker_host = env("DOCKER_HOST", sidecar_docker_host(dd));
    let mut client_env = vec![docker_host.clone()];
    let mut client_mounts = vec![mount(names::SIDECAR_SOCKET_VOLUME, SOCKET_DIR, false)];
    let mut extra_volumes = Vec::new();
    let tcp = spec.sidecar.as_ref().is_some_and(|s| s.tcp);
    let listen = match (tcp, super::certificates_wanted(dd)) {
        (false, _) => Listen::SocketOnly,
        (true, false) => Listen::SidecarTcp { tls: false },
        (true, true) => {
            // dind-init makes the pod's own CA and certificates here (`--tls-generate`); the
            // pod's containers see only the client's files.
            mounts.push(mount(names::SIDECAR_CERTS_VOLUME, generated_tls::DIR, false));
            extra_volumes.push(empty_dir(names::SIDECAR_CERTS_VOLUME, "1Mi"));
            client_mounts
                .push(VolumeMount { sub_path: Some(generated_tls::CLIENT.into()), ..mount(names::SIDECAR_CERTS_VOLUME, CERTS_DIR, true) });
            client_env = vec![docker_host, env("DOCKER_TLS_VERIFY", "1".into()), env("DOCKER_CERT_PATH", CERTS_DIR.into())];
            Listen::SidecarTcp { tls: true }
        }
    };
    if let Some((volume, mount)) = super::registry_cas::mounted(dd) {
        extra_volumes.push(volume);
        mounts.push(mount);
    }
    let mut daemon = daemon_container(dd, defaults, &dind_init, dind_init_args(dd, listen)?, mounts);
    daemon.name = names::SIDECAR_DAEMON.into();
    daemon.restart_policy = Some("Always".into());
    // `dind-init wait` (postStart) and `probe` (liveness) read the socket from here too.
    daemon.env = Some(vec![EnvVar { name: "DIND_INIT_SOCKET".into(), value: Some(SOCKET.into()), ..Default::default() }]);
    let size = spec.storage.size().to_string();
    let data = match claim {
        Some(claim) => Volume {
            name: names::SIDECAR_DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
            ..Default::default()
        },
        None => empty_dir(names::SIDECAR_DATA_VOLUME, &size),
    };
    let mut volumes: Vec<Volume> = bin_volume.into_iter().collect();
    volumes.extend([empty_dir(names::SIDECAR_SOCKET_VOLUME, "1Mi"), empty_dir(names::NO_TOKEN_VOLUME, "1Mi"), data]);
    volumes.extend(extra_volumes);
    Ok(Sidecar {
        init_containers: install.into_iter().chain([daemon]).collect(),
        volumes,
        env: client_env,
        mounts: client_mounts,
        runtime_class_name: spec.security.runtime_class_name.clone(),
        placement: defaults.placement.clone(),
        toleration_keys: defaults.toleration_keys.clone(),
    })
}
