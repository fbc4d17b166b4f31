//! The contract between the operator and `dind-init`, written once and used by both crates.
//!
//! The operator builds a daemon pod and `dind-init`'s arguments; `dind-init` turns them into
//! dockerd's command line and daemon.json. Both must agree on where things are mounted, what
//! the TLS files are called, which ports mean what, and — the part that drifted before this
//! crate existed — which dockerd directives `dind-init` sets itself, so that the operator's CRD
//! refuses exactly what `dind-init` would refuse (a 422 at `kubectl apply` instead of a crash
//! loop). No dependencies: `dind-init` stays a small static binary.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod args;

/// dockerd's TCP port with mutual TLS (Docker's convention).
pub const TLS_PORT: u16 = 2376;
/// Docker's plaintext port: only with TLS off.
pub const PLAINTEXT_PORT: u16 = 2375;

/// Where the install init container copies `dind-init` and where the daemon container runs it.
pub const BIN_DIR: &str = "/dind/bin";
/// Where the dind-init image (`init/Dockerfile`, FROM scratch) has the binary: what an exec
/// probe of a container of that image runs.
pub const INIT_IMAGE_BINARY: &str = "/dind-init";
/// The binary's name inside [`BIN_DIR`].
pub const BINARY: &str = "dind-init";
/// Where the server TLS Secret is mounted in the daemon container (`--tls-dir`'s default).
pub const SERVER_TLS_DIR: &str = "/certs/server";
/// Where dockerd looks for a registry's CA: `REGISTRY_CERTS_DIR/HOST[:PORT]/ca.crt`.
pub const REGISTRY_CERTS_DIR: &str = "/etc/docker/certs.d";
/// dockerd's data root: the daemon's volume is mounted here.
pub const DATA_ROOT: &str = "/var/lib/docker";
/// dockerd's exec root.
pub const EXEC_ROOT: &str = "/var/run/docker";
/// dockerd's unix socket (what `dind-init probe` asks).
pub const SOCKET: &str = "/var/run/docker.sock";
/// Seconds dockerd gives its containers to stop (`--shutdown-timeout`'s default). A pod's
/// grace period must exceed it, or the kubelet kills dockerd mid-write.
pub const SHUTDOWN_TIMEOUT: u32 = 15;

/// File names in the server TLS Secret, mounted at [`SERVER_TLS_DIR`] (a `kubernetes.io/tls`
/// Secret's names).
pub mod server_tls {
    /// The CA that client certificates must chain to.
    pub const CA: &str = "ca.crt";
    pub const CERT: &str = "tls.crt";
    pub const KEY: &str = "tls.key";
}

/// File names in the client Secret: the names the Docker CLI expects in `DOCKER_CERT_PATH`.
pub mod client_tls {
    pub const CA: &str = "ca.pem";
    pub const CERT: &str = "cert.pem";
    pub const KEY: &str = "key.pem";
}

/// `dind-init --tls-generate=DIR` (a sidecar listening on TCP): the certificates it makes in
/// its pod. DIR/[`generated_tls::SERVER`] holds the server's files ([`server_tls`] names, the
/// key readable by root only); DIR/[`generated_tls::CLIENT`] the client's ([`client_tls`]
/// names), mounted in the pod's containers as their `DOCKER_CERT_PATH`.
pub mod generated_tls {
    pub const SERVER: &str = "server";
    pub const CLIENT: &str = "client";
    /// Where the sidecar keeps them (an emptyDir of the pod).
    pub const DIR: &str = "/dind/certs";
    /// The names the server certificate is valid for: the pod's containers reach it on
    /// localhost (`DOCKER_HOST=tcp://localhost:PORT`), or as `docker` (GitLab's convention,
    /// with a host alias).
    pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1", "docker"];
}

