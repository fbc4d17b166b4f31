//! Why the StatefulSet controller cannot create daemon pods: its `FailedCreate` events, as the
//! operator keeps them, and the message status shows.

/// How recent a `FailedCreate` event must be to explain missing pods (the StatefulSet
/// controller retries with backoff and records each failure).
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The PSA label a namespace needs for daemon pods (privileged, or every capability).
pub const PSA_ENFORCE_PRIVILEGED: &str = "pod-security.kubernetes.io/enforce=privileged";

/// A `FailedCreate` of the StatefulSet controller: what the operator keeps of its event (the
/// watch of such events feeds them; see `controller::run`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The StatefulSet refused (the DindDaemon's name) and its uid, when the event names it.
    pub statefulset: String,
    pub statefulset_uid: Option<String>,
    /// When the refusal was last seen (events count repeats: the latest of them).
    pub seen: k8s_openapi::jiff::Timestamp,
    pub message: String,
}

impl Refusal {
    /// The refusal an event records, if it is a StatefulSet's `FailedCreate` with a time.
    pub fn of_event(e: &k8s_openapi::api::core::v1::Event) -> Option<Self> {
        let about = &e.involved_object;
        if about.kind.as_deref() != Some(crate::model::kinds::OwnedKind::StatefulSet.kind()) || e.reason.as_deref() != Some("FailedCreate")
        {
            return None;
        }
        let seen = [
            e.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0),
            e.last_timestamp.as_ref().map(|t| t.0),
            e.event_time.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max()?;
        Some(Self {
            statefulset: about.name.clone()?,
            statefulset_uid: about.uid.clone(),
            seen,
            message: e.message.clone().unwrap_or_default(),
        })
    }
}

/// Why the StatefulSet controller cannot create daemon pods, from its `FailedCreate` events:
/// the newest seen within [`REFUSAL_WINDOW`] of `now` and after `newest_pod` was made (an
/// older one was overcome since), with the fix when it is Pod Security Admission's refusal.
pub fn pods_refused(
    refusals: &[Refusal],
    now: k8s_openapi::jiff::Timestamp,
    newest_pod: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    let window = k8s_openapi::jiff::SignedDuration::try_from(REFUSAL_WINDOW).ok()?;
    let newest =
        refusals.iter().filter(|r| now.duration_since(r.seen) <= window && newest_pod.is_none_or(|p| r.seen > p)).max_by_key(|r| r.seen)?;
    let message = &newest.message;
    let advice = if message.contains("PodSecurity") {
        format!("; daemon pods run privileged: label the namespace {PSA_ENFORCE_PRIVILEGED}")
    } else {
        String::new()
    };
    Some(format!("the StatefulSet cannot create daemon pods: {message}{advice}"))
}
