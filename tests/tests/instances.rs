//! End-to-end tests of instances: `hanul server` and agents in two zones as separate processes,
//! running instances as real processes with the limits of their types.

use hanul_e2e::{AgentProcess, ServerProcess, poll, processes_with_env, write_manifest};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A server and two agents (az-a, az-b) whose node names are unique to this test process, so
/// that the processes of one test are told apart from another's.
struct Cluster {
    server: ServerProcess,
    agents: Vec<Option<AgentProcess>>,
    nodes: [String; 2],
    manifests: tempfile::TempDir,
}

impl Cluster {
    fn start(server_args: &[&str], cpus: u32, memory_mib: u64) -> Cluster {
        let server = ServerProcess::start_in(tempfile::tempdir().unwrap(), server_args).unwrap();
        let pid = std::process::id();
        // Unique per cluster too: under `cargo test` the tests share a process, and an agent's
        // leftovers are found (and killed) by node name.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nodes = [format!("n{pid}-{seq}-a"), format!("n{pid}-{seq}-b")];
        let agents = vec![
            Some(AgentProcess::start(&server, &nodes[0], "az-a", cpus, memory_mib).unwrap()),
            Some(AgentProcess::start(&server, &nodes[1], "az-b", cpus, memory_mib).unwrap()),
        ];
        let c = Cluster {
            server,
            agents,
            nodes,
            manifests: tempfile::tempdir().unwrap(),
        };
        for n in &c.nodes {
            c.server.wait_node_ready(n, WAIT);
        }
        c
    }

    fn apply(&self, name: &str, yaml: &str) {
        let f = write_manifest(self.manifests.path(), name, yaml);
        self.server.cli(&["apply", "-f", &f]).ok();
    }

    fn json(&self, target: &str) -> Result<Value, String> {
        self.server.get_json(target)
    }

    /// Waits until the instance's `status.state` is `state`; returns the instance.
    fn wait_state(&self, instance: &str, state: &str) -> Value {
        poll(WAIT, &format!("instance {instance} {state}"), || {
            let v = self.json(&format!("instance/{instance}"))?;
            if v["status"]["state"] == state {
                Ok(Some(v))
            } else {
                Err(format!("{}", v["status"]))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\nagent logs:\n{}", self.agent_logs()))
    }

    fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|a| a.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    fn node_dir(&self, node: &str) -> std::path::PathBuf {
        self.agents
            .iter()
            .flatten()
            .find(|a| a.name == node)
            .map(|a| a.data_dir.path().to_path_buf())
            .unwrap()
    }

    /// Pids of the instance's processes on this test's nodes.
    fn pids(&self, instance: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        for n in &self.nodes {
            pids.extend(processes_with_env(&[
                ("HANUL_INSTANCE_ID", instance),
                ("HANUL_NODE", n),
            ]));
        }
        pids
    }
}

fn http_get(port: u64, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port as u16)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

const WEB: &str = r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: web}
spec:
  command: [sh, -c]
  args: ['echo "boot $HANUL_INSTANCE_ID"; date >> volumes/data/boots; exec python3 -m http.server "$PORT" --bind 127.0.0.1']
---
apiVersion: hanul/v1
kind: InstanceType
metadata: {name: e2e.small}
spec: {vcpu: 1, memoryMib: 256}
"#;

#[test]
fn an_instance_serves_http_in_its_zone_with_metadata_and_leaves_nothing_when_deleted() {
    let c = Cluster::start(&[], 4, 4096);
    c.apply("web.yaml", WEB);
    c.apply(
        "i.yaml",
        r#"
apiVersion: hanul/v1
kind: Volume
metadata: {name: web-data}
spec: {sizeGib: 1, zone: az-b}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: web-1, labels: {app: web}}
spec:
  image: web
  instanceType: e2e.small
  zone: az-b
  ports: [{name: http}, {name: admin}]
  volumes: [{volume: web-data, mountPath: volumes/data}]
  userData: "echo hello > volumes/data/greeting"
"#,
    );
    let v = c.wait_state("web-1", "running");
    let status = &v["status"];
    assert_eq!(status["zone"], "az-b", "{v}");
    assert_eq!(status["node"], c.nodes[1].as_str(), "{v}");
    let port = status["ports"]["http"].as_u64().unwrap();
    assert_ne!(status["ports"]["admin"], status["ports"]["http"]);
    let body = poll(WAIT, "the instance to serve HTTP", || {
        Ok(http_get(port, "/volumes/data/greeting")
            .ok()
            .filter(|b| b.contains("200")))
    })
    .unwrap();
    assert!(body.contains("hello"), "{body}");
    // The process runs as nobody, with the limits of its type in a cgroup.
    let pid: u32 = status["pid"].as_str().unwrap().parse().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("65534"), "{uid_line}");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("hanul/{}/web-1", c.nodes[1])),
        "{cgroup}"
    );

    // The metadata endpoint answers for the instance.
    let node = c.json(&format!("node/{}", c.nodes[1])).unwrap();
    let endpoint = node["spec"]["agentEndpoint"].as_str().unwrap().to_string();
    let port_of = |ep: &str| ep.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let md = http_get(
        port_of(&endpoint),
        "/web-1/latest/meta-data/placement/availability-zone",
    )
    .unwrap();
    assert!(md.ends_with("az-b"), "{md}");
    let md = http_get(
        port_of(&endpoint),
        "/web-1/latest/meta-data/tags/instance/app",
    )
    .unwrap();
    assert!(md.ends_with("web"), "{md}");

    // The node reports what its instances hold.
    poll(WAIT, "the node to report the instance's size", || {
        let n = c.json(&format!("node/{}", c.nodes[1]))?;
        let a = &n["status"]["allocated"];
        Ok((a["cpuMillis"] == 1000 && a["memoryMib"] == "256").then_some(()))
    })
    .unwrap();

    c.server
        .cli(&["delete", "instance", "web-1", "--wait", "--timeout", "60s"])
        .ok();
    assert_eq!(c.pids("web-1"), Vec::<u32>::new());
    assert!(!c.node_dir(&c.nodes[1]).join("instances/web-1").exists());
    // The volume outlives its instance (kept on termination by default).
    assert!(
        c.node_dir(&c.nodes[1])
            .join("volumes/web-data/greeting")
            .exists()
    );
}

