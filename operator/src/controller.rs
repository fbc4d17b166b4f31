//! The reconciler: read → certificates → build (pure) → server-side apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::applied::{self, Applied, Stamp, StampCache, Stamps};
use crate::crd::{DindDaemon, DindDaemonStatus};
use crate::error::{Error, Result};
use crate::metrics::{DaemonLabels, ErrorLabels, Metrics};
use crate::resources::{self, Defaults, Names, Owned};
use crate::status::{self, Observed};
use crate::{daemon_info, tls};

/// At most this many reconciles run at once.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "dind-operator";

/// What every reconcile shares; built once in `main`.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub defaults: Defaults,
    /// Storage driver per daemon pod uid, asked once per pod over mTLS.
    pub drivers: Mutex<HashMap<String, String>>,
    /// Whether to ask daemons for their storage driver (off where pods are unreachable).
    pub query_daemons: bool,
    /// Every pod of the watched namespace(s), slimmed to what status needs (see `slim_pod`).
    pub pods: Store<Pod>,
    /// The objects the operator owns, as their watches last showed them.
    pub owned: OwnedCaches,
    /// The DindDaemons themselves (the controller's own cache).
    pub daemons: Store<DindDaemon>,
    /// The last successful apply of each DindDaemon, by `namespace/name`.
    pub applied: Mutex<HashMap<String, Applied>>,
    /// Turns true once every cache above has had its first list.
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
}

impl OwnedCaches {
    /// Waits for each cache's first list; until then a missing object may only be unlisted.
    /// At most one task may wait on a `Store` at a time (kube 5's `wait_until_ready` keeps a
    /// single waker and strands the other waiters), hence the `caches_ready` gate.
    async fn ready(&self) -> bool {
        self.services.wait_until_ready().await;
        self.secrets.wait_until_ready().await;
        self.policies.wait_until_ready().await;
        self.statefulsets.wait_until_ready().await.is_ok()
    }

    /// The stamps of a DindDaemon's owned objects as the caches hold them now.
    fn stamps(&self, ns: &str, names: &Names) -> Stamps {
        let mut out = Stamps::new();
        let sts = self.statefulsets.get(&ObjectRef::new(&names.statefulset).within(ns));
        if let Some(stamp) = sts.and_then(|s| Stamp::of(&s.metadata)) {
            out.insert(applied::key("StatefulSet", &names.statefulset), stamp);
        }
        let mut add = |cache: &StampCache, kind: &str, name: &str| {
            if let Some(stamp) = cache.get(ns, name) {
                out.insert(applied::key(kind, name), stamp);
            }
        };
        add(&self.services, "Service", &names.headless_service);
        add(&self.services, "Service", &names.client_service);
        add(&self.policies, "NetworkPolicy", &names.network_policy);
        for secret in [&names.ca_secret, &names.server_secret, &names.client_secret] {
            add(&self.secrets, "Secret", secret);
        }
        out
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("defaults", &self.defaults).finish_non_exhaustive()
    }
}

impl Context {
    /// The context of a controller over these caches; spawns the task that opens the
    /// `caches_ready` gate once they have all listed.
    pub fn new(
        client: Client,
        metrics: Metrics,
        settings: Settings,
        pods: Store<Pod>,
        owned: OwnedCaches,
        daemons: Store<DindDaemon>,
    ) -> Self {
        let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
        let (gate_pods, gate_owned) = (pods.clone(), owned.clone());
        tokio::spawn(async move {
            if gate_pods.wait_until_ready().await.is_ok() && gate_owned.ready().await {
                let _ = ready_tx.send(true);
            }
        });
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            defaults: settings.defaults,
            drivers: Mutex::new(HashMap::new()),
            query_daemons: settings.query_daemons,
            pods,
            owned,
            daemons,
            applied: Mutex::new(HashMap::new()),
            caches_ready,
        }
    }
}

