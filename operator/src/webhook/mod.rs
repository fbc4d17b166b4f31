//! The injection webhooks: a pod labelled `dind.dev/inject: NAME` (in a namespace labelled
//! `dind.dev/injection: enabled`) gets Docker from DindDaemon NAME's shared daemons with no
//! setup (`/inject`), and one also labelled `dind.dev/inject-namespace: NS` (any namespace)
//! from DindDaemon NAME of namespace NS, when that grants it (`spec.clients`); one labelled `dind.dev/sidecar: NAME` gets a daemon of its own from
//! `Sidecar`-mode DindDaemon NAME (`/sidecar`). One server, one certificate.
//!
//! Where it starts: [`run`], called by `main` on every replica (only the leader reconciles, but
//! every replica admits pods). The parts:
//! - [`inject`]: what a pod gets, as a JSON Patch of the raw pod (pure, unit-tested);
//! - `crate::model::sticky`: which replica (or pool volume) a pod gets (pure);
//! - [`sidecar`]: what a pod labelled `dind.dev/sidecar: NAME` gets: a daemon of its own, as
//!   a native sidecar (pure; the containers come from `objects::sidecar`);
//! - [`certs`]: the serving certificate and its CAs, and how they rotate (pure);
//! - [`keeper`]: the Secret, the resolver and the configuration's `caBundle` (I/O);
//! - [`serve`]: the framing: HTTPS server, routes, serving certificate (I/O);
//! - [`admit`]: one AdmissionReview answered: the DindDaemon read, dispatch by mode (I/O);
//! - [`lease`]: a warm pool volume taken for a sidecar pod (I/O);
//! - [`per_pod`]: the certificate sidecar and its volumes, for pods with a certificate of
//!   their own (pure);
//! - [`mint`]: `POST /certificates`, a pod's own short-lived client certificate (I/O; the
//!   grant and the signing are `crate::model::grant` and `crate::model::tls`, pure);
//! - [`job_config`]: the Docker config a job brings, found in the pod (pure).

pub mod admit;
pub mod certs;
pub mod inject;
pub mod job_config;
pub mod keeper;
pub mod lease;
pub mod mint;
pub mod per_pod;
pub mod serve;
pub mod sidecar;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kube::Client;

pub use admit::{Handler, Minting, Webhook};
pub use keeper::Source;
pub use serve::{Callers, Resolver};

/// Where and how the webhook is served.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Where the serving certificate comes from; kept in `resolver`.
    pub source: Source,
    pub resolver: Arc<Resolver>,
    /// Who may call.
    pub callers: Callers,
    /// See [`serve`]'s module note.
    pub draining: Arc<AtomicBool>,
}

/// Serves the webhook and keeps its certificate, until `shutdown`.
pub async fn run(
    client: Client,
    endpoint: Endpoint,
    handler: Handler,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Endpoint { addr, source, resolver, callers, draining } = endpoint;
    let keeper = tokio::spawn(keeper::run(client, source, resolver.clone()));
    let served = serve::serve(addr, resolver, handler, &callers, draining, shutdown).await;
    keeper.abort();
    served
}
