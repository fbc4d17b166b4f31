//! The operator's side of the contract with dind-init: its command-line arguments.

use crate::crd::DindDaemon;
use crate::error::{Error, Result};

/// dockerd's grace for its containers; the pod's grace must exceed it so dockerd exits cleanly.
pub const DOCKERD_SHUTDOWN_TIMEOUT: i64 = dind_contract::SHUTDOWN_TIMEOUT as i64;

/// dind-init's arguments for this spec: everything the daemon needs, as flags we own.
/// `tls_on` is decided once per reconcile (see `build`).
pub fn dind_init_args(dd: &DindDaemon, tls_on: bool) -> Result<Vec<String>> {
    let spec = &dd.spec;
    let mut args = vec![format!("--port={}", spec.port), format!("--shutdown-timeout={DOCKERD_SHUTDOWN_TIMEOUT}")];
    if tls_on {
        args.push(format!("--tls-dir={}", dind_contract::SERVER_TLS_DIR));
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
