//! End to end on the harness's real node: the operator installed from the Helm chart runs in
//! the cluster; `kubectl apply -f examples/dinddaemon.yaml` gives a daemon that a build pod uses
//! over mutual TLS; its cache survives restarts; fault drills end with a working daemon.
//!
//! These tests pause the apiserver in one drill, so tests/run.sh runs them on their own,
//! one at a time, after the rest (`cargo test -p dind-tests --test e2e -- --test-threads 1`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use dind_operator::crd::DindDaemon;
use dind_tests::pods::{CLIENT_IMAGE, hand_wired_build_pod, injected_build_pod};
use dind_tests::{cluster_dir, eventually, kubectl_apply, run_tool, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dind-operator");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
/// The daemon image here: the stand-in built from Debian's dockerd (no registry to pull from).
const DAEMON_IMAGE: &str = "dind-daemon:test";
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
    let watch = format!("watchNamespaces={{{watched}}}");
    let image = format!("daemon.image={DAEMON_IMAGE}");
    let mut args = vec![
        "install",
        "op",
        CHART,
        "-n",
        ns,
        "--set",
        &watch,
        "--set",
        &image,
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout",
        "180s",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    run_tool("helm", &args).await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deploys.get("op-dind-operator").await?;
    ensure!(d.status.and_then(|s| s.ready_replicas) == Some(1), "operator not ready");
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

/// Applies a pod manifest and waits for it to end; its log (container `build`) and run time.
async fn run_pod(client: &Client, ns: &str, pod: &str, manifest: &str) -> anyhow::Result<(String, Duration)> {
    kubectl_apply(ns, manifest).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let phase = eventually("build pod finished", READY, || {
        let pods = pods.clone();
        let pod = pod.to_string();
        async move {
            let p = pods.get(&pod).await?;
            Ok(p.status.and_then(|s| s.phase).filter(|ph| ph == "Succeeded" || ph == "Failed"))
        }
    })
    .await?;
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

fn ctr(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("ctr")
        .env("CONTAINERD_ADDRESS", "/run/dind-node/containerd.sock")
        .env("CONTAINERD_NAMESPACE", "k8s.io")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn e2e_apply_ready_build_cache_and_refusal() {
    require_node();
    with_namespace("e2e-build", |client: Client, ns: String| async move {
        install_operator(&client, &ns).await?;
        kubectl(&["apply", "-n", &ns, "-f", &format!("{EXAMPLES}/dinddaemon.yaml")]).await?;
        let took = wait_ready(&ns, "ci").await?;
        eprintln!("apply -> Ready: {took:?}");

        let dd = Api::<DindDaemon>::namespaced(client.clone(), &ns).get("ci").await?;
        let status = dd.status.context("status")?;
        ensure!(status.docker_host.as_deref() == Some(&*format!("tcp://ci.{ns}.svc:2376")), "{status:?}");
        ensure!(status.client_secret_name.as_deref() == Some("ci-client"));
        let driver = eventually("driver reported", Duration::from_secs(60), || {
            let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
            async move { Ok(api.get("ci").await?.status.and_then(|s| s.storage_driver)) }
        })
        .await?;
        ensure!(driver == "overlay2", "driver {driver}");
        let table = kubectl(&["get", "dind", "-n", &ns]).await?;
        let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        ensure!(row.len() >= 5 && row[1] == "1/1" && row[2].starts_with("tcp://ci.") && row[3] == "overlay2", "{table}");

        // Privileged mode works through CRI on this node.
        let pod = Api::<Pod>::namespaced(client.clone(), &ns).get("ci-0").await?;
        let privileged = pod.spec.context("spec")?.containers[0].security_context.clone().and_then(|s| s.privileged);
        ensure!(privileged == Some(true), "the e2e daemon should run in the default Privileged mode");

        let (cold, cold_time) = run_build(&client, &ns, "build-1", "ci").await?;
        ensure!(cold.contains("one\ntwo\nthree"), "build output:\n{cold}");

        // A pod without the client certificate is refused by the daemon: it trusts the daemon's
        // CA (so the failure is not its own), but has no certificate to show.
        let refused = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: no-cert, labels: {{dind.dev/client: ci}}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {CLIENT_IMAGE}\n    imagePullPolicy: Never\n    env: [{{name: DOCKER_CERT_PATH, value: /nowhere}}]\n    command: [docker, -H, 'tcp://ci:2376', --tlsverify, --tlscacert, /ca/ca.pem, version]\n    volumeMounts: [{{name: ca, mountPath: /ca}}]\n  volumes: [{{name: ca, secret: {{secretName: ci-client, items: [{{key: ca.pem, path: ca.pem}}]}}}}]\n"
        );
        kubectl_apply(&ns, &refused).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let phase = eventually("no-cert pod finished", READY, || {
            let pods = pods.clone();
            async move { Ok(pods.get("no-cert").await?.status.and_then(|s| s.phase).filter(|p| p == "Succeeded" || p == "Failed")) }
        })
        .await?;
        let logs = kubectl(&["logs", "-n", &ns, "no-cert"]).await.unwrap_or_default();
        ensure!(phase == "Failed", "a client without a certificate got through:\n{logs}");
        ensure!(logs.contains("certificate") && !logs.contains("no such file"), "the daemon, not the client, should refuse:\n{logs}");

        // Cache: the daemon pod is recreated; the same build is all cache.
        pods.delete("ci-0", &DeleteParams::default()).await?;
        eventually("ci-0 recreated", READY, || {
            let pods = pods.clone();
            async move {
                let p = pods.get_opt("ci-0").await?;
                Ok(p.filter(|p| p.metadata.deletion_timestamp.is_none()).map(|_| ()))
            }
        })
        .await?;
        wait_ready(&ns, "ci").await?;
        let (warm, warm_time) = run_build(&client, &ns, "build-2", "ci").await?;
        ensure!(warm.contains("one\ntwo\nthree"), "{warm}");
        let steps = cached_steps(&warm);
        ensure!(steps >= 3, "expected every step cached after the restart, {steps} were:\n{warm}");
        eprintln!("BENCH build cold {cold_time:?} warm {warm_time:?} ratio {:.1}", cold_time.as_secs_f64() / warm_time.as_secs_f64().max(0.001));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn e2e_drills_end_with_a_working_daemon() {
    require_node();
    with_namespace("e2e-drills", |client: Client, ns: String| async move {
        install_operator(&client, &ns).await?;
        kubectl(&["apply", "-n", &ns, "-f", &format!("{EXAMPLES}/dinddaemon.yaml")]).await?;
        wait_ready(&ns, "ci").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        // 1. SIGKILL the daemon container in the middle of a build, then build again.
        kubectl_apply(&ns, &hand_wired_build_pod("build-killed", "ci")).await?;
        eventually("build under way", READY, || {
            let ns = ns.clone();
            async move {
                Ok(kubectl(&["logs", "-n", &ns, "build-killed"])
                    .await
                    .ok()
                    .filter(|l| l.contains("Step 3") || l.contains("RUN echo two"))
                    .map(|_| ()))
            }
        })
        .await?;
        let id = container_id(&client, &ns, "ci-0").await?;
        ctr(&["tasks", "kill", "-s", "SIGKILL", &id])?;
        eventually("daemon restarted", READY, || {
            let pods = pods.clone();
            async move {
                let p = pods.get("ci-0").await?;
                let restarts =
                    p.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next()).map_or(0, |c| c.restart_count);
                Ok((restarts >= 1).then_some(()))
            }
        })
        .await?;
        wait_ready(&ns, "ci").await?;
        let (out, _) = run_build(&client, &ns, "build-after-kill", "ci").await?;
        ensure!(out.contains("one\ntwo\nthree"), "{out}");

        // 2. A second daemon pod on the same volume is refused; the first keeps serving and the
        //    DindDaemon is Degraded, naming it.
        let sts = kubectl(&["get", "statefulset", "-n", &ns, "ci", "-o", "json"]).await?;
        let sts: serde_json::Value = serde_json::from_str(&sts)?;
        let mut spec = sts["spec"]["template"]["spec"].clone();
        spec["volumes"]
            .as_array_mut()
            .context("volumes")?
            .push(json!({"name": "docker", "persistentVolumeClaim": {"claimName": "docker-ci-0"}}));
        for field in ["readinessProbe", "startupProbe", "livenessProbe", "lifecycle"] {
            spec["containers"][0].as_object_mut().context("container")?.remove(field);
        }
        let intruder = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder"}, "spec": spec});
        kubectl_apply(&ns, &serde_json::to_string(&intruder)?).await?;
        let message = eventually("intruder refused with the lock message", READY, || {
            let pods = pods.clone();
            async move {
                let p = pods.get("intruder").await?;
                let msg = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c.into_iter().next())
                    .and_then(|c| c.last_state.and_then(|s| s.terminated).or(c.state.and_then(|s| s.terminated)))
                    .and_then(|t| t.message);
                Ok(msg.filter(|m| m.contains("in use by another daemon")))
            }
        })
        .await?;
        ensure!(message.contains("host ci-0"), "the lock message should name the holder: {message}");
        let degraded = dind_tests::operator::condition(&client, &ns, "ci", "Degraded names the intruder", READY, |c| {
            c.type_ == "Degraded" && c.status == "True" && c.message.contains("intruder")
        })
        .await?;
        ensure!(degraded.reason == "VolumeInUse", "{degraded:?}");
        let (out, _) = run_build(&client, &ns, "build-with-intruder", "ci").await?;
        ensure!(out.contains("one\ntwo\nthree"), "the first daemon stopped serving:\n{out}");
        pods.delete("intruder", &DeleteParams::default().grace_period(0)).await?;

        // 3. The operator pod deleted in the middle of a reconcile.
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"daemon": {"registryMirrors": ["https://mirror.drill.test"]}}})),
        )
        .await?;
        let op_pods = pods.list(&ListParams::default().labels("app.kubernetes.io/name=dind-operator")).await?;
        for p in op_pods {
            pods.delete(&p.name_any(), &DeleteParams::default().grace_period(0)).await?;
        }
        wait_for_sts_args("mirror rolled out after the operator came back", &ns, "ci", "mirror.drill.test").await?;
        wait_ready(&ns, "ci").await?;

        // 4. The apiserver stopped for 30 s (SIGSTOP): the operator recovers and reconciles again.
        let pid: i32 = std::fs::read_to_string(cluster_dir().join("pids/kube-apiserver"))?.trim().parse()?;
        let stop = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?;
        ensure!(stop.success());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let cont = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status()?;
        ensure!(cont.success());
        api.patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"daemon": {"registryMirrors": ["https://mirror.after-outage.test"]}}})),
        )
        .await?;
        wait_for_sts_args("operator reconciles after the outage", &ns, "ci", "mirror.after-outage.test").await?;
        wait_ready(&ns, "ci").await?;
        let (out, _) = run_build(&client, &ns, "build-final", "ci").await?;
        ensure!(out.contains("one\ntwo\nthree"), "{out}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn e2e_delete_removes_everything_and_a_retained_volume_keeps_the_cache() {
    require_node();
    with_namespace("e2e-delete", |client: Client, ns: String| async move {
        install_operator(&client, &ns).await?;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let keep = |name: &str| json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name}, "spec": {"storage": {"retainOnDelete": true}}});
        kubectl_apply(&ns, &serde_json::to_string(&keep("ci"))?).await?;
        wait_ready(&ns, "ci").await?;
        run_build(&client, &ns, "build-1", "ci").await?;
        api.delete("ci", &DeleteParams::foreground()).await?;
        eventually("DindDaemon and its objects gone", READY, || {
            let ns = ns.clone();
            async move {
                let left = kubectl(&["get", "statefulset,service,secret,networkpolicy,pod", "-n", &ns, "-l", "dind.dev/daemon=ci", "-o", "name"]).await?;
                Ok(left.trim().is_empty().then_some(()))
            }
        })
        .await?;
        ensure!(pvcs.get_opt("docker-ci-0").await?.is_some(), "retainOnDelete: the volume should stay");
        kubectl_apply(&ns, &serde_json::to_string(&keep("ci"))?).await?;
        wait_ready(&ns, "ci").await?;
        let (warm, _) = run_build(&client, &ns, "build-2", "ci").await?;
        ensure!(cached_steps(&warm) >= 3, "the recreated daemon did not reuse the kept cache:\n{warm}");

        // Without retainOnDelete, deleting takes the volume too.
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"storage": {"retainOnDelete": false}}}))).await?;
        eventually("retention policy updated", READY, || {
            let ns = ns.clone();
            async move {
                let p = kubectl(&["get", "statefulset", "-n", &ns, "ci", "-o", "jsonpath={.spec.persistentVolumeClaimRetentionPolicy.whenDeleted}"]).await?;
                Ok((p == "Delete").then_some(()))
            }
        })
        .await?;
        api.delete("ci", &DeleteParams::foreground()).await?;
        eventually("volume deleted with the DindDaemon", READY, || {
            let pvcs = pvcs.clone();
            async move { Ok(pvcs.get_opt("docker-ci-0").await?.is_none().then_some(())) }
        })
        .await?;
        Ok(())
    })
    .await;
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

