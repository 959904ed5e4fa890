//! Rules for `Event`.

use super::Errors;
use hanul_proto::v1::Event;

/// Event types, as Kubernetes has them.
pub const TYPES: &[&str] = &["Normal", "Warning"];

pub(super) fn default(e: &mut Event) {
    if e.r#type.is_empty() {
        e.r#type = "Normal".into();
    }
    if e.count == 0 {
        e.count = 1;
    }
}

pub(super) fn validate(e: &Event, errs: &mut Errors) {
    match &e.involved_object {
        None => errs.add("involvedObject", "required"),
        Some(o) => {
            if o.kind.is_empty() {
                errs.add("involvedObject.kind", "required");
            }
            if o.name.is_empty() {
                errs.add("involvedObject.name", "required");
            }
        }
    }
    errs.one_of("type", &e.r#type, TYPES);
    if e.reason.is_empty() || !e.reason.chars().all(|c| c.is_ascii_alphanumeric()) {
        errs.add(
            "reason",
            "required: a short CamelCase word such as Scheduled",
        );
    }
}
