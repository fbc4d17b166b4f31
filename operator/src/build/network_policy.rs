//! The NetworkPolicy in front of the daemons' port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::crd::DindDaemon;
use crate::names::{CLIENT_LABEL, NAMESPACE_NAME_LABEL, Names, OPERATOR_NAME_LABEL};

/// The ports containers on a daemon may publish (`docker run -p`, compose `ports:`,
/// Testcontainers' mapped ports, Docker's ephemeral range 32768-60999 included): every
/// unprivileged port. Client pods reach them at the daemon's own address.
pub const PUBLISHED_PORTS: (i32, i32) = (1024, 65535);

/// Admits the daemon port only from pods labelled `dind.dev/client: NAME` (same namespace),
/// and from the operator's pods in the operator's own namespace (it asks each daemon for its
/// storage driver and disk use; a pod elsewhere that gives itself the operator's label is not
/// admitted); and the ports that containers publish on the daemon, from client pods only.
pub fn network_policy(dd: &DindDaemon, names: &Names, owner: &OwnerReference, operator_namespace: Option<&str>) -> NetworkPolicy {
    let name = &names.daemon;
    let clients = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(CLIENT_LABEL.to_string(), name.clone())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let operator = operator_namespace.map(|ns| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(OPERATOR_NAME_LABEL.0.to_string(), OPERATOR_NAME_LABEL.1.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    });
    let published = ["TCP", "UDP"]
        .into_iter()
        .map(|protocol| NetworkPolicyPort {
            port: Some(IntOrString::Int(PUBLISHED_PORTS.0)),
            end_port: Some(PUBLISHED_PORTS.1),
            protocol: Some(protocol.into()),
        })
        .collect();
    NetworkPolicy {
        metadata: meta(dd, names, &names.network_policy, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(names.selector()), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(std::iter::once(clients.clone()).chain(operator).collect()),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(dd.spec.port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                },
                NetworkPolicyIngressRule { from: Some(vec![clients]), ports: Some(published) },
            ]),
            ..Default::default()
        }),
    }
}