/// What a pod with only the label `dind.dev/inject` does with today's clients (Docker CLI v29,
/// buildx v0.38, compose v2.40, Testcontainers-go v0.45), in a namespace that opted in; the
/// operator runs in another (its own namespace is never injected).
const CLIENTS_SCRIPT: &str = r#"set -e
host=${DOCKER_HOST#tcp://}; host=${host%:*}
echo "step: docker version"; docker version --format 'client {{.Client.Version}} server {{.Server.Version}}'
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
mkdir -p /tmp/app && cd /tmp/app && echo one > one.txt
printf 'FROM local/base\nCOPY one.txt /one.txt\nRUN echo two > /two.txt\nCMD ["cat", "/one.txt", "/two.txt"]\n' > Dockerfile
echo "step: docker build (buildx)"; docker build -t app:1 . >/dev/null 2>&1 && docker run --rm app:1
echo "step: docker buildx build --load"; docker buildx build --load -t app:2 . >/dev/null 2>&1 && docker run --rm app:2 | grep -q two && echo loaded
echo "step: buildx create, docker-container driver, the context as endpoint"
docker buildx create --name dc --driver docker-container dind && docker buildx inspect dc | grep -q docker-container && echo created
echo "step: buildx create in context mode (no DOCKER_HOST)"
env -u DOCKER_HOST -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH docker buildx create --name dc2 --driver docker-container && echo created-without-endpoint
echo "step: compose up with a published port"
cat > compose.yaml <<COMPOSE
services:
  web:
    image: local/base
    command: ["/bin/sh", "-c", "mkdir -p /www && echo compose-web > /www/index.html && exec busybox httpd -f -p 8080 -h /www"]
    ports: ["18080:8080"]
  worker:
    image: local/base
    command: ["sleep", "3600"]
COMPOSE
docker compose up -d >/dev/null 2>&1
for i in $(seq 100); do wget -q -O - "http://$host:18080/" 2>/dev/null && break; sleep 0.2; done
docker compose down -t 1 >/dev/null 2>&1
echo "step: docker run -p"
docker run -d --name web2 -p 18081:8080 local/base /bin/sh -c "mkdir -p /www && echo run-p > /www/index.html && exec busybox httpd -f -p 8080 -h /www" >/dev/null
for i in $(seq 100); do wget -q -O - "http://$host:18081/" 2>/dev/null && break; sleep 0.2; done
docker rm -f web2 >/dev/null
echo "step: Testcontainers"
TESTCONTAINERS_RYUK_DISABLED=true SDK_TEST_IMAGE=local/base sdk.test -test.run TestMappedPort 2>&1 | tail -1
echo "all clients done"
"#;

#[tokio::test]
async fn e2e_a_labelled_pod_gets_docker_for_todays_clients() {
    require_node();
    with_namespace("e2e-inject", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            kubectl_apply(&builds, &std::fs::read_to_string(format!("{EXAMPLES}/dinddaemon.yaml"))?).await?;
            wait_ready(&builds, "ci").await?;

            // The example: one label, then docker build and run with the v29 CLI.
            let (log, _) = run_pod(&client, &builds, "build", &injected_build_pod("build", "ci")).await?;
            ensure!(log.contains("client 29.") && log.contains("one\ntwo\nthree"), "example build pod:\n{log}");
            ensure!(!log.contains("Cannot connect"), "{log}");

            // Today's clients, one after the other.
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "clients", "labels": {"dind.dev/inject": "ci"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", CLIENTS_SCRIPT]}]},
            });
            let (log, ran) = run_pod(&client, &builds, "clients", &pod.to_string()).await?;
            for want in [
                "client 29.",
                "one\ntwo",
                "loaded",
                "created\n",
                "created-without-endpoint",
                "compose-web",
                "run-p",
                "PASS",
                "all clients done",
            ] {
                ensure!(log.contains(want), "clients pod: {want:?} missing:\n{log}");
            }
            eprintln!("today's clients in an injected pod: all passed in {ran:?}");
            Ok(())
        })
        .await
    })
    .await;
}

