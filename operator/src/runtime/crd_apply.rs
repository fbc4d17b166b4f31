//! `dind-operator apply-crd`: the chart's pre-install/pre-upgrade hook applies the CRD this
//! operator was built with (server-side, our field manager) and waits until it is Established,
//! so `helm upgrade` moves the CRD with the operator (Helm itself never upgrades `crds/`).
//!
//! A CRD written by a newer operator is kept (a `helm rollback` must not take fields away: the
//! apiserver would prune them from every DindDaemon at its next write), unless forced.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::model::names::FIELD_MANAGER;

/// The annotation on the CRD naming the operator version that applied it.
pub const VERSION_ANNOTATION: &str = "dind.dev/operator-version";

/// `1.2.3` (a pre-release suffix ignored) as a comparable triple.
fn version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether to apply `ours` over a CRD applied by `theirs` (none: a CRD from `crds/` or none).
pub fn should_apply(theirs: Option<&str>, ours: &str, force: bool) -> bool {
    force
        || match (theirs.and_then(version), version(ours)) {
            (Some(t), Some(o)) => o >= t,
            _ => true,
        }
}

/// Applies the CRD unless a newer operator's is there; waits up to `wait` for Established.
/// Returns what it did, for the hook Job's log.
pub async fn apply(client: Client, force: bool, wait: Duration) -> Result<String, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut crd = crate::crd::definition();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let ours = env!("CARGO_PKG_VERSION");
    let existing = api.get_opt(&name).await.map_err(|e| format!("reading CustomResourceDefinition {name}: {e}"))?;
    let theirs = existing.as_ref().and_then(|c| c.metadata.annotations.as_ref()?.get(VERSION_ANNOTATION).cloned());
    if !should_apply(theirs.as_deref(), ours, force) {
        return Ok(format!(
            "kept CustomResourceDefinition {name}: it was applied by dind-operator {}, newer than this {ours} (--force applies this one)",
            theirs.unwrap_or_default()
        ));
    }
    crd.metadata.annotations.get_or_insert_with(Default::default).insert(VERSION_ANNOTATION.into(), ours.into());
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
        .await
        .map_err(|e| format!("applying CustomResourceDefinition {name}: {e}"))?;
    let started = std::time::Instant::now();
    loop {
        let now = api.get(&name).await.map_err(|e| format!("reading CustomResourceDefinition {name}: {e}"))?;
        let established =
            now.status.and_then(|s| s.conditions).into_iter().flatten().any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(format!(
                "applied CustomResourceDefinition {name} of dind-operator {ours} (was: {}); Established",
                theirs.as_deref().unwrap_or(if existing.is_some() { "the chart's crds/ or an older operator" } else { "none" })
            ));
        }
        if started.elapsed() > wait {
            return Err(format!("CustomResourceDefinition {name} applied but not Established within {wait:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_operators_crd_is_kept_unless_forced() {
        assert!(should_apply(None, "0.1.0", false), "a CRD from crds/ (no annotation) is upgraded");
        assert!(should_apply(Some("0.1.0"), "0.2.0", false));
        assert!(should_apply(Some("0.2.0"), "0.2.0", false), "the same version is re-applied");
        assert!(!should_apply(Some("0.10.0"), "0.9.1", false), "numeric, not lexical");
        assert!(should_apply(Some("0.10.0"), "0.9.1", true));
        assert!(should_apply(Some("garbage"), "0.1.0", false));
        assert_eq!(version("1.2.3-rc.1"), Some((1, 2, 3)));
    }
}
