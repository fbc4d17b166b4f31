//! A daemon's cache, managed (pure): the build-cache target dockerd's own garbage collector
//! keeps (`spec.cache.buildCacheKeep`, a quantity or a percentage of the volume), and the disk
//! figures a daemon reports (`GET /system/df`), as status shows them.
//!
//! Who prunes the build cache: dockerd itself (BuildKit's garbage collector, `builder.gc` in
//! daemon.json). It runs after builds and on its own schedule, and never removes a record that
//! a running build uses, so it never breaks work; the operator turns the spec into bytes, which
//! is what dockerd wants (daemon.json refuses percentages, docker/cli#6579).

use serde_json::{Map, Value, json};

use crate::crd::DindDaemonSpec;

pub mod prune;

/// The default build-cache target: half the volume.
pub const DEFAULT_BUILD_CACHE_KEEP: &str = "50%";

/// Bytes of a Kubernetes quantity (`20Gi`, `1.5G`, `500M`, `1048576`); None if it is not one
/// (the CRD's CEL `isQuantity` refuses those first).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    u64::try_from((int * scale + frac_value) * multiplier / scale).ok()
}

/// The size of a daemon's /var/lib/docker (`storage.size`, default 20Gi; with
/// `storage.ephemeral` the emptyDir's size limit). None only for a size that is no quantity.
pub fn volume_bytes(spec: &DindDaemonSpec) -> Option<u64> {
    quantity_bytes(spec.storage.size())
}

/// The build-cache target in bytes: `cache.buildCacheKeep` (default 50% of the volume).
/// None: `daemon.config.builder` set by hand stands (no target given).
pub fn build_cache_keep_bytes(spec: &DindDaemonSpec) -> Option<u64> {
    let explicit = spec.cache.build_cache_keep.as_deref();
    let user_builder = spec.daemon.config.as_ref().is_some_and(|c| c.contains_key("builder"));
    let keep = match explicit {
        Some(k) => k,
        None if user_builder => return None,
        None => DEFAULT_BUILD_CACHE_KEEP,
    };
    match keep.strip_suffix('%') {
        Some(percent) => u64::try_from(u128::from(volume_bytes(spec)?) * u128::from(percent.parse::<u64>().ok()?) / 100).ok(),
        None => quantity_bytes(keep),
    }
}

/// daemon.json for dind-init: `daemon.config`, plus the build cache's garbage collection.
pub fn daemon_config(spec: &DindDaemonSpec) -> Map<String, Value> {
    let mut config: Map<String, Value> = spec.daemon.config.clone().unwrap_or_default().into_iter().collect();
    if let Some(keep) = build_cache_keep_bytes(spec) {
        // Over the hand-written builder settings, keeping the rest of them. Bytes as a plain
        // number: dockerd reads it with go-units' RAMInBytes.
        let builder = config.entry("builder").or_insert_with(|| json!({}));
        if !builder.is_object() {
            *builder = json!({});
        }
        let gc = &mut builder["gc"];
        if !gc.is_object() {
            *gc = json!({});
        }
        gc["enabled"] = json!(true);
        gc["defaultKeepStorage"] = json!(keep.to_string());
    }
    config
}

/// What a daemon's `/system/df` says, in the terms of `docker system df`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Images' layers (shared layers once): the Images line's SIZE.
    pub images_bytes: u64,
    pub images: u32,
    /// Build cache records not shared with images: the Build Cache line's SIZE.
    pub build_cache_bytes: u64,
    /// Writable layers of containers (0 when not asked for: see `docker_api::disk_usage`).
    pub containers_bytes: u64,
    /// Local volumes (0 when not asked for).
    pub volumes_bytes: u64,
    /// Build cache records in use by a running build.
    pub build_cache_in_use: u32,
    /// Containers running.
    pub running: u32,
    /// Each image: what pruning decides on.
    pub image_list: Vec<Image>,
}

/// One image of a daemon, as `/system/df` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// `sha256:...`.
    pub id: String,
    /// `repository:tag` names; empty for an untagged image.
    pub tags: Vec<String>,
    /// Containers (running or stopped) made from it; -1 when the daemon did not count.
    pub containers: i64,
    /// Its size, and how much of it it shares with other images (-1: not counted).
    pub size: i64,
    pub shared_size: i64,
}

impl DiskUsage {
    /// All of it: what dockerd keeps on the volume.
    pub fn used_bytes(&self) -> u64 {
        self.images_bytes + self.build_cache_bytes + self.containers_bytes + self.volumes_bytes
    }
}

/// Parses a `/system/df` answer.
pub fn parse_df(body: &str) -> Result<DiskUsage, String> {
    let df: Value = serde_json::from_str(body).map_err(|e| format!("/system/df is not JSON: {e}"))?;
    let list = |key: &str| df.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let size = |v: &Value| v.as_i64().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let cache = list("BuildCache");
    Ok(DiskUsage {
        images_bytes: size(&df["LayersSize"]),
        images: count(list("Images").len()),
        build_cache_bytes: cache.iter().filter(|r| r["Shared"] != true).map(|r| size(&r["Size"])).sum(),
        containers_bytes: list("Containers").iter().map(|c| size(&c["SizeRw"])).sum(),
        volumes_bytes: list("Volumes").iter().map(|v| size(&v["UsageData"]["Size"])).sum(),
        build_cache_in_use: count(cache.iter().filter(|r| r["InUse"] == true).count()),
        running: count(list("Containers").iter().filter(|c| c["State"] == "running").count()),
        image_list: list("Images")
            .iter()
            .map(|i| Image {
                id: i["Id"].as_str().unwrap_or_default().to_string(),
                tags: i["RepoTags"]
                    .as_array()
                    .map(|t| t.iter().filter_map(Value::as_str).filter(|t| *t != "<none>:<none>").map(str::to_string).collect())
                    .unwrap_or_default(),
                containers: i["Containers"].as_i64().unwrap_or(-1),
                size: i["Size"].as_i64().unwrap_or(-1),
                shared_size: i["SharedSize"].as_i64().unwrap_or(-1),
            })
            .collect(),
    })
}

