//! The DB cluster planner: from a cluster's spec and status, its members as their agents report
//! them and the nodes, the next status and the effects (members to create or delete). Pure:
//! time comes in as `now` and as each member's lease silence; the caller writes the status
//! first (with a resourceVersion precondition) and only then carries out the effects.
//!
//! A missing member goes to a Ready node of its zone where its instance class's vCPUs and
//! memory fit beside what is there (instances and DB members of every cluster, counted as the
//! scheduler counts them: [`crate::scheduler::free_on_nodes`]), the one with the fewest members
//! of this cluster, then by name. A member that fits nowhere is not created: the cluster's
//! `MembersPlaced` condition says why (`InsufficientDBInstanceCapacity`, as RDS says) with a
//! `FailedScheduling` event, and the next plan tries again. Members placed already never move.
//!
//! The safety rules it keeps (the protocol is in `hanul_proto::db`):
//! - one writer per epoch: `status.writer` changes only together with `status.epoch`, and a
//!   new epoch is written only once the old writer is down (its agent reports PostgreSQL not
//!   running, or its lease ran out, or it is gone);
//! - every acknowledged commit survives: the candidate is the voter with the most WAL among at
//!   least `|S| - k + 1` voters of the writer's synchronous set `S` (commits wait for `k` of
//!   `S`), so at least one voter had each acknowledged commit. `S` only grows within an epoch
//!   (a member joins it once it streams from the writer), so the writer's own list is always a
//!   subset of what the votes are counted against;
//! - endpoints follow epochs (the agents apply the rule in `hanul_proto::db`);
//! - a backtrack is a new epoch of the same writer, started only while that writer is up
//!   and no failover is under way; no failover starts while it runs, the synchronous set
//!   starts empty (the standbys are rebuilt from the rewound writer before they count), and
//!   it ends once the writer reports the new epoch; or, cancelled, once the writer reports
//!   its data from before back in place (never having run in the backtrack's epoch): then
//!   the same writer is named in a newer epoch still, and nothing notes the backtrack.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::scheduler::{
    conditions,
    plan::{Free, Size},
};
use hanul_proto::db::{
    DEFAULT_INSTANCE_CLASS, DEFAULT_LEASE_SECONDS, DEFAULT_PORT, MEMBER_READ_REPLICA,
    MEMBER_STANDBY, MEMBER_SYNC_STANDBY, MEMBER_WRITER, MULTI_AZ_CLUSTER, MULTI_AZ_INSTANCE,
    PHASE_AVAILABLE, PHASE_BACKTRACKING, PHASE_CREATING, PHASE_FAILING_OVER, PHASE_INACCESSIBLE,
    PHASE_REBOOTING, REASON_SWITCHOVER, REASON_WRITER_FAILED, REASON_WRITER_LOST, ROLE_REPLICA,
    ROLE_STANDBY, ROLE_WRITER, STATE_AVAILABLE, STATE_FAILED, STATE_FENCED, STATE_STOPPED,
    instance_class, instance_class_names, member_name, members_of, sum_parameter_apply_status,
};
use hanul_proto::time::timestamp;
use hanul_proto::v1::{
    DbBacktrack, DbClusterMember, DbClusterSpec, DbClusterStatus, DbEndpoints, DbFailover,
    DbTimeline,
};

/// A member as the planner sees it: its DBInstance's spec and status, and how long the
/// controller has seen no renewal of its lease.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Member {
    /// writer, standby or replica: what the member was created for.
    pub spec_role: String,
    pub zone: String,
    pub node: String,
    pub readable: bool,
    /// Its DBInstance is being deleted.
    pub deleting: bool,
    pub state: String,
    /// What PostgreSQL is: writer, standby or "" (not running).
    pub role: String,
    pub epoch: u64,
    pub address: String,
    pub timeline: u32,
    pub flush_lsn: u64,
    pub receive_lsn: u64,
    pub replay_lsn: u64,
    pub lag_seconds: f64,
    pub streaming: bool,
    pub lease_epoch: u64,
    /// Since the controller last saw `leaseEpoch`/`leaseRenewals` change (or since it started).
    pub lease_silence: Duration,
    /// epoch, lsn, timeline.
    pub vote: Option<(u64, u64, u32)>,
    /// Whether PostgreSQL runs with the cluster's parameter group (in-sync, pending-reboot...).
    pub parameter_apply_status: String,
    /// The writer's agent: the newest time whose WAL is archived.
    pub latest_restorable_time: Option<pbjson_types::Timestamp>,
    /// What its agent last said (a failed backtrack attempt's error among others).
    pub message: String,
    /// A backtracking writer: its failed attempts at the backtrack of the cluster's epoch.
    pub backtrack_failures: u32,
    /// A writer whose backtrack was cancelled: that backtrack's epoch, once its data from
    /// before is back in place.
    pub backtrack_cancelled: u64,
}

