//! `POST /certificates`: a pod's own client certificate (see `dind_contract::per_pod`).
//!
//! The caller is the `dind-certs` sidecar the webhook put into the pod. It proves which pod it
//! is with the pod's projected ServiceAccount token of our audience, which the apiserver checks
//! (TokenReview): valid, of our audience, and bound to a pod that still exists with that uid.
//! Then, every time (a renewal is asked the same questions as the first request):
//! - the pod is read: the uid must match, it must not have finished or be being deleted, and its
//!   labels must name the DindDaemon asked for;
//! - the DindDaemon must be a pool with TLS, and grant the pod's namespace and labels
//!   (`spec.clients`; its own namespace needs no grant);
//! - the certificate is signed by the DindDaemon's CA, for the request's key only, naming the
//!   pod, valid for `tls.clientCertificateLifetimeSeconds` (never past the pod's
//!   `activeDeadlineSeconds`).
//!
//! The token is sent only here (the sidecar verifies this server against the CAs the webhook
//! gave it), and is worth nothing elsewhere: no other service accepts its audience.

use std::time::Instant;

use axum::http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::admit::{Denied, Handler};
use crate::crd::{DaemonMode, DindDaemon};
use crate::model::grant;
use crate::model::names::Names;
use crate::model::tls::{self, PodIdentity};
use crate::runtime::metrics::AdmissionLabels;
use dind_contract::per_pod;

/// The pod a token is bound to (from the TokenReview's extra fields).
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// A request not answered with a certificate: the status and the words the sidecar logs.
#[derive(Debug)]
struct No(StatusCode, String);

fn refused(s: impl Into<String>) -> No {
    No(StatusCode::FORBIDDEN, s.into())
}

fn failed(what: &str, e: impl std::fmt::Display) -> No {
    No(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: {e}"))
}

/// Answers one request: the status and the body (JSON, or the refusal in words).
pub async fn answer(handler: &Handler, authorization: Option<&str>, body: &[u8]) -> (StatusCode, String) {
    let started = Instant::now();
    let result = mint(handler, authorization, body).await;
    handler.metrics.certificate_seconds.observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "minted",
        Err(No(code, _)) if code.is_server_error() => "failed",
        Err(_) => "refused",
    };
    handler.metrics.certificates.get_or_create(&AdmissionLabels { outcome: outcome.to_string() }).inc();
    match result {
        Ok((pod, answer)) => {
            tracing::debug!(namespace = %pod.namespace, pod = %pod.name, "client certificate minted");
            (StatusCode::OK, answer.to_string())
        }
        Err(No(code, words)) => {
            tracing::info!(status = code.as_u16(), reason = %words, "client certificate not minted");
            (code, words)
        }
    }
}

