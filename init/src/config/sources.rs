//! Reads the command line and the environment into a checked [`Command`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use dind_contract::args::{flag, sub};
use dind_contract::server_tls;
use serde_json::Map;

use super::checks::{check_passthrough, list, no_positional, only_flags, parse_bool, parse_daemon_config, parse_number};
use super::settings::SETTINGS;
use super::{Command, Config, ConfigError, Iptables, LogTarget, Raw, TlsFiles};

/// Parses `args` (without the program name) and the environment into a command.
pub fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Command, ConfigError> {
    let (sub, rest) = match args.first().map(String::as_str) {
        Some(sub::PROBE) => ("probe", &args[1..]),
        Some(sub::WAIT) => ("wait", &args[1..]),
        Some(sub::INSTALL) => ("install", &args[1..]),
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
        "probe" | "wait" => {
            only_flags(&flags, &[flag::SOCKET, flag::TIMEOUT_MS], sub)?;
            no_positional(&positional, sub)?;
            let socket = one("socket").map_or_else(|| PathBuf::from(dind_contract::SOCKET), |r| PathBuf::from(r.value));
            // A probe is one question; a wait asks until dockerd answers (up to an hour).
            let wait = sub == "wait";
            let (max, default) = (dind_contract::args::Check::max_ms(wait), if wait { 120_000 } else { 1000 });
            let timeout_ms = match one("timeout-ms") {
                Some(r) => parse_number(&r, 1, max)?,
                None => default,
            };
            Ok(if sub == "wait" { Command::Wait { socket, timeout_ms } } else { Command::Probe { socket, timeout_ms } })
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
    let tcp = match one("tcp") {
        Some(r) => parse_bool(&r)?,
        None => true,
    };
    // TLS guards the TCP listener: without one (a sidecar that answers on its unix socket
    // only) there is nothing to guard, and TLS settings are a mistake worth naming.
    let tls_on = match one("tls") {
        Some(r) if !tcp && parse_bool(&r)? => {
            return Err(ConfigError::new(r.origin, "TLS guards the TCP listener, and --tcp=false turns it off"));
        }
        Some(r) => parse_bool(&r)?,
        None => tcp,
    };
    if !tcp && let Some(r) = one("port") {
        return Err(ConfigError::new(r.origin, "a port needs the TCP listener, and --tcp=false turns it off"));
    }
    let tls_generate = match one("tls-generate") {
        Some(r) if !tls_on => return Err(ConfigError::new(r.origin, "TLS files to make but TLS is off (--tls=false or --tcp=false)")),
        Some(r) if !r.value.starts_with('/') => {
            return Err(ConfigError::new(r.origin, format!("{:?} must be an absolute path", r.value)));
        }
        Some(r) => {
            // Made in the pod by dind-init: no other TLS files may be named.
            if let Some(other) = ["tls-dir", "tls-ca", "tls-cert", "tls-key"].into_iter().find_map(one) {
                return Err(ConfigError::new(other.origin, "TLS files given, but --tls-generate makes its own"));
            }
            Some(PathBuf::from(r.value))
        }
        None => None,
    };
    let tls = if let Some(dir) = &tls_generate {
        let server = dir.join(dind_contract::generated_tls::SERVER);
        Some(TlsFiles { ca: server.join(server_tls::CA), cert: server.join(server_tls::CERT), key: server.join(server_tls::KEY) })
    } else if tls_on {
        let dir = one("tls-dir").map_or_else(|| PathBuf::from(dind_contract::SERVER_TLS_DIR), |r| PathBuf::from(r.value));
        let file = |flag: &str, default: &str| one(flag).map_or_else(|| dir.join(default), |r| PathBuf::from(r.value));
        Some(TlsFiles {
            ca: file("tls-ca", server_tls::CA),
            cert: file("tls-cert", server_tls::CERT),
            key: file("tls-key", server_tls::KEY),
        })
    } else {
        for flag in ["tls-dir", "tls-ca", "tls-cert", "tls-key"] {
            if let Some(r) = one(flag) {
                return Err(ConfigError::new(r.origin, "TLS files given but TLS is off (--tls=false or --tcp=false)"));
            }
        }
        None
    };
    let port = match one("port") {
        Some(r) => {
            let port = parse_number(&r, 1, 65535)?;
            if port == u64::from(dind_contract::PLAINTEXT_PORT) && tls_on {
                return Err(ConfigError::new(r.origin, "2375 is Docker's plaintext port; with TLS on use 2376 or another"));
            }
            u16::try_from(port).map_err(|_| ConfigError::new("port", "out of range"))?
        }
        None if tls_on => dind_contract::TLS_PORT,
        None => dind_contract::PLAINTEXT_PORT,
    };
    let socket_group = match one("socket-group") {
        Some(r) => Some(u32::try_from(parse_number(&r, 0, 2_147_483_647)?).map_err(|_| ConfigError::new(r.origin, "out of range"))?),
        None => None,
    };
    let mtu = match one("mtu") {
        Some(r) => Some(u32::try_from(parse_number(&r, 576, 9000)?).map_err(|_| ConfigError::new(r.origin, "out of range"))?),
        None => None,
    };
    let storage_driver = match one("storage-driver") {
        Some(r) if dind_contract::STORAGE_DRIVERS.contains(&r.value.as_str()) => Some(r.value),
        Some(r) => {
            return Err(ConfigError::new(r.origin, format!("{:?} is not one of {}", r.value, dind_contract::STORAGE_DRIVERS.join(", "))));
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
        None => dind_contract::SHUTDOWN_TIMEOUT,
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
        tcp,
        port,
        tls,
        tls_generate,
        mtu,
        storage_driver,
        registry_mirrors,
        insecure_registries,
        daemon_config,
        data_root: path("data-root", dind_contract::DATA_ROOT)?,
        exec_root: path("exec-root", dind_contract::EXEC_ROOT)?,
        socket: path("socket", dind_contract::SOCKET)?,
        socket_group,
        log,
        iptables,
        dockerd: one("dockerd").map_or_else(|| "dockerd".to_string(), |r| r.value),
        shutdown_timeout,
        extra_args,
    })
}