impl Member {
    /// Whether PostgreSQL is known not to run: its agent said so.
    fn reported_down(&self) -> bool {
        self.role.is_empty()
            && [STATE_FAILED, STATE_STOPPED, STATE_FENCED].contains(&self.state.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub zone: String,
    pub address: String,
    /// Ready and schedulable.
    pub ready: bool,
    /// Its allocatable less what the instances and DB members (of every cluster) placed on it
    /// hold, as the scheduler counts it ([`crate::scheduler::free_on_nodes`]).
    pub free: Free,
    /// Runs an available member of the cluster this one is a clone of (before the clone has
    /// its data): the clone's writer goes to such a node of its zone when it fits there, so
    /// that its agent copies the source on the node (copy-on-write where the file system
    /// allows) instead of over the network.
    pub clone_source: bool,
}

/// The cluster condition that says whether every member the spec asks for has a node.
pub const CONDITION_MEMBERS_PLACED: &str = "MembersPlaced";
/// `MembersPlaced=False`: RDS's error for "no capacity for this class here".
pub const REASON_INSUFFICIENT_CAPACITY: &str = "InsufficientDBInstanceCapacity";
/// `MembersPlaced=True`.
pub const REASON_MEMBERS_PLACED: &str = "MembersPlaced";
/// The Warning event of a member that fits on no node, as Kubernetes' scheduler names it.
pub const EVENT_FAILED_SCHEDULING: &str = "FailedScheduling";
/// The writer's backtrack attempt failed (said again on the 2nd, 4th, 8th... failure).
pub const EVENT_BACKTRACK_FAILED: &str = "BacktrackFailed";
/// A cancel of the backtrack under way was asked for / carried out / refused.
pub const EVENT_BACKTRACK_CANCELLING: &str = "BacktrackCancelling";
pub const EVENT_BACKTRACK_CANCELLED: &str = "BacktrackCancelled";
pub const EVENT_BACKTRACK_CANCEL_REFUSED: &str = "BacktrackCancelRefused";

#[derive(Debug)]
pub struct Input<'a> {
    pub cluster: &'a str,
    pub generation: i64,
    /// Defaulted by admission.
    pub spec: &'a DbClusterSpec,
    pub status: &'a DbClusterStatus,
    pub members: &'a BTreeMap<String, Member>,
    pub nodes: &'a [NodeInfo],
    /// The switchover annotation's value, if any.
    pub switchover: Option<&'a str>,
    /// The reboot annotation's value, if any: `ID` or `force-failover:ID`.
    pub reboot: Option<&'a str>,
    /// The backtrack annotation's value when it is a request not handled yet, with what
    /// [`super::backtrack::resolve`] made of it: the backtrack to start (epoch and start time
    /// unset) or why it cannot be.
    pub backtrack: Option<(&'a str, Result<DbBacktrack, String>)>,
    /// The backtrack cancel annotation's value, if any.
    pub backtrack_cancel: Option<&'a str>,
    pub now: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Create {
        name: String,
        role: String,
        zone: String,
        node: String,
        readable: bool,
    },
    Delete {
        name: String,
    },
    /// A member whose node is gone (its Node object deleted): its agent will never stop it,
    /// so it is deleted with its agent's finalizer released, and made again (same name, no
    /// data: a clone of the writer) on a Ready node of its zone.
    Replace {
        name: String,
    },
}

/// An event to record on the cluster, in RDS's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: DbClusterStatus,
    pub effects: Vec<Effect>,
    pub events: Vec<Event>,
    /// When to look again without any change (a lease that may run out).
    pub wake: Option<Duration>,
}

/// A member the cluster should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub role: &'static str,
    pub zone: String,
    pub readable: bool,
}

/// The lease of the cluster's writer.
pub fn lease(spec: &DbClusterSpec) -> Duration {
    let s = spec
        .failover
        .as_ref()
        .and_then(|f| f.lease_seconds)
        .unwrap_or(DEFAULT_LEASE_SECONDS)
        .max(1);
    Duration::from_secs(s.into())
}

fn automatic(spec: &DbClusterSpec) -> bool {
    spec.failover
        .as_ref()
        .and_then(|f| f.automatic)
        .unwrap_or(true)
}

/// The zones members go to: the spec's, else those of the Ready nodes.
fn zones(spec: &DbClusterSpec, nodes: &[NodeInfo]) -> Vec<String> {
    if !spec.zones.is_empty() {
        return spec.zones.clone();
    }
    let ready: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.ready)
        .map(|n| n.zone.as_str())
        .collect();
    ready.into_iter().map(str::to_owned).collect()
}

/// The members the spec asks for: the writer and standbys (`-1` .. `-n`), then the read
/// replicas, each in a zone, round robin.
pub fn layout(cluster: &str, spec: &DbClusterSpec, nodes: &[NodeInfo]) -> Vec<Wanted> {
    let zones = zones(spec, nodes);
    if zones.is_empty() {
        return Vec::new();
    }
    let n = members_of(&spec.deployment);
    let readable = spec.deployment != MULTI_AZ_INSTANCE;
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Wanted {
            name: member_name(cluster, i + 1),
            role: if i == 0 { ROLE_WRITER } else { ROLE_STANDBY },
            zone: zones[i % zones.len()].clone(),
            readable,
        });
    }
    let replicas = spec.read_replicas.clone().unwrap_or_default();
    let replica_zones = if replicas.zones.is_empty() {
        zones.clone()
    } else {
        replicas.zones.clone()
    };
    for j in 0..replicas.count as usize {
        out.push(Wanted {
            name: member_name(cluster, n + j + 1),
            role: ROLE_REPLICA,
            // Replicas start in the zone after the writer's, so a replica of a single-AZ
            // cluster with two zones lands in the other one.
            zone: replica_zones[(j + 1) % replica_zones.len()].clone(),
            readable: true,
        });
    }
    out
}