/// What the operator was configured with, shared by the controller of each namespace.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub query_daemons: bool,
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
    let ours = watcher::Config::default().labels(&format!("{}={FIELD_MANAGER}", resources::MANAGED_BY_LABEL));
    let (statefulsets, writer) = reflector::store::<StatefulSet>();
    let sts_stream = relevant_changes(
        reflector(writer, watcher(api::<StatefulSet>(&client, ns), ours.clone()).map_ok(|e| e.modify(slim_statefulset))).default_backoff(),
        content_hash,
    );
    let (services, service_stream) = owned_metadata(api::<PartialObjectMeta<Service>>(&client, ns), &ours);
    let (secrets, secret_stream) = owned_metadata(api::<PartialObjectMeta<Secret>>(&client, ns), &ours);
    let (policies, policy_stream) = owned_metadata(api::<PartialObjectMeta<NetworkPolicy>>(&client, ns), &ours);
    let owned = OwnedCaches { statefulsets, services, secrets, policies };

    let ctx = Arc::new(Context::new(client.clone(), metrics, settings, pods, owned, daemons.clone()));
    Controller::for_stream(daemon_stream, daemons)
        .owns_stream(sts_stream)
        .owns_stream(service_stream)
        .owns_stream(secret_stream)
        .owns_stream(policy_stream)
        .watches_stream(pod_stream, daemons_of_pod)
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

