//! The chart rendered: lint, the apiserver's dry run, the values' schema, notes, Artifact Hub
//! annotations, default images, the webhook and the upgrade strategy.

use anyhow::{Context as _, ensure};
use dind_tests::{CHART, run_tool, suffix, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kube::{Api, Client};

use super::{CUSTOM, KUBE_VERSION, helm};

#[tokio::test]
async fn chart_lints_with_default_and_custom_values() -> anyhow::Result<()> {
    helm(&["lint", "--strict", CHART]).await?;
    helm(&[&["lint", "--strict", CHART][..], CUSTOM].concat()).await?;
    Ok(())
}

#[tokio::test]
async fn every_rendered_manifest_is_accepted_by_the_apiserver() {
    with_namespace("helm-dry-run", |_client: Client, ns: String| async move {
        // The custom values, but watching the test's own namespace (a dry run creates nothing,
        // so the namespaces a Role goes into must already exist).
        let watch = format!("watchNamespaces={{{ns}}}");
        let custom: Vec<&str> = pairs_without_watch(CUSTOM).into_iter().chain(["--set", watch.as_str()]).collect();
        for values in [&[][..], &custom[..]] {
            let rendered =
                helm(&[&["template", "dind", CHART, "--kube-version", KUBE_VERSION, "--namespace", &ns][..], values].concat()).await?;
            ensure!(rendered.contains("kind: Deployment"), "{rendered}");
            let file = std::env::temp_dir().join(format!("dind-chart-{}.yaml", suffix()));
            std::fs::write(&file, &rendered)?;
            let out = run_tool("kubectl", &["apply", "--dry-run=server", "-f", &file.to_string_lossy()]).await;
            let _ = std::fs::remove_file(&file);
            let out = out?;
            ensure!(out.contains("deployment.apps/dind-dind-operator created (server dry run)"), "{out}");
            ensure!(!out.contains("Error"), "{out}");
        }
        Ok(())
    })
    .await;
}

/// CUSTOM's `--set k=v` pairs without the one for watchNamespaces.
fn pairs_without_watch<'a>(values: &[&'a str]) -> Vec<&'a str> {
    values.chunks(2).filter(|p| !p[1].starts_with("watchNamespaces")).flatten().copied().collect()
}

#[tokio::test]
async fn values_that_break_the_schema_are_refused_with_a_clear_message() -> anyhow::Result<()> {
    for (set, field) in [
        ("replicas=0", "/replicas"),
        ("logFormat=yaml", "/logFormat"),
        ("watchNamespaces={Bad_Name}", "/watchNamespaces/0"),
        ("metrics.port=70000", "/metrics/port"),
        ("webhook.timeoutSeconds=60", "/webhook/timeoutSeconds"),
        ("webhook.certManager.enable=true", "enable"),
        ("typo=1", "typo"),
        ("resources.limit.cpu=1", "/resources"),
        ("affinity.nodeAffinty.x=1", "nodeAffinty"),
        ("webhook.certManager.issuerRef.nam=x", "/webhook/certManager/issuerRef"),
        ("policy.namespaceSelector.matchLabel.a=b", "matchLabel"),
        ("placement.allowedTolerationKey={a}", "allowedTolerationKey"),
    ] {
        let err = helm(&["template", "dind", CHART, "--kube-version", KUBE_VERSION, "--set", set]).await.expect_err(set);
        let msg = err.to_string();
        ensure!(msg.contains("values don't meet the specifications of the schema") || msg.contains("schema"), "{set}: {msg}");
        ensure!(msg.contains(field), "{set}: message does not name {field}: {msg}");
    }
    Ok(())
}

