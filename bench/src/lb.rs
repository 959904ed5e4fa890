//! `lb`: hanul's application load balancer against nginx as the same reverse proxy, on the same
//! backends, driven by the same client (wrk) with the same connections and duration.
//!
//! ```text
//!                  ┌─▶ nginx proxy   (worker_processes N) ─┐
//!  wrk -t2 -cC ────┤                                       ├─▶ backends: one nginx, three
//!                  └─▶ hanul agent's ALB listener (N      ─┘   `server` blocks on 127.0.0.1
//!                      --lb-workers), placed by hanul server         answering 13 bytes
//! ```
//!
//! Everything is real and runs on this machine: the backends and the peer proxy are Debian's
//! nginx (`nginx -p <temp> -c <temp>/nginx.conf -g 'daemon off;'`), hanul's side is the
//! `hanul server` binary and one `hanul agent` that the load balancer is placed on, configured
//! through `hanul apply -f` as a user would. The proxies do equal work: keep-alive to the
//! backends, round robin, `Host` kept and `X-Forwarded-For`/`-Proto`/`-Port` added, no access
//! log. Rounds alternate which proxy goes first, each measured run follows an unreported
//! warm-up, and the medians over the rounds are compared.
//!
//! Every process is killed when the run ends, also on error, panic or Ctrl-C: nginx's workers
//! with their master (see [`Nginx`]), the agent before the server, and wrk by tokio's
//! `kill_on_drop`.