/// A metadata-only watch of one kind of owned object: its stamps and its trigger stream.
fn owned_metadata<K>(
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
fn relevant_changes<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    relevant: fn(&K) -> u64,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let hash = relevant(&obj);
                (seen.insert(ObjectRef::from_obj(&obj), hash) != Some(hash)).then_some(Ok(obj))
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&ObjectRef::from_obj(&obj));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::future::ready(out)
    })
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A hash of everything a (slimmed) object holds but its resourceVersion.
fn content_hash<K: Resource + Serialize + Clone>(obj: &K) -> u64 {
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
    sts.spec = None;
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
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.generate_name = None;
    meta.finalizers = None;
    // Of the labels, only the one that names the pod's DindDaemon.
    meta.labels = meta.labels.take().and_then(|mut l| l.remove_entry(resources::DAEMON_LABEL)).map(|kv| [kv].into());
    if let Some(spec) = pod.spec.as_mut() {
        let volumes = spec.volumes.take().map(|v| {
            v.into_iter()
                .filter(|v| v.persistent_volume_claim.is_some())
                .map(|v| k8s_openapi::api::core::v1::Volume {
                    name: v.name,
                    persistent_volume_claim: v.persistent_volume_claim,
                    ..Default::default()
                })
                .collect()
        });
        *spec = k8s_openapi::api::core::v1::PodSpec { volumes, ..Default::default() };
    }
    if let Some(status) = pod.status.as_mut() {
        let keep = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            conditions: status.conditions.take().map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
            container_statuses: status.container_statuses.take().map(|cs| {
                cs.into_iter()
                    .map(|c| k8s_openapi::api::core::v1::ContainerStatus {
                        name: c.name,
                        ready: c.ready,
                        restart_count: c.restart_count,
                        state: c.state,
                        last_state: c.last_state,
                        container_id: c.container_id,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        *status = keep;
    }
}

/// The DindDaemons a pod concerns: the one whose daemon it is (by label), and any whose volume
/// (`docker-NAME-i`) it mounts.
pub fn daemons_of_pod(pod: Pod) -> Vec<ObjectRef<DindDaemon>> {
    let ns = pod.namespace();
    let mut names: Vec<String> = pod.labels().get(resources::DAEMON_LABEL).cloned().into_iter().collect();
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(claim) = vol.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()) else { continue };
        // docker-NAME-ORDINAL: NAME may itself contain dashes, the ordinal never does.
        if let Some((name, ordinal)) = claim.strip_prefix("docker-").and_then(|rest| rest.rsplit_once('-'))
            && !name.is_empty()
            && ordinal.chars().all(|c| c.is_ascii_digit())
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

/// Re-queues a failed reconcile with a short delay and counts the error by kind.
pub fn error_policy(dd: Arc<DindDaemon>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %dd.name_any(), namespace = ?dd.namespace(), error = %error, "reconcile failed");
    ctx.metrics.errors.get_or_create(&ErrorLabels { kind: error.label().into() }).inc();
    Action::requeue(Duration::from_secs(5))
}

/// One pass over a DindDaemon.
pub async fn reconcile(dd: Arc<DindDaemon>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&dd, &ctx).await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(dd: &DindDaemon, ctx: &Context) -> Result<Action> {
    let ns = dd.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dd.name_any();
    let key = format!("{ns}/{name}");
    if dd.meta().deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector; nothing to do.
        forget(ctx, &key);
        return Ok(Action::await_change());
    }
    let uid = dd.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let names = Names::of(&name);
    let client = &ctx.client;

    // Read: the owned objects as the caches show them, and the certificates made before —
    // from memory when their Secrets are as the last apply left them, else from the apiserver.
    // Until the caches have listed, a missing object may only be unlisted: wait for them.
    ctx.caches_ready.clone().wait_for(|ready| *ready).await.map_err(|_| Error::CachesClosed)?;
    let seen = ctx.owned.stamps(&ns, &names);
    let last = ctx.applied.lock().ok().and_then(|m| m.get(&key).cloned()).filter(|a| a.owner_uid == uid);
    // No Secrets in the (listed) cache and no apply remembered: nothing to read. The CA Secret
    // is then created, not applied, so one that exists after all (unlabelled, or written an
    // instant ago) is never overwritten: the create fails and the loop reads it instead.
    let mut fresh = last.is_none() && secrets_of(&seen).is_empty();
    let (plan, applied_sts) = loop {
        let (pairs, secret_stamps) = match &last {
            Some(a) if a.secrets_hold(&seen) => {
                let certs = a.certs.clone();
                ((Some(certs.ca), Some(certs.server), Some(certs.client)), secrets_of(&seen))
            }
            _ if fresh => ((None, None, None), Stamps::new()),
            _ => read_certificates(client, &ns, &names).await?,
        };
        let server_names = tls::server_names(&name, &ns, &names.headless_service, dd.spec.replicas);
        let plan = tls::plan(pairs.0, pairs.1, pairs.2, &ns, &name, &server_names, time::OffsetDateTime::now_utc())?;

        // Build: pure, spec in, objects out.
        let owned = resources::build(dd, &ctx.defaults, &plan.bundle)?;
        let fingerprint = applied::fingerprint(&owned)?;

        // Apply: server-side apply with one field manager, forced (we own these objects) —
        // unless the same objects were applied before and nobody has touched them since.
        if last.as_ref().is_some_and(|a| a.unchanged(&uid, fingerprint, &seen)) {
            ctx.metrics.unchanged.inc();
            break (plan, None);
        }
        let certs_changed = !plan.issued.is_empty();
        let write = match (certs_changed, fresh) {
            (false, _) => SecretWrite::None,
            (true, false) => SecretWrite::Apply,
            (true, true) => SecretWrite::CreateCa,
        };
        let Some((mut stamps, sts)) = apply_all(client, &ns, &owned, write).await? else {
            tracing::debug!(%name, "a CA Secret exists that the cache did not show; reading it");
            fresh = false;
            continue;
        };
        if !certs_changed {
            stamps.extend(secret_stamps);
        }
        let record = Applied { owner_uid: uid.clone(), fingerprint, stamps, certs: plan.bundle.clone() };
        if let Ok(mut m) = ctx.applied.lock() {
            m.insert(key.clone(), record);
        }
        if certs_changed {
            publish(ctx, dd, EventType::Normal, "CertificatesIssued", format!("issued {} certificate(s)", plan.issued.join(", "))).await;
        }
        break (plan, Some(sts));
    };
    prune(ctx);

    // Status. The StatefulSet just applied is newer than the cache's copy; otherwise the cache's.
    let sts = applied_sts.or_else(|| ctx.owned.statefulsets.get(&ObjectRef::new(&names.statefulset).within(&ns)).map(|s| (*s).clone()));
    let claim_prefix = format!("docker-{name}-");
    let concerned = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && (p.labels().get(resources::DAEMON_LABEL) == Some(&name) || mounts_claim(p, &claim_prefix))
    });
    let pods: Vec<Pod> =
        concerned.iter().filter(|p| p.labels().get(resources::DAEMON_LABEL) == Some(&name)).map(|p| (**p).clone()).collect();
    let intruders = find_intruders(&claim_prefix, &pods, &concerned);
    let drivers = if ctx.query_daemons { storage_drivers(ctx, dd, &pods, &plan.bundle).await } else { Vec::new() };
    let observed = Observed { statefulset: sts.as_ref(), pods: &pods, intruders, drivers };
    let new_status = status::compute(dd, &observed, Time(k8s_openapi::jiff::Timestamp::now()));
    announce_transitions(ctx, dd, dd.status.as_ref(), &new_status).await;
    ctx.metrics
        .ready_daemons
        .get_or_create(&DaemonLabels { namespace: ns.clone(), name: name.clone() })
        .set(i64::from(new_status.ready_replicas));
    if dd.status.as_ref() != Some(&new_status) {
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "status": new_status});
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.metrics.status_updates.inc();
    }
    // Readiness changes arrive through the pod and StatefulSet watches; the periodic pass is a
    // safety net and the point where certificates due for renewal (2/3 of their life) are
    // re-issued. Polling not-ready daemons every few seconds would keep an idle operator busy.
    Ok(Action::requeue(Duration::from_secs(30 * 60)))
}

