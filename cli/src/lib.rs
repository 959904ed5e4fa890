//! The `hanul` binary's library: the kubectl-like user commands (`apply`, `get`, `describe`,
//! `delete`, `diff`, `wait`, `scale`, `logs`, `events`, `api-resources`, `completion`,
//! `version`) and the cloud's own verbs (`instance`, `asg`, `db`).
//!
//! Every user command talks to the API server only through [`hanul_proto::Client`]. The
//! server, agent and dev subcommands are wired beside these in `main.rs`: the top-level parser
//! flattens [`GlobalArgs`] and [`UserCommand`] into itself and hands user commands to
//! [`run_user`]. [`Cli`] is a complete parser of the user commands alone (what `main.rs` uses
//! until those are wired, and what tests parse).
//!
//! Errors are printed here, once, in kubectl's wording ([`error::render`]), and turned into the
//! exit code: 1 for a failed command, 2 for a failed `diff` (whose 1 means "differs").

pub mod commands;
pub mod config;
pub mod error;
pub mod manifests;
pub mod output;
pub mod target;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use hanul_proto::Client;
use std::{path::PathBuf, process::ExitCode};

/// Options every user command takes: where the server is and how to authenticate.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GlobalArgs {
    /// The API server's URL [env: HANUL_SERVER] [default: from the config file, else
    /// http://127.0.0.1:7443].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// A file holding the bearer token (the server writes admin.token in its data directory)
    /// [env: HANUL_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself [env: HANUL_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

impl GlobalArgs {
    /// The server and token after precedence: flags, environment, config file, default.
    pub fn resolve(&self) -> Result<config::Resolved> {
        let file = config::read_config(&config::config_path())?;
        let flags = config::Flags {
            server: self.server.as_deref(),
            token: self.token.as_deref(),
            token_file: self.token_file.as_deref(),
        };
        let env = |k: &str| std::env::var(k).ok();
        Ok(config::resolve(&flags, &env, &file))
    }

    /// Connects to the resolved server with the resolved token.
    pub async fn connect(&self) -> Result<Client> {
        let resolved = self.resolve()?;
        let token = config::read_token(&resolved.token)?;
        Ok(Client::connect(&resolved.server, &token).await?)
    }
}

/// The user-facing commands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create or update objects from manifests (files, directories or stdin).
    Apply(commands::apply::Args),
    /// List objects, or show named ones.
    Get(commands::get::Args),
    /// Show an object in detail: metadata, spec, status, conditions and recent events.
    Describe(commands::describe::Args),
    /// Delete objects by name, by label selector or from manifests.
    Delete(commands::delete::Args),
    /// Show how manifests differ from the live objects (exit 1 when they do).
    Diff(commands::diff::Args),
    /// Wait until objects meet a condition or are deleted.
    Wait(commands::wait::Args),
    /// Set an auto scaling group's desired capacity.
    Scale(commands::scale::Args),
    /// Start, stop, reboot or terminate instances.
    Instance(commands::instance::Args),
    /// Auto scaling group actions: activities, lifecycle actions, instance refresh.
    Asg(commands::asg::Args),
    /// Database cluster actions: failover (switchover), reboot, endpoints, psql, snapshot,
    /// snapshots, restore, clone.
    Db(commands::db::Args),
    /// Print an instance's console log (stdout and stderr); -f follows it.
    Logs(commands::logs::Args),
    /// List events, newest last.
    Events(commands::events::Args),
    /// List the kinds the server serves, with their short names.
    ApiResources,
    /// Print a shell completion script.
    Completion(commands::misc::CompletionArgs),
    /// Print the version.
    Version,
}

/// A parser for the user commands alone.
#[derive(Debug, Parser)]
#[command(name = "hanul", version, about = "hanul: a self-hosted mini-cloud", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

/// Runs a parsed [`Cli`].
pub async fn run(cli: Cli) -> Result<ExitCode> {
    run_user::<Cli>(&cli.global, cli.command).await
}

