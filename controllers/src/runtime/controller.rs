//! The [`Controller`]: caches, key mappers, a work queue, resync and workers around one
//! level-triggered `reconcile`.
//!
//! Choices worth knowing:
//! - A key whose object is no longer in the primary cache is **not reconciled**: it is dropped
//!   quietly (its backoff forgotten). Cleanup that must run before an object goes belongs in a
//!   finalizer, which keeps the object (with `deletedAt`) in the cache until it is done.
//! - Errors are classed by [`ReconcileError::is_terminal`]. A retryable error goes to the
//!   `error_policy`, whose [`Action::backoff`] means the per-key exponential backoff. A terminal
//!   error is not retried: an `Action::backoff()` from the policy becomes "wait for a change",
//!   and the periodic resync skips the key while its `resourceVersion` is the one that failed.
//!   Any change to the object (or to an object it owns) runs it again.
//! - A success resets the key's backoff; its [`Action`] schedules the next run.
//! - Each reconcile runs on a task of its own, so a panic is contained: it is counted as an
//!   error and retried with backoff.
//! - Shutdown stops the queue; running reconciles finish before [`Controller::run`] returns.

use super::{Backoff, Cache, CacheEvent, Metrics, ObjectKey, ReconcileResult, Shutdown, WorkQueue};
use hanul_proto::{Client, Kind, v1::Object};
use std::{
    collections::HashMap,
    error::Error as StdError,
    fmt,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Classes reconcile errors: terminal ones are not retried until the object changes.
pub trait ReconcileError: StdError + Send + Sync + 'static {
    /// Whether retrying cannot help until the object changes (invalid input, a refused write).
    fn is_terminal(&self) -> bool {
        false
    }
}

/// What to do with a key after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action(Next);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Requeue(Duration),
    AwaitChange,
    Backoff,
}

impl Action {
    /// Runs the key again after `after` (or earlier, if its object changes).
    pub fn requeue(after: Duration) -> Action {
        Action(Next::Requeue(after))
    }

    /// Runs the key again only when its object (or an object it owns) changes, or at the next
    /// periodic resync.
    pub fn await_change() -> Action {
        Action(Next::AwaitChange)
    }

    /// Runs the key again after the per-key exponential backoff: what error policies return
    /// for retryable errors.
    pub fn backoff() -> Action {
        Action(Next::Backoff)
    }

    /// The fixed delay, for `requeue`.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self.0 {
            Next::Requeue(d) => Some(d),
            _ => None,
        }
    }

    /// Whether this is [`Action::backoff`].
    pub fn is_backoff(&self) -> bool {
        self.0 == Next::Backoff
    }
}

/// The error policy most controllers want: terminal errors wait for a change, others back off.
pub fn default_error_policy<Ctx, E: ReconcileError>(
    _object: Arc<Object>,
    error: &E,
    _ctx: Arc<Ctx>,
) -> Action {
    if error.is_terminal() {
        Action::await_change()
    } else {
        Action::backoff()
    }
}

/// Maps a change in a watched cache to the keys of primary objects to reconcile.
pub type KeyMapper = Arc<dyn Fn(&CacheEvent, &Cache) -> Vec<ObjectKey> + Send + Sync>;

/// Which primary objects a controller reconciles at all (others are only cached).
pub type ObjectFilter = Arc<dyn Fn(&Object) -> bool + Send + Sync>;

/// How often every cached key is reconciled even when nothing changed, by default.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// A controller under construction; [`Controller::run`] runs it.
pub struct Controller {
    name: String,
    kind: Option<Kind>,
    client: Option<Client>,
    primary: Cache,
    primary_filter: Option<ObjectFilter>,
    primary_mappers: Vec<KeyMapper>,
    watches: Vec<(Cache, KeyMapper)>,
    /// Caches the reconciler reads whose changes concern no object by themselves.
    reads: Vec<Cache>,
    triggers: Vec<mpsc::UnboundedReceiver<ObjectKey>>,
    resync: Duration,
    backoff: Backoff,
    metrics: Metrics,
    shutdown: Option<Shutdown>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("watches", &self.watches.len())
            .field("resync", &self.resync)
            .finish()
    }
}

