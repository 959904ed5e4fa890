use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
}

fn types() -> HashMap<String, Size> {
    [
        ("small", Size::new(1000, 512)),
        ("medium", Size::new(2000, 1024)),
        ("large", Size::new(4000, 4096)),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect()
}

fn node(name: &str, zone: &str, cpu: u64, mem: u64) -> NodeView {
    NodeView {
        name: name.into(),
        zone: zone.into(),
        ready: true,
        unschedulable: false,
        allocatable: Size::new(cpu, mem),
    }
}

fn inst(name: &str, ty: &str) -> InstanceView {
    InstanceView {
        name: name.into(),
        created: t0(),
        group: None,
        instance_type: ty.into(),
        zone: String::new(),
        node_name: String::new(),
        market: Market::OnDemand,
        node: String::new(),
        interruption: None,
        deleting: false,
    }
}

fn on(mut i: InstanceView, node: &str) -> InstanceView {
    i.node = node.into();
    i
}

fn spot(mut i: InstanceView) -> InstanceView {
    i.market = Market::Spot;
    i
}

fn bind(instance: &str, node: &str, zone: &str) -> Decision {
    Decision::Bind {
        instance: instance.into(),
        node: node.into(),
        zone: zone.into(),
    }
}

// ---- Examples ----

#[test]
fn an_instance_goes_to_a_ready_node_in_its_zone() {
    let nodes = [
        node("n1", "az-a", 4000, 4096),
        node("n2", "az-b", 4000, 4096),
    ];
    let mut i = inst("i-1", "small");
    i.zone = "az-b".into();
    let d = plan(&[i], &nodes, &[], &types(), t0());
    assert_eq!(d, vec![bind("i-1", "n2", "az-b")]);
}

#[test]
fn a_pin_to_a_node_is_honoured() {
    let nodes = [
        node("n1", "az-a", 4000, 4096),
        node("n2", "az-a", 4000, 4096),
    ];
    let mut i = inst("i-1", "small");
    i.node_name = "n2".into();
    let d = plan(&[i], &nodes, &[], &types(), t0());
    assert_eq!(d, vec![bind("i-1", "n2", "az-a")]);
}

#[test]
fn a_too_big_instance_is_unschedulable_with_a_reason_per_node() {
    let mut down = node("n3", "az-b", 8000, 8192);
    down.ready = false;
    let nodes = [
        node("n1", "az-a", 8000, 8192),
        node("n2", "az-b", 1500, 512),
        down,
    ];
    let mut i = inst("i-1", "medium");
    i.zone = "az-b".into();
    let d = plan(&[i], &nodes, &[], &types(), t0());
    let [Decision::Unschedulable { instance, message }] = d.as_slice() else {
        panic!("{d:?}");
    };
    assert_eq!(instance, "i-1");
    assert_eq!(
        message,
        "no Ready node in zone az-b has 2 vCPU and 1024 MiB free for medium; \
         n1 (az-a): zone mismatch; n2 (az-b): 1.5 vCPU, 512 MiB free; n3 (az-b): not Ready"
    );
}

#[test]
fn an_unknown_instance_type_is_unschedulable() {
    let d = plan(
        &[inst("i-1", "huge")],
        &[node("n1", "az-a", 4000, 4096)],
        &[],
        &types(),
        t0(),
    );
    assert!(
        matches!(&d[..], [Decision::Unschedulable { message, .. }] if message.contains("\"huge\"")),
        "{d:?}"
    );
}

#[test]
fn capacity_is_counted_as_instances_are_bound_oldest_first() {
    let nodes = [node("n1", "az-a", 2000, 2048)];
    let mut young = inst("a-young", "medium");
    young.created = t0() + Duration::from_secs(5);
    let old = inst("z-old", "medium");
    let d = plan(&[young, old], &nodes, &[], &types(), t0());
    assert_eq!(d[0], bind("z-old", "n1", "az-a"));
    assert!(
        matches!(&d[1], Decision::Unschedulable { instance, .. } if instance == "a-young"),
        "{d:?}"
    );
}

#[test]
fn a_group_spreads_over_zones_then_nodes() {
    let nodes = [
        node("a1", "az-a", 8000, 8192),
        node("a2", "az-a", 8000, 8192),
        node("b1", "az-b", 8000, 8192),
    ];
    let pending: Vec<InstanceView> = (0..4)
        .map(|n| {
            let mut i = inst(&format!("web-{n}"), "small");
            i.group = Some("AutoScalingGroup/web".into());
            i
        })
        .collect();
    let d = plan(&pending, &nodes, &[], &types(), t0());
    let per_node = |n: &str| {
        d.iter()
            .filter(|x| matches!(x, Decision::Bind { node, .. } if node == n))
            .count()
    };
    assert_eq!((per_node("a1") + per_node("a2"), per_node("b1")), (2, 2));
    assert_eq!((per_node("a1"), per_node("a2")), (1, 1), "{d:?}");
}

#[test]
fn a_spot_instance_is_reclaimed_for_an_on_demand_one_that_fits_nowhere() {
    let nodes = [node("n1", "az-a", 2000, 2048)];
    let bound = [
        spot(on(inst("s-1", "small"), "n1")),
        on(inst("od-1", "small"), "n1"),
    ];
    let d = plan(&[inst("od-2", "small")], &nodes, &bound, &types(), t0());
    let [
        Decision::Preempt {
            for_instance,
            node,
            victims,
            message,
        },
    ] = d.as_slice()
    else {
        panic!("{d:?}");
    };
    assert_eq!((for_instance.as_str(), node.as_str()), ("od-2", "n1"));
    assert_eq!(victims, &["s-1".to_string()]);
    assert!(
        message.contains("reclaiming spot instance s-1 on n1"),
        "{message}"
    );
}

#[test]
fn the_fewest_victims_are_chosen_and_noticed_ones_first() {
    let nodes = [node("n1", "az-a", 4000, 4096)];
    let mut bound = vec![
        spot(on(inst("s-small-1", "small"), "n1")),
        spot(on(inst("s-small-2", "small"), "n1")),
        spot(on(inst("s-medium", "medium"), "n1")),
    ];
    let d = plan(&[inst("od", "medium")], &nodes, &bound, &types(), t0());
    assert!(
        matches!(&d[..], [Decision::Preempt { victims, .. }] if victims == &["s-medium".to_string()]),
        "{d:?}"
    );
    // With both small ones already noticed, they cost nothing new.
    bound[0].interruption = Some(t0() + Duration::from_secs(60));
    bound[1].interruption = Some(t0() + Duration::from_secs(60));
    let d = plan(&[inst("od", "medium")], &nodes, &bound, &types(), t0());
    assert!(
        matches!(&d[..], [Decision::Preempt { victims, .. }] if victims.len() == 2 && !victims.contains(&"s-medium".to_string())),
        "{d:?}"
    );
}

#[test]
fn on_demand_and_reserved_instances_are_never_reclaimed() {
    let nodes = [node("n1", "az-a", 2000, 1024)];
    let mut reserved = on(inst("r-1", "small"), "n1");
    reserved.market = Market::Reserved;
    let bound = [on(inst("od-1", "small"), "n1"), reserved];
    let d = plan(&[inst("od-2", "small")], &nodes, &bound, &types(), t0());
    assert!(matches!(&d[..], [Decision::Unschedulable { .. }]), "{d:?}");
}

#[test]
fn a_pending_spot_instance_reclaims_nothing() {
    let nodes = [node("n1", "az-a", 1000, 512)];
    let bound = [spot(on(inst("s-1", "small"), "n1"))];
    let d = plan(
        &[spot(inst("s-2", "small"))],
        &nodes,
        &bound,
        &types(),
        t0(),
    );
    assert!(matches!(&d[..], [Decision::Unschedulable { .. }]), "{d:?}");
}

#[test]
fn a_spot_instance_whose_notice_ran_out_is_reclaimed() {
    let nodes = [node("n1", "az-a", 4000, 4096)];
    let mut s = spot(on(inst("s-1", "small"), "n1"));
    s.interruption = Some(t0() + Duration::from_secs(120));
    let d = plan(&[], &nodes, std::slice::from_ref(&s), &types(), t0());
    assert!(d.is_empty(), "{d:?}");
    let later = t0() + Duration::from_secs(120);
    let d = plan(&[], &nodes, &[s], &types(), later);
    assert_eq!(
        d,
        vec![Decision::Reclaim {
            instance: "s-1".into()
        }]
    );
}

#[test]
fn a_preemption_reserves_the_room_it_makes_against_later_instances() {
    // od-1 needs the spot's room; the spot instance s-2 that comes later must not take the
    // 1 vCPU left now, or od-1 would not fit once s-1 goes.
    let nodes = [node("n1", "az-a", 3000, 4096)];
    let bound = [spot(on(inst("s-1", "small"), "n1"))];
    let od = inst("od-1", "medium");
    let mut later = spot(inst("s-2", "small"));
    later.created = t0() + Duration::from_secs(1);
    let d = plan(&[od, later], &nodes, &bound, &types(), t0());
    // od-1 needs 2 vCPU; 2 are free: it binds now, and s-2 finds no room.
    assert_eq!(d[0], bind("od-1", "n1", "az-a"));
    assert!(matches!(&d[1], Decision::Unschedulable { .. }), "{d:?}");

    let nodes = [node("n1", "az-a", 2000, 4096)];
    let bound = [spot(on(inst("s-1", "small"), "n1"))];
    let mut later = spot(inst("s-2", "small"));
    later.created = t0() + Duration::from_secs(1);
    let d = plan(
        &[inst("od-1", "medium"), later],
        &nodes,
        &bound,
        &types(),
        t0(),
    );
    assert!(matches!(&d[0], Decision::Preempt { .. }), "{d:?}");
    assert!(matches!(&d[1], Decision::Unschedulable { .. }), "{d:?}");
}

#[test]
fn vcpu_is_printed_like_a_person_would() {
    assert_eq!(vcpu(2000), "2");
    assert_eq!(vcpu(1500), "1.5");
    assert_eq!(vcpu(250), "0.25");
    assert_eq!(vcpu(-500), "-0.5");
}

// ---- Properties ----

const ZONES: [&str; 3] = ["az-a", "az-b", "az-c"];
const TYPES: [&str; 4] = ["small", "medium", "large", "missing"];
const GROUPS: [&str; 2] = ["g1", "g2"];

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        0..ZONES.len(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.15),
        0u64..=8,
        0u64..=8,
    )
        .prop_map(move |(z, ready, cordoned, cpu, mem)| NodeView {
            name: format!("n{i}"),
            zone: ZONES[z].into(),
            ready,
            unschedulable: cordoned,
            allocatable: Size::new(cpu * 1000, mem * 1024),
        })
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    (0usize..6).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

