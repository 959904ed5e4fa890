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
}

/// `Result` with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
