use super::*;
use hanul_proto::db::{MULTI_AZ_CLUSTER, ROLE_STANDBY, SNAPSHOT_MANUAL};
use hanul_proto::v1::{BackupSettings, DbClusterSource};

/// 2026-11-27 00:00:00 UTC.
const MIDNIGHT: i64 = 1_795_737_600;
const H: i64 = 3600;

fn member(spec_role: &str, role: &str, node: &str) -> Member {
    Member {
        spec_role: spec_role.into(),
        role: role.into(),
        node: node.into(),
        state: STATE_AVAILABLE.into(),
        epoch: 1,
        streaming: role == ROLE_STANDBY,
        ..Default::default()
    }
}

fn cluster() -> (DbClusterSpec, DbClusterStatus, BTreeMap<String, Member>) {
    let spec = DbClusterSpec {
        deployment: MULTI_AZ_CLUSTER.into(),
        backup: Some(BackupSettings {
            retention_days: Some(7),
            preferred_window: "03:00-03:30".into(),
        }),
        ..Default::default()
    };
    let status = DbClusterStatus {
        epoch: 1,
        writer: "db-1".into(),
        ..Default::default()
    };
    let members = [
        ("db-1", member(ROLE_WRITER, ROLE_WRITER, "node-a")),
        ("db-2", member(ROLE_STANDBY, ROLE_STANDBY, "node-b")),
        ("db-3", member(ROLE_REPLICA, ROLE_STANDBY, "node-c")),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_string(), m))
    .collect();
    (spec, status, members)
}

fn auto(name: &str, created: i64, phase: &str) -> Snapshot {
    Snapshot {
        name: name.into(),
        automated: true,
        phase: phase.into(),
        member: "db-2".into(),
        cluster_uid: "uid-1".into(),
        created,
        complete: (phase == SNAPSHOT_AVAILABLE).then_some(created + 60),
        path: format!("snapshots/{name}-x"),
        ..Default::default()
    }
}

fn run(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    members: &BTreeMap<String, Member>,
    snapshots: &[Snapshot],
    now: i64,
) -> Plan {
    plan(&Input {
        cluster: "db",
        uid: "uid-1",
        spec,
        status,
        members,
        snapshots,
        now,
    })
}

#[test]
fn windows_open_daily_and_may_cross_midnight() {
    let w = "03:00-03:30";
    assert_eq!(
        window_at(w, MIDNIGHT + 3 * H + 600),
        (MIDNIGHT + 3 * H, true)
    );
    assert_eq!(window_at(w, MIDNIGHT + 4 * H), (MIDNIGHT + 3 * H, false));
    assert_eq!(
        window_at(w, MIDNIGHT + 2 * H),
        (MIDNIGHT + 3 * H - DAY, false)
    );
    let late = "23:45-00:30";
    assert_eq!(
        window_at(late, MIDNIGHT + 600),
        (MIDNIGHT - 15 * 60, true),
        "ten past midnight is in yesterday's window"
    );
    assert_eq!(
        automated_name("orders", MIDNIGHT + 3 * H + 5 * 60),
        "orders-20261127-0305"
    );
}

#[test]
fn the_first_automated_snapshot_is_taken_once_the_writer_is_available() {
    let (spec, mut status, mut members) = cluster();
    let now = MIDNIGHT + 10 * H;
    let p = run(&spec, &status, &members, &[], now);
    assert_eq!(
        p.effects,
        vec![Effect::Create {
            name: "db-20261127-1000".into()
        }]
    );
    // Not while there is no writer to take it from.
    members.get_mut("db-1").unwrap().state = "creating".into();
    status.writer = "db-1".into();
    assert!(run(&spec, &status, &members, &[], now).effects.is_empty());
}

#[test]
fn a_daily_snapshot_is_taken_in_the_window_only() {
    let (spec, status, members) = cluster();
    let yesterday = auto("db-a", MIDNIGHT - 20 * H, SNAPSHOT_AVAILABLE);
    let snaps = [yesterday.clone()];
    // Outside the window: nothing.
    assert!(
        run(&spec, &status, &members, &snaps, MIDNIGHT + 10 * H)
            .effects
            .is_empty()
    );
    // In the window: one.
    let p = run(&spec, &status, &members, &snaps, MIDNIGHT + 3 * H + 60);
    assert_eq!(
        p.effects,
        vec![Effect::Create {
            name: "db-20261127-0301".into()
        }]
    );
    // Taken already in this window: no second one.
    let today = auto("db-b", MIDNIGHT + 3 * H + 60, SNAPSHOT_CREATING);
    let p = run(
        &spec,
        &status,
        &members,
        &[yesterday, today],
        MIDNIGHT + 3 * H + 600,
    );
    assert!(
        p.effects
            .iter()
            .all(|e| !matches!(e, Effect::Create { .. })),
        "{:?}",
        p.effects
    );
}

