//! The agent's side of the managed databases (RDS): runs the PostgreSQL members
//! (`DBInstance`s) placed on this node and the endpoints of the clusters whose endpoints are
//! here, following the protocol of [`hanul_proto::db`].
//!
//! ```text
//!  watch DBInstance, DBCluster ──▶ one task per member on this node ──▶ plan::decide ──▶ step
//!        │                          (woken by changes, its postgres exiting, a tick)   │
//!        │                                      DBInstance.status (role, epoch, WAL, lease, vote) ◀┘
//!        └──▶ endpoints::resolve ──▶ a DataPlane of its own (writer :port, reader :port+1):
//!                   │                 the proxy, for remote clients (and all, without nft)
//!                   └──▶ kernel::endpoints ──▶ nft::KernelPath: nftables DNAT for this
//!                                              host's own clients, fenced, self-expiring
//! ```
//!
//! Members run on a [`ProcessDriver`] of their own (state in `data_dir/db/driver`, cgroups
//! under `hanul/<node>-db`), so the instance loop's sweep never sees them; each member's
//! directory is `data_dir/db/<member>` (PostgreSQL's data, socket, logs and `member.json`, what
//! the node remembers of it: its port, the epoch and role it last acted on). After an agent
//! restart the driver re-adopts the running postgres processes; the member's task queries
//! them and carries on without restarting them.
//!
//! The endpoints have two paths, as kube-proxy's iptables and userspace modes: the proxy
//! always listens; with `--db-endpoints auto` (nft usable) or `kernel`, connections this host
//! opens to an endpoint are DNATed by the kernel straight to the target ([`kernel`], [`nft`]),
//! which spares them the userspace hop. Both follow the same resolved targets, and both cut
//! a former writer's connections.
//!
//! Each member also applies its cluster's `DBParameterGroup` (watched too): the parameters go
//! to `hanul-params.conf`, what PostgreSQL refuses is left out, and the member's status says
//! whether PostgreSQL runs with them (`parameterApplyStatus`).
//!
//! Members whose `DBInstance` is gone or placed elsewhere (deleted while the agent was away)
//! get a task too, from the sweep: it finds them gone, stops them and removes their files.

pub mod endpoints;
pub mod exec;
pub mod kernel;
pub mod member;
pub mod metrics;
pub mod nft;
pub mod plan;
pub mod snapshots;

pub use nft::{EndpointMode, KernelPath};

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hanul_controllers::runtime::{Cache, Shutdown};
use hanul_db::{Binaries, Member};
use hanul_lb::DataPlane;
use hanul_proto::events::Recorder;
use hanul_proto::v1::SecretKeyRef;
use hanul_proto::v1::object::Resource;
use hanul_proto::{Client, Kind};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::driver::{ProcessDriver, WorkloadDriver};
use crate::instances::ports::{PortRange, host_port_is_free};

/// The finalizer an agent puts on the DB members it runs (`hanul_proto::db::MEMBER_FINALIZER`).
pub const FINALIZER: &str = hanul_proto::db::MEMBER_FINALIZER;
/// How often the supervisor looks at everything without a change.
const RESYNC: Duration = Duration::from_secs(1);
/// How often leftovers (workloads and directories without a task) are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The driver's directory under `data_dir/db`.
const DRIVER_DIR: &str = "driver";
/// The key in a backup encryption Secret's data when its reference names none.
const BACKUP_KEY_DEFAULT: &str = "key";

/// What the DB loop needs to know about its node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    /// The node's address: members and endpoints listen on it.
    pub address: String,
    pub data_dir: PathBuf,
    /// The node's `--port-range`: members' ports come from it.
    pub ports: PortRange,
    /// Where WAL archives (`wal/<cluster>-<uid>`) and snapshots (`snapshots/<name>-<uid>`)
    /// go: shared by the agents of a cluster.
    pub backup_dir: PathBuf,
    /// How often a writer with new WAL closes its WAL file for the archive.
    pub archive_interval: Duration,
    /// Where the members' figures go (the agent's `/metrics`).
    pub metrics: Arc<metrics::Metrics>,
    /// What the members placed here hold (their instance classes), for the node's heartbeat.
    pub held: Arc<Mutex<crate::system::Capacity>>,
}

