//! hanul's node agent: registers this machine as a `Node`, renews its lease, and runs the
//! instances bound to it as supervised local processes.
//!
//! Modules: [`node`] (registration and heartbeats), [`system`] (what the machine offers),
//! [`driver`] (the process driver: sessions, cgroups, logs, re-adoption after a restart),
//! [`instances`] (the instance loop: the EC2 lifecycle on top of the driver), [`endpoint`]
//! (the instance metadata endpoint, the logs the server proxies, metrics), [`elb`] (the load
//! balancers placed on this node, on the `hanul-lb` data plane), [`db`] (the PostgreSQL members
//! of managed databases placed on this node, and their clusters' endpoints).
//! The agent talks to the API server only through the gRPC client.

pub mod db;
pub mod driver;
pub mod elb;
pub mod endpoint;
pub mod error;
pub mod instances;
pub mod node;
pub mod system;

pub use error::{Error, Result};

use driver::{ProcessDriver, WorkloadDriver};
use hanul_controllers::runtime::Shutdown;
use hanul_proto::Client;
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};
use system::Capacity;
use tracing::info;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: String,
    pub token: String,
    /// The node's name: unique in the cluster.
    pub name: String,
    pub zone: String,
    pub data_dir: PathBuf,
    /// The address other machines reach this node's workloads on.
    pub address: String,
    /// Host ports given to instance ports, `LOW-HIGH`.
    pub port_range: String,
    /// Overrides of what the node offers (several agents on one machine share it).
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub labels: HashMap<String, String>,
    pub heartbeat: Duration,
    /// The port of the agent's endpoint (metadata, logs); 0 picks a free one.
    pub endpoint_port: u16,
    /// Between SIGTERM and SIGKILL when an instance stops.
    pub stop_grace: Duration,
    /// Instances reconciled at once.
    pub workers: usize,
    /// Threads serving load balancer traffic; 0: one per core.
    pub lb_workers: usize,
    /// Where DB clusters' WAL archives and snapshots go: the same directory for every agent
    /// of the cluster (a shared mount when they are on several machines). None:
    /// `data_dir/backups`.
    pub backup_dir: Option<PathBuf>,
    /// How often a DB writer with new WAL closes its WAL file for the archive (the
    /// latest restorable time lags by about this much).
    pub db_archive_interval: Duration,
    /// How the DB endpoints serve this host's own clients: the kernel path (nftables DNAT)
    /// or the userspace proxy (which always serves remote clients).
    pub db_endpoints: db::EndpointMode,
}

