//! Observing the daemons of a DindDaemon: its pods from the cache, foreign pods on its volumes,
//! and the storage driver and disk usage each ready daemon reports.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::docker_api;
use super::memory::{ROUTE_CHECKS, route_recheck};
use super::prune;
use crate::crd::DindDaemon;
use crate::model::names::{DAEMON_LABEL, Names, parse_claim};
use crate::model::tls;
use crate::status::{self, DaemonPod};

/// What reconcile saw of the daemons, owned (status borrows it).
#[derive(Debug, Default)]
pub struct Seen {
    pub statefulset: Option<StatefulSet>,
    /// Our daemon pods, each with its driver, disk, last prune and whether it is routed.
    pub daemons: Vec<DaemonPod>,
    /// Pods that are not ours but mount one of our volumes (`pod`, `claim`).
    pub intruders: Vec<(String, String)>,
    /// Routed by the EndpointSlice but not yet accepting connections: look again after this.
    pub look_again: Option<std::time::Duration>,
    /// Why the StatefulSet cannot create daemon pods (the apiserver's words), while pods are
    /// missing.
    pub pods_refused: Option<String>,
}

/// Looks at the daemons: `applied_sts` (just returned by an apply) is newer than the cache's.
pub async fn daemons(
    ctx: &Context,
    dd: &DindDaemon,
    ns: &str,
    names: &Names,
    key: &str,
    applied_sts: Option<StatefulSet>,
    certs: Option<&tls::Bundle>,
) -> Seen {
    let statefulset =
        applied_sts.or_else(|| ctx.caches.owned.statefulsets.get(&ObjectRef::new(&names.statefulset).within(ns)).map(|s| (*s).clone()));
    let name = &names.daemon;
    let concerned = ctx.caches.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && (p.labels().get(DAEMON_LABEL) == Some(name) || mounts_claim_of(p, name))
    });
    let mut daemons: Vec<DaemonPod> =
        concerned.iter().filter(|p| p.labels().get(DAEMON_LABEL) == Some(name)).map(|p| DaemonPod::of((**p).clone())).collect();
    let intruders = find_intruders(name, &daemons, &concerned);
    if ctx.settings.query_daemons {
        ask_daemons(ctx, dd, ns, names, &mut daemons, certs).await;
    }
    let mut routed = routed_pods(ctx, ns, &names.client_service);
    // The EndpointSlice lists a daemon a moment before kube-proxy routes to it (measured: up to
    // ~0.9 s). Where the operator can reach the cluster network as a client does, it connects
    // to the Service itself before it calls the daemon ready; until then it looks again soon.
    // A few attempts, then the slice is trusted alone: the operator may not reach the cluster
    // network as clients do, and Ready must not hang on that.
    let mut look_again = None;
    let was_ready = status::find(dd.status.as_ref(), status::READY).is_some_and(|c| c.status == "True");
    if !ctx.settings.query_daemons || routed.is_empty() || was_ready || service_accepts(ctx, ns, names, dd.spec.port).await {
        ctx.memory.route_settled(key);
    } else {
        let refused = ctx.memory.route_refused(key);
        if refused < ROUTE_CHECKS {
            routed.clear();
            look_again = Some(route_recheck(refused));
        } else if refused == ROUTE_CHECKS {
            tracing::warn!(name = %names.daemon, namespace = ns, "the client Service refuses the operator's connections; Ready follows its EndpointSlice alone");
        }
    }
    for d in &mut daemons {
        d.routed = routed.contains(&d.name());
        d.last_prune = d.pod.uid().and_then(|uid| ctx.memory.last_prune(&uid));
    }
    if daemons.iter().any(|d| d.disk.is_some()) {
        look_again = Some(look_again.map_or(ctx.settings.disk_every, |l: std::time::Duration| l.min(ctx.settings.disk_every)));
    }
    // Fewer pods than replicas: the StatefulSet controller may be refused (Pod Security
    // Admission, a quota, a policy), which shows only in its FailedCreate events. They are
    // watched (`Context::refusals`): reading them costs no request, and a new one wakes the
    // DindDaemon. (Listing them per reconcile instead cost the apiserver a scan of the
    // namespace's events each time: 1000 new DindDaemons took 6× longer to their first status,
    // measured with bench-operator.)
    let mut pods_refused = None;
    let missing = i32::try_from(daemons.len()).unwrap_or(i32::MAX) < dd.spec.replicas;
    if let (Some(sts), true) = (statefulset.as_ref(), missing) {
        let uid = sts.metadata.uid.as_deref();
        let refusals = ctx
            .caches
            .refusals
            .values_in(ns, |r| r.statefulset == names.statefulset && (r.statefulset_uid.is_none() || r.statefulset_uid.as_deref() == uid));
        // A refusal older than the newest pod was overcome since (e.g. the namespace relabelled).
        let newest_pod = daemons.iter().filter_map(|d| d.pod.metadata.creation_timestamp.as_ref().map(|t| t.0)).max();
        pods_refused = status::pods_refused(&refusals, k8s_openapi::jiff::Timestamp::now(), newest_pod);
        if pods_refused.is_some() {
            // Shown until it is older than the refusal window: look again then, at the latest.
            look_again = Some(look_again.map_or(REFUSAL_RECHECK, |l| l.min(REFUSAL_RECHECK)));
        }
    }
    Seen { statefulset, daemons, intruders, look_again, pods_refused }
}

