//! Status and the daemons' pods: readiness, disks and volumes, pod security, drains, egress.

use anyhow::{Context as _, ensure};
use dind_operator::crd::DindDaemon;
use dind_tests::operator::{WAIT, condition, create, mark_pod_ready, no_node, owned_objects, pod_created};
use dind_tests::{Operator, eventually, run_tool, with_namespace};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[tokio::test]
async fn status_turns_ready_when_daemon_pods_are_ready_readiness_set_by_the_test_without_a_kubelet() {
    with_namespace("ready", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        // Kept off any node: where the harness runs a kubelet (tests/run.sh), it would own the
        // pod's status and overwrite the readiness this test sets.
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pod_created(&client, &ns, "ci-0").await?;
        mark_pod_ready(&client, &ns, "ci-0").await?;
        // kubectl wait is how users (and CI scripts) wait for a daemon.
        run_tool("kubectl", &["wait", "-n", &ns, "--for=condition=Ready", "dind/ci", "--timeout=60s"]).await?;
        let dd = Api::<DindDaemon>::namespaced(client.clone(), &ns).get("ci").await?;
        let status = dd.status.context("status")?;
        ensure!(status.ready_replicas == 1 && status.ready.as_deref() == Some("1/1"), "{status:?}");
        ensure!(status.endpoints.len() == 1 && status.endpoints[0].ready);
        let events = run_tool(
            "kubectl",
            &["get", "events", "-n", &ns, "--field-selector", "involvedObject.name=ci", "-o", "jsonpath={.items[*].reason}"],
        )
        .await?;
        ensure!(events.contains("CertificatesIssued") && events.contains("DaemonReady"), "events: {events}");

        // A pod of someone else's that mounts the daemon's volume makes it Degraded, naming it.
        let thief: Pod = serde_json::from_value(json!({
            "metadata": {"name": "thief"},
            "spec": {"nodeSelector": no_node(), "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "docker-ci-0"}}]}
        }))?;
        pods.create(&PostParams::default(), &thief).await?;
        let degraded =
            condition(&client, &ns, "ci", "Degraded names the intruder", WAIT, |c| c.type_ == "Degraded" && c.status == "True").await?;
        ensure!(degraded.reason == "VolumeInUse" && degraded.message.contains("thief"), "{degraded:?}");
        Ok(())
    })
    .await;
}

/// Measured before: an ephemeral daemon's emptyDir had no size limit and daemon pods requested
/// nothing, so one build could fill the node's disk (other tenants' pods evicted) on a node the
/// scheduler thought empty. Now the emptyDir is limited (default 20Gi, `storage.size`) and the
/// daemon requests `cpu: 100m`, `memory: 256Mi` unless `spec.resources` says otherwise.
#[tokio::test]
async fn daemons_have_a_bounded_disk_and_default_requests() {
    with_namespace("bounded", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "scratch", json!({"nodeSelector": no_node(), "storage": {"ephemeral": true}})).await?;
        create(
            &client,
            &ns,
            "sized",
            json!({"nodeSelector": no_node(), "storage": {"ephemeral": true, "size": "2Gi"},
            "resources": {"requests": {"cpu": "1"}}}),
        )
        .await?;
        for (name, limit, cpu, memory) in [("scratch", "20Gi", Some("100m"), Some("256Mi")), ("sized", "2Gi", Some("1"), None)] {
            let sts = owned_objects(&client, &ns, name).await?;
            let pod = sts.spec.and_then(|s| s.template.spec).context("pod template")?;
            let data = pod.volumes.iter().flatten().find(|v| v.name == "docker").context("data volume")?;
            let size_limit = data.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()).map(|q| q.0.as_str());
            ensure!(size_limit == Some(limit), "{name}: emptyDir sizeLimit {size_limit:?}");
            let requests = pod.containers[0].resources.clone().and_then(|r| r.requests).unwrap_or_default();
            let get = |k: &str| requests.get(k).map(|q| q.0.clone());
            ensure!(get("cpu").as_deref() == cpu && get("memory").as_deref() == memory, "{name}: requests {requests:?}");
        }
        Ok(())
    })
    .await;
}

