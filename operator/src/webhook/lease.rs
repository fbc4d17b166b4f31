//! Taking a warm volume for a sidecar pod at admission (I/O; the choice is `volume_pool`'s):
//! `for_pod` decides what a pod gets (the lease it holds, a new one, or what
//! `volumePool.whenExhausted` says), `take` writes a lease onto a free claim.
//!
//! A lease is written onto the claim with the claim's resourceVersion as a precondition: of two
//! admissions (two operator replicas, or one racing itself) that pick the same free claim, one
//! write succeeds and the other gets a conflict and tries the next free claim.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{DindDaemon, WhenExhausted};
use crate::model::names::{self, Names};
use crate::model::volume_pool;

/// A fresh lease id: unique within this process (a counter) and across replicas (time, pid).
fn lease_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}{:x}{:x}", nanos, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Leases a free claim of `dd`'s pool for a pod with sticky key `key`: `(claim, id)`, or None
/// when every claim is leased. `dry_run` (a dry-run admission, e.g. `kubectl create
/// --dry-run=server`): the same writes, as dry runs, so nothing is leased (the webhook declares
/// `sideEffects: NoneOnDryRun`).
pub async fn take(client: &Client, ns: &str, dd: &DindDaemon, key: &str, dry_run: bool) -> Result<Option<(String, String)>, String> {
    let Some(pool) = &dd.spec.volume_pool else { return Ok(None) };
    let names = Names::of(&dd.name_any());
    let wanted: Vec<String> = (0..pool.size).map(|i| names.pool_claim(i)).collect();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let selector = format!("{}={}", names::VOLUME_POOL_LABEL, names.daemon);
    let claims = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("listing the volume pool of {:?}: {e}", names.daemon))?;
    let mut free: Vec<(String, String)> = claims
        .items
        .iter()
        .filter(|c| wanted.contains(&c.name_any()) && volume_pool::lease_of(c).is_none())
        .filter_map(|c| Some((c.name_any(), c.resource_version()?)))
        .collect();
    while !free.is_empty() {
        let names_free: Vec<String> = free.iter().map(|(n, _)| n.clone()).collect();
        let Some(pick) = volume_pool::choose(&names_free, key).cloned() else { break };
        let rv = free.iter().find(|(n, _)| *n == pick).map(|(_, rv)| rv.clone()).unwrap_or_default();
        let id = lease_id();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        // resourceVersion in a merge patch is a precondition: a concurrent lease wins, we move on.
        let patch =
            json!({"metadata": {"resourceVersion": rv, "annotations": {names::LEASE_ANNOTATION: id, names::LEASED_AT_ANNOTATION: now}}});
        match api
            .patch(
                &pick,
                &PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), dry_run, ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(Some((pick, id))),
            Err(kube::Error::Api(e)) if e.code == 409 => free.retain(|(n, _)| *n != pick),
            Err(e) => return Err(format!("leasing volume {pick}: {e}")),
        }
    }
    Ok(None)
}

/// The pool claim a sidecar pod gets, and the lease annotation to record (None: nothing new
/// to record: no pool, or the pod was leased one before, at an earlier invocation).
pub(super) async fn for_pod(
    client: &Client,
    timeout: std::time::Duration,
    pod: &Value,
    dd: &DindDaemon,
    namespace: &str,
    dry_run: bool,
) -> Result<(Option<String>, Option<String>), String> {
    if let Some(held) = pod["metadata"]["annotations"][names::POD_LEASE_ANNOTATION].as_str() {
        // Ours from an earlier invocation of this same admission, or copied from another pod's
        // manifest (seen before: trusted, so the copy got a volume another job held: two
        // daemons on one volume). The pod being admitted does not exist yet: any pod that
        // exists with this lease is another.
        if held.contains('/') {
            let other = tokio::time::timeout(timeout, holder_of(client, namespace, dd, held)).await;
            match other {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(other))) => {
                    return Err(format!(
                        "the pod brings annotation {}={held}, the volume lease of pod {other}: leases are the webhook's to give; remove it (and {}) from the manifest",
                        names::POD_LEASE_ANNOTATION,
                        names::SIDECAR_ANNOTATION
                    ));
                }
                Ok(Err(e)) => return Err(format!("checking the volume lease the pod brings ({held}): {e}")),
                Err(_) => return Err(format!("checking the volume lease the pod brings ({held}) took longer than {timeout:?}")),
            }
        }
        return Ok((held.split_once('/').map(|(claim, _)| claim.to_string()), None));
    }
    let Some(pool) = &dd.spec.volume_pool else { return Ok((None, None)) };
    let key = crate::model::sticky::key_of(pod).value;
    match tokio::time::timeout(timeout, take(client, namespace, dd, &key, dry_run)).await {
        Ok(Ok(Some((claim, id)))) => Ok((Some(claim.clone()), Some(format!("{claim}/{id}")))),
        Ok(Ok(None)) => {
            let name = dd.metadata.name.clone().unwrap_or_default();
            match pool.when_exhausted {
                WhenExhausted::Refuse => Err(format!(
                    "every volume of DindDaemon {name:?}'s pool is leased ({} of {}); volumePool.whenExhausted is Refuse: retry when a job ends",
                    pool.size, pool.size
                )),
                WhenExhausted::EmptyDir if dry_run => Ok((None, Some("none".into()))),
                WhenExhausted::EmptyDir => {
                    warn(
                        client,
                        dd,
                        "VolumePoolExhausted",
                        format!("every volume of the pool ({}) is leased: a pod starts with an empty cache", pool.size),
                    )
                    .await;
                    Ok((None, Some("none".into())))
                }
            }
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("leasing a volume of {:?} took longer than {timeout:?}", dd.metadata.name.clone().unwrap_or_default())),
    }
}

/// A warning event on the DindDaemon, from admission.
async fn warn(client: &Client, dd: &DindDaemon, reason: &str, note: String) {
    let reporter = kube::runtime::events::Reporter { controller: names::FIELD_MANAGER.into(), instance: None };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    crate::runtime::events::publish(&recorder, dd, kube::runtime::events::EventType::Warning, reason, "Admit", note).await;
}

/// The pod of `dd`'s sidecars in `namespace` that holds lease `held` (`CLAIM/ID`), if one exists.
async fn holder_of(client: &Client, namespace: &str, dd: &DindDaemon, held: &str) -> Result<Option<String>, kube::Error> {
    let selector = format!("{}={}", names::SIDECAR_LABEL, dd.name_any());
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .iter()
        .find(|p| p.annotations().get(names::POD_LEASE_ANNOTATION).map(String::as_str) == Some(held))
        .map(ResourceExt::name_any))
}