/// A Job's pod shaped like an actions-runner-controller runner (a runner container and its work
/// volume) with a daemon of its own: its first `docker version` succeeds, it builds from its
/// work directory and bind-mounts it, and when it ends the sidecar stops cleanly.
const SIDECAR_JOB_SCRIPT: &str = r#"set -e
docker version --format 'first docker version: server {{.Server.Version}}'
tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
echo from-the-workspace > data.txt
printf 'FROM local/base\nCOPY data.txt /data.txt\nRUN echo built > /built.txt\n' > Dockerfile
docker build -t app . >/dev/null 2>&1 && echo build-ok
docker run --rm -v "$PWD":/src local/base cat /src/data.txt | sed 's/^/bind mount: /'
docker run --rm app cat /data.txt /built.txt | tr '\n' ' ' | sed 's/^/image: /'
"#;

#[tokio::test]
async fn e2e_sidecar_job_builds_from_its_workspace_and_completes() {
    require_node();
    with_namespace("e2e-sidecar", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            // The daemon image's dind-init copied in by the install container (the default), and
            // the test image's own (`dindInitPath`): no install container.
            for (daemon, extra) in [("job", ""), ("lean", ", dindInitPath: /usr/local/bin/dind-init")] {
                let manifest = format!("apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {{name: {daemon}}}\nspec: {{mode: Sidecar, storage: {{size: 2Gi}}{extra}}}\n");
                kubectl_apply(&builds, &manifest).await?;
                wait_ready(&builds, daemon).await?;
                let job_name = format!("build-{daemon}");
                let job = json!({
                    "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job_name},
                    "spec": {"backoffLimit": 0, "template": {
                        "metadata": {"labels": {"dind.dev/sidecar": daemon}},
                        "spec": {"restartPolicy": "Never",
                            "containers": [{"name": "runner", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                                "workingDir": "/home/runner/_work", "command": ["/bin/sh", "-c", SIDECAR_JOB_SCRIPT],
                                "volumeMounts": [{"name": "work", "mountPath": "/home/runner/_work"}]}],
                            "volumes": [{"name": "work", "emptyDir": {}}]}}}
                });
                let started = Instant::now();
                kubectl_apply(&builds, &job.to_string()).await?;
                kubectl(&["wait", "-n", &builds, "--for=condition=Complete", &format!("job/{job_name}"), "--timeout=300s"])
                    .await
                    .with_context(|| format!("the Job {job_name} did not complete"))?;
                let took = started.elapsed();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &builds);
                let pod = job_pod(&client, &builds, &job_name).await?;
                let name = pod.name_any();
                let log = kubectl(&["logs", "-n", &builds, &name, "-c", "runner"]).await?;
                for want in ["first docker version: server", "build-ok", "bind mount: from-the-workspace", "image: from-the-workspace built"] {
                    ensure!(log.contains(want), "{want:?} missing from the runner's log ({daemon}):\n{log}");
                }
                ensure!(!log.contains("Cannot connect"), "{log}");
                let inits: Vec<String> = pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect();
                let want_inits = if extra.is_empty() { vec!["dind-install", "dind-daemon"] } else { vec!["dind-daemon"] };
                ensure!(inits == want_inits, "{daemon}: init containers {inits:?}");
                // The sidecar stopped cleanly once the runner ended: dockerd exited 0.
                let sidecar = pods
                    .get(&name)
                    .await?
                    .status
                    .and_then(|s| s.init_container_statuses)
                    .and_then(|cs| cs.into_iter().find(|c| c.name == "dind-daemon"))
                    .context("the sidecar's status")?;
                let terminated = sidecar.state.and_then(|s| s.terminated).context("the sidecar is not terminated")?;
                let daemon_log = kubectl(&["logs", "-n", &builds, &name, "-c", "dind-daemon"]).await.unwrap_or_default();
                ensure!(terminated.exit_code == 0, "the sidecar of {daemon} exited {}:\n{daemon_log}", terminated.exit_code);
                eprintln!("sidecar Job ({daemon}) completed in {took:?}; sidecar exit code 0");
            }

            // On TCP too (spec.sidecar.tcp): mutual TLS on localhost with the pod's own
            // certificates; a client without them is refused.
            kubectl_apply(
                &builds,
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: tcp}\nspec: {mode: Sidecar, sidecar: {tcp: true}, storage: {size: 1Gi}}\n",
            )
            .await?;
            wait_ready(&builds, "tcp").await?;
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tcp", "labels": {"dind.dev/sidecar": "tcp"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "securityContext": {"runAsUser": 1000}, "command": ["/bin/sh", "-c", TCP_SIDECAR_SCRIPT],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                    "volumes": [{"name": "work", "emptyDir": {}}]}
            });
            let (log, _) = run_pod(&client, &builds, "tcp", &pod.to_string()).await?;
            for want in ["host tcp://localhost:2376 verify 1", "tls server ", "plain: refused", "no client certificate: refused by TLS"] {
                ensure!(log.contains(want), "{want:?} missing from the TCP sidecar pod's log:\n{log}");
            }
            Ok(())
        })
        .await
    })
    .await;
}

