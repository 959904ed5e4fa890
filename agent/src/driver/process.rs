//! [`ProcessDriver`]: workloads as real processes in their own session and cgroups.
//!
//! Placement in the cgroups before exec: the parent creates the instance's cgroups, writes the
//! limits and opens each `cgroup.procs` for writing; the forked child, in `pre_exec` (after fork,
//! before exec), calls `setsid`, writes `0` ("the writing process") into each of those
//! descriptors, then drops to the workload's user (supplementary groups, gid, uid). So the first
//! instruction of the workload already runs confined, no user code runs outside the cgroups, and
//! the child does nothing that is not async-signal-safe (no allocation: the descriptors and the
//! group list are prepared in the parent). The kernel checks the move against the credentials
//! of whoever *opened* the file (root), so the order relative to `setuid` does not matter.
//!
//! Exit detection: the driver's own children are reaped by the process-wide [`reaper`], which
//! delivers their wait status. A process adopted from a previous agent is not our child (it was
//! reparented elsewhere when the old agent died), so it is watched by polling `/proc/<pid>/stat`
//! (gone, a different start time, or a zombie means it exited); its exit code is unknown.
//!
//! When the main process is gone, whatever is left in its cgroups and process group gets SIGTERM,
//! [`LEFTOVER_GRACE`] (or what remains of the `stop` grace), then SIGKILL until the cgroups are
//! empty; the OOM counter is read, the cgroups are removed, the exit is persisted and broadcast.
//!
//! [`reaper`]: super::reaper

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::cgroup::{CgroupPaths, Cgroups};
use super::logs::{self, console_log, log_dir};
use super::reaper::{self, ChildExit, Reaper};
use super::state::{self, PersistedWorkload, StateFile, proc_stat};
use super::{
    Error, ExitEvent, LEFTOVER_GRACE, LaunchSpec, Result, WorkloadDriver, WorkloadState, wall_now,
};

/// How often leftovers and adopted processes are polled.
const POLL: Duration = Duration::from_millis(50);
/// How often an adopted process (not our child) is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How long SIGKILLed processes may take to disappear before `stop` gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Directory under the instance root holding the driver's files (user data and its marker).
const HANUL_DIR: &str = ".hanul";
const USER_DATA: &str = "user-data";
const USER_DATA_DONE: &str = "user-data.done";

/// Runs workloads as local processes. Create it inside a tokio runtime; dropping it stops its
/// background tasks but leaves the workloads running (a new driver on the same state directory
/// re-adopts them), exactly as if the agent had died.
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    cgroups: Cgroups,
    reaper: &'static Reaper,
    runtime: Handle,
    entries: Mutex<HashMap<String, Entry>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    persist_lock: Mutex<()>,
    events: broadcast::Sender<ExitEvent>,
    shutdown: watch::Sender<bool>,
    generation: AtomicU64,
}

struct Entry {
    /// Distinguishes successive runs of one instance, so a late cleanup of an old run does not
    /// overwrite the state of a new one.
    generation: u64,
    pid: u32,
    start_ticks: u64,
    root: PathBuf,
    cgroups: CgroupPaths,
    state: WorkloadState,
    /// Set by `stop`: when leftovers get SIGKILL instead of [`LEFTOVER_GRACE`] after exit.
    kill_deadline: Option<Instant>,
    /// Becomes true once nothing of the run is left and its exit is recorded.
    done: watch::Receiver<bool>,
}

/// How the end of a main process is learnt.
enum ExitWatch {
    Child(oneshot::Receiver<ChildExit>),
    Adopted { start_ticks: u64 },
}

/// The credentials a workload runs with.
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

struct Launched {
    pid: u32,
    start_ticks: u64,
    cgroups: CgroupPaths,
    exit: oneshot::Receiver<ChildExit>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guards protect plain maps updated in single steps; a panic elsewhere cannot leave them
    // half-updated, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::Join { source })
}

impl ProcessDriver {
    /// Becomes a child subreaper and starts the reaper, finds the cgroup controllers (instance
    /// cgroups go to `<own cgroup>/<cgroup_root_name>/<instance>`), loads
    /// `state_dir/workloads.json` and re-adopts the workloads that still run (same pid and start
    /// time). Workloads that ended while no driver watched are reported as exited by
    /// [`WorkloadDriver::list`] and [`WorkloadDriver::state`] (not as events: nobody could have
    /// subscribed yet), and their leftovers are killed and cgroups removed in the background.
    pub fn new(state_dir: PathBuf, cgroup_root_name: String) -> Result<ProcessDriver> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let reaper = reaper::global().map_err(|source| Error::Subreaper { source })?;
        let cgroups = Cgroups::detect(&cgroup_root_name);
        let (enforced, note) = cgroups.limits_enforced();
        if enforced {
            info!(cgroups = %note, "Workload limits are enforced.");
        } else {
            warn!(cgroups = %note, "Workload limits are NOT enforced on this node.");
        }
        if !Uid::effective().is_root() {
            warn!(
                uid = Uid::effective().as_raw(),
                "The agent is not root: workloads run as the agent's own user, not the one they ask for."
            );
        }
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            state_dir,
            cgroups,
            reaper,
            runtime,
            entries: Mutex::new(HashMap::new()),
            op_locks: Mutex::new(HashMap::new()),
            persist_lock: Mutex::new(()),
            events: broadcast::channel(1024).0,
            shutdown,
            generation: AtomicU64::new(1),
        });
        inner.load()?;
        inner.save_now()?;
        inner.clean_up_unknown_cgroups();
        Ok(ProcessDriver { inner })
    }

    /// Whether workloads run as the user they ask for (only when the agent is root), and why not.
    pub fn runs_as_requested_user(&self) -> (bool, String) {
        if Uid::effective().is_root() {
            (true, "the agent is root".into())
        } else {
            (
                false,
                format!(
                    "the agent runs as uid {}; workloads run as that user",
                    Uid::effective()
                ),
            )
        }
    }

    /// Rotates the logs of every known instance that reached `max_bytes` (copy then truncate,
    /// keeping `keep` numbered copies). Meant to be called periodically by the agent.
    pub async fn rotate_logs(&self, max_bytes: u64, keep: usize) -> Result<()> {
        let roots: Vec<PathBuf> = lock(&self.inner.entries)
            .values()
            .map(|e| e.root.clone())
            .collect();
        blocking(move || {
            roots
                .iter()
                .try_for_each(|root| logs::rotate_instance_logs(root, max_bytes, keep))
        })
        .await?
    }

    /// The directories holding this driver's instance cgroups (`<own cgroup>/<root name>`).
    pub fn cgroup_base_dirs(&self) -> Vec<PathBuf> {
        self.inner.cgroups.base_dirs()
    }

    /// The cgroups of an instance (for diagnostics and tests).
    pub fn cgroups(&self, instance: &str) -> Option<CgroupPaths> {
        lock(&self.inner.entries)
            .get(instance)
            .map(|e| e.cgroups.clone())
    }
}

