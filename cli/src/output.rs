//! What the CLI prints: kubectl-style tables with per-kind columns and an AGE, and the `-o`
//! formats (`yaml`, `json`, `name`).
//!
//! Each kind has one row function (`node_row`, `instance_row`, ...) beside its header list in
//! [`columns`], so that the columns of a kind are read in one place. Times are rendered against a
//! `now` (seconds since the Unix epoch) passed in by the caller, which keeps all of this pure.

use crate::target::{lower, ref_name};
use hanul_proto::{
    Kind, db,
    manifest::{to_value, to_yaml},
    v1::{
        AutoScalingGroup, Condition, DbCluster, DbClusterSpec, DbInstance, DbInstanceSpec,
        DbInstanceStatus, DbParameterGroup, DbSnapshot, Event, Image, Instance, InstanceType,
        LaunchTemplate, LoadBalancer, Node, Object, Resources, TargetGroup, Volume,
        object::Resource,
    },
};
use pbjson_types::Timestamp;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The condition type that `READY` columns show.
pub const CONDITION_READY: &str = "Ready";
/// A condition's status when it holds.
pub const STATUS_TRUE: &str = "True";
/// What kubectl prints for an empty cell.
pub const NONE: &str = "<none>";
/// Spaces between table columns, as kubectl.
const GAP: usize = 3;

/// How `get` prints objects (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (the default).
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// Manifests as YAML documents.
    Yaml,
    /// One JSON object, or `{"items": [...]}` for a list.
    Json,
    /// `kind/name`, one per line.
    Name,
}

/// Seconds since the Unix epoch now; the one place the CLI reads the clock for display.
#[allow(
    clippy::disallowed_methods,
    reason = "the CLI's clock: read once per command here, passed into the pure renderers"
)]
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A table in kubectl's layout: upper-case headers, columns three spaces apart, the last column
/// unpadded.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers and no rows.
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (cells beyond the headers are dropped, missing ones are empty).
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The width of each column: its widest cell or header.
    pub fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                w[i] = w[i].max(cell.chars().count());
            }
        }
        w
    }

    /// The whole table, headers first, each line ending in a newline.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = format_row(&self.headers, &widths);
        for row in &self.rows {
            out.push_str(&format_row(row, &widths));
        }
        out
    }
}

