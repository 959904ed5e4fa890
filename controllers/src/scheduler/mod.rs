//! The scheduler: binds pending instances to Ready nodes with room for their instance type,
//! spreads groups across zones and nodes, and reclaims spot capacity for on-demand instances.
//!
//! Binding is written to the instance's **status** (`status.node`, `status.zone`,
//! `status.state = pending`, condition `Scheduled=True`) with the instance's resourceVersion as
//! precondition; agents run the instances whose `status.node` names them. `spec.nodeName` is a
//! user's pin that the scheduler honours, `spec.zone` a restriction. An instance that fits
//! nowhere stays pending with `Scheduled=False`, reason `InsufficientInstanceCapacity` (as EC2
//! says) and a message naming its size and why each node refused it, plus a `FailedScheduling`
//! event.
//!
//! Spot: when an on-demand or reserved instance fits nowhere, the planner may pick spot
//! instances on one node to reclaim. Each gets the annotation `hanul.dev/spot-interruption-time`
//! (now + the notice, two minutes by default, as AWS gives) and a `SpotInterruption` event; once
//! that time has passed the scheduler deletes it, as AWS terminates reclaimed spot instances.
//! The on-demand instance binds when the room is really free.
//!
//! ## Shape: one global pass
//!
//! Decisions about one instance depend on every other (capacity, spreading), so each reconcile
//! runs the same **global pass** over all instances: gather from the caches, [`plan::plan`],
//! execute. The controller is an Instance controller (so the runtime's queue, backoff, resync
//! and metrics apply); every change of an instance, node or instance type enqueues one *pass
//! key* (the first instance by name), and the concurrency is 1, so passes never overlap. A pass
//! whose caches have not moved since the last complete pass (and whose next timed wake-up has
//! not come) returns at once, so a burst of changes costs one pass, not one per instance.
//!
//! Writes race the watch that feeds the caches: right after binding an instance the cache may
//! still show it pending. The pass remembers what it wrote (resourceVersion and binding, as
//! Kubernetes' scheduler "assumes" pods) until the cache catches up, counts those bindings
//! against their nodes, and does not act on an instance whose cached copy is older than its own
//! last write. A write that loses a race (a stale resourceVersion) retries the pass soon.
//!
//! The DB cluster controller places DB members on the same nodes from its own caches: the two
//! share an [`Assumed`] ledger of placements decided but not yet shown, so that neither gives
//! away room the other has just taken.

pub mod assumed;
pub mod conditions;
pub mod plan;

use crate::{
    Error, Result,
    runtime::{
        Action, Cache, Clock, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
};
pub use assumed::Assumed;
use assumed::{Holder, Placement};
use futures::{FutureExt, StreamExt};
use hanul_proto::{
    Client, Kind,
    events::{NORMAL, Recorder, WARNING},
    instance::{DesiredState, InstanceState, Market},
    v1::{Instance, Node, Object, object::Resource},
};
use plan::{Decision, InstanceView, NodeView, Size};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tonic::{Code, Status};
use tracing::{debug, info};

/// The controller's name in metrics, logs and event sources.
pub const CONTROLLER_NAME: &str = "scheduler";

/// The instance condition the scheduler owns.
pub const CONDITION_SCHEDULED: &str = "Scheduled";
/// The node condition agents keep `True` while they heartbeat.
pub const CONDITION_READY: &str = "Ready";
/// `Scheduled=True`.
pub const REASON_SCHEDULED: &str = "Scheduled";
/// `Scheduled=False`: EC2's error for "no capacity for this type here".
pub const REASON_INSUFFICIENT_CAPACITY: &str = "InsufficientInstanceCapacity";

/// Event reasons.
pub const EVENT_SCHEDULED: &str = "Scheduled";
pub const EVENT_FAILED_SCHEDULING: &str = "FailedScheduling";
pub const EVENT_SPOT_INTERRUPTION: &str = "SpotInterruption";
pub const EVENT_SPOT_TERMINATED: &str = "SpotInstanceTerminated";

pub use hanul_proto::instance::SPOT_INTERRUPTION_ANNOTATION;
/// Instances with the same value spread together when they have no controller owner.
pub const GROUP_LABEL: &str = "hanul.dev/group";

/// AWS's spot interruption notice.
pub const DEFAULT_SPOT_NOTICE: Duration = Duration::from_secs(120);

/// Writes in flight at once during a pass.
const WRITE_CONCURRENCY: usize = 32;

/// The scheduler's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a spot instance has between its interruption notice and its termination.
    pub spot_notice: Duration,
    /// How soon an unschedulable instance is tried again when nothing changes.
    pub unschedulable_retry: Duration,
    /// How soon a pass runs again after losing a write race.
    pub conflict_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            spot_notice: DEFAULT_SPOT_NOTICE,
            unschedulable_retry: Duration::from_secs(30),
            conflict_retry: Duration::from_millis(200),
        }
    }
}

