//! Rules for `Volume` (EBS-style).

use super::Errors;
use hanul_proto::v1::{Volume, VolumeSpec};

pub(super) fn default(spec: &mut VolumeSpec) {
    if spec.size_gib == 0 {
        spec.size_gib = 1;
    }
    if spec.keep_on_termination.is_none() {
        spec.keep_on_termination = Some(true);
    }
}

pub(super) fn validate(v: &Volume, old: Option<&Volume>, errs: &mut Errors) {
    let Some(spec) = &v.spec else {
        return errs.add("spec", "required");
    };
    if !(1..=16384).contains(&spec.size_gib) {
        errs.add(
            "spec.sizeGib",
            format!("{} is out of range: 1 to 16384", spec.size_gib),
        );
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.zone", &old.zone, &spec.zone);
        if spec.size_gib < old.size_gib {
            errs.add(
                "spec.sizeGib",
                format!(
                    "can only grow (was {}, asked {})",
                    old.size_gib, spec.size_gib
                ),
            );
        }
    }
}
