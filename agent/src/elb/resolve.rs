//! From the store's objects to what this node's data plane runs: the listeners of the load
//! balancers placed on this node, and the target groups they route to with every target turned
//! into an address. Pure: tested without a server.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use hanul_lb::config::{
    Action, Algorithm, Config, GroupConfig, HealthCheckConfig, ListenerConfig, Matcher, Protocol,
    RuleConfig, Stickiness, TargetConfig,
};
use hanul_proto::autoscaling::TARGET_GROUPS_ANNOTATION;
use hanul_proto::elb::{DEFAULT_DEREGISTRATION_DELAY, TRAFFIC_PORT, default_target_group};
use hanul_proto::instance::InstanceState;
use hanul_proto::v1::{Instance, LoadBalancer, Node, Target, TargetGroup, TargetGroupSpec};

/// What the resolution reads, by name.
#[derive(Debug, Default)]
pub struct World<'a> {
    pub load_balancers: Vec<&'a LoadBalancer>,
    pub target_groups: HashMap<&'a str, &'a TargetGroup>,
    pub instances: HashMap<&'a str, &'a Instance>,
    pub nodes: HashMap<&'a str, &'a Node>,
}

/// The load balancers placed on `node` (in their `status.nodes`) and not being deleted.
pub fn placed_here<'a>(world: &World<'a>, node: &str) -> Vec<&'a LoadBalancer> {
    world
        .load_balancers
        .iter()
        .copied()
        .filter(|lb| {
            lb.metadata.as_ref().is_some_and(|m| m.deleted_at.is_none())
                && lb
                    .status
                    .as_ref()
                    .is_some_and(|s| s.nodes.iter().any(|n| n.node == node))
        })
        .collect()
}

/// The target groups a load balancer's listeners name (default and rules), in order.
pub fn referenced_groups(lb: &LoadBalancer) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in lb.spec.iter().flat_map(|s| &s.listeners) {
        if !l.default_target_group.is_empty() {
            out.insert(l.default_target_group.clone());
        }
        for r in &l.rules {
            if !r.target_group.is_empty() {
                out.insert(r.target_group.clone());
            }
        }
    }
    out
}

/// This node's data plane configuration. `bind`: the address listeners listen on.
pub fn resolve(world: &World<'_>, node: &str, bind: IpAddr) -> Config {
    let mut config = Config::default();
    let mut groups = BTreeSet::new();
    for lb in placed_here(world, node) {
        let name = lb
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        for l in lb.spec.iter().flat_map(|s| &s.listeners) {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            config.listeners.push(ListenerConfig {
                load_balancer: name.clone(),
                bind,
                port,
                protocol: Protocol::parse(&l.protocol).unwrap_or(Protocol::Http),
                default_group: l.default_target_group.clone(),
                rules: l.rules.iter().map(rule).collect(),
            });
        }
        groups.extend(referenced_groups(lb));
    }
    for name in groups {
        if let Some(tg) = world.target_groups.get(name.as_str())
            && let Some(spec) = &tg.spec
        {
            config.groups.push(group(&name, spec, world));
        }
    }
    config
}

fn rule(r: &hanul_proto::v1::Rule) -> RuleConfig {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let action = if let Some(f) = &r.fixed_response {
        Action::Fixed {
            status: u16::try_from(f.status_code).unwrap_or(200),
            content_type: f.content_type.clone(),
            body: f.body.clone(),
        }
    } else if let Some(d) = &r.redirect {
        Action::Redirect {
            protocol: some(&d.protocol),
            host: some(&d.host),
            port: u16::try_from(d.port).ok().filter(|p| *p != 0),
            path: some(&d.path),
            status: if d.status_code == 301 { 301 } else { 302 },
        }
    } else {
        Action::Forward(r.target_group.clone())
    };
    RuleConfig {
        host: some(&r.host),
        path_prefix: some(&r.path_prefix),
        path_pattern: some(&r.path_pattern),
        action,
    }
}

