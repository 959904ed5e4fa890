//! The node lifecycle controller: notices agents that stopped heartbeating.
//!
//! ```text
//!             heartbeat (the agent sets Ready=True)
//!   Ready=True ◀──────────────────────────────── Ready=Unknown
//!        │                                          ▲
//!        └── lastHeartbeatTime + grace passes ──────┘ (this controller)
//! ```
//!
//! Agents own `Ready=True`: they set it with every heartbeat (`status.lastHeartbeatTime`).
//! This controller only ever sets `Ready=Unknown` (reason `NodeStatusUnknown`), when the last
//! heartbeat is older than the grace period (15 s by default), with a `NodeNotReady` event.
//! While a node is not Ready, every instance bound to it that holds capacity (pending, running,
//! stopping) shows `StatusCheck=False` (reason `NodeNotReady`), EC2's impaired instance status
//! check; the instances are not moved or deleted (their owner, an ASG, replaces them). When the
//! agent is back and Ready again, those conditions go back to `StatusCheck=True` (reason
//! `NodeReady`). Conditions this controller did not set (another reason) are left alone.
//!
//! One reconcile per node; changes of instances enqueue the node they are bound to. A healthy
//! node is requeued at the moment its lease would expire, so detection is timely without
//! polling.

use crate::{
    Result,
    runtime::{
        Action, Cache, CacheEvent, Clock, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
    scheduler::{CONDITION_READY, conditions},
};
use hanul_proto::{
    Client, Kind,
    events::{Recorder, WARNING},
    instance::InstanceState,
    v1::{Instance, Object, object::Resource},
};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use tonic::Code;
use tracing::{debug, info, warn};

/// The controller's name in metrics, logs and event sources.
pub const CONTROLLER_NAME: &str = "node-lifecycle";

/// The instance condition for EC2's instance status check.
pub const CONDITION_STATUS_CHECK: &str = "StatusCheck";
/// `Ready=Unknown`: the agent stopped posting status.
pub const REASON_NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// `StatusCheck=False`: the instance's node is not Ready.
pub const REASON_NODE_NOT_READY: &str = "NodeNotReady";
/// `StatusCheck=True` after the node came back.
pub const REASON_NODE_READY: &str = "NodeReady";

/// Event reasons.
pub const EVENT_NODE_NOT_READY: &str = "NodeNotReady";
pub const EVENT_STATUS_CHECK_FAILED: &str = "StatusCheckFailed";

/// How long a node may go without a heartbeat before it is not Ready, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(15);

/// The controller's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a node may go without a heartbeat before it is not Ready.
    pub grace: Duration,
    /// How soon to look again after losing a write race.
    pub conflict_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: DEFAULT_GRACE,
            conflict_retry: Duration::from_millis(200),
        }
    }
}

/// Where a node's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The lease holds until `expires`.
    Healthy { expires: SystemTime },
    /// The lease ran out at `since`.
    Expired { since: SystemTime },
}

/// The health of a node whose last heartbeat was at `last_heartbeat`, at `now`, given `grace`.
/// A heartbeat exactly `grace` old has expired.
pub fn node_health(last_heartbeat: SystemTime, now: SystemTime, grace: Duration) -> Health {
    let expires = last_heartbeat + grace;
    if now < expires {
        Health::Healthy { expires }
    } else {
        Health::Expired { since: expires }
    }
}

/// What the controller's reconcile needs.
pub struct Context {
    pub client: Client,
    pub nodes: Cache,
    pub instances: Cache,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    pub config: Config,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Marks `node` not Ready when its lease has run out, and its instances' status checks after
/// its readiness. Idempotent.
pub async fn reconcile(node: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::Node(n)) = &node.resource else {
        return Ok(Action::await_change());
    };
    let now = ctx.clock.now();
    let status = n.status.clone().unwrap_or_default();
    // A node that never heartbeated has had its grace period since it registered.
    let last = status
        .last_heartbeat_time
        .as_ref()
        .or(n.metadata.as_ref().and_then(|m| m.created_at.as_ref()))
        .map(conditions::system_time)
        .unwrap_or(now);
    let health = node_health(last, now, ctx.config.grace);
    let mut ready = conditions::is_true(&status.conditions, CONDITION_READY);

    if let Health::Expired { .. } = health
        && conditions::find(&status.conditions, CONDITION_READY)
            .is_none_or(|c| c.status != conditions::UNKNOWN)
    {
        let t = humantime::format_rfc3339_seconds(last);
        let message = format!("agent stopped posting status (last heartbeat {t})");
        let mut o = (*node).clone();
        if let Some(Resource::Node(n)) = &mut o.resource {
            let status = n.status.get_or_insert_with(Default::default);
            conditions::set(
                &mut status.conditions,
                CONDITION_READY,
                conditions::UNKNOWN,
                REASON_NODE_STATUS_UNKNOWN,
                &message,
                now,
            );
        }
        match ctx.client.update_status(o).await {
            Ok(_) => {
                warn!(node = %node.name(), last_heartbeat = %t, "A node stopped heartbeating; it is not Ready.");
                emit(&ctx, &node, EVENT_NODE_NOT_READY, message);
                ready = false;
            }
            Err(s) if s.code() == Code::NotFound => return Ok(Action::await_change()),
            Err(s) if matches!(s.code(), Code::Aborted | Code::FailedPrecondition) => {
                // It heartbeated meanwhile, most likely; judge it again.
                return Ok(Action::requeue(ctx.config.conflict_retry));
            }
            Err(s) => return Err(crate::Error::api("update status", node.key(), s)),
        }
    }