/// In a pod whose sidecar listens on TCP with TLS (run as a non-root user, as many jobs are).
const TCP_SIDECAR_SCRIPT: &str = r#"echo "host $DOCKER_HOST verify $DOCKER_TLS_VERIFY"
docker version --format 'tls server {{.Server.Version}}' || exit 1
if DOCKER_TLS_VERIFY= DOCKER_CERT_PATH= docker version >/dev/null 2>&1; then echo "plain: accepted"; else echo "plain: refused"; fi
mkdir -p /work/ca-only && cp "$DOCKER_CERT_PATH/ca.pem" /work/ca-only/
if DOCKER_CERT_PATH=/work/ca-only docker version >/work/out 2>&1; then echo "no client certificate: accepted"; else r=$(grep -o 'certificate required\|bad certificate' /work/out | head -1); echo "no client certificate: refused${r:+ by TLS: $r}"; cat /work/out; fi
"#;

/// The same build in consecutive Jobs of a pipeline: with a warm volume from the pool, the
/// second one's steps are cached; the first Job's lease ends when it completes.
const WARM_BUILD_SCRIPT: &str = r#"set -e
docker image inspect local/base >/dev/null 2>&1 && echo "base: present" || { tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null; echo "base: imported"; }
echo data > data.txt
printf 'FROM local/base\nCOPY data.txt /data.txt\nRUN sleep 2 && echo built > /built.txt\n' > Dockerfile
docker build --progress=plain -t app . 2>&1 | grep -E "^#[0-9]+ (CACHED|\[)" || true
echo build-done
"#;

