use super::*;
use hanul_proto::autoscaling::{
    LIFECYCLE_STATE_ANNOTATION, TARGET_GROUPS_ANNOTATION, default_group,
};
use hanul_proto::v1::LaunchTemplateData;
use proptest::prelude::*;

const T0: u64 = 1_800_000_000;

fn time(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s)
}

fn spec(min: u32, desired: u32, max: u32) -> AutoScalingGroupSpec {
    let mut s = AutoScalingGroupSpec {
        launch_template: Some(LaunchTemplateData {
            image: "web".into(),
            ..Default::default()
        }),
        min_size: min,
        desired_capacity: Some(desired),
        max_size: max,
        health_check_grace_period_seconds: Some(0),
        ..Default::default()
    };
    default_group(&mut s);
    s
}

/// A fake world for the planner: the instances as the store would show them after the
/// controller carried out the effects, with the agents' part (start, stop) done by the test.
struct World {
    spec: AutoScalingGroupSpec,
    status: AutoScalingGroupStatus,
    instances: BTreeMap<String, Observed>,
    health: BTreeMap<String, Vec<(String, String)>>,
    zones: Vec<(String, bool)>,
    room: BTreeMap<String, u32>,
    now: u64,
    counter: u32,
    refresh: Option<String>,
    effects: Vec<Effect>,
}

impl World {
    fn new(spec: AutoScalingGroupSpec) -> World {
        World {
            spec,
            status: AutoScalingGroupStatus::default(),
            instances: BTreeMap::new(),
            health: BTreeMap::new(),
            zones: vec![("a".into(), true), ("b".into(), true)],
            room: BTreeMap::new(),
            now: 0,
            counter: 0,
            refresh: None,
            effects: Vec::new(),
        }
    }

    /// One reconcile: plan, keep the status, carry out the effects.
    fn step(&mut self) -> Plan {
        let input = Input {
            name: "web",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            refresh_request: self.refresh.as_deref(),
            cancel_request: None,
            instances: &self.instances,
            target_health: &self.health,
            deregistration_delay: Duration::from_secs(10),
            zones: &self.zones,
            room: &self.room,
            now: time(self.now),
        };
        let mut counter = self.counter;
        let plan = plan(&input, &mut || {
            counter += 1;
            format!("web-{counter:05}")
        });
        self.counter = counter;
        self.status = plan.status.clone();
        for e in &plan.effects {
            match e {
                Effect::Launch {
                    instance,
                    zone,
                    version,
                } => {
                    self.instances.entry(instance.clone()).or_insert(Observed {
                        zone: zone.clone(),
                        state: "pending".into(),
                        version: *version,
                        created: Some(time(self.now)),
                        ..Default::default()
                    });
                }
                Effect::Annotate {
                    instance,
                    annotations,
                } => {
                    let o = self.instances.get_mut(instance).unwrap();
                    for (k, v) in annotations {
                        match v {
                            Some(v) => o.annotations.insert(k.clone(), v.clone()),
                            None => o.annotations.remove(k),
                        };
                    }
                }
                Effect::Terminate { instance } => {
                    self.instances
                        .get_mut(instance)
                        .unwrap()
                        .terminate_requested = true;
                }
                Effect::Notify { .. } => {}
            }
        }
        self.effects = plan.effects.clone();
        plan
    }

