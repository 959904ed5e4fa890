//! Runs the data plane alone, for profiling: `proxy LISTEN_PORT TARGET_ADDR...` forwards HTTP
//! on 127.0.0.1:LISTEN_PORT round robin to the targets (TCP health checks every 5 s).

use std::time::Duration;

use hanul_lb::DataPlane;
use hanul_lb::config::*;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().expect("LISTEN_PORT").parse().expect("a port");
    let targets = args
        .map(|a| TargetConfig {
            instance: String::new(),
            address: a.clone(),
            check_address: a,
            unused: None,
        })
        .collect();
    let (plane, _events) = DataPlane::new();
    let states = plane.apply(Config {
        listeners: vec![ListenerConfig {
            load_balancer: "proxy".into(),
            bind: "127.0.0.1".parse().unwrap(),
            port,
            protocol: Protocol::Http,
            default_group: "targets".into(),
            rules: Vec::new(),
        }],
        groups: vec![GroupConfig {
            name: "targets".into(),
            protocol: Protocol::Http,
            targets,
            health_check: HealthCheckConfig {
                protocol: Protocol::Tcp,
                interval: Duration::from_secs(5),
                ..HealthCheckConfig::default()
            },
            stickiness: None,
            deregistration_delay: Duration::from_secs(1),
            algorithm: Algorithm::RoundRobin,
            health_check_enabled: true,
            connection_termination: false,
        }],
    });
    eprintln!("{states:?}");
    tokio::signal::ctrl_c().await.unwrap();
}
