//! The PodDisruptionBudget of the daemon pods: a node drain (or any eviction) takes at most
//! one daemon of a DindDaemon at a time, so `replicas: 3` never loses all three caches' daemons
//! at once, and a single daemon still drains (a budget that blocks forever would stall node
//! upgrades; dind-init stops dockerd gracefully within the pod's grace period).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::crd::DindDaemon;
use crate::model::names::Names;

/// Daemons of one DindDaemon that may be evicted at once.
pub const MAX_UNAVAILABLE: i32 = 1;

pub fn disruption_budget(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(dd, names, &names.disruption_budget, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(MAX_UNAVAILABLE)),
            selector: Some(LabelSelector { match_labels: Some(names.selector()), ..Default::default() }),
            // A daemon that is not ready (starting, crash-looping) may always be evicted: it
            // serves no build, and keeping it would block a drain for nothing.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
