//! `hanul wait KIND/NAME... --for condition=TYPE[=STATUS] | --for delete |
//! --for jsonpath={.status.state}=VALUE [--timeout 30s]`.
//!
//! Follows the objects with a list-then-watch of their kind (which resumes and re-lists on its
//! own), so that the wait ends as soon as the change is stored, with no polling interval.

use super::{emit, parse_duration};
use crate::target::{parse_named, ref_name};
use anyhow::{Result, anyhow, bail};
use futures::StreamExt;
use hanul_proto::{
    Client, Kind,
    client::WatchUpdate,
    manifest::to_value,
    v1::{EventType, Object},
};
use serde_json::Value;
use std::{process::ExitCode, time::Duration};
use tokio::time::Instant;

/// Arguments of `hanul wait`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// KIND/NAME... or KIND NAME...
    #[arg(required = true, value_name = "KIND/NAME")]
    pub targets: Vec<String>,
    /// condition=TYPE (status True), condition=TYPE=STATUS, delete, or
    /// jsonpath={.status.state}=VALUE.
    #[arg(long = "for", value_name = "CONDITION", value_parser = WaitFor::parse)]
    pub wait_for: WaitFor,
    /// How long to wait for all of them.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// A `status.conditions[]` entry of this type with this status (`True` by default).
    Condition { r#type: String, status: String },
    /// The object is gone.
    Delete,
    /// A field (dotted path from the object's root) has this value.
    Field { path: Vec<String>, value: String },
}

