//! The negative suite (issue 24): a tenant, user `alice` bound to Kubernetes' built-in `edit`
//! role in her team's namespace (and in one the operator does not serve), tries what she must
//! not achieve on a cluster where the chart is installed with a platform team's settings. Each
//! attempt is refused (by the apiserver's RBAC, the CRD's schema, the chart's policy or the
//! webhook), or is shown to have no effect. The list is in docs/security.md ("What a tenant can and cannot do").
//!
//! Alice is impersonated (`Impersonate-User`) by the admin client: a real kubeconfig identity,
//! authorized by the apiserver as alice alone.

use anyhow::Context as _;
use dind_tests::{admin_config, eventually, kubectl_apply, registry};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::*;

/// kubectl as alice (impersonated by the harness's admin kubeconfig).
async fn run_tool_as_alice(args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["--as", "alice", "--as-group", "system:authenticated"];
    all.extend_from_slice(args);
    dind_tests::run_tool("kubectl", &all).await
}

/// One attempt's outcome, as the suite judges it.
fn refused<T: std::fmt::Debug>(what: &str, outcome: Result<T, kube::Error>, needle: &str) -> Result<(), String> {
    match outcome {
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.message.contains(needle) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("{what}: refused, but not for the reason expected ({needle:?}): {} {}", s.code, s.message)),
        Err(e) => Err(format!("{what}: failed otherwise: {e}")),
        Ok(v) => Err(format!("{what}: ACHIEVED: {v:?}")),
    }
}

fn object<K: k8s_openapi::serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

#[tokio::test]
async fn e2e_a_tenant_with_edit_rights_achieves_none_of_the_forbidden_things() {
    require_node();
    with_namespace("e2e-tenant", |client, ns| async move {
        let builds = format!("{ns}-builds");
        let other = format!("{ns}-other");
        let unserved = format!("{ns}-unserved");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for (name, injection) in [(&builds, true), (&other, true), (&unserved, false)] {
            let labels = if injection { json!({"dind.dev/injection": "enabled"}) } else { json!({}) };
            namespaces.create(&PostParams::default(), &object(json!({"metadata": {"name": name, "labels": labels}}))).await?;
        }
        let outcome = async {
            let prefix = format!("allowedImagePrefixes={{{}/}}", registry().unwrap_or_else(|| "registry.corp".into()));
            let policy_prefix = format!("policy.{prefix}");
            install_operator_with(
                &client,
                &ns,
                &format!("{builds},{other}"),
                // Teams manage their own DindDaemons here (off by default: grants instead).
                &[policy_prefix.as_str(), "placement.allowedTolerationKeys={dind.dev/pool}", "tenantRbac.editRights=true"],
            )
            .await?;
            suite(&client, &ns, &builds, &other, &unserved).await
        }
        .await;
        for name in [&builds, &other, &unserved] {
            let _ = namespaces.delete(name, &DeleteParams::background()).await;
        }
        outcome
    })
    .await;
}

