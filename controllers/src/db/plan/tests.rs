use super::*;
use hanul_proto::db::{MULTI_AZ_CLUSTER, SINGLE_AZ};
use hanul_proto::v1::{FailoverSettings, ReadReplicas};

const LEASE: Duration = Duration::from_secs(3);

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
}

fn spec(deployment: &str, replicas: u32) -> DbClusterSpec {
    DbClusterSpec {
        deployment: deployment.into(),
        port: Some(15432),
        read_replicas: Some(ReadReplicas {
            count: replicas,
            zones: vec![],
        }),
        failover: Some(FailoverSettings {
            automatic: Some(true),
            lease_seconds: Some(3),
        }),
        ..Default::default()
    }
}

/// Room for a dozen members of the default class (2 vCPUs, 1 GiB).
const ROOMY: Free = Free {
    cpu: 24_000,
    mem: 48 * 1024,
};

fn nodes() -> Vec<NodeInfo> {
    ["a", "b", "c"]
        .iter()
        .map(|z| NodeInfo {
            name: format!("node-{z}"),
            zone: format!("az-{z}"),
            address: "127.0.0.1".into(),
            ready: true,
            free: ROOMY,
            clone_source: false,
        })
        .collect()
}

fn run(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    switchover: Option<&str>,
) -> Plan {
    run_rebooting(spec, status, members, switchover, None)
}

fn run_rebooting(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    switchover: Option<&str>,
    reboot: Option<&str>,
) -> Plan {
    run_asked(
        spec,
        status,
        members,
        Asks {
            switchover,
            reboot,
            ..Asks::default()
        },
    )
}

fn run_backtracking(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    backtrack: Option<(&str, Result<DbBacktrack, String>)>,
) -> Plan {
    run_asked(
        spec,
        status,
        members,
        Asks {
            backtrack,
            ..Asks::default()
        },
    )
}

/// What the cluster's annotations ask for, in a test's plan.
#[derive(Default)]
struct Asks<'a> {
    switchover: Option<&'a str>,
    reboot: Option<&'a str>,
    backtrack: Option<(&'a str, Result<DbBacktrack, String>)>,
    backtrack_cancel: Option<&'a str>,
}

/// The plan of cluster "db" on [`nodes`] at [`at`], with what its annotations ask.
fn run_asked(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    asks: Asks<'_>,
) -> Plan {
    plan_asked(spec, status, members, &nodes(), asks)
}

/// The plan of cluster "db" on `nodes` at [`at`], with what its annotations ask.
fn plan_asked(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    nodes: &[NodeInfo],
    asks: Asks<'_>,
) -> Plan {
    plan(&Input {
        cluster: "db",
        generation: 1,
        spec,
        status,
        members,
        nodes,
        switchover: asks.switchover,
        reboot: asks.reboot,
        backtrack: asks.backtrack,
        backtrack_cancel: asks.backtrack_cancel,
        now: at(),
    })
}

fn member(role: &str, node: &str) -> Member {
    Member {
        spec_role: role.into(),
        zone: format!("az-{}", node.trim_start_matches("node-")),
        node: node.into(),
        readable: true,
        state: STATE_AVAILABLE.into(),
        address: format!("127.0.0.1:{}", 30000 + node.len()),
        timeline: 1,
        ..Default::default()
    }
}

/// A running multi-AZ cluster in epoch 1: db-1 writer, db-2 and db-3 streaming standbys in the
/// synchronous set.
fn running() -> (DbClusterSpec, DbClusterStatus, BTreeMap<String, Member>) {
    let spec = spec(MULTI_AZ_CLUSTER, 0);
    let mut members = BTreeMap::new();
    let mut w = member(ROLE_WRITER, "node-a");
    w.role = ROLE_WRITER.into();
    w.epoch = 1;
    w.lease_epoch = 1;
    w.flush_lsn = 1000;
    members.insert("db-1".to_owned(), w);
    for (n, node) in [("db-2", "node-b"), ("db-3", "node-c")] {
        let mut s = member(ROLE_STANDBY, node);
        s.role = ROLE_STANDBY.into();
        s.epoch = 1;
        s.streaming = true;
        s.replay_lsn = 900;
        members.insert(n.to_owned(), s);
    }
    let status = DbClusterStatus {
        epoch: 1,
        writer: "db-1".into(),
        sync_standbys: vec!["db-2".into(), "db-3".into()],
        sync_count: 1,
        phase: PHASE_AVAILABLE.into(),
        ..Default::default()
    };
    (spec, status, members)
}

fn fail_writer(members: &mut BTreeMap<String, Member>) {
    let w = members.get_mut("db-1").unwrap();
    w.role.clear();
    w.state = STATE_FAILED.into();
}

fn vote(members: &mut BTreeMap<String, Member>, name: &str, epoch: u64, lsn: u64) {
    members.get_mut(name).unwrap().vote = Some((epoch, lsn, 1));
}

#[test]
fn a_new_cluster_gets_its_members_spread_over_zones_and_a_writer_in_epoch_one() {
    let spec = spec(MULTI_AZ_CLUSTER, 1);
    let p = run(&spec, &DbClusterStatus::default(), &BTreeMap::new(), None);
    let created: Vec<(String, String, String)> = p
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Create {
                name, role, node, ..
            } => Some((name.clone(), role.clone(), node.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        vec![
            ("db-1".into(), ROLE_WRITER.into(), "node-a".into()),
            ("db-2".into(), ROLE_STANDBY.into(), "node-b".into()),
            ("db-3".into(), ROLE_STANDBY.into(), "node-c".into()),
            ("db-4".into(), ROLE_REPLICA.into(), "node-b".into()),
        ]
    );
    assert_eq!(p.status.epoch, 1);
    assert_eq!(p.status.writer, "db-1");
    assert_eq!(p.status.phase, PHASE_CREATING);
    // Nobody streams yet: the synchronous set starts empty and grows.
    assert!(p.status.sync_standbys.is_empty());
    assert_eq!(p.status.sync_count, 1);
    let e = p.status.endpoints.unwrap();
    assert_eq!(e.writer, "127.0.0.1:15432");
    assert_eq!(e.reader, "127.0.0.1:15433");
}

#[test]
fn a_standby_joins_the_synchronous_set_once_it_streams_in_this_epoch_and_caught_up() {
    let (spec, mut status, mut members) = running();
    status.sync_standbys.clear();
    members.get_mut("db-3").unwrap().streaming = false;
    // Streaming but behind what the writer reported: a commit acknowledged before may be on
    // no member of the set yet.
    members.get_mut("db-2").unwrap().receive_lsn = 999;
    let p = run(&spec, &status, &members, None);
    assert!(p.status.sync_standbys.is_empty());
    members.get_mut("db-2").unwrap().receive_lsn = 1000;
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.sync_standbys, vec!["db-2".to_owned()]);
    // A standby of an older epoch does not join.
    members.get_mut("db-3").unwrap().streaming = true;
    members.get_mut("db-3").unwrap().epoch = 0;
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.sync_standbys, vec!["db-2".to_owned()]);
}