/// An instance named `prefix{i}`; `nodes` is how many nodes exist (for pins and bindings).
fn arb_instance(
    prefix: &'static str,
    i: usize,
    nodes: usize,
) -> impl Strategy<Value = InstanceView> {
    (
        0..TYPES.len(),
        prop::option::weighted(0.3, 0..ZONES.len()),
        prop::option::weighted(0.15, 0..nodes.max(1) + 1),
        0..3usize,
        prop::option::weighted(0.6, 0..GROUPS.len()),
        0u64..20,
        0..nodes.max(1),
        prop::option::weighted(0.2, 0u64..300),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            move |(ty, zone, pin, market, group, age, on, notice, deleting)| InstanceView {
                name: format!("{prefix}{i}"),
                created: t0() + Duration::from_secs(age),
                group: group.map(|g| GROUPS[g].to_string()),
                instance_type: TYPES[ty].into(),
                zone: zone.map(|z| ZONES[z].to_string()).unwrap_or_default(),
                node_name: pin.map(|p| format!("n{p}")).unwrap_or_default(),
                market: [Market::OnDemand, Market::Spot, Market::Reserved][market],
                node: if prefix == "b" {
                    format!("n{on}")
                } else {
                    String::new()
                },
                interruption: notice.map(|s| t0() + Duration::from_secs(s)),
                deleting,
            },
        )
}

