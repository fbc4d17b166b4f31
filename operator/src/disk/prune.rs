//! Pruning, the pure part: when a daemon is pruned, which of its images go, and what a prune
//! reports. The requests to the daemon are `controller::prune`.
//!
//! Who prunes: the operator, over the daemon's mTLS, beside the disk figures it asks for every
//! minute anyway. It sees the spec (a policy change needs no daemon restart, where a dind-init
//! setting would), it writes status and events, and it keeps no state on the volume.
//! The idle signal: no running container, and no build-cache record in use (`/system/df`
//! marks the records a running build holds `InUse`). Past the high-water mark it prunes even
//! when busy: what it removes (stopped containers, unused networks, images no container uses,
//! build cache over its target) is nothing a running container or build holds, and Docker
//! refuses to remove what is in use anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{DiskUsage, Image, human, used_percent};

/// Why a prune ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Nothing was running or building.
    Idle,
    /// The volume was past `cache.highWaterPercent`.
    HighWater,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Idle => "Idle",
            Why::HighWater => "HighWater",
        }
    }
}

/// Whether to prune now, and why: past the high-water mark always, else only when idle
/// (`running` containers not counting those labelled `dind.dev/keep`).
pub fn due(usage: &DiskUsage, running: u32, volume: Option<u64>, high_water_percent: i32) -> Option<Why> {
    let percent = volume.and_then(|v| used_percent(usage, v));
    if percent.is_some_and(|p| i64::from(p) >= i64::from(high_water_percent)) {
        Some(Why::HighWater)
    } else if running == 0 && usage.build_cache_in_use == 0 {
        Some(Why::Idle)
    } else {
        None
    }
}

/// Whether a stopped container has been unused for `unused_for`: counted from when it stopped
/// (`finished`, unix seconds; a container that never ran counts from its creation), not from its
/// creation (Docker's own `container prune --filter until=` counts from creation, so a container
/// that ran for days and stopped a minute ago would lose its logs and files at once).
pub fn stopped_long_enough(created: i64, finished: Option<i64>, now: i64, unused_for: Duration) -> bool {
    let last = finished.map_or(created, |f| f.max(created));
    now.saturating_sub(last) >= i64::try_from(unused_for.as_secs()).unwrap_or(i64::MAX)
}

/// A Go duration (`24h`, `1h30m`, `90s`, `500ms`): what the CRD admits for `unusedFor`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(n),
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// When each image of one daemon was last used, by image id. First sight counts as a use, so
/// an image is never older to the operator than the time it has watched it (after an operator
/// restart every image starts again).
#[derive(Clone, Debug, Default)]
pub struct ImageUse(HashMap<String, Instant>);

impl ImageUse {
    /// Notes what the daemon shows now: images it holds (new ones first seen now; gone ones
    /// forgotten), images a container uses, and the image references of containers created
    /// since the last look (`used`, from the daemon's events: `docker run --rm` leaves no
    /// container to see).
    pub fn note(&mut self, images: &[Image], used: &[String], now: Instant) {
        self.0.retain(|id, _| images.iter().any(|i| &i.id == id));
        for image in images {
            let in_use = image.containers != 0 || used.iter().any(|r| references(r, image));
            let last = self.0.entry(image.id.clone()).or_insert(now);
            if in_use {
                *last = now;
            }
        }
    }

    /// How long an image has gone unused (zero for one never seen).
    pub fn unused_for(&self, id: &str, now: Instant) -> Duration {
        self.0.get(id).map(|t| now.saturating_duration_since(*t)).unwrap_or_default()
    }
}

/// `docker.io/library/alpine:latest` and `alpine` name the same image.
fn normalized(reference: &str) -> String {
    let name = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') { name.to_string() } else { format!("{name}:latest") }
}