async fn suite(client: &Client, ns: &str, builds: &str, other: &str, unserved: &str) -> anyhow::Result<()> {
    // The other team: a Sidecar DindDaemon with a warm volume, a pool (scaled to zero: its
    // Service and NetworkPolicy are there, no daemon runs), and a Secret of theirs.
    kubectl_apply(
        other,
        "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: theirs}\nspec: {mode: Sidecar, volumePool: {size: 1}}\n",
    )
    .await?;
    kubectl_apply(other, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: their-pool}\nspec: {replicas: 0}\n").await?;
    kubectl_apply(builds, "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: pool}\nspec: {replicas: 0}\n").await?;
    Api::<Secret>::namespaced(client.clone(), other)
        .create(&PostParams::default(), &object(json!({"metadata": {"name": "their-token"}, "stringData": {"token": "s3cret"}})))
        .await?;
    // Alice's team: a Sidecar DindDaemon with one warm volume.
    kubectl_apply(
        builds,
        "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: job}\nspec: {mode: Sidecar, volumePool: {size: 1}}\n",
    )
    .await?;
    eventually("the pools' volumes", READY, || async {
        let theirs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), other).list(&ListParams::default()).await?.items.len();
        let ours = Api::<PersistentVolumeClaim>::namespaced(client.clone(), builds).list(&ListParams::default()).await?.items.len();
        let policies = Api::<NetworkPolicy>::namespaced(client.clone(), other).list(&ListParams::default()).await?.items.len()
            * Api::<NetworkPolicy>::namespaced(client.clone(), builds).list(&ListParams::default()).await?.items.len();
        Ok((theirs == 1 && ours == 1 && policies > 0).then_some(()))
    })
    .await?;
    // Alice: `edit` in her team's namespace and in one no operator serves.
    for namespace in [builds, unserved] {
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .create(
                &PostParams::default(),
                &object(json!({"metadata": {"name": "alice-edit"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]})),
            )
            .await?;
    }
    let mut config = admin_config().await?;
    config.auth_info.impersonate = Some("alice".into());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".into()]);
    let alice = Client::try_from(config)?;
    // The aggregated `edit` rules reach alice (the controller-manager aggregates them).
    let dds: Api<DindDaemon> = Api::namespaced(alice.clone(), builds);
    eventually("alice may create DindDaemons", Duration::from_secs(60), || {
        let dds = dds.clone();
        async move { Ok(dds.list(&ListParams::default()).await.ok().map(|_| ())) }
    })
    .await?;

    let mut failures = Vec::new();
    let mut checked = Vec::new();
    let mut note = |what: &str, result: Result<(), String>| {
        checked.push(what.to_string());
        if let Err(e) = result {
            failures.push(e);
        }
    };

    // --- DindDaemons beyond the platform's policy (the chart's ValidatingAdmissionPolicy, the CRD).
    let n = std::sync::atomic::AtomicU32::new(0);
    let create_dd = |namespace: &str, spec: Value| {
        let api: Api<DindDaemon> = Api::namespaced(alice.clone(), namespace);
        let name = format!("t{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        async move {
            let dd: DindDaemon =
                object(json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name}, "spec": spec}));
            api.create(&PostParams::default(), &dd).await.map(|d| d.metadata.name)
        }
    };
    let control_plane = "node-role.kubernetes.io/control-plane";
    let policy_cases: Vec<(&str, Value, &str)> = vec![
        (
            "1. a daemon image from a registry the platform did not allow",
            json!({"image": "evil.example/docker:dind"}),
            "allowedImagePrefixes",
        ),
        (
            "2. an initImage from a registry the platform did not allow",
            json!({"initImage": "evil.example/dind-init"}),
            "allowedImagePrefixes",
        ),
        ("3. TLS off (a daemon anyone who reaches it owns)", json!({"tls": {"enabled": false}, "port": 2375}), "allowTlsDisabled"),
        ("4. a runtime class the platform did not allow", json!({"security": {"runtimeClassName": "unconfined"}}), "allowedRuntimeClasses"),
        ("5. a daemon on a control-plane node by nodeSelector", json!({"nodeSelector": {control_plane: ""}}), "forbiddenNodeLabels"),
        (
            "6. a daemon on a control-plane node by required node affinity",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": control_plane, "operator": "Exists"}]}]}}}}),
            "forbiddenNodeLabels",
        ),
        ("7. a daemon tolerating every taint", json!({"tolerations": [{"operator": "Exists"}]}), "forbiddenNodeLabels"),
        (
            "8. a daemon tolerating a taint key the platform did not allow",
            json!({"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}),
            "allowedTolerationKeys",
        ),
        (
            "9. dockerd listening without TLS through extraArgs",
            json!({"daemon": {"extraArgs": ["--host=tcp://0.0.0.0:2375"]}}),
            "extraArgs",
        ),
        ("10. dockerd hosts through daemon.json", json!({"daemon": {"config": {"hosts": ["tcp://0.0.0.0:2375"]}}}), "spec.daemon.config"),
        ("11. TLS off through daemon.json", json!({"daemon": {"config": {"tls": false}}}), "spec.daemon.config"),
    ];
    for (what, spec, needle) in policy_cases {
        note(what, refused(what, create_dd(builds, spec).await, needle));
    }
    note("12. a DindDaemon in a namespace no operator serves", refused("12", create_dd(unserved, json!({})).await, "watchNamespaces"));
    // 13. A hostPath volume: the CRD has no such field, and a strict create (kubectl's default
    // --validate=strict) is refused naming it.
    let manifest = std::env::temp_dir().join(format!("dind-tenant-hostpath-{}.yaml", dind_tests::suffix()));
    std::fs::write(
        &manifest,
        "apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {name: hostpath}\nspec: {volumes: [{name: root, hostPath: {path: /}}]}\n",
    )?;
    let strict = run_tool_as_alice(&["create", "-n", builds, "--validate=strict", "-f", &manifest.to_string_lossy()]).await;
    let _ = std::fs::remove_file(&manifest);
    note(
        "13. a hostPath volume in a DindDaemon",
        match strict {
            Err(e) if e.to_string().contains("unknown field \"spec.volumes\"") => Ok(()),
            other => Err(format!("13: {other:?}")),
        },
    );

    // --- What edit does not reach (RBAC).
    let status_patch = Api::<DindDaemon>::namespaced(alice.clone(), builds)
        .patch_status("job", &PatchParams::default(), &Patch::Merge(json!({"status": {"readyReplicas": 9}})))
        .await;
    note("14. writing a DindDaemon's status (Ready as she likes)", refused("14", status_patch, "forbidden"));
    note(
        "15. reading another team's Secret",
        refused("15", Api::<Secret>::namespaced(alice.clone(), other).get("their-token").await, "forbidden"),
    );
    note(
        "16. reading another team's DindDaemon",
        refused("16", Api::<DindDaemon>::namespaced(alice.clone(), other).get("theirs").await, "forbidden"),
    );
    note(
        "17. deleting another team's pool volume",
        refused(
            "17",
            Api::<PersistentVolumeClaim>::namespaced(alice.clone(), other).delete("theirs-cache-0", &DeleteParams::default()).await,
            "forbidden",
        ),
    );
    note(
        "18. deleting the operator",
        refused(
            "18",
            Api::<Deployment>::namespaced(alice.clone(), ns).delete("op-dind-operator", &DeleteParams::default()).await,
            "forbidden",
        ),
    );
    note(
        "19. reading the webhook's serving key",
        refused("19", Api::<Secret>::namespaced(alice.clone(), ns).get("op-dind-operator-webhook-tls").await, "forbidden"),
    );
    note(
        "20. taking the operator's leader Lease",
        refused(
            "20",
            Api::<Lease>::namespaced(alice.clone(), ns)
                .patch("op-dind-operator", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holderIdentity": "alice"}})))
                .await,
            "forbidden",
        ),
    );
    let mwc = ApiResource::erase::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>(&());
    note(
        "21. turning the injection webhook off",
        refused(
            "21",
            Api::<DynamicObject>::all_with(alice.clone(), &mwc).delete("op-dind-operator", &DeleteParams::default()).await,
            "forbidden",
        ),
    );
    let vap = ApiResource::erase::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>(&());
    note(
        "22. unbinding the platform's policy",
        refused(
            "22",
            Api::<DynamicObject>::all_with(alice.clone(), &vap).delete("op-dind-operator-policy", &DeleteParams::default()).await,
            "forbidden",
        ),
    );
    note(
        "23. relabelling her namespace (injection, Pod Security)",
        refused(
            "23",
            Api::<Namespace>::all(alice.clone())
                .patch(builds, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"dind.dev/injection": "disabled"}}})))
                .await,
            "forbidden",
        ),
    );
    let crb: ClusterRoleBinding = object(json!({"metadata": {"name": format!("alice-admin-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}));
    note(
        "24. granting herself cluster-admin",
        refused("24", Api::<ClusterRoleBinding>::all(alice.clone()).create(&PostParams::default(), &crb).await, "forbidden"),
    );
    let review: SelfSubjectAccessReview = object(json!({"spec": {"resourceAttributes": {
        "verb": "impersonate", "resource": "serviceaccounts", "namespace": ns, "name": "op-dind-operator"}}}));
    let answer = Api::<SelfSubjectAccessReview>::all(alice.clone()).create(&PostParams::default(), &review).await?;
    note(
        "25. acting as the operator's ServiceAccount",
        if answer.status.is_some_and(|s| !s.allowed) { Ok(()) } else { Err("25: alice may impersonate the operator".into()) },
    );

    // --- Pods the webhook refuses.
    let pods: Api<Pod> = Api::namespaced(alice.clone(), builds);
    let pod = |name: &str, labels: Value, extra: Value| -> Pod {
        let mut p = json!({"metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never", "nodeSelector": {"dind.dev/nowhere": "true"},
                "containers": [{"name": "build", "image": CLIENT_IMAGE, "command": ["docker", "version"]}]}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            p["spec"][k] = v.clone();
        }
        object(p)
    };
    let create = |p: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &p).await.map(|p| p.metadata.name) }
    };
    note(
        "26. Docker from another team's daemon (pool label)",
        refused("26", create(pod("p26", json!({"dind.dev/inject": "theirs"}), json!({}))).await, "not found in namespace"),
    );
    note(
        "27. a sidecar of another team's daemon",
        refused("27", create(pod("p27", json!({"dind.dev/sidecar": "theirs"}), json!({}))).await, "not found in namespace"),
    );
    note(
        "28. a sidecar dockerd in the node's network namespace",
        refused("28", create(pod("p28", json!({"dind.dev/sidecar": "job"}), json!({"hostNetwork": true}))).await, "hostNetwork"),
    );
    note(
        "29. a sidecar pod tolerating a taint the platform did not allow",
        refused(
            "29",
            create(pod(
                "p29",
                json!({"dind.dev/sidecar": "job"}),
                json!({"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}),
            ))
            .await,
            "allowedTolerationKeys",
        ),
    );
    // 30. A copied lease: the first pod (pending: no node matches) holds the only warm volume;
    // a second brings its lease annotation.
    let first = pods.create(&PostParams::default(), &pod("holder", json!({"dind.dev/sidecar": "job"}), json!({}))).await?;
    let lease = first.metadata.annotations.unwrap_or_default().get("dind.dev/volume-lease").cloned().context("the holder's lease")?;
    let mut copy = pod("copy", json!({"dind.dev/sidecar": "job"}), json!({}));
    copy.metadata.annotations = Some([("dind.dev/volume-lease".to_string(), lease)].into());
    note("30. a volume another job holds, by copying its lease", refused("30", create(copy).await, "leases are the webhook's"));

    // 33. A forged AdmissionReview straight to a webhook replica (as a pod that reaches its port
    // could post one, to lease another team's warm volumes): without the apiserver's client
    // certificate a caller reaches only the certificate route (pods' certificate sidecars call
    // it, with their token), so the review is not answered (404); with it, it is.
    let operator_ip = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=dind-operator"))
        .await?
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .context("an operator pod IP")?;
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "forged", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE", "namespace": builds,
        "object": {"metadata": {"name": "forged", "namespace": builds, "labels": {"dind.dev/sidecar": "job"}},
            "spec": {"containers": [{"name": "build", "image": CLIENT_IMAGE}]}}}});
    let (_, cert, key) = dind_tests::webhook_client_ca()?;
    let forge = |with_cert: bool| {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json"]);
        if with_cert {
            curl.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        curl.args(["--data", &review.to_string(), &format!("https://{operator_ip}:9443/sidecar")]).output()
    };
    let forged = forge(false)?;
    let apiserver = forge(true)?;
    note(
        "33. a forged AdmissionReview posted to the webhook (no apiserver certificate)",
        match (String::from_utf8_lossy(&forged.stdout).as_ref(), String::from_utf8_lossy(&apiserver.stdout).as_ref()) {
            (without, "200") if without != "200" => Ok(()),
            (without, with_cert) => Err(format!("33: without the certificate: HTTP {without}; with it: HTTP {with_cert}")),
        },
    );

    // --- What has no effect (asserted on the objects: this cluster's network plugin does not enforce).
    let theirs_np = Api::<NetworkPolicy>::namespaced(client.clone(), other).list(&ListParams::default()).await?;
    let peers = serde_json::to_value(&theirs_np.items)?.to_string();
    note(
        "31. reaching another team's daemon by labelling a pod dind.dev/client (their NetworkPolicy admits only their namespace and the operator's)",
        if !theirs_np.items.is_empty() && !peers.contains(builds) { Ok(()) } else { Err(format!("31: their NetworkPolicy: {peers}")) },
    );
    let ours_np = Api::<NetworkPolicy>::namespaced(client.clone(), builds).list(&ListParams::default()).await?;
    let operator_peer = serde_json::to_value(&ours_np.items)?.to_string();
    note(
        "32. posing as the operator by its pod labels (the NetworkPolicy admits the operator's pods of its namespace only)",
        if operator_peer.contains(&format!("\"{ns}\"")) { Ok(()) } else { Err(format!("32: {operator_peer}")) },
    );

    eprintln!("tenant suite: {} attempts:\n  {}", checked.len(), checked.join("\n  "));
    anyhow::ensure!(failures.is_empty(), "the tenant achieved or was refused wrongly:\n{}", failures.join("\n"));
    anyhow::ensure!(checked.len() >= 30, "only {} attempts", checked.len());
    Ok(())
}
