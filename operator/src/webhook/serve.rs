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

/// Serves HTTPS on `addr` until `shutdown` resolves. Handshakes wait for a certificate: the
/// server refuses them until the resolver has one. `draining`: see the module's note.
pub async fn serve(
    addr: SocketAddr,
    resolver: Arc<Resolver>,
    handler: Handler,
    draining: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, path = names::INJECT_PATH, "serving the injection webhook");
    serve_on(listener, resolver, handler, draining, shutdown).await
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    resolver: Arc<Resolver>,
    handler: Handler,
    draining: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route(names::INJECT_PATH, post(inject_route))
        .route(names::SIDECAR_PATH, post(sidecar_route))
        .with_state(Arc::new(handler))
        .layer(axum::middleware::map_response_with_state(draining, close_while_draining));
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
        let app = app.clone();
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