/// Percent of `volume` used, rounded down.
pub fn used_percent(usage: &DiskUsage, volume: u64) -> Option<u32> {
    (volume > 0).then(|| u32::try_from(u128::from(usage.used_bytes()) * 100 / u128::from(volume)).unwrap_or(u32::MAX))
}

/// Bytes as a short quantity for people (`1.5Gi`, `320Mi`, `12Ki`, `0`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let tenths = bytes * 10 / size;
            return if tenths.is_multiple_of(10) || tenths >= 1000 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> DindDaemonSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn quantities_are_bytes() {
        for (q, b) in [("20Gi", 20u64 << 30), ("1.5Gi", 3 << 29), ("500M", 500_000_000), ("1048576", 1 << 20), ("0.5Ki", 512), ("1k", 1000)]
        {
            assert_eq!(quantity_bytes(q), Some(b), "{q}");
        }
        for bad in ["", "Gi", "1.5.5Gi", "10GB", "-1", "1e3"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_build_cache_target_is_half_the_volume_by_default_and_bytes_for_dockerd() {
        assert_eq!(build_cache_keep_bytes(&spec(json!({}))), Some(10 << 30), "50% of the default 20Gi");
        assert_eq!(
            build_cache_keep_bytes(&spec(json!({"storage": {"size": "10Gi"}, "cache": {"buildCacheKeep": "30%"}}))),
            Some((10u64 << 30) * 3 / 10)
        );
        assert_eq!(build_cache_keep_bytes(&spec(json!({"cache": {"buildCacheKeep": "2Gi"}}))), Some(2 << 30));
        assert_eq!(
            build_cache_keep_bytes(&spec(json!({"storage": {"ephemeral": true, "size": "4Gi"}}))),
            Some(2 << 30),
            "50% of the emptyDir's size limit"
        );
        assert_eq!(
            build_cache_keep_bytes(&spec(json!({"storage": {"ephemeral": true}, "cache": {"buildCacheKeep": "1Gi"}}))),
            Some(1 << 30)
        );
        let by_hand = spec(json!({"daemon": {"config": {"builder": {"gc": {"enabled": false}}}}}));
        assert_eq!(build_cache_keep_bytes(&by_hand), None, "the user's own builder settings stand");
        assert_eq!(daemon_config(&by_hand)["builder"]["gc"]["enabled"], false);
        let both = spec(
            json!({"cache": {"buildCacheKeep": "1Gi"}, "daemon": {"config": {"builder": {"gc": {"enabled": false, "policy": []}, "entitlements": {"network-host": true}}}}}),
        );
        assert_eq!(
            daemon_config(&both)["builder"],
            json!({"gc": {"enabled": true, "policy": [], "defaultKeepStorage": "1073741824"}, "entitlements": {"network-host": true}}),
            "the target is set over the hand-written builder settings, which otherwise stay"
        );
        let config = daemon_config(&spec(json!({"storage": {"size": "4Gi"}, "daemon": {"config": {"log-level": "warn"}}})));
        assert_eq!(config["builder"], json!({"gc": {"enabled": true, "defaultKeepStorage": (2u64 << 30).to_string()}}));
        assert_eq!(config["log-level"], "warn");
    }

    #[test]
    fn df_reads_as_docker_system_df_does() {
        let body = json!({
            "LayersSize": 1000,
            "Images": [{"Id": "a", "RepoTags": ["x:1", "y:2"], "Containers": 1, "Size": 30, "SharedSize": 10}, {"Id": "b", "RepoTags": ["<none>:<none>"]}],
            "Containers": [{"SizeRw": 10, "State": "running"}, {"SizeRw": 5, "State": "exited"}],
            "Volumes": [{"UsageData": {"Size": 7}}, {"UsageData": {"Size": -1}}],
            "BuildCache": [{"Size": 100, "Shared": false, "InUse": true}, {"Size": 50, "Shared": true}, {"Size": 20}]
        });
        let d = parse_df(&body.to_string()).unwrap();
        assert_eq!(
            d,
            DiskUsage {
                images_bytes: 1000,
                images: 2,
                build_cache_bytes: 120,
                containers_bytes: 15,
                volumes_bytes: 7,
                build_cache_in_use: 1,
                running: 1,
                image_list: vec![
                    Image { id: "a".into(), tags: vec!["x:1".into(), "y:2".into()], containers: 1, size: 30, shared_size: 10 },
                    Image { id: "b".into(), tags: vec![], containers: -1, size: -1, shared_size: -1 },
                ],
            }
        );
        assert_eq!(d.used_bytes(), 1142);
        assert_eq!(used_percent(&d, 2000), Some(57));
        assert!(parse_df("nope").is_err());
    }

    #[test]
    fn bytes_read_short() {
        assert_eq!(human(0), "0");
        assert_eq!(human(1536), "1.5Ki");
        assert_eq!(human(20 << 30), "20Gi");
        assert_eq!(human(320 * (1 << 20) + 1), "320Mi");
    }
}
