//! Benchmark on the harness's node: `kubectl apply` → Ready (median of N, split into phases),
//! and the example build cold vs warm after the daemon pod was recreated (as a ratio).
//! Needs the cluster with its node (tests/cluster/cluster.sh up) and the CRD applied.
//!
//!   cargo run --release -p dind-tests --bin bench-e2e [-- RUNS]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dind_tests::{client, kubectl_apply, run_tool, suffix};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dind-operator");

async fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    run_tool("kubectl", args).await
}

fn secs(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// Seconds between the pod's creation and each phase, from the pod's own status.
fn phases(pod: &Pod, log: &str) -> Option<Vec<(&'static str, f64)>> {
    let created = secs(pod.metadata.creation_timestamp.as_ref()?);
    let status = pod.status.as_ref()?;
    let cond = |t: &str| status.conditions.as_ref()?.iter().find(|c| c.type_ == t).and_then(|c| c.last_transition_time.as_ref()).map(secs);
    let init = status.init_container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()?;
    let main_started = status.container_statuses.as_ref()?.first()?.state.as_ref()?.running.as_ref()?.started_at.as_ref().map(secs)?;
    // dind-init logs its own steps and "dockerd listening ms=N" (N from its start), to the ms.
    let listening_ms: f64 = log.lines().find(|l| l.contains("dockerd listening"))?.split("ms=").nth(1)?.trim().parse().ok()?;
    let starting_ms: f64 =
        log.lines().filter(|l| l.contains("step=")).filter_map(|l| l.split("ms=").nth(1)?.trim().parse::<f64>().ok()).sum();
    Some(vec![
        ("scheduling", cond("PodScheduled")? - created),
        ("volume + sandbox", secs(init.started_at.as_ref()?) - cond("PodScheduled")?),
        ("init container", secs(init.finished_at.as_ref()?) - secs(init.started_at.as_ref()?)),
        ("container start", main_started - secs(init.finished_at.as_ref()?)),
        ("dind-init prepare", starting_ms / 1000.0),
        ("dockerd to listening", (listening_ms - starting_ms) / 1000.0),
        ("probe to Ready", cond("Ready")? - main_started - listening_ms / 1000.0),
    ])
}

/// Runs a build pod that times `docker build` with the container's /proc/uptime (10 ms steps).
async fn timed_build(ns: &str, pod: &str) -> anyhow::Result<f64> {
    let script = r#"for i in $(seq 30); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib 2>/dev/null | docker import - local/base >/dev/null
mkdir -p /tmp/app && cd /tmp/app && echo one > one.txt
printf 'FROM local/base\nCOPY one.txt /one.txt\nRUN echo two > /two.txt\nRUN sleep 3 && echo three > /three.txt\nRUN for i in $(seq 200000); do :; done\n' > Dockerfile
a=$(cut -d' ' -f1 /proc/uptime); docker build -q -t bench/app . >/dev/null; b=$(cut -d' ' -f1 /proc/uptime)
echo "BUILD $a $b""#;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {"dind.dev/client": "bench"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "b", "image": "dind-busybox:test", "imagePullPolicy": "Never",
            "env": [{"name": "DOCKER_HOST", "value": "tcp://bench:2376"}, {"name": "DOCKER_TLS_VERIFY", "value": "1"}, {"name": "DOCKER_CERT_PATH", "value": "/certs"}],
            "command": ["/bin/sh", "-ec", script],
            "volumeMounts": [{"name": "c", "mountPath": "/certs"}]}],
            "volumes": [{"name": "c", "secret": {"secretName": "bench-client"}}]}
    });
    kubectl_apply(ns, &manifest.to_string()).await?;
    kubectl(&["wait", "-n", ns, "--for=jsonpath={.status.phase}=Succeeded", &format!("pod/{pod}"), "--timeout=300s"]).await?;
    let log = kubectl(&["logs", "-n", ns, pod]).await?;
    let line = log.lines().find(|l| l.starts_with("BUILD ")).context("no BUILD line")?;
    let v: Vec<f64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    Ok(v[1] - v[0])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let client = client().await?;
    let ns = format!("bench-e2e-{}", suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    let watch = format!("watchNamespaces={{{ns}}}");
    let images = dind_tests::chart_image_sets();
    let mut args = vec!["install", "op", CHART, "-n", &ns, "--set", &watch, "--wait", "--timeout", "180s"];
    for set in &images {
        args.extend(["--set", set.as_str()]);
    }
    run_tool("helm", &args).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let mut totals = Vec::new();
    let mut split: Vec<Vec<(&str, f64)>> = Vec::new();
    // After Ready: how long until a TCP connection to the client Service is accepted (0 when
    // the first attempt is), i.e. whether Ready means a client can connect.
    let mut connect_after_ready = Vec::new();
    for i in 0..runs {
        let name = format!("r{i}");
        let dd = format!("apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {{name: {name}}}\nspec: {{storage: {{size: 1Gi}}}}\n");
        let start = Instant::now();
        kubectl_apply(&ns, &dd).await?;
        kubectl(&["wait", "-n", &ns, "--for=condition=Ready", &format!("dind/{name}"), "--timeout=300s"]).await?;
        totals.push(start.elapsed());
        let ip = kubectl(&["get", "svc", "-n", &ns, &name, "-o", "jsonpath={.spec.clusterIP}"]).await?;
        let ready_at = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let connect = tokio::net::TcpStream::connect((ip.trim(), 2376));
            if matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_))) {
                break;
            }
            anyhow::ensure!(ready_at.elapsed() < Duration::from_secs(30), "the Service of {name} never accepted a connection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connect_after_ready.push((if attempts == 1 { 0.0 } else { ready_at.elapsed().as_secs_f64() }, attempts));
        let pod = pods.get(&format!("{name}-0")).await?;
        let log = kubectl(&["logs", "-n", &ns, &format!("{name}-0")]).await?;
        if let Some(p) = phases(&pod, &log) {
            let total = totals.last().map_or(0.0, Duration::as_secs_f64);
            println!("run {i}: {total:.2} s = {}", p.iter().map(|(l, v)| format!("{l} {v:.2}")).collect::<Vec<_>>().join(", "));
            split.push(p);
        }
        kubectl(&["delete", "dind", "-n", &ns, &name, "--wait=false"]).await?;
    }
    totals.sort();
    println!(
        "apply -> Ready, {runs} runs: median {:.2} s, all {:?}",
        totals[runs / 2].as_secs_f64(),
        totals.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
    );
    println!(
        "first connection to the Service after Ready: {}",
        connect_after_ready.iter().map(|(t, n)| format!("{t:.2}s/{n} tries")).collect::<Vec<_>>().join(", ")
    );
    if let Some(first) = split.first() {
        println!("phases (median; k8s timestamps are whole seconds, dind-init's are ms):");
        for (idx, (label, _)) in first.iter().enumerate() {
            let mut v: Vec<f64> = split.iter().map(|p| p[idx].1).collect();
            v.sort_by(f64::total_cmp);
            println!("  {label:<22} {:>6.2} s", v[v.len() / 2]);
        }
    }

    // Cold vs warm build: the daemon pod is deleted and recreated between the two.
    let dd = "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: bench}\nspec: {storage: {size: 1Gi}}\n";
    kubectl_apply(&ns, dd).await?;
    kubectl(&["wait", "-n", &ns, "--for=condition=Ready", "dind/bench", "--timeout=300s"]).await?;
    let cold = timed_build(&ns, "cold").await?;
    let old = pods.get("bench-0").await?.metadata.uid;
    pods.delete("bench-0", &DeleteParams::default()).await?;
    let start = Instant::now();
    while pods.get_opt("bench-0").await?.is_none_or(|p| p.metadata.uid == old) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "bench-0 was not recreated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kubectl(&["wait", "-n", &ns, "--for=condition=Ready", "pod/bench-0", "--timeout=300s"]).await?;
    kubectl(&["wait", "-n", &ns, "--for=condition=Ready", "dind/bench", "--timeout=300s"]).await?;
    let warm = timed_build(&ns, "warm").await?;
    println!("docker build cold {cold:.2} s, warm after pod recreation {warm:.2} s, ratio {:.1}x (target >= 20x)", cold / warm.max(0.01));

    run_tool("helm", &["uninstall", "op", "-n", &ns]).await?;
    namespaces.delete(&ns, &DeleteParams::background()).await?;
    Ok(())
}
