//! One pass over a DindDaemon, in named steps:
//!
//! 1. **read**: the owned objects' stamps from the caches, and what the last apply left;
//! 2. **certificates** (TLS on only): from memory when the Secrets are unchanged, else read,
//!    then planned (`tls::plan`: issue what is missing, expiring or not matching);
//! 3. **build** (pure: `objects::build`);
//! 4. **apply or skip**: skipped when the same objects were applied before and nobody has
//!    touched them since; an apply the apiserver refuses becomes a condition and an event;
//! 5. **observe** the daemons (`observe`), and grow their volumes if `storage.size` was
//!    raised (`volumes`);
//! 6. **status** (pure: `status::compute`) and events for its transitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{instrument, warn};

use super::applied::{self, Applied, Stamp, Stamps};
use super::apply::{SecretWrite, apply_all};
use super::events::{announce_transitions, publish};
use super::memory::backoff;
use super::{Context, cert_roll, claims, observe, volume_pool, volumes};
use crate::crd::{DaemonMode, DindDaemon};
use crate::error::{Error, Result};
use crate::model::kinds::OwnedKind;
use crate::model::names::{FIELD_MANAGER, Names};
use crate::model::tls;
use crate::objects;
use crate::runtime::metrics::{DaemonLabels, ErrorLabels};
use crate::status::{self, Observed};

/// A reconcile that takes longer than this is abandoned and retried (a stalled apiserver
/// connection must not freeze the operator).
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The periodic pass: a safety net, and where certificates due for renewal are re-issued.
/// Readiness changes arrive through the pod and StatefulSet watches; polling not-ready daemons
/// every few seconds would keep an idle operator busy.
const PERIODIC: Duration = Duration::from_secs(30 * 60);

/// How often a sidecar volume pool with leased volumes is looked at (a lease ends when its pod
/// does; pod changes do not wake the DindDaemon), and one without (new leases are taken by the
/// webhook, unseen by the watches).
const POOL_LEASED_RECHECK: Duration = Duration::from_secs(5);
const POOL_IDLE_RECHECK: Duration = Duration::from_secs(30);

/// One pass over a DindDaemon, bounded by [`RECONCILE_TIMEOUT`].
pub async fn reconcile(dd: Arc<DindDaemon>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_inner(&dd, &ctx)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
    };
    match &result {
        Err(Error::Timeout(_)) => ctx.settings.liveness.timed_out(),
        Ok(_) => {
            ctx.settings.liveness.finished();
            ctx.memory.succeeded(&key_of(&dd));
        }
        Err(_) => ctx.settings.liveness.finished(),
    }
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    result
}

