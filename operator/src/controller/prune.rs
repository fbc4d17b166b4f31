//! Pruning one daemon, the requests (what and when: `disk::prune`, pure). Runs after each
//! disk look (`observe::ask_daemons`), over the daemon's own mTLS, as a client would.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::Context;
use super::events::publish;
use super::memory::Pruning;
use crate::controller::docker_api::{self, MAX_DF_ANSWER};
use crate::crd::{DindDaemon, LastPrune};
use crate::disk::prune::{self, Removed, Why};
use crate::disk::{self, DiskUsage};
use crate::model::tls::Bundle;

/// One daemon, as a prune reaches it.
pub struct Daemon<'a> {
    /// Its pod's name and uid.
    pub pod: &'a str,
    pub uid: &'a str,
    /// `ip:port`.
    pub addr: String,
    pub tls: Option<(&'a Bundle, &'a str)>,
}

/// A whole prune may take this long (deleting many images takes a while); past it the rest
/// waits for the next look. With the requests before it ([`CALL_TIMEOUT`] each) and the disk
/// looks around it, a reconcile stays well inside its deadline (`RECONCILE_TIMEOUT`, 60 s).
const PRUNE_TIMEOUT: Duration = Duration::from_secs(25);
/// All of [`after_look`] may take this long (after the disk look, at most 10 s, before it).
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(35);
/// One request to a daemon may take this long (`/events` answers once the daemon's clock
/// reaches `until`: a daemon whose clock runs behind the operator's would hold it).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The label that keeps a container from pruning and from counting as work.
pub const KEEP_LABEL: &str = "dind.dev/keep";

/// After a fresh disk look (`usage`): notes which images were used since the last look,
/// prunes if due, and returns the disk usage as it is now (asked again after a prune).
pub async fn after_look(ctx: &Context, dd: &DindDaemon, daemon: &Daemon<'_>, usage: DiskUsage) -> DiskUsage {
    let policy = &dd.spec.cache.prune;
    if !policy.enabled {
        return usage;
    }
    let Some(unused_for) = prune::parse_duration(&policy.unused_for) else { return usage };
    let mut memory = ctx.memory.pruning(daemon.uid);
    let after = note_and_prune(ctx, dd, daemon, &usage, unused_for, &mut memory).await;
    ctx.memory.remember_pruning(daemon.uid, memory);
    after.unwrap_or(usage)
}

/// The steps of [`after_look`] on what pruning remembers of the pod (`memory`, updated): the
/// disk usage after a prune that removed something, else None.
async fn note_and_prune(
    ctx: &Context,
    dd: &DindDaemon,
    daemon: &Daemon<'_>,
    usage: &DiskUsage,
    unused_for: Duration,
    memory: &mut Pruning,
) -> Option<DiskUsage> {
    let now_unix = Timestamp::now().as_second();
    // The first look reads the last minute (the daemon's events are kept in memory only).
    let since = memory.events_until.unwrap_or(now_unix - 60);
    match images_used(daemon, since, now_unix).await {
        Ok(used) => {
            memory.uses.note(&usage.image_list, &used, Instant::now());
            memory.events_until = Some(now_unix);
        }
        Err(e) => {
            // Without the events a `docker run --rm` could go unseen: no pruning this time
            // (the disk figures of the look stand).
            tracing::debug!(pod = daemon.pod, error = %e, "daemon did not tell its events");
            return None;
        }
    }
    let why = match running_containers(daemon).await {
        Ok(running) => prune::due(usage, running, disk::volume_bytes(&dd.spec), dd.spec.cache.high_water_percent),
        Err(e) => {
            tracing::debug!(pod = daemon.pod, error = %e, "daemon did not list its containers");
            None
        }
    }?;
    let doomed: Vec<disk::Image> =
        prune::images_to_delete(&usage.image_list, &memory.uses, &dd.spec.cache.prune.keep_images, unused_for, Instant::now())
            .into_iter()
            .cloned()
            .collect();
    let plan = Plan { unused_for, images: &doomed, why, cache_keep: disk::build_cache_keep_bytes(&dd.spec), spec: &dd.spec };
    let removed = match tokio::time::timeout(PRUNE_TIMEOUT, remove(daemon, &plan)).await {
        Ok(removed) => removed,
        Err(_) => {
            tracing::warn!(pod = daemon.pod, "prune timed out after {}s", PRUNE_TIMEOUT.as_secs());
            Removed::default()
        }
    };
    if !removed.any() {
        return None;
    }
    let after = match docker_api::disk_usage_at(&daemon.addr, daemon.tls).await {
        Ok(after) => after,
        Err(e) => {
            tracing::debug!(pod = daemon.pod, error = %e, "daemon did not tell its disk usage after the prune");
            usage.clone()
        }
    };
    // As `/system/df` counts it, or as dockerd reports the build-cache prune if more: some
    // daemons (20.10) stop counting a deleted image's layers at once, before the build cache
    // that still holds them is trimmed.
    let freed = prune::freed(usage, &after).max(removed.build_cache_bytes);
    let summary = removed.summary();
    memory.last = Some(LastPrune {
        time: Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        freed_bytes: i64::try_from(freed).unwrap_or(i64::MAX),
        reason: why.as_str().into(),
        removed: summary.clone(),
    });
    ctx.metrics.record_prune(freed);
    let when = match why {
        Why::Idle => "idle".to_string(),
        Why::HighWater => format!("past the high-water mark of {}%", dd.spec.cache.high_water_percent),
    };
    publish(ctx, dd, EventType::Normal, "Pruned", format!("{}: freed {} ({when}): {summary}", daemon.pod, disk::human(freed))).await;
    Some(after)
}

