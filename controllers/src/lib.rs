//! hanul's controllers: the loops that drive the declared state toward the observed one, and
//! the small runtime they share.
//!
//! Controllers run inside `hanul server` and talk to the API server only through the gRPC
//! [`Client`], like every other component. Each is a level-triggered
//! `reconcile(object, ctx) -> Result<Action>` run by [`runtime::Controller`] over a watch-fed
//! [`runtime::Cache`] and a [`runtime::WorkQueue`] (dedup, one reconcile per key at a time,
//! per-key backoff with jitter, periodic resync, metrics).
//!
//! Controllers today:
//! - [`gc`]: the garbage collector (objects whose owners are all gone are deleted).
//!
//! [`run_all`] starts all of them; `hanul server` calls it.

pub mod error;
pub mod gc;
pub mod runtime;

#[cfg(test)]
mod testing;

pub use error::{Error, Result};

use hanul_proto::Client;
use runtime::{Metrics, Shutdown};

/// Runs every controller of this crate until `shutdown` fires, then returns once their running
/// reconciles have finished. Register `metrics` beforehand with [`Metrics::new`] to expose them.
///
/// Fails only if a controller stops unexpectedly (a bug: a panic outside a reconcile).
pub async fn run_all(client: Client, metrics: Metrics, shutdown: Shutdown) -> Result<()> {
    let controllers = [(
        gc::CONTROLLER_NAME,
        tokio::spawn(gc::run(client.clone(), metrics.clone(), shutdown.clone())),
    )];
    let joined = controllers.into_iter().map(|(name, task)| async move {
        task.await.map_err(|source| Error::ControllerStopped {
            controller: name.to_string(),
            source,
        })
    });
    futures::future::try_join_all(joined).await?;
    Ok(())
}
