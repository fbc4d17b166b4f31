//! Benchmark: 1000 DindDaemons on the harness apiserver. Prints the time until every one has
//! its owned objects applied and its status written, the operator's peak RSS, and its CPU over
//! the following idle minute. Needs the control plane (tests/cluster/cluster.sh up) and a
//! release operator (`cargo build --release -p dind-operator`).
//!
//!   cargo run --release -p dind-tests --bin bench-operator [-- COUNT]
//!
//! `BENCH_QUICK=1` stops at convergence (time and peak RSS so far): for comparing builds, each
//! on a fresh control plane, since an apiserver that has seen earlier runs is slower.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dind_operator::crd::DindDaemon;
use dind_tests::{Operator, client, suffix};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde_json::json;

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let client = client().await?;
    let ns = format!("bench-{}", suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    let result = bench(&client, &ns, count).await;
    // The namespace goes whatever happened, taking the 1000 objects with it.
    namespaces.delete(&ns, &DeleteParams::background()).await?;
    result
}

async fn bench(client: &kube::Client, ns: &str, count: usize) -> anyhow::Result<()> {
    let op = Operator::start(ns, &[]).context("start the operator")?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let api: Api<DindDaemon> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    // Ephemeral storage and a node selector nothing matches: the benchmark measures the
    // operator and the apiserver, not 1000 daemons starting on a 2-core node.
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let dd: DindDaemon = serde_json::from_value(json!({
                    "apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": format!("d{i}")},
                    "spec": {"storage": {"ephemeral": true}, "nodeSelector": {"dind.dev/bench": "nowhere"}}
                }))?;
                api.create(&PostParams::default(), &dd).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = start.elapsed();
    // A watch, not repeated lists: listing 1000 objects twice a second would load the very
    // apiserver whose throughput is being measured.
    let mut done = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(api.clone(), watcher::Config::default()).applied_objects());
    let mut progress = Instant::now();
    while done.len() < count {
        if progress.elapsed() >= Duration::from_secs(10) {
            // The shape of the curve tells a slow start from a long tail.
            eprintln!("bench-operator: {:>4}/{count} with status after {:.0} s", done.len(), start.elapsed().as_secs_f64());
            progress = Instant::now();
        }
        let remaining = Duration::from_secs(600).saturating_sub(start.elapsed());
        let next = tokio::time::timeout(remaining, events.try_next()).await;
        let Ok(Ok(Some(dd))) = next else {
            anyhow::bail!("only {}/{count} reconciled after 10 min", done.len());
        };
        if dd.status.as_ref().is_some_and(|s| s.observed_generation == Some(1)) {
            done.insert(dd.name_any());
        }
    }
    let converged = start.elapsed();
    eprintln!("bench-operator: all {count} with status after {:.1} s", converged.as_secs_f64());
    let pid = op.pid();
    if std::env::var("BENCH_QUICK").is_ok() {
        let hwm_mib = proc_field(pid, "status", "VmHWM:").unwrap_or(0) as f64 / 1024.0;
        println!("all applied + status in:      {:.1} s; peak RSS so far {hwm_mib:.1} MiB", converged.as_secs_f64());
        return Ok(());
    }
    let rss_converged_kib = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    // The minute right after: the controller-manager is still making the StatefulSets' pods
    // and updating their status, and each change wakes the operator.
    let settling = Window::measure(&op, Duration::from_secs(60)).await;
    // Then wait until the operator has had nothing to do for 15 s (at most 5 min), and
    // measure a truly idle minute.
    let quiet_since = Instant::now();
    let mut last = op.metric(RECONCILES).await.unwrap_or(0.0);
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(15) && quiet_since.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = op.metric(RECONCILES).await.unwrap_or(0.0);
        if now != last {
            (last, still) = (now, Instant::now());
        }
    }
    let waited = quiet_since.elapsed();
    let idle = Window::measure(&op, Duration::from_secs(60)).await;
    let rss_idle_kib = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    // The high-water mark over the whole run: burst, settling and idle.
    let hwm_kib = proc_field(pid, "status", "VmHWM:").unwrap_or(0);
    let mib = |kib: u64| kib as f64 / 1024.0;

    println!("daemons:                      {count}");
    println!("created in:                   {:.1} s", created.as_secs_f64());
    println!("all applied + status in:      {:.1} s (target <= 30 s)", converged.as_secs_f64());
    println!("operator peak RSS:            {:.1} MiB (target <= 40 MiB)", mib(hwm_kib));
    println!("operator RSS at convergence:  {:.1} MiB, when idle: {:.1} MiB", mib(rss_converged_kib), mib(rss_idle_kib));
    println!("next 60 s (cluster settling): {settling}");
    println!("idle 60 s (after {:>3.0} s wait): {idle} (target ~0)", waited.as_secs_f64());
    drop(op);
    Ok(())
}

const RECONCILES: &str = "dind_operator_reconciles_total";

/// What the operator did over one window of time.
struct Window {
    cpu_percent: f64,
    reconciles: f64,
    unchanged: f64,
    status_updates: f64,
}

impl Window {
    async fn measure(op: &Operator, length: Duration) -> Self {
        async fn counters(op: &Operator) -> [f64; 3] {
            let mut out = [0.0; 3];
            for (slot, name) in
                out.iter_mut().zip([RECONCILES, "dind_operator_reconciles_unchanged_total", "dind_operator_status_updates_total"])
            {
                *slot = op.metric(name).await.unwrap_or(0.0);
            }
            out
        }
        let (ticks0, c0) = (cpu_ticks(op.pid()).unwrap_or(0), counters(op).await);
        tokio::time::sleep(length).await;
        let (ticks1, c1) = (cpu_ticks(op.pid()).unwrap_or(0), counters(op).await);
        // Clock ticks are 1/100 s on Linux.
        let cpu_percent = (ticks1.saturating_sub(ticks0)) as f64 / 100.0 / length.as_secs_f64() * 100.0;
        Self { cpu_percent, reconciles: c1[0] - c0[0], unchanged: c1[1] - c0[1], status_updates: c1[2] - c0[2] }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU {:.2} % of one core; {} reconciles ({} with nothing to apply), {} status writes",
            self.cpu_percent, self.reconciles, self.unchanged, self.status_updates
        )
    }
}
