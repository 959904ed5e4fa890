//! `hanul-bench instances`: how fast instances go from apply to `running`, and what an idle agent
//! costs in memory.
//!
//! Starts the real `hanul server` and two `hanul agent`s (zones az-a and az-b) as child
//! processes. Instances run `sleep 3600` with a 1-vCPU, 64-MiB type (the agents offer 400 vCPUs
//! each, so that capacity is not what is measured). Latency is from just before the create call
//! to the moment a watch delivers the instance with `status.state == running`: the scheduler's
//! binding, the agent's finalizer, ports and launch (fork, cgroups, exec) and the status writes.
//!
//! - one instance at a time, `--single-runs` times (each deleted before the next);
//! - `--count` instances created at once (32 creates in flight), p50/p99/max and the total from
//!   the first create to the last running; then the time to delete them all;
//! - each agent's RSS with the instances running and after they are gone (idle).

use crate::{hanul::Hanul, process::ChildGuard, report::Machine, stats::Samples};
use anyhow::{Context as _, bail};
use futures::StreamExt;
use hanul_proto::{
    Client, Kind,
    client::WatchUpdate,
    v1::{
        Image, ImageSpec, Instance, InstanceSpec, InstanceType, InstanceTypeSpec, ObjectMeta,
        object::Resource,
    },
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct InstancesArgs {
    /// Instances created at once.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// One-at-a-time launches measured.
    #[arg(long, default_value_t = 20)]
    pub single_runs: usize,
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
}

const NODES: [(&str, &str, &str); 2] = [
    ("bench-a", "az-a", "41000-41999"),
    ("bench-b", "az-b", "42000-42999"),
];

/// An agent child process with its data dir.
struct Agent {
    name: &'static str,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(
        bin: &Path,
        server: &Hanul,
        name: &'static str,
        zone: &str,
        ports: &str,
    ) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("hanul-bench-agent-")
            .tempdir()?;
        // Instances run as nobody and must reach their directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args(["--server", &server.url, "--join-token-file"])
            .arg(server.data_dir().join("join.token"))
            .args(["--name", name, "--zone", zone, "--port-range", ports])
            .args([
                "--cpus",
                "400",
                "--memory-mib",
                "200000",
                "--heartbeat",
                "2s",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        let child = ChildGuard::spawn(name, cmd, &dir.path().join("agent.log"))?;
        Ok(Agent {
            name,
            child,
            _dir: dir,
        })
    }

    /// Resident memory in MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.pid()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Agent {
    /// A killed agent leaves its instances running by design: kill what is left of them too.
    fn drop(&mut self) {
        let _ = self.child.check_alive();
        let node = format!("HANUL_NODE={}", self.name);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == node.as_bytes()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn instance(name: &str) -> hanul_proto::v1::Object {
    Instance {
        metadata: meta(name),
        spec: Some(InstanceSpec {
            image: "bench-sleep".into(),
            instance_type: "bench.tiny".into(),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// When each instance was first seen running, and on which node; fed by one watch.
#[derive(Default)]
struct Seen {
    running: HashMap<String, (Instant, String)>,
    gone: HashMap<String, Instant>,
}

fn watch(client: Client, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(client.list_watch(Some(Kind::Instance), ""));
        while let Some(update) = stream.next().await {
            let at = Instant::now();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let mut note = |o: &hanul_proto::v1::Object| {
                if let Some(Resource::Instance(i)) = &o.resource
                    && let Some(s) = &i.status
                    && s.state == "running"
                {
                    seen.running
                        .entry(o.name().to_string())
                        .or_insert((at, s.node.clone()));
                }
            };
            match update {
                WatchUpdate::Listed { items, .. } => items.iter().for_each(&mut note),
                WatchUpdate::Event(ev) => {
                    let deleted = ev.r#type() == hanul_proto::v1::EventType::Deleted;
                    if let Some(o) = &ev.object {
                        if deleted {
                            seen.gone.insert(o.name().to_string(), at);
                        } else {
                            note(o);
                        }
                    }
                }
                WatchUpdate::Error(_) => {}
            }
        }
    })
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn lock(s: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

pub async fn run(args: InstancesArgs) -> anyhow::Result<()> {
    println!("{}", Machine::read().describe());
    let server = Hanul::start(&args.hanul_bin, 0).await?;
    let mut agents = Vec::new();
    for (name, zone, ports) in NODES {
        agents.push(Agent::start(&args.hanul_bin, &server, name, zone, ports)?);
    }
    let client = server.client().await?;
    wait_for_nodes(&client, &mut agents).await?;
    client
        .create(
            Image {
                metadata: meta("bench-sleep"),
                spec: Some(ImageSpec {
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                status: None,
            }
            .into(),
        )
        .await?;
    client
        .create(
            InstanceType {
                metadata: meta("bench.tiny"),
                spec: Some(InstanceTypeSpec {
                    vcpu: 1,
                    memory_mib: 64,
                    ..Default::default()
                }),
                status: None,
            }
            .into(),
        )
        .await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watcher = watch(client.clone(), seen.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. One at a time.
    let mut single = Samples::default();
    for n in 0..args.single_runs {
        let name = format!("single-{n}");
        let t0 = Instant::now();
        client.create(instance(&name)).await?;
        wait_for(&format!("{name} running"), Duration::from_secs(30), || {
            lock(&seen).running.contains_key(&name)
        })
        .await?;
        single.push(lock(&seen).running[&name].0 - t0);
        client.delete(Kind::Instance, &name).await?;
        wait_for(&format!("{name} gone"), Duration::from_secs(30), || {
            lock(&seen).gone.contains_key(&name)
        })
        .await?;
    }
    let single = single.summary();
    println!(
        "one instance, apply → running ({} runs): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        single.count, single.p50_ms, single.p99_ms, single.max_ms
    );

    // 2. Many at once.
    let names: Vec<String> = (0..args.count).map(|n| format!("many-{n}")).collect();
    let started = Instant::now();
    let t0s: Vec<(String, Instant)> = futures::stream::iter(names.clone())
        .map(|name| {
            let client = client.clone();
            async move {
                let t0 = Instant::now();
                client.create(instance(&name)).await.map(|_| (name, t0))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let created = started.elapsed();
    wait_for(
        &format!("{} instances running", args.count),
        Duration::from_secs(120),
        || {
            let s = lock(&seen);
            names.iter().all(|n| s.running.contains_key(n))
        },
    )
    .await?;
    let (mut many, last, mut per_node) = (Samples::default(), started, HashMap::new());
    let mut last = last;
    {
        let s = lock(&seen);
        for (name, t0) in &t0s {
            let (at, node) = &s.running[name];
            many.push(*at - *t0);
            last = last.max(*at);
            *per_node.entry(node.clone()).or_insert(0usize) += 1;
        }
    }
    let total = last - started;
    let many = many.summary();
    let mut rss_busy = Vec::new();
    for a in &agents {
        rss_busy.push((a.name, a.rss_mib()?));
    }
    println!(
        "{} instances at once: creates took {:.0} ms; apply → running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; all running after {:.0} ms",
        args.count,
        ms(created),
        many.p50_ms,
        many.p99_ms,
        many.max_ms,
        ms(total)
    );
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort();
    println!("placement: {nodes:?}");

    // 3. Delete them all (the stop path: SIGTERM, cgroup cleanup, directory removal).
    let started = Instant::now();
    futures::stream::iter(names.clone())
        .map(|name| {
            let client = client.clone();
            async move { client.delete(Kind::Instance, &name).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    wait_for("every instance gone", Duration::from_secs(120), || {
        let s = lock(&seen);
        names.iter().all(|n| s.gone.contains_key(n))
    })
    .await?;
    println!(
        "{} deletes until all gone (processes stopped, directories removed): {:.0} ms",
        args.count,
        ms(started.elapsed())
    );

    // 4. Idle agents.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut idle_max: f64 = 0.0;
    for (a, (_, busy)) in agents.iter().zip(&rss_busy) {
        let idle = a.rss_mib()?;
        idle_max = idle_max.max(idle);
        println!(
            "agent {}: RSS {:.1} MiB with {} instances running, {:.1} MiB idle",
            a.name,
            busy,
            args.count / agents.len(),
            idle
        );
    }
    println!();
    println!(
        "targets: one instance p99 < 200 ms: {:.1} ms {}; {} instances all running < 5 s: {:.2} s {}; idle agent < 20 MiB RSS: {:.1} MiB {}",
        single.p99_ms,
        verdict(single.p99_ms < 200.0),
        args.count,
        total.as_secs_f64(),
        verdict(total < Duration::from_secs(5)),
        idle_max,
        verdict(idle_max < 20.0)
    );
    watcher.abort();
    Ok(())
}

async fn wait_for_nodes(client: &Client, agents: &mut [Agent]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for a in agents.iter_mut() {
            a.child.check_alive()?;
        }
        let (nodes, _) = client.list(Some(Kind::Node), "").await?;
        let ready = nodes
            .iter()
            .filter(|o| match &o.resource {
                Some(Resource::Node(n)) => n.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "True")
                }),
                _ => false,
            })
            .count();
        if ready == agents.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agents' nodes did not become Ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
