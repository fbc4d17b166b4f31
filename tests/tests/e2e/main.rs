//! End to end on the harness's real node: the operator installed from the Helm chart runs in
//! the cluster; `kubectl apply -f examples/dinddaemon.yaml` gives a daemon that a build pod uses
//! over mutual TLS; its cache survives restarts; fault drills end with a working daemon.
//!
//! These tests pause the apiserver in one drill, so tests/run.sh runs them on their own,
//! one at a time, after the rest (`cargo test -p dind-tests --test e2e -- --test-threads 1`).

// One file per area; the helpers they share are below.
mod cache;
mod clients;
mod grants;
mod pool;
mod recipes;
mod registry;
mod sidecar;
mod tenant;
mod webhook_ha;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use dind_operator::crd::DindDaemon;
use dind_tests::pods::{CLIENT_IMAGE, hand_wired_build_pod, injected_build_pod};
use dind_tests::{chart_source, cluster_dir, eventually, kubectl_apply, run_tool, suffix, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
/// A daemon image of the platform team's own that does not say where it carries dind-init (as
/// docker:<ver>-dind would not): the stand-in (Docker 28.5 built from Go modules) by another
/// name than the chart's default (dind-daemon:<version>, the same image), so dind-init is copied in.
const OWN_DAEMON_IMAGE: &str = "dind-daemon:test";
const READY: Duration = Duration::from_secs(300);

fn require_node() {
    assert!(
        cluster_dir().join("node.up").exists(),
        "the harness has no node: start it with tests/cluster/cluster.sh up (DIND_NODE=1, the default)"
    );
}

async fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    run_tool("kubectl", args).await
}

/// Installs the operator from the chart into `ns`, watching `ns`, and waits for it to be ready.
async fn install_operator(client: &Client, ns: &str) -> anyhow::Result<()> {
    install_operator_watching(client, ns, ns).await
}

/// Installs the operator from the chart into `ns`, watching `watched`.
async fn install_operator_watching(client: &Client, ns: &str, watched: &str) -> anyhow::Result<()> {
    install_operator_with(client, ns, watched, &[]).await
}

/// Installs the operator from the chart into `ns`, watching `watched`, with more `--set`s.
async fn install_operator_with(client: &Client, ns: &str, watched: &str, sets: &[&str]) -> anyhow::Result<()> {
    // The chart's images from the harness registry, pulled by tag: the operator's, and the
    // default daemon image (REGISTRY/dind-daemon:<version>) and dind-init beside it. In CI, the
    // chart and images the release workflow published there (chart_source).
    let watch = format!("watchNamespaces={{{watched}}}");
    let chart = chart_source()?;
    // The webhook answers only the apiserver (its client certificate, of the harness's CA), as a
    // platform team that configures its apiserver sets it up.
    let (ca, _, _) = dind_tests::webhook_client_ca()?;
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "webhook-client-ca"}, "stringData": {"ca.crt": ca}}))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns).create(&Default::default(), &secret).await?;
    let mut args = vec!["install", "op"];
    args.extend(chart.iter().map(String::as_str));
    args.extend([
        "-n",
        ns,
        "--set",
        &watch,
        "--set",
        "logFormat=text",
        "--set",
        "webhook.clientAuth.caSecret=webhook-client-ca",
        "--wait",
        "--timeout",
        "180s",
    ]);
    for set in sets {
        args.extend(["--set", set]);
    }
    run_tool("helm", &args).await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deploys.get("op-dind-operator").await?;
    let want = d.spec.as_ref().and_then(|s| s.replicas);
    ensure!(d.status.and_then(|s| s.ready_replicas) == want, "operator not ready ({want:?} replicas wanted)");
    Ok(())
}

async fn wait_ready(ns: &str, name: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    kubectl(&["wait", "-n", ns, "--for=condition=Ready", &format!("dind/{name}"), &format!("--timeout={}s", READY.as_secs())]).await?;
    Ok(start.elapsed())
}

