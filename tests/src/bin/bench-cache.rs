//! Benchmark of the operator's disk-usage collection (`spec.cache`, status `disk`): what asking
//! 50 daemons per minute costs the operator. One real daemon (dind-init + dockerd in a container
//! on the test dockerd, mutual TLS), filled with images and build cache, is asked `/system/df`
//! 50 times in a row as the operator asks it (`daemon_info::disk_usage`, a new TLS connection
//! each time); prints the answer's size, the time per ask and the operator's CPU time for the
//! 50 (its own process time, from /proc/self/stat). Needs the test dockerd and the images.
//!
//!   cargo run --release -p dind-tests --bin bench-cache [-- BUILDS]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dind_operator::daemon_info;
use dind_tests::docker::{CAPABILITIES_MODE, Certs, Container, DAEMON_IMAGE, Volume, require_test_docker};
use dind_tests::suffix;

/// This process's CPU time (user + system), from /proc/self/stat, in clock ticks of 10 ms.
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    require_test_docker();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builds: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let certs = Certs::new("bench-cache")?;
    let name = format!("bench-cache-{}", suffix());
    let volume = Volume::new(&name)?;
    let (mount, data) = (certs.mount(), format!("{}:/var/lib/docker", volume.name));
    let mut run: Vec<&str> = CAPABILITIES_MODE.to_vec();
    run.extend(["-v", &data, "-v", &mount, "-p", "127.0.0.1::2376", DAEMON_IMAGE]);
    let c = Container::run(&name, &run)?;
    let addr = c.published(2376)?;
    let tls = Some((&certs.bundle, "localhost"));
    let start = Instant::now();
    while daemon_info::get(&addr, tls, "/_ping").await.is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no ping after 60 s:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Images and build cache: BUILDS builds of three steps each, every one tagged.
    let fill = format!(
        "set -e; tar -C / -c bin etc lib 2>/dev/null | docker import - local/base >/dev/null; mkdir -p /tmp/b && cd /tmp/b; \
         for i in $(seq {builds}); do printf 'FROM local/base\\nRUN echo %s > /a\\nRUN echo %s > /b\\nRUN head -c 100000 /dev/urandom > /c\\n' $i $i > Dockerfile; \
         DOCKER_BUILDKIT=1 docker build -q -t img-$i . >/dev/null; done"
    );
    c.exec(&["sh", "-c", &fill]).context("filling the daemon")?;
    let body = daemon_info::get(&addr, tls, "/system/df?type=image&type=build-cache").await.map_err(anyhow::Error::msg)?;
    let usage = dind_operator::cache::parse_df(&body).map_err(anyhow::Error::msg)?;

    let (ip, port) = addr.rsplit_once(':').context("published address")?;
    let port: i32 = port.parse()?;
    let asks = 50;
    let (cpu0, t0) = (cpu_ticks()?, Instant::now());
    let mut times = Vec::new();
    for _ in 0..asks {
        let t = Instant::now();
        daemon_info::disk_usage(ip, port, tls).await.map_err(anyhow::Error::msg)?;
        times.push(t.elapsed());
    }
    let (cpu, wall) = (cpu_ticks()? - cpu0, t0.elapsed());
    times.sort();
    println!("daemon: {} images, build cache {} bytes, /system/df answer {} bytes", usage.images, usage.build_cache_bytes, body.len());
    println!(
        "{asks} asks (one per daemon per minute for {asks} daemons): median {:.1} ms, max {:.1} ms each, {:.2} s in all",
        times[asks / 2].as_secs_f64() * 1e3,
        times[asks - 1].as_secs_f64() * 1e3,
        wall.as_secs_f64()
    );
    println!(
        "operator CPU for them: {} ms ({:.2}% of one core over the minute); requests: {asks} per minute, status writes at most {asks}",
        cpu * 10,
        cpu as f64 * 10.0 / 60_000.0 * 100.0
    );
    drop(c);
    drop(volume);
    Ok(())
}
