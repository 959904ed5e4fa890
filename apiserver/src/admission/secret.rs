//! Rules for `Secret`: keys as environment-variable-like names, values of a bounded size.
//! Errors name the key, never the value.

use super::Errors;
use hanul_proto::v1::Secret;

/// A key's longest name, and a value's largest size (Kubernetes' limit on a whole Secret).
const MAX_KEY: usize = 253;
const MAX_VALUE: usize = 1024 * 1024;

pub(crate) fn validate(s: &Secret, errs: &mut Errors) {
    let Some(spec) = &s.spec else {
        return errs.add("spec", "required");
    };
    if spec.data.is_empty() {
        errs.add("spec.data", "required: at least one key");
    }
    let mut keys: Vec<&String> = spec.data.keys().collect();
    keys.sort();
    for key in keys {
        let ok = !key.is_empty()
            && key.len() <= MAX_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            errs.add(
                format!("spec.data.{key}"),
                "is not a key (letters, digits, '-', '_' and '.', at most 253)",
            );
        }
        if spec.data[key].len() > MAX_VALUE {
            errs.add(format!("spec.data.{key}"), "the value is larger than 1 MiB");
        }
    }
}