/// What one prune may remove.
struct Plan<'a> {
    unused_for: Duration,
    images: &'a [disk::Image],
    why: Why,
    /// The build-cache target (`cache.buildCacheKeep`), if there is one.
    cache_keep: Option<u64>,
    spec: &'a crate::crd::DindDaemonSpec,
}

/// Removes what the policy lets go, then trims the build cache: a deleted image's layers stay
/// on as build-cache records of the builds that made them, so only this frees their bytes.
/// Each step on its own: one refused does not stop the rest.
async fn remove(daemon: &Daemon<'_>, plan: &Plan<'_>) -> Removed {
    let mut removed = Removed::default();
    let until = format!("{}s", plan.unused_for.as_secs().max(1));
    removed.containers = remove_containers(daemon, plan.unused_for).await;
    match post(daemon, &format!("/networks/prune?filters={}", query(&json!({"until": [until]})))).await {
        Ok(v) => removed.networks = count(&v["NetworksDeleted"]),
        Err(e) => tracing::warn!(pod = daemon.pod, error = %e, "pruning networks"),
    }
    removed.volumes = remove_volumes(daemon, plan.unused_for).await;
    for image in plan.images {
        // By each tag (the last one removes the image; an id with several tags would need force),
        // or by id when untagged. A conflict (a container made from it meanwhile) keeps it.
        let names: Vec<&str> =
            if image.tags.is_empty() { vec![image.id.as_str()] } else { image.tags.iter().map(String::as_str).collect() };
        let mut all = true;
        for name in names {
            let path = format!("/images/{}", encode(name));
            if let Err(e) = call(daemon, "DELETE", &path).await {
                tracing::debug!(pod = daemon.pod, image = name, error = %e, "image not removed");
                all = false;
                break;
            }
        }
        removed.images += u32::from(all);
    }
    let now = match docker_api::disk_usage_at(&daemon.addr, daemon.tls).await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(pod = daemon.pod, error = %e, "daemon did not tell its disk usage while pruning");
            return removed;
        }
    };
    let keep = prune::build_cache_keep(&now, plan.why, plan.cache_keep, disk::volume_bytes(plan.spec), plan.spec.cache.high_water_percent);
    if let Some(keep) = keep.filter(|keep| now.build_cache_bytes > *keep) {
        // `all`: any record not in use, least recently used first, as dockerd's own collector
        // does with its keep-storage rule; records a running build holds are never removed.
        // The limit under each name an API version reads: `keep-storage` before 1.48 (Docker
        // 28.0), `reserved-space` and `max-used-space` from it on, which ignores
        // `keep-storage` (then nothing would be kept).
        let path = format!("/build/prune?all=true&keep-storage={keep}&reserved-space={keep}&max-used-space={keep}");
        match post(daemon, &path).await {
            Ok(v) => removed.build_cache_bytes = v["SpaceReclaimed"].as_u64().unwrap_or(0),
            Err(e) => tracing::warn!(pod = daemon.pod, error = %e, "pruning the build cache"),
        }
    }
    removed
}

