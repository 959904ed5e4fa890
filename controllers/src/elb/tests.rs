use super::*;
use crate::testing::{TestServer, eventually};
use hanul_proto::v1::{Listener, LoadBalancerSpec, ObjectMeta, Rule, TargetGroup, TargetGroupSpec};

fn node(name: &str, zone: &str, ready: bool) -> NodeView {
    NodeView {
        name: name.into(),
        zone: zone.into(),
        address: format!("10.0.0.{}", name.trim_start_matches('n')),
        ready,
        unschedulable: false,
    }
}

fn lb(zones: &[&str], ports: &[(u32, &str)]) -> LoadBalancer {
    LoadBalancer {
        metadata: Some(ObjectMeta {
            name: "web".into(),
            generation: 3,
            ..Default::default()
        }),
        spec: Some(LoadBalancerSpec {
            r#type: "application".into(),
            zones: zones.iter().map(|z| (*z).into()).collect(),
            listeners: ports
                .iter()
                .map(|(port, tg)| Listener {
                    port: *port,
                    protocol: "HTTP".into(),
                    default_target_group: (*tg).into(),
                    rules: vec![],
                })
                .collect(),
        }),
        status: None,
    }
}

fn groups(names: &[(&str, &str)]) -> Groups {
    names
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
        .collect()
}

fn placed(s: &LoadBalancerStatus) -> Vec<(&str, &str)> {
    s.nodes
        .iter()
        .map(|e| (e.node.as_str(), e.zone.as_str()))
        .collect()
}

#[test]
fn one_ready_node_per_zone_and_the_first_zone_by_default() {
    let nodes = [
        node("n1", "az-a", false),
        node("n2", "az-a", true),
        node("n3", "az-b", true),
        node("n4", "az-c", false),
    ];
    let g = groups(&[("web", "HTTP")]);
    let s = plan(
        "web",
        &lb(&["az-a", "az-b"], &[(80, "web")]),
        &nodes,
        &[],
        &g,
    );
    assert_eq!(placed(&s), [("n2", "az-a"), ("n3", "az-b")]);
    assert_eq!(s.addresses, ["10.0.0.2:80", "10.0.0.3:80"]);
    assert_eq!(
        (s.state.as_str(), s.dns_name.as_str()),
        ("provisioning", "web.elb.hanul.internal")
    );
    assert_eq!(s.observed_generation, 3);
    assert!(
        s.reason.contains("waiting for the listeners on node n2"),
        "{}",
        s.reason
    );

    let s = plan("web", &lb(&[], &[(80, "web")]), &nodes, &[], &g);
    assert_eq!(placed(&s), [("n2", "az-a")]);

    let s = plan("web", &lb(&["az-c"], &[(80, "web")]), &nodes, &[], &g);
    assert!(s.nodes.is_empty());
    assert_eq!(
        (s.state.as_str(), s.reason.as_str()),
        ("provisioning", "no Ready node in zone az-c")
    );
}

#[test]
fn placement_sticks_while_the_node_is_ready_and_agents_decide_active() {
    let mut nodes = vec![node("n1", "az-a", true), node("n2", "az-a", true)];
    let g = groups(&[("web", "HTTP")]);
    let mut b = lb(&["az-a"], &[(80, "web")]);
    let mut s = plan("web", &b, &nodes, &[], &g);
    assert_eq!(placed(&s), [("n1", "az-a")]);
    // The agent reports its listeners up.
    s.nodes[0].state = "active".into();
    b.status = Some(s);
    // A new, emptier node does not move it.
    nodes.push(node("n0", "az-a", true));
    let s = plan("web", &b, &nodes, &[], &g);
    assert_eq!(placed(&s), [("n1", "az-a")]);
    assert_eq!((s.state.as_str(), s.reason.as_str()), ("active", ""));
    // Its node is gone: placed again, provisioning.
    nodes[0].ready = false;
    let s = plan("web", &b, &nodes, &[], &g);
    assert_eq!(placed(&s), [("n0", "az-a")]);
    assert_eq!(s.state, "provisioning");
    // An agent that could not listen fails the load balancer, with its reason.
    let mut failed = b.clone();
    failed.status.as_mut().unwrap().nodes[0].state = "failed".into();
    failed.status.as_mut().unwrap().nodes[0].reason =
        "listener 80: port 80 is already in use on this node".into();
    nodes[0].ready = true;
    let s = plan("web", &failed, &nodes, &[], &g);
    assert_eq!(s.state, "failed");
    assert_eq!(
        s.reason,
        "node n1: listener 80: port 80 is already in use on this node"
    );
}