    /// The agents: pending instances in a zone with a node start; terminated ones stop.
    /// The scheduler binds what has room (counting what is bound in the zone), marking the
    /// rest unschedulable; the agents start what is bound and stop what is terminated.
    fn agents(&mut self) {
        let names: Vec<String> = self.instances.keys().cloned().collect();
        for name in names {
            let zone = self.instances[&name].zone.clone();
            let up = self.zones.iter().any(|(z, ok)| *ok && *z == zone);
            let used = self
                .instances
                .values()
                .filter(|o| o.zone == zone && o.bound)
                .count() as u32;
            let fits = self.room.get(&zone).is_none_or(|r| used < *r);
            let o = self.instances.get_mut(&name).unwrap();
            if o.terminate_requested {
                o.state = "terminated".into();
                o.bound = false;
            } else if o.state == "pending" && up && (o.bound || fits) {
                o.state = "running".into();
                o.bound = true;
                o.unschedulable = false;
            } else if o.state == "pending" && !fits {
                o.unschedulable = true;
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..20 {
            self.step();
            self.agents();
        }
    }

    fn record(&self, name: &str) -> &AutoScalingInstance {
        self.status
            .instances
            .iter()
            .find(|r| r.instance == name)
            .unwrap()
    }

    fn in_service(&self) -> Vec<&AutoScalingInstance> {
        self.status
            .instances
            .iter()
            .filter(|r| r.lifecycle_state == "InService")
            .collect()
    }

    fn per_zone(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.in_service() {
            *m.entry(r.zone.clone()).or_default() += 1;
        }
        m
    }

    fn annotate(&mut self, name: &str, key: String, value: &str) {
        self.instances
            .get_mut(name)
            .unwrap()
            .annotations
            .insert(key, value.into());
    }
}

#[test]
fn desired_four_over_two_zones_is_two_and_two_in_service() {
    let mut w = World::new(spec(1, 4, 6));
    let plan = w.step();
    let launches: Vec<_> = plan
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Launch { .. }))
        .collect();
    assert_eq!(launches.len(), 4);
    assert_eq!(w.status.activities.len(), 4);
    assert!(
        w.status.activities[0]
            .cause
            .contains("increasing the capacity from 0 to 4")
    );
    w.settle();
    assert_eq!(w.per_zone(), [("a".into(), 2), ("b".into(), 2)].into());
    assert_eq!(w.status.in_service, 4);
    assert!(
        w.status
            .activities
            .iter()
            .all(|a| a.status_code == "Successful")
    );
    assert!(conditions::is_true(&w.status.conditions, CONDITION_READY));
    // The instances carry their state for the metadata endpoint.
    for o in w.instances.values() {
        assert_eq!(o.annotations[LIFECYCLE_STATE_ANNOTATION], "InService");
    }
}

#[test]
fn in_service_instances_are_registered_and_deregistered_before_terminating() {
    let mut s = spec(0, 1, 2);
    s.target_groups = vec!["web".into()];
    let mut w = World::new(s);
    w.settle();
    let name = w.in_service()[0].instance.clone();
    assert_eq!(
        w.instances[&name].annotations[TARGET_GROUPS_ANNOTATION],
        "web"
    );
    // Scale in while the target group still sends traffic: deregistered, draining.
    w.health
        .insert(name.clone(), vec![("web".into(), "draining".into())]);
    w.spec.desired_capacity = Some(0);
    w.step();
    assert_eq!(w.record(&name).lifecycle_state, "Terminating");
    assert!(
        !w.instances[&name]
            .annotations
            .contains_key(TARGET_GROUPS_ANNOTATION)
    );
    assert!(
        !w.instances[&name].terminate_requested,
        "terminated while draining"
    );
    // Drained: the group's target groups no longer list it.
    w.health.remove(&name);
    w.step();
    assert!(w.instances[&name].terminate_requested);
    w.agents();
    w.step();
    assert!(w.status.instances.is_empty());
}

#[test]
fn draining_has_a_deadline() {
    let mut s = spec(0, 1, 2);
    s.target_groups = vec!["web".into()];
    let mut w = World::new(s);
    w.settle();
    let name = w.in_service()[0].instance.clone();
    w.health
        .insert(name.clone(), vec![("web".into(), "draining".into())]);
    w.spec.desired_capacity = Some(0);
    let plan = w.step();
    assert_eq!(plan.wake, Some(Duration::from_secs(15)));
    w.now += 15;
    w.step();
    assert!(w.instances[&name].terminate_requested);
}

