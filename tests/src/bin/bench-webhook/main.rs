//! Benchmark of the injection webhook.
//!
//! 1. Admission latency: pods created at 50 per second for 10 s, labelled (through the webhook)
//!    and unlabelled (not sent to it), client-side create latency p50/p99 of each; the operator
//!    runs on this machine and serves the webhook on loopback. Control plane only.
//! 2. Pod create → first successful `docker version` inside it, the injected pod (one label; its
//!    init container waits for the daemon) vs the same pod wired by hand (env, certificates and a
//!    retry loop, 100 ms steps), median of RUNS each. Needs the node; the operator is installed
//!    from the chart. Times come from /proc/uptime (this machine is the node), 10 ms steps.
//! 3. The same for a pod with a daemon of its own (`Sidecar` mode), /var/lib/docker on a warm
//!    volume of the pool and in an emptyDir, vs the same pod with no Docker at all (the floor);
//!    and the emptyDir pod with a startup probe as its start gate instead of the postStart hook.
//! 4. The same `docker build` in consecutive sidecar pods on the pool: cold vs warm, a ratio;
//!    of a tiny Dockerfile and of a CI build (a Go service; needs Go at /usr/local/go on the node).
//!
//!   cargo build -p dind-operator && cargo run --release -p dind-tests --bin bench-webhook [-- RUNS]
//!   BENCH_PARTS=4 ... runs part 4 only (the digits of the parts to run; all by default)

mod builds;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dind_tests::operator::{create, no_node};
use dind_tests::pods::CLIENT_IMAGE;
use dind_tests::webhook::{self, labelled_pod};
use dind_tests::{client, cluster_dir, kubectl_apply, run_tool, suffix};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dind-operator");

fn uptime() -> anyhow::Result<f64> {
    Ok(std::fs::read_to_string("/proc/uptime")?.split_whitespace().next().context("uptime")?.parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn namespace(client: &Client, name: &str, labels: Value) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?).await?;
    Ok(())
}

async fn drop_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await;
}

/// Creates `count` pods at `rate` per second, each from `make(i)`; every create's latency.
async fn create_at_rate(
    client: &Client,
    ns: &str,
    count: usize,
    rate: f64,
    make: impl Fn(usize) -> Value,
) -> anyhow::Result<Vec<Duration>> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let ns = ns.to_string();
        let pod = make(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            webhook::create_pod(&client, &ns, &pod).await.map(|_| t.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    out.sort();
    Ok(out)
}

async fn admission_latency(client: &Client) -> anyhow::Result<()> {
    let ns = format!("bench-webhook-{}", suffix());
    namespace(client, &ns, json!({})).await?;
    let result = async {
        let hook = webhook::start(client, &ns, &[]).await?;
        create(client, &ns, "ci", json!({"replicas": 3, "nodeSelector": no_node()})).await?;
        // Warm up the connections.
        create_at_rate(client, &ns, 20, 50.0, |i| labelled_pod(&format!("warm-{i}"), "ci")).await?;
        // The handler's own time, from the operator's histogram: calls and seconds.
        let handled = || async {
            let m = |s: &'static str| hook.operator.metric(s);
            (m("dind_operator_webhook_admission_duration_seconds_count").await, m("dind_operator_webhook_admission_duration_seconds_sum").await)
        };
        let before = handled().await;
        let labelled = create_at_rate(client, &ns, 500, 50.0, |i| labelled_pod(&format!("l-{i}"), "ci")).await?;
        let after = handled().await;
        let plain = create_at_rate(client, &ns, 500, 50.0, |i| {
            let mut p = labelled_pod(&format!("u-{i}"), "ci");
            p["metadata"]["labels"] = json!({});
            p
        })
        .await?;
        println!("admission at 50 pods/s, 500 pods each (client-side pod create latency):");
        println!("  labelled (webhook)    p50 {:6.1} ms  p99 {:6.1} ms", percentile(&labelled, 0.5), percentile(&labelled, 0.99));
        println!("  unlabelled (no call)  p50 {:6.1} ms  p99 {:6.1} ms", percentile(&plain, 0.5), percentile(&plain, 0.99));
        println!(
            "  webhook cost          p50 {:+6.1} ms  p99 {:+6.1} ms",
            percentile(&labelled, 0.5) - percentile(&plain, 0.5),
            percentile(&labelled, 0.99) - percentile(&plain, 0.99)
        );
        if let ((Some(c0), Some(s0)), (Some(c1), Some(s1))) = (before, after) {
            println!(
                "  the webhook's own handling: {} calls for 500 pods, {:.1} ms per call on average (the rest is the apiserver's call to it)",
                c1 - c0,
                (s1 - s0) / (c1 - c0).max(1.0) * 1000.0
            );
        }
        anyhow::Ok(())
    }
    .await;
    webhook::forget(client, &ns).await;
    drop_namespace(client, &ns).await;
    result
}

/// Runs one pod whose container prints `UP <uptime>` right after its first successful
/// `docker version`; seconds from its creation to that line.
async fn first_docker_version(ns: &str, manifest: &Value, name: &str) -> anyhow::Result<f64> {
    let created = uptime()?;
    let log = run_to_success(ns, manifest, name, "180s").await?;
    let up: f64 = log.lines().find_map(|l| l.strip_prefix("UP ")).context("no UP line")?.trim().parse()?;
    if up - created > SLOW_START {
        explain_slow_start(ns, name, up - created).await;
    }
    run_tool("kubectl", &["delete", "pod", "-n", ns, name, "--wait=false"]).await?;
    Ok(up - created)
}

/// Creates pod `name` from `manifest`, waits up to `timeout` for it to succeed; the log of its
/// `build` container. The caller deletes it.
pub(crate) async fn run_to_success(ns: &str, manifest: &Value, name: &str, timeout: &str) -> anyhow::Result<String> {
    kubectl_apply(ns, &manifest.to_string()).await?;
    run_tool(
        "kubectl",
        &["wait", "-n", ns, "--for=jsonpath={.status.phase}=Succeeded", &format!("pod/{name}"), &format!("--timeout={timeout}")],
    )
    .await?;
    run_tool("kubectl", &["logs", "-n", ns, name, "-c", "build"]).await
}

/// A pod with a daemon of its own (labelled for the Sidecar DindDaemon `daemon`), its one
/// container `build` running `script` with today's clients.
pub(crate) fn sidecar_pod(name: &str, daemon: &str, script: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"dind.dev/sidecar": daemon}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-ec", script]}]}})
}

