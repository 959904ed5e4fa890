//! The scheduler's pure planner: given the pending instances, the nodes and what is bound to
//! them, decide where each pending instance goes, or why it cannot go anywhere, and which spot
//! instances to reclaim for it.
//!
//! Rules, in the order they apply to one pending instance (pending instances are taken oldest
//! first, by creation time then name, and each binding is counted against its node before the
//! next instance is placed):
//! 1. Filter: a node is a candidate when its `Ready` condition is `True`, it is not cordoned
//!    (`spec.unschedulable`), it is in the instance's `spec.zone` (if any), it is the node of
//!    the instance's `spec.nodeName` pin (if any), and its free vCPU and memory (allocatable less
//!    what the instances bound there hold) cover the instance type.
//! 2. Score: spread the instance's group (its controller owner, else the `hanul.dev/group`
//!    label) across zones first, then nodes: the zone with the fewest instances of the group,
//!    then the node with the fewest, then the node with the most free memory, then by name.
//! 3. No candidate, and the instance is on-demand or reserved: look for spot instances to reclaim
//!    on one node whose other filters pass, choosing the fewest victims that make it fit (spot
//!    instances already under an interruption notice count as free victims, so the planner
//!    keeps choosing them instead of piling up notices). On-demand and reserved instances are
//!    never victims.
//! 4. Otherwise the instance is unschedulable, with a message that says why for each node.
//!
//! Spot instances whose interruption notice has run out are reclaimed ([`Decision::Reclaim`]).

use hanul_proto::instance::Market;
use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    time::SystemTime,
};

/// What an instance type asks of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Size {
    /// Thousandths of a vCPU.
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

impl Size {
    pub fn new(cpu_millis: u64, memory_mib: u64) -> Size {
        Size {
            cpu_millis,
            memory_mib,
        }
    }

    /// What a DB member of instance class `c` holds on its node.
    pub fn of_class(c: &hanul_proto::db::InstanceClass) -> Size {
        Size::new(u64::from(c.vcpus) * 1000, c.memory_mib)
    }
}

impl fmt::Display for Size {
    /// `2 vCPU and 1024 MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vCPU and {} MiB",
            vcpu(self.cpu_millis as i64),
            self.memory_mib
        )
    }
}

/// `1500` → `1.5`, `2000` → `2`, `250` → `0.25`.
pub(crate) fn vcpu(millis: i64) -> String {
    let sign = if millis < 0 { "-" } else { "" };
    let m = millis.unsigned_abs();
    let (whole, frac) = (m / 1000, m % 1000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:03}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// A node as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub zone: String,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `status.allocatable`, or `spec.capacity` when the agent has not reported it.
    pub allocatable: Size,
}

/// An instance as the planner sees it: a pending one, or one bound to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub name: String,
    /// Creation time: pending instances are placed oldest first.
    pub created: SystemTime,
    /// The group it spreads with (see the module doc), if any.
    pub group: Option<String>,
    /// `spec.instanceType`.
    pub instance_type: String,
    /// `spec.zone`: empty lets the scheduler choose.
    pub zone: String,
    /// `spec.nodeName`: a user's pin; empty when unpinned.
    pub node_name: String,
    pub market: Market,
    /// `status.node`: empty while pending.
    pub node: String,
    /// When its spot interruption notice ends, if it has one.
    pub interruption: Option<SystemTime>,
    /// It is being deleted (`metadata.deletedAt`): it goes anyway, so it is never a victim.
    pub deleting: bool,
}

/// One thing the executor should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind `instance` to `node`, in `zone` (the node's).
    Bind {
        instance: String,
        node: String,
        zone: String,
    },
    /// `instance` fits nowhere; `message` says why, node by node.
    Unschedulable { instance: String, message: String },
    /// `for_instance` fits on `node` once the spot instances `victims` are reclaimed: give each
    /// victim without one an interruption notice. `message` says why it waits.
    Preempt {
        for_instance: String,
        node: String,
        victims: Vec<String>,
        message: String,
    },
    /// The interruption notice of spot instance `instance` has run out: terminate it.
    Reclaim { instance: String },
}

/// Most nodes a message lists one by one.
const MAX_NODES_IN_MESSAGE: usize = 8;
/// Most victim candidates on one node searched exhaustively; beyond, a greedy choice.
const MAX_EXHAUSTIVE_VICTIMS: usize = 12;

/// Free capacity; signed, as a node may be over-committed (by pins, or a shrunk allocatable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Free {
    /// Thousandths of a vCPU.
    pub cpu: i64,
    /// MiB.
    pub mem: i64,
}