impl Drop for ProcessDriver {
    fn drop(&mut self) {
        // Stop watching; the workloads keep running, as when the agent dies.
        self.inner.shutdown.send_replace(true);
    }
}

impl Inner {
    fn op_lock(&self, instance: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.op_locks)
            .entry(instance.to_owned())
            .or_default()
            .clone()
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Loads the state file, re-adopting what still runs.
    fn load(self: &Arc<Self>) -> Result<()> {
        let file = state::load(&self.state_dir)?;
        for (instance, w) in file.workloads {
            let generation = self.next_generation();
            let (done_tx, done) = watch::channel(false);
            let mut entry = Entry {
                generation,
                pid: w.pid,
                start_ticks: w.start_ticks,
                root: w.root,
                cgroups: w.cgroups,
                state: w.state,
                kill_deadline: None,
                done,
            };
            if entry.state.is_running() {
                let alive = w.start_ticks != 0
                    && proc_stat(w.pid)
                        .is_some_and(|s| s.start_ticks == w.start_ticks && !s.is_dead());
                if alive {
                    info!(instance = %instance, pid = w.pid, "Re-adopted running workload.");
                    self.spawn_supervisor(
                        instance.clone(),
                        generation,
                        w.pid,
                        ExitWatch::Adopted {
                            start_ticks: w.start_ticks,
                        },
                        done_tx,
                    );
                } else {
                    info!(instance = %instance, pid = w.pid, "Workload ended while the agent was down.");
                    entry.state = WorkloadState::Exited {
                        code: None,
                        signal: None,
                        oom_killed: entry.cgroups.oom_killed(),
                        at: wall_now(),
                    };
                    // Its daemons may still run: clean up in the background.
                    let cgroups = entry.cgroups.clone();
                    let pid = w.pid;
                    let mut shutdown = self.shutdown.subscribe();
                    self.runtime.spawn(async move {
                        tokio::select! {
                            _ = shutdown.wait_for(|s| *s) => {}
                            r = clean_up(&cgroups, Some(pid), Instant::now()) => {
                                if let Err(e) = r {
                                    warn!(error = %e, "Cleaning up after a workload that ended while the agent was down failed.");
                                }
                                drop(done_tx);
                            }
                        }
                    });
                }
            }
            lock(&self.entries).insert(instance, entry);
        }
        Ok(())
    }