#[test]
fn a_failed_automated_snapshot_is_retried_after_a_pause() {
    let (spec, status, members) = cluster();
    let failed = auto("db-a", MIDNIGHT + 10 * H, SNAPSHOT_FAILED);
    let snaps = [failed];
    assert!(
        run(&spec, &status, &members, &snaps, MIDNIGHT + 10 * H + 60)
            .effects
            .is_empty()
    );
    let p = run(
        &spec,
        &status,
        &members,
        &snaps,
        MIDNIGHT + 10 * H + RETRY_FAILED,
    );
    assert!(matches!(p.effects.as_slice(), [Effect::Create { .. }]));
}

#[test]
fn snapshots_past_retention_go_but_the_newest_stays() {
    let (mut spec, status, members) = cluster();
    let now = MIDNIGHT + 10 * H;
    let old = auto("db-old", now - 9 * DAY, SNAPSHOT_AVAILABLE);
    let mid = auto("db-mid", now - 2 * DAY, SNAPSHOT_AVAILABLE);
    let manual = Snapshot {
        automated: false,
        ..auto("mine", now - 30 * DAY, SNAPSHOT_AVAILABLE)
    };
    let snaps = [old.clone(), mid.clone(), manual.clone()];
    let p = run(&spec, &status, &members, &snaps, now);
    assert_eq!(
        p.effects,
        vec![Effect::Delete {
            name: "db-old".into()
        }]
    );
    assert_eq!(p.earliest_restorable_time, Some(ts(mid.complete.unwrap())));
    assert_eq!(p.last_backup_time, Some(ts(mid.complete.unwrap())));
    // Only an old one left: it stays (restores start from it).
    let p = run(&spec, &status, &members, std::slice::from_ref(&old), now);
    assert!(
        p.effects
            .iter()
            .all(|e| !matches!(e, Effect::Delete { .. }))
    );
    // Retention 0: automated snapshots go, manual ones stay, none is taken.
    spec.backup.as_mut().unwrap().retention_days = Some(0);
    let p = run(&spec, &status, &members, &snaps, now);
    assert_eq!(
        p.effects,
        vec![
            Effect::Delete {
                name: "db-old".into()
            },
            Effect::Delete {
                name: "db-mid".into()
            }
        ]
    );
    assert_eq!(p.earliest_restorable_time, None);
}

#[test]
fn snapshots_are_taken_from_a_streaming_standby_and_move_when_it_is_lost() {
    let (spec, status, mut members) = cluster();
    let now = MIDNIGHT + 10 * H;
    let pending = Snapshot {
        name: "mine".into(),
        phase: String::new(),
        ..Default::default()
    };
    let p = run(
        &spec,
        &status,
        &members,
        std::slice::from_ref(&pending),
        now,
    );
    assert!(p.effects.contains(&Effect::Assign {
        name: "mine".into(),
        member: "db-2".into(),
        node: "node-b".into()
    }));
    // Assigned to db-2, which fails: the read replica takes over; with no standby, the writer.
    let assigned = Snapshot {
        member: "db-2".into(),
        phase: SNAPSHOT_CREATING.into(),
        ..pending
    };
    let p = run(
        &spec,
        &status,
        &members,
        std::slice::from_ref(&assigned),
        now,
    );
    assert!(
        p.effects
            .iter()
            .all(|e| !matches!(e, Effect::Assign { .. }))
    );
    assert!(p.backing_up);
    let db2 = members.get_mut("db-2").unwrap();
    db2.role.clear();
    db2.state = "failed".into();
    let p = run(
        &spec,
        &status,
        &members,
        std::slice::from_ref(&assigned),
        now,
    );
    assert!(p.effects.contains(&Effect::Assign {
        name: "mine".into(),
        member: "db-3".into(),
        node: "node-c".into()
    }));
    members.remove("db-3");
    let p = run(&spec, &status, &members, &[assigned], now);
    assert!(p.effects.contains(&Effect::Assign {
        name: "mine".into(),
        member: "db-1".into(),
        node: "node-a".into()
    }));
}

