//! Errors of the workload driver.
//!
//! Kept in the driver module (not the crate's `error.rs`) so the driver stays a self-contained
//! seam; the agent wraps [`Error`] in its own error type with `#[from]`.

use std::io;
use std::path::PathBuf;

/// What went wrong while driving workloads, with the instance or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The launch spec cannot be run as given.
    #[error("invalid launch spec for instance {instance:?}: {reason}")]
    InvalidSpec { instance: String, reason: String },
    /// The requested user does not exist in the node's user database.
    #[error("user {user:?} of instance {instance:?} does not exist on this node")]
    UnknownUser { instance: String, user: String },
    /// Looking up the user failed.
    #[error("looking up user {user:?} of instance {instance:?}")]
    LookupUser {
        instance: String,
        user: String,
        #[source]
        source: nix::Error,
    },
    /// Creating or chowning the instance's directories or log files failed.
    #[error("preparing {path} for instance {instance:?}")]
    PrepareRoot {
        instance: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cgroup operation failed.
    #[error("cgroup: {op} {path}")]
    Cgroup {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Spawning the workload's process failed.
    #[error("spawning the process of instance {instance:?}")]
    SpawnProcess {
        instance: String,
        #[source]
        source: io::Error,
    },
    /// Processes of the instance survived SIGKILL for too long (e.g. stuck in uninterruptible sleep).
    #[error("stopping instance {instance:?}: processes {pids:?} still present after SIGKILL")]
    StopTimeout { instance: String, pids: Vec<u32> },
    /// Reading the persisted state file failed.
    #[error("reading state file {path}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The persisted state file is not valid.
    #[error("parsing state file {path}")]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Writing the persisted state file failed.
    #[error("writing state file {path}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent could not become a child subreaper.
    #[error("becoming child subreaper (prctl PR_SET_CHILD_SUBREAPER)")]
    Subreaper {
        #[source]
        source: nix::Error,
    },
    /// `ProcessDriver::new` was called outside a tokio runtime.
    #[error("the process driver must be created inside a tokio runtime")]
    NoRuntime,
    /// Rotating a log file failed.
    #[error("rotating log file {path}")]
    RotateLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A blocking helper task panicked or was cancelled.
    #[error("blocking task of the driver failed")]
    Join {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Result of driver operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
