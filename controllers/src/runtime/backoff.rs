//! Per-key exponential backoff with jitter, as Go's workqueue rate limiter does it: the n-th
//! consecutive failure waits `base × factor^(n-1)`, capped, spread by ± `jitter` so that keys
//! that failed together do not retry in lockstep.

use rand::Rng;
use std::time::Duration;

/// How long to wait before retrying a key after consecutive failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub base: Duration,
    /// The growth per further failure.
    pub factor: f64,
    /// No wait is longer than this, jitter included.
    pub max: Duration,
    /// The relative spread: 0.2 draws from [0.8, 1.2] × the nominal wait.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 60 s, ± 20 %.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The nominal wait after `failures` consecutive failures (1 for the first), without jitter.
    pub fn nominal(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The wait after `failures` consecutive failures, jittered and capped.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, &mut rand::rng())
    }

    /// [`Backoff::delay`] with a given random source.
    pub fn delay_with(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(failures).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        let secs = (nominal * (1.0 + spread)).clamp(0.0, self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nominal_wait_doubles_from_the_base_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.nominal(1), Duration::from_millis(100));
        assert_eq!(b.nominal(2), Duration::from_millis(200));
        assert_eq!(b.nominal(4), Duration::from_millis(800));
        assert_eq!(b.nominal(11), Duration::from_secs(60));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_never_exceeds_the_cap() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for failures in 1..=20 {
            let nominal = b.nominal(failures).as_secs_f64();
            let (mut lo, mut hi) = (f64::MAX, 0.0f64);
            for _ in 0..500 {
                let d = b.delay_with(failures, &mut rng).as_secs_f64();
                assert!(d >= nominal * 0.8 - 1e-9, "{d} below 0.8 × {nominal}");
                assert!(d <= nominal * 1.2 + 1e-9, "{d} above 1.2 × {nominal}");
                assert!(d <= 60.0, "{d} above the cap");
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // The spread is real: 500 draws do not all land on one value.
            assert!(hi > lo, "no jitter at {failures} failures");
        }
    }

    #[test]
    fn no_jitter_gives_the_nominal_wait() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(b.delay(3), Duration::from_millis(400));
    }
}