#[tokio::test]
async fn e2e_sidecar_jobs_of_a_pipeline_get_a_warm_volume() {
    require_node();
    with_namespace("e2e-warm", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            kubectl_apply(
                &builds,
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: job}\nspec: {mode: Sidecar, volumePool: {size: 1}, storage: {size: 1Gi}}\n",
            )
            .await?;
            wait_ready(&builds, "job").await?;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &builds);
            let mut logs = Vec::new();
            for run in ["first", "second"] {
                let job = json!({
                    "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": run},
                    "spec": {"backoffLimit": 0, "template": {
                        "metadata": {"labels": {"dind.dev/sidecar": "job", "dind.dev/sticky-key": "pipeline-1"}},
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                            "workingDir": "/work", "command": ["/bin/sh", "-c", WARM_BUILD_SCRIPT],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                            "volumes": [{"name": "work", "emptyDir": {}}]}}}
                });
                kubectl_apply(&builds, &job.to_string()).await?;
                kubectl(&["wait", "-n", &builds, "--for=condition=Complete", &format!("job/{run}"), "--timeout=300s"]).await?;
                let pod = job_pod(&client, &builds, run).await?;
                let lease = pod.annotations().get("dind.dev/volume-lease").cloned().unwrap_or_default();
                ensure!(lease.starts_with("job-cache-0/"), "{run} Job got no pool volume: {lease:?}");
                logs.push(kubectl(&["logs", "-n", &builds, &pod.name_any(), "-c", "build"]).await?);
                // Its lease ends once it has completed: the next Job can have the volume.
                eventually("the lease ends with the Job", READY, || {
                    let claims = claims.clone();
                    async move {
                        let c = claims.get("job-cache-0").await?;
                        Ok((!c.metadata.annotations.unwrap_or_default().contains_key("dind.dev/lease")).then_some(()))
                    }
                })
                .await?;
            }
            ensure!(logs[0].contains("base: imported") && !logs[0].contains("CACHED"), "the first Job started cold:\n{}", logs[0]);
            ensure!(logs[1].contains("base: present") && logs[1].contains("CACHED"), "the second Job's build was not cached:\n{}", logs[1]);
            ensure!(logs[1].contains("build-done"));
            Ok(())
        })
        .await
    })
    .await;
}

