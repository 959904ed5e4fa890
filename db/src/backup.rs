//! Backups of a member: continuous WAL archiving, base backups (snapshots), restores to a
//! snapshot or to a point in time, and the facts the database controller needs to say how far
//! a cluster can be restored (heartbeats, the archiver's progress) and what can be pruned.
//!
//! ```text
//!  writer / standbys ── archive_command ──▶ DIR/<walfile>.gz     (every member: archive_mode
//!          │            (hanul-archive-wal push)                   = always, idempotent push)
//!          └── pg_basebackup ──▶ SNAPSHOT/ (a plain data directory + backup_manifest)
//!
//!  SNAPSHOT ── copy ──▶ new member's pgdata + recovery.signal ── start ──▶ replays
//!     DIR/<walfile>.gz ── restore_command (fetch) ──▶ up to the target ──▶ promotes itself
//!     (a new timeline), finish_restore()
//! ```
//!
//! The archive script is written into the member's root (`ROOT/hanul-archive-wal`, owned by
//! root, run by postgres). Every member archives, standbys too, so that a segment a dying
//! writer had not archived yet is archived by a standby that received it; a segment two
//! members archive is the same bytes, so a push of an existing file with the same bytes
//! succeeds (the `test ! -f` of PostgreSQL's documentation would wedge the archiver of a
//! promoted standby), and one with different bytes fails loudly, never overwriting.
//!
//! A point in time is restorable when a commit after it is archived: recovery to a time stops
//! before the first commit later than it, and without one it ends before its target and
//! fails. The writer commits [`Member::heartbeat`]s for that; one is archived once the last
//! archived segment ends at or after its LSN ([`segment_end_lsn`]).
//!
//! With a key ([`Member::backup_key`]), nothing reaches the backup directory in plain text:
//! the script stores `DIR/<walfile>.gpg` (gpg's symmetric AES256, integrity-protected), and a
//! base backup is pg_basebackup's tar piped through gpg into `SNAPSHOT/base.tar.gpg`; a
//! restore ([`Member::restore_key`]) pipes it back through gpg into tar, and fetches WAL with
//! the same key. The key is handed over in a file in the member's root (0600, the member
//! user's), never as a command-line word (`ps` shows those) nor in hanul.conf.
//!
//! WAL segments are PostgreSQL's default 16 MB (`initdb` is run without `--wal-segsize`).

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::postgres::{Error, Member, Result, io, parse_lsn};

/// The archive script's file name in the member's root.
pub const ARCHIVE_SCRIPT: &str = "hanul-archive-wal";
/// The size of a WAL segment.
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// `push SRC DIR/NAME [KEY]` stores SRC as `DIR/NAME.gz`, or with a key file as
/// `DIR/NAME.gpg`; `fetch DIR/NAME DST [KEY]` restores it. POSIX sh and coreutils (`mktemp`,
/// `sync FILE`, `ln`), gzip, cmp, gpg.
const SCRIPT: &str = r#"#!/bin/sh
# Written by hanul; changes here are overwritten.
# PostgreSQL's WAL archive, gzip-compressed, or with a key file encrypted (OpenPGP, AES256,
# integrity-protected: gpg refuses to decrypt a file that was changed):
#   hanul-archive-wal push SRC DIR/NAME [KEY]    archive_command: push %p DIR/%f
#   hanul-archive-wal fetch DIR/NAME DST [KEY]   restore_command: fetch DIR/%f %p
# KEY is a file holding the passphrase (never a command-line word: ps shows those); gpg's home
# is the directory gnupg beside it.
# A push is idempotent: DIR/NAME.gz (.gpg) holding SRC's bytes already is a success (a
# promoted standby archives again what the old writer archived); holding other bytes, a
# failure: an archived file is never overwritten. Encryption is randomised, so the bytes are
# compared after decrypting. A fetch of a missing file fails silently (PostgreSQL probes for
# files that do not exist all the time).
# A .partial file (the last, unfinished segment of a timeline that a promotion left) is kept
# for inspection only, never fetched: when one of that name holds other bytes (two restores
# in one archive, each branching off the same segment of a timeline) the first one stays
# and the push succeeds, so that the archiver does not stall on it.
set -u
PATH=/usr/bin:/bin
export PATH
umask 077
me=hanul-archive-wal
key=
ext=gz

# gpgk ARGS...: gpg with the key file.
gpgk() {
    gpg --batch --quiet --no-tty --homedir "${key%/*}/gnupg" --pinentry-mode loopback \
        --no-symkey-cache --passphrase-file "$key" "$@"
}

# decode FILE: FILE's original bytes on stdout.
decode() {
    if [ -n "$key" ]; then
        gpgk --decrypt -- "$1"
    else
        gzip -dc -- "$1"
    fi
}

# encode SRC OUT: SRC compressed (and encrypted) into OUT, which exists.
encode() {
    if [ -n "$key" ]; then
        gpgk --yes --symmetric --cipher-algo AES256 --output "$2" -- "$1"
    else
        gzip -1 -n -c -- "$1" >"$2"
    fi
}

# same ARCHIVED FILE: whether ARCHIVED decodes to FILE's bytes.
same() {
    decode "$1" 2>/dev/null | cmp -s - "$2"
}

# published ARCHIVED SRC DIR: ARCHIVED exists; success if it holds SRC's bytes (or is a
# .partial), else say so and fail.
published() {
    if same "$1" "$2"; then
        sync -- "$3" || exit 1
        exit 0
    fi
    case $1 in
    *.partial.gz | *.partial.gpg)
        echo "$me: $1 exists with other bytes; keeping it (a .partial is never restored)" >&2
        exit 0
        ;;
    esac
    echo "$me: $1 exists and differs from $2 (or cannot be read); it is not overwritten" >&2
    exit 1
}

push() {
    src=$1
    dst=$2.$ext
    case $2 in
    */*) dir=${2%/*} ;;
    *) dir=. ;;
    esac
    [ -e "$dst" ] && published "$dst" "$src" "$dir"
    tmp=$(mktemp -- "$dir/.${2##*/}.XXXXXX") || exit 1
    if ! encode "$src" "$tmp" || ! sync -- "$tmp"; then
        echo "$me: could not write $tmp from $src" >&2
        rm -f -- "$tmp"
        exit 1
    fi
    # ln, not mv: it fails when another member published the file first.
    if ! ln -- "$tmp" "$dst" 2>/dev/null; then
        rm -f -- "$tmp"
        [ -e "$dst" ] && published "$dst" "$src" "$dir"
        echo "$me: could not link $dst" >&2
        exit 1
    fi
    rm -f -- "$tmp"
    sync -- "$dir" || exit 1
}

fetch() {
    [ -f "$1.$ext" ] || exit 1
    if ! decode "$1.$ext" >"$2"; then
        echo "$me: could not restore $1.$ext to $2" >&2
        rm -f -- "$2"
        exit 1
    fi
}

