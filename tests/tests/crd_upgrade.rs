//! Helm installs the CRDs in a chart's `crds/` once and never upgrades them. The upgrade path
//! the README documents — apply the chart's CRDs server-side, then `helm upgrade` — proven on
//! the real apiserver: an install with an older CRD (one without `spec.cache`), a DindDaemon
//! made under it, an upgrade, and the new field kept. Also why the step is needed: `helm
//! upgrade` alone leaves the old schema, and the apiserver prunes the new field.
//!
//! Its own test binary: it replaces the cluster-wide CRD for a moment, which must not happen
//! while other tests use it (cargo runs test binaries one after another).

use anyhow::{Context as _, ensure};
use dind_tests::{CHART, chart_policy_only_in, run_tool, suffix, with_namespace};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const CRD_FILE: &str = "crds/dinddaemon.yaml";

/// The README's upgrade step: the chart's CRDs, applied server-side.
async fn apply_crds(chart: &std::path::Path) -> anyhow::Result<()> {
    let crds = chart.join("crds");
    run_tool("kubectl", &["apply", "--server-side", "--force-conflicts", "-f", &crds.to_string_lossy()]).await?;
    run_tool("kubectl", &["wait", "--for=condition=Established", "crd/dinddaemons.dind.dev", "--timeout=60s"]).await?;
    Ok(())
}

/// A copy of the chart whose CRD lacks `spec.cache`: the chart as it was before that field.
fn old_chart(dir: &std::path::Path) -> anyhow::Result<()> {
    run_tool_sync("cp", &["-r", CHART, &dir.to_string_lossy()])?;
    let file = dir.join(CRD_FILE);
    let mut crd: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file)?)?;
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let removed = spec["properties"].as_mapping_mut().context("spec properties")?.remove("cache");
    ensure!(removed.is_some(), "the CRD has no spec.cache to remove");
    std::fs::write(&file, serde_yaml::to_string(&crd)?)?;
    Ok(())
}

fn run_tool_sync(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(tool).args(args).status()?;
    ensure!(status.success(), "{tool} {args:?}: {status}");
    Ok(())
}

async fn high_water(client: &Client, ns: &str) -> anyhow::Result<Option<i64>> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &dind_resource());
    Ok(api.get("ci").await?.data["spec"]["cache"]["highWaterPercent"].as_i64())
}

fn dind_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<dind_operator::crd::DindDaemon>(&())
}

#[tokio::test]
async fn the_documented_upgrade_path_keeps_a_new_field() {
    with_namespace("crd-upgrade", |client: Client, ns: String| async move {
        let old = std::env::temp_dir().join(format!("dind-old-chart-{}", suffix()));
        old_chart(&old)?;
        let release = format!("up-{}", suffix());
        let result = async {
            // A cluster that had the old chart: its CRD, its release, a DindDaemon.
            apply_crds(&old).await?;
            let only_here = chart_policy_only_in(&ns);
            let watch = format!("watchNamespaces={{{ns}}}");
            run_tool("helm", &["install", &release, &old.to_string_lossy(), "-n", &ns, "--set", &only_here, "--set", &watch]).await?;
            let daemon = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"},
                "spec": {"replicas": 2, "nodeSelector": {"dind.dev/test": "no-kubelet"}}});
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &dind_resource());
            api.create(&Default::default(), &serde_json::from_value(daemon)?).await?;
            let set_high_water = json!({"spec": {"cache": {"highWaterPercent": 90}}});

            // `helm upgrade` alone: the CRD stays old and the new field is pruned.
            run_tool("helm", &["upgrade", &release, CHART, "-n", &ns, "--set", &only_here, "--set", &watch]).await?;
            api.patch("ci", &PatchParams::default(), &Patch::Merge(&set_high_water)).await?;
            ensure!(high_water(&client, &ns).await?.is_none(), "helm upgrade alone upgraded the CRD (the step would be needless)");

            // The documented path: the chart's CRDs first, then the upgrade.
            apply_crds(std::path::Path::new(CHART)).await?;
            run_tool("helm", &["upgrade", &release, CHART, "-n", &ns, "--set", &only_here, "--set", &watch]).await?;
            api.patch("ci", &PatchParams::default(), &Patch::Merge(&set_high_water)).await?;
            ensure!(high_water(&client, &ns).await? == Some(90), "the new field was not kept after the documented upgrade");
            let kept = api.get("ci").await?;
            ensure!(kept.data["spec"]["replicas"] == 2, "the DindDaemon made before the upgrade changed: {:?}", kept.data["spec"]);
            anyhow::Ok(())
        }
        .await;
        // Whatever happened, leave the current CRD behind for the tests that follow.
        let restored = apply_crds(std::path::Path::new(CHART)).await;
        let _ = run_tool("helm", &["uninstall", &release, "-n", &ns]).await;
        let _ = std::fs::remove_dir_all(&old);
        result.and(restored)
    })
    .await;
}
