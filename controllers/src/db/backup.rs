//! Backups of a cluster, decided from what the store says (pure, like [`super::plan`]):
//! the daily automated snapshot in the backup window (the first one as soon as the cluster is
//! available), retention, which member's agent takes each snapshot, the restorable window in
//! the cluster's status, and where a cluster created from a `source` starts.
//!
//! ```text
//!  DBCluster spec.backup ──┐
//!  its DBSnapshots ────────┼─▶ plan ─▶ create automated / delete expired / assign a member
//!  members (state, WAL) ───┘           status: earliest / latest restorable, last backup
//! ```
//!
//! A backtrack's timeline gets an automated snapshot as soon as the backtrack completes.
//!
//! Snapshots are taken from a standby when one streams (the writer keeps its I/O for clients),
//! else from the writer. The agents archive WAL continuously (every member, `archive_mode =
//! always`), so a point in time between the oldest automated snapshot and the writer's newest
//! archived heartbeat can be restored.

use std::collections::BTreeMap;

use hanul_proto::db::{
    DEFAULT_BACKUP_WINDOW, DEFAULT_RETENTION_DAYS, MEMBER_WRITER, ROLE_REPLICA, ROLE_STANDBY,
    ROLE_WRITER, SNAPSHOT_AVAILABLE, SNAPSHOT_CREATING, SNAPSHOT_FAILED, STATE_AVAILABLE,
    parse_window, snapshot_path, wal_archive_path,
};
use hanul_proto::v1::{DbClusterSpec, DbClusterStatus, DbRestore};
use pbjson_types::Timestamp;

use super::plan::Member;

pub(crate) const DAY: i64 = 24 * 60 * 60;
/// A failed automated snapshot is not retried sooner than this.
const RETRY_FAILED: i64 = 5 * 60;

/// One DBSnapshot of the cluster, as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub automated: bool,
    pub phase: String,
    pub member: String,
    pub cluster_uid: String,
    pub deleting: bool,
    /// metadata.createdAt (seconds).
    pub created: i64,
    /// status.snapshotCreateTime, rounded up to the second, once available (a restore to a
    /// time before a snapshot was complete cannot start from it).
    pub complete: Option<i64>,
    pub path: String,
    /// The cluster's master user when it was taken.
    pub master_username: String,
    /// Its files are encrypted (status.encryptionKeySecret is set).
    pub encrypted: bool,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Create the automated snapshot `name`.
    Create { name: String },
    /// Delete an automated snapshot past retention.
    Delete { name: String },
    /// `member` (on `node`) takes snapshot `name`.
    Assign {
        name: String,
        member: String,
        node: String,
    },
}

pub struct Input<'a> {
    pub cluster: &'a str,
    pub uid: &'a str,
    pub spec: &'a DbClusterSpec,
    pub status: &'a DbClusterStatus,
    pub members: &'a BTreeMap<String, Member>,
    /// The cluster's snapshots (spec.dbCluster is its name), any type and phase.
    pub snapshots: &'a [Snapshot],
    /// Now, in seconds since the epoch.
    pub now: i64,
}

