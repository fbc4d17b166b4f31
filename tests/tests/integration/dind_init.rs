//! dind-init in real containers on the test dockerd, run as on a Kubernetes node in
//! Capabilities mode (all capabilities but SYS_RESOURCE, seccomp and AppArmor unconfined),
//! with a named volume on /var/lib/docker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use dind_operator::controller::docker_api;
use dind_tests::docker::{
    BUSYBOX_IMAGE, Certs, Container, DAEMON_IMAGE, NESTED_CAPABILITIES_MODE, Volume, capabilities_mode, copy_image, docker, nested_command,
    nested_docker, pipe_image, require_test_docker,
};
use dind_tests::suffix;

const READY: Duration = Duration::from_secs(60);

/// Starts a daemon container with TLS from `certs` and `volume` on /var/lib/docker.
fn daemon(name: &str, volume: &Volume, certs: &Certs, docker_args: &[&str], init_args: &[&str]) -> anyhow::Result<Container> {
    let mount = certs.mount();
    let data = format!("{}:/var/lib/docker", volume.name);
    let mut args: Vec<&str> = capabilities_mode();
    args.extend(["-v", &data, "-v", &mount, "-p", "127.0.0.1::2376", "--hostname", name]);
    args.extend(docker_args);
    args.push(DAEMON_IMAGE);
    args.extend(init_args);
    Container::run(name, &args)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", suffix())
}

#[tokio::test]
async fn mutual_tls_ping_works_with_the_client_certificate_and_is_refused_without() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("mtls");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let c = daemon(&name, &volume, &certs, &[], &[])?;
    c.wait_ready(READY)?;
    let addr = c.published(2376)?;
    let pong = docker_api::get(&addr, Some((&certs.bundle, "localhost")), "/_ping").await.map_err(anyhow::Error::msg)?;
    ensure!(pong == "OK", "/_ping answered {pong:?}");

    // Same CA, no client certificate: dockerd's --tlsverify must refuse.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(certs.bundle.ca.cert_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let refused = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        tls.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    .await;
    ensure!(
        refused.as_ref().is_err() || !refused.as_ref().is_ok_and(|r| r.contains("200 OK")),
        "ping without a client cert got through: {refused:?}"
    );

    // A client certificate of another daemon's CA is refused too (one CA per daemon).
    let other = Certs::new(&unique("other"))?;
    let foreign = crossed_bundle(&certs, &other)?;
    let crossed = docker_api::get(&addr, Some((&foreign, "localhost")), "/_ping").await;
    ensure!(crossed.is_err(), "a foreign client certificate was accepted");
    Ok(())
}

/// A bundle that trusts `server`'s CA but presents `client`'s (foreign) client certificate.
fn crossed_bundle(server: &Certs, client: &Certs) -> anyhow::Result<dind_operator::model::tls::Bundle> {
    Ok(dind_operator::model::tls::Bundle {
        ca: server.bundle.ca.clone(),
        server: server.bundle.server.clone(),
        client: client.bundle.client.clone(),
    })
}

