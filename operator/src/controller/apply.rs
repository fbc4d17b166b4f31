//! Writing owned objects: server-side apply with the one field manager, forced (we own them),
//! except the first CA Secret, which is created so an existing one is never overwritten.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::applied::{self, Stamp, Stamps};
use crate::error::{Error, Result};
use crate::model::kinds::OwnedKind;
use crate::model::names::FIELD_MANAGER;
use crate::objects::{CertSecrets, Owned};

/// Applies `obj` and returns the apiserver's copy. A refusal names the object.
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let mut doc = serde_json::to_value(obj).map_err(|source| Error::Serialize { what: "owned object", source })?;
    // Server-side apply needs apiVersion and kind, which typed objects do not serialize.
    let dt = K::DynamicType::default();
    doc["apiVersion"] = json!(K::api_version(&dt));
    doc["kind"] = json!(K::kind(&dt));
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc)).await.map_err(|source| Error::Apply {
        kind: K::kind(&dt).to_string(),
        name,
        source,
    })
}

/// How `apply_all` writes the certificate Secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretWrite {
    /// Unchanged certificates (or TLS off): an unchanged Secret needs no write.
    None,
    /// New or renewed certificates over Secrets that were read.
    Apply,
    /// A first CA: created (fails if one exists), then the leaf Secrets applied.
    CreateCa,
}

/// Applies every owned object and returns the stamps of what it wrote, and the StatefulSet;
/// `None` if `SecretWrite::CreateCa` found a CA Secret already there.
pub async fn apply_all(client: &Client, ns: &str, owned: &Owned, write: SecretWrite) -> Result<Option<(Stamps, StatefulSet)>> {
    fn stamp<K: Resource>(kind: OwnedKind, obj: &K, out: &mut Stamps) {
        if let (Some(name), Some(s)) = (obj.meta().name.as_deref(), Stamp::of(obj.meta())) {
            out.insert(applied::key(kind, name), s);
        }
    }
    // Every owned object, by name: a new one is a compile error here.
    let Owned { statefulset, headless_service, client_service, network_policy, disruption_budget, secrets } = owned;
    let mut stamps = Stamps::new();
    if let (Some(CertSecrets { ca, server, client: client_secret }), true) = (secrets, write != SecretWrite::None) {
        // The CA Secret first: if we stop half-way, the next pass finds the CA and re-uses it.
        let ca = if write == SecretWrite::CreateCa {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match Api::<Secret>::namespaced(client.clone(), ns).create(&params, ca).await {
                Ok(ca) => ca,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
                Err(source) => {
                    return Err(Error::Apply {
                        kind: OwnedKind::Secret.to_string(),
                        name: ca.meta().name.clone().unwrap_or_default(),
                        source,
                    });
                }
            }
        } else {
            apply(client, ns, ca).await?
        };
        let (server, client_secret) = tokio::try_join!(apply(client, ns, server), apply(client, ns, client_secret))?;
        for s in [&ca, &server, &client_secret] {
            stamp(OwnedKind::Secret, s, &mut stamps);
        }
    }
    let budget = async {
        match disruption_budget {
            Some(budget) => apply(client, ns, budget).await.map(Some),
            None => Ok(None),
        }
    };
    let (headless, client_service, policy, budget, sts) = tokio::try_join!(
        apply(client, ns, headless_service),
        apply(client, ns, client_service),
        apply(client, ns, network_policy),
        budget,
        apply(client, ns, statefulset),
    )?;
    stamp(OwnedKind::Service, &headless, &mut stamps);
    stamp(OwnedKind::Service, &client_service, &mut stamps);
    stamp(OwnedKind::NetworkPolicy, &policy, &mut stamps);
    if let Some(budget) = &budget {
        stamp(OwnedKind::PodDisruptionBudget, budget, &mut stamps);
    }
    stamp(OwnedKind::StatefulSet, &sts, &mut stamps);
    Ok(Some((stamps, sts)))
}
