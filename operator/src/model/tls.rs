//! Certificates of a DindDaemon: one CA per DindDaemon, a server and a client certificate.
//!
//! ECDSA P-256 via rcgen. Certificates are made once and kept in Secrets, so they survive
//! reconciles and operator restarts; a leaf is re-issued (by the same CA) at 2/3 of its life or
//! when the server's names change, the CA itself at 2/3 of its (longer) life.

use std::collections::BTreeSet;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::Error;

/// Lifetime of a DindDaemon's CA.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// Lifetime of a server or client certificate.
pub const LEAF_LIFETIME: Duration = Duration::days(365);

/// A certificate with its key, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the TLS Secrets hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca: Pair,
    pub server: Pair,
    pub client: Pair,
}

/// Validity and names read back from a PEM certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub dns_names: BTreeSet<String>,
    pub issuer_der: Vec<u8>,
    pub subject_der: Vec<u8>,
}

pub fn inspect(cert_pem: &str) -> Result<CertInfo, Error> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| Error::Tls(format!("PEM: {e}")))?;
    inspect_der(&pem.contents)
}

/// The first certificate of `cert_pem`, as DER.
pub fn der_of(cert_pem: &str) -> Result<Vec<u8>, Error> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| Error::Tls(format!("PEM: {e}")))?;
    Ok(pem.contents)
}

/// [`inspect`] of a DER certificate (as a TLS peer presents it).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Tls(format!("X.509: {e}")))?;
    let mut dns_names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    dns_names.insert((*d).to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) if ip.len() == 4 => {
                    dns_names.insert(format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]));
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names,
        issuer_der: cert.issuer().as_raw().to_vec(),
        subject_der: cert.subject().as_raw().to_vec(),
    })
}

/// True once `now` is past 2/3 of the certificate's life (or outside it).
pub fn needs_renewal(info: &CertInfo, now: OffsetDateTime) -> bool {
    let life = info.not_after - info.not_before;
    let renew_at = info.not_before + life * 2 / 3;
    now >= renew_at || now < info.not_before
}

/// The server's names: the client Service, the headless Service and (by wildcard) each
/// replica, short and fully qualified, plus localhost (for probes and port-forwards).
pub fn server_names(name: &str, namespace: &str, headless: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::from(["localhost".to_string(), "127.0.0.1".to_string()]);
    for svc in [name, headless] {
        names.insert(svc.to_string());
        names.insert(format!("{svc}.{namespace}"));
        names.insert(format!("{svc}.{namespace}.svc"));
        names.insert(format!("{svc}.{namespace}.svc.cluster.local"));
    }
    // Every daemon's own name (NAME-i.NAME-daemons...) by a wildcard, not one name per
    // replica: scaling must not re-issue the certificate, which would restart every daemon.
    for zone in [headless.to_string(), format!("{headless}.{namespace}.svc"), format!("{headless}.{namespace}.svc.cluster.local")] {
        names.insert(format!("*.{zone}"));
    }
    names
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "dind.dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// How far a certificate's validity starts before its issuance, for clocks that lag: 5 minutes,
/// or a tenth of a short lifetime (so that 2/3 of the life still lies ahead).
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10_i32).min(Duration::minutes(5))
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::Tls(e.to_string())
}

/// A new CA for the DindDaemon `namespace/name`.
pub fn new_ca(namespace: &str, name: &str, now: OffsetDateTime) -> Result<Pair, Error> {
    make_ca(&format!("dind CA {namespace}/{name}"), now, CA_LIFETIME)
}

/// A new self-signed CA named `common_name`, valid from `now` (backdated 5 minutes for clock
/// skew) for `lifetime`.
pub fn make_ca(common_name: &str, now: OffsetDateTime, lifetime: Duration) -> Result<Pair, Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - backdate(lifetime);
    params.not_after = now + lifetime;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// What kind of leaf to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Server,
    Client,
}

