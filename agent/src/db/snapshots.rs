//! The agent's side of `DBSnapshot`s: a snapshot assigned to a member of this node (the
//! cluster's controller picks it, preferably a standby) is taken here with a base backup of
//! that member into the backup directory; a snapshot this node took is removed from there when
//! it is deleted (a finalizer holds the delete until then).
//!
//! ```text
//!  DBSnapshot status.phase=creating, status.node=me ──▶ finalizer ─▶ pg_basebackup of the member
//!                                                        ─▶ status available (LSNs, size) | failed
//!  DBSnapshot deleting, finalizer, status.node=me ────▶ remove its files (and WAL no snapshot
//!                                                        of its cluster needs) ─▶ drop finalizer
//! ```
//!
//! One task per snapshot, beside the member's own loop: a copy takes minutes, and the member's
//! loop must keep renewing a writer's lease meanwhile.

use std::path::Path;
use std::sync::{Arc, PoisonError};

use hanul_proto::Kind;
use hanul_proto::db::{
    SNAPSHOT_AUTOMATED, SNAPSHOT_AVAILABLE, SNAPSHOT_CREATING, SNAPSHOT_FAILED, SNAPSHOT_FINALIZER,
    wal_archive_path,
};
use hanul_proto::events::{NORMAL, WARNING};
use hanul_proto::time::now;
use hanul_proto::v1::object::Resource;
use hanul_proto::v1::{DbSnapshot, Object, SecretKeyRef};
use tonic::Code;
use tracing::{info, warn};

use super::Context;
use hanul_controllers::runtime::Shutdown;

/// Starts a task for every snapshot this node has something to do for.
pub(super) fn reconcile(ctx: &Arc<Context>, shutdown: &Shutdown) {
    for o in ctx.snapshots.list_kind(Kind::DbSnapshot) {
        let Some(Resource::DbSnapshot(s)) = &o.resource else {
            continue;
        };
        let status = s.status.clone().unwrap_or_default();
        if status.node != ctx.node {
            continue;
        }
        let meta = s.metadata.clone().unwrap_or_default();
        let deleting = meta.deleted_at.is_some();
        let ours = meta.finalizers.iter().any(|f| f == SNAPSHOT_FINALIZER);
        let to_take = !deleting && status.phase == SNAPSHOT_CREATING && !status.member.is_empty();
        if !(to_take || (deleting && ours)) {
            continue;
        }
        let name = meta.name.clone();
        {
            let mut tasks = ctx
                .snapshot_tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !tasks.insert(name.clone()) {
                continue;
            }
        }
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = async {
                    let result = if deleting {
                        remove(&ctx, &name).await
                    } else {
                        take(&ctx, &name).await
                    };
                    if let Err(e) = result {
                        warn!(snapshot = %name, error = %e, "A DB snapshot step failed; it is retried.");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                } => {}
                _ = shutdown.wait() => {}
            }
            ctx.snapshot_tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
        });
    }
}

type Result<T> = std::result::Result<T, String>;

async fn get(ctx: &Context, name: &str) -> Result<Option<(Object, DbSnapshot)>> {
    match ctx.client.get(Kind::DbSnapshot, name).await {
        Ok(o) => match o.resource.clone() {
            Some(Resource::DbSnapshot(s)) => Ok(Some((o, s))),
            _ => Ok(None),
        },
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(format!("reading DBSnapshot/{name}: {}", s.message())),
    }
}

/// Changes the snapshot's status with `change` (re-read and retried on a conflict).
async fn set_status(
    ctx: &Context,
    name: &str,
    change: impl Fn(&mut hanul_proto::v1::DbSnapshotStatus),
) -> Result<()> {
    for _ in 0..4 {
        let Some((_, mut s)) = get(ctx, name).await? else {
            return Ok(());
        };
        change(s.status.get_or_insert_with(Default::default));
        match ctx.client.update_status(Object::from(s)).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::Aborted => continue,
            Err(s) => return Err(format!("writing DBSnapshot/{name}: {}", s.message())),
        }
    }
    Err(format!("DBSnapshot/{name} kept changing under the write"))
}

