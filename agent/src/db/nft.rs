//! The DB endpoints' kernel path at work: a task that keeps this node's nftables table (see
//! [`super::kernel`]) in step with the endpoints the DB loop resolves, renews its expiring
//! elements, resets the local clients of an endpoint that lost a target, and on a graceful
//! stop fences everything, resets the clients and removes the table.
//!
//! ```text
//!  DB loop ──set(endpoints)──▶ watch ──▶ task: Marks::update ─▶ render ─▶ nft -f - (if changed
//!                                          │                              or a refresh is due)
//!                                          └─▶ ss -K dst ENDPOINT (endpoints that lost a target)
//! ```
//!
//! The OS side (`nft`, `ss`) sits behind [`Kernel`], so that the task is tested with a
//! recording fake on a paused clock; [`Tools`] is the real one, tested for real (with real
//! TCP connections) when the machine allows: root and nft.

use std::fmt;
use std::future::Future;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use std::io::{Read as _, Write as _};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::kernel::{self, Endpoint, Marks};
use super::metrics::Metrics;
use crate::{Error, Result};

/// How long one `nft` or `ss` run may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a failed apply is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// How long a graceful stop may take to fence, reset and remove.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent serves its DB endpoints (`hanul agent --db-endpoints`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndpointMode {
    /// The kernel path for local clients when nft can be used, else the proxy alone (with one
    /// warning).
    #[default]
    Auto,
    /// The kernel path, or the agent does not start.
    Kernel,
    /// The userspace proxy alone.
    Proxy,
}

impl FromStr for EndpointMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EndpointMode::Auto),
            "kernel" => Ok(EndpointMode::Kernel),
            "proxy" => Ok(EndpointMode::Proxy),
            _ => Err(format!("{s:?}: expected auto, kernel or proxy")),
        }
    }
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Auto => "auto",
            EndpointMode::Kernel => "kernel",
            EndpointMode::Proxy => "proxy",
        })
    }
}

/// The OS side of the kernel path.
pub trait Kernel: Send + Sync + 'static {
    /// Runs an nft script: one transaction, all or nothing.
    fn apply(&self, script: &str) -> impl Future<Output = Result<()>> + Send;
    /// Resets this host's TCP sockets connected to `endpoint` (SOCK_DESTROY, as `ss -K`), so
    /// that a client blocked in a read hears it at once. Returns how many.
    fn reset(&self, endpoint: SocketAddrV4) -> impl Future<Output = Result<usize>> + Send;
}

/// The real [`Kernel`]: `nft` and iproute2's `ss`.
#[derive(Clone, Debug)]
pub struct Tools {
    nft: PathBuf,
    /// Without it, an old connection is only reset when a packet of it passes the fence.
    ss: Option<PathBuf>,
}

