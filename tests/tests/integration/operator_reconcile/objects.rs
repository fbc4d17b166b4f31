//! A DindDaemon's owned objects: made, changed, refused, repaired.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use dind_operator::crd::DindDaemon;
use dind_operator::model::names::FIELD_MANAGER;
use dind_tests::operator::{WAIT, condition, create, no_node, owned_objects, secret_text};
use dind_tests::{Operator, eventually, run_tool, with_namespace};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

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
        // kubectl shows the columns of docs/design.md.
        let table = run_tool("kubectl", &["get", "dind", "-n", &ns]).await?;
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        ensure!(header == ["NAME", "READY", "DOCKERHOST", "DRIVER", "DISK", "AGE"], "{table}");
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
        Ok(())
    })
    .await;
}

/// Measured before: after `replicas` 1 → 2, pod ci-0 had a new uid. The server certificate
/// listed every replica's name, so scaling re-issued it and its digest annotation rolled every
/// daemon, killing running builds. Now it names the replicas by wildcard: scaling changes
/// neither the certificate nor the pod template.
#[tokio::test]
async fn scaling_keeps_the_certificate_and_the_pod_template() {
    with_namespace("scale", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        create(&client, &ns, "ci", json!({"nodeSelector": no_node()})).await?;
        let before = owned_objects(&client, &ns, "ci").await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let cert_before = secret_text(&secrets.get("ci-server-tls").await?, "tls.crt");
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 2}}))).await?;
        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let after = eventually("StatefulSet scaled to 2", WAIT, || {
            let sts_api = sts_api.clone();
            async move { Ok(sts_api.get("ci").await?.spec.filter(|s| s.replicas == Some(2))) }
        })
        .await?;
        let template =
            |spec: Option<k8s_openapi::api::apps::v1::StatefulSetSpec>| spec.map(|s| serde_json::to_value(s.template)).transpose();
        ensure!(
            template(before.spec)? == Some(serde_json::to_value(&after.template)?),
            "scaling changed the pod template (every daemon restarts)"
        );
        // Give a re-issue (if any) the time to happen, then compare.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cert_after = secret_text(&secrets.get("ci-server-tls").await?, "tls.crt");
        ensure!(cert_after == cert_before, "scaling re-issued the server certificate");
        let names = dind_operator::model::tls::inspect(&cert_after)?.dns_names;
        ensure!(names.contains(&format!("*.ci-daemons.{ns}.svc")), "server names: {names:?}");

        // The scale subresource: `kubectl scale` (before: NotFound) and what an HPA reads.
        run_tool("kubectl", &["scale", "-n", &ns, "dind/ci", "--replicas=3"]).await?;
        eventually("StatefulSet scaled to 3 by kubectl scale", WAIT, || {
            let sts_api = sts_api.clone();
            async move { Ok(sts_api.get("ci").await?.spec.filter(|s| s.replicas == Some(3))) }
        })
        .await?;
        let scale = eventually("the scale subresource shows the selector", WAIT, || {
            let ns = ns.clone();
            async move {
                let out = run_tool("kubectl", &["get", "-n", &ns, "dind/ci", "--subresource=scale", "-o", "json"]).await?;
                let scale: serde_json::Value = serde_json::from_str(&out)?;
                Ok((scale["status"]["selector"].as_str().is_some_and(|s| !s.is_empty())).then_some(scale))
            }
        })
        .await?;
        ensure!(scale["spec"]["replicas"] == 3, "{scale}");
        let selector = scale["status"]["selector"].as_str().unwrap_or_default();
        ensure!(selector.contains("dind.dev/daemon=ci"), "{selector}");
        Ok(())
    })
    .await;
}

