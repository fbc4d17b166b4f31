//! Grants (`spec.clients`): which DindDaemon a pod names, whether its namespace and labels are
//! granted, and how long its own client certificate may live. Pure: the webhook (at the pod's
//! creation) and the certificate endpoint (at every renewal) ask the same questions here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use time::{Duration, OffsetDateTime};

use crate::crd::{ClientCertificates, ClientsSpec, DindDaemonSpec};
use crate::model::names::{INJECT_LABEL, INJECT_NAMESPACE_LABEL};

pub type Labels = BTreeMap<String, String>;

/// The DindDaemon a pod's labels name: `(namespace, name)` (the namespace is the pod's own
/// unless `dind.dev/inject-namespace` names another).
pub fn target_of<'a>(pod_namespace: &'a str, labels: &'a Labels) -> Option<(&'a str, &'a str)> {
    let name = labels.get(INJECT_LABEL)?;
    let namespace = labels.get(INJECT_NAMESPACE_LABEL).map_or(pod_namespace, String::as_str);
    Some((namespace, name))
}

/// Whether `labels` match `selector`, as Kubernetes matches (every `matchLabels` pair and every
/// `matchExpressions` requirement; an empty selector matches everything). An operator this
/// code does not know matches nothing.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        match (r.operator.as_str(), labels.get(&r.key)) {
            ("In", Some(v)) => values.contains(v),
            ("NotIn", v) => v.is_none_or(|v| !values.contains(v)),
            ("Exists", v) => v.is_some(),
            ("DoesNotExist", v) => v.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// A selector as `kubectl` writes one: `a=b,c in (d,e),!f`.
pub fn describe(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({values})", r.key),
        });
    }
    if parts.is_empty() { "everything".to_string() } else { parts.join(",") }
}

/// `base` with `labels` added as requirements (the NetworkPolicy's peer: the grant's pods that
/// are also labelled as this daemon's clients).
pub fn with_labels(base: Option<&LabelSelector>, labels: &Labels) -> LabelSelector {
    let mut out = base.cloned().unwrap_or_default();
    let mut pairs = out.match_labels.take().unwrap_or_default();
    for (k, v) in labels {
        match pairs.get(k) {
            // The grant asks for another value: keep both, as an expression (matches nothing).
            Some(have) if have != v => {
                out.match_expressions.get_or_insert_with(Vec::new).push(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: k.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    },
                );
            }
            _ => {
                pairs.insert(k.clone(), v.clone());
            }
        }
    }
    out.match_labels = Some(pairs);
    out
}

/// Whether DindDaemon `namespace/name` (with `clients`) serves a pod of `pod_namespace`
/// (labelled `namespace_labels`) with `pod_labels`. Its own namespace's pods always; another's
/// only by the grant. The refusal names what is missing.
pub fn check(
    (namespace, name): (&str, &str),
    clients: Option<&ClientsSpec>,
    pod_namespace: &str,
    namespace_labels: &Labels,
    pod_labels: &Labels,
) -> Result<(), String> {
    if pod_namespace == namespace {
        return Ok(());
    }
    let Some(grant) = clients else {
        return Err(format!(
            "DindDaemon {namespace}/{name} serves only pods of namespace {namespace:?}: it grants no other namespace (spec.clients); \
             ask its owners to add namespace {pod_namespace:?} to spec.clients.namespaceSelector"
        ));
    };
    if !matches(&grant.namespace_selector, namespace_labels) {
        return Err(format!(
            "namespace {pod_namespace:?} is not granted by DindDaemon {namespace}/{name}: its spec.clients.namespaceSelector ({}) does not match the namespace's labels ({})",
            describe(&grant.namespace_selector),
            describe(&LabelSelector { match_labels: Some(namespace_labels.clone()), ..Default::default() })
        ));
    }
    if let Some(pods) = &grant.pod_selector
        && !matches(pods, pod_labels)
    {
        return Err(format!(
            "the pod is not granted by DindDaemon {namespace}/{name}: its spec.clients.podSelector ({}) does not match the pod's labels",
            describe(pods)
        ));
    }
    Ok(())
}

/// Whether a pod of `pod_namespace` gets a certificate of its own from this DindDaemon (rather
/// than the shared Secret): always across namespaces, and in its own with `PerPod`.
pub fn per_pod(spec: &DindDaemonSpec, namespace: &str, pod_namespace: &str) -> bool {
    pod_namespace != namespace || spec.tls.client_certificates == ClientCertificates::PerPod
}