async fn mint(handler: &Handler, authorization: Option<&str>, body: &[u8]) -> Result<(PodIdentity, Value), No> {
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| No(StatusCode::UNAUTHORIZED, "no bearer token: send the pod's projected ServiceAccount token".into()))?;
    let request: Value = serde_json::from_slice(body).map_err(|e| No(StatusCode::BAD_REQUEST, format!("the request is not JSON: {e}")))?;
    let (namespace, name) = request[per_pod::REQ_DAEMON]
        .as_str()
        .and_then(|d| d.split_once('/'))
        .ok_or_else(|| No(StatusCode::BAD_REQUEST, format!("{:?} must be NAMESPACE/NAME", per_pod::REQ_DAEMON)))?;
    let csr = request[per_pod::REQ_CSR]
        .as_str()
        .ok_or_else(|| No(StatusCode::BAD_REQUEST, format!("{:?} must be a PEM certificate request", per_pod::REQ_CSR)))?;

    let pod = who(handler, token).await?;
    let client = &handler.client;
    let live = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get_opt(&pod.name)
        .await
        .map_err(|e| failed("reading the pod", e))?
        .ok_or_else(|| refused(format!("pod {}/{} is gone", pod.namespace, pod.name)))?;
    if live.metadata.uid.as_deref() != Some(pod.uid.as_str()) {
        return Err(refused(format!("pod {}/{} is another pod than the token's (uid {})", pod.namespace, pod.name, pod.uid)));
    }
    if live.metadata.deletion_timestamp.is_some() {
        return Err(refused(format!("pod {}/{} is being deleted", pod.namespace, pod.name)));
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = live.status.as_ref().and_then(|s| s.phase.as_deref()) {
        return Err(refused(format!("pod {}/{} has finished ({phase})", pod.namespace, pod.name)));
    }
    let labels = live.metadata.labels.clone().unwrap_or_default();
    if grant::target_of(&pod.namespace, &labels) != Some((namespace, name)) {
        return Err(refused(format!("pod {}/{} is not labelled for DindDaemon {namespace}/{name}", pod.namespace, pod.name)));
    }

    let dd = Api::<DindDaemon>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| failed("reading the DindDaemon", e))?
        .ok_or_else(|| refused(format!("DindDaemon {namespace}/{name} not found")))?;
    if dd.spec.mode != DaemonMode::Pool || !dd.spec.tls.enabled {
        return Err(refused(format!("DindDaemon {namespace}/{name} is not a pool with TLS: it has no client certificates to give")));
    }
    if pod.namespace != namespace {
        super::admit::granted(client, &dd, (namespace, name), &pod.namespace, &labels).await.map_err(|d| match d {
            Denied::NotGranted(why) => refused(why),
            Denied::Unreadable(why) => No(StatusCode::SERVICE_UNAVAILABLE, why),
        })?;
    }

    let names = Names::of(name);
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&names.ca_secret)
        .await
        .map_err(|e| failed("reading the DindDaemon's CA", e))?
        .ok_or_else(|| No(StatusCode::SERVICE_UNAVAILABLE, format!("DindDaemon {namespace}/{name} has no CA yet")))?;
    let ca = crate::objects::pairs_from_secrets(Some(&secret), None, None)
        .0
        .ok_or_else(|| No(StatusCode::SERVICE_UNAVAILABLE, format!("Secret {namespace}/{} holds no CA", names.ca_secret)))?;
    let now = OffsetDateTime::now_utc();
    let started =
        live.status.as_ref().and_then(|s| s.start_time.as_ref()).and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok());
    let lifetime = grant::lifetime(
        dd.spec.tls.client_certificate_lifetime_seconds,
        live.spec.as_ref().and_then(|s| s.active_deadline_seconds),
        started,
        now,
    );
    let certificate = tls::sign_request(&ca, csr, &pod, now, lifetime).map_err(|e| No(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let answer = json!({
        per_pod::RESP_CERTIFICATE: certificate,
        per_pod::RESP_CA: ca.cert_pem,
        per_pod::RESP_NOT_AFTER: (now + lifetime).unix_timestamp(),
    });
    Ok((pod, answer))
}

/// The pod `token` is bound to, as the apiserver sees it.
async fn who(handler: &Handler, token: &str) -> Result<PodIdentity, No> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![per_pod::AUDIENCE.to_string()]) },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(handler.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| failed("reviewing the token", e))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(No(
            StatusCode::UNAUTHORIZED,
            format!("the token is not valid for audience {:?}: {}", per_pod::AUDIENCE, status.error.unwrap_or_default()),
        ));
    }
    if !status.audiences.iter().flatten().any(|a| a == per_pod::AUDIENCE) {
        return Err(No(StatusCode::UNAUTHORIZED, format!("the token is not of audience {:?}", per_pod::AUDIENCE)));
    }
    let user = status.user.unwrap_or_default();
    let namespace = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(SERVICE_ACCOUNT_PREFIX))
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_string())
        .ok_or_else(|| No(StatusCode::UNAUTHORIZED, "the token is not a ServiceAccount's".into()))?;
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    match (one(POD_NAME_EXTRA), one(POD_UID_EXTRA)) {
        (Some(name), Some(uid)) => Ok(PodIdentity { namespace, name, uid }),
        _ => Err(No(StatusCode::UNAUTHORIZED, "the token is not bound to a pod: use the pod's projected token".into())),
    }
}