/// How often a DindDaemon shown refused is looked at again (a refusal that stops recurring
/// leaves the window; one that recurs, or pods made, wake it at once).
const REFUSAL_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the operator waits for one TCP connection to a Service.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the client Service accepts a TCP connection (kube-proxy routes it), as a client
/// would try it: to its cluster IP.
async fn service_accepts(ctx: &Context, ns: &str, names: &Names, port: i32) -> bool {
    let services: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(ctx.client.clone(), ns);
    let ip = match services.get(&names.client_service).await {
        Ok(svc) => svc.spec.and_then(|s| s.cluster_ip).filter(|ip| ip != "None"),
        Err(e) => {
            tracing::debug!(error = %e, "reading the client Service");
            None
        }
    };
    let (Some(ip), Ok(port)) = (ip, u16::try_from(port)) else { return false };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else { return false };
    matches!(tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ip, port))).await, Ok(Ok(_)))
}

/// The pods that the EndpointSlices of Service `service` list as ready endpoints.
fn routed_pods(ctx: &Context, ns: &str, service: &str) -> Vec<String> {
    ctx.caches.routes.values_in(ns, |r| r.service == service).into_iter().flat_map(|r| r.pods).collect()
}

/// The claims of a pod that belong to DindDaemon `name` (exactly: `docker-ci-big-0` is not `ci`'s).
fn claims_of<'a>(pod: &'a Pod, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
        .filter(move |claim| parse_claim(claim).is_some_and(|(owner, _)| owner == name))
}

fn mounts_claim_of(pod: &Pod, name: &str) -> bool {
    claims_of(pod, name).next().is_some()
}

/// Pods that are not this DindDaemon's daemons yet mount one of its volumes (`docker-NAME-i`).
pub fn find_intruders(name: &str, ours: &[DaemonPod], all: &[Arc<Pod>]) -> Vec<(String, String)> {
    let ours: Vec<String> = ours.iter().map(DaemonPod::name).collect();
    let mut found = Vec::new();
    for pod in all.iter().filter(|p| !ours.contains(&p.name_any())) {
        let finished = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished {
            continue;
        }
        found.extend(claims_of(pod, name).map(|claim| (pod.name_any(), claim.to_string())));
    }
    found
}

/// How often a daemon is asked what it keeps on its volume (`/system/df`) by default
/// (`--disk-interval-seconds`), and pruned when due (see `prune`).
pub const DISK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
const DISK_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// A daemon's disk answer, read while holding one of the process's few disk-read permits
/// (`memory::DiskReads`): what bounds the raw answers held at once.
async fn read_disk(ctx: &Context, ip: &str, port: i32, tls: Option<(&tls::Bundle, &str)>) -> Result<crate::disk::DiskUsage, String> {
    let _reading = ctx.memory.disk_reads.0.acquire().await.map_err(|e| e.to_string())?;
    docker_api::disk_usage(ip, port, tls).await
}

