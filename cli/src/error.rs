//! How the CLI words its failures, in kubectl's shape.
//!
//! A refusal by the server is `Error from server (NotFound): <message>`, with the gRPC code's
//! name; everything else is `error: <cause>: <cause>...`. The CLI is the top level, so errors are
//! `anyhow` chains; a [`tonic::Status`] anywhere in the chain is what decides the wording.

use tonic::{Code, Status};

/// The server's refusal in the chain, if any.
pub fn status_of(err: &anyhow::Error) -> Option<&Status> {
    err.chain().find_map(|e| e.downcast_ref::<Status>())
}

/// Renders a gRPC status the way kubectl renders an API error.
pub fn render_status(status: &Status) -> String {
    let code = status.code();
    let message = status.message();
    match code {
        // Not the server speaking: the connection failed.
        Code::Unavailable => format!("error: cannot reach the hanul server: {message}"),
        Code::Unauthenticated => format!(
            "Error from server (Unauthenticated): {message} (pass --token-file FILE or set \
             HANUL_TOKEN; the server writes admin.token in its data directory)"
        ),
        _ => format!("Error from server ({code:?}): {message}"),
    }
}

/// Renders any CLI error for stderr (one line per error, no trailing newline).
pub fn render(err: &anyhow::Error) -> String {
    match status_of(err) {
        Some(status) => render_status(status),
        None => format!("error: {err:#}"),
    }
}

/// Prints an error to stderr in the rendered form.
pub fn report(err: &anyhow::Error) {
    eprintln!("{}", render(err));
}

/// True when the error is the server saying the object does not exist.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    status_of(err).is_some_and(|s| s.code() == Code::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_refusals_name_the_grpc_code_like_kubectl() {
        let err = anyhow::Error::from(Status::invalid_argument("spec.vcpu: must be > 0"));
        assert_eq!(
            render(&err),
            "Error from server (InvalidArgument): spec.vcpu: must be > 0"
        );
        let err = anyhow::Error::from(Status::not_found("instances \"x\" not found"));
        assert!(is_not_found(&err));
        assert_eq!(
            render(&err),
            "Error from server (NotFound): instances \"x\" not found"
        );
    }

    #[test]
    fn a_status_under_context_still_renders_as_a_server_error() {
        let err = anyhow::Error::from(Status::already_exists("Instance/a exists"))
            .context("creating Instance/a");
        assert_eq!(
            render(&err),
            "Error from server (AlreadyExists): Instance/a exists"
        );
    }

    #[test]
    fn client_errors_print_their_whole_chain() {
        let err = anyhow::anyhow!("no such file").context("reading web.yaml");
        assert_eq!(render(&err), "error: reading web.yaml: no such file");
        assert!(!is_not_found(&err));
    }
}
