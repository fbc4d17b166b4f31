//! The release as a platform team checks it before installing: tests/release/run.sh published
//! this commit with the release workflow (.github/workflows/release.yml, run by act) to the
//! harness registry, signed with a key made for the run. Here: `scripts/release.sh verify` (what
//! docs/install.md tells users to run) passes; the same release fails for another signer's key;
//! an image whose digest differs by one label (as a tampered image would) fails; each image's
//! signed SBOM lists what the image holds; the released chart's default images are the released ones.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use dind_tests::{cluster_dir, release_file, release_path, run_tool, suffix};
use tokio::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A command with the release tools first on PATH, the registry trusted and logged in to (for
/// cosign and docker), as tests/release/run.sh set them up.
fn tool(program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let bin = release_file("bin")?;
    let mut cmd = Command::new(program);
    cmd.env("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()))
        .env("SSL_CERT_FILE", release_path("ca-bundle.crt"))
        .env("TUF_ROOT", release_path("sigstore"))
        .env("DOCKER_CONFIG", cluster_dir().join("registry/docker-config"));
    Ok(cmd)
}

/// Runs a command; its status, stdout and stderr.
async fn output(cmd: &mut Command) -> anyhow::Result<(bool, String, String)> {
    let out = cmd.output().await.context("running a release tool")?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The release's cosign, as [`tool`] sets it up.
fn cosign() -> anyhow::Result<Command> {
    tool(PathBuf::from(release_file("bin")?).join("cosign"))
}

/// cosign `subcommand ... --key KEY`, without the transparency log the key-signed release has none of.
fn cosign_checking(subcommand: &[&str], key: &Path) -> anyhow::Result<Command> {
    let mut cmd = cosign()?;
    cmd.args(subcommand).arg("--key").arg(key).arg("--insecure-ignore-tlog=true");
    Ok(cmd)
}

async fn cosign_verify(key: &Path, reference: &str) -> anyhow::Result<(bool, String, String)> {
    output(cosign_checking(&["verify"], key)?.arg(reference)).await
}

/// The package names in the SPDX SBOM attested to `image`, once its attestation verifies.
async fn sbom_packages(key: &Path, image: &str) -> anyhow::Result<Vec<String>> {
    let (ok, out, err) = output(cosign_checking(&["verify-attestation", "--type", "spdxjson"], key)?.arg(image)).await?;
    ensure!(ok, "cosign verify-attestation {image}: {err}");
    let envelope: serde_json::Value = serde_json::from_str(out.lines().next().context("no attestation")?)?;
    let payload = base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().context("payload")?)?;
    let statement: serde_json::Value = serde_json::from_slice(&payload)?;
    let packages = statement["predicate"]["packages"].as_array().context("the SBOM's packages")?;
    Ok(packages.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect())
}

#[tokio::test]
async fn release_verifies_and_a_tampered_digest_or_another_key_does_not() -> anyhow::Result<()> {
    if std::env::var("DIND_TEST_RELEASE").as_deref() != Ok("1") {
        eprintln!("SKIPPED: no release to check (tests/run.sh publishes one and sets DIND_TEST_RELEASE=1)");
        return Ok(());
    }
    let registry = release_file("registry")?;
    let version = release_file("version")?;
    let key = PathBuf::from(release_path("cosign.pub"));

    // 1. What users run: every image and the chart signed, every image with a signed SBOM.
    let (ok, out, err) =
        output(tool(format!("{ROOT}/scripts/release.sh"))?.args(["verify", &registry, &version]).env("COSIGN_PUBLIC_KEY", &key)).await?;
    ensure!(ok, "scripts/release.sh verify failed: {out}{err}");
    let verified = out.lines().filter(|l| l.starts_with("verified: ")).count();
    ensure!(verified == 7, "3 images and the chart signed, 3 SBOMs attested; verified {verified}:\n{out}");

    // 2. Another signer's key: the same release does not verify.
    let other = std::env::temp_dir().join(format!("dind-other-key-{}", suffix()));
    std::fs::create_dir_all(&other)?;
    let (ok, _, err) = output(cosign()?.current_dir(&other).env("COSIGN_PASSWORD", "").arg("generate-key-pair")).await?;
    ensure!(ok, "cosign generate-key-pair: {err}");
    let operator = format!("{registry}/dind-operator:{version}");
    let (ok, _, err) = cosign_verify(&other.join("cosign.pub"), &operator).await?;
    let _ = std::fs::remove_dir_all(&other);
    ensure!(!ok, "{operator} verified with a key that did not sign it");
    println!("another key: {}", err.lines().last().unwrap_or_default());

    // 3. A tampered image: the released one with one label more, pushed beside it (as someone
    // with push rights would); its digest has no signature.
    let tampered = format!("{registry}/dind-operator:{version}-tampered-{}", suffix());
    let dockerfile = std::env::temp_dir().join(format!("dind-tampered-{}", suffix()));
    std::fs::create_dir_all(&dockerfile)?;
    std::fs::write(dockerfile.join("Dockerfile"), format!("FROM {operator}\nLABEL tampered=yes\n"))?;
    let (ok, _, err) = output(tool("docker")?.env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", &tampered]).arg(&dockerfile)).await?;
    let _ = std::fs::remove_dir_all(&dockerfile);
    ensure!(ok, "docker build of the tampered image: {err}");
    let (ok, _, err) = output(tool("docker")?.args(["push", "-q", &tampered])).await?;
    ensure!(ok, "docker push {tampered}: {err}");
    let (_, digests, _) = output(tool("docker")?.args(["image", "inspect", "-f", "{{join .RepoDigests \"\\n\"}}", &tampered])).await?;
    let _ = output(tool("docker")?.args(["rmi", &tampered])).await;
    let digest = digests.lines().find_map(|l| l.split_once('@').map(|(_, d)| d.to_string())).context("the tampered image's digest")?;
    let by_digest = format!("{registry}/dind-operator@{digest}");
    let (ok, _, err) = cosign_verify(&key, &by_digest).await?;
    ensure!(!ok, "the tampered {by_digest} verified");
    ensure!(err.contains("no signatures found") || err.contains("no matching signatures"), "cosign's refusal: {err}");
    println!("tampered digest {digest}: {}", err.lines().last().unwrap_or_default());
    // ... while the released tag still does.
    let (ok, _, err) = cosign_verify(&key, &operator).await?;
    ensure!(ok, "{operator} no longer verifies: {err}");

    // 4. The signed SBOMs list what each image holds: the daemon image its engine (the Go
    // modules of dockerd, containerd, runc); the operator its crates (cargo auditable).
    let want = [
        ("dind-daemon", &["github.com/docker/docker", "github.com/containerd/containerd", "github.com/opencontainers/runc"][..]),
        ("dind-operator", &["kube-runtime", "rustls", "tokio"][..]),
        ("dind-init", &["rcgen", "rustls"][..]),
    ];
    for (image, crates) in want {
        let names = sbom_packages(&key, &format!("{registry}/{image}:{version}")).await?;
        for want in crates {
            ensure!(names.iter().any(|n| n.starts_with(want)), "the {image} image's SBOM does not list {want} ({} packages)", names.len());
        }
        println!("{image} SBOM: {} packages", names.len());
    }

    // 5. The released chart installs the released images by default.
    let chart = format!("oci://{registry}/charts/dind-operator");
    let ca = cluster_dir().join("registry/ca.crt");
    let values = run_tool(
        "helm",
        &[
            "show",
            "values",
            &chart,
            "--version",
            &version,
            "--registry-config",
            &release_path("helm/registry.json"),
            "--ca-file",
            &ca.to_string_lossy(),
        ],
    )
    .await?;
    ensure!(values.contains(&format!("  repository: {registry}/dind-operator\n")), "the released chart's image.repository:\n{values}");
    Ok(())
}