/// The notes `helm install` prints say what a user does today: one label (before: label the pod
/// `dind.dev/client` and wire DOCKER_HOST and the certificates by hand, with the webhook on).
#[tokio::test]
async fn the_install_notes_tell_users_the_label() -> anyhow::Result<()> {
    let notes = helm(&["install", "notes", CHART, "--dry-run=client", "--set", "watchNamespaces={builds}"]).await?;
    let notes = notes.split_once("NOTES:").context("NOTES in the dry run")?.1;
    for want in [
        "dind.dev/inject: ci",
        "dind.dev/injection=enabled",
        "dind.dev/sidecar: NAME",
        "dind.dev/inject-namespace: builds",
        "docs/ci-recipes.md",
    ] {
        ensure!(notes.contains(want), "{want:?} missing from the notes:\n{notes}");
    }
    ensure!(!notes.contains("DOCKER_CERT_PATH"), "no wiring by hand while the webhook is on:\n{notes}");
    let off = helm(&["install", "notes", CHART, "--dry-run=client", "--set", "watchNamespaces={builds}", "--set", "webhook.enabled=false"])
        .await?;
    ensure!(off.contains("dind.dev/client: ci") && !off.contains("dind.dev/inject: ci"), "{off}");
    Ok(())
}

/// Artifact Hub's annotations say what the chart really ships: its default images (with the
/// chart's appVersion), its CRD, examples the apiserver accepts, and changes of known kinds.
#[tokio::test]
async fn the_artifact_hub_annotations_match_the_chart() {
    with_namespace("helm-artifacthub", |client: Client, ns: String| async move {
        let chart: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml"))?)?;
        let notes = |key: &str| -> anyhow::Result<serde_yaml::Value> {
            let text = chart["annotations"][key].as_str().with_context(|| format!("annotation {key}"))?;
            Ok(serde_yaml::from_str(text)?)
        };
        let version = chart["appVersion"].as_str().context("appVersion")?;
        let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml"))?)?;
        let repository = values["image"]["repository"].as_str().context("image.repository")?;
        let images: Vec<String> = notes("artifacthub.io/images")?
            .as_sequence()
            .context("images")?
            .iter()
            .filter_map(|i| i["image"].as_str().map(str::to_string))
            .collect();
        // The operator's image, and the daemon and dind-init images beside it (the chart's defaults).
        let want: Vec<String> = [repository, "dind-daemon", "dind-init"].iter().map(|i| format!("{i}:{version}")).collect();
        ensure!(images == want, "artifacthub.io/images {images:?}, the chart ships {want:?}");
        let crd: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/crds/dinddaemon.yaml"))?)?;
        let listed = &notes("artifacthub.io/crds")?[0];
        ensure!(
            listed["name"] == crd["metadata"]["name"] && listed["kind"] == crd["spec"]["names"]["kind"],
            "artifacthub.io/crds: {listed:?}"
        );
        ensure!(listed["version"] == crd["spec"]["versions"][0]["name"], "artifacthub.io/crds version: {listed:?}");
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client, &ns, &kube::api::ApiResource::erase::<dind_operator::crd::DindDaemon>(&()));
        for example in notes("artifacthub.io/crdsExamples")?.as_sequence().context("examples")? {
            let object: kube::api::DynamicObject = serde_json::from_value(serde_json::to_value(example)?)?;
            api.create(&PostParams { dry_run: true, ..Default::default() }, &object)
                .await
                .with_context(|| format!("example {example:?}"))?;
        }
        for change in notes("artifacthub.io/changes")?.as_sequence().context("changes")? {
            let kind = change["kind"].as_str().unwrap_or_default();
            ensure!(["added", "changed", "deprecated", "removed", "fixed", "security"].contains(&kind), "change kind {kind:?}");
        }
        Ok(())
    })
    .await;
}