/// The CPU and memory the members placed on `node` hold: their instance classes.
pub fn held_by(instances: &[Arc<hanul_proto::v1::Object>], node: &str) -> crate::system::Capacity {
    instances
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::DbInstance(i))
                if o.metadata().is_some_and(|m| m.deleted_at.is_none()) =>
            {
                i.spec.as_ref().filter(|s| s.node == node)
            }
            _ => None,
        })
        .filter_map(|s| hanul_proto::db::instance_class(&s.instance_class))
        .fold(crate::system::Capacity::default(), |a, c| {
            crate::system::Capacity {
                cpu_millis: a.cpu_millis + c.vcpus * 1000,
                memory_mib: a.memory_mib + c.memory_mib,
            }
        })
}

/// Shared by the member tasks.
pub struct Context {
    pub client: Client,
    pub driver: Arc<dyn WorkloadDriver>,
    pub recorder: Recorder,
    pub node: String,
    pub address: String,
    /// `data_dir/db`.
    pub dir: PathBuf,
    pub ports: PortRange,
    pub backup_dir: PathBuf,
    pub archive_interval: Duration,
    pub metrics: Arc<metrics::Metrics>,
    /// None when PostgreSQL is not installed: members say so in their status.
    pub bin: Option<Binaries>,
    pub instances: Cache,
    pub clusters: Cache,
    /// The clusters' DBParameterGroups: a change wakes every member (the loop below wakes all
    /// tasks on any change), and each applies its cluster's group.
    pub parameter_groups: Cache,
    /// Secrets: a cluster's `masterPasswordSecret`.
    pub secrets: Cache,
    /// DBSnapshots: those assigned to this node's members are taken here.
    pub snapshots: Cache,
    /// The snapshots with a task running here.
    snapshot_tasks: Mutex<HashSet<String>>,
    /// The running member tasks, and how to wake each.
    tasks: Mutex<HashMap<String, Arc<Notify>>>,
    /// Ports given to members by this agent (port → member): two members choosing at once
    /// must not both take a port neither has written down yet.
    claimed: Mutex<HashMap<u16, String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("node", &self.node).finish()
    }
}

impl Context {
    /// The member `name` of `cluster` that this node runs, as PostgreSQL knows it (its port
    /// from `member.json`), to take a snapshot of or to copy; with the Secret its backups are
    /// encrypted with, if they are. An error says why there is none here.
    pub(super) fn member_here(
        &self,
        name: &str,
        cluster: &str,
    ) -> std::result::Result<(Member, Option<SecretKeyRef>), String> {
        let bin = self
            .bin
            .clone()
            .ok_or("PostgreSQL 15 is not installed on this node")?;
        let root = self.dir.join(name);
        let local = member::load_local(&root)
            .ok_or_else(|| format!("member {name} has no data on this node"))?;
        let spec = match self
            .clusters
            .get(Kind::DbCluster, cluster)
            .map(|o| o.resource.clone())
        {
            Some(Some(Resource::DbCluster(c))) => c.spec.unwrap_or_default(),
            _ => return Err(format!("DB cluster {cluster} not found")),
        };
        let mut m = Member::new(bin, &root, local.port, &spec.master_username)
            .map(|m| m.with_exec(Arc::new(exec::ReapedExec)))
            .map_err(|e| e.to_string())?;
        m.backup_key = self.backup_key(&spec).map_err(|e| e.to_string())?;
        let key_ref = spec
            .backup_encryption_key_secret
            .filter(|_| spec.backup_encrypted);
        Ok((m, key_ref))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn forget_task(&self, name: &str) {
        self.tasks().remove(name);
    }

    /// A port for a new member: from the top of the node's range down (instances take theirs
    /// from the bottom up), not held by another member here and free on the host.
    pub(crate) fn pick_port(&self, member: &str) -> Option<u16> {
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used: HashSet<u16> = claimed
            .iter()
            .filter(|(_, m)| m.as_str() != member)
            .map(|(p, _)| *p)
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy() == member {
                    continue;
                }
                if let Some(l) = member::load_local(&e.path()) {
                    used.insert(l.port);
                }
            }
        }
        let port = (self.ports.low..=self.ports.high)
            .rev()
            .find(|p| !used.contains(p) && host_port_is_free(*p, "tcp"))?;
        claimed.retain(|_, m| m.as_str() != member);
        claimed.insert(port, member.to_owned());
        Some(port)
    }

    /// The cluster's master password: inline, or from its `masterPasswordSecret`.
    pub(crate) fn master_password(
        &self,
        spec: &hanul_proto::v1::DbClusterSpec,
    ) -> Result<String, member::Error> {
        match spec
            .master_password_secret
            .as_ref()
            .filter(|r| !r.name.is_empty())
        {
            None => Ok(spec.master_password.clone()),
            Some(r) => self.secret_value(r, "password", "the master password"),
        }
    }

    /// The key the cluster's backups are encrypted with (`spec.backupEncryptionKeySecret`);
    /// None when they are not encrypted.
    pub(crate) fn backup_key(
        &self,
        spec: &hanul_proto::v1::DbClusterSpec,
    ) -> Result<Option<hanul_db::BackupKey>, member::Error> {
        if !spec.backup_encrypted {
            return Ok(None);
        }
        let r = spec
            .backup_encryption_key_secret
            .clone()
            .unwrap_or_default();
        self.backup_key_in(&r).map(Some)
    }

    /// The key material a `SecretKeyRef` names (its key defaults to "key"). The error names
    /// the Secret and the key, never the material.
    pub(crate) fn backup_key_in(
        &self,
        r: &hanul_proto::v1::SecretKeyRef,
    ) -> Result<hanul_db::BackupKey, member::Error> {
        let what = "the backup encryption key";
        let value = self.secret_value(r, BACKUP_KEY_DEFAULT, what)?;
        hanul_db::BackupKey::new(value).ok_or_else(|| {
            member::Error::Other(format!(
                "Secret {:?} has no usable {what} under {:?}",
                r.name,
                secret_key(r, BACKUP_KEY_DEFAULT)
            ))
        })
    }

    /// The value a `SecretKeyRef` names (`default_key` when it names no key). Errors name
    /// `what`, the Secret and the key, never a value.
    fn secret_value(
        &self,
        r: &hanul_proto::v1::SecretKeyRef,
        default_key: &str,
        what: &str,
    ) -> Result<String, member::Error> {
        let key = secret_key(r, default_key);
        let Some(Some(Resource::Secret(secret))) = self
            .secrets
            .get(Kind::Secret, &r.name)
            .map(|o| o.resource.clone())
        else {
            return Err(member::Error::Other(format!(
                "the Secret {:?} of {what} does not exist",
                r.name
            )));
        };
        secret
            .spec
            .and_then(|s| s.data.get(key).cloned())
            .ok_or_else(|| {
                member::Error::Other(format!("Secret {:?} has no key {key:?} ({what})", r.name))
            })
    }

    /// Starts the task of `name` unless it runs; wakes it either way.
    fn ensure_task(self: &Arc<Self>, name: &str, shutdown: &Shutdown) {
        let mut tasks = self.tasks();
        if let Some(wake) = tasks.get(name) {
            wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        tasks.insert(name.to_string(), wake.clone());
        tokio::spawn(member::run(
            self.clone(),
            name.to_string(),
            wake,
            shutdown.clone(),
        ));
    }

    fn wake(&self, name: &str) {
        if let Some(w) = self.tasks().get(name) {
            w.notify_one();
        }
    }
}

