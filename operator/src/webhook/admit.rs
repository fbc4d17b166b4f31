//! Admission: one AdmissionReview in, its answer out. `decide` reads the DindDaemon a pod
//! names and dispatches by webhook and `spec.mode`: a pool daemon's client (`inject`), or a
//! daemon of the pod's own (`sidecar`, with a warm volume leased by `lease`). The framing
//! (HTTPS, routes) is `serve`'s.

use std::time::Duration;

use base64::Engine as _;
use kube::api::GetParams;
use kube::{Api, Client};
use serde_json::{Value, json};

use k8s_openapi::api::core::v1::Namespace;

use super::inject::{self, PerPod, Target};
use super::{lease, sidecar};
use crate::crd::{DaemonMode, DindDaemon};
use crate::model::{grant, names};
use crate::objects::{self, Defaults};
use crate::runtime::metrics::{AdmissionLabels, Metrics};

/// What the handler needs.
#[derive(Clone)]
pub struct Handler {
    pub client: Client,
    /// The daemon and dind-init images of DindDaemons that name none.
    pub defaults: Defaults,
    pub wait_seconds: u32,
    pub metrics: Metrics,
    /// Where per-pod certificates are minted (this server); None: pods that need one are
    /// refused.
    pub minting: Option<Minting>,
}

/// Where a pod's certificate sidecar reaches the operator, and what it trusts there.
#[derive(Clone, Debug)]
pub struct Minting {
    /// `https://SERVICE.NAMESPACE.svc:443`: the webhook's Service.
    pub operator: String,
    /// The serving certificate's keeper: its CAs are what the sidecar trusts.
    pub resolver: std::sync::Arc<super::Resolver>,
}

/// Which of the two webhooks a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Webhook {
    /// `dind.dev/inject`: a pool daemon's client.
    Inject,
    /// `dind.dev/sidecar`: a daemon of the pod's own.
    Sidecar,
}

impl Webhook {
    fn label(self) -> &'static str {
        match self {
            Self::Inject => names::INJECT_LABEL,
            Self::Sidecar => names::SIDECAR_LABEL,
        }
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("defaults", &self.defaults)
            .field("wait_seconds", &self.wait_seconds)
            .field("minting", &self.minting.as_ref().map(|m| &m.operator))
            .finish()
    }
}

/// How long the handler may spend reading the DindDaemon: well inside the webhook's timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

