//! The DindDaemon API on the real apiserver of the harness: the CRD, and the specs it refuses
//! (OpenAPI and CEL, from `crd/` and the contract) with a message naming the field.

use anyhow::{Context as _, ensure};
use dind_operator::crd::DindDaemon;
use dind_tests::operator::{WAIT, create, daemon};
use dind_tests::{eventually, with_namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

#[tokio::test]
async fn crd_installs_and_is_established() {
    let client = dind_tests::client().await.expect("client");
    let crd: CustomResourceDefinition = serde_yaml::from_str(include_str!("../../../crds/dinddaemon.yaml")).expect("crds/dinddaemon.yaml");
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
    assert_eq!(columns, ["Ready", "DockerHost", "Driver", "Disk", "Age"]);
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
        // Found drifted from dind-init's own checks (a crash loop instead of a 422): grouped short
        // flags, -p/-g, and directives dind-init sets as flags.
        (json!({"daemon": {"extraArgs": ["-DH", "tcp://0.0.0.0:2377"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["-p", "/run/x.pid"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["-g", "/x"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["--shutdown-timeout=30"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"extraArgs": ["--mtu=1400"]}}), "spec.daemon.extraArgs", "operator owns them"),
        (json!({"daemon": {"config": {"shutdown-timeout": 30}}}), "spec.daemon.config", "must not validate"),
        (json!({"daemon": {"config": {"exec-root": "/x"}}}), "spec.daemon.config", "must not validate"),
        (json!({"daemon": {"config": {"hosts": ["tcp://0.0.0.0:1"]}}}), "spec.daemon.config", "must not validate"),
        (json!({"daemon": {"config": {"mtu": 1400}}}), "spec.daemon.config", "must not validate"),
        (json!({"security": {"mode": "Root"}}), "spec.security.mode", "supported values"),
        (json!({"image": ""}), "spec.image", "at least 1"),
        (json!({"nodeSelector": {"pool": 1}}), "spec.nodeSelector.pool", "string"),
        (json!({"cache": {"buildCacheKeep": "150%"}}), "spec.cache.buildCacheKeep", "from 1% to 99%"),
        (json!({"cache": {"buildCacheKeep": "lots"}}), "spec.cache.buildCacheKeep", "positive quantity"),
        (json!({"cache": {"highWaterPercent": 100}}), "spec.cache.highWaterPercent", "less than or equal to 99"),
        (json!({"sidecar": {"tcp": true}}), "spec.sidecar", "needs mode: Sidecar"),
        (json!({"egress": {"allowedCIDRs": ["10.0.0.0/33"]}}), "spec.egress.allowedCIDRs", "must be a CIDR"),
        (json!({"egress": {"deniedCIDRs": ["metadata"]}}), "spec.egress.deniedCIDRs", "must be a CIDR"),
        (json!({"mode": "Sidecar", "egress": {"restricted": true}}), "spec.egress", "needs mode: Pool"),
        (json!({"mode": "Sidecar", "clients": {"namespaceSelector": {}}}), "spec.clients", "needs mode: Pool and tls.enabled"),
        (
            json!({"tls": {"enabled": false}, "port": 2375, "clients": {"namespaceSelector": {}}}),
            "spec.clients",
            "needs mode: Pool and tls.enabled",
        ),
        (json!({"clients": {}}), "spec.clients.namespaceSelector", "Required"),
        (
            json!({"tls": {"enabled": false, "clientCertificates": "PerPod"}, "port": 2375}),
            "spec.tls.clientCertificates",
            "needs tls.enabled",
        ),
        (json!({"tls": {"clientCertificates": "Mine"}}), "spec.tls.clientCertificates", "supported values"),
        (
            json!({"tls": {"clientCertificateLifetimeSeconds": 10}}),
            "spec.tls.clientCertificateLifetimeSeconds",
            "greater than or equal to 60",
        ),
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
                       "storageDriver": "overlay2", "extraArgs": ["--debug", "-D", "-l", "debug", "--experimental"], "config": {"log-level": "warn", "features": {"buildkit": true}}},
            "security": {"mode": "Capabilities"}, "nodeSelector": {"pool": "builds"},
            "cache": {"buildCacheKeep": "40%", "highWaterPercent": 90}
        }));
        api.create(&PostParams::default(), &serde_json::from_value(full)?).await.context("the full valid spec")?;
        // An emptyDir has a size limit (storage.size), and a percentage target is of it.
        let ephemeral = daemon("scratch", json!({"storage": {"ephemeral": true, "size": "4Gi"}, "cache": {"buildCacheKeep": "50%"}}));
        api.create(&PostParams::default(), &serde_json::from_value(ephemeral)?).await.context("an ephemeral daemon with a size")?;
        Ok(())
    })
    .await;
}

