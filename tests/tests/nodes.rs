//! End-to-end tests of node agents: registration, heartbeats and the node lifecycle, with the
//! real server and agents as separate processes.

use hanul_e2e::{AgentProcess, ServerProcess, poll};
use std::time::Duration;

fn node_row(s: &ServerProcess, name: &str) -> Result<Option<String>, String> {
    let out = s.cli(&["get", "nodes", "-o", "wide"]);
    if out.code != 0 {
        return Err(out.stderr);
    }
    Ok(out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(String::from))
}

#[test]
fn agents_in_two_zones_register_ready_nodes_with_their_capacity() {
    let s = ServerProcess::start_in(tempfile::tempdir().unwrap(), &["--node-grace-period", "3s"])
        .unwrap();
    let _a = AgentProcess::start(&s, "node-a", "az-a", 2, 2048).unwrap();
    let _b = AgentProcess::start(&s, "node-b", "az-b", 1, 1024).unwrap();
    for (name, zone) in [("node-a", "az-a"), ("node-b", "az-b")] {
        let row = poll(Duration::from_secs(30), "the node to be Ready", || {
            Ok(node_row(&s, name)?.filter(|r| r.contains("True") && r.contains(zone)))
        })
        .unwrap();
        assert!(row.contains(zone), "{row}");
    }
    let out = s.cli(&["get", "node", "node-b", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["spec"]["capacity"]["cpuMillis"], 1000, "{v}");
    assert_eq!(v["spec"]["capacity"]["memoryMib"], "1024", "{v}");
    assert!(v["status"]["lastHeartbeatTime"].is_string(), "{v}");
}

#[test]
fn a_node_whose_agent_is_gone_turns_not_ready_and_recovers_when_it_returns() {
    let s = ServerProcess::start_in(tempfile::tempdir().unwrap(), &["--node-grace-period", "2s"])
        .unwrap();
    let a = AgentProcess::start(&s, "node-a", "az-a", 2, 2048).unwrap();
    poll(Duration::from_secs(30), "node-a Ready", || {
        Ok(node_row(&s, "node-a")?.filter(|r| r.contains("True")))
    })
    .unwrap();

    let dir = a.kill();
    let row = poll(Duration::from_secs(30), "node-a to turn NotReady", || {
        Ok(node_row(&s, "node-a")?.filter(|r| r.contains("Unknown") || r.contains("NotReady")))
    })
    .unwrap();
    assert!(!row.contains("True"), "{row}");
    let out = s.cli(&["events"]).ok();
    assert!(out.stdout.contains("NodeNotReady"), "{}", out.stdout);

    let _a = AgentProcess::start_in(&s, "node-a", "az-a", 2, 2048, dir).unwrap();
    poll(Duration::from_secs(30), "node-a Ready again", || {
        Ok(node_row(&s, "node-a")?.filter(|r| r.contains("True")))
    })
    .unwrap();
}

#[test]
fn an_agent_refuses_to_take_over_a_node_of_another_zone() {
    let s = ServerProcess::start().unwrap();
    let a = AgentProcess::start(&s, "node-a", "az-a", 1, 512).unwrap();
    poll(Duration::from_secs(30), "node-a registered", || {
        node_row(&s, "node-a")
    })
    .unwrap();
    drop(a);
    let mut b = AgentProcess::start(&s, "node-a", "az-b", 1, 512).unwrap();
    let status = poll(Duration::from_secs(30), "the second agent to exit", || {
        b.child.try_wait().map_err(|e| e.to_string())
    })
    .unwrap();
    assert!(!status.success());
    assert!(
        b.log_text().contains("is registered in zone \"az-a\""),
        "{}",
        b.log_text()
    );
}
