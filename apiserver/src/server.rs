//! Starting the API server: open the store, seed the catalog, serve gRPC (the object service,
//! health and reflection) and Prometheus metrics.

use crate::{
    auth::Tokens,
    metrics::{self, Metrics},
    registry::Registry,
    service::ObjectApi,
    store::{MemoryStore, SledStore, Store},
};
use anyhow::Context as _;
use hanul_proto::v1::object_service_server::ObjectServiceServer;
use std::{net::SocketAddr, path::PathBuf, sync::Arc};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::info;

/// How long a shutdown waits for open calls before cutting them.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Which store backs the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded, durable default, in `DATA_DIR/store`.
    Sled,
    /// In memory, for tests: everything is lost on exit.
    Memory,
}

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds the store and the tokens.
    pub data_dir: PathBuf,
    /// The gRPC address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The Prometheus `/metrics` address; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    pub store: StoreBackend,
}

/// A running server.
pub struct Server {
    /// Where gRPC is served.
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub tokens: Tokens,
    pub registry: Registry,
    /// The metrics served on `metrics_addr`; other in-process components may add theirs.
    pub metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for open calls to end.
    /// Stops serving: open calls get [`DRAIN_TIMEOUT`] to end (watches never end on their
    /// own), then the rest are cut.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.task).await {
            Ok(joined) => joined
                .context("server task panicked")?
                .context("serving gRPC"),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops on its own (it does not, unless it fails).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task
            .await
            .context("server task panicked")?
            .context("serving gRPC")
    }
}

/// Opens the store, binds the listeners and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let tokens =
        Tokens::load_or_create(&config.data_dir).context("reading or creating the tokens")?;
    let store: Arc<dyn Store> = match config.store {
        StoreBackend::Sled => {
            let path = config.data_dir.join("store");
            Arc::new(
                SledStore::open(&path)
                    .with_context(|| format!("opening the store in {}", path.display()))?,
            )
        }
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
    };
    let metrics = Metrics::default();
    let registry = Registry::new(store).with_write_latency(metrics.store_write.clone());
    registry
        .seed_builtin_catalog()
        .await
        .context("seeding the built-in instance types")?;

    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            let addr = l.local_addr()?;
            tokio::spawn(metrics::serve(l, metrics.clone()));
            Some(addr)
        }
        None => None,
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.listen))?;
    let addr = listener.local_addr()?;

    let api = ObjectApi::new(registry.clone(), metrics.clone(), tokens.join());
    let auth = tokens.clone();
    let object_service = tonic::service::interceptor::InterceptedService::new(
        ObjectServiceServer::new(api).max_decoding_message_size(64 << 20),
        move |req: tonic::Request<()>| {
            auth.authenticate(&req)?;
            Ok(req)
        },
    );
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ObjectServiceServer<ObjectApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hanul_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;

    let (tx, rx) = oneshot::channel::<()>();
    // `Server::tcp_nodelay` does not apply to an incoming stream we hand over: set it here, or
    // every reply waits out the peer's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(object_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    info!(%addr, metrics = ?metrics_addr, data_dir = %config.data_dir.display(), "API server is serving.");
    Ok(Server {
        addr,
        metrics_addr,
        tokens,
        registry,
        metrics,
        shutdown: Some(tx),
        task,
    })
}