pub struct Plan {
    pub effects: Vec<Effect>,
    pub latest_restorable_time: Option<Timestamp>,
    pub earliest_restorable_time: Option<Timestamp>,
    pub last_backup_time: Option<Timestamp>,
    /// A snapshot of the cluster is being taken.
    pub backing_up: bool,
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// The spec's retention in days (its default when unset).
pub fn retention_days(spec: &DbClusterSpec) -> u32 {
    spec.backup
        .as_ref()
        .and_then(|b| b.retention_days)
        .unwrap_or(DEFAULT_RETENTION_DAYS)
}

/// The start of the most recent backup window at or before `now`, and whether `now` is in it.
pub fn window_at(window: &str, now: i64) -> (i64, bool) {
    let (start, end) = parse_window(window)
        .or_else(|_| parse_window(DEFAULT_BACKUP_WINDOW))
        .unwrap_or((180, 210));
    let length = i64::from((end + 24 * 60 - start) % (24 * 60)) * 60;
    let mut opens = now - now.rem_euclid(DAY) + i64::from(start) * 60;
    if opens > now {
        opens -= DAY;
    }
    (opens, now < opens + length)
}

/// An automated snapshot's name: `<cluster>-<yyyymmdd>-<hhmm>` (UTC).
pub fn automated_name(cluster: &str, now: i64) -> String {
    // 2026-11-27T03:05:00Z
    let t = hanul_proto::time::rfc3339(&ts(now));
    let digits: String = t.chars().filter(char::is_ascii_digit).take(12).collect();
    format!("{cluster}-{}-{}", &digits[..8], &digits[8..])
}

/// The member to take a snapshot from: a streaming synchronous standby, else a streaming read
/// replica, else the writer; each available in the cluster's epoch.
pub fn snapshot_source(
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
) -> Option<String> {
    let ok = |m: &Member| m.state == STATE_AVAILABLE && !m.deleting && m.epoch == status.epoch;
    let standby = |spec_role: &str| {
        members
            .iter()
            .find(|(n, m)| {
                ok(m)
                    && m.spec_role == spec_role
                    && m.streaming
                    && m.role == ROLE_STANDBY
                    && **n != status.writer
            })
            .map(|(n, _)| n.clone())
    };
    standby(ROLE_STANDBY)
        .or_else(|| standby(ROLE_REPLICA))
        .or_else(|| {
            members
                .get(&status.writer)
                .filter(|m| ok(m) && m.role == ROLE_WRITER)
                .map(|_| status.writer.clone())
        })
}

/// Whether a snapshot's member can no longer take it (gone, or down).
fn lost(s: &Snapshot, members: &BTreeMap<String, Member>) -> bool {
    members
        .get(&s.member)
        .is_none_or(|m| m.deleting || (m.role.is_empty() && m.state != STATE_AVAILABLE))
}

pub fn plan(input: &Input<'_>) -> Plan {
    let mut effects = Vec::new();
    let ours: Vec<&Snapshot> = input
        .snapshots
        .iter()
        .filter(|s| s.cluster_uid.is_empty() || s.cluster_uid == input.uid)
        .collect();
    let available_writer = !input.status.writer.is_empty()
        && input
            .members
            .get(&input.status.writer)
            .is_some_and(|m| m.state == STATE_AVAILABLE && m.epoch == input.status.epoch);

    // Assign every snapshot in progress to a member that can take it.
    for s in &ours {
        let pending = !s.deleting && (s.phase.is_empty() || s.phase == SNAPSHOT_CREATING);
        if !pending || (!s.member.is_empty() && !lost(s, input.members)) {
            continue;
        }
        if let Some(member) = snapshot_source(input.status, input.members)
            && member != s.member
        {
            let node = input.members[&member].node.clone();
            effects.push(Effect::Assign {
                name: s.name.clone(),
                member,
                node,
            });
        }
    }

    // Automated snapshots: the first as soon as the cluster is available, then daily in the
    // window; those older than the retention go (all of them with retention 0).
    let retention = retention_days(input.spec);
    let automated: Vec<&&Snapshot> = ours.iter().filter(|s| s.automated).collect();
    if retention > 0 && available_writer {
        let window = input
            .spec
            .backup
            .as_ref()
            .map_or(DEFAULT_BACKUP_WINDOW, |b| b.preferred_window.as_str());
        let (opens, open) = window_at(window, input.now);
        let usable = automated.iter().any(|s| s.phase != SNAPSHOT_FAILED);
        let newest = automated.iter().map(|s| s.created).max();
        // After a backtrack, at once too: until then a restore to a time after it starts
        // from a snapshot of before its target, and replays all the WAL since.
        let backtracked = input
            .status
            .last_backtrack_time
            .as_ref()
            .is_some_and(|b| newest.is_none_or(|t| t < b.seconds));
        let due = backtracked
            || match newest {
                None => true,
                Some(_) if !usable => newest.is_some_and(|t| input.now - t >= RETRY_FAILED),
                Some(t) => open && t < opens,
            };
        let name = automated_name(input.cluster, input.now);
        if due && !input.snapshots.iter().any(|s| s.name == name) {
            effects.push(Effect::Create { name });
        }
    }
    // The newest available one stays while retention is on, however old: it is where every
    // restore starts.
    for name in past_retention(automated.iter().map(|s| **s), retention, input.now, true) {
        effects.push(Effect::Delete { name });
    }

    let deleted: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Delete { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let kept = || {
        automated.iter().filter(|s| {
            s.phase == SNAPSHOT_AVAILABLE && !s.deleting && !deleted.contains(&s.name.as_str())
        })
    };
    let earliest = if retention > 0 {
        kept().filter_map(|s| s.complete).min()
    } else {
        None
    };
    let last_backup = kept().filter_map(|s| s.complete).max();
    // The newest archived time any member reported (the writer's; a former writer's is
    // older), never going back.
    let reported = input
        .members
        .values()
        .filter_map(|m| m.latest_restorable_time.as_ref())
        .map(|t| (t.seconds, t.nanos))
        .max();
    let before = input
        .status
        .latest_restorable_time
        .as_ref()
        .map(|t| (t.seconds, t.nanos));
    let latest = reported
        .max(before)
        .map(|(seconds, nanos)| Timestamp { seconds, nanos });
    Plan {
        effects,
        latest_restorable_time: latest,
        earliest_restorable_time: earliest.map(ts),
        last_backup_time: last_backup.map(ts),
        backing_up: ours
            .iter()
            .any(|s| !s.deleting && s.phase == SNAPSHOT_CREATING && !s.member.is_empty()),
    }
}

/// The automated snapshots (of one cluster) to delete at `now` with `retention` days: those
/// taken longer ago than that (all of them with 0), and failures older than a day. With
/// `keep_newest`, the newest available one stays however old (a live cluster's restores
/// start from it); the retained backups of a deleted cluster
/// ([`super::automated_backup`]) expire without it.
pub fn past_retention<'a>(
    automated: impl Iterator<Item = &'a Snapshot> + Clone,
    retention: u32,
    now: i64,
    keep_newest: bool,
) -> Vec<String> {
    let horizon = now - i64::from(retention) * DAY;
    let newest_available = automated
        .clone()
        .filter(|s| s.phase == SNAPSHOT_AVAILABLE)
        .filter_map(|s| s.complete)
        .max();
    let mut out = Vec::new();
    for s in automated {
        if s.deleting {
            continue;
        }
        let when = s.complete.unwrap_or(s.created);
        let newest =
            keep_newest && retention > 0 && s.complete.is_some() && s.complete == newest_available;
        let expired = retention == 0 || (when < horizon && !newest);
        let stale_failure = s.phase == SNAPSHOT_FAILED && now - s.created >= DAY;
        if (expired && s.phase != SNAPSHOT_CREATING) || stale_failure {
            out.push(s.name.clone());
        }
    }
    out
}

/// A source cluster of a point-in-time restore, as the controller sees it.
pub struct SourceCluster<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub status: &'a DbClusterStatus,
    /// Its snapshots.
    pub snapshots: &'a [Snapshot],
    pub master_username: &'a str,
    /// Its backups are encrypted (spec.backupEncrypted).
    pub backup_encrypted: bool,
}

