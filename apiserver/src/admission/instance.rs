//! Rules for `Instance`: EC2's RunInstances checks, and what may change on a live instance.

use super::{Context, Errors, is_contained_path, is_dns_name, is_env_name};
use hanul_proto::{
    instance::{DesiredState, InstanceState, Market, PortProtocol, ShutdownBehavior},
    v1::{Instance, InstanceSpec},
};
use std::collections::HashSet;

/// The instance type used when a spec names none, as EC2's console suggests.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";
/// EC2's limit on user data.
const MAX_USER_DATA: usize = 16 * 1024;

pub(super) fn default(spec: &mut InstanceSpec) {
    if spec.instance_type.is_empty() {
        spec.instance_type = DEFAULT_INSTANCE_TYPE.into();
    }
    if spec.state.is_empty() {
        spec.state = DesiredState::Running.as_str().into();
    }
    if spec.shutdown_behavior.is_empty() {
        spec.shutdown_behavior = ShutdownBehavior::Stop.as_str().into();
    }
    if spec.market.is_empty() {
        spec.market = Market::OnDemand.as_str().into();
    }
    for p in &mut spec.ports {
        if p.protocol.is_empty() {
            p.protocol = PortProtocol::Tcp.as_str().into();
        }
    }
    for v in &mut spec.volumes {
        if v.mount_path.is_empty() {
            v.mount_path = format!("volumes/{}", v.volume);
        }
    }
}

pub(super) fn validate(i: &Instance, old: Option<&Instance>, ctx: &Context, errs: &mut Errors) {
    let Some(spec) = &i.spec else {
        return errs.add("spec", "required");
    };
    if spec.image.is_empty() {
        errs.add("spec.image", "required: the name of an Image");
    }
    // The type must exist when it is chosen; an instance whose type was deleted since keeps
    // running and can still be updated (its agent removes its finalizer when it goes).
    let type_chosen = old
        .and_then(|o| o.spec.as_ref())
        .is_none_or(|o| o.instance_type != spec.instance_type);
    if type_chosen
        && ctx
            .instance_types
            .binary_search(&spec.instance_type)
            .is_err()
    {
        errs.add(
            "spec.instanceType",
            format!(
                "unknown instance type {:?}; known: {}",
                spec.instance_type,
                ctx.instance_types.join(", ")
            ),
        );
    }
    errs.one_of("spec.state", &spec.state, DesiredState::ALL);
    errs.one_of(
        "spec.shutdownBehavior",
        &spec.shutdown_behavior,
        ShutdownBehavior::ALL,
    );
    errs.one_of("spec.market", &spec.market, Market::ALL);
    if spec.user_data.len() > MAX_USER_DATA {
        errs.add(
            "spec.userData",
            format!("is {} bytes; at most {MAX_USER_DATA}", spec.user_data.len()),
        );
    }
    for k in spec.env.keys() {
        if !is_env_name(k) {
            errs.add(
                format!("spec.env[{k:?}]"),
                "not a valid variable name: letters, digits and '_', not starting with a digit",
            );
        }
    }
    let mut names = HashSet::new();
    for (n, p) in spec.ports.iter().enumerate() {
        if !is_dns_name(&p.name, 15) || p.name.contains('.') {
            errs.add(
                format!("spec.ports[{n}].name"),
                format!(
                    "{:?} is not a port name: 1 to 15 lowercase letters, digits and '-'",
                    p.name
                ),
            );
        } else if !names.insert(p.name.as_str()) {
            errs.add(
                format!("spec.ports[{n}].name"),
                format!("{:?} is used twice", p.name),
            );
        }
        errs.one_of(
            &format!("spec.ports[{n}].protocol"),
            &p.protocol,
            PortProtocol::ALL,
        );
    }
    let mut vols = HashSet::new();
    for (n, v) in spec.volumes.iter().enumerate() {
        if v.volume.is_empty() {
            errs.add(
                format!("spec.volumes[{n}].volume"),
                "required: the name of a Volume",
            );
        } else if !vols.insert(v.volume.as_str()) {
            errs.add(
                format!("spec.volumes[{n}].volume"),
                format!("{:?} is attached twice", v.volume),
            );
        }
        if !is_contained_path(&v.mount_path) {
            errs.add(
                format!("spec.volumes[{n}].mountPath"),
                "must be a relative path inside the instance's root (no '..')",
            );
        }
    }

    let Some(old) = old else { return };
    let Some(old_spec) = &old.spec else { return };
    errs.immutable("spec.image", &old_spec.image, &spec.image);
    if !old_spec.zone.is_empty() {
        errs.immutable("spec.zone", &old_spec.zone, &spec.zone);
    }
    if !old_spec.node_name.is_empty() {
        errs.immutable("spec.nodeName", &old_spec.node_name, &spec.node_name);
    }
    errs.immutable("spec.market", &old_spec.market, &spec.market);
    // An instance not yet placed on a node holds no capacity and has never run: its type may
    // change, as may a stopped one's.
    let placed = old.status.as_ref().is_some_and(|s| !s.node.is_empty());
    let observed = old
        .status
        .as_ref()
        .and_then(|s| InstanceState::parse(&s.state));
    let terminated = old_spec.state == DesiredState::Terminated.as_str()
        || observed == Some(InstanceState::Terminated);
    if terminated && spec.state != old_spec.state {
        errs.add(
            "spec.state",
            "the instance is terminated; it cannot be started or stopped again (delete it to reuse its name)",
        );
    }
    if old_spec.instance_type != spec.instance_type
        && placed
        && observed != Some(InstanceState::Stopped)
    {
        errs.add(
            "spec.instanceType",
            "can change only while the instance is stopped (stop it first, as EC2 requires)",
        );
    }
}
