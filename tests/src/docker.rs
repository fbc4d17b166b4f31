//! Real containers for dind-init's tests, on the test dockerd (`tests/docker/dockerd.sh`).
//! Every container and volume is removed when its guard drops, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dind_operator::model::tls;

/// The stand-in daemon image and the busybox image that tests/images/build.sh makes.
pub const DAEMON_IMAGE: &str = "dind-daemon:test";
pub const BUSYBOX_IMAGE: &str = "dind-busybox:test";

/// Capabilities mode of docs/design.md (every capability but SYS_RESOURCE) for a container of
/// a daemon whose own bounding set lacks SYS_RESOURCE: a daemon inside a daemon of this mode,
/// and the test dockerd on these VMs. Docker's `--privileged` fails on these VMs.
pub const NESTED_CAPABILITIES_MODE: &[&str] =
    &["--cap-add", "ALL", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"];

/// Capabilities mode for a container of the test dockerd. Docker 28 reads `--cap-add ALL` as
/// every capability of its own bounding set and refuses to drop one that set lacks ("invalid
/// CapDrop: capability not supported by your kernel or not available in the current
/// environment"; Docker 20.10 accepted it), so SYS_RESOURCE is dropped only where this machine
/// has it.
pub fn capabilities_mode() -> Vec<&'static str> {
    let mut mode = NESTED_CAPABILITIES_MODE.to_vec();
    if host_has_sys_resource() {
        mode.splice(2..2, ["--cap-drop", "SYS_RESOURCE"]);
    }
    mode
}

/// Whether this process's capability bounding set holds CAP_SYS_RESOURCE (bit 24).
fn host_has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|bits| bits & (1 << 24) != 0)
}

/// `docker ARGS` against the test daemon; stdout, or an error with stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker")?;
    if !out.status.success() {
        bail!("docker {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fails clearly when the test dockerd is not there (tests/run.sh starts it).
pub fn require_test_docker() {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    assert!(host.contains("dind-test"), "DOCKER_HOST={host:?}: start the test dockerd (tests/docker/dockerd.sh up) or run tests/run.sh");
}

/// A container removed (with its anonymous volumes) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME ARGS`.
    pub fn run(name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let _ = docker(&["rm", "-f", name]);
        let guard = Self { name: name.to_string() };
        docker(&[&["run", "-d", "--name", name][..], args].concat())?;
        Ok(guard)
    }

    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        docker(&[&["exec", self.name.as_str()][..], args].concat())
    }

    pub fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }

    pub fn inspect(&self, format: &str) -> anyhow::Result<String> {
        docker(&["inspect", "-f", format, &self.name])
    }

    /// The loopback address the container's `port` is published on.
    pub fn published(&self, port: u16) -> anyhow::Result<String> {
        let out = docker(&["port", &self.name, &format!("{port}/tcp")])?;
        out.lines().find(|l| l.starts_with("127.0.0.1:")).map(str::to_string).context("no loopback port published")
    }

    /// Waits until the container has exited; returns its exit code.
    pub fn wait_exit(&self, limit: Duration) -> anyhow::Result<i32> {
        let start = Instant::now();
        loop {
            if self.inspect("{{.State.Running}}")? == "false" {
                return Ok(self.inspect("{{.State.ExitCode}}")?.parse()?);
            }
            if start.elapsed() > limit {
                bail!("{} still running after {limit:?}; logs:\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `dind-init probe` answers inside the container.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.exec(&["dind-init", "probe"]).is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit || self.inspect("{{.State.Running}}")? != "true" {
                bail!("{} not ready after {:?}; logs:\n{}", self.name, start.elapsed(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A named volume removed on drop.
#[derive(Debug)]
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let _ = docker(&["volume", "rm", "-f", name]);
        docker(&["volume", "create", name])?;
        Ok(Self { name: name.to_string() })
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.name]);
    }
}

/// Certificates of one daemon, written where containers and the docker CLI can read them:
/// `server/` (ca.crt, tls.crt, tls.key) and `client/` (ca.pem, cert.pem, key.pem).
#[derive(Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub bundle: tls::Bundle,
}

impl Certs {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dind-test-certs-{name}-{}", crate::suffix()));
        let names = tls::server_names(name, "test", &format!("{name}-daemons"));
        let bundle = tls::plan(None, None, None, "test", name, &names, time_now()).context("certificates")?.bundle;
        let write = |sub: &str, files: &[(&str, &str)]| -> anyhow::Result<()> {
            std::fs::create_dir_all(dir.join(sub))?;
            for (file, text) in files {
                std::fs::write(dir.join(sub).join(file), text)?;
            }
            Ok(())
        };
        write("server", &[("ca.crt", &bundle.ca.cert_pem), ("tls.crt", &bundle.server.cert_pem), ("tls.key", &bundle.server.key_pem)])?;
        write("client", &[("ca.pem", &bundle.ca.cert_pem), ("cert.pem", &bundle.client.cert_pem), ("key.pem", &bundle.client.key_pem)])?;
        Ok(Self { dir, bundle })
    }

    pub fn server_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    pub fn client_dir(&self) -> PathBuf {
        self.dir.join("client")
    }

    /// The bind mount that puts the server certificates where dind-init looks by default.
    pub fn mount(&self) -> String {
        format!("{}:/certs/server:ro", self.server_dir().display())
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A `docker` command aimed at a nested daemon at `addr` (host:port), over mTLS with `client_dir`.
pub fn nested_command(addr: &str, client_dir: &Path) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", format!("tcp://{addr}")).env("DOCKER_TLS_VERIFY", "1").env("DOCKER_CERT_PATH", client_dir);
    cmd
}

/// `docker ARGS` against a nested daemon; stdout, or an error with stderr.
pub fn nested_docker(addr: &str, client_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = nested_command(addr, client_dir).args(args).output().context("running docker against the nested daemon")?;
    if !out.status.success() {
        bail!("nested docker {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Pipes `save` (which writes an image tar to stdout) into `load` (which reads one on stdin).
pub fn pipe_image(mut save: Command, mut load: Command, image: &str) -> anyhow::Result<()> {
    let mut saving = save.stdout(Stdio::piped()).spawn()?;
    let stdout = saving.stdout.take().context("save stdout")?;
    let loaded = load.stdin(stdout).output()?;
    let saved = saving.wait()?;
    if !saved.success() || !loaded.status.success() {
        bail!("copying {image}: {}", String::from_utf8_lossy(&loaded.stderr));
    }
    Ok(())
}

/// `docker save IMAGE` from the test daemon, piped into `docker load` of a nested one.
pub fn copy_image(image: &str, addr: &str, client_dir: &Path) -> anyhow::Result<()> {
    let mut save = Command::new("docker");
    save.args(["save", image]);
    let mut load = nested_command(addr, client_dir);
    load.args(["load", "-q"]);
    pipe_image(save, load, image)
}