/// Every object of the values' schema is closed (`additionalProperties` false, or a map of a
/// given value type): a typo at any depth fails `helm install`, naming it.
#[test]
fn every_object_in_the_values_schema_is_closed() -> anyhow::Result<()> {
    // Kubernetes types of their own, passed through whole: the apiserver checks them.
    const KUBERNETES_TYPED: &[&str] = &[".affinity.nodeAffinity", ".affinity.podAffinity", ".affinity.podAntiAffinity"];
    fn walk(node: &serde_json::Value, path: &str, open: &mut Vec<String>) {
        let object = node["type"] == "object" || node.get("properties").is_some();
        if object && node.get("additionalProperties").is_none() && !KUBERNETES_TYPED.contains(&path) {
            open.push(path.to_string());
        }
        for (k, v) in node["properties"].as_object().into_iter().flatten() {
            walk(v, &format!("{path}.{k}"), open);
        }
    }
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{CHART}/values.schema.json"))?)?;
    let mut open = Vec::new();
    walk(&schema, "", &mut open);
    ensure!(open.is_empty(), "objects of the values schema that accept any key: {open:?}");
    Ok(())
}

/// GitOps tools and CI render charts with `helm template` and no `--kube-version` (helm then
/// assumes v1.20): the chart must render so. (It did not: its `kubeVersion` constraint refused.)
#[tokio::test]
async fn the_chart_renders_without_a_kube_version() -> anyhow::Result<()> {
    let rendered = helm(&["template", "dind", CHART]).await?;
    ensure!(rendered.contains("kind: Deployment"), "{rendered}");
    Ok(())
}

/// Measured before: the values said the default dind-init image came "from the same place as
/// the operator image", but the chart rendered a bare `dind-init:<appVersion>`, which a
/// cluster pulling from a private registry cannot pull. Now it sits beside the operator image.
#[tokio::test]
async fn the_default_init_image_sits_beside_the_operator_image() -> anyhow::Result<()> {
    let init_arg = |rendered: &str| rendered.lines().find_map(|l| l.trim().strip_prefix("- --default-init-image=").map(str::to_string));
    let moved =
        helm(&["template", "dind", CHART, "--set", "image.repository=registry.example/team/dind-operator", "--set", "image.tag=1.2.3"])
            .await?;
    ensure!(init_arg(&moved).as_deref() == Some("registry.example/team/dind-init:1.2.3"), "{:?}", init_arg(&moved));
    let local = helm(&["template", "dind", CHART]).await?;
    ensure!(init_arg(&local).as_deref() == Some("dind-init:0.1.0"), "{:?}", init_arg(&local));
    let given = helm(&["template", "dind", CHART, "--set", "daemon.initImage=mirror.example/dind-init:9"]).await?;
    ensure!(init_arg(&given).as_deref() == Some("mirror.example/dind-init:9"), "{:?}", init_arg(&given));
    Ok(())
}

/// The chart's default daemon image is the project's, beside the operator image, and it runs
/// dind-init from the image; an image of the platform team's own gets a copy unless they say
/// where it carries the binary; a path that is not absolute is refused by the values' schema.
#[tokio::test]
async fn the_default_daemon_image_carries_dind_init_and_others_get_a_copy() -> anyhow::Result<()> {
    let arg = |rendered: &str, flag: &str| rendered.lines().find_map(|l| l.trim().strip_prefix(flag).map(str::to_string));
    let args = |rendered: &str| (arg(rendered, "- --default-image="), arg(rendered, "- --default-image-dind-init-path="));
    let some = |a: &str, b: &str| (Some(a.to_string()), Some(b.to_string()));
    let local = helm(&["template", "dind", CHART]).await?;
    ensure!(args(&local) == some("dind-daemon:0.1.0", "/usr/local/bin/dind-init"), "{:?}", args(&local));
    let moved =
        helm(&["template", "dind", CHART, "--set", "image.repository=registry.example/team/dind-operator", "--set", "image.tag=1.2.3"])
            .await?;
    ensure!(args(&moved) == some("registry.example/team/dind-daemon:1.2.3", "/usr/local/bin/dind-init"), "{:?}", args(&moved));
    let own = helm(&["template", "dind", CHART, "--set", "daemon.image=docker:29.0.0-dind"]).await?;
    ensure!(args(&own) == some("docker:29.0.0-dind", ""), "{:?}", args(&own));
    let built = helm(&["template", "dind", CHART, "--set", "daemon.image=mine:1", "--set", "daemon.dindInitPath=/bin/dind-init"]).await?;
    ensure!(args(&built) == some("mine:1", "/bin/dind-init"), "{:?}", args(&built));
    let refused = helm(&["template", "dind", CHART, "--set", "daemon.dindInitPath=bin/dind-init"]).await;
    let message = format!("{:#}", refused.err().context("a relative dindInitPath was rendered")?);
    ensure!(message.contains("dindInitPath"), "{message}");
    // The platform's placement and image volumes reach the operator as flags.
    let placed =
        helm(&["template", "dind", CHART, "--set", "placement.nodeSelector.pool=builds", "--set", "daemon.dindInitImageVolume=true"])
            .await?;
    ensure!(arg(&placed, "- --placement-node-selector=").as_deref() == Some("pool=builds"), "{placed}");
    ensure!(arg(&placed, "- --dind-init-image-volume=").as_deref() == Some("true"), "{placed}");
    ensure!(arg(&local, "- --placement-node-selector=").is_none(), "no placement by default");
    Ok(())
}