use crate::{
    hanul::Hanul,
    process::{self, ChildGuard},
    report::{Machine, Out},
};
use anyhow::{Context as _, bail};
use hanul_proto::{
    Client, Kind,
    v1::{Object, object::Resource},
};
use serde::Serialize;
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What every backend answers, byte for byte.
const BODY: &str = "hello, world\n";
/// How many backends there are.
const BACKENDS: usize = 3;
/// The name of the TargetGroup and of the LoadBalancer.
const NAME: &str = "bench";
/// The one agent's node name and zone.
const NODE: &str = "bench-lb";
const ZONE: &str = "az-a";
/// The node condition the agent sets to True while it heartbeats (`hanul_agent::node::READY`;
/// the bench talks to the server only, so it does not link the agent library).
const CONDITION_READY: &str = "Ready";
/// How long nginx may take to serve, and the agent's node to become Ready.
const START: Duration = Duration::from_secs(30);
/// How long the listener may take to answer 200 after the apply (health checks first need
/// `healthyThreshold` passes).
const LISTENER_READY: Duration = Duration::from_secs(60);
/// How long a wrk run may overrun its duration before it counts as hung.
const WRK_GRACE: Duration = Duration::from_secs(30);
/// The targets the figures are compared with: hanul/nginx.
const TARGET_RPS_RATIO: f64 = 1.0;
const TARGET_P99_RATIO: f64 = 1.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    Nginx,
    Hanul,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Hanul => "hanul",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LbArgs {
    /// Open connections wrk keeps (`wrk -c`).
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// How long each measured run lasts (whole seconds; `wrk -d`).
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// The unreported run before each measured one (whole seconds; 0s: none).
    #[arg(long, default_value = "2s")]
    pub warmup: humantime::Duration,
    /// nginx's `worker_processes` and the agent's load balancer threads (`--lb-workers`); the
    /// default is what the agent runs with on a 2-core machine (one per core).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Measured runs of each proxy; the order alternates each round, the medians are compared.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// wrk's threads (`wrk -t`).
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: u32,
    /// Measure one proxy only.
    #[arg(long, value_enum)]
    pub only: Option<Proxy>,
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
    /// nginx, for the backends and the peer proxy (a name is looked up on PATH).
    #[arg(long, env = "NGINX_BIN", default_value = "nginx")]
    pub nginx_bin: PathBuf,
    /// The HTTP client (a name is looked up on PATH).
    #[arg(long, env = "WRK_BIN", default_value = "wrk")]
    pub wrk_bin: PathBuf,
    /// Print the results as JSON (after the table, which goes to stderr then).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: LbArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let wrk_bin = find_program(&args.wrk_bin, "wrk")?;
    let nginx_bin = find_program(&args.nginx_bin, "nginx")?;
    if args.only != Some(Proxy::Nginx) && !args.hanul_bin.is_file() {
        bail!(
            "no hanul binary at {} (build it: cargo build --release -p hanul; or pass \
             --hanul-bin / HANUL_BIN; or measure nginx alone: --only nginx)",
            args.hanul_bin.display()
        );
    }
    let mut out = Out::new(args.json);
    let machine = Machine::read();
    out.line(&machine.describe());
    // Others' work on the machine skews every figure here; this says whether there was any.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    out.line(&format!(
        "load average at start (1, 5, 15 min): {}",
        load.join(" ")
    ));
    let versions = Versions::read(&wrk_bin, &nginx_bin, &args);
    out.line(&format!("versions: {}", versions.line()));

    let backends = Nginx::start_backends(&nginx_bin).await?;
    out.line(&format!(
        "backends: one nginx (worker_processes 1, access_log off) with {BACKENDS} `server` blocks \
         on 127.0.0.1:{} answering `return 200 {BODY:?}` ({} bytes) over HTTP/1.1 keep-alive, \
         the same for both proxies",
        join(&backends.ports, ","),
        BODY.len()
    ));
    // What the backends serve without a proxy: the ceiling a proxy in front of them could reach.
    let direct_s = settings.warmup_s.max(2);
    let direct = run_wrk(
        &wrk_bin,
        settings.threads,
        settings.connections,
        direct_s,
        &format!("http://127.0.0.1:{}/", backends.ports[0]),
    )
    .await
    .context("wrk straight at the first backend")?;
    out.line(&format!(
        "backends without a proxy (wrk straight at the first, {direct_s} s): {:.0} req/s, p99 \
         {:.2} ms",
        direct.per_second, direct.p99_ms
    ));

    let mut proxies: Vec<Box<dyn Target>> = Vec::new();
    if args.only != Some(Proxy::Hanul) {
        let nginx = Nginx::start_proxy(&nginx_bin, args.workers, &backends.ports).await?;
        out.line(&format!(
            "nginx proxy: worker_processes {} on 127.0.0.1:{}, config {} (removed at exit):",
            args.workers,
            nginx.port,
            nginx.conf_path.display()
        ));
        out.line(&indent(&nginx.conf));
        proxies.push(Box::new(nginx));
    }
    if args.only != Some(Proxy::Nginx) {
        let started = Instant::now();
        let hanul = HanulLb::start(&args.hanul_bin, args.workers, &backends.ports).await?;
        out.line(&format!(
            "hanul: server {}, agent {NODE} (pid {}, --lb-workers {}); listener \
             127.0.0.1:{} answered 200 {:.1} s after start; manifest (hanul apply -f):",
            hanul.server.url,
            hanul.agent.pid(),
            args.workers,
            hanul.port,
            started.elapsed().as_secs_f64()
        ));
        out.line(&indent(&hanul.manifest));
        proxies.push(Box::new(hanul));
    }
    out.line(&format!(
        "client: {} -t{} -c{} -d{}s --latency, after a {}s warm-up; {} rounds, alternating \
         which proxy goes first; wrk, the proxies and the backends share this machine's CPUs",
        wrk_bin.display(),
        settings.threads,
        settings.connections,
        settings.duration_s,
        settings.warmup_s,
        settings.rounds
    ));

    let mut runs: Vec<Vec<Run>> = proxies.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        let mut order: Vec<usize> = (0..proxies.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let proxy = &mut proxies[i];
            let r = measure(&wrk_bin, &settings, proxy.as_mut())
                .await
                .with_context(|| format!("{} round {}", proxy.proxy().name(), round + 1))?;
            out.line(&format!(
                "round {} {:<5}: {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}  \
                 proxy CPU {:.2} cores",
                round + 1,
                proxy.proxy().name(),
                r.wrk.per_second,
                r.wrk.p50_ms,
                r.wrk.p99_ms,
                r.wrk.errors(),
                r.cpu_cores
            ));
            if r.wrk.errors() > 0 {
                out.line(&format!("      {}", r.wrk.describe_errors()));
            }
            runs[i].push(r);
        }
    }

    let results: Vec<ProxyResult> = proxies
        .iter()
        .zip(runs)
        .map(|(p, runs)| ProxyResult::new(p.proxy(), runs))
        .collect();
    let nginx = results.iter().find(|r| r.proxy == Proxy::Nginx);
    let hanul = results.iter().find(|r| r.proxy == Proxy::Hanul);
    let ratios = match (hanul, nginx) {
        (Some(h), Some(n)) => Some(Ratios::new(h, n)),
        _ => None,
    };
    print_table(&mut out, &results, ratios.as_ref(), &settings);

    if args.json {
        let json = serde_json::json!({
            "machine": machine,
            "load_average_at_start": load,
            "versions": versions,
            "settings": settings,
            "backends": {
                "kind": "nginx, worker_processes 1, three server blocks",
                "ports": backends.ports,
                "body": BODY,
                "config": backends.conf,
                "direct_per_second": direct.per_second,
                "direct_p99_ms": direct.p99_ms,
            },
            "nginx_config": proxies.iter().find_map(|p| p.nginx_conf()),
            "hanul_manifest": proxies.iter().find_map(|p| p.manifest()),
            "results": results,
            "ratios": ratios,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// The run's settings after validation, as they are reported.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    connections: u32,
    threads: u32,
    duration_s: u64,
    warmup_s: u64,
    workers: u32,
    rounds: u32,
}

impl Settings {
    fn from_args(args: &LbArgs) -> anyhow::Result<Settings> {
        let whole = |d: humantime::Duration, flag: &str| -> anyhow::Result<u64> {
            let d: Duration = d.into();
            if d.subsec_nanos() != 0 {
                bail!("--{flag} {d:?}: wrk takes whole seconds");
            }
            Ok(d.as_secs())
        };
        let s = Settings {
            connections: args.connections,
            threads: args.wrk_threads,
            duration_s: whole(args.duration, "duration")?,
            warmup_s: whole(args.warmup, "warmup")?,
            workers: args.workers,
            rounds: args.rounds,
        };
        if s.duration_s == 0 {
            bail!("--duration must be at least 1s");
        }
        if s.threads == 0 || s.connections < s.threads {
            bail!(
                "--connections ({}) must be at least --wrk-threads ({}, at least 1): wrk gives \
                 each thread its own connections",
                s.connections,
                s.threads
            );
        }
        if s.workers == 0 || s.rounds == 0 {
            bail!("--workers and --rounds must be at least 1");
        }
        Ok(s)
    }
}

/// A proxy under test: where wrk sends its requests and which processes do the work.
trait Target {
    fn proxy(&self) -> Proxy;
    fn port(&self) -> u16;
    /// The processes whose CPU time is the proxy's.
    fn pids(&self) -> Vec<u32>;
    /// Fails when a process of the proxy has exited.
    fn check_alive(&mut self) -> anyhow::Result<()>;
    fn nginx_conf(&self) -> Option<String> {
        None
    }
    fn manifest(&self) -> Option<String> {
        None
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    wrk: WrkResult,
    /// The proxy's CPU time during the run over its wall time.
    cpu_cores: f64,
}

/// A warm-up (thrown away), then one measured wrk run with the proxy's CPU time around it.
async fn measure(wrk: &Path, s: &Settings, proxy: &mut dyn Target) -> anyhow::Result<Run> {
    let url = format!("http://127.0.0.1:{}/", proxy.port());
    if s.warmup_s > 0 {
        run_wrk(wrk, s.threads, s.connections, s.warmup_s, &url)
            .await
            .context("warm-up")?;
    }
    proxy.check_alive()?;
    let pids = proxy.pids();
    let (cpu0, t0) = (cpu_ticks(&pids), Instant::now());
    let result = run_wrk(wrk, s.threads, s.connections, s.duration_s, &url).await?;
    let (cpu1, wall) = (cpu_ticks(&pids), t0.elapsed());
    proxy.check_alive()?;
    if result.requests == 0 {
        bail!("wrk completed no request:\n{}", result.output);
    }
    Ok(Run {
        wrk: result,
        cpu_cores: cpu1.saturating_sub(cpu0) as f64 / clock_ticks_per_second() / wall.as_secs_f64(),
    })
}

/// The medians of one proxy's runs.
#[derive(Debug, Clone, Serialize)]
struct ProxyResult {
    proxy: Proxy,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_cores: f64,
    /// Over all rounds: non-2xx/3xx responses and socket errors.
    errors: u64,
    runs: Vec<Run>,
}

impl ProxyResult {
    fn new(proxy: Proxy, runs: Vec<Run>) -> ProxyResult {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        ProxyResult {
            proxy,
            per_second: m(|r| r.wrk.per_second),
            p50_ms: m(|r| r.wrk.p50_ms),
            p99_ms: m(|r| r.wrk.p99_ms),
            cpu_cores: m(|r| r.cpu_cores),
            errors: runs.iter().map(|r| r.wrk.errors()).sum(),
            runs,
        }
    }
}

/// hanul over nginx, and whether the targets are met.
#[derive(Debug, Clone, Serialize)]
struct Ratios {
    per_second: f64,
    p99: f64,
    per_second_met: bool,
    p99_met: bool,
}

impl Ratios {
    fn new(hanul: &ProxyResult, nginx: &ProxyResult) -> Ratios {
        let per_second = hanul.per_second / nginx.per_second;
        let p99 = hanul.p99_ms / nginx.p99_ms;
        Ratios {
            per_second,
            p99,
            per_second_met: per_second >= TARGET_RPS_RATIO,
            p99_met: p99 <= TARGET_P99_RATIO,
        }
    }
}

fn print_table(out: &mut Out, results: &[ProxyResult], ratios: Option<&Ratios>, s: &Settings) {
    out.line("");
    out.line(&format!(
        "median of {} rounds, {} connections, {} s each, {} proxy workers:",
        s.rounds, s.connections, s.duration_s, s.workers
    ));
    out.line("proxy |     req/s |   p50 ms |   p99 ms | errors | proxy CPU (cores)");
    out.line("----- | --------- | -------- | -------- | ------ | -----------------");
    for r in results {
        out.line(&format!(
            "{:<5} | {:>9.0} | {:>8.2} | {:>8.2} | {:>6} | {:>17.2}",
            r.proxy.name(),
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu_cores
        ));
    }
    out.line("");
    let Some(ratios) = ratios else {
        out.line("hanul/nginx: not compared (one proxy only: --only)");
        return;
    };
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    out.line(&format!(
        "hanul/nginx req/s: {:.2}x (target >= {TARGET_RPS_RATIO:.1}: {})",
        ratios.per_second,
        verdict(ratios.per_second_met)
    ));
    out.line(&format!(
        "hanul/nginx p99:   {:.2}x (target <= {TARGET_P99_RATIO:.1}: {})",
        ratios.p99,
        verdict(ratios.p99_met)
    ));
}

/// The median; the mean of the middle two for an even count.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// wrk

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct WrkResult {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p75_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// "Non-2xx or 3xx responses" (absent from wrk's output when there were none).
    non_2xx: u64,
    /// "Socket errors: connect, read, write, timeout".
    socket_errors: [u64; 4],
    #[serde(skip)]
    output: String,
}

impl WrkResult {
    fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors.iter().sum::<u64>()
    }

    fn describe_errors(&self) -> String {
        let [c, r, w, t] = self.socket_errors;
        format!(
            "non-2xx/3xx responses {}; socket errors: connect {c}, read {r}, write {w}, timeout {t}",
            self.non_2xx
        )
    }
}

async fn run_wrk(
    bin: &Path,
    threads: u32,
    connections: u32,
    seconds: u64,
    url: &str,
) -> anyhow::Result<WrkResult> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(url)
        .stdin(std::process::Stdio::null())
        // The guard: a dropped run (an error elsewhere, Ctrl-C) kills wrk.
        .kill_on_drop(true);
    let limit = Duration::from_secs(seconds) + WRK_GRACE;
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("wrk did not finish within {limit:?}"))?
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk {url} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_wrk(&stdout)
}

