//! A simulation of a DB cluster with the real planner as its controller. PostgreSQL members and
//! their agents follow the protocol of `hanul_proto::db`, driven by random steps (commits,
//! replication, crashes, agents that die and come back, time, switchovers, backtracks and
//! their cancels, controller restarts),
//! and after every step the promises of the planner are checked:
//!
//! 1. no acknowledged commit is lost (but those a backtrack rewinds past, as the user asked):
//!    a member that becomes writer holds every commit any writer acknowledged so far, and so does the writer of the current epoch at every step; and the
//!    planner's own argument for it holds: while the synchronous set `S` is not empty, every
//!    acknowledged commit is on `k` of its members, so any `|S| - k + 1` voters include one;
//! 2. one writer: at most one member can acknowledge commits, and the endpoint rule selects at
//!    most that one, never a member whose agent stopped its PostgreSQL;
//! 3. a new epoch is never written while the old writer's agent lives, its PostgreSQL runs as
//!    writer and its lease is fresh, unless it reported itself down, or the new epoch is a
//!    backtrack of that same writer (which its agent stops before it restores), started only
//!    while the writer is up; a backtrack that ends with no timeline of its own was cancelled,
//!    and leaves no trace (`backtrackedTo`, `lastBacktrackTime`, the live timeline's archive
//!    end unchanged) and restarts the same writer in a newer epoch;
//! 4. liveness: once the faults stop, every agent runs and the steps are fair, the cluster is
//!    `available` within a bound, with every other member in the synchronous set, and a new
//!    commit is acknowledged.
//!
//! The model:
//! - a member's WAL is a list of records `(epoch, seq, timeline)` with unique `seq`s; its LSN is
//!   the list's length, so "holds a commit" is "has that record at that position" and two logs
//!   share history exactly as far as their common prefix;
//! - a writer acknowledges a commit once `k` members of the synchronous set it *applied*
//!   (`ANY k (...)`; the agent applies the status's set only on its own steps, so it lags) stream
//!   from it and have the record; with `k = 0` at once. An empty applied set with `k >= 1`
//!   acknowledges nothing: the agent must not turn it into `synchronous_standby_names = ''`
//!   (asynchronous), or a commit acknowledged during bootstrap could be on no voter;
//! - "replicate then ack": replication is its own step (a standby receives some records), and
//!   acknowledgements are checked after every step, so a commit is acknowledged at the first
//!   moment PostgreSQL could release it (the strongest setting for the checks);
//! - a stream breaks when its writer stops; only the agent connects it again (PostgreSQL's own
//!   retry would reconnect to the same server, which changes nothing here);
//! - an agent step does one thing, in this order: the old writer of a failover stops (cleanly,
//!   after sending its WAL to whoever streams, for a switchover; at once otherwise: the protocol
//!   does not say so, but a writer whose agent comes back during a writer-lost failover must,
//!   or the failover never ends); a standby votes (disconnect, then vote with its LSN and
//!   timeline); the member named writer in a newer epoch promotes or starts; the writer applies
//!   the synchronous set; any other member follows the writer of the current epoch: a voter of
//!   the new synchronous set repoints to it (no rewind: its WAL must be a prefix of the
//!   writer's), everyone else rewinds to the common prefix (a new member takes a base backup).
//!   Then it renews the lease if it runs a writer, and reports;
//! - a dead agent neither reports nor renews; its PostgreSQL keeps running and committing;
//! - the controller computes lease silences as `db::Context::lease_silence` does: from the
//!   moment it saw the renewals change, a first sight counting as a change.
//!
//! Left out: node loss (a crash and then a dead agent comes close), standby crashes, read
//! replicas and deleted members, nodes that are not Ready, the agent's self-fencing on failed
//! renewals (an agent is either up and renewing or dead), stale caches (the controller and the
//! agents read the latest objects), and the real LSNs' and timelines' arithmetic.
//!
//! # What it found
//! The planner's rules on the synchronous set (only voters with the candidate's WAL stay in it;
//! a member joins only once it holds all the writer reported), the end of a failover whose
//! candidate stopped right after its promotion, the lease of a member first seen after a
//! controller restart, and the old writer's agent stopping PostgreSQL when it sees itself
//! replaced all come from sequences this test shrank; so does the end of a backtrack whose
//! writer stopped right after its restore, before the controller saw it as writer.

use super::*;
use hanul_proto::db::{MULTI_AZ_CLUSTER, MULTI_AZ_INSTANCE, STATE_CREATING};
use hanul_proto::v1::FailoverSettings;
use proptest::prelude::*;

