//! The Auto Scaling planner: from a group, its instances as the store shows them and the
//! health its target groups report, to the group's next status and the effects that bring the
//! world there. Pure: time comes in, names come from a closure, nothing is written here.
//!
//! The group's own status is its memory: each instance it launched has a record there
//! (`status.instances[]`) with its lifecycle state, and each step of the lifecycle is a change
//! of that record. The controller writes the status first (with a resourceVersion
//! precondition, so a planner that read a stale group cannot act twice) and only then carries
//! out the effects; effects that converge (launch a recorded instance that does not exist yet,
//! keep the annotations, terminate an instance whose record says so) are idempotent and are
//! re-derived from the records on every pass.
//!
//! The rules, in order:
//! 1. A changed launch template is a new version; with instances running it starts an
//!    instance refresh (as does `hanul asg start-instance-refresh`).
//! 2. Each record moves on from what is observed (launch, hooks, health, draining, exit).
//! 3. Instances the group owns but has no record of are adopted (a status write was lost).
//! 4. Capacity: launch up to desired (never above `maxSize`, counting every instance not yet
//!    terminated), in the zone with the fewest; scale in from the zone with the most, by the
//!    termination policies, never an instance a hook holds; an instance refresh launches its
//!    batch first when there is room and the scale in then takes the old ones; zones more than
//!    one apart are rebalanced the same way.

use crate::scheduler::conditions;
use hanul_proto::{
    autoscaling::{
        HealthCheckType, LifecycleResult, LifecycleState, Process, TerminationPolicy, Transition,
        action_annotation, heartbeat_annotation, template_hash,
    },
    instance::InstanceState,
    time::{system_time, timestamp},
    v1::{
        AutoScalingGroupSpec, AutoScalingGroupStatus, AutoScalingInstance, InstanceRefresh,
        LifecycleHook, LifecycleWait, ScalingActivity,
    },
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

/// How long a recorded launch may be missing from the store before it counts as gone.
pub const LAUNCH_GRACE: Duration = Duration::from_secs(30);
/// How long a launch may wait for room before it is given up and tried in another zone.
pub const CAPACITY_WAIT: Duration = Duration::from_secs(10);
/// The scaling activities kept in status.
pub const MAX_ACTIVITIES: usize = 100;
/// Instances of a refresh's new version that may fail before the refresh stops.
pub const REFRESH_FAILURE_LIMIT: u32 = 3;
/// How long past the deregistration delay a terminating instance waits for its target groups
/// to report it drained.
pub const DRAIN_SLACK: Duration = Duration::from_secs(5);
/// The group's condition: every desired instance is in service and healthy.
pub const CONDITION_READY: &str = "Ready";

/// One instance the group owns, as the store shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub zone: String,
    /// `status.state`; empty before the agent reports.
    pub state: String,
    /// `spec.state` is `terminated`.
    pub terminate_requested: bool,
    /// `StatusCheck=False`: its node stopped answering.
    pub impaired: bool,
    /// Its node is known and not Ready.
    pub node_lost: bool,
    /// Bound to a node (it holds capacity there).
    pub bound: bool,
    /// The scheduler found no node with room for it (`InsufficientInstanceCapacity`).
    pub unschedulable: bool,
    /// Its launch template version label.
    pub version: u32,
    pub created: Option<SystemTime>,
    pub annotations: BTreeMap<String, String>,
}

/// What the planner reads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub name: &'a str,
    pub generation: i64,
    /// The group's spec, defaults filled in.
    pub spec: &'a AutoScalingGroupSpec,
    pub status: &'a AutoScalingGroupStatus,
    /// The group's refresh and cancel annotations.
    pub refresh_request: Option<&'a str>,
    pub cancel_request: Option<&'a str>,
    /// The instances the group owns, by name.
    pub instances: &'a BTreeMap<String, Observed>,
    /// What the group's target groups report, by instance: (target group, health).
    pub target_health: &'a BTreeMap<String, Vec<(String, String)>>,
    /// The longest deregistration delay of the group's target groups.
    pub deregistration_delay: Duration,
    /// The zones to spread over, each with whether a Ready node can take instances there.
    pub zones: &'a [(String, bool)],
    /// How many more instances of the launch template's type the Ready nodes of each zone
    /// have room for, not counting the group's launches not yet bound; absent: unknown.
    pub room: &'a BTreeMap<String, u32>,
    pub now: SystemTime,
}

/// What the controller does after writing the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Create the instance (it may exist already).
    Launch {
        instance: String,
        zone: String,
        version: u32,
    },
    /// Set (Some) or remove (None) annotations on the instance.
    Annotate {
        instance: String,
        annotations: Vec<(String, Option<String>)>,
    },
    /// Set the instance's `spec.state` to `terminated`.
    Terminate { instance: String },
    /// Send the lifecycle message of `hook` about `instance` (it just began to wait).
    Notify { hook: String, instance: String },
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: AutoScalingGroupStatus,
    pub effects: Vec<Effect>,
    /// When to look again even if nothing changes (a hook's deadline, a grace period's end).
    pub wake: Option<Duration>,
}

/// Why an instance left service, in the words of AWS's activity causes.
const CAUSE_HEALTH: &str = "an instance was taken out of service in response to a health check";

fn is_active(state: &str) -> bool {
    matches!(
        LifecycleState::parse(state),
        Some(
            LifecycleState::Pending
                | LifecycleState::PendingWait
                | LifecycleState::PendingProceed
                | LifecycleState::InService
        )
    )
}