/// Re-queues a failed reconcile with exponential backoff (5 s doubling to 5 min) and counts
/// the error by kind.
pub fn error_policy(dd: Arc<DindDaemon>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.memory.failed(&key_of(&dd));
    let delay = backoff(failures);
    warn!(name = %dd.name_any(), namespace = ?dd.namespace(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    ctx.metrics.errors.get_or_create(&ErrorLabels { kind: error.label().into() }).inc();
    Action::requeue(delay)
}

fn key_of(dd: &DindDaemon) -> String {
    format!("{}/{}", dd.namespace().unwrap_or_default(), dd.name_any())
}

async fn reconcile_inner(dd: &DindDaemon, ctx: &Context) -> Result<Action> {
    let ns = dd.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let key = key_of(dd);
    if dd.meta().deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector; nothing to do.
        forget(ctx, &key);
        return Ok(Action::await_change());
    }
    let uid = dd.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let names = Names::of(&dd.name_any());
    // Until the caches have listed, a missing object may only be unlisted (pool mode), and a
    // lease's pod may only be unseen (sidecar mode): wait, in both.
    ctx.caches_ready.clone().wait_for(|ready| *ready).await.map_err(|_| Error::CachesClosed)?;
    match dd.spec.mode {
        DaemonMode::Sidecar => reconcile_sidecar(dd, ctx, &ns, &names).await,
        DaemonMode::Pool => reconcile_pool(dd, ctx, &ns, &names, &key, &uid).await,
    }
}

/// A `Sidecar` DindDaemon is a template: the webhook puts its daemons into pods; nothing runs
/// on its own but the volume pool, if it has one.
#[instrument(skip_all, fields(namespace = ns, name = %names.daemon, mode = "Sidecar"))]
async fn reconcile_sidecar(dd: &DindDaemon, ctx: &Context, ns: &str, names: &Names) -> Result<Action> {
    let pool = if dd.spec.volume_pool.is_some() { volume_pool::keep(ctx, dd, ns, names).await? } else { Default::default() };
    let leased = pool.leased;
    let new_status = status::sidecar(dd, pool.volumes, &pool.taken, &pool.stuck, Time(k8s_openapi::jiff::Timestamp::now()));
    announce_transitions(ctx, dd, dd.status.as_ref(), &new_status).await;
    write_status(ctx, dd, ns, names, &new_status).await?;
    Ok(match (dd.spec.volume_pool.is_some(), leased) {
        (true, true) => Action::requeue(POOL_LEASED_RECHECK),
        (true, false) => Action::requeue(POOL_IDLE_RECHECK),
        (false, _) => Action::await_change(),
    })
}

/// A `Pool` DindDaemon: its StatefulSet of daemons and everything they need, in named steps.
#[instrument(skip_all, fields(namespace = ns, name = %names.daemon, mode = "Pool"))]
async fn reconcile_pool(dd: &DindDaemon, ctx: &Context, ns: &str, names: &Names, key: &str, uid: &str) -> Result<Action> {
    // 1. Read (the caches have listed: see `reconcile_inner`).
    let seen = ctx.caches.owned.stamps(ns, names);
    let last = ctx.memory.last_apply(key, uid);

    // 2-4. Certificates, build, apply or skip.
    let outcome = certify_build_apply(ctx, dd, ns, names, uid, key, &seen, last.as_ref()).await;
    let (certs, applied_sts, apply_error) = match outcome {
        Ok((certs, sts)) => (certs, sts, None),
        // The apiserver refused the spec as built: the user must see it (and status goes on).
        Err(e) if e.is_refusal() => (last.and_then(|a| a.certs), None, Some(e)),
        // Anything else (a connection, a conflict, throttling) is retried with backoff.
        Err(e) => return Err(e),
    };
    prune(ctx);

    // 5. Observe (and grow the volumes when storage.size was raised).
    let seen_daemons = observe::daemons(ctx, dd, ns, names, key, applied_sts, certs.as_ref()).await;
    let template = seen_daemons.statefulset.as_ref().and_then(objects::claim_size);
    let growth = volumes::grow(ctx, dd, ns, names, template).await?;
    // 5b. A renewed certificate reaches each daemon when it is idle (see `model::cert_roll`).
    let roll_again = match (&certs, ctx.settings.query_daemons) {
        (Some(certs), true) => cert_roll::roll(ctx, dd, ns, names, &seen_daemons.daemons, certs).await,
        _ => None,
    };

    // 6. Status and events.
    let observed = Observed {
        statefulset: seen_daemons.statefulset.as_ref(),
        daemons: &seen_daemons.daemons,
        intruders: seen_daemons.intruders,
        apply_error: apply_error.as_ref().map(|e| (e.reason(), e.to_string())),
        pods_refused: seen_daemons.pods_refused.clone(),
        growth,
    };
    let look_again = seen_daemons.look_again;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(dd, &observed, now.clone());
    announce_transitions(ctx, dd, dd.status.as_ref(), &new_status).await;
    ctx.metrics
        .ready_daemons
        .get_or_create(&DaemonLabels { namespace: ns.to_string(), name: names.daemon.clone() })
        .set(i64::from(new_status.ready_replicas));
    write_status(ctx, dd, ns, names, &new_status).await?;
    if let Some(e) = apply_error {
        // Retried with backoff; the user sees it in the Degraded condition and its event.
        return Err(e);
    }
    // A daemon that restarted is Degraded until it has stayed up: look again when it has. A
    // Service that does not route yet is asked again shortly.
    let mut recheck = status::recheck_after(observed.daemons.iter().map(|d| &d.pod), &now).map_or(PERIODIC, |d| d.min(PERIODIC));
    for after in [look_again, roll_again].into_iter().flatten() {
        recheck = recheck.min(after);
    }
    Ok(Action::requeue(recheck))
}

/// Writes `new_status` when it differs from what the DindDaemon shows.
async fn write_status(ctx: &Context, dd: &DindDaemon, ns: &str, names: &Names, new_status: &crate::crd::DindDaemonStatus) -> Result<()> {
    if dd.status.as_ref() != Some(new_status) {
        let api: Api<DindDaemon> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "status": new_status});
        api.patch_status(&names.daemon, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.metrics.status_updates.inc();
    }
    Ok(())
}