/// Fills a daemon's build cache past its target (`cache.buildCacheKeep`): three builds of a
/// 12 MB layer each, their images removed so the cache is all that holds them.
const FILL_CACHE_SCRIPT: &str = r#"set -e
tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
for i in 1 2 3; do
  printf 'FROM local/base\nRUN echo %s > /n && head -c 12000000 /dev/urandom > /blob\n' "$i" > Dockerfile
  docker build -q -t fill-$i . >/dev/null
done
docker rmi fill-1 fill-2 fill-3 >/dev/null
docker system df
"#;

/// Sizes as `docker system df` prints them (go-units' decimal HumanSize: `31.46MB`, `0B`).
fn df_bytes(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(n.parse::<f64>().ok()? * scale)
}

#[tokio::test]
async fn e2e_the_build_cache_is_kept_under_its_target_and_status_shows_the_disk() {
    require_node();
    with_namespace("e2e-cache", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            kubectl_apply(
                &builds,
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: cache}\nspec: {storage: {size: 1Gi}, cache: {buildCacheKeep: 10Mi}}\n",
            )
            .await?;
            wait_ready(&builds, "cache").await?;
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "labels": {"dind.dev/inject": "cache"}},
                "spec": {"containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "workingDir": "/tmp", "command": ["sleep", "3600"]}]}
            });
            kubectl_apply(&builds, &pod.to_string()).await?;
            kubectl(&["wait", "-n", &builds, "--for=condition=Ready", "pod/client", "--timeout=120s"]).await?;
            let exec = |script: String| {
                let builds = builds.clone();
                async move { kubectl(&["exec", "-n", &builds, "client", "-c", "build", "--", "/bin/sh", "-c", &script]).await }
            };
            let filled = exec(FILL_CACHE_SCRIPT.to_string()).await?;
            eprintln!("after the builds:\n{filled}");
            let df = || exec("docker system df --format '{{.Type}}={{.TotalCount}}={{.Size}}'".to_string());
            let line = |text: &str, kind: &str| -> Option<(u32, f64)> {
                let rest = text.lines().find_map(|l| l.strip_prefix(&format!("{kind}=")))?;
                let (count, size) = rest.split_once('=')?;
                Some((count.parse().ok()?, df_bytes(size.trim())?))
            };
            let before = line(&df().await?, "Build Cache").context("no Build Cache line")?;
            ensure!(before.1 > 20e6, "the builds made {} bytes of build cache, expected over 20 MB:\n{filled}", before.1);

            // dockerd's own garbage collector brings the cache under the target (10Mi).
            let keep = 10.0 * 1024.0 * 1024.0;
            let after = eventually("the build cache under 10Mi", Duration::from_secs(240), || async {
                let text = df().await?;
                Ok(line(&text, "Build Cache").filter(|(_, size)| *size <= keep).map(|_| text))
            })
            .await?;
            eprintln!("build cache {:.1} MB -> under the 10Mi target:\n{after}", before.1 / 1e6);

            // Status shows what `docker system df` shows (the operator asks every minute).
            let (images, images_size) = line(&after, "Images").context("no Images line")?;
            let (_, cache_size) = line(&after, "Build Cache").context("no Build Cache line")?;
            let api: Api<DindDaemon> = Api::namespaced(client.clone(), &builds);
            let disk = eventually("status shows the disk as docker system df does", Duration::from_secs(150), || {
                let api = api.clone();
                async move {
                    let st = api.get("cache").await?.status.unwrap_or_default();
                    let disk = st.endpoints.first().and_then(|e| e.disk.clone());
                    // df prints 4 significant digits: compare within 0.5%, or 100 kB.
                    let close = |a: i64, b: f64| ((a as f64) - b).abs() <= (b * 0.005).max(1e5);
                    Ok(disk
                        .filter(|d| {
                            d.images == images as i32 && close(d.build_cache_bytes, cache_size) && close(d.used_bytes - d.build_cache_bytes, images_size)
                        })
                        .map(|d| (d, st.disk)))
                }
            })
            .await?;
            eprintln!("status: {disk:?}");
            ensure!(disk.0.volume_bytes == Some(1 << 30) && disk.0.used_percent.is_some(), "{disk:?}");
            ensure!(disk.1.as_deref().is_some_and(|d| d.ends_with("% of 1Gi")), "the Disk column: {:?}", disk.1);
            let column = kubectl(&["get", "dind", "-n", &builds, "cache"]).await?;
            ensure!(column.contains("DISK") && column.contains("% of 1Gi"), "kubectl get dind:\n{column}");
            Ok(())
        })
        .await
    })
    .await;
}

