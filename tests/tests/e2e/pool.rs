//! A pool of daemons (a StatefulSet): apply to Ready, builds over mutual TLS, the cache across
//! restarts, a refusal, fault drills, deletion with and without the volume.

use super::*;

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
        let keep = |image: Option<&str>| {
            let mut spec = json!({"storage": {"retainOnDelete": true}});
            if let Some(image) = image {
                spec["image"] = json!(image);
            }
            json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"}, "spec": spec})
        };
        let init_containers = || async {
            let p = kubectl(&["get", "pod", "-n", &ns, "ci-0", "-o", "jsonpath={.spec.initContainers[*].name}"]).await?;
            anyhow::Ok(p.trim().to_string())
        };
        // The chart's default image runs its own dind-init; the second time, an image of one's
        // own gets it copied in by an init container, on the same volume.
        kubectl_apply(&ns, &serde_json::to_string(&keep(None))?).await?;
        wait_ready(&ns, "ci").await?;
        ensure!(init_containers().await?.is_empty(), "the default image needs no install container: {:?}", init_containers().await?);
        run_build(&client, &ns, "build-1", "ci").await?;
        api.delete("ci", &DeleteParams::foreground()).await?;
        eventually("DindDaemon and its objects gone", READY, || {
            let ns = ns.clone();
            async move {
                let left =
                    kubectl(&["get", "statefulset,service,secret,networkpolicy,pod", "-n", &ns, "-l", "dind.dev/daemon=ci", "-o", "name"])
                        .await?;
                Ok(left.trim().is_empty().then_some(()))
            }
        })
        .await?;
        ensure!(pvcs.get_opt("docker-ci-0").await?.is_some(), "retainOnDelete: the volume should stay");
        kubectl_apply(&ns, &serde_json::to_string(&keep(Some(OWN_DAEMON_IMAGE)))?).await?;
        wait_ready(&ns, "ci").await?;
        ensure!(init_containers().await? == "install-dind-init", "{:?}", init_containers().await?);
        let (warm, _) = run_build(&client, &ns, "build-2", "ci").await?;
        ensure!(cached_steps(&warm) >= 3, "the recreated daemon did not reuse the kept cache:\n{warm}");

        // Without retainOnDelete, deleting takes the volume too.
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"storage": {"retainOnDelete": false}}}))).await?;
        eventually("retention policy updated", READY, || {
            let ns = ns.clone();
            async move {
                let p = kubectl(&[
                    "get",
                    "statefulset",
                    "-n",
                    &ns,
                    "ci",
                    "-o",
                    "jsonpath={.spec.persistentVolumeClaimRetentionPolicy.whenDeleted}",
                ])
                .await?;
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

/// Where the nodes have Kubernetes image volumes (the harness node does: kubelet 1.35, where they
/// are beta and on, and containerd 2.1), a daemon image of one's own gets dind-init mounted from
/// the init image, pulled by tag from the registry: no install container, and it builds.
#[tokio::test]
async fn e2e_an_image_volume_brings_dind_init_into_an_image_of_ones_own() {
    require_node();
    with_namespace("e2e-imgvol", |client: Client, ns: String| async move {
        install_operator_with(&client, &ns, &ns, &["daemon.dindInitImageVolume=true"]).await?;
        let dd = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"},
            "spec": {"image": OWN_DAEMON_IMAGE, "storage": {"size": "1Gi"}}});
        kubectl_apply(&ns, &dd.to_string()).await?;
        let ready = wait_ready(&ns, "ci").await?;
        let pod: Pod = Api::namespaced(client.clone(), &ns).get("ci-0").await?;
        let spec = pod.spec.clone().unwrap_or_default();
        ensure!(spec.init_containers.as_ref().is_none_or(|i| i.is_empty()), "no install container: {:?}", spec.init_containers);
        let bin = spec.volumes.iter().flatten().find(|v| v.name == "dind-bin").context("no dind-bin volume")?;
        let reference = bin.image.as_ref().and_then(|i| i.reference.clone()).unwrap_or_default();
        ensure!(reference.contains("/dind-init:"), "dind-bin is not the init image from the registry: {bin:?}");
        let command = spec.containers[0].command.clone().unwrap_or_default();
        ensure!(command == ["/dind/bin/dind-init".to_string()], "{command:?}");
        let (log, _) = run_build(&client, &ns, "build", "ci").await?;
        ensure!(log.contains("one\ntwo\nthree"), "{log}");
        eprintln!("image volume: {reference} mounted at /dind/bin, Ready in {ready:?}");
        Ok(())
    })
    .await;
}

/// A renewed server certificate never kills a running build (issue 24): a daemon that runs a
/// container keeps serving its old certificate, and is restarted on its own once idle. Before,
/// the certificate's digest sat in the pod template, so a re-issue restarted every daemon at once.
#[tokio::test]
async fn e2e_a_renewed_certificate_waits_for_the_daemon_to_be_idle() {
    require_node();
    with_namespace("e2e-renew", |client, ns| async move {
        with_builds_namespace_set(&client.clone(), &ns.clone(), &["diskIntervalSeconds=5"], |builds| async move {
            kubectl_apply(&builds, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: ci}\nspec: {storage: {size: 1Gi}}\n")
                .await?;
            wait_ready(&builds, "ci").await?;
            let client_pod = json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "labels": {"dind.dev/inject": "ci"}},
                "spec": {"containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}
            });
            kubectl_apply(&builds, &client_pod.to_string()).await?;
            kubectl(&["wait", "-n", &builds, "--for=condition=Ready", "pod/client", "--timeout=120s"]).await?;
            let exec = |script: &'static str| {
                let builds = builds.clone();
                async move { kubectl(&["exec", "-n", &builds, "client", "-c", "build", "--", "/bin/sh", "-c", script]).await }
            };
            exec("tar -C / -c bin etc lib lib64 2>/dev/null | docker import - local/base >/dev/null && docker run -d --name busy local/base sleep 600").await?;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &builds);
            let before = pods.get("ci-0").await?.uid().context("uid")?;

            // The operator re-issues a server certificate whose Secret is gone (as at a renewal).
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &builds);
            let old_cert = secrets.get("ci-server-tls").await?.data.context("data")?;
            secrets.delete("ci-server-tls", &DeleteParams::default()).await?;
            eventually("a new server certificate", READY, || {
                let secrets = secrets.clone();
                let old_cert = old_cert.clone();
                async move { Ok(secrets.get_opt("ci-server-tls").await?.and_then(|s| s.data).filter(|d| *d != old_cert).map(|_| ())) }
            })
            .await?;
            // Busy: the daemon keeps running (and keeps answering its client) for well past a
            // few of the operator's looks (every 20 s while one waits).
            tokio::time::sleep(Duration::from_secs(45)).await;
            ensure!(pods.get("ci-0").await?.uid() == Some(before.clone()), "a busy daemon was restarted for its certificate");
            ensure!(exec("docker ps --format '{{.Names}}'").await?.contains("busy"), "the running container is gone");

            // Idle: restarted on its own, and then serving the new certificate to clients.
            exec("docker rm -f busy >/dev/null").await?;
            eventually("the idle daemon restarted", READY, || {
                let pods = pods.clone();
                let before = before.clone();
                async move { Ok(pods.get_opt("ci-0").await?.and_then(|p| p.uid()).filter(|u| *u != before).map(|_| ())) }
            })
            .await?;
            wait_ready(&builds, "ci").await?;
            let events = kubectl(&["get", "events", "-n", &builds, "--field-selector", "reason=CertificateRolled", "-o", "jsonpath={.items[*].message}"]).await?;
            ensure!(events.contains("restarted idle daemon ci-0"), "no CertificateRolled event: {events:?}");
            let out = exec("for i in $(seq 60); do docker version --format '{{.Server.Version}}' 2>/dev/null && exit 0; sleep 1; done; exit 1").await?;
            ensure!(!out.trim().is_empty(), "the client cannot reach the restarted daemon");
            Ok(())
        })
        .await
    })
    .await;
}