/// The Ready node of `zone` where a member of `size` fits beside what is there (`free`, less
/// what this plan has placed), with the fewest members of this cluster (then by name); for a
/// clone's writer (`near_source`), one running a member of its source first. Else why there
/// is none, for [`refusal`].
fn place<'n>(
    zone: &str,
    near_source: bool,
    size: Size,
    nodes: &'n [NodeInfo],
    members: &BTreeMap<String, Member>,
    placed: &[(String, Size)],
) -> Result<String, Vec<(&'n NodeInfo, Free)>> {
    let in_zone: Vec<(&NodeInfo, Free)> = nodes
        .iter()
        .filter(|n| n.zone == zone)
        .map(|n| {
            let free = placed
                .iter()
                .filter(|(p, _)| *p == n.name)
                .fold(n.free, |f, (_, s)| f.minus(*s));
            (n, free)
        })
        .collect();
    in_zone
        .iter()
        .filter(|(n, free)| n.ready && free.covers(size))
        .min_by_key(|(n, _)| {
            let here = members.values().filter(|m| m.node == n.name).count()
                + placed.iter().filter(|(p, _)| *p == n.name).count();
            (!(near_source && n.clone_source), here, n.name.clone())
        })
        .map(|(n, _)| n.name.clone())
        .ok_or(in_zone)
}

/// The cluster's instance class (admission's default if unset) and what a member of it holds
/// on its node; `None` for a class hanul does not know.
pub fn class_size(spec: &DbClusterSpec) -> (&str, Option<Size>) {
    let class = if spec.instance_class.is_empty() {
        DEFAULT_INSTANCE_CLASS
    } else {
        spec.instance_class.as_str()
    };
    (class, instance_class(class).map(Size::of_class))
}

/// Most nodes a refusal lists one by one.
const MAX_NODES_IN_REFUSAL: usize = 8;

/// `Cannot place DB instance orders-2 in zone b: no Ready node has room for db.m5.large
/// (2 vCPUs, 8 GiB); node-b1 has 1 vCPU and 2 GiB free`.
fn refusal(
    member: &str,
    zone: &str,
    class: &str,
    size: Size,
    nodes: &[(&NodeInfo, Free)],
) -> String {
    let mut out = format!(
        "Cannot place DB instance {member} in zone {zone}: no Ready node has room for {class} \
         ({}, {})",
        vcpus(size.cpu_millis as i64),
        memory(size.memory_mib as i64)
    );
    if nodes.is_empty() {
        out.push_str(&format!("; zone {zone} has no nodes"));
    }
    let mut listed: Vec<&(&NodeInfo, Free)> = nodes.iter().collect();
    listed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (n, free) in listed.iter().take(MAX_NODES_IN_REFUSAL) {
        if n.ready {
            out.push_str(&format!(
                "; {} has {} and {} free",
                n.name,
                vcpus(free.cpu),
                memory(free.mem)
            ));
        } else {
            out.push_str(&format!("; {} is not Ready", n.name));
        }
    }
    if listed.len() > MAX_NODES_IN_REFUSAL {
        out.push_str(&format!(
            "; and {} more nodes",
            listed.len() - MAX_NODES_IN_REFUSAL
        ));
    }
    out
}

/// `1 vCPU`, `2 vCPUs`, `0.5 vCPUs`; an over-committed node has `0 vCPUs` free.
fn vcpus(millis: i64) -> String {
    let millis = millis.max(0);
    let unit = if millis == 1000 { "vCPU" } else { "vCPUs" };
    format!("{} {unit}", crate::scheduler::plan::vcpu(millis))
}

/// `512 MiB`, `2 GiB`, `1.5 GiB`.
fn memory(mib: i64) -> String {
    let mib = mib.max(0);
    if mib < 1024 {
        return format!("{mib} MiB");
    }
    let gib = format!("{:.2}", mib as f64 / 1024.0);
    format!("{} GiB", gib.trim_end_matches('0').trim_end_matches('.'))
}

/// Why the writer counts as down, if it does: its agent reports PostgreSQL not running in
/// this epoch, its lease (held in this epoch) ran out, or it is gone.
fn writer_down(m: Option<&Member>, epoch: u64, lease: Duration) -> Option<&'static str> {
    let Some(m) = m else {
        return Some(REASON_WRITER_LOST);
    };
    if m.deleting {
        return Some(REASON_WRITER_LOST);
    }
    if m.epoch == epoch && m.reported_down() {
        return Some(REASON_WRITER_FAILED);
    }
    if m.lease_epoch == epoch && m.lease_silence > lease {
        return Some(REASON_WRITER_LOST);
    }
    None
}

/// Whether the old writer can no longer write: reported down, its lease run out (in any
/// epoch: a writer whose lease is silent for a whole lease has stopped itself), or gone.
fn fenced(m: Option<&Member>, lease: Duration) -> bool {
    match m {
        None => true,
        Some(m) => m.deleting || m.reported_down() || m.lease_silence > lease,
    }
}