    /// Kills what runs in instance cgroups the state file does not know (an agent killed
    /// between spawning a workload and persisting it) and removes those cgroups.
    fn clean_up_unknown_cgroups(&self) {
        let unknown: Vec<String> = {
            let entries = lock(&self.entries);
            self.cgroups
                .existing_instances()
                .into_iter()
                .filter(|name| !entries.contains_key(name))
                .collect()
        };
        for name in unknown {
            let paths = self.cgroups.paths_for(&name);
            let mut shutdown = self.shutdown.subscribe();
            warn!(instance = %name, "Cleaning up the cgroups of an instance the agent has no record of.");
            self.runtime.spawn(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => {}
                    r = clean_up(&paths, None, Instant::now()) => {
                        if let Err(e) = r {
                            warn!(instance = %name, error = %e, "Cleaning up unknown cgroups failed.");
                        }
                    }
                }
            });
        }
    }

    fn snapshot(&self) -> StateFile {
        let entries = lock(&self.entries);
        StateFile {
            version: 1,
            workloads: entries
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        PersistedWorkload {
                            pid: e.pid,
                            start_ticks: e.start_ticks,
                            root: e.root.clone(),
                            cgroups: e.cgroups.clone(),
                            state: e.state.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Writes the state file. The snapshot is taken under the persist lock, so concurrent saves
    /// cannot leave an older snapshot on disk after a newer one.
    fn save_now(&self) -> Result<()> {
        let _guard = lock(&self.persist_lock);
        state::save(&self.state_dir, &self.snapshot())
    }

    async fn persist(self: &Arc<Self>) -> Result<()> {
        let inner = self.clone();
        blocking(move || inner.save_now()).await?
    }

    fn spawn_supervisor(
        self: &Arc<Self>,
        instance: String,
        generation: u64,
        pid: u32,
        exit: ExitWatch,
        done: watch::Sender<bool>,
    ) {
        let inner = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        self.runtime.spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                _ = inner.supervise(&instance, generation, pid, exit, done) => {}
            }
        });
    }

    /// Waits for the main process to end, cleans up after it and records the exit.
    async fn supervise(
        self: &Arc<Self>,
        instance: &str,
        generation: u64,
        pid: u32,
        exit: ExitWatch,
        done: watch::Sender<bool>,
    ) {
        let status = match exit {
            ExitWatch::Child(rx) => match rx.await {
                Ok(status) => Some(status),
                // Another watcher took over the pid (cannot happen with one driver per
                // process); fall back to /proc.
                Err(_) => wait_adopted(self.reaper, pid, 0, false).await,
            },
            ExitWatch::Adopted { start_ticks } => {
                let is_child = proc_stat(pid).is_some_and(|s| s.ppid == std::process::id());
                wait_adopted(self.reaper, pid, start_ticks, is_child).await
            }
        };
        let Some((cgroups, deadline)) = ({
            let entries = lock(&self.entries);
            entries
                .get(instance)
                .filter(|e| e.generation == generation)
                .map(|e| {
                    (
                        e.cgroups.clone(),
                        e.kill_deadline
                            .unwrap_or_else(|| Instant::now() + LEFTOVER_GRACE),
                    )
                })
        }) else {
            return;
        };
        let oom_killed = match clean_up(&cgroups, Some(pid), deadline).await {
            Ok(oom) => oom,
            Err(e) => {
                warn!(instance, pid, error = %e, "Cleaning up after the workload failed.");
                cgroups.oom_killed()
            }
        };
        let state = WorkloadState::Exited {
            code: status.and_then(|s| s.code),
            signal: status.and_then(|s| s.signal),
            oom_killed,
            at: wall_now(),
        };
        {
            let mut entries = lock(&self.entries);
            match entries.get_mut(instance) {
                Some(e) if e.generation == generation => e.state = state.clone(),
                _ => return,
            }
        }
        info!(instance, pid, state = ?state, "Workload exited.");
        if let Err(e) = self.persist().await {
            warn!(instance, error = %e, "Persisting the exit of a workload failed.");
        }
        let _ = self.events.send(ExitEvent {
            instance: instance.to_owned(),
            pid,
            state,
        });
        done.send_replace(true);
    }
}

/// Waits for a process that may not be our child: through the reaper if it is, else by polling
/// `/proc` (exit code unknown).
async fn wait_adopted(
    reaper: &'static Reaper,
    pid: u32,
    start_ticks: u64,
    is_child: bool,
) -> Option<ChildExit> {
    if is_child && let Ok(status) = reaper.watch(pid).await {
        return Some(status);
    }
    let mut tick = tokio::time::interval(ADOPTED_POLL);
    loop {
        tick.tick().await;
        match proc_stat(pid) {
            Some(s) if !s.is_dead() && (start_ticks == 0 || s.start_ticks == start_ticks) => {}
            _ => return None,
        }
    }
}

