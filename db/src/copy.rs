//! A copy of a running member on the same host: the data of Aurora's clone, copy-on-write
//! where the file system can share extents (`cp --reflink`: btrfs, XFS), else a plain file
//! copy, with no network and no base backup stream.
//!
//! The copy is PostgreSQL's low-level base backup, done through one psql session on the
//! source (a writer or a standby):
//!
//! ```text
//!  temporary physical slot (reserves WAL from now on: nothing the copy needs is recycled)
//!  pg_backup_start(fast)  ─▶ cp -a --reflink=auto of the data directory, less what
//!                            pg_basebackup leaves out (pg_wal's files, postmaster.pid, ...)
//!  pg_backup_stop()       ─▶ backup_label, and the WAL written meanwhile copied into pg_wal
//!  session ends           ─▶ the slot goes with it
//! ```
//!
//! The copy then recovers like a restored snapshot ([`crate::RestoreTarget::Immediate`]):
//! up to the end of the backup, and promotes itself onto a timeline of its own.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::backup::{RestoreTarget, blocking, remove_tree};
use crate::postgres::{Error, Member, Result, io};

/// How a local copy shared the source's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// Reflinks: the copy shares the source's extents until either side writes them.
    CopyOnWrite,
    /// The file system cannot share extents: every byte was copied.
    FullCopy,
}

impl CopyMethod {
    /// As events and logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::CopyOnWrite => "copy-on-write",
            CopyMethod::FullCopy => "full copy",
        }
    }
}

/// The staging directory of a copy, beside the data directory.
const STAGING: &str = "pgdata.copying";
/// The psql script and the shell script it runs, in the new member's root while a copy runs.
const COPY_SQL: &str = "copy.sql";
const COPY_SH: &str = "copy.sh";

/// Run by psql's `\!` between `pg_backup_start` and `pg_backup_stop` (`tree`) and after it
/// (`wal`), as the member's user; reports on stdout, one `hanul-copy:` line a fact. The
/// directories left out hold only what a running server recreates; their own directories are
/// made empty (pg_basebackup's list).
const COPY_SCRIPT: &str = r#"set -u
src=$HANUL_COPY_SOURCE
dst=$HANUL_COPY_TARGET
case $1 in
tree)
  if cp --reflink=always -- "$src/PG_VERSION" "$dst/.reflink-probe" 2>/dev/null; then
    echo "hanul-copy:method:cow"
  else
    echo "hanul-copy:method:copy"
  fi
  rm -f -- "$dst/.reflink-probe"
  for e in "$src"/*; do
    name=${e##*/}
    case $name in
    pg_wal|pg_stat_tmp|pg_replslot|pg_dynshmem|pg_notify|pg_serial|pg_snapshots|pg_subtrans)
      mkdir -m 0700 -- "$dst/$name" || { echo "hanul-copy:failed:$name"; exit 1; } ;;
    postmaster.pid|postmaster.opts|backup_label|tablespace_map|backup_manifest|\
    postgresql.auto.conf.tmp|current_logfiles.tmp|standby.signal|recovery.signal) ;;
    *)
      cp -a --reflink=auto -- "$e" "$dst/$name" || { echo "hanul-copy:failed:$name"; exit 1; } ;;
    esac
  done
  mkdir -m 0700 -- "$dst/pg_wal/archive_status" || { echo "hanul-copy:failed:archive_status"; exit 1; }
  echo "hanul-copy:tree:ok"
  ;;
wal)
  # Every WAL file the source holds: the slot keeps those from the backup's start; a file
  # that vanished meanwhile was older (recycled), and is not needed.
  for f in "$src"/pg_wal/*; do
    [ -f "$f" ] || continue
    cp --reflink=auto -p -- "$f" "$dst/pg_wal/" 2>/dev/null || [ ! -e "$f" ] \
      || { echo "hanul-copy:failed:${f##*/}"; exit 1; }
  done
  echo "hanul-copy:wal:ok"
  ;;
esac
"#;