#[test]
fn the_writer_is_up_while_it_renews_and_the_controller_looks_again_before_the_lease_ends() {
    let (spec, status, mut members) = running();
    members.get_mut("db-1").unwrap().lease_silence = Duration::from_secs(1);
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.phase, PHASE_AVAILABLE);
    assert!(p.status.failover.is_none());
    let wake = p.wake.unwrap();
    assert!(wake > Duration::from_secs(2) - Duration::from_millis(1) && wake < LEASE);
}

#[test]
fn a_failed_writer_starts_a_failover_and_the_most_advanced_voter_is_promoted() {
    let (spec, status, mut members) = running();
    fail_writer(&mut members);
    let p = run(&spec, &status, &members, None);
    let f = p.status.failover.clone().unwrap();
    assert_eq!(
        (f.epoch, f.from.as_str(), f.reason.as_str()),
        (2, "db-1", REASON_WRITER_FAILED)
    );
    assert_eq!(p.status.epoch, 1, "no new epoch before the votes");
    assert_eq!(p.status.phase, PHASE_FAILING_OVER);
    assert!(p.events.iter().any(|e| e.reason == "FailoverStarted"));

    // One vote of two: with ANY 1 of {db-2, db-3} a commit may be only on the other one.
    vote(&mut members, "db-2", 2, 950);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.epoch, 1);
    vote(&mut members, "db-3", 2, 990);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.epoch, 2);
    assert_eq!(p.status.writer, "db-3");
    assert_eq!(p.status.failover.as_ref().unwrap().target, "db-3");
    // db-2 has less WAL than db-3: it joins the new set only once it has caught up.
    assert!(p.status.sync_standbys.is_empty());

    // Done once the candidate reports itself writer of epoch 2.
    let c = members.get_mut("db-3").unwrap();
    c.role = ROLE_WRITER.into();
    c.epoch = 2;
    let p = run(&spec, &p.status, &members, None);
    assert!(p.status.failover.is_none());
    assert_eq!(p.status.phase, PHASE_AVAILABLE);
    assert!(p.status.last_failover_time.is_some());
    assert!(p.events.iter().any(|e| e.reason == "FailoverCompleted"));
}

#[test]
fn old_votes_do_not_count() {
    let (spec, status, mut members) = running();
    fail_writer(&mut members);
    let p = run(&spec, &status, &members, None);
    vote(&mut members, "db-2", 1, 950);
    vote(&mut members, "db-3", 1, 990);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.epoch, 1);
}

#[test]
fn a_lost_writer_is_replaced_only_after_its_whole_lease() {
    let (spec, status, mut members) = running();
    members.get_mut("db-1").unwrap().lease_silence = LEASE - Duration::from_millis(1);
    let p = run(&spec, &status, &members, None);
    assert!(p.status.failover.is_none());
    members.get_mut("db-1").unwrap().lease_silence = LEASE + Duration::from_millis(1);
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.failover.unwrap().reason, REASON_WRITER_LOST);
}

#[test]
fn a_writer_that_has_not_started_yet_is_not_failed_over() {
    let (spec, mut status, mut members) = running();
    // Epoch 1 was just named; the writer has not reported it yet.
    let w = members.get_mut("db-1").unwrap();
    w.epoch = 0;
    w.lease_epoch = 0;
    w.role.clear();
    w.state = "creating".into();
    w.lease_silence = Duration::from_secs(60);
    status.phase = PHASE_CREATING.into();
    let p = run(&spec, &status, &members, None);
    assert!(p.status.failover.is_none());
    assert_eq!(p.status.phase, PHASE_CREATING);
}

#[test]
fn a_switchover_waits_for_the_old_writer_to_stop_before_promoting_the_target() {
    let (spec, status, mut members) = running();
    let p = run(&spec, &status, &members, Some("db-2@1"));
    let f = p.status.failover.clone().unwrap();
    assert_eq!(
        (f.reason.as_str(), f.target.as_str()),
        (REASON_SWITCHOVER, "db-2")
    );
    assert_eq!(p.status.switchover_handled, "db-2@1");
    vote(&mut members, "db-2", 2, 1000);
    vote(&mut members, "db-3", 2, 1000);
    // The old writer still runs and renews: no promotion.
    let p = run(&spec, &p.status, &members, Some("db-2@1"));
    assert_eq!(p.status.epoch, 1);
    let w = members.get_mut("db-1").unwrap();
    w.role.clear();
    w.state = STATE_STOPPED.into();
    let p = run(&spec, &p.status, &members, Some("db-2@1"));
    assert_eq!((p.status.epoch, p.status.writer.as_str()), (2, "db-2"));
    // The same request is not acted on twice.
    let mut done = p.status.clone();
    done.failover = None;
    let c = members.get_mut("db-2").unwrap();
    c.role = ROLE_WRITER.into();
    c.epoch = 2;
    let p = run(&spec, &done, &members, Some("db-2@1"));
    assert!(p.status.failover.is_none());
}

