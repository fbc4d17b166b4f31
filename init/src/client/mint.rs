//! `dind-init client-certs`: the native sidecar of a build pod with a certificate of its own
//! (see `dind_contract::per_pod`). It makes a key pair once (the key never leaves the pod's
//! in-memory emptyDir), asks the operator to sign it, authenticated by the pod's projected
//! ServiceAccount token, writes `cert.pem` and `ca.pem` next to the key, and asks again once
//! [`per_pod::RENEW_AT_PERCENT`] of the certificate's life has passed, for as long as the pod
//! lives. A failed request is retried (1 s, doubling to 30 s): an operator that restarts or
//! rolls meanwhile costs nothing while the current certificate is still valid.
//!
//! Every file is written to a temporary name and renamed, so a client never reads half a file;
//! the key stays the same across renewals, so `key.pem` and `cert.pem` always match.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dind_contract::args::ClientCerts;
use dind_contract::{client_tls, per_pod};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// What the operator answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minted {
    pub certificate: String,
    pub ca: String,
    /// Unix seconds.
    pub not_after: u64,
}

/// The request body.
pub fn request_body(daemon: &str, csr_pem: &str) -> String {
    serde_json::json!({per_pod::REQ_DAEMON: daemon, per_pod::REQ_CSR: csr_pem}).to_string()
}

/// Parses the operator's answer (status and body): the certificate, or the operator's words.
pub fn parse_answer(status: u16, body: &str) -> Result<Minted, String> {
    if status != 200 {
        return Err(format!("the operator refused ({status}): {}", body.trim()));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("the operator's answer is not JSON: {e}"))?;
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("the operator's answer has no {k:?}"));
    Ok(Minted {
        certificate: text(per_pod::RESP_CERTIFICATE)?,
        ca: text(per_pod::RESP_CA)?,
        not_after: v[per_pod::RESP_NOT_AFTER].as_u64().ok_or("the operator's answer has no notAfter")?,
    })
}

/// When to ask again: after [`per_pod::RENEW_AT_PERCENT`] of the time left (at least 1 s).
pub fn renew_in(now: u64, not_after: u64) -> Duration {
    let left = not_after.saturating_sub(now);
    Duration::from_secs((left * u64::from(per_pod::RENEW_AT_PERCENT) / 100).max(1))
}

/// The pause after a failed request: doubling from 1 s to 30 s, and never past half the
/// current certificate's time left (when there is one), so a long outage still retries often.
pub fn retry_in(failures: u32, left: Option<Duration>) -> Duration {
    let backoff = Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30));
    match left {
        Some(left) if left > Duration::ZERO => backoff.min((left / 2).max(Duration::from_secs(1))),
        _ => backoff,
    }
}

/// `--check`: Ok when the certificate and its key are there (the startup probe).
pub fn check(dir: &Path) -> Result<(), String> {
    for f in [client_tls::CERT, client_tls::KEY, client_tls::CA] {
        let len = std::fs::metadata(dir.join(f)).map_err(|e| format!("{f}: {e}"))?.len();
        if len == 0 {
            return Err(format!("{f} is empty"));
        }
    }
    Ok(())
}

