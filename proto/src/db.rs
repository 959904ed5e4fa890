//! RDS's words and hanul's defaults for `DBCluster` and `DBInstance`, and the protocol by which
//! the controller and the agents hand the writer role over.
//!
//! # Who writes what
//! - The user writes `DBCluster.spec`.
//! - The cluster's controller writes `DBCluster.status` and creates, places (`spec.node`) and
//!   deletes the `DBInstance` members (owned by the cluster; named `<cluster>-1`, `-2`, ...).
//! - The agent of a member's node runs its PostgreSQL and writes `DBInstance.status`: what
//!   PostgreSQL is (role, timeline, WAL positions), its lease renewals and its votes.
//!
//! # Epochs
//! `DBCluster.status.epoch` is the writer's term and `status.writer` names the member that is
//! writer in it. A member starts PostgreSQL as a writer (first boot, a promotion, a restart in
//! place after a crash) only when the cluster names it writer in an epoch newer than the one it
//! last acted on, and reports `status.role = writer`, `status.epoch = E` once it is. A member
//! whose PostgreSQL ran as writer in an older epoch never starts it as a writer again: it rejoins
//! as a standby with `pg_rewind` (after the new writer's `CHECKPOINT`), or is rebuilt from a base
//! backup; a failed rewind never falls back to a normal start.
//!
//! # Lease
//! The writer's agent bumps `status.leaseRenewals` (with `status.leaseEpoch = E`) every
//! [`lease_renew_interval`]; if no renewal has succeeded for [`self_fence_after`] it stops
//! PostgreSQL (self-fences) and reports `fenced`. The controller takes the writer for lost when it
//! has seen no change of `leaseRenewals` for a whole lease, measured on its own monotonic clock
//! from the moment it saw the last change (so from its start after a restart). The agent's
//! deadline is always earlier than the controller's.
//!
//! # Failover
//! 1. The writer of epoch E is down: its agent reports `state = failed` (PostgreSQL exited; it
//!    is not restarted), or its lease ran out. The controller writes `status.failover =
//!    {epoch: E + 1, from, reason}`, phase `failing-over`. From here the endpoints route no
//!    writes.
//! 2. Each standby's agent, seeing `failover.epoch` newer than its `vote.epoch`, stops streaming
//!    from the old writer (empty `primary_conninfo`, reload, its WAL receiver gone) and reports
//!    `vote = {epoch: E + 1, lsn: its received WAL, timeline}`. Its WAL no longer grows, so no
//!    commit the old writer acknowledges after the vote counts on it.
//! 3. Once enough of the writer's synchronous set voted (`sync_standbys.len() - sync_count + 1`
//!    of them: every acknowledged commit is on at least one voter), the controller picks the
//!    voter with the most WAL (a switchover's target if it has as much) and writes `epoch = E +
//!    1`, `writer = candidate`, `failover.target = candidate`.
//! 4. The candidate's agent promotes, sets the new synchronous set, runs `CHECKPOINT` and
//!    reports `role = writer, epoch = E + 1`; the other voters point `primary_conninfo` at it
//!    and reload; everyone else (the old writer, read replicas) rejoins with `pg_rewind`.
//! 5. The controller clears `failover` once the candidate reports the new epoch.
//!
//! A switchover (`hanul db failover`) is the same with reason `switchover`, except that step 1
//! waits for the old writer's agent to shut its PostgreSQL down cleanly (`fast`: its WAL reaches
//! the standbys first), so no commit is lost and the target has everything.
//!
//! # Backtrack
//! `hanul db backtrack` (Aurora's BacktrackDBCluster) writes the annotation
//! [`BACKTRACK_ANNOTATION`] = `<RFC 3339 time>@<request id>`. The controller acts on each
//! request id once (`status.backtrackHandled`): a target outside the window (before
//! `earliestBacktrackTime`, after `latestRestorableTime`, in the future) or a cluster that is
//! not available is refused with a Warning event and `status.backtrackRefused`. Otherwise it
//! picks the base (an automated snapshot whose data is a prefix of the history live at the
//! target) and the timeline to follow, and writes `status.backtrack = {epoch: E + 1, ...}`,
//! `epoch = E + 1` (same writer), phase `backtracking`. From here the endpoints route no
//! writes: the writer does not report the new epoch yet.
//! 1. The writer's agent stops PostgreSQL (`fast`), moves its data directory aside, restores
//!    the snapshot with recovery to the target time on that timeline
//!    (`recovery_target_timeline` named explicitly), lets it promote itself (a new timeline),
//!    and reports `role = writer, epoch = E + 1`. The old directory is removed only then; a
//!    failed attempt removes what it restored and tries again, never starting the old data
//!    or a half-restored one as the writer.
//! 2. Every other member that acted in an epoch before the backtrack's is rebuilt from the new
//!    writer (its history is the old one).
//! 3. The controller notes the new timeline in `status.timelines` (since the backtrack's
//!    start, with the time it rewound to), clears `backtrack`, and the cluster is available.
//!
//! A failed attempt counts in the writer's `backtrackFailures` (its error in `message`); the
//! controller copies them to `backtrack.failures`/`error` with a `BacktrackFailed` event.
//! `hanul db backtrack --cancel` writes [`BACKTRACK_CANCEL_ANNOTATION`]: while the writer has
//! not reported the new epoch, the controller sets `backtrack.cancelRequestedAt`; the
//! writer's agent, instead of another attempt, stops what the attempt left, puts the data
//! directory from before back in place and reports `backtrackCancelled = E + 1`; the
//! controller then drops `backtrack` (no timeline noted), names the same writer in epoch
//! E + 2, which starts the old data in place, and the other members rejoin it on the old
//! history. An attempt that completes first wins: the cancel is refused as too late.
//!
//! The WAL archive keeps every timeline's files, so a later backtrack may go forward again
//! to a time between the target and the backtrack's start: the data as of wall time T is the
//! history of the timeline live at T.
//!
//! # Endpoints
//! The agent of `status.endpoints.node` runs them with the load balancer's TCP proxy. The
//! writer endpoint routes to the member named `status.writer` only when that member reports
//! `role = writer` at `status.epoch`, no failover is under way and no member reports a newer
//! epoch; every change of the writer closes the connections to the old one. The reader endpoint
//! balances over the readable members that stream from the writer (the writer when there are
//! none).

