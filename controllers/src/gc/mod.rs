//! The garbage collector: deletes objects whose owners are all gone (Kubernetes semantics,
//! background propagation).
//!
//! An owner named in `metadata.ownerReferences` is *gone* when no object of its kind and name
//! exists, or one exists with another uid (the owner was deleted and re-created). An owner that
//! still exists with `deletedAt` set (finalizers pending) is not gone: its dependents stay until
//! it really disappears. A dependent with several owners stays while any of them remains.
//!
//! The collector caches every object of every kind (one watch, so owners and dependents are seen
//! in store order) and reconciles those with owner references: when one changes, at each
//! resync, and when one of its owners is deleted (the cache indexes dependents by owner uid). Before
//! deleting, the verdict of the cache is checked against the server with a live read of each
//! owner, so a lagging cache never deletes a dependent whose owner exists. The delete carries
//! the dependent's `resourceVersion`, so one re-adopted meanwhile is not deleted.
//!
//! Deleting a dependent that has dependents of its own cascades the same way: its DELETED event
//! enqueues them in turn.

use crate::{
    Error, Result,
    runtime::{
        Action, Cache, CacheEvent, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
};
use hanul_proto::{
    Client, Kind,
    v1::{Object, OwnerReference},
};
use std::{sync::Arc, time::Duration};
use tonic::Code;
use tracing::{debug, info};

/// The controller's name in metrics and logs.
pub const CONTROLLER_NAME: &str = "garbage-collector";

/// Reconciles at once; deletes are independent.
const CONCURRENCY: usize = 4;

/// How soon to look again when the cache and the server disagree about an owner.
const STALE_CACHE_RECHECK: Duration = Duration::from_secs(2);

/// What the collector's reconcile needs.
pub struct Context {
    pub client: Client,
    /// Every object of every kind.
    pub cache: Cache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Where one owner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// It exists, with the uid the reference names.
    Present,
    /// It exists but is being deleted (finalizers pending): not gone yet.
    Deleting,
    /// No object of that kind and name, or one with another uid.
    Gone,
    /// The reference names a kind this server does not know: never treated as gone.
    Unknown,
}

/// What to do with an object, judged from its owner references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It has no owner references: not the collector's business.
    NoOwners,
    /// At least one owner remains.
    Keep,
    /// Every owner is gone: delete it.
    Orphaned,
}

/// The state of the owner `reference` names, given `owner` (what exists under that kind and
/// name, if anything).
pub fn owner_state(reference: &OwnerReference, owner: Option<&Object>) -> OwnerState {
    if Kind::lookup(&reference.kind).is_none() {
        return OwnerState::Unknown;
    }
    let Some(owner) = owner else {
        return OwnerState::Gone;
    };
    let meta = owner.metadata();
    let uid = meta.map(|m| m.uid.as_str()).unwrap_or("");
    if !reference.uid.is_empty() && uid != reference.uid {
        return OwnerState::Gone;
    }
    if meta.is_some_and(|m| m.deleted_at.is_some()) {
        OwnerState::Deleting
    } else {
        OwnerState::Present
    }
}

/// Judges `object` from its owner references; `lookup` finds an object by kind and name.
pub fn judge(object: &Object, lookup: impl Fn(Kind, &str) -> Option<Arc<Object>>) -> Verdict {
    let refs = object
        .metadata()
        .map(|m| m.owner_references.as_slice())
        .unwrap_or(&[]);
    if refs.is_empty() {
        return Verdict::NoOwners;
    }
    let all_gone = refs.iter().all(|r| {
        let owner = Kind::lookup(&r.kind).and_then(|k| lookup(k, &r.name));
        owner_state(r, owner.as_deref()) == OwnerState::Gone
    });
    if all_gone {
        Verdict::Orphaned
    } else {
        Verdict::Keep
    }
}

/// Deletes `object` if all its owners are gone. Idempotent.
pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(meta) = object.metadata() else {
        return Ok(Action::await_change());
    };
    if meta.deleted_at.is_some() {
        // Its delete was asked for already; its finalizers decide when it goes.
        return Ok(Action::await_change());
    }
    if judge(&object, |kind, name| ctx.cache.get(kind, name)) != Verdict::Orphaned {
        return Ok(Action::await_change());
    }
    // The cache says every owner is gone; make sure the server agrees before deleting.
    for r in &meta.owner_references {
        let Some(kind) = Kind::lookup(&r.kind) else {
            return Ok(Action::await_change());
        };
        let live = match ctx.client.get(kind, &r.name).await {
            Ok(o) => Some(o),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                return Err(Error::api("get", format!("{kind}/{}", r.name), status));
            }
        };
        if owner_state(r, live.as_ref()) != OwnerState::Gone {
            debug!(owner = %format!("{kind}/{}", r.name), "The cache is behind: an owner still exists.");
            return Ok(Action::requeue(STALE_CACHE_RECHECK));
        }
    }
    let key = object.key();
    let Some(kind) = object.kind() else {
        return Ok(Action::await_change());
    };
    match ctx
        .client
        .delete_at(kind, &meta.name, meta.resource_version, false)
        .await
    {
        Ok(resp) => {
            info!(object = %key, removed = resp.removed, "Deleted an object whose owners are all gone.");
            Ok(Action::await_change())
        }
        Err(status) if status.code() == Code::NotFound => Ok(Action::await_change()),
        Err(status) if matches!(status.code(), Code::Aborted | Code::FailedPrecondition) => {
            // It changed since we judged it (perhaps re-adopted); its change event brings it
            // back here with the new owners.
            debug!(object = %key, "Changed while being judged; judging it again.");
            Ok(Action::await_change())
        }
        Err(status) => Err(Error::api("delete", key, status)),
    }
}

/// Enqueues the dependents of every deleted object.
fn dependents_of_deleted() -> KeyMapper {
    Arc::new(|event, cache| match event {
        CacheEvent::Deleted(owner) => {
            let uid = owner.metadata().map(|m| m.uid.as_str()).unwrap_or("");
            if uid.is_empty() {
                return Vec::new();
            }
            cache
                .by_owner_uid(uid)
                .iter()
                .filter_map(|o| ObjectKey::of(o))
                .collect()
        }
        _ => Vec::new(),
    })
}

/// The collector, ready to run, and its context.
pub fn controller(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
) -> (Controller, Arc<Context>) {
    let controller = Controller::all_kinds(client.clone())
        .named(CONTROLLER_NAME)
        // Objects without owners are cached (they may be owners) but never judged: their
        // verdict is always `NoOwners`, and every write of every kind would otherwise cost a
        // reconcile.
        .reconciles_only(|o| o.metadata().is_some_and(|m| !m.owner_references.is_empty()))
        .map_primary(dependents_of_deleted())
        .metrics(metrics)
        .shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        client,
        cache: controller.cache(),
    });
    (controller, ctx)
}

/// Runs the collector until `shutdown`.
pub async fn run(client: Client, metrics: Metrics, shutdown: Shutdown) {
    let (controller, ctx) = controller(client, metrics, shutdown);
    controller
        .run(reconcile, default_error_policy, ctx, CONCURRENCY)
        .await;
}

#[cfg(test)]
mod tests;
