//! `hanul describe KIND [NAME...] [-l SELECTOR]`: one readable page per object — metadata,
//! spec, status, conditions as a table, and the object's recent events.

use super::{check_selector, emit};
use crate::{
    error::{is_not_found, report},
    output::{
        NONE, Table, age, event_sort_key, event_time, manifest_value, now_secs, or_none, timestamp,
    },
    target::{Targets, parse_targets},
};
use anyhow::{Result, bail};
use hanul_proto::{
    Kind,
    v1::{Object, object::Resource},
};
use serde_json::Value;
use std::process::ExitCode;

/// Width of the label column of the metadata section.
const LABEL_WIDTH: usize = 20;

/// Arguments of `hanul describe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// KIND [NAME...] or KIND/NAME...; without names, every object of KIND.
    #[arg(required = true, value_name = "KIND [NAME...]")]
    pub targets: Vec<String>,
    /// With KIND alone: only objects whose labels match.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
}

/// Runs `hanul describe`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let targets = parse_targets(&args.targets)?;
    let selector = check_selector(args.selector.as_deref())?;
    if matches!(targets, Targets::Named(_)) && !selector.is_empty() {
        bail!("name objects or select them with -l, not both");
    }
    let client = global.connect().await?;
    let mut failed = false;
    let objects = match targets {
        Targets::All(kind) => client.list(Some(kind), &selector).await?.0,
        Targets::Named(named) => {
            let mut found = Vec::new();
            for (kind, name) in named {
                match client.get(kind, &name).await {
                    Ok(o) => found.push(o),
                    Err(s) => {
                        let e = anyhow::Error::from(s);
                        if !is_not_found(&e) {
                            return Err(e);
                        }
                        report(&e);
                        failed = true;
                    }
                }
            }
            found
        }
    };
    if objects.is_empty() && !failed {
        eprintln!("No resources found.");
        return Ok(ExitCode::SUCCESS);
    }
    // Events are listed once and matched to each object here; the server has no field selector.
    let events = if objects.iter().any(|o| o.kind() != Some(Kind::Event)) {
        client.list(Some(Kind::Event), "").await?.0
    } else {
        Vec::new()
    };
    // A load balancer's page shows the health of the targets behind it.
    let target_groups = if objects.iter().any(|o| o.kind() == Some(Kind::LoadBalancer)) {
        client.list(Some(Kind::TargetGroup), "").await?.0
    } else {
        Vec::new()
    };
    let now = now_secs();
    let pages: Vec<String> = objects
        .iter()
        .map(|o| describe_with(o, &events_for(o, &events), &target_groups, now))
        .collect();
    emit(&pages.join("\n\n"))?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The events about `o` (same kind and name, and same uid when both are known), oldest first.
pub fn events_for(o: &Object, events: &[Object]) -> Vec<Object> {
    let Some(kind) = o.kind() else {
        return Vec::new();
    };
    let uid = o.metadata().map(|m| m.uid.as_str()).unwrap_or("");
    let mut out: Vec<Object> = events
        .iter()
        .filter(|e| match &e.resource {
            Some(Resource::Event(ev)) => ev.involved_object.as_ref().is_some_and(|r| {
                r.kind == kind.as_str()
                    && r.name == o.name()
                    && (r.uid.is_empty() || uid.is_empty() || r.uid == uid)
            }),
            _ => false,
        })
        .cloned()
        .collect();
    out.sort_by_key(event_sort_key);
    out
}

fn field(out: &mut String, label: &str, value: &str) {
    let label = format!("{label}:");
    out.push_str(&format!("{label:<LABEL_WIDTH$}{value}\n"));
}

/// A multi-line field (labels, owner references): the first value beside the label, the rest
/// aligned under it.
fn field_lines(out: &mut String, label: &str, values: &[String]) {
    if values.is_empty() {
        field(out, label, NONE);
        return;
    }
    field(out, label, &values[0]);
    for v in &values[1..] {
        out.push_str(&format!("{:LABEL_WIDTH$}{v}\n", ""));
    }
}

/// The page for one object at `now`.
pub fn describe(o: &Object, events: &[Object], now: i64) -> String {
    describe_with(o, events, &[], now)
}

