//! End-to-end tests of managed PostgreSQL: `hanul server` and one agent per zone as separate
//! processes, DB clusters whose members are real PostgreSQL 15 servers with real streaming
//! replication, endpoints that carry real PostgreSQL connections, and failovers caused by
//! really killing a writer's PostgreSQL or its agent.

use hanul_e2e::pg::{ACKED_TABLE, AckedWriter, conninfo, execute, missing, query_one};
use hanul_e2e::{AgentProcess, ServerProcess, poll, write_manifest};
use serde_json::Value;
use std::net::TcpListener;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "e2e-secret-pw";
const SQL: Duration = Duration::from_secs(10);

struct Lab {
    server: ServerProcess,
    /// (zone, agent); `None` while it is down.
    agents: Vec<(String, Option<AgentProcess>)>,
    dirs: Vec<Option<tempfile::TempDir>>,
    manifests: tempfile::TempDir,
    tag: String,
    rt: tokio::runtime::Runtime,
    /// More arguments for every `hanul agent`.
    agent_args: Vec<String>,
}

impl Lab {
    fn start(tag: &str, zones: &[&str]) -> Lab {
        Lab::start_with(tag, zones, Vec::new())
    }

    fn start_with(tag: &str, zones: &[&str], agent_args: Vec<String>) -> Lab {
        let server =
            ServerProcess::start_in(tempfile::tempdir().unwrap(), &["--node-grace-period", "3s"])
                .unwrap();
        let mut lab = Lab {
            server,
            agents: Vec::new(),
            dirs: Vec::new(),
            manifests: tempfile::tempdir().unwrap(),
            tag: tag.into(),
            rt: tokio::runtime::Runtime::new().unwrap(),
            agent_args,
        };
        for z in zones {
            let node = lab.node(z);
            let dir = AgentProcess::data_dir().unwrap();
            let agent =
                AgentProcess::start_with(&lab.server, &node, z, 16, 16384, dir, &lab.agent_args)
                    .unwrap();
            lab.server.wait_node_ready(&node, WAIT);
            lab.agents.push((z.to_string(), Some(agent)));
            lab.dirs.push(None);
        }
        lab
    }

    fn node(&self, zone: &str) -> String {
        format!("n{}-{}-{zone}", std::process::id(), self.tag)
    }

    /// Another node in `zone` with `cpus` and `memory_mib` to offer, Ready: its name (the
    /// zone's node name and `suffix`) and its agent, which runs while it is held.
    fn extra_node(
        &self,
        suffix: &str,
        zone: &str,
        cpus: u32,
        memory_mib: u64,
    ) -> (String, AgentProcess) {
        let name = format!("{}-{suffix}", self.node(zone));
        let agent = AgentProcess::start(&self.server, &name, zone, cpus, memory_mib).unwrap();
        self.server.wait_node_ready(&name, WAIT);
        (name, agent)
    }

    /// Runs `hanul ARGS`, which must succeed (else the test fails with its output and the
    /// lab's logs).
    fn cli_ok(&self, args: &[&str]) {
        let out = self.server.cli(args);
        assert_eq!(
            out.code,
            0,
            "hanul {args:?}\n{}\n{}\n{}",
            out.stdout,
            out.stderr,
            self.logs()
        );
    }

    fn apply(&self, name: &str, yaml: &str) {
        let f = write_manifest(self.manifests.path(), name, yaml);
        self.server.cli(&["apply", "-f", &f]).ok();
    }

    fn cluster(&self, name: &str) -> Value {
        self.server.get_json(&format!("dbcluster/{name}")).unwrap()
    }

    fn member(&self, name: &str) -> Value {
        self.server.get_json(&format!("dbinstance/{name}")).unwrap()
    }

