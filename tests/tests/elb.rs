//! End-to-end tests of Elastic Load Balancing: `hanul server` and an agent as separate
//! processes, load balancers placed by the controller and run by the agent's data plane, real
//! HTTP and TCP through real listeners to real processes (instances, and `ip` targets the test
//! starts itself so that it can kill and restart them).

use hanul_e2e::{AgentProcess, ServerProcess, poll, request, write_manifest};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// What a status change takes to show through the API beyond the data plane's own timing: the
/// agent's write and this test's polling of `hanul get`.
const STATUS_SLACK: Duration = Duration::from_millis(1500);

struct Lab {
    server: ServerProcess,
    agent: AgentProcess,
    manifests: tempfile::TempDir,
}

impl Lab {
    /// `tag` makes the node's name unique among the tests of this process: an agent's
    /// leftovers are found (and killed) by node name.
    fn start(tag: &str) -> Lab {
        let server = ServerProcess::start_in(tempfile::tempdir().unwrap(), &[]).unwrap();
        let node = format!("n{}-{tag}", std::process::id());
        let agent = AgentProcess::start(&server, &node, "az-a", 4, 4096).unwrap();
        let lab = Lab {
            server,
            agent,
            manifests: tempfile::tempdir().unwrap(),
        };
        lab.server.wait_node_ready(&node, WAIT);
        lab
    }

    fn apply(&self, name: &str, yaml: &str) {
        let f = write_manifest(self.manifests.path(), name, yaml);
        self.server.cli(&["apply", "-f", &f]).ok();
    }

    fn json(&self, target: &str) -> Result<Value, String> {
        self.server.get_json(target)
    }

    fn logs(&self) -> String {
        format!(
            "server:\n{}\nagent:\n{}",
            self.server.log_text(),
            self.agent.log_text()
        )
    }

