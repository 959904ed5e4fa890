use super::*;
use hanul_proto::db::{SNAPSHOT_CREATING, SNAPSHOT_MANUAL};
use hanul_proto::v1::{BackupSettings, DbTimeline, SecretKeyRef};

/// 2026-11-27 00:00:00 UTC.
const MIDNIGHT: i64 = 1_795_737_600;

fn snap(name: &str, complete: i64, uid: &str) -> Snapshot {
    Snapshot {
        name: name.into(),
        automated: true,
        phase: SNAPSHOT_AVAILABLE.into(),
        cluster_uid: uid.into(),
        created: complete - 60,
        complete: Some(complete),
        path: format!("snapshots/{name}-x"),
        ..Default::default()
    }
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn record(retention_days: u32) -> DbClusterAutomatedBackupStatus {
    DbClusterAutomatedBackupStatus {
        status: AUTOMATED_BACKUP_RETAINED.into(),
        db_cluster: "orders".into(),
        db_cluster_resource_id: "uid-1".into(),
        retention_days,
        ..Default::default()
    }
}

#[test]
fn only_clusters_that_ask_and_keep_backups_retain_them() {
    let mut spec = DbClusterSpec::default();
    assert!(!retains(&spec), "the default deletes them, as RDS does");
    spec.delete_automated_backups = Some(false);
    assert!(retains(&spec));
    spec.backup = Some(BackupSettings {
        retention_days: Some(0),
        ..Default::default()
    });
    assert!(!retains(&spec), "no automated backups, nothing to retain");
    spec.delete_automated_backups = Some(true);
    spec.backup = None;
    assert!(!retains(&spec));
}

#[test]
fn a_record_holds_the_clusters_settings_window_and_its_available_automated_snapshots() {
    let spec = DbClusterSpec {
        master_username: "admin".into(),
        database_name: "shop".into(),
        port: Some(6000),
        backup: Some(BackupSettings {
            retention_days: Some(3),
            ..Default::default()
        }),
        backup_encrypted: true,
        backup_encryption_key_secret: Some(SecretKeyRef {
            name: "k".into(),
            key: "key".into(),
        }),
        ..Default::default()
    };
    let status = DbClusterStatus {
        timelines: vec![DbTimeline {
            timeline: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    let snapshots = [
        snap("orders-a", MIDNIGHT, "uid-1"),
        snap("orders-b", MIDNIGHT + DAY, "uid-1"),
        // Not ones to keep: manual, failed, being deleted, of an earlier cluster.
        Snapshot {
            automated: false,
            ..snap("final", MIDNIGHT + DAY, "uid-1")
        },
        Snapshot {
            phase: SNAPSHOT_CREATING.into(),
            complete: None,
            ..snap("orders-c", MIDNIGHT + 2 * DAY, "uid-1")
        },
        Snapshot {
            deleting: true,
            ..snap("orders-0", MIDNIGHT - DAY, "uid-1")
        },
        snap("orders-old", MIDNIGHT - 2 * DAY, "uid-0"),
    ];
    let s = record_status(
        "orders",
        "uid-1",
        &spec,
        &status,
        Some(ts(MIDNIGHT + DAY + 500)),
        &snapshots,
        ts(MIDNIGHT + DAY + 600),
    );
    assert_eq!(s.status, "retained");
    assert_eq!(
        (s.db_cluster.as_str(), s.db_cluster_resource_id.as_str()),
        ("orders", "uid-1")
    );
    assert_eq!(
        (s.engine.as_str(), s.engine_version.as_str()),
        ("postgres", "15")
    );
    assert_eq!(
        (
            s.master_username.as_str(),
            s.database_name.as_str(),
            s.port,
            s.storage_gib
        ),
        ("admin", "shop", 6000, 20)
    );
    assert_eq!(s.retention_days, 3);
    assert_eq!(s.encryption_key_secret.map(|k| k.name), Some("k".into()));
    assert_eq!(s.wal_path, "wal/orders-uid-1");
    assert_eq!(s.earliest_restorable_time, Some(ts(MIDNIGHT)));
    assert_eq!(s.latest_restorable_time, Some(ts(MIDNIGHT + DAY + 500)));
    assert_eq!(s.timelines, status.timelines);
    assert_eq!(s.retained_at, Some(ts(MIDNIGHT + DAY + 600)));
    assert_eq!(s.snapshots, ["orders-a", "orders-b"]);
    let _ = SNAPSHOT_MANUAL;
}

#[test]
fn retained_snapshots_expire_one_by_one_and_the_window_moves_forward() {
    let r = record(2);
    let snapshots = [
        snap("orders-a", MIDNIGHT, "uid-1"),
        snap("orders-b", MIDNIGHT + DAY, "uid-1"),
        // Another cluster's (a later one of the same name): not this record's.
        snap("orders-z", MIDNIGHT - 9 * DAY, "uid-2"),
    ];
    // Within the retention of both.
    let p = plan(&r, &snapshots, MIDNIGHT + DAY + 10);
    assert_eq!(p.delete, Vec::<String>::new());
    assert_eq!(p.earliest, Some(ts(MIDNIGHT)));
    assert_eq!(p.snapshots, ["orders-a", "orders-b"]);
    assert!(!p.expired);
    assert_eq!(p.next, Some(MIDNIGHT + 2 * DAY));
    // The oldest is past its 2 days: it goes, the window starts at the next one.
    let p = plan(&r, &snapshots, MIDNIGHT + 2 * DAY + 1);
    assert_eq!(p.delete, ["orders-a"]);
    assert_eq!(p.earliest, Some(ts(MIDNIGHT + DAY)));
    assert_eq!(p.snapshots, ["orders-b"]);
    assert!(!p.expired);
    assert_eq!(p.next, Some(MIDNIGHT + 3 * DAY));
}

#[test]
fn the_newest_retained_snapshot_expires_too_and_the_record_with_it() {
    let r = record(2);
    let snapshots = [snap("orders-b", MIDNIGHT + DAY, "uid-1")];
    // The live cluster's planner keeps its newest snapshot however old; a deleted one's goes.
    let p = plan(&r, &snapshots, MIDNIGHT + 3 * DAY + 1);
    assert_eq!(p.delete, ["orders-b"]);
    assert_eq!(p.earliest, None);
    assert!(p.expired);
    // Once it is being deleted, nothing is left either: the record goes.
    let deleting = [Snapshot {
        deleting: true,
        ..snapshots[0].clone()
    }];
    let p = plan(&r, &deleting, MIDNIGHT + DAY + 10);
    assert!(p.delete.is_empty());
    assert!(p.expired);
}

#[test]
fn a_record_names_itself_after_its_cluster_unless_an_earlier_ones_has_the_name() {
    assert_eq!(
        automated_backup_name("orders", "1a2b3c4d-5e6f", false),
        "orders"
    );
    assert_eq!(
        automated_backup_name("orders", "1a2b3c4d-5e6f", true),
        "orders-1a2b3c4d"
    );
}

#[test]
fn a_record_restores_as_its_deleted_cluster_did() {
    let o: Object = DbClusterAutomatedBackup {
        metadata: Some(ObjectMeta {
            name: "orders".into(),
            ..Default::default()
        }),
        spec: None,
        status: Some(DbClusterAutomatedBackupStatus {
            master_username: "admin".into(),
            earliest_restorable_time: Some(ts(MIDNIGHT)),
            latest_restorable_time: Some(ts(MIDNIGHT + 100)),
            encryption_key_secret: Some(SecretKeyRef {
                name: "k".into(),
                key: "key".into(),
            }),
            ..record(7)
        }),
    }
    .into();
    let (name, uid, status, user, encrypted) = as_source(&o).expect("a source");
    assert_eq!(
        (name.as_str(), uid.as_str(), user.as_str()),
        ("orders", "uid-1", "admin")
    );
    assert!(encrypted);
    assert_eq!(status.earliest_restorable_time, Some(ts(MIDNIGHT)));
    assert_eq!(status.latest_restorable_time, Some(ts(MIDNIGHT + 100)));
    // Not written yet by the cluster's controller: no source yet.
    let empty: Object = DbClusterAutomatedBackup::default().into();
    assert!(as_source(&empty).is_none());
}

mod component {
    use super::*;
    use crate::runtime::{FakeClock, ShutdownTrigger};
    use crate::testing::{TestServer, eventually};
    use hanul_proto::v1::{DbSnapshot, DbSnapshotSpec, DbSnapshotStatus};
    use std::time::SystemTime;

    const WITHIN: Duration = Duration::from_secs(10);

    fn at(seconds: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    /// A retained record of `orders` (uid-1) with 1 day of retention, and two automated
    /// snapshots under it: complete at MIDNIGHT and MIDNIGHT + 12 h.
    async fn retained(client: &Client) -> String {
        let o = client
            .create(
                DbClusterAutomatedBackup {
                    metadata: Some(ObjectMeta {
                        name: "orders".into(),
                        ..Default::default()
                    }),
                    spec: Some(DbClusterAutomatedBackupSpec {
                        db_cluster: "orders".into(),
                        db_cluster_resource_id: "uid-1".into(),
                    }),
                    status: None,
                }
                .into(),
            )
            .await
            .unwrap();
        let mut r = o.clone();
        if let Some(Resource::DbClusterAutomatedBackup(r)) = &mut r.resource {
            r.status = Some(DbClusterAutomatedBackupStatus {
                earliest_restorable_time: Some(ts(MIDNIGHT)),
                latest_restorable_time: Some(ts(MIDNIGHT + DAY)),
                snapshots: vec!["orders-a".into(), "orders-b".into()],
                ..record(1)
            });
        }
        client.update_status(r).await.unwrap();
        let uid = o.metadata().unwrap().uid.clone();
        for (name, complete) in [("orders-a", MIDNIGHT), ("orders-b", MIDNIGHT + DAY / 2)] {
            let s = client
                .create(
                    DbSnapshot {
                        metadata: Some(ObjectMeta {
                            name: name.into(),
                            owner_references: vec![OwnerReference {
                                kind: Kind::DbClusterAutomatedBackup.as_str().into(),
                                name: "orders".into(),
                                uid: uid.clone(),
                                controller: true,
                            }],
                            ..Default::default()
                        }),
                        spec: Some(DbSnapshotSpec {
                            db_cluster: "orders".into(),
                            r#type: "automated".into(),
                        }),
                        status: None,
                    }
                    .into(),
                )
                .await
                .unwrap();
            let mut s = s;
            if let Some(Resource::DbSnapshot(x)) = &mut s.resource {
                x.status = Some(DbSnapshotStatus {
                    phase: SNAPSHOT_AVAILABLE.into(),
                    cluster_uid: "uid-1".into(),
                    snapshot_create_time: Some(ts(complete)),
                    ..Default::default()
                });
            }
            client.update_status(s).await.unwrap();
        }
        uid
    }

    /// A change to the record, so that the controller looks again after the clock moved.
    async fn poke(client: &Client, n: u32) {
        let mut o = client
            .get(Kind::DbClusterAutomatedBackup, "orders")
            .await
            .unwrap();
        o.metadata_mut()
            .annotations
            .insert("test/poke".into(), n.to_string());
        o.metadata_mut().resource_version = 0;
        client.update(o).await.unwrap();
    }

    async fn exists(client: &Client, kind: Kind, name: &str) -> bool {
        client.get(kind, name).await.is_ok()
    }

    #[tokio::test]
    async fn retention_deletes_retained_snapshots_as_they_age_and_then_the_record() {
        let t = TestServer::start().await;
        let c = &t.client;
        retained(c).await;
        let clock = Arc::new(FakeClock::new(at(MIDNIGHT + DAY - 60)));
        let (trigger, shutdown): (ShutdownTrigger, Shutdown) = Shutdown::new();
        let task = tokio::spawn(run_with(
            c.clone(),
            Metrics::default(),
            shutdown,
            clock.clone(),
        ));
        // Within the retention of both: nothing goes.
        poke(c, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(exists(c, Kind::DbSnapshot, "orders-a").await);

        // A day after the first: it goes, the window starts at the second.
        clock.set(at(MIDNIGHT + DAY + 1));
        poke(c, 2).await;
        eventually("the first snapshot expired", WITHIN, || async {
            let o = c.get(Kind::DbClusterAutomatedBackup, "orders").await;
            let status = match o.map(|o| o.resource) {
                Ok(Some(Resource::DbClusterAutomatedBackup(r))) => r.status.unwrap_or_default(),
                other => return Err(format!("{other:?}")),
            };
            let gone = !exists(c, Kind::DbSnapshot, "orders-a").await;
            if gone && status.earliest_restorable_time == Some(ts(MIDNIGHT + DAY / 2)) {
                Ok(())
            } else {
                Err(format!("orders-a gone: {gone}; {status:?}"))
            }
        })
        .await;
        assert!(exists(c, Kind::DbSnapshot, "orders-b").await);

        // A day after the last: it goes, and the record with it.
        clock.set(at(MIDNIGHT + DAY + DAY / 2 + 1));
        poke(c, 3).await;
        eventually("the record expired", WITHIN, || async {
            let record = exists(c, Kind::DbClusterAutomatedBackup, "orders").await;
            let snapshot = exists(c, Kind::DbSnapshot, "orders-b").await;
            if !record && !snapshot {
                Ok(())
            } else {
                Err(format!(
                    "record there: {record}; orders-b there: {snapshot}"
                ))
            }
        })
        .await;
        trigger.trigger();
        task.await.unwrap();
        t.stop().await;
    }
}
