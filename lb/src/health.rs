//! Target health: the pure state machine ELB's health checks drive, and the checks themselves.
//!
//! ```text
//!  initial ──1 pass──▶ healthy ◀──healthyThreshold passes in a row── unhealthy
//!     │                   └──────unhealthyThreshold fails in a row──────▶ ▲
//!     └──────────────────unhealthyThreshold fails in a row────────────────┘
//! ```
//!
//! As ELB: a newly registered target is `initial` until its first check passes (one pass makes
//! it healthy) or `unhealthyThreshold` checks fail; a healthy target turns unhealthy after
//! `unhealthyThreshold` consecutive failures and an unhealthy one healthy after
//! `healthyThreshold` consecutive passes. `draining` and `unused` are set from outside (a target
//! deregistered, or one whose instance cannot take traffic) and are never left by checks. A
//! group whose checks are disabled shows its targets healthy ([`HealthState::checks_disabled`])
//! without this machine.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheckConfig, Protocol};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    Initial,
    Healthy,
    Unhealthy,
    Draining,
    Unused,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Initial => "initial",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Draining => "draining",
            Health::Unused => "unused",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Initial,
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            3 => Health::Draining,
            _ => Health::Unused,
        }
    }
}

/// The outcome of one check; failures carry ELB's reason code and a description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail { reason: String, description: String },
}

/// A target's health with the reason for it, as `status.targets[]` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub health: Health,
    pub reason: String,
    pub description: String,
}

impl HealthState {
    pub fn initial() -> HealthState {
        HealthState {
            health: Health::Initial,
            reason: "Elb.RegistrationInProgress".into(),
            description: "Target registration is in progress".into(),
        }
    }

    /// A target of a group whose health checks are disabled: healthy, since nothing says
    /// otherwise, with the reason ELB gives for such a target.
    pub fn checks_disabled() -> HealthState {
        HealthState {
            health: Health::Healthy,
            reason: "Target.HealthCheckDisabled".into(),
            description: "Health checks are disabled".into(),
        }
    }
}

/// The check-driven part of a target's health.
#[derive(Clone, Debug)]
pub struct Machine {
    state: HealthState,
    passes: u32,
    fails: u32,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            state: HealthState::initial(),
            passes: 0,
            fails: 0,
        }
    }
}

