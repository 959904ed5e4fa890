//! Time as a dependency: planners take `now` from a [`Clock`] in their context, so that they stay
//! pure and tests can set the time.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// Where controllers get wall-clock time from.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // This is the controllers' clock.
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until told to move, for tests.
#[derive(Debug)]
pub struct FakeClock {
    now: Mutex<SystemTime>,
}

impl FakeClock {
    /// A clock showing `at`.
    pub fn new(at: SystemTime) -> FakeClock {
        FakeClock {
            now: Mutex::new(at),
        }
    }

    /// Sets the time.
    pub fn set(&self, at: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Default for FakeClock {
    /// A clock at a fixed, recognisable instant (2024-01-01T00:00:00Z).
    fn default() -> Self {
        FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_fake_clock_moves_only_when_told() {
        let clock = FakeClock::default();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), t0 + Duration::from_secs(90));
        let shared: Arc<dyn Clock> = Arc::new(clock);
        assert_eq!(shared.now(), t0 + Duration::from_secs(90));
    }
}
