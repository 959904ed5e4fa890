//! `hanul logs [instance/]NAME [-f] [--tail N]`: an instance's console log (its stdout and
//! stderr, interleaved), as `kubectl logs` and EC2's get-console-output.
//!
//! The bytes are written to stdout as they arrive, unchanged (a log need not be UTF-8), and
//! flushed chunk by chunk so `-f` shows lines as the instance writes them.

use crate::target::{Targets, lower, parse_targets};
use anyhow::{Result, anyhow, bail};
use futures::StreamExt;
use hanul_proto::Kind;
use std::{io::Write, process::ExitCode};
use tonic::{Code, Status};

/// Arguments of `hanul logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The instance: NAME, instance/NAME or i/NAME.
    #[arg(value_name = "[instance/]NAME")]
    pub target: String,
    /// Keep streaming what the instance writes until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Start with the last N lines [default: the whole log; a negative N means the same].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub tail: Option<i64>,
}

/// The instance a `logs` argument names: `NAME`, or `KIND/NAME` whose kind is an instance's.
pub fn parse_instance(arg: &str) -> Result<String> {
    if !arg.contains('/') {
        if arg.is_empty() {
            bail!("name an instance: `hanul logs NAME` or `hanul logs instance/NAME`");
        }
        return Ok(arg.to_owned());
    }
    match parse_targets(&[arg.to_owned()])? {
        Targets::Named(named) => match named.as_slice() {
            [(Kind::Instance, name)] => Ok(name.clone()),
            [(kind, _)] => bail!(
                "{arg:?}: only instances have logs, not a {}; use instance/NAME",
                lower(*kind)
            ),
            _ => bail!("{arg:?}: expected one instance"),
        },
        Targets::All(_) => bail!("{arg:?}: expected instance/NAME"),
    }
}

/// The server could not get the log from the instance's node. The CLI's generic wording of
/// UNAVAILABLE blames the connection to the server, which answered here: say what it said.
fn explain(status: Status) -> anyhow::Error {
    if status.code() == Code::Unavailable {
        anyhow!("the server cannot get the log: {}", status.message())
    } else {
        status.into()
    }
}

/// Runs `hanul logs`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let name = parse_instance(&args.target)?;
    let tail = args.tail.filter(|n| *n >= 0);
    let client = global.connect().await?;
    let mut stream = client
        .logs(&name, args.follow, tail)
        .await
        .map_err(explain)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(explain)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, UserCommand};
    use clap::Parser;

    #[test]
    fn an_instance_is_named_alone_or_with_any_of_its_kind_names() {
        for arg in ["web-1", "instance/web-1", "instances/web-1", "i/web-1"] {
            assert_eq!(parse_instance(arg).unwrap(), "web-1", "{arg}");
        }
    }

    #[test]
    fn other_kinds_and_malformed_names_are_refused() {
        let err = parse_instance("node/n1").unwrap_err().to_string();
        assert!(err.contains("only instances have logs"), "{err}");
        assert!(parse_instance("i/").is_err());
        assert!(parse_instance("").is_err());
        assert!(parse_instance("buckets/b").is_err());
    }

    #[test]
    fn follow_and_tail_parse_like_kubectl() {
        let cli = Cli::try_parse_from(["hanul", "logs", "i/web-1", "-f", "--tail", "20"]).unwrap();
        let UserCommand::Logs(a) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            (a.target.as_str(), a.follow, a.tail),
            ("i/web-1", true, Some(20))
        );
        let cli = Cli::try_parse_from(["hanul", "logs", "web-1", "--tail=-1"]).unwrap();
        let UserCommand::Logs(a) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((a.follow, a.tail), (false, Some(-1)));
        assert!(Cli::try_parse_from(["hanul", "logs", "web-1", "--tail", "many"]).is_err());
    }

    #[test]
    fn an_unreachable_agent_is_not_blamed_on_the_server_connection() {
        let err = explain(Status::unavailable("node \"n1\" has no agent endpoint"));
        assert_eq!(
            crate::error::render(&err),
            "error: the server cannot get the log: node \"n1\" has no agent endpoint"
        );
        let err = explain(Status::not_found("Instance \"x\" not found"));
        assert!(crate::error::is_not_found(&err));
    }
}