use std::time::Duration;

/// `spec.engine`.
pub const ENGINE: &str = "postgres";
/// `spec.engineVersion`.
pub const ENGINE_VERSION: &str = "15";

/// `spec.deployment`.
pub const SINGLE_AZ: &str = "singleAZ";
pub const MULTI_AZ_INSTANCE: &str = "multiAZInstance";
pub const MULTI_AZ_CLUSTER: &str = "multiAZCluster";
pub const DEPLOYMENTS: &[&str] = &[SINGLE_AZ, MULTI_AZ_INSTANCE, MULTI_AZ_CLUSTER];

/// `spec.replication.dataDurability`.
pub const DURABILITY_REQUIRED: &str = "required";
pub const DURABILITY_PREFERRED: &str = "preferred";

/// `DBInstance.spec.role` (what the member is for) and `status.role` (what PostgreSQL is).
pub const ROLE_WRITER: &str = "writer";
pub const ROLE_STANDBY: &str = "standby";
pub const ROLE_REPLICA: &str = "replica";

/// `DBCluster.status.members[].role`.
pub const MEMBER_WRITER: &str = "writer";
pub const MEMBER_SYNC_STANDBY: &str = "syncStandby";
pub const MEMBER_STANDBY: &str = "standby";
pub const MEMBER_READ_REPLICA: &str = "readReplica";

