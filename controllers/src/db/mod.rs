//! The DB cluster controller: gives each `DBCluster` its members (`DBInstance`s placed on
//! nodes, run by their agents), names the writer of each epoch, runs failovers and
//! switchovers, and sums the members up in the cluster's status.
//!
//! ```text
//!  DBCluster ──────────┐                               ┌─▶ status (epoch, writer, failover,
//!  owned DBInstances ──┼─▶ plan (pure, see [`plan`]) ──┤     sync set, members, endpoints),
//!  Nodes, room left ───┘   + lease silence per member  │     written first, resourceVersion-checked
//!                                                      └─▶ effects: create / delete DBInstances
//! ```
//!
//! The room on each node is the scheduler's accounting (its allocatable less the instances
//! and DB members there), so a member is created only where its instance class fits; a
//! cluster waiting for room looks again at every node change and at least once a second.
//!
//! The writer's lease is watched here: every change of a member's `leaseEpoch` or
//! `leaseRenewals` is noted with this process's monotonic clock, and the planner is told how
//! long each member has been silent. A controller that restarts counts silence from its start,
//! so a restart never shortens a lease. The protocol is in `hanul_proto::db`.

pub mod automated_backup;
pub mod backtrack;
pub mod backup;
pub mod maintenance;
pub mod plan;

use crate::{
    Error, Result,
    runtime::{
        Action, Cache, CacheEvent, Clock, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
    scheduler::{
        self, Assumed, CONDITION_READY,
        assumed::{Holder, Placement},
        conditions,
    },
};
use hanul_proto::{
    Client, Kind,
    db::{
        BACKTRACK_ANNOTATION, BACKTRACK_CANCEL_ANNOTATION, ENGINE, ENGINE_VERSION,
        FINAL_SNAPSHOT_FINALIZER, MEMBER_FINALIZER, PHASE_AVAILABLE, PHASE_BACKING_UP,
        REBOOT_ANNOTATION, RETAIN_BACKUPS_FINALIZER, SNAPSHOT_AUTOMATED, SNAPSHOT_AVAILABLE,
        SNAPSHOT_CREATING, SNAPSHOT_FAILED, SNAPSHOT_MANUAL, SWITCHOVER_ANNOTATION,
    },
    events::{NORMAL, Recorder, WARNING},
    v1::{
        DbInstance, DbInstanceSpec, DbSnapshot, DbSnapshotSpec, Object, ObjectMeta, OwnerReference,
        object::Resource,
    },
};
use plan::{Effect, Input, Member, NodeInfo};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tonic::Code;
use tracing::{info, warn};

pub const CONTROLLER_NAME: &str = "db-clusters";

/// How a member is named in the placement ledger it shares with the scheduler.
fn member_holder(cluster: &str, name: &str) -> Holder {
    Holder::DbMember {
        cluster: cluster.into(),
        name: name.into(),
    }
}

/// The label that names a member's cluster.
pub const CLUSTER_LABEL: &str = "db.hanul.dev/cluster";

pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    /// Every DBInstance: this cluster's members, and the others' that hold room on nodes.
    pub members: Cache,
    pub nodes: Cache,
    /// Instances and instance types: what the instances on a node hold.
    pub instances: Cache,
    pub types: Cache,
    /// Every DBSnapshot (a cluster's own, and the sources of restores).
    pub snapshots: Cache,
    /// The clusters (the sources of point-in-time restores).
    pub clusters: Cache,
    /// The retained automated backups of deleted clusters (`DBClusterAutomatedBackup`): the
    /// sources of restores, and where a deleted cluster's backups go.
    pub automated_backups: Cache,
    /// member → (leaseEpoch, leaseRenewals, when this process saw them change).
    leases: Mutex<HashMap<String, (u64, u64, Instant)>>,
    /// Placements this controller and the scheduler decided that the caches may not show
    /// yet: members being created, instances being bound.
    assumed: Arc<Assumed>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// How long `member` has shown no lease change, noting the one it shows now.
    fn lease_silence(&self, member: &str, epoch: u64, renewals: u64) -> Duration {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        match leases.get_mut(member) {
            Some(seen) if (seen.0, seen.1) == (epoch, renewals) => now - seen.2,
            Some(seen) => {
                *seen = (epoch, renewals, now);
                Duration::ZERO
            }
            None => {
                // First sight (this process just started, or the member is new): its last
                // renewal may have been a moment ago, so the silence counts from now. That
                // only ever lengthens a lease, never shortens it.
                leases.insert(member.to_owned(), (epoch, renewals, now));
                Duration::ZERO
            }
        }
    }
}

