//! The reconcile's events: one per condition transition, and notable actions (published by
//! `crate::runtime::events`).

use kube::runtime::events::EventType;

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

/// An event of the reconcile on `dd` (see `crate::runtime::events`).
pub async fn publish(ctx: &Context, dd: &DindDaemon, type_: EventType, reason: &str, note: String) {
    crate::runtime::events::publish(&ctx.recorder, dd, type_, reason, "Reconcile", note).await;
}
