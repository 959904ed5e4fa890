//! One PostgreSQL member: a data directory owned by the `postgres` user, a configuration that
//! hanul writes (`hanul.conf`, included from `postgresql.conf`), a Unix socket directory of its
//! own and a TCP port.
//!
//! ```text
//!  ROOT/pgdata/            the data directory (0700, postgres)
//!  ROOT/pgdata/hanul.conf  port, addresses, replication and safety settings
//!  ROOT/pgdata/hanul-params.conf  the cluster's parameter group, included before hanul.conf
//!                          (hanul's own settings win); what PostgreSQL refuses is left out
//!  ROOT/run/               the member's socket directory (0700, postgres)
//! ```
//!
//! Local connections (the agent's own, through the socket, as `postgres`) are trusted: only
//! `postgres` and root can open the socket directory. TCP connections need the password
//! (SCRAM-SHA-256). `restart_after_crash = off`: a crashed member is not restarted by
//! postgres itself; the agent decides (a writer that crashed may have lost its role).

use nix::unistd::{Gid, Uid, User, chown};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Where Debian puts PostgreSQL 15's server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The environment variable that overrides [`DEFAULT_BIN_DIR`].
pub const BIN_DIR_ENV: &str = "HANUL_PG_BIN";
/// The operating system user members run as.
pub const OS_USER: &str = "postgres";
/// The parameter group's file in the data directory.
pub const PARAMETERS_FILE: &str = "hanul-params.conf";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL binaries not found in {0} (set {BIN_DIR_ENV})")]
    NoBinaries(PathBuf),
    #[error("no user {OS_USER:?} on this node")]
    NoUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot restore into {0}: the directory is not empty (a restore makes a new cluster)")]
    RestoreTargetNotEmpty(PathBuf),
    #[error("cannot back up into {0}: it exists already")]
    BackupExists(PathBuf),
    #[error("{0} is not a base backup (it has no PG_VERSION and no {ENCRYPTED_BASE})", ENCRYPTED_BASE = crate::backup::ENCRYPTED_BASE)]
    NotABackup(PathBuf),
    #[error("{0} is an encrypted base backup and no key to decrypt it was given")]
    NoBackupKey(PathBuf),
    #[error("reading the backup manifest {path}: {reason}")]
    BackupManifest { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What [`Exec::output`] returns.
pub type ExecFuture = Pin<Box<dyn Future<Output = std::io::Result<Output>> + Send>>;

/// How the member's helper programs (`initdb`, `psql`, `pg_ctl`, ...) are run and waited for.
/// [`TokioExec`] by default. A process that reaps every child itself (the agent is a child
/// subreaper with a thread in `waitpid(-1)`) cannot wait on a child with tokio: it supplies an
/// `Exec` that goes through its own reaper.
pub trait Exec: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `cmd` to its end, collecting stdout and stderr.
    fn output(&self, cmd: Command) -> ExecFuture;
}

/// Runs helpers as tokio child processes (killed if the future is dropped).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioExec;

impl Exec for TokioExec {
    fn output(&self, cmd: Command) -> ExecFuture {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        Box::pin(async move { cmd.output().await })
    }
}