/// Stopped, stopping, terminating or gone: an instance that no longer serves.
fn is_down(o: &Observed) -> bool {
    o.terminate_requested
        || matches!(
            InstanceState::parse(&o.state),
            Some(
                InstanceState::Stopping
                    | InstanceState::Stopped
                    | InstanceState::ShuttingDown
                    | InstanceState::Terminated
            )
        )
}

/// Names no new instance may take: those recorded and those in the store.
fn names_taken<'a>(
    records: &'a [AutoScalingInstance],
    instances: &'a BTreeMap<String, Observed>,
) -> std::collections::HashSet<&'a str> {
    records
        .iter()
        .map(|r| r.instance.as_str())
        .chain(instances.keys().map(String::as_str))
        .collect()
}

fn holds_capacity(state: &str) -> bool {
    LifecycleState::parse(state) != Some(LifecycleState::Terminated)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn at(t: &Option<pbjson_types::Timestamp>) -> SystemTime {
    t.as_ref()
        .map(system_time)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The group's next status and effects.
pub fn plan(input: &Input<'_>, names: &mut dyn FnMut() -> String) -> Plan {
    let mut p = Planner {
        input,
        now: input.now,
        status: input.status.clone(),
        effects: Vec::new(),
        wake: None,
        waiting_zones: Vec::new(),
    };
    p.status.observed_generation = input.generation;
    p.version();
    p.refresh_requests();
    p.observe();
    p.adopt();
    p.capacity(names);
    p.finish();
    Plan {
        status: p.status,
        effects: p.effects,
        wake: p.wake,
    }
}

struct Planner<'a, 'i> {
    input: &'a Input<'i>,
    now: SystemTime,
    status: AutoScalingGroupStatus,
    effects: Vec<Effect>,
    wake: Option<Duration>,
    /// Zones with no Ready node, for the condition's message.
    waiting_zones: Vec<String>,
}

impl Planner<'_, '_> {
    fn spec(&self) -> &AutoScalingGroupSpec {
        self.input.spec
    }

    fn desired(&self) -> u32 {
        self.spec().desired_capacity.unwrap_or(self.spec().min_size)
    }

    fn suspended(&self, p: Process) -> bool {
        self.spec()
            .suspended_processes
            .iter()
            .any(|s| s == p.as_str())
    }

    fn wake_at(&mut self, t: SystemTime) {
        let d = t.duration_since(self.now).unwrap_or_default();
        self.wake = Some(self.wake.map_or(d, |w| w.min(d)));
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.spec()
                .health_check_grace_period_seconds
                .unwrap_or(0)
                .into(),
        )
    }

    fn warmup(&self) -> Duration {
        let r = self.spec().instance_refresh.unwrap_or_default();
        Duration::from_secs(
            r.instance_warmup_seconds
                .or(self.spec().health_check_grace_period_seconds)
                .unwrap_or(0)
                .into(),
        )
    }

    fn hooks(&self, t: Transition) -> Vec<&LifecycleHook> {
        self.input
            .spec
            .lifecycle_hooks
            .iter()
            .filter(|h| h.transition == t.as_str())
            .collect()
    }

    // --- activities ---

    fn start_activity(&mut self, description: String, cause: String, instance: &str) -> u64 {
        self.status.activity_count += 1;
        let id = self.status.activity_count;
        self.status.activities.push(ScalingActivity {
            id,
            description,
            cause,
            start_time: Some(timestamp(self.now)),
            end_time: None,
            status_code: "InProgress".into(),
            status_message: String::new(),
            instance: instance.into(),
        });
        id
    }

    fn end_activity(&mut self, id: u64, code: &str, message: &str) {
        if let Some(a) = self.status.activities.iter_mut().find(|a| a.id == id)
            && a.end_time.is_none()
        {
            a.end_time = Some(timestamp(self.now));
            a.status_code = code.into();
            a.status_message = message.into();
        }
    }

    // --- 1. versions and refresh requests ---

    fn version(&mut self) {
        let Some(t) = &self.input.spec.launch_template else {
            return;
        };
        let hash = template_hash(t);
        if self.status.launch_template_hash == hash {
            return;
        }
        let first = self.status.launch_template_hash.is_empty();
        self.status.launch_template_hash = hash;
        self.status.launch_template_version += 1;
        if !first {
            self.start_refresh("the launch template changed");
        }
    }

    fn refresh_requests(&mut self) {
        if let Some(r) = self.input.refresh_request
            && r != self.status.refresh_request_handled
        {
            self.status.refresh_request_handled = r.to_owned();
            // A refresh of the same template: a new version number, so every instance is old.
            self.status.launch_template_version += 1;
            self.start_refresh("an instance refresh was requested");
        }
        if let Some(c) = self.input.cancel_request
            && c != self.status.cancel_request_handled
        {
            self.status.cancel_request_handled = c.to_owned();
            if let Some(r) = &mut self.status.instance_refresh
                && matches!(r.status.as_str(), "Pending" | "InProgress")
            {
                r.status = "Cancelled".into();
                r.status_reason = "cancelled by request".into();
                r.end_time = Some(timestamp(self.now));
            }
        }
    }

    fn start_refresh(&mut self, why: &str) {
        let version = self.status.launch_template_version;
        let to_update = self
            .status
            .instances
            .iter()
            .filter(|r| is_active(&r.lifecycle_state) && r.launch_template_version < version)
            .count() as u32;
        let number = self
            .status
            .instance_refresh
            .as_ref()
            .and_then(|r| r.id.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let pct = self
            .spec()
            .instance_refresh
            .as_ref()
            .and_then(|r| r.min_healthy_percentage)
            .unwrap_or(hanul_proto::autoscaling::DEFAULT_MIN_HEALTHY_PERCENTAGE);
        self.status.instance_refresh = Some(InstanceRefresh {
            id: number.to_string(),
            status: if to_update == 0 {
                "Successful"
            } else {
                "InProgress"
            }
            .into(),
            status_reason: if to_update == 0 {
                format!("{why}; no instance to replace")
            } else {
                format!("{why}: replacing {to_update} instances with version {version}")
            },
            percentage_complete: if to_update == 0 { 100 } else { 0 },
            instances_to_update: to_update,
            start_time: Some(timestamp(self.now)),
            end_time: (to_update == 0).then(|| timestamp(self.now)),
            launch_template_version: version,
            min_healthy_percentage: pct,
            failed_instances: 0,
        });
    }

    fn refreshing(&self) -> Option<&InstanceRefresh> {
        self.status
            .instance_refresh
            .as_ref()
            .filter(|r| r.status == "InProgress")
    }

    /// An instance of the refresh's new version failed: count it, and stop the refresh at the
    /// limit instead of replacing the group with instances that do not work.
    fn refresh_failure(&mut self, version: u32, why: &str) {
        let now = self.now;
        if let Some(r) = &mut self.status.instance_refresh
            && r.status == "InProgress"
            && version >= r.launch_template_version
        {
            r.failed_instances += 1;
            if r.failed_instances >= REFRESH_FAILURE_LIMIT {
                r.status = "Failed".into();
                r.status_reason = format!(
                    "{} instances of launch template version {} failed: the last: {why}; the remaining old instances are kept",
                    r.failed_instances, r.launch_template_version
                );
                r.end_time = Some(timestamp(now));
            }
        }
    }

    // --- 2. each record moves on ---

    fn observe(&mut self) {
        let mut records = std::mem::take(&mut self.status.instances);
        for r in &mut records {
            self.step(r);
        }
        self.status.instances = records;
    }

    fn set_state(&self, r: &mut AutoScalingInstance, s: LifecycleState) {
        r.lifecycle_state = s.as_str().into();
        r.state_time = Some(timestamp(self.now));
    }

    /// A launch that did not make it to service: the instance goes (through the termination
    /// hooks, if it runs) and another one replaces it.
    fn fail_launch(&mut self, r: &mut AutoScalingInstance, why: String, exists: bool) {
        self.end_activity(r.activity, "Failed", &why);
        self.refresh_failure(r.launch_template_version, &why);
        r.health_status = "Unhealthy".into();
        r.reason = why.clone();
        if exists {
            self.begin_termination(r, format!("At {} {why}", rfc3339(self.now)));
        } else {
            self.set_state(r, LifecycleState::Terminated);
        }
    }

    /// Out of service: deregistered (the record no longer asks for it), then drained, then
    /// the termination hooks; as far as the world allows in this pass.
    fn begin_termination(&mut self, r: &mut AutoScalingInstance, cause: String) {
        r.waits.clear();
        self.set_state(r, LifecycleState::Terminating);
        r.activity = self.start_activity(
            format!("Terminating EC2 instance: {}", r.instance),
            cause,
            &r.instance,
        );
        let obs = self.input.instances.get(&r.instance).cloned();
        self.drain(r, obs.as_ref());
    }

    fn step(&mut self, r: &mut AutoScalingInstance) {
        let obs = self.input.instances.get(&r.instance).cloned();
        let state = LifecycleState::parse(&r.lifecycle_state).unwrap_or(LifecycleState::Pending);
        let observed_state = obs.as_ref().and_then(|o| InstanceState::parse(&o.state));
        match state {
            LifecycleState::Pending | LifecycleState::PendingWait => {
                let Some(o) = &obs else {
                    let launched = at(&r.launched_at);
                    if self.now >= launched + LAUNCH_GRACE {
                        self.fail_launch(r, "the instance no longer exists".into(), false);
                    } else {
                        self.wake_at(launched + LAUNCH_GRACE);
                    }
                    return;
                };
                if is_down(o) {
                    let why = format!(
                        "the instance is {} before it came into service",
                        if o.state.is_empty() { "gone" } else { &o.state }
                    );
                    return self.fail_launch(r, why, true);
                }
                if o.node_lost {
                    return self.fail_launch(
                        r,
                        "the instance's node stopped answering before it came into service".into(),
                        true,
                    );
                }
                let zone_ready = self.input.zones.iter().any(|(z, ok)| *ok && *z == r.zone);
                if state == LifecycleState::Pending && o.unschedulable && !o.bound {
                    let give_up = at(&r.launched_at) + CAPACITY_WAIT;
                    if self.now >= give_up {
                        return self.fail_launch(
                            r,
                            format!(
                                "InsufficientInstanceCapacity: no node in zone {} has room for the instance",
                                r.zone
                            ),
                            true,
                        );
                    }
                    self.wake_at(give_up);
                }
                if state == LifecycleState::Pending
                    && observed_state != Some(InstanceState::Running)
                    && !zone_ready
                {
                    return self.fail_launch(r, format!("no Ready node in zone {}", r.zone), true);
                }
                if state == LifecycleState::Pending {
                    if observed_state != Some(InstanceState::Running) {
                        return;
                    }
                    let hooks: Vec<LifecycleHook> = self
                        .hooks(Transition::Launching)
                        .into_iter()
                        .cloned()
                        .collect();
                    if !hooks.is_empty() {
                        self.enter_wait(r, LifecycleState::PendingWait, &hooks);
                        return;
                    }
                } else {
                    match self.decide(r, o) {
                        None => return,
                        Some(LifecycleResult::Abandon) => {
                            let hook = r
                                .waits
                                .iter()
                                .find(|w| w.result == LifecycleResult::Abandon.as_str())
                                .map(|w| w.hook.clone())
                                .unwrap_or_default();
                            return self.fail_launch(
                                r,
                                format!("the launch was abandoned by lifecycle hook {hook}"),
                                true,
                            );
                        }
                        Some(LifecycleResult::Continue) => {}
                    }
                }
                // Pending:Proceed, then in service (registration follows from the record).
                self.set_state(r, LifecycleState::PendingProceed);
                self.set_state(r, LifecycleState::InService);
                r.waits.clear();
                r.in_service_at = Some(timestamp(self.now));
                r.health_status = "Healthy".into();
                r.reason.clear();
                self.end_activity(r.activity, "Successful", "");
            }
            LifecycleState::PendingProceed => {
                self.set_state(r, LifecycleState::InService);
                r.in_service_at = Some(timestamp(self.now));
                r.health_status = "Healthy".into();
                self.end_activity(r.activity, "Successful", "");
            }
            LifecycleState::InService => {
                if !self.suspended(Process::HealthCheck)
                    && r.health_status != "Unhealthy"
                    && let Some(why) = self.health(r, obs.as_ref())
                {
                    r.health_status = "Unhealthy".into();
                    r.reason = why;
                }
                if r.health_status == "Unhealthy"
                    && !self.suspended(Process::ReplaceUnhealthy)
                    && !self.suspended(Process::Terminate)
                {
                    let cause = format!("At {} {CAUSE_HEALTH}: {}", rfc3339(self.now), r.reason);
                    if r.launch_template_version
                        >= self
                            .refreshing()
                            .map_or(u32::MAX, |f| f.launch_template_version)
                    {
                        let why = r.reason.clone();
                        self.refresh_failure(r.launch_template_version, &why);
                    }
                    self.begin_termination(r, cause);
                }
            }
            LifecycleState::Terminating => self.drain(r, obs.as_ref()),
            LifecycleState::TerminatingWait => {
                let Some(o) = &obs else {
                    return self.terminated(r);
                };
                if self.decide(r, o).is_some() {
                    self.set_state(r, LifecycleState::TerminatingProceed);
                    self.proceed(r, obs.as_ref());
                }
            }
            LifecycleState::TerminatingProceed => self.proceed(r, obs.as_ref()),
            LifecycleState::Terminated => {}
        }
    }

    /// Why an in-service instance is unhealthy, if it is.
    fn health(&mut self, r: &AutoScalingInstance, obs: Option<&Observed>) -> Option<String> {
        let Some(o) = obs else {
            return Some("EC2 health check: the instance no longer exists".into());
        };
        if o.terminate_requested || o.state != InstanceState::Running.as_str() {
            let s = if o.terminate_requested && o.state == "running" {
                "being terminated"
            } else {
                o.state.as_str()
            };
            return Some(format!("EC2 health check: the instance is {s}"));
        }
        let grace_end = at(&r.in_service_at) + self.grace();
        let elb_unhealthy = (self.spec().health_check_type == HealthCheckType::Elb.as_str())
            .then(|| {
                self.input
                    .target_health
                    .get(&r.instance)
                    .into_iter()
                    .flatten()
                    .find(|(_, h)| h == "unhealthy")
                    .map(|(g, _)| g.clone())
            })
            .flatten();
        if !(o.impaired || o.node_lost || elb_unhealthy.is_some()) {
            return None;
        }
        if self.now < grace_end {
            self.wake_at(grace_end);
            return None;
        }
        if o.impaired || o.node_lost {
            return Some(
                "EC2 health check: instance status impaired (its node is not Ready)".into(),
            );
        }
        elb_unhealthy.map(|g| format!("ELB health check: target group {g} reports it unhealthy"))
    }

    /// Deregistered and drained (or nothing to drain): on to the termination hooks.
    fn drain(&mut self, r: &mut AutoScalingInstance, obs: Option<&Observed>) {
        let Some(o) = obs else {
            return self.terminated(r);
        };
        let serving = self
            .input
            .target_health
            .get(&r.instance)
            .into_iter()
            .flatten()
            .any(|(_, h)| h != "unused");
        let deadline = at(&r.state_time) + self.input.deregistration_delay + DRAIN_SLACK;
        let drained = !serving || is_down(o) || o.node_lost || self.now >= deadline;
        if !drained {
            self.wake_at(deadline);
            return;
        }
        let hooks: Vec<LifecycleHook> = self
            .hooks(Transition::Terminating)
            .into_iter()
            .cloned()
            .collect();
        if hooks.is_empty() {
            self.set_state(r, LifecycleState::TerminatingProceed);
            self.proceed(r, obs);
        } else {
            self.enter_wait(r, LifecycleState::TerminatingWait, &hooks);
        }
    }

    fn proceed(&mut self, r: &mut AutoScalingInstance, obs: Option<&Observed>) {
        match obs {
            None => self.terminated(r),
            Some(o)
                if o.state == InstanceState::Terminated.as_str()
                    || (o.terminate_requested && o.node_lost) =>
            {
                self.terminated(r)
            }
            // The Terminate effect follows from the record.
            Some(_) => {}
        }
    }

    fn terminated(&mut self, r: &mut AutoScalingInstance) {
        self.set_state(r, LifecycleState::Terminated);
        r.waits.clear();
        self.end_activity(r.activity, "Successful", "");
    }

    fn enter_wait(
        &mut self,
        r: &mut AutoScalingInstance,
        s: LifecycleState,
        hooks: &[LifecycleHook],
    ) {
        self.set_state(r, s);
        r.waits = hooks
            .iter()
            .map(|h| {
                let timeout = Duration::from_secs(h.heartbeat_timeout_seconds.unwrap_or(0).into());
                LifecycleWait {
                    hook: h.name.clone(),
                    deadline: Some(timestamp(self.now + timeout)),
                    heartbeat: String::new(),
                    result: String::new(),
                }
            })
            .collect();
        // Heartbeats already on the instance (from an earlier wait) are not new ones.
        if let Some(o) = self.input.instances.get(&r.instance) {
            for w in &mut r.waits {
                if let Some(v) = o.annotations.get(&heartbeat_annotation(&w.hook)) {
                    w.heartbeat = v.clone();
                }
            }
        }
        for w in &r.waits {
            self.wake_at(at(&w.deadline));
        }
        for h in hooks {
            if !h.notification_target.is_empty() {
                self.effects.push(Effect::Notify {
                    hook: h.name.clone(),
                    instance: r.instance.clone(),
                });
            }
        }
    }

    /// The outcome of a wait once every hook has one: ABANDON if any says so.
    fn decide(&mut self, r: &mut AutoScalingInstance, o: &Observed) -> Option<LifecycleResult> {
        let now = self.now;
        let mut wakes = Vec::new();
        for w in &mut r.waits {
            if !w.result.is_empty() {
                continue;
            }
            let hook = self
                .input
                .spec
                .lifecycle_hooks
                .iter()
                .find(|h| h.name == w.hook);
            if let Some(result) = o
                .annotations
                .get(&action_annotation(&w.hook))
                .and_then(|v| LifecycleResult::parse(v))
            {
                w.result = result.as_str().into();
                continue;
            }
            if let Some(beat) = o.annotations.get(&heartbeat_annotation(&w.hook))
                && *beat != w.heartbeat
            {
                w.heartbeat = beat.clone();
                let timeout = hook.and_then(|h| h.heartbeat_timeout_seconds).unwrap_or(0);
                w.deadline = Some(timestamp(now + Duration::from_secs(timeout.into())));
            }
            let deadline = at(&w.deadline);
            // A hook removed from the spec no longer holds the instance.
            if now >= deadline || hook.is_none() {
                w.result = hook
                    .map(|h| h.default_result.clone())
                    .filter(|d| LifecycleResult::parse(d).is_some())
                    .unwrap_or_else(|| LifecycleResult::Continue.as_str().into());
            } else {
                wakes.push(deadline);
            }
        }
        for t in wakes {
            self.wake_at(t);
        }
        if r.waits.iter().any(|w| w.result.is_empty()) {
            return None;
        }
        Some(
            if r.waits
                .iter()
                .any(|w| w.result == LifecycleResult::Abandon.as_str())
            {
                LifecycleResult::Abandon
            } else {
                LifecycleResult::Continue
            },
        )
    }

    // --- 3. adoption ---

    fn adopt(&mut self) {
        for (name, o) in self.input.instances {
            if o.terminate_requested
                || o.state == InstanceState::Terminated.as_str()
                || self.status.instances.iter().any(|r| r.instance == *name)
            {
                continue;
            }
            let launched = o.created.unwrap_or(self.now);
            let activity = self.start_activity(
                format!("Launching a new EC2 instance: {name}"),
                format!(
                    "At {} the group found instance {name}, which it owns but had no record of",
                    rfc3339(self.now)
                ),
                name,
            );
            self.status.instances.push(AutoScalingInstance {
                instance: name.clone(),
                zone: o.zone.clone(),
                lifecycle_state: LifecycleState::Pending.as_str().into(),
                health_status: "Healthy".into(),
                launch_template_version: o.version,
                launched_at: Some(timestamp(launched)),
                state_time: Some(timestamp(self.now)),
                in_service_at: None,
                waits: Vec::new(),
                reason: String::new(),
                activity,
            });
        }
    }

    // --- 4. capacity ---

    fn zone_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = self
            .input
            .zones
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(z, _)| (z.clone(), 0))
            .collect();
        for r in &self.status.instances {
            if is_active(&r.lifecycle_state)
                && let Some(n) = counts.get_mut(&r.zone)
            {
                *n += 1;
            }
        }
        counts
    }

    /// Whether the zone's nodes have room for one more launch, counting the launches of the
    /// group not yet bound to a node.
    fn has_room(&self, zone: &str) -> bool {
        let Some(room) = self.input.room.get(zone) else {
            return true;
        };
        let unbound = self
            .status
            .instances
            .iter()
            .filter(|r| {
                r.zone == zone
                    && r.lifecycle_state == LifecycleState::Pending.as_str()
                    && self
                        .input
                        .instances
                        .get(&r.instance)
                        .is_none_or(|o| !o.bound)
            })
            .count() as u32;
        *room > unbound
    }

    /// The available zone with room and the fewest active instances (the first listed on a
    /// tie).
    fn launch_zone(&self) -> Option<String> {
        let counts = self.zone_counts();
        self.input
            .zones
            .iter()
            .filter(|(z, ok)| *ok && self.has_room(z))
            .min_by_key(|(z, _)| counts.get(z).copied().unwrap_or(0))
            .map(|(z, _)| z.clone())
    }

    fn launch(&mut self, names: &mut dyn FnMut() -> String, version: u32, cause: &str) -> bool {
        let Some(zone) = self.launch_zone() else {
            let full: Vec<String> = self
                .input
                .zones
                .iter()
                .filter(|(z, ok)| *ok && !self.has_room(z))
                .map(|(z, _)| format!("no room in zone {z}"))
                .collect();
            self.waiting_zones.extend(full);
            return false;
        };
        let taken = names_taken(&self.status.instances, self.input.instances);
        let mut name = names();
        while taken.contains(name.as_str()) {
            name = names();
        }
        let activity = self.start_activity(
            format!("Launching a new EC2 instance: {name}"),
            format!("At {} {cause}", rfc3339(self.now)),
            &name,
        );
        self.status.instances.push(AutoScalingInstance {
            instance: name,
            zone,
            lifecycle_state: LifecycleState::Pending.as_str().into(),
            health_status: "Healthy".into(),
            launch_template_version: version,
            launched_at: Some(timestamp(self.now)),
            state_time: Some(timestamp(self.now)),
            in_service_at: None,
            waits: Vec::new(),
            reason: String::new(),
            activity,
        });
        true
    }

    fn counts(&self) -> (u32, u32) {
        let active = self
            .status
            .instances
            .iter()
            .filter(|r| is_active(&r.lifecycle_state))
            .count() as u32;
        let holding = self
            .status
            .instances
            .iter()
            .filter(|r| holds_capacity(&r.lifecycle_state))
            .count() as u32;
        (active, holding)
    }

    /// In service, healthy and warmed up; with ELB health checks, also reported healthy by
    /// every target group of the group (as AWS's instance refresh waits for).
    fn warm(&self, r: &AutoScalingInstance) -> bool {
        let elb_ok = self.spec().health_check_type != HealthCheckType::Elb.as_str()
            || self.spec().target_groups.iter().all(|g| {
                self.input
                    .target_health
                    .get(&r.instance)
                    .is_some_and(|h| h.iter().any(|(tg, s)| tg == g && s == "healthy"))
            });
        r.lifecycle_state == LifecycleState::InService.as_str()
            && r.health_status != "Unhealthy"
            && self.now >= at(&r.in_service_at) + self.warmup()
            && elb_ok
    }

    fn capacity(&mut self, names: &mut dyn FnMut() -> String) {
        let desired = self.desired();
        let max = self.spec().max_size;
        let version = self.status.launch_template_version;
        self.waiting_zones = self
            .input
            .zones
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(z, _)| format!("no Ready node in zone {z}"))
            .collect();
        let (active, holding) = self.counts();

        if active < desired {
            if self.suspended(Process::Launch) {
                return;
            }
            let n = (desired - active).min(max.saturating_sub(holding));
            let cause = format!(
                "an instance was started in response to a difference between desired and actual capacity, increasing the capacity from {active} to {desired}"
            );
            for _ in 0..n {
                if !self.launch(names, version, &cause) {
                    break;
                }
            }
            return;
        }
        if active > desired {
            self.scale_in(active - desired);
            return;
        }
        if self.refresh_step(names) {
            return;
        }
        self.rebalance(names);
    }

    /// Terminates `excess` instances: from the zone with the most, by the termination
    /// policies; during a refresh the old versions first. Waits while instances are still
    /// launching that would be in service after it (launch before terminate).
    fn scale_in(&mut self, excess: u32) {
        if self.suspended(Process::Terminate) {
            return;
        }
        let desired = self.desired();
        let ready = self
            .status
            .instances
            .iter()
            .filter(|r| is_active(&r.lifecycle_state) && self.warm_or_not_refreshing(r))
            .filter(|r| r.lifecycle_state == LifecycleState::InService.as_str())
            .count() as u32;
        let launching = self.status.instances.iter().any(|r| {
            matches!(
                LifecycleState::parse(&r.lifecycle_state),
                Some(
                    LifecycleState::Pending
                        | LifecycleState::PendingProceed
                        | LifecycleState::PendingWait
                )
            ) || (r.lifecycle_state == LifecycleState::InService.as_str()
                && !self.warm_or_not_refreshing(r))
        });
        if launching && ready <= desired {
            return;
        }
        let from = desired + excess;
        let cause = format!(
            "At {} an instance was taken out of service in response to a difference between desired and actual capacity, shrinking the capacity from {from} to {desired}",
            rfc3339(self.now)
        );
        for _ in 0..excess {
            let Some(i) = self.victim() else { return };
            let mut r = self.status.instances[i].clone();
            self.begin_termination(&mut r, cause.clone());
            self.status.instances[i] = r;
        }
    }

    /// In service and warmed up, or any in-service instance when no refresh runs.
    fn warm_or_not_refreshing(&self, r: &AutoScalingInstance) -> bool {
        self.refreshing().is_none() || self.warm(r)
    }

    /// The index of the next instance to terminate at scale in; never one a hook holds.
    fn victim(&self) -> Option<usize> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for r in &self.status.instances {
            if is_active(&r.lifecycle_state) {
                *counts.entry(r.zone.as_str()).or_default() += 1;
            }
        }
        let listed = |z: &str| self.input.zones.iter().any(|(n, ok)| n == z && *ok);
        let refresh_version = self.refreshing().map(|r| r.launch_template_version);
        let policies: Vec<TerminationPolicy> = self
            .spec()
            .termination_policies
            .iter()
            .filter_map(|p| TerminationPolicy::parse(p))
            .collect();
        let now = self.now;
        let key = |r: &AutoScalingInstance| {
            let mut k: Vec<i128> = Vec::new();
            // During a refresh the old versions go first; then zones not (or no longer)
            // usable, then the fullest zone.
            if let Some(v) = refresh_version {
                k.push(i128::from(r.launch_template_version >= v));
            }
            k.push(i128::from(listed(&r.zone)));
            k.push(-(counts.get(r.zone.as_str()).copied().unwrap_or(0) as i128));
            // Instances not yet in service first: they serve no one yet.
            k.push(i128::from(
                r.lifecycle_state == LifecycleState::InService.as_str(),
            ));
            let launched = at(&r.launched_at)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i128;
            let to_hour = {
                let up = now
                    .duration_since(at(&r.launched_at))
                    .unwrap_or_default()
                    .as_secs();
                3600 - (up % 3600) as i128
            };
            for p in &policies {
                match p {
                    TerminationPolicy::OldestInstance => k.push(launched),
                    TerminationPolicy::NewestInstance => k.push(-launched),
                    TerminationPolicy::OldestLaunchTemplate => {
                        k.push(i128::from(r.launch_template_version))
                    }
                    TerminationPolicy::ClosestToNextInstanceHour => k.push(to_hour),
                    TerminationPolicy::Default => {
                        k.push(i128::from(r.launch_template_version));
                        k.push(to_hour);
                    }
                }
            }
            k
        };
        self.status
            .instances
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                is_active(&r.lifecycle_state)
                    && r.lifecycle_state != LifecycleState::PendingWait.as_str()
            })
            .min_by(|(_, a), (_, b)| key(a).cmp(&key(b)).then(a.instance.cmp(&b.instance)))
            .map(|(i, _)| i)
    }

    /// One batch of an instance refresh, when the last one has settled: launch the new
    /// instances first if `maxSize` leaves room (the scale in then takes old ones once they
    /// are warm), else terminate old ones first. Returns whether it acted or waits.
    fn refresh_step(&mut self, names: &mut dyn FnMut() -> String) -> bool {
        let Some(refresh) = self.refreshing().cloned() else {
            return false;
        };
        let version = refresh.launch_template_version;
        let old: Vec<usize> = self
            .status
            .instances
            .iter()
            .enumerate()
            .filter(|(_, r)| is_active(&r.lifecycle_state) && r.launch_template_version < version)
            .map(|(i, _)| i)
            .collect();
        let unsettled = self.status.instances.iter().any(|r| {
            (is_active(&r.lifecycle_state) && !self.warm(r))
                || matches!(
                    LifecycleState::parse(&r.lifecycle_state),
                    Some(
                        LifecycleState::Terminating
                            | LifecycleState::TerminatingWait
                            | LifecycleState::TerminatingProceed
                    )
                )
        });
        let to_update = refresh.instances_to_update.max(1);
        let done = to_update.saturating_sub(old.len() as u32);
        let now = self.now;
        if let Some(r) = &mut self.status.instance_refresh {
            r.percentage_complete = done * 100 / to_update;
        }
        if unsettled {
            // Wake when the warm-ups end.
            let warmup = self.warmup();
            let ends: Vec<SystemTime> = self
                .status
                .instances
                .iter()
                .filter(|r| r.lifecycle_state == LifecycleState::InService.as_str())
                .map(|r| at(&r.in_service_at) + warmup)
                .filter(|t| *t > now)
                .collect();
            for t in ends {
                self.wake_at(t);
            }
            return true;
        }
        if old.is_empty() {
            if let Some(r) = &mut self.status.instance_refresh {
                r.status = "Successful".into();
                r.status_reason = format!(
                    "every instance runs launch template version {}",
                    r.launch_template_version
                );
                r.percentage_complete = 100;
                r.end_time = Some(timestamp(now));
            }
            return false;
        }
        let desired = self.desired();
        let min_healthy =
            (u64::from(desired) * u64::from(refresh.min_healthy_percentage)).div_ceil(100) as u32;
        let batch = desired
            .saturating_sub(min_healthy)
            .max(1)
            .min(old.len() as u32);
        let (_, holding) = self.counts();
        let room = self.spec().max_size.saturating_sub(holding);
        let cause = format!(
            "an instance was started as part of instance refresh {} (launch template version {version})",
            refresh.id
        );
        if room > 0 && !self.suspended(Process::Launch) {
            for _ in 0..batch.min(room) {
                if !self.launch(names, version, &cause) {
                    break;
                }
            }
            return true;
        }
        if self.suspended(Process::Terminate) {
            return true;
        }
        let cause = format!(
            "At {} an instance was taken out of service as part of instance refresh {} (no room above maxSize to launch first)",
            rfc3339(now),
            refresh.id
        );
        for _ in 0..batch {
            let Some(i) = self.victim() else { break };
            if self.status.instances[i].launch_template_version >= version {
                break;
            }
            let mut r = self.status.instances[i].clone();
            self.begin_termination(&mut r, cause.clone());
            self.status.instances[i] = r;
        }
        true
    }

    /// Zones more than one instance apart (as when a zone had no Ready node for a while):
    /// launch in the emptiest when `maxSize` leaves room (the scale in then takes one from the
    /// fullest), else terminate in the fullest first.
    fn rebalance(&mut self, names: &mut dyn FnMut() -> String) {
        if self.suspended(Process::AzRebalance)
            || self
                .status
                .instances
                .iter()
                .any(|r| r.lifecycle_state != LifecycleState::InService.as_str())
        {
            return;
        }
        let counts = self.zone_counts();
        let misplaced = self
            .status
            .instances
            .iter()
            .any(|r| is_active(&r.lifecycle_state) && !counts.contains_key(&r.zone));
        let (Some(lo), Some(hi)) = (counts.values().min(), counts.values().max()) else {
            return;
        };
        if hi - lo <= 1 && !misplaced {
            return;
        }
        // Only a zone with room can take what the fullest gives up.
        let emptiest = counts
            .iter()
            .find(|(_, n)| **n == *lo)
            .map(|(z, _)| z.clone());
        if emptiest.is_some_and(|z| !self.has_room(&z)) && !misplaced {
            return;
        }
        let (_, holding) = self.counts();
        let version = self.status.launch_template_version;
        if holding < self.spec().max_size && !self.suspended(Process::Launch) {
            self.launch(
                names,
                version,
                "an instance was started to rebalance the group's instances across zones",
            );
        } else if !self.suspended(Process::Terminate)
            && self.counts().0 > self.spec().min_size
            && let Some(i) = self.victim()
        {
            let cause = format!(
                "At {} an instance was taken out of service to rebalance the group's instances across zones",
                rfc3339(self.now)
            );
            let mut r = self.status.instances[i].clone();
            self.begin_termination(&mut r, cause);
            self.status.instances[i] = r;
        }
    }

    // --- the rest of the status, and the converging effects ---

    fn finish(&mut self) {
        let desired = self.desired();
        self.status.desired_capacity = desired;
        self.status
            .instances
            .retain(|r| r.lifecycle_state != LifecycleState::Terminated.as_str());
        let mut by_zone: HashMap<String, u32> = HashMap::new();
        let mut in_service = 0;
        for r in &self.status.instances {
            if r.lifecycle_state == LifecycleState::InService.as_str() {
                in_service += 1;
                *by_zone.entry(r.zone.clone()).or_default() += 1;
            }
        }
        self.status.in_service = in_service;
        self.status.in_service_by_zone = by_zone;
        let excess = self.status.activities.len().saturating_sub(MAX_ACTIVITIES);
        self.status.activities.drain(..excess);

        let healthy = self
            .status
            .instances
            .iter()
            .filter(|r| {
                r.lifecycle_state == LifecycleState::InService.as_str()
                    && r.health_status != "Unhealthy"
            })
            .count() as u32;
        let (active, _) = self.counts();
        let (status, reason, mut message) = if healthy == desired && active == desired {
            (
                conditions::TRUE,
                "AtDesiredCapacity",
                format!("{healthy} of {desired} instances in service"),
            )
        } else {
            (
                conditions::FALSE,
                "Scaling",
                format!(
                    "{healthy} of {desired} instances in service and healthy; {active} launched or in service"
                ),
            )
        };
        if !self.waiting_zones.is_empty() {
            self.waiting_zones.dedup();
            message.push_str(&format!("; {}", self.waiting_zones.join(", ")));
        }
        conditions::set(
            &mut self.status.conditions,
            CONDITION_READY,
            status,
            reason,
            &message,
            self.now,
        );
        self.converge();
    }

    /// The effects that make the instances match their records.
    fn converge(&mut self) {
        let groups = self.spec().target_groups.join(",");
        let add_suspended = self.suspended(Process::AddToLoadBalancer);
        let mut effects = Vec::new();
        for r in &self.status.instances {
            let Some(o) = self.input.instances.get(&r.instance) else {
                if r.lifecycle_state == LifecycleState::Pending.as_str()
                    && self.now < at(&r.launched_at) + LAUNCH_GRACE
                {
                    effects.push(Effect::Launch {
                        instance: r.instance.clone(),
                        zone: r.zone.clone(),
                        version: r.launch_template_version,
                    });
                }
                continue;
            };
            let mut annotations = Vec::new();
            let state_key = hanul_proto::autoscaling::LIFECYCLE_STATE_ANNOTATION;
            if o.annotations.get(state_key) != Some(&r.lifecycle_state) {
                annotations.push((state_key.to_owned(), Some(r.lifecycle_state.clone())));
            }
            let tg_key = hanul_proto::autoscaling::TARGET_GROUPS_ANNOTATION;
            let current = o.annotations.get(tg_key);
            let registered = r.lifecycle_state == LifecycleState::InService.as_str()
                && !groups.is_empty()
                && (!add_suspended || current.is_some());
            let want = registered.then(|| groups.clone());
            if current != want.as_ref() {
                annotations.push((tg_key.to_owned(), want));
            }
            if !annotations.is_empty() {
                effects.push(Effect::Annotate {
                    instance: r.instance.clone(),
                    annotations,
                });
            }
            if r.lifecycle_state == LifecycleState::TerminatingProceed.as_str()
                && !o.terminate_requested
            {
                effects.push(Effect::Terminate {
                    instance: r.instance.clone(),
                });
            }
        }
        self.effects.extend(effects);
    }
}

#[cfg(test)]
#[path = "plan/tests.rs"]
mod tests;
