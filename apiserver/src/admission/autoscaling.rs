//! Rules for `AutoScalingGroup`: EC2 Auto Scaling's defaults and limits. The launch template is
//! checked by the instance rules (it becomes each instance's spec); references to target
//! groups are checked when the group registers instances: they may be created in any order.

use super::{Context, Errors, instance};
use hanul_proto::{
    autoscaling::{
        HealthCheckType, LifecycleResult, MAX_HEARTBEAT_TIMEOUT, MIN_HEARTBEAT_TIMEOUT, Process,
        TerminationPolicy, Transition, default_group, instance_spec,
    },
    v1::{AutoScalingGroup, AutoScalingGroupSpec, Instance, LaunchTemplate, LaunchTemplateData},
};
use std::collections::HashSet;

/// Instances are named `<group>-<5 characters>` and names are DNS labels of at most 63.
const MAX_GROUP_NAME: usize = 57;
/// A group of more than this many instances is more than one machine's agents can run.
const MAX_SIZE: u32 = 1000;
/// AWS's limit on the grace period is two days; no one needs more here.
const MAX_GRACE_PERIOD: u32 = 172_800;

pub(super) fn default(spec: &mut AutoScalingGroupSpec) {
    default_group(spec);
    match &mut spec.launch_template_ref {
        Some(r) => {
            if r.version.is_empty() {
                r.version = LATEST.into();
            }
        }
        None => default_template(
            spec.launch_template
                .get_or_insert_with(LaunchTemplateData::default),
        ),
    }
}

/// A launch template's defaults: the instance defaults of the fields it has.
pub(super) fn default_template(t: &mut LaunchTemplateData) {
    let mut is = instance_spec(t);
    instance::default(&mut is);
    t.instance_type = is.instance_type;
    t.market = is.market;
    t.ports = is.ports;
}

/// The instance rules on a launch template, their field paths under `prefix`. The instance
/// type is checked only when it is chosen (`old` is the template before, on an update).
pub(super) fn validate_template(
    prefix: &str,
    t: &LaunchTemplateData,
    old: Option<&LaunchTemplateData>,
    ctx: &Context,
    errs: &mut Errors,
) {
    let mut is = instance_spec(t);
    instance::default(&mut is);
    let changed = old.is_none_or(|o| o.instance_type != t.instance_type);
    let as_instance = Instance {
        metadata: None,
        spec: Some(is),
        status: None,
    };
    let mut inner = Errors::default();
    instance::validate(&as_instance, None, ctx, &mut inner);
    for e in inner.0 {
        if e.starts_with("spec.instanceType") && !changed {
            continue;
        }
        errs.0.push(e.replacen("spec", prefix, 1));
    }
}

/// `launchTemplateRef.version` values besides numbers.
const LATEST: &str = "$Latest";
const DEFAULT: &str = "$Default";

/// Rules for `LaunchTemplate` objects: those of the template they hold.
pub(super) fn validate_launch_template(
    t: &LaunchTemplate,
    old: Option<&LaunchTemplate>,
    ctx: &Context,
    errs: &mut Errors,
) {
    let Some(spec) = &t.spec else {
        return errs.add("spec", "required");
    };
    validate_template("spec", spec, old.and_then(|o| o.spec.as_ref()), ctx, errs);
}

