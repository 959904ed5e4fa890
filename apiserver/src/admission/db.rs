//! Rules for `DBCluster` and `DBInstance`: RDS's defaults and limits (`CreateDBCluster`,
//! `ModifyDBCluster`), and what may change on a live cluster.
//!
//! Every default is written into the spec, optional fields included, so that `get -o yaml`
//! shows the values the cluster runs with. Zones are not defaulted here: the default is the
//! zones of the Ready nodes, which the cluster's controller reads when it places members.
//!
//! Errors about the master password never repeat it: they say what is wrong with it only.
//!
//! `spec.source` is checked for its shape only (one source, names that can be names, a time
//! with a cluster, none with a clone): whether the snapshot or the cluster exists, whether the
//! time is in the source's restorable window, and whether a cluster to clone has a member to
//! copy from, is for the controller to say (the cluster reports it), since admission sees one
//! object at a time.

use super::{Errors, is_dns_name};
use hanul_proto::{
    db::{
        DEFAULT_BACKUP_WINDOW, DEFAULT_INSTANCE_CLASS, DEFAULT_LEASE_SECONDS,
        DEFAULT_MAINTENANCE_WINDOW, DEFAULT_MASTER_USERNAME, DEFAULT_PORT, DEFAULT_RETENTION_DAYS,
        DEFAULT_STORAGE_GIB, DEPLOYMENTS, DURABILITY_PREFERRED, DURABILITY_REQUIRED, ENGINE,
        ENGINE_VERSION, MAX_BACKTRACK_WINDOW_SECONDS, MAX_READ_REPLICAS, MAX_RETENTION_DAYS,
        ROLE_REPLICA, ROLE_STANDBY, ROLE_WRITER, SINGLE_AZ, instance_class, instance_class_names,
        members_of, parse_weekly_window, parse_window,
    },
    v1::{DbCluster, DbClusterSource, DbClusterSpec, DbInstance, DbInstanceSpec, SecretKeyRef},
};
use std::collections::HashSet;

const ENGINES: &[&str] = &[ENGINE];
const ENGINE_VERSIONS: &[&str] = &[ENGINE_VERSION];
const DURABILITIES: &[&str] = &[DURABILITY_REQUIRED, DURABILITY_PREFERRED];
const ROLES: &[&str] = &[ROLE_WRITER, ROLE_STANDBY, ROLE_REPLICA];

/// RDS's storage limits for PostgreSQL (gp2/gp3), in GiB.
const MIN_STORAGE_GIB: u32 = 20;
const MAX_STORAGE_GIB: u32 = 65_536;
/// The writer endpoint's port; the reader endpoint listens on the next one, so the last port
/// is not available. Below 1024 a node agent would need privileges it does not have.
const MIN_PORT: u32 = 1024;
const MAX_PORT: u32 = 65_534;
/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated, silently.
const MAX_IDENTIFIER: usize = 63;
/// RDS's limits on the master password.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;
/// Characters RDS refuses in a master password: they break connection strings and URLs.
const PASSWORD_FORBIDDEN: &[char] = &['/', '"', '@', ' '];
/// The writer's lease, in seconds.
const MIN_LEASE_SECONDS: u32 = 1;
const MAX_LEASE_SECONDS: u32 = 60;
/// Role names PostgreSQL reserves (besides the `pg_` prefix): `initdb -U` and `CREATE ROLE`
/// refuse them.
const RESERVED_ROLES: &[&str] = &[
    "public",
    "none",
    "current_user",
    "current_role",
    "session_user",
];
/// Databases every PostgreSQL cluster has already: `spec.databaseName` is one more.
const BUILTIN_DATABASES: &[&str] = &["postgres", "template0", "template1"];

pub(crate) fn default_cluster(spec: &mut DbClusterSpec) {
    fill(&mut spec.engine, ENGINE);
    fill(&mut spec.engine_version, ENGINE_VERSION);
    fill(&mut spec.deployment, SINGLE_AZ);
    fill(&mut spec.instance_class, DEFAULT_INSTANCE_CLASS);
    spec.storage_gib.get_or_insert(DEFAULT_STORAGE_GIB);
    spec.port.get_or_insert(DEFAULT_PORT);
    fill(&mut spec.master_username, DEFAULT_MASTER_USERNAME);
    let replication = spec.replication.get_or_insert_with(Default::default);
    fill(&mut replication.data_durability, DURABILITY_REQUIRED);
    let failover = spec.failover.get_or_insert_with(Default::default);
    failover.automatic.get_or_insert(true);
    failover.lease_seconds.get_or_insert(DEFAULT_LEASE_SECONDS);
    let backup = spec.backup.get_or_insert_with(Default::default);
    backup.retention_days.get_or_insert(DEFAULT_RETENTION_DAYS);
    fill(&mut backup.preferred_window, DEFAULT_BACKUP_WINDOW);
    let maintenance = spec.maintenance.get_or_insert_with(Default::default);
    fill(
        &mut maintenance.preferred_window,
        DEFAULT_MAINTENANCE_WINDOW,
    );
}

