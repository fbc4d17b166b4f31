//! The operator's side of the contract with dind-init: where a daemon pod gets the binary, and
//! its command-line arguments.

use dind_contract::{BIN_DIR, BINARY};

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
        Self::Copied(spec.init_image.clone().unwrap_or_else(|| defaults.init_image.clone()))
    }

    /// The path the daemon container runs `dind-init` from.
    pub fn binary(&self) -> String {
        match self {
            Self::InImage(path) => path.clone(),
            Self::Copied(_) => format!("{BIN_DIR}/{BINARY}"),
        }
    }

    /// The image the install container copies from; `None` when nothing is copied.
    pub fn install_image(&self) -> Option<&str> {
        match self {
            Self::InImage(_) => None,
            Self::Copied(image) => Some(image),
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
pub fn dind_init_args(dd: &DindDaemon, listen: Listen) -> Result<Vec<String>> {
    let spec = &dd.spec;
    let mut args = vec![format!("--shutdown-timeout={DOCKERD_SHUTDOWN_TIMEOUT}")];
    match listen {
        Listen::Tcp { tls: true } => {
            args.insert(0, format!("--port={}", spec.port));
            args.push(format!("--tls-dir={}", dind_contract::SERVER_TLS_DIR));
        }
        Listen::Tcp { tls: false } => {
            args.insert(0, format!("--port={}", spec.port));
            args.push("--tls=false".to_string());
        }
        Listen::SocketOnly => {
            args.push("--tcp=false".to_string());
            args.push(format!("--socket={}", dind_contract::client_pod::SOCKET));
        }
        Listen::SidecarTcp { tls } => {
            args.insert(0, format!("--port={}", spec.port));
            args.push(format!("--socket={}", dind_contract::client_pod::SOCKET));
            args.push(if tls { format!("--tls-generate={}", dind_contract::generated_tls::DIR) } else { "--tls=false".to_string() });
        }
    }
    if let Some(mtu) = spec.daemon.mtu {
        args.push(format!("--mtu={mtu}"));
    }
    if let Some(driver) = spec.daemon.storage_driver {
        args.push(format!("--storage-driver={}", driver.as_str()));
    }
    args.extend(spec.daemon.registry_mirrors.iter().map(|m| format!("--registry-mirror={m}")));
    args.extend(spec.daemon.insecure_registries.iter().map(|r| format!("--insecure-registry={r}")));
    let config = crate::cache::daemon_config(spec);
    if !config.is_empty() {
        let json = serde_json::to_string(&config).map_err(|source| Error::Serialize { what: "daemon.config", source })?;
        args.push(format!("--daemon-config={json}"));
    }
    if !spec.daemon.extra_args.is_empty() {
        args.push("--".to_string());
        args.extend(spec.daemon.extra_args.iter().cloned());
    }
    Ok(args)
}
