//! The chart renders objects that every supported Kubernetes minor accepts, strictly: kubeconform
//! with each minor's own schemas (tests/release/build.sh makes them from that release's OpenAPI
//! document, every object closed, so a field the API does not have is an error), for value sets
//! that between them reach every template branch, with `--kube-version` of that minor. 1.30 and
//! newer with the defaults; 1.29 without the platform policy (ValidatingAdmissionPolicy is
//! admissionregistration.k8s.io/v1 from 1.30). The examples, against the CRD.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use dind_tests::{CHART, run_tool, suffix};
use tokio::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Value sets that between them render every template and branch.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    &[
        "replicas=1",
        "leaderElection.enabled=false",
        "watchNamespaces={*}",
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=ca",
        "webhook.clientAuth.caSecret=client-ca",
        "daemon.dindInitImageVolume=true",
        "tenantRbac.editRights=true",
        "crds.upgrade=false",
        "metrics.enabled=false",
        "resources.limits.cpu=1",
        "placement.nodeSelector.pool=ci",
        "tolerations[0].key=ci",
        "podAnnotations.a=b",
    ],
    &[
        "watchNamespaces={team-a,team-b}",
        "webhook.enabled=false",
        "tenantRbac.aggregateToDefaultRoles=false",
        "daemon.image=registry.example/docker:28-dind",
        "daemon.initImage=registry.example/dind-init:0.1.0",
        "logFormat=text",
    ],
];

/// kubeconform -strict for Kubernetes `version`: its success and its output.
async fn kubeconform(tools: &Path, crds: &Path, version: &str, files: &[PathBuf]) -> anyhow::Result<(bool, String)> {
    let kinds = "{{ .ResourceKind }}{{ .KindSuffix }}.json";
    let out = Command::new(tools.join("kubeconform"))
        .args(["-strict", "-summary", "-kubernetes-version", version, "-schema-location"])
        .arg(format!(
            "{}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}/{kinds}",
            tools.join("schemas").display()
        ))
        .arg("-schema-location")
        .arg(format!("{}/{kinds}", crds.display()))
        .args(files)
        .output()
        .await?;
    Ok((out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
}

fn sorted_versions(schemas: &Path) -> anyhow::Result<Vec<String>> {
    let mut versions: Vec<String> = std::fs::read_dir(schemas)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix("-standalone-strict")?.strip_prefix('v').map(str::to_string))
        .collect();
    versions.sort_by_key(|v| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
    Ok(versions)
}

#[tokio::test]
async fn the_chart_renders_strictly_valid_objects_for_every_supported_kubernetes_minor() -> anyhow::Result<()> {
    let tools = dind_tests::built_tools("release/build.sh")?;
    let versions = sorted_versions(&tools.join("schemas"))?;
    ensure!(versions.len() >= 9 && versions[0].starts_with("1.29."), "schemas for 1.29 and newer: {versions:?}");

    // The CRDs' schemas: cert-manager's Certificate (from the build) and ours, from this commit.
    let work = std::env::temp_dir().join(format!("dind-conform-{}", suffix()));
    let crds = work.join("crds");
    std::fs::create_dir_all(&crds)?;
    for entry in std::fs::read_dir(tools.join("schemas/crds"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), crds.join(entry.file_name()))?;
    }
    let ours = Command::new("python3")
        .arg(format!("{ROOT}/tests/release/k8s-schemas.py"))
        .arg("crds")
        .arg(&crds)
        .arg(format!("{ROOT}/crds/dinddaemon.yaml"))
        .output()
        .await?;
    ensure!(ours.status.success(), "k8s-schemas.py crds: {}", String::from_utf8_lossy(&ours.stderr));

    let result = async {
        let mut examples: Vec<PathBuf> = std::fs::read_dir(format!("{ROOT}/examples"))?.filter_map(|e| Some(e.ok()?.path())).collect();
        examples.sort();
        for version in &versions {
            let mut files = examples.clone();
            for (i, set) in VALUE_SETS.iter().enumerate() {
                let mut args = vec!["template", "dind", CHART, "--include-crds", "--namespace", "dind-system", "--kube-version", version];
                for value in set.iter().copied() {
                    args.extend(["--set", value]);
                }
                if version.starts_with("1.29.") {
                    args.extend(["--set", "policy.enabled=false"]);
                }
                let file = work.join(format!("{version}-{i}.yaml"));
                std::fs::write(&file, run_tool("helm", &args).await?)?;
                files.push(file);
            }
            let (ok, out) = kubeconform(&tools, &crds, version, &files).await?;
            let summary = out.lines().find(|l| l.starts_with("Summary:")).unwrap_or_default().to_string();
            ensure!(ok && summary.contains("Invalid: 0, Errors: 0, Skipped: 0"), "Kubernetes {version}:\n{out}");
            println!("Kubernetes {version}: {summary}");
        }
        // A field the API does not have is refused, naming it.
        let rendered = std::fs::read_to_string(work.join("1.35.4-0.yaml")).context("the 1.35.4 rendering")?;
        ensure!(rendered.contains("imagePullPolicy:"), "the rendering has no imagePullPolicy");
        let typo = work.join("typo.yaml");
        std::fs::write(&typo, rendered.replacen("imagePullPolicy:", "imagePullPolicyy:", 1))?;
        let (ok, out) = kubeconform(&tools, &crds, "1.35.4", &[typo]).await?;
        ensure!(!ok && out.contains("imagePullPolicyy"), "a misspelt field passed kubeconform:\n{out}");
        // So does the 1.29 API without ValidatingAdmissionPolicy: the default values need 1.30.
        let default = work.join("default-1.29.yaml");
        std::fs::write(&default, run_tool("helm", &["template", "dind", CHART, "--kube-version", &versions[0]]).await?)?;
        let (ok, out) = kubeconform(&tools, &crds, &versions[0], &[default]).await?;
        ensure!(!ok && out.contains("ValidatingAdmissionPolicy"), "the policy passed on {}:\n{out}", versions[0]);
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}
