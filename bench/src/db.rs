//! `hanul-bench db`: managed PostgreSQL failover and endpoint overhead.
//!
//! A `multiAZCluster` (writer and two synchronous standbys, one per zone) on three agents
//! (zones az-a, az-b, az-c), with the default lease. Then:
//! - pgbench (TPC-B-like, `-c N -j 2 -T D`) through the writer endpoint and directly to the
//!   writer's PostgreSQL, back to back: the endpoint's TPS as a fraction of direct. pgbench
//!   runs on the endpoints' host, so with the agents' `--db-endpoints auto` (the default) or
//!   `kernel` its connections take the kernel path (nftables DNAT), with `proxy` the userspace
//!   proxy; `--db-endpoints proxy,kernel` measures one after the other (the agents are
//!   restarted between), and the report says which path each run took (the endpoints agent's
//!   `/metrics`);
//! - a client that commits one row at a time through the writer endpoint, all along, and
//!   records every commit PostgreSQL acknowledged (a commit answered with a warning does not
//!   count);
//! - `--kills` times: SIGKILL of the writer's PostgreSQL (its whole process group); failover
//!   time is from the kill to the first commit acknowledged through the writer endpoint by
//!   another member. After each, the cluster is left to heal (the old writer rejoins and
//!   streams) before the next kill;
//! - `--agent-kills` times: SIGKILL of the writer's agent (its PostgreSQL keeps running: the agent
//!   is lost, not the database), same measure; the agent is started again afterwards and its
//!   member rejoins;
//! - at the end, every acknowledged commit is looked for on the last writer.
//!
//! The endpoint's peer is HAProxy in TCP mode in front of the same writer, run in the same
//! pgbench round. For failover there is no peer on this machine; RDS documents 60–120 s for a Multi-AZ
//! instance failover and under 35 s for a Multi-AZ cluster.

use crate::cluster::Cluster;
use crate::process::ChildGuard;
use crate::report::Machine;
use crate::stats::Samples;
use anyhow::{Context as _, bail};
use hanul_e2e::pg::{ACKED_TABLE, AckedWriter, conninfo, execute, missing};
use hanul_proto::{
    Client, Kind,
    v1::{
        DbCluster, DbClusterSpec, DbClusterStatus, FailoverSettings, Object, ObjectMeta,
        object::Resource,
    },
};
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

const NODES: [(&str, &str, &str); 3] = [
    ("bench-db-a", "az-a", "43000-43099"),
    ("bench-db-b", "az-b", "43100-43199"),
    ("bench-db-c", "az-c", "43200-43299"),
];
const CLUSTER: &str = "bench";
const PASSWORD: &str = "bench-password";
const WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
    /// Failovers with the writer's PostgreSQL killed.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Failovers with the writer's agent killed.
    #[arg(long, default_value_t = 20)]
    pub agent_kills: usize,
    /// The writer's lease in seconds (the cluster's failover.leaseSeconds).
    #[arg(long, default_value_t = 3)]
    pub lease_seconds: u32,
    /// How long each pgbench run lasts.
    #[arg(long, default_value = "20s")]
    pub pgbench_duration: humantime::Duration,
    #[arg(long, default_value_t = 8)]
    pub pgbench_clients: u32,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// The peer proxy for the endpoint's pgbench run (Debian's haproxy).
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    pub haproxy_bin: PathBuf,
    /// The agents' `--db-endpoints` (auto, kernel or proxy); several, comma-separated, run the
    /// endpoint's pgbench once per mode, restarting the agents in between (the failovers run
    /// with the last).
    #[arg(long, default_value = "auto", value_delimiter = ',', value_parser = ["auto", "kernel", "proxy"])]
    pub db_endpoints: Vec<String>,
}

