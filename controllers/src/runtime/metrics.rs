//! Prometheus metrics of the controllers, one family each, labelled by controller name:
//!
//! - `hanul_controller_reconcile_total{controller,result}` (result: success, error, terminal)
//! - `hanul_controller_reconcile_duration_seconds{controller}` (histogram)
//! - `hanul_controller_queue_depth{controller}` (keys ready to run)

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::time::Duration;

/// How a reconcile ended, as counted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    Success,
    /// A retryable error (or a panic): retried with backoff.
    Error,
    /// A non-retryable error: waits for the object to change.
    Terminal,
}

impl ReconcileResult {
    /// The label value: `success`, `error`, `terminal`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
            ReconcileResult::Terminal => "terminal",
        }
    }
}

impl EncodeLabelValue for ReconcileResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerResult {
    controller: String,
    result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

fn duration_buckets() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The controllers' metric families. Cheap to clone; clones share the families.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ControllerResult, Counter>,
    duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    queue_depth: Family<ControllerLabel, Gauge>,
}

impl Default for Metrics {
    /// Families registered nowhere (for tests, or when nobody scrapes).
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
            queue_depth: Family::default(),
        }
    }
}

impl Metrics {
    /// The families, registered into `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        // The counter's `_total` suffix is added by the encoder.
        registry.register(
            "hanul_controller_reconcile",
            "Reconciles run, by controller and result",
            m.reconciles.clone(),
        );
        registry.register(
            "hanul_controller_reconcile_duration_seconds",
            "Time spent in reconcile, by controller",
            m.duration.clone(),
        );
        registry.register(
            "hanul_controller_queue_depth",
            "Keys ready to reconcile and not yet picked up, by controller",
            m.queue_depth.clone(),
        );
        m
    }

    /// Counts one reconcile of `controller` and its duration.
    pub fn observe(&self, controller: &str, result: ReconcileResult, took: Duration) {
        self.reconciles
            .get_or_create(&ControllerResult {
                controller: controller.to_string(),
                result,
            })
            .inc();
        self.duration
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Reconciles of `controller` that ended with `result` so far.
    pub fn reconciles(&self, controller: &str, result: ReconcileResult) -> u64 {
        self.reconciles
            .get_or_create(&ControllerResult {
                controller: controller.to_string(),
                result,
            })
            .get()
    }

    /// The queue depth gauge of `controller`.
    pub fn queue_depth(&self, controller: &str) -> Gauge {
        self.queue_depth
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_are_exposed_under_their_documented_names() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.observe("gc", ReconcileResult::Success, Duration::from_millis(3));
        m.observe("gc", ReconcileResult::Terminal, Duration::from_millis(3));
        m.queue_depth("gc").set(4);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"hanul_controller_reconcile_total{controller="gc",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"result="terminal""#), "{text}");
        assert!(
            text.contains(
                r#"hanul_controller_reconcile_duration_seconds_count{controller="gc"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"hanul_controller_queue_depth{controller="gc"} 4"#),
            "{text}"
        );
        assert_eq!(m.reconciles("gc", ReconcileResult::Success), 1);
    }
}