/// Reads wrk's `--latency` report.
fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult {
        output: text.to_string(),
        ..WrkResult::default()
    };
    let (mut rate, mut p50, mut p99) = (false, false, false);
    for line in text.lines().map(str::trim) {
        let bad = || format!("unexpected wrk line {line:?}");
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.per_second = v.trim().parse().with_context(bad)?;
            rate = true;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().with_context(bad)?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for (i, part) in v.split(',').enumerate().take(4) {
                let n = part.split_whitespace().nth(1).with_context(bad)?;
                r.socket_errors[i] = n.parse().with_context(bad)?;
            }
        } else if line.contains(" requests in ") {
            let n = line.split_whitespace().next().with_context(bad)?;
            r.requests = n.parse().with_context(bad)?;
        } else if let Some((q, v)) = line.split_once('%') {
            let slot = match q {
                "50" => &mut r.p50_ms,
                "75" => &mut r.p75_ms,
                "90" => &mut r.p90_ms,
                "99" => &mut r.p99_ms,
                _ => continue,
            };
            *slot = wrk_time_ms(v.trim()).with_context(bad)?;
            p50 |= q == "50";
            p99 |= q == "99";
        }
    }
    if !(rate && p50 && p99) {
        bail!(
            "wrk printed no Requests/sec or latency distribution (was --latency given?):\n{text}"
        );
    }
    Ok(r)
}

