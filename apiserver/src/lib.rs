//! hanul's API server: the generic object service over a durable, watchable store.
//!
//! Layers, bottom up: [`store`] (bytes, revisions, durable group commit, the watch hub),
//! [`admission`] (defaulting and validation of every kind), [`registry`] (object semantics:
//! resourceVersion, generation, status, finalizers), [`service`] (gRPC), [`server`] (wiring).
//! The server knows nothing of controllers, agents or the CLI, with one exception: [`logs`]
//! proxies an instance's log from its node agent's HTTP endpoint.

pub mod admission;
pub mod auth;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;
mod time;

pub use error::{Error, Result};
pub use server::{Config, Server, StoreBackend, start};
