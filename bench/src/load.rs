//! The two workloads, written once against [`Backend`] so that hanul and etcd run exactly the
//! same loop: closed-loop creates at a fixed concurrency, and watch delivery at a steady rate.

use crate::stats::{Samples, Summary};
use anyhow::{Context as _, bail};
use serde::Serialize;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// One store under test.
pub trait Backend: Send + Sync + 'static {
    /// One connection; clones share it.
    type Conn: Clone + Send + Sync + 'static;

    /// Opens a new connection.
    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;

    /// Durably creates a new object called `name`; returns once the store acknowledged it.
    fn create(
        &self,
        conn: &mut Self::Conn,
        name: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Watches every object this backend creates and sends the name of each created one with
    /// the instant its event arrived. Returns once the watch is open; the task ends when the
    /// receiver is dropped or the handle aborted.
    fn watch(
        &self,
        events: mpsc::UnboundedSender<(String, Instant)>,
    ) -> impl Future<Output = anyhow::Result<JoinHandle<()>>> + Send;
}

/// How one closed-loop run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    pub clients: usize,
    /// Connections shared round-robin by the clients.
    pub conns: usize,
    /// Run but not measured: connections warm, store files grown.
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub conns: usize,
    /// Creates acknowledged inside the measured window.
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Summary,
}

/// `plan.clients` tasks each create objects one after another, as fast as acknowledgements
/// come back. Names are `{prefix}-c{client}-{seq}`, unique in the store.
pub async fn run_load<B: Backend>(
    backend: &Arc<B>,
    plan: LoadPlan,
    prefix: &str,
) -> anyhow::Result<LoadResult> {
    let conns = plan.conns.clamp(1, plan.clients.max(1));
    let mut pool = Vec::with_capacity(conns);
    for _ in 0..conns {
        pool.push(backend.connect().await.context("connecting a client")?);
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let measure_to = measure_from + plan.duration;

    let mut tasks = Vec::with_capacity(plan.clients);
    for client in 0..plan.clients {
        let backend = backend.clone();
        let mut conn = pool[client % conns].clone();
        let prefix = format!("{prefix}-c{client}");
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut seq = 0u64;
            loop {
                let name = format!("{prefix}-{seq}");
                seq += 1;
                let began = Instant::now();
                let result = backend.create(&mut conn, &name).await;
                let done = Instant::now();
                if done >= measure_to {
                    break;
                }
                match result {
                    Ok(()) if done >= measure_from => samples.push(done - began),
                    Ok(()) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        if errors > 100 && samples.is_empty() {
                            break;
                        }
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }

    let mut samples = Samples::default();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (s, e, f) = task.await.context("a client task panicked")?;
        samples.extend(s);
        errors += e;
        first_error = first_error.or(f);
    }
    if samples.is_empty() {
        bail!(
            "no create succeeded with {} clients: {}",
            plan.clients,
            first_error.unwrap_or_default()
        );
    }
    let seconds = plan.duration.as_secs_f64();
    let ok = samples.len();
    Ok(LoadResult {
        clients: plan.clients,
        conns,
        ok,
        errors,
        first_error,
        seconds,
        per_second: ok as f64 / seconds,
        latency: samples.summary(),
    })
}

/// What the watch run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WatchResult {
    pub rate: u32,
    pub writes: usize,
    /// Writes whose event never came within the grace period after the last write.
    pub missed: usize,
    pub write_errors: usize,
    /// From the start of a write to the arrival of its event.
    pub delivery: Summary,
    /// From the write's acknowledgement to the arrival of its event; negative values (the
    /// event came first) count as zero.
    pub after_ack: Summary,
}

/// One watcher; one writer starting a create every `1/rate` seconds (each in its own task, so
/// a slow write does not lower the rate) for `duration`.
pub async fn run_watch<B: Backend>(
    backend: &Arc<B>,
    rate: u32,
    duration: Duration,
    prefix: &str,
) -> anyhow::Result<WatchResult> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = backend.watch(tx).await.context("opening the watch")?;
    let _abort = AbortOnDrop(watcher);
    let conn = backend.connect().await.context("connecting the writer")?;

    // A first write proves the watch is live before anything is measured.
    let ready = format!("{prefix}-ready");
    backend
        .create(&mut conn.clone(), &ready)
        .await
        .context("writing the first object")?;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((name, _)) = rx.recv().await {
            if name == ready {
                return Ok(());
            }
        }
        bail!("the watch ended")
    })
    .await
    .context("the watch did not deliver the first object within 10 s")??;

    let n = ((rate as f64) * duration.as_secs_f64()).round().max(1.0) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut began = Vec::with_capacity(n);
    let mut writes = Vec::with_capacity(n);
    let mut received: HashMap<String, Instant> = HashMap::with_capacity(n);
    for i in 0..n {
        // Drain events while pacing, so the channel never holds much.
        loop {
            tokio::select! {
                biased;
                Some((name, at)) = rx.recv() => { received.insert(name, at); }
                _ = tick.tick() => break,
            }
        }
        let backend = backend.clone();
        let mut conn = conn.clone();
        let name = format!("{prefix}-{i}");
        began.push(Instant::now());
        writes.push(tokio::spawn(async move {
            backend
                .create(&mut conn, &name)
                .await
                .map(|()| Instant::now())
        }));
    }
    let mut acked = Vec::with_capacity(n);
    let mut write_errors = 0;
    for w in writes {
        match w.await.context("a writer task panicked")? {
            Ok(at) => acked.push(Some(at)),
            Err(_) => {
                write_errors += 1;
                acked.push(None);
            }
        }
    }
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    while received.len() < n - write_errors {
        match tokio::time::timeout_at(grace, rx.recv()).await {
            Ok(Some((name, at))) => {
                received.insert(name, at);
            }
            Ok(None) | Err(_) => break,
        }
    }

    let mut delivery = Samples::default();
    let mut after_ack = Samples::default();
    let mut missed = 0;
    for (i, start) in began.iter().enumerate() {
        let Some(ack) = acked[i] else { continue };
        match received.get(&format!("{prefix}-{i}")) {
            Some(&at) => {
                delivery.push(at.saturating_duration_since(*start));
                after_ack.push(at.saturating_duration_since(ack));
            }
            None => missed += 1,
        }
    }
    if delivery.is_empty() {
        bail!("no watch event arrived for {n} writes");
    }
    Ok(WatchResult {
        rate,
        writes: n,
        missed,
        write_errors,
        delivery: delivery.summary(),
        after_ack: after_ack.summary(),
    })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