    let mut conflicts = false;
    for o in ctx.instances.list() {
        let Some(Resource::Instance(i)) = &o.resource else {
            continue;
        };
        if !bound_and_live(i, node.name()) {
            continue;
        }
        let mut next = (*o).clone();
        let Some(Resource::Instance(ni)) = &mut next.resource else {
            continue;
        };
        let status = ni.status.get_or_insert_with(Default::default);
        let changed = if ready {
            let ours =
                conditions::find(&status.conditions, CONDITION_STATUS_CHECK).is_some_and(|c| {
                    c.status == conditions::FALSE && c.reason == REASON_NODE_NOT_READY
                });
            ours && conditions::set(
                &mut status.conditions,
                CONDITION_STATUS_CHECK,
                conditions::TRUE,
                REASON_NODE_READY,
                &format!(
                    "instance status check passed: node {} is Ready",
                    node.name()
                ),
                now,
            )
        } else {
            conditions::set(
                &mut status.conditions,
                CONDITION_STATUS_CHECK,
                conditions::FALSE,
                REASON_NODE_NOT_READY,
                &format!(
                    "instance status check failed: node {} is not ready",
                    node.name()
                ),
                now,
            )
        };
        if !changed {
            continue;
        }
        match ctx.client.update_status(next).await {
            Ok(_) => {
                if ready {
                    info!(instance = %o.name(), node = %node.name(), "The node is back; the instance status check passes.");
                } else {
                    info!(instance = %o.name(), node = %node.name(), "The node is not Ready; the instance is impaired.");
                    emit(
                        &ctx,
                        &o,
                        EVENT_STATUS_CHECK_FAILED,
                        format!(
                            "instance status check failed: node {} is not ready",
                            node.name()
                        ),
                    );
                }
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) if matches!(s.code(), Code::Aborted | Code::FailedPrecondition) => {
                conflicts = true;
            }
            Err(s) => return Err(crate::Error::api("update status", o.key(), s)),
        }
    }
    if conflicts {
        return Ok(Action::requeue(ctx.config.conflict_retry));
    }
    Ok(match health {
        // Just past the expiry, so that the next look sees it expired.
        Health::Healthy { expires } => Action::requeue(
            expires.duration_since(now).unwrap_or_default() + Duration::from_millis(10),
        ),
        Health::Expired { .. } => Action::await_change(),
    })
}

/// Whether `i` is bound to `node` and holds capacity there (pending, running, stopping).
fn bound_and_live(i: &Instance, node: &str) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.node == node && InstanceState::parse(&s.state).is_some_and(InstanceState::holds_capacity)
    })
}

/// Records an event without holding up the reconcile; recording is best effort.
fn emit(ctx: &Context, about: &Object, reason: &'static str, message: String) {
    let recorder = ctx.recorder.clone();
    let about = about.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.emit(&about, WARNING, reason, message).await {
            debug!(object = %about.key(), reason, error = %e, "Could not record an event.");
        }
    });
}

/// The node an instance event concerns (before and after the change).
fn nodes_of_instance() -> KeyMapper {
    Arc::new(|event, _| {
        let node_of = |o: &Object| match &o.resource {
            Some(Resource::Instance(i)) => i
                .status
                .as_ref()
                .map(|s| s.node.clone())
                .filter(|n| !n.is_empty()),
            _ => None,
        };
        let mut keys: Vec<ObjectKey> = match event {
            CacheEvent::Applied { old, new } => old
                .iter()
                .map(|o| o.as_ref())
                .chain([new.as_ref()])
                .filter_map(node_of)
                .map(|n| ObjectKey::new(Kind::Node, n))
                .collect(),
            CacheEvent::Deleted(_) | CacheEvent::Relisted => Vec::new(),
        };
        keys.sort();
        keys.dedup();
        keys
    })
}

/// The controller, ready to run, and its context.
pub fn controller(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    config: Config,
) -> (Controller, Arc<Context>) {
    let instances = Cache::new(Some(Kind::Instance));
    let controller = Controller::new(client.clone(), Kind::Node)
        .named(CONTROLLER_NAME)
        .watches(instances.clone(), nodes_of_instance())
        .metrics(metrics)
        .shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), CONTROLLER_NAME),
        client,
        nodes: controller.cache(),
        instances,
        clock,
        config,
    });
    (controller, ctx)
}

/// Runs the controller until `shutdown`.
pub async fn run_with(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    config: Config,
) {
    let (controller, ctx) = controller(client, metrics, shutdown, clock, config);
    controller
        .run(reconcile, default_error_policy, ctx, 4)
        .await;
}

#[cfg(test)]
mod tests;
