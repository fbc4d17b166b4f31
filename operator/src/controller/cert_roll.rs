//! Restarting a pool daemon to serve its renewed certificate, when it is idle (the choice is
//! `model::cert_roll`'s; this asks the daemons and evicts the pod).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, Preconditions};
use kube::runtime::events::EventType;

use super::Context;
use super::docker_api::{self, Presented};
use super::events::publish;
use crate::crd::DindDaemon;
use crate::model::cert_roll::{self, Plan, Serving, Why};
use crate::model::names::Names;
use crate::model::tls::{self, Bundle};
use crate::status::{self, DaemonPod};

/// While a daemon waits to be idle, it is asked again this often.
pub const RECHECK: Duration = Duration::from_secs(20);

/// Asks each ready daemon which certificate it serves (and, if an old one, whether it is busy),
/// then restarts at most one. Returns when to look again, if a daemon still waits. A pod seen
/// serving the current certificate is not asked again until the certificate changes (a pod's
/// certificate changes only when it restarts, and then it is a new pod or serves the newest).
pub async fn roll(ctx: &Context, dd: &DindDaemon, ns: &str, names: &Names, daemons: &[DaemonPod], certs: &Bundle) -> Option<Duration> {
    let (Ok(current), Ok(ca)) = (tls::der_of(&certs.server.cert_pem), tls::inspect(&certs.ca.cert_pem)) else { return None };
    let now = time::OffsetDateTime::now_utc();
    let asks = daemons.iter().map(|d| {
        let current = &current;
        let ca = &ca;
        async move {
            let ready = status::pod_ready(&d.pod);
            let ip = d.pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let uid = d.pod.uid().unwrap_or_default();
            let serving = match ip.filter(|_| ready) {
                None => None,
                Some(_) if ctx.memory.serves(&uid, current) => Some(Serving::Current),
                Some(ip) => {
                    let addr = format!("{ip}:{}", dd.spec.port);
                    let sni = names.pod_host(&d.name(), ns);
                    match docker_api::presented_certificate(&addr, certs, &sni).await {
                        Ok(Presented::Leaf(der)) if der == *current => {
                            ctx.memory.remember_serving(&uid, current);
                            Some(Serving::Current)
                        }
                        Ok(Presented::Leaf(der)) => {
                            let info = tls::inspect_der(&der).ok();
                            let busy = docker_api::busy(&addr, Some((certs, &sni))).await.ok();
                            Some(Serving::Stale {
                                same_ca: info.as_ref().is_none_or(|i| i.issuer_der == ca.subject_der),
                                expires_in: info.map_or(time::Duration::ZERO, |i| i.not_after - now),
                                busy,
                            })
                        }
                        Ok(Presented::Untrusted) => Some(Serving::Stale { same_ca: false, expires_in: time::Duration::ZERO, busy: None }),
                        Err(e) => {
                            tracing::debug!(pod = %d.name(), error = %e, "could not see the daemon's certificate");
                            None
                        }
                    }
                }
            };
            cert_roll::Daemon { pod: d.name(), ready, serving }
        }
    });
    let seen = futures::future::join_all(asks).await;
    match cert_roll::plan(&seen) {
        Plan::Nothing => None,
        Plan::Wait { pods } => {
            tracing::info!(name = %names.daemon, ?pods, "daemons serve an older certificate and are busy: restarting each when idle");
            Some(RECHECK)
        }
        Plan::Restart { pod, why } => {
            let Some(uid) = daemons.iter().find(|d| d.name() == pod).and_then(|d| d.pod.uid()) else { return Some(RECHECK) };
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            // An eviction, not a delete: the DindDaemon's PodDisruptionBudget has its say too.
            let params = EvictParams {
                delete_options: Some(DeleteParams {
                    preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match api.evict(&pod, &params).await {
                Ok(_) => {
                    let (kind, note) = match why {
                        Why::Idle => (EventType::Normal, format!("restarted idle daemon {pod} to serve its renewed certificate")),
                        Why::Expiring => (
                            EventType::Warning,
                            format!(
                                "restarted daemon {pod} while busy: its old certificate expires within {} days",
                                cert_roll::ROLL_ANYWAY.whole_days()
                            ),
                        ),
                        Why::UntrustedCa => {
                            (EventType::Warning, format!("restarted daemon {pod}: its certificate is of a CA that clients no longer trust"))
                        }
                    };
                    publish(ctx, dd, kind, "CertificateRolled", note).await;
                }
                Err(e) => tracing::warn!(%pod, error = %e, "could not restart the daemon for its renewed certificate"),
            }
            Some(RECHECK)
        }
    }
}
