//! Volumes that grow: `storage.size` raised past the size the StatefulSet's claim template was
//! made with (templates are immutable, so it keeps that one: `objects::keep_claim_size`) raises
//! each daemon's claim `docker-NAME-i` instead. The storage driver then expands the volume
//! (online where it can), so the daemon keeps running and keeps its cache. Where the claim's
//! StorageClass does not allow expansion the apiserver refuses the patch, which status shows.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::Context;
use crate::crd::DindDaemon;
use crate::disk;
use crate::error::Result;
use crate::model::names::{FIELD_MANAGER, Names};
use crate::status::Growth;

/// Raises the claims of `dd`'s daemons to `storage.size` when it is larger than `template`
/// (the StatefulSet's claim size); what is left to wait for or was refused, if anything.
pub async fn grow(ctx: &Context, dd: &DindDaemon, ns: &str, names: &Names, template: Option<&str>) -> Result<Option<Growth>> {
    let spec = &dd.spec;
    let size = spec.storage.size();
    let (Some(wanted), Some(template)) = (disk::volume_bytes(spec), template.and_then(disk::quantity_bytes)) else { return Ok(None) };
    if spec.storage.ephemeral || wanted == template {
        return Ok(None);
    }
    if wanted < template {
        return Ok(Some(Growth::Refused(format!(
            "storage.size {size} is below the {} the volumes were made with, and volumes do not shrink: set it back",
            disk::human(template)
        ))));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let (mut refused, mut waiting) = (Vec::new(), Vec::new());
    for ordinal in 0..spec.replicas {
        let name = names.claim(ordinal);
        let Some(claim) = claims.get_opt(&name).await? else { continue };
        let storage = |q: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            q.and_then(|m| m.get("storage")).and_then(|q| disk::quantity_bytes(&q.0)).unwrap_or(0)
        };
        let requested = storage(claim.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()));
        if requested < wanted {
            let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            match claims
                .patch(&name, &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(claim = %name, size, "volume claim raised"),
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => {
                    refused.push(format!("{name}: {}", e.message));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let capacity = storage(claim.status.as_ref().and_then(|s| s.capacity.as_ref()));
        if capacity < wanted {
            waiting.push(format!("{name} has {} of {size}", disk::human(capacity)));
        }
    }
    Ok(if !refused.is_empty() {
        Some(Growth::Refused(format!(
            "storage.size {size} cannot be applied: the apiserver refused to expand {} (does its StorageClass set allowVolumeExpansion? set the size back to undo)",
            refused.join("; ")
        )))
    } else if !waiting.is_empty() {
        Some(Growth::Waiting(format!("expanding volumes to {size}: {} (the storage driver expands them)", waiting.join(", "))))
    } else {
        None
    })
}
