//! Retained automated backups (RDS's `DeleteDBCluster --no-delete-automated-backups` and
//! `DescribeDBClusterAutomatedBackups`): what is kept of a deleted cluster whose
//! `spec.deleteAutomatedBackups` is false, and the retention that removes it in the end.
//!
//! ```text
//!  DBCluster deleting, finalizer RETAIN_BACKUPS_FINALIZER
//!    └─▶ retain: (up to 30 s: the writer archives a heartbeat at the deletion, so that the
//!        window reaches it) ─▶ DBClusterAutomatedBackup (name: the cluster's, or <cluster>-<uid8> when an
//!        earlier cluster's record holds that name) ─▶ its status (window, timelines, settings)
//!        ─▶ the automated DBSnapshots' ownerReferences: cluster → record ─▶ drop the finalizer
//!  DBClusterAutomatedBackup (this module's controller, on the injected clock)
//!    └─▶ plan: snapshots older than retentionDays go (the newest too: no live cluster needs
//!        it), earliestRestorableTime moves forward ─▶ the record goes with its last snapshot
//! ```
//!
//! The WAL archive (`wal/<cluster>-<uid8>`) is the agents': an agent removes the WAL no
//! automated snapshot of the cluster's uid needs when it removes one, and the whole archive
//! when the cluster is gone and no automated snapshot of its uid remains (see the agent's
//! `db::snapshots::prune`). The retained snapshots keep it, and the last one's removal
//! removes it. A restore from the record (`spec.source.automatedBackup`) is resolved like a
//! point-in-time restore of the live cluster was ([`super::backup::resolve_restore`]), from
//! the record's window, timelines and snapshots.

use std::sync::Arc;
use std::time::Duration;

use hanul_proto::db::{
    AUTOMATED_BACKUP_RETAINED, DEFAULT_PORT, DEFAULT_STORAGE_GIB, ENGINE, ENGINE_VERSION,
    RETAIN_BACKUPS_FINALIZER, SNAPSHOT_AVAILABLE, automated_backup_name, wal_archive_path,
};
use hanul_proto::events::{NORMAL, Recorder};
use hanul_proto::v1::{
    DbCluster, DbClusterAutomatedBackup, DbClusterAutomatedBackupSpec,
    DbClusterAutomatedBackupStatus, DbClusterSpec, DbClusterStatus, Object, ObjectMeta,
    OwnerReference, object::Resource,
};
use hanul_proto::{Client, Kind};
use pbjson_types::Timestamp;
use tonic::Code;
use tracing::{info, warn};

use super::backup::{self, DAY, Snapshot};
use crate::runtime::{Action, Cache, Clock, Controller, Metrics, Shutdown, default_error_policy};
use crate::{Error, Result};

pub const CONTROLLER_NAME: &str = "db-automated-backups";

/// How long a deletion that retains automated backups waits for the writer to archive WAL
/// up to it (the writer's agent commits a heartbeat then) before it goes on without.
const FINAL_ARCHIVE_WAIT: Duration = Duration::from_secs(30);

/// Event reason on the cluster when its automated backups are retained.
pub const REASON_RETAINED: &str = "AutomatedBackupsRetained";

/// Whether deleting a cluster with `spec` keeps its automated backups.
pub fn retains(spec: &DbClusterSpec) -> bool {
    spec.delete_automated_backups == Some(false) && backup::retention_days(spec) > 0
}

/// The automated snapshots of the cluster `uid` that are kept: available, not being deleted.
fn retained<'a>(
    snapshots: &'a [Snapshot],
    uid: &'a str,
) -> impl Iterator<Item = &'a Snapshot> + Clone {
    snapshots.iter().filter(move |s| {
        s.automated && !s.deleting && s.cluster_uid == uid && s.phase == SNAPSHOT_AVAILABLE
    })
}