pub fn plan(input: &Input) -> Plan {
    let spec = input.spec;
    let mut st = input.status.clone();
    let mut effects = Vec::new();
    let mut events = Vec::new();
    let mut wake: Option<Duration> = None;
    let lease = lease(spec);
    let members = input.members;

    // Members: create what is missing where it fits, delete read replicas no longer asked
    // for. Members placed already stay where they are.
    let wanted = layout(input.cluster, spec, input.nodes);
    let (class, size) = class_size(spec);
    let mut placed = Vec::new();
    let mut refusals = Vec::new();
    for w in &wanted {
        if members.contains_key(&w.name) {
            continue;
        }
        let Some(size) = size else {
            // Admission allows only known classes: a cluster written before that.
            refusals.push(format!(
                "Cannot place DB instance {}: instance class {class:?} is not one of {}",
                w.name,
                instance_class_names()
            ));
            continue;
        };
        let near_source = w.role == ROLE_WRITER;
        match place(&w.zone, near_source, size, input.nodes, members, &placed) {
            Ok(node) => {
                placed.push((node.clone(), size));
                effects.push(Effect::Create {
                    name: w.name.clone(),
                    role: w.role.to_owned(),
                    zone: w.zone.clone(),
                    node,
                    readable: w.readable,
                });
            }
            Err(nodes) => refusals.push(refusal(&w.name, &w.zone, class, size, &nodes)),
        }
    }
    members_placed(&mut st, &refusals, input.now, &mut events);
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    for (name, m) in members {
        if m.spec_role == ROLE_REPLICA
            && !m.deleting
            && !wanted_names.contains(name.as_str())
            && *name != st.writer
            && !st.sync_standbys.contains(name)
        {
            effects.push(Effect::Delete { name: name.clone() });
        }
    }

    // Members on a node that is gone never come back: replaced. Not the writer of this epoch
    // (a failover replaces it first) and not during an election (they may be voters).
    if st.failover.is_none() {
        for (name, m) in members {
            let node_gone = !m.node.is_empty() && !input.nodes.iter().any(|n| n.name == m.node);
            if node_gone && !m.deleting && *name != st.writer {
                events.push(Event {
                    warning: true,
                    reason: "DBInstanceReplaced",
                    message: format!(
                        "DB instance {name} is replaced: its node {} is gone",
                        m.node
                    ),
                });
                effects.push(Effect::Replace { name: name.clone() });
            }
        }
    }

    // Bootstrap: the first member is the writer of epoch 1.
    if st.epoch == 0 {
        let first = member_name(input.cluster, 1);
        let exists = members.contains_key(&first)
            || effects
                .iter()
                .any(|e| matches!(e, Effect::Create { name, .. } if *name == first));
        if exists {
            st.epoch = 1;
            st.writer = first;
            st.sync_standbys.clear();
            st.sync_count = sync_count(spec);
            st.phase = PHASE_CREATING.into();
        }
    }

    if st.epoch > 0 {
        // The synchronous set grows with the standbys that stream from this epoch's writer.
        // A member joins only once it holds all the writer had when it last reported: a
        // commit acknowledged before then may be on no other member of the set.
        let writer_flush = members
            .get(&st.writer)
            .filter(|w| w.role == ROLE_WRITER && w.epoch == st.epoch)
            .map(|w| w.flush_lsn);
        if st.failover.is_none()
            && st.sync_count > 0
            && let Some(writer_flush) = writer_flush
        {
            for (name, m) in members {
                if m.spec_role != ROLE_REPLICA
                    && *name != st.writer
                    && m.role == ROLE_STANDBY
                    && m.streaming
                    && m.receive_lsn >= writer_flush
                    && m.epoch == st.epoch
                    && m.state == STATE_AVAILABLE
                    && !st.sync_standbys.contains(name)
                {
                    st.sync_standbys.push(name.clone());
                }
            }
        }
        // A cancel of the backtrack under way the user asked for.
        if let Some(request) = input.backtrack_cancel
            && request != st.backtrack_cancel_handled
        {
            st.backtrack_cancel_handled = request.to_owned();
            request_cancel(input, &mut st, &mut events);
        }
        match (st.backtrack.clone(), st.failover.clone()) {
            (Some(b), _) => backtracking(input, &mut st, b, &mut events),
            (None, Some(f)) => failing_over(input, &mut st, f, lease, &mut events, &mut wake),
            (None, None) => watch_writer(input, &mut st, lease, &mut events, &mut wake),
        }
        note_timeline(input, &mut st);
    }

    st.observed_generation = input.generation;
    st.members = summary(&st, members);
    st.parameter_apply_status = sum_parameter_apply_status(
        members
            .values()
            .filter(|m| !m.deleting)
            .map(|m| m.parameter_apply_status.as_str()),
    );
    st.endpoints = Some(endpoints(spec, &st, members, input.nodes, lease));
    Plan {
        status: st,
        effects,
        events,
        wake,
    }
}

/// `MembersPlaced`: `False` with why while some member fits on no node (and a
/// `FailedScheduling` event for each when that changes), `True` again once all have a node.
/// A cluster that never lacked room has no such condition.
fn members_placed(
    st: &mut DbClusterStatus,
    refusals: &[String],
    now: SystemTime,
    events: &mut Vec<Event>,
) {
    if refusals.is_empty() {
        if conditions::find(&st.conditions, CONDITION_MEMBERS_PLACED).is_some() {
            conditions::set(
                &mut st.conditions,
                CONDITION_MEMBERS_PLACED,
                conditions::TRUE,
                REASON_MEMBERS_PLACED,
                "every member has a node",
                now,
            );
        }
        return;
    }
    let changed = conditions::set(
        &mut st.conditions,
        CONDITION_MEMBERS_PLACED,
        conditions::FALSE,
        REASON_INSUFFICIENT_CAPACITY,
        &refusals.join(". "),
        now,
    );
    if changed {
        events.extend(refusals.iter().map(|r| Event {
            warning: true,
            reason: EVENT_FAILED_SCHEDULING,
            message: r.clone(),
        }));
    }
}

