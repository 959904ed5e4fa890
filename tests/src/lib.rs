//! Harness for end-to-end tests: starts the real `hanul` binary as separate processes on
//! 127.0.0.1 with temp data dirs, and drives it with the real CLI.
//!
//! The binary is `$HANUL_BIN` when set, else `target/debug/hanul`, built once per test process
//! with `cargo build -p hanul` (a no-op when it is fresh).

pub mod pg;

use anyhow::{Context, bail};
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The `hanul` binary under test.
pub fn hanul_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HANUL_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "hanul", "--bin", "hanul"])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p hanul failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug/hanul")
    })
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with the last thing seen.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(nothing yet)");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(seen) => last = seen,
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `hanul server` process with its own temp data dir.
pub struct ServerProcess {
    pub data_dir: tempfile::TempDir,
    pub child: Child,
    pub url: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts a server on a free port with the sled store and waits until it serves.
    pub fn start() -> anyhow::Result<ServerProcess> {
        let data_dir = tempfile::tempdir()?;
        Self::start_in(data_dir, &[])
    }

    /// Starts (or restarts) a server in an existing data dir.
    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> anyhow::Result<ServerProcess> {
        let endpoint = data_dir.path().join("endpoint");
        let _ = std::fs::remove_file(&endpoint);
        let log = data_dir
            .path()
            .join(format!("server-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(hanul_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning hanul server")?;
        let mut server = ServerProcess {
            data_dir,
            child,
            url: String::new(),
            log,
        };
        let url = poll(
            Duration::from_secs(30),
            "the server's endpoint file",
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    return Err(format!(
                        "server exited: {status}; log: {}",
                        server.log_text()
                    ));
                }
                Ok(std::fs::read_to_string(&endpoint)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()))
            },
        )?;
        server.url = url;
        Ok(server)
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir.path().join("admin.token")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        run_cli(&self.url, Some(&self.token_file()), args, stdin)
    }

    /// `hanul get TARGET -o json`, parsed; the CLI's stderr when it fails.
    pub fn get_json(&self, target: &str) -> Result<serde_json::Value, String> {
        let out = self.cli(&["get", target, "-o", "json"]);
        if out.code != 0 {
            return Err(out.stderr);
        }
        serde_json::from_str(&out.stdout).map_err(|e| e.to_string())
    }

    /// Waits until node `name` reports `Ready=True`.
    pub fn wait_node_ready(&self, name: &str, timeout: Duration) {
        poll(timeout, &format!("node {name} to be Ready"), || {
            let v = self.get_json(&format!("node/{name}"))?;
            Ok(v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(()))
        })
        .unwrap();
    }

    /// A gRPC client with the admin token.
    pub async fn client(&self) -> anyhow::Result<hanul_proto::Client> {
        Ok(hanul_proto::Client::connect(&self.url, &self.admin_token()).await?)
    }

    /// SIGKILLs the server and returns its data dir for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        dir
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> CliOutput {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `hanul --server URL [--token-file F] ARGS`, with an empty config path so that no
/// user config interferes.
pub fn run_cli(
    url: &str,
    token_file: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> CliOutput {
    let mut cmd = Command::new(hanul_bin());
    cmd.arg("--server").arg(url);
    if let Some(t) = token_file {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args)
        .env("HANUL_CONFIG", "/nonexistent/hanul-test-config.json")
        .env_remove("HANUL_TOKEN")
        .env_remove("HANUL_SERVER")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning hanul");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input.as_bytes()).expect("writing stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("waiting for hanul");
    CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Writes `text` to a file in `dir` and returns its path as a string.
pub fn write_manifest(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing manifest");
    p.to_string_lossy().into_owned()
}

/// A `hanul agent` process joined to a server, with its own temp data dir.
pub struct AgentProcess {
    pub name: String,
    pub data_dir: tempfile::TempDir,
    pub child: Child,
    log: PathBuf,
    /// Set by [`AgentProcess::kill`]: the workloads are to be re-adopted by a new agent.
    keep_workloads: bool,
}

impl AgentProcess {
    /// Starts an agent named `name` in `zone`, offering `cpus` vCPUs and `memory_mib` MiB.
    pub fn start(
        server: &ServerProcess,
        name: &str,
        zone: &str,
        cpus: u32,
        memory_mib: u64,
    ) -> anyhow::Result<AgentProcess> {
        Self::start_in(server, name, zone, cpus, memory_mib, Self::data_dir()?)
    }

    /// A fresh data directory for an agent. Instances run as `nobody` and DB members as
    /// `postgres`: their directories under it must be reachable.
    pub fn data_dir() -> anyhow::Result<tempfile::TempDir> {
        let data_dir = tempfile::tempdir()?;
        std::fs::set_permissions(
            data_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        Ok(data_dir)
    }

    /// The agent's host port range: 100 ports of its own, so that tests running at once and
    /// agents on one machine do not race for the same ports.
    pub fn port_range(name: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (std::process::id(), name).hash(&mut h);
        let low = 20_000 + (h.finish() % 300) * 100;
        format!("{low}-{}", low + 99)
    }

    /// Starts (or restarts) an agent in an existing data dir.
    pub fn start_in(
        server: &ServerProcess,
        name: &str,
        zone: &str,
        cpus: u32,
        memory_mib: u64,
        data_dir: tempfile::TempDir,
    ) -> anyhow::Result<AgentProcess> {
        Self::start_with(server, name, zone, cpus, memory_mib, data_dir, &[])
    }

    /// [`AgentProcess::start_in`] with more arguments for `hanul agent`.
    pub fn start_with(
        server: &ServerProcess,
        name: &str,
        zone: &str,
        cpus: u32,
        memory_mib: u64,
        data_dir: tempfile::TempDir,
        extra: &[String],
    ) -> anyhow::Result<AgentProcess> {
        let log = data_dir.path().join("agent.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(hanul_bin())
            .args(["agent", "--server", &server.url, "--join-token-file"])
            .arg(server.data_dir.path().join("join.token"))
            .args(["--name", name, "--zone", zone, "--heartbeat", "500ms"])
            .args([
                "--cpus",
                &cpus.to_string(),
                "--memory-mib",
                &memory_mib.to_string(),
            ])
            .args([
                "--port-range",
                &Self::port_range(name),
                "--stop-grace",
                "3s",
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning hanul agent")?;
        Ok(AgentProcess {
            name: name.into(),
            data_dir,
            child,
            log,
            keep_workloads: false,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the agent (its workloads keep running) and returns its data dir.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_workloads = true;
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for AgentProcess {
    /// Kills the agent, then what its instances left running (a killed agent leaves its
    /// workloads running by design) and their cgroups, so that tests leave nothing behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_workloads {
            kill_node_leftovers(&self.name);
        }
    }
}

/// Removes the nftables table of `node`'s DB endpoints (`hanul_db_<node>`, as
/// `hanul_agent::db::kernel::table_name` names it): a SIGKILLed agent leaves it behind (its
/// rules expire, its fence chains stay). Nothing happens without nft or the table.
pub fn remove_db_endpoints_table(node: &str) {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", &format!("hanul_db_{node}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills the process groups of the instances of `node`, removes their cgroups and the node's
/// DB endpoints' nftables table.
pub fn kill_node_leftovers(node: &str) {
    remove_db_endpoints_table(node);
    for pid in processes_with_env(&[("HANUL_NODE", node)]) {
        // Each instance is its own session and process group, led by its main process.
        // A vanished pid is harmless.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for m in mounts.flatten() {
        remove_cgroups_named(&m.path(), &format!("hanul/{node}"), 0);
    }
}

/// Removes (deepest first) cgroup directories whose path ends with `suffix`, searching a few
/// levels down from `dir`.
fn remove_cgroups_named(dir: &Path, suffix: &str, depth: usize) {
    if depth > 6 {
        return;
    }
    if dir.ends_with(suffix) {
        remove_cgroup_tree(dir);
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups_named(&e.path(), suffix, depth + 1);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // A cgroup goes once its processes are gone; they were just killed.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the processes whose environment has `key=value` (instances carry
/// `HANUL_INSTANCE_ID` and `HANUL_NODE`).
pub fn processes_with_env(pairs: &[(&str, &str)]) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        // A zombie has an empty environment; it is not running.
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if pairs.iter().all(|(k, v)| {
            let want = format!("{k}={v}");
            vars.contains(&want.as_bytes())
        }) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// An HTTP response as [`request`] read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The `name=value` of the cookie `name` that the response sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            (k.eq_ignore_ascii_case("set-cookie") && v.starts_with(&format!("{name}=")))
                .then(|| v.split(';').next().unwrap().to_owned())
        })
    }
}

/// One HTTP/1.1 GET to 127.0.0.1:`port` with `Connection: close`.
pub fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: web.example\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or(format!("no head: {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("no status: {head:?}"))?;
    Ok(Reply {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    })
}
