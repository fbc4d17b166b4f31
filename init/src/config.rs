//! dind-init's settings: command-line flags, each with an environment twin.
//!
//! Every setting is parsed and checked here, before anything is mounted or started, so that a
//! typo or a bad value stops the container at once with an error that names the setting.
//! Precedence: a flag beats its environment variable, which beats the default.
//! The seed's variables (`PORT`, `LOG`, `DOCKER_DAEMON_ARGS`) keep their meaning; our own are
//! prefixed `DIND_INIT_` (not `DIND_`, which Kubernetes service links would inject for a
//! Service named `dind`), and an unknown `DIND_INIT_*` variable is an error, not ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// Storage drivers that dind-init knows how to place; anything else is refused by name.
pub const STORAGE_DRIVERS: &[&str] = &["overlay2", "fuse-overlayfs", "btrfs", "zfs", "vfs"];

/// daemon.json keys that dind-init owns: the port, TLS and data root are wired to the pod.
const OWNED_DAEMON_KEYS: &[&str] = &["hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey", "data-root", "pidfile"];

/// dockerd flags that dind-init owns; passing them through would fight our own.
const OWNED_DOCKERD_FLAGS: &[&str] = &[
    "-H",
    "--host",
    "--tls",
    "--tlsverify",
    "--tlscacert",
    "--tlscert",
    "--tlskey",
    "--data-root",
    "-g",
    "--graph",
    "--config-file",
    "--pidfile",
    "-p",
];

/// How dind-init was asked to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Ready the container and run dockerd as our child (the default).
    Run(Box<Config>),
    /// Readiness probe: `/_ping` over the daemon's unix socket.
    Probe {
        socket: PathBuf,
        timeout_ms: u64,
    },
    /// Copy this binary into a directory (the init-container pattern).
    Install {
        dir: PathBuf,
    },
    Help,
    Version,
}

/// Where dockerd's output goes (the seed's `LOG=file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    /// `/var/log/docker.log`
    File,
}

/// Which iptables backend dockerd should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iptables {
    /// nft if the kernel answers to it, legacy otherwise (as docker:dind does).
    Auto,
    Nft,
    Legacy,
}

/// Files of the daemon's mutual TLS: it trusts clients signed by `ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `dind-init run` needs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port: u16,
    /// `None` when TLS was explicitly turned off.
    pub tls: Option<TlsFiles>,
    /// `None`: detect from the pod's eth0.
    pub mtu: Option<u32>,
    /// `None`: choose from the filesystem under the data root.
    pub storage_driver: Option<String>,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    /// daemon.json passthrough; our typed settings are merged over it.
    pub daemon_config: Map<String, Value>,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub socket: PathBuf,
    pub log: LogTarget,
    pub iptables: Iptables,
    pub dockerd: String,
    pub shutdown_timeout: u32,
    /// From `DOCKER_DAEMON_ARGS`, then the arguments after `--`.
    pub extra_args: Vec<String>,
}

/// A setting that could not be accepted; the message names it as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { setting: setting.into(), reason: reason.into() }
    }
}