fn sync_count(spec: &DbClusterSpec) -> u32 {
    match spec.deployment.as_str() {
        MULTI_AZ_INSTANCE | MULTI_AZ_CLUSTER => 1,
        _ => 0,
    }
}

/// No failover under way: is the writer up, or does it need replacing?
fn watch_writer(
    input: &Input,
    st: &mut DbClusterStatus,
    lease: Duration,
    events: &mut Vec<Event>,
    wake: &mut Option<Duration>,
) {
    let writer = input.members.get(&st.writer);
    let up = writer.is_some_and(|w| w.role == ROLE_WRITER && w.epoch == st.epoch);

    // A switchover the user asked for.
    if let Some(request) = input.switchover
        && request != st.switchover_handled
    {
        st.switchover_handled = request.to_owned();
        let target = request.split_once('@').map(|(t, _)| t).unwrap_or("");
        if !up {
            events.push(Event {
                warning: true,
                reason: "SwitchoverRefused",
                message: "The switchover was not started: the writer is not available.".into(),
            });
        } else if st.sync_standbys.is_empty() {
            events.push(Event {
                warning: true,
                reason: "SwitchoverRefused",
                message: "The switchover was not started: no standby streams from the writer."
                    .into(),
            });
        } else if !target.is_empty() && !st.sync_standbys.iter().any(|s| s == target) {
            events.push(Event {
                warning: true,
                reason: "SwitchoverRefused",
                message: format!(
                    "The switchover was not started: {target} is not a synchronous standby \
                     (those are: {}).",
                    st.sync_standbys.join(", ")
                ),
            });
        } else {
            start_failover(input, st, REASON_SWITCHOVER, target, events);
            return;
        }
    }

    // A reboot the user asked for: the writer restarts in place in a new epoch, or with
    // `--force-failover` hands over to a standby as in a switchover.
    if let Some(request) = input.reboot
        && request != st.reboot_handled
    {
        st.reboot_handled = request.to_owned();
        let failover = request.starts_with("force-failover:");
        if !up {
            events.push(Event {
                warning: true,
                reason: "RebootRefused",
                message: "The reboot was not started: the writer is not available.".into(),
            });
        } else if failover && st.sync_standbys.is_empty() {
            events.push(Event {
                warning: true,
                reason: "RebootRefused",
                message: "The reboot with failover was not started: no standby is in the \
                          synchronous set."
                    .into(),
            });
        } else if failover {
            start_failover(input, st, REASON_SWITCHOVER, "", events);
            return;
        } else {
            st.epoch += 1;
            st.phase = PHASE_REBOOTING.into();
            events.push(Event {
                warning: false,
                reason: "DBInstanceRebooting",
                message: format!("Rebooting the writer {} (epoch {}).", st.writer, st.epoch),
            });
            return;
        }
    }

    // A backtrack the user asked for (checked against the window by the caller).
    if let Some((request, resolved)) = &input.backtrack
        && *request != st.backtrack_handled
    {
        st.backtrack_handled = (*request).to_owned();
        let refused = match resolved {
            Err(why) => Some(why.clone()),
            Ok(_) if !up => Some("the writer is not available".to_string()),
            Ok(_) => None,
        };
        match (refused, resolved) {
            (Some(why), _) => {
                st.backtrack_refused = why.clone();
                events.push(Event {
                    warning: true,
                    reason: "BacktrackRefused",
                    message: format!("The backtrack was not started: {why}."),
                });
            }
            (None, Ok(b)) => {
                start_backtrack(input, st, b.clone(), events);
                return;
            }
            (None, Err(_)) => {}
        }
    }

    if let Some(reason) = writer_down(writer, st.epoch, lease) {
        // Before the writer first came up in this epoch a missing report is not a failure,
        // nor is a member not yet in the cache (a deleted writer shows as deleting first).
        let started = writer.is_some_and(|w| w.epoch == st.epoch || w.deleting);
        if !started {
            st.phase = PHASE_CREATING.into();
            return;
        }
        if automatic(input.spec) && !st.sync_standbys.is_empty() {
            start_failover(input, st, reason, "", events);
        } else if reason == REASON_WRITER_FAILED {
            // No standby to take over: start the writer again in place, in a new epoch.
            st.epoch += 1;
            st.phase = PHASE_REBOOTING.into();
            events.push(Event {
                warning: true,
                reason: "DBInstanceRestarted",
                message: format!(
                    "PostgreSQL on {} stopped; restarting it in place (epoch {}).",
                    st.writer, st.epoch
                ),
            });
        } else if st.phase != PHASE_INACCESSIBLE {
            st.phase = PHASE_INACCESSIBLE.into();
            events.push(Event {
                warning: true,
                reason: "WriterLost",
                message: format!(
                    "The writer {} is unreachable and no standby can take over; waiting for it \
                     to come back.",
                    st.writer
                ),
            });
        }
        return;
    }
    if up {
        st.phase = PHASE_AVAILABLE.into();
        // Look again when the lease could have run out.
        if let Some(w) = writer
            && w.lease_epoch == st.epoch
        {
            let left = lease.saturating_sub(w.lease_silence) + Duration::from_millis(20);
            *wake = Some(wake.map_or(left, |x| x.min(left)));
        }
    } else if st.phase != PHASE_REBOOTING {
        st.phase = PHASE_CREATING.into();
    }
}