#[test]
fn a_stopped_instance_is_replaced() {
    let mut w = World::new(spec(2, 2, 3));
    w.settle();
    let victim = w.in_service()[0].instance.clone();
    w.instances.get_mut(&victim).unwrap().state = "stopped".into();
    w.step();
    let r = w.record(&victim);
    assert_eq!(r.health_status, "Unhealthy");
    assert!(r.reason.contains("the instance is stopped"), "{}", r.reason);
    assert!(w.instances[&victim].terminate_requested);
    // The replacement was launched at once: maxSize leaves room.
    assert_eq!(w.instances.len(), 3);
    w.settle();
    assert_eq!(w.in_service().len(), 2);
    assert!(w.in_service().iter().all(|r| r.instance != victim));
    let causes: Vec<&str> = w
        .status
        .activities
        .iter()
        .map(|a| a.cause.as_str())
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("health check")),
        "{causes:?}"
    );
}

#[test]
fn at_max_size_the_replacement_waits_for_the_termination() {
    let mut w = World::new(spec(2, 2, 2));
    w.settle();
    let victim = w.in_service()[0].instance.clone();
    w.instances.get_mut(&victim).unwrap().state = "stopped".into();
    w.step();
    assert_eq!(w.instances.len(), 2, "launched above maxSize");
    w.agents();
    w.settle();
    assert_eq!(w.in_service().len(), 2);
}

#[test]
fn elb_health_counts_only_after_the_grace_period() {
    let mut s = spec(1, 1, 2);
    s.health_check_type = "ELB".into();
    s.health_check_grace_period_seconds = Some(60);
    s.target_groups = vec!["web".into()];
    let mut w = World::new(s);
    w.settle();
    let name = w.in_service()[0].instance.clone();
    w.health
        .insert(name.clone(), vec![("web".into(), "unhealthy".into())]);
    let plan = w.step();
    assert_eq!(w.record(&name).health_status, "Healthy");
    assert_eq!(plan.wake, Some(Duration::from_secs(60)));
    w.now += 60;
    w.step();
    let r = w.record(&name);
    assert_eq!(r.health_status, "Unhealthy");
    assert!(r.reason.contains("target group web"), "{}", r.reason);
    // EC2-type groups ignore the target group's opinion.
    let mut s = spec(1, 1, 2);
    s.target_groups = vec!["web".into()];
    let mut w2 = World::new(s);
    w2.settle();
    let name = w2.in_service()[0].instance.clone();
    w2.health
        .insert(name.clone(), vec![("web".into(), "unhealthy".into())]);
    w2.now += 600;
    w2.step();
    assert_eq!(w2.record(&name).health_status, "Healthy");
}

fn hook(name: &str, transition: Transition, timeout: u32, default: &str) -> LifecycleHook {
    LifecycleHook {
        name: name.into(),
        transition: transition.as_str().into(),
        heartbeat_timeout_seconds: Some(timeout),
        default_result: default.into(),
        notification_target: "http://127.0.0.1:9/hook".into(),
        notification_metadata: String::new(),
    }
}

#[test]
fn a_launch_hook_holds_the_instance_out_of_service_until_continued() {
    let mut s = spec(0, 1, 2);
    s.target_groups = vec!["web".into()];
    s.lifecycle_hooks = vec![hook("warm", Transition::Launching, 300, "ABANDON")];
    let mut w = World::new(s);
    w.step();
    w.agents();
    let plan = w.step();
    let name = w.status.instances[0].instance.clone();
    assert_eq!(w.record(&name).lifecycle_state, "Pending:Wait");
    assert!(plan.effects.contains(&Effect::Notify {
        hook: "warm".into(),
        instance: name.clone()
    }));
    assert_eq!(plan.wake, Some(Duration::from_secs(300)));
    assert_eq!(
        w.instances[&name].annotations[LIFECYCLE_STATE_ANNOTATION],
        "Pending:Wait"
    );
    assert!(
        !w.instances[&name]
            .annotations
            .contains_key(TARGET_GROUPS_ANNOTATION)
    );
    // A heartbeat at 200 s moves the deadline to 500 s.
    w.now = 200;
    w.annotate(&name, heartbeat_annotation("warm"), "beat-1");
    w.step();
    w.now = 400;
    w.step();
    assert_eq!(w.record(&name).lifecycle_state, "Pending:Wait");
    w.annotate(&name, action_annotation("warm"), "CONTINUE");
    w.step();
    assert_eq!(w.record(&name).lifecycle_state, "InService");
    assert_eq!(
        w.instances[&name].annotations[TARGET_GROUPS_ANNOTATION],
        "web"
    );
}