/// Two operators must never write at once: replicas > 1 without leader election is refused by
/// the schema, naming the field; and without election an upgrade stops the old operator before
/// the new one starts (strategy Recreate), while with it a rolling update is safe (the new one
/// waits for the Lease). The default is two replicas, rolled one new ready before one old stops,
/// so the webhook always has a replica that answers (issue 24).
#[tokio::test]
async fn two_writers_at_once_are_impossible() -> anyhow::Result<()> {
    let err = helm(&["template", "dind", CHART, "--set", "replicas=2", "--set", "leaderElection.enabled=false"])
        .await
        .expect_err("replicas=2 without leader election");
    ensure!(err.to_string().contains("/leaderElection/enabled"), "the refusal does not name the field: {err}");
    let deployment = |rendered: &str| -> anyhow::Result<Deployment> {
        let deployment = rendered.split("\n---").find(|d| d.contains("kind: Deployment")).context("no Deployment")?;
        Ok(serde_yaml::from_str(deployment)?)
    };
    let strategy = |rendered: &str| -> anyhow::Result<(Option<String>, Option<String>)> {
        let s = deployment(rendered)?.spec.and_then(|s| s.strategy).unwrap_or_default();
        let unavailable = s.rolling_update.and_then(|r| r.max_unavailable).map(|m| match m {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
        });
        Ok((s.type_, unavailable))
    };
    let single = helm(&["template", "dind", CHART, "--set", "replicas=1"]).await?;
    ensure!(strategy(&single)?.0.as_deref() == Some("Recreate"), "one replica without election must not roll");
    ensure!(!single.contains("--leader-election"), "a single replica runs without election");
    ensure!(!single.contains("kind: PodDisruptionBudget"), "a budget for one replica would block every drain");
    let default = helm(&["template", "dind", CHART]).await?;
    ensure!(deployment(&default)?.spec.and_then(|s| s.replicas) == Some(2), "two replicas by default");
    for rendered in
        [default.clone(), helm(&["template", "dind", CHART, "--set", "replicas=1", "--set", "leaderElection.enabled=true"]).await?]
    {
        ensure!(rendered.contains("--leader-election"), "election off: {rendered}");
        ensure!(strategy(&rendered)? == (Some("RollingUpdate".into()), Some("0".into())), "with election on, roll with none unavailable");
    }
    // Drained gracefully: the grace covers the drain and the shutdown after it.
    let pod = deployment(&default)?.spec.context("spec")?.template.spec.context("pod spec")?;
    ensure!(pod.termination_grace_period_seconds == Some(30), "grace {:?}", pod.termination_grace_period_seconds);
    ensure!(default.contains("- --drain-seconds=5"), "no drain flag");
    // With two replicas a drain keeps one operator running.
    let budget = default.split("\n---").find(|d| d.contains("kind: PodDisruptionBudget")).context("no operator PodDisruptionBudget")?;
    let budget: serde_json::Value = serde_yaml::from_str(budget)?;
    ensure!(budget["spec"]["minAvailable"] == 1, "{budget}");
    ensure!(budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "dind-operator", "{budget}");
    Ok(())
}