/// Starts a backtrack: the same writer in a new epoch, which its agent reaches by restoring
/// its data in place; the old history's end is noted on the timeline live until now.
fn start_backtrack(
    input: &Input,
    st: &mut DbClusterStatus,
    mut b: DbBacktrack,
    events: &mut Vec<Event>,
) {
    st.epoch += 1;
    b.epoch = st.epoch;
    b.started_at = Some(timestamp(input.now));
    if let Some(last) = st.timelines.last_mut() {
        last.archived_until = st.latest_restorable_time;
    }
    let to = target_of(&b);
    events.push(Event {
        warning: false,
        reason: "BacktrackStarted",
        message: format!(
            "Backtrack to {to} started: {} restores automated snapshot {} and the WAL of \
             timeline {} up to then (epoch {}); the cluster takes no writes until it completes.",
            st.writer, b.snapshot, b.timeline, st.epoch
        ),
    });
    st.backtrack = Some(b);
    st.backtrack_refused.clear();
    st.sync_standbys.clear();
    st.phase = PHASE_BACKTRACKING.into();
}

/// A backtrack under way: done once the writer reports the new epoch (its data restored,
/// promoted onto a new timeline), or cancelled once it reports its data from before back in
/// place. Nothing else starts meanwhile: a writer down during its restore is the restore's
/// business, not a failover's. The writer's failed attempts are copied into the status.
fn backtracking(
    input: &Input,
    st: &mut DbClusterStatus,
    mut b: DbBacktrack,
    events: &mut Vec<Event>,
) {
    st.phase = PHASE_BACKTRACKING.into();
    let Some(w) = input.members.get(&st.writer) else {
        return;
    };
    let to = target_of(&b);
    // Failed attempts: said in `backtrack.failures`/`error`, and in an event on the 1st, 2nd,
    // 4th, 8th... so that a writer retrying every few seconds does not flood the events.
    if w.backtrack_failures > b.failures && w.epoch < b.epoch {
        b.failures = w.backtrack_failures;
        b.error = w.message.clone();
        if b.failures.is_power_of_two() {
            events.push(Event {
                warning: true,
                reason: EVENT_BACKTRACK_FAILED,
                message: format!(
                    "The backtrack to {to} failed on {} ({} attempts so far; it keeps trying, \
                     `hanul db backtrack {} --cancel` gives it up): {}",
                    st.writer, b.failures, input.cluster, b.error
                ),
            });
        }
        st.backtrack = Some(b.clone());
    }
    // Cancelled: the writer's data from before is back in place. It starts again as the
    // writer of a new epoch; the backtrack leaves no trace in the history.
    if b.cancel_requested_at.is_some() && w.backtrack_cancelled == b.epoch && w.epoch < b.epoch {
        st.backtrack = None;
        st.epoch += 1;
        st.phase = PHASE_REBOOTING.into();
        if let Some(last) = st.timelines.last_mut() {
            // Live again: its archive was noted as ending when the backtrack started.
            last.archived_until = None;
        }
        events.push(Event {
            warning: false,
            reason: EVENT_BACKTRACK_CANCELLED,
            message: format!(
                "The backtrack to {to} was cancelled: {} starts again on its data from before it \
                 (epoch {}); the other members rejoin it.",
                st.writer, st.epoch
            ),
        });
        return;
    }
    // Restored: it reports the new epoch as writer, or it acted on the new epoch and has
    // stopped since (then the backtrack is over and its failure is handled as any writer's;
    // its new timeline is noted once it reports it).
    let writer = w.role == ROLE_WRITER;
    if w.epoch != b.epoch || !(writer || w.reported_down()) {
        return;
    }
    if b.cancel_requested_at.is_some() {
        events.push(cancel_too_late(&to));
    }
    st.timelines.push(DbTimeline {
        timeline: if writer { w.timeline } else { 0 },
        since: b.started_at,
        backtracked_to: b.target_time,
        epoch: b.epoch,
        archived_until: None,
    });
    st.backtracked_to = b.target_time;
    st.last_backtrack_time = Some(timestamp(input.now));
    st.backtrack = None;
    st.phase = PHASE_AVAILABLE.into();
    let took = input
        .now
        .duration_since(
            b.started_at
                .as_ref()
                .map_or(input.now, hanul_proto::time::system_time),
        )
        .unwrap_or_default();
    events.push(Event {
        warning: false,
        reason: "BacktrackCompleted",
        message: format!(
            "Backtrack to {} completed: the data is as it was then, on a new timeline ({}) \
             (epoch {}, {} ms).",
            b.target_time
                .as_ref()
                .map(hanul_proto::time::rfc3339)
                .unwrap_or_default(),
            if writer {
                w.timeline.to_string()
            } else {
                "its writer stopped since".into()
            },
            b.epoch,
            took.as_millis()
        ),
    });
}

/// Whether the writer has completed the backtrack `b`: it reports its epoch (see
/// [`backtracking`]).
fn backtrack_done(input: &Input, st: &DbClusterStatus, b: &DbBacktrack) -> bool {
    input
        .members
        .get(&st.writer)
        .is_some_and(|w| w.epoch == b.epoch && (w.role == ROLE_WRITER || w.reported_down()))
}

/// A backtrack's target time, as events say it.
fn target_of(b: &DbBacktrack) -> String {
    b.target_time
        .as_ref()
        .map(hanul_proto::time::rfc3339)
        .unwrap_or_default()
}