/// One setting: its flag, its environment names (first wins after the flag), and its help.
struct Setting {
    flag: &'static str,
    env: &'static [&'static str],
    repeatable: bool,
    help: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        flag: "port",
        env: &["PORT", "DIND_INIT_PORT"],
        repeatable: false,
        help: "TCP port of dockerd (default 2376, or 2375 with --tls=false)",
    },
    Setting { flag: "tls", env: &["DIND_INIT_TLS"], repeatable: false, help: "mutual TLS on the TCP port: true (default) or false" },
    Setting {
        flag: "tls-dir",
        env: &["DIND_INIT_TLS_DIR"],
        repeatable: false,
        help: "directory of ca.crt, tls.crt, tls.key (default /certs/server)",
    },
    Setting {
        flag: "tls-ca",
        env: &["DIND_INIT_TLS_CA"],
        repeatable: false,
        help: "CA that client certificates must chain to (default TLS_DIR/ca.crt)",
    },
    Setting { flag: "tls-cert", env: &["DIND_INIT_TLS_CERT"], repeatable: false, help: "server certificate (default TLS_DIR/tls.crt)" },
    Setting { flag: "tls-key", env: &["DIND_INIT_TLS_KEY"], repeatable: false, help: "server key (default TLS_DIR/tls.key)" },
    Setting { flag: "mtu", env: &["DIND_INIT_MTU"], repeatable: false, help: "MTU of dockerd's networks, 576-9000 (default: eth0's)" },
    Setting {
        flag: "storage-driver",
        env: &["DIND_INIT_STORAGE_DRIVER"],
        repeatable: false,
        help: "overlay2, fuse-overlayfs, btrfs, zfs or vfs (default: from the filesystem)",
    },
    Setting {
        flag: "registry-mirror",
        env: &["DIND_INIT_REGISTRY_MIRRORS"],
        repeatable: true,
        help: "registry mirror URL, http(s)://; repeat, or comma-separate in the env",
    },
    Setting {
        flag: "insecure-registry",
        env: &["DIND_INIT_INSECURE_REGISTRIES"],
        repeatable: true,
        help: "registry host[:port] or CIDR reached without TLS checks; repeatable",
    },
    Setting { flag: "daemon-config", env: &["DIND_INIT_DAEMON_CONFIG"], repeatable: false, help: "daemon.json passthrough, a JSON object" },
    Setting {
        flag: "data-root",
        env: &["DIND_INIT_DATA_ROOT"],
        repeatable: false,
        help: "dockerd's data root; back it with a volume (default /var/lib/docker)",
    },
    Setting { flag: "exec-root", env: &["DIND_INIT_EXEC_ROOT"], repeatable: false, help: "dockerd's exec root (default /var/run/docker)" },
    Setting { flag: "socket", env: &["DIND_INIT_SOCKET"], repeatable: false, help: "dockerd's unix socket (default /var/run/docker.sock)" },
    Setting {
        flag: "log",
        env: &["LOG", "DIND_INIT_LOG"],
        repeatable: false,
        help: "dockerd output: stdout (default) or file (/var/log/docker.log)",
    },
    Setting { flag: "iptables", env: &["DIND_INIT_IPTABLES"], repeatable: false, help: "iptables backend: auto (default), nft or legacy" },
    Setting { flag: "dockerd", env: &["DIND_INIT_DOCKERD"], repeatable: false, help: "dockerd binary (default: dockerd from PATH)" },
    Setting {
        flag: "shutdown-timeout",
        env: &["DIND_INIT_SHUTDOWN_TIMEOUT"],
        repeatable: false,
        help: "seconds dockerd gives containers to stop, 1-3600 (default 15)",
    },
    Setting {
        flag: "timeout-ms",
        env: &["DIND_INIT_PROBE_TIMEOUT_MS"],
        repeatable: false,
        help: "probe: give up after this many milliseconds (default 1000)",
    },
];

/// The usage text, printed by `--help`.
pub fn usage() -> String {
    let mut s = String::from(
        "dind-init: PID 1 for Docker-in-Docker containers\n\n\
         usage: dind-init [run] [FLAGS] [-- DOCKERD_ARGS...]\n       \
         dind-init probe [--socket PATH] [--timeout-ms N]\n       \
         dind-init install DIR\n\nflags (each also read from the environment):\n",
    );
    for set in SETTINGS {
        s.push_str(&format!("  --{:<20} {}  [{}]\n", set.flag, set.help, set.env.join(", ")));
    }
    s.push_str("\nDOCKER_DAEMON_ARGS: extra dockerd arguments, split like a shell would\n");
    s
}

/// Where a raw value came from, so errors name what the user actually wrote.
#[derive(Debug, Clone)]
struct Raw {
    origin: String,
    value: String,
}

