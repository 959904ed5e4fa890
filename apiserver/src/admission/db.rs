//! `DBCluster` and `DBInstance`: RDS's defaults and rules.

use super::Errors;
use hanul_proto::v1::{DbCluster, DbClusterSpec, DbInstance, DbInstanceSpec};

pub(crate) fn default_cluster(_spec: &mut DbClusterSpec) {}

pub(crate) fn validate_cluster(_new: &DbCluster, _old: Option<&DbCluster>, _errs: &mut Errors) {}

pub(crate) fn default_instance(_spec: &mut DbInstanceSpec) {}

pub(crate) fn validate_instance(_new: &DbInstance, _old: Option<&DbInstance>, _errs: &mut Errors) {}