/// One line of a table laid out on `widths` (a cell wider than its column pushes the rest right,
/// as happens to rows printed later by `get -w`).
pub fn format_row(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < row.len() {
            let w = widths.get(i).copied().unwrap_or(0);
            let pad = w.saturating_sub(cell.chars().count()) + GAP;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

/// kubectl's human duration: `45s`, `5m30s`, `25m`, `3h10m`, `20h`, `2d5h`, `30d`, `2y100d`.
pub fn format_age(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// The age of a timestamp at `now` (Unix seconds): `<unknown>` when unset, `<invalid>` when
/// more than a second in the future (clock skew of a second passes as `0s`, as in kubectl).
pub fn age(ts: Option<&Timestamp>, now: i64) -> String {
    match ts {
        None => "<unknown>".into(),
        Some(t) if t.seconds == 0 && t.nanos == 0 => "<unknown>".into(),
        Some(t) => {
            let d = now - t.seconds;
            if d < -1 {
                "<invalid>".into()
            } else {
                format_age(Duration::from_secs(d.max(0) as u64))
            }
        }
    }
}

/// An RFC 3339 time for `describe`, or `<unset>`.
pub fn timestamp(ts: Option<&Timestamp>) -> String {
    match ts {
        Some(t) if t.seconds > 0 => {
            let st = UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_seconds(st).to_string()
        }
        _ => "<unset>".into(),
    }
}

/// `value`, or `<none>` when empty.
pub fn or_none(s: &str) -> String {
    if s.is_empty() { NONE.into() } else { s.into() }
}

/// vCPU thousandths as kubectl quantities: `2`, `1500m`.
pub fn cpu(millis: u32) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// MiB as a quantity: `8Gi` when whole gibibytes, else `512Mi`.
pub fn mem(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// MiB as GiB with at most two decimals: `1GiB`, `0.5GiB`, `1.25GiB`.
pub fn gib(mib: u64) -> String {
    let s = format!("{:.2}", mib as f64 / 1024.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}GiB")
}

/// The condition of type `ty`, if present.
pub fn condition<'a>(conditions: &'a [Condition], ty: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == ty)
}

/// The column headers of a kind's table.
pub fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (base, extra): (&[&str], &[&str]) = match kind {
        Kind::Node => (
            &["NAME", "ZONE", "READY", "CPU", "MEMORY", "AGE"],
            &["ADDRESS", "ALLOCATED-CPU", "ALLOCATED-MEM", "VERSION"],
        ),
        Kind::InstanceType => (
            &["NAME", "VCPU", "MEMORY", "AGE"],
            &["PIDS-LIMIT", "DESCRIPTION"],
        ),
        Kind::Image => (&["NAME", "COMMAND", "AGE"], &["USER", "FILES"]),
        Kind::Instance => (
            &["NAME", "STATE", "TYPE", "ZONE", "NODE", "AGE"],
            &["IMAGE", "PID", "PORTS", "PRIVATE-IP", "REASON"],
        ),
        Kind::Volume => (
            &[
                "NAME",
                "SIZE",
                "ZONE",
                "STATE",
                "NODE",
                "ATTACHED-TO",
                "AGE",
            ],
            &[],
        ),
        Kind::TargetGroup => (
            &["NAME", "PROTOCOL", "PORT", "TARGETS", "HEALTHY", "AGE"],
            &["ALGORITHM", "STICKINESS", "HEALTH-CHECK", "TARGET-HEALTH"],
        ),
        Kind::LoadBalancer => (
            &["NAME", "TYPE", "STATE", "LISTENERS", "AGE"],
            &["ZONES", "ADDRESSES", "REASON"],
        ),
        Kind::AutoScalingGroup => (
            &["NAME", "MIN", "DESIRED", "MAX", "IN-SERVICE", "AGE"],
            &["ZONES", "LIFECYCLE", "TEMPLATE", "REFRESH"],
        ),
        Kind::LaunchTemplate => (
            &["NAME", "LATEST", "DEFAULT", "IMAGE", "TYPE", "AGE"],
            &["MARKET", "PORTS"],
        ),
        Kind::DbCluster => (
            &[
                "NAME",
                "DEPLOYMENT",
                "PHASE",
                "WRITER",
                "EPOCH",
                "MEMBERS",
                "AGE",
            ],
            &["CLASS", "WRITER-ENDPOINT", "READER-ENDPOINT"],
        ),
        Kind::DbInstance => (
            &["NAME", "CLUSTER", "ROLE", "STATE", "ZONE", "NODE", "AGE"],
            &["ADDRESS", "EPOCH", "TIMELINE", "LSN", "LAG"],
        ),
        Kind::DbParameterGroup => (&["NAME", "FAMILY", "PARAMETERS", "AGE"], &["DESCRIPTION"]),
        Kind::Secret => (&["NAME", "KEYS", "AGE"], &["DESCRIPTION"]),
        Kind::DbSnapshot => (
            &[
                "NAME", "CLUSTER", "TYPE", "STATUS", "CREATED", "SIZE", "AGE",
            ],
            &["MEMBER", "NODE", "LSN", "MESSAGE"],
        ),
        Kind::DbClusterAutomatedBackup => (
            &[
                "NAME",
                "CLUSTER",
                "STATUS",
                "EARLIEST",
                "LATEST",
                "SNAPSHOTS",
                "AGE",
            ],
            &["RESOURCE-ID", "RETENTION", "ENCRYPTED", "RETAINED"],
        ),
        Kind::Event => (
            &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            &["SOURCE", "COUNT", "FIRST SEEN", "NAME"],
        ),
    };
    let mut cols = base.to_vec();
    if wide {
        cols.extend_from_slice(extra);
    }
    cols
}

/// One object's table row (matching [`columns`] of its kind).
pub fn row(object: &Object, wide: bool, now: i64) -> Vec<String> {
    match &object.resource {
        Some(Resource::Node(o)) => node_row(o, wide, now),
        Some(Resource::InstanceType(o)) => instance_type_row(o, wide, now),
        Some(Resource::Image(o)) => image_row(o, wide, now),
        Some(Resource::Instance(o)) => instance_row(o, wide, now),
        Some(Resource::Volume(o)) => volume_row(o, now),
        Some(Resource::Event(o)) => event_row(o, wide, now),
        Some(Resource::TargetGroup(o)) => target_group_row(o, wide, now),
        Some(Resource::LoadBalancer(o)) => load_balancer_row(o, wide, now),
        Some(Resource::AutoScalingGroup(o)) => auto_scaling_group_row(o, wide, now),
        Some(Resource::LaunchTemplate(o)) => launch_template_row(o, wide, now),
        Some(Resource::DbCluster(o)) => db_cluster_row(o, wide, now),
        Some(Resource::DbInstance(o)) => db_instance_row(o, wide, now),
        Some(Resource::DbParameterGroup(o)) => db_parameter_group_row(o, wide, now),
        Some(Resource::DbSnapshot(o)) => db_snapshot_row(o, wide, now),
        Some(Resource::DbClusterAutomatedBackup(o)) => {
            db_cluster_automated_backup_row(o, wide, now)
        }
        Some(Resource::Secret(o)) => {
            let (name, age) = name_and_age(o.metadata.as_ref(), now);
            let spec = o.spec.clone().unwrap_or_default();
            let mut keys: Vec<&str> = spec.data.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut row = vec![name, or_none(&keys.join(",")), age];
            if wide {
                row.push(or_none(&spec.description));
            }
            row
        }
        None => vec![String::new()],
    }
}

/// A table of objects of one kind.
pub fn table(kind: Kind, objects: &[Object], wide: bool, now: i64) -> Table {
    let mut t = Table::new(&columns(kind, wide));
    for o in objects {
        t.push(row(o, wide, now));
    }
    t
}

fn name_and_age(meta: Option<&hanul_proto::v1::ObjectMeta>, now: i64) -> (String, String) {
    (
        meta.map(|m| m.name.clone()).unwrap_or_default(),
        age(meta.and_then(|m| m.created_at.as_ref()), now),
    )
}

/// A DBCluster's row. MEMBERS is available/desired, desired being the deployment's members
/// plus the read replicas of its spec, as kubectl's READY of a deployment (it may read `4/3`
/// while a replica is being removed). The master password is never a column.
fn db_cluster_row(o: &DbCluster, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let available = status
        .members
        .iter()
        .filter(|m| m.state == db::STATE_AVAILABLE)
        .count();
    let mut row = vec![
        name,
        or_none(&spec.deployment),
        or_none(&status.phase),
        or_none(&status.writer),
        status.epoch.to_string(),
        format!("{available}/{}", db_desired_members(&spec)),
        age,
    ];
    if wide {
        let endpoints = status.endpoints.unwrap_or_default();
        row.extend([
            or_none(&spec.instance_class),
            or_none(&endpoints.writer),
            or_none(&endpoints.reader),
        ]);
    }
    row
}

/// How many members a cluster's spec asks for: its deployment's and its read replicas.
pub fn db_desired_members(spec: &DbClusterSpec) -> usize {
    db::members_of(&spec.deployment) + spec.read_replicas.as_ref().map_or(0, |r| r.count as usize)
}

/// What a member is now: `writer` while its PostgreSQL runs as the writer, `replica` for a
/// read replica, `standby` for a standby; before its agent reports, what it is for (its spec).
pub fn db_instance_role(spec: &DbInstanceSpec, status: &DbInstanceStatus) -> String {
    let role = match (status.role.as_str(), spec.role.as_str()) {
        (db::ROLE_WRITER, _) => db::ROLE_WRITER,
        (_, db::ROLE_REPLICA) => db::ROLE_REPLICA,
        ("", spec_role) => spec_role,
        (status_role, _) => status_role,
    };
    or_none(role)
}

/// A member's WAL position: the writer's flush position, a standby's replayed one.
pub fn db_instance_lsn(status: &DbInstanceStatus) -> u64 {
    if status.role == db::ROLE_WRITER {
        status.flush_lsn
    } else {
        status.replay_lsn
    }
}

/// A WAL position as PostgreSQL prints it, or `<none>` before there is one.
pub fn lsn(position: u64) -> String {
    if position == 0 {
        NONE.into()
    } else {
        db::format_lsn(position)
    }
}

/// Replication lag: `0B/0.0s`, `1.5MiB/2.3s`.
pub fn lag(bytes_behind: u64, seconds: f64) -> String {
    format!("{}/{seconds:.1}s", bytes(bytes_behind))
}

/// A byte count with a binary unit and at most one decimal: `512B`, `1.5KiB`, `16MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{}", UNITS[unit])
}

