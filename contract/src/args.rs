//! dind-init's command line, written once: the operator renders these structs into a pod's
//! `command`/`args`, dind-init parses them back (its settings table names the run flags by
//! [`flag`]; `client-setup` parses with [`ClientSetup::parse`]). A renamed flag is then a compile
//! error on both sides, not a crash loop found on a node. Round-trip tests: every value the
//! operator can render parses back to itself (here for `client-setup`; in dind-init's
//! `config` tests for `run`, `wait`, `probe` and `install`, through dind-init's own parser).

use std::fmt::Write as _;

/// Flag names (without the leading `--`).
pub mod flag {
    pub const PORT: &str = "port";
    pub const TCP: &str = "tcp";
    pub const TLS: &str = "tls";
    pub const TLS_DIR: &str = "tls-dir";
    pub const TLS_GENERATE: &str = "tls-generate";
    pub const SOCKET: &str = "socket";
    pub const SOCKET_GROUP: &str = "socket-group";
    pub const MTU: &str = "mtu";
    pub const STORAGE_DRIVER: &str = "storage-driver";
    pub const REGISTRY_MIRROR: &str = "registry-mirror";
    pub const INSECURE_REGISTRY: &str = "insecure-registry";
    pub const DAEMON_CONFIG: &str = "daemon-config";
    pub const SHUTDOWN_TIMEOUT: &str = "shutdown-timeout";
    pub const TIMEOUT_MS: &str = "timeout-ms";
    /// `client-setup`'s.
    pub const HOST: &str = "host";
    pub const CONFIG: &str = "config";
    pub const CONTEXT: &str = "context";
    pub const CERTS: &str = "certs";
    pub const TIMEOUT: &str = "timeout";
    pub const MERGE: &str = "merge";
    /// `client-certs`'.
    pub const OPERATOR: &str = "operator";
    pub const OPERATOR_CA: &str = "operator-ca";
    pub const DAEMON: &str = "daemon";
    pub const TOKEN: &str = "token";
    pub const DIR: &str = "dir";
    pub const CHECK: &str = "check";
}

/// Subcommand names (`run` is the default and is not written).
pub mod sub {
    pub const WAIT: &str = "wait";
    pub const PROBE: &str = "probe";
    pub const INSTALL: &str = "install";
    pub const CLIENT_SETUP: &str = super::super::client_pod::SUBCOMMAND;
    pub const CLIENT_CERTS: &str = super::super::per_pod::SUBCOMMAND;
}

fn push(out: &mut Vec<String>, name: &str, value: impl std::fmt::Display) {
    let mut s = String::with_capacity(name.len() + 8);
    let _ = write!(s, "--{name}={value}");
    out.push(s);
}

/// `dind-init [run]`: ready the container and run dockerd. `None`/empty: dind-init's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub port: Option<u16>,
    /// Listen on TCP (false: only the unix socket).
    pub tcp: Option<bool>,
    /// Mutual TLS on the TCP port.
    pub tls: Option<bool>,
    pub tls_dir: Option<String>,
    pub tls_generate: Option<String>,
    pub socket: Option<String>,
    /// The unix socket's group (dockerd `--group`): a sidecar's, which the pod's containers
    /// get as a supplemental group.
    pub socket_group: Option<u32>,
    pub mtu: Option<u32>,
    pub storage_driver: Option<String>,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    /// daemon.json passthrough, a JSON object.
    pub daemon_config: Option<String>,
    pub shutdown_timeout: Option<u32>,
    /// dockerd's own flags, after `--`.
    pub dockerd_args: Vec<String>,
}

impl Run {
    pub fn render(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = self.port {
            push(&mut out, flag::PORT, v);
        }
        if let Some(v) = self.shutdown_timeout {
            push(&mut out, flag::SHUTDOWN_TIMEOUT, v);
        }
        if let Some(v) = self.tcp {
            push(&mut out, flag::TCP, v);
        }
        if let Some(v) = &self.socket {
            push(&mut out, flag::SOCKET, v);
        }
        if let Some(v) = self.socket_group {
            push(&mut out, flag::SOCKET_GROUP, v);
        }
        if let Some(v) = self.tls {
            push(&mut out, flag::TLS, v);
        }
        if let Some(v) = &self.tls_dir {
            push(&mut out, flag::TLS_DIR, v);
        }
        if let Some(v) = &self.tls_generate {
            push(&mut out, flag::TLS_GENERATE, v);
        }
        if let Some(v) = self.mtu {
            push(&mut out, flag::MTU, v);
        }
        if let Some(v) = &self.storage_driver {
            push(&mut out, flag::STORAGE_DRIVER, v);
        }
        for v in &self.registry_mirrors {
            push(&mut out, flag::REGISTRY_MIRROR, v);
        }
        for v in &self.insecure_registries {
            push(&mut out, flag::INSECURE_REGISTRY, v);
        }
        if let Some(v) = &self.daemon_config {
            push(&mut out, flag::DAEMON_CONFIG, v);
        }
        if !self.dockerd_args.is_empty() {
            out.push("--".into());
            out.extend(self.dockerd_args.iter().cloned());
        }
        out
    }
}

