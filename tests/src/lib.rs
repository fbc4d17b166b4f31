//! Test support for the real-cluster harness (`tests/cluster/cluster.sh`).
//!
//! Each test that talks to the apiserver runs inside [`with_namespace`]: a fresh namespace,
//! removed afterwards unless `DIND_TEST_KEEP=1`, and on failure a dump of the namespace's
//! objects and events in the test output, so a red CI run explains itself.

pub mod docker;
pub mod operator;
pub mod pods;
pub mod webhook;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};
use rand::Rng as _;

/// Where `cluster.sh` keeps its state unless told otherwise.
pub const DEFAULT_CLUSTER_DIR: &str = "/tmp/dind-operator-cluster";

/// The harness's state directory.
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("DIND_CLUSTER_DIR").map_or_else(|| PathBuf::from(DEFAULT_CLUSTER_DIR), PathBuf::from)
}

/// The Helm chart in this repository.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dind-operator");

/// `--set` value that binds the chart's policy to namespace `ns` only: tests that install the
/// chart run beside others whose DindDaemons the default policy would refuse.
pub fn chart_policy_only_in(ns: &str) -> String {
    format!("policy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={ns}")
}

/// A file tests/registry/registry.sh leaves in `$DIND_CLUSTER_DIR/registry/` (`host`, `mirror`,
/// `ca.crt`, `password`, `docker-config/config.json`, the logs), trimmed.
pub fn registry_file(name: &str) -> anyhow::Result<String> {
    let path = cluster_dir().join("registry").join(name);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("{} (is the harness registry up?)", path.display()))?.trim().to_string())
}

/// The CA of the client certificate the harness's apiserver presents to admission webhooks
/// (tests/cluster/cluster.sh, `--admission-control-config-file`), and that certificate and key's
/// paths.
pub fn webhook_client_ca() -> anyhow::Result<(String, PathBuf, PathBuf)> {
    let pki = cluster_dir().join("pki");
    let ca = std::fs::read_to_string(pki.join("webhook-client-ca.crt")).context("the harness's webhook client CA (restart the cluster)")?;
    Ok((ca, pki.join("webhook-client.crt"), pki.join("webhook-client.key")))
}

/// The harness registry's `HOST:PORT` (tests/registry/registry.sh), when it runs.
pub fn registry() -> Option<String> {
    registry_file("host").ok().filter(|h| !h.is_empty())
}

/// A file tests/release/run.sh leaves in `$DIND_CLUSTER_DIR/release/` (`registry`, `version`,
/// `cosign.pub`, `bin`, `helm/registry.json`, `ca-bundle.crt`), trimmed; a path for the files.
pub fn release_file(name: &str) -> anyhow::Result<String> {
    let path = cluster_dir().join("release").join(name);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("{} (run tests/release/run.sh)", path.display()))?.trim().to_string())
}

/// The path of a file tests/release/run.sh left, as a string for a command line.
pub fn release_path(name: &str) -> String {
    cluster_dir().join("release").join(name).to_string_lossy().into_owned()
}

/// What `helm install` and `helm upgrade` take after the release name: the chart and how to
/// reach it. With `DIND_TEST_RELEASE=1` (tests/run.sh, after tests/release/run.sh published this
/// commit with the release workflow), the release in the harness registry, as the README tells
/// users to install it: `oci://HOST:PORT/releases/charts/dind-operator --version V`, its images
/// pulled by tag from beside it (the released chart's defaults). Otherwise this repository's
/// chart with the harness's images (`chart_image_sets`).
pub fn chart_source() -> anyhow::Result<Vec<String>> {
    if std::env::var("DIND_TEST_RELEASE").is_ok_and(|v| v == "1") {
        let registry = release_file("registry")?;
        return Ok(vec![
            format!("oci://{registry}/charts/dind-operator"),
            "--version".into(),
            release_file("version")?,
            "--registry-config".into(),
            release_path("helm/registry.json"),
            "--ca-file".into(),
            cluster_dir().join("registry/ca.crt").to_string_lossy().into_owned(),
        ]);
    }
    let mut args = vec![CHART.to_string()];
    for set in chart_image_sets() {
        args.extend(["--set".to_string(), set]);
    }
    Ok(args)
}

