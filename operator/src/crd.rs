//! The `DindDaemon` API (`dind.dev/v1alpha1`). Doc comments here become `kubectl explain`.
//!
//! Validation lives in the schema (OpenAPI bounds, enums, CEL `x-kubernetes-validations`), so
//! the apiserver refuses a bad spec at `kubectl apply` with a message naming the field, and the
//! reconciler never sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Docker version of the default daemon image (`docker:<ver>-dind`).
pub const DEFAULT_DOCKER_VERSION: &str = "28.5.2";
/// The default port of a TLS daemon (Docker's convention).
pub const DEFAULT_PORT: i32 = 2376;
/// The default high-water mark of a daemon's volume, percent (`cache.highWaterPercent`).
pub const DEFAULT_HIGH_WATER_PERCENT: i32 = 85;
/// The default size of a daemon's volume when none is given (and of the emptyDir's
/// `sizeLimit` with `storage.ephemeral`).
pub const DEFAULT_STORAGE_SIZE: &str = "20Gi";
/// What a daemon container requests when `spec.resources` is not given: enough for the
/// scheduler to count a daemon (an idle dockerd and its containerd use ~100 MiB), small enough
/// that a two-core node runs a dozen. Builds use more: set `spec.resources` for them.
pub const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "100m"), ("memory", "256Mi")];

/// The CRD as the apiserver gets it: the derived one, plus the rules on `metadata.name` that
/// the derive cannot express (every generated name must fit; see `names::MAX_NAME_LEN`).
pub fn definition() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    let mut crd = <DindDaemon as kube::CustomResourceExt>::crd();
    let max = crate::names::MAX_NAME_LEN;
    for version in &mut crd.spec.versions {
        if let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            root.x_kubernetes_validations.get_or_insert_with(Vec::new).extend([
                ValidationRule {
                    rule: format!("self.metadata.name.size() <= {max}"),
                    message: Some(format!(
                        "metadata.name may have at most {max} characters: the daemons' pods and Services are named after it"
                    )),
                    ..Default::default()
                },
                ValidationRule {
                    rule: "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')".into(),
                    message: Some(
                        "metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a letter): it names Services"
                            .into(),
                    ),
                    ..Default::default()
                },
            ]);
        }
    }
    crd
}

/// A Docker daemon (or several) run as a cluster resource: each replica is a `dind-init` +
/// dockerd pod with its own persistent volume for /var/lib/docker, served over mutual TLS.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dind.dev",
    version = "v1alpha1",
    kind = "DindDaemon",
    plural = "dinddaemons",
    singular = "dinddaemon",
    shortname = "dind",
    category = "all",
    namespaced,
    status = "DindDaemonStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"ready daemons / desired"}"#,
    printcolumn = r#"{"name":"DockerHost","type":"string","jsonPath":".status.dockerHost","description":"DOCKER_HOST for clients"}"#,
    printcolumn = r#"{"name":"Driver","type":"string","jsonPath":".status.storageDriver","description":"storage driver the daemons run"}"#,
    printcolumn = r#"{"name":"Disk","type":"string","jsonPath":".status.disk","description":"the fullest daemon's disk use"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("!(self.tls.enabled && self.port == 2375)")
    .message("port 2375 is Docker's plaintext port: use it only with tls.enabled=false")
    .field_path(".port"))]
#[x_kube(validation = kube::core::Rule::new("self.mode == oldSelf.mode")
    .message("mode cannot be changed on an existing DindDaemon: delete and re-create it").field_path(".mode"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.mode != 'Sidecar' || !(self.storage.retainOnDelete || self.storage.ephemeral || (has(self.storage.storageClassName) && !has(self.volumePool)))")
    .message("in Sidecar mode /var/lib/docker is an emptyDir of each pod (or a volume of volumePool), sized by storage.size: retainOnDelete and ephemeral do not apply, and storageClassName only with volumePool")
    .field_path(".storage"))]
#[x_kube(validation = pool_size_rule())]
#[x_kube(validation = kube::core::Rule::new("!(has(self.initImage) && has(self.dindInitPath))")
    .message("initImage and dindInitPath are mutually exclusive: dind-init is either copied in from initImage or already in the daemon image at dindInitPath")
    .field_path(".dindInitPath"))]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'Sidecar' || !self.egress.restricted")
    .message("egress.restricted needs mode: Pool (a sidecar daemon shares its job pod's network: restrict the job's pods)").field_path(".egress"))]