impl WaitFor {
    /// Parses the `--for` argument.
    pub fn parse(s: &str) -> Result<WaitFor, String> {
        if s == "delete" {
            return Ok(WaitFor::Delete);
        }
        if let Some(rest) = s.strip_prefix("condition=") {
            let (ty, status) = match rest.split_once('=') {
                Some((t, st)) => (t, st),
                None => (rest, "True"),
            };
            if ty.is_empty() || status.is_empty() {
                return Err(format!(
                    "{s:?}: expected condition=TYPE or condition=TYPE=STATUS"
                ));
            }
            return Ok(WaitFor::Condition {
                r#type: ty.to_string(),
                status: status.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("jsonpath=") {
            let rest = rest.trim_matches('\'');
            let (path, value) = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .and_then(|(p, v)| Some((p, v.trim_matches('\'').strip_prefix('=')?)))
                .ok_or_else(|| format!("{s:?}: expected jsonpath={{.status.state}}=VALUE"))?;
            let path: Vec<String> = path
                .split('.')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if path.is_empty() {
                return Err(format!("{s:?}: empty path"));
            }
            return Ok(WaitFor::Field {
                path,
                value: value.to_string(),
            });
        }
        Err(format!(
            "{s:?}: expected condition=TYPE[=STATUS], delete, or jsonpath={{.status.state}}=VALUE"
        ))
    }

    /// Whether a (present) object meets the condition. `Delete` never holds for a present
    /// object.
    pub fn holds(&self, o: &Object) -> bool {
        match self {
            WaitFor::Delete => false,
            WaitFor::Condition { r#type, status } => conditions(o).iter().any(|c| {
                c["type"].as_str() == Some(r#type)
                    && c["status"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(status))
            }),
            WaitFor::Field { path, value } => {
                let v = to_value(o);
                let found = path.iter().try_fold(&v, |v, k| v.get(k));
                let text = match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                text == *value
            }
        }
    }
}

fn conditions(o: &Object) -> Vec<Value> {
    match to_value(o).pointer("/status/conditions") {
        Some(Value::Array(c)) => c.clone(),
        _ => Vec::new(),
    }
}

/// A short account of an object's state for timeout messages: its conditions, finalizers and
/// deletion.
pub fn summary(o: &Object) -> String {
    let mut parts = Vec::new();
    for c in conditions(o) {
        let mut s = format!(
            "{}={}",
            c["type"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?")
        );
        if let Some(r) = c["reason"].as_str().filter(|r| !r.is_empty()) {
            s.push_str(&format!(" ({r})"));
        }
        parts.push(s);
    }
    if let Some(m) = o.metadata() {
        if m.deleted_at.is_some() {
            parts.push("deletion pending".into());
        }
        if !m.finalizers.is_empty() {
            parts.push(format!("finalizers: {}", m.finalizers.join(", ")));
        }
    }
    if parts.is_empty() {
        "no conditions".into()
    } else {
        parts.join("; ")
    }
}

/// Runs `hanul wait`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let targets = parse_named(&args.targets, "wait")?;
    let client = global.connect().await?;
    let deadline = Instant::now() + args.timeout;
    for (kind, name) in &targets {
        wait_for(&client, *kind, name, &args.wait_for, deadline).await?;
        emit(&format!("{} condition met\n", ref_name(*kind, name)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until `kind/name` meets `what` or `deadline` passes. For a condition, an absent object
/// is an error (NotFound at first, "deleted" later); for `Delete`, the object counts as gone
/// also when one with the same name but another uid replaces it.
pub async fn wait_for(
    client: &Client,
    kind: Kind,
    name: &str,
    what: &WaitFor,
    deadline: Instant,
) -> Result<()> {
    let what_ref = ref_name(kind, name);
    let mut uid: Option<String> = None;
    let timed_out = |last: Option<&Object>| {
        let seen = last
            .map(|o| format!(" (last seen: {})", summary(o)))
            .unwrap_or_default();
        if *what == WaitFor::Delete {
            anyhow!("timed out waiting for {what_ref} to be deleted{seen}")
        } else {
            anyhow!("timed out waiting for the condition on {what_ref}{seen}")
        }
    };
    watch_until(client, kind, name, deadline, timed_out, |current, first| {
        // A different uid under the same name is a new object: the one waited on is gone.
        let current = current.filter(|o| {
            let this = o.metadata().map(|m| m.uid.clone()).unwrap_or_default();
            match &uid {
                Some(u) if !u.is_empty() && !this.is_empty() => *u == this,
                _ => {
                    uid = Some(this);
                    true
                }
            }
        });
        match (current, what) {
            (None, WaitFor::Delete) => Ok(Some(())),
            (None, _) if first => Err(anyhow!(tonic::Status::not_found(format!(
                "{} {name:?} not found",
                kind.plural()
            )))),
            (None, _) => bail!("{what_ref} was deleted while waiting"),
            (Some(o), w) => Ok(w.holds(o).then_some(())),
        }
    })
    .await
}

/// Watches `kind/name` (a list, then its events) until `check` returns a value or an error,
/// or `deadline` passes (the error `timed_out` makes from the last object seen). `check` is
/// given the object, None once it is gone, and whether this is the first look (the list).
pub async fn watch_until<T>(
    client: &Client,
    kind: Kind,
    name: &str,
    deadline: Instant,
    timed_out: impl Fn(Option<&Object>) -> anyhow::Error,
    mut check: impl FnMut(Option<&Object>, bool) -> Result<Option<T>>,
) -> Result<T> {
    let mut last: Option<Object> = None;
    let mut listed = false;
    let mut stream = std::pin::pin!(client.list_watch(Some(kind), ""));
    loop {
        let update = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(u)) => u,
            Ok(None) => bail!("the watch of {} ended", kind.plural()),
            Err(_) => return Err(timed_out(last.as_ref())),
        };
        let current: Option<Option<Object>> = match update {
            WatchUpdate::Listed { items, .. } => Some(items.into_iter().find(|o| o.name() == name)),
            WatchUpdate::Event(ev) => match (ev.r#type(), ev.object) {
                (ty, Some(o)) if o.name() == name => {
                    if ty == EventType::Deleted {
                        Some(None)
                    } else {
                        Some(Some(o))
                    }
                }
                _ => None,
            },
            WatchUpdate::Error(status) if !listed => return Err(status.into()),
            WatchUpdate::Error(_) => None,
        };
        let first = !listed;
        listed = true;
        let Some(current) = current else { continue };
        if let Some(done) = check(current.as_ref(), first)? {
            return Ok(done);
        }
        if current.is_some() {
            last = current;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Condition, Instance, InstanceStatus, ObjectMeta};

    fn inst(state: &str, ready: &str) -> Object {
        Instance {
            metadata: Some(ObjectMeta {
                name: "web-1".into(),
                finalizers: vec!["hanul.dev/agent".into()],
                ..Default::default()
            }),
            spec: None,
            status: Some(InstanceStatus {
                state: state.into(),
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: ready.into(),
                    reason: "Started".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
        .into()
    }

    #[test]
    fn for_arguments_parse_in_kubectl_forms() {
        assert_eq!(
            WaitFor::parse("condition=Ready"),
            Ok(WaitFor::Condition {
                r#type: "Ready".into(),
                status: "True".into()
            })
        );
        assert_eq!(
            WaitFor::parse("condition=Ready=False"),
            Ok(WaitFor::Condition {
                r#type: "Ready".into(),
                status: "False".into()
            })
        );
        assert_eq!(WaitFor::parse("delete"), Ok(WaitFor::Delete));
        assert_eq!(
            WaitFor::parse("jsonpath={.status.state}=running"),
            Ok(WaitFor::Field {
                path: vec!["status".into(), "state".into()],
                value: "running".into()
            })
        );
        for bad in ["ready", "condition=", "condition=Ready=", "jsonpath=.x"] {
            assert!(WaitFor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conditions_hold_only_with_the_wanted_status() {
        let ready = WaitFor::parse("condition=Ready").unwrap();
        assert!(ready.holds(&inst("running", "True")));
        assert!(!ready.holds(&inst("pending", "False")));
        assert!(
            WaitFor::parse("condition=Ready=false")
                .unwrap()
                .holds(&inst("x", "False"))
        );
        assert!(
            !WaitFor::parse("condition=Scheduled")
                .unwrap()
                .holds(&inst("x", "True"))
        );
        assert!(!WaitFor::Delete.holds(&inst("x", "True")));
    }

    #[test]
    fn field_conditions_compare_the_value_at_the_path() {
        let running = WaitFor::parse("jsonpath={.status.state}=running").unwrap();
        assert!(running.holds(&inst("running", "True")));
        assert!(!running.holds(&inst("stopped", "True")));
    }

    #[test]
    fn timeout_summaries_show_conditions_and_finalizers() {
        assert_eq!(
            summary(&inst("x", "False")),
            "Ready=False (Started); finalizers: hanul.dev/agent"
        );
    }
}