impl Handler {
    /// The AdmissionReview response for one request.
    pub async fn review(&self, review: &Value, webhook: Webhook) -> Value {
        let request = &review["request"];
        let uid = request["uid"].clone();
        let (outcome, response) = match self.decide(request, webhook).await {
            Ok(None) => ("skipped", json!({"uid": uid, "allowed": true})),
            Ok(Some(patch)) if patch.is_empty() => ("unchanged", json!({"uid": uid, "allowed": true})),
            Ok(Some(patch)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(Value::Array(patch).to_string());
                ("injected", json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded}))
            }
            Err(message) => {
                ("refused", json!({"uid": uid, "allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": message}}))
            }
        };
        self.metrics.admissions.get_or_create(&AdmissionLabels { outcome: outcome.to_string() }).inc();
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }

    /// None: not ours to touch. Some(patch): the JSON Patch. Err: the refusal's message.
    async fn decide(&self, request: &Value, webhook: Webhook) -> Result<Option<Vec<Value>>, String> {
        if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" || request["subResource"].is_string() {
            return Ok(None);
        }
        let pod = &request["object"];
        let Some(daemon) = pod["metadata"]["labels"][webhook.label()].as_str() else { return Ok(None) };
        let pod_namespace = request["namespace"].as_str().or_else(|| pod["metadata"]["namespace"].as_str()).unwrap_or("default");
        // A pool daemon of another namespace, by grant (`dind.dev/inject-namespace`).
        let namespace = match (webhook, pod["metadata"]["labels"][names::INJECT_NAMESPACE_LABEL].as_str()) {
            (Webhook::Inject, Some(other)) => other,
            _ => pod_namespace,
        };
        let dd = match tokio::time::timeout(READ_TIMEOUT, read_daemon(&self.client, namespace, daemon)).await {
            Ok(Ok(Some(dd))) => dd,
            Ok(Ok(None)) => {
                return Err(format!(
                    "DindDaemon {daemon:?} not found in namespace {namespace:?} (named by pod label {}); create it, or fix the label",
                    webhook.label()
                ));
            }
            Ok(Err(e)) => return Err(format!("could not read DindDaemon {daemon:?} in namespace {namespace:?}: {e}")),
            Err(_) => return Err(format!("could not read DindDaemon {daemon:?} in namespace {namespace:?} within {READ_TIMEOUT:?}")),
        };
        let plan = match (webhook, dd.spec.mode) {
            (Webhook::Inject, DaemonMode::Pool) => {
                let mut target = Target::of(&dd, namespace, &self.defaults.init_image);
                if namespace != pod_namespace {
                    let pod_labels: grant::Labels = serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
                    let asked = granted(&self.client, &dd, (namespace, daemon), pod_namespace, &pod_labels);
                    match tokio::time::timeout(READ_TIMEOUT, asked).await {
                        Ok(Ok(())) => {}
                        Ok(Err(Denied::NotGranted(why) | Denied::Unreadable(why))) => return Err(why),
                        Err(_) => return Err(format!("could not read namespace {pod_namespace:?} within {READ_TIMEOUT:?}")),
                    }
                }
                if grant::per_pod(&dd.spec, namespace, pod_namespace) {
                    target.per_pod = Some(self.per_pod()?);
                }
                inject::plan(pod, &target, self.wait_seconds).map_err(|r| r.0)?
            }
            (Webhook::Sidecar, DaemonMode::Sidecar) => {
                // A registry CA whose ConfigMap is missing would leave the pod ContainerCreating.
                let cas = &dd.spec.daemon.registry_cas;
                if !cas.is_empty() {
                    let read = crate::runtime::config_maps::keys(&self.client, namespace, cas.iter().map(|c| c.config_map.as_str()));
                    let found = match tokio::time::timeout(READ_TIMEOUT, read).await {
                        Ok(Ok(found)) => found,
                        Ok(Err(e)) => return Err(format!("could not read the ConfigMaps of DindDaemon {daemon:?}'s registryCAs: {e}")),
                        Err(_) => {
                            return Err(format!(
                                "could not read the ConfigMaps of DindDaemon {daemon:?}'s registryCAs within {READ_TIMEOUT:?}"
                            ));
                        }
                    };
                    if let Some(problems) = objects::registry_cas::problems(cas, namespace, &found) {
                        return Err(format!("DindDaemon {daemon:?}: {problems}"));
                    }
                }
                // A pod that will be refused takes no volume: check it before leasing one.
                let unleased =
                    objects::sidecar(&dd, &self.defaults, None).map_err(|e| format!("building the sidecar of {daemon:?}: {e}"))?;
                sidecar::plan(pod, daemon, &unleased).map_err(|r| r.0)?;
                let dry_run = request["dryRun"].as_bool().unwrap_or(false);
                let (claim, lease_note) = lease::for_pod(&self.client, READ_TIMEOUT, pod, &dd, namespace, dry_run).await?;
                let parts = objects::sidecar(&dd, &self.defaults, claim.as_deref())
                    .map_err(|e| format!("building the sidecar of {daemon:?}: {e}"))?;
                let mut plan = sidecar::plan(pod, daemon, &parts).map_err(|r| r.0)?;
                if let Some(note) = lease_note {
                    plan.patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", names::POD_LEASE_ANNOTATION.replace('/', "~1")), "value": note}));
                }
                plan
            }
            (Webhook::Inject, DaemonMode::Sidecar) => {
                return Err(format!(
                    "DindDaemon {daemon:?} in namespace {namespace:?} is in Sidecar mode: label the pod {}={daemon} for a daemon of its own",
                    names::SIDECAR_LABEL
                ));
            }
            (Webhook::Sidecar, DaemonMode::Pool) => {
                return Err(format!(
                    "DindDaemon {daemon:?} in namespace {namespace:?} is in Pool mode (spec.mode): label the pod {}={daemon} to use its shared daemons, or name a DindDaemon with spec.mode: Sidecar",
                    names::INJECT_LABEL
                ));
            }
        };
        let pod_name = pod["metadata"]["name"].as_str().or_else(|| pod["metadata"]["generateName"].as_str()).unwrap_or_default();
        if plan.patch.is_empty() {
            // Re-invoked (reinvocationPolicy IfNeeded) or re-submitted: it has everything.
            tracing::debug!(namespace, pod = pod_name, daemon, ?webhook, "already injected");
        } else {
            tracing::info!(namespace, pod = pod_name, daemon, ?webhook, docker_host = %plan.docker_host, containers = ?plan.injected, "injected Docker");
        }
        Ok(Some(plan.patch))
    }
}

