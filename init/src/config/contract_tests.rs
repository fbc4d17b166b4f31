//! Round trips of the contract's command line (`dind_contract::args`): every value the operator
//! can render, dind-init parses back to itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dind_contract::args::{Check, Install, Run};
use dind_contract::{STORAGE_DRIVERS, client_pod, generated_tls};
use proptest::prelude::*;

use super::*;

/// How a daemon listens: the operator's `Listen`, rendered as it renders it.
fn listen(run: &mut Run, mode: u8, port: u16) {
    match mode {
        0 => (run.port, run.tls_dir) = (Some(port), Some(dind_contract::SERVER_TLS_DIR.into())),
        1 => (run.port, run.tls) = (Some(port), Some(false)),
        2 => (run.tcp, run.socket, run.socket_group) = (Some(false), Some(client_pod::SOCKET.into()), Some(client_pod::SOCKET_GID)),
        3 => {
            (run.port, run.socket, run.tls_generate) = (Some(port), Some(client_pod::SOCKET.into()), Some(generated_tls::DIR.into()));
            run.socket_group = Some(client_pod::SOCKET_GID);
        }
        _ => {
            (run.port, run.socket, run.tls) = (Some(port), Some(client_pod::SOCKET.into()), Some(false));
            run.socket_group = Some(client_pod::SOCKET_GID);
        }
    }
}

fn arb_run() -> impl Strategy<Value = Run> {
    (
        (0u8..5, 1u16..=65535, proptest::option::of(576u32..=9000), proptest::option::of(prop::sample::select(STORAGE_DRIVERS.to_vec()))),
        prop::collection::vec("https?://[a-z]{1,8}(\\.[a-z]{2,3})?(:[0-9]{2,4})?", 0..3),
        prop::collection::vec("[a-z]{1,8}(:[0-9]{2,4})?", 0..3),
        proptest::option::of((1u64..1 << 40, prop::sample::select(vec!["warn", "info", "debug"]))),
        1u32..=300,
        prop::collection::vec(
            prop::sample::select(vec!["--debug", "--log-level=warn", "--experimental", "--max-concurrent-downloads=6"]),
            0..3,
        ),
    )
        .prop_filter("2375 is plaintext's", |((mode, port, _, _), ..)| !(*port == 2375 && matches!(mode, 0 | 3)))
        .prop_map(|((mode, port, mtu, driver), mirrors, insecure, config, shutdown, dockerd)| {
            let mut run = Run {
                mtu,
                storage_driver: driver.map(str::to_string),
                registry_mirrors: mirrors,
                insecure_registries: insecure,
                daemon_config: config.map(|(keep, level)| {
                    serde_json::json!({"builder": {"gc": {"enabled": true, "defaultKeepStorage": keep.to_string()}}, "log-level": level})
                        .to_string()
                }),
                shutdown_timeout: Some(shutdown),
                dockerd_args: dockerd.into_iter().map(str::to_string).collect(),
                ..Run::default()
            };
            listen(&mut run, mode, port);
            run
        })
}

fn parsed(args: &[String]) -> Command {
    parse(args, &BTreeMap::new()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

proptest! {
    #[test]
    fn what_the_operator_renders_for_run_parses_back_to_itself(run in arb_run()) {
        let rendered = run.render();
        let Command::Run(c) = parsed(&rendered) else { panic!("{rendered:?} is not run") };
        prop_assert_eq!(c.tcp, run.tcp.unwrap_or(true));
        if c.tcp {
            prop_assert_eq!(Some(c.port), run.port);
        }
        prop_assert_eq!(c.tls.is_some(), c.tcp && run.tls != Some(false), "{:?}", rendered);
        if let (Some(dir), Some(tls)) = (&run.tls_dir, &c.tls) {
            prop_assert_eq!(&tls.ca, &PathBuf::from(dir).join(dind_contract::server_tls::CA));
        }
        prop_assert_eq!(c.tls_generate, run.tls_generate.map(PathBuf::from));
        prop_assert_eq!(c.socket, PathBuf::from(run.socket.as_deref().unwrap_or(dind_contract::SOCKET)));
        prop_assert_eq!(c.socket_group, run.socket_group);
        prop_assert_eq!(c.mtu, run.mtu);
        prop_assert_eq!(c.storage_driver, run.storage_driver);
        prop_assert_eq!(c.registry_mirrors, run.registry_mirrors);
        prop_assert_eq!(c.insecure_registries, run.insecure_registries);
        let config: Map<String, Value> = run.daemon_config.map(|j| serde_json::from_str(&j).unwrap()).unwrap_or_default();
        prop_assert_eq!(c.daemon_config, config);
        prop_assert_eq!(Some(c.shutdown_timeout), run.shutdown_timeout);
        prop_assert_eq!(c.extra_args, run.dockerd_args);
    }

    #[test]
    fn checks_and_install_parse_back_to_themselves(wait in any::<bool>(), ms in 0u64..=3_600_000, dir in "/[a-z]{1,8}(/[a-z]{1,8}){0,2}") {
        let timeout_ms = 1 + ms % Check::max_ms(wait);
        let socket = PathBuf::from(dind_contract::SOCKET);
        let want = if wait { Command::Wait { socket, timeout_ms } } else { Command::Probe { socket, timeout_ms } };
        prop_assert_eq!(parsed(&Check { wait, timeout_ms }.render()), want);
        prop_assert_eq!(parsed(&Install { dir: dir.clone() }.render()), Command::Install { dir: PathBuf::from(dir) });
    }
}