#[x_kube(validation = kube::core::Rule::new("self.mode == 'Sidecar' || !has(self.sidecar)")
    .message("sidecar needs mode: Sidecar (a Pool daemon always listens on TCP)").field_path(".sidecar"))]
#[x_kube(validation = kube::core::Rule::new("self.mode == 'Sidecar' || !has(self.volumePool)")
    .message("volumePool needs mode: Sidecar (a Pool daemon has a volume of its own)").field_path(".volumePool"))]
#[serde(rename_all = "camelCase")]
pub struct DindDaemonSpec {
    /// How daemons run. `Pool` (default): a StatefulSet of `replicas` shared daemons, each with
    /// its own volume and address, reached over mutual TLS. `Sidecar`: nothing runs on its own;
    /// this DindDaemon is the template of a daemon that the operator's webhook puts into each
    /// pod labelled `dind.dev/sidecar: NAME` (in a namespace labelled `dind.dev/injection:
    /// enabled`): a native sidecar that starts before the pod's containers, answers on a unix
    /// socket inside the pod only, keeps /var/lib/docker in an emptyDir (sizeLimit
    /// `storage.size`, default 20Gi), and stops cleanly when the pod's containers end.
    /// Cannot be changed.
    #[serde(default)]
    pub mode: DaemonMode,

    /// Sidecar mode only: warm volumes handed from pod to pod. The operator keeps `size`
    /// PersistentVolumeClaims (`NAME-cache-i`, `storage.size` each, in
    /// `storage.storageClassName`); the webhook leases a free one to each pod for its
    /// /var/lib/docker (the same pipeline's key gets the same volume when it is free), and the
    /// lease ends when the pod has finished or is gone. Without it each pod starts with an
    /// empty emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_pool: Option<VolumePoolSpec>,

    /// Sidecar mode only: how the pod's containers reach their daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,

    /// Daemon image: any `docker:<version>-dind` image (or one with dockerd, containerd, runc
    /// and iptables on its PATH). Default: the operator's `--default-image`, which is
    /// `docker:28.5.2-dind` unless the platform team changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image holding the static `dind-init` binary, copied into the daemon pod by an init
    /// container. Default: the operator's `--default-init-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub init_image: Option<String>,

    /// Where `dind-init` is in the daemon image, for an image that carries it (one built
    /// `FROM docker:<version>-dind` with the binary of the init image added, e.g. at
    /// `/usr/local/bin/dind-init`): no init container copies it in, so each daemon pod starts
    /// one container sooner (about a second where the kubelet notices containers by relisting
    /// them every second, as most do). Absent (the default): copied in from `initImage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/') && !self.contains('..')")
        .message("dindInitPath must be an absolute path in the daemon image, such as /usr/local/bin/dind-init"))]
    pub dind_init_path: Option<String>,

    /// Number of daemons, each with its own volume and address (0-64). Clients must stick to
    /// one daemon: status.endpoints lists one DOCKER_HOST per replica.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,

    /// TCP port dockerd listens on (1-65535); 2375 only with TLS off. Sidecar mode: only
    /// with `sidecar.tcp`.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Mutual TLS between clients and the daemon. Sidecar mode: only with `sidecar.tcp`.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Where /var/lib/docker lives: a PersistentVolumeClaim per daemon (default) or an emptyDir.
    #[serde(default)]
    pub storage: StorageSpec,

    /// What the daemon pods (and so builds and `docker run`) may connect to. Unrestricted by
    /// default; `restricted: true` adds an egress rule to the daemon's NetworkPolicy.
    #[serde(default)]
    pub egress: EgressSpec,

    /// The image and build cache on the daemon's volume: how much build cache dockerd keeps,
    /// what is pruned once unused (and when), and when the disk counts as under pressure.
    #[serde(default)]
    pub cache: CacheSpec,

    /// dockerd's own settings.
    #[serde(default)]
    pub daemon: DaemonSpec,

    /// CPU and memory for the daemon container (builds run inside it). Default: requests of
    /// `cpu: 100m`, `memory: 256Mi` and no limits; given, it replaces the default whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// How the daemon container is allowed to run nested containers.
    #[serde(default)]
    pub security: SecuritySpec,

    /// Node labels the daemon pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the daemon pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Affinity of the daemon pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    DEFAULT_PORT
}
fn default_true() -> bool {
    true
}

/// Mutual TLS settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve the daemon over mutual TLS (default true). The operator makes one CA per
    /// DindDaemon, a server certificate and a client certificate (Secret NAME-client with
    /// ca.pem, cert.pem, key.pem for DOCKER_CERT_PATH). Off means anyone who reaches the
    /// port owns the daemon and, through it, the node.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
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

