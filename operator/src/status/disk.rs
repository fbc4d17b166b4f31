//! The disk part of status: each daemon's figures, the Disk column, `DiskPressure`, the last prune.

use crate::crd::{DaemonEndpoint, DindDaemon, EndpointDisk, LastPrune};
use crate::disk::{self, DiskUsage};

use super::DaemonPod;

/// A daemon's last prune: as this process saw it, else as status showed it (an operator that
/// restarted remembers none).
pub(super) fn last_prune(dd: &DindDaemon, daemon: &DaemonPod, pod_name: &str) -> Option<LastPrune> {
    daemon.last_prune.clone().or_else(|| {
        let before = dd.status.as_ref()?.endpoints.iter().find(|e| e.name == pod_name)?;
        before.disk.as_ref()?.last_prune.clone()
    })
}

pub(super) fn endpoint_disk(usage: &DiskUsage, volume: Option<u64>) -> EndpointDisk {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    EndpointDisk {
        volume_bytes: volume.map(signed),
        used_bytes: signed(usage.used_bytes()),
        used_percent: volume.and_then(|v| disk::used_percent(usage, v)).map(|p| i32::try_from(p).unwrap_or(i32::MAX)),
        build_cache_bytes: signed(usage.build_cache_bytes),
        images: i32::try_from(usage.images).unwrap_or(i32::MAX),
        last_prune: None,
    }
}

fn bytes(v: i64) -> String {
    disk::human(u64::try_from(v).unwrap_or(0))
}

/// The Disk column: the fullest daemon, `37% of 20Gi` (or `1.2Gi` on an emptyDir).
pub(super) fn fullest(endpoints: &[DaemonEndpoint]) -> Option<String> {
    let disks = endpoints.iter().filter_map(|e| e.disk.as_ref());
    let top = disks.max_by_key(|d| (d.used_percent, d.used_bytes))?;
    Some(match (top.used_percent, top.volume_bytes) {
        (Some(p), Some(v)) => format!("{p}% of {}", bytes(v)),
        _ => bytes(top.used_bytes),
    })
}

/// Daemons past `cache.highWaterPercent`, named with what fills them.
pub(super) fn disk_pressure(dd: &DindDaemon, endpoints: &[DaemonEndpoint]) -> Option<String> {
    let mark = dd.spec.cache.high_water_percent;
    let full: Vec<String> = endpoints
        .iter()
        .filter_map(|e| {
            let d = e.disk.as_ref()?;
            let p = d.used_percent.filter(|p| *p >= mark)?;
            Some(format!(
                "{} uses {p}% of {} (build cache {}, {} images)",
                e.name,
                bytes(d.volume_bytes.unwrap_or_default()),
                bytes(d.build_cache_bytes),
                d.images
            ))
        })
        .collect();
    (!full.is_empty()).then(|| {
        format!(
            "{}; past cache.highWaterPercent {mark}%: builds will fail with \"no space left on device\" (lower cache.buildCacheKeep, remove images, or give the daemon a larger volume)",
            full.join("; ")
        )
    })
}
