//! The watches behind the controller: what each keeps (slimming), which of its events wake a
//! reconcile (`relevant_changes`), and which DindDaemons a pod concerns (`daemons_of_pod`).

use std::collections::{HashMap, HashSet};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::applied::StampCache;
use crate::crd::DindDaemon;
use crate::model::names::{DAEMON_LABEL, POD_LEASE_ANNOTATION, SIDECAR_LABEL, parse_claim};

/// A metadata-only watch of one kind of owned object: its stamps and its trigger stream.
pub(super) fn owned_metadata<K>(
    api: Api<PartialObjectMeta<K>>,
    config: &watcher::Config,
) -> (StampCache, impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let cache = StampCache::default();
    let observer = cache.clone();
    let stream = watcher(api, config.clone())
        .default_backoff()
        .map_ok(move |event| {
            observer.observe(&event);
            event
        })
        .touched_objects();
    (cache, stream)
}

/// The objects of a reflected watch whose `relevant` hash changed since they were last seen,
/// and every deleted one: watch events that change nothing the operator reads (a pod's
/// scheduling condition, our own status writes) then wake no reconcile.
///
/// The memory of hashes follows re-lists: what a re-list does not show again is dropped (a
/// watch that broke while objects were deleted would otherwise keep their hashes forever).
/// Only hashes are kept, not objects (memory at a thousand DindDaemons), so a vanished object
/// wakes nothing itself; the StatefulSet it belonged to changes status and wakes its owner.
pub(super) fn relevant_changes<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    relevant: fn(&K) -> u64,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + 'static,
{
    let mut filter = RelevantChanges::<K>::default();
    events
        .map(move |event| match event {
            Err(e) => vec![Err(e)],
            Ok(event) => filter.pass(event, relevant).into_iter().map(Ok).collect(),
        })
        .flat_map(futures::stream::iter)
}

/// The state of [`relevant_changes`]: a hash per object seen, and during a re-list the
/// objects it has shown so far.
#[derive(Debug)]
pub(super) struct RelevantChanges<K: Resource<DynamicType = ()>> {
    seen: HashMap<ObjectRef<K>, u64>,
    relisting: Option<HashSet<ObjectRef<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for RelevantChanges<K> {
    fn default() -> Self {
        Self { seen: HashMap::new(), relisting: None }
    }
}

impl<K: Resource<DynamicType = ()>> RelevantChanges<K> {
    /// The objects this event should wake a reconcile for.
    pub(super) fn pass(&mut self, event: watcher::Event<K>, relevant: fn(&K) -> u64) -> Vec<K> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let key = ObjectRef::from_obj(&obj);
                if let Some(listed) = self.relisting.as_mut() {
                    listed.insert(key.clone());
                }
                let hash = relevant(&obj);
                if self.seen.insert(key, hash) == Some(hash) { Vec::new() } else { vec![obj] }
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&ObjectRef::from_obj(&obj));
                vec![obj]
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.seen.retain(|k, _| listed.contains(k));
                }
                Vec::new()
            }
        }
    }

    /// How many objects the filter remembers.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}

pub(super) fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A hash of everything a (slimmed) object holds but its resourceVersion.
pub(super) fn content_hash<K: Resource + Serialize + Clone>(obj: &K) -> u64 {
    let mut copy = obj.clone();
    copy.meta_mut().resource_version = None;
    hash_of(&serde_json::to_vec(&copy).unwrap_or_default())
}

/// Keeps of a DindDaemon what reconcile reads: spec, status, identity. `kubectl apply`'s
/// last-applied annotation and the managed fields would double its size.
pub fn slim_daemon(dd: &mut DindDaemon) {
    dd.metadata.managed_fields = None;
    if let Some(a) = dd.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Drops what neither the caches' readers nor the owner mapping need.
fn slim_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
}

/// Keeps of a StatefulSet its metadata (owner, generation) and status: what status and drift
/// detection read. The pod template is most of its size.
pub fn slim_statefulset(sts: &mut StatefulSet) {
    slim_meta(&mut sts.metadata);
    // Of the spec only the claim templates' sizes: they cannot change (see `objects::keep_claim_size`).
    let claims = sts.spec.take().and_then(|s| s.volume_claim_templates).map(|templates| {
        templates
            .into_iter()
            .map(|c| k8s_openapi::api::core::v1::PersistentVolumeClaim {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: c.metadata.name, ..Default::default() },
                spec: c
                    .spec
                    .map(|s| k8s_openapi::api::core::v1::PersistentVolumeClaimSpec { resources: s.resources, ..Default::default() }),
                ..Default::default()
            })
            .collect()
    });
    sts.spec = claims.map(|c| k8s_openapi::api::apps::v1::StatefulSetSpec { volume_claim_templates: Some(c), ..Default::default() });
    if let Some(status) = sts.status.as_mut() {
        // Not the revision hashes or collision count: they change nothing status reports.
        *status = k8s_openapi::api::apps::v1::StatefulSetStatus {
            observed_generation: status.observed_generation,
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            updated_replicas: status.updated_replicas,
            ..Default::default()
        };
    }
}

