//! The operator's side of the contract with dind-init: where a daemon pod gets the binary, and
//! its command-line arguments.

use dind_contract::{BIN_DIR, BINARY, args};
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, ImageVolumeSource, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::Defaults;
use crate::crd::{DindDaemon, DindDaemonSpec};
use crate::error::{Error, Result};

/// Where a daemon pod gets `dind-init` from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DindInitSource {
    /// The daemon image carries it at this path: no install container, no `dind-bin` volume.
    InImage(String),
    /// An install container copies it from this (FROM scratch) image into the `dind-bin` volume.
    Copied(String),
    /// This (FROM scratch) image is the `dind-bin` volume itself, a Kubernetes image volume
    /// (beta and on by default since 1.35; containerd 2.1+, CRI-O 1.31+): no install container.
    /// Where the platform team says its nodes have them (`--dind-init-image-volume`).
    Mounted(String),
}

impl DindInitSource {
    /// The one place this is decided. In order: the spec's `dindInitPath`; the spec's
    /// `initImage` (an explicit ask to copy); a spec with an image of its own gets a copy (its
    /// image may lack the binary); else the default image, which carries it where the platform
    /// team says so (`--default-image-dind-init-path`; the chart's own daemon image does), or
    /// a copy from the default init image.
    pub fn of(spec: &DindDaemonSpec, defaults: &Defaults) -> Self {
        if let Some(path) = &spec.dind_init_path {
            return Self::InImage(path.clone());
        }
        if spec.image.is_none()
            && spec.init_image.is_none()
            && let Some(path) = &defaults.image_dind_init_path
        {
            return Self::InImage(path.clone());
        }
        let image = spec.init_image.clone().unwrap_or_else(|| defaults.init_image.clone());
        if defaults.init_image_volume { Self::Mounted(image) } else { Self::Copied(image) }
    }

    /// The path the daemon container runs `dind-init` from.
    pub fn binary(&self) -> String {
        match self {
            Self::InImage(path) => path.clone(),
            // The init image holds the binary at its root (`/dind-init`): copied into, or
            // mounted as, the volume at BIN_DIR.
            Self::Copied(_) | Self::Mounted(_) => format!("{BIN_DIR}/{BINARY}"),
        }
    }

    /// The image the install container copies from; `None` when nothing is copied.
    pub fn install_image(&self) -> Option<&str> {
        match self {
            Self::InImage(_) | Self::Mounted(_) => None,
            Self::Copied(image) => Some(image),
        }
    }

    /// The volume named `name` the daemon container mounts read-only at BIN_DIR: an emptyDir
    /// the install container fills, or the init image itself; `None` when the image carries it.
    pub fn bin_volume(&self, name: &str) -> Option<Volume> {
        match self {
            Self::InImage(_) => None,
            Self::Copied(_) => Some(Volume {
                name: name.into(),
                empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("64Mi".into())), ..Default::default() }),
                ..Default::default()
            }),
            Self::Mounted(image) => Some(Volume {
                name: name.into(),
                image: Some(ImageVolumeSource { reference: Some(image.clone()), pull_policy: Some("IfNotPresent".into()) }),
                ..Default::default()
            }),
        }
    }
}

/// dockerd's grace for its containers; the pod's grace must exceed it so dockerd exits cleanly.
pub const DOCKERD_SHUTDOWN_TIMEOUT: i64 = dind_contract::SHUTDOWN_TIMEOUT as i64;

/// Where the daemon answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// On `spec.port`, with mutual TLS when `tls` (a pool daemon); `tls` is decided once per
    /// reconcile (see `build`).
    Tcp { tls: bool },
    /// On its unix socket only (a sidecar: the pod's containers share the socket's volume).
    SocketOnly,
    /// A sidecar on its unix socket and on `spec.port`, with mutual TLS when `tls` from
    /// certificates it makes in the pod (`--tls-generate`).
    SidecarTcp { tls: bool },
}

/// dind-init's arguments for this spec: everything the daemon needs, as flags we own.
/// `spec.port` as a TCP port (the CRD keeps it within 1-65535).
fn port(p: i32) -> Result<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0).ok_or(Error::MissingField("spec.port within 1-65535"))
}

pub fn dind_init_args(dd: &DindDaemon, listen: Listen) -> Result<Vec<String>> {
    let spec = &dd.spec;
    let mut run = args::Run { shutdown_timeout: Some(dind_contract::SHUTDOWN_TIMEOUT), ..Default::default() };
    match listen {
        Listen::Tcp { tls: true } => {
            run.port = Some(port(spec.port)?);
            run.tls_dir = Some(dind_contract::SERVER_TLS_DIR.to_string());
        }
        Listen::Tcp { tls: false } => {
            run.port = Some(port(spec.port)?);
            run.tls = Some(false);
        }
        Listen::SocketOnly => {
            run.tcp = Some(false);
            run.socket = Some(dind_contract::client_pod::SOCKET.to_string());
            run.socket_group = Some(dind_contract::client_pod::SOCKET_GID);
        }
        Listen::SidecarTcp { tls } => {
            run.port = Some(port(spec.port)?);
            run.socket = Some(dind_contract::client_pod::SOCKET.to_string());
            run.socket_group = Some(dind_contract::client_pod::SOCKET_GID);
            if tls {
                run.tls_generate = Some(dind_contract::generated_tls::DIR.to_string());
            } else {
                run.tls = Some(false);
            }
        }
    }
    run.mtu = spec.daemon.mtu.map(|m| u32::try_from(m).unwrap_or_default());
    run.storage_driver = spec.daemon.storage_driver.map(|d| d.as_str().to_string());
    run.registry_mirrors = spec.daemon.registry_mirrors.clone();
    run.insecure_registries = spec.daemon.insecure_registries.clone();
    let config = crate::disk::daemon_config(spec);
    if !config.is_empty() {
        run.daemon_config = Some(serde_json::to_string(&config).map_err(|source| Error::Serialize { what: "daemon.config", source })?);
    }
    run.dockerd_args = spec.daemon.extra_args.clone();
    Ok(run.render())
}
