//! The agent's side of Elastic Load Balancing: runs the [`hanul_lb::DataPlane`] for the load
//! balancers placed on this node and reports back.
//!
//! ```text
//!  watch LoadBalancer, TargetGroup, Instance, Node ─▶ resolve ─▶ DataPlane::apply
//!                                                                   │ listener states
//!                        LoadBalancer.status.nodes[this node] ◀─────┘
//!  health changes ─▶ TargetGroup.status.targets + events (by one node per group: the first,
//!                    by name, of the nodes running a load balancer that routes to it)
//! ```
//!
//! Until a load balancer is placed on this node only load balancers are watched (an agent
//! without any keeps no cache of target groups, instances and nodes). The loop is
//! level-triggered: every change of a watched object, every health change and a
//! periodic tick recompute the whole configuration; `apply` keeps what did not change (open
//! connections, target health) and retries listeners that could not bind.

pub mod resolve;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hanul_controllers::runtime::{Cache, Shutdown};
use hanul_lb::{DataPlane, Health, HealthEvent, ListenerState, TargetReport};
use hanul_proto::events::{NORMAL, Recorder, WARNING};
use hanul_proto::v1::object::Resource;
use hanul_proto::v1::{LoadBalancer, Object, TargetGroupStatus, TargetHealth};
use hanul_proto::{Client, Kind};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use resolve::World;

/// How often the configuration is recomputed without any change (retrying ports in use).
const RESYNC: Duration = Duration::from_secs(10);
/// After a failed status write.
const RETRY: Duration = Duration::from_millis(500);
/// Changes arriving this close together are applied once.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// What the ELB loop needs to know about its node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    /// The node's address: listeners listen on it (every interface if it is not an IP).
    pub address: String,
}

