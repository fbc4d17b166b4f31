//! Helpers of the operator tests (`tests/tests/operator_*.rs`): DindDaemons made from JSON,
//! waiting for the objects the operator owns, reading Secrets and claims.

use std::time::Duration;

use dind_operator::crd::DindDaemon;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::eventually;

/// How long a test waits for the operator to do something.
pub const WAIT: Duration = Duration::from_secs(60);

/// A node selector no node matches: pods stay unscheduled, their status the test's to set.
pub fn no_node() -> Value {
    json!({"dind.dev/test": "no-kubelet"})
}

pub fn daemon(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name}, "spec": spec})
}

pub async fn create(client: &Client, ns: &str, name: &str, spec: Value) -> anyhow::Result<DindDaemon> {
    let api: Api<DindDaemon> = Api::namespaced(client.clone(), ns);
    let obj: DindDaemon = serde_json::from_value(daemon(name, spec))?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Waits until the operator has applied every owned object of `name`.
pub async fn owned_objects(client: &Client, ns: &str, name: &str) -> anyhow::Result<StatefulSet> {
    let c = client.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    eventually("owned objects applied", WAIT, move || {
        let (c, ns, name) = (c.clone(), ns.clone(), name.clone());
        async move {
            let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns).get_opt(&name).await?;
            let svc = Api::<Service>::namespaced(c.clone(), &ns).get_opt(&format!("{name}-daemons")).await?;
            let np = Api::<NetworkPolicy>::namespaced(c.clone(), &ns).get_opt(&name).await?;
            let client_secret = Api::<Secret>::namespaced(c.clone(), &ns).get_opt(&format!("{name}-client")).await?;
            Ok(match (sts, svc, np, client_secret) {
                (Some(sts), Some(_), Some(_), Some(_)) => Some(sts),
                _ => None,
            })
        }
    })
    .await
}

pub fn secret_text(s: &Secret, key: &str) -> String {
    s.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default()
}

pub async fn pvc_names(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}

/// Sets a pod's Ready condition as a kubelet would (there is no kubelet without the node).
pub async fn mark_pod_ready(client: &Client, ns: &str, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // The EndpointSlice controller routes only to pods on a node with an IP, and a daemon is
    // Ready only once its Service routes to it. So the pod is bound (as the scheduler would) to
    // a Node object no kubelet serves, tainted so nothing else lands there, and given an IP on
    // the harness's own pod network (never dialled: the tests run the operator with
    // --query-daemons=false).
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    if nodes.get_opt(NO_KUBELET_NODE).await?.is_none() {
        let node = json!({"metadata": {"name": NO_KUBELET_NODE, "labels": no_node()},
                          "spec": {"taints": [{"key": "dind.dev/no-kubelet", "effect": "NoSchedule"}]}});
        match nodes.create(&PostParams::default(), &serde_json::from_value(node)?).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if pods.get(pod).await?.spec.and_then(|s| s.node_name).is_none() {
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": NO_KUBELET_NODE}});
        let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{pod}/binding"))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&binding)?)?;
        client.request_text(req).await?;
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.254", "podIPs": [{"ip": "10.244.0.254"}], "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
    ]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

/// A Node object that no kubelet serves (see [`mark_pod_ready`]).
pub const NO_KUBELET_NODE: &str = "dind-test-no-kubelet";

/// Waits until DindDaemon `name` has a condition that `want` accepts, and returns it.
pub async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    limit: Duration,
    want: fn(&Condition) -> bool,
) -> anyhow::Result<Condition> {
    let api: Api<DindDaemon> = Api::namespaced(client.clone(), ns);
    eventually(what, limit, || {
        let api = api.clone();
        async move {
            let st = api.get(name).await?.status.unwrap_or_default();
            Ok(st.conditions.into_iter().find(want))
        }
    })
    .await
}

/// Waits until the StatefulSet has made pod `name`.
pub async fn pod_created(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(&format!("the StatefulSet made {name}"), WAIT, || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt(name).await?.map(|_| ())) }
    })
    .await
}
