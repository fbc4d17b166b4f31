//! The injection webhook against the real apiserver: a real operator process serves it on
//! loopback, and the apiserver calls it for every pod created in the test's namespace (as the
//! chart's configuration does for opted-in namespaces). No node: the tests read the admitted
//! pods; what a pod does with Docker is in e2e.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;

use dind_operator::crd::DindDaemon;
use dind_tests::operator::{WAIT, create, no_node};
use dind_tests::webhook::{self, create_pod, env_of, labelled_pod};
use dind_tests::{eventually, with_namespace};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

fn docker_host_of(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    env_of(pod, "build").into_iter().find(|(k, _)| k == "DOCKER_HOST").map(|(_, v)| v).unwrap_or_default()
}

#[tokio::test]
async fn webhook_injects_a_labelled_pod_and_leaves_the_rest_alone() {
    with_namespace("webhook-inject", |client, ns| async move {
        let _hook = webhook::start(&client, &ns, &[]).await?;
        create(&client, &ns, "ci", json!({"replicas": 2, "nodeSelector": no_node()})).await?;

        // A pod with only the label gets everything.
        let mut pod = labelled_pod("build", "ci");
        pod["spec"]["containers"].as_array_mut().unwrap().push(json!({
            "name": "own", "image": "x", "env": [{"name": "DOCKER_HOST", "value": "tcp://elsewhere:2376"}]}));
        pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "skipped", "image": "x"}));
        pod["metadata"]["annotations"] = json!({"dind.dev/opt-out-containers": "skipped"});
        let admitted = create_pod(&client, &ns, &pod).await?;
        let env: BTreeMap<String, String> = env_of(&admitted, "build").into_iter().collect();
        let host = &env["DOCKER_HOST"];
        anyhow::ensure!(
            [0, 1].iter().any(|i| host == &format!("tcp://ci-{i}.ci-daemons.{ns}.svc:2376")),
            "DOCKER_HOST {host} is not a replica's own address"
        );
        anyhow::ensure!(env["DOCKER_TLS_VERIFY"] == "1" && env["DOCKER_CERT_PATH"] == "/dind/client-certs", "{env:?}");
        anyhow::ensure!(env["DOCKER_CONFIG"] == "/dind/docker-config", "{env:?}");
        let labels = admitted.metadata.labels.clone().unwrap_or_default();
        anyhow::ensure!(labels.get("dind.dev/client").map(String::as_str) == Some("ci"), "{labels:?}");
        let spec = admitted.spec.clone().unwrap_or_default();
        let wait = spec.init_containers.clone().unwrap_or_default();
        anyhow::ensure!(wait.first().map(|c| c.name.as_str()) == Some("dind-wait"), "{wait:?}");
        // The DindDaemon's init image runs without the pod's service-account token (before: the
        // apiserver's ServiceAccount plugin mounted it into dind-wait too); the job keeps its own.
        let token = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
            let at = "/var/run/secrets/kubernetes.io/serviceaccount";
            c.volume_mounts.iter().flatten().filter(|m| m.mount_path == at).map(|m| m.name.clone()).collect()
        };
        anyhow::ensure!(token(&wait[0]) == ["dind-no-token"], "dind-wait: {:?}", token(&wait[0]));
        let build = spec.containers.iter().find(|c| c.name == "build").context("build container")?;
        anyhow::ensure!(token(build).iter().any(|n| n.starts_with("kube-api-access")), "build: {:?}", token(build));
        anyhow::ensure!(
            spec.volumes.iter().flatten().any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("ci-client")),
            "client Secret not mounted"
        );
        // Untouched: a container with its own DOCKER_HOST, an opted-out one.
        anyhow::ensure!(env_of(&admitted, "own") == vec![("DOCKER_HOST".into(), "tcp://elsewhere:2376".into())]);
        anyhow::ensure!(env_of(&admitted, "skipped").is_empty());

        // Unlabelled pods are not sent to the webhook at all.
        let mut plain = labelled_pod("plain", "ci");
        plain["metadata"]["labels"] = json!({});
        let admitted = create_pod(&client, &ns, &plain).await?;
        anyhow::ensure!(env_of(&admitted, "build").is_empty() && admitted.spec.unwrap().init_containers.is_none());

        // Re-submitting an injected pod (kubectl get -o yaml | kubectl create) injects nothing twice.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        let mut again = pods.get("build").await?;
        again.metadata = kube::api::ObjectMeta {
            name: Some("build-again".into()),
            labels: again.metadata.labels.clone(),
            annotations: again.metadata.annotations.clone(),
            ..Default::default()
        };
        let resubmitted = pods.create(&PostParams::default(), &again).await?;
        let spec = resubmitted.spec.unwrap_or_default();
        anyhow::ensure!(spec.init_containers.unwrap_or_default().len() == 1, "wait container twice");
        let build = spec.containers.iter().find(|c| c.name == "build").unwrap();
        anyhow::ensure!(build.env.iter().flatten().filter(|e| e.name == "DOCKER_HOST").count() == 1);
        let ours = build.volume_mounts.iter().flatten().filter(|m| m.name.starts_with("dind-")).count();
        anyhow::ensure!(ours == 2, "{:?}", build.volume_mounts);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn webhook_refuses_a_pod_naming_a_missing_daemon_and_serves_tls_off_plainly() {
    with_namespace("webhook-refuse", |client, ns| async move {
        let _hook = webhook::start(&client, &ns, &[]).await?;
        let err =
            create_pod(&client, &ns, &labelled_pod("lost", "nonexistent")).await.expect_err("a missing DindDaemon must refuse the pod");
        let text = err.to_string();
        anyhow::ensure!(text.contains("\"nonexistent\"") && text.contains(&format!("\"{ns}\"")), "unclear refusal: {text}");
        anyhow::ensure!(text.contains("inject.dind.dev"), "the refusal names the webhook: {text}");

        create(&client, &ns, "plain", json!({"tls": {"enabled": false}, "port": 2375, "nodeSelector": no_node()})).await?;
        let admitted = create_pod(&client, &ns, &labelled_pod("p", "plain")).await?;
        let env: BTreeMap<String, String> = env_of(&admitted, "build").into_iter().collect();
        anyhow::ensure!(env.get("DOCKER_HOST") == Some(&format!("tcp://plain-0.plain-daemons.{ns}.svc:2375")), "{env:?}");
        anyhow::ensure!(!env.contains_key("DOCKER_TLS_VERIFY") && !env.contains_key("DOCKER_CERT_PATH"), "{env:?}");
        anyhow::ensure!(!serde_json::to_string(&admitted.spec)?.contains("plain-client"), "no certificates with TLS off");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn webhook_sticky_keys_keep_a_pipeline_on_one_replica() {
    with_namespace("webhook-sticky", |client, ns| async move {
        let _hook = webhook::start(&client, &ns, &[]).await?;
        create(&client, &ns, "ci", json!({"replicas": 3, "nodeSelector": no_node()})).await?;
        let mut same = BTreeSet::new();
        for i in 0..20 {
            let mut pod = labelled_pod(&format!("job-{i}"), "ci");
            pod["metadata"]["labels"]["dind.dev/sticky-key"] = json!("pipeline-42");
            same.insert(docker_host_of(&create_pod(&client, &ns, &pod).await?));
        }
        anyhow::ensure!(same.len() == 1, "one key, several replicas: {same:?}");
        let mut spread = BTreeSet::new();
        for i in 0..20 {
            // Jobs of different pipelines: the key is the controlling owner (here: a fake Job).
            let mut pod = labelled_pod(&format!("other-{i}"), "ci");
            pod["metadata"]["generateName"] = json!(format!("pipeline-{i}-"));
            spread.insert(docker_host_of(&create_pod(&client, &ns, &pod).await?));
        }
        anyhow::ensure!(spread.len() >= 2, "20 keys all on one replica: {spread:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn webhook_certificate_rotates_twice_without_a_restart() {
    with_namespace("webhook-rotate", |client, ns| async move {
        // 30 s leaves, 90 s CAs: a new CA about every 41 s, a new leaf about every 19 s.
        let hook = webhook::start(&client, &ns, &["--webhook-cert-lifetime-seconds=30"]).await?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let ca_of = |s: &Secret| dind_tests::operator::secret_text(s, "ca-0.crt");
        let leaf_of = |s: &Secret| dind_tests::operator::secret_text(s, "tls.crt");
        let first = secrets.get("webhook-tls").await?;
        let (mut cas, mut leaves) = (BTreeSet::from([ca_of(&first)]), BTreeSet::from([leaf_of(&first)]));
        let mut admitted = 0;
        let start = std::time::Instant::now();
        while cas.len() < 3 {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(150), "only {} CAs in 150 s", cas.len());
            create_pod(&client, &ns, &labelled_pod(&format!("p-{admitted}"), "ci"))
                .await
                .map_err(|e| anyhow::anyhow!("pod {admitted} refused after {:?} ({} CAs seen): {e}", start.elapsed(), cas.len()))?;
            admitted += 1;
            let s = secrets.get("webhook-tls").await?;
            cas.insert(ca_of(&s));
            leaves.insert(leaf_of(&s));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::ensure!(leaves.len() >= 4, "{} leaves", leaves.len());
        eprintln!(
            "{admitted} pods admitted across {} CAs and {} leaves, same process (pid {})",
            cas.len(),
            leaves.len(),
            hook.operator.pid()
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn webhook_operator_down_refuses_labelled_pods_only() {
    with_namespace("webhook-down", |client, ns| async move {
        let mut hook = webhook::start(&client, &ns, &[]).await?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        create_pod(&client, &ns, &labelled_pod("before", "ci")).await?;
        hook.operator.kill();
        let err = create_pod(&client, &ns, &labelled_pod("during", "ci")).await.expect_err("no webhook, no labelled pod");
        anyhow::ensure!(err.to_string().contains("inject.dind.dev"), "{err}");
        // Unlabelled pods, and labelled pods in namespaces that did not opt in, do not need it.
        let mut plain = labelled_pod("plain", "ci");
        plain["metadata"]["labels"] = json!({});
        create_pod(&client, &ns, &plain).await?;
        let other = format!("{ns}-x");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": other}}))?).await?;
        let outcome = create_pod(&client, &other, &labelled_pod("elsewhere", "ci")).await;
        let _ = namespaces.delete(&other, &DeleteParams::background()).await;
        let admitted = outcome?;
        anyhow::ensure!(env_of(&admitted, "build").is_empty());
        // Back up: admitted again.
        let _hook = webhook::restart(&client, &ns, hook).await?;
        eventually("labelled pods admitted again", WAIT, || {
            let client = client.clone();
            let ns = ns.clone();
            async move { Ok(create_pod(&client, &ns, &labelled_pod(&format!("after-{}", dind_tests::suffix()), "ci")).await.ok().map(|_| ())) }
        })
        .await?;
        let _ = Api::<DindDaemon>::namespaced(client.clone(), &ns);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn webhook_sidecar_mode_is_a_template_and_mismatched_labels_are_refused() {
    with_namespace("webhook-sidecar", |client, ns| async move {
        let _hook = webhook::start(&client, &ns, &[]).await?;
        create(&client, &ns, "job", json!({"mode": "Sidecar", "storage": {"size": "5Gi"}})).await?;
        create(&client, &ns, "pool", json!({"nodeSelector": no_node()})).await?;
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let status = eventually("the sidecar template is Ready", WAIT, || {
            let api = api.clone();
            async move { Ok(api.get("job").await?.status.filter(|s| s.ready.as_deref() == Some("sidecar"))) }
        })
        .await?;
        anyhow::ensure!(status.docker_host.as_deref() == Some("unix:///dind/sock/docker.sock"), "{status:?}");
        let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &ns);
        anyhow::ensure!(sts.get_opt("job").await?.is_none(), "a Sidecar-mode DindDaemon runs no StatefulSet");

        // A pod asking for its own daemon gets it, as a native sidecar before its containers.
        let mut pod = labelled_pod("own", "job");
        pod["metadata"]["labels"] = json!({"dind.dev/sidecar": "job"});
        let admitted = create_pod(&client, &ns, &pod).await?;
        let inits = admitted.spec.clone().unwrap_or_default().init_containers.unwrap_or_default();
        anyhow::ensure!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>() == ["dind-install", "dind-daemon"], "{inits:?}");
        anyhow::ensure!(inits[1].restart_policy.as_deref() == Some("Always"), "not a native sidecar");
        anyhow::ensure!(env_of(&admitted, "build") == vec![("DOCKER_HOST".into(), "unix:///dind/sock/docker.sock".into())]);

        // Each label names a DindDaemon of the matching mode, or the pod is refused saying so.
        let mut wrong = labelled_pod("wrong-sidecar", "pool");
        wrong["metadata"]["labels"] = json!({"dind.dev/sidecar": "pool"});
        let err = create_pod(&client, &ns, &wrong).await.expect_err("a Pool daemon as a sidecar").to_string();
        anyhow::ensure!(err.contains("Pool mode") && err.contains("dind.dev/inject=pool"), "{err}");
        let err = create_pod(&client, &ns, &labelled_pod("wrong-inject", "job")).await.expect_err("a Sidecar daemon's clients").to_string();
        anyhow::ensure!(err.contains("Sidecar mode") && err.contains("dind.dev/sidecar=job"), "{err}");
        let mut missing = labelled_pod("missing", "nope");
        missing["metadata"]["labels"] = json!({"dind.dev/sidecar": "nope"});
        let err = create_pod(&client, &ns, &missing).await.expect_err("a missing DindDaemon").to_string();
        anyhow::ensure!(err.contains("\"nope\"") && err.contains(&ns), "{err}");

        // A registry CA whose ConfigMap is missing would leave the pod ContainerCreating: the
        // pod is refused, naming the field.
        let cas = json!({"mode": "Sidecar", "daemon": {"registryCAs": [{"registry": "reg.corp", "configMap": "corp-ca"}]}});
        create(&client, &ns, "with-ca", cas).await?;
        let mut needs_ca = labelled_pod("needs-ca", "with-ca");
        needs_ca["metadata"]["labels"] = json!({"dind.dev/sidecar": "with-ca"});
        let err = create_pod(&client, &ns, &needs_ca).await.expect_err("a missing registry CA ConfigMap").to_string();
        anyhow::ensure!(err.contains("spec.daemon.registryCAs[0]") && err.contains("ConfigMap \"corp-ca\" not found"), "{err}");

        // The mode cannot change; sidecar storage is the pod's.
        let err = api
            .patch("job", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"spec": {"mode": "Pool"}})))
            .await
            .expect_err("mode change")
            .to_string();
        anyhow::ensure!(err.contains("mode cannot be changed"), "{err}");
        let err = create(&client, &ns, "bad", json!({"mode": "Sidecar", "storage": {"storageClassName": "fast"}}))
            .await
            .expect_err("sidecar with a storage class")
            .to_string();
        anyhow::ensure!(err.contains("Sidecar mode") && err.contains("storageClassName"), "{err}");
        Ok(())
    })
    .await;
}

/// The claim each pod of `pods` leased (`dind.dev/volume-lease`), by pod name.
async fn leases(client: &kube::Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| {
            let lease = p.metadata.annotations.as_ref()?.get("dind.dev/volume-lease")?.clone();
            Some((p.metadata.name.clone()?, lease))
        })
        .collect())
}

fn sidecar_pod(name: &str, daemon: &str) -> serde_json::Value {
    let mut pod = labelled_pod(name, daemon);
    pod["metadata"]["labels"] = json!({"dind.dev/sidecar": daemon});
    pod
}

#[tokio::test]
async fn webhook_sidecar_volume_pool_leases_each_volume_once_even_across_an_operator_kill() {
    with_namespace("webhook-pool", |client, ns| async move {
        let hook = webhook::start(&client, &ns, &[]).await?;
        create(&client, &ns, "job", json!({"mode": "Sidecar", "volumePool": {"size": 2}, "storage": {"size": "1Gi"}})).await?;
        create(&client, &ns, "strict", json!({"mode": "Sidecar", "volumePool": {"size": 1, "whenExhausted": "Refuse"}})).await?;
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        eventually("the pool's claims", WAIT, || {
            let api = api.clone();
            async move { Ok(api.get("job").await?.status.filter(|s| s.volumes.len() == 2).map(|_| ())) }
        })
        .await?;

        // Pods admitted at once, and the operator SIGKILLed while they are: no claim twice.
        let mut creates = Vec::new();
        for i in 0..6 {
            let (client, ns) = (client.clone(), ns.clone());
            creates.push(tokio::spawn(async move { create_pod(&client, &ns, &sidecar_pod(&format!("p{i}"), "job")).await.is_ok() }));
            if i == 3 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let hook = webhook::restart(&client, &ns, hook).await?;
        let admitted = futures::future::join_all(creates).await.into_iter().filter(|r| matches!(r, Ok(true))).count();
        // After the restart, more pods: the leases are found again on the claims.
        eventually("admitted again after the restart", WAIT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { Ok(create_pod(&client, &ns, &sidecar_pod(&format!("after-{}", dind_tests::suffix()), "job")).await.ok().map(|_| ())) }
        })
        .await?;
        // More pods than volumes: whatever the kill left, the pool is now exhausted.
        for i in 0..3 {
            create_pod(&client, &ns, &sidecar_pod(&format!("fill-{i}"), "job")).await?;
        }
        let held = leases(&client, &ns).await?;
        let claims: Vec<&String> = held.values().filter(|l| *l != "none").collect();
        let distinct: BTreeSet<&str> = claims.iter().map(|l| l.split('/').next().unwrap_or_default()).collect();
        anyhow::ensure!(claims.len() == distinct.len(), "a claim leased twice: {held:?} ({admitted} of 6 admitted during the kill)");
        anyhow::ensure!(held.values().any(|l| l == "none"), "the pool was exhausted: the rest ran on an emptyDir: {held:?}");

        // Every lease ends up held by a pod that exists, or ended: one taken for a pod whose
        // creation failed (the kill) ends after its grace (60 s).
        let claims_api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let orphans_end = || {
            let (claims_api, client, ns) = (claims_api.clone(), client.clone(), ns.clone());
            async move {
                let live: BTreeSet<String> = leases(&client, &ns).await?.into_values().collect();
                let claims = claims_api.list(&Default::default()).await?.items;
                let orphan = claims.iter().any(|c| {
                    let id = c.metadata.annotations.as_ref().and_then(|a| a.get("dind.dev/lease"));
                    id.is_some_and(|id| !live.contains(&format!("{}/{id}", c.metadata.name.clone().unwrap_or_default())))
                });
                Ok((!orphan).then_some(()))
            }
        };
        eventually("no lease without its pod", Duration::from_secs(100), orphans_end).await?;

        // A pod that is gone gives its volume back (the next pod gets it).
        let holder = match leases(&client, &ns).await?.into_iter().find(|(_, l)| l != "none") {
            Some((pod, _)) => pod,
            None => {
                create_pod(&client, &ns, &sidecar_pod("holder", "job")).await?;
                "holder".to_string()
            }
        };
        let lease = leases(&client, &ns).await?.remove(&holder).unwrap_or_default();
        anyhow::ensure!(lease != "none" && !lease.is_empty(), "{holder} holds no volume: {lease}");
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete(&holder, &DeleteParams::default()).await?;
        let claim = lease.split('/').next().unwrap_or_default().to_string();
        eventually("the lease of a deleted pod ends", WAIT, || {
            let claims_api = claims_api.clone();
            let claim = claim.clone();
            async move {
                let c = claims_api.get(&claim).await?;
                Ok((!c.metadata.annotations.unwrap_or_default().contains_key("dind.dev/lease")).then_some(()))
            }
        })
        .await?;
        let next = create_pod(&client, &ns, &sidecar_pod("next", "job")).await?;
        let next_lease = next.metadata.annotations.unwrap_or_default().get("dind.dev/volume-lease").cloned().unwrap_or_default();
        // (Another volume may have come free meanwhile: an orphaned lease ending after its grace.)
        anyhow::ensure!(next_lease.starts_with("job-cache-"), "the next pod got no volume although {claim} was free: {next_lease}");
        // A manifest copied from that pod (its lease annotation and all) is refused (before: it
        // got the volume next holds: two daemons, one volume).
        let mut copy = sidecar_pod("copy", "job");
        copy["metadata"]["annotations"] = json!({"dind.dev/volume-lease": next_lease, "dind.dev/sidecar-injected": "job"});
        let err = create_pod(&client, &ns, &copy).await.expect_err("a copied lease").to_string();
        anyhow::ensure!(err.contains("the volume lease of pod next"), "{err}");
        let status = api.get("job").await?.status.unwrap_or_default();
        anyhow::ensure!(
            status.volumes.iter().any(|v| v.name == claim) || status.volumes.len() == 2,
            "status shows the pool: {:?}",
            status.volumes
        );

        // A dry run (kubectl create --dry-run=server) shows the lease it would take, and takes none.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        let dry: k8s_openapi::api::core::v1::Pod = serde_json::from_value(sidecar_pod("s0", "strict"))?;
        let shown = pods.create(&kube::api::PostParams { dry_run: true, ..Default::default() }, &dry).await?;
        let shown_lease = shown.metadata.annotations.unwrap_or_default().get("dind.dev/volume-lease").cloned().unwrap_or_default();
        anyhow::ensure!(shown_lease.starts_with("strict-cache-0/"), "a dry run shows the volume it would lease: {shown_lease:?}");
        let claim = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns).get("strict-cache-0").await?;
        anyhow::ensure!(
            !claim.metadata.annotations.unwrap_or_default().contains_key("dind.dev/lease"),
            "a dry run leased strict-cache-0 for real"
        );

        // Refuse when exhausted: the second pod of a one-volume pool.
        create_pod(&client, &ns, &sidecar_pod("s1", "strict")).await?;
        let err = create_pod(&client, &ns, &sidecar_pod("s2", "strict")).await.expect_err("exhausted pool, Refuse").to_string();
        anyhow::ensure!(err.contains("strict") && err.contains("Refuse"), "{err}");
        drop(hook);
        Ok(())
    })
    .await;
}