#[test]
fn a_switchover_to_a_member_outside_the_synchronous_set_is_refused() {
    let (spec, status, members) = running();
    let p = run(&spec, &status, &members, Some("db-9@1"));
    assert!(p.status.failover.is_none());
    assert!(p.events.iter().any(|e| e.reason == "SwitchoverRefused"));
}

#[test]
fn the_target_is_not_promoted_when_another_voter_has_more_wal() {
    let (spec, status, mut members) = running();
    let p = run(&spec, &status, &members, Some("db-2@1"));
    vote(&mut members, "db-2", 2, 900);
    vote(&mut members, "db-3", 2, 1000);
    let w = members.get_mut("db-1").unwrap();
    w.role.clear();
    w.state = STATE_STOPPED.into();
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.writer, "db-3");
}

#[test]
fn a_single_az_writer_that_crashed_restarts_in_place_in_a_new_epoch() {
    let spec = spec(SINGLE_AZ, 0);
    let mut w = member(ROLE_WRITER, "node-a");
    w.epoch = 1;
    w.state = STATE_FAILED.into();
    let members: BTreeMap<String, Member> = [("db-1".to_owned(), w)].into();
    let status = DbClusterStatus {
        epoch: 1,
        writer: "db-1".into(),
        phase: PHASE_AVAILABLE.into(),
        ..Default::default()
    };
    let p = run(&spec, &status, &members, None);
    assert_eq!((p.status.epoch, p.status.writer.as_str()), (2, "db-1"));
    assert_eq!(p.status.phase, PHASE_REBOOTING);
    assert!(p.status.failover.is_none());
}

#[test]
fn a_lost_single_az_writer_leaves_the_cluster_inaccessible_without_a_new_epoch() {
    let spec = spec(SINGLE_AZ, 0);
    let mut w = member(ROLE_WRITER, "node-a");
    w.role = ROLE_WRITER.into();
    w.epoch = 1;
    w.lease_epoch = 1;
    w.lease_silence = Duration::from_secs(10);
    let members: BTreeMap<String, Member> = [("db-1".to_owned(), w)].into();
    let status = DbClusterStatus {
        epoch: 1,
        writer: "db-1".into(),
        phase: PHASE_AVAILABLE.into(),
        ..Default::default()
    };
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.epoch, 1);
    assert_eq!(p.status.phase, PHASE_INACCESSIBLE);
}

#[test]
fn endpoints_start_off_the_writers_node_and_stay_put_while_their_node_is_ready() {
    let (spec, status, members) = running();
    let p = run(&spec, &status, &members, None);
    let e = p.status.endpoints.clone().unwrap();
    assert_ne!(e.node, "node-a");
    assert_eq!(e.members.len(), 3);
    // Once chosen they stay while their node is Ready.
    let mut st = p.status.clone();
    st.endpoints.as_mut().unwrap().node = "node-c".into();
    let p = run(&spec, &st, &members, None);
    assert_eq!(p.status.endpoints.unwrap().node, "node-c");
    // Also when the writer comes to their node (a failover): moving them would change their
    // address in the middle of it.
    st.endpoints.as_mut().unwrap().node = "node-a".into();
    let p = run(&spec, &st, &members, None);
    assert_eq!(p.status.endpoints.unwrap().node, "node-a");
    // Their node not Ready: a Ready node without the writer.
    let mut down = nodes();
    down[2].ready = false;
    st.endpoints.as_mut().unwrap().node = "node-c".into();
    let e = endpoints(&spec, &st, &members, &down, LEASE);
    assert_eq!(e.node, "node-b");
}

#[test]
fn read_replicas_scale_in_from_the_highest() {
    let spec1 = spec(SINGLE_AZ, 2);
    let mut members = BTreeMap::new();
    let mut w = member(ROLE_WRITER, "node-a");
    w.role = ROLE_WRITER.into();
    w.epoch = 1;
    members.insert("db-1".to_owned(), w);
    members.insert("db-2".to_owned(), member(ROLE_REPLICA, "node-b"));
    members.insert("db-3".to_owned(), member(ROLE_REPLICA, "node-c"));
    let status = DbClusterStatus {
        epoch: 1,
        writer: "db-1".into(),
        ..Default::default()
    };
    let p = run(&spec1, &status, &members, None);
    assert!(p.effects.is_empty());
    let spec0 = spec(SINGLE_AZ, 1);
    let p = run(&spec0, &status, &members, None);
    assert_eq!(
        p.effects,
        vec![Effect::Delete {
            name: "db-3".into()
        }]
    );
}

#[test]
fn voters_with_the_candidates_wal_form_the_new_synchronous_set() {
    let (spec, status, mut members) = running();
    fail_writer(&mut members);
    let p = run(&spec, &status, &members, None);
    vote(&mut members, "db-2", 2, 1000);
    vote(&mut members, "db-3", 2, 1000);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.writer, "db-2", "ties go to the first by name");
    assert_eq!(p.status.sync_standbys, vec!["db-3".to_owned()]);
}

// Found by the property test (props.rs): a candidate whose PostgreSQL stops right after its
// promotion, before the controller saw it as writer, must not stall the failover.
#[test]
fn a_candidate_that_fails_right_after_its_promotion_does_not_stall_the_failover() {
    let (spec, status, mut members) = running();
    fail_writer(&mut members);
    let p = run(&spec, &status, &members, None);
    vote(&mut members, "db-2", 2, 1000);
    vote(&mut members, "db-3", 2, 1000);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!((p.status.epoch, p.status.writer.as_str()), (2, "db-2"));
    let c = members.get_mut("db-2").unwrap();
    c.epoch = 2;
    c.lease_epoch = 2;
    c.timeline = 2;
    c.role.clear();
    c.streaming = false;
    c.state = STATE_FAILED.into();
    let mut st = p.status;
    for _ in 0..5 {
        st = run(&spec, &st, &members, None).status;
    }
    assert!(
        st.failover.as_ref().is_some_and(|f| f.epoch > 2),
        "the cluster waits for db-2 forever: {:?}",
        (st.epoch, &st.writer, &st.phase, &st.failover)
    );
}

