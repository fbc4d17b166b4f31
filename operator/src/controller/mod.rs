//! The controller: where a reconcile starts.
//!
//! - `run` (here) starts the watches and the kube-runtime `Controller` for one namespace (or all);
//! - `watches`: what each watch keeps (slimming) and which of its events wake a reconcile;
//! - `reconcile`: one pass over a DindDaemon, in named steps, and the retry policy;
//! - `apply`: server-side apply of the owned objects; `observe`: the daemons as they run;
//! - `cert_roll`: a daemon restarted, when idle, to serve its renewed certificate;
//! - `events`: Kubernetes events; `memory`: what is remembered between passes.

pub mod applied;
mod apply;
mod cert_roll;
mod claims;
pub mod docker_api;
mod events;
mod memory;
mod observe;
mod prune;
mod reconcile;
mod volume_pool;
mod volumes;
mod watches;

use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Resource};

pub use memory::{BACKOFF_MAX, BACKOFF_START, Memory, backoff};
pub use observe::DISK_EVERY;
pub use reconcile::{RECONCILE_TIMEOUT, error_policy, reconcile};
pub use watches::{Route, daemon_of_labelled, daemons_of_pod, route_of, slim_daemon, slim_pod, slim_statefulset};

use crate::crd::DindDaemon;
use crate::model::kinds::OwnedKind;
use crate::model::names::{DAEMON_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, Names, ROUTE_LABEL};
use crate::objects::Defaults;
use crate::runtime::metrics::Metrics;
use crate::runtime::server::Liveness;
use crate::runtime::watch_map::WatchMap;
use crate::status::Refusal;
use applied::{Stamp, StampCache, Stamps};
use watches::{content_hash, hash_of, owned_metadata, relevant_changes};

/// The events the operator watches: the StatefulSet controller's refusals to create pods.
const REFUSAL_EVENTS: &str = "involvedObject.kind=StatefulSet,reason=FailedCreate";

/// At most this many reconciles run at once.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// What every reconcile shares; built once per controller: the client and its recorder and
/// metrics, the configuration, the watch-fed caches, what is remembered between passes, and the
/// gate that opens once the caches have listed.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    pub caches: Caches,
    /// Last applies, storage drivers, failures, held leases (see `memory`).
    pub memory: Memory,
    /// Turns true once every cache has had its first list.
    pub caches_ready: tokio::sync::watch::Receiver<bool>,
}

/// Caches of the objects the operator owns, fed by the same watches that trigger reconciles.
/// StatefulSets keep metadata and status (what status and drift detection read); of the rest
/// only their stamps are kept.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // Stores of thousands of objects: not for logs.
pub struct OwnedCaches {
    pub statefulsets: Store<StatefulSet>,
    pub services: StampCache,
    pub secrets: StampCache,
    pub policies: StampCache,
    pub budgets: StampCache,
}

impl OwnedCaches {
    /// Waits for each cache's first list; until then a missing object may only be unlisted.
    /// At most one task may wait on a `Store` at a time (kube 5's `wait_until_ready` keeps a
    /// single waker and strands the other waiters), hence the `caches_ready` gate.
    async fn ready(&self) -> bool {
        self.services.wait_until_ready().await;
        self.secrets.wait_until_ready().await;
        self.policies.wait_until_ready().await;
        self.budgets.wait_until_ready().await;
        self.statefulsets.wait_until_ready().await.is_ok()
    }

    /// The stamp of one owned object as its kind's cache holds it now.
    fn stamp(&self, kind: OwnedKind, ns: &str, name: &str) -> Option<Stamp> {
        let cache = match kind {
            OwnedKind::StatefulSet => {
                return self.statefulsets.get(&ObjectRef::new(name).within(ns)).and_then(|s| Stamp::of(&s.metadata));
            }
            OwnedKind::Service => &self.services,
            OwnedKind::Secret => &self.secrets,
            OwnedKind::NetworkPolicy => &self.policies,
            OwnedKind::PodDisruptionBudget => &self.budgets,
        };
        cache.get(ns, name)
    }