impl Controller {
    /// A controller of objects of `kind`, fed by its own cache from `client`. Its name (the
    /// `controller` metric label) defaults to the kind's plural: `instances`.
    pub fn new(client: Client, kind: Kind) -> Controller {
        let mut c = Controller::from_cache(Cache::new(Some(kind)), Some(kind));
        c.client = Some(client);
        c
    }

    /// A controller of objects of every kind (the garbage collector), fed from `client` with
    /// each object's kind and metadata only ([`Cache::metadata_only`]): every write of every
    /// kind reaches it, and the spec and status it never reads would be most of the bytes.
    pub fn all_kinds(client: Client) -> Controller {
        let mut c = Controller::from_cache(Cache::metadata_only(None), None);
        c.client = Some(client);
        c
    }

    /// A controller over a cache fed by someone else: a cache shared between controllers, or
    /// one fed by hand in tests. Caches added later are started only if a client was given.
    pub fn from_cache(cache: Cache, kind: Option<Kind>) -> Controller {
        Controller {
            name: kind.map(Kind::plural).unwrap_or("all").to_string(),
            kind,
            client: None,
            primary: cache,
            primary_filter: None,
            primary_mappers: Vec::new(),
            watches: Vec::new(),
            reads: Vec::new(),
            triggers: Vec::new(),
            resync: DEFAULT_RESYNC,
            backoff: Backoff::default(),
            metrics: Metrics::default(),
            shutdown: None,
        }
    }

    /// Sets the name used in metrics and logs.
    pub fn named(mut self, name: impl Into<String>) -> Controller {
        self.name = name.into();
        self
    }

    /// Reconciles the controller owner of any object of `kind` that changes (its
    /// `ownerReferences` entry with `controller: true` naming this controller's kind).
    pub fn watches_owned(self, kind: Kind) -> Controller {
        self.watches_owned_in(Cache::new(Some(kind)))
    }

    /// Like [`Controller::watches_owned`], over a given (possibly shared) cache.
    pub fn watches_owned_in(self, cache: Cache) -> Controller {
        let owner_kind = self.kind;
        let mapper: KeyMapper = Arc::new(move |event, _| {
            let objects: Vec<&Object> = match event {
                CacheEvent::Applied { old, new } => old
                    .iter()
                    .map(|o| o.as_ref())
                    .chain([new.as_ref()])
                    .collect(),
                CacheEvent::Deleted(o) => vec![o.as_ref()],
                CacheEvent::Relisted => vec![],
            };
            let mut keys: Vec<ObjectKey> = objects
                .into_iter()
                .flat_map(|o| controller_owners(o, owner_kind))
                .collect();
            keys.sort();
            keys.dedup();
            keys
        });
        self.watches(cache, mapper)
    }

    /// Reconciles the keys `mapper` names for every change in `cache`; a relist of `cache`
    /// reconciles every primary key.
    pub fn watches(mut self, cache: Cache, mapper: KeyMapper) -> Controller {
        self.watches.push((cache, mapper));
        self
    }

    /// Starts `cache` with the controller and holds the first reconciles until it is synced,
    /// as for a watched cache, but its changes reconcile nothing: for what the reconciler
    /// reads and waits on by itself (the DB controller reads instances to count the room on
    /// nodes, and a cluster waiting for room looks again on its own).
    pub fn reads(mut self, cache: Cache) -> Controller {
        self.reads.push(cache);
        self
    }

    /// Also reconciles the keys sent on `keys`: changes seen outside the API (a node agent's
    /// processes exiting).
    pub fn triggered_by(mut self, keys: mpsc::UnboundedReceiver<ObjectKey>) -> Controller {
        self.triggers.push(keys);
        self
    }

    /// Also reconciles the keys `mapper` names for changes of primary objects (beside the
    /// changed object itself): the garbage collector reconciles the dependents of a deleted
    /// owner this way.
    pub fn map_primary(mut self, mapper: KeyMapper) -> Controller {
        self.primary_mappers.push(mapper);
        self
    }

    /// Reconciles only the primary objects `filter` accepts, on their changes and at resync;
    /// the others are cached (and seen by mappers) but never reconciled. The garbage collector
    /// reconciles only objects that have owners this way: every other object changes often and
    /// never needs collecting. Keys named by mappers and triggers are reconciled regardless.
    pub fn reconciles_only(
        mut self,
        filter: impl Fn(&Object) -> bool + Send + Sync + 'static,
    ) -> Controller {
        self.primary_filter = Some(Arc::new(filter));
        self
    }

