//! cgroups: finding the controllers, creating one cgroup per instance, writing its limits,
//! listing and signalling its processes, reading its OOM kills, removing it.
//!
//! Instance cgroups live at `<agent's own cgroup>/<cgroup_root_name>/<instance>` in each hierarchy:
//! nesting under the agent's own cgroup keeps the workloads inside whatever limits the agent
//! itself was given (a container, a systemd slice), and `cgroup_root_name` (`hanul/<node>`) keeps
//! several agents on one machine apart.
//!
//! - cgroup v2 is used when a `cgroup2` mount offers both `cpu` and `memory` in the agent's
//!   cgroup; the controllers are then enabled in `cgroup.subtree_control` down to the instance's
//!   parent (this fails with `EBUSY` if the agent's own non-root cgroup holds processes: v2 has
//!   no internal processes, and the agent says so instead of moving itself).
//! - cgroup v1 otherwise, with whichever of `cpu`, `memory` and `pids` are mounted.
//! - Without `cpu` and `memory`, workloads run without limits and [`Cgroups::limits_enforced`]
//!   says why.
//!
//! Every path is data, so the v2 code paths are tested against a fake tree in a temp directory
//! (the test machine has only v1 `cpu`/`memory`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{Error, Limits, Result};

/// CFS period used for CPU quotas, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Where instance cgroups go on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// `base` is `<cgroup2 mount>/<own cgroup>/<root name>`.
    V2 { base: PathBuf },
    /// Each base is `<controller mount>/<own cgroup>/<root name>`.
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// The cgroup setup of this machine, as found at startup.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    layout: Option<Layout>,
    enforced: bool,
    note: String,
}

/// The cgroups of one instance (persisted, so a new agent can signal and remove them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPaths {
    /// The instance's cgroup in the unified (v2) hierarchy.
    pub v2: Option<PathBuf>,
    /// v1 `cpu` cgroup.
    pub cpu: Option<PathBuf>,
    /// v1 `memory` cgroup.
    pub memory: Option<PathBuf>,
    /// v1 `pids` cgroup.
    pub pids: Option<PathBuf>,
    /// OOM kills already counted when the cgroup was set up (non-zero only for a reused cgroup).
    #[serde(default)]
    pub oom_baseline: u64,
}

fn cg_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Cgroup {
        op,
        path: path.to_owned(),
        source,
    }
}

fn write_control(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(cg_err("writing", &path))
}

