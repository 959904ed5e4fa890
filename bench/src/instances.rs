//! `instances`: how long an instance takes from its create call to `running`, one at a time and
//! many at once, and how much memory a node agent holds while idle and while running instances.
//!
//! Everything is real: the `hanul server` binary, two `hanul agent` processes (two nodes in two
//! zones) and, for every instance, a `sleep` process that an agent starts as user `nobody`.
//! Latency is measured from just before the create call to the moment the benchmark's own watch
//! (a [`Client::list_watch`] opened before the first create) delivers `status.state: running`,
//! so it includes the scheduler's binding, the agent's launch and both status writes.
//!
//! The cluster and its cleanup are the `cluster` module's: the instances are deleted and awaited
//! before the agents are killed, on success and on error alike. The watch (`InstanceWatch`) is
//! shared with the `asg` benchmark.

use crate::{
    cluster::{Cluster, IMAGE, INSTANCE_TYPE, WAIT, create_image_and_type, meta},
    report::{self, Out},
    stats::{Samples, Summary},
};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, stream};
use hanul_proto::{
    Client, Kind,
    client::WatchUpdate,
    instance::InstanceState,
    v1::{EventType, Instance, InstanceSpec, Object, object::Resource},
};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// The label on every instance the benchmark creates, as a `key=value` selector too.
const LABEL_KEY: &str = "bench";
const LABEL_VALUE: &str = "1";
const SELECTOR: &str = "bench=1";
/// How long the agents sit idle after the last delete before their memory is read.
const IDLE: Duration = Duration::from_secs(5);

/// The targets the figures are compared with.
const TARGET_ONE_P99_MS: f64 = 200.0;
const TARGET_ALL_RUNNING_S: f64 = 5.0;
const TARGET_IDLE_RSS_MIB: f64 = 20.0;

#[derive(Debug, Clone, clap::Args)]
pub struct InstancesArgs {
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
    /// Instances created at once in the second round.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Instances created one after another in the first round (each deleted before the next).
    #[arg(long, default_value_t = 20)]
    pub single_runs: usize,
    /// Create calls in flight at once in the second round.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
}

pub async fn run(args: InstancesArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let mut out = Out::new(false);
    out.line(&report::Machine::read().describe());
    out.line(&format!(
        "hanul: {} ({})",
        args.hanul_bin.display(),
        crate::hanul_version(&args.hanul_bin)
    ));
    let started = Instant::now();
    let cluster = Cluster::start(&args.hanul_bin).await?;
    out.line(&format!(
        "cluster: server {}; agents {} ready after {:.2} s",
        cluster.server.url,
        cluster
            .agents
            .iter()
            .map(|a| format!("{} ({}, pid {})", a.name, a.zone, a.child.pid()))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    ));
    let result = measure(&cluster, &args, &mut out).await;
    // Also after a failure: the instances go before the agents do (see the module doc).
    if let Err(e) = cluster.delete_all_instances(SELECTOR).await {
        out.line(&format!("cleanup: {e:#}"));
    }
    drop(cluster);
    let result = result?;
    result.print(&args, &mut out);
    Ok(())
}

/// What [`measure`] found, printed at the end.
struct Figures {
    fresh_rss: Vec<Rss>,
    one: Summary,
    one_create: Summary,
    one_gone: Summary,
    many: Summary,
    many_create: Summary,
    many_total: Duration,
    many_creates_done: Duration,
    placement: BTreeMap<String, usize>,
    busy_rss: Vec<Rss>,
    deletes_done: Duration,
    all_gone: Duration,
    idle_rss: Vec<Rss>,
}

