//! `dind-init client-setup`: the init container the operator's webhook injects into a build
//! pod. It writes a Docker CLI configuration whose current context is the daemon (see
//! [`context`]), then waits until the daemon answers `/_ping` (over mutual TLS when the pod has
//! certificates), so the pod's own containers start only when Docker answers.
//!
//! Everything it may write is in the pod's config emptyDir; it never touches the certificates.

mod context;
mod ping;

use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// Parses `client-setup`'s flags (`--name=value` or `--name value`), naming any bad one.
pub fn parse(args: &[String]) -> Result<Setup, String> {
    let mut host = None;
    let mut config = None;
    let mut context = dind_contract::client_pod::CONTEXT.to_string();
    let mut certs = None;
    let mut merge = Vec::new();
    let mut timeout = Duration::from_secs(u64::from(dind_contract::client_pod::WAIT_SECONDS));
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(body) = arg.strip_prefix("--") else { return Err(format!("{arg}: unexpected argument")) };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, v.to_string()),
            None => {
                let v = args.get(i).ok_or_else(|| format!("--{body}: needs a value"))?.clone();
                i += 1;
                (body, v)
            }
        };
        match name {
            "host" => {
                let rest = value.strip_prefix("tcp://").ok_or_else(|| format!("--host: {value:?} must be tcp://HOST:PORT"))?;
                let (h, p) = rest.rsplit_once(':').ok_or_else(|| format!("--host: {value:?} has no port"))?;
                if h.is_empty() || p.parse::<u16>().is_err() {
                    return Err(format!("--host: {value:?} must be tcp://HOST:PORT"));
                }
                host = Some(value);
            }
            "config" => config = Some(PathBuf::from(value)),
            "context" if !value.is_empty() && value != "default" => context = value,
            "context" => return Err(format!("--context: {value:?} cannot name a context")),
            "certs" => certs = Some(PathBuf::from(value)),
            "merge" if value.starts_with('/') => merge.push(PathBuf::from(value)),
            "merge" => return Err(format!("--merge: {value:?} must be an absolute path")),
            "timeout" => {
                let secs = value.strip_suffix('s').unwrap_or(&value);
                let secs: u64 = secs.parse().map_err(|_| format!("--timeout: {value:?} must be seconds, such as 120s"))?;
                if !(1..=3600).contains(&secs) {
                    return Err(format!("--timeout: {value:?} must be 1s to 3600s"));
                }
                timeout = Duration::from_secs(secs);
            }
            other => return Err(format!("--{other}: unknown flag of client-setup")),
        }
    }
    Ok(Setup { host: host.ok_or("--host is required")?, config: config.ok_or("--config is required")?, context, certs, timeout, merge })
}

/// Writes the context, then waits for the daemon. The error is what the pod's events and
/// `kubectl logs -c dind-wait` show.
pub fn run(setup: &Setup) -> Result<Duration, String> {
    context::write(setup).map_err(|e| format!("writing the Docker configuration in {}: {e}", setup.config.display()))?;
    let tls = match &setup.certs {
        Some(dir) => Some(ping::tls_config(dir).map_err(|e| format!("client certificates in {}: {e}", dir.display()))?),
        None => None,
    };
    let started = Instant::now();
    let mut last = String::new();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = setup.timeout.saturating_sub(started.elapsed());
        match ping::ping(&setup.host, tls.clone(), left.clamp(Duration::from_millis(100), Duration::from_secs(3))) {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => {
                let e = e.to_string();
                if e != last {
                    tracing::info!(host = %setup.host, error = %e, "the daemon does not answer yet");
                    last = e;
                }
            }
        }
        if started.elapsed() >= setup.timeout {
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
