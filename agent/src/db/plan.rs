//! What one member does next: a pure function of what the store says (the member, its cluster,
//! the other members) and what the node knows (the data directory, the process, what it last
//! acted on). The executor ([`super::member`]) gathers, calls [`decide`], runs the one step,
//! and asks again. The rules are those of the protocol in [`hanul_proto::db`].
//!
//! ```text
//!  (nothing)  ──named writer, nobody holds data──▶ Bootstrap ─▶ writer(E)
//!  (nothing)  ──writer(E) available──────────────▶ Clone ─────▶ standby(E)
//!  writer(E)  ──renew every lease/6; no renewal for 2/3 lease──▶ Fence (stopped, never restarted)
//!  writer(E)  ──PostgreSQL exited──▶ ReportFailed ──named again at E' > E──▶ RecoverInPlace ─▶ writer(E')
//!  writer(E)  ──switchover from me──▶ StepDown (fast) ──▶ stopped
//!  writer(E)  ──another writer at E' > E──▶ StopToRejoin ─▶ Rejoin (rewind) ─▶ standby(E')
//!                                                         └─ failed ─▶ Clone (rebuild)
//!  standby(E) ──failover.epoch > my vote──▶ Vote (detach, report the WAL it holds)
//!  standby(E) ──named writer at E' > E──▶ Promote ─▶ writer(E')
//!  standby(E) ──voted for E', writer(E') available──▶ Repoint ─▶ standby(E')
//!  standby(E) ──same writer rebooted at E', static parameters pending──▶ RestartStandby ─▶ standby(E')
//!  standby(E) ──another writer at E', not voted──▶ StopToRejoin ─▶ Rejoin ─▶ standby(E')
//!  standby(E) ──PostgreSQL exited──▶ StartStandby
//!  writer(E)  ──backtrack named at E' > E──▶ Backtrack (stop, data aside, restore, promote) ─▶ writer(E')
//!            └─ cancel asked, not restored yet──▶ CancelBacktrack (stop, data back) ─▶ stopped ─▶ RecoverInPlace(E'')
//!  any(E)     ──a backtrack at E' > E, another writer──▶ StopToRejoin ─▶ Clone (rebuild) ─▶ standby(E'')
//! ```
//!
//! Safety rules (tested below): PostgreSQL starts or is promoted as a writer only when the
//! cluster names this member writer in an epoch newer than the one it acted on (or at first
//! boot, when no member holds data); a writer whose PostgreSQL exited is not restarted until
//! then; a vote is cast once per epoch; a member that followed or ran as writer in an older
//! epoch rewinds (or is rebuilt) before it follows the new writer, unless it voted for it.

use std::time::Duration;

use hanul_db::Observation;
use hanul_proto::db::{
    DEFAULT_LEASE_SECONDS, DURABILITY_PREFERRED, MULTI_AZ_CLUSTER, REASON_SWITCHOVER, ROLE_REPLICA,
    ROLE_WRITER, STATE_AVAILABLE, STATE_FAILED, STATE_FENCED, STATE_STOPPED, lease_renew_interval,
    self_fence_after,
};
use hanul_proto::v1::{DbClusterSpec, DbClusterStatus, DbInstanceSpec, DbInstanceStatus};
use serde::{Deserialize, Serialize};

/// What the node remembers about a member, in `member.json` beside its data directory: the
/// status in the store may be stale or lost, this is what PostgreSQL was last made to be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Local {
    /// Its PostgreSQL port on this node, chosen once.
    pub port: u16,
    /// The epoch it last acted on (promoted or started as writer in, or followed the writer of).
    pub epoch: u64,
    /// What its PostgreSQL was made in that epoch: `writer`, `standby`, or "" (nothing yet).
    pub role: String,
    /// A standby's upstream: the member's name and `host:port`.
    pub upstream: String,
    pub upstream_address: String,
    /// It stopped streaming for a vote (`primary_conninfo` is empty).
    pub detached: bool,
    /// The failover epoch it voted in last.
    pub voted: u64,
    /// The data directory must not be started as it is (a rewind or a clone did not finish):
    /// it is rebuilt from a base backup.
    pub unfit: bool,
    /// The epoch of the backtrack it cancelled: its data directory from before that backtrack
    /// is back in place (reported as `backtrackCancelled`).
    pub backtrack_cancelled: u64,
}

impl Local {
    /// Now a standby streaming from `writer`, the writer of `epoch`.
    pub fn follow(&mut self, writer: &Source, epoch: u64) {
        self.epoch = epoch;
        self.role = hanul_proto::db::ROLE_STANDBY.into();
        self.upstream = writer.name.clone();
        self.upstream_address = writer.address.clone();
        self.detached = false;
    }
}

/// What the node sees of the member.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The data directory holds a cluster.
    pub initialized: bool,
    /// Its postgres process runs.
    pub running: bool,
    /// What the running PostgreSQL answered; None when it does not run or did not answer.
    pub observed: Option<Observation>,
    pub local: Local,
    /// Since the writer's lease was last renewed successfully, and since the last attempt.
    pub since_renewal: Duration,
    pub since_attempt: Duration,
}

