//! The Helm chart: lint, render, server-side dry run, schema refusals (`render`); install and
//! uninstall on the harness, the chart's RBAC proven sufficient and no wider (the operator runs
//! out of cluster with the chart's ServiceAccount token) and the platform policy (`install`);
//! kubeconform against every supported Kubernetes minor (`conform`).

mod conform;
mod install;
mod render;

use dind_tests::run_tool;

pub(super) const KUBE_VERSION: &str = "1.35.4";

/// Non-default values that exercise every branch of the templates.
pub(super) const CUSTOM: &[&str] = &[
    "--set",
    "replicas=2",
    "--set",
    "watchNamespaces={team-a,team-b}",
    "--set",
    "logFormat=text",
    "--set",
    "metrics.enabled=false",
    "--set",
    "daemon.image=registry.example/docker:28-dind",
    "--set",
    "daemon.initImage=registry.example/dind-init:0.1.0",
];

pub(super) async fn helm(args: &[&str]) -> anyhow::Result<String> {
    run_tool("helm", args).await
}
