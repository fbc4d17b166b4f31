//! The cgroup v2 lane (issue 23): the daemon image, with dind-init as PID 1, in a guest that boots
//! Debian's stock kernel with a pure cgroup v2 hierarchy under QEMU, run by runc as containerd
//! runs a pod's container (tests/vm/: the guest, the run disk, the runc specs). The host drives the
//! daemon over QEMU's user networking (the guest's 2376 forwarded to a local port) with the Docker
//! CLI and mutual TLS, as a build pod does.
//!
//! Slow (TCG: a few minutes a boot), so tests/run.sh runs them on their own, one at a time:
//! `cargo test -p dind-tests --test vm -- --test-threads 1`. Where QEMU cannot run they say so and
//! pass (skipped with a message); `DIND_VM_REQUIRED=1` makes that a failure.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use dind_tests::docker::{Certs, nested_command, nested_docker, pipe_image};

const LANE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/lane.sh");
const BUSYBOX_IMAGE: &str = "dind-busybox:test";
/// How long a guest may take from QEMU's start to its daemons' first `/_ping` (TCG).
const BOOT: Duration = Duration::from_secs(420);

/// A running guest: QEMU, stopped (killed) when dropped, also when a test fails.
struct Guest {
    qemu: Child,
    serial: PathBuf,
    /// The guest's 2376 and 8080 on the host's loopback.
    docker: String,
    web: u16,
    dir: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Guest {
    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for `LANE-READY` on the serial console; the console so far.
    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let serial = self.serial();
            if serial.contains("LANE-READY") {
                return Ok(serial);
            }
            if let Some(status) = self.qemu.try_wait()? {
                bail!("QEMU ended ({status}) before the guest was ready:\n{}", tail(&serial, 60));
            }
            if started.elapsed() > BOOT {
                bail!("the guest was not ready within {BOOT:?}:\n{}", tail(&serial, 60));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn docker(&self, certs: &Certs, args: &[&str]) -> anyhow::Result<String> {
        nested_docker(&self.docker, &certs.client_dir(), args)
    }
}

/// An image of the test daemon, loaded into the guest's daemon (no registry there).
fn load_image(guest: &Guest, certs: &Certs, image: &str) -> anyhow::Result<()> {
    let mut save = Command::new("docker");
    save.args(["save", image]);
    let mut load = nested_command(&guest.docker, &certs.client_dir());
    load.args(["load", "-q"]);
    pipe_image(save, load, image)
}

fn load_busybox(guest: &Guest, certs: &Certs) -> anyhow::Result<()> {
    load_image(guest, certs, BUSYBOX_IMAGE)
}

/// The Docker CLI v29 that build pods run (tests/clients/build.sh), with its buildx and compose
/// plugins, aimed at the guest's daemon over mTLS; `config` is a DOCKER_CONFIG of its own.
fn client_cli(guest: &Guest, certs: &Certs, config: &Path) -> anyhow::Result<Command> {
    let clients = dind_tests::built_tools("clients/build.sh")?;
    let plugins = config.join("cli-plugins");
    std::fs::create_dir_all(&plugins)?;
    for plugin in ["docker-buildx", "docker-compose"] {
        let link = plugins.join(plugin);
        if !link.exists() {
            std::os::unix::fs::symlink(clients.join(plugin), link)?;
        }
    }
    let mut cmd = Command::new(clients.join("docker"));
    cmd.env("DOCKER_HOST", format!("tcp://{}", guest.docker))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs.client_dir())
        .env("DOCKER_CONFIG", config);
    Ok(cmd)
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| what.to_string())?;
    ensure!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The guest's own lines (from its first `LANE` line: the run script and the daemon's log it
/// prints on failure), at most the last `lines`; the kernel's boot messages before are left out.
fn tail(text: &str, lines: usize) -> String {
    let own = text.find("LANE ").map_or(text, |at| &text[at..]);
    let all: Vec<&str> = own.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET /i` from the guest's published port on the host's loopback, until the answer holds
/// `needle` (30 s at most): the last answer.
fn fetch(port: u16, needle: &str) -> String {
    use std::io::Write as _;
    let mut served = String::new();
    for _ in 0..30 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /i HTTP/1.0\r\n\r\n");
            served.clear();
            let _ = s.read_to_string(&mut served);
            if served.contains(needle) {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    served
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this machine can run the lane; why not, if it cannot.
fn qemu_missing() -> Option<String> {
    let found = Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]).output().is_ok_and(|o| o.status.success());
    (!found).then(|| "qemu-system-x86_64 is not installed (tests/vm/build.sh installs it from Debian's packages)".into())
}

/// Builds the run disk (certificates of `certs`) and boots the guest with `append` on its
/// kernel command line.
fn boot(name: &str, certs: &Certs, append: &str) -> anyhow::Result<Guest> {
    let dir = std::env::temp_dir().join(format!("dind-lane-{name}-{}", dind_tests::suffix()));
    std::fs::create_dir_all(dir.join("certs"))?;
    copy_dir(&certs.server_dir(), &dir.join("certs/server"))?;
    let caps = dind_operator::objects::CAPABILITIES.join(",");
    let prepared = Command::new(LANE).args(["prepare", &dir.to_string_lossy(), &caps]).output()?;
    if !prepared.status.success() {
        bail!("lane.sh prepare: {}", String::from_utf8_lossy(&prepared.stderr));
    }
    let (port, web) = (free_port()?, free_port()?);
    let serial = dir.join("serial.log");
    let out = std::fs::File::create(&serial)?;
    let qemu = Command::new(LANE)
        .args(["boot", &dir.to_string_lossy(), &port.to_string(), &web.to_string(), append])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Guest { qemu, serial, docker: format!("127.0.0.1:{port}"), web, dir })
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The least `start_to_ping_ms` of `mode` from the guest's console (a mode may start twice).
fn start_to_ping(serial: &str, mode: &str) -> Option<u64> {
    serial
        .lines()
        .filter(|l| l.contains(&format!("started mode={mode} ")))
        .filter_map(|l| l.split("start_to_ping_ms=").nth(1)?.trim().parse().ok())
        .min()
}

fn skip(why: &str) -> bool {
    if std::env::var("DIND_VM_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("the cgroup v2 lane cannot run here: {why}");
    }
    eprintln!("SKIPPED (the cgroup v2 lane cannot run here): {why}");
    true
}

/// Privileged mode on cgroup v2 (writable cgroupfs, a cgroup namespace of its own): mTLS, the
/// start against dockerd started bare in the same guest, nested limits in the nested container's
/// own cgroup, the outer container's limit over everything nested, builds, published ports, and a
/// nested privileged container.
#[test]
fn vm_privileged_mode_on_cgroup_v2() -> anyhow::Result<()> {
    if let Some(why) = qemu_missing() {
        skip(&why);
        return Ok(());
    }
    let certs = Certs::new("lane")?;
    // Each started twice, alternately: the first start of all pays for what the kernel sets up
    // once (netfilter tables, page cache); the least of each is compared.
    let mut guest = boot("privileged", &certs, "lane.modes=bare,privileged,bare,privileged")?;
    let serial = guest.wait_ready()?;
    let (bare, ours) = (start_to_ping(&serial, "bare"), start_to_ping(&serial, "privileged"));
    let (Some(bare), Some(ours)) = (bare, ours) else { bail!("no start figures:\n{}", tail(&serial, 60)) };
    eprintln!(
        "cgroup v2 lane: start to first /_ping (least of two): dockerd bare {bare} ms, under dind-init {ours} ms, ratio {:.2}",
        ours as f64 / bare.max(1) as f64
    );

    let version = guest.docker(&certs, &["info", "--format", "{{.CgroupVersion}} {{.CgroupDriver}} {{.ServerVersion}}"])?;
    eprintln!("docker info: {version}");
    ensure!(version.starts_with("2 "), "the daemon does not run on cgroup v2: {version}");
    load_busybox(&guest, &certs)?;

    // Limits land in the nested container's own cgroup (it sees its own as its root).
    let limits = guest.docker(
        &certs,
        &[
            "run",
            "--rm",
            "-m",
            "64m",
            "--pids-limit",
            "50",
            "--cpus",
            "0.5",
            BUSYBOX_IMAGE,
            "cat",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/pids.max",
            "/sys/fs/cgroup/cpu.max",
        ],
    )?;
    let limits: Vec<&str> = limits.lines().map(str::trim).collect();
    ensure!(limits == ["67108864", "50", "50000 100000"], "nested limits: {limits:?}");
    // A memory hog within them is killed; dind-init, dockerd and the outer container live on.
    let hog = nested_command(&guest.docker, &certs.client_dir())
        .args(["run", "--name", "hog", "-m", "64m", BUSYBOX_IMAGE, "sh", "-c", "head -c 200m /dev/zero | tail"])
        .output()?;
    ensure!(!hog.status.success(), "a 200 MiB hog under -m 64m was not killed");
    let oom = guest.docker(&certs, &["inspect", "hog", "--format", "{{.State.OOMKilled}} {{.State.ExitCode}}"])?;
    ensure!(oom == "true 137", "the hog: {oom}");
    // Nested cgroups lie inside the outer container's: seen from the daemon's cgroup namespace
    // (the outer container's, rooted at its own cgroup), a nested one is /docker/<id>.
    let path = guest.docker(&certs, &["run", "--rm", "--cgroupns", "host", BUSYBOX_IMAGE, "cat", "/proc/self/cgroup"])?;
    ensure!(path.starts_with("0::/docker/"), "a nested container's cgroup, from the outer's namespace: {path}");
    // The guest's kernel saw the hog's cgroup under the outer container's (its OOM report names
    // the memcg: /lane.slice/MODE is the container's cgroup, tests/vm/spec.py).
    let oom_line = guest.serial().lines().find(|l| l.contains("oom_memcg=")).map(str::to_string).unwrap_or_default();
    ensure!(oom_line.contains("oom_memcg=/lane.slice/privileged/docker/"), "the hog's memcg, as the guest's kernel named it: {oom_line}");
    // The outer container's limit (640 MiB, the pod's) bounds everything nested: a hog with no
    // limit of its own is killed at it, though the guest has 3 GiB.
    let unbounded = nested_command(&guest.docker, &certs.client_dir())
        .args(["run", "--name", "big", BUSYBOX_IMAGE, "sh", "-c", "head -c 800m /dev/zero | tail"])
        .output()?;
    ensure!(!unbounded.status.success(), "an 800 MiB hog with no limit of its own outgrew the outer container's 640 MiB");
    ensure!(guest.docker(&certs, &["version", "--format", "{{.Server.Version}}"]).is_ok(), "dockerd did not survive the hogs");

    // docker build, and a published port reached from the host.
    let build_dir = guest.dir.join("build");
    std::fs::create_dir_all(&build_dir)?;
    std::fs::write(build_dir.join("Dockerfile"), format!("FROM {BUSYBOX_IMAGE}\nRUN echo built-on-cgroup-v2 > /built\n"))?;
    guest.docker(&certs, &["build", "-q", "-t", "lane/built", &build_dir.to_string_lossy()])?;
    ensure!(guest.docker(&certs, &["run", "--rm", "lane/built", "cat", "/built"])? == "built-on-cgroup-v2");
    guest.docker(
        &certs,
        &["run", "-d", "--name", "web", "-p", "8080:80", BUSYBOX_IMAGE, "sh", "-c", "echo served-from-v2 > /i; httpd -f -p 80 -h /"],
    )?;
    let served = fetch(guest.web, "served-from-v2");
    ensure!(served.contains("served-from-v2"), "the published port: {served}");
    // Full capabilities here: a nested privileged container runs, and buildx's docker-container
    // driver (a privileged BuildKit container) boots a builder.
    guest.docker(&certs, &["run", "--rm", "--privileged", BUSYBOX_IMAGE, "true"]).context("a nested --privileged container")?;
    load_image(&guest, &certs, "moby/buildkit:buildx-stable-1")?;
    let config = guest.dir.join("docker-config");
    // buildx builds from a Docker context (it refuses TLS settings from the environment), as a
    // CI job's `docker context create` gives it.
    let in_context = |args: &[&str]| -> anyhow::Result<Command> {
        let mut cmd = client_cli(&guest, &certs, &config)?;
        cmd.env_remove("DOCKER_HOST").env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH").args(args);
        Ok(cmd)
    };
    let client = certs.client_dir();
    let endpoint = format!(
        "host=tcp://{},ca={},cert={},key={}",
        guest.docker,
        client.join("ca.pem").display(),
        client.join("cert.pem").display(),
        client.join("key.pem").display()
    );
    run(in_context(&["context", "create", "lane-ctx", "--docker", &endpoint])?, "docker context create")?;
    run(
        in_context(&["buildx", "create", "--name", "lane", "--driver", "docker-container", "--bootstrap", "lane-ctx"])?,
        "docker buildx create --driver docker-container --bootstrap",
    )?;
    let inspect = in_context(&["buildx", "inspect", "lane"])?;
    let builder = run(inspect, "docker buildx inspect lane")?;
    ensure!(builder.lines().any(|l| l.starts_with("Status:") && l.contains("running")), "the builder:\n{builder}");
    Ok(())
}

/// Capabilities mode on cgroup v2: the cgroup filesystem read-only, as containerd gives a
/// container that is not privileged. dind-init must still nest dockerd's cgroups inside the pod's
/// (before: it made a directory in the read-only cgroupfs and the daemon crash-looped). The same
/// guest has no legacy iptables (nftables only, as kernels whose configs dropped IP_NF_NAT) and
/// a NIC with MTU 1450 (an overlay network's): networks made later get 1450 too, and a published
/// port is reached.
#[test]
fn vm_capabilities_mode_nftables_only_and_mtu_1450_on_cgroup_v2() -> anyhow::Result<()> {
    if let Some(why) = qemu_missing() {
        skip(&why);
        return Ok(());
    }
    let certs = Certs::new("lanecap")?;
    let mut guest = boot("capabilities", &certs, "lane.modes=capabilities lane.mtu=1450 lane.nft=1")?;
    let serial = guest.wait_ready()?;
    ensure!(start_to_ping(&serial, "capabilities").is_some(), "the daemon did not start:\n{}", tail(&serial, 60));
    ensure!(serial.contains("modules: 0 legacy iptables modules loaded"), "legacy iptables was loaded:\n{}", tail(&serial, 40));
    let version = guest.docker(&certs, &["info", "--format", "{{.CgroupVersion}}"])?;
    ensure!(version == "2", "{version}");
    load_busybox(&guest, &certs)?;
    let limits = guest.docker(
        &certs,
        &["run", "--rm", "-m", "64m", "--pids-limit", "50", BUSYBOX_IMAGE, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"],
    )?;
    let limits: Vec<&str> = limits.lines().map(str::trim).collect();
    ensure!(limits == ["67108864", "50"], "nested limits: {limits:?}");

    // The NIC's MTU, on the default bridge and on a network made later.
    let mtu = guest.docker(&certs, &["run", "--rm", BUSYBOX_IMAGE, "cat", "/sys/class/net/eth0/mtu"])?;
    ensure!(mtu == "1450", "the default bridge's MTU: {mtu}");
    guest.docker(&certs, &["network", "create", "lanenet"])?;
    let mtu = guest.docker(&certs, &["run", "--rm", "--network", "lanenet", BUSYBOX_IMAGE, "cat", "/sys/class/net/eth0/mtu"])?;
    ensure!(mtu == "1450", "a network made later: MTU {mtu} (before: 1500, over a 1450 path)");
    // More than one packet through it, intact.
    guest.docker(
        &certs,
        &[
            "run",
            "-d",
            "--name",
            "srv",
            "--network",
            "lanenet",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "head -c 300000 /dev/urandom > /f; md5sum /f | cut -d' ' -f1 > /f.md5; httpd -f -p 80 -h /",
        ],
    )?;
    let sums = guest.docker(
        &certs,
        &[
            "run",
            "--rm",
            "--network",
            "lanenet",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "sleep 2; wget -q -O - http://srv/f | md5sum | cut -d' ' -f1; wget -q -O - http://srv/f.md5",
        ],
    )?;
    let sums: Vec<&str> = sums.lines().map(str::trim).collect();
    ensure!(sums.len() == 2 && sums[0] == sums[1] && sums[0].len() == 32, "300 kB through the network: {sums:?}");

    // A compose project's network gets it too.
    let project = guest.dir.join("compose");
    std::fs::create_dir_all(&project)?;
    std::fs::write(
        project.join("compose.yaml"),
        format!(
            "services:\n  web:\n    image: {BUSYBOX_IMAGE}\n    command: [\"sh\", \"-c\", \"cat /sys/class/net/eth0/mtu; sleep 600\"]\n"
        ),
    )?;
    let config = guest.dir.join("docker-config");
    let mut up = client_cli(&guest, &certs, &config)?;
    up.current_dir(&project).args(["compose", "-p", "lane", "up", "-d"]);
    run(up, "docker compose up")?;
    let mut compose_mtu = String::new();
    for _ in 0..30 {
        let mut again = client_cli(&guest, &certs, &config)?;
        again.current_dir(&project).args(["compose", "-p", "lane", "logs", "--no-log-prefix", "web"]);
        compose_mtu = run(again, "docker compose logs")?;
        if !compose_mtu.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(compose_mtu.trim() == "1450", "a compose project's network: MTU {compose_mtu:?}");

    // A published port, with nftables only.
    guest.docker(
        &certs,
        &["run", "-d", "--name", "web", "-p", "8080:80", BUSYBOX_IMAGE, "sh", "-c", "echo served-with-nft > /i; httpd -f -p 80 -h /"],
    )?;
    let served = fetch(guest.web, "served-with-nft");
    ensure!(served.contains("served-with-nft"), "the published port: {served}");
    Ok(())
}