/// The record of the deleted cluster `cluster` (`uid`): its settings, its window as of now
/// (`latest`: how far its WAL is archived, the newest any member reported), its timelines and
/// its retained `snapshots`. Pure.
pub fn record_status(
    cluster: &str,
    uid: &str,
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    latest: Option<Timestamp>,
    snapshots: &[Snapshot],
    retained_at: Timestamp,
) -> DbClusterAutomatedBackupStatus {
    let kept: Vec<&Snapshot> = retained(snapshots, uid).collect();
    DbClusterAutomatedBackupStatus {
        status: AUTOMATED_BACKUP_RETAINED.into(),
        db_cluster: cluster.into(),
        db_cluster_resource_id: uid.into(),
        engine: ENGINE.into(),
        engine_version: ENGINE_VERSION.into(),
        master_username: spec.master_username.clone(),
        port: spec.port.unwrap_or(DEFAULT_PORT),
        storage_gib: spec.storage_gib.unwrap_or(DEFAULT_STORAGE_GIB),
        database_name: spec.database_name.clone(),
        retention_days: backup::retention_days(spec),
        encryption_key_secret: spec
            .backup_encryption_key_secret
            .clone()
            .filter(|_| spec.backup_encrypted),
        wal_path: wal_archive_path(cluster, uid),
        earliest_restorable_time: kept
            .iter()
            .filter_map(|s| s.complete)
            .min()
            .map(|seconds| Timestamp { seconds, nanos: 0 }),
        latest_restorable_time: latest,
        timelines: status.timelines.clone(),
        retained_at: Some(retained_at),
        snapshots: kept.iter().map(|s| s.name.clone()).collect(),
        ..Default::default()
    }
}

/// The record as the source of a restore: the deleted cluster's name, uid, a status holding
/// its window and timelines, its master user and whether it is encrypted (the parts of
/// [`backup::SourceCluster`]). None until the DB controller has written its status.
pub fn as_source(o: &Object) -> Option<(String, String, DbClusterStatus, String, bool)> {
    let Some(Resource::DbClusterAutomatedBackup(r)) = &o.resource else {
        return None;
    };
    let s = r.status.clone().unwrap_or_default();
    if s.db_cluster_resource_id.is_empty() {
        return None;
    }
    let encrypted = s
        .encryption_key_secret
        .as_ref()
        .is_some_and(|k| !k.name.is_empty());
    Some((
        s.db_cluster,
        s.db_cluster_resource_id,
        DbClusterStatus {
            earliest_restorable_time: s.earliest_restorable_time,
            latest_restorable_time: s.latest_restorable_time,
            timelines: s.timelines,
            ..Default::default()
        },
        s.master_username,
        encrypted,
    ))
}

/// What retention does to a record at `now`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retention {
    /// Retained snapshots past the retention days, to delete.
    pub delete: Vec<String>,
    /// The window's start once they are gone (None: nothing left).
    pub earliest: Option<Timestamp>,
    /// The snapshots still kept.
    pub snapshots: Vec<String>,
    /// No snapshot is left: the record goes (and with the last snapshot, the WAL archive).
    pub expired: bool,
    /// When the next snapshot expires (seconds), to look again then.
    pub next: Option<i64>,
}

/// The retention of a record (`status`) with the automated snapshots of its cluster's uid.
/// The expiry is the cluster planner's ([`backup::past_retention`]), without keeping the
/// newest: with no cluster left, nothing needs it once its time is up. Pure.
pub fn plan(
    status: &DbClusterAutomatedBackupStatus,
    snapshots: &[Snapshot],
    now: i64,
) -> Retention {
    let uid = status.db_cluster_resource_id.as_str();
    // A record says how long: at least a day (a cluster with 0 retains nothing).
    let retention = status.retention_days.max(1);
    let ours = retained(snapshots, uid);
    let delete = backup::past_retention(ours.clone(), retention, now, false);
    let kept: Vec<&Snapshot> = ours.filter(|s| !delete.contains(&s.name)).collect();
    let earliest = kept.iter().filter_map(|s| s.complete).min();
    Retention {
        earliest: earliest.map(|seconds| Timestamp { seconds, nanos: 0 }),
        snapshots: kept.iter().map(|s| s.name.clone()).collect(),
        expired: kept.is_empty(),
        next: earliest.map(|t| t + i64::from(retention) * DAY),
        delete,
    }
}

