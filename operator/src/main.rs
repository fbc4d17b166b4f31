//! `dind-operator run | crd | rbac | apply-crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use dind_operator::controller::{self, Settings};
use dind_operator::crd::{DEFAULT_DOCKER_VERSION, DindDaemon};
use dind_operator::objects::Defaults;
use dind_operator::runtime::leader::{self, LeaseLock};
use dind_operator::runtime::metrics::Metrics;
use dind_operator::runtime::server::{self, Health, Liveness};
use dind_operator::webhook;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(name = "dind-operator", version, about = "Runs Docker daemons as a Kubernetes resource (DindDaemon)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile DindDaemons until SIGTERM.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinition as YAML.
    Crd,
    /// Print the RBAC rules the operator needs as YAML.
    Rbac,
    /// Apply this operator's CRD (server-side) and wait until it is Established: the chart's
    /// pre-install/pre-upgrade hook. A CRD a newer operator applied is kept unless --force.
    ApplyCrd {
        #[arg(long)]
        force: bool,
        /// How long to wait for Established, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Hold a Lease before reconciling, so that only one replica writes.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "dind-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// The namespace the operator runs in (the chart sets it): the daemons' NetworkPolicies
    /// admit the operator's pods from this namespace only. Unset (out of cluster): none.
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Daemon image for DindDaemons that do not set spec.image.
    #[arg(long, env = "DEFAULT_IMAGE", default_value_t = format!("docker:{DEFAULT_DOCKER_VERSION}-dind"))]
    default_image: String,
    /// Where the default image carries dind-init (an absolute path), for a default image built
    /// with it (the chart's own daemon image is); empty: it does not, and an init container
    /// copies dind-init into each daemon pod from the default init image.
    #[arg(long, env = "DEFAULT_IMAGE_DIND_INIT_PATH", default_value = "", value_parser = absolute_or_empty)]
    default_image_dind_init_path: String,
    /// dind-init image for DindDaemons that do not set spec.initImage.
    #[arg(long, env = "DEFAULT_INIT_IMAGE", default_value = concat!("dind-init:", env!("CARGO_PKG_VERSION")))]
    default_init_image: String,
    /// The platform team's placement, `KEY=VALUE,...`: node labels every daemon pod (pool and
    /// sidecar) is scheduled by, over whatever a spec or a pod asks (e.g. a dedicated node
    /// pool). Empty: none.
    #[arg(long, env = "PLACEMENT_NODE_SELECTOR", default_value = "", value_parser = node_selector)]
    placement_node_selector: std::collections::BTreeMap<String, String>,
    /// The nodes support Kubernetes image volumes (beta, on by default, in 1.35; containerd
    /// 2.1+, CRI-O 1.31+): a daemon image without dind-init gets it mounted from the init image,
    /// with no install container. Off: copied in by one (works on every node).
    /// Taint keys a daemon pod may tolerate, comma-separated; `*`: any (the default). Sidecar pods
    /// tolerating another key (or every taint) are refused; the chart's policy refuses such
    /// DindDaemons.
    #[arg(long, env = "PLACEMENT_TOLERATION_KEYS", value_delimiter = ',', default_value = "*")]
    placement_toleration_keys: Vec<String>,
    #[arg(long, env = "DIND_INIT_IMAGE_VOLUME", default_value_t = false, action = clap::ArgAction::Set)]
    dind_init_image_volume: bool,
    /// Ask each ready daemon for its storage driver over mTLS (needs a route to pod IPs).
    #[arg(long, env = "QUERY_DAEMONS", default_value_t = true, action = clap::ArgAction::Set)]
    query_daemons: bool,
    /// How often each ready daemon is asked its disk usage (`/system/df`) and pruned if due
    /// (see the DindDaemon's `spec.cache`), in seconds.
    #[arg(long, env = "DISK_INTERVAL_SECONDS", default_value_t = dind_operator::controller::DISK_EVERY.as_secs(), value_parser = clap::value_parser!(u64).range(5..=3600))]
    disk_interval_seconds: u64,
    /// On SIGTERM, how long the operator keeps working (answering admissions, reconciling) with
    /// `/readyz` failing before it stops, in seconds: time for the Service to stop sending it
    /// admissions (see docs/design.md, "Webhook availability").
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60))]
    drain_seconds: u64,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The injection webhook (served by every replica).
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Address of the injection webhook (HTTPS); the webhook is off without it.
    #[arg(long, env = "WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// The webhook's Service (in the operator's namespace): its DNS names go into the certificate.
    #[arg(long, default_value = "dind-operator-webhook")]
    webhook_service: String,
    /// More names (DNS or IP) for the webhook's certificate, comma-separated.
    #[arg(long, value_delimiter = ',')]
    webhook_host: Vec<String>,
    /// Secret (in the operator's namespace) that holds the webhook's CAs and certificate.
    #[arg(long, default_value = "dind-operator-webhook-tls")]
    webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, default_value = "dind-operator")]
    webhook_configuration: String,
    /// Lifetime of the webhook's serving certificate in seconds (its CA lives 3 times as
    /// long); renewed at 2/3 of it. Default 90 days.
    #[arg(long, default_value_t = 90 * 24 * 3600)]
    webhook_cert_lifetime_seconds: i64,
    /// Read tls.crt/tls.key from this directory (kept by cert-manager) instead of making them.
    #[arg(long)]
    webhook_tls_dir: Option<std::path::PathBuf>,
    /// Accept only callers presenting a client certificate of the CA in this PEM file (the
    /// apiserver, given a client certificate by its AdmissionConfiguration); unset: anyone.
    #[arg(long, env = "WEBHOOK_CLIENT_CA")]
    webhook_client_ca: Option<std::path::PathBuf>,
    /// Where pods' certificate sidecars reach this operator for their own client certificate
    /// (`POST /certificates` on the webhook's port). Default:
    /// `https://WEBHOOK_SERVICE.NAMESPACE.svc:443`.
    #[arg(long, env = "CERTIFICATES_URL")]
    certificates_url: Option<String>,
    /// How long the injected init container waits for the daemon to answer, in seconds.
    #[arg(long, default_value_t = dind_contract::client_pod::WAIT_SECONDS)]
    webhook_wait_seconds: u32,
}

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

