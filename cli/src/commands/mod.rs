//! One module per user command; each has an `Args` (clap) and a `run` that returns the exit
//! code or an error for [`crate::run_user`] to print.
//! `server` and `dev` start the API server and controllers in this process; every other
//! command is a client of the server.

pub mod agent;
pub mod apply;
pub mod delete;
pub mod describe;
pub mod dev;
pub mod diff;
pub mod events;
pub mod get;
pub mod instance;
pub mod logs;
pub mod misc;
pub mod server;
pub mod wait;

use anyhow::{Result, anyhow};
use hanul_proto::Selector;
use std::{io::Write, time::Duration};

/// Writes to stdout and flushes, returning the error (a closed pipe) instead of panicking as
/// `print!` would.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// True when the error is stdout's reader having gone away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Parses `30s`, `2m`, `1h30m` for `--timeout` (clap value parser).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 2m, 1h30m)"))
}

/// Checks a label selector's syntax before anything is sent; returns it as given.
pub fn check_selector(sel: Option<&str>) -> Result<String> {
    let sel = sel.unwrap_or("");
    Selector::parse(sel).map_err(|e| anyhow!("{e}"))?;
    Ok(sel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_accept_humantime_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn malformed_selectors_are_refused_before_any_call() {
        assert_eq!(check_selector(Some("app=web")).unwrap(), "app=web");
        assert_eq!(check_selector(None).unwrap(), "");
        assert!(check_selector(Some("a b=c")).is_err());
    }
}
