//! Warm volumes of a `Sidecar`-mode DindDaemon (pure): the claims the operator keeps, which one a
//! pod gets, and when a lease has ended. The I/O is the webhook's (taking a lease, by a write
//! guarded by the claim's resourceVersion, so two admissions never take one claim) and the
//! reconciler's (creating claims, ending leases). Leases live on the claims themselves, so an
//! operator restart finds them again; dind-init's lock on /var/lib/docker stays the last guard.
//!
//! A lease is `dind.dev/lease: ID` and `dind.dev/leased-at: RFC 3339` on the claim, and
//! `dind.dev/volume-lease: CLAIM/ID` on the pod (the pod has neither name nor uid yet when it is
//! admitted, if it uses generateName).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::crd::{DindDaemon, PoolVolume};
use crate::model::names::{self, Names};

/// A lease whose pod never appeared (its admission was followed by a failed create, or the
/// pod is gone) ends this long after it was taken.
pub const UNCLAIMED_GRACE: SignedDuration = SignedDuration::from_secs(60);

/// A holder terminating longer than this is stuck (its node is likely lost: the kubelet that
/// would finish the deletion is gone), and the volume with it: status says so.
pub const STUCK_AFTER: SignedDuration = SignedDuration::from_secs(600);

/// The claims a DindDaemon's pool should have.
pub fn claims(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> Vec<PersistentVolumeClaim> {
    let Some(pool) = &dd.spec.volume_pool else { return Vec::new() };
    let size = dd.spec.storage.size().to_string();
    let mut labels = names.labels();
    labels.insert(names::VOLUME_POOL_LABEL.into(), names.daemon.clone());
    (0..pool.size)
        .map(|i| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(names.pool_claim(i)),
                namespace: dd.namespace(),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: dd.spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size.clone()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// A claim's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub at: Option<Timestamp>,
}

pub fn lease_of(claim: &PersistentVolumeClaim) -> Option<Lease> {
    let a = claim.metadata.annotations.as_ref()?;
    let id = a.get(names::LEASE_ANNOTATION).filter(|id| !id.is_empty())?.clone();
    Some(Lease { id, at: a.get(names::LEASED_AT_ANNOTATION).and_then(|t| t.parse().ok()) })
}

/// The claim and lease id a pod holds (`CLAIM/ID`), if any.
pub fn lease_of_pod(pod: &Pod) -> Option<(String, String)> {
    let value = pod.annotations().get(names::POD_LEASE_ANNOTATION)?;
    let (claim, id) = value.split_once('/')?;
    Some((claim.to_string(), id.to_string()))
}

/// The free claim for a pod with sticky key `key`: among free claims, the one its key scores
/// highest on (a pipeline gets its own volume back when it is free).
pub fn choose<'a>(free: &'a [String], key: &str) -> Option<&'a String> {
    crate::model::sticky::choose(key, free)
}

/// The pod holding a lease, as far as the lease's end is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// `namespace/name`.
    pub pod: String,
    /// Succeeded or Failed: its containers are done and its volumes are released.
    pub finished: bool,
    /// When its deletion was asked for (`metadata.deletionTimestamp`), if it was.
    pub terminating_since: Option<Timestamp>,
}

/// Leases whose holder has been terminating for [`STUCK_AFTER`] or more, as `(claim, pod,
/// minutes)`: the lease ends only once the pod is gone, which on a lost node is never.
pub fn stuck(holders: &BTreeMap<(String, String), Holder>, now: Timestamp) -> Vec<(String, String, i64)> {
    holders
        .iter()
        .filter(|(_, h)| !h.finished)
        .filter_map(|((claim, _), h)| {
            let since = now.duration_since(h.terminating_since?);
            (since >= STUCK_AFTER).then(|| (claim.clone(), h.pod.clone(), since.as_secs() / 60))
        })
        .collect()
}

/// Whether a lease has ended: its pod finished, or no pod holds it and either a pod was seen
/// holding it before (`was_held`: the pod is gone) or the grace has passed (the pod never came,
/// or the operator restarted and cannot tell). A pod being deleted still holds it until it is
/// gone (its volume is still mounted).
pub fn ended(lease: &Lease, holder: Option<&Holder>, was_held: bool, now: Timestamp) -> bool {
    match holder {
        Some(h) => h.finished,
        None => was_held || lease.at.is_none_or(|at| now.duration_since(at) >= UNCLAIMED_GRACE),
    }
}

/// Each pod that holds a lease, by `(claim, id)`.
pub fn holders(pods: &[Pod]) -> BTreeMap<(String, String), Holder> {
    pods.iter()
        .filter_map(|p| {
            let key = lease_of_pod(p)?;
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
            let holder = Holder {
                pod: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                finished: matches!(phase, "Succeeded" | "Failed"),
                terminating_since: p.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            };
            Some((key, holder))
        })
        .collect()
}

