//! The crate's error type.
//!
//! Reconcile errors fall in two classes (see [`ReconcileError`]): retryable ones (an API call
//! failed; the world may change) are retried with per-key backoff, terminal ones (the object is
//! invalid as it stands) wait until the object changes, like controller-runtime's
//! `TerminalError`.

use crate::runtime::ReconcileError;
use tonic::{Code, Status};

/// What went wrong in a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{op} {key}")]
    Api {
        /// The call: `get`, `delete`, `update status`...
        op: &'static str,
        /// The object it was about: `Image/web-v1`.
        key: String,
        #[source]
        source: Status,
    },
    /// The object cannot be acted on as it stands; retrying will not help until it changes.
    #[error("{key} cannot be reconciled: {message}")]
    Invalid { key: String, message: String },
    /// A controller task panicked or was cancelled.
    #[error("controller {controller} stopped unexpectedly")]
    ControllerStopped {
        controller: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a failed API call.
    pub fn api(op: &'static str, key: impl Into<String>, source: Status) -> Error {
        Error::Api {
            op,
            key: key.into(),
            source,
        }
    }
}

impl ReconcileError for Error {
    fn is_terminal(&self) -> bool {
        match self {
            // The server refused what we wrote for what it is, not for when we wrote it: the
            // same write will be refused again until the object changes.
            Error::Api { source, .. } => source.code() == Code::InvalidArgument,
            Error::Invalid { .. } => true,
            Error::ControllerStopped { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_is_terminal_and_transient_failures_are_not() {
        assert!(
            Error::Invalid {
                key: "Image/a".into(),
                message: "no".into()
            }
            .is_terminal()
        );
        assert!(Error::api("update", "Image/a", Status::invalid_argument("spec.x")).is_terminal());
        assert!(!Error::api("get", "Image/a", Status::unavailable("down")).is_terminal());
        assert!(!Error::api("update", "Image/a", Status::aborted("stale")).is_terminal());
    }
}
