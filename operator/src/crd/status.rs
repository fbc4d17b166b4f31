//! What a DindDaemon's status shows.

use super::*;

/// One volume of a sidecar DindDaemon's pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolVolume {
    /// The PersistentVolumeClaim.
    pub name: String,
    /// The pod that holds it (`namespace/name`), or the lease's id until the pod exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_to: Option<String>,
    /// When it was leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_at: Option<String>,
}

/// Observed state of a DindDaemon.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DindDaemonStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Daemons that are ready: they answer `/_ping` and their Service routes to them.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Daemon pods that exist, ready or not (the scale subresource's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,

    /// The daemon pods' label selector, as a string (the scale subresource's selector, which
    /// a HorizontalPodAutoscaler reads to find the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Ready daemons over desired, e.g. `1/1` (the Ready column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// DOCKER_HOST for clients: the client Service with one replica; with more, the first
    /// daemon's own address (see endpoints; a load-balanced address would send a `docker run`
    /// to a daemon that never saw the `docker build` before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,

    /// One entry per daemon: its own DOCKER_HOST, readiness and storage driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<DaemonEndpoint>,

    /// Secret with the client certificate (ca.pem, cert.pem, key.pem) for DOCKER_CERT_PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,

    /// Storage driver the daemons report (the Driver column); `mixed` if they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,

    /// The fullest daemon's disk use, e.g. `37% of 20Gi` (the Disk column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,

    /// Sidecar mode with a volume pool: each volume, and who holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PoolVolume>,

    /// Ready, Progressing and Degraded, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One daemon of a DindDaemon.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonEndpoint {
    /// Pod name, e.g. NAME-0.
    pub name: String,
    /// This daemon's own DOCKER_HOST.
    pub docker_host: String,
    /// Whether it is ready: it answers `/_ping` and the client Service routes to it.
    pub ready: bool,
    /// Storage driver it runs, once it has been asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    /// What it keeps on its volume, as `docker system df` counts it (asked every minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<EndpointDisk>,
}

/// One daemon's disk usage (see `status.endpoints[].disk`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDisk {
    /// Size of its volume (`storage.size`); absent for an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_bytes: Option<i64>,
    /// Bytes of images, build cache, containers and volumes.
    pub used_bytes: i64,
    /// Percent of the volume used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i32>,
    /// Bytes of build cache (records not shared with images).
    pub build_cache_bytes: i64,
    /// Images it holds.
    pub images: i32,
    /// The last prune that freed something (see `spec.cache.prune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<LastPrune>,
}

/// One daemon's last prune.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPrune {
    /// When it ended (RFC 3339).
    pub time: String,
    /// Bytes freed, as `/system/df` counts them before and after (or as dockerd reports its
    /// build-cache prune, when that is more).
    pub freed_bytes: i64,
    /// Why it ran: `Idle` or `HighWater`.
    pub reason: String,
    /// What it removed, e.g. `2 images, 1 stopped container, build cache 120Mi`.
    pub removed: String,
}
