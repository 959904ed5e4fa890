//! `hanul describe KIND [NAME...] [-l SELECTOR]`: one readable page per object — metadata,
//! spec, status, conditions as a table, and the object's recent events. Some kinds add a
//! section of their own: a load balancer its targets' health, an auto scaling group its
//! capacity, instances, instance refresh, hooks and latest activities.

use super::{asg, check_selector, emit};
use crate::{
    error::{is_not_found, report},
    output::{
        NONE, Table, age, bytes, event_sort_key, event_time, format_age, lsn, manifest_value,
        now_secs, or_none, timestamp,
    },
    target::{Targets, parse_targets},
};
use anyhow::{Result, bail};
use hanul_proto::{
    Kind, db,
    v1::{Object, object::Resource},
};
use serde_json::Value;
use std::{process::ExitCode, time::Duration};

/// Width of the label column of the metadata section.
const LABEL_WIDTH: usize = 20;
/// How many of a group's activities its page shows (`hanul asg activities` lists them all).
const GROUP_ACTIVITIES: usize = 10;

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

/// An auto scaling group's own section: what `aws autoscaling describe-auto-scaling-groups`
/// and `describe-instance-refreshes` show, read from its spec and status.
fn auto_scaling_group(o: &Object, now: i64) -> Option<String> {
    let Some(Resource::AutoScalingGroup(g)) = &o.resource else {
        return None;
    };
    let spec = g.spec.clone().unwrap_or_default();
    let status = g.status.clone().unwrap_or_default();
    let mut out = String::new();
    let desired = spec.desired_capacity.unwrap_or(spec.min_size);
    field(
        &mut out,
        "Min/Desired/Max",
        &format!("{}/{desired}/{}", spec.min_size, spec.max_size),
    );
    let mut zones: Vec<String> = status
        .in_service_by_zone
        .iter()
        .map(|(z, n)| format!("{z}={n}"))
        .collect();
    zones.sort();
    let mut in_service = format!("{}/{desired}", status.in_service);
    if !zones.is_empty() {
        in_service.push_str(&format!(" ({})", zones.join(", ")));
    }
    field(&mut out, "In Service", &in_service);
    let grace = spec
        .health_check_grace_period_seconds
        .map(|s| format!(", grace period {s}s"))
        .unwrap_or_default();
    field(
        &mut out,
        "Health Check",
        &format!("{}{grace}", or_none(&spec.health_check_type)),
    );
    field(
        &mut out,
        "Target Groups",
        &or_none(&spec.target_groups.join(", ")),
    );
    let template = match (&spec.launch_template_ref, &spec.launch_template) {
        (Some(r), _) => format!(
            "launch template {} ({}), group version {}",
            r.name, r.version, status.launch_template_version
        ),
        (None, t) => {
            let t = t.clone().unwrap_or_default();
            format!(
                "image {}, type {}, version {}",
                or_none(&t.image),
                or_none(&t.instance_type),
                status.launch_template_version
            )
        }
    };
    field(&mut out, "Launch Template", &template);
    field(
        &mut out,
        "Suspended",
        &or_none(&spec.suspended_processes.join(", ")),
    );
    match &status.instance_refresh {
        Some(r) => {
            let mut lines = vec![format!(
                "{} {}% ({} to update, to version {}, min healthy {}%, id {})",
                or_none(&r.status),
                r.percentage_complete,
                r.instances_to_update,
                r.launch_template_version,
                r.min_healthy_percentage,
                or_none(&r.id)
            )];
            if r.start_time.is_some() {
                let mut when = format!("started {} ago", age(r.start_time.as_ref(), now));
                if r.end_time.is_some() {
                    when.push_str(&format!(", ended {} ago", age(r.end_time.as_ref(), now)));
                }
                lines.push(when);
            }
            if r.failed_instances > 0 {
                lines.push(format!("{} instances failed", r.failed_instances));
            }
            if !r.status_reason.is_empty() {
                lines.push(r.status_reason.clone());
            }
            field_lines(&mut out, "Instance Refresh", &lines);
        }
        None => field(&mut out, "Instance Refresh", NONE),
    }

    out.push_str("Lifecycle Hooks:");
    if spec.lifecycle_hooks.is_empty() {
        out.push_str(&format!(" {NONE}\n"));
    } else {
        out.push('\n');
        let mut t = Table::new(&[
            "NAME",
            "TRANSITION",
            "HEARTBEAT-TIMEOUT",
            "DEFAULT-RESULT",
            "NOTIFICATION-TARGET",
        ]);
        for h in &spec.lifecycle_hooks {
            t.push(vec![
                h.name.clone(),
                or_none(&h.transition),
                h.heartbeat_timeout_seconds
                    .map(|s| format!("{s}s"))
                    .unwrap_or_else(|| NONE.into()),
                or_none(&h.default_result),
                or_none(&h.notification_target),
            ]);
        }
        indent(&mut out, &t.render(), 2);
    }

    out.push_str("Instances:");
    if status.instances.is_empty() {
        out.push_str(&format!(" {NONE}\n"));
    } else {
        out.push('\n');
        let mut t = Table::new(&[
            "INSTANCE",
            "ZONE",
            "LIFECYCLE",
            "HEALTH",
            "VERSION",
            "AGE",
            "REASON",
        ]);
        for i in &status.instances {
            let mut reasons = Vec::new();
            if !i.reason.is_empty() {
                reasons.push(i.reason.clone());
            }
            for w in &i.waits {
                reasons.push(if !w.result.is_empty() {
                    format!("hook {}: {}", w.hook, w.result)
                } else {
                    let left = w.deadline.as_ref().map(|d| d.seconds - now).unwrap_or(0);
                    let timeout = if left > 0 {
                        format!(
                            "times out in {}",
                            format_age(Duration::from_secs(left as u64))
                        )
                    } else {
                        "timed out".into()
                    };
                    format!("waiting for hook {} ({timeout})", w.hook)
                });
            }
            t.push(vec![
                i.instance.clone(),
                or_none(&i.zone),
                or_none(&i.lifecycle_state),
                or_none(&i.health_status),
                i.launch_template_version.to_string(),
                age(i.launched_at.as_ref(), now),
                or_none(&reasons.join("; ")),
            ]);
        }
        indent(&mut out, &t.render(), 2);
    }

    let total = status.activities.len();
    out.push_str("Activities:");
    if total == 0 {
        out.push_str(&format!(" {NONE}\n"));
    } else {
        if total > GROUP_ACTIVITIES {
            out.push_str(&format!(
                " (latest {GROUP_ACTIVITIES} of {total}; `hanul asg activities {}` lists all)",
                o.name()
            ));
        }
        out.push('\n');
        let t = asg::activities_table(asg::newest_first(g).take(GROUP_ACTIVITIES), now);
        indent(&mut out, &t.render(), 2);
    }
    Some(out)
}