/// Reads the CA, server and client Secrets: their certificate pairs and their stamps.
async fn read_certificates(
    client: &Client,
    ns: &str,
    names: &Names,
) -> Result<((Option<tls::Pair>, Option<tls::Pair>, Option<tls::Pair>), Stamps)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (ca, server, client_cert) =
        tokio::try_join!(secrets.get_opt(&names.ca_secret), secrets.get_opt(&names.server_secret), secrets.get_opt(&names.client_secret))?;
    let stamps = [&ca, &server, &client_cert]
        .into_iter()
        .flatten()
        .filter_map(|s| Some((applied::key("Secret", s.metadata.name.as_deref()?), Stamp::of(&s.metadata)?)))
        .collect();
    Ok((resources::pairs_from_secrets(ca.as_ref(), server.as_ref(), client_cert.as_ref()), stamps))
}

/// The Secret entries of a set of stamps.
fn secrets_of(stamps: &Stamps) -> Stamps {
    stamps.iter().filter(|(k, _)| k.starts_with("Secret/")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Drops what the operator remembers of a DindDaemon: its last apply and its metric.
fn forget(ctx: &Context, key: &str) {
    if let Ok(mut m) = ctx.applied.lock() {
        m.remove(key);
    }
    if let Some((namespace, name)) = key.split_once('/') {
        ctx.metrics.ready_daemons.remove(&DaemonLabels { namespace: namespace.into(), name: name.into() });
    }
}

/// Forgets DindDaemons (and daemon pods) that are gone. Cheap unless some are: it only walks
/// a map when it holds more entries than there are DindDaemons (pods).
fn prune(ctx: &Context) {
    // Storage drivers are remembered per pod uid; pods come and go.
    if let Ok(mut drivers) = ctx.drivers.lock()
        && drivers.len() > ctx.pods.len()
    {
        let live: std::collections::HashSet<String> = ctx.pods.state().iter().filter_map(|p| p.uid()).collect();
        drivers.retain(|uid, _| live.contains(uid));
    }
    let gone: Vec<String> = match ctx.applied.lock() {
        Ok(m) if m.len() > ctx.daemons.len() => m
            .keys()
            .filter(|k| {
                let (ns, name) = k.split_once('/').unwrap_or_default();
                ctx.daemons.get(&ObjectRef::new(name).within(ns)).is_none()
            })
            .cloned()
            .collect(),
        _ => return,
    };
    for key in gone {
        forget(ctx, &key);
    }
}

/// Applies `obj` and returns the apiserver's copy.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let mut doc = serde_json::to_value(obj).map_err(|source| Error::Serialize { what: "owned object", source })?;
    // Server-side apply needs apiVersion and kind, which typed objects do not serialize.
    let dt = K::DynamicType::default();
    doc["apiVersion"] = json!(K::api_version(&dt));
    doc["kind"] = json!(K::kind(&dt));
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc)).await?)
}