/// Runs the DB members and endpoints of this node until `shutdown`. The members keep running
/// when it returns (a new agent adopts them). `kernel`: the endpoints' kernel path, if used
/// ([`KernelPath::start`]); it is stopped (its rules removed) before this returns.
pub async fn run(
    client: Client,
    settings: Settings,
    kernel: Option<KernelPath>,
    shutdown: Shutdown,
) {
    let dir = settings.data_dir.join("db");
    let driver = match ProcessDriver::new(
        dir.join(DRIVER_DIR),
        format!("hanul/{}-db", settings.node),
    ) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "Cannot start the DB members' process driver: no DB members run on this node.");
            if let Some(k) = kernel {
                k.stop().await;
            }
            return;
        }
    };
    let bin = match Binaries::locate() {
        Ok(b) => Some(b),
        Err(e) => {
            info!(error = %e, "PostgreSQL is not installed: DB members placed here will report it.");
            None
        }
    };
    let changed = Arc::new(Notify::new());
    let start = |kind| crate::watch(&client, &shutdown, kind, &changed);
    let instances = start(Kind::DbInstance);
    let clusters = start(Kind::DbCluster);
    let parameter_groups = start(Kind::DbParameterGroup);
    let snapshots = start(Kind::DbSnapshot);
    let secrets = start(Kind::Secret);
    let driver: Arc<dyn WorkloadDriver> = Arc::new(driver);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), format!("agent/{}", settings.node)),
        client,
        driver: driver.clone(),
        node: settings.node.clone(),
        address: settings.address.clone(),
        dir,
        ports: settings.ports,
        backup_dir: settings.backup_dir.clone(),
        archive_interval: settings.archive_interval,
        metrics: settings.metrics.clone(),
        bin,
        instances,
        clusters,
        parameter_groups,
        snapshots,
        secrets,
        snapshot_tasks: Mutex::new(HashSet::new()),
        tasks: Mutex::new(HashMap::new()),
        claimed: Mutex::new(HashMap::new()),
    });
    ctx.instances.wait_synced().await;
    ctx.clusters.wait_synced().await;
    ctx.parameter_groups.wait_synced().await;
    ctx.snapshots.wait_synced().await;
    ctx.secrets.wait_synced().await;

    // Exits wake their member at once.
    {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let mut exits = driver.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    e = exits.recv() => match e {
                        Ok(e) => ctx.wake(&e.instance),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        });
    }

    let bind: IpAddr = settings
        .address
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut plane: Option<(
        DataPlane,
        tokio::sync::mpsc::UnboundedReceiver<hanul_lb::HealthEvent>,
    )> = None;
    let mut listener_errors: HashMap<u16, String> = HashMap::new();
    let mut last_sweep = tokio::time::Instant::now() - SWEEP_EVERY;
    info!(node = %settings.node, "DB member loop ready.");
    loop {
        *settings.held.lock().unwrap_or_else(PoisonError::into_inner) =
            held_by(&ctx.instances.list_kind(Kind::DbInstance), &ctx.node);
        // Members placed here.
        for o in ctx.instances.list_kind(Kind::DbInstance) {
            if let Some(Resource::DbInstance(i)) = &o.resource
                && i.spec.as_ref().is_some_and(|s| s.node == ctx.node)
            {
                ctx.ensure_task(o.name(), &shutdown);
            }
        }
        // Everyone else of their clusters may have changed too: wake them all (cheap).
        for wake in ctx.tasks().values() {
            wake.notify_one();
        }
        snapshots::reconcile(&ctx, &shutdown);
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            sweep(&ctx, &shutdown);
        }

        // Endpoints.
        let objects: Vec<_> = ctx
            .clusters
            .list_kind(Kind::DbCluster)
            .into_iter()
            .chain(ctx.instances.list_kind(Kind::DbInstance))
            .collect();
        let mut world = endpoints::World::default();
        for o in &objects {
            match &o.resource {
                Some(Resource::DbCluster(c)) => world.clusters.push((o.name(), c)),
                Some(Resource::DbInstance(i)) => world.members.push((o.name(), i)),
                _ => {}
            }
        }
        let config = endpoints::resolve(&world, &ctx.node, bind);
        if let Some(k) = &kernel {
            k.set(kernel::endpoints(&config, &endpoints::leases(&world)));
        }
        if plane.is_none() && !config.listeners.is_empty() {
            // One traffic thread per core, as the load balancers' plane: PostgreSQL's many
            // small messages make the relay's per-message cost count.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            match DataPlane::with_workers(workers) {
                Ok(p) => {
                    info!("DB endpoints' data plane started.");
                    plane = Some(p);
                }
                Err(e) => warn!(error = %e, "Cannot start the DB endpoints' data plane."),
            }
        }
        if let Some((p, health)) = &mut plane {
            while health.try_recv().is_ok() {}
            for state in p.apply(config) {
                let error = state.error.clone().unwrap_or_default();
                if listener_errors.get(&state.port) != Some(&error) {
                    if error.is_empty() {
                        info!(endpoint = %state.load_balancer, port = state.port, "DB endpoint listening.");
                    } else {
                        warn!(endpoint = %state.load_balancer, port = state.port, error = %error, "DB endpoint cannot listen.");
                    }
                    listener_errors.insert(state.port, error);
                }
            }
        }

        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = shutdown.wait() => break,
        }
        // Changes arriving together are looked at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The kernel's rules go before the proxy (dropped on return): local clients are reset
    // rather than left on rules nobody renews.
    if let Some(k) = kernel {
        k.stop().await;
    }
}

/// Gives a task to every member this node holds something of (a workload in the driver, a
/// directory) that has none: the task finds out whether it is still placed here, and if not
/// stops it and removes its files.
fn sweep(ctx: &Arc<Context>, shutdown: &Shutdown) {
    let mut names: HashSet<String> = ctx.driver.list().into_iter().map(|(n, _)| n).collect();
    if let Ok(entries) = std::fs::read_dir(&ctx.dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != DRIVER_DIR && e.path().is_dir() {
                names.insert(name);
            }
        }
    }
    for name in names {
        if !ctx.tasks().contains_key(&name) {
            ctx.ensure_task(&name, shutdown);
        }
    }
}

#[cfg(test)]
mod tests;

/// The key a `SecretKeyRef` names, `default` when empty.
fn secret_key<'a>(r: &'a hanul_proto::v1::SecretKeyRef, default: &'a str) -> &'a str {
    if r.key.is_empty() { default } else { &r.key }
}
