//! Admission: defaulting and validation of every kind, in one place, run on every write.
//!
//! Nothing reaches the store without passing here. Each kind has its own file with a
//! `default(&mut spec)` and a `validate(new, old, ctx, &mut Errors)`; errors name the field path
//! and what is allowed, and all of an object's errors are reported at once.

mod autoscaling;
mod db;
mod db_cluster_automated_backup;
mod db_parameter_group;
mod db_snapshot;
mod elb;
mod event;
mod image;
mod instance;
mod instance_type;
mod meta;
mod node;
mod secret;
mod volume;

pub use instance_type::{BUILTIN_LABEL, builtin_catalog};

use crate::error::{Error, Result};
use hanul_proto::v1::{Object, object::Resource};

/// What admission may consult besides the object itself.
#[derive(Debug, Default)]
pub struct Context {
    /// Names of the instance types that exist (the built-in catalog and custom ones), sorted.
    pub instance_types: Vec<String>,
}

/// Collects field errors: `spec.maxSize: must be >= spec.minSize (2)`.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<String>);

impl Errors {
    pub(crate) fn add(&mut self, field: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    /// Checks that `value` is one of `allowed`.
    pub(crate) fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.add(
                field,
                format!(
                    "{value:?} is not allowed; use one of: {}",
                    allowed.join(", ")
                ),
            );
        }
    }

    /// Refuses a change of an immutable field.
    pub(crate) fn immutable<T: PartialEq + std::fmt::Debug>(
        &mut self,
        field: &str,
        old: T,
        new: T,
    ) {
        if old != new {
            self.add(field, format!("is immutable (was {old:?}, asked {new:?})"));
        }
    }
}

/// Fills defaults in the object's spec. Run before [`validate`], on create and on update.
pub fn default(obj: &mut Object) {
    match &mut obj.resource {
        Some(Resource::Instance(o)) => {
            instance::default(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::Image(o)) => image::default(o.spec.get_or_insert_with(Default::default)),
        Some(Resource::Volume(o)) => volume::default(o.spec.get_or_insert_with(Default::default)),
        Some(Resource::InstanceType(o)) => {
            instance_type::default(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::Node(o)) => {
            o.spec.get_or_insert_with(Default::default);
        }
        Some(Resource::Event(o)) => event::default(o),
        Some(Resource::TargetGroup(o)) => {
            hanul_proto::elb::default_target_group(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::LoadBalancer(o)) => {
            elb::default_load_balancer(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::AutoScalingGroup(o)) => {
            autoscaling::default(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::LaunchTemplate(o)) => {
            autoscaling::default_template(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::DbCluster(o)) => {
            db::default_cluster(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::DbInstance(o)) => {
            db::default_instance(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::DbParameterGroup(o)) => {
            db_parameter_group::default(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::DbSnapshot(o)) => {
            db_snapshot::default(o.spec.get_or_insert_with(Default::default))
        }
        Some(Resource::Secret(o)) => {
            o.spec.get_or_insert_with(Default::default);
        }
        Some(Resource::DbClusterAutomatedBackup(o)) => {
            o.spec.get_or_insert_with(Default::default);
        }
        None => {}
    }
}

/// Validates `new` (already defaulted) against the rules of its kind and, on update, against
/// `old`. Returns every problem at once.
pub fn validate(new: &Object, old: Option<&Object>, ctx: &Context) -> Result<()> {
    let mut errs = Errors::default();
    match new.metadata() {
        Some(m) => meta::validate(m, &mut errs),
        None => errs.add("metadata", "required"),
    }
    match (&new.resource, old.and_then(|o| o.resource.as_ref())) {
        (Some(Resource::Node(n)), old) => {
            let old = match old {
                Some(Resource::Node(o)) => Some(o),
                _ => None,
            };
            node::validate(n, old, &mut errs)
        }
        (Some(Resource::InstanceType(n)), old) => {
            let old = match old {
                Some(Resource::InstanceType(o)) => Some(o),
                _ => None,
            };
            instance_type::validate(n, old, &mut errs)
        }
        (Some(Resource::Image(n)), _) => image::validate(n, &mut errs),
        (Some(Resource::Instance(n)), old) => {
            let old = match old {
                Some(Resource::Instance(o)) => Some(o),
                _ => None,
            };
            instance::validate(n, old, ctx, &mut errs)
        }
        (Some(Resource::Volume(n)), old) => {
            let old = match old {
                Some(Resource::Volume(o)) => Some(o),
                _ => None,
            };
            volume::validate(n, old, &mut errs)
        }
        (Some(Resource::Event(n)), _) => event::validate(n, &mut errs),
        (Some(Resource::TargetGroup(n)), old) => {
            let old = match old {
                Some(Resource::TargetGroup(o)) => Some(o),
                _ => None,
            };
            elb::validate_target_group(n, old, &mut errs)
        }
        (Some(Resource::LoadBalancer(n)), old) => {
            let old = match old {
                Some(Resource::LoadBalancer(o)) => Some(o),
                _ => None,
            };
            elb::validate_load_balancer(n, old, &mut errs)
        }
        (Some(Resource::AutoScalingGroup(n)), old) => {
            let old = match old {
                Some(Resource::AutoScalingGroup(o)) => Some(o),
                _ => None,
            };
            autoscaling::validate(n, old, ctx, &mut errs)
        }
        (Some(Resource::LaunchTemplate(n)), old) => {
            let old = match old {
                Some(Resource::LaunchTemplate(o)) => Some(o),
                _ => None,
            };
            autoscaling::validate_launch_template(n, old, ctx, &mut errs)
        }
        (Some(Resource::DbCluster(n)), old) => {
            let old = match old {
                Some(Resource::DbCluster(o)) => Some(o),
                _ => None,
            };
            db::validate_cluster(n, old, &mut errs)
        }
        (Some(Resource::DbInstance(n)), old) => {
            let old = match old {
                Some(Resource::DbInstance(o)) => Some(o),
                _ => None,
            };
            db::validate_instance(n, old, &mut errs)
        }
        (Some(Resource::DbParameterGroup(n)), old) => {
            let old = match old {
                Some(Resource::DbParameterGroup(o)) => Some(o),
                _ => None,
            };
            db_parameter_group::validate(n, old, &mut errs)
        }
        (Some(Resource::DbSnapshot(n)), old) => {
            let old = match old {
                Some(Resource::DbSnapshot(o)) => Some(o),
                _ => None,
            };
            db_snapshot::validate(n, old, &mut errs)
        }
        (Some(Resource::Secret(n)), _) => secret::validate(n, &mut errs),
        (Some(Resource::DbClusterAutomatedBackup(n)), old) => {
            let old = match old {
                Some(Resource::DbClusterAutomatedBackup(o)) => Some(o),
                _ => None,
            };
            db_cluster_automated_backup::validate(n, old, &mut errs)
        }
        (None, _) => errs.add("kind", "required"),
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errs.0))
    }
}

/// True for names the kinds accept: lowercase letters, digits, '-' and '.', starting and
/// ending with a letter or digit (a DNS subdomain, as Kubernetes names).
pub(crate) fn is_dns_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// True for environment variable names.
pub(crate) fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True for a relative path that stays inside its root.
pub(crate) fn is_contained_path(s: &str) -> bool {
    !s.starts_with('/') && !s.split('/').any(|p| p == "..")
}

#[cfg(test)]
mod tests;
