//! Every name the operator generates, in one place: owned objects, volumes, DNS names, labels,
//! and the field manager. A DindDaemon's name is the root of all of them, which is why the CRD
//! bounds it (see [`MAX_NAME_LEN`]).

use std::collections::BTreeMap;

use crate::model::kinds::OwnedKind;

/// The one field manager of every object the operator writes (and the events' reporter).
pub const FIELD_MANAGER: &str = "dind-operator";

/// Label every owned object carries; its value is the DindDaemon's name.
pub const DAEMON_LABEL: &str = "dind.dev/daemon";
/// Carried by every object the operator makes; its watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label a pod needs to reach a daemon through the NetworkPolicy; value: the DindDaemon's name.
pub const CLIENT_LABEL: &str = "dind.dev/client";
/// Pod-template annotation of StatefulSets made before issue 24: a digest of the server
/// certificate, which rolled every daemon at a renewal. Kept where it is (see
/// `objects::keep_cert_digest`), never written anew.
pub const TLS_DIGEST_ANNOTATION: &str = "dind.dev/server-cert-digest";
/// Where the operator itself runs: its pods may reach daemons to read their storage driver.
pub const OPERATOR_NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "dind-operator");
/// The label the apiserver puts on every namespace, its name: a NetworkPolicy peer in one
/// namespace selects on it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Label of the client Service, copied by the EndpointSlice controller onto its slices: the
/// operator watches only those (not the headless Service's) to know what the Service routes to.
pub const ROUTE_LABEL: (&str, &str) = ("dind.dev/route", "client");
/// The name of the volume claim template; the StatefulSet makes claims `docker-NAME-i` of it.
pub const CLAIM_TEMPLATE: &str = "docker";