// Found by the property test: a voter behind the candidate must not become the only voter of
// the next failover.
#[test]
fn a_voter_behind_the_candidate_is_not_the_only_voter_of_the_next_failover() {
    let (spec, status, mut members) = running();
    // db-1 acknowledged commits up to 1000 through db-3 (ANY 1 of db-2, db-3), then failed.
    fail_writer(&mut members);
    let p = run(&spec, &status, &members, None);
    vote(&mut members, "db-2", 2, 950);
    vote(&mut members, "db-3", 2, 1000);
    let p = run(&spec, &p.status, &members, None);
    assert_eq!((p.status.epoch, p.status.writer.as_str()), (2, "db-3"));
    let c = members.get_mut("db-3").unwrap();
    c.role = ROLE_WRITER.into();
    c.epoch = 2;
    c.lease_epoch = 2;
    c.timeline = 2;
    c.streaming = false;
    c.flush_lsn = 1010;
    let p = run(&spec, &p.status, &members, None);
    assert!(p.status.failover.is_none());
    let c = members.get_mut("db-3").unwrap();
    c.role.clear();
    c.state = STATE_FAILED.into();
    let p = run(&spec, &p.status, &members, None);
    vote(&mut members, "db-2", 3, 950);
    let p = run(&spec, &p.status, &members, None);
    assert_ne!(
        (p.status.epoch, p.status.writer.as_str()),
        (3, "db-2"),
        "db-2 lacks the commits acknowledged between 950 and 1000"
    );
}

#[test]
fn a_stale_timeline_in_a_vote_does_not_outrank_the_switchover_target() {
    let (spec, status, mut members) = running();
    let p = run(&spec, &status, &members, Some("db-3@1"));
    vote(&mut members, "db-2", 2, 1000);
    // Same WAL; db-3 reports the timeline of its last restartpoint.
    members.get_mut("db-2").unwrap().vote = Some((2, 1000, 2));
    members.get_mut("db-3").unwrap().vote = Some((2, 1000, 1));
    let w = members.get_mut("db-1").unwrap();
    w.role.clear();
    w.state = STATE_STOPPED.into();
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.writer, "db-3");
}

#[test]
fn a_reboot_restarts_the_writer_in_a_new_epoch_and_force_failover_hands_over() {
    let (spec, status, members) = running();
    let p = run_rebooting(&spec, &status, &members, None, Some("r1"));
    assert_eq!((p.status.epoch, p.status.writer.as_str()), (2, "db-1"));
    assert_eq!(p.status.phase, PHASE_REBOOTING);
    assert_eq!(p.status.sync_standbys, status.sync_standbys);
    // Rebooting until the writer reports the new epoch; the same request is not redone.
    let p = run_rebooting(&spec, &p.status, &members, None, Some("r1"));
    assert_eq!(
        (p.status.epoch, p.status.phase.as_str()),
        (2, PHASE_REBOOTING)
    );
    let p = run_rebooting(&spec, &status, &members, None, Some("force-failover:r2"));
    let f = p.status.failover.unwrap();
    assert_eq!((f.epoch, f.reason.as_str()), (2, REASON_SWITCHOVER));
    assert_eq!(p.status.epoch, 1);
}

#[test]
fn a_member_whose_node_is_gone_is_replaced_but_not_the_writer_nor_during_an_election() {
    let (spec, mut status, members) = running();
    let without =
        |gone: &str| -> Vec<NodeInfo> { nodes().into_iter().filter(|n| n.name != gone).collect() };
    let plan_with =
        |status: &DbClusterStatus, nodes: &[NodeInfo]| plan_on(&spec, status, &members, nodes);
    let p = plan_with(&status, &without("node-b"));
    assert!(
        p.effects.contains(&Effect::Replace {
            name: "db-2".into()
        }),
        "{:?}",
        p.effects
    );
    assert!(p.events.iter().any(|e| e.reason == "DBInstanceReplaced"));
    // The writer's node gone: a failover replaces it first.
    let p = plan_with(&status, &without("node-a"));
    assert!(
        !p.effects
            .iter()
            .any(|e| matches!(e, Effect::Replace { .. })),
        "{:?}",
        p.effects
    );
    // Nothing is replaced during an election.
    status.failover = Some(DbFailover {
        epoch: 2,
        from: "db-1".into(),
        reason: "writer-lost".into(),
        ..Default::default()
    });
    let p = plan_with(&status, &without("node-b"));
    assert!(
        !p.effects
            .iter()
            .any(|e| matches!(e, Effect::Replace { .. }))
    );
    // Every node there: nothing.
    status.failover = None;
    let p = plan_with(&status, &nodes());
    assert!(
        !p.effects
            .iter()
            .any(|e| matches!(e, Effect::Replace { .. }))
    );
}

#[test]
fn endpoints_avoid_the_node_of_a_writer_whose_lease_ran_out() {
    let (spec, mut status, mut members) = running();
    // db-1 (node-a) was writer in epoch 1 and went silent; db-2 (node-b) is writer of epoch 2.
    let old = members.get_mut("db-1").unwrap();
    old.lease_silence = LEASE * 3;
    status.writer = "db-2".into();
    status.endpoints = Some(DbEndpoints {
        node: "node-a".into(),
        ..Default::default()
    });
    let e = endpoints(&spec, &status, &members, &nodes(), LEASE);
    assert_eq!(
        e.node, "node-c",
        "not the writer's node, nor the silent agent's"
    );
    // A writer whose lease is renewed does not count as silent.
    members.get_mut("db-1").unwrap().lease_silence = Duration::ZERO;
    let e = endpoints(&spec, &status, &members, &nodes(), LEASE);
    assert_eq!(e.node, "node-a");
}

fn wanted_backtrack() -> DbBacktrack {
    DbBacktrack {
        target_time: Some(pbjson_types::Timestamp {
            seconds: 1_704_067_000,
            nanos: 0,
        }),
        snapshot: "db-20240101-0000".into(),
        snapshot_path: "snapshots/db-20240101-0000-x".into(),
        wal_path: "wal/db-x".into(),
        timeline: 1,
        request: "2024-01-01T00:00:00Z@r1".into(),
        ..Default::default()
    }
}

