//! `hanul db ...`: the RDS calls that are not edits of a cluster's manifest — `failover`
//! (FailoverDBCluster: a planned switchover), `reboot` (RebootDBInstance, with
//! `--force-failover`), `snapshot` (CreateDBClusterSnapshot), `snapshots`
//! (DescribeDBClusterSnapshots, with the cluster's restorable window), `restore`
//! (RestoreDBClusterFromSnapshot and RestoreDBClusterToPointInTime: a new cluster with
//! `spec.source`), `backtrack` (Aurora's BacktrackDBCluster: the cluster rewound in place to a
//! time in its window, which a later backtrack may move forward again; `--cancel` gives up one
//! that keeps failing) and `clone` (Aurora's clone, RDS's restore type copy-on-write: a new cluster
//! with a copy of another's data as it is now), and two conveniences: `endpoints` prints where
//! to connect and `psql` connects.
//!
//! `restore` and `clone` read what they copy from (the snapshot, the source cluster) and build
//! the new cluster's manifest in [`restore_cluster`], a pure function: the checks that refuse
//! them (a snapshot not available, a time outside the source's restorable window, a cluster
//! with no available member to clone from, no password to give the master user) are all made
//! there, before anything is written.
//!
//! The cluster's controller owns every decision; `failover`, `reboot` and `backtrack` only ask, through
//! annotations on the DBCluster it reads (`hanul_proto::db`): the value carries a request id
//! that is new on every call, so that the same request twice is two requests. The checks made
//! here (does the cluster exist, is the target one of its members and able to take over, is a
//! failover already under way) are there so that a mistyped name is an error rather than an
//! annotation the controller refuses later in an event.

use super::{emit, get, name_of_kind, parse_duration, request_stamp, update_retrying};
use crate::{
    error::is_not_found,
    output::{self, NONE, OutputFormat, Table, now_secs, or_none, timestamp},
    target::ref_name,
};
use anyhow::{Context as _, Result, anyhow, bail};
use hanul_proto::{
    Client, Kind,
    db::{
        BACKTRACK_ANNOTATION, BACKTRACK_CANCEL_ANNOTATION, DEFAULT_PORT,
        MAX_BACKTRACK_WINDOW_SECONDS, MEMBER_READ_REPLICA, MEMBER_WRITER, MULTI_AZ_CLUSTER,
        PHASE_AVAILABLE, REBOOT_ANNOTATION, ROLE_REPLICA, SINGLE_AZ, SNAPSHOT_AVAILABLE,
        SNAPSHOT_FAILED, SNAPSHOT_MANUAL, STATE_AVAILABLE, SWITCHOVER_ANNOTATION,
    },
    v1::{
        DbCluster, DbClusterAutomatedBackup, DbClusterSource, DbClusterSpec, DbInstance,
        DbSnapshot, DbSnapshotSpec, Object, ObjectMeta, object::Resource,
    },
};
use pbjson_types::Timestamp;
use std::{
    path::{Path, PathBuf},
    process::{Command as Process, ExitCode},
    time::Duration,
};
use tokio::time::Instant;

/// Where Debian's PostgreSQL 15 packages put `psql`; `psql` on the PATH otherwise.
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// The database `psql` connects to when the cluster created none of its own.
const DEFAULT_DATABASE: &str = "postgres";
/// What `--force-failover` puts before the request id of a reboot.
const FORCE_FAILOVER: &str = "force-failover";

/// Arguments of `hanul db`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The `hanul db` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Hand the writer role to a standby without losing a commit (a planned switchover).
    Failover(FailoverArgs),
    /// Restart the writer's PostgreSQL in place, or with --force-failover fail over to a
    /// standby instead.
    Reboot(RebootArgs),
    /// Print the writer, reader and per-member endpoints.
    Endpoints(ClusterArgs),
    /// Run psql against the writer endpoint (or the reader's), as the master user.
    Psql(PsqlArgs),
    /// Take a manual snapshot of a cluster (a DBSnapshot, kept until deleted).
    Snapshot(SnapshotArgs),
    /// List snapshots (of one cluster, with its point-in-time restorable window).
    Snapshots(SnapshotsArgs),
    /// Create a new cluster from a snapshot, or from another cluster at a point in time.
    Restore(RestoreArgs),
    /// Create a new cluster with a copy of another cluster's data as it is now (Aurora's
    /// clone), copied from one of its running members.
    Clone(CloneArgs),
    /// Rewind a cluster in place to a time within its backtrack window (Aurora's backtrack);
    /// a later backtrack may go forward again to any time in the window.
    Backtrack(BacktrackArgs),
}

/// Arguments of `hanul db backtrack`.
#[derive(Debug, clap::Args)]
pub struct BacktrackArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// The time to rewind to, in RFC 3339 (2024-05-01T10:00:00Z): between the cluster's
    /// earliestBacktrackTime and its latestRestorableTime.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time,
          required_unless_present = "cancel", conflicts_with = "cancel")]
    pub to: Option<Timestamp>,
    /// Cancel the backtrack under way (one that keeps failing): the writer starts again on
    /// its data from before the backtrack. Too late once the writer has restored its data.
    #[arg(long)]
    pub cancel: bool,
    /// Wait until the backtrack (or its cancel) has completed (an error if the cluster
    /// refuses it).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `hanul db failover`.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// The standby to promote (a DBInstance of the cluster); default: the controller's choice,
    /// the standby with the most WAL.
    #[arg(long, value_name = "MEMBER")]
    pub target: Option<String>,
}

/// Arguments of `hanul db reboot`.
#[derive(Debug, clap::Args)]
pub struct RebootArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// Fail over to a standby rather than wait for the writer to restart (multi-AZ only).
    #[arg(long)]
    pub force_failover: bool,
}

/// Arguments of the verbs that take only a cluster.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
}

/// Arguments of `hanul db psql`.
#[derive(Debug, clap::Args)]
pub struct PsqlArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// Connect to the reader endpoint (read-only, balanced over the readable members).
    #[arg(long)]
    pub reader: bool,
    /// More arguments for psql, after `--` (`-- -c 'select 1'`).
    #[arg(last = true, value_name = "PSQL-ARGS")]
    pub psql_args: Vec<String>,
}

/// Arguments of `hanul db snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// The new DBSnapshot's name.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    /// Wait until the snapshot is available (an error if it fails).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `hanul db snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Only the snapshots of this DBCluster (which may be gone: manual snapshots outlive it).
    #[arg(value_name = "CLUSTER")]
    pub cluster: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `hanul db restore`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["snapshot", "source", "automated_backup"])))]
#[command(group(clap::ArgGroup::new("point_in_time").args(["source", "automated_backup"])))]
pub struct RestoreArgs {
    /// The new DBCluster's name.
    #[arg(value_name = "NEW")]
    pub name: String,
    /// Restore this DBSnapshot.
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// Restore this DBCluster's data as of --time (or --latest).
    #[arg(long, value_name = "CLUSTER")]
    pub source: Option<String>,
    /// Restore the retained automated backups of a deleted cluster (a
    /// DBClusterAutomatedBackup: `hanul get dbab`) as of --time (or --latest).
    #[arg(long, value_name = "NAME")]
    pub automated_backup: Option<String>,
    /// The time to restore --source to, in RFC 3339 (2024-05-01T10:00:00Z): within its
    /// earliest and latest restorable time (`hanul db snapshots CLUSTER` shows them).
    #[arg(
        long,
        value_name = "RFC3339",
        value_parser = parse_time,
        requires = "point_in_time",
        // Explicitly: clap lets a conflict with --source's group stand in for `requires`.
        conflicts_with_all = ["latest", "snapshot"],
        required_unless_present_any = ["snapshot", "latest"]
    )]
    pub time: Option<Timestamp>,
    /// Restore --source to its latest restorable time.
    #[arg(long, requires = "point_in_time", conflicts_with = "snapshot")]
    pub latest: bool,
    #[command(flatten)]
    pub new: NewClusterArgs,
}

/// Arguments of `hanul db clone`.
#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The DBCluster to copy (`orders` or `dbcluster/orders`); it needs an available member.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// The new DBCluster's name.
    #[arg(value_name = "NEW")]
    pub name: String,
    #[command(flatten)]
    pub new: NewClusterArgs,
}

/// The flags of `hanul db restore` and `hanul db clone` about the new cluster.
#[derive(Debug, clap::Args)]
pub struct NewClusterArgs {
    /// The new cluster's deployment (default: the source cluster's, else singleAZ).
    #[arg(long, value_name = "DEPLOYMENT")]
    pub deployment: Option<String>,
    /// The new cluster's instance class (default: the source cluster's, else db.t3.micro).
    #[arg(long, value_name = "CLASS")]
    pub instance_class: Option<String>,
    /// The writer endpoint's port (default: the source cluster's, else 5432; the next free
    /// one when another cluster has it).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u32>,
    /// The master user's new password (default: the source cluster's; required when the
    /// snapshot's cluster is gone).
    #[arg(long, value_name = "PASSWORD")]
    pub master_password: Option<String>,
    /// Print the new cluster's manifest (YAML) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the new cluster is available.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Reads an RFC 3339 time (`2024-05-01T10:00:00Z`, `2024-05-01T19:00:00+09:00`) for `--time`.
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    // The proto3 JSON form of a Timestamp is RFC 3339, offsets included.
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not an RFC 3339 time (like 2024-05-01T10:00:00Z)"))
}

/// Runs `hanul db`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Failover(a) => failover(global, a).await,
        Command::Reboot(a) => reboot(global, a).await,
        Command::Endpoints(a) => endpoints(global, a).await,
        Command::Psql(a) => psql(global, a).await,
        Command::Snapshot(a) => snapshot(global, a).await,
        Command::Snapshots(a) => snapshots(global, a).await,
        Command::Restore(a) => restore(global, a).await,
        Command::Clone(a) => clone(global, a).await,
        Command::Backtrack(a) => backtrack(global, a).await,
    }
}

/// The cluster inside `o`.
pub fn cluster_of(o: &Object) -> Result<&DbCluster> {
    match &o.resource {
        Some(Resource::DbCluster(c)) => Ok(c),
        _ => Err(anyhow!("{} is not a DBCluster", o.key())),
    }
}

fn key(name: &str) -> String {
    ref_name(Kind::DbCluster, name)
}

/// The switchover annotation's value: the target (empty for the controller's choice), `@`,
/// the request id.
pub fn switchover_request(target: Option<&str>, id: &str) -> String {
    format!("{}@{id}", target.unwrap_or(""))
}

/// The reboot annotation's value: the request id, after `force-failover:` when asked.
pub fn reboot_request(force_failover: bool, id: &str) -> String {
    if force_failover {
        format!("{FORCE_FAILOVER}:{id}")
    } else {
        id.to_string()
    }
}

/// The names of the DBInstances of cluster `name` (whose `spec.cluster` names it), sorted.
pub fn members_of<'a>(name: &str, instances: &'a [Object]) -> Vec<&'a DbInstance> {
    let mut members: Vec<&DbInstance> = instances
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbInstance(i)) => Some(i),
            _ => None,
        })
        .filter(|i| i.spec.as_ref().is_some_and(|s| s.cluster == name))
        .collect();
    members.sort_by(|a, b| instance_name(a).cmp(instance_name(b)));
    members
}

fn instance_name(i: &DbInstance) -> &str {
    i.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
}

/// Whether a switchover (`target` given or not) may be asked of `cluster` now: it can have a
/// standby, it has a writer and no failover is under way, and the target is a member that
/// could take over (not the writer, not a read replica).
pub fn check_failover(
    cluster: &DbCluster,
    members: &[&DbInstance],
    target: Option<&str>,
) -> Result<()> {
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let spec = cluster.spec.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    if spec.deployment == SINGLE_AZ {
        bail!(
            "{}: a {SINGLE_AZ} cluster has no standby to fail over to; `hanul db reboot {name}` \
             restarts its writer in place",
            key(name)
        );
    }
    if let Some(f) = &status.failover {
        bail!(
            "{}: a failover is already under way (to epoch {}, replacing {}, {})",
            key(name),
            f.epoch,
            or_none(&f.from),
            or_none(&f.reason)
        );
    }
    if status.writer.is_empty() {
        bail!(
            "{}: there is no writer to hand over from yet (phase {})",
            key(name),
            or_none(&status.phase)
        );
    }
    let Some(target) = target else {
        return Ok(());
    };
    let standbys: Vec<&str> = members
        .iter()
        .filter(|i| {
            let n = instance_name(i);
            n != status.writer && i.spec.as_ref().is_some_and(|s| s.role != ROLE_REPLICA)
        })
        .map(|i| instance_name(i))
        .collect();
    let candidates = if standbys.is_empty() {
        "it has none now".to_string()
    } else {
        format!("its standbys: {}", standbys.join(", "))
    };
    let Some(member) = members.iter().find(|i| instance_name(i) == target) else {
        bail!(
            "{}: {target:?} is not one of its members ({candidates})",
            key(name)
        );
    };
    if target == status.writer {
        bail!(
            "{}: {target} is already the writer ({candidates})",
            key(name)
        );
    }
    if member.spec.as_ref().is_some_and(|s| s.role == ROLE_REPLICA) {
        bail!(
            "{}: {target} is a read replica, which cannot take over ({candidates})",
            key(name)
        );
    }
    Ok(())
}