/// A DBParameterGroup's row: PARAMETERS counts them.
fn db_parameter_group_row(o: &DbParameterGroup, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let mut row = vec![
        name,
        or_none(&spec.family),
        spec.parameters.len().to_string(),
        age,
    ];
    if wide {
        row.push(or_none(&spec.description));
    }
    row
}

/// A DBSnapshot's row: CREATED is when its data is as of (RDS's snapshotCreateTime).
fn db_snapshot_row(o: &DbSnapshot, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let phase = if o.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some()) {
        "deleting".to_string()
    } else {
        or_none(&status.phase)
    };
    let mut row = vec![
        name,
        or_none(&spec.db_cluster),
        or_none(&spec.r#type),
        phase,
        if status.snapshot_create_time.is_some() {
            timestamp(status.snapshot_create_time.as_ref())
        } else {
            "<none>".into()
        },
        if status.size_bytes > 0 {
            bytes(status.size_bytes)
        } else {
            "<none>".into()
        },
        age,
    ];
    if wide {
        row.push(or_none(&status.member));
        row.push(or_none(&status.node));
        row.push(if status.end_lsn > 0 {
            hanul_proto::db::format_lsn(status.end_lsn)
        } else {
            "<none>".into()
        });
        row.push(or_none(&status.message));
    }
    row
}

/// A DBClusterAutomatedBackup's row: the deleted cluster, its restorable window (RDS's
/// `describe-db-cluster-automated-backups`).
fn db_cluster_automated_backup_row(
    o: &hanul_proto::v1::DbClusterAutomatedBackup,
    wide: bool,
    now: i64,
) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let status_text = if o.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some()) {
        "deleting".to_string()
    } else {
        or_none(&status.status)
    };
    let time = |t: Option<&pbjson_types::Timestamp>| {
        if t.is_some() {
            timestamp(t)
        } else {
            "<none>".into()
        }
    };
    let mut row = vec![
        name,
        or_none(&spec.db_cluster),
        status_text,
        time(status.earliest_restorable_time.as_ref()),
        time(status.latest_restorable_time.as_ref()),
        status.snapshots.len().to_string(),
        age,
    ];
    if wide {
        row.push(or_none(&spec.db_cluster_resource_id));
        row.push(format!("{}d", status.retention_days));
        row.push(
            status
                .encryption_key_secret
                .as_ref()
                .is_some_and(|k| !k.name.is_empty())
                .to_string(),
        );
        row.push(time(status.retained_at.as_ref()));
    }
    row
}

fn db_instance_row(o: &DbInstance, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let mut row = vec![
        name,
        or_none(&spec.cluster),
        db_instance_role(&spec, &status),
        or_none(&status.state),
        or_none(&spec.zone),
        or_none(&spec.node),
        age,
    ];
    if wide {
        let running = !status.role.is_empty();
        let timeline = if status.timeline == 0 {
            NONE.into()
        } else {
            status.timeline.to_string()
        };
        // The writer is behind no one.
        let behind = if running && status.role != db::ROLE_WRITER {
            lag(status.lag_bytes, status.lag_seconds)
        } else {
            NONE.into()
        };
        row.extend([
            or_none(&status.address),
            status.epoch.to_string(),
            timeline,
            lsn(db_instance_lsn(&status)),
            behind,
        ]);
    }
    row
}