/// Takes the snapshot from its member on this node.
async fn take(ctx: &Context, name: &str) -> Result<()> {
    let Some((object, snapshot)) = get(ctx, name).await? else {
        return Ok(());
    };
    let status = snapshot.status.clone().unwrap_or_default();
    let spec = snapshot.spec.clone().unwrap_or_default();
    if status.phase != SNAPSHOT_CREATING || status.node != ctx.node || status.path.is_empty() {
        return Ok(());
    }
    // The finalizer first: files are written only while a delete has to wait for their removal.
    let mut with = object.clone();
    if !with
        .metadata()
        .is_some_and(|m| m.finalizers.iter().any(|f| f == SNAPSHOT_FINALIZER))
    {
        with.metadata_mut()
            .finalizers
            .push(SNAPSHOT_FINALIZER.to_string());
        ctx.client
            .update(with)
            .await
            .map_err(|s| format!("adding the finalizer to DBSnapshot/{name}: {}", s.message()))?;
    }
    let started = now();
    set_status(ctx, name, |s| {
        s.started_at = Some(started);
        s.message = format!("copying the data of {}", status.member);
    })
    .await?;
    let (member, key_ref) = ctx.member_here(&status.member, &spec.db_cluster)?;
    let dest = ctx.backup_dir.join(&status.path);
    info!(snapshot = %name, member = %status.member, dest = %dest.display(), "Taking a DB snapshot.");
    let taken = match member.base_backup(&dest).await {
        Ok(info) => match &key_ref {
            Some(r) => write_key_ref(&dest, r)
                .map(|()| info)
                .map_err(|e| hanul_db::Error::Io {
                    what: format!("writing {}", dest.join(KEY_REF_FILE).display()),
                    source: e,
                }),
            None => Ok(info),
        },
        Err(e) => Err(e),
    };
    match taken {
        Ok(info) => {
            let done = now();
            set_status(ctx, name, |s| {
                s.encryption_key_secret = key_ref.clone();
                s.phase = SNAPSHOT_AVAILABLE.into();
                s.snapshot_create_time = Some(done);
                s.start_lsn = info.start_lsn;
                s.end_lsn = info.end_lsn;
                s.timeline = info.timeline;
                s.size_bytes = info.size_bytes;
                s.message.clear();
            })
            .await?;
            let kind = if spec.r#type == SNAPSHOT_AUTOMATED {
                "Automated"
            } else {
                "Manual"
            };
            emit(
                ctx,
                &object,
                NORMAL,
                "SnapshotCreated",
                format!(
                    "{kind} snapshot {name} of DB cluster {} created from {}",
                    spec.db_cluster, status.member
                ),
            );
            info!(snapshot = %name, bytes = info.size_bytes, "DB snapshot taken.");
            prune(ctx, &spec.db_cluster, &status.cluster_uid);
        }
        Err(e) => {
            let why = format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            let _ = std::fs::remove_dir_all(&dest);
            set_status(ctx, name, |s| {
                s.phase = SNAPSHOT_FAILED.into();
                s.message = why.clone();
            })
            .await?;
            emit(
                ctx,
                &object,
                WARNING,
                "SnapshotFailed",
                format!(
                    "Snapshot {name} of DB cluster {} failed: {why}",
                    spec.db_cluster
                ),
            );
        }
    }
    Ok(())
}

/// The file beside an encrypted snapshot's data that names the Secret whose key encrypted it
/// (`NAME\nKEY\n`; a name, no key material): a restore finds the key with it even when the
/// cluster is gone, as the snapshot's `status.encryptionKeySecret` says too.
pub(super) const KEY_REF_FILE: &str = "encryption-key-secret";

