//! `hanul-bench`: measures hanul's API server against its natural peer, etcd, on the same
//! machine, in the same run, with the same payload and concurrency, and prints the ratio.
//!
//! `store` starts the real `hanul server` binary and (with the `etcd` feature) Debian's etcd as
//! child processes on temp data dirs under the same filesystem, then for each backend in turn:
//! closed-loop durable creates at each concurrency (one acknowledged write per request), and
//! watch delivery (one watcher, a writer at a steady rate; write started → event received).
//! Each server is killed when its run ends, also on error, panic or Ctrl-C.
//!
//! `instances` measures apply → running on real agents ([`instances`]); `asg` how fast an Auto
//! Scaling group scales out and replaces a killed instance on the same kind of cluster
//! ([`asg`]); `lb` measures hanul's application load balancer against nginx as the same reverse
//! proxy ([`lb`]); `db` a DB cluster's failovers and its endpoint against pgbench direct
//! ([`db`]); `wal-archive` what archiving a WAL segment costs, plain and encrypted
//! ([`wal_archive`]).

pub mod asg;
mod cluster;
pub mod db;
pub mod hanul;
pub mod instances;
pub mod lb;
pub mod load;
pub mod payload;
pub mod process;
pub mod report;
pub mod stats;
pub mod wal_archive;

#[cfg(feature = "etcd")]
pub mod etcd;

use anyhow::Context as _;
use load::{Backend, LoadPlan, LoadResult, WatchResult};
use std::{path::PathBuf, sync::Arc};

#[derive(Debug, clap::Parser)]
#[command(name = "hanul-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Durable creates/s, create latency and watch delivery latency: hanul against etcd.
    Store(StoreArgs),
    /// Apply → running for one and for many instances on two agents, and the agents' RSS.
    Instances(instances::InstancesArgs),
    /// Requests/s and p99 through hanul's application load balancer against nginx, same
    /// backends, same wrk.
    Lb(lb::LbArgs),
    /// An Auto Scaling group on two agents: desired 0 → 100 until all are in service, and a
    /// killed instance until its replacement is in service.
    Asg(asg::AsgArgs),
    /// A multi-AZ DB cluster on three agents: failover time when the writer's PostgreSQL or
    /// its agent is killed, lost acknowledged commits, and pgbench through the writer endpoint
    /// against direct.
    Db(db::DbArgs),
    /// Archiving real WAL segments with hanul's archive script, plain and encrypted, beside
    /// the PostgreSQL docs' `cp`, against the WAL rate of a pgbench load.
    WalArchive(wal_archive::WalArchiveArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// How long each concurrency level is measured.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Load before each measured window that is not counted.
    #[arg(long, default_value = "1s")]
    pub warmup: humantime::Duration,
    /// Concurrent clients, each creating one object after another.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Connections the clients share round-robin (default: one per client).
    #[arg(long)]
    pub conns: Option<usize>,
    /// Encoded size of each object (etcd's value is the same bytes).
    #[arg(long, default_value_t = 512)]
    pub object_size: usize,
    /// Writes per second during the watch measurement.
    #[arg(long, default_value_t = 200)]
    pub watch_rate: u32,
    /// How long the watch measurement writes.
    #[arg(long, default_value = "5s")]
    pub watch_duration: humantime::Duration,
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
    #[arg(long, env = "ETCD_BIN", default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Run hanul only.
    #[arg(long)]
    pub no_etcd: bool,
    /// Skip hanul (measure etcd only).
    #[arg(long)]
    pub no_hanul: bool,
    /// Print the results as JSON (after the table, which goes to stderr then).
    #[arg(long)]
    pub json: bool,
}

/// Everything one backend measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendResult {
    pub name: String,
    pub version: String,
    pub loads: Vec<LoadResult>,
    pub watch: Option<WatchResult>,
    /// Why the watch measurement failed, if it did.
    pub watch_error: Option<String>,
    /// Server-side figures per concurrency level (hanul only): name → value.
    pub server: Vec<Vec<(String, f64)>>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Store(args) => store(args).await,
        Command::Instances(args) => instances::run(args).await,
        Command::Lb(args) => lb::run(args).await,
        Command::Asg(args) => asg::run(args).await,
        Command::Db(args) => db::run(args).await,
        Command::WalArchive(args) => wal_archive::run(args).await,
    }
}