/// What the platform team configured, for the build step and the webhook alike.
fn defaults(args: &RunArgs) -> Defaults {
    Defaults {
        image: args.default_image.clone(),
        image_dind_init_path: Some(args.default_image_dind_init_path.clone()).filter(|p| !p.is_empty()),
        init_image: args.default_init_image.clone(),
        init_image_volume: args.dind_init_image_volume,
        operator_namespace: args.operator_namespace.clone(),
        placement: args.placement_node_selector.clone(),
        toleration_keys: Some(args.placement_toleration_keys.clone()).filter(|keys| !keys.iter().any(|k| k == "*")),
    }
}

/// `--placement-node-selector`: `KEY=VALUE` pairs, comma-separated, or empty.
fn node_selector(value: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.trim().split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{pair:?} is not KEY=VALUE")),
        })
        .collect()
}

/// `--default-image-dind-init-path`: empty, or an absolute path.
fn absolute_or_empty(value: &str) -> Result<String, String> {
    if value.is_empty() || (value.starts_with('/') && !value.contains("..")) {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not an absolute path in the daemon image (such as /usr/local/bin/dind-init), nor empty"))
    }
}

fn webhook_source(args: &WebhookArgs, namespace: &str) -> webhook::Source {
    if let Some(dir) = &args.webhook_tls_dir {
        return webhook::Source::Files(dir.clone());
    }
    let service = &args.webhook_service;
    let mut names: std::collections::BTreeSet<String> =
        [format!("{service}.{namespace}.svc"), format!("{service}.{namespace}"), format!("{service}.{namespace}.svc.cluster.local")].into();
    names.extend(args.webhook_host.iter().cloned());
    webhook::Source::Managed {
        namespace: namespace.to_string(),
        secret: args.webhook_secret.clone(),
        configuration: args.webhook_configuration.clone(),
        names,
        lifetimes: webhook::certs::Lifetimes { leaf: time::Duration::seconds(args.webhook_cert_lifetime_seconds.max(30)) },
    }
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