/// Writes [`KEY_REF_FILE`] into the snapshot directory `dir`.
fn write_key_ref(dir: &Path, r: &SecretKeyRef) -> std::io::Result<()> {
    let path = dir.join(KEY_REF_FILE);
    let tmp = dir.join(format!(".{KEY_REF_FILE}.tmp"));
    std::fs::write(&tmp, format!("{}\n{}\n", r.name, r.key))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The Secret reference of the encrypted snapshot in `dir` ([`KEY_REF_FILE`]); None if it has
/// none.
pub(super) fn read_key_ref(dir: &Path) -> Option<SecretKeyRef> {
    let text = std::fs::read_to_string(dir.join(KEY_REF_FILE)).ok()?;
    let mut lines = text.lines();
    let name = lines.next().filter(|n| !n.is_empty())?.to_string();
    let key = lines.next().unwrap_or_default().to_string();
    Some(SecretKeyRef { name, key })
}

/// Removes the WAL of `cluster` that no automated snapshot needs any more (older than the
/// oldest one's start); the whole archive once the cluster and its automated snapshots are gone.
fn prune(ctx: &Context, cluster: &str, uid: &str) {
    if uid.is_empty() {
        return;
    }
    let dir = ctx.backup_dir.join(wal_archive_path(cluster, uid));
    let mut oldest: Option<u64> = None;
    let mut any = false;
    for o in ctx.snapshots.list_kind(Kind::DbSnapshot) {
        let Some(Resource::DbSnapshot(s)) = &o.resource else {
            continue;
        };
        let st = s.status.clone().unwrap_or_default();
        let automated = s
            .spec
            .as_ref()
            .is_some_and(|s| s.r#type == SNAPSHOT_AUTOMATED);
        let gone = o.metadata().is_some_and(|m| m.deleted_at.is_some());
        if !automated || gone || st.cluster_uid != uid {
            continue;
        }
        any = true;
        if st.phase == SNAPSHOT_AVAILABLE {
            oldest = Some(oldest.map_or(st.start_lsn, |x| x.min(st.start_lsn)));
        }
    }
    let cluster_exists = ctx
        .clusters
        .get(Kind::DbCluster, cluster)
        .is_some_and(|o| o.metadata().is_some_and(|m| m.uid == uid));
    if !any && !cluster_exists {
        if dir.exists() {
            info!(cluster, dir = %dir.display(), "Removing the WAL archive of a deleted DB cluster.");
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }
    if let Some(lsn) = oldest {
        match hanul_db::prune_wal(&dir, lsn) {
            Ok(0) => {}
            Ok(n) => info!(
                cluster,
                removed = n,
                "Pruned archived WAL no snapshot needs."
            ),
            Err(e) => warn!(cluster, error = %e, "Could not prune the WAL archive."),
        }
    }
}

/// A deleted snapshot this node took: its files go, then the finalizer.
async fn remove(ctx: &Context, name: &str) -> Result<()> {
    let Some((object, snapshot)) = get(ctx, name).await? else {
        return Ok(());
    };
    let status = snapshot.status.clone().unwrap_or_default();
    let spec = snapshot.spec.clone().unwrap_or_default();
    if !status.path.is_empty() {
        let dir = ctx.backup_dir.join(&status.path);
        remove_dir(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        let partial = ctx.backup_dir.join(format!("{}.partial", status.path));
        remove_dir(&partial).map_err(|e| format!("removing {}: {e}", partial.display()))?;
    }
    if spec.r#type == SNAPSHOT_AUTOMATED {
        prune(ctx, &spec.db_cluster, &status.cluster_uid);
    }
    let mut o = object;
    o.metadata_mut()
        .finalizers
        .retain(|f| f != SNAPSHOT_FINALIZER);
    match ctx.client.update(o).await {
        Ok(_) => {
            info!(snapshot = %name, "DB snapshot files removed.");
            Ok(())
        }
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(format!(
            "dropping the finalizer of DBSnapshot/{name}: {}",
            s.message()
        )),
    }
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn emit(ctx: &Context, about: &Object, ty: &'static str, reason: &'static str, message: String) {
    let recorder = ctx.recorder.clone();
    let about = about.clone();
    tokio::spawn(async move {
        let _ = recorder.emit(&about, ty, reason, message).await;
    });
}
