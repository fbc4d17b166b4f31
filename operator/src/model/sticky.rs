//! Which daemon replica (or sidecar pool volume) a pod gets: the same key always lands on the
//! same one, so the jobs of one pipeline reuse one cache.
//!
//! Rendezvous (highest-random-weight) hashing: each candidate replica gets a score from
//! hash(key, replica) and the highest wins. When a replica leaves or joins the ready set, only
//! the keys that scored highest on it move; every other key keeps its replica (a modulo hash
//! would move almost all of them).

use serde_json::Value;

use crate::model::names;

/// Where the key came from, for the pod's annotation and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub value: String,
    pub source: &'static str,
}

/// The pod's sticky key: label `dind.dev/sticky-key`, else the name of its controlling owner
/// (`kind/name`), else its `generateName`, else its name (which gives no stickiness: a pod
/// named once is created once).
pub fn key_of(pod: &Value) -> Key {
    let meta = &pod["metadata"];
    if let Some(k) = meta["labels"][names::STICKY_KEY_LABEL].as_str().filter(|k| !k.is_empty()) {
        return Key { value: k.to_string(), source: "label" };
    }
    if let Some(owner) = meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"].as_bool() == Some(true))
        .and_then(|o| Some(format!("{}/{}", o["kind"].as_str()?, o["name"].as_str()?)))
    {
        return Key { value: owner, source: "owner" };
    }
    if let Some(g) = meta["generateName"].as_str().filter(|g| !g.is_empty()) {
        return Key { value: g.to_string(), source: "generateName" };
    }
    Key { value: meta["name"].as_str().unwrap_or_default().to_string(), source: "name" }
}

/// The candidate with the highest score for `key`; None when there is no candidate.
pub fn choose<'a>(key: &str, candidates: &'a [String]) -> Option<&'a String> {
    candidates.iter().max_by_key(|c| (score(key, c), c.as_str()))
}

/// FNV-1a over `key`, a separator and `candidate`, then a 64-bit finalizer (splitmix64) so
/// that near-identical inputs (`ci-0`, `ci-1`) spread evenly. Stable across versions and
/// platforms: it must not change, or every key moves on upgrade.
fn score(key: &str, candidate: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0u8]).chain(candidate.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replicas(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ci-{i}")).collect()
    }

    #[test]
    fn the_key_is_the_label_then_the_controller_then_generate_name() {
        let mut pod = json!({"metadata": {"name": "p", "generateName": "runner-", "labels": {"dind.dev/sticky-key": "pipeline-7"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "other", "controller": false}, {"kind": "Job", "name": "build-1", "controller": true}]}});
        assert_eq!(key_of(&pod), Key { value: "pipeline-7".into(), source: "label" });
        pod["metadata"]["labels"] = json!({});
        assert_eq!(key_of(&pod), Key { value: "Job/build-1".into(), source: "owner" });
        pod["metadata"]["ownerReferences"] = json!([]);
        assert_eq!(key_of(&pod), Key { value: "runner-".into(), source: "generateName" });
        pod["metadata"].as_object_mut().unwrap().remove("generateName");
        assert_eq!(key_of(&pod).value, "p");
    }

    #[test]
    fn a_key_always_gets_the_same_replica() {
        let r = replicas(3);
        let first = choose("pipeline-a", &r).unwrap();
        for _ in 0..20 {
            assert_eq!(choose("pipeline-a", &r), Some(first));
        }
        assert_eq!(choose("x", &[]), None);
    }

    #[test]
    fn keys_spread_over_replicas() {
        let r = replicas(3);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let c = choose(&format!("key-{i}"), &r).unwrap();
            counts[r.iter().position(|x| x == c).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn losing_a_replica_moves_only_its_keys() {
        let all = replicas(3);
        let without_1: Vec<String> = all.iter().filter(|r| *r != "ci-1").cloned().collect();
        for i in 0..500 {
            let k = format!("key-{i}");
            let before = choose(&k, &all).unwrap();
            let after = choose(&k, &without_1).unwrap();
            if before != "ci-1" {
                assert_eq!(before, after, "{k} moved although its replica stayed");
            }
        }
    }
}