fn member_of(o: &Object, ctx: &Context) -> Option<(String, Member)> {
    let Some(Resource::DbInstance(i)) = &o.resource else {
        return None;
    };
    let meta = o.metadata()?;
    let spec = i.spec.clone().unwrap_or_default();
    let status = i.status.clone().unwrap_or_default();
    let lease_silence = ctx.lease_silence(&meta.name, status.lease_epoch, status.lease_renewals);
    Some((
        meta.name.clone(),
        Member {
            spec_role: spec.role,
            zone: spec.zone,
            node: spec.node,
            readable: spec.readable,
            deleting: meta.deleted_at.is_some(),
            state: status.state,
            role: status.role,
            epoch: status.epoch,
            address: status.address,
            timeline: status.timeline,
            flush_lsn: status.flush_lsn,
            receive_lsn: status.receive_lsn,
            replay_lsn: status.replay_lsn,
            lag_seconds: status.lag_seconds,
            streaming: status.streaming,
            lease_epoch: status.lease_epoch,
            lease_silence,
            vote: status.vote.map(|v| (v.epoch, v.lsn, v.timeline)),
            parameter_apply_status: status.parameter_apply_status,
            latest_restorable_time: status.latest_restorable_time,
            message: status.message,
            backtrack_failures: status.backtrack_failures,
            backtrack_cancelled: status.backtrack_cancelled,
        },
    ))
}

/// For a clone with no data yet: the nodes that run an available member of its source (see
/// [`NodeInfo::clone_source`]).
fn clone_source_nodes(
    ctx: &Context,
    spec: &hanul_proto::v1::DbClusterSpec,
    members: &BTreeMap<String, Member>,
) -> Vec<String> {
    let Some(source) = spec.source.as_ref().filter(|s| s.clone) else {
        return Vec::new();
    };
    if members.values().any(|m| !m.role.is_empty() || m.epoch > 0) {
        return Vec::new();
    }
    match ctx
        .clusters
        .get(Kind::DbCluster, &source.cluster)
        .and_then(|o| o.resource.clone())
    {
        Some(Resource::DbCluster(c)) => c
            .status
            .unwrap_or_default()
            .members
            .into_iter()
            .filter(|m| m.state == hanul_proto::db::STATE_AVAILABLE && !m.node.is_empty())
            .map(|m| m.node)
            .collect(),
        _ => Vec::new(),
    }
}

