//! The DB clusters' endpoints run by this node: for every cluster whose
//! `status.endpoints.node` is this node, a writer listener on `spec.port` and a reader
//! listener on `spec.port + 1`, TCP proxies of the load balancer's data plane. Pure: the
//! configuration from the store's objects, tested without a server. The kernel path for this
//! host's own clients ([`super::kernel`]) is rendered from the same configuration, so the
//! targets are decided here only.
//!
//! The writer group has at most one target, and only the one the protocol allows: the member
//! named `status.writer`, reporting the role writer at `status.epoch`, while no failover is
//! under way and no member reports a newer epoch. Its group has no health checks (the
//! protocol knows better than a check which member takes writes) and closes the connections
//! to a removed target at once, so that no client keeps talking to a former writer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use hanul_lb::config::{
    Algorithm, Config, GroupConfig, HealthCheckConfig, ListenerConfig, Protocol, TargetConfig,
};
use hanul_proto::db::{DEFAULT_LEASE_SECONDS, DEFAULT_PORT, ROLE_WRITER, STATE_AVAILABLE};
use hanul_proto::v1::{DbCluster, DbInstance};

/// The data plane's name of a cluster's endpoints (listeners' "load balancer").
fn endpoint_name(cluster: &str) -> String {
    format!("db/{cluster}")
}

/// The clusters' and members' names and objects.
#[derive(Debug, Default)]
pub struct World<'a> {
    pub clusters: Vec<(&'a str, &'a DbCluster)>,
    pub members: Vec<(&'a str, &'a DbInstance)>,
}

/// The writer endpoint's one target, if the protocol allows one: `(name, address)`.
pub fn writer_target(world: &World<'_>, cluster: &str, c: &DbCluster) -> Option<(String, String)> {
    let s = c.status.as_ref()?;
    if s.failover.is_some() || s.writer.is_empty() || s.epoch == 0 {
        return None;
    }
    let members = members_of(world, cluster);
    if members
        .iter()
        .any(|(_, m)| m.status.as_ref().is_some_and(|ms| ms.epoch > s.epoch))
    {
        return None;
    }
    members.iter().find_map(|(name, m)| {
        let ms = m.status.as_ref()?;
        (*name == s.writer
            && ms.role == ROLE_WRITER
            && ms.epoch == s.epoch
            && !ms.address.is_empty())
        .then(|| (name.to_string(), ms.address.clone()))
    })
}

/// The reader endpoint's targets: the available, streaming, readable members that are not the
/// writer; the writer when there are none.
pub fn reader_targets(world: &World<'_>, cluster: &str, c: &DbCluster) -> Vec<(String, String)> {
    let writer = c.status.as_ref().map(|s| s.writer.as_str()).unwrap_or("");
    let mut readers: Vec<(String, String)> = members_of(world, cluster)
        .iter()
        .filter_map(|(name, m)| {
            let ms = m.status.as_ref()?;
            let readable = m.spec.as_ref().is_some_and(|s| s.readable);
            (*name != writer
                && readable
                && ms.state == STATE_AVAILABLE
                && ms.streaming
                && ms.role != ROLE_WRITER
                && !ms.address.is_empty())
            .then(|| (name.to_string(), ms.address.clone()))
        })
        .collect();
    readers.sort();
    if readers.is_empty() {
        return writer_target(world, cluster, c).into_iter().collect();
    }
    readers
}

fn members_of<'a>(world: &World<'a>, cluster: &str) -> Vec<(&'a str, &'a DbInstance)> {
    world
        .members
        .iter()
        .filter(|(_, m)| m.spec.as_ref().is_some_and(|s| s.cluster == cluster))
        .copied()
        .collect()
}

fn group(name: String, targets: Vec<(String, String)>) -> GroupConfig {
    GroupConfig {
        name,
        protocol: Protocol::Tcp,
        targets: targets
            .into_iter()
            .map(|(instance, address)| TargetConfig {
                instance,
                check_address: address.clone(),
                address,
                unused: None,
            })
            .collect(),
        health_check: HealthCheckConfig {
            protocol: Protocol::Tcp,
            ..HealthCheckConfig::default()
        },
        stickiness: None,
        deregistration_delay: Duration::ZERO,
        algorithm: Algorithm::RoundRobin,
        health_check_enabled: false,
        connection_termination: true,
    }
}

/// The writer's lease of each cluster, by the name of its endpoints' load balancer (the
/// listeners' `load_balancer` in [`resolve`]'s configuration).
pub fn leases(world: &World<'_>) -> HashMap<String, Duration> {
    world
        .clusters
        .iter()
        .map(|(name, c)| {
            let seconds = c
                .spec
                .as_ref()
                .and_then(|s| s.failover.as_ref())
                .and_then(|f| f.lease_seconds)
                .unwrap_or(DEFAULT_LEASE_SECONDS);
            (endpoint_name(name), Duration::from_secs(seconds.into()))
        })
        .collect()
}

