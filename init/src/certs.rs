//! `--tls-generate=DIR`: the mutual TLS of a sidecar that listens on TCP, made in its pod.
//!
//! A sidecar daemon serves the containers of its own pod only, so its CA lives and dies with
//! the pod: dind-init makes a CA, a server certificate for the names the pod's containers use
//! (`localhost`, loopback addresses, `docker`) and a client certificate, once (a restarted
//! sidecar keeps them: the clients already hold them). No key leaves the pod, and no Secret
//! is read or written. The client files are readable by any user of the pod's containers
//! (a job may run as any uid), the server key by root only.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use dind_contract::{client_tls, generated_tls, server_tls};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::Error;

/// How long the certificates are valid: longer than any pod should live.
const LIFETIME: Duration = Duration::days(365);
/// Validity starts this much before now, for clocks that lag.
const BACKDATE: Duration = Duration::minutes(5);

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Made,
    Kept,
}

/// Makes the CA, server and client files in `dir` unless all of them are there.
pub fn ensure(dir: &Path) -> Result<Outcome, Error> {
    let server = dir.join(generated_tls::SERVER);
    let client = dir.join(generated_tls::CLIENT);
    let files = [
        server.join(server_tls::CA),
        server.join(server_tls::CERT),
        server.join(server_tls::KEY),
        client.join(client_tls::CA),
        client.join(client_tls::CERT),
        client.join(client_tls::KEY),
    ];
    if files.iter().all(|f| f.is_file()) {
        return Ok(Outcome::Kept);
    }
    let made = make().map_err(|e| Error::Tls(e.to_string()))?;
    for (d, mode) in [(dir, 0o755), (server.as_path(), 0o700), (client.as_path(), 0o755)] {
        fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(d, e))?;
    }
    // The server's files last: they are what dockerd starts with, and `ensure` runs again on a
    // restart, so a half-written set is made anew rather than served.
    write(&files[3], &made.ca, 0o644)?;
    write(&files[4], &made.client_cert, 0o644)?;
    write(&files[5], &made.client_key, 0o644)?;
    write(&files[0], &made.ca, 0o644)?;
    write(&files[1], &made.server_cert, 0o644)?;
    write(&files[2], &made.server_key, 0o600)?;
    Ok(Outcome::Made)
}

/// Writes `path` whole or not at all (a temporary file renamed into place).
fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

struct Made {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "dind.dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn make() -> Result<Made, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = KeyPair::generate_for(alg)?;
    let mut ca = CertificateParams::default();
    // Unique per pod, so that two pods' CAs are never mistaken for one another.
    ca.distinguished_name = name(&format!("dind sidecar CA {}", now.unix_timestamp_nanos()));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + LIFETIME;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |common_name: &str, usage: ExtendedKeyUsagePurpose, sans: Vec<SanType>| -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate_for(alg)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(common_name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        p.subject_alt_names = sans;
        p.not_before = now - BACKDATE;
        p.not_after = now + LIFETIME;
        Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    let sans = generated_tls::SERVER_NAMES
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => (*n).to_string().try_into().map(SanType::DnsName),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (server_cert, server_key) = leaf("dind sidecar", ExtendedKeyUsagePurpose::ServerAuth, sans)?;
    let (client_cert, client_key) = leaf("dind sidecar client", ExtendedKeyUsagePurpose::ClientAuth, Vec::new())?;
    Ok(Made { ca: ca_cert.pem(), server_cert, server_key, client_cert, client_key })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn makes_a_chain_that_verifies_both_ways_and_keeps_it_on_a_restart() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        assert_eq!(ensure(&dir).unwrap(), Outcome::Made);
        let server = dir.join("server");
        let client = dir.join("client");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&server.join("ca.crt"))).unwrap();
        let roots = Arc::new(roots);
        let now = UnixTime::now();
        let server_verifier = rustls::client::WebPkiServerVerifier::builder(roots.clone()).build().unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "docker"] {
            server_verifier
                .verify_server_cert(&der(&server.join("tls.crt")), &[], &ServerName::try_from(name).unwrap(), &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(
            server_verifier
                .verify_server_cert(&der(&server.join("tls.crt")), &[], &ServerName::try_from("evil").unwrap(), &[], now)
                .is_err()
        );
        let client_verifier = rustls::server::WebPkiClientVerifier::builder(roots).build().unwrap();
        client_verifier.verify_client_cert(&der(&client.join("cert.pem")), &[], now).unwrap();
        assert_eq!(fs::read(client.join("ca.pem")).unwrap(), fs::read(server.join("ca.crt")).unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&server.join("tls.key")), mode(&client.join("key.pem"))), (0o600, 0o644));

        let before = fs::read(client.join("cert.pem")).unwrap();
        assert_eq!(ensure(&dir).unwrap(), Outcome::Kept);
        assert_eq!(fs::read(client.join("cert.pem")).unwrap(), before, "a restarted sidecar keeps what its clients hold");
        fs::remove_file(server.join("tls.key")).unwrap();
        assert_eq!(ensure(&dir).unwrap(), Outcome::Made, "a half set is made anew");
    }
}