/// A start this much slower than the usual 1-3 s is explained where it happens (a warm-pool start
/// once took 14.6 s, and nothing was left to tell why).
const SLOW_START: f64 = 5.0;

/// Prints what the pod's containers went through (restarts, exit codes), dind-init's steps and
/// the end of the daemon's log, and the pod's events.
async fn explain_slow_start(ns: &str, name: &str, seconds: f64) {
    println!("  slow start of {ns}/{name}: {seconds:.2} s; its containers and the daemon's log:");
    let statuses = "{range .status.initContainerStatuses[*]}{.name} restarts={.restartCount} last={.lastState.terminated.reason}/{.lastState.terminated.exitCode} {end}";
    let pod = format!("pod/{name}");
    if let Ok(out) = run_tool("kubectl", &["get", "-n", ns, &pod, "-o", &format!("jsonpath={statuses}")]).await {
        println!("    {}", out.trim());
    }
    for previous in ["--previous=true", "--previous=false"] {
        if let Ok(out) = run_tool("kubectl", &["logs", "-n", ns, name, "-c", "dind-daemon", "--timestamps", previous]).await {
            // dind-init's own steps (dockerd's logrus lines carry `time="`), then the log's end.
            let lines: Vec<&str> = out.lines().collect();
            let tail = lines.len().saturating_sub(5);
            for (i, line) in lines.iter().enumerate() {
                if i >= tail || !line.contains("time=\"") {
                    println!("    {previous}: {line}");
                }
            }
        }
    }
    if let Ok(out) = run_tool("kubectl", &["events", "-n", ns, "--for", &pod]).await {
        for line in out.lines() {
            println!("    {line}");
        }
    }
}

