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
//! - [`scheduler`]: binds pending instances to Ready nodes with room, spreads groups across
//!   zones and nodes, and reclaims spot instances for on-demand ones.
//! - [`node_lifecycle`]: marks nodes whose agent stopped heartbeating `Ready=Unknown` and their
//!   instances' status checks failed, and clears them when the agent is back.
//! - [`terminated`]: deletes terminated instances an hour after they terminated, and settles
//!   instances never placed that are wanted stopped or terminated.
//!
//! - [`autoscaling`]: keeps Auto Scaling groups at their desired capacity across zones,
//!   replaces unhealthy instances, holds them at lifecycle hooks, registers them with target
//!   groups and runs instance refreshes.
//! - [`db`]: gives DB clusters their members, names the writer of each epoch, and runs
//!   failovers and switchovers; [`db::automated_backup`] expires the automated backups
//!   retained after a cluster's deletion.
//! - [`elb`]: places load balancers' listeners on Ready nodes per zone, checks the target
//!   groups they name, and sums up their status.
//!
//! [`run_all`] starts all of them; `hanul server` calls it.

pub mod autoscaling;
pub mod db;
pub mod elb;
pub mod error;
pub mod gc;
pub mod node_lifecycle;
pub mod runtime;
pub mod scheduler;
pub mod terminated;

#[cfg(test)]
mod testing;

pub use error::{Error, Result};

use hanul_proto::Client;
use runtime::{Metrics, Shutdown, SystemClock};
use std::sync::Arc;

/// Settings of the controllers that have any.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub scheduler: scheduler::Config,
    pub node_lifecycle: node_lifecycle::Config,
    pub terminated: terminated::Config,
}

/// Runs every controller of this crate until `shutdown` fires, then returns once their running
/// reconciles have finished. Register `metrics` beforehand with [`Metrics::new`] to expose them.
///
/// Fails only if a controller stops unexpectedly (a bug: a panic outside a reconcile).
pub async fn run_all(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    config: Config,
) -> Result<()> {
    // The scheduler and the DB cluster controller both place things on nodes: they share the
    // ledger of placements their caches do not show yet.
    let assumed = Arc::new(scheduler::Assumed::default());
    let controllers = [
        (
            gc::CONTROLLER_NAME,
            tokio::spawn(gc::run(client.clone(), metrics.clone(), shutdown.clone())),
        ),
        (
            scheduler::CONTROLLER_NAME,
            tokio::spawn(scheduler::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
                config.scheduler,
                assumed.clone(),
            )),
        ),
        (
            node_lifecycle::CONTROLLER_NAME,
            tokio::spawn(node_lifecycle::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
                config.node_lifecycle,
            )),
        ),
        (
            elb::CONTROLLER_NAME,
            tokio::spawn(elb::run(client.clone(), metrics.clone(), shutdown.clone())),
        ),
        (
            autoscaling::CONTROLLER_NAME,
            tokio::spawn(autoscaling::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
            )),
        ),
        (
            autoscaling::launch_templates::CONTROLLER_NAME,
            tokio::spawn(autoscaling::launch_templates::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
            )),
        ),
        (
            db::CONTROLLER_NAME,
            tokio::spawn(db::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
                assumed.clone(),
            )),
        ),
        (
            db::automated_backup::CONTROLLER_NAME,
            tokio::spawn(db::automated_backup::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
            )),
        ),
        (
            terminated::CONTROLLER_NAME,
            tokio::spawn(terminated::run_with(
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
                Arc::new(SystemClock),
                config.terminated,
            )),
        ),
    ];
    let joined = controllers.into_iter().map(|(name, task)| async move {
        task.await.map_err(|source| Error::ControllerStopped {
            controller: name.to_string(),
            source,
        })
    });
    futures::future::try_join_all(joined).await?;
    Ok(())
}
