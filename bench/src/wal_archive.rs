//! `wal-archive`: what archiving one WAL segment costs with hanul's archive script, plain
//! (gzip) and encrypted (one gpg process per segment), beside the PostgreSQL documentation's
//! `cp` archive command, on real WAL segments; and how that compares with the rate at which a
//! pgbench load writes WAL.
//!
//! A throwaway PostgreSQL (run as the `postgres` user) is loaded with pgbench; its WAL rate is
//! measured under the TPC-B-like load with `synchronous_commit = off` (commits wait for no
//! flush, so the rate is as high as the CPUs allow: the worst case for the archiver), and the
//! segments it wrote are copied aside. Each method then archives every segment into an empty
//! directory (`push`, as `archive_command` runs it: one process per segment, synced) and
//! restores it (`fetch`, as `restore_command` does). A method keeps up with the load while its
//! segments per second exceed the load's.

use crate::report::Machine;
use crate::stats::Samples;
use anyhow::{Context as _, bail};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const SEGMENT: u64 = hanul_db::backup::WAL_SEGMENT_SIZE;

#[derive(Debug, Clone, clap::Args)]
pub struct WalArchiveArgs {
    /// WAL segments archived by each method (at most those the load wrote).
    #[arg(long, default_value_t = 24)]
    pub segments: usize,
    /// pgbench's scale for the load that writes them.
    #[arg(long, default_value_t = 20)]
    pub scale: u32,
    /// How long the pgbench load whose WAL rate is measured runs.
    #[arg(long, default_value = "15s")]
    pub load_duration: humantime::Duration,
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
}

/// One way to archive.
#[derive(Clone, Copy, PartialEq)]
enum Method {
    /// The documentation's example: `test ! -f DIR/%f && cp %p DIR/%f` (not synced, not
    /// idempotent: the peer, not a recommendation).
    Cp,
    Gzip,
    Gpg,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Cp => "cp (PostgreSQL docs' example)",
            Method::Gzip => "hanul, plain (gzip -1)",
            Method::Gpg => "hanul, encrypted (gpg AES256)",
        }
    }
}

pub async fn run(args: WalArchiveArgs) -> anyhow::Result<()> {
    println!("{}", Machine::read().describe());
    let root = tempfile::Builder::new()
        .prefix("hanul-bench-wal-")
        .tempdir()?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let pg = Postgres::start(&args.pg_bin, &root.path().join("pg"))?;
    let result = load_and_archive(&args, &pg, root.path());
    pg.stop();
    // The gpg-agent the encrypted pushes started in the key's gpg home.
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(root.path().join("keys/gnupg"))
        .args(["--kill", "gpg-agent"])
        .output();
    result
}