    /// Waits until `cluster`'s latest restorable time (how far its WAL archive reaches) is
    /// past `t` (seconds since the epoch).
    fn wait_restorable_past(&self, cluster: &str, t: f64) {
        poll(
            WAIT,
            &format!("the latest restorable time of {cluster} past {t}"),
            || {
                let s = &self.cluster(cluster)["status"];
                let latest = seconds_of(&s["latestRestorableTime"]).unwrap_or(0.0);
                if latest > t {
                    Ok(Some(()))
                } else {
                    Err(s.to_string())
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Waits until the cluster is available in an epoch of at least `epoch`, with `members`
    /// members available and `sync` synchronous standbys; returns its status.
    fn wait_available(&self, name: &str, epoch: u64, members: usize, sync: usize) -> Value {
        poll(WAIT, &format!("{name} available in epoch {epoch}"), || {
            let c = self.cluster(name);
            let s = &c["status"];
            let available = s["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["state"] == "available")
                .count();
            let synced = s["syncStandbys"].as_array().map_or(0, Vec::len);
            let ok = s["phase"] == "available"
                && epoch_of(&c) >= epoch
                && available >= members
                && synced >= sync;
            if ok {
                Ok(Some(s.clone()))
            } else {
                Err(s.to_string())
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Runs `sql` once the endpoint at `address` takes it: right after the cluster turns
    /// available, the agent running the endpoints may not have seen it yet.
    fn sql_eventually(&self, address: &str, sql: &str) {
        poll(
            Duration::from_secs(20),
            &format!("{sql} through {address}"),
            || self.sql(address, sql).map(Some),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn sql(&self, address: &str, sql: &str) -> Result<(), String> {
        self.rt.block_on(execute(
            &conninfo(address, "postgres", PASSWORD, "app"),
            sql,
            SQL,
        ))
    }

    fn query(&self, address: &str, sql: &str) -> Result<String, String> {
        self.rt.block_on(query_one(
            &conninfo(address, "postgres", PASSWORD, "app"),
            sql,
            SQL,
        ))
    }

    /// `count/max` of table `t` through `endpoint`, once the endpoint answers.
    fn rows_of_t(&self, endpoint: &str) -> String {
        poll(
            Duration::from_secs(20),
            &format!("rows of t through {endpoint}"),
            || {
                Ok(self
                    .query(endpoint, "SELECT count(*) || '/' || max(n) FROM t")
                    .ok())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// SIGKILLs the agent of `node`, keeping its data dir for a restart.
    fn kill_agent(&mut self, node: &str) {
        let i = self
            .agents
            .iter()
            .position(|(z, _)| self.node(z) == node)
            .expect("an agent of that node");
        let agent = self.agents[i].1.take().expect("agent running");
        self.dirs[i] = Some(agent.kill());
    }

    fn restart_agents(&mut self) {
        for i in 0..self.agents.len() {
            if let Some(dir) = self.dirs[i].take() {
                let zone = self.agents[i].0.clone();
                let node = self.node(&zone);
                let agent = AgentProcess::start_with(
                    &self.server,
                    &node,
                    &zone,
                    16,
                    16384,
                    dir,
                    &self.agent_args,
                )
                .unwrap();
                self.agents[i].1 = Some(agent);
            }
        }
    }

    /// Whether the agent serving `cluster`'s endpoints gives local clients the kernel path
    /// (its `/metrics`), once it says.
    fn kernel_path(&self, cluster: &str) -> bool {
        let node = self.cluster(cluster)["status"]["endpoints"]["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n = self.server.get_json(&format!("node/{node}")).unwrap();
        let endpoint = n["spec"]["agentEndpoint"].as_str().unwrap_or_default();
        let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        poll(
            Duration::from_secs(20),
            "the endpoints' path metric",
            || {
                let body = hanul_e2e::request(port, "/metrics", &[])?.body;
                Ok(body
                    .lines()
                    .find_map(|l| l.strip_prefix("hanul_db_endpoints_kernel_path "))
                    .map(|v| v.trim() == "1"))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        let mut out = format!("--- server\n{}", tail(&self.server.log_text(), 40));
        for (zone, a) in &self.agents {
            if let Some(a) = a {
                out += &format!("\n--- agent {zone}\n{}", tail(&a.log_text(), 80));
                let members = std::fs::read_dir(a.data_dir.path().join("db"))
                    .into_iter()
                    .flatten()
                    .flatten();
                for m in members {
                    let log = m.path().join("logs/console.log");
                    if let Ok(text) = std::fs::read_to_string(&log) {
                        out += &format!("\n--- {}\n{}", log.display(), tail(&text, 15));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Lab {
    /// A killed agent that was not started again leaves its DB endpoints' nftables table (the
    /// others' go with them).
    fn drop(&mut self) {
        for (zone, agent) in &self.agents {
            if agent.is_none() {
                hanul_e2e::remove_db_endpoints_table(&self.node(zone));
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.contains("Controller started"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn epoch_of(c: &Value) -> u64 {
    c["status"]["epoch"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| c["status"]["epoch"].as_u64())
        .unwrap_or(0)
}

/// Whether nftables can be used here (root and nft): then agents in `auto` mode take the
/// kernel path.
fn nft_usable() -> bool {
    std::process::Command::new("nft")
        .args(["list", "tables"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two free consecutive ports for a cluster's endpoints.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free consecutive ports");
}

fn manifest(name: &str, deployment: &str, replicas: u32, port: u16, zones: &[&str]) -> String {
    format!(
        r#"
apiVersion: hanul/v1
kind: DBCluster
metadata: {{name: {name}}}
spec:
  deployment: {deployment}
  instanceClass: db.t3.micro
  zones: [{zones}]
  port: {port}
  databaseName: app
  masterUsername: postgres
  masterPassword: {PASSWORD}
  readReplicas: {{count: {replicas}}}
  failover: {{leaseSeconds: 2}}
"#,
        zones = zones.join(", ")
    )
}

#[test]
fn a_multi_az_cluster_serves_its_endpoints_and_fails_over_without_losing_a_commit() {
    let zones = ["az-a", "az-b", "az-c"];
    let mut lab = Lab::start("maz", &zones);
    let port = free_port_pair();
    lab.apply(
        "db.yaml",
        &manifest("orders", "multiAZCluster", 1, port, &zones),
    );
    let status = lab.wait_available("orders", 1, 4, 2);
    let writer_ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    let reader_ep = status["endpoints"]["reader"].as_str().unwrap().to_owned();
    assert_eq!(writer_ep, format!("127.0.0.1:{port}"));

    // The writer endpoint reaches the writer, the reader endpoint a standby, and what is
    // written is read back through the reader.
    lab.sql_eventually(&writer_ep, ACKED_TABLE);
    lab.sql(
        &writer_ep,
        "CREATE TABLE notes (n int); INSERT INTO notes VALUES (42)",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(
        lab.query(&writer_ep, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        lab.query(&reader_ep, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    // The agents' default (`--db-endpoints auto`): the test's connections are local, so they
    // took the kernel path wherever nft can be used (root and nftables, as in CI).
    assert_eq!(
        lab.kernel_path("orders"),
        nft_usable(),
        "the endpoints' path\n{}",
        lab.logs()
    );
    poll(WAIT, "the row through the reader endpoint", || {
        Ok(lab
            .query(&reader_ep, "SELECT n FROM notes")
            .ok()
            .filter(|n| n == "42"))
    })
    .unwrap();
    // A standby refuses writes.
    let standby = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "syncStandby")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lab.sql(&standby, "INSERT INTO notes VALUES (1)").is_err());

    let (writer, thread) = AckedWriter::start(conninfo(&writer_ep, "postgres", PASSWORD, "app"), 1);
    poll(WAIT, "the first acknowledged commits", || {
        Ok((writer.acked().len() > 20).then_some(()))
    })
    .unwrap();

    // 1. The writer's PostgreSQL is SIGKILLed.
    let c = lab.cluster("orders");
    let (epoch, old) = (
        epoch_of(&c),
        c["status"]["writer"].as_str().unwrap().to_owned(),
    );
    let pid = lab.member(&old)["status"]["pid"]
        .as_str()
        .and_then(|p| p.parse::<i32>().ok())
        .or_else(|| lab.member(&old)["status"]["pid"].as_i64().map(|p| p as i32))
        .expect("the writer's pid");
    // SAFETY-free: kill(2) on a pid we read from the status.
    assert_eq!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let s = lab.wait_available("orders", epoch + 1, 3, 1);
    assert_ne!(s["writer"], old.as_str(), "a standby took over");
    let before = writer.acked().len();
    poll(
        WAIT,
        "commits through the writer endpoint after the failover",
        || Ok((writer.acked().len() > before + 10).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    // The old writer comes back as a standby of the new one.
    poll(WAIT, "the old writer to rejoin", || {
        let m = lab.member(&old);
        let s = &m["status"];
        Ok(
            (s["role"] == "standby" && s["state"] == "available" && s["streaming"] == true)
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // 2. The writer's agent is SIGKILLed (its PostgreSQL keeps running, unreachable through
    //    the endpoints and unable to commit without its standbys).
    let c = lab.cluster("orders");
    let (epoch, old) = (
        epoch_of(&c),
        c["status"]["writer"].as_str().unwrap().to_owned(),
    );
    let old_member = lab.member(&old);
    let (node, old_address) = (
        old_member["spec"]["node"].as_str().unwrap().to_owned(),
        old_member["status"]["address"].as_str().unwrap().to_owned(),
    );
    lab.kill_agent(&node);
    let s = lab.wait_available("orders", epoch + 1, 2, 1);
    assert_ne!(s["writer"], old.as_str());
    // The fenced writer never acknowledges a write.
    match lab.sql(&old_address, "INSERT INTO notes VALUES (7)") {
        Ok(()) => panic!("the old writer acknowledged a write after the failover"),
        Err(e) => eprintln!("old writer refused or held the write: {e}"),
    }
    let before = writer.acked().len();
    poll(WAIT, "commits after the second failover", || {
        Ok((writer.acked().len() > before + 10).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.restart_agents();
    poll(WAIT, "the second old writer to rejoin", || {
        let m = lab.member(&old);
        let s = &m["status"];
        Ok(
            (s["role"] == "standby" && s["state"] == "available" && s["streaming"] == true)
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // 3. A planned switchover to a named standby.
    let s = lab.wait_available("orders", epoch + 1, 4, 2);
    let target = s["syncStandbys"][0].as_str().unwrap().to_owned();
    let epoch = epoch + 1;
    lab.server
        .cli(&["db", "failover", "orders", "--target", &target])
        .ok();
    let s = lab.wait_available("orders", epoch + 1, 3, 1);
    if s["writer"] != target.as_str() {
        panic!(
            "{target} was asked for, {} became writer\n{}\n{}",
            s["writer"],
            lab.server.cli(&["events"]).stdout,
            lab.logs()
        );
    }
    let before = writer.acked().len();
    poll(WAIT, "commits after the switchover", || {
        Ok((writer.acked().len() > before + 10).then_some(()))
    })
    .unwrap();

    writer.stop();
    thread.join().unwrap();
    let acked = writer.acked();
    let lost = lab
        .rt
        .block_on(missing(
            &conninfo(&writer_ep, "postgres", PASSWORD, "app"),
            &acked,
        ))
        .unwrap();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged commits lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    eprintln!(
        "{} acknowledged commits, {} attempts failed, none lost",
        acked.len(),
        writer.failures.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn a_single_az_writer_that_crashes_or_reboots_is_restarted_in_place_with_its_data() {
    // The userspace proxy alone, so that it too carries real connections through restarts
    // (the other tests' local clients take the kernel path where nft can be used).
    let mut lab = Lab::start_with(
        "saz",
        &["az-a"],
        vec!["--db-endpoints".into(), "proxy".into()],
    );
    let port = free_port_pair();
    lab.apply("db.yaml", &manifest("solo", "singleAZ", 0, port, &["az-a"]));
    let status = lab.wait_available("solo", 1, 1, 0);
    let ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&ep, "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)");
    assert!(!lab.kernel_path("solo"), "{}", lab.logs());
    let pid = lab.member("solo-1")["status"]["pid"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            lab.member("solo-1")["status"]["pid"]
                .as_i64()
                .map(|p| p.to_string())
        })
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    let s = lab.wait_available("solo", 2, 1, 0);
    assert_eq!(s["writer"], "solo-1");
    poll(WAIT, "the rows after the restart", || {
        Ok(lab
            .query(&ep, "SELECT count(*) FROM t")
            .ok()
            .filter(|n| n == "2"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    // A reboot restarts the writer in place in a new epoch; the data stays.
    let pid_before = lab.member("solo-1")["status"]["pid"].clone();
    lab.server.cli(&["db", "reboot", "solo"]).ok();
    let s = lab.wait_available("solo", 3, 1, 0);
    assert_eq!(s["writer"], "solo-1");
    assert_ne!(
        lab.member("solo-1")["status"]["pid"],
        pid_before,
        "a new postmaster"
    );
    poll(WAIT, "the rows after the reboot", || {
        Ok(lab
            .query(&ep, "SELECT count(*) FROM t")
            .ok()
            .filter(|n| n == "2"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    // Deleting the cluster stops its PostgreSQL and removes its members.
    lab.server
        .cli(&["delete", "dbcluster", "solo", "--wait"])
        .ok();
    poll(WAIT, "the members to go", || {
        let out = lab.server.cli(&["get", "dbinstances", "-o", "name"]);
        Ok((!out.stdout.contains("solo-")).then_some(()))
    })
    .unwrap();
    lab.restart_agents();
}

fn parameter_group(name: &str, parameters: &[(&str, &str)]) -> String {
    let parameters: Vec<String> = parameters
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: hanul/v1\nkind: DBParameterGroup\nmetadata: {{name: {name}}}\nspec:\n  description: e2e\n  parameters: {{{}}}\n",
        parameters.join(", ")
    )
}

#[test]
fn a_parameter_group_applies_dynamic_parameters_live_and_static_ones_at_the_reboot() {
    let mut lab = Lab::start("pg", &["az-a"]);
    let port = free_port_pair();
    lab.apply(
        "group.yaml",
        &parameter_group("tuned", &[("work_mem", "8MB")]),
    );
    lab.apply(
        "db.yaml",
        &format!(
            "{}  parameterGroup: tuned\n",
            manifest("tuned", "singleAZ", 0, port, &["az-a"])
        ),
    );
    let status = lab.wait_available("tuned", 1, 1, 0);
    let ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    let show = |lab: &Lab, name: &str| lab.query(&ep, &format!("SHOW {name}")).ok();
    // Created with the group's parameters.
    poll(WAIT, "work_mem 8MB from the start", || {
        Ok(show(&lab, "work_mem").filter(|v| v == "8MB"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let statuses = |lab: &Lab| {
        let c = lab.cluster("tuned");
        let m = lab.member("tuned-1");
        (
            c["status"]["parameterApplyStatus"].clone(),
            c["status"]["members"][0]["parameterApplyStatus"].clone(),
            m["status"]["parameterApplyStatus"].clone(),
            m["status"]["pendingRestart"].clone(),
            m["status"]["pid"].clone(),
        )
    };
    let wait_status = |lab: &Lab, want: &str, what: &str| {
        poll(WAIT, what, || {
            let s = statuses(lab);
            if s.0 == want && s.1 == want && s.2 == want {
                Ok(Some(s))
            } else {
                Err(format!("{s:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()))
    };
    let (.., pid) = wait_status(&lab, "in-sync", "in-sync at creation");

    // A dynamic parameter: live, no restart, still in-sync.
    let max_connections = show(&lab, "max_connections").unwrap();
    assert_ne!(max_connections, "142");
    lab.apply(
        "group.yaml",
        &parameter_group("tuned", &[("work_mem", "16MB")]),
    );
    poll(WAIT, "work_mem 16MB without a restart", || {
        Ok(show(&lab, "work_mem").filter(|v| v == "16MB"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let (.., pid_now) = wait_status(&lab, "in-sync", "in-sync after work_mem");
    assert_eq!(pid_now, pid, "work_mem needs no restart");

    // A static one: pending until the reboot.
    lab.apply(
        "group.yaml",
        &parameter_group("tuned", &[("work_mem", "16MB"), ("max_connections", "142")]),
    );
    let (_, _, _, pending, pid_now) = wait_status(
        &lab,
        "pending-reboot",
        "pending-reboot after max_connections",
    );
    assert_eq!(pending, serde_json::json!(["max_connections"]));
    assert_eq!(pid_now, pid);
    assert_eq!(show(&lab, "max_connections").unwrap(), max_connections);
    let describe = lab.server.cli(&["describe", "db", "tuned"]).stdout;
    assert!(describe.contains("pending-reboot"), "{describe}");

    // The reboot applies it.
    let epoch = epoch_of(&lab.cluster("tuned"));
    lab.server.cli(&["db", "reboot", "tuned"]).ok();
    lab.wait_available("tuned", epoch + 1, 1, 0);
    poll(WAIT, "max_connections 142 after the reboot", || {
        Ok(show(&lab, "max_connections").filter(|v| v == "142"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let (_, _, _, pending, _) = wait_status(&lab, "in-sync", "in-sync after the reboot");
    assert!(pending.as_array().is_none_or(Vec::is_empty), "{pending}");
    assert_eq!(show(&lab, "work_mem").unwrap(), "16MB");

    // In the maintenance window (one open now), a static change is applied by a reboot the
    // cluster does itself.
    lab.apply(
        "db.yaml",
        &format!(
            "{}  parameterGroup: tuned\n  maintenance: {{preferredWindow: \"{}\"}}\n",
            manifest("tuned", "singleAZ", 0, port, &["az-a"]),
            weekly_window_around_now()
        ),
    );
    let epoch = epoch_of(&lab.cluster("tuned"));
    lab.apply(
        "group.yaml",
        &parameter_group("tuned", &[("work_mem", "16MB"), ("max_connections", "143")]),
    );
    lab.wait_available("tuned", epoch + 1, 1, 0);
    poll(
        WAIT,
        "max_connections 143 after the maintenance reboot",
        || Ok(show(&lab, "max_connections").filter(|v| v == "143")),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let events = lab.server.cli(&["get", "events"]).stdout;
    assert!(events.contains("MaintenanceReboot"), "{events}");

    lab.server
        .cli(&["delete", "dbcluster", "tuned", "--wait"])
        .ok();
    poll(WAIT, "the members to go", || {
        let out = lab.server.cli(&["get", "dbinstances", "-o", "name"]);
        Ok((!out.stdout.contains("tuned-")).then_some(()))
    })
    .unwrap();
    lab.restart_agents();
}

/// A weekly maintenance window (`ddd:hh:mm-ddd:hh:mm`, UTC) open from 5 minutes ago for an
/// hour.
fn weekly_window_around_now() -> String {
    let at = |t: i64| {
        let days = t.div_euclid(86_400);
        let day =
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(days + 3).rem_euclid(7) as usize];
        let minutes = t.rem_euclid(86_400) / 60;
        format!("{day}:{:02}:{:02}", minutes / 60, minutes % 60)
    };
    let now = unix_now() as i64;
    format!("{}-{}", at(now - 300), at(now + 3300))
}

/// An RFC 3339 time as the API prints it, in seconds since the epoch.
fn seconds_of(v: &Value) -> Option<f64> {
    let t: pbjson_types::Timestamp = serde_json::from_value(v.clone()).ok()?;
    Some(t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// A lab whose agents share a backup directory (returned: it must outlive the lab) and close
/// the writer's WAL file every second, so that the restorable window follows the commits.
fn backup_lab(prefix: &str, zones: &[&str]) -> (tempfile::TempDir, Lab) {
    let backups = tempfile::tempdir().unwrap();
    let args = vec![
        "--backup-dir".to_string(),
        backups.path().display().to_string(),
        "--db-archive-interval".into(),
        "1s".into(),
    ];
    let lab = Lab::start_with(prefix, zones, args);
    (backups, lab)
}

/// A multiAZInstance cluster `name` in az-a and az-b with a backtrack window of an hour and a
/// table `t`, once its first automated snapshot makes it backtrackable; its writer endpoint.
fn backtrackable(lab: &Lab, name: &str) -> String {
    let yaml = manifest(
        name,
        "multiAZInstance",
        0,
        free_port_pair(),
        &["az-a", "az-b"],
    )
    .replace("  failover:", "  backtrackWindow: 3600\n  failover:");
    lab.apply(&format!("{name}.yaml"), &yaml);
    let status = lab.wait_available(name, 1, 2, 1);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int primary key)");
    poll(WAIT, "the first automated snapshot", || {
        let s = &lab.cluster(name)["status"];
        Ok(s["earliestBacktrackTime"].as_str().map(str::to_owned))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    writer
}

/// A time (seconds since the epoch) more than a second after the commits made so far and
/// more than a second before the next ones: a restore to it tells them apart.
fn a_moment_between_commits() -> f64 {
    std::thread::sleep(Duration::from_millis(1200));
    let t = unix_now();
    std::thread::sleep(Duration::from_millis(1200));
    t
}

#[allow(clippy::disallowed_methods)] // The test compares with times the server stamps.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn rfc3339(t: f64) -> String {
    hanul_proto::time::rfc3339(&pbjson_types::Timestamp {
        seconds: t.floor() as i64,
        nanos: ((t - t.floor()) * 1e9) as i32,
    })
}

/// Backups end to end, with two agents that share one backup directory: the first automated
/// snapshot, WAL archiving, a point-in-time restore into a new cluster on the other node that
/// has exactly the rows committed before that time, and a manual snapshot that survives the
/// deletion of its cluster and restores.
#[test]
fn point_in_time_restore_and_snapshots_bring_back_exactly_the_committed_rows() {
    let (_backups, lab) = backup_lab("bak", &["az-a", "az-b"]);
    let port = free_port_pair();
    lab.apply("src.yaml", &manifest("src", "singleAZ", 0, port, &["az-a"]));
    let status = lab.wait_available("src", 1, 1, 0);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int primary key)");

    // The first automated snapshot is taken once the cluster is available.
    poll(WAIT, "the first automated snapshot", || {
        let s = &lab.cluster("src")["status"];
        Ok(s["earliestRestorableTime"].as_str().map(str::to_owned))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    lab.sql(&writer, "INSERT INTO t SELECT generate_series(1, 50)")
        .unwrap();
    let target = a_moment_between_commits();
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(51, 100)")
        .unwrap();
    lab.wait_restorable_past("src", target + 1.0);

    // A manual snapshot through the CLI, with all 100 rows; 10 more after it.
    lab.cli_ok(&[
        "db",
        "snapshot",
        "src",
        "keep",
        "--wait",
        "--timeout",
        "120s",
    ]);
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(101, 110)")
        .unwrap();
    let listed = lab.server.cli(&["db", "snapshots", "src"]);
    assert!(listed.stdout.contains("keep"), "{}", listed.stdout);
    assert!(listed.stdout.contains("automated"), "{}", listed.stdout);

    // Point in time, into a new cluster on the other node: rows 1..=50 exactly.
    let pitr_port = free_port_pair();
    let pitr = manifest("pitr", "singleAZ", 0, pitr_port, &["az-b"]).replace(
        "  failover:",
        &format!(
            "  source: {{cluster: src, restoreTime: \"{}\"}}\n  failover:",
            rfc3339(target)
        ),
    );
    lab.apply("pitr.yaml", &pitr);
    let status = lab.wait_available("pitr", 1, 1, 0);
    let pitr_writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    assert_eq!(lab.rows_of_t(&pitr_writer), "50/50", "{}", lab.logs());
    // It is a writer of its own: it takes writes, the source does not see them.
    lab.sql(&pitr_writer, "INSERT INTO t VALUES (1000)")
        .unwrap();
    assert_eq!(lab.query(&writer, "SELECT count(*) FROM t").unwrap(), "110");

    // A time before the earliest restorable time is refused, saying so.
    let early = manifest("early", "singleAZ", 0, free_port_pair(), &["az-b"]).replace(
        "  failover:",
        "  source: {cluster: src, restoreTime: \"2001-01-01T00:00:00Z\"}\n  failover:",
    );
    lab.apply("early.yaml", &early);
    poll(WAIT, "the refused restore", || {
        let s = &lab.cluster("early")["status"];
        Ok(s["restore"]["error"]
            .as_str()
            .filter(|e| e.contains("before the earliest restorable time"))
            .map(str::to_owned))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // The members' metrics on their agent's /metrics.
    let node = lab
        .server
        .get_json(&format!("node/{}", lab.node("az-a")))
        .unwrap();
    let endpoint = node["spec"]["agentEndpoint"].as_str().unwrap().to_owned();
    let endpoint_port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    poll(Duration::from_secs(20), "the DB metrics of src-1", || {
        let body = hanul_e2e::request(endpoint_port, "/metrics", &[])?.body;
        let storage = body
            .lines()
            .find(|l| l.starts_with("hanul_db_storage_bytes{cluster=\"src\",member=\"src-1\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        let commits = body
            .lines()
            .find(|l| l.starts_with("hanul_db_commits_total{cluster=\"src\",member=\"src-1\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        match (storage, commits) {
            (Some(s), Some(c)) if s > 1e6 && c >= 3.0 => Ok(Some(())),
            _ => Err(body),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // A clone (through the CLI) has everything committed so far, and goes its own way.
    lab.cli_ok(&["db", "clone", "src", "copy", "--wait", "--timeout", "120s"]);
    let copy = lab.wait_available("copy", 1, 1, 0);
    let copy_writer = copy["endpoints"]["writer"].as_str().unwrap().to_owned();
    assert_eq!(lab.rows_of_t(&copy_writer), "110/110", "{}", lab.logs());
    // Its writer went beside the source's member (the only node of az-a) and copied it on
    // the node, not over the network (copy-on-write where the file system can).
    let events = lab.server.cli(&["events"]).stdout;
    assert!(
        events.lines().any(|l| l.contains("DBInstanceRestored")
            && l.contains("copy-")
            && (l.contains("(copy-on-write on node") || l.contains("(full copy on node"))),
        "{events}"
    );
    lab.sql(&copy_writer, "INSERT INTO t VALUES (2000)")
        .unwrap();
    assert_eq!(lab.query(&writer, "SELECT count(*) FROM t").unwrap(), "110");

    // Deleted with a final snapshot: the deletion waits for it. The manual snapshot outlives
    // its cluster, and restores with all it had.
    lab.apply(
        "src.yaml",
        &manifest("src", "singleAZ", 0, port, &["az-a"]).replace(
            "  failover:",
            "  finalSnapshotIdentifier: last\n  failover:",
        ),
    );
    poll(WAIT, "the final snapshot's finalizer", || {
        let c = lab.cluster("src");
        Ok(c["metadata"]["finalizers"]
            .as_array()
            .filter(|f| f.iter().any(|f| f == "hanul.dev/db-final-snapshot"))
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let out = lab.server.cli(&["delete", "dbcluster", "src", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let last = lab.server.get_json("dbsnapshot/last").unwrap();
    assert_eq!(last["status"]["phase"], "available", "{last}");
    let snap = lab.server.get_json("dbsnapshot/keep").unwrap();
    assert_eq!(snap["status"]["phase"], "available", "{snap}");
    let lsn = |v: &Value| {
        v["status"]["endLsn"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
    };
    assert!(
        lsn(&last) > lsn(&snap),
        "the final snapshot is newer: {last} {snap}"
    );
    let from_snap_port = free_port_pair();
    let from_snap = manifest("fromsnap", "singleAZ", 0, from_snap_port, &["az-a"])
        .replace("  failover:", "  source: {snapshot: keep}\n  failover:");
    lab.apply("fromsnap.yaml", &from_snap);
    let status = lab.wait_available("fromsnap", 1, 1, 0);
    let ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    assert_eq!(lab.rows_of_t(&ep), "100/100", "{}", lab.logs());
}

/// Backtrack end to end (Aurora's): a multiAZInstance cluster with a backtrack window; rows
/// 1..=50 before T1, 51..=100 before T2, 101..=150 after. Backtracked to T1 through the CLI,
/// the writer endpoint shows exactly rows 1..=50; rows 1001..=1010 are written. Backtracked
/// again to T2 (after T1 on the original history, before the first backtrack), it shows
/// exactly rows 1..=100 and none written after the first backtrack. Each time the cluster
/// keeps its name and endpoints and the standby is rebuilt and back in the synchronous set;
/// a time outside the window is refused before anything is asked.
#[test]
fn backtrack_rewinds_in_place_and_goes_forward_again_on_the_old_history() {
    let (_backups, lab) = backup_lab("btk", &["az-a", "az-b"]);
    let writer = backtrackable(&lab, "bt");

    lab.sql(&writer, "INSERT INTO t SELECT generate_series(1, 50)")
        .unwrap();
    let t1 = a_moment_between_commits();
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(51, 100)")
        .unwrap();
    let t2 = a_moment_between_commits();
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(101, 150)")
        .unwrap();
    lab.wait_restorable_past("bt", t2 + 1.0);

    // Outside the window: refused up front.
    let out = lab
        .server
        .cli(&["db", "backtrack", "bt", "--to", "2001-01-01T00:00:00Z"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("before its earliest backtrack time"),
        "{}",
        out.stderr
    );

    let backtrack = |to: f64| {
        lab.cli_ok(&[
            "db",
            "backtrack",
            "bt",
            "--to",
            &rfc3339(to),
            "--wait",
            "--timeout",
            "180s",
        ]);
    };
    let epoch_before = epoch_of(&lab.cluster("bt"));
    backtrack(t1);
    let status = lab.wait_available("bt", epoch_before + 1, 2, 1);
    assert_eq!(status["endpoints"]["writer"], writer.as_str());
    assert_eq!(lab.rows_of_t(&writer), "50/50", "{}", lab.logs());
    let to = seconds_of(&status["backtrackedTo"]).unwrap();
    assert!((to - t1).abs() < 1e-3, "{status}");
    assert_eq!(
        status["timelines"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(1001, 1010)")
        .unwrap();
    assert_eq!(lab.rows_of_t(&writer), "60/1010");

    // Forward again, to a time between T1 and the first backtrack on the old history.
    let epoch_before = epoch_of(&lab.cluster("bt"));
    backtrack(t2);
    let status = lab.wait_available("bt", epoch_before + 1, 2, 1);
    assert_eq!(lab.rows_of_t(&writer), "100/100", "{}", lab.logs());
    assert_eq!(
        lab.query(&writer, "SELECT count(*) FROM t WHERE n > 100")
            .unwrap(),
        "0"
    );
    assert_eq!(
        status["timelines"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let timelines: Vec<u64> = status["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap_or(0))
        .collect();
    assert!(timelines.windows(2).all(|w| w[0] < w[1]), "{status}");
    // The standby follows the new history: a write waits for it (dataDurability: required)
    // and it replays it, on the writer's timeline.
    lab.sql(&writer, "INSERT INTO t VALUES (2000)").unwrap();
    let newest = *timelines.last().unwrap();
    poll(
        Duration::from_secs(30),
        "the standby on the new timeline, caught up",
        || {
            let s = lab.cluster("bt")["status"].clone();
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let ok = members.iter().any(|m| {
                m["role"] == "syncStandby"
                    && m["state"] == "available"
                    && m["timeline"].as_u64() == Some(newest)
            });
            if ok { Ok(Some(())) } else { Err(s.to_string()) }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let events = lab.server.cli(&["events"]);
    assert!(events.stdout.contains("Backtrack to"), "{}", events.stdout);
    // With no backtrack under way, a cancel is refused up front.
    let out = lab.server.cli(&["db", "backtrack", "bt", "--cancel"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("no backtrack is under way to cancel"),
        "{}",
        out.stderr
    );
}

/// Removes `PG_VERSION` from the top of every snapshot under `dir`: a restore from one fails
/// (`not a base backup`) while the snapshot still looks available to the controller.
fn break_snapshots(dir: &std::path::Path) -> usize {
    let mut broken = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if p.join("PG_VERSION").is_file() && p.join("base").is_dir() {
            std::fs::remove_file(p.join("PG_VERSION")).unwrap();
            broken += 1;
        } else {
            broken += break_snapshots(&p);
        }
    }
    broken
}

/// A backtrack whose restore keeps failing (its snapshot's files damaged) says so in a
/// `BacktrackFailed` event and in `status.backtrack`; `hanul db backtrack --cancel` puts the
/// writer's data from before back: the cluster is available in a new epoch with all its rows,
/// nothing noted as backtracked, and the standby acknowledges commits again.
#[test]
fn a_backtrack_that_keeps_failing_is_cancelled_and_the_cluster_keeps_its_data() {
    let (backups, lab) = backup_lab("btc", &["az-a", "az-b"]);
    let writer = backtrackable(&lab, "bc");
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(1, 50)")
        .unwrap();
    let t1 = a_moment_between_commits();
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(51, 100)")
        .unwrap();
    lab.wait_restorable_past("bc", t1 + 1.0);

    // Nothing to cancel yet: refused up front.
    let out = lab.server.cli(&["db", "backtrack", "bc", "--cancel"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("no backtrack is under way"),
        "{}",
        out.stderr
    );

    assert!(break_snapshots(backups.path()) > 0, "no snapshot found");
    let epoch_before = epoch_of(&lab.cluster("bc"));
    let out = lab
        .server
        .cli(&["db", "backtrack", "bc", "--to", &rfc3339(t1)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // It fails, and says so.
    poll(WAIT, "the backtrack's failure in its status", || {
        let s = lab.cluster("bc")["status"].clone();
        let b = &s["backtrack"];
        if b["failures"].as_u64().unwrap_or(0) >= 1 && b["error"].as_str().is_some() {
            Ok(Some(()))
        } else {
            Err(s.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    poll(WAIT, "a BacktrackFailed event", || {
        let events = lab.server.cli(&["events"]).stdout;
        Ok(events.contains("BacktrackFailed").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(lab.cluster("bc")["status"]["phase"], "backtracking");
    let described = lab.server.cli(&["describe", "db", "bc"]).stdout;
    assert!(
        described.contains("failed attempts") && described.contains("--cancel"),
        "{described}"
    );

    lab.cli_ok(&[
        "db",
        "backtrack",
        "bc",
        "--cancel",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let status = lab.wait_available("bc", epoch_before + 2, 2, 1);
    assert!(status["backtrack"].is_null(), "{status}");
    assert!(status["backtrackedTo"].is_null(), "{status}");
    assert_eq!(
        status["timelines"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["endpoints"]["writer"], writer.as_str());
    assert_eq!(lab.rows_of_t(&writer), "100/100", "{}", lab.logs());
    // The standby rejoined on the same history and acknowledges commits again
    // (dataDurability: required: the insert returns once it has it).
    lab.sql(&writer, "INSERT INTO t VALUES (101)").unwrap();
    assert_eq!(lab.rows_of_t(&writer), "101/101");
    let events = lab.server.cli(&["events"]).stdout;
    assert!(events.contains("BacktrackCancelled"), "{events}");
}

/// A member whose instance class fits on no node of its zone is not created: the cluster says
/// why (`MembersPlaced=False`, `InsufficientDBInstanceCapacity`, a `FailedScheduling` event)
/// until a node with room joins that zone, where it is then placed.
#[test]
fn a_member_that_fits_nowhere_waits_for_room_and_is_placed_once_it_appears() {
    let lab = Lab::start("cap", &["az-a"]);
    // az-b's only node is too small for db.t3.micro (2 vCPUs, 1 GiB).
    let (_small, _small_agent) = lab.extra_node("small", "az-b", 1, 512);
    let port = free_port_pair();
    lab.apply(
        "db.yaml",
        &manifest("cap", "multiAZInstance", 0, port, &["az-a", "az-b"]),
    );
    let placed = |c: &Value| -> Option<(String, String, String)> {
        c["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|x| x["type"] == "MembersPlaced")
            .map(|x| {
                let s = |k: &str| x[k].as_str().unwrap_or_default().to_owned();
                (s("status"), s("reason"), s("message"))
            })
    };
    let (_, _, message) = poll(WAIT, "MembersPlaced=False", || {
        let c = lab.cluster("cap");
        match placed(&c) {
            Some((s, r, m)) if s == "False" && r == "InsufficientDBInstanceCapacity" => {
                Ok(Some((s, r, m)))
            }
            _ => Err(c["status"].to_string()),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert!(
        message.contains("cap-2") && message.contains("db.t3.micro"),
        "{message}"
    );
    let events = poll(WAIT, "a FailedScheduling event", || {
        let events = lab.server.cli(&["events"]).stdout;
        Ok(events.contains("FailedScheduling").then_some(events))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert!(events.contains("cap-2"), "{events}");
    // The writer runs in az-a meanwhile; the standby was never created.
    let status = lab.wait_available("cap", 1, 1, 0);
    assert!(lab.server.get_json("dbinstance/cap-2").is_err(), "{status}");
    let described = lab.server.cli(&["describe", "db", "cap"]).stdout;
    assert!(
        described.contains("InsufficientDBInstanceCapacity"),
        "{described}"
    );

    // Room appears in az-b: the standby is placed there and joins the synchronous set.
    let (big, _big_agent) = lab.extra_node("big", "az-b", 16, 16384);
    let status = lab.wait_available("cap", 1, 2, 1);
    let standby = lab.member("cap-2");
    assert_eq!(standby["spec"]["node"], big.as_str(), "{status}");
    let c = lab.cluster("cap");
    assert_eq!(
        placed(&c).map(|(s, r, _)| (s, r)),
        Some(("True".to_string(), "MembersPlaced".to_string())),
        "{}",
        c["status"]
    );
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
}

/// The master password from a Secret: the members and the endpoint use it, and no `get`,
/// `describe` or `diff` prints it.
#[test]
fn a_master_password_from_a_secret_is_used_and_never_printed() {
    let lab = Lab::start("sec", &["az-a"]);
    let port = free_port_pair();
    let secret = format!(
        "apiVersion: hanul/v1\nkind: Secret\nmetadata: {{name: app-db}}\nspec:\n  data: {{password: {PASSWORD}}}\n"
    );
    lab.apply("secret.yaml", &secret);
    let cluster = manifest("vault", "singleAZ", 0, port, &["az-a"]).replace(
        &format!("  masterPassword: {PASSWORD}\n"),
        "  masterPasswordSecret: {name: app-db}\n",
    );
    assert!(!cluster.contains(PASSWORD));
    lab.apply("vault.yaml", &cluster);
    let status = lab.wait_available("vault", 1, 1, 0);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int)");
    for args in [
        vec!["get", "secret", "app-db", "-o", "yaml"],
        vec!["get", "secrets", "-o", "json"],
        vec!["describe", "secret", "app-db"],
        vec!["get", "db", "vault", "-o", "yaml"],
    ] {
        let out = lab.server.cli(&args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(
            !out.stdout.contains(PASSWORD),
            "{args:?} printed it:\n{}",
            out.stdout
        );
    }
    let yaml = lab
        .server
        .cli(&["get", "secret", "app-db", "-o", "yaml"])
        .stdout;
    assert!(
        yaml.contains("password: '***'") || yaml.contains("password: \"***\""),
        "{yaml}"
    );
    // A changed value shows as changed, still without the values.
    let changed = write_manifest(
        lab.manifests.path(),
        "secret2.yaml",
        &secret.replace(PASSWORD, "another-pass-1"),
    );
    let diff = lab.server.cli(&["diff", "-f", &changed]);
    assert_eq!(diff.code, 1, "{}", diff.stderr);
    assert!(diff.stdout.contains("*** (after)"), "{}", diff.stdout);
    assert!(
        !diff.stdout.contains(PASSWORD) && !diff.stdout.contains("another-pass-1"),
        "{}",
        diff.stdout
    );
}

/// A standby whose node is deleted (its agent and PostgreSQL gone with the machine) is made
/// again on another node of its zone, where it clones the writer and joins the synchronous
/// set; the writer keeps its data throughout.
#[test]
fn a_member_whose_node_is_deleted_is_replaced_in_its_zone() {
    let mut lab = Lab::start("rep", &["az-a", "az-b"]);
    // A second node in az-b, for the replacement.
    let (spare, spare_agent) = lab.extra_node("spare", "az-b", 16, 16384);
    let port = free_port_pair();
    lab.apply(
        "db.yaml",
        &manifest("keep", "multiAZInstance", 0, port, &["az-a", "az-b"]),
    );
    let status = lab.wait_available("keep", 1, 2, 1);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    let standby = lab.member("keep-2");
    let gone = standby["spec"]["node"].as_str().unwrap().to_owned();
    let pid = standby["status"]["pid"]
        .as_str()
        .and_then(|p| p.parse::<i32>().ok())
        .or_else(|| standby["status"]["pid"].as_i64().map(|p| p as i32))
        .expect("the standby's pid");

    // The machine goes: its agent and its PostgreSQL die, and the operator deletes the node.
    if gone == spare {
        drop(spare_agent);
    } else {
        lab.kill_agent(&gone);
    }
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = lab.server.cli(&["delete", "node", &gone]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    poll(WAIT, "keep-2 replaced on the other node of az-b", || {
        let m = lab.server.get_json("dbinstance/keep-2").ok();
        let node = m
            .as_ref()
            .and_then(|m| m["spec"]["node"].as_str().map(str::to_owned));
        let state = m
            .as_ref()
            .and_then(|m| m["status"]["state"].as_str().map(str::to_owned));
        match (node, state) {
            (Some(n), Some(s)) if n != gone && s == "available" => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.wait_available("keep", 1, 2, 1);
    lab.sql(&writer, "INSERT INTO t VALUES (2)").unwrap();
    assert_eq!(lab.query(&writer, "SELECT count(*) FROM t").unwrap(), "2");
    let events = lab.server.cli(&["get", "events"]).stdout;
    assert!(events.contains("DBInstanceReplaced"), "{events}");
}

/// `replication.dataDurability: preferred`: while no synchronous standby streams, the writer
/// stops waiting for one and commits alone, and says so in a Warning event; once the standby
/// streams again, the writer waits for it again and says that too.
#[test]
fn preferred_durability_commits_alone_while_the_standby_is_down_and_says_so() {
    let zones = ["az-a", "az-b"];
    let lab = Lab::start("pref", &zones);
    let port = free_port_pair();
    let yaml = manifest("pref", "multiAZInstance", 0, port, &zones)
        + "  replication: {dataDurability: preferred}\n";
    lab.apply("db.yaml", &yaml);
    let status = lab.wait_available("pref", 1, 2, 1);
    let ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&ep, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    // The writer waits for its standby once it streams.
    poll(
        Duration::from_secs(30),
        "the writer's synchronous standby",
        || {
            Ok(lab
                .query(&ep, "SHOW synchronous_standby_names")
                .ok()
                .filter(|names| names.contains("pref-")))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let writer = status["writer"].as_str().unwrap().to_owned();
    let standby = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] != writer.as_str())
        .expect("a standby")
        .clone();
    let standby_name = standby["name"].as_str().unwrap().to_owned();
    let standby_node = standby["node"].as_str().unwrap().to_owned();
    let pid = lab.member(&standby_name)["status"]["pid"].clone();
    let pid = pid
        .as_str()
        .map(str::to_owned)
        .or_else(|| pid.as_i64().map(|p| p.to_string()))
        .expect("the standby's pid");

    // How many times the writer said so (a repeated event is one record with a count).
    let resumed = || {
        let out = lab.server.cli(&["get", "events", "-o", "json"]).stdout;
        let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "SynchronousReplicationResumed")
            .map(|e| e["count"].as_u64().unwrap_or(1).max(1))
            .sum::<u64>()
    };
    // Joining the set counts as resuming: the writer started alone. Its agent records events
    // in the background, so the count is taken once that first one is in (taken before, the
    // late first event would pass for the one after the standby's return).
    poll(
        Duration::from_secs(30),
        "the first SynchronousReplicationResumed event",
        || Ok((resumed() > 0).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let resumed_before = resumed();

    // The standby goes away: its agent is frozen (SIGSTOP, so that it stays the parent that
    // reaps what it started), then its PostgreSQL is killed.
    let agent = format!("hanul agent .*--name {standby_node} ");
    let signal = |sig: &str| {
        std::process::Command::new("pkill")
            .args([sig, "-f", &agent])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success(), "no agent of {standby_node}");
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    // The writer commits alone once its agent sees no standby streaming.
    poll(
        Duration::from_secs(60),
        "a commit without the standby",
        || Ok(lab.sql(&ep, "INSERT INTO t VALUES (2)").ok()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    poll(
        Duration::from_secs(30),
        "the SynchronousReplicationSuspended event",
        || {
            let events = lab.server.cli(&["events"]).stdout;
            Ok(events
                .lines()
                .any(|l| {
                    l.contains("SynchronousReplicationSuspended")
                        && l.contains("commits without a synchronous standby")
                })
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    // A commit that waited for the standby when it went is committed on the writer (its
    // client may have given up and tried again): at least the two rows.
    let rows: u64 = lab
        .query(&ep, "SELECT count(*) FROM t")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rows >= 2, "{rows} rows");

    // The standby comes back (its agent starts it again): the writer waits for it again, and
    // it has the row committed alone.
    assert!(signal("-CONT").success());
    poll(WAIT, "the SynchronousReplicationResumed event", || {
        Ok((resumed() > resumed_before).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.wait_available("pref", 1, 2, 1);
    // A commit now waits for the standby: once it returns, the standby has flushed its WAL
    // (a multiAZInstance standby takes no connections, so it is asked through the writer).
    let before = lab.query(&ep, "SELECT pg_current_wal_lsn()").unwrap();
    lab.sql_eventually(&ep, "INSERT INTO t VALUES (3)");
    let synced = lab
        .query(
            &ep,
            &format!(
                "SELECT sync_state || ':' || (flush_lsn > '{before}'::pg_lsn) \
                 FROM pg_stat_replication WHERE application_name = '{standby_name}'"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(synced, "sync:true", "{}", lab.logs());
}

/// The files under `dir` whose bytes, or gzip-decompressed bytes, hold `marker` (files that
/// go while it reads are skipped).
fn files_holding(dir: &std::path::Path, marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let Ok(mut bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.starts_with(&[0x1f, 0x8b])
                && let Ok(out) = std::process::Command::new("gzip")
                    .arg("-dc")
                    .arg(&path)
                    .output()
            {
                bytes.extend(out.stdout);
            }
            if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Encrypted backups: a cluster with `backupEncrypted` and its key in a Secret archives its
/// WAL and takes its snapshots encrypted (a marker row is nowhere in the backup directory in
/// plain text, nor the key), its snapshots record the Secret, and its final snapshot, taken
/// when it is deleted, restores into a new encrypted cluster with every row.
#[test]
fn an_encrypted_clusters_final_snapshot_restores_after_it_is_deleted_and_nothing_is_plain() {
    let (backups, lab) = backup_lab("enc", &["az-a"]);
    let key = "e2e-backup-key-material-31c9";
    lab.apply(
        "key.yaml",
        &format!(
            "apiVersion: hanul/v1\nkind: Secret\nmetadata: {{name: vault-key}}\nspec:\n  data: {{key: {key}}}\n"
        ),
    );
    let encrypted =
        "  backupEncrypted: true\n  backupEncryptionKeySecret: {name: vault-key}\n  failover:";
    let cluster = manifest("vault", "singleAZ", 0, free_port_pair(), &["az-a"]).replace(
        "  failover:",
        &format!("  finalSnapshotIdentifier: vault-final\n{encrypted}"),
    );
    lab.apply("vault.yaml", &cluster);
    let status = lab.wait_available("vault", 1, 1, 0);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    let marker = "e2e-marker-5b7d0a";
    lab.sql_eventually(
        &writer,
        &format!(
            "CREATE TABLE t (n int primary key); CREATE TABLE m (s text); \
             INSERT INTO m VALUES ('{marker}'); INSERT INTO t SELECT generate_series(1, 20)"
        ),
    );
    lab.cli_ok(&[
        "db",
        "snapshot",
        "vault",
        "vault-keep",
        "--wait",
        "--timeout",
        "120s",
    ]);
    let snap = lab.server.get_json("dbsnapshot/vault-keep").unwrap();
    assert_eq!(
        snap["status"]["encryptionKeySecret"]["name"], "vault-key",
        "{snap}"
    );
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(21, 30)")
        .unwrap();
    // The marker's WAL is archived once a commit after it is.
    let after = unix_now();
    lab.wait_restorable_past("vault", after);
    for secret in [marker, key] {
        assert_eq!(
            files_holding(backups.path(), secret),
            Vec::<String>::new(),
            "{secret} in plain text"
        );
    }

    poll(WAIT, "the final snapshot's finalizer", || {
        let c = lab.cluster("vault");
        Ok(c["metadata"]["finalizers"]
            .as_array()
            .filter(|f| f.iter().any(|f| f == "hanul.dev/db-final-snapshot"))
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let out = lab.server.cli(&["delete", "dbcluster", "vault", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let last = lab.server.get_json("dbsnapshot/vault-final").unwrap();
    assert_eq!(last["status"]["phase"], "available", "{last}");
    assert_eq!(
        last["status"]["encryptionKeySecret"]["name"], "vault-key",
        "{last}"
    );
    assert_eq!(files_holding(backups.path(), marker), Vec::<String>::new());

    // A plain cluster cannot be restored from it (applied first); an encrypted one can, with
    // every row.
    let plain = manifest("plain", "singleAZ", 0, free_port_pair(), &["az-a"]).replace(
        "  failover:",
        "  source: {snapshot: vault-final}\n  failover:",
    );
    lab.apply("plain.yaml", &plain);
    let back = manifest("back", "singleAZ", 0, free_port_pair(), &["az-a"]).replace(
        "  failover:",
        &format!("  source: {{snapshot: vault-final}}\n{encrypted}"),
    );
    lab.apply("back.yaml", &back);
    let status = lab.wait_available("back", 1, 1, 0);
    let back_writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    assert_eq!(lab.rows_of_t(&back_writer), "30/30", "{}", lab.logs());
    assert_eq!(lab.query(&back_writer, "SELECT s FROM m").unwrap(), marker);
    // The plain one is refused by its agent, which retries (and logs why): by the time the
    // encrypted one is available, it is still creating.
    let refused = lab.cluster("plain");
    assert_ne!(refused["status"]["phase"], "available", "{refused}");
    let member = lab.server.get_json("dbinstance/plain-1").unwrap();
    assert_eq!(member["status"]["state"], "creating", "{member}");
    // The controller says why, naming the fields to set.
    poll(WAIT, "the refusal in status.restore.error", || {
        let refused = lab.cluster("plain");
        let error = refused["status"]["restore"]["error"]
            .as_str()
            .unwrap_or_default();
        if error.contains("DB snapshot vault-final is encrypted")
            && error.contains("spec.backupEncrypted: true")
        {
            Ok(Some(()))
        } else {
            Err(refused.to_string())
        }
    })
    .unwrap();
}

/// Retained automated backups end to end (RDS's `--no-delete-automated-backups`): a cluster
/// with `deleteAutomatedBackups: false` is deleted; its automated snapshots and WAL archive
/// stay in a `DBClusterAutomatedBackup` (`hanul get dbab`), from which a new cluster is
/// restored to a time before the deletion with exactly the rows committed by then. Deleting
/// the record removes the snapshots and the WAL archive from the backup directory.
#[test]
fn retained_automated_backups_restore_a_deleted_cluster_to_a_point_in_time() {
    let (backups, lab) = backup_lab("ret", &["az-a"]);
    let port = free_port_pair();
    lab.apply(
        "gone.yaml",
        &manifest("gone", "singleAZ", 0, port, &["az-a"]).replace(
            "  failover:",
            "  deleteAutomatedBackups: false\n  failover:",
        ),
    );
    let status = lab.wait_available("gone", 1, 1, 0);
    let writer = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    lab.sql_eventually(&writer, "CREATE TABLE t (n int primary key)");
    poll(WAIT, "the first automated snapshot", || {
        let s = &lab.cluster("gone")["status"];
        Ok(s["earliestRestorableTime"].as_str().map(str::to_owned))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let uid = lab.cluster("gone")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let wal = backups.path().join(format!("wal/gone-{}", &uid[..8]));

    lab.sql(&writer, "INSERT INTO t SELECT generate_series(1, 50)")
        .unwrap();
    let target = a_moment_between_commits();
    lab.sql(&writer, "INSERT INTO t SELECT generate_series(51, 100)")
        .unwrap();
    lab.wait_restorable_past("gone", target + 1.0);
    poll(WAIT, "the finalizer that retains the backups", || {
        let c = lab.cluster("gone");
        Ok(c["metadata"]["finalizers"]
            .as_array()
            .filter(|f| {
                f.iter()
                    .any(|f| f == "hanul.dev/db-retain-automated-backups")
            })
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // The writer archives a heartbeat as the deletion starts: the window reaches it.
    let deleting_at = unix_now();
    let out = lab.server.cli(&["delete", "dbcluster", "gone", "--wait"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, lab.logs());
    let listed = lab.server.cli(&["get", "dbab"]);
    assert!(
        listed.stdout.contains("gone") && listed.stdout.contains("retained"),
        "{}\n{}",
        listed.stdout,
        listed.stderr
    );
    let record = lab
        .server
        .get_json("dbclusterautomatedbackup/gone")
        .unwrap();
    let s = &record["status"];
    assert_eq!(s["dbClusterResourceId"], uid.as_str(), "{record}");
    assert!(
        seconds_of(&s["latestRestorableTime"]).unwrap_or(0.0) >= deleting_at,
        "the window reaches the deletion ({}): {record}",
        rfc3339(deleting_at)
    );
    let snapshots: Vec<String> = s["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(!snapshots.is_empty(), "{record}");
    for name in &snapshots {
        let snap = lab.server.get_json(&format!("dbsnapshot/{name}")).unwrap();
        assert_eq!(
            snap["metadata"]["ownerReferences"][0]["kind"], "DBClusterAutomatedBackup",
            "{snap}"
        );
    }
    assert!(wal.is_dir(), "the WAL archive {} stays", wal.display());

    // Restored through the CLI from the record, to the time noted: rows 1..=50 exactly.
    let back_port = free_port_pair().to_string();
    lab.cli_ok(&[
        "db",
        "restore",
        "back",
        "--automated-backup",
        "gone",
        "--time",
        &rfc3339(target),
        "--master-password",
        PASSWORD,
        "--port",
        &back_port,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let status = lab.wait_available("back", 1, 1, 0);
    assert_eq!(status["restore"]["automatedBackup"], "gone", "{status}");
    let ep = status["endpoints"]["writer"].as_str().unwrap().to_owned();
    assert_eq!(lab.rows_of_t(&ep), "50/50", "{}", lab.logs());

    // A time after the window the record has is refused in status.
    let late = manifest("late", "singleAZ", 0, free_port_pair(), &["az-a"]).replace(
        "  failover:",
        &format!(
            "  source: {{automatedBackup: gone, restoreTime: \"{}\"}}\n  failover:",
            rfc3339(unix_now() + 3600.0)
        ),
    );
    lab.apply("late.yaml", &late);
    poll(WAIT, "the refused restore", || {
        let s = &lab.cluster("late")["status"];
        Ok(s["restore"]["error"]
            .as_str()
            .filter(|e| e.contains("after the latest restorable time"))
            .map(str::to_owned))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // The record deleted: its snapshots go with it, and the WAL archive with the last one.
    let out = lab.server.cli(&["delete", "dbab", "gone", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    poll(
        WAIT,
        "the retained snapshots and WAL archive removed",
        || {
            let left: Vec<&String> = snapshots
                .iter()
                .filter(|n| lab.server.get_json(&format!("dbsnapshot/{n}")).is_ok())
                .collect();
            if left.is_empty() && !wal.exists() {
                Ok(Some(()))
            } else {
                Err(format!(
                    "snapshots {left:?}, WAL archive there: {}",
                    wal.exists()
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
}