fn cancel_too_late(to: &str) -> Event {
    Event {
        warning: true,
        reason: EVENT_BACKTRACK_CANCEL_REFUSED,
        message: format!(
            "The backtrack to {to} was not cancelled: the writer had already restored its data \
             and promoted it (a new backtrack can go forward again within the window)."
        ),
    }
}

/// A cancel request: noted in the backtrack under way (`cancelRequestedAt`), which the
/// writer's agent acts on instead of another attempt; refused when there is none or it has
/// completed.
fn request_cancel(input: &Input, st: &mut DbClusterStatus, events: &mut Vec<Event>) {
    let done = st
        .backtrack
        .as_ref()
        .is_some_and(|b| backtrack_done(input, st, b));
    let Some(b) = st.backtrack.as_mut() else {
        events.push(Event {
            warning: true,
            reason: EVENT_BACKTRACK_CANCEL_REFUSED,
            message: "The backtrack was not cancelled: no backtrack is under way.".into(),
        });
        return;
    };
    let to = target_of(b);
    if done {
        // Completed in this very pass (see `backtracking`).
        events.push(cancel_too_late(&to));
        b.cancel_requested_at = None;
        return;
    }
    if b.cancel_requested_at.is_none() {
        b.cancel_requested_at = Some(timestamp(input.now));
        events.push(Event {
            warning: false,
            reason: EVENT_BACKTRACK_CANCELLING,
            message: format!(
                "Cancelling the backtrack to {to}: {} puts its data from before the backtrack \
                 back in place, unless the attempt under way completes first.",
                st.writer
            ),
        });
    }
}

/// Notes a new timeline of the writer (its first, or a failover's promotion) in
/// `status.timelines`; a backtrack's is noted when it completes.
fn note_timeline(input: &Input, st: &mut DbClusterStatus) {
    if st.backtrack.is_some() {
        return;
    }
    let Some(w) = input.members.get(&st.writer) else {
        return;
    };
    let up = w.role == ROLE_WRITER && w.epoch == st.epoch && w.timeline > 0;
    if let Some(last) = st.timelines.last_mut()
        && up
        && last.timeline == 0
    {
        // A backtrack's timeline, whose writer stopped before it reported it.
        last.timeline = w.timeline;
        return;
    }
    if up && st.timelines.last().is_none_or(|t| t.timeline != w.timeline) {
        st.timelines.push(DbTimeline {
            timeline: w.timeline,
            since: Some(timestamp(input.now)),
            epoch: st.epoch,
            ..Default::default()
        });
    }
}

fn start_failover(
    input: &Input,
    st: &mut DbClusterStatus,
    reason: &str,
    target: &str,
    events: &mut Vec<Event>,
) {
    st.failover = Some(DbFailover {
        epoch: st.epoch + 1,
        from: st.writer.clone(),
        reason: reason.to_owned(),
        target: target.to_owned(),
        started_at: Some(timestamp(input.now)),
    });
    st.phase = PHASE_FAILING_OVER.into();
    let message = match reason {
        REASON_SWITCHOVER => format!(
            "Switchover started: {} hands the writer role over.",
            st.writer
        ),
        REASON_WRITER_FAILED => format!(
            "Multi-AZ failover started: PostgreSQL on the writer {} stopped.",
            st.writer
        ),
        _ => format!(
            "Multi-AZ failover started: the writer {} lost its lease.",
            st.writer
        ),
    };
    events.push(Event {
        warning: reason != REASON_SWITCHOVER,
        reason: "FailoverStarted",
        message,
    });
}