pub(crate) fn default_instance(spec: &mut DbInstanceSpec) {
    fill(&mut spec.instance_class, DEFAULT_INSTANCE_CLASS);
    if spec.storage_gib == 0 {
        spec.storage_gib = DEFAULT_STORAGE_GIB;
    }
}

fn fill(field: &mut String, default: &str) {
    if field.is_empty() {
        *field = default.into();
    }
}

pub(crate) fn validate_cluster(c: &DbCluster, old: Option<&DbCluster>, errs: &mut Errors) {
    let Some(spec) = &c.spec else {
        return errs.add("spec", "required");
    };
    errs.one_of("spec.engine", &spec.engine, ENGINES);
    errs.one_of("spec.engineVersion", &spec.engine_version, ENGINE_VERSIONS);
    errs.one_of("spec.deployment", &spec.deployment, DEPLOYMENTS);
    check_instance_class("spec.instanceClass", &spec.instance_class, errs);
    if let Some(s) = spec.storage_gib {
        check_storage("spec.storageGib", s, errs);
    }
    if let Some(p) = spec.port
        && !(MIN_PORT..=MAX_PORT).contains(&p)
    {
        errs.add(
            "spec.port",
            format!(
                "{p} is outside {MIN_PORT}..{MAX_PORT} (the reader endpoint listens on port + 1)"
            ),
        );
    }
    check_master_username(&spec.master_username, errs);
    match spec.master_password_secret.as_ref() {
        Some(r) if *r != Default::default() => {
            if !spec.master_password.is_empty() {
                errs.add(
                    "spec.masterPassword",
                    "not allowed with spec.masterPasswordSecret: use one of them",
                );
            }
            check_secret_ref(r, "spec.masterPasswordSecret", "password", errs);
        }
        _ => check_master_password(&spec.master_password, errs),
    }
    if !spec.final_snapshot_identifier.is_empty()
        && !is_dns_name(&spec.final_snapshot_identifier, 253)
    {
        errs.add(
            "spec.finalSnapshotIdentifier",
            format!(
                "{:?} is not a DBSnapshot name (lowercase letters, digits, '-' and '.')",
                spec.final_snapshot_identifier
            ),
        );
    }
    if !spec.database_name.is_empty() {
        if let Err(why) = check_identifier(&spec.database_name) {
            errs.add(
                "spec.databaseName",
                format!("{:?} is not a database name: {why}", spec.database_name),
            );
        } else if BUILTIN_DATABASES.contains(&spec.database_name.as_str()) {
            errs.add(
                "spec.databaseName",
                format!(
                    "{:?} exists in every cluster; name another database, or leave it empty \
                     for only \"postgres\"",
                    spec.database_name
                ),
            );
        }
    }
    check_zones(spec, errs);
    if let Some(r) = &spec.read_replicas {
        if r.count > MAX_READ_REPLICAS {
            errs.add(
                "spec.readReplicas.count",
                format!("{} is too many; at most {MAX_READ_REPLICAS}", r.count),
            );
        }
        for (i, z) in r.zones.iter().enumerate() {
            if !is_dns_name(z, 63) {
                errs.add(
                    format!("spec.readReplicas.zones[{i}]"),
                    format!("{z:?} is not a zone name"),
                );
            }
        }
    }
    if let Some(r) = &spec.replication {
        errs.one_of(
            "spec.replication.dataDurability",
            &r.data_durability,
            DURABILITIES,
        );
    }
    // The group itself may come later: the members report it missing until it exists.
    if !spec.parameter_group.is_empty() && !is_dns_name(&spec.parameter_group, 253) {
        errs.add(
            "spec.parameterGroup",
            format!(
                "{:?} is not a DBParameterGroup name (lowercase letters, digits, '-' and '.')",
                spec.parameter_group
            ),
        );
    }
    if let Some(l) = spec.failover.as_ref().and_then(|f| f.lease_seconds)
        && !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&l)
    {
        errs.add(
            "spec.failover.leaseSeconds",
            format!("{l} is outside {MIN_LEASE_SECONDS}..{MAX_LEASE_SECONDS}"),
        );
    }
    if let Some(b) = &spec.backup {
        check_backup(b, errs);
    }
    check_maintenance(spec, errs);
    check_backtrack(spec, errs);
    check_backup_encryption(spec, errs);
    let name = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    if let Some(s) = source(spec) {
        check_source(name, s, errs);
    }

    let Some(old) = old.and_then(|o| o.spec.as_ref()) else {
        return;
    };
    errs.immutable("spec.engine", &old.engine, &spec.engine);
    // Where the data came from is history: changing it would not change the data.
    let (was, asked) = (source(old), source(spec));
    if was != asked {
        errs.add(
            "spec.source",
            format!(
                "is immutable (was {}, asked {})",
                source_text(was),
                source_text(asked)
            ),
        );
    }
    errs.immutable("spec.deployment", &old.deployment, &spec.deployment);
    // As RDS: what encrypted the backups so far must decrypt them (restores, backtracks), and
    // a cluster's archive is never half plain, half encrypted.
    errs.immutable(
        "spec.backupEncrypted",
        old.backup_encrypted,
        spec.backup_encrypted,
    );
    if old.backup_encrypted {
        let key = |s: &DbClusterSpec| s.backup_encryption_key_secret.clone().unwrap_or_default();
        let (was, asked) = (key(old), key(spec));
        if was != asked {
            errs.add(
                "spec.backupEncryptionKeySecret",
                format!(
                    "is immutable while spec.backupEncrypted is true (was {:?}/{:?}, asked {:?}/{:?}): the cluster's snapshots and WAL archive are encrypted with it",
                    was.name, was.key, asked.name, asked.key
                ),
            );
        }
    }
    errs.immutable(
        "spec.masterUsername",
        &old.master_username,
        &spec.master_username,
    );
    errs.immutable("spec.databaseName", &old.database_name, &spec.database_name);
    errs.immutable(
        "spec.port",
        old.port.unwrap_or(DEFAULT_PORT),
        spec.port.unwrap_or(DEFAULT_PORT),
    );
    errs.immutable("spec.zones", &old.zones, &spec.zones);
    // RDS cannot shrink storage either: the data may not fit.
    if let (Some(was), Some(now)) = (old.storage_gib, spec.storage_gib)
        && now < was
    {
        errs.add(
            "spec.storageGib",
            format!("can only grow (was {was}, asked {now})"),
        );
    }
}

