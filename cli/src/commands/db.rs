//! `hanul db ...`: the RDS calls that are not edits of a cluster's manifest — `failover`
//! (FailoverDBCluster: a planned switchover), `reboot` (RebootDBInstance, with
//! `--force-failover`), and two conveniences: `endpoints` prints where to connect and `psql`
//! connects.
//!
//! The cluster's controller owns every decision; `failover` and `reboot` only ask, through
//! annotations on the DBCluster it reads (`hanul_proto::db`): the value carries a request id
//! that is new on every call, so that the same request twice is two requests. The checks made
//! here (does the cluster exist, is the target one of its members and able to take over, is a
//! failover already under way) are there so that a mistyped name is an error rather than an
//! annotation the controller refuses later in an event.

use super::{emit, name_of_kind, request_stamp, update_retrying};
use crate::{
    output::{NONE, Table, or_none},
    target::ref_name,
};
use anyhow::{Context as _, Result, anyhow, bail};
use hanul_proto::{
    Kind,
    db::{
        MEMBER_READ_REPLICA, MEMBER_WRITER, MULTI_AZ_CLUSTER, REBOOT_ANNOTATION, ROLE_REPLICA,
        SINGLE_AZ, STATE_AVAILABLE, SWITCHOVER_ANNOTATION,
    },
    v1::{DbCluster, DbInstance, Object, object::Resource},
};
use std::{
    path::{Path, PathBuf},
    process::{Command as Process, ExitCode},
};

/// Where Debian's PostgreSQL 15 packages put `psql`; `psql` on the PATH otherwise.
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// The database `psql` connects to when the cluster created none of its own.
const DEFAULT_DATABASE: &str = "postgres";
/// What `--force-failover` puts before the request id of a reboot.
const FORCE_FAILOVER: &str = "force-failover";

/// Arguments of `hanul db`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The `hanul db` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Hand the writer role to a standby without losing a commit (a planned switchover).
    Failover(FailoverArgs),
    /// Restart the writer's PostgreSQL in place, or with --force-failover fail over to a
    /// standby instead.
    Reboot(RebootArgs),
    /// Print the writer, reader and per-member endpoints.
    Endpoints(ClusterArgs),
    /// Run psql against the writer endpoint (or the reader's), as the master user.
    Psql(PsqlArgs),
}

/// Arguments of `hanul db failover`.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// The standby to promote (a DBInstance of the cluster); default: the controller's choice,
    /// the standby with the most WAL.
    #[arg(long, value_name = "MEMBER")]
    pub target: Option<String>,
}

/// Arguments of `hanul db reboot`.
#[derive(Debug, clap::Args)]
pub struct RebootArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// Fail over to a standby rather than wait for the writer to restart (multi-AZ only).
    #[arg(long)]
    pub force_failover: bool,
}

/// Arguments of the verbs that take only a cluster.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
}

/// Arguments of `hanul db psql`.
#[derive(Debug, clap::Args)]
pub struct PsqlArgs {
    /// The DBCluster (`orders` or `dbcluster/orders`).
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// Connect to the reader endpoint (read-only, balanced over the readable members).
    #[arg(long)]
    pub reader: bool,
    /// More arguments for psql, after `--` (`-- -c 'select 1'`).
    #[arg(last = true, value_name = "PSQL-ARGS")]
    pub psql_args: Vec<String>,
}

/// Runs `hanul db`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Failover(a) => failover(global, a).await,
        Command::Reboot(a) => reboot(global, a).await,
        Command::Endpoints(a) => endpoints(global, a).await,
        Command::Psql(a) => psql(global, a).await,
    }
}

/// The cluster inside `o`.
pub fn cluster_of(o: &Object) -> Result<&DbCluster> {
    match &o.resource {
        Some(Resource::DbCluster(c)) => Ok(c),
        _ => Err(anyhow!("{} is not a DBCluster", o.key())),
    }
}

fn key(name: &str) -> String {
    ref_name(Kind::DbCluster, name)
}

/// The switchover annotation's value: the target (empty for the controller's choice), `@`,
/// the request id.
pub fn switchover_request(target: Option<&str>, id: &str) -> String {
    format!("{}@{id}", target.unwrap_or(""))
}

/// The reboot annotation's value: the request id, after `force-failover:` when asked.
pub fn reboot_request(force_failover: bool, id: &str) -> String {
    if force_failover {
        format!("{FORCE_FAILOVER}:{id}")
    } else {
        id.to_string()
    }
}

