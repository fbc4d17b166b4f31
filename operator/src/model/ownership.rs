//! Whose an object is. The operator force-applies its objects, so before it writes one whose
//! name is taken it must know the object is its own: a Service `web` that a team made before
//! DindDaemon `web` must not get a daemon selector and an owner reference (deleting the
//! DindDaemon would then garbage-collect it), and a foreign `web-ca` Secret must not sign the
//! daemon's client certificates. Pure: the reconciler reads the metadata, this module judges.
//!
//! The rule, on an existing object of a generated name:
//! - its controller owner reference is this DindDaemon (same uid): **ours**;
//! - it has no controller and carries `dind.dev/daemon: NAME`: **handed over** (objects left
//!   by a DindDaemon deleted with `--cascade=orphan`, or a CA a platform team brings); the
//!   apply then makes it ours;
//! - anything else (another owner, including another DindDaemon whose generated name collides,
//!   e.g. `ci`'s headless Service `ci-daemons` and DindDaemon `ci-daemons`'s client Service;
//!   or no label): **not ours**, and nothing is written until it is gone or handed over.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::names::DAEMON_LABEL;

/// The judgement on one existing object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ours,
    HandedOver,
    /// Not ours, and why (for the `NameConflict` condition).
    NotOurs(String),
}

/// Judges an existing object of a generated name for DindDaemon `daemon` (uid `uid`).
pub fn judge(meta: &ObjectMeta, daemon: &str, uid: &str) -> Verdict {
    let controller = meta.owner_references.iter().flatten().find(|r| r.controller == Some(true));
    match controller {
        Some(owner) if owner.uid == uid => Verdict::Ours,
        Some(owner) if owner.kind == "DindDaemon" && owner.name == daemon => Verdict::NotOurs(format!(
            "owned by an earlier DindDaemon {daemon} (uid {}): the garbage collector has not deleted it yet",
            owner.uid
        )),
        Some(owner) => Verdict::NotOurs(format!("owned by {} {}", owner.kind, owner.name)),
        None if meta.labels.as_ref().and_then(|l| l.get(DAEMON_LABEL)).is_some_and(|v| v == daemon) => Verdict::HandedOver,
        None => Verdict::NotOurs(format!("not made by dind-operator (no owner, no label {DAEMON_LABEL}={daemon})")),
    }
}

/// One object that is in the way: `Kind name (why)`.
pub fn conflict(kind: &str, name: &str, why: &str) -> String {
    format!("{kind} {name} ({why})")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(owner: Option<(&str, &str, &str, bool)>, label: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner.map(|(kind, name, uid, controller)| {
                vec![OwnerReference {
                    api_version: "dind.dev/v1alpha1".into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]
            }),
            labels: label.map(|v| [(DAEMON_LABEL.to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_our_controller_or_an_explicit_hand_over_makes_an_object_ours() {
        assert_eq!(judge(&meta(Some(("DindDaemon", "web", "u1", true)), Some("web")), "web", "u1"), Verdict::Ours);
        assert_eq!(judge(&meta(None, Some("web")), "web", "u1"), Verdict::HandedOver);
        // A team's own Service of the same name: no owner, no label.
        let Verdict::NotOurs(why) = judge(&meta(None, None), "web", "u1") else { panic!("a foreign object judged ours") };
        assert!(why.contains("dind.dev/daemon=web"), "{why}");
        // Labelled for another DindDaemon.
        assert!(matches!(judge(&meta(None, Some("web2")), "web", "u1"), Verdict::NotOurs(_)));
        // Another DindDaemon's object whose name collides with ours (`ci` vs `ci-daemons`),
        // even when it carries our label value.
        let Verdict::NotOurs(why) = judge(&meta(Some(("DindDaemon", "ci-daemons", "u2", true)), Some("ci")), "ci", "u1") else {
            panic!("another DindDaemon's object judged ours")
        };
        assert_eq!(why, "owned by DindDaemon ci-daemons");
        // Left by an earlier DindDaemon of this name, not yet garbage-collected.
        let Verdict::NotOurs(why) = judge(&meta(Some(("DindDaemon", "web", "old", true)), Some("web")), "web", "u1") else {
            panic!("an earlier DindDaemon's object judged ours")
        };
        assert!(why.contains("earlier") && why.contains("old"), "{why}");
        // Any other controller (a Deployment's Service, a Helm-made Secret with an owner).
        assert!(matches!(judge(&meta(Some(("Deployment", "web", "u3", true)), Some("web")), "web", "u1"), Verdict::NotOurs(_)));
        // A non-controller owner reference does not make it anyone's: the label decides.
        assert_eq!(judge(&meta(Some(("ConfigMap", "x", "u4", false)), Some("web")), "web", "u1"), Verdict::HandedOver);
    }
}