/// `DBInstance.status.state`.
pub const STATE_CREATING: &str = "creating";
pub const STATE_AVAILABLE: &str = "available";
/// PostgreSQL exited and is not restarted until the cluster says so.
pub const STATE_FAILED: &str = "failed";
pub const STATE_STOPPED: &str = "stopped";
/// Rewinding to follow a new writer.
pub const STATE_REJOINING: &str = "rejoining";
/// Being rebuilt from a base backup.
pub const STATE_REBUILDING: &str = "rebuilding";
/// Stopped by its own agent, which could not renew the writer's lease.
pub const STATE_FENCED: &str = "fenced";
/// The writer, restoring its data in place for the cluster's backtrack.
pub const STATE_BACKTRACKING: &str = "backtracking";

/// `DBCluster.status.phase`.
pub const PHASE_CREATING: &str = "creating";
pub const PHASE_AVAILABLE: &str = "available";
pub const PHASE_FAILING_OVER: &str = "failing-over";
pub const PHASE_REBOOTING: &str = "rebooting";
pub const PHASE_MODIFYING: &str = "modifying";
pub const PHASE_DELETING: &str = "deleting";
/// Rewinding in place to an earlier time (`hanul db backtrack`).
pub const PHASE_BACKTRACKING: &str = "backtracking";
/// Available, while a snapshot of it is being taken.
pub const PHASE_BACKING_UP: &str = "backing-up";
/// No writer can be started (its node is gone and there is no standby).
pub const PHASE_INACCESSIBLE: &str = "inaccessible";

/// `DBCluster.status.failover.reason`.
pub const REASON_WRITER_FAILED: &str = "writer-failed";
pub const REASON_WRITER_LOST: &str = "writer-lost";
pub const REASON_SWITCHOVER: &str = "switchover";

/// Defaults.
pub const DEFAULT_INSTANCE_CLASS: &str = "db.t3.micro";
pub const DEFAULT_STORAGE_GIB: u32 = 20;
pub const DEFAULT_PORT: u32 = 5432;
pub const DEFAULT_MASTER_USERNAME: &str = "postgres";
pub const DEFAULT_LEASE_SECONDS: u32 = 3;
pub const MAX_READ_REPLICAS: u32 = 15;

/// Annotation the CLI writes to ask for a planned switchover (`hanul db failover`): the
/// target member, or empty for the controller's choice, then `@` and a request id.
pub const SWITCHOVER_ANNOTATION: &str = "db.hanul.dev/switchover-requested";
/// Annotation the CLI writes to ask for a reboot (`hanul db reboot`): a request id, with
/// `force-failover:` in front for `--force-failover`.
pub const REBOOT_ANNOTATION: &str = "db.hanul.dev/reboot-requested";

/// Annotation the CLI writes to ask for a backtrack (`hanul db backtrack`): the time to
/// rewind to (RFC 3339), `@`, a request id.
pub const BACKTRACK_ANNOTATION: &str = "db.hanul.dev/backtrack-requested";
/// Annotation the CLI writes to cancel the backtrack under way (`hanul db backtrack --cancel`):
/// a request id. The controller acts on each once (`status.backtrackCancelHandled`).
pub const BACKTRACK_CANCEL_ANNOTATION: &str = "db.hanul.dev/backtrack-cancel-requested";
/// `spec.backtrackWindow`: Aurora's limit, 72 hours in seconds.
pub const MAX_BACKTRACK_WINDOW_SECONDS: u32 = 72 * 60 * 60;

/// The backtrack annotation's value: `<RFC 3339 time>@<request id>`.
pub fn backtrack_request(to: &pbjson_types::Timestamp, id: &str) -> String {
    format!("{}@{id}", crate::time::rfc3339(to))
}

/// Reads a backtrack annotation's value: the time to rewind to and the request id. Errors
/// say what is wrong.
pub fn parse_backtrack_request(value: &str) -> Result<(pbjson_types::Timestamp, &str), String> {
    let (time, id) = value.rsplit_once('@').ok_or_else(|| {
        format!("{value:?} is not a backtrack request; it is <RFC 3339 time>@<request id>")
    })?;
    if id.is_empty() {
        return Err(format!("{value:?} has no request id after '@'"));
    }
    let to: pbjson_types::Timestamp =
        serde_json::from_value(serde_json::Value::String(time.to_string()))
            .map_err(|_| format!("{time:?} is not an RFC 3339 time (like 2026-11-27T10:00:00Z)"))?;
    Ok((to, id))
}