/// Measured before: `storage.size` could not change at all (the StatefulSet's claim templates
/// are immutable, so the CRD refused it). Now a raise grows each daemon's claim where the
/// StorageClass allows expansion, leaving the StatefulSet (so the pods and their caches) as
/// they are; where it does not, `Degraded/VolumeNotExpandable` names the claim, and setting the
/// size back clears it.
#[tokio::test]
async fn a_raised_storage_size_grows_the_claims_where_the_class_allows_it() {
    with_namespace("grow", |client: Client, ns: String| async move {
        let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
        let (expandable, fixed) = (format!("{ns}-expandable"), format!("{ns}-fixed"));
        for (name, allow) in [(&expandable, true), (&fixed, false)] {
            let class = json!({"metadata": {"name": name}, "provisioner": "kubernetes.io/host-path",
                "volumeBindingMode": "Immediate", "allowVolumeExpansion": allow});
            classes.create(&PostParams::default(), &serde_json::from_value(class)?).await?;
        }
        let outcome = async {
            let _op = Operator::start(&ns, &[])?;
            // A build-cache target in bytes: a percentage of the size would change with it, and
            // so would the daemons' configuration (one rolling restart to apply it).
            for (name, class) in [("grow", &expandable), ("stuck", &fixed)] {
                let spec = json!({"nodeSelector": no_node(), "storage": {"size": "1Gi", "storageClassName": class}, "cache": {"buildCacheKeep": "512Mi"}});
                create(&client, &ns, name, spec).await?;
            }
            let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            for claim in ["docker-grow-0", "docker-stuck-0"] {
                eventually(&format!("{claim} bound"), WAIT, || {
                    let claims = claims.clone();
                    async move {
                        let c = claims.get_opt(claim).await?;
                        Ok(c.and_then(|c| c.status).and_then(|s| s.phase).filter(|p| p == "Bound").map(|_| ()))
                    }
                })
                .await?;
            }
            let sts_before = owned_objects(&client, &ns, "grow").await?;
            let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
            let raise = |size: &str| json!({"spec": {"storage": {"size": size}}});
            for name in ["grow", "stuck"] {
                api.patch(name, &PatchParams::default(), &Patch::Merge(&raise("2Gi"))).await?;
            }
            let requested = |claim: &'static str| {
                let claims = claims.clone();
                async move {
                    let c = claims.get(claim).await?;
                    Ok::<_, anyhow::Error>(
                        c.spec.and_then(|s| s.resources).and_then(|r| r.requests).and_then(|r| r.get("storage").cloned()).map(|q| q.0),
                    )
                }
            };
            eventually("docker-grow-0 raised to 2Gi", WAIT, || async { Ok(requested("docker-grow-0").await?.filter(|q| q == "2Gi")) })
                .await?;
            let progressing = condition(&client, &ns, "grow", "Progressing/VolumeExpanding", WAIT, |c| {
                c.type_ == "Progressing" && c.reason == "VolumeExpanding"
            })
            .await?;
            ensure!(progressing.message.contains("docker-grow-0"), "{progressing:?}");
            let sts_after = owned_objects(&client, &ns, "grow").await?;
            let template = sts_after.spec.as_ref().and_then(|s| s.volume_claim_templates.as_ref()).and_then(|t| t.first()).cloned();
            let template_size = template.and_then(|t| t.spec?.resources?.requests?.get("storage").cloned()).map(|q| q.0);
            ensure!(template_size.as_deref() == Some("1Gi"), "the claim template (immutable) changed: {template_size:?}");
            ensure!(
                sts_after.metadata.generation == sts_before.metadata.generation,
                "the StatefulSet changed ({:?} -> {:?}): its pods would restart",
                sts_before.metadata.generation,
                sts_after.metadata.generation
            );

            let degraded = condition(&client, &ns, "stuck", "Degraded/VolumeNotExpandable", WAIT, |c| {
                c.type_ == "Degraded" && c.reason == "VolumeNotExpandable"
            })
            .await?;
            ensure!(degraded.message.contains("docker-stuck-0") && degraded.message.contains("allowVolumeExpansion"), "{degraded:?}");
            ensure!(requested("docker-stuck-0").await?.as_deref() == Some("1Gi"), "the fixed claim changed");
            api.patch("stuck", &PatchParams::default(), &Patch::Merge(&raise("1Gi"))).await?;
            condition(&client, &ns, "stuck", "Degraded cleared by the size set back", WAIT, |c| {
                c.type_ == "Degraded" && c.status == "False"
            })
            .await?;
            api.patch("stuck", &PatchParams::default(), &Patch::Merge(&raise("512Mi"))).await?;
            let shrink = condition(&client, &ns, "stuck", "Degraded for a shrink", WAIT, |c| {
                c.type_ == "Degraded" && c.reason == "VolumeNotExpandable"
            })
            .await?;
            ensure!(shrink.message.contains("do not shrink"), "{shrink:?}");
            Ok(())
        }
        .await;
        for name in [&expandable, &fixed] {
            let _ = classes.delete(name, &DeleteParams::default()).await;
        }
        outcome
    })
    .await;
}