/// Whether a reference as a user gave it (`alpine`, `team/app:1`, an id or its prefix) names
/// `image`.
pub fn references(reference: &str, image: &Image) -> bool {
    let hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
    let r = reference.strip_prefix("sha256:").unwrap_or(reference);
    if r.len() >= 12 && hex.starts_with(r) {
        return true;
    }
    let r = normalized(reference);
    image.tags.iter().any(|t| normalized(t) == r)
}

/// A pattern with `*` (any run of characters, `/` and `:` too) against a whole text.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether every layer of `image` is shared with another image: it is the base (`FROM`) of an
/// image the daemon still holds. Deleting it frees nothing, and the next build of that image
/// pulls it again; it may go once the images built on it have.
pub fn base_of_another(image: &Image) -> bool {
    image.size > 0 && image.shared_size >= image.size
}

/// The images to delete: no container uses them, none of their tags matches `keep`, no image
/// the daemon holds is built on them, and the operator has not seen them used for `unused_for`.
pub fn images_to_delete<'a>(images: &'a [Image], uses: &ImageUse, keep: &[String], unused_for: Duration, now: Instant) -> Vec<&'a Image> {
    images
        .iter()
        .filter(|i| i.containers == 0)
        .filter(|i| !base_of_another(i))
        .filter(|i| !i.tags.iter().any(|t| keep.iter().any(|p| glob(p, t) || glob(p, &normalized(t)))))
        .filter(|i| uses.unused_for(&i.id, now) >= unused_for)
        .collect()
}