/// What the store says.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub name: &'a str,
    pub deleting: bool,
    pub spec: &'a DbInstanceSpec,
    pub status: &'a DbInstanceStatus,
    pub cluster: &'a DbClusterSpec,
    pub cluster_status: &'a DbClusterStatus,
    /// The cluster's other members.
    pub peers: &'a [(&'a str, &'a DbInstanceStatus)],
}

/// The writer that others clone from, rewind from and follow: a member reporting the role
/// writer at the cluster's epoch, available, with an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub address: String,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change now; the status is refreshed from what runs.
    Idle,
    /// Nothing can be done until something changes elsewhere; the reason goes to the status.
    Wait(String),
    /// The DBInstance is being deleted: stop, remove the files, drop the finalizer.
    Delete,
    /// First boot of the cluster's first writer: initdb, start, create the database.
    Bootstrap { epoch: u64 },
    /// A base backup of the writer (first boot, or `rebuild` of an unfit data directory).
    Clone {
        from: Source,
        epoch: u64,
        rebuild: bool,
    },
    /// Starts a standby whose PostgreSQL does not run.
    StartStandby,
    /// The writer's PostgreSQL exited: say so; it is not restarted.
    ReportFailed,
    /// The writer could not renew its lease in time: stop PostgreSQL at once.
    Fence,
    /// Renew the writer's lease (a status write).
    Renew,
    /// Set the writer's `synchronous_standby_names`.
    ApplySync { names: String },
    /// A planned switchover away from this writer: stop it `fast`.
    StepDown,
    /// Stop the writer cleanly (`fast`) for a reboot; it is started again in place next.
    Restart,
    /// Vote in the election of `epoch`: stop streaming, report the WAL held.
    Vote { epoch: u64 },
    /// Become the writer of `epoch` (promote a standby, or take the epoch as a running writer).
    Promote { epoch: u64 },
    /// A reboot (the same writer in a newer epoch) of a standby whose static parameters wait
    /// for a restart: stop it, start it again following the writer of `epoch`.
    RestartStandby { to: Source, epoch: u64 },
    /// Start a stopped former writer in place (crash recovery) as the writer of `epoch`.
    RecoverInPlace { epoch: u64 },
    /// A running standby streams from the writer of `epoch` from now on (by reload).
    Repoint { to: Source, epoch: u64 },
    /// Stop PostgreSQL: another member is writer in `epoch`, this one rejoins.
    StopToRejoin { epoch: u64 },
    /// Rewind the stopped member from the writer of `epoch` and start it as its standby.
    Rejoin { from: Source, epoch: u64 },
    /// Backtrack the writer in place to the cluster's `status.backtrack` of `epoch`: stop,
    /// move the data directory aside, restore the snapshot to the target on its timeline,
    /// promote, and only then remove the old directory.
    Backtrack { epoch: u64 },
    /// The backtrack of `epoch` was cancelled before this writer completed it: stop what an
    /// attempt left and put the data directory from before it back in place. The cluster then
    /// names it writer in a newer epoch, and it starts in place (`RecoverInPlace`).
    CancelBacktrack { epoch: u64 },
}

/// The epoch of the cluster's last backtrack (under way or done), 0 if none: a member that
/// acted in an older epoch holds the history it rewound, and is rebuilt.
pub fn backtrack_epoch(cs: &DbClusterStatus) -> u64 {
    cs.timelines
        .iter()
        .filter(|t| t.backtracked_to.is_some())
        .map(|t| t.epoch)
        .chain(cs.backtrack.as_ref().map(|b| b.epoch))
        .max()
        .unwrap_or(0)
}

/// The cluster's writer lease.
pub fn lease(cluster: &DbClusterSpec) -> Duration {
    let s = cluster
        .failover
        .as_ref()
        .and_then(|f| f.lease_seconds)
        .unwrap_or(DEFAULT_LEASE_SECONDS)
        .clamp(1, 60);
    Duration::from_secs(u64::from(s))
}

/// A standby name no member has: the writer of a cluster whose data durability is `required`
/// lists it while its synchronous set is empty, so that commits wait for a standby.
pub const NO_STANDBY_YET: &str = "hanul-awaiting-standby";

/// The `synchronous_standby_names` the writer of this epoch runs with: `ANY n (a, b)` for a
/// multi-AZ cluster, `FIRST n (a)` otherwise, '' when it has no synchronous standby. With
/// `dataDurability: preferred` it is '' while none of the listed standbys streams.
pub fn synchronous_standby_names(
    cluster: &DbClusterSpec,
    status: &DbClusterStatus,
    streaming: &[String],
) -> String {
    if status.sync_count == 0 {
        return String::new();
    }
    let preferred = cluster
        .replication
        .as_ref()
        .is_some_and(|r| r.data_durability == DURABILITY_PREFERRED);
    if preferred && !status.sync_standbys.iter().any(|s| streaming.contains(s)) {
        return String::new();
    }
    if status.sync_standbys.is_empty() {
        // `required` and no standby has joined the set yet: commits wait for one.
        return format!("ANY 1 (\"{NO_STANDBY_YET}\")");
    }
    let method = if cluster.deployment == MULTI_AZ_CLUSTER {
        "ANY"
    } else {
        "FIRST"
    };
    let names: Vec<String> = status
        .sync_standbys
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "")))
        .collect();
    format!("{method} {} ({})", status.sync_count, names.join(", "))
}

