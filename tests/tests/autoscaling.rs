//! End-to-end tests of Auto Scaling groups: `hanul server` and two agents (zones az-a and
//! az-b) as separate processes, groups whose instances are real processes, killed and
//! replaced for real, and load balancers that carry real HTTP to them.

use hanul_e2e::{AgentProcess, ServerProcess, poll, processes_with_env, request, write_manifest};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// An HTTP server that answers 500 while a file `sick` is in its working directory, else 200,
/// with the instance's name (and its launch template's image in a header).
const IMAGES: &str = r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: asg-web}
spec:
  command: [python3, -c]
  args:
  - |
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["HANUL_INSTANCE_ID"].encode()
            self.send_response(500 if os.path.exists("sick") else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
---
apiVersion: hanul/v1
kind: InstanceType
metadata: {name: e2e.asg}
spec: {vcpu: 1, memoryMib: 128}
"#;

struct Lab {
    server: ServerProcess,
    agents: Vec<AgentProcess>,
    manifests: tempfile::TempDir,
    tag: String,
}

impl Lab {
    /// A server (nodes NotReady after 2 s without heartbeats) and one agent per zone. `tag`
    /// makes the node names unique among the tests of this process.
    fn start(tag: &str, zones: &[&str]) -> Lab {
        let server =
            ServerProcess::start_in(tempfile::tempdir().unwrap(), &["--node-grace-period", "2s"])
                .unwrap();
        let mut lab = Lab {
            server,
            agents: Vec::new(),
            manifests: tempfile::tempdir().unwrap(),
            tag: tag.into(),
        };
        for z in zones {
            let node = lab.node(z);
            let agent = AgentProcess::start(&lab.server, &node, z, 16, 8192).unwrap();
            lab.server.wait_node_ready(&node, WAIT);
            lab.agents.push(agent);
        }
        lab.apply("images.yaml", IMAGES);
        lab
    }

    fn node(&self, zone: &str) -> String {
        format!("n{}-{}-{zone}", std::process::id(), self.tag)
    }

    fn apply(&self, name: &str, yaml: &str) {
        let f = write_manifest(self.manifests.path(), name, yaml);
        self.server.cli(&["apply", "-f", &f]).ok();
    }

    fn json(&self, target: &str) -> Result<Value, String> {
        self.server.get_json(target)
    }

    fn logs(&self) -> String {
        let mut s = format!("server:\n{}\n", self.server.log_text());
        for a in &self.agents {
            s.push_str(&format!("agent {}:\n{}\n", a.name, a.log_text()));
        }
        s
    }

    /// Waits until `check` accepts the group; returns it.
    fn wait_group(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_group_for(name, what, WAIT, check)
    }

    fn wait_group_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        poll(timeout, &format!("group {name}: {what}"), || {
            let v = self.json(&format!("asg/{name}"))?;
            if check(&v) {
                Ok(Some(v))
            } else {
                Err(v["status"].to_string())
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The group's in-service instances per zone.
    fn per_zone(v: &Value) -> BTreeMap<String, u64> {
        v["status"]["inServiceByZone"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(z, n)| (z.clone(), n.as_u64().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The group's instance records: (name, zone, lifecycle state).
    fn records(v: &Value) -> Vec<(String, String, String)> {
        v["status"]["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                (s("instance"), s("zone"), s("lifecycleState"))
            })
            .collect()
    }

    fn in_service(v: &Value) -> Vec<String> {
        Self::records(v)
            .into_iter()
            .filter(|(_, _, s)| s == "InService")
            .map(|(n, _, _)| n)
            .collect()
    }

    /// The pid of a running instance.
    fn pid(&self, instance: &str) -> u32 {
        poll(WAIT, &format!("{instance} running"), || {
            let v = self.json(&format!("i/{instance}"))?;
            // int64 is a string in the proto3 JSON mapping.
            let pid = v["status"]["pid"].as_str().and_then(|p| p.parse().ok());
            match pid {
                Some(p) if v["status"]["state"] == "running" => Ok(Some(p)),
                _ => Err(v["status"].to_string()),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The agent data dir of the node the instance runs on.
    fn instance_root(&self, instance: &str) -> std::path::PathBuf {
        let v = self.json(&format!("i/{instance}")).unwrap();
        let node = v["status"]["node"].as_str().unwrap();
        let agent = self.agents.iter().find(|a| a.name == node).unwrap();
        agent.data_dir.path().join("instances").join(instance)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn group_manifest(name: &str, body: &str) -> String {
    format!(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {{name: {name}}}\nspec:\n  launchTemplate: {{image: asg-web, instanceType: e2e.asg, ports: [{{name: http}}]}}\n  healthCheckGracePeriodSeconds: 0\n{body}"
    )
}

/// A target group for the group's instances and a load balancer in zone az-a in front of it.
fn balancer(port: u16, deregistration: u32) -> String {
    format!(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {{name: web}}\nspec:\n  port: http\n  healthCheck: {{intervalSeconds: 1, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 2}}\n  deregistrationDelaySeconds: {deregistration}\n---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: web}}\nspec:\n  zones: [az-a]\n  listeners: [{{port: {port}, defaultTargetGroup: web}}]\n"
    )
}

#[test]
fn a_group_spreads_over_zones_replaces_a_killed_instance_and_scales_in_from_the_fuller_zone() {
    let lab = Lab::start("cap", &["az-a", "az-b"]);
    lab.apply(
        "web.yaml",
        &group_manifest(
            "web",
            "  minSize: 1\n  maxSize: 6\n  desiredCapacity: 4\n  zones: [az-a, az-b]\n",
        ),
    );
    let v = lab.wait_group("web", "4 in service", |v| v["status"]["inService"] == 4);
    assert_eq!(
        Lab::per_zone(&v),
        [("az-a".into(), 2), ("az-b".into(), 2)].into()
    );
    // Each is a real process, owned by the group, labelled with it.
    let listed = lab
        .server
        .cli(&["get", "i", "-l", "autoscaling.hanul.dev/group=web"])
        .ok()
        .stdout;
    assert_eq!(listed.matches("running").count(), 4, "{listed}");
    let victim = Lab::in_service(&v)[0].clone();
    let pid = lab.pid(&victim);

    // SIGKILL one instance's process: the group replaces it.
    let killed_at = Instant::now();
    unsafe_kill(pid);
    let v = lab.wait_group("web", "the killed instance replaced", |v| {
        let names = Lab::in_service(v);
        names.len() == 4 && !names.contains(&victim)
    });
    eprintln!("replacement in service after {:?}", killed_at.elapsed());
    assert_eq!(
        Lab::per_zone(&v),
        [("az-a".into(), 2), ("az-b".into(), 2)].into()
    );
    let activities = lab.server.cli(&["asg", "activities", "web"]).ok().stdout;
    assert!(
        activities.contains(&format!("Terminating EC2 instance: {victim}")),
        "{activities}"
    );
    assert!(activities.contains("health check"), "{activities}");

    // 4 → 3 leaves one zone fuller; 3 → 2 must take from that one.
    lab.server
        .cli(&["scale", "asg", "web", "--desired", "3"])
        .ok();
    let v = lab.wait_group("web", "3 in service", |v| {
        v["status"]["inService"] == 3 && Lab::records(v).len() == 3
    });
    let zones = Lab::per_zone(&v);
    let fuller = zones.iter().find(|(_, n)| **n == 2).unwrap().0.clone();
    lab.server
        .cli(&["scale", "asg", "web", "--desired", "2"])
        .ok();
    let v = lab.wait_group("web", "2 in service", |v| {
        v["status"]["inService"] == 2 && Lab::records(v).len() == 2
    });
    assert_eq!(
        Lab::per_zone(&v),
        [("az-a".into(), 1), ("az-b".into(), 1)].into(),
        "the scale in took from {fuller}'s other zone"
    );
    let wide = lab
        .server
        .cli(&["get", "asg", "web", "-o", "wide"])
        .ok()
        .stdout;
    assert!(wide.contains("az-a=1,az-b=1"), "{wide}");
    // Out of range: refused, naming the field.
    let out = lab.server.cli(&["scale", "asg", "web", "--desired", "9"]);
    assert!(
        out.stderr.contains("spec.desiredCapacity"),
        "{}",
        out.stderr
    );
}

fn unsafe_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_lost_agent_is_replaced_in_the_other_zone_and_rebalanced_when_it_returns() {
    let mut lab = Lab::start("lost", &["az-a", "az-b"]);
    lab.apply(
        "web.yaml",
        &group_manifest(
            "web",
            "  minSize: 2\n  maxSize: 4\n  desiredCapacity: 2\n  zones: [az-a, az-b]\n",
        ),
    );
    let v = lab.wait_group("web", "1 + 1 in service", |v| {
        Lab::per_zone(v) == [("az-a".into(), 1), ("az-b".into(), 1)].into()
    });
    let in_a = Lab::records(&v)
        .into_iter()
        .find(|(_, z, _)| z == "az-a")
        .unwrap()
        .0;
    // The agent of az-a dies (its instance keeps running, as a crashed agent leaves it).
    let agent = lab.agents.remove(0);
    let (name, zone) = (agent.name.clone(), "az-a");
    let data = agent.kill();
    let v = lab.wait_group("web", "2 in service in az-b", |v| {
        Lab::per_zone(v) == [("az-b".into(), 2)].into()
    });
    assert!(!Lab::records(&v).iter().any(|(n, _, _)| *n == in_a));
    // It comes back: the group rebalances, and the agent stops the instance it left running.
    let agent = AgentProcess::start_in(&lab.server, &name, zone, 16, 8192, data).unwrap();
    lab.agents.insert(0, agent);
    lab.wait_group("web", "rebalanced 1 + 1", |v| {
        Lab::per_zone(v) == [("az-a".into(), 1), ("az-b".into(), 1)].into()
            && Lab::records(v).len() == 2
    });
    poll(WAIT, "the old instance's process to stop", || {
        let left = processes_with_env(&[("HANUL_INSTANCE_ID", &in_a)]);
        Ok(left.is_empty().then_some(())).map_err(|_: ()| String::new())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let activities = lab.server.cli(&["asg", "activities", "web"]).ok().stdout;
    assert!(activities.contains("rebalance"), "{activities}");
}

#[test]
fn with_elb_health_checks_an_instance_answering_500_gets_no_traffic_and_is_replaced_after_the_grace_period()
 {
    let lab = Lab::start("elb", &["az-a"]);
    let port = free_port();
    lab.apply("lb.yaml", &balancer(port, 1));
    let grace = 10;
    lab.apply(
        "web.yaml",
        &group_manifest(
            "web",
            "  minSize: 2\n  maxSize: 3\n  desiredCapacity: 2\n  healthCheckType: ELB\n  targetGroups: [web]\n",
        )
        .replace(
            "healthCheckGracePeriodSeconds: 0",
            &format!("healthCheckGracePeriodSeconds: {grace}"),
        ),
    );
    let v = lab.wait_group("web", "2 in service", |v| v["status"]["inService"] == 2);
    let names = Lab::in_service(&v);
    poll(WAIT, "both targets healthy", || {
        let tg = lab.json("tg/web")?;
        let healthy = tg["status"]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] == "healthy")
            .count();
        Ok((healthy == 2).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let sick = names[0].clone();
    let in_service_at = v["status"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == sick.as_str())
        .unwrap()["inServiceAt"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(lab.instance_root(&sick).join("sick"), "").unwrap();
    poll(WAIT, "the sick target unhealthy", || {
        let tg = lab.json("tg/web")?;
        let bad = tg["status"]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["instance"] == sick.as_str() && t["health"] == "unhealthy");
        Ok(bad.then_some(()))
    })
    .unwrap();
    // Unhealthy: no traffic reaches it while it waits for its replacement.
    for _ in 0..20 {
        let r = request(port, "/", &[]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.body, sick);
    }
    let v = lab.wait_group("web", "the sick instance replaced", |v| {
        let names = Lab::in_service(v);
        names.len() == 2 && !names.contains(&sick)
    });
    // Not before the grace period was over.
    let activity = v["status"]["activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["description"] == format!("Terminating EC2 instance: {sick}").as_str())
        .unwrap()
        .clone();
    let started = activity["startTime"].as_str().unwrap();
    let secs = |t: &str| humantime_secs(t);
    assert!(
        secs(started) >= secs(&in_service_at) + grace,
        "terminated at {started}, in service at {in_service_at}"
    );
    assert!(
        activity["cause"]
            .as_str()
            .unwrap()
            .contains("ELB health check"),
        "{activity}"
    );
}

/// Seconds since the epoch of an RFC 3339 time as the proto3 JSON mapping writes it.
fn humantime_secs(t: &str) -> u64 {
    humantime::parse_rfc3339_weak(t)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A lifecycle hook's notification target: each POST's JSON body arrives on `messages`.
struct Webhook {
    addr: std::net::SocketAddr,
    messages: std::sync::mpsc::Receiver<Value>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, messages) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = conn.read(&mut buf) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break Some(body.to_owned());
                        }
                    }
                };
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                if let Some(v) = body.and_then(|b| serde_json::from_str(&b).ok()) {
                    let _ = tx.send(v);
                }
            }
        });
        Webhook { addr, messages }
    }
}

#[test]
fn lifecycle_hooks_hold_instances_until_completed_or_timed_out() {
    let lab = Lab::start("hooks", &["az-a"]);
    let port = free_port();
    lab.apply("lb.yaml", &balancer(port, 1));
    let webhook = Webhook::start();
    let hooks = format!(
        "  lifecycleHooks:\n  - {{name: warm, transition: 'autoscaling:EC2_INSTANCE_LAUNCHING', heartbeatTimeoutSeconds: 30, defaultResult: CONTINUE, notificationTarget: 'http://{}/lifecycle', notificationMetadata: e2e}}\n  - {{name: drain, transition: 'autoscaling:EC2_INSTANCE_TERMINATING', heartbeatTimeoutSeconds: 600}}\n",
        webhook.addr
    );
    let manifest = |desired: u32| {
        group_manifest(
            "web",
            &format!(
                "  minSize: 0\n  maxSize: 3\n  desiredCapacity: {desired}\n  targetGroups: [web]\n{hooks}"
            ),
        )
    };
    lab.apply("web.yaml", &manifest(1));
    let v = lab.wait_group("web", "an instance waiting at the launch hook", |v| {
        Lab::records(v).iter().any(|(_, _, s)| s == "Pending:Wait")
    });
    let first = Lab::records(&v)[0].0.clone();
    // Held out of the target group, and its metadata says why.
    std::thread::sleep(Duration::from_secs(2));
    let tg = lab.json("tg/web").unwrap();
    assert!(
        !tg["status"]["targets"].to_string().contains(&first),
        "{tg}"
    );
    let node = lab.json(&format!("node/{}", lab.agents[0].name)).unwrap();
    let endpoint = node["spec"]["agentEndpoint"].as_str().unwrap().to_owned();
    let endpoint_port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let state = request(
        endpoint_port,
        &format!("/{first}/latest/meta-data/autoscaling/target-lifecycle-state"),
        &[],
    )
    .unwrap();
    assert_eq!(state.body, "Pending:Wait");
    // The hook's target got AWS's lifecycle message.
    let message = webhook
        .messages
        .recv_timeout(Duration::from_secs(10))
        .expect("no lifecycle message");
    assert_eq!(message["LifecycleHookName"], "warm");
    assert_eq!(message["EC2InstanceId"], first.as_str());
    assert_eq!(message["AutoScalingGroupName"], "web");
    assert_eq!(message["NotificationMetadata"], "e2e");
    assert_eq!(
        message["LifecycleTransition"],
        "autoscaling:EC2_INSTANCE_LAUNCHING"
    );
    lab.server
        .cli(&[
            "asg",
            "complete-lifecycle-action",
            "web",
            "--hook",
            "warm",
            "--instance",
            &first,
            "--result",
            "CONTINUE",
        ])
        .ok();
    lab.wait_group("web", "in service", |v| {
        Lab::in_service(v) == [first.clone()]
    });
    poll(WAIT, "registered and healthy", || {
        let r = request(port, "/", &[])?;
        Ok((r.status == 200 && r.body == first).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // A second one that nobody completes: the timeout applies the default (CONTINUE).
    lab.apply("web.yaml", &manifest(2));
    let v = lab.wait_group("web", "the second waiting", |v| {
        Lab::records(v).iter().any(|(_, _, s)| s == "Pending:Wait")
    });
    let waiting_since = Instant::now();
    let second = Lab::records(&v)
        .into_iter()
        .find(|(_, _, s)| s == "Pending:Wait")
        .unwrap()
        .0;
    lab.wait_group_for(
        "web",
        "the second in service",
        Duration::from_secs(90),
        |v| Lab::in_service(v).contains(&second),
    );
    let waited = waiting_since.elapsed();
    assert!(waited >= Duration::from_secs(25), "held only {waited:?}");

    // Scale in: the termination hook keeps the process running until completed.
    lab.apply("web.yaml", &manifest(1));
    let v = lab.wait_group("web", "one at the termination hook", |v| {
        Lab::records(v)
            .iter()
            .any(|(_, _, s)| s == "Terminating:Wait")
    });
    let leaving = Lab::records(&v)
        .into_iter()
        .find(|(_, _, s)| s == "Terminating:Wait")
        .unwrap()
        .0;
    let pid = lab.pid(&leaving);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process went before the hook was completed"
    );
    lab.server
        .cli(&[
            "asg",
            "record-heartbeat",
            "web",
            "--hook",
            "drain",
            "--instance",
            &leaving,
        ])
        .ok();
    lab.server
        .cli(&[
            "asg",
            "complete-lifecycle-action",
            "web",
            "--hook",
            "drain",
            "--instance",
            &leaving,
            "--result",
            "CONTINUE",
        ])
        .ok();
    poll(WAIT, "the instance terminated", || {
        let v = lab.json(&format!("i/{leaving}"))?;
        Ok((v["status"]["state"] == "terminated").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert!(processes_with_env(&[("HANUL_INSTANCE_ID", &leaving)]).is_empty());
}

#[test]
fn an_instance_refresh_replaces_every_instance_while_requests_keep_succeeding() {
    let lab = Lab::start("refresh", &["az-a"]);
    let port = free_port();
    lab.apply("lb.yaml", &balancer(port, 2));
    let manifest = |image: &str| {
        group_manifest(
            "web",
            "  minSize: 2\n  maxSize: 3\n  desiredCapacity: 2\n  healthCheckType: ELB\n  targetGroups: [web]\n  instanceRefresh: {minHealthyPercentage: 100, instanceWarmupSeconds: 1}\n",
        )
        .replace("image: asg-web,", &format!("image: {image},"))
    };
    lab.apply(
        "web2.yaml",
        &IMAGES.replace("name: asg-web}", "name: asg-web2}"),
    );
    lab.apply("web.yaml", &manifest("asg-web"));
    let v = lab.wait_group("web", "2 in service", |v| v["status"]["inService"] == 2);
    let old = Lab::in_service(&v);
    poll(WAIT, "both serving", || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            if let Ok(r) = request(port, "/", &[])
                && r.status == 200
            {
                seen.insert(r.body);
            }
        }
        Ok((seen.len() == 2).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                replies.push(request(port, "/", &[]).map(|r| (r.status, r.body)));
                std::thread::sleep(Duration::from_millis(5));
            }
            replies
        })
    };
    lab.apply("web.yaml", &manifest("asg-web2"));
    let v = lab.wait_group_for("web", "the refresh done", Duration::from_secs(120), |v| {
        v["status"]["instanceRefresh"]["status"] == "Successful"
    });
    stop.store(true, Ordering::Relaxed);
    let replies = stream.join().unwrap();
    let now = Lab::in_service(&v);
    assert_eq!(now.len(), 2);
    assert!(now.iter().all(|n| !old.contains(n)), "{old:?} {now:?}");
    assert!(
        v["status"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["launchTemplateVersion"] == 2)
    );
    let failed: Vec<_> = replies
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        replies.len()
    );
    let served_by_new = replies
        .iter()
        .filter(|r| matches!(r, Ok((_, b)) if now.contains(b)))
        .count();
    assert!(served_by_new > 0, "no request reached a new instance");
}

#[test]
fn a_group_follows_the_latest_version_of_a_launch_template_object() {
    let lab = Lab::start("lt", &["az-a"]);
    lab.apply(
        "web2.yaml",
        &IMAGES.replace("name: asg-web}", "name: asg-web2}"),
    );
    let template = |image: &str| {
        format!(
            "apiVersion: hanul/v1\nkind: LaunchTemplate\nmetadata: {{name: web}}\nspec: {{image: {image}, instanceType: e2e.asg, ports: [{{name: http}}]}}\n"
        )
    };
    lab.apply("lt.yaml", &template("asg-web"));
    lab.apply(
        "web.yaml",
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec:\n  launchTemplateRef: {name: web}\n  minSize: 1\n  maxSize: 2\n  desiredCapacity: 1\n  healthCheckGracePeriodSeconds: 0\n  instanceRefresh: {instanceWarmupSeconds: 0}\n",
    );
    let v = lab.wait_group("web", "1 in service", |v| v["status"]["inService"] == 1);
    let first = Lab::in_service(&v)[0].clone();
    let image = |name: &str| lab.json(&format!("i/{name}")).unwrap()["spec"]["image"].clone();
    assert_eq!(image(&first), "asg-web");
    let listed = lab.server.cli(&["get", "lt"]).ok().stdout;
    assert!(listed.contains("asg-web"), "{listed}");
    // A new version: the group refreshes onto it.
    lab.apply("lt.yaml", &template("asg-web2"));
    let v = lab.wait_group("web", "refreshed onto version 2", |v| {
        v["status"]["instanceRefresh"]["status"] == "Successful"
            && Lab::in_service(v).len() == 1
            && !Lab::in_service(v).contains(&first)
    });
    let second = Lab::in_service(&v)[0].clone();
    assert_eq!(image(&second), "asg-web2");
    let lt = lab.json("lt/web").unwrap();
    assert_eq!(lt["status"]["latestVersion"], 2);
    assert_eq!(lt["status"]["versions"][0]["template"]["image"], "asg-web");
}
