//! The build step: a DindDaemon's spec in, every object it owns out. Pure: no client, no clock,
//! no randomness (certificates are made by `tls` and passed in), so it is unit-tested whole.
//!
//! One file per kind of object. TLS is decided once, by the caller: `certs` is `Some` exactly
//! when `spec.tls.enabled` (see [`certificates_wanted`]); with TLS off no certificate is made,
//! no Secret built and none mounted.

mod dind_init;
mod disruption;
mod network_policy;
pub mod registry_cas;
mod secrets;
mod services;
mod sidecar;
mod statefulset;
#[cfg(test)]
mod tests;

use dind_contract::{client_tls, server_tls};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

pub use dind_init::{DOCKERD_SHUTDOWN_TIMEOUT, DindInitSource, Listen, dind_init_args};
pub use secrets::{CA_KEY, pair_from_secret, pairs_from_secrets};
pub use sidecar::{Sidecar, sidecar, sidecar_docker_host};
pub use statefulset::{CAPABILITIES, claim_size, keep_cert_digest, keep_claim_size};

use crate::crd::DindDaemon;
use crate::error::{Error, Result};
use crate::model::names::{self, Names};
use crate::model::tls;

/// What the platform team configured on the operator (Helm values → flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub image: String,
    /// Where `image` carries `dind-init`; `None`: it does not, an init container copies it in.
    pub image_dind_init_path: Option<String>,
    pub init_image: String,
    /// The nodes support Kubernetes image volumes: dind-init is mounted from `init_image`
    /// instead of copied by an install container (see `DindInitSource::Mounted`).
    pub init_image_volume: bool,
    /// Where the operator's pods run (`POD_NAMESPACE`); `None` out of cluster.
    pub operator_namespace: Option<String>,
    /// The platform team's placement: node labels every daemon pod (pool and sidecar) must be
    /// scheduled by, over whatever the spec or the pod asks (`--placement-node-selector`).
    pub placement: std::collections::BTreeMap<String, String>,
    /// The taint keys daemon pods may tolerate (`--placement-toleration-keys`); None: any. Pool
    /// daemons' tolerations are the chart policy's to check; a sidecar pod's, the webhook's.
    pub toleration_keys: Option<Vec<String>>,
}

#[cfg(test)]
impl Defaults {
    /// What unit tests start from: `image` without dind-init (copied in from `init_image`), no
    /// image volumes, no placement, any toleration, out of cluster.
    pub(crate) fn of(image: &str, init_image: &str) -> Self {
        Self {
            image: image.into(),
            image_dind_init_path: None,
            init_image: init_image.into(),
            init_image_volume: false,
            operator_namespace: None,
            placement: std::collections::BTreeMap::new(),
            toleration_keys: None,
        }
    }
}

/// `selector` with the platform's `placement` laid over it (the platform's values win): what a
/// daemon pod is scheduled by. `None` when both are empty.
pub fn placed(
    selector: Option<&std::collections::BTreeMap<String, String>>,
    defaults: &Defaults,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut out = selector.cloned().unwrap_or_default();
    out.extend(defaults.placement.iter().map(|(k, v)| (k.clone(), v.clone())));
    (!out.is_empty()).then_some(out)
}

/// Whether a DindDaemon's daemons serve mutual TLS (pool daemons with the operator's
/// certificates, sidecar daemons with ones they make in the pod): the one place TLS on/off is
/// read from the spec.
pub fn certificates_wanted(dd: &DindDaemon) -> bool {
    dd.spec.tls.enabled
}

/// The three certificate Secrets of a DindDaemon with TLS on.
#[derive(Clone, Debug)]
pub struct CertSecrets {
    /// CA certificate and key: signs the leaves, never mounted.
    pub ca: Secret,
    /// Server certificate, key and CA certificate: mounted for dind-init.
    pub server: Secret,
    /// Client certificate, key and CA certificate: a DOCKER_CERT_PATH.
    pub client: Secret,
}

