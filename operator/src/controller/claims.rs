//! Before an apply: are the objects of the generated names free, ours, or handed over? (The
//! judgement is `ownership::judge`; this reads the metadata it needs.)

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::applied::{self, Stamps};
use crate::error::{Error, Result};
use crate::model::kinds::OwnedKind;
use crate::model::names::Names;
use crate::model::ownership::{self, Verdict};

/// Checks every object `names` would write (`tls`: the Secrets; `budget`: the
/// PodDisruptionBudget). An object the caches show controlled by `uid` costs no request; any
/// other name is read (a foreign object carries none of our labels, so no cache shows it),
/// from the apiserver's watch cache (`resourceVersion=0`: no etcd read; a second of lag is no
/// wider than the window between any check and the apply). Returns whether any certificate
/// Secret exists (ours or handed over), or `Error::NameConflict` naming every object in the
/// way.
pub async fn check(client: &Client, ns: &str, names: &Names, uid: &str, tls: bool, budget: bool, seen: &Stamps) -> Result<bool> {
    let verdicts = futures::future::try_join_all(names.owned(tls, budget).into_iter().map(|(kind, name)| async move {
        let cached = seen.get(&applied::key(kind, name));
        if cached.is_some_and(|s| s.controller.as_ref().is_some_and(|c| c.is(uid))) {
            return Ok::<_, Error>((kind, name, Some(Verdict::Ours)));
        }
        let meta = match kind {
            OwnedKind::StatefulSet => metadata::<StatefulSet>(client, ns, name).await?,
            OwnedKind::Service => metadata::<Service>(client, ns, name).await?,
            OwnedKind::NetworkPolicy => metadata::<NetworkPolicy>(client, ns, name).await?,
            OwnedKind::PodDisruptionBudget => metadata::<PodDisruptionBudget>(client, ns, name).await?,
            OwnedKind::Secret => metadata::<Secret>(client, ns, name).await?,
        };
        Ok((kind, name, meta.map(|m| ownership::judge(&m, &names.daemon, uid))))
    }))
    .await?;
    let mut secrets_exist = false;
    let mut conflicts = Vec::new();
    for (kind, name, verdict) in verdicts {
        match verdict {
            None => {}
            Some(Verdict::NotOurs(why)) => conflicts.push(ownership::conflict(kind.kind(), name, &why)),
            Some(Verdict::Ours | Verdict::HandedOver) => secrets_exist |= kind == OwnedKind::Secret,
        }
    }
    if conflicts.is_empty() { Ok(secrets_exist) } else { Err(Error::NameConflict { daemon: names.daemon.clone(), objects: conflicts }) }
}

async fn metadata<K>(client: &Client, ns: &str, name: &str) -> Result<Option<ObjectMeta>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    Ok(api.get_metadata_opt_with(name, &kube::api::GetParams::any()).await?.map(|m| m.metadata))
}