fn check_backup(b: &hanul_proto::v1::BackupSettings, errs: &mut Errors) {
    if let Some(d) = b.retention_days
        && d > MAX_RETENTION_DAYS
    {
        errs.add(
            "spec.backup.retentionDays",
            format!("{d} is outside 0..{MAX_RETENTION_DAYS} (days; 0 turns automated backups off)"),
        );
    }
    if let Err(why) = parse_window(&b.preferred_window) {
        errs.add("spec.backup.preferredWindow", why);
    }
}

/// Encrypted backups: a Secret reference that can name one, and automated backups on (what
/// is encrypted is the backup directory's WAL archive and snapshots).
fn check_backup_encryption(spec: &DbClusterSpec, errs: &mut Errors) {
    let r = spec
        .backup_encryption_key_secret
        .clone()
        .unwrap_or_default();
    if !spec.backup_encrypted {
        if r != Default::default() {
            errs.add(
                "spec.backupEncryptionKeySecret",
                "only with spec.backupEncrypted: true (set it, or remove the reference)",
            );
        }
        return;
    }
    if r.name.is_empty() {
        errs.add(
            "spec.backupEncryptionKeySecret.name",
            "required with spec.backupEncrypted: the Secret holding the key material",
        );
    } else {
        check_secret_ref(&r, "spec.backupEncryptionKeySecret", "key", errs);
    }
    if retention_days(spec) == 0 {
        errs.add(
            "spec.backupEncrypted",
            format!(
                "needs automated backups, and spec.backup.retentionDays is 0 (set it to 1..{MAX_RETENTION_DAYS}, or spec.backupEncrypted to false)"
            ),
        );
    }
}