/// The cluster `meta` is being deleted with its automated backups to keep: the record is
/// created (or found: this is idempotent), its status written, the cluster's available
/// automated snapshots moved under it, and then the finalizer that held the deletion dropped.
/// A cluster with no available automated snapshot has nothing to retain.
pub(super) async fn retain(
    ctx: &super::Context,
    object: &Object,
    meta: &ObjectMeta,
    spec: &DbClusterSpec,
    cluster: &DbCluster,
) -> Result<Action> {
    let conflict = || Ok(Action::requeue(Duration::from_millis(100)));
    // The record of this cluster is looked up in the cache: an empty one would make a second.
    if !ctx.automated_backups.has_synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let all = super::snapshots_of(ctx, &meta.name);
    let kept: Vec<&Snapshot> = retained(&all, &meta.uid).collect();
    // How far the WAL is archived: the newest the members or the cluster reported.
    let status = cluster.status.clone().unwrap_or_default();
    let latest = ctx
        .members
        .by_owner_uid(&meta.uid)
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbInstance(i)) => {
                i.status.as_ref().and_then(|s| s.latest_restorable_time)
            }
            _ => None,
        })
        .chain(status.latest_restorable_time)
        .max_by_key(|t| (t.seconds, t.nanos));
    // The writer's agent commits a heartbeat when the deletion starts and archives it: the
    // window then reaches the deletion. Not for long, though: the writer may be down.
    let now = hanul_proto::time::timestamp(ctx.clock.now());
    if !kept.is_empty()
        && let Some(deleted) = meta.deleted_at
        && latest.is_none_or(|l| (l.seconds, l.nanos) < (deleted.seconds, deleted.nanos))
        && now.seconds - deleted.seconds < FINAL_ARCHIVE_WAIT.as_secs() as i64
    {
        return Ok(Action::requeue(Duration::from_millis(250)));
    }
    if !kept.is_empty() {
        let record = match ctx
            .automated_backups
            .list_kind(Kind::DbClusterAutomatedBackup)
            .into_iter()
            .find(|o| match &o.resource {
                Some(Resource::DbClusterAutomatedBackup(r)) => r
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.db_cluster_resource_id == meta.uid),
                _ => false,
            }) {
            Some(o) => (*o).clone(),
            None => {
                let taken = ctx
                    .automated_backups
                    .get(Kind::DbClusterAutomatedBackup, &meta.name)
                    .is_some();
                let name = automated_backup_name(&meta.name, &meta.uid, taken);
                let record = DbClusterAutomatedBackup {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        labels: [(super::CLUSTER_LABEL.to_owned(), meta.name.clone())].into(),
                        ..Default::default()
                    }),
                    spec: Some(DbClusterAutomatedBackupSpec {
                        db_cluster: meta.name.clone(),
                        db_cluster_resource_id: meta.uid.clone(),
                    }),
                    status: None,
                };
                match ctx.client.create(Object::from(record)).await {
                    Ok(o) => o,
                    // Ours, not in the cache yet, or another's taken meanwhile: look again.
                    Err(s) if s.code() == Code::AlreadyExists => return conflict(),
                    Err(s) => {
                        return Err(Error::api(
                            "create",
                            format!("DBClusterAutomatedBackup/{name}"),
                            s,
                        ));
                    }
                }
            }
        };
        let Some(Resource::DbClusterAutomatedBackup(mut r)) = record.resource.clone() else {
            return conflict();
        };
        let rmeta = r.metadata.clone().unwrap_or_default();
        let old = r.status.clone().unwrap_or_default();
        let retained_at = old.retained_at.or(meta.deleted_at).unwrap_or(now);
        let want = record_status(
            &meta.name,
            &meta.uid,
            spec,
            &status,
            latest,
            &all,
            retained_at,
        );
        if old != want {
            r.status = Some(want);
            match ctx.client.update_status(Object::from(r)).await {
                Ok(_) => {}
                Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => return conflict(),
                Err(s) => {
                    return Err(Error::api(
                        "update status",
                        format!("DBClusterAutomatedBackup/{}", rmeta.name),
                        s,
                    ));
                }
            }
        }
        let owner = OwnerReference {
            kind: Kind::DbClusterAutomatedBackup.as_str().into(),
            name: rmeta.name.clone(),
            uid: rmeta.uid.clone(),
            controller: true,
        };
        for s in &kept {
            let Some(o) = ctx.snapshots.get(Kind::DbSnapshot, &s.name) else {
                continue;
            };
            if o.metadata()
                .is_some_and(|m| m.owner_references == [owner.clone()])
            {
                continue;
            }
            let mut o = (*o).clone();
            o.metadata_mut().owner_references = vec![owner.clone()];
            match ctx.client.update(o).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => return conflict(),
                Err(e) => return Err(Error::api("update", format!("DBSnapshot/{}", s.name), e)),
            }
        }
        info!(cluster = %meta.name, record = %rmeta.name, snapshots = kept.len(), "Automated backups retained.");
        let message = format!(
            "Automated backups of DB cluster {} retained in DBClusterAutomatedBackup {} ({} snapshot(s), kept {} day(s))",
            meta.name,
            rmeta.name,
            kept.len(),
            backup::retention_days(spec)
        );
        if let Err(err) = ctx
            .recorder
            .emit(object, NORMAL, REASON_RETAINED, &message)
            .await
        {
            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
        }
    } else {
        info!(cluster = %meta.name, "No available automated snapshot to retain.");
    }
    let mut o = object.clone();
    o.metadata_mut()
        .finalizers
        .retain(|f| f != RETAIN_BACKUPS_FINALIZER);
    match ctx.client.update(o).await {
        Ok(_) => Ok(Action::await_change()),
        Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => conflict(),
        Err(s) => Err(Error::api("update", object.key(), s)),
    }
}