/// Why a pod of another namespace is not served.
#[derive(Debug)]
pub(super) enum Denied {
    /// The grant does not cover it (the words name what it lacks).
    NotGranted(String),
    /// Its namespace could not be read.
    Unreadable(String),
}

/// Whether DindDaemon `target` (`dd`) grants a pod of `pod_namespace` with `pod_labels`: its
/// namespace's labels are read here (from the watch cache; neither a review nor a token carries
/// them), the decision is `grant::check`'s. Admission and the certificate endpoint both ask.
pub(super) async fn granted(
    client: &Client,
    dd: &DindDaemon,
    target: (&str, &str),
    pod_namespace: &str,
    pod_labels: &grant::Labels,
) -> Result<(), Denied> {
    let ns = Api::<Namespace>::all(client.clone()).get_with(pod_namespace, &GetParams::any()).await.map_err(|e| {
        Denied::Unreadable(format!("could not read namespace {pod_namespace:?} to check DindDaemon {}/{}'s grant: {e}", target.0, target.1))
    })?;
    grant::check(target, dd.spec.clients.as_ref(), pod_namespace, &ns.metadata.labels.unwrap_or_default(), pod_labels)
        .map_err(Denied::NotGranted)
}

impl Handler {
    /// Where the pod's certificate sidecar asks, once this server's CAs are known.
    fn per_pod(&self) -> Result<PerPod, String> {
        let minting =
            self.minting.as_ref().ok_or("this operator mints no per-pod client certificates (it serves no certificate endpoint)")?;
        let operator_ca = minting.resolver.bundle().ok_or(
            "the operator's serving certificate is not loaded yet, so a per-pod client certificate cannot be set up; retry in a moment",
        )?;
        Ok(PerPod { operator: minting.operator.clone(), operator_ca })
    }
}

/// The DindDaemon a pod names, from the apiserver's watch cache (`resourceVersion=0`: no read of
/// etcd, which under load costs the admission as much again as the rest of the call). A name the
/// cache does not know is read once more from etcd, so a DindDaemon created a moment before its
/// pods is never refused as missing; a spec changed a moment ago may still show its previous
/// version for as long as the cache lags (milliseconds).
async fn read_daemon(client: &Client, namespace: &str, name: &str) -> Result<Option<DindDaemon>, kube::Error> {
    let api: Api<DindDaemon> = Api::namespaced(client.clone(), namespace);
    match api.get_with(name, &GetParams::any()).await {
        Ok(dd) => Ok(Some(dd)),
        Err(kube::Error::Api(e)) if e.code == 404 => api.get_opt(name).await,
        Err(e) => Err(e),
    }
}
