//! The data plane with real sockets: small hyper backends on 127.0.0.1 behind real listeners.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::*;
use crate::{DataPlane, Health};

/// An HTTP backend answering its name (and the request's Host and X-Forwarded-For); dropping
/// it closes its listener and every connection, like a killed process.
struct Backend {
    name: String,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = name.to_owned();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let me = me.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let me = me.clone();
                    async move {
                        let slow = req.uri().path() == "/slow";
                        if slow {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let body = format!("{me} host={} xff={}", h("host"), h("x-forwarded-for"));
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        if req.uri().path() == "/login" {
                            resp.headers_mut()
                                .insert("set-cookie", format!("session={me}").parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        name: name.into(),
        port,
        task,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn target(port: u16) -> TargetConfig {
    let address = format!("127.0.0.1:{port}");
    TargetConfig {
        instance: String::new(),
        address: address.clone(),
        check_address: address,
        unused: None,
    }
}

fn group(name: &str, backends: &[&Backend]) -> GroupConfig {
    GroupConfig {
        name: name.into(),
        protocol: Protocol::Http,
        targets: backends.iter().map(|b| target(b.port)).collect(),
        health_check: HealthCheckConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(150),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..HealthCheckConfig::default()
        },
        stickiness: None,
        deregistration_delay: Duration::from_secs(30),
        algorithm: Algorithm::RoundRobin,
        health_check_enabled: true,
        connection_termination: false,
    }
}

fn listener(port: u16, default_group: &str, protocol: Protocol) -> ListenerConfig {
    ListenerConfig {
        load_balancer: "web".into(),
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        protocol,
        default_group: default_group.into(),
        rules: Vec::new(),
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GET through the load balancer: status, body, Set-Cookie.
async fn get(
    client: &HttpClient,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<String>) {
    let mut req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), cookies)
}

fn who(body: &str) -> String {
    body.split(' ').next().unwrap().to_owned()
}

async fn wait_healthy(plane: &DataPlane, group: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = plane.report(group).unwrap_or_default();
        if report
            .iter()
            .filter(|t| t.state.health == Health::Healthy)
            .count()
            == n
        {
            return;
        }
        assert!(Instant::now() < deadline, "not {n} healthy: {report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_spread_over_healthy_targets_and_leave_a_dead_one() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let (plane, mut events) = DataPlane::new();
    let port = free_port();
    let states = plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![group("web", &[&a, &b, &c])],
    });
    assert_eq!(states[0].error, None);
    let client = http_client();
    wait_healthy(&plane, "web", 3).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, body, _) = get(&client, port, "/", &[("host", "web.example")]).await;
        assert_eq!(status, 200);
        assert!(body.contains("host=web.example xff=127.0.0.1"), "{body}");
        *seen.entry(who(&body)).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "round robin: {seen:?}");

    // Kill b: refused connections are retried elsewhere at once, and the checks take it out
    // within interval x unhealthy threshold (+ one interval).
    let killed = Instant::now();
    drop(b);
    for _ in 0..30 {
        let (status, body, _) = get(&client, port, "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(who(&body), "b");
    }
    loop {
        let report = plane.report("web").unwrap();
        if report.iter().any(|t| t.state.health == Health::Unhealthy) {
            let t = report
                .iter()
                .find(|t| t.state.health == Health::Unhealthy)
                .unwrap();
            assert_eq!(t.state.reason, "Target.FailedHealthChecks");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(600 + 300),
            "{report:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut transitions = Vec::new();
    while let Ok(e) = events.try_recv() {
        transitions.push((e.from, e.to.map(|s| s.health)));
    }
    assert!(transitions.contains(&(Health::Initial, Some(Health::Healthy))));
    assert!(transitions.contains(&(Health::Healthy, Some(Health::Unhealthy))));
    let mut metrics = String::new();
    plane.render_metrics(&mut metrics);
    assert!(
        metrics.contains("hanul_elb_healthy_host_count{target_group=\"web\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("hanul_elb_unhealthy_host_count{target_group=\"web\"} 1"));

    // With no healthy target left the load balancer answers 503 itself.
    drop((a, c));
    wait_healthy(&plane, "web", 0).await;
    let (status, body, _) = get(&client, port, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    let mut metrics = String::new();
    plane.render_metrics(&mut metrics);
    assert!(
        metrics.contains("hanul_elb_responses{target_group=\"web\",code=\"503\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rules_route_by_host_and_path_and_answer_themselves() {
    let (api, static_, default) = (
        backend("api").await,
        backend("static").await,
        backend("default").await,
    );
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut l = listener(port, "default", Protocol::Http);
    let rule = |host: Option<&str>, prefix: Option<&str>, action| RuleConfig {
        host: host.map(Into::into),
        path_prefix: prefix.map(Into::into),
        path_pattern: None,
        action,
    };
    l.rules = vec![
        rule(Some("api.example.com"), None, Action::Forward("api".into())),
        rule(None, Some("/static/"), Action::Forward("static".into())),
        rule(
            None,
            Some("/teapot"),
            Action::Fixed {
                status: 418,
                content_type: "text/plain".into(),
                body: "short and stout".into(),
            },
        ),
        rule(
            None,
            Some("/old"),
            Action::Redirect {
                protocol: None,
                host: Some("new.example.com".into()),
                port: None,
                path: Some("/new".into()),
                status: 301,
            },
        ),
    ];
    plane.apply(Config {
        listeners: vec![l],
        groups: vec![
            group("api", &[&api]),
            group("static", &[&static_]),
            group("default", &[&default]),
        ],
    });
    for g in ["api", "static", "default"] {
        wait_healthy(&plane, g, 1).await;
    }
    let client = http_client();
    let (_, body, _) = get(&client, port, "/static/x", &[("host", "api.example.com")]).await;
    assert_eq!(who(&body), "api");
    let (_, body, _) = get(&client, port, "/static/x", &[("host", "www.example.com")]).await;
    assert_eq!(who(&body), "static");
    let (_, body, _) = get(&client, port, "/other", &[]).await;
    assert_eq!(who(&body), "default");
    let (status, body, _) = get(&client, port, "/teapot", &[]).await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    let resp = client
        .request(
            hyper::Request::get(format!("http://127.0.0.1:{port}/old?q=1"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers()["location"],
        format!("http://new.example.com:{port}/new?q=1").as_str()
    );
}

#[tokio::test]
async fn an_lb_cookie_pins_a_client_and_moves_it_when_its_target_fails() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = group("web", &[&a, &b]);
    g.stickiness = Some(Stickiness::LbCookie {
        duration: Duration::from_secs(3600),
    });
    plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![g],
    });
    wait_healthy(&plane, "web", 2).await;
    let client = http_client();
    let (_, body, cookies) = get(&client, port, "/", &[]).await;
    let first = who(&body);
    let cookie = cookies[0].split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("HANULLB="), "{cookies:?}");
    assert!(cookies[0].contains("Max-Age=3600"));
    for _ in 0..10 {
        let (_, body, _) = get(&client, port, "/", &[("cookie", &cookie)]).await;
        assert_eq!(who(&body), first);
    }
    // Kill the pinned target: the client moves, and gets a cookie for its new target.
    let (pinned, other) = if first == a.name { (a, b) } else { (b, a) };
    drop(pinned);
    let (status, body, cookies) = get(&client, port, "/", &[("cookie", &cookie)]).await;
    assert_eq!((status, who(&body)), (200, other.name.clone()));
    let moved = cookies[0].split(';').next().unwrap().to_owned();
    assert_ne!(moved, cookie);
    for _ in 0..5 {
        let (_, body, _) = get(&client, port, "/", &[("cookie", &moved)]).await;
        assert_eq!(who(&body), other.name);
    }
}

#[tokio::test]
async fn an_app_cookie_pins_once_the_application_sets_it() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = group("web", &[&a, &b]);
    g.stickiness = Some(Stickiness::AppCookie {
        cookie_name: "session".into(),
        duration: Duration::from_secs(60),
    });
    plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![g],
    });
    wait_healthy(&plane, "web", 2).await;
    let client = http_client();
    let (_, _, cookies) = get(&client, port, "/", &[]).await;
    assert!(
        cookies.is_empty(),
        "no app cookie, no stickiness: {cookies:?}"
    );
    let (_, body, cookies) = get(&client, port, "/login", &[]).await;
    let first = who(&body);
    let lb = cookies
        .iter()
        .find(|c| c.starts_with("HANULLBAPP="))
        .expect("the load balancer's app cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for _ in 0..10 {
        let (_, body, _) = get(&client, port, "/", &[("cookie", &lb)]).await;
        assert_eq!(who(&body), first);
    }
}

#[tokio::test]
async fn a_deregistered_target_finishes_its_requests_and_gets_no_new_ones() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![group("web", &[&a, &b])],
    });
    wait_healthy(&plane, "web", 2).await;
    let client = http_client();
    // Slow requests in flight on both targets while b is deregistered.
    let mut slow = JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        slow.spawn(async move { get(&client, port, "/slow", &[]).await });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![group("web", &[&a])],
    });
    let report = plane.report("web").unwrap();
    assert!(
        report
            .iter()
            .any(|t| t.state.health == Health::Draining && t.address.ends_with(&b.port.to_string())),
        "{report:?}"
    );
    for _ in 0..20 {
        let (status, body, _) = get(&client, port, "/", &[]).await;
        assert_eq!((status, who(&body)), (200, "a".to_owned()));
    }
    let mut served = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (status, body, _) = r.unwrap();
        assert_eq!(status, 200, "{body}");
        served.push(who(&body));
    }
    assert!(served.contains(&"b".to_owned()), "{served:?}");
    // Idle now: dropped from the group.
    let deadline = Instant::now() + Duration::from_secs(2);
    while plane.report("web").unwrap().len() != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tcp_listener_relays_bytes_both_ways() {
    // An echo server that upper-cases.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let up = buf[..n].to_ascii_uppercase();
                            if s.write_all(&up).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = group("echo", &[]);
    g.protocol = Protocol::Tcp;
    g.health_check.protocol = Protocol::Tcp;
    g.targets = vec![target(echo_port)];
    plane.apply(Config {
        listeners: vec![listener(port, "echo", Protocol::Tcp)],
        groups: vec![g],
    });
    wait_healthy(&plane, "echo", 1).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for word in ["hello", "load balancer"] {
        s.write_all(word.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; word.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, word.to_ascii_uppercase().as_bytes());
    }
}