/// What the scheduler's reconcile needs.
pub struct Context {
    pub client: Client,
    pub instances: Cache,
    pub nodes: Cache,
    pub types: Cache,
    /// The DB members (`DBInstance`s): each holds its instance class's CPU and memory on its
    /// node, as an instance does.
    pub db_members: Cache,
    /// Placements decided by this scheduler and the DB cluster controller that the caches may
    /// not show yet.
    pub assumed: Arc<Assumed>,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    pub config: Config,
    pass: tokio::sync::Mutex<PassState>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What passes remember between runs.
#[derive(Debug, Default)]
struct PassState {
    /// The cache revisions (instances, nodes, types) and the DB members' placements
    /// ([`placements_key`]) of the last pass that completed with nothing left to retry.
    clean_at: Option<(u64, u64, u64, u64)>,
    /// When the next pass must run even if nothing changes (a notice runs out, a retry).
    wakeup: Option<SystemTime>,
    /// Instances written by a pass whose cached copy is older than the write.
    written: HashMap<String, Written>,
}

#[derive(Clone, Debug)]
struct Written {
    rv: u64,
    /// (node, zone) when the write was a binding.
    binding: Option<(String, String)>,
}

/// How one write ended.
enum Outcome {
    Wrote(String, Written),
    Nothing,
    Conflict,
    Failed(Error),
}

/// Runs one global scheduling pass (see the module doc); `instance` only names the key.
pub async fn reconcile(instance: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let mut state = ctx.pass.lock().await;
    let now = ctx.clock.now();
    let revisions = (
        ctx.instances.revision(),
        ctx.nodes.revision(),
        ctx.types.revision(),
        // Where the DB members are, not their revision: members write their status every
        // second or so, which changes nothing here.
        placements_key(&db_member_views(&ctx.db_members)),
    );
    if state.clean_at == Some(revisions) && state.wakeup.is_none_or(|w| now < w) {
        // Nothing to do yet. Running the pass key took its timed requeue off the queue, so
        // it keeps the wake-up; other keys need not (one timer is enough).
        let is_pass_key =
            ObjectKey::of(&instance).is_some_and(|k| pass_key(&ctx.instances).contains(&k));
        return Ok(if is_pass_key {
            wake_at(state.wakeup, now)
        } else {
            Action::await_change()
        });
    }

    // Forget writes the cache has caught up with (or whose instance is gone).
    state.written.retain(|name, w| {
        ctx.instances
            .get(Kind::Instance, name)
            .is_some_and(|o| o.resource_version() < w.rv)
    });

    let types = sizes(&ctx.types);
    let nodes = node_views(&ctx.nodes);
    let mut objects: HashMap<String, Arc<Object>> = HashMap::new();
    let (mut pending, mut bound) = (Vec::new(), Vec::new());
    let mut stale: HashSet<String> = HashSet::new();
    for o in ctx.instances.list() {
        let Some(Resource::Instance(i)) = &o.resource else {
            continue;
        };
        let mut view = instance_view(i);
        if let Some(w) = state.written.get(&view.name) {
            stale.insert(view.name.clone());
            if let Some((node, _)) = &w.binding {
                view.node = node.clone();
                bound.push(view);
                continue;
            }
        }
        if needs_scheduling(i) {
            pending.push(view);
        } else if is_bound(i) {
            bound.push(view);
        }
        objects.insert(o.name().to_string(), o);
    }
    bound.extend(db_member_views(&ctx.db_members));

    // Decided under the ledger's lock: the DB members placed but not shown yet hold their room,
    // and the bindings decided here are noted before the DB cluster controller looks.
    let decisions = {
        let mut ledger = ctx.assumed.lock();
        let unseen = ledger.unseen(ctx.instances.revision(), ctx.db_members.revision());
        // This pass's own bindings are counted from `state.written`.
        bound.extend(
            unseen
                .into_iter()
                .filter(|(h, _)| matches!(h, Holder::DbMember { .. }))
                .map(|(h, p)| assumed_view(&h, p)),
        );
        let decisions = plan::plan(&pending, &nodes, &bound, &types, now);
        for d in &decisions {
            if let Decision::Bind {
                instance,
                node,
                zone,
            } = d
                && !stale.contains(instance)
                && let Some(view) = pending.iter().find(|p| p.name == *instance)
            {
                ledger.assume(
                    Holder::Instance(instance.clone()),
                    Placement {
                        node: node.clone(),
                        zone: zone.clone(),
                        class: view.instance_type.clone(),
                        size: types.get(&view.instance_type).copied().unwrap_or_default(),
                    },
                );
            }
        }
        decisions
    };
    debug!(
        pending = pending.len(),
        nodes = nodes.len(),
        decisions = decisions.len(),
        "Planned."
    );

    let mut skipped = false;
    let mut wakeups: Vec<SystemTime> = bound
        .iter()
        .filter(|b| b.market == Market::Spot)
        .filter_map(|b| b.interruption)
        .filter(|&t| t > now)
        .collect();
    let mut writes = Vec::new();
    let mut binding = Vec::new();
    for d in decisions {
        match d {
            Decision::Bind {
                instance,
                node,
                zone,
            } => {
                if stale.contains(&instance) {
                    skipped = true;
                    continue;
                }
                binding.push(instance.clone());
                if let Some(o) = objects.get(&instance) {
                    writes.push(exec_bind(&ctx, o.clone(), node, zone, now).boxed());
                }
            }
            Decision::Unschedulable { instance, message } => {
                wakeups.push(now + ctx.config.unschedulable_retry);
                if stale.contains(&instance) {
                    skipped = true;
                    continue;
                }
                if let Some(o) = objects.get(&instance) {
                    writes.push(exec_pending(&ctx, o.clone(), message, now).boxed());
                }
            }
            Decision::Preempt {
                for_instance,
                node,
                victims,
                message,
            } => {
                wakeups.push(now + ctx.config.unschedulable_retry);
                if stale.contains(&for_instance) {
                    skipped = true;
                    continue;
                }
                let until = ceil_to_second(now + ctx.config.spot_notice);
                for v in &victims {
                    let Some(o) = objects.get(v) else { continue };
                    if stale.contains(v) || interruption_of(o).is_some() {
                        continue;
                    }
                    wakeups.push(until);
                    writes.push(
                        exec_notice(&ctx, o.clone(), for_instance.clone(), node.clone(), until)
                            .boxed(),
                    );
                }
                if let Some(o) = objects.get(&for_instance) {
                    writes.push(exec_pending(&ctx, o.clone(), message, now).boxed());
                }
            }
            Decision::Reclaim { instance } => {
                if let Some(o) = objects.get(&instance) {
                    writes.push(exec_reclaim(&ctx, o.clone()).boxed());
                }
            }
        }
    }

    let outcomes: Vec<Outcome> = futures::stream::iter(writes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await;
    let mut conflicts = 0;
    let mut failure = None;
    for o in outcomes {
        match o {
            Outcome::Wrote(name, w) => {
                if w.binding.is_some() {
                    let holder = Holder::Instance(name.clone());
                    ctx.assumed.written(&holder, w.rv);
                    binding.retain(|b| *b != name);
                }
                state.written.insert(name, w);
            }
            Outcome::Nothing => {}
            Outcome::Conflict => conflicts += 1,
            Outcome::Failed(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    // Bindings that were not written hold no room.
    for name in binding {
        ctx.assumed.forget(&Holder::Instance(name));
    }
    let wakeup = wakeups.into_iter().min();
    state.wakeup = wakeup;
    if let Some(e) = failure {
        state.clean_at = None;
        return Err(e);
    }
    if conflicts > 0 || skipped {
        state.clean_at = None;
        debug!(
            conflicts,
            skipped, "Some instances changed under the pass; running it again soon."
        );
        return Ok(Action::requeue(ctx.config.conflict_retry));
    }
    state.clean_at = Some(revisions);
    Ok(wake_at(wakeup, now))
}

/// Runs the pass again at `wakeup`, if any.
fn wake_at(wakeup: Option<SystemTime>, now: SystemTime) -> Action {
    match wakeup {
        Some(w) => Action::requeue(
            w.duration_since(now)
                .unwrap_or_default()
                .max(Duration::from_millis(10)),
        ),
        None => Action::await_change(),
    }
}

/// Whether the scheduler should place `i`: no node yet (or stopped, and started again: a start
/// goes through the scheduler as in EC2, so that capacity is checked), wanted running, not being
/// deleted, not terminated.
pub fn needs_scheduling(i: &Instance) -> bool {
    let status = i.status.as_ref();
    status.is_none_or(|s| s.node.is_empty() || is_restarting(s))
        && i.metadata.as_ref().is_none_or(|m| m.deleted_at.is_none())
        && i.spec
            .as_ref()
            .is_some_and(|s| DesiredState::parse(&s.state) == Some(DesiredState::Running))
        && status.is_none_or(|s| InstanceState::parse(&s.state) != Some(InstanceState::Terminated))
}

/// A stopped instance's last node is only a memory of where it ran (and where its volumes'
/// data lies).
fn is_restarting(s: &hanul_proto::v1::InstanceStatus) -> bool {
    InstanceState::parse(&s.state) == Some(InstanceState::Stopped)
}

/// The sizes of what can hold capacity on a node: the instance types, and the DB instance
/// classes (db.t3.micro ...) of DB members.
pub fn sizes(types: &Cache) -> HashMap<String, Size> {
    let mut sizes: HashMap<String, Size> = types
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::InstanceType(t)) => {
                let spec = t.spec.as_ref()?;
                Some((
                    o.name().to_string(),
                    Size::new(u64::from(spec.vcpu) * 1000, spec.memory_mib),
                ))
            }
            _ => None,
        })
        .collect();
    for c in hanul_proto::db::INSTANCE_CLASSES {
        sizes.entry(c.name.to_string()).or_insert(Size::of_class(c));
    }
    sizes
}

/// The nodes as the planner sees them.
pub fn node_views(nodes: &Cache) -> Vec<NodeView> {
    nodes
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::Node(n)) => Some(node_view(n)),
            _ => None,
        })
        .collect()
}

