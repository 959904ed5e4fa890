//! The instance loop against an in-process API server (memory store) and the [`FakeDriver`]:
//! what it writes and which driver calls it makes, including after a simulated agent restart.
//! Real processes are covered by the process driver's tests and the end-to-end tests.

use super::*;
use crate::driver::{FakeCall, FakeDriver};
use hanul_proto::v1::{
    Image, ImageSpec, Instance, InstancePort, InstanceSpec, InstanceStatus, ObjectMeta,
};

const NODE: &str = "n1";

struct Harness {
    _server: hanul_apiserver::Server,
    client: Client,
    driver: Arc<FakeDriver>,
    dir: tempfile::TempDir,
    running: Option<(
        hanul_controllers::runtime::ShutdownTrigger,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Harness {
    /// The server and the loop.
    async fn start(driver: Arc<FakeDriver>) -> Harness {
        let mut h = Harness::server(driver).await;
        h.start_loop();
        h
    }

    /// The server alone: objects can be created before the loop starts (an agent restart).
    async fn server(driver: Arc<FakeDriver>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
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
        Harness {
            _server: server,
            client,
            driver,
            dir,
            running: None,
        }
    }

    fn start_loop(&mut self) {
        let (trigger, shutdown) = Shutdown::new();
        let controller = controller(self.client.clone(), shutdown.clone());
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            self.driver.clone(),
            controller.cache(),
            Settings {
                node: NODE.into(),
                zone: "az-a".into(),
                address: "127.0.0.1".into(),
                endpoint: "127.0.0.1:9".into(),
                data_dir: self.dir.path().join("agent"),
                ports: PortRange::parse("47000-47099").unwrap(),
                stop_grace: Duration::from_millis(100),
            },
        ));
        let task = tokio::spawn(run(controller, ctx, shutdown, 4));
        self.running = Some((trigger, task));
    }

    async fn stop(mut self) {
        if let Some((trigger, task)) = self.running.take() {
            trigger.trigger();
            let _ = task.await;
        }
    }

    async fn instance(&self, name: &str) -> Option<Instance> {
        match self.client.get(Kind::Instance, name).await {
            Ok(o) => o.as_instance().cloned(),
            Err(_) => None,
        }
    }

    /// Waits until `check` holds for the instance (or it is gone: `None`).
    async fn until(
        &self,
        what: &str,
        check: impl Fn(Option<&Instance>) -> bool,
    ) -> Option<Instance> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let i = self.instance(what.split(' ').next().unwrap()).await;
            if check(i.as_ref()) {
                return i;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 10 s; last seen: {i:?}\ncalls: {:?}",
                self.driver.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn starts(&self, instance: &str) -> usize {
        self.driver
            .calls()
            .iter()
            .filter(|c| matches!(c, FakeCall::Start(s) if s.instance == instance))
            .count()
    }
}

fn state_of(i: Option<&Instance>) -> &str {
    i.and_then(|i| i.status.as_ref())
        .map(|s| s.state.as_str())
        .unwrap_or("")
}

async fn create_image(client: &Client) {
    let image = Image {
        metadata: Some(ObjectMeta {
            name: "img".into(),
            ..Default::default()
        }),
        spec: Some(ImageSpec {
            command: vec!["serve".into()],
            ..Default::default()
        }),
        status: None,
    };
    client.create(image.into()).await.unwrap();
}

/// Creates an instance bound to [`NODE`] (as the scheduler would), with `status` on top.
async fn create_bound(client: &Client, name: &str, status: InstanceStatus) {
    let i = Instance {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(InstanceSpec {
            image: "img".into(),
            instance_type: "t3.micro".into(),
            ports: vec![InstancePort {
                name: "http".into(),
                protocol: "tcp".into(),
            }],
            ..Default::default()
        }),
        status: None,
    };
    let mut o = client.create(i.into()).await.unwrap();
    if let Some(Resource::Instance(i)) = &mut o.resource {
        i.status = Some(InstanceStatus {
            node: NODE.into(),
            zone: "az-a".into(),
            state: if status.state.is_empty() {
                "pending".into()
            } else {
                status.state.clone()
            },
            ..status
        });
    }
    client.update_status(o).await.unwrap();
}

#[tokio::test]
async fn a_bound_instance_is_launched_once_with_its_port_and_held_by_a_finalizer() {
    let driver = Arc::new(FakeDriver::new());
    let h = Harness::start(driver).await;
    create_image(&h.client).await;
    create_bound(&h.client, "web", InstanceStatus::default()).await;
    let i = h
        .until("web running", |i| state_of(i) == "running")
        .await
        .unwrap();
    let status = i.status.unwrap();
    let port = status.ports["http"];
    assert!((47000..47100).contains(&port), "{port}");
    assert!(status.pid > 0 && status.launch_time.is_some());
    assert!(
        i.metadata
            .unwrap()
            .finalizers
            .contains(&FINALIZER.to_string())
    );
    let spec = h.driver.started().pop().unwrap();
    assert_eq!(spec.env["PORT"], port.to_string());
    assert_eq!(
        spec.env["HANUL_METADATA_URL"],
        "http://127.0.0.1:9/web/latest"
    );
    assert_eq!(spec.limits.memory_mib, 1024);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.starts("web"), 1, "launched twice: {:?}", h.driver.calls());
    h.stop().await;
}

