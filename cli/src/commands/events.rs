//! `hanul events [-w] [--for KIND/NAME] [-o table|wide|yaml|json|name]`: the Event table,
//! oldest first, newest last (where the eye lands), as `kubectl events`.

use super::{emit, get};
use crate::{
    output::{OutputFormat, event_sort_key, now_secs},
    target::parse_kind,
};
use anyhow::{Result, bail};
use futures::StreamExt;
use hanul_proto::{
    Kind,
    client::WatchUpdate,
    v1::{Object, object::Resource},
};
use std::process::ExitCode;

/// Arguments of `hanul events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the events about this object (KIND/NAME).
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
    /// After printing, keep printing new events.
    #[arg(short, long)]
    pub watch: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Which events to show: those about one object, or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    about: Option<(Kind, String)>,
}

impl EventFilter {
    /// Parses `--for KIND/NAME`.
    pub fn parse(for_object: Option<&str>) -> Result<EventFilter> {
        let about = match for_object {
            None => None,
            Some(s) => {
                let Some((kind, name)) = s
                    .split_once('/')
                    .filter(|(k, n)| !k.is_empty() && !n.is_empty())
                else {
                    bail!("--for {s:?}: expected KIND/NAME, e.g. instance/web-1");
                };
                Some((parse_kind(kind)?, name.to_string()))
            }
        };
        Ok(EventFilter { about })
    }

    /// Whether an event is shown.
    pub fn matches(&self, o: &Object) -> bool {
        let Some(Resource::Event(e)) = &o.resource else {
            return false;
        };
        match &self.about {
            None => true,
            Some((kind, name)) => e
                .involved_object
                .as_ref()
                .is_some_and(|r| r.kind == kind.as_str() && r.name == *name),
        }
    }
}

/// Runs `hanul events`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let filter = EventFilter::parse(args.for_object.as_deref())?;
    let client = global.connect().await?;
    if !args.watch {
        let (mut items, _) = client.list(Some(Kind::Event), "").await?;
        items.retain(|o| filter.matches(o));
        items.sort_by_key(event_sort_key);
        if items.is_empty() {
            eprintln!("No events found.");
            return Ok(ExitCode::SUCCESS);
        }
        emit(&get::render(&items, args.output, false, true, now_secs()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut printer = get::WatchPrinter::new(args.output);
    let mut listed = false;
    let mut stream = std::pin::pin!(client.list_watch(Some(Kind::Event), ""));
    while let Some(update) = stream.next().await {
        let batch: Vec<Object> = match update {
            WatchUpdate::Listed { mut items, .. } => {
                // A re-list after a broken watch repeats what was shown; show only the first.
                if listed {
                    continue;
                }
                listed = true;
                items.retain(|o| filter.matches(o));
                items.sort_by_key(event_sort_key);
                items
            }
            WatchUpdate::Event(ev) => {
                if ev.r#type() == hanul_proto::v1::EventType::Deleted {
                    continue;
                }
                ev.object
                    .into_iter()
                    .filter(|o| filter.matches(o))
                    .collect()
            }
            WatchUpdate::Error(status) if !listed => return Err(status.into()),
            WatchUpdate::Error(status) => {
                eprintln!(
                    "warning: watch interrupted, retrying: {}",
                    crate::error::render_status(&status)
                );
                continue;
            }
        };
        if !batch.is_empty() {
            emit(&printer.batch(Kind::Event, &batch, true, now_secs()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Event, ObjectReference};

    fn ev(kind: &str, name: &str) -> Object {
        Event {
            involved_object: Some(ObjectReference {
                kind: kind.into(),
                name: name.into(),
                uid: String::new(),
            }),
            ..Default::default()
        }
        .into()
    }

    #[test]
    fn for_filters_by_the_involved_objects_kind_and_name() {
        let f = EventFilter::parse(Some("i/web-1")).unwrap();
        assert!(f.matches(&ev("Instance", "web-1")));
        assert!(!f.matches(&ev("Instance", "web-2")));
        assert!(!f.matches(&ev("Volume", "web-1")));
        assert!(
            EventFilter::parse(None)
                .unwrap()
                .matches(&ev("Volume", "x"))
        );
        assert!(EventFilter::parse(Some("web-1")).is_err());
        assert!(EventFilter::parse(Some("bogus/web-1")).is_err());
    }
}
