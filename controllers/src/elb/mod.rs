//! The load balancer controller: places each `LoadBalancer`'s listeners on one Ready node in
//! each of its zones, checks the target groups its listeners name, and sums it all up in
//! `status` (`state`, `reason`, `addresses`, `dnsName`).
//!
//! ```text
//!  LoadBalancer ─┐                          status.nodes[] {node, zone, address, state, reason}
//!  Node ─────────┼─▶ plan (pure) ─▶ status    state/reason written by the node's agent, which
//!  TargetGroup ──┘                            runs the listeners (see the agent's elb module)
//! ```
//!
//! Placement is sticky: a node keeps its load balancers while it is Ready (if two were placed
//! on one node with one port at once, from caches that had not seen each other, the older
//! keeps it and the younger moves). A new placement
//! prefers schedulable nodes, skips nodes where another load balancer holds one of the listener
//! ports, and then takes the node with the fewest load balancers. The controller writes which
//! nodes; each node's agent writes whether its listeners are up; the overall state is `failed`
//! if a reference is wrong, no node can take a port, or an agent could not listen; `active`
//! when every placed node listens; `provisioning` otherwise.

use crate::{
    Error, Result,
    runtime::{Action, Controller, KeyMapper, Metrics, ObjectKey, Shutdown, default_error_policy},
    scheduler::{CONDITION_READY, conditions},
};
use hanul_proto::{
    Client, Kind,
    v1::{LoadBalancer, LoadBalancerNode, LoadBalancerStatus, Object, object::Resource},
};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tonic::Code;
use tracing::info;

pub const CONTROLLER_NAME: &str = "load-balancers";

/// What placement needs to know of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub zone: String,
    pub address: String,
    pub ready: bool,
    pub unschedulable: bool,
}

/// A target group's protocol by name: what the references are checked against.
pub type Groups = HashMap<String, String>;

/// The status `lb` should have. `nodes`: every node; `others`: the other load balancers
/// (their `status.nodes` say where their ports are taken).
pub fn plan(
    name: &str,
    lb: &LoadBalancer,
    nodes: &[NodeView],
    others: &[(&str, &LoadBalancer)],
    groups: &Groups,
) -> LoadBalancerStatus {
    let spec = lb.spec.clone().unwrap_or_default();
    let old = lb.status.clone().unwrap_or_default();
    let ports: Vec<u32> = spec.listeners.iter().map(|l| l.port).collect();
    let ready = |n: &str| nodes.iter().find(|v| v.name == n && v.ready);

    // Where other load balancers hold ports, and how many each node runs. Two placed on one
    // node with one port (placed at once, from caches that did not show each other yet): the
    // older one keeps the node, the younger moves.
    let age = |o: &LoadBalancer, name: &str| {
        let created = o
            .metadata
            .as_ref()
            .and_then(|m| m.created_at.as_ref())
            .map(|t| (t.seconds, t.nanos))
            .unwrap_or((i64::MAX, 0));
        (created, name.to_owned())
    };
    let me = age(lb, name);
    let mut taken: HashMap<(&str, u32), &str> = HashMap::new();
    let mut held_by_older: HashMap<(&str, u32), &str> = HashMap::new();
    let mut load: HashMap<&str, usize> = HashMap::new();
    for (other, o) in others {
        let older = age(o, other) < me;
        let other_ports: Vec<u32> = o
            .spec
            .iter()
            .flat_map(|s| &s.listeners)
            .map(|l| l.port)
            .collect();
        for n in o.status.iter().flat_map(|s| &s.nodes) {
            *load.entry(n.node.as_str()).or_default() += 1;
            for p in &other_ports {
                taken.insert((n.node.as_str(), *p), other);
                if older {
                    held_by_older.insert((n.node.as_str(), *p), other);
                }
            }
        }
    }

    let mut zones: Vec<String> = Vec::new();
    for z in &spec.zones {
        if !zones.contains(z) {
            zones.push(z.clone());
        }
    }
    if zones.is_empty() {
        // One zone: the one it is in while its node is Ready, else the first Ready node's.
        let kept = old
            .nodes
            .iter()
            .find(|e| ready(&e.node).is_some())
            .map(|e| e.zone.clone());
        let mut candidates: Vec<&NodeView> = nodes.iter().filter(|n| n.ready).collect();
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(zone) = kept.or_else(|| candidates.first().map(|n| n.zone.clone())) {
            zones.push(zone);
        }
    }

    let mut placed = Vec::new();
    let mut waiting = Vec::new();
    let mut failure: Option<String> = None;
    for zone in &zones {
        let clashes = |node: &str| {
            ports
                .iter()
                .any(|p| held_by_older.contains_key(&(node, *p)))
        };
        if let Some(e) = old
            .nodes
            .iter()
            .find(|e| &e.zone == zone && ready(&e.node).is_some() && !clashes(&e.node))
        {
            let mut e = e.clone();
            if let Some(n) = ready(&e.node) {
                e.address = n.address.clone();
            }
            placed.push(e);
            continue;
        }
        let mut candidates: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.ready && &n.zone == zone)
            .collect();
        if candidates.is_empty() {
            waiting.push(format!("no Ready node in zone {zone}"));
            continue;
        }
        candidates.sort_by_key(|n| {
            (
                n.unschedulable,
                load.get(n.name.as_str()).copied().unwrap_or(0),
                n.name.clone(),
            )
        });
        let conflict = |n: &NodeView| {
            ports
                .iter()
                .find_map(|p| taken.get(&(n.name.as_str(), *p)).map(|o| (*p, *o)))
        };
        match candidates.iter().find(|n| conflict(n).is_none()) {
            Some(n) => placed.push(LoadBalancerNode {
                node: n.name.clone(),
                zone: zone.clone(),
                address: n.address.clone(),
                state: "provisioning".into(),
                reason: String::new(),
            }),
            None => {
                let (port, other) = conflict(candidates[0]).unwrap_or_default();
                failure.get_or_insert(format!(
                    "listener port {port} is in use by load balancer {other:?} on every Ready node in zone {zone}"
                ));
            }
        }
    }
    if zones.is_empty() {
        waiting.push("no Ready node in any zone".into());
    }

    // References: every target group named exists, with the listener's protocol.
    for l in &spec.listeners {
        let names = std::iter::once(l.default_target_group.as_str())
            .chain(l.rules.iter().map(|r| r.target_group.as_str()))
            .filter(|n| !n.is_empty());
        for g in names {
            let problem = match groups.get(g) {
                None => Some(format!(
                    "listener {}: target group {g:?} does not exist",
                    l.port
                )),
                Some(p) if !l.protocol.is_empty() && *p != l.protocol => Some(format!(
                    "listener {}: target group {g:?} is {p}, the listener {}",
                    l.port, l.protocol
                )),
                Some(_) => None,
            };
            if let Some(p) = problem {
                failure.get_or_insert(p);
            }
        }
    }
    if failure.is_none()
        && let Some(e) = placed.iter().find(|e| e.state == "failed")
    {
        failure = Some(format!("node {}: {}", e.node, e.reason));
    }

    let (state, reason) = match failure {
        Some(why) => ("failed", why),
        None if !placed.is_empty()
            && waiting.is_empty()
            && placed.iter().all(|e| e.state == "active") =>
        {
            ("active", String::new())
        }
        None => {
            let mut why = waiting;
            why.extend(
                placed
                    .iter()
                    .filter(|e| e.state != "active")
                    .map(|e| format!("waiting for the listeners on node {}", e.node)),
            );
            ("provisioning", why.join("; "))
        }
    };
    let mut addresses: Vec<String> = placed
        .iter()
        .flat_map(|e| ports.iter().map(move |p| format!("{}:{p}", e.address)))
        .collect();
    addresses.sort();
    addresses.dedup();
    LoadBalancerStatus {
        observed_generation: lb.metadata.as_ref().map_or(0, |m| m.generation),
        conditions: old.conditions,
        state: state.into(),
        reason,
        addresses,
        dns_name: format!("{name}.elb.hanul.internal"),
        nodes: placed,
    }
}