/// `name` in `PATH` or the sbin directories (an agent's `PATH` may lack them).
fn locate(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Tools {
    /// `None` when nft is not installed.
    pub fn locate() -> Option<Tools> {
        Some(Tools {
            nft: locate("nft")?,
            ss: locate("ss"),
        })
    }
}

/// Runs `program args`, with `input` on its stdin, for at most [`COMMAND_TIMEOUT`]; its stdout.
/// The child is watched by the agent's reaper (the agent is a child subreaper that reaps
/// every child, so tokio cannot wait on it); its pipes are read on blocking threads.
async fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let spawn_error = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let stdin = match input {
        Some(text) => {
            let (r, w) = std::io::pipe().map_err(spawn_error)?;
            cmd.stdin(r);
            Some((w, text.to_owned()))
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    let (out_r, out_w) = std::io::pipe().map_err(spawn_error)?;
    let (err_r, err_w) = std::io::pipe().map_err(spawn_error)?;
    cmd.stdout(out_w).stderr(err_w);
    let (pid, exit) = crate::driver::spawn_tool(&mut cmd).map_err(spawn_error)?;
    // Our copies of the child's ends go, so that the readers see the end when it exits.
    drop(cmd);
    if let Some((mut w, text)) = stdin {
        tokio::task::spawn_blocking(move || w.write_all(text.as_bytes()));
    }
    let read = |mut r: std::io::PipeReader| {
        tokio::task::spawn_blocking(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let (stdout, stderr) = (read(out_r), read(err_r));
    let status = match tokio::time::timeout(COMMAND_TIMEOUT, exit).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => {
            return Err(spawn_error(std::io::Error::other(
                "its exit was not observed",
            )));
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(Error::Timeout {
                command,
                timeout: COMMAND_TIMEOUT,
            });
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    if status.code != Some(0) {
        let said = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        return Err(Error::Command {
            command,
            status: match (status.code, status.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "unknown status".into(),
            },
            output: said.to_string(),
        });
    }
    Ok(stdout)
}

impl Kernel for Tools {
    async fn apply(&self, script: &str) -> Result<()> {
        run(&self.nft, &["-f", "-"], Some(script)).await.map(drop)
    }

    async fn reset(&self, endpoint: SocketAddrV4) -> Result<usize> {
        let Some(ss) = &self.ss else {
            return Ok(0);
        };
        let (ip, port) = (endpoint.ip().to_string(), format!(":{}", endpoint.port()));
        let out = run(
            ss,
            &["-K", "-t", "-n", "-H", "dst", &ip, "dport", "=", &port],
            None,
        )
        .await?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }
}

/// The kernel path of this node's DB endpoints: a handle on its task.
#[derive(Debug)]
pub struct KernelPath {
    endpoints: watch::Sender<Vec<Endpoint>>,
    task: tokio::task::JoinHandle<()>,
    table: String,
}

impl KernelPath {
    /// The kernel path for `node` as `mode` asks: `None` for the proxy alone (`proxy`, or
    /// `auto` when nft is missing or its first script fails: one warning says so). Fails in
    /// `kernel` mode when nft cannot be used.
    pub async fn start(
        mode: EndpointMode,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Option<KernelPath>> {
        let table = kernel::table_name(node);
        let started = match (mode, Tools::locate()) {
            (EndpointMode::Proxy, _) => {
                metrics.set_kernel_path(false);
                info!(
                    "DB endpoints: the userspace proxy serves every client (--db-endpoints proxy)."
                );
                return Ok(None);
            }
            (_, None) => Err(Error::Spawn {
                command: "nft".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not in PATH nor /usr/sbin (apt-get install nftables)",
                ),
            }),
            (_, Some(tools)) => {
                if tools.ss.is_none() {
                    warn!(
                        "ss (iproute2) is not installed: a local client of a DB endpoint that changes target is reset only when it next sends."
                    );
                }
                KernelPath::start_with(tools, node, run_seed(), metrics.clone()).await
            }
        };
        match started {
            Ok(path) => {
                info!(table = %table, "DB endpoints: local clients take the kernel path (nftables), the proxy serves the others.");
                Ok(Some(path))
            }
            Err(e) if mode == EndpointMode::Auto => {
                metrics.set_kernel_path(false);
                warn!(
                    table = %table,
                    error = %chain(&e),
                    "DB endpoints: nftables cannot be used, the userspace proxy serves every client (--db-endpoints auto)."
                );
                Ok(None)
            }
            Err(e) => Err(Error::Config(format!(
                "--db-endpoints kernel: nftables cannot be used for table {table}: {}",
                chain(&e)
            ))),
        }
    }

    /// Starts the task on `kernel` once its first script (this node's table with nothing
    /// steered, fencing whatever a previous run steered) has applied. `seed`: this run's.
    pub async fn start_with<K: Kernel>(
        kernel: K,
        node: &str,
        seed: u8,
        metrics: Arc<Metrics>,
    ) -> Result<KernelPath> {
        let table = kernel::table_name(node);
        let marks = Marks::new(node, seed);
        let first = kernel::render(&table, &[], &marks);
        kernel.apply(&first).await?;
        metrics.set_kernel_path(true);
        let (tx, rx) = watch::channel(Vec::new());
        let task = tokio::spawn(keep(kernel, table.clone(), marks, first, rx, metrics));
        Ok(KernelPath {
            endpoints: tx,
            task,
            table,
        })
    }

    /// The endpoints to serve now; the task wakes only if they changed.
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        self.endpoints.send_if_modified(|current| {
            if *current == endpoints {
                return false;
            }
            *current = endpoints;
            true
        });
    }

    /// Stops gracefully: fences every connection it steered, resets the local clients of its
    /// endpoints and removes the table.
    pub async fn stop(self) {
        let KernelPath {
            endpoints,
            task,
            table,
        } = self;
        drop(endpoints);
        if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
            warn!(table = %table, "DB endpoints' kernel path did not stop in time; its rules expire by themselves.");
        }
    }
}

/// An error and its sources, for a log line.
fn chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A value of this run: std's hasher keys are random per process.
fn run_seed() -> u8 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one("hanul") as u8
}

/// The task: applies what changed or is due for a refresh, resets what lost a target.
/// `first`: the script in place.
async fn keep<K: Kernel>(
    kernel: K,
    table: String,
    mut marks: Marks,
    first: String,
    mut endpoints: watch::Receiver<Vec<Endpoint>>,
    metrics: Arc<Metrics>,
) {
    let mut applied = Some(first);
    let mut applied_at = Instant::now();
    let mut failing = false;
    loop {
        let now: Vec<Endpoint> = endpoints.borrow_and_update().clone();
        let reset = marks.update(&now);
        let script = kernel::render(&table, &now, &marks);
        let refresh = kernel::refresh_interval(&now);
        let due = refresh.is_some_and(|r| applied_at.elapsed() >= r);
        if due || applied.as_deref() != Some(script.as_str()) {
            match kernel.apply(&script).await {
                Ok(()) => {
                    if failing {
                        info!(table = %table, "DB endpoints' nftables rules apply again: local clients take the kernel path.");
                        failing = false;
                        metrics.set_kernel_path(true);
                    }
                    applied = Some(script);
                    applied_at = Instant::now();
                    metrics
                        .set_kernel_steered(now.iter().filter(|e| !e.targets.is_empty()).count());
                }
                Err(e) => {
                    metrics.nft_failed();
                    if !failing {
                        warn!(table = %table, error = %chain(&e), "Cannot apply the DB endpoints' nftables rules: local clients go through the proxy until they apply.");
                        failing = true;
                        metrics.set_kernel_path(false);
                    }
                    applied = None;
                    metrics.set_kernel_steered(0);
                    // What is in place may still steer to a former target until it expires:
                    // steer nothing, fence everything.
                    if let Err(e) = kernel.apply(&kernel::render(&table, &[], &marks)).await {
                        warn!(table = %table, error = %chain(&e), "Cannot withdraw the DB endpoints' nftables rules either: they expire by themselves.");
                    }
                }
            }
        }
        reset_clients(&kernel, &table, &reset).await;
        let wait = if failing {
            Some(RETRY)
        } else {
            refresh.map(|r| r.saturating_sub(applied_at.elapsed()))
        };
        tokio::select! {
            changed = endpoints.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
        }
    }
    // A graceful stop: nothing steered, every connection of this agent fenced and reset, then
    // the table goes.
    metrics.set_kernel_steered(0);
    let reset = marks.update(&[]);
    if let Err(e) = kernel.apply(&kernel::render(&table, &[], &marks)).await {
        warn!(table = %table, error = %chain(&e), "Cannot withdraw the DB endpoints' nftables rules.");
    }
    reset_clients(&kernel, &table, &reset).await;
    match kernel.apply(&kernel::render_delete(&table)).await {
        Ok(()) => info!(table = %table, "DB endpoints' nftables table removed."),
        Err(e) => {
            warn!(table = %table, error = %chain(&e), "Cannot remove the DB endpoints' nftables table.")
        }
    }
}

async fn reset_clients<K: Kernel>(kernel: &K, table: &str, endpoints: &[SocketAddrV4]) {
    for endpoint in endpoints {
        match kernel.reset(*endpoint).await {
            Ok(0) => {}
            Ok(n) => {
                info!(table = %table, endpoint = %endpoint, clients = n, "Reset the local clients of a DB endpoint whose target changed.")
            }
            Err(e) => {
                warn!(table = %table, endpoint = %endpoint, error = %chain(&e), "Cannot reset the local clients of a DB endpoint: they are reset when they next send.")
            }
        }
    }
}

#[cfg(test)]
mod tests;
