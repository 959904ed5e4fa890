//! Rules for `Image` (the AMI).

use super::{Errors, is_contained_path, is_env_name};
use hanul_proto::v1::{Image, ImageSpec};

/// The user an image's process runs as when it names none: never root unless asked.
pub const DEFAULT_USER: &str = "nobody";

pub(super) fn default(spec: &mut ImageSpec) {
    if spec.user.is_empty() {
        spec.user = DEFAULT_USER.into();
    }
}

pub(super) fn validate(i: &Image, errs: &mut Errors) {
    let Some(spec) = &i.spec else {
        return errs.add("spec", "required");
    };
    if spec.command.is_empty() || spec.command[0].is_empty() {
        errs.add(
            "spec.command",
            "required: the program to run and its first arguments, e.g. [python3, -m, http.server]",
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
    if !spec.working_dir.is_empty()
        && !spec.working_dir.starts_with('/')
        && !is_contained_path(&spec.working_dir)
    {
        errs.add(
            "spec.workingDir",
            "must be absolute or a path inside the instance's root (no '..')",
        );
    }
    if !spec.files.is_empty() && !spec.files.starts_with('/') {
        errs.add(
            "spec.files",
            format!(
                "{:?} must be an absolute path to a directory or .tar.gz on the node",
                spec.files
            ),
        );
    }
    if !spec
        .user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errs.add("spec.user", format!("{:?} is not a user name", spec.user));
    }
}