async fn time_to_docker(client: &Client, runs: usize, parts: &str) -> anyhow::Result<()> {
    anyhow::ensure!(cluster_dir().join("node.up").exists(), "part 2 needs the node (tests/cluster/cluster.sh up)");
    let ns = format!("bench-webhook-op-{}", suffix());
    let builds = format!("{ns}-builds");
    namespace(client, &ns, json!({})).await?;
    namespace(client, &builds, json!({"dind.dev/injection": "enabled"})).await?;
    let result = async {
        let watch = format!("watchNamespaces={{{builds}}}");
        // The chart's images, pulled by tag from the harness registry.
        let images = dind_tests::chart_image_sets();
        let mut args = vec!["install", "op", CHART, "-n", &ns, "--wait", "--timeout", "180s", "--set", &watch];
        for set in &images {
            args.extend(["--set", set.as_str()]);
        }
        run_tool("helm", &args).await?;
        kubectl_apply(&builds, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: ci}\nspec: {storage: {size: 1Gi}}\n")
            .await?;
        run_tool("kubectl", &["wait", "-n", &builds, "--for=condition=Ready", "dind/ci", "--timeout=300s"]).await?;
        let report = "echo UP $(cut -d' ' -f1 /proc/uptime)";
        if parts.contains('2') {
        let (mut injected, mut by_hand) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let name = format!("injected-{i}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"dind.dev/inject": "ci"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-ec", format!("docker version >/dev/null; {report}")]}]}});
            injected.push(first_docker_version(&builds, &pod, &name).await?);
            let name = format!("by-hand-{i}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"dind.dev/client": "ci"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "env": [{"name": "DOCKER_HOST", "value": "tcp://ci:2376"}, {"name": "DOCKER_TLS_VERIFY", "value": "1"},
                            {"name": "DOCKER_CERT_PATH", "value": "/certs"}],
                    "volumeMounts": [{"name": "c", "mountPath": "/certs"}],
                    "command": ["/bin/sh", "-ec", format!("until docker version >/dev/null 2>&1; do sleep 0.1; done; {report}")]}],
                    "volumes": [{"name": "c", "secret": {"secretName": "ci-client"}}]}});
            by_hand.push(first_docker_version(&builds, &pod, &name).await?);
            println!("run {i}: injected {:.2} s, by hand {:.2} s", injected[i], by_hand[i]);
        }
        injected.sort_by(f64::total_cmp);
        by_hand.sort_by(f64::total_cmp);
        let (a, b) = (injected[runs / 2], by_hand[runs / 2]);
        println!(
            "pod create -> first successful docker version, median of {runs}: injected {a:.2} s, by hand {b:.2} s, ratio {:.2}",
            a / b
        );

        }
        if parts.contains('3') {
        // 3. A daemon of the pod's own: with a warm volume of the pool, with an emptyDir, and
        //    the same pod with no Docker at all (the floor). The chart's default daemon image
        //    carries dind-init, so no install container runs first.
        kubectl_apply(&builds, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: job}\nspec: {mode: Sidecar, storage: {size: 2Gi}}\n").await?;
        kubectl_apply(&builds, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: warm}\nspec: {mode: Sidecar, volumePool: {size: 1}, storage: {size: 2Gi}}\n").await?;
        // The same two with an image of one's own that does not carry dind-init (as
        // docker:<ver>-dind does not; the stand-in by its other tag): copied in first.
        let own = "image: dind-daemon:test";
        kubectl_apply(&builds, &format!("apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {{name: copy}}\nspec: {{mode: Sidecar, storage: {{size: 2Gi}}, {own}}}\n")).await?;
        kubectl_apply(&builds, &format!("apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {{name: copywarm}}\nspec: {{mode: Sidecar, volumePool: {{size: 1}}, storage: {{size: 2Gi}}, {own}}}\n")).await?;
        for d in ["job", "warm", "copy", "copywarm"] {
            run_tool("kubectl", &["wait", "-n", &builds, "--for=condition=Ready", &format!("dind/{d}"), "--timeout=60s"]).await?;
        }
        let (mut warm, mut empty, mut floor, mut probed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut copy_warm, mut copy_empty) = (Vec::new(), Vec::new());
        for i in 0..runs {
            wait_for_free_volume(&builds, "warm-cache-0").await?;
            let name = format!("warm-{i}");
            warm.push(first_docker_version(&builds, &sidecar_pod(&name, "warm", &format!("docker version >/dev/null; {report}")), &name).await?);
            let name = format!("sidecar-{i}");
            empty.push(first_docker_version(&builds, &sidecar_pod(&name, "job", &format!("docker version >/dev/null; {report}")), &name).await?);
            wait_for_free_volume(&builds, "copywarm-cache-0").await?;
            let name = format!("copywarm-{i}");
            copy_warm.push(first_docker_version(&builds, &sidecar_pod(&name, "copywarm", &format!("docker version >/dev/null; {report}")), &name).await?);
            let name = format!("copy-{i}");
            copy_empty.push(first_docker_version(&builds, &sidecar_pod(&name, "copy", &format!("docker version >/dev/null; {report}")), &name).await?);
            let name = format!("floor-{i}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-ec", report]}]}});
            floor.push(first_docker_version(&builds, &pod, &name).await?);
            // The other start gate the kubelet offers: the same injected pod (from a dry run),
            // its postStart swapped for a startup probe asked every second.
            let name = format!("probed-{i}");
            let pod = with_startup_probe(client, &builds, &sidecar_pod(&name, "job", &format!("docker version >/dev/null; {report}"))).await?;
            probed.push(first_docker_version(&builds, &pod, &name).await?);
            println!(
                "run {i}: sidecar (warm pool volume) {:.2} s, sidecar (emptyDir) {:.2} s, dind-init copied in: warm {:.2} s, emptyDir {:.2} s; \
                 no Docker (floor) {:.2} s, emptyDir with a startup probe instead of postStart {:.2} s",
                warm[i], empty[i], copy_warm[i], copy_empty[i], floor[i], probed[i]
            );
        }
        for v in [&mut warm, &mut empty, &mut floor, &mut probed, &mut copy_warm, &mut copy_empty] {
            v.sort_by(f64::total_cmp);
        }
        let (w, e, f, p) = (warm[runs / 2], empty[runs / 2], floor[runs / 2], probed[runs / 2]);
        let (cw, ce) = (copy_warm[runs / 2], copy_empty[runs / 2]);
        println!(
            "pod create -> first docker version, median of {runs}: sidecar warm volume {w:.2} s ({:+.2} s over the floor), emptyDir {e:.2} s ({:+.2} s), no Docker {f:.2} s (target <= +1.5 s)",
            w - f,
            e - f
        );
        println!(
            "  with an image of one's own without dind-init (an install container copies it in first): warm volume {cw:.2} s ({:+.2} s over the floor), emptyDir {ce:.2} s ({:+.2} s)",
            cw - f,
            ce - f
        );
        println!("start gate, emptyDir sidecar: postStart (dind-init wait) {e:.2} s, startup probe (period 1 s) {p:.2} s, postStart faster by {:+.2} s", p - e);
        }

        if parts.contains('4') {
            builds::cold_vs_warm(&builds).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = run_tool("helm", &["uninstall", "op", "-n", &ns]).await;
    drop_namespace(client, &builds).await;
    drop_namespace(client, &ns).await;
    result
}

