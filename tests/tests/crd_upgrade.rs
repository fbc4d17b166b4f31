//! Helm installs the CRDs in a chart's `crds/` once and never upgrades them. The chart's hook
//! (`crds.upgrade`, a pre-install/pre-upgrade Job running `dind-operator apply-crd` from the
//! operator image) moves the CRD with the operator: proven on the real cluster from the chart
//! of an earlier commit (the last release before `spec.clients`): its CRD and its release, a
//! DindDaemon made under it, then `helm upgrade` to this chart and a field only the new CRD has,
//! kept. And why the hook is needed: with it off, `helm upgrade` leaves the old schema and the
//! apiserver prunes the new field.
//!
//! Its own test binary: it replaces the cluster-wide CRD for a moment, which must not happen
//! while other tests use it (cargo runs test binaries one after another).

use anyhow::{Context as _, ensure};
use dind_tests::{CHART, chart_image_sets, chart_policy_only_in, run_tool, suffix, with_namespace};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// The commit whose chart is "the previous release": its CRD has no `spec.clients`.
const EARLIER: &str = "b0819b7";

/// The chart's CRDs, applied server-side (as an older operator's cluster has them).
async fn apply_crds(chart: &std::path::Path) -> anyhow::Result<()> {
    let crds = chart.join("crds");
    run_tool("kubectl", &["apply", "--server-side", "--force-conflicts", "-f", &crds.to_string_lossy()]).await?;
    run_tool("kubectl", &["wait", "--for=condition=Established", "crd/dinddaemons.dind.dev", "--timeout=60s"]).await?;
    Ok(())
}

/// The chart of commit [`EARLIER`], from this repository's history, into `dir`.
fn earlier_chart(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let archive =
        std::process::Command::new("git").args(["-C", repo, "archive", "--format=tar", EARLIER, "charts/dind-operator"]).output()?;
    ensure!(
        archive.status.success(),
        "git archive {EARLIER}: {} (the test needs the repository's history: a clone, not a shallow one)",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar =
        std::process::Command::new("tar").args(["-x", "-C", &dir.to_string_lossy()]).stdin(std::process::Stdio::piped()).spawn()?;
    std::io::Write::write_all(tar.stdin.as_mut().context("tar's stdin")?, &archive.stdout)?;
    ensure!(tar.wait()?.success(), "tar -x of the earlier chart");
    let chart = dir.join("charts/dind-operator");
    let crd = std::fs::read_to_string(chart.join("crds/dinddaemon.yaml"))?;
    let schema: serde_yaml::Value = serde_yaml::from_str(&crd)?;
    let spec = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    ensure!(spec.get("clients").is_none(), "the earlier chart's CRD already has spec.clients: pick an older commit");
    Ok(chart)
}

async fn clients(client: &Client, ns: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &dind_resource());
    Ok(api.get("ci").await?.data["spec"].get("clients").cloned())
}

fn dind_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<dind_operator::crd::DindDaemon>(&())
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_release_moves_the_crd() {
    with_namespace("crd-upgrade", |client: Client, ns: String| async move {
        let dir = std::env::temp_dir().join(format!("dind-earlier-chart-{}", suffix()));
        let release = format!("up-{}", suffix());
        let result = async {
            let old = earlier_chart(&dir)?;
            // A cluster that had the previous release: its CRD, its release, a DindDaemon.
            apply_crds(&old).await?;
            let only_here = chart_policy_only_in(&ns);
            let watch = format!("watchNamespaces={{{ns}}}");
            let images = chart_image_sets();
            let mut base = vec!["--set", only_here.as_str(), "--set", watch.as_str()];
            for set in &images {
                base.extend(["--set", set.as_str()]);
            }
            run_tool("helm", &[&["install", &release, &old.to_string_lossy(), "-n", &ns][..], &base].concat()).await?;
            let daemon = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"},
                "spec": {"replicas": 2, "nodeSelector": {"dind.dev/test": "no-kubelet"}}});
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &dind_resource());
            api.create(&Default::default(), &serde_json::from_value(daemon)?).await?;
            let grant = json!({"spec": {"clients": {"namespaceSelector": {"matchLabels": {"dind.dev/tenant": "true"}}}}});

            // With the hook off, as Helm alone does: the CRD stays old and the new field is pruned.
            run_tool("helm", &[&["upgrade", &release, CHART, "-n", &ns, "--set", "crds.upgrade=false"][..], &base].concat()).await?;
            api.patch("ci", &PatchParams::default(), &Patch::Merge(&grant)).await?;
            ensure!(clients(&client, &ns).await?.is_none(), "helm upgrade without the hook upgraded the CRD (the hook would be needless)");

            // `helm upgrade`, as users run it: the hook applies the new CRD first.
            let upgraded = run_tool("helm", &[&["upgrade", &release, CHART, "-n", &ns][..], &base].concat()).await?;
            api.patch("ci", &PatchParams::default(), &Patch::Merge(&grant)).await?;
            ensure!(clients(&client, &ns).await?.is_some(), "spec.clients was not kept after helm upgrade:\n{upgraded}");
            let kept = api.get("ci").await?;
            ensure!(kept.data["spec"]["replicas"] == 2, "the DindDaemon made before the upgrade changed: {:?}", kept.data["spec"]);
            let crd = run_tool("kubectl", &["get", "crd", "dinddaemons.dind.dev", "-o", "jsonpath={.metadata.annotations}"]).await?;
            ensure!(crd.contains("dind.dev/operator-version"), "the CRD does not say which operator applied it: {crd}");
            // The hook's objects are gone once it succeeded.
            let left = run_tool("kubectl", &["get", "jobs,serviceaccounts", "-n", &ns, "-o", "name"]).await?;
            ensure!(!left.contains("-crds"), "the hook's objects were left behind: {left}");
            anyhow::Ok(())
        }
        .await;
        // Whatever happened, leave the current CRD behind for the tests that follow.
        let restored = apply_crds(std::path::Path::new(CHART)).await;
        let _ = run_tool("helm", &["uninstall", &release, "-n", &ns]).await;
        let _ = std::fs::remove_dir_all(&dir);
        result.and(restored)
    })
    .await;
}