/// `DBParameterGroup.spec.family`: the only one, and the default.
pub const PARAMETER_GROUP_FAMILY: &str = "postgres15";
pub const PARAMETER_GROUP_FAMILIES: &[&str] = &[PARAMETER_GROUP_FAMILY];

/// `DBInstance.status.parameterApplyStatus` and `DBCluster.status.parameterApplyStatus`, in
/// RDS's words.
pub const PARAMS_IN_SYNC: &str = "in-sync";
/// Static parameters (PostgreSQL's `postmaster` context) wait for the member's restart.
pub const PARAMS_PENDING_REBOOT: &str = "pending-reboot";
/// The member has not applied the group's current parameters yet (or the group is missing).
pub const PARAMS_APPLYING: &str = "applying";
/// PostgreSQL refused some parameters (unknown name, bad value): they are left out.
pub const PARAMS_INVALID: &str = "invalid-parameters";

/// The PostgreSQL settings hanul manages itself (in `hanul.conf`): a parameter group may not
/// set them. Names ending in `*` are prefixes.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
    "hba_file",
    "ident_file",
    "config_file",
    "wal_level",
    "hot_standby",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "restart_after_crash",
    "archive_mode",
    "archive_command",
    "restore_command",
    "recovery_target*",
    "promote_trigger_file",
    "wal_keep_size",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "password_encryption",
    "logging_collector",
    "ssl*",
];

/// Whether hanul manages the PostgreSQL setting `name` (see [`MANAGED_PARAMETERS`]).
pub fn is_managed_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    MANAGED_PARAMETERS
        .iter()
        .any(|m| match m.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *m,
        })
}

/// The cluster's parameter apply status from its members': the one that needs the user most
/// first (pending-reboot, then invalid-parameters, then applying); in-sync when all are, or
/// when there is no member yet.
pub fn sum_parameter_apply_status<'a>(members: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = members.into_iter().collect();
    [PARAMS_PENDING_REBOOT, PARAMS_INVALID, PARAMS_APPLYING]
        .into_iter()
        .find(|s| all.contains(s))
        .unwrap_or(PARAMS_IN_SYNC)
        .to_string()
}

/// An RDS instance class: the CPU and memory a member is limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceClass {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// The classes hanul knows, with RDS's sizes.
pub const INSTANCE_CLASSES: &[InstanceClass] = &[
    class("db.t3.micro", 2, 1024),
    class("db.t3.small", 2, 2048),
    class("db.t3.medium", 2, 4096),
    class("db.t3.large", 2, 8192),
    class("db.t4g.micro", 2, 1024),
    class("db.t4g.small", 2, 2048),
    class("db.t4g.medium", 2, 4096),
    class("db.m5.large", 2, 8192),
    class("db.m5.xlarge", 4, 16384),
    class("db.m5.2xlarge", 8, 32768),
    class("db.r5.large", 2, 16384),
    class("db.r5.xlarge", 4, 32768),
];

const fn class(name: &'static str, vcpus: u32, memory_mib: u64) -> InstanceClass {
    InstanceClass {
        name,
        vcpus,
        memory_mib,
    }
}

/// Finds an instance class by name.
pub fn instance_class(name: &str) -> Option<&'static InstanceClass> {
    INSTANCE_CLASSES.iter().find(|c| c.name == name)
}