impl Free {
    pub fn of(s: Size) -> Free {
        Free {
            cpu: s.cpu_millis as i64,
            mem: s.memory_mib as i64,
        }
    }

    /// Whether `s` fits in it.
    pub fn covers(self, s: Size) -> bool {
        self.cpu >= s.cpu_millis as i64 && self.mem >= s.memory_mib as i64
    }

    fn plus(self, s: Size) -> Free {
        Free {
            cpu: self.cpu + s.cpu_millis as i64,
            mem: self.mem + s.memory_mib as i64,
        }
    }

    pub fn minus(self, s: Size) -> Free {
        Free {
            cpu: self.cpu - s.cpu_millis as i64,
            mem: self.mem - s.memory_mib as i64,
        }
    }
}

/// A spot instance on a node that could be reclaimed.
#[derive(Clone, Debug)]
struct Candidate {
    name: String,
    size: Size,
    /// Already under an interruption notice: reclaiming it costs nothing more.
    noticed: bool,
}

/// A node and what the plan has counted against it so far.
#[derive(Debug)]
struct NodeState<'a> {
    view: &'a NodeView,
    free: Free,
    /// Spot instances not yet claimed by a preemption in this plan.
    spot: Vec<Candidate>,
}

/// Why a node was not chosen.
enum Rejection {
    Pin,
    Zone,
    NotReady,
    Cordoned,
    Full(Free),
}

/// What is free on each node (by name): its allocatable less the sizes of the instances `bound`
/// to it. An instance of a type not in `types` holds nothing we can count; one bound to a node
/// not in `nodes` is left out. This is the accounting [`plan`] starts from, and the DB cluster
/// controller's placement of members too.
pub fn free_by_node(
    nodes: &[NodeView],
    bound: &[InstanceView],
    types: &HashMap<String, Size>,
) -> BTreeMap<String, Free> {
    let mut free: BTreeMap<String, Free> = nodes
        .iter()
        .map(|n| (n.name.clone(), Free::of(n.allocatable)))
        .collect();
    for b in bound {
        if let Some(f) = free.get_mut(&b.node) {
            *f = f.minus(types.get(&b.instance_type).copied().unwrap_or_default());
        }
    }
    free
}

