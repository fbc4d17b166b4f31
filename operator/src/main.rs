//! `dind-operator run | crd | rbac | apply-crd`: where the operator process starts. Its flags
//! are in `cli.rs`.

mod cli;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser as _;
use cli::{Cli, Command, LogFormat, RunArgs, defaults, webhook_source};
use dind_operator::controller::{self, Settings};
use dind_operator::crd::DindDaemon;
use dind_operator::runtime::leader::{self, LeaseLock};
use dind_operator::runtime::metrics::Metrics;
use dind_operator::runtime::server::{self, Health, Liveness};
use dind_operator::webhook;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", dind_operator::crd_yaml()?),
        Command::Rbac => print!("{}", dind_operator::rbac_yaml()?),
        Command::ApplyCrd { force, wait_seconds } => {
            rustls::crypto::ring::default_provider()
                .install_default()
                .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
            let client = dind_operator::runtime::api_client::infer()
                .await
                .map_err(anyhow::Error::msg)
                .context("connecting to the Kubernetes API")?;
            let done = dind_operator::runtime::crd_apply::apply(client, force, std::time::Duration::from_secs(wait_seconds))
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{done}");
        }
        Command::Run(args) => run(*args).await?,
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let client =
        dind_operator::runtime::api_client::infer().await.map_err(anyhow::Error::msg).context("connecting to the Kubernetes API")?;

    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let liveness = Arc::new(Liveness::default());
    let resolver = args.webhook.webhook_addr.map(|_| Arc::new(webhook::Resolver::default()));
    let health =
        Arc::new(Health { registry, ready: false.into(), liveness: liveness.clone(), draining: Arc::default(), webhook: resolver.clone() });

    // One shutdown signal for the HTTP server, the lease and every controller.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        let health = health.clone();
        let drain = std::time::Duration::from_secs(args.drain_seconds);
        async move {
            wait_for_signal().await;
            // Drain first: not ready (the Service stops routing new admissions here), still
            // answering (those already routed here, each with Connection: close). A second
            // signal stops at once.
            health.draining.store(true, Ordering::Relaxed);
            tracing::info!(?drain, "draining: not ready, still answering");
            tokio::select! {
                () = tokio::time::sleep(drain) => {}
                () = wait_for_signal() => {}
            }
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            // Graceful shutdown lets in-flight work finish, but not forever (an apiserver that
            // stopped answering would hold it): well inside the pod's default 30 s grace.
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "still busy after the shutdown grace; exiting anyway");
            std::process::exit(1);
        }
    });
    let http = tokio::spawn(server::serve(args.http_addr, health.clone(), stopped()));
    // Every replica admits pods, leader or not.
    let webhook = args.webhook.webhook_addr.zip(resolver).map(|(addr, resolver)| {
        let source = webhook_source(&args.webhook, &args.lease_namespace);
        let handler = webhook::Handler {
            client: client.clone(),
            defaults: defaults(&args),
            wait_seconds: args.webhook.webhook_wait_seconds,
            metrics: metrics.clone(),
            minting: Some(webhook::Minting {
                operator: args
                    .webhook
                    .certificates_url
                    .clone()
                    .unwrap_or_else(|| format!("https://{}.{}.svc:443", args.webhook.webhook_service, args.lease_namespace)),
                resolver: resolver.clone(),
            }),
        };
        let callers = match &args.webhook.webhook_client_ca {
            None => webhook::Callers::Anyone,
            Some(file) => webhook::Callers::CertificateOf(
                std::fs::read_to_string(file).with_context(|| format!("reading --webhook-client-ca {}", file.display()))?,
            ),
        };
        let endpoint = webhook::Endpoint { addr, source, resolver, callers, draining: health.draining.clone() };
        anyhow::Ok(tokio::spawn(webhook::run(client.clone(), endpoint, handler, stopped())))
    });
    let webhook = webhook.transpose()?;

    // Ready once the CRD is served to us (Helm installs it; we never do).
    let probe: Api<DindDaemon> = match args.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe
        .list(&ListParams::default().limit(1))
        .await
        .context("listing DindDaemons: is the CRD installed and the operator's RBAC bound?")?;
    health.ready.store(true, Ordering::Relaxed);

    let lease = if args.leader_election {
        let identity = args.identity.clone().unwrap_or_else(|| format!("dind-operator-{}", std::process::id()));
        let lock = LeaseLock::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity);
        tokio::select! {
            () = lock.acquire() => {}
            () = stopped() => return Ok(()),
        }
        metrics.leader.set(1);
        let holder = lock.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            holder.hold().await;
            // Leadership lost (or unconfirmed): stop reconciling at once, and exit before the
            // lease can pass to another replica even if in-flight work would hold the shutdown.
            // The pod restarts as a standby.
            tracing::error!("lost leadership; stopping");
            let _ = stop_tx.send(true);
            tokio::time::sleep(leader::LEASE_DURATION.saturating_sub(leader::RENEW_DEADLINE + std::time::Duration::from_secs(1))).await;
            tracing::error!("still busy after losing leadership; exiting");
            std::process::exit(1);
        });
        Some(lock)
    } else {
        None
    };

    let settings = Settings {
        defaults: defaults(&args),
        query_daemons: args.query_daemons,
        disk_every: std::time::Duration::from_secs(args.disk_interval_seconds),
        liveness,
    };
    tracing::info!(namespaces = ?args.namespaces, "reconciling DindDaemons");
    if args.namespaces.is_empty() {
        controller::run(client, metrics, settings, None, stopped()).await;
    } else {
        let runs = args
            .namespaces
            .iter()
            .map(|ns| controller::run(client.clone(), metrics.clone(), settings.clone(), Some(ns.clone()), stopped()));
        futures::future::join_all(runs).await;
    }
    if let Some(lock) = lease {
        lock.release().await;
    }
    let _ = stop_tx.send(true);
    http.await.context("HTTP server task")?.context("HTTP server")?;
    if let Some(webhook) = webhook {
        webhook.await.context("webhook task")?.context("webhook server")?;
    }
    Ok(())
}

/// How long the operator may take to stop after SIGTERM before it exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