#[test]
fn a_backtrack_is_a_new_epoch_of_the_same_writer_that_ends_when_it_reports_it() {
    let (spec, mut status, mut members) = running();
    status.latest_restorable_time = Some(pbjson_types::Timestamp {
        seconds: 1_704_067_100,
        nanos: 0,
    });
    // The writer's timeline is noted first.
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.timelines.len(), 1);
    assert_eq!(
        (p.status.timelines[0].timeline, p.status.timelines[0].epoch),
        (1, 1)
    );
    let status = p.status;
    let request = "2024-01-01T00:00:00Z@r1";
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some((request, Ok(wanted_backtrack()))),
    );
    let st = &p.status;
    assert_eq!(
        (st.epoch, st.writer.as_str(), st.phase.as_str()),
        (2, "db-1", PHASE_BACKTRACKING)
    );
    let b = st.backtrack.clone().unwrap();
    assert_eq!((b.epoch, b.started_at), (2, Some(timestamp(at()))));
    assert!(st.sync_standbys.is_empty(), "{:?}", st.sync_standbys);
    assert_eq!(st.backtrack_handled, request);
    assert!(st.failover.is_none());
    // The history it leaves is archived as far as the cluster says.
    assert_eq!(
        st.timelines[0].archived_until,
        status.latest_restorable_time
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.reason == "BacktrackStarted" && !e.warning)
    );

    // Its PostgreSQL is stopped for the restore, its standbys stop too: no failover, no
    // restart, whatever the lease says; the request is not redone.
    let mut during = members.clone();
    fail_writer(&mut during);
    for s in ["db-2", "db-3"] {
        let m = during.get_mut(s).unwrap();
        m.role.clear();
        m.state = STATE_STOPPED.into();
        m.streaming = false;
        m.vote = None;
    }
    during.get_mut("db-1").unwrap().lease_silence = Duration::from_secs(60);
    let p2 = run_backtracking(
        &spec,
        &p.status,
        &during,
        Some((request, Ok(wanted_backtrack()))),
    );
    assert_eq!(
        (p2.status.epoch, p2.status.phase.as_str()),
        (2, PHASE_BACKTRACKING)
    );
    assert!(p2.status.failover.is_none());
    assert!(p2.events.is_empty(), "{:?}", p2.events);

    // The writer reports epoch 2 on its new timeline: done.
    let w = members.get_mut("db-1").unwrap();
    w.epoch = 2;
    w.lease_epoch = 2;
    w.timeline = 3;
    let p3 = run(&spec, &p2.status, &members, None);
    let st = &p3.status;
    assert_eq!(st.phase, PHASE_AVAILABLE);
    assert!(st.backtrack.is_none());
    assert_eq!(st.backtracked_to, b.target_time);
    assert_eq!(st.last_backtrack_time, Some(timestamp(at())));
    let last = st.timelines.last().unwrap();
    assert_eq!(
        (last.timeline, last.epoch, last.since, last.backtracked_to),
        (3, 2, b.started_at, b.target_time)
    );
    assert_eq!(st.timelines.len(), 2);
    assert!(p3.events.iter().any(|e| e.reason == "BacktrackCompleted"));
    // Standbys rebuilt at epoch 2 join the synchronous set again.
    for s in ["db-2", "db-3"] {
        let m = members.get_mut(s).unwrap();
        m.epoch = 2;
        m.receive_lsn = 1000;
    }
    let p4 = run(&spec, &p3.status, &members, None);
    assert_eq!(p4.status.sync_standbys, ["db-2", "db-3"]);
    assert_eq!(p4.status.timelines.len(), 2);
}

fn run_cancelling(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    cancel: Option<&str>,
) -> Plan {
    run_asked(
        spec,
        status,
        members,
        Asks {
            backtrack_cancel: cancel,
            ..Asks::default()
        },
    )
}

/// The cluster of `running()` backtracking in epoch 2: the writer stopped for its restore,
/// still reporting epoch 1, the standbys stopped.
fn backtracking_cluster() -> (DbClusterSpec, DbClusterStatus, BTreeMap<String, Member>) {
    let (spec, mut status, mut members) = running();
    status.latest_restorable_time = Some(pbjson_types::Timestamp {
        seconds: 1_704_067_100,
        nanos: 0,
    });
    let status = run(&spec, &status, &members, None).status;
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some(("2024-01-01T00:00:00Z@r1", Ok(wanted_backtrack()))),
    );
    fail_writer(&mut members);
    let w = members.get_mut("db-1").unwrap();
    w.state = hanul_proto::db::STATE_BACKTRACKING.into();
    for s in ["db-2", "db-3"] {
        let m = members.get_mut(s).unwrap();
        m.role.clear();
        m.state = STATE_STOPPED.into();
        m.streaming = false;
    }
    (spec, p.status, members)
}

#[test]
fn a_failing_backtrack_says_so_in_its_status_and_in_events_that_do_not_flood() {
    let (spec, mut status, mut members) = backtracking_cluster();
    let mut warned = Vec::new();
    for n in 1..=9u32 {
        let w = members.get_mut("db-1").unwrap();
        w.backtrack_failures = n;
        w.message = format!("backtracking to ... failed (attempt {n}: WAL missing); trying again");
        let p = run(&spec, &status, &members, None);
        let b = p.status.backtrack.clone().unwrap();
        assert_eq!((b.failures, b.epoch), (n, 2));
        assert!(b.error.contains(&format!("attempt {n}")), "{}", b.error);
        assert_eq!(p.status.phase, PHASE_BACKTRACKING);
        for e in &p.events {
            assert_eq!(e.reason, "BacktrackFailed");
            assert!(e.warning);
            assert!(e.message.contains("--cancel"), "{}", e.message);
            warned.push(n);
        }
        // The same report again says nothing new.
        let again = run(&spec, &p.status, &members, None);
        assert!(again.events.is_empty(), "{:?}", again.events);
        assert_eq!(again.status, p.status);
        status = p.status;
    }
    assert_eq!(warned, [1, 2, 4, 8]);
    // An agent restarted counts from 1 again: nothing goes back.
    members.get_mut("db-1").unwrap().backtrack_failures = 1;
    let p = run(&spec, &status, &members, None);
    assert_eq!(p.status.backtrack.unwrap().failures, 9);
}