/// Pod label that asks the injection webhook for Docker; value: the DindDaemon's name.
pub const INJECT_LABEL: &str = "dind.dev/inject";
/// With [`INJECT_LABEL`], on a pod: the namespace of the DindDaemon it names, when that is not
/// the pod's own (a grant, `spec.clients`). The `grant.dind.dev` webhook selects pods by it.
pub const INJECT_NAMESPACE_LABEL: &str = "dind.dev/inject-namespace";
/// The injected native sidecar that keeps a pod's own client certificate.
pub const CERTS_CONTAINER: &str = "dind-certs";
/// The projected volume holding that sidecar's ServiceAccount token (our audience only).
pub const TOKEN_VOLUME: &str = "dind-token";
/// The webhook for pods naming a DindDaemon of another namespace (served on [`INJECT_PATH`]).
pub const GRANT_WEBHOOK: &str = "grant.dind.dev";
/// Namespace label that opts a namespace into injection (value `enabled`).
pub const INJECTION_NAMESPACE_LABEL: (&str, &str) = ("dind.dev/injection", "enabled");
/// Pod label: the key that picks the daemon replica (same key, same replica, same cache).
pub const STICKY_KEY_LABEL: &str = "dind.dev/sticky-key";
/// Pod annotation: comma-separated names of containers the webhook leaves alone.
pub const OPT_OUT_ANNOTATION: &str = "dind.dev/opt-out-containers";
/// Pod annotation: how containers find the daemon, `env` (default) or `context`.
pub const DOCKER_ENV_ANNOTATION: &str = "dind.dev/docker-env";
/// Pod annotation the webhook writes: the DOCKER_HOST it chose (kept on re-invocation).
pub const DOCKER_HOST_ANNOTATION: &str = "dind.dev/docker-host";
/// The init container the webhook injects: writes the Docker context, waits for `/_ping`.
pub const WAIT_CONTAINER: &str = "dind-wait";
/// The injected volumes: the client Secret, and the writable Docker configuration.
pub const CERTS_VOLUME: &str = "dind-client-certs";
/// The daemon's registry CAs (`spec.daemon.registryCAs`), pool and sidecar alike.
pub const REGISTRY_CAS_VOLUME: &str = "dind-registry-cas";
pub const CONFIG_VOLUME: &str = "dind-docker-config";
/// An empty volume the injected containers (which run the DindDaemon's images) mount where
/// Kubernetes would put the pod's service-account token, so they never get it.
pub const NO_TOKEN_VOLUME: &str = "dind-no-token";
/// Where Kubernetes mounts a pod's service-account token (its ServiceAccount admission plugin
/// skips a container that already mounts something there).
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Pod label that asks for a daemon of its own (a `Sidecar`-mode DindDaemon's name).
pub const SIDECAR_LABEL: &str = "dind.dev/sidecar";
/// Pod annotation the webhook writes once a pod has its sidecar (value: the DindDaemon).
pub const SIDECAR_ANNOTATION: &str = "dind.dev/sidecar-injected";
/// The sidecar's init containers and volumes.
pub const SIDECAR_INSTALL: &str = "dind-install";
pub const SIDECAR_DAEMON: &str = "dind-daemon";
pub const SIDECAR_BIN_VOLUME: &str = "dind-bin";
pub const SIDECAR_SOCKET_VOLUME: &str = "dind-operator-sock";
pub const SIDECAR_DATA_VOLUME: &str = "dind-data";
/// The emptyDir where a TCP sidecar makes its certificates (`spec.sidecar.tcp`, TLS on).
pub const SIDECAR_CERTS_VOLUME: &str = "dind-operator-certs";
/// Label of a sidecar pool's claims (value: the DindDaemon).
pub const VOLUME_POOL_LABEL: &str = "dind.dev/volume-pool";
/// On a pool claim: the lease's id and when it was taken (RFC 3339).
pub const LEASE_ANNOTATION: &str = "dind.dev/lease";
pub const LEASED_AT_ANNOTATION: &str = "dind.dev/leased-at";
/// On a pod: the pool claim it leased, `CLAIM/ID` (or `none` when the pool was exhausted).
pub const POD_LEASE_ANNOTATION: &str = "dind.dev/volume-lease";
/// The sidecar webhook's name, and its path.
pub const SIDECAR_WEBHOOK: &str = "sidecar.dind.dev";
pub const SIDECAR_PATH: &str = "/sidecar";
/// The mutating webhook's name in its configuration (what the apiserver names in errors).
pub const INJECT_WEBHOOK: &str = "inject.dind.dev";
/// The path the webhook serves.
pub const INJECT_PATH: &str = "/inject";

/// The longest DindDaemon name. The StatefulSet's pods carry the label
/// `controller-revision-hash: NAME-<10 characters>`, and a label value has at most 63
/// characters: a longer name makes a StatefulSet whose pods can never be created. The other
/// generated names (`NAME-daemons`, a DNS label; `NAME-server-tls`) fit within this bound.
pub const MAX_NAME_LEN: usize = 52;

/// The names derived from one DindDaemon's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The DindDaemon's own name.
    pub daemon: String,
    pub statefulset: String,
    /// Headless: gives each daemon its own DNS name (`NAME-i.NAME-daemons.NS.svc`).
    pub headless_service: String,
    /// The client Service (`NAME.NS.svc`).
    pub client_service: String,
    pub server_secret: String,
    pub client_secret: String,
    pub ca_secret: String,
    pub network_policy: String,
    pub disruption_budget: String,
}

impl Names {
    pub fn of(name: &str) -> Self {
        Self {
            daemon: name.to_string(),
            statefulset: name.to_string(),
            headless_service: format!("{name}-daemons"),
            client_service: name.to_string(),
            server_secret: format!("{name}-server-tls"),
            client_secret: format!("{name}-client"),
            ca_secret: format!("{name}-ca"),
            network_policy: name.to_string(),
            disruption_budget: name.to_string(),
        }
    }

    /// Every object a pool-mode DindDaemon owns, as `(kind, name)`: the certificate Secrets
    /// only with TLS on, the PodDisruptionBudget only with `budget`. What the ownership check
    /// looks at before an apply.
    pub fn owned(&self, tls: bool, budget: bool) -> Vec<(OwnedKind, &str)> {
        let mut out = Vec::new();
        for kind in OwnedKind::ALL {
            match kind {
                OwnedKind::StatefulSet => out.push((kind, self.statefulset.as_str())),
                OwnedKind::Service => out.extend([(kind, self.headless_service.as_str()), (kind, self.client_service.as_str())]),
                OwnedKind::NetworkPolicy => out.push((kind, self.network_policy.as_str())),
                OwnedKind::PodDisruptionBudget if budget => out.push((kind, self.disruption_budget.as_str())),
                OwnedKind::Secret if tls => {
                    out.extend([(kind, self.ca_secret.as_str()), (kind, self.server_secret.as_str()), (kind, self.client_secret.as_str())]);
                }
                OwnedKind::PodDisruptionBudget | OwnedKind::Secret => {}
            }
        }
        out
    }

