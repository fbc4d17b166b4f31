//! The operator binary's command line (clap): subcommands, `run`'s flags (each with its
//! environment variable, as the chart sets them) and what they become: the build step's
//! [`Defaults`] and the webhook's certificate [`webhook::Source`].

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};
use dind_operator::crd::DEFAULT_DOCKER_VERSION;
use dind_operator::objects::Defaults;
use dind_operator::webhook;

#[derive(Parser, Debug)]
#[command(name = "dind-operator", version, about = "Runs Docker daemons as a Kubernetes resource (DindDaemon)")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub(crate) namespaces: Vec<String>,
    /// Hold a Lease before reconciling, so that only one replica writes.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    pub(crate) leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "dind-operator")]
    pub(crate) lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) lease_namespace: String,
    /// The namespace the operator runs in (the chart sets it): the daemons' NetworkPolicies
    /// admit the operator's pods from this namespace only. Unset (out of cluster): none.
    #[arg(long, env = "POD_NAMESPACE")]
    pub(crate) operator_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub(crate) identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub(crate) http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Daemon image for DindDaemons that do not set spec.image.
    #[arg(long, env = "DEFAULT_IMAGE", default_value_t = format!("docker:{DEFAULT_DOCKER_VERSION}-dind"))]
    pub(crate) default_image: String,
    /// Where the default image carries dind-init (an absolute path), for a default image built
    /// with it (the chart's own daemon image is); empty: it does not, and an init container
    /// copies dind-init into each daemon pod from the default init image.
    #[arg(long, env = "DEFAULT_IMAGE_DIND_INIT_PATH", default_value = "", value_parser = absolute_or_empty)]
    pub(crate) default_image_dind_init_path: String,
    /// dind-init image for DindDaemons that do not set spec.initImage.
    #[arg(long, env = "DEFAULT_INIT_IMAGE", default_value = concat!("dind-init:", env!("CARGO_PKG_VERSION")))]
    pub(crate) default_init_image: String,
    /// The platform team's placement, `KEY=VALUE,...`: node labels every daemon pod (pool and
    /// sidecar) is scheduled by, over whatever a spec or a pod asks (e.g. a dedicated node
    /// pool). Empty: none.
    #[arg(long, env = "PLACEMENT_NODE_SELECTOR", default_value = "", value_parser = node_selector)]
    pub(crate) placement_node_selector: std::collections::BTreeMap<String, String>,
    /// The nodes support Kubernetes image volumes (beta, on by default, in 1.35; containerd
    /// 2.1+, CRI-O 1.31+): a daemon image without dind-init gets it mounted from the init image,
    /// with no install container. Off: copied in by one (works on every node).
    /// Taint keys a daemon pod may tolerate, comma-separated; `*`: any (the default). Sidecar pods
    /// tolerating another key (or every taint) are refused; the chart's policy refuses such
    /// DindDaemons.
    #[arg(long, env = "PLACEMENT_TOLERATION_KEYS", value_delimiter = ',', default_value = "*")]
    pub(crate) placement_toleration_keys: Vec<String>,
    #[arg(long, env = "DIND_INIT_IMAGE_VOLUME", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) dind_init_image_volume: bool,
    /// Ask each ready daemon for its storage driver over mTLS (needs a route to pod IPs).
    #[arg(long, env = "QUERY_DAEMONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) query_daemons: bool,
    /// How often each ready daemon is asked its disk usage (`/system/df`) and pruned if due
    /// (see the DindDaemon's `spec.cache`), in seconds.
    #[arg(long, env = "DISK_INTERVAL_SECONDS", default_value_t = dind_operator::controller::DISK_EVERY.as_secs(), value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub(crate) disk_interval_seconds: u64,
    /// On SIGTERM, how long the operator keeps working (answering admissions, reconciling) with
    /// `/readyz` failing before it stops, in seconds: time for the Service to stop sending it
    /// admissions (see docs/design.md, "Webhook availability").
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub(crate) drain_seconds: u64,
    #[command(flatten)]
    pub(crate) webhook: WebhookArgs,
}

/// The injection webhook (served by every replica).
#[derive(clap::Args, Debug)]
pub(crate) struct WebhookArgs {
    /// Address of the injection webhook (HTTPS); the webhook is off without it.
    #[arg(long, env = "WEBHOOK_ADDR")]
    pub(crate) webhook_addr: Option<SocketAddr>,
    /// The webhook's Service (in the operator's namespace): its DNS names go into the certificate.
    #[arg(long, default_value = "dind-operator-webhook")]
    pub(crate) webhook_service: String,
    /// More names (DNS or IP) for the webhook's certificate, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) webhook_host: Vec<String>,
    /// Secret (in the operator's namespace) that holds the webhook's CAs and certificate.
    #[arg(long, default_value = "dind-operator-webhook-tls")]
    pub(crate) webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, default_value = "dind-operator")]
    pub(crate) webhook_configuration: String,
    /// Lifetime of the webhook's serving certificate in seconds (its CA lives 3 times as
    /// long); renewed at 2/3 of it. Default 90 days.
    #[arg(long, default_value_t = 90 * 24 * 3600)]
    pub(crate) webhook_cert_lifetime_seconds: i64,
    /// Read tls.crt/tls.key from this directory (kept by cert-manager) instead of making them.
    #[arg(long)]
    pub(crate) webhook_tls_dir: Option<std::path::PathBuf>,
    /// Accept only callers presenting a client certificate of the CA in this PEM file (the
    /// apiserver, given a client certificate by its AdmissionConfiguration); unset: anyone.
    #[arg(long, env = "WEBHOOK_CLIENT_CA")]
    pub(crate) webhook_client_ca: Option<std::path::PathBuf>,
    /// Where pods' certificate sidecars reach this operator for their own client certificate
    /// (`POST /certificates` on the webhook's port). Default:
    /// `https://WEBHOOK_SERVICE.NAMESPACE.svc:443`.
    #[arg(long, env = "CERTIFICATES_URL")]
    pub(crate) certificates_url: Option<String>,
    /// How long the injected init container waits for the daemon to answer, in seconds.
    #[arg(long, default_value_t = dind_contract::client_pod::WAIT_SECONDS)]
    pub(crate) webhook_wait_seconds: u32,
}

/// What the platform team configured, for the build step and the webhook alike.
pub(crate) fn defaults(args: &RunArgs) -> Defaults {
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
pub(crate) fn node_selector(value: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
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
pub(crate) fn absolute_or_empty(value: &str) -> Result<String, String> {
    if value.is_empty() || (value.starts_with('/') && !value.contains("..")) {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not an absolute path in the daemon image (such as /usr/local/bin/dind-init), nor empty"))
    }
}

pub(crate) fn webhook_source(args: &WebhookArgs, namespace: &str) -> webhook::Source {
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
