//! Benchmark: 1000 DindDaemons on the harness apiserver. Prints the time until every one has
//! its owned objects applied and its status written, the operator's peak RSS, and its CPU over
//! the following idle minute. Needs the control plane (tests/cluster/cluster.sh up) and a
//! release operator (`cargo build --release -p dind-operator`).
//!
//!   cargo run --release -p dind-tests --bin bench-operator [-- COUNT]

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
    while done.len() < count {
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
    let pid = op.pid();
    let hwm_kib = proc_field(pid, "status", "VmHWM:").unwrap_or(0);
    let ticks_per_s = 100.0;
    let reconciles = |name: &'static str| op.metric(name);
    let (burst_reconciles, burst_unchanged) =
        (reconciles("dind_operator_reconciles_total").await.unwrap_or(0.0), reconciles("dind_operator_reconciles_unchanged_total").await.unwrap_or(0.0));
    let before = cpu_ticks(pid).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = cpu_ticks(pid).unwrap_or(0);
    let idle_reconciles = reconciles("dind_operator_reconciles_total").await.unwrap_or(0.0) - burst_reconciles;
    let idle_unchanged = reconciles("dind_operator_reconciles_unchanged_total").await.unwrap_or(0.0) - burst_unchanged;
    let rss_idle_kib = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    let idle_cpu = (after - before) as f64 / ticks_per_s / 60.0 * 100.0;

    println!("daemons:                 {count}");
    println!("created in:              {:.1} s", created.as_secs_f64());
    println!("all applied + status in: {:.1} s (target <= 30 s)", converged.as_secs_f64());
    println!("operator peak RSS:       {:.1} MiB (target <= 40 MiB)", hwm_kib as f64 / 1024.0);
    println!("operator RSS when idle:  {:.1} MiB", rss_idle_kib as f64 / 1024.0);
    println!("idle CPU over 60 s:      {idle_cpu:.2} % of one core (target ~0)");
    println!("reconciles until done:   {burst_reconciles} ({burst_unchanged} with nothing to apply)");
    println!("reconciles while idle:   {idle_reconciles} ({idle_unchanged} with nothing to apply)");
    drop(op);
    Ok(())
}