/// Parses `args` (without the program name) and the environment into a command.
pub fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Command, ConfigError> {
    let (sub, rest) = match args.first().map(String::as_str) {
        Some("probe") => ("probe", &args[1..]),
        Some("install") => ("install", &args[1..]),
        Some("run") => ("run", &args[1..]),
        _ => ("run", args),
    };

    let mut flags: BTreeMap<&'static str, Vec<Raw>> = BTreeMap::new();
    let mut positional = Vec::new();
    let mut passthrough = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        if arg == "--" {
            passthrough.extend(rest[i..].iter().cloned());
            break;
        }
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        if arg == "--version" {
            return Ok(Command::Version);
        }
        let Some(body) = arg.strip_prefix("--") else {
            if arg.starts_with('-') && arg.len() > 1 {
                return Err(ConfigError::new(arg, "unknown flag (see --help)"));
            }
            positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(setting) = SETTINGS.iter().find(|s| s.flag == name) else {
            return Err(ConfigError::new(format!("--{name}"), "unknown flag (see --help)"));
        };
        let value = match inline {
            Some(v) => v,
            None => {
                let Some(v) = rest.get(i) else {
                    return Err(ConfigError::new(format!("--{name}"), "needs a value"));
                };
                i += 1;
                v.clone()
            }
        };
        let entry = flags.entry(setting.flag).or_default();
        if !entry.is_empty() && !setting.repeatable {
            return Err(ConfigError::new(format!("--{name}"), "given more than once"));
        }
        entry.push(Raw { origin: format!("--{name}"), value });
    }

    for key in env.keys() {
        if key.starts_with("DIND_INIT_") && !SETTINGS.iter().any(|s| s.env.contains(&key.as_str())) {
            return Err(ConfigError::new(key, "unknown setting (see dind-init --help)"));
        }
    }
    // A flag beats the environment; among environment names the first listed wins.
    let lookup = |flag: &str| -> Vec<Raw> {
        if let Some(v) = flags.get(flag) {
            return v.clone();
        }
        let setting = SETTINGS.iter().find(|s| s.flag == flag);
        for name in setting.map(|s| s.env).unwrap_or_default() {
            if let Some(v) = env.get(*name) {
                return vec![Raw { origin: (*name).to_string(), value: v.clone() }];
            }
        }
        Vec::new()
    };
    let one = |flag: &str| lookup(flag).into_iter().next();

    match sub {
        "probe" => {
            only_flags(&flags, &["socket", "timeout-ms"], "probe")?;
            no_positional(&positional, "probe")?;
            let socket = one("socket").map_or_else(|| PathBuf::from("/var/run/docker.sock"), |r| PathBuf::from(r.value));
            let timeout_ms = match one("timeout-ms") {
                Some(r) => parse_number(&r, 1, 60_000)?,
                None => 1000,
            };
            Ok(Command::Probe { socket, timeout_ms })
        }
        "install" => {
            only_flags(&flags, &[], "install")?;
            match positional.as_slice() {
                [dir] => Ok(Command::Install { dir: PathBuf::from(dir) }),
                _ => Err(ConfigError::new("install", "takes exactly one argument: the target directory")),
            }
        }
        _ => {
            no_positional(&positional, "run")?;
            if flags.contains_key("timeout-ms") {
                return Err(ConfigError::new("--timeout-ms", "belongs to `dind-init probe`"));
            }
            run_config(&lookup, &one, env, passthrough).map(|c| Command::Run(Box::new(c)))
        }
    }
}