/// Aurora's BacktrackWindow: up to 72 hours, and only with automated backups (a backtrack
/// restores one and replays the WAL archive).
fn check_backtrack(spec: &DbClusterSpec, errs: &mut Errors) {
    let window = spec.backtrack_window;
    if window == 0 {
        return;
    }
    if window > MAX_BACKTRACK_WINDOW_SECONDS {
        errs.add(
            "spec.backtrackWindow",
            format!(
                "{window} is outside 0..{MAX_BACKTRACK_WINDOW_SECONDS} (seconds, at most 72 hours; 0 turns backtracking off)"
            ),
        );
    }
    if retention_days(spec) == 0 {
        errs.add(
            "spec.backtrackWindow",
            format!(
                "{window} needs automated backups, and spec.backup.retentionDays is 0 (set it to 1..{MAX_RETENTION_DAYS}, or the window to 0)"
            ),
        );
    }
}

fn check_maintenance(spec: &DbClusterSpec, errs: &mut Errors) {
    if let Some(m) = &spec.maintenance
        && let Err(why) = parse_weekly_window(&m.preferred_window)
    {
        errs.add("spec.maintenance.preferredWindow", why);
    }
}

/// The cluster's source; an empty one (`source: {}`) is none.
fn source(spec: &DbClusterSpec) -> Option<&DbClusterSource> {
    spec.source
        .as_ref()
        .filter(|s| **s != DbClusterSource::default())
}

/// A source for messages: `snapshot "s1"`, `cluster "orders" at 2024-05-01T10:00:00Z`.
fn source_text(s: Option<&DbClusterSource>) -> String {
    let Some(s) = s else {
        return "none".into();
    };
    let mut parts = Vec::new();
    if !s.snapshot.is_empty() {
        parts.push(format!("snapshot {:?}", s.snapshot));
    }
    if s.clone {
        parts.push("clone of".into());
    }
    if !s.cluster.is_empty() {
        parts.push(format!("cluster {:?}", s.cluster));
    }
    if let Some(t) = &s.restore_time {
        // The proto3 JSON form of a timestamp is RFC 3339.
        let text = serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{}s", t.seconds));
        parts.push(format!("at {text}"));
    }
    if !s.automated_backup.is_empty() {
        parts.push(format!("automated backup {:?}", s.automated_backup));
    }
    if s.use_latest_restorable_time {
        parts.push("at its latest restorable time".into());
    }
    parts.join(" ")
}

/// A restore from the retained automated backups of a deleted cluster: a point in time (given,
/// or the latest restorable one), from nothing else.
fn check_automated_backup_source(s: &DbClusterSource, errs: &mut Errors) {
    if !is_dns_name(&s.automated_backup, 253) {
        errs.add(
            "spec.source.automatedBackup",
            format!(
                "{:?} is not a DBClusterAutomatedBackup name (lowercase letters, digits, '-' and '.')",
                s.automated_backup
            ),
        );
    }
    for (field, set) in [
        ("spec.source.snapshot", !s.snapshot.is_empty()),
        ("spec.source.cluster", !s.cluster.is_empty()),
        ("spec.source.clone", s.clone),
    ] {
        if set {
            errs.add(
                field,
                "not allowed with spec.source.automatedBackup (a restore to a point in time from \
                 the retained automated backups of a deleted cluster)",
            );
        }
    }
    check_restore_time(
        s,
        "required with spec.source.automatedBackup: the time to restore to (or \
         useLatestRestorableTime: true)",
        errs,
    );
}

/// A point in time to restore to: `restoreTime` or `useLatestRestorableTime`, one of them
/// (`required` says what is missing otherwise).
fn check_restore_time(s: &DbClusterSource, required: &str, errs: &mut Errors) {
    match (&s.restore_time, s.use_latest_restorable_time) {
        (Some(_), true) => errs.add(
            "spec.source",
            "restoreTime and useLatestRestorableTime exclude each other; give one",
        ),
        (None, false) => errs.add("spec.source.restoreTime", required),
        (Some(t), false) if t.seconds <= 0 => errs.add(
            "spec.source.restoreTime",
            "is not a time after 1970-01-01T00:00:00Z",
        ),
        _ => {}
    }
}

