//! A target group at run time: its targets with their health and outstanding requests, the
//! checks that keep the health current, target selection, and deregistration draining (and,
//! for groups with connection termination, the end of a removed target's connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::config::{Algorithm, GroupConfig, TargetConfig};
use crate::health::{self, Health, HealthState, Machine};
use crate::metrics::{GroupMetrics, ShardedCount};
use arc_swap::ArcSwap;

/// How often a draining target is looked at to see whether it went idle.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// A target's health changed (or it was dropped: `to` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub group: String,
    pub instance: String,
    pub address: String,
    pub from: Health,
    pub to: Option<HealthState>,
}

/// One target as `status.targets[]` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetReport {
    pub instance: String,
    pub address: String,
    pub state: HealthState,
    pub last_change: SystemTime,
}

pub(crate) struct Target {
    pub key: String,
    pub instance: String,
    pub address: String,
    /// What an lb_cookie or app cookie carries to name this target.
    pub cookie: String,
    check_address: Mutex<String>,
    health: AtomicU8,
    status: Mutex<TargetStatus>,
    /// Requests (connections for TCP) in flight, per thread shard.
    pub in_flight: ShardedCount,
    checker: Mutex<Option<AbortHandle>>,
    /// Turns true when the connections relayed to the target are to be closed: it was removed
    /// from a group with connection termination and its deregistration delay passed. A watch
    /// rather than a `Notify`: it keeps its value, so a connection that subscribes late still
    /// sees it, and it wakes receivers on any worker's runtime.
    terminated: watch::Sender<bool>,
}

struct TargetStatus {
    machine: Machine,
    /// What is shown: the machine's state, or draining / unused set from outside.
    shown: HealthState,
    last_change: SystemTime,
}

impl Target {
    /// A new target; `checks`: whether its group runs health checks (if not, it is healthy).
    fn new(config: &TargetConfig, checks: bool) -> Target {
        let key = config.key();
        let (shown, health) = match &config.unused {
            Some((reason, description)) => (
                HealthState {
                    health: Health::Unused,
                    reason: reason.clone(),
                    description: description.clone(),
                },
                Health::Unused,
            ),
            None if !checks => (HealthState::checks_disabled(), Health::Healthy),
            None => (HealthState::initial(), Health::Initial),
        };
        Target {
            cookie: cookie_of(&key),
            key,
            instance: config.instance.clone(),
            address: config.address.clone(),
            check_address: Mutex::new(config.check_address.clone()),
            health: AtomicU8::new(health.to_u8()),
            status: Mutex::new(TargetStatus {
                machine: Machine::default(),
                shown,
                last_change: wall_clock(),
            }),
            in_flight: ShardedCount::default(),
            checker: Mutex::new(None),
            terminated: watch::Sender::new(false),
        }
    }

    /// Tells when the connections relayed to the target are to be closed (see `terminated`).
    pub fn terminated(&self) -> watch::Receiver<bool> {
        self.terminated.subscribe()
    }

    /// Closes the connections relayed to the target, those whose proxy honours it (TCP).
    fn terminate(&self) {
        self.terminated.send_replace(true);
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    fn report(&self) -> TargetReport {
        let status = self.status.lock().unwrap();
        TargetReport {
            instance: self.instance.clone(),
            address: self.address.clone(),
            state: status.shown.clone(),
            last_change: status.last_change,
        }
    }

    /// Sets what is shown; returns the health it had when it changed.
    fn show(&self, state: HealthState) -> Option<Health> {
        let mut status = self.status.lock().unwrap();
        self.show_locked(&mut status, state)
    }

    /// [`Target::show`] under a lock of `status` the caller already holds.
    fn show_locked(&self, status: &mut TargetStatus, state: HealthState) -> Option<Health> {
        if status.shown == state {
            return None;
        }
        let from = status.shown.health;
        if from != state.health {
            status.last_change = wall_clock();
        }
        self.health.store(state.health.to_u8(), Ordering::Relaxed);
        status.shown = state;
        Some(from)
    }

    fn stop_checks(&self) {
        if let Some(h) = self.checker.lock().unwrap().take() {
            h.abort();
        }
    }
}

/// When a target's health changed, for `status.targets[].lastChange`.
fn wall_clock() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // The data plane's one wall clock: health change times.
    SystemTime::now()
}

