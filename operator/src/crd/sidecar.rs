//! Sidecar mode: the mode itself, the pool of warm volumes, the sidecar's listener.

use super::*;

/// How a DindDaemon's daemons run (see `spec.mode`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DaemonMode {
    /// A StatefulSet of shared daemons (the default).
    #[default]
    Pool,
    /// One daemon inside each pod that asks for it (label `dind.dev/sidecar: NAME`).
    Sidecar,
}

/// Warm volumes for sidecar daemons (see `spec.volumePool`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePoolSpec {
    /// How many volumes to keep (1-64): at most this many pods have a warm cache at once.
    #[schemars(range(min = 1, max = 64))]
    pub size: i32,
    /// What a pod gets when every volume is leased: `EmptyDir` (default: it runs with an empty
    /// cache, and the DindDaemon gets a Warning event) or `Refuse` (the pod is refused, naming
    /// the pool; CI systems retry).
    #[serde(default)]
    pub when_exhausted: WhenExhausted,
}

/// A sidecar daemon's listener (see `spec.sidecar`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Also listen on TCP `spec.port` of the pod (default false: only the unix socket
    /// `/dind/sock/docker.sock`, and nothing on the pod network). For tools that expect
    /// Docker's `tcp://docker:2376` convention. With `tls.enabled` (the default) the daemon
    /// makes its own CA and certificates in the pod (valid for `localhost`, `127.0.0.1`, `::1`
    /// and `docker`; no key leaves the pod, no Secret is involved) and the pod's containers get
    /// `DOCKER_HOST=tcp://localhost:PORT`, `DOCKER_TLS_VERIFY=1` and
    /// `DOCKER_CERT_PATH=/dind/client-certs`. With `tls.enabled: false` they get
    /// `tcp://localhost:PORT` in plain text, and anything that reaches the pod's IP owns the daemon.
    #[serde(default)]
    pub tcp: bool,
}

/// See `volumePool.whenExhausted`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WhenExhausted {
    #[default]
    EmptyDir,
    Refuse,
}