#[test]
fn a_cancelled_backtrack_restarts_the_same_writer_in_a_new_epoch_and_leaves_no_trace() {
    let (spec, status, mut members) = backtracking_cluster();
    let before = status.clone();
    // Asked: noted once in the backtrack, which goes on until the writer's agent says its
    // data from before is back.
    let p = run_cancelling(&spec, &status, &members, Some("c1"));
    let st = &p.status;
    assert_eq!(st.backtrack_cancel_handled, "c1");
    let b = st.backtrack.clone().unwrap();
    assert_eq!(b.cancel_requested_at, Some(timestamp(at())));
    assert_eq!((st.epoch, st.phase.as_str()), (2, PHASE_BACKTRACKING));
    assert_eq!(
        p.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["BacktrackCancelling"]
    );
    let again = run_cancelling(&spec, &p.status, &members, Some("c1"));
    assert!(again.events.is_empty(), "{:?}", again.events);
    // The writer put its data back: epoch 3, the same writer, the old timeline live again.
    let w = members.get_mut("db-1").unwrap();
    w.backtrack_cancelled = 2;
    w.state = STATE_STOPPED.into();
    let p = run_cancelling(&spec, &p.status, &members, Some("c1"));
    let st = &p.status;
    assert!(st.backtrack.is_none());
    assert_eq!(
        (st.epoch, st.writer.as_str(), st.phase.as_str()),
        (3, "db-1", PHASE_REBOOTING)
    );
    assert_eq!(
        p.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["BacktrackCancelled"]
    );
    assert_eq!(st.timelines.len(), 1);
    assert_eq!(st.timelines[0].archived_until, None);
    assert_eq!((st.backtracked_to, st.last_backtrack_time), (None, None));
    assert!(st.failover.is_none());
    // Restarting: no failover, no "restarted in place" of its old epoch, meanwhile.
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(
        (p.status.epoch, p.status.phase.as_str()),
        (3, PHASE_REBOOTING)
    );
    assert!(p.events.is_empty(), "{:?}", p.events);
    // Up in epoch 3 on its old timeline: available, nothing noted as backtracked; the
    // standbys that rejoin it join the synchronous set again.
    let w = members.get_mut("db-1").unwrap();
    w.role = ROLE_WRITER.into();
    w.state = STATE_AVAILABLE.into();
    w.epoch = 3;
    w.lease_epoch = 3;
    for s in ["db-2", "db-3"] {
        let m = members.get_mut(s).unwrap();
        m.role = ROLE_STANDBY.into();
        m.state = STATE_AVAILABLE.into();
        m.streaming = true;
        m.epoch = 3;
        m.receive_lsn = 1000;
    }
    let p = run(&spec, &p.status, &members, None);
    let st = &p.status;
    assert_eq!(st.phase, PHASE_AVAILABLE);
    assert_eq!(st.timelines, {
        let mut t = before.timelines.clone();
        t[0].archived_until = None;
        t
    });
    assert_eq!(st.sync_standbys, ["db-2", "db-3"]);
    assert_eq!(st.backtracked_to, None);
}

#[test]
fn a_cancel_is_refused_without_a_backtrack_or_once_the_writer_has_restored() {
    let (spec, status, members) = running();
    let p = run_cancelling(&spec, &status, &members, Some("c1"));
    assert_eq!(p.status.backtrack_cancel_handled, "c1");
    assert_eq!(p.status.epoch, 1);
    assert_eq!(
        p.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["BacktrackCancelRefused"]
    );
    assert!(p.events[0].message.contains("no backtrack is under way"));

    // Restored and promoted before the cancel is read: the backtrack completes, the cancel
    // is refused as too late.
    let (spec, status, mut members) = backtracking_cluster();
    let w = members.get_mut("db-1").unwrap();
    w.role = ROLE_WRITER.into();
    w.state = STATE_AVAILABLE.into();
    w.epoch = 2;
    w.timeline = 3;
    let p = run_cancelling(&spec, &status, &members, Some("c1"));
    assert!(p.status.backtrack.is_none());
    assert_eq!(p.status.epoch, 2);
    assert!(p.status.backtracked_to.is_some());
    let reasons: Vec<_> = p.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["BacktrackCancelRefused", "BacktrackCompleted"]);
    assert!(p.events[0].message.contains("already restored"));

    // Asked while an attempt was under way that then completed: completed, and said too late.
    let (spec, status, mut members) = backtracking_cluster();
    let p = run_cancelling(&spec, &status, &members, Some("c1"));
    let w = members.get_mut("db-1").unwrap();
    w.role = ROLE_WRITER.into();
    w.state = STATE_AVAILABLE.into();
    w.epoch = 2;
    w.timeline = 3;
    let p = run_cancelling(&spec, &p.status, &members, Some("c1"));
    assert!(p.status.backtrack.is_none());
    assert_eq!(p.status.epoch, 2);
    let reasons: Vec<_> = p.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["BacktrackCancelRefused", "BacktrackCompleted"]);
}

#[test]
fn a_backtrack_is_refused_once_with_a_warning_when_it_cannot_be_done() {
    let (spec, status, mut members) = running();
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some(("x@r1", Err("backtrack time x is in the future".into()))),
    );
    assert_eq!(
        (p.status.epoch, p.status.phase.as_str()),
        (1, PHASE_AVAILABLE)
    );
    assert_eq!(p.status.backtrack_handled, "x@r1");
    assert_eq!(
        p.status.backtrack_refused,
        "backtrack time x is in the future"
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "BacktrackRefused" && e.message.contains("future"))
    );
    // The writer down (a failover follows): refused, even if the window allows it.
    fail_writer(&mut members);
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some(("t@r2", Ok(wanted_backtrack()))),
    );
    assert!(p.status.backtrack.is_none());
    assert_eq!(p.status.backtrack_refused, "the writer is not available");
    // A failover under way: the request waits for it to end.
    let (_, mut status, members) = running();
    status.failover = Some(DbFailover {
        epoch: 2,
        from: "db-1".into(),
        reason: REASON_SWITCHOVER.into(),
        ..Default::default()
    });
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some(("t@r3", Ok(wanted_backtrack()))),
    );
    assert_eq!(p.status.backtrack_handled, "");
    assert!(p.status.backtrack.is_none());
}