async fn measure(
    cluster: &Cluster,
    args: &InstancesArgs,
    out: &mut Out,
) -> anyhow::Result<Figures> {
    let client = &cluster.client;
    let fresh_rss = agent_rss(cluster)?;
    out.line(&format!(
        "agent RSS, no instances yet: {}",
        Rss::line(&fresh_rss)
    ));
    create_image_and_type(client).await?;

    // Round 1: one instance at a time.
    let mut watch = InstanceWatch::start(client).await?;
    let (mut one, mut one_create, mut one_gone) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..args.single_runs {
        let name = format!("bench-one-{i:03}");
        let t0 = Instant::now();
        client
            .create(instance(&name))
            .await
            .with_context(|| format!("creating instance {name}"))?;
        one_create.push(t0.elapsed());
        let running = watch.until_running(&[name.as_str()], WAIT).await?;
        one.push(running[&name].at - t0);
        let t1 = Instant::now();
        client
            .delete(Kind::Instance, &name)
            .await
            .with_context(|| format!("deleting instance {name}"))?;
        watch.until_gone(&[name.as_str()], WAIT).await?;
        one_gone.push(t1.elapsed());
    }
    drop(watch);
    let (one, one_create, one_gone) = (one.summary(), one_create.summary(), one_gone.summary());
    out.line(&format!(
        "1 instance x {}: create → running p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (create call \
         p50 {:.1} ms); delete → gone p50 {:.1} ms, max {:.1} ms",
        one.count,
        one.p50_ms,
        one.p99_ms,
        one.max_ms,
        one_create.p50_ms,
        one_gone.p50_ms,
        one_gone.max_ms
    ));

    // Round 2: many at once.
    let names: Vec<String> = (0..args.count)
        .map(|i| format!("bench-many-{i:04}"))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut watch = InstanceWatch::start(client).await?;
    // Each create's t0, taken just before its call.
    let starts: Mutex<HashMap<String, Instant>> = Mutex::default();
    let creates = async {
        let t_first = Instant::now();
        let mut calls = Samples::default();
        let mut results = stream::iter(&names)
            .map(|name| {
                let starts = &starts;
                async move {
                    let t0 = Instant::now();
                    starts.lock().unwrap().insert(name.clone(), t0);
                    client
                        .create(instance(name))
                        .await
                        .with_context(|| format!("creating instance {name}"))?;
                    anyhow::Ok(t0.elapsed())
                }
            })
            .buffer_unordered(args.in_flight.max(1));
        while let Some(call) = results.next().await {
            calls.push(call?);
        }
        anyhow::Ok((calls, t_first.elapsed()))
    };
    // Together, so that a failed create ends the wait at once rather than by its timeout. The
    // arrival times are taken by the watch's own task, not here.
    let ((many_create, many_creates_done), running) =
        tokio::try_join!(creates, watch.until_running(&name_refs, WAIT))?;
    let starts = starts.into_inner().unwrap();
    // `run` refuses a zero --count, so there is a first create.
    let first_create = *starts.values().min().unwrap();
    let mut many = Samples::default();
    let mut placement = BTreeMap::new();
    let mut last = first_create;
    for (name, seen) in &running {
        many.push(seen.at - starts[name]);
        last = last.max(seen.at);
        *placement.entry(seen.node.clone()).or_insert(0) += 1;
    }
    let many_total = last - first_create;
    let (many, many_create) = (many.summary(), many_create.summary());
    out.line(&format!(
        "{} instances at once ({} in flight): create → running p50 {:.1} ms, p99 {:.1} ms, max \
         {:.1} ms; all running after {:.2} s (creates done after {:.2} s, create call p50 {:.1} \
         ms)",
        many.count,
        args.in_flight,
        many.p50_ms,
        many.p99_ms,
        many.max_ms,
        many_total.as_secs_f64(),
        many_creates_done.as_secs_f64(),
        many_create.p50_ms
    ));
    let busy_rss = agent_rss(cluster)?;
    out.line(&format!(
        "agent RSS with the {} running: {}",
        args.count,
        Rss::line_with(&busy_rss, &placement)
    ));

    let t_delete = Instant::now();
    let deletes: Vec<anyhow::Result<()>> = stream::iter(&names)
        .map(|name| async move {
            client
                .delete(Kind::Instance, name)
                .await
                .with_context(|| format!("deleting instance {name}"))?;
            Ok(())
        })
        .buffer_unordered(args.in_flight.max(1))
        .collect()
        .await;
    deletes.into_iter().collect::<anyhow::Result<()>>()?;
    let deletes_done = t_delete.elapsed();
    watch.until_gone(&name_refs, WAIT).await?;
    let all_gone = t_delete.elapsed();
    drop(watch);
    out.line(&format!(
        "{} deletes: all gone after {:.2} s (delete calls done after {:.2} s)",
        args.count,
        all_gone.as_secs_f64(),
        deletes_done.as_secs_f64()
    ));

    tokio::time::sleep(IDLE).await;
    let idle_rss = agent_rss(cluster)?;
    out.line(&format!(
        "agent RSS idle ({} s after the last instance went): {}",
        IDLE.as_secs(),
        Rss::line(&idle_rss)
    ));
    Ok(Figures {
        fresh_rss,
        one,
        one_create,
        one_gone,
        many,
        many_create,
        many_total,
        many_creates_done,
        placement,
        busy_rss,
        deletes_done,
        all_gone,
        idle_rss,
    })
}

