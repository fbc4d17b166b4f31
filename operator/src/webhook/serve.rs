//! The webhook's HTTPS server and its one handler, `POST /inject` (AdmissionReview v1).
//!
//! The serving certificate sits behind a [`Resolver`]: the keeper (or the file watcher in
//! cert-manager mode) swaps it, and the next TLS handshake uses the new one; nothing restarts.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use kube::api::GetParams;
use kube::{Api, Client};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

use super::inject::{self, Target};
use super::{lease, sidecar};
use crate::crd::{DaemonMode, DindDaemon, WhenExhausted};
use crate::metrics::{AdmissionLabels, Metrics};
use crate::names;
use crate::objects::{self, Defaults};
use crate::tls::Pair;

/// The certificate the server presents; replaced in place on rotation.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    /// Makes `pair` the certificate of every new handshake.
    pub fn set(&self, pair: &Pair) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let provider =
            rustls::crypto::CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Some(Arc::new(certified));
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// What the handler needs.
#[derive(Clone)]
pub struct Handler {
    pub client: Client,
    /// The daemon and dind-init images of DindDaemons that name none.
    pub defaults: Defaults,
    pub wait_seconds: u32,
    pub metrics: Metrics,
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
        f.debug_struct("Handler").field("defaults", &self.defaults).field("wait_seconds", &self.wait_seconds).finish()
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
        let namespace = request["namespace"].as_str().or_else(|| pod["metadata"]["namespace"].as_str()).unwrap_or("default");
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
                inject::plan(pod, &Target::of(&dd, namespace, &self.defaults.init_image), self.wait_seconds).map_err(|r| r.0)?
            }
            (Webhook::Sidecar, DaemonMode::Sidecar) => {
                // A pod that will be refused takes no volume: check it before leasing one.
                let unleased =
                    objects::sidecar(&dd, &self.defaults, None).map_err(|e| format!("building the sidecar of {daemon:?}: {e}"))?;
                sidecar::plan(pod, daemon, &unleased).map_err(|r| r.0)?;
                let dry_run = request["dryRun"].as_bool().unwrap_or(false);
                let (claim, lease_note) = self.lease(pod, &dd, namespace, dry_run).await?;
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

impl Handler {
    /// The pool claim a sidecar pod gets, and the lease annotation to record (None: nothing new
    /// to record: no pool, or the pod was leased one before, at an earlier invocation).
    async fn lease(
        &self,
        pod: &Value,
        dd: &DindDaemon,
        namespace: &str,
        dry_run: bool,
    ) -> Result<(Option<String>, Option<String>), String> {
        if let Some(held) = pod["metadata"]["annotations"][names::POD_LEASE_ANNOTATION].as_str() {
            return Ok((held.split_once('/').map(|(claim, _)| claim.to_string()), None));
        }
        let Some(pool) = &dd.spec.volume_pool else { return Ok((None, None)) };
        let key = crate::sticky::key_of(pod).value;
        match tokio::time::timeout(READ_TIMEOUT, lease::take(&self.client, namespace, dd, &key, dry_run)).await {
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
                        self.warn(
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
            Err(_) => {
                Err(format!("leasing a volume of {:?} took longer than {READ_TIMEOUT:?}", dd.metadata.name.clone().unwrap_or_default()))
            }
        }
    }

    async fn warn(&self, dd: &DindDaemon, reason: &str, note: String) {
        use kube::Resource as _;
        let recorder = kube::runtime::events::Recorder::new(
            self.client.clone(),
            kube::runtime::events::Reporter { controller: names::FIELD_MANAGER.into(), instance: None },
        );
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Admit".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &dd.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

async fn inject_route(State(handler): State<Arc<Handler>>, body: axum::body::Bytes) -> impl IntoResponse {
    route(&handler, &body, Webhook::Inject).await
}

async fn sidecar_route(State(handler): State<Arc<Handler>>, body: axum::body::Bytes) -> impl IntoResponse {
    route(&handler, &body, Webhook::Sidecar).await
}

async fn route(handler: &Handler, body: &[u8], webhook: Webhook) -> impl IntoResponse + use<> {
    let started = Instant::now();
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], format!("not an AdmissionReview: {e}")),
    };
    let answer = handler.review(&review, webhook).await;
    handler.metrics.admission_seconds.observe(started.elapsed().as_secs_f64());
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], answer.to_string())
}

/// Serves HTTPS on `addr` until `shutdown` resolves. Handshakes wait for a certificate: the
/// server refuses them until the resolver has one.
pub async fn serve(
    addr: SocketAddr,
    resolver: Arc<Resolver>,
    handler: Handler,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route(names::INJECT_PATH, post(inject_route))
        .route(names::SIDECAR_PATH, post(sidecar_route))
        .with_state(Arc::new(handler));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, path = names::INJECT_PATH, "serving the injection webhook");
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}