/// Whether anything of the workload is left: processes in its cgroups or, without cgroups, its
/// process group.
fn leftovers(cgroups: &CgroupPaths, pgid: Option<u32>) -> Vec<u32> {
    if cgroups.is_tracked() {
        return cgroups
            .procs()
            .into_iter()
            .filter(|&p| proc_stat(p).is_some_and(|s| !s.is_dead()))
            .collect();
    }
    match group(pgid).map(|g| killpg(g, None)) {
        Some(Ok(())) => pgid.into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The process group to signal. Never 0 or 1: `killpg(0)` would hit the agent's own group and
/// `kill(-1)` every process, whatever a corrupt state file says.
fn group(pgid: Option<u32>) -> Option<Pid> {
    pgid.filter(|&g| g > 1)
        .and_then(|g| i32::try_from(g).ok())
        .map(Pid::from_raw)
}

fn signal_everything(cgroups: &CgroupPaths, pgid: Option<u32>, signal: Signal) {
    // The group first (cheap, one syscall), then whatever left the group but not the cgroup.
    if let Some(g) = group(pgid) {
        let _ = killpg(g, signal);
    }
    cgroups.signal_all(signal);
}

/// Terminates what is left of a workload (SIGTERM, until `deadline`, then SIGKILL), then reads
/// the OOM counter and removes the cgroups. Returns whether the OOM killer struck.
async fn clean_up(cgroups: &CgroupPaths, pgid: Option<u32>, deadline: Instant) -> Result<bool> {
    let mut termed = false;
    loop {
        let cg = cgroups.clone();
        if blocking(move || leftovers(&cg, pgid)).await?.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let hard = Instant::now() + KILL_TIMEOUT;
            loop {
                let cg = cgroups.clone();
                let left = blocking(move || {
                    signal_everything(&cg, pgid, Signal::SIGKILL);
                    leftovers(&cg, pgid)
                })
                .await?;
                if left.is_empty() {
                    break;
                }
                if Instant::now() >= hard {
                    return Err(Error::StopTimeout {
                        instance: cgroups
                            .dirs()
                            .next()
                            .and_then(|d| d.file_name())
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        pids: left,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
            break;
        }
        if !termed {
            let cg = cgroups.clone();
            blocking(move || signal_everything(&cg, pgid, Signal::SIGTERM)).await?;
            termed = true;
        }
        tokio::time::sleep(POLL).await;
    }
    // The cgroup may refuse removal for a moment after its last process left.
    let hard = Instant::now() + KILL_TIMEOUT;
    loop {
        let cg = cgroups.clone();
        let (oom, removed) = blocking(move || (cg.oom_killed(), cg.remove())).await?;
        match removed {
            Ok(()) => return Ok(oom),
            Err(e) if Instant::now() >= hard => return Err(e),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

fn validate(spec: &LaunchSpec) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidSpec {
            instance: spec.instance.clone(),
            reason: reason.to_owned(),
        })
    };
    let name = spec.instance.as_str();
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 200
        || name.contains(['/', '\0'])
    {
        return invalid(
            "the instance name must be a non-empty file name (no '/', not '.' or '..')",
        );
    }
    if spec.command.is_empty() {
        return invalid("the command is empty");
    }
    if spec.command.iter().any(|a| a.contains('\0'))
        || spec
            .env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return invalid("the command or environment contains a NUL byte or a bad variable name");
    }
    if !spec.root.is_absolute() {
        return invalid("the root directory must be an absolute path");
    }
    Ok(())
}

fn resolve_identity(spec: &LaunchSpec) -> Result<Option<Identity>> {
    if !Uid::effective().is_root() {
        if spec.user != "root" {
            warn!(instance = %spec.instance, user = %spec.user, "The agent is not root: the workload runs as the agent's own user.");
        }
        return Ok(None);
    }
    let lookup = |source| Error::LookupUser {
        instance: spec.instance.clone(),
        user: spec.user.clone(),
        source,
    };
    let user = User::from_name(&spec.user)
        .map_err(lookup)?
        .ok_or_else(|| Error::UnknownUser {
            instance: spec.instance.clone(),
            user: spec.user.clone(),
        })?;
    let name = CString::new(spec.user.as_str()).map_err(|_| Error::InvalidSpec {
        instance: spec.instance.clone(),
        reason: "the user name contains a NUL byte".into(),
    })?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(lookup)?;
    Ok(Some(Identity {
        uid: user.uid,
        gid: user.gid,
        groups,
    }))
}

/// Creates the instance's directories and log files (owned by the workload's user), then spawns
/// the workload in its cgroups. Blocking.
fn launch(spec: &LaunchSpec, cgroups: &Cgroups, reaper: &Reaper) -> Result<Launched> {
    let identity = resolve_identity(spec)?;
    let prep = |path: &Path| {
        let instance = spec.instance.clone();
        let path = path.to_owned();
        move |source: io::Error| Error::PrepareRoot {
            instance,
            path,
            source,
        }
    };
    let own = |path: &Path| -> Result<()> {
        if let Some(id) = &identity {
            nix::unistd::chown(path, Some(id.uid), Some(id.gid))
                .map_err(|e| prep(path)(io::Error::from(e)))?;
        }
        Ok(())
    };
    let mkdir = |path: &Path| -> Result<()> {
        fs::create_dir_all(path).map_err(prep(path))?;
        own(path)
    };
    let root = &spec.root;
    mkdir(root)?;
    mkdir(&log_dir(root))?;
    let hanul_dir = root.join(HANUL_DIR);
    mkdir(&hanul_dir)?;
    // One open file description for both streams (dup'ed, not opened twice) so that stdout and
    // stderr share the append offset and interleave in write order.
    let console_path = console_log(root);
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&console_path)
        .map_err(prep(&console_path))?;
    own(&console_path)?;
    let stderr = stdout.try_clone().map_err(prep(&console_path))?;

    let working_dir = match &spec.working_dir {
        None => root.clone(),
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => {
            let dir = root.join(dir);
            mkdir(&dir)?;
            dir
        }
    };

    // User data runs once: the wrapper shell runs it, marks it done, then execs the command
    // (same pid, cgroups, user and logs). Once the marker exists the wrapper is left out.
    let done_marker = hanul_dir.join(USER_DATA_DONE);
    let argv: Vec<String> = match &spec.user_data {
        Some(script) if !done_marker.exists() => {
            let script_path = hanul_dir.join(USER_DATA);
            fs::write(&script_path, script).map_err(prep(&script_path))?;
            fs::set_permissions(&script_path, fs::Permissions::from_mode(0o600))
                .map_err(prep(&script_path))?;
            own(&script_path)?;
            let mut argv = vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                r#"if [ ! -e "$1" ]; then /bin/sh "$2"; : > "$1"; fi; shift 2; exec "$@""#
                    .to_owned(),
                "hanul-init".to_owned(),
                done_marker.to_string_lossy().into_owned(),
                script_path.to_string_lossy().into_owned(),
            ];
            argv.extend(spec.command.iter().cloned());
            argv
        }
        _ => spec.command.clone(),
    };

    let cg = cgroups.create(&spec.instance, &spec.limits)?;
    let procs = match cg.open_procs() {
        Ok(p) => p,
        Err(e) => {
            let _ = cg.remove();
            return Err(e);
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&working_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    configure_child(&mut cmd, procs, identity);
    let (pid, exit) = reaper.spawn_watched(&mut cmd).map_err(|source| {
        let _ = cg.remove();
        Error::SpawnProcess {
            instance: spec.instance.clone(),
            source,
        }
    })?;
    // 0 if it already exited: then it cannot be re-adopted, which is right.
    let start_ticks = proc_stat(pid).map_or(0, |s| s.start_ticks);
    Ok(Launched {
        pid,
        start_ticks,
        cgroups: cg,
        exit,
    })
}

/// Makes the child its own session, moves it into its cgroups and drops to its user, all
/// between fork and exec.
#[allow(unsafe_code)]
fn configure_child(cmd: &mut Command, cgroup_procs: Vec<File>, identity: Option<Identity>) {
    let hook = move || -> io::Result<()> {
        nix::unistd::setsid()?;
        for procs in &cgroup_procs {
            // "0" moves the writing process itself.
            nix::unistd::write(procs, b"0")?;
        }
        if let Some(id) = &identity {
            nix::unistd::setgroups(&id.groups)?;
            nix::unistd::setgid(id.gid)?;
            nix::unistd::setuid(id.uid)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child of a multithreaded process, where only
    // async-signal-safe operations are allowed. It only makes raw syscalls (setsid, write,
    // setgroups, setgid, setuid) on data prepared in the parent (open descriptors, a group
    // list), allocates nothing, takes no locks, and returns errors as raw errno values.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[async_trait::async_trait]
impl WorkloadDriver for ProcessDriver {
    async fn start(&self, spec: &LaunchSpec) -> Result<u32> {
        validate(spec)?;
        let inner = &self.inner;
        let op = inner.op_lock(&spec.instance);
        let _op = op.lock().await;
        if let Some(WorkloadState::Running { pid, .. }) = self.state(&spec.instance) {
            return Ok(pid);
        }
        // Processes left in this instance's cgroups belong to no known run (an agent killed
        // between spawn and persist): they must not share the new run's cgroups.
        let stale = inner.cgroups.paths_for(&spec.instance);
        let left = {
            let stale = stale.clone();
            blocking(move || leftovers(&stale, None)).await?
        };
        if !left.is_empty() {
            warn!(instance = %spec.instance, pids = ?left, "Killing processes left in the instance's cgroups.");
            clean_up(&stale, None, Instant::now()).await?;
        }
        let launched = {
            let spec = spec.clone();
            let cgroups = inner.cgroups.clone();
            let reaper = inner.reaper;
            blocking(move || launch(&spec, &cgroups, reaper)).await??
        };
        let generation = inner.next_generation();
        let (done_tx, done) = watch::channel(false);
        let pid = launched.pid;
        lock(&inner.entries).insert(
            spec.instance.clone(),
            Entry {
                generation,
                pid,
                start_ticks: launched.start_ticks,
                root: spec.root.clone(),
                cgroups: launched.cgroups,
                state: WorkloadState::Running {
                    pid,
                    started_at: wall_now(),
                },
                kill_deadline: None,
                done,
            },
        );
        inner.spawn_supervisor(
            spec.instance.clone(),
            generation,
            pid,
            ExitWatch::Child(launched.exit),
            done_tx,
        );
        info!(instance = %spec.instance, pid, user = %spec.user, "Started workload process.");
        inner.persist().await?;
        Ok(pid)
    }

    async fn stop(&self, instance: &str, grace: Duration) -> Result<()> {
        let inner = &self.inner;
        let op = inner.op_lock(instance);
        let _op = op.lock().await;
        let deadline = Instant::now() + grace;
        let (pid, cgroups, mut done) = {
            let mut entries = lock(&inner.entries);
            match entries.get_mut(instance) {
                Some(e) if e.state.is_running() => {
                    e.kill_deadline = Some(deadline);
                    (e.pid, e.cgroups.clone(), e.done.clone())
                }
                _ => return Ok(()),
            }
        };
        info!(instance, pid, grace = ?grace, "Stopping workload.");
        {
            let cgroups = cgroups.clone();
            blocking(move || signal_everything(&cgroups, Some(pid), Signal::SIGTERM)).await?;
        }
        if tokio::time::timeout_at(deadline, done.wait_for(|d| *d))
            .await
            .is_ok()
        {
            return Ok(());
        }
        {
            let cgroups = cgroups.clone();
            blocking(move || signal_everything(&cgroups, Some(pid), Signal::SIGKILL)).await?;
        }
        // The supervisor sees the main process go, kills the rest (the deadline has passed) and
        // reports done once the cgroups are empty and removed.
        let finished = tokio::time::timeout(KILL_TIMEOUT * 2, done.wait_for(|d| *d))
            .await
            .is_ok();
        match finished {
            true => Ok(()),
            false => Err(Error::StopTimeout {
                instance: instance.to_owned(),
                pids: blocking(move || leftovers(&cgroups, Some(pid))).await?,
            }),
        }
    }

    fn state(&self, instance: &str) -> Option<WorkloadState> {
        lock(&self.inner.entries)
            .get(instance)
            .map(|e| e.state.clone())
    }

    fn list(&self) -> Vec<(String, WorkloadState)> {
        let mut list: Vec<_> = lock(&self.inner.entries)
            .iter()
            .map(|(n, e)| (n.clone(), e.state.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    fn forget(&self, instance: &str) {
        {
            let mut entries = lock(&self.inner.entries);
            match entries.get(instance) {
                Some(e) if e.state.is_running() => {
                    warn!(instance, "Not forgetting a running workload.");
                    return;
                }
                Some(_) => {
                    entries.remove(instance);
                }
                None => return,
            }
        }
        {
            let mut ops = lock(&self.inner.op_locks);
            if ops.get(instance).is_some_and(|l| Arc::strong_count(l) == 1) {
                ops.remove(instance);
            }
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn_blocking(move || {
            if let Err(e) = inner.save_now() {
                warn!(error = %e, "Persisting workloads after forget failed.");
            }
        });
    }

    fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.inner.events.subscribe()
    }

    fn limits_enforced(&self) -> (bool, String) {
        self.inner.cgroups.limits_enforced()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::Future;

    use nix::sys::signal::kill;

    use super::super::Limits;
    use super::*;

    fn is_root() -> bool {
        if Uid::effective().is_root() {
            true
        } else {
            eprintln!("SKIPPED: this test needs root (cgroups, running as nobody)");
            false
        }
    }

    /// A cgroup root name unique to this test process and test.
    fn cgroup_root(test: &str) -> String {
        format!("hanul-test-{}/{test}", std::process::id())
    }

    /// Removes the test's cgroup base directories (and the per-process parent once empty).
    fn remove_test_cgroups(driver: &ProcessDriver) {
        for base in driver.cgroup_base_dirs() {
            let _ = fs::remove_dir(&base);
            if let Some(parent) = base.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }

    fn spec(root: &Path, instance: &str, command: &[&str]) -> LaunchSpec {
        LaunchSpec {
            instance: instance.into(),
            root: root.join(instance),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
            working_dir: None,
            user: "nobody".into(),
            limits: Limits {
                cpu_millis: 1000,
                memory_mib: 256,
                pids: 256,
            },
            user_data: None,
        }
    }

    /// Polls `probe` until it returns `Some`, panicking with the last observation after `within`.
    async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + within;
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(seen) if Instant::now() >= deadline => {
                    panic!("timed out waiting for {what}; last seen: {seen}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Whether `pid` (with this start time) still exists in any form, zombie included.
    fn exists(pid: u32, start_ticks: u64) -> bool {
        proc_stat(pid).is_some_and(|s| s.start_ticks == start_ticks)
    }

    async fn next_exit(rx: &mut broadcast::Receiver<ExitEvent>, instance: &str) -> ExitEvent {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let e = rx.recv().await.unwrap();
                if e.instance == instance {
                    return e;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no exit event for {instance} within 30 s"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workload_runs_as_nobody_with_its_env_and_logs_and_user_data_runs_once_as_root() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let driver =
            ProcessDriver::new(tmp.path().join("state"), cgroup_root("runs_as_nobody")).unwrap();
        let mut spec = spec(
            tmp.path(),
            "i-web",
            &[
                "sh",
                "-c",
                r#"echo "user=$(id -un) greeting=$GREETING cwd=$(pwd)"; echo oops >&2; exec sleep 1000"#,
            ],
        );
        spec.env.insert("GREETING".into(), "hello".into());
        spec.user_data = Some("echo user-data-ran; id -un > user-data.who\n".into());
        spec.working_dir = Some("app".into());
        let root = spec.root.clone();
        let out = console_log(&root);

        let pid = driver.start(&spec).await.unwrap();
        assert_eq!(
            driver.start(&spec).await.unwrap(),
            pid,
            "start is idempotent"
        );
        let line = format!(
            "user=nobody greeting=hello cwd={}",
            root.join("app").display()
        );
        eventually("the workload's output", Duration::from_secs(10), || {
            let text = read(&out);
            let seen = text.contains(&line);
            async move { if seen { Ok(()) } else { Err(text) } }
        })
        .await;
        let console = read(&out);
        let (ours, theirs) = (console.find(&line), console.find("oops"));
        assert!(
            ours.is_some() && theirs.is_some() && ours < theirs,
            "stdout and stderr share the console log, in write order: {console:?}"
        );
        assert_eq!(read(&out).matches("user-data-ran").count(), 1);
        assert_eq!(read(&root.join("app/user-data.who")).trim(), "nobody");
        let status = read(Path::new(&format!("/proc/{pid}/status")));
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534")),
            "{status}"
        );
        assert_eq!(proc_stat(pid).unwrap().ppid, std::process::id());
        let cgroups = driver.cgroups("i-web").unwrap();
        assert!(cgroups.is_tracked());
        for dir in cgroups.dirs() {
            let procs = read(&dir.join("cgroup.procs"));
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} not in {}: {procs}",
                dir.display()
            );
        }

        driver.stop("i-web", Duration::from_secs(5)).await.unwrap();
        assert!(
            matches!(
                driver.state("i-web"),
                Some(WorkloadState::Exited {
                    signal: Some(15),
                    ..
                })
            ),
            "{:?}",
            driver.state("i-web")
        );
        assert!(cgroups.dirs().all(|d| !d.exists()), "cgroups removed");

        // Second boot: the marker keeps user data from running again.
        let pid2 = driver.start(&spec).await.unwrap();
        assert_ne!(pid2, pid);
        eventually("the second boot's output", Duration::from_secs(10), || {
            let text = read(&out);
            async move {
                if text.matches("greeting=hello").count() == 2 {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        })
        .await;
        assert_eq!(
            read(&out).matches("user-data-ran").count(),
            1,
            "{}",
            read(&out)
        );
        driver.stop("i-web", Duration::from_secs(5)).await.unwrap();
        driver.forget("i-web");
        assert!(driver.state("i-web").is_none());
        remove_test_cgroups(&driver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_limit_kills_a_workload_that_allocates_past_it_and_reports_oom_as_root() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let driver =
            ProcessDriver::new(tmp.path().join("state"), cgroup_root("memory_limit")).unwrap();
        assert!(driver.limits_enforced().0, "{:?}", driver.limits_enforced());
        let mut spec = spec(
            tmp.path(),
            "i-hog",
            &[
                "/usr/bin/python3",
                "-c",
                "b = bytearray(256 * 1024 * 1024)\nimport time\ntime.sleep(60)",
            ],
        );
        spec.limits.memory_mib = 64;
        let mut events = driver.subscribe();
        let pid = driver.start(&spec).await.unwrap();
        let event = next_exit(&mut events, "i-hog").await;
        assert_eq!(event.pid, pid);
        assert!(
            matches!(
                event.state,
                WorkloadState::Exited {
                    oom_killed: true,
                    signal: Some(9),
                    ..
                }
            ),
            "{:?}; console: {}",
            event.state,
            read(&console_log(&spec.root))
        );
        assert_eq!(driver.state("i-hog"), Some(event.state));
        remove_test_cgroups(&driver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_quota_memory_and_pids_limits_are_written_to_the_v1_cgroups_as_root() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(tmp.path().join("state"), cgroup_root("cpu_pids")).unwrap();
        let mut spec = spec(tmp.path(), "i-small", &["sleep", "1000"]);
        spec.limits = Limits {
            cpu_millis: 500,
            memory_mib: 128,
            pids: 64,
        };
        driver.start(&spec).await.unwrap();
        let cg = driver.cgroups("i-small").unwrap();
        let file = |dir: &Option<PathBuf>, f: &str| read(&dir.as_ref().unwrap().join(f));
        if cg.v2.is_some() {
            let v2 = &cg.v2;
            assert_eq!(file(v2, "cpu.max").trim(), "50000 100000");
            assert_eq!(file(v2, "pids.max").trim(), "64");
        } else {
            assert_eq!(file(&cg.cpu, "cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(file(&cg.cpu, "cpu.cfs_period_us").trim(), "100000");
            assert_eq!(
                file(&cg.memory, "memory.limit_in_bytes").trim(),
                "134217728"
            );
            if cg
                .memory
                .as_ref()
                .unwrap()
                .join("memory.memsw.limit_in_bytes")
                .exists()
            {
                assert_eq!(
                    file(&cg.memory, "memory.memsw.limit_in_bytes").trim(),
                    "134217728"
                );
            }
            assert_eq!(file(&cg.pids, "pids.max").trim(), "64");
        }
        driver
            .stop("i-small", Duration::from_secs(5))
            .await
            .unwrap();
        remove_test_cgroups(&driver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_kills_a_process_tree_including_a_double_forked_daemon_as_root() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(tmp.path().join("state"), cgroup_root("tree")).unwrap();
        // A child, a daemon that double-forks into its own session, then a shell and a child
        // that ignore SIGTERM (so the SIGKILL path runs too).
        let spec = spec(
            tmp.path(),
            "i-tree",
            &[
                "sh",
                "-c",
                "sleep 1000 & (setsid sleep 1001 &); trap '' TERM; sleep 1002 & echo ready; wait",
            ],
        );
        let pid = driver.start(&spec).await.unwrap();
        let cg = driver.cgroups("i-tree").unwrap();
        let procs = eventually(
            "four processes in the cgroup",
            Duration::from_secs(10),
            || {
                let procs = cg.procs();
                async move {
                    if procs.len() >= 4 {
                        Ok(procs)
                    } else {
                        Err(format!("{procs:?}"))
                    }
                }
            },
        )
        .await;
        let tree: Vec<(u32, u64)> = procs
            .iter()
            .filter_map(|&p| proc_stat(p).map(|s| (p, s.start_ticks)))
            .collect();
        let daemon = procs
            .iter()
            .copied()
            .find(|&p| read(Path::new(&format!("/proc/{p}/cmdline"))).contains("1001"))
            .expect("the daemon runs");
        assert_eq!(
            proc_stat(daemon).unwrap().ppid,
            std::process::id(),
            "the orphaned daemon is reparented to the agent (subreaper)"
        );

        let mut events = driver.subscribe();
        driver
            .stop("i-tree", Duration::from_millis(500))
            .await
            .unwrap();
        let left: Vec<_> = tree.iter().filter(|(p, t)| exists(*p, *t)).collect();
        assert!(
            left.is_empty(),
            "left after stop (zombies included): {left:?}"
        );
        assert!(cg.dirs().all(|d| !d.exists()), "cgroups removed");
        let event = next_exit(&mut events, "i-tree").await;
        assert_eq!(event.pid, pid);
        assert!(
            matches!(
                event.state,
                WorkloadState::Exited {
                    signal: Some(9),
                    ..
                }
            ),
            "the shell ignored SIGTERM, so it was killed: {:?}",
            event.state
        );
        assert_eq!(read(&console_log(&spec.root)).trim(), "ready");
        remove_test_cgroups(&driver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_driver_re_adopts_running_workloads_and_notices_their_exit_as_root() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let name = cgroup_root("adopt");
        let spec_a = spec(
            tmp.path(),
            "i-a",
            &["sh", "-c", "echo started; exec sleep 1000"],
        );
        let spec_b = spec(tmp.path(), "i-b", &["sleep", "1000"]);

        let first = ProcessDriver::new(state_dir.clone(), name.clone()).unwrap();
        let pid_a = first.start(&spec_a).await.unwrap();
        let pid_b = first.start(&spec_b).await.unwrap();
        // The agent "dies": its workloads keep running.
        drop(first);
        assert!(proc_stat(pid_a).is_some_and(|s| !s.is_dead()));

        let second = ProcessDriver::new(state_dir.clone(), name.clone()).unwrap();
        assert!(
            matches!(second.state("i-a"), Some(WorkloadState::Running { pid, .. }) if pid == pid_a),
            "{:?}",
            second.state("i-a")
        );
        assert_eq!(
            second.start(&spec_a).await.unwrap(),
            pid_a,
            "no second process"
        );
        let cg = second.cgroups("i-a").unwrap();
        assert_eq!(
            cg.procs(),
            vec![pid_a],
            "only the adopted process runs in its cgroup"
        );

        let mut events = second.subscribe();
        kill(Pid::from_raw(pid_a as i32), Signal::SIGKILL).unwrap();
        let event = next_exit(&mut events, "i-a").await;
        assert_eq!(event.pid, pid_a);
        assert!(!event.state.is_running());
        assert!(cg.dirs().all(|d| !d.exists()), "cgroups removed");

        // While no driver watches, i-b ends; the next driver reports it as exited.
        drop(second);
        kill(Pid::from_raw(pid_b as i32), Signal::SIGKILL).unwrap();
        eventually("i-b to be gone", Duration::from_secs(10), || {
            let stat = proc_stat(pid_b);
            async move {
                match stat {
                    Some(s) if !s.is_dead() => Err(format!("{s:?}")),
                    _ => Ok(()),
                }
            }
        })
        .await;
        let third = ProcessDriver::new(state_dir, name).unwrap();
        assert!(
            matches!(
                third.state("i-b"),
                Some(WorkloadState::Exited { code: None, .. })
            ),
            "{:?}",
            third.state("i-b")
        );
        assert!(!third.state("i-a").unwrap().is_running());
        let cg_b = third.cgroups("i-b").unwrap();
        eventually(
            "i-b's cgroups to be removed",
            Duration::from_secs(10),
            || {
                let present: Vec<PathBuf> = cg_b
                    .dirs()
                    .filter(|d| d.exists())
                    .map(Path::to_owned)
                    .collect();
                async move {
                    if present.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{present:?}"))
                    }
                }
            },
        )
        .await;
        remove_test_cgroups(&third);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_in_cgroups_the_state_file_does_not_know_are_killed_by_the_next_driver_as_root()
     {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let name = cgroup_root("unrecorded");
        let first = ProcessDriver::new(state_dir.clone(), name.clone()).unwrap();
        let pid = first
            .start(&spec(tmp.path(), "i-lost", &["sleep", "1000"]))
            .await
            .unwrap();
        let ticks = proc_stat(pid).unwrap().start_ticks;
        let cg = first.cgroups("i-lost").unwrap();
        // The agent dies after spawning but before its record reached the disk.
        drop(first);
        fs::remove_file(state_dir.join(state::STATE_FILE)).unwrap();

        let second = ProcessDriver::new(state_dir, name).unwrap();
        assert!(second.state("i-lost").is_none());
        eventually(
            "the unrecorded process and its cgroups to be gone",
            Duration::from_secs(10),
            || {
                let alive = exists(pid, ticks);
                let dirs: Vec<PathBuf> = cg
                    .dirs()
                    .filter(|d| d.exists())
                    .map(Path::to_owned)
                    .collect();
                async move {
                    if !alive && dirs.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("alive: {alive}, cgroups: {dirs:?}"))
                    }
                }
            },
        )
        .await;
        remove_test_cgroups(&second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adopted_process_that_is_not_our_child_is_watched_through_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let reaper = reaper::global().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("1000").current_dir(tmp.path());
        let (pid, _exit) = reaper.spawn_watched(&mut cmd).unwrap();
        let ticks = proc_stat(pid).unwrap().start_ticks;
        // Watched as if it were not our child: only /proc tells.
        let watcher = tokio::spawn(wait_adopted(reaper, pid, ticks, false));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the exit is noticed")
            .unwrap();
        assert_eq!(status, None, "the exit code of a non-child is unknown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exited_workload_leaves_no_zombie_behind_and_reports_its_code() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(tmp.path().join("state"), cgroup_root("zombies")).unwrap();
        let mut events = driver.subscribe();
        let spec = spec(tmp.path(), "i-short", &["sh", "-c", "sleep 0.1 & exit 3"]);
        let pid = driver.start(&spec).await.unwrap();
        let event = next_exit(&mut events, "i-short").await;
        assert_eq!(event.pid, pid);
        assert!(
            matches!(
                event.state,
                WorkloadState::Exited {
                    code: Some(3),
                    signal: None,
                    oom_killed: false,
                    ..
                }
            ),
            "{:?}",
            event.state
        );
        eventually("no zombie of the workload", Duration::from_secs(10), || {
            let stat = proc_stat(pid);
            async move {
                match stat {
                    None => Ok(()),
                    Some(s) => Err(format!("{s:?}")),
                }
            }
        })
        .await;
        let persisted = read(&tmp.path().join("state").join(state::STATE_FILE));
        assert!(persisted.contains("\"code\": 3"), "{persisted}");
        remove_test_cgroups(&driver);
    }

    #[tokio::test]
    async fn an_invalid_spec_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(tmp.path().join("state"), cgroup_root("invalid")).unwrap();
        let mut bad = spec(tmp.path(), "../escape", &["true"]);
        let err = driver.start(&bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSpec { .. }), "{err}");
        bad = spec(tmp.path(), "ok", &[]);
        assert!(matches!(
            driver.start(&bad).await,
            Err(Error::InvalidSpec { .. })
        ));
        if Uid::effective().is_root() {
            bad = spec(tmp.path(), "ok", &["true"]);
            bad.user = "no-such-user-hanul".into();
            assert!(matches!(
                driver.start(&bad).await,
                Err(Error::UnknownUser { .. })
            ));
        }
        remove_test_cgroups(&driver);
    }
}
