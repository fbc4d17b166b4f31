//! CI systems' own dind conventions, unchanged (docs/ci-recipes.md): a job written for GitLab
//! Runner's Kubernetes executor, Tekton's dind sidecar example or actions-runner-controller's
//! dind mode gets Docker from a Sidecar DindDaemon with one label, its own dind service or
//! container deleted and nothing else edited. Each pod has the shape those systems create.

use serde_json::Value;

use super::*;

/// What each job does: Docker answers, a build from the workspace, a bind mount of it.
const JOB_SCRIPT: &str = r#"set -e
docker version --format 'server {{.Server.Version}}'
tar -C / -c bin etc lib 2>/dev/null | docker import - local/base >/dev/null
echo from-the-workspace > data.txt
printf 'FROM local/base\nCOPY data.txt /data.txt\n' > Dockerfile
docker build -q -t app . >/dev/null && echo build-ok
docker run --rm -v "$PWD":/src local/base cat /src/data.txt | sed 's/^/bind mount: /'
"#;

fn client(name: &str, workdir: &str, env: Value, mounts: Value) -> Value {
    json!({"name": name, "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "workingDir": workdir,
        "command": ["/bin/sh", "-c", JOB_SCRIPT], "env": env, "volumeMounts": mounts})
}

/// GitLab Runner's Kubernetes executor, `services: [docker:dind]` deleted: the job's variables
/// as GitLab documents them for TLS, the certificates' emptyDir its runner config mounts at
/// /certs/client, the repository's volume at /builds.
fn gitlab(daemon: &str) -> Value {
    let env = json!([
        {"name": "DOCKER_HOST", "value": "tcp://docker:2376"}, {"name": "DOCKER_TLS_CERTDIR", "value": "/certs"},
        {"name": "DOCKER_TLS_VERIFY", "value": "1"}, {"name": "DOCKER_CERT_PATH", "value": "/certs/client"},
        {"name": "DOCKER_DRIVER", "value": "overlay2"}, {"name": "HOME", "value": "/tmp"}]);
    let mounts = json!([{"name": "repo", "mountPath": "/builds"}, {"name": "docker-certs", "mountPath": "/certs/client"}]);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner-gitlab-project-1-concurrent-0", "labels": {"dind.dev/sidecar": daemon}},
        "spec": {"restartPolicy": "Never",
            "initContainers": [{"name": "init-repo", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                "command": ["mkdir", "-p", "/builds/group/project"], "volumeMounts": [{"name": "repo", "mountPath": "/builds"}]}],
            "containers": [client("build", "/builds/group/project", env, mounts)],
            "volumes": [{"name": "repo", "emptyDir": {}}, {"name": "docker-certs", "emptyDir": {"medium": "Memory"}}]}})
}

/// Tekton's "Using a Docker-in-Docker sidecar" example as its pod, the `server` sidecar deleted:
/// the step's variables and its `dind-certs` emptyDir at /certs/client.
fn tekton(daemon: &str) -> Value {
    let env = json!([
        {"name": "DOCKER_HOST", "value": "tcp://localhost:2376"}, {"name": "DOCKER_TLS_VERIFY", "value": "1"},
        {"name": "DOCKER_CERT_PATH", "value": "/certs/client"}, {"name": "HOME", "value": "/tekton/home"}]);
    let mounts = json!([{"name": "dind-certs", "mountPath": "/certs/client"}, {"name": "ws", "mountPath": "/workspace/source"},
        {"name": "tekton-home", "mountPath": "/tekton/home"}]);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "docker-build-pod", "labels": {"dind.dev/sidecar": daemon, "tekton.dev/task": "docker-build"}},
        "spec": {"restartPolicy": "Never",
            "containers": [client("step-docker-build", "/workspace/source", env, mounts)],
            "volumes": [{"name": "dind-certs", "emptyDir": {}}, {"name": "ws", "emptyDir": {}}, {"name": "tekton-home", "emptyDir": {}}]}})
}

/// actions-runner-controller's dind mode (gha-runner-scale-set `containerMode.type: dind`), its
/// `dind` container deleted: the runner (uid 1001) with DOCKER_HOST=unix:///var/run/docker.sock
/// and the `dind-sock` emptyDir at /var/run, the work volume, the externals init container.
fn arc(daemon: &str) -> Value {
    let env = json!([{"name": "DOCKER_HOST", "value": "unix:///var/run/docker.sock"}, {"name": "HOME", "value": "/home/runner/_work"},
        {"name": "RUNNER_WAIT_FOR_DOCKER_IN_SECONDS", "value": "120"}]);
    let mounts = json!([{"name": "work", "mountPath": "/home/runner/_work"}, {"name": "dind-sock", "mountPath": "/var/run"},
        {"name": "dind-externals", "mountPath": "/home/runner/externals"}]);
    let mut runner = client("runner", "/home/runner/_work", env, mounts);
    runner["securityContext"] = json!({"runAsUser": 1001, "runAsGroup": 123});
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "arc-runner-set-abcde-runner-x1", "labels": {"dind.dev/sidecar": daemon, "actions-ephemeral-runner": "True"}},
        "spec": {"restartPolicy": "Never", "securityContext": {"fsGroup": 123},
            "initContainers": [{"name": "init-dind-externals", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "echo externals > /home/runner/tmpDir/externals.txt"], "volumeMounts": [{"name": "dind-externals", "mountPath": "/home/runner/tmpDir"}]}],
            "containers": [runner],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "dind-sock", "emptyDir": {}}, {"name": "dind-externals", "emptyDir": {}}]}})
}

#[tokio::test]
async fn e2e_ci_systems_dind_conventions_work_unchanged_with_one_label() {
    require_node();
    with_namespace("e2e-recipes", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            for manifest in [
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: dind-tcp}\nspec: {mode: Sidecar, sidecar: {tcp: true}, storage: {size: 1Gi}}\n",
                "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: dind}\nspec: {mode: Sidecar, storage: {size: 1Gi}}\n",
            ] {
                kubectl_apply(&builds, manifest).await?;
            }
            // The DindDaemons of docs/ci-recipes.md, by its names.
            wait_ready(&builds, "dind-tcp").await?;
            wait_ready(&builds, "dind").await?;
            for (system, pod, container) in
                [("GitLab Runner", gitlab("dind-tcp"), "build"), ("Tekton", tekton("dind-tcp"), "step-docker-build"), ("actions-runner-controller", arc("dind"), "runner")]
            {
                let name = pod["metadata"]["name"].as_str().context("name")?.to_string();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &builds);
                let started = Instant::now();
                pods.create(&Default::default(), &serde_json::from_value(pod)?).await.with_context(|| format!("{system}: the pod was refused"))?;
                let phase = pod_ended(&client, &builds, &name).await?;
                let log = kubectl(&["logs", "-n", &builds, &name, "-c", container]).await.unwrap_or_default();
                ensure!(phase == "Succeeded", "{system}: {phase}:\n{log}");
                let server = format!("server {}", dind_operator::crd::DEFAULT_DOCKER_VERSION);
                for want in [server.as_str(), "build-ok", "bind mount: from-the-workspace"] {
                    ensure!(log.contains(want), "{system}: {want:?} missing:\n{log}");
                }
                eprintln!("{system}'s convention, unchanged, with one label: passed in {:?}", started.elapsed());
            }
            Ok(())
        })
        .await
    })
    .await;
}