/// Whether a container is labelled [`KEEP_LABEL`]: never pruned, never counted as work.
fn kept(c: &Value) -> bool {
    c["Labels"].as_object().is_some_and(|l| l.contains_key(KEEP_LABEL))
}

/// Deletes stopped containers (but those labelled [`KEEP_LABEL`]) that stopped more than
/// `unused_for` ago (`prune::stopped_long_enough`; Docker's own prune counts from creation). One
/// started meanwhile is refused by Docker and kept.
async fn remove_containers(daemon: &Daemon<'_>, unused_for: Duration) -> u32 {
    let filters = json!({"status": ["exited", "dead", "created"]});
    let list = match get(daemon, &format!("/containers/json?all=1&filters={}", query(&filters))).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(pod = daemon.pod, error = %e, "listing stopped containers");
            return 0;
        }
    };
    let now = Timestamp::now().as_second();
    let mut removed = 0;
    for c in list.as_array().into_iter().flatten().filter(|c| !kept(c)) {
        let (Some(id), Some(created)) = (c["Id"].as_str(), c["Created"].as_i64()) else { continue };
        let finished = match get(daemon, &format!("/containers/{}/json", encode(id))).await {
            // Never started: "0001-01-01T00:00:00Z", before the epoch.
            Ok(info) => {
                info["State"]["FinishedAt"].as_str().and_then(|t| t.parse::<Timestamp>().ok()).map(|t| t.as_second()).filter(|s| *s > 0)
            }
            Err(e) => {
                tracing::debug!(pod = daemon.pod, container = id, error = %e, "container not inspected; kept");
                continue;
            }
        };
        if !prune::stopped_long_enough(created, finished, now, unused_for) {
            continue;
        }
        match call(daemon, "DELETE", &format!("/containers/{}", encode(id))).await {
            Ok(_) => removed += 1,
            Err(e) => tracing::debug!(pod = daemon.pod, container = id, error = %e, "container not removed"),
        }
    }
    removed
}

/// Deletes anonymous volumes no container uses, created more than `unused_for` ago.
async fn remove_volumes(daemon: &Daemon<'_>, unused_for: Duration) -> u32 {
    let path = format!("/volumes?filters={}", query(&json!({"dangling": ["true"]})));
    let list = match get(daemon, &path).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(pod = daemon.pod, error = %e, "listing volumes");
            return 0;
        }
    };
    let cutoff = Timestamp::now().as_second() - i64::try_from(unused_for.as_secs()).unwrap_or(i64::MAX);
    let mut removed = 0;
    for volume in list["Volumes"].as_array().into_iter().flatten() {
        let name = volume["Name"].as_str().unwrap_or_default();
        let created = volume["CreatedAt"].as_str().and_then(|t| t.parse::<Timestamp>().ok()).map(|t| t.as_second());
        if !prune::anonymous_volume(name, volume["Labels"].as_object()) || created.is_none_or(|c| c > cutoff) {
            continue;
        }
        match call(daemon, "DELETE", &format!("/volumes/{}", encode(name))).await {
            Ok(_) => removed += 1,
            Err(e) => tracing::debug!(pod = daemon.pod, volume = name, error = %e, "volume not removed"),
        }
    }
    removed
}

/// Containers running, but those labelled [`KEEP_LABEL`].
async fn running_containers(daemon: &Daemon<'_>) -> Result<u32, String> {
    let list = get(daemon, "/containers/json").await?;
    Ok(u32::try_from(list.as_array().into_iter().flatten().filter(|c| !kept(c)).count()).unwrap_or(u32::MAX))
}

