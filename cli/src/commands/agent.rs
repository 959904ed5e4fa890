//! `hanul agent`: a node agent that joins a hanul server.

use anyhow::Context as _;
use std::{collections::HashMap, path::PathBuf, time::Duration};

/// How long `hanul agent` waits for the agent's loops after SIGTERM or Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Runs a node agent.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The API server's URL.
    #[arg(long, env = "HANUL_SERVER", default_value = "http://127.0.0.1:7443")]
    pub server: String,
    /// The join token file (the server writes join.token in its data dir).
    #[arg(long = "join-token-file", value_name = "FILE")]
    pub join_token_file: PathBuf,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The availability zone of this machine.
    #[arg(long)]
    pub zone: String,
    /// Where the agent keeps its state and the instances' directories.
    #[arg(long, default_value = "/var/lib/hanul-agent")]
    pub data_dir: PathBuf,
    /// The address other machines reach this node's workloads on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Host ports given to instance ports.
    #[arg(long, default_value = "30000-32767")]
    pub port_range: String,
    /// vCPUs to offer (default: all of the machine's).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory to offer in MiB (default: all of the machine's).
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Node labels, KEY=VALUE, repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// How often the agent renews its lease.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub heartbeat: Duration,
    /// The port of the agent's endpoint (instance metadata, logs); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub endpoint_port: u16,
    /// How long a stopping instance gets between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub stop_grace: Duration,
    /// Instances started, stopped or terminated at once.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Threads that serve load balancer traffic (as nginx's worker_processes); 0: one per core.
    #[arg(long, default_value_t = 0)]
    pub lb_workers: usize,
    /// Where DB clusters' WAL archives and snapshots go (default: DATA_DIR/backups). Agents
    /// of one cluster on several machines need the same directory (a shared mount).
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// How often a DB writer with new WAL closes its WAL file for the archive: point-in-time
    /// restore reaches up to about this long ago.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub db_archive_interval: Duration,
    /// How this host's own clients reach the DB endpoints placed here: `kernel` (nftables
    /// DNAT straight to the member, no userspace hop; the agent does not start without nft),
    /// `proxy` (the userspace proxy, as remote clients always do), or `auto` (kernel when nft
    /// can be used, else proxy).
    #[arg(long, default_value = "auto", value_name = "auto|kernel|proxy")]
    pub db_endpoints: hanul_agent::db::EndpointMode,
}

/// This machine's host name: the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

impl Args {
    /// The agent library's configuration.
    pub fn config(&self) -> anyhow::Result<hanul_agent::Config> {
        let token = std::fs::read_to_string(&self.join_token_file)
            .with_context(|| format!("reading the join token {}", self.join_token_file.display()))?
            .trim()
            .to_string();
        let mut labels = HashMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(hanul_agent::Config {
            server: self.server.clone(),
            token,
            name: self.name.clone().unwrap_or_else(hostname),
            zone: self.zone.clone(),
            data_dir: self.data_dir.clone(),
            address: self.address.clone(),
            port_range: self.port_range.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            labels,
            heartbeat: self.heartbeat,
            endpoint_port: self.endpoint_port,
            stop_grace: self.stop_grace,
            workers: self.workers,
            lb_workers: self.lb_workers,
            backup_dir: self.backup_dir.clone(),
            db_archive_interval: self.db_archive_interval,
            db_endpoints: self.db_endpoints,
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut agent = tokio::spawn(hanul_agent::run(config, rx));
    tokio::select! {
        r = &mut agent => r.context("agent task panicked")??,
        _ = super::server::shutdown_signal() => {
            let _ = tx.send(true);
            // Its loops finish what a stop must do (the DB endpoints' nftables rules go);
            // the workloads keep running either way.
            if tokio::time::timeout(STOP_GRACE, agent).await.is_err() {
                tracing::warn!("The agent did not stop within {STOP_GRACE:?}; exiting anyway.");
            }
        }
    }
    Ok(())
}
