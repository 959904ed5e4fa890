//! `hanul api-resources`, `hanul completion SHELL` and `hanul version`: the commands that need
//! no server.

use super::emit;
use crate::output::Table;
use anyhow::Result;
use hanul_proto::{Kind, manifest::API_VERSION};
use std::process::ExitCode;

/// Arguments of `hanul completion`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to generate for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The `api-resources` table: NAME SHORTNAMES APIVERSION KIND, from the kind registry.
pub fn api_resources_table() -> String {
    let mut t = Table::new(&["NAME", "SHORTNAMES", "APIVERSION", "KIND"]);
    for k in Kind::ALL {
        t.push(vec![
            k.plural().to_string(),
            k.short_names().join(","),
            API_VERSION.to_string(),
            k.as_str().to_string(),
        ]);
    }
    t.render()
}

/// Runs `hanul api-resources`.
pub fn api_resources() -> Result<ExitCode> {
    emit(&api_resources_table())?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the completion script for `shell` of the binary's whole command tree `cmd`.
pub fn completion_script(shell: clap_complete::Shell, cmd: &mut clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, &mut out);
    out
}

/// Runs `hanul completion SHELL`.
pub fn completion(shell: clap_complete::Shell, cmd: &mut clap::Command) -> Result<ExitCode> {
    emit(&String::from_utf8_lossy(&completion_script(shell, cmd)))?;
    Ok(ExitCode::SUCCESS)
}

/// The client version line.
pub fn version_text() -> String {
    format!(
        "Client Version: v{}\nAPI Version: {API_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Runs `hanul version`.
pub fn version() -> Result<ExitCode> {
    emit(&version_text())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn api_resources_lists_every_kind_with_short_names() {
        let t = api_resources_table();
        assert!(t.starts_with("NAME "), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("instances ")
                && l.contains("i,inst,ec2")
                && l.contains("hanul/v1")
                && l.ends_with("Instance")),
            "{t}"
        );
        assert_eq!(t.lines().count(), Kind::ALL.len() + 1);
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        let script = completion_script(clap_complete::Shell::Bash, &mut crate::Cli::command());
        let s = String::from_utf8(script).unwrap();
        assert!(
            s.contains("hanul") && s.contains("api-resources"),
            "{}",
            &s[..200.min(s.len())]
        );
    }

    #[test]
    fn version_names_the_client_version() {
        assert!(
            version_text().starts_with(&format!("Client Version: v{}", env!("CARGO_PKG_VERSION")))
        );
    }
}