#[test]
fn a_launch_hook_timeout_applies_the_default_and_abandon_replaces_the_instance() {
    let mut s = spec(0, 1, 2);
    s.lifecycle_hooks = vec![hook("warm", Transition::Launching, 30, "ABANDON")];
    let mut w = World::new(s);
    w.step();
    w.agents();
    w.step();
    let first = w.status.instances[0].instance.clone();
    w.now = 30;
    w.step();
    let r = w.record(&first);
    assert!(
        r.lifecycle_state.starts_with("Terminating"),
        "{}",
        r.lifecycle_state
    );
    assert!(w.instances[&first].terminate_requested);
    // Another one is launched in its place.
    assert_eq!(w.instances.len(), 2);
    let failed = w
        .status
        .activities
        .iter()
        .find(|a| a.instance == first && a.description.starts_with("Launching"))
        .unwrap();
    assert_eq!(failed.status_code, "Failed");
    assert!(
        failed
            .status_message
            .contains("abandoned by lifecycle hook warm")
    );
}

#[test]
fn a_termination_hook_keeps_the_instance_running_until_completed() {
    let mut s = spec(0, 2, 2);
    s.lifecycle_hooks = vec![hook("drain", Transition::Terminating, 3600, "CONTINUE")];
    let mut w = World::new(s);
    w.settle();
    w.spec.desired_capacity = Some(1);
    w.step();
    let waiting: Vec<String> = w
        .status
        .instances
        .iter()
        .filter(|r| r.lifecycle_state == "Terminating:Wait")
        .map(|r| r.instance.clone())
        .collect();
    assert_eq!(waiting.len(), 1);
    let name = waiting[0].clone();
    for _ in 0..5 {
        w.step();
        w.agents();
    }
    assert!(!w.instances[&name].terminate_requested);
    assert_eq!(w.instances[&name].state, "running");
    w.annotate(&name, action_annotation("drain"), "ABANDON");
    w.step();
    assert!(w.instances[&name].terminate_requested);
}

#[test]
fn scale_in_takes_from_the_fuller_zone_by_policy() {
    let mut s = spec(0, 3, 4);
    s.termination_policies = vec!["NewestInstance".into()];
    let mut w = World::new(s);
    w.settle();
    // 2 in a, 1 in b: the scale in takes the newest in a.
    let per = w.per_zone();
    let fuller = if per["a"] == 2 { "a" } else { "b" };
    w.spec.desired_capacity = Some(2);
    w.step();
    let victims: Vec<&AutoScalingInstance> = w
        .status
        .instances
        .iter()
        .filter(|r| r.lifecycle_state.starts_with("Terminating"))
        .collect();
    assert_eq!(victims.len(), 1);
    assert_eq!(victims[0].zone, fuller);
    assert!(
        w.status
            .activities
            .last()
            .unwrap()
            .cause
            .contains("shrinking the capacity from 3 to 2")
    );
}