/// The page of a load balancer's target groups' health, one target a row.
fn target_health(o: &Object, target_groups: &[Object]) -> Option<String> {
    let Some(Resource::LoadBalancer(lb)) = &o.resource else {
        return None;
    };
    let mut names: Vec<&str> = Vec::new();
    for l in lb.spec.iter().flat_map(|s| &s.listeners) {
        let rules = l.rules.iter().map(|r| r.target_group.as_str());
        for name in std::iter::once(l.default_target_group.as_str()).chain(rules) {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut t = Table::new(&[
        "TARGET-GROUP",
        "TARGET",
        "ADDRESS",
        "HEALTH",
        "REASON",
        "DESCRIPTION",
    ]);
    for name in names {
        let tg = target_groups.iter().find_map(|g| match &g.resource {
            Some(Resource::TargetGroup(tg)) if g.name() == name => Some(tg),
            _ => None,
        });
        let Some(tg) = tg else {
            t.push(vec![
                name.into(),
                NONE.into(),
                NONE.into(),
                "(no such target group)".into(),
                NONE.into(),
                NONE.into(),
            ]);
            continue;
        };
        let targets = tg
            .status
            .as_ref()
            .map(|s| s.targets.as_slice())
            .unwrap_or_default();
        if targets.is_empty() {
            t.push(vec![
                name.into(),
                NONE.into(),
                NONE.into(),
                NONE.into(),
                NONE.into(),
                NONE.into(),
            ]);
        }
        for target in targets {
            t.push(vec![
                name.into(),
                or_none(&target.instance),
                or_none(&target.address),
                or_none(&target.health),
                or_none(&target.reason),
                or_none(&target.description),
            ]);
        }
    }
    Some(t.render())
}

/// [`describe`], with the target groups a load balancer's page shows the health of.
pub fn describe_with(o: &Object, events: &[Object], target_groups: &[Object], now: i64) -> String {
    let mut out = String::new();
    let meta = o.metadata().cloned().unwrap_or_default();
    field(&mut out, "Name", &meta.name);
    field(&mut out, "Kind", o.kind().map(Kind::as_str).unwrap_or("?"));
    let mut labels: Vec<String> = meta
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    field_lines(&mut out, "Labels", &labels);
    let mut annotations: Vec<String> = meta
        .annotations
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    annotations.sort();
    field_lines(&mut out, "Annotations", &annotations);
    let created = meta.created_at.as_ref();
    field(
        &mut out,
        "Created",
        &format!("{} ({} ago)", timestamp(created), age(created, now)),
    );
    field(&mut out, "UID", &or_none(&meta.uid));
    field(
        &mut out,
        "Resource Version",
        &meta.resource_version.to_string(),
    );
    field(&mut out, "Generation", &meta.generation.to_string());
    field_lines(&mut out, "Finalizers", &meta.finalizers);
    let owners: Vec<String> = meta
        .owner_references
        .iter()
        .map(|r| {
            let mut s = format!("{}/{}", r.kind, r.name);
            if r.controller {
                s.push_str(" (controller)");
            }
            s
        })
        .collect();
    field_lines(&mut out, "Owner References", &owners);
    if let Some(d) = meta.deleted_at.as_ref() {
        let mut text = format!("{} ({} ago)", timestamp(Some(d)), age(Some(d), now));
        if !meta.finalizers.is_empty() {
            text.push_str(", waiting for finalizers");
        }
        field(&mut out, "Deleted", &text);
    }

    let Value::Object(mut body) = manifest_value(o) else {
        return out;
    };
    for key in ["apiVersion", "kind", "metadata"] {
        body.remove(key);
    }
    let spec = body.remove("spec");
    let mut status = body.remove("status");
    // Kinds without spec and status (Event) show their fields at the top level.
    if !body.is_empty() {
        // In a reading order rather than the wire's.
        const FIRST: &[&str] = &["type", "reason", "involvedObject", "message", "source"];
        let mut ordered = serde_json::Map::new();
        for k in FIRST {
            if let Some(v) = body.remove(*k) {
                ordered.insert(k.to_string(), v);
            }
        }
        ordered.extend(body);
        render_map(&mut out, &ordered, 0);
    }
    let conditions = status
        .as_mut()
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("conditions"));
    if o.kind().is_some_and(Kind::has_status) {
        out.push_str("Spec:\n");
        render_section(&mut out, spec.as_ref());
        out.push_str("Status:\n");
        render_section(&mut out, status.as_ref());
        out.push_str("Conditions:\n");
        match conditions {
            Some(Value::Array(cs)) if !cs.is_empty() => {
                let mut t = Table::new(&["TYPE", "STATUS", "REASON", "MESSAGE", "LAST-TRANSITION"]);
                for c in &cs {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    let last = c["lastTransitionTime"]
                        .as_str()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| {
                            age(
                                Some(&pbjson_types::Timestamp {
                                    seconds: d.as_secs() as i64,
                                    nanos: 0,
                                }),
                                now,
                            ) + " ago"
                        })
                        .unwrap_or_else(|| NONE.into());
                    t.push(vec![
                        s("type"),
                        s("status"),
                        or_none(&s("reason")),
                        or_none(&s("message")),
                        last,
                    ]);
                }
                indent(&mut out, &t.render(), 2);
            }
            _ => out.push_str(&format!("  {NONE}\n")),
        }
    }
    if let Some(health) = target_health(o, target_groups) {
        out.push_str("Target Health:\n");
        indent(&mut out, &health, 2);
    }
    if o.kind() != Some(Kind::Event) {
        out.push_str("Events:");
        if events.is_empty() {
            out.push_str(&format!(" {NONE}\n"));
        } else {
            out.push('\n');
            let mut t = Table::new(&["TYPE", "REASON", "AGE", "FROM", "MESSAGE"]);
            for e in events {
                if let Some(Resource::Event(ev)) = &e.resource {
                    let mut when = age(event_time(ev), now);
                    if ev.count > 1 {
                        when = format!("{when} (x{})", ev.count);
                    }
                    t.push(vec![
                        ev.r#type.clone(),
                        ev.reason.clone(),
                        when,
                        ev.source.clone(),
                        ev.message.clone(),
                    ]);
                }
            }
            indent(&mut out, &t.render(), 2);
        }
    }
    out
}

