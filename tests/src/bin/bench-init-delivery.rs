//! Benchmark on the harness's node: how a daemon image of one's own gets dind-init, and what it
//! costs its start. Two operators from the chart, one per namespace: one copies dind-init in with
//! an install container (the default), the other mounts the init image as a Kubernetes image
//! volume (`daemon.dindInitImageVolume=true`). Each applies the same DindDaemon (the harness's
//! stand-in image as "an image of one's own", an emptyDir volume), alternately, RUNS times:
//! `kubectl apply` → Ready, and pod created → daemon container started, medians and their ratio.
//! Needs the cluster with its node (tests/cluster/cluster.sh up) and the CRD applied.
//!
//!   cargo run --release -p dind-tests --bin bench-init-delivery [-- RUNS]

use std::time::Instant;

use dind_tests::{client, kubectl_apply, run_tool, suffix};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dind-operator");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds from the pod's creation to its daemon container's start (whole seconds from the
/// apiserver's timestamps; the start is the kubelet's, to the second).
fn created_to_started(pod: &Pod) -> Option<f64> {
    let created = pod.metadata.creation_timestamp.as_ref()?.0.as_millisecond() as f64 / 1000.0;
    let status = pod.status.as_ref()?;
    let started = status.container_statuses.as_ref()?.first()?.state.as_ref()?.running.as_ref()?.started_at.as_ref()?;
    Some(started.0.as_millisecond() as f64 / 1000.0 - created)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let client = client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let images = dind_tests::chart_image_sets();
    let id = suffix();
    let ways = [("copied", format!("bench-copy-{id}"), "false"), ("mounted", format!("bench-mount-{id}"), "true")];
    for (label, ns, volume) in &ways {
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
        let watch = format!("watchNamespaces={{{ns}}}");
        let volume = format!("daemon.dindInitImageVolume={volume}");
        // Two installs at once: distinct releases, and no admission policy (each would refuse the
        // other's namespace, and their cluster-scoped policies would share a name).
        let release = format!("op-{label}");
        let mut args = vec!["install", &release, CHART, "-n", ns.as_str(), "--set", &watch, "--set", &volume];
        args.extend(["--set", "policy.enabled=false", "--wait", "--timeout", "180s"]);
        for set in &images {
            args.extend(["--set", set.as_str()]);
        }
        run_tool("helm", &args).await?;
    }
    let mut ready: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut started: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    // One run more than asked: the first of each pulls the init image (copy: the install
    // container's image; mount: the image volume) and is left out.
    for i in 0..=runs {
        for (w, (label, ns, _)) in ways.iter().enumerate() {
            let name = format!("r{i}");
            let dd = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name},
                "spec": {"image": "dind-daemon:test", "storage": {"ephemeral": true, "size": "1Gi"}}});
            let start = Instant::now();
            kubectl_apply(ns, &dd.to_string()).await?;
            run_tool("kubectl", &["wait", "-n", ns, "--for=condition=Ready", &format!("dind/{name}"), "--timeout=300s"]).await?;
            let took = start.elapsed().as_secs_f64();
            let pod = Api::<Pod>::namespaced(client.clone(), ns).get(&format!("{name}-0")).await?;
            let inits = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).map_or(0, Vec::len);
            let start_s = created_to_started(&pod).unwrap_or(f64::NAN);
            println!(
                "run {i} {label}: apply -> Ready {took:.2} s, pod created -> daemon started {start_s:.0} s, {inits} init container(s)"
            );
            if i > 0 {
                ready[w].push(took);
                started[w].push(start_s);
            }
            run_tool("kubectl", &["delete", "dind", "-n", ns, &name, "--wait=false"]).await?;
        }
    }
    let (copied, mounted) = (median(ready[0].clone()), median(ready[1].clone()));
    println!("apply -> Ready, median of {runs}: copied in {copied:.2} s, image volume {mounted:.2} s, ratio {:.2}x", mounted / copied);
    println!(
        "pod created -> daemon container started, median: copied in {:.0} s, image volume {:.0} s (whole seconds)",
        median(started[0].clone()),
        median(started[1].clone())
    );
    for (label, ns, _) in &ways {
        run_tool("helm", &["uninstall", &format!("op-{label}"), "-n", ns]).await?;
        namespaces.delete(ns, &DeleteParams::background()).await?;
    }
    Ok(())
}
