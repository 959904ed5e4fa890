//! The agent's reaper: makes the agent a child subreaper and reaps every child it gets.
//!
//! PID 1 on these machines does not reap orphans, so the agent is a subreaper
//! (`PR_SET_CHILD_SUBREAPER`): processes that a workload leaves behind (a daemon that
//! double-forked) are reparented to the agent instead of to PID 1, and reaped here.
//!
//! One dedicated thread per process blocks in `waitpid(-1)`; it is process-global because
//! reaping is (several drivers in one process, as in tests, share it). Exit statuses are delivered
//! to whoever watches the pid; statuses nobody watches (orphans) are kept briefly so that a watcher
//! registering just after the exit still gets it.
//!
//! Consequence for the rest of the agent: once a [`super::ProcessDriver`] exists, this thread
//! reaps *every* child of the agent process, so other code must not `wait` on children it spawns
//! itself (std or tokio `Command::status/output/wait` would fail with `ECHILD`); spawn them with
//! [`Reaper::spawn_watched`] instead.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use tokio::sync::oneshot;

/// How long an exit status nobody watches is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ChildExit>>,
    unclaimed: HashMap<i32, (ChildExit, Instant)>,
    /// Bumped on every spawn, so the thread does not sleep after `ECHILD` if a child appeared.
    spawns: u64,
}

/// The process-wide reaper.
pub(crate) struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

static REAPER: OnceLock<Result<&'static Reaper, Errno>> = OnceLock::new();

/// The reaper, started on first use (which also makes the process a child subreaper).
pub(crate) fn global() -> Result<&'static Reaper, Errno> {
    *REAPER.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true)?;
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            state: Mutex::new(State::default()),
            spawned: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("hanul-reaper".into())
            .spawn(move || reaper.run())
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        Ok(reaper)
    })
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let spawns = self.lock().spawns;
            match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => self.deliver(
                    pid.as_raw(),
                    ChildExit {
                        code: Some(code),
                        signal: None,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, signal, _)) => self.deliver(
                    pid.as_raw(),
                    ChildExit {
                        code: None,
                        signal: Some(signal as i32),
                    },
                ),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    if e != Errno::ECHILD {
                        tracing::warn!(error = %e, "Waiting for children failed.");
                    }
                    // No children: sleep until one is spawned (orphans only ever come from our
                    // own descendants, so none can appear without a spawn first).
                    let state = self.lock();
                    if state.spawns == spawns {
                        let _unused = self
                            .spawned
                            .wait_timeout(state, Duration::from_secs(5))
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: i32, exit: ChildExit) {
        let mut state = self.lock();
        if let Some(tx) = state.waiters.remove(&pid)
            && tx.send(exit).is_ok()
        {
            return;
        }
        let now = Instant::now();
        state
            .unclaimed
            .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
        state.unclaimed.insert(pid, (exit, now));
    }

    /// Spawns `cmd` and watches the child. The reaper's lock is held across the spawn, so the
    /// exit of a child that dies at once is delivered to this watcher, and a stale status of an
    /// earlier process with the same pid is dropped rather than taken for this one's.
    pub(crate) fn spawn_watched(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(u32, oneshot::Receiver<ChildExit>)> {
        let mut state = self.lock();
        let child: Child = cmd.spawn()?;
        let pid = child.id();
        // The reaper thread owns waiting; dropping `Child` neither waits nor kills.
        drop(child);
        let raw = pid as i32;
        state.unclaimed.remove(&raw);
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(raw, tx);
        state.spawns += 1;
        drop(state);
        self.spawned.notify_all();
        Ok((pid, rx))
    }

    /// Watches a child that already exists (one adopted by a new driver in the same process).
    /// If it already exited, its recent status is delivered at once.
    pub(crate) fn watch(&self, pid: u32) -> oneshot::Receiver<ChildExit> {
        let (tx, rx) = oneshot::channel();
        let raw = pid as i32;
        let mut state = self.lock();
        if let Some((exit, _)) = state.unclaimed.remove(&raw) {
            let _ = tx.send(exit);
        } else {
            state.waiters.insert(raw, tx);
        }
        rx
    }
}