pub(super) fn validate(
    g: &AutoScalingGroup,
    old: Option<&AutoScalingGroup>,
    ctx: &Context,
    errs: &mut Errors,
) {
    let name = g.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    if name.len() > MAX_GROUP_NAME {
        errs.add(
            "metadata.name",
            format!("at most {MAX_GROUP_NAME} characters (instances are named <group>-xxxxx)"),
        );
    }
    let Some(spec) = &g.spec else {
        return errs.add("spec", "required");
    };
    match (&spec.launch_template, &spec.launch_template_ref) {
        (Some(_), Some(_)) => errs.add(
            "spec.launchTemplateRef",
            "give either spec.launchTemplate or spec.launchTemplateRef, not both",
        ),
        (Some(t), None) => validate_template(
            "spec.launchTemplate",
            t,
            old.and_then(|o| o.spec.as_ref())
                .and_then(|s| s.launch_template.as_ref()),
            ctx,
            errs,
        ),
        (None, Some(r)) => {
            if !super::is_dns_name(&r.name, 253) {
                errs.add(
                    "spec.launchTemplateRef.name",
                    format!("{:?} is not a launch template name", r.name),
                );
            }
            if r.version != LATEST
                && r.version != DEFAULT
                && !r.version.parse::<u32>().is_ok_and(|v| v > 0)
            {
                errs.add(
                    "spec.launchTemplateRef.version",
                    format!(
                        "{:?} is not allowed; use $Latest, $Default or a version number",
                        r.version
                    ),
                );
            }
        }
        (None, None) => errs.add(
            "spec.launchTemplate",
            "required (or spec.launchTemplateRef)",
        ),
    }

    let desired = spec.desired_capacity.unwrap_or(spec.min_size);
    if spec.max_size > MAX_SIZE {
        errs.add(
            "spec.maxSize",
            format!("{} is too many; at most {MAX_SIZE}", spec.max_size),
        );
    }
    if spec.min_size > spec.max_size {
        errs.add(
            "spec.minSize",
            format!(
                "{} is more than spec.maxSize ({})",
                spec.min_size, spec.max_size
            ),
        );
    }
    if desired < spec.min_size || desired > spec.max_size {
        errs.add(
            "spec.desiredCapacity",
            format!(
                "{desired} is outside spec.minSize..spec.maxSize ({}..{})",
                spec.min_size, spec.max_size
            ),
        );
    }
    let mut seen = HashSet::new();
    for (i, z) in spec.zones.iter().enumerate() {
        if !super::is_dns_name(z, 63) {
            errs.add(
                format!("spec.zones[{i}]"),
                format!("{z:?} is not a zone name"),
            );
        } else if !seen.insert(z) {
            errs.add(format!("spec.zones[{i}]"), format!("{z:?} is listed twice"));
        }
    }
    errs.one_of(
        "spec.healthCheckType",
        &spec.health_check_type,
        HealthCheckType::ALL,
    );
    if let Some(g) = spec.health_check_grace_period_seconds
        && g > MAX_GRACE_PERIOD
    {
        errs.add(
            "spec.healthCheckGracePeriodSeconds",
            format!("{g} is too long; at most {MAX_GRACE_PERIOD}"),
        );
    }
    let mut seen = HashSet::new();
    for (i, t) in spec.target_groups.iter().enumerate() {
        if !super::is_dns_name(t, 253) {
            errs.add(
                format!("spec.targetGroups[{i}]"),
                format!("{t:?} is not a target group name"),
            );
        } else if !seen.insert(t) {
            errs.add(
                format!("spec.targetGroups[{i}]"),
                format!("{t:?} is listed twice"),
            );
        }
    }
    for (i, p) in spec.termination_policies.iter().enumerate() {
        errs.one_of(
            &format!("spec.terminationPolicies[{i}]"),
            p,
            TerminationPolicy::ALL,
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in spec.suspended_processes.iter().enumerate() {
        let field = format!("spec.suspendedProcesses[{i}]");
        errs.one_of(&field, p, Process::ALL);
        if !seen.insert(p) {
            errs.add(field, format!("{p:?} is listed twice"));
        }
    }
    let mut seen = HashSet::new();
    for (i, h) in spec.lifecycle_hooks.iter().enumerate() {
        let f = |part: &str| format!("spec.lifecycleHooks[{i}].{part}");
        if !is_hook_name(&h.name) {
            errs.add(
                f("name"),
                format!(
                    "{:?} is not a hook name: 1 to 63 letters, digits, '-', '_' and '.'",
                    h.name
                ),
            );
        } else if !seen.insert(h.name.as_str()) {
            errs.add(f("name"), format!("{:?} is used twice", h.name));
        }
        errs.one_of(&f("transition"), &h.transition, Transition::ALL);
        if let Some(t) = h.heartbeat_timeout_seconds
            && !(MIN_HEARTBEAT_TIMEOUT..=MAX_HEARTBEAT_TIMEOUT).contains(&t)
        {
            errs.add(
                f("heartbeatTimeoutSeconds"),
                format!("{t} is outside {MIN_HEARTBEAT_TIMEOUT}..{MAX_HEARTBEAT_TIMEOUT}"),
            );
        }
        errs.one_of(&f("defaultResult"), &h.default_result, LifecycleResult::ALL);
        if !h.notification_target.is_empty() && !is_http_url(&h.notification_target) {
            errs.add(
                f("notificationTarget"),
                format!(
                    "{:?} is not an http:// URL (host[:port][/path])",
                    h.notification_target
                ),
            );
        }
    }
    if let Some(r) = &spec.instance_refresh {
        if let Some(p) = r.min_healthy_percentage
            && p > 100
        {
            errs.add(
                "spec.instanceRefresh.minHealthyPercentage",
                format!("{p} is outside 0..100"),
            );
        }
        if let Some(w) = r.instance_warmup_seconds
            && w > MAX_GRACE_PERIOD
        {
            errs.add(
                "spec.instanceRefresh.instanceWarmupSeconds",
                format!("{w} is too long; at most {MAX_GRACE_PERIOD}"),
            );
        }
    }
}

fn is_hook_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_http_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) => {
            if p.parse::<u16>().is_err() {
                return false;
            }
            h
        }
        None => authority,
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}