impl Machine {
    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// Feeds one check's outcome; returns the new state when it changed.
    pub fn observe(
        &mut self,
        outcome: Outcome,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<HealthState> {
        let before = self.state.clone();
        match outcome {
            Outcome::Pass => {
                self.passes += 1;
                self.fails = 0;
                let enough = match self.state.health {
                    Health::Initial => true,
                    Health::Unhealthy => self.passes >= healthy_threshold.max(1),
                    _ => false,
                };
                if enough || self.state.health == Health::Healthy {
                    self.state = HealthState {
                        health: Health::Healthy,
                        reason: String::new(),
                        description: String::new(),
                    };
                }
            }
            Outcome::Fail {
                reason,
                description,
            } => {
                self.fails += 1;
                self.passes = 0;
                match self.state.health {
                    Health::Initial | Health::Healthy
                        if self.fails >= unhealthy_threshold.max(1) =>
                    {
                        self.state = HealthState {
                            health: Health::Unhealthy,
                            reason,
                            description,
                        };
                    }
                    // An unhealthy target shows the latest failure.
                    Health::Unhealthy => {
                        self.state.reason = reason;
                        self.state.description = description;
                    }
                    _ => {}
                }
            }
        }
        (self.state != before).then(|| self.state.clone())
    }
}

/// Runs one health check against `address` (host:port).
pub async fn check(address: &str, config: &HealthCheckConfig) -> Outcome {
    match tokio::time::timeout(config.timeout, check_once(address, config)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Fail {
            reason: "Target.Timeout".into(),
            description: format!("Request timed out after {}", humanize(config.timeout)),
        },
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

async fn check_once(address: &str, config: &HealthCheckConfig) -> Outcome {
    let mut stream = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Fail {
                reason: "Target.FailedHealthChecks".into(),
                description: format!("Health checks failed: cannot connect to {address}: {e}"),
            };
        }
    };
    if config.protocol == Protocol::Tcp {
        return Outcome::Pass;
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: hanul-elb-healthchecker/1.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        config.path
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Fail {
            reason: "Target.FailedHealthChecks".into(),
            description: format!("Health checks failed: {e}"),
        };
    }
    // The status line is all a check needs.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break Some(i);
        }
        if buf.len() > 4096 {
            break None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Outcome::Fail {
                    reason: "Target.FailedHealthChecks".into(),
                    description: format!("Health checks failed: {e}"),
                };
            }
        }
    };
    let code = line_end.and_then(|end| {
        let line = std::str::from_utf8(&buf[..end]).ok()?;
        let mut parts = line.split_whitespace();
        parts.next().filter(|v| v.starts_with("HTTP/"))?;
        parts.next()?.parse::<u16>().ok()
    });
    match code {
        Some(code) if config.matcher.matches(code) => Outcome::Pass,
        Some(code) => Outcome::Fail {
            reason: "Target.ResponseCodeMismatch".into(),
            description: format!("Health checks failed with these codes: [{code}]"),
        },
        None => Outcome::Fail {
            reason: "Target.FailedHealthChecks".into(),
            description: "Health checks failed: the target did not answer with HTTP".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fail() -> Outcome {
        Outcome::Fail {
            reason: "Target.Timeout".into(),
            description: "x".into(),
        }
    }

    #[test]
    fn one_pass_makes_a_new_target_healthy() {
        let mut m = Machine::default();
        assert_eq!(m.state().health, Health::Initial);
        let s = m.observe(Outcome::Pass, 5, 2).unwrap();
        assert_eq!(s.health, Health::Healthy);
        assert_eq!(m.observe(Outcome::Pass, 5, 2), None);
    }

    #[test]
    fn thresholds_take_consecutive_checks() {
        let mut m = Machine::default();
        m.observe(Outcome::Pass, 3, 2);
        assert_eq!(m.observe(fail(), 3, 2), None);
        assert_eq!(
            m.observe(Outcome::Pass, 3, 2),
            None,
            "a pass resets the failures"
        );
        assert_eq!(m.observe(fail(), 3, 2), None);
        let s = m.observe(fail(), 3, 2).unwrap();
        assert_eq!(
            (s.health, s.reason.as_str()),
            (Health::Unhealthy, "Target.Timeout")
        );
        assert_eq!(m.observe(Outcome::Pass, 3, 2), None);
        assert_eq!(m.observe(Outcome::Pass, 3, 2), None);
        assert_eq!(
            m.observe(Outcome::Pass, 3, 2).unwrap().health,
            Health::Healthy
        );
    }

    #[test]
    fn a_new_target_that_never_passes_turns_unhealthy() {
        let mut m = Machine::default();
        assert_eq!(m.observe(fail(), 5, 3), None);
        assert_eq!(m.observe(fail(), 5, 3), None);
        assert_eq!(m.observe(fail(), 5, 3).unwrap().health, Health::Unhealthy);
    }

    proptest! {
        /// Whatever the history, the state is the one the last checks imply: after
        /// `unhealthy` failures in a row a target is unhealthy, after `healthy` passes in a row
        /// healthy, and it never changes on a single check against its direction.
        #[test]
        fn the_last_run_of_checks_decides(
            checks in proptest::collection::vec(any::<bool>(), 0..60),
            healthy in 1u32..6,
            unhealthy in 1u32..6,
        ) {
            let mut m = Machine::default();
            let mut run = (true, 0u32);
            for &pass in &checks {
                let before = m.state().health;
                run = if run.0 == pass && run.1 > 0 { (pass, run.1 + 1) } else { (pass, 1) };
                let changed = m.observe(if pass { Outcome::Pass } else { fail() }, healthy, unhealthy);
                let after = m.state().health;
                if pass {
                    prop_assert!(after != Health::Unhealthy || before == Health::Unhealthy);
                    if run.1 >= healthy { prop_assert_eq!(after, Health::Healthy); }
                } else {
                    prop_assert!(after != Health::Healthy || before == Health::Healthy);
                    if run.1 >= unhealthy { prop_assert_eq!(after, Health::Unhealthy); }
                }
                if let Some(new) = changed {
                    prop_assert_eq!(&new, m.state());
                } else {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }

    #[tokio::test]
    async fn checks_tell_timeouts_codes_and_refusals_apart() {
        use tokio::net::TcpListener;
        let serve = |status: &'static str, delay: Duration| async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut b = [0u8; 1024];
                        let _ = s.read(&mut b).await;
                        tokio::time::sleep(delay).await;
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                    });
                }
            });
            addr
        };
        let config = HealthCheckConfig {
            timeout: Duration::from_millis(300),
            ..HealthCheckConfig::default()
        };
        let ok = serve("200 OK", Duration::ZERO).await;
        assert_eq!(check(&ok, &config).await, Outcome::Pass);
        let bad = serve("500 Internal Server Error", Duration::ZERO).await;
        let Outcome::Fail {
            reason,
            description,
        } = check(&bad, &config).await
        else {
            panic!()
        };
        assert_eq!(reason, "Target.ResponseCodeMismatch");
        assert!(description.contains("[500]"), "{description}");
        let slow = serve("200 OK", Duration::from_secs(2)).await;
        let Outcome::Fail { reason, .. } = check(&slow, &config).await else {
            panic!()
        };
        assert_eq!(reason, "Target.Timeout");
        // A port nothing listens on.
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let Outcome::Fail { reason, .. } = check(&gone.to_string(), &config).await else {
            panic!()
        };
        assert_eq!(reason, "Target.FailedHealthChecks");
    }
}