/// Keeps of a pod only what the operator reads: names, labels, PVC volumes, phase, readiness,
/// IP and container states. A thousand pending pods then cost little memory.
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    // Of the annotations, only a sidecar pod's volume lease (which pool claim it holds): the
    // volume pool reads its holders from this cache, not from a list of the namespace's pods.
    let lease = meta.annotations.take().and_then(|mut a| a.remove_entry(POD_LEASE_ANNOTATION));
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.generate_name = None;
    meta.finalizers = None;
    // Of the labels, only the ones that name the pod's DindDaemon: as its daemon, or as the
    // pool a sidecar pod leases its volume from (its phase and its end end the lease).
    let labels = meta.labels.take().unwrap_or_default();
    let kept: std::collections::BTreeMap<String, String> =
        labels.into_iter().filter(|(k, _)| k == DAEMON_LABEL || k == SIDECAR_LABEL).collect();
    let sidecar = kept.contains_key(SIDECAR_LABEL);
    meta.labels = (!kept.is_empty()).then_some(kept);
    meta.annotations = lease.filter(|_| sidecar).map(|(k, v)| std::collections::BTreeMap::from([(k, v)]));
    // The watch sees every pod (a foreign pod on a daemon's volume must be seen, and no
    // selector can ask for that), so what is kept of the others is next to nothing: only claims
    // named like a daemon's volume (`docker-NAME-i`), and a status only for pods that are
    // daemons or mount one. An unrelated pod then costs its name, and its updates wake nothing.
    let ours = meta.labels.as_ref().is_some_and(|l| l.contains_key(DAEMON_LABEL));
    if let Some(spec) = pod.spec.as_mut() {
        let volumes = spec.volumes.take().map(|v| {
            v.into_iter()
                .filter(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| parse_claim(&c.claim_name).is_some()))
                .map(|v| k8s_openapi::api::core::v1::Volume {
                    name: v.name,
                    persistent_volume_claim: v.persistent_volume_claim,
                    ..Default::default()
                })
                .collect()
        });
        let volumes = volumes.filter(|v: &Vec<_>| !v.is_empty());
        *spec = k8s_openapi::api::core::v1::PodSpec { volumes, ..Default::default() };
    }
    let concerns_us = ours || sidecar || pod.spec.as_ref().is_some_and(|s| s.volumes.is_some());
    if !concerns_us {
        pod.status = None;
        meta_only(&mut pod.metadata);
    }
    if let Some(status) = pod.status.as_mut() {
        let keep = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            conditions: status.conditions.take().map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
            container_statuses: status.container_statuses.take().map(|cs| cs.into_iter().map(slim_container_status).collect()),
            // An install container that cannot pull its image holds the daemon back: status names it.
            init_container_statuses: status.init_container_statuses.take().map(|cs| cs.into_iter().map(slim_container_status).collect()),
            ..Default::default()
        };
        *status = keep;
    }
}

fn slim_container_status(c: k8s_openapi::api::core::v1::ContainerStatus) -> k8s_openapi::api::core::v1::ContainerStatus {
    k8s_openapi::api::core::v1::ContainerStatus {
        name: c.name,
        ready: c.ready,
        restart_count: c.restart_count,
        state: c.state,
        last_state: c.last_state,
        container_id: c.container_id,
        ..Default::default()
    }
}

/// What the operator keeps of an EndpointSlice: its Service and the pods it routes to (ready
/// endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub service: String,
    pub pods: Vec<String>,
}

/// The [`Route`] of an EndpointSlice.
pub fn route_of(slice: &EndpointSlice) -> Option<Route> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let pods = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
        .collect();
    Some(Route { service, pods })
}

/// The label of an EndpointSlice that names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The DindDaemon an object labelled with [`DAEMON_LABEL`] belongs to (EndpointSlices carry
/// their Service's labels).
pub fn daemon_of_labelled<K: Resource>(obj: K) -> Option<ObjectRef<DindDaemon>> {
    let name = obj.meta().labels.as_ref()?.get(DAEMON_LABEL)?;
    Some(ObjectRef::new(name).within(obj.meta().namespace.as_deref()?))
}

/// Of an unrelated object, its identity only.
fn meta_only(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    *meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..Default::default()
    };
}

/// The DindDaemons a pod concerns: the one whose daemon it is (by label), the sidecar
/// DindDaemon it runs a daemon of (by label: a lease of its pool may end with the pod), and any
/// whose volume (`docker-NAME-i`) it mounts.
pub fn daemons_of_pod(pod: Pod) -> Vec<ObjectRef<DindDaemon>> {
    let ns = pod.namespace();
    let mut names: Vec<String> = pod.labels().get(DAEMON_LABEL).cloned().into_iter().collect();
    names.extend(pod.labels().get(SIDECAR_LABEL).filter(|n| !names.contains(n)).cloned());
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(claim) = vol.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()) else { continue };
        if let Some((name, _)) = parse_claim(claim)
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names
        .into_iter()
        .map(|n| {
            let r = ObjectRef::new(&n);
            match &ns {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "watches_tests.rs"]
mod tests;
