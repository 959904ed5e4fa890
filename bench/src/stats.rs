//! Latency samples and their percentiles.

use serde::Serialize;
use std::time::Duration;

/// A set of latency samples, kept whole (a 10 s run at a few thousand ops/s is small).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.micros
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// Sorts the samples and summarises them.
    pub fn summary(mut self) -> Summary {
        self.micros.sort_unstable();
        let n = self.micros.len();
        let at = |q: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            self.micros[rank - 1] as f64 / 1000.0
        };
        let mean = if n == 0 {
            f64::NAN
        } else {
            self.micros.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        };
        Summary {
            count: n,
            mean_ms: mean,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        let sum = s.summary();
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50_ms, 50.0);
        assert_eq!(sum.p99_ms, 99.0);
        assert_eq!(sum.max_ms, 100.0);
    }

    #[test]
    fn an_empty_set_has_no_percentiles() {
        assert!(Samples::default().summary().p99_ms.is_nan());
    }
}