/// Writes `content` to `dir/name` (mode 0444: the pod's containers run as any user; the
/// directory is the pod's own emptyDir) through a temporary file and a rename.
fn write(dir: &Path, name: &str, content: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, dir.join(name))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A TLS client trusting only the operator's CAs (base64 of their PEM).
fn operator_tls(ca_b64: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = base64::engine::general_purpose::STANDARD.decode(ca_b64.trim()).map_err(|e| format!("--operator-ca: not base64: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| format!("--operator-ca: {e}"))?).map_err(|e| format!("--operator-ca: {e}"))?;
    }
    if roots.is_empty() {
        return Err("--operator-ca holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One `POST` to the operator: its status and body.
fn post(operator: &str, tls: &Arc<rustls::ClientConfig>, token: &str, body: &str) -> io::Result<(u16, String)> {
    let authority = operator.strip_prefix("https://").unwrap_or(operator).trim_end_matches('/');
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:443") };
    let hostname = super::ping::host_of(&authority);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {hostname}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        per_pod::PATH,
        body.len()
    );
    let answer = super::ping::exchange(&authority, Some(tls.clone()), Duration::from_secs(10), request.as_bytes(), 256 * 1024)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| io::Error::other("the operator's answer has no body"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| io::Error::other("no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// Gets the first certificate, then renews it until the process is stopped. Returns only on a
/// setting that cannot work (the caller exits non-zero: the kubelet restarts the sidecar).
pub fn run(c: &ClientCerts) -> Result<(), String> {
    let dir = Path::new(&c.dir);
    let tls = operator_tls(&c.operator_ca)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("making a key: {e}"))?;
    write(dir, client_tls::KEY, &key.serialize_pem()).map_err(|e| format!("writing {}/{}: {e}", c.dir, client_tls::KEY))?;
    let (namespace, name) = c.daemon.split_once('/').unwrap_or_default();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("client of {namespace}/{name}"));
    let csr = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| format!("making the request: {e}"))?;
    let body = request_body(&c.daemon, &csr);
    let mut not_after: Option<u64> = None;
    let mut failures = 0u32;
    let mut last_error = String::new();
    loop {
        let token_path = Path::new(&c.token).join(per_pod::TOKEN_FILE);
        let attempt = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("reading the pod's token {}: {e}", token_path.display()))
            .and_then(|token| post(&c.operator, &tls, token.trim(), &body).map_err(|e| format!("asking {}: {e}", c.operator)))
            .and_then(|(status, text)| parse_answer(status, &text));
        let pause = match attempt {
            Ok(minted) => {
                write(dir, client_tls::CA, &minted.ca)
                    .and_then(|()| write(dir, client_tls::CERT, &minted.certificate))
                    .map_err(|e| format!("writing {}: {e}", c.dir))?;
                let first = not_after.is_none();
                not_after = Some(minted.not_after);
                failures = 0;
                last_error.clear();
                let pause = renew_in(now(), minted.not_after);
                tracing::info!(daemon = %c.daemon, expires_in_s = minted.not_after.saturating_sub(now()), renew_in_s = pause.as_secs(),
                    "{}", if first { "client certificate minted" } else { "client certificate renewed" });
                pause
            }
            Err(e) => {
                let left = not_after.map(|n| Duration::from_secs(n.saturating_sub(now())));
                if e != last_error {
                    tracing::warn!(daemon = %c.daemon, error = %e, seconds_left = left.map(|l| l.as_secs()), "no certificate this time; will retry");
                    last_error = e;
                }
                failures += 1;
                retry_in(failures, left)
            }
        };
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_sixty_percent_of_the_time_left_and_retries_sooner_near_expiry() {
        assert_eq!(renew_in(1000, 4600), Duration::from_secs(2160));
        assert_eq!(renew_in(1000, 1000), Duration::from_secs(1));
        assert_eq!(retry_in(1, None), Duration::from_secs(2));
        assert_eq!(retry_in(9, None), Duration::from_secs(30));
        assert_eq!(retry_in(9, Some(Duration::from_secs(10))), Duration::from_secs(5));
        assert_eq!(retry_in(9, Some(Duration::ZERO)), Duration::from_secs(30));
    }

    #[test]
    fn a_refusal_carries_the_operators_words() {
        let e = parse_answer(403, "pod x/y: namespace \"x\" is not granted\n").unwrap_err();
        assert!(e.contains("403") && e.contains("not granted"), "{e}");
        let ok = parse_answer(200, r#"{"certificate":"C","ca":"A","notAfter":12}"#).unwrap();
        assert_eq!(ok, Minted { certificate: "C".into(), ca: "A".into(), not_after: 12 });
        assert!(parse_answer(200, "{}").unwrap_err().contains("certificate"));
    }

    #[test]
    fn check_wants_all_three_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(dir.path()).unwrap_err().contains("cert.pem"));
        for f in [client_tls::CERT, client_tls::KEY, client_tls::CA] {
            write(dir.path(), f, "x").unwrap();
        }
        check(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(client_tls::KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
    }
}
