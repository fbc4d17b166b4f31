//! Keeps the webhook's certificate: the Secret (CAs and serving certificate), the server's
//! resolver, and the `caBundle` of the MutatingWebhookConfiguration. Every replica runs it (every
//! replica serves the webhook); writes are guarded by the Secret's resourceVersion, so two
//! replicas that rotate at once do not both win: the loser reads the winner's next time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use time::OffsetDateTime;

use super::certs::{self, Lifetimes, State, keys};
use super::serve::Resolver;
use crate::model::names;
use crate::model::tls::Pair;

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Made and rotated by the operator, kept in a Secret of its namespace.
    Managed {
        namespace: String,
        secret: String,
        /// The MutatingWebhookConfiguration whose caBundle the operator keeps.
        configuration: String,
        /// The names the certificate is for (the Service's DNS names, extra hosts).
        names: BTreeSet<String>,
        lifetimes: Lifetimes,
    },
    /// `tls.crt` and `tls.key` in a directory (a Secret that cert-manager keeps), re-read
    /// when they change; cert-manager's CA injector keeps the caBundle.
    Files(PathBuf),
}

/// Runs until the process ends: keeps the resolver (and in managed mode the Secret and the
/// caBundle) current.
pub async fn run(client: Client, source: Source, resolver: Arc<Resolver>) {
    loop {
        let next = match &source {
            Source::Managed { .. } => managed_tick(&client, &source, &resolver).await,
            Source::Files(dir) => files_tick(dir, &resolver),
        };
        let wait = match next {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate: will retry");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn files_tick(dir: &std::path::Path, resolver: &Resolver) -> Result<Duration, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()));
    resolver.set(&Pair { cert_pem: read(keys::CERT)?, key_pem: read(keys::KEY)? })?;
    // cert-manager writes the issuing CA as ca.crt: what per-pod certificate sidecars trust.
    if let Ok(bundle) = read(keys::BUNDLE) {
        resolver.set_bundle(bundle);
    }
    Ok(Duration::from_secs(10))
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The certificates a Secret holds, if it holds a usable set.
pub fn state_of(secret: &Secret) -> Option<State> {
    let data = secret.data.as_ref()?;
    let cas: Vec<Pair> =
        (0..2).map_while(|i| Some(Pair { cert_pem: text(data, &keys::ca_cert(i))?, key_pem: text(data, &keys::ca_key(i))? })).collect();
    let leaf = Pair { cert_pem: text(data, keys::CERT)?, key_pem: text(data, keys::KEY)? };
    (!cas.is_empty()).then_some(State { cas, leaf })
}

fn secret_data(state: &State) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    let mut put = |k: String, v: &str| {
        data.insert(k, ByteString(v.as_bytes().to_vec()));
    };
    put(keys::CERT.into(), &state.leaf.cert_pem);
    put(keys::KEY.into(), &state.leaf.key_pem);
    put(keys::BUNDLE.into(), &state.bundle());
    for (i, ca) in state.cas.iter().enumerate() {
        put(keys::ca_cert(i), &ca.cert_pem);
        put(keys::ca_key(i), &ca.key_pem);
    }
    data
}

async fn managed_tick(client: &Client, source: &Source, resolver: &Resolver) -> Result<Duration, String> {
    let Source::Managed { namespace, secret: secret_name, configuration, names: cert_names, lifetimes } = source else {
        return Err("not managed".into());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets.get_opt(secret_name).await.map_err(|e| format!("reading Secret {namespace}/{secret_name}: {e}"))?;
    let plan = certs::plan(existing.as_ref().and_then(state_of), cert_names, OffsetDateTime::now_utc(), *lifetimes)
        .map_err(|e| format!("making the webhook certificate: {e}"))?;
    let state = if plan.issued.is_empty() && existing.is_some() {
        plan.state
    } else {
        let mut secret = existing.clone().unwrap_or_default();
        secret.metadata.name = Some(secret_name.clone());
        secret.metadata.namespace = Some(namespace.clone());
        secret.metadata.labels.get_or_insert_with(BTreeMap::new).insert(names::MANAGED_BY_LABEL.into(), names::FIELD_MANAGER.into());
        secret.type_ = Some("kubernetes.io/tls".into());
        secret.data = Some(secret_data(&plan.state));
        let written = match existing {
            // resourceVersion from the read: a concurrent rotation by another replica wins.
            Some(_) => secrets.replace(secret_name, &post_params(), &secret).await,
            None => secrets.create(&post_params(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %secret_name, issued = ?plan.issued, "webhook certificate written");
                plan.state
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Duration::from_millis(200)),
            Err(e) => return Err(format!("writing Secret {namespace}/{secret_name}: {e}")),
        }
    };
    resolver.set(&state.leaf)?;
    resolver.set_bundle(state.bundle());
    ensure_ca_bundle(client, configuration, &state.bundle()).await?;
    // Look again well inside a leaf's life (and at least once a minute).
    let leaf = lifetimes.leaf.whole_milliseconds().max(0) as u64;
    Ok(Duration::from_millis(leaf / 20).clamp(Duration::from_millis(500), Duration::from_secs(60)))
}

/// Sets `caBundle` on every webhook of `configuration` that lacks it, by JSON Patch on that one
/// field (Helm owns the rest of the object). A missing configuration is not an error: the
/// chart creates it, and tests may create it later.
async fn ensure_ca_bundle(client: &Client, configuration: &str, bundle: &str) -> Result<(), String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(configuration).await.map_err(|e| format!("reading MutatingWebhookConfiguration {configuration}: {e}"))?
    else {
        tracing::debug!(configuration, "MutatingWebhookConfiguration not found (yet)");
        return Ok(());
    };
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, webhook) in mwc.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&want) {
            ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
            ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(bundle)}));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).map_err(|e| e.to_string())?;
    api.patch(
        configuration,
        &PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() },
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| format!("setting caBundle of MutatingWebhookConfiguration {configuration}: {e}"))?;
    tracing::info!(configuration, "caBundle updated");
    Ok(())
}

fn post_params() -> PostParams {
    PostParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() }
}
