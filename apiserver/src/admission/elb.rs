//! Rules for `TargetGroup` and `LoadBalancer`: ELB's defaults and limits. References between
//! objects (a listener's target group, a target's instance) are checked by the load balancer
//! controller, which reports them in status: they may be created in any order.

use super::{Errors, is_dns_name};
use hanul_proto::elb::TRAFFIC_PORT;
use hanul_proto::v1::{LoadBalancer, LoadBalancerSpec, Rule, Stickiness, TargetGroup};
use std::collections::HashSet;
use std::net::IpAddr;

const PROTOCOLS: &[&str] = &["HTTP", "TCP"];
const ALGORITHMS: &[&str] = &["round_robin", "least_outstanding_requests"];
const STICKINESS_TYPES: &[&str] = &["lb_cookie", "app_cookie"];
const LB_TYPES: &[&str] = &["application", "network"];
/// A port given as a name or a number: a number must be 1..65535, a name a port name.
fn check_port(field: &str, port: &str, errs: &mut Errors) {
    match port.parse::<u32>() {
        Ok(1..=65535) => {}
        Ok(_) => errs.add(field, format!("{port} is not a port: use 1..65535")),
        Err(_) if is_dns_name(port, 15) && !port.contains('.') => {}
        Err(_) => errs.add(
            field,
            format!("{port:?} is neither a port number nor an instance's port name"),
        ),
    }
}

/// `200`, `200,202`, `200-399`: codes 100..599.
fn check_matcher(field: &str, matcher: &str, errs: &mut Errors) {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let ok = !matcher.is_empty()
        && matcher.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => matches!((code(a), code(b)), (Some(a), Some(b)) if a <= b),
            None => code(part).is_some(),
        });
    if !ok {
        errs.add(
            field,
            format!(
                "{matcher:?} is not a list of HTTP codes (100..599) such as 200, 200,202 or 200-399"
            ),
        );
    }
}

pub(super) fn validate_target_group(
    tg: &TargetGroup,
    old: Option<&TargetGroup>,
    errs: &mut Errors,
) {
    let Some(spec) = &tg.spec else {
        return errs.add("spec", "required");
    };
    errs.one_of("spec.protocol", &spec.protocol, PROTOCOLS);
    errs.one_of("spec.algorithm", &spec.algorithm, ALGORITHMS);
    if spec.port.is_empty() {
        errs.add(
            "spec.port",
            "required: an instance's port name (http) or a number",
        );
    } else {
        check_port("spec.port", &spec.port, errs);
    }
    if spec.deregistration_delay_seconds.is_some_and(|d| d > 3600) {
        errs.add("spec.deregistrationDelaySeconds", "at most 3600");
    }
    let numeric_port = spec.port.parse::<u32>().is_ok();
    let mut seen = HashSet::new();
    for (n, t) in spec.targets.iter().enumerate() {
        let field = format!("spec.targets[{n}]");
        match (t.instance.is_empty(), t.ip.is_empty()) {
            (false, false) | (true, true) => errs.add(
                &field,
                "give exactly one of instance (a hanul instance) or ip (any address)",
            ),
            (false, true) => {
                if t.port != 0 {
                    errs.add(
                        format!("{field}.port"),
                        "instance targets use the group's port; port is for ip targets",
                    );
                }
            }
            (true, false) => {
                if t.ip.parse::<IpAddr>().is_err() {
                    errs.add(
                        format!("{field}.ip"),
                        format!("{:?} is not an IP address", t.ip),
                    );
                }
                if t.port > 65535 || (t.port == 0 && !numeric_port) {
                    errs.add(
                        format!("{field}.port"),
                        "an ip target needs a port (1..65535) unless the group's port is a number",
                    );
                }
            }
        }
        if !seen.insert((t.instance.as_str(), t.ip.as_str(), t.port)) {
            errs.add(&field, "registered twice");
        }
    }
    if let Some(hc) = &spec.health_check {
        errs.one_of("spec.healthCheck.protocol", &hc.protocol, PROTOCOLS);
        if hc.port != TRAFFIC_PORT {
            check_port("spec.healthCheck.port", &hc.port, errs);
        }
        if hc.protocol == "HTTP" {
            if !hc.path.starts_with('/') {
                errs.add("spec.healthCheck.path", "must start with '/'");
            }
            check_matcher("spec.healthCheck.matcher", &hc.matcher, errs);
        }
        if !(1..=300).contains(&hc.interval_seconds) {
            errs.add("spec.healthCheck.intervalSeconds", "1..300");
        }
        if !(1..=120).contains(&hc.timeout_seconds) {
            errs.add("spec.healthCheck.timeoutSeconds", "1..120");
        } else if hc.timeout_seconds > hc.interval_seconds {
            errs.add(
                "spec.healthCheck.timeoutSeconds",
                "must not be longer than intervalSeconds",
            );
        }
        for (field, v) in [
            ("spec.healthCheck.healthyThreshold", hc.healthy_threshold),
            (
                "spec.healthCheck.unhealthyThreshold",
                hc.unhealthy_threshold,
            ),
        ] {
            if !(1..=10).contains(&v) {
                errs.add(field, "1..10");
            }
        }
    }
    if let Some(st) = &spec.stickiness {
        check_stickiness(st, &spec.protocol, errs);
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.protocol", &old.protocol, &spec.protocol);
    }
}

