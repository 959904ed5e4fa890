//! hanul's node agent: registers this machine as a `Node`, renews its lease, and (next) runs the
//! instances bound to it as supervised local processes.
//!
//! Modules: [`node`] (registration and heartbeats), [`system`] (what the machine offers),
//! [`driver`] (the process driver: sessions, cgroups, logs, re-adoption after a restart).
//! The agent talks to the API server only through the gRPC client.

pub mod driver;
pub mod error;
pub mod node;
pub mod system;

pub use error::{Error, Result};

use hanul_proto::Client;
use std::{collections::HashMap, path::PathBuf, time::Duration};
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
}

/// Runs the agent until `stop` turns true.
pub async fn run(config: Config, stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
    if config.name.is_empty() || config.zone.is_empty() {
        return Err(Error::Config("the node needs a name and a zone".into()));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Read {
        what: "the data dir",
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let client = Client::connect_lazy(&config.server, &config.token).map_err(Error::Connect)?;
    let machine = system::capacity()?;
    let capacity = Capacity {
        cpu_millis: config.cpus.map(|c| c * 1000).unwrap_or(machine.cpu_millis),
        memory_mib: config.memory_mib.unwrap_or(machine.memory_mib),
    };
    let info = node::NodeInfo {
        name: config.name.clone(),
        zone: config.zone.clone(),
        address: config.address.clone(),
        capacity,
        reserved: Capacity::default(),
        port_range: config.port_range.clone(),
        agent_endpoint: String::new(),
        labels: config.labels.clone(),
        limits_enforced: false,
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
    node::heartbeat(&client, &info, Capacity::default()).await?;
    info!(node = %info.name, zone = %info.zone, ?capacity, "Agent ready.");
    node::heartbeat_loop(client, info, config.heartbeat, Capacity::default, stop).await;
    Ok(())
}
