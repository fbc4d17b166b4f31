//! The NetworkPolicy in front of the daemons' port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::crd::{DindDaemon, EgressSpec};
use crate::model::names::{CLIENT_LABEL, INJECT_NAMESPACE_LABEL, NAMESPACE_NAME_LABEL, Names, OPERATOR_NAME_LABEL};

/// The ports containers on a daemon may publish (`docker run -p`, compose `ports:`,
/// Testcontainers' mapped ports, Docker's ephemeral range 32768-60999 included): every
/// unprivileged port. Client pods reach them at the daemon's own address.
pub const PUBLISHED_PORTS: (i32, i32) = (1024, 65535);

/// Admits the daemon port only from pods labelled `dind.dev/client: NAME` (same namespace) and,
/// with a grant (`spec.clients`), from the granted namespaces' pods labelled as its clients,
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
    // A grant (`spec.clients`): the granted namespaces' pods that carry the client labels the
    // webhook gives them (the client label and the daemon's namespace), and match the grant's
    // pod selector.
    let granted = dd.spec.clients.as_ref().map(|grant| NetworkPolicyPeer {
        namespace_selector: Some(grant.namespace_selector.clone()),
        pod_selector: Some(crate::model::grant::with_labels(
            grant.pod_selector.as_ref(),
            &BTreeMap::from([
                (CLIENT_LABEL.to_string(), name.clone()),
                (INJECT_NAMESPACE_LABEL.to_string(), dd.metadata.namespace.clone().unwrap_or_default()),
            ]),
        )),
        ..Default::default()
    });
    let clients: Vec<NetworkPolicyPeer> = std::iter::once(clients).chain(granted).collect();
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
            policy_types: Some(if dd.spec.egress.restricted { vec!["Ingress".into(), "Egress".into()] } else { vec!["Ingress".into()] }),
            egress: dd.spec.egress.restricted.then(|| egress_rules(&dd.spec.egress)),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(clients.iter().cloned().chain(operator).collect()),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(dd.spec.port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                },
                NetworkPolicyIngressRule { from: Some(clients), ports: Some(published) },
            ]),
        }),
    }
}

/// `spec.egress` as NetworkPolicy egress rules: each allowed CIDR with the denied CIDRs inside
/// it as exceptions (NetworkPolicy requires an exception to lie within its block; a denied CIDR
/// outside every allowed one is denied anyway), and DNS (port 53) to any resolver but the
/// denied CIDRs (before: to any address, so port 53 of the metadata service was open).
pub fn egress_rules(egress: &EgressSpec) -> Vec<NetworkPolicyEgressRule> {
    let peers = |cidrs: &[String]| -> Vec<NetworkPolicyPeer> {
        cidrs
            .iter()
            .map(|allowed| {
                let except: Vec<String> = egress.denied_cidrs.iter().filter(|d| cidr_within(d, allowed)).cloned().collect();
                NetworkPolicyPeer {
                    ip_block: Some(IPBlock { cidr: allowed.clone(), except: (!except.is_empty()).then_some(except) }),
                    ..Default::default()
                }
            })
            .collect()
    };
    let blocks = peers(&egress.allowed_cidrs);
    let anywhere = peers(&["0.0.0.0/0".to_string(), "::/0".to_string()]);
    let dns = ["UDP", "TCP"]
        .into_iter()
        .map(|protocol| NetworkPolicyPort { port: Some(IntOrString::Int(53)), protocol: Some(protocol.into()), ..Default::default() })
        .collect();
    vec![NetworkPolicyEgressRule { to: Some(blocks), ports: None }, NetworkPolicyEgressRule { to: Some(anywhere), ports: Some(dns) }]
}

/// Whether CIDR `inner` lies within CIDR `outer` (same family, longer or equal prefix, same
/// network bits). Unparsable input lies within nothing (CEL refuses it at the door).
pub fn cidr_within(inner: &str, outer: &str) -> bool {
    fn parse(cidr: &str) -> Option<(u128, u32, bool)> {
        let (addr, len) = cidr.split_once('/')?;
        let len: u32 = len.parse().ok()?;
        match addr.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(a) if len <= 32 => Some((u128::from(u32::from(a)) << 96, len, false)),
            std::net::IpAddr::V6(a) if len <= 128 => Some((u128::from(a), len, true)),
            _ => None,
        }
    }
    let (Some((inner, inner_len, inner_v6)), Some((outer, outer_len, outer_v6))) = (parse(inner), parse(outer)) else { return false };
    // IPv4 sits in the top 32 bits, so one mask serves both families.
    let mask = if outer_len == 0 { 0 } else { u128::MAX << (128 - outer_len) };
    inner_v6 == outer_v6 && inner_len >= outer_len && inner & mask == outer & mask
}
