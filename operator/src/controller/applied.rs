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
use kube::Resource;
use kube::runtime::watcher;

use crate::error::{Error, Result};
use crate::model::kinds::OwnedKind;
use crate::model::tls;
use crate::objects::{CertSecrets, Owned};
use crate::runtime::watch_map::WatchMap;

/// Identity and version of one owned object.
///
/// The version is `metadata.generation` where the apiserver keeps one (StatefulSets,
/// NetworkPolicies: it moves with the spec, not with status writes) and `resourceVersion`
/// otherwise (Services, Secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub uid: Token,
    pub version: Version,
    /// The uid of the object's controller (its owner reference with `controller: true`):
    /// whose the object is (see `ownership`). Stripping our owner reference is drift too.
    pub controller: Option<Token>,
}

/// Which write of an object a stamp saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Generation(i64),
    Resource(Token),
}

/// A uid or resourceVersion as a stamp keeps it: a UUID (what the apiserver assigns as uid)
/// in 16 bytes, a decimal number (etcd's resourceVersions) in 8, anything else as text. Only
/// equality is ever asked of it. At 1000 DindDaemons the operator holds ~13 000 stamps; as
/// three `String`s each they were ~1.5 MiB of small allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Uuid(u128),
    Number(u64),
    Text(Box<str>),
}

impl Token {
    pub fn of(text: &str) -> Self {
        if let Ok(n) = text.parse::<u64>()
            && n.to_string() == text
        {
            return Self::Number(n);
        }
        if let Some(uuid) = parse_uuid(text) {
            return Self::Uuid(uuid);
        }
        Self::Text(text.into())
    }

    /// Whether this token is `text`.
    pub fn is(&self, text: &str) -> bool {
        *self == Self::of(text)
    }
}

/// A lower-case hyphenated UUID, exactly as written (it must print back the same).
fn parse_uuid(text: &str) -> Option<u128> {
    if text.len() != 36 {
        return None;
    }
    let value = u128::from_str_radix(&text.replace('-', ""), 16).ok()?;
    let hex = format!("{value:032x}");
    let printed = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    (printed == text).then_some(value)
}

impl Stamp {
    /// The stamp of an object as the apiserver returned or a watch delivered it.
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        let uid = Token::of(meta.uid.as_deref()?);
        let version = match meta.generation {
            Some(g) if g > 0 => Version::Generation(g),
            _ => Version::Resource(Token::of(meta.resource_version.as_deref()?)),
        };
        let controller = meta.owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| Token::of(&r.uid));
        Some(Self { uid, version, controller })
    }
}

/// Stamps by owned object, keyed `Kind/name`.
pub type Stamps = BTreeMap<String, Stamp>;

/// The key of an owned object in `Stamps`.
pub fn key(kind: OwnedKind, name: &str) -> String {
    format!("{}/{name}", kind.kind())
}

/// Whether a key of `Stamps` is of an object of `kind`.
pub fn is_of(key: &str, kind: OwnedKind) -> bool {
    key.strip_prefix(kind.kind()).is_some_and(|rest| rest.starts_with('/'))
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
    // Every owned object, by name: a new one is a compile error here.
    let Owned { statefulset, headless_service, client_service, network_policy, disruption_budget, secrets } = owned;
    feed(&mut hasher, "StatefulSet", statefulset)?;
    feed(&mut hasher, "headless Service", headless_service)?;
    feed(&mut hasher, "client Service", client_service)?;
    feed(&mut hasher, "NetworkPolicy", network_policy)?;
    if let Some(budget) = disruption_budget {
        feed(&mut hasher, "PodDisruptionBudget", budget)?;
    }
    if let Some(CertSecrets { ca, server, client }) = secrets {
        feed(&mut hasher, "CA Secret", ca)?;
        feed(&mut hasher, "server Secret", server)?;
        feed(&mut hasher, "client Secret", client)?;
    }
    Ok(hasher.finish())
}

/// The stamp of every object of one kind a watch shows, by namespace and name: all the
/// operator keeps of Services, Secrets and NetworkPolicies (a full cache of their metadata
/// would cost ~1 KiB per object, a stamp ~0.1 KiB).
#[derive(Clone, Debug, Default)]
pub struct StampCache(WatchMap<Stamp>);

impl StampCache {
    /// Folds one watch event into the cache.
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>) {
        self.0.observe(event, |obj| Stamp::of(obj.meta()));
    }

    /// The stamp of `namespace/name`, if the watch shows such an object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Stamp> {
        self.0.get(namespace, name)
    }

    /// Waits for the first list to complete. Any number of tasks may wait.
    pub async fn wait_until_ready(&self) {
        self.0.wait_until_ready().await;
    }
}