/// What is free on each node, from the caches: its allocatable less what the instances bound
/// there and the DB members placed there hold. The DB cluster controller places members with
/// it; the scheduler counts the same things (plus the bindings it has just written).
pub fn free_on_nodes(
    nodes: &[NodeView],
    instances: &Cache,
    types: &Cache,
    db_members: &Cache,
) -> std::collections::BTreeMap<String, plan::Free> {
    let mut bound: Vec<InstanceView> = instances
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::Instance(i)) if is_bound(i) => Some(instance_view(i)),
            _ => None,
        })
        .collect();
    bound.extend(db_member_views(db_members));
    plan::free_by_node(nodes, &bound, &sizes(types))
}

/// Whether `i` counts against its node's capacity: placed there and not waiting to be placed
/// again.
fn is_bound(i: &Instance) -> bool {
    !needs_scheduling(i) && holds_capacity(i)
}

/// Whether `i` holds capacity on its node: bound, and pending, running or stopping (or bound
/// and not yet reported on by its agent).
pub fn holds_capacity(i: &Instance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        !s.node.is_empty()
            && (s.state.is_empty()
                || InstanceState::parse(&s.state).is_some_and(|st| st.holds_capacity()))
    })
}

/// The group `i` spreads with: its controller owner, else its `hanul.dev/group` label.
pub fn group_of(i: &Instance) -> Option<String> {
    let meta = i.metadata.as_ref()?;
    meta.owner_references
        .iter()
        .find(|r| r.controller)
        .map(|r| format!("{}/{}", r.kind, r.name))
        .or_else(|| meta.labels.get(GROUP_LABEL).map(|g| format!("label/{g}")))
}