/// The names of the known classes, for error messages.
pub fn instance_class_names() -> String {
    INSTANCE_CLASSES
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many members a deployment has besides its read replicas.
pub fn members_of(deployment: &str) -> usize {
    match deployment {
        MULTI_AZ_INSTANCE => 2,
        MULTI_AZ_CLUSTER => 3,
        _ => 1,
    }
}

/// How often the writer's agent renews a lease of `lease`.
pub fn lease_renew_interval(lease: Duration) -> Duration {
    lease / 6
}

/// How long the writer's agent goes without a successful renewal before it stops PostgreSQL.
pub fn self_fence_after(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// A WAL position as PostgreSQL prints it: `0/3000148`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Reads a WAL position as PostgreSQL prints it.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// A member's name: `<cluster>-<n>`, n from 1.
pub fn member_name(cluster: &str, n: usize) -> String {
    format!("{cluster}-{n}")
}

/// `DBSnapshot.spec.type`.
pub const SNAPSHOT_MANUAL: &str = "manual";
pub const SNAPSHOT_AUTOMATED: &str = "automated";
pub const SNAPSHOT_TYPES: &[&str] = &[SNAPSHOT_MANUAL, SNAPSHOT_AUTOMATED];
/// `DBSnapshot.status.phase`.
pub const SNAPSHOT_CREATING: &str = "creating";
pub const SNAPSHOT_AVAILABLE: &str = "available";
pub const SNAPSHOT_FAILED: &str = "failed";
/// The finalizer an agent puts on a DBSnapshot before it writes its files: a delete waits
/// until they are removed.
pub const SNAPSHOT_FINALIZER: &str = "hanul.dev/db-snapshot-files";

/// The finalizer an agent puts on the DB members it runs: a delete waits until PostgreSQL is
/// stopped and its files are removed (the cluster's controller releases it for a member whose
/// node is gone).
pub const MEMBER_FINALIZER: &str = "hanul.dev/agent-db";

/// The finalizer the cluster's controller puts on a cluster with
/// `spec.finalSnapshotIdentifier`: its deletion waits for the final snapshot.
pub const FINAL_SNAPSHOT_FINALIZER: &str = "hanul.dev/db-final-snapshot";

/// The finalizer the cluster's controller puts on a cluster with
/// `spec.deleteAutomatedBackups: false` (and automated backups on): its deletion waits until
/// its automated backups are retained in a `DBClusterAutomatedBackup`.
pub const RETAIN_BACKUPS_FINALIZER: &str = "hanul.dev/db-retain-automated-backups";

/// `DBClusterAutomatedBackup.status.status`: its cluster is deleted and it is kept until its
/// retention ends.
pub const AUTOMATED_BACKUP_RETAINED: &str = "retained";

/// The name of the record that retains the automated backups of the deleted cluster `cluster`
/// (uid `uid`): the cluster's name, or `<cluster>-<uid8>` when `taken` says a record of an
/// earlier cluster of that name holds it (a later record never clobbers an earlier one).
pub fn automated_backup_name(cluster: &str, uid: &str, taken: bool) -> String {
    if taken {
        format!("{cluster}-{}", short_uid(uid))
    } else {
        cluster.to_string()
    }
}

/// `spec.backup.retentionDays`: RDS's default and limit.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
pub const MAX_RETENTION_DAYS: u32 = 35;
/// `spec.backup.preferredWindow` (UTC).
pub const DEFAULT_BACKUP_WINDOW: &str = "03:00-03:30";
/// RDS's shortest backup window.
pub const MIN_BACKUP_WINDOW_MINUTES: u32 = 30;

/// A daily window `hh:mm-hh:mm` (UTC) as minutes of the day, start and end; the end may be
/// past midnight (smaller than the start). Errors say what is wrong.
pub fn parse_window(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a window; use hh:mm-hh:mm in UTC (like 03:00-03:30)");
    parse_span(s, 24 * 60, "a backup window", bad, hh_mm)
}

/// `hh:mm` as minutes of the day.
fn hh_mm(t: &str) -> Option<u32> {
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `start-end`, each read by `minutes`, on a cycle of `cycle` minutes (the end may wrap), at
/// least [`MIN_BACKUP_WINDOW_MINUTES`] long. `what` names the window in the error.
fn parse_span(
    s: &str,
    cycle: u32,
    what: &str,
    bad: impl Fn() -> String,
    minutes: impl Fn(&str) -> Option<u32>,
) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').ok_or_else(&bad)?;
    let (start, end) = (minutes(a).ok_or_else(&bad)?, minutes(b).ok_or_else(&bad)?);
    let length = (end + cycle - start) % cycle;
    if length < MIN_BACKUP_WINDOW_MINUTES {
        return Err(format!(
            "{s:?} is {length} minutes long; {what} is at least {MIN_BACKUP_WINDOW_MINUTES} minutes"
        ));
    }
    Ok((start, end))
}

/// `spec.maintenance.preferredWindow` (UTC).
pub const DEFAULT_MAINTENANCE_WINDOW: &str = "sun:05:00-sun:05:30";
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const WEEK_MINUTES: u32 = 7 * 24 * 60;

/// A weekly window `ddd:hh:mm-ddd:hh:mm` (UTC) as minutes of the week from Monday 00:00,
/// start and end (the end may wrap past Sunday). Errors say what is wrong.
pub fn parse_weekly_window(s: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "{s:?} is not a weekly window; use ddd:hh:mm-ddd:hh:mm in UTC (like sun:05:00-sun:05:30)"
        )
    };
    let minutes = |t: &str| -> Option<u32> {
        let (day, hm) = t.split_once(':')?;
        let d = WEEKDAYS.iter().position(|w| day.eq_ignore_ascii_case(w))? as u32;
        Some(d * 24 * 60 + hh_mm(hm)?)
    };
    parse_span(s, WEEK_MINUTES, "a maintenance window", bad, minutes)
}

