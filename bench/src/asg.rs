//! `asg`: how fast an Auto Scaling group reaches its desired capacity, and how fast it replaces
//! an instance whose process died.
//!
//! The cluster is the `cluster` module's: the real `hanul server` (which runs the group
//! controller) and two `hanul agent`s in zones az-a and az-b. One group spans both zones and
//! launches the `sleep` image with the tiny type, EC2 health checks and no grace period:
//!
//! 1. Scale out: `desiredCapacity` 0 → N (default 100, also `maxSize`), timed from just before
//!    the update call to the moment the benchmark's own watch on the group delivers
//!    `status.inService == N`. A second watch, on the instances, says when the agents had them
//!    running, which splits the time into the agents' part and the controller's.
//! 2. Replacement, at a steady size (default 10): SIGKILL one in-service instance's process (its
//!    `status.pid`), timed until the group shows a *new* instance in service and `inService` is
//!    back at the size. There is no health-check interval to wait out: the agent reaps its
//!    children, so it records the exit at once, and the group's watch on its instances sees it.
//! 3. Scale in to 0, timed until the group has no instance records left.
//!
//! Cleanup, also after an error: the group is deleted first (so that it launches nothing
//! more), then its instances, and the benchmark waits until they are gone (their processes
//! stopped) before the agents are killed.

use crate::{
    cluster::{Cluster, IMAGE, INSTANCE_TYPE, WAIT, create_image_and_type, meta},
    instances::InstanceWatch,
    report::{self, Out},
    stats::{Samples, Summary},
};
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use hanul_proto::{
    Client, Kind,
    autoscaling::{GROUP_LABEL, LifecycleState},
    client::WatchUpdate,
    instance::InstanceState,
    v1::{
        AutoScalingGroup, AutoScalingGroupSpec, AutoScalingGroupStatus, EventType,
        LaunchTemplateData, Object, object::Resource,
    },
};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::Code;

/// The group every round uses.
const GROUP: &str = "bench-asg";
/// The zones it spans: one agent in each (see the `cluster` module).
const ZONES: [&str; 2] = ["az-a", "az-b"];

/// The targets the figures are compared with.
const TARGET_SCALE_OUT_S: f64 = 5.0;
const TARGET_REPLACE_P99_MS: f64 = 3000.0;

#[derive(Debug, Clone, clap::Args)]
pub struct AsgArgs {
    #[arg(long, env = "HANUL_BIN", default_value = "target/release/hanul")]
    pub hanul_bin: PathBuf,
    /// The desired capacity of the scale-out round (0 → this), also the group's `maxSize`.
    #[arg(long, default_value_t = 100)]
    pub capacity: u32,
    /// The group's size while instances are killed and replaced.
    #[arg(long, default_value_t = 10)]
    pub steady: u32,
    /// How many instances are killed (one after another, each replaced before the next).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Copy the server's and the agents' logs into this directory at the end (the group
    /// controller logs each launch and termination there).
    #[arg(long)]
    pub logs: Option<PathBuf>,
}