/// A sidecar volume pool's claims are made once, at `storage.size`: it may not change while
/// there is a pool (pool DindDaemons grow their claims instead: `controller::volumes`).
fn pool_size_rule() -> kube::core::Rule {
    let size = |s: &str| format!("(has({s}.storage.size) ? quantity({s}.storage.size) : quantity('{DEFAULT_STORAGE_SIZE}'))");
    kube::core::Rule::new(format!(
        "self.mode != 'Sidecar' || !has(self.volumePool) || {}.compareTo({}) == 0",
        size("self"),
        size("oldSelf")
    ))
    .message("storage.size cannot change on a DindDaemon with a volumePool: its volumes are made once; delete and re-create it")
    .field_path(".storage.size")
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

/// How a DindDaemon's daemons run (see `spec.mode`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DaemonMode {
    /// A StatefulSet of shared daemons (the default).
    #[default]
    Pool,
    /// One daemon inside each pod that asks for it (label `dind.dev/sidecar: NAME`).
    Sidecar,
}

/// Warm volumes for sidecar daemons (see `spec.volumePool`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePoolSpec {
    /// How many volumes to keep (1-64): at most this many pods have a warm cache at once.
    #[schemars(range(min = 1, max = 64))]
    pub size: i32,
    /// What a pod gets when every volume is leased: `EmptyDir` (default: it runs with an empty
    /// cache, and the DindDaemon gets a Warning event) or `Refuse` (the pod is refused, naming
    /// the pool; CI systems retry).
    #[serde(default)]
    pub when_exhausted: WhenExhausted,
}

/// The cache on a daemon's volume (see `spec.cache`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Build cache dockerd keeps: a quantity (`10Gi`) or a percentage of `storage.size`
    /// (`50%`, 1-99%; with `storage.ephemeral`, of the emptyDir's size limit). Default `50%`. Kept by dockerd's own garbage collector (BuildKit's, set
    /// as `builder.gc` in daemon.json, in bytes): it prunes the least recently used records
    /// after builds and now and then, and never one a running build uses. Given here, it sets
    /// `builder.gc.enabled` and `builder.gc.defaultKeepStorage` over whatever
    /// `daemon.config.builder` says (its other settings stay); not given, a hand-written
    /// `daemon.config.builder` stands as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[1-9][0-9]?%$') || (isQuantity(self) && quantity(self).isGreaterThan(quantity('0')))")
        .message("cache.buildCacheKeep must be a positive quantity such as 10Gi, or a percentage of storage.size from 1% to 99%"))]
    pub build_cache_keep: Option<String>,

    /// Percent of the volume used past which the DindDaemon is `Degraded` with reason
    /// `DiskPressure` (50-99, default 85): builds will soon fail with "no space left on device".
    #[serde(default = "default_high_water")]
    #[schemars(range(min = 50, max = 99))]
    pub high_water_percent: i32,

    /// Pruning of what builds and runs leave behind: images, stopped containers, networks and
    /// anonymous volumes no longer used. The operator prunes a daemon over its mTLS when the
    /// daemon is idle (no running container, no build in progress), or at once when its volume
    /// is past `highWaterPercent`; each prune that frees something is a `Pruned` event, and
    /// `status.endpoints[].lastPrune` shows the last one.
    #[serde(default)]
    pub prune: PruneSpec,
}

/// See `spec.cache.prune`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneSpec {
    /// Prune at all (default true). Off, nothing but dockerd's own build-cache collector
    /// (`buildCacheKeep`) frees space.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How long something must have been unused before it is pruned, as a duration (`24h`,
    /// `90m`, `30s`; default `24h`): stopped containers and networks created longer ago;
    /// anonymous volumes no container uses, created longer ago; images no container uses that
    /// the operator has not seen used (a container made from them, `docker run --rm` too)
    /// for that long. Named volumes are never pruned. The operator keeps images' last use in
    /// memory: after it restarts, every image counts as used at that moment.
    #[serde(default = "default_unused_for")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s')")
        .message("cache.prune.unusedFor must be a duration of at least 1s such as 24h, 90m or 30s (no days: 168h is a week)"))]
    pub unused_for: String,

    /// Images to keep however long unused: patterns matched against each tag
    /// (`repository:tag`, `*` matches any run of characters), e.g. `golang:*`,
    /// `registry.example.com/team/*`. An image with one matching tag is kept whole; untagged
    /// images match nothing. Containers labelled `dind.dev/keep` are never pruned either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.size() > 0 && p.size() <= 255)")
        .message("cache.prune.keepImages: each pattern must have 1 to 255 characters"))]
    pub keep_images: Vec<String>,
}

