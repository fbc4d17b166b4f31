//! The operator against the real apiserver of the harness: the CRD, its validation, and the
//! real `dind-operator` binary reconciling in a fresh namespace per test.
//!
//! Without a node (tests/cluster/node.sh) no kubelet runs pods, so where readiness matters the
//! test sets the pods' Ready condition itself; those tests say so in their names.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use dind_operator::crd::DindDaemon;
use dind_operator::names::FIELD_MANAGER;
use dind_tests::{Operator, eventually, run_tool, with_namespace};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A node selector no node matches: pods stay unscheduled, their status the test's to set.
fn no_node() -> Value {
    json!({"dind.dev/test": "no-kubelet"})
}

fn daemon(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name}, "spec": spec})
}

async fn create(client: &Client, ns: &str, name: &str, spec: Value) -> anyhow::Result<DindDaemon> {
    let api: Api<DindDaemon> = Api::namespaced(client.clone(), ns);
    let obj: DindDaemon = serde_json::from_value(daemon(name, spec))?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Waits until the operator has applied every owned object of `name`.
async fn owned_objects(client: &Client, ns: &str, name: &str) -> anyhow::Result<StatefulSet> {
    let c = client.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    eventually("owned objects applied", WAIT, move || {
        let (c, ns, name) = (c.clone(), ns.clone(), name.clone());
        async move {
            let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns).get_opt(&name).await?;
            let svc = Api::<Service>::namespaced(c.clone(), &ns).get_opt(&format!("{name}-daemons")).await?;
            let np = Api::<NetworkPolicy>::namespaced(c.clone(), &ns).get_opt(&name).await?;
            let client_secret = Api::<Secret>::namespaced(c.clone(), &ns).get_opt(&format!("{name}-client")).await?;
            Ok(match (sts, svc, np, client_secret) {
                (Some(sts), Some(_), Some(_), Some(_)) => Some(sts),
                _ => None,
            })
        }
    })
    .await
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default()
}

#[tokio::test]
async fn crd_installs_and_is_established() {
    let client = dind_tests::client().await.expect("client");
    let crd: CustomResourceDefinition = serde_yaml::from_str(include_str!("../../crds/dinddaemon.yaml")).expect("crds/dinddaemon.yaml");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.patch("dinddaemons.dind.dev", &PatchParams::apply("dind-tests").force(), &Patch::Apply(&crd)).await.expect("apply CRD");
    let established = eventually("CRD Established", WAIT, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("dinddaemons.dind.dev").await?;
            let conds = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conds.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(crd.spec))
        }
    })
    .await
    .expect("established");
    assert_eq!(established.names.short_names, Some(vec!["dind".to_string()]));
    let columns: Vec<String> = established.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
    assert_eq!(columns, ["Ready", "DockerHost", "Driver", "Age"]);
}

