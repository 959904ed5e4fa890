//! One member's loop on this node: gathers what the store and the node say, asks
//! [`plan::decide`] for one step, runs it, and reports the member's status. One task per
//! member, so no two steps of a member ever run at once; woken by changes of the member, its
//! cluster and its peers, by its postgres exiting, and by a tick (the writer's lease).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use hanul_controllers::runtime::Shutdown;
use hanul_db::{CopyMethod, Member, Observation, RestoreTarget, StopMode, Upstream};
use hanul_proto::Kind;
use hanul_proto::db::{
    DEFAULT_MASTER_USERNAME, DEFAULT_RETENTION_DAYS, DURABILITY_PREFERRED, MEMBER_WRITER,
    PARAMS_APPLYING, PARAMS_IN_SYNC, PARAMS_INVALID, PARAMS_PENDING_REBOOT, ROLE_STANDBY,
    ROLE_WRITER, STATE_AVAILABLE, STATE_BACKTRACKING, STATE_CREATING, STATE_FAILED, STATE_FENCED,
    STATE_REBUILDING, STATE_REJOINING, STATE_STOPPED, instance_class, is_managed_parameter,
    lease_renew_interval, self_fence_after, wal_archive_path,
};
use hanul_proto::events::{NORMAL, WARNING};
use hanul_proto::time::now;
use hanul_proto::v1::object::Resource;
use hanul_proto::v1::{DbCluster, DbClusterSpec, DbInstance, DbInstanceStatus, DbVote, Object};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, info, warn};

use super::Context;
use super::plan::{self, Facts, Local, Source, Step, View};
use crate::driver::{LaunchSpec, Limits, WorkloadState};

/// How long a started PostgreSQL gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restored member gets to replay its snapshot and WAL.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a promotion gets to end recovery.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a standby's WAL receiver gets to stop for a vote.
const DETACH_TIMEOUT: Duration = Duration::from_secs(15);
/// Between SIGTERM and SIGKILL when the driver stops what `pg_ctl stop` left.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The loop's pace when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// An observation is reused for this long (the writer's loop runs faster, for its lease).
const OBSERVE_EVERY: Duration = Duration::from_millis(900);
/// A standby just started or repointed looks this often until it streams (at most
/// [`SETTLE_FOR`]): the writer counts it in its synchronous set only once it reports streaming,
/// and after a failover the first commit waits for that (`hanul-bench db` measured up to a
/// second more at the [`TICK`]'s pace).
const SETTLE_TICK: Duration = Duration::from_millis(100);
const SETTLE_FOR: Duration = Duration::from_secs(10);
/// After a failed step.
const RETRY: Duration = Duration::from_secs(2);
/// The member's file of what the node remembers.
const LOCAL_FILE: &str = "member.json";
/// Where a backtracking writer's data directory waits (`<this>-<epoch>` in the member's root)
/// until the restored one runs as the writer.
const BEFORE_BACKTRACK: &str = "pgdata.before-backtrack";

/// How one pass ended.
enum Next {
    /// Something was done: look again at once.
    Now,
    /// Nothing to do until a change or the tick.
    Later,
    /// The member is gone from this node: the task ends.
    Done,
}

