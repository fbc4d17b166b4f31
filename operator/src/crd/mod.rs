//! The `DindDaemon` API (`dind.dev/v1alpha1`). Doc comments here become `kubectl explain`.
//!
//! Validation lives in the schema (OpenAPI bounds, enums, CEL `x-kubernetes-validations`), so
//! the apiserver refuses a bad spec at `kubectl apply` with a message naming the field, and the
//! reconciler never sees it.

mod cache;
mod daemon;
mod sidecar;
mod status;

pub use cache::*;
pub use daemon::*;
pub use sidecar::*;
pub use status::*;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
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
    let max = crate::model::names::MAX_NAME_LEN;
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
    // `kubectl scale dind/NAME --replicas=N`, and a HorizontalPodAutoscaler can drive replicas.
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
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
#[x_kube(validation = kube::core::Rule::new("!has(self.clients) || (self.mode == 'Pool' && self.tls.enabled)")
    .message("clients (pods of other namespaces) needs mode: Pool and tls.enabled: each granted pod gets a client certificate of its own").field_path(".clients"))]
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
    /// and iptables on its PATH). Default: the operator's `--default-image`; with the chart,
    /// the project's daemon image `dind-daemon` (`docker:28.5.2-dind` with dind-init added, so
    /// no init container copies it in). An image set here gets dind-init copied in by an init
    /// container unless `dindInitPath` says where it carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image holding the static `dind-init` binary, copied into the daemon pod by an init
    /// container when the daemon image does not carry it (setting it asks for the copy even
    /// with the default image), or mounted as a Kubernetes image volume where the platform
    /// team turned that on (chart value `daemon.dindInitImageVolume`). Default: the operator's
    /// `--default-init-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub init_image: Option<String>,

    /// Where `dind-init` is in the daemon image, for an image that carries it (one built
    /// `FROM docker:<version>-dind` with the binary of the init image added, e.g. at
    /// `/usr/local/bin/dind-init`): no init container copies it in, so each daemon pod starts
    /// one container sooner (about a second where the kubelet notices containers by relisting
    /// them every second, as most do). Absent: the default image's own (the chart's daemon
    /// image carries it) when `image` is unset, else copied in from `initImage`.
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

    /// Pool mode: pods of other namespaces these daemons serve (a grant; absent: only pods
    /// of this namespace). For a platform namespace that admits privileged pods serving
    /// tenants' namespaces that stay at Pod Security `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<ClientsSpec>,

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
