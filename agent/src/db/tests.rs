//! The DB member loop for real: an in-process API server (memory store), this module's loop
//! on one node running two real PostgreSQL members, and the test playing the cluster's
//! controller by writing `DBCluster.status` as the protocol says. Needs root (members run as
//! `postgres`, in cgroups) and PostgreSQL 15.

use super::nft::Tools;
use super::*;
use hanul_controllers::runtime::ShutdownTrigger;
use hanul_proto::db::{
    REASON_SWITCHOVER, ROLE_STANDBY, ROLE_WRITER, STATE_AVAILABLE, STATE_STOPPED,
};
use hanul_proto::v1::{
    DbCluster, DbClusterSpec, DbClusterStatus, DbEndpoints, DbFailover, DbInstance, DbInstanceSpec,
    DbInstanceStatus, ObjectMeta, Replication,
};

const PASSWORD: &str = "s3cret-pw";

struct Harness {
    server: Option<hanul_apiserver::Server>,
    client: Client,
    dir: tempfile::TempDir,
    /// Each test its own node: the drivers' cgroups are per node, and a new driver kills
    /// what it finds in its node's cgroups that it does not know.
    node: &'static str,
    ports: PortRange,
    running: Option<(ShutdownTrigger, tokio::task::JoinHandle<()>)>,
    /// The loop's metrics (the endpoints' path among them).
    metrics: Arc<metrics::Metrics>,
}

fn free_port() -> u16 {
    // Two free ports in a row, for the writer and reader endpoints.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

impl Harness {
    async fn start(node: &'static str, ports: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let server = hanul_apiserver::start(hanul_apiserver::Config {
            data_dir: dir.path().join("server"),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            store: hanul_apiserver::StoreBackend::Memory,
        })
        .await
        .unwrap();
        let client = Client::connect(&server.url(), server.tokens.admin())
            .await
            .unwrap();
        let mut h = Harness {
            server: Some(server),
            client,
            dir,
            node,
            ports: PortRange::parse(ports).unwrap(),
            running: None,
            metrics: Default::default(),
        };
        h.start_loop();
        h
    }

    fn start_loop(&mut self) {
        let (trigger, shutdown) = Shutdown::new();
        let settings = Settings {
            node: self.node.into(),
            address: "127.0.0.1".into(),
            data_dir: self.dir.path().join("agent"),
            ports: self.ports,
            backup_dir: self.dir.path().join("backups"),
            archive_interval: Duration::from_secs(1),
            metrics: self.metrics.clone(),
            held: Default::default(),
        };
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            // As the agent does by default: the kernel path where nft works (the endpoints'
            // checks below then go through it: the test runs on the endpoints' host).
            let kernel =
                KernelPath::start(EndpointMode::Auto, &settings.node, settings.metrics.clone())
                    .await
                    .unwrap();
            run(client, settings, kernel, shutdown).await
        });
        self.running = Some((trigger, task));
    }

    /// Stops the loop (the members keep running, as when an agent stops).
    async fn stop_loop(&mut self) {
        if let Some((trigger, task)) = self.running.take() {
            trigger.trigger();
            let _ = task.await;
        }
    }

    async fn member(&self, name: &str) -> Option<DbInstance> {
        match self.client.get(Kind::DbInstance, name).await {
            Ok(o) => match o.resource {
                Some(Resource::DbInstance(i)) => Some(i),
                _ => None,
            },
            Err(_) => None,
        }
    }

    /// Waits (at most 20 s) until the loop's metrics have `line`.
    async fn until_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut out = String::new();
            self.metrics.render(&mut out);
            if out.lines().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line:?} not in the metrics within 20 s:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A singleAZ cluster whose member db-1 on this node is the writer of epoch 1, up and
    /// answering SQL; its port.
    async fn single_writer(&self) -> u16 {
        let port = free_port();
        create_cluster(self, hanul_proto::db::SINGLE_AZ, port).await;
        self.set_cluster_status(|s| {
            s.epoch = 1;
            s.writer = "db-1".into();
            s.endpoints = Some(DbEndpoints {
                node: self.node.into(),
                ..Default::default()
            });
        })
        .await;
        self.client
            .create(instance(self.node, "db-1", ROLE_WRITER, true).into())
            .await
            .unwrap();
        self.until("db-1", "writer of epoch 1", |s| {
            s.role == ROLE_WRITER && s.epoch == 1 && s.state == STATE_AVAILABLE
        })
        .await;
        until_sql(port, "select 1", "1").await;
        port
    }

    /// Waits (at most 60 s) until `check` holds for the member's status.
    async fn until(&self, name: &str, what: &str, check: impl Fn(&DbInstanceStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.member(name).await.and_then(|i| i.status);
            if status.as_ref().is_some_and(&check) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {what}: not within 60 s; last seen: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn set_cluster_status(&self, change: impl Fn(&mut DbClusterStatus)) {
        for _ in 0..10 {
            let mut o = self.client.get(Kind::DbCluster, "db").await.unwrap();
            if let Some(Resource::DbCluster(c)) = &mut o.resource {
                change(c.status.get_or_insert_with(Default::default));
            }
            if self.client.update_status(o).await.is_ok() {
                return;
            }
        }
        panic!("could not write the cluster's status");
    }
}

/// psql over TCP, as a client. Through the agent's reaper: it waits on every child here.
async fn psql(port: u16, sql: &str) -> Result<String, String> {
    use hanul_db::Exec as _;
    let mut c = std::process::Command::new("psql");
    c.env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "master"])
        .args(["-d", "app", "-AtXc", sql]);
    let out = exec::ReapedExec
        .output(c)
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

