//! Rules for `Node`: written by agents when they register.

use super::Errors;
use hanul_proto::v1::Node;

pub(super) fn validate(n: &Node, old: Option<&Node>, errs: &mut Errors) {
    let Some(spec) = &n.spec else {
        return errs.add("spec", "required");
    };
    if spec.zone.is_empty() {
        errs.add(
            "spec.zone",
            "required: the availability zone of the node (az-a, az-b, ...)",
        );
    }
    if !spec.port_range.is_empty() && parse_port_range(&spec.port_range).is_none() {
        errs.add(
            "spec.portRange",
            format!(
                "{:?} is not a range: use LOW-HIGH with 1024 <= LOW <= HIGH <= 65535",
                spec.port_range
            ),
        );
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.zone", &old.zone, &spec.zone);
    }
}

/// Parses `LOW-HIGH`.
pub(crate) fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (1024 <= a && a <= b).then_some((a, b))
}
