//! dockerd's command line and daemon.json, built from the checked settings.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::config::Config;

/// The bridge driver's MTU option, as `docker network create -o` names it.
const BRIDGE_MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// The daemon.json dind-init writes: the passthrough, with our typed settings merged over it
/// (the config checks already refused every key dind-init owns, so nothing is silently overridden).
pub fn daemon_json(cfg: &Config, mtu: Option<u32>, storage_driver: Option<&str>) -> Map<String, Value> {
    let mut doc = cfg.daemon_config.clone();
    if let Some(mtu) = mtu {
        // `mtu` is the default bridge's only; networks made later (`docker network create`,
        // every compose project) take the bridge driver's default options, so the MTU goes
        // there too (Docker >= 24), unless the user's daemon.json sets that option itself.
        doc.insert("mtu".into(), json!(mtu));
        let opts = doc.entry("default-network-opts").or_insert_with(|| json!({}));
        if let Some(opts) = opts.as_object_mut() {
            let bridge = opts.entry("bridge").or_insert_with(|| json!({}));
            if let Some(bridge) = bridge.as_object_mut() {
                bridge.entry(BRIDGE_MTU_OPTION).or_insert_with(|| json!(mtu.to_string()));
            }
        }
    }
    if let Some(driver) = storage_driver {
        doc.insert("storage-driver".into(), json!(driver));
    }
    if !cfg.registry_mirrors.is_empty() {
        doc.insert("registry-mirrors".into(), json!(cfg.registry_mirrors));
    }
    if !cfg.insecure_registries.is_empty() {
        doc.insert("insecure-registries".into(), json!(cfg.insecure_registries));
    }
    doc
}