#[test]
fn ports_taken_by_other_load_balancers_are_avoided() {
    let nodes = [node("n1", "az-a", true), node("n2", "az-a", true)];
    let g = groups(&[("web", "HTTP"), ("api", "HTTP")]);
    let mut other = lb(&["az-a"], &[(80, "api")]);
    other.status = Some(plan("api", &other, &nodes, &[], &g));
    assert_eq!(placed(other.status.as_ref().unwrap()), [("n1", "az-a")]);
    // Same port: the other node. Another port: the emptier node too.
    let s = plan(
        "web",
        &lb(&["az-a"], &[(80, "web")]),
        &nodes,
        &[("api", &other)],
        &g,
    );
    assert_eq!(placed(&s), [("n2", "az-a")]);
    let s = plan(
        "web",
        &lb(&["az-a"], &[(81, "web")]),
        &nodes,
        &[("api", &other)],
        &g,
    );
    assert_eq!(placed(&s), [("n2", "az-a")]);
    // Only n1 Ready, the port taken there: failed, saying why.
    let one = [node("n1", "az-a", true), node("n2", "az-a", false)];
    let s = plan(
        "web",
        &lb(&["az-a"], &[(80, "web")]),
        &one,
        &[("api", &other)],
        &g,
    );
    assert_eq!(s.state, "failed");
    assert_eq!(
        s.reason,
        "listener port 80 is in use by load balancer \"api\" on every Ready node in zone az-a"
    );
}

#[test]
fn of_two_placed_on_one_port_at_once_the_younger_moves_and_zones_count_once() {
    let nodes = [node("n1", "az-a", true), node("n2", "az-a", true)];
    let g = groups(&[("web", "HTTP"), ("api", "HTTP")]);
    let created = |b: &mut LoadBalancer, seconds| {
        b.metadata.as_mut().unwrap().created_at =
            Some(pbjson_types::Timestamp { seconds, nanos: 0 });
    };
    // Both were placed on n1 with port 80 from caches that did not show each other.
    let mut older = lb(&["az-a"], &[(80, "api")]);
    created(&mut older, 100);
    older.status = Some(plan("api", &older, &nodes, &[], &g));
    let mut younger = lb(&["az-a", "az-a"], &[(80, "web")]);
    created(&mut younger, 200);
    younger.status = Some(plan("web", &younger, &nodes, &[], &g));
    assert_eq!(
        placed(younger.status.as_ref().unwrap()),
        [("n1", "az-a")],
        "one entry per zone"
    );
    let s = plan("web", &younger, &nodes, &[("api", &older)], &g);
    assert_eq!(placed(&s), [("n2", "az-a")]);
    let s = plan("api", &older, &nodes, &[("web", &younger)], &g);
    assert_eq!(placed(&s), [("n1", "az-a")]);
}

#[test]
fn unknown_or_mismatched_target_groups_fail_with_the_listener() {
    let nodes = [node("n1", "az-a", true)];
    let mut b = lb(&[], &[(80, "web"), (81, "tcp")]);
    b.spec.as_mut().unwrap().listeners[0].rules.push(Rule {
        path_prefix: "/api".into(),
        target_group: "api".into(),
        ..Default::default()
    });
    let s = plan(
        "web",
        &b,
        &nodes,
        &[],
        &groups(&[("web", "HTTP"), ("tcp", "TCP")]),
    );
    assert_eq!(
        (s.state.as_str(), s.reason.as_str()),
        ("failed", "listener 80: target group \"api\" does not exist")
    );
    let s = plan(
        "web",
        &b,
        &nodes,
        &[],
        &groups(&[("web", "HTTP"), ("api", "HTTP"), ("tcp", "TCP")]),
    );
    assert_eq!(
        s.reason,
        "listener 81: target group \"tcp\" is TCP, the listener HTTP"
    );
    // Placement still happens: the listeners come up once the references are fixed.
    assert_eq!(placed(&s), [("n1", "az-a")]);
}

#[tokio::test]
async fn the_controller_writes_the_plan_and_follows_target_groups() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let mut n1 = crate::testing::node("n1", "az-a", 2000, 2048);
    if let Some(Resource::Node(n)) = &mut n1.resource {
        n.spec.as_mut().unwrap().address = "10.0.0.1".into();
    }
    crate::testing::ready_node(&client, n1).await;
    let mut b = lb(&[], &[(8080, "web")]);
    b.metadata.as_mut().unwrap().generation = 0;
    client.create(Object::from(b)).await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let metrics = Metrics::default();
    let task = tokio::spawn(run(client.clone(), metrics, shutdown));
    let status = |client: Client| async move {
        let o = client
            .get(Kind::LoadBalancer, "web")
            .await
            .map_err(|e| e.to_string())?;
        match o.resource {
            Some(Resource::LoadBalancer(lb)) => Ok(lb.status.unwrap_or_default()),
            _ => Err("not a load balancer".to_string()),
        }
    };
    let s = eventually(
        "failed for the missing group",
        Duration::from_secs(10),
        || async {
            let s = status(client.clone()).await?;
            if s.state == "failed" {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        s.reason,
        "listener 8080: target group \"web\" does not exist"
    );
    assert_eq!(placed(&s), [("n1", "az-a")]);
    client
        .create(Object::from(TargetGroup {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(TargetGroupSpec {
                port: "80".into(),
                ..Default::default()
            }),
            status: None,
        }))
        .await
        .unwrap();
    eventually(
        "provisioning once the group exists",
        Duration::from_secs(10),
        || async {
            let s = status(client.clone()).await?;
            if s.state == "provisioning" {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    trigger.trigger();
    task.await.unwrap();
}