if [ $# -eq 4 ]; then
    key=$4
    ext=gpg
fi
if [ $# -ge 3 ] && [ $# -le 4 ] && [ "$1" = push ]; then
    push "$2" "$3"
elif [ $# -ge 3 ] && [ $# -le 4 ] && [ "$1" = fetch ]; then
    fetch "$2" "$3"
else
    echo "usage: $me push SRC DIR/NAME [KEY] | $me fetch DIR/NAME DST [KEY]" >&2
    exit 2
fi
"#;

/// The archive script's text (the benchmark runs it as members do).
pub fn archive_script() -> &'static str {
    SCRIPT
}

/// The file an encrypted base backup is: pg_basebackup's tar of the data directory (with its
/// `backup_manifest` and the WAL it needs), encrypted like the archive.
pub const ENCRYPTED_BASE: &str = "base.tar.gpg";
/// The key files in the member's root (0600, the member user's) and gpg's home beside them.
const ARCHIVE_KEY: &str = "archive.key";
const RESTORE_KEY: &str = "restore.key";
const GNUPG_HOME: &str = "gnupg";

/// gpg with the key file, for [`Member::shell`] scripts: `$5` is gpg's home, `$6` the key
/// file.
const GPG_WITH_KEY_ARGS: &str = "gpg --batch --quiet --no-tty --homedir \"$5\" \
     --pinentry-mode loopback --no-symkey-cache --passphrase-file \"$6\"";

/// Key material for encrypted backups (the passphrase of OpenPGP's symmetric encryption). Its
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupKey(String);

impl BackupKey {
    /// A key; None if it is empty.
    pub fn new(material: impl Into<String>) -> Option<BackupKey> {
        let material = material.into();
        (!material.is_empty()).then_some(BackupKey(material))
    }
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

/// Where a restored member's recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The snapshot as it is: recovery ends as soon as the backup is consistent.
    Immediate,
    /// A point in time: the snapshot, then the WAL archived in `wal_dir` up to the last commit
    /// at or before `time_unix_micros`. The archive must hold a commit after it. `timeline`
    /// is the history to follow (`recovery_target_timeline`): a named one stays on it even
    /// when newer timelines branched off it (a backtracked cluster's archive holds both);
    /// None follows the newest.
    Time {
        wal_dir: PathBuf,
        time_unix_micros: i64,
        timeline: Option<u32>,
    },
}

/// What a base backup holds ([`Member::base_backup`]), from its `backup_manifest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// Where replay of the backup starts (its checkpoint's redo point).
    pub start_lsn: u64,
    /// Where the backup is consistent: a restore replays at least up to here.
    pub end_lsn: u64,
    /// The timeline the backup ends on.
    pub timeline: u32,
    /// The backup's files, in bytes.
    pub size_bytes: u64,
}

/// A committed heartbeat ([`Member::heartbeat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// PostgreSQL's clock before the commit: once the commit is archived, a restore to this
    /// time can be done.
    pub at_unix_micros: i64,
    /// The writer's WAL position after the commit.
    pub lsn: u64,
}

/// The archiver's progress (`pg_stat_archiver`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiverStatus {
    /// The last file archived: a segment, a `.history` or a `.partial` file.
    pub last_archived_wal: Option<String>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time_unix_micros: Option<i64>,
}

/// The 16 MB segment a WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`, 24 hex digits) names, as
/// (timeline, segment number); None for anything else.
fn segment(walfile: &str) -> Option<(u32, u64)> {
    if walfile.len() != 24 || !walfile.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&walfile[..8], 16).ok()?;
    let log = u64::from_str_radix(&walfile[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&walfile[16..], 16).ok()?;
    let per_log = 0x1_0000_0000 / WAL_SEGMENT_SIZE;
    if seg >= per_log {
        return None;
    }
    Some((timeline, log * per_log + seg))
}

/// The LSN where the segment a WAL file name names ends (a heartbeat is archived once the last
/// archived segment ends at or after its LSN); None for `.history`, `.partial` and any other
/// name.
pub fn segment_end_lsn(walfile: &str) -> Option<u64> {
    segment(walfile).map(|(_, n)| (n + 1) * WAL_SEGMENT_SIZE)
}

/// The end LSN of the segment an archived file holds WAL of: `SEG.gz`, `SEG.partial.gz`, and
/// the backup history files `SEG.OFFSET.backup.gz` (useless without their segment). None for
/// `.history.gz`, which are kept, and files that are not the archive's.
fn archived_segment_end(name: &str) -> Option<u64> {
    let name = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".gpg"))?;
    let seg = match name.strip_suffix(".partial") {
        Some(seg) => seg,
        None => match name.strip_suffix(".backup") {
            Some(backup) => backup.split_once('.')?.0,
            None => name,
        },
    };
    segment_end_lsn(seg)
}

/// Removes from the WAL archive `dir` the segments (any timeline, `.partial` ones too) that end
/// at or before `before_lsn` (the oldest kept snapshot's start), and backup history files of
/// those segments. Timeline `.history` files are kept. Returns how many files were removed.
/// Blocking.
pub fn prune_wal(dir: &Path, before_lsn: u64) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(end) = name.to_str().and_then(archived_segment_end) else {
            continue;
        };
        if end <= before_lsn {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Pruned concurrently: gone is what was wanted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// A time as a PostgreSQL `timestamptz` literal in UTC, to the microsecond:
/// `2026-11-27 10:00:00.123456+00`.
fn timestamptz_literal(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}+00",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// A word for `sh`: single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A string for postgresql.conf: quotes doubled, backslashes escaped.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A path in an `archive_command` / `restore_command`, where `%` is PostgreSQL's escape.
fn command_path(path: &Path) -> String {
    sh_quote(&path.to_string_lossy()).replace('%', "%%")
}

/// The WAL ranges of a `backup_manifest`: (timeline, start, end) for each.
fn manifest_wal_ranges(manifest: &str) -> Option<Vec<(u32, u64, u64)>> {
    // PostgreSQL writes the manifest with a fixed layout: one object per range, its fields
    // on one line. Read by hand rather than with a JSON library for three fields.
    let (_, rest) = manifest.split_once("\"WAL-Ranges\"")?;
    let (list, _) = rest.split_once(']')?;
    let field = |object: &str, name: &str| -> Option<String> {
        let (_, after) = object.split_once(&format!("\"{name}\""))?;
        let value = after.trim_start().strip_prefix(':')?.trim_start();
        let end = value.find([',', '}']).unwrap_or(value.len());
        Some(value[..end].trim().trim_matches('"').to_string())
    };
    let mut ranges = Vec::new();
    for object in list.split('{').skip(1) {
        ranges.push((
            field(object, "Timeline")?.parse().ok()?,
            parse_lsn(&field(object, "Start-LSN")?)?,
            parse_lsn(&field(object, "End-LSN")?)?,
        ));
    }
    (!ranges.is_empty()).then_some(ranges)
}

/// The size of the files under `dir`, in bytes. Blocking.
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut size = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        size += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(size)
}

/// Runs blocking file work off the tokio workers.
pub(crate) async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io(what)),
        Err(e) => Err(io(what)(std::io::Error::other(e))),
    }
}

/// Removes `dir` and what it holds, if it exists. Blocking.
pub(crate) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsync a directory, so that an entry renamed into it stays after a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsync {}", dir.display())))
}

fn bad_output(command: &str, output: String) -> Error {
    Error::Failed {
        command: command.into(),
        status: "unexpected output".into(),
        stderr: output,
    }
}

impl Member {
    /// The archive script's path (`ROOT/hanul-archive-wal`).
    pub fn archive_script(&self) -> PathBuf {
        self.root.join(ARCHIVE_SCRIPT)
    }

    /// Writes the archive script (0755, the writer's own: postgres runs it, cannot change it),
    /// replacing it atomically: a running archiver may start it at any time.
    fn install_archive_script(&self) -> Result<PathBuf> {
        let path = self.archive_script();
        if std::fs::read_to_string(&path).is_ok_and(|t| t == SCRIPT) {
            return Ok(path);
        }
        let tmp = self.root.join(format!(".{ARCHIVE_SCRIPT}.tmp"));
        std::fs::write(&tmp, SCRIPT).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        Ok(path)
    }