#[test]
fn the_latest_restorable_time_only_moves_forward() {
    let (spec, mut status, mut members) = cluster();
    let snaps = [auto("db-a", MIDNIGHT, SNAPSHOT_AVAILABLE)];
    members.get_mut("db-1").unwrap().latest_restorable_time = Some(ts(MIDNIGHT + 100));
    let p = run(&spec, &status, &members, &snaps, MIDNIGHT + 200);
    assert_eq!(p.latest_restorable_time, Some(ts(MIDNIGHT + 100)));
    // A new writer that has archived less so far: the cluster's stays.
    status.latest_restorable_time = Some(ts(MIDNIGHT + 150));
    let p = run(&spec, &status, &members, &snaps, MIDNIGHT + 200);
    assert_eq!(p.latest_restorable_time, Some(ts(MIDNIGHT + 150)));
}

fn source_spec(source: DbClusterSource) -> DbClusterSpec {
    DbClusterSpec {
        source: Some(source),
        ..Default::default()
    }
}

#[test]
fn a_snapshot_source_must_be_available() {
    let spec = source_spec(DbClusterSource {
        snapshot: "mine".into(),
        ..Default::default()
    });
    assert!(
        resolve_restore(&spec, None, None)
            .error
            .contains("not found")
    );
    let creating = Snapshot {
        name: "mine".into(),
        phase: SNAPSHOT_CREATING.into(),
        r#automated: false,
        ..Default::default()
    };
    assert!(
        resolve_restore(&spec, Some(&creating), None)
            .error
            .contains("not available")
    );
    let ready = Snapshot {
        phase: SNAPSHOT_AVAILABLE.into(),
        path: "snapshots/mine-1234".into(),
        ..creating
    };
    let r = resolve_restore(&spec, Some(&ready), None);
    assert_eq!(r.error, "");
    assert_eq!(r.snapshot_path, "snapshots/mine-1234");
    assert_eq!(r.wal_path, "");
    assert_eq!(SNAPSHOT_MANUAL, "manual");
}

#[test]
fn a_point_in_time_restore_starts_from_the_newest_snapshot_before_the_time() {
    let snaps = [
        auto("db-a", MIDNIGHT, SNAPSHOT_AVAILABLE),
        auto("db-b", MIDNIGHT + DAY, SNAPSHOT_AVAILABLE),
        auto("db-c", MIDNIGHT + 2 * DAY, SNAPSHOT_CREATING),
    ];
    let status = DbClusterStatus {
        earliest_restorable_time: Some(ts(MIDNIGHT + 60)),
        latest_restorable_time: Some(ts(MIDNIGHT + 2 * DAY + 100)),
        ..Default::default()
    };
    let source = SourceCluster {
        name: "db",
        uid: "uid-1",
        status: &status,
        snapshots: &snaps,
        master_username: "",
        backup_encrypted: false,
    };
    let at = |t: i64| {
        source_spec(DbClusterSource {
            cluster: "db".into(),
            restore_time: Some(ts(t)),
            ..Default::default()
        })
    };
    let r = resolve_restore(&at(MIDNIGHT + DAY + 3600), None, Some(&source));
    assert_eq!(r.error, "");
    assert_eq!(r.snapshot, "db-b");
    assert_eq!(r.wal_path, "wal/db-uid-1");
    assert_eq!(r.target_time, Some(ts(MIDNIGHT + DAY + 3600)));
    // Between a snapshot's start and its completion: the one before.
    let r = resolve_restore(&at(MIDNIGHT + DAY + 30), None, Some(&source));
    assert_eq!(r.snapshot, "db-a");
    let r = resolve_restore(&at(MIDNIGHT + 10), None, Some(&source));
    assert!(
        r.error.contains("before the earliest restorable time"),
        "{}",
        r.error
    );
    let r = resolve_restore(&at(MIDNIGHT + 3 * DAY), None, Some(&source));
    assert!(
        r.error.contains("after the latest restorable time"),
        "{}",
        r.error
    );
    let latest = source_spec(DbClusterSource {
        cluster: "db".into(),
        use_latest_restorable_time: true,
        ..Default::default()
    });
    let r = resolve_restore(&latest, None, Some(&source));
    assert_eq!(r.snapshot, "db-b");
    assert_eq!(r.target_time, Some(ts(MIDNIGHT + 2 * DAY + 100)));
    assert!(
        resolve_restore(&latest, None, None)
            .error
            .contains("not found")
    );
}

