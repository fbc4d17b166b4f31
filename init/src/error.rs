//! dind-init's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// dind-init's errors; each says what to do about it where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("making the TLS certificates: {0}")]
    Tls(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error(
        "{} is in use by another daemon ({holder}): dockerd needs exclusive access to its data root, so this one will not start ({errno})",
        path.display()
    )]
    Locked { path: PathBuf, holder: String, errno: String },
    #[error("cgroups: {0}")]
    Cgroups(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }
}