/// The member that the cluster names writer, if it reports being it at the cluster's epoch
/// and is available.
pub fn ready_writer(v: &View<'_>) -> Option<Source> {
    let cs = v.cluster_status;
    if cs.writer.is_empty() || cs.writer == v.name {
        return None;
    }
    v.peers
        .iter()
        .find(|(n, s)| {
            *n == cs.writer
                && s.role == ROLE_WRITER
                && s.epoch == cs.epoch
                && s.state == STATE_AVAILABLE
                && !s.address.is_empty()
        })
        .map(|(n, s)| Source {
            name: n.to_string(),
            address: s.address.clone(),
        })
}

/// The next step of one member; see the module doc.
pub fn decide(v: &View<'_>, f: &Facts) -> Step {
    if v.deleting {
        return Step::Delete;
    }
    let cs = v.cluster_status;
    let local = &f.local;
    let epoch = cs.epoch;
    let named = cs.writer == v.name && epoch > 0;
    let newer = epoch > local.epoch;

    // A backtrack of this writer: before anything else, as its data directory may be aside
    // (an attempt cut short), which must never read as "no data here".
    if let Some(b) = &cs.backtrack
        && named
        && b.epoch == epoch
        && newer
        && local.role == ROLE_WRITER
    {
        if b.cancel_requested_at.is_none() {
            return Step::Backtrack { epoch };
        }
        if local.backtrack_cancelled == epoch {
            return Step::Wait(
                "the backtrack was cancelled and the data from before it is back in place; \
                 waiting for the cluster to start it again as the writer"
                    .into(),
            );
        }
        return Step::CancelBacktrack { epoch };
    }
    // Any other member that acted before the cluster was backtracked holds the old history:
    // rebuilt from the rewound writer (a rewind would do, but a base backup is sure).
    if !named
        && !local.role.is_empty()
        && f.initialized
        && !local.unfit
        && local.epoch < backtrack_epoch(cs)
    {
        if f.running {
            return Step::StopToRejoin { epoch };
        }
        return match ready_writer(v) {
            Some(from) => Step::Clone {
                from,
                epoch,
                rebuild: true,
            },
            None => Step::Wait(format!(
                "the cluster was backtracked; waiting for the writer {:?} to be available in \
                 epoch {epoch} to rebuild from it",
                cs.writer
            )),
        };
    }

    if !f.initialized || local.role.is_empty() || local.unfit {
        return first_boot(v, f);
    }
    if local.role == ROLE_WRITER {
        writer(v, f, named, newer)
    } else {
        standby(v, f, named, newer)
    }
}

/// Nothing usable on this node yet: bootstrap (the first writer) or clone.
fn first_boot(v: &View<'_>, f: &Facts) -> Step {
    let cs = v.cluster_status;
    let local = &f.local;
    if f.running {
        // A clone or rewind that did not finish cannot run; neither can it be rebuilt while
        // its PostgreSQL runs.
        return Step::StopToRejoin { epoch: local.epoch };
    }
    let rebuild = f.initialized || local.unfit;
    if cs.writer == v.name && cs.epoch > 0 {
        let anyone_has_data = v
            .peers
            .iter()
            .any(|(_, s)| s.epoch > 0 || !s.role.is_empty());
        if local.epoch == 0 && v.status.epoch == 0 && !local.unfit && !anyone_has_data {
            return Step::Bootstrap { epoch: cs.epoch };
        }
        return Step::Wait(
            "named writer but this member holds no data; it cannot start as the writer".into(),
        );
    }
    match ready_writer(v) {
        Some(from) => Step::Clone {
            from,
            epoch: cs.epoch,
            rebuild,
        },
        None => Step::Wait(format!(
            "waiting for the writer {:?} to be available in epoch {}",
            cs.writer, cs.epoch
        )),
    }
}

/// PostgreSQL last ran as the writer of `local.epoch`.
fn writer(v: &View<'_>, f: &Facts, named: bool, newer: bool) -> Step {
    let cs = v.cluster_status;
    let local = &f.local;
    if newer {
        if named {
            let serving = f.observed.as_ref().is_some_and(|o| !o.in_recovery);
            return if f.running && serving {
                // Named again while it runs as the writer: a reboot. It stops cleanly and is
                // then started in place in the new epoch.
                Step::Restart
            } else if f.running {
                Step::Promote { epoch: cs.epoch }
            } else {
                Step::RecoverInPlace { epoch: cs.epoch }
            };
        }
        if f.running {
            return Step::StopToRejoin { epoch: cs.epoch };
        }
        return match ready_writer(v) {
            Some(from) => Step::Rejoin {
                from,
                epoch: cs.epoch,
            },
            None => Step::Wait(format!(
                "another member is writer in epoch {}; waiting for it to be available",
                cs.epoch
            )),
        };
    }
    if !f.running {
        // Never restarted: a standby may be promoted in its place (or the cluster restarts
        // it in place at a newer epoch).
        return if [STATE_FAILED, STATE_FENCED, STATE_STOPPED].contains(&v.status.state.as_str()) {
            Step::Idle
        } else {
            Step::ReportFailed
        };
    }
    let lease = lease(v.cluster);
    if f.since_renewal >= self_fence_after(lease) {
        return Step::Fence;
    }
    let current = cs.epoch == local.epoch && named;
    if let Some(fo) = &cs.failover
        && fo.from == v.name
        && fo.epoch > local.epoch
        && cs.epoch == local.epoch
    {
        // Being replaced: a switchover's writer shuts down cleanly; one taken for failed or
        // lost (its agent back after the controller gave it up) stops at once, so that the
        // standbys it can no longer reach are not waited for and the election can finish.
        return if fo.reason == REASON_SWITCHOVER {
            Step::StepDown
        } else {
            Step::Fence
        };
    }
    if let Some(o) = &f.observed {
        if current && o.in_recovery {
            // Persisted as writer of this epoch but the promotion did not finish.
            return Step::Promote { epoch: cs.epoch };
        }
        if current && !o.in_recovery {
            let names = synchronous_standby_names(v.cluster, cs, &o.streaming_standbys);
            if names != o.synchronous_standby_names {
                return Step::ApplySync { names };
            }
        }
    }
    if f.since_attempt >= lease_renew_interval(lease) {
        return Step::Renew;
    }
    Step::Idle
}

