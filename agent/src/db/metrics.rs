//! The DB members' metrics on the agent's `/metrics` (RDS's CloudWatch metrics, in the
//! Prometheus text format): connections, transactions, replication lag and storage, per
//! member, from each member's latest observation; and which path the node's DB endpoints
//! give local clients (the kernel's or the proxy's).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use hanul_db::Observation;

/// One member's latest figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub cluster: String,
    /// writer or standby.
    pub role: String,
    pub connections: u64,
    pub commits: u64,
    pub rollbacks: u64,
    pub storage_bytes: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
}

impl Sample {
    pub fn new(cluster: &str, o: &Observation, lag_bytes: u64) -> Sample {
        Sample {
            cluster: cluster.to_string(),
            role: if o.in_recovery { "standby" } else { "writer" }.into(),
            connections: o.connections,
            commits: o.commits,
            rollbacks: o.rollbacks,
            storage_bytes: o.storage_bytes,
            lag_bytes,
            lag_seconds: o.lag_seconds,
        }
    }
}

/// The members of this node, by name.
#[derive(Debug, Default)]
pub struct Metrics {
    members: Mutex<BTreeMap<String, Sample>>,
    /// 0: not known yet, 1: the proxy alone, 2: the kernel path for local clients.
    kernel_path: AtomicU8,
    /// Endpoints whose local clients the kernel steers now.
    kernel_steered: AtomicU64,
    nft_failures: AtomicU64,
}

impl Metrics {
    pub fn set(&self, member: &str, sample: Sample) {
        self.lock().insert(member.to_string(), sample);
    }

    /// The member no longer runs here.
    pub fn forget(&self, member: &str) {
        self.lock().remove(member);
    }

    /// Whether the DB endpoints' local clients take the kernel path now.
    pub fn set_kernel_path(&self, on: bool) {
        self.kernel_path
            .store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// How many endpoints the kernel's rules in place steer.
    pub fn set_kernel_steered(&self, endpoints: usize) {
        self.kernel_steered
            .store(endpoints as u64, Ordering::Relaxed);
    }

    /// An nft script of the kernel path failed.
    pub fn nft_failed(&self) {
        self.nft_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Sample>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let kernel_path = self.kernel_path.load(Ordering::Relaxed);
        if kernel_path != 0 {
            let _ = writeln!(
                out,
                "# HELP hanul_db_endpoints_kernel_path 1 when local clients of this node's DB endpoints take the kernel path (nftables DNAT), 0 when the userspace proxy serves every client.\n# TYPE hanul_db_endpoints_kernel_path gauge\nhanul_db_endpoints_kernel_path {}",
                u8::from(kernel_path == 2)
            );
            let _ = writeln!(
                out,
                "# HELP hanul_db_endpoints_kernel_steered DB endpoints whose local clients the kernel's rules in place steer (the others' go through the proxy).\n# TYPE hanul_db_endpoints_kernel_steered gauge\nhanul_db_endpoints_kernel_steered {}",
                self.kernel_steered.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "# HELP hanul_db_endpoints_nft_failures_total nft scripts of the DB endpoints' kernel path that failed.\n# TYPE hanul_db_endpoints_nft_failures_total counter\nhanul_db_endpoints_nft_failures_total {}",
                self.nft_failures.load(Ordering::Relaxed)
            );
        }
        let members = self.lock();
        if members.is_empty() {
            return;
        }
        type Get = fn(&Sample) -> f64;
        let families: [(&str, &str, &str, Get); 6] = [
            (
                "hanul_db_connections",
                "gauge",
                "Client connections (RDS DatabaseConnections).",
                |s| s.connections as f64,
            ),
            (
                "hanul_db_commits_total",
                "counter",
                "Transactions committed since the member's statistics began.",
                |s| s.commits as f64,
            ),
            (
                "hanul_db_rollbacks_total",
                "counter",
                "Transactions rolled back since the member's statistics began.",
                |s| s.rollbacks as f64,
            ),
            (
                "hanul_db_storage_bytes",
                "gauge",
                "The member's databases on disk (RDS's allocated storage used).",
                |s| s.storage_bytes as f64,
            ),
            (
                "hanul_db_replication_lag_bytes",
                "gauge",
                "WAL a standby has not replayed yet, as the writer reports it.",
                |s| s.lag_bytes as f64,
            ),
            (
                "hanul_db_replication_lag_seconds",
                "gauge",
                "How far behind the writer a standby's replay is (RDS ReplicaLag).",
                |s| s.lag_seconds,
            ),
        ];
        for (name, kind, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (member, s) in members.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",member=\"{member}\",role=\"{}\"}} {}",
                    s.cluster,
                    s.role,
                    get(s)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(out, "", "nothing without members");
        let o = Observation {
            in_recovery: true,
            connections: 3,
            commits: 120,
            rollbacks: 2,
            storage_bytes: 7_654_321,
            lag_seconds: 0.25,
            ..Default::default()
        };
        m.set("orders-2", Sample::new("orders", &o, 4096));
        m.render(&mut out);
        for line in [
            "# TYPE hanul_db_connections gauge",
            "hanul_db_connections{cluster=\"orders\",member=\"orders-2\",role=\"standby\"} 3",
            "hanul_db_commits_total{cluster=\"orders\",member=\"orders-2\",role=\"standby\"} 120",
            "hanul_db_storage_bytes{cluster=\"orders\",member=\"orders-2\",role=\"standby\"} 7654321",
            "hanul_db_replication_lag_bytes{cluster=\"orders\",member=\"orders-2\",role=\"standby\"} 4096",
            "hanul_db_replication_lag_seconds{cluster=\"orders\",member=\"orders-2\",role=\"standby\"} 0.25",
        ] {
            assert!(out.contains(line), "{line} missing in:\n{out}");
        }
        m.forget("orders-2");
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(out, "");
    }

    #[test]
    fn the_endpoints_path_renders_once_known() {
        let m = Metrics::default();
        m.set_kernel_path(true);
        m.set_kernel_steered(2);
        m.nft_failed();
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("\nhanul_db_endpoints_kernel_path 1\n"),
            "{out}"
        );
        assert!(
            out.contains("\nhanul_db_endpoints_nft_failures_total 1\n"),
            "{out}"
        );
        m.set_kernel_path(false);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("\nhanul_db_endpoints_kernel_path 0\n"),
            "{out}"
        );
    }
}
