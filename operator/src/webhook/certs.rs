//! The webhook's serving certificate and the CAs the apiserver trusts for it (pure).
//!
//! The apiserver verifies the webhook against `caBundle` in the MutatingWebhookConfiguration,
//! which the operator keeps equal to [`State::bundle`]. Rotation never leaves a moment where
//! the served certificate is not trusted:
//! - a new CA is made at half of the current CA's life and enters the bundle at once, beside
//!   the old one (at most two CAs, dropped when expired);
//! - a leaf is signed by the *oldest* CA that outlives it, so after a CA rotation the old CA
//!   keeps signing until fewer than one leaf lifetime remains; by then the new CA has been in
//!   the bundle for a while (with CA life = 3 × leaf life: at least half a leaf lifetime);
//! - a leaf is renewed at 2/3 of its life, or when its names or its CA are gone.

use std::collections::BTreeSet;

use time::{Duration, OffsetDateTime};

use crate::error::Error;
use crate::model::tls::{self, Leaf, Pair};

/// Keys of the webhook's Secret.
pub mod keys {
    /// The serving certificate and key (the names cert-manager uses too).
    pub const CERT: &str = "tls.crt";
    pub const KEY: &str = "tls.key";
    /// The current CAs, newest first: the caBundle.
    pub const BUNDLE: &str = "ca.crt";
    /// Each CA's certificate and key: `ca-0` the newest, `ca-1` the previous.
    pub fn ca_cert(i: usize) -> String {
        format!("ca-{i}.crt")
    }
    pub fn ca_key(i: usize) -> String {
        format!("ca-{i}.key")
    }
}

/// Lifetimes: a leaf's, and its CA's (three times as long).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub leaf: Duration,
}

impl Lifetimes {
    pub fn ca(&self) -> Duration {
        self.leaf * 3
    }
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Newest first; one or two.
    pub cas: Vec<Pair>,
    pub leaf: Pair,
}

impl State {
    /// The caBundle: every CA, newest first.
    pub fn bundle(&self) -> String {
        self.cas.iter().map(|c| c.cert_pem.as_str()).collect()
    }
}

/// The next state and what was made (empty: keep everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub state: State,
    pub issued: Vec<&'static str>,
}