/// Runs one member until it is deleted, moves away, or the agent stops.
pub(super) async fn run(ctx: Arc<Context>, name: String, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut m = MemberLoop {
        root: ctx.dir.join(&name),
        ctx,
        name,
        local: None,
        latest: None,
        renewed: Instant::now(),
        attempted: None,
        observed: None,
        last_step: None,
        fenced: None,
        params: None,
        pending_reported: Vec::new(),
        archive: Arc::default(),
        backtrack_failures: (0, 0),
        settling: None,
    };
    let mut streak = 0;
    loop {
        let wait = match m.pass().await {
            Ok(Next::Done) => {
                m.ctx.forget_task(&m.name);
                m.ctx.metrics.forget(&m.name);
                return;
            }
            Ok(Next::Now) if streak < 20 => {
                streak += 1;
                continue;
            }
            Ok(_) => m.tick(),
            Err(e) => {
                warn!(member = %m.name, error = %e, "A DB member step failed; retrying.");
                RETRY.min(m.tick() * 2)
            }
        };
        streak = 0;
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// An error of one step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL")]
    Postgres(#[from] hanul_db::Error),
    #[error("API call {op} for DBInstance/{member} failed")]
    Api {
        op: &'static str,
        member: String,
        #[source]
        source: tonic::Status,
    },
    #[error("driver")]
    Driver(#[from] crate::driver::Error),
    #[error("{0}")]
    Other(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

struct MemberLoop {
    ctx: Arc<Context>,
    name: String,
    root: PathBuf,
    local: Option<Local>,
    /// The object our last write returned: newer than the cache until the watch brings it.
    latest: Option<Object>,
    /// The writer's last successful lease renewal, and last attempt.
    renewed: Instant,
    attempted: Option<Instant>,
    observed: Option<(Instant, Observation)>,
    /// The last step logged, so that repeats are not.
    last_step: Option<Step>,
    /// The epoch in which this writer fenced itself: its report says fenced, not failed, even
    /// when the store was unreachable at the time.
    fenced: Option<u64>,
    /// What this member last did with its cluster's parameter group.
    params: Option<Params>,
    /// The static parameters last reported as waiting for a restart (an event each time the
    /// list changes).
    pending_reported: Vec<String>,
    /// The writer's WAL archiving, for its status: looked at by a task of its own (see
    /// [`Archive`]), never in the member's loop, which must stay quick for the lease.
    archive: Arc<std::sync::Mutex<Archive>>,
    /// A backtracking writer's failed attempts: the backtrack's epoch and how many.
    backtrack_failures: (u64, u32),
    /// Until when a standby that just started or repointed looks at [`SETTLE_TICK`]'s pace,
    /// while it does not stream yet.
    settling: Option<Instant>,
}

/// How far the writer's WAL archive reaches. Every `archive_interval`, a writer that wrote
/// WAL since the last look commits a heartbeat (a commit record carries a time, and a restore
/// to time T needs a commit after T in the archive) and ends its WAL file so that the archiver
/// takes it; once the file holding a heartbeat is archived, the cluster can be restored up to
/// the heartbeat's time.
#[derive(Debug, Default)]
struct Archive {
    last_look: Option<Instant>,
    /// A look is under way (its task runs).
    looking: bool,
    /// The WAL position after the last heartbeat's switch: more WAL than this is activity.
    quiet_lsn: u64,
    /// Heartbeats not known archived yet.
    pending: Vec<hanul_db::Heartbeat>,
    /// The heartbeat of the cluster's deletion is committed: the archive reaches the
    /// deletion, which retained automated backups restore up to.
    final_heartbeat: bool,
    latest: Option<pbjson_types::Timestamp>,
    last_archived_wal: String,
    error: String,
}

/// The parameter group as this member last applied it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Params {
    group: String,
    /// The group's parameters (those hanul does not manage), as asked.
    wanted: BTreeMap<String, String>,
    /// Left out of the file: name and PostgreSQL's complaint.
    refused: Vec<(String, String)>,
}

/// Event reasons of the parameter group, on the member.
const REASON_PARAMS_APPLYING: &str = "ApplyingParameters";
const REASON_PARAMS_INVALID: &str = "InvalidParameter";
const REASON_PARAMS_PENDING_REBOOT: &str = "PendingReboot";

/// How a group shows in messages.
fn group_label(group: &str) -> String {
    if group.is_empty() {
        "the default DB parameter group".into()
    } else {
        format!("DB parameter group {group}")
    }
}

impl MemberLoop {
    fn tick(&self) -> Duration {
        let lease = self
            .cluster()
            .and_then(|c| c.spec)
            .map(|s| plan::lease(&s))
            .unwrap_or(Duration::from_secs(3));
        if self.local.as_ref().is_some_and(|l| l.role == ROLE_WRITER) {
            lease_renew_interval(lease).min(TICK) / 2
        } else if self.settling() {
            SETTLE_TICK
        } else {
            TICK
        }
    }

    /// Whether a standby that just started or repointed is still on its way into the
    /// writer's synchronous set (see [`SETTLE_TICK`]): not streaming yet, or streaming but
    /// short of what the writer last reported flushed, the controller's rule for joining. A
    /// standby that had less WAL than the standby promoted streams the rest of the old
    /// timeline first, then the new one.
    fn settling(&self) -> bool {
        if self.settling.is_none_or(|until| Instant::now() >= until) {
            return false;
        }
        let Some((_, o)) = &self.observed else {
            return true;
        };
        if !(o.in_recovery && o.streaming()) {
            return true;
        }
        let writer_flush = self.cluster().and_then(|c| {
            let writer = c.status?.writer;
            match self
                .ctx
                .instances
                .get(Kind::DbInstance, &writer)?
                .resource
                .as_ref()?
            {
                Resource::DbInstance(w) => w.status.as_ref().map(|s| s.flush_lsn),
                _ => None,
            }
        });
        writer_flush.is_some_and(|w| o.receive_lsn.unwrap_or(0) < w)
    }

    /// How long an API call or a query may take: a writer's must end before its fence
    /// deadline, so that a hung call never keeps it from fencing in time.
    fn budget(&self) -> Duration {
        const MAX: Duration = Duration::from_secs(5);
        let running = self
            .ctx
            .driver
            .state(&self.name)
            .is_some_and(|s| s.is_running());
        if !running || self.local.as_ref().is_none_or(|l| l.role != ROLE_WRITER) {
            return MAX;
        }
        let lease = self
            .cluster()
            .and_then(|c| c.spec)
            .map(|s| plan::lease(&s))
            .unwrap_or(Duration::from_secs(3));
        (self.renewed + self_fence_after(lease))
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), MAX)
    }

    fn object(&self) -> Option<Object> {
        let cached = self.ctx.instances.get(Kind::DbInstance, &self.name);
        match (cached, &self.latest) {
            (Some(c), Some(l)) if l.resource_version() > c.resource_version() => Some(l.clone()),
            (Some(c), _) => Some((*c).clone()),
            (None, _) => None,
        }
    }

    fn cluster(&self) -> Option<DbCluster> {
        let o = self.object()?;
        let Some(Resource::DbInstance(i)) = &o.resource else {
            return None;
        };
        let cluster = i.spec.as_ref()?.cluster.clone();
        match &self.ctx.clusters.get(Kind::DbCluster, &cluster)?.resource {
            Some(Resource::DbCluster(c)) => Some(c.clone()),
            _ => None,
        }
    }

    async fn pass(&mut self) -> Result<Next> {
        let Some(object) = self.object() else {
            return self.gone().await;
        };
        let Some(Resource::DbInstance(instance)) = object.resource.clone() else {
            return Ok(Next::Later);
        };
        let spec = instance.spec.clone().unwrap_or_default();
        if spec.node != self.ctx.node {
            return self.gone().await;
        }
        let meta = instance.metadata.clone().unwrap_or_default();
        let deleting = meta.deleted_at.is_some();
        if deleting {
            return self.delete(&object).await;
        }
        let object = self.ensure_finalizer(object).await?;
        let Some(cluster) = self.cluster() else {
            debug!(member = %self.name, cluster = %spec.cluster, "Waiting for the member's cluster.");
            return Ok(Next::Later);
        };
        let cluster_spec = cluster.spec.clone().unwrap_or_default();
        let cluster_status = cluster.status.clone().unwrap_or_default();
        let status = instance.status.clone().unwrap_or_default();
        let local = self.local()?;
        let member = self.member(&cluster, &local)?;

        let running = self
            .ctx
            .driver
            .state(&self.name)
            .is_some_and(|s| s.is_running());
        // A stopped member gets its parameters when it starts.
        if running
            && member.initialized()
            && let Err(e) = self
                .apply_parameters(&object, &cluster, &member, true, false)
                .await
        {
            warn!(member = %self.name, error = %e, "Could not apply the DB parameter group.");
        }
        let observed = if running {
            self.observe(&member).await
        } else {
            self.observed = None;
            None
        };
        if let Some(o) = &observed
            && o.pending_restart != self.pending_reported
        {
            self.pending_reported = o.pending_restart.clone();
            if !o.pending_restart.is_empty() {
                let group = cluster.spec.as_ref().map_or("", |s| &s.parameter_group);
                self.emit_on(
                    &object,
                    NORMAL,
                    REASON_PARAMS_PENDING_REBOOT,
                    format!(
                        "Parameter group change requires a reboot: {} of {} apply when DB instance {} restarts (hanul db reboot {})",
                        o.pending_restart.join(", "),
                        group_label(group),
                        self.name,
                        spec.cluster
                    ),
                );
            }
        }
        let n = Instant::now();
        let facts = Facts {
            initialized: member.initialized(),
            running,
            observed: observed.clone(),
            local: local.clone(),
            since_renewal: n - self.renewed,
            since_attempt: self.attempted.map_or(Duration::MAX, |a| n - a),
        };
        let peer_objects: Vec<(String, DbInstanceStatus)> = self
            .ctx
            .instances
            .list_kind(Kind::DbInstance)
            .iter()
            .filter_map(|o| match &o.resource {
                Some(Resource::DbInstance(p))
                    if o.name() != self.name
                        && p.spec.as_ref().is_some_and(|s| s.cluster == spec.cluster) =>
                {
                    Some((o.name().to_string(), p.status.clone().unwrap_or_default()))
                }
                _ => None,
            })
            .collect();
        let peers: Vec<(&str, &DbInstanceStatus)> =
            peer_objects.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let name = self.name.clone();
        let view = View {
            name: &name,
            deleting,
            spec: &spec,
            status: &status,
            cluster: &cluster_spec,
            cluster_status: &cluster_status,
            peers: &peers,
        };
        let step = plan::decide(&view, &facts);
        // The archive's progress only when nothing else is to be done: never before a
        // promotion's next steps, a fence or a lease renewal.
        if step == Step::Idle
            && local.role == ROLE_WRITER
            && cluster_status.writer == self.name
            && cluster_status.epoch == local.epoch
            && observed.as_ref().is_some_and(|o| !o.in_recovery)
        {
            let cluster_deleting = cluster
                .metadata
                .as_ref()
                .is_some_and(|m| m.deleted_at.is_some());
            self.archive_look(&member, cluster_deleting);
        }
        if !matches!(step, Step::Idle | Step::Renew) && self.last_step.as_ref() != Some(&step) {
            info!(member = %self.name, cluster = %spec.cluster, epoch = cluster_status.epoch,
                  writer = %cluster_status.writer, local_epoch = local.epoch, local_role = %local.role,
                  running, ?step, "DB member step.");
        }
        self.last_step = Some(step.clone());
        let writer_flush = peers
            .iter()
            .find(|(n, _)| *n == cluster_status.writer)
            .map(|(_, s)| s.flush_lsn);
        match &observed {
            Some(o) => {
                let lag = match writer_flush {
                    Some(f) if o.in_recovery => f.saturating_sub(o.replay_lsn.unwrap_or(0)),
                    _ => 0,
                };
                self.ctx.metrics.set(
                    &self.name,
                    super::metrics::Sample::new(&spec.cluster, o, lag),
                );
            }
            None => self.ctx.metrics.forget(&self.name),
        }
        let ctx = StepCtx {
            object: &object,
            spec: &spec,
            cluster: &cluster,
            view: &view,
            writer_flush,
        };
        self.execute(step, member, &ctx).await
    }

    async fn execute(&mut self, step: Step, mut member: Member, c: &StepCtx<'_>) -> Result<Next> {
        let cs = c.view.cluster_status;
        let cluster = c.cluster.spec.clone().unwrap_or_default();
        match step {
            Step::Idle => {
                self.report(c, None, |_| {}).await?;
                Ok(Next::Later)
            }
            Step::Wait(why) => {
                self.report(c, Some(why), |_| {}).await?;
                Ok(Next::Later)
            }
            Step::Delete => self.delete(c.object).await,
            Step::Renew => {
                self.attempted = Some(Instant::now());
                let epoch = self.local_ref().epoch;
                let ok = self
                    .report_forced(c, None, move |s| {
                        s.lease_epoch = epoch;
                        s.lease_renewals += 1;
                    })
                    .await;
                match ok {
                    Ok(_) => {
                        self.renewed = Instant::now();
                        Ok(Next::Later)
                    }
                    Err(e) => {
                        warn!(member = %self.name, error = %e, "Could not renew the writer's lease.");
                        Ok(Next::Later)
                    }
                }
            }
            Step::Bootstrap { epoch } if cluster.source.is_some() => {
                let restore = cs.restore.clone().unwrap_or_default();
                let resolved =
                    !restore.snapshot_path.is_empty() || !restore.clone_address.is_empty();
                if !resolved || !restore.error.is_empty() {
                    let why = if restore.error.is_empty() {
                        "waiting for the cluster's source to be resolved".to_string()
                    } else {
                        format!("cannot restore: {}", restore.error)
                    };
                    self.report(c, Some(why), |_| {}).await?;
                    return Ok(Next::Later);
                }
                let from = if restore.clone_address.is_empty() {
                    format!("snapshot {}", restore.snapshot)
                } else {
                    format!(
                        "a clone of DB cluster {} (member {})",
                        restore.source_cluster, restore.clone_member
                    )
                };
                self.set_state(c, STATE_CREATING, &format!("restoring from {from}"))
                    .await?;
                let mut local = self.local_ref().clone();
                member.synchronous_standby_names.clear();
                let copied = self.restore(c, &mut member, &restore).await?;
                if !cluster.database_name.is_empty() {
                    member.create_database(&cluster.database_name).await?;
                }
                local.epoch = epoch;
                local.role = ROLE_WRITER.into();
                self.save(local)?;
                self.became_writer();
                let to = restore
                    .target_time
                    .as_ref()
                    .map(|t| format!(" as of {}", hanul_proto::time::rfc3339(t)))
                    .unwrap_or_default();
                let how = copied
                    .map(|m| format!(" ({} on node {})", m.as_str(), self.ctx.node))
                    .unwrap_or_default();
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceRestored",
                    format!(
                        "DB instance {} restored from {from}{to}{how} as the writer of epoch {epoch}",
                        self.name
                    ),
                );
                Ok(Next::Now)
            }
            Step::Bootstrap { epoch } => {
                self.set_state(c, STATE_CREATING, "creating the writer")
                    .await?;
                let mut local = self.local_ref().clone();
                member.synchronous_standby_names.clear();
                member.init(&self.ctx.master_password(&cluster)?).await?;
                self.start(c, &mut member).await?;
                if !cluster.database_name.is_empty() {
                    member.create_database(&cluster.database_name).await?;
                }
                local.epoch = epoch;
                local.role = ROLE_WRITER.into();
                self.save(local)?;
                self.became_writer();
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceCreated",
                    format!(
                        "DB instance {} created as the writer of epoch {epoch}",
                        self.name
                    ),
                );
                Ok(Next::Now)
            }
            Step::Clone {
                from,
                epoch,
                rebuild,
            } => {
                let state = if rebuild {
                    STATE_REBUILDING
                } else {
                    STATE_CREATING
                };
                self.set_state(c, state, &format!("copying the data of {}", from.name))
                    .await?;
                self.clone_from(&mut member, &from, epoch, c).await?;
                let (reason, what) = if rebuild {
                    ("DBInstanceRebuilt", "rebuilt from a backup of")
                } else {
                    ("DBInstanceCreated", "created as a standby of")
                };
                self.emit(
                    c,
                    NORMAL,
                    reason,
                    format!("DB instance {} {what} {}", self.name, from.name),
                );
                Ok(Next::Now)
            }
            Step::StartStandby => {
                self.start(c, &mut member).await?;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceRestarted",
                    format!("DB instance {} restarted as a standby", self.name),
                );
                Ok(Next::Now)
            }
            Step::ReportFailed => {
                let why = match self.ctx.driver.state(&self.name) {
                    Some(WorkloadState::Exited {
                        code,
                        signal,
                        oom_killed,
                        ..
                    }) => {
                        if oom_killed {
                            "PostgreSQL ran out of memory and was killed".to_string()
                        } else {
                            format!("PostgreSQL exited (code {code:?}, signal {signal:?})")
                        }
                    }
                    _ => "PostgreSQL is not running".to_string(),
                };
                if self.fenced == Some(self.local_ref().epoch) {
                    let message = "the writer's lease could not be renewed or the cluster is replacing it; PostgreSQL was stopped so that it takes no writes";
                    self.set_state(c, STATE_FENCED, message).await?;
                    return Ok(Next::Now);
                }
                let message = format!(
                    "{why}; the writer is not restarted until the cluster fails over or restarts it"
                );
                self.set_state(c, STATE_FAILED, &message).await?;
                self.emit(
                    c,
                    WARNING,
                    "DBInstanceFailed",
                    format!("Writer {}: {message}", self.name),
                );
                Ok(Next::Now)
            }
            Step::Fence => {
                warn!(member = %self.name, since_renewal = ?self.renewed.elapsed(), "The writer is given up (its lease could not be renewed, or the cluster is replacing it): stopping PostgreSQL at once.");
                self.stop(&member, StopMode::Immediate, Duration::from_secs(5))
                    .await;
                self.fenced = Some(self.local_ref().epoch);
                let message = "the writer's lease could not be renewed or the cluster is replacing it; PostgreSQL was stopped so that it takes no writes";
                // The store may be unreachable: this write is retried on later passes.
                let _ = self.set_state(c, STATE_FENCED, message).await;
                self.emit(
                    c,
                    WARNING,
                    "DBInstanceFenced",
                    format!("Writer {} fenced: {message}", self.name),
                );
                Ok(Next::Now)
            }
            Step::ApplySync { names } => {
                info!(member = %self.name, synchronous_standby_names = %names, "Setting the synchronous standbys.");
                // What PostgreSQL ran with when the step was chosen: the observation it was
                // chosen on (the member was built before that observation was taken, from an
                // older one or none).
                let before = self.observed.as_ref().map_or_else(
                    || member.synchronous_standby_names.clone(),
                    |(_, o)| o.synchronous_standby_names.clone(),
                );
                member.set_synchronous_standby_names(&names).await?;
                self.observed = None;
                if !names.is_empty()
                    && let Err(e) = member.nudge_standbys().await
                {
                    debug!(member = %self.name, error = %e, "Could not nudge the standbys.");
                }
                // `preferred` durability: the writer going alone, and back, is said (RDS's
                // words are for the cluster; the event is on the writer that does it).
                let preferred = cluster
                    .replication
                    .as_ref()
                    .is_some_and(|r| r.data_durability == DURABILITY_PREFERRED);
                if preferred && cs.sync_count > 0 && names.is_empty() != before.is_empty() {
                    let (ty, reason, message) = if names.is_empty() {
                        (
                            WARNING,
                            "SynchronousReplicationSuspended",
                            format!(
                                "Writer {} commits without a synchronous standby: none of {} streams (dataDurability: preferred); a failover now may lose the latest commits",
                                self.name,
                                cs.sync_standbys.join(", ")
                            ),
                        )
                    } else {
                        (
                            NORMAL,
                            "SynchronousReplicationResumed",
                            format!(
                                "Writer {} waits for a synchronous standby again ({names})",
                                self.name
                            ),
                        )
                    };
                    self.emit(c, ty, reason, message);
                }
                Ok(Next::Now)
            }
            Step::StepDown => {
                info!(member = %self.name, "Switchover: stopping the writer (fast) so that its WAL reaches the standbys.");
                self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                    .await;
                self.set_state(c, STATE_STOPPED, "stopped for a switchover")
                    .await?;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceStopped",
                    format!("Writer {} stopped for a switchover", self.name),
                );
                Ok(Next::Now)
            }
            Step::Vote { epoch } => {
                let o = member.detach(DETACH_TIMEOUT).await?;
                let mut local = self.local_ref().clone();
                local.voted = epoch;
                local.detached = true;
                self.save(local)?;
                let vote = DbVote {
                    epoch,
                    lsn: o.received(),
                    timeline: o.timeline,
                };
                info!(member = %self.name, epoch, lsn = %hanul_proto::db::format_lsn(vote.lsn), timeline = vote.timeline, "Voted in a failover.");
                self.observed = None;
                self.report_forced(c, None, move |s| s.vote = Some(vote))
                    .await?;
                Ok(Next::Now)
            }
            Step::Promote { epoch } => {
                let names = plan::synchronous_standby_names(&cluster, cs, &[]);
                let local = self.as_writer_of(epoch);
                // Persisted first: from here this member is the writer of `epoch`, and a pass
                // cut short finishes the promotion rather than following anyone.
                self.save(local)?;
                member.synchronous_standby_names = names.clone();
                if member.in_recovery().await? {
                    member.promote().await?;
                    if !member.wait_promoted(PROMOTE_TIMEOUT).await? {
                        return Err(Error::Other(
                            "the promotion did not end recovery in time".into(),
                        ));
                    }
                }
                member.set_synchronous_standby_names(&names).await?;
                member.query("postgres", "checkpoint").await?;
                self.became_writer();
                self.observed = None;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstancePromoted",
                    format!(
                        "DB instance {} promoted to writer (epoch {epoch})",
                        self.name
                    ),
                );
                Ok(Next::Now)
            }
            Step::Restart => {
                info!(member = %self.name, "Reboot: stopping the writer (fast) to start it again in place.");
                self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                    .await;
                self.observed = None;
                Ok(Next::Now)
            }
            Step::RestartStandby { to, epoch } => {
                info!(member = %self.name, writer = %to.name, epoch, "Reboot: restarting the standby for its static parameters.");
                self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                    .await;
                member.upstream = Some(self.upstream(&cluster, &to)?);
                member.detached = false;
                member.configure()?;
                let mut local = self.local_ref().clone();
                local.follow(&to, epoch);
                self.save(local)?;
                self.start(c, &mut member).await?;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceRestarted",
                    format!(
                        "DB instance {} restarted with the cluster's reboot (epoch {epoch})",
                        self.name
                    ),
                );
                Ok(Next::Now)
            }
            Step::RecoverInPlace { epoch } => {
                let names = plan::synchronous_standby_names(&cluster, cs, &[]);
                member.synchronous_standby_names = names;
                member.upstream = None;
                member.configure()?;
                let mut local = self.local_ref().clone();
                local.epoch = epoch;
                self.save(local)?;
                self.start(c, &mut member).await?;
                if member.in_recovery().await? {
                    return Err(Error::Other(
                        "the former writer came back in recovery".into(),
                    ));
                }
                member.query("postgres", "checkpoint").await?;
                self.became_writer();
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceRestarted",
                    format!("Writer {} restarted in place (epoch {epoch})", self.name),
                );
                Ok(Next::Now)
            }
            Step::Repoint { to, epoch } => {
                member.repoint(self.upstream(&cluster, &to)?).await?;
                let mut local = self.local_ref().clone();
                local.follow(&to, epoch);
                self.save(local)?;
                self.observed = None;
                self.settling = Some(Instant::now() + SETTLE_FOR);
                info!(member = %self.name, writer = %to.name, epoch, "Following the new writer.");
                Ok(Next::Now)
            }
            Step::StopToRejoin { epoch } => {
                let lost_writer = self.local_ref().role == ROLE_WRITER;
                // A writer that lost its term must take no more writes: at once.
                let mode = if lost_writer {
                    StopMode::Immediate
                } else {
                    StopMode::Fast
                };
                self.stop(&member, mode, Duration::from_secs(70)).await;
                self.set_state(
                    c,
                    STATE_STOPPED,
                    &format!("stopped to follow the writer of epoch {epoch}"),
                )
                .await?;
                Ok(Next::Now)
            }
            Step::Backtrack { epoch } => {
                let Some(b) = cs.backtrack.clone().filter(|b| b.epoch == epoch) else {
                    return Ok(Next::Later);
                };
                let to = b
                    .target_time
                    .as_ref()
                    .map(hanul_proto::time::rfc3339)
                    .unwrap_or_default();
                // Stopped before the report: from here the member shows no role until the
                // restored PostgreSQL answers (no stale role or timeline with the new epoch).
                self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                    .await;
                self.set_state(
                    c,
                    STATE_BACKTRACKING,
                    &format!(
                        "backtracking to {to}: restoring snapshot {} and the WAL of timeline {}",
                        b.snapshot, b.timeline
                    ),
                )
                .await?;
                if let Err(e) = self.backtrack(c, &mut member, &b).await {
                    // Whatever the attempt left runs as nothing: the next one removes it.
                    self.stop(&member, StopMode::Immediate, Duration::from_secs(10))
                        .await;
                    // The whole chain: the status is where the user reads why.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    let message = format!("backtracking to {to} failed ({why}); trying again");
                    // Counted for the cluster (`backtrackFailures`), which says so in an event.
                    let failures = match self.backtrack_failures {
                        (e, n) if e == epoch => n + 1,
                        _ => 1,
                    };
                    self.backtrack_failures = (epoch, failures);
                    let _ = self.set_state(c, STATE_BACKTRACKING, &message).await;
                    // Not on every retry: on the 1st, 2nd, 4th, 8th... failure.
                    if failures.is_power_of_two() {
                        self.emit(
                            c,
                            WARNING,
                            "DBInstanceBacktrackFailed",
                            format!("DB instance {} (attempt {failures}): {message}", self.name),
                        );
                    }
                    return Err(e);
                }
                let local = self.as_writer_of(epoch);
                self.save(local)?;
                // Only now does the old history's directory go.
                let aside = self.root.join(format!("{BEFORE_BACKTRACK}-{epoch}"));
                if let Err(e) = remove(&aside).await {
                    warn!(member = %self.name, error = %e, dir = %aside.display(), "Could not remove the data directory from before the backtrack.");
                }
                self.became_writer();
                // The WAL positions start again from the point the history was rewound to.
                *self.archive.lock().unwrap_or_else(PoisonError::into_inner) = Archive::default();
                self.observed = None;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceBacktracked",
                    format!(
                        "DB instance {} backtracked to {to} from snapshot {} (epoch {epoch})",
                        self.name, b.snapshot
                    ),
                );
                Ok(Next::Now)
            }
            Step::CancelBacktrack { epoch } => {
                // What an attempt left (or the writer of before, if none began) stops first.
                self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                    .await;
                self.put_back_before_backtrack(&member, epoch).await?;
                let mut local = self.local_ref().clone();
                local.backtrack_cancelled = epoch;
                self.save(local)?;
                self.observed = None;
                self.set_state(
                    c,
                    STATE_STOPPED,
                    "the backtrack was cancelled: the data directory from before it is back in \
                     place; waiting to be started again as the writer",
                )
                .await?;
                self.emit(
                    c,
                    NORMAL,
                    "DBInstanceBacktrackCancelled",
                    format!(
                        "DB instance {}: the backtrack of epoch {epoch} was cancelled; its data \
                         from before the backtrack is back in place",
                        self.name
                    ),
                );
                Ok(Next::Now)
            }
            Step::Rejoin { from, epoch } => {
                self.set_state(
                    c,
                    STATE_REJOINING,
                    &format!("rewinding to follow {}", from.name),
                )
                .await?;
                let mut local = self.local_ref().clone();
                local.unfit = true;
                self.save(local.clone())?;
                member.readable = c.spec.readable;
                match member.rewind(self.upstream(&cluster, &from)?).await {
                    Ok(()) => {
                        local.unfit = false;
                        local.follow(&from, epoch);
                        self.save(local)?;
                        self.start(c, &mut member).await?;
                        self.emit(
                            c,
                            NORMAL,
                            "DBInstanceRejoined",
                            format!(
                                "DB instance {} rejoined as a standby of {} (epoch {epoch})",
                                self.name, from.name
                            ),
                        );
                    }
                    Err(e) => {
                        warn!(member = %self.name, error = %e, "The rewind failed: rebuilding from a base backup.");
                        self.emit(c, WARNING, "DBInstanceRewindFailed", format!(
                            "DB instance {} could not be rewound ({e}); rebuilding it from a backup of {}", self.name, from.name));
                        self.set_state(
                            c,
                            STATE_REBUILDING,
                            &format!("copying the data of {}", from.name),
                        )
                        .await?;
                        self.clone_from(&mut member, &from, epoch, c).await?;
                        self.emit(
                            c,
                            NORMAL,
                            "DBInstanceRebuilt",
                            format!(
                                "DB instance {} rebuilt from a backup of {}",
                                self.name, from.name
                            ),
                        );
                    }
                }
                Ok(Next::Now)
            }
        }
    }

    /// A base backup of `from` in place of whatever the data directory holds, then start.
    async fn clone_from(
        &mut self,
        member: &mut Member,
        from: &Source,
        epoch: u64,
        c: &StepCtx<'_>,
    ) -> Result<()> {
        let cluster = c.cluster.spec.clone().unwrap_or_default();
        let mut local = self.local_ref().clone();
        local.unfit = true;
        self.save(local.clone())?;
        let data = member.data_dir.clone();
        remove(&data)
            .await
            .map_err(|e| Error::Other(format!("removing {}: {e}", data.display())))?;
        member.readable = c.spec.readable;
        member.clone_from(self.upstream(&cluster, from)?).await?;
        local.unfit = false;
        local.follow(from, epoch);
        self.save(local)?;
        self.start(c, member).await
    }

    fn upstream(&self, cluster: &hanul_proto::v1::DbClusterSpec, to: &Source) -> Result<Upstream> {
        let (host, port) = split_address(&to.address)
            .ok_or_else(|| Error::Other(format!("bad address {:?} of {}", to.address, to.name)))?;
        Ok(Upstream {
            host,
            port,
            user: superuser(cluster),
            password: self.ctx.master_password(cluster)?,
            application_name: self.name.clone(),
        })
    }

    /// The first writer of a restored cluster: the snapshot's files, recovery (to the point in
    /// time, through the source's WAL archive), promotion, then the new cluster's password.
    /// Whatever a failed attempt left is removed first: the member never ran as anything.
    async fn restore(
        &mut self,
        c: &StepCtx<'_>,
        member: &mut Member,
        restore: &hanul_proto::v1::DbRestore,
    ) -> Result<Option<CopyMethod>> {
        let snapshot = self.ctx.backup_dir.join(&restore.snapshot_path);
        let target = match &restore.target_time {
            Some(t) if !restore.wal_path.is_empty() => RestoreTarget::Time {
                wal_dir: self.ctx.backup_dir.join(&restore.wal_path),
                time_unix_micros: t.seconds * 1_000_000 + i64::from(t.nanos / 1000),
                timeline: (restore.timeline > 0).then_some(restore.timeline),
            },
            _ => RestoreTarget::Immediate,
        };
        if member.data_dir.exists() {
            remove(&member.data_dir)
                .await
                .map_err(|e| Error::Other(format!("removing a failed restore's files: {e}")))?;
        }
        let mut copied = None;
        if restore.clone_address.is_empty() {
            member.restore_key = self.snapshot_key(&snapshot, c)?;
            member.restore_from(&snapshot, target).await?;
            self.start(c, member).await?;
        } else {
            // A clone: the source's member copied on this node when it runs here (Aurora's
            // copy-on-write clone), else a base backup of it over the network, started as its
            // standby; either way then promoted into a cluster of its own (a new timeline).
            let source_cluster = match self
                .ctx
                .clusters
                .get(Kind::DbCluster, &restore.source_cluster)
                .and_then(|o| o.resource.clone())
            {
                Some(Resource::DbCluster(s)) => s,
                _ => {
                    return Err(Error::Other(format!(
                        "the clone's source DB cluster {} is gone",
                        restore.source_cluster
                    )));
                }
            };
            let source = source_cluster.spec.clone().unwrap_or_default();
            if source.backup_encrypted && !spec_of(c).backup_encrypted {
                return Err(Error::Other(format!(
                    "the source DB cluster {} encrypts its backups: a clone of it must too \
                     (set spec.backupEncrypted and spec.backupEncryptionKeySecret)",
                    restore.source_cluster
                )));
            }
            copied = self.copy_here(member, restore, &source_cluster).await;
            if copied.is_some() {
                // Recovers to the end of the copy and promotes itself, like a snapshot.
                self.start(c, member).await?;
            } else {
                let (host, port) = split_address(&restore.clone_address).ok_or_else(|| {
                    Error::Other(format!("bad source address {:?}", restore.clone_address))
                })?;
                member
                    .clone_from(Upstream {
                        host,
                        port,
                        user: superuser(&source),
                        password: self.ctx.master_password(&source)?,
                        application_name: self.name.clone(),
                    })
                    .await?;
                self.start(c, member).await?;
                member.promote().await?;
            }
        }
        self.finish_recovery(member, "the restored member").await?;
        let spec = c.cluster.spec.clone().unwrap_or_default();
        let password = self.ctx.master_password(&spec)?.replace('\'', "''");
        member
            .query(
                "postgres",
                &format!(
                    "alter role {} with password '{password}'",
                    hanul_db::postgres::quote_ident(&superuser(&spec))
                ),
            )
            .await?;
        Ok(copied)
    }

    /// A clone's data copied from a member of the source that this node runs
    /// ([`Member::copy_running`]; the controller places a clone's writer beside one where it
    /// can): the member the restore names if it runs here, else an available one of the
    /// source's that does (a standby first). How, or None when none runs here or the copy
    /// failed (logged; the caller takes a base backup of the named member over the network
    /// instead, into the emptied data directory). `source` is the source cluster, as cached.
    async fn copy_here(
        &self,
        member: &mut Member,
        restore: &hanul_proto::v1::DbRestore,
        source: &DbCluster,
    ) -> Option<CopyMethod> {
        let status = source.status.clone().unwrap_or_default();
        let mut here: Vec<&hanul_proto::v1::DbClusterMember> = status
            .members
            .iter()
            .filter(|m| m.node == self.ctx.node && m.state == STATE_AVAILABLE)
            .collect();
        here.sort_by_key(|m| (m.name != restore.clone_member, m.role == MEMBER_WRITER));
        let from = here.first()?;
        let (source, _) = self
            .ctx
            .member_here(&from.name, &restore.source_cluster)
            .ok()?;
        match member.copy_running(&source).await {
            Ok(method) => {
                info!(member = %self.name, source = %from.name, method = method.as_str(), "Copied the clone's source on this node.");
                Some(method)
            }
            Err(e) => {
                warn!(member = %self.name, source = %from.name, error = %e, "Could not copy the clone's source on this node; taking a base backup over the network instead.");
                None
            }
        }
    }

    /// The writer's data rewound in place (see [`Step::Backtrack`]): PostgreSQL stopped, its
    /// data directory moved aside (an earlier attempt's restore, found in its place, is
    /// removed instead), the snapshot restored with recovery to the target on the named
    /// timeline, started, promoted onto a new timeline. On an error the caller stops what
    /// runs; the directory from before stays aside until an attempt succeeds.
    async fn backtrack(
        &mut self,
        c: &StepCtx<'_>,
        member: &mut Member,
        b: &hanul_proto::v1::DbBacktrack,
    ) -> Result<()> {
        self.stop(member, StopMode::Fast, Duration::from_secs(70))
            .await;
        let aside = self.root.join(format!("{BEFORE_BACKTRACK}-{}", b.epoch));
        // Left by an earlier backtrack that completed: its history is gone already.
        for entry in std::fs::read_dir(&self.root)
            .map_err(|e| Error::Other(format!("reading {}: {e}", self.root.display())))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(BEFORE_BACKTRACK) && entry.path() != aside {
                remove(&entry.path())
                    .await
                    .map_err(|e| Error::Other(format!("removing {name}: {e}")))?;
            }
        }
        if aside.exists() {
            remove(&member.data_dir)
                .await
                .map_err(|e| Error::Other(format!("removing an earlier attempt's restore: {e}")))?;
        } else if member.data_dir.exists() {
            std::fs::rename(&member.data_dir, &aside)
                .and_then(|()| std::fs::File::open(&self.root)?.sync_all())
                .map_err(|e| {
                    Error::Other(format!("moving {} aside: {e}", member.data_dir.display()))
                })?;
        }
        let t = b
            .target_time
            .ok_or_else(|| Error::Other("the backtrack has no target time".into()))?;
        let target = RestoreTarget::Time {
            wal_dir: self.ctx.backup_dir.join(&b.wal_path),
            time_unix_micros: t.seconds * 1_000_000 + i64::from(t.nanos / 1000),
            timeline: Some(b.timeline),
        };
        // Alone until its standbys are rebuilt from it (the cluster's set is empty now).
        member.synchronous_standby_names.clear();
        let snapshot = self.ctx.backup_dir.join(&b.snapshot_path);
        member.restore_key = self.snapshot_key(&snapshot, c)?;
        member.restore_from(&snapshot, target).await?;
        self.start(c, member).await?;
        self.finish_recovery(member, "the restore").await?;
        member.query("postgres", "checkpoint").await?;
        Ok(())
    }

    /// A cancelled backtrack of `epoch`: the data directory from before it (aside since the
    /// first attempt) goes back in place of whatever an attempt restored. Idempotent: with
    /// nothing aside, the data directory was never moved (an attempt moves it aside before it
    /// restores anything, and a completed one is never cancelled).
    async fn put_back_before_backtrack(&self, member: &Member, epoch: u64) -> Result<()> {
        let aside = self.root.join(format!("{BEFORE_BACKTRACK}-{epoch}"));
        if !aside.exists() {
            if member.data_dir.exists() {
                return Ok(());
            }
            return Err(Error::Other(format!(
                "cannot cancel the backtrack: neither {} nor {} exists",
                member.data_dir.display(),
                aside.display()
            )));
        }
        if member.data_dir.exists() {
            remove(&member.data_dir).await.map_err(|e| {
                Error::Other(format!("removing the cancelled backtrack's restore: {e}"))
            })?;
        }
        std::fs::rename(&aside, &member.data_dir)
            .and_then(|()| std::fs::File::open(&self.root)?.sync_all())
            .map_err(|e| {
                Error::Other(format!(
                    "putting {} back as {}: {e}",
                    aside.display(),
                    member.data_dir.display()
                ))
            })?;
        Ok(())
    }

    /// The key an encrypted snapshot (and the WAL archive of its cluster: a cluster's
    /// encryption is fixed at its creation) is decrypted with: the Secret it records; None for
    /// a plain one. A cluster restored from an encrypted snapshot must encrypt its own backups.
    fn snapshot_key(
        &self,
        snapshot: &std::path::Path,
        c: &StepCtx<'_>,
    ) -> Result<Option<hanul_db::BackupKey>> {
        if !snapshot.join(hanul_db::ENCRYPTED_BASE).is_file() {
            return Ok(None);
        }
        if !spec_of(c).backup_encrypted {
            return Err(Error::Other(format!(
                "the snapshot {} is encrypted: a cluster restored from it must encrypt its \
                 backups too (set spec.backupEncrypted and spec.backupEncryptionKeySecret)",
                snapshot.display()
            )));
        }
        let r = super::snapshots::read_key_ref(snapshot).ok_or_else(|| {
            Error::Other(format!(
                "the encrypted snapshot {} does not say which Secret encrypted it ({} is missing)",
                snapshot.display(),
                super::snapshots::KEY_REF_FILE
            ))
        })?;
        self.ctx.backup_key_in(&r).map(Some)
    }

    /// This member's local record as the writer of `epoch`, following no one.
    fn as_writer_of(&self, epoch: u64) -> Local {
        let mut local = self.local_ref().clone();
        local.epoch = epoch;
        local.role = ROLE_WRITER.into();
        local.upstream.clear();
        local.upstream_address.clear();
        local.detached = false;
        local
    }

    /// Waits for a restored member's recovery to end in its promotion, then takes its
    /// recovery settings out of its configuration.
    async fn finish_recovery(&self, member: &mut Member, what: &str) -> Result<()> {
        if !member.wait_promoted(RESTORE_TIMEOUT).await? {
            return Err(Error::Other(format!(
                "{what} did not finish recovery within {RESTORE_TIMEOUT:?} (see {})",
                crate::driver::console_log(&self.root).display()
            )));
        }
        member.finish_restore()?;
        member.reload().await?;
        Ok(())
    }

    /// The writer's archiving, every `archive_interval` (see [`Archive`]), in a task of its
    /// own: its queries (a commit among them) never hold the member's loop up. Failures are
    /// left for the next look.
    ///
    /// While the cluster is being deleted (`deleting`), it looks at every pass, and the first
    /// look commits a heartbeat even with no writes since the last one: the archive then
    /// reaches the deletion (the cluster's controller waits for it before the members go when
    /// it retains the automated backups).
    fn archive_look(&self, member: &Member, deleting: bool) {
        if member.archive_dir.is_none() {
            return;
        }
        let force;
        {
            let mut a = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
            if a.looking
                || (!deleting
                    && a.last_look
                        .is_some_and(|t| t.elapsed() < self.ctx.archive_interval))
            {
                return;
            }
            force = deleting && !a.final_heartbeat;
            a.final_heartbeat |= deleting;
            a.last_look = Some(Instant::now());
            a.looking = true;
        }
        let (state, member, name) = (self.archive.clone(), member.clone(), self.name.clone());
        tokio::spawn(async move {
            const LOOK_TIMEOUT: Duration = Duration::from_secs(60);
            match tokio::time::timeout(LOOK_TIMEOUT, archive_step(&state, &member, force)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(member = %name, error = %e, "Could not look at the WAL archiving.")
                }
                Err(_) => debug!(member = %name, "Looking at the WAL archiving timed out."),
            }
            state.lock().unwrap_or_else(PoisonError::into_inner).looking = false;
        });
    }

    fn became_writer(&mut self) {
        self.renewed = Instant::now();
        self.attempted = None;
    }

    /// Starts postgres as a workload and waits until it accepts connections.
    async fn start(&mut self, c: &StepCtx<'_>, member: &mut Member) -> Result<()> {
        if member.upstream.is_some() {
            self.settling = Some(Instant::now() + SETTLE_FOR);
        }
        if !crate::instances::ports::host_port_is_free(member.port, "tcp") {
            // Taken while PostgreSQL was down (the range is shared with instances): move.
            let port = self
                .ctx
                .pick_port(&self.name)
                .ok_or_else(|| Error::Other("no free port left in the node's port range".into()))?;
            warn!(member = %self.name, old = member.port, port, "The member's port is taken; moving to another.");
            let mut local = self.local_ref().clone();
            local.port = port;
            self.save(local)?;
            member.port = port;
            member.configure()?;
        }
        let class = instance_class(&c.spec.instance_class);
        let limits = Limits {
            cpu_millis: class.map_or(0, |c| c.vcpus * 1000),
            memory_mib: class.map_or(0, |c| c.memory_mib),
            pids: 0,
        };
        let spec = LaunchSpec {
            instance: self.name.clone(),
            root: self.root.clone(),
            command: member.postgres_argv(),
            env: member
                .postgres_env()
                .into_iter()
                // As the instances carry it: what runs for a node can be found by it.
                .chain([("HANUL_NODE".to_owned(), self.ctx.node.clone())])
                .collect::<BTreeMap<_, _>>(),
            working_dir: None,
            user: hanul_db::postgres::OS_USER.into(),
            limits,
            user_data: None,
        };
        if let Some(dir) = &member.archive_dir {
            member.prepare_archive_dir(dir)?;
        }
        // Before every start, so that a new member (initdb, base backup) or one whose files
        // came from another (rewind) starts with its cluster's parameters.
        self.apply_parameters(c.object, c.cluster, member, false, true)
            .await?;
        let pid = self.ctx.driver.start(&spec).await?;
        info!(member = %self.name, pid, port = member.port, "Started PostgreSQL.");
        self.observed = None;
        if !member.wait_ready(START_TIMEOUT).await {
            let running = self
                .ctx
                .driver
                .state(&self.name)
                .is_some_and(|s| s.is_running());
            return Err(Error::Other(format!(
                "PostgreSQL did not accept connections within {START_TIMEOUT:?} (running: {running}; see {})",
                crate::driver::console_log(&self.root).display()
            )));
        }
        Ok(())
    }

    /// Stops postgres with `mode`, then makes sure nothing of it runs.
    async fn stop(&mut self, member: &Member, mode: StopMode, timeout: Duration) {
        let running = self
            .ctx
            .driver
            .state(&self.name)
            .is_some_and(|s| s.is_running());
        if running {
            match tokio::time::timeout(timeout, member.stop(mode)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(member = %self.name, error = %e, "pg_ctl stop failed; killing PostgreSQL.")
                }
                Err(_) => warn!(member = %self.name, "pg_ctl stop timed out; killing PostgreSQL."),
            }
        }
        let grace = if mode == StopMode::Immediate {
            Duration::ZERO
        } else {
            STOP_GRACE
        };
        if let Err(e) = self.ctx.driver.stop(&self.name, grace).await {
            warn!(member = %self.name, error = %e, "Could not stop PostgreSQL's processes.");
        }
        self.observed = None;
    }

    async fn observe(&mut self, member: &Member) -> Option<Observation> {
        let reuse = if self.settling() {
            SETTLE_TICK
        } else {
            OBSERVE_EVERY
        };
        if let Some((at, o)) = &self.observed
            && at.elapsed() < reuse
        {
            return Some(o.clone());
        }
        match tokio::time::timeout(self.budget(), member.observe()).await {
            Ok(Ok(o)) => {
                self.observed = Some((Instant::now(), o.clone()));
                Some(o)
            }
            Ok(Err(e)) => {
                debug!(member = %self.name, error = %e, "PostgreSQL did not answer.");
                None
            }
            Err(_) => None,
        }
    }

    /// The parameters of the cluster's group (without those hanul manages); None when the
    /// cluster names a group that does not exist.
    fn wanted_parameters(&self, spec: &DbClusterSpec) -> Option<BTreeMap<String, String>> {
        if spec.parameter_group.is_empty() {
            return Some(BTreeMap::new());
        }
        let o = self
            .ctx
            .parameter_groups
            .get(Kind::DbParameterGroup, &spec.parameter_group)?;
        let Some(Resource::DbParameterGroup(g)) = &o.resource else {
            return None;
        };
        Some(
            g.spec
                .iter()
                .flat_map(|s| &s.parameters)
                .filter(|(k, _)| !is_managed_parameter(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Writes the cluster's parameter group into the member's configuration when it changed
    /// (or always, with `force`: before a start), leaving out what PostgreSQL refuses, and
    /// reloads a running member. A group that does not exist leaves the file as it is.
    async fn apply_parameters(
        &mut self,
        about: &Object,
        cluster: &DbCluster,
        member: &Member,
        running: bool,
        force: bool,
    ) -> Result<()> {
        let spec = cluster.spec.clone().unwrap_or_default();
        let Some(wanted) = self.wanted_parameters(&spec) else {
            return Ok(());
        };
        let group = spec.parameter_group.clone();
        if !force
            && self
                .params
                .as_ref()
                .is_some_and(|p| p.group == group && p.wanted == wanted)
        {
            return Ok(());
        }
        let (changed, refused) = member.write_parameters(&wanted).await?;
        let known: Vec<(String, String)> = self
            .params
            .as_ref()
            .map(|p| p.refused.clone())
            .unwrap_or_default();
        for (name, why) in &refused {
            if !known.iter().any(|(n, w)| n == name && w == why) {
                warn!(member = %self.name, parameter = %name, error = %why, "PostgreSQL refused a parameter of the group; it is left out.");
                self.emit_on(
                    about,
                    WARNING,
                    REASON_PARAMS_INVALID,
                    format!(
                        "PostgreSQL refused parameter {name} of {} on DB instance {}: {why}; it is left out",
                        group_label(&group),
                        self.name
                    ),
                );
            }
        }
        if running {
            // Also when the file did not change: a reload that failed before is done now.
            member.reload().await?;
            self.observed = None;
            if changed {
                info!(member = %self.name, group = %group, "Applying the DB parameter group.");
                self.emit_on(
                    about,
                    NORMAL,
                    REASON_PARAMS_APPLYING,
                    format!(
                        "Applying modification to database parameters ({}) on DB instance {}",
                        group_label(&group),
                        self.name
                    ),
                );
            }
        }
        self.params = Some(Params {
            group,
            wanted,
            refused,
        });
        Ok(())
    }

    /// The member's parameterApplyStatus, the static parameters waiting for a restart, and
    /// a message for the refused ones or a missing group.
    fn parameter_report(
        &self,
        spec: &DbClusterSpec,
        observed: Option<&Observation>,
    ) -> (&'static str, Vec<String>, Option<String>) {
        if self.wanted_parameters(spec).is_none() {
            return (
                PARAMS_APPLYING,
                Vec::new(),
                Some(format!(
                    "DB parameter group {:?} does not exist; its parameters apply once it does",
                    spec.parameter_group
                )),
            );
        }
        let Some(p) = self
            .params
            .as_ref()
            .filter(|p| p.group == spec.parameter_group)
        else {
            return (PARAMS_APPLYING, Vec::new(), None);
        };
        let pending = observed
            .map(|o| o.pending_restart.clone())
            .unwrap_or_default();
        let mut refused: Vec<String> = p
            .refused
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        for n in observed.iter().flat_map(|o| &o.refused_parameters) {
            if !p.refused.iter().any(|(r, _)| r == n) {
                refused.push(format!("{n} (setting could not be applied)"));
            }
        }
        if !refused.is_empty() {
            let message = format!(
                "PostgreSQL refused parameters of {}, which are left out: {}",
                group_label(&p.group),
                refused.join("; ")
            );
            return (PARAMS_INVALID, pending, Some(message));
        }
        if !pending.is_empty() {
            return (PARAMS_PENDING_REBOOT, pending, None);
        }
        (PARAMS_IN_SYNC, pending, None)
    }

    fn local_ref(&self) -> &Local {
        // Set by `local()` at the start of every pass before any step runs.
        self.local
            .as_ref()
            .expect("the member's local state is loaded")
    }

    /// The member's local state, loaded (or created, with a port) on first use.
    fn local(&mut self) -> Result<Local> {
        if let Some(l) = &self.local {
            return Ok(l.clone());
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::Other(format!("creating {}: {e}", self.root.display())))?;
        let mut local = load_local(&self.root).unwrap_or_default();
        if local.port == 0 {
            local.port = self
                .ctx
                .pick_port(&self.name)
                .ok_or_else(|| Error::Other("no free port left in the node's port range".into()))?;
            info!(member = %self.name, port = local.port, "Chose the member's port.");
        }
        self.save(local.clone())?;
        Ok(local)
    }

    fn save(&mut self, local: Local) -> Result<()> {
        let path = self.root.join(LOCAL_FILE);
        let tmp = self.root.join(format!("{LOCAL_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&local).map_err(|e| Error::Other(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Other(format!("writing {}: {e}", path.display())))?;
        self.local = Some(local);
        Ok(())
    }

    /// The hanul-db member for this member's files and settings.
    fn member(&self, cluster: &DbCluster, local: &Local) -> Result<Member> {
        let bin =
            self.ctx.bin.clone().ok_or_else(|| {
                Error::Other("PostgreSQL 15 is not installed on this node".into())
            })?;
        let spec = cluster.spec.clone().unwrap_or_default();
        let mut m = Member::new(bin, &self.root, local.port, &superuser(&spec))?
            .with_exec(Arc::new(super::exec::ReapedExec));
        m.listen = match self.ctx.address.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => "*".into(),
        };
        if local.role == ROLE_STANDBY
            && let Some((host, port)) = split_address(&local.upstream_address)
        {
            m.upstream = Some(Upstream {
                host,
                port,
                user: superuser(&spec),
                password: self.ctx.master_password(&spec)?,
                application_name: self.name.clone(),
            });
        }
        m.detached = local.detached;
        m.backup_key = self.ctx.backup_key(&spec)?;
        if retention_days(&spec) > 0 {
            let uid = cluster.metadata.as_ref().map_or("", |m| m.uid.as_str());
            m.archive_dir = Some(
                self.ctx
                    .backup_dir
                    .join(wal_archive_path(&spec_cluster_name(cluster), uid)),
            );
        }
        if let Some(Resource::DbInstance(i)) = self.object().and_then(|o| o.resource) {
            m.readable = i.spec.is_some_and(|s| s.readable);
        }
        if local.role == ROLE_WRITER
            && let Some((_, o)) = &self.observed
        {
            m.synchronous_standby_names = o.synchronous_standby_names.clone();
        }
        Ok(m)
    }

    async fn ensure_finalizer(&mut self, object: Object) -> Result<Object> {
        if object
            .metadata()
            .is_some_and(|m| m.finalizers.iter().any(|f| f == super::FINALIZER))
        {
            return Ok(object);
        }
        let mut o = object;
        o.metadata_mut()
            .finalizers
            .push(super::FINALIZER.to_string());
        let written = self
            .ctx
            .client
            .update(o)
            .await
            .map_err(|s| api(&self.name, "update", s))?;
        self.latest = Some(written.clone());
        Ok(written)
    }

    /// Writes the status if it differs from the one in the store.
    async fn report(
        &mut self,
        c: &StepCtx<'_>,
        message: Option<String>,
        change: impl Fn(&mut DbInstanceStatus),
    ) -> Result<()> {
        self.write(c, message, None, false, change).await
    }

    /// Writes the status even when nothing else changed (lease renewals, votes).
    async fn report_forced(
        &mut self,
        c: &StepCtx<'_>,
        message: Option<String>,
        change: impl Fn(&mut DbInstanceStatus),
    ) -> Result<()> {
        self.write(c, message, None, true, change).await
    }

    async fn set_state(&mut self, c: &StepCtx<'_>, state: &str, message: &str) -> Result<()> {
        self.write(c, Some(message.to_string()), Some(state), false, |_| {})
            .await
    }

    /// The status from what the node sees, then `change`; written with the object's
    /// resourceVersion as precondition, re-read and retried on a conflict.
    async fn write(
        &mut self,
        c: &StepCtx<'_>,
        message: Option<String>,
        state: Option<&str>,
        force: bool,
        change: impl Fn(&mut DbInstanceStatus),
    ) -> Result<()> {
        let local = self.local_ref().clone();
        let driver_state = self.ctx.driver.state(&self.name);
        let pid = match driver_state {
            Some(WorkloadState::Running { pid, .. }) => i64::from(pid),
            _ => 0,
        };
        let running = pid != 0;
        let observed = self.observed.as_ref().map(|(_, o)| o.clone());
        let address = format!("{}:{}", self.ctx.address, local.port);
        let writer_flush = c.writer_flush;
        let timeout = self.budget();
        // Only for the backtrack under way.
        let backtrack_failures = match self.backtrack_failures {
            (epoch, n)
                if c.cluster
                    .status
                    .as_ref()
                    .and_then(|s| s.backtrack.as_ref())
                    .is_some_and(|b| b.epoch == epoch) =>
            {
                n
            }
            _ => 0,
        };
        let archive = {
            let a = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
            (a.latest, a.last_archived_wal.clone(), a.error.clone())
        };
        let (params_status, pending_restart, params_message) = self.parameter_report(
            &c.cluster.spec.clone().unwrap_or_default(),
            observed.as_ref().filter(|_| running),
        );
        let fill = |s: &mut DbInstanceStatus, generation: i64| {
            s.parameter_apply_status = params_status.to_string();
            s.pending_restart = pending_restart.clone();
            let before = s.state.clone();
            s.observed_generation = generation;
            s.epoch = local.epoch;
            s.address = address.clone();
            s.pid = pid;
            match (&observed, running) {
                (Some(o), true) => {
                    s.role = if o.in_recovery {
                        ROLE_STANDBY
                    } else {
                        ROLE_WRITER
                    }
                    .into();
                    s.timeline = o.timeline;
                    s.flush_lsn = o.flush_lsn;
                    s.receive_lsn = o.receive_lsn.unwrap_or(0);
                    s.replay_lsn = o.replay_lsn.unwrap_or(0);
                    s.streaming = o.streaming();
                    s.lag_seconds = o.lag_seconds;
                    s.lag_bytes = match (o.in_recovery, writer_flush) {
                        (true, Some(f)) => f.saturating_sub(o.replay_lsn.unwrap_or(0)),
                        _ => 0,
                    };
                    // Whatever it was (creating, rejoining, a writer failed or fenced and now
                    // restarted in place): running and answering is available.
                    s.state = STATE_AVAILABLE.into();
                }
                (None, true) => {
                    if s.state.is_empty() {
                        s.state = STATE_CREATING.into();
                    }
                }
                (_, false) => {
                    s.role.clear();
                    s.streaming = false;
                    s.lag_seconds = 0.0;
                    if s.state.is_empty() || s.state == STATE_AVAILABLE && local.role.is_empty() {
                        s.state = STATE_CREATING.into();
                    }
                }
            }
            if let Some(state) = state {
                s.state = state.into();
            }
            match &message {
                Some(m) => s.message = m.clone(),
                None if s.state == STATE_AVAILABLE => {
                    s.message = params_message.clone().unwrap_or_default()
                }
                None => {}
            }
            if archive.0.is_some() {
                s.latest_restorable_time = archive.0;
            }
            s.last_archived_wal = archive.1.clone();
            s.archive_error = archive.2.clone();
            s.backtrack_cancelled = local.backtrack_cancelled;
            s.backtrack_failures = backtrack_failures;
            change(s);
            if s.state != before {
                s.state_time = Some(now());
            }
        };
        let mut object = c.object.clone();
        if let Some(l) = &self.latest
            && l.resource_version() > object.resource_version()
        {
            object = l.clone();
        }
        for _ in 0..4 {
            let Some(Resource::DbInstance(i)) = &mut object.resource else {
                return Ok(());
            };
            let generation = i.metadata.as_ref().map_or(0, |m| m.generation);
            let old = i.status.clone().unwrap_or_default();
            let mut new = old.clone();
            fill(&mut new, generation);
            if new == old && !force {
                return Ok(());
            }
            i.status = Some(new);
            let write = self.ctx.client.update_status(object.clone());
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(written)) => {
                    self.latest = Some(written);
                    return Ok(());
                }
                Ok(Err(s)) if matches!(s.code(), Code::Aborted | Code::FailedPrecondition) => {
                    object = self
                        .ctx
                        .client
                        .get(Kind::DbInstance, &self.name)
                        .await
                        .map_err(|s| api(&self.name, "get", s))?;
                }
                Ok(Err(s)) => return Err(api(&self.name, "update status", s)),
                Err(_) => {
                    return Err(api(
                        &self.name,
                        "update status",
                        tonic::Status::deadline_exceeded("the status write timed out"),
                    ));
                }
            }
        }
        Err(Error::Other(
            "the status kept changing under the write".into(),
        ))
    }

    fn emit(&self, c: &StepCtx<'_>, ty: &'static str, reason: &'static str, message: String) {
        self.emit_on(c.object, ty, reason, message);
    }

    fn emit_on(&self, about: &Object, ty: &'static str, reason: &'static str, message: String) {
        let recorder = self.ctx.recorder.clone();
        let about = about.clone();
        tokio::spawn(async move {
            let _ = recorder.emit(&about, ty, reason, message).await;
        });
    }

    /// Deletion: stop, remove the files, drop the finalizer.
    async fn delete(&mut self, object: &Object) -> Result<Next> {
        self.clean_up().await;
        let mut o = object.clone();
        for _ in 0..4 {
            let before = o.metadata().map_or(0, |m| m.finalizers.len());
            o.metadata_mut()
                .finalizers
                .retain(|f| f != super::FINALIZER);
            if o.metadata().map_or(0, |m| m.finalizers.len()) == before {
                break;
            }
            match self.ctx.client.update(o.clone()).await {
                Ok(_) => break,
                Err(s) if s.code() == Code::NotFound => break,
                Err(s) if matches!(s.code(), Code::Aborted | Code::FailedPrecondition) => {
                    o = match self.ctx.client.get(Kind::DbInstance, &self.name).await {
                        Ok(o) => o,
                        Err(s) if s.code() == Code::NotFound => break,
                        Err(s) => return Err(api(&self.name, "get", s)),
                    };
                }
                Err(s) => return Err(api(&self.name, "update", s)),
            }
        }
        info!(member = %self.name, "DB member deleted from this node.");
        Ok(Next::Done)
    }

    /// The member is not in the cache or is bound elsewhere: the server confirms, then the
    /// member is stopped and its files removed.
    async fn gone(&mut self) -> Result<Next> {
        match self.ctx.client.get(Kind::DbInstance, &self.name).await {
            Ok(o) => {
                let here = matches!(&o.resource, Some(Resource::DbInstance(DbInstance { spec: Some(s), .. })) if s.node == self.ctx.node);
                if here {
                    // The cache is behind.
                    return Ok(Next::Later);
                }
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(api(&self.name, "get", s)),
        }
        info!(member = %self.name, "The DB member is gone or placed elsewhere: stopping and removing it.");
        self.clean_up().await;
        Ok(Next::Done)
    }

    async fn clean_up(&mut self) {
        if let Ok(member) = self.any_member() {
            self.stop(&member, StopMode::Fast, Duration::from_secs(70))
                .await;
        } else if let Err(e) = self.ctx.driver.stop(&self.name, STOP_GRACE).await {
            warn!(member = %self.name, error = %e, "Could not stop PostgreSQL.");
        }
        self.ctx.driver.forget(&self.name);
        if let Err(e) = remove(&self.root).await {
            warn!(member = %self.name, error = %e, "Could not remove the member's directory.");
        }
        self.local = None;
    }

    /// A hanul-db member good enough to stop PostgreSQL, without the cluster.
    fn any_member(&self) -> Result<Member> {
        let local = load_local(&self.root).unwrap_or_default();
        let bin = self
            .ctx
            .bin
            .clone()
            .ok_or_else(|| Error::Other("no PostgreSQL".into()))?;
        Ok(
            Member::new(bin, &self.root, local.port, DEFAULT_MASTER_USERNAME)?
                .with_exec(Arc::new(super::exec::ReapedExec)),
        )
    }
}

/// What a step needs of the pass that decided it.
/// The spec of the cluster a step runs for.
fn spec_of(c: &StepCtx<'_>) -> hanul_proto::v1::DbClusterSpec {
    c.cluster.spec.clone().unwrap_or_default()
}

struct StepCtx<'a> {
    object: &'a Object,
    spec: &'a hanul_proto::v1::DbInstanceSpec,
    cluster: &'a DbCluster,
    view: &'a View<'a>,
    /// The writer's flush position, for a standby's lag in bytes.
    writer_flush: Option<u64>,
}

/// A cluster's name.
fn spec_cluster_name(cluster: &DbCluster) -> String {
    cluster
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// The cluster's backup retention (automated backups, and so WAL archiving, are off at 0).
fn retention_days(spec: &DbClusterSpec) -> u32 {
    spec.backup
        .as_ref()
        .and_then(|b| b.retention_days)
        .unwrap_or(DEFAULT_RETENTION_DAYS)
}

/// One look at the writer's archiving (see [`Archive`]); `force`: a heartbeat even with no
/// writes since the last one.
async fn archive_step(
    state: &std::sync::Mutex<Archive>,
    member: &Member,
    force: bool,
) -> Result<()> {
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    let quiet = lock().quiet_lsn;
    if force || member.current_wal_lsn().await? > quiet {
        let heartbeat = member.heartbeat().await?;
        member.switch_wal().await?;
        let after = member.current_wal_lsn().await?;
        let mut a = lock();
        a.pending.push(heartbeat);
        a.quiet_lsn = after;
    }
    let status = member.archiver().await?;
    let archived = status.last_archived_wal.clone().unwrap_or_default();
    let mut a = lock();
    if let Some(end) = hanul_db::segment_end_lsn(&archived) {
        let (done, waiting): (Vec<hanul_db::Heartbeat>, Vec<hanul_db::Heartbeat>) =
            a.pending.iter().partition(|h| h.lsn <= end);
        if let Some(newest) = done.iter().map(|h| h.at_unix_micros).max() {
            a.latest = Some(from_micros(newest));
        }
        a.pending = waiting;
    }
    // A failure newer than the last success (WAL file names grow): archiving is stuck.
    a.error = match &status.last_failed_wal {
        Some(failed) if *failed >= archived => format!(
            "archiving WAL file {failed} failed (see the member's PostgreSQL log); WAL piles up in pg_wal until it works"
        ),
        _ => String::new(),
    };
    a.last_archived_wal = archived;
    Ok(())
}

/// A protobuf timestamp from microseconds since the epoch.
fn from_micros(micros: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn superuser(spec: &hanul_proto::v1::DbClusterSpec) -> String {
    if spec.master_username.is_empty() {
        DEFAULT_MASTER_USERNAME.into()
    } else {
        spec.master_username.clone()
    }
}

fn api(member: &str, op: &'static str, source: tonic::Status) -> Error {
    Error::Api {
        op,
        member: member.to_string(),
        source,
    }
}

/// `host:port` (the host may be a bracketed IPv6 address).
fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// The local state in `root`, if any.
pub(super) fn load_local(root: &Path) -> Option<Local> {
    let text = std::fs::read(root.join(LOCAL_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

async fn remove(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("10.0.0.1:5432"),
            Some(("10.0.0.1".into(), 5432))
        );
        assert_eq!(split_address("[::1]:5432"), Some(("::1".into(), 5432)));
        assert_eq!(split_address("nope"), None);
    }
}