impl Member {
    /// Makes this member's data directory (which must not hold a cluster) a copy of
    /// `source`, a member running on this host (a writer or a standby), set to recover to
    /// the end of the copy and then promote itself onto a new timeline, as a writer: the
    /// caller starts it, waits with [`Member::wait_promoted`], then calls
    /// [`Member::finish_restore`], as after [`Member::restore_from`]. On an error nothing is
    /// left in place of the data directory, and the source's backup and slot have ended.
    pub async fn copy_running(&mut self, source: &Member) -> Result<CopyMethod> {
        let not_empty = std::fs::read_dir(&self.data_dir).is_ok_and(|mut d| d.next().is_some());
        if self.initialized() || not_empty {
            return Err(Error::RestoreTargetNotEmpty(self.data_dir.clone()));
        }
        std::fs::create_dir_all(&self.root).map_err(io("creating the member's root"))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod the member's root"))?;
        self.private_dir(&self.socket_dir)?;
        let staging = self.root.join(STAGING);
        let s = staging.clone();
        blocking(format!("removing {}", staging.display()), move || {
            remove_tree(&s)
        })
        .await?;
        let result = self.copy_into(source, &staging).await;
        for name in [COPY_SQL, COPY_SH] {
            let _ = std::fs::remove_file(self.root.join(name));
        }
        match result {
            Ok(method) => {
                self.install_restored(&staging, RestoreTarget::Immediate)?;
                Ok(method)
            }
            Err(e) => {
                let s = staging.clone();
                let _ = blocking(String::new(), move || remove_tree(&s)).await;
                Err(e)
            }
        }
    }