/// A failover under way: count the votes, name the candidate, wait for its promotion.
fn failing_over(
    input: &Input,
    st: &mut DbClusterStatus,
    mut f: DbFailover,
    lease: Duration,
    events: &mut Vec<Event>,
    wake: &mut Option<Duration>,
) {
    st.phase = PHASE_FAILING_OVER.into();
    let members = input.members;
    if st.epoch == f.epoch {
        // The candidate is named: done once it reports itself writer of the new epoch.
        let Some(c) = members.get(&st.writer) else {
            return;
        };
        // Promoted: it reports the new epoch as writer, or it acted on the new epoch and has
        // stopped since (then the failover is over and its failure is handled as any
        // writer's).
        if c.epoch == f.epoch && (c.role == ROLE_WRITER || c.reported_down()) {
            st.failover = None;
            st.phase = PHASE_AVAILABLE.into();
            st.last_failover_time = Some(timestamp(input.now));
            let took = input
                .now
                .duration_since(
                    f.started_at
                        .as_ref()
                        .map_or(input.now, hanul_proto::time::system_time),
                )
                .unwrap_or_default();
            events.push(Event {
                warning: false,
                reason: "FailoverCompleted",
                message: format!(
                    "{} completed: {} is the writer of epoch {} ({} ms).",
                    if f.reason == REASON_SWITCHOVER {
                        "Switchover"
                    } else {
                        "Multi-AZ failover"
                    },
                    st.writer,
                    st.epoch,
                    took.as_millis()
                ),
            });
        }
        // Otherwise wait, even if the candidate went down before its promotion: it may hold
        // commits that no other voter has, so nobody else may take its place.
        return;
    }

    // Votes: every acknowledged commit is on one of any |S| - k + 1 members of S.
    let need = (st.sync_standbys.len() + 1).saturating_sub(st.sync_count.max(1) as usize);
    let voters: Vec<(&String, (u64, u64, u32))> = st
        .sync_standbys
        .iter()
        .filter_map(|name| {
            let m = members.get(name)?;
            let v = m.vote?;
            (v.0 == f.epoch).then_some((name, v))
        })
        .collect();
    if need == 0 || voters.len() < need {
        *wake = Some(Duration::from_millis(500));
        return;
    }
    // Never while the old writer may still write.
    if !fenced(members.get(&f.from), lease) {
        let left = members
            .get(&f.from)
            .map_or(Duration::ZERO, |m| lease.saturating_sub(m.lease_silence));
        *wake = Some(left + Duration::from_millis(20));
        return;
    }
    // Every voter of S followed this epoch's writer, so their WAL positions are on one
    // history and compare as positions. (A standby that just stopped streaming reports the
    // timeline of its last restartpoint, which may lag: it is shown, not compared.)
    let best = voters.iter().map(|(_, v)| v.1).max().unwrap_or_default();
    let best_timeline = voters
        .iter()
        .filter(|(_, v)| v.1 == best)
        .map(|(_, v)| v.2)
        .max()
        .unwrap_or_default();
    let candidate = voters
        .iter()
        .filter(|(_, v)| v.1 == best)
        .map(|(n, _)| (*n).clone())
        .max_by_key(|n| (*n == f.target, std::cmp::Reverse(n.clone())))
        .unwrap_or_default();
    if !f.target.is_empty() && f.target != candidate {
        events.push(Event {
            warning: true,
            reason: "SwitchoverTargetBehind",
            message: format!(
                "{} has less WAL than {candidate}; promoting {candidate} instead.",
                f.target
            ),
        });
    }
    events.push(Event {
        warning: false,
        reason: "PromotingStandby",
        message: format!(
            "Promoting {candidate} (timeline {best_timeline}, WAL {}) to writer of epoch {}.",
            hanul_proto::db::format_lsn(best),
            f.epoch
        ),
    });
    // The new synchronous set: the other voters with as much WAL as the candidate (one with
    // less may lack commits only the candidate has), which follow the new writer at once; the
    // others join once they have caught up.
    st.sync_standbys = voters
        .iter()
        .filter(|(n, v)| **n != candidate && v.1 == best)
        .map(|(n, _)| (*n).clone())
        .collect();
    st.epoch = f.epoch;
    st.writer = candidate.clone();
    f.target = candidate;
    st.failover = Some(f);
}

fn summary(st: &DbClusterStatus, members: &BTreeMap<String, Member>) -> Vec<DbClusterMember> {
    let writer_lsn = members.get(&st.writer).map_or(0, |w| w.flush_lsn);
    members
        .iter()
        .map(|(name, m)| {
            let role = if *name == st.writer {
                MEMBER_WRITER
            } else if m.spec_role == ROLE_REPLICA {
                MEMBER_READ_REPLICA
            } else if st.sync_standbys.contains(name) {
                MEMBER_SYNC_STANDBY
            } else {
                MEMBER_STANDBY
            };
            let lsn = if *name == st.writer {
                m.flush_lsn
            } else {
                m.replay_lsn
            };
            DbClusterMember {
                name: name.clone(),
                role: role.into(),
                node: m.node.clone(),
                zone: m.zone.clone(),
                state: m.state.clone(),
                address: m.address.clone(),
                timeline: m.timeline,
                lsn,
                lag_bytes: if *name == st.writer {
                    0
                } else {
                    writer_lsn.saturating_sub(lsn)
                },
                lag_seconds: m.lag_seconds,
                parameter_apply_status: m.parameter_apply_status.clone(),
            }
        })
        .collect()
}

/// Where the endpoints run: the current node while it is Ready, else a Ready node without the
/// writer (one fewer failure that takes both), by name. They stay put when a failover brings
/// the writer to their node: a move changes their address (`node-address:port`) and resets
/// the connections through them, and made in the middle of a failover it delayed the first
/// commit through them by about a second (measured by `hanul-bench db`). A node whose agent
/// let a writer's lease run out counts as not Ready: the agent is likely gone, before the
/// node is marked NotReady.
fn endpoints(
    spec: &DbClusterSpec,
    st: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    nodes: &[NodeInfo],
    lease: Duration,
) -> DbEndpoints {
    let old = st.endpoints.clone().unwrap_or_default();
    let writer_node = members
        .get(&st.writer)
        .map(|m| m.node.as_str())
        .unwrap_or("");
    let silent: BTreeSet<&str> = members
        .values()
        .filter(|m| {
            m.role == ROLE_WRITER
                && m.lease_epoch == m.epoch
                && m.lease_epoch > 0
                && m.lease_silence > lease
        })
        .map(|m| m.node.as_str())
        .collect();
    let ready: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| n.ready && !silent.contains(n.name.as_str()))
        .collect();
    let keep = ready.iter().find(|n| n.name == old.node);
    let chosen = keep
        .copied()
        .or_else(|| ready.iter().find(|n| n.name != writer_node).copied())
        .or_else(|| ready.first().copied())
        .or_else(|| nodes.iter().find(|n| n.name == old.node));
    let port = spec.port.unwrap_or(DEFAULT_PORT);
    let (node, writer, reader) = match chosen {
        Some(n) => (
            n.name.clone(),
            format!("{}:{port}", n.address),
            format!("{}:{}", n.address, port + 1),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    DbEndpoints {
        writer,
        reader,
        node,
        members: members
            .iter()
            .filter(|(_, m)| !m.address.is_empty())
            .map(|(n, m)| (n.clone(), m.address.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
