//! Sidecar mode: a daemon inside each Job's pod, its workspace, TCP with mutual TLS, and warm
//! volumes of the pool handed from Job to Job.

use super::*;

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

/// A container of uid 1001 in the job's pod asks the sidecar's daemon for its version.
const NONROOT_SCRIPT: &str = r#"for i in $(seq 60); do
  v=$(HOME=/tmp docker version --format '{{.Server.Version}}' 2>&1) && { echo "uid $(id -u): server $v"; exit 0; }
  sleep 1
done
echo "uid $(id -u): $v"; exit 1"#;

#[tokio::test]
async fn e2e_sidecar_job_builds_from_its_workspace_and_completes() {
    require_node();
    with_namespace("e2e-sidecar", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            // The chart's default daemon image runs its own dind-init (no install container); an
            // image of one's own gets it copied in by the install container first.
            let own_image = format!(", image: {OWN_DAEMON_IMAGE}");
            for (daemon, extra) in [("job", ""), ("own", own_image.as_str())] {
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
                                "volumeMounts": [{"name": "work", "mountPath": "/home/runner/_work"}]},
                                // A non-root container of the same pod (before: permission denied
                                // on the socket, root:docker 0660).
                                {"name": "nonroot", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                                "securityContext": {"runAsUser": 1001, "runAsGroup": 1001, "runAsNonRoot": true},
                                "command": ["/bin/sh", "-c", NONROOT_SCRIPT]}],
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
                let nonroot = kubectl(&["logs", "-n", &builds, &name, "-c", "nonroot"]).await?;
                ensure!(nonroot.contains("uid 1001: server "), "the non-root container ({daemon}):\n{nonroot}");
                let inits: Vec<String> = pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect();
                let want_inits = if extra.is_empty() { vec!["dind-daemon"] } else { vec!["dind-install", "dind-daemon"] };
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