/// Runs the agent until `stop` turns true. The instances keep running when it returns (a new
/// agent on the same data dir adopts them).
pub async fn run(config: Config, stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
    if config.name.is_empty() || config.zone.is_empty() {
        return Err(Error::Config("the node needs a name and a zone".into()));
    }
    let ports = instances::ports::PortRange::parse(&config.port_range).map_err(Error::Config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Read {
        what: "the data dir",
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let client = Client::connect_lazy(&config.server, &config.token).map_err(Error::Connect)?;
    // First, so that `--db-endpoints kernel` fails before the node registers, and a previous
    // run's rules are replaced at once.
    let db_metrics = Arc::new(db::metrics::Metrics::default());
    let db_kernel =
        db::KernelPath::start(config.db_endpoints, &config.name, db_metrics.clone()).await?;
    let machine = system::capacity()?;
    let capacity = Capacity {
        cpu_millis: config.cpus.map(|c| c * 1000).unwrap_or(machine.cpu_millis),
        memory_mib: config.memory_mib.unwrap_or(machine.memory_mib),
    };
    let driver = ProcessDriver::new(
        config.data_dir.join("driver"),
        format!("hanul/{}", config.name),
    )
    .map_err(|e| Error::Config(format!("cannot start the process driver: {e}")))?;
    let (limits_enforced, limits_note) = driver.limits_enforced();
    let driver: Arc<dyn WorkloadDriver> = Arc::new(driver);

    // The endpoint listens on the node's address (every interface if it is a name).
    let ip: std::net::IpAddr = config
        .address
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let listener = tokio::net::TcpListener::bind((ip, config.endpoint_port))
        .await
        .map_err(|source| Error::Read {
            what: "the endpoint's port",
            path: format!("{ip}:{}", config.endpoint_port),
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let agent_endpoint = format!("{}:{port}", config.address);

    let info = node::NodeInfo {
        name: config.name.clone(),
        zone: config.zone.clone(),
        address: config.address.clone(),
        capacity,
        reserved: Capacity::default(),
        port_range: config.port_range.clone(),
        agent_endpoint: agent_endpoint.clone(),
        labels: config.labels.clone(),
        limits_enforced,
        limits_note,
        kernel: system::kernel(),
    };
    // The server may still be starting (hanul server --with-agent): retry registration.
    let mut backoff = Duration::from_millis(100);
    loop {
        match node::register(&client, &info).await {
            Ok(_) => break,
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => {
                info!(error = %e, "Registration failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    let shutdown = {
        let mut stop = stop.clone();
        Shutdown::on(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let controller = instances::controller(client.clone(), shutdown.clone());
    let ctx = Arc::new(instances::Context::new(
        client.clone(),
        driver,
        controller.cache(),
        instances::Settings {
            node: config.name.clone(),
            zone: config.zone.clone(),
            address: config.address.clone(),
            endpoint: agent_endpoint,
            data_dir: config.data_dir.clone(),
            ports,
            stop_grace: config.stop_grace,
        },
    ));
    node::heartbeat(&client, &info, ctx.allocated()).await?;
    let (plane, health) = if config.lb_workers == 0 {
        hanul_lb::DataPlane::new()
    } else {
        hanul_lb::DataPlane::with_workers(config.lb_workers)
            .map_err(|e| Error::Config(format!("cannot start the load balancer's threads: {e}")))?
    };
    // The DB members' instance classes count in the node's allocation like instances' types.
    let db_held = Arc::new(std::sync::Mutex::new(system::Capacity::default()));
    let metrics: endpoint::MetricsFn = {
        let plane = plane.clone();
        let db_metrics = db_metrics.clone();
        Arc::new(move || {
            let mut out = String::new();
            plane.render_metrics(&mut out);
            db_metrics.render(&mut out);
            out
        })
    };
    let db = db::run(
        client.clone(),
        db::Settings {
            node: config.name.clone(),
            address: config.address.clone(),
            data_dir: config.data_dir.clone(),
            ports,
            backup_dir: config
                .backup_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("backups")),
            archive_interval: config.db_archive_interval,
            metrics: db_metrics,
            held: db_held.clone(),
        },
        db_kernel,
        shutdown.clone(),
    );
    let elb = elb::run(
        client.clone(),
        elb::Settings {
            node: config.name.clone(),
            address: config.address.clone(),
        },
        plane,
        health,
        shutdown.clone(),
    );
    info!(node = %info.name, zone = %info.zone, ?capacity, limits_enforced, "Agent ready.");
    let endpoint = endpoint::serve(
        listener,
        ctx.clone(),
        ctx.dirs.instances.clone(),
        config.token.clone(),
        metrics,
        stop.clone(),
    );
    let heartbeats = {
        let ctx = ctx.clone();
        node::heartbeat_loop(
            client,
            info,
            config.heartbeat,
            move || {
                let a = ctx.allocated();
                let d = *db_held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                system::Capacity {
                    cpu_millis: a.cpu_millis + d.cpu_millis,
                    memory_mib: a.memory_mib + d.memory_mib,
                }
            },
            stop,
        )
    };
    tokio::join!(
        heartbeats,
        endpoint,
        elb,
        db,
        instances::run(controller, ctx, shutdown, config.workers.max(1))
    );
    Ok(())
}

/// A cache of `kind`, started, whose every change wakes `changed` (the level-triggered loops
/// of the load balancers and the DB members look at everything again on a wake-up).
pub(crate) fn watch(
    client: &Client,
    shutdown: &Shutdown,
    kind: hanul_proto::Kind,
    changed: &Arc<tokio::sync::Notify>,
) -> hanul_controllers::runtime::Cache {
    let cache = hanul_controllers::runtime::Cache::new(Some(kind));
    cache.start(client, shutdown.clone());
    let mut events = cache.subscribe();
    let changed = changed.clone();
    tokio::spawn(async move {
        // A lagged receiver only means several changes: one wake-up covers them.
        while !matches!(
            events.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ) {
            changed.notify_one();
        }
    });
    cache
}