/// What the injection webhook puts into a client pod and what `dind-init client-setup` (the
/// injected init container) writes there. The operator names the paths in the pod; dind-init
/// writes the files; both read them from here.
pub mod client_pod {
    /// The client Secret (files [`super::client_tls`]) is mounted here, read-only:
    /// `DOCKER_CERT_PATH`.
    pub const CERTS_DIR: &str = "/dind/client-certs";
    /// A writable emptyDir holding the Docker CLI configuration: `DOCKER_CONFIG`. buildx keeps
    /// its builders under it, so it must be writable by the pod's containers.
    pub const CONFIG_DIR: &str = "/dind/docker-config";
    /// Where the injected init container mounts the Docker configurations the job's containers
    /// bring in volumes (read-only, one directory each: `JOB_CONFIG_DIR/<n>`); `client-setup
    /// --merge=FILE` merges each into [`CONFIG_DIR`]'s `config.json`.
    pub const JOB_CONFIG_DIR: &str = "/dind/job-docker-config";
    /// The name of the Docker context `client-setup` creates and makes current.
    pub const CONTEXT: &str = "dind";
    /// `client-setup`'s subcommand name.
    pub const SUBCOMMAND: &str = "client-setup";
    /// How long the injected init container waits for the daemon by default, in seconds.
    pub const WAIT_SECONDS: u32 = 120;
    /// Sidecar mode: the emptyDir shared by the daemon and the pod's containers, holding
    /// dockerd's socket (`DOCKER_HOST=unix://SOCKET`).
    pub const SOCKET_DIR: &str = "/dind/sock";
    pub const SOCKET: &str = "/dind/sock/docker.sock";
    /// The socket's group (dockerd `--group`), which the webhook adds to the pod's
    /// `securityContext.supplementalGroups`: a container of any uid in the pod may use the
    /// daemon, and nothing outside the pod sees the socket (it lives in the pod's emptyDir).
    pub const SOCKET_GID: u32 = 2375;
}

/// Per-pod client certificates (a DindDaemon's `spec.clients` grants, or `tls.clientCertificates:
/// PerPod`): the injected native sidecar `dind-init client-certs` makes a key pair in the pod,
/// sends a certificate signing request to the operator authenticated by the pod's projected
/// ServiceAccount token (audience [`per_pod::AUDIENCE`]), writes what it gets into
/// [`client_pod::CERTS_DIR`] (an emptyDir of the pod, in memory) and renews it while the pod
/// lives. The operator checks the token with a TokenReview, the pod and its grant, and signs
/// with the daemon's CA.
pub mod per_pod {
    /// `client-certs`' subcommand name.
    pub const SUBCOMMAND: &str = "client-certs";
    /// The audience of the pod's projected token: only the operator accepts it (the apiserver
    /// and every other service refuse a token of another audience).
    pub const AUDIENCE: &str = "dind.dev/client-certificates";
    /// Where the projected token is mounted in the sidecar (file [`TOKEN_FILE`]).
    pub const TOKEN_DIR: &str = "/var/run/secrets/dind.dev/token";
    pub const TOKEN_FILE: &str = "token";
    /// The operator's route (on the webhook's HTTPS port) that signs requests.
    pub const PATH: &str = "/certificates";
    /// The request's JSON fields: the DindDaemon (`NAMESPACE/NAME`) and the PEM CSR. The
    /// token goes in `Authorization: Bearer`.
    pub const REQ_DAEMON: &str = "daemon";
    pub const REQ_CSR: &str = "csr";
    /// The answer's JSON fields: the certificate (PEM), the daemon's CA (PEM), and when the
    /// certificate expires (Unix seconds).
    pub const RESP_CERTIFICATE: &str = "certificate";
    pub const RESP_CA: &str = "ca";
    pub const RESP_NOT_AFTER: &str = "notAfter";
    /// The URI SAN naming the pod a certificate was minted for:
    /// `urn:dind.dev:pod:NAMESPACE:NAME:UID`.
    pub const POD_URI_PREFIX: &str = "urn:dind.dev:pod:";
    /// The sidecar renews once this share of the certificate's life has passed (in percent).
    pub const RENEW_AT_PERCENT: u32 = 60;
}

/// Storage drivers `dind-init` knows how to place; anything else is refused by name.
pub const STORAGE_DRIVERS: &[&str] = &["overlay2", "fuse-overlayfs", "btrfs", "zfs", "vfs"];

/// How `dind-init` hands a directive to dockerd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// On dockerd's command line, always.
    Flag,
    /// In the daemon.json `dind-init` writes (detected or from its own setting).
    DaemonJson,
}