#[tokio::test]
async fn malformed_daemons_are_refused_by_the_apiserver_naming_the_field() {
    // (spec, a field path the message must name, a fragment of the reason)
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"replicas": -1}), "spec.replicas", "greater than or equal to 0"),
        (json!({"replicas": 65}), "spec.replicas", "less than or equal to 64"),
        (json!({"replicas": "two"}), "spec.replicas", "integer"),
        (json!({"port": 0}), "spec.port", "greater than or equal to 1"),
        (json!({"port": 70000}), "spec.port", "less than or equal to 65535"),
        (json!({"port": 2375}), "spec.port", "plaintext port"),
        (json!({"tls": {"enabled": "yes"}}), "spec.tls.enabled", "boolean"),
        (json!({"storage": {"size": "lots"}}), "spec.storage.size", "positive quantity"),
        (json!({"storage": {"size": "0"}}), "spec.storage.size", "positive quantity"),
        (json!({"storage": {"ephemeral": true, "size": "10Gi"}}), "spec.storage.size", "mutually exclusive"),
        (json!({"storage": {"ephemeral": true, "storageClassName": "fast"}}), "spec.storage.storageClassName", "mutually exclusive"),
        (json!({"storage": {"ephemeral": true, "retainOnDelete": true}}), "spec.storage.retainOnDelete", "needs a volume"),
        (json!({"daemon": {"mtu": 100}}), "spec.daemon.mtu", "greater than or equal to 576"),
        (json!({"daemon": {"mtu": 10000}}), "spec.daemon.mtu", "less than or equal to 9000"),
        (json!({"daemon": {"registryMirrors": ["ftp://mirror"]}}), "spec.daemon.registryMirrors[0]", "should match"),
        (json!({"daemon": {"registryMirrors": ["mirror.local"]}}), "spec.daemon.registryMirrors[0]", "should match"),
        (json!({"daemon": {"insecureRegistries": ["https://r:5000"]}}), "spec.daemon.insecureRegistries[0]", "should match"),
        (json!({"daemon": {"storageDriver": "aufs"}}), "spec.daemon.storageDriver", "supported values"),
        (json!({"daemon": {"extraArgs": ["-H", "tcp://0.0.0.0:1"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["--tlsverify=false"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["--data-root=/x"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"config": {"hosts": ["tcp://0.0.0.0:1"]}}}), "spec.daemon.config", "must not validate"),
        (json!({"daemon": {"config": {"mtu": 1400}}}), "spec.daemon.config", "must not validate"),
        (json!({"security": {"mode": "Root"}}), "spec.security.mode", "supported values"),
        (json!({"image": ""}), "spec.image", "at least 1"),
        (json!({"nodeSelector": {"pool": 1}}), "spec.nodeSelector.pool", "string"),
    ];
    assert!(cases.len() >= 20);
    with_namespace("malformed", move |client: Client, ns: String| async move {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("dind.dev", "v1alpha1", "DindDaemon"), "dinddaemons");
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
        let mut failures = Vec::new();
        for (i, (spec, field, reason)) in cases.iter().enumerate() {
            let obj: DynamicObject = serde_json::from_value(daemon(&format!("bad-{i}"), spec.clone()))?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => failures.push(format!("{spec}: accepted")),
                Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) && s.message.contains(reason) => {}
                Err(e) => failures.push(format!("{spec}: wanted 422 naming {field} with {reason:?}, got {e}")),
            }
        }
        ensure!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
        // And a valid one with every optional field is accepted, so the refusals are not blanket.
        let full = daemon("full", json!({
            "image": "docker:28.5.2-dind", "initImage": "dind-init:0.1.0", "replicas": 2, "port": 3376,
            "storage": {"size": "10Gi", "storageClassName": "local", "retainOnDelete": true},
            "daemon": {"mtu": 1400, "registryMirrors": ["https://mirror.local/v2"], "insecureRegistries": ["r.local:5000", "10.0.0.0/8"],
                       "storageDriver": "overlay2", "extraArgs": ["--debug"], "config": {"log-level": "warn", "features": {"buildkit": true}}},
            "security": {"mode": "Capabilities"}, "nodeSelector": {"pool": "builds"}
        }));
        api.create(&PostParams::default(), &serde_json::from_value(full)?).await.context("the full valid spec")?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_valid_daemon_gets_every_owned_object_with_owner_refs_and_our_field_manager() {
    with_namespace("owned", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        let dd = create(&client, &ns, "ci", json!({})).await?;
        let uid = dd.uid().context("uid")?;
        let sts = owned_objects(&client, &ns, "ci").await?;
        let check = |kind: &str, meta: &kube::api::ObjectMeta| -> anyhow::Result<()> {
            let refs = meta.owner_references.clone().unwrap_or_default();
            ensure!(
                refs.len() == 1 && refs[0].uid == uid && refs[0].controller == Some(true),
                "{kind} {:?}: owner refs {refs:?}",
                meta.name
            );
            let managers: BTreeSet<String> = meta.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
            ensure!(managers.contains(FIELD_MANAGER), "{kind} {:?}: managers {managers:?}", meta.name);
            Ok(())
        };
        check("StatefulSet", &sts.metadata)?;
        for svc in ["ci", "ci-daemons"] {
            check("Service", &Api::<Service>::namespaced(client.clone(), &ns).get(svc).await?.metadata)?;
        }
        for secret in ["ci-ca", "ci-server-tls", "ci-client"] {
            check("Secret", &Api::<Secret>::namespaced(client.clone(), &ns).get(secret).await?.metadata)?;
        }
        check("NetworkPolicy", &Api::<NetworkPolicy>::namespaced(client.clone(), &ns).get("ci").await?.metadata)?;
        let client_secret = Api::<Secret>::namespaced(client.clone(), &ns).get("ci-client").await?;
        for key in ["ca.pem", "cert.pem", "key.pem"] {
            ensure!(secret_text(&client_secret, key).contains("-----BEGIN"), "ci-client lacks {key}");
        }
        // Status is written by the same manager and names the client Secret and DOCKER_HOST.
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let status = eventually("status written", WAIT, || {
            let api = api.clone();
            async move { Ok(api.get("ci").await?.status.filter(|s| s.observed_generation == Some(1))) }
        })
        .await?;
        ensure!(status.docker_host.as_deref() == Some(&*format!("tcp://ci.{ns}.svc:2376")), "{status:?}");
        ensure!(status.client_secret_name.as_deref() == Some("ci-client"));
        ensure!(status.ready.as_deref() == Some("0/1"));
        // kubectl shows the DESIGN.md columns.
        let table = run_tool("kubectl", &["get", "dind", "-n", &ns]).await?;
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        ensure!(header == ["NAME", "READY", "DOCKERHOST", "DRIVER", "AGE"], "{table}");
        ensure!(table.contains("0/1") && table.contains(&format!("tcp://ci.{ns}.svc:2376")), "{table}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn spec_changes_roll_into_the_statefulset() {
    with_namespace("spec-change", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let change =
            json!({"spec": {"replicas": 2, "image": "docker:27.5.1-dind", "daemon": {"registryMirrors": ["https://mirror.example.test"]}}});
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&change)).await?;
        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        eventually("StatefulSet follows the spec", WAIT, || {
            let sts_api = sts_api.clone();
            async move {
                let sts = sts_api.get("ci").await?;
                let spec = sts.spec.context("spec")?;
                let c = &spec.template.spec.context("pod spec")?.containers[0];
                let args = c.args.clone().unwrap_or_default();
                Ok((spec.replicas == Some(2)
                    && c.image.as_deref() == Some("docker:27.5.1-dind")
                    && args.contains(&"--registry-mirror=https://mirror.example.test".to_string()))
                .then_some(()))
            }
        })
        .await?;
        // A new replica has a new DNS name: the server certificate is re-issued by the same CA.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        eventually("server cert names ci-1", WAIT, || {
            let secrets = secrets.clone();
            async move {
                let s = secrets.get("ci-server-tls").await?;
                let info = dind_operator::tls::inspect(&secret_text(&s, "tls.crt"))?;
                Ok(info.dns_names.iter().any(|n| n.starts_with("ci-1.ci-daemons")).then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

/// An operator that skips applies when nothing changed must still see, and undo, changes made
/// behind its back: an edited StatefulSet, a deleted Service, a deleted certificate Secret.
#[tokio::test]
async fn drift_in_owned_objects_is_repaired() {
    with_namespace("drift", |client: Client, ns: String| async move {
        let op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({})).await?;
        let first = owned_objects(&client, &ns, "ci").await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let ca_before = secret_text(&secrets.get("ci-ca").await?, "ca.crt");
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let service_uid = services.get("ci").await?.uid();
        // Let the operator settle, so the next changes meet its "nothing changed" path.
        eventually("a reconcile with nothing to apply", WAIT, || async {
            Ok(op.metric("dind_operator_reconciles_unchanged_total").await.is_some_and(|n| n >= 1.0).then_some(()))
        })
        .await?;

        // One change at a time: each must be found on its own.
        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let edit = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"replicas": 3}});
        sts_api.patch("ci", &PatchParams::apply("someone-else").force(), &Patch::Apply(&edit)).await?;
        eventually("StatefulSet replicas back to 1", WAIT, || {
            let sts_api = sts_api.clone();
            async move { Ok((sts_api.get("ci").await?.spec.and_then(|s| s.replicas) == Some(1)).then_some(())) }
        })
        .await?;
        services.delete("ci", &DeleteParams::default()).await?;
        let back = eventually("client Service re-created", WAIT, || {
            let (services, old_uid) = (services.clone(), service_uid.clone());
            async move { Ok(services.get_opt("ci").await?.filter(|s| s.uid() != old_uid)) }
        })
        .await?;
        ensure!(back.labels().get("dind.dev/daemon").map(String::as_str) == Some("ci"), "re-created Service lacks our labels");
        secrets.delete("ci-server-tls", &DeleteParams::default()).await?;
        let server = eventually("server Secret re-issued", WAIT, || {
            let secrets = secrets.clone();
            async move { Ok(secrets.get_opt("ci-server-tls").await?) }
        })
        .await?;
        // The kept CA signs the new server certificate; the CA itself did not change.
        ensure!(secret_text(&server, "ca.crt") == ca_before, "server Secret carries another CA");
        ensure!(secret_text(&secrets.get("ci-ca").await?, "ca.crt") == ca_before, "CA changed");
        let sts = sts_api.get("ci").await?;
        ensure!(sts.uid() == first.uid(), "StatefulSet was re-created instead of patched");
        Ok(())
    })
    .await;
}

/// A CA Secret that exists before its DindDaemon, without our labels (so no cache of the
/// operator shows it), is read and kept: the operator's create-the-CA shortcut must not loop
/// on it or replace it.
#[tokio::test]
async fn a_pre_existing_unlabelled_ca_secret_is_adopted() {
    with_namespace("adopt-ca", |client: Client, ns: String| async move {
        let ca = dind_operator::tls::new_ca(&ns, "pre", time::OffsetDateTime::now_utc())?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "pre-ca"},
            "stringData": {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "pre", json!({})).await?;
        owned_objects(&client, &ns, "pre").await?;
        let server = secrets.get("pre-server-tls").await?;
        ensure!(secret_text(&server, "ca.crt") == ca.cert_pem, "the server certificate is not signed by the pre-existing CA");
        let kept = secrets.get("pre-ca").await?;
        ensure!(secret_text(&kept, "ca.key") == ca.key_pem, "the CA key was replaced");
        ensure!(kept.labels().get("dind.dev/daemon").map(String::as_str) == Some("pre"), "the CA Secret was not taken over");
        Ok(())
    })
    .await;
}

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

async fn pvc_names(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
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

/// Sets a pod's Ready condition as a kubelet would (there is no kubelet without the node).
async fn mark_pod_ready(client: &Client, ns: &str, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
    ]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

#[tokio::test]
async fn status_turns_ready_when_daemon_pods_are_ready_readiness_set_by_the_test_without_a_kubelet() {
    with_namespace("ready", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        // Kept off any node: where the harness runs a kubelet (tests/run.sh), it would own the
        // pod's status and overwrite the readiness this test sets.
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        eventually("the StatefulSet made ci-0", WAIT, || {
            let pods = pods.clone();
            async move { Ok(pods.get_opt("ci-0").await?.map(|_| ())) }
        })
        .await?;
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
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        let degraded = eventually("Degraded names the intruder", WAIT, || {
            let api = api.clone();
            async move {
                let st = api.get("ci").await?.status.unwrap_or_default();
                Ok(st.conditions.into_iter().find(|c| c.type_ == "Degraded" && c.status == "True"))
            }
        })
        .await?;
        ensure!(degraded.reason == "VolumeInUse" && degraded.message.contains("thief"), "{degraded:?}");
        Ok(())
    })
    .await;
}