/// How PostgreSQL is shut down (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Clients are disconnected, the WAL is flushed and sent to the standbys, a shutdown
    /// checkpoint is written: the member's data is complete (a switchover's old writer).
    Fast,
    /// Every process quits at once, no checkpoint: the next start runs crash recovery (a
    /// writer that fences itself must stop taking writes now).
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What a running member says about itself ([`Member::observe`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// `pg_is_in_recovery()`: a standby.
    pub in_recovery: bool,
    /// The timeline it writes (writer) or receives / last replayed (standby).
    pub timeline: u32,
    /// The writer's `pg_current_wal_flush_lsn()`; 0 on a standby.
    pub flush_lsn: u64,
    /// A standby's `pg_last_wal_receive_lsn()` (kept after its WAL receiver stops); None when
    /// it never streamed since it started.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// The WAL receiver's status (`streaming`, `waiting`, ...); empty when none runs.
    pub wal_receiver: String,
    /// How far behind the writer a standby's replay is, in seconds; 0 when it replayed all it
    /// received.
    pub lag_seconds: f64,
    /// The writer's standbys that stream (`pg_stat_replication`), by application_name.
    pub streaming_standbys: Vec<String>,
    /// The `synchronous_standby_names` in effect.
    pub synchronous_standby_names: String,
    /// PostgreSQL's verdict on [`PARAMETERS_FILE`] (`pg_file_settings` with `pg_settings`):
    /// the static (`postmaster`) parameters whose value waits for a restart.
    pub pending_restart: Vec<String>,
    /// The parameters of the file PostgreSQL cannot apply (bad value, unknown name).
    pub refused_parameters: Vec<String>,
    /// Clients connected (`pg_stat_activity`'s client backends).
    pub connections: u64,
    /// Transactions committed and rolled back since the statistics began (all databases).
    pub commits: u64,
    pub rollbacks: u64,
    /// The databases' size on disk, in bytes.
    pub storage_bytes: u64,
}

impl Observation {
    /// A standby whose WAL receiver streams from its upstream.
    pub fn streaming(&self) -> bool {
        self.wal_receiver == "streaming"
    }

    /// The WAL a standby holds: what it received, else what it replayed.
    pub fn received(&self) -> u64 {
        self.receive_lsn.or(self.replay_lsn).unwrap_or(0)
    }
}

/// One query for [`Observation`]: branches that only work on a writer (or a standby) are in
/// `case`s, which PostgreSQL evaluates lazily for volatile functions.
const OBSERVE_SQL: &str = "select pg_is_in_recovery(), \
    case when pg_is_in_recovery() \
      then coalesce((select received_tli from pg_stat_wal_receiver), \
                    (select timeline_id from pg_control_checkpoint())) \
      else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end, \
    case when pg_is_in_recovery() then '' else pg_current_wal_flush_lsn()::text end, \
    coalesce(pg_last_wal_receive_lsn()::text, ''), \
    coalesce(pg_last_wal_replay_lsn()::text, ''), \
    coalesce((select status from pg_stat_wal_receiver), ''), \
    case when not pg_is_in_recovery() \
           or pg_last_wal_receive_lsn() is not distinct from pg_last_wal_replay_lsn() then 0 \
      else coalesce(extract(epoch from now() - pg_last_xact_replay_timestamp()), 0) end, \
    coalesce((select string_agg(application_name, ',' order by application_name) \
              from pg_stat_replication where state = 'streaming'), ''), \
    current_setting('synchronous_standby_names'), \
    coalesce((select string_agg(f.name || ':' || case when f.applied then 'a' \
                when s.context = 'postmaster' and s.name is not null then 'r' \
                when f.error is null then 'a' else 'e' end, ',' order by f.name) \
              from pg_file_settings f left join pg_settings s on s.name = f.name \
              where f.sourcefile like '%/hanul-params.conf'), ''), \
    (select count(*) from pg_stat_activity where backend_type = 'client backend'), \
    (select coalesce(sum(xact_commit), 0) from pg_stat_database), \
    (select coalesce(sum(xact_rollback), 0) from pg_stat_database), \
    (select coalesce(sum(pg_database_size(oid)), 0) from pg_database where datallowconn)";

pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

fn parse_observation(row: &str) -> Option<Observation> {
    let f: Vec<&str> = row.trim_end_matches('\n').split('|').collect();
    if f.len() != 14 {
        return None;
    }
    // name:verdict,... — a applied (or overridden), r waits for a restart, e refused.
    let verdict = |v: &str| -> Vec<String> {
        f[9].split(',')
            .filter_map(|p| p.rsplit_once(':'))
            .filter(|(_, x)| *x == v)
            .map(|(n, _)| n.to_string())
            .collect()
    };
    Some(Observation {
        in_recovery: f[0] == "t",
        timeline: f[1].trim().parse().unwrap_or(0),
        flush_lsn: parse_lsn(f[2]).unwrap_or(0),
        receive_lsn: parse_lsn(f[3]),
        replay_lsn: parse_lsn(f[4]),
        wal_receiver: f[5].to_string(),
        lag_seconds: f[6].trim().parse().unwrap_or(0.0),
        streaming_standbys: f[7]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        synchronous_standby_names: f[8].to_string(),
        pending_restart: verdict("r"),
        refused_parameters: verdict("e"),
        connections: f[10].trim().parse().unwrap_or(0),
        commits: f[11].trim().parse().unwrap_or(0),
        rollbacks: f[12].trim().parse().unwrap_or(0),
        storage_bytes: f[13].trim().parse().unwrap_or(0),
    })
}

/// The parameter file's text: `name = 'value'` lines (strings quoted as postgresql.conf
/// reads them: quotes doubled, backslashes escaped).
fn parameters_text(parameters: &BTreeMap<String, String>) -> String {
    let mut text = String::from(
        "# Written by hanul from the cluster's DB parameter group; changes here are overwritten.\n",
    );
    for (name, value) in parameters {
        let value = value.replace('\\', "\\\\").replace('\'', "''");
        text.push_str(&format!("{name} = '{value}'\n"));
    }
    text
}

/// The parameter a line of PostgreSQL's complaint about its configuration names:
/// `... unrecognized configuration parameter "foo" in file ...`, `invalid value for parameter
/// "work_mem": "x"`, `parameter "x" requires a Boolean value`.
fn complaint_about(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("parameter \"")?;
    rest.split_once('"').map(|(name, _)| name)
}

/// A log line without its prefix (time, pid, level).
fn postgres_message(line: &str) -> String {
    let text = ["FATAL:  ", "LOG:  ", "ERROR:  ", "DETAIL:  ", "HINT:  "]
        .iter()
        .find_map(|p| line.split_once(p).map(|(_, m)| m))
        .unwrap_or(line);
    text.trim().to_string()
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The PostgreSQL server binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `$HANUL_PG_BIN`, else [`DEFAULT_BIN_DIR`]; fails when `initdb` is not there.
    pub fn locate() -> Result<Binaries> {
        let dir = std::env::var_os(BIN_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        if !dir.join("initdb").is_file() {
            return Err(Error::NoBinaries(dir));
        }
        Ok(Binaries { dir })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// Where a standby streams from, and the name it goes by there (its `application_name`,
/// which `synchronous_standby_names` lists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub application_name: String,
}

impl Upstream {
    fn conninfo(&self) -> String {
        // Values are single-quoted in conninfo; quotes and backslashes escaped.
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} password={} application_name={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.password),
            q(&self.application_name)
        )
    }
}

/// One member's files and addresses.
#[derive(Clone, Debug)]
pub struct Member {
    pub(crate) bin: Binaries,
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The addresses postgres listens on (`listen_addresses`).
    pub listen: String,
    /// The database superuser (RDS's master user).
    pub superuser: String,
    /// A standby's upstream; None for a writer.
    pub upstream: Option<Upstream>,
    /// A writer's `synchronous_standby_names` (`ANY 1 (m2, m3)`); empty: asynchronous.
    pub synchronous_standby_names: String,
    /// A standby that stopped streaming (a failover vote): `primary_conninfo` is empty while
    /// it stays a standby (`standby.signal` kept).
    pub detached: bool,
    /// Whether a standby serves clients' reads. PostgreSQL itself always runs with
    /// `hot_standby = on` (the agent queries its standbys through the socket, for their WAL
    /// positions and votes); an unreadable standby refuses clients' TCP connections in
    /// `pg_hba.conf` instead, until it is promoted.
    pub readable: bool,
    /// Where the member archives its WAL (`archive_mode = always`, see [`crate::backup`]);
    /// None: no archiving. Static: a running member applies a change at its next start.
    pub archive_dir: Option<PathBuf>,
    /// The recovery a restored member runs at its next start ([`Member::restore_from`]);
    /// None once [`Member::finish_restore`] ran.
    pub recovery: Option<crate::backup::RestoreTarget>,
    /// The key this member encrypts its archived WAL and its base backups with; None: they
    /// are stored in plain text (see [`crate::backup`]).
    pub backup_key: Option<crate::backup::BackupKey>,
    /// The key a restore's snapshot and archived WAL were encrypted with (the source
    /// cluster's); None: they are plain.
    pub restore_key: Option<crate::backup::BackupKey>,
    pub(crate) owner: Option<(Uid, Gid)>,
    exec: Arc<dyn Exec>,
}

impl Member {
    /// A member under `root` (created if missing) listening on `port`. When the agent runs as
    /// root the files go to, and the processes run as, the `postgres` user.
    pub fn new(bin: Binaries, root: &Path, port: u16, superuser: &str) -> Result<Member> {
        let owner = if Uid::effective().is_root() {
            let u = User::from_name(OS_USER)
                .map_err(|e| io("looking up the postgres user")(e.into()))?
                .ok_or(Error::NoUser)?;
            Some((u.uid, u.gid))
        } else {
            None
        };
        Ok(Member {
            bin,
            root: root.to_owned(),
            data_dir: root.join("pgdata"),
            socket_dir: root.join("run"),
            port,
            listen: "127.0.0.1".into(),
            superuser: superuser.into(),
            upstream: None,
            synchronous_standby_names: String::new(),
            detached: false,
            readable: true,
            archive_dir: None,
            recovery: None,
            backup_key: None,
            restore_key: None,
            owner,
            exec: Arc::new(TokioExec),
        })
    }

    /// Runs the member's helper programs with `exec` (see [`Exec`]).
    pub fn with_exec(mut self, exec: Arc<dyn Exec>) -> Member {
        self.exec = exec;
        self
    }

    /// Whether the data directory holds a cluster already.
    pub fn initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    pub(crate) fn private_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
        if let Some((uid, gid)) = self.owner {
            chown(dir, Some(uid), Some(gid))
                .map_err(|e| io(format!("chown {}", dir.display()))(e.into()))?;
        }
        Ok(())
    }

    /// A command run as the member's user.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.path(program));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        c
    }

    pub(crate) async fn run(&self, c: Command, what: &str) -> Result<String> {
        let out = self.run_output(c, what).await?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: what.into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `c` to its end; its status and output, whatever the status.
    pub(crate) async fn run_output(&self, c: Command, what: &str) -> Result<std::process::Output> {
        self.exec
            .output(c)
            .await
            .map_err(io(format!("running {what}")))
    }

    /// Creates the cluster (`initdb`) with `password` for the superuser, and writes hanul's
    /// configuration. Does nothing to a data directory that holds a cluster already but
    /// rewrite the configuration.
    pub async fn init(&self, password: &str) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io("creating the member's root"))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod the member's root"))?;
        self.private_dir(&self.socket_dir)?;
        if !self.initialized() {
            self.private_dir(&self.data_dir)?;
            // The password reaches initdb through a file only the member's user can read,
            // removed right after.
            let pwfile = self.socket_dir.join(".pwfile");
            std::fs::write(&pwfile, password).map_err(io("writing the password file"))?;
            std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
                .map_err(io("chmod the password file"))?;
            if let Some((uid, gid)) = self.owner {
                chown(&pwfile, Some(uid), Some(gid))
                    .map_err(|e| io("chown the password file")(e.into()))?;
            }
            let mut c = self.command("initdb");
            c.arg("-D")
                .arg(&self.data_dir)
                .args(["-U", &self.superuser, "--pwfile"])
                .arg(&pwfile)
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--data-checksums",
                ]);
            let result = self.run(c, "initdb").await;
            let _ = std::fs::remove_file(&pwfile);
            result?;
        }
        self.configure()
    }

    /// Makes this member a standby of `upstream`: a base backup of it (streaming the WAL it
    /// needs), then hanul's configuration with `primary_conninfo` and `standby.signal`. The
    /// data directory must not hold a cluster.
    pub async fn clone_from(&mut self, upstream: Upstream) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io("creating the member's root"))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod the member's root"))?;
        self.private_dir(&self.socket_dir)?;
        self.private_dir(&self.data_dir)?;
        let mut c = self.command("pg_basebackup");
        c.env("PGPASSWORD", &upstream.password)
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-h",
                &upstream.host,
                "-p",
                &upstream.port.to_string(),
                "-U",
                &upstream.user,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ]);
        self.run(c, "pg_basebackup").await?;
        self.upstream = Some(upstream);
        self.configure()
    }

    /// Writes `hanul.conf` and `pg_hba.conf`, includes the former once, and makes
    /// `standby.signal` say whether the member is a standby. Not while a promotion runs:
    /// postgres removes the signal itself then.
    pub fn configure(&self) -> Result<()> {
        let signal = self.data_dir.join("standby.signal");
        match &self.upstream {
            Some(_) => self.write_owned(&signal, "")?,
            None if signal.exists() => {
                std::fs::remove_file(&signal).map_err(io("removing standby.signal"))?
            }
            None => {}
        }
        self.write_conf()
    }

    /// Writes `hanul.conf` and `pg_hba.conf`, and includes the former once.
    ///
    /// `wal_receiver_status_interval = 1`: a standby that has all the WAL and receives none
    /// (commits waiting for a synchronous standby write none) tells the writer so only this
    /// often, and a commit waiting when the writer's synchronous set changes is released by
    /// that message: PostgreSQL's default of 10 s would hold such a commit up to 10 s.
    pub(crate) fn write_conf(&self) -> Result<()> {
        let mut conf = format!(
            "# Written by hanul; changes here are overwritten.\n\
             listen_addresses = '{listen}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             wal_log_hints = on\n\
             restart_after_crash = off\n\
             wal_retrieve_retry_interval = 100ms\n\
             wal_keep_size = 1024\n\
             wal_receiver_status_interval = 1\n\
             password_encryption = scram-sha-256\n\
             logging_collector = off\n",
            listen = self.listen,
            port = self.port,
            socket = self.socket_dir.display(),
        );
        // postgresql.conf strings: quotes doubled, backslashes escaped.
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
        conf.push_str(&format!(
            "synchronous_standby_names = {}\n",
            quote(&self.synchronous_standby_names)
        ));
        let conninfo = self
            .upstream
            .as_ref()
            .filter(|_| !self.detached)
            .map(Upstream::conninfo);
        conf.push_str(&format!(
            "primary_conninfo = {}\n",
            quote(conninfo.as_deref().unwrap_or(""))
        ));
        // WAL archiving and a restore's recovery target (crate::backup).
        conf.push_str(&self.backup_settings()?);
        self.write_owned(&self.data_dir.join("hanul.conf"), &conf)?;
        // The parameter group first, hanul's settings last: the last setting wins.
        let main = self.data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).map_err(io("reading postgresql.conf"))?;
        let includes = [
            format!("include_if_exists = '{PARAMETERS_FILE}'"),
            "include_if_exists = 'hanul.conf'".to_string(),
        ];
        let ours = |l: &str| includes.iter().any(|i| l.trim() == i);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !tail.ends_with(&[includes[0].as_str(), includes[1].as_str()]) {
            let mut kept: String = text
                .lines()
                .filter(|l| !ours(l))
                .map(|l| format!("{l}\n"))
                .collect();
            kept.push_str(&format!("\n{}\n{}\n", includes[0], includes[1]));
            self.write_owned(&main, &kept)?;
        }
        // Clients' connections: refused on a standby that takes no reads.
        let clients = if self.upstream.is_some() && !self.readable {
            "reject"
        } else {
            "scram-sha-256"
        };
        let hba = format!(
            "# Written by hanul.\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 0.0.0.0/0 {clients}\n\
             host all all ::/0 {clients}\n\
             host replication all 0.0.0.0/0 scram-sha-256\n\
             host replication all ::/0 scram-sha-256\n"
        );
        self.write_owned(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    pub(crate) fn write_owned(&self, path: &Path, text: &str) -> Result<()> {
        std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", path.display())))?;
        if let Some((uid, gid)) = self.owner {
            chown(path, Some(uid), Some(gid))
                .map_err(|e| io(format!("chown {}", path.display()))(e.into()))?;
        }
        Ok(())
    }

    /// The command that runs the member in the foreground (the agent supervises it). Its
    /// output goes where the caller sends it.
    pub fn postgres(&self) -> tokio::process::Command {
        let mut c = self.command("postgres");
        c.arg("-D").arg(&self.data_dir);
        let mut c = tokio::process::Command::from(c);
        c.kill_on_drop(true);
        c
    }

    /// The argv of [`Member::postgres`], for a supervisor that spawns it itself.
    pub fn postgres_argv(&self) -> Vec<String> {
        vec![
            self.bin.path("postgres").to_string_lossy().into_owned(),
            "-D".into(),
            self.data_dir.to_string_lossy().into_owned(),
        ]
    }

    /// The environment of [`Member::postgres`] (nothing else is inherited).
    pub fn postgres_env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
        ]
    }

    /// Whether the member accepts connections (`pg_isready` on its socket).
    pub async fn ready(&self) -> bool {
        let mut c = self.command("pg_isready");
        c.arg("-q")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-t",
                "1",
                "-U",
                &self.superuser,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.exec.output(c).await.is_ok_and(|o| o.status.success())
    }

    /// Waits until [`Member::ready`], for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.ready().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes a stopped former writer a standby of `upstream` (the new writer, which must
    /// have run `CHECKPOINT` since its promotion) with `pg_rewind`: the WAL it wrote past
    /// the point where the timelines forked is undone. On an error the data directory is not
    /// fit to start: the caller rebuilds the member (`clone_from`), never starts it as it is.
    pub async fn rewind(&mut self, upstream: Upstream) -> Result<()> {
        let source = format!(
            "host={} port={} user={} dbname=postgres",
            upstream.host, upstream.port, upstream.user
        );
        let mut c = self.command("pg_rewind");
        c.env("PGPASSWORD", &upstream.password)
            .arg("-D")
            .arg(&self.data_dir)
            .arg(format!("--source-server={source}"));
        self.run(c, "pg_rewind").await?;
        // pg_rewind copied the source's configuration files: this member's come back.
        self.upstream = Some(upstream);
        self.configure()
    }

    /// Writes the parameter group's `parameters` to [`PARAMETERS_FILE`], leaving out those
    /// PostgreSQL refuses: the configuration is read as a start would (`postgres -C`), and a
    /// parameter named in its complaint is taken out, until it reads cleanly. So PostgreSQL
    /// never fails to start, nor ignores the whole file on a reload, because of the group.
    /// Returns whether the file changed (a running member then needs [`Member::reload`]) and
    /// the parameters refused, with PostgreSQL's words.
    pub async fn write_parameters(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<(bool, Vec<(String, String)>)> {
        let path = self.data_dir.join(PARAMETERS_FILE);
        let before = std::fs::read_to_string(&path).ok();
        let mut kept = parameters.clone();
        let mut refused = Vec::new();
        let text = loop {
            let text = parameters_text(&kept);
            self.write_owned(&path, &text)?;
            let mut c = self.command("postgres");
            c.arg("-D").arg(&self.data_dir).args(["-C", "port"]);
            let out = self
                .exec
                .output(c)
                .await
                .map_err(io("running postgres -C"))?;
            if out.status.success() {
                break text;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut named = Vec::new();
            for line in stderr.lines() {
                if let Some(name) = complaint_about(line)
                    && kept.contains_key(name)
                    && !named.iter().any(|(n, _)| n == name)
                {
                    named.push((name.to_string(), postgres_message(line)));
                }
            }
            if named.is_empty() {
                // A complaint that names none of the group's parameters: none is kept, so
                // that what PostgreSQL says is not about them.
                let why = stderr.trim().lines().last().unwrap_or("").to_string();
                refused.extend(kept.keys().map(|k| (k.clone(), postgres_message(&why))));
                kept.clear();
                let text = parameters_text(&kept);
                self.write_owned(&path, &text)?;
                break text;
            }
            for (name, why) in named {
                kept.remove(&name);
                refused.push((name, why));
            }
        };
        Ok((before.as_deref() != Some(text.as_str()), refused))
    }

    /// Tells a running member to read its configuration again (`pg_ctl reload`).
    pub async fn reload(&self) -> Result<()> {
        let mut c = self.command("pg_ctl");
        c.arg("reload").arg("-D").arg(&self.data_dir);
        self.run(c, "pg_ctl reload").await.map(drop)
    }

    /// Promotes a standby to writer without waiting (`pg_ctl promote -W`); poll
    /// [`Member::in_recovery`] for the end. The member's files then say writer too.
    pub async fn promote(&mut self) -> Result<()> {
        let mut c = self.command("pg_ctl");
        c.args(["promote", "-W", "-D"]).arg(&self.data_dir);
        self.run(c, "pg_ctl promote").await?;
        self.upstream = None;
        self.write_conf()
    }

    /// Whether the member is a standby (`pg_is_in_recovery()`).
    pub async fn in_recovery(&self) -> Result<bool> {
        Ok(self
            .query("postgres", "select pg_is_in_recovery()")
            .await?
            .trim()
            == "t")
    }

    /// Runs `sql` in `database` through the member's socket as the superuser; returns the
    /// rows, one a line, columns separated by `|`.
    pub async fn query(&self, database: &str, sql: &str) -> Result<String> {
        let mut c = self.psql(database);
        c.args(["-c", sql]);
        self.run(c, "psql").await
    }

    /// psql on the member's socket as the superuser, rows unaligned, stopping at the first
    /// error; the caller adds what it runs (`-c SQL`, `-f FILE`).
    pub(crate) fn psql(&self, database: &str) -> Command {
        let mut c = Command::new("psql");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(&self.root)
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.superuser,
                "-d",
                database,
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            // The agent's own writes (a database at bootstrap, a CHECKPOINT) never wait for a
            // synchronous standby: the writer may have none yet.
            .env("PGOPTIONS", "-c synchronous_commit=local")
            .stdin(Stdio::null());
        c
    }

    /// Commits a transaction with an xid on the writer without waiting for a synchronous
    /// standby, so that every streaming standby receives WAL and answers at once: a commit
    /// that waits when the synchronous set changes is released by the first answer of a
    /// standby now in it, not at that standby's next status interval (up to a second).
    pub async fn nudge_standbys(&self) -> Result<()> {
        self.query("postgres", "select txid_current()")
            .await
            .map(drop)
    }

    /// Stops the running member (`pg_ctl stop`) and waits until it is down (at most a minute).
    pub async fn stop(&self, mode: StopMode) -> Result<()> {
        let mut c = self.command("pg_ctl");
        c.args(["stop", "-w", "-t", "60", "-m", mode.as_str(), "-D"])
            .arg(&self.data_dir);
        self.run(c, "pg_ctl stop").await.map(drop)
    }

    /// What the running member is and where its WAL stands.
    pub async fn observe(&self) -> Result<Observation> {
        let row = self.query("postgres", OBSERVE_SQL).await?;
        parse_observation(&row).ok_or_else(|| Error::Failed {
            command: "psql (observe)".into(),
            status: "unexpected output".into(),
            stderr: row,
        })
    }

    /// A standby stops streaming from its upstream and stays a standby: `primary_conninfo`
    /// emptied, reload, then waits (at most `timeout`) until its WAL receiver is gone, so its
    /// WAL no longer grows. Returns what it holds then ([`Observation::received`]).
    pub async fn detach(&mut self, timeout: Duration) -> Result<Observation> {
        self.detached = true;
        self.write_conf()?;
        self.reload().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let o = self.observe().await?;
            if o.wal_receiver.is_empty() {
                return Ok(o);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Failed {
                    command: "detach".into(),
                    status: "timed out".into(),
                    stderr: format!("the WAL receiver is still {}", o.wal_receiver),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A running standby streams from `upstream` from now on (`primary_conninfo`, reload): a
    /// voter following the writer its vote elected, whose timeline it can follow.
    pub async fn repoint(&mut self, upstream: Upstream) -> Result<()> {
        self.upstream = Some(upstream);
        self.detached = false;
        self.configure()?;
        self.reload().await
    }

    /// Sets a running writer's `synchronous_standby_names` and reloads.
    pub async fn set_synchronous_standby_names(&mut self, names: &str) -> Result<()> {
        self.synchronous_standby_names = names.to_string();
        self.write_conf()?;
        self.reload().await
    }

    /// Waits until a promoted member leaves recovery (at most `timeout`); false if it did not.
    pub async fn wait_promoted(&self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.in_recovery().await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `CREATE DATABASE name` unless it exists.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        let literal = format!("'{}'", name.replace('\'', "''"));
        let exists = self
            .query(
                "postgres",
                &format!("select 1 from pg_database where datname = {literal}"),
            )
            .await?;
        if exists.trim() == "1" {
            return Ok(());
        }
        self.query(
            "postgres",
            &format!("create database {}", quote_ident(name)),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a test against real PostgreSQL starts from: the binaries, and a temporary
    /// directory the `postgres` user can enter. None where PostgreSQL is not installed: the
    /// test says it skipped and returns.
    pub(crate) struct Fixture {
        pub(crate) bin: Binaries,
        pub(crate) dir: tempfile::TempDir,
    }

    impl Fixture {
        pub(crate) fn new() -> Option<Fixture> {
            let Ok(bin) = Binaries::locate() else {
                eprintln!("skipped: no PostgreSQL binaries in {DEFAULT_BIN_DIR}");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            Some(Fixture { bin, dir })
        }

        /// A writer `name` on `port` (master user "master", password "pw"), running, with
        /// `sql` run on it.
        pub(crate) async fn writer(
            &self,
            name: &str,
            port: u16,
            sql: &str,
        ) -> (Member, tokio::process::Child) {
            let m = Member::new(
                self.bin.clone(),
                &self.dir.path().join(name),
                port,
                "master",
            )
            .unwrap();
            m.init("pw").await.unwrap();
            let child = start(&m);
            assert!(m.wait_ready(Duration::from_secs(30)).await, "{}", log(&m));
            m.query("postgres", sql).await.unwrap();
            (m, child)
        }

        /// A standby `name` on `port`, cloned from the writer on `writer_port`, running.
        pub(crate) async fn standby(
            &self,
            name: &str,
            port: u16,
            writer_port: u16,
        ) -> (Member, tokio::process::Child) {
            let mut m = Member::new(
                self.bin.clone(),
                &self.dir.path().join(name),
                port,
                "master",
            )
            .unwrap();
            m.clone_from(upstream(writer_port, name)).await.unwrap();
            let child = start(&m);
            assert!(m.wait_ready(Duration::from_secs(30)).await, "{}", log(&m));
            (m, child)
        }
    }

    /// The member's PostgreSQL log (what [`start`] sends there), for a failure's message.
    pub(crate) fn log(m: &Member) -> String {
        std::fs::read_to_string(m.root.join("postgres.log")).unwrap_or_default()
    }

    /// The upstream of a test standby named `name`: the writer on this host's `port`, as the
    /// tests' master user.
    pub(crate) fn upstream(port: u16, name: &str) -> Upstream {
        Upstream {
            host: "127.0.0.1".into(),
            port,
            user: "master".into(),
            password: "pw".into(),
            application_name: name.into(),
        }
    }

    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub(crate) fn start(member: &Member) -> tokio::process::Child {
        let log = std::fs::File::create(member.root.join("postgres.log")).unwrap();
        member
            .postgres()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub(crate) async fn stop(mut child: tokio::process::Child) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// A writer and a synchronous standby cloned from it: a commit on the writer is on the
    /// standby, which reads it; promoted, the standby takes writes.
    #[tokio::test]
    async fn a_standby_streams_synchronously_and_is_promoted() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let (p1, p2) = (free_port(), free_port());
        let mut writer = Member::new(bin.clone(), &dir.path().join("m1"), p1, "master").unwrap();
        writer.synchronous_standby_names = "ANY 1 (m2)".into();
        writer.init("pw'with\\quote").await.unwrap();
        let w = start(&writer);
        assert!(writer.wait_ready(Duration::from_secs(30)).await);
        let mut standby = Member::new(bin, &dir.path().join("m2"), p2, "master").unwrap();
        standby
            .clone_from(Upstream {
                host: "127.0.0.1".into(),
                port: p1,
                user: "master".into(),
                password: "pw'with\\quote".into(),
                application_name: "m2".into(),
            })
            .await
            .unwrap();
        let s = start(&standby);
        assert!(standby.wait_ready(Duration::from_secs(30)).await);
        assert!(standby.in_recovery().await.unwrap());
        writer
            .query(
                "postgres",
                "create table t (v int); insert into t values (42)",
            )
            .await
            .unwrap();
        let sync = writer
            .query(
                "postgres",
                "select application_name, sync_state from pg_stat_replication",
            )
            .await
            .unwrap();
        assert_eq!(sync.trim(), "m2|quorum");
        // Synchronous (remote_flush by default): visible on the standby soon after.
        let mut seen = String::new();
        for _ in 0..100 {
            if let Ok(v) = standby.query("postgres", "select v from t").await {
                seen = v;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen.trim(), "42");
        assert!(
            standby
                .query("postgres", "insert into t values (1)")
                .await
                .is_err()
        );
        stop(w).await;
        standby.promote().await.unwrap();
        let mut promoted = false;
        for _ in 0..100 {
            let r = standby.in_recovery().await.unwrap_or_else(|e| {
                let log = std::fs::read_to_string(standby.root.join("postgres.log"));
                panic!("{e}\n{}", log.unwrap_or_default())
            });
            if !r {
                promoted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(promoted, "still in recovery");
        assert!(!standby.data_dir.join("standby.signal").exists());
        standby
            .query("postgres", "insert into t values (43)")
            .await
            .unwrap();
        stop(s).await;
    }

    /// Failover and rejoin: the standby is promoted and takes writes, the old writer (stopped)
    /// is rewound onto the new timeline and follows the new writer, seeing its rows.
    #[tokio::test]
    async fn a_former_writer_is_rewound_and_follows_the_new_one() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let (p1, p2) = (free_port(), free_port());
        let mut m1 = Member::new(bin.clone(), &dir.path().join("m1"), p1, "master").unwrap();
        m1.init("pw").await.unwrap();
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await);
        let mut m2 = Member::new(bin, &dir.path().join("m2"), p2, "master").unwrap();
        m2.clone_from(upstream(p1, "m2")).await.unwrap();
        let s = start(&m2);
        assert!(m2.wait_ready(Duration::from_secs(30)).await);
        m1.query(
            "postgres",
            "create table t (v int); insert into t values (1)",
        )
        .await
        .unwrap();
        // The old writer goes on a little (this WAL is what the rewind undoes), then stops.
        m1.query("postgres", "insert into t select generate_series(100, 200)")
            .await
            .unwrap();
        stop(w).await;
        m2.promote().await.unwrap();
        for _ in 0..100 {
            if !m2.in_recovery().await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        m2.query("postgres", "insert into t values (2); checkpoint")
            .await
            .unwrap();
        m1.rewind(upstream(p2, "m1")).await.unwrap();
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await);
        assert!(
            m1.in_recovery().await.unwrap(),
            "the rewound writer must come back a standby"
        );
        let mut seen = String::new();
        for _ in 0..100 {
            seen = m1
                .query("postgres", "select count(*) from t where v = 2")
                .await
                .unwrap_or_default();
            if seen.trim() == "1" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            seen.trim(),
            "1",
            "the new writer's row did not reach the rewound member"
        );
        let streaming = m2
            .query(
                "postgres",
                "select application_name from pg_stat_replication",
            )
            .await
            .unwrap();
        assert_eq!(streaming.trim(), "m1");
        stop(w).await;
        stop(s).await;
    }

    pub(crate) async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The steps of a failover, for real: a writer and two standbys, the synchronous set set
    /// live, the writer stopped `fast`, both standbys detached (their WAL receivers gone, the
    /// received WAL kept), one promoted, the other repointed to it by a reload and streaming
    /// again on the new timeline; then an `immediate` stop.
    #[tokio::test]
    async fn standbys_vote_and_follow_a_promoted_one_by_reload() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let (p1, p2, p3) = (free_port(), free_port(), free_port());
        let mut m1 = Member::new(bin.clone(), &dir.path().join("m1"), p1, "master").unwrap();
        m1.init("pw").await.unwrap();
        let mut w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await);
        m1.create_database("app's").await.unwrap();
        m1.create_database("app's").await.unwrap();
        let mut m2 = Member::new(bin.clone(), &dir.path().join("m2"), p2, "master").unwrap();
        m2.clone_from(upstream(p1, "m2")).await.unwrap();
        let s2 = start(&m2);
        let mut m3 = Member::new(bin, &dir.path().join("m3"), p3, "master").unwrap();
        m3.readable = false;
        m3.clone_from(upstream(p1, "m3")).await.unwrap();
        let mut s3 = start(&m3);
        assert!(m2.wait_ready(Duration::from_secs(30)).await);
        assert!(m3.wait_ready(Duration::from_secs(30)).await);

        // The synchronous set, live.
        m1.set_synchronous_standby_names("ANY 1 (m2, m3)")
            .await
            .unwrap();
        let o = poll("both standbys stream", async || {
            let o = m1.observe().await.unwrap();
            (o.streaming_standbys.len() == 2).then_some(o)
        })
        .await;
        assert!(!o.in_recovery);
        assert_eq!(o.synchronous_standby_names, "ANY 1 (m2, m3)");
        assert_eq!(o.streaming_standbys, ["m2", "m3"]);
        assert_eq!(o.timeline, 1);
        // Each WAL sender takes the new setting when it handles the reload.
        poll("both standbys are synchronous candidates", async || {
            let sync = m1
                .query(
                    "postgres",
                    "select string_agg(sync_state, ',' order by application_name) \
                     from pg_stat_replication",
                )
                .await
                .unwrap();
            (sync.trim() == "quorum,quorum").then_some(())
        })
        .await;
        m1.query("app's", "create table t (v int); insert into t values (1)")
            .await
            .unwrap();
        let o3 = poll("m3 streams", async || {
            let o = m3.observe().await.unwrap();
            o.streaming().then_some(o)
        })
        .await;
        assert!(o3.in_recovery);
        assert!(o3.receive_lsn.is_some());
        // An unreadable standby refuses clients over TCP.
        let tcp = std::process::Command::new("psql")
            .env("PGPASSWORD", "pw")
            .args(["-h", "127.0.0.1", "-p", &p3.to_string(), "-U", "master"])
            .args(["-d", "postgres", "-AtXc", "select 1"])
            .output()
            .unwrap();
        assert!(!tcp.status.success());

        // The writer goes down cleanly: its last WAL reaches both.
        let flushed = m1.observe().await.unwrap().flush_lsn;
        m1.stop(StopMode::Fast).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), w.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
        // Both vote: streaming stops, the received WAL stays readable.
        let v2 = m2.detach(Duration::from_secs(10)).await.unwrap();
        let v3 = m3.detach(Duration::from_secs(10)).await.unwrap();
        assert!(v2.received() > flushed, "{} <= {flushed}", v2.received());
        assert_eq!(v2.received(), v3.received());
        let o3 = m3.observe().await.unwrap();
        assert!(o3.in_recovery && o3.wal_receiver.is_empty());
        assert!(m3.data_dir.join("standby.signal").exists());

        // m2 takes over; m3 follows it after a reload, onto timeline 2.
        m2.promote().await.unwrap();
        assert!(m2.wait_promoted(Duration::from_secs(30)).await.unwrap());
        m2.query("postgres", "checkpoint").await.unwrap();
        m3.repoint(upstream(p2, "m3")).await.unwrap();
        m2.set_synchronous_standby_names("FIRST 1 (m3)")
            .await
            .unwrap();
        m2.query("app's", "insert into t values (2)").await.unwrap();
        // Caught up (a busy machine may observe it between receiving and replaying, when
        // the lag is the age of the last replayed commit): no lag.
        let o3 = poll("m3 streams from m2 on timeline 2", async || {
            let o = m3.observe().await.unwrap();
            (o.streaming() && o.timeline == 2 && o.replay_lsn == o.receive_lsn).then_some(o)
        })
        .await;
        assert_eq!(o3.lag_seconds, 0.0);
        let seen = m3.query("app's", "select count(*) from t").await.unwrap();
        assert_eq!(seen.trim(), "2");
        let o2 = m2.observe().await.unwrap();
        assert_eq!((o2.in_recovery, o2.timeline), (false, 2));
        assert_eq!(o2.streaming_standbys, ["m3"]);

        m3.stop(StopMode::Immediate).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), s3.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(!m3.ready().await);
        stop(s2).await;
    }

    /// A parameter group, for real: a dynamic parameter applies on a reload, a static one
    /// waits for a restart (and is pending until then), and one PostgreSQL refuses (unknown
    /// name, bad value) is reported and left out, so that the others apply and the member
    /// still starts.
    #[tokio::test]
    async fn parameters_apply_live_or_at_restart_and_refused_ones_are_left_out() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let m = Member::new(bin, &dir.path().join("m1"), free_port(), "master").unwrap();
        m.init("pw").await.unwrap();
        let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // Before the first start: written, and read at start.
        let (changed, refused) = m
            .write_parameters(&params(&[("work_mem", "8MB")]))
            .await
            .unwrap();
        assert!(changed && refused.is_empty(), "{refused:?}");
        let child = start(&m);
        assert!(m.wait_ready(Duration::from_secs(30)).await);
        let show = async |name: &str| m.query("postgres", &format!("show {name}")).await.unwrap();
        assert_eq!(show("work_mem").await.trim(), "8MB");
        let before = show("max_connections").await;
        let o = m.observe().await.unwrap();
        assert!(
            o.pending_restart.is_empty() && o.refused_parameters.is_empty(),
            "{o:?}"
        );

        // A dynamic and a static change, and two PostgreSQL refuses.
        let (changed, refused) = m
            .write_parameters(&params(&[
                ("work_mem", "16MB"),
                ("max_connections", "142"),
                ("no_such_setting", "1"),
                ("random_page_cost", "cheap"),
            ]))
            .await
            .unwrap();
        assert!(changed);
        let names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{refused:?}");
        assert!(names.contains(&"no_such_setting") && names.contains(&"random_page_cost"));
        let why = &refused
            .iter()
            .find(|(n, _)| n == "random_page_cost")
            .unwrap()
            .1;
        assert!(why.contains("invalid value for parameter"), "{why}");
        let file = std::fs::read_to_string(m.data_dir.join(PARAMETERS_FILE)).unwrap();
        assert!(
            !file.contains("no_such_setting") && !file.contains("cheap"),
            "{file}"
        );
        // The same parameters again: nothing to write.
        let (again, _) = m
            .write_parameters(&params(&[
                ("work_mem", "16MB"),
                ("max_connections", "142"),
                ("no_such_setting", "1"),
                ("random_page_cost", "cheap"),
            ]))
            .await
            .unwrap();
        assert!(!again);
        m.reload().await.unwrap();
        poll("work_mem applies on reload", async || {
            (show("work_mem").await.trim() == "16MB").then_some(())
        })
        .await;
        assert_eq!(show("max_connections").await, before);
        let o = m.observe().await.unwrap();
        assert_eq!(o.pending_restart, ["max_connections"]);
        assert!(o.refused_parameters.is_empty(), "{o:?}");

        // hanul's own settings win over the group's file.
        let main = std::fs::read_to_string(m.data_dir.join("postgresql.conf")).unwrap();
        let params_at = main.find("'hanul-params.conf'").unwrap();
        assert!(params_at < main.find("'hanul.conf'").unwrap());

        // A restart applies the static one.
        stop(child).await;
        let child = start(&m);
        assert!(m.wait_ready(Duration::from_secs(30)).await);
        assert_eq!(show("max_connections").await.trim(), "142");
        let o = m.observe().await.unwrap();
        assert!(o.pending_restart.is_empty(), "{o:?}");
        stop(child).await;
    }

    /// A real PostgreSQL: initdb, start, a query through the socket and one over TCP with the
    /// password, then a fast shutdown.
    #[tokio::test]
    async fn a_member_initializes_starts_and_answers() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let port = free_port();
        let member = Member::new(bin, &dir.path().join("m1"), port, "master").unwrap();
        member.init("s3cret-pw").await.unwrap();
        assert!(member.initialized());
        // A second init keeps the cluster.
        member.init("ignored").await.unwrap();
        let mut child = member
            .postgres()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            member.wait_ready(Duration::from_secs(30)).await,
            "postgres did not become ready"
        );
        assert_eq!(
            member.query("postgres", "select 1").await.unwrap().trim(),
            "1"
        );
        let settings = member
            .query(
                "postgres",
                "select setting from pg_settings where name in ('restart_after_crash', 'wal_level') order by name",
            )
            .await
            .unwrap();
        assert_eq!(settings.lines().collect::<Vec<_>>(), ["off", "replica"]);
        // Over TCP the password is needed, and works.
        let tcp = |password: &str| {
            std::process::Command::new("psql")
                .env("PGPASSWORD", password)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "master",
                    "-d",
                    "postgres",
                    "-AtXc",
                    "select current_user",
                ])
                .output()
                .unwrap()
        };
        let ok = tcp("s3cret-pw");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "master");
        assert!(!tcp("wrong").status.success());
        // Fast shutdown (SIGINT), as the agent stops a member.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
}