/// A dockerd directive that `dind-init` sets itself. dockerd refuses to start when a directive
/// is given both as a flag and in daemon.json, and two values for one flag fight: so the user
/// may set none of these through `extraArgs`/`DOCKER_DAEMON_ARGS` or `daemon.config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The daemon.json key (None: dockerd has no key for it).
    pub key: Option<&'static str>,
    /// Long flag names without the leading `--`.
    pub flags: &'static [&'static str],
    /// One-letter flag names (`-H`).
    pub short: Option<char>,
    pub via: Via,
    /// What to use instead in a DindDaemon, for the refusal message.
    pub instead: &'static str,
    /// dind-init's own setting for it, if it has one (`mtu` for `--mtu`).
    pub setting: Option<&'static str>,
}

const fn flag(key: Option<&'static str>, flags: &'static [&'static str], short: Option<char>, instead: &'static str) -> Directive {
    Directive { key, flags, short, via: Via::Flag, instead, setting: None }
}
const fn json(
    key: &'static str,
    flags: &'static [&'static str],
    short: Option<char>,
    instead: &'static str,
    setting: &'static str,
) -> Directive {
    Directive { key: Some(key), flags, short, via: Via::DaemonJson, instead, setting: Some(setting) }
}

/// Every directive `dind-init` owns. `dind-init`'s `dockerd_args` and `daemon_json` set these
/// and nothing else; a unit test in `dind-init` checks that.
pub const DIRECTIVES: &[Directive] = &[
    flag(None, &["config-file"], None, "daemon.config (dind-init writes the file)"),
    flag(Some("hosts"), &["host"], Some('H'), "spec.port (dind-init listens on the socket and the port)"),
    flag(Some("data-root"), &["data-root", "graph"], Some('g'), "spec.storage (the volume is the data root)"),
    flag(Some("exec-root"), &["exec-root"], None, "nothing: dind-init places it"),
    flag(Some("pidfile"), &["pidfile"], Some('p'), "nothing: dind-init places it"),
    flag(Some("shutdown-timeout"), &["shutdown-timeout"], None, "nothing: the operator sets it below the pod's grace period"),
    flag(
        Some("group"),
        &["group"],
        Some('G'),
        "nothing: dind-init sets the socket's group (in Sidecar mode, one the pod's containers have)",
    ),
    flag(Some("tls"), &["tls"], None, "spec.tls.enabled"),
    flag(Some("tlsverify"), &["tlsverify"], None, "spec.tls.enabled"),
    flag(Some("tlscacert"), &["tlscacert"], None, "spec.tls (the operator issues the certificates)"),
    flag(Some("tlscert"), &["tlscert"], None, "spec.tls (the operator issues the certificates)"),
    flag(Some("tlskey"), &["tlskey"], None, "spec.tls (the operator issues the certificates)"),
    json("mtu", &["mtu"], None, "spec.daemon.mtu", "mtu"),
    json("storage-driver", &["storage-driver"], Some('s'), "spec.daemon.storageDriver", "storage-driver"),
    json("registry-mirrors", &["registry-mirror"], None, "spec.daemon.registryMirrors", "registry-mirror"),
    json("insecure-registries", &["insecure-registry"], None, "spec.daemon.insecureRegistries", "insecure-registry"),
];

/// dockerd's one-letter boolean flags: they may be grouped before another letter (`-DH x`
/// is `-D -H x`), so an owned letter hides behind them.
pub const BOOLEAN_SHORT_FLAGS: &[char] = &['D', 'v'];

/// The directive a dockerd argument sets, if `dind-init` owns it: `--host=x`, `--host`,
/// `-H`, `-Hx`, grouped `-DH`. Arguments that are not flags (values) own nothing.
pub fn owned_flag(arg: &str) -> Option<&'static Directive> {
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split_once('=').map_or(long, |(n, _)| n);
        return DIRECTIVES.iter().find(|d| d.flags.contains(&name));
    }
    let letters = arg.strip_prefix('-')?;
    // pflag reads a group left to right: booleans go on, the first other letter takes the
    // rest of the group (or the next argument) as its value.
    for c in letters.chars() {
        if let Some(d) = DIRECTIVES.iter().find(|d| d.short == Some(c)) {
            return Some(d);
        }
        if !BOOLEAN_SHORT_FLAGS.contains(&c) {
            return None;
        }
    }
    None
}

/// The directive a daemon.json key sets, if `dind-init` owns it.
pub fn owned_key(key: &str) -> Option<&'static Directive> {
    DIRECTIVES.iter().find(|d| d.key == Some(key))
}

