//! Objects that are not a DindDaemon's are never written; generated names that collide.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use dind_operator::crd::DindDaemon;
use dind_tests::operator::{WAIT, condition, create, no_node, owned_objects, pod_created, secret_text};
use dind_tests::{Operator, eventually, run_tool, with_namespace};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Measured before: DindDaemon `ci` treated the daemon pod of DindDaemon `ci-big` as an
/// intruder on its volume (claim prefix `docker-ci-`) and went Degraded, telling the user to
/// delete a healthy pod.
#[tokio::test]
async fn the_daemon_of_a_longer_named_dind_daemon_is_not_an_intruder() {
    with_namespace("prefix", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci-big", json!({"nodeSelector": no_node()})).await?;
        pod_created(&client, &ns, "ci-big-0").await?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        let degraded = condition(&client, &ns, "ci", "ci has a Degraded condition", WAIT, |c| c.type_ == "Degraded").await?;
        ensure!(degraded.status == "False", "ci is Degraded: {} {}", degraded.reason, degraded.message);
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

/// Measured before: a Service `web` that a team made before DindDaemon `web` got the daemon's
/// selector, a second port and an owner reference (so deleting the DindDaemon deleted the
/// team's Service), and a foreign `web-ca` Secret signed the daemon's client certificates.
/// Now nothing of the DindDaemon is written while a name is taken (nothing half-made), the
/// condition names every object in the way, and a hand-over by label is adopted.
#[tokio::test]
async fn objects_that_are_not_ours_are_never_written_until_handed_over() {
    with_namespace("not-ours", |client: Client, ns: String| async move {
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
        }))?;
        services.create(&PostParams::default(), &service).await?;
        let ca = dind_operator::model::tls::new_ca(&ns, "web", time::OffsetDateTime::now_utc())?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "web-ca"},
            "stringData": {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "web", json!({"nodeSelector": no_node()})).await?;
        let degraded = name_conflict(&client, &ns, "web").await?;
        ensure!(
            degraded.message.contains("Service web (not made by dind-operator")
                && degraded.message.contains("Secret web-ca (")
                && !degraded.message.contains("web-daemons"),
            "{}",
            degraded.message
        );
        let events = run_tool(
            "kubectl",
            &["get", "events", "-n", &ns, "--field-selector", "involvedObject.name=web", "-o", "jsonpath={.items[*].reason}"],
        )
        .await?;
        ensure!(events.contains("NameConflict"), "events: {events}");
        // Untouched, and nothing else was made.
        let kept = services.get("web").await?;
        let spec = kept.spec.clone().unwrap_or_default();
        ensure!(kept.owner_references().is_empty(), "the team's Service got an owner: {:?}", kept.owner_references());
        ensure!(spec.selector == Some([("app".to_string(), "web".to_string())].into()), "selector: {:?}", spec.selector);
        ensure!(spec.ports.unwrap_or_default().len() == 1, "the team's Service got our port");
        ensure!(Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt("web").await?.is_none(), "a StatefulSet was made");
        ensure!(services.get_opt("web-daemons").await?.is_none(), "a half-made DindDaemon: headless Service written");
        ensure!(secrets.get_opt("web-server-tls").await?.is_none(), "a server certificate was issued");

        // Handed over: the team labels both; the operator takes them and uses the given CA.
        let hand_over = json!({"metadata": {"labels": {"dind.dev/daemon": "web"}}});
        services.patch("web", &PatchParams::default(), &Patch::Merge(&hand_over)).await?;
        secrets.patch("web-ca", &PatchParams::default(), &Patch::Merge(&hand_over)).await?;
        // (The DindDaemon is retried with backoff; nudge it so the test does not wait for it.)
        let nudge = json!({"metadata": {"annotations": {"test/nudge": "1"}}});
        Api::<DindDaemon>::namespaced(client.clone(), &ns).patch("web", &PatchParams::default(), &Patch::Merge(&nudge)).await?;
        owned_objects(&client, &ns, "web").await?;
        let server = secrets.get("web-server-tls").await?;
        ensure!(secret_text(&server, "ca.crt") == ca.cert_pem, "the server certificate is not signed by the handed-over CA");
        ensure!(secret_text(&secrets.get("web-ca").await?, "ca.key") == ca.key_pem, "the CA key was replaced");
        let taken = services.get("web").await?;
        ensure!(taken.owner_references().len() == 1, "the handed-over Service is not owned: {:?}", taken.owner_references());
        Ok(())
    })
    .await;
}

/// `ci`'s headless Service is `ci-daemons`, the client Service of DindDaemon `ci-daemons`: the
/// second to come is refused by name and the first keeps its Service.
#[tokio::test]
async fn two_dind_daemons_whose_generated_names_collide_do_not_fight() {
    with_namespace("collide", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        let ci = create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        owned_objects(&client, &ns, "ci").await?;
        create(&client, &ns, "ci-daemons", json!({"nodeSelector": no_node()})).await?;
        let degraded = name_conflict(&client, &ns, "ci-daemons").await?;
        ensure!(degraded.message.contains("Service ci-daemons (owned by DindDaemon ci)"), "{}", degraded.message);
        // Give a fight time to happen, then look: the Service is still ci's headless one.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let headless = services.get("ci-daemons").await?;
        let owners: Vec<String> = headless.owner_references().iter().map(|r| r.uid.clone()).collect();
        ensure!(owners == [ci.uid().unwrap_or_default()], "owners of ci-daemons: {owners:?}");
        ensure!(headless.spec.and_then(|s| s.cluster_ip).as_deref() == Some("None"), "ci-daemons is no longer headless");
        ensure!(Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt("ci-daemons").await?.is_none(), "half-made ci-daemons");
        Ok(())
    })
    .await;
}

/// Names first written after a DindDaemon was made are checked too. Measured before the fix:
/// `ci` (one daemon, so no PodDisruptionBudget) scaled to two force-applied its budget over a
/// team's PodDisruptionBudget `ci` (the check ran only while the DindDaemon had no objects of
/// its own), and the same held for the Secrets when TLS was turned on.
#[tokio::test]
async fn a_name_first_needed_on_a_later_change_is_checked_too() {
    with_namespace("later", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        owned_objects(&client, &ns, "ci").await?;
        let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        let team: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "ci"}, "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"team": "web"}}}
        }))?;
        budgets.create(&PostParams::default(), &team).await?;
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.patch("ci", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await?;
        let degraded = name_conflict(&client, &ns, "ci").await?;
        ensure!(degraded.message.contains("PodDisruptionBudget ci"), "{}", degraded.message);
        let kept = budgets.get("ci").await?;
        ensure!(kept.owner_references().is_empty(), "the team's budget got an owner: {:?}", kept.owner_references());
        let spec = kept.spec.context("budget spec")?;
        let zero = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0));
        ensure!(spec.max_unavailable == zero, "the team's budget was rewritten: {spec:?}");
        ensure!(spec.selector.and_then(|s| s.match_labels).is_some_and(|l| l.contains_key("team")), "the team's selector is gone");
        // Nothing half-made: the StatefulSet still has one replica.
        let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns).get("ci").await?;
        ensure!(sts.spec.and_then(|s| s.replicas) == Some(1), "the StatefulSet was scaled while a name was in the way");
        Ok(())
    })
    .await;
}

/// Waits for DindDaemon `name` to be `Degraded/NameConflict`; returns that condition.
async fn name_conflict(client: &Client, ns: &str, name: &str) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    condition(client, ns, name, "Degraded/NameConflict", WAIT, |c| {
        c.type_ == "Degraded" && c.status == "True" && c.reason == "NameConflict"
    })
    .await
}