/// What a DBCluster's page shows instead of its master password.
const HIDDEN: &str = "<hidden>";

/// Replaces a DBCluster spec's master password, when set, by [`HIDDEN`].
fn hide_password(spec: Option<&mut Value>) {
    if let Some(p) = spec
        .and_then(Value::as_object_mut)
        .and_then(|m| m.get_mut("masterPassword"))
    {
        *p = Value::String(HIDDEN.into());
    }
}

/// A DBInstance's WAL positions as `0/3000148` rather than byte counts (the proto3 JSON
/// mapping writes 64-bit numbers as strings).
fn lsns_as_postgres_prints_them(status: Option<&mut Value>) {
    let Some(status) = status.and_then(Value::as_object_mut) else {
        return;
    };
    for (key, v) in status.iter_mut() {
        let position = match key.as_str() {
            "flushLsn" | "receiveLsn" | "replayLsn" => Some(v),
            "vote" => v.as_object_mut().and_then(|m| m.get_mut("lsn")),
            _ => None,
        };
        if let Some(v) = position
            && let Some(n) = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            *v = Value::String(db::format_lsn(n));
        }
    }
}

/// A labelled line of a section indented under a heading (the DBCluster's status), its
/// labels longer than the metadata's.
fn sub_field(out: &mut String, label: &str, value: &str) {
    let label = format!("{label}:");
    out.push_str(&format!("  {label:<SUB_WIDTH$}{value}\n"));
}

/// Width of the labels of [`sub_field`].
const SUB_WIDTH: usize = 25;

