//! `DBCluster` and `DBInstance` admission: RDS's defaults, each rule naming its field, and what
//! a live cluster may not change.

use super::*;
use hanul_proto::v1::{DbCluster, DbInstance, DbParameterGroup};

const GOOD: &str = "apiVersion: hanul/v1\nkind: DBCluster\nmetadata: {name: orders}\nspec:\n  masterPassword: s3cret-pass\n";

fn cluster(spec: &str) -> Object {
    obj(&format!(
        "apiVersion: hanul/v1\nkind: DBCluster\nmetadata: {{name: orders}}\nspec:\n{spec}"
    ))
}

fn admitted_cluster(spec: &str) -> Object {
    let mut o = cluster(spec);
    admit(&mut o, None).unwrap();
    o
}

fn cluster_of(o: &Object) -> &DbCluster {
    match &o.resource {
        Some(Resource::DbCluster(c)) => c,
        other => panic!("not a DBCluster: {other:?}"),
    }
}

fn instance(spec: &str) -> Object {
    obj(&format!(
        "apiVersion: hanul/v1\nkind: DBInstance\nmetadata: {{name: orders-1}}\nspec: {spec}\n"
    ))
}

/// Admits `spec` on a new cluster and returns the errors.
fn refused(spec: &str) -> String {
    message(admit(&mut cluster(spec), None))
}

#[test]
fn a_db_cluster_gets_rds_defaults_written_into_its_spec() {
    let mut o = obj(GOOD);
    admit(&mut o, None).unwrap();
    let s = cluster_of(&o).spec.clone().unwrap();
    assert_eq!(
        (
            s.engine.as_str(),
            s.engine_version.as_str(),
            s.deployment.as_str(),
            s.instance_class.as_str()
        ),
        ("postgres", "15", "singleAZ", "db.t3.micro")
    );
    assert_eq!((s.storage_gib, s.port), (Some(20), Some(5432)));
    assert_eq!(s.master_username, "postgres");
    assert_eq!(s.replication.unwrap().data_durability, "required");
    let f = s.failover.unwrap();
    assert_eq!((f.automatic, f.lease_seconds), (Some(true), Some(3)));
    assert!(s.zones.is_empty(), "zones are the controller's to default");
    // And they are shown, as `get -o yaml` would.
    let v = hanul_proto::manifest::to_value(&o);
    assert_eq!(v["spec"]["port"], 5432);
    assert_eq!(v["spec"]["failover"]["automatic"], true);
    assert_eq!(v["spec"]["failover"]["leaseSeconds"], 3);
}

#[test]
fn given_values_are_kept_over_defaults() {
    let o = admitted_cluster(
        "  masterPassword: s3cret-pass\n  deployment: multiAZCluster\n  instanceClass: db.m5.large\n  storageGib: 100\n  port: 15432\n  masterUsername: admin\n  databaseName: orders\n  zones: [az-a, az-b, az-c]\n  readReplicas: {count: 2, zones: [az-a]}\n  replication: {dataDurability: preferred}\n  failover: {automatic: false, leaseSeconds: 10}\n",
    );
    let s = cluster_of(&o).spec.clone().unwrap();
    assert_eq!(s.deployment, "multiAZCluster");
    assert_eq!((s.storage_gib, s.port), (Some(100), Some(15432)));
    assert_eq!(s.replication.unwrap().data_durability, "preferred");
    let f = s.failover.unwrap();
    assert_eq!((f.automatic, f.lease_seconds), (Some(false), Some(10)));
}

