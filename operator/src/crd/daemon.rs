//! The daemon pods' settings: TLS, storage, dockerd, egress, security.

use super::*;

/// Mutual TLS settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.enabled || self.clientCertificates == 'Shared'")
    .message("tls.clientCertificates: PerPod needs tls.enabled").field_path(".clientCertificates"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve the daemon over mutual TLS (default true). The operator makes one CA per
    /// DindDaemon, a server certificate and a client certificate (Secret NAME-client with
    /// ca.pem, cert.pem, key.pem for DOCKER_CERT_PATH). Off means anyone who reaches the
    /// port owns the daemon and, through it, the node.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How this namespace's own client pods (labelled `dind.dev/inject: NAME`) get a client
    /// certificate. `Shared` (default): every client mounts Secret NAME-client, one key valid
    /// for a year that anyone who may read Secrets here can copy: the weaker option.
    /// `PerPod`: each pod gets a certificate of its own, minted for it (naming its namespace,
    /// name and uid), valid for `clientCertificateLifetimeSeconds` and renewed while the pod
    /// lives by an injected sidecar; a copied certificate stops working when it expires. Pods
    /// of other namespaces (`spec.clients`) always get `PerPod`.
    #[serde(default)]
    pub client_certificates: ClientCertificates,

    /// Lifetime of a per-pod client certificate, in seconds (60-86400, default 3600). The pod's
    /// sidecar renews it once 60% of it has passed; a pod with `activeDeadlineSeconds` gets no
    /// certificate that outlives that deadline.
    #[serde(default = "default_client_certificate_lifetime")]
    #[schemars(range(min = 60, max = 86400))]
    pub client_certificate_lifetime_seconds: i32,
}

/// How a pool daemon's client pods get a client certificate.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClientCertificates {
    /// One certificate for every client, in Secret NAME-client (valid a year).
    #[default]
    Shared,
    /// A short-lived certificate of its own for each pod, minted by the operator.
    PerPod,
}

/// The default of `tls.clientCertificateLifetimeSeconds`: an hour.
pub const DEFAULT_CLIENT_CERTIFICATE_LIFETIME: i32 = 3600;

fn default_client_certificate_lifetime() -> i32 {
    DEFAULT_CLIENT_CERTIFICATE_LIFETIME
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            client_certificates: ClientCertificates::Shared,
            client_certificate_lifetime_seconds: DEFAULT_CLIENT_CERTIFICATE_LIFETIME,
        }
    }
}

/// Pods of other namespaces that a pool DindDaemon serves: a grant. A pod gets Docker from it
/// with two labels, `dind.dev/inject: NAME` and `dind.dev/inject-namespace: NAMESPACE` (this
/// DindDaemon's), when its namespace matches `namespaceSelector` and the pod `podSelector`;
/// otherwise it is refused at creation, naming the grant it lacks. Such a pod gets a client
/// certificate of its own (never the shared Secret), and the daemons' NetworkPolicy admits
/// exactly these namespaces and pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientsSpec {
    /// Namespaces whose pods may use these daemons, by their labels (for one namespace:
    /// `matchLabels: {kubernetes.io/metadata.name: NAME}`). `{}` grants every namespace.
    pub namespace_selector: LabelSelector,

    /// Of those namespaces' pods, only those whose labels match (absent: every pod labelled
    /// for this DindDaemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Storage of /var/lib/docker, which dockerd must have to itself (never shared).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!(self.ephemeral && has(self.storageClassName))")
    .message("storage.storageClassName and storage.ephemeral are mutually exclusive").field_path(".storageClassName"))]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')")
    .message("storage.storageClassName cannot be changed on an existing DindDaemon: its volumes exist in their class").field_path(".storageClassName"))]
#[x_kube(validation = kube::core::Rule::new("self.ephemeral == oldSelf.ephemeral")
    .message("storage.ephemeral cannot be changed on an existing DindDaemon: delete and re-create it").field_path(".ephemeral"))]
