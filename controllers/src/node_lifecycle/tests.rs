use super::*;
use crate::runtime::SystemClock;
use crate::{
    runtime::ShutdownTrigger,
    testing::{TestServer, eventually},
};
use hanul_proto::v1::{Condition, InstanceSpec, InstanceStatus, NodeStatus, ObjectMeta};

const WITHIN: Duration = Duration::from_secs(10);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
}

#[test]
fn a_lease_holds_for_the_grace_period_and_not_a_moment_longer() {
    let grace = Duration::from_secs(15);
    assert_eq!(
        node_health(t0(), t0() + Duration::from_secs(14), grace),
        Health::Healthy {
            expires: t0() + grace
        }
    );
    assert_eq!(
        node_health(t0(), t0() + grace, grace),
        Health::Expired {
            since: t0() + grace
        }
    );
    // A heartbeat from the future (clock skew) is healthy.
    assert!(matches!(
        node_health(t0() + Duration::from_secs(60), t0(), grace),
        Health::Healthy { .. }
    ));
}

/// The test plays an agent: it registers `name` and heartbeats (`Ready=True` and
/// `lastHeartbeatTime`) every 100 ms until the returned task is aborted.
async fn register(client: &Client, name: &str) {
    client
        .create(crate::testing::node(name, "az-a", 4000, 4096))
        .await
        .unwrap();
}

async fn heartbeat_once(client: &Client, name: &str) {
    let mut o = client.get(Kind::Node, name).await.unwrap();
    if let Some(Resource::Node(n)) = &mut o.resource {
        let status = n.status.get_or_insert_with(NodeStatus::default);
        let now = SystemClock.now();
        conditions::set(
            &mut status.conditions,
            CONDITION_READY,
            conditions::TRUE,
            "AgentReady",
            "agent is posting status",
            now,
        );
        status.last_heartbeat_time = Some(conditions::timestamp(now));
    }
    o.metadata_mut().resource_version = 0;
    client.update_status(o).await.unwrap();
}

fn heartbeat(client: &Client, name: &str) -> tokio::task::JoinHandle<()> {
    let (client, name) = (client.clone(), name.to_string());
    tokio::spawn(async move {
        loop {
            heartbeat_once(&client, &name).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// An instance already bound to `node` and running there, as the scheduler and agent leave it.
async fn running_on(client: &Client, name: &str, node: &str) {
    let created = client
        .create(
            Instance {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                spec: Some(InstanceSpec {
                    image: "web-v1".into(),
                    ..Default::default()
                }),
                status: None,
            }
            .into(),
        )
        .await
        .unwrap();
    let mut o = created;
    if let Some(Resource::Instance(i)) = &mut o.resource {
        i.status = Some(InstanceStatus {
            state: "running".into(),
            node: node.into(),
            zone: "az-a".into(),
            ..Default::default()
        });
    }
    client.update_status(o).await.unwrap();
}

async fn condition_of(client: &Client, kind: Kind, name: &str, ty: &str) -> Option<Condition> {
    let o = client.get(kind, name).await.unwrap();
    let conds = match &o.resource {
        Some(Resource::Node(n)) => n.status.clone().unwrap_or_default().conditions,
        Some(Resource::Instance(i)) => i.status.clone().unwrap_or_default().conditions,
        _ => Vec::new(),
    };
    conditions::find(&conds, ty).cloned()
}

async fn wait_condition(
    client: &Client,
    kind: Kind,
    name: &str,
    ty: &str,
    status: &str,
    reason: &str,
) -> Condition {
    eventually(
        &format!("{kind}/{name} has {ty}={status} ({reason})"),
        WITHIN,
        || async {
            match condition_of(client, kind, name, ty).await {
                Some(c) if c.status == status && c.reason == reason => Ok(c),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

fn start(t: &TestServer) -> (ShutdownTrigger, tokio::task::JoinHandle<()>, Metrics) {
    let metrics = Metrics::default();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(run_with(
        t.client.clone(),
        metrics.clone(),
        shutdown,
        Arc::new(SystemClock),
        Config {
            grace: Duration::from_secs(1),
            conflict_retry: Duration::from_millis(50),
        },
    ));
    (trigger, task, metrics)
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_turns_unknown_and_its_instances_fail_status_checks_until_it_returns()
 {
    let t = TestServer::start().await;
    let c = &t.client;
    register(c, "n1").await;
    register(c, "n2").await;
    heartbeat_once(c, "n1").await;
    let agent1 = heartbeat(c, "n1");
    let agent2 = heartbeat(c, "n2");
    running_on(c, "i-1", "n1").await;
    running_on(c, "i-2", "n2").await;
    let (trigger, task, metrics) = start(&t);

    // The agent of n1 dies.
    agent1.abort();
    let ready = wait_condition(
        c,
        Kind::Node,
        "n1",
        CONDITION_READY,
        conditions::UNKNOWN,
        REASON_NODE_STATUS_UNKNOWN,
    )
    .await;
    assert!(
        ready
            .message
            .starts_with("agent stopped posting status (last heartbeat "),
        "{}",
        ready.message
    );
    let check = wait_condition(
        c,
        Kind::Instance,
        "i-1",
        CONDITION_STATUS_CHECK,
        conditions::FALSE,
        REASON_NODE_NOT_READY,
    )
    .await;
    assert_eq!(
        check.message,
        "instance status check failed: node n1 is not ready"
    );
    eventually("a NodeNotReady event about n1", WITHIN, || async {
        let (events, _) = c.list(Some(Kind::Event), "").await.unwrap();
        events
            .iter()
            .find_map(|o| match &o.resource {
                Some(Resource::Event(e))
                    if e.reason == EVENT_NODE_NOT_READY
                        && e.involved_object.as_ref().is_some_and(|r| r.name == "n1") =>
                {
                    Some(())
                }
                _ => None,
            })
            .ok_or_else(|| format!("{} events", events.len()))
    })
    .await;
    // Impaired, not moved.
    let i1 = c.get(Kind::Instance, "i-1").await.unwrap();
    let Some(Resource::Instance(i1)) = i1.resource else {
        panic!("not an instance")
    };
    assert_eq!(i1.status.unwrap().node, "n1");

    // The agent comes back.
    let agent1 = heartbeat(c, "n1");
    wait_condition(
        c,
        Kind::Instance,
        "i-1",
        CONDITION_STATUS_CHECK,
        conditions::TRUE,
        REASON_NODE_READY,
    )
    .await;

    // n2 heartbeated all along: Ready, and its instance never impaired.
    let n2 = condition_of(c, Kind::Node, "n2", CONDITION_READY)
        .await
        .unwrap();
    assert_eq!(n2.status, conditions::TRUE);
    assert_eq!(
        condition_of(c, Kind::Instance, "i-2", CONDITION_STATUS_CHECK).await,
        None
    );
    assert!(metrics.reconciles(CONTROLLER_NAME, crate::runtime::ReconcileResult::Success) > 0);

    agent1.abort();
    agent2.abort();
    trigger.trigger();
    task.await.unwrap();
    t.stop().await;
}