/// A stable, short name for a target in a cookie (FNV-1a of its key).
fn cookie_of(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(crate) struct Group {
    pub name: String,
    settings: ArcSwap<GroupConfig>,
    /// Registered targets, in the order given (draining ones are not here).
    active: ArcSwap<Vec<Arc<Target>>>,
    draining: Mutex<Vec<Arc<Target>>>,
    /// Round robin position: shared by the workers, so that the rotation is exact.
    next: AtomicUsize,
    pub metrics: GroupMetrics,
    events: mpsc::UnboundedSender<HealthEvent>,
}

impl Group {
    pub fn new(config: GroupConfig, events: mpsc::UnboundedSender<HealthEvent>) -> Arc<Group> {
        let group = Arc::new(Group {
            name: config.name.clone(),
            settings: ArcSwap::from_pointee(GroupConfig {
                targets: Vec::new(),
                ..config.clone()
            }),
            active: ArcSwap::from_pointee(Vec::new()),
            draining: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            metrics: GroupMetrics::default(),
            events,
        });
        group.update(config);
        group
    }

    pub fn settings(&self) -> Arc<GroupConfig> {
        self.settings.load_full()
    }

    /// What a request needs of the settings, read without touching the shared reference count.
    pub fn request_settings(&self) -> (Option<crate::config::Stickiness>, Algorithm) {
        let settings = self.settings.load();
        (settings.stickiness.clone(), settings.algorithm)
    }

    fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.active.load_full()
    }

    /// Takes a new configuration: new targets start their checks (or are healthy at once when
    /// the group's checks are disabled), removed ones drain, kept ones keep their health unless
    /// the checks were turned on or off.
    pub fn update(self: &Arc<Group>, mut config: GroupConfig) {
        let targets = std::mem::take(&mut config.targets);
        let checks = config.health_check_enabled;
        // Stored first: a check that ends while checks are being turned off sees that they are
        // (`check_loop`), and removed targets drain with the new delay.
        self.settings.store(Arc::new(config));
        let old: HashMap<String, Arc<Target>> = self
            .targets()
            .iter()
            .map(|t| (t.key.clone(), t.clone()))
            .collect();
        let mut kept = Vec::with_capacity(targets.len());
        let mut seen = std::collections::HashSet::new();
        for tc in &targets {
            let key = tc.key();
            if !seen.insert(key.clone()) {
                continue;
            }
            match old.get(&key) {
                Some(t) if (t.health() == Health::Unused) == tc.unused.is_some() => {
                    *t.check_address.lock().unwrap() = tc.check_address.clone();
                    if let Some((reason, description)) = &tc.unused {
                        t.show(HealthState {
                            health: Health::Unused,
                            reason: reason.clone(),
                            description: description.clone(),
                        });
                    } else {
                        self.set_checks(t, checks);
                    }
                    kept.push(t.clone());
                }
                _ => {
                    let t = Arc::new(Target::new(tc, checks));
                    if tc.unused.is_none() {
                        if checks {
                            self.start_checks(&t);
                        } else {
                            // Registered and healthy in one step, told as a check-driven target's
                            // first pass would be.
                            self.emit(&t, Health::Initial, Some(HealthState::checks_disabled()));
                        }
                    }
                    kept.push(t);
                }
            }
        }
        let gone: Vec<Arc<Target>> = old
            .into_values()
            .filter(|t| !kept.iter().any(|k| Arc::ptr_eq(k, t)))
            .collect();
        self.active.store(Arc::new(kept));
        for t in gone {
            self.drain(t);
        }
        self.metrics.set_hosts(&self.targets());
    }

    /// The addresses of its targets, draining ones included.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.targets().iter().map(|t| t.address.clone()).collect();
        out.extend(
            self.draining
                .lock()
                .unwrap()
                .iter()
                .map(|t| t.address.clone()),
        );
        out
    }

    /// Stops everything: the group is gone.
    pub fn retire(&self) {
        for t in self.targets().iter() {
            t.stop_checks();
        }
        for t in self.draining.lock().unwrap().drain(..) {
            t.stop_checks();
        }
    }

    /// Turns a kept target's checks on or off as the group's settings now say. Turned off, it is
    /// healthy at once; turned on, it starts over as a new target does (initial until its
    /// first check passes), since what was shown came from no check.
    fn set_checks(self: &Arc<Group>, target: &Arc<Target>, enabled: bool) {
        let running = target.checker.lock().unwrap().is_some();
        if enabled == running {
            return;
        }
        let state = if enabled {
            HealthState::initial()
        } else {
            target.stop_checks();
            HealthState::checks_disabled()
        };
        let from = {
            let mut status = target.status.lock().unwrap();
            status.machine = Machine::default();
            target.show_locked(&mut status, state.clone())
        };
        if let Some(from) = from {
            self.emit(target, from, Some(state));
        }
        if enabled {
            self.start_checks(target);
        }
    }

    fn start_checks(self: &Arc<Group>, target: &Arc<Target>) {
        let group = Arc::downgrade(self);
        let weak = Arc::downgrade(target);
        let handle = tokio::spawn(check_loop(group, weak)).abort_handle();
        *target.checker.lock().unwrap() = Some(handle);
    }

    fn emit(&self, target: &Target, from: Health, to: Option<HealthState>) {
        let _ = self.events.send(HealthEvent {
            group: self.name.clone(),
            instance: target.instance.clone(),
            address: target.address.clone(),
            from,
            to,
        });
    }

    /// A target leaves: no new requests; it is dropped once idle or after the delay. With
    /// connection termination, the connections it still has are closed when the delay ends.
    fn drain(self: &Arc<Group>, target: Arc<Target>) {
        target.stop_checks();
        // A target that never took traffic (its instance not running) just goes: no event.
        if target.health() == Health::Unused {
            return;
        }
        let from = target.show(HealthState {
            health: Health::Draining,
            reason: "Target.DeregistrationInProgress".into(),
            description: "Target deregistration is in progress".into(),
        });
        if let Some(from) = from {
            self.emit(&target, from, Some(target.report().state));
        }
        self.draining.lock().unwrap().push(target.clone());
        let (delay, terminate) = {
            let settings = self.settings();
            (
                settings.deregistration_delay,
                settings.connection_termination,
            )
        };
        let deadline = Instant::now() + delay;
        if terminate && delay.is_zero() {
            // Now, not on the task's first poll: the change is in force when `apply` returns.
            target.terminate();
        }
        let group = Arc::downgrade(self);
        tokio::spawn(async move {
            while Instant::now() < deadline && target.in_flight.sum() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            if let Some(group) = group.upgrade() {
                group
                    .draining
                    .lock()
                    .unwrap()
                    .retain(|t| !Arc::ptr_eq(t, &target));
                group.emit(&target, Health::Draining, None);
            }
            if terminate {
                // Idle before the delay ended, it may yet get a connection that picked it just
                // before it left: that one, too, may run until the delay ends, and no longer.
                tokio::time::sleep_until(deadline.into()).await;
                target.terminate();
            }
        });
    }

    /// Every registered and draining target, for status. An unused target whose old self is
    /// still draining is shown once, as draining.
    pub fn report(&self) -> Vec<TargetReport> {
        let draining: Vec<TargetReport> = self
            .draining
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.report())
            .collect();
        let mut out: Vec<TargetReport> = self
            .targets()
            .iter()
            .filter(|t| {
                t.health() != Health::Unused
                    || t.instance.is_empty()
                    || !draining.iter().any(|d| d.instance == t.instance)
            })
            .map(|t| t.report())
            .collect();
        out.extend(draining);
        out
    }

    /// Picks a healthy target for a new request or connection: the one `sticky` names if it is
    /// healthy, else by the group's algorithm, skipping `tried`.
    pub fn pick(
        &self,
        algorithm: Algorithm,
        sticky: Option<&str>,
        tried: &[Arc<Target>],
    ) -> Option<Arc<Target>> {
        // A guard, not a clone: no write to a line the other workers read.
        let targets = self.active.load();
        let usable = |t: &&Arc<Target>| {
            t.health() == Health::Healthy && !tried.iter().any(|x| Arc::ptr_eq(x, t))
        };
        if let Some(cookie) = sticky
            && let Some(t) = targets.iter().filter(usable).find(|t| t.cookie == cookie)
        {
            return Some(t.clone());
        }
        let count = targets.iter().filter(usable).count();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let rotated = targets
            .iter()
            .filter(usable)
            .cycle()
            .skip(start)
            .take(count);
        let chosen = match algorithm {
            Algorithm::RoundRobin => rotated.take(1).next(),
            Algorithm::LeastOutstandingRequests => rotated.min_by_key(|t| t.in_flight.sum()),
        };
        chosen.cloned()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.retire();
    }
}

