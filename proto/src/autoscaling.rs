//! EC2 Auto Scaling's words and defaults, shared by admission (which fills the defaults in),
//! the group controller, the agent (which registers in-service instances with their target
//! groups and serves the lifecycle state on the metadata endpoint) and the CLI (whose lifecycle
//! verbs write the annotations the controller reads).
//!
//! ```text
//!  Pending ─▶ Pending:Wait ─▶ Pending:Proceed ─▶ InService ─▶ Terminating ─▶ Terminating:Wait
//!     │        (launch hooks)                                   (deregister,  (termination hooks)
//!     │                                                          drain)            │
//!     └──────────────────────────────── (failed, abandoned) ──▶ Terminating ...    ▼
//!                                                               Terminating:Proceed ─▶ Terminated
//! ```

use crate::{
    instance::string_enum,
    v1::{AutoScalingGroupSpec, InstanceRefreshPreferences, InstanceSpec, LaunchTemplateData},
};
use prost::Message;

string_enum! {
    /// Where an instance is in its group's life, in AWS's words.
    LifecycleState {
        Pending = "Pending",
        PendingWait = "Pending:Wait",
        PendingProceed = "Pending:Proceed",
        InService = "InService",
        Terminating = "Terminating",
        TerminatingWait = "Terminating:Wait",
        TerminatingProceed = "Terminating:Proceed",
        Terminated = "Terminated",
    }
}

string_enum! {
    /// `spec.healthCheckType`.
    HealthCheckType { Ec2 = "EC2", Elb = "ELB" }
}

string_enum! {
    /// `spec.terminationPolicies[]`.
    TerminationPolicy {
        Default = "Default",
        OldestInstance = "OldestInstance",
        NewestInstance = "NewestInstance",
        OldestLaunchTemplate = "OldestLaunchTemplate",
        ClosestToNextInstanceHour = "ClosestToNextInstanceHour",
    }
}

string_enum! {
    /// `spec.suspendedProcesses[]`.
    Process {
        Launch = "Launch",
        Terminate = "Terminate",
        HealthCheck = "HealthCheck",
        ReplaceUnhealthy = "ReplaceUnhealthy",
        AzRebalance = "AZRebalance",
        AddToLoadBalancer = "AddToLoadBalancer",
    }
}

string_enum! {
    /// `spec.lifecycleHooks[].transition`.
    Transition {
        Launching = "autoscaling:EC2_INSTANCE_LAUNCHING",
        Terminating = "autoscaling:EC2_INSTANCE_TERMINATING",
    }
}

string_enum! {
    /// What completes a lifecycle action.
    LifecycleResult { Continue = "CONTINUE", Abandon = "ABANDON" }
}

/// `healthCheckGracePeriodSeconds` unless given, as AWS.
pub const DEFAULT_GRACE_PERIOD: u32 = 300;
/// `defaultCooldownSeconds` unless given.
pub const DEFAULT_COOLDOWN: u32 = 300;
/// A lifecycle hook's heartbeat timeout unless given, and its bounds.
pub const DEFAULT_HEARTBEAT_TIMEOUT: u32 = 3600;
pub const MIN_HEARTBEAT_TIMEOUT: u32 = 30;
pub const MAX_HEARTBEAT_TIMEOUT: u32 = 7200;
/// An instance refresh's `minHealthyPercentage` unless given.
pub const DEFAULT_MIN_HEALTHY_PERCENTAGE: u32 = 90;

/// Label on every instance of a group: the group's name.
pub const GROUP_LABEL: &str = "autoscaling.hanul.dev/group";
/// Label on every instance of a group: the launch template version it was launched from.
pub const VERSION_LABEL: &str = "autoscaling.hanul.dev/launch-template-version";
/// Annotation the controller keeps on each instance: its lifecycle state (the metadata
/// endpoint's `autoscaling/target-lifecycle-state`).
pub const LIFECYCLE_STATE_ANNOTATION: &str = "autoscaling.hanul.dev/lifecycle-state";
/// Annotation the controller puts on an instance while it is registered: the target groups
/// (comma-separated) the agents send it traffic from, beside the groups' own `targets`.
pub const TARGET_GROUPS_ANNOTATION: &str = "elb.hanul.dev/target-groups";
/// Annotation prefixes on an instance, followed by a hook's name: the lifecycle action's
/// result (`CONTINUE`/`ABANDON`, written by `hanul asg complete-lifecycle-action`) and the
/// last heartbeat (any new value extends the wait; written by `hanul asg record-heartbeat`).
pub const LIFECYCLE_ACTION_PREFIX: &str = "autoscaling.hanul.dev/lifecycle-action.";
pub const HEARTBEAT_PREFIX: &str = "autoscaling.hanul.dev/lifecycle-heartbeat.";
/// Annotations on a group asking for an instance refresh, or its cancellation: any new value
/// (a time) is one request, compared with `status.refreshRequestHandled` / `cancelRequestHandled`.
pub const REFRESH_ANNOTATION: &str = "autoscaling.hanul.dev/refresh-requested-at";
pub const CANCEL_REFRESH_ANNOTATION: &str = "autoscaling.hanul.dev/refresh-cancel-requested-at";