/// Measured before: in a namespace whose Pod Security Admission level is `baseline`, the
/// StatefulSet's daemon pods were refused and the DindDaemon just never became ready (the
/// refusal only in the StatefulSet's events). Now it is `Degraded/PodsRefused` with the
/// apiserver's words and the label the namespace needs; with that label the pods are made.
#[tokio::test]
async fn pods_refused_by_pod_security_admission_are_a_condition_with_the_fix() {
    with_namespace("psa", |client: Client, ns: String| async move {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let label = |level: &str| json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}});
        namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label("baseline"))).await?;
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        let degraded = condition(&client, &ns, "ci", "Degraded/PodsRefused", WAIT, |c| {
            c.type_ == "Degraded" && c.status == "True" && c.reason == "PodsRefused"
        })
        .await?;
        ensure!(
            degraded.message.contains("PodSecurity") && degraded.message.contains("pod-security.kubernetes.io/enforce=privileged"),
            "{}",
            degraded.message
        );
        namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label("privileged"))).await?;
        pod_created(&client, &ns, "ci-0").await?;
        condition(&client, &ns, "ci", "Degraded no longer PodsRefused", WAIT, |c| c.type_ == "Degraded" && c.reason != "PodsRefused")
            .await?;
        Ok(())
    })
    .await;
}

