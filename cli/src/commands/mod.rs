//! One module per user command; each has an `Args` (clap) and a `run` that returns the exit
//! code or an error for [`crate::run_user`] to print.
//! `server` and `dev` start the API server and controllers in this process; every other
//! command is a client of the server.

pub mod agent;
pub mod apply;
pub mod asg;
pub mod db;
pub mod delete;
pub mod describe;
pub mod dev;
pub mod diff;
pub mod events;
pub mod get;
pub mod instance;
pub mod logs;
pub mod misc;
pub mod scale;
pub mod server;
pub mod wait;

use crate::target::lower;
use anyhow::{Result, anyhow, bail};
use hanul_proto::{Client, Kind, Selector, v1::Object};
use std::{io::Write, time::Duration};
use tonic::Code;

/// How many times a read-modify-write is tried when someone else writes the object in between
/// (client-go's `retry.DefaultRetry` also gives up after five).
const UPDATE_ATTEMPTS: u32 = 5;

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

/// Reads `NAME` or `KIND/NAME` where the kind must be `kind`: the object name arguments of the
/// verbs that act on one kind (`hanul instance reboot`, `hanul asg ...`).
pub fn name_of_kind(arg: &str, kind: Kind) -> Result<&str> {
    let word = lower(kind);
    match arg.split_once('/') {
        None if !arg.is_empty() => Ok(arg),
        Some((k, name)) if Kind::lookup(k) == Some(kind) && !name.is_empty() => Ok(name),
        Some((k, _)) if Kind::lookup(k).is_some_and(|k| k != kind) => {
            bail!(
                "{arg:?}: expected a{n} {word} name or {word}/NAME, not {k}",
                n = article(&word)
            )
        }
        _ => bail!(
            "{arg:?}: expected a{n} {word} name or {word}/NAME",
            n = article(&word)
        ),
    }
}

/// `n` before a vowel: "an autoscalinggroup", "an instance".
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "n"
    } else {
        ""
    }
}

/// A value that is new at each call, for the annotations that ask an agent or a controller for
/// something once per new value (a reboot, a heartbeat, an instance refresh): now, in RFC 3339
/// with nanoseconds.
pub fn request_stamp() -> String {
    let now = hanul_proto::time::system_time(&hanul_proto::time::now());
    humantime::format_rfc3339_nanos(now).to_string()
}

/// Gets `kind/name`, lets `change` edit it, and writes it back with the resourceVersion read, so
/// that a write by someone else in between is never overwritten; on such a conflict (`Aborted`)
/// it reads again and retries, a few times. `change` may refuse (its error is returned as is);
/// it sees the fresh object on each attempt, so its checks hold for what is written.
pub async fn update_retrying(
    client: &Client,
    kind: Kind,
    name: &str,
    mut change: impl FnMut(&mut Object) -> Result<()>,
) -> Result<Object> {
    let mut attempt = 1;
    loop {
        let mut o = client.get(kind, name).await?;
        change(&mut o)?;
        match client.update(o).await {
            Ok(o) => return Ok(o),
            Err(s) if s.code() == Code::Aborted && attempt < UPDATE_ATTEMPTS => {
                // The other writer is often a controller writing status; let it finish.
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// Sets one annotation on `kind/name` through [`update_retrying`].
pub async fn annotate(
    client: &Client,
    kind: Kind,
    name: &str,
    key: &str,
    value: &str,
) -> Result<Object> {
    update_retrying(client, kind, name, |o| {
        o.metadata_mut()
            .annotations
            .insert(key.to_string(), value.to_string());
        Ok(())
    })
    .await
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

    #[test]
    fn names_may_carry_their_kind_but_not_another() {
        assert_eq!(name_of_kind("web", Kind::AutoScalingGroup).unwrap(), "web");
        assert_eq!(
            name_of_kind("asg/web", Kind::AutoScalingGroup).unwrap(),
            "web"
        );
        assert_eq!(
            name_of_kind("instance/web-1", Kind::Instance).unwrap(),
            "web-1"
        );
        let err = name_of_kind("i/web-1", Kind::AutoScalingGroup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("an autoscalinggroup name"), "{err}");
        assert!(name_of_kind("volume/data", Kind::Instance).is_err());
        assert!(name_of_kind("", Kind::Instance).is_err());
        assert!(name_of_kind("nope/x", Kind::Instance).is_err());
    }

    #[test]
    fn request_stamps_are_rfc3339_with_nanoseconds_and_new_each_time() {
        let a = request_stamp();
        let b = request_stamp();
        assert!(humantime::parse_rfc3339(&a).is_ok(), "{a}");
        assert_eq!(a.len(), "2023-11-14T22:13:20.123456789Z".len(), "{a}");
        assert_ne!(a, b);
    }
}