/// `dind-init wait` (the postStart gate) or `dind-init probe` (the liveness probe): ask
/// dockerd's `/_ping` on its socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// [`sub::WAIT`]: until it answers or the timeout; [`sub::PROBE`]: once.
    pub wait: bool,
    pub timeout_ms: u64,
}

impl Check {
    /// The longest `--timeout-ms` dind-init accepts: `wait` may hold a first start on a slow
    /// volume; `probe` answers a liveness probe.
    pub const fn max_ms(wait: bool) -> u64 {
        if wait { 3_600_000 } else { 60_000 }
    }

    /// The arguments after the binary.
    pub fn render(&self) -> Vec<String> {
        let mut out = vec![if self.wait { sub::WAIT } else { sub::PROBE }.to_string()];
        push(&mut out, flag::TIMEOUT_MS, self.timeout_ms);
        out
    }
}

/// `dind-init install DIR`: copy itself into DIR (the install init container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub dir: String,
}

impl Install {
    pub fn render(&self) -> Vec<String> {
        vec![sub::INSTALL.to_string(), self.dir.clone()]
    }
}

/// `dind-init client-setup`: the injected init container of a build pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSetup {
    /// `tcp://HOST:PORT` of the daemon.
    pub host: String,
    /// The Docker configuration directory to write (`DOCKER_CONFIG`).
    pub config: String,
    /// The context's name.
    pub context: String,
    /// The client certificates; None: TLS is off.
    pub certs: Option<String>,
    pub timeout_secs: u32,
    /// The job's own `config.json` files, merged in order.
    pub merge: Vec<String>,
}

impl ClientSetup {
    /// The arguments after the binary (the subcommand first).
    pub fn render(&self) -> Vec<String> {
        let mut out = vec![sub::CLIENT_SETUP.to_string()];
        push(&mut out, flag::HOST, &self.host);
        push(&mut out, flag::CONFIG, &self.config);
        push(&mut out, flag::CONTEXT, &self.context);
        push(&mut out, flag::TIMEOUT, format_args!("{}s", self.timeout_secs));
        if let Some(c) = &self.certs {
            push(&mut out, flag::CERTS, c);
        }
        for m in &self.merge {
            push(&mut out, flag::MERGE, m);
        }
        out
    }

    /// Parses the arguments after the subcommand (`--name=value` or `--name value`), naming any
    /// bad one.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut host = None;
        let mut config = None;
        let mut context = super::client_pod::CONTEXT.to_string();
        let mut certs = None;
        let mut merge = Vec::new();
        let mut timeout_secs = super::client_pod::WAIT_SECONDS;
        for (name, value) in flags(args, &[])? {
            match name {
                flag::HOST => {
                    let rest = value.strip_prefix("tcp://").ok_or_else(|| format!("--host: {value:?} must be tcp://HOST:PORT"))?;
                    let (h, p) = rest.rsplit_once(':').ok_or_else(|| format!("--host: {value:?} has no port"))?;
                    if h.is_empty() || p.parse::<u16>().is_err() {
                        return Err(format!("--host: {value:?} must be tcp://HOST:PORT"));
                    }
                    host = Some(value);
                }
                flag::CONFIG => config = Some(value),
                flag::CONTEXT if !value.is_empty() && value != "default" => context = value,
                flag::CONTEXT => return Err(format!("--context: {value:?} cannot name a context")),
                flag::CERTS => certs = Some(value),
                flag::MERGE if value.starts_with('/') => merge.push(value),
                flag::MERGE => return Err(format!("--merge: {value:?} must be an absolute path")),
                flag::TIMEOUT => {
                    let secs = value.strip_suffix('s').unwrap_or(&value);
                    let secs: u32 = secs.parse().map_err(|_| format!("--timeout: {value:?} must be seconds, such as 120s"))?;
                    if !(1..=3600).contains(&secs) {
                        return Err(format!("--timeout: {value:?} must be 1s to 3600s"));
                    }
                    timeout_secs = secs;
                }
                other => return Err(format!("--{other}: unknown flag of client-setup")),
            }
        }
        Ok(Self {
            host: host.ok_or("--host is required")?,
            config: config.ok_or("--config is required")?,
            context,
            certs,
            timeout_secs,
            merge,
        })
    }
}

