//! The operator's HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Shared between the handlers and the rest of the operator.
#[derive(Debug)]
pub struct Health {
    pub registry: Registry,
    /// Set once the API is reachable and the CRD is served.
    pub ready: AtomicBool,
    /// Whether reconciles still finish (see [`Liveness`]).
    pub liveness: Arc<Liveness>,
    /// Set on SIGTERM: `/readyz` fails from then on, so the Service stops sending this replica
    /// new admissions while it still answers those already on their way (see `main`'s drain).
    pub draining: Arc<AtomicBool>,
    /// The webhook's serving certificate, when this replica serves the webhook: not ready until
    /// it holds one (a replica that cannot yet finish a TLS handshake gets no admissions).
    pub webhook: Option<Arc<crate::webhook::Resolver>>,
}

impl Health {
    /// Ready: the API answers and the CRD is served, the webhook (if served) has its
    /// certificate, and the replica is not draining.
    pub fn is_ready(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: shutting down");
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting: the DindDaemon CRD is not served to us yet");
        }
        if self.webhook.as_ref().is_some_and(|r| !r.is_set()) {
            return Err("starting: the webhook has no serving certificate yet");
        }
        Ok(())
    }
}

/// Reconciles that timed out in a row, with no reconcile finishing in between. An operator
/// whose every reconcile times out (a stalled apiserver connection) is not alive: `/healthz`
/// says so and the kubelet restarts it, with fresh connections.
#[derive(Debug, Default)]
pub struct Liveness {
    timeouts_in_a_row: AtomicU32,
}

impl Liveness {
    /// This many timeouts in a row, and nothing finished, make `/healthz` fail.
    pub const LIMIT: u32 = 3;

    pub fn timed_out(&self) {
        self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed);
    }

    /// A reconcile finished (successfully or with an answer from the apiserver).
    pub fn finished(&self) {
        self.timeouts_in_a_row.store(0, Ordering::Relaxed);
    }

    pub fn alive(&self) -> bool {
        self.timeouts_in_a_row.load(Ordering::Relaxed) < Self::LIMIT
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.liveness.alive() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reconciles keep timing out: the apiserver connection is stalled")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &health.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    match health.is_ready() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(webhook: Option<Arc<crate::webhook::Resolver>>) -> Arc<Health> {
        Arc::new(Health { registry: Registry::default(), ready: true.into(), liveness: Arc::default(), draining: Arc::default(), webhook })
    }

    /// A replica takes admissions only once it can finish a TLS handshake, and stops taking them
    /// as soon as it drains.
    #[tokio::test]
    async fn readyz_waits_for_the_webhook_certificate_and_fails_once_draining() {
        let resolver = Arc::new(crate::webhook::Resolver::default());
        let health = health(Some(resolver.clone()));
        let (code, why) = readyz(State(health.clone())).await;
        assert_eq!((code, why), (StatusCode::SERVICE_UNAVAILABLE, "starting: the webhook has no serving certificate yet"));
        let ca = crate::model::tls::make_ca("test", time::OffsetDateTime::now_utc(), time::Duration::days(1)).unwrap();
        resolver.set(&ca).unwrap();
        assert_eq!(readyz(State(health.clone())).await.0, StatusCode::OK);
        health.draining.store(true, Ordering::Relaxed);
        assert_eq!(readyz(State(health)).await, (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down"));
    }

    #[tokio::test]
    async fn healthz_fails_once_reconciles_keep_timing_out_and_recovers_when_one_finishes() {
        let health = health(None);
        assert_eq!(healthz(State(health.clone())).await.0, StatusCode::OK);
        for _ in 0..Liveness::LIMIT {
            health.liveness.timed_out();
        }
        assert_eq!(healthz(State(health.clone())).await.0, StatusCode::SERVICE_UNAVAILABLE);
        health.liveness.finished();
        assert_eq!(healthz(State(health)).await.0, StatusCode::OK);
    }
}