fn group(name: &str, spec: &TargetGroupSpec, world: &World<'_>) -> GroupConfig {
    // The store's specs have their defaults already; filling them again on a copy keeps this
    // free of knowing them.
    let mut spec = spec.clone();
    default_target_group(&mut spec);
    let protocol = Protocol::parse(&spec.protocol).unwrap_or(Protocol::Http);
    let hc = spec.health_check.clone().unwrap_or_default();
    let health_check = HealthCheckConfig {
        protocol: Protocol::parse(&hc.protocol).unwrap_or(protocol),
        path: hc.path.clone(),
        interval: Duration::from_secs(hc.interval_seconds.into()),
        timeout: Duration::from_secs(hc.timeout_seconds.into()),
        healthy_threshold: hc.healthy_threshold,
        unhealthy_threshold: hc.unhealthy_threshold,
        matcher: Matcher::parse(&hc.matcher).unwrap_or_default(),
    };
    let stickiness = spec.stickiness.as_ref().filter(|s| s.enabled).map(|s| {
        let duration = Duration::from_secs(s.duration_seconds.into());
        if s.r#type == "app_cookie" {
            Stickiness::AppCookie {
                cookie_name: s.cookie_name.clone(),
                duration,
            }
        } else {
            Stickiness::LbCookie { duration }
        }
    });
    let check_port = hc.port.as_str();
    let mut targets: Vec<TargetConfig> = spec
        .targets
        .iter()
        .map(|t| target(t, &spec.port, check_port, world))
        .collect();
    // Instances an Auto Scaling group registered (by annotation), unless also listed.
    let mut registered: Vec<&str> = world
        .instances
        .iter()
        .filter(|(n, i)| {
            registered_with(i, name) && !spec.targets.iter().any(|t| t.instance == **n)
        })
        .map(|(n, _)| *n)
        .collect();
    registered.sort_unstable();
    for n in registered {
        let t = Target {
            instance: n.to_owned(),
            ..Default::default()
        };
        targets.push(target(&t, &spec.port, check_port, world));
    }
    GroupConfig {
        name: name.to_owned(),
        protocol,
        targets,
        health_check,
        stickiness,
        deregistration_delay: Duration::from_secs(
            spec.deregistration_delay_seconds
                .unwrap_or(DEFAULT_DEREGISTRATION_DELAY)
                .into(),
        ),
        algorithm: if spec.algorithm == "least_outstanding_requests" {
            Algorithm::LeastOutstandingRequests
        } else {
            Algorithm::RoundRobin
        },
        health_check_enabled: hc.enabled.unwrap_or(true),
        connection_termination: spec.connection_termination,
    }
}

/// Whether an Auto Scaling group registered `i` with `group` (see
/// [`TARGET_GROUPS_ANNOTATION`]).
pub fn registered_with(i: &Instance, group: &str) -> bool {
    i.metadata
        .as_ref()
        .and_then(|m| m.annotations.get(TARGET_GROUPS_ANNOTATION))
        .is_some_and(|v| v.split(',').any(|g| g.trim() == group))
}

fn unused(instance: &str, reason: &str, description: String) -> TargetConfig {
    TargetConfig {
        instance: instance.to_owned(),
        address: String::new(),
        check_address: String::new(),
        unused: Some((reason.to_owned(), description)),
    }
}

/// A target's traffic and check addresses. An ip target uses its own port (or the group's
/// number); an instance target the host port its agent gave the named port (a number is used
/// as is), on the instance's address.
fn target(t: &Target, group_port: &str, check_port: &str, world: &World<'_>) -> TargetConfig {
    if t.instance.is_empty() {
        let port = if t.port != 0 {
            t.port
        } else {
            group_port.parse().unwrap_or(0)
        };
        let host = host_port(&t.ip, port);
        let check = match check_port {
            TRAFFIC_PORT => host.clone(),
            p => p
                .parse::<u32>()
                .map_or(host.clone(), |p| host_port(&t.ip, p)),
        };
        return TargetConfig {
            instance: String::new(),
            address: host,
            check_address: check,
            unused: None,
        };
    }
    let name = t.instance.as_str();
    let Some(instance) = world.instances.get(name) else {
        return unused(
            name,
            "Target.InvalidState",
            format!("Instance {name} does not exist"),
        );
    };
    let status = instance.status.clone().unwrap_or_default();
    if status.state != InstanceState::Running.as_str() {
        let state = if status.state.is_empty() {
            "pending"
        } else {
            status.state.as_str()
        };
        return unused(
            name,
            "Target.InvalidState",
            format!("Target is in the {state} state"),
        );
    }
    let ip = if !status.private_ip.is_empty() {
        status.private_ip.clone()
    } else {
        match world
            .nodes
            .get(status.node.as_str())
            .and_then(|n| n.spec.as_ref())
        {
            Some(spec) => spec.address.clone(),
            None => {
                return unused(
                    name,
                    "Target.InvalidState",
                    format!("The node of instance {name} is not known"),
                );
            }
        }
    };
    let port_of = |port: &str| match port.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => status.ports.get(port).copied(),
    };
    let Some(port) = port_of(group_port) else {
        return unused(
            name,
            "Target.InvalidState",
            format!("Instance {name} has no port named {group_port:?}"),
        );
    };
    let address = host_port(&ip, port);
    let check_address = match check_port {
        TRAFFIC_PORT => address.clone(),
        p => port_of(p).map_or(address.clone(), |p| host_port(&ip, p)),
    };
    TargetConfig {
        instance: name.to_owned(),
        address,
        check_address,
        unused: None,
    }
}