#[test]
fn stop_and_start_keep_the_volume_wipe_the_instance_store_and_run_user_data_once() {
    let c = Cluster::start(&[], 4, 4096);
    c.apply("web.yaml", WEB);
    c.apply(
        "i.yaml",
        r#"
apiVersion: hanul/v1
kind: Volume
metadata: {name: db-data}
spec: {sizeGib: 1, zone: az-a}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: db-1}
spec:
  image: web
  instanceType: e2e.small
  zone: az-a
  ports: [{name: http}]
  volumes: [{volume: db-data, mountPath: volumes/data}]
  userData: "echo ran >> volumes/data/user-data-runs"
"#,
    );
    let v = c.wait_state("db-1", "running");
    let first_pid = v["status"]["pid"].clone();
    let root = c.node_dir(&c.nodes[0]).join("instances/db-1");
    std::fs::write(root.join("scratch"), "instance store").unwrap();

    c.server.cli(&["instance", "stop", "db-1", "--wait"]).ok();
    let v = c.wait_state("db-1", "stopped");
    assert_eq!(v["spec"]["state"], "stopped");
    assert_eq!(c.pids("db-1"), Vec::<u32>::new());
    assert!(
        !root.join("scratch").exists(),
        "the instance store survived a stop"
    );

    c.server.cli(&["instance", "start", "db-1", "--wait"]).ok();
    let v = c.wait_state("db-1", "running");
    assert_ne!(v["status"]["pid"], first_pid);
    let data = c.node_dir(&c.nodes[0]).join("volumes/db-data");
    let boots = std::fs::read_to_string(data.join("boots")).unwrap();
    assert_eq!(boots.lines().count(), 2, "{boots}");
    let runs = std::fs::read_to_string(data.join("user-data-runs")).unwrap();
    assert_eq!(runs, "ran\n", "user data must run at first boot only");
    assert_eq!(c.pids("db-1").len(), 1);

    // Reboot: a new process, the instance stays running, its store stays.
    std::fs::write(root.join("scratch"), "instance store").unwrap();
    c.server.cli(&["instance", "reboot", "db-1", "--wait"]).ok();
    let v = c.wait_state("db-1", "running");
    assert!(
        root.join("scratch").exists(),
        "a reboot keeps the instance store"
    );
    let boots = std::fs::read_to_string(data.join("boots")).unwrap();
    assert_eq!(boots.lines().count(), 3, "{boots}");
    assert_eq!(c.pids("db-1").len(), 1, "{v}");

    // Terminate: the instance stays visible as terminated; its directory goes, the volume stays.
    c.server
        .cli(&["instance", "terminate", "db-1", "--wait"])
        .ok();
    assert_eq!(c.pids("db-1"), Vec::<u32>::new());
    assert!(!root.exists());
    assert!(data.join("boots").exists());
    let out = c.server.cli(&["get", "instances"]).ok().stdout;
    assert!(out.contains("terminated"), "{out}");
    let refused = c.server.cli(&["instance", "start", "db-1"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("terminated"), "{}", refused.stderr);
}