/// The default of `cache.prune.unusedFor`.
pub const DEFAULT_UNUSED_FOR: &str = "24h";

fn default_unused_for() -> String {
    DEFAULT_UNUSED_FOR.to_string()
}

impl Default for PruneSpec {
    fn default() -> Self {
        Self { enabled: true, unused_for: default_unused_for(), keep_images: Vec::new() }
    }
}

fn default_high_water() -> i32 {
    DEFAULT_HIGH_WATER_PERCENT
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { build_cache_keep: None, high_water_percent: default_high_water(), prune: PruneSpec::default() }
    }
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

/// A sidecar daemon's listener (see `spec.sidecar`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Also listen on TCP `spec.port` of the pod (default false: only the unix socket
    /// `/dind/sock/docker.sock`, and nothing on the pod network). For tools that expect
    /// Docker's `tcp://docker:2376` convention. With `tls.enabled` (the default) the daemon
    /// makes its own CA and certificates in the pod (valid for `localhost`, `127.0.0.1`, `::1`
    /// and `docker`; no key leaves the pod, no Secret is involved) and the pod's containers get
    /// `DOCKER_HOST=tcp://localhost:PORT`, `DOCKER_TLS_VERIFY=1` and
    /// `DOCKER_CERT_PATH=/dind/client-certs`. With `tls.enabled: false` they get
    /// `tcp://localhost:PORT` in plain text, and anything that reaches the pod's IP owns the daemon.
    #[serde(default)]
    pub tcp: bool,
}

/// See `volumePool.whenExhausted`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WhenExhausted {
    #[default]
    EmptyDir,
    Refuse,
}

/// One volume of a sidecar DindDaemon's pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolVolume {
    /// The PersistentVolumeClaim.
    pub name: String,
    /// The pod that holds it (`namespace/name`), or the lease's id until the pod exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_to: Option<String>,
    /// When it was leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_at: Option<String>,
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

/// Observed state of a DindDaemon.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DindDaemonStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Daemons that are ready: they answer `/_ping` and their Service routes to them.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Ready daemons over desired, e.g. `1/1` (the Ready column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// DOCKER_HOST for clients: the client Service with one replica; with more, the first
    /// daemon's own address (see endpoints; a load-balanced address would send a `docker run`
    /// to a daemon that never saw the `docker build` before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,

    /// One entry per daemon: its own DOCKER_HOST, readiness and storage driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<DaemonEndpoint>,

    /// Secret with the client certificate (ca.pem, cert.pem, key.pem) for DOCKER_CERT_PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,

    /// Storage driver the daemons report (the Driver column); `mixed` if they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,

    /// The fullest daemon's disk use, e.g. `37% of 20Gi` (the Disk column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,

    /// Sidecar mode with a volume pool: each volume, and who holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PoolVolume>,

    /// Ready, Progressing and Degraded, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One daemon of a DindDaemon.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonEndpoint {
    /// Pod name, e.g. NAME-0.
    pub name: String,
    /// This daemon's own DOCKER_HOST.
    pub docker_host: String,
    /// Whether it is ready: it answers `/_ping` and the client Service routes to it.
    pub ready: bool,
    /// Storage driver it runs, once it has been asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    /// What it keeps on its volume, as `docker system df` counts it (asked every minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<EndpointDisk>,
}

/// One daemon's disk usage (see `status.endpoints[].disk`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDisk {
    /// Size of its volume (`storage.size`); absent for an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_bytes: Option<i64>,
    /// Bytes of images, build cache, containers and volumes.
    pub used_bytes: i64,
    /// Percent of the volume used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i32>,
    /// Bytes of build cache (records not shared with images).
    pub build_cache_bytes: i64,
    /// Images it holds.
    pub images: i32,
    /// The last prune that freed something (see `spec.cache.prune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<LastPrune>,
}

/// One daemon's last prune.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPrune {
    /// When it ended (RFC 3339).
    pub time: String,
    /// Bytes freed, as `/system/df` counts them before and after (or as dockerd reports its
    /// build-cache prune, when that is more).
    pub freed_bytes: i64,
    /// Why it ran: `Idle` or `HighWater`.
    pub reason: String,
    /// What it removed, e.g. `2 images, 1 stopped container, build cache 120Mi`.
    pub removed: String,
}