    /// The pod of daemon `ordinal` (the StatefulSet's naming).
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.statefulset)
    }

    /// The volume claim of daemon `ordinal`: `docker-NAME-i`.
    pub fn claim(&self, ordinal: i32) -> String {
        format!("{CLAIM_TEMPLATE}-{}", self.pod(ordinal))
    }

    /// Claim `i` of a sidecar DindDaemon's volume pool.
    pub fn pool_claim(&self, i: i32) -> String {
        format!("{}-cache-{i}", self.daemon)
    }

    /// The DNS name of daemon `ordinal` through the headless Service.
    pub fn replica_host(&self, ordinal: i32, namespace: &str) -> String {
        format!("{}.{}.{namespace}.svc", self.pod(ordinal), self.headless_service)
    }

    /// The DNS name of a daemon pod through the headless Service, by pod name.
    pub fn pod_host(&self, pod: &str, namespace: &str) -> String {
        format!("{pod}.{}.{namespace}.svc", self.headless_service)
    }

    /// The DNS name of the client Service.
    pub fn service_host(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc", self.client_service)
    }

    /// The labels of every owned object and daemon pod.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "dind".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.daemon.clone()),
            (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
            (DAEMON_LABEL.to_string(), self.daemon.clone()),
        ])
    }

    /// The pod selector: stable across spec changes (a StatefulSet's selector is immutable).
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(DAEMON_LABEL.to_string(), self.daemon.clone()), ("app.kubernetes.io/name".to_string(), "dind".to_string())])
    }
}

/// `tcp://HOST:PORT`, a DOCKER_HOST.
pub fn docker_host(host: &str, port: i32) -> String {
    format!("tcp://{host}:{port}")
}

/// The DindDaemon a volume claim belongs to, and the daemon's ordinal: the inverse of
/// [`Names::claim`]. `docker-ci-big-0` is daemon 0 of `ci-big`, never of `ci`.
pub fn parse_claim(claim: &str) -> Option<(&str, u32)> {
    let rest = claim.strip_prefix(CLAIM_TEMPLATE)?.strip_prefix('-')?;
    let (name, ordinal) = rest.rsplit_once('-')?;
    if name.is_empty() || ordinal.is_empty() || !ordinal.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((name, ordinal.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_never_match_a_longer_name() {
        let ci = Names::of("ci");
        assert_eq!(ci.claim(0), "docker-ci-0");
        assert_eq!(parse_claim(&ci.claim(12)), Some(("ci", 12)));
        assert_eq!(parse_claim("docker-ci-big-0"), Some(("ci-big", 0)));
        for bad in ["docker-ci", "docker--0", "docker-ci-x", "data-ci-0", "dockerci-0", "docker-ci-"] {
            assert_eq!(parse_claim(bad), None, "{bad}");
        }
    }

    #[test]
    fn dns_names_are_built_once() {
        let n = Names::of("ci");
        assert_eq!(n.replica_host(1, "b"), "ci-1.ci-daemons.b.svc");
        assert_eq!(n.pod_host("ci-1", "b"), n.replica_host(1, "b"));
        assert_eq!(docker_host(&n.service_host("b"), 2376), "tcp://ci.b.svc:2376");
    }

    #[test]
    fn the_longest_name_fits_every_generated_name() {
        let name = "a".repeat(MAX_NAME_LEN);
        let n = Names::of(&name);
        // controller-revision-hash label value: NAME-<10>.
        assert!(name.len() + 1 + 10 <= 63);
        assert!(n.headless_service.len() <= 63, "a Service name is a DNS label");
        assert!(n.pod(63).len() <= 63, "a pod's hostname is a DNS label");
        assert!(n.server_secret.len() <= 253);
    }
}