#[test]
fn a_lost_zone_is_refilled_elsewhere_and_rebalanced_when_it_returns() {
    let mut w = World::new(spec(0, 4, 6));
    w.settle();
    // Zone a's node stops answering: its instances are impaired.
    w.zones[0].1 = false;
    for o in w.instances.values_mut() {
        if o.zone == "a" {
            o.impaired = true;
            o.node_lost = true;
        }
    }
    w.settle();
    assert_eq!(w.per_zone(), [("b".into(), 4)].into());
    assert!(
        conditions::find(&w.status.conditions, CONDITION_READY)
            .is_some_and(|c| c.message.contains("no Ready node in zone a"))
    );
    // Zone a is back: launch there first, then take the extra from b.
    w.zones[0].1 = true;
    w.settle();
    assert_eq!(w.per_zone(), [("a".into(), 2), ("b".into(), 2)].into());
    assert!(
        w.status
            .activities
            .iter()
            .any(|a| a.cause.contains("rebalance"))
    );
}

#[test]
fn a_zone_without_room_gets_no_launches_and_a_stuck_launch_is_given_up() {
    // Room is what is left beside the group's own bound instances; this fake keeps it fixed,
    // so "1" means zone a never takes more than one of them.
    let mut w = World::new(spec(0, 4, 6));
    w.room.insert("a".into(), 1);
    w.step();
    let per: BTreeMap<String, usize> =
        w.status.instances.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.zone.clone()).or_default() += 1;
            m
        });
    assert_eq!(per, [("a".into(), 1), ("b".into(), 3)].into());
    let cond = conditions::find(&w.status.conditions, CONDITION_READY).unwrap();
    assert!(!cond.message.contains("no room"), "{}", cond.message);

    // The scheduler finds no room after all: the launch is given up after a while.
    let mut w = World::new(spec(0, 1, 2));
    w.step();
    let name = w.status.instances[0].instance.clone();
    w.instances.get_mut(&name).unwrap().unschedulable = true;
    w.now = 5;
    w.step();
    assert_eq!(w.record(&name).lifecycle_state, "Pending");
    w.now = 10;
    w.room.insert("a".into(), 0);
    w.step();
    let r = w.record(&name);
    assert!(r.lifecycle_state.starts_with("Terminating"), "{r:?}");
    assert!(
        r.reason.contains("InsufficientInstanceCapacity"),
        "{}",
        r.reason
    );
    // Its replacement goes to the zone with room.
    let replacement = w
        .status
        .instances
        .iter()
        .find(|r| r.lifecycle_state == "Pending")
        .unwrap();
    assert_eq!(replacement.zone, "b");
}

#[test]
fn a_new_launch_template_is_rolled_out_launching_first() {
    let mut s = spec(1, 4, 5);
    s.instance_refresh.as_mut().unwrap().instance_warmup_seconds = Some(10);
    let mut w = World::new(s);
    w.settle();
    w.now = 20;
    w.spec.launch_template.as_mut().unwrap().image = "web2".into();
    w.step();
    let r = w.status.instance_refresh.clone().unwrap();
    assert_eq!(
        (r.status.as_str(), r.instances_to_update),
        ("InProgress", 4)
    );
    assert_eq!(w.status.launch_template_version, 2);
    let mut min_in_service = usize::MAX;
    for _ in 0..40 {
        w.step();
        w.agents();
        w.now += 5;
        min_in_service = min_in_service.min(w.in_service().len());
        assert!(w.status.instances.len() <= 5, "above maxSize");
    }
    let r = w.status.instance_refresh.clone().unwrap();
    assert_eq!(r.status, "Successful", "{r:?}");
    assert_eq!(r.percentage_complete, 100);
    assert!(
        w.in_service()
            .iter()
            .all(|r| r.launch_template_version == 2)
    );
    assert_eq!(w.in_service().len(), 4);
    // Launch first: never fewer in service than desired.
    assert!(min_in_service >= 4, "{min_in_service}");
}

