//! The work queue: which keys to reconcile, when, and never two at once.
//!
//! The shape is client-go's workqueue: a key is *ready* (deduplicated FIFO), *in flight*
//! (handed to a worker, not handed out again until [`WorkQueue::done`]), *dirty* (added while in
//! flight: it runs once more when the current run ends) and/or *scheduled* (a delayed requeue;
//! the earliest time wins). Handing a key out clears its schedule: the run that starts decides
//! the next one. Failure counts per key drive [`Backoff`] and are reset by [`WorkQueue::forget`]
//! after a success.

use super::Backoff;
use prometheus_client::metrics::gauge::Gauge;
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::Hash,
    sync::{Mutex, PoisonError},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};

/// A deduplicating, delaying work queue of keys with per-key backoff.
#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    backoff: Backoff,
    depth: Option<Gauge>,
}

#[derive(Debug)]
struct State<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    in_flight: HashSet<K>,
    dirty: HashSet<K>,
    scheduled: HashMap<K, (Instant, u64)>,
    timers: BTreeMap<(Instant, u64), K>,
    seq: u64,
    failures: HashMap<K, u32>,
    shut_down: bool,
}

impl<K: Clone + Eq + Hash> State<K> {
    fn add(&mut self, key: K) {
        if self.in_flight.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn unschedule(&mut self, key: &K) {
        if let Some(slot) = self.scheduled.remove(key) {
            self.timers.remove(&slot);
        }
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.scheduled.remove(&key);
            self.add(key);
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// An empty queue whose failed keys wait as `backoff` says.
    pub fn new(backoff: Backoff) -> WorkQueue<K> {
        WorkQueue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                in_flight: HashSet::new(),
                dirty: HashSet::new(),
                scheduled: HashMap::new(),
                timers: BTreeMap::new(),
                seq: 0,
                failures: HashMap::new(),
                shut_down: false,
            }),
            notify: Notify::new(),
            backoff,
            depth: None,
        }
    }

    /// Reports the number of ready keys to `gauge`.
    pub fn with_depth_gauge(mut self, gauge: Gauge) -> WorkQueue<K> {
        self.depth = Some(gauge);
        self
    }

    fn update<R>(&self, f: impl FnOnce(&mut State<K>) -> R) -> R {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping the controller would, so a poisoned lock is used as is.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut state);
        if let Some(g) = &self.depth {
            g.set(state.ready.len() as i64);
        }
        out
    }

    /// Makes `key` ready now (once, however often it is added; after the current run if it is in
    /// flight).
    pub fn add(&self, key: K) {
        let added = self.update(|s| {
            if s.shut_down {
                return false;
            }
            s.add(key);
            true
        });
        if added {
            self.notify.notify_waiters();
        }
    }

    /// Makes `key` ready after `delay`, unless it is already scheduled earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let changed = self.update(|s| {
            if s.shut_down {
                return false;
            }
            if let Some((current, _)) = s.scheduled.get(&key)
                && *current <= at
            {
                return false;
            }
            s.unschedule(&key);
            s.seq += 1;
            let slot = (at, s.seq);
            s.timers.insert(slot, key.clone());
            s.scheduled.insert(key, slot);
            true
        });
        if changed {
            self.notify.notify_waiters();
        }
    }

    /// Adds `key` unless it is ready, in flight or scheduled already: a periodic resync must not
    /// cut a backoff short.
    pub fn add_if_idle(&self, key: K) {
        let idle = self.update(|s| {
            !(s.queued.contains(&key)
                || s.in_flight.contains(&key)
                || s.scheduled.contains_key(&key))
        });
        if idle {
            self.add(key);
        }
    }

    /// Waits for a ready key and marks it in flight; `None` once the queue is shut down.
    pub async fn pop(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so that an add in between is not missed.
            notified.as_mut().enable();
            let next_timer = self.update(|s| {
                if s.shut_down {
                    return Err(None);
                }
                s.promote_due(Instant::now());
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.unschedule(&key);
                    s.in_flight.insert(key.clone());
                    return Err(Some(key));
                }
                Ok(s.timers.keys().next().map(|(at, _)| *at))
            });
            match next_timer {
                Err(popped) => return popped,
                Ok(Some(at)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Ok(None) => notified.await,
            }
        }
    }

    /// Ends the run of `key`; if it was added meanwhile it becomes ready again.
    pub fn done(&self, key: &K) {
        let again = self.update(|s| {
            s.in_flight.remove(key);
            match s.dirty.take(key) {
                Some(k) if !s.shut_down => {
                    s.add(k);
                    true
                }
                _ => false,
            }
        });
        if again {
            self.notify.notify_waiters();
        }
    }

    /// Counts a failure of `key` and schedules its retry after the backoff; returns the wait.
    pub fn requeue_with_backoff(&self, key: K) -> Duration {
        let failures = self.update(|s| {
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        });
        let delay = self.backoff.delay(failures);
        self.add_after(key, delay);
        delay
    }

    /// Resets the failure count of `key` (after a success, or when it is gone).
    pub fn forget(&self, key: &K) {
        self.update(|s| s.failures.remove(key));
    }

    /// Drops any scheduled requeue of `key`.
    pub fn cancel_scheduled(&self, key: &K) {
        self.update(|s| s.unschedule(key));
    }

    /// Consecutive failures of `key` since its last success.
    pub fn failures(&self, key: &K) -> u32 {
        self.update(|s| s.failures.get(key).copied().unwrap_or(0))
    }

    /// Keys ready to run (not counting in-flight or scheduled ones).
    pub fn len(&self) -> usize {
        self.update(|s| s.ready.len())
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting for a delayed requeue.
    pub fn scheduled_len(&self) -> usize {
        self.update(|s| s.scheduled.len())
    }

    /// Stops handing out keys: every waiting and later [`WorkQueue::pop`] returns `None`.
    pub fn shut_down(&self) {
        self.update(|s| s.shut_down = true);
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Backoff {
            jitter: 0.0,
            ..Backoff::default()
        })
    }

    /// Whether `pop` returns within `within` (paused time: "within" is virtual).
    async fn try_pop(q: &WorkQueue<&'static str>, within: Duration) -> Option<&'static str> {
        tokio::time::timeout(within, q.pop()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_many_times_before_it_runs_is_handed_out_once() {
        let q = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().await, Some("a"));
        assert_eq!(q.pop().await, Some("b"));
        assert_eq!(try_pop(&q, Duration::from_secs(1)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_handed_out_while_it_is_in_flight() {
        let q = queue();
        q.add("a");
        assert_eq!(q.pop().await, Some("a"));
        q.add("a");
        assert_eq!(q.len(), 0, "an in-flight key waits outside the ready list");
        assert_eq!(try_pop(&q, Duration::from_secs(1)).await, None);
        q.done(&"a");
        assert_eq!(try_pop(&q, Duration::from_secs(1)).await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_in_flight_runs_exactly_once_more_after_it_ends() {
        let q = queue();
        q.add("a");
        let key = q.pop().await.unwrap();
        q.add("a");
        q.add("a");
        q.done(&key);
        assert_eq!(try_pop(&q, Duration::from_secs(1)).await, Some("a"));
        q.done(&"a");
        assert_eq!(try_pop(&q, Duration::from_secs(1)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_when_a_key_is_added() {
        let q = Arc::new(queue());
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.add("a");
        assert_eq!(worker.await.unwrap(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_is_handed_out_when_its_time_comes_and_the_earliest_time_wins() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(30));
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(20));
        assert_eq!(q.scheduled_len(), 1);
        assert_eq!(try_pop(&q, Duration::from_secs(9)).await, None);
        assert_eq!(q.pop().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        q.done(&"a");
        assert_eq!(
            try_pop(&q, Duration::from_secs(60)).await,
            None,
            "the later times were dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn handing_a_key_out_clears_its_scheduled_requeue() {
        let q = queue();
        q.add_after("a", Duration::from_secs(10));
        q.add("a");
        assert_eq!(q.pop().await, Some("a"));
        assert_eq!(q.scheduled_len(), 0);
        q.done(&"a");
        assert_eq!(try_pop(&q, Duration::from_secs(60)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_each_failure_and_resets_after_a_success() {
        let q = queue();
        let mut waits = Vec::new();
        for _ in 0..4 {
            q.add("a");
            let key = q.pop().await.unwrap();
            let start = Instant::now();
            let wait = q.requeue_with_backoff(key);
            q.done(&key);
            assert_eq!(try_pop(&q, wait - Duration::from_millis(1)).await, None);
            assert_eq!(q.pop().await, Some("a"));
            assert_eq!(start.elapsed(), wait);
            q.done(&"a");
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800]);
        assert_eq!(q.failures(&"a"), 4);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
        assert_eq!(q.requeue_with_backoff("a"), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_resync_does_not_cut_a_backoff_short() {
        let q = queue();
        q.add("a");
        let key = q.pop().await.unwrap();
        q.requeue_with_backoff(key);
        q.done(&key);
        q.add_if_idle("a");
        assert_eq!(q.len(), 0);
        q.add_if_idle("b");
        assert_eq!(q.pop().await, Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_releases_waiting_workers() {
        let q = Arc::new(queue());
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(worker.await.unwrap(), None);
        q.add("a");
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_depth_gauge_counts_ready_keys() {
        let gauge = Gauge::default();
        let q = queue().with_depth_gauge(gauge.clone());
        q.add("a");
        q.add("b");
        assert_eq!(gauge.get(), 2);
        q.pop().await;
        assert_eq!(gauge.get(), 1);
    }
}
