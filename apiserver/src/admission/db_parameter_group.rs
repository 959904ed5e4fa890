//! Rules for `DBParameterGroup` (RDS's `CreateDBParameterGroup`, `ModifyDBParameterGroup`):
//! one family, PostgreSQL parameter names, and none of the settings hanul manages itself.
//!
//! Whether PostgreSQL accepts a value is not judged here (it depends on the server's build and
//! on other settings): the agents apply the group, and a value PostgreSQL refuses is left out
//! and reported on the member.

use super::Errors;
use hanul_proto::{
    db::{
        MANAGED_PARAMETERS, PARAMETER_GROUP_FAMILIES, PARAMETER_GROUP_FAMILY, is_managed_parameter,
    },
    v1::{DbParameterGroup, DbParameterGroupSpec},
};

/// PostgreSQL's limit on a setting's name (NAMEDATALEN - 1, extensions' `a.b` included).
const MAX_NAME: usize = 63;

pub(crate) fn default(spec: &mut DbParameterGroupSpec) {
    if spec.family.is_empty() {
        spec.family = PARAMETER_GROUP_FAMILY.into();
    }
}

pub(crate) fn validate(g: &DbParameterGroup, old: Option<&DbParameterGroup>, errs: &mut Errors) {
    let Some(spec) = &g.spec else {
        return errs.add("spec", "required");
    };
    errs.one_of("spec.family", &spec.family, PARAMETER_GROUP_FAMILIES);
    // Sorted, so that errors come in a stable order (the map has none).
    let mut names: Vec<&String> = spec.parameters.keys().collect();
    names.sort();
    for name in names {
        let value = &spec.parameters[name];
        let field = format!("spec.parameters.{name}");
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        {
            errs.add(
                &field,
                format!(
                    "{name:?} is not a PostgreSQL parameter name; use 1 to {MAX_NAME} lowercase \
                     letters, '_' and '.'"
                ),
            );
            continue;
        }
        if is_managed_parameter(name) {
            errs.add(
                &field,
                format!(
                    "managed by hanul; a parameter group may not set {} (a '*' is a prefix)",
                    MANAGED_PARAMETERS.join(", ")
                ),
            );
            continue;
        }
        if value.trim().is_empty() {
            errs.add(&field, "a value is required");
        } else if value.contains(['\n', '\r']) {
            errs.add(&field, "the value may not contain a line break");
        }
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.family", &old.family, &spec.family);
    }
}