/// Keeps what is good, makes what is due. `names`: the DNS names (and IPs) of the webhook.
pub fn plan(existing: Option<State>, names: &BTreeSet<String>, now: OffsetDateTime, life: Lifetimes) -> Result<Plan, Error> {
    let mut issued = Vec::new();
    let (cas, leaf) = existing.map(|s| (s.cas, Some(s.leaf))).unwrap_or_default();
    // Unreadable or expired CAs go; the newest stays first.
    let mut cas: Vec<(Pair, tls::CertInfo)> =
        cas.into_iter().filter_map(|c| tls::inspect(&c.cert_pem).ok().map(|i| (c, i))).filter(|(_, i)| now < i.not_after).take(2).collect();
    let newest_half_gone = cas.first().is_none_or(|(_, i)| now >= i.not_before + (i.not_after - i.not_before) / 2);
    if newest_half_gone {
        // Each CA's name is its own (the time it was made): a leaf names its issuer by subject.
        let ca = tls::make_ca(&format!("dind-operator webhook CA {}", now.unix_timestamp_nanos()), now, life.ca())?;
        let info = tls::inspect(&ca.cert_pem)?;
        cas.insert(0, (ca, info));
        cas.truncate(2);
        issued.push("ca");
    }
    // The oldest CA that outlives a new leaf signs it.
    let (signer, signer_info) = cas.iter().rev().find(|(_, i)| i.not_after - now >= life.leaf).unwrap_or(&cas[0]);
    let leaf_good = leaf
        .as_ref()
        .and_then(|l| tls::inspect(&l.cert_pem).ok())
        .is_some_and(|i| !tls::needs_renewal(&i, now) && &i.dns_names == names && cas.iter().any(|(_, ca)| ca.subject_der == i.issuer_der));
    let leaf = match leaf.filter(|_| leaf_good) {
        Some(l) => l,
        None => {
            issued.push("leaf");
            let lifetime = life.leaf.min(signer_info.not_after - now);
            tls::issue_for(signer, Leaf::Server, "dind-operator webhook", names, now, lifetime)?
        }
    };
    Ok(Plan { state: State { cas: cas.into_iter().map(|(c, _)| c).collect(), leaf }, issued })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> BTreeSet<String> {
        BTreeSet::from(["dind-operator-webhook.dind-system.svc".to_string(), "127.0.0.1".to_string()])
    }

    const LIFE: Lifetimes = Lifetimes { leaf: Duration::seconds(30) };

    fn verifies(bundle: &str, leaf: &Pair, at: OffsetDateTime) -> bool {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots)).build().unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from("dind-operator-webhook.dind-system.svc").unwrap();
        let secs = u64::try_from(at.unix_timestamp()).unwrap();
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))).is_ok()
    }

    #[test]
    fn first_plan_makes_a_ca_and_a_leaf_it_verifies() {
        let now = OffsetDateTime::now_utc();
        let p = plan(None, &names(), now, LIFE).unwrap();
        assert_eq!(p.issued, vec!["ca", "leaf"]);
        assert!(verifies(&p.state.bundle(), &p.state.leaf, now));
        let again = plan(Some(p.state.clone()), &names(), now + Duration::seconds(5), LIFE).unwrap();
        assert!(again.issued.is_empty());
        assert_eq!(again.state, p.state);
    }

    /// Steps through ten CA lifetimes, one second at a time, as the keeper would: at every
    /// moment the served leaf verifies against the bundle published one step earlier (the
    /// apiserver may hold the previous caBundle for a moment), and a new CA is published
    /// well before any leaf is signed by it.
    #[test]
    fn rotation_never_serves_an_untrusted_leaf() {
        let start = OffsetDateTime::now_utc();
        let mut state = plan(None, &names(), start, LIFE).unwrap().state;
        let mut published_before = state.bundle();
        let mut ca_rotations = 0;
        let mut leaf_rotations = 0;
        let mut first_seen: std::collections::HashMap<String, OffsetDateTime> =
            state.cas.iter().map(|c| (c.cert_pem.clone(), start)).collect();
        for step in 1..=900 {
            let now = start + Duration::seconds(step);
            let p = plan(Some(state.clone()), &names(), now, LIFE).unwrap();
            ca_rotations += usize::from(p.issued.contains(&"ca"));
            leaf_rotations += usize::from(p.issued.contains(&"leaf"));
            for ca in &p.state.cas {
                first_seen.entry(ca.cert_pem.clone()).or_insert(now);
            }
            // The leaf is trusted by what the apiserver had a step ago and by what it has now.
            assert!(verifies(&published_before, &p.state.leaf, now), "step {step}: leaf not trusted by the previous bundle");
            assert!(verifies(&p.state.bundle(), &p.state.leaf, now), "step {step}");
            if p.issued.contains(&"leaf") {
                let signer =
                    p.state.cas.iter().find(|ca| {
                        tls::inspect(&ca.cert_pem).unwrap().subject_der == tls::inspect(&p.state.leaf.cert_pem).unwrap().issuer_der
                    });
                let published = first_seen[&signer.unwrap().cert_pem];
                assert!(
                    now - published >= Duration::seconds(15),
                    "step {step}: leaf signed by a CA published only {:?} ago",
                    now - published
                );
            }
            published_before = p.state.bundle();
            state = p.state;
        }
        assert!(ca_rotations >= 15, "{ca_rotations} CA rotations in 900 s of 90 s CAs");
        assert!(leaf_rotations >= 40, "{leaf_rotations} leaf rotations in 900 s of 30 s leaves");
    }

    #[test]
    fn changed_names_reissue_the_leaf_only() {
        let now = OffsetDateTime::now_utc();
        let s = plan(None, &names(), now, LIFE).unwrap().state;
        let mut more = names();
        more.insert("10.0.0.1".into());
        let p = plan(Some(s.clone()), &more, now, LIFE).unwrap();
        assert_eq!(p.issued, vec!["leaf"]);
        assert_eq!(p.state.cas, s.cas);
    }
}