/// A wrk time ("812.00us", "1.23ms", "2.01s", "1.50m") in milliseconds.
fn wrk_time_ms(s: &str) -> anyhow::Result<f64> {
    // "us" and "ms" before "s", which they end with.
    let units = [
        ("us", 0.001),
        ("ms", 1.0),
        ("s", 1000.0),
        ("m", 60_000.0),
        ("h", 3_600_000.0),
    ];
    for (unit, ms) in units {
        if let Some(n) = s.strip_suffix(unit) {
            let n: f64 = n
                .parse()
                .with_context(|| format!("{s:?} is not a wrk time"))?;
            return Ok(n * ms);
        }
    }
    bail!("{s:?} is not a wrk time (expected a number with us, ms, s, m or h)")
}

// ---------------------------------------------------------------------------------------------
// nginx: the backends and the peer proxy

/// An nginx master process and its workers, on its own temp prefix.
///
/// The guard kills the workers too: they outlive a SIGKILLed master (nginx sets no parent-death
/// signal), and would keep the listening socket and the CPU. They are found as the master's
/// children when the guard drops, and killed after the master, so it cannot start new ones.
struct Nginx {
    /// Listening ports: the three backends', or the proxy's alone.
    ports: Vec<u16>,
    port: u16,
    conf: String,
    conf_path: PathBuf,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// One nginx with three `server` blocks, each answering [`BODY`].
    async fn start_backends(bin: &Path) -> anyhow::Result<Nginx> {
        let ports = (0..BACKENDS)
            .map(|_| process::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let dir = temp_dir("hanul-bench-backends-")?;
        let conf = backends_conf(dir.path(), &ports);
        let mut n = Nginx::spawn(bin, "nginx backends", dir, conf, ports.clone()).await?;
        for &port in &ports {
            n.wait_serving(port).await?;
        }
        Ok(n)
    }

    /// The peer proxy in front of `backends`.
    async fn start_proxy(bin: &Path, workers: u32, backends: &[u16]) -> anyhow::Result<Nginx> {
        let port = process::free_port()?;
        let dir = temp_dir("hanul-bench-nginx-")?;
        let conf = proxy_conf(dir.path(), workers, port, backends);
        let mut n = Nginx::spawn(bin, "nginx proxy", dir, conf, vec![port]).await?;
        n.wait_serving(port).await?;
        Ok(n)
    }

    async fn spawn(
        bin: &Path,
        name: &str,
        dir: tempfile::TempDir,
        conf: String,
        ports: Vec<u16>,
    ) -> anyhow::Result<Nginx> {
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let mut cmd = Command::new(bin);
        // -e: errors before the config is read go to stderr too, not to /var/log/nginx.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr", "-g", "daemon off;"]);
        let child = ChildGuard::spawn(name, cmd, &dir.path().join("nginx.log"))?;
        Ok(Nginx {
            port: ports[0],
            ports,
            conf,
            conf_path,
            child,
            _dir: dir,
        })
    }

    async fn wait_serving(&mut self, port: u16) -> anyhow::Result<()> {
        process::wait_ready(&mut self.child, START, || answers_body(port)).await
    }
}

impl Target for Nginx {
    fn proxy(&self) -> Proxy {
        Proxy::Nginx
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn pids(&self) -> Vec<u32> {
        let master = self.child.pid();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.child.check_alive()
    }
    fn nginx_conf(&self) -> Option<String> {
        Some(self.conf.clone())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master first (it would replace a worker that dies), then the workers; the
        // ChildGuard reaps the master after this.
        let pids = self.pids();
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// nginx's temp paths, all under its prefix so that it writes nowhere else.
fn temp_paths(prefix: &Path) -> String {
    let p = prefix.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {p}/{t}_temp;\n"))
        .collect()
}

/// The backends: one worker, three servers, a fixed body, keep-alive without a request limit.
fn backends_conf(prefix: &Path, ports: &[u16]) -> String {
    let mut servers = String::new();
    for port in ports {
        let _ = writeln!(
            servers,
            "  server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 {body}; }}\n  }}",
            body = nginx_string(BODY)
        );
    }
    format!(
        "# hanul-bench lb: the backends, shared by both proxies.\n\
         worker_processes 1;\n\
         pid {prefix}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 default_type text/plain;\n\
         \x20 # The proxies' pooled connections stay open (nginx's default closes after 1000).\n\
         \x20 keepalive_requests 1000000;\n\
         {temp}{servers}}}\n",
        prefix = prefix.display(),
        temp = temp_paths(prefix),
    )
}

/// The peer proxy: what hanul's application load balancer does, in nginx's words.
fn proxy_conf(prefix: &Path, workers: u32, port: u16, backends: &[u16]) -> String {
    let upstreams: String = backends
        .iter()
        .map(|b| format!("    server 127.0.0.1:{b};\n"))
        .collect();
    format!(
        "# hanul-bench lb: nginx as the peer of hanul's application load balancer.\n\
         worker_processes {workers};\n\
         pid {prefix}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 # wrk's connections stay open, as they do on hanul's listener.\n\
         \x20 keepalive_requests 1000000;\n\
         {temp}\
         \x20 upstream {NAME} {{\n\
         \x20   # round robin (nginx's default), as the target group's algorithm\n\
         {upstreams}\
         \x20   keepalive 64;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20 }}\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://{NAME};\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_set_header Host $host;\n\
         \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20     proxy_set_header X-Forwarded-Port $server_port;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        prefix = prefix.display(),
        temp = temp_paths(prefix),
    )
}

/// A double-quoted nginx string.
fn nginx_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

// ---------------------------------------------------------------------------------------------
// hanul: server, one agent, the load balancer applied by the CLI

/// `hanul server`, one `hanul agent` the load balancer is placed on, and the applied manifest.
struct HanulLb {
    port: u16,
    manifest: String,
    // Fields drop in declaration order: the agent before the server, then the temp dir.
    agent: ChildGuard,
    server: Hanul,
    _dir: tempfile::TempDir,
}

impl HanulLb {
    async fn start(bin: &Path, workers: u32, backends: &[u16]) -> anyhow::Result<HanulLb> {
        let server = Hanul::start(bin, 0).await?;
        let client = server.client().await?;
        let dir = temp_dir("hanul-bench-lb-")?;
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args(["--server", &server.url])
            .arg("--join-token-file")
            .arg(server.data_dir().join("join.token"))
            .args(["--name", NODE, "--zone", ZONE])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--heartbeat", "2s"])
            // The data plane's traffic threads, as nginx's worker_processes.
            .args(["--lb-workers", &workers.to_string()])
            // Its log is a file that a failure quotes: no colour codes.
            .env("NO_COLOR", "1");
        let agent = ChildGuard::spawn(
            &format!("hanul agent {NODE}"),
            cmd,
            &dir.path().join("agent.log"),
        )?;
        let port = process::free_port()?;
        let mut lb = HanulLb {
            port,
            manifest: manifest(port, backends),
            agent,
            server,
            _dir: dir,
        };
        lb.wait_node_ready(&client).await?;
        lb.apply(bin).await?;
        lb.wait_listener(&client).await?;
        Ok(lb)
    }

    async fn wait_node_ready(&mut self, client: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + START;
        loop {
            self.agent.check_alive()?;
            let node = client.get(Kind::Node, NODE).await.ok();
            let ready = node.as_ref().is_some_and(|o| match &o.resource {
                Some(Resource::Node(n)) => n.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == CONDITION_READY && c.status == "True")
                }),
                _ => false,
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE} was not Ready after {START:?}; the end of the agent's log:\n{}",
                    self.agent.log_tail(15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `hanul apply -f`, as a user would.
    async fn apply(&self, bin: &Path) -> anyhow::Result<()> {
        let path = self._dir.path().join("lb.yaml");
        std::fs::write(&path, &self.manifest)
            .with_context(|| format!("writing {}", path.display()))?;
        let output = tokio::process::Command::new(bin)
            .args(["--server", &self.server.url])
            .arg("--token-file")
            .arg(self.server.data_dir().join("admin.token"))
            .arg("apply")
            .arg("-f")
            .arg(&path)
            // Not the user's config file: the flags say everything.
            .env("HANUL_CONFIG", self._dir.path().join("no-config.json"))
            .kill_on_drop(true)
            .output()
            .await
            .context("running hanul apply")?;
        if !output.status.success() {
            bail!(
                "hanul apply -f {} failed ({}): {}{}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Polls the listener until a request goes through to a backend.
    async fn wait_listener(&mut self, client: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + LISTENER_READY;
        loop {
            self.agent.check_alive()?;
            let last = match answers_body(self.port).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                bail!(
                    "hanul's listener 127.0.0.1:{} did not answer 200 with the backends' body \
                     within {LISTENER_READY:?} of the apply (the agent runs the listener; the \
                     target group's health checks must pass first): {last:#}\n\
                     load balancer: {}\ntarget group: {}\nthe end of the agent's log:\n{}",
                    self.port,
                    describe_lb(client).await,
                    describe_tg(client).await,
                    self.agent.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Target for HanulLb {
    fn proxy(&self) -> Proxy {
        Proxy::Hanul
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.agent.pid()]
    }
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.agent.check_alive()
    }
    fn manifest(&self) -> Option<String> {
        Some(self.manifest.clone())
    }
}

/// The TargetGroup and LoadBalancer, in the issue's words.
fn manifest(port: u16, backends: &[u16]) -> String {
    let targets = backends
        .iter()
        .map(|b| format!("{{ip: 127.0.0.1, port: {b}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: hanul/v1\n\
         kind: TargetGroup\n\
         metadata: {{name: {NAME}}}\n\
         spec:\n\
         \x20 protocol: HTTP\n\
         \x20 port: \"8080\"\n\
         \x20 targets: [{targets}]\n\
         \x20 healthCheck: {{intervalSeconds: 5, timeoutSeconds: 2, healthyThreshold: 2}}\n\
         ---\n\
         apiVersion: hanul/v1\n\
         kind: LoadBalancer\n\
         metadata: {{name: {NAME}}}\n\
         spec:\n\
         \x20 type: application\n\
         \x20 listeners: [{{port: {port}, protocol: HTTP, defaultTargetGroup: {NAME}}}]\n"
    )
}

async fn describe_lb(client: &Client) -> String {
    match client.get(Kind::LoadBalancer, NAME).await {
        Ok(Object {
            resource: Some(Resource::LoadBalancer(lb)),
            ..
        }) => {
            let placement = "not placed on a node yet: no status.nodes (the load balancer \
                             controller places it; the agent runs only what is placed on it)";
            let Some(s) = lb.status else {
                return format!("no status; {placement}");
            };
            if s.nodes.is_empty() {
                return format!("state {:?} reason {:?}; {placement}", s.state, s.reason);
            }
            let nodes = s
                .nodes
                .iter()
                .map(|n| format!("{} ({}) {} {}", n.node, n.address, n.state, n.reason))
                .collect::<Vec<_>>()
                .join("; ");
            format!(
                "state {:?} reason {:?}; nodes: [{nodes}]",
                s.state, s.reason
            )
        }
        Ok(_) => "not a LoadBalancer".into(),
        Err(e) => format!("cannot read it: {e}"),
    }
}

async fn describe_tg(client: &Client) -> String {
    match client.get(Kind::TargetGroup, NAME).await {
        Ok(Object {
            resource: Some(Resource::TargetGroup(tg)),
            ..
        }) => {
            let Some(s) = tg.status else {
                return "no status yet".into();
            };
            let targets = s
                .targets
                .iter()
                .map(|t| format!("{} {} {}", t.address, t.health, t.reason))
                .collect::<Vec<_>>()
                .join("; ");
            format!("targets: [{targets}]")
        }
        Ok(_) => "not a TargetGroup".into(),
        Err(e) => format!("cannot read it: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// One `GET /` on its own connection: Ok when the answer is 200 with [`BODY`].
async fn answers_body(port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut text = Vec::new();
        stream.read_to_end(&mut text).await?;
        anyhow::Ok(String::from_utf8_lossy(&text).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .with_context(|| format!("{addr} did not answer within 2 s"))?
        .with_context(|| format!("GET http://{addr}/"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET http://{addr}/ answered {status:?}");
    }
    if body != BODY {
        bail!("GET http://{addr}/ answered 200 with {body:?}, not {BODY:?}");
    }
    Ok(())
}

/// `name` as given when it holds a slash, else the first match on PATH.
fn find_program(name: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let install = "install it (Debian: apt-get install -y wrk nginx)";
    if name.components().count() > 1 {
        if name.is_file() {
            return Ok(name.to_path_buf());
        }
        bail!("no {what} at {}: {install}", name.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{what} ({}) is not on PATH: {install}, or pass --{what}-bin",
                name.display()
            )
        })
}

fn temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// The processes whose parent is `pid` (nginx's workers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            (stat_fields(&stat)?.get(1)?.parse::<u32>().ok()? == pid).then_some(child)
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and parens):
/// state, ppid, ... utime (index 11), stime (12).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// User plus system CPU time of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f = stat_fields(&stat)?;
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// `getconf CLK_TCK` (the crate denies unsafe code, so no sysconf); 100 on every Linux target.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn join(ports: &[u16], sep: &str) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The versions of the programs measured.
#[derive(Debug, Clone, Serialize)]
struct Versions {
    wrk: String,
    nginx: String,
    hanul: String,
}

impl Versions {
    fn read(wrk: &Path, nginx: &Path, args: &LbArgs) -> Versions {
        // `wrk -v` prints its version and exits 1; `nginx -v` prints to stderr.
        let first_line = |bin: &Path, arg: &str| {
            Command::new(bin)
                .arg(arg)
                .output()
                .map(|o| {
                    let mut all = String::from_utf8_lossy(&o.stdout).into_owned();
                    all.push_str(&String::from_utf8_lossy(&o.stderr));
                    all.lines().next().unwrap_or("").trim().to_string()
                })
                .unwrap_or_default()
        };
        Versions {
            wrk: first_line(wrk, "-v"),
            nginx: first_line(nginx, "-v"),
            hanul: if args.only == Some(Proxy::Nginx) {
                "not run".into()
            } else {
                crate::hanul_version(&args.hanul_bin)
            },
        }
    }

    fn line(&self) -> String {
        format!(
            "wrk: {}; nginx: {}; hanul: {}",
            self.wrk, self.nginx, self.hanul
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:18090/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.94ms  542.57us   9.45ms   89.67%
    Req/Sec    34.40k     2.26k   37.59k    73.33%
  Latency Distribution
     50%  880.00us
     75%    1.03ms
     90%    1.29ms
     99%    3.73ms
  205556 requests in 3.00s, 31.56MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec:  68507.43
Transfer/sec:     10.52MB
";

    #[test]
    fn wrk_report_is_read_with_its_units_and_errors() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 205_556);
        assert_eq!(r.per_second, 68_507.43);
        assert!((r.p50_ms - 0.88).abs() < 1e-9);
        assert_eq!(r.p75_ms, 1.03);
        assert_eq!(r.p99_ms, 3.73);
        assert_eq!(r.non_2xx, 12);
        assert_eq!(r.socket_errors, [0, 2, 0, 7]);
        assert_eq!(r.errors(), 21);
    }

    #[test]
    fn wrk_report_without_latency_distribution_is_refused() {
        let without: String = WRK
            .lines()
            .filter(|l| !l.contains('%'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_wrk(&without).is_err());
    }

    #[test]
    fn wrk_times_convert_to_milliseconds() {
        assert_eq!(wrk_time_ms("500.00us").unwrap(), 0.5);
        assert_eq!(wrk_time_ms("2.50ms").unwrap(), 2.5);
        assert_eq!(wrk_time_ms("1.20s").unwrap(), 1200.0);
        assert_eq!(wrk_time_ms("1.00m").unwrap(), 60_000.0);
        assert!(wrk_time_ms("12").is_err());
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn proxy_config_has_keepalive_workers_and_forwarded_headers() {
        let conf = proxy_conf(Path::new("/tmp/x"), 3, 9000, &[1, 2, 3]);
        for want in [
            "worker_processes 3;",
            "listen 127.0.0.1:9000;",
            "server 127.0.0.1:1;",
            "server 127.0.0.1:3;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "X-Forwarded-For $proxy_add_x_forwarded_for;",
            "access_log off;",
            "pid /tmp/x/nginx.pid;",
            "proxy_temp_path /tmp/x/proxy_temp;",
        ] {
            assert!(conf.contains(want), "{want:?} missing from:\n{conf}");
        }
    }

    #[test]
    fn backends_answer_the_escaped_body() {
        let conf = backends_conf(Path::new("/tmp/x"), &[7001, 7002, 7003]);
        assert!(conf.contains("worker_processes 1;"));
        assert_eq!(conf.matches("return 200 \"hello, world\\n\";").count(), 3);
        assert!(conf.contains("listen 127.0.0.1:7002;"));
    }

    #[test]
    fn manifest_lists_the_three_targets_and_the_listener() {
        let m = manifest(8088, &[7001, 7002, 7003]);
        assert!(m.contains("targets: [{ip: 127.0.0.1, port: 7001}, {ip: 127.0.0.1, port: 7002}, {ip: 127.0.0.1, port: 7003}]"));
        assert!(m.contains("listeners: [{port: 8088, protocol: HTTP, defaultTargetGroup: bench}]"));
    }

    #[test]
    fn stat_fields_skip_a_command_name_with_spaces() {
        let stat = "42 (nginx: worker) S 41 42 42 0 -1 4194624 1 0 0 0 17 5 0 0";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[1], "41");
        assert_eq!((f[11], f[12]), ("17", "5"));
    }
}
