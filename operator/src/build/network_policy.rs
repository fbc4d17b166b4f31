//! The NetworkPolicy in front of the daemons' port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::crd::DindDaemon;
use crate::names::{CLIENT_LABEL, Names, OPERATOR_NAME_LABEL};

/// Admits the daemon port only from pods labelled `dind.dev/client: NAME` (same namespace),
/// and from the operator (which asks each daemon for its storage driver).
pub fn network_policy(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> NetworkPolicy {
    let name = &names.daemon;
    NetworkPolicy {
        metadata: meta(dd, names, &names.network_policy, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(names.selector()), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(CLIENT_LABEL.to_string(), name.clone())])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(OPERATOR_NAME_LABEL.0.to_string(), OPERATOR_NAME_LABEL.1.to_string())])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(dd.spec.port)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}