/// A name the generated names cannot carry (the StatefulSet's pods would never be created, a
/// Service name must be a DNS label) is refused at create, not retried forever.
#[tokio::test]
async fn names_that_cannot_name_every_owned_object_are_refused() {
    with_namespace("names", |client: Client, ns: String| async move {
        let api: Api<DindDaemon> = Api::namespaced(client, &ns);
        let longest = "a".repeat(dind_operator::model::names::MAX_NAME_LEN);
        for (name, reason) in
            [(format!("{longest}b"), "at most 52 characters"), ("ci.daemons".to_string(), "DNS label"), ("9ci".to_string(), "DNS label")]
        {
            let obj: DindDaemon = serde_json::from_value(daemon(&name, json!({})))?;
            match api.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("metadata.name") && s.message.contains(reason) => {}
                other => anyhow::bail!("{name}: wanted 422 naming metadata.name with {reason:?}, got {other:?}"),
            }
        }
        api.create(&PostParams::default(), &serde_json::from_value(daemon(&longest, json!({})))?).await.context("the longest name")?;
        Ok(())
    })
    .await;
}

/// Changes that cannot be applied in place are refused at update, naming the field; the rest
/// still go through. `storage.size` grows a pool DindDaemon's claims (`operator_reconcile`), but
/// a sidecar volume pool's claims are made once.
#[tokio::test]
async fn storage_changes_that_cannot_apply_in_place_are_refused_on_update() {
    with_namespace("immutable", |client: Client, ns: String| async move {
        let api: Api<DindDaemon> = Api::namespaced(client.clone(), &ns);
        create(&client, &ns, "ci", json!({"storage": {"size": "20Gi"}})).await?;
        let refused = [
            (json!({"storage": {"storageClassName": "fast"}}), "spec.storage.storageClassName"),
            (json!({"storage": {"size": null, "ephemeral": true}}), "spec.storage.ephemeral"),
        ];
        for (change, field) in refused {
            match api.patch("ci", &PatchParams::default(), &Patch::Merge(&json!({"spec": change}))).await {
                Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) && s.message.contains("cannot be changed") => {}
                other => anyhow::bail!("{change}: wanted 422 naming {field}, got {other:?}"),
            }
        }
        // The same size written differently, and fields that can change, are accepted.
        let same = json!({"spec": {"replicas": 2, "storage": {"size": "20480Mi", "retainOnDelete": true}}});
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&same)).await.context("an equal quantity and mutable fields")?;
        let grown = json!({"spec": {"storage": {"size": "30Gi"}}});
        api.patch("ci", &PatchParams::default(), &Patch::Merge(&grown)).await.context("a larger volume")?;
        create(&client, &ns, "pool", json!({"mode": "Sidecar", "volumePool": {"size": 1}, "storage": {"size": "5Gi"}})).await?;
        match api.patch("pool", &PatchParams::default(), &Patch::Merge(&grown)).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.storage.size") && s.message.contains("volumePool") => {}
            other => anyhow::bail!("a volume pool's size: wanted 422 naming spec.storage.size, got {other:?}"),
        }
        // An emptyDir's size limit is part of the pod template: it may change.
        create(&client, &ns, "scratch", json!({"storage": {"ephemeral": true}})).await?;
        let bigger = json!({"spec": {"storage": {"size": "40Gi"}}});
        api.patch("scratch", &PatchParams::default(), &Patch::Merge(&bigger)).await.context("an ephemeral daemon's size limit")?;
        Ok(())
    })
    .await;
}