/// When `o`'s spot interruption notice runs out, if it has one.
pub fn interruption_of(o: &Object) -> Option<SystemTime> {
    o.metadata()?
        .annotations
        .get(SPOT_INTERRUPTION_ANNOTATION)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

fn instance_view(i: &Instance) -> InstanceView {
    let meta = i.metadata.clone().unwrap_or_default();
    let spec = i.spec.clone().unwrap_or_default();
    InstanceView {
        created: meta
            .created_at
            .as_ref()
            .map(conditions::system_time)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        group: group_of(i),
        interruption: meta
            .annotations
            .get(SPOT_INTERRUPTION_ANNOTATION)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
        deleting: meta.deleted_at.is_some(),
        name: meta.name,
        instance_type: spec.instance_type,
        zone: spec.zone,
        market: Market::parse(&spec.market).unwrap_or(Market::OnDemand),
        // A stopped instance starting again is pending; if it has volumes (their data is local
        // to the node it ran on) it is pinned to that node.
        node_name: match &i.status {
            Some(s)
                if is_restarting(s) && spec.node_name.is_empty() && !spec.volumes.is_empty() =>
            {
                s.node.clone()
            }
            _ => spec.node_name,
        },
        node: i
            .status
            .as_ref()
            .filter(|s| !is_restarting(s))
            .map(|s| s.node.clone())
            .unwrap_or_default(),
    }
}

fn node_view(n: &Node) -> NodeView {
    let spec = n.spec.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let allocatable = status.allocatable.or(spec.capacity).unwrap_or_default();
    NodeView {
        name: n
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        zone: spec.zone,
        ready: conditions::is_true(&status.conditions, CONDITION_READY),
        unschedulable: spec.unschedulable,
        allocatable: Size::new(u64::from(allocatable.cpu_millis), allocatable.memory_mib),
    }
}

/// Sorts a failed write into a conflict (retry the pass soon), a vanished object, or a failure.
fn classify(op: &'static str, key: String, status: Status) -> Outcome {
    match status.code() {
        Code::Aborted | Code::FailedPrecondition => Outcome::Conflict,
        Code::NotFound => Outcome::Nothing,
        _ => Outcome::Failed(Error::api(op, key, status)),
    }
}

/// Records an event without holding up the pass; recording is best effort.
fn emit(ctx: &Context, about: &Object, ty: &'static str, reason: &'static str, message: String) {
    let recorder = ctx.recorder.clone();
    let about = about.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.emit(&about, ty, reason, message).await {
            debug!(object = %about.key(), reason, error = %e, "Could not record an event.");
        }
    });
}