/// How `apply_all` writes the certificate Secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SecretWrite {
    /// Unchanged certificates: an unchanged Secret needs no write.
    None,
    /// New or renewed certificates over Secrets that were read.
    Apply,
    /// A first CA: created (fails if one exists), then the leaf Secrets applied.
    CreateCa,
}

/// Applies every owned object and returns the stamps of what it wrote, and the StatefulSet;
/// `None` if `SecretWrite::CreateCa` found a CA Secret already there.
async fn apply_all(client: &Client, ns: &str, owned: &Owned, secrets: SecretWrite) -> Result<Option<(Stamps, StatefulSet)>> {
    fn stamp<K: Resource>(kind: &str, obj: &K, out: &mut Stamps) {
        if let (Some(name), Some(s)) = (obj.meta().name.as_deref(), Stamp::of(obj.meta())) {
            out.insert(applied::key(kind, name), s);
        }
    }
    let mut stamps = Stamps::new();
    if secrets != SecretWrite::None {
        // The CA Secret first: if we stop half-way, the next pass finds the CA and re-uses it.
        let ca = if secrets == SecretWrite::CreateCa {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match Api::<Secret>::namespaced(client.clone(), ns).create(&params, &owned.ca_secret).await {
                Ok(ca) => ca,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        } else {
            apply(client, ns, &owned.ca_secret).await?
        };
        let (server, client_secret) = tokio::try_join!(apply(client, ns, &owned.server_secret), apply(client, ns, &owned.client_secret))?;
        for s in [&ca, &server, &client_secret] {
            stamp("Secret", s, &mut stamps);
        }
    }
    let (headless, client_service, policy, sts) = tokio::try_join!(
        apply(client, ns, &owned.headless_service),
        apply(client, ns, &owned.client_service),
        apply::<NetworkPolicy>(client, ns, &owned.network_policy),
        apply(client, ns, &owned.statefulset),
    )?;
    stamp("Service", &headless, &mut stamps);
    stamp("Service", &client_service, &mut stamps);
    stamp("NetworkPolicy", &policy, &mut stamps);
    stamp("StatefulSet", &sts, &mut stamps);
    Ok(Some((stamps, sts)))
}

/// Whether a pod mounts a claim whose name starts with `prefix`.
fn mounts_claim(pod: &Pod, prefix: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name.starts_with(prefix)))
}

/// Pods that are not this DindDaemon's daemons yet mount one of its volumes (`docker-NAME-i`,
/// given as `claim_prefix` `docker-NAME-`).
fn find_intruders(claim_prefix: &str, ours: &[Pod], all: &[Arc<Pod>]) -> Vec<(String, String)> {
    let ours: Vec<String> = ours.iter().map(ResourceExt::name_any).collect();
    let mut found = Vec::new();
    for pod in all.iter().filter(|p| !ours.contains(&p.name_any())) {
        let finished = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished {
            continue;
        }
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(claim) = vol.persistent_volume_claim.as_ref().map(|c| &c.claim_name)
                && claim.starts_with(claim_prefix)
            {
                found.push((pod.name_any(), claim.clone()));
            }
        }
    }
    found
}