/// The pool as status shows it.
pub fn status(claims: &[PersistentVolumeClaim], holders: &BTreeMap<(String, String), Holder>) -> Vec<PoolVolume> {
    let mut out: Vec<PoolVolume> = claims
        .iter()
        .map(|c| {
            let name = c.name_any();
            let lease = lease_of(c);
            PoolVolume {
                leased_to: lease
                    .as_ref()
                    .map(|l| holders.get(&(name.clone(), l.id.clone())).map_or_else(|| format!("lease {}", l.id), |h| h.pod.clone())),
                leased_at: lease.and_then(|l| l.at).map(|t| t.to_string()),
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, lease: Option<(&str, &str)>) -> PersistentVolumeClaim {
        let annotations = lease.map(|(id, at)| json!({"dind.dev/lease": id, "dind.dev/leased-at": at})).unwrap_or(json!({}));
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).unwrap()
    }

    fn pod(name: &str, lease: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ci", "annotations": {"dind.dev/volume-lease": lease}},
            "status": {"phase": phase}}))
        .unwrap()
    }

    #[test]
    fn the_pool_has_size_claims_owned_and_sized() {
        let dd: DindDaemon = serde_json::from_value(json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon",
            "metadata": {"name": "job", "namespace": "ci", "uid": "u"},
            "spec": {"mode": "Sidecar", "volumePool": {"size": 3}, "storage": {"size": "5Gi", "storageClassName": "fast"}}}))
        .unwrap();
        let owner = OwnerReference { name: "job".into(), uid: "u".into(), ..Default::default() };
        let c = claims(&dd, &Names::of("job"), &owner);
        assert_eq!(c.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["job-cache-0", "job-cache-1", "job-cache-2"]);
        let spec = c[0].spec.clone().unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"], Quantity("5Gi".into()));
        assert_eq!(c[0].labels()["dind.dev/volume-pool"], "job");
    }

    #[test]
    fn a_lease_ends_when_its_pod_finished_or_never_came() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let lease = Lease { id: "a".into(), at: Some("2026-11-30T11:59:30Z".parse().unwrap()) };
        let running = Holder { pod: "ci/p".into(), finished: false, terminating_since: None };
        let done = Holder { pod: "ci/p".into(), finished: true, terminating_since: None };
        assert!(!ended(&lease, Some(&running), false, now));
        assert!(ended(&lease, Some(&done), true, now));
        assert!(!ended(&lease, None, false, now), "30 s after admission the pod may still be on its way");
        assert!(ended(&lease, None, true, now), "its pod was seen and is gone");
        assert!(ended(&lease, None, false, now + SignedDuration::from_secs(31)));
        assert!(ended(&Lease { id: "b".into(), at: None }, None, false, now));
    }

    #[test]
    fn status_names_the_pod_that_holds_each_volume() {
        let claims = [claim("job-cache-1", None), claim("job-cache-0", Some(("a", "2026-11-30T11:59:30Z")))];
        let pods = [pod("p", "job-cache-0/a", "Running"), pod("other", "elsewhere/x", "Running")];
        let s = status(&claims, &holders(&pods));
        assert_eq!(s[0].name, "job-cache-0");
        assert_eq!(s[0].leased_to.as_deref(), Some("ci/p"));
        assert_eq!(s[1].leased_to, None);
    }

    #[test]
    fn a_key_gets_its_own_free_volume_back() {
        let free: Vec<String> = (0..4).map(|i| format!("job-cache-{i}")).collect();
        let first = choose(&free, "pipeline-1").unwrap().clone();
        assert_eq!(choose(&free, "pipeline-1"), Some(&first));
        let others: Vec<String> = free.iter().filter(|c| **c != first).cloned().collect();
        assert!(choose(&others, "pipeline-1").is_some(), "taken: another free one");
        assert_eq!(choose(&[], "pipeline-1"), None);
    }

    #[test]
    fn a_holder_terminating_past_the_bound_is_stuck_and_named() {
        let now = Timestamp::from_second(10_000).unwrap();
        let since = |secs: i64| Some(Timestamp::from_second(10_000 - secs).unwrap());
        let holder = |pod: &str, terminating_since| Holder { pod: pod.into(), finished: false, terminating_since };
        let holders: BTreeMap<(String, String), Holder> = [
            (("job-cache-0".to_string(), "a".to_string()), holder("ci/lost", since(1800))),
            (("job-cache-1".to_string(), "b".to_string()), holder("ci/leaving", since(30))),
            (("job-cache-2".to_string(), "c".to_string()), holder("ci/running", None)),
        ]
        .into();
        assert_eq!(stuck(&holders, now), [("job-cache-0".to_string(), "ci/lost".to_string(), 30)]);
    }
}