    /// The stamps of a DindDaemon's owned objects (every name it may own, Secrets and budget
    /// included) as the caches hold them now.
    fn stamps(&self, ns: &str, names: &Names) -> Stamps {
        names
            .owned(true, true)
            .into_iter()
            .filter_map(|(kind, name)| Some((applied::key(kind, name), self.stamp(kind, ns, name)?)))
            .collect()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The watch-fed caches a [`Context`] is built over (each reconcile reads them, and never
/// lists).
#[allow(missing_debug_implementations)] // Stores of thousands of objects: not for logs.
pub struct Caches {
    /// Every pod of the watched namespace(s), slimmed to what status needs (see `slim_pod`).
    pub pods: Store<Pod>,
    /// The objects the operator owns, as their watches last showed them.
    pub owned: OwnedCaches,
    /// The DindDaemons themselves (the controller's own cache).
    pub daemons: Store<DindDaemon>,
    /// What the client Services route to, by EndpointSlice (see `observe::routed_pods`): a
    /// daemon is Ready only once its Service routes to it.
    pub routes: WatchMap<Route>,
    /// The StatefulSet controller's `FailedCreate` events, by event: why daemon pods are
    /// missing (see `observe`).
    pub refusals: WatchMap<Refusal>,
}

impl Context {
    /// The context of a controller over these caches; spawns the task that opens the
    /// `caches_ready` gate once they have all listed.
    pub fn new(client: Client, metrics: Metrics, settings: Settings, caches: Caches) -> Self {
        let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
        let (gate_pods, gate_owned, gate_routes, gate_refusals) =
            (caches.pods.clone(), caches.owned.clone(), caches.routes.clone(), caches.refusals.clone());
        tokio::spawn(async move {
            gate_routes.wait_until_ready().await;
            gate_refusals.wait_until_ready().await;
            if gate_pods.wait_until_ready().await.is_ok() && gate_owned.ready().await {
                let _ = ready_tx.send(true);
            }
        });
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            caches,
            memory: Memory::default(),
            caches_ready,
        }
    }
}

/// What the operator was configured with, shared by the controller of each namespace.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub query_daemons: bool,
    /// How often each daemon is asked its disk usage (and pruned if due); default
    /// [`DISK_EVERY`].
    pub disk_every: std::time::Duration,
    /// Told whether reconciles finish (for `/healthz`).
    pub liveness: Arc<Liveness>,
}

/// Runs the controller for one namespace (or all, with `None`) until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Metrics,
    settings: Settings,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(c: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    let ns = namespace.as_deref();
    // Each watch feeds a slim cache (read by reconcile, which then never lists) and the
    // triggers; `relevant_changes` lets through only changes of what the operator reads.
    //
    // DindDaemons: spec changes (generation), not our own status writes.
    let (daemons, writer) = reflector::store::<DindDaemon>();
    let daemon_stream = relevant_changes(
        reflector(
            writer,
            watcher(api::<DindDaemon>(&client, ns), watcher::Config::default().any_semantic()).map_ok(|e| e.modify(slim_daemon)),
        )
        .default_backoff(),
        |dd| hash_of(&(&dd.metadata.uid, dd.metadata.generation, dd.metadata.deletion_timestamp.is_some())),
    );
    // Pods: our daemons' readiness and crash loops, and foreign pods that mount a daemon's
    // volume.
    let (pods, writer) = reflector::store::<Pod>();
    let pod_stream = relevant_changes(
        reflector(writer, watcher(api::<Pod>(&client, ns), watcher::Config::default()).map_ok(|e| e.modify(slim_pod))).default_backoff(),
        content_hash,
    );
    // Our own children only (the label keeps the operator from caching every Secret).
    let ours = watcher::Config::default().labels(&format!("{}={FIELD_MANAGER}", MANAGED_BY_LABEL));
    let (statefulsets, writer) = reflector::store::<StatefulSet>();
    let sts_stream = relevant_changes(
        reflector(writer, watcher(api::<StatefulSet>(&client, ns), ours.clone()).map_ok(|e| e.modify(slim_statefulset))).default_backoff(),
        content_hash,
    );
    let (services, service_stream) = owned_metadata(api::<PartialObjectMeta<Service>>(&client, ns), &ours);
    let (secrets, secret_stream) = owned_metadata(api::<PartialObjectMeta<Secret>>(&client, ns), &ours);
    let (policies, policy_stream) = owned_metadata(api::<PartialObjectMeta<NetworkPolicy>>(&client, ns), &ours);
    let (budgets, budget_stream) = owned_metadata(api::<PartialObjectMeta<PodDisruptionBudget>>(&client, ns), &ours);
    let owned = OwnedCaches { statefulsets, services, secrets, policies, budgets };
    // Claims of sidecar volume pools: a lease the webhook takes (an annotation) wakes the
    // DindDaemon, which then looks again until the lease has ended.
    let pool = watcher::Config::default().labels(crate::model::names::VOLUME_POOL_LABEL);
    let (_pool_claims, pool_stream) =
        owned_metadata(api::<PartialObjectMeta<k8s_openapi::api::core::v1::PersistentVolumeClaim>>(&client, ns), &pool);
    // EndpointSlices of our client Services: which daemons a Service routes to, for Ready. The
    // EndpointSlice controller copies the Service's labels (but not `managed-by`: it sets its
    // own), so they are selected by the route label. Only the routed pods are kept, and only a
    // change of them wakes a reconcile.
    let routes = WatchMap::<Route>::default();
    let route_stream = relevant_changes(
        {
            let routes = routes.clone();
            let selector = format!("{},{}={}", DAEMON_LABEL, ROUTE_LABEL.0, ROUTE_LABEL.1);
            watcher(api::<EndpointSlice>(&client, ns), watcher::Config::default().labels(&selector)).default_backoff().map_ok(move |e| {
                routes.observe(&e, route_of);
                e
            })
        },
        |slice| hash_of(&route_of(slice)),
    );

    // The StatefulSet controller's FailedCreate events (the StatefulSet is named like its
    // DindDaemon): kept as `Refusal`s; a new or repeated one wakes the DindDaemon. Only refusals
    // are watched, so the namespace's other events cost nothing.
    let refusals = WatchMap::<Refusal>::default();
    let refusal_stream = relevant_changes(
        {
            let refusals = refusals.clone();
            watcher(api::<Event>(&client, ns), watcher::Config::default().fields(REFUSAL_EVENTS)).default_backoff().map_ok(move |e| {
                refusals.observe(&e, Refusal::of_event);
                e
            })
        },
        |event| hash_of(&Refusal::of_event(event)),
    );

    let ctx = Arc::new(Context::new(client.clone(), metrics, settings, Caches { pods, owned, daemons: daemons.clone(), routes, refusals }));
    Controller::for_stream(daemon_stream, daemons)
        .owns_stream(sts_stream)
        .owns_stream(service_stream)
        .owns_stream(secret_stream)
        .owns_stream(policy_stream)
        .owns_stream(budget_stream)
        .owns_stream(pool_stream)
        .watches_stream(pod_stream, daemons_of_pod)
        .watches_stream(route_stream, daemon_of_labelled)
        .watches_stream(refusal_stream, |event: Event| {
            let name = Refusal::of_event(&event)?.statefulset;
            Some(ObjectRef::new(&name).within(event.metadata.namespace.as_deref()?))
        })
        // Bounded: a thousand reconciles at once would open a thousand connections and queue
        // the apiserver into timeouts; sixteen keep it busy without drowning it.
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile request failed");
            }
        })
        .await;
}
