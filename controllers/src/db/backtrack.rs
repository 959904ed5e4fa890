//! Backtrack (Aurora's BacktrackDBCluster): rewinding a cluster in place to a time in its
//! window, and going forward again. Pure, like [`super::plan`] and [`super::backup`]: which
//! timeline's history holds "the data as of wall time T", which automated snapshot can start a
//! restore to it, and whether a request can be carried out.
//!
//! ```text
//!  wall time ──────────────────────────────────────────────────────────────────▶
//!  TL1  ═════ t1 ═════ t2 ═════════ W1 (a backtrack to t1 starts)
//!  TL2         ╚═════════════════════════════════ W2 (a backtrack to t2 starts)
//!  TL3                  ╚══════════════════════════════════════════════════════
//! ```
//!
//! The data as of T is, for T < W1, TL1's history up to T; for W1 ≤ T < W2, TL1's up to t1
//! then TL2's up to T; for T ≥ W2, TL1's up to t2 then TL3's up to T. A restore to T follows
//! the timeline live at T, named explicitly (`recovery_target_timeline`): 'latest' would
//! follow TL3 for a time between t1 and W1 and miss what TL1 committed then. A failover's
//! timeline continues the one before it, so the timeline followed is the newest one of the
//! stretch live at T (up to the next backtrack).
//!
//! A snapshot complete at B starts a restore to T only if its data is a prefix of the data
//! as of T: B is in T's chain above (a snapshot of TL1 taken between t1 and W1 starts no
//! restore to a time after W1, but does one before W1) and no backtrack started while it was
//! taken (its files would be the old history's).

use hanul_proto::db::{SNAPSHOT_AVAILABLE, parse_backtrack_request, wal_archive_path};
use hanul_proto::time::rfc3339;
use hanul_proto::v1::{DbBacktrack, DbClusterSpec, DbClusterStatus, DbTimeline};
use pbjson_types::Timestamp;

use super::backup::{Snapshot, retention_days};

/// A time in seconds since the epoch, with its fraction.
pub fn secs(t: &Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn ts(t: f64) -> Timestamp {
    let seconds = t.floor();
    Timestamp {
        seconds: seconds as i64,
        nanos: (((t - seconds) * 1e9) as i32).clamp(0, 999_999_999),
    }
}

fn since(t: &DbTimeline) -> f64 {
    t.since.as_ref().map_or(f64::NEG_INFINITY, secs)
}

/// The timelines (indexes) of the stretch of history live at wall time `t`: from the last
/// backtrack's timeline started at or before `t` (else the first) up to the next backtrack's.
fn stretch(timelines: &[DbTimeline], t: f64) -> Option<std::ops::Range<usize>> {
    if timelines.is_empty() {
        return None;
    }
    let start = timelines
        .iter()
        .rposition(|x| x.backtracked_to.is_some() && since(x) <= t)
        .unwrap_or(0);
    let end = timelines[start + 1..]
        .iter()
        .position(|x| x.backtracked_to.is_some())
        .map_or(timelines.len(), |i| start + 1 + i);
    Some(start..end)
}

/// The timeline to follow to restore the data as of wall time `t`: the newest of the stretch
/// live at `t` (a failover's timeline holds its parent's history). None without timelines.
pub fn timeline_at(timelines: &[DbTimeline], t: f64) -> Option<u32> {
    // 0: a backtrack's timeline not reported yet (its writer stopped right after it).
    let r = stretch(timelines, t)?;
    timelines[r]
        .iter()
        .rev()
        .map(|x| x.timeline)
        .find(|&x| x > 0)
}

/// How far the archived WAL of the history live at `t` reaches, when a backtrack replaced
/// that history (None while it is the live one).
pub fn archived_until(timelines: &[DbTimeline], t: f64) -> Option<f64> {
    let r = stretch(timelines, t)?;
    timelines[r.end - 1].archived_until.as_ref().map(secs)
}

/// Whether the data as of wall time `b` is a prefix of the data as of wall time `t`: `b` is
/// in the chain of `t` (see the module doc).
pub fn is_prefix(timelines: &[DbTimeline], b: f64, t: f64) -> bool {
    let mut cur = t;
    loop {
        if b > cur {
            return false;
        }
        let Some(x) = timelines
            .iter()
            .rfind(|x| x.backtracked_to.is_some() && since(x) <= cur)
        else {
            return true;
        };
        if b >= since(x) {
            return true;
        }
        let to = x.backtracked_to.as_ref().map_or(f64::NEG_INFINITY, secs);
        // A backtrack goes back in time; a status saying otherwise proves nothing.
        if to >= cur {
            return false;
        }
        cur = to;
    }
}

/// The automated snapshot to restore the data as of `t` from: the newest available one of
/// the cluster (`uid`) complete by `t` whose data is a prefix of it.
pub fn base_snapshot<'a>(
    snapshots: &'a [Snapshot],
    uid: &str,
    timelines: &[DbTimeline],
    t: f64,
) -> Option<&'a Snapshot> {
    snapshots
        .iter()
        .filter(|s| {
            s.automated && !s.deleting && s.phase == SNAPSHOT_AVAILABLE && s.cluster_uid == uid
        })
        .filter(|s| {
            let Some(complete) = s.complete.map(|c| c as f64) else {
                return false;
            };
            let created = s.created as f64;
            let backtracked_meanwhile = timelines
                .iter()
                .any(|x| x.backtracked_to.is_some() && since(x) > created && since(x) <= complete);
            complete <= t && !backtracked_meanwhile && is_prefix(timelines, complete, t)
        })
        .max_by_key(|s| s.complete)
}