#[test]
fn with_elb_health_checks_a_refresh_waits_for_the_target_groups_to_call_new_instances_healthy() {
    let mut s = spec(1, 1, 2);
    s.health_check_type = "ELB".into();
    s.target_groups = vec!["web".into()];
    s.instance_refresh.as_mut().unwrap().instance_warmup_seconds = Some(0);
    let mut w = World::new(s);
    w.settle();
    let old = w.in_service()[0].instance.clone();
    w.health
        .insert(old.clone(), vec![("web".into(), "healthy".into())]);
    w.refresh = Some("now".into());
    w.settle();
    let new: Vec<String> = w
        .in_service()
        .iter()
        .filter(|r| r.launch_template_version == 2)
        .map(|r| r.instance.clone())
        .collect();
    assert_eq!(new.len(), 1);
    // The new one is in service but its target group still says "initial": the old stays.
    w.health
        .insert(new[0].clone(), vec![("web".into(), "initial".into())]);
    w.settle();
    assert_eq!(w.record(&old).lifecycle_state, "InService");
    w.health
        .insert(new[0].clone(), vec![("web".into(), "healthy".into())]);
    w.step();
    assert!(w.record(&old).lifecycle_state.starts_with("Terminating"));
}

#[test]
fn a_cancelled_refresh_stops_replacing() {
    let mut s = spec(1, 2, 3);
    s.instance_refresh.as_mut().unwrap().instance_warmup_seconds = Some(60);
    let mut w = World::new(s);
    w.settle();
    w.refresh = Some("go".into());
    w.settle();
    assert_eq!(
        w.status.instance_refresh.as_ref().unwrap().status,
        "InProgress"
    );
    // One new instance is warming up; cancel.
    let cancel = Some("stop");
    let input = Input {
        name: "web",
        generation: 1,
        spec: &w.spec,
        status: &w.status,
        refresh_request: w.refresh.as_deref(),
        cancel_request: cancel,
        instances: &w.instances,
        target_health: &w.health,
        deregistration_delay: Duration::ZERO,
        zones: &w.zones,
        room: &w.room,
        now: time(w.now),
    };
    let plan = plan(&input, &mut || "web-x".into());
    let r = plan.status.instance_refresh.clone().unwrap();
    assert_eq!(r.status, "Cancelled");
    assert_eq!(plan.status.cancel_request_handled, "stop");
    // Nothing more is launched for it; the group goes back to desired.
    w.status = plan.status;
    w.now += 120;
    w.settle();
    assert_eq!(w.in_service().len(), 2);
    assert_eq!(w.status.instance_refresh.unwrap().status, "Cancelled");
}

#[test]
fn a_refresh_whose_instances_never_work_stops_and_keeps_the_old_ones() {
    let mut s = spec(1, 2, 3);
    s.instance_refresh.as_mut().unwrap().instance_warmup_seconds = Some(30);
    let mut w = World::new(s);
    w.settle();
    w.now = 100;
    let old: Vec<String> = w.in_service().iter().map(|r| r.instance.clone()).collect();
    w.refresh = Some("now".into());
    for _ in 0..30 {
        w.step();
        w.now += 5;
        // New instances die as soon as they run.
        for o in w.instances.values_mut() {
            if o.version == 2 && o.state == "running" {
                o.state = "stopped".into();
            }
        }
        w.agents();
    }
    let r = w.status.instance_refresh.clone().unwrap();
    assert_eq!(r.status, "Failed");
    assert!(r.status_reason.contains("failed"), "{}", r.status_reason);
    for name in old {
        assert_eq!(w.record(&name).lifecycle_state, "InService");
    }
}

#[test]
fn an_instance_owned_but_unrecorded_is_adopted() {
    let mut w = World::new(spec(0, 1, 1));
    w.instances.insert(
        "web-found".into(),
        Observed {
            zone: "a".into(),
            state: "running".into(),
            version: 1,
            ..Default::default()
        },
    );
    w.settle();
    assert_eq!(w.in_service().len(), 1);
    assert_eq!(w.in_service()[0].instance, "web-found");
}

#[test]
fn suspended_processes_are_not_run() {
    let mut s = spec(0, 2, 3);
    s.suspended_processes = vec!["Launch".into()];
    let mut w = World::new(s);
    w.settle();
    assert!(w.instances.is_empty());
    w.spec.suspended_processes = vec!["ReplaceUnhealthy".into()];
    w.settle();
    let victim = w.in_service()[0].instance.clone();
    w.instances.get_mut(&victim).unwrap().state = "stopped".into();
    w.settle();
    assert_eq!(w.record(&victim).health_status, "Unhealthy");
    assert_eq!(w.record(&victim).lifecycle_state, "InService");
}

