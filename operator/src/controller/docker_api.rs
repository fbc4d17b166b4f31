//! Asks a daemon what it runs (`GET /info`) and what it keeps (`GET /system/df`), over the
//! same mutual TLS a client uses.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::model::tls::Bundle;

/// A rustls client config that trusts only this DindDaemon's CA and presents its client cert.
pub fn client_config(certs: &Bundle) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certs.ca.cert_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let chain =
        CertificateDer::pem_slice_iter(certs.client.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(certs.client.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key).map_err(|e| e.to_string())
}

/// What a daemon presented in a TLS handshake, verified against the DindDaemon's CA.
#[derive(Debug)]
pub enum Presented {
    /// Its leaf certificate (DER).
    Leaf(Vec<u8>),
    /// A certificate clients refuse: one the CA did not issue (the CA was renewed since the
    /// daemon started), or one that has expired (renewed too late, say after a long outage).
    Untrusted,
}

/// Only a TLS handshake with the daemon at `addr`: the certificate it serves.
pub async fn presented_certificate(addr: &str, certs: &Bundle, server_name: &str) -> Result<Presented, String> {
    let handshake = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(certs)?));
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        match connector.connect(name, stream).await {
            Ok(s) => {
                let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                leaf.map(Presented::Leaf).ok_or_else(|| "no certificate presented".to_string())
            }
            Err(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                    | rustls::CertificateError::BadSignature
                    | rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. },
                )) => Ok(Presented::Untrusted),
                _ => Err(e.to_string()),
            },
        }
    };
    tokio::time::timeout(Duration::from_secs(3), handshake).await.map_err(|_| "timed out".to_string())?
}

/// Whether the daemon works for someone now: a running container (`/containers/json` lists only
/// running ones), or a build-cache record in use (a build under way; BuildKit marks what it has
/// mounted).
pub async fn busy(addr: &str, tls: Option<(&Bundle, &str)>) -> Result<bool, String> {
    let running = tokio::time::timeout(Duration::from_secs(3), get(addr, tls, "/containers/json?limit=1"))
        .await
        .map_err(|_| "timed out".to_string())??;
    let running: serde_json::Value = serde_json::from_str(&running).map_err(|e| format!("/containers/json is not JSON: {e}"))?;
    if running.as_array().is_none_or(|a| !a.is_empty()) {
        return Ok(true);
    }
    let df = tokio::time::timeout(DF_TIMEOUT, call(addr, tls, "GET", "/system/df?type=build-cache", MAX_DF_ANSWER))
        .await
        .map_err(|_| "timed out".to_string())??;
    let df: serde_json::Value = serde_json::from_str(&df).map_err(|e| format!("/system/df is not JSON: {e}"))?;
    Ok(df["BuildCache"].as_array().is_some_and(|records| records.iter().any(|r| r["InUse"] == true)))
}

/// The daemon's storage driver, from `/info`. `tls`: the certificates and the server name to
/// verify, or None for a daemon with TLS off.
pub async fn storage_driver(ip: &str, port: i32, tls: Option<(&Bundle, &str)>) -> Result<String, String> {
    let body = tokio::time::timeout(Duration::from_secs(3), get(&format!("{ip}:{port}"), tls, "/info"))
        .await
        .map_err(|_| "timed out".to_string())??;
    let info: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("/info is not JSON: {e}"))?;
    info.get("Driver").and_then(|d| d.as_str()).map(str::to_string).ok_or_else(|| "/info has no Driver".into())
}

/// What the daemon keeps on its volume, from `/system/df` (the figures of `docker system df`).
pub async fn disk_usage(ip: &str, port: i32, tls: Option<(&Bundle, &str)>) -> Result<crate::disk::DiskUsage, String> {
    disk_usage_at(&format!("{ip}:{port}"), tls).await
}

/// [`disk_usage`] of the daemon at `addr` (host:port).
pub async fn disk_usage_at(addr: &str, tls: Option<(&Bundle, &str)>) -> Result<crate::disk::DiskUsage, String> {
    let body =
        tokio::time::timeout(DF_TIMEOUT, call(addr, tls, "GET", DF_PATH, MAX_DF_ANSWER)).await.map_err(|_| "timed out".to_string())??;
    crate::disk::parse_df(&body)
}

/// Images and build cache only (API ≥ 1.42; older daemons answer everything): their sizes are
/// kept in metadata, while sizing containers' writable layers and volumes walks their files,
/// which a daemon should not do every minute for us.
const DF_PATH: &str = "/system/df?type=image&type=build-cache";

/// `/system/df` lists every image and build-cache record (a few hundred bytes each): a busy
/// daemon's answer is larger than `/info`, still bounded.
pub const MAX_DF_ANSWER: u64 = 16 * 1024 * 1024;
/// dockerd sums the sizes of its layers and records for `/system/df`: it takes longer than `/info`.
const DF_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an answer the operator reads: a daemon's image is chosen by its tenant, so what
/// it answers is untrusted; `/info` is a few KiB.
pub const MAX_ANSWER: u64 = 256 * 1024;

/// Reads at most `max` bytes; more is an error, not a larger allocation.
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(reader: R, out: &mut Vec<u8>, max: u64) -> Result<(), String> {
    reader.take(max + 1).read_to_end(out).await.map_err(|e| e.to_string())?;
    if out.len() as u64 > max {
        return Err(format!("answer larger than {max} bytes"));
    }
    Ok(())
}

/// One `GET path` to a daemon at `addr` (host:port); the body of a 2xx answer of at most
/// [`MAX_ANSWER`] bytes.
pub async fn get(addr: &str, tls: Option<(&Bundle, &str)>, path: &str) -> Result<String, String> {
    call(addr, tls, "GET", path, MAX_ANSWER).await
}

/// One request without a body to a daemon at `addr` (host:port): the body of a 2xx answer of
/// at most `max` bytes, or the status line and what the daemon said.
pub async fn call(addr: &str, tls: Option<(&Bundle, &str)>, method: &str, path: &str, max: u64) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let length = if method == "GET" { "" } else { "Content-Length: 0\r\n" };
    let request = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n{length}\r\n");
    let mut response = Vec::new();
    match tls {
        Some((certs, server_name)) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(certs)?));
            let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
            let mut s = connector.connect(name, stream).await.map_err(|e| e.to_string())?;
            s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            read_bounded(s, &mut response, max).await?;
        }
        None => {
            let mut s = stream;
            s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            read_bounded(s, &mut response, max).await?;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    let code = head.split_whitespace().nth(1).unwrap_or_default();
    if !head.starts_with("HTTP/1.") || !code.starts_with('2') || code.len() != 3 {
        let said: String = body.trim().chars().take(300).collect();
        return Err(format!("answer: {} {said}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon (whose image its tenant controls) that answers without end is cut off, not
    /// read into memory.
    #[tokio::test]
    async fn an_endless_answer_is_cut_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            let chunk = vec![b'x'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let err = get(&addr.to_string(), None, "/info").await.unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