/// A TCP server that answers each read with its one-letter name, ':' and the bytes read, and
/// counts its open connections. Dropping it stops accepting; open connections carry on.
struct Echo {
    port: u16,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(name: char) -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    if s.write_all(&reply).await.is_err() {
                        break;
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Echo { port, open, task }
}

/// Sends `word` and returns the reply (an [`echo`]'s is two bytes longer).
async fn say(s: &mut TcpStream, word: &str) -> String {
    s.write_all(word.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; word.len() + 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("no reply within 10 s")
        .expect("the connection was closed");
    String::from_utf8(buf).unwrap()
}

/// Waits (10 s at most) for the load balancer to close `s`: end of stream or a reset.
async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("the connection is open: got {:?}", &buf[..n]),
        Err(_) => panic!("the connection is still open after 10 s"),
    }
}

/// A TCP group without health checks, to the given echo servers.
fn unchecked_tcp_group(targets: &[&Echo]) -> GroupConfig {
    let mut g = group("db", &[]);
    g.protocol = Protocol::Tcp;
    g.health_check.protocol = Protocol::Tcp;
    g.health_check_enabled = false;
    g.targets = targets.iter().map(|e| target(e.port)).collect();
    g
}

#[tokio::test]
async fn a_group_without_checks_serves_its_target_at_once() {
    let a = echo('a').await;
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = unchecked_tcp_group(&[&a]);
    // Its checks would go to a port that refuses and never pass.
    g.targets[0].check_address = format!("127.0.0.1:{}", free_port());
    g.health_check.interval = Duration::from_secs(3600);
    let mut config = Config {
        listeners: vec![listener(port, "db", Protocol::Tcp)],
        groups: vec![g],
    };
    plane.apply(config.clone());
    let report = plane.report("db").unwrap();
    assert_eq!(
        (
            report[0].state.health,
            report[0].state.reason.as_str(),
            report[0].state.description.as_str()
        ),
        (
            Health::Healthy,
            "Target.HealthCheckDisabled",
            "Health checks are disabled"
        )
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(say(&mut s, "select 1").await, "a:select 1");

    // The same group with its checks on: the target waits for a check that cannot pass, and
    // gets no connection; the one already open is left alone.
    config.groups[0].health_check_enabled = true;
    plane.apply(config);
    assert_eq!(plane.report("db").unwrap()[0].state.health, Health::Initial);
    let mut refused = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    closed(&mut refused).await;
    assert_eq!(say(&mut s, "select 2").await, "a:select 2");
}

/// Opens a connection through a TCP listener to `a`, then replaces `a` by `b` with a delay of
/// 0 and `connection_termination` as given: returns the plane, the listener's port and the
/// open connection (its target still `a`, if it is still open).
async fn switch_targets(a: &Echo, b: &Echo, termination: bool) -> (DataPlane, u16, TcpStream) {
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = unchecked_tcp_group(&[a]);
    g.deregistration_delay = Duration::ZERO;
    g.connection_termination = termination;
    let mut config = Config {
        listeners: vec![listener(port, "db", Protocol::Tcp)],
        groups: vec![g],
    };
    plane.apply(config.clone());
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(say(&mut s, "before").await, "a:before");
    assert_eq!(a.open.load(Ordering::SeqCst), 1);
    config.groups[0].targets = vec![target(b.port)];
    plane.apply(config);
    (plane, port, s)
}

#[tokio::test]
async fn connection_termination_closes_a_removed_targets_connections_on_both_sides() {
    let (a, b) = (echo('a').await, echo('b').await);
    let (_plane, port, mut old) = switch_targets(&a, &b, true).await;
    closed(&mut old).await;
    // The target's side, too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.open.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "a still has {} connections",
            a.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut new = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(say(&mut new, "after").await, "b:after");
}

#[tokio::test]
async fn without_connection_termination_a_removed_targets_connections_carry_on() {
    let (a, b) = (echo('a').await, echo('b').await);
    let (plane, port, mut old) = switch_targets(&a, &b, false).await;
    let mut new = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(say(&mut new, "after").await, "b:after");
    // Once the delay is over and a is out of the group, its connection still works.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = plane.report("db").unwrap();
        if report.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "a is still draining: {report:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(say(&mut old, "still there").await, "a:still there");
    assert_eq!(a.open.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_port_in_use_is_reported_and_retried() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let a = backend("a").await;
    let (plane, _events) = DataPlane::new();
    let config = Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![group("web", &[&a])],
    };
    let states = plane.apply(config.clone());
    assert_eq!(
        states[0].error.as_deref(),
        Some(format!("port {port} is already in use on this node").as_str())
    );
    drop(taken);
    assert_eq!(plane.apply(config)[0].error, None);
    wait_healthy(&plane, "web", 1).await;
    let (status, _, _) = get(&http_client(), port, "/", &[]).await;
    assert_eq!(status, 200);
}

/// A backend written against the wire, answering with each kind of framing: chunked, by
/// length (echoing the request body, whatever its framing), and to the end of the connection.
async fn framing_backend() -> (u16, tokio::task::JoinHandle<()>) {
    use crate::wire::{BodyReader, read_request};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                while let Ok(Some(req)) = read_request(&mut s, &mut buf).await {
                    let mut body = Vec::new();
                    let mut reader = BodyReader {
                        framing: req.framing(),
                    };
                    while let Ok(Some(d)) = reader.next(&mut s, &mut buf).await {
                        body.extend_from_slice(&d);
                    }
                    let reply: Vec<u8> = match req.path() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec(),
                        "/close" => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec(),
                        _ => {
                            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                            r.extend_from_slice(&body);
                            r
                        }
                    };
                    if s.write_all(&reply).await.is_err() || req.path() == "/close" {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn bodies_are_relayed_by_their_framing_both_ways() {
    let (backend_port, task) = framing_backend().await;
    let (plane, _events) = DataPlane::new();
    let port = free_port();
    let mut g = group("web", &[]);
    g.health_check.protocol = Protocol::Tcp;
    g.targets = vec![target(backend_port)];
    plane.apply(Config {
        listeners: vec![listener(port, "web", Protocol::Http)],
        groups: vec![g],
    });
    wait_healthy(&plane, "web", 1).await;
    let client = http_client();
    let (status, body, _) = get(&client, port, "/chunked", &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello, world"));
    let (status, body, _) = get(&client, port, "/close", &[]).await;
    assert_eq!((status, body.as_str()), (200, "until the end"));
    // A body by length, and a streamed (chunked) one, echoed.
    let full_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
    let resp = full_client
        .request(
            hyper::Request::post(format!("http://127.0.0.1:{port}/echo"))
                .body(Full::new(Bytes::from_static(b"by length")))
                .unwrap(),
        )
        .await
        .unwrap();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"by length");
    let stream_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::StreamBody<
            futures::stream::Iter<
                std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>,
            >,
        >>();
    let frames = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"in "))),
        Ok(hyper::body::Frame::data(Bytes::from_static(b"chunks"))),
    ];
    let resp = stream_client
        .request(
            hyper::Request::post(format!("http://127.0.0.1:{port}/echo"))
                .body(http_body_util::StreamBody::new(futures::stream::iter(
                    frames,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"in chunks");
    // HEAD: the head only.
    let resp = client
        .request(
            hyper::Request::head(format!("http://127.0.0.1:{port}/chunked"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    task.abort();
}