fn seconds(t: &Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// Where a cluster with `spec.source` starts: the snapshot to copy and, for a point in time,
/// the source's WAL archive and the time. `snapshot` is the named DBSnapshot (for
/// `source.snapshot`); `cluster` the source cluster (for `source.cluster`), or the retained
/// automated backups of a deleted one (for `source.automatedBackup`: its name, uid, window,
/// timelines and snapshots, as the `DBClusterAutomatedBackup` records them). An error is a
/// message for the user; the cluster waits (the source may become restorable).
///
/// An encrypted source (a snapshot, a cluster or a record) is refused to a cluster that does
/// not encrypt its own backups: the agent would refuse it too, but only in its log.
pub fn resolve_restore(
    spec: &DbClusterSpec,
    snapshot: Option<&Snapshot>,
    cluster: Option<&SourceCluster<'_>>,
) -> DbRestore {
    let Some(source) = &spec.source else {
        return DbRestore::default();
    };
    let failed = |error: String| DbRestore {
        error,
        ..Default::default()
    };
    if !source.snapshot.is_empty() {
        return match snapshot {
            None => failed(format!("DB snapshot {} not found", source.snapshot)),
            Some(s) if s.phase != SNAPSHOT_AVAILABLE => failed(format!(
                "DB snapshot {} is not available (status {})",
                s.name,
                if s.phase.is_empty() {
                    "pending"
                } else {
                    &s.phase
                }
            )),
            Some(s)
                if !s.master_username.is_empty() && s.master_username != spec.master_username =>
            {
                failed(master_user_differs(
                    &s.master_username,
                    &format!("DB snapshot {}", s.name),
                ))
            }
            Some(s) if s.encrypted && !spec.backup_encrypted => {
                failed(plain_from_encrypted(&format!("DB snapshot {}", s.name)))
            }
            Some(s) => DbRestore {
                snapshot: s.name.clone(),
                snapshot_path: s.path.clone(),
                ..Default::default()
            },
        };
    }
    let record = (!source.automated_backup.is_empty()).then_some(source.automated_backup.as_str());
    let Some(c) = cluster else {
        return failed(match record {
            Some(r) => format!("DB cluster automated backup {r} not found"),
            None => format!("DB cluster {} not found", source.cluster),
        });
    };
    // How the source is named to the user.
    let what = match record {
        Some(r) => format!(
            "the retained automated backups {r} of DB cluster {}",
            c.name
        ),
        None => format!("DB cluster {}", c.name),
    };
    if c.master_username != spec.master_username {
        return failed(master_user_differs(c.master_username, &what));
    }
    if c.backup_encrypted && !spec.backup_encrypted {
        return failed(plain_from_encrypted(&what));
    }
    if source.clone {
        return clone_of(c);
    }
    let (Some(earliest), Some(latest)) = (
        c.status.earliest_restorable_time.as_ref(),
        c.status.latest_restorable_time.as_ref(),
    ) else {
        return failed(format!(
            "point-in-time restore of {what} is not available yet: it has no automated backup or no archived WAL"
        ));
    };
    let target = if source.use_latest_restorable_time {
        *latest
    } else {
        match &source.restore_time {
            Some(t) => *t,
            None => return failed("spec.source.restoreTime: required".into()),
        }
    };
    let show = |t: &Timestamp| hanul_proto::time::rfc3339(t);
    if seconds(&target) < seconds(earliest) {
        return failed(format!(
            "restore time {} is before the earliest restorable time of {what} ({})",
            show(&target),
            show(earliest)
        ));
    }
    if seconds(&target) > seconds(latest) {
        return failed(format!(
            "restore time {} is after the latest restorable time of {what} ({})",
            show(&target),
            show(latest)
        ));
    }
    // The newest automated snapshot complete by then whose data leads to it, and the timeline
    // live then (the source may have been backtracked: see [`super::backtrack`]).
    match super::backtrack::restore_point(c.name, c.uid, c.status, c.snapshots, seconds(&target)) {
        Err(error) => failed(error),
        Ok((s, timeline)) => DbRestore {
            snapshot: s.name.clone(),
            snapshot_path: s.path.clone(),
            wal_path: wal_archive_path(c.name, c.uid),
            target_time: Some(target),
            source_cluster: c.name.to_string(),
            timeline: timeline.unwrap_or(0),
            automated_backup: record.unwrap_or_default().to_string(),
            ..Default::default()
        },
    }
}

/// A clone copies a running member of the source: a standby when one is available (the
/// writer keeps its I/O for its clients), else the writer.
fn clone_of(c: &SourceCluster<'_>) -> DbRestore {
    let available = |m: &&hanul_proto::v1::DbClusterMember| {
        m.state == STATE_AVAILABLE && !m.address.is_empty() && !m.role.is_empty()
    };
    let members = || c.status.members.iter().filter(available);
    let from = members()
        .find(|m| m.role != MEMBER_WRITER)
        .or_else(|| members().find(|m| m.role == MEMBER_WRITER));
    match from {
        None => DbRestore {
            error: format!(
                "DB cluster {} has no available member to clone from",
                c.name
            ),
            ..Default::default()
        },
        Some(m) => DbRestore {
            source_cluster: c.name.to_string(),
            clone_member: m.name.clone(),
            clone_address: m.address.clone(),
            ..Default::default()
        },
    }
}

/// The restored data (and the WAL replayed into it) is encrypted: the new cluster must be too.
fn plain_from_encrypted(source: &str) -> String {
    format!(
        "{source} is encrypted: a cluster restored or cloned from it must encrypt its backups too \
         (set spec.backupEncrypted: true and spec.backupEncryptionKeySecret)"
    )
}

/// The restored data holds the source's master user: the new cluster must name it.
fn master_user_differs(user: &str, source: &str) -> String {
    format!(
        "spec.masterUsername must be {user:?}, the master user of {source} (a restored cluster keeps it)"
    )
}

/// The path of a new snapshot, for its status.
pub fn path_of(name: &str, uid: &str) -> String {
    snapshot_path(name, uid)
}

#[cfg(test)]
mod tests;