/// Plans the placement of `pending` (instances without a node) on `nodes`, given the instances
/// already `bound` to them, the sizes of instance `types`, and `now` (for interruption notices).
/// Deterministic: the same input, in any order, gives the same decisions.
pub fn plan(
    pending: &[InstanceView],
    nodes: &[NodeView],
    bound: &[InstanceView],
    types: &HashMap<String, Size>,
    now: SystemTime,
) -> Vec<Decision> {
    let mut decisions = Vec::new();

    let mut node_list: Vec<&NodeView> = nodes.iter().collect();
    node_list.sort_by(|a, b| a.name.cmp(&b.name));
    let free = free_by_node(nodes, bound, types);
    let mut state: BTreeMap<&str, NodeState> = node_list
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                NodeState {
                    view: n,
                    // `free_by_node` has every node.
                    free: free[&n.name],
                    spot: Vec::new(),
                },
            )
        })
        .collect();

    // Group counts per zone and per node, from what is bound.
    let mut zone_count: HashMap<(String, String), usize> = HashMap::new();
    let mut node_count: HashMap<(String, String), usize> = HashMap::new();

    let mut bound_sorted: Vec<&InstanceView> = bound.iter().collect();
    bound_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for b in &bound_sorted {
        if let Some(at) = b.interruption
            && b.market == Market::Spot
            && at <= now
        {
            decisions.push(Decision::Reclaim {
                instance: b.name.clone(),
            });
        }
        let Some(node) = state.get_mut(b.node.as_str()) else {
            continue;
        };
        // Counted against the node by `free_by_node`; an unknown type holds nothing.
        let size = types.get(&b.instance_type).copied().unwrap_or_default();
        if b.market == Market::Spot && !b.deleting {
            node.spot.push(Candidate {
                name: b.name.clone(),
                size,
                noticed: b.interruption.is_some(),
            });
        }
        if let Some(g) = &b.group {
            *zone_count
                .entry((g.clone(), node.view.zone.clone()))
                .or_default() += 1;
            *node_count.entry((g.clone(), b.node.clone())).or_default() += 1;
        }
    }

    let mut order: Vec<&InstanceView> = pending.iter().collect();
    order.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut seen = HashSet::new();
    for inst in order {
        if !seen.insert(inst.name.as_str()) {
            continue;
        }
        let Some(&size) = types.get(&inst.instance_type) else {
            decisions.push(Decision::Unschedulable {
                instance: inst.name.clone(),
                message: format!(
                    "instance type {:?} does not exist; create it or choose another",
                    inst.instance_type
                ),
            });
            continue;
        };

        let mut rejections: Vec<(&NodeView, Rejection)> = Vec::new();
        let mut fits: Vec<&str> = Vec::new();
        let mut eligible: Vec<&str> = Vec::new();
        for (name, node) in &state {
            match filter(inst, node, size) {
                Ok(()) => {
                    fits.push(name);
                    eligible.push(name);
                }
                Err(r) => {
                    if matches!(r, Rejection::Full(_)) {
                        eligible.push(name);
                    }
                    rejections.push((node.view, r));
                }
            }
        }

        if let Some(best) = fits.into_iter().min_by_key(|name| {
            let node = &state[name];
            let group_in = |counts: &HashMap<(String, String), usize>, key: &str| {
                inst.group
                    .as_ref()
                    .and_then(|g| counts.get(&(g.clone(), key.to_string())))
                    .copied()
                    .unwrap_or(0)
            };
            (
                group_in(&zone_count, &node.view.zone),
                group_in(&node_count, name),
                Reverse(node.free.mem),
                *name,
            )
        }) {
            let node = state.get_mut(best).expect("chosen among the nodes");
            node.free = node.free.minus(size);
            if let Some(g) = &inst.group {
                *zone_count
                    .entry((g.clone(), node.view.zone.clone()))
                    .or_default() += 1;
                *node_count.entry((g.clone(), best.to_string())).or_default() += 1;
            }
            decisions.push(Decision::Bind {
                instance: inst.name.clone(),
                node: best.to_string(),
                zone: node.view.zone.clone(),
            });
            continue;
        }

        let message = unschedulable_message(inst, size, &rejections, state.is_empty());
        if inst.market != Market::Spot
            && let Some((node_name, victims)) = choose_victims(&state, &eligible, size)
        {
            let node = state
                .get_mut(node_name.as_str())
                .expect("chosen among the nodes");
            let freed = victims.iter().fold(Size::default(), |acc, v| {
                Size::new(
                    acc.cpu_millis + v.size.cpu_millis,
                    acc.memory_mib + v.size.memory_mib,
                )
            });
            // What stays usable now: no more than is free now, and no more than what leaves
            // room for this instance once the victims are gone.
            let after = node.free.plus(freed).minus(size);
            node.free = Free {
                cpu: node.free.cpu.min(after.cpu),
                mem: node.free.mem.min(after.mem),
            };
            let names: Vec<String> = victims.iter().map(|v| v.name.clone()).collect();
            node.spot.retain(|c| !names.contains(&c.name));
            decisions.push(Decision::Preempt {
                for_instance: inst.name.clone(),
                node: node_name.clone(),
                message: format!(
                    "{message}; reclaiming spot instance{} {} on {node_name}",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
                victims: names,
            });
            continue;
        }
        decisions.push(Decision::Unschedulable {
            instance: inst.name.clone(),
            message,
        });
    }
    decisions
}

/// Whether `inst` may go on `node` now, and if not, why.
fn filter(inst: &InstanceView, node: &NodeState, size: Size) -> Result<(), Rejection> {
    let v = node.view;
    if !inst.node_name.is_empty() && inst.node_name != v.name {
        return Err(Rejection::Pin);
    }
    if !inst.zone.is_empty() && inst.zone != v.zone {
        return Err(Rejection::Zone);
    }
    if !v.ready {
        return Err(Rejection::NotReady);
    }
    if v.unschedulable {
        return Err(Rejection::Cordoned);
    }
    if !node.free.covers(size) {
        return Err(Rejection::Full(node.free));
    }
    Ok(())
}

/// The node among `eligible` (nodes that pass every filter but capacity) where reclaiming the
/// fewest spot instances makes room for `size`, and those instances. Victims already under a
/// notice count as free; ties go to fewer victims in all, then to the node's name.
fn choose_victims(
    state: &BTreeMap<&str, NodeState>,
    eligible: &[&str],
    size: Size,
) -> Option<(String, Vec<Candidate>)> {
    // (new notices, victims, node name) → the victims.
    type Choice<'n> = ((usize, usize, &'n str), Vec<Candidate>);
    let mut best: Option<Choice> = None;
    for &name in eligible {
        let node = &state[name];
        let Some(victims) = victims_on(node, size) else {
            continue;
        };
        let new = victims.iter().filter(|v| !v.noticed).count();
        let key = (new, victims.len(), name);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, victims));
        }
    }
    best.map(|((_, _, name), victims)| (name.to_string(), victims))
}