/// The annotation carrying a hook's result on an instance.
pub fn action_annotation(hook: &str) -> String {
    format!("{LIFECYCLE_ACTION_PREFIX}{hook}")
}

/// The annotation carrying a hook's last heartbeat on an instance.
pub fn heartbeat_annotation(hook: &str) -> String {
    format!("{HEARTBEAT_PREFIX}{hook}")
}

/// Fills in Auto Scaling's defaults; admission runs it on every write.
pub fn default_group(spec: &mut AutoScalingGroupSpec) {
    spec.desired_capacity.get_or_insert(spec.min_size);
    if spec.health_check_type.is_empty() {
        spec.health_check_type = HealthCheckType::Ec2.as_str().into();
    }
    spec.health_check_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_PERIOD);
    if spec.termination_policies.is_empty() {
        spec.termination_policies = vec![TerminationPolicy::Default.as_str().into()];
    }
    spec.default_cooldown_seconds
        .get_or_insert(DEFAULT_COOLDOWN);
    for h in &mut spec.lifecycle_hooks {
        h.heartbeat_timeout_seconds
            .get_or_insert(DEFAULT_HEARTBEAT_TIMEOUT);
        if h.default_result.is_empty() {
            h.default_result = LifecycleResult::Abandon.as_str().into();
        }
    }
    let grace = spec.health_check_grace_period_seconds;
    let r = spec
        .instance_refresh
        .get_or_insert_with(InstanceRefreshPreferences::default);
    r.min_healthy_percentage
        .get_or_insert(DEFAULT_MIN_HEALTHY_PERCENTAGE);
    if r.instance_warmup_seconds.is_none() {
        r.instance_warmup_seconds = grace;
    }
}

/// The instance spec a template launches (without the zone, which the group chooses).
pub fn instance_spec(t: &LaunchTemplateData) -> InstanceSpec {
    InstanceSpec {
        image: t.image.clone(),
        instance_type: t.instance_type.clone(),
        user_data: t.user_data.clone(),
        env: t.env.clone(),
        ports: t.ports.clone(),
        market: t.market.clone(),
        ..Default::default()
    }
}

/// A digest of a launch template: equal templates have equal digests (the env map is encoded
/// in key order). A change of it is a new launch template version.
pub fn template_hash(t: &LaunchTemplateData) -> String {
    let mut t = t.clone();
    let env: std::collections::BTreeMap<_, _> = std::mem::take(&mut t.env).into_iter().collect();
    let mut bytes = t.encode_to_vec();
    for (k, v) in env {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    // FNV-1a, 64 bits: a change detector, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_ignores_map_order_and_sees_changes() {
        let mut a = LaunchTemplateData {
            image: "web".into(),
            ..Default::default()
        };
        for i in 0..20 {
            a.env.insert(format!("K{i}"), i.to_string());
        }
        let mut b = LaunchTemplateData {
            image: "web".into(),
            ..Default::default()
        };
        for i in (0..20).rev() {
            b.env.insert(format!("K{i}"), i.to_string());
        }
        assert_eq!(template_hash(&a), template_hash(&b));
        b.image = "web2".into();
        assert_ne!(template_hash(&a), template_hash(&b));
    }

    #[test]
    fn defaults_are_aws_defaults() {
        let mut s = AutoScalingGroupSpec {
            min_size: 2,
            max_size: 4,
            ..Default::default()
        };
        default_group(&mut s);
        assert_eq!(s.desired_capacity, Some(2));
        assert_eq!(s.health_check_type, "EC2");
        assert_eq!(s.health_check_grace_period_seconds, Some(300));
        assert_eq!(s.termination_policies, vec!["Default"]);
        let r = s.instance_refresh.unwrap();
        assert_eq!(r.min_healthy_percentage, Some(90));
        assert_eq!(r.instance_warmup_seconds, Some(300));
    }
}
