//! What the data plane is asked to run: plain values, resolved by the agent from the store's
//! `LoadBalancer` and `TargetGroup` objects (instance targets already turned into addresses).
//! [`crate::DataPlane::apply`] takes a whole [`Config`] each time and works out the difference.

use std::net::IpAddr;
use std::time::Duration;

/// Everything one node's data plane runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub groups: Vec<GroupConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    /// "HTTP" or "TCP", as the API spells it; anything else is `None`.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "HTTP" => Some(Protocol::Http),
            "TCP" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// One listening port of one load balancer.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// The load balancer it belongs to (for status and metrics).
    pub load_balancer: String,
    pub bind: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The target group requests go to when no rule matches.
    pub default_group: String,
    /// HTTP listeners only: tried in order, the first match decides.
    pub rules: Vec<RuleConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuleConfig {
    /// A host name, `*` and `?` as wildcards, compared without case and without the port.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// A glob over the path: `*` any run of characters, `?` one.
    pub path_pattern: Option<String>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Forward(String),
    Fixed {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Parts that are `None` keep the request's.
    Redirect {
        protocol: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        path: Option<String>,
        status: u16,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stickiness {
    /// The load balancer's own cookie pins a client for `duration`.
    LbCookie { duration: Duration },
    /// The load balancer pins a client once the target sets the application's cookie.
    AppCookie {
        cookie_name: String,
        duration: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub protocol: Protocol,
    pub targets: Vec<TargetConfig>,
    pub health_check: HealthCheckConfig,
    pub stickiness: Option<Stickiness>,
    pub deregistration_delay: Duration,
    pub algorithm: Algorithm,
    /// ELB's `HealthCheckEnabled`. When false no checks run: a target that is not `unused` is
    /// healthy (reason `Target.HealthCheckDisabled`) from the moment it is configured and takes
    /// traffic at once, for a caller that knows better than a check which target is right (the
    /// writer endpoint of a database cluster). Such a target stays healthy even if it refuses
    /// connections (a TCP connection then goes to the next target, or is closed). Turning
    /// checks back on starts a kept target over, as `initial`, until its first check passes.
    pub health_check_enabled: bool,
    /// NLB's `deregistration_delay.connection_termination.enabled`. When true, once a removed
    /// target's `deregistration_delay` has passed (at once for a delay of 0) every TCP
    /// connection a TCP listener still relays to it is closed, the client's side and the
    /// target's; when false such connections run to their end. HTTP listeners do not honour
    /// it yet: their requests to a removed target are left to finish.
    pub connection_termination: bool,
}

/// A registered target, as the agent resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    /// The instance's name, or empty for an ip target.
    pub instance: String,
    /// host:port traffic goes to; empty when the target cannot take traffic (see `unused`).
    pub address: String,
    /// host:port the health checks go to (the traffic port unless the check names another).
    pub check_address: String,
    /// Set when the target is registered but cannot be used (its instance is stopped, not
    /// placed, has no such port): the ELB reason code and a description.
    pub unused: Option<(String, String)>,
}

impl TargetConfig {
    /// The target's identity across configurations: a target that moves is a new target.
    pub fn key(&self) -> String {
        if self.instance.is_empty() {
            self.address.clone()
        } else {
            format!("{}@{}", self.instance, self.address)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub protocol: Protocol,
    /// HTTP checks only.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            protocol: Protocol::Http,
            path: "/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            matcher: Matcher::default(),
        }
    }
}

/// The HTTP codes a health check accepts: "200", "200,202", "200-399".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Default for Matcher {
    fn default() -> Self {
        Matcher(vec![(200, 200)])
    }
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let code = |c: &str| {
                c.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("{c:?} is not an HTTP status code"))
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("{part:?} is an empty range"));
            }
            ranges.push((lo, hi));
        }
        Ok(Matcher(ranges))
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_take_codes_lists_and_ranges() {
        let m = Matcher::parse("200,202, 300-399").unwrap();
        assert!(m.matches(200) && m.matches(202) && m.matches(301) && m.matches(399));
        assert!(!m.matches(201) && !m.matches(400) && !m.matches(199));
        assert!(Matcher::parse("399-200").is_err());
        assert!(Matcher::parse("abc").is_err());
        assert!(Matcher::parse("700").is_err());
    }
}
