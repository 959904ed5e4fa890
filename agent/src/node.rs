//! Registering this machine as a `Node` and renewing its lease.
//!
//! The agent creates (or takes over) its Node object with zone, address, capacity and port
//! range, then every heartbeat writes `status.lastHeartbeatTime` and a `Ready=True` condition.
//! The node-lifecycle controller turns the node `Unknown` when heartbeats stop; the agent never
//! writes anything but `True`, so a live agent always wins back its node.

use crate::{
    error::{Error, Result},
    system::Capacity,
};
use hanul_proto::time::now;
use hanul_proto::{
    Client, Kind,
    v1::{Condition, Node, NodeSpec, Object, ObjectMeta, Resources, object::Resource},
};
use pbjson_types::Timestamp;
use std::time::Duration;
use tracing::{info, warn};

/// The node condition the agent keeps `True` while it runs.
pub const READY: &str = "Ready";
/// Its reason while the agent heartbeats.
pub const REASON_AGENT_READY: &str = "AgentReady";
/// The node condition saying whether instance CPU and memory limits are enforced here.
pub const LIMITS_ENFORCED: &str = "LimitsEnforced";

/// What the agent says about its node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub zone: String,
    pub address: String,
    pub capacity: Capacity,
    /// Kept back for the agent and the system.
    pub reserved: Capacity,
    pub port_range: String,
    pub agent_endpoint: String,
    pub labels: std::collections::HashMap<String, String>,
    pub limits_enforced: bool,
    /// How limits are enforced (the cgroup version and where), or why they are not.
    pub limits_note: String,
    pub kernel: String,
}

fn resources(c: Capacity) -> Resources {
    Resources {
        cpu_millis: c.cpu_millis,
        memory_mib: c.memory_mib,
    }
}

impl NodeInfo {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            zone: self.zone.clone(),
            address: self.address.clone(),
            capacity: Some(resources(self.capacity)),
            unschedulable: false,
            port_range: self.port_range.clone(),
            agent_endpoint: self.agent_endpoint.clone(),
        }
    }

    fn allocatable(&self) -> Capacity {
        Capacity {
            cpu_millis: self
                .capacity
                .cpu_millis
                .saturating_sub(self.reserved.cpu_millis),
            memory_mib: self
                .capacity
                .memory_mib
                .saturating_sub(self.reserved.memory_mib),
        }
    }
}

/// Creates the Node, or updates the spec of an existing one (a restarted agent; `unschedulable`
/// set by an operator is kept). Refuses to take over a node of another zone.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<Object> {
    let api = |op, source| Error::Api {
        op,
        object: format!("Node/{}", info.name),
        source,
    };
    match client.get(Kind::Node, &info.name).await {
        Ok(mut live) => {
            let Some(Resource::Node(node)) = &mut live.resource else {
                return Err(Error::Config(format!("Node/{} is not a node", info.name)));
            };
            let old = node.spec.clone().unwrap_or_default();
            if !old.zone.is_empty() && old.zone != info.zone {
                return Err(Error::Config(format!(
                    "node {:?} is registered in zone {:?}, not {:?}; delete it first or use another --name",
                    info.name, old.zone, info.zone
                )));
            }
            let mut spec = info.spec();
            spec.unschedulable = old.unschedulable;
            node.spec = Some(spec);
            let meta = node.metadata.get_or_insert_with(Default::default);
            meta.labels.extend(info.labels.clone());
            let updated = client.update(live).await.map_err(|s| api("update", s))?;
            info!(node = %info.name, zone = %info.zone, "Took over the existing node.");
            Ok(updated)
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            let node = Node {
                metadata: Some(ObjectMeta {
                    name: info.name.clone(),
                    labels: info.labels.clone(),
                    ..Default::default()
                }),
                spec: Some(info.spec()),
                status: None,
            };
            let created = client
                .create(node.into())
                .await
                .map_err(|s| api("create", s))?;
            info!(node = %info.name, zone = %info.zone, "Registered the node.");
            Ok(created)
        }
        Err(s) => Err(api("get", s)),
    }
}

/// Writes one heartbeat: `Ready=True`, the time, capacity and what is allocated here.
pub async fn heartbeat(client: &Client, info: &NodeInfo, allocated: Capacity) -> Result<()> {
    let api = |op, source| Error::Api {
        op,
        object: format!("Node/{}", info.name),
        source,
    };
    let mut live = client
        .get(Kind::Node, &info.name)
        .await
        .map_err(|s| api("get", s))?;
    let Some(Resource::Node(node)) = &mut live.resource else {
        return Err(Error::Config(format!("Node/{} is not a node", info.name)));
    };
    let at = now();
    let mut status = node.status.clone().unwrap_or_default();
    set_ready(&mut status.conditions, at);
    set_limits(&mut status.conditions, info, at);
    status.allocatable = Some(resources(info.allocatable()));
    status.allocated = Some(resources(allocated));
    status.agent_version = env!("CARGO_PKG_VERSION").to_string();
    status.last_heartbeat_time = Some(at);
    status.limits_enforced = info.limits_enforced;
    status.kernel = info.kernel.clone();
    status.observed_generation = node.metadata.as_ref().map(|m| m.generation).unwrap_or(0);
    node.status = Some(status);
    // No resourceVersion precondition: the heartbeat owns these fields and must win.
    live.metadata_mut().resource_version = 0;
    client
        .update_status(live)
        .await
        .map_err(|s| api("update-status", s))?;
    Ok(())
}

fn set_ready(conditions: &mut Vec<Condition>, at: Timestamp) {
    let ready = Condition {
        r#type: READY.into(),
        status: "True".into(),
        reason: REASON_AGENT_READY.into(),
        message: "agent is posting ready status".into(),
        last_transition_time: Some(at),
    };
    match conditions.iter_mut().find(|c| c.r#type == READY) {
        Some(c) if c.status == "True" && c.reason == REASON_AGENT_READY => {}
        Some(c) => *c = ready,
        None => conditions.push(ready),
    }
}

fn set_limits(conditions: &mut Vec<Condition>, info: &NodeInfo, at: Timestamp) {
    let (status, reason) = if info.limits_enforced {
        ("True", "CgroupLimits")
    } else {
        ("False", "NoCgroupControllers")
    };
    let c = Condition {
        r#type: LIMITS_ENFORCED.into(),
        status: status.into(),
        reason: reason.into(),
        message: info.limits_note.clone(),
        last_transition_time: Some(at),
    };
    match conditions.iter_mut().find(|c| c.r#type == LIMITS_ENFORCED) {
        Some(old) if old.status == c.status && old.message == c.message => {}
        Some(old) => *old = c,
        None => conditions.push(c),
    }
}

/// Heartbeats every `interval` until `stop` fires; failures are logged and retried.
pub async fn heartbeat_loop(
    client: Client,
    info: NodeInfo,
    interval: Duration,
    allocated: impl Fn() -> Capacity + Send,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = heartbeat(&client, &info, allocated()).await {
            warn!(node = %info.name, error = %e, "Heartbeat failed; retrying.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_keeps_its_transition_time_while_it_stays_true() {
        let t1 = Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let t2 = Timestamp {
            seconds: 2,
            nanos: 0,
        };
        let mut c = Vec::new();
        set_ready(&mut c, t1);
        set_ready(&mut c, t2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Some(t1));
        c[0].status = "Unknown".into();
        c[0].reason = "NodeStatusUnknown".into();
        set_ready(&mut c, t2);
        assert_eq!(
            (c[0].status.as_str(), c[0].last_transition_time),
            ("True", Some(t2))
        );
    }
}