/// What the ready daemons told: their storage drivers (asked once per pod) and disk usage
/// (asked when `Context::disk_every` has passed; then pruned if due), over each daemon's own mTLS. Pods that are not
/// ready are not dialled (they would only time out), and the rest are asked at once, not one
/// after another.
async fn ask_daemons(ctx: &Context, dd: &DindDaemon, ns: &str, names: &Names, daemons: &mut [DaemonPod], certs: Option<&tls::Bundle>) {
    let asks = daemons.iter_mut().filter(|d| status::pod_ready(&d.pod)).filter_map(|daemon_pod| {
        let uid = daemon_pod.pod.uid()?;
        let ip = daemon_pod.pod.status.as_ref()?.pod_ip.clone()?;
        Some(async move {
            let name = daemon_pod.name();
            let sni = names.pod_host(&name, ns);
            let tls = certs.map(|c| (c, sni.as_str()));
            let driver = match ctx.memory.driver(&uid) {
                Some(known) => Some(known),
                None => match docker_api::storage_driver(&ip, dd.spec.port, tls).await {
                    Ok(d) => {
                        ctx.memory.remember_driver(&uid, &d);
                        Some(d)
                    }
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "daemon did not tell its storage driver");
                        None
                    }
                },
            };
            let disk = match ctx.memory.disk(&uid) {
                // (A little early counts as due: the requeue after DISK_EVERY lands just short of it.)
                Some((at, usage)) if at.elapsed() + DISK_SLACK.min(ctx.settings.disk_every / 4) < ctx.settings.disk_every => Some(usage),
                known => match read_disk(ctx, &ip, dd.spec.port, tls).await {
                    Ok(usage) => {
                        let daemon = prune::Daemon { pod: &name, uid: &uid, addr: format!("{ip}:{}", dd.spec.port), tls };
                        // Bounded as a whole: a slow daemon must not hold the reconcile past its deadline.
                        let usage =
                            match tokio::time::timeout(prune::LOOK_TIMEOUT, prune::after_look(ctx, dd, &daemon, usage.clone())).await {
                                Ok(now) => now,
                                Err(_) => {
                                    tracing::warn!(pod = %name, "pruning took longer than {}s; stopped", prune::LOOK_TIMEOUT.as_secs());
                                    usage
                                }
                            };
                        ctx.metrics.record_disk(ns, &names.daemon, &name, &usage);
                        ctx.memory.remember_disk(&uid, usage.clone());
                        Some(usage)
                    }
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "daemon did not tell its disk usage");
                        known.map(|(_, usage)| usage)
                    }
                },
            };
            daemon_pod.driver = driver;
            daemon_pod.disk = disk;
        })
    });
    futures::future::join_all(asks).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, daemon: Option<&str>, claim: &str) -> Pod {
        let labels = daemon.map(|d| json!({"dind.dev/daemon": d})).unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "b", "labels": labels},
            "spec": {"containers": [], "volumes": [{"name": "docker", "persistentVolumeClaim": {"claimName": claim}}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_longer_daemon_name_is_not_an_intruder() {
        // Measured: DindDaemon `ci` called the daemon of `ci-big` an intruder (prefix docker-ci-).
        let ours = vec![DaemonPod::of(pod("ci-0", Some("ci"), "docker-ci-0"))];
        let all: Vec<Arc<Pod>> = vec![
            Arc::new(ours[0].pod.clone()),
            Arc::new(pod("ci-big-0", Some("ci-big"), "docker-ci-big-0")),
            Arc::new(pod("thief", None, "docker-ci-0")),
        ];
        assert_eq!(find_intruders("ci", &ours, &all), [("thief".to_string(), "docker-ci-0".to_string())]);
        assert!(!mounts_claim_of(&all[1], "ci"));
        assert!(mounts_claim_of(&all[1], "ci-big"));
    }
}