/// How long a pod's certificate lives from `now`: the DindDaemon's lifetime, but not past the
/// pod's `activeDeadlineSeconds` (counted from its start), and at least a minute.
pub fn lifetime(seconds: i32, active_deadline: Option<i64>, started: Option<OffsetDateTime>, now: OffsetDateTime) -> Duration {
    let wanted = Duration::seconds(i64::from(seconds));
    let until_deadline = match (active_deadline, started) {
        (Some(d), Some(s)) => Some(s + Duration::seconds(d) - now),
        (Some(d), None) => Some(Duration::seconds(d)),
        _ => None,
    };
    until_deadline.map_or(wanted, |d| wanted.min(d)).max(Duration::minutes(1))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| (*s).to_string()).collect()),
        }
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let team = labels(&[("kubernetes.io/metadata.name", "team-a"), ("tier", "ci")]);
        let sel = |pairs: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!pairs.is_empty()).then(|| labels(pairs)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        assert!(matches(&LabelSelector::default(), &team), "{{}} matches every namespace");
        assert!(matches(&sel(&[("tier", "ci")], vec![]), &team));
        assert!(!matches(&sel(&[("tier", "prod")], vec![]), &team));
        assert!(matches(&sel(&[], vec![req("tier", "In", &["ci", "dev"])]), &team));
        assert!(!matches(&sel(&[], vec![req("tier", "NotIn", &["ci"])]), &team));
        assert!(matches(&sel(&[], vec![req("owner", "NotIn", &["x"])]), &team), "NotIn matches a missing key");
        assert!(matches(&sel(&[], vec![req("tier", "Exists", &[])]), &team));
        assert!(!matches(&sel(&[], vec![req("tier", "DoesNotExist", &[])]), &team));
        assert!(!matches(&sel(&[], vec![req("tier", "Gt", &["1"])]), &team), "an unknown operator matches nothing");
        assert_eq!(describe(&sel(&[("a", "b")], vec![req("c", "In", &["d", "e"]), req("f", "DoesNotExist", &[])])), "a=b,c in (d,e),!f");
    }

    #[test]
    fn a_pod_names_its_daemon_in_its_namespace_or_in_the_one_it_labels() {
        let own = labels(&[(INJECT_LABEL, "ci")]);
        assert_eq!(target_of("team-a", &own), Some(("team-a", "ci")));
        let other = labels(&[(INJECT_LABEL, "ci"), (INJECT_NAMESPACE_LABEL, "dind")]);
        assert_eq!(target_of("team-a", &other), Some(("dind", "ci")));
        assert_eq!(target_of("team-a", &labels(&[])), None);
    }

    #[test]
    fn grants_refuse_naming_what_is_missing() {
        let team_a = labels(&[("kubernetes.io/metadata.name", "team-a")]);
        let pod = labels(&[("app", "build")]);
        assert_eq!(check(("dind", "ci"), None, "dind", &labels(&[]), &pod), Ok(()), "its own namespace needs no grant");
        let e = check(("dind", "ci"), None, "team-a", &team_a, &pod).unwrap_err();
        assert!(e.contains("grants no other namespace (spec.clients)") && e.contains("\"team-a\""), "{e}");
        let grant = ClientsSpec {
            namespace_selector: LabelSelector { match_labels: Some(labels(&[("dind.dev/tenant", "true")])), ..Default::default() },
            pod_selector: None,
        };
        let e = check(("dind", "ci"), Some(&grant), "team-a", &team_a, &pod).unwrap_err();
        assert!(e.contains("namespaceSelector (dind.dev/tenant=true)") && e.contains("kubernetes.io/metadata.name=team-a"), "{e}");
        let tenant = labels(&[("kubernetes.io/metadata.name", "team-a"), ("dind.dev/tenant", "true")]);
        assert_eq!(check(("dind", "ci"), Some(&grant), "team-a", &tenant, &pod), Ok(()));
        let picky = ClientsSpec {
            pod_selector: Some(LabelSelector { match_labels: Some(labels(&[("app", "release")])), ..Default::default() }),
            ..grant
        };
        let e = check(("dind", "ci"), Some(&picky), "team-a", &tenant, &pod).unwrap_err();
        assert!(e.contains("podSelector (app=release)"), "{e}");
    }

    #[test]
    fn the_network_peer_adds_the_client_labels_to_the_grants_pod_selector() {
        let ours = labels(&[("dind.dev/client", "ci"), (INJECT_NAMESPACE_LABEL, "dind")]);
        let s = with_labels(None, &ours);
        assert_eq!(s.match_labels, Some(ours.clone()));
        let grant = LabelSelector { match_labels: Some(labels(&[("app", "build"), ("dind.dev/client", "other")])), ..Default::default() };
        let s = with_labels(Some(&grant), &ours);
        assert!(!matches(&s, &labels(&[("app", "build"), ("dind.dev/client", "ci"), (INJECT_NAMESPACE_LABEL, "dind")])));
        let grant = LabelSelector { match_labels: Some(labels(&[("app", "build")])), ..Default::default() };
        let s = with_labels(Some(&grant), &ours);
        assert!(matches(&s, &labels(&[("app", "build"), ("dind.dev/client", "ci"), (INJECT_NAMESPACE_LABEL, "dind")])));
        assert!(!matches(&s, &labels(&[("app", "build"), ("dind.dev/client", "ci")])));
    }

    #[test]
    fn pods_of_other_namespaces_always_get_their_own_certificate_and_own_ones_by_choice() {
        let shared: DindDaemonSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let per_pod_spec: DindDaemonSpec = serde_json::from_value(serde_json::json!({"tls": {"clientCertificates": "PerPod"}})).unwrap();
        assert!(!per_pod(&shared, "dind", "dind"), "the default keeps the shared Secret in its own namespace");
        assert!(per_pod(&shared, "dind", "team-a"));
        assert!(per_pod(&per_pod_spec, "dind", "dind"));
        assert_eq!(shared.tls.client_certificate_lifetime_seconds, 3600);
    }

    #[test]
    fn a_certificate_does_not_outlive_the_pods_deadline() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(lifetime(3600, None, None, now), Duration::hours(1));
        let started = now - Duration::minutes(50);
        assert_eq!(lifetime(3600, Some(3600), Some(started), now), Duration::minutes(10));
        assert_eq!(lifetime(3600, Some(600), Some(started), now), Duration::minutes(1), "at least a minute");
        assert_eq!(lifetime(3600, Some(900), None, now), Duration::minutes(15), "not started yet: the whole deadline");
    }
}
