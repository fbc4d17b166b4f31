//! The webhook's framing: the HTTPS server, its two routes (`POST /inject`, `POST /sidecar`,
//! AdmissionReview v1) and the serving certificate. What a request is answered is `admit`'s.
//!
//! The serving certificate sits behind a [`Resolver`]: the keeper (or the file watcher in
//! cert-manager mode) swaps it, and the next TLS handshake uses the new one; nothing restarts.
//!
//! Draining (after SIGTERM, see `main`): the server still accepts and answers, but every answer
//! says `Connection: close`, so the apiserver's kept-alive connections (which kube-proxy pinned
//! to this pod) end one by one and its next admissions open connections to a ready replica.
//! Then `shutdown`: no more accepts; connections still open finish the request they carry and
//! close, and `serve` returns once they have (bounded by [`CLOSE_GRACE`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;

use super::admit::{Handler, Webhook};
use crate::model::names;
use crate::model::tls::Pair;
/// The certificate the server presents; replaced in place on rotation.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The CAs of the serving certificate (PEM): what per-pod certificate sidecars trust.
    bundle: RwLock<Option<String>>,
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

    /// Records the CAs clients verify the serving certificate with.
    pub fn set_bundle(&self, bundle: String) {
        *self.bundle.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bundle);
    }

    /// The CAs of the serving certificate, once known.
    pub fn bundle(&self) -> Option<String> {
        self.bundle.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
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

async fn inject_route(State(handler): State<Arc<Handler>>, body: axum::body::Bytes) -> impl IntoResponse {
    route(&handler, &body, Webhook::Inject).await
}

async fn sidecar_route(State(handler): State<Arc<Handler>>, body: axum::body::Bytes) -> impl IntoResponse {
    route(&handler, &body, Webhook::Sidecar).await
}

async fn certificates_route(
    State(handler): State<Arc<Handler>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let (status, answer) = super::mint::answer(&handler, authorization, &body).await;
    let kind = if status == StatusCode::OK { "application/json" } else { "text/plain" };
    (status, [(header::CONTENT_TYPE, kind)], answer)
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

/// How long connections still open at shutdown may take to finish their request.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Adds `Connection: close` to every answer while draining (hyper then closes the connection
/// once the answer is written).
async fn close_while_draining(State(draining): State<Arc<AtomicBool>>, mut response: axum::response::Response) -> axum::response::Response {
    if draining.load(Ordering::Relaxed) {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// Who may call the webhook.
#[derive(Clone, Debug, Default)]
pub enum Callers {
    /// Anyone who reaches the port (Kubernetes' default: the apiserver presents no certificate
    /// unless its AdmissionConfiguration says so).
    #[default]
    Anyone,
    /// Only a client presenting a certificate of this CA (PEM): the apiserver, configured with
    /// a client certificate for webhooks (docs/design.md, "Who may call the webhook").
    CertificateOf(String),
}

impl Callers {
    fn server_config(&self, resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let builder = rustls::ServerConfig::builder();
        Ok(match self {
            Self::Anyone => builder.with_no_client_auth().with_cert_resolver(resolver),
            Self::CertificateOf(ca_pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                    roots
                        .add(cert.map_err(|e| format!("the webhook's client CA: {e}"))?)
                        .map_err(|e| format!("the webhook's client CA: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the webhook's client CA holds no certificate".into());
                }
                // A connection without a certificate is served the certificate route only (the
                // pods' sidecars call it; they authenticate with their token): see `serve_on`.
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the webhook's client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier).with_cert_resolver(resolver)
            }
        })
    }
}

/// Serves HTTPS on `addr` until `shutdown` resolves. Handshakes wait for a certificate: the
/// server refuses them until the resolver has one. `draining`: see the module's note.
pub async fn serve(
    addr: SocketAddr,
    resolver: Arc<Resolver>,
    handler: Handler,
    callers: &Callers,
    draining: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let client_certificates = matches!(callers, Callers::CertificateOf(_));
    tracing::info!(%addr, path = names::INJECT_PATH, client_certificates, "serving the injection webhook");
    serve_on(listener, resolver, handler, callers, draining, shutdown).await
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    resolver: Arc<Resolver>,
    handler: Handler,
    callers: &Callers,
    draining: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut config = callers.server_config(resolver).map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let handler = Arc::new(handler);
    let certificates = Router::new().route(dind_contract::per_pod::PATH, post(certificates_route));
    let app = Router::new()
        .route(names::INJECT_PATH, post(inject_route))
        .route(names::SIDECAR_PATH, post(sidecar_route))
        .merge(certificates.clone())
        .with_state(handler.clone())
        .layer(axum::middleware::map_response_with_state(draining.clone(), close_while_draining));
    // Callers without a client certificate, where admissions need one: certificates only.
    let anonymous = certificates.with_state(handler).layer(axum::middleware::map_response_with_state(draining, close_while_draining));
    let need_certificate = matches!(callers, Callers::CertificateOf(_));
    // Connections watch this: at shutdown each finishes the request it carries, then closes.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
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
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let (app, anonymous) = (app.clone(), anonymous.clone());
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let app = if need_certificate && tls.get_ref().1.peer_certificates().is_none() { anonymous } else { app };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let io = hyper_util::rt::TokioIo::new(tls);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let open = connections.len();
    if tokio::time::timeout(CLOSE_GRACE, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open, grace = ?CLOSE_GRACE, "webhook connections still open at shutdown; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::model::tls::{self, Leaf};

    /// A review that needs no API call (not a pod): answered "allowed" by whoever may call.
    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"ConfigMap"},"operation":"CREATE"}}"#;

    /// POSTs [`REVIEW`] to `/sidecar` over TLS trusting `ca`, presenting `client` if any: the
    /// status line, or the error.
    async fn post(addr: SocketAddr, ca: &tls::Pair, client: Option<&tls::Pair>) -> Result<String, String> {
        post_to(addr, ca, client, names::SIDECAR_PATH).await
    }

    async fn post_to(addr: SocketAddr, ca: &tls::Pair, client: Option<&tls::Pair>, path: &str) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("webhook.test").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REVIEW}",
            REVIEW.len()
        );
        s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
        answer.lines().next().map(str::to_string).ok_or_else(|| "no answer".into())
    }

    /// With a client CA, only a caller presenting a certificate of it is answered: a forged
    /// AdmissionReview from a pod (no certificate, or one of another CA) never reaches the
    /// handler, so it leases nothing (before: any caller that reached the port was answered).
    #[tokio::test]
    async fn only_callers_with_a_certificate_of_the_client_ca_are_answered() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let server_ca = tls::make_ca("webhook CA", now, day).unwrap();
        let server = tls::issue(&server_ca, Leaf::Server, "webhook", &BTreeSet::from(["webhook.test".to_string()]), now).unwrap();
        let apiserver_ca = tls::make_ca("apiserver webhook clients", now, day).unwrap();
        let apiserver = tls::issue(&apiserver_ca, Leaf::Client, "kube-apiserver", &BTreeSet::new(), now).unwrap();
        let forger_ca = tls::make_ca("someone else", now, day).unwrap();
        let forger = tls::issue(&forger_ca, Leaf::Client, "kube-apiserver", &BTreeSet::new(), now).unwrap();

        let resolver = Arc::new(Resolver::default());
        resolver.set(&server).unwrap();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let handler = Handler {
            client: kube::Client::try_from(config).unwrap(),
            defaults: crate::objects::Defaults::of("docker:dind", "dind-init"),
            wait_seconds: 5,
            metrics: crate::runtime::metrics::Metrics::default(),
            minting: None,
        };
        for (callers, want) in
            [(Callers::CertificateOf(apiserver_ca.cert_pem.clone()), [false, false, true]), (Callers::Anyone, [true, true, true])]
        {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn({
                let (resolver, handler) = (resolver.clone(), handler.clone());
                async move {
                    serve_on(listener, resolver, handler, &callers, Arc::default(), async {
                        let _ = stopped.await;
                    })
                    .await
                }
            });
            for (client, answered) in [None, Some(&forger), Some(&apiserver)].into_iter().zip(want) {
                let got = post(addr, &server_ca, client).await;
                assert_eq!(got.as_deref().is_ok_and(|l| l.contains(" 200 ")), answered, "{got:?}");
            }
            // Pods' certificate sidecars present no certificate: they reach the certificate
            // route (and only it), which wants their token.
            let got = post_to(addr, &server_ca, None, dind_contract::per_pod::PATH).await;
            assert!(got.as_deref().is_ok_and(|l| l.contains(" 401 ")), "{got:?}");
            let _ = stop.send(());
            server.await.unwrap().unwrap();
        }
    }
}
