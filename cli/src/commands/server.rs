//! `hanul server`: the API server and the controllers in one process.

use anyhow::Context as _;
use hanul_apiserver::{Config, StoreBackend};
use hanul_controllers::runtime::{Metrics as ControllerMetrics, Shutdown, ShutdownTrigger};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tracing::info;

/// The file in the data dir that names the URL the server listens on, written once it serves.
pub const ENDPOINT_FILE: &str = "endpoint";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StoreArg {
    /// The embedded, durable store (sled) in DATA_DIR/store.
    Sled,
    /// In memory: everything is lost on exit (for tests and demos).
    Memory,
}

/// Runs the API server and the controllers.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Where the store and the tokens live.
    #[arg(long, env = "HANUL_DATA_DIR", default_value = "/var/lib/hanul")]
    pub data_dir: PathBuf,
    /// The gRPC address (port 0 picks a free port, written to DATA_DIR/endpoint).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// The Prometheus /metrics address.
    #[arg(long, default_value = "127.0.0.1:7444")]
    pub metrics_listen: SocketAddr,
    #[arg(long, value_enum, default_value = "sled")]
    pub store: StoreArg,
    /// Serve the API only, without the controllers.
    #[arg(long)]
    pub no_controllers: bool,
    /// How long a node may miss heartbeats before it turns NotReady.
    #[arg(long, default_value = "15s", value_parser = super::parse_duration)]
    pub node_grace_period: Duration,
    /// Also run a node agent in this process (one-machine setups).
    #[arg(long)]
    pub with_agent: bool,
    /// The zone of the in-process agent.
    #[arg(long, default_value = "az-a", requires = "with_agent")]
    pub zone: String,
    /// The notice a spot instance gets before it is reclaimed (AWS gives two minutes).
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    pub spot_notice: Duration,
    /// How long terminated instances stay visible before they are collected (EC2: about an
    /// hour).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
    pub terminated_retention: Duration,
}

/// A started server with its controllers.
pub struct Running {
    pub server: hanul_apiserver::Server,
    controllers: Option<(ShutdownTrigger, tokio::task::JoinHandle<()>)>,
    agent: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
}

/// Starts the server and (unless disabled) the controllers, and writes DATA_DIR/endpoint.
pub async fn start(args: &Args) -> anyhow::Result<Running> {
    let server = hanul_apiserver::start(Config {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        metrics_listen: Some(args.metrics_listen),
        store: match args.store {
            StoreArg::Sled => StoreBackend::Sled,
            StoreArg::Memory => StoreBackend::Memory,
        },
    })
    .await?;
    let controllers = if args.no_controllers {
        None
    } else {
        let client = hanul_proto::Client::connect_lazy(&server.url(), server.tokens.admin())?;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = ControllerMetrics::new(&mut registry);
        server.metrics.add_registry(registry);
        let (trigger, shutdown) = Shutdown::new();
        let mut config = hanul_controllers::Config::default();
        config.node_lifecycle.grace = args.node_grace_period;
        config.scheduler.spot_notice = args.spot_notice;
        config.terminated.retention = args.terminated_retention;
        let task = tokio::spawn(async move {
            if let Err(e) = hanul_controllers::run_all(client, metrics, shutdown, config).await {
                tracing::error!(error = %e, "Controllers stopped.");
            }
        });
        Some((trigger, task))
    };
    let agent = if args.with_agent {
        let config = hanul_agent::Config {
            server: server.url(),
            token: server.tokens.join().to_string(),
            name: super::agent::hostname(),
            zone: args.zone.clone(),
            data_dir: args.data_dir.join("agent"),
            address: "127.0.0.1".into(),
            port_range: "30000-32767".into(),
            cpus: None,
            memory_mib: None,
            labels: Default::default(),
            heartbeat: Duration::from_secs(2),
            endpoint_port: 0,
            stop_grace: Duration::from_secs(10),
            workers: 16,
            lb_workers: 0,
            backup_dir: None,
            db_archive_interval: Duration::from_secs(300),
            db_endpoints: hanul_agent::db::EndpointMode::Auto,
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) = hanul_agent::run(config, rx).await {
                tracing::error!(error = %e, "Agent stopped.");
            }
        });
        Some((tx, task))
    } else {
        None
    };
    let endpoint = args.data_dir.join(ENDPOINT_FILE);
    std::fs::write(&endpoint, format!("{}\n", server.url()))
        .with_context(|| format!("writing {}", endpoint.display()))?;
    Ok(Running {
        server,
        controllers,
        agent,
    })
}

impl Running {
    /// Stops the controllers, then the server.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.agent {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some((trigger, task)) = self.controllers {
            trigger.trigger();
            let _ = task.await;
        }
        self.server.shutdown().await
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let running = start(&args).await?;
    info!(
        url = %running.server.url(),
        admin_token = %args.data_dir.join(hanul_apiserver::auth::ADMIN_TOKEN_FILE).display(),
        "Server ready."
    );
    shutdown_signal().await;
    info!("Shutting down.");
    running.shutdown().await
}
