//! The cache on a daemon's volume: the build-cache target, the high-water mark, pruning.

use super::*;

/// The cache on a daemon's volume (see `spec.cache`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Build cache dockerd keeps: a quantity (`10Gi`) or a percentage of `storage.size`
    /// (`50%`, 1-99%; with `storage.ephemeral`, of the emptyDir's size limit). Default `50%`. Kept by dockerd's own garbage collector (BuildKit's, set
    /// as `builder.gc` in daemon.json, in bytes): it prunes the least recently used records
    /// after builds and now and then, and never one a running build uses. Given here, it sets
    /// `builder.gc.enabled` and `builder.gc.defaultKeepStorage` over whatever
    /// `daemon.config.builder` says (its other settings stay); not given, a hand-written
    /// `daemon.config.builder` stands as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[1-9][0-9]?%$') || (isQuantity(self) && quantity(self).isGreaterThan(quantity('0')))")
        .message("cache.buildCacheKeep must be a positive quantity such as 10Gi, or a percentage of storage.size from 1% to 99%"))]
    pub build_cache_keep: Option<String>,

    /// Percent of the volume used past which the DindDaemon is `Degraded` with reason
    /// `DiskPressure` (50-99, default 85): builds will soon fail with "no space left on device".
    #[serde(default = "default_high_water")]
    #[schemars(range(min = 50, max = 99))]
    pub high_water_percent: i32,

    /// Pruning of what builds and runs leave behind: images, stopped containers, networks and
    /// anonymous volumes no longer used. The operator prunes a daemon over its mTLS when the
    /// daemon is idle (no running container, no build in progress), or at once when its volume
    /// is past `highWaterPercent`; each prune that frees something is a `Pruned` event, and
    /// `status.endpoints[].lastPrune` shows the last one.
    #[serde(default)]
    pub prune: PruneSpec,
}

/// See `spec.cache.prune`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneSpec {
    /// Prune at all (default true). Off, nothing but dockerd's own build-cache collector
    /// (`buildCacheKeep`) frees space.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How long something must have been unused before it is pruned, as a duration (`24h`,
    /// `90m`, `30s`; default `24h`): stopped containers and networks created longer ago;
    /// anonymous volumes no container uses, created longer ago; images no container uses that
    /// the operator has not seen used (a container made from them, `docker run --rm` too)
    /// for that long. Named volumes are never pruned. The operator keeps images' last use in
    /// memory: after it restarts, every image counts as used at that moment.
    #[serde(default = "default_unused_for")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s')")
        .message("cache.prune.unusedFor must be a duration of at least 1s such as 24h, 90m or 30s (no days: 168h is a week)"))]
    pub unused_for: String,

    /// Images to keep however long unused: patterns matched against each tag
    /// (`repository:tag`, `*` matches any run of characters), e.g. `golang:*`,
    /// `registry.example.com/team/*`. An image with one matching tag is kept whole; untagged
    /// images match nothing. Containers labelled `dind.dev/keep` are never pruned either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.size() > 0 && p.size() <= 255)")
        .message("cache.prune.keepImages: each pattern must have 1 to 255 characters"))]
    pub keep_images: Vec<String>,
}

/// The default of `cache.prune.unusedFor`.
pub const DEFAULT_UNUSED_FOR: &str = "24h";

fn default_unused_for() -> String {
    DEFAULT_UNUSED_FOR.to_string()
}

impl Default for PruneSpec {
    fn default() -> Self {
        Self { enabled: true, unused_for: default_unused_for(), keep_images: Vec::new() }
    }
}

fn default_high_water() -> i32 {
    DEFAULT_HIGH_WATER_PERCENT
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { build_cache_keep: None, high_water_percent: default_high_water(), prune: PruneSpec::default() }
    }
}