pub async fn run(args: AsgArgs) -> anyhow::Result<()> {
    if args.capacity == 0 || args.steady == 0 || args.steady > args.capacity {
        bail!("need 0 < --steady <= --capacity");
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
    // Also after a failure: the group goes first (it would replace the instances deleted
    // next), then the instances, before the agents (see the module doc).
    if let Err(e) = delete_group(&cluster).await {
        out.line(&format!("cleanup: {e:#}"));
    }
    if let Some(dir) = &args.logs
        && let Err(e) = copy_logs(&cluster, dir)
    {
        out.line(&format!("copying the logs: {e:#}"));
    }
    drop(cluster);
    let result = result?;
    result.print(&args, &mut out);
    Ok(())
}

/// What [`measure`] found, printed at the end.
struct Figures {
    /// 0 → capacity: the update call returned; every instance recorded by the group (launch
    /// planned); the first in service; every instance running (agents); every one in service.
    out_update: Duration,
    out_recorded: Duration,
    out_first: Duration,
    out_running: Duration,
    out_total: Duration,
    by_zone: BTreeMap<String, u32>,
    by_node: BTreeMap<String, usize>,
    /// How many updates of the group (its spec, then its status) the watch delivered on the
    /// way.
    out_writes: usize,
    scale_in_total: Duration,
    /// Kill → the victim's record out of service; → the new instance recorded; → it running;
    /// → it in service with `inService` back at the size.
    detect: Summary,
    launched: Summary,
    running: Summary,
    replaced: Summary,
    to_zero: Duration,
}

async fn measure(cluster: &Cluster, args: &AsgArgs, out: &mut Out) -> anyhow::Result<Figures> {
    let client = &cluster.client;
    create_image_and_type(client).await?;
    let mut groups = GroupWatch::start(client).await?;
    let created = client
        .create(group(args.capacity).into())
        .await
        .with_context(|| format!("creating auto scaling group {GROUP}"))?;
    let generation = created.metadata().map_or(1, |m| m.generation);
    groups
        .until("the group controller to take the new group in", WAIT, |g| {
            g.status.observed_generation >= generation
        })
        .await?;
    out.line(&format!(
        "group {GROUP}: zones {}, image {IMAGE}, type {INSTANCE_TYPE}, maxSize {}, EC2 health \
         checks, grace period 0 s",
        ZONES.join(", "),
        args.capacity
    ));

    // Round 1: 0 → capacity.
    let n = args.capacity;
    let mut instances = InstanceWatch::start(client).await?;
    let writes_before = groups.events;
    let t0 = Instant::now();
    set_desired(client, n).await?;
    let out_update = t0.elapsed();
    let (mut recorded, mut first) = (None, None);
    let done = groups
        .until(&format!("{n} in service"), WAIT, |g| {
            if recorded.is_none() && g.status.instances.len() >= n as usize {
                recorded = Some(g.at);
            }
            if first.is_none() && g.status.in_service > 0 {
                first = Some(g.at);
            }
            g.status.in_service == n
        })
        .await?;
    let out_writes = groups.events - writes_before;
    let names = in_service(&done.status);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let running = instances.until_running(&name_refs, WAIT).await?;
    let out_running = running
        .values()
        .map(|s| s.at)
        .max()
        .map_or(Duration::ZERO, |at| at - t0);
    let mut by_node = BTreeMap::new();
    for s in running.values() {
        *by_node.entry(s.node.clone()).or_insert(0) += 1;
    }
    let by_zone: BTreeMap<String, u32> = done
        .status
        .in_service_by_zone
        .iter()
        .map(|(z, n)| (z.clone(), *n))
        .collect();
    let out_total = done.at - t0;
    let out_recorded = recorded.map_or(Duration::ZERO, |at| at - t0);
    let out_first = first.map_or(Duration::ZERO, |at| at - t0);
    out.line(&format!(
        "desired 0 → {n}: all {n} in service after {:.3} s (update call {:.1} ms; all {n} \
         recorded by the group after {:.3} s; first in service after {:.3} s; all running on \
         the agents after {:.3} s; {out_writes} updates of the group seen); in service by zone: \
         {}; by node: {}",
        out_total.as_secs_f64(),
        out_update.as_secs_f64() * 1e3,
        out_recorded.as_secs_f64(),
        out_first.as_secs_f64(),
        out_running.as_secs_f64(),
        counts(&by_zone),
        counts(&by_node),
    ));

    // Down to the steady size (a scale in of capacity - steady).
    let steady = args.steady;
    let t1 = Instant::now();
    set_desired(client, steady).await?;
    let done = groups
        .until(&format!("{steady} in service, nothing else"), WAIT, |g| {
            is_steady(&g.status, steady)
        })
        .await?;
    let scale_in_total = done.at - t1;
    out.line(&format!(
        "desired {n} → {steady}: {steady} in service and the other {} terminated after {:.2} s",
        n - steady,
        scale_in_total.as_secs_f64()
    ));

    // Round 2: kill one in-service instance after another.
    let (mut detect, mut launched, mut running, mut replaced) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for k in 0..args.kills {
        let before = groups
            .until(&format!("{steady} in service, nothing else"), WAIT, |g| {
                is_steady(&g.status, steady)
            })
            .await?;
        let zone = ZONES[k % ZONES.len()];
        let victim = before
            .status
            .instances
            .iter()
            .find(|r| r.zone == zone)
            .or(before.status.instances.first())
            .map(|r| r.instance.clone())
            .context("the group has no instance to kill")?;
        let serving = in_service(&before.status);
        let pid = running_pid(client, &victim).await?;
        let t0 = Instant::now();
        kill(pid).await?;
        let (mut out_of_service, mut recorded) = (None, None);
        let done = groups
            .until(
                &format!("a replacement of {victim} in service"),
                WAIT,
                |g| {
                    let now = in_service(&g.status);
                    if out_of_service.is_none() && !now.contains(&victim) {
                        out_of_service = Some(g.at);
                    }
                    if recorded.is_none()
                        && g.status
                            .instances
                            .iter()
                            .any(|r| !serving.contains(&r.instance))
                    {
                        recorded = Some(g.at);
                    }
                    g.status.in_service == steady
                        && !now.contains(&victim)
                        && now.iter().any(|i| !serving.contains(i))
                },
            )
            .await?;
        let new: Vec<String> = in_service(&done.status)
            .into_iter()
            .filter(|i| !serving.contains(i))
            .collect();
        let new_refs: Vec<&str> = new.iter().map(String::as_str).collect();
        let up = instances.until_running(&new_refs, WAIT).await?;
        let at_running = up.values().map(|s| s.at).max().unwrap_or(done.at);
        let since = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| at - t0);
        detect.push(since(out_of_service));
        launched.push(since(recorded));
        running.push(at_running - t0);
        replaced.push(done.at - t0);
        out.line(&format!(
            "kill {:>2}: {victim} ({zone}, pid {pid}) → out of service {:>6.1} ms, {} recorded \
             {:>6.1} ms, running {:>6.1} ms, in service {:>6.1} ms",
            k + 1,
            since(out_of_service).as_secs_f64() * 1e3,
            new.join(", "),
            since(recorded).as_secs_f64() * 1e3,
            (at_running - t0).as_secs_f64() * 1e3,
            (done.at - t0).as_secs_f64() * 1e3,
        ));
    }
    drop(instances);

    // Round 3: to zero.
    let t2 = Instant::now();
    set_desired(client, 0).await?;
    let done = groups
        .until("no instance left in the group", WAIT, |g| {
            g.status.in_service == 0 && g.status.instances.is_empty()
        })
        .await?;
    let to_zero = done.at - t2;
    out.line(&format!(
        "desired {steady} → 0: every instance terminated after {:.2} s",
        to_zero.as_secs_f64()
    ));
    Ok(Figures {
        out_update,
        out_recorded,
        out_first,
        out_running,
        out_total,
        by_zone,
        by_node,
        out_writes,
        scale_in_total,
        detect: detect.summary(),
        launched: launched.summary(),
        running: running.summary(),
        replaced: replaced.summary(),
        to_zero,
    })
}