    /// hanul.conf's lines for archiving ([`Member::archive_dir`]) and a restore's recovery
    /// ([`Member::recovery`]); writes the archive script when one is used.
    pub(crate) fn backup_settings(&self) -> Result<String> {
        let mut conf = String::new();
        let restoring_wal = matches!(self.recovery, Some(RestoreTarget::Time { .. }));
        let archive_key = self.write_key(ARCHIVE_KEY, self.backup_key.as_ref())?;
        let restore_key = self.write_key(
            RESTORE_KEY,
            self.restore_key.as_ref().filter(|_| restoring_wal),
        )?;
        if self.archive_dir.is_none() && self.recovery.is_none() {
            return Ok(conf);
        }
        let script = self.install_archive_script()?;
        let key_arg = |key: &Option<PathBuf>| {
            key.as_ref()
                .map(|k| format!(" {}", command_path(k)))
                .unwrap_or_default()
        };
        if let Some(dir) = &self.archive_dir {
            let command = format!(
                "{} push %p {}/%f{}",
                command_path(&script),
                command_path(dir),
                key_arg(&archive_key)
            );
            // always: standbys archive too; archive_timeout = 0: the writer's heartbeats and
            // WAL switches decide when a partly filled segment is archived.
            conf.push_str(&format!(
                "archive_mode = always\narchive_command = {}\narchive_timeout = 0\n",
                conf_quote(&command)
            ));
        }
        match &self.recovery {
            None => {}
            // PostgreSQL 15 refuses recovery.signal without a restore_command ("must specify
            // restore_command when standby mode is not enabled"); the snapshot has all the
            // WAL it needs, so the command finds nothing.
            Some(RestoreTarget::Immediate) => conf.push_str(
                "restore_command = 'false'\n\
                 recovery_target = 'immediate'\n\
                 recovery_target_action = 'promote'\n",
            ),
            Some(RestoreTarget::Time {
                wal_dir,
                time_unix_micros,
                timeline,
            }) => {
                let command = format!(
                    "{} fetch {}/%f %p{}",
                    command_path(&script),
                    command_path(wal_dir),
                    key_arg(&restore_key)
                );
                conf.push_str(&format!(
                    "restore_command = {}\n\
                     recovery_target_time = '{}'\n\
                     recovery_target_inclusive = on\n\
                     recovery_target_timeline = '{}'\n\
                     recovery_target_action = 'promote'\n",
                    conf_quote(&command),
                    timestamptz_literal(*time_unix_micros),
                    timeline.map_or("latest".to_string(), |t| t.to_string())
                ));
            }
        }
        Ok(conf)
    }

