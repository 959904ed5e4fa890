//! Running PostgreSQL's helper programs (`initdb`, `psql`, `pg_ctl`, `pg_basebackup`,
//! `pg_rewind`) inside the agent. The agent is a child subreaper whose reaper thread waits on
//! every child (see the driver's reaper), so tokio cannot wait on them: they run through the
//! driver's [`crate::driver::run_tool`], their output read from pipes by two threads.

use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, ExitStatus, Output};

use hanul_db::{Exec, ExecFuture};

/// The agent's [`Exec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReapedExec;

impl Exec for ReapedExec {
    fn output(&self, cmd: Command) -> ExecFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || output(cmd))
                .await
                .map_err(std::io::Error::other)?
        })
    }
}

/// Runs `cmd` to its end. Blocking.
fn output(mut cmd: Command) -> std::io::Result<Output> {
    let (mut out_r, out_w) = std::io::pipe()?;
    let (mut err_r, err_w) = std::io::pipe()?;
    cmd.stdout(out_w).stderr(err_w);
    std::thread::scope(|s| {
        // The readers see the end once the child and `cmd` (which holds the write ends) are
        // both gone.
        let stdout = s.spawn(move || {
            let mut b = Vec::new();
            let _ = out_r.read_to_end(&mut b);
            b
        });
        let stderr = s.spawn(move || {
            let mut b = Vec::new();
            let _ = err_r.read_to_end(&mut b);
            b
        });
        let result = crate::driver::run_tool(&mut cmd);
        drop(cmd);
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let (code, signal) = result?;
        let status = match (code, signal) {
            (Some(c), _) => ExitStatus::from_raw((c & 0xff) << 8),
            (None, Some(s)) => ExitStatus::from_raw(s & 0x7f),
            _ => ExitStatus::from_raw(0xff << 8),
        };
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn helpers_run_through_the_reaper_with_their_output_and_status() {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = ReapedExec.output(c).await.unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    }
}
