//! The operator's RBAC rules: the one source the Helm chart is generated from (`crdgen`).
//! Least privilege: no delete anywhere (ownerReferences and the garbage collector delete), no
//! access to objects the operator does not make.

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::model::kinds::OwnedKind;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| (*s).to_string()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_string()).collect(),
        ..Default::default()
    }
}

/// Rules in every watched namespace (a ClusterRole, or a Role per namespace).
pub fn operator_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        rule("dind.dev", &["dinddaemons"], &["get", "list", "watch"]),
        rule("dind.dev", &["dinddaemons/status"], &["get", "patch", "update"]),
    ];
    // Every owned kind (`OwnedKind`), one rule per API group in a row. Server-side apply
    // creates as well as updates, so it needs both verbs; `get`: the ownership check reads an
    // object of a generated name that no cache shows.
    let mut owned: Vec<(&str, Vec<&str>)> = Vec::new();
    for kind in OwnedKind::ALL {
        match owned.last_mut() {
            Some((group, resources)) if *group == kind.group() => resources.push(kind.resource()),
            _ => owned.push((kind.group(), vec![kind.resource()])),
        }
    }
    rules.extend(owned.into_iter().map(|(group, resources)| rule(group, &resources, &["get", "list", "watch", "create", "patch"])));
    rules.extend([
        // Claims of sidecar volume pools: made, leased (by the webhook), released.
        rule("", &["persistentvolumeclaims"], &["get", "list", "watch", "create", "patch"]),
        // ConfigMaps that spec.daemon.registryCAs names: do they exist, with the key?
        rule("", &["configmaps"], &["get"]),
        // Pods: readiness, crash reasons, and pods that mount a daemon's volume.
        rule("", &["pods"], &["get", "list", "watch"]),
        // A pool daemon restarted, when idle, to serve its renewed certificate
        // (`controller::cert_roll`): an eviction, which the DindDaemon's budget governs.
        rule("", &["pods/eviction"], &["create"]),
        // EndpointSlices of our Services: a daemon is Ready once its Service routes to it.
        rule("discovery.k8s.io", &["endpointslices"], &["list", "watch"]),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // The StatefulSet controller's FailedCreate events (watched): why daemon pods are
        // missing (Pod Security Admission, quota, policy).
        rule("", &["events"], &["list", "watch"]),
    ]);
    rules
}

/// Rules in the operator's own namespace for the injection webhook's certificate Secret
/// (replaced, with its resourceVersion, on rotation).
pub fn webhook_rules() -> Vec<PolicyRule> {
    vec![rule("", &["secrets"], &["get", "create", "update"])]
}

/// Cluster rules for the webhook's own MutatingWebhookConfiguration (the chart narrows them to
/// its name): the operator keeps its caBundle.
pub fn webhook_configuration_rules() -> Vec<PolicyRule> {
    vec![rule("admissionregistration.k8s.io", &["mutatingwebhookconfigurations"], &["get", "patch"])]
}

/// Cluster rules for grants and per-pod client certificates (with the webhook): a pod of any
/// namespace may name a DindDaemon of a watched one (`spec.clients`), so the webhook reads that
/// pod's namespace (its labels decide the grant), and the certificate endpoint checks a pod's
/// token (a TokenReview) and reads the pod it is bound to (uid, labels, phase). Read-only, and
/// no Secrets: certificates are signed with the DindDaemon's CA, in its own namespace.
pub fn grant_rules() -> Vec<PolicyRule> {
    vec![rule("authentication.k8s.io", &["tokenreviews"], &["create"]), rule("", &["namespaces"], &["get"]), rule("", &["pods"], &["get"])]
}

/// Cluster rules for the chart's CRD hook (`dind-operator apply-crd`, a pre-install and
/// pre-upgrade Job): read and apply the DindDaemon CRD (the chart narrows get and patch to its
/// name; `create` cannot be narrowed, and server-side apply creates a missing CRD).
pub fn crd_rules() -> Vec<PolicyRule> {
    vec![rule("apiextensions.k8s.io", &["customresourcedefinitions"], &["get", "create", "patch"])]
}

/// Rules in the operator's own namespace, for leader election.
pub fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule("coordination.k8s.io", &["leases"], &["get", "create", "update"])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_deletes_or_uses_wildcards() {
        let all = [operator_rules(), leader_election_rules(), webhook_rules(), webhook_configuration_rules(), grant_rules(), crd_rules()];
        for r in all.iter().flatten() {
            assert!(!r.verbs.iter().any(|v| v == "delete" || v == "*" || v == "deletecollection"), "{r:?}");
            assert!(!r.resources.iter().flatten().any(|s| s == "*"), "{r:?}");
        }
    }

    #[test]
    fn every_owned_kind_may_be_applied() {
        let rules = operator_rules();
        for kind in OwnedKind::ALL {
            let rule = rules
                .iter()
                .find(|r| {
                    r.api_groups.as_deref() == Some(&[kind.group().to_string()])
                        && r.resources.iter().flatten().any(|s| s == kind.resource())
                })
                .unwrap_or_else(|| panic!("no rule for {kind}"));
            for verb in ["get", "list", "watch", "create", "patch"] {
                assert!(rule.verbs.iter().any(|v| v == verb), "{kind}: {verb}");
            }
        }
    }
}