#[tokio::test]
async fn a_failed_launch_is_retried() {
    let driver = Arc::new(FakeDriver::new());
    driver.fail_next_start("no such program");
    let h = Harness::start(driver).await;
    create_image(&h.client).await;
    create_bound(&h.client, "web", InstanceStatus::default()).await;
    h.until("web running", |i| state_of(i) == "running").await;
    assert!(h.starts("web") >= 2, "{:?}", h.driver.calls());
    h.stop().await;
}

#[tokio::test]
async fn after_a_restart_a_running_process_is_adopted_and_one_whose_instance_is_gone_is_stopped() {
    let driver = Arc::new(FakeDriver::new());
    let pid = driver.insert_running("web");
    driver.insert_running("gone");
    let mut h = Harness::server(driver).await;
    create_image(&h.client).await;
    create_bound(
        &h.client,
        "web",
        InstanceStatus {
            state: "running".into(),
            pid: i64::from(pid),
            ports: [("http".to_string(), 47005)].into(),
            ..Default::default()
        },
    )
    .await;
    h.start_loop();
    // The sweep (right after the cache synced) stops the workload without an instance.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !h
        .driver
        .calls()
        .iter()
        .any(|c| matches!(c, FakeCall::Stop { instance, .. } if instance == "gone"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            h.driver.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The loop has looked at the instance once it holds the finalizer.
    h.until("web reconciled", |i| {
        i.and_then(|i| i.metadata.as_ref())
            .is_some_and(|m| m.finalizers.iter().any(|f| f == FINALIZER))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let i = h.instance("web").await.unwrap();
    let status = i.status.unwrap();
    assert_eq!(
        (status.state.as_str(), status.pid),
        ("running", i64::from(pid))
    );
    assert_eq!(status.ports["http"], 47005);
    assert_eq!(h.starts("web"), 0, "re-launched: {:?}", h.driver.calls());
    h.stop().await;
}

#[tokio::test]
async fn an_exit_stops_the_instance_and_a_delete_terminates_it_and_drops_the_finalizer() {
    let driver = Arc::new(FakeDriver::new());
    let h = Harness::start(driver).await;
    create_image(&h.client).await;
    create_bound(&h.client, "web", InstanceStatus::default()).await;
    h.until("web running", |i| state_of(i) == "running").await;
    assert!(h.driver.exit("web", Some(2), None, false));
    let i = h
        .until("web stopped", |i| state_of(i) == "stopped")
        .await
        .unwrap();
    assert_eq!(i.spec.unwrap().state, "stopped");
    let status = i.status.unwrap();
    assert_eq!(status.exit_code, Some(2));
    assert!(
        status
            .state_reason
            .starts_with("Client.InstanceInitiatedShutdown")
    );

    h.client.delete(Kind::Instance, "web").await.unwrap();
    h.until("web gone", |i| i.is_none()).await;
    h.stop().await;
}