#[x_kube(validation = kube::core::Rule::new("!(self.ephemeral && self.retainOnDelete)")
    .message("storage.retainOnDelete needs a volume: it cannot be combined with storage.ephemeral").field_path(".retainOnDelete"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each daemon's volume (a quantity such as 20Gi; default 20Gi). Images, build
    /// cache and containers all live here. With `ephemeral`, the emptyDir's `sizeLimit`
    /// (default 20Gi too): a daemon that writes more is evicted by the kubelet (its cache is
    /// lost) before it fills the node's disk and gets other pods evicted. Raised on an existing
    /// DindDaemon, each daemon's claim is raised to it and the storage driver expands the volume
    /// in place (the daemon keeps running and keeps its cache; `Progressing` says
    /// `VolumeExpanding` until done), where the StorageClass sets `allowVolumeExpansion`;
    /// where it does not, `Degraded` says `VolumeNotExpandable`. Volumes never shrink: a size
    /// below the one the volumes were made with is `Degraded` too (set it back to undo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("storage.size must be a positive quantity such as 20Gi"))]
    pub size: Option<String>,

    /// StorageClass of the volumes; empty for the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// Keep the volumes (and so the image and build cache) when the DindDaemon is deleted or
    /// scaled down; a new DindDaemon of the same name picks them up again. Default false.
    #[serde(default)]
    pub retain_on_delete: bool,

    /// Use an emptyDir (on the node's disk, limited to `size`) instead of a volume: fast, but
    /// the cache is lost with the pod.
    #[serde(default)]
    pub ephemeral: bool,
}

impl StorageSpec {
    /// `size` resolved: the one place its default ([`DEFAULT_STORAGE_SIZE`]) is applied (the
    /// CRD's CEL rule for volume pools spells the same default in CEL).
    pub fn size(&self) -> &str {
        self.size.as_deref().unwrap_or(DEFAULT_STORAGE_SIZE)
    }
}

/// Storage drivers the daemon may run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StorageDriver {
    Overlay2,
    FuseOverlayfs,
    Btrfs,
    Zfs,
    Vfs,
}

impl StorageDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overlay2 => "overlay2",
            Self::FuseOverlayfs => "fuse-overlayfs",
            Self::Btrfs => "btrfs",
            Self::Zfs => "zfs",
            Self::Vfs => "vfs",
        }
    }
}

/// A private registry's certificate authority, from a ConfigMap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCa {
    /// The registry as image names spell it: `host` or `host:port` (e.g.
    /// `registry.corp.example:5000`), no scheme, no path.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?$"))]
    pub registry: String,
    /// Name of the ConfigMap (in the DindDaemon's namespace) holding the CA certificate, PEM.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// The ConfigMap's key holding it. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// dockerd settings. The operator owns the listening address, TLS and data root.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSpec {
    /// MTU of the daemon's networks (576-9000). Default: the pod's eth0 MTU, so that nested
    /// containers do not send packets the pod network drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<i32>,

    /// Registry mirrors (http:// or https:// URLs) tried before Docker Hub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 512), regex(pattern = r"^https?://[^\s/]+(/\S*)?$")))]
    pub registry_mirrors: Vec<String>,

    /// Registries (host[:port] or CIDR, no scheme) the daemon reaches without TLS checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(max = 512), regex(pattern = r"^([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?(/[0-9]{1,3})?$"))
    )]
    pub insecure_registries: Vec<String>,

    /// Certificate authorities of private registries that the daemon trusts (a corporate
    /// registry's own CA), so `docker pull`/`push`/`FROM` reach them with TLS verified. Each is
    /// mounted read-only as `/etc/docker/certs.d/REGISTRY/ca.crt`, where dockerd looks for a
    /// registry's CA. The ConfigMap, with the key, must exist in the DindDaemon's namespace:
    /// while one is missing nothing is applied (running daemons keep serving) and `Degraded`
    /// says `RegistryCAMissing`, naming the entry; in Sidecar mode labelled pods are refused
    /// at admission, saying the same. Fixed, it is picked up at the next retry (5 s doubling
    /// to 5 min).
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "registryCAs")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["registry"]))]
    pub registry_cas: Vec<RegistryCa>,

    /// Storage driver. Default: chosen by dind-init from the volume's filesystem (overlay2 on
    /// ext4/xfs). vfs works anywhere but copies every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<StorageDriver>,

    /// Extra dockerd arguments, e.g. `--debug`. Refused: flags dind-init sets itself (-H/--host,
    /// --tls*, --data-root/-g, --exec-root, --pidfile/-p, --config-file, --shutdown-timeout) and
    /// flags with a field of their own here (--mtu, --storage-driver/-s, --registry-mirror,
    /// --insecure-registry), also inside a group of short flags such as `-DH`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    #[x_kube(validation = extra_args_rule())]
    pub extra_args: Vec<String>,

    /// daemon.json passthrough: any dockerd configuration key (e.g. `log-level`, `features`).
    /// Refused: keys dind-init sets itself (hosts, tls, tlsverify, tlscacert, tlscert, tlskey,
    /// data-root, exec-root, pidfile, shutdown-timeout) and keys with a field of their own here
    /// (mtu, storage-driver, registry-mirrors, insecure-registries), so each setting has one place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "daemon_config_schema")]
    pub config: Option<BTreeMap<String, Value>>,
}