/// Steps 2-4: certificates (TLS on only), build, apply or skip. Returns the certificates in
/// use and the StatefulSet an apply returned (`None` when the apply was skipped).
#[allow(clippy::too_many_arguments)]
async fn certify_build_apply(
    ctx: &Context,
    dd: &DindDaemon,
    ns: &str,
    names: &Names,
    uid: &str,
    key: &str,
    seen: &Stamps,
    last: Option<&Applied>,
) -> Result<(Option<tls::Bundle>, Option<StatefulSet>)> {
    // A registry CA whose ConfigMap (or key) is missing would leave new daemon pods in
    // ContainerCreating for good: refuse the whole apply, naming the field; running daemons
    // keep serving.
    let cas = &dd.spec.daemon.registry_cas;
    if !cas.is_empty() {
        let found = crate::runtime::config_maps::keys(&ctx.client, ns, cas.iter().map(|c| c.config_map.as_str())).await?;
        if let Some(problems) = objects::registry_cas::problems(cas, ns, &found) {
            return Err(Error::RegistryCaMissing(problems));
        }
    }
    let tls_on = objects::certificates_wanted(dd);
    // Every name this pass may write must be free, ours or handed over before anything is read
    // or written (`ownership`). Names the caches show as ours cost no request, so a DindDaemon
    // whose objects are all ours is checked for free; a name it did not write before (its
    // Secrets when TLS is turned on, its budget when it grows past one daemon) is read.
    let secrets_exist = claims::check(&ctx.client, ns, names, uid, tls_on, objects::budget_wanted(dd), seen).await?;
    // No Secrets exist and no apply is remembered: nothing to read. The CA Secret is then
    // created, not applied, so one written an instant ago is never overwritten: the create
    // fails and the loop reads it instead.
    let mut fresh = last.is_none() && !secrets_exist;
    loop {
        let (plan, secret_stamps) = if tls_on {
            let (pairs, stamps) = current_certificates(&ctx.client, ns, names, seen, last, fresh).await?;
            let server_names = tls::server_names(&names.daemon, ns, &names.headless_service);
            (Some(tls::plan(pairs.0, pairs.1, pairs.2, ns, &names.daemon, &server_names, time::OffsetDateTime::now_utc())?), stamps)
        } else {
            (None, Stamps::new())
        };
        let certs = plan.as_ref().map(|p| p.bundle.clone());

        let mut owned = objects::build(dd, &ctx.settings.defaults, certs.as_ref())?;
        // The claim template stays as the StatefulSet was made (a raised size grows the claims).
        let existing = ctx.caches.owned.statefulsets.get(&ObjectRef::new(&names.statefulset).within(ns));
        objects::keep_claim_size(&mut owned.statefulset, existing.as_deref().and_then(objects::claim_size));
        objects::keep_cert_digest(&mut owned.statefulset, existing.as_deref());
        if owned.disruption_budget.is_none() && seen.contains_key(&applied::key(OwnedKind::PodDisruptionBudget, &names.disruption_budget)) {
            owned.disruption_budget = Some(objects::disruption_budget(dd)?);
        }
        let fingerprint = applied::fingerprint(&owned)?;
        if last.is_some_and(|a| a.unchanged(uid, fingerprint, seen)) {
            ctx.metrics.unchanged.inc();
            return Ok((certs, None));
        }

        let issued = plan.map(|p| p.issued).unwrap_or_default();
        let write = match (issued.is_empty(), fresh) {
            (true, _) => SecretWrite::None,
            (false, false) => SecretWrite::Apply,
            (false, true) => SecretWrite::CreateCa,
        };
        let Some((mut stamps, sts)) = apply_all(&ctx.client, ns, &owned, write).await? else {
            tracing::debug!(name = %names.daemon, "a CA Secret exists that the cache did not show; reading it");
            fresh = false;
            continue;
        };
        if issued.is_empty() {
            stamps.extend(secret_stamps);
        }
        ctx.memory.remember_apply(key, Applied { owner_uid: uid.to_string(), fingerprint, stamps, certs: certs.clone() });
        if !issued.is_empty() {
            publish(ctx, dd, EventType::Normal, "CertificatesIssued", format!("issued {} certificate(s)", issued.join(", "))).await;
        }
        return Ok((certs, Some(sts)));
    }
}

