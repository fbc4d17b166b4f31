use super::*;
use proptest::prelude::*;

fn arb_client_setup() -> impl Strategy<Value = ClientSetup> {
    (
        "[a-z][a-z0-9.-]{0,30}",
        1u16..,
        "/[a-z/._-]{1,30}",
        "[a-z][a-z0-9-]{0,15}",
        proptest::option::of("/[a-z/._-]{1,30}"),
        1u32..=3600,
        proptest::collection::vec("/[a-z/._-]{1,30}", 0..3),
    )
        .prop_map(|(h, port, config, context, certs, timeout_secs, merge)| ClientSetup {
            host: format!("tcp://{h}:{port}"),
            config,
            context,
            certs,
            timeout_secs,
            merge,
        })
        .prop_filter("default is the CLI's own context", |c| c.context != "default")
}

proptest! {
    #[test]
    fn client_setup_round_trips(c in arb_client_setup()) {
        let rendered = c.render();
        prop_assert_eq!(rendered[0].as_str(), sub::CLIENT_SETUP);
        prop_assert_eq!(ClientSetup::parse(&rendered[1..]).unwrap(), c);
    }
}

proptest! {
    #[test]
    fn client_certs_round_trips(
        host in "[a-z][a-z0-9.-]{0,30}", port in 1u16.., ca in "[A-Za-z0-9+/=]{1,60}",
        ns in "[a-z][a-z0-9-]{0,20}", name in "[a-z][a-z0-9-]{0,20}", token in "/[a-z/._-]{1,30}", dir in "/[a-z/._-]{1,30}",
    ) {
        let c = ClientCerts { operator: format!("https://{host}:{port}"), operator_ca: ca, daemon: format!("{ns}/{name}"), token, dir };
        let rendered = c.render();
        prop_assert_eq!(rendered[0].as_str(), sub::CLIENT_CERTS);
        prop_assert_eq!(ClientCerts::parse(&rendered[1..]).unwrap(), Ok(c.clone()));
        let check = ClientCerts::check(&c.dir);
        prop_assert_eq!(ClientCerts::parse(&check[1..]).unwrap(), Err(c.dir));
    }
}

#[test]
fn client_certs_names_a_bad_flag() {
    let args = |l: &[&str]| l.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    for (bad, word) in [
        (vec!["--operator=http://o:443", "--dir=/d"], "--operator"),
        (vec!["--daemon=ci", "--dir=/d"], "--daemon"),
        (vec!["--dir=rel"], "--dir"),
        (vec!["--what=1", "--dir=/d"], "--what"),
        (vec!["--check"], "--dir is required"),
        (vec!["--dir=/d"], "--operator is required"),
    ] {
        let e = ClientCerts::parse(&args(&bad)).unwrap_err();
        assert!(e.contains(word), "{bad:?}: {e}");
    }
}

#[test]
fn run_renders_in_a_stable_order_and_dockerd_flags_last() {
    let run = Run {
        port: Some(2376),
        shutdown_timeout: Some(15),
        socket: Some("/dind/sock/docker.sock".into()),
        tls_generate: Some("/dind/certs".into()),
        registry_mirrors: vec!["https://m".into(), "https://n".into()],
        dockerd_args: vec!["--debug".into()],
        ..Run::default()
    };
    assert_eq!(
        run.render(),
        [
            "--port=2376",
            "--shutdown-timeout=15",
            "--socket=/dind/sock/docker.sock",
            "--tls-generate=/dind/certs",
            "--registry-mirror=https://m",
            "--registry-mirror=https://n",
            "--",
            "--debug"
        ]
    );
    assert_eq!(Check { wait: true, timeout_ms: 5 }.render(), ["wait", "--timeout-ms=5"]);
    assert_eq!(Install { dir: "/dind/bin".into() }.render(), ["install", "/dind/bin"]);
}

/// One tokenizer for both client subcommands: `--name=value`, `--name value`, switches, and the
/// same words for what it refuses.
#[test]
fn client_flags_split_alike_and_refusals_name_the_argument() {
    let args = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        flags(&args(&["--a=1", "--b", "2", "--check", "--c="]), &["check"]).unwrap(),
        [("a", "1".to_string()), ("b", "2".to_string()), ("check", String::new()), ("c", String::new())]
    );
    assert_eq!(flags(&args(&["x"]), &[]).unwrap_err(), "x: unexpected argument");
    assert_eq!(flags(&args(&["--b"]), &[]).unwrap_err(), "--b: needs a value (--b=VALUE)");
    assert_eq!(ClientCerts::parse(&args(&["--check", "--dir", "/d"])).unwrap(), Err("/d".to_string()));
    assert_eq!(ClientSetup::parse(&args(&["--merge"])).unwrap_err(), "--merge: needs a value (--merge=VALUE)");
}