/// The chart's `--set` values for the operator image, as a user sets them: pulled by tag
/// (`IfNotPresent`) from the harness registry, where tests/cluster/node.sh pushed the project's
/// images (the operator's, and beside it the daemon and dind-init images the chart derives from
/// it). Without a registry (no node), the local image that is never pulled.
pub fn chart_image_sets() -> Vec<String> {
    match registry() {
        Some(host) => vec![format!("image.repository={host}/dind-operator"), "image.pullPolicy=IfNotPresent".into()],
        None => vec!["image.pullPolicy=Never".into()],
    }
}

/// The directory a cached build script of the harness prints on its last line
/// (`clients/build.sh`, `release/build.sh`: paths under tests/), built first when not cached.
pub fn built_tools(script: &str) -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script))
        .output()
        .with_context(|| format!("running tests/{script}"))?;
    anyhow::ensure!(out.status.success(), "tests/{script}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().last().with_context(|| format!("tests/{script} printed no directory"))?.trim()))
}

/// The admin kubeconfig: `$KUBECONFIG` if set, else the harness's.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG").map_or_else(|| cluster_dir().join("kubeconfig"), PathBuf::from)
}

/// The directory of the harness's binaries (kubectl, helm, ...), as `cluster.sh` recorded it.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let recorded = cluster_dir().join("bin");
    let dir = std::fs::read_to_string(&recorded).with_context(|| format!("{} (is the harness up?)", recorded.display()))?;
    Ok(PathBuf::from(dir.trim()))
}

/// The kube config for the harness's admin user.
pub async fn admin_config() -> anyhow::Result<Config> {
    let path = kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}: start the harness with tests/cluster/cluster.sh up", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)
}

/// An admin client of the harness.
pub async fn client() -> anyhow::Result<Client> {
    install_crypto_provider();
    Ok(Client::try_from(admin_config().await?)?)
}

/// rustls needs one process-wide crypto provider; we use ring everywhere.
pub fn install_crypto_provider() {
    // Err only means another test in this process installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A short random suffix for names that must not collide across tests and runs.
pub fn suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..6).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Runs `body` in a fresh namespace named after the test. On failure the namespace's objects and
/// events are printed; the namespace is removed either way unless `DIND_TEST_KEEP=1`.
pub async fn with_namespace<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let client = client().await.expect("harness client");
    let prefix: String = test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let prefix = prefix.trim_matches('-');
    let name = format!("{}-{}", &prefix[..prefix.len().min(50)].trim_end_matches('-'), suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("dind.dev/test".to_string(), prefix.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &ns).await.expect("create test namespace");

    let started = std::time::Instant::now();
    let outcome = tokio::spawn(body(client.clone(), name.clone())).await;
    let failed = !matches!(outcome, Ok(Ok(())));
    if failed {
        dump_namespace(&name).await;
    }
    if std::env::var("DIND_TEST_KEEP").as_deref() == Ok("1") {
        eprintln!("DIND_TEST_KEEP=1: keeping namespace {name}");
    } else {
        // Cluster-scoped leftovers first: a webhook configuration of a gone operator would
        // refuse every later labelled pod.
        webhook::forget(&client, &name).await;
        uninstall_releases(&name).await;
        if let Err(e) = namespaces.delete(&name, &DeleteParams::background()).await {
            eprintln!("could not delete namespace {name}: {e}");
        }
    }
    // What each test costs CI (tests/run.sh prints these lines of the end-to-end tests).
    eprintln!("TIME {test}: {:.0} s", started.elapsed().as_secs_f64());
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{test} failed in namespace {name}: {e:?}"),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// Uninstalls the Helm releases of `ns` (their cluster-scoped objects outlive the namespace).
async fn uninstall_releases(ns: &str) {
    let Ok(list) = run_tool("helm", &["list", "-n", ns, "-q"]).await else { return };
    for release in list.lines().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = run_tool("helm", &["uninstall", "-n", ns, release.trim()]).await {
            eprintln!("could not uninstall {release} from {ns}: {e}");
        }
    }
}