/// PostgreSQL last ran as a standby following the writer of `local.epoch`.
fn standby(v: &View<'_>, f: &Facts, named: bool, newer: bool) -> Step {
    let cs = v.cluster_status;
    let local = &f.local;
    let in_recovery = f.observed.as_ref().is_some_and(|o| o.in_recovery);
    if let Some(fo) = &cs.failover {
        let voted = local
            .voted
            .max(v.status.vote.as_ref().map_or(0, |v| v.epoch));
        if fo.epoch > voted
            && fo.epoch > local.epoch
            && fo.from != v.name
            && v.spec.role != ROLE_REPLICA
            && f.running
            && in_recovery
        {
            // A switchover's standbys stay on until the old writer has shut down: its fast
            // shutdown sends them all of its WAL, so the target has as much as anyone.
            let old_writer_down = v
                .peers
                .iter()
                .find(|(n, _)| *n == fo.from)
                .is_none_or(|(_, s)| s.role.is_empty());
            if fo.reason == REASON_SWITCHOVER && !old_writer_down {
                return Step::Wait(format!(
                    "waiting for {} to shut down for the switchover",
                    fo.from
                ));
            }
            return Step::Vote { epoch: fo.epoch };
        }
    }
    if !f.running {
        // Restarted as the standby it was (even when named writer: it is promoted once it
        // runs); it follows a new writer after a rewind.
        if newer && !named {
            return match ready_writer(v) {
                Some(from) => Step::Rejoin {
                    from,
                    epoch: cs.epoch,
                },
                None => Step::Wait(format!(
                    "waiting for the writer of epoch {} to be available",
                    cs.epoch
                )),
            };
        }
        return Step::StartStandby;
    }
    if newer {
        if named {
            return Step::Promote { epoch: cs.epoch };
        }
        // Voted in this election (its WAL stopped at most where the winner's is), or the same
        // writer as before (restarted in place: its WAL holds all this one received).
        let follows = local.voted == cs.epoch || cs.writer == local.upstream;
        if follows && in_recovery {
            // The same writer in a newer epoch is a reboot: like RDS's, it restarts the
            // members whose static parameters wait for one, the standbys too.
            let pending = f
                .observed
                .as_ref()
                .is_some_and(|o| !o.pending_restart.is_empty());
            return match ready_writer(v) {
                Some(to) if pending && cs.writer == local.upstream => Step::RestartStandby {
                    to,
                    epoch: cs.epoch,
                },
                Some(to) => Step::Repoint {
                    to,
                    epoch: cs.epoch,
                },
                None => Step::Wait(format!(
                    "voted; waiting for the writer of epoch {} to be available",
                    cs.epoch
                )),
            };
        }
        return Step::StopToRejoin { epoch: cs.epoch };
    }
    if local.detached
        && cs.failover.is_none()
        && cs.epoch == local.epoch
        && cs.writer == local.upstream
        && let Some(to) = ready_writer(v)
    {
        // The election was called off: stream from the same writer again.
        return Step::Repoint {
            to,
            epoch: cs.epoch,
        };
    }
    Step::Idle
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::db::{REASON_WRITER_FAILED, REASON_WRITER_LOST, ROLE_STANDBY, STATE_CREATING};
    use hanul_proto::v1::{DbFailover, DbVote, FailoverSettings, Replication};

    struct World {
        spec: DbInstanceSpec,
        status: DbInstanceStatus,
        cluster: DbClusterSpec,
        cs: DbClusterStatus,
        peers: Vec<(String, DbInstanceStatus)>,
        deleting: bool,
    }

    fn world(writer: &str, epoch: u64) -> World {
        World {
            spec: DbInstanceSpec {
                cluster: "db".into(),
                role: ROLE_STANDBY.into(),
                ..Default::default()
            },
            status: DbInstanceStatus::default(),
            cluster: DbClusterSpec {
                deployment: MULTI_AZ_CLUSTER.into(),
                failover: Some(FailoverSettings {
                    automatic: Some(true),
                    lease_seconds: Some(3),
                }),
                ..Default::default()
            },
            cs: DbClusterStatus {
                epoch,
                writer: writer.into(),
                ..Default::default()
            },
            peers: vec![],
            deleting: false,
        }
    }

    fn writer_status(epoch: u64) -> DbInstanceStatus {
        DbInstanceStatus {
            state: STATE_AVAILABLE.into(),
            role: ROLE_WRITER.into(),
            epoch,
            address: "10.0.0.2:30001".into(),
            ..Default::default()
        }
    }

    fn decide_as(me: &str, w: &World, f: &Facts) -> Step {
        let peers: Vec<(&str, &DbInstanceStatus)> =
            w.peers.iter().map(|(n, s)| (n.as_str(), s)).collect();
        decide(
            &View {
                name: me,
                deleting: w.deleting,
                spec: &w.spec,
                status: &w.status,
                cluster: &w.cluster,
                cluster_status: &w.cs,
                peers: &peers,
            },
            f,
        )
    }

    fn local(role: &str, epoch: u64) -> Local {
        Local {
            port: 30001,
            epoch,
            role: role.into(),
            upstream: if role == ROLE_STANDBY {
                "db-1".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    fn observed(in_recovery: bool) -> Option<Observation> {
        Some(Observation {
            in_recovery,
            timeline: 1,
            ..Default::default()
        })
    }

    fn running_writer(epoch: u64) -> Facts {
        Facts {
            initialized: true,
            running: true,
            observed: observed(false),
            local: local(ROLE_WRITER, epoch),
            ..Default::default()
        }
    }

    fn running_standby(epoch: u64) -> Facts {
        Facts {
            initialized: true,
            running: true,
            observed: observed(true),
            local: local(ROLE_STANDBY, epoch),
            ..Default::default()
        }
    }

    fn source(name: &str) -> Source {
        Source {
            name: name.into(),
            address: "10.0.0.2:30001".into(),
        }
    }

    #[test]
    fn the_first_writer_bootstraps_only_when_nobody_holds_data() {
        let mut w = world("db-1", 1);
        w.peers.push(("db-2".into(), DbInstanceStatus::default()));
        let fresh = Facts::default();
        assert_eq!(decide_as("db-1", &w, &fresh), Step::Bootstrap { epoch: 1 });
        // A peer that holds data: bootstrapping would start an empty writer beside it.
        w.peers[0].1 = DbInstanceStatus {
            epoch: 1,
            role: ROLE_STANDBY.into(),
            ..Default::default()
        };
        assert!(matches!(decide_as("db-1", &w, &fresh), Step::Wait(_)));
        // Its own status says it held data once (its directory was lost).
        w.peers.clear();
        w.status.epoch = 3;
        assert!(matches!(decide_as("db-1", &w, &fresh), Step::Wait(_)));
    }

    #[test]
    fn a_standby_clones_once_the_writer_reports_the_epoch_and_is_available() {
        let mut w = world("db-1", 2);
        w.peers.push(("db-1".into(), writer_status(1)));
        let fresh = Facts::default();
        assert!(matches!(decide_as("db-2", &w, &fresh), Step::Wait(_)));
        w.peers[0].1 = DbInstanceStatus {
            state: STATE_CREATING.into(),
            ..writer_status(2)
        };
        assert!(matches!(decide_as("db-2", &w, &fresh), Step::Wait(_)));
        w.peers[0].1 = writer_status(2);
        assert_eq!(
            decide_as("db-2", &w, &fresh),
            Step::Clone {
                from: source("db-1"),
                epoch: 2,
                rebuild: false
            }
        );
        // A clone cut short is redone from scratch.
        let cut = Facts {
            initialized: true,
            local: Local {
                unfit: true,
                ..Local::default()
            },
            ..Default::default()
        };
        assert_eq!(
            decide_as("db-2", &w, &cut),
            Step::Clone {
                from: source("db-1"),
                epoch: 2,
                rebuild: true
            }
        );
    }

    #[test]
    fn the_writer_renews_its_lease_and_fences_itself_when_it_cannot() {
        let w = world("db-1", 1);
        let mut f = running_writer(1);
        assert_eq!(decide_as("db-1", &w, &f), Step::Idle);
        f.since_attempt = Duration::from_millis(500);
        assert_eq!(decide_as("db-1", &w, &f), Step::Renew);
        f.since_renewal = Duration::from_millis(1999);
        assert_eq!(decide_as("db-1", &w, &f), Step::Renew);
        f.since_renewal = Duration::from_secs(2);
        assert_eq!(decide_as("db-1", &w, &f), Step::Fence);
    }

    #[test]
    fn a_writer_whose_postgres_exited_is_not_restarted_unless_a_newer_epoch_names_it() {
        let mut w = world("db-1", 4);
        let mut f = running_writer(4);
        f.running = false;
        f.observed = None;
        assert_eq!(decide_as("db-1", &w, &f), Step::ReportFailed);
        for state in [STATE_FAILED, STATE_FENCED, STATE_STOPPED] {
            w.status.state = state.into();
            assert_eq!(decide_as("db-1", &w, &f), Step::Idle, "{state}");
        }
        w.cs.epoch = 5;
        assert_eq!(decide_as("db-1", &w, &f), Step::RecoverInPlace { epoch: 5 });
    }

    #[test]
    fn a_former_writer_at_an_old_epoch_never_starts_as_writer() {
        let mut w = world("db-2", 5);
        w.peers.push(("db-2".into(), writer_status(4)));
        let mut f = running_writer(4);
        // Still running when it learns it lost: stop at once.
        assert_eq!(decide_as("db-1", &w, &f), Step::StopToRejoin { epoch: 5 });
        f.running = false;
        f.observed = None;
        // The new writer has not reported the epoch yet: wait, never start.
        assert!(matches!(decide_as("db-1", &w, &f), Step::Wait(_)));
        w.peers[0].1 = writer_status(5);
        assert_eq!(
            decide_as("db-1", &w, &f),
            Step::Rejoin {
                from: source("db-2"),
                epoch: 5
            }
        );
        // Whatever the state says, with the same epoch it stays down.
        w.cs.writer = "db-1".into();
        w.cs.epoch = 4;
        w.status.state = STATE_AVAILABLE.into();
        assert_eq!(decide_as("db-1", &w, &f), Step::ReportFailed);
    }

    #[test]
    fn the_writer_applies_the_synchronous_set_of_its_epoch() {
        let mut w = world("db-1", 1);
        w.cs.sync_standbys = vec!["db-2".into(), "db-3".into()];
        w.cs.sync_count = 1;
        let f = running_writer(1);
        assert_eq!(
            decide_as("db-1", &w, &f),
            Step::ApplySync {
                names: "ANY 1 (\"db-2\", \"db-3\")".into()
            }
        );
        // `required` with no standby in the set yet: commits wait for one.
        w.cs.sync_standbys.clear();
        assert_eq!(
            decide_as("db-1", &w, &f),
            Step::ApplySync {
                names: format!("ANY 1 (\"{NO_STANDBY_YET}\")")
            }
        );
        w.cluster.deployment = hanul_proto::db::MULTI_AZ_INSTANCE.into();
        w.cs.sync_standbys = vec!["db-2".into()];
        assert_eq!(
            decide_as("db-1", &w, &f),
            Step::ApplySync {
                names: "FIRST 1 (\"db-2\")".into()
            }
        );
        let mut applied = f.clone();
        applied.observed.as_mut().unwrap().synchronous_standby_names = "FIRST 1 (\"db-2\")".into();
        assert_eq!(decide_as("db-1", &w, &applied), Step::Idle);
        // Preferred durability: alone while no listed standby streams.
        w.cluster.replication = Some(Replication {
            data_durability: DURABILITY_PREFERRED.into(),
        });
        assert_eq!(
            decide_as("db-1", &w, &applied),
            Step::ApplySync {
                names: String::new()
            }
        );
        applied.observed.as_mut().unwrap().streaming_standbys = vec!["db-2".into()];
        assert_eq!(decide_as("db-1", &w, &applied), Step::Idle);
    }

    #[test]
    fn a_running_standby_votes_once_per_epoch() {
        let mut w = world("db-1", 1);
        w.cs.failover = Some(DbFailover {
            epoch: 2,
            from: "db-1".into(),
            reason: REASON_WRITER_FAILED.into(),
            ..Default::default()
        });
        let mut f = running_standby(1);
        assert_eq!(decide_as("db-2", &w, &f), Step::Vote { epoch: 2 });
        // Voted (as the store says, or as the node remembers).
        w.status.vote = Some(DbVote {
            epoch: 2,
            lsn: 100,
            timeline: 1,
        });
        assert_eq!(decide_as("db-2", &w, &f), Step::Idle);
        w.status.vote = None;
        f.local.voted = 2;
        f.local.detached = true;
        assert_eq!(decide_as("db-2", &w, &f), Step::Idle);
        // Read replicas and the writer being replaced do not vote.
        f.local.voted = 0;
        w.spec.role = ROLE_REPLICA.into();
        assert_eq!(decide_as("db-2", &w, &f), Step::Idle);
        w.spec.role = ROLE_STANDBY.into();
        // (The writer being replaced stops instead.)
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::Fence);
    }

    #[test]
    fn a_writer_named_again_while_it_serves_restarts_for_a_reboot() {
        let w = world("db-1", 2);
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::Restart);
        let mut down = running_writer(1);
        down.running = false;
        down.observed = None;
        assert_eq!(
            decide_as("db-1", &w, &down),
            Step::RecoverInPlace { epoch: 2 }
        );
    }

    #[test]
    fn a_writer_given_up_for_lost_stops_at_once_when_its_agent_sees_it() {
        let mut w = world("db-1", 1);
        w.cs.failover = Some(DbFailover {
            epoch: 2,
            from: "db-1".into(),
            reason: REASON_WRITER_LOST.into(),
            ..Default::default()
        });
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::Fence);
        w.cs.failover.as_mut().unwrap().reason = REASON_SWITCHOVER.into();
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::StepDown);
    }

    #[test]
    fn a_switchovers_standbys_vote_once_the_old_writer_has_shut_down() {
        let mut w = world("db-1", 1);
        w.cs.failover = Some(DbFailover {
            epoch: 2,
            from: "db-1".into(),
            reason: REASON_SWITCHOVER.into(),
            target: "db-2".into(),
            ..Default::default()
        });
        let writer = DbInstanceStatus {
            role: ROLE_WRITER.into(),
            epoch: 1,
            state: STATE_AVAILABLE.into(),
            ..Default::default()
        };
        w.peers = vec![("db-1".into(), writer)];
        let f = running_standby(1);
        assert!(matches!(decide_as("db-2", &w, &f), Step::Wait(_)));
        w.peers[0].1.role.clear();
        w.peers[0].1.state = STATE_STOPPED.into();
        assert_eq!(decide_as("db-2", &w, &f), Step::Vote { epoch: 2 });
    }

    #[test]
    fn a_standby_is_promoted_only_at_a_newer_epoch_naming_it() {
        let mut w = world("db-2", 1);
        let f = running_standby(1);
        // Named at the epoch it already follows: a stale or odd status, no promotion.
        assert_eq!(decide_as("db-2", &w, &f), Step::Idle);
        w.cs.epoch = 2;
        assert_eq!(decide_as("db-2", &w, &f), Step::Promote { epoch: 2 });
        // Not running yet: started as a standby first.
        let mut down = f.clone();
        down.running = false;
        down.observed = None;
        assert_eq!(decide_as("db-2", &w, &down), Step::StartStandby);
    }

    #[test]
    fn voters_repoint_to_the_new_writer_and_the_others_rejoin() {
        let mut w = world("db-2", 2);
        w.peers.push(("db-2".into(), writer_status(1)));
        let mut voter = running_standby(1);
        voter.local.voted = 2;
        voter.local.detached = true;
        assert!(matches!(decide_as("db-3", &w, &voter), Step::Wait(_)));
        w.peers[0].1 = writer_status(2);
        assert_eq!(
            decide_as("db-3", &w, &voter),
            Step::Repoint {
                to: source("db-2"),
                epoch: 2
            }
        );
        // A replica (or a standby that did not vote) stops, then rewinds.
        let other = running_standby(1);
        assert_eq!(
            decide_as("db-4", &w, &other),
            Step::StopToRejoin { epoch: 2 }
        );
        let mut stopped = other.clone();
        stopped.running = false;
        stopped.observed = None;
        assert_eq!(
            decide_as("db-4", &w, &stopped),
            Step::Rejoin {
                from: source("db-2"),
                epoch: 2
            }
        );
        // The same writer restarted in place at a newer epoch: follow it without a rewind.
        let mut w = world("db-1", 3);
        w.peers.push(("db-1".into(), writer_status(3)));
        assert_eq!(
            decide_as("db-2", &w, &running_standby(2)),
            Step::Repoint {
                to: source("db-1"),
                epoch: 3
            }
        );
    }

    #[test]
    fn a_reboot_restarts_standbys_whose_static_parameters_wait() {
        // The writer db-1 was rebooted: the same writer, epoch 2 → 3.
        let mut w = world("db-1", 3);
        w.peers.push(("db-1".into(), writer_status(3)));
        let mut f = running_standby(2);
        assert_eq!(
            decide_as("db-2", &w, &f),
            Step::Repoint {
                to: source("db-1"),
                epoch: 3
            }
        );
        f.observed.as_mut().unwrap().pending_restart = vec!["max_connections".into()];
        assert_eq!(
            decide_as("db-2", &w, &f),
            Step::RestartStandby {
                to: source("db-1"),
                epoch: 3
            }
        );
        // Not before the writer is back.
        w.peers[0].1.state = STATE_CREATING.into();
        assert!(matches!(decide_as("db-2", &w, &f), Step::Wait(_)));
        // A failover to another writer is no reboot: a voter only repoints.
        let mut w = world("db-3", 3);
        w.peers.push(("db-3".into(), writer_status(3)));
        f.local.voted = 3;
        assert_eq!(
            decide_as("db-2", &w, &f),
            Step::Repoint {
                to: Source {
                    name: "db-3".into(),
                    address: "10.0.0.2:30001".into()
                },
                epoch: 3
            }
        );
    }

    #[test]
    fn a_standby_whose_postgres_exited_is_restarted() {
        let w = world("db-1", 1);
        let mut f = running_standby(1);
        f.running = false;
        f.observed = None;
        assert_eq!(decide_as("db-2", &w, &f), Step::StartStandby);
    }

    #[test]
    fn the_old_writer_of_a_switchover_stops_fast() {
        let mut w = world("db-1", 1);
        w.cs.failover = Some(DbFailover {
            epoch: 2,
            from: "db-1".into(),
            reason: REASON_SWITCHOVER.into(),
            target: "db-2".into(),
            ..Default::default()
        });
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::StepDown);
        // Stopped, it waits to rejoin: the stopped state is not a failure.
        let mut f = running_writer(1);
        f.running = false;
        f.observed = None;
        w.status.state = STATE_STOPPED.into();
        assert_eq!(decide_as("db-1", &w, &f), Step::Idle);
    }

    #[test]
    fn a_cancelled_election_reattaches_the_voter() {
        let mut w = world("db-1", 1);
        w.peers.push(("db-1".into(), writer_status(1)));
        let mut f = running_standby(1);
        f.local.voted = 2;
        f.local.detached = true;
        assert_eq!(
            decide_as("db-2", &w, &f),
            Step::Repoint {
                to: source("db-1"),
                epoch: 1
            }
        );
    }

    #[test]
    fn a_cancelled_backtrack_puts_the_old_data_back_and_restarts_it_in_a_new_epoch() {
        use hanul_proto::v1::DbBacktrack;
        // db-1 was writer of epoch 1; its backtrack in epoch 2 keeps failing and is cancelled.
        let mut w = world("db-1", 2);
        w.cs.backtrack = Some(DbBacktrack {
            epoch: 2,
            cancel_requested_at: Some(Default::default()),
            ..Default::default()
        });
        w.peers.push(("db-1".into(), writer_status(1)));
        // Whatever an attempt left (its data aside, nothing running, or a restore running):
        // the data from before goes back, never another attempt.
        let mut aside = running_writer(1);
        aside.initialized = false;
        aside.running = false;
        aside.observed = None;
        assert_eq!(
            decide_as("db-1", &w, &aside),
            Step::CancelBacktrack { epoch: 2 }
        );
        let mut restoring = running_writer(1);
        restoring.observed = observed(true);
        assert_eq!(
            decide_as("db-1", &w, &restoring),
            Step::CancelBacktrack { epoch: 2 }
        );
        // Put back: it waits, stopped, and is never started as the writer of epoch 2.
        let mut back = aside.clone();
        back.initialized = true;
        back.local.backtrack_cancelled = 2;
        assert!(matches!(decide_as("db-1", &w, &back), Step::Wait(_)));
        // The standby stays stopped meanwhile (the writer is not available).
        let mut stopped = running_standby(1);
        stopped.running = false;
        stopped.observed = None;
        assert!(matches!(decide_as("db-2", &w, &stopped), Step::Wait(_)));
        // The cluster names it writer of epoch 3: it starts in place on its old data.
        w.cs.backtrack = None;
        w.cs.epoch = 3;
        assert_eq!(
            decide_as("db-1", &w, &back),
            Step::RecoverInPlace { epoch: 3 }
        );
        // Once it is up in epoch 3, the standby (no backtrack happened: the same history)
        // rewinds and follows it, not a rebuild from a base backup.
        w.peers[0].1 = writer_status(3);
        assert_eq!(
            decide_as("db-2", &w, &stopped),
            Step::Rejoin {
                from: source("db-1"),
                epoch: 3
            }
        );
        // A standby that never stopped is repointed.
        assert_eq!(
            decide_as("db-2", &w, &running_standby(1)),
            Step::Repoint {
                to: source("db-1"),
                epoch: 3
            }
        );
        // A cancel asked too late (the writer reports epoch 2: restored and promoted) is no
        // step for it.
        let mut late = world("db-1", 2);
        late.cs.backtrack = Some(DbBacktrack {
            epoch: 2,
            cancel_requested_at: Some(Default::default()),
            ..Default::default()
        });
        assert_eq!(decide_as("db-1", &late, &running_writer(2)), Step::Idle);
    }

    #[test]
    fn a_backtrack_restores_the_writer_in_place_and_rebuilds_the_others() {
        use hanul_proto::v1::{DbBacktrack, DbTimeline};
        // db-1 was writer of epoch 1; the cluster backtracks it in epoch 2.
        let mut w = world("db-1", 2);
        w.cs.backtrack = Some(DbBacktrack {
            epoch: 2,
            ..Default::default()
        });
        w.peers.push(("db-1".into(), writer_status(1)));
        assert_eq!(
            decide_as("db-1", &w, &running_writer(1)),
            Step::Backtrack { epoch: 2 }
        );
        // Cut short with its data aside (nothing initialized, nothing running): again, never
        // a wait for data nor a bootstrap.
        let mut aside = running_writer(1);
        aside.initialized = false;
        aside.running = false;
        aside.observed = None;
        assert_eq!(decide_as("db-1", &w, &aside), Step::Backtrack { epoch: 2 });
        // Done: it is the writer of epoch 2 (renewing, idle).
        assert_eq!(decide_as("db-1", &w, &running_writer(2)), Step::Idle);
        // The standby stops at once, even one that voted for a writer of epoch 2 earlier.
        let mut standby = running_standby(1);
        standby.local.voted = 2;
        assert_eq!(
            decide_as("db-2", &w, &standby),
            Step::StopToRejoin { epoch: 2 }
        );
        let mut stopped = running_standby(1);
        stopped.running = false;
        stopped.observed = None;
        assert!(matches!(decide_as("db-2", &w, &stopped), Step::Wait(_)));
        // Once the rewound writer reports epoch 2 (the backtrack noted in the timelines and
        // done), the standby is rebuilt from it, not repointed.
        w.cs.backtrack = None;
        w.cs.timelines = vec![DbTimeline {
            timeline: 3,
            epoch: 2,
            backtracked_to: Some(Default::default()),
            ..Default::default()
        }];
        w.peers[0].1 = writer_status(2);
        assert_eq!(
            decide_as("db-2", &w, &stopped),
            Step::Clone {
                from: source("db-1"),
                epoch: 2,
                rebuild: true
            }
        );
        // Rebuilt, it follows as usual; a later reboot (epoch 3) is no backtrack.
        assert_eq!(decide_as("db-2", &w, &running_standby(2)), Step::Idle);
        let mut w3 = w;
        w3.cs.epoch = 3;
        w3.peers[0].1 = writer_status(3);
        assert_eq!(
            decide_as("db-2", &w3, &running_standby(2)),
            Step::Repoint {
                to: source("db-1"),
                epoch: 3
            }
        );
    }

    #[test]
    fn deletion_comes_first() {
        let mut w = world("db-1", 1);
        w.deleting = true;
        assert_eq!(decide_as("db-1", &w, &running_writer(1)), Step::Delete);
    }
}