async fn until_sql(port: u16, sql: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = psql(port, sql).await;
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} on port {port}: wanted {want}, last got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_cluster(h: &Harness, deployment: &str, port: u16) {
    let cluster = DbCluster {
        metadata: Some(ObjectMeta {
            name: "db".into(),
            ..Default::default()
        }),
        spec: Some(DbClusterSpec {
            deployment: deployment.into(),
            instance_class: "db.t3.micro".into(),
            port: Some(u32::from(port)),
            database_name: "app".into(),
            master_username: "master".into(),
            master_password: PASSWORD.into(),
            replication: Some(Replication {
                data_durability: "required".into(),
            }),
            ..Default::default()
        }),
        status: None,
    };
    h.client.create(cluster.into()).await.unwrap();
}

fn instance(node: &str, name: &str, role: &str, readable: bool) -> DbInstance {
    DbInstance {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(DbInstanceSpec {
            cluster: "db".into(),
            role: role.into(),
            zone: "az-a".into(),
            node: node.into(),
            instance_class: "db.t3.micro".into(),
            readable,
            storage_gib: 20,
        }),
        status: None,
    }
}

/// Bootstrap, a standby cloned and synchronous, the endpoints; then a switchover: the old
/// writer stops fast, the standby votes, is promoted, the old writer rewinds and follows it,
/// the writer endpoint moves; then both members are deleted and their files removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_boots_switches_over_and_is_deleted_as_root() {
    if !nix::unistd::Uid::effective().is_root() || Binaries::locate().is_err() {
        eprintln!("SKIPPED: needs root and PostgreSQL 15");
        return;
    }
    let mut h = Harness::start("db-test-a", "47100-47149").await;
    let port = free_port();
    create_cluster(&h, hanul_proto::db::MULTI_AZ_INSTANCE, port).await;
    h.set_cluster_status(|s| {
        s.epoch = 1;
        s.writer = "db-1".into();
        s.sync_standbys = vec!["db-2".into()];
        s.sync_count = 1;
        s.endpoints = Some(DbEndpoints {
            node: h.node.into(),
            ..Default::default()
        });
    })
    .await;
    h.client
        .create(instance(h.node, "db-1", ROLE_WRITER, true).into())
        .await
        .unwrap();
    h.client
        .create(instance(h.node, "db-2", ROLE_STANDBY, false).into())
        .await
        .unwrap();

    h.until("db-1", "writer of epoch 1, renewing", |s| {
        s.role == ROLE_WRITER && s.epoch == 1 && s.state == STATE_AVAILABLE && s.lease_renewals > 2
    })
    .await;
    h.until("db-2", "streaming standby", |s| {
        s.role == ROLE_STANDBY && s.epoch == 1 && s.streaming && s.state == STATE_AVAILABLE
    })
    .await;
    let m1 = h.member("db-1").await.unwrap();
    assert!(
        m1.metadata
            .as_ref()
            .unwrap()
            .finalizers
            .contains(&FINALIZER.to_string())
    );
    // Through the writer endpoint (synchronous: the commit waits for db-2).
    until_sql(port, "select 1", "1").await;
    // This host's clients (the test's) take the kernel path where nft can be used; both
    // endpoints are steered.
    if Tools::locate().is_some() {
        h.until_metric("hanul_db_endpoints_kernel_steered 2").await;
    }
    psql(port, "create table t (v int); insert into t values (1)")
        .await
        .unwrap();
    until_sql(
        port,
        "select setting from pg_settings where name = 'synchronous_standby_names'",
        "FIRST 1 (\"db-2\")",
    )
    .await;
    // The reader endpoint: db-2 takes no reads, so the writer serves them.
    until_sql(port + 1, "select count(*) from t", "1").await;

    // An agent restart: the new loop adopts both postgres processes and carries on.
    let pid = |i: Option<DbInstance>| i.and_then(|i| i.status).map_or(0, |s| s.pid);
    let (pid1, pid2) = (pid(h.member("db-1").await), pid(h.member("db-2").await));
    assert!(pid1 > 0 && pid2 > 0);
    h.stop_loop().await;
    let renewals = h
        .member("db-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .lease_renewals;
    h.start_loop();
    h.until("db-1", "renewing again", |s| {
        s.lease_renewals > renewals + 2
    })
    .await;
    assert_eq!(
        pid(h.member("db-1").await),
        pid1,
        "the writer was restarted"
    );
    assert_eq!(
        pid(h.member("db-2").await),
        pid2,
        "the standby was restarted"
    );
    until_sql(port, "select count(*) from t", "1").await;

    // Switchover to db-2.
    h.set_cluster_status(|s| {
        s.failover = Some(DbFailover {
            epoch: 2,
            from: "db-1".into(),
            reason: REASON_SWITCHOVER.into(),
            target: "db-2".into(),
            started_at: None,
        });
    })
    .await;
    h.until("db-1", "stopped for the switchover", |s| {
        s.state == STATE_STOPPED && s.role.is_empty()
    })
    .await;
    h.until("db-2", "voted", |s| {
        s.vote.as_ref().is_some_and(|v| v.epoch == 2 && v.lsn > 0)
    })
    .await;
    h.set_cluster_status(|s| {
        s.epoch = 2;
        s.writer = "db-2".into();
        s.sync_standbys = vec!["db-1".into()];
    })
    .await;
    h.until("db-2", "writer of epoch 2", |s| {
        s.role == ROLE_WRITER && s.epoch == 2 && s.timeline == 2
    })
    .await;
    h.set_cluster_status(|s| s.failover = None).await;
    h.until("db-1", "rejoined as a standby of db-2", |s| {
        s.role == ROLE_STANDBY && s.epoch == 2 && s.streaming && s.state == STATE_AVAILABLE
    })
    .await;
    // The writer endpoint now reaches db-2 (the only one that takes writes), and db-1 has it.
    until_sql(port, "select pg_is_in_recovery()", "f").await;
    psql(port, "insert into t values (2)").await.unwrap();
    until_sql(port, "select count(*) from t", "2").await;

    // Delete both: stopped, files removed, finalizers dropped.
    for name in ["db-1", "db-2"] {
        h.client.delete(Kind::DbInstance, name).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.member("db-1").await.is_some() || h.member("db-2").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db_dir = h.dir.path().join("agent/db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db_dir.join("db-1").exists() || db_dir.join("db-2").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member directories left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop_loop().await;
}

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A writer whose PostgreSQL is killed reports failed and stays down until the cluster names
/// it writer at a newer epoch (then it recovers in place); a writer whose agent cannot reach
/// the API server stops its PostgreSQL before a lease has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writer_waits_for_a_new_epoch_and_a_cut_off_one_fences_itself_as_root() {
    if !nix::unistd::Uid::effective().is_root() || Binaries::locate().is_err() {
        eprintln!("SKIPPED: needs root and PostgreSQL 15");
        return;
    }
    let mut h = Harness::start("db-test-b", "47150-47199").await;
    let port = h.single_writer().await;
    psql(port, "create table t (v int)").await.unwrap();

    // Killed: failed, and not restarted.
    let pid = h.member("db-1").await.unwrap().status.unwrap().pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    h.until("db-1", "failed", |s| {
        s.state == hanul_proto::db::STATE_FAILED && s.role.is_empty() && s.pid == 0
    })
    .await;
    // Several of the loop's passes (it runs every lease/12 for a writer) must leave it down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = h.member("db-1").await.unwrap().status.unwrap();
    assert_eq!(
        (s.state.as_str(), s.pid),
        (hanul_proto::db::STATE_FAILED, 0)
    );

    // Restarted in place at a newer epoch.
    h.set_cluster_status(|s| s.epoch = 2).await;
    h.until("db-1", "writer of epoch 2", |s| {
        s.role == ROLE_WRITER && s.epoch == 2 && s.state == STATE_AVAILABLE && s.pid > 0
    })
    .await;
    until_sql(port, "select count(*) from t", "0").await;

    // The API server goes away: PostgreSQL stops within the lease (3 s).
    let pid = h.member("db-1").await.unwrap().status.unwrap().pid;
    assert!(alive(pid));
    let cut = tokio::time::Instant::now();
    drop(h.server.take());
    while alive(pid) {
        assert!(
            cut.elapsed() < Duration::from_secs(3),
            "the writer did not fence itself within the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop_loop().await;
}

/// A backtrack for real, in the member's loop: a restore that fails (its snapshot is missing)
/// leaves the old data directory aside and the member with no role, never serving as a
/// half-restored writer, and is tried again; pointed at a real snapshot, the writer comes back
/// in the new epoch with exactly the rows committed before the target time, on a new
/// timeline, and the old directory is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backtrack_restores_the_writer_in_place_and_a_failed_one_never_serves_as_root() {
    if !nix::unistd::Uid::effective().is_root() || Binaries::locate().is_err() {
        eprintln!("SKIPPED: needs root and PostgreSQL 15");
        return;
    }
    let mut h = Harness::start("db-test-c", "47200-47249").await;
    let port = h.single_writer().await;
    psql(port, "create table t (v int)").await.unwrap();

    // A base backup of the writer, as an automated snapshot is taken.
    let root = h.dir.path().join("agent/db/db-1");
    let address = h.member("db-1").await.unwrap().status.unwrap().address;
    let local_port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let m = hanul_db::Member::new(Binaries::locate().unwrap(), &root, local_port, "master")
        .unwrap()
        .with_exec(Arc::new(exec::ReapedExec));
    let snapshot = "snapshots/s1-test";
    m.base_backup(&h.dir.path().join("backups").join(snapshot))
        .await
        .unwrap();
    psql(port, "insert into t select generate_series(1, 10)")
        .await
        .unwrap();
    let target = m.heartbeat().await.unwrap();
    psql(port, "insert into t select generate_series(11, 20)")
        .await
        .unwrap();
    h.until("db-1", "its WAL archived past the target", |s| {
        s.latest_restorable_time.as_ref().is_some_and(|t| {
            t.seconds * 1_000_000 + i64::from(t.nanos / 1000) > target.at_unix_micros
        })
    })
    .await;

    let uid = h
        .client
        .get(Kind::DbCluster, "db")
        .await
        .unwrap()
        .metadata()
        .unwrap()
        .uid
        .clone();
    let backtrack = |path: &str| hanul_proto::v1::DbBacktrack {
        epoch: 2,
        target_time: Some(pbjson_types::Timestamp {
            seconds: target.at_unix_micros.div_euclid(1_000_000),
            nanos: (target.at_unix_micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        snapshot: "s1".into(),
        snapshot_path: path.into(),
        wal_path: hanul_proto::db::wal_archive_path("db", &uid),
        timeline: 1,
        request: "test".into(),
        ..Default::default()
    };
    h.set_cluster_status(|s| {
        s.epoch = 2;
        s.backtrack = Some(backtrack("snapshots/missing"));
    })
    .await;
    // The failure names the missing snapshot; checked as it is reported (the next attempt
    // soon says "restoring" again).
    h.until(
        "db-1",
        "a failed attempt naming the missing snapshot",
        |s| {
            s.state == hanul_proto::db::STATE_BACKTRACKING
                && s.message.contains("failed")
                && s.message.contains("snapshots/missing")
        },
    )
    .await;
    let aside = root.join("pgdata.before-backtrack-2");
    for _ in 0..3 {
        let s = h.member("db-1").await.unwrap().status.unwrap();
        assert_eq!((s.role.as_str(), s.epoch, s.pid), ("", 1, 0), "{s:?}");
        assert!(aside.join("PG_VERSION").is_file());
        assert!(psql(port, "select 1").await.is_err());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    h.set_cluster_status(|s| s.backtrack = Some(backtrack(snapshot)))
        .await;
    h.until("db-1", "writer of epoch 2", |s| {
        s.role == ROLE_WRITER && s.epoch == 2 && s.state == STATE_AVAILABLE
    })
    .await;
    until_sql(port, "select count(*) || '/' || max(v) from t", "10/10").await;
    let s = h.member("db-1").await.unwrap().status.unwrap();
    assert_eq!(s.timeline, 2, "{s:?}");
    assert!(!aside.exists());
    psql(port, "insert into t values (100)").await.unwrap();

    h.client.delete(Kind::DbInstance, "db-1").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.member("db-1").await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "member not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop_loop().await;
}

/// A backtrack that keeps failing (its snapshot is missing) counts its failures in the
/// member's status; once cancelled, the writer puts its data directory from before back
/// (`backtrackCancelled`), stays stopped in its old epoch until the cluster names it again,
/// then starts in place in that new epoch with every row it had, on the same timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backtrack_puts_the_old_data_back_and_it_serves_again_as_root() {
    if !nix::unistd::Uid::effective().is_root() || Binaries::locate().is_err() {
        eprintln!("SKIPPED: needs root and PostgreSQL 15");
        return;
    }
    let mut h = Harness::start("db-test-d", "47250-47299").await;
    let port = h.single_writer().await;
    psql(
        port,
        "create table t (v int); insert into t select generate_series(1, 20)",
    )
    .await
    .unwrap();

    let mut b = hanul_proto::v1::DbBacktrack {
        epoch: 2,
        target_time: Some(pbjson_types::Timestamp {
            seconds: 1_704_067_200,
            nanos: 0,
        }),
        snapshot: "s1".into(),
        snapshot_path: "snapshots/missing".into(),
        wal_path: "wal/missing".into(),
        timeline: 1,
        request: "test".into(),
        ..Default::default()
    };
    let started = b.clone();
    h.set_cluster_status(|s| {
        s.epoch = 2;
        s.backtrack = Some(started.clone());
    })
    .await;
    h.until("db-1", "two failed attempts, counted", |s| {
        s.state == hanul_proto::db::STATE_BACKTRACKING && s.backtrack_failures >= 2
    })
    .await;
    let root = h.dir.path().join("agent/db/db-1");
    let aside = root.join("pgdata.before-backtrack-2");
    assert!(aside.join("PG_VERSION").is_file());

    b.cancel_requested_at = Some(pbjson_types::Timestamp::default());
    let cancelled = b.clone();
    h.set_cluster_status(|s| s.backtrack = Some(cancelled.clone()))
        .await;
    h.until("db-1", "the data from before put back", |s| {
        s.backtrack_cancelled == 2 && s.state == STATE_STOPPED
    })
    .await;
    assert!(!aside.exists());
    for _ in 0..3 {
        let s = h.member("db-1").await.unwrap().status.unwrap();
        assert_eq!((s.role.as_str(), s.epoch, s.pid), ("", 1, 0), "{s:?}");
        assert!(psql(port, "select 1").await.is_err());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // The cluster names it writer of epoch 3: its old data, on its old timeline.
    h.set_cluster_status(|s| {
        s.backtrack = None;
        s.epoch = 3;
    })
    .await;
    h.until("db-1", "writer of epoch 3", |s| {
        s.role == ROLE_WRITER && s.epoch == 3 && s.state == STATE_AVAILABLE
    })
    .await;
    until_sql(port, "select count(*) || '/' || max(v) from t", "20/20").await;
    let s = h.member("db-1").await.unwrap().status.unwrap();
    assert_eq!((s.timeline, s.backtrack_failures), (1, 0), "{s:?}");
    psql(port, "insert into t values (21)").await.unwrap();

    h.client.delete(Kind::DbInstance, "db-1").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.member("db-1").await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "member not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop_loop().await;
}

#[test]
fn members_hold_their_instance_class_on_their_node_for_the_heartbeat() {
    use hanul_proto::v1::{DbInstance, DbInstanceSpec, Object, ObjectMeta};
    let member = |name: &str, node: &str, class: &str, deleting: bool| {
        Arc::new(Object::from(DbInstance {
            metadata: Some(ObjectMeta {
                name: name.into(),
                deleted_at: deleting.then(Default::default),
                ..Default::default()
            }),
            spec: Some(DbInstanceSpec {
                node: node.into(),
                instance_class: class.into(),
                ..Default::default()
            }),
            status: None,
        }))
    };
    let all = [
        member("a-1", "n1", "db.t3.small", false),
        member("b-1", "n1", "db.m5.xlarge", false),
        member("c-1", "n2", "db.t3.small", false),
        member("d-1", "n1", "db.t3.small", true),
    ];
    assert_eq!(
        super::held_by(&all, "n1"),
        crate::system::Capacity {
            cpu_millis: 6000,
            memory_mib: 2048 + 16384
        }
    );
}