/// The fewest spot instances on `node` whose reclaim makes room for `size` (sorted by name).
fn victims_on(node: &NodeState, size: Size) -> Option<Vec<Candidate>> {
    let mut cands = node.spot.clone();
    // Largest first, noticed first: the greedy order, and a stable order for the search.
    cands.sort_by(|a, b| {
        (
            !a.noticed,
            Reverse(a.size.memory_mib),
            Reverse(a.size.cpu_millis),
            &a.name,
        )
            .cmp(&(
                !b.noticed,
                Reverse(b.size.memory_mib),
                Reverse(b.size.cpu_millis),
                &b.name,
            ))
    });
    let fits = |chosen: &[&Candidate]| {
        chosen
            .iter()
            .fold(node.free, |f, c| f.plus(c.size))
            .covers(size)
    };
    let chosen: Vec<Candidate> = if cands.len() <= MAX_EXHAUSTIVE_VICTIMS {
        // Every subset: the fewest new notices, then the fewest victims, then the first in
        // the order above.
        let mut best: Option<(usize, usize, Vec<usize>)> = None;
        for mask in 1u32..(1 << cands.len()) {
            let picked: Vec<usize> = (0..cands.len()).filter(|i| mask & (1 << i) != 0).collect();
            let chosen: Vec<&Candidate> = picked.iter().map(|&i| &cands[i]).collect();
            if !fits(&chosen) {
                continue;
            }
            let key = (
                chosen.iter().filter(|c| !c.noticed).count(),
                chosen.len(),
                picked,
            );
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        let (_, _, picked) = best?;
        picked.into_iter().map(|i| cands[i].clone()).collect()
    } else {
        let mut chosen = Vec::new();
        for c in &cands {
            if fits(&chosen.iter().collect::<Vec<_>>()) {
                break;
            }
            chosen.push(c.clone());
        }
        if !fits(&chosen.iter().collect::<Vec<_>>()) {
            return None;
        }
        chosen
    };
    let mut chosen = chosen;
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    Some(chosen)
}

/// `no Ready node in zone az-b has 2 vCPU and 1024 MiB free for t3.micro; node-1 (az-a): zone
/// mismatch; node-2 (az-b): 1.5 vCPU, 512 MiB free`.
fn unschedulable_message(
    inst: &InstanceView,
    size: Size,
    rejections: &[(&NodeView, Rejection)],
    no_nodes: bool,
) -> String {
    let mut out = String::from("no Ready node");
    if !inst.node_name.is_empty() {
        out.push_str(&format!(" named {}", inst.node_name));
    }
    if !inst.zone.is_empty() {
        out.push_str(&format!(" in zone {}", inst.zone));
    }
    out.push_str(&format!(" has {size} free for {}", inst.instance_type));
    if no_nodes {
        out.push_str("; no nodes are registered");
        return out;
    }
    if !inst.node_name.is_empty() && !rejections.iter().any(|(n, _)| n.name == inst.node_name) {
        out.push_str(&format!("; node {} does not exist", inst.node_name));
    }
    // The pinned node first: it is the one that matters.
    let mut listed: Vec<&(&NodeView, Rejection)> = rejections.iter().collect();
    listed.sort_by_key(|(n, _)| (n.name != inst.node_name, n.name.clone()));
    for (node, why) in listed.iter().take(MAX_NODES_IN_MESSAGE) {
        let why = match why {
            Rejection::Pin => format!("not spec.nodeName {}", inst.node_name),
            Rejection::Zone => "zone mismatch".to_string(),
            Rejection::NotReady => "not Ready".to_string(),
            Rejection::Cordoned => "unschedulable (cordoned)".to_string(),
            Rejection::Full(f) => format!("{} vCPU, {} MiB free", vcpu(f.cpu), f.mem),
        };
        out.push_str(&format!("; {} ({}): {why}", node.name, node.zone));
    }
    if listed.len() > MAX_NODES_IN_MESSAGE {
        out.push_str(&format!(
            "; and {} more nodes",
            listed.len() - MAX_NODES_IN_MESSAGE
        ));
    }
    out
}

#[cfg(test)]
mod tests;
