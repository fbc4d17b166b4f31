//! Benchmark of the operator's disk-usage collection (`spec.cache`, status `disk`): what asking
//! 50 daemons per minute costs the operator. One real daemon (dind-init + dockerd in a container
//! on the test dockerd, mutual TLS), filled with images and build cache, is asked `/system/df`
//! 50 times in a row as the operator asks it (`docker_api::disk_usage`, a new TLS connection
//! each time); prints the answer's size, the time per ask and the operator's CPU time for the
//! 50 (its own process time, from /proc/self/stat). Then the same for a whole look with pruning
//! on (`spec.cache.prune`: also the container-create events since the last look and the running
//! containers), and the time to prune GIB GiB of unused build cache (`/build/prune` as the
//! operator sends it). Needs the test dockerd and the images.
//!
//!   cargo run --release -p dind-tests --bin bench-cache [-- BUILDS [GIB]]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dind_operator::controller::docker_api;
use dind_tests::docker::{Certs, Container, DAEMON_IMAGE, Volume, capabilities_mode, require_test_docker};
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
    let mut run: Vec<&str> = capabilities_mode();
    run.extend(["-v", &data, "-v", &mount, "-p", "127.0.0.1::2376", DAEMON_IMAGE]);
    let c = Container::run(&name, &run)?;
    let addr = c.published(2376)?;
    let tls = Some((&certs.bundle, "localhost"));
    let start = Instant::now();
    while docker_api::get(&addr, tls, "/_ping").await.is_err() {
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
    let body = docker_api::get(&addr, tls, "/system/df?type=image&type=build-cache").await.map_err(anyhow::Error::msg)?;
    let usage = dind_operator::disk::parse_df(&body).map_err(anyhow::Error::msg)?;

    let (ip, port) = addr.rsplit_once(':').context("published address")?;
    let port: i32 = port.parse()?;
    let asks = 50;
    let (cpu0, t0) = (cpu_ticks()?, Instant::now());
    let mut times = Vec::new();
    for _ in 0..asks {
        let t = Instant::now();
        docker_api::disk_usage(ip, port, tls).await.map_err(anyhow::Error::msg)?;
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

    // A whole look with pruning on: df, then the events since the last look and the running
    // containers (what `controller::prune::after_look` asks before it decides).
    let (cpu0, t0) = (cpu_ticks()?, Instant::now());
    let mut times = Vec::new();
    for _ in 0..asks {
        let t = Instant::now();
        docker_api::disk_usage(ip, port, tls).await.map_err(anyhow::Error::msg)?;
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let events = format!(
            "/events?since={}&until={now}&filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22create%22%5D%7D",
            now - 60
        );
        docker_api::call(&addr, tls, "GET", &events, docker_api::MAX_DF_ANSWER).await.map_err(anyhow::Error::msg)?;
        docker_api::call(&addr, tls, "GET", "/containers/json", docker_api::MAX_DF_ANSWER).await.map_err(anyhow::Error::msg)?;
        times.push(t.elapsed());
    }
    let (cpu, wall) = (cpu_ticks()? - cpu0, t0.elapsed());
    times.sort();
    println!(
        "{asks} looks with pruning on (df + events + running containers, 3 requests each): median {:.1} ms, max {:.1} ms, {:.2} s in all; \
         operator CPU {} ms ({:.2}% of one core over the minute)",
        times[asks / 2].as_secs_f64() * 1e3,
        times[asks - 1].as_secs_f64() * 1e3,
        wall.as_secs_f64(),
        cpu * 10,
        cpu as f64 * 10.0 / 60_000.0 * 100.0
    );

    // GIB GiB of build cache no image holds (their images removed), then one prune.
    let gib: u64 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let fill = format!(
        "set -e; mkdir -p /tmp/g && cd /tmp/g; for i in $(seq {gib}); do \
         printf 'FROM local/base\\nRUN echo %s > /n && head -c 1073741824 /dev/zero > /g\\n' $i > Dockerfile; \
         DOCKER_BUILDKIT=1 docker build -q -t big-$i . >/dev/null; docker rmi big-$i >/dev/null; done"
    );
    let t = Instant::now();
    c.exec(&["sh", "-c", &fill]).context("filling the build cache")?;
    let before = docker_api::disk_usage(ip, port, tls).await.map_err(anyhow::Error::msg)?;
    println!(
        "build cache filled with {:.2} GiB in {:.1} s",
        before.build_cache_bytes as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let answer = docker_api::call(
        &addr,
        tls,
        "POST",
        "/build/prune?all=true&keep-storage=0&reserved-space=0&max-used-space=0",
        docker_api::MAX_DF_ANSWER,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let took = t.elapsed();
    let reclaimed = serde_json::from_str::<serde_json::Value>(&answer)?["SpaceReclaimed"].as_u64().unwrap_or(0);
    let after = docker_api::disk_usage(ip, port, tls).await.map_err(anyhow::Error::msg)?;
    println!(
        "prune: {:.2} GiB reclaimed in {:.2} s ({:.2} GiB/s); build cache {:.2} GiB -> {:.3} GiB",
        reclaimed as f64 / (1u64 << 30) as f64,
        took.as_secs_f64(),
        reclaimed as f64 / (1u64 << 30) as f64 / took.as_secs_f64(),
        before.build_cache_bytes as f64 / (1u64 << 30) as f64,
        after.build_cache_bytes as f64 / (1u64 << 30) as f64
    );
    drop(c);
    drop(volume);
    Ok(())
}