/// What the retention controller needs.
pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    /// Every DBSnapshot.
    pub snapshots: Cache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// The most a record waits before it is looked at again.
const RESYNC: Duration = Duration::from_secs(3600);

/// Expires one record's snapshots past retention, moves its window forward, and deletes it
/// once none is left. Idempotent.
pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::DbClusterAutomatedBackup(r)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let Some(meta) = object.metadata() else {
        return Ok(Action::await_change());
    };
    let old = r.status.clone().unwrap_or_default();
    if meta.deleted_at.is_some() || old.db_cluster_resource_id.is_empty() {
        // Being deleted, or its cluster's controller has not written it yet.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let snapshots: Vec<Snapshot> = ctx
        .snapshots
        .list_kind(Kind::DbSnapshot)
        .iter()
        .filter_map(|o| super::snapshot_of(o))
        .filter(|s| s.cluster_uid == old.db_cluster_resource_id)
        .collect();
    let now = hanul_proto::time::timestamp(ctx.clock.now()).seconds;
    let p = plan(&old, &snapshots, now);
    for name in &p.delete {
        match ctx.client.delete(Kind::DbSnapshot, name).await {
            Ok(_) => {
                info!(record = %meta.name, snapshot = %name, "Retained automated snapshot past retention deleted.")
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::api("delete", format!("DBSnapshot/{name}"), s)),
        }
    }
    if p.expired {
        match ctx
            .client
            .delete(Kind::DbClusterAutomatedBackup, &meta.name)
            .await
        {
            Ok(_) => {
                info!(record = %meta.name, cluster = %old.db_cluster, "Retained automated backups expired; record deleted.");
                let message = format!(
                    "The retained automated backups of DB cluster {} reached the end of their retention",
                    old.db_cluster
                );
                if let Err(err) = ctx
                    .recorder
                    .emit(&object, NORMAL, "AutomatedBackupsExpired", &message)
                    .await
                {
                    warn!(record = %meta.name, error = %err, "Could not record an event.");
                }
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::api("delete", object.key(), s)),
        }
        return Ok(Action::await_change());
    }
    if p.earliest != old.earliest_restorable_time || p.snapshots != old.snapshots {
        let mut r = r.clone();
        let st = r.status.get_or_insert_with(Default::default);
        st.earliest_restorable_time = p.earliest;
        st.snapshots = p.snapshots.clone();
        match ctx.client.update_status(Object::from(r)).await {
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(s) => return Err(Error::api("update status", object.key(), s)),
        }
    }
    let wait = p
        .next
        .map(|t| Duration::from_secs(u64::try_from(t - now + 1).unwrap_or(1)))
        .unwrap_or(RESYNC)
        .clamp(Duration::from_secs(1), RESYNC);
    Ok(Action::requeue(wait))
}

pub async fn run_with(client: Client, metrics: Metrics, shutdown: Shutdown, clock: Arc<dyn Clock>) {
    let controller = Controller::new(client.clone(), Kind::DbClusterAutomatedBackup)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown.clone());
    let snapshots = Cache::new(Some(Kind::DbSnapshot));
    snapshots.start(&client, shutdown.clone());
    // A snapshot concerns the record that owns it.
    let controller = controller.watches_owned_in(snapshots.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), CONTROLLER_NAME),
        client,
        clock,
        snapshots,
    });
    controller
        .run(reconcile, default_error_policy, ctx, 2)
        .await;
}

#[cfg(test)]
mod tests;