/// Whether a volume is anonymous: labelled so (Docker ≥ 23), or, on older daemons, named as
/// Docker names anonymous volumes (64 hex digits). Named volumes are a team's data: never pruned.
pub fn anonymous_volume(name: &str, labels: Option<&Map<String, Value>>) -> bool {
    labels.is_some_and(|l| l.contains_key("com.docker.volume.anonymous"))
        || (name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// What one prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub containers: u32,
    pub images: u32,
    pub networks: u32,
    pub volumes: u32,
    /// Build cache dockerd reports reclaimed.
    pub build_cache_bytes: u64,
}

impl Removed {
    pub fn any(&self) -> bool {
        self.containers + self.images + self.networks + self.volumes > 0 || self.build_cache_bytes > 0
    }

    /// `2 images, 1 stopped container, build cache 120Mi`, or `nothing`.
    pub fn summary(&self) -> String {
        let plural = |n: u32, one: &str, many: &str| match n {
            0 => None,
            1 => Some(format!("1 {one}")),
            n => Some(format!("{n} {many}")),
        };
        let parts: Vec<String> = [
            plural(self.images, "image", "images"),
            plural(self.containers, "stopped container", "stopped containers"),
            plural(self.networks, "network", "networks"),
            plural(self.volumes, "anonymous volume", "anonymous volumes"),
            (self.build_cache_bytes > 0).then(|| format!("build cache {}", human(self.build_cache_bytes))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() { "nothing".into() } else { parts.join(", ") }
    }
}

/// How much build cache to keep after the rest is pruned: the target (`cache.buildCacheKeep`);
/// past the high-water mark no more than fits under 90% of the mark beside everything else
/// (0: every record no build holds). None: no target and under the mark.
pub fn build_cache_keep(now: &DiskUsage, why: Why, target: Option<u64>, volume: Option<u64>, high_water_percent: i32) -> Option<u64> {
    let room = match (why, volume) {
        (Why::HighWater, Some(volume)) => {
            let mark = u128::from(volume) * u128::try_from(high_water_percent).unwrap_or(0) / 100 * 9 / 10;
            let rest = u128::from(now.used_bytes().saturating_sub(now.build_cache_bytes));
            Some(u64::try_from(mark.saturating_sub(rest)).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    match (target, room) {
        (Some(t), Some(r)) => Some(t.min(r)),
        (t, r) => t.or(r),
    }
}

/// Bytes freed between two looks at the disk (never negative: a build may have added).
pub fn freed(before: &DiskUsage, after: &DiskUsage) -> u64 {
    before.used_bytes().saturating_sub(after.used_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tags: &[&str], containers: i64) -> Image {
        Image { id: id.into(), tags: tags.iter().map(|t| t.to_string()).collect(), containers, size: 100, shared_size: 0 }
    }

    /// A base image used only as `FROM` (no container ever ran it) is kept while an image
    /// built on it is there: before, it was deleted once idle and pulled again by the next build.
    #[test]
    fn a_base_image_stays_while_an_image_built_on_it_does() {
        let base = Image { shared_size: 100, ..image("sha256:base", &["golang:1.25"], 0) };
        let app = Image { size: 300, shared_size: 100, ..image("sha256:app", &["team/app:1"], 0) };
        let unknown = Image { size: -1, shared_size: -1, ..image("sha256:old", &["old:1"], 0) };
        let images = [base, app, unknown];
        let (mut uses, t0) = (ImageUse::default(), Instant::now());
        uses.note(&images, &[], t0);
        let later = t0 + Duration::from_secs(7200);
        let doomed: Vec<&str> =
            images_to_delete(&images, &uses, &[], Duration::from_secs(3600), later).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(doomed, ["sha256:app", "sha256:old"], "the base goes only after the images built on it");
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "h", "1d", "1.5h", "-1h", "10"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn idle_means_nothing_running_or_building_and_the_high_water_mark_overrides() {
        let usage = |gib: u64, in_use: u32| DiskUsage { images_bytes: gib << 30, build_cache_in_use: in_use, ..Default::default() };
        let volume = Some(10u64 << 30);
        assert_eq!(due(&usage(1, 0), 0, volume, 85), Some(Why::Idle));
        assert_eq!(due(&usage(1, 0), 1, volume, 85), None, "a running container");
        assert_eq!(due(&usage(1, 2), 0, volume, 85), None, "a build in progress");
        assert_eq!(due(&usage(9, 2), 3, volume, 85), Some(Why::HighWater), "90% of the volume");
        assert_eq!(due(&usage(9, 2), 3, None, 85), None, "an emptyDir without a size is never past a mark");
    }

    #[test]
    fn references_name_images_as_docker_does() {
        let alpine = image("sha256:0123456789abcdef0123", &["alpine:latest", "team/app:1"], 0);
        for r in [
            "alpine",
            "alpine:latest",
            "docker.io/library/alpine",
            "team/app:1",
            "docker.io/team/app:1",
            "0123456789ab",
            "sha256:0123456789abcdef",
        ] {
            assert!(references(r, &alpine), "{r}");
        }
        for r in ["alpine:3", "team/app", "0123", "other/alpine", "registry.example.com/alpine"] {
            assert!(!references(r, &alpine), "{r}");
        }
        assert!(references("localhost:5000/x", &image("sha256:ff", &["localhost:5000/x:latest"], 0)), "a port is no tag");
    }

    #[test]
    fn globs_match_whole_tags() {
        assert!(glob("golang:*", "golang:1.22"));
        assert!(glob("registry.example.com/team/*", "registry.example.com/team/app:1"));
        assert!(glob("*:keep", "x/y:keep"));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(glob("exact:1", "exact:1"));
        assert!(!glob("golang:*", "xgolang:1"));
        assert!(!glob("exact:1", "exact:10"));
        assert!(!glob("a*b*c", "a-c-b"));
    }

    #[test]
    fn only_images_unused_for_the_duration_and_not_kept_are_deleted() {
        let t0 = Instant::now();
        let images = vec![
            image("sha256:old", &["drop/old:1"], 0),
            image("sha256:kept", &["keep/tool:1"], 0),
            image("sha256:run", &["drop/run:1"], 1),
            image("sha256:recent", &["drop/recent:1"], 0),
            image("sha256:dangling", &[], 0),
            image("sha256:unknown", &["drop/unknown:1"], -1),
        ];
        let mut uses = ImageUse::default();
        uses.note(&images, &[], t0);
        let later = t0 + Duration::from_secs(50);
        uses.note(&images, &["drop/recent:1".into()], later);
        let keep = vec!["keep/*".to_string()];
        let now = t0 + Duration::from_secs(70);
        let ids: Vec<&str> = images_to_delete(&images, &uses, &keep, Duration::from_secs(60), now).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["sha256:old", "sha256:dangling"], "kept, in use, used 20 s ago and uncounted stay");
        assert!(images_to_delete(&images, &uses, &keep, Duration::from_secs(71), now).is_empty(), "none unused for 71 s");

        // An image first seen now is not old, whenever it was made; a gone one is forgotten.
        let mut fresh = ImageUse::default();
        fresh.note(&images[..1], &[], now);
        assert!(images_to_delete(&images[..1], &fresh, &[], Duration::from_secs(1), now).is_empty());
        uses.note(&images[1..], &[], now);
        assert_eq!(uses.unused_for("sha256:old", now + Duration::from_secs(999)), Duration::ZERO);
    }

    #[test]
    fn anonymous_volumes_are_told_from_named_ones() {
        let hex = "a".repeat(64);
        assert!(anonymous_volume(&hex, None));
        let mut labels = Map::new();
        labels.insert("com.docker.volume.anonymous".into(), Value::String(String::new()));
        assert!(anonymous_volume("x", Some(&labels)));
        assert!(!anonymous_volume("pgdata", None));
        assert!(!anonymous_volume(&"g".repeat(64), Some(&Map::new())));
    }

    #[test]
    fn past_the_high_water_mark_the_build_cache_makes_room() {
        let gib = 1u64 << 30;
        // 10Gi volume, mark 80% (8Gi; aim 7.2Gi): 5Gi of images, 4Gi of build cache.
        let now = DiskUsage { images_bytes: 5 * gib, build_cache_bytes: 4 * gib, ..Default::default() };
        let room = (8 * gib) * 9 / 10 - 5 * gib;
        assert_eq!(build_cache_keep(&now, Why::HighWater, Some(3 * gib), Some(10 * gib), 80), Some(room));
        assert_eq!(build_cache_keep(&now, Why::HighWater, Some(gib), Some(10 * gib), 80), Some(gib), "the target when smaller");
        assert_eq!(build_cache_keep(&now, Why::Idle, Some(3 * gib), Some(10 * gib), 80), Some(3 * gib), "idle: the target");
        assert_eq!(build_cache_keep(&now, Why::Idle, None, Some(10 * gib), 80), None);
        let full = DiskUsage { images_bytes: 9 * gib, build_cache_bytes: gib, ..Default::default() };
        assert_eq!(build_cache_keep(&full, Why::HighWater, None, Some(10 * gib), 80), Some(0), "images alone past the mark: all of it");
    }

    #[test]
    fn a_prune_reports_what_it_removed() {
        assert_eq!(Removed::default().summary(), "nothing");
        assert!(!Removed::default().any());
        let r = Removed { containers: 1, images: 2, networks: 0, volumes: 3, build_cache_bytes: 120 << 20 };
        assert_eq!(r.summary(), "2 images, 1 stopped container, 3 anonymous volumes, build cache 120Mi");
        let used = |b: u64| DiskUsage { images_bytes: b, ..Default::default() };
        assert_eq!(freed(&used(100), &used(30)), 70);
        assert_eq!(freed(&used(30), &used(100)), 0);
    }

    #[test]
    fn stopped_containers_count_from_when_they_stopped() {
        let day = 86_400;
        let unused_for = Duration::from_secs(3600);
        // Seen before: made a week ago, stopped a minute ago: pruned at once (by creation time).
        assert!(!stopped_long_enough(0, Some(7 * day - 60), 7 * day, unused_for));
        assert!(stopped_long_enough(0, Some(7 * day - 3600), 7 * day, unused_for));
        // Never started: from its creation.
        assert!(stopped_long_enough(0, None, 3600, unused_for));
        assert!(!stopped_long_enough(0, None, 3599, unused_for));
    }
}
