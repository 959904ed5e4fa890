//! The small controller runtime every hanul controller is built on, in the kube-runtime shape.
//!
//! ```text
//!  Client::list_watch ──▶ Cache (reflector) ──events──▶ key mappers ──▶ WorkQueue
//!                           ▲  get / list / by_owner_uid                  │ pop (one key
//!                           │                                              ▼  in flight)
//!                      reconcile(Arc<Object>, Arc<Ctx>) ◀──────────── workers (N)
//!                           │ Ok(Action) / Err(e) ─▶ error_policy ─▶ requeue / backoff / wait
//! ```
//!
//! - [`Cache`]: a watch-fed, synchronously readable map of objects of one kind (or all kinds),
//!   replaced wholesale on every (re-)list; it broadcasts [`CacheEvent`]s after applying them.
//! - [`WorkQueue`]: dedupes keys, never hands out a key that is in flight (a key added while it
//!   runs runs once more afterwards), delays requeues, and keeps per-key exponential [`Backoff`]
//!   with jitter that resets after a success.
//! - [`Controller`]: wires caches, mappers (owned objects enqueue their controller owner),
//!   periodic resync, workers, tracing spans and [`Metrics`] around a level-triggered
//!   `reconcile`.
//! - [`Clock`] gives planners `now` as a parameter; [`Shutdown`] stops everything gracefully.

mod backoff;
mod cache;
mod clock;
mod controller;
mod metrics;
mod queue;
mod shutdown;

pub use backoff::Backoff;
pub use cache::{Cache, CacheEvent, ObjectKey};
pub use clock::{Clock, FakeClock, SystemClock};
pub use controller::{
    Action, Controller, DEFAULT_RESYNC, KeyMapper, ReconcileError, default_error_policy,
};
pub use metrics::{Metrics, ReconcileResult};
pub use queue::WorkQueue;
pub use shutdown::{Shutdown, ShutdownTrigger};

#[cfg(test)]
mod component_tests;
