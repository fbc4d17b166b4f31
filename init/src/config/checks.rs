//! Checks of single values, and of what dind-init owns (the dockerd directives of the contract).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Config, ConfigError, Raw};

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

pub(super) fn only_flags(flags: &BTreeMap<&'static str, Vec<Raw>>, allowed: &[&str], sub: &str) -> Result<(), ConfigError> {
    match flags.keys().find(|k| !allowed.contains(k)) {
        Some(k) => Err(ConfigError::new(format!("--{k}"), format!("does not apply to `dind-init {sub}`"))),
        None => Ok(()),
    }
}

pub(super) fn no_positional(positional: &[String], sub: &str) -> Result<(), ConfigError> {
    match positional.first() {
        Some(p) => {
            Err(ConfigError::new(format!("argument {p:?}"), format!("unexpected to `dind-init {sub}` (dockerd arguments go after --)")))
        }
        None => Ok(()),
    }
}

/// Flags repeat; environment lists are comma-separated. Empty items are dropped.
pub(super) fn list(raws: Vec<Raw>) -> Vec<(String, String)> {
    raws.into_iter()
        .flat_map(|r| {
            let origin = r.origin;
            r.value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| (origin.clone(), s.to_string())).collect::<Vec<_>>()
        })
        .collect()
}

pub(super) fn parse_number(raw: &Raw, min: u64, max: u64) -> Result<u64, ConfigError> {
    match raw.value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(ConfigError::new(&raw.origin, format!("{n} is outside {min}-{max}"))),
        Err(_) => Err(ConfigError::new(&raw.origin, format!("{:?} is not a number", raw.value))),
    }
}

pub(super) fn parse_bool(raw: &Raw) -> Result<bool, ConfigError> {
    match raw.value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(&raw.origin, format!("{:?} is not true or false", raw.value))),
    }
}

pub(super) fn parse_daemon_config(raw: &Raw) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(&raw.value).map_err(|e| ConfigError::new(&raw.origin, format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ConfigError::new(&raw.origin, "must be a JSON object (daemon.json)"));
    };
    if let Some((key, directive)) = map.keys().find_map(|k| dind_contract::owned_key(k).map(|d| (k, d))) {
        return Err(ConfigError::new(&raw.origin, dind_contract::refusal(directive, &format!("key {key:?}"))));
    }
    Ok(map)
}

/// Refuses dockerd flags that dind-init sets itself (the contract's directives), also hidden
/// in a group of one-letter flags (`-DH`).
pub(super) fn check_passthrough(origin: &str, args: &[String]) -> Result<(), ConfigError> {
    for arg in args {
        if let Some(directive) = dind_contract::owned_flag(arg) {
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            return Err(ConfigError::new(origin, dind_contract::refusal(directive, name)));
        }
    }
    Ok(())
}
