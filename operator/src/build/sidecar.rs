//! The daemon a `Sidecar`-mode DindDaemon puts into each pod that asks for it (pure): the same
//! `dind-init` and daemon container as a pool daemon, but a native sidecar (an init container
//! with `restartPolicy: Always`, Kubernetes ≥ 1.29) that answers on a unix socket in a volume
//! shared with the pod's containers, with /var/lib/docker in an emptyDir of the pod.
//!
//! Start: the postStart gate (`dind-init wait`, every 20 ms) holds the sidecar until dockerd
//! answers, and the kubelet starts the pod's containers only after a sidecar's postStart
//! returns; a startup probe would be asked at most once a second. Stop: when the pod's
//! containers have ended, the kubelet sends the sidecar SIGTERM; dind-init forwards it and
//! dockerd stops its containers within `--shutdown-timeout` and exits 0.

use dind_contract::client_pod::{SOCKET, SOCKET_DIR};
use dind_contract::{BIN_DIR, DATA_ROOT};
use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::Defaults;
use super::dind_init::{Listen, dind_init_args};
use super::statefulset::{daemon_container, install_container};
use crate::crd::{DEFAULT_STORAGE_SIZE, DindDaemon};
use crate::error::Result;
use crate::names;

/// What the webhook adds to a pod: two init containers (install, then the daemon as a native
/// sidecar), in this order, and their volumes.
#[derive(Clone, Debug, PartialEq)]
pub struct Sidecar {
    pub init_containers: Vec<Container>,
    pub volumes: Vec<Volume>,
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

/// The sidecar of `dd`; /var/lib/docker is pool claim `claim` when the pod leased one, else an
/// emptyDir of `storage.size`.
pub fn sidecar(dd: &DindDaemon, defaults: &Defaults, claim: Option<&str>) -> Result<Sidecar> {
    let spec = &dd.spec;
    let mut install = install_container(spec.init_image.clone().unwrap_or_else(|| defaults.init_image.clone()));
    install.name = names::SIDECAR_INSTALL.into();
    install.volume_mounts = Some(vec![mount(names::SIDECAR_BIN_VOLUME, BIN_DIR, false)]);
    let mounts = vec![
        mount(names::SIDECAR_DATA_VOLUME, DATA_ROOT, false),
        mount(names::SIDECAR_BIN_VOLUME, BIN_DIR, true),
        mount(names::SIDECAR_SOCKET_VOLUME, SOCKET_DIR, false),
    ];
    let mut daemon = daemon_container(dd, defaults, dind_init_args(dd, Listen::SocketOnly)?, mounts);
    daemon.name = names::SIDECAR_DAEMON.into();
    daemon.restart_policy = Some("Always".into());
    // `dind-init wait` (postStart) and `probe` (liveness) read the socket from here too.
    daemon.env = Some(vec![EnvVar { name: "DIND_INIT_SOCKET".into(), value: Some(SOCKET.into()), ..Default::default() }]);
    let size = spec.storage.size.clone().unwrap_or_else(|| DEFAULT_STORAGE_SIZE.to_string());
    let data = match claim {
        Some(claim) => Volume {
            name: names::SIDECAR_DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
            ..Default::default()
        },
        None => empty_dir(names::SIDECAR_DATA_VOLUME, &size),
    };
    Ok(Sidecar {
        init_containers: vec![install, daemon],
        volumes: vec![empty_dir(names::SIDECAR_BIN_VOLUME, "64Mi"), empty_dir(names::SIDECAR_SOCKET_VOLUME, "1Mi"), data],
    })
}