/// Storage driver of each ready daemon, asked once per pod over the daemon's own mTLS.
async fn storage_drivers(ctx: &Context, dd: &DindDaemon, pods: &[Pod], certs: &tls::Bundle) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let ns = dd.namespace().unwrap_or_default();
    let names = Names::of(&dd.name_any());
    for pod in pods {
        let (Some(uid), Some(ip)) = (pod.uid(), pod.status.as_ref().and_then(|s| s.pod_ip.clone())) else { continue };
        let known = ctx.drivers.lock().ok().and_then(|m| m.get(&uid).cloned());
        let driver = match known {
            Some(d) => Some(d),
            None => {
                let sni = format!("{}.{}.{ns}.svc", pod.name_any(), names.headless_service);
                let tls = dd.spec.tls.enabled.then_some((certs, sni.as_str()));
                match daemon_info::storage_driver(&ip, dd.spec.port, tls).await {
                    Ok(d) => {
                        if let Ok(mut m) = ctx.drivers.lock() {
                            m.insert(uid, d.clone());
                        }
                        Some(d)
                    }
                    Err(e) => {
                        tracing::debug!(pod = %pod.name_any(), error = %e, "daemon did not tell its storage driver");
                        None
                    }
                }
            }
        };
        if let Some(d) = driver {
            out.push((pod.name_any(), d));
        }
    }
    out
}

/// Events for condition transitions, with PascalCase reasons.
async fn announce_transitions(ctx: &Context, dd: &DindDaemon, old: Option<&DindDaemonStatus>, new: &DindDaemonStatus) {
    for type_ in [status::READY, status::DEGRADED] {
        let Some(now) = new.conditions.iter().find(|c| c.type_ == type_) else { continue };
        let before = status::find(old, type_);
        if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
            continue;
        }
        let (kind, reason) = match (type_, now.status.as_str()) {
            (status::READY, "True") => (EventType::Normal, "DaemonReady"),
            (status::READY, _) if before.is_none() => continue,
            (status::READY, _) => (EventType::Warning, "DaemonNotReady"),
            (_, "True") => (EventType::Warning, now.reason.as_str()),
            (_, _) if before.is_none() => continue,
            _ => (EventType::Normal, "Recovered"),
        };
        publish(ctx, dd, kind, reason, now.message.clone()).await;
    }
}

async fn publish(ctx: &Context, dd: &DindDaemon, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &dd.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    } else {
        info!(name = %dd.name_any(), reason, "event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_map_to_the_daemons_they_concern() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "thief", "namespace": "b", "labels": {"dind.dev/daemon": "own"}},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "persistentVolumeClaim": {"claimName": "docker-my-ci-12"}},
                {"name": "b", "persistentVolumeClaim": {"claimName": "docker-own-0"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data-x-0"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "docker-x-y"}}
            ]}
        }))
        .unwrap();
        let refs: Vec<String> =
            daemons_of_pod(pod).iter().map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name)).collect();
        assert_eq!(refs, ["b/own", "b/my-ci"]);
    }

    #[test]
    fn slim_pods_keep_what_status_reads() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ci-0", "labels": {"dind.dev/daemon": "ci", "controller-revision-hash": "ci-5d8"}, "annotations": {"big": "x"}},
            "spec": {"containers": [{"name": "dockerd", "image": "docker:dind", "args": ["a", "b"]}],
                     "volumes": [{"name": "docker", "persistentVolumeClaim": {"claimName": "docker-ci-0"}},
                                 {"name": "tmp", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "1.2.3.4",
                       "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [{"name": "dockerd", "image": "docker:dind", "imageID": "sha", "ready": true, "restartCount": 2,
                                              "state": {"running": {}}}]}
        }))
        .unwrap();
        slim_pod(&mut pod);
        assert!(pod.metadata.annotations.is_none());
        assert_eq!(pod.labels().len(), 1, "only the daemon label stays");
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        assert_eq!(spec.volumes.as_ref().unwrap().len(), 1);
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert!(status.host_ip.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!((cs.ready, cs.restart_count, cs.image.as_str()), (true, 2, ""));
        assert_eq!(daemons_of_pod(pod).len(), 1, "slimming keeps what the trigger maps on");
    }
}