    /// Waits for the load balancer's `status.state`; returns the load balancer.
    fn wait_lb(&self, name: &str, state: &str) -> Value {
        poll(WAIT, &format!("load balancer {name} {state}"), || {
            let v = self.json(&format!("lb/{name}"))?;
            if v["status"]["state"] == state {
                Ok(Some(v))
            } else {
                Err(v["status"].to_string())
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The health of each target of a group, by address (and instance, when it has one).
    fn health(&self, tg: &str) -> Result<HashMap<String, String>, String> {
        let v = self.json(&format!("tg/{tg}"))?;
        Ok(v["status"]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let key = match t["instance"].as_str() {
                    Some(i) if !i.is_empty() => i.to_owned(),
                    _ => t["address"].as_str().unwrap_or("").to_owned(),
                };
                (key, t["health"].as_str().unwrap_or("").to_owned())
            })
            .collect())
    }

    fn wait_health(&self, tg: &str, want: &[(&str, &str)]) -> Duration {
        let started = Instant::now();
        poll(WAIT, &format!("{tg} targets {want:?}"), || {
            let health = self.health(tg)?;
            let ok = want
                .iter()
                .all(|(k, h)| health.get(*k).map(String::as_str) == Some(*h));
            if ok {
                Ok(Some(()))
            } else {
                Err(format!("{health:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        started.elapsed()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP server process (python's) serving `id` and `sticky/id` with its name.
struct Backend {
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), name).unwrap();
        std::fs::create_dir(dir.path().join("sticky")).unwrap();
        std::fs::write(dir.path().join("sticky/id"), name).unwrap();
        let mut b = Backend {
            name: name.into(),
            port: free_port(),
            dir,
            child: None,
        };
        b.run();
        b
    }

    fn run(&mut self) {
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        poll(WAIT, "the backend to listen", || {
            Ok(TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ()))
        })
        .unwrap();
    }

    /// SIGKILL, as a crashed process.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ip_group(name: &str, backends: &[&Backend], extra: &str) -> String {
    let targets: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ip: 127.0.0.1, port: {}}}", b.port))
        .collect();
    format!(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {{name: {name}}}\nspec:\n  port: '80'\n  targets: [{}]\n  healthCheck: {{intervalSeconds: 1, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 2, path: /id}}\n  deregistrationDelaySeconds: 2\n{extra}",
        targets.join(", ")
    )
}

#[test]
fn an_application_load_balancer_spreads_fails_over_and_sticks() {
    let lab = Lab::start("alb");
    let mut backends: Vec<Backend> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let port = free_port();
    let refs: Vec<&Backend> = backends.iter().collect();
    lab.apply(
        "lb.yaml",
        &format!(
            "{}---\n{}---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: web}}\nspec:\n  listeners:\n  - port: {port}\n    defaultTargetGroup: web\n    rules: [{{pathPrefix: /sticky/, targetGroup: sticky}}]\n",
            ip_group("web", &refs, ""),
            ip_group(
                "sticky",
                &refs,
                "  stickiness: {enabled: true, type: lb_cookie, durationSeconds: 600}\n"
            ),
        ),
    );
    let lb = lab.wait_lb("web", "active");
    assert_eq!(
        lb["status"]["addresses"][0],
        format!("127.0.0.1:{port}"),
        "{lb}"
    );
    assert_eq!(lb["status"]["dnsName"], "web.elb.hanul.internal");
    let all: Vec<(String, &str)> = backends.iter().map(|b| (b.address(), "healthy")).collect();
    let want: Vec<(&str, &str)> = all.iter().map(|(a, h)| (a.as_str(), *h)).collect();
    lab.wait_health("web", &want);
    lab.wait_health("sticky", &want);

    let page = lab.server.cli(&["describe", "lb", "web"]).ok().stdout;
    assert!(page.contains("Target Health:"), "{page}");
    let row = page
        .lines()
        .find(|l| l.contains(&backends[0].address()) && l.contains("sticky"))
        .unwrap_or_else(|| panic!("{page}"));
    assert!(row.contains("healthy"), "{row}");

    // Round robin over the three.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let r = request(port, "/id", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        *seen.entry(r.body).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");

    // A sticky client stays on its target.
    let first = request(port, "/sticky/id", &[]).unwrap();
    let cookie = first.cookie("HANULLB").expect("an lb cookie");
    for _ in 0..10 {
        let r = request(port, "/sticky/id", &[("Cookie", &cookie)]).unwrap();
        assert_eq!(r.body, first.body);
    }

    // Kill the pinned backend: no request fails, the client moves, and the checks mark the
    // target unhealthy within interval x unhealthyThreshold + interval.
    let pinned = backends.iter().position(|b| b.name == first.body).unwrap();
    let killed_at = Instant::now();
    backends[pinned].kill();
    let moved = request(port, "/sticky/id", &[("Cookie", &cookie)]).unwrap();
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, first.body);
    let new_cookie = moved.cookie("HANULLB").expect("a new cookie");
    assert_ne!(new_cookie, cookie);
    for _ in 0..10 {
        let r = request(port, "/sticky/id", &[("Cookie", &new_cookie)]).unwrap();
        assert_eq!((r.status, &r.body), (200, &moved.body));
        let r = request(port, "/id", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.body, first.body);
    }
    let dead = backends[pinned].address();
    lab.wait_health("web", &[(&dead, "unhealthy")]);
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_secs(3) + STATUS_SLACK,
        "unhealthy after {took:?}"
    );
    let tg = lab.json("tg/web").unwrap();
    let t = tg["status"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == dead.as_str())
        .unwrap();
    assert_eq!(t["reason"], "Target.FailedHealthChecks", "{t}");

    // Back: healthy after healthyThreshold passes, and it gets traffic again.
    let restarted_at = Instant::now();
    backends[pinned].run();
    lab.wait_health("web", &[(&dead, "healthy")]);
    let took = restarted_at.elapsed();
    assert!(
        took <= Duration::from_secs(3) + STATUS_SLACK,
        "healthy again after {took:?}"
    );
    let mut back = false;
    for _ in 0..6 {
        back |= request(port, "/id", &[]).unwrap().body == first.body;
    }
    assert!(back, "the restarted target gets no traffic");

    // Events and metrics.
    let events = lab.server.cli(&["get", "events"]).ok().stdout;
    assert!(events.contains("TargetUnhealthy"), "{events}");
    assert!(events.contains("TargetHealthy"), "{events}");
    let node = lab.json(&format!("node/{}", lab.agent.name)).unwrap();
    let endpoint = node["spec"]["agentEndpoint"].as_str().unwrap();
    let endpoint_port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let metrics = request(endpoint_port, "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains("hanul_elb_request_count{target_group=\"web\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("hanul_elb_healthy_host_count{target_group=\"web\"} 3"));
}

const WEB: &str = r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: whoami}
spec:
  command: [sh, -c]
  args: ['mkdir -p api && echo -n "$HANUL_INSTANCE_ID" > id && cp id api/id && exec python3 -m http.server "$PORT" --bind 127.0.0.1']
---
apiVersion: hanul/v1
kind: InstanceType
metadata: {name: e2e.lb}
spec: {vcpu: 1, memoryMib: 256}
"#;

#[test]
fn instance_targets_route_by_rules_and_drain_without_failed_requests() {
    let lab = Lab::start("inst");
    lab.apply("web.yaml", WEB);
    let port = free_port();
    let instance = |name: &str| {
        format!(
            "apiVersion: hanul/v1\nkind: Instance\nmetadata: {{name: {name}}}\nspec: {{image: whoami, instanceType: e2e.lb, ports: [{{name: http}}]}}\n"
        )
    };
    let group = |name: &str, instances: &[&str]| {
        let targets: Vec<String> = instances
            .iter()
            .map(|i| format!("{{instance: {i}}}"))
            .collect();
        format!(
            "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {{name: {name}}}\nspec:\n  port: http\n  targets: [{}]\n  healthCheck: {{intervalSeconds: 1, timeoutSeconds: 1, healthyThreshold: 2}}\n  deregistrationDelaySeconds: 5\n",
            targets.join(", ")
        )
    };
    lab.apply(
        "all.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}---\n{}---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: site}}\nspec:\n  listeners:\n  - port: {port}\n    defaultTargetGroup: web\n    rules:\n    - {{host: api.example.com, targetGroup: api}}\n    - {{pathPattern: '/api/*', targetGroup: api}}\n    - {{pathPrefix: /teapot, fixedResponse: {{statusCode: 418, body: short and stout}}}}\n",
            instance("web-1"),
            instance("web-2"),
            instance("api-1"),
            group("web", &["web-1", "web-2"]),
            group("api", &["api-1"]),
        ),
    );
    lab.wait_lb("site", "active");
    lab.wait_health("web", &[("web-1", "healthy"), ("web-2", "healthy")]);
    lab.wait_health("api", &[("api-1", "healthy")]);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let r = request(port, "/id", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        *seen.entry(r.body).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        request(port, "/id", &[("Host", "api.example.com")])
            .unwrap()
            .body,
        "api-1"
    );
    assert_eq!(request(port, "/api/id", &[]).unwrap().body, "api-1");
    let teapot = request(port, "/teapot", &[]).unwrap();
    assert_eq!(
        (teapot.status, teapot.body.as_str()),
        (418, "short and stout")
    );