/// `pod` as the sidecar webhook makes it (a server-side dry run), unlabelled (so created as it
/// is), with the daemon's postStart gate replaced by a startup probe (period 1 s, the least).
async fn with_startup_probe(client: &Client, ns: &str, pod: &Value) -> anyhow::Result<Value> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let made = api.create(&PostParams { dry_run: true, ..Default::default() }, &serde_json::from_value(pod.clone())?).await?;
    let mut out = serde_json::to_value(made)?;
    out["metadata"] = json!({"name": pod["metadata"]["name"]});
    if let Some(status) = out.as_object_mut() {
        status.remove("status");
    }
    let inits = out["spec"]["initContainers"].as_array_mut().context("no init containers: not injected")?;
    let daemon = inits.iter_mut().find(|c| c["name"] == "dind-daemon").context("no dind-daemon")?;
    let gate = daemon["lifecycle"]["postStart"]["exec"]["command"].clone();
    anyhow::ensure!(gate[1] == "wait", "unexpected gate {gate}");
    daemon.as_object_mut().context("container")?.remove("lifecycle");
    daemon["startupProbe"] = json!({"exec": {"command": [gate[0].clone(), "probe", "--timeout-ms=1000"]},
        "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 120});
    Ok(out)
}

/// Waits until the pool claim `claim` is leased to nobody (the last pod's lease has ended).
pub(crate) async fn wait_for_free_volume(ns: &str, claim: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let lease =
            run_tool("kubectl", &["get", "pvc", "-n", ns, claim, "-o", "jsonpath={.metadata.annotations.dind\\.dev/lease}"]).await?;
        if lease.trim().is_empty() {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "{claim} stays leased ({lease})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dind_tests::install_crypto_provider();
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let client = client().await?;
    // BENCH_PARTS=34 runs parts 3 and 4 only (all four by default).
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "1234".into());
    if parts.contains('1') {
        admission_latency(&client).await?;
    }
    if parts.contains(|c| "234".contains(c)) {
        time_to_docker(&client, runs, &parts).await?;
    }
    Ok(())
}