fn indent(out: &mut String, text: &str, by: usize) {
    for line in text.lines() {
        out.push_str(&" ".repeat(by));
        out.push_str(line);
        out.push('\n');
    }
}

fn render_section(out: &mut String, v: Option<&Value>) {
    match v {
        Some(Value::Object(m)) if !m.is_empty() => render_map(out, m, 2),
        _ => out.push_str(&format!("  {NONE}\n")),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.is_empty() => Some("\"\"".into()),
        Value::String(s) => Some(s.clone()),
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        _ => None,
    }
}

/// Renders a JSON mapping as indented YAML-like `key: value` lines: nested mappings indent,
/// lists of scalars print inline (`[a, b]`), lists of mappings as `- key: value` items, and
/// multi-line strings as indented blocks.
pub fn render_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    let pad = " ".repeat(ind);
    for (k, v) in m {
        match v {
            Value::String(s) if s.contains('\n') => {
                out.push_str(&format!("{pad}{k}: |\n"));
                for line in s.lines() {
                    out.push_str(&format!("{pad}  {line}\n"));
                }
            }
            Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{k}:\n"));
                render_map(out, inner, ind + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                if items.iter().all(|i| scalar(i).is_some()) {
                    let parts: Vec<String> = items.iter().filter_map(scalar).collect();
                    out.push_str(&format!("{pad}{k}: [{}]\n", parts.join(", ")));
                } else {
                    out.push_str(&format!("{pad}{k}:\n"));
                    for item in items {
                        render_item(out, item, ind + 2);
                    }
                }
            }
            other => {
                let s = scalar(other).unwrap_or_default();
                out.push_str(&format!("{pad}{k}: {s}\n"));
            }
        }
    }
}