fn load_and_archive(args: &WalArchiveArgs, pg: &Postgres, root: &Path) -> anyhow::Result<()> {
    pg.pgbench(&["-i", "-q", "-s", &args.scale.to_string()])?;
    let before = pg.wal_lsn()?;
    let t0 = Instant::now();
    let duration = Duration::from(args.load_duration);
    pg.pgbench(&[
        "-c",
        &args.clients.to_string(),
        "-j",
        &args.clients.to_string(),
        "-T",
        &duration.as_secs().max(1).to_string(),
    ])?;
    let took = t0.elapsed();
    let written = pg.wal_lsn()? - before;
    let load_rate = written as f64 / SEGMENT as f64 / took.as_secs_f64();
    println!(
        "pgbench -c {} for {:.1} s (scale {}, synchronous_commit off): {:.1} MB of WAL, \
         {load_rate:.2} segments/s",
        args.clients,
        took.as_secs_f64(),
        args.scale,
        written as f64 / 1e6,
    );
    // Whole segments, newest first, copied aside (the server may recycle its own).
    pg.sql("CHECKPOINT")?;
    let wal = root.join("wal");
    std::fs::create_dir(&wal)?;
    let mut names: Vec<String> = std::fs::read_dir(pg.data.join("pg_wal"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    names.sort();
    // The newest is being written; the load's are the newest of the rest.
    names.pop();
    names.reverse();
    names.truncate(args.segments);
    names.reverse();
    if names.is_empty() {
        bail!("pgbench wrote no whole WAL segment");
    }
    for n in &names {
        std::fs::copy(pg.data.join("pg_wal").join(n), wal.join(n))?;
    }
    println!("{} segments of {} MiB each\n", names.len(), SEGMENT >> 20);

    let script = root.join(hanul_db::backup::ARCHIVE_SCRIPT);
    std::fs::write(&script, hanul_db::backup::archive_script())?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    // The key file and gpg's home beside it, as a member has them.
    let key = root.join("keys/archive.key");
    std::fs::create_dir_all(root.join("keys/gnupg"))?;
    std::fs::set_permissions(
        root.join("keys/gnupg"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    std::fs::write(&key, "bench-archive-key-material")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;

    println!(
        "| method | push p50 ms | push max ms | segments/s | × the load's rate | archived size | fetch p50 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for method in [Method::Cp, Method::Gzip, Method::Gpg] {
        let dir = root.join(format!("archive-{}", method as u8));
        std::fs::create_dir(&dir)?;
        let (mut push, mut fetch) = (Samples::default(), Samples::default());
        let t0 = Instant::now();
        for n in &names {
            let src = wal.join(n);
            let t = Instant::now();
            run_ok(&mut archive_command(method, &script, &key, &src, &dir, n))?;
            push.push(t.elapsed());
        }
        let pushing = t0.elapsed();
        let archived: u64 = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        for n in &names {
            let dst = root.join("restored");
            let t = Instant::now();
            run_ok(&mut restore_command(method, &script, &key, &dir, n, &dst))?;
            fetch.push(t.elapsed());
            if std::fs::read(&dst)? != std::fs::read(wal.join(n))? {
                bail!("{}: {n} restored with other bytes", method.name());
            }
            std::fs::remove_file(&dst)?;
        }
        let rate = names.len() as f64 / pushing.as_secs_f64();
        let (push, fetch) = (push.summary(), fetch.summary());
        println!(
            "| {} | {:.0} | {:.0} | {rate:.1} | {:.0} | {:.0} % | {:.0} |",
            method.name(),
            push.p50_ms,
            push.max_ms,
            rate / load_rate,
            100.0 * archived as f64 / (names.len() as u64 * SEGMENT) as f64,
            fetch.p50_ms,
        );
    }
    Ok(())
}

fn archive_command(
    method: Method,
    script: &Path,
    key: &Path,
    src: &Path,
    dir: &Path,
    name: &str,
) -> Command {
    let mut c;
    match method {
        Method::Cp => {
            c = Command::new("sh");
            c.arg("-c")
                .arg("test ! -f \"$2/$3\" && cp \"$1\" \"$2/$3\"")
                .arg("sh")
                .arg(src)
                .arg(dir)
                .arg(name);
        }
        Method::Gzip | Method::Gpg => {
            c = Command::new(script);
            c.arg("push").arg(src).arg(dir.join(name));
            if method == Method::Gpg {
                c.arg(key);
            }
        }
    }
    c
}

fn restore_command(
    method: Method,
    script: &Path,
    key: &Path,
    dir: &Path,
    name: &str,
    dst: &Path,
) -> Command {
    let mut c;
    match method {
        Method::Cp => {
            c = Command::new("cp");
            c.arg(dir.join(name)).arg(dst);
        }
        Method::Gzip | Method::Gpg => {
            c = Command::new(script);
            c.arg("fetch").arg(dir.join(name)).arg(dst);
            if method == Method::Gpg {
                c.arg(key);
            }
        }
    }
    c
}

fn run_ok(c: &mut Command) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A throwaway PostgreSQL run as the `postgres` user on a unix socket only.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    socket: PathBuf,
}

impl Postgres {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Postgres> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("run");
        std::fs::create_dir_all(&socket)?;
        run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(dir))?;
        let pg = Postgres {
            bin: bin.to_owned(),
            data: dir.join("data"),
            socket,
        };
        run_ok(
            pg.as_postgres(
                &pg.bin.join("initdb"),
                &["-A", "trust", "-U", "postgres", "-D"],
            )
            .arg(&pg.data),
        )?;
        let conf = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_size = 4GB\nmin_wal_size = 2GB\nshared_buffers = 256MB\n\
             synchronous_commit = off\n",
            pg.socket.display()
        );
        let path = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        run_ok(
            pg.as_postgres(&pg.bin.join("pg_ctl"), &["-w", "-l"])
                .arg(dir.join("log"))
                .arg("-D")
                .arg(&pg.data)
                .arg("start"),
        )?;
        Ok(pg)
    }

    fn as_postgres(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    }

    fn pgbench(&self, args: &[&str]) -> anyhow::Result<()> {
        run_ok(
            self.as_postgres(&self.bin.join("pgbench"), &["-h"])
                .arg(&self.socket)
                .args(args)
                .arg("postgres"),
        )
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .as_postgres(Path::new("psql"), &["-X", "-A", "-t", "-h"])
            .arg(&self.socket)
            .args(["-d", "postgres", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The current WAL position, in bytes.
    fn wal_lsn(&self) -> anyhow::Result<u64> {
        let lsn = self.sql("SELECT pg_current_wal_lsn() - '0/0'")?;
        lsn.parse::<f64>()
            .map(|b| b as u64)
            .with_context(|| format!("an LSN: {lsn}"))
    }

    fn stop(&self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"), &["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}
