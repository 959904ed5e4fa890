//! The workload driver: runs an instance as a real local process with the limits of its type.
//!
//! [`WorkloadDriver`] is the seam between the agent loop and the operating system. The agent loop
//! is tested against [`FakeDriver`]; [`ProcessDriver`] is the real thing and is tested for real.
//!
//! A workload's life as the driver sees it:
//!
//! ```text
//!   start ──► Running { pid } ──(main process exits / stop)──► Exited { code, signal, oom } ──forget──► (gone)
//!                 ▲                                                 │
//!                 └──────────────────────── start ──────────────────┘
//! ```
//!
//! What the real driver guarantees:
//! - each workload is its own session and process group, in its own cgroup (v2 where the `cpu` and
//!   `memory` controllers are available, v1 otherwise), placed in the cgroup *before* it execs;
//! - stdout and stderr are appended directly to one `root/logs/console.log` (one `O_APPEND` file
//!   description shared by both, so their order is kept; no pipe through the agent, so output
//!   keeps flowing while the agent is down);
//! - when the main process exits or the workload is stopped, nothing of it survives: leftovers in
//!   its cgroup and process group are terminated, then killed;
//! - the agent is a child subreaper and reaps every child ([`reaper`]), so daemons that
//!   double-fork are reaped rather than left as zombies;
//! - what runs is persisted in `state_dir/workloads.json`, and a new driver on the same state
//!   directory re-adopts the processes that still run (same pid and start time).

mod cgroup;
mod error;
pub mod fake;
mod logs;
mod process;
mod reaper;
mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use cgroup::CgroupPaths;
pub use error::{Error, Result};
pub use fake::{FakeCall, FakeDriver};
pub use logs::{CONSOLE_LOG, console_log, log_dir, rotate_log_file};
pub use process::ProcessDriver;
pub(crate) use reaper::ChildExit;

/// What to run for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// Instance name, unique on the node (used as a directory and cgroup name).
    pub instance: String,
    /// The instance's directory (created by the driver if absent): root files, instance store, logs.
    pub root: PathBuf,
    /// argv (image command + args), non-empty.
    pub command: Vec<String>,
    /// The full environment of the process (nothing is inherited from the agent).
    pub env: BTreeMap<String, String>,
    /// Absolute, or relative to `root`; default `root`.
    pub working_dir: Option<PathBuf>,
    /// Run as this user (`nobody` by default); `root` is allowed when asked.
    pub user: String,
    /// Limits from the instance type.
    pub limits: Limits,
    /// A script run once, at first boot, before the command, its output in the same logs.
    pub user_data: Option<String>,
}

/// Resource limits of an instance type. A zero means "no limit" for that resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU in thousandths of a core (1000 = one vCPU).
    pub cpu_millis: u32,
    /// Memory in MiB (no swap on top of it).
    pub memory_mib: u64,
    /// Maximum number of processes and threads.
    pub pids: u32,
}

/// Observed state of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    /// The main process runs.
    Running { pid: u32, started_at: SystemTime },
    /// The main process is gone and nothing of the workload runs any more. `code` and `signal`
    /// are unknown (`None`) for processes adopted from a previous agent.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
        at: SystemTime,
    },
}

impl WorkloadState {
    /// Whether the main process runs.
    pub fn is_running(&self) -> bool {
        matches!(self, WorkloadState::Running { .. })
    }
}

/// A workload's main process exited (on its own, by `stop`, or by the OOM killer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub instance: String,
    pub pid: u32,
    /// Always [`WorkloadState::Exited`].
    pub state: WorkloadState,
}

/// Runs workloads on this node. A `dyn` seam: the agent holds an `Arc<dyn WorkloadDriver>`.
#[async_trait::async_trait]
pub trait WorkloadDriver: Send + Sync + 'static {
    /// Starts the workload; idempotent: if this instance already runs, returns its pid.
    async fn start(&self, spec: &LaunchSpec) -> Result<u32>;
    /// SIGTERM to the whole process group/cgroup, waits `grace`, then SIGKILLs every process left
    /// in the cgroup (and group). Returns once nothing of the instance runs. Ok if it wasn't
    /// running.
    async fn stop(&self, instance: &str, grace: Duration) -> Result<()>;
    /// The state of one instance, if the driver knows it.
    fn state(&self, instance: &str) -> Option<WorkloadState>;
    /// Instances the driver knows (running or exited and not yet forgotten).
    fn list(&self) -> Vec<(String, WorkloadState)>;
    /// Forget an exited/stopped instance (after the agent recorded its exit). A running instance
    /// is not forgotten.
    fn forget(&self, instance: &str);
    /// Exit notifications (also for adopted processes).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ExitEvent>;
    /// Whether CPU/memory limits are enforced here, and if not why (for a Node condition).
    fn limits_enforced(&self) -> (bool, String);
}

/// How long leftovers of a workload whose main process exited on its own get between SIGTERM
/// and SIGKILL.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// The wall clock, for the times at which the driver observed OS events (start, exit). The
/// driver has no planner to feed a `Clock` into; these are observations, like a log timestamp.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// Spawns a short helper command of the agent (`nft`, `ss`) as a child the agent's reaper
/// watches, for async callers (which may time it out and kill it by its pid): its pid and its
/// exit, to await. The caller gives `cmd` its stdio (pipes, not `Stdio::piped`: the `Child`
/// is not kept).
pub(crate) fn spawn_tool(
    cmd: &mut std::process::Command,
) -> std::io::Result<(u32, tokio::sync::oneshot::Receiver<ChildExit>)> {
    let reaper = reaper::global().map_err(std::io::Error::from)?;
    reaper.spawn_watched(cmd)
}

/// Runs a short helper command of the agent (`tar`) as a child the agent's reaper watches, and
/// waits for it; returns its exit code and signal. Blocking: call it off the async runtime.
pub(crate) fn run_tool(
    cmd: &mut std::process::Command,
) -> std::io::Result<(Option<i32>, Option<i32>)> {
    let reaper = reaper::global().map_err(std::io::Error::from)?;
    let (_, exit) = reaper.spawn_watched(cmd)?;
    let status = exit
        .blocking_recv()
        .map_err(|_| std::io::Error::other("the helper's exit was not observed"))?;
    Ok((status.code, status.signal))
}
