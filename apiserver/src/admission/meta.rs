//! Rules for `metadata`, shared by every kind.

use super::{Errors, is_dns_name};
use hanul_proto::v1::ObjectMeta;

const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

pub(super) fn validate(m: &ObjectMeta, errs: &mut Errors) {
    if m.name.is_empty() {
        errs.add("metadata.name", "required");
    } else if !is_dns_name(&m.name, MAX_NAME) {
        errs.add(
            "metadata.name",
            format!(
                "{:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most {MAX_NAME} characters",
                m.name
            ),
        );
    }
    for (k, v) in &m.labels {
        if !is_label_key(k) {
            errs.add(format!("metadata.labels[{k:?}]"), "invalid key: use [prefix/]name, name of letters, digits, '-', '_', '.', at most 63 characters");
        }
        if !is_label_value(v) {
            errs.add(format!("metadata.labels[{k:?}]"), format!("invalid value {v:?}: at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit"));
        }
    }
    for (i, f) in m.finalizers.iter().enumerate() {
        if f.is_empty() || f.contains(char::is_whitespace) {
            errs.add(
                format!("metadata.finalizers[{i}]"),
                "must be a non-empty name without spaces",
            );
        }
    }
    for (i, o) in m.owner_references.iter().enumerate() {
        if hanul_proto::Kind::ALL.iter().all(|k| k.as_str() != o.kind) {
            errs.add(
                format!("metadata.ownerReferences[{i}].kind"),
                format!("unknown kind {:?}", o.kind),
            );
        }
        if o.name.is_empty() {
            errs.add(format!("metadata.ownerReferences[{i}].name"), "required");
        }
        if o.uid.is_empty() {
            errs.add(format!("metadata.ownerReferences[{i}].uid"), "required");
        }
    }
}

fn is_label_key(k: &str) -> bool {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            if !is_dns_name(prefix, MAX_NAME) {
                return false;
            }
            name
        }
        None => k,
    };
    !name.is_empty() && is_label_value(name)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= MAX_LABEL
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}