/// Where a restore to `t` starts: the base snapshot and the timeline to follow (None: the
/// cluster records no timeline, as before backtracking existed: the newest). An error is for
/// the user.
pub fn restore_point<'a>(
    cluster: &str,
    uid: &str,
    status: &DbClusterStatus,
    snapshots: &'a [Snapshot],
    t: f64,
) -> Result<(&'a Snapshot, Option<u32>), String> {
    let timelines = &status.timelines;
    let show = |t: f64| rfc3339(&ts(t));
    if let Some(until) = archived_until(timelines, t)
        && t > until
    {
        return Err(format!(
            "{} is in a history of DB cluster {cluster} that a later backtrack replaced; its WAL \
             was archived only up to {}",
            show(t),
            show(until)
        ));
    }
    let base = base_snapshot(snapshots, uid, timelines, t).ok_or_else(|| {
        format!(
            "no automated snapshot of DB cluster {cluster} complete by {} holds data that leads \
             to it",
            show(t)
        )
    })?;
    Ok((base, timeline_at(timelines, t)))
}

/// The oldest time a backtrack can go to at `now` (seconds): the later of `now` minus the
/// window and the earliest restorable time. None while backtracking is off or the cluster has
/// no automated backup yet.
pub fn earliest_backtrack_time(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    now: f64,
) -> Option<f64> {
    if spec.backtrack_window == 0 || retention_days(spec) == 0 {
        return None;
    }
    let earliest = secs(status.earliest_restorable_time.as_ref()?);
    Some((now - f64::from(spec.backtrack_window)).max(earliest))
}

/// `status.earliestBacktrackTime`: [`earliest_backtrack_time`] rounded up to the minute, so
/// that the status changes once a minute rather than on every pass (the controller checks
/// each request against the exact time).
pub fn earliest_backtrack_status(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    now: f64,
) -> Option<Timestamp> {
    let exact = earliest_backtrack_time(spec, status, now)?;
    let earliest = status.earliest_restorable_time.as_ref().map_or(0.0, secs);
    let minute = (exact / 60.0).ceil() * 60.0;
    Some(ts(if exact <= earliest { exact } else { minute }))
}

/// What the controller knows to decide on a request.
pub struct Input<'a> {
    pub cluster: &'a str,
    pub uid: &'a str,
    pub spec: &'a DbClusterSpec,
    pub status: &'a DbClusterStatus,
    /// The cluster's snapshots.
    pub snapshots: &'a [Snapshot],
    /// The annotation's value.
    pub request: &'a str,
    /// Now, in seconds since the epoch.
    pub now: f64,
}

/// The backtrack a request asks for (its epoch and start time are the planner's to set), or
/// why it cannot be done, in words for the user.
pub fn resolve(i: &Input<'_>) -> Result<DbBacktrack, String> {
    let c = i.cluster;
    if i.spec.backtrack_window == 0 {
        return Err(format!(
            "backtracking is off for DB cluster {c}: spec.backtrackWindow is 0 (set it to the \
             window in seconds, 1..{})",
            hanul_proto::db::MAX_BACKTRACK_WINDOW_SECONDS
        ));
    }
    let (to, _) = parse_backtrack_request(i.request)?;
    let t = secs(&to);
    let show = |t: f64| rfc3339(&ts(t));
    if t > i.now {
        return Err(format!(
            "backtrack time {} is in the future (now {})",
            rfc3339(&to),
            show(i.now)
        ));
    }
    let Some(earliest) = earliest_backtrack_time(i.spec, i.status, i.now) else {
        return Err(format!(
            "DB cluster {c} has no automated backup yet to backtrack from"
        ));
    };
    if t < earliest {
        return Err(format!(
            "backtrack time {} is before the earliest backtrack time of DB cluster {c} ({}: \
             the later of now - spec.backtrackWindow ({} s) and the earliest restorable time)",
            rfc3339(&to),
            show(earliest),
            i.spec.backtrack_window
        ));
    }
    let Some(latest) = i.status.latest_restorable_time.as_ref().map(secs) else {
        return Err(format!("DB cluster {c} has no archived WAL yet"));
    };
    if t > latest {
        return Err(format!(
            "backtrack time {} is after the latest restorable time of DB cluster {c} ({}): \
             its WAL is archived up to then",
            rfc3339(&to),
            show(latest)
        ));
    }
    let (base, timeline) = restore_point(c, i.uid, i.status, i.snapshots, t)?;
    let Some(timeline) = timeline else {
        return Err(format!("DB cluster {c} has no known timeline yet"));
    };
    Ok(DbBacktrack {
        target_time: Some(to),
        snapshot: base.name.clone(),
        snapshot_path: base.path.clone(),
        wal_path: wal_archive_path(c, i.uid),
        timeline,
        request: i.request.to_owned(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
