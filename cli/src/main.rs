//! The `hanul` binary: `server`, `dev`, and the kubectl-like user commands.

use clap::{Parser, Subcommand};
use hanul::{
    GlobalArgs, UserCommand,
    commands::{agent, dev, server},
};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "hanul",
    version,
    about = "hanul: a self-hosted mini-cloud for homelab machines"
)]
struct Hanul {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server and the controllers.
    Server(server::Args),
    /// Run a node agent that joins a server.
    Agent(agent::Args),
    /// Run everything on this machine with no setup, for trying hanul out.
    Dev(dev::Args),
    #[command(flatten)]
    User(UserCommand),
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Hanul::parse();
    let result = match cli.command {
        Command::Server(args) => {
            init_tracing("info");
            server::run(args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            init_tracing("info");
            agent::run(args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Dev(args) => {
            init_tracing("warn");
            dev::run(args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::User(cmd) => {
            init_tracing("warn");
            hanul::run_user::<Hanul>(&cli.global, cmd).await
        }
    };
    result.unwrap_or_else(|e| {
        hanul::error::report(&e);
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_whole_command_line_is_consistent() {
        Hanul::command().debug_assert();
    }
}
