//! The one list of kinds a DindDaemon owns. Everything that walks the owned objects is driven
//! from [`OwnedKind`] with exhaustive matches: the names (`Names::owned`), the stamps and
//! fingerprint (`applied`), the ownership check before an apply (`controller::claims`), the
//! caches the watches keep (`controller::OwnedCaches::stamp`), and the RBAC the chart is
//! generated from (`rbac::operator_rules`). A new kind is a new variant here, and the compiler
//! names every place that must learn it.
//!
//! What a kind's objects look like is `objects::Owned` (built) and its apply is
//! `controller::apply`, both of which destructure `Owned` whole for the same reason.

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// A kind of object a pool-mode DindDaemon owns (sidecar mode owns only volume-pool claims,
/// which are made, leased and released, not applied; see `controller::volume_pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedKind {
    StatefulSet,
    Service,
    Secret,
    NetworkPolicy,
    PodDisruptionBudget,
}

impl OwnedKind {
    /// Every owned kind, in the order RBAC rules list them.
    pub const ALL: [Self; 5] = [Self::StatefulSet, Self::Service, Self::Secret, Self::NetworkPolicy, Self::PodDisruptionBudget];

    /// The API kind (`StatefulSet`), as objects, events and stamps name it.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::StatefulSet => StatefulSet::KIND,
            Self::Service => Service::KIND,
            Self::Secret => Secret::KIND,
            Self::NetworkPolicy => NetworkPolicy::KIND,
            Self::PodDisruptionBudget => PodDisruptionBudget::KIND,
        }
    }

    /// The API group (`apps`; `""` for the core group).
    pub const fn group(self) -> &'static str {
        match self {
            Self::StatefulSet => StatefulSet::GROUP,
            Self::Service => Service::GROUP,
            Self::Secret => Secret::GROUP,
            Self::NetworkPolicy => NetworkPolicy::GROUP,
            Self::PodDisruptionBudget => PodDisruptionBudget::GROUP,
        }
    }

    /// The resource as RBAC names it (`statefulsets`).
    pub const fn resource(self) -> &'static str {
        match self {
            Self::StatefulSet => StatefulSet::URL_PATH_SEGMENT,
            Self::Service => Service::URL_PATH_SEGMENT,
            Self::Secret => Secret::URL_PATH_SEGMENT,
            Self::NetworkPolicy => NetworkPolicy::URL_PATH_SEGMENT,
            Self::PodDisruptionBudget => PodDisruptionBudget::URL_PATH_SEGMENT,
        }
    }
}

impl std::fmt::Display for OwnedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_name_their_api_types() {
        let kinds: std::collections::BTreeSet<_> = OwnedKind::ALL.iter().map(|k| k.kind()).collect();
        assert_eq!(kinds.len(), OwnedKind::ALL.len());
        assert_eq!(OwnedKind::StatefulSet.group(), "apps");
        assert_eq!(OwnedKind::Secret.group(), "");
        assert_eq!(OwnedKind::NetworkPolicy.resource(), "networkpolicies");
        assert_eq!(OwnedKind::PodDisruptionBudget.to_string(), "PodDisruptionBudget");
    }
}
