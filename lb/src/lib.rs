//! hanul's Elastic Load Balancing data plane, run by the agent of each node a load balancer is
//! placed on.
//!
//! ```text
//!   Config (from the store, via the agent) ──apply──▶ DataPlane
//!                                                      ├─ listeners: http (HTTP/1.1 reverse proxy)
//!                                                      │             tcp  (byte relay)
//!                                                      │   rules ──▶ target group
//!                                                      └─ groups: targets, health checks,
//!                                                                 picking, stickiness, draining
//!   HealthEvent ◀── health changes (the agent writes them to TargetGroup status and events)
//! ```
//!
//! Modules: [`config`] (what to run, plain values), [`health`] (the check state machine and the
//! checks), [`rules`] (listener rule matching), `group` (targets at run time), `http` and
//! `tcp` (the proxies), `wire` (HTTP/1.1 heads and bodies), `upstream` (connections and heads to targets),
//! `pool` (keep-alive connections to targets), `metrics`, `plane`
//! ([`DataPlane`]).

pub mod config;
mod group;
pub mod health;
mod http;
mod metrics;
mod plane;
mod pool;
pub mod rules;
mod tcp;
mod upstream;
mod wire;

pub use config::Config;
pub use group::{HealthEvent, TargetReport};
pub use health::{Health, HealthState};
pub use http::{APP_COOKIE, LB_COOKIE};
pub use plane::{DataPlane, ListenerState};

#[cfg(test)]
mod tests;