/// The nodes, each with what is free on it as the scheduler counts it: instances and DB
/// members of every cluster.
fn nodes(ctx: &Context) -> Vec<NodeInfo> {
    let views = scheduler::node_views(&ctx.nodes);
    let free = scheduler::free_on_nodes(&views, &ctx.instances, &ctx.types, &ctx.members);
    ctx.nodes
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::Node(n)) => {
                let spec = n.spec.clone().unwrap_or_default();
                let status = n.status.clone().unwrap_or_default();
                Some(NodeInfo {
                    name: o.name().to_owned(),
                    zone: spec.zone,
                    address: spec.address,
                    ready: !spec.unschedulable
                        && conditions::is_true(&status.conditions, CONDITION_READY),
                    free: free.get(o.name()).copied().unwrap_or_default(),
                    clone_source: false,
                })
            }
            _ => None,
        })
        .collect()
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::DbCluster(cluster)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let Some(meta) = object.metadata() else {
        return Ok(Action::await_change());
    };
    let spec = cluster.spec.clone().unwrap_or_default();
    if meta.deleted_at.is_some() {
        // The final snapshot first, then the automated backups are retained, then the
        // members go.
        if meta
            .finalizers
            .iter()
            .all(|f| f != FINAL_SNAPSHOT_FINALIZER)
            && meta
                .finalizers
                .iter()
                .any(|f| f == RETAIN_BACKUPS_FINALIZER)
        {
            return automated_backup::retain(&ctx, &object, meta, &spec, cluster).await;
        }
        return final_snapshot(&ctx, &object, meta, &spec, cluster).await;
    }
    // A cluster with a final snapshot to take holds its deletion until it is taken; one whose
    // automated backups outlive it, until they are retained.
    let wanted = [
        (
            FINAL_SNAPSHOT_FINALIZER,
            !spec.final_snapshot_identifier.is_empty(),
        ),
        (RETAIN_BACKUPS_FINALIZER, automated_backup::retains(&spec)),
    ];
    let has = |f: &str| meta.finalizers.iter().any(|x| x == f);
    if wanted.iter().any(|(f, wants)| *wants != has(f)) {
        let mut o = (*object).clone();
        let finalizers = &mut o.metadata_mut().finalizers;
        for (f, wants) in wanted {
            finalizers.retain(|x| x != f);
            if wants {
                finalizers.push(f.into());
            }
        }
        return match ctx.client.update(o).await {
            Ok(_) => Ok(Action::requeue(Duration::from_millis(20))),
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                Ok(Action::requeue(Duration::from_millis(20)))
            }
            Err(s) => Err(Error::api("update", object.key(), s)),
        };
    }
    let old = cluster.status.clone().unwrap_or_default();
    let members: BTreeMap<String, Member> = ctx
        .members
        .by_owner_uid(&meta.uid)
        .iter()
        .filter_map(|o| member_of(o, &ctx))
        .collect();
    let now = ctx.clock.now();
    let now_secs = backtrack::secs(&hanul_proto::time::timestamp(now));
    // A backtrack request not acted on yet, checked against the window and given its base.
    let snapshots = snapshots_of(&ctx, &meta.name);
    let backtrack = meta
        .annotations
        .get(BACKTRACK_ANNOTATION)
        .filter(|r| **r != old.backtrack_handled)
        .map(|request| {
            let resolved = backtrack::resolve(&backtrack::Input {
                cluster: &meta.name,
                uid: &meta.uid,
                spec: &spec,
                status: &old,
                snapshots: &snapshots,
                request,
                now: now_secs,
            });
            (request.as_str(), resolved)
        });
    let mut plan = {
        // Plans of clusters reconciled at the same time, and the scheduler's passes, must not
        // give the same room twice: the placements of the others that the caches do not show
        // yet count against their nodes, and this plan's are noted before the lock goes.
        let mut ledger = ctx.assumed.lock();
        let unseen = ledger.unseen(ctx.instances.revision(), ctx.members.revision());
        let mut nodes = nodes(&ctx);
        for node in clone_source_nodes(&ctx, &spec, &members) {
            if let Some(n) = nodes.iter_mut().find(|n| n.name == node) {
                n.clone_source = true;
            }
        }
        for (holder, placed) in &unseen {
            // This cluster's own are the plan's to decide again.
            let own = matches!(holder, Holder::DbMember { cluster, .. } if *cluster == meta.name);
            if !own && let Some(n) = nodes.iter_mut().find(|n| n.name == placed.node) {
                n.free = n.free.minus(placed.size);
            }
        }
        let input = Input {
            cluster: &meta.name,
            generation: meta.generation,
            spec: &spec,
            status: &old,
            members: &members,
            nodes: &nodes,
            switchover: meta
                .annotations
                .get(SWITCHOVER_ANNOTATION)
                .map(String::as_str),
            reboot: meta.annotations.get(REBOOT_ANNOTATION).map(String::as_str),
            backtrack,
            backtrack_cancel: meta
                .annotations
                .get(BACKTRACK_CANCEL_ANNOTATION)
                .map(String::as_str),
            now,
        };
        let plan = plan::plan(&input);
        let size = plan::class_size(&spec).1.unwrap_or_default();
        for e in &plan.effects {
            if let Effect::Create {
                name, node, zone, ..
            } = e
            {
                ledger.assume(
                    member_holder(&meta.name, name),
                    Placement {
                        node: node.clone(),
                        zone: zone.clone(),
                        class: spec.instance_class.clone(),
                        size,
                    },
                );
            }
        }
        plan
    };
    let backups = plan_backups(&ctx, meta, &spec, &mut plan.status, &members, &old);
    plan.status.earliest_backtrack_time =
        backtrack::earliest_backtrack_status(&spec, &plan.status, now_secs);

    if plan.status != old {
        let mut updated = cluster.clone();
        updated.status = Some(plan.status.clone());
        match ctx.client.update_status(Object::from(updated)).await {
            Ok(_) => {}
            // The cluster changed since it was read: plan again from the new one.
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                return Ok(Action::requeue(Duration::from_millis(20)));
            }
            Err(s) => return Err(Error::api("update status", object.key(), s)),
        }
        if plan.status.epoch != old.epoch || plan.status.failover != old.failover {
            info!(
                cluster = %meta.name,
                epoch = plan.status.epoch,
                writer = %plan.status.writer,
                failover = ?plan.status.failover,
                "Cluster writer state changed."
            );
        }
    }
    for e in &plan.events {
        let ty = if e.warning { WARNING } else { NORMAL };
        if let Err(err) = ctx.recorder.emit(&object, ty, e.reason, &e.message).await {
            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
        }
    }
    for e in &plan.effects {
        match e {
            Effect::Create {
                name,
                role,
                zone,
                node,
                readable,
            } => {
                let member = DbInstance {
                    metadata: Some(owned_by_cluster(name, meta)),
                    spec: Some(DbInstanceSpec {
                        cluster: meta.name.clone(),
                        role: role.clone(),
                        zone: zone.clone(),
                        node: node.clone(),
                        instance_class: spec.instance_class.clone(),
                        readable: *readable,
                        storage_gib: spec.storage_gib.unwrap_or_default(),
                    }),
                    status: None,
                };
                let holder = member_holder(&meta.name, name);
                match ctx.client.create(Object::from(member)).await {
                    Ok(created) => {
                        ctx.assumed.written(&holder, created.resource_version());
                        info!(cluster = %meta.name, member = %name, %node, "Created member.")
                    }
                    // Decided again before the cache showed it: its first create's note stands.
                    Err(s) if s.code() == Code::AlreadyExists => {}
                    Err(s) => {
                        ctx.assumed.forget(&holder);
                        return Err(Error::api("create", format!("DBInstance/{name}"), s));
                    }
                }
            }
            Effect::Replace { name } => {
                match ctx.client.delete(Kind::DbInstance, name).await {
                    Ok(_) => {
                        info!(cluster = %meta.name, member = %name, "Replacing a member whose node is gone.")
                    }
                    Err(s) if s.code() == Code::NotFound => continue,
                    Err(s) => return Err(Error::api("delete", format!("DBInstance/{name}"), s)),
                }
                // Nobody else will release it: its agent is gone with its node.
                if let Ok(mut o) = ctx.client.get(Kind::DbInstance, name).await {
                    o.metadata_mut()
                        .finalizers
                        .retain(|f| f != MEMBER_FINALIZER);
                    // A conflict or a member gone already: the next pass looks again.
                    let _ = ctx.client.update(o).await;
                }
            }
            Effect::Delete { name } => match ctx.client.delete(Kind::DbInstance, name).await {
                Ok(_) => info!(cluster = %meta.name, member = %name, "Deleting member."),
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(Error::api("delete", format!("DBInstance/{name}"), s)),
            },
        }
    }
    if let Some(r) = &plan.status.restore
        && plan.status.restore != old.restore
    {
        let (ty, reason, message) = if r.error.is_empty() {
            let to = r
                .target_time
                .as_ref()
                .map(|t| format!(" to {}", hanul_proto::time::rfc3339(t)))
                .unwrap_or_default();
            let from = if !r.automated_backup.is_empty() {
                format!(
                    "the retained automated backups {} of DB cluster {} (snapshot {})",
                    r.automated_backup, r.source_cluster, r.snapshot
                )
            } else if r.source_cluster.is_empty() {
                format!("DB snapshot {}", r.snapshot)
            } else {
                format!("DB cluster {} (snapshot {})", r.source_cluster, r.snapshot)
            };
            (
                NORMAL,
                "RestoreStarted",
                format!("Restoring DB cluster {} from {from}{to}", meta.name),
            )
        } else {
            (
                WARNING,
                "RestoreWaiting",
                format!("DB cluster {} cannot be restored: {}", meta.name, r.error),
            )
        };
        if let Err(err) = ctx.recorder.emit(&object, ty, reason, &message).await {
            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
        }
    }
    apply_backups(&ctx, &object, meta, &spec, &backups).await?;
    if let Some(request) = maintenance::reboot_due(
        &spec,
        &plan.status,
        meta.annotations.get(REBOOT_ANNOTATION).map(String::as_str),
        hanul_proto::time::timestamp(ctx.clock.now()).seconds,
    ) {
        let mut o = (*object).clone();
        o.metadata_mut()
            .annotations
            .insert(REBOOT_ANNOTATION.into(), request);
        match ctx.client.update(o).await {
            Ok(_) => {
                info!(cluster = %meta.name, "Maintenance window: rebooting to apply pending-reboot parameters.");
                let message = format!(
                    "Rebooting DB cluster {} in its maintenance window to apply parameter changes that wait for a reboot",
                    meta.name
                );
                if let Err(err) = ctx
                    .recorder
                    .emit(&object, NORMAL, "MaintenanceReboot", &message)
                    .await
                {
                    warn!(cluster = %meta.name, error = %err, "Could not record an event.");
                }
            }
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {}
            Err(s) => return Err(Error::api("update", object.key(), s)),
        }
    }
    // Members' lease silences grow without any change: look again at least once a second.
    let wake = plan
        .wake
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    Ok(Action::requeue(wake))
}