/// A source is a snapshot, a cluster and a time (given, or its latest restorable one), or a
/// cluster to clone (its data as it is now, so no time).
fn check_source(name: &str, s: &DbClusterSource, errs: &mut Errors) {
    if !s.automated_backup.is_empty() {
        return check_automated_backup_source(s, errs);
    }
    if !s.snapshot.is_empty() && !s.cluster.is_empty() {
        errs.add(
            "spec.source",
            "name a snapshot or a cluster (to restore to a point in time or clone), not both",
        );
    }
    if !s.snapshot.is_empty() && !is_dns_name(&s.snapshot, 253) {
        errs.add(
            "spec.source.snapshot",
            format!(
                "{:?} is not a DBSnapshot name (lowercase letters, digits, '-' and '.')",
                s.snapshot
            ),
        );
    }
    let time_field = if s.restore_time.is_some() {
        "spec.source.restoreTime"
    } else {
        "spec.source.useLatestRestorableTime"
    };
    let at = s.restore_time.is_some() || s.use_latest_restorable_time;
    if s.clone {
        if s.cluster.is_empty() {
            errs.add(
                "spec.source.clone",
                "needs spec.source.cluster: the cluster whose data to copy",
            );
        }
        if !s.snapshot.is_empty() {
            errs.add(
                "spec.source.clone",
                "not allowed with spec.source.snapshot (a clone copies a running cluster's data; \
                 a snapshot is restored without clone)",
            );
        }
        if s.restore_time.is_some() {
            errs.add(
                "spec.source.restoreTime",
                "not allowed with spec.source.clone (a clone copies the data as it is now)",
            );
        }
        if s.use_latest_restorable_time {
            errs.add(
                "spec.source.useLatestRestorableTime",
                "not allowed with spec.source.clone (a clone copies the data as it is now)",
            );
        }
    }
    if s.cluster.is_empty() {
        if at && !s.clone {
            errs.add(
                time_field,
                "only with spec.source.cluster: the cluster to restore to a point in time",
            );
        }
        return;
    }
    if !is_dns_name(&s.cluster, 253) {
        errs.add(
            "spec.source.cluster",
            format!(
                "{:?} is not a DBCluster name (lowercase letters, digits, '-' and '.')",
                s.cluster
            ),
        );
    } else if s.cluster == name {
        errs.add(
            "spec.source.cluster",
            format!(
                "{:?} is this cluster; a point-in-time restore or a clone makes a new cluster \
                 from another's data",
                s.cluster
            ),
        );
    }
    if s.clone {
        // The times were refused above.
        return;
    }
    check_restore_time(
        s,
        "required with spec.source.cluster: the time to restore to (or \
         useLatestRestorableTime: true, or clone: true for a copy as it is now)",
        errs,
    );
}

fn check_instance_class(field: &str, class: &str, errs: &mut Errors) {
    if instance_class(class).is_none() {
        errs.add(
            field,
            format!(
                "unknown instance class {class:?}; known: {}",
                instance_class_names()
            ),
        );
    }
}

fn check_storage(field: &str, gib: u32, errs: &mut Errors) {
    if !(MIN_STORAGE_GIB..=MAX_STORAGE_GIB).contains(&gib) {
        errs.add(
            field,
            format!("{gib} is outside {MIN_STORAGE_GIB}..{MAX_STORAGE_GIB} (GiB)"),
        );
    }
}

/// PostgreSQL's rules for an unquoted identifier, as RDS applies them to the master user and
/// the database name: 1 to 63 letters, digits and '_', starting with a letter.
fn check_identifier(s: &str) -> Result<(), String> {
    const RULE: &str = "use 1 to 63 letters, digits and '_', starting with a letter";
    if s.is_empty() || s.len() > MAX_IDENTIFIER {
        return Err(RULE.into());
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic())
        || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(RULE.into());
    }
    Ok(())
}

