//! Helpers of the injection-webhook tests: an operator process on this machine serving the
//! webhook on loopback, and a MutatingWebhookConfiguration (as the chart makes it) that sends the
//! real apiserver's admissions of one test namespace to it.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{Operator, eventually, free_local_addr};

/// Label of the configurations a test makes; `with_namespace` deletes them afterwards.
pub const TEST_NAMESPACE_LABEL: &str = "dind.dev/test-namespace";

/// A running operator with its webhook, and the configuration that points the apiserver at it.
#[derive(Debug)]
pub struct Webhook {
    pub operator: Operator,
    pub addr: SocketAddr,
    pub configuration: String,
}

/// Opts `ns` into injection, starts the operator (webhook on loopback, its Secret in `ns`) and
/// registers it; returns once the apiserver trusts it (caBundle set by the operator).
pub async fn start(client: &Client, ns: &str, extra: &[&str]) -> anyhow::Result<Webhook> {
    let addr = free_local_addr()?;
    let configuration = format!("dind-test-{ns}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"dind.dev/injection": "enabled"}}})))
        .await?;
    let operator = start_operator(ns, addr, &configuration, extra)?;
    register(client, ns, &configuration, &format!("https://{addr}/inject")).await?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually("caBundle set by the operator", Duration::from_secs(30), || {
        let api = api.clone();
        let configuration = configuration.clone();
        async move {
            let mwc = api.get(&configuration).await?;
            Ok(mwc.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.ca_bundle.clone()).map(|_| ()))
        }
    })
    .await?;
    Ok(Webhook { operator, addr, configuration })
}

fn start_operator(ns: &str, addr: SocketAddr, configuration: &str, extra: &[&str]) -> anyhow::Result<Operator> {
    let mut args = vec![
        "--webhook-addr".to_string(),
        addr.to_string(),
        "--webhook-host=127.0.0.1".to_string(),
        format!("--webhook-configuration={configuration}"),
        "--webhook-secret=webhook-tls".to_string(),
        format!("--lease-namespace={ns}"),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(ns, &arg_refs)
}

/// Starts the operator again on the same address (after `old` was killed or stopped).
pub async fn restart(_client: &Client, ns: &str, old: Webhook) -> anyhow::Result<Webhook> {
    let Webhook { mut operator, addr, configuration } = old;
    operator.kill();
    let operator = start_operator(ns, addr, &configuration, &[])?;
    Ok(Webhook { operator, addr, configuration })
}

/// The chart's MutatingWebhookConfiguration, for one namespace and a URL instead of a Service.
pub async fn register(client: &Client, ns: &str, configuration: &str, url: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration, "labels": {TEST_NAMESPACE_LABEL: ns}},
        "webhooks": [{
            "name": "inject.dind.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "clientConfig": {"url": url},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns, "dind.dev/injection": "enabled"}},
            "objectSelector": {"matchExpressions": [{"key": "dind.dev/inject", "operator": "Exists"}]},
        }, {
            "name": "sidecar.dind.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": 5,
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "clientConfig": {"url": url.replace("/inject", "/sidecar")},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns, "dind.dev/injection": "enabled"}},
            "objectSelector": {"matchExpressions": [{"key": "dind.dev/sidecar", "operator": "Exists"}]},
        }],
    }))?;
    api.create(&PostParams::default(), &mwc).await?;
    Ok(())
}

/// Deletes the configurations a test in `ns` made (they would otherwise outlive it).
pub async fn forget(client: &Client, ns: &str) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let selector = format!("{TEST_NAMESPACE_LABEL}={ns}");
    if let Err(e) = api.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector)).await {
        eprintln!("could not delete webhook configurations of {ns}: {e}");
    }
}

/// A pod that asks for DindDaemon `daemon` by label only (no node will run it here).
pub fn labelled_pod(name: &str, daemon: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"dind.dev/inject": daemon}},
        "spec": {"containers": [{"name": "build", "image": "dind-client:test", "command": ["docker", "version"]}],
                 "restartPolicy": "Never", "nodeSelector": crate::operator::no_node()},
    })
}

/// Creates `pod` in `ns`; the apiserver's answer (the admitted pod, or its refusal).
pub async fn create_pod(client: &Client, ns: &str, pod: &Value) -> Result<Pod, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod.clone()).map_err(kube::Error::SerdeError)?;
    pods.create(&PostParams::default(), &pod).await
}

/// A container's environment as (name, value) pairs.
pub fn env_of(pod: &Pod, container: &str) -> Vec<(String, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .filter(|c| c.name == container)
        .flat_map(|c| c.env.iter().flatten())
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}