/// A DBCluster's status as RDS's console shows it: who is writer in which epoch, where the
/// endpoints are, the failover under way, the synchronous set, and one line per member.
fn db_cluster_status(o: &Object, now: i64) -> Option<String> {
    let Some(Resource::DbCluster(c)) = &o.resource else {
        return None;
    };
    let st = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    sub_field(&mut out, "Phase", &or_none(&st.phase));
    sub_field(
        &mut out,
        "Observed Generation",
        &st.observed_generation.to_string(),
    );
    sub_field(&mut out, "Epoch", &st.epoch.to_string());
    sub_field(&mut out, "Writer", &or_none(&st.writer));
    let ep = st.endpoints.clone().unwrap_or_default();
    sub_field(&mut out, "Writer Endpoint", &or_none(&ep.writer));
    sub_field(&mut out, "Reader Endpoint", &or_none(&ep.reader));
    sub_field(&mut out, "Endpoints Node", &or_none(&ep.node));
    let failover = match &st.failover {
        Some(f) => {
            let mut s = format!(
                "to epoch {}, replacing {} ({}), target {}",
                f.epoch,
                or_none(&f.from),
                or_none(&f.reason),
                or_none(&f.target)
            );
            if f.started_at.is_some() {
                s.push_str(&format!(
                    ", started {} ago",
                    age(f.started_at.as_ref(), now)
                ));
            }
            s
        }
        None => NONE.into(),
    };
    sub_field(&mut out, "Failover In Progress", &failover);
    let sync = if st.sync_standbys.is_empty() {
        NONE.into()
    } else {
        format!(
            "{} (a commit waits for {} of them)",
            st.sync_standbys.join(", "),
            st.sync_count
        )
    };
    sub_field(&mut out, "Sync Standbys", &sync);
    let last = match st.last_failover_time.as_ref() {
        Some(t) if t.seconds > 0 => {
            format!("{} ({} ago)", timestamp(Some(t)), age(Some(t), now))
        }
        _ => NONE.into(),
    };
    sub_field(&mut out, "Last Failover", &last);
    if !st.switchover_handled.is_empty() {
        sub_field(&mut out, "Last Switchover Request", &st.switchover_handled);
    }
    sub_field(
        &mut out,
        "Parameter Apply Status",
        &or_none(&st.parameter_apply_status),
    );
    db_cluster_backups(&mut out, c, now);
    out.push_str("  Members:");
    if st.members.is_empty() {
        out.push_str(&format!(" {NONE}\n"));
        return Some(out);
    }
    out.push('\n');
    let mut t = Table::new(&[
        "NAME",
        "ROLE",
        "STATE",
        "ZONE",
        "NODE",
        "ADDRESS",
        "TIMELINE",
        "LSN",
        "LAG-BYTES",
        "LAG-SECONDS",
        "PARAMETERS",
    ]);
    for m in &st.members {
        // The writer is behind no one.
        let (lag_bytes, lag_seconds) = if m.role == db::MEMBER_WRITER {
            (NONE.to_string(), NONE.to_string())
        } else {
            (m.lag_bytes.to_string(), format!("{:.1}", m.lag_seconds))
        };
        t.push(vec![
            m.name.clone(),
            or_none(&m.role),
            or_none(&m.state),
            or_none(&m.zone),
            or_none(&m.node),
            or_none(&m.address),
            if m.timeline == 0 {
                NONE.into()
            } else {
                m.timeline.to_string()
            },
            lsn(m.lsn),
            lag_bytes,
            lag_seconds,
            or_none(&m.parameter_apply_status),
        ]);
    }
    indent(&mut out, &t.render(), 4);
    Some(out)
}

/// A time with its age (`2023-11-14T22:03:20Z (10m ago)`), or `<none>`.
fn time_ago(t: Option<&pbjson_types::Timestamp>, now: i64) -> String {
    match t {
        Some(t) if t.seconds > 0 => format!("{} ({} ago)", timestamp(Some(t)), age(Some(t), now)),
        _ => NONE.into(),
    }
}

/// A labelled group of lines under a heading: the first beside the label, the rest under it.
fn sub_field_lines(out: &mut String, label: &str, values: &[String]) {
    let Some((first, rest)) = values.split_first() else {
        return sub_field(out, label, NONE);
    };
    sub_field(out, label, first);
    for v in rest {
        out.push_str(&format!("  {:SUB_WIDTH$}{v}\n", ""));
    }
}