#[test]
fn every_bad_db_cluster_field_is_named_with_what_is_allowed() {
    let m = refused(
        "  engine: mysql\n  engineVersion: '16'\n  deployment: multiAZ\n  instanceClass: db.t3.micr\n  storageGib: 10\n  port: 65535\n  masterUsername: 1admin\n  masterPassword: short\n  databaseName: my-db\n  zones: [az-a, az-a, Bad_Zone]\n  readReplicas: {count: 16, zones: [az_b]}\n  replication: {dataDurability: sometimes}\n  failover: {leaseSeconds: 61}\n",
    );
    for want in [
        "spec.engine: \"mysql\" is not allowed; use one of: postgres",
        "spec.engineVersion: \"16\" is not allowed; use one of: 15",
        "spec.deployment: \"multiAZ\" is not allowed; use one of: singleAZ, multiAZInstance, multiAZCluster",
        "spec.instanceClass: unknown instance class \"db.t3.micr\"; known: db.t3.micro, db.t3.small",
        "spec.storageGib: 10 is outside 20..65536",
        "spec.port: 65535 is outside 1024..65534 (the reader endpoint listens on port + 1)",
        "spec.masterUsername: \"1admin\" is not a user name: use 1 to 63 letters, digits and '_', starting with a letter",
        "spec.masterPassword: has 5 characters; use 8 to 128 printable ASCII characters",
        "spec.databaseName: \"my-db\" is not a database name",
        "spec.zones[1]: \"az-a\" is listed twice",
        "spec.zones[2]: \"Bad_Zone\" is not a zone name",
        "spec.readReplicas.count: 16 is too many; at most 15",
        "spec.readReplicas.zones[0]: \"az_b\" is not a zone name",
        "spec.replication.dataDurability: \"sometimes\" is not allowed; use one of: required, preferred",
        "spec.failover.leaseSeconds: 61 is outside 1..60",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn ports_and_storage_are_accepted_at_their_limits() {
    for spec in [
        "  masterPassword: s3cret-pass\n  port: 1024\n  storageGib: 20\n",
        "  masterPassword: s3cret-pass\n  port: 65534\n  storageGib: 65536\n",
    ] {
        admitted_cluster(spec);
    }
    assert!(refused("  masterPassword: s3cret-pass\n  port: 1023\n").contains("spec.port: 1023"));
    assert!(
        refused("  masterPassword: s3cret-pass\n  storageGib: 65537\n")
            .contains("spec.storageGib: 65537 is outside 20..65536")
    );
    assert!(
        refused("  masterPassword: s3cret-pass\n  failover: {leaseSeconds: 0}\n")
            .contains("spec.failover.leaseSeconds: 0 is outside 1..60")
    );
}

#[test]
fn the_master_password_is_required_and_follows_rds_rules_without_being_echoed() {
    let m = message(admit(
        &mut obj("apiVersion: hanul/v1\nkind: DBCluster\nmetadata: {name: orders}\nspec: {}\n"),
        None,
    ));
    assert!(
        m.contains("spec.masterPassword: required: use 8 to 128 printable ASCII characters other than '/', '\"', '@' and space"),
        "{m}"
    );
    for (password, why) in [
        ("with/slash1", "contains '/'"),
        ("with@at-sign", "contains '@'"),
        ("with space", "contains ' '"),
        ("quote\\\"d-pass", "contains '\"'"),
        (
            "caf\u{e9}-latte-1",
            "contains a character that is not printable ASCII",
        ),
        (
            "tab\\there-x",
            "contains a character that is not printable ASCII",
        ),
    ] {
        let m = refused(&format!("  masterPassword: \"{password}\"\n"));
        assert!(
            m.contains(&format!("spec.masterPassword: {why}")),
            "{password}: {m}"
        );
        let raw = password.replace("\\\"", "\"").replace("\\t", "\t");
        assert!(!m.contains(&raw), "the password is echoed: {m}");
    }
    let long = "x".repeat(129);
    let m = refused(&format!("  masterPassword: {long}\n"));
    assert!(m.contains("spec.masterPassword: has 129 characters"), "{m}");
    assert!(!m.contains(&long), "{m}");
    admitted_cluster(&format!("  masterPassword: \"{}\"\n", "x".repeat(128)));
    admitted_cluster("  masterPassword: \"a!#$%&'()*+,-.:;<=>?[]^_`{|}~\"\n");
}

#[test]
fn the_master_username_is_an_identifier_postgres_does_not_reserve() {
    let (longest, too_long) = ("u".repeat(63), "u".repeat(64));
    for name in ["admin", "Admin_2", "a", longest.as_str()] {
        admitted_cluster(&format!(
            "  masterPassword: s3cret-pass\n  masterUsername: {name}\n"
        ));
    }
    for (name, why) in [
        ("public", "is a role name PostgreSQL reserves"),
        ("NONE", "is a role name PostgreSQL reserves"),
        ("current_user", "is a role name PostgreSQL reserves"),
        (
            "pg_admin",
            "is reserved: names starting with \"pg_\" are PostgreSQL's",
        ),
        ("_admin", "is not a user name"),
        ("ad-min", "is not a user name"),
        (too_long.as_str(), "is not a user name"),
    ] {
        let m = refused(&format!(
            "  masterPassword: s3cret-pass\n  masterUsername: {name}\n"
        ));
        assert!(
            m.contains(&format!("spec.masterUsername: {name:?} {why}")),
            "{name}: {m}"
        );
    }
}

#[test]
fn the_database_name_is_empty_or_a_new_identifier() {
    admitted_cluster("  masterPassword: s3cret-pass\n  databaseName: orders_2\n");
    for name in ["9lives", "has space", "template1", "postgres"] {
        let m = refused(&format!(
            "  masterPassword: s3cret-pass\n  databaseName: \"{name}\"\n"
        ));
        assert!(m.contains("spec.databaseName: "), "{name}: {m}");
    }
    assert!(
        refused("  masterPassword: s3cret-pass\n  databaseName: postgres\n")
            .contains("exists in every cluster")
    );
}

#[test]
fn multi_az_deployments_need_a_zone_per_member_when_zones_are_given() {
    let m = refused(
        "  masterPassword: s3cret-pass\n  deployment: multiAZCluster\n  zones: [az-a, az-b]\n",
    );
    assert!(
        m.contains("spec.zones: multiAZCluster needs 3 different zones, one per member (2 given)"),
        "{m}"
    );
    let m =
        refused("  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  zones: [az-a]\n");
    assert!(
        m.contains("spec.zones: multiAZInstance needs 2 different zones"),
        "{m}"
    );
    // A duplicate does not count twice.
    let m = refused(
        "  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  zones: [az-a, az-a]\n",
    );
    assert!(m.contains("spec.zones: multiAZInstance needs 2"), "{m}");
    for ok in [
        "  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  zones: [az-a, az-b]\n",
        "  masterPassword: s3cret-pass\n  deployment: multiAZCluster\n",
        "  masterPassword: s3cret-pass\n  zones: [az-a]\n",
    ] {
        admitted_cluster(ok);
    }
}

#[test]
fn a_good_multi_az_cluster_is_accepted() {
    let o = admitted_cluster(
        "  deployment: multiAZCluster\n  instanceClass: db.r5.large\n  storageGib: 50\n  port: 15432\n  masterUsername: admin\n  masterPassword: 'n0t-so-secret!'\n  databaseName: orders\n  zones: [az-a, az-b, az-c]\n  readReplicas: {count: 1}\n  deletionProtection: true\n",
    );
    assert_eq!(cluster_of(&o).spec.as_ref().unwrap().port, Some(15432));
}

#[test]
fn a_live_db_cluster_keeps_its_engine_deployment_user_database_port_and_zones() {
    let base = "  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  masterUsername: admin\n  databaseName: orders\n  port: 15432\n  zones: [az-a, az-b]\n";
    let old = admitted_cluster(base);
    let mut new = cluster(
        "  masterPassword: s3cret-pass\n  deployment: multiAZCluster\n  masterUsername: root\n  databaseName: sales\n  port: 25432\n  zones: [az-a, az-b, az-c]\n",
    );
    let m = message(admit(&mut new, Some(&old)));
    for want in [
        "spec.deployment: is immutable (was \"multiAZInstance\", asked \"multiAZCluster\")",
        "spec.masterUsername: is immutable",
        "spec.databaseName: is immutable",
        "spec.port: is immutable (was 15432, asked 25432)",
        "spec.zones: is immutable",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
    // Leaving the port out means the default, which is a change too.
    let mut new = cluster(
        "  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  masterUsername: admin\n  databaseName: orders\n  zones: [az-a, az-b]\n",
    );
    assert!(
        message(admit(&mut new, Some(&old)))
            .contains("spec.port: is immutable (was 15432, asked 5432)")
    );
}

#[test]
fn the_engine_is_immutable_even_where_only_one_is_allowed() {
    let old = admitted_cluster("  masterPassword: s3cret-pass\n");
    let mut new = cluster("  masterPassword: s3cret-pass\n  engine: mysql\n");
    let m = message(admit(&mut new, Some(&old)));
    assert!(m.contains("spec.engine: is immutable"), "{m}");
}

#[test]
fn a_live_db_cluster_may_change_its_class_replicas_storage_password_and_settings() {
    let old = admitted_cluster(
        "  masterPassword: s3cret-pass\n  deployment: multiAZInstance\n  zones: [az-a, az-b]\n",
    );
    let mut new = cluster(
        "  masterPassword: an0ther-pass\n  deployment: multiAZInstance\n  zones: [az-a, az-b]\n  instanceClass: db.m5.xlarge\n  storageGib: 200\n  readReplicas: {count: 3, zones: [az-c]}\n  replication: {dataDurability: preferred}\n  failover: {automatic: false, leaseSeconds: 5}\n  deletionProtection: true\n",
    );
    admit(&mut new, Some(&old)).unwrap();
}

#[test]
fn db_storage_only_grows() {
    let old = admitted_cluster("  masterPassword: s3cret-pass\n  storageGib: 100\n");
    let mut new = cluster("  masterPassword: s3cret-pass\n  storageGib: 50\n");
    let m = message(admit(&mut new, Some(&old)));
    assert!(
        m.contains("spec.storageGib: can only grow (was 100, asked 50)"),
        "{m}"
    );
}

fn instance_of(o: &Object) -> &DbInstance {
    match &o.resource {
        Some(Resource::DbInstance(i)) => i,
        other => panic!("not a DBInstance: {other:?}"),
    }
}

#[test]
fn a_db_instance_gets_its_class_and_storage_defaulted() {
    let mut o = instance("{cluster: orders, role: writer, zone: az-a}");
    admit(&mut o, None).unwrap();
    let s = instance_of(&o).spec.clone().unwrap();
    assert_eq!(
        (s.instance_class.as_str(), s.storage_gib),
        ("db.t3.micro", 20)
    );
}

#[test]
fn every_bad_db_instance_field_is_named() {
    let m = message(admit(
        &mut instance("{role: leader, instanceClass: huge}"),
        None,
    ));
    for want in [
        "spec.cluster: required",
        "spec.role: \"leader\" is not allowed; use one of: writer, standby, replica",
        "spec.instanceClass: unknown instance class \"huge\"; known: db.t3.micro",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn a_db_instance_keeps_its_cluster_role_and_zone_and_is_placed_once() {
    let mut old = instance("{cluster: orders, role: standby, zone: az-b}");
    admit(&mut old, None).unwrap();

    // Placing it is allowed, once.
    let mut placed = instance("{cluster: orders, role: standby, zone: az-b, node: mini-2}");
    admit(&mut placed, Some(&old)).unwrap();

    let mut moved = instance("{cluster: sales, role: writer, zone: az-c, node: mini-3}");
    let m = message(admit(&mut moved, Some(&placed)));
    for want in [
        "spec.cluster: is immutable",
        "spec.role: is immutable",
        "spec.zone: is immutable",
        "spec.node: is immutable (was \"mini-2\", asked \"mini-3\")",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
    let mut unplaced = instance("{cluster: orders, role: standby, zone: az-b}");
    assert!(message(admit(&mut unplaced, Some(&placed))).contains("spec.node: is immutable"));

    // Its class and storage may change.
    let mut resized = instance(
        "{cluster: orders, role: standby, zone: az-b, node: mini-2, instanceClass: db.m5.large, storageGib: 40}",
    );
    admit(&mut resized, Some(&placed)).unwrap();
}

#[test]
fn the_example_manifest_is_admitted() {
    let docs = manifest::parse(
        "deploy/examples/db.yaml",
        include_str!("../../../../deploy/examples/db.yaml"),
    )
    .unwrap();
    assert_eq!(docs.len(), 2);
    let mut docs = docs.into_iter().map(|d| d.object);
    let mut group = docs.next().unwrap();
    admit(&mut group, None).unwrap();
    let g = group_of(&group).spec.clone().unwrap();
    assert_eq!(g.parameters["work_mem"], "8MB");
    let mut o = docs.next().unwrap();
    admit(&mut o, None).unwrap();
    let s = cluster_of(&o).spec.clone().unwrap();
    assert_eq!(s.parameter_group, group.name());
    assert_eq!(s.deployment, "multiAZCluster");
    assert_eq!(s.zones, ["az-a", "az-b", "az-c"]);
    assert_eq!(s.port, Some(15432));
    assert_eq!(s.read_replicas.unwrap().count, 1);
}

fn group(spec: &str) -> Object {
    obj(&format!(
        "apiVersion: hanul/v1\nkind: DBParameterGroup\nmetadata: {{name: orders-params}}\nspec:\n{spec}"
    ))
}

fn group_of(o: &Object) -> &DbParameterGroup {
    match &o.resource {
        Some(Resource::DbParameterGroup(g)) => g,
        other => panic!("not a DBParameterGroup: {other:?}"),
    }
}

#[test]
fn a_good_parameter_group_is_accepted_with_its_family_defaulted() {
    let mut o = group(
        "  description: tuned\n  parameters: {work_mem: 64MB, max_connections: '200', auto_explain.log_min_duration: 1s}\n",
    );
    admit(&mut o, None).unwrap();
    let s = group_of(&o).spec.clone().unwrap();
    assert_eq!(s.family, "postgres15");
    assert_eq!(s.parameters.len(), 3);
}

#[test]
fn a_parameter_group_refuses_what_hanul_manages_naming_the_field() {
    let m = message(admit(
        &mut group(
            "  family: postgres16\n  parameters: {port: '6000', ssl_cert_file: x, recovery_target_time: later, Work_Mem: 1MB, work-mem: 1MB, shared_buffers: '', work_mem: \"a\\nb\"}\n",
        ),
        None,
    ));
    for want in [
        "spec.family: \"postgres16\" is not allowed; use one of: postgres15",
        "spec.parameters.port: managed by hanul; ",
        "spec.parameters.ssl_cert_file: managed by hanul; ",
        "spec.parameters.recovery_target_time: managed by hanul; ",
        "spec.parameters.Work_Mem: \"Work_Mem\" is not a PostgreSQL parameter name",
        "spec.parameters.work-mem: \"work-mem\" is not a PostgreSQL parameter name",
        "spec.parameters.shared_buffers: a value is required",
        "spec.parameters.work_mem: the value may not contain a line break",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn a_cluster_names_its_parameter_group_which_may_not_exist_yet() {
    let o = admitted_cluster("  masterPassword: s3cret-pass\n  parameterGroup: not-yet\n");
    assert_eq!(
        cluster_of(&o).spec.as_ref().unwrap().parameter_group,
        "not-yet"
    );
    assert!(
        refused("  masterPassword: s3cret-pass\n  parameterGroup: Bad_Name\n")
            .contains("spec.parameterGroup: \"Bad_Name\" is not a DBParameterGroup name")
    );
    // It may change on a live cluster.
    let mut new = cluster("  masterPassword: s3cret-pass\n  parameterGroup: other\n");
    admit(&mut new, Some(&o)).unwrap();
}

#[test]
fn backups_default_to_seven_days_in_rds_default_window() {
    let o = admitted_cluster("  masterPassword: s3cret-pass\n");
    let b = cluster_of(&o).spec.clone().unwrap().backup.unwrap();
    assert_eq!(
        (b.retention_days, b.preferred_window.as_str()),
        (Some(7), "03:00-03:30")
    );
    let v = hanul_proto::manifest::to_value(&o);
    assert_eq!(v["spec"]["backup"]["retentionDays"], 7);
    assert_eq!(v["spec"]["backup"]["preferredWindow"], "03:00-03:30");
    // Given values are kept, 0 (no automated backups) included.
    let o = admitted_cluster(
        "  masterPassword: s3cret-pass\n  backup: {retentionDays: 0, preferredWindow: '23:45-00:30'}\n",
    );
    let b = cluster_of(&o).spec.clone().unwrap().backup.unwrap();
    assert_eq!(
        (b.retention_days, b.preferred_window.as_str()),
        (Some(0), "23:45-00:30")
    );
    admitted_cluster("  masterPassword: s3cret-pass\n  backup: {retentionDays: 35}\n");
}

#[test]
fn the_backtrack_window_is_at_most_72_hours_and_needs_backups() {
    let o = admitted_cluster("  masterPassword: s3cret-pass\n  backtrackWindow: 259200\n");
    assert_eq!(
        cluster_of(&o).spec.clone().unwrap().backtrack_window,
        259_200
    );
    let v = hanul_proto::manifest::to_value(&o);
    assert_eq!(v["spec"]["backtrackWindow"], 259_200);
    // Off by default.
    let o = admitted_cluster("  masterPassword: s3cret-pass\n");
    assert_eq!(cluster_of(&o).spec.clone().unwrap().backtrack_window, 0);
    let m = refused("  masterPassword: s3cret-pass\n  backtrackWindow: 259201\n");
    assert!(
        m.contains("spec.backtrackWindow: 259201 is outside 0..259200 (seconds, at most 72 hours"),
        "{m}"
    );
    let m = refused(
        "  masterPassword: s3cret-pass\n  backtrackWindow: 3600\n  backup: {retentionDays: 0}\n",
    );
    assert!(
        m.contains(
            "spec.backtrackWindow: 3600 needs automated backups, and spec.backup.retentionDays is 0"
        ),
        "{m}"
    );
    // Off needs nothing.
    admitted_cluster(
        "  masterPassword: s3cret-pass\n  backtrackWindow: 0\n  backup: {retentionDays: 0}\n",
    );
}

#[test]
fn backup_retention_and_window_are_checked_naming_the_field() {
    let m = refused(
        "  masterPassword: s3cret-pass\n  backup: {retentionDays: 36, preferredWindow: '03:00-03:10'}\n",
    );
    for want in [
        "spec.backup.retentionDays: 36 is outside 0..35",
        "spec.backup.preferredWindow: \"03:00-03:10\" is 10 minutes long; a backup window is at least 30 minutes",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
    let m = refused("  masterPassword: s3cret-pass\n  backup: {preferredWindow: '3am'}\n");
    assert!(
        m.contains("spec.backup.preferredWindow: \"3am\" is not a window; use hh:mm-hh:mm in UTC"),
        "{m}"
    );
}

#[test]
fn encrypted_backups_need_a_key_secret_and_automated_backups() {
    let o = admitted_cluster(
        "  masterPassword: s3cret-pass\n  backupEncrypted: true\n  backupEncryptionKeySecret: {name: orders-backup-key}\n",
    );
    let s = cluster_of(&o).spec.clone().unwrap();
    assert!(s.backup_encrypted);
    assert_eq!(
        s.backup_encryption_key_secret.unwrap().name,
        "orders-backup-key"
    );
    let m = refused("  masterPassword: s3cret-pass\n  backupEncrypted: true\n");
    assert!(
        m.contains("spec.backupEncryptionKeySecret.name: required with spec.backupEncrypted: the Secret holding the key material"),
        "{m}"
    );
    let m = refused(
        "  masterPassword: s3cret-pass\n  backupEncrypted: true\n  backupEncryptionKeySecret: {name: Bad_Name, key: 'a b'}\n  backup: {retentionDays: 0}\n",
    );
    for want in [
        "spec.backupEncryptionKeySecret.name: \"Bad_Name\" is not a Secret name",
        "spec.backupEncryptionKeySecret.key: \"a b\" is not a key",
        "spec.backupEncrypted: needs automated backups, and spec.backup.retentionDays is 0",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
    let m = refused(
        "  masterPassword: s3cret-pass\n  backupEncryptionKeySecret: {name: orders-backup-key}\n",
    );
    assert!(
        m.contains("spec.backupEncryptionKeySecret: only with spec.backupEncrypted: true"),
        "{m}"
    );
}

#[test]
fn backup_encryption_is_fixed_at_creation() {
    let plain = admitted_cluster(PASSWORD);
    let encrypted = "  masterPassword: s3cret-pass\n  backupEncrypted: true\n  backupEncryptionKeySecret: {name: k1}\n";
    let m = message(admit(&mut cluster(encrypted), Some(&plain)));
    assert!(
        m.contains("spec.backupEncrypted: is immutable (was false, asked true)"),
        "{m}"
    );
    let old = admitted_cluster(encrypted);
    let m = message(admit(&mut cluster(PASSWORD), Some(&old)));
    assert!(
        m.contains("spec.backupEncrypted: is immutable (was true, asked false)"),
        "{m}"
    );
    let m = message(admit(
        &mut cluster(
            "  masterPassword: s3cret-pass\n  backupEncrypted: true\n  backupEncryptionKeySecret: {name: k2}\n",
        ),
        Some(&old),
    ));
    assert!(
        m.contains(
            "spec.backupEncryptionKeySecret: is immutable while spec.backupEncrypted is true"
        ),
        "{m}"
    );
    admit(&mut cluster(encrypted), Some(&old)).unwrap();
}

const PASSWORD: &str = "  masterPassword: s3cret-pass\n";

fn with_source(source: &str) -> String {
    format!("{PASSWORD}  source: {source}\n")
}

#[test]
fn a_cluster_may_start_from_a_snapshot_or_a_point_in_time_of_another() {
    for source in [
        "{snapshot: orders-2024-05-01}",
        "{cluster: sales, restoreTime: '2024-05-01T10:00:00Z'}",
        "{cluster: sales, useLatestRestorableTime: true}",
        "{cluster: sales, clone: true}",
        "{}",
    ] {
        admitted_cluster(&with_source(source));
    }
    let o = admitted_cluster(&with_source("{snapshot: snap-1}"));
    assert_eq!(
        cluster_of(&o)
            .spec
            .as_ref()
            .unwrap()
            .source
            .as_ref()
            .unwrap()
            .snapshot,
        "snap-1"
    );
}

#[test]
fn a_source_is_a_snapshot_or_a_cluster_not_both() {
    let m = refused(&with_source(
        "{snapshot: snap-1, cluster: sales, useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains(
            "spec.source: name a snapshot or a cluster (to restore to a point in time or clone), \
             not both"
        ),
        "{m}"
    );
}

#[test]
fn source_names_must_be_names() {
    let m = refused(&with_source("{snapshot: Snap_1}"));
    assert!(
        m.contains("spec.source.snapshot: \"Snap_1\" is not a DBSnapshot name"),
        "{m}"
    );
    let m = refused(&with_source(
        "{cluster: Sales_DB, useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains("spec.source.cluster: \"Sales_DB\" is not a DBCluster name"),
        "{m}"
    );
}

#[test]
fn a_point_in_time_restore_needs_exactly_one_time() {
    let m = refused(&with_source("{cluster: sales}"));
    assert!(
        m.contains("spec.source.restoreTime: required with spec.source.cluster"),
        "{m}"
    );
    let m = refused(&with_source(
        "{cluster: sales, restoreTime: '2024-05-01T10:00:00Z', useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains("spec.source: restoreTime and useLatestRestorableTime exclude each other"),
        "{m}"
    );
}

#[test]
fn a_restore_time_without_a_cluster_is_refused() {
    let m = refused(&with_source("{restoreTime: '2024-05-01T10:00:00Z'}"));
    assert!(
        m.contains("spec.source.restoreTime: only with spec.source.cluster"),
        "{m}"
    );
    let m = refused(&with_source(
        "{snapshot: snap-1, useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains("spec.source.useLatestRestorableTime: only with spec.source.cluster"),
        "{m}"
    );
}

#[test]
fn a_clone_copies_a_cluster_as_it_is_now_so_takes_no_time() {
    let o = admitted_cluster(&with_source("{cluster: sales, clone: true}"));
    let source = cluster_of(&o)
        .spec
        .as_ref()
        .unwrap()
        .source
        .clone()
        .unwrap();
    assert!(source.clone, "{source:?}");
    assert_eq!(
        (source.cluster.as_str(), source.restore_time),
        ("sales", None)
    );
    // `clone: false` is no clone: the old rule stands.
    let m = refused(&with_source("{cluster: sales, clone: false}"));
    assert!(
        m.contains("spec.source.restoreTime: required with spec.source.cluster"),
        "{m}"
    );
    for (source, field) in [
        (
            "{cluster: sales, clone: true, restoreTime: '2024-05-01T10:00:00Z'}",
            "spec.source.restoreTime",
        ),
        (
            "{cluster: sales, clone: true, useLatestRestorableTime: true}",
            "spec.source.useLatestRestorableTime",
        ),
    ] {
        let m = refused(&with_source(source));
        assert!(
            m.contains(&format!(
                "{field}: not allowed with spec.source.clone (a clone copies the data as it is \
                 now)"
            )),
            "{source}: {m}"
        );
        // Only the field that is set is named, and nothing asks for a time.
        assert!(!m.contains("required with"), "{source}: {m}");
        assert_eq!(
            m.matches("not allowed with spec.source.clone").count(),
            1,
            "{m}"
        );
    }
    // Both times: each is named.
    let m = refused(&with_source(
        "{cluster: sales, clone: true, restoreTime: '2024-05-01T10:00:00Z', \
         useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains("spec.source.restoreTime: not allowed with spec.source.clone"),
        "{m}"
    );
    assert!(
        m.contains("spec.source.useLatestRestorableTime: not allowed with spec.source.clone"),
        "{m}"
    );
}

#[test]
fn a_clone_needs_a_cluster_and_is_no_snapshot_restore() {
    let m = refused(&with_source("{clone: true}"));
    assert!(
        m.contains("spec.source.clone: needs spec.source.cluster"),
        "{m}"
    );
    let m = refused(&with_source("{snapshot: snap-1, clone: true}"));
    assert!(
        m.contains("spec.source.clone: needs spec.source.cluster"),
        "{m}"
    );
    assert!(
        m.contains("spec.source.clone: not allowed with spec.source.snapshot"),
        "{m}"
    );
    let m = refused(&with_source(
        "{snapshot: snap-1, cluster: sales, clone: true}",
    ));
    assert!(
        m.contains("spec.source.clone: not allowed with spec.source.snapshot"),
        "{m}"
    );
    // A time without a cluster is named once, as not allowed with the clone.
    let m = refused(&with_source(
        "{clone: true, restoreTime: '2024-05-01T10:00:00Z'}",
    ));
    assert!(
        m.contains("spec.source.restoreTime: not allowed with spec.source.clone"),
        "{m}"
    );
    assert!(!m.contains("only with spec.source.cluster"), "{m}");
    // The cluster's name is checked as for a point-in-time restore.
    let m = refused(&with_source("{cluster: Sales_DB, clone: true}"));
    assert!(
        m.contains("spec.source.cluster: \"Sales_DB\" is not a DBCluster name"),
        "{m}"
    );
    let m = refused(&with_source("{cluster: orders, clone: true}"));
    assert!(
        m.contains("spec.source.cluster: \"orders\" is this cluster"),
        "{m}"
    );
}

#[test]
fn a_cluster_cannot_be_restored_from_itself() {
    let m = refused(&with_source(
        "{cluster: orders, useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains("spec.source.cluster: \"orders\" is this cluster"),
        "{m}"
    );
}

#[test]
fn the_source_is_fixed_at_creation() {
    let old = admitted_cluster(&with_source("{snapshot: snap-1}"));
    // The same source, and other changes, pass.
    let mut same = cluster(&format!(
        "{}  instanceClass: db.m5.large\n",
        with_source("{snapshot: snap-1}")
    ));
    admit(&mut same, Some(&old)).unwrap();
    for (source, asked) in [
        ("{snapshot: snap-2}", "snapshot \"snap-2\""),
        (
            "{cluster: sales, restoreTime: '2024-05-01T10:00:00Z'}",
            "cluster \"sales\" at 2024-05-01T10:00:00",
        ),
        (
            "{cluster: sales, clone: true}",
            "clone of cluster \"sales\"",
        ),
        ("{}", "none"),
    ] {
        let mut new = cluster(&with_source(source));
        let m = message(admit(&mut new, Some(&old)));
        assert!(
            m.contains(&format!(
                "spec.source: is immutable (was snapshot \"snap-1\", asked {asked}"
            )),
            "{source}: {m}"
        );
    }
    // Nor can a cluster made empty be given a source later.
    let plain = admitted_cluster(PASSWORD);
    let mut new = cluster(&with_source("{snapshot: snap-1}"));
    let m = message(admit(&mut new, Some(&plain)));
    assert!(
        m.contains("spec.source: is immutable (was none, asked snapshot \"snap-1\")"),
        "{m}"
    );
    // An empty source is none.
    let mut empty = cluster(&with_source("{}"));
    admit(&mut empty, Some(&plain)).unwrap();
}

#[test]
fn the_master_password_may_come_from_a_secret_instead() {
    admitted_cluster("  masterPasswordSecret: {name: orders-pw}\n");
    admitted_cluster("  masterPasswordSecret: {name: orders-pw, key: pg-password}\n");
    let m = refused("  masterPassword: s3cret-pass\n  masterPasswordSecret: {name: orders-pw}\n");
    assert!(
        m.contains("spec.masterPassword: not allowed with spec.masterPasswordSecret"),
        "{m}"
    );
    let m = refused("  masterPasswordSecret: {name: Bad_Name, key: \"a b\"}\n");
    assert!(
        m.contains("spec.masterPasswordSecret.name: \"Bad_Name\" is not a Secret name"),
        "{m}"
    );
    assert!(
        m.contains("spec.masterPasswordSecret.key: \"a b\" is not a key"),
        "{m}"
    );
    let m = refused("  masterPassword: s3cret-pass\n  finalSnapshotIdentifier: Not_Ok\n");
    assert!(
        m.contains("spec.finalSnapshotIdentifier: \"Not_Ok\" is not a DBSnapshot name"),
        "{m}"
    );
}

#[test]
fn a_secret_needs_data_with_valid_keys_and_never_echoes_a_value() {
    let mut s = obj(
        "apiVersion: hanul/v1\nkind: Secret\nmetadata: {name: pw}\nspec: {data: {password: hunter2-value}}\n",
    );
    admit(&mut s, None).unwrap();
    let m = message(admit(
        &mut obj(
            "apiVersion: hanul/v1\nkind: Secret\nmetadata: {name: pw}\nspec: {data: {\"bad key\": hunter2-value}}\n",
        ),
        None,
    ));
    assert!(m.contains("spec.data.bad key: is not a key"), "{m}");
    assert!(!m.contains("hunter2"), "{m}");
    let m = message(admit(
        &mut obj("apiVersion: hanul/v1\nkind: Secret\nmetadata: {name: pw}\nspec: {}\n"),
        None,
    ));
    assert!(m.contains("spec.data: required"), "{m}");
}

#[test]
fn the_maintenance_window_is_weekly_and_defaulted() {
    let c = admitted_cluster("  masterPassword: s3cret-pass\n");
    let spec = cluster_of(&c).spec.clone().unwrap();
    assert_eq!(
        spec.maintenance.unwrap().preferred_window,
        "sun:05:00-sun:05:30"
    );
    admitted_cluster(
        "  masterPassword: s3cret-pass\n  maintenance: {preferredWindow: \"sat:23:45-sun:00:30\"}\n",
    );
    let m = refused(
        "  masterPassword: s3cret-pass\n  maintenance: {preferredWindow: \"sun:05:00-sun:05:10\"}\n",
    );
    assert!(
        m.contains("spec.maintenance.preferredWindow: \"sun:05:00-sun:05:10\" is 10 minutes long"),
        "{m}"
    );
}

#[test]
fn a_cluster_may_restore_the_retained_automated_backups_of_a_deleted_one_to_a_time() {
    for source in [
        "{automatedBackup: orders, restoreTime: '2024-05-01T10:00:00Z'}",
        "{automatedBackup: orders-1a2b3c4d, useLatestRestorableTime: true}",
    ] {
        admitted_cluster(&with_source(source));
    }
    let m = refused(&with_source("{automatedBackup: orders}"));
    assert!(
        m.contains("spec.source.restoreTime: required with spec.source.automatedBackup"),
        "{m}"
    );
    let m = refused(&with_source(
        "{automatedBackup: orders, cluster: sales, clone: true, snapshot: s}",
    ));
    for field in [
        "spec.source.cluster",
        "spec.source.clone",
        "spec.source.snapshot",
    ] {
        assert!(
            m.contains(&format!(
                "{field}: not allowed with spec.source.automatedBackup"
            )),
            "{m}"
        );
    }
    let m = refused(&with_source(
        "{automatedBackup: Orders_1, useLatestRestorableTime: true}",
    ));
    assert!(
        m.contains(
            "spec.source.automatedBackup: \"Orders_1\" is not a DBClusterAutomatedBackup name"
        ),
        "{m}"
    );
    // deleteAutomatedBackups is a plain choice, false included.
    admitted_cluster(&format!("{PASSWORD}  deleteAutomatedBackups: false\n"));
}

#[test]
fn an_automated_backup_record_names_its_cluster_for_good() {
    let record = |cluster: &str, uid: &str| {
        obj(&format!(
            "apiVersion: hanul/v1\nkind: DBClusterAutomatedBackup\nmetadata: {{name: orders}}\nspec: {{dbCluster: {cluster:?}, dbClusterResourceId: {uid:?}}}\n"
        ))
    };
    let mut old = record("orders", "uid-1");
    admit(&mut old, None).unwrap();
    let m = message(admit(&mut record("", ""), None));
    assert!(m.contains("spec.dbCluster: required"), "{m}");
    assert!(m.contains("spec.dbClusterResourceId: required"), "{m}");
    let m = message(admit(&mut record("orders", "uid-2"), Some(&old)));
    assert!(m.contains("spec.dbClusterResourceId"), "{m}");
    assert!(m.contains("immutable"), "{m}");
}