/// Measured before: no PodDisruptionBudget, so a drain could evict every daemon of a
/// DindDaemon at once. Now a budget of one: with both daemons ready, the first eviction is
/// allowed and the second refused (429) while the first is gone. Readiness set by the test.
#[tokio::test]
async fn a_drain_evicts_one_daemon_at_a_time_readiness_set_by_the_test_without_a_kubelet() {
    with_namespace("budget", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node(), "replicas": 2})).await?;
        owned_objects(&client, &ns, "ci").await?;
        for pod in ["ci-0", "ci-1"] {
            pod_created(&client, &ns, pod).await?;
        }
        let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        let budget = budgets.get("ci").await?;
        ensure!(budget.owner_references().first().map(|r| r.kind.as_str()) == Some("DindDaemon"), "budget not owned");
        // The node lifecycle controller marks pods of a node without heartbeats NotReady on
        // every pod update (seen: this test failed when it did so between the two evictions,
        // as an unready daemon may always be evicted): the test heartbeats the no-kubelet node.
        eventually("the budget allows one disruption", WAIT, || {
            let (budgets, client, ns) = (budgets.clone(), client.clone(), ns.clone());
            async move {
                // (Marking a pod ready makes the node on a fresh cluster: mark, beat, mark.)
                mark_pod_ready(&client, &ns, "ci-0").await?;
                heartbeat_the_no_kubelet_node(&client).await?;
                for pod in ["ci-0", "ci-1"] {
                    mark_pod_ready(&client, &ns, pod).await?;
                }
                Ok(budgets.get("ci").await?.status.filter(|s| s.current_healthy == 2 && s.disruptions_allowed == 1).map(|_| ()))
            }
        })
        .await?;
        // kube's client retries a 429 (with the server's Retry-After, up to 15 times): the
        // refusal is what is tested here, so this client does not retry.
        let mut config = dind_tests::admin_config().await?;
        config.default_retry = false;
        let pods: Api<Pod> = Api::namespaced(Client::try_from(config)?, &ns);
        let evict = |pod: &'static str| {
            let pods = pods.clone();
            async move { pods.evict(pod, &kube::api::EvictParams::default()).await }
        };
        evict("ci-0").await.context("the first eviction")?;
        let second = evict("ci-1").await;
        ensure!(matches!(&second, Err(kube::Error::Api(s)) if s.code == 429), "the second eviction: {second:?}");
        // No kubelet finishes the evicted pod: delete both at once so the namespace can go.
        for pod in ["ci-0", "ci-1"] {
            let _ = pods.delete(pod, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
        }
        // Down to one daemon: the budget made with two is kept (the operator deletes nothing),
        // and a DindDaemon that never had more than one gets none (it would allow every
        // eviction anyway).
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.patch("ci", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await?;
        create(&client, &ns, "solo", json!({"nodeSelector": no_node()})).await?;
        owned_objects(&client, &ns, "solo").await?;
        eventually("ci's status of one replica", WAIT, || {
            let api = api.clone();
            async move { Ok(api.get("ci").await?.status.filter(|s| s.ready.as_deref().is_some_and(|r| r.ends_with("/1"))).map(|_| ())) }
        })
        .await?;
        ensure!(budgets.get_opt("ci").await?.is_some(), "ci's budget went with its second replica");
        ensure!(budgets.get_opt("solo").await?.is_none(), "a single daemon got a budget");
        Ok(())
    })
    .await;
}

/// `spec.egress.restricted`: the daemon's NetworkPolicy gains egress rules the apiserver
/// accepts (each denied CIDR an exception inside its allowed block), and loses them when the
/// restriction is lifted. (Enforcement is the network plugin's; the harness's bridge does not
/// enforce NetworkPolicy: see docs/pool-mode.md, "Egress".)
#[tokio::test]
async fn a_restricted_egress_denies_the_metadata_service_in_the_network_policy() {
    with_namespace("egress", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node(), "egress": {"restricted": true}})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let np = policies.get("ci").await?.spec.context("spec")?;
        ensure!(np.policy_types.as_deref() == Some(&["Ingress".to_string(), "Egress".to_string()][..]), "{:?}", np.policy_types);
        let egress = serde_json::to_value(&np.egress)?;
        ensure!(egress[0]["to"][0]["ipBlock"] == json!({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}), "{egress}");
        // DNS too: port 53 of the metadata service is not open (before: DNS to any address).
        ensure!(egress[1]["ports"][0]["port"] == 53, "{egress}");
        ensure!(egress[1]["to"][0]["ipBlock"] == json!({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}), "{egress}");
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"egress": {"restricted": false}}}))).await?;
        eventually("egress rules removed", WAIT, || {
            let policies = policies.clone();
            async move {
                Ok(policies
                    .get("ci")
                    .await?
                    .spec
                    .filter(|s| s.egress.is_none() && s.policy_types.as_ref().is_some_and(|t| t.len() == 1))
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

/// Posts a Ready condition with a fresh heartbeat on the node no kubelet serves (see
/// `mark_pod_ready`), so for the next ~40 s the node lifecycle controller leaves its pods' Ready
/// conditions alone.
async fn heartbeat_the_no_kubelet_node(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "TestHeartbeat",
        "message": "heartbeat posted by a test", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes.patch_status(dind_tests::operator::NO_KUBELET_NODE, &PatchParams::default(), &Patch::Strategic(&status)).await?;
    Ok(())
}