/// A DBCluster's backups: retention and window, its restorable window, the last automated
/// snapshot, and where a restored cluster came from.
fn db_cluster_backups(out: &mut String, c: &hanul_proto::v1::DbCluster, now: i64) {
    let spec = c.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    let retention = match &spec.backup {
        Some(b) if b.retention_days == Some(0) => "0 days (automated backups are off)".into(),
        Some(b) => format!(
            "{} days, daily in {} UTC",
            b.retention_days
                .map(|d| d.to_string())
                .unwrap_or_else(|| NONE.into()),
            or_none(&b.preferred_window)
        ),
        None => NONE.into(),
    };
    sub_field(out, "Backup Retention", &retention);
    sub_field(
        out,
        "Last Backup",
        &time_ago(st.last_backup_time.as_ref(), now),
    );
    sub_field(
        out,
        "Earliest Restorable",
        &time_ago(st.earliest_restorable_time.as_ref(), now),
    );
    sub_field(
        out,
        "Latest Restorable",
        &time_ago(st.latest_restorable_time.as_ref(), now),
    );
    if let Some(s) = spec
        .source
        .as_ref()
        .filter(|s| **s != hanul_proto::v1::DbClusterSource::default())
    {
        let text = if !s.snapshot.is_empty() {
            format!("snapshot {}", s.snapshot)
        } else if !s.automated_backup.is_empty() {
            let at = if s.use_latest_restorable_time {
                "its latest restorable time".to_string()
            } else {
                timestamp(s.restore_time.as_ref())
            };
            format!("retained automated backups {} at {at}", s.automated_backup)
        } else if s.clone {
            format!("a clone of cluster {}", s.cluster)
        } else if s.use_latest_restorable_time {
            format!("cluster {} at its latest restorable time", s.cluster)
        } else {
            format!(
                "cluster {} at {}",
                s.cluster,
                timestamp(s.restore_time.as_ref())
            )
        };
        sub_field(out, "Source", &text);
    }
    if let Some(r) = &st.restore {
        let mut lines = Vec::new();
        if !r.snapshot.is_empty() {
            lines.push(format!(
                "from snapshot {} ({})",
                r.snapshot,
                or_none(&r.snapshot_path)
            ));
        }
        if !r.clone_member.is_empty() {
            lines.push(format!(
                "copied from {} of cluster {} ({})",
                r.clone_member,
                or_none(&r.source_cluster),
                or_none(&r.clone_address)
            ));
        }
        if !r.wal_path.is_empty() || r.target_time.is_some() {
            let of = if r.automated_backup.is_empty() {
                or_none(&r.source_cluster)
            } else {
                format!(
                    "{} (retained in {})",
                    or_none(&r.source_cluster),
                    r.automated_backup
                )
            };
            lines.push(format!(
                "then the WAL of {} ({}) up to {}",
                of,
                or_none(&r.wal_path),
                timestamp(r.target_time.as_ref())
            ));
        }
        if !r.error.is_empty() {
            lines.push(format!("error: {}", r.error));
        }
        sub_field_lines(out, "Restore", &lines);
    }
    // A backtrack under way, with its failed attempts: what the user needs to cancel it.
    if let Some(b) = &st.backtrack {
        let mut lines = vec![format!(
            "to {}, started {}",
            timestamp(b.target_time.as_ref()),
            time_ago(b.started_at.as_ref(), now)
        )];
        if b.failures > 0 {
            lines.push(format!(
                "{} failed attempts, the last: {}",
                b.failures, b.error
            ));
        }
        if b.cancel_requested_at.is_some() {
            lines.push("cancel requested".into());
        } else if b.failures > 0 {
            let name = c.metadata.as_ref().map_or("", |m| m.name.as_str());
            lines.push(format!("`hanul db backtrack {name} --cancel` gives it up"));
        }
        sub_field_lines(out, "Backtrack", &lines);
    }
}