/// The images used between `since` and `until` (unix seconds), from the daemon's events (it
/// keeps the last few hundred in memory): see [`uses_in_events`].
async fn images_used(daemon: &Daemon<'_>, since: i64, until: i64) -> Result<Vec<String>, String> {
    let filters = json!({"type": ["container", "image"], "event": ["create", "tag", "pull", "push", "load", "import", "save"]});
    let path = format!("/events?since={since}&until={until}&filters={}", query(&filters));
    uses_in_events(&call(daemon, "GET", &path).await?)
}

/// The image references in a stream of Docker events: of containers created (`docker run --rm`
/// leaves no container to see), and of images tagged (a build's result, even when every step was
/// cached and the image id is an old one), pulled, pushed, loaded, imported or saved (an image
/// between `docker build` and `docker push` is in use).
pub fn uses_in_events(body: &str) -> Result<Vec<String>, String> {
    let mut used = Vec::new();
    for event in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
        let event = event.map_err(|e| format!("an event is not JSON: {e}"))?;
        let attributes = &event["Actor"]["Attributes"];
        match event["Type"].as_str() {
            Some("image") => {
                used.extend(event["Actor"]["ID"].as_str().map(str::to_string));
                used.extend(attributes["name"].as_str().map(str::to_string));
            }
            _ => used.extend(attributes["image"].as_str().or_else(|| event["from"].as_str()).map(str::to_string)),
        }
    }
    Ok(used)
}

/// One request, bounded by [`CALL_TIMEOUT`]; the answer's body.
async fn call(daemon: &Daemon<'_>, method: &str, path: &str) -> Result<String, String> {
    let request = docker_api::call(&daemon.addr, daemon.tls, method, path, MAX_DF_ANSWER);
    let what = path.split('?').next().unwrap_or(path);
    tokio::time::timeout(CALL_TIMEOUT, request).await.map_err(|_| format!("{method} {what}: no answer in {}s", CALL_TIMEOUT.as_secs()))?
}

async fn get(daemon: &Daemon<'_>, path: &str) -> Result<Value, String> {
    let body = call(daemon, "GET", path).await?;
    serde_json::from_str(&body).map_err(|e| format!("{}: not JSON: {e}", path.split('?').next().unwrap_or(path)))
}

async fn post(daemon: &Daemon<'_>, path: &str) -> Result<Value, String> {
    let body = call(daemon, "POST", path).await?;
    serde_json::from_str(&body).map_err(|e| format!("{}: not JSON: {e}", path.split('?').next().unwrap_or(path)))
}

fn count(list: &Value) -> u32 {
    u32::try_from(list.as_array().map_or(0, Vec::len)).unwrap_or(u32::MAX)
}

/// JSON for a query parameter.
fn query(value: &Value) -> String {
    encode(&value.to_string())
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_tagged_pushed_or_run_count_as_used() {
        let events = [
            json!({"Type": "container", "Action": "create", "Actor": {"ID": "c1", "Attributes": {"image": "recent/used"}}}),
            json!({"Type": "image", "Action": "tag", "Actor": {"ID": "sha256:0123456789abcdef", "Attributes": {"name": "team/app:1"}}}),
            json!({"Type": "image", "Action": "push", "Actor": {"ID": "team/app:1", "Attributes": {"name": "team/app"}}}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
        let used = uses_in_events(&events).unwrap();
        assert_eq!(used, ["recent/used", "sha256:0123456789abcdef", "team/app:1", "team/app:1", "team/app"]);
        let built = crate::disk::Image {
            id: "sha256:0123456789abcdef0000".into(),
            tags: vec!["old/cached:1".into()],
            containers: 0,
            size: 1,
            shared_size: 0,
        };
        assert!(used.iter().any(|r| crate::disk::prune::references(r, &built)), "a cached rebuild tags an old image id: used");
    }

    #[test]
    fn query_parameters_are_percent_encoded() {
        assert_eq!(query(&json!({"until": ["30s"]})), "%7B%22until%22%3A%5B%2230s%22%5D%7D");
        assert_eq!(encode("team/app:1"), "team%2Fapp%3A1");
        assert_eq!(encode("sha256:ab"), "sha256%3Aab");
    }
}