    /// Writes `key` into the file `name` in the member's root (0600, the member user's, gpg's
    /// home beside it) and returns its path; with None removes the file. The key reaches
    /// gpg only through this file: never on a command line, never in hanul.conf.
    fn write_key(&self, name: &str, key: Option<&BackupKey>) -> Result<Option<PathBuf>> {
        let path = self.root.join(name);
        let Some(BackupKey(material)) = key else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing {}", path.display()))(e));
                }
                _ => return Ok(None),
            }
        };
        if std::fs::read_to_string(&path).is_ok_and(|t| t == *material) {
            return Ok(Some(path));
        }
        self.private_dir(&self.root.join(GNUPG_HOME))?;
        let tmp = self.root.join(format!(".{name}.tmp"));
        // Created 0600 before the key is written into it.
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("creating {}", tmp.display())))?;
        self.write_owned(&tmp, material)?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        Ok(Some(path))
    }

    /// A system program (not PostgreSQL's) run as the member's user: `bash -c SCRIPT` with
    /// `args` as `$1`... (bash for `pipefail`).
    fn shell(&self, script: &str, args: &[&std::ffi::OsStr]) -> Command {
        let mut c = Command::new("/bin/bash");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.root)
            .stdin(std::process::Stdio::null())
            .args(["-c", &format!("set -euo pipefail\n{script}"), "hanul"])
            .args(args);
        c
    }

    /// Creates `dir` (and its missing parents) for the WAL archive: 0700, owned by the
    /// member's user, like each level this creates (`wal/` the first time).
    pub fn prepare_archive_dir(&self, dir: &Path) -> Result<()> {
        self.owned_dir(dir)
    }

    /// Makes `dir` the member user's, 0700, creating it if missing, and so each missing level
    /// above it; levels that exist above it are left as they are.
    fn owned_dir(&self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut level = Some(dir);
        while let Some(d) = level.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d);
            level = d.parent();
        }
        for d in missing.into_iter().rev() {
            self.private_dir(d)?;
        }
        self.private_dir(dir)
    }

    /// A base backup of this running member (a writer or a standby) into `dest`, which must
    /// not exist; its parent (hanul's directory of snapshots, never a shared one like `/tmp`)
    /// is created if missing and made the member user's, 0700. `pg_basebackup` through the
    /// member's socket as the superuser, a fast checkpoint, the WAL streamed along, a plain
    /// data directory. It is made in `dest.partial` (a leftover of an interrupted attempt is
    /// removed first), then renamed.
    pub async fn base_backup(&self, dest: &Path) -> Result<BackupInfo> {
        if dest.exists() {
            return Err(Error::BackupExists(dest.to_owned()));
        }
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let parent = dest.parent().unwrap_or(Path::new("."));
        self.owned_dir(parent)?;
        let p = partial.clone();
        blocking(format!("removing {}", partial.display()), move || {
            remove_tree(&p)
        })
        .await?;
        let (manifest, size_bytes) = match self.backup_key.clone() {
            None => self.plain_base_backup(&partial).await?,
            Some(key) => self.encrypted_base_backup(&partial, &key).await?,
        };
        let ranges = manifest_wal_ranges(&manifest).ok_or_else(|| Error::BackupManifest {
            path: dest.join("backup_manifest"),
            reason: "no WAL-Ranges with Timeline, Start-LSN and End-LSN".into(),
        })?;
        std::fs::rename(&partial, dest).map_err(io(format!("renaming {}", partial.display())))?;
        sync_dir(parent)?;
        // A backup that crosses a promotion has a range per timeline: it starts on the first
        // and ends on the last.
        let (timeline, _, end_lsn) = ranges
            .iter()
            .copied()
            .max_by_key(|&(tli, _, end)| (end, tli))
            .unwrap_or_default();
        Ok(BackupInfo {
            start_lsn: ranges.iter().map(|r| r.1).min().unwrap_or_default(),
            end_lsn,
            timeline,
            size_bytes,
        })
    }

    /// pg_basebackup into the plain data directory `partial`: its manifest and size.
    async fn plain_base_backup(&self, partial: &Path) -> Result<(String, u64)> {
        let mut c = self.command("pg_basebackup");
        c.arg("-D")
            .arg(partial)
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.superuser,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ]);
        self.run(c, "pg_basebackup").await?;
        let manifest_path = partial.join("backup_manifest");
        let manifest = std::fs::read_to_string(&manifest_path)
            .map_err(io(format!("reading {}", manifest_path.display())))?;
        let p = partial.to_owned();
        let size_bytes = blocking(format!("measuring {}", partial.display()), move || {
            tree_size(&p)
        })
        .await?;
        Ok((manifest, size_bytes))
    }

    /// pg_basebackup's tar format on stdout, through gpg, into `partial/base.tar.gpg`: the
    /// data never reaches the disk in plain text. The WAL the backup needs is fetched into the
    /// tar at its end (`-X fetch`: streaming needs a directory; the writer keeps
    /// `wal_keep_size` of WAL) and pg_basebackup adds `backup_manifest` to the tar. Returns the
    /// manifest (read back by decrypting) and the encrypted file's size.
    async fn encrypted_base_backup(
        &self,
        partial: &Path,
        key: &BackupKey,
    ) -> Result<(String, u64)> {
        self.private_dir(partial)?;
        let key_file = self
            .write_key(ARCHIVE_KEY, Some(key))?
            .unwrap_or_else(|| self.root.join(ARCHIVE_KEY));
        let gnupg = self.root.join(GNUPG_HOME);
        let out = partial.join(ENCRYPTED_BASE);
        let port = self.port.to_string();
        let basebackup = self.bin.path("pg_basebackup");
        let c = self.shell(
            &format!(
                "\"$1\" -D - -F tar -X fetch -c fast --no-password -h \"$2\" -p \"$3\" -U \"$4\" \
                 | {GPG} --symmetric --cipher-algo AES256 --output \"$7\"",
                GPG = GPG_WITH_KEY_ARGS
            ),
            &[
                basebackup.as_os_str(),
                self.socket_dir.as_os_str(),
                port.as_ref(),
                self.superuser.as_ref(),
                gnupg.as_os_str(),
                key_file.as_os_str(),
                out.as_os_str(),
            ],
        );
        self.run(c, "pg_basebackup | gpg").await?;
        let manifest = self.decrypt_manifest(&out, &key_file).await?;
        let size_bytes = std::fs::metadata(&out)
            .map_err(io(format!("measuring {}", out.display())))?
            .len();
        Ok((manifest, size_bytes))
    }

    /// The `backup_manifest` inside an encrypted base backup.
    async fn decrypt_manifest(&self, file: &Path, key_file: &Path) -> Result<String> {
        let gnupg = self.root.join(GNUPG_HOME);
        let c = self.shell(
            &format!("{GPG_WITH_KEY_ARGS} --decrypt -- \"$1\" | tar -xOf - backup_manifest"),
            &[
                file.as_os_str(),
                std::ffi::OsStr::new(""),
                std::ffi::OsStr::new(""),
                std::ffi::OsStr::new(""),
                gnupg.as_os_str(),
                key_file.as_os_str(),
            ],
        );
        self.run(c, "gpg --decrypt | tar (backup_manifest)").await
    }

    /// Makes this member's data directory (which must not hold a cluster) a copy of the base
    /// backup `snapshot`, set to recover to `target` and then promote itself onto a new
    /// timeline, as a writer (no upstream). The caller starts it, waits with
    /// [`Member::wait_promoted`], then calls [`Member::finish_restore`]. If
    /// [`Member::archive_dir`] is set, the new cluster archives there from its start.
    pub async fn restore_from(&mut self, snapshot: &Path, target: RestoreTarget) -> Result<()> {
        let not_empty = std::fs::read_dir(&self.data_dir).is_ok_and(|mut d| d.next().is_some());
        if self.initialized() || not_empty {
            return Err(Error::RestoreTargetNotEmpty(self.data_dir.clone()));
        }
        let encrypted = snapshot.join(ENCRYPTED_BASE);
        let encrypted = encrypted.is_file().then_some(encrypted);
        if encrypted.is_none() && !snapshot.join("PG_VERSION").is_file() {
            return Err(Error::NotABackup(snapshot.to_owned()));
        }
        if encrypted.is_some() && self.restore_key.is_none() {
            return Err(Error::NoBackupKey(snapshot.to_owned()));
        }
        std::fs::create_dir_all(&self.root).map_err(io("creating the member's root"))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod the member's root"))?;
        self.private_dir(&self.socket_dir)?;
        // Copied aside, then renamed: an interrupted copy never looks like a cluster.
        let staging = self.root.join("pgdata.restoring");
        let s = staging.clone();
        blocking(format!("removing {}", staging.display()), move || {
            remove_tree(&s)
        })
        .await?;
        match (&encrypted, &self.restore_key) {
            (Some(file), Some(key)) => {
                // Decrypted straight into the staging directory, by the member's user.
                self.private_dir(&staging)?;
                let key_file = self
                    .write_key(RESTORE_KEY, Some(key))?
                    .unwrap_or_else(|| self.root.join(RESTORE_KEY));
                let gnupg = self.root.join(GNUPG_HOME);
                let c = self.shell(
                    &format!("{GPG_WITH_KEY_ARGS} --decrypt -- \"$1\" | tar -xf - -C \"$2\""),
                    &[
                        file.as_os_str(),
                        staging.as_os_str(),
                        std::ffi::OsStr::new(""),
                        std::ffi::OsStr::new(""),
                        gnupg.as_os_str(),
                        key_file.as_os_str(),
                    ],
                );
                self.run(c, "gpg --decrypt | tar (restore)").await?;
            }
            _ => {
                let mut c = Command::new("cp");
                c.env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .args(["-a", "--reflink=auto", "--no-target-directory", "--"])
                    .arg(snapshot)
                    .arg(&staging);
                self.run(c, "cp (restore)").await?;
                if let Some((uid, gid)) = self.owner {
                    let mut c = Command::new("chown");
                    c.env_clear()
                        .env("PATH", "/usr/bin:/bin")
                        .args(["-R", "--no-dereference", &format!("{uid}:{gid}"), "--"])
                        .arg(&staging);
                    self.run(c, "chown (restore)").await?;
                }
            }
        }
        self.install_restored(&staging, target)
    }

    /// Puts the restored files in `staging` (beside the data directory) in place of the empty
    /// data directory, set to recover to `target` and then promote (see
    /// [`Member::restore_from`]). Shared with the local copy of a running member
    /// ([`Member::copy_running`]).
    pub(crate) fn install_restored(&mut self, staging: &Path, target: RestoreTarget) -> Result<()> {
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", staging.display())))?;
        // The source's state, not the new cluster's.
        for name in [
            "postmaster.pid",
            "postmaster.opts",
            "standby.signal",
            "recovery.signal",
            "backup_manifest",
        ] {
            let path = staging.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing {}", path.display()))(e));
                }
                _ => {}
            }
        }
        if self.data_dir.exists() {
            // Empty (checked above): rename replaces only a directory that is not.
            std::fs::remove_dir(&self.data_dir)
                .map_err(io(format!("removing {}", self.data_dir.display())))?;
        }
        std::fs::rename(staging, &self.data_dir)
            .map_err(io(format!("renaming {}", staging.display())))?;
        sync_dir(&self.root)?;
        self.upstream = None;
        self.detached = false;
        self.recovery = Some(target);
        self.write_owned(&self.data_dir.join("recovery.signal"), "")?;
        self.configure()
    }

    /// After a restored member's promotion: its recovery settings leave hanul.conf (a running
    /// member reads the file again on its next reload).
    pub fn finish_restore(&mut self) -> Result<()> {
        self.recovery = None;
        self.write_conf()
    }

    /// The writer's current WAL position (`pg_current_wal_lsn()`).
    pub async fn current_wal_lsn(&self) -> Result<u64> {
        let out = self
            .query("postgres", "select pg_current_wal_lsn()")
            .await?;
        parse_lsn(&out).ok_or_else(|| bad_output("psql (pg_current_wal_lsn)", out))
    }

    /// Ends the writer's current WAL segment (`pg_switch_wal()`), so that it is archived.
    pub async fn switch_wal(&self) -> Result<()> {
        self.query("postgres", "select pg_switch_wal()")
            .await
            .map(drop)
    }

    /// Commits a transaction with an xid (its commit record carries a time) on the writer.
    /// `at` is PostgreSQL's clock before the commit, and the commit is at least a
    /// millisecond later: a restore to `at` stops right before this commit, which must be in
    /// the archive for the restore to end where asked.
    pub async fn heartbeat(&self) -> Result<Heartbeat> {
        // The target list is evaluated in order: the clock, the xid, the sleep; the commit
        // follows the statement.
        let out = self
            .query(
                "postgres",
                "select (extract(epoch from clock_timestamp()) * 1000000)::bigint, \
                 txid_current(), pg_sleep(0.001)",
            )
            .await?;
        let at_unix_micros = out
            .split('|')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad_output("psql (heartbeat)", out.clone()))?;
        Ok(Heartbeat {
            at_unix_micros,
            lsn: self.current_wal_lsn().await?,
        })
    }

    /// The archiver's progress (`pg_stat_archiver`), on a writer or a standby.
    pub async fn archiver(&self) -> Result<ArchiverStatus> {
        let out = self
            .query(
                "postgres",
                "select coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), \
                 coalesce((extract(epoch from last_failed_time) * 1000000)::bigint::text, '') \
                 from pg_stat_archiver",
            )
            .await?;
        let f: Vec<&str> = out.trim_end_matches('\n').split('|').collect();
        let [archived, failed, failed_at] = f[..] else {
            return Err(bad_output("psql (pg_stat_archiver)", out));
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(ArchiverStatus {
            last_archived_wal: some(archived),
            last_failed_wal: some(failed),
            last_failed_time_unix_micros: failed_at.parse().ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::tests::{Fixture, free_port, log, poll, start, stop};
    use std::time::Duration;

    #[test]
    fn segment_names_end_where_their_16_mb_end() {
        assert_eq!(
            segment_end_lsn("000000010000000000000001"),
            Some(0x200_0000)
        );
        assert_eq!(
            segment_end_lsn("000000020000000A000000FF"),
            Some(0xB_0000_0000)
        );
        assert_eq!(
            segment_end_lsn("0000000100000003000000A0"),
            Some((3 << 32) + 0xA1 * WAL_SEGMENT_SIZE)
        );
        for other in [
            "00000002.history",
            "000000010000000000000001.partial",
            "000000010000000000000001.00000028.backup",
            "0000000100000000000001",
            "00000001000000000000010G",
            // Not a 16 MB segment's number.
            "000000010000000000000100",
        ] {
            assert_eq!(segment_end_lsn(other), None, "{other}");
        }
    }

    #[test]
    fn pruning_removes_old_segments_of_any_timeline_and_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "000000010000000000000001.gz",
            "000000010000000000000002.gz",
            "000000010000000000000003.partial.gz",
            "000000010000000000000002.00000028.backup.gz",
            "000000020000000000000003.gz",
            "000000020000000000000004.gz",
            "000000030000000100000000.gz",
            "00000002.history.gz",
            "00000003.history.gz",
            ".000000020000000000000005.Ab12Cd",
            "notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        // Segment 3 (0/3000000..0/4000000) ends at 0/4000000.
        assert_eq!(prune_wal(dir.path(), 0x400_0000).unwrap(), 5);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".000000020000000000000005.Ab12Cd",
                "00000002.history.gz",
                "000000020000000000000004.gz",
                "00000003.history.gz",
                "000000030000000100000000.gz",
                "notes.txt",
            ]
        );
        assert_eq!(prune_wal(dir.path(), 0x400_0000).unwrap(), 0);
    }

    #[test]
    fn times_render_as_utc_timestamptz_literals() {
        assert_eq!(timestamptz_literal(0), "1970-01-01 00:00:00.000000+00");
        // date -u -d '2026-11-27 10:00:00' +%s
        assert_eq!(
            timestamptz_literal(1_795_773_600_123_456),
            "2026-11-27 10:00:00.123456+00"
        );
        assert_eq!(timestamptz_literal(-1), "1969-12-31 23:59:59.999999+00");
        assert_eq!(
            timestamptz_literal(951_782_400_000_001),
            "2000-02-29 00:00:00.000001+00"
        );
    }

    #[test]
    fn manifests_give_the_backups_wal_ranges() {
        let manifest = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2024-01-01 00:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "c9b2e1a5" }
],
"WAL-Ranges": [
{ "Timeline": 2, "Start-LSN": "0/5000000", "End-LSN": "1/A0000100" },
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/5000000" }
],
"Manifest-Checksum": "0"}
"#;
        assert_eq!(
            manifest_wal_ranges(manifest).unwrap(),
            [(2, 0x500_0000, 0x1_A000_0100), (1, 0x200_0028, 0x500_0000)]
        );
        assert_eq!(manifest_wal_ranges("{}"), None);
    }

    /// Runs the archive script; returns (success, stderr).
    fn script(path: &Path, args: &[&Path]) -> (bool, String) {
        let out = std::process::Command::new(path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The archive script: a push is idempotent (a second push of the same bytes succeeds,
    /// different bytes under an archived name fail with a message and change nothing), files
    /// are compressed, a fetch gives back the bytes, and one of a missing file fails quietly.
    #[test]
    fn the_archive_script_pushes_idempotently_and_fetches() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let m = Member::new(bin, &dir.path().join("m1"), free_port(), "master").unwrap();
        std::fs::create_dir_all(&m.root).unwrap();
        let sh = m.install_archive_script().unwrap();
        let mode = std::fs::metadata(&sh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let archive = dir.path().join("wal");
        std::fs::create_dir(&archive).unwrap();
        let seg = dir.path().join("000000010000000000000001");
        let bytes: Vec<u8> = (0..16 * 1024 * 1024u32)
            .map(|i| if i < 4096 { (i % 251) as u8 } else { 0 })
            .collect();
        std::fs::write(&seg, &bytes).unwrap();
        let dst = archive.join("000000010000000000000001");
        let gz = archive.join("000000010000000000000001.gz");

        assert_eq!(
            script(&sh, &[Path::new("push"), &seg, &dst]),
            (true, String::new())
        );
        assert!(std::fs::metadata(&gz).unwrap().len() < 100_000);
        // Again, the same bytes (a promoted standby archiving what the writer did).
        assert_eq!(
            script(&sh, &[Path::new("push"), &seg, &dst]),
            (true, String::new())
        );

        let other = dir.path().join("other");
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        std::fs::write(&other, &changed).unwrap();
        let (ok, stderr) = script(&sh, &[Path::new("push"), &other, &dst]);
        assert!(!ok);
        assert!(stderr.contains("differs"), "{stderr}");

        let back = dir.path().join("back");
        let (ok, stderr) = script(&sh, &[Path::new("fetch"), &dst, &back]);
        assert!(ok, "{stderr}");
        assert!(std::fs::read(&back).unwrap() == bytes);
        // A .partial of another restore's branch under a taken name: the first stays, the push
        // succeeds (the archiver must not stall on a file that is never restored).
        let partial = archive.join("000000010000000000000001.partial");
        std::fs::write(&seg, b"first").unwrap();
        assert!(script(&sh, &[Path::new("push"), &seg, &partial]).0);
        std::fs::write(&other, b"second").unwrap();
        let (ok, stderr) = script(&sh, &[Path::new("push"), &other, &partial]);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("keeping it"), "{stderr}");
        let kept = archive.join("000000010000000000000001.partial.gz");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&kept)
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"first");
        std::fs::remove_file(&kept).unwrap();
        let missing = archive.join("000000010000000000000002");
        let (ok, stderr) = script(&sh, &[Path::new("fetch"), &missing, &back]);
        assert_eq!((ok, stderr.as_str()), (false, ""));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&archive).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    /// The files under `dir` (recursively) whose bytes, or whose gzip-decompressed bytes,
    /// hold `marker`.
    fn files_holding(dir: &Path, marker: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                    continue;
                }
                let mut bytes = std::fs::read(&path).unwrap();
                if bytes.starts_with(&[0x1f, 0x8b]) {
                    let out = std::process::Command::new("gzip")
                        .arg("-dc")
                        .arg(&path)
                        .output()
                        .unwrap();
                    bytes.extend(out.stdout);
                }
                if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                    found.push(path);
                }
            }
        }
        found
    }

    /// The archive script with a key file: files are stored encrypted as `NAME.gpg` (the
    /// bytes nowhere in plain text), a push of the same bytes again succeeds although
    /// encryption is randomised, one of other bytes fails, a fetch decrypts, a fetch with
    /// another key fails, and the key is never on the command line.
    #[test]
    fn the_archive_script_encrypts_pushes_idempotently_and_fetches() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let m = Member::new(bin, &dir.path().join("m1"), free_port(), "master").unwrap();
        std::fs::create_dir_all(&m.root).unwrap();
        let sh = m.install_archive_script().unwrap();
        let key = m
            .write_key(
                ARCHIVE_KEY,
                BackupKey::new("correct horse battery").as_ref(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(owner_and_mode(&key).1, 0o600);
        let wrong = m
            .write_key(RESTORE_KEY, BackupKey::new("another key").as_ref())
            .unwrap()
            .unwrap();
        let archive = dir.path().join("wal");
        m.prepare_archive_dir(&archive).unwrap();
        // Run as PostgreSQL runs it: as the member's user, who owns gpg's home.
        let script = |path: &Path, args: &[&Path]| {
            let mut c = std::process::Command::new(path);
            if let Some((uid, gid)) = m.owner {
                c.uid(uid.as_raw()).gid(gid.as_raw());
            }
            let out = c.args(args).output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let restored = dir.path().join("restored");
        m.private_dir(&restored).unwrap();
        let marker = "hanul-marker-7f3a";
        let seg = dir.path().join("000000010000000000000001");
        let mut bytes = vec![0u8; 1024 * 1024];
        for (i, chunk) in bytes.chunks_mut(4096).enumerate() {
            let line = format!("{marker} {i}");
            chunk[..line.len()].copy_from_slice(line.as_bytes());
        }
        std::fs::write(&seg, &bytes).unwrap();
        let dst = archive.join("000000010000000000000001");
        let push = |src: &Path| script(&sh, &[Path::new("push"), src, &dst, &key]);

        assert_eq!(push(&seg), (true, String::new()));
        assert!(archive.join("000000010000000000000001.gpg").is_file());
        assert!(!archive.join("000000010000000000000001.gz").exists());
        assert_eq!(files_holding(&archive, marker), Vec::<PathBuf>::new());
        let first = std::fs::read(archive.join("000000010000000000000001.gpg")).unwrap();
        assert_eq!(push(&seg), (true, String::new()));
        assert_eq!(
            std::fs::read(archive.join("000000010000000000000001.gpg")).unwrap(),
            first
        );

        let other = dir.path().join("other");
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        std::fs::write(&other, &changed).unwrap();
        let (ok, stderr) = push(&other);
        assert!(!ok);
        assert!(stderr.contains("differs"), "{stderr}");
        // The same bytes under the other key are "other bytes" too: never overwritten.
        let (ok, _) = script(&sh, &[Path::new("push"), &seg, &dst, &wrong]);
        assert!(!ok);

        let back = restored.join("back");
        let (ok, stderr) = script(&sh, &[Path::new("fetch"), &dst, &back, &key]);
        assert!(ok, "{stderr}");
        assert!(std::fs::read(&back).unwrap() == bytes);
        std::fs::remove_file(&back).unwrap();
        let (ok, _) = script(&sh, &[Path::new("fetch"), &dst, &back, &wrong]);
        assert!(!ok);
        assert!(!back.exists());
        // Plain and encrypted archives do not mix: without the key nothing is found.
        let (ok, stderr) = script(&sh, &[Path::new("fetch"), &dst, &back]);
        assert_eq!((ok, stderr.as_str()), (false, ""));
        let missing = archive.join("000000010000000000000002");
        let (ok, stderr) = script(&sh, &[Path::new("fetch"), &missing, &back, &key]);
        assert_eq!((ok, stderr.as_str()), (false, ""));
        let left: Vec<_> = std::fs::read_dir(&archive).unwrap().collect();
        assert_eq!(left.len(), 1);
        // Without a key the files go away.
        assert_eq!(m.write_key(ARCHIVE_KEY, None).unwrap(), None);
        assert!(!key.exists());
    }

    async fn rows(m: &Member) -> String {
        m.query("postgres", "select count(*), max(v) from t")
            .await
            .unwrap()
            .trim()
            .to_string()
    }

    fn owner_and_mode(path: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.mode() & 0o777)
    }

    /// Point-in-time restore, for real: a writer archives its WAL; a base backup, 100 rows, a
    /// heartbeat, 100 more rows; once the WAL is archived a new member restored to the
    /// heartbeat's time has exactly the first 100 rows, is a writer on a new timeline, and
    /// archives to its own archive.
    #[tokio::test]
    async fn a_restore_to_a_heartbeats_time_has_exactly_what_was_committed_before_it() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let archive = dir.path().join("backups/wal/c1-0123abcd");
        let mut m1 =
            Member::new(bin.clone(), &dir.path().join("m1"), free_port(), "master").unwrap();
        m1.prepare_archive_dir(&archive).unwrap();
        let postgres = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert_eq!(owner_and_mode(&archive), (postgres, 0o700));
        assert_eq!(owner_and_mode(archive.parent().unwrap()), (postgres, 0o700));
        m1.archive_dir = Some(archive.clone());
        m1.init("pw").await.unwrap();
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await, "{}", log(&m1));
        m1.query("postgres", "create table t (v int)")
            .await
            .unwrap();
        let snapshot = dir.path().join("backups/snapshots/s1");
        let info = m1.base_backup(&snapshot).await.unwrap();
        assert_eq!(info.timeline, 1);

        m1.query("postgres", "insert into t select generate_series(1, 100)")
            .await
            .unwrap();
        // No sleep around it: the restore stops at this heartbeat's commit to the microsecond.
        let target = m1.heartbeat().await.unwrap();
        m1.query("postgres", "insert into t select generate_series(101, 200)")
            .await
            .unwrap();
        let last = m1.heartbeat().await.unwrap();
        assert!(last.at_unix_micros > target.at_unix_micros && last.lsn > target.lsn);
        assert!(target.lsn > info.end_lsn);
        m1.switch_wal().await.unwrap();
        poll("the last heartbeat is archived", async || {
            let a = m1.archiver().await.unwrap();
            assert_eq!(a.last_failed_wal, None, "{}", log(&m1));
            let end = a.last_archived_wal.as_deref().and_then(segment_end_lsn)?;
            (end >= last.lsn).then_some(())
        })
        .await;

        let mut m2 = Member::new(bin, &dir.path().join("m2"), free_port(), "master").unwrap();
        let archive2 = dir.path().join("backups/wal/c2-4567cdef");
        m2.prepare_archive_dir(&archive2).unwrap();
        m2.archive_dir = Some(archive2.clone());
        m2.restore_from(
            &snapshot,
            RestoreTarget::Time {
                wal_dir: archive.clone(),
                time_unix_micros: target.at_unix_micros,
                timeline: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(owner_and_mode(&m2.data_dir), (postgres, 0o700));
        let r = start(&m2);
        assert!(m2.wait_ready(Duration::from_secs(30)).await, "{}", log(&m2));
        assert!(
            m2.wait_promoted(Duration::from_secs(30)).await.unwrap(),
            "{}",
            log(&m2)
        );
        m2.finish_restore().unwrap();
        let conf = std::fs::read_to_string(m2.data_dir.join("hanul.conf")).unwrap();
        assert!(!conf.contains("recovery_target"), "{conf}");
        assert!(conf.contains("archive_mode = always"), "{conf}");
        assert_eq!(rows(&m2).await, "100|100");
        assert!(!m2.in_recovery().await.unwrap());
        m2.query("postgres", "insert into t values (1000)")
            .await
            .unwrap();
        assert_eq!(m2.observe().await.unwrap().timeline, 2);
        // The new cluster archives to its own archive: its new timeline's history first.
        poll("the restored member archives its timeline", async || {
            archive2.join("00000002.history.gz").exists().then_some(())
        })
        .await;
        assert!(!archive.join("00000002.history.gz").exists());
        assert_eq!(rows(&m1).await, "200|200");
        stop(r).await;
        stop(w).await;
    }

    /// Two restores into the cluster's own archive, as two backtracks do: m1 (timeline 1)
    /// commits rows 1..=100, a heartbeat h1, rows 101..=200, a heartbeat h2, and stops. m2 is
    /// restored to h1 (100 rows), promotes onto timeline 2 and writes its own rows into the same
    /// archive. A restore to h2 that names timeline 1 has exactly rows 1..=200 and none of m2's
    /// where 'latest' (m4) follows timeline 2, which left timeline 1 at h1, and stops at 100
    /// rows. Each promotes onto a timeline of its own (3, 4), found from the history files
    /// in the archive, and archives into it without a failure.
    #[tokio::test]
    async fn a_restore_naming_an_old_timeline_goes_forward_again_past_a_newer_branch() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let archive = dir.path().join("backups/wal/c1-0123abcd");
        let mut m1 =
            Member::new(bin.clone(), &dir.path().join("m1"), free_port(), "master").unwrap();
        m1.prepare_archive_dir(&archive).unwrap();
        m1.archive_dir = Some(archive.clone());
        m1.init("pw").await.unwrap();
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await, "{}", log(&m1));
        m1.query("postgres", "create table t (v int)")
            .await
            .unwrap();
        let snapshot = dir.path().join("backups/snapshots/s1");
        m1.base_backup(&snapshot).await.unwrap();
        m1.query("postgres", "insert into t select generate_series(1, 100)")
            .await
            .unwrap();
        let h1 = m1.heartbeat().await.unwrap();
        m1.query("postgres", "insert into t select generate_series(101, 200)")
            .await
            .unwrap();
        let h2 = m1.heartbeat().await.unwrap();
        let last = m1.heartbeat().await.unwrap();
        m1.switch_wal().await.unwrap();
        poll("m1's last heartbeat is archived", async || {
            let a = m1.archiver().await.unwrap();
            let end = a.last_archived_wal.as_deref().and_then(segment_end_lsn)?;
            (end >= last.lsn).then_some(())
        })
        .await;
        stop(w).await;

        // Restores into `name`, archiving into the same archive; returns the running member.
        let restore = async |name: &str, to: &Heartbeat, timeline: Option<u32>| {
            let mut m =
                Member::new(bin.clone(), &dir.path().join(name), free_port(), "master").unwrap();
            m.archive_dir = Some(archive.clone());
            m.restore_from(
                &snapshot,
                RestoreTarget::Time {
                    wal_dir: archive.clone(),
                    time_unix_micros: to.at_unix_micros,
                    timeline,
                },
            )
            .await
            .unwrap();
            let conf = std::fs::read_to_string(m.data_dir.join("hanul.conf")).unwrap();
            let named = timeline.map_or("latest".to_string(), |t| t.to_string());
            assert!(
                conf.contains(&format!("recovery_target_timeline = '{named}'")),
                "{conf}"
            );
            let child = start(&m);
            assert!(m.wait_ready(Duration::from_secs(30)).await, "{}", log(&m));
            assert!(
                m.wait_promoted(Duration::from_secs(30)).await.unwrap(),
                "{}",
                log(&m)
            );
            m.finish_restore().unwrap();
            m.reload().await.unwrap();
            (m, child)
        };
        // Archives a heartbeat of `m` and checks that its archiver never failed.
        let archived = async |m: &Member| {
            m.query("postgres", "select 1").await.unwrap();
            let beat = m.heartbeat().await.unwrap();
            m.switch_wal().await.unwrap();
            poll("the heartbeat is archived", async || {
                let a = m.archiver().await.unwrap();
                assert_eq!(a.last_failed_wal, None, "{}", log(m));
                let end = a.last_archived_wal.as_deref().and_then(segment_end_lsn)?;
                (end >= beat.lsn).then_some(())
            })
            .await;
        };

        let (m2, c2) = restore("m2", &h1, Some(1)).await;
        assert_eq!(rows(&m2).await, "100|100");
        assert_eq!(m2.observe().await.unwrap().timeline, 2);
        m2.query("postgres", "insert into t values (1000)")
            .await
            .unwrap();
        archived(&m2).await;
        assert!(archive.join("00000002.history.gz").exists());
        stop(c2).await;

        // 'latest' follows timeline 2: it left timeline 1 at h1, and its own commits are
        // later than h2, so the rows of 101..=200 are not there.
        let (m4, c4) = restore("m4", &h2, None).await;
        assert_eq!(rows(&m4).await, "100|100");
        assert_eq!(m4.observe().await.unwrap().timeline, 3);
        archived(&m4).await;
        stop(c4).await;

        let (m3, c3) = restore("m3", &h2, Some(1)).await;
        assert_eq!(rows(&m3).await, "200|200");
        m3.query("postgres", "insert into t values (2000)")
            .await
            .unwrap();
        assert_eq!(m3.observe().await.unwrap().timeline, 4);
        archived(&m3).await;
        assert!(archive.join("00000004.history.gz").exists());
        stop(c3).await;
    }

    /// A snapshot of a standby, restored: a base backup of a running standby (a leftover of
    /// an interrupted one removed first), restored `Immediate` into a third member, which has
    /// the rows the writer had before the backup and none after, and is a writer.
    #[tokio::test]
    async fn a_standbys_snapshot_restores_into_a_new_writer() {
        let Some(f) = Fixture::new() else {
            return;
        };
        let p1 = free_port();
        let (m1, w) = f
            .writer(
                "m1",
                p1,
                "create table t (v int); insert into t select generate_series(1, 50)",
            )
            .await;
        let (m2, s) = f.standby("m2", free_port(), p1).await;
        let (bin, dir) = (f.bin.clone(), &f.dir);
        m1.query("postgres", "insert into t values (51)")
            .await
            .unwrap();
        poll("the standby has row 51", async || {
            (rows(&m2).await == "51|51").then_some(())
        })
        .await;

        let snapshot = dir.path().join("snapshots/s1");
        let partial = dir.path().join("snapshots/s1.partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("junk"), "x").unwrap();
        let info = m2.base_backup(&snapshot).await.unwrap();
        assert!(!partial.exists());
        assert!(snapshot.join("PG_VERSION").is_file());
        assert_eq!(info.timeline, 1);
        assert!(info.start_lsn <= info.end_lsn, "{info:?}");
        assert!(info.size_bytes > 1_000_000, "{info:?}");
        assert!(matches!(
            m2.base_backup(&snapshot).await,
            Err(Error::BackupExists(_))
        ));
        m1.query("postgres", "insert into t values (52)")
            .await
            .unwrap();

        let mut m3 = Member::new(bin, &dir.path().join("m3"), free_port(), "master").unwrap();
        assert!(matches!(
            m3.restore_from(&partial, RestoreTarget::Immediate).await,
            Err(Error::NotABackup(_))
        ));
        m3.restore_from(&snapshot, RestoreTarget::Immediate)
            .await
            .unwrap();
        assert!(matches!(
            m3.restore_from(&snapshot, RestoreTarget::Immediate).await,
            Err(Error::RestoreTargetNotEmpty(_))
        ));
        assert!(!m3.data_dir.join("standby.signal").exists());
        let r = start(&m3);
        assert!(m3.wait_ready(Duration::from_secs(30)).await, "{}", log(&m3));
        assert!(
            m3.wait_promoted(Duration::from_secs(30)).await.unwrap(),
            "{}",
            log(&m3)
        );
        m3.finish_restore().unwrap();
        assert_eq!(rows(&m3).await, "51|51");
        m3.query("postgres", "insert into t values (1000)")
            .await
            .unwrap();
        let o = m3.observe().await.unwrap();
        assert_eq!((o.in_recovery, o.timeline), (false, 2));
        stop(r).await;
        stop(s).await;
        stop(w).await;
    }

    /// An encrypted cluster, restored to a point in time: m1 encrypts its archive and its
    /// base backup (one `base.tar.gpg`); marker rows committed before and after the backup are
    /// nowhere in the backup directory in plain text (nor gzip-compressed); the key is in
    /// neither hanul.conf nor a command line. A restore without the key is refused; with it,
    /// m2 has exactly the rows committed before the heartbeat, and encrypts its own archive
    /// with its own key.
    #[tokio::test]
    async fn an_encrypted_backup_restores_to_a_point_in_time_and_nothing_is_in_plain_text() {
        let Some(Fixture { bin, dir }) = Fixture::new() else {
            return;
        };
        let backups = dir.path().join("backups");
        let archive = backups.join("wal/c1-0123abcd");
        let key = "k1-passphrase-aaaa";
        let mut m1 =
            Member::new(bin.clone(), &dir.path().join("m1"), free_port(), "master").unwrap();
        m1.prepare_archive_dir(&archive).unwrap();
        m1.archive_dir = Some(archive.clone());
        m1.backup_key = BackupKey::new(key);
        m1.init("pw").await.unwrap();
        let conf = std::fs::read_to_string(m1.data_dir.join("hanul.conf")).unwrap();
        assert!(!conf.contains(key), "{conf}");
        assert!(conf.contains("archive.key"), "{conf}");
        let w = start(&m1);
        assert!(m1.wait_ready(Duration::from_secs(30)).await, "{}", log(&m1));
        let (before, after) = ("marker-before-9c1e", "marker-after-4d2b");
        m1.query(
            "postgres",
            &format!(
                "create table t (v int); create table s (m text); insert into s values ('{before}')"
            ),
        )
        .await
        .unwrap();
        let snapshot = backups.join("snapshots/s1");
        let info = m1.base_backup(&snapshot).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&snapshot)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, [ENCRYPTED_BASE]);
        assert!(
            info.start_lsn <= info.end_lsn && info.timeline == 1,
            "{info:?}"
        );
        assert_eq!(
            info.size_bytes,
            std::fs::metadata(snapshot.join(ENCRYPTED_BASE))
                .unwrap()
                .len()
        );

        m1.query(
            "postgres",
            &format!(
                "insert into t select generate_series(1, 100); insert into s values ('{after}')"
            ),
        )
        .await
        .unwrap();
        let target = m1.heartbeat().await.unwrap();
        m1.query("postgres", "insert into t select generate_series(101, 200)")
            .await
            .unwrap();
        let last = m1.heartbeat().await.unwrap();
        m1.switch_wal().await.unwrap();
        poll("the last heartbeat is archived", async || {
            let a = m1.archiver().await.unwrap();
            assert_eq!(a.last_failed_wal, None, "{}", log(&m1));
            let end = a.last_archived_wal.as_deref().and_then(segment_end_lsn)?;
            (end >= last.lsn).then_some(())
        })
        .await;
        let archived: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !archived.is_empty() && archived.iter().all(|n| n.ends_with(".gpg")),
            "{archived:?}"
        );
        for marker in [before, after, key] {
            assert_eq!(files_holding(&backups, marker), Vec::<PathBuf>::new());
        }
        // Neither the marker rows' segments nor the snapshot are found without a key.
        let mut m0 =
            Member::new(bin.clone(), &dir.path().join("m0"), free_port(), "master").unwrap();
        assert!(matches!(
            m0.restore_from(&snapshot, RestoreTarget::Immediate).await,
            Err(Error::NoBackupKey(_))
        ));

        let mut m2 = Member::new(bin, &dir.path().join("m2"), free_port(), "master").unwrap();
        let archive2 = backups.join("wal/c2-4567cdef");
        m2.prepare_archive_dir(&archive2).unwrap();
        m2.archive_dir = Some(archive2.clone());
        m2.backup_key = BackupKey::new("k2-passphrase-bbbb");
        m2.restore_key = BackupKey::new(key);
        m2.restore_from(
            &snapshot,
            RestoreTarget::Time {
                wal_dir: archive.clone(),
                time_unix_micros: target.at_unix_micros,
                timeline: None,
            },
        )
        .await
        .unwrap();
        let conf = std::fs::read_to_string(m2.data_dir.join("hanul.conf")).unwrap();
        assert!(conf.contains("restore.key"), "{conf}");
        assert!(!conf.contains(key), "{conf}");
        let r = start(&m2);
        assert!(m2.wait_ready(Duration::from_secs(30)).await, "{}", log(&m2));
        assert!(
            m2.wait_promoted(Duration::from_secs(30)).await.unwrap(),
            "{}",
            log(&m2)
        );
        m2.finish_restore().unwrap();
        assert!(!m2.root.join(RESTORE_KEY).exists());
        assert_eq!(rows(&m2).await, "100|100");
        let markers = m2
            .query("postgres", "select string_agg(m, ',' order by m) from s")
            .await
            .unwrap();
        assert_eq!(markers.trim(), format!("{after},{before}"));
        poll(
            "the restored member archives its timeline, encrypted",
            async || archive2.join("00000002.history.gpg").exists().then_some(()),
        )
        .await;
        assert!(!archive2.join("00000002.history.gz").exists());
        stop(r).await;
        stop(w).await;
    }
}
