//! One `GET /_ping` to a daemon over TCP, with mutual TLS when certificates are given; and the
//! one request/answer exchange (`exchange`) that and the certificate sidecar's request use.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dind_contract::client_tls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A client configuration that trusts only the daemon's CA and presents the client certificate.
pub fn tls_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(client_tls::CA)?) {
        roots.add(ca.map_err(|e| format!("{}: {e}", client_tls::CA))?).map_err(|e| format!("{}: {e}", client_tls::CA))?;
    }
    let chain = CertificateDer::pem_slice_iter(&read(client_tls::CERT)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", client_tls::CERT))?;
    let key = PrivateKeyDer::from_pem_slice(&read(client_tls::KEY)?).map_err(|e| format!("{}: {e}", client_tls::KEY))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// `HOST` of `HOST:PORT`.
pub(super) fn host_of(authority: &str) -> &str {
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Sends `request` to `authority` (`HOST:PORT`), over TLS verified for `HOST` when `tls` is
/// given, and reads the answer until the peer closes (at most `limit` bytes), all within
/// `timeout` per step.
pub(super) fn exchange(
    authority: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    request: &[u8],
    limit: u64,
) -> io::Result<Vec<u8>> {
    let hostname = host_of(authority);
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| io::Error::other(format!("{hostname}: no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut response = Vec::with_capacity(512);
    match tls {
        Some(config) => {
            let name = ServerName::try_from(hostname.to_string()).map_err(|e| io::Error::other(format!("{hostname}: {e}")))?;
            let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.write_all(request)?;
            read_answer(&mut stream, &mut response, limit)?;
        }
        None => {
            let mut tcp = tcp;
            tcp.write_all(request)?;
            read_answer(&mut tcp, &mut response, limit)?;
        }
    }
    Ok(response)
}

/// Ok when `host` (`tcp://HOST:PORT`) answers `GET /_ping` with 200 `OK` within `timeout`.
pub fn ping(host: &str, tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> io::Result<()> {
    let authority = host.strip_prefix("tcp://").unwrap_or(host);
    let request = format!("GET /_ping HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host_of(authority));
    let response = exchange(authority, tls, timeout, request.as_bytes(), 4096)?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") && text.ends_with("OK") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected answer: {status:?}")))
    }
}

/// Reads up to `limit` bytes; a TLS peer that closes without close_notify still gave its answer.
fn read_answer(stream: &mut impl Read, out: &mut Vec<u8>, limit: u64) -> io::Result<()> {
    match stream.take(limit).read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}