type Pairs = (Option<tls::Pair>, Option<tls::Pair>, Option<tls::Pair>);

/// The certificates made before: from memory when their Secrets are as the last apply left
/// them, none when there is nothing to read (`fresh`), else from the apiserver.
async fn current_certificates(
    client: &Client,
    ns: &str,
    names: &Names,
    seen: &Stamps,
    last: Option<&Applied>,
    fresh: bool,
) -> Result<(Pairs, Stamps)> {
    match last.and_then(|a| a.certs.as_ref().filter(|_| a.secrets_hold(seen))) {
        Some(certs) => Ok(((Some(certs.ca.clone()), Some(certs.server.clone()), Some(certs.client.clone())), secrets_of(seen))),
        None if fresh => Ok(((None, None, None), Stamps::new())),
        None => read_certificates(client, ns, names).await,
    }
}

/// Reads the CA, server and client Secrets: their certificate pairs and their stamps.
async fn read_certificates(client: &Client, ns: &str, names: &Names) -> Result<(Pairs, Stamps)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (ca, server, client_cert) =
        tokio::try_join!(secrets.get_opt(&names.ca_secret), secrets.get_opt(&names.server_secret), secrets.get_opt(&names.client_secret))?;
    let stamps = [&ca, &server, &client_cert]
        .into_iter()
        .flatten()
        .filter_map(|s| Some((applied::key(OwnedKind::Secret, s.metadata.name.as_deref()?), Stamp::of(&s.metadata)?)))
        .collect();
    Ok((objects::pairs_from_secrets(ca.as_ref(), server.as_ref(), client_cert.as_ref()), stamps))
}

/// The Secret entries of a set of stamps.
fn secrets_of(stamps: &Stamps) -> Stamps {
    stamps.iter().filter(|(k, _)| applied::is_of(k, OwnedKind::Secret)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Drops what the operator remembers of a DindDaemon: its memory and its metric.
fn forget(ctx: &Context, key: &str) {
    ctx.memory.forget(key);
    if let Some((namespace, name)) = key.split_once('/') {
        ctx.metrics.ready_daemons.remove(&DaemonLabels { namespace: namespace.into(), name: name.into() });
    }
}

/// Forgets DindDaemons and daemon pods that are gone.
fn prune(ctx: &Context) {
    let exists = |key: &str| {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        ctx.caches.daemons.get(&ObjectRef::new(name).within(ns)).is_some()
    };
    let live_pods = || ctx.caches.pods.state().iter().filter_map(|p| p.uid()).collect();
    for key in ctx.memory.prune(ctx.caches.daemons.len(), exists, ctx.caches.pods.len(), live_pods) {
        forget(ctx, &key);
    }
}