    /// How often every cached key is reconciled even when nothing changed.
    pub fn resync_every(mut self, period: Duration) -> Controller {
        self.resync = period;
        self
    }

    /// The per-key backoff after retryable errors.
    pub fn backoff(mut self, backoff: Backoff) -> Controller {
        self.backoff = backoff;
        self
    }

    /// Where to count reconciles.
    pub fn metrics(mut self, metrics: Metrics) -> Controller {
        self.metrics = metrics;
        self
    }

    /// Stops the controller (and the caches it started) when `shutdown` fires. Without it the
    /// controller runs until its future is dropped.
    pub fn shutdown_on(mut self, shutdown: Shutdown) -> Controller {
        self.shutdown = Some(shutdown);
        self
    }

    /// The primary cache, for the reconciler's context to read.
    pub fn cache(&self) -> Cache {
        self.primary.clone()
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the controller until shutdown: starts its caches, waits for them to sync, then
    /// reconciles with up to `concurrency` keys at once (never one key twice at once).
    pub async fn run<Ctx, E, R, Fut, P>(
        mut self,
        reconcile: R,
        error_policy: P,
        ctx: Arc<Ctx>,
        concurrency: usize,
    ) where
        Ctx: Send + Sync + 'static,
        E: ReconcileError,
        R: Fn(Arc<Object>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<Object>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    {
        // Without a shutdown signal, one that never fires (its trigger lives as long as we do).
        let (_never, never) = Shutdown::new();
        let shutdown = self.shutdown.clone().unwrap_or(never);
        let queue =
            WorkQueue::new(self.backoff).with_depth_gauge(self.metrics.queue_depth(&self.name));
        let run = Run {
            name: self.name.clone(),
            kind: self.kind,
            primary: self.primary.clone(),
            filter: self.primary_filter.clone(),
            queue,
            terminal: Mutex::new(HashMap::new()),
            metrics: self.metrics.clone(),
        };

        // Subscribe before the caches start, so that no change is missed.
        let primary_rx = self.primary.subscribe();
        let watch_rxs: Vec<_> = self
            .watches
            .iter()
            .map(|(cache, mapper)| (cache.clone(), mapper.clone(), cache.subscribe()))
            .collect();
        if let Some(client) = &self.client {
            self.primary.start(client, shutdown.clone());
            for cache in self.watches.iter().map(|(c, _)| c).chain(&self.reads) {
                cache.start(client, shutdown.clone());
            }
        }
        let synced = async {
            self.primary.wait_synced().await;
            for cache in self.watches.iter().map(|(c, _)| c).chain(&self.reads) {
                cache.wait_synced().await;
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = synced => {}
        }
        info!(controller = %run.name, objects = run.primary.len(), concurrency, "Controller started.");

        let run = &run;
        let reconcile = &reconcile;
        let error_policy = &error_policy;
        let primary_pump = run.pump(primary_rx, None, &self.primary_mappers, &shutdown);
        let watch_pumps =
            futures::future::join_all(watch_rxs.into_iter().map(|(cache, mapper, rx)| {
                let shutdown = &shutdown;
                async move {
                    run.pump(rx, Some(&cache), std::slice::from_ref(&mapper), shutdown)
                        .await
                }
            }));
        let triggers = std::mem::take(&mut self.triggers);
        let trigger_pumps = futures::future::join_all(
            triggers
                .into_iter()
                .map(|rx| run.pump_triggers(rx, &shutdown)),
        );
        let workers = futures::future::join_all(
            (0..concurrency.max(1)).map(|_| run.work(reconcile, error_policy, &ctx)),
        );
        let stopper = async {
            shutdown.wait().await;
            run.queue.shut_down();
        };
        tokio::join!(
            primary_pump,
            watch_pumps,
            trigger_pumps,
            run.resync(self.resync, &shutdown),
            workers,
            stopper
        );
        info!(controller = %run.name, "Controller stopped.");
    }
}

/// The keys of `object`'s controller owners of kind `owner_kind` (any kind when `None`).
fn controller_owners(object: &Object, owner_kind: Option<Kind>) -> Vec<ObjectKey> {
    object
        .metadata()
        .into_iter()
        .flat_map(|m| m.owner_references.iter())
        .filter(|r| r.controller)
        .filter_map(|r| {
            let kind = Kind::lookup(&r.kind)?;
            (owner_kind.is_none() || owner_kind == Some(kind))
                .then(|| ObjectKey::new(kind, r.name.clone()))
        })
        .collect()
}

/// The state of a running controller, shared by its pumps and workers.
struct Run {
    name: String,
    kind: Option<Kind>,
    primary: Cache,
    filter: Option<ObjectFilter>,
    queue: WorkQueue<ObjectKey>,
    /// Keys whose last reconcile failed terminally, with the resourceVersion that failed.
    terminal: Mutex<HashMap<ObjectKey, u64>>,
    metrics: Metrics,
}

impl Run {
    fn terminal(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, u64>> {
        self.terminal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wanted(&self, key: &ObjectKey) -> bool {
        self.kind.is_none_or(|k| k == key.kind)
    }

    /// Whether a change of this primary object is reconciled.
    fn reconciles(&self, object: &Object) -> bool {
        self.filter.as_ref().is_none_or(|filter| filter(object))
    }

    /// Enqueues every cached primary key the filter accepts (after a relist or a lagged
    /// subscription).
    fn enqueue_all(&self) {
        for object in self.primary.list() {
            if let (true, Some(key)) = (self.reconciles(&object), ObjectKey::of(&object)) {
                self.queue.add(key);
            }
        }
    }

    /// Turns the changes of one cache into keys; `watched` is `None` for the primary cache.
    async fn pump(
        &self,
        mut rx: tokio::sync::broadcast::Receiver<CacheEvent>,
        watched: Option<&Cache>,
        mappers: &[KeyMapper],
        shutdown: &Shutdown,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.wait() => return,
                event = rx.recv() => event,
            };
            let event = match event {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    debug!(controller = %self.name, missed, "Fell behind the cache; resyncing every key.");
                    self.enqueue_all();
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if matches!(event, CacheEvent::Relisted) {
                self.enqueue_all();
                continue;
            }
            if watched.is_none() {
                match &event {
                    CacheEvent::Applied { old, new } => {
                        let unchanged = old
                            .as_ref()
                            .is_some_and(|o| o.resource_version() == new.resource_version());
                        let skip = unchanged || !self.reconciles(new);
                        if let (false, Some(key)) = (skip, ObjectKey::of(new)) {
                            self.queue.add(key);
                        }
                    }
                    CacheEvent::Deleted(o) => {
                        if let Some(key) = ObjectKey::of(o) {
                            self.terminal().remove(&key);
                            self.queue.cancel_scheduled(&key);
                            self.queue.forget(&key);
                        }
                    }
                    CacheEvent::Relisted => {}
                }
            }
            let cache = watched.unwrap_or(&self.primary);
            for mapper in mappers {
                for key in mapper(&event, cache) {
                    if self.wanted(&key) {
                        self.queue.add(key);
                    }
                }
            }
        }
    }

    /// Enqueues the keys sent from outside the API.
    async fn pump_triggers(&self, mut rx: mpsc::UnboundedReceiver<ObjectKey>, shutdown: &Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                key = rx.recv() => match key {
                    Some(key) if self.wanted(&key) => self.queue.add(key),
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }

    /// Enqueues every cached key now and every `period`, skipping keys that are busy or
    /// scheduled and keys that failed terminally at their current resourceVersion.
    async fn resync(&self, period: Duration, shutdown: &Shutdown) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            for object in self.primary.list() {
                let Some(key) = ObjectKey::of(&object) else {
                    continue;
                };
                if !self.reconciles(&object) {
                    continue;
                }
                if self.terminal().get(&key) == Some(&object.resource_version()) {
                    continue;
                }
                self.queue.add_if_idle(key);
            }
        }
    }

    /// One worker: pops keys and reconciles them until the queue shuts down.
    async fn work<Ctx, E, R, Fut, P>(&self, reconcile: &R, error_policy: &P, ctx: &Arc<Ctx>)
    where
        Ctx: Send + Sync + 'static,
        E: ReconcileError,
        R: Fn(Arc<Object>, Arc<Ctx>) -> Fut,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<Object>, &E, Arc<Ctx>) -> Action,
    {
        while let Some(key) = self.queue.pop().await {
            let Some(object) = self.primary.get_key(&key) else {
                // Gone from the cache: not reconciled (see the module doc).
                debug!(controller = %self.name, %key, "Object is gone; not reconciling it.");
                self.queue.forget(&key);
                self.terminal().remove(&key);
                self.queue.done(&key);
                continue;
            };
            let span =
                info_span!("reconcile", controller = %self.name, kind = %key.kind, key = %key);
            let started = tokio::time::Instant::now();
            // A task of its own, so that a panic is contained and counted.
            let outcome =
                tokio::spawn(reconcile(object.clone(), ctx.clone()).instrument(span.clone())).await;
            let took = started.elapsed();
            span.in_scope(|| self.settle(&key, object, outcome, took, error_policy, ctx));
            self.queue.done(&key);
        }
    }

    /// Counts the outcome of one reconcile and schedules what comes next.
    fn settle<Ctx, E, P>(
        &self,
        key: &ObjectKey,
        object: Arc<Object>,
        outcome: Result<Result<Action, E>, tokio::task::JoinError>,
        took: Duration,
        error_policy: &P,
        ctx: &Arc<Ctx>,
    ) where
        E: ReconcileError,
        P: Fn(Arc<Object>, &E, Arc<Ctx>) -> Action,
    {
        let rv = object.resource_version();
        let result = match outcome {
            Ok(Ok(action)) => {
                self.queue.forget(key);
                self.terminal().remove(key);
                match action.0 {
                    Next::Requeue(after) => self.queue.add_after(key.clone(), after),
                    Next::Backoff => {
                        self.queue.requeue_with_backoff(key.clone());
                    }
                    Next::AwaitChange => {}
                }
                debug!(took_ms = took.as_millis() as u64, ?action, "Reconciled.");
                ReconcileResult::Success
            }
            Ok(Err(err)) => {
                let action = error_policy(object, &err, ctx.clone());
                if err.is_terminal() {
                    self.queue.forget(key);
                    self.terminal().insert(key.clone(), rv);
                    if let Next::Requeue(after) = action.0 {
                        self.queue.add_after(key.clone(), after);
                    }
                    warn!(error = %chain(&err), "Reconcile failed and will not be retried until the object changes.");
                    ReconcileResult::Terminal
                } else {
                    let retry = match action.0 {
                        Next::Backoff => Some(self.queue.requeue_with_backoff(key.clone())),
                        Next::Requeue(after) => {
                            self.queue.add_after(key.clone(), after);
                            Some(after)
                        }
                        Next::AwaitChange => None,
                    };
                    warn!(error = %chain(&err), retry_in = ?retry, failures = self.queue.failures(key), "Reconcile failed.");
                    ReconcileResult::Error
                }
            }
            Err(join) => {
                let retry = self.queue.requeue_with_backoff(key.clone());
                error!(error = %join, retry_in = ?retry, "Reconcile panicked; this is a bug.");
                ReconcileResult::Error
            }
        };
        self.metrics.observe(&self.name, result, took);
    }
}

/// An error and its sources, one line: `delete Image/a: status: Unavailable...`.
pub(crate) fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runtime::ShutdownTrigger, testing::eventually};
    use hanul_proto::{
        client::WatchUpdate,
        v1::{EventType, Image, Instance, ObjectMeta, OwnerReference, WatchEvent},
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    #[derive(Debug, thiserror::Error)]
    #[error("test failure (terminal: {terminal})")]
    struct TestError {
        terminal: bool,
    }

    impl ReconcileError for TestError {
        fn is_terminal(&self) -> bool {
            self.terminal
        }
    }

    /// What a test reconcile does on its n-th call (0-based) for a key.
    type Script = dyn Fn(&str, usize) -> Outcome + Send + Sync;

    #[derive(Clone, Copy)]
    enum Outcome {
        Ok(Action),
        Fail { terminal: bool },
        Panic,
        Slow(Duration),
    }

    struct Ctx {
        script: Box<Script>,
        calls: Mutex<Vec<(String, u64, Instant)>>,
        running: Mutex<HashMap<String, usize>>,
        max_running_per_key: AtomicUsize,
    }

    impl Ctx {
        fn new(script: impl Fn(&str, usize) -> Outcome + Send + Sync + 'static) -> Arc<Ctx> {
            Arc::new(Ctx {
                script: Box::new(script),
                calls: Mutex::new(Vec::new()),
                running: Mutex::new(HashMap::new()),
                max_running_per_key: AtomicUsize::new(0),
            })
        }

        fn calls_of(&self, name: &str) -> Vec<(u64, Instant)> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, rv, at)| (*rv, *at))
                .collect()
        }
    }

    async fn reconcile(object: Arc<Object>, ctx: Arc<Ctx>) -> Result<Action, TestError> {
        let name = object.name().to_string();
        let n = {
            let mut calls = ctx.calls.lock().unwrap();
            let n = calls.iter().filter(|(k, _, _)| *k == name).count();
            calls.push((name.clone(), object.resource_version(), Instant::now()));
            n
        };
        let running = {
            let mut r = ctx.running.lock().unwrap();
            let c = r.entry(name.clone()).or_default();
            *c += 1;
            *c
        };
        ctx.max_running_per_key.fetch_max(running, Ordering::SeqCst);
        let outcome = (ctx.script)(&name, n);
        if let Outcome::Slow(d) = outcome {
            tokio::time::sleep(d).await;
        }
        *ctx.running.lock().unwrap().get_mut(&name).unwrap() -= 1;
        match outcome {
            Outcome::Ok(a) => Ok(a),
            Outcome::Fail { terminal } => Err(TestError { terminal }),
            Outcome::Panic => panic!("scripted panic"),
            Outcome::Slow(_) => Ok(Action::await_change()),
        }
    }

    fn image(name: &str, rv: u64) -> Object {
        Image {
            metadata: Some(ObjectMeta {
                name: name.into(),
                uid: format!("uid-{name}"),
                resource_version: rv,
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into()
    }

    fn event(t: EventType, object: Object) -> WatchUpdate {
        WatchUpdate::Event(WatchEvent {
            r#type: t as i32,
            revision: object.resource_version(),
            object: Some(object),
        })
    }

    fn no_jitter() -> Backoff {
        Backoff {
            jitter: 0.0,
            ..Backoff::default()
        }
    }

    /// Runs a controller over `cache` (fed by hand) on a task; returns its trigger and task.
    fn spawn(
        controller: Controller,
        ctx: Arc<Ctx>,
        concurrency: usize,
    ) -> (ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(controller.shutdown_on(shutdown).run(
            reconcile,
            default_error_policy,
            ctx,
            concurrency,
        ));
        (trigger, task)
    }

    fn images_controller(objects: Vec<Object>) -> (Cache, Controller) {
        let cache = Cache::new(Some(Kind::Image));
        cache.apply(WatchUpdate::Listed {
            items: objects,
            revision: 1,
        });
        let c = Controller::from_cache(cache.clone(), Some(Kind::Image))
            .backoff(no_jitter())
            .resync_every(Duration::from_secs(60));
        (cache, c)
    }

    async fn calls_reach(ctx: &Ctx, name: &str, n: usize) {
        eventually(
            &format!("{n} reconciles of {name}"),
            Duration::from_secs(600),
            || async {
                let got = ctx.calls_of(name).len();
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got} reconciles"))
                }
            },
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn every_cached_object_is_reconciled_once_synced() {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::await_change()));
        let (_, controller) = images_controller(vec![image("a", 1), image("b", 1)]);
        let (trigger, task) = spawn(controller, ctx.clone(), 2);
        calls_reach(&ctx, "a", 1).await;
        calls_reach(&ctx, "b", 1).await;
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_cache_holds_the_first_reconciles_until_synced_and_its_changes_reconcile_nothing()
     {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::await_change()));
        let (_, controller) = images_controller(vec![image("a", 1)]);
        let types = Cache::new(Some(Kind::InstanceType));
        let (trigger, task) = spawn(controller.reads(types.clone()), ctx.clone(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            ctx.calls_of("a").is_empty(),
            "nothing before the read cache syncs"
        );
        types.apply(WatchUpdate::Listed {
            items: vec![],
            revision: 1,
        });
        calls_reach(&ctx, "a", 1).await;
        let mut t = Object::from(hanul_proto::v1::InstanceType::default());
        t.metadata_mut().name = "t1".into();
        t.metadata_mut().resource_version = 2;
        types.apply(event(EventType::Added, t));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            ctx.calls_of("a").len(),
            1,
            "a change of a read cache reconciles nothing"
        );
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_filtered_out_object_is_cached_but_never_reconciled() {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::await_change()));
        let (cache, controller) = images_controller(vec![image("kept", 1), image("skipped", 1)]);
        let controller = controller
            .reconciles_only(|o| o.name() != "skipped")
            .resync_every(Duration::from_secs(10));
        let (trigger, task) = spawn(controller, ctx.clone(), 2);
        calls_reach(&ctx, "kept", 1).await;
        cache.apply(event(EventType::Modified, image("skipped", 2)));
        cache.apply(event(EventType::Modified, image("kept", 2)));
        calls_reach(&ctx, "kept", 2).await;
        // Past two resyncs.
        tokio::time::sleep(Duration::from_secs(25)).await;
        calls_reach(&ctx, "kept", 3).await;
        assert!(cache.get(Kind::Image, "skipped").is_some());
        assert!(ctx.calls_of("skipped").is_empty());
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_error_is_retried_with_growing_backoff_that_resets_after_a_success() {
        // Fails twice, succeeds, then (after a change) fails once more and succeeds.
        let ctx = Ctx::new(|_, n| match n {
            0 | 1 | 3 => Outcome::Fail { terminal: false },
            _ => Outcome::Ok(Action::await_change()),
        });
        let (cache, controller) = images_controller(vec![image("a", 1)]);
        let metrics = Metrics::default();
        let (trigger, task) = spawn(controller.metrics(metrics.clone()), ctx.clone(), 1);
        calls_reach(&ctx, "a", 3).await;
        cache.apply(event(EventType::Modified, image("a", 2)));
        calls_reach(&ctx, "a", 5).await;
        let calls = ctx.calls_of("a");
        let gaps: Vec<u128> = calls
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).as_millis())
            .collect();
        assert_eq!(gaps[0], 100, "first retry after the base wait: {gaps:?}");
        assert_eq!(gaps[1], 200, "second retry waits twice as long: {gaps:?}");
        assert_eq!(gaps[3], 100, "the success reset the backoff: {gaps:?}");
        assert_eq!(metrics.reconciles("images", ReconcileResult::Error), 3);
        assert_eq!(metrics.reconciles("images", ReconcileResult::Success), 2);
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_error_is_not_retried_until_the_object_changes() {
        let ctx = Ctx::new(|_, n| match n {
            0 => Outcome::Fail { terminal: true },
            _ => Outcome::Ok(Action::await_change()),
        });
        let (cache, controller) = images_controller(vec![image("a", 1)]);
        let metrics = Metrics::default();
        let (trigger, task) = spawn(controller.metrics(metrics.clone()), ctx.clone(), 1);
        calls_reach(&ctx, "a", 1).await;
        // Ten resync periods pass: no retry.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(ctx.calls_of("a").len(), 1);
        assert_eq!(metrics.reconciles("images", ReconcileResult::Terminal), 1);
        cache.apply(event(EventType::Modified, image("a", 2)));
        calls_reach(&ctx, "a", 2).await;
        assert_eq!(ctx.calls_of("a")[1].0, 2, "the change was reconciled");
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_requeues_after_the_delay_it_asks_for_and_resync_runs_idle_keys() {
        let ctx = Ctx::new(|name, _| {
            if name == "a" {
                Outcome::Ok(Action::requeue(Duration::from_secs(7)))
            } else {
                Outcome::Ok(Action::await_change())
            }
        });
        let (_, controller) = images_controller(vec![image("a", 1), image("b", 1)]);
        let (trigger, task) = spawn(controller, ctx.clone(), 1);
        calls_reach(&ctx, "a", 3).await;
        let a = ctx.calls_of("a");
        assert_eq!((a[2].1 - a[1].1).as_secs(), 7);
        calls_reach(&ctx, "b", 2).await;
        let b = ctx.calls_of("b");
        assert_eq!((b[1].1 - b[0].1).as_secs(), 60, "resync period");
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_deleted_from_the_cache_is_not_reconciled_again() {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::requeue(Duration::from_secs(1))));
        let (cache, controller) = images_controller(vec![image("a", 1), image("b", 1)]);
        let (trigger, task) = spawn(controller, ctx.clone(), 1);
        calls_reach(&ctx, "a", 1).await;
        cache.apply(event(EventType::Deleted, image("a", 2)));
        calls_reach(&ctx, "b", 5).await;
        assert!(ctx.calls_of("a").len() <= 2, "{:?}", ctx.calls_of("a"));
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_changed_while_it_runs_runs_once_more_and_never_twice_at_once() {
        let ctx = Ctx::new(|_, n| match n {
            0 => Outcome::Slow(Duration::from_secs(5)),
            _ => Outcome::Ok(Action::await_change()),
        });
        let (cache, controller) = images_controller(vec![image("a", 1)]);
        let (trigger, task) = spawn(controller, ctx.clone(), 4);
        calls_reach(&ctx, "a", 1).await;
        for rv in 2..6 {
            cache.apply(event(EventType::Modified, image("a", rv)));
        }
        calls_reach(&ctx, "a", 2).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let calls = ctx.calls_of("a");
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].0, 5, "the rerun sees the latest state");
        assert_eq!(ctx.max_running_per_key.load(Ordering::SeqCst), 1);
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_to_an_owned_object_reconciles_its_controller_owner() {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::await_change()));
        let (_, controller) = images_controller(vec![image("a", 1), image("b", 1)]);
        let owned = Cache::new(Some(Kind::Instance));
        owned.apply(WatchUpdate::Listed {
            items: vec![],
            revision: 1,
        });
        let (trigger, task) = spawn(controller.watches_owned_in(owned.clone()), ctx.clone(), 1);
        calls_reach(&ctx, "a", 1).await;
        let instance: Object = Instance {
            metadata: Some(ObjectMeta {
                name: "i-1".into(),
                resource_version: 2,
                owner_references: vec![
                    OwnerReference {
                        kind: "Image".into(),
                        name: "a".into(),
                        uid: "uid-a".into(),
                        controller: true,
                    },
                    // Not the controller: not reconciled for this change.
                    OwnerReference {
                        kind: "Image".into(),
                        name: "b".into(),
                        uid: "uid-b".into(),
                        controller: false,
                    },
                ],
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into();
        owned.apply(event(EventType::Added, instance.clone()));
        calls_reach(&ctx, "a", 2).await;
        owned.apply(event(EventType::Deleted, instance));
        calls_reach(&ctx, "a", 3).await;
        assert_eq!(ctx.calls_of("b").len(), 1);
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_is_counted_and_retried() {
        let ctx = Ctx::new(|_, n| match n {
            0 => Outcome::Panic,
            _ => Outcome::Ok(Action::await_change()),
        });
        let (_, controller) = images_controller(vec![image("a", 1)]);
        let metrics = Metrics::default();
        let (trigger, task) = spawn(controller.metrics(metrics.clone()), ctx.clone(), 1);
        calls_reach(&ctx, "a", 2).await;
        assert_eq!(metrics.reconciles("images", ReconcileResult::Error), 1);
        trigger.trigger();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_running_reconciles_finish() {
        let ctx = Ctx::new(|_, _| Outcome::Slow(Duration::from_secs(3)));
        let (_, controller) = images_controller(vec![image("a", 1)]);
        let metrics = Metrics::default();
        let (trigger, task) = spawn(controller.metrics(metrics.clone()), ctx.clone(), 1);
        calls_reach(&ctx, "a", 1).await;
        trigger.trigger();
        task.await.unwrap();
        assert_eq!(metrics.reconciles("images", ReconcileResult::Success), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_waits_for_its_cache_to_sync_before_reconciling() {
        let ctx = Ctx::new(|_, _| Outcome::Ok(Action::await_change()));
        let cache = Cache::new(Some(Kind::Image));
        let (trigger, task) = spawn(
            Controller::from_cache(cache.clone(), Some(Kind::Image)),
            ctx.clone(),
            1,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        cache.apply(event(EventType::Added, image("early", 1)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(ctx.calls.lock().unwrap().is_empty());
        cache.apply(WatchUpdate::Listed {
            items: vec![image("a", 2)],
            revision: 2,
        });
        calls_reach(&ctx, "a", 1).await;
        trigger.trigger();
        task.await.unwrap();
    }
}