/// Waits until the daemon container's arguments in StatefulSet `name` contain `needle`.
async fn wait_for_sts_args(what: &str, ns: &str, name: &str, needle: &str) -> anyhow::Result<()> {
    eventually(what, READY, || async move {
        let args = kubectl(&["get", "statefulset", "-n", ns, name, "-o", "jsonpath={.spec.template.spec.containers[0].args}"]).await?;
        Ok(args.contains(needle).then_some(()))
    })
    .await
}

/// Runs the example's build, wired by hand (the operator runs in `ns` itself, where the webhook
/// does not inject), to completion; returns its log and how long it ran.
async fn run_build(client: &Client, ns: &str, pod: &str, daemon: &str) -> anyhow::Result<(String, Duration)> {
    run_pod(client, ns, pod, &hand_wired_build_pod(pod, daemon)).await
}

/// Waits (up to [`READY`]) until pod `name` of `ns` has ended: its phase, Succeeded or Failed.
async fn pod_ended(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(&format!("pod {name} ended"), READY, || {
        let pods = pods.clone();
        async move { Ok(pods.get(name).await?.status.and_then(|s| s.phase).filter(|ph| ph == "Succeeded" || ph == "Failed")) }
    })
    .await
}

/// Applies a pod manifest and waits for it to end; its log (container `build`) and run time.
async fn run_pod(client: &Client, ns: &str, pod: &str, manifest: &str) -> anyhow::Result<(String, Duration)> {
    kubectl_apply(ns, manifest).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let phase = pod_ended(client, ns, pod).await?;
    let logs = kubectl(&["logs", "-n", ns, pod, "-c", "build"]).await.unwrap_or_default();
    let p = pods.get(pod).await?;
    let term = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .context("terminated state")?;
    let ran = match (term.started_at, term.finished_at) {
        (Some(a), Some(b)) => Duration::from_secs_f64((b.0.as_millisecond() - a.0.as_millisecond()).max(0) as f64 / 1000.0),
        _ => Duration::ZERO,
    };
    ensure!(phase == "Succeeded", "build pod {pod} {phase}:\n{logs}");
    Ok((logs, ran))
}

/// The pod of Job `job`.
async fn job_pod(client: &Client, ns: &str, job: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await?;
    list.items.into_iter().next().with_context(|| format!("the pod of Job {job}"))
}

fn cached_steps(log: &str) -> usize {
    log.lines().filter(|l| l.contains("Using cache") || l.contains("CACHED")).count()
}

/// The containerd id of a pod's first container.
async fn container_id(client: &Client, ns: &str, pod: &str) -> anyhow::Result<String> {
    let p = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?;
    let id = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == "dockerd"))
        .and_then(|c| c.container_id)
        .context("container id")?;
    Ok(id.trim_start_matches("containerd://").to_string())
}

/// The node's `ctr` (containerd 2's, from tests/engine/build.sh, as cluster.sh recorded it).
fn ctr(args: &[&str]) -> anyhow::Result<String> {
    let engine = std::fs::read_to_string(cluster_dir().join("engine")).context("the node's engine directory")?;
    let out = std::process::Command::new(std::path::Path::new(engine.trim()).join("node/ctr"))
        .env("CONTAINERD_ADDRESS", "/run/dind-node/containerd.sock")
        .env("CONTAINERD_NAMESPACE", "k8s.io")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `body` with a second namespace, `NS-builds`, opted into injection, and the operator
/// installed from the chart into `ns` watching it (the operator's own namespace is never
/// injected); removes the second namespace afterwards, also on failure.
async fn with_builds_namespace<F, Fut>(client: &Client, ns: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    with_builds_namespace_set(client, ns, &[], body).await
}

/// [`with_builds_namespace`], the operator installed with more `--set`s.
async fn with_builds_namespace_set<F, Fut>(client: &Client, ns: &str, sets: &[&str], body: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let builds = format!("{ns}-builds");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": builds, "labels": {"dind.dev/injection": "enabled"}}}))?,
        )
        .await?;
    let outcome = async {
        install_operator_with(client, ns, &builds, sets).await?;
        body(builds.clone()).await
    }
    .await;
    let _ = namespaces.delete(&builds, &DeleteParams::background()).await;
    outcome
}