/// The names of the DBInstances of cluster `name` (whose `spec.cluster` names it), sorted.
pub fn members_of<'a>(name: &str, instances: &'a [Object]) -> Vec<&'a DbInstance> {
    let mut members: Vec<&DbInstance> = instances
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbInstance(i)) => Some(i),
            _ => None,
        })
        .filter(|i| i.spec.as_ref().is_some_and(|s| s.cluster == name))
        .collect();
    members.sort_by(|a, b| instance_name(a).cmp(instance_name(b)));
    members
}

fn instance_name(i: &DbInstance) -> &str {
    i.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
}

/// Whether a switchover (`target` given or not) may be asked of `cluster` now: it can have a
/// standby, it has a writer and no failover is under way, and the target is a member that
/// could take over (not the writer, not a read replica).
pub fn check_failover(
    cluster: &DbCluster,
    members: &[&DbInstance],
    target: Option<&str>,
) -> Result<()> {
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let spec = cluster.spec.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    if spec.deployment == SINGLE_AZ {
        bail!(
            "{}: a {SINGLE_AZ} cluster has no standby to fail over to; `hanul db reboot {name}` \
             restarts its writer in place",
            key(name)
        );
    }
    if let Some(f) = &status.failover {
        bail!(
            "{}: a failover is already under way (to epoch {}, replacing {}, {})",
            key(name),
            f.epoch,
            or_none(&f.from),
            or_none(&f.reason)
        );
    }
    if status.writer.is_empty() {
        bail!(
            "{}: there is no writer to hand over from yet (phase {})",
            key(name),
            or_none(&status.phase)
        );
    }
    let Some(target) = target else {
        return Ok(());
    };
    let standbys: Vec<&str> = members
        .iter()
        .filter(|i| {
            let n = instance_name(i);
            n != status.writer && i.spec.as_ref().is_some_and(|s| s.role != ROLE_REPLICA)
        })
        .map(|i| instance_name(i))
        .collect();
    let candidates = if standbys.is_empty() {
        "it has none now".to_string()
    } else {
        format!("its standbys: {}", standbys.join(", "))
    };
    let Some(member) = members.iter().find(|i| instance_name(i) == target) else {
        bail!(
            "{}: {target:?} is not one of its members ({candidates})",
            key(name)
        );
    };
    if target == status.writer {
        bail!(
            "{}: {target} is already the writer ({candidates})",
            key(name)
        );
    }
    if member.spec.as_ref().is_some_and(|s| s.role == ROLE_REPLICA) {
        bail!(
            "{}: {target} is a read replica, which cannot take over ({candidates})",
            key(name)
        );
    }
    Ok(())
}

