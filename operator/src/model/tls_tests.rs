use super::*;

fn names() -> BTreeSet<String> {
    server_names("d", "ns", "d-daemons")
}

#[test]
fn server_names_cover_services_replicas_and_localhost() {
    let n = names();
    for want in ["localhost", "127.0.0.1", "d.ns.svc", "d-daemons.ns.svc", "*.d-daemons.ns.svc", "*.d-daemons.ns.svc.cluster.local"] {
        assert!(n.contains(want), "missing {want}");
    }
}

#[test]
fn the_server_certificate_verifies_for_any_replica_so_scaling_reissues_nothing() {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let p = plan(None, None, None, "ns", "d", &names(), OffsetDateTime::now_utc()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(p.bundle.ca.cert_pem.as_bytes()).unwrap()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots)).build().unwrap();
    let leaf = CertificateDer::from_pem_slice(p.bundle.server.cert_pem.as_bytes()).unwrap();
    for host in ["d-0.d-daemons.ns.svc", "d-63.d-daemons.ns.svc", "d-5.d-daemons.ns.svc.cluster.local", "d.ns.svc"] {
        let name = ServerName::try_from(host).unwrap();
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    let other = ServerName::try_from("x-0.other.ns.svc").unwrap();
    assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], UnixTime::now()).is_err());
    // The names do not depend on the number of replicas: the same plan keeps the certificate.
    let again = plan(
        Some(p.bundle.ca.clone()),
        Some(p.bundle.server.clone()),
        Some(p.bundle.client.clone()),
        "ns",
        "d",
        &names(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert!(again.issued.is_empty());
}

#[test]
fn fresh_plan_issues_all_three_and_server_has_names() {
    let now = OffsetDateTime::now_utc();
    let p = plan(None, None, None, "ns", "d", &names(), now).unwrap();
    assert_eq!(p.issued, vec!["ca", "server", "client"]);
    let server = inspect(&p.bundle.server.cert_pem).unwrap();
    assert_eq!(server.dns_names, names());
    let ca = inspect(&p.bundle.ca.cert_pem).unwrap();
    assert_eq!(server.issuer_der, ca.subject_der);
    assert!(server.not_after - server.not_before >= LEAF_LIFETIME);
}

#[test]
fn second_plan_keeps_everything() {
    let now = OffsetDateTime::now_utc();
    let first = plan(None, None, None, "ns", "d", &names(), now).unwrap();
    let b = first.bundle.clone();
    let again = plan(Some(b.ca), Some(b.server), Some(b.client), "ns", "d", &names(), now + Duration::days(30)).unwrap();
    assert!(again.issued.is_empty(), "{:?}", again.issued);
    assert_eq!(again.bundle, first.bundle);
}

#[test]
fn leaves_renew_at_two_thirds_of_their_life_with_the_same_ca() {
    let now = OffsetDateTime::now_utc();
    let b = plan(None, None, None, "ns", "d", &names(), now).unwrap().bundle;
    let before = now + Duration::days(240);
    let kept = plan(Some(b.ca.clone()), Some(b.server.clone()), Some(b.client.clone()), "ns", "d", &names(), before).unwrap();
    assert!(kept.issued.is_empty());
    let after = now + Duration::days(245);
    let renewed = plan(Some(b.ca.clone()), Some(b.server), Some(b.client), "ns", "d", &names(), after).unwrap();
    assert_eq!(renewed.issued, vec!["server", "client"]);
    assert_eq!(renewed.bundle.ca, b.ca, "the CA is kept, so clients keep trusting it");
}

#[test]
fn changed_names_reissue_only_the_server_certificate() {
    // (Replicas no longer change the names: see the wildcard test above.)
    let now = OffsetDateTime::now_utc();
    let b = plan(None, None, None, "ns", "d", &names(), now).unwrap().bundle;
    let mut more = names();
    more.insert("d-2.d-daemons.ns.svc".into());
    let p = plan(Some(b.ca.clone()), Some(b.server), Some(b.client.clone()), "ns", "d", &more, now).unwrap();
    assert_eq!(p.issued, vec!["server"]);
    assert_eq!(p.bundle.client, b.client);
    assert!(inspect(&p.bundle.server.cert_pem).unwrap().dns_names.contains("d-2.d-daemons.ns.svc"));
}

#[test]
fn ca_renewal_reissues_everything() {
    let now = OffsetDateTime::now_utc();
    let b = plan(None, None, None, "ns", "d", &names(), now).unwrap().bundle;
    let late = now + Duration::days(2500);
    let p = plan(Some(b.ca), Some(b.server), Some(b.client), "ns", "d", &names(), late).unwrap();
    assert_eq!(p.issued, vec!["ca", "server", "client"]);
}

#[test]
fn one_ca_per_daemon() {
    let now = OffsetDateTime::now_utc();
    let a = plan(None, None, None, "ns", "a", &names(), now).unwrap().bundle;
    let b = plan(None, None, None, "ns", "b", &names(), now).unwrap().bundle;
    assert_ne!(a.ca.cert_pem, b.ca.cert_pem);
    let a_client = inspect(&a.client.cert_pem).unwrap();
    assert_ne!(a_client.issuer_der, inspect(&b.ca.cert_pem).unwrap().subject_der);
}

#[test]
fn a_request_is_signed_for_the_pod_with_our_names_and_lifetime_only() {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let ca = new_ca("dind", "ci", now).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut asked = CertificateParams::new(vec!["kubernetes.default.svc".to_string()]).unwrap();
    asked.distinguished_name = dn("system:masters");
    asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
    let pod = PodIdentity { namespace: "team-a".into(), name: "build-1".into(), uid: "0a-1b".into() };
    let pem = sign_request(&ca, &csr, &pod, now, Duration::minutes(10)).unwrap();
    let info = inspect(&pem).unwrap();
    assert_eq!(info.not_after, now + Duration::minutes(10));
    assert!(info.dns_names.is_empty(), "names the request asked for are not given: {:?}", info.dns_names);
    assert_eq!(info.issuer_der, inspect(&ca.cert_pem).unwrap().subject_der);
    let der = der_of(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca());
    assert_eq!(cert.public_key().raw, x509_parser::parse_x509_certificate(&der).unwrap().1.public_key().raw);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        matches!(san.value.general_names.as_slice(), [x509_parser::extensions::GeneralName::URI(u)] if *u == "urn:dind.dev:pod:team-a:build-1:0a-1b")
    );
    assert!(cert.subject().to_string().contains("team-a/build-1"), "{}", cert.subject());
    // A request whose signature does not verify (a key it does not hold) is refused.
    // (A character in the middle of the last full base64 line: inside the signature.)
    let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
    let at = lines.len() - 3;
    let flipped: String = lines[at].chars().enumerate().map(|(i, c)| if i == 30 { if c == 'A' { 'B' } else { 'A' } } else { c }).collect();
    lines[at] = flipped;
    let tampered = lines.join("\n");
    assert!(rcgen::CertificateSigningRequestParams::from_pem(&tampered).is_err());
    assert!(sign_request(&ca, &tampered, &pod, now, Duration::minutes(10)).is_err());
    assert!(sign_request(&ca, "not a request", &pod, now, Duration::minutes(10)).is_err());
}