async fn exec_bind(
    ctx: &Context,
    object: Arc<Object>,
    node: String,
    zone: String,
    now: SystemTime,
) -> Outcome {
    let mut o = (*object).clone();
    let Some(i) = o.as_instance_mut() else {
        return Outcome::Nothing;
    };
    let status = i.status.get_or_insert_with(Default::default);
    status.state = InstanceState::Pending.as_str().into();
    status.node = node.clone();
    status.zone = zone.clone();
    let message = format!("bound to node {node} in zone {zone}");
    conditions::set(
        &mut status.conditions,
        CONDITION_SCHEDULED,
        conditions::TRUE,
        REASON_SCHEDULED,
        &message,
        now,
    );
    match ctx.client.update_status(o).await {
        Ok(written) => {
            info!(instance = %object.name(), %node, %zone, "Bound an instance to a node.");
            emit(
                ctx,
                &object,
                NORMAL,
                EVENT_SCHEDULED,
                format!(
                    "Successfully assigned {} to {node} in {zone}",
                    object.name()
                ),
            );
            Outcome::Wrote(
                object.name().to_string(),
                Written {
                    rv: written.resource_version(),
                    binding: Some((node, zone)),
                },
            )
        }
        Err(s) => classify("update status", object.key(), s),
    }
}