fn render_item(out: &mut String, item: &Value, ind: usize) {
    let pad = " ".repeat(ind);
    match item {
        Value::Object(m) if !m.is_empty() => {
            let mut sub = String::new();
            render_map(&mut sub, m, ind + 2);
            // The first line of the item goes after the dash.
            let text = sub.replacen(&format!("{pad}  "), &format!("{pad}- "), 1);
            out.push_str(&text);
        }
        other => {
            out.push_str(&format!("{pad}- {}\n", scalar(other).unwrap_or_default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{
        Condition, Event, Instance, InstancePort, InstanceSpec, InstanceStatus, ObjectMeta,
        ObjectReference,
    };
    use pbjson_types::Timestamp;

    const NOW: i64 = 1_700_000_000;

    fn ts(ago: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: NOW - ago,
            nanos: 0,
        })
    }

    fn web() -> Object {
        Instance {
            metadata: Some(ObjectMeta {
                name: "web-1".into(),
                uid: "u-1".into(),
                labels: [("app".to_string(), "web".to_string())]
                    .into_iter()
                    .collect(),
                resource_version: 42,
                generation: 2,
                created_at: ts(300),
                finalizers: vec!["hanul.dev/agent".into()],
                ..Default::default()
            }),
            spec: Some(InstanceSpec {
                image: "web-v1".into(),
                user_data: "#!/bin/sh\necho hi\n".into(),
                ports: vec![InstancePort {
                    name: "http".into(),
                    protocol: "tcp".into(),
                }],
                ..Default::default()
            }),
            status: Some(InstanceStatus {
                state: "running".into(),
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    reason: "Started".into(),
                    message: String::new(),
                    last_transition_time: ts(60),
                }],
                ..Default::default()
            }),
        }
        .into()
    }

    fn event(kind: &str, name: &str, uid: &str, reason: &str, ago: i64) -> Object {
        Event {
            metadata: Some(ObjectMeta {
                name: format!("{name}.{reason}"),
                ..Default::default()
            }),
            involved_object: Some(ObjectReference {
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
            }),
            r#type: "Normal".into(),
            reason: reason.into(),
            message: format!("{reason} it."),
            source: "agent/mini-1".into(),
            count: 1,
            first_time: ts(ago),
            last_time: ts(ago),
        }
        .into()
    }

    #[test]
    fn events_are_matched_by_kind_name_and_uid_and_sorted_by_time() {
        let all = [
            event("Instance", "web-1", "u-1", "Started", 10),
            event("Instance", "web-1", "", "Scheduled", 50),
            event("Instance", "web-1", "u-old", "Stale", 5),
            event("Instance", "web-2", "", "Other", 5),
            event("Volume", "web-1", "", "Other", 5),
        ];
        let got: Vec<String> = events_for(&web(), &all)
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        assert_eq!(got, ["web-1.Scheduled", "web-1.Started"]);
    }

    #[test]
    fn the_page_has_metadata_spec_status_conditions_and_events() {
        let page = describe(
            &web(),
            &[event("Instance", "web-1", "u-1", "Started", 10)],
            NOW,
        );
        for want in [
            "Name:               web-1\n",
            "Kind:               Instance\n",
            "Labels:             app=web\n",
            "Annotations:        <none>\n",
            "Created:            2023-11-14T22:08:20Z (5m ago)\n",
            "Resource Version:   42\n",
            "Finalizers:         hanul.dev/agent\n",
            "Spec:\n  image: web-v1\n",
            "  userData: |\n    #!/bin/sh\n    echo hi\n",
            "  ports:\n    - name: http\n      protocol: tcp\n",
            "Status:\n  state: running\n",
            "Conditions:\n  TYPE    STATUS   REASON    MESSAGE   LAST-TRANSITION\n",
            "  Ready   True     Started   <none>    60s ago\n",
            "Events:\n  TYPE     REASON    AGE   FROM           MESSAGE\n",
            "  Normal   Started   10s   agent/mini-1   Started it.\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        assert!(!page.contains("Deleted:"), "{page}");
        assert!(!page.contains("conditions:"), "{page}");
    }

    #[test]
    fn no_events_and_pending_deletion_are_shown() {
        let mut o = web();
        o.metadata_mut().deleted_at = ts(3);
        let page = describe(&o, &[], NOW);
        assert!(
            page.contains("Events:             ") || page.contains("Events: <none>\n"),
            "{page}"
        );
        assert!(
            page.contains(
                "Deleted:            2023-11-14T22:13:17Z (3s ago), waiting for finalizers\n"
            ),
            "{page}"
        );
    }
}
