//! Rules for `DBClusterAutomatedBackup` (RDS's retained automated backups of a deleted
//! cluster): the cluster it is of, by name and uid, both fixed once it exists. The DB
//! controller creates it while the cluster's deletion waits; the rest is its status.

use super::{Errors, is_dns_name};
use hanul_proto::v1::DbClusterAutomatedBackup;

pub(crate) fn validate(
    r: &DbClusterAutomatedBackup,
    old: Option<&DbClusterAutomatedBackup>,
    errs: &mut Errors,
) {
    let Some(spec) = &r.spec else {
        return errs.add("spec", "required");
    };
    if spec.db_cluster.is_empty() {
        errs.add(
            "spec.dbCluster",
            "required: the deleted DBCluster whose automated backups it keeps",
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
    if spec.db_cluster_resource_id.is_empty() {
        errs.add(
            "spec.dbClusterResourceId",
            "required: the uid of the deleted DBCluster",
        );
    }
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        errs.immutable("spec.dbCluster", &old.db_cluster, &spec.db_cluster);
        errs.immutable(
            "spec.dbClusterResourceId",
            &old.db_cluster_resource_id,
            &spec.db_cluster_resource_id,
        );
    }
}