    // A steady stream of requests while web-2 is deregistered: none fails, and web-2 stops
    // getting new ones.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = request(port, "/id", &[]).map(|r| (r.status, r.body));
                replies.push((Instant::now(), r));
            }
            replies
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let deregistered_at = Instant::now();
    lab.apply("web-tg.yaml", &group("web", &["web-1"]));
    poll(WAIT, "web-2 to drain", || {
        let h = lab.health("web")?;
        Ok((h.get("web-2").is_none_or(|s| s == "draining")).then_some(()))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let wide = lab
        .server
        .cli(&["get", "tg", "web", "-o", "wide"])
        .ok()
        .stdout;
    stop.store(true, Ordering::Relaxed);
    let replies = stream.join().unwrap();
    let failed: Vec<_> = replies
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        replies.len()
    );
    assert!(replies.len() > 20, "too few requests: {}", replies.len());
    // Requests sent a second after the change (the watch and the apply) all go to web-1.
    let late: Vec<_> = replies
        .iter()
        .filter(|(at, _)| *at > deregistered_at + Duration::from_secs(1))
        .collect();
    assert!(!late.is_empty());
    assert!(
        late.iter()
            .all(|(_, r)| matches!(r, Ok((_, b)) if b == "web-1")),
        "{late:?}"
    );
    assert!(wide.contains("web-1") && wide.contains("healthy"), "{wide}");

    // Stopping an instance takes it out of its group too.
    lab.server.cli(&["instance", "stop", "api-1"]).ok();
    lab.wait_health("api", &[("api-1", "unused")]);
    let r = request(port, "/api/id", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
}

#[test]
fn a_network_load_balancer_relays_tcp_and_bad_listeners_are_reported() {
    let lab = Lab::start("nlb");
    // An upper-casing echo server in this process.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    lab.apply(
        "nlb.yaml",
        &format!(
            "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {{name: echo}}\nspec:\n  protocol: TCP\n  port: '{echo_port}'\n  targets: [{{ip: 127.0.0.1}}]\n  healthCheck: {{intervalSeconds: 1, timeoutSeconds: 1}}\n---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: echo}}\nspec:\n  type: network\n  listeners: [{{port: {port}, defaultTargetGroup: echo}}]\n---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: nowhere}}\nspec:\n  listeners: [{{port: {}, defaultTargetGroup: nope}}]\n---\napiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {{name: busy}}\nspec:\n  type: network\n  listeners: [{{port: {taken_port}, defaultTargetGroup: echo}}]\n",
            free_port()
        ),
    );
    lab.wait_lb("echo", "active");
    lab.wait_health("echo", &[(&format!("127.0.0.1:{echo_port}"), "healthy")]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    for word in ["hello", "through the load balancer"] {
        s.write_all(word.as_bytes()).unwrap();
        let mut buf = vec![0u8; word.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), word.to_ascii_uppercase());
    }

    let nowhere = lab.wait_lb("nowhere", "failed");
    let reason = nowhere["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("\"nope\" does not exist"), "{reason}");
    let busy = lab.wait_lb("busy", "failed");
    let reason = busy["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("port {taken_port} is already in use")),
        "{reason}"
    );
    // A bad manifest is refused whole, naming the field.
    let f = write_manifest(
        lab.manifests.path(),
        "bad.yaml",
        "apiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {name: bad}\nspec:\n  listeners: [{port: 70000, defaultTargetGroup: echo}]\n",
    );
    let out = lab.server.cli(&["apply", "-f", &f]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("spec.listeners[0].port"),
        "{}",
        out.stderr
    );
    drop(taken);
}