/// A cluster being deleted with `spec.finalSnapshotIdentifier`: takes that manual snapshot
/// (from a standby when one streams), then drops the finalizer so that the members go. A
/// failed final snapshot is taken again; the cluster stays until one is available (or the
/// field is cleared).
async fn final_snapshot(
    ctx: &Context,
    object: &Object,
    meta: &ObjectMeta,
    spec: &hanul_proto::v1::DbClusterSpec,
    cluster: &hanul_proto::v1::DbCluster,
) -> Result<Action> {
    if !meta
        .finalizers
        .iter()
        .any(|f| f == FINAL_SNAPSHOT_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let name = &spec.final_snapshot_identifier;
    let event = |ty, reason: &'static str, message: String| async move {
        if let Err(err) = ctx.recorder.emit(object, ty, reason, &message).await {
            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
        }
    };
    let release = || async {
        let mut o = object.clone();
        o.metadata_mut()
            .finalizers
            .retain(|f| f != FINAL_SNAPSHOT_FINALIZER);
        match ctx.client.update(o).await {
            Ok(_) => Ok(Action::await_change()),
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                Ok(Action::requeue(Duration::from_millis(20)))
            }
            Err(s) => Err(Error::api("update", object.key(), s)),
        }
    };
    if name.is_empty() {
        return release().await;
    }
    let existing = ctx
        .snapshots
        .get(Kind::DbSnapshot, name)
        .and_then(|o| snapshot_of(&o).map(|s| (o, s)));
    let Some((o, s)) = existing else {
        let snapshot = DbSnapshot {
            metadata: Some(ObjectMeta {
                name: name.clone(),
                labels: [(CLUSTER_LABEL.to_owned(), meta.name.clone())].into(),
                ..Default::default()
            }),
            spec: Some(DbSnapshotSpec {
                db_cluster: meta.name.clone(),
                r#type: SNAPSHOT_MANUAL.into(),
            }),
            status: None,
        };
        match ctx.client.create(Object::from(snapshot)).await {
            Ok(_) => {
                event(
                    NORMAL,
                    "FinalSnapshotStarted",
                    format!(
                        "Taking final snapshot {name} of DB cluster {} before it is deleted",
                        meta.name
                    ),
                )
                .await
            }
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(Error::api("create", format!("DBSnapshot/{name}"), s)),
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let of_other = match &o.resource {
        Some(Resource::DbSnapshot(x)) => x.spec.as_ref().is_some_and(|x| x.db_cluster != meta.name),
        _ => false,
    } || (!s.cluster_uid.is_empty() && s.cluster_uid != meta.uid);
    if of_other {
        event(
            WARNING,
            "FinalSnapshotExists",
            format!("DB snapshot {name} exists and is not of this cluster: the deletion waits until it is gone or spec.finalSnapshotIdentifier changes"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    match s.phase.as_str() {
        SNAPSHOT_AVAILABLE => {
            event(
                NORMAL,
                "FinalSnapshotCreated",
                format!(
                    "Final snapshot {name} of DB cluster {} created; deleting the cluster",
                    meta.name
                ),
            )
            .await;
            release().await
        }
        SNAPSHOT_FAILED if !s.deleting => {
            event(
                WARNING,
                "FinalSnapshotFailed",
                format!(
                    "Final snapshot {name} of DB cluster {} failed; taking it again",
                    meta.name
                ),
            )
            .await;
            match ctx.client.delete(Kind::DbSnapshot, name).await {
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(Error::api("delete", format!("DBSnapshot/{name}"), e)),
            }
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        _ => {
            // Assign it like any snapshot of the cluster: the members still run.
            let members: BTreeMap<String, Member> = ctx
                .members
                .by_owner_uid(&meta.uid)
                .iter()
                .filter_map(|o| member_of(o, ctx))
                .collect();
            let status = cluster.status.clone().unwrap_or_default();
            let b = backup::plan(&backup::Input {
                cluster: &meta.name,
                uid: &meta.uid,
                spec: &hanul_proto::v1::DbClusterSpec {
                    backup: Some(hanul_proto::v1::BackupSettings {
                        retention_days: Some(0),
                        ..Default::default()
                    }),
                    ..spec.clone()
                },
                status: &status,
                members: &members,
                snapshots: std::slice::from_ref(&s),
                now: hanul_proto::time::timestamp(ctx.clock.now()).seconds,
            });
            let assign: Vec<backup::Effect> = b
                .effects
                .into_iter()
                .filter(|e| matches!(e, backup::Effect::Assign { .. }))
                .collect();
            apply_backups(ctx, object, meta, spec, &assign).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}

/// The metadata of an object the cluster owns (a member, an automated snapshot): its name,
/// the cluster's label, and the cluster as controller owner (deleted with it).
fn owned_by_cluster(name: &str, cluster: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        labels: [(CLUSTER_LABEL.to_owned(), cluster.name.clone())].into(),
        owner_references: vec![OwnerReference {
            kind: Kind::DbCluster.as_str().into(),
            name: cluster.name.clone(),
            uid: cluster.uid.clone(),
            controller: true,
        }],
        ..Default::default()
    }
}

/// A DBSnapshot as the backup planner sees it.
fn snapshot_of(o: &Object) -> Option<backup::Snapshot> {
    let Some(Resource::DbSnapshot(s)) = &o.resource else {
        return None;
    };
    let meta = o.metadata()?;
    let spec = s.spec.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    Some(backup::Snapshot {
        name: meta.name.clone(),
        automated: spec.r#type == SNAPSHOT_AUTOMATED,
        phase: status.phase,
        member: status.member,
        cluster_uid: status.cluster_uid,
        deleting: meta.deleted_at.is_some(),
        created: meta.created_at.as_ref().map_or(0, |t| t.seconds),
        // Rounded up: a restore to a time before the copy was complete cannot start from it.
        complete: status
            .snapshot_create_time
            .as_ref()
            .map(|t| t.seconds + i64::from(t.nanos > 0)),
        path: status.path,
        master_username: status.master_username,
        encrypted: status
            .encryption_key_secret
            .is_some_and(|k| !k.name.is_empty()),
    })
}

/// The snapshots of the cluster named `cluster`.
fn snapshots_of(ctx: &Context, cluster: &str) -> Vec<backup::Snapshot> {
    ctx.snapshots
        .list_kind(Kind::DbSnapshot)
        .iter()
        .filter(|o| match &o.resource {
            Some(Resource::DbSnapshot(s)) => {
                s.spec.as_ref().is_some_and(|s| s.db_cluster == cluster)
            }
            _ => false,
        })
        .filter_map(|o| snapshot_of(o))
        .collect()
}

/// The backup side of a reconcile: the restorable window and phase go into `status` (written
/// with the rest of it), the effects are returned for [`apply_backups`]. A cluster created from
/// a `source` gets its `status.restore` here, once, before any member holds data.
fn plan_backups(
    ctx: &Context,
    meta: &ObjectMeta,
    spec: &hanul_proto::v1::DbClusterSpec,
    status: &mut hanul_proto::v1::DbClusterStatus,
    members: &BTreeMap<String, Member>,
    old: &hanul_proto::v1::DbClusterStatus,
) -> Vec<backup::Effect> {
    let snapshots = snapshots_of(ctx, &meta.name);
    let b = backup::plan(&backup::Input {
        cluster: &meta.name,
        uid: &meta.uid,
        spec,
        status,
        members,
        snapshots: &snapshots,
        now: hanul_proto::time::timestamp(ctx.clock.now()).seconds,
    });
    status.latest_restorable_time = b.latest_restorable_time;
    status.earliest_restorable_time = b.earliest_restorable_time;
    status.last_backup_time = b.last_backup_time;
    if b.backing_up && status.phase == PHASE_AVAILABLE {
        status.phase = PHASE_BACKING_UP.into();
    }
    let unresolved = old.restore.as_ref().is_none_or(|r| !r.error.is_empty());
    let nobody_has_data = members.values().all(|m| m.role.is_empty() && m.epoch == 0);
    if let Some(source) = &spec.source
        && unresolved
        && nobody_has_data
    {
        let snapshot = (!source.snapshot.is_empty())
            .then(|| ctx.snapshots.get(Kind::DbSnapshot, &source.snapshot))
            .flatten()
            .and_then(|o| snapshot_of(&o));
        let cluster = (!source.cluster.is_empty())
            .then(|| ctx.clusters.get(Kind::DbCluster, &source.cluster))
            .flatten();
        let cluster_parts = if source.automated_backup.is_empty() {
            cluster.as_ref().and_then(|o| match &o.resource {
                Some(Resource::DbCluster(c)) => {
                    let spec = c.spec.clone().unwrap_or_default();
                    Some((
                        o.name().to_string(),
                        o.metadata().map(|m| m.uid.clone()).unwrap_or_default(),
                        c.status.clone().unwrap_or_default(),
                        spec.master_username,
                        spec.backup_encrypted,
                    ))
                }
                _ => None,
            })
        } else {
            // The retained backups of a deleted cluster restore as that cluster did.
            ctx.automated_backups
                .get(Kind::DbClusterAutomatedBackup, &source.automated_backup)
                .and_then(|o| automated_backup::as_source(&o))
        };
        let source_snapshots = cluster_parts
            .as_ref()
            .map(|(name, _, _, _, _)| snapshots_of(ctx, name))
            .unwrap_or_default();
        let source_cluster = cluster_parts
            .as_ref()
            .map(
                |(name, uid, status, user, encrypted)| backup::SourceCluster {
                    name,
                    uid,
                    status,
                    snapshots: &source_snapshots,
                    master_username: user,
                    backup_encrypted: *encrypted,
                },
            );
        status.restore = Some(backup::resolve_restore(
            spec,
            snapshot.as_ref(),
            source_cluster.as_ref(),
        ));
    }
    b.effects
}

/// Creates, deletes and assigns snapshots as [`plan_backups`] decided; an event for each new
/// snapshot and for a restore that cannot start.
async fn apply_backups(
    ctx: &Context,
    object: &Object,
    meta: &ObjectMeta,
    spec: &hanul_proto::v1::DbClusterSpec,
    effects: &[backup::Effect],
) -> Result<()> {
    for e in effects {
        match e {
            backup::Effect::Create { name } => {
                let snapshot = DbSnapshot {
                    metadata: Some(owned_by_cluster(name, meta)),
                    spec: Some(DbSnapshotSpec {
                        db_cluster: meta.name.clone(),
                        r#type: SNAPSHOT_AUTOMATED.into(),
                    }),
                    status: None,
                };
                match ctx.client.create(Object::from(snapshot)).await {
                    Ok(_) => {
                        info!(cluster = %meta.name, snapshot = %name, "Automated snapshot requested.");
                        let message = format!(
                            "Backing up DB cluster {}: automated snapshot {name}",
                            meta.name
                        );
                        if let Err(err) = ctx
                            .recorder
                            .emit(object, NORMAL, "BackupStarted", &message)
                            .await
                        {
                            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
                        }
                    }
                    Err(s) if s.code() == Code::AlreadyExists => {}
                    Err(s) => return Err(Error::api("create", format!("DBSnapshot/{name}"), s)),
                }
            }
            backup::Effect::Delete { name } => {
                match ctx.client.delete(Kind::DbSnapshot, name).await {
                    Ok(_) => {
                        info!(cluster = %meta.name, snapshot = %name, "Automated snapshot past retention deleted.")
                    }
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => return Err(Error::api("delete", format!("DBSnapshot/{name}"), s)),
                }
            }
            backup::Effect::Assign { name, member, node } => {
                let Some(current) = ctx.snapshots.get(Kind::DbSnapshot, name) else {
                    continue;
                };
                let Some(Resource::DbSnapshot(mut s)) = current.resource.clone() else {
                    continue;
                };
                let uid = s
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                let st = s.status.get_or_insert_with(Default::default);
                st.phase = SNAPSHOT_CREATING.into();
                st.member = member.clone();
                st.node = node.clone();
                st.cluster_uid = meta.uid.clone();
                st.engine = ENGINE.into();
                st.engine_version = ENGINE_VERSION.into();
                st.master_username = spec.master_username.clone();
                st.storage_gib = spec.storage_gib.unwrap_or_default();
                st.database_name = spec.database_name.clone();
                st.path = backup::path_of(name, &uid);
                st.message = format!("to be taken from {member} on {node}");
                match ctx.client.update_status(Object::from(s)).await {
                    Ok(_) => {
                        info!(cluster = %meta.name, snapshot = %name, %member, "Snapshot assigned.")
                    }
                    Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {}
                    Err(s) => {
                        return Err(Error::api("update status", format!("DBSnapshot/{name}"), s));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs the DB cluster controller until `shutdown`. `assumed` is the ledger it shares with the
/// scheduler of the same process.
pub async fn run_with(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    assumed: Arc<Assumed>,
) {
    let controller = Controller::new(client.clone(), Kind::DbCluster)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown.clone());
    let clusters = controller.cache();
    let primary = clusters.clone();
    let members = Cache::new(Some(Kind::DbInstance));
    let nodes = Cache::new(Some(Kind::Node));
    nodes.start(&client, shutdown.clone());
    // Node changes may concern any cluster: there are few of them.
    let every: KeyMapper = {
        let primary = primary.clone();
        Arc::new(move |_, _| {
            primary
                .keys()
                .into_iter()
                .filter(|k: &ObjectKey| k.kind == Kind::DbCluster)
                .collect()
        })
    };
    // What instances hold on nodes, for placing members: read, not watched, as a cluster
    // waiting for room looks again within a second anyway (see the end of `reconcile`), and
    // node changes enqueue every cluster.
    let instances = Cache::new(Some(Kind::Instance));
    let types = Cache::new(Some(Kind::InstanceType));
    let snapshots = Cache::new(Some(Kind::DbSnapshot));
    snapshots.start(&client, shutdown.clone());
    // Read when a deletion retains a cluster's automated backups (records of the same name).
    let automated_backups = Cache::new(Some(Kind::DbClusterAutomatedBackup));
    // A snapshot concerns the cluster it is of.
    let of_cluster: KeyMapper = Arc::new(|event, _| {
        let object = match event {
            CacheEvent::Applied { new, .. } => new,
            CacheEvent::Deleted(o) => o,
            _ => return Vec::new(),
        };
        match &object.resource {
            Some(Resource::DbSnapshot(s)) => s
                .spec
                .as_ref()
                .map(|s| vec![ObjectKey::new(Kind::DbCluster, s.db_cluster.clone())])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    });
    let controller = controller
        .watches_owned_in(members.clone())
        .watches(nodes.clone(), every)
        .watches(snapshots.clone(), of_cluster)
        .reads(instances.clone())
        .reads(types.clone())
        .reads(automated_backups.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), CONTROLLER_NAME),
        client,
        clock,
        members,
        nodes,
        instances,
        types,
        snapshots,
        clusters,
        automated_backups,
        leases: Mutex::new(HashMap::new()),
        assumed,
    });
    controller
        .run(reconcile, default_error_policy, ctx, 4)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::{
        client::WatchUpdate,
        instance::InstanceState,
        v1::{Instance, InstanceSpec, InstanceStatus, InstanceType, InstanceTypeSpec},
    };

    fn cache(kind: Kind, items: Vec<Object>) -> Cache {
        let c = Cache::new(Some(kind));
        c.apply(WatchUpdate::Listed { items, revision: 1 });
        c
    }

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        })
    }

    fn db_member(name: &str, cluster: &str, node: &str, class: &str) -> Object {
        DbInstance {
            metadata: meta(name),
            spec: Some(DbInstanceSpec {
                cluster: cluster.into(),
                node: node.into(),
                instance_class: class.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    fn instance(name: &str, ty: &str, node: &str, state: InstanceState) -> Object {
        Instance {
            metadata: meta(name),
            spec: Some(InstanceSpec {
                instance_type: ty.into(),
                state: "running".into(),
                ..Default::default()
            }),
            status: Some(InstanceStatus {
                node: node.into(),
                state: state.as_str().into(),
                ..Default::default()
            }),
        }
        .into()
    }

    #[test]
    fn free_room_counts_instances_and_the_members_of_every_cluster() {
        let nodes = cache(
            Kind::Node,
            vec![
                crate::testing::node("node-a", "az-a", 16_000, 65_536),
                crate::testing::node("node-b", "az-b", 16_000, 65_536),
            ],
        );
        let types = cache(
            Kind::InstanceType,
            vec![
                InstanceType {
                    metadata: meta("m1.large"),
                    spec: Some(InstanceTypeSpec {
                        vcpu: 4,
                        memory_mib: 8192,
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            ],
        );
        let instances = cache(
            Kind::Instance,
            vec![
                instance("web", "m1.large", "node-a", InstanceState::Running),
                // Terminated: holds nothing.
                instance("old", "m1.large", "node-a", InstanceState::Terminated),
            ],
        );
        let mut gone = db_member("gone-1", "gone", "node-a", "db.r5.xlarge");
        gone.metadata_mut().deleted_at = Some(Default::default());
        let members = cache(
            Kind::DbInstance,
            vec![
                db_member("orders-1", "orders", "node-a", "db.m5.large"),
                db_member("billing-1", "billing", "node-a", "db.t3.micro"),
                db_member("billing-2", "billing", "node-b", "db.m5.xlarge"),
                gone,
            ],
        );
        let views = scheduler::node_views(&nodes);
        let free = scheduler::free_on_nodes(&views, &instances, &types, &members);
        // node-a: 16 vCPUs less m1.large (4), db.m5.large (2) and db.t3.micro (2).
        assert_eq!(
            free["node-a"],
            scheduler::plan::Free {
                cpu: 8_000,
                mem: 65_536 - 8192 - 8192 - 1024,
            }
        );
        assert_eq!(
            free["node-b"],
            scheduler::plan::Free {
                cpu: 12_000,
                mem: 65_536 - 16_384,
            }
        );
    }
}

/// The controller against an in-process API server, with the placement ledger it shares with
/// the scheduler: the test plays the scheduler by noting a binding in it.
#[cfg(test)]
mod placement_tests {
    use super::*;
    use crate::runtime::{ShutdownTrigger, SystemClock};
    use crate::testing::{TestServer, eventually};
    use hanul_proto::v1::{DbCluster, DbClusterSpec};

    const WITHIN: Duration = Duration::from_secs(10);

    fn cluster(name: &str) -> Object {
        DbCluster {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(DbClusterSpec {
                engine: ENGINE.into(),
                engine_version: ENGINE_VERSION.into(),
                deployment: hanul_proto::db::SINGLE_AZ.into(),
                instance_class: "db.t3.micro".into(),
                zones: vec!["az-a".into()],
                master_username: "postgres".into(),
                master_password: "secret-password".into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    async fn members(client: &Client) -> Vec<DbInstance> {
        let (items, _) = client.list(Some(Kind::DbInstance), "").await.unwrap();
        items
            .into_iter()
            .filter_map(|o| match o.resource {
                Some(Resource::DbInstance(d)) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// The scheduler of the same process has just bound an instance that takes all of node-a
    /// (noted in the ledger, its write not yet seen): the cluster's member is not placed there
    /// and the cluster says why; once the binding is dropped, the member is placed.
    #[tokio::test]
    async fn a_binding_the_cache_does_not_show_yet_holds_its_room() {
        let t = TestServer::start().await;
        let c = &t.client;
        crate::testing::ready_node(c, crate::testing::node("node-a", "az-a", 2000, 2048)).await;
        let assumed = Arc::new(Assumed::default());
        let web = Holder::Instance("web-1".into());
        assumed.lock().assume(
            web.clone(),
            Placement {
                node: "node-a".into(),
                zone: "az-a".into(),
                class: "m1.small".into(),
                size: scheduler::plan::Size::new(2000, 2048),
            },
        );
        let (trigger, shutdown): (ShutdownTrigger, Shutdown) = Shutdown::new();
        let task = tokio::spawn(run_with(
            c.clone(),
            Metrics::default(),
            shutdown,
            Arc::new(SystemClock),
            assumed.clone(),
        ));
        c.create(cluster("orders")).await.unwrap();
        eventually("the cluster waiting for room", WITHIN, || async {
            let o = c
                .get(Kind::DbCluster, "orders")
                .await
                .map_err(|e| e.to_string())?;
            let Some(Resource::DbCluster(d)) = o.resource else {
                return Err("not a cluster".into());
            };
            let status = d.status.unwrap_or_default();
            let waiting = conditions::find(&status.conditions, plan::CONDITION_MEMBERS_PLACED)
                .is_some_and(|c| {
                    c.status == conditions::FALSE && c.reason == plan::REASON_INSUFFICIENT_CAPACITY
                });
            if waiting {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await;
        assert!(members(c).await.is_empty());

        assumed.forget(&web);
        let placed = eventually("the member placed", WITHIN, || async {
            members(c)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "no member".to_string())
        })
        .await;
        assert_eq!(placed.spec.unwrap().node, "node-a");
        // Its create is noted, with the revision of its write: a cache from before the write
        // does not show it, a cache past every write does.
        let name = placed.metadata.unwrap().name;
        let unseen = assumed.lock().unseen(0, 0);
        assert!(
            unseen
                .iter()
                .any(|(h, p)| *h == member_holder("orders", &name) && p.node == "node-a"),
            "{unseen:?}"
        );
        eventually("the create's revision noted", WITHIN, || async {
            let unseen = assumed.lock().unseen(0, u64::MAX);
            if unseen.is_empty() {
                Ok(())
            } else {
                Err(format!("{unseen:?}"))
            }
        })
        .await;
        trigger.trigger();
        task.await.unwrap();
        t.stop().await;
    }
}