pub struct Context {
    pub client: Client,
    /// Nodes, target groups, and the load balancers themselves.
    pub nodes: crate::runtime::Cache,
    pub groups: crate::runtime::Cache,
    pub load_balancers: crate::runtime::Cache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

fn node_view(o: &Object) -> Option<NodeView> {
    let Some(Resource::Node(n)) = &o.resource else {
        return None;
    };
    let spec = n.spec.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    Some(NodeView {
        name: o.name().to_owned(),
        zone: spec.zone,
        address: spec.address,
        ready: conditions::is_true(&status.conditions, CONDITION_READY),
        unschedulable: spec.unschedulable,
    })
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::LoadBalancer(lb)) = &object.resource else {
        return Ok(Action::await_change());
    };
    if object.metadata().is_some_and(|m| m.deleted_at.is_some()) {
        return Ok(Action::await_change());
    }
    let nodes: Vec<NodeView> = ctx
        .nodes
        .list()
        .iter()
        .filter_map(|o| node_view(o))
        .collect();
    let groups: Groups = ctx
        .groups
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::TargetGroup(tg)) => Some((
                o.name().to_owned(),
                tg.spec
                    .as_ref()
                    .map(|s| s.protocol.clone())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let all = ctx.load_balancers.list();
    let others: Vec<(&str, &LoadBalancer)> = all
        .iter()
        .filter(|o| o.name() != object.name())
        .filter_map(|o| match &o.resource {
            Some(Resource::LoadBalancer(other)) => Some((o.name(), other)),
            _ => None,
        })
        .collect();
    let status = plan(object.name(), lb, &nodes, &others, &groups);
    if lb.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let mut updated = lb.clone();
    let (state, reason) = (status.state.clone(), status.reason.clone());
    updated.status = Some(status);
    match ctx.client.update_status(Object::from(updated)).await {
        Ok(_) => {
            info!(load_balancer = %object.name(), state, reason, "Load balancer status.");
            Ok(Action::await_change())
        }
        // Someone (the agent) wrote first: look again with the new object.
        Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Err(s) => Err(Error::api("update status", object.key(), s)),
    }
}

pub async fn run(client: Client, metrics: Metrics, shutdown: Shutdown) {
    let controller = Controller::new(client.clone(), Kind::LoadBalancer)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown.clone());
    let load_balancers = controller.cache();
    let start = |kind| {
        let cache = crate::runtime::Cache::new(Some(kind));
        cache.start(&client, shutdown.clone());
        cache
    };
    let (nodes, groups) = (start(Kind::Node), start(Kind::TargetGroup));
    // Any node, target group or load balancer change may change any load balancer's plan
    // (readiness, references, ports taken): there are few of them.
    let every: KeyMapper = {
        let primary = load_balancers.clone();
        Arc::new(move |_, _| {
            primary
                .keys()
                .into_iter()
                .filter(|k: &ObjectKey| k.kind == Kind::LoadBalancer)
                .collect()
        })
    };
    let controller = controller
        .watches(nodes.clone(), every.clone())
        .watches(groups.clone(), every.clone())
        .map_primary(every);
    let ctx = Arc::new(Context {
        client,
        nodes,
        groups,
        load_balancers,
    });
    controller
        .run(reconcile, default_error_policy, ctx, 1)
        .await;
}

#[cfg(test)]
mod tests;
