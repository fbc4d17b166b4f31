//! What the operator last wrote for each DindDaemon, so an unchanged one costs no request.
//!
//! After a successful apply the reconciler records a fingerprint of everything it built and a
//! stamp (uid + version) of every owned object as the apiserver returned it. A later reconcile
//! that builds the same fingerprint and finds the same stamps in the owned-object caches skips
//! the apply: nothing changed on either side. Any edit, deletion or re-creation of an owned
//! object changes its stamp, and any spec or certificate change changes the fingerprint, so
//! drift is still repaired on the next pass.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::{Error, Result};
use crate::resources::Owned;
use crate::tls;

/// Identity and version of one owned object.
///
/// The version is `metadata.generation` where the apiserver keeps one (StatefulSets,
/// NetworkPolicies: it moves with the spec, not with status writes) and `resourceVersion`
/// otherwise (Services, Secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub uid: String,
    pub version: String,
}

impl Stamp {
    /// The stamp of an object as the apiserver returned or a watch delivered it.
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        let uid = meta.uid.clone()?;
        let version = match meta.generation {
            Some(g) if g > 0 => format!("g{g}"),
            _ => format!("rv{}", meta.resource_version.as_deref()?),
        };
        Some(Self { uid, version })
    }
}

/// Stamps by owned object, keyed `Kind/name`.
pub type Stamps = BTreeMap<String, Stamp>;

/// The key of an owned object in `Stamps`.
pub fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// A fingerprint of every object built for a DindDaemon (certificates included).
///
/// Only compared within one operator process, so the std hasher is good enough.
pub fn fingerprint(owned: &Owned) -> Result<u64> {
    fn feed<T: serde::Serialize>(hasher: &mut DefaultHasher, what: &'static str, part: &T) -> Result<()> {
        serde_json::to_vec(part).map_err(|source| Error::Serialize { what, source })?.hash(hasher);
        Ok(())
    }
    let mut hasher = DefaultHasher::new();
    feed(&mut hasher, "StatefulSet", &owned.statefulset)?;
    feed(&mut hasher, "headless Service", &owned.headless_service)?;
    feed(&mut hasher, "client Service", &owned.client_service)?;
    feed(&mut hasher, "NetworkPolicy", &owned.network_policy)?;
    feed(&mut hasher, "CA Secret", &owned.ca_secret)?;
    feed(&mut hasher, "server Secret", &owned.server_secret)?;
    feed(&mut hasher, "client Secret", &owned.client_secret)?;
    Ok(hasher.finish())
}

/// The last successful apply of one DindDaemon.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The DindDaemon's uid: a re-created DindDaemon of the same name starts afresh.
    pub owner_uid: String,
    pub fingerprint: u64,
    pub stamps: Stamps,
    /// The certificates the Secrets held, so an unchanged Secret need not be read again.
    pub certs: tls::Bundle,
}

impl Applied {
    /// Whether the objects seen now are exactly those this apply left behind.
    pub fn stamps_hold(&self, owner_uid: &str, seen: &Stamps) -> bool {
        self.owner_uid == owner_uid && &self.stamps == seen
    }

    /// Whether the Secrets seen now are those this apply wrote or read, so `certs` is what
    /// they hold.
    pub fn secrets_hold(&self, seen: &Stamps) -> bool {
        let secrets = |s: &Stamps| s.iter().filter(|(k, _)| k.starts_with("Secret/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
        let mine = secrets(&self.stamps);
        mine.len() == 3 && mine == secrets(seen)
    }

    /// Whether an apply of `fingerprint` would change nothing.
    pub fn unchanged(&self, owner_uid: &str, fingerprint: u64, seen: &Stamps) -> bool {
        self.fingerprint == fingerprint && self.stamps_hold(owner_uid, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, generation: Option<i64>, rv: &str) -> ObjectMeta {
        ObjectMeta { uid: Some(uid.into()), generation, resource_version: Some(rv.into()), ..Default::default() }
    }

    #[test]
    fn stamps_follow_generation_where_there_is_one() {
        // A status write moves resourceVersion, not generation: no drift.
        assert_eq!(Stamp::of(&meta("u", Some(3), "10")), Stamp::of(&meta("u", Some(3), "11")));
        assert_ne!(Stamp::of(&meta("u", Some(3), "10")), Stamp::of(&meta("u", Some(4), "11")));
        // Without a generation every write counts.
        assert_ne!(Stamp::of(&meta("u", None, "10")), Stamp::of(&meta("u", None, "11")));
        // Deleted and re-created: same name, new uid.
        assert_ne!(Stamp::of(&meta("u", Some(1), "10")), Stamp::of(&meta("v", Some(1), "10")));
        assert_eq!(Stamp::of(&ObjectMeta::default()), None);
    }

    #[test]
    fn unchanged_needs_same_owner_fingerprint_and_stamps() {
        let mut stamps = Stamps::new();
        stamps.insert(key("Service", "ci"), Stamp::of(&meta("s", None, "5")).unwrap());
        let certs = tls::Bundle {
            ca: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
            server: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
            client: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
        };
        let applied = Applied { owner_uid: "dd".into(), fingerprint: 7, stamps: stamps.clone(), certs };
        assert!(applied.unchanged("dd", 7, &stamps));
        assert!(!applied.unchanged("dd", 8, &stamps), "spec or certificates changed");
        assert!(!applied.unchanged("other", 7, &stamps), "DindDaemon re-created");
        let mut edited = stamps.clone();
        edited.insert(key("Service", "ci"), Stamp::of(&meta("s", None, "6")).unwrap());
        assert!(!applied.unchanged("dd", 7, &edited), "someone edited the Service");
        assert!(!applied.unchanged("dd", 7, &Stamps::new()), "owned objects deleted");
    }
}
