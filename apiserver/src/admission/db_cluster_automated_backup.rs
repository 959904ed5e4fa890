//! Rules for `DBClusterAutomatedBackup` (RDS's retained automated backups of a deleted
//! cluster): the cluster it is of, by name and uid, both fixed once it exists. The DB
//! controller creates it while the cluster's deletion waits; the rest is its status.

use super::Errors;
use hanul_proto::v1::DbClusterAutomatedBackup;

pub(crate) fn validate(
    r: &DbClusterAutomatedBackup,
    old: Option<&DbClusterAutomatedBackup>,
    errs: &mut Errors,
) {
    let Some(spec) = &r.spec else {
        return errs.add("spec", "required");
    };
    super::db_snapshot::check_db_cluster(
        &spec.db_cluster,
        "required: the deleted DBCluster whose automated backups it keeps",
        errs,
    );
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
