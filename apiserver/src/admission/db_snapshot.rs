//! Rules for `DBSnapshot` (RDS's `CreateDBClusterSnapshot`): the cluster it is a snapshot of
//! and its type, both fixed once it exists. Whether the cluster exists is the controller's to
//! say (the snapshot fails with a message): a snapshot outlives its cluster, so its name may
//! point at nothing.

use super::{Errors, is_dns_name};
use hanul_proto::{
    db::{SNAPSHOT_MANUAL, SNAPSHOT_TYPES},
    v1::{DbSnapshot, DbSnapshotSpec},
};

pub(crate) fn default(spec: &mut DbSnapshotSpec) {
    if spec.r#type.is_empty() {
        spec.r#type = SNAPSHOT_MANUAL.into();
    }
}

/// `spec.dbCluster`: a DBCluster's name (`required` says what is missing when it is empty).
pub(super) fn check_db_cluster(name: &str, required: &str, errs: &mut Errors) {
    if name.is_empty() {
        errs.add("spec.dbCluster", required);
    } else if !is_dns_name(name, 63) {
        errs.add(
            "spec.dbCluster",
            format!("{name:?} is not a DBCluster name (lowercase letters, digits, '-' and '.')"),
        );
    }
}

pub(crate) fn validate(s: &DbSnapshot, old: Option<&DbSnapshot>, errs: &mut Errors) {
    let Some(spec) = &s.spec else {
        return errs.add("spec", "required");
    };
    check_db_cluster(
        &spec.db_cluster,
        "required: the DBCluster to take a snapshot of",
        errs,
    );
    errs.one_of("spec.type", &spec.r#type, SNAPSHOT_TYPES);
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.dbCluster", &old.db_cluster, &spec.db_cluster);
        errs.immutable("spec.type", &old.r#type, &spec.r#type);
    }
}