/// Prints what a person debugging a red test would ask for first: objects, then events.
pub async fn dump_namespace(ns: &str) {
    let Ok(bin) = bin_dir() else { return };
    let kubectl = bin.join("kubectl");
    let kubeconfig = kubeconfig_path();
    let kinds = "dinddaemons,statefulsets,pods,services,secrets,configmaps,networkpolicies,persistentvolumeclaims,leases";
    for args in [
        vec!["get", kinds, "-o", "wide", "--ignore-not-found"],
        vec!["get", "events", "--sort-by=.lastTimestamp"],
        vec!["get", "dinddaemons", "-o", "yaml", "--ignore-not-found"],
        // A node tainted by the kubelet (disk or memory pressure) leaves every pod Pending.
        vec!["get", "nodes", "-o", "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key"],
    ] {
        let out = tokio::process::Command::new(&kubectl).arg("--kubeconfig").arg(&kubeconfig).args(["-n", ns]).args(&args).output().await;
        match out {
            Ok(out) => eprintln!(
                "---- kubectl -n {ns} {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("---- kubectl {}: {e}", args.join(" ")),
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `limit` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > limit {
            match last_err {
                Some(e) => bail!("{what}: not within {limit:?}; last error: {e:?}"),
                None => bail!("{what}: not within {limit:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a harness binary (kubectl, helm) with the admin kubeconfig; returns stdout, or an
/// error with stderr when it exits non-zero.
pub async fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin_dir()?.join(tool))
        .env("KUBECONFIG", kubeconfig_path())
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply -n NS -f` a manifest given as text (YAML or JSON), through a temp file, so the
/// path under test is kubectl's own.
pub async fn kubectl_apply(ns: &str, manifest: &str) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("dind-apply-{}.yaml", suffix()));
    std::fs::write(&file, manifest)?;
    let out = run_tool("kubectl", &["apply", "-n", ns, "-f", &file.to_string_lossy()]).await;
    let _ = std::fs::remove_file(&file);
    out.map(|_| ())
}

/// The operator binary under test: `$DIND_OPERATOR_BIN`, else the one cargo built beside
/// this test executable (run `cargo build -p dind-operator` first; tests/run.sh does).
pub fn operator_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DIND_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Tests live in target/PROFILE/deps/, binaries such as the benchmarks in target/PROFILE/.
    let dir = exe.parent().expect("target dir");
    [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join("dind-operator"))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("dind-operator"))
}

/// A real `dind-operator run` process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Operator {
    child: std::process::Child,
    pub http: std::net::SocketAddr,
}

impl Operator {
    /// Starts the operator for `namespace` with extra flags; logs go to the test's stderr.
    pub fn start(namespace: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_kubeconfig(&kubeconfig_path(), namespace, extra)
    }

    /// [`Operator::start`] as whoever `kubeconfig` authenticates.
    pub fn start_with_kubeconfig(kubeconfig: &std::path::Path, namespace: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let bin = operator_binary();
        anyhow::ensure!(bin.exists(), "{} missing: run `cargo build -p dind-operator` first", bin.display());
        let http = free_local_addr()?;
        let child = std::process::Command::new(&bin)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("DIND_TEST_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .args(["run", "--namespaces", namespace, "--http-addr", &http.to_string(), "--query-daemons=false"])
            .args(extra)
            // The operator logs to stdout; a benchmark's stdout is for its figures.
            .stdout(std::io::stderr())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, http })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as the kubelet sends it; then waits up to `within` for the process to exit.
    /// Returns its exit status, or None if it was still running (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let sent = std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.pid());
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        Ok(None)
    }

    /// SIGKILL: no graceful shutdown, as when a node dies mid-reconcile.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The value of one un-labelled metric from `/metrics`, or None if not served (yet).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        Self::metric_at(self.http, name).await
    }

    /// [`Operator::metric`] for an operator's HTTP address.
    pub async fn metric_at(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
        let text = http_get(addr, "/metrics").await.ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_local_addr() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A minimal HTTP/1.0 GET on loopback; returns the body of a 2xx answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(head.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')), "GET {path}: {head}");
    Ok(body.to_string())
}