fn run_config(
    lookup: &dyn Fn(&str) -> Vec<Raw>,
    one: &dyn Fn(&str) -> Option<Raw>,
    env: &BTreeMap<String, String>,
    passthrough: Vec<String>,
) -> Result<Config, ConfigError> {
    let tls_on = match one("tls") {
        Some(r) => parse_bool(&r)?,
        None => true,
    };
    let tls = if tls_on {
        let dir = one("tls-dir").map_or_else(|| PathBuf::from("/certs/server"), |r| PathBuf::from(r.value));
        let file = |flag: &str, default: &str| one(flag).map_or_else(|| dir.join(default), |r| PathBuf::from(r.value));
        Some(TlsFiles { ca: file("tls-ca", "ca.crt"), cert: file("tls-cert", "tls.crt"), key: file("tls-key", "tls.key") })
    } else {
        for flag in ["tls-dir", "tls-ca", "tls-cert", "tls-key"] {
            if let Some(r) = one(flag) {
                return Err(ConfigError::new(r.origin, "TLS files given but TLS is off (--tls=false)"));
            }
        }
        None
    };
    let port = match one("port") {
        Some(r) => {
            let port = parse_number(&r, 1, 65535)?;
            if port == 2375 && tls_on {
                return Err(ConfigError::new(r.origin, "2375 is Docker's plaintext port; with TLS on use 2376 or another"));
            }
            u16::try_from(port).map_err(|_| ConfigError::new("port", "out of range"))?
        }
        None if tls_on => 2376,
        None => 2375,
    };
    let mtu = match one("mtu") {
        Some(r) => Some(u32::try_from(parse_number(&r, 576, 9000)?).map_err(|_| ConfigError::new(r.origin, "out of range"))?),
        None => None,
    };
    let storage_driver = match one("storage-driver") {
        Some(r) if STORAGE_DRIVERS.contains(&r.value.as_str()) => Some(r.value),
        Some(r) => {
            return Err(ConfigError::new(r.origin, format!("{:?} is not one of {}", r.value, STORAGE_DRIVERS.join(", "))));
        }
        None => None,
    };
    let registry_mirrors = list(lookup("registry-mirror"))
        .into_iter()
        .map(|(origin, url)| {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url),
                _ => Err(ConfigError::new(origin, format!("{url:?} is not an http:// or https:// URL"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let insecure_registries = list(lookup("insecure-registry"))
        .into_iter()
        .map(|(origin, reg)| {
            if reg.contains("://") || reg.contains(char::is_whitespace) || reg.starts_with('-') {
                Err(ConfigError::new(origin, format!("{reg:?} must be host[:port] or a CIDR, without a scheme")))
            } else {
                Ok(reg)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let daemon_config = match one("daemon-config") {
        Some(r) => parse_daemon_config(&r)?,
        None => Map::new(),
    };
    for (key, typed) in [
        ("mtu", mtu.is_some()),
        ("storage-driver", storage_driver.is_some()),
        ("registry-mirrors", !registry_mirrors.is_empty()),
        ("insecure-registries", !insecure_registries.is_empty()),
    ] {
        if typed && daemon_config.contains_key(key) {
            let origin = one("daemon-config").map(|r| r.origin).unwrap_or_default();
            return Err(ConfigError::new(origin, format!("key {key:?} is also set by its own setting; set it once")));
        }
    }
    let log = match one("log") {
        Some(r) => match r.value.as_str() {
            "file" => LogTarget::File,
            "" | "stdout" | "stderr" => LogTarget::Stdout,
            other => return Err(ConfigError::new(r.origin, format!("{other:?} is not stdout or file"))),
        },
        None => LogTarget::Stdout,
    };
    let iptables = match one("iptables") {
        Some(r) => match r.value.as_str() {
            "auto" => Iptables::Auto,
            "nft" => Iptables::Nft,
            "legacy" => Iptables::Legacy,
            other => return Err(ConfigError::new(r.origin, format!("{other:?} is not auto, nft or legacy"))),
        },
        None => Iptables::Auto,
    };
    let shutdown_timeout = match one("shutdown-timeout") {
        Some(r) => u32::try_from(parse_number(&r, 1, 3600)?).map_err(|_| ConfigError::new(r.origin, "out of range"))?,
        None => 15,
    };
    let path = |flag: &str, default: &str| -> Result<PathBuf, ConfigError> {
        match one(flag) {
            Some(r) if r.value.starts_with('/') => Ok(PathBuf::from(r.value)),
            Some(r) => Err(ConfigError::new(r.origin, format!("{:?} must be an absolute path", r.value))),
            None => Ok(PathBuf::from(default)),
        }
    };

    let mut extra_args = Vec::new();
    if let Some(raw) = env.get("DOCKER_DAEMON_ARGS") {
        let split = shlex::split(raw).ok_or_else(|| ConfigError::new("DOCKER_DAEMON_ARGS", "unbalanced quotes or a trailing backslash"))?;
        check_passthrough("DOCKER_DAEMON_ARGS", &split)?;
        extra_args.extend(split);
    }
    check_passthrough("arguments after --", &passthrough)?;
    extra_args.extend(passthrough);

    Ok(Config {
        port,
        tls,
        mtu,
        storage_driver,
        registry_mirrors,
        insecure_registries,
        daemon_config,
        data_root: path("data-root", "/var/lib/docker")?,
        exec_root: path("exec-root", "/var/run/docker")?,
        socket: path("socket", "/var/run/docker.sock")?,
        log,
        iptables,
        dockerd: one("dockerd").map_or_else(|| "dockerd".to_string(), |r| r.value),
        shutdown_timeout,
        extra_args,
    })
}

/// Checks that the TLS files exist, naming the setting that points at a missing one.
pub fn check_files(cfg: &Config) -> Result<(), ConfigError> {
    let Some(tls) = &cfg.tls else { return Ok(()) };
    for (flag, path) in [("--tls-ca", &tls.ca), ("--tls-cert", &tls.cert), ("--tls-key", &tls.key)] {
        if !path.is_file() {
            return Err(ConfigError::new(
                flag,
                format!(
                    "{} is not a file (mount the server TLS secret there, set --tls-dir, or turn TLS off with --tls=false)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn only_flags(flags: &BTreeMap<&'static str, Vec<Raw>>, allowed: &[&str], sub: &str) -> Result<(), ConfigError> {
    match flags.keys().find(|k| !allowed.contains(k)) {
        Some(k) => Err(ConfigError::new(format!("--{k}"), format!("does not apply to `dind-init {sub}`"))),
        None => Ok(()),
    }
}

fn no_positional(positional: &[String], sub: &str) -> Result<(), ConfigError> {
    match positional.first() {
        Some(p) => {
            Err(ConfigError::new(format!("argument {p:?}"), format!("unexpected to `dind-init {sub}` (dockerd arguments go after --)")))
        }
        None => Ok(()),
    }
}

/// Flags repeat; environment lists are comma-separated. Empty items are dropped.
fn list(raws: Vec<Raw>) -> Vec<(String, String)> {
    raws.into_iter()
        .flat_map(|r| {
            let origin = r.origin;
            r.value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| (origin.clone(), s.to_string())).collect::<Vec<_>>()
        })
        .collect()
}

fn parse_number(raw: &Raw, min: u64, max: u64) -> Result<u64, ConfigError> {
    match raw.value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(ConfigError::new(&raw.origin, format!("{n} is outside {min}-{max}"))),
        Err(_) => Err(ConfigError::new(&raw.origin, format!("{:?} is not a number", raw.value))),
    }
}

fn parse_bool(raw: &Raw) -> Result<bool, ConfigError> {
    match raw.value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(&raw.origin, format!("{:?} is not true or false", raw.value))),
    }
}

fn parse_daemon_config(raw: &Raw) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(&raw.value).map_err(|e| ConfigError::new(&raw.origin, format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ConfigError::new(&raw.origin, "must be a JSON object (daemon.json)"));
    };
    if let Some(key) = map.keys().find(|k| OWNED_DAEMON_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::new(
            &raw.origin,
            format!("key {key:?} is set by dind-init (port, TLS and data root are wired to the pod)"),
        ));
    }
    Ok(map)
}

/// Refuses dockerd flags that dind-init sets itself.
fn check_passthrough(origin: &str, args: &[String]) -> Result<(), ConfigError> {
    for arg in args {
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        let owned = OWNED_DOCKERD_FLAGS.iter().any(|f| {
            name == *f
                // `-Htcp://...` is -H with an attached value; `--tls*` covers --tlsverify=false etc.
                || (f.len() == 2 && name.starts_with(f) && !name.starts_with("--"))
                || (*f == "--tls" && name.starts_with("--tls"))
        });
        if owned {
            return Err(ConfigError::new(origin, format!("{name} is set by dind-init; use its own settings (see --help)")));
        }
    }
    Ok(())
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogTarget::Stdout => "stdout",
            LogTarget::File => "file",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
        let env = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        match parse(&args, &env)? {
            Command::Run(c) => Ok(*c),
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_mutual_tls_on_2376() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.port, 2376);
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/certs/server/ca.crt"));
        assert_eq!(tls.key, PathBuf::from("/certs/server/tls.key"));
        assert_eq!(c.data_root, PathBuf::from("/var/lib/docker"));
        assert_eq!(c.log, LogTarget::Stdout);
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn seed_environment_is_honoured() {
        let c = run(&[], &[("PORT", "4444"), ("LOG", "file"), ("DOCKER_DAEMON_ARGS", "-D --label 'a b'")]).unwrap();
        assert_eq!(c.port, 4444);
        assert_eq!(c.log, LogTarget::File);
        assert_eq!(c.extra_args, vec!["-D", "--label", "a b"]);
    }

    #[test]
    fn flag_beats_environment() {
        let c = run(&["--port", "3000"], &[("PORT", "4444")]).unwrap();
        assert_eq!(c.port, 3000);
        let c = run(&["--mtu=1400"], &[("DIND_INIT_MTU", "1500")]).unwrap();
        assert_eq!(c.mtu, Some(1400));
    }

    #[test]
    fn tls_off_defaults_to_2375_and_refuses_tls_files() {
        let c = run(&["--tls=false"], &[]).unwrap();
        assert_eq!((c.port, c.tls), (2375, None));
        let e = run(&["--tls=false", "--tls-dir", "/x"], &[]).unwrap_err();
        assert_eq!(e.setting, "--tls-dir");
    }

    /// Flags, environment, and the setting the error must name.
    type BadCase = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

    #[test]
    fn bad_settings_name_themselves() {
        let cases: &[BadCase] = &[
            (&["--port", "0"], &[], "--port"),
            (&["--port", "70000"], &[], "--port"),
            (&[], &[("PORT", "abc")], "PORT"),
            (&["--port", "2375"], &[], "--port"),
            (&["--mtu", "100"], &[], "--mtu"),
            (&["--storage-driver", "aufs"], &[], "--storage-driver"),
            (&["--registry-mirror", "ftp://x"], &[], "--registry-mirror"),
            (&[], &[("DIND_INIT_REGISTRY_MIRRORS", "https://ok,nope")], "DIND_INIT_REGISTRY_MIRRORS"),
            (&["--insecure-registry", "https://r:5000"], &[], "--insecure-registry"),
            (&["--daemon-config", "[1]"], &[], "--daemon-config"),
            (&["--daemon-config", "{\"hosts\":[]}"], &[], "--daemon-config"),
            (&["--mtu", "1400", "--daemon-config", "{\"mtu\":1500}"], &[], "--daemon-config"),
            (&[], &[("LOG", "syslog")], "LOG"),
            (&["--iptables", "both"], &[], "--iptables"),
            (&["--frobnicate"], &[], "--frobnicate"),
            (&["-x"], &[], "-x"),
            (&[], &[("DIND_INIT_MTUU", "1400")], "DIND_INIT_MTUU"),
            (&[], &[("DOCKER_DAEMON_ARGS", "-H tcp://0.0.0.0:1")], "DOCKER_DAEMON_ARGS"),
            (&[], &[("DOCKER_DAEMON_ARGS", "--tlsverify=false")], "DOCKER_DAEMON_ARGS"),
            (&[], &[("DOCKER_DAEMON_ARGS", "'unbalanced")], "DOCKER_DAEMON_ARGS"),
            (&["--", "--data-root=/x"], &[], "arguments after --"),
            (&["--data-root", "relative"], &[], "--data-root"),
            (&["--port"], &[], "--port"),
            (&["--port", "1", "--port", "2"], &[], "--port"),
            (&["--timeout-ms", "5"], &[], "--timeout-ms"),
            (&["stray"], &[], "argument \"stray\""),
        ];
        for (args, env, setting) in cases {
            let err = run(args, env).expect_err(&format!("{args:?} {env:?} should fail"));
            assert_eq!(err.setting, *setting, "{args:?} {env:?}: {err}");
            assert!(err.to_string().starts_with(setting), "{err}");
        }
    }

    #[test]
    fn lists_merge_flags_and_split_env() {
        let c = run(&["--registry-mirror", "https://a", "--registry-mirror=http://b:5000"], &[]).unwrap();
        assert_eq!(c.registry_mirrors, vec!["https://a", "http://b:5000"]);
        let c = run(&[], &[("DIND_INIT_INSECURE_REGISTRIES", "r.local:5000, 10.0.0.0/8")]).unwrap();
        assert_eq!(c.insecure_registries, vec!["r.local:5000", "10.0.0.0/8"]);
    }

    #[test]
    fn subcommands() {
        let env = BTreeMap::new();
        let p = parse(&["probe".into(), "--socket".into(), "/s".into()], &env).unwrap();
        assert_eq!(p, Command::Probe { socket: "/s".into(), timeout_ms: 1000 });
        let i = parse(&["install".into(), "/opt/dind".into()], &env).unwrap();
        assert_eq!(i, Command::Install { dir: "/opt/dind".into() });
        assert!(parse(&["install".into()], &env).is_err());
        assert!(parse(&["probe".into(), "--port".into(), "1".into()], &env).is_err());
    }

    fn arb_arg() -> impl Strategy<Value = String> {
        prop_oneof![
            "--[a-z-]{0,18}(=[ -~]{0,12})?",
            Just("--".to_string()),
            "[ -~]{0,16}",
            prop::sample::select(SETTINGS.iter().map(|s| format!("--{}", s.flag)).collect::<Vec<_>>()),
        ]
    }

    proptest! {
        /// The parser never panics, and every error names a non-empty setting.
        #[test]
        fn parser_is_total(args in prop::collection::vec(arb_arg(), 0..8),
                           env in prop::collection::btree_map("(PORT|LOG|DOCKER_DAEMON_ARGS|DIND_INIT_[A-Z_]{1,12})", "[ -~]{0,16}", 0..4)) {
            match parse(&args, &env) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.setting.is_empty()),
            }
        }

        /// Any valid port round-trips through the flag and through PORT.
        #[test]
        fn ports_round_trip(port in 1u16..=65535) {
            prop_assume!(port != 2375);
            prop_assert_eq!(run(&["--port", &port.to_string()], &[]).unwrap().port, port);
            prop_assert_eq!(run(&[], &[("PORT", &port.to_string())]).unwrap().port, port);
        }

        /// Shell-quoted DOCKER_DAEMON_ARGS come back as the words that were quoted.
        #[test]
        fn daemon_args_split_like_a_shell(words in prop::collection::vec("[a-z0-9 ='\"]{1,10}", 1..5)) {
            let quoted = shlex::try_join(words.iter().map(String::as_str)).unwrap();
            let env = [("DOCKER_DAEMON_ARGS", quoted.as_str())];
            match run(&[], &env) {
                Ok(c) => prop_assert_eq!(c.extra_args, words),
                Err(e) => prop_assert_eq!(e.setting, "DOCKER_DAEMON_ARGS"),
            }
        }
    }
}