    /// The copy itself, into `staging`; with `backup_label` written.
    async fn copy_into(&self, source: &Member, staging: &Path) -> Result<CopyMethod> {
        self.private_dir(staging)?;
        let script = self.root.join(COPY_SH);
        self.write_owned(&script, COPY_SCRIPT)?;
        // Unique on this host: one copy per new member at a time.
        let slot = format!("hanul_copy_{}_{}", std::process::id(), self.port);
        let sh = shell_quote(&script.to_string_lossy());
        let sql = format!(
            "select pg_create_physical_replication_slot('{slot}', true, true);\n\
             select pg_backup_start('hanul local copy', true);\n\
             \\! sh {sh} tree\n\
             select 'hanul-copy:label:' || encode(convert_to(labelfile, 'UTF8'), 'hex') \
             || ':' || encode(convert_to(coalesce(spcmapfile, ''), 'UTF8'), 'hex') \
             from pg_backup_stop(false);\n\
             \\! sh {sh} wal\n"
        );
        let sql_file = self.root.join(COPY_SQL);
        self.write_owned(&sql_file, &sql)?;
        let mut c = source.psql("postgres");
        c.env("HANUL_COPY_SOURCE", &source.data_dir)
            .env("HANUL_COPY_TARGET", staging)
            .arg("-f")
            .arg(&sql_file);
        let out = source.run_output(c, "psql (a local copy)").await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let facts: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("hanul-copy:"))
            .collect();
        let failed = || Error::Failed {
            command: "a local copy of a running member".into(),
            status: out.status.to_string(),
            stderr: format!(
                "{}{}",
                facts.join("; "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        if !out.status.success()
            || facts.iter().any(|f| f.starts_with("failed:"))
            || !facts.contains(&"tree:ok")
            || !facts.contains(&"wal:ok")
        {
            return Err(failed());
        }
        let method = if facts.contains(&"method:cow") {
            CopyMethod::CopyOnWrite
        } else {
            CopyMethod::FullCopy
        };
        let (label, map) = facts
            .iter()
            .find_map(|f| f.strip_prefix("label:"))
            .and_then(|l| l.split_once(':'))
            .and_then(|(l, m)| Some((unhex(l)?, unhex(m)?)))
            .ok_or_else(failed)?;
        if !map.is_empty() {
            return Err(Error::Failed {
                command: "a local copy of a running member".into(),
                status: "refused".into(),
                stderr: "the source has tablespaces, which a local copy does not carry".into(),
            });
        }
        self.write_owned(&staging.join("backup_label"), &label)?;
        Ok(method)
    }
}

/// Single-quoted for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text whose UTF-8 bytes `hex` spells (PostgreSQL's `encode(..., 'hex')`).
fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::Binaries;
    use crate::postgres::tests::{Fixture, free_port, log, poll, start, stop};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    async fn count_and_max(m: &Member) -> (u32, u32) {
        let out = m
            .query("postgres", "select count(*), coalesce(max(v), 0) from t")
            .await
            .unwrap();
        let (c, x) = out.trim().split_once('|').unwrap();
        (c.parse().unwrap(), x.parse().unwrap())
    }

    /// Copies `source` into a new member under `root` while `writer` takes inserts of
    /// 1, 2, 3, ... one a commit; the copy starts, promotes and has every row committed
    /// before the copy began, none that was not committed, and no gap: it is a consistent
    /// image of one moment during the copy. Returns its method.
    async fn copy_under_load(
        bin: &Binaries,
        writer: &Member,
        source: &Member,
        root: &Path,
    ) -> CopyMethod {
        let before = count_and_max(writer).await.1;
        let stop_inserts = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicU32::new(before));
        let inserts = {
            let (w, stop_inserts, last) = (writer.clone(), stop_inserts.clone(), last.clone());
            tokio::spawn(async move {
                while !stop_inserts.load(Ordering::SeqCst) {
                    let v = last.load(Ordering::SeqCst) + 1;
                    w.query("postgres", &format!("insert into t values ({v})"))
                        .await
                        .unwrap();
                    last.store(v, Ordering::SeqCst);
                }
            })
        };
        let mut copy = Member::new(bin.clone(), root, free_port(), "master").unwrap();
        let method = copy.copy_running(source).await.unwrap();
        stop_inserts.store(true, Ordering::SeqCst);
        inserts.await.unwrap();
        let committed = last.load(Ordering::SeqCst);
        assert!(!copy.data_dir.join("standby.signal").exists());
        assert!(!root.join(STAGING).exists());
        let p = start(&copy);
        assert!(
            copy.wait_ready(Duration::from_secs(30)).await,
            "{}",
            log(&copy)
        );
        assert!(
            copy.wait_promoted(Duration::from_secs(30)).await.unwrap(),
            "{}",
            log(&copy)
        );
        copy.finish_restore().unwrap();
        let (count, max) = count_and_max(&copy).await;
        assert_eq!(count, max, "rows 1..={max} with no gap");
        assert!(
            (before..=committed).contains(&max),
            "the copy has {max} rows: at least the {before} committed before it, at most the {committed} committed by its end"
        );
        copy.query("postgres", "insert into t values (100000)")
            .await
            .unwrap();
        assert!(!copy.observe().await.unwrap().in_recovery);
        // The source goes on: its slot and its backup ended with the session.
        let slots = source
            .query(
                "postgres",
                "select count(*) from pg_replication_slots where slot_name like 'hanul_copy_%'",
            )
            .await
            .unwrap();
        assert_eq!(slots.trim(), "0");
        assert_eq!(count_and_max(writer).await.1, committed);
        stop(p).await;
        method
    }

    /// A local copy, for real, of a writer and of its standby, each while the writer takes
    /// commits: each copy recovers to a consistent moment and promotes into a writer of its
    /// own; the source keeps no slot. On this file system the copy's method is what `cp
    /// --reflink=always` says it can do.
    #[tokio::test]
    async fn a_running_writer_and_a_running_standby_copy_into_new_writers() {
        let Some(f) = Fixture::new() else {
            return;
        };
        let p1 = free_port();
        let (m1, w) = f
            .writer(
                "m1",
                p1,
                "create table t (v int primary key); insert into t select generate_series(1, 5000)",
            )
            .await;
        let (m2, s) = f.standby("m2", free_port(), p1).await;
        let (bin, dir) = (&f.bin, &f.dir);
        poll("the standby has the rows", async || {
            (count_and_max(&m2).await.0 == 5000).then_some(())
        })
        .await;

        let probe = dir.path().join("probe");
        std::fs::write(&probe, "x").unwrap();
        let cow = std::process::Command::new("cp")
            .args(["--reflink=always"])
            .arg(&probe)
            .arg(dir.path().join("probe2"))
            .status()
            .unwrap()
            .success();
        let expected = if cow {
            CopyMethod::CopyOnWrite
        } else {
            CopyMethod::FullCopy
        };
        let method = copy_under_load(bin, &m1, &m1, &dir.path().join("c1")).await;
        assert_eq!(method, expected);
        let method = copy_under_load(bin, &m1, &m2, &dir.path().join("c2")).await;
        assert_eq!(method, expected);

        // Not over a cluster.
        let mut again =
            Member::new(bin.clone(), &dir.path().join("c1"), free_port(), "master").unwrap();
        assert!(matches!(
            again.copy_running(&m1).await,
            Err(Error::RestoreTargetNotEmpty(_))
        ));
        stop(s).await;
        stop(w).await;
    }