async fn failover(global: &crate::GlobalArgs, args: FailoverArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let target = args
        .target
        .as_deref()
        .map(|t| name_of_kind(t, Kind::DbInstance))
        .transpose()?;
    let client = global.connect().await?;
    // Before anything else, so that a missing cluster is reported as such.
    client.get(Kind::DbCluster, name).await?;
    let instances = client.list(Some(Kind::DbInstance), "").await?.0;
    let members = members_of(name, &instances);
    let value = switchover_request(target, &request_stamp());
    update_retrying(&client, Kind::DbCluster, name, |o| {
        // Checked on each fresh read, so the request matches what the cluster is doing.
        check_failover(cluster_of(o)?, &members, target)?;
        o.metadata_mut()
            .annotations
            .insert(SWITCHOVER_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    emit(&format!("{} failover requested\n", key(name)))?;
    Ok(ExitCode::SUCCESS)
}

async fn reboot(global: &crate::GlobalArgs, args: RebootArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let value = reboot_request(args.force_failover, &request_stamp());
    update_retrying(&client, Kind::DbCluster, name, |o| {
        let c = cluster_of(o)?;
        if args.force_failover && c.spec.as_ref().is_some_and(|s| s.deployment == SINGLE_AZ) {
            bail!(
                "{}: --force-failover needs a standby, and a {SINGLE_AZ} cluster has none",
                key(name)
            );
        }
        o.metadata_mut()
            .annotations
            .insert(REBOOT_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    let how = if args.force_failover {
        " with failover"
    } else {
        ""
    };
    emit(&format!("{} reboot{how} requested\n", key(name)))?;
    Ok(ExitCode::SUCCESS)
}

fn seconds_of(t: &Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// Whether a backtrack of `cluster` to `to` may be asked now (`now` in seconds): backtracking
/// is on, nothing else is under way, and `to` is in the window as far as the status tells.
/// The controller checks again (against the snapshots too) and refuses in an event.
pub fn check_backtrack(cluster: &DbCluster, to: &Timestamp, now: f64) -> Result<()> {
    let name = name_in(cluster.metadata.as_ref());
    let spec = cluster.spec.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    let show = hanul_proto::time::rfc3339;
    let window = spec.backtrack_window;
    if window == 0 {
        bail!(
            "{}: backtracking is off: spec.backtrackWindow is 0 (set it in the cluster's \
             manifest, in seconds, up to {MAX_BACKTRACK_WINDOW_SECONDS})",
            key(name)
        );
    }
    if let Some(b) = &status.backtrack {
        bail!(
            "{}: a backtrack is already under way (to {})",
            key(name),
            b.target_time.as_ref().map(show).unwrap_or_default()
        );
    }
    if let Some(f) = &status.failover {
        bail!(
            "{}: a failover is under way (to epoch {}); try again once it is available",
            key(name),
            f.epoch
        );
    }
    let t = seconds_of(to);
    if t > now {
        bail!("{}: {} is in the future", key(name), show(to));
    }
    let Some(earliest) = status.earliest_restorable_time.as_ref() else {
        bail!(
            "{}: it has no automated backup yet to backtrack from",
            key(name)
        );
    };
    let from = (now - f64::from(window)).max(seconds_of(earliest));
    if t < from {
        bail!(
            "{}: {} is before its earliest backtrack time ({}: the later of now - \
             spec.backtrackWindow ({window} s) and its earliest restorable time {})",
            key(name),
            show(to),
            show(&Timestamp {
                seconds: from.ceil() as i64,
                nanos: 0
            }),
            show(earliest)
        );
    }
    match &status.latest_restorable_time {
        None => bail!("{}: it has no archived WAL yet", key(name)),
        Some(latest) if t > seconds_of(latest) => bail!(
            "{}: {} is after its latest restorable time ({}); its WAL is archived up to then",
            key(name),
            show(to),
            show(latest)
        ),
        Some(_) => Ok(()),
    }
}

/// Whether the backtrack asked with annotation value `request` is done: true once the
/// controller acted on it and the cluster is available again; an error when it refused it or
/// it was cancelled (no timeline notes it).
pub fn backtrack_done(o: &Object, request: &str) -> Result<bool> {
    let status = cluster_of(o)?.status.clone().unwrap_or_default();
    if status.backtrack_handled != request {
        return Ok(false);
    }
    if !status.backtrack_refused.is_empty() {
        bail!(
            "{}: the backtrack was refused: {}",
            key(o.name()),
            status.backtrack_refused
        );
    }
    if status.backtrack.is_some() || status.phase != PHASE_AVAILABLE {
        return Ok(false);
    }
    let to = hanul_proto::db::parse_backtrack_request(request)
        .map_err(|e| anyhow!(e))?
        .0;
    if !status
        .timelines
        .iter()
        .any(|t| t.backtracked_to.as_ref() == Some(&to))
    {
        bail!(
            "{}: the backtrack was cancelled; the cluster runs on its data from before it",
            key(o.name())
        );
    }
    Ok(true)
}

/// Whether the backtrack under way of `cluster` may be cancelled: its epoch. The controller
/// refuses it (in an event) when the writer completed it first.
pub fn check_backtrack_cancel(cluster: &DbCluster) -> Result<u64> {
    let name = name_in(cluster.metadata.as_ref());
    let status = cluster.status.clone().unwrap_or_default();
    let Some(b) = &status.backtrack else {
        bail!(
            "{}: no backtrack is under way to cancel (phase {:?})",
            key(name),
            status.phase
        );
    };
    Ok(b.epoch)
}

/// Whether the cancel asked with annotation value `request` of the backtrack of `epoch` is
/// done: true once the controller acted on it and the cluster is available again on its data
/// from before; an error when the backtrack completed instead.
pub fn backtrack_cancel_done(o: &Object, request: &str, epoch: u64) -> Result<bool> {
    let status = cluster_of(o)?.status.clone().unwrap_or_default();
    if status.backtrack_cancel_handled != request {
        return Ok(false);
    }
    let completed = status
        .timelines
        .iter()
        .any(|t| t.epoch == epoch && t.backtracked_to.is_some());
    if completed {
        bail!(
            "{}: the backtrack completed before it could be cancelled (see `hanul events`)",
            key(o.name())
        );
    }
    Ok(status.backtrack.is_none() && status.phase == PHASE_AVAILABLE)
}

async fn backtrack_cancel(global: &crate::GlobalArgs, args: BacktrackArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let value = request_stamp();
    let mut epoch = 0;
    update_retrying(&client, Kind::DbCluster, name, |o| {
        epoch = check_backtrack_cancel(cluster_of(o)?)?;
        o.metadata_mut()
            .annotations
            .insert(BACKTRACK_CANCEL_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    emit(&format!("{} backtrack cancel requested\n", key(name)))?;
    if args.wait {
        wait_until(&client, Kind::DbCluster, name, args.timeout, |o| {
            backtrack_cancel_done(o, &value, epoch)
        })
        .await?;
        emit(&format!("{} backtrack cancelled\n", key(name)))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn backtrack(global: &crate::GlobalArgs, args: BacktrackArgs) -> Result<ExitCode> {
    let Some(to) = args.to else {
        return backtrack_cancel(global, args).await;
    };
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let value = hanul_proto::db::backtrack_request(&to, &request_stamp());
    let now = now_secs() as f64;
    update_retrying(&client, Kind::DbCluster, name, |o| {
        check_backtrack(cluster_of(o)?, &to, now)?;
        o.metadata_mut()
            .annotations
            .insert(BACKTRACK_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    let to = hanul_proto::time::rfc3339(&to);
    emit(&format!("{} backtrack to {to} requested\n", key(name)))?;
    if args.wait {
        wait_until(&client, Kind::DbCluster, name, args.timeout, |o| {
            backtrack_done(o, &value)
        })
        .await?;
        emit(&format!("{} backtracked to {to}\n", key(name)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a member serves reads through the reader endpoint: read replicas, and the
/// standbys of a multiAZCluster (a multiAZInstance's standby takes no reads).
fn serves_reads(deployment: &str, role: &str) -> bool {
    role == MEMBER_READ_REPLICA || (deployment == MULTI_AZ_CLUSTER && role != MEMBER_WRITER)
}

/// `hanul db endpoints`: the writer endpoint and the member behind it, the reader endpoint
/// and the members it balances over (the writer when none is available), then each member's
/// own endpoint.
pub fn endpoints_table(cluster: &DbCluster) -> Table {
    let spec = cluster.spec.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    let ep = status.endpoints.clone().unwrap_or_default();
    let mut t = Table::new(&["ENDPOINT", "ADDRESS", "MEMBERS", "STATE"]);
    let writer_state = match (&status.failover, status.writer.is_empty()) {
        (Some(_), _) => "failing over: no writes".to_string(),
        (None, true) => NONE.to_string(),
        (None, false) => status
            .members
            .iter()
            .find(|m| m.name == status.writer)
            .map(|m| or_none(&m.state))
            .unwrap_or_else(|| NONE.into()),
    };
    t.push(vec![
        "writer".into(),
        or_none(&ep.writer),
        or_none(&status.writer),
        writer_state,
    ]);
    let readers: Vec<&str> = status
        .members
        .iter()
        .filter(|m| serves_reads(&spec.deployment, &m.role) && m.state == STATE_AVAILABLE)
        .map(|m| m.name.as_str())
        .collect();
    let (readers, reader_state) = if readers.is_empty() {
        (or_none(&status.writer), "the writer (no readable member)")
    } else {
        (readers.join(","), "balanced")
    };
    t.push(vec![
        "reader".into(),
        or_none(&ep.reader),
        readers,
        reader_state.into(),
    ]);
    for m in &status.members {
        let address = ep
            .members
            .get(&m.name)
            .cloned()
            .unwrap_or_else(|| m.address.clone());
        t.push(vec![
            m.name.clone(),
            or_none(&address),
            or_none(&m.role),
            or_none(&m.state),
        ]);
    }
    t
}

async fn endpoints(global: &crate::GlobalArgs, args: ClusterArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let o = client.get(Kind::DbCluster, name).await?;
    emit(&endpoints_table(cluster_of(&o)?).render())?;
    Ok(ExitCode::SUCCESS)
}

/// Splits `host:port` (`[::1]:5432` too).
fn split_endpoint(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// The `psql` command for `cluster`'s writer endpoint (reader with `reader`): host, port, the
/// master user and the cluster's database, the password in `PGPASSWORD` (never on the command
/// line, where `ps` would show it), then `extra`.
pub fn psql_command(
    cluster: &DbCluster,
    reader: bool,
    extra: &[String],
    psql: &Path,
) -> Result<Process> {
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let spec = cluster.spec.clone().unwrap_or_default();
    let ep = cluster
        .status
        .as_ref()
        .and_then(|s| s.endpoints.clone())
        .unwrap_or_default();
    let (which, endpoint) = if reader {
        ("reader", ep.reader)
    } else {
        ("writer", ep.writer)
    };
    if endpoint.is_empty() {
        bail!(
            "{} has no {which} endpoint yet (see `hanul describe db {name}`)",
            key(name)
        );
    }
    let Some((host, port)) = split_endpoint(&endpoint) else {
        bail!(
            "{}: its {which} endpoint {endpoint:?} is not host:port",
            key(name)
        );
    };
    let database = if spec.database_name.is_empty() {
        DEFAULT_DATABASE
    } else {
        &spec.database_name
    };
    let mut cmd = Process::new(psql);
    cmd.args(["-h", host, "-p", &port.to_string()])
        .args(["-U", &spec.master_username, "-d", database])
        .args(extra)
        .env("PGPASSWORD", &spec.master_password);
    Ok(cmd)
}

/// `psql`: Debian's PostgreSQL 15 one when installed, else the PATH's.
fn psql_path() -> PathBuf {
    let debian = Path::new(PSQL);
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("psql")
    }
}

async fn psql(global: &crate::GlobalArgs, args: PsqlArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let o = client.get(Kind::DbCluster, name).await?;
    let path = psql_path();
    let mut cluster = cluster_of(&o)?.clone();
    // A password kept in a Secret: read here, handed to psql in its environment only.
    if let Some(spec) = cluster.spec.as_mut()
        && let Some(r) = spec
            .master_password_secret
            .as_ref()
            .filter(|r| !r.name.is_empty())
    {
        let key = if r.key.is_empty() { "password" } else { &r.key };
        let secret = client.get(Kind::Secret, &r.name).await?;
        spec.master_password = match &secret.resource {
            Some(hanul_proto::v1::object::Resource::Secret(s)) => s
                .spec
                .as_ref()
                .and_then(|s| s.data.get(key).cloned())
                .with_context(|| format!("secret/{} has no key {key:?}", r.name))?,
            _ => bail!("secret/{} is not a Secret", r.name),
        };
    }
    let mut cmd = psql_command(&cluster, args.reader, &args.psql_args, &path)?;
    // psql takes the terminal over (its signals, its pager): the CLI has nothing left to do,
    // so it becomes psql rather than waiting for it. `exec` returns only on failure.
    let err = cmd.exec();
    Err(err).with_context(|| {
        format!(
            "running {} (install PostgreSQL 15's client: apt-get install postgresql-client-15)",
            path.display()
        )
    })
}

/// The snapshot inside `o`.
pub fn snapshot_of(o: &Object) -> Result<&DbSnapshot> {
    match &o.resource {
        Some(Resource::DbSnapshot(s)) => Ok(s),
        _ => Err(anyhow!("{} is not a DBSnapshot", o.key())),
    }
}

fn snapshot_key(name: &str) -> String {
    ref_name(Kind::DbSnapshot, name)
}

fn name_in(meta: Option<&ObjectMeta>) -> &str {
    meta.map(|m| m.name.as_str()).unwrap_or("")
}

/// Gets `kind/name`, saying plainly when it does not exist and why that stops the command.
async fn get_existing(client: &Client, kind: Kind, name: &str, why: &str) -> Result<Object> {
    match client.get(kind, name).await {
        Ok(o) => Ok(o),
        Err(s) => {
            let e = anyhow::Error::from(s);
            if is_not_found(&e) {
                bail!("{} does not exist: {why}", ref_name(kind, name));
            }
            Err(e)
        }
    }
}

/// A manual DBSnapshot of `cluster`.
pub fn manual_snapshot(cluster: &str, name: &str) -> DbSnapshot {
    DbSnapshot {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(DbSnapshotSpec {
            db_cluster: cluster.into(),
            r#type: SNAPSHOT_MANUAL.into(),
        }),
        status: None,
    }
}

/// Whether a snapshot waited on is done: true once available, an error once failed (with its
/// message), false while it is being made.
pub fn snapshot_done(o: &Object) -> Result<bool> {
    let s = snapshot_of(o)?;
    let status = s.status.clone().unwrap_or_default();
    match status.phase.as_str() {
        SNAPSHOT_AVAILABLE => Ok(true),
        SNAPSHOT_FAILED if status.message.is_empty() => bail!(
            "{} failed (`hanul describe dbsnapshot {}` may say why)",
            snapshot_key(o.name()),
            o.name()
        ),
        SNAPSHOT_FAILED => bail!("{} failed: {}", snapshot_key(o.name()), status.message),
        _ => Ok(false),
    }
}

/// Whether a restored cluster waited on is done: true once available, an error when the
/// controller reports that its source cannot be restored.
pub fn cluster_done(o: &Object) -> Result<bool> {
    let status = cluster_of(o)?.status.clone().unwrap_or_default();
    if let Some(r) = &status.restore
        && !r.error.is_empty()
    {
        bail!("{} cannot be restored: {}", key(o.name()), r.error);
    }
    Ok(status.phase == PHASE_AVAILABLE)
}

/// `phase creating` for timeout messages.
fn phase_of(o: &Object) -> String {
    let phase = match &o.resource {
        Some(Resource::DbSnapshot(s)) => s.status.as_ref().map(|s| s.phase.clone()),
        Some(Resource::DbCluster(c)) => c.status.as_ref().map(|s| s.phase.clone()),
        _ => None,
    };
    format!("phase {}", or_none(&phase.unwrap_or_default()))
}

/// Follows `kind/name` (list, then watch) until `done` says it is done or refuses, the object
/// is deleted, or `timeout` passes.
async fn wait_until(
    client: &Client,
    kind: Kind,
    name: &str,
    timeout: Duration,
    done: impl Fn(&Object) -> Result<bool>,
) -> Result<()> {
    let what = ref_name(kind, name);
    let timed_out = |last: Option<&Object>| {
        let seen = last
            .map(|o| format!(" (last seen: {})", phase_of(o)))
            .unwrap_or_default();
        anyhow::anyhow!(
            "timed out after {} waiting for {what}{seen}",
            humantime::format_duration(timeout)
        )
    };
    let deadline = Instant::now() + timeout;
    super::wait::watch_until(client, kind, name, deadline, timed_out, |o, _| match o {
        None => bail!("{what} was deleted while waiting"),
        Some(o) => Ok(done(o)?.then_some(())),
    })
    .await
}

async fn snapshot(global: &crate::GlobalArgs, args: SnapshotArgs) -> Result<ExitCode> {
    let cluster = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let name = name_of_kind(&args.snapshot, Kind::DbSnapshot)?;
    let client = global.connect().await?;
    get_existing(
        &client,
        Kind::DbCluster,
        cluster,
        "there is nothing to take a snapshot of",
    )
    .await?;
    client.create(manual_snapshot(cluster, name).into()).await?;
    emit(&format!("{} created\n", snapshot_key(name)))?;
    if args.wait {
        wait_until(&client, Kind::DbSnapshot, name, args.timeout, snapshot_done).await?;
        emit(&format!("{} available\n", snapshot_key(name)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The snapshots among `objects` (of `cluster` when given), ordered by when their data is as of
/// (`snapshotCreateTime`), then name; those still being made, which have no such time yet,
/// come last.
pub fn snapshots_of(objects: Vec<Object>, cluster: Option<&str>) -> Vec<Object> {
    let mut out: Vec<Object> = objects
        .into_iter()
        .filter(|o| match &o.resource {
            Some(Resource::DbSnapshot(s)) => {
                cluster.is_none_or(|c| s.spec.as_ref().is_some_and(|sp| sp.db_cluster == c))
            }
            _ => false,
        })
        .collect();
    out.sort_by_cached_key(|o| {
        let t = snapshot_of(o)
            .ok()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.snapshot_create_time)
            .filter(|t| t.seconds > 0);
        let t = t.map(|t| (t.seconds, t.nanos));
        (t.is_none(), t, o.name().to_string())
    });
    out
}

/// Whether the cluster keeps no automated backups (`spec.backup.retentionDays: 0`).
fn backups_off(c: &DbCluster) -> bool {
    c.spec
        .as_ref()
        .and_then(|s| s.backup.as_ref())
        .and_then(|b| b.retention_days)
        == Some(0)
}

/// The window a cluster can be restored to a point in, as `hanul db snapshots CLUSTER` prints
/// it: `Restorable: EARLIEST .. LATEST`, or why there is none.
pub fn restorable_line(c: &DbCluster) -> String {
    let status = c.status.clone().unwrap_or_default();
    let earliest = status.earliest_restorable_time.filter(|t| t.seconds > 0);
    let latest = status.latest_restorable_time.filter(|t| t.seconds > 0);
    let text = match (earliest, latest) {
        _ if backups_off(c) => {
            "point-in-time restore is off (backup retention is 0 days)".to_string()
        }
        (None, _) => "point-in-time restore is not available yet: no automated backup".into(),
        (_, None) => "point-in-time restore is not available yet: no archived WAL yet".into(),
        (Some(e), Some(l)) => format!("{} .. {}", timestamp(Some(&e)), timestamp(Some(&l))),
    };
    format!("Restorable: {text}\n")
}

async fn snapshots(global: &crate::GlobalArgs, args: SnapshotsArgs) -> Result<ExitCode> {
    let cluster = args
        .cluster
        .as_deref()
        .map(|c| name_of_kind(c, Kind::DbCluster))
        .transpose()?;
    let client = global.connect().await?;
    let all = client.list(Some(Kind::DbSnapshot), "").await?.0;
    let found = snapshots_of(all, cluster);
    if found.is_empty() {
        match cluster {
            Some(c) => eprintln!("No snapshots of {} found.", key(c)),
            None => eprintln!("No resources found."),
        }
    } else {
        emit(&get::render(&found, args.output, false, true, now_secs()))?;
    }
    let table = matches!(args.output, OutputFormat::Table | OutputFormat::Wide);
    if let Some(c) = cluster
        && table
    {
        match client.get(Kind::DbCluster, c).await {
            Ok(o) => emit(&restorable_line(cluster_of(&o)?))?,
            // Manual snapshots outlive their cluster: listing them is still an answer. So do
            // retained automated backups: their window is the record's.
            Err(s) if s.code() == tonic::Code::NotFound => {
                let records = client
                    .list(Some(Kind::DbClusterAutomatedBackup), "")
                    .await?
                    .0;
                for line in retained_lines(&records, c) {
                    emit(&line)?;
                }
            }
            Err(s) => return Err(s.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// For each retained automated backup of the deleted cluster `cluster` among `records`, the
/// window it restores to a point in.
pub fn retained_lines(records: &[Object], cluster: &str) -> Vec<String> {
    records
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbClusterAutomatedBackup(r)) => Some(r),
            _ => None,
        })
        .filter(|r| r.spec.as_ref().is_some_and(|s| s.db_cluster == cluster))
        .map(|r| {
            let name = name_in(r.metadata.as_ref());
            let status = r.status.clone().unwrap_or_default();
            format!(
                "Retained automated backups {} of the deleted {}: restorable from {} to {} \
                 (`hanul db restore NEW --automated-backup {name} --time T`)\n",
                ref_name(Kind::DbClusterAutomatedBackup, name),
                key(cluster),
                timestamp(status.earliest_restorable_time.as_ref()),
                timestamp(status.latest_restorable_time.as_ref()),
            )
        })
        .collect()
}

/// What `hanul db restore` restores from, as read from the server.
#[derive(Clone, Copy, Debug)]
pub enum RestoreSource<'a> {
    /// A DBSnapshot, and the cluster of the name its `spec.dbCluster` gives if one exists now
    /// (used only when it is the very cluster the snapshot was taken of).
    Snapshot {
        snapshot: &'a DbSnapshot,
        cluster: Option<&'a DbCluster>,
    },
    /// A cluster, at a time (`None`: its latest restorable time).
    PointInTime {
        cluster: &'a DbCluster,
        time: Option<&'a Timestamp>,
    },
    /// A cluster to clone: its data as it is now.
    Clone { cluster: &'a DbCluster },
    /// The retained automated backups of a deleted cluster, at a time (`None`: their latest
    /// restorable time).
    AutomatedBackup {
        record: &'a DbClusterAutomatedBackup,
        time: Option<&'a Timestamp>,
    },
}

/// The flags of `hanul db restore` and `hanul db clone` that override what the new cluster
/// copies.
#[derive(Clone, Debug, Default)]
pub struct RestoreOverrides {
    pub deployment: Option<String>,
    pub instance_class: Option<String>,
    pub port: Option<u32>,
    pub master_password: Option<String>,
}

/// Refuses a snapshot that cannot be restored (yet).
fn check_snapshot(s: &DbSnapshot) -> Result<()> {
    let name = name_in(s.metadata.as_ref());
    let status = s.status.clone().unwrap_or_default();
    if s.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some()) {
        bail!("{} is being deleted", snapshot_key(name));
    }
    match status.phase.as_str() {
        SNAPSHOT_AVAILABLE => Ok(()),
        SNAPSHOT_FAILED => bail!(
            "{} failed and cannot be restored: {}",
            snapshot_key(name),
            or_none(&status.message)
        ),
        phase => bail!(
            "{} is not available yet (phase {}); `hanul wait {} \
             --for jsonpath={{.status.phase}}=available` waits for it",
            snapshot_key(name),
            or_none(phase),
            snapshot_key(name)
        ),
    }
}

/// Refuses a point-in-time restore of `c` to `time` (`None`: its latest restorable time) that
/// its restorable window does not allow.
pub fn check_restore_time(c: &DbCluster, time: Option<&Timestamp>) -> Result<()> {
    let source = key(name_in(c.metadata.as_ref()));
    let status = c.status.clone().unwrap_or_default();
    let earliest = status.earliest_restorable_time.filter(|t| t.seconds > 0);
    let latest = status.latest_restorable_time.filter(|t| t.seconds > 0);
    if backups_off(c) && earliest.is_none() {
        bail!(
            "point-in-time restore of {source} is not available: its backup retention is 0 days \
             (automated backups are off)"
        );
    }
    let Some(earliest) = earliest else {
        bail!("point-in-time restore of {source} is not available yet: it has no automated backup");
    };
    let Some(latest) = latest else {
        bail!("point-in-time restore of {source} is not available yet: it has no archived WAL yet");
    };
    in_window(
        &source,
        time,
        &earliest,
        &latest,
        "its WAL is archived up to then",
    )
}

/// Refuses `time` (`None`: the latest restorable time, always in) outside `earliest..=latest`,
/// the restorable window of `source`; `why_latest` says where the window ends.
fn in_window(
    source: &str,
    time: Option<&Timestamp>,
    earliest: &Timestamp,
    latest: &Timestamp,
    why_latest: &str,
) -> Result<()> {
    let Some(t) = time else {
        return Ok(());
    };
    let at = |t: &Timestamp| (t.seconds, t.nanos);
    if at(t) < at(earliest) {
        bail!(
            "--time {} is before the earliest restorable time {} of {source}",
            timestamp(Some(t)),
            timestamp(Some(earliest))
        );
    }
    if at(t) > at(latest) {
        bail!(
            "--time {} is after the latest restorable time {} of {source} ({why_latest})",
            timestamp(Some(t)),
            timestamp(Some(latest))
        );
    }
    Ok(())
}

/// Refuses a point-in-time restore from the retained automated backups `r` to `time` (`None`:
/// their latest restorable time) outside the window they had when their cluster was deleted.
pub fn check_record_time(r: &DbClusterAutomatedBackup, time: Option<&Timestamp>) -> Result<()> {
    let source = ref_name(Kind::DbClusterAutomatedBackup, name_in(r.metadata.as_ref()));
    if r.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some()) {
        bail!("{source} is being deleted");
    }
    let status = r.status.clone().unwrap_or_default();
    let (Some(earliest), Some(latest)) = (
        status.earliest_restorable_time.filter(|t| t.seconds > 0),
        status.latest_restorable_time.filter(|t| t.seconds > 0),
    ) else {
        bail!(
            "point-in-time restore of {source} is not available: it has no snapshot or no archived WAL"
        );
    };
    in_window(
        &source,
        time,
        &earliest,
        &latest,
        "its cluster's WAL was archived up to then when it was deleted",
    )
}

/// Refuses a clone of `c` when none of its members is available to copy the data from.
pub fn check_clone(c: &DbCluster) -> Result<()> {
    let name = name_in(c.metadata.as_ref());
    let members = c
        .status
        .as_ref()
        .map(|s| s.members.as_slice())
        .unwrap_or(&[]);
    if !members.iter().any(|m| m.state == STATE_AVAILABLE) {
        bail!(
            "DB cluster {name} has no available member to clone from (`hanul describe db \
             {name}` shows its members)"
        );
    }
    Ok(())
}

/// Whether a writer endpoint on `a` (and the reader's on `a + 1`) collides with one on `b`.
fn ports_overlap(a: u32, b: u32) -> bool {
    a.abs_diff(b) <= 1
}

/// `port`, or when another cluster's endpoints have it, the next one that none has.
fn free_port(port: u32, in_use: &[u32]) -> u32 {
    let mut p = port;
    // A writer port may go up to 65534 (the reader takes the next one).
    while p < 65_534 && in_use.iter().any(|&u| ports_overlap(p, u)) {
        p += 1;
    }
    p
}

/// The new cluster `name` that `hanul db restore` or `hanul db clone` creates from `source`:
/// the spec of the
/// source cluster when there is one to copy (its `source` and `deletionProtection` cleared),
/// else the defaults and what the snapshot records (engine, master user, storage, database),
/// with `spec.source` set and the flags applied. The master user is the snapshot's or the
/// source cluster's (the data holds that role); its password is `--master-password`, else the
/// copied spec's. The port is moved to the next free one when another cluster's endpoints have
/// it (`ports_in_use`: the writer ports of the clusters that exist) and `--port` is not given.
pub fn restore_cluster(
    name: &str,
    source: RestoreSource<'_>,
    overrides: &RestoreOverrides,
    ports_in_use: &[u32],
) -> Result<DbCluster> {
    let (base, from, master_username, why_no_password) = match source {
        RestoreSource::Snapshot { snapshot, cluster } => {
            check_snapshot(snapshot)?;
            let snap_name = name_in(snapshot.metadata.as_ref());
            let status = snapshot.status.clone().unwrap_or_default();
            let of = snapshot
                .spec
                .as_ref()
                .map(|s| s.db_cluster.clone())
                .unwrap_or_default();
            let same = cluster.filter(|c| {
                !status.cluster_uid.is_empty()
                    && c.metadata
                        .as_ref()
                        .is_some_and(|m| m.uid == status.cluster_uid)
            });
            let why = match cluster {
                Some(_) if same.is_none() => format!(
                    "{} is a later cluster of that name than the one {} was taken of",
                    key(&of),
                    snapshot_key(snap_name)
                ),
                _ => format!(
                    "the cluster {} was taken of ({}) no longer exists",
                    snapshot_key(snap_name),
                    key(&of)
                ),
            };
            let mut base = match same.and_then(|c| c.spec.clone()) {
                Some(spec) => spec,
                None => DbClusterSpec {
                    engine: status.engine.clone(),
                    engine_version: status.engine_version.clone(),
                    storage_gib: (status.storage_gib > 0).then_some(status.storage_gib),
                    ..Default::default()
                },
            };
            // Storage only grows, so the live cluster has at least the snapshot's; the data
            // needs as much in any case.
            if status.storage_gib > 0 {
                base.storage_gib = Some(base.storage_gib.unwrap_or(0).max(status.storage_gib));
            }
            base.database_name = status.database_name.clone();
            // An encrypted snapshot restores only into an encrypted cluster: with the key that
            // encrypted it, unless the copied spec names one already.
            if let Some(k) = status
                .encryption_key_secret
                .as_ref()
                .filter(|k| !k.name.is_empty())
                && !base.backup_encrypted
            {
                base.backup_encrypted = true;
                base.backup_encryption_key_secret = Some(k.clone());
            }
            let from = DbClusterSource {
                snapshot: snap_name.to_string(),
                ..Default::default()
            };
            let username = if status.master_username.is_empty() {
                base.master_username.clone()
            } else {
                status.master_username.clone()
            };
            let has_spec = same.is_some_and(|c| c.spec.is_some());
            (base, from, username, (!has_spec).then_some(why))
        }
        RestoreSource::PointInTime { cluster, time } => {
            check_restore_time(cluster, time)?;
            copy_of(
                cluster,
                DbClusterSource {
                    restore_time: time.cloned(),
                    use_latest_restorable_time: time.is_none(),
                    ..Default::default()
                },
            )
        }
        RestoreSource::Clone { cluster } => {
            check_clone(cluster)?;
            copy_of(
                cluster,
                DbClusterSource {
                    clone: true,
                    ..Default::default()
                },
            )
        }
        RestoreSource::AutomatedBackup { record, time } => {
            check_record_time(record, time)?;
            // The cluster is gone: its settings are what the record kept of them.
            let status = record.status.clone().unwrap_or_default();
            let encrypted = status
                .encryption_key_secret
                .clone()
                .filter(|k| !k.name.is_empty());
            let base = DbClusterSpec {
                engine: status.engine.clone(),
                engine_version: status.engine_version.clone(),
                storage_gib: (status.storage_gib > 0).then_some(status.storage_gib),
                port: (status.port > 0).then_some(status.port),
                database_name: status.database_name.clone(),
                backup: Some(hanul_proto::v1::BackupSettings {
                    retention_days: Some(status.retention_days),
                    ..Default::default()
                }),
                backup_encrypted: encrypted.is_some(),
                backup_encryption_key_secret: encrypted,
                ..Default::default()
            };
            let from = DbClusterSource {
                automated_backup: name_in(record.metadata.as_ref()).to_string(),
                restore_time: time.cloned(),
                use_latest_restorable_time: time.is_none(),
                ..Default::default()
            };
            let why = format!(
                "the cluster {} of {} is deleted",
                key(&status.db_cluster),
                ref_name(
                    Kind::DbClusterAutomatedBackup,
                    name_in(record.metadata.as_ref())
                )
            );
            (base, from, status.master_username.clone(), Some(why))
        }
    };
    let mut spec = base;
    spec.source = Some(from);
    spec.deletion_protection = false;
    spec.master_username = master_username;
    match (&overrides.master_password, why_no_password) {
        (Some(p), _) => spec.master_password = p.clone(),
        (None, Some(why)) => bail!(
            "--master-password is required: {why}, so there is no password to copy (the \
             restored cluster's master user {:?} gets the one given)",
            spec.master_username
        ),
        (None, None) if spec.master_password.is_empty() => bail!(
            "--master-password is required: the source cluster has no master password to copy"
        ),
        (None, None) => {}
    }
    if let Some(d) = &overrides.deployment {
        // The copied zones were chosen for the old deployment's members.
        if *d != spec.deployment {
            spec.zones.clear();
        }
        spec.deployment = d.clone();
    }
    if let Some(c) = &overrides.instance_class {
        spec.instance_class = c.clone();
    }
    spec.port = Some(match overrides.port {
        Some(p) => p,
        None => free_port(spec.port.unwrap_or(DEFAULT_PORT), ports_in_use),
    });
    Ok(DbCluster {
        metadata: Some(ObjectMeta {
            name: name.to_string(),
            ..Default::default()
        }),
        spec: Some(spec),
        status: None,
    })
}

/// What a new cluster copied from the live `cluster` starts with: its spec and master user,
/// and `from` naming it.
fn copy_of(
    cluster: &DbCluster,
    from: DbClusterSource,
) -> (DbClusterSpec, DbClusterSource, String, Option<String>) {
    let base = cluster.spec.clone().unwrap_or_default();
    let from = DbClusterSource {
        cluster: name_in(cluster.metadata.as_ref()).to_string(),
        ..from
    };
    let username = base.master_username.clone();
    (base, from, username, None)
}

/// What `hanul db restore` or `hanul db clone` copies, by the names given.
#[derive(Clone, Copy, Debug)]
enum Origin<'a> {
    Snapshot(&'a str),
    PointInTime {
        cluster: &'a str,
        time: Option<&'a Timestamp>,
    },
    Clone(&'a str),
    AutomatedBackup {
        record: &'a str,
        time: Option<&'a Timestamp>,
    },
}

/// Refuses a new cluster `name` that exists already among `clusters`.
fn check_new(name: &str, origin: Origin<'_>, clusters: &[Object]) -> Result<()> {
    if clusters.iter().any(|o| o.name() == name) {
        let verb = match origin {
            Origin::Clone(_) => "clone",
            _ => "restore",
        };
        bail!("{} already exists; a {verb} makes a new cluster", key(name));
    }
    Ok(())
}

/// The cluster `name` among `clusters`, if there is one.
fn find_cluster<'a>(clusters: &'a [Object], name: &str) -> Option<&'a DbCluster> {
    clusters
        .iter()
        .find(|o| o.name() == name)
        .and_then(|o| cluster_of(o).ok())
}

/// The cluster `name` among `clusters` to `what` (restore to a point in time, clone), or why
/// there is none.
fn source_cluster<'a>(clusters: &'a [Object], name: &str, what: &str) -> Result<&'a DbCluster> {
    find_cluster(clusters, name).ok_or_else(|| {
        anyhow!(
            "{} does not exist: there is nothing to {what} (a deleted cluster's data is in its \
             snapshots: `hanul db snapshots {name}`)",
            key(name)
        )
    })
}

async fn restore(global: &crate::GlobalArgs, args: RestoreArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.name, Kind::DbCluster)?;
    let origin = match (&args.snapshot, &args.source) {
        (Some(snap), _) => Origin::Snapshot(name_of_kind(snap, Kind::DbSnapshot)?),
        (None, Some(src)) => Origin::PointInTime {
            cluster: name_of_kind(src, Kind::DbCluster)?,
            time: args.time.as_ref(),
        },
        (None, None) if args.automated_backup.is_some() => Origin::AutomatedBackup {
            record: name_of_kind(
                args.automated_backup.as_deref().unwrap_or_default(),
                Kind::DbClusterAutomatedBackup,
            )?,
            time: args.time.as_ref(),
        },
        // clap requires one of them.
        (None, None) => bail!("name a --snapshot or a --source cluster"),
    };
    create_copy(global, name, origin, &args.new).await
}

async fn clone(global: &crate::GlobalArgs, args: CloneArgs) -> Result<ExitCode> {
    let source = name_of_kind(&args.source, Kind::DbCluster)?;
    let name = name_of_kind(&args.name, Kind::DbCluster)?;
    create_copy(global, name, Origin::Clone(source), &args.new).await
}

/// Creates the new cluster `name` from `origin` (after reading it and refusing what cannot be
/// copied), or prints its manifest for `--dry-run`; `--wait` waits until it is available.
async fn create_copy(
    global: &crate::GlobalArgs,
    name: &str,
    origin: Origin<'_>,
    args: &NewClusterArgs,
) -> Result<ExitCode> {
    let client = global.connect().await?;
    let clusters = client.list(Some(Kind::DbCluster), "").await?.0;
    check_new(name, origin, &clusters)?;
    let ports_in_use: Vec<u32> = clusters
        .iter()
        .filter_map(|o| cluster_of(o).ok())
        .map(|c| c.spec.as_ref().and_then(|s| s.port).unwrap_or(DEFAULT_PORT))
        .collect();
    let overrides = RestoreOverrides {
        deployment: args.deployment.clone(),
        instance_class: args.instance_class.clone(),
        port: args.port,
        master_password: args.master_password.clone(),
    };
    let snapshot_object;
    let source = match origin {
        Origin::Snapshot(snap) => {
            snapshot_object = get_existing(
                &client,
                Kind::DbSnapshot,
                snap,
                "there is nothing to restore (`hanul db snapshots` lists them)",
            )
            .await?;
            let snapshot = snapshot_of(&snapshot_object)?;
            let of = snapshot
                .spec
                .as_ref()
                .map(|s| s.db_cluster.as_str())
                .unwrap_or("");
            RestoreSource::Snapshot {
                snapshot,
                cluster: find_cluster(&clusters, of),
            }
        }
        Origin::PointInTime { cluster, time } => RestoreSource::PointInTime {
            cluster: source_cluster(&clusters, cluster, "restore to a point in time")?,
            time,
        },
        Origin::Clone(cluster) => RestoreSource::Clone {
            cluster: source_cluster(&clusters, cluster, "clone")?,
        },
        Origin::AutomatedBackup { record, time } => {
            snapshot_object = get_existing(
                &client,
                Kind::DbClusterAutomatedBackup,
                record,
                "there is nothing to restore (`hanul get dbab` lists the retained automated \
                 backups of deleted clusters)",
            )
            .await?;
            match &snapshot_object.resource {
                Some(Resource::DbClusterAutomatedBackup(record)) => {
                    RestoreSource::AutomatedBackup { record, time }
                }
                _ => bail!(
                    "{} is not a DBClusterAutomatedBackup",
                    snapshot_object.key()
                ),
            }
        }
    };
    let object: Object = restore_cluster(name, source, &overrides, &ports_in_use)?.into();
    if args.dry_run {
        // The server's admission checks it too, so that a dry run refuses what the real one
        // would.
        client.apply(object.clone(), true).await?;
        emit(&output::yaml(std::slice::from_ref(&object)))?;
        return Ok(ExitCode::SUCCESS);
    }
    client.create(object).await?;
    emit(&format!("{} created\n", key(name)))?;
    if args.wait {
        wait_until(&client, Kind::DbCluster, name, args.timeout, cluster_done).await?;
        emit(&format!("{} available\n", key(name)))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, UserCommand};
    use clap::Parser;
    use hanul_proto::{
        db::{
            self, MEMBER_SYNC_STANDBY, MULTI_AZ_INSTANCE, REASON_WRITER_FAILED, ROLE_STANDBY,
            ROLE_WRITER, SNAPSHOT_CREATING, STATE_CREATING,
        },
        v1::{
            BackupSettings, DbClusterMember, DbClusterStatus, DbEndpoints, DbFailover,
            DbInstanceSpec, DbRestore, DbSnapshotStatus,
        },
    };
    use std::ffi::OsStr;

    fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        match Cli::try_parse_from(argv)?.command {
            UserCommand::Db(a) => Ok(a.command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn member(name: &str, role: &str, state: &str) -> DbClusterMember {
        DbClusterMember {
            name: name.into(),
            role: role.into(),
            state: state.into(),
            address: format!("10.0.0.9:4000{}", &name[name.len() - 1..]),
            ..Default::default()
        }
    }

    /// A multiAZCluster whose second member is the writer, with one read replica.
    fn orders() -> DbCluster {
        DbCluster {
            metadata: Some(ObjectMeta {
                name: "orders".into(),
                ..Default::default()
            }),
            spec: Some(DbClusterSpec {
                deployment: MULTI_AZ_CLUSTER.into(),
                master_username: "admin".into(),
                master_password: "hunter2-secret".into(),
                database_name: "orders".into(),
                ..Default::default()
            }),
            status: Some(DbClusterStatus {
                writer: "orders-2".into(),
                epoch: 2,
                members: vec![
                    member("orders-1", MEMBER_SYNC_STANDBY, STATE_AVAILABLE),
                    member("orders-2", MEMBER_WRITER, STATE_AVAILABLE),
                    member("orders-3", MEMBER_SYNC_STANDBY, STATE_CREATING),
                    member("orders-4", MEMBER_READ_REPLICA, STATE_AVAILABLE),
                ],
                endpoints: Some(DbEndpoints {
                    writer: "127.0.0.1:15432".into(),
                    reader: "127.0.0.1:15433".into(),
                    node: "mini-1".into(),
                    members: [("orders-1".to_string(), "127.0.0.1:16001".to_string())]
                        .into_iter()
                        .collect(),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn backtrack_parses_its_time_and_is_checked_against_the_window() {
        let Command::Backtrack(a) = parse(&[
            "hanul",
            "db",
            "backtrack",
            "orders",
            "--to",
            "2026-11-27T10:00:00Z",
            "--wait",
        ])
        .unwrap() else {
            panic!("not backtrack");
        };
        assert_eq!(
            (a.to.map(|t| t.seconds), a.cancel, a.wait),
            (Some(1_795_773_600), false, true)
        );
        let Command::Backtrack(a) =
            parse(&["hanul", "db", "backtrack", "orders", "--cancel", "--wait"]).unwrap()
        else {
            panic!("not backtrack");
        };
        assert_eq!((a.to, a.cancel, a.wait), (None, true, true));
        assert!(
            parse(&[
                "hanul",
                "db",
                "backtrack",
                "orders",
                "--cancel",
                "--to",
                "2026-11-27T10:00:00Z"
            ])
            .is_err()
        );
        let err = parse(&["hanul", "db", "backtrack", "orders", "--to", "an hour ago"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an RFC 3339 time"), "{err}");
        assert!(parse(&["hanul", "db", "backtrack", "orders"]).is_err());

        let now = 1_795_773_600.0;
        let at = |t: f64| Timestamp {
            seconds: t as i64,
            nanos: 0,
        };
        let mut c = orders();
        let check = |c: &DbCluster, t: f64| {
            check_backtrack(c, &at(t), now)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert!(check(&c, now - 60.0).contains("spec.backtrackWindow is 0"));
        c.spec.as_mut().unwrap().backtrack_window = 3600;
        assert!(check(&c, now - 60.0).contains("no automated backup yet"));
        let st = c.status.as_mut().unwrap();
        st.earliest_restorable_time = Some(at(now - 7200.0));
        st.latest_restorable_time = Some(at(now - 5.0));
        assert_eq!(check(&c, now - 60.0), "");
        assert!(check(&c, now + 60.0).contains("is in the future"));
        let early = check(&c, now - 3700.0);
        assert!(
            early.contains("before its earliest backtrack time (2026-11-27T09:00:00Z"),
            "{early}"
        );
        assert!(check(&c, now - 2.0).contains("after its latest restorable time"));
        c.status.as_mut().unwrap().backtrack = Some(Default::default());
        assert!(check(&c, now - 60.0).contains("already under way"));
    }

    #[test]
    fn a_backtrack_waited_on_is_done_once_noted_and_available_or_fails_when_refused_or_cancelled() {
        let mut c = orders();
        let o = |c: &DbCluster| Object::from(c.clone());
        let r = "2026-11-27T10:00:00Z@1";
        assert!(!backtrack_done(&o(&c), r).unwrap());
        let st = c.status.as_mut().unwrap();
        st.backtrack_handled = r.into();
        st.backtrack = Some(Default::default());
        st.phase = db::PHASE_BACKTRACKING.into();
        assert!(!backtrack_done(&o(&c), r).unwrap());
        // Cancelled: available again with no timeline of it.
        let st = c.status.as_mut().unwrap();
        st.backtrack = None;
        st.phase = PHASE_AVAILABLE.into();
        let err = backtrack_done(&o(&c), r).unwrap_err().to_string();
        assert!(err.contains("the backtrack was cancelled"), "{err}");
        c.status
            .as_mut()
            .unwrap()
            .timelines
            .push(hanul_proto::v1::DbTimeline {
                timeline: 2,
                epoch: 2,
                backtracked_to: Some(Timestamp {
                    seconds: 1_795_773_600,
                    nanos: 0,
                }),
                ..Default::default()
            });
        assert!(backtrack_done(&o(&c), r).unwrap());
        c.status.as_mut().unwrap().backtrack_refused = "backtrack time ... is in the future".into();
        let err = backtrack_done(&o(&c), r).unwrap_err().to_string();
        assert!(err.contains("refused: backtrack time"), "{err}");
    }

    #[test]
    fn a_backtrack_cancel_needs_one_under_way_and_is_done_once_available_again() {
        let mut c = orders();
        let err = check_backtrack_cancel(&c).unwrap_err().to_string();
        assert!(err.contains("no backtrack is under way to cancel"), "{err}");
        let st = c.status.as_mut().unwrap();
        st.backtrack = Some(hanul_proto::v1::DbBacktrack {
            epoch: 4,
            ..Default::default()
        });
        st.phase = db::PHASE_BACKTRACKING.into();
        assert_eq!(check_backtrack_cancel(&c).unwrap(), 4);
        let o = |c: &DbCluster| Object::from(c.clone());
        assert!(!backtrack_cancel_done(&o(&c), "r1", 4).unwrap());
        c.status.as_mut().unwrap().backtrack_cancel_handled = "r1".into();
        assert!(!backtrack_cancel_done(&o(&c), "r1", 4).unwrap());
        // Cancelled: no backtrack, restarting, then available with no timeline of epoch 4.
        let st = c.status.as_mut().unwrap();
        st.backtrack = None;
        st.phase = db::PHASE_REBOOTING.into();
        assert!(!backtrack_cancel_done(&o(&c), "r1", 4).unwrap());
        c.status.as_mut().unwrap().phase = PHASE_AVAILABLE.into();
        assert!(backtrack_cancel_done(&o(&c), "r1", 4).unwrap());
        // Completed instead: an error.
        c.status
            .as_mut()
            .unwrap()
            .timelines
            .push(hanul_proto::v1::DbTimeline {
                timeline: 3,
                epoch: 4,
                backtracked_to: Some(Default::default()),
                ..Default::default()
            });
        let err = backtrack_cancel_done(&o(&c), "r1", 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("completed before it could be cancelled"),
            "{err}"
        );
    }

    fn instance(name: &str, cluster: &str, role: &str) -> Object {
        DbInstance {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(DbInstanceSpec {
                cluster: cluster.into(),
                role: role.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    fn instances() -> Vec<Object> {
        vec![
            instance("orders-2", "orders", ROLE_STANDBY),
            instance("orders-1", "orders", ROLE_WRITER),
            instance("orders-3", "orders", ROLE_STANDBY),
            instance("orders-4", "orders", ROLE_REPLICA),
            instance("sales-1", "sales", ROLE_WRITER),
        ]
    }

    #[test]
    fn the_db_verbs_parse() {
        for argv in [
            &["hanul", "db", "failover", "orders"][..],
            &[
                "hanul",
                "db",
                "failover",
                "dbcluster/orders",
                "--target",
                "orders-3",
            ],
            &["hanul", "db", "reboot", "orders"],
            &["hanul", "db", "reboot", "orders", "--force-failover"],
            &["hanul", "db", "endpoints", "orders"],
            &["hanul", "db", "psql", "orders", "--reader"],
            &["hanul", "db", "psql", "orders", "--", "-c", "select 1"],
        ] {
            if let Err(e) = parse(argv) {
                panic!("{argv:?}: {e}");
            }
        }
        let Command::Psql(p) =
            parse(&["hanul", "db", "psql", "orders", "--", "-c", "select 1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.psql_args, ["-c", "select 1"]);
        assert!(parse(&["hanul", "db", "failover"]).is_err());
        assert!(parse(&["hanul", "db", "reboot", "orders", "--target", "x"]).is_err());
    }

    #[test]
    fn requests_carry_the_target_and_a_request_id() {
        assert_eq!(switchover_request(Some("orders-3"), "id1"), "orders-3@id1");
        assert_eq!(switchover_request(None, "id1"), "@id1");
        assert_eq!(reboot_request(false, "id1"), "id1");
        assert_eq!(reboot_request(true, "id1"), "force-failover:id1");
        // The id is new on each call and never contains the separator.
        let (a, b) = (request_stamp(), request_stamp());
        assert_ne!(a, b);
        assert!(!a.contains('@'), "{a}");
    }

    #[test]
    fn members_are_the_instances_that_name_the_cluster() {
        let all = instances();
        let names: Vec<&str> = members_of("orders", &all)
            .into_iter()
            .map(instance_name)
            .collect();
        assert_eq!(names, ["orders-1", "orders-2", "orders-3", "orders-4"]);
        assert!(members_of("nope", &all).is_empty());
    }

    #[test]
    fn a_failover_target_must_be_a_standby_of_the_cluster() {
        let c = orders();
        let all = instances();
        let members = members_of("orders", &all);
        check_failover(&c, &members, None).unwrap();
        check_failover(&c, &members, Some("orders-1")).unwrap();
        let err = |t: &str| {
            check_failover(&c, &members, Some(t))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("sales-1"),
            "dbcluster/orders: \"sales-1\" is not one of its members \
             (its standbys: orders-1, orders-3)"
        );
        assert_eq!(
            err("orders-2"),
            "dbcluster/orders: orders-2 is already the writer (its standbys: orders-1, orders-3)"
        );
        assert!(
            err("orders-4").contains("orders-4 is a read replica, which cannot take over"),
            "{}",
            err("orders-4")
        );
    }

    #[test]
    fn no_failover_is_asked_of_a_single_az_cluster_one_without_a_writer_or_during_another() {
        let all = instances();
        let members = members_of("orders", &all);
        let mut single = orders();
        single.spec.as_mut().unwrap().deployment = SINGLE_AZ.into();
        let e = check_failover(&single, &members, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a singleAZ cluster has no standby") && e.contains("hanul db reboot orders"),
            "{e}"
        );
        let mut busy = orders();
        busy.status.as_mut().unwrap().failover = Some(DbFailover {
            epoch: 3,
            from: "orders-2".into(),
            reason: REASON_WRITER_FAILED.into(),
            ..Default::default()
        });
        let e = check_failover(&busy, &members, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders: a failover is already under way (to epoch 3, replacing orders-2, \
             writer-failed)"
        );
        let mut new = orders();
        new.status = None;
        let e = check_failover(&new, &members, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders: there is no writer to hand over from yet (phase <none>)"
        );
        // A multiAZInstance has its standby.
        let mut two = orders();
        two.spec.as_mut().unwrap().deployment = MULTI_AZ_INSTANCE.into();
        check_failover(&two, &members, Some("orders-3")).unwrap();
    }

    #[test]
    fn endpoints_name_the_writer_the_readers_and_each_member() {
        let text = endpoints_table(&orders()).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ENDPOINT   ADDRESS           MEMBERS             STATE",
                "writer     127.0.0.1:15432   orders-2            available",
                "reader     127.0.0.1:15433   orders-1,orders-4   balanced",
                "orders-1   127.0.0.1:16001   syncStandby         available",
                "orders-2   10.0.0.9:40002    writer              available",
                "orders-3   10.0.0.9:40003    syncStandby         creating",
                "orders-4   10.0.0.9:40004    readReplica         available",
            ]
        );
        assert!(!text.contains("hunter2"));
        let empty = endpoints_table(&DbCluster::default()).render();
        assert!(
            empty.contains("writer     <none>    <none>    <none>"),
            "{empty}"
        );
    }

    #[test]
    fn psql_connects_as_the_master_user_with_the_password_in_the_environment() {
        let psql = Path::new("/usr/bin/psql");
        let extra = ["-c".to_string(), "select 1".to_string()];
        let cmd = psql_command(&orders(), false, &extra, psql).unwrap();
        assert_eq!(cmd.get_program(), OsStr::new("/usr/bin/psql"));
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                "-h",
                "127.0.0.1",
                "-p",
                "15432",
                "-U",
                "admin",
                "-d",
                "orders",
                "-c",
                "select 1"
            ]
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            env,
            [(OsStr::new("PGPASSWORD"), Some(OsStr::new("hunter2-secret")))]
        );

        let mut c = orders();
        c.spec.as_mut().unwrap().database_name.clear();
        c.status
            .as_mut()
            .unwrap()
            .endpoints
            .as_mut()
            .unwrap()
            .reader = "[::1]:15433".into();
        let cmd = psql_command(&c, true, &[], psql).unwrap();
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert_eq!(
            args,
            ["-h", "::1", "-p", "15433", "-U", "admin", "-d", "postgres"]
        );

        let mut fresh = orders();
        fresh.status = None;
        let e = psql_command(&fresh, false, &[], psql)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders has no writer endpoint yet (see `hanul describe db orders`)"
        );
    }

    #[test]
    fn the_backup_verbs_parse() {
        for argv in [
            &["hanul", "db", "snapshot", "orders", "snap-1"][..],
            &[
                "hanul",
                "db",
                "snapshot",
                "dbcluster/orders",
                "snap-1",
                "--wait",
                "--timeout",
                "2m",
            ],
            &["hanul", "db", "snapshots"],
            &["hanul", "db", "snapshots", "orders", "-o", "json"],
            &["hanul", "db", "restore", "copy", "--snapshot", "snap-1"],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--source",
                "orders",
                "--time",
                "2024-05-01T10:00:00Z",
            ],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--source",
                "orders",
                "--latest",
                "--deployment",
                "singleAZ",
                "--instance-class",
                "db.m5.large",
                "--port",
                "16432",
                "--master-password",
                "n3w-secret",
                "--dry-run",
                "--wait",
                "--timeout",
                "1h",
            ],
        ] {
            if let Err(e) = parse(argv) {
                panic!("{argv:?}: {e}");
            }
        }
        let Command::Snapshot(s) = parse(&["hanul", "db", "snapshot", "orders", "snap-1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (s.cluster.as_str(), s.snapshot.as_str()),
            ("orders", "snap-1")
        );
        assert!(!s.wait);
        assert_eq!(s.timeout, Duration::from_secs(600));
        let Command::Snapshots(s) = parse(&["hanul", "db", "snapshots"]).unwrap() else {
            panic!()
        };
        assert_eq!((s.cluster, s.output), (None, OutputFormat::Table));
        // Offsets are read as the same instant in UTC.
        let Command::Restore(r) = parse(&[
            "hanul",
            "db",
            "restore",
            "copy",
            "--source",
            "orders",
            "--time",
            "2024-05-01T19:00:00+09:00",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.time, Some(parse_time("2024-05-01T10:00:00Z").unwrap()));
        assert_eq!(r.time.unwrap().seconds, 1_714_557_600);
        assert!(!r.latest && r.snapshot.is_none());

        for bad in [
            &["hanul", "db", "snapshot", "orders"][..],
            &[
                "hanul",
                "db",
                "snapshot",
                "orders",
                "s",
                "--timeout",
                "soon",
            ],
            &["hanul", "db", "snapshots", "orders", "-o", "xml"],
            // Nothing to restore from, or two things.
            &["hanul", "db", "restore", "copy"],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--snapshot",
                "s",
                "--source",
                "orders",
                "--latest",
            ],
            // A cluster needs exactly one time; a snapshot takes none.
            &["hanul", "db", "restore", "copy", "--source", "orders"],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--source",
                "orders",
                "--latest",
                "--time",
                "2024-05-01T10:00:00Z",
            ],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--snapshot",
                "s",
                "--time",
                "2024-05-01T10:00:00Z",
            ],
            &[
                "hanul",
                "db",
                "restore",
                "copy",
                "--snapshot",
                "s",
                "--latest",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = parse(&[
            "hanul",
            "db",
            "restore",
            "copy",
            "--source",
            "orders",
            "--time",
            "yesterday",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"yesterday\" is not an RFC 3339 time (like 2024-05-01T10:00:00Z)"),
            "{e}"
        );
    }

    const T0: i64 = 1_700_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    /// `orders` as the server has it: a uid, the defaults written in, protected, itself
    /// restored from a snapshot once, restorable from T0 - 1 day to T0.
    fn live_orders() -> DbCluster {
        let mut c = orders();
        let meta = c.metadata.as_mut().unwrap();
        meta.uid = "uid-orders".into();
        meta.resource_version = 7;
        let spec = c.spec.as_mut().unwrap();
        spec.engine = "postgres".into();
        spec.engine_version = "15".into();
        spec.instance_class = "db.r5.large".into();
        spec.storage_gib = Some(50);
        spec.port = Some(15432);
        spec.zones = vec!["az-a".into(), "az-b".into(), "az-c".into()];
        spec.deletion_protection = true;
        spec.parameter_group = "orders-params".into();
        spec.backup = Some(BackupSettings {
            retention_days: Some(7),
            preferred_window: "03:00-03:30".into(),
        });
        spec.source = Some(DbClusterSource {
            snapshot: "older".into(),
            ..Default::default()
        });
        let st = c.status.as_mut().unwrap();
        st.phase = PHASE_AVAILABLE.into();
        st.earliest_restorable_time = Some(at(T0 - 86_400));
        st.latest_restorable_time = Some(at(T0));
        c
    }

    fn snap(phase: &str) -> DbSnapshot {
        DbSnapshot {
            metadata: Some(ObjectMeta {
                name: "snap-1".into(),
                uid: "uid-snap".into(),
                ..Default::default()
            }),
            spec: Some(DbSnapshotSpec {
                db_cluster: "orders".into(),
                r#type: SNAPSHOT_MANUAL.into(),
            }),
            status: Some(DbSnapshotStatus {
                phase: phase.into(),
                cluster_uid: "uid-orders".into(),
                engine: "postgres".into(),
                engine_version: "15".into(),
                master_username: "admin".into(),
                storage_gib: 40,
                database_name: "orders".into(),
                snapshot_create_time: Some(at(T0 - 3600)),
                ..Default::default()
            }),
        }
    }

    fn from_snapshot<'a>(s: &'a DbSnapshot, c: Option<&'a DbCluster>) -> RestoreSource<'a> {
        RestoreSource::Snapshot {
            snapshot: s,
            cluster: c,
        }
    }

    fn spec_of(c: &DbCluster) -> &DbClusterSpec {
        c.spec.as_ref().unwrap()
    }

    fn restore_err(source: RestoreSource<'_>, o: &RestoreOverrides) -> String {
        restore_cluster("copy", source, o, &[])
            .unwrap_err()
            .to_string()
    }

    /// What the server's admission says of a manifest (defaults written in).
    fn admitted(c: &DbCluster) -> Result<(), hanul_apiserver::Error> {
        let mut o: Object = c.clone().into();
        hanul_apiserver::admission::default(&mut o);
        let ctx = hanul_apiserver::admission::Context {
            instance_types: Vec::new(),
        };
        hanul_apiserver::admission::validate(&o, None, &ctx)
    }

    #[test]
    fn a_snapshot_of_a_live_cluster_restores_with_its_spec_unprotected_and_on_a_free_port() {
        let (s, live) = (snap(SNAPSHOT_AVAILABLE), live_orders());
        let c = restore_cluster(
            "copy",
            from_snapshot(&s, Some(&live)),
            &RestoreOverrides::default(),
            &[15432, 5432],
        )
        .unwrap();
        // A new object: its name only, no status.
        assert_eq!(
            c.metadata,
            Some(ObjectMeta {
                name: "copy".into(),
                ..Default::default()
            })
        );
        assert_eq!(c.status, None);
        let mut want = live.spec.clone().unwrap();
        want.source = Some(DbClusterSource {
            snapshot: "snap-1".into(),
            ..Default::default()
        });
        want.deletion_protection = false;
        // orders has 15432 and 15433: the next pair that collides with none.
        want.port = Some(15434);
        assert_eq!(spec_of(&c), &want);
        assert_eq!(spec_of(&c).master_password, "hunter2-secret");
        admitted(&c).unwrap();
    }

    #[test]
    fn a_snapshot_whose_cluster_is_gone_or_replaced_restores_from_defaults_and_needs_a_password() {
        let s = snap(SNAPSHOT_AVAILABLE);
        let e = restore_err(from_snapshot(&s, None), &RestoreOverrides::default());
        assert_eq!(
            e,
            "--master-password is required: the cluster dbsnapshot/snap-1 was taken of \
             (dbcluster/orders) no longer exists, so there is no password to copy (the restored \
             cluster's master user \"admin\" gets the one given)"
        );
        // A cluster of that name made later is another cluster: nothing of it is copied.
        let mut later = live_orders();
        later.metadata.as_mut().unwrap().uid = "uid-later".into();
        let e = restore_err(
            from_snapshot(&s, Some(&later)),
            &RestoreOverrides::default(),
        );
        assert!(
            e.contains("dbcluster/orders is a later cluster of that name than the one dbsnapshot/snap-1 was taken of"),
            "{e}"
        );
        let with_password = RestoreOverrides {
            master_password: Some("n3w-secret".into()),
            ..Default::default()
        };
        for cluster in [None, Some(&later)] {
            let c =
                restore_cluster("copy", from_snapshot(&s, cluster), &with_password, &[]).unwrap();
            assert_eq!(
                spec_of(&c),
                &DbClusterSpec {
                    engine: "postgres".into(),
                    engine_version: "15".into(),
                    storage_gib: Some(40),
                    database_name: "orders".into(),
                    master_username: "admin".into(),
                    master_password: "n3w-secret".into(),
                    port: Some(5432),
                    source: Some(DbClusterSource {
                        snapshot: "snap-1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            );
            admitted(&c).unwrap();
        }
    }

    #[test]
    fn an_encrypted_snapshot_whose_cluster_is_gone_restores_encrypted_with_its_key() {
        let mut s = snap(SNAPSHOT_AVAILABLE);
        let key = hanul_proto::v1::SecretKeyRef {
            name: "backup-key".into(),
            key: "key".into(),
        };
        s.status.as_mut().unwrap().encryption_key_secret = Some(key.clone());
        let with_password = RestoreOverrides {
            master_password: Some("n3w-secret".into()),
            ..Default::default()
        };
        let c = restore_cluster("copy", from_snapshot(&s, None), &with_password, &[]).unwrap();
        assert!(spec_of(&c).backup_encrypted);
        assert_eq!(spec_of(&c).backup_encryption_key_secret, Some(key));
        admitted(&c).unwrap();
    }

    #[test]
    fn flags_override_the_copied_deployment_class_port_and_password() {
        let (s, live) = (snap(SNAPSHOT_AVAILABLE), live_orders());
        let o = RestoreOverrides {
            deployment: Some(SINGLE_AZ.into()),
            instance_class: Some("db.t3.small".into()),
            port: Some(15432),
            master_password: Some("n3w-secret".into()),
        };
        let c = restore_cluster("copy", from_snapshot(&s, Some(&live)), &o, &[15432]).unwrap();
        let spec = spec_of(&c);
        assert_eq!(spec.deployment, SINGLE_AZ);
        assert_eq!(spec.instance_class, "db.t3.small");
        // Asked for: kept, even where another cluster listens.
        assert_eq!(spec.port, Some(15432));
        assert_eq!(spec.master_password, "n3w-secret");
        // The zones were the old deployment's.
        assert!(spec.zones.is_empty(), "{:?}", spec.zones);
        // The master user is the data's.
        assert_eq!(spec.master_username, "admin");
        // The same deployment keeps its zones.
        let same = RestoreOverrides {
            deployment: Some(MULTI_AZ_CLUSTER.into()),
            ..Default::default()
        };
        let c = restore_cluster("copy", from_snapshot(&s, Some(&live)), &same, &[]).unwrap();
        assert_eq!(spec_of(&c).zones.len(), 3);
    }

    #[test]
    fn only_an_available_snapshot_is_restored() {
        let o = RestoreOverrides {
            master_password: Some("n3w-secret".into()),
            ..Default::default()
        };
        let creating = snap(SNAPSHOT_CREATING);
        let e = restore_err(from_snapshot(&creating, None), &o);
        assert!(
            e.starts_with("dbsnapshot/snap-1 is not available yet (phase creating)"),
            "{e}"
        );
        let mut failed = snap(SNAPSHOT_FAILED);
        failed.status.as_mut().unwrap().message = "pg_basebackup: disk full".into();
        let e = restore_err(from_snapshot(&failed, None), &o);
        assert_eq!(
            e,
            "dbsnapshot/snap-1 failed and cannot be restored: pg_basebackup: disk full"
        );
        let mut deleting = snap(SNAPSHOT_AVAILABLE);
        deleting.metadata.as_mut().unwrap().deleted_at = Some(at(T0));
        let e = restore_err(from_snapshot(&deleting, None), &o);
        assert_eq!(e, "dbsnapshot/snap-1 is being deleted");
    }

    #[test]
    fn a_point_in_time_restore_copies_the_source_and_names_the_time() {
        let live = live_orders();
        let t = at(T0 - 600);
        let c = restore_cluster(
            "copy",
            RestoreSource::PointInTime {
                cluster: &live,
                time: Some(&t),
            },
            &RestoreOverrides::default(),
            &[15432],
        )
        .unwrap();
        let spec = spec_of(&c);
        assert_eq!(
            spec.source,
            Some(DbClusterSource {
                cluster: "orders".into(),
                restore_time: Some(t),
                ..Default::default()
            })
        );
        assert!(!spec.deletion_protection);
        assert_eq!(
            (spec.master_username.as_str(), spec.master_password.as_str()),
            ("admin", "hunter2-secret")
        );
        assert_eq!(
            (spec.deployment.as_str(), spec.port),
            (MULTI_AZ_CLUSTER, Some(15434))
        );
        admitted(&c).unwrap();

        let c = restore_cluster(
            "copy",
            RestoreSource::PointInTime {
                cluster: &live,
                time: None,
            },
            &RestoreOverrides::default(),
            &[],
        )
        .unwrap();
        assert_eq!(
            spec_of(&c).source,
            Some(DbClusterSource {
                cluster: "orders".into(),
                use_latest_restorable_time: true,
                ..Default::default()
            })
        );
        // Both ends of the window are restorable.
        for t in [at(T0 - 86_400), at(T0)] {
            check_restore_time(&live, Some(&t)).unwrap();
        }
    }

    #[test]
    fn a_point_in_time_outside_the_restorable_window_is_refused() {
        let live = live_orders();
        let pitr = |c: &DbCluster, t: Option<Timestamp>| {
            restore_err(
                RestoreSource::PointInTime {
                    cluster: c,
                    time: t.as_ref(),
                },
                &RestoreOverrides::default(),
            )
        };
        assert_eq!(
            pitr(&live, Some(at(T0 - 86_401))),
            "--time 2023-11-13T22:13:19Z is before the earliest restorable time \
             2023-11-13T22:13:20Z of dbcluster/orders"
        );
        assert_eq!(
            pitr(&live, Some(at(T0 + 1))),
            "--time 2023-11-14T22:13:21Z is after the latest restorable time \
             2023-11-14T22:13:20Z of dbcluster/orders (its WAL is archived up to then)"
        );
        let mut fresh = live_orders();
        fresh.status.as_mut().unwrap().earliest_restorable_time = None;
        for t in [Some(at(T0)), None] {
            assert_eq!(
                pitr(&fresh, t),
                "point-in-time restore of dbcluster/orders is not available yet: it has no \
                 automated backup"
            );
        }
        let mut unarchived = live_orders();
        unarchived.status.as_mut().unwrap().latest_restorable_time = None;
        assert_eq!(
            pitr(&unarchived, None),
            "point-in-time restore of dbcluster/orders is not available yet: it has no archived \
             WAL yet"
        );
        let mut off = fresh.clone();
        off.spec
            .as_mut()
            .unwrap()
            .backup
            .as_mut()
            .unwrap()
            .retention_days = Some(0);
        assert!(
            pitr(&off, None).contains("its backup retention is 0 days"),
            "{}",
            pitr(&off, None)
        );
    }

    #[test]
    fn a_copied_cluster_without_a_password_still_needs_one() {
        let mut live = live_orders();
        live.spec.as_mut().unwrap().master_password.clear();
        let e = restore_err(
            RestoreSource::PointInTime {
                cluster: &live,
                time: None,
            },
            &RestoreOverrides::default(),
        );
        assert!(e.starts_with("--master-password is required"), "{e}");
    }

    #[test]
    fn the_clone_verb_parses() {
        let Command::Clone(c) = parse(&["hanul", "db", "clone", "orders", "copy"]).unwrap() else {
            panic!()
        };
        assert_eq!((c.source.as_str(), c.name.as_str()), ("orders", "copy"));
        let n = &c.new;
        assert_eq!(
            (&n.deployment, &n.instance_class, n.port, &n.master_password),
            (&None, &None, None, &None)
        );
        assert!(!n.dry_run && !n.wait);
        assert_eq!(n.timeout, Duration::from_secs(1800));
        let Command::Clone(c) = parse(&[
            "hanul",
            "db",
            "clone",
            "dbcluster/orders",
            "dbcluster/copy",
            "--deployment",
            "singleAZ",
            "--instance-class",
            "db.m5.large",
            "--port",
            "16432",
            "--master-password",
            "n3w-secret",
            "--dry-run",
            "--wait",
            "--timeout",
            "1h",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.source.as_str(), c.name.as_str()),
            ("dbcluster/orders", "dbcluster/copy")
        );
        let n = &c.new;
        assert_eq!(n.deployment.as_deref(), Some("singleAZ"));
        assert_eq!(n.instance_class.as_deref(), Some("db.m5.large"));
        assert_eq!(n.port, Some(16432));
        assert_eq!(n.master_password.as_deref(), Some("n3w-secret"));
        assert!(n.dry_run && n.wait);
        assert_eq!(n.timeout, Duration::from_secs(3600));
        for bad in [
            &["hanul", "db", "clone"][..],
            &["hanul", "db", "clone", "orders"],
            &["hanul", "db", "clone", "orders", "copy", "extra"],
            // A clone is the data as it is now: no time, no snapshot.
            &[
                "hanul",
                "db",
                "clone",
                "orders",
                "copy",
                "--time",
                "2024-05-01T10:00:00Z",
            ],
            &["hanul", "db", "clone", "orders", "copy", "--latest"],
            &["hanul", "db", "clone", "orders", "copy", "--snapshot", "s"],
            &["hanul", "db", "clone", "orders", "copy", "--source", "x"],
            &["hanul", "db", "clone", "orders", "copy", "--port", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_clone_copies_the_source_spec_names_it_and_moves_the_port() {
        let live = live_orders();
        let c = restore_cluster(
            "copy",
            RestoreSource::Clone { cluster: &live },
            &RestoreOverrides::default(),
            &[15432, 5432],
        )
        .unwrap();
        assert_eq!(
            c.metadata,
            Some(ObjectMeta {
                name: "copy".into(),
                ..Default::default()
            })
        );
        assert_eq!(c.status, None);
        let mut want = live.spec.clone().unwrap();
        want.source = Some(DbClusterSource {
            cluster: "orders".into(),
            clone: true,
            ..Default::default()
        });
        want.deletion_protection = false;
        want.port = Some(15434);
        assert_eq!(spec_of(&c), &want);
        assert_eq!(
            (
                spec_of(&c).master_username.as_str(),
                spec_of(&c).master_password.as_str()
            ),
            ("admin", "hunter2-secret")
        );
        admitted(&c).unwrap();

        // The flags override what is copied.
        let o = RestoreOverrides {
            deployment: Some(SINGLE_AZ.into()),
            instance_class: Some("db.t3.small".into()),
            port: Some(15432),
            master_password: Some("n3w-secret".into()),
        };
        let c = restore_cluster(
            "copy",
            RestoreSource::Clone { cluster: &live },
            &o,
            &[15432],
        )
        .unwrap();
        let spec = spec_of(&c);
        assert_eq!(spec.deployment, SINGLE_AZ);
        assert_eq!(spec.instance_class, "db.t3.small");
        assert_eq!(spec.port, Some(15432));
        assert_eq!(spec.master_password, "n3w-secret");
        assert!(spec.zones.is_empty(), "{:?}", spec.zones);
        assert_eq!(spec.master_username, "admin");
        assert_eq!(
            spec.source.as_ref().map(|s| (s.cluster.as_str(), s.clone)),
            Some(("orders", true))
        );
        admitted(&c).unwrap();
    }

    #[test]
    fn a_clone_needs_an_available_member_but_no_restorable_time() {
        let clone_err = |c: &DbCluster| {
            restore_err(
                RestoreSource::Clone { cluster: c },
                &RestoreOverrides::default(),
            )
        };
        let mut starting = live_orders();
        for m in &mut starting.status.as_mut().unwrap().members {
            m.state = STATE_CREATING.into();
        }
        let e = clone_err(&starting);
        assert!(
            e.starts_with("DB cluster orders has no available member to clone from"),
            "{e}"
        );
        let mut fresh = live_orders();
        fresh.status = None;
        assert!(
            clone_err(&fresh).starts_with("DB cluster orders has no available member"),
            "{}",
            clone_err(&fresh)
        );
        // One available member is enough (a read replica too).
        let mut one = starting.clone();
        one.status.as_mut().unwrap().members[3].state = STATE_AVAILABLE.into();
        check_clone(&one).unwrap();
        // No restorable window is needed: no backup, no archived WAL, backups off.
        let mut unbacked = live_orders();
        let st = unbacked.status.as_mut().unwrap();
        st.earliest_restorable_time = None;
        st.latest_restorable_time = None;
        unbacked
            .spec
            .as_mut()
            .unwrap()
            .backup
            .as_mut()
            .unwrap()
            .retention_days = Some(0);
        restore_cluster(
            "copy",
            RestoreSource::Clone { cluster: &unbacked },
            &RestoreOverrides::default(),
            &[],
        )
        .unwrap();
        // Without a password to copy, one must be given, as for a restore.
        let mut no_password = live_orders();
        no_password.spec.as_mut().unwrap().master_password.clear();
        assert!(
            clone_err(&no_password).starts_with("--master-password is required"),
            "{}",
            clone_err(&no_password)
        );
    }

    #[test]
    fn a_clone_or_restore_refuses_a_missing_source_and_an_existing_new_cluster() {
        let clusters: Vec<Object> = vec![live_orders().into()];
        let e = source_cluster(&clusters, "sales", "clone")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/sales does not exist: there is nothing to clone (a deleted cluster's data \
             is in its snapshots: `hanul db snapshots sales`)"
        );
        assert_eq!(
            name_in(
                source_cluster(&clusters, "orders", "clone")
                    .unwrap()
                    .metadata
                    .as_ref()
            ),
            "orders"
        );
        check_new("copy", Origin::Clone("orders"), &clusters).unwrap();
        let e = check_new("orders", Origin::Clone("orders"), &clusters)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders already exists; a clone makes a new cluster"
        );
        let e = check_new("orders", Origin::Snapshot("snap-1"), &clusters)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders already exists; a restore makes a new cluster"
        );
    }

    #[test]
    fn ports_move_past_every_cluster_that_has_them() {
        assert_eq!(free_port(5432, &[]), 5432);
        assert_eq!(free_port(5432, &[5432]), 5434);
        // 5433 is the reader of 5432, and 5434's reader would be 5435.
        assert_eq!(free_port(5432, &[5432, 5435]), 5437);
        assert_eq!(free_port(5432, &[5431]), 5433);
        assert_eq!(free_port(65_534, &[65_534]), 65_534);
    }

    fn snapshot_object(name: &str, cluster: &str, created: Option<i64>) -> Object {
        let mut s = manual_snapshot(cluster, name);
        s.status = Some(DbSnapshotStatus {
            snapshot_create_time: created.map(at),
            ..Default::default()
        });
        s.into()
    }

    #[test]
    fn snapshots_are_listed_oldest_first_with_those_being_made_last() {
        let all = vec![
            snapshot_object("b", "orders", Some(T0)),
            snapshot_object("making", "orders", None),
            snapshot_object("a", "orders", Some(T0)),
            snapshot_object("old", "orders", Some(T0 - 10)),
            snapshot_object("other", "sales", Some(T0 - 20)),
            instance("orders-1", "orders", ROLE_WRITER),
        ];
        let names = |v: Vec<Object>| v.iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(snapshots_of(all.clone(), Some("orders"))),
            ["old", "a", "b", "making"]
        );
        assert_eq!(
            names(snapshots_of(all.clone(), None)),
            ["other", "old", "a", "b", "making"]
        );
        assert!(snapshots_of(all, Some("nope")).is_empty());
        // And they print as `hanul get dbsnapshots` does.
        let text = get::render(
            &snapshots_of(vec![snapshot_object("a", "orders", Some(T0))], None),
            OutputFormat::Table,
            false,
            true,
            T0,
        );
        assert!(text.starts_with("NAME   CLUSTER   TYPE"), "{text}");
        assert!(text.contains("a      orders    manual"), "{text}");
    }

    #[test]
    fn the_restorable_window_or_why_there_is_none() {
        let live = live_orders();
        assert_eq!(
            restorable_line(&live),
            "Restorable: 2023-11-13T22:13:20Z .. 2023-11-14T22:13:20Z\n"
        );
        let mut c = live_orders();
        c.status.as_mut().unwrap().earliest_restorable_time = None;
        assert_eq!(
            restorable_line(&c),
            "Restorable: point-in-time restore is not available yet: no automated backup\n"
        );
        let mut c = live_orders();
        c.status.as_mut().unwrap().latest_restorable_time = None;
        assert_eq!(
            restorable_line(&c),
            "Restorable: point-in-time restore is not available yet: no archived WAL yet\n"
        );
        let mut c = live_orders();
        c.spec
            .as_mut()
            .unwrap()
            .backup
            .as_mut()
            .unwrap()
            .retention_days = Some(0);
        assert_eq!(
            restorable_line(&c),
            "Restorable: point-in-time restore is off (backup retention is 0 days)\n"
        );
    }

    #[test]
    fn a_manual_snapshot_names_its_cluster_and_waits_end_on_available_or_failed() {
        let s = manual_snapshot("orders", "snap-1");
        assert_eq!(
            s.spec,
            Some(DbSnapshotSpec {
                db_cluster: "orders".into(),
                r#type: "manual".into(),
            })
        );
        assert!(!snapshot_done(&snap(SNAPSHOT_CREATING).into()).unwrap());
        assert!(snapshot_done(&snap(SNAPSHOT_AVAILABLE).into()).unwrap());
        let mut failed = snap(SNAPSHOT_FAILED);
        failed.status.as_mut().unwrap().message = "no member to take it from".into();
        assert_eq!(
            snapshot_done(&failed.into()).unwrap_err().to_string(),
            "dbsnapshot/snap-1 failed: no member to take it from"
        );

        let mut c = live_orders();
        assert!(cluster_done(&c.clone().into()).unwrap());
        let st = c.status.as_mut().unwrap();
        st.phase = db::PHASE_CREATING.into();
        assert!(!cluster_done(&c.clone().into()).unwrap());
        c.status.as_mut().unwrap().restore = Some(DbRestore {
            error: "snapshot snap-1 not found".into(),
            ..Default::default()
        });
        assert_eq!(
            cluster_done(&c.into()).unwrap_err().to_string(),
            "dbcluster/orders cannot be restored: snapshot snap-1 not found"
        );
    }

    fn record(latest: i64) -> DbClusterAutomatedBackup {
        DbClusterAutomatedBackup {
            metadata: Some(ObjectMeta {
                name: "orders".into(),
                ..Default::default()
            }),
            spec: Some(hanul_proto::v1::DbClusterAutomatedBackupSpec {
                db_cluster: "orders".into(),
                db_cluster_resource_id: "uid-orders".into(),
            }),
            status: Some(hanul_proto::v1::DbClusterAutomatedBackupStatus {
                status: "retained".into(),
                db_cluster: "orders".into(),
                engine: "postgres".into(),
                engine_version: "15".into(),
                master_username: "admin".into(),
                port: 6000,
                storage_gib: 40,
                database_name: "shop".into(),
                retention_days: 3,
                encryption_key_secret: Some(hanul_proto::v1::SecretKeyRef {
                    name: "orders-key".into(),
                    key: "key".into(),
                }),
                earliest_restorable_time: Some(at(T0 - 3600)),
                latest_restorable_time: Some(at(latest)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_restore_from_retained_backups_takes_the_records_settings_and_window() {
        let r = record(T0);
        let pw = RestoreOverrides {
            master_password: Some("n3w-secret".into()),
            ..Default::default()
        };
        let t = at(T0 - 60);
        let c = restore_cluster(
            "back",
            RestoreSource::AutomatedBackup {
                record: &r,
                time: Some(&t),
            },
            &pw,
            &[6000],
        )
        .unwrap();
        let s = spec_of(&c);
        let source = s.source.clone().unwrap();
        assert_eq!(source.automated_backup, "orders");
        assert_eq!(source.restore_time, Some(t));
        assert!(source.cluster.is_empty() && !source.use_latest_restorable_time);
        assert_eq!(
            (s.master_username.as_str(), s.database_name.as_str()),
            ("admin", "shop")
        );
        assert_eq!(s.storage_gib, Some(40));
        // The record's port is taken by another cluster's endpoints: the next free one.
        assert_eq!(s.port, Some(6002));
        // Encrypted backups restore only into an encrypted cluster: with their key.
        assert!(s.backup_encrypted);
        assert_eq!(
            s.backup_encryption_key_secret
                .as_ref()
                .map(|k| k.name.as_str()),
            Some("orders-key")
        );
        let latest = restore_cluster(
            "back",
            RestoreSource::AutomatedBackup {
                record: &r,
                time: None,
            },
            &pw,
            &[],
        )
        .unwrap();
        assert!(
            spec_of(&latest)
                .source
                .as_ref()
                .unwrap()
                .use_latest_restorable_time
        );
        // No password to copy from a deleted cluster.
        let e = restore_err(
            RestoreSource::AutomatedBackup {
                record: &r,
                time: None,
            },
            &RestoreOverrides::default(),
        );
        assert!(e.contains("--master-password is required"), "{e}");
        // Outside the window it had at the deletion.
        let late = at(T0 + 1);
        let e = restore_err(
            RestoreSource::AutomatedBackup {
                record: &r,
                time: Some(&late),
            },
            &pw,
        );
        assert!(e.contains("after the latest restorable time"), "{e}");
        let early = at(T0 - 7200);
        let e = restore_err(
            RestoreSource::AutomatedBackup {
                record: &r,
                time: Some(&early),
            },
            &pw,
        );
        assert!(e.contains("before the earliest restorable time"), "{e}");
        // And `db snapshots` of the deleted cluster says where its window went.
        let lines = retained_lines(&[r.clone().into()], "orders");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("--automated-backup orders"),
            "{}",
            lines[0]
        );
        assert!(retained_lines(&[r.into()], "other").is_empty());
    }

    #[test]
    fn restore_takes_an_automated_backup_with_a_time_and_nothing_else() {
        let Command::Restore(r) = parse(&[
            "hanul",
            "db",
            "restore",
            "back",
            "--automated-backup",
            "orders",
            "--latest",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.automated_backup.as_deref(), Some("orders"));
        assert!(r.latest);
        assert!(
            parse(&[
                "hanul",
                "db",
                "restore",
                "back",
                "--automated-backup",
                "orders",
                "--time",
                "2024-05-01T10:00:00Z",
            ])
            .is_ok()
        );
        for argv in [
            &[
                "hanul",
                "db",
                "restore",
                "back",
                "--automated-backup",
                "orders",
            ][..],
            &[
                "hanul",
                "db",
                "restore",
                "back",
                "--automated-backup",
                "orders",
                "--source",
                "sales",
                "--latest",
            ],
            &[
                "hanul",
                "db",
                "restore",
                "back",
                "--automated-backup",
                "orders",
                "--snapshot",
                "s1",
            ],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
    }
}