impl Figures {
    fn print(&self, args: &AsgArgs, out: &mut Out) {
        let n = args.capacity;
        out.line("");
        out.line(&format!(
            "{:<34} | {:>7}",
            format!("scale out 0 → {n}"),
            "s"
        ));
        out.line(&format!("{:-<34} | {:->7}", "", ""));
        for (what, d) in [
            ("update call returned".to_string(), self.out_update),
            (format!("all {n} recorded by the group"), self.out_recorded),
            ("first in service".to_string(), self.out_first),
            (format!("all {n} running on the agents"), self.out_running),
            (format!("all {n} in service"), self.out_total),
        ] {
            out.line(&format!("{what:<34} | {:>7.3}", d.as_secs_f64()));
        }
        out.line(&format!(
            "in service by zone: {}; instances by node: {}; {} updates of the group seen",
            counts(&self.by_zone),
            counts(&self.by_node),
            self.out_writes
        ));
        out.line("");
        out.line(&format!(
            "{:<34} | {:>8} | {:>8} | {:>8}",
            format!(
                "replacement ({} kills, size {})",
                self.replaced.count, args.steady
            ),
            "p50 ms",
            "p99 ms",
            "max ms"
        ));
        out.line(&format!(
            "{:-<34} | {:->8} | {:->8} | {:->8}",
            "", "", "", ""
        ));
        for (what, s) in [
            ("kill → victim out of service", &self.detect),
            ("kill → replacement recorded", &self.launched),
            ("kill → replacement running", &self.running),
            ("kill → replacement in service", &self.replaced),
        ] {
            out.line(&format!(
                "{what:<34} | {:>8.1} | {:>8.1} | {:>8.1}",
                s.p50_ms, s.p99_ms, s.max_ms
            ));
        }
        out.line(
            "(no health-check interval: the agent reaps its instances' processes and records an \
             exit at once; the group controller watches its instances)",
        );
        out.line(&format!(
            "scale in {n} → {}: {:.2} s; {} → 0: {:.2} s",
            args.steady,
            self.scale_in_total.as_secs_f64(),
            args.steady,
            self.to_zero.as_secs_f64()
        ));
        out.line("");
        let total = self.out_total.as_secs_f64();
        let rows = [
            (
                format!("desired 0 → {n}, all in service < {TARGET_SCALE_OUT_S:.0} s"),
                format!("{total:.2} s"),
                total < TARGET_SCALE_OUT_S,
            ),
            (
                format!("kill → replacement in service p99 < {TARGET_REPLACE_P99_MS:.0} ms"),
                format!("{:.1} ms", self.replaced.p99_ms),
                self.replaced.p99_ms < TARGET_REPLACE_P99_MS,
            ),
        ];
        out.line(&format!("{:<46} | {:>10} | result", "target", "measured"));
        out.line(&format!("{:-<46} | {:->10} | ------", "", ""));
        for (target, measured, ok) in rows {
            let verdict = if ok { "PASS" } else { "MISS" };
            out.line(&format!("{target:<46} | {measured:>10} | {verdict}"));
        }
    }
}