/// A source that was backtracked: a time between the rewind target and the backtrack is
/// restored on the old timeline, named, from a snapshot of before the target; a time after it
/// on the new one.
#[test]
fn a_point_in_time_restore_after_a_backtrack_follows_the_timeline_live_then() {
    use hanul_proto::v1::DbTimeline;
    // db-a before the target (MIDNIGHT + 1h), db-b after it on the old history, db-c after
    // the backtrack (MIDNIGHT + DAY).
    let snaps = [
        auto("db-a", MIDNIGHT, SNAPSHOT_AVAILABLE),
        auto("db-b", MIDNIGHT + 2 * H, SNAPSHOT_AVAILABLE),
        auto("db-c", MIDNIGHT + DAY + H, SNAPSHOT_AVAILABLE),
    ];
    let status = DbClusterStatus {
        earliest_restorable_time: Some(ts(MIDNIGHT + 60)),
        latest_restorable_time: Some(ts(MIDNIGHT + 2 * DAY)),
        timelines: vec![
            DbTimeline {
                timeline: 1,
                since: Some(ts(MIDNIGHT - H)),
                archived_until: Some(ts(MIDNIGHT + DAY - 10)),
                ..Default::default()
            },
            DbTimeline {
                timeline: 2,
                since: Some(ts(MIDNIGHT + DAY)),
                backtracked_to: Some(ts(MIDNIGHT + H)),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let source = SourceCluster {
        name: "db",
        uid: "uid-1",
        status: &status,
        snapshots: &snaps,
        master_username: "",
        backup_encrypted: false,
    };
    let at = |t: i64| {
        resolve_restore(
            &source_spec(DbClusterSource {
                cluster: "db".into(),
                restore_time: Some(ts(t)),
                ..Default::default()
            }),
            None,
            Some(&source),
        )
    };
    let r = at(MIDNIGHT + 3 * H);
    assert_eq!(
        (r.snapshot.as_str(), r.timeline),
        ("db-b", 1),
        "{}",
        r.error
    );
    let r = at(MIDNIGHT + DAY + 30 * 60);
    assert_eq!(
        (r.snapshot.as_str(), r.timeline),
        ("db-a", 2),
        "{}",
        r.error
    );
    let r = at(MIDNIGHT + DAY + 2 * H);
    assert_eq!(
        (r.snapshot.as_str(), r.timeline),
        ("db-c", 2),
        "{}",
        r.error
    );
    // The old history's WAL reaches only as far as it was archived.
    let r = at(MIDNIGHT + DAY - 5);
    assert!(r.error.contains("archived only up to"), "{}", r.error);
}

#[test]
fn a_clone_copies_an_available_standby_else_the_writer() {
    use hanul_proto::db::{MEMBER_SYNC_STANDBY, MEMBER_WRITER};
    use hanul_proto::v1::DbClusterMember;
    let member = |name: &str, role: &str, state: &str| DbClusterMember {
        name: name.into(),
        role: role.into(),
        state: state.into(),
        address: format!("127.0.0.1:{}", 30000 + name.len()),
        ..Default::default()
    };
    let mut status = DbClusterStatus {
        members: vec![
            member("db-1", MEMBER_WRITER, STATE_AVAILABLE),
            member("db-22", MEMBER_SYNC_STANDBY, STATE_AVAILABLE),
        ],
        ..Default::default()
    };
    let spec = source_spec(DbClusterSource {
        cluster: "db".into(),
        clone: true,
        ..Default::default()
    });
    let resolve = |status: &DbClusterStatus| {
        resolve_restore(
            &spec,
            None,
            Some(&SourceCluster {
                name: "db",
                uid: "uid-1",
                status,
                snapshots: &[],
                master_username: "",
                backup_encrypted: false,
            }),
        )
    };
    // No backups needed: a clone copies what runs.
    let r = resolve(&status);
    assert_eq!((r.error.as_str(), r.clone_member.as_str()), ("", "db-22"));
    assert_eq!(r.clone_address, "127.0.0.1:30005");
    assert_eq!(r.snapshot_path, "");
    status.members[1].state = "rejoining".into();
    assert_eq!(resolve(&status).clone_member, "db-1");
    status.members[0].state = "failed".into();
    assert!(resolve(&status).error.contains("no available member"));
}

#[test]
fn a_completed_backtrack_gets_an_automated_snapshot_at_once() {
    let (spec, mut status, members) = cluster();
    let snaps = [auto("db-a", MIDNIGHT + 3 * H, SNAPSHOT_AVAILABLE)];
    // Outside the window, a day's snapshot taken: nothing due.
    let now = MIDNIGHT + 10 * H;
    assert!(
        run(&spec, &status, &members, &snaps, now)
            .effects
            .is_empty()
    );
    status.last_backtrack_time = Some(ts(now - 60));
    let p = run(&spec, &status, &members, &snaps, now);
    assert_eq!(
        p.effects,
        [Effect::Create {
            name: automated_name("db", now)
        }]
    );
    // Once one is taken after it, no more.
    let after = [snaps[0].clone(), auto("db-b", now - 30, SNAPSHOT_CREATING)];
    let p = run(&spec, &status, &members, &after, now);
    assert!(
        !p.effects.iter().any(|e| matches!(e, Effect::Create { .. })),
        "{:?}",
        p.effects
    );
}

/// An encrypted source (a snapshot, a cluster to restore to a point in time or to clone, the
/// retained backups of a deleted one) needs an encrypted cluster: refused in
/// `status.restore.error`, naming the fields to set, before the agent would refuse it in its
/// log.
#[test]
fn an_encrypted_source_is_refused_to_a_plain_cluster_in_status() {
    use hanul_proto::db::MEMBER_WRITER;
    use hanul_proto::v1::{DbClusterMember, SecretKeyRef};
    let encrypted = |mut spec: DbClusterSpec| {
        spec.backup_encrypted = true;
        spec.backup_encryption_key_secret = Some(SecretKeyRef {
            name: "db-key".into(),
            key: "key".into(),
        });
        spec
    };
    let fields = |e: &str| {
        e.contains("is encrypted")
            && e.contains("spec.backupEncrypted")
            && e.contains("spec.backupEncryptionKeySecret")
    };
    // A snapshot.
    let spec = source_spec(DbClusterSource {
        snapshot: "mine".into(),
        ..Default::default()
    });
    let snap = Snapshot {
        name: "mine".into(),
        phase: SNAPSHOT_AVAILABLE.into(),
        path: "snapshots/mine-1234".into(),
        encrypted: true,
        ..Default::default()
    };
    let r = resolve_restore(&spec, Some(&snap), None);
    assert!(fields(&r.error), "{}", r.error);
    assert!(r.error.contains("DB snapshot mine"), "{}", r.error);
    assert_eq!(r.snapshot_path, "");
    let r = resolve_restore(&encrypted(spec.clone()), Some(&snap), None);
    assert_eq!((r.error.as_str(), r.snapshot.as_str()), ("", "mine"));
    // A plain snapshot restores into either.
    let plain = Snapshot {
        encrypted: false,
        ..snap
    };
    assert_eq!(resolve_restore(&spec, Some(&plain), None).error, "");

    // A point in time, and a clone, of an encrypted cluster.
    let snaps = [auto("db-a", MIDNIGHT, SNAPSHOT_AVAILABLE)];
    let status = DbClusterStatus {
        earliest_restorable_time: Some(ts(MIDNIGHT + 60)),
        latest_restorable_time: Some(ts(MIDNIGHT + H)),
        members: vec![DbClusterMember {
            name: "db-1".into(),
            role: MEMBER_WRITER.into(),
            state: STATE_AVAILABLE.into(),
            address: "127.0.0.1:30001".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let source = SourceCluster {
        name: "db",
        uid: "uid-1",
        status: &status,
        snapshots: &snaps,
        master_username: "",
        backup_encrypted: true,
    };
    let pitr = source_spec(DbClusterSource {
        cluster: "db".into(),
        restore_time: Some(ts(MIDNIGHT + 600)),
        ..Default::default()
    });
    let clone = source_spec(DbClusterSource {
        cluster: "db".into(),
        clone: true,
        ..Default::default()
    });
    for spec in [&pitr, &clone] {
        let r = resolve_restore(spec, None, Some(&source));
        assert!(fields(&r.error), "{}", r.error);
        assert!(r.error.contains("DB cluster db"), "{}", r.error);
        assert_eq!((r.snapshot.as_str(), r.clone_member.as_str()), ("", ""));
    }
    let r = resolve_restore(&encrypted(pitr), None, Some(&source));
    assert_eq!((r.error.as_str(), r.snapshot.as_str()), ("", "db-a"));
    let r = resolve_restore(&encrypted(clone), None, Some(&source));
    assert_eq!((r.error.as_str(), r.clone_member.as_str()), ("", "db-1"));

    // The retained backups of a deleted encrypted cluster.
    let from_record = source_spec(DbClusterSource {
        automated_backup: "db".into(),
        use_latest_restorable_time: true,
        ..Default::default()
    });
    let r = resolve_restore(&from_record, None, Some(&source));
    assert!(fields(&r.error), "{}", r.error);
    assert!(
        r.error.contains("retained automated backups db"),
        "{}",
        r.error
    );
    let r = resolve_restore(&encrypted(from_record), None, Some(&source));
    assert_eq!((r.error.as_str(), r.automated_backup.as_str()), ("", "db"));
}

/// A restore from the retained backups of a deleted cluster resolves like a point-in-time
/// restore of that cluster did: the newest snapshot complete by the time, the cluster's WAL
/// archive, the timeline live then; a time outside the window it had is refused.
#[test]
fn a_restore_from_retained_backups_uses_their_window_archive_and_timelines() {
    use hanul_proto::v1::DbTimeline;
    let snaps = [
        auto("gone-a", MIDNIGHT, SNAPSHOT_AVAILABLE),
        auto("gone-b", MIDNIGHT + DAY, SNAPSHOT_AVAILABLE),
    ];
    let status = DbClusterStatus {
        earliest_restorable_time: Some(ts(MIDNIGHT + 60)),
        latest_restorable_time: Some(ts(MIDNIGHT + DAY + 2 * H)),
        timelines: vec![DbTimeline {
            timeline: 3,
            since: Some(ts(MIDNIGHT - H)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let record = SourceCluster {
        name: "gone",
        uid: "uid-1",
        status: &status,
        snapshots: &snaps,
        master_username: "admin",
        backup_encrypted: false,
    };
    let at = |t: Option<i64>| {
        let mut spec = source_spec(DbClusterSource {
            automated_backup: "gone-uid1".into(),
            restore_time: t.map(ts),
            use_latest_restorable_time: t.is_none(),
            ..Default::default()
        });
        spec.master_username = "admin".into();
        resolve_restore(&spec, None, Some(&record))
    };
    let r = at(Some(MIDNIGHT + DAY + H));
    assert_eq!(r.error, "");
    assert_eq!(r.snapshot, "gone-b");
    assert_eq!(r.snapshot_path, "snapshots/gone-b-x");
    assert_eq!(r.wal_path, "wal/gone-uid-1");
    assert_eq!(r.timeline, 3);
    assert_eq!(r.source_cluster, "gone");
    assert_eq!(r.automated_backup, "gone-uid1");
    assert_eq!(at(Some(MIDNIGHT + 2 * H)).snapshot, "gone-a");
    assert_eq!(at(None).target_time, Some(ts(MIDNIGHT + DAY + 2 * H)));
    let r = at(Some(MIDNIGHT + DAY + 3 * H));
    assert!(
        r.error.contains(
            "after the latest restorable time of the retained automated backups gone-uid1"
        ),
        "{}",
        r.error
    );
    let r = at(Some(MIDNIGHT));
    assert!(
        r.error.contains("before the earliest restorable time"),
        "{}",
        r.error
    );
    // The record gone (expired): said so.
    let spec = source_spec(DbClusterSource {
        automated_backup: "gone-uid1".into(),
        use_latest_restorable_time: true,
        ..Default::default()
    });
    let r = resolve_restore(&spec, None, None);
    assert!(
        r.error
            .contains("DB cluster automated backup gone-uid1 not found"),
        "{}",
        r.error
    );
}
