//! `dind-init client-setup`: the init container the operator's webhook injects into a build
//! pod. It writes a Docker CLI configuration whose current context is the daemon (see
//! [`context`]), then waits until the daemon answers `/_ping` (over mutual TLS when the pod has
//! certificates), so the pod's own containers start only when Docker answers.
//!
//! Everything it may write is in the pod's config emptyDir; it never touches the certificates.

mod context;
pub mod mint;
mod ping;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dind_contract::args::ClientSetup;

/// `client-setup`'s settings (flags only: it is injected, never typed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// `tcp://HOST:PORT` of the daemon.
    pub host: String,
    /// The Docker configuration directory to write (DOCKER_CONFIG).
    pub config: PathBuf,
    /// The context's name.
    pub context: String,
    /// The client certificates (ca.pem, cert.pem, key.pem); None: TLS is off.
    pub certs: Option<PathBuf>,
    pub timeout: Duration,
    /// The job's own `config.json` files (mounted from its volumes), merged in, in order.
    pub merge: Vec<PathBuf>,
}

/// Parses `client-setup`'s flags (the contract's [`ClientSetup`]), naming any bad one.
pub fn parse(args: &[String]) -> Result<Setup, String> {
    let c = ClientSetup::parse(args)?;
    Ok(Setup {
        host: c.host,
        config: PathBuf::from(c.config),
        context: c.context,
        certs: c.certs.map(PathBuf::from),
        timeout: Duration::from_secs(u64::from(c.timeout_secs)),
        merge: c.merge.into_iter().map(PathBuf::from).collect(),
    })
}

/// Writes the context, then waits for the daemon. The error is what the pod's events and
/// `kubectl logs -c dind-wait` show.
pub fn run(setup: &Setup) -> Result<Duration, String> {
    context::write(setup).map_err(|e| format!("writing the Docker configuration in {}: {e}", setup.config.display()))?;
    let started = Instant::now();
    let mut last = String::new();
    let mut attempts = 0u32;
    // Per-pod certificates are written by the `client-certs` sidecar: read them each try
    // until they are there (its startup probe makes that the first try, as a rule).
    let mut tls = None;
    loop {
        attempts += 1;
        let left = setup.timeout.saturating_sub(started.elapsed());
        let answered = match (&setup.certs, &tls) {
            (Some(dir), None) => ping::tls_config(dir).map_err(|e| format!("client certificates in {}: {e}", dir.display())).map(|c| {
                tls = Some(c);
            }),
            _ => Ok(()),
        }
        .and_then(|()| {
            ping::ping(&setup.host, tls.clone(), left.clamp(Duration::from_millis(100), Duration::from_secs(3))).map_err(|e| e.to_string())
        });
        match answered {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => {
                if e != last {
                    tracing::info!(host = %setup.host, error = %e, "the daemon does not answer yet");
                    last = e;
                }
            }
        }
        if started.elapsed() >= setup.timeout {
            if let (Some(dir), None) = (&setup.certs, &tls) {
                return Err(format!(
                    "no client certificate in {} within {}s: {last}. A pod with a certificate of its own gets it from its \
                     dind-certs sidecar: kubectl logs POD -c dind-certs says why it has none",
                    dir.display(),
                    setup.timeout.as_secs()
                ));
            }
            return Err(format!(
                "the Docker daemon at {} did not answer /_ping within {}s ({attempts} tries); last error: {last}. \
                 Is the DindDaemon Ready (kubectl get dind)? Its pods Running (kubectl get pods -l dind.dev/daemon)?",
                setup.host,
                setup.timeout.as_secs()
            ));
        }
        // Quick at first (a daemon that just turned Ready is routed within a second), then calmer.
        let pause = if started.elapsed() < Duration::from_secs(5) { 100 } else { 1000 };
        std::thread::sleep(Duration::from_millis(pause).min(setup.timeout.saturating_sub(started.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn parses_what_the_webhook_writes() {
        let s = parse(&args(&[
            "--host=tcp://ci-0.ci-daemons.b.svc:2376",
            "--config=/dind/docker-config",
            "--context=dind",
            "--timeout=120s",
            "--certs",
            "/dind/client-certs",
            "--merge=/dind/job-docker-config/0/config.json",
            "--merge=/dind/job-docker-config/1/c.json",
        ]))
        .unwrap();
        assert_eq!(s.merge, [PathBuf::from("/dind/job-docker-config/0/config.json"), PathBuf::from("/dind/job-docker-config/1/c.json")]);
        assert_eq!(s.host, "tcp://ci-0.ci-daemons.b.svc:2376");
        assert_eq!(s.certs, Some(PathBuf::from("/dind/client-certs")));
        assert_eq!(s.timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_flags_are_named() {
        for (bad, word) in [
            (vec!["--config=/c"], "--host is required"),
            (vec!["--host=unix:///x", "--config=/c"], "--host"),
            (vec!["--host=tcp://h", "--config=/c"], "no port"),
            (vec!["--host=tcp://h:1", "--config=/c", "--timeout=2m"], "--timeout"),
            (vec!["--host=tcp://h:1", "--config=/c", "--context=default"], "--context"),
            (vec!["--host=tcp://h:1", "--config=/c", "--what=1"], "--what"),
            (vec!["--host=tcp://h:1", "--config=/c", "--merge=rel/config.json"], "--merge"),
        ] {
            let err = parse(&args(&bad)).unwrap_err();
            assert!(err.contains(word), "{bad:?}: {err}");
        }
    }

    #[test]
    fn gives_up_at_the_deadline_with_a_message_naming_the_daemon() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            host: format!("tcp://127.0.0.1:{port}"),
            config: dir.path().to_path_buf(),
            context: "dind".into(),
            certs: None,
            timeout: Duration::from_secs(1),
            merge: vec![],
        };
        let started = Instant::now();
        let err = run(&setup).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(err.contains(&setup.host) && err.contains("within 1s"), "{err}");
        assert!(dir.path().join("config.json").exists(), "the context is written before the wait");
    }

    #[test]
    fn returns_once_a_plain_daemon_answers() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            host: format!("tcp://127.0.0.1:{port}"),
            config: dir.path().to_path_buf(),
            context: "dind".into(),
            certs: None,
            timeout: Duration::from_secs(5),
            merge: vec![],
        };
        run(&setup).unwrap();
        assert!(server.join().unwrap().starts_with("GET /_ping HTTP/1.1\r\n"));
    }
}