/// Found by the simulation: a writer whose PostgreSQL stopped right after its restore, before
/// the controller saw it as writer of the new epoch, ends the backtrack (its failure is then
/// any writer's) and its timeline is noted once it reports it.
#[test]
fn a_backtrack_whose_writer_stops_right_after_its_restore_ends_and_notes_the_timeline_later() {
    let (spec, status, mut members) = running();
    let p = run_backtracking(
        &spec,
        &status,
        &members,
        Some(("t@r1", Ok(wanted_backtrack()))),
    );
    let w = members.get_mut("db-1").unwrap();
    w.epoch = 2;
    w.role.clear();
    w.state = STATE_FAILED.into();
    let p = run(&spec, &p.status, &members, None);
    assert!(p.status.backtrack.is_none());
    let last = p.status.timelines.last().cloned().unwrap();
    assert_eq!((last.timeline, last.epoch), (0, 2));
    assert!(last.backtracked_to.is_some());
    // Then handled as any writer's failure (no standby in the set yet: a restart in place,
    // epoch 3); once it reports its timeline, it is noted on the backtrack's entry.
    let p = run(&spec, &p.status, &members, None);
    assert_eq!(p.status.epoch, 3, "{:?}", p.events);
    let w = members.get_mut("db-1").unwrap();
    w.epoch = 3;
    w.lease_epoch = 3;
    w.role = ROLE_WRITER.into();
    w.state = STATE_AVAILABLE.into();
    w.timeline = 4;
    let p = run(&spec, &p.status, &members, None);
    let last = p.status.timelines.last().cloned().unwrap();
    assert_eq!((last.timeline, last.epoch), (4, 2));
    assert!(last.backtracked_to.is_some());
}

fn node_with(name: &str, zone: &str, cpu: i64, mem_mib: i64) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        zone: zone.into(),
        address: "127.0.0.1".into(),
        ready: true,
        free: Free { cpu, mem: mem_mib },
        clone_source: false,
    }
}

fn plan_on(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    nodes: &[NodeInfo],
) -> Plan {
    plan_asked(spec, status, members, nodes, Asks::default())
}

