//! One PostgreSQL member: a data directory owned by the `postgres` user, a configuration that
//! hanul writes (`hanul.conf`, included from `postgresql.conf`), a Unix socket directory of its
//! own and a TCP port.
//!
//! ```text
//!  ROOT/pgdata/            the data directory (0700, postgres)
//!  ROOT/pgdata/hanul.conf  port, addresses, replication and safety settings
//!  ROOT/run/               the member's socket directory (0700, postgres)
//! ```
//!
//! Local connections (the agent's own, through the socket, as `postgres`) are trusted: only
//! `postgres` and root can open the socket directory. TCP connections need the password
//! (SCRAM-SHA-256). `restart_after_crash = off`: a crashed member is not restarted by
//! postgres itself; the agent decides (a writer that crashed may have lost its role).

use nix::unistd::{Gid, Uid, User, chown};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Where Debian puts PostgreSQL 15's server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The environment variable that overrides [`DEFAULT_BIN_DIR`].
pub const BIN_DIR_ENV: &str = "HANUL_PG_BIN";
/// The operating system user members run as.
pub const OS_USER: &str = "postgres";

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
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
    bin: Binaries,
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
    owner: Option<(Uid, Gid)>,
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
            owner,
        })
    }

    /// Whether the data directory holds a cluster already.
    pub fn initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    fn private_dir(&self, dir: &Path) -> Result<()> {
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
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.path(program));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, mut c: Command, what: &str) -> Result<String> {
        let out = c.output().await.map_err(io(format!("running {what}")))?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: what.into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    fn write_conf(&self) -> Result<()> {
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
        let conninfo = self.upstream.as_ref().map(Upstream::conninfo);
        conf.push_str(&format!(
            "primary_conninfo = {}\n",
            quote(conninfo.as_deref().unwrap_or(""))
        ));
        self.write_owned(&self.data_dir.join("hanul.conf"), &conf)?;
        let main = self.data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).map_err(io("reading postgresql.conf"))?;
        let include = "include_if_exists = 'hanul.conf'";
        if !text.lines().any(|l| l.trim() == include) {
            self.write_owned(&main, &format!("{text}\n{include}\n"))?;
        }
        let hba = "# Written by hanul.\n\
                   local all all trust\n\
                   local replication all trust\n\
                   host all all 0.0.0.0/0 scram-sha-256\n\
                   host all all ::/0 scram-sha-256\n\
                   host replication all 0.0.0.0/0 scram-sha-256\n\
                   host replication all ::/0 scram-sha-256\n";
        self.write_owned(&self.data_dir.join("pg_hba.conf"), hba)
    }

    fn write_owned(&self, path: &Path, text: &str) -> Result<()> {
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
    pub fn postgres(&self) -> Command {
        let mut c = self.command("postgres");
        c.arg("-D").arg(&self.data_dir);
        c
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
        c.status().await.is_ok_and(|s| s.success())
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
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        self.run(c, "psql").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn start(member: &Member) -> tokio::process::Child {
        let log = std::fs::File::create(member.root.join("postgres.log")).unwrap();
        member
            .postgres()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn stop(mut child: tokio::process::Child) {
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
        let Ok(bin) = Binaries::locate() else {
            eprintln!("skipped: no PostgreSQL binaries in {DEFAULT_BIN_DIR}");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
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
        let Ok(bin) = Binaries::locate() else {
            eprintln!("skipped: no PostgreSQL binaries in {DEFAULT_BIN_DIR}");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (p1, p2) = (free_port(), free_port());
        let upstream = |port: u16, name: &str| Upstream {
            host: "127.0.0.1".into(),
            port,
            user: "master".into(),
            password: "pw".into(),
            application_name: name.into(),
        };
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

    /// A real PostgreSQL: initdb, start, a query through the socket and one over TCP with the
    /// password, then a fast shutdown.
    #[tokio::test]
    async fn a_member_initializes_starts_and_answers() {
        let Ok(bin) = Binaries::locate() else {
            eprintln!("skipped: no PostgreSQL binaries in {DEFAULT_BIN_DIR}");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
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
