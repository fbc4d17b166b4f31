//! Events: condition transitions and notable actions, with PascalCase reasons.

use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt};
use tracing::{info, warn};

use super::Context;
use crate::crd::{DindDaemon, DindDaemonStatus};
use crate::status;

/// One event per condition transition (status or reason), never one per reconcile.
pub async fn announce_transitions(ctx: &Context, dd: &DindDaemon, old: Option<&DindDaemonStatus>, new: &DindDaemonStatus) {
    for type_ in [status::READY, status::DEGRADED] {
        let Some(now) = new.conditions.iter().find(|c| c.type_ == type_) else { continue };
        let before = status::find(old, type_);
        if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
            continue;
        }
        let (kind, reason) = match (type_, now.status.as_str()) {
            (status::READY, "True") => (EventType::Normal, "DaemonReady"),
            (status::READY, _) if before.is_none() => continue,
            (status::READY, _) => (EventType::Warning, "DaemonNotReady"),
            (_, "True") => (EventType::Warning, now.reason.as_str()),
            (_, _) if before.is_none() => continue,
            _ => (EventType::Normal, "Recovered"),
        };
        publish(ctx, dd, kind, reason, now.message.clone()).await;
    }
}

/// An event's note may have at most this many bytes (the apiserver refuses longer ones).
const MAX_NOTE: usize = 1024;

pub async fn publish(ctx: &Context, dd: &DindDaemon, type_: EventType, reason: &str, mut note: String) {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &dd.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    } else {
        info!(name = %dd.name_any(), reason, "event");
    }
}