fn created(p: &Plan) -> Vec<(String, String)> {
    p.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Create { name, node, .. } => Some((name.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

fn large(deployment: &str, replicas: u32) -> DbClusterSpec {
    DbClusterSpec {
        instance_class: "db.m5.large".into(),
        ..spec(deployment, replicas)
    }
}

#[test]
fn a_member_goes_only_to_a_node_of_its_zone_where_its_class_fits() {
    let nodes = vec![
        node_with("node-a", "az-a", 2000, 8192),
        // Fewer members of the cluster, by name first, but 1 vCPU and 2 GiB free.
        node_with("node-b1", "az-b", 1000, 2048),
        node_with("node-b2", "az-b", 4000, 8192),
        node_with("node-c", "az-c", 8000, 32768),
    ];
    let p = plan_on(
        &large(MULTI_AZ_CLUSTER, 0),
        &DbClusterStatus::default(),
        &BTreeMap::new(),
        &nodes,
    );
    assert_eq!(
        created(&p),
        vec![
            ("db-1".into(), "node-a".into()),
            ("db-2".into(), "node-b2".into()),
            ("db-3".into(), "node-c".into()),
        ]
    );
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert!(
        conditions::find(&p.status.conditions, CONDITION_MEMBERS_PLACED).is_none(),
        "a cluster that never lacked room has no condition: {:?}",
        p.status.conditions
    );
}

#[test]
fn a_member_that_fits_nowhere_in_its_zone_is_not_created_and_the_cluster_says_why_once() {
    let mut nodes = vec![
        node_with("node-a", "az-a", 2000, 8192),
        node_with("node-b1", "az-b", 1000, 2048),
        node_with("node-c", "az-c", 2000, 8192),
    ];
    let spec = large(MULTI_AZ_CLUSTER, 0);
    let p = plan_on(&spec, &DbClusterStatus::default(), &BTreeMap::new(), &nodes);
    assert_eq!(
        created(&p),
        vec![
            ("db-1".into(), "node-a".into()),
            ("db-3".into(), "node-c".into()),
        ]
    );
    let why = "Cannot place DB instance db-2 in zone az-b: no Ready node has room for \
               db.m5.large (2 vCPUs, 8 GiB); node-b1 has 1 vCPU and 2 GiB free";
    assert_eq!(
        p.events,
        vec![Event {
            warning: true,
            reason: EVENT_FAILED_SCHEDULING,
            message: why.into(),
        }]
    );
    let c = conditions::find(&p.status.conditions, CONDITION_MEMBERS_PLACED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        (conditions::FALSE, REASON_INSUFFICIENT_CAPACITY, why)
    );
    // The writer exists: the cluster starts without the member that has no room.
    assert_eq!(p.status.writer, "db-1");

    // Looked at again (the members created meanwhile): still no room, no second event.
    let mut members = BTreeMap::new();
    members.insert("db-1".to_owned(), member(ROLE_WRITER, "node-a"));
    members.insert("db-3".to_owned(), member(ROLE_STANDBY, "node-c"));
    let again = plan_on(&spec, &p.status, &members, &nodes);
    assert!(created(&again).is_empty());
    assert!(again.events.is_empty(), "{:?}", again.events);

    // Room on the node (an instance went away): the member is placed, the condition clears.
    nodes[1].free = Free {
        cpu: 2000,
        mem: 8192,
    };
    let placed = plan_on(&spec, &again.status, &members, &nodes);
    assert_eq!(created(&placed), vec![("db-2".into(), "node-b1".into())]);
    assert!(placed.events.is_empty(), "{:?}", placed.events);
    let c = conditions::find(&placed.status.conditions, CONDITION_MEMBERS_PLACED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (conditions::TRUE, REASON_MEMBERS_PLACED)
    );
}

#[test]
fn members_placed_in_the_same_plan_count_against_their_node() {
    // A writer and a read replica both in az-a, room there for one db.m5.large.
    let spec = DbClusterSpec {
        zones: vec!["az-a".into()],
        ..large(SINGLE_AZ, 1)
    };
    let nodes = vec![node_with("node-a", "az-a", 3000, 12288)];
    let p = plan_on(&spec, &DbClusterStatus::default(), &BTreeMap::new(), &nodes);
    assert_eq!(created(&p), vec![("db-1".into(), "node-a".into())]);
    assert_eq!(
        p.events[0].message,
        "Cannot place DB instance db-2 in zone az-a: no Ready node has room for db.m5.large \
         (2 vCPUs, 8 GiB); node-a has 1 vCPU and 4 GiB free"
    );
}

#[test]
fn among_nodes_with_room_the_one_with_the_fewest_members_of_the_cluster_wins() {
    let spec = DbClusterSpec {
        zones: vec!["az-a".into()],
        ..spec(SINGLE_AZ, 1)
    };
    let mut members = BTreeMap::new();
    members.insert("db-1".to_owned(), member(ROLE_WRITER, "node-a1"));
    let roomy = |name: &str| node_with(name, "az-a", 8000, 16384);
    // node-a1 holds the writer: the replica goes to node-a2.
    let nodes = vec![roomy("node-a1"), roomy("node-a2")];
    let p = plan_on(&spec, &DbClusterStatus::default(), &members, &nodes);
    assert_eq!(created(&p), vec![("db-2".into(), "node-a2".into())]);
    // Unless node-a2 has no room: then beside the writer.
    let nodes = vec![roomy("node-a1"), node_with("node-a2", "az-a", 1500, 16384)];
    let p = plan_on(&spec, &DbClusterStatus::default(), &members, &nodes);
    assert_eq!(created(&p), vec![("db-2".into(), "node-a1".into())]);
}

#[test]
fn a_refusal_names_nodes_that_are_not_ready_and_zones_without_nodes() {
    let spec = DbClusterSpec {
        zones: vec!["az-a".into(), "az-d".into()],
        ..spec(MULTI_AZ_INSTANCE, 0)
    };
    let mut down = node_with("node-a", "az-a", 8000, 16384);
    down.ready = false;
    let p = plan_on(
        &spec,
        &DbClusterStatus::default(),
        &BTreeMap::new(),
        &[down],
    );
    assert!(created(&p).is_empty());
    let messages: Vec<&str> = p.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "Cannot place DB instance db-1 in zone az-a: no Ready node has room for \
             db.t3.micro (2 vCPUs, 1 GiB); node-a is not Ready",
            "Cannot place DB instance db-2 in zone az-d: no Ready node has room for \
             db.t3.micro (2 vCPUs, 1 GiB); zone az-d has no nodes",
        ]
    );
    assert_eq!(p.status.epoch, 0, "no writer before its member exists");
}

#[test]
fn members_already_placed_stay_on_a_node_that_is_over_committed() {
    let (spec, status, members) = running();
    let nodes: Vec<NodeInfo> = ["a", "b", "c"]
        .iter()
        .map(|z| node_with(&format!("node-{z}"), &format!("az-{z}"), -2000, -1024))
        .collect();
    let p = plan_on(&spec, &status, &members, &nodes);
    assert!(p.effects.is_empty(), "{:?}", p.effects);
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert!(conditions::find(&p.status.conditions, CONDITION_MEMBERS_PLACED).is_none());
}

#[test]
fn free_room_is_shown_in_whole_or_fractional_units() {
    assert_eq!(vcpus(1000), "1 vCPU");
    assert_eq!(vcpus(2000), "2 vCPUs");
    assert_eq!(vcpus(500), "0.5 vCPUs");
    assert_eq!(vcpus(-1000), "0 vCPUs");
    assert_eq!(memory(512), "512 MiB");
    assert_eq!(memory(8192), "8 GiB");
    assert_eq!(memory(1536), "1.5 GiB");
    assert_eq!(memory(-5), "0 MiB");
}

#[test]
fn a_clones_writer_goes_beside_a_member_of_its_source_where_it_fits() {
    let source_here = |mut n: NodeInfo| {
        n.clone_source = true;
        n
    };
    // az-a: a1 would win by name; a2 runs a member of the source; a3 too but has no room.
    let nodes = vec![
        node_with("node-a1", "az-a", 4000, 16384),
        source_here(node_with("node-a2", "az-a", 4000, 16384)),
        source_here(node_with("node-a3", "az-a", 1000, 2048)),
        node_with("node-b1", "az-b", 4000, 16384),
        source_here(node_with("node-b2", "az-b", 4000, 16384)),
    ];
    let spec = DbClusterSpec {
        zones: vec!["az-a".into(), "az-b".into()],
        ..large(MULTI_AZ_INSTANCE, 0)
    };
    let p = plan_on(&spec, &DbClusterStatus::default(), &BTreeMap::new(), &nodes);
    assert_eq!(
        created(&p),
        vec![
            // The writer beside the source, so that its agent copies it on the node.
            ("db-1".into(), "node-a2".into()),
            // A standby copies the writer over the network anyway: no preference.
            ("db-2".into(), "node-b1".into()),
        ]
    );
    // Where no source member runs in the zone, the usual choice.
    let nodes: Vec<NodeInfo> = nodes.into_iter().filter(|n| n.name != "node-a2").collect();
    let p = plan_on(&spec, &DbClusterStatus::default(), &BTreeMap::new(), &nodes);
    assert_eq!(created(&p)[0], ("db-1".into(), "node-a1".into()));
}