fn agent_args(mode: &str) -> Vec<String> {
    vec!["--db-endpoints".into(), mode.into()]
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    println!("{}", Machine::read().describe());
    let first = args.db_endpoints.first().map_or("auto", String::as_str);
    let mut cluster = Cluster::start_nodes_with(&args.hanul_bin, &NODES, agent_args(first)).await?;
    let result = measure(&args, &mut cluster).await;
    // Stop the members before the agents go, so no PostgreSQL outlives the run.
    let _ = cluster.client.delete(Kind::DbCluster, CLUSTER).await;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match cluster.client.list(Some(Kind::DbInstance), "").await {
            Ok((left, _)) if left.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    result
}

async fn measure(args: &DbArgs, cluster: &mut Cluster) -> anyhow::Result<()> {
    let client = cluster.client.clone();
    let port = free_port_pair()?;
    let db = DbCluster {
        metadata: Some(ObjectMeta {
            name: CLUSTER.into(),
            ..Default::default()
        }),
        spec: Some(DbClusterSpec {
            deployment: "multiAZCluster".into(),
            zones: NODES.iter().map(|n| n.1.to_owned()).collect(),
            port: Some(port.into()),
            database_name: "bench".into(),
            master_password: PASSWORD.into(),
            failover: Some(FailoverSettings {
                automatic: Some(true),
                lease_seconds: Some(args.lease_seconds),
            }),
            ..Default::default()
        }),
        status: None,
    };
    client
        .create(db.into())
        .await
        .context("creating the DB cluster")?;
    let created = Instant::now();
    let status = wait_healthy(&client, 1).await?;
    println!(
        "cluster {CLUSTER}: multiAZCluster, 3 members in az-a/az-b/az-c, lease {} s; available with both standbys synchronous after {:.1} s",
        args.lease_seconds,
        created.elapsed().as_secs_f64()
    );
    let endpoints = status.endpoints.clone().unwrap_or_default();
    let writer_ep = endpoints.writer.clone();
    let info = |address: &str| conninfo(address, "postgres", PASSWORD, "bench");
    execute(&info(&writer_ep), ACKED_TABLE, Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;

    // pgbench through the endpoint (once per --db-endpoints mode) and direct.
    pgbench(args, &writer_ep, &["-i", "-s", "10", "-q"]).await?;
    let duration = args.pgbench_duration.as_secs().to_string();
    let clients = args.pgbench_clients.to_string();
    let run = ["-c", &clients, "-j", "2", "-T", &duration, "-n"];
    let mut via_modes = Vec::new();
    for (i, mode) in args.db_endpoints.iter().enumerate() {
        if i > 0 {
            cluster
                .restart_agents_with(&args.hanul_bin, agent_args(mode))
                .await?;
            wait_healthy(&client, 0).await?;
        }
        // pgbench opens its connections once: the endpoint's path must be settled first.
        let path = settled_path(&client, mode).await?;
        execute(&info(&writer_ep), "SELECT 1", Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        let t = tps(&pgbench(args, &writer_ep, &run).await?)?;
        via_modes.push((mode.clone(), path, t));
    }
    let status = wait_healthy(&client, 0).await?;
    let direct = member_address(&client, &status.writer).await?;
    // The natural peer: HAProxy as a TCP proxy to the same writer, with as many threads.
    let haproxy = match start_haproxy(args, &direct) {
        Ok((guard, dir, address)) => {
            let t = tps(&pgbench(args, &address, &run).await?)?;
            drop(guard);
            drop(dir);
            Some(t)
        }
        Err(e) => {
            println!("HAProxy not run: {e:#}");
            None
        }
    };
    let straight = tps(&pgbench(args, &direct, &run).await?)?;
    println!("pgbench -c {clients} -j 2 -T {duration} (scale 10): direct {straight:.0} TPS");
    for (mode, path, via) in &via_modes {
        println!(
            "  writer endpoint, agents --db-endpoints {mode} ({path}): {via:.0} TPS, ratio {:.2}{}",
            via / straight,
            haproxy.map_or(String::new(), |h| format!("; / HAProxy {:.2}", via / h))
        );
    }
    if let Some(h) = haproxy {
        println!(
            "  HAProxy (TCP mode, nbthread {}) to the same writer: {h:.0} TPS, ratio {:.2}",
            threads(),
            h / straight,
        );
    }
    if args.db_endpoints.len() > 1 {
        println!(
            "failovers below with agents --db-endpoints {}",
            args.db_endpoints.last().map_or("auto", String::as_str)
        );
    }

    let (writer, thread) = AckedWriter::start(info(&writer_ep), 1);
    let mut crash = Vec::new();
    let mut lost_agent = Vec::new();
    for i in 0..args.kills {
        let status = wait_healthy(&client, 0).await?;
        let pid = member_pid(&client, &status.writer).await?;
        let port = member_port(&client, &status.writer).await?;
        let t0 = Instant::now();
        // The whole server: the postmaster leads its own process group, with every backend.
        let killed = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()?;
        if !killed.success() {
            bail!("could not kill the writer's postgres (pid {pid})");
        }
        let (dt, phases) = first_ack_in_phases(&client, &writer, t0, port, status.epoch).await?;
        let after = wait_healthy(&client, status.epoch + 1).await?;
        println!(
            "postgres kill {}: {} (pid {pid}) → first commit after {:.0} ms ({phases}); {}",
            i + 1,
            status.writer,
            dt.as_secs_f64() * 1000.0,
            moves(&client, &status, &after).await
        );
        crash.push(dt);
    }
    for i in 0..args.agent_kills {
        let status = wait_healthy(&client, 0).await?;
        let node = member_node(&client, &status.writer).await?;
        let port = member_port(&client, &status.writer).await?;
        let bin = args.hanul_bin.clone();
        let (dt, phases) = cluster
            .kill_agent_while(&bin, &node, async |_| {
                let t0 = Instant::now();
                first_ack_in_phases(&client, &writer, t0, port, status.epoch).await
            })
            .await?;
        let after = wait_healthy(&client, status.epoch + 1).await?;
        println!(
            "agent kill {}: {} on {node} → first commit after {:.0} ms ({phases}); {}",
            i + 1,
            status.writer,
            dt.as_secs_f64() * 1000.0,
            moves(&client, &status, &after).await
        );
        lost_agent.push(dt);
    }
    writer.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let acked = writer.acked();
    let status = wait_healthy(&client, 0).await?;
    let endpoints = status.endpoints.clone().unwrap_or_default();
    let lost = missing(&info(&endpoints.writer), &acked)
        .await
        .map_err(anyhow::Error::msg)?;

    println!();
    println!(
        "| failover (kill → first commit through the writer endpoint) | runs | p50 ms | p99 ms | max ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, runs) in [
        ("writer's PostgreSQL SIGKILLed", &crash),
        ("writer's agent SIGKILLed", &lost_agent),
    ] {
        let mut samples = Samples::default();
        for d in runs.iter() {
            samples.push(*d);
        }
        let s = samples.summary();
        println!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} |",
            s.count, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    println!(
        "acknowledged commits: {}, lost: {}, attempts that failed (not acknowledged): {}",
        acked.len(),
        lost.len(),
        writer.failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    if !lost.is_empty() {
        bail!(
            "{} acknowledged commits were lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    }
    Ok(())
}

/// The path local clients of the writer endpoint take, from the endpoints agent's
/// `/metrics`, once it is settled: in `kernel` and `auto` modes, until the kernel steers the
/// endpoints (or, in `auto`, says it cannot); "kernel path" or "userspace proxy".
async fn settled_path(client: &Client, mode: &str) -> anyhow::Result<&'static str> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        let status = cluster_status(client).await?;
        let node = status.endpoints.map(|e| e.node).unwrap_or_default();
        let endpoint = match client.get(Kind::Node, &node).await.map(|o| o.resource) {
            Ok(Some(Resource::Node(n))) => n.spec.unwrap_or_default().agent_endpoint,
            _ => String::new(),
        };
        let port: Option<u16> = endpoint.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        if let Some(port) = port {
            let body = tokio::task::spawn_blocking(move || {
                hanul_e2e::request(port, "/metrics", &[]).map(|r| r.body)
            })
            .await?
            .unwrap_or_default();
            let value = |name: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            let (path, steered) = (
                value("hanul_db_endpoints_kernel_path"),
                value("hanul_db_endpoints_kernel_steered"),
            );
            match (path, steered) {
                (Some(p), Some(s)) if p == 1.0 && s >= 2.0 => return Ok("kernel path"),
                (Some(p), _) if p == 0.0 && mode != "kernel" => return Ok("userspace proxy"),
                _ => last = format!("{node}: kernel_path {path:?}, steered {steered:?}"),
            }
        }
        if Instant::now() > deadline {
            bail!("the writer endpoint's path did not settle within 30 s ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_status(client: &Client) -> anyhow::Result<DbClusterStatus> {
    let o = client.get(Kind::DbCluster, CLUSTER).await?;
    match o.resource {
        Some(Resource::DbCluster(c)) => Ok(c.status.unwrap_or_default()),
        _ => bail!("{CLUSTER} is not a DBCluster"),
    }
}

/// Waits until the cluster is available (in an epoch of at least `epoch`), every member is
/// available and both standbys are synchronous again.
/// Where the writer and the endpoints went in a failover: `writer node-a → node-b,
/// endpoints node-b → node-c` (a failover that moves the endpoints too may take longer).
async fn moves(client: &Client, before: &DbClusterStatus, after: &DbClusterStatus) -> String {
    let node_of = async |s: &DbClusterStatus| {
        member_node(client, &s.writer)
            .await
            .unwrap_or_else(|_| "?".into())
    };
    let ep = |s: &DbClusterStatus| s.endpoints.clone().unwrap_or_default().node;
    format!(
        "writer {} → {}, endpoints {} → {}",
        node_of(before).await,
        node_of(after).await,
        ep(before),
        ep(after)
    )
}

async fn wait_healthy(client: &Client, epoch: u64) -> anyhow::Result<DbClusterStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = cluster_status(client).await?;
        let all = s.members.len() == 3 && s.members.iter().all(|m| m.state == "available");
        if s.phase == "available" && s.epoch >= epoch && all && s.sync_standbys.len() == 2 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the cluster did not heal within {WAIT:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn member(client: &Client, name: &str) -> anyhow::Result<Object> {
    Ok(client.get(Kind::DbInstance, name).await?)
}

async fn member_address(client: &Client, name: &str) -> anyhow::Result<String> {
    match member(client, name).await?.resource {
        Some(Resource::DbInstance(m)) => Ok(m.status.unwrap_or_default().address),
        _ => bail!("{name} is not a DBInstance"),
    }
}

async fn member_pid(client: &Client, name: &str) -> anyhow::Result<i64> {
    match member(client, name).await?.resource {
        Some(Resource::DbInstance(m)) => Ok(m.status.unwrap_or_default().pid),
        _ => bail!("{name} is not a DBInstance"),
    }
}

async fn member_node(client: &Client, name: &str) -> anyhow::Result<String> {
    match member(client, name).await?.resource {
        Some(Resource::DbInstance(m)) => Ok(m.spec.unwrap_or_default().node),
        _ => bail!("{name} is not a DBInstance"),
    }
}

async fn member_port(client: &Client, name: &str) -> anyhow::Result<u16> {
    let address = member_address(client, name).await?;
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("{name}'s address {address:?} has no port"))
}

/// How long after `t0` the first commit was acknowledged by another server than the killed
/// writer (listening on `old_port`): the old writer's backends may still finish a commit in
/// flight, and a writer whose agent is lost keeps committing until its standbys leave it.
/// The failover's phases as the cluster's status shows them, polled every 10 ms from `t0`
/// (the kill) until the first commit: when a failover past `epoch` appeared (the writer's
/// loss detected) and when the new writer was named.
#[derive(Debug, Default)]
struct Phases {
    detected: Option<Duration>,
    named: Option<Duration>,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or("?".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        };
        write!(
            f,
            "detected at {} ms, writer named at {} ms",
            ms(self.detected),
            ms(self.named)
        )
    }
}

/// [`first_ack`], with the [`Phases`] seen meanwhile.
async fn first_ack_in_phases(
    client: &Client,
    writer: &AckedWriter,
    t0: Instant,
    old_port: u16,
    epoch: u64,
) -> anyhow::Result<(Duration, Phases)> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let watch = async {
        let mut p = Phases::default();
        while !done.load(std::sync::atomic::Ordering::Relaxed) && p.named.is_none() {
            if let Ok(s) = cluster_status(client).await {
                if p.detected.is_none() && (s.failover.is_some() || s.epoch > epoch) {
                    p.detected = Some(t0.elapsed());
                }
                if s.epoch > epoch {
                    p.named = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p
    };
    let ack = async {
        let r = first_ack(writer, t0, old_port).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    };
    let (r, p) = tokio::join!(ack, watch);
    Ok((r?, p))
}

async fn first_ack(writer: &AckedWriter, t0: Instant, old_port: u16) -> anyhow::Result<Duration> {
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if let Some(at) = writer.first_ack_after(t0, old_port) {
            return Ok(at - t0);
        }
        if Instant::now() > deadline {
            bail!("no commit was acknowledged within 60 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn pgbench(args: &DbArgs, address: &str, extra: &[&str]) -> anyhow::Result<String> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address} is not host:port"))?;
    let out = tokio::process::Command::new(args.pg_bin.join("pgbench"))
        .args(["-h", host, "-p", port, "-U", "postgres"])
        .args(extra)
        .arg("bench")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .await
        .context("running pgbench")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("pgbench {extra:?} against {address} failed:\n{text}");
    }
    Ok(text)
}

/// pgbench's "tps = N (without initial connection time)".
fn tps(output: &str) -> anyhow::Result<f64> {
    output
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .with_context(|| format!("no tps in pgbench's output:\n{output}"))
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// HAProxy in TCP mode in front of `target`, in the foreground; its guard kills it.
fn start_haproxy(
    args: &DbArgs,
    target: &str,
) -> anyhow::Result<(ChildGuard, tempfile::TempDir, String)> {
    let dir = tempfile::Builder::new()
        .prefix("hanul-bench-haproxy-")
        .tempdir()?;
    let port = crate::process::free_port()?;
    let config = format!(
        "global\n  nbthread {}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten pg\n  bind 127.0.0.1:{port}\n  server writer {target}\n",
        threads()
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&args.haproxy_bin);
    cmd.arg("-db").arg("-f").arg(&path);
    let mut guard = ChildGuard::spawn("haproxy", cmd, &dir.path().join("haproxy.log"))?;
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        guard.check_alive()?;
        if Instant::now() > deadline {
            bail!("haproxy did not listen on {address}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, dir, address))
}

fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no two free consecutive ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_output() {
        let out = "latency average = 3.1 ms\ntps = 2571.441366 (without initial connection time)\n";
        assert!((tps(out).unwrap() - 2571.441366).abs() < 1e-6);
        assert!(tps("nothing").is_err());
    }
}
