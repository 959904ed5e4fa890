//! Elastic Load Balancing's defaults, shared by admission (which fills them in) and the agent
//! (which reads specs).

use crate::v1::{HealthCheck, TargetGroupSpec};

/// ELB's default deregistration delay.
pub const DEFAULT_DEREGISTRATION_DELAY: u32 = 300;
/// The health check port meaning "the port traffic goes to".
pub const TRAFFIC_PORT: &str = "traffic-port";
/// One day, ELB's default lb_cookie duration.
pub const DEFAULT_STICKINESS_SECONDS: u32 = 86_400;

/// Fills in ELB's defaults; admission runs it on every write, and whoever reads a spec may run
/// it again on a copy instead of knowing the defaults itself.
pub fn default_target_group(spec: &mut TargetGroupSpec) {
    if spec.protocol.is_empty() {
        spec.protocol = "HTTP".into();
    }
    if spec.algorithm.is_empty() {
        spec.algorithm = "round_robin".into();
    }
    spec.deregistration_delay_seconds
        .get_or_insert(DEFAULT_DEREGISTRATION_DELAY);
    let hc = spec.health_check.get_or_insert_with(HealthCheck::default);
    if hc.protocol.is_empty() {
        hc.protocol = spec.protocol.clone();
    }
    if hc.protocol == "HTTP" && hc.path.is_empty() {
        hc.path = "/".into();
    }
    if hc.port.is_empty() {
        hc.port = TRAFFIC_PORT.into();
    }
    for (field, default) in [
        (&mut hc.interval_seconds, 30),
        (&mut hc.timeout_seconds, 5),
        (&mut hc.healthy_threshold, 5),
        (&mut hc.unhealthy_threshold, 2),
    ] {
        if *field == 0 {
            *field = default;
        }
    }
    if hc.protocol == "HTTP" && hc.matcher.is_empty() {
        hc.matcher = "200".into();
    }
    if let Some(st) = &mut spec.stickiness
        && st.enabled
    {
        if st.r#type.is_empty() {
            st.r#type = "lb_cookie".into();
        }
        if st.duration_seconds == 0 {
            st.duration_seconds = DEFAULT_STICKINESS_SECONDS;
        }
    }
}
