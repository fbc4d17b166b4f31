//! The reconciler: read → certificates → build (pure) → server-side apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

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
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("defaults", &self.defaults).finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, defaults: Defaults, query_daemons: bool, pods: Store<Pod>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            defaults,
            drivers: Mutex::new(HashMap::new()),
            query_daemons,
            pods,
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
    fn api<K: Resource<DynamicType = ()>>(c: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    let ns = namespace.as_deref();
    // Pods: our daemons' readiness and crash loops, and foreign pods that mount a daemon's
    // volume. One watch feeds both a slim cache (read by reconcile, so a reconcile never lists
    // pods) and the triggers.
    let (pods, pods_writer) = reflector::store::<Pod>();
    let pod_stream = reflector(pods_writer, watcher(api::<Pod>(&client, ns), watcher::Config::default()).map_ok(|e| e.modify(slim_pod)))
        .default_backoff()
        .touched_objects();
    let ctx = Arc::new(Context::new(client.clone(), metrics, settings.defaults, settings.query_daemons, pods));
    // Only our own children: the label keeps the operator from waking for every Secret.
    let ours = watcher::Config::default().labels("app.kubernetes.io/managed-by=dind-operator");
    Controller::new(api::<DindDaemon>(&client, ns), watcher::Config::default().any_semantic())
        .owns(api::<StatefulSet>(&client, ns), ours.clone())
        .owns(api::<Service>(&client, ns), ours.clone())
        .owns(api::<Secret>(&client, ns), ours)
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

/// Keeps of a pod only what the operator reads: names, labels, PVC volumes, phase, readiness,
/// IP and container states. A thousand pending pods then cost little memory.
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(spec) = pod.spec.as_mut() {
        let volumes = spec.volumes.take().map(|v| {
            v.into_iter()
                .filter(|v| v.persistent_volume_claim.is_some())
                .map(|v| k8s_openapi::api::core::v1::Volume { name: v.name, persistent_volume_claim: v.persistent_volume_claim, ..Default::default() })
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
        if let Some((name, ordinal)) = claim.strip_prefix("docker-").and_then(|rest| rest.rsplit_once('-')) {
            if !name.is_empty() && ordinal.chars().all(|c| c.is_ascii_digit()) && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
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
    if dd.meta().deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector; nothing to do.
        return Ok(Action::await_change());
    }
    let ns = dd.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dd.name_any();
    let names = Names::of(&name);
    let client = &ctx.client;

    // Read: the certificates we made before, if any.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (ca, server, client_cert) = tokio::try_join!(
        secrets.get_opt(&names.ca_secret),
        secrets.get_opt(&names.server_secret),
        secrets.get_opt(&names.client_secret)
    )?;
    let (ca, server, client_cert) = resources::pairs_from_secrets(ca.as_ref(), server.as_ref(), client_cert.as_ref());
    let server_names = tls::server_names(&name, &ns, &names.headless_service, dd.spec.replicas);
    let plan = tls::plan(ca, server, client_cert, &ns, &name, &server_names, time::OffsetDateTime::now_utc())?;

    // Build: pure, spec in, objects out.
    let owned = resources::build(dd, &ctx.defaults, &plan.bundle)?;

    // Apply: server-side apply with one field manager, forced (we own these objects).
    apply_all(client, &ns, &owned, !plan.issued.is_empty()).await?;
    if !plan.issued.is_empty() {
        publish(ctx, dd, EventType::Normal, "CertificatesIssued", format!("issued {} certificate(s)", plan.issued.join(", "))).await;
    }

    // Status. The pod cache must have its first list before it can speak for the pods.
    if ctx.pods.wait_until_ready().await.is_err() {
        return Err(Error::MissingField("pod cache (its watch ended)"));
    }
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt(&names.statefulset).await?;
    let in_ns: Vec<Arc<Pod>> = ctx.pods.state().into_iter().filter(|p| p.namespace().as_deref() == Some(ns.as_str())).collect();
    let pods: Vec<Pod> = in_ns
        .iter()
        .filter(|p| p.labels().get(resources::DAEMON_LABEL) == Some(&name))
        .map(|p| (**p).clone())
        .collect();
    let intruders = find_intruders(&name, &pods, &in_ns);
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
    }
    // Readiness changes arrive through the pod and StatefulSet watches; the periodic pass is a
    // safety net and the point where certificates due for renewal (2/3 of their life) are
    // re-issued. Polling not-ready daemons every few seconds would keep an idle operator busy.
    Ok(Action::requeue(Duration::from_secs(30 * 60)))
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
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
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc)).await?;
    Ok(())
}

/// Applies every owned object. Secrets only when a certificate was made or one is missing:
/// an unchanged Secret needs no write.
async fn apply_all(client: &Client, ns: &str, owned: &Owned, certs_changed: bool) -> Result<()> {
    if certs_changed {
        // The CA Secret first: if we stop half-way, the next pass finds the CA and re-uses it.
        apply(client, ns, &owned.ca_secret).await?;
        tokio::try_join!(apply(client, ns, &owned.server_secret), apply(client, ns, &owned.client_secret))?;
    }
    tokio::try_join!(
        apply(client, ns, &owned.headless_service),
        apply(client, ns, &owned.client_service),
        apply::<NetworkPolicy>(client, ns, &owned.network_policy),
        apply(client, ns, &owned.statefulset),
    )?;
    Ok(())
}

/// Pods that are not this DindDaemon's daemons yet mount one of its volumes (`docker-NAME-i`).
fn find_intruders(name: &str, ours: &[Pod], all: &[Arc<Pod>]) -> Vec<(String, String)> {
    let claim_prefix = format!("docker-{name}-");
    let ours: Vec<String> = ours.iter().map(ResourceExt::name_any).collect();
    let mut found = Vec::new();
    for pod in all.iter().filter(|p| !ours.contains(&p.name_any())) {
        let finished = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished {
            continue;
        }
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(claim) = vol.persistent_volume_claim.as_ref().map(|c| &c.claim_name) {
                if claim.starts_with(&claim_prefix) {
                    found.push((pod.name_any(), claim.clone()));
                }
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
        let refs: Vec<String> = daemons_of_pod(pod).iter().map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name)).collect();
        assert_eq!(refs, ["b/own", "b/my-ci"]);
    }

    #[test]
    fn slim_pods_keep_what_status_reads() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ci-0", "labels": {"dind.dev/daemon": "ci"}, "annotations": {"big": "x"}},
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