async fn store(args: StoreArgs) -> anyhow::Result<()> {
    let machine = report::Machine::read();
    let mut out = report::Out::new(args.json);
    out.line(&machine.describe());
    out.line(&format!(
        "object: {} bytes encoded; {} per level after {} warmup; watch: {}/s for {}",
        args.object_size, args.duration, args.warmup, args.watch_rate, args.watch_duration
    ));

    let mut hanul_result = None;
    if !args.no_hanul {
        out.line(&format!("hanul: starting {}", args.hanul_bin.display()));
        let server = Arc::new(hanul::Hanul::start(&args.hanul_bin, args.object_size).await?);
        let version = hanul_version(&args.hanul_bin);
        let r = measure(&server, "hanul", &version, &args, &mut out, Some(&*server)).await?;
        hanul_result = Some(r);
    }

    let etcd_result = etcd_side(&args, &mut out).await?;
    out.table(hanul_result.as_ref(), etcd_result.as_ref());
    if args.json {
        let json = serde_json::json!({
            "machine": machine,
            "object_size": args.object_size,
            "duration_s": args.duration.as_secs_f64(),
            "hanul": hanul_result,
            "etcd": etcd_result,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

#[cfg(feature = "etcd")]
async fn etcd_side(
    args: &StoreArgs,
    out: &mut report::Out,
) -> anyhow::Result<Option<BackendResult>> {
    if args.no_etcd {
        out.line("etcd: skipped (--no-etcd)");
        return Ok(None);
    }
    out.line(&format!("etcd: starting {}", args.etcd_bin.display()));
    let server = Arc::new(etcd::Etcd::start(&args.etcd_bin, args.object_size).await?);
    let version = server.version.clone();
    let r = measure(&server, "etcd", &version, args, out, None).await?;
    Ok(Some(r))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_side(
    _args: &StoreArgs,
    out: &mut report::Out,
) -> anyhow::Result<Option<BackendResult>> {
    out.line(
        "etcd: skipped (built without the `etcd` feature: cargo build --release -p hanul-bench \
         --features etcd)",
    );
    Ok(None)
}

/// Runs every concurrency level and the watch measurement against one backend.
async fn measure<B: Backend>(
    backend: &Arc<B>,
    name: &str,
    version: &str,
    args: &StoreArgs,
    out: &mut report::Out,
    hanul: Option<&hanul::Hanul>,
) -> anyhow::Result<BackendResult> {
    let mut loads = Vec::new();
    let mut server = Vec::new();
    for &clients in &args.clients {
        let plan = LoadPlan {
            clients,
            conns: args.conns.unwrap_or(clients),
            warmup: args.warmup.into(),
            duration: args.duration.into(),
        };
        let before = match hanul {
            Some(h) => Some(h.scrape().await.context("scraping hanul's /metrics")?),
            None => None,
        };
        let r = load::run_load(backend, plan, &format!("load{clients}"))
            .await
            .with_context(|| format!("{name} with {clients} clients"))?;
        out.line(&format!(
            "{name:>5} {clients:>3} clients: {:>8.0} creates/s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
             max {:>7.2} ms  errors {}",
            r.per_second, r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms, r.errors
        ));
        if let Some(e) = &r.first_error {
            out.line(&format!("      first error: {e}"));
        }
        if let (Some(h), Some(before)) = (hanul, before) {
            let after = h.scrape().await.context("scraping hanul's /metrics")?;
            let figures = report::server_figures(&before, &after);
            out.line(&format!(
                "      server: {}",
                report::format_figures(&figures)
            ));
            server.push(figures);
        }
        loads.push(r);
    }
    let (watch, watch_error) = match load::run_watch(
        backend,
        args.watch_rate,
        args.watch_duration.into(),
        "watch",
    )
    .await
    {
        Ok(w) => {
            out.line(&format!(
                "{name:>5} watch: {} writes at {}/s, delivery p50 {:.2} ms p99 {:.2} ms max \
                 {:.2} ms (after ack p99 {:.2} ms), missed {}",
                w.writes,
                w.rate,
                w.delivery.p50_ms,
                w.delivery.p99_ms,
                w.delivery.max_ms,
                w.after_ack.p99_ms,
                w.missed
            ));
            (Some(w), None)
        }
        Err(e) => {
            out.line(&format!("{name:>5} watch: failed: {e:#}"));
            (None, Some(format!("{e:#}")))
        }
    };
    Ok(BackendResult {
        name: name.into(),
        version: version.into(),
        loads,
        watch,
        watch_error,
        server,
    })
}

fn hanul_version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