/// A small base image (busybox and its libraries) and what pruning decides on: images kept by
/// pattern, unused, used; stopped containers, one labelled to keep; a network; an anonymous
/// volume (of a stopped container) and a named one.
const PRUNE_SETUP_SCRIPT: &str = r#"set -e
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 2>/dev/null | docker import - local/base >/dev/null
mkdir -p /tmp/p && cd /tmp/p
for name in keep/tool drop/old recent/used; do
  printf 'FROM local/base\nRUN echo %s > /name && head -c 5000000 /dev/urandom > /blob\n' "$name" > Dockerfile
  docker build -q -t $name . >/dev/null
done
docker create --name stopped local/base true >/dev/null
docker run --name withvol -v /data local/base true
docker create --name keeper --label dind.dev/keep=1 local/base true >/dev/null
docker network create oldnet >/dev/null
docker volume create named >/dev/null
echo setup-done
"#;

/// What is left after pruning, one `kind name` per line.
const PRUNE_INVENTORY_SCRIPT: &str = r#"
for i in keep/tool drop/old recent/used local/base; do docker image inspect $i >/dev/null 2>&1 && echo "image $i"; done
docker ps -a --format 'container {{.Names}}'
docker network ls --format 'network {{.Name}}'
docker volume ls --format 'volume {{.Name}}'
"#;

/// Starts a build that runs 60 s (a build in progress), then fills the volume past its
/// high-water mark with an unused image, waits for the operator to prune that image, and
/// says whether the build was still running then; then waits for the build.
const HIGH_WATER_SCRIPT: &str = r#"set -e
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 2>/dev/null | docker import - local/base >/dev/null
mkdir -p /tmp/slow /tmp/big
printf 'FROM local/base\nRUN head -c 20000000 /dev/urandom > /out && sha256sum /out > /sum && sleep 60\n' > /tmp/slow/Dockerfile
(cd /tmp/slow && docker build -t built/out . > /tmp/slow/log 2>&1; echo "build-exit $?" >> /tmp/slow/log) &
build=$!
sleep 3
printf 'FROM local/base\nRUN head -c 600000000 /dev/zero > /big\n' > /tmp/big/Dockerfile
(cd /tmp/big && docker build -q -t drop/big . >/dev/null)
docker system df
for i in $(seq 100); do docker image inspect drop/big >/dev/null 2>&1 || break; sleep 0.5; done
docker image inspect drop/big >/dev/null 2>&1 && echo "big-still-there" || echo "big-pruned"
kill -0 $build 2>/dev/null && echo "build-running-at-prune" || echo "build-over-at-prune"
wait $build || true
cat /tmp/slow/log | tail -3
docker run --rm built/out busybox sha256sum -c /sum
"#;