/// A leaf signed by `ca`: a server certificate for `names`, or a client certificate.
pub fn issue(ca: &Pair, kind: Leaf, common_name: &str, names: &BTreeSet<String>, now: OffsetDateTime) -> Result<Pair, Error> {
    issue_for(ca, kind, common_name, names, now, LEAF_LIFETIME)
}

/// [`issue`] with a lifetime of its own (the webhook's short-lived serving certificates).
pub fn issue_for(
    ca: &Pair,
    kind: Leaf,
    common_name: &str,
    names: &BTreeSet<String>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Pair, Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(tls_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(tls_err)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - backdate(lifetime);
    params.not_after = now + lifetime;
    match kind {
        Leaf::Server => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names = names
                .iter()
                .map(|n| match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => n.clone().try_into().map(SanType::DnsName),
                })
                .collect::<Result<_, _>>()
                .map_err(tls_err)?;
        }
        Leaf::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Who a per-pod client certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodIdentity {
    /// The URI SAN naming the pod (`dind_contract::per_pod::POD_URI_PREFIX`).
    pub fn uri(&self) -> String {
        format!("{}{}:{}:{}", dind_contract::per_pod::POD_URI_PREFIX, self.namespace, self.name, self.uid)
    }
}

/// A client certificate for the public key of `csr_pem` (a PEM certificate signing request,
/// whose signature proves the requester holds the key), signed by `ca`, naming `pod` (common
/// name `NAMESPACE/NAME`, a URI SAN with its uid) and valid from a minute before `now` until
/// `now + lifetime`. Nothing else of the request is used: the requester chooses no name, no
/// usage and no lifetime.
pub fn sign_request(ca: &Pair, csr_pem: &str, pod: &PodIdentity, now: OffsetDateTime, lifetime: Duration) -> Result<String, Error> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Error::Tls(format!("the certificate request: {e}")))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(tls_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{}/{}", pod.namespace, pod.name));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![SanType::URI(pod.uri().try_into().map_err(tls_err)?)];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + lifetime;
    let signed = rcgen::CertificateSigningRequestParams { params, public_key: csr.public_key };
    Ok(signed.signed_by(&issuer).map_err(tls_err)?.pem())
}

/// What the reconciler should do with the certificates it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub bundle: Bundle,
    /// Human-readable reasons for each certificate made this time (empty: all kept).
    pub issued: Vec<&'static str>,
}

/// Keeps what is still good, makes what is missing, renews what is due. Pure but for key
/// generation: the caller reads the Secrets and writes back `plan.bundle`.
pub fn plan(
    existing_ca: Option<Pair>,
    existing_server: Option<Pair>,
    existing_client: Option<Pair>,
    namespace: &str,
    name: &str,
    names: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<Plan, Error> {
    let mut issued = Vec::new();
    let ca = match existing_ca.filter(|ca| inspect(&ca.cert_pem).is_ok_and(|i| !needs_renewal(&i, now))) {
        Some(ca) => ca,
        None => {
            issued.push("ca");
            new_ca(namespace, name, now)?
        }
    };
    let ca_subject = inspect(&ca.cert_pem)?.subject_der;
    // A new CA invalidates every leaf; otherwise each leaf is judged on its own.
    let ca_renewed = !issued.is_empty();
    let still_good = |pair: &Pair, want_names: Option<&BTreeSet<String>>| {
        !ca_renewed
            && inspect(&pair.cert_pem)
                .is_ok_and(|i| !needs_renewal(&i, now) && i.issuer_der == ca_subject && want_names.is_none_or(|n| &i.dns_names == n))
    };
    let server = match existing_server.filter(|s| still_good(s, Some(names))) {
        Some(s) => s,
        None => {
            issued.push("server");
            issue(&ca, Leaf::Server, &format!("{name}.{namespace}"), names, now)?
        }
    };
    let client = match existing_client.filter(|c| still_good(c, None)) {
        Some(c) => c,
        None => {
            issued.push("client");
            issue(&ca, Leaf::Client, &format!("client of {namespace}/{name}"), &BTreeSet::new(), now)?
        }
    };
    Ok(Plan { bundle: Bundle { ca, server, client }, issued })
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