impl Figures {
    fn print(&self, args: &InstancesArgs, out: &mut Out) {
        let max_idle = self.idle_rss.iter().map(|r| r.mib).fold(f64::NAN, f64::max);
        out.line("");
        out.line(
            "round                          |   p50 ms |   p99 ms |   max ms | total   | create \
             call p50 ms",
        );
        out.line(
            "------------------------------ | -------- | -------- | -------- | ------- | \
             -------------------",
        );
        out.line(&format!(
            "1 instance, create → running   | {:>8.1} | {:>8.1} | {:>8.1} | {:>7} | {:>8.1}",
            self.one.p50_ms, self.one.p99_ms, self.one.max_ms, "-", self.one_create.p50_ms
        ));
        out.line(&format!(
            "1 instance, delete → gone      | {:>8.1} | {:>8.1} | {:>8.1} | {:>7} | {:>8}",
            self.one_gone.p50_ms, self.one_gone.p99_ms, self.one_gone.max_ms, "-", "-"
        ));
        out.line(&format!(
            "{:<30} | {:>8.1} | {:>8.1} | {:>8.1} | {:>5.2} s | {:>8.1}",
            format!("{} at once, create → running", args.count),
            self.many.p50_ms,
            self.many.p99_ms,
            self.many.max_ms,
            self.many_total.as_secs_f64(),
            self.many_create.p50_ms
        ));
        out.line("");
        out.line(&format!(
            "placement of the {}: {}",
            args.count,
            self.placement
                .iter()
                .map(|(node, n)| format!("{node} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.line(&format!(
            "creates of the {} returned after {:.2} s; {} deletes returned after {:.2} s, all \
             gone after {:.2} s",
            args.count,
            self.many_creates_done.as_secs_f64(),
            args.count,
            self.deletes_done.as_secs_f64(),
            self.all_gone.as_secs_f64()
        ));
        out.line(&format!(
            "agent RSS: fresh {}; with the {} running {}; idle after {}",
            Rss::line(&self.fresh_rss),
            args.count,
            Rss::line_with(&self.busy_rss, &self.placement),
            Rss::line(&self.idle_rss)
        ));
        out.line("");
        let total = self.many_total.as_secs_f64();
        let rows = [
            (
                format!("1 instance create → running p99 < {TARGET_ONE_P99_MS:.0} ms"),
                format!("{:.1} ms", self.one.p99_ms),
                self.one.p99_ms < TARGET_ONE_P99_MS,
            ),
            (
                format!(
                    "{} instances all running < {TARGET_ALL_RUNNING_S:.0} s",
                    args.count
                ),
                format!("{total:.2} s"),
                total < TARGET_ALL_RUNNING_S,
            ),
            (
                format!("idle agent RSS < {TARGET_IDLE_RSS_MIB:.0} MiB (the larger one)"),
                format!("{max_idle:.1} MiB"),
                max_idle < TARGET_IDLE_RSS_MIB,
            ),
        ];
        out.line(&format!("{:<42} | {:>10} | result", "target", "measured"));
        out.line(&format!("{:-<42} | {:->10} | ------", "", ""));
        for (target, measured, ok) in rows {
            let verdict = if ok { "PASS" } else { "MISS" };
            out.line(&format!("{target:<42} | {measured:>10} | {verdict}"));
        }
    }
}

/// One agent's resident memory at one moment.
#[derive(Debug, Clone)]
struct Rss {
    node: String,
    mib: f64,
}

impl Rss {
    fn line(all: &[Rss]) -> String {
        all.iter()
            .map(|r| format!("{} {:.1} MiB", r.node, r.mib))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// With the number of instances each node runs.
    fn line_with(all: &[Rss], instances: &BTreeMap<String, usize>) -> String {
        all.iter()
            .map(|r| {
                let n = instances.get(&r.node).copied().unwrap_or(0);
                format!("{} {:.1} MiB with {n} instances", r.node, r.mib)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Each agent's resident memory now.
fn agent_rss(cluster: &Cluster) -> anyhow::Result<Vec<Rss>> {
    cluster
        .agents
        .iter()
        .map(|a| {
            Ok(Rss {
                node: a.name.to_string(),
                mib: rss_mib(a.child.pid())?,
            })
        })
        .collect()
}

/// `VmRSS` of a process in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if text
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("zombie"))
    {
        bail!("process {pid} has exited (its status has no memory any more)");
    }
    vm_rss_mib(&text).with_context(|| format!("no VmRSS line in {path}"))
}

/// The `VmRSS:   16384 kB` line of a `/proc/PID/status` text, in MiB.
fn vm_rss_mib(status: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn instance(name: &str) -> Object {
    let mut metadata = meta(name);
    metadata.labels.insert(LABEL_KEY.into(), LABEL_VALUE.into());
    Instance {
        metadata: Some(metadata),
        spec: Some(InstanceSpec {
            image: IMAGE.into(),
            instance_type: INSTANCE_TYPE.into(),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// What the watch showed of one instance, when it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) name: String,
    /// `status.state`; empty before the first status write.
    pub(crate) state: String,
    pub(crate) node: String,
    pub(crate) gone: bool,
    /// When the watch delivered it.
    pub(crate) at: Instant,
}

impl Seen {
    fn gone(name: &str, at: Instant) -> Seen {
        Seen {
            name: name.to_string(),
            state: String::new(),
            node: String::new(),
            gone: true,
            at,
        }
    }
}

/// A watch on every Instance, read by a task of its own so that arrival times are taken as soon
/// as the server delivers; aborted on drop.
pub(crate) struct InstanceWatch {
    rx: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
    /// The last thing seen of each instance (for the message when a wait times out).
    last: HashMap<String, Seen>,
    /// When each instance was first seen running, and where.
    running: HashMap<String, Seen>,
}

impl InstanceWatch {
    /// Opens the watch and returns once its initial list has arrived, so every later create is
    /// delivered.
    pub(crate) async fn start(client: &Client) -> anyhow::Result<InstanceWatch> {
        let mut updates = Box::pin(client.list_watch(Some(Kind::Instance), ""));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, updates.next()).await {
                Ok(Some(WatchUpdate::Listed { .. })) => break,
                Ok(Some(WatchUpdate::Error(status))) => {
                    bail!("listing instances to watch them: {status}")
                }
                Ok(Some(WatchUpdate::Event(_))) => {}
                Ok(None) => bail!("the instance watch ended before its first list"),
                Err(_) => bail!("the instance watch did not list within {WAIT:?}"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // The names that exist as far as this watch knows, to tell what a re-list dropped.
            let mut known = HashSet::new();
            while let Some(update) = updates.next().await {
                let at = Instant::now();
                let seen: Vec<Seen> = match update {
                    WatchUpdate::Event(ev) => {
                        let gone = ev.r#type() == EventType::Deleted;
                        ev.object
                            .as_ref()
                            .and_then(|o| seen(o, gone, at))
                            .into_iter()
                            .collect()
                    }
                    // A re-list after a compaction replaces the picture: what it lacks is gone.
                    WatchUpdate::Listed { items, .. } => {
                        let mut listed_now: Vec<Seen> =
                            items.iter().filter_map(|o| seen(o, false, at)).collect();
                        let listed: HashSet<&str> =
                            listed_now.iter().map(|s| s.name.as_str()).collect();
                        let dropped: Vec<Seen> = known
                            .iter()
                            .filter(|n: &&String| !listed.contains(n.as_str()))
                            .map(|n| Seen::gone(n, at))
                            .collect();
                        listed_now.extend(dropped);
                        listed_now
                    }
                    // The stream retries on its own; a wait that times out says what it saw.
                    WatchUpdate::Error(_) => Vec::new(),
                };
                for s in seen {
                    if s.gone {
                        known.remove(&s.name);
                    } else {
                        known.insert(s.name.clone());
                    }
                    if tx.send(s).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(InstanceWatch {
            rx,
            task,
            last: HashMap::new(),
            running: HashMap::new(),
        })
    }

    /// Takes in one observation; false when the watch has ended.
    async fn next(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<bool> {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(s)) => {
                if s.state == InstanceState::Running.as_str() && !s.gone {
                    self.running.entry(s.name.clone()).or_insert(s.clone());
                }
                self.last.insert(s.name.clone(), s);
                Ok(true)
            }
            Ok(None) => bail!("the instance watch ended"),
            Err(_) => Ok(false),
        }
    }

    /// Waits until every one of `names` has been seen running; returns when and where each was.
    pub(crate) async fn until_running(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, Seen>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if names.iter().all(|n| self.running.contains_key(*n)) {
                return Ok(names
                    .iter()
                    .map(|n| (n.to_string(), self.running[*n].clone()))
                    .collect());
            }
            if !self.next(deadline).await? {
                let waiting: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| !self.running.contains_key(*n))
                    .collect();
                bail!(
                    "{} of {} instances were not running after {timeout:?}; last seen: {}",
                    waiting.len(),
                    names.len(),
                    self.describe(&waiting)
                );
            }
        }
    }

    /// Waits until every one of `names` has been seen deleted.
    async fn until_gone(&mut self, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let is_gone = |w: &InstanceWatch, n: &str| w.last.get(n).is_some_and(|s| s.gone);
        loop {
            if names.iter().all(|n| is_gone(self, n)) {
                return Ok(());
            }
            if !self.next(deadline).await? {
                let waiting: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| !is_gone(self, n))
                    .collect();
                bail!(
                    "{} of {} deleted instances were still there after {timeout:?}; last seen: {}",
                    waiting.len(),
                    names.len(),
                    self.describe(&waiting)
                );
            }
        }
    }

    /// The last state of the first few of `names`, and a count per state.
    fn describe(&self, names: &[&str]) -> String {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for n in names {
            let state = match self.last.get(*n) {
                None => "never seen".to_string(),
                Some(s) if s.state.is_empty() => "no status".to_string(),
                Some(s) => format!("{} on {:?}", s.state, s.node),
            };
            *states.entry(state).or_insert(0) += 1;
        }
        states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for InstanceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn seen(object: &Object, gone: bool, at: Instant) -> Option<Seen> {
    let Some(Resource::Instance(i)) = &object.resource else {
        return None;
    };
    let status = i.status.clone().unwrap_or_default();
    Some(Seen {
        name: object.name().to_string(),
        state: status.state,
        node: status.node,
        gone,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_the_status_text_in_mib() {
        let status = "Name:\thanul\nVmPeak:\t  99999 kB\nVmRSS:\t   16896 kB\nThreads:\t5\n";
        assert_eq!(vm_rss_mib(status), Some(16.5));
        assert_eq!(vm_rss_mib("Name:\tkthreadd\n"), None);
    }
}