/// Every object a DindDaemon owns, ready for server-side apply. Code that handles all of them
/// destructures this without `..`, so a new kind of object is a compile error there.
#[derive(Clone, Debug)]
pub struct Owned {
    pub statefulset: StatefulSet,
    pub headless_service: Service,
    pub client_service: Service,
    pub network_policy: NetworkPolicy,
    /// `None` with one daemon (see [`budget_wanted`]).
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// `None` with TLS off.
    pub secrets: Option<CertSecrets>,
}

/// The DOCKER_HOST of the client Service and of each replica (pod name, DOCKER_HOST).
pub fn docker_hosts(dd: &DindDaemon, namespace: &str) -> (String, Vec<(String, String)>) {
    let names = Names::of(&dd.name_any());
    let port = dd.spec.port;
    let service = names::docker_host(&names.service_host(namespace), port);
    let replicas = (0..dd.spec.replicas).map(|i| (names.pod(i), names::docker_host(&names.replica_host(i, namespace), port))).collect();
    (service, replicas)
}

fn meta(dd: &DindDaemon, names: &Names, name: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: dd.namespace(),
        labels: Some(names.labels()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Whether a DindDaemon gets a PodDisruptionBudget: with more than one daemon. With one, a
/// budget of `maxUnavailable: 1` allows every eviction, so it would cost an object, its watch
/// events and the disruption controller's work for nothing (measured with bench-operator:
/// 1000 single-daemon DindDaemons reached their first status in 50 s with one each, 33 s
/// without).
pub fn budget_wanted(dd: &DindDaemon) -> bool {
    dd.spec.replicas > 1
}

/// The PodDisruptionBudget of `dd` whatever its replicas: one made while it had more than one
/// daemon is kept when it has one (the operator deletes nothing; the garbage collector does,
/// with the DindDaemon), and left unapplied it would read as drift on every pass.
pub fn disruption_budget(dd: &DindDaemon) -> Result<PodDisruptionBudget> {
    let owner = dd.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let name = dd.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    Ok(disruption::disruption_budget(dd, &Names::of(&name), &owner))
}

/// Builds every owned object. `certs` is `Some` exactly with TLS on (see
/// [`certificates_wanted`]). Fails only on a DindDaemon without name/namespace/uid.
pub fn build(dd: &DindDaemon, defaults: &Defaults, certs: Option<&tls::Bundle>) -> Result<Owned> {
    let owner = dd.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let name = dd.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    dd.metadata.namespace.as_ref().ok_or(Error::MissingField("metadata.namespace"))?;
    let names = Names::of(&name);
    Ok(Owned {
        statefulset: statefulset::daemon_statefulset(dd, defaults, certs, &names, &owner)?,
        headless_service: services::headless_service(dd, &names, &owner),
        client_service: services::client_service(dd, &names, &owner),
        network_policy: network_policy::network_policy(dd, &names, &owner, defaults.operator_namespace.as_deref()),
        disruption_budget: budget_wanted(dd).then(|| disruption::disruption_budget(dd, &names, &owner)),
        secrets: certs.map(|certs| CertSecrets {
            ca: secrets::secret(
                meta(dd, &names, &names.ca_secret, &owner),
                None,
                [(server_tls::CA, &certs.ca.cert_pem), (CA_KEY, &certs.ca.key_pem)],
            ),
            server: secrets::secret(
                meta(dd, &names, &names.server_secret, &owner),
                Some("kubernetes.io/tls"),
                [
                    (server_tls::CA, &certs.ca.cert_pem),
                    (server_tls::CERT, &certs.server.cert_pem),
                    (server_tls::KEY, &certs.server.key_pem),
                ],
            ),
            client: secrets::secret(
                meta(dd, &names, &names.client_secret, &owner),
                None,
                [
                    (client_tls::CA, &certs.ca.cert_pem),
                    (client_tls::CERT, &certs.client.cert_pem),
                    (client_tls::KEY, &certs.client.key_pem),
                ],
            ),
        }),
    })
}