#[test]
fn a_process_past_its_memory_limit_is_killed_and_exits_follow_the_shutdown_behavior() {
    let c = Cluster::start(&["--terminated-retention", "3s"], 4, 4096);
    c.apply(
        "images.yaml",
        r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: hog}
spec:
  command: [python3, -c, "import time\nx = []\nwhile True:\n    x.append(b'x' * (16 << 20))\n    time.sleep(0.01)\n"]
---
apiVersion: hanul/v1
kind: Image
metadata: {name: quitter}
spec:
  command: [sh, -c, 'echo bye; exit 3']
---
apiVersion: hanul/v1
kind: InstanceType
metadata: {name: e2e.tiny}
spec: {vcpu: 1, memoryMib: 128}
---
# The instances use the type defined in the same manifest.
apiVersion: hanul/v1
kind: Instance
metadata: {name: hog}
spec: {image: hog, instanceType: e2e.tiny}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: quits-and-stops}
spec: {image: quitter, instanceType: e2e.tiny}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: quits-and-terminates}
spec: {image: quitter, instanceType: e2e.tiny, shutdownBehavior: terminate}
"#,
    );
    let limits_enforced =
        c.json(&format!("node/{}", c.nodes[0])).unwrap()["status"]["limitsEnforced"] == true;
    assert!(limits_enforced, "this machine has v1 memory controllers");
    let v = c.wait_state("hog", "stopped");
    let reason = v["status"]["stateReason"].as_str().unwrap();
    assert!(reason.starts_with("Server.OutOfMemory"), "{v}");
    assert_eq!(v["spec"]["state"], "stopped");

    let v = c.wait_state("quits-and-stops", "stopped");
    assert_eq!(v["status"]["exitCode"], 3, "{v}");
    assert!(
        v["status"]["stateReason"]
            .as_str()
            .unwrap()
            .starts_with("Client.InstanceInitiatedShutdown")
    );
    let v = c.wait_state("quits-and-terminates", "terminated");
    assert_eq!(v["status"]["exitCode"], 3, "{v}");
    // A terminated instance stays visible for the retention (an hour by default), then goes.
    poll(WAIT, "the terminated instance to be collected", || {
        let out = c.server.cli(&["get", "instance", "quits-and-terminates"]);
        Ok((out.code != 0).then_some(()))
    })
    .unwrap();
    let v = c.json("instance/quits-and-stops").unwrap();
    assert_eq!(
        v["status"]["state"], "stopped",
        "a stopped instance is never collected"
    );
    let events = c.server.cli(&["events"]).ok().stdout;
    assert!(events.contains("OutOfMemory"), "{events}");
}