fn check_stickiness(st: &Stickiness, protocol: &str, errs: &mut Errors) {
    if !st.enabled {
        return;
    }
    if protocol != "HTTP" {
        errs.add("spec.stickiness", "cookies need an HTTP target group");
    }
    errs.one_of("spec.stickiness.type", &st.r#type, STICKINESS_TYPES);
    if !(1..=604_800).contains(&st.duration_seconds) {
        errs.add("spec.stickiness.durationSeconds", "1..604800 (seven days)");
    }
    if st.r#type == "app_cookie" && st.cookie_name.is_empty() {
        errs.add(
            "spec.stickiness.cookieName",
            "required for app_cookie: the application's cookie",
        );
    }
}

pub(super) fn default_load_balancer(spec: &mut LoadBalancerSpec) {
    if spec.r#type.is_empty() {
        spec.r#type = "application".into();
    }
    let protocol = if spec.r#type == "network" {
        "TCP"
    } else {
        "HTTP"
    };
    for l in &mut spec.listeners {
        if l.protocol.is_empty() {
            l.protocol = protocol.into();
        }
        for r in &mut l.rules {
            if let Some(f) = &mut r.fixed_response
                && f.content_type.is_empty()
            {
                f.content_type = "text/plain".into();
            }
            if let Some(rd) = &mut r.redirect
                && rd.status_code == 0
            {
                rd.status_code = 302;
            }
        }
    }
}

pub(super) fn validate_load_balancer(
    lb: &LoadBalancer,
    old: Option<&LoadBalancer>,
    errs: &mut Errors,
) {
    let Some(spec) = &lb.spec else {
        return errs.add("spec", "required");
    };
    errs.one_of("spec.type", &spec.r#type, LB_TYPES);
    let want = if spec.r#type == "network" {
        "TCP"
    } else {
        "HTTP"
    };
    for (n, z) in spec.zones.iter().enumerate() {
        if !is_dns_name(z, 63) {
            errs.add(
                format!("spec.zones[{n}]"),
                format!("{z:?} is not a zone name"),
            );
        }
    }
    if spec.listeners.is_empty() {
        errs.add("spec.listeners", "at least one listener is required");
    }
    let mut ports = HashSet::new();
    for (n, l) in spec.listeners.iter().enumerate() {
        let field = format!("spec.listeners[{n}]");
        if !(1..=65535).contains(&l.port) {
            errs.add(format!("{field}.port"), "1..65535");
        } else if !ports.insert(l.port) {
            errs.add(
                format!("{field}.port"),
                format!("{} is used by another listener", l.port),
            );
        }
        if l.protocol != want {
            errs.add(
                format!("{field}.protocol"),
                format!(
                    "{:?}: {} load balancers listen on {want}",
                    l.protocol, spec.r#type
                ),
            );
        }
        if l.default_target_group.is_empty() {
            errs.add(
                format!("{field}.defaultTargetGroup"),
                "required: the target group for requests no rule matches",
            );
        }
        if spec.r#type == "network" && !l.rules.is_empty() {
            errs.add(
                format!("{field}.rules"),
                "network load balancers have no rules",
            );
        }
        for (r, rule) in l.rules.iter().enumerate() {
            check_rule(&format!("{field}.rules[{r}]"), rule, errs);
        }
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.type", &old.r#type, &spec.r#type);
    }
}

fn check_rule(field: &str, rule: &Rule, errs: &mut Errors) {
    if rule.host.is_empty() && rule.path_prefix.is_empty() && rule.path_pattern.is_empty() {
        errs.add(field, "needs a condition: host, pathPrefix or pathPattern");
    }
    for (name, path) in [
        ("pathPrefix", &rule.path_prefix),
        ("pathPattern", &rule.path_pattern),
    ] {
        if !path.is_empty() && !path.starts_with('/') {
            errs.add(format!("{field}.{name}"), "must start with '/'");
        }
    }
    let actions = [
        !rule.target_group.is_empty(),
        rule.fixed_response.is_some(),
        rule.redirect.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        errs.add(
            field,
            "give exactly one action: targetGroup, fixedResponse or redirect",
        );
    }
    if let Some(f) = &rule.fixed_response
        && !(200..=599).contains(&f.status_code)
    {
        errs.add(format!("{field}.fixedResponse.statusCode"), "200..599");
    }
    if let Some(r) = &rule.redirect {
        if !matches!(r.status_code, 301 | 302) {
            errs.add(format!("{field}.redirect.statusCode"), "301 or 302");
        }
        if !r.protocol.is_empty() && !matches!(r.protocol.as_str(), "HTTP" | "HTTPS") {
            errs.add(format!("{field}.redirect.protocol"), "HTTP or HTTPS");
        }
        if r.port > 65535 {
            errs.add(format!("{field}.redirect.port"), "1..65535");
        }
    }
}
