//! Host ports for instance ports: taken from the node's range, kept across stops and agent
//! restarts (they live in `status.ports`), and checked free on the host before they are given.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// The node's `--port-range`, `LOW-HIGH` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// Reads `LOW-HIGH` (1024 ≤ LOW ≤ HIGH ≤ 65535).
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad = || format!("port range {s:?}: expected LOW-HIGH, as 30000-32767");
        let (low, high) = s.split_once('-').ok_or_else(bad)?;
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low < 1024 || low > high {
            return Err(format!(
                "port range {s:?}: LOW must be at least 1024 and not above HIGH"
            ));
        }
        Ok(PortRange { low, high })
    }

    pub fn contains(&self, port: u32) -> bool {
        (u32::from(self.low)..=u32::from(self.high)).contains(&port)
    }
}

/// Gives each named port a host port: one it already had (if still in the range and not taken
/// by another instance), else the first free one in the range that `is_free` accepts.
/// `wanted` is `(name, protocol)`; `kept` the instance's current `status.ports`; `taken` the
/// host ports of every other instance on the node. `None` when the range is exhausted.
pub fn assign(
    wanted: &[(String, String)],
    kept: &BTreeMap<String, u32>,
    taken: &HashSet<u32>,
    range: PortRange,
    is_free: impl Fn(u16, &str) -> bool,
) -> Option<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    let mut used: HashSet<u32> = taken.clone();
    for (name, _) in wanted {
        if let Some(&p) = kept.get(name)
            && range.contains(p)
            && !used.contains(&p)
        {
            used.insert(p);
            out.insert(name.clone(), p);
        }
    }
    let mut candidates = range.low..=range.high;
    for (name, protocol) in wanted {
        if out.contains_key(name) {
            continue;
        }
        let port = candidates.find(|&p| !used.contains(&u32::from(p)) && is_free(p, protocol))?;
        used.insert(u32::from(port));
        out.insert(name.clone(), u32::from(port));
    }
    Some(out)
}

/// Whether nothing on this host listens on `port` (tcp) or holds it (udp).
pub fn host_port_is_free(port: u16, protocol: &str) -> bool {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    match protocol {
        "udp" => UdpSocket::bind(addr).is_ok(),
        _ => TcpListener::bind(addr).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "tcp".to_string()))
            .collect()
    }

    #[test]
    fn ranges_are_read_and_checked() {
        assert_eq!(
            PortRange::parse("30000-30010"),
            Ok(PortRange {
                low: 30000,
                high: 30010
            })
        );
        assert!(PortRange::parse("30010-30000").is_err());
        assert!(PortRange::parse("80-90").unwrap_err().contains("1024"));
        assert!(PortRange::parse("abc").is_err());
    }

    #[test]
    fn ports_are_kept_skip_taken_and_busy_ones_and_run_out() {
        let range = PortRange::parse("30000-30003").unwrap();
        let taken: HashSet<u32> = [30000].into();
        let kept: BTreeMap<String, u32> = [("admin".to_string(), 30003)].into();
        let busy = |p: u16, _: &str| p != 30001;
        let got = assign(&wanted(&["http", "admin"]), &kept, &taken, range, busy).unwrap();
        assert_eq!((got["http"], got["admin"]), (30002, 30003));
        // 30000 taken, 30001 busy, 30002 and 30003 given: nothing left for a third port.
        assert_eq!(
            assign(
                &wanted(&["http", "admin", "metrics"]),
                &kept,
                &taken,
                range,
                busy
            ),
            None
        );
    }

    #[test]
    fn a_kept_port_taken_by_another_instance_is_replaced() {
        let range = PortRange::parse("30000-30009").unwrap();
        let kept: BTreeMap<String, u32> = [("http".to_string(), 30005)].into();
        let taken: HashSet<u32> = [30005].into();
        let got = assign(&wanted(&["http"]), &kept, &taken, range, |_, _| true).unwrap();
        assert_eq!(got["http"], 30000);
    }
}