#[test]
fn an_agent_killed_and_restarted_re_adopts_its_processes_and_stops_deleted_ones() {
    let mut c = Cluster::start(&[], 4, 4096);
    c.apply("web.yaml", WEB);
    let instances: String = (1..=3)
        .map(|n| {
            format!(
                "---\napiVersion: hanul/v1\nkind: Instance\nmetadata: {{name: keep-{n}}}\nspec: {{image: web, instanceType: e2e.small, zone: az-a, ports: [{{name: http}}]}}\n"
            )
        })
        .collect::<String>()
        // With a port, as the image's server needs one (without, it exits at once: its stop
        // after the deletion would prove nothing).
        + "---\napiVersion: hanul/v1\nkind: Instance\nmetadata: {name: doomed}\nspec: {image: web, instanceType: e2e.small, zone: az-a, ports: [{name: http}]}\n";
    c.apply("i.yaml", &instances);
    let mut before = Vec::new();
    for n in 1..=3 {
        let v = c.wait_state(&format!("keep-{n}"), "running");
        before.push(v["status"]["pid"].clone());
    }
    c.wait_state("doomed", "running");
    let doomed = c.pids("doomed");
    assert_eq!(doomed.len(), 1);

    let agent = c.agents[0].take().unwrap();
    let name = agent.name.clone();
    let dir = agent.kill();
    // While the agent is away, the processes run on; one instance is deleted (its finalizer
    // holds it until the agent is back).
    assert_eq!(c.pids("keep-1").len(), 1);
    assert_eq!(c.pids("doomed"), doomed);
    c.server.cli(&["delete", "instance", "doomed"]).ok();

    c.agents[0] = Some(AgentProcess::start_in(&c.server, &name, "az-a", 4, 4096, dir).unwrap());
    poll(WAIT, "the deleted instance to be gone", || {
        let out = c.server.cli(&["get", "instance", "doomed"]);
        Ok((out.code != 0).then_some(()))
    })
    .unwrap();
    assert_eq!(c.pids("doomed"), Vec::<u32>::new());
    for n in 1..=3 {
        let v = c.wait_state(&format!("keep-{n}"), "running");
        assert_eq!(v["status"]["pid"], before[n - 1], "keep-{n} was relaunched");
        assert_eq!(c.pids(&format!("keep-{n}")).len(), 1, "keep-{n} runs twice");
    }
    // Still served, by the same processes.
    let v = c.json("instance/keep-1").unwrap();
    let port = v["status"]["ports"]["http"].as_u64().unwrap();
    assert!(http_get(port, "/").unwrap().contains("200"));
}

#[test]
fn a_lost_node_marks_its_instances_impaired_and_an_instance_that_fits_nowhere_stays_pending() {
    let mut c = Cluster::start(&["--node-grace-period", "2s"], 1, 1024);
    c.apply("web.yaml", WEB);
    c.apply(
        "i.yaml",
        r#"
apiVersion: hanul/v1
kind: Instance
metadata: {name: lonely}
spec: {image: web, instanceType: e2e.small, zone: az-b, ports: [{name: http}]}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: too-big}
spec: {image: web, instanceType: m5.2xlarge}
"#,
    );
    c.wait_state("lonely", "running");
    let v = c.json("instance/too-big").unwrap();
    assert_eq!(v["status"]["state"], "pending", "{v}");
    let out = c
        .server
        .cli(&["describe", "instance", "too-big"])
        .ok()
        .stdout;
    assert!(out.contains("InsufficientInstanceCapacity"), "{out}");

    // The agent of az-b goes away: its node turns NotReady and the instance impaired.
    let agent = c.agents[1].take().unwrap();
    let dir = agent.kill();
    poll(WAIT, "the instance's status check to fail", || {
        let v = c.json("instance/lonely")?;
        let failed = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "StatusCheck" && c["status"] == "False");
        Ok(failed.then_some(()))
    })
    .unwrap();
    let v = c.json("instance/lonely").unwrap();
    assert_eq!(
        v["status"]["node"],
        c.nodes[1].as_str(),
        "not silently moved"
    );
    // Its process is not touched by the node going away.
    assert_eq!(c.pids("lonely").len(), 1, "{v}\n{}", c.agent_logs());

    // The agent comes back: the status check passes again and a delete cleans up.
    c.agents[1] =
        Some(AgentProcess::start_in(&c.server, &c.nodes[1], "az-b", 1, 1024, dir).unwrap());
    poll(WAIT, "the instance's status check to pass again", || {
        let v = c.json("instance/lonely")?;
        let ok = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "StatusCheck" && c["status"] == "True");
        Ok(ok.then_some(()))
    })
    .unwrap();
    c.server
        .cli(&["delete", "instance", "lonely", "--wait", "--timeout", "60s"])
        .ok();
    assert_eq!(c.pids("lonely"), Vec::<u32>::new());
}