#[tokio::test]
async fn e2e_pruning_keeps_what_the_policy_keeps_and_never_breaks_a_build() {
    require_node();
    with_namespace("e2e-prune", |client, ns| async move {
        with_builds_namespace_set(&client.clone(), &ns.clone(), &["diskIntervalSeconds=5"], |builds| async move {
            kubectl_apply(
                &builds,
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: tidy}\n\
                 spec: {storage: {size: 1Gi}, cache: {prune: {unusedFor: 40s, keepImages: ['keep/*']}}}\n",
            )
            .await?;
            wait_ready(&builds, "tidy").await?;
            let pod = |name: &str, daemon: &str| {
                json!({
                    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"dind.dev/inject": daemon}},
                    "spec": {"containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                        "workingDir": "/tmp", "command": ["sleep", "3600"]}]}
                })
                .to_string()
            };
            kubectl_apply(&builds, &pod("client", "tidy")).await?;
            kubectl(&["wait", "-n", &builds, "--for=condition=Ready", "pod/client", "--timeout=120s"]).await?;
            let exec = |pod: &'static str, script: String| {
                let builds = builds.clone();
                async move { kubectl(&["exec", "-n", &builds, pod, "-c", "build", "--", "/bin/sh", "-c", &script]).await }
            };
            let setup = exec("client", PRUNE_SETUP_SCRIPT.to_string()).await?;
            ensure!(setup.contains("setup-done"), "{setup}");
            let before = exec("client", PRUNE_INVENTORY_SCRIPT.to_string()).await?;
            eprintln!("before pruning:\n{before}");
            ensure!(
                before.contains("image drop/old") && before.contains("container stopped") && before.contains("network oldnet"),
                "{before}"
            );

            // recent/used is used (`docker run --rm`: no container stays) every 8 s; the rest is not.
            let started = Instant::now();
            let after = loop {
                ensure!(started.elapsed() < Duration::from_secs(240), "drop/old was not pruned in 240 s");
                let left = exec("client", format!("docker run --rm recent/used true; {PRUNE_INVENTORY_SCRIPT}")).await?;
                if !left.contains("image drop/old") && !left.contains("container withvol") && !left.contains("network oldnet") {
                    break left;
                }
                tokio::time::sleep(Duration::from_secs(8)).await;
            };
            eprintln!("after pruning ({:?}):\n{after}", started.elapsed());
            for kept in ["image keep/tool", "image recent/used", "image local/base", "container keeper", "volume named"] {
                ensure!(after.contains(kept), "{kept} was pruned:\n{after}");
            }
            for gone in ["container stopped", "container withvol"] {
                ensure!(!after.contains(gone), "{gone} was not pruned:\n{after}");
            }
            let anonymous = after.lines().filter(|l| l.strip_prefix("volume ").is_some_and(|v| v.len() == 64)).count();
            ensure!(anonymous == 0, "the anonymous volume of withvol stayed:\n{after}");
            let events = kubectl(&[
                "get",
                "events",
                "-n",
                &builds,
                "--field-selector",
                "reason=Pruned,involvedObject.name=tidy",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .await?;
            eprintln!("Pruned events: {events}");
            ensure!(events.contains("tidy-0: freed") && events.contains("(idle)") && events.contains("image"), "{events}");
            let api: Api<DindDaemon> = Api::namespaced(client.clone(), &builds);
            let last = eventually("status shows the last prune", Duration::from_secs(60), || {
                let api = api.clone();
                async move {
                    let st = api.get("tidy").await?.status.unwrap_or_default();
                    Ok(st.endpoints.first().and_then(|e| e.disk.as_ref()).and_then(|d| d.last_prune.clone()))
                }
            })
            .await?;
            eprintln!("status lastPrune: {last:?}");
            ensure!(last.reason == "Idle" && !last.removed.is_empty() && last.time.ends_with('Z'), "{last:?}");

            // Past the high-water mark, pruning runs during a build and does not break it.
            kubectl_apply(
                &builds,
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: full}\n\
                 spec: {storage: {size: 1Gi}, cache: {highWaterPercent: 50, buildCacheKeep: 900Mi, prune: {unusedFor: 1s}}}\n",
            )
            .await?;
            wait_ready(&builds, "full").await?;
            kubectl_apply(&builds, &pod("busy", "full")).await?;
            kubectl(&["wait", "-n", &builds, "--for=condition=Ready", "pod/busy", "--timeout=120s"]).await?;
            let out = exec("busy", HIGH_WATER_SCRIPT.to_string()).await?;
            eprintln!("high water:\n{out}");
            ensure!(out.contains("big-pruned") && out.contains("build-running-at-prune"), "not pruned while the build ran:\n{out}");
            ensure!(out.contains("build-exit 0") && out.contains("/out: OK"), "the build broke or its output is wrong:\n{out}");
            let events = kubectl(&[
                "get",
                "events",
                "-n",
                &builds,
                "--field-selector",
                "reason=Pruned,involvedObject.name=full",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .await?;
            eprintln!("Pruned events: {events}");
            ensure!(events.contains("past the high-water mark of 50%"), "{events}");
            // The image's layer lived on as build cache: the disk is back under the mark only
            // once that was trimmed too (dockerd 20.10's df shows such records late, so this
            // may take a second prune).
            let df = eventually("images and build cache back under the 512Mi mark", Duration::from_secs(90), || async {
                let text = exec("busy", "docker system df --format '{{.Type}}={{.Size}}'".to_string()).await?;
                let used: f64 = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("Images=").or_else(|| l.strip_prefix("Build Cache=")))
                    .filter_map(|size| df_bytes(size.trim()))
                    .sum();
                Ok((used < 400e6).then_some(text))
            })
            .await?;
            eprintln!("after the high-water prunes:\n{df}");
            let last = api.get("full").await?.status.and_then(|s| s.endpoints.first()?.disk.clone()?.last_prune).context("no lastPrune")?;
            eprintln!("status lastPrune: {last:?}");
            Ok(())
        })
        .await
    })
    .await;
}