/// This node's endpoints. `bind`: the address they listen on.
pub fn resolve(world: &World<'_>, node: &str, bind: IpAddr) -> Config {
    let mut config = Config::default();
    let mut seen = HashMap::new();
    for (name, c) in &world.clusters {
        let here = c
            .status
            .as_ref()
            .and_then(|s| s.endpoints.as_ref())
            .is_some_and(|e| e.node == node);
        let deleting = c.metadata.as_ref().is_some_and(|m| m.deleted_at.is_some());
        if !here || deleting {
            continue;
        }
        let port = c.spec.as_ref().and_then(|s| s.port).unwrap_or(DEFAULT_PORT);
        let (Ok(writer_port), Ok(reader_port)) = (u16::try_from(port), u16::try_from(port + 1))
        else {
            continue;
        };
        // Two clusters on one port: the first (by name) keeps it.
        if seen.insert(writer_port, *name).is_some() || seen.insert(reader_port, *name).is_some() {
            continue;
        }
        let lb = endpoint_name(name);
        for (suffix, port, targets) in [
            (
                "writer",
                writer_port,
                writer_target(world, name, c).into_iter().collect(),
            ),
            ("reader", reader_port, reader_targets(world, name, c)),
        ] {
            let group_name = format!("{lb}/{suffix}");
            config.listeners.push(ListenerConfig {
                load_balancer: lb.clone(),
                bind,
                port,
                protocol: Protocol::Tcp,
                default_group: group_name.clone(),
                rules: vec![],
            });
            config.groups.push(group(group_name, targets));
        }
    }
    config
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hanul_proto::v1::{
        DbClusterSpec, DbClusterStatus, DbEndpoints, DbFailover, DbInstanceSpec, DbInstanceStatus,
    };
    use std::net::Ipv4Addr;

    /// A cluster `db` on port 6432 whose endpoints are on node `n1`.
    pub(crate) fn cluster(writer: &str, epoch: u64) -> DbCluster {
        DbCluster {
            spec: Some(DbClusterSpec {
                port: Some(6432),
                ..Default::default()
            }),
            status: Some(DbClusterStatus {
                epoch,
                writer: writer.into(),
                endpoints: Some(DbEndpoints {
                    node: "n1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An available, readable member of `db` at 10.0.0.1:`port`.
    pub(crate) fn member(role: &str, epoch: u64, port: u32, streaming: bool) -> DbInstance {
        DbInstance {
            spec: Some(DbInstanceSpec {
                cluster: "db".into(),
                readable: true,
                ..Default::default()
            }),
            status: Some(DbInstanceStatus {
                state: STATE_AVAILABLE.into(),
                role: role.into(),
                epoch,
                address: format!("10.0.0.1:{port}"),
                streaming,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn targets(config: &Config, group: &str) -> Vec<String> {
        config
            .groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.targets.iter().map(|t| t.instance.clone()).collect())
            .unwrap_or_default()
    }

    const BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn the_writer_endpoint_names_exactly_the_writer_of_the_epoch() {
        let c = cluster("db-1", 2);
        let m1 = member(ROLE_WRITER, 2, 30001, false);
        let m2 = member("standby", 2, 30002, true);
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1), ("db-2", &m2)],
        };
        let config = resolve(&world, "n1", BIND);
        assert_eq!(
            config.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
            [6432, 6433]
        );
        assert_eq!(targets(&config, "db/db/writer"), ["db-1"]);
        assert_eq!(targets(&config, "db/db/reader"), ["db-2"]);
        let g = &config.groups[0];
        assert!(!g.health_check_enabled && g.connection_termination);
        assert_eq!(g.deregistration_delay, Duration::ZERO);
        // Not on another node.
        assert!(resolve(&world, "n2", BIND).listeners.is_empty());
    }

    #[test]
    fn no_writer_during_a_failover_or_when_a_member_reports_a_newer_epoch() {
        let mut c = cluster("db-1", 2);
        let m1 = member(ROLE_WRITER, 2, 30001, false);
        let m2 = member(ROLE_WRITER, 3, 30002, false);
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1), ("db-2", &m2)],
        };
        assert!(targets(&resolve(&world, "n1", BIND), "db/db/writer").is_empty());
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1)],
        };
        assert_eq!(
            targets(&resolve(&world, "n1", BIND), "db/db/writer"),
            ["db-1"]
        );
        c.status.as_mut().unwrap().failover = Some(DbFailover {
            epoch: 3,
            ..Default::default()
        });
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1)],
        };
        assert!(targets(&resolve(&world, "n1", BIND), "db/db/writer").is_empty());
        // A writer that reports an older epoch is not the writer of this one.
        let c = cluster("db-1", 3);
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1)],
        };
        assert!(targets(&resolve(&world, "n1", BIND), "db/db/writer").is_empty());
    }

    #[test]
    fn readers_are_the_streaming_readable_standbys_else_the_writer() {
        let c = cluster("db-1", 1);
        let m1 = member(ROLE_WRITER, 1, 30001, false);
        let lagging = member("standby", 1, 30002, false);
        let mut hidden = member("standby", 1, 30003, true);
        hidden.spec.as_mut().unwrap().readable = false;
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1), ("db-2", &lagging), ("db-3", &hidden)],
        };
        assert_eq!(
            targets(&resolve(&world, "n1", BIND), "db/db/reader"),
            ["db-1"]
        );
        let streaming = member("standby", 1, 30004, true);
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1), ("db-4", &streaming)],
        };
        assert_eq!(
            targets(&resolve(&world, "n1", BIND), "db/db/reader"),
            ["db-4"]
        );
    }
}