fn write_control_if_present(dir: &Path, file: &str, value: &str) -> Result<()> {
    if dir.join(file).exists() {
        write_control(dir, file, value)?;
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo` that matters here.
struct Mount {
    root: String,
    mount_point: PathBuf,
    fs_type: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_owned();
            let _source = right.next()?;
            let super_options = right
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(Mount {
                root: left.get(3)?.replace("\\040", " "),
                mount_point: PathBuf::from(left.get(4)?.replace("\\040", " ")),
                fs_type,
                super_options,
            })
        })
        .collect()
}

/// `/proc/self/cgroup` lines: (hierarchy controllers, path).
fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = if controllers.is_empty() {
                Vec::new()
            } else {
                controllers.split(',').map(str::to_owned).collect()
            };
            Some((controllers, path.to_owned()))
        })
        .collect()
}

/// The directory of the agent's own cgroup under `mount` (paths in `/proc/self/cgroup` are
/// relative to the hierarchy's root, which may not be the mount's root inside a container).
fn own_dir(mount: &Mount, own_path: &str) -> PathBuf {
    let rel = own_path
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(own_path);
    let mut dir = mount.mount_point.clone();
    dir.extend(Path::new(rel.trim_start_matches('/')).components());
    dir
}

impl Cgroups {
    /// Finds the controllers of this machine and prepares `<own cgroup>/<root_name>`.
    pub(crate) fn detect(root_name: &str) -> Cgroups {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let self_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = parse_mountinfo(&mountinfo);
        let own = parse_self_cgroup(&self_cgroup);

        let mut v2_note = String::from("no cgroup2 mount");
        if let (Some(mount), Some((_, path))) = (
            mounts.iter().find(|m| m.fs_type == "cgroup2"),
            own.iter().find(|(c, _)| c.is_empty()),
        ) {
            let dir = own_dir(mount, path);
            let controllers =
                fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("cpu") && has("memory") {
                return Cgroups::v2_at(&dir, root_name);
            }
            v2_note = format!(
                "cgroup2 at {} lacks the cpu and memory controllers ({:?})",
                dir.display(),
                controllers.trim()
            );
        }

        let v1 = |name: &str| -> Option<PathBuf> {
            let mount = mounts
                .iter()
                .find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == name))?;
            let (_, path) = own.iter().find(|(c, _)| c.iter().any(|x| x == name))?;
            Some(own_dir(mount, path))
        };
        let (cpu, memory, pids) = (v1("cpu"), v1("memory"), v1("pids"));
        if cpu.is_none() && memory.is_none() && pids.is_none() {
            return Cgroups {
                layout: None,
                enforced: false,
                note: format!(
                    "{v2_note}, and no cgroup v1 cpu, memory or pids controller is mounted"
                ),
            };
        }
        Cgroups::v1_at(cpu, memory, pids, root_name)
    }

    /// The v2 layout under `own` (the agent's cgroup directory, or a fake tree in tests).
    pub(crate) fn v2_at(own: &Path, root_name: &str) -> Cgroups {
        let base = own.join(root_name);
        let prepared = (|| -> Result<()> {
            fs::create_dir_all(&base).map_err(cg_err("creating", &base))?;
            // Enable the controllers from the agent's cgroup down to the instances' parent.
            let mut dir = own.to_owned();
            let mut chain = vec![dir.clone()];
            for c in Path::new(root_name).components() {
                dir.push(c);
                chain.push(dir.clone());
            }
            for dir in chain {
                write_control(&dir, "cgroup.subtree_control", "+cpu +memory +pids")?;
            }
            Ok(())
        })();
        match prepared {
            Ok(()) => Cgroups {
                layout: Some(Layout::V2 { base: base.clone() }),
                enforced: true,
                note: format!("cgroup v2 at {}", base.display()),
            },
            Err(e) => Cgroups {
                layout: None,
                enforced: false,
                note: format!(
                    "cgroup v2 has cpu and memory but they cannot be delegated below {} ({}: {}); \
                     run the agent in a leaf cgroup with write access to its parent",
                    own.display(),
                    e,
                    std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            },
        }
    }

    /// The v1 layout with the given controller directories of the agent's own cgroups.
    pub(crate) fn v1_at(
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        root_name: &str,
    ) -> Cgroups {
        let mut missing = Vec::new();
        let mut problems = Vec::new();
        let mut prepare = |name: &'static str, own: Option<PathBuf>| -> Option<PathBuf> {
            let Some(own) = own else {
                missing.push(name);
                return None;
            };
            let base = own.join(root_name);
            match fs::create_dir_all(&base) {
                Ok(()) => Some(base),
                Err(e) => {
                    problems.push(format!("cannot create {}: {e}", base.display()));
                    None
                }
            }
        };
        let cpu = prepare("cpu", cpu);
        let memory = prepare("memory", memory);
        let pids = prepare("pids", pids);
        let enforced = cpu.is_some() && memory.is_some();
        let found: Vec<&str> = [("cpu", &cpu), ("memory", &memory), ("pids", &pids)]
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(n, _)| *n)
            .collect();
        let mut note = format!("cgroup v1 with {}", found.join(", "));
        if !missing.is_empty() {
            note.push_str(&format!("; not mounted: {}", missing.join(", ")));
        }
        if !problems.is_empty() {
            note.push_str(&format!("; {}", problems.join("; ")));
        }
        let layout = (cpu.is_some() || memory.is_some() || pids.is_some()).then_some(Layout::V1 {
            cpu,
            memory,
            pids,
        });
        Cgroups {
            layout,
            enforced,
            note,
        }
    }

    /// The directories holding this agent's instance cgroups (`<own>/<root name>`).
    pub(crate) fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            None => Vec::new(),
            Some(Layout::V2 { base }) => vec![base.clone()],
            Some(Layout::V1 { cpu, memory, pids }) => {
                [cpu, memory, pids].into_iter().flatten().cloned().collect()
            }
        }
    }

    /// Whether CPU and memory limits are enforced, and a note saying what is used or missing.
    pub(crate) fn limits_enforced(&self) -> (bool, String) {
        (self.enforced, self.note.clone())
    }

    /// Where an instance's cgroups are (whether or not they exist).
    pub(crate) fn paths_for(&self, instance: &str) -> CgroupPaths {
        let at = |base: &Option<PathBuf>| base.as_ref().map(|b| b.join(instance));
        match &self.layout {
            None => CgroupPaths::default(),
            Some(Layout::V2 { base }) => CgroupPaths {
                v2: Some(base.join(instance)),
                ..CgroupPaths::default()
            },
            Some(Layout::V1 { cpu, memory, pids }) => CgroupPaths {
                cpu: at(cpu),
                memory: at(memory),
                pids: at(pids),
                ..CgroupPaths::default()
            },
        }
    }

    /// Names of the instance cgroups that exist under the base directories.
    pub(crate) fn existing_instances(&self) -> BTreeSet<String> {
        self.base_dirs()
            .iter()
            .filter_map(|base| fs::read_dir(base).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Creates the instance's cgroups and writes its limits. Without controllers, returns empty
    /// paths (the workload then runs unconfined).
    pub(crate) fn create(&self, instance: &str, limits: &Limits) -> Result<CgroupPaths> {
        let mut paths = CgroupPaths::default();
        match &self.layout {
            None => {}
            Some(Layout::V2 { base }) => {
                let dir = base.join(instance);
                fs::create_dir_all(&dir).map_err(cg_err("creating", &dir))?;
                write_control(&dir, "cpu.max", &v2_cpu_max(limits.cpu_millis))?;
                write_control(&dir, "memory.max", &v2_max(mib_to_bytes(limits.memory_mib)))?;
                write_control_if_present(&dir, "memory.swap.max", "0")?;
                write_control(&dir, "pids.max", &v2_max(u64::from(limits.pids)))?;
                paths.v2 = Some(dir);
            }
            Some(Layout::V1 { cpu, memory, pids }) => {
                if let Some(base) = cpu {
                    let dir = base.join(instance);
                    fs::create_dir_all(&dir).map_err(cg_err("creating", &dir))?;
                    write_control(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    let quota = match limits.cpu_millis {
                        0 => "-1".to_owned(),
                        m => (u64::from(m) * CPU_PERIOD_US / 1000).to_string(),
                    };
                    write_control(&dir, "cpu.cfs_quota_us", &quota)?;
                    paths.cpu = Some(dir);
                }
                if let Some(base) = memory {
                    let dir = base.join(instance);
                    fs::create_dir_all(&dir).map_err(cg_err("creating", &dir))?;
                    let limit = match mib_to_bytes(limits.memory_mib) {
                        0 => "-1".to_owned(),
                        b => b.to_string(),
                    };
                    // memsw must stay >= the memory limit at every step: lift it, set the
                    // memory limit, then cap memory+swap at the same value (no swap escape).
                    write_control_if_present(&dir, "memory.memsw.limit_in_bytes", "-1")?;
                    write_control(&dir, "memory.limit_in_bytes", &limit)?;
                    write_control_if_present(&dir, "memory.memsw.limit_in_bytes", &limit)?;
                    paths.memory = Some(dir);
                }
                if let Some(base) = pids {
                    let dir = base.join(instance);
                    fs::create_dir_all(&dir).map_err(cg_err("creating", &dir))?;
                    write_control(&dir, "pids.max", &v2_max(u64::from(limits.pids)))?;
                    paths.pids = Some(dir);
                }
            }
        }
        paths.oom_baseline = paths.oom_kills();
        Ok(paths)
    }
}

fn mib_to_bytes(mib: u64) -> u64 {
    mib.saturating_mul(1024 * 1024)
}

/// `max` for zero (no limit), the number otherwise.
fn v2_max(n: u64) -> String {
    if n == 0 {
        "max".to_owned()
    } else {
        n.to_string()
    }
}

fn v2_cpu_max(cpu_millis: u32) -> String {
    match cpu_millis {
        0 => format!("max {CPU_PERIOD_US}"),
        m => format!("{} {CPU_PERIOD_US}", u64::from(m) * CPU_PERIOD_US / 1000),
    }
}

/// Reads `key value` lines (as in `memory.events` or `memory.oom_control`).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

impl CgroupPaths {
    /// Every cgroup directory of the instance.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        [&self.v2, &self.cpu, &self.memory, &self.pids]
            .into_iter()
            .filter_map(|p| p.as_deref())
    }

    /// Whether the instance has any cgroup (if not, only its process group can be tracked).
    pub fn is_tracked(&self) -> bool {
        self.dirs().next().is_some()
    }

    /// Opens `cgroup.procs` of every cgroup for writing, in the parent, so that the child can
    /// enter them between fork and exec by writing `0` (meaning "myself"), without allocating.
    pub(crate) fn open_procs(&self) -> Result<Vec<File>> {
        self.dirs()
            .map(|d| {
                let path = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(cg_err("opening", &path))
            })
            .collect()
    }

    /// The pids in any of the instance's cgroups (a missing cgroup has none).
    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .filter(|&p| p != 0)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// OOM kills counted in the memory cgroup (v2 `memory.events`, v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        if let Some(dir) = &self.v2 {
            return read_keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0);
        }
        if let Some(dir) = &self.memory {
            return read_keyed(&dir.join("memory.oom_control"), "oom_kill").unwrap_or(0);
        }
        0
    }

    /// Whether the OOM killer killed something in this cgroup since it was set up.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > self.oom_baseline
    }

    /// Sends `signal` to every process in the cgroups; for SIGKILL on v2 also writes
    /// `cgroup.kill`, which cannot race with forks.
    pub(crate) fn signal_all(&self, signal: Signal) {
        if signal == Signal::SIGKILL
            && let Some(dir) = &self.v2
        {
            let _ = write_control_if_present(dir, "cgroup.kill", "1");
        }
        for pid in self.procs() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Removes the cgroups (they must be empty). Missing ones are fine.
    pub(crate) fn remove(&self) -> Result<()> {
        for dir in self.dirs() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(cg_err("removing", dir)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpuacct
28 25 0:26 /docker/abc /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
";
    const SELF_CGROUP: &str = "4:memory:/docker/abc/agent\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_controller_directories_are_found_under_the_agents_own_cgroup() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let own = parse_self_cgroup(SELF_CGROUP);
        let memory = mounts
            .iter()
            .find(|m| m.super_options.iter().any(|o| o == "memory"))
            .unwrap();
        let (_, path) = own
            .iter()
            .find(|(c, _)| c.contains(&"memory".to_owned()))
            .unwrap();
        assert_eq!(
            own_dir(memory, path),
            Path::new("/sys/fs/cgroup/memory/agent")
        );
        let cpu = mounts
            .iter()
            .find(|m| m.super_options.iter().any(|o| o == "cpu"))
            .unwrap();
        assert_eq!(own_dir(cpu, "/"), Path::new("/sys/fs/cgroup/cpu"));
        assert!(mounts.iter().any(|m| m.fs_type == "cgroup2"));
        assert!(own.iter().any(|(c, p)| c.is_empty() && p == "/"));
    }

    /// The test machine has no v2 cpu/memory, so the v2 paths run against a fake tree.
    #[test]
    fn v2_limits_and_delegation_are_written_to_a_fake_cgroup_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path();
        let cgroups = Cgroups::v2_at(own, "hanul/node-a");
        assert!(
            cgroups.limits_enforced().0,
            "{:?}",
            cgroups.limits_enforced()
        );
        for dir in [own.to_owned(), own.join("hanul"), own.join("hanul/node-a")] {
            assert_eq!(
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
                "+cpu +memory +pids",
                "controllers enabled in {}",
                dir.display()
            );
        }
        // A swap file present in the (fake) cgroup is capped at zero.
        let dir = own.join("hanul/node-a/i-1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.swap.max"), "max").unwrap();

        let limits = Limits {
            cpu_millis: 1500,
            memory_mib: 64,
            pids: 32,
        };
        let paths = cgroups.create("i-1", &limits).unwrap();
        assert_eq!(paths.v2.as_deref(), Some(dir.as_path()));
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("memory.max"), (64 * 1024 * 1024).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "32");

        // OOM kills come from memory.events, counted from the baseline at creation.
        assert!(!paths.oom_killed());
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(paths.oom_killed());

        fs::write(dir.join("cgroup.procs"), "12\n7\n").unwrap();
        assert_eq!(paths.procs(), vec![7, 12]);
        assert_eq!(paths.open_procs().unwrap().len(), 1);

        assert_eq!(cgroups.paths_for("i-1").v2, paths.v2);
        assert_eq!(
            cgroups.existing_instances().into_iter().collect::<Vec<_>>(),
            vec!["i-1".to_owned()]
        );

        let unlimited = cgroups.create("i-2", &Limits::default()).unwrap();
        let dir2 = unlimited.v2.unwrap();
        assert_eq!(
            fs::read_to_string(dir2.join("cpu.max")).unwrap(),
            "max 100000"
        );
        assert_eq!(fs::read_to_string(dir2.join("memory.max")).unwrap(), "max");
        assert_eq!(fs::read_to_string(dir2.join("pids.max")).unwrap(), "max");
    }

    #[test]
    fn v1_limits_are_written_to_a_fake_cgroup_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let own = |c: &str| Some(tmp.path().join(c));
        let cgroups = Cgroups::v1_at(own("cpu"), own("memory"), None, "hanul/n");
        let (enforced, note) = cgroups.limits_enforced();
        assert!(enforced, "{note}");
        assert!(note.contains("not mounted: pids"), "{note}");
        let limits = Limits {
            cpu_millis: 250,
            memory_mib: 1,
            pids: 10,
        };
        let paths = cgroups.create("i", &limits).unwrap();
        let cpu = paths.cpu.clone().unwrap();
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "25000"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
        let mem = paths.memory.clone().unwrap();
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "1048576"
        );
        assert!(paths.pids.is_none());
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(paths.oom_killed());
    }

    #[test]
    fn a_machine_without_controllers_runs_unconfined_and_says_why() {
        let cgroups = Cgroups::v1_at(None, None, None, "hanul/n");
        let (enforced, note) = cgroups.limits_enforced();
        assert!(!enforced);
        assert!(note.contains("not mounted: cpu, memory, pids"), "{note}");
        let paths = cgroups.create("i", &Limits::default()).unwrap();
        assert!(!paths.is_tracked());
    }
}
