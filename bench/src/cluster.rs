//! The cluster the `instances` and `asg` benchmarks run on: the real `hanul server` binary and
//! two `hanul agent` processes (two nodes in two zones, `bench-a` in az-a and `bench-b` in
//! az-b), with an image whose instances only `sleep` and a small instance type.
//!
//! Cleanup order matters: an agent that dies leaves its instances running (a new agent re-adopts
//! them), so a benchmark deletes its instances and waits for them to be gone
//! ([`Cluster::delete_all_instances`]) before the agents are killed, on success and on error
//! alike. When that cannot happen (Ctrl-C, a panic, a server that is gone), dropping the
//! [`Cluster`] kills the agents and then every process whose environment names one of the
//! benchmark's nodes (`HANUL_NODE=bench-a`), which is how the agent marks its instances.

use crate::{hanul::Hanul, process::ChildGuard};
use anyhow::{Context as _, bail};
use hanul_proto::{
    Client, Kind,
    v1::{Image, ImageSpec, InstanceType, InstanceTypeSpec, Object, ObjectMeta, object::Resource},
};
use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// The image every benchmark instance runs.
pub(crate) const IMAGE: &str = "bench-sleep";
/// The instance type every benchmark instance has.
pub(crate) const INSTANCE_TYPE: &str = "bench.tiny";
/// The node condition the agent sets to True while it heartbeats (`hanul_agent::node::READY`;
/// the bench talks to the server only, so it does not link the agent library).
const CONDITION_READY: &str = "Ready";
/// The environment variable the agent gives each instance process, naming its node.
const NODE_ENV: &str = "HANUL_NODE";

/// The two nodes: name, zone, host port range.
const NODES: [(&str, &str, &str); 2] = [
    ("bench-a", "az-a", "41000-41999"),
    ("bench-b", "az-b", "42000-42999"),
];

/// How long any one wait (nodes ready, an instance running, instances gone) may take.
pub(crate) const WAIT: Duration = Duration::from_secs(120);

pub(crate) async fn create_image_and_type(client: &Client) -> anyhow::Result<()> {
    let image = Image {
        metadata: Some(meta(IMAGE)),
        spec: Some(ImageSpec {
            command: vec!["sleep".into(), "3600".into()],
            description: "hanul-bench: an instance that only sleeps".into(),
            ..Default::default()
        }),
        status: None,
    };
    client
        .create(image.into())
        .await
        .with_context(|| format!("creating image {IMAGE}"))?;
    let instance_type = InstanceType {
        metadata: Some(meta(INSTANCE_TYPE)),
        spec: Some(InstanceTypeSpec {
            vcpu: 1,
            memory_mib: 64,
            ..Default::default()
        }),
        status: None,
    };
    client
        .create(instance_type.into())
        .await
        .with_context(|| format!("creating instance type {INSTANCE_TYPE}"))?;
    Ok(())
}

pub(crate) fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        ..Default::default()
    }
}

/// One `hanul agent` child process.
pub(crate) struct Agent {
    pub(crate) name: &'static str,
    pub(crate) zone: &'static str,
    pub(crate) child: ChildGuard,
    ports: &'static str,
    dir: tempfile::TempDir,
}

/// A SIGKILLed agent: what it takes to start it again.
struct Killed {
    name: &'static str,
    zone: &'static str,
    ports: &'static str,
    dir: tempfile::TempDir,
}

/// The server and its two agents. Dropping it kills the agents, then whatever instance processes
/// are left (see the module doc), then the server, which removes its data dir.
pub(crate) struct Cluster {
    pub(crate) client: Client,
    pub(crate) agents: Vec<Agent>,
    /// More arguments for every `hanul agent` it starts (restarts included).
    agent_args: Vec<String>,
    // Dropped after the agents (fields drop in declaration order, after `Drop::drop`).
    pub(crate) server: Hanul,
}

impl Cluster {
    pub(crate) async fn start(bin: &Path) -> anyhow::Result<Cluster> {
        Cluster::start_nodes(bin, &NODES).await
    }