/// Keeps an unplaceable instance pending with `Scheduled=False` and why; writes (and records a
/// `FailedScheduling` event) only when that changes.
async fn exec_pending(
    ctx: &Context,
    object: Arc<Object>,
    message: String,
    now: SystemTime,
) -> Outcome {
    let mut o = (*object).clone();
    let Some(i) = o.as_instance_mut() else {
        return Outcome::Nothing;
    };
    let status = i.status.get_or_insert_with(Default::default);
    let state_changed = status.state != InstanceState::Pending.as_str();
    status.state = InstanceState::Pending.as_str().into();
    let changed = conditions::set(
        &mut status.conditions,
        CONDITION_SCHEDULED,
        conditions::FALSE,
        REASON_INSUFFICIENT_CAPACITY,
        &message,
        now,
    );
    if !changed && !state_changed {
        return Outcome::Nothing;
    }
    match ctx.client.update_status(o).await {
        Ok(written) => {
            info!(instance = %object.name(), %message, "An instance fits on no node; it stays pending.");
            emit(ctx, &object, WARNING, EVENT_FAILED_SCHEDULING, message);
            Outcome::Wrote(
                object.name().to_string(),
                Written {
                    rv: written.resource_version(),
                    binding: None,
                },
            )
        }
        Err(s) => classify("update status", object.key(), s),
    }
}

/// Gives spot instance `object` its interruption notice, ending at `until`.
async fn exec_notice(
    ctx: &Context,
    object: Arc<Object>,
    for_instance: String,
    node: String,
    until: SystemTime,
) -> Outcome {
    let mut o = (*object).clone();
    let at = humantime::format_rfc3339_seconds(until).to_string();
    o.metadata_mut()
        .annotations
        .insert(SPOT_INTERRUPTION_ANNOTATION.into(), at.clone());
    match ctx.client.update(o).await {
        Ok(written) => {
            info!(instance = %object.name(), %node, for_instance = %for_instance, terminate_at = %at, "Gave a spot instance its interruption notice.");
            emit(
                ctx,
                &object,
                WARNING,
                EVENT_SPOT_INTERRUPTION,
                format!(
                    "Spot instance interruption notice: capacity on {node} is reclaimed for \
                     {for_instance}; the instance will be terminated at {at}"
                ),
            );
            Outcome::Wrote(
                object.name().to_string(),
                Written {
                    rv: written.resource_version(),
                    binding: None,
                },
            )
        }
        Err(s) => classify("update", object.key(), s),
    }
}

/// Terminates (deletes) a spot instance whose notice ran out.
async fn exec_reclaim(ctx: &Context, object: Arc<Object>) -> Outcome {
    if object.metadata().is_some_and(|m| m.deleted_at.is_some()) {
        return Outcome::Nothing;
    }
    match ctx.client.delete(Kind::Instance, object.name()).await {
        Ok(_) => {
            info!(instance = %object.name(), "Terminated a reclaimed spot instance.");
            emit(
                ctx,
                &object,
                NORMAL,
                EVENT_SPOT_TERMINATED,
                "Spot instance terminated: its interruption notice ran out".into(),
            );
            Outcome::Nothing
        }
        Err(s) => classify("delete", object.key(), s),
    }
}

