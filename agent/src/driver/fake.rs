//! [`FakeDriver`]: a recording fake of [`WorkloadDriver`] for unit tests of the agent loop.
//!
//! It starts no processes. It records every call, hands out increasing fake pids, and lets the
//! test make a workload exit ([`FakeDriver::exit`]), fail the next start, or claim that limits
//! are not enforced.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::{Error, ExitEvent, LaunchSpec, Result, WorkloadDriver, WorkloadState};

/// A call the agent made on the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    Start(LaunchSpec),
    Stop { instance: String, grace: Duration },
    Forget(String),
}

struct FakeState {
    calls: Vec<FakeCall>,
    workloads: BTreeMap<String, WorkloadState>,
    next_pid: u32,
    fail_next_start: Option<String>,
    limits: (bool, String),
}

/// A fake driver for unit tests: no processes, just recorded calls and scripted exits.
pub struct FakeDriver {
    state: Mutex<FakeState>,
    events: broadcast::Sender<ExitEvent>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        FakeDriver::new()
    }
}

/// A fixed time, so that states compare equal in tests.
const FAKE_TIME: SystemTime = SystemTime::UNIX_EPOCH;

impl FakeDriver {
    /// A fake with no workloads whose limits are "enforced".
    pub fn new() -> FakeDriver {
        FakeDriver {
            state: Mutex::new(FakeState {
                calls: Vec::new(),
                workloads: BTreeMap::new(),
                next_pid: 1000,
                fail_next_start: None,
                limits: (true, "fake driver".into()),
            }),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The specs of every `start` call, in order (including idempotent ones).
    pub fn started(&self) -> Vec<LaunchSpec> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                FakeCall::Start(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Makes the next `start` fail with `reason`.
    pub fn fail_next_start(&self, reason: impl Into<String>) {
        self.lock().fail_next_start = Some(reason.into());
    }

    /// Sets what `limits_enforced` answers.
    pub fn set_limits_enforced(&self, enforced: bool, note: impl Into<String>) {
        self.lock().limits = (enforced, note.into());
    }

    /// Pretends a running workload exited (on its own, or killed by `signal`, or by the OOM
    /// killer), and broadcasts the exit. Returns false if it was not running.
    pub fn exit(
        &self,
        instance: &str,
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
    ) -> bool {
        let event = {
            let mut st = self.lock();
            let Some(WorkloadState::Running { pid, .. }) = st.workloads.get(instance).cloned()
            else {
                return false;
            };
            let state = WorkloadState::Exited {
                code,
                signal,
                oom_killed,
                at: FAKE_TIME,
            };
            st.workloads.insert(instance.to_owned(), state.clone());
            ExitEvent {
                instance: instance.to_owned(),
                pid,
                state,
            }
        };
        let _ = self.events.send(event);
        true
    }

    /// Pretends a workload already runs (as if adopted after an agent restart).
    pub fn insert_running(&self, instance: &str) -> u32 {
        let mut st = self.lock();
        let pid = st.next_pid;
        st.next_pid += 1;
        st.workloads.insert(
            instance.to_owned(),
            WorkloadState::Running {
                pid,
                started_at: FAKE_TIME,
            },
        );
        pid
    }
}

#[async_trait::async_trait]
impl WorkloadDriver for FakeDriver {
    async fn start(&self, spec: &LaunchSpec) -> Result<u32> {
        let mut st = self.lock();
        st.calls.push(FakeCall::Start(spec.clone()));
        if let Some(reason) = st.fail_next_start.take() {
            return Err(Error::SpawnProcess {
                instance: spec.instance.clone(),
                source: io::Error::other(reason),
            });
        }
        if let Some(WorkloadState::Running { pid, .. }) = st.workloads.get(&spec.instance) {
            return Ok(*pid);
        }
        let pid = st.next_pid;
        st.next_pid += 1;
        st.workloads.insert(
            spec.instance.clone(),
            WorkloadState::Running {
                pid,
                started_at: FAKE_TIME,
            },
        );
        Ok(pid)
    }

    async fn stop(&self, instance: &str, grace: Duration) -> Result<()> {
        self.lock().calls.push(FakeCall::Stop {
            instance: instance.to_owned(),
            grace,
        });
        // SIGTERM ends a fake workload at once.
        self.exit(instance, None, Some(libc::SIGTERM), false);
        Ok(())
    }

    fn state(&self, instance: &str) -> Option<WorkloadState> {
        self.lock().workloads.get(instance).cloned()
    }

    fn list(&self) -> Vec<(String, WorkloadState)> {
        self.lock()
            .workloads
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    fn forget(&self, instance: &str) {
        let mut st = self.lock();
        st.calls.push(FakeCall::Forget(instance.to_owned()));
        if st.workloads.get(instance).is_some_and(|s| !s.is_running()) {
            st.workloads.remove(instance);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.events.subscribe()
    }

    fn limits_enforced(&self) -> (bool, String) {
        self.lock().limits.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::*;

    fn spec(name: &str) -> LaunchSpec {
        LaunchSpec {
            instance: name.into(),
            root: "/nonexistent".into(),
            command: vec!["true".into()],
            env: BTreeMap::new(),
            working_dir: None,
            user: "nobody".into(),
            limits: Limits::default(),
            user_data: None,
        }
    }

    #[tokio::test]
    async fn the_fake_records_calls_and_reports_scripted_exits() {
        let fake = FakeDriver::new();
        let mut events = fake.subscribe();
        let pid = fake.start(&spec("a")).await.unwrap();
        assert_eq!(
            fake.start(&spec("a")).await.unwrap(),
            pid,
            "start is idempotent"
        );
        assert!(fake.exit("a", Some(3), None, false));
        let event = events.recv().await.unwrap();
        assert_eq!(event.pid, pid);
        assert!(matches!(
            event.state,
            WorkloadState::Exited { code: Some(3), .. }
        ));

        fake.fail_next_start("boom");
        assert!(fake.start(&spec("b")).await.is_err());
        fake.stop("a", Duration::from_secs(1)).await.unwrap();
        fake.forget("a");
        assert!(fake.list().is_empty());
        assert_eq!(fake.started().len(), 3);
        assert_eq!(
            fake.calls().last(),
            Some(&FakeCall::Forget("a".into())),
            "{:?}",
            fake.calls()
        );
    }
}
