//! Publishing a Kubernetes event on a DindDaemon: the one helper the controller (condition
//! transitions, notable actions) and the webhook (admission warnings) share. Reasons are
//! PascalCase; a note past the apiserver's limit is cut, never refused.

use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::crd::DindDaemon;

/// An event's note may have at most this many bytes (the apiserver refuses longer ones).
pub const MAX_NOTE: usize = 1024;

/// `note` cut to [`MAX_NOTE`] bytes on a character boundary, marked with `...`.
pub fn fit_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// Publishes one event on `dd`; a failure is logged, never returned (an event is a courtesy).
pub async fn publish(recorder: &Recorder, dd: &DindDaemon, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(fit_note(note)), action: action.into(), secondary: None };
    match recorder.publish(&event, &dd.object_ref(&())).await {
        Ok(()) => tracing::info!(name = dd.metadata.name.as_deref().unwrap_or_default(), reason, action, "event"),
        Err(e) => tracing::warn!(error = %e, reason, "could not publish event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(fit_note("short".into()), "short");
        let cut = fit_note("é".repeat(MAX_NOTE));
        assert!(cut.len() <= MAX_NOTE && cut.ends_with("..."), "{}", cut.len());
    }
}