/// Every daemon.json key `dind-init` owns.
pub fn owned_keys() -> impl Iterator<Item = &'static str> {
    DIRECTIVES.iter().filter_map(|d| d.key)
}

/// An RE2 (CEL `matches`) pattern that matches exactly the arguments [`owned_flag`] owns; the
/// operator's CRD refuses `extraArgs` that match it. Equivalence is tested below by running
/// both over the same arguments.
pub fn owned_flag_pattern() -> String {
    let long: Vec<&str> = DIRECTIVES.iter().flat_map(|d| d.flags.iter().copied()).collect();
    let short: String = DIRECTIVES.iter().filter_map(|d| d.short).collect();
    let booleans: String = BOOLEAN_SHORT_FLAGS.iter().collect();
    format!("^(--({})(=.*)?|-[{booleans}]*[{short}].*)$", long.join("|"))
}

/// Why an owned directive may not be set by the user, naming what to use instead.
pub fn refusal(d: &Directive, what: &str) -> String {
    match d.setting {
        Some(setting) => format!("{what} is set by dind-init; use {} (dind-init --{setting})", d.instead),
        None => format!("{what} is set by dind-init; use {}", d.instead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_short_and_grouped_flags_are_owned() {
        for arg in
            ["--host=tcp://0.0.0.0:2377", "--host", "-H", "-Htcp://x", "-DH", "-DvH", "-p", "-g", "-s", "-soverlay2", "--tlsverify=false"]
        {
            assert!(owned_flag(arg).is_some(), "{arg} should be owned");
        }
        for arg in [
            "--shutdown-timeout=30",
            "--exec-root=/x",
            "--mtu=1400",
            "--storage-driver=vfs",
            "--registry-mirror=https://m",
            "-G",
            "-Gdocker",
            "--group=0",
        ] {
            assert!(owned_flag(arg).is_some(), "{arg} should be owned");
        }
        // A boolean group without an owned letter, a value-taking letter whose value contains
        // an owned letter, values, and flags we leave to the user.
        for arg in ["-D", "--debug", "-lH", "--log-level=debug", "tcp://0.0.0.0:2377", "-", "--hosts-file", "--tlsfoo", "--experimental"] {
            assert!(owned_flag(arg).is_none(), "{arg} should not be owned");
        }
    }

    #[test]
    fn keys_cover_every_directive_with_a_key() {
        for k in ["hosts", "group", "tls", "tlsverify", "data-root", "exec-root", "pidfile", "shutdown-timeout", "mtu", "storage-driver"] {
            assert!(owned_key(k).is_some(), "{k}");
        }
        assert!(owned_key("log-level").is_none());
        assert!(owned_key("features").is_none());
    }

    #[test]
    fn the_pattern_is_anchored_and_names_every_flag() {
        let p = owned_flag_pattern();
        assert!(p.starts_with('^') && p.ends_with('$'));
        for d in DIRECTIVES {
            for f in d.flags {
                assert!(p.contains(f), "{f} missing from {p}");
            }
        }
    }

    #[test]
    fn the_cel_pattern_agrees_with_owned_flag() {
        let re = regex::Regex::new(&owned_flag_pattern()).unwrap();
        let mut args: Vec<String> =
            ["-", "--", "-D", "-DH", "-lH", "-vDs", "-Gdocker", "--hosts-file", "--tlsfoo", "--debug", "x", "--host"]
                .iter()
                .map(|s| (*s).to_string())
                .collect();
        for d in DIRECTIVES {
            for f in d.flags {
                args.extend([format!("--{f}"), format!("--{f}=1"), format!("--{f}x"), format!("-{f}")]);
            }
            if let Some(c) = d.short {
                args.extend([format!("-{c}"), format!("-D{c}v"), format!("-x{c}"), format!("{c}")]);
            }
        }
        for arg in args {
            assert_eq!(re.is_match(&arg), owned_flag(&arg).is_some(), "pattern and owned_flag disagree on {arg:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_replacement() {
        let d = owned_flag("--mtu=1").unwrap();
        assert_eq!(refusal(d, "--mtu"), "--mtu is set by dind-init; use spec.daemon.mtu (dind-init --mtu)");
    }
}