/// dockerd's arguments. Hosts, TLS and data root stay flags (they are ours alone); everything a
/// user may shape goes through daemon.json, so dockerd never sees one directive twice.
pub fn dockerd_args(cfg: &Config, config_file: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--config-file={}", config_file.display()),
        format!("--host=unix://{}", cfg.socket.display()),
        format!("--data-root={}", cfg.data_root.display()),
        format!("--exec-root={}", cfg.exec_root.display()),
        format!("--shutdown-timeout={}", cfg.shutdown_timeout),
    ];
    if cfg.tcp {
        args.insert(2, format!("--host=tcp://0.0.0.0:{}", cfg.port));
    }
    if let Some(gid) = cfg.socket_group {
        args.push(format!("--group={gid}"));
    }
    match &cfg.tls {
        Some(tls) => args.extend([
            "--tlsverify".to_string(),
            format!("--tlscacert={}", tls.ca.display()),
            format!("--tlscert={}", tls.cert.display()),
            format!("--tlskey={}", tls.key.display()),
        ]),
        // Without an explicit --tls=false, dockerd on a TCP host waits 16 s and warns.
        None if cfg.tcp => args.push("--tls=false".to_string()),
        None => {}
    }
    args.extend(cfg.extra_args.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, parse};
    use std::collections::BTreeMap;

    fn cfg(args: &[&str], env: &[(&str, &str)]) -> Config {
        let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        match parse(&args, &env).unwrap() {
            Command::Run(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_on_by_default_with_owned_hosts() {
        let c = cfg(&[], &[]);
        let args = dockerd_args(&c, Path::new("/run/dind-init/daemon.json"));
        assert!(args.contains(&"--host=tcp://0.0.0.0:2376".to_string()));
        assert!(args.contains(&"--host=unix:///var/run/docker.sock".to_string()));
        assert!(args.contains(&"--tlsverify".to_string()));
        assert!(args.contains(&"--tlscacert=/certs/server/ca.crt".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--tls=")));
    }

    #[test]
    fn tls_off_says_so_explicitly() {
        let c = cfg(&["--tls=false"], &[("DOCKER_DAEMON_ARGS", "-D")]);
        let args = dockerd_args(&c, Path::new("/x.json"));
        assert!(args.contains(&"--tls=false".to_string()));
        assert!(args.contains(&"--host=tcp://0.0.0.0:2375".to_string()));
        assert_eq!(args.last().map(String::as_str), Some("-D"));
        assert!(!args.iter().any(|a| a.starts_with("--tlsverify")));
    }

    #[test]
    fn a_socket_group_is_dockerds_group_and_a_user_may_not_set_one() {
        let c = cfg(&["--tcp=false", "--socket=/dind/sock/docker.sock", "--socket-group=2375"], &[]);
        assert!(dockerd_args(&c, Path::new("/x.json")).contains(&"--group=2375".to_string()));
        assert!(!dockerd_args(&cfg(&[], &[]), Path::new("/x.json")).iter().any(|a| a.starts_with("--group")));
        for arg in ["--group=0", "-G", "-DG"] {
            assert!(crate::config::parse(&["--".to_string(), arg.to_string()], &Default::default()).is_err(), "{arg}");
        }
    }

    #[test]
    fn without_tcp_only_the_unix_socket_listens() {
        let c = cfg(&["--tcp=false", "--socket=/dind/sock/docker.sock"], &[]);
        let args = dockerd_args(&c, Path::new("/x.json"));
        assert!(args.contains(&"--host=unix:///dind/sock/docker.sock".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--host=tcp") || a.starts_with("--tls")), "{args:?}");
        let env = BTreeMap::new();
        for bad in [&["--tcp=false", "--tls=true"][..], &["--tcp=false", "--port=2376"], &["--tcp=false", "--tls-dir=/x"]] {
            let args: Vec<String> = bad.iter().map(|s| (*s).to_string()).collect();
            let err = parse(&args, &env).unwrap_err().to_string();
            assert!(err.contains("--t") || err.contains("--port"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn daemon_json_merges_typed_over_passthrough() {
        let c = cfg(&["--registry-mirror", "https://m", "--insecure-registry", "r:5000", "--daemon-config", r#"{"debug":true}"#], &[]);
        let doc = daemon_json(&c, Some(1450), Some("overlay2"));
        assert_eq!(doc["debug"], json!(true));
        assert_eq!(doc["mtu"], json!(1450));
        assert_eq!(doc["storage-driver"], json!("overlay2"));
        assert_eq!(doc["registry-mirrors"], json!(["https://m"]));
        assert_eq!(doc["insecure-registries"], json!(["r:5000"]));
    }

    /// Networks made later get the pod's MTU too (before: only the default bridge had it, and
    /// every compose project's network kept 1500 on a 1450 overlay: downloads hung).
    #[test]
    fn networks_made_later_default_to_the_mtu() {
        let doc = daemon_json(&cfg(&[], &[]), Some(1450), None);
        assert_eq!(doc["default-network-opts"], json!({"bridge": {"com.docker.network.driver.mtu": "1450"}}));
        // The user's own default network options are kept, theirs winning.
        let theirs = r#"{"default-network-opts":{"bridge":{"com.docker.network.driver.mtu":"1400","com.docker.network.bridge.enable_icc":"false"}}}"#;
        let doc = daemon_json(&cfg(&["--daemon-config", theirs], &[]), Some(1450), None);
        assert_eq!(doc["default-network-opts"]["bridge"]["com.docker.network.driver.mtu"], json!("1400"));
        assert_eq!(doc["default-network-opts"]["bridge"]["com.docker.network.bridge.enable_icc"], json!("false"));
        assert!(daemon_json(&cfg(&[], &[]), None, None).get("default-network-opts").is_none());
    }

    #[test]
    fn what_dind_init_sets_is_exactly_the_contracts_directives() {
        let c = cfg(&["--mtu=1400", "--registry-mirror=https://m", "--insecure-registry=r:5000", "--socket-group=2375"], &[]);
        let args = dockerd_args(&c, Path::new("/run/dind-init/daemon.json"));
        for arg in args.iter().filter(|a| a.starts_with('-')) {
            let d = dind_contract::owned_flag(arg).unwrap_or_else(|| panic!("{arg} is set by dind-init but not in the contract"));
            assert_eq!(d.via, dind_contract::Via::Flag, "{arg}");
        }
        let doc = daemon_json(&c, Some(1400), Some("vfs"));
        // Keys dind-init fills in without owning them (merged with the user's, theirs winning key
        // by key) are not the contract's owned directives.
        let merged = ["default-network-opts"];
        for key in doc.keys().filter(|k| !merged.contains(&k.as_str())) {
            let d = dind_contract::owned_key(key).unwrap_or_else(|| panic!("{key} is written by dind-init but not in the contract"));
            assert_eq!(d.via, dind_contract::Via::DaemonJson, "{key}");
        }
        // And the other way: every directive of the contract is set by one of the two.
        for d in dind_contract::DIRECTIVES {
            let by_flag = args.iter().any(|a| dind_contract::owned_flag(a) == Some(d));
            let by_file = d.key.is_some_and(|k| doc.contains_key(k));
            let pidfile = d.key == Some("pidfile"); // dockerd's default, kept ours so nobody moves it
            assert!(by_flag || by_file || pidfile || d.key == Some("tls"), "{d:?} is owned but never set");
        }
    }
}
