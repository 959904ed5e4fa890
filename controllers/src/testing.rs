//! Helpers shared by the crate's tests: polling with a deadline, an in-process API server, and
//! small objects.

use hanul_proto::{
    Client,
    v1::{Image, ImageSpec, Object, ObjectMeta, OwnerReference},
};
use std::{future::Future, time::Duration};

/// Polls `check` every 20 ms until it returns `Ok`, or panics after `within` with what it last
/// returned.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// An in-process API server on the in-memory store, and an admin client of it.
pub(crate) struct TestServer {
    pub(crate) server: hanul_apiserver::Server,
    pub(crate) client: Client,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub(crate) async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let server = hanul_apiserver::start(hanul_apiserver::Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            store: hanul_apiserver::StoreBackend::Memory,
        })
        .await
        .unwrap();
        let client = Client::connect(&server.url(), server.tokens.admin())
            .await
            .unwrap();
        TestServer {
            server,
            client,
            _dir: dir,
        }
    }

    pub(crate) async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// Registers `node` (from [`node`]) and reports it Ready, as its agent would; returns it as
/// stored.
pub(crate) async fn ready_node(client: &Client, node: Object) -> Object {
    let mut o = client.create(node).await.unwrap();
    if let Some(hanul_proto::v1::object::Resource::Node(n)) = &mut o.resource {
        n.status = Some(hanul_proto::v1::NodeStatus {
            conditions: vec![hanul_proto::v1::Condition {
                r#type: crate::scheduler::CONDITION_READY.into(),
                status: crate::scheduler::conditions::TRUE.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    client.update_status(o).await.unwrap()
}

/// A valid Image named `name`, owned by `owners`.
pub(crate) fn image(name: &str, owners: &[&Object]) -> Object {
    Image {
        metadata: Some(ObjectMeta {
            name: name.into(),
            owner_references: owners.iter().map(|o| owner_ref(o, false)).collect(),
            ..Default::default()
        }),
        spec: Some(ImageSpec {
            command: vec!["true".into()],
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// A reference to `owner` (as created: with its uid).
pub(crate) fn owner_ref(owner: &Object, controller: bool) -> OwnerReference {
    let meta = owner.metadata().cloned().unwrap_or_default();
    OwnerReference {
        kind: owner
            .kind()
            .map(|k| k.as_str().to_string())
            .unwrap_or_default(),
        name: meta.name,
        uid: meta.uid,
        controller,
    }
}

/// A Node as its agent registers it: `zone`, and a capacity of `cpu_millis` and `memory_mib`.
pub(crate) fn node(name: &str, zone: &str, cpu_millis: u32, memory_mib: u64) -> Object {
    hanul_proto::v1::Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(hanul_proto::v1::NodeSpec {
            zone: zone.into(),
            capacity: Some(hanul_proto::v1::Resources {
                cpu_millis,
                memory_mib,
            }),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}
