//! The data plane's counters, named after ELB's CloudWatch metrics, kept in atomics (the hot
//! path takes no lock) and rendered in the Prometheus text format on the agent's `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::group::Target;
use crate::health::Health;

/// Upper bounds of the target response time histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters are kept in shards, one per thread (modulo), each on its own cache lines, so that
/// the worker threads never write to the same line; reading sums them.
pub(crate) const SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// This thread's shard.
pub(crate) fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// A counter split in shards on their own cache lines.
#[derive(Debug, Default)]
pub(crate) struct ShardedCount([Padded; SHARDS]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

impl ShardedCount {
    /// This thread's shard, for its own increments and decrements.
    pub fn local(&self) -> &AtomicUsize {
        &self.0[shard()].0
    }

    /// The total (shards may be transiently negative on their own: wrapping sum).
    pub fn sum(&self) -> usize {
        self.0.iter().fold(0usize, |acc, p| {
            acc.wrapping_add(p.0.load(Ordering::Acquire))
        })
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    /// Responses from targets by class: 2xx, 3xx, 4xx, 5xx.
    target_codes: [AtomicU64; 4],
    /// Responses the load balancer made itself: 502, 503, 504 (no healthy target, target
    /// failed, timed out).
    elb: [AtomicU64; 3],
    response_time_buckets: [AtomicU64; BUCKETS.len()],
    response_time_count: AtomicU64,
    response_time_micros: AtomicU64,
    /// TCP: connections opened to targets.
    connections: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct GroupMetrics {
    shards: [Shard; SHARDS],
    healthy: AtomicU64,
    unhealthy: AtomicU64,
}

impl GroupMetrics {
    fn shard(&self) -> &Shard {
        &self.shards[shard()]
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }

    pub fn request(&self) {
        self.shard().requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection(&self) {
        let shard = self.shard();
        shard.requests.fetch_add(1, Ordering::Relaxed);
        shard.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn target_response(&self, status: u16, took: Duration) {
        let shard = self.shard();
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        shard.target_codes[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            shard.response_time_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        shard.response_time_count.fetch_add(1, Ordering::Relaxed);
        shard
            .response_time_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn elb_error(&self, status: u16) {
        let i = match status {
            502 => 0,
            503 => 1,
            _ => 2,
        };
        self.shard().elb[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_hosts(&self, targets: &[Arc<Target>]) {
        let count = |h| targets.iter().filter(|t| t.health() == h).count() as u64;
        self.healthy
            .store(count(Health::Healthy), Ordering::Relaxed);
        self.unhealthy
            .store(count(Health::Unhealthy), Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub(crate) struct ListenerMetrics {
    pub active_connections: AtomicU64,
    pub new_connections: AtomicU64,
}

/// One metric family: its HELP and TYPE lines, then a line per (labels, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Appends the metrics of `groups` and `listeners` to `out`.
pub(crate) fn render(
    out: &mut String,
    groups: &[(String, Arc<crate::group::Group>)],
    listeners: &[(String, u16, Arc<ListenerMetrics>)],
) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let per_group = |value: &dyn Fn(&GroupMetrics) -> u64| {
        groups
            .iter()
            .map(|(name, g)| (format!("target_group=\"{name}\""), value(&g.metrics)))
            .collect::<Vec<_>>()
    };
    let per_class = |classes: &[&str], value: &dyn Fn(&GroupMetrics, usize) -> u64| {
        groups
            .iter()
            .flat_map(|(name, g)| {
                classes.iter().enumerate().map(move |(i, code)| {
                    (
                        format!("target_group=\"{name}\",code=\"{code}\""),
                        value(&g.metrics, i),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let per_listener = |value: &dyn Fn(&ListenerMetrics) -> u64| {
        listeners
            .iter()
            .map(|(lb, port, m)| (format!("load_balancer=\"{lb}\",port=\"{port}\""), value(m)))
            .collect::<Vec<_>>()
    };
    family(
        out,
        "hanul_elb_request_count",
        "counter",
        "Requests a target group received.",
        per_group(&|m| m.sum(|s| &s.requests)),
    );
    family(
        out,
        "hanul_elb_target_responses",
        "counter",
        "Responses from targets by status class.",
        per_class(&["2xx", "3xx", "4xx", "5xx"], &|m, i| {
            m.sum(|s| &s.target_codes[i])
        }),
    );
    family(
        out,
        "hanul_elb_responses",
        "counter",
        "Error responses the load balancer made itself.",
        per_class(&["502", "503", "504"], &|m, i| m.sum(|s| &s.elb[i])),
    );
    // The histogram's lines are its own: buckets, sum and count per group.
    family(
        out,
        "hanul_elb_target_response_time_seconds",
        "histogram",
        "Time from sending a request to a target to its response headers.",
        [],
    );
    for (name, g) in groups {
        let m = &g.metrics;
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += m.sum(|s| &s.response_time_buckets[i]);
            let _ = writeln!(
                out,
                "hanul_elb_target_response_time_seconds_bucket{{target_group=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = m.sum(|s| &s.response_time_count);
        let _ = writeln!(
            out,
            "hanul_elb_target_response_time_seconds_bucket{{target_group=\"{name}\",le=\"+Inf\"}} {count}\n\
             hanul_elb_target_response_time_seconds_sum{{target_group=\"{name}\"}} {}\n\
             hanul_elb_target_response_time_seconds_count{{target_group=\"{name}\"}} {count}",
            m.sum(|s| &s.response_time_micros) as f64 / 1e6
        );
    }
    family(
        out,
        "hanul_elb_healthy_host_count",
        "gauge",
        "Healthy targets.",
        per_group(&|m| load(&m.healthy)),
    );
    family(
        out,
        "hanul_elb_unhealthy_host_count",
        "gauge",
        "Unhealthy targets.",
        per_group(&|m| load(&m.unhealthy)),
    );
    family(
        out,
        "hanul_elb_active_connection_count",
        "gauge",
        "Open client connections of a listener.",
        per_listener(&|m| load(&m.active_connections)),
    );
    family(
        out,
        "hanul_elb_new_connection_count",
        "counter",
        "Client connections a listener accepted.",
        per_listener(&|m| load(&m.new_connections)),
    );
}