/// The webhook as the chart renders it: only labelled pods of opted-in namespaces, never the
/// operator's own; failing closed; and with cert-manager, a Certificate, the CA injector's
/// annotation and the operator reading the mounted files instead of making its own.
#[tokio::test]
async fn the_webhook_is_rendered_for_opted_in_namespaces_and_optionally_cert_manager() -> anyhow::Result<()> {
    let doc = |rendered: &str, kind: &str| -> anyhow::Result<serde_json::Value> {
        let text = rendered.split("\n---").find(|d| d.contains(&format!("kind: {kind}\n"))).with_context(|| format!("no {kind}"))?;
        Ok(serde_yaml::from_str(text)?)
    };
    let rendered = helm(&["template", "dind", CHART, "--namespace", "ops"]).await?;
    let mwc = doc(&rendered, "MutatingWebhookConfiguration")?;
    let hook = &mwc["webhooks"][0];
    ensure!(hook["name"] == "inject.dind.dev" && hook["failurePolicy"] == "Fail" && hook["sideEffects"] == "None", "{hook}");
    ensure!(hook["reinvocationPolicy"] == "IfNeeded", "{hook}");
    let ns_rules = hook["namespaceSelector"]["matchExpressions"].to_string();
    ensure!(ns_rules.contains("dind.dev/injection") && ns_rules.contains("\"NotIn\"") && ns_rules.contains("\"ops\""), "{ns_rules}");
    ensure!(hook["objectSelector"]["matchExpressions"][0]["key"] == "dind.dev/inject", "{hook}");
    ensure!(hook["clientConfig"]["service"]["name"] == "dind-dind-operator-webhook", "{hook}");
    ensure!(rendered.contains("--webhook-addr=0.0.0.0:9443") && !rendered.contains("--webhook-tls-dir"));
    ensure!(!rendered.contains("kind: Certificate"));

    let with_cm = helm(&["template", "dind", CHART, "--namespace", "ops", "--set", "webhook.certManager.enabled=true"]).await?;
    let mwc = doc(&with_cm, "MutatingWebhookConfiguration")?;
    ensure!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/dind-dind-operator-webhook", "{mwc}");
    let cert = doc(&with_cm, "Certificate")?;
    ensure!(cert["spec"]["secretName"] == "dind-dind-operator-webhook-tls", "{cert}");
    ensure!(cert["spec"]["dnsNames"][0] == "dind-dind-operator-webhook.ops.svc", "{cert}");
    ensure!(with_cm.contains("--webhook-tls-dir=/webhook-tls") && with_cm.contains("kind: Issuer"));

    ensure!(!rendered.contains("--webhook-client-ca"), "any caller by default");
    // Only the apiserver's client certificate (of the CA in the named Secret) may call.
    let authed = helm(&["template", "dind", CHART, "--set", "webhook.clientAuth.caSecret=apiserver-webhook-ca"]).await?;
    let d = doc(&authed, "Deployment")?;
    let pod = &d["spec"]["template"]["spec"];
    ensure!(pod["containers"][0]["args"].to_string().contains("--webhook-client-ca=/webhook-client-ca/ca.crt"), "{pod}");
    ensure!(pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/webhook-client-ca", "{pod}");
    ensure!(pod["volumes"][0]["secret"]["secretName"] == "apiserver-webhook-ca", "{pod}");

    let off = helm(&["template", "dind", CHART, "--set", "webhook.enabled=false"]).await?;
    ensure!(!off.contains("MutatingWebhookConfiguration") && !off.contains("--webhook-addr"));
    Ok(())
}