/// The group, at desired capacity 0.
fn group(max_size: u32) -> AutoScalingGroup {
    AutoScalingGroup {
        metadata: Some(meta(GROUP)),
        spec: Some(AutoScalingGroupSpec {
            launch_template: Some(LaunchTemplateData {
                image: IMAGE.into(),
                instance_type: INSTANCE_TYPE.into(),
                ..Default::default()
            }),
            min_size: 0,
            max_size,
            desired_capacity: Some(0),
            zones: ZONES.iter().map(|z| z.to_string()).collect(),
            health_check_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        status: None,
    }
}

/// Sets the group's desired capacity as `hanul scale asg` does: read, change, write with the
/// read's resourceVersion, again on a conflict (the controller writes the group's status).
async fn set_desired(client: &Client, desired: u32) -> anyhow::Result<()> {
    for _ in 0..20 {
        let mut o = client
            .get(Kind::AutoScalingGroup, GROUP)
            .await
            .with_context(|| format!("reading group {GROUP}"))?;
        let Some(Resource::AutoScalingGroup(g)) = &mut o.resource else {
            bail!("{GROUP} is not an auto scaling group");
        };
        g.spec
            .get_or_insert_with(AutoScalingGroupSpec::default)
            .desired_capacity = Some(desired);
        match client.update(o).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::Aborted => continue,
            Err(s) => bail!("setting the desired capacity of {GROUP} to {desired}: {s}"),
        }
    }
    bail!("setting the desired capacity of {GROUP} to {desired}: 20 conflicts in a row")
}

/// The `status.pid` of a running instance.
async fn running_pid(client: &Client, instance: &str) -> anyhow::Result<u32> {
    let o = client
        .get(Kind::Instance, instance)
        .await
        .with_context(|| format!("reading instance {instance}"))?;
    let status = o
        .as_instance()
        .and_then(|i| i.status.clone())
        .unwrap_or_default();
    if status.state != InstanceState::Running.as_str() || status.pid <= 0 {
        bail!(
            "instance {instance} is in service but not running with a pid: state {:?}, pid {}",
            status.state,
            status.pid
        );
    }
    Ok(u32::try_from(status.pid)?)
}

/// SIGKILLs a process (with `kill(1)`: the crate denies unsafe code).
async fn kill(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed ({status})");
    }
    Ok(())
}

/// Deletes the group and then every instance it had, and waits until they are gone.
async fn delete_group(cluster: &Cluster) -> anyhow::Result<()> {
    match cluster.client.delete(Kind::AutoScalingGroup, GROUP).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => bail!("deleting group {GROUP}: {s}"),
    }
    cluster
        .delete_all_instances(&format!("{GROUP_LABEL}={GROUP}"))
        .await
}