/// The last successful apply of one DindDaemon.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The DindDaemon's uid: a re-created DindDaemon of the same name starts afresh.
    pub owner_uid: String,
    pub fingerprint: u64,
    pub stamps: Stamps,
    /// The certificates the Secrets held, so an unchanged Secret need not be read again
    /// (`None` with TLS off).
    pub certs: Option<tls::Bundle>,
}

impl Applied {
    /// Whether the objects seen now are exactly those this apply left behind.
    pub fn stamps_hold(&self, owner_uid: &str, seen: &Stamps) -> bool {
        self.owner_uid == owner_uid && &self.stamps == seen
    }

    /// Whether the Secrets seen now are those this apply wrote or read, so `certs` is what
    /// they hold.
    pub fn secrets_hold(&self, seen: &Stamps) -> bool {
        let secrets =
            |s: &Stamps| s.iter().filter(|(k, _)| k.starts_with("Secret/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
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
    fn tokens_are_compact_where_they_can_be_and_exact_always() {
        let uuid = "0f8a6c2e-41d3-4b5a-9e7f-1a2b3c4d5e6f";
        assert!(matches!(Token::of(uuid), Token::Uuid(_)));
        assert!(Token::of(uuid).is(uuid));
        assert!(!Token::of(uuid).is("0f8a6c2e-41d3-4b5a-9e7f-1a2b3c4d5e60"));
        // Not the canonical form: kept as text, so it never equals the canonical one.
        assert!(matches!(Token::of(&uuid.to_uppercase()), Token::Text(_)));
        assert_ne!(Token::of(&uuid.to_uppercase()), Token::of(uuid));
        assert_eq!(Token::of("12345"), Token::Number(12345));
        assert!(matches!(Token::of("007"), Token::Text(_)), "a leading zero is not the number 7");
        assert_ne!(Token::of("007"), Token::of("7"));
        assert!(Token::of("u").is("u"));
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

    fn secret(name: &str, uid: &str, rv: &str) -> k8s_openapi::api::core::v1::Secret {
        k8s_openapi::api::core::v1::Secret {
            metadata: ObjectMeta { namespace: Some("ns".into()), name: Some(name.into()), ..meta(uid, None, rv) },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stamp_cache_follows_the_watch_and_drops_what_a_relist_misses() {
        let cache = StampCache::default();
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_until_ready().await }
        });
        let second = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_until_ready().await }
        });
        cache.observe(&watcher::Event::<k8s_openapi::api::core::v1::Secret>::Init);
        cache.observe(&watcher::Event::InitApply(secret("a", "ua", "1")));
        cache.observe(&watcher::Event::InitApply(secret("b", "ub", "2")));
        assert_eq!(cache.get("ns", "a"), None, "not visible before the list is complete");
        cache.observe(&watcher::Event::<k8s_openapi::api::core::v1::Secret>::InitDone);
        waiter.await.unwrap();
        second.await.unwrap();
        assert_eq!(cache.get("ns", "a").map(|s| s.version), Some(Version::Resource(Token::Number(1))));
        cache.observe(&watcher::Event::Apply(secret("a", "ua", "5")));
        assert_eq!(cache.get("ns", "a").map(|s| s.version), Some(Version::Resource(Token::Number(5))));
        cache.observe(&watcher::Event::Delete(secret("a", "ua", "6")));
        assert_eq!(cache.get("ns", "a"), None);
        // A re-list after the watch broke: b was deleted meanwhile, c created.
        cache.observe(&watcher::Event::<k8s_openapi::api::core::v1::Secret>::Init);
        cache.observe(&watcher::Event::InitApply(secret("c", "uc", "9")));
        cache.observe(&watcher::Event::<k8s_openapi::api::core::v1::Secret>::InitDone);
        assert_eq!(cache.get("ns", "b"), None);
        assert!(cache.get("ns", "c").is_some());
    }

    #[test]
    fn unchanged_needs_same_owner_fingerprint_and_stamps() {
        let mut stamps = Stamps::new();
        stamps.insert(key(OwnedKind::Service, "ci"), Stamp::of(&meta("s", None, "5")).unwrap());
        let certs = tls::Bundle {
            ca: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
            server: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
            client: tls::Pair { cert_pem: "c".into(), key_pem: "k".into() },
        };
        let applied = Applied { owner_uid: "dd".into(), fingerprint: 7, stamps: stamps.clone(), certs: Some(certs) };
        assert!(applied.unchanged("dd", 7, &stamps));
        assert!(!applied.unchanged("dd", 8, &stamps), "spec or certificates changed");
        assert!(!applied.unchanged("other", 7, &stamps), "DindDaemon re-created");
        let mut edited = stamps.clone();
        edited.insert(key(OwnedKind::Service, "ci"), Stamp::of(&meta("s", None, "6")).unwrap());
        assert!(!applied.unchanged("dd", 7, &edited), "someone edited the Service");
        assert!(!applied.unchanged("dd", 7, &Stamps::new()), "owned objects deleted");
    }
}
