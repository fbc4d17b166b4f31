//! The operator's one error type.

/// Errors of a reconcile or of the operator's start; `label()` names the kind for metrics and
/// events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("certificates: {0}")]
    Tls(String),
    #[error("Secret {name} is malformed: {reason}")]
    MalformedSecret { name: String, reason: String },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("the watches behind the operator's caches ended before their first list")]
    CachesClosed,
    /// The apiserver refused (or failed) to apply an owned object; shown in status as is.
    #[error("applying {kind} {name}: {}", api_message(source))]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Objects of the generated names exist and are not this DindDaemon's (see `ownership`):
    /// nothing was written.
    #[error(
        "objects of the names this DindDaemon needs exist and are not its own: {}; rename the DindDaemon or delete them (one that no one owns can be handed over by labelling it dind.dev/daemon={daemon})",
        objects.join("; ")
    )]
    NameConflict { daemon: String, objects: Vec<String> },
    #[error("the reconcile did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// A ConfigMap (or key) that `spec.daemon.registryCAs` names is missing: a daemon that
    /// mounted it would never start, so nothing was written (the message names each entry).
    #[error("{0}")]
    RegistryCaMissing(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl Error {
    /// Whether the apiserver refused an owned object as built (4xx other than a conflict or
    /// throttling): the spec cannot be applied until it changes, so status must say so.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::NameConflict { .. } | Error::RegistryCaMissing(_))
            || matches!(self, Error::Apply { source: kube::Error::Api(s), .. } if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
    }

    /// The `Degraded` reason of a refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NameConflict { .. } => "NameConflict",
            Error::RegistryCaMissing(_) => "RegistryCAMissing",
            _ => "ApplyFailed",
        }
    }

    /// A short, stable label for the `errors_total{kind=...}` metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(_) => "kube",
            Error::Tls(_) => "tls",
            Error::MalformedSecret { .. } => "malformed_secret",
            Error::Serialize { .. } => "serialize",
            Error::MissingField(_) => "missing_field",
            Error::CachesClosed => "caches_closed",
            Error::Apply { source: kube::Error::Api(s), .. } if s.code == 409 => "conflict",
            Error::Apply { .. } if self.is_refusal() => "refused",
            Error::Apply { .. } => "apply",
            Error::NameConflict { .. } => "name_conflict",
            Error::Timeout(_) => "timeout",
            Error::RegistryCaMissing(_) => "registry_ca_missing",
        }
    }
}

/// The apiserver's own words for an API error (its Display adds the whole status object).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_error(code: u16) -> Error {
        let status = kube::core::Status::failure("refused", "Invalid").with_code(code);
        Error::Apply { kind: "StatefulSet".into(), name: "ci".into(), source: kube::Error::Api(Box::new(status)) }
    }

    #[test]
    fn only_the_apiservers_refusals_are_shown_as_apply_failures() {
        assert!(apply_error(422).is_refusal());
        assert!(apply_error(403).is_refusal());
        assert!(!apply_error(409).is_refusal(), "a conflict is retried");
        assert!(!apply_error(429).is_refusal(), "throttling is retried");
        assert!(!apply_error(500).is_refusal());
        assert!(!Error::Timeout(std::time::Duration::from_secs(1)).is_refusal());
        assert_eq!(apply_error(422).to_string(), "applying StatefulSet ci: refused (422)");
        let conflict = Error::NameConflict { daemon: "web".into(), objects: vec!["Service web (owned by Deployment web)".into()] };
        assert!(conflict.is_refusal(), "shown in status, retried with backoff");
        assert_eq!((conflict.reason(), apply_error(422).reason()), ("NameConflict", "ApplyFailed"));
        assert!(conflict.to_string().contains("Service web (owned by Deployment web)"));
    }
}
