//! Per-instance console log and its rotation.
//!
//! The workload writes `root/logs/console.log` itself: stdout and stderr are the same file
//! description, opened once with `O_APPEND` by the driver and duplicated onto both descriptors, so
//! the two streams interleave in the order they were written (like a terminal, or EC2's console
//! output) and output keeps flowing while the agent is down. Rotation is therefore copy-then-truncate (like logrotate's `copytruncate`): the writer
//! keeps its descriptor and, thanks to `O_APPEND`, continues at the new end of the truncated file.
//! Lines written between the copy and the truncation are lost; that is the price of not owning
//! the writer's descriptor.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// File name of the console log (stdout and stderr of the workload, interleaved).
pub const CONSOLE_LOG: &str = "console.log";

/// The directory of an instance's logs.
pub fn log_dir(root: &Path) -> PathBuf {
    root.join("logs")
}

/// The console log of the instance whose directory is `root`.
pub fn console_log(root: &Path) -> PathBuf {
    log_dir(root).join(CONSOLE_LOG)
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it holds at least `max_bytes`: `path.{keep-1}` → `path.{keep}`, …,
/// a copy of `path` → `path.1`, then `path` is truncated in place. With `keep == 0` the log is
/// only truncated. Returns whether it rotated. A missing file is not an error.
pub fn rotate_log_file(path: &Path, max_bytes: u64, keep: usize) -> Result<bool> {
    let err = |source: io::Error| Error::RotateLog {
        path: path.to_owned(),
        source,
    };
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    if len < max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        fs::copy(path, numbered(path, 1)).map_err(err)?;
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(0))
        .map_err(err)?;
    Ok(true)
}

/// Rotates the console log of the instance whose directory is `root`.
pub(crate) fn rotate_instance_logs(root: &Path, max_bytes: u64, keep: usize) -> Result<()> {
    rotate_log_file(&console_log(root), max_bytes, keep)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn rotation_keeps_numbered_copies_and_appending_writers_continue_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(b"first\n").unwrap();
        assert!(rotate_log_file(&log, 1, 2).unwrap());
        writer.write_all(b"second\n").unwrap();
        assert!(rotate_log_file(&log, 1, 2).unwrap());
        writer.write_all(b"third\n").unwrap();
        assert!(rotate_log_file(&log, 1, 2).unwrap());
        writer.write_all(b"fourth\n").unwrap();

        assert_eq!(fs::read_to_string(&log).unwrap(), "fourth\n");
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "third\n");
        assert_eq!(fs::read_to_string(numbered(&log, 2)).unwrap(), "second\n");
        assert!(!numbered(&log, 3).exists(), "only `keep` copies are kept");
    }

    #[test]
    fn an_instance_rotates_its_console_log() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(log_dir(dir.path())).unwrap();
        let log = console_log(dir.path());
        assert_eq!(log, dir.path().join("logs/console.log"));
        fs::write(&log, "out\nerr\n").unwrap();
        rotate_instance_logs(dir.path(), 1, 1).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "");
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "out\nerr\n");
    }

    #[test]
    fn a_log_below_the_size_limit_or_missing_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        assert!(!rotate_log_file(&log, 10, 3).unwrap());
        fs::write(&log, "short\n").unwrap();
        assert!(!rotate_log_file(&log, 1024, 3).unwrap());
        assert_eq!(fs::read_to_string(&log).unwrap(), "short\n");
    }
}