const LEASE_MS: u64 = 3_000;
/// Fair rounds (every agent, full replication, half a second, the controller) within which a
/// cluster without faults must be available again; 8 were the most seen.
const SETTLE_ROUNDS: usize = 20;

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200) + Duration::from_millis(ms)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pg {
    Writer,
    Standby,
}

/// A WAL record: the epoch of the writer that wrote it, a unique number and its timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    epoch: u64,
    seq: u64,
    timeline: u32,
}

fn timeline(wal: &[Rec]) -> u32 {
    wal.last().map_or(0, |r| r.timeline)
}

fn common_prefix(a: &[Rec], b: &[Rec]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A member: its PostgreSQL and its agent, and what the agent last reported.
#[derive(Clone, Debug)]
struct Server {
    name: String,
    /// What PostgreSQL runs as; `None`: not running.
    pg: Option<Pg>,
    /// The state reported while PostgreSQL does not run.
    down: &'static str,
    /// Its agent stopped PostgreSQL (a switchover, a fence); cleared when it starts again.
    stopped: bool,
    wal: Vec<Rec>,
    /// The member it streams from.
    upstream: Option<usize>,
    /// The epoch it last acted on.
    epoch: u64,
    vote: Option<(u64, u64, u32)>,
    lease_epoch: u64,
    renewals: u64,
    renewed_at: u64,
    agent: bool,
    /// The writer's `synchronous_standby_names` in effect: the set and `k`.
    applied: (Vec<String>, u32),
    /// Positions of this writer's commits not acknowledged yet.
    waiting: Vec<usize>,
    /// Its DBInstance as the controller reads it, and its `leaseRenewals`.
    reported: (Member, u64),
    /// The epoch of the backtrack it cancelled (its data from before put back).
    cancelled: u64,
}

#[derive(Clone, Debug)]
enum Step {
    Commit(usize),
    /// A standby receives up to n records from its writer.
    Replicate(usize, usize),
    /// The writer's PostgreSQL exits.
    Crash(usize),
    AgentDies(usize),
    AgentBack(usize),
    Time(u64),
    Agent(usize),
    Controller,
    ControllerRestart,
    Switchover(Option<usize>),
    /// The user asks for a backtrack to the first n records of the writer's WAL.
    Backtrack(usize),
    /// The user asks to cancel the backtrack under way.
    CancelBacktrack,
}

struct World {
    spec: DbClusterSpec,
    status: DbClusterStatus,
    nodes: Vec<NodeInfo>,
    servers: Vec<Server>,
    annotation: Option<String>,
    switchovers: u32,
    /// The backtrack annotation, and how many of its WAL records the writer keeps.
    backtrack: Option<String>,
    backtracks: u32,
    backtrack_keep: usize,
    /// The backtrack cancel annotation.
    cancel: Option<String>,
    cancels: u32,
    now: u64,
    seq: u64,
    /// Every acknowledged commit: its position and record.
    acked: Vec<(usize, Rec)>,
    /// The controller's lease bookkeeping: member → (leaseEpoch, renewals, seen at).
    leases: BTreeMap<String, (u64, u64, u64)>,
    started: u64,
    violation: Option<String>,
    trace: Vec<String>,
    /// In fair rounds: trace only what changes.
    quiet: bool,
}

impl World {
    fn new(deployment: &str, automatic: bool) -> World {
        let nodes = ["a", "b", "c"]
            .iter()
            .map(|z| NodeInfo {
                name: format!("node-{z}"),
                zone: format!("az-{z}"),
                address: format!("10.0.0.{}", z.as_bytes()[0] - b'a' + 1),
                ready: true,
                // Room for every member: the simulation is of the protocol, not of capacity
                // (the placement's unit tests are in `tests.rs`).
                free: Free {
                    cpu: 64_000,
                    mem: 256 * 1024,
                },
                clone_source: false,
            })
            .collect();
        World {
            spec: DbClusterSpec {
                deployment: deployment.into(),
                failover: Some(FailoverSettings {
                    automatic: Some(automatic),
                    lease_seconds: Some((LEASE_MS / 1000) as u32),
                }),
                ..Default::default()
            },
            status: DbClusterStatus::default(),
            nodes,
            servers: Vec::new(),
            annotation: None,
            switchovers: 0,
            backtrack: None,
            backtracks: 0,
            backtrack_keep: 0,
            cancel: None,
            cancels: 0,
            now: 0,
            seq: 0,
            acked: Vec::new(),
            leases: BTreeMap::new(),
            started: 0,
            violation: None,
            trace: Vec::new(),
            quiet: false,
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    fn note(&mut self, line: String) {
        self.trace.push(format!("[{:>6}ms] {line}", self.now));
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Whether a member can acknowledge commits now: a running writer with `k` members of its
    /// applied set streaming from it.
    fn can_ack(&self, w: usize) -> bool {
        let s = &self.servers[w];
        if s.pg != Some(Pg::Writer) {
            return false;
        }
        let (set, k) = &s.applied;
        *k == 0 || self.streaming_from(w, set, 0) >= *k as usize
    }

    /// How many members of `set` stream from `w` and have at least `records` of its WAL.
    fn streaming_from(&self, w: usize, set: &[String], records: usize) -> usize {
        set.iter()
            .filter_map(|n| self.idx(n))
            .filter(|&j| {
                let s = &self.servers[j];
                s.pg == Some(Pg::Standby) && s.upstream == Some(w) && s.wal.len() >= records
            })
            .count()
    }

    /// Releases every waiting commit that enough of its writer's applied set has.
    fn acknowledge(&mut self) {
        for w in 0..self.servers.len() {
            if self.servers[w].pg != Some(Pg::Writer) {
                continue;
            }
            let (set, k) = self.servers[w].applied.clone();
            let waiting = std::mem::take(&mut self.servers[w].waiting);
            let mut still = Vec::new();
            for p in waiting {
                if k == 0 || self.streaming_from(w, &set, p + 1) >= k as usize {
                    let rec = self.servers[w].wal[p].clone();
                    let line = format!("{} acknowledges {rec:?} at {p}", self.servers[w].name);
                    self.note(line);
                    self.acked.push((p, rec));
                } else {
                    still.push(p);
                }
            }
            self.servers[w].waiting = still;
        }
    }

    fn disconnect_from(&mut self, w: usize) {
        for s in &mut self.servers {
            if s.upstream == Some(w) {
                s.upstream = None;
            }
        }
    }

    /// PostgreSQL stops: its streams break and its waiting commits are never acknowledged.
    fn stop(&mut self, i: usize, state: &'static str, by_agent: bool) {
        self.disconnect_from(i);
        let s = &mut self.servers[i];
        s.pg = None;
        s.down = state;
        s.stopped = by_agent;
        s.upstream = None;
        s.waiting.clear();
    }

    fn renew(&mut self, i: usize) {
        let now = self.now;
        let s = &mut self.servers[i];
        s.lease_epoch = s.epoch;
        s.renewals += 1;
        s.renewed_at = now;
    }

    /// The agent writes its DBInstance's status.
    fn report(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if !s.agent {
            return;
        }
        let lsn = s.wal.len() as u64;
        let m = &mut s.reported.0;
        m.state = match s.pg {
            Some(_) => STATE_AVAILABLE,
            None => s.down,
        }
        .into();
        m.role = match s.pg {
            Some(Pg::Writer) => ROLE_WRITER,
            Some(Pg::Standby) => ROLE_STANDBY,
            None => "",
        }
        .into();
        m.epoch = s.epoch;
        m.timeline = timeline(&s.wal);
        m.flush_lsn = if s.pg == Some(Pg::Writer) { lsn } else { 0 };
        m.receive_lsn = if s.pg == Some(Pg::Standby) { lsn } else { 0 };
        m.replay_lsn = m.receive_lsn;
        m.streaming = s.upstream.is_some();
        m.lease_epoch = s.lease_epoch;
        m.vote = s.vote;
        m.backtrack_cancelled = s.cancelled;
        s.reported.1 = s.renewals;
    }

    fn step(&mut self, step: &Step) {
        let n = self.servers.len();
        if !self.quiet {
            self.note(format!("{step:?}"));
        }
        match *step {
            Step::Commit(i) if n > 0 => {
                let i = i % n;
                if self.servers[i].pg == Some(Pg::Writer) {
                    let rec = Rec {
                        epoch: self.servers[i].epoch,
                        seq: self.next_seq(),
                        timeline: timeline(&self.servers[i].wal),
                    };
                    let s = &mut self.servers[i];
                    s.wal.push(rec);
                    s.waiting.push(s.wal.len() - 1);
                }
            }
            Step::Replicate(i, k) if n > 0 => self.replicate(i % n, k),
            Step::Crash(i) if n > 0 => {
                let i = i % n;
                if self.servers[i].pg == Some(Pg::Writer) {
                    self.stop(i, STATE_FAILED, false);
                }
            }
            Step::AgentDies(i) if n > 0 => self.servers[i % n].agent = false,
            Step::AgentBack(i) if n > 0 => self.servers[i % n].agent = true,
            Step::Time(ms) => self.time(ms),
            Step::Agent(i) if n > 0 => self.agent(i % n),
            Step::Controller => self.controller(),
            Step::ControllerRestart => {
                self.leases.clear();
                self.started = self.now;
            }
            Step::Switchover(target) => {
                self.switchovers += 1;
                let target = match target {
                    Some(t) if n > 0 => self.servers[t % n].name.clone(),
                    _ => String::new(),
                };
                self.annotation = Some(format!("{target}@{}", self.switchovers));
            }
            Step::Backtrack(keep) => {
                self.backtracks += 1;
                self.backtrack = Some(format!("t@{}", self.backtracks));
                self.backtrack_keep = keep;
            }
            Step::CancelBacktrack => {
                self.cancels += 1;
                self.cancel = Some(format!("c@{}", self.cancels));
            }
            _ => {}
        }
        self.acknowledge();
    }

    fn replicate(&mut self, i: usize, max: usize) {
        let Some(w) = self.servers[i].upstream else {
            return;
        };
        let have = self.servers[i].wal.len();
        let end = self.servers[w].wal.len().min(have.saturating_add(max));
        if end > have {
            let more = self.servers[w].wal[have..end].to_vec();
            self.servers[i].wal.extend(more);
        }
    }

    fn time(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..self.servers.len() {
            if self.servers[i].agent && self.servers[i].pg == Some(Pg::Writer) {
                self.renew(i);
                self.report(i);
            }
        }
    }

    fn agent(&mut self, i: usize) {
        if !self.servers[i].agent {
            return;
        }
        let action = self.act(i);
        if self.servers[i].pg == Some(Pg::Writer) {
            self.renew(i);
        }
        self.report(i);
        if !self.quiet || !["waits", "streams"].contains(&action.as_str()) {
            let line = format!("  {} {action}", self.servers[i].name);
            self.note(line);
        }
    }

    /// One step of member `i`'s agent, following the protocol.
    fn act(&mut self, i: usize) -> String {
        let st = self.status.clone();
        if st.epoch == 0 {
            return "waits for an epoch".into();
        }
        let name = self.servers[i].name.clone();
        let pg = self.servers[i].pg;

        // The old writer of a failover stops: cleanly for a switchover (its WAL reaches the
        // standbys that still stream), at once when its lease was taken for lost.
        if let Some(f) = &st.failover
            && f.from == name
            && pg == Some(Pg::Writer)
            && self.servers[i].epoch < f.epoch
        {
            if f.reason == REASON_SWITCHOVER {
                for j in 0..self.servers.len() {
                    if self.servers[j].upstream == Some(i) {
                        self.servers[j].wal = self.servers[i].wal.clone();
                    }
                }
                self.acknowledge();
                self.stop(i, STATE_STOPPED, true);
                return "shuts down for the switchover".into();
            }
            self.stop(i, STATE_FENCED, true);
            return "stops: a failover from it is under way".into();
        }

        // A standby votes: first it stops streaming, then it reports what it has.
        if let Some(f) = &st.failover
            && st.epoch < f.epoch
            && pg == Some(Pg::Standby)
            && f.from != name
            && self.servers[i].vote.is_none_or(|v| v.0 < f.epoch)
        {
            let s = &mut self.servers[i];
            s.upstream = None;
            s.vote = Some((f.epoch, s.wal.len() as u64, timeline(&s.wal)));
            return format!("votes {:?}", s.vote.unwrap());
        }

        // The writer of a backtrack cancelled before it restored: stopped, its data from before
        // back in place, untouched; it waits to be named writer in a newer epoch.
        if let Some(b) = &st.backtrack
            && b.cancel_requested_at.is_some()
            && b.epoch == st.epoch
            && st.writer == name
            && st.epoch > self.servers[i].epoch
        {
            if pg.is_some() {
                self.stop(i, STATE_STOPPED, true);
            }
            self.servers[i].cancelled = b.epoch;
            return format!(
                "puts its data from before the backtrack of epoch {} back",
                b.epoch
            );
        }

        // The writer of a backtrack: stopped, its data restored to a prefix of its history
        // (at least the first record), promoted onto a new timeline. The commits after the
        // prefix are gone, acknowledged or not: the user asked for that.
        if let Some(b) = &st.backtrack
            && b.epoch == st.epoch
            && st.writer == name
            && st.epoch > self.servers[i].epoch
        {
            if pg.is_some() {
                self.stop(i, STATE_STOPPED, true);
            }
            let keep = self
                .backtrack_keep
                .clamp(1, self.servers[i].wal.len().max(1));
            let newest = self
                .servers
                .iter()
                .flat_map(|s| s.wal.iter().map(|r| r.timeline))
                .max()
                .unwrap_or(1);
            let rec = Rec {
                epoch: st.epoch,
                seq: self.next_seq(),
                timeline: newest + 1,
            };
            let s = &mut self.servers[i];
            s.wal.truncate(keep);
            s.wal.push(rec);
            s.pg = Some(Pg::Writer);
            s.down = "";
            s.stopped = false;
            s.epoch = st.epoch;
            s.applied = (st.sync_standbys.clone(), st.sync_count);
            s.waiting.clear();
            let wal = s.wal.clone();
            self.acked.retain(|(p, r)| wal.get(*p) == Some(r));
            return format!("backtracks to {keep} records in epoch {}", st.epoch);
        }

        // Named writer in an epoch newer than the one it acted on: promote or start.
        if st.writer == name && st.epoch > self.servers[i].epoch {
            let missing: Vec<(usize, Rec)> = self
                .acked
                .iter()
                .filter(|(p, r)| self.servers[i].wal.get(*p) != Some(r))
                .cloned()
                .collect();
            if !missing.is_empty() {
                self.violate(format!(
                    "{name} becomes writer of epoch {} without acknowledged commits {missing:?}",
                    st.epoch
                ));
            }
            let how = match pg {
                Some(Pg::Standby) => {
                    // Promotion: a new timeline, then the CHECKPOINT the others rewind after.
                    let rec = Rec {
                        epoch: st.epoch,
                        seq: self.next_seq(),
                        timeline: timeline(&self.servers[i].wal) + 1,
                    };
                    self.servers[i].upstream = None;
                    self.servers[i].wal.push(rec);
                    "promotes"
                }
                None if self.servers[i].wal.is_empty() => {
                    let rec = Rec {
                        epoch: st.epoch,
                        seq: self.next_seq(),
                        timeline: 1,
                    };
                    self.servers[i].wal.push(rec);
                    "initialises and starts as writer"
                }
                None => "starts again as writer (crash recovery)",
                Some(Pg::Writer) => {
                    self.stop(i, STATE_STOPPED, true);
                    "restarts as writer"
                }
            };
            let s = &mut self.servers[i];
            s.pg = Some(Pg::Writer);
            s.down = "";
            s.stopped = false;
            s.epoch = st.epoch;
            s.applied = (st.sync_standbys.clone(), st.sync_count);
            s.waiting.clear();
            return format!("{how} in epoch {}", st.epoch);
        }

        // The writer applies the synchronous set of the status.
        let wanted = (st.sync_standbys.clone(), st.sync_count);
        if st.writer == name
            && pg == Some(Pg::Writer)
            && self.servers[i].epoch == st.epoch
            && self.servers[i].applied != wanted
        {
            self.servers[i].applied = wanted;
            return format!("applies ANY {} {:?}", st.sync_count, st.sync_standbys);
        }

        // Everyone else follows the writer of the current epoch once it runs.
        let named = st.failover.as_ref().is_none_or(|f| f.epoch == st.epoch);
        if st.writer != name
            && named
            && let Some(w) = self.idx(&st.writer)
            && self.servers[w].pg == Some(Pg::Writer)
            && self.servers[w].epoch == st.epoch
        {
            let s = &self.servers[i];
            if s.upstream == Some(w) && s.epoch == st.epoch {
                return "streams".into();
            }
            if s.pg == Some(Pg::Standby)
                && s.vote.is_some_and(|v| v.0 == st.epoch)
                && st.sync_standbys.contains(&name)
            {
                if common_prefix(&s.wal, &self.servers[w].wal) < s.wal.len() {
                    let what = format!(
                        "{name}, a voter of epoch {}, has WAL the new writer {} lacks: {:?} vs {:?}",
                        st.epoch, st.writer, s.wal, self.servers[w].wal
                    );
                    self.violate(what);
                }
                let s = &mut self.servers[i];
                s.upstream = Some(w);
                s.epoch = st.epoch;
                return format!("follows {} without a rewind", st.writer);
            }
            if pg == Some(Pg::Writer) {
                self.stop(i, STATE_STOPPED, true);
            }
            if self.servers[i].down == STATE_CREATING {
                // First boot: a base backup holds everything the writer has.
                self.servers[i].wal = self.servers[w].wal.clone();
            }
            let keep = common_prefix(&self.servers[i].wal, &self.servers[w].wal);
            let s = &mut self.servers[i];
            let dropped = s.wal.len() - keep;
            s.wal.truncate(keep);
            s.pg = Some(Pg::Standby);
            s.down = "";
            s.stopped = false;
            s.upstream = Some(w);
            s.epoch = st.epoch;
            s.applied = Default::default();
            s.waiting.clear();
            return format!("rewinds (drops {dropped}) and follows {}", st.writer);
        }
        "waits".into()
    }

    /// How long the controller has seen no change of a member's lease (`Context::lease_silence`).
    fn silence(&mut self, name: &str, epoch: u64, renewals: u64) -> Duration {
        let now = self.now;
        let ms = match self.leases.get_mut(name) {
            Some(seen) if (seen.0, seen.1) == (epoch, renewals) => now - seen.2,
            Some(seen) => {
                *seen = (epoch, renewals, now);
                0
            }
            // As `Context::lease_silence` does: first sight counts as a renewal.
            None => {
                self.leases.insert(name.to_owned(), (epoch, renewals, now));
                0
            }
        };
        Duration::from_millis(ms)
    }

    fn controller(&mut self) {
        let mut members = BTreeMap::new();
        for i in 0..self.servers.len() {
            let (mut m, renewals) = self.servers[i].reported.clone();
            let name = self.servers[i].name.clone();
            m.lease_silence = self.silence(&name, m.lease_epoch, renewals);
            members.insert(name, m);
        }
        let old = self.status.clone();
        let backtrack = self
            .backtrack
            .as_deref()
            .filter(|r| *r != old.backtrack_handled)
            .map(|r| {
                let b = hanul_proto::v1::DbBacktrack {
                    timeline: 1,
                    ..Default::default()
                };
                (r, Ok(b))
            });
        let p = plan(&Input {
            cluster: "db",
            generation: 1,
            spec: &self.spec,
            status: &old,
            members: &members,
            nodes: &self.nodes,
            switchover: self.annotation.as_deref(),
            reboot: None,
            backtrack,
            backtrack_cancel: self.cancel.as_deref(),
            now: at(self.now),
        });
        let new = p.status;
        if new.epoch < old.epoch {
            self.violate(format!("epoch went back: {} → {}", old.epoch, new.epoch));
        }
        if old.epoch > 0 && new.epoch == old.epoch && new.writer != old.writer {
            self.violate(format!(
                "writer {} → {} within epoch {}",
                old.writer, new.writer, old.epoch
            ));
        }
        // A backtrack is a new epoch of the same writer, which its own agent stops first; it
        // starts only while that writer is up.
        let backtrack_started = old.backtrack.is_none() && new.backtrack.is_some();
        // A cancelled backtrack (ended with no timeline of its own) leaves no trace: nothing
        // claims it happened, and the old history is live again.
        if let Some(b) = &old.backtrack
            && new.backtrack.is_none()
            && new.timelines.iter().all(|t| t.epoch != b.epoch)
        {
            if b.cancel_requested_at.is_none() {
                self.violate(format!(
                    "the backtrack of epoch {} ended uncancelled and unnoted",
                    b.epoch
                ));
            }
            if new.backtracked_to != old.backtracked_to
                || new.last_backtrack_time != old.last_backtrack_time
                || new
                    .timelines
                    .last()
                    .is_some_and(|t| t.archived_until.is_some())
            {
                self.violate(format!(
                    "the cancelled backtrack of epoch {} is noted as done: {:?}",
                    b.epoch, new.timelines
                ));
            }
            if new.writer != old.writer || new.epoch <= b.epoch {
                self.violate(format!(
                    "a cancelled backtrack of epoch {} restarts {} in epoch {}",
                    b.epoch, new.writer, new.epoch
                ));
            }
        }
        if backtrack_started
            && (new.writer != old.writer
                || members
                    .get(&old.writer)
                    .is_none_or(|m| m.role != ROLE_WRITER || m.epoch != old.epoch))
        {
            self.violate(format!(
                "a backtrack started in epoch {} while the writer {} was not up",
                new.epoch, old.writer
            ));
        }
        if old.epoch > 0
            && new.epoch > old.epoch
            && !backtrack_started
            && let Some(w) = self.idx(&old.writer)
        {
            let s = &self.servers[w];
            if s.agent
                && s.pg == Some(Pg::Writer)
                && self.now - s.renewed_at <= LEASE_MS
                && !members[&old.writer].reported_down()
            {
                self.violate(format!(
                    "epoch {} written while the writer {} of epoch {} runs, its agent lives and \
                     renewed {} ms ago (controller's silence {:?})",
                    new.epoch,
                    old.writer,
                    old.epoch,
                    self.now - s.renewed_at,
                    members[&old.writer].lease_silence
                ));
            }
        }
        if (
            new.epoch,
            &new.writer,
            &new.failover,
            &new.sync_standbys,
            &new.phase,
        ) != (
            old.epoch,
            &old.writer,
            &old.failover,
            &old.sync_standbys,
            &old.phase,
        ) {
            self.note(format!(
                "  status: epoch {} writer {} phase {} sync {:?} failover {:?}",
                new.epoch,
                new.writer,
                new.phase,
                new.sync_standbys,
                new.failover.as_ref().map(|f| (
                    f.epoch,
                    f.from.as_str(),
                    f.reason.as_str(),
                    f.target.as_str()
                ))
            ));
        }
        self.status = new;
        for e in p.effects {
            match e {
                Effect::Create {
                    name,
                    role,
                    zone,
                    node,
                    readable,
                } => {
                    let address = self
                        .nodes
                        .iter()
                        .find(|n| n.name == node)
                        .map(|n| format!("{}:5432", n.address))
                        .unwrap_or_default();
                    let reported = Member {
                        spec_role: role,
                        zone,
                        node,
                        readable,
                        state: STATE_CREATING.into(),
                        address,
                        ..Default::default()
                    };
                    self.servers.push(Server {
                        name,
                        pg: None,
                        down: STATE_CREATING,
                        stopped: false,
                        wal: Vec::new(),
                        upstream: None,
                        epoch: 0,
                        vote: None,
                        lease_epoch: 0,
                        renewals: 0,
                        renewed_at: 0,
                        agent: true,
                        applied: Default::default(),
                        waiting: Vec::new(),
                        cancelled: 0,
                        reported: (reported, 0),
                    });
                }
                Effect::Delete { name } => {
                    self.violate(format!("{name} deleted, but this cluster has no replicas"));
                }
                Effect::Replace { name } => {
                    self.violate(format!("{name} replaced, but no node is ever deleted"));
                }
            }
        }
    }

    /// The member the writer endpoint routes to, by the rule of `hanul_proto::db`.
    fn endpoint(&self) -> Option<usize> {
        let st = &self.status;
        if st.epoch == 0
            || st.failover.is_some()
            || self.servers.iter().any(|s| s.reported.0.epoch > st.epoch)
        {
            return None;
        }
        let w = self.idx(&st.writer)?;
        let r = &self.servers[w].reported.0;
        (r.role == ROLE_WRITER && r.epoch == st.epoch).then_some(w)
    }

    /// The invariants, after every step.
    fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        for s in &self.servers {
            if let Some(u) = s.upstream {
                let w = &self.servers[u];
                if w.pg != Some(Pg::Writer) || common_prefix(&s.wal, &w.wal) < s.wal.len() {
                    return Err(format!("model: {} streams from {} badly", s.name, w.name));
                }
            }
        }
        let able: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.can_ack(i))
            .collect();
        if able.len() > 1 {
            let names: Vec<&str> = able
                .iter()
                .map(|&i| self.servers[i].name.as_str())
                .collect();
            return Err(format!("{names:?} can all acknowledge commits"));
        }
        if let Some(e) = self.endpoint() {
            let s = &self.servers[e];
            if s.stopped {
                return Err(format!(
                    "the endpoint routes to {}, stopped by its agent",
                    s.name
                ));
            }
            if let Some(&other) = able.iter().find(|&&i| i != e) {
                return Err(format!(
                    "the endpoint routes to {} while {} acknowledges commits",
                    s.name, self.servers[other].name
                ));
            }
        }
        // The planner's own argument: every acknowledged commit is on `k` members of the
        // synchronous set, so that any `|S| - k + 1` voters include one that has it. (An empty
        // set is the planner's special case: no failover then, only a restart in place.)
        let st = &self.status;
        if !st.sync_standbys.is_empty() {
            for (p, r) in &self.acked {
                let on = st
                    .sync_standbys
                    .iter()
                    .filter_map(|n| self.idx(n))
                    .filter(|&j| self.servers[j].wal.get(*p) == Some(r))
                    .count();
                if on < st.sync_count as usize {
                    return Err(format!(
                        "the acknowledged {r:?} at {p} is on {on} of the synchronous set {:?} \
                         (epoch {}, writer {}), fewer than {}",
                        st.sync_standbys, st.epoch, st.writer, st.sync_count
                    ));
                }
            }
        }
        if let Some(w) = self.idx(&self.status.writer) {
            let s = &self.servers[w];
            if s.pg == Some(Pg::Writer) && s.epoch == self.status.epoch {
                for (p, r) in &self.acked {
                    if s.wal.get(*p) != Some(r) {
                        return Err(format!(
                            "the writer {} of epoch {} lacks the acknowledged {r:?} at {p}",
                            s.name, s.epoch
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// One fair round: every agent, full replication, half a second, the controller.
    fn round(&mut self) -> Result<(), String> {
        self.quiet = true;
        let r = self.fair_round();
        self.quiet = false;
        r
    }

    fn fair_round(&mut self) -> Result<(), String> {
        for i in 0..self.servers.len() {
            self.step(&Step::Agent(i));
            self.check()?;
        }
        for i in 0..self.servers.len() {
            self.step(&Step::Replicate(i, usize::MAX));
        }
        self.step(&Step::Time(500));
        self.step(&Step::Controller);
        self.check()
    }

    /// Whether the cluster is available with everyone in the synchronous set, applied, and
    /// the last backtrack asked for done.
    fn settled(&self) -> bool {
        let st = &self.status;
        let Some(w) = self.idx(&st.writer) else {
            return false;
        };
        let s = &self.servers[w];
        let mut all: Vec<&String> = self
            .servers
            .iter()
            .map(|s| &s.name)
            .filter(|n| **n != st.writer)
            .collect();
        let mut sync: Vec<&String> = st.sync_standbys.iter().collect();
        all.sort();
        sync.sort();
        st.phase == PHASE_AVAILABLE
            && st.failover.is_none()
            && st.backtrack.is_none()
            && self
                .backtrack
                .as_ref()
                .is_none_or(|r| *r == st.backtrack_handled)
            && s.pg == Some(Pg::Writer)
            && s.epoch == st.epoch
            && self.endpoint() == Some(w)
            && all == sync
            && s.applied == (st.sync_standbys.clone(), st.sync_count)
    }

    /// Liveness: with every agent up and no more faults, fair rounds settle the cluster and
    /// a new commit is acknowledged.
    fn settle(&mut self) -> Result<(), String> {
        self.note("-- faults stop; every agent runs --".into());
        for i in 0..self.servers.len() {
            self.servers[i].agent = true;
        }
        let mut rounds = 0;
        while self.servers.is_empty() || !self.settled() {
            if rounds == SETTLE_ROUNDS {
                return Err(format!(
                    "not available after {SETTLE_ROUNDS} fair rounds: {:?}",
                    self.status
                ));
            }
            self.round()?;
            rounds += 1;
        }
        let w = self.idx(&self.status.writer).unwrap(); // settled() found it
        let before = self.acked.len();
        self.step(&Step::Commit(w));
        for _ in 0..3 {
            self.round()?;
        }
        if self.acked.len() == before {
            return Err("a commit on the available cluster is never acknowledged".into());
        }
        Ok(())
    }

    fn run(&mut self, settle_first: bool, steps: &[Step]) -> Result<(), String> {
        self.step(&Step::Controller);
        self.check()?;
        if settle_first {
            self.settle()?;
            self.note("-- settled; random steps --".into());
        }
        for s in steps {
            self.step(s);
            self.check()?;
        }
        self.settle()
    }

    fn tail(&self) -> String {
        let from = self.trace.len().saturating_sub(200);
        self.trace[from..].join("\n")
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..3).prop_map(Step::Commit),
        3 => (0usize..3, 1usize..4).prop_map(|(i, n)| Step::Replicate(i, n)),
        1 => (0usize..3).prop_map(Step::Crash),
        2 => (0usize..3).prop_map(Step::AgentDies),
        1 => (0usize..3).prop_map(Step::AgentBack),
        3 => (100u64..2500).prop_map(Step::Time),
        6 => (0usize..3).prop_map(Step::Agent),
        4 => Just(Step::Controller),
        1 => Just(Step::ControllerRestart),
        1 => proptest::option::of(0usize..3).prop_map(Step::Switchover),
        1 => (0usize..8).prop_map(Step::Backtrack),
        1 => Just(Step::CancelBacktrack),
    ]
}

fn simulate(
    deployment: &str,
    automatic: bool,
    settle_first: bool,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut w = World::new(deployment, automatic);
    w.run(settle_first, steps)
        .map_err(|e| TestCaseError::fail(format!("{e}\n--- trace ---\n{}", w.tail())))
}

// 256 cases each, unless PROPTEST_CASES says otherwise.
proptest! {
    #[test]
    fn a_multi_az_cluster_keeps_its_acknowledged_commits_and_one_writer(
        automatic in prop::bool::weighted(0.85),
        settle_first in any::<bool>(),
        steps in prop::collection::vec(step(), 1..150),
    ) {
        simulate(MULTI_AZ_CLUSTER, automatic, settle_first, &steps)?;
    }

    #[test]
    fn a_multi_az_instance_keeps_its_acknowledged_commits_and_one_writer(
        automatic in prop::bool::weighted(0.85),
        settle_first in any::<bool>(),
        steps in prop::collection::vec(step(), 1..150),
    ) {
        simulate(MULTI_AZ_INSTANCE, automatic, settle_first, &steps)?;
    }
}