#[test]
fn logs_show_the_tail_and_follow_an_instances_output_through_the_server() {
    use std::io::{BufRead, BufReader};
    let c = Cluster::start(&[], 4, 4096);
    c.apply(
        "images.yaml",
        r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: ticker}
spec:
  command: [sh, -c, 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done']
"#,
    );
    c.apply(
        "i.yaml",
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: ticker}\nspec: {image: ticker, instanceType: t3.micro, userData: 'echo first boot'}\n",
    );
    c.wait_state("ticker", "running");
    let out = poll(WAIT, "two ticks in the log", || {
        let out = c.server.cli(&["logs", "instance/ticker"]);
        Ok((out.code == 0 && out.stdout.contains("tick 1")).then_some(out.stdout))
    })
    .unwrap();
    assert!(out.starts_with("first boot\ntick 0\n"), "{out}");
    let tail = c.server.cli(&["logs", "ticker", "--tail", "1"]).ok().stdout;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");

    // -f keeps streaming what the instance writes after the command started.
    let mut follow = std::process::Command::new(hanul_e2e::hanul_bin())
        .args(["--server", &c.server.url, "--token-file"])
        .arg(c.server.token_file())
        .args(["logs", "instance/ticker", "-f", "--tail", "1"])
        .env("HANUL_CONFIG", "/nonexistent/hanul-test-config.json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first: u32 = lines.next().unwrap().unwrap()[5..].parse().unwrap();
    let mut seen = first;
    while seen < first + 5 {
        let line = lines.next().expect("the stream ended").unwrap();
        let n: u32 = line[5..].parse().unwrap();
        assert_eq!(n, seen + 1, "lines are followed in order, none lost");
        seen = n;
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_spot_instance_gets_a_notice_on_its_metadata_endpoint_then_makes_room_for_on_demand() {
    let c = Cluster::start(&["--spot-notice", "3s"], 2, 4096);
    c.apply("web.yaml", WEB);
    let spot = |n: u32| {
        format!(
            "---\napiVersion: hanul/v1\nkind: Instance\nmetadata: {{name: spot-{n}}}\nspec: {{image: web, instanceType: e2e.small, zone: az-a, market: spot, ports: [{{name: http}}]}}\n"
        )
    };
    c.apply("spot.yaml", &(spot(1) + &spot(2)));
    c.wait_state("spot-1", "running");
    c.wait_state("spot-2", "running");
    c.apply(
        "od.yaml",
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: steady}\nspec: {image: web, instanceType: e2e.small, zone: az-a, ports: [{name: http}]}\n",
    );
    // One spot instance gets the two-minute notice (three seconds here), visible to it.
    let node = c.json(&format!("node/{}", c.nodes[0])).unwrap();
    let endpoint = node["spec"]["agentEndpoint"].as_str().unwrap().to_string();
    let port: u64 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let (victim, notice) = poll(WAIT, "a spot interruption notice", || {
        for name in ["spot-1", "spot-2"] {
            let body = http_get(
                port,
                &format!("/{name}/latest/meta-data/spot/instance-action"),
            )
            .map_err(|e| e.to_string())?;
            if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                return Ok(Some((name.to_string(), body)));
            }
        }
        Ok(None)
    })
    .unwrap();
    assert!(notice.contains(r#""action":"terminate""#), "{notice}");
    // Until the notice ends, the on-demand instance waits; then the spot instance goes.
    assert_eq!(
        c.json("instance/steady").unwrap()["status"]["state"],
        "pending"
    );
    c.wait_state("steady", "running");
    poll(WAIT, "the reclaimed spot instance to be gone", || {
        let out = c.server.cli(&["get", "instance", &victim]);
        Ok((out.code != 0).then_some(()))
    })
    .unwrap();
    assert_eq!(c.pids(&victim), Vec::<u32>::new());
    let survivor = if victim == "spot-1" {
        "spot-2"
    } else {
        "spot-1"
    };
    assert_eq!(c.pids(survivor).len(), 1);
}