fn check_master_username(name: &str, errs: &mut Errors) {
    const FIELD: &str = "spec.masterUsername";
    if let Err(why) = check_identifier(name) {
        return errs.add(FIELD, format!("{name:?} is not a user name: {why}"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("pg_") {
        errs.add(
            FIELD,
            format!("{name:?} is reserved: names starting with \"pg_\" are PostgreSQL's"),
        );
    } else if RESERVED_ROLES.contains(&lower.as_str()) {
        errs.add(
            FIELD,
            format!(
                "{name:?} is a role name PostgreSQL reserves ({})",
                RESERVED_ROLES.join(", ")
            ),
        );
    }
}

/// RDS's rule. The password itself is never part of a message.
fn check_master_password(password: &str, errs: &mut Errors) {
    const FIELD: &str = "spec.masterPassword";
    const RULE: &str =
        "use 8 to 128 printable ASCII characters other than '/', '\"', '@' and space";
    if password.is_empty() {
        return errs.add(FIELD, format!("required: {RULE}"));
    }
    let len = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        errs.add(FIELD, format!("has {len} characters; {RULE}"));
    }
    let mut bad: Vec<String> = Vec::new();
    for c in password.chars() {
        let what = if PASSWORD_FORBIDDEN.contains(&c) {
            format!("{c:?}")
        } else if !c.is_ascii_graphic() {
            // Not printed: a control character or a non-ASCII letter tells little, and this
            // is a secret.
            "a character that is not printable ASCII".into()
        } else {
            continue;
        };
        if !bad.contains(&what) {
            bad.push(what);
        }
    }
    if !bad.is_empty() {
        errs.add(FIELD, format!("contains {}; {RULE}", bad.join(", ")));
    }
}

fn check_zones(spec: &DbClusterSpec, errs: &mut Errors) {
    let mut seen = HashSet::new();
    for (i, z) in spec.zones.iter().enumerate() {
        if !is_dns_name(z, 63) {
            errs.add(
                format!("spec.zones[{i}]"),
                format!("{z:?} is not a zone name"),
            );
        } else if !seen.insert(z) {
            errs.add(format!("spec.zones[{i}]"), format!("{z:?} is listed twice"));
        }
    }
    let members = members_of(&spec.deployment);
    if members > 1 && !spec.zones.is_empty() && seen.len() < members {
        errs.add(
            "spec.zones",
            format!(
                "{} needs {members} different zones, one per member ({} given); list more, or \
                 none for the zones of the Ready nodes",
                spec.deployment,
                seen.len()
            ),
        );
    }
}

pub(crate) fn validate_instance(i: &DbInstance, old: Option<&DbInstance>, errs: &mut Errors) {
    let Some(spec) = &i.spec else {
        return errs.add("spec", "required");
    };
    if spec.cluster.is_empty() {
        errs.add("spec.cluster", "required: the name of its DBCluster");
    } else if !is_dns_name(&spec.cluster, 253) {
        errs.add(
            "spec.cluster",
            format!("{:?} is not a DBCluster name", spec.cluster),
        );
    }
    errs.one_of("spec.role", &spec.role, ROLES);
    check_instance_class("spec.instanceClass", &spec.instance_class, errs);
    check_storage("spec.storageGib", spec.storage_gib, errs);
    if !spec.zone.is_empty() && !is_dns_name(&spec.zone, 63) {
        errs.add("spec.zone", format!("{:?} is not a zone name", spec.zone));
    }
    if !spec.node.is_empty() && !is_dns_name(&spec.node, 253) {
        errs.add("spec.node", format!("{:?} is not a node name", spec.node));
    }

    let Some(old) = old.and_then(|o| o.spec.as_ref()) else {
        return;
    };
    errs.immutable("spec.cluster", &old.cluster, &spec.cluster);
    errs.immutable("spec.role", &old.role, &spec.role);
    errs.immutable("spec.zone", &old.zone, &spec.zone);
    // Placed once, by the controller; its data directory lives on that node.
    if !old.node.is_empty() {
        errs.immutable("spec.node", &old.node, &spec.node);
    }
}

/// A Secret reference at `field`: a Secret's name, and a key (empty: `default_key`).
fn check_secret_ref(r: &SecretKeyRef, field: &str, default_key: &str, errs: &mut Errors) {
    if !is_dns_name(&r.name, 253) {
        errs.add(
            format!("{field}.name"),
            format!(
                "{:?} is not a Secret name (lowercase letters, digits, '-' and '.')",
                r.name
            ),
        );
    }
    let key_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !r.key.is_empty() && !r.key.chars().all(key_chars) {
        errs.add(
            format!("{field}.key"),
            format!(
                "{:?} is not a key (letters, digits, '-', '_' and '.'; default {default_key:?})",
                r.key
            ),
        );
    }
}

/// The automated backups' retention in days (its default when unset; 0: off).
fn retention_days(spec: &DbClusterSpec) -> u32 {
    spec.backup
        .as_ref()
        .and_then(|b| b.retention_days)
        .unwrap_or(DEFAULT_RETENTION_DAYS)
}
