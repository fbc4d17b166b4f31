//! dind-init's settings: command-line flags, each with an environment twin.
//!
//! Every setting is parsed and checked here, before anything is mounted or started, so that a
//! typo or a bad value stops the container at once with an error that names the setting.
//! Precedence: a flag beats its environment variable, which beats the default.
//! The seed's variables (`PORT`, `LOG`, `DOCKER_DAEMON_ARGS`) keep their meaning; our own are
//! prefixed `DIND_INIT_` (not `DIND_`, which Kubernetes service links would inject for a
//! Service named `dind`), and an unknown `DIND_INIT_*` variable is an error, not ignored.
//!
//! `settings` is the table of settings (flags, environment names, help), `sources` reads flags
//! and the environment into a [`Command`], `checks` holds the value checks, among them the
//! dockerd directives dind-init owns (from `dind_contract`, which the operator's CRD uses too).

mod checks;
#[cfg(test)]
mod contract_tests;
mod settings;
mod sources;

use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

pub use checks::check_files;
pub use settings::usage;
pub use sources::parse;

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
    /// Blocks until dockerd answers `/_ping` (a postStart hook: the container counts as started,
    /// and so as ready, only once Docker answers).
    Wait {
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
    /// Whether dockerd listens on TCP at all (false: only its unix socket).
    pub tcp: bool,
    pub port: u16,
    /// `None` when TLS was explicitly turned off.
    pub tls: Option<TlsFiles>,
    /// `--tls-generate`: the directory where dind-init makes the CA and certificates that
    /// `tls` points at (a sidecar's own, which never leave its pod).
    pub tls_generate: Option<PathBuf>,
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
    /// The socket's numeric group (dockerd `--group`); `None`: dockerd's default.
    pub socket_group: Option<u32>,
    pub log: LogTarget,
    pub iptables: Iptables,
    pub dockerd: String,
    pub shutdown_timeout: u32,
    /// From `DOCKER_DAEMON_ARGS`, then the arguments after `--`.
    pub extra_args: Vec<String>,
}

/// Where a raw value came from, so errors name what the user actually wrote.
#[derive(Debug, Clone)]
pub(super) struct Raw {
    pub origin: String,
    pub value: String,
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
    use super::settings::SETTINGS;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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

    #[test]
    fn tls_generate_serves_with_what_it_makes_and_takes_no_other_files() {
        let c = run(&["--tls-generate=/dind/certs"], &[]).unwrap();
        assert_eq!(c.tls_generate.as_deref(), Some(std::path::Path::new("/dind/certs")));
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("/dind/certs/server/tls.crt"));
        assert_eq!(c.port, 2376);
        for (args, setting) in [
            (&["--tls-generate=/d", "--tls-dir=/x"][..], "--tls-dir"),
            (&["--tls-generate=/d", "--tls=false"], "--tls-generate"),
            (&["--tls-generate=/d", "--tcp=false"], "--tls-generate"),
            (&["--tls-generate=rel"], "--tls-generate"),
        ] {
            assert_eq!(run(args, &[]).unwrap_err().setting, setting, "{args:?}");
        }
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
    fn every_directive_of_the_contract_is_refused_both_ways() {
        // Found drifted: -DH, -p and -g passed the CRD; shutdown-timeout passed both checks.
        for arg in ["-DH", "-p", "-g", "--shutdown-timeout=30", "--exec-root=/x", "--mtu=1400", "-soverlay2"] {
            let e = run(&["--", arg], &[]).unwrap_err();
            assert_eq!(e.setting, "arguments after --", "{arg}");
            assert!(e.reason.contains("is set by dind-init"), "{arg}: {e}");
        }
        for key in ["shutdown-timeout", "exec-root", "hosts", "mtu", "storage-driver"] {
            let e = run(&["--daemon-config", &format!("{{\"{key}\": 1}}")], &[]).unwrap_err();
            assert_eq!(e.setting, "--daemon-config", "{key}");
            assert!(e.reason.contains(key) && e.reason.contains("is set by dind-init"), "{key}: {e}");
        }
        assert!(run(&["--", "-D", "--log-level=debug"], &[]).is_ok());
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
        let w = parse(&["wait".into()], &env).unwrap();
        assert_eq!(w, Command::Wait { socket: dind_contract::SOCKET.into(), timeout_ms: 120_000 });
        let e = parse(&["wait".into(), "--timeout-ms".into(), "0".into()], &env).unwrap_err();
        assert_eq!(e.setting, "--timeout-ms");
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