/// A DBSnapshot's status, readably: what it is of, where it is, when its data is as of, the
/// WAL it spans (as PostgreSQL prints positions) and its size.
fn db_snapshot_status(o: &Object, now: i64) -> Option<String> {
    let Some(Resource::DbSnapshot(s)) = &o.resource else {
        return None;
    };
    let st = s.status.clone().unwrap_or_default();
    let mut out = String::new();
    let phase = if s.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some()) {
        "deleting".to_string()
    } else {
        or_none(&st.phase)
    };
    sub_field(&mut out, "Phase", &phase);
    sub_field(
        &mut out,
        "Observed Generation",
        &st.observed_generation.to_string(),
    );
    if !st.message.is_empty() {
        sub_field(&mut out, "Message", &st.message);
    }
    sub_field(&mut out, "Cluster UID", &or_none(&st.cluster_uid));
    let engine = format!("{} {}", st.engine, st.engine_version);
    sub_field(&mut out, "Engine", &or_none(engine.trim()));
    sub_field(&mut out, "Master Username", &or_none(&st.master_username));
    sub_field(&mut out, "Database", &or_none(&st.database_name));
    let storage = if st.storage_gib > 0 {
        format!("{} GiB", st.storage_gib)
    } else {
        NONE.into()
    };
    sub_field(&mut out, "Storage", &storage);
    let member = match (st.member.is_empty(), st.node.is_empty()) {
        (true, _) => NONE.to_string(),
        (false, true) => st.member.clone(),
        (false, false) => format!("{} on node {}", st.member, st.node),
    };
    sub_field(&mut out, "Taken From", &member);
    sub_field(&mut out, "Path", &or_none(&st.path));
    sub_field(&mut out, "Started", &time_ago(st.started_at.as_ref(), now));
    sub_field(
        &mut out,
        "Snapshot Create Time",
        &time_ago(st.snapshot_create_time.as_ref(), now),
    );
    let wal = if st.start_lsn == 0 && st.end_lsn == 0 {
        NONE.to_string()
    } else {
        let mut w = format!("{} .. {}", lsn(st.start_lsn), lsn(st.end_lsn));
        if st.timeline > 0 {
            w.push_str(&format!(" (timeline {})", st.timeline));
        }
        w
    };
    sub_field(&mut out, "WAL", &wal);
    let size = if st.size_bytes > 0 {
        format!("{} ({} bytes)", bytes(st.size_bytes), st.size_bytes)
    } else {
        NONE.into()
    };
    sub_field(&mut out, "Size", &size);
    Some(out)
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
    let mut spec = body.remove("spec");
    let mut status = body.remove("status");
    match o.kind() {
        // The page is for reading over a shoulder; `get -o yaml` still has the password.
        Some(Kind::DbCluster) => hide_password(spec.as_mut()),
        Some(Kind::DbInstance) => lsns_as_postgres_prints_them(status.as_mut()),
        _ => {}
    }
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
    if o.kind() == Some(Kind::AutoScalingGroup)
        && let Some(m) = status.as_mut().and_then(Value::as_object_mut)
    {
        // The group's section shows these as tables; as YAML, up to 100 activities would bury
        // the page.
        m.remove("instances");
        m.remove("activities");
    }
    if o.kind().is_some_and(Kind::has_status) {
        out.push_str("Spec:\n");
        render_section(&mut out, spec.as_ref());
        out.push_str("Status:\n");
        match db_cluster_status(o, now).or_else(|| db_snapshot_status(o, now)) {
            Some(section) => out.push_str(&section),
            None => render_section(&mut out, status.as_ref()),
        }
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
    if let Some(section) = auto_scaling_group(o, now) {
        out.push_str(&section);
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

    #[test]
    fn a_group_page_has_capacity_template_refresh_hooks_instances_and_activities() {
        let o: Object = crate::commands::asg::tests::web().into();
        let page = describe(&o, &[], NOW);
        for want in [
            "Kind:               AutoScalingGroup\n",
            "Min/Desired/Max:    1/3/5\n",
            "In Service:         1/3 (az-a=1)\n",
            "Health Check:       ELB, grace period 120s\n",
            "Target Groups:      web-tg\n",
            "Launch Template:    image web-v2, type t3.micro, version 2\n",
            "Suspended:          AZRebalance\n",
            "Instance Refresh:   InProgress 50% (2 to update, to version 2, min healthy 90%, id 1)\n\
             \x20                   started 5m ago\n\
             \x20                   Waiting for instances to warm up.\n",
            "Lifecycle Hooks:\n  NAME   TRANSITION                           HEARTBEAT-TIMEOUT   \
             DEFAULT-RESULT   NOTIFICATION-TARGET\n\
             \x20 warm   autoscaling:EC2_INSTANCE_LAUNCHING   3600s               ABANDON          \
             <none>\n",
            "Instances:\n  INSTANCE    ZONE   LIFECYCLE      HEALTH      VERSION   AGE   REASON\n",
            "  web-abc12   az-a   InService      Healthy     2         10m   <none>\n",
            "  web-def34   az-a   Pending:Wait   Healthy     2         10m   \
             waiting for hook warm (times out in 50m)\n",
            "  web-ghi56   az-a   Pending:Wait   Healthy     2         10m   hook warm: CONTINUE\n",
            "  web-old01   az-a   Terminating    Unhealthy   2         10m   \
             Instance stopped unexpectedly.\n",
            "Activities:\n  ID   STATUS ",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        // Newest first, after the group's own sections and before the events.
        let three = page.find("\n  3    InProgress").expect(&page);
        let one = page.find("\n  1    Successful").expect(&page);
        assert!(three < one, "{page}");
        assert!(page.find("Activities:").unwrap() < page.find("Events:").unwrap());
        // The status dump leaves the lists to the tables.
        let status = &page[page.find("Status:\n").unwrap()..page.find("Conditions:").unwrap()];
        assert!(status.contains("inService: 1"), "{status}");
        assert!(
            !status.contains("activities") && !status.contains("instances:"),
            "{status}"
        );
    }

    #[test]
    fn a_group_page_shows_only_the_latest_activities_and_says_so() {
        let mut g = crate::commands::asg::tests::web();
        let status = g.status.as_mut().unwrap();
        let first = status.activities[0].clone();
        status.activities = (1..=25)
            .map(|id| hanul_proto::v1::ScalingActivity {
                id,
                ..first.clone()
            })
            .collect();
        status.instance_refresh = None;
        let page = describe(&g.into(), &[], NOW);
        assert!(
            page.contains("Activities: (latest 10 of 25; `hanul asg activities web` lists all)\n"),
            "{page}"
        );
        assert!(page.contains("\n  25   Successful"), "{page}");
        assert!(page.contains("\n  16   Successful"), "{page}");
        assert!(!page.contains("\n  15   Successful"), "{page}");
        assert!(page.contains("Instance Refresh:   <none>\n"), "{page}");
    }

    fn orders_cluster() -> Object {
        let mut c = crate::output::tests::orders();
        let st = c.status.as_mut().unwrap();
        st.sync_standbys = vec!["orders-1".into(), "orders-3".into()];
        st.sync_count = 1;
        st.failover = Some(hanul_proto::v1::DbFailover {
            epoch: 4,
            from: "orders-2".into(),
            reason: db::REASON_SWITCHOVER.into(),
            target: "orders-3".into(),
            started_at: ts(2),
        });
        st.last_failover_time = ts(600);
        st.endpoints.as_mut().unwrap().node = "mini-1".into();
        let m = &mut st.members;
        m[0].role = db::MEMBER_SYNC_STANDBY.into();
        m[0].zone = "az-a".into();
        m[0].node = "mini-1".into();
        m[0].address = "10.0.0.1:40001".into();
        m[0].timeline = 2;
        m[0].lsn = 0x3000148;
        m[0].lag_bytes = 1536;
        m[0].lag_seconds = 0.34;
        m[1].role = db::MEMBER_WRITER.into();
        m[1].timeline = 2;
        m[1].lsn = 0x3000200;
        c.into()
    }

    #[test]
    fn a_db_cluster_page_has_the_writer_endpoints_failover_and_members() {
        let page = describe(
            &orders_cluster(),
            &[event("DBCluster", "orders", "", "FailoverStarted", 2)],
            NOW,
        );
        for want in [
            "Kind:               DBCluster\n",
            "Spec:\n",
            "  deployment: multiAZCluster\n",
            "  masterUsername: admin\n",
            "Status:\n  Phase:                   available\n",
            "  Epoch:                   3\n",
            "  Writer:                  orders-2\n",
            "  Writer Endpoint:         10.0.0.2:15432\n",
            "  Reader Endpoint:         10.0.0.2:15433\n",
            "  Endpoints Node:          mini-1\n",
            "  Failover In Progress:    to epoch 4, replacing orders-2 (switchover), target orders-3, \
             started 2s ago\n",
            "  Sync Standbys:           orders-1, orders-3 (a commit waits for 1 of them)\n",
            "  Last Failover:           2023-11-14T22:03:20Z (10m ago)\n",
            "  Parameter Apply Status:  <none>\n",
            "  Members:\n    NAME       ROLE          STATE       ZONE     NODE     ADDRESS          \
             TIMELINE   LSN         LAG-BYTES   LAG-SECONDS   PARAMETERS\n",
            "    orders-1   syncStandby   available   az-a     mini-1   10.0.0.1:40001   2          \
             0/3000148   1536        0.3           <none>\n",
            "    orders-2   writer        available   <none>   <none>   <none>           2          \
             0/3000200   <none>      <none>        <none>\n",
            "    orders-4   <none>        creating",
            "Conditions:\n",
            "  Normal   FailoverStarted   2s",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        // The sections come in reading order.
        let at = |s: &str| page.find(s).expect(s);
        assert!(at("Spec:") < at("Status:") && at("Status:") < at("  Members:"));
        assert!(at("  Members:") < at("Conditions:") && at("Conditions:") < at("Events:"));
    }

    #[test]
    fn a_db_cluster_page_never_shows_the_master_password() {
        let page = describe(&orders_cluster(), &[], NOW);
        assert!(!page.contains("hunter2"), "{page}");
        assert!(page.contains("  masterPassword: <hidden>\n"), "{page}");
        // Nor does a cluster with no status yet.
        let mut bare = crate::output::tests::orders();
        bare.status = None;
        let page = describe(&bare.into(), &[], NOW);
        assert!(!page.contains("hunter2"), "{page}");
        assert!(page.contains("  Members: <none>\n"), "{page}");
    }

    #[test]
    fn a_db_instance_page_prints_wal_positions_as_postgres_does() {
        let o: Object = hanul_proto::v1::DbInstance {
            metadata: Some(ObjectMeta {
                name: "orders-1".into(),
                ..Default::default()
            }),
            spec: Some(hanul_proto::v1::DbInstanceSpec {
                cluster: "orders".into(),
                role: db::ROLE_STANDBY.into(),
                ..Default::default()
            }),
            status: Some(hanul_proto::v1::DbInstanceStatus {
                state: db::STATE_AVAILABLE.into(),
                role: db::ROLE_STANDBY.into(),
                receive_lsn: (1 << 32) | 0x2ff,
                replay_lsn: 0x3000148,
                vote: Some(hanul_proto::v1::DbVote {
                    epoch: 4,
                    lsn: 0x3000148,
                    timeline: 2,
                }),
                ..Default::default()
            }),
        }
        .into();
        let page = describe(&o, &[], NOW);
        for want in [
            "  receiveLsn: 1/2FF\n",
            "  replayLsn: 0/3000148\n",
            "    lsn: 0/3000148\n",
            "  cluster: orders\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
    }

    #[test]
    fn a_db_cluster_page_names_the_retained_backups_it_was_restored_from() {
        let mut o = orders_cluster();
        let Some(Resource::DbCluster(c)) = &mut o.resource else {
            panic!()
        };
        c.spec.as_mut().unwrap().source = Some(hanul_proto::v1::DbClusterSource {
            automated_backup: "sales".into(),
            use_latest_restorable_time: true,
            ..Default::default()
        });
        c.status.as_mut().unwrap().restore = Some(hanul_proto::v1::DbRestore {
            snapshot: "sales-auto-1".into(),
            snapshot_path: "snapshots/sales-auto-1-0a1b2c3d".into(),
            wal_path: "wal/sales-0a1b2c3d".into(),
            target_time: ts(7200),
            source_cluster: "sales".into(),
            automated_backup: "sales".into(),
            ..Default::default()
        });
        let page = describe(&o, &[], NOW);
        for want in [
            "  Source:                  retained automated backups sales at its latest restorable time\n",
            "then the WAL of sales (retained in sales) (wal/sales-0a1b2c3d)",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
    }

    #[test]
    fn a_db_cluster_page_has_its_backups_restorable_window_and_source() {
        let mut o = orders_cluster();
        let Some(Resource::DbCluster(c)) = &mut o.resource else {
            panic!()
        };
        let spec = c.spec.as_mut().unwrap();
        spec.backup = Some(hanul_proto::v1::BackupSettings {
            retention_days: Some(7),
            preferred_window: "03:00-03:30".into(),
        });
        spec.source = Some(hanul_proto::v1::DbClusterSource {
            cluster: "sales".into(),
            restore_time: ts(7200),
            ..Default::default()
        });
        let st = c.status.as_mut().unwrap();
        st.last_backup_time = ts(3600);
        st.earliest_restorable_time = ts(86_400);
        st.latest_restorable_time = ts(5);
        st.restore = Some(hanul_proto::v1::DbRestore {
            snapshot: "sales-auto-1".into(),
            snapshot_path: "snapshots/sales-auto-1-0a1b2c3d".into(),
            wal_path: "wal/sales-0a1b2c3d".into(),
            target_time: ts(7200),
            source_cluster: "sales".into(),
            ..Default::default()
        });
        let page = describe(&o, &[], NOW);
        for want in [
            "  Backup Retention:        7 days, daily in 03:00-03:30 UTC\n",
            "  Last Backup:             2023-11-14T21:13:20Z (60m ago)\n",
            "  Earliest Restorable:     2023-11-13T22:13:20Z (24h ago)\n",
            "  Latest Restorable:       2023-11-14T22:13:15Z (5s ago)\n",
            "  Source:                  cluster sales at 2023-11-14T20:13:20Z\n",
            "  Restore:                 from snapshot sales-auto-1 (snapshots/sales-auto-1-0a1b2c3d)\n\
             \x20                          then the WAL of sales (wal/sales-0a1b2c3d) up to \
             2023-11-14T20:13:20Z\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        assert!(!page.contains("hunter2"), "{page}");
        // A cluster with none of it says so.
        let page = describe(&orders_cluster(), &[], NOW);
        for want in [
            "  Backup Retention:        <none>\n",
            "  Last Backup:             <none>\n",
            "  Latest Restorable:       <none>\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        assert!(
            !page.contains("Source:") && !page.contains("Restore:"),
            "{page}"
        );
        assert!(!page.contains("Backtrack:"), "{page}");
    }

    #[test]
    fn a_db_cluster_page_shows_a_failing_backtrack_and_how_to_cancel_it() {
        let mut o = orders_cluster();
        let Some(Resource::DbCluster(c)) = &mut o.resource else {
            panic!()
        };
        c.status.as_mut().unwrap().backtrack = Some(hanul_proto::v1::DbBacktrack {
            epoch: 3,
            target_time: ts(7200),
            started_at: ts(60),
            failures: 4,
            error: "backtracking to ... failed (not a base backup); trying again".into(),
            ..Default::default()
        });
        let page = describe(&o, &[], NOW);
        let want = "  Backtrack:               to 2023-11-14T20:13:20Z, started \
                    2023-11-14T22:12:20Z (60s ago)\n\
                    \x20                          4 failed attempts, the last: backtracking to \
                    ... failed (not a base backup); trying again\n\
                    \x20                          `hanul db backtrack orders --cancel` gives it up\n";
        assert!(page.contains(want), "missing {want:?} in:\n{page}");
    }

    #[test]
    fn a_db_snapshot_page_shows_times_wal_positions_and_size_readably() {
        let o: Object = hanul_proto::v1::DbSnapshot {
            metadata: Some(ObjectMeta {
                name: "snap-1".into(),
                ..Default::default()
            }),
            spec: Some(hanul_proto::v1::DbSnapshotSpec {
                db_cluster: "orders".into(),
                r#type: db::SNAPSHOT_MANUAL.into(),
            }),
            status: Some(hanul_proto::v1::DbSnapshotStatus {
                phase: db::SNAPSHOT_AVAILABLE.into(),
                member: "orders-2".into(),
                node: "mini-1".into(),
                cluster_uid: "0a1b2c3d-uid".into(),
                engine: "postgres".into(),
                engine_version: "15".into(),
                master_username: "admin".into(),
                path: "snapshots/snap-1-9f8e7d6c".into(),
                started_at: ts(90),
                snapshot_create_time: ts(60),
                start_lsn: 0x3000028,
                end_lsn: (1 << 32) | 0x100,
                timeline: 2,
                size_bytes: 3 * 1024 * 1024 / 2,
                storage_gib: 20,
                database_name: "orders".into(),
                ..Default::default()
            }),
        }
        .into();
        let page = describe(&o, &[], NOW);
        for want in [
            "Kind:               DBSnapshot\n",
            "Spec:\n  dbCluster: orders\n  type: manual\n",
            "Status:\n  Phase:                   available\n",
            "  Cluster UID:             0a1b2c3d-uid\n",
            "  Engine:                  postgres 15\n",
            "  Master Username:         admin\n",
            "  Database:                orders\n",
            "  Storage:                 20 GiB\n",
            "  Taken From:              orders-2 on node mini-1\n",
            "  Path:                    snapshots/snap-1-9f8e7d6c\n",
            "  Started:                 2023-11-14T22:11:50Z (90s ago)\n",
            "  Snapshot Create Time:    2023-11-14T22:12:20Z (60s ago)\n",
            "  WAL:                     0/3000028 .. 1/100 (timeline 2)\n",
            "  Size:                    1.5MiB (1572864 bytes)\n",
            "Conditions:\n  <none>\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
        // The raw fields are not dumped beside the readable ones.
        assert!(
            !page.contains("startLsn") && !page.contains("sizeBytes"),
            "{page}"
        );
        // Nothing yet: the fields say so rather than print zeros.
        let mut fresh = o.clone();
        if let Some(Resource::DbSnapshot(s)) = &mut fresh.resource {
            s.status = None;
        }
        let page = describe(&fresh, &[], NOW);
        for want in [
            "  Phase:                   <none>\n",
            "  WAL:                     <none>\n",
            "  Size:                    <none>\n",
            "  Snapshot Create Time:    <none>\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in:\n{page}");
        }
    }
}