#[tokio::test]
async fn a_nested_run_works_and_its_cgroup_lies_under_the_outer_containers() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("nested");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let c = daemon(&name, &volume, &certs, &[], &[])?;
    c.wait_ready(READY)?;
    let addr = c.published(2376)?;
    copy_image(BUSYBOX_IMAGE, &addr, &certs.client_dir())?;
    let out = nested_docker(&addr, &certs.client_dir(), &["run", "--rm", BUSYBOX_IMAGE, "echo", "hello from inside"])?;
    ensure!(out == "hello from inside", "{out}");

    let inner = nested_docker(&addr, &certs.client_dir(), &["run", "-d", BUSYBOX_IMAGE, "sleep", "60"])?;
    let outer = c.inspect("{{.Id}}")?;
    // On the host, the inner container's cgroup must be a child of the outer container's.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let memory_root = mounts
        .lines()
        .find(|l| l.contains(" - cgroup ") && l.split(' ').nth(4).is_some_and(|mp| mp.ends_with("/memory")))
        .and_then(|l| l.split(' ').nth(4))
        .map(str::to_string);
    match memory_root {
        Some(root) => {
            let nested = std::path::Path::new(&root).join("docker").join(&outer).join("docker").join(&inner);
            ensure!(nested.is_dir(), "{} is not there: the inner container escaped the outer cgroup", nested.display());
        }
        None => {
            // cgroup v2 hosts: read the inner container's cgroup path from inside instead.
            let cg = nested_docker(&addr, &certs.client_dir(), &["exec", &inner, "cat", "/proc/self/cgroup"])?;
            ensure!(cg.contains(&outer) || cg.contains("/docker/"), "{cg}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn nesting_depth_three() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("depth");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let c = daemon(&name, &volume, &certs, &[], &[])?;
    c.wait_ready(READY)?;
    let addr = c.published(2376)?;
    let client = certs.client_dir();
    copy_image(DAEMON_IMAGE, &addr, &client)?;
    copy_image(BUSYBOX_IMAGE, &addr, &client)?;
    // Level 2: dind-init inside a container of the level-1 daemon, in the same mode.
    nested_docker(&addr, &client, &["volume", "create", "level2"])?;
    let mut run = vec!["run", "-d", "--name", "level2"];
    run.extend(NESTED_CAPABILITIES_MODE);
    run.extend(["-v", "level2:/var/lib/docker", DAEMON_IMAGE, "--tls=false"]);
    nested_docker(&addr, &client, &run)?;
    let start = Instant::now();
    while nested_docker(&addr, &client, &["exec", "level2", "dind-init", "probe"]).is_err() {
        ensure!(
            start.elapsed() < READY,
            "level 2 never became ready: {}",
            nested_docker(&addr, &client, &["logs", "level2"]).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Level 3: a container of the level-2 daemon. Its image travels through level 1:
    // `docker save` (level 1) | `docker exec -i level2 docker load`.
    let mut save = nested_command(&addr, &client);
    save.args(["save", BUSYBOX_IMAGE]);
    let mut load = nested_command(&addr, &client);
    load.args(["exec", "-i", "level2", "docker", "load", "-q"]);
    pipe_image(save, load, BUSYBOX_IMAGE).context("load into level 2")?;
    let out = nested_docker(&addr, &client, &["exec", "level2", "docker", "run", "--rm", BUSYBOX_IMAGE, "echo", "level three"])?;
    ensure!(out == "level three", "{out}");
    Ok(())
}

#[tokio::test]
async fn inherited_fds_do_not_reach_dockerd_and_orphans_are_reaped() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("fds");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    // The parent leaks fd 7 (/etc/group) on purpose, then execs dind-init; the "dockerd" is a
    // wrapper that leaves an orphan `sleep 2` behind, which only PID 1 can reap.
    let c = daemon(
        &name,
        &volume,
        &certs,
        &["--entrypoint", "/bin/sh"],
        &["-c", "exec 7</etc/group; exec /usr/local/bin/dind-init --dockerd /usr/local/bin/dockerd-with-orphan"],
    )?;
    // The orphan shows up as a child of PID 1 (the test can fail: it sees it re-parented).
    let start = Instant::now();
    loop {
        let ps = c.exec(&["ps", "-o", "pid,ppid,stat,comm"]).unwrap_or_default();
        if ps.lines().any(|l| l.contains("sleep") && l.split_whitespace().nth(1) == Some("1")) {
            break;
        }
        ensure!(start.elapsed() < Duration::from_secs(10), "orphan never re-parented to PID 1:\n{ps}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait_ready(READY)?;
    std::thread::sleep(Duration::from_secs(3));
    let ps = c.exec(&["ps", "-o", "pid,ppid,stat,comm"])?;
    ensure!(!ps.lines().any(|l| l.split_whitespace().nth(2).is_some_and(|s| s.starts_with('Z'))), "a zombie was left:\n{ps}");
    let fds = c.exec(&["sh", "-c", "ls -l /proc/$(pidof dockerd)/fd /proc/1/fd"])?;
    ensure!(!fds.contains("/etc/group"), "the leaked fd reached dind-init or dockerd:\n{fds}");
    Ok(())
}

#[tokio::test]
async fn docker_stop_is_clean_and_the_cache_survives_a_restart() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("restart");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let c = daemon(&name, &volume, &certs, &[], &[])?;
    c.wait_ready(READY)?;
    copy_image(BUSYBOX_IMAGE, &c.published(2376)?, &certs.client_dir())?;
    let start = Instant::now();
    docker(&["stop", "-t", "30", &c.name])?;
    let took = start.elapsed();
    let code = c.inspect("{{.State.ExitCode}}")?;
    ensure!(code == "0", "exit code {code} after docker stop; logs:\n{}", c.logs());
    ensure!(took < Duration::from_secs(25), "stop took {took:?}, past dockerd's shutdown timeout");
    ensure!(c.logs().contains("forwarding to dockerd") && c.logs().contains("dockerd exited"), "{}", c.logs());
    drop(c);

    let again = daemon(&name, &volume, &certs, &[], &[])?;
    again.wait_ready(READY)?;
    let images = nested_docker(&again.published(2376)?, &certs.client_dir(), &["images", "-q", BUSYBOX_IMAGE])?;
    ensure!(!images.is_empty(), "the image loaded before the restart is gone");
    Ok(())
}

#[tokio::test]
async fn a_second_daemon_on_the_same_volume_is_refused_and_the_first_keeps_running() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("lock");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let first = daemon(&name, &volume, &certs, &[], &[])?;
    first.wait_ready(READY)?;
    let second = daemon(&format!("{name}-2"), &volume, &certs, &[], &[])?;
    let code = second.wait_exit(Duration::from_secs(20))?;
    let logs = second.logs();
    ensure!(code != 0, "the second daemon exited 0");
    ensure!(logs.contains("is in use by another daemon") && logs.contains(&format!("host {name} pid 1")), "{logs}");
    ensure!(!logs.contains("starting dockerd"), "the second daemon got as far as starting dockerd:\n{logs}");
    // The first is unharmed.
    let pong = docker_api::get(&first.published(2376)?, Some((&certs.bundle, "localhost")), "/_ping").await.map_err(anyhow::Error::msg)?;
    ensure!(pong == "OK");
    Ok(())
}

#[tokio::test]
async fn the_seeds_port_log_and_daemon_args_behave_as_it_describes() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("seed");
    let (certs, volume) = (Certs::new(&name)?, Volume::new(&name)?);
    let c = daemon(
        &name,
        &volume,
        &certs,
        &["-e", "PORT=4444", "-e", "LOG=file", "-e", "DOCKER_DAEMON_ARGS=--label seed='from the README'", "-p", "127.0.0.1::4444"],
        &[],
    )?;
    c.wait_ready(READY)?;
    let addr = c.published(4444)?;
    let info = nested_docker(&addr, &certs.client_dir(), &["info", "--format", "{{json .Labels}}"])?;
    ensure!(info.contains("seed=from the README"), "labels: {info}");
    let log = c.exec(&["cat", "/var/log/docker.log"])?;
    ensure!(log.contains("API listen"), "/var/log/docker.log lacks dockerd's output:\n{log}");
    ensure!(!c.logs().contains("API listen"), "dockerd's output went to stdout despite LOG=file");
    Ok(())
}

#[tokio::test]
async fn a_data_root_on_overlayfs_is_refused_with_advice() -> anyhow::Result<()> {
    require_test_docker();
    let name = unique("overlay");
    let certs = Certs::new(&name)?;
    let mount = certs.mount();
    // No volume: /var/lib/docker is the container's own overlay layer.
    let mut args: Vec<&str> = capabilities_mode();
    args.extend(["-v", &mount, DAEMON_IMAGE]);
    let c = Container::run(&name, &args)?;
    let code = c.wait_exit(Duration::from_secs(20))?;
    let logs = c.logs();
    ensure!(code == 1, "exit {code}:\n{logs}");
    ensure!(logs.contains("Overlay") && logs.contains("back it with a volume"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn bad_settings_exit_2_naming_the_setting_before_touching_anything() -> anyhow::Result<()> {
    require_test_docker();
    for (env, args, setting) in [
        ("DIND_INIT_MTU=abc", &[][..], "DIND_INIT_MTU"),
        ("PORT=99999", &[], "PORT"),
        ("DIND_INIT_TYPO=1", &[], "DIND_INIT_TYPO"),
        ("LOG=syslog", &[], "LOG"),
        ("X=1", &["--storage-driver", "aufs"], "--storage-driver"),
        ("X=1", &["--tls-dir", "/nowhere"], "--tls-ca"),
    ] {
        let name = unique("bad");
        let mut run: Vec<&str> = capabilities_mode();
        run.extend(["-e", env, DAEMON_IMAGE]);
        run.extend(args);
        let c = Container::run(&name, &run)?;
        let code = c.wait_exit(Duration::from_secs(20))?;
        let logs = c.logs();
        ensure!(code == 2, "{env} {args:?}: exit {code}:\n{logs}");
        ensure!(logs.contains(setting), "{env} {args:?}: the error does not name {setting}:\n{logs}");
        ensure!(!logs.contains("step="), "{env} {args:?}: dind-init started preparing before refusing:\n{logs}");
    }
    Ok(())
}