/// A spec the apiserver refuses when the operator applies it (here: a StatefulSet of the same
/// name with another, immutable, selector) shows as Degraded/ApplyFailed with the apiserver's
/// words and an event, and is retried with backoff, not every 5 s in silence.
#[tokio::test]
async fn an_apply_the_apiserver_refuses_is_a_condition_and_an_event_with_backoff() {
    with_namespace("refused", |client: Client, ns: String| async move {
        // A quota of no StatefulSets: the apiserver refuses ours (403) whatever the spec.
        let quota: ResourceQuota =
            serde_json::from_value(json!({"metadata": {"name": "none"}, "spec": {"hard": {"count/statefulsets.apps": "0"}}}))?;
        Api::<ResourceQuota>::namespaced(client.clone(), &ns).create(&PostParams::default(), &quota).await?;
        let op = Operator::start(&ns, &[])?;
        create(&client, &ns, "web", json!({"nodeSelector": no_node()})).await?;
        let degraded = condition(&client, &ns, "web", "Degraded/ApplyFailed", WAIT, |c| {
            c.type_ == "Degraded" && c.status == "True" && c.reason == "ApplyFailed"
        })
        .await?;
        ensure!(degraded.message.contains("StatefulSet web") && degraded.message.contains("exceeded quota"), "{}", degraded.message);
        ensure!(!degraded.message.contains("Status {"), "the apiserver's words, not a debug dump: {}", degraded.message);
        ensure!(degraded.observed_generation == Some(1));
        let first_error = std::time::Instant::now();
        let events = run_tool(
            "kubectl",
            &["get", "events", "-n", &ns, "--field-selector", "involvedObject.name=web", "-o", "jsonpath={.items[*].reason}"],
        )
        .await?;
        ensure!(events.contains("ApplyFailed"), "events: {events}");
        // Backoff 5, 10, 20 s: in the 25 s after the first failure at most 3 more rounds of
        // attempts (a fixed 5 s retry would make 5). Counted in rounds: a change of a watched
        // object (a Secret made, an EndpointSlice the controller-manager writes late under
        // load) may wake a reconcile at once after a failed one — seen in CI as bursts of three
        // within 0.3 s — which is a trigger, not a retry.
        let metric = "dind_operator_reconcile_errors_total{kind=\"refused\"}";
        let (mut last, mut last_rise, mut rounds) = (0.0, None::<std::time::Instant>, 0);
        while first_error.elapsed() < Duration::from_secs(25) {
            let now = op.metric(metric).await.unwrap_or_default();
            if now > last {
                if last_rise.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                    rounds += 1;
                }
                last_rise = Some(std::time::Instant::now());
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!((1..=4).contains(&rounds), "{rounds} rounds of failed reconciles ({last} failures) in ~25 s");
        Ok(())
    })
    .await;
}

/// Seen before: a `registryCAs` entry naming a ConfigMap that does not exist left the daemon
/// pod `ContainerCreating` (FailedMount events only) with no condition. Now nothing is applied
/// while a ConfigMap or key is missing, `Degraded/RegistryCAMissing` names the field, and once
/// the ConfigMap is right the daemons are made.
#[tokio::test]
async fn a_registry_ca_config_map_that_is_missing_is_a_condition_naming_the_field_and_nothing_is_applied() {
    with_namespace("regca", |client: Client, ns: String| async move {
        let _op = Operator::start(&ns, &[])?;
        let spec = json!({"nodeSelector": no_node(), "daemon": {"registryCAs": [{"registry": "reg.corp:5000", "configMap": "corp-ca"}]}});
        create(&client, &ns, "web", spec).await?;
        let missing = |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
            c.type_ == "Degraded" && c.status == "True" && c.reason == "RegistryCAMissing"
        };
        let degraded = condition(&client, &ns, "web", "Degraded/RegistryCAMissing", WAIT, missing).await?;
        ensure!(
            degraded.message.contains("spec.daemon.registryCAs[0] (registry reg.corp:5000): ConfigMap \"corp-ca\" not found"),
            "{}",
            degraded.message
        );
        ensure!(Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt("web").await?.is_none(), "nothing is half-made");
        let events = run_tool(
            "kubectl",
            &["get", "events", "-n", &ns, "--field-selector", "involvedObject.name=web", "-o", "jsonpath={.items[*].reason}"],
        )
        .await?;
        ensure!(events.contains("RegistryCAMissing"), "events: {events}");
        // The ConfigMap made, with the certificate under another key: the key is named.
        let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cm = serde_json::from_value(json!({"metadata": {"name": "corp-ca"}, "data": {"root.pem": "-----BEGIN CERTIFICATE-----"}}))?;
        config_maps.create(&PostParams::default(), &cm).await?;
        condition(&client, &ns, "web", "Degraded naming the key", WAIT, |c| {
            c.reason == "RegistryCAMissing"
                && c.message.contains("registryCAs[0].key: ConfigMap \"corp-ca\" has no key \"ca.crt\" (it has: root.pem)")
        })
        .await?;
        // Right at last: the daemons are made, mounting it.
        let fixed = json!({"data": {"ca.crt": "-----BEGIN CERTIFICATE-----"}});
        config_maps.patch("corp-ca", &PatchParams::default(), &Patch::Merge(&fixed)).await?;
        let sts = owned_objects(&client, &ns, "web").await?;
        let volumes = serde_json::to_string(&sts.spec.and_then(|s| s.template.spec).map(|p| p.volumes))?;
        ensure!(volumes.contains("corp-ca") && volumes.contains("reg.corp:5000/ca.crt"), "{volumes}");
        condition(&client, &ns, "web", "Degraded no longer RegistryCAMissing", WAIT, |c| {
            c.type_ == "Degraded" && c.reason != "RegistryCAMissing"
        })
        .await?;
        Ok(())
    })
    .await;
}