fn host_port(ip: &str, port: u32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{
        InstanceStatus, Listener, LoadBalancerNode, LoadBalancerSpec, LoadBalancerStatus,
        ObjectMeta, Rule,
    };

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        })
    }

    fn lb(name: &str, nodes: &[&str], listeners: Vec<Listener>) -> LoadBalancer {
        LoadBalancer {
            metadata: meta(name),
            spec: Some(LoadBalancerSpec {
                r#type: "application".into(),
                zones: vec![],
                listeners,
            }),
            status: Some(LoadBalancerStatus {
                nodes: nodes
                    .iter()
                    .map(|n| LoadBalancerNode {
                        node: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn running(name: &str, ports: &[(&str, u32)]) -> Instance {
        Instance {
            metadata: meta(name),
            spec: None,
            status: Some(InstanceStatus {
                state: "running".into(),
                node: "n1".into(),
                private_ip: "10.0.0.5".into(),
                ports: ports.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_load_balancers_placed_here_are_run_with_their_groups() {
        let here = lb(
            "web",
            &["n1"],
            vec![Listener {
                port: 80,
                protocol: "HTTP".into(),
                default_target_group: "web".into(),
                rules: vec![Rule {
                    path_prefix: "/api".into(),
                    target_group: "api".into(),
                    ..Default::default()
                }],
            }],
        );
        let elsewhere = lb(
            "other",
            &["n2"],
            vec![Listener {
                port: 81,
                protocol: "HTTP".into(),
                default_target_group: "other".into(),
                rules: vec![],
            }],
        );
        let tg = |port: &str, targets: Vec<Target>| TargetGroup {
            metadata: None,
            spec: Some(TargetGroupSpec {
                protocol: "HTTP".into(),
                port: port.into(),
                targets,
                ..Default::default()
            }),
            status: None,
        };
        let web = tg(
            "http",
            vec![
                Target {
                    instance: "web-1".into(),
                    ..Default::default()
                },
                Target {
                    instance: "web-2".into(),
                    ..Default::default()
                },
                Target {
                    instance: "gone".into(),
                    ..Default::default()
                },
                Target {
                    ip: "192.168.1.20".into(),
                    port: 8080,
                    ..Default::default()
                },
            ],
        );
        let api = tg(
            "9000",
            vec![Target {
                ip: "192.168.1.21".into(),
                ..Default::default()
            }],
        );
        let other = tg("80", vec![]);
        let web1 = running("web-1", &[("http", 30001)]);
        let mut web2 = running("web-2", &[("http", 30002)]);
        web2.status.as_mut().unwrap().state = "stopped".into();
        let world = World {
            load_balancers: vec![&here, &elsewhere],
            target_groups: [("web", &web), ("api", &api), ("other", &other)].into(),
            instances: [("web-1", &web1), ("web-2", &web2)].into(),
            nodes: HashMap::new(),
        };
        let config = resolve(&world, "n1", "127.0.0.1".parse().unwrap());
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].port, 80);
        assert_eq!(
            config.listeners[0].rules[0].action,
            Action::Forward("api".into())
        );
        let names: Vec<&str> = config.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(config.groups[0].targets[0].address, "192.168.1.21:9000");
        let web = &config.groups[1].targets;
        assert_eq!(
            (web[0].address.as_str(), &web[0].unused),
            ("10.0.0.5:30001", &None)
        );
        assert_eq!(
            web[1].unused.as_ref().unwrap().1,
            "Target is in the stopped state"
        );
        assert_eq!(
            web[2].unused.as_ref().unwrap().1,
            "Instance gone does not exist"
        );
        assert_eq!(web[3].address, "192.168.1.20:8080");
    }

    #[test]
    fn instances_an_auto_scaling_group_registered_are_targets_once() {
        let tg = TargetGroup {
            metadata: meta("web"),
            spec: Some(TargetGroupSpec {
                protocol: "HTTP".into(),
                port: "http".into(),
                targets: vec![Target {
                    instance: "web-1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let annotated = |name: &str, port: u32, groups: &str| {
            let mut i = running(name, &[("http", port)]);
            i.metadata
                .as_mut()
                .unwrap()
                .annotations
                .insert(TARGET_GROUPS_ANNOTATION.into(), groups.into());
            i
        };
        // web-1 is both listed and registered: it is one target.
        let web1 = annotated("web-1", 30001, "web");
        let web2 = annotated("web-2", 30002, "api, web");
        let web3 = annotated("web-3", 30003, "api");
        let world = World {
            target_groups: [("web", &tg)].into(),
            instances: [("web-1", &web1), ("web-2", &web2), ("web-3", &web3)].into(),
            ..Default::default()
        };
        let g = group("web", tg.spec.as_ref().unwrap(), &world);
        let addresses: Vec<&str> = g.targets.iter().map(|t| t.address.as_str()).collect();
        assert_eq!(addresses, ["10.0.0.5:30001", "10.0.0.5:30002"]);
        assert!(registered_with(&web2, "api") && !registered_with(&web1, "api"));
    }

    #[test]
    fn checks_are_on_and_connections_left_alone_unless_the_spec_says_otherwise() {
        let world = World::default();
        let mut spec = TargetGroupSpec {
            protocol: "TCP".into(),
            port: "5432".into(),
            ..Default::default()
        };
        let g = group("db", &spec, &world);
        assert!(g.health_check_enabled && !g.connection_termination);
        spec.health_check = Some(hanul_proto::v1::HealthCheck {
            enabled: Some(false),
            ..Default::default()
        });
        spec.connection_termination = true;
        let g = group("db", &spec, &world);
        assert!(!g.health_check_enabled && g.connection_termination);
    }
}