    /// A loop-mounted XFS with reflinks, removed on drop; None where this machine cannot
    /// make one (not root, no `mkfs.xfs`, no loop devices).
    struct Xfs {
        mount: tempfile::TempDir,
        _image: tempfile::TempDir,
    }

    impl Xfs {
        fn new() -> Option<Xfs> {
            let image = tempfile::tempdir().ok()?;
            let file = image.path().join("xfs.img");
            std::fs::File::create(&file).ok()?.set_len(1 << 30).ok()?;
            let ok = |c: &mut std::process::Command| {
                c.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !ok(std::process::Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&file))
            {
                return None;
            }
            let mount = tempfile::tempdir().ok()?;
            if !ok(std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(mount.path()))
            {
                return None;
            }
            std::fs::set_permissions(mount.path(), std::fs::Permissions::from_mode(0o755)).ok()?;
            Some(Xfs {
                mount,
                _image: image,
            })
        }

        /// Bytes in use on the file system.
        fn used(&self) -> u64 {
            let s = nix::sys::statvfs::statvfs(self.mount.path()).unwrap();
            (s.blocks() - s.blocks_free()) * s.fragment_size()
        }
    }

    impl Drop for Xfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.mount.path())
                .status();
        }
    }

    /// On a file system with reflinks (a loop-mounted XFS), the copy of a writer with
    /// 100 MB of data shares its extents: it is copy-on-write, and the file system's use grows
    /// by far less than the data's size.
    #[tokio::test]
    async fn on_xfs_a_copy_shares_the_sources_extents() {
        let Some(Fixture { bin, .. }) = Fixture::new() else {
            return;
        };
        let Some(xfs) = Xfs::new() else {
            eprintln!("skipped: cannot mount an XFS here (root, mkfs.xfs and loop devices)");
            return;
        };
        let root = xfs.mount.path();
        let m1 = Member::new(bin.clone(), &root.join("m1"), free_port(), "master").unwrap();
        m1.init("pw").await.unwrap();
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await, "{}", log(&m1));
        m1.query(
            "postgres",
            "create table t (v int primary key, pad text); \
             insert into t select g, repeat('x', 400) from generate_series(1, 200000) g; \
             checkpoint",
        )
        .await
        .unwrap();
        let data: u64 = m1
            .query("postgres", "select pg_database_size('postgres')")
            .await
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(data > 80_000_000, "{data}");
        let used = xfs.used();
        let mut copy = Member::new(bin, &root.join("c1"), free_port(), "master").unwrap();
        let method = copy.copy_running(&m1).await.unwrap();
        let grew = xfs.used().saturating_sub(used);
        assert_eq!(method, CopyMethod::CopyOnWrite);
        assert!(
            grew < data / 4,
            "a copy-on-write copy of {data} bytes took {grew} bytes"
        );
        let p = start(&copy);
        assert!(
            copy.wait_ready(Duration::from_secs(30)).await,
            "{}",
            log(&copy)
        );
        assert!(copy.wait_promoted(Duration::from_secs(30)).await.unwrap());
        assert_eq!(count_and_max(&copy).await, (200_000, 200_000));
        stop(p).await;
        stop(w).await;
    }

    #[test]
    fn hex_from_postgres_decodes_to_its_text() {
        assert_eq!(unhex("").as_deref(), Some(""));
        assert_eq!(
            unhex("53544152542057414c0a").as_deref(),
            Some("START WAL\n")
        );
        assert_eq!(unhex("5"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
