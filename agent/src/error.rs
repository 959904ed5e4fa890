//! The agent's errors.

/// An error of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the API server")]
    Connect(#[source] hanul_proto::client::ConnectError),
    #[error("API call {op} for {object} failed")]
    Api {
        op: &'static str,
        object: String,
        #[source]
        source: tonic::Status,
    },
    #[error("reading {what} from {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid agent configuration: {0}")]
    Config(String),
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        /// How it ended: `exit code 1`, `signal 9`.
        status: String,
        /// What it printed (its stderr, else its stdout), trimmed.
        output: String,
    },
    #[error("{command} did not finish within {timeout:?}")]
    Timeout {
        command: String,
        timeout: std::time::Duration,
    },
}

/// `Result` with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
