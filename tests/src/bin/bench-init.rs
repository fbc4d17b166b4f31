//! Benchmark: container start → first successful mTLS `/_ping`, median of N runs, for dind-init
//! and for dockerd started directly with the same flags and certificates (the floor); prints
//! the ratio, dind-init's binary size and its RSS while dockerd runs. Needs the test dockerd
//! (tests/docker/dockerd.sh up) and the images (tests/images/build.sh).
//!
//!   cargo run --release -p dind-tests --bin bench-init [-- RUNS]

use std::time::{Duration, Instant};

use dind_operator::controller::docker_api;
use dind_tests::docker::{Certs, Container, DAEMON_IMAGE, Volume, capabilities_mode, require_test_docker};
use dind_tests::suffix;

/// Starts one container and times it until /_ping answers over mTLS.
/// Returns the container before its volume, so dropping the tuple removes them in that order.
async fn time_to_ping(certs: &Certs, entrypoint: Option<&str>, args: &[&str]) -> anyhow::Result<(Duration, Container, Volume)> {
    let name = format!("bench-{}", suffix());
    let volume = Volume::new(&name)?;
    let (mount, data) = (certs.mount(), format!("{}:/var/lib/docker", volume.name));
    let mut run: Vec<&str> = capabilities_mode();
    run.extend(["-v", &data, "-v", &mount, "-p", "127.0.0.1::2376"]);
    if let Some(e) = entrypoint {
        run.extend(["--entrypoint", e]);
    }
    run.push(DAEMON_IMAGE);
    run.extend(args);
    let start = Instant::now();
    let c = Container::run(&name, &run)?;
    let addr = c.published(2376)?;
    loop {
        if docker_api::get(&addr, Some((&certs.bundle, "localhost")), "/_ping").await.is_ok_and(|b| b == "OK") {
            return Ok((start.elapsed(), c, volume));
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no ping after 60 s:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    require_test_docker();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let certs = Certs::new("bench")?;
    // The same dockerd flags dind-init would pass, minus what only dind-init prepares.
    let direct = [
        "--host=unix:///var/run/docker.sock",
        "--host=tcp://0.0.0.0:2376",
        "--data-root=/var/lib/docker",
        "--tlsverify",
        "--tlscacert=/certs/server/ca.crt",
        "--tlscert=/certs/server/tls.crt",
        "--tlskey=/certs/server/tls.key",
        "--storage-driver=overlay2",
        "--shutdown-timeout=15",
    ];
    let (mut with_init, mut floor, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (t, c, _volume) = time_to_ping(&certs, None, &[]).await?;
        with_init.push(t);
        let status = c.exec(&["cat", "/proc/1/status"])?;
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        rss.push(kib);
        drop(c);
        let (t, c, _volume) = time_to_ping(&certs, Some("dockerd"), &direct).await?;
        floor.push(t);
        drop(c);
    }
    let (a, b) = (median(with_init.clone()), median(floor.clone()));
    let size = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/x86_64-unknown-linux-gnu/release/dind-init"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("runs:                          {runs}");
    println!(
        "dind-init start -> mTLS ping:  median {:.0} ms  {:?}",
        a.as_secs_f64() * 1e3,
        with_init.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    println!(
        "dockerd direct (floor):        median {:.0} ms  {:?}",
        b.as_secs_f64() * 1e3,
        floor.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    println!("ratio dind-init / floor:       {:.3} (target <= 1.15)", a.as_secs_f64() / b.as_secs_f64());
    println!("dind-init binary size:         {:.2} MiB (target <= 3)", size as f64 / 1048576.0);
    println!("dind-init RSS with dockerd up: {:.2} MiB (target <= 3)", *rss.iter().max().unwrap_or(&0) as f64 / 1024.0);
    Ok(())
}
