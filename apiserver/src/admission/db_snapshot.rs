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

pub(crate) fn validate(s: &DbSnapshot, old: Option<&DbSnapshot>, errs: &mut Errors) {
    let Some(spec) = &s.spec else {
        return errs.add("spec", "required");
    };
    if spec.db_cluster.is_empty() {
        errs.add(
            "spec.dbCluster",
            "required: the DBCluster to take a snapshot of",
        );
    } else if !is_dns_name(&spec.db_cluster, 63) {
        errs.add(
            "spec.dbCluster",
            format!(
                "{:?} is not a DBCluster name (lowercase letters, digits, '-' and '.')",
                spec.db_cluster
            ),
        );
    }
    errs.one_of("spec.type", &spec.r#type, SNAPSHOT_TYPES);
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.dbCluster", &old.db_cluster, &spec.db_cluster);
        errs.immutable("spec.type", &old.r#type, &spec.r#type);
    }
}