/// The start (seconds since the epoch) of the most recent weekly window at or before `now`,
/// and whether `now` is in it. A window that does not read is the default's.
pub fn weekly_window_at(window: &str, now: i64) -> (i64, bool) {
    let (start, end) = parse_weekly_window(window)
        .or_else(|_| parse_weekly_window(DEFAULT_MAINTENANCE_WINDOW))
        .unwrap_or((6 * 24 * 60 + 300, 6 * 24 * 60 + 330));
    let week = i64::from(WEEK_MINUTES) * 60;
    let length = i64::from((end + WEEK_MINUTES - start) % WEEK_MINUTES) * 60;
    // 1970-01-01 was a Thursday: Monday 00:00 before it is 3 days earlier.
    let monday = now - (now + 3 * 86_400).rem_euclid(week);
    let mut opens = monday + i64::from(start) * 60;
    if opens > now {
        opens -= week;
    }
    (opens, now < opens + length)
}

/// The first 8 characters of a uid: enough to tell two objects of one name apart in a path.
fn short_uid(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

/// A cluster's WAL archive, relative to the agents' backup directory: `wal/<cluster>-<uid8>`
/// (a later cluster of the same name archives elsewhere).
pub fn wal_archive_path(cluster: &str, uid: &str) -> String {
    format!("wal/{cluster}-{}", short_uid(uid))
}

/// A snapshot's directory, relative to the agents' backup directory.
pub fn snapshot_path(snapshot: &str, uid: &str) -> String {
    format!("snapshots/{snapshot}-{}", short_uid(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_windows_are_weekly() {
        assert_eq!(parse_weekly_window("sun:05:00-sun:05:30"), Ok((8940, 8970)));
        assert_eq!(parse_weekly_window("Sun:23:45-mon:00:30"), Ok((10065, 30)));
        assert!(
            parse_weekly_window("sun:05:00-sun:05:10")
                .unwrap_err()
                .contains("at least 30")
        );
        assert!(
            parse_weekly_window("sunday:05:00-sun:06:00")
                .unwrap_err()
                .contains("ddd:hh:mm")
        );
        // 2026-11-29 was a Sunday: 05:10 UTC is in its window, opened at 05:00.
        let sunday_0510 = 1_795_910_400 + 5 * 3600 + 600;
        let (opens, open) = weekly_window_at("sun:05:00-sun:05:30", sunday_0510);
        assert_eq!((opens, open), (sunday_0510 - 600, true));
        // Two hours later: the same window, closed.
        assert_eq!(
            weekly_window_at("sun:05:00-sun:05:30", sunday_0510 + 7200),
            (sunday_0510 - 600, false)
        );
        // The Saturday before: last week's.
        assert_eq!(
            weekly_window_at("sun:05:00-sun:05:30", sunday_0510 - 86_400),
            (sunday_0510 - 600 - 7 * 86_400, false)
        );
    }

    #[test]
    fn backtrack_requests_carry_a_time_and_a_request_id() {
        let t = pbjson_types::Timestamp {
            seconds: 1_795_773_600,
            nanos: 250_000_000,
        };
        let value = backtrack_request(&t, "20261127T100000-ab12");
        assert_eq!(
            parse_backtrack_request(&value),
            Ok((t, "20261127T100000-ab12"))
        );
        // An offset is read as the instant it names.
        let (at, id) = parse_backtrack_request("2026-11-27T19:00:00+09:00@x").unwrap();
        assert_eq!((at.seconds, id), (1_795_773_600, "x"));
        assert!(
            parse_backtrack_request("2026-11-27T10:00:00Z")
                .unwrap_err()
                .contains("<RFC 3339 time>@<request id>")
        );
        assert!(
            parse_backtrack_request("yesterday@x")
                .unwrap_err()
                .contains("not an RFC 3339 time")
        );
        assert!(
            parse_backtrack_request("2026-11-27T10:00:00Z@")
                .unwrap_err()
                .contains("no request id")
        );
    }

    #[test]
    fn backup_windows_are_read_as_minutes_of_the_day() {
        assert_eq!(parse_window("03:00-03:30"), Ok((180, 210)));
        assert_eq!(parse_window("23:45-00:30"), Ok((1425, 30)));
        assert!(
            parse_window("03:00-03:10")
                .unwrap_err()
                .contains("at least 30")
        );
        assert!(
            parse_window("3:00-03:30")
                .unwrap_err()
                .contains("hh:mm-hh:mm")
        );
        assert!(parse_window("25:00-26:00").is_err());
        assert!(parse_window("nope").is_err());
    }

    #[test]
    fn lsns_read_and_print_as_postgres_does() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x3000148));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1a << 32) | 0xff));
        assert_eq!(format_lsn((0x1a << 32) | 0xff), "1A/FF");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("0/1FFFFFFFF"), None);
    }

    #[test]
    fn managed_parameters_match_by_name_or_prefix() {
        for name in [
            "port",
            "ssl",
            "ssl_cert_file",
            "recovery_target_time",
            "Wal_Level",
        ] {
            assert!(is_managed_parameter(name), "{name}");
        }
        for name in ["work_mem", "max_connections", "ports", "shared_buffers"] {
            assert!(!is_managed_parameter(name), "{name}");
        }
    }

    #[test]
    fn a_cluster_is_pending_reboot_when_any_member_is() {
        assert_eq!(sum_parameter_apply_status([]), PARAMS_IN_SYNC);
        assert_eq!(
            sum_parameter_apply_status([PARAMS_IN_SYNC, PARAMS_APPLYING]),
            PARAMS_APPLYING
        );
        assert_eq!(
            sum_parameter_apply_status([PARAMS_INVALID, PARAMS_PENDING_REBOOT, PARAMS_IN_SYNC]),
            PARAMS_PENDING_REBOOT
        );
        // A member that has not reported yet counts as in-sync only with the others.
        assert_eq!(
            sum_parameter_apply_status(["", PARAMS_IN_SYNC]),
            PARAMS_IN_SYNC
        );
    }

    #[test]
    fn the_agent_fences_before_the_controller_gives_up() {
        for s in 1..=60 {
            let lease = Duration::from_secs(s);
            assert!(self_fence_after(lease) + lease_renew_interval(lease) < lease);
        }
    }
}
