//! hanul's database driver: what a node agent needs to run a member of a `DBCluster` on real
//! PostgreSQL (Debian's PostgreSQL 15 binaries, run as the `postgres` user).
//!
//! - [`postgres`]: one member's data directory, its configuration, the command that runs it,
//!   readiness and SQL through the member's own socket; a standby cloned from a writer with a
//!   base backup, streaming (synchronously when the writer lists it), and its promotion; the
//!   steps of a failover (a standby's detach and the WAL it holds, a repoint by reload, the
//!   synchronous set set live, fast and immediate stops) and [`Member::observe`], what a
//!   running member is and where its WAL stands.
//!
//! - [`backup`]: WAL archiving (every member, through an idempotent archive script), base
//!   backups of a writer or a standby, restores to a snapshot or a point in time, heartbeats
//!   and the archiver's progress (how far a cluster can be restored), and pruning of the
//!   archive; with a key, the archive and the base backups are encrypted (gpg, AES256).
//!
//! - [`copy`]: a copy of a running member on the same host (a clone's data), copy-on-write
//!   where the file system allows, set to recover like a restored snapshot.
//!
//! The agent supervises the `postgres` process with its process driver like any workload; this
//! crate only knows PostgreSQL. A former writer rejoins with `pg_rewind` ([`Member::rewind`]).

pub mod backup;
pub mod copy;
pub mod postgres;

pub use backup::{
    ArchiverStatus, BackupInfo, BackupKey, ENCRYPTED_BASE, Heartbeat, RestoreTarget, prune_wal,
    segment_end_lsn,
};
pub use copy::CopyMethod;
pub use postgres::{
    Binaries, Error, Exec, ExecFuture, Member, Observation, StopMode, TokioExec, Upstream,
};
