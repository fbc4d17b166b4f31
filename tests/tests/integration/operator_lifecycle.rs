//! The operator's life: SIGTERM, deletion and garbage collection, a SIGKILL mid-reconcile,
//! leader election between two replicas.

use std::time::Duration;

use anyhow::ensure;
use dind_operator::crd::DindDaemon;
use dind_tests::operator::{WAIT, create, owned_objects, pvc_names, secret_text};
use dind_tests::{Operator, eventually, with_namespace};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// SIGTERM while the apiserver does not answer (here: a port that accepts and never speaks)
/// still ends the operator, after its 20 s shutdown grace and before the pod's default 30 s
/// grace period — and before the client's own 30 s connect timeout could end it instead.
#[tokio::test]
async fn sigterm_ends_the_operator_even_when_the_apiserver_hangs() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let kubeconfig = std::env::temp_dir().join(format!("dind-silent-kubeconfig-{}", dind_tests::suffix()));
    let server = format!("https://{}", silent.local_addr().expect("addr"));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: none}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("write kubeconfig");
    let mut op = Operator::start_with_kubeconfig(&kubeconfig, "any", &[]).expect("start");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&kubeconfig);
    let started = std::time::Instant::now();
    let status = op.terminate(Duration::from_secs(28)).expect("terminate");
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert_eq!(status.code(), Some(1), "exit after the grace is an error exit");
    assert!(took >= Duration::from_secs(19), "exited after {took:?}: not by the shutdown grace");
    drop(silent);
}

#[tokio::test]
async fn deleting_removes_every_owned_object_and_keeps_volumes_only_with_retain_on_delete() {
    with_namespace("delete", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "gone", json!({})).await?;
        create(&client, &ns, "kept", json!({"storage": {"retainOnDelete": true}})).await?;
        owned_objects(&client, &ns, "gone").await?;
        owned_objects(&client, &ns, "kept").await?;
        // The StatefulSet controller makes one claim per daemon from the template.
        eventually("claims created", WAIT, || {
            let c = client.clone();
            let ns = ns.clone();
            async move {
                let names = pvc_names(&c, &ns).await?;
                Ok((names.contains(&"docker-gone-0".to_string()) && names.contains(&"docker-kept-0".to_string())).then_some(()))
            }
        })
        .await?;
        // The StatefulSet controller marks a claim for deletion with the StatefulSet (an owner
        // reference) right after creating it; that write can lose a conflict with the volume
        // binder and is retried on the StatefulSet's next sync. A StatefulSet deleted before
        // then leaves its claim behind (Kubernetes' behaviour, seen once in CI): wait for the
        // mark, as any daemon older than a second has it.
        eventually("claim docker-gone-0 marked for deletion with its StatefulSet", WAIT, || {
            let c = client.clone();
            let ns = ns.clone();
            async move {
                let claim = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(c, &ns).get("docker-gone-0").await?;
                Ok(claim.metadata.owner_references.unwrap_or_default().iter().any(|o| o.kind == "StatefulSet").then_some(()))
            }
        })
        .await?;
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.delete("gone", &DeleteParams::foreground()).await?;
        api.delete("kept", &DeleteParams::foreground()).await?;
        eventually("owned objects collected", Duration::from_secs(90), || {
            let c = client.clone();
            let ns = ns.clone();
            async move {
                let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns).list(&ListParams::default()).await?.items.len();
                let svc = Api::<Service>::namespaced(c.clone(), &ns)
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=dind-operator"))
                    .await?
                    .items
                    .len();
                let sec = Api::<Secret>::namespaced(c.clone(), &ns)
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=dind-operator"))
                    .await?
                    .items
                    .len();
                let np = Api::<NetworkPolicy>::namespaced(c.clone(), &ns).list(&ListParams::default()).await?.items.len();
                let pvcs = pvc_names(&c, &ns).await?;
                Ok((sts + svc + sec + np == 0 && pvcs == ["docker-kept-0"]).then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn operator_killed_mid_reconcile_converges_without_duplicates_and_keeps_certificates() {
    with_namespace("restart", |client: Client, ns: String| async move {
        let count = 12;
        let mut op = Operator::start(&ns, &[])?;
        for i in 0..count {
            create(&client, &ns, &format!("d{i}"), json!({})).await?;
        }
        // Kill it while it is part-way through the batch.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        eventually("some certificates made", WAIT, || {
            let secrets = secrets.clone();
            async move {
                Ok((!secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=dind-operator")).await?.items.is_empty())
                    .then_some(()))
            }
        })
        .await?;
        op.kill();
        let before: Vec<(String, String)> = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=dind-operator"))
            .await?
            .items
            .iter()
            .filter(|s| s.name_any().ends_with("-ca"))
            .map(|s| (s.name_any(), secret_text(s, "ca.crt")))
            .collect();
        ensure!(!before.is_empty());

        let _op = Operator::start(&ns, &[])?;
        for i in 0..count {
            owned_objects(&client, &ns, &format!("d{i}")).await?;
        }
        let all = secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=dind-operator")).await?.items;
        ensure!(all.len() == 3 * count, "expected {} Secrets, found {}", 3 * count, all.len());
        let services = Api::<Service>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items.len();
        ensure!(services == 2 * count, "expected {} Services, found {services}", 2 * count);
        for (name, ca) in before {
            let now = secrets.get(&name).await?;
            ensure!(secret_text(&now, "ca.crt") == ca, "{name}: CA changed across the restart");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn with_two_operator_replicas_only_the_lease_holder_writes() {
    with_namespace("leader", |client: Client, ns: String| async move {
        let lease = ["--leader-election", "--lease-namespace", &ns, "--lease-name", "dind-operator"];
        let mut first = Operator::start(&ns, &[&lease[..], &["--identity", "first"]].concat())?;
        // Let the first take the lease before the second starts, so roles are known.
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &ns);
        eventually("first holds the lease", WAIT, || {
            let leases = leases.clone();
            async move {
                let l = leases.get_opt("dind-operator").await?;
                Ok(l.and_then(|l| l.spec?.holder_identity).filter(|h| h == "first").map(|_| ()))
            }
        })
        .await?;
        let second = Operator::start(&ns, &[&lease[..], &["--identity", "second"]].concat())?;
        create(&client, &ns, "ci", json!({})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let reconciles = |op: &Operator| {
            let addr = op.http;
            async move { Operator::metric_at(addr, "dind_operator_reconciles_total").await }
        };
        let leader_count = eventually("leader metrics", WAIT, || async { Ok(reconciles(&first).await.filter(|n| *n > 0.0)) }).await?;
        let standby_count = eventually("standby metrics", WAIT, || async { Ok(reconciles(&second).await) }).await?;
        ensure!(leader_count > 0.0 && standby_count == 0.0, "leader {leader_count}, standby {standby_count}");

        // The leader dies without releasing; the standby takes over once the lease expires.
        first.kill();
        create(&client, &ns, "after", json!({})).await?;
        owned_objects(&client, &ns, "after").await?;
        let taken = reconciles(&second).await.unwrap_or(0.0);
        ensure!(taken > 0.0, "the standby never reconciled");
        let holder = leases.get("dind-operator").await?.spec.and_then(|s| s.holder_identity);
        ensure!(holder.as_deref() == Some("second"), "lease holder {holder:?}");
        Ok(())
    })
    .await;
}