/// Checks one target every interval until it drains or its group goes.
async fn check_loop(group: Weak<Group>, target: Weak<Target>) {
    loop {
        let (Some(g), Some(t)) = (group.upgrade(), target.upgrade()) else {
            return;
        };
        let config = g.settings().health_check.clone();
        let address = t.check_address.lock().unwrap().clone();
        drop((g, t));
        let started = Instant::now();
        let outcome = health::check(&address, &config).await;
        let (Some(g), Some(t)) = (group.upgrade(), target.upgrade()) else {
            return;
        };
        let shown = {
            // Decided under the lock `update` and `drain` show through, so that a check that
            // ends as the checks are turned off or the target leaves does not undo either.
            let mut status = t.status.lock().unwrap();
            if !g.settings().health_check_enabled {
                return;
            }
            let changed = status.machine.observe(
                outcome,
                config.healthy_threshold,
                config.unhealthy_threshold,
            );
            match changed {
                Some(state)
                    if matches!(
                        status.shown.health,
                        Health::Initial | Health::Healthy | Health::Unhealthy
                    ) =>
                {
                    t.show_locked(&mut status, state.clone())
                        .map(|from| (from, state))
                }
                _ => None,
            }
        };
        if let Some((from, state)) = shown {
            g.emit(&t, from, Some(state));
            g.metrics.set_hosts(&g.targets());
        }
        drop((g, t));
        tokio::time::sleep(config.interval.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthCheckConfig, Protocol};

    fn target(address: &str) -> TargetConfig {
        TargetConfig {
            instance: String::new(),
            address: address.into(),
            check_address: address.into(),
            unused: None,
        }
    }

    fn group(targets: Vec<TargetConfig>, algorithm: Algorithm) -> GroupConfig {
        GroupConfig {
            name: "web".into(),
            protocol: Protocol::Http,
            targets,
            health_check: HealthCheckConfig {
                protocol: Protocol::Tcp,
                interval: Duration::from_secs(3600),
                ..HealthCheckConfig::default()
            },
            stickiness: None,
            deregistration_delay: Duration::from_secs(300),
            algorithm,
            health_check_enabled: true,
            connection_termination: false,
        }
    }

    fn make_healthy(g: &Group) {
        for t in g.targets().iter() {
            t.show(HealthState {
                health: Health::Healthy,
                reason: String::new(),
                description: String::new(),
            });
        }
    }

    #[tokio::test]
    async fn round_robin_spreads_and_skips_the_unhealthy() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let g = Group::new(
            group(
                vec![target("a:1"), target("b:1"), target("c:1")],
                Algorithm::RoundRobin,
            ),
            tx,
        );
        assert!(
            g.pick(g.settings().algorithm, None, &[]).is_none(),
            "initial targets get no traffic"
        );
        make_healthy(&g);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..300 {
            *counts
                .entry(
                    g.pick(g.settings().algorithm, None, &[])
                        .unwrap()
                        .address
                        .clone(),
                )
                .or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 3]);
        g.targets()[1].show(HealthState {
            health: Health::Unhealthy,
            reason: "Target.Timeout".into(),
            description: String::new(),
        });
        for _ in 0..20 {
            assert_ne!(
                g.pick(g.settings().algorithm, None, &[]).unwrap().address,
                "b:1"
            );
        }
        // Retries skip what was tried.
        let a = g.targets()[0].clone();
        let c = g.targets()[2].clone();
        assert_eq!(
            g.pick(g.settings().algorithm, None, std::slice::from_ref(&a))
                .unwrap()
                .address,
            "c:1"
        );
        assert!(g.pick(g.settings().algorithm, None, &[a, c]).is_none());
    }

    #[tokio::test]
    async fn least_outstanding_prefers_the_idle_target() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let g = Group::new(
            group(
                vec![target("a:1"), target("b:1")],
                Algorithm::LeastOutstandingRequests,
            ),
            tx,
        );
        make_healthy(&g);
        g.targets()[0].in_flight.local().store(5, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(
                g.pick(g.settings().algorithm, None, &[]).unwrap().address,
                "b:1"
            );
        }
    }

    #[tokio::test]
    async fn a_sticky_client_keeps_its_target_until_it_fails() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let g = Group::new(
            group(vec![target("a:1"), target("b:1")], Algorithm::RoundRobin),
            tx,
        );
        make_healthy(&g);
        let b = g.targets()[1].clone();
        for _ in 0..10 {
            assert_eq!(
                g.pick(g.settings().algorithm, Some(&b.cookie), &[])
                    .unwrap()
                    .address,
                "b:1"
            );
        }
        b.show(HealthState {
            health: Health::Unhealthy,
            reason: String::new(),
            description: String::new(),
        });
        assert_eq!(
            g.pick(g.settings().algorithm, Some(&b.cookie), &[])
                .unwrap()
                .address,
            "a:1"
        );
    }

    #[tokio::test]
    async fn without_checks_targets_are_healthy_at_once_and_start_over_when_checks_return() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let unused = TargetConfig {
            unused: Some(("Target.InvalidState".into(), "stopped".into())),
            ..target("c:1")
        };
        let mut config = group(
            vec![target("a:1"), target("b:1"), unused],
            Algorithm::RoundRobin,
        );
        config.health_check_enabled = false;
        let g = Group::new(config.clone(), tx);
        let healths =
            |g: &Group| -> Vec<Health> { g.report().iter().map(|r| r.state.health).collect() };
        assert_eq!(
            healths(&g),
            [Health::Healthy, Health::Healthy, Health::Unused]
        );
        assert_eq!(g.report()[0].state, HealthState::checks_disabled());
        assert!(g.pick(g.settings().algorithm, None, &[]).is_some());
        assert!(
            g.targets()
                .iter()
                .all(|t| t.checker.lock().unwrap().is_none())
        );
        let e = rx.try_recv().unwrap();
        assert_eq!(
            (e.from, e.to.map(|s| s.health)),
            (Health::Initial, Some(Health::Healthy))
        );

        // Checks on: the kept targets start over as new ones do, and get no traffic until a
        // check passes (none can: nothing listens at a:1 or b:1).
        config.health_check_enabled = true;
        g.update(config.clone());
        assert_eq!(
            healths(&g),
            [Health::Initial, Health::Initial, Health::Unused]
        );
        assert!(g.pick(g.settings().algorithm, None, &[]).is_none());
        assert!(g.targets()[0].checker.lock().unwrap().is_some());
        // Off again: the same targets, healthy, their checks stopped.
        let a = g.targets()[0].clone();
        config.health_check_enabled = false;
        g.update(config);
        assert!(Arc::ptr_eq(&a, &g.targets()[0]));
        assert_eq!(
            healths(&g),
            [Health::Healthy, Health::Healthy, Health::Unused]
        );
        assert!(a.checker.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn with_no_delay_a_removed_target_is_terminated_at_once_if_the_group_says_so() {
        let (tx, _rx) = mpsc::unbounded_channel();
        for terminate in [false, true] {
            let mut config = group(vec![target("a:1"), target("b:1")], Algorithm::RoundRobin);
            config.health_check_enabled = false;
            config.deregistration_delay = Duration::ZERO;
            config.connection_termination = terminate;
            let g = Group::new(config.clone(), tx.clone());
            let b = g.targets()[1].clone();
            b.in_flight.local().store(1, Ordering::Relaxed);
            let terminated = b.terminated();
            config.targets.pop();
            g.update(config);
            assert_eq!(*terminated.borrow(), terminate);
            assert!(
                !*g.targets()[0].terminated().borrow(),
                "a kept target is left alone"
            );
        }
    }

    #[tokio::test]
    async fn a_removed_target_drains_until_idle() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let g = Group::new(
            group(vec![target("a:1"), target("b:1")], Algorithm::RoundRobin),
            tx,
        );
        make_healthy(&g);
        let b = g.targets()[1].clone();
        b.in_flight.local().store(1, Ordering::Relaxed);
        g.update(group(vec![target("a:1")], Algorithm::RoundRobin));
        let report = g.report();
        assert_eq!(report.len(), 2);
        assert_eq!(report[1].state.health, Health::Draining);
        for _ in 0..10 {
            assert_eq!(
                g.pick(g.settings().algorithm, None, &[]).unwrap().address,
                "a:1"
            );
        }
        let e = rx.recv().await.unwrap();
        assert_eq!(
            (e.from, e.to.map(|s| s.health)),
            (Health::Healthy, Some(Health::Draining))
        );
        // In flight: still draining after a while; idle: dropped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(g.report().len(), 2);
        b.in_flight.local().store(0, Ordering::Relaxed);
        let e = rx.recv().await.unwrap();
        assert_eq!((e.from, e.to), (Health::Draining, None));
        assert_eq!(g.report().len(), 1);
    }
}
