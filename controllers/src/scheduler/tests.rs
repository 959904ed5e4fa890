//! The scheduler against an in-process API server; the test plays the agents by creating Node
//! objects and writing their status.

use super::*;
use crate::runtime::SystemClock;
use crate::{
    runtime::{ReconcileResult, ShutdownTrigger},
    testing::{TestServer, eventually},
};
use hanul_proto::v1::{
    Condition, Event, InstanceSpec, InstanceStatus, InstanceType, InstanceTypeSpec, NodeStatus,
    ObjectMeta, Resources,
};

const WITHIN: Duration = Duration::from_secs(10);

/// A server and a running scheduler.
struct Harness {
    t: TestServer,
    metrics: Metrics,
    /// The placement ledger, as the DB cluster controller of the process would share it.
    assumed: Arc<Assumed>,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(Config {
            spot_notice: Duration::from_secs(2),
            unschedulable_retry: Duration::from_secs(1),
            conflict_retry: Duration::from_millis(50),
        })
        .await
    }

    async fn start_with(config: Config) -> Harness {
        let t = TestServer::start().await;
        let metrics = Metrics::default();
        let (trigger, shutdown) = Shutdown::new();
        let assumed = Arc::new(Assumed::default());
        let task = tokio::spawn(run_with(
            t.client.clone(),
            metrics.clone(),
            shutdown,
            Arc::new(SystemClock),
            config,
            assumed.clone(),
        ));
        Harness {
            t,
            metrics,
            assumed,
            trigger,
            task,
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.task.await.unwrap();
        self.t.stop().await;
    }

    /// Registers a node as its agent would, Ready (or not) and with `vcpu`/`mib` allocatable.
    async fn node(&self, name: &str, zone: &str, vcpu: u32, mib: u64, ready: bool) {
        self.node_with(name, zone, vcpu, mib, ready, false).await
    }

    async fn node_with(
        &self,
        name: &str,
        zone: &str,
        vcpu: u32,
        mib: u64,
        ready: bool,
        unschedulable: bool,
    ) {
        let resources = Resources {
            cpu_millis: vcpu * 1000,
            memory_mib: mib,
        };
        let mut node = crate::testing::node(name, zone, resources.cpu_millis, mib);
        if let Some(Resource::Node(n)) = &mut node.resource {
            n.spec.get_or_insert_with(Default::default).unschedulable = unschedulable;
        }
        let created = self.t.client.create(node).await.unwrap();
        let mut o = created;
        if let Some(Resource::Node(n)) = &mut o.resource {
            n.status = Some(NodeStatus {
                conditions: vec![Condition {
                    r#type: CONDITION_READY.into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: "AgentReady".into(),
                    ..Default::default()
                }],
                allocatable: Some(resources),
                last_heartbeat_time: Some(conditions::timestamp(SystemClock.now())),
                ..Default::default()
            });
        }
        self.t.client.update_status(o).await.unwrap();
    }

    async fn instance_type(&self, name: &str, vcpu: u32, mib: u64) {
        self.t
            .client
            .create(
                InstanceType {
                    metadata: Some(ObjectMeta {
                        name: name.into(),
                        ..Default::default()
                    }),
                    spec: Some(InstanceTypeSpec {
                        vcpu,
                        memory_mib: mib,
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            )
            .await
            .unwrap();
    }

    async fn create(&self, i: Instance) {
        self.t.client.create(i.into()).await.unwrap();
    }

    async fn get(&self, name: &str) -> Option<Instance> {
        match self.t.client.get(Kind::Instance, name).await {
            Ok(Object {
                resource: Some(Resource::Instance(i)),
            }) => Some(i),
            Err(s) if s.code() == Code::NotFound => None,
            other => panic!("get {name}: {other:?}"),
        }
    }

    /// Waits until `name` is bound; returns (node, zone).
    async fn bound(&self, name: &str) -> (String, String) {
        eventually(&format!("{name} is bound"), WITHIN, || async {
            let i = self.get(name).await.ok_or("gone")?;
            let s = i.status.clone().unwrap_or_default();
            if s.node.is_empty() {
                return Err(format!("{s:?}"));
            }
            let c = conditions::find(&s.conditions, CONDITION_SCHEDULED).cloned();
            if s.state != "pending" || c.as_ref().is_none_or(|c| c.status != "True") {
                return Err(format!("bound without the state or condition: {s:?}"));
            }
            Ok((s.node, s.zone))
        })
        .await
    }

    /// Waits until `name` is pending with `Scheduled=False`; returns the condition's message.
    async fn unschedulable(&self, name: &str) -> String {
        eventually(&format!("{name} is unschedulable"), WITHIN, || async {
            let i = self.get(name).await.ok_or("gone")?;
            let s = i.status.clone().unwrap_or_default();
            let c = conditions::find(&s.conditions, CONDITION_SCHEDULED).cloned();
            match c {
                Some(c)
                    if c.status == "False"
                        && c.reason == REASON_INSUFFICIENT_CAPACITY
                        && s.node.is_empty()
                        && s.state == "pending" =>
                {
                    Ok(c.message)
                }
                _ => Err(format!("{s:?}")),
            }
        })
        .await
    }

    /// With n1 (4 vCPU, 4 GiB) half held by a DB member and instance type `big` (2 vCPU,
    /// 2 GiB): `first` takes the other half, `second` waits for room, and is bound to n1 once
    /// `free` has freed the member's half.
    async fn fill_n1_then_free(&self, free: impl std::future::Future<Output = ()>) {
        self.create(instance("first", "big")).await;
        assert_eq!(self.bound("first").await.0, "n1");
        self.create(instance("second", "big")).await;
        let message = self.unschedulable("second").await;
        assert!(
            message.contains("n1 (az-a): 0 vCPU, 0 MiB free"),
            "{message}"
        );
        free.await;
        assert_eq!(self.bound("second").await.0, "n1");
    }

    async fn events_about(&self, name: &str, reason: &str) -> Vec<Event> {
        let (items, _) = self.t.client.list(Some(Kind::Event), "").await.unwrap();
        items
            .into_iter()
            .filter_map(|o| match o.resource {
                Some(Resource::Event(e)) => Some(e),
                _ => None,
            })
            .filter(|e| {
                e.reason == reason && e.involved_object.as_ref().is_some_and(|r| r.name == name)
            })
            .collect()
    }

    async fn event(&self, name: &str, reason: &str) -> Event {
        eventually(
            &format!("a {reason} event about {name}"),
            WITHIN,
            || async {
                self.events_about(name, reason)
                    .await
                    .into_iter()
                    .next()
                    .ok_or_else(|| "none".to_string())
            },
        )
        .await
    }
}

fn instance(name: &str, ty: &str) -> Instance {
    Instance {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(InstanceSpec {
            image: "web-v1".into(),
            instance_type: ty.into(),
            ..Default::default()
        }),
        status: None,
    }
}

fn in_zone(mut i: Instance, zone: &str) -> Instance {
    i.spec.as_mut().unwrap().zone = zone.into();
    i
}

fn market(mut i: Instance, market: Market) -> Instance {
    i.spec.as_mut().unwrap().market = market.as_str().into();
    i
}

// ---- Pure helpers ----

#[test]
fn an_instance_needs_scheduling_only_while_unbound_wanted_running_and_alive() {
    let mut i = instance("i", "t3.micro");
    i.spec.as_mut().unwrap().state = "running".into();
    assert!(needs_scheduling(&i));
    i.status = Some(InstanceStatus {
        node: "n1".into(),
        state: "running".into(),
        ..Default::default()
    });
    assert!(!needs_scheduling(&i));
    assert!(holds_capacity(&i));
    i.status.as_mut().unwrap().state = "stopped".into();
    assert!(!holds_capacity(&i));
    // Started again: placed again (on its old node only if it has volumes there).
    assert!(needs_scheduling(&i));
    let view = instance_view(&i);
    assert_eq!((view.node.as_str(), view.node_name.as_str()), ("", ""));
    i.spec.as_mut().unwrap().volumes.push(Default::default());
    assert_eq!(instance_view(&i).node_name, "n1");
    i.status = Some(InstanceStatus {
        state: "terminated".into(),
        ..Default::default()
    });
    assert!(!needs_scheduling(&i));
    i.status = None;
    i.spec.as_mut().unwrap().state = "stopped".into();
    assert!(!needs_scheduling(&i));
}

#[test]
fn the_group_is_the_controller_owner_else_the_group_label() {
    let mut i = instance("i", "t3.micro");
    assert_eq!(group_of(&i), None);
    let meta = i.metadata.as_mut().unwrap();
    meta.labels.insert(GROUP_LABEL.into(), "web".into());
    assert_eq!(group_of(&i).as_deref(), Some("label/web"));
    i.metadata
        .as_mut()
        .unwrap()
        .owner_references
        .push(hanul_proto::v1::OwnerReference {
            kind: "AutoScalingGroup".into(),
            name: "web".into(),
            uid: "u".into(),
            controller: true,
        });
    assert_eq!(group_of(&i).as_deref(), Some("AutoScalingGroup/web"));
}

// ---- Against a server ----

#[tokio::test]
async fn scheduler_binds_instances_to_ready_nodes_in_the_requested_zone() {
    let h = Harness::start().await;
    h.node("a1", "az-a", 8, 8192, true).await;
    h.node("b1", "az-b", 8, 8192, true).await;
    h.node("b-down", "az-b", 64, 65536, false).await;
    h.node_with("b-cordoned", "az-b", 64, 65536, true, true)
        .await;
    for n in 0..3 {
        h.create(in_zone(instance(&format!("in-b-{n}"), "t3.nano"), "az-b"))
            .await;
    }
    let mut pinned = instance("pinned", "t3.nano");
    pinned.spec.as_mut().unwrap().node_name = "a1".into();
    h.create(pinned).await;
    for n in 0..3 {
        assert_eq!(
            h.bound(&format!("in-b-{n}")).await,
            ("b1".to_string(), "az-b".to_string())
        );
    }
    assert_eq!(h.bound("pinned").await, ("a1".into(), "az-a".into()));
    h.event("pinned", EVENT_SCHEDULED).await;
    assert!(
        h.metrics
            .reconciles(CONTROLLER_NAME, ReconcileResult::Success)
            > 0
    );
    h.stop().await;
}

#[tokio::test]
async fn scheduler_spreads_a_group_of_four_two_and_two_over_two_zones() {
    let h = Harness::start().await;
    h.node("a1", "az-a", 8, 8192, true).await;
    h.node("a2", "az-a", 8, 8192, true).await;
    h.node("b1", "az-b", 8, 8192, true).await;
    for n in 0..4 {
        let mut i = instance(&format!("web-{n}"), "t3.nano");
        i.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert(GROUP_LABEL.into(), "web".into());
        h.create(i).await;
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut per_zone: HashMap<String, usize> = HashMap::new();
    for n in 0..4 {
        let (node, zone) = h.bound(&format!("web-{n}")).await;
        *per_node.entry(node).or_default() += 1;
        *per_zone.entry(zone).or_default() += 1;
    }
    assert_eq!((per_zone["az-a"], per_zone["az-b"]), (2, 2), "{per_node:?}");
    assert_eq!((per_node["a1"], per_node["a2"]), (1, 1), "{per_node:?}");
    h.stop().await;
}

#[tokio::test]
async fn an_instance_that_fits_nowhere_stays_pending_with_the_reason_until_room_is_freed() {
    let h = Harness::start().await;
    h.instance_type("big", 4, 4096).await;
    h.node("n1", "az-a", 4, 4096, true).await;
    h.node("n2", "az-b", 8, 8192, false).await;
    h.create(instance("first", "big")).await;
    assert_eq!(h.bound("first").await.0, "n1");

    h.create(in_zone(instance("second", "big"), "az-a")).await;
    let message = h.unschedulable("second").await;
    assert_eq!(
        message,
        "no Ready node in zone az-a has 4 vCPU and 4096 MiB free for big; \
         n1 (az-a): 0 vCPU, 0 MiB free; n2 (az-b): zone mismatch"
    );
    let event = h.event("second", EVENT_FAILED_SCHEDULING).await;
    assert_eq!(event.r#type, WARNING);
    assert_eq!(event.message, message);

    h.t.client.delete(Kind::Instance, "first").await.unwrap();
    assert_eq!(h.bound("second").await, ("n1".into(), "az-a".into()));
    h.stop().await;
}

#[tokio::test]
async fn a_db_member_holds_its_instance_class_on_its_node() {
    // No timed retry within the test: the member's deletion itself wakes the scheduler.
    let h = Harness::start_with(Config {
        unschedulable_retry: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    h.instance_type("big", 2, 2048).await;
    h.node("n1", "az-a", 4, 4096, true).await;
    // db.t3.small: 2 vCPU, 2048 MiB, placed on n1 by the DB controller.
    h.t.client
        .create(Object::from(hanul_proto::v1::DbInstance {
            metadata: Some(ObjectMeta {
                name: "orders-1".into(),
                ..Default::default()
            }),
            spec: Some(hanul_proto::v1::DbInstanceSpec {
                cluster: "orders".into(),
                role: "writer".into(),
                zone: "az-a".into(),
                node: "n1".into(),
                instance_class: "db.t3.small".into(),
                ..Default::default()
            }),
            status: None,
        }))
        .await
        .unwrap();
    // The member goes: its room is free again.
    h.fill_n1_then_free(async {
        h.t.client
            .delete(Kind::DbInstance, "orders-1")
            .await
            .unwrap();
    })
    .await;
    h.stop().await;
}

/// The DB cluster controller of the same process has just placed a member on n1 (noted in the
/// shared ledger, its create not yet seen): an instance is not given that room; once the
/// placement is dropped (its create failed), it is.
#[tokio::test]
async fn a_db_member_being_created_holds_its_room_before_the_cache_shows_it() {
    let h = Harness::start().await;
    h.instance_type("big", 2, 2048).await;
    h.node("n1", "az-a", 4, 4096, true).await;
    let member = Holder::DbMember {
        cluster: "orders".into(),
        name: "orders-1".into(),
    };
    h.assumed.lock().assume(
        member.clone(),
        Placement {
            node: "n1".into(),
            zone: "az-a".into(),
            class: "db.t3.small".into(),
            size: Size::new(2000, 2048),
        },
    );
    h.fill_n1_then_free(async { h.assumed.forget(&member) })
        .await;
    h.stop().await;
}

/// A binding is noted in the ledger when it is decided, with the revision of its write, so that
/// the DB cluster controller counts it until its own cache shows it.
#[tokio::test]
async fn a_binding_is_noted_in_the_shared_ledger_with_its_write() {
    let h = Harness::start().await;
    h.instance_type("big", 2, 2048).await;
    h.node("n1", "az-a", 4, 4096, true).await;
    h.create(instance("first", "big")).await;
    assert_eq!(h.bound("first").await.0, "n1");
    let written = h
        .get("first")
        .await
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    // A cache from before the write does not show it; one at the write does.
    let unseen = h.assumed.lock().unseen(written - 1, 0);
    assert_eq!(
        unseen,
        vec![(
            Holder::Instance("first".into()),
            Placement {
                node: "n1".into(),
                zone: "az-a".into(),
                class: "big".into(),
                size: Size::new(2000, 2048),
            }
        )]
    );
    assert!(h.assumed.lock().unseen(written, 0).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_spot_instance_is_reclaimed_after_its_notice_so_an_on_demand_one_fits() {
    let h = Harness::start().await;
    h.instance_type("big", 4, 4096).await;
    h.node("n1", "az-a", 4, 4096, true).await;
    h.create(market(instance("spot-1", "big"), Market::Spot))
        .await;
    assert_eq!(h.bound("spot-1").await.0, "n1");

    h.create(instance("od-1", "big")).await;
    let noticed_at = SystemClock.now();
    let until = eventually("spot-1 gets its interruption notice", WITHIN, || async {
        let i = h.get("spot-1").await.ok_or("gone before its notice")?;
        let o: Object = i.into();
        interruption_of(&o).ok_or_else(|| "no notice".to_string())
    })
    .await;
    assert!(
        until >= noticed_at + Duration::from_secs(1),
        "the notice lasts: {until:?}"
    );
    h.event("spot-1", EVENT_SPOT_INTERRUPTION).await;
    let message = h.unschedulable("od-1").await;
    assert!(
        message.contains("reclaiming spot instance spot-1 on n1"),
        "{message}"
    );

    eventually("spot-1 is terminated", WITHIN, || async {
        match h.get("spot-1").await {
            None => Ok(()),
            Some(i) => Err(format!("{:?}", i.metadata)),
        }
    })
    .await;
    assert!(
        SystemClock.now() >= until,
        "terminated only after the notice"
    );
    assert_eq!(h.bound("od-1").await.0, "n1");
    h.stop().await;
}

#[tokio::test]
async fn on_demand_and_reserved_instances_are_never_reclaimed() {
    let h = Harness::start().await;
    h.instance_type("big", 4, 4096).await;
    h.node("n1", "az-a", 8, 4096, true).await;
    h.node("n2", "az-a", 8, 4096, true).await;
    h.create(market(instance("reserved-1", "big"), Market::Reserved))
        .await;
    h.create(instance("od-1", "big")).await;
    h.bound("reserved-1").await;
    h.bound("od-1").await;

    h.create(instance("od-2", "big")).await;
    let message = h.unschedulable("od-2").await;
    assert!(!message.contains("reclaiming"), "{message}");
    // Several passes later (the retry is 1 s), nothing was noticed or deleted.
    let before = h
        .metrics
        .reconciles(CONTROLLER_NAME, ReconcileResult::Success);
    eventually("three more passes", WITHIN, || async {
        let n = h
            .metrics
            .reconciles(CONTROLLER_NAME, ReconcileResult::Success);
        if n >= before + 3 {
            Ok(())
        } else {
            Err(format!("{} passes", n - before))
        }
    })
    .await;
    for name in ["reserved-1", "od-1"] {
        let i = h.get(name).await.expect("still there");
        let o: Object = i.into();
        assert_eq!(interruption_of(&o), None, "{name}");
    }
    assert!(h.get("od-2").await.unwrap().status.unwrap().node.is_empty());
    h.stop().await;
}