fn node_row(o: &Node, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let mut ready = condition(&status.conditions, CONDITION_READY)
        .map(|c| c.status.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Unknown".into());
    if spec.unschedulable {
        ready.push_str(",SchedulingDisabled");
    }
    let cap = spec.capacity.unwrap_or_default();
    let mut r = vec![
        name,
        or_none(&spec.zone),
        ready,
        cpu(cap.cpu_millis),
        mem(cap.memory_mib),
        age,
    ];
    if wide {
        let alloc: Resources = status.allocated.unwrap_or_default();
        r.extend([
            or_none(&spec.address),
            cpu(alloc.cpu_millis),
            mem(alloc.memory_mib),
            or_none(&status.agent_version),
        ]);
    }
    r
}

fn instance_type_row(o: &InstanceType, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let mut r = vec![name, spec.vcpu.to_string(), gib(spec.memory_mib), age];
    if wide {
        let pids = if spec.pids_limit == 0 {
            format!("{} (default)", 1024 * spec.vcpu.max(1))
        } else {
            spec.pids_limit.to_string()
        };
        r.extend([pids, or_none(&spec.description)]);
    }
    r
}

fn image_row(o: &Image, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let argv: Vec<&str> = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(String::as_str)
        .collect();
    let mut command = argv.join(" ");
    if !wide && command.chars().count() > 40 {
        command = command.chars().take(37).collect::<String>() + "...";
    }
    let mut r = vec![name, or_none(&command), age];
    if wide {
        r.extend([or_none(&spec.user), or_none(&spec.files)]);
    }
    r
}

fn instance_row(o: &Instance, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let state = if status.state.is_empty() {
        "pending".to_string()
    } else {
        status.state.clone()
    };
    let zone = if status.zone.is_empty() {
        &spec.zone
    } else {
        &status.zone
    };
    let node = if status.node.is_empty() {
        &spec.node_name
    } else {
        &status.node
    };
    let mut r = vec![
        name,
        state,
        or_none(&spec.instance_type),
        or_none(zone),
        or_none(node),
        age,
    ];
    if wide {
        let mut ports: Vec<String> = status
            .ports
            .iter()
            .map(|(n, p)| format!("{n}:{p}"))
            .collect();
        ports.sort();
        let pid = if status.pid > 0 {
            status.pid.to_string()
        } else {
            NONE.into()
        };
        r.extend([
            or_none(&spec.image),
            pid,
            or_none(&ports.join(",")),
            or_none(&status.private_ip),
            or_none(&status.state_reason),
        ]);
    }
    r
}

fn volume_row(o: &Volume, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    vec![
        name,
        format!("{}Gi", spec.size_gib),
        or_none(&spec.zone),
        or_none(&status.state),
        or_none(&status.node),
        or_none(&status.attached_to),
        age,
    ]
}

fn target_group_row(o: &TargetGroup, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let healthy = status
        .targets
        .iter()
        .filter(|t| t.health == "healthy")
        .count();
    let mut row = vec![
        name,
        or_none(&spec.protocol),
        or_none(&spec.port),
        spec.targets.len().to_string(),
        format!("{healthy}/{}", status.targets.len()),
        age,
    ];
    if wide {
        let hc = spec.health_check.unwrap_or_default();
        let sticky = match &spec.stickiness {
            Some(s) if s.enabled => format!("{} {}s", s.r#type, s.duration_seconds),
            _ => "off".into(),
        };
        let check = if hc.protocol == "HTTP" {
            format!("HTTP {} every {}s", hc.path, hc.interval_seconds)
        } else {
            format!("{} every {}s", hc.protocol, hc.interval_seconds)
        };
        let health = status
            .targets
            .iter()
            .map(|t| {
                let who = if t.instance.is_empty() {
                    &t.address
                } else {
                    &t.instance
                };
                format!("{who}={}", t.health)
            })
            .collect::<Vec<_>>()
            .join(",");
        row.extend([or_none(&spec.algorithm), sticky, check, or_none(&health)]);
    }
    row
}

fn auto_scaling_group_row(o: &AutoScalingGroup, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let desired = spec.desired_capacity.unwrap_or(spec.min_size);
    let mut row = vec![
        name,
        spec.min_size.to_string(),
        desired.to_string(),
        spec.max_size.to_string(),
        format!("{}/{desired}", status.in_service),
        age,
    ];
    if wide {
        let mut zones: Vec<String> = status
            .in_service_by_zone
            .iter()
            .map(|(z, n)| format!("{z}={n}"))
            .collect();
        zones.sort();
        let mut states: Vec<(String, usize)> = Vec::new();
        for i in &status.instances {
            match states.iter_mut().find(|(s, _)| *s == i.lifecycle_state) {
                Some((_, n)) => *n += 1,
                None => states.push((i.lifecycle_state.clone(), 1)),
            }
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{s}={n}")).collect();
        let template = match &spec.launch_template_ref {
            Some(r) => format!("lt/{}", r.name),
            None => spec.launch_template.unwrap_or_default().image,
        };
        let refresh = status
            .instance_refresh
            .map(|r| format!("{} {}%", r.status, r.percentage_complete))
            .unwrap_or_default();
        row.extend([
            or_none(&zones.join(",")),
            or_none(&states.join(",")),
            format!("{template}:v{}", status.launch_template_version),
            or_none(&refresh),
        ]);
    }
    row
}

fn launch_template_row(o: &LaunchTemplate, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let mut row = vec![
        name,
        status.latest_version.to_string(),
        status.default_version.to_string(),
        or_none(&spec.image),
        or_none(&spec.instance_type),
        age,
    ];
    if wide {
        let ports: Vec<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
        row.extend([or_none(&spec.market), or_none(&ports.join(","))]);
    }
    row
}

fn load_balancer_row(o: &LoadBalancer, wide: bool, now: i64) -> Vec<String> {
    let (name, age) = name_and_age(o.metadata.as_ref(), now);
    let spec = o.spec.clone().unwrap_or_default();
    let status = o.status.clone().unwrap_or_default();
    let listeners = spec
        .listeners
        .iter()
        .map(|l| format!("{}:{}→{}", l.protocol, l.port, l.default_target_group))
        .collect::<Vec<_>>()
        .join(",");
    let mut row = vec![
        name,
        or_none(&spec.r#type),
        or_none(&status.state),
        or_none(&listeners),
        age,
    ];
    if wide {
        row.extend([
            or_none(&spec.zones.join(",")),
            or_none(&status.addresses.join(",")),
            or_none(&status.reason),
        ]);
    }
    row
}

/// When an event last happened: `lastTime`, else `firstTime`, else its creation.
pub fn event_time(e: &Event) -> Option<&Timestamp> {
    e.last_time
        .as_ref()
        .filter(|t| t.seconds > 0)
        .or(e.first_time.as_ref().filter(|t| t.seconds > 0))
        .or(e.metadata.as_ref().and_then(|m| m.created_at.as_ref()))
}

/// Sort key for events: last time, oldest first.
pub fn event_sort_key(o: &Object) -> (i64, i32) {
    match &o.resource {
        Some(Resource::Event(e)) => event_time(e).map(|t| (t.seconds, t.nanos)),
        _ => None,
    }
    .unwrap_or((0, 0))
}

fn event_row(e: &Event, wide: bool, now: i64) -> Vec<String> {
    let obj = e.involved_object.clone().unwrap_or_default();
    let object = match Kind::lookup(&obj.kind) {
        Some(k) => ref_name(k, &obj.name),
        None => format!("{}/{}", obj.kind.to_ascii_lowercase(), obj.name),
    };
    let mut r = vec![
        age(event_time(e), now),
        or_none(&e.r#type),
        or_none(&e.reason),
        object,
        e.message.clone(),
    ];
    if wide {
        r.extend([
            or_none(&e.source),
            e.count.max(1).to_string(),
            age(e.first_time.as_ref(), now),
            e.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
        ]);
    }
    r
}

/// Sorts the keys of the protobuf `map<>` fields that hanul's kinds have (labels, annotations,
/// env, status ports) so that printed objects are stable: those maps are hash maps in Rust, and
/// would otherwise come out in a different order on every run.
pub fn sort_maps(v: &mut Value) {
    const MAP_FIELDS: &[&str] = &["labels", "annotations", "env", "ports"];
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if MAP_FIELDS.contains(&k.as_str())
                    && let Value::Object(inner) = child
                {
                    inner.sort_keys();
                }
                sort_maps(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sort_maps),
        _ => {}
    }
}

/// What the CLI prints instead of a Secret's values.
pub const REDACTED: &str = "***";

/// The manifest form of an object, with stable map order; a Secret's values redacted.
pub fn manifest_value(o: &Object) -> Value {
    let mut v = to_value(&redacted(o));
    sort_maps(&mut v);
    v
}

/// The object with each of a Secret's values replaced by [`REDACTED`]: the CLI never prints
/// them (the keys stay).
pub fn redacted(o: &Object) -> Object {
    let mut o = o.clone();
    if let Some(Resource::Secret(s)) = &mut o.resource
        && let Some(spec) = &mut s.spec
    {
        for v in spec.data.values_mut() {
            *v = REDACTED.into();
        }
    }
    o
}

/// One object as pretty JSON (with a trailing newline).
pub fn json_object(o: &Object) -> String {
    let mut s = serde_json::to_string_pretty(&manifest_value(o)).unwrap_or_default();
    s.push('\n');
    s
}

/// Several objects as pretty JSON `{"items": [...]}` (what `apply -f` reads back).
pub fn json_list(objects: &[Object]) -> String {
    let items: Vec<Value> = objects.iter().map(manifest_value).collect();
    let mut s =
        serde_json::to_string_pretty(&serde_json::json!({ "items": items })).unwrap_or_default();
    s.push('\n');
    s
}

/// Objects as YAML documents separated by `---`.
pub fn yaml(objects: &[Object]) -> String {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match serde_saphyr::to_string(&manifest_value(o)) {
            Ok(s) => out.push_str(&s),
            // Not expected for a JSON value; the proto crate's printer is the fallback.
            Err(_) => out.push_str(&to_yaml(std::slice::from_ref(o))),
        }
    }
    out
}

/// `instance/web-1`.
pub fn name_of(o: &Object) -> String {
    match o.kind() {
        Some(k) => ref_name(k, o.name()),
        None => format!("unknown/{}", o.name()),
    }
}

/// The lowercase kind for messages (`instance`), or `object` for an empty envelope.
pub fn kind_word(o: &Object) -> String {
    o.kind().map(lower).unwrap_or_else(|| "object".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hanul_proto::v1::{
        DbClusterMember, DbClusterStatus, DbEndpoints, ImageSpec, InstanceSpec, InstanceStatus,
        InstanceTypeSpec, NodeSpec, NodeStatus, ObjectMeta, ObjectReference, ReadReplicas,
        VolumeSpec, VolumeStatus,
    };

    const NOW: i64 = 1_700_000_000;

    fn meta(name: &str, age_secs: i64) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            created_at: Some(Timestamp {
                seconds: NOW - age_secs,
                nanos: 0,
            }),
            ..Default::default()
        })
    }

    fn lines(t: &Table) -> Vec<String> {
        t.render().lines().map(str::to_string).collect()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (330, "5m30s"),
            (25 * 60, "25m"),
            (3 * 3600 + 600, "3h10m"),
            (5 * 3600, "5h"),
            (20 * 3600, "20h"),
            (2 * 86400 + 5 * 3600, "2d5h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y70d"),
            (3650 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_age(Duration::from_secs(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn future_and_unset_timestamps_are_marked() {
        let t = |s| {
            Some(Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(age(t(NOW + 1).as_ref(), NOW), "0s");
        assert_eq!(age(t(NOW + 60).as_ref(), NOW), "<invalid>");
        assert_eq!(age(None, NOW), "<unknown>");
    }

    #[test]
    fn tables_align_columns_three_spaces_apart_without_trailing_blanks() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.push(vec!["web-1".into(), "running".into()]);
        t.push(vec!["a-much-longer-name".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME                 STATE\nweb-1                running\na-much-longer-name\n"
        );
    }

    #[test]
    fn node_table_shows_ready_from_the_ready_condition_and_capacity() {
        let node: Object = Node {
            metadata: meta("mini-1", 3 * 86400),
            spec: Some(NodeSpec {
                zone: "az-a".into(),
                address: "10.0.0.2".into(),
                capacity: Some(Resources {
                    cpu_millis: 4000,
                    memory_mib: 8192,
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                allocated: Some(Resources {
                    cpu_millis: 1500,
                    memory_mib: 512,
                }),
                agent_version: "0.1.0".into(),
                ..Default::default()
            }),
        }
        .into();
        let t = table(Kind::Node, std::slice::from_ref(&node), false, NOW);
        assert_eq!(
            lines(&t),
            [
                "NAME     ZONE   READY   CPU   MEMORY   AGE",
                "mini-1   az-a   True    4     8Gi      3d"
            ]
        );
        let wide = table(Kind::Node, &[node], true, NOW).render();
        assert!(
            wide.contains("ADDRESS    ALLOCATED-CPU   ALLOCATED-MEM   VERSION"),
            "{wide}"
        );
        assert!(wide.contains("10.0.0.2  ") && wide.contains("1500m") && wide.contains("512Mi"));
        let no_status: Object = Node {
            metadata: meta("n", 10),
            spec: None,
            status: None,
        }
        .into();
        assert_eq!(row(&no_status, false, NOW)[2], "Unknown");
    }

    #[test]
    fn instance_type_table_shows_memory_in_gib() {
        let it: Object = InstanceType {
            metadata: meta("t3.nano", 60),
            spec: Some(InstanceTypeSpec {
                vcpu: 2,
                memory_mib: 512,
                ..Default::default()
            }),
            status: None,
        }
        .into();
        assert_eq!(
            lines(&table(Kind::InstanceType, &[it], false, NOW)),
            [
                "NAME      VCPU   MEMORY   AGE",
                "t3.nano   2      0.5GiB   60s"
            ]
        );
        assert_eq!(gib(1024), "1GiB");
        assert_eq!(gib(1280), "1.25GiB");
    }

    #[test]
    fn image_table_shows_the_whole_command_line() {
        let img: Object = Image {
            metadata: meta("web-v1", 600),
            spec: Some(ImageSpec {
                command: vec!["python3".into(), "-m".into()],
                args: vec!["http.server".into()],
                user: "nobody".into(),
                ..Default::default()
            }),
            status: None,
        }
        .into();
        assert_eq!(
            lines(&table(Kind::Image, std::slice::from_ref(&img), false, NOW)),
            [
                "NAME     COMMAND                  AGE",
                "web-v1   python3 -m http.server   10m"
            ]
        );
        let wide = row(&img, true, NOW);
        assert_eq!(wide[3..], ["nobody".to_string(), NONE.to_string()]);
    }

    #[test]
    fn instance_table_prefers_observed_zone_and_node_and_wide_adds_runtime_details() {
        let inst: Object = Instance {
            metadata: meta("web-1", 7200),
            spec: Some(InstanceSpec {
                image: "web-v1".into(),
                instance_type: "t3.micro".into(),
                zone: "az-b".into(),
                ..Default::default()
            }),
            status: Some(InstanceStatus {
                state: "running".into(),
                node: "mini-1".into(),
                zone: "az-a".into(),
                pid: 4242,
                private_ip: "10.1.0.5".into(),
                ports: [("http".to_string(), 30001), ("admin".to_string(), 30002)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
        }
        .into();
        assert_eq!(
            lines(&table(
                Kind::Instance,
                std::slice::from_ref(&inst),
                false,
                NOW
            )),
            [
                "NAME    STATE     TYPE       ZONE   NODE     AGE",
                "web-1   running   t3.micro   az-a   mini-1   120m"
            ]
        );
        assert_eq!(
            row(&inst, true, NOW)[6..],
            [
                "web-v1",
                "4242",
                "admin:30002,http:30001",
                "10.1.0.5",
                "<none>"
            ]
        );
        let fresh: Object = Instance {
            metadata: meta("web-2", 1),
            spec: None,
            status: None,
        }
        .into();
        assert_eq!(
            row(&fresh, false, NOW),
            ["web-2", "pending", "<none>", "<none>", "<none>", "1s"]
        );
    }

    #[test]
    fn volume_table_shows_size_and_attachment() {
        let vol: Object = Volume {
            metadata: meta("data", 86400),
            spec: Some(VolumeSpec {
                size_gib: 10,
                zone: "az-a".into(),
                keep_on_termination: None,
            }),
            status: Some(VolumeStatus {
                state: "in-use".into(),
                node: "mini-1".into(),
                attached_to: "web-1".into(),
                ..Default::default()
            }),
        }
        .into();
        assert_eq!(
            lines(&table(Kind::Volume, &[vol], true, NOW)),
            [
                "NAME   SIZE   ZONE   STATE    NODE     ATTACHED-TO   AGE",
                "data   10Gi   az-a   in-use   mini-1   web-1         24h"
            ]
        );
    }

    #[test]
    fn event_table_names_the_involved_object_in_kubectl_form() {
        let ev: Object = Event {
            metadata: meta("web-1.1", 100),
            involved_object: Some(ObjectReference {
                kind: "Instance".into(),
                name: "web-1".into(),
                uid: String::new(),
            }),
            r#type: "Normal".into(),
            reason: "Started".into(),
            message: "Started process 4242.".into(),
            source: "agent/mini-1".into(),
            count: 2,
            first_time: Some(Timestamp {
                seconds: NOW - 90,
                nanos: 0,
            }),
            last_time: Some(Timestamp {
                seconds: NOW - 30,
                nanos: 0,
            }),
        }
        .into();
        assert_eq!(
            lines(&table(Kind::Event, std::slice::from_ref(&ev), false, NOW)),
            [
                "LAST SEEN   TYPE     REASON    OBJECT           MESSAGE",
                "30s         Normal   Started   instance/web-1   Started process 4242."
            ]
        );
        assert_eq!(
            row(&ev, true, NOW)[5..],
            ["agent/mini-1", "2", "90s", "web-1.1"]
        );
        assert_eq!(event_sort_key(&ev), (NOW - 30, 0));
    }

    /// A multi-AZ cluster of three members and one read replica, one of them not yet available.
    pub(crate) fn orders() -> DbCluster {
        DbCluster {
            metadata: meta("orders", 3600),
            spec: Some(DbClusterSpec {
                deployment: db::MULTI_AZ_CLUSTER.into(),
                instance_class: "db.t3.small".into(),
                master_username: "admin".into(),
                master_password: "hunter2-secret".into(),
                read_replicas: Some(ReadReplicas {
                    count: 1,
                    zones: vec![],
                }),
                ..Default::default()
            }),
            status: Some(DbClusterStatus {
                phase: db::PHASE_AVAILABLE.into(),
                epoch: 3,
                writer: "orders-2".into(),
                members: ["orders-1", "orders-2", "orders-3"]
                    .iter()
                    .map(|n| DbClusterMember {
                        name: n.to_string(),
                        state: db::STATE_AVAILABLE.into(),
                        ..Default::default()
                    })
                    .chain([DbClusterMember {
                        name: "orders-4".into(),
                        state: db::STATE_CREATING.into(),
                        ..Default::default()
                    }])
                    .collect(),
                endpoints: Some(DbEndpoints {
                    writer: "10.0.0.2:15432".into(),
                    reader: "10.0.0.2:15433".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn db_cluster_table_shows_the_writer_epoch_and_available_members() {
        let c: Object = orders().into();
        assert_eq!(
            lines(&table(
                Kind::DbCluster,
                std::slice::from_ref(&c),
                false,
                NOW
            )),
            [
                "NAME     DEPLOYMENT       PHASE       WRITER     EPOCH   MEMBERS   AGE",
                "orders   multiAZCluster   available   orders-2   3       3/4       60m"
            ]
        );
        assert_eq!(
            row(&c, true, NOW)[7..],
            ["db.t3.small", "10.0.0.2:15432", "10.0.0.2:15433"]
        );
        let fresh: Object = DbCluster {
            metadata: meta("new", 5),
            spec: Some(DbClusterSpec {
                deployment: db::SINGLE_AZ.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into();
        assert_eq!(
            row(&fresh, true, NOW),
            [
                "new", "singleAZ", "<none>", "<none>", "0", "0/1", "5s", "<none>", "<none>",
                "<none>"
            ]
        );
    }

    #[test]
    fn a_db_parameter_group_row_counts_its_parameters() {
        let g: Object = DbParameterGroup {
            metadata: meta("tuned", 600),
            spec: Some(hanul_proto::v1::DbParameterGroupSpec {
                family: "postgres15".into(),
                description: "for orders".into(),
                parameters: [("work_mem".into(), "64MB".into())].into(),
            }),
            status: None,
        }
        .into();
        assert_eq!(
            lines(&table(
                Kind::DbParameterGroup,
                std::slice::from_ref(&g),
                false,
                NOW
            )),
            [
                "NAME    FAMILY       PARAMETERS   AGE",
                "tuned   postgres15   1            10m"
            ]
        );
        assert_eq!(row(&g, true, NOW)[4], "for orders");
    }

    #[test]
    fn a_retained_automated_backup_row_shows_its_cluster_status_and_window() {
        let t = |seconds| pbjson_types::Timestamp { seconds, nanos: 0 };
        let r: Object = hanul_proto::v1::DbClusterAutomatedBackup {
            metadata: meta("orders", 600),
            spec: Some(hanul_proto::v1::DbClusterAutomatedBackupSpec {
                db_cluster: "orders".into(),
                db_cluster_resource_id: "uid-1".into(),
            }),
            status: Some(hanul_proto::v1::DbClusterAutomatedBackupStatus {
                status: "retained".into(),
                earliest_restorable_time: Some(t(NOW - 7200)),
                latest_restorable_time: Some(t(NOW - 600)),
                retention_days: 7,
                snapshots: vec!["orders-a".into(), "orders-b".into()],
                ..Default::default()
            }),
        }
        .into();
        let narrow = row(&r, false, NOW);
        assert_eq!(
            narrow.len(),
            columns(Kind::DbClusterAutomatedBackup, false).len()
        );
        assert_eq!(
            [&narrow[0], &narrow[1], &narrow[2], &narrow[5], &narrow[6]],
            ["orders", "orders", "retained", "2", "10m"]
        );
        assert_eq!(narrow[3], timestamp(Some(&t(NOW - 7200))));
        assert_eq!(narrow[4], timestamp(Some(&t(NOW - 600))));
        let wide = row(&r, true, NOW);
        assert_eq!(
            wide.len(),
            columns(Kind::DbClusterAutomatedBackup, true).len()
        );
        assert_eq!([&wide[7], &wide[8], &wide[9]], ["uid-1", "7d", "false"]);
    }

    #[test]
    fn db_cluster_rows_never_show_the_master_password() {
        let c: Object = orders().into();
        for wide in [false, true] {
            let text = table(Kind::DbCluster, std::slice::from_ref(&c), wide, NOW).render();
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    fn member(name: &str, role: &str, status: DbInstanceStatus) -> Object {
        DbInstance {
            metadata: meta(name, 600),
            spec: Some(DbInstanceSpec {
                cluster: "orders".into(),
                role: role.into(),
                zone: "az-b".into(),
                node: "mini-2".into(),
                instance_class: "db.t3.small".into(),
                ..Default::default()
            }),
            status: Some(status),
        }
        .into()
    }

    #[test]
    fn db_instance_table_shows_what_each_member_is_now_and_how_far_behind() {
        // The member created as a standby is the writer since a failover.
        let writer = member(
            "orders-2",
            db::ROLE_STANDBY,
            DbInstanceStatus {
                state: db::STATE_AVAILABLE.into(),
                role: db::ROLE_WRITER.into(),
                epoch: 3,
                address: "10.0.0.3:40002".into(),
                timeline: 2,
                flush_lsn: 0x3000148,
                replay_lsn: 0x1000000,
                lag_bytes: 7,
                ..Default::default()
            },
        );
        let replica = member(
            "orders-4",
            db::ROLE_REPLICA,
            DbInstanceStatus {
                state: db::STATE_AVAILABLE.into(),
                role: db::ROLE_STANDBY.into(),
                epoch: 3,
                address: "10.0.0.3:40004".into(),
                timeline: 2,
                replay_lsn: (1 << 32) | 0x2ff,
                lag_bytes: 1536,
                lag_seconds: 0.34,
                ..Default::default()
            },
        );
        let creating = member("orders-5", db::ROLE_STANDBY, DbInstanceStatus::default());
        let t = table(
            Kind::DbInstance,
            &[writer.clone(), replica.clone(), creating.clone()],
            false,
            NOW,
        );
        assert_eq!(
            lines(&t),
            [
                "NAME       CLUSTER   ROLE      STATE       ZONE   NODE     AGE",
                "orders-2   orders    writer    available   az-b   mini-2   10m",
                "orders-4   orders    replica   available   az-b   mini-2   10m",
                "orders-5   orders    standby   <none>      az-b   mini-2   10m"
            ]
        );
        assert_eq!(
            row(&writer, true, NOW)[7..],
            ["10.0.0.3:40002", "3", "2", "0/3000148", "<none>"]
        );
        assert_eq!(
            row(&replica, true, NOW)[7..],
            ["10.0.0.3:40004", "3", "2", "1/2FF", "1.5KiB/0.3s"]
        );
        assert_eq!(
            row(&creating, true, NOW)[7..],
            ["<none>", "0", "<none>", "<none>", "<none>"]
        );
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1KiB");
        assert_eq!(bytes(16 * 1024 * 1024), "16MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5GiB");
    }

    #[test]
    fn json_lists_are_an_items_object_that_apply_reads_back() {
        let a: Object = Image {
            metadata: meta("a", 1),
            spec: None,
            status: None,
        }
        .into();
        let b: Object = Volume {
            metadata: meta("b", 1),
            spec: None,
            status: None,
        }
        .into();
        let text = json_list(&[a.clone(), b]);
        let v: Value = serde_json::from_str(&text).unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["kind"], "Image");
        assert_eq!(items[1]["metadata"]["name"], "b");
        assert_eq!(v.as_object().unwrap().len(), 1);
        let back = hanul_proto::manifest::parse("out.json", &text).unwrap();
        assert_eq!(back[0].object, a);
        let single: Value = serde_json::from_str(&json_object(&a)).unwrap();
        assert_eq!(single["kind"], "Image");
        assert_eq!(name_of(&a), "image/a");
    }

    #[test]
    fn labels_print_in_sorted_order() {
        let mut m = meta("a", 1).unwrap();
        for k in ["zeta", "alpha", "mid", "beta"] {
            m.labels.insert(k.into(), "x".into());
        }
        let o: Object = Image {
            metadata: Some(m),
            spec: None,
            status: None,
        }
        .into();
        let v = manifest_value(&o);
        let keys: Vec<&String> = v["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["alpha", "beta", "mid", "zeta"]);
    }
}