async fn failover(global: &crate::GlobalArgs, args: FailoverArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let target = args
        .target
        .as_deref()
        .map(|t| name_of_kind(t, Kind::DbInstance))
        .transpose()?;
    let client = global.connect().await?;
    // Before anything else, so that a missing cluster is reported as such.
    client.get(Kind::DbCluster, name).await?;
    let instances = client.list(Some(Kind::DbInstance), "").await?.0;
    let members = members_of(name, &instances);
    let value = switchover_request(target, &request_stamp());
    update_retrying(&client, Kind::DbCluster, name, |o| {
        // Checked on each fresh read, so the request matches what the cluster is doing.
        check_failover(cluster_of(o)?, &members, target)?;
        o.metadata_mut()
            .annotations
            .insert(SWITCHOVER_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    emit(&format!("{} failover requested\n", key(name)))?;
    Ok(ExitCode::SUCCESS)
}

async fn reboot(global: &crate::GlobalArgs, args: RebootArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let value = reboot_request(args.force_failover, &request_stamp());
    update_retrying(&client, Kind::DbCluster, name, |o| {
        let c = cluster_of(o)?;
        if args.force_failover && c.spec.as_ref().is_some_and(|s| s.deployment == SINGLE_AZ) {
            bail!(
                "{}: --force-failover needs a standby, and a {SINGLE_AZ} cluster has none",
                key(name)
            );
        }
        o.metadata_mut()
            .annotations
            .insert(REBOOT_ANNOTATION.to_string(), value.clone());
        Ok(())
    })
    .await?;
    let how = if args.force_failover {
        " with failover"
    } else {
        ""
    };
    emit(&format!("{} reboot{how} requested\n", key(name)))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether a member serves reads through the reader endpoint: read replicas, and the
/// standbys of a multiAZCluster (a multiAZInstance's standby takes no reads).
fn serves_reads(deployment: &str, role: &str) -> bool {
    role == MEMBER_READ_REPLICA || (deployment == MULTI_AZ_CLUSTER && role != MEMBER_WRITER)
}

/// `hanul db endpoints`: the writer endpoint and the member behind it, the reader endpoint
/// and the members it balances over (the writer when none is available), then each member's
/// own endpoint.
pub fn endpoints_table(cluster: &DbCluster) -> Table {
    let spec = cluster.spec.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    let ep = status.endpoints.clone().unwrap_or_default();
    let mut t = Table::new(&["ENDPOINT", "ADDRESS", "MEMBERS", "STATE"]);
    let writer_state = match (&status.failover, status.writer.is_empty()) {
        (Some(_), _) => "failing over: no writes".to_string(),
        (None, true) => NONE.to_string(),
        (None, false) => status
            .members
            .iter()
            .find(|m| m.name == status.writer)
            .map(|m| or_none(&m.state))
            .unwrap_or_else(|| NONE.into()),
    };
    t.push(vec![
        "writer".into(),
        or_none(&ep.writer),
        or_none(&status.writer),
        writer_state,
    ]);
    let readers: Vec<&str> = status
        .members
        .iter()
        .filter(|m| serves_reads(&spec.deployment, &m.role) && m.state == STATE_AVAILABLE)
        .map(|m| m.name.as_str())
        .collect();
    let (readers, reader_state) = if readers.is_empty() {
        (or_none(&status.writer), "the writer (no readable member)")
    } else {
        (readers.join(","), "balanced")
    };
    t.push(vec![
        "reader".into(),
        or_none(&ep.reader),
        readers,
        reader_state.into(),
    ]);
    for m in &status.members {
        let address = ep
            .members
            .get(&m.name)
            .cloned()
            .unwrap_or_else(|| m.address.clone());
        t.push(vec![
            m.name.clone(),
            or_none(&address),
            or_none(&m.role),
            or_none(&m.state),
        ]);
    }
    t
}

async fn endpoints(global: &crate::GlobalArgs, args: ClusterArgs) -> Result<ExitCode> {
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let o = client.get(Kind::DbCluster, name).await?;
    emit(&endpoints_table(cluster_of(&o)?).render())?;
    Ok(ExitCode::SUCCESS)
}

/// Splits `host:port` (`[::1]:5432` too).
fn split_endpoint(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// The `psql` command for `cluster`'s writer endpoint (reader with `reader`): host, port, the
/// master user and the cluster's database, the password in `PGPASSWORD` (never on the command
/// line, where `ps` would show it), then `extra`.
pub fn psql_command(
    cluster: &DbCluster,
    reader: bool,
    extra: &[String],
    psql: &Path,
) -> Result<Process> {
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let spec = cluster.spec.clone().unwrap_or_default();
    let ep = cluster
        .status
        .as_ref()
        .and_then(|s| s.endpoints.clone())
        .unwrap_or_default();
    let (which, endpoint) = if reader {
        ("reader", ep.reader)
    } else {
        ("writer", ep.writer)
    };
    if endpoint.is_empty() {
        bail!(
            "{} has no {which} endpoint yet (see `hanul describe db {name}`)",
            key(name)
        );
    }
    let Some((host, port)) = split_endpoint(&endpoint) else {
        bail!(
            "{}: its {which} endpoint {endpoint:?} is not host:port",
            key(name)
        );
    };
    let database = if spec.database_name.is_empty() {
        DEFAULT_DATABASE
    } else {
        &spec.database_name
    };
    let mut cmd = Process::new(psql);
    cmd.args(["-h", host, "-p", &port.to_string()])
        .args(["-U", &spec.master_username, "-d", database])
        .args(extra)
        .env("PGPASSWORD", &spec.master_password);
    Ok(cmd)
}

/// `psql`: Debian's PostgreSQL 15 one when installed, else the PATH's.
fn psql_path() -> PathBuf {
    let debian = Path::new(PSQL);
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("psql")
    }
}

async fn psql(global: &crate::GlobalArgs, args: PsqlArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let name = name_of_kind(&args.cluster, Kind::DbCluster)?;
    let client = global.connect().await?;
    let o = client.get(Kind::DbCluster, name).await?;
    let path = psql_path();
    let mut cmd = psql_command(cluster_of(&o)?, args.reader, &args.psql_args, &path)?;
    // psql takes the terminal over (its signals, its pager): the CLI has nothing left to do,
    // so it becomes psql rather than waiting for it. `exec` returns only on failure.
    let err = cmd.exec();
    Err(err).with_context(|| {
        format!(
            "running {} (install PostgreSQL 15's client: apt-get install postgresql-client-15)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, UserCommand};
    use clap::Parser;
    use hanul_proto::{
        db::{
            MEMBER_SYNC_STANDBY, MULTI_AZ_INSTANCE, REASON_WRITER_FAILED, ROLE_STANDBY,
            ROLE_WRITER, STATE_CREATING,
        },
        v1::{
            DbClusterMember, DbClusterSpec, DbClusterStatus, DbEndpoints, DbFailover,
            DbInstanceSpec, ObjectMeta,
        },
    };
    use std::ffi::OsStr;

    fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        match Cli::try_parse_from(argv)?.command {
            UserCommand::Db(a) => Ok(a.command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn member(name: &str, role: &str, state: &str) -> DbClusterMember {
        DbClusterMember {
            name: name.into(),
            role: role.into(),
            state: state.into(),
            address: format!("10.0.0.9:4000{}", &name[name.len() - 1..]),
            ..Default::default()
        }
    }

    /// A multiAZCluster whose second member is the writer, with one read replica.
    fn orders() -> DbCluster {
        DbCluster {
            metadata: Some(ObjectMeta {
                name: "orders".into(),
                ..Default::default()
            }),
            spec: Some(DbClusterSpec {
                deployment: MULTI_AZ_CLUSTER.into(),
                master_username: "admin".into(),
                master_password: "hunter2-secret".into(),
                database_name: "orders".into(),
                ..Default::default()
            }),
            status: Some(DbClusterStatus {
                writer: "orders-2".into(),
                epoch: 2,
                members: vec![
                    member("orders-1", MEMBER_SYNC_STANDBY, STATE_AVAILABLE),
                    member("orders-2", MEMBER_WRITER, STATE_AVAILABLE),
                    member("orders-3", MEMBER_SYNC_STANDBY, STATE_CREATING),
                    member("orders-4", MEMBER_READ_REPLICA, STATE_AVAILABLE),
                ],
                endpoints: Some(DbEndpoints {
                    writer: "127.0.0.1:15432".into(),
                    reader: "127.0.0.1:15433".into(),
                    node: "mini-1".into(),
                    members: [("orders-1".to_string(), "127.0.0.1:16001".to_string())]
                        .into_iter()
                        .collect(),
                }),
                ..Default::default()
            }),
        }
    }

    fn instance(name: &str, cluster: &str, role: &str) -> Object {
        DbInstance {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(DbInstanceSpec {
                cluster: cluster.into(),
                role: role.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    fn instances() -> Vec<Object> {
        vec![
            instance("orders-2", "orders", ROLE_STANDBY),
            instance("orders-1", "orders", ROLE_WRITER),
            instance("orders-3", "orders", ROLE_STANDBY),
            instance("orders-4", "orders", ROLE_REPLICA),
            instance("sales-1", "sales", ROLE_WRITER),
        ]
    }

    #[test]
    fn the_db_verbs_parse() {
        for argv in [
            &["hanul", "db", "failover", "orders"][..],
            &[
                "hanul",
                "db",
                "failover",
                "dbcluster/orders",
                "--target",
                "orders-3",
            ],
            &["hanul", "db", "reboot", "orders"],
            &["hanul", "db", "reboot", "orders", "--force-failover"],
            &["hanul", "db", "endpoints", "orders"],
            &["hanul", "db", "psql", "orders", "--reader"],
            &["hanul", "db", "psql", "orders", "--", "-c", "select 1"],
        ] {
            if let Err(e) = parse(argv) {
                panic!("{argv:?}: {e}");
            }
        }
        let Command::Psql(p) =
            parse(&["hanul", "db", "psql", "orders", "--", "-c", "select 1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.psql_args, ["-c", "select 1"]);
        assert!(parse(&["hanul", "db", "failover"]).is_err());
        assert!(parse(&["hanul", "db", "reboot", "orders", "--target", "x"]).is_err());
    }

    #[test]
    fn requests_carry_the_target_and_a_request_id() {
        assert_eq!(switchover_request(Some("orders-3"), "id1"), "orders-3@id1");
        assert_eq!(switchover_request(None, "id1"), "@id1");
        assert_eq!(reboot_request(false, "id1"), "id1");
        assert_eq!(reboot_request(true, "id1"), "force-failover:id1");
        // The id is new on each call and never contains the separator.
        let (a, b) = (request_stamp(), request_stamp());
        assert_ne!(a, b);
        assert!(!a.contains('@'), "{a}");
    }

    #[test]
    fn members_are_the_instances_that_name_the_cluster() {
        let all = instances();
        let names: Vec<&str> = members_of("orders", &all)
            .into_iter()
            .map(instance_name)
            .collect();
        assert_eq!(names, ["orders-1", "orders-2", "orders-3", "orders-4"]);
        assert!(members_of("nope", &all).is_empty());
    }

    #[test]
    fn a_failover_target_must_be_a_standby_of_the_cluster() {
        let c = orders();
        let all = instances();
        let members = members_of("orders", &all);
        check_failover(&c, &members, None).unwrap();
        check_failover(&c, &members, Some("orders-1")).unwrap();
        let err = |t: &str| {
            check_failover(&c, &members, Some(t))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("sales-1"),
            "dbcluster/orders: \"sales-1\" is not one of its members \
             (its standbys: orders-1, orders-3)"
        );
        assert_eq!(
            err("orders-2"),
            "dbcluster/orders: orders-2 is already the writer (its standbys: orders-1, orders-3)"
        );
        assert!(
            err("orders-4").contains("orders-4 is a read replica, which cannot take over"),
            "{}",
            err("orders-4")
        );
    }

    #[test]
    fn no_failover_is_asked_of_a_single_az_cluster_one_without_a_writer_or_during_another() {
        let all = instances();
        let members = members_of("orders", &all);
        let mut single = orders();
        single.spec.as_mut().unwrap().deployment = SINGLE_AZ.into();
        let e = check_failover(&single, &members, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a singleAZ cluster has no standby") && e.contains("hanul db reboot orders"),
            "{e}"
        );
        let mut busy = orders();
        busy.status.as_mut().unwrap().failover = Some(DbFailover {
            epoch: 3,
            from: "orders-2".into(),
            reason: REASON_WRITER_FAILED.into(),
            ..Default::default()
        });
        let e = check_failover(&busy, &members, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders: a failover is already under way (to epoch 3, replacing orders-2, \
             writer-failed)"
        );
        let mut new = orders();
        new.status = None;
        let e = check_failover(&new, &members, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders: there is no writer to hand over from yet (phase <none>)"
        );
        // A multiAZInstance has its standby.
        let mut two = orders();
        two.spec.as_mut().unwrap().deployment = MULTI_AZ_INSTANCE.into();
        check_failover(&two, &members, Some("orders-3")).unwrap();
    }

    #[test]
    fn endpoints_name_the_writer_the_readers_and_each_member() {
        let text = endpoints_table(&orders()).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ENDPOINT   ADDRESS           MEMBERS             STATE",
                "writer     127.0.0.1:15432   orders-2            available",
                "reader     127.0.0.1:15433   orders-1,orders-4   balanced",
                "orders-1   127.0.0.1:16001   syncStandby         available",
                "orders-2   10.0.0.9:40002    writer              available",
                "orders-3   10.0.0.9:40003    syncStandby         creating",
                "orders-4   10.0.0.9:40004    readReplica         available",
            ]
        );
        assert!(!text.contains("hunter2"));
        let empty = endpoints_table(&DbCluster::default()).render();
        assert!(
            empty.contains("writer     <none>    <none>    <none>"),
            "{empty}"
        );
    }

    #[test]
    fn psql_connects_as_the_master_user_with_the_password_in_the_environment() {
        let psql = Path::new("/usr/bin/psql");
        let extra = ["-c".to_string(), "select 1".to_string()];
        let cmd = psql_command(&orders(), false, &extra, psql).unwrap();
        assert_eq!(cmd.get_program(), OsStr::new("/usr/bin/psql"));
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                "-h",
                "127.0.0.1",
                "-p",
                "15432",
                "-U",
                "admin",
                "-d",
                "orders",
                "-c",
                "select 1"
            ]
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            env,
            [(OsStr::new("PGPASSWORD"), Some(OsStr::new("hunter2-secret")))]
        );

        let mut c = orders();
        c.spec.as_mut().unwrap().database_name.clear();
        c.status
            .as_mut()
            .unwrap()
            .endpoints
            .as_mut()
            .unwrap()
            .reader = "[::1]:15433".into();
        let cmd = psql_command(&c, true, &[], psql).unwrap();
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert_eq!(
            args,
            ["-h", "::1", "-p", "15433", "-U", "admin", "-d", "postgres"]
        );

        let mut fresh = orders();
        fresh.status = None;
        let e = psql_command(&fresh, false, &[], psql)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "dbcluster/orders has no writer endpoint yet (see `hanul describe db orders`)"
        );
    }
}