/// The CEL rule of `daemon.extraArgs`: the contract's owned flags (`dind_contract`), the same
/// check dind-init makes, so a refused flag is a 422 at `kubectl apply`, not a crash loop.
fn extra_args_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.all(a, !a.matches('{}'))", dind_contract::owned_flag_pattern())).message(
        "daemon.extraArgs may not set these flags, the operator owns them: -H/--host, --tls*, --data-root/-g, --exec-root, \
         --pidfile/-p, --config-file, --shutdown-timeout (also inside a group such as -DH); and --mtu, --storage-driver/-s, \
         --registry-mirror, --insecure-registry have their own fields in spec.daemon",
    )
}

/// A map of arbitrary JSON values. CEL cannot type free-form values, so the refused keys are
/// an OpenAPI `not: anyOf: required` (the apiserver names spec.daemon.config when it refuses).
fn daemon_config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let refused: Vec<Value> = dind_contract::owned_keys().map(|k| serde_json::json!({"required": [k]})).collect();
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true},
        "not": {"anyOf": refused}
    })
}

/// Egress of the daemon pods (see `spec.egress`). Enforced only where the cluster's network
/// plugin enforces NetworkPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// Restrict egress (default false). On: daemons may connect to `allowedCIDRs` but
    /// `deniedCIDRs`, and to DNS (port 53) anywhere; nothing else.
    #[serde(default)]
    pub restricted: bool,

    /// Where daemons may connect (default `0.0.0.0/0`, `::/0`: everywhere but `deniedCIDRs`).
    /// Narrow it to your registries' and mirrors' networks. Pod IPs in the cluster are matched
    /// or not as the network plugin decides (NetworkPolicy leaves ipBlock on pod IPs to it).
    #[serde(default = "default_allowed_cidrs", rename = "allowedCIDRs")]
    #[schemars(length(max = 16), inner(length(max = 43)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c))").message("egress.allowedCIDRs: each must be a CIDR such as 10.0.0.0/8"))]
    pub allowed_cidrs: Vec<String>,

    /// Never, even inside an allowed CIDR (default: the cloud metadata service,
    /// `169.254.169.254/32` and `fd00:ec2::254/128`, where a build could read the node's cloud
    /// credentials).
    #[serde(default = "default_denied_cidrs", rename = "deniedCIDRs")]
    #[schemars(length(max = 16), inner(length(max = 43)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c))").message("egress.deniedCIDRs: each must be a CIDR such as 169.254.169.254/32"))]
    pub denied_cidrs: Vec<String>,
}

fn default_allowed_cidrs() -> Vec<String> {
    vec!["0.0.0.0/0".into(), "::/0".into()]
}
fn default_denied_cidrs() -> Vec<String> {
    vec!["169.254.169.254/32".into(), "fd00:ec2::254/128".into()]
}

impl Default for EgressSpec {
    fn default() -> Self {
        Self { restricted: false, allowed_cidrs: default_allowed_cidrs(), denied_cidrs: default_denied_cidrs() }
    }
}

/// How nested containers get the privileges they need.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SecurityMode {
    /// `privileged: true`, AppArmor unconfined, SELinux type spc_t (the default).
    #[default]
    Privileged,
    /// Every capability except SYS_RESOURCE, seccomp and AppArmor unconfined, SELinux spc_t;
    /// for nodes whose runtime cannot grant all capabilities.
    Capabilities,
}

/// Security of the daemon pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Privileged (default) or Capabilities.
    #[serde(default)]
    pub mode: SecurityMode,

    /// RuntimeClass of the daemon pods, e.g. one backed by sysbox-runc, which runs
    /// Docker-in-Docker without host privileges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub runtime_class_name: Option<String>,
}