/// `dind-init client-certs`: the injected native sidecar that gets (and renews) the pod's own
/// client certificate from the operator (see [`super::per_pod`]). With `check`, it only says
/// whether the certificate is there (a diagnostic: `kubectl exec POD -c dind-certs -- /dind-init
/// client-certs --check --dir=/dind/client-certs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCerts {
    /// `https://HOST:PORT` of the operator (its webhook Service).
    pub operator: String,
    /// The CAs of the operator's serving certificate, PEM, base64 (one argument).
    pub operator_ca: String,
    /// The DindDaemon: `NAMESPACE/NAME`.
    pub daemon: String,
    /// The projected token's file.
    pub token: String,
    /// Where `ca.pem`, `cert.pem` and `key.pem` are written.
    pub dir: String,
}

impl ClientCerts {
    /// The arguments after the binary (the subcommand first).
    pub fn render(&self) -> Vec<String> {
        let mut out = vec![sub::CLIENT_CERTS.to_string()];
        push(&mut out, flag::OPERATOR, &self.operator);
        push(&mut out, flag::OPERATOR_CA, &self.operator_ca);
        push(&mut out, flag::DAEMON, &self.daemon);
        push(&mut out, flag::TOKEN, &self.token);
        push(&mut out, flag::DIR, &self.dir);
        out
    }

    /// The startup probe's command after the binary: is the certificate in `dir`?
    pub fn check(dir: &str) -> Vec<String> {
        let mut out = vec![sub::CLIENT_CERTS.to_string(), format!("--{}", flag::CHECK)];
        push(&mut out, flag::DIR, dir);
        out
    }

    /// Parses the arguments after the subcommand (`--name=value` or `--name value`), naming any
    /// bad one. `Ok(Err(dir))`: `--check` of `dir`.
    pub fn parse(args: &[String]) -> Result<Result<Self, String>, String> {
        let (mut operator, mut operator_ca, mut daemon, mut token, mut dir) = (None, None, None, None, None);
        let mut check = false;
        for (name, value) in flags(args, &[flag::CHECK])? {
            if name == flag::CHECK {
                check = true;
                continue;
            }
            match name {
                flag::OPERATOR if value.starts_with("https://") => operator = Some(value),
                flag::OPERATOR => return Err(format!("--operator: {value:?} must be https://HOST:PORT")),
                flag::OPERATOR_CA => operator_ca = Some(value),
                flag::DAEMON => match value.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => daemon = Some(value),
                    _ => return Err(format!("--daemon: {value:?} must be NAMESPACE/NAME")),
                },
                flag::TOKEN if value.starts_with('/') => token = Some(value),
                flag::DIR if value.starts_with('/') => dir = Some(value),
                flag::TOKEN | flag::DIR => return Err(format!("--{name}: {value:?} must be an absolute path")),
                other => return Err(format!("--{other}: unknown flag of client-certs")),
            }
        }
        let dir = dir.ok_or("--dir is required")?;
        if check {
            return Ok(Err(dir));
        }
        Ok(Ok(Self {
            operator: operator.ok_or("--operator is required")?,
            operator_ca: operator_ca.ok_or("--operator-ca is required")?,
            daemon: daemon.ok_or("--daemon is required")?,
            token: token.ok_or("--token is required")?,
            dir,
        }))
    }
}

/// The flags of a subcommand's arguments, in order: `--name=value`, `--name value`, or a
/// `--switch` (one of `switches`, whose value is empty); anything else is named as an error.
fn flags<'a>(args: &'a [String], switches: &[&str]) -> Result<Vec<(&'a str, String)>, String> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let body = arg.strip_prefix("--").ok_or_else(|| format!("{arg}: unexpected argument"))?;
        if switches.contains(&body) {
            out.push((body, String::new()));
        } else if let Some((name, value)) = body.split_once('=') {
            out.push((name, value.to_string()));
        } else {
            let value = rest.next().ok_or_else(|| format!("--{body}: needs a value (--{body}=VALUE)"))?;
            out.push((body, value.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
