//! The driver's persisted record of what it runs: `state_dir/workloads.json`.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) after every start,
//! exit, stop and forget, so that an agent killed at any moment leaves either the old or the new
//! record, never a torn one. The process start time (field 22 of `/proc/<pid>/stat`) is recorded
//! next to the pid so that a recycled pid is not mistaken for the workload.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CgroupPaths, Error, Result, WorkloadState};

/// File name of the state file in the state directory.
pub(crate) const STATE_FILE: &str = "workloads.json";

/// One workload as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PersistedWorkload {
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (0 if it could not be read).
    pub start_ticks: u64,
    pub root: PathBuf,
    pub cgroups: CgroupPaths,
    pub state: WorkloadState,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub version: u32,
    pub workloads: BTreeMap<String, PersistedWorkload>,
}

pub(crate) fn load(state_dir: &Path) -> Result<StateFile> {
    let path = state_dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(source) => return Err(Error::ReadState { path, source }),
    };
    serde_json::from_str(&text).map_err(|source| Error::ParseState { path, source })
}

pub(crate) fn save(state_dir: &Path, file: &StateFile) -> Result<()> {
    let path = state_dir.join(STATE_FILE);
    let err = |source: io::Error| Error::WriteState {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(file).map_err(|e| err(io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, &path).map_err(err)?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub start_ticks: u64,
}

impl ProcStat {
    /// Whether the process has terminated (a zombie or dead, waiting for its parent).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` if the process does not exist.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn the_stat_line_is_parsed_even_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                ppid: 1,
                start_ticks: 987654
            }
        );
        let own = proc_stat(std::process::id()).unwrap();
        assert!(own.start_ticks > 0 && !own.is_dead());
    }

    #[test]
    fn the_state_file_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().workloads.is_empty());
        let mut file = StateFile {
            version: 1,
            ..StateFile::default()
        };
        file.workloads.insert(
            "i-1".into(),
            PersistedWorkload {
                pid: 7,
                start_ticks: 99,
                root: "/x".into(),
                cgroups: CgroupPaths::default(),
                state: WorkloadState::Running {
                    pid: 7,
                    started_at: SystemTime::UNIX_EPOCH,
                },
            },
        );
        save(dir.path(), &file).unwrap();
        save(dir.path(), &file).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.workloads, file.workloads);
        assert!(!dir.path().join("workloads.json.tmp").exists());
    }
}