/// Runs one user command. `C` is the binary's top-level parser, from which `completion`
/// generates its script (so that it also completes `server`, `agent` and `dev`).
///
/// Failures are printed to stderr here and become the exit code; the `Err` case is kept for
/// callers' convenience and is not produced today.
pub async fn run_user<C: CommandFactory>(
    global: &GlobalArgs,
    command: UserCommand,
) -> Result<ExitCode> {
    let failure = match command {
        UserCommand::Diff(_) => commands::diff::EXIT_ERROR,
        _ => 1,
    };
    let result = match command {
        UserCommand::Apply(a) => commands::apply::run(global, a).await,
        UserCommand::Get(a) => commands::get::run(global, a).await,
        UserCommand::Describe(a) => commands::describe::run(global, a).await,
        UserCommand::Delete(a) => commands::delete::run(global, a).await,
        UserCommand::Diff(a) => commands::diff::run(global, a).await,
        UserCommand::Wait(a) => commands::wait::run(global, a).await,
        UserCommand::Scale(a) => commands::scale::run(global, a).await,
        UserCommand::Instance(a) => commands::instance::run(global, a).await,
        UserCommand::Asg(a) => commands::asg::run(global, a).await,
        UserCommand::Db(a) => commands::db::run(global, a).await,
        UserCommand::Logs(a) => commands::logs::run(global, a).await,
        UserCommand::Events(a) => commands::events::run(global, a).await,
        UserCommand::ApiResources => commands::misc::api_resources(),
        UserCommand::Completion(a) => commands::misc::completion(a.shell, &mut C::command()),
        UserCommand::Version => commands::misc::version(),
    };
    Ok(match result {
        Ok(code) => code,
        // `hanul get i | head -1`: the reader went away; that is not a failure to report.
        Err(e) if commands::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            error::report(&e);
            ExitCode::from(failure)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_command_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "hanul",
            "get",
            "i",
            "web-1",
            "--server",
            "http://x:1",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("http://x:1"));
        let UserCommand::Get(g) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(g.targets, ["i", "web-1"]);
        assert_eq!(g.output, output::OutputFormat::Wide);
    }

    #[test]
    fn kubectl_spellings_of_the_common_flags_parse() {
        for argv in [
            &["hanul", "apply", "-f", "a.yaml", "-f", "dir", "--dry-run"][..],
            &["hanul", "apply", "-f", "-", "--prune", "-l", "app=web"],
            &["hanul", "get", "instances", "-l", "app=web", "-w"],
            &["hanul", "delete", "i/web-1", "--wait", "--timeout", "2m"],
            &["hanul", "delete", "-f", "web.yaml", "--ignore-not-found"],
            &[
                "hanul",
                "wait",
                "i/web-1",
                "--for",
                "condition=Ready",
                "--timeout",
                "30s",
            ],
            &["hanul", "wait", "i/web-1", "--for=delete"],
            &["hanul", "events", "-w", "--for", "i/web-1"],
            &["hanul", "describe", "i", "web-1"],
            &["hanul", "diff", "-f", "web.yaml"],
            &["hanul", "scale", "asg", "web", "--desired", "3"],
            &["hanul", "describe", "asg", "web"],
            &["hanul", "describe", "db", "orders"],
            &["hanul", "get", "dbinstances", "-o", "wide"],
            &["hanul", "db", "failover", "orders", "--target", "orders-2"],
            &[
                "hanul",
                "db",
                "snapshot",
                "orders",
                "orders-snap-1",
                "--wait",
            ],
            &["hanul", "db", "snapshots", "orders", "-o", "wide"],
            &[
                "hanul",
                "db",
                "restore",
                "orders-copy",
                "--snapshot",
                "snap-1",
            ],
            &["hanul", "db", "clone", "orders", "orders-copy", "--wait"],
            &["hanul", "describe", "dbsnapshot", "orders-snap-1"],
            &["hanul", "completion", "bash"],
            &["hanul", "api-resources"],
            &["hanul", "version"],
        ] {
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{argv:?}: {e}");
            }
        }
    }

    #[test]
    fn a_bad_timeout_is_refused_by_the_parser() {
        let err = Cli::try_parse_from(["hanul", "delete", "i/a", "--timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }
}