fn copy_logs(cluster: &Cluster, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut logs = vec![("server.log".to_string(), cluster.server.log_path())];
    for a in &cluster.agents {
        logs.push((
            format!("agent-{}.log", a.name),
            a.child.log_path().to_path_buf(),
        ));
    }
    for (name, from) in logs {
        std::fs::copy(&from, dir.join(&name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// The group's in-service instances.
fn in_service(status: &AutoScalingGroupStatus) -> BTreeSet<String> {
    status
        .instances
        .iter()
        .filter(|r| r.lifecycle_state == LifecycleState::InService.as_str())
        .map(|r| r.instance.clone())
        .collect()
}

/// `size` in service and no other record (nothing launching or still terminating).
fn is_steady(status: &AutoScalingGroupStatus, size: u32) -> bool {
    status.in_service == size && status.instances.len() == size as usize
}

fn counts<K: std::fmt::Display, V: std::fmt::Display>(m: &BTreeMap<K, V>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the watch showed of the group, when it arrived.
#[derive(Debug, Clone)]
struct GroupSeen {
    status: AutoScalingGroupStatus,
    at: Instant,
}

/// A watch on the benchmark's group, read by a task of its own so that arrival times are taken
/// as soon as the server delivers; aborted on drop.
struct GroupWatch {
    rx: mpsc::UnboundedReceiver<GroupSeen>,
    task: JoinHandle<()>,
    last: Option<GroupSeen>,
    /// The updates of the group received so far.
    events: usize,
}

impl GroupWatch {
    /// Opens the watch and returns once its initial list has arrived.
    async fn start(client: &Client) -> anyhow::Result<GroupWatch> {
        let mut updates = Box::pin(client.list_watch(Some(Kind::AutoScalingGroup), ""));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, updates.next()).await {
                Ok(Some(WatchUpdate::Listed { .. })) => break,
                Ok(Some(WatchUpdate::Error(status))) => {
                    bail!("listing auto scaling groups to watch them: {status}")
                }
                Ok(Some(WatchUpdate::Event(_))) => {}
                Ok(None) => bail!("the group watch ended before its first list"),
                Err(_) => bail!("the group watch did not list within {WAIT:?}"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                let at = Instant::now();
                let objects: Vec<Object> = match update {
                    WatchUpdate::Event(ev) if ev.r#type() != EventType::Deleted => {
                        ev.object.into_iter().collect()
                    }
                    WatchUpdate::Listed { items, .. } => items,
                    // A deleted group ends the rounds' waits by their timeout, as does an
                    // error (the stream retries on its own).
                    WatchUpdate::Event(_) | WatchUpdate::Error(_) => Vec::new(),
                };
                for o in objects {
                    let Some(Resource::AutoScalingGroup(g)) = &o.resource else {
                        continue;
                    };
                    if o.name() != GROUP {
                        continue;
                    }
                    let status = g.status.clone().unwrap_or_default();
                    if tx.send(GroupSeen { status, at }).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(GroupWatch {
            rx,
            task,
            last: None,
            events: 0,
        })
    }

    /// Waits until `done` accepts what the watch shows of the group (the last thing it showed
    /// first, then each update in turn); returns that.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&GroupSeen) -> bool,
    ) -> anyhow::Result<GroupSeen> {
        if let Some(last) = &self.last
            && done(last)
        {
            return Ok(last.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(seen)) => {
                    self.events += 1;
                    let hit = done(&seen);
                    self.last = Some(seen.clone());
                    if hit {
                        return Ok(seen);
                    }
                }
                Ok(None) => bail!("the group watch ended while waiting for {what}"),
                Err(_) => bail!(
                    "waited {timeout:?} for {what}; the group last showed: {}",
                    self.describe()
                ),
            }
        }
    }

    /// The last status seen: in service, the records per lifecycle state, the Ready message.
    fn describe(&self) -> String {
        let Some(last) = &self.last else {
            return "nothing".into();
        };
        let s = &last.status;
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &s.instances {
            *states.entry(r.lifecycle_state.as_str()).or_insert(0) += 1;
        }
        format!(
            "desired {}, in service {}, records: {}; {}",
            s.desired_capacity,
            s.in_service,
            if states.is_empty() {
                "none".into()
            } else {
                counts(&states)
            },
            s.conditions
                .iter()
                .map(|c| format!("{}={} ({})", c.r#type, c.status, c.message))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl Drop for GroupWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::AutoScalingInstance;

    fn record(name: &str, state: LifecycleState) -> AutoScalingInstance {
        AutoScalingInstance {
            instance: name.into(),
            lifecycle_state: state.as_str().into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_group_is_steady_only_with_nothing_but_its_size_in_service() {
        let mut s = AutoScalingGroupStatus {
            in_service: 2,
            instances: vec![
                record("a", LifecycleState::InService),
                record("b", LifecycleState::InService),
            ],
            ..Default::default()
        };
        assert!(is_steady(&s, 2));
        assert_eq!(in_service(&s), ["a".to_string(), "b".to_string()].into());
        s.instances.push(record("c", LifecycleState::Terminating));
        assert!(!is_steady(&s, 2));
        assert_eq!(in_service(&s).len(), 2);
    }
}