    /// A server and one agent per `(name, zone, port range)`.
    pub(crate) async fn start_nodes(
        bin: &Path,
        nodes: &[(&'static str, &'static str, &'static str)],
    ) -> anyhow::Result<Cluster> {
        Cluster::start_nodes_with(bin, nodes, Vec::new()).await
    }

    /// [`Cluster::start_nodes`] with more arguments for every `hanul agent`.
    pub(crate) async fn start_nodes_with(
        bin: &Path,
        nodes: &[(&'static str, &'static str, &'static str)],
        agent_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        // The object size only matters to the store benchmark's payloads.
        let server = Hanul::start(bin, 0).await?;
        let join = server.data_dir().join("join.token");
        let client = server.client().await?;
        let mut cluster = Cluster {
            client,
            agents: Vec::new(),
            agent_args,
            server,
        };
        for &(name, zone, ports) in nodes {
            // HANUL_BENCH_KEEP=1 keeps the agents' directories (logs, members) for a look after.
            let dir = tempfile::Builder::new()
                .prefix(&format!("hanul-bench-{name}-"))
                .disable_cleanup(std::env::var_os("HANUL_BENCH_KEEP").is_some())
                .tempdir()?;
            let agent = cluster.start_agent(bin, &join, name, zone, ports, dir)?;
            cluster.agents.push(agent);
        }
        cluster.wait_nodes_ready().await?;
        Ok(cluster)
    }

    fn start_agent(
        &self,
        bin: &Path,
        join_token: &Path,
        name: &'static str,
        zone: &'static str,
        ports: &'static str,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Agent> {
        // The instances run as `nobody` and must reach their directories below this one.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.path().display()))?;
        let data = dir.path().join("data");
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args(["--server", &self.server.url])
            .arg("--join-token-file")
            .arg(join_token)
            .args(["--name", name, "--zone", zone])
            .arg("--data-dir")
            .arg(&data)
            .args(["--cpus", "400", "--memory-mib", "200000"])
            .args(["--port-range", ports, "--heartbeat", "2s"])
            .args(&self.agent_args);
        // A restarted agent writes a new log beside the old one.
        let runs = std::fs::read_dir(dir.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("agent"))
                    .count()
            })
            .unwrap_or(0);
        let log = dir.path().join(format!("agent-{runs}.log"));
        let child = ChildGuard::spawn(&format!("hanul agent {name}"), cmd, &log)?;
        Ok(Agent {
            name,
            zone,
            child,
            ports,
            dir,
        })
    }

    /// SIGKILLs the agent of node `name` (its workloads keep running) and starts a new one on
    /// the same data dir, which adopts them, once `down` has run.
    pub(crate) async fn kill_agent_while<T>(
        &mut self,
        bin: &Path,
        name: &str,
        down: impl AsyncFnOnce(&Cluster) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let i = self
            .agents
            .iter()
            .position(|a| a.name == name)
            .with_context(|| format!("no agent named {name}"))?;
        let killed = self.kill_agent_at(i);
        let result = down(self).await;
        self.start_again(bin, i, killed)?;
        result
    }

    /// SIGKILLs agent `i` (its workloads keep running); what starts it again.
    fn kill_agent_at(&mut self, i: usize) -> Killed {
        let Agent {
            name,
            zone,
            child,
            ports,
            dir,
        } = self.agents.remove(i);
        drop(child);
        Killed {
            name,
            zone,
            ports,
            dir,
        }
    }

    /// Starts a killed agent again, at its place `i`, on its data dir.
    fn start_again(&mut self, bin: &Path, i: usize, killed: Killed) -> anyhow::Result<()> {
        let join = self.server.data_dir().join("join.token");
        let Killed {
            name,
            zone,
            ports,
            dir,
        } = killed;
        let agent = self.start_agent(bin, &join, name, zone, ports, dir)?;
        self.agents.insert(i, agent);
        Ok(())
    }

    /// SIGKILLs every agent (their workloads keep running) and starts each again on its data
    /// dir with `agent_args` instead of the previous ones (later restarts too). A killed
    /// agent's DB endpoints' nftables table is removed first, so the next run starts clean
    /// whatever its `--db-endpoints`.
    pub(crate) async fn restart_agents_with(
        &mut self,
        bin: &Path,
        agent_args: Vec<String>,
    ) -> anyhow::Result<()> {
        self.agent_args = agent_args;
        for i in 0..self.agents.len() {
            let killed = self.kill_agent_at(i);
            hanul_e2e::remove_db_endpoints_table(killed.name);
            self.start_again(bin, i, killed)?;
        }
        self.wait_nodes_ready().await
    }

    /// Waits until both Node objects carry `Ready=True`.
    async fn wait_nodes_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for a in &mut self.agents {
                a.child.check_alive()?;
            }
            let (nodes, _) = self
                .client
                .list(Some(Kind::Node), "")
                .await
                .context("listing nodes")?;
            let ready: Vec<&str> = nodes
                .iter()
                .filter(|o| match &o.resource {
                    Some(Resource::Node(n)) => n.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.r#type == CONDITION_READY && c.status == "True")
                    }),
                    _ => false,
                })
                .map(Object::name)
                .collect();
            if self.agents.iter().all(|a| ready.contains(&a.name)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the nodes were not Ready after 30 s (ready: {ready:?}); the end of the \
                     agents' logs:\n{}",
                    self.agents
                        .iter()
                        .map(|a| format!("--- {}\n{}", a.name, a.child.log_tail(15)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes every instance matching `selector` and waits until they are gone (their agents
    /// stop the processes and drop the finalizer), so that no process outlives the run.
    pub(crate) async fn delete_all_instances(&self, selector: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let (left, _) = self
                .client
                .list(Some(Kind::Instance), selector)
                .await
                .context("listing the instances left")?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} instances were still there {WAIT:?} after their delete: {}",
                    left.len(),
                    left.iter()
                        .take(5)
                        .map(Object::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // Deleting again is harmless: an instance already being deleted stays so.
            for o in left
                .iter()
                .filter(|o| o.metadata().is_some_and(|m| m.deleted_at.is_none()))
            {
                let _ = self.client.delete(Kind::Instance, o.name()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agents first (their guards kill them), then what they leave behind.
        let nodes: Vec<String> = self.agents.iter().map(|a| a.name.to_string()).collect();
        self.agents.clear();
        for node in &nodes {
            hanul_e2e::remove_db_endpoints_table(node);
        }
        let killed = kill_instance_processes(&nodes);
        if !killed.is_empty() {
            eprintln!(
                "cleanup: killed {} instance processes left behind by the agents (pids {:?}{})",
                killed.len(),
                &killed[..killed.len().min(10)],
                if killed.len() > 10 { ", ..." } else { "" }
            );
        }
    }
}

/// Whether a `/proc/PID/environ` text (NUL-separated) holds one of the `wanted` variables exactly.
fn names_one_of(environ: &[u8], wanted: &[String]) -> bool {
    environ
        .split(|b| *b == 0)
        .any(|var| wanted.iter().any(|w| var == w.as_bytes()))
}

/// SIGKILLs every process whose environment has `HANUL_NODE=<one of nodes>`; returns their pids.
fn kill_instance_processes(nodes: &[String]) -> Vec<u32> {
    let wanted: Vec<String> = nodes.iter().map(|n| format!("{NODE_ENV}={n}")).collect();
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if names_one_of(&environ, &wanted) {
            // `kill(1)` rather than libc: the crate denies unsafe code.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            killed.push(pid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_exact_node_variable_marks_an_instance_process() {
        let wanted = vec!["HANUL_NODE=bench-a".to_string()];
        assert!(names_one_of(b"PATH=/bin\0HANUL_NODE=bench-a\0", &wanted));
        assert!(!names_one_of(b"HANUL_NODE=bench-ab\0", &wanted));
        assert!(!names_one_of(b"X=HANUL_NODE=bench-a\0", &wanted));
    }
}