/// Runs until `shutdown`: keeps `plane` configured and the statuses current.
pub async fn run(
    client: Client,
    settings: Settings,
    plane: DataPlane,
    mut health: mpsc::UnboundedReceiver<HealthEvent>,
    shutdown: Shutdown,
) {
    // Only load balancers are watched until one is placed here: a node without any pays
    // nothing for the other kinds.
    let changed = Arc::new(Notify::new());
    let start = |kind| crate::watch(&client, &shutdown, kind, &changed);
    let load_balancers = start(Kind::LoadBalancer);
    load_balancers.wait_synced().await;
    loop {
        let here = load_balancers.list().iter().any(|o| match &o.resource {
            Some(Resource::LoadBalancer(lb)) => lb
                .status
                .iter()
                .flat_map(|s| &s.nodes)
                .any(|n| n.node == settings.node),
            _ => false,
        });
        if here {
            break;
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = shutdown.wait() => return,
        }
    }
    let mut caches = vec![load_balancers];
    for kind in [Kind::TargetGroup, Kind::Instance, Kind::Node] {
        caches.push(start(kind));
    }
    for cache in &caches {
        cache.wait_synced().await;
    }
    let bind: IpAddr = settings
        .address
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut elb = Loop {
        client: client.clone(),
        recorder: Recorder::new(client, format!("agent/{}", settings.node)),
        settings,
        plane,
        caches,
        bind,
    };
    info!("Load balancer data plane ready.");
    let mut retry = false;
    loop {
        let wait = if retry { RETRY } else { RESYNC };
        let mut events = Vec::new();
        tokio::select! {
            _ = changed.notified() => {}
            Some(event) = health.recv() => events.push(event),
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(event) = health.try_recv() {
            events.push(event);
        }
        retry = !elb.sync(&events).await;
    }
}

struct Loop {
    client: Client,
    recorder: Recorder,
    settings: Settings,
    plane: DataPlane,
    /// LoadBalancer, TargetGroup, Instance, Node.
    caches: Vec<Cache>,
    bind: IpAddr,
}

impl Loop {
    /// One pass; false when a status write failed and should be retried soon.
    async fn sync(&mut self, events: &[HealthEvent]) -> bool {
        let objects: Vec<Vec<Arc<Object>>> = self.caches.iter().map(|c| c.list()).collect();
        let mut world = World::default();
        let mut groups_by_name = HashMap::new();
        for o in objects.iter().flatten() {
            let name = o.name();
            match &o.resource {
                Some(Resource::LoadBalancer(lb)) => world.load_balancers.push(lb),
                Some(Resource::TargetGroup(tg)) => {
                    world.target_groups.insert(name, tg);
                    groups_by_name.insert(name, o);
                }
                Some(Resource::Instance(i)) => {
                    world.instances.insert(name, i);
                }
                Some(Resource::Node(n)) => {
                    world.nodes.insert(name, n);
                }
                _ => {}
            }
        }
        let config = resolve::resolve(&world, &self.settings.node, self.bind);
        let states = self.plane.apply(config);
        let mut ok = true;
        for lb in resolve::placed_here(&world, &self.settings.node) {
            ok &= self.report_listeners(lb, &states).await;
        }
        let reported = self.groups_reported_here(&world);
        for event in events {
            if reported.contains(&event.group)
                && let Some(tg) = groups_by_name.get(event.group.as_str())
            {
                self.emit(tg, event).await;
            }
        }
        for name in &reported {
            if let Some(tg) = groups_by_name.get(name.as_str()) {
                ok &= self.report_targets(tg).await;
            }
        }
        ok
    }

    /// The groups whose status this node writes: those it is the first node (by name) for,
    /// among the nodes running a load balancer that routes to them.
    fn groups_reported_here(&self, world: &World<'_>) -> BTreeSet<String> {
        let mut first: HashMap<String, String> = HashMap::new();
        for lb in &world.load_balancers {
            let nodes = lb.status.iter().flat_map(|s| &s.nodes).map(|n| &n.node);
            let Some(min) = nodes.min() else { continue };
            for g in resolve::referenced_groups(lb) {
                let e = first.entry(g).or_insert_with(|| min.clone());
                if *min < *e {
                    *e = min.clone();
                }
            }
        }
        first
            .into_iter()
            .filter(|(_, node)| *node == self.settings.node)
            .map(|(g, _)| g)
            .collect()
    }

    /// Writes this node's entry of the load balancer's `status.nodes`.
    async fn report_listeners(&self, lb: &LoadBalancer, states: &[ListenerState]) -> bool {
        let name = lb.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        let errors: Vec<String> = states
            .iter()
            .filter(|s| s.load_balancer == name)
            .filter_map(|s| {
                s.error
                    .as_ref()
                    .map(|e| format!("listener {}: {e}", s.port))
            })
            .collect();
        let (state, reason) = if errors.is_empty() {
            ("active", String::new())
        } else {
            ("failed", errors.join("; "))
        };
        let mut lb = lb.clone();
        let Some(entry) = lb
            .status
            .as_mut()
            .and_then(|s| s.nodes.iter_mut().find(|n| n.node == self.settings.node))
        else {
            return true;
        };
        if entry.state == state && entry.reason == reason {
            return true;
        }
        entry.state = state.into();
        entry.reason = reason.clone();
        match self.client.update_status(Object::from(lb)).await {
            Ok(_) => {
                info!(load_balancer = name, state, reason, "Listeners reported.");
                true
            }
            Err(e) => {
                debug!(load_balancer = name, error = %e, "Writing the listener state failed; retrying.");
                false
            }
        }
    }

    /// Writes the group's `status.targets` from the data plane's view when it differs.
    async fn report_targets(&self, object: &Object) -> bool {
        let Some(Resource::TargetGroup(tg)) = &object.resource else {
            return true;
        };
        let Some(report) = self.plane.report(object.name()) else {
            return true;
        };
        let mut targets: Vec<TargetHealth> = report.iter().map(target_health).collect();
        targets.sort_by(|a, b| (&a.instance, &a.address).cmp(&(&b.instance, &b.address)));
        let generation = tg.metadata.as_ref().map_or(0, |m| m.generation);
        let old = tg.status.clone().unwrap_or_default();
        if old.targets == targets && old.observed_generation == generation {
            return true;
        }
        let mut tg = tg.clone();
        tg.status = Some(TargetGroupStatus {
            observed_generation: generation,
            conditions: old.conditions,
            targets,
        });
        match self.client.update_status(Object::from(tg)).await {
            Ok(_) => true,
            Err(e) => {
                debug!(target_group = object.name(), error = %e, "Writing target health failed; retrying.");
                false
            }
        }
    }

    async fn emit(&self, tg: &Object, event: &HealthEvent) {
        let who = if event.instance.is_empty() {
            event.address.clone()
        } else {
            format!("{} ({})", event.instance, event.address)
        };
        let (ty, reason, message) = match &event.to {
            Some(s) if s.health == Health::Healthy => {
                (NORMAL, "TargetHealthy", format!("Target {who} is healthy"))
            }
            Some(s) if s.health == Health::Unhealthy => (
                WARNING,
                "TargetUnhealthy",
                format!("Target {who} is unhealthy: {}: {}", s.reason, s.description),
            ),
            Some(s) if s.health == Health::Draining => (
                NORMAL,
                "TargetDraining",
                format!("Target {who} is draining"),
            ),
            Some(_) => return,
            None => (
                NORMAL,
                "TargetDeregistered",
                format!("Target {who} is deregistered"),
            ),
        };
        if let Err(e) = self.recorder.emit(tg, ty, reason, message).await {
            warn!(error = %e, "Recording a target health event failed.");
        }
    }
}

fn target_health(r: &TargetReport) -> TargetHealth {
    TargetHealth {
        instance: r.instance.clone(),
        address: r.address.clone(),
        health: r.state.health.as_str().into(),
        reason: r.state.reason.clone(),
        description: r.state.description.clone(),
        last_change: Some(hanul_proto::time::timestamp(r.last_change)),
    }
}