/// `t` rounded up to a whole second: the annotation says seconds, and a notice must not end
/// before the time it was given for.
fn ceil_to_second(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Every change maps to one key, the first instance by name, so that a burst of changes runs
/// one pass.
fn pass_key(instances: &Cache) -> Vec<ObjectKey> {
    instances.keys().into_iter().min().into_iter().collect()
}

/// The DB members placed on nodes, as bound instances of their instance class: the capacity
/// they hold is not given to instances. Named `DBInstance/<name>` (no instance has a `/`).
fn db_member_views(cache: &Cache) -> Vec<InstanceView> {
    cache
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbInstance(d)) => {
                let spec = d.spec.as_ref()?;
                let meta = d.metadata.as_ref()?;
                (!spec.node.is_empty() && meta.deleted_at.is_none()).then(|| InstanceView {
                    name: format!("DBInstance/{}", meta.name),
                    created: std::time::UNIX_EPOCH,
                    group: None,
                    instance_type: spec.instance_class.clone(),
                    zone: spec.zone.clone(),
                    node_name: spec.node.clone(),
                    market: hanul_proto::instance::Market::OnDemand,
                    node: spec.node.clone(),
                    interruption: None,
                    deleting: false,
                })
            }
            _ => None,
        })
        .collect()
}

/// A digest of where the DB members are and what they hold, to tell whether any moved.
fn placements_key(members: &[InstanceView]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut placed: Vec<(&str, &str, &str)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.node.as_str(), m.instance_type.as_str()))
        .collect();
    placed.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    placed.hash(&mut h);
    h.finish()
}

/// The view of a placement noted in the ledger, as a bound instance (a DB member is named
/// `DBInstance/<name>`, as in [`db_member_views`]).
fn assumed_view(holder: &Holder, p: Placement) -> InstanceView {
    InstanceView {
        name: match holder {
            Holder::Instance(name) => name.clone(),
            Holder::DbMember { name, .. } => format!("DBInstance/{name}"),
        },
        created: std::time::UNIX_EPOCH,
        group: None,
        instance_type: p.class,
        zone: p.zone,
        node_name: p.node.clone(),
        market: Market::OnDemand,
        node: p.node,
        interruption: None,
        deleting: false,
    }
}

/// The scheduler, ready to run, and its context. `assumed` is the ledger it shares with the DB
/// cluster controller of the same process.
pub fn controller(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    config: Config,
    assumed: Arc<Assumed>,
) -> (Controller, Arc<Context>) {
    let nodes = Cache::new(Some(Kind::Node));
    let types = Cache::new(Some(Kind::InstanceType));
    let db_members = Cache::new(Some(Kind::DbInstance));
    let base = Controller::new(client.clone(), Kind::Instance);
    let instances = base.cache();
    let to_pass = |instances: Cache| -> KeyMapper { Arc::new(move |_, _| pass_key(&instances)) };
    let controller = base
        .named(CONTROLLER_NAME)
        .map_primary(to_pass(instances.clone()))
        .watches(nodes.clone(), to_pass(instances.clone()))
        .watches(types.clone(), to_pass(instances.clone()))
        .watches(db_members.clone(), to_pass(instances.clone()))
        .metrics(metrics)
        .shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), CONTROLLER_NAME),
        client,
        instances,
        nodes,
        types,
        db_members,
        assumed,
        clock,
        config,
        pass: Default::default(),
    });
    (controller, ctx)
}

/// Runs the scheduler until `shutdown`.
pub async fn run_with(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    config: Config,
    assumed: Arc<Assumed>,
) {
    let (controller, ctx) = controller(client, metrics, shutdown, clock, config, assumed);
    // One pass at a time: see the module doc.
    controller
        .run(reconcile, default_error_policy, ctx, 1)
        .await;
}

#[cfg(test)]
mod tests;
