//! The kernel path's task against a recording fake (paused clock), and the real thing: nft
//! rules steering real TCP connections on 127.0.0.1 (needs root and nft).

use super::*;
use crate::db::kernel::Target;
use std::net::Ipv4Addr;
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq)]
enum Call {
    Apply(String),
    Reset(SocketAddrV4),
}

/// Records what the task asks of the kernel; fails applies while `fail` is set.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn applies_since(&self, t: Instant) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, c)| *at >= t && matches!(c, Call::Apply(_)))
            .count()
    }

    fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl Kernel for Fake {
    async fn apply(&self, script: &str) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), Call::Apply(script.to_string())));
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Config("the fake refuses".into()));
        }
        Ok(())
    }

    async fn reset(&self, endpoint: SocketAddrV4) -> Result<usize> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), Call::Reset(endpoint)));
        Ok(1)
    }
}

fn addr(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

fn writer(targets: &[u16], timeout: Duration) -> Endpoint {
    Endpoint {
        name: "db/orders/writer".into(),
        address: addr(6432),
        targets: targets
            .iter()
            .map(|p| Target {
                member: format!("orders-{p}"),
                address: addr(*p),
            })
            .collect(),
        timeout,
    }
}

/// Lets the task run what is ready (the paused clock moves 1 ms).
/// A kernel path of node `n1` over a fresh fake.
async fn started() -> (Fake, KernelPath) {
    let fake = Fake::default();
    let path = KernelPath::start_with(fake.clone(), "n1", 0, Default::default())
        .await
        .unwrap();
    (fake, path)
}

async fn settle() {
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const TABLE: &str = "hanul_db_n1";

#[tokio::test(start_paused = true)]
async fn the_first_script_steers_nothing_and_a_change_applies_at_once() {
    let (fake, path) = started().await;
    let calls = fake.calls();
    let [Call::Apply(first)] = calls.as_slice() else {
        panic!("{calls:?}");
    };
    assert!(first.starts_with(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")));
    assert!(!first.contains("goto ep_") && first.contains("reject with tcp reset"));
    fake.clear();
    path.set(vec![writer(&[30001], Duration::from_millis(1500))]);
    settle().await;
    let calls = fake.calls();
    // The rules first, then the endpoint's clients of a previous run are reset.
    assert!(
        matches!(calls.as_slice(), [Call::Apply(s), Call::Reset(a)] if s.contains("dnat to 127.0.0.1:30001") && *a == addr(6432)),
        "{calls:?}"
    );
    path.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rules_are_renewed_a_third_of_their_timeout_apart_and_not_when_nothing_expires() {
    let (fake, path) = started().await;
    // Nothing steered: nothing to renew.
    settle().await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.applies_since(t), 0);
    path.set(vec![writer(&[30001], Duration::from_millis(1500))]);
    settle().await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // Every 500 ms: 6 in 3 s (one more or less at the edges).
    let n = fake.applies_since(t);
    assert!((5..=7).contains(&n), "{n} applies in 3 s");
    // The same endpoints again: no extra apply.
    let t = Instant::now();
    path.set(vec![writer(&[30001], Duration::from_millis(1500))]);
    settle().await;
    assert_eq!(fake.applies_since(t), 0);
    // A writer in a failover: nothing steered, nothing renewed.
    path.set(vec![writer(&[], Duration::from_millis(1500))]);
    settle().await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.applies_since(t), 0);
    path.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_writer_resets_the_local_clients_after_its_rules_apply() {
    let (fake, path) = started().await;
    path.set(vec![writer(&[30001], Duration::from_secs(5))]);
    settle().await;
    fake.clear();
    path.set(vec![writer(&[30002], Duration::from_secs(5))]);
    settle().await;
    let calls = fake.calls();
    assert!(
        matches!(calls.as_slice(), [Call::Apply(s), Call::Reset(a)] if s.contains("dnat to 127.0.0.1:30002") && !s.contains("30001") && *a == addr(6432)),
        "{calls:?}"
    );
    path.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_fences_everything_resets_the_clients_and_removes_the_table() {
    let (fake, path) = started().await;
    path.set(vec![writer(&[30001], Duration::from_secs(5))]);
    settle().await;
    fake.clear();
    path.stop().await;
    let calls = fake.calls();
    assert!(
        matches!(calls.as_slice(), [Call::Apply(fence), Call::Reset(a), Call::Apply(delete)]
            if !fence.contains("goto ep_") && fence.contains("reject with tcp reset")
            && *a == addr(6432)
            && *delete == kernel::render_delete(TABLE)),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_withdraws_the_steering_and_is_retried() {
    let fake = Fake::default();
    let metrics = Arc::new(Metrics::default());
    let path = KernelPath::start_with(fake.clone(), "n1", 0, metrics.clone())
        .await
        .unwrap();
    path.set(vec![writer(&[30001], Duration::from_secs(5))]);
    settle().await;
    fake.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    fake.clear();
    path.set(vec![writer(&[30002], Duration::from_secs(5))]);
    settle().await;
    let calls = fake.calls();
    assert!(
        matches!(calls.as_slice(), [Call::Apply(s), Call::Apply(withdraw), Call::Reset(_)]
            if s.contains("30002") && !withdraw.contains("goto ep_")),
        "{calls:?}"
    );
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(out.contains("hanul_db_endpoints_kernel_path 0"), "{out}");
    fake.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    fake.clear();
    tokio::time::sleep(RETRY + Duration::from_millis(10)).await;
    assert!(
        matches!(fake.calls().first(), Some(Call::Apply(s)) if s.contains("dnat to 127.0.0.1:30002"))
    );
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(out.contains("hanul_db_endpoints_kernel_path 1"), "{out}");
    path.stop().await;
}

#[test]
fn modes_parse_as_the_flag_spells_them() {
    for m in [
        EndpointMode::Auto,
        EndpointMode::Kernel,
        EndpointMode::Proxy,
    ] {
        assert_eq!(m.to_string().parse::<EndpointMode>(), Ok(m));
    }
    assert!("iptables".parse::<EndpointMode>().is_err());
}

// --- The real kernel.

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Removes the test's table even when the test fails.
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// A listener on 127.0.0.1 that greets every connection with `name` and a newline, then
/// echoes what it reads; its port.
async fn greeter(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Connects to `port` and reads the greeting: who answered.
async fn who(port: u16) -> std::io::Result<(String, BufReader<TcpStream>)> {
    let s = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut s = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no greeting"))??;
    Ok((line.trim().to_string(), s))
}

/// Polls until a new connection to `port` is answered by `name`.
async fn until_answered_by(port: u16, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = who(port).await.map(|(w, _)| w);
        if seen.as_deref().ok() == Some(name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a connection to {port} was not answered by {name}; last: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the connection is dead: a write and a read fail or see the end.
async fn is_reset(s: &mut BufReader<TcpStream>) -> bool {
    if s.get_mut().write_all(b"ping\n").await.is_err() {
        return true;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await,
        Ok(Err(_) | Ok(0))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_rules_steer_switch_fence_and_expire_as_root() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root (nftables)");
        return;
    }
    let Some(tools) = Tools::locate() else {
        eprintln!("SKIPPED: needs nft (apt-get install nftables)");
        return;
    };
    let node = format!("kernel-test-{}", std::process::id());
    let _guard = TableGuard(kernel::table_name(&node));
    // The endpoint's proxy (what a connection that is not steered reaches), and two members.
    let port = greeter("proxy").await;
    let (a, b) = (greeter("a").await, greeter("b").await);
    let endpoint = |targets: &[u16]| Endpoint {
        name: "db/test/writer".into(),
        address: addr(port),
        targets: targets
            .iter()
            .map(|p| Target {
                member: format!("m{p}"),
                address: addr(*p),
            })
            .collect(),
        timeout: Duration::from_secs(1),
    };
    let path = KernelPath::start_with(tools.clone(), &node, 1, Default::default())
        .await
        .unwrap();
    until_answered_by(port, "proxy").await;

    // Steered to a.
    path.set(vec![endpoint(&[a])]);
    until_answered_by(port, "a").await;
    // Renewed: still steered well after the 1 s timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (to_a, mut old) = who(port).await.unwrap();
    assert_eq!(to_a, "a");
    assert!(!is_reset(&mut old).await, "a live connection was reset");

    // Switched to b: the old connection, blocked in a read, is reset at once; new ones reach b.
    let blocked = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let t = Instant::now();
        let r = old.read(&mut buf).await;
        (r.map_err(|e| e.kind()), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    path.set(vec![endpoint(&[b])]);
    let (read, waited) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the old connection was not reset within 5 s")
        .unwrap();
    assert!(matches!(read, Err(_) | Ok(0)), "{read:?} after {waited:?}");
    until_answered_by(port, "b").await;

    // Stopped refreshing (as a SIGKILLed agent): within the timeout, new connections are no
    // longer steered and the old ones are reset.
    let (to_b, mut survivor) = who(port).await.unwrap();
    assert_eq!(to_b, "b");
    path.task.abort();
    let aborted = Instant::now();
    until_answered_by(port, "proxy").await;
    let deadline = aborted + Duration::from_secs(5);
    while !is_reset(&mut survivor).await {
        assert!(
            Instant::now() < deadline,
            "the steered connection still works 5 s after the rules were last renewed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired_after = aborted.elapsed();
    eprintln!(
        "rules expired and the old connection was reset {expired_after:?} after the last renewal could have happened"
    );
    // The timeout (1 s), and slack for a loaded machine.
    assert!(expired_after < Duration::from_secs(3), "{expired_after:?}");

    // A new run replaces what the dead one left, and a graceful stop removes the table.
    let path = KernelPath::start_with(tools, &node, 2, Default::default())
        .await
        .unwrap();
    path.set(vec![endpoint(&[a])]);
    until_answered_by(port, "a").await;
    path.stop().await;
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "ip", &kernel::table_name(&node)])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !listed.success(),
        "the table is still there after a graceful stop"
    );
    until_answered_by(port, "proxy").await;
}
