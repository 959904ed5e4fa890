//! The API server's errors, and the one place they become gRPC statuses.

use crate::store;
use tonic::{Code, Status};

/// An error from the object layer or the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Admission refused the object; each entry is `field.path: what is wrong`.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    /// A `resourceVersion` precondition failed: someone else wrote the object first.
    #[error(
        "{kind} {name:?} was modified: you sent resourceVersion {sent}, it is now {current}; get it again and reapply your change"
    )]
    Conflict {
        kind: String,
        name: String,
        sent: u64,
        current: u64,
    },
    #[error("{kind} {name:?} is being deleted")]
    BeingDeleted { kind: String, name: String },
    /// A delete of an object that protects itself (a DBCluster's `spec.deletionProtection`).
    #[error("{kind} {name:?} has {field} set; turn it off before deleting")]
    DeletionProtected {
        kind: String,
        name: String,
        field: String,
    },
    /// A watch asked for history the server no longer keeps.
    #[error("revision {requested} is compacted (oldest available is {oldest}); list again")]
    Compacted { requested: u64, oldest: u64 },
    #[error("stored {key} cannot be decoded")]
    Corrupt {
        key: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("store operation failed")]
    Store(#[source] store::Error),
    /// Logs asked of an instance the scheduler has not bound to a node: no agent has them.
    #[error("instance {instance:?} is not placed on a node yet")]
    NotPlaced { instance: String },
    #[error("instance {instance:?} is bound to node {node:?}, which does not exist")]
    NodeMissing { instance: String, node: String },
    /// The node's agent has not said where its endpoint is (an agent older than the endpoint).
    #[error("node {node:?} has no agent endpoint")]
    NoAgentEndpoint { node: String },
    #[error("cannot reach the agent of node {node:?} at {endpoint}")]
    AgentUnreachable {
        node: String,
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered with an HTTP error; `message` is its body.
    #[error("{}", agent_refused(.node, *.status, .message))]
    AgentRefused {
        node: String,
        status: u16,
        message: String,
    },
}

fn agent_refused(node: &str, status: u16, message: &str) -> String {
    match status {
        401 | 403 => format!(
            "the agent of node {node:?} refused the server's token (HTTP {status}): the agent was \
             not started with this server's join token; {message}"
        ),
        _ => format!("the agent of node {node:?} answered HTTP {status}: {message}"),
    }
}

/// `Result` with the API server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An admission error on one field.
    pub fn invalid(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Error {
        Error::Invalid(vec![format!("{field}: {message}")])
    }
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Compacted { requested, oldest } => Error::Compacted { requested, oldest },
            other => Error::Store(other),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Conflict { .. } => Code::Aborted,
            Error::BeingDeleted { .. } | Error::DeletionProtected { .. } => {
                Code::FailedPrecondition
            }
            Error::Compacted { .. } => Code::OutOfRange,
            // A lagging watcher resumes from its last revision; a stopped store recovers on
            // restart: both are worth a retry.
            Error::Store(
                store::Error::WatcherLagged { .. }
                | store::Error::FlushFailed { .. }
                | store::Error::Closed,
            ) => Code::Unavailable,
            Error::Corrupt { .. } | Error::Store(_) => Code::Internal,
            Error::NotPlaced { .. } | Error::NodeMissing { .. } => Code::FailedPrecondition,
            Error::NoAgentEndpoint { .. } | Error::AgentUnreachable { .. } => Code::Unavailable,
            Error::AgentRefused { status: 404, .. } => Code::NotFound,
            // The server and the agent disagree on the join token: an operator must fix it.
            Error::AgentRefused {
                status: 401 | 403, ..
            } => Code::Internal,
            Error::AgentRefused { .. } => Code::Unavailable,
        };
        // Internal errors carry their cause chain so an operator can act on it.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Status::new(code, message)
    }
}