/// What can happen between two reconciles.
#[derive(Clone, Debug)]
enum Event {
    Desired(u32),
    Kill(usize),
    Zone(usize, bool),
    Complete(usize, bool),
    Beat(usize),
    Time(u64),
    Room(usize, u32),
    Agents,
    Refresh,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u32..=8).prop_map(Event::Desired),
        any::<usize>().prop_map(Event::Kill),
        (0usize..3, any::<bool>()).prop_map(|(z, up)| Event::Zone(z, up)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Event::Complete(i, c)),
        any::<usize>().prop_map(Event::Beat),
        (1u64..400).prop_map(Event::Time),
        (0usize..3, 0u32..5).prop_map(|(z, r)| Event::Room(z, r)),
        Just(Event::Agents),
        Just(Event::Agents),
        Just(Event::Refresh),
    ]
}

fn group_strategy() -> impl Strategy<Value = AutoScalingGroupSpec> {
    (0u32..=3, 1u32..=6, any::<bool>(), any::<bool>(), 0usize..5).prop_map(
        |(min, extra, launch_hook, term_hook, policy)| {
            let max = min + extra;
            let mut s = spec(min, min, max);
            if launch_hook {
                s.lifecycle_hooks
                    .push(hook("in", Transition::Launching, 60, "CONTINUE"));
            }
            if term_hook {
                s.lifecycle_hooks
                    .push(hook("out", Transition::Terminating, 60, "ABANDON"));
            }
            s.termination_policies = vec![TerminationPolicy::ALL[policy].into()];
            s.instance_refresh.as_mut().unwrap().instance_warmup_seconds = Some(0);
            s
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_planner_keeps_its_promises(spec in group_strategy(), events in proptest::collection::vec(event(), 1..60)) {
        let mut w = World::new(spec);
        w.zones.push(("c".into(), true));
        let max = w.spec.max_size;
        let min = w.spec.min_size;
        for e in events {
            match e {
                Event::Desired(d) => w.spec.desired_capacity = Some(d.clamp(min, max)),
                Event::Kill(i) => {
                    let names: Vec<String> = w.instances.keys().cloned().collect();
                    if !names.is_empty() {
                        w.instances.get_mut(&names[i % names.len()]).unwrap().state = "stopped".into();
                    }
                }
                Event::Zone(z, up) => {
                    let zone = w.zones[z].0.clone();
                    w.zones[z].1 = up;
                    for o in w.instances.values_mut() {
                        if o.zone == zone {
                            o.node_lost = !up;
                            o.impaired = !up;
                        }
                    }
                }
                Event::Complete(i, go) => {
                    let waiting: Vec<(String, String)> = w.status.instances.iter()
                        .flat_map(|r| r.waits.iter().map(|h| (r.instance.clone(), h.hook.clone())))
                        .collect();
                    if !waiting.is_empty() {
                        let (name, hook) = &waiting[i % waiting.len()];
                        let result = if go { "CONTINUE" } else { "ABANDON" };
                        if w.instances.contains_key(name) {
                            w.annotate(name, action_annotation(hook), result);
                        }
                    }
                }
                Event::Beat(i) => {
                    let waiting: Vec<(String, String)> = w.status.instances.iter()
                        .flat_map(|r| r.waits.iter().map(|h| (r.instance.clone(), h.hook.clone())))
                        .collect();
                    if !waiting.is_empty() {
                        let (name, hook) = &waiting[i % waiting.len()];
                        let beat = format!("beat-{}", w.now);
                        if w.instances.contains_key(name) {
                            w.annotate(name, heartbeat_annotation(hook), &beat);
                        }
                    }
                }
                Event::Time(s) => w.now += s,
                Event::Room(z, r) => {
                    let zone = w.zones[z].0.clone();
                    w.room.insert(zone, r);
                }
                Event::Agents => w.agents(),
                Event::Refresh => w.refresh = Some(format!("r-{}", w.now)),
            }
            let before = w.status.clone();
            let running_before: BTreeMap<String, bool> = w.instances.iter()
                .map(|(n, o)| (n.clone(), !is_down(o) && !o.node_lost)).collect();
            let plan = w.step();
            let after = &plan.status;

            // Never above maxSize, counting every instance that holds capacity.
            let holding = after.instances.iter().filter(|r| holds_capacity(&r.lifecycle_state)).count() as u32;
            prop_assert!(holding <= max, "{holding} > max {max}");
            let alive = w.instances.values().filter(|o| !o.terminate_requested && o.state != "terminated").count() as u32;
            prop_assert!(alive <= max, "{alive} live instances > max {max}");

            for r in &after.instances {
                let old = before.instances.iter().find(|o| o.instance == r.instance);
                // A hook holds: a waiting instance leaves its wait only once every hook has
                // a result (given, or the default at the deadline), or when it died.
                if let Some(old) = old
                    && old.lifecycle_state.ends_with(":Wait")
                    && r.lifecycle_state != old.lifecycle_state
                    && running_before.get(&r.instance).copied().unwrap_or(false)
                {
                    let decided = |hook: &str| {
                        let o = &w.instances[&r.instance];
                        o.annotations.contains_key(&action_annotation(hook))
                            || old.waits.iter().any(|x| x.hook == hook && (!x.result.is_empty() || time(w.now) >= at(&x.deadline)))
                    };
                    for h in &old.waits {
                        prop_assert!(decided(&h.hook), "{} left {} before hook {} decided", r.instance, old.lifecycle_state, h.hook);
                    }
                }
                // Terminating:Wait is never told to terminate.
                if r.lifecycle_state == "Terminating:Wait" {
                    let terminate = Effect::Terminate { instance: r.instance.clone() };
                    prop_assert!(!plan.effects.contains(&terminate), "{} terminated while waiting", r.instance);
                }
                // Never below minSize by its own choice: a healthy instance is taken out of
                // service only while more than desired (>= minSize) remain, or by a refresh.
                if let Some(old) = old
                    && is_active(&old.lifecycle_state)
                    && old.lifecycle_state != "Pending:Wait"
                    && r.lifecycle_state.starts_with("Terminating")
                    && r.health_status == "Healthy"
                    && w.status.instance_refresh.as_ref().is_none_or(|f| f.status != "InProgress")
                {
                    let active = after.instances.iter().filter(|x| is_active(&x.lifecycle_state)).count() as u32;
                    prop_assert!(active >= min, "{active} active < minSize {min}");
                    let rebalancing = after.activities.iter().any(|a| a.id == r.activity && a.cause.contains("rebalance"));
                    if !rebalancing {
                        prop_assert!(active >= after.desired_capacity, "{active} active < desired {} after a scale in", after.desired_capacity);
                    }
                }
            }
        }
        // Left alone with every zone up and the hooks answered, the group converges: desired
        // in service, zones within one of each other.
        for z in &mut w.zones { z.1 = true; }
        w.room.clear();
        for o in w.instances.values_mut() { o.node_lost = false; o.impaired = false; }
        w.spec.lifecycle_hooks.clear();
        for _ in 0..40 {
            w.step();
            w.agents();
            w.now += 100;
        }
        let desired = w.spec.desired_capacity.unwrap() as usize;
        prop_assert_eq!(w.in_service().len(), desired, "{:?}", w.status);
        let mut counts: Vec<usize> = ["a", "b", "c"].iter().map(|z| w.per_zone().get(*z).copied().unwrap_or(0)).collect();
        counts.sort();
        prop_assert!(counts[2] - counts[0] <= 1, "zones {:?}", w.per_zone());
    }
}