fn arb_world() -> impl Strategy<Value = (Vec<NodeView>, Vec<InstanceView>, Vec<InstanceView>)> {
    arb_nodes().prop_flat_map(|nodes| {
        let n = nodes.len();
        let pending = (0usize..10)
            .prop_flat_map(move |k| (0..k).map(|i| arb_instance("p", i, n)).collect::<Vec<_>>());
        let bound = (0usize..10)
            .prop_flat_map(move |k| (0..k).map(|i| arb_instance("b", i, n)).collect::<Vec<_>>());
        (Just(nodes), pending, bound)
    })
}

fn now() -> SystemTime {
    t0() + Duration::from_secs(150)
}

proptest! {
    #[test]
    fn the_plan_never_over_commits_a_node((nodes, pending, bound) in arb_world()) {
        let types = types();
        let d = plan(&pending, &nodes, &bound, &types, now());
        for n in &nodes {
            let used = bound.iter().filter(|b| b.node == n.name).fold((0i64, 0i64), |acc, b| {
                let s = types.get(&b.instance_type).copied().unwrap_or_default();
                (acc.0 + s.cpu_millis as i64, acc.1 + s.memory_mib as i64)
            });
            let room = (
                (n.allocatable.cpu_millis as i64 - used.0).max(0),
                (n.allocatable.memory_mib as i64 - used.1).max(0),
            );
            let added = d.iter().fold((0i64, 0i64), |acc, x| match x {
                Decision::Bind { instance, node, .. } if *node == n.name => {
                    let i = pending.iter().find(|p| &p.name == instance).unwrap();
                    let s = types[&i.instance_type];
                    (acc.0 + s.cpu_millis as i64, acc.1 + s.memory_mib as i64)
                }
                _ => acc,
            });
            prop_assert!(added.0 <= room.0 && added.1 <= room.1,
                "{}: room {room:?}, bound {added:?}: {d:?}", n.name);
        }
    }

    #[test]
    fn the_plan_binds_only_to_ready_schedulable_nodes_of_the_right_zone_and_pin(
        (nodes, pending, bound) in arb_world()
    ) {
        let d = plan(&pending, &nodes, &bound, &types(), now());
        for x in &d {
            if let Decision::Bind { instance, node, zone } = x {
                let i = pending.iter().find(|p| &p.name == instance).unwrap();
                let n = nodes.iter().find(|n| &n.name == node).unwrap();
                prop_assert!(n.ready && !n.unschedulable, "{x:?} to {n:?}");
                prop_assert_eq!(zone, &n.zone);
                prop_assert!(i.zone.is_empty() || i.zone == n.zone, "{x:?}: {i:?}");
                prop_assert!(i.node_name.is_empty() || i.node_name == n.name, "{x:?}: {i:?}");
            }
        }
    }

    #[test]
    fn the_plan_reclaims_only_spot_instances_and_only_for_others(
        (nodes, pending, bound) in arb_world()
    ) {
        let d = plan(&pending, &nodes, &bound, &types(), now());
        for x in &d {
            match x {
                Decision::Preempt { for_instance, node, victims, .. } => {
                    let i = pending.iter().find(|p| &p.name == for_instance).unwrap();
                    prop_assert_ne!(i.market, Market::Spot);
                    prop_assert!(!victims.is_empty());
                    for v in victims {
                        let b = bound.iter().find(|b| &b.name == v).unwrap();
                        prop_assert_eq!(b.market, Market::Spot, "{:?}", x);
                        prop_assert_eq!(&b.node, node);
                        prop_assert!(!b.deleting);
                    }
                }
                Decision::Reclaim { instance } => {
                    let b = bound.iter().find(|b| &b.name == instance).unwrap();
                    prop_assert_eq!(b.market, Market::Spot);
                    prop_assert!(b.interruption.is_some_and(|t| t <= now()));
                }
                _ => {}
            }
        }
        // Every pending instance gets exactly one decision.
        let mut about: Vec<&str> = d.iter().filter_map(|x| match x {
            Decision::Bind { instance, .. } | Decision::Unschedulable { instance, .. } => Some(instance.as_str()),
            Decision::Preempt { for_instance, .. } => Some(for_instance.as_str()),
            Decision::Reclaim { .. } => None,
        }).collect();
        about.sort();
        let mut names: Vec<&str> = pending.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        prop_assert_eq!(about, names);
    }

    #[test]
    fn a_group_with_enough_uniform_capacity_spreads_evenly_over_zones(
        zones in 2usize..=3,
        per_zone in 1usize..=3,
        count in 1usize..20,
    ) {
        let nodes: Vec<NodeView> = (0..zones)
            .flat_map(|z| (0..per_zone).map(move |k| node(&format!("n{z}{k}"), ZONES[z], 64_000, 65_536)))
            .collect();
        let pending: Vec<InstanceView> = (0..count)
            .map(|n| {
                let mut i = inst(&format!("web-{n:02}"), "small");
                i.group = Some("g".into());
                i.created = t0() + Duration::from_secs((n % 3) as u64);
                i
            })
            .collect();
        let d = plan(&pending, &nodes, &[], &types(), now());
        let mut per_zone_count = vec![0usize; zones];
        let mut per_node_count: HashMap<String, usize> = HashMap::new();
        for x in &d {
            let Decision::Bind { zone, node, .. } = x else {
                prop_assert!(false, "all fit: {x:?}");
                continue;
            };
            per_zone_count[ZONES.iter().position(|z| z == zone).unwrap()] += 1;
            *per_node_count.entry(node.clone()).or_default() += 1;
        }
        let (lo, hi) = (per_zone_count.iter().min().unwrap(), per_zone_count.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "zones {per_zone_count:?}");
        for z in 0..zones {
            let counts: Vec<usize> = (0..per_zone)
                .map(|k| per_node_count.get(&format!("n{z}{k}")).copied().unwrap_or(0))
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "zone {z} nodes {counts:?}");
        }
    }

    #[test]
    fn the_plan_is_deterministic_whatever_the_input_order(
        (world, seed) in arb_world().prop_flat_map(|(n, p, b)| {
            let shuffled = (Just(n.clone()).prop_shuffle(), Just(p.clone()).prop_shuffle(), Just(b.clone()).prop_shuffle());
            (Just((n, p, b)), shuffled)
        })
    ) {
        let (nodes, pending, bound) = world;
        let (nodes2, pending2, bound2) = seed;
        let a = plan(&pending, &nodes, &bound, &types(), now());
        let again = plan(&pending, &nodes, &bound, &types(), now());
        prop_assert_eq!(&a, &again);
        let b = plan(&pending2, &nodes2, &bound2, &types(), now());
        prop_assert_eq!(a, b);
    }
}
