//! A sidecar DindDaemon's volume pool, in a reconcile: the claims made, ended leases released,
//! the pool as status shows it (the decisions are `volume_pool`'s).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource as _, ResourceExt};
use serde_json::json;
use tracing::info;

use super::Context;
use crate::crd::{DindDaemon, PoolVolume};
use crate::error::{Error, Result};
use crate::model::names::{self, Names};
use crate::model::volume_pool;

/// What a pass over the pool found.
#[derive(Debug, Default)]
pub struct Pool {
    /// The pool as status shows it.
    pub volumes: Vec<PoolVolume>,
    /// Whether any volume is leased (then the pool is looked at again soon: a lease ends when
    /// its pod does, and pods do not wake this DindDaemon).
    pub leased: bool,
    /// Claim names taken by claims that are not the pool's (never leased: the pool label
    /// selects its claims).
    pub taken: Vec<String>,
    /// Leases whose pod has been terminating too long (`volume_pool::stuck`).
    pub stuck: Vec<(String, String, i64)>,
}

pub async fn keep(ctx: &Context, dd: &DindDaemon, ns: &str, names: &Names) -> Result<Pool> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let owner = dd.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let selector = format!("{}={}", names::VOLUME_POOL_LABEL, names.daemon);
    let mut claims = api.list(&ListParams::default().labels(&selector)).await?.items;
    let mut taken = Vec::new();
    for wanted in volume_pool::claims(dd, names, &owner) {
        if claims.iter().any(|c| c.name_any() == wanted.name_any()) {
            continue;
        }
        // Created once, never applied again: leases are annotations the webhook writes.
        match api.create(&PostParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() }, &wanted).await {
            Ok(c) => claims.push(c),
            // Exists, yet the pool's label did not list it: someone else's claim.
            Err(kube::Error::Api(e)) if e.code == 409 => taken.push(wanted.name_any()),
            Err(e) => return Err(e.into()),
        }
    }
    // The holders, from the watch-fed pod cache (sidecar pods keep their lease annotation and
    // phase; see `slim_pod`): no list of the namespace's pods per pass (before: every pod,
    // unpaginated, each pass of each pool).
    let pods: Vec<Pod> = ctx
        .caches
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns) && p.labels().contains_key(names::SIDECAR_LABEL))
        .into_iter()
        .map(|p| (*p).clone())
        .collect();
    let holders = volume_pool::holders(&pods);
    let now = k8s_openapi::jiff::Timestamp::now();
    for claim in &mut claims {
        let Some(lease) = volume_pool::lease_of(claim) else { continue };
        let name = claim.name_any();
        let holder = holders.get(&(name.clone(), lease.id.clone()));
        let key = format!("{ns}/{name}/{}", lease.id);
        let was_held = {
            let mut held = ctx.memory.held_leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if holder.is_some() {
                held.insert(key.clone());
            }
            held.contains(&key)
        };
        if !volume_pool::ended(&lease, holder, was_held, now) {
            continue;
        }
        // Guarded by the resourceVersion read: a lease taken meanwhile is not ended by mistake.
        let patch = json!({"metadata": {"resourceVersion": claim.resource_version(),
            "annotations": {names::LEASE_ANNOTATION: null, names::LEASED_AT_ANNOTATION: null}}});
        match api
            .patch(&name, &PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() }, &Patch::Merge(&patch))
            .await
        {
            Ok(c) => {
                info!(claim = %name, lease = %lease.id, "volume lease ended");
                ctx.memory.held_leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
                *claim = c;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let leased = claims.iter().any(|c| volume_pool::lease_of(c).is_some());
    let stuck = volume_pool::stuck(&holders, now);
    Ok(Pool { volumes: volume_pool::status(&claims, &holders), leased, taken, stuck })
}
