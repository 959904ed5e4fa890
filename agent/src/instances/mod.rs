//! The agent's instance loop: runs the instances bound to this node through their EC2 lifecycle.
//!
//! A controller on the shared runtime (cache, dedup queue, per-key backoff, resync) over all
//! Instances; it acts on those whose `status.node` names this node. Beside the API's changes it
//! is triggered by the driver's exit events, so a process that exits is recorded at once.
//!
//! ```text
//!  bound (status.node = me, pending) ──finalizer, ports, root──▶ driver.start ──▶ running
//!  running ──spec.state=stopped──▶ stopping ──SIGTERM, grace, kill──▶ stopped (store wiped)
//!  running ──process exits──▶ stopped (spec.state=stopped) | shutting-down ▶ terminated
//!                                 per spec.shutdownBehavior
//!  stopped ──spec.state=running──▶ the scheduler binds again (pending) ──▶ launch
//!  any ──delete or spec.state=terminated──▶ shutting-down ──▶ terminated (directory removed
//!        except volumes kept on termination; a delete then drops the finalizer)
//! ```
//!
//! Every step writes the instance's status (with its resourceVersion as precondition) before or
//! after one driver call, so a reconcile that is cut short (an agent killed mid-way) is resumed
//! by the next from what the status and the driver say: the driver re-adopts the processes it
//! ran, and nothing is launched twice.
//!
//! [`sweep`] handles what the loop cannot see: workloads and directories whose instance is gone
//! from the API altogether (deleted while the agent was away) or bound elsewhere.

pub mod launch;
pub mod ports;

use crate::driver::{WorkloadDriver, WorkloadState};
use crate::endpoint::{InstanceMetadata, MetadataSource};
use crate::system::Capacity;
use hanul_controllers::runtime::{
    Action, Cache, Controller, ObjectKey, ReconcileError, Shutdown, default_error_policy,
};
use hanul_proto::{
    Client, Kind,
    autoscaling::LIFECYCLE_STATE_ANNOTATION,
    events::Recorder,
    instance::{
        DesiredState, InstanceState, REBOOT_ANNOTATION, SPOT_INTERRUPTION_ANNOTATION,
        ShutdownBehavior,
    },
    time::now,
    v1::{Instance, InstanceStatus, Object, VolumeAttachment, object::Resource},
};
use launch::{Dirs, Placement};
use ports::PortRange;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::Code;
use tracing::{info, warn};

/// The finalizer an agent puts on the instances it runs: a delete waits until the process is
/// gone and the directory cleaned.
pub const FINALIZER: &str = "hanul.dev/agent";
/// How often the sweep runs (leftover workloads, log rotation, freed memory).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// EC2's state reasons.
const USER_SHUTDOWN: &str = "Client.UserInitiatedShutdown: User initiated shutdown";
const INSTANCE_SHUTDOWN: &str = "Client.InstanceInitiatedShutdown: Instance initiated shutdown";

/// An error of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API call {op} for Instance/{instance} failed")]
    Api {
        op: &'static str,
        instance: String,
        #[source]
        source: tonic::Status,
    },
    #[error("cannot launch instance {instance}: {reason}")]
    Launch { instance: String, reason: String },
    #[error("driver")]
    Driver(#[from] crate::driver::Error),
}

impl ReconcileError for Error {
    fn is_terminal(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.code() == Code::InvalidArgument)
    }
}

/// The loop's settings and shared state.
pub struct Context {
    pub client: Client,
    pub driver: Arc<dyn WorkloadDriver>,
    pub node: String,
    pub zone: String,
    /// The node's address: the instances' private IP.
    pub address: String,
    /// The agent's endpoint, `host:port`, for `HANUL_METADATA_URL`.
    pub endpoint: String,
    pub dirs: Dirs,
    pub ports: PortRange,
    /// SIGTERM to SIGKILL on stop.
    pub stop_grace: Duration,
    recorder: Recorder,
    cache: Cache,
    /// What each instance on this node holds (its type's size), for the heartbeat.
    sizes: Mutex<HashMap<String, Capacity>>,
    /// Host ports given but perhaps not yet visible in the cache.
    given_ports: Mutex<HashMap<String, BTreeMap<String, u32>>>,
    /// The resourceVersion of each instance's last write here: a cached copy older than that
    /// is not acted on (its newer version is on its way through the watch).
    written: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("node", &self.node).finish()
    }
}

/// What [`Context::new`] needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    pub zone: String,
    pub address: String,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub ports: PortRange,
    pub stop_grace: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        driver: Arc<dyn WorkloadDriver>,
        cache: Cache,
        s: Settings,
    ) -> Context {
        Context {
            recorder: Recorder::new(client.clone(), format!("agent/{}", s.node)),
            client,
            driver,
            node: s.node,
            zone: s.zone,
            address: s.address,
            endpoint: s.endpoint,
            dirs: Dirs::new(&s.data_dir),
            ports: s.ports,
            stop_grace: s.stop_grace,
            cache,
            sizes: Mutex::new(HashMap::new()),
            given_ports: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// What the instances on this node hold, for the heartbeat's `allocated`.
    pub fn allocated(&self) -> Capacity {
        let sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        sizes.values().fold(Capacity::default(), |a, s| Capacity {
            cpu_millis: a.cpu_millis + s.cpu_millis,
            memory_mib: a.memory_mib + s.memory_mib,
        })
    }

    fn hold(&self, instance: &str, size: Option<Capacity>) {
        let mut sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        match size {
            Some(s) => sizes.insert(instance.to_string(), s),
            None => sizes.remove(instance),
        };
    }

    fn emit(&self, about: &Object, ty: &'static str, reason: &'static str, message: String) {
        let recorder = self.recorder.clone();
        let about = about.clone();
        tokio::spawn(async move {
            let _ = recorder.emit(&about, ty, reason, message).await;
        });
    }

    /// The instances bound to this node, from the cache.
    fn mine(&self) -> Vec<(Arc<Object>, Instance)> {
        self.cache
            .list_kind(Kind::Instance)
            .into_iter()
            .filter_map(|o| match &o.resource {
                Some(Resource::Instance(i))
                    if i.status.as_ref().is_some_and(|s| s.node == self.node) =>
                {
                    let i = i.clone();
                    Some((o, i))
                }
                _ => None,
            })
            .collect()
    }
}

/// The controller of this node's instances, and a sender the driver's exits go to.
pub fn controller(client: Client, shutdown: Shutdown) -> Controller {
    Controller::new(client, Kind::Instance)
        .named("agent-instances")
        .resync_every(Duration::from_secs(30))
        .shutdown_on(shutdown)
}

/// Runs the loop until shutdown: the controller, the driver's exits, and the sweep.
pub async fn run(controller: Controller, ctx: Arc<Context>, shutdown: Shutdown, workers: usize) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut exits = ctx.driver.subscribe();
    let controller = controller.triggered_by(rx);
    let forward = {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    e = exits.recv() => match e {
                        Ok(e) => { let _ = tx.send(ObjectKey::new(Kind::Instance, e.instance)); }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        }
    };
    let sweeper = {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            ctx.cache.wait_synced().await;
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tick.tick() => sweep(&ctx).await,
                }
            }
        }
    };
    tokio::join!(
        controller.run(reconcile, default_error_policy, ctx, workers),
        forward,
        sweeper
    );
}

/// One step of one instance; see the module doc.
pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(i) = object.as_instance() else {
        return Ok(Action::await_change());
    };
    let name = object.name().to_string();
    {
        let mut written = lock(&ctx.written);
        match written.get(&name) {
            Some(&rv) if object.resource_version() < rv => return Ok(Action::await_change()),
            Some(_) => {
                written.remove(&name);
            }
            None => {}
        }
    }
    let status = i.status.clone().unwrap_or_default();
    if status.node != ctx.node {
        // Not ours (any more): a stopped instance started elsewhere. Nothing of it may run here.
        if ctx.driver.state(&name).is_some() {
            ctx.driver.stop(&name, ctx.stop_grace).await?;
            ctx.driver.forget(&name);
        }
        ctx.hold(&name, None);
        return Ok(Action::await_change());
    }
    let spec = i.spec.clone().unwrap_or_default();
    let meta = object.metadata().cloned().unwrap_or_default();
    let observed = InstanceState::parse(&status.state);
    let desired = DesiredState::parse(&spec.state).unwrap_or(DesiredState::Running);
    if meta.deleted_at.is_some()
        || desired == DesiredState::Terminated
        || matches!(
            observed,
            Some(InstanceState::ShuttingDown | InstanceState::Terminated)
        )
    {
        return terminate(object, &ctx).await;
    }

    let mut object = object;
    if !meta.finalizers.iter().any(|f| f == FINALIZER) {
        let mut o = (*object).clone();
        o.metadata_mut().finalizers.push(FINALIZER.to_string());
        object = Arc::new(call(&ctx, &name, "update", ctx.client.update(o)).await?);
    }

    match (desired, ctx.driver.state(&name)) {
        (DesiredState::Running, Some(WorkloadState::Running { pid, .. })) => {
            let reboot = meta.annotations.get(REBOOT_ANNOTATION).cloned();
            if let Some(at) = reboot.filter(|at| *at != status.reboot_handled) {
                ctx.driver.stop(&name, ctx.stop_grace).await?;
                ctx.driver.forget(&name);
                ctx.emit(
                    &object,
                    "Normal",
                    "Rebooting",
                    "rebooting at the user's request".into(),
                );
                return launch(object, &ctx, Some(at)).await;
            }
            ensure_size(&ctx, &object).await;
            if observed != Some(InstanceState::Running) || status.pid != i64::from(pid) {
                // Launched by a reconcile cut short, or re-adopted: record what runs.
                write_status(&ctx, &object, |s| {
                    set_state(s, InstanceState::Running);
                    s.pid = i64::from(pid);
                })
                .await?;
            }
            Ok(Action::await_change())
        }
        (
            DesiredState::Running,
            Some(WorkloadState::Exited {
                code,
                signal,
                oom_killed,
                ..
            }),
        ) => {
            if matches!(observed, Some(InstanceState::Stopped)) {
                ctx.driver.forget(&name);
                return Ok(Action::await_change());
            }
            exited_on_its_own(object, &ctx, code, signal, oom_killed).await
        }
        (DesiredState::Running, None) => match observed {
            None | Some(InstanceState::Pending) => launch(object, &ctx, None).await,
            Some(InstanceState::Running) => {
                // The agent lost it (its state was lost, or the machine restarted): run it again.
                ctx.emit(
                    &object,
                    "Warning",
                    "Relaunching",
                    "the process was not found on the node; launching it again".into(),
                );
                launch(object, &ctx, None).await
            }
            Some(InstanceState::Stopping) => stopped(object, &ctx, None, "").await,
            // Stopped and wanted running: the scheduler binds it again (pending).
            _ => Ok(Action::await_change()),
        },
        (_, Some(WorkloadState::Running { .. })) => {
            let object = if observed != Some(InstanceState::Stopping) {
                Arc::new(
                    write_status(&ctx, &object, |s| {
                        set_state(s, InstanceState::Stopping);
                        s.state_reason = USER_SHUTDOWN.into();
                    })
                    .await?,
                )
            } else {
                object
            };
            ctx.driver.stop(&name, ctx.stop_grace).await?;
            let code = exit_code(ctx.driver.state(&name));
            stopped(object, &ctx, code, USER_SHUTDOWN).await
        }
        (_, Some(WorkloadState::Exited { code, signal, .. })) => {
            if observed == Some(InstanceState::Stopped) {
                ctx.driver.forget(&name);
                return Ok(Action::await_change());
            }
            let reason = status.state_reason.clone();
            let reason = if reason.is_empty() {
                USER_SHUTDOWN.to_string()
            } else {
                reason
            };
            stopped(object, &ctx, code.or(signal.map(|s| 128 + s)), &reason).await
        }
        (_, None) => {
            if observed != Some(InstanceState::Stopped) {
                return stopped(object, &ctx, None, USER_SHUTDOWN).await;
            }
            ctx.hold(&name, None);
            Ok(Action::await_change())
        }
    }
}

fn exit_code(state: Option<WorkloadState>) -> Option<i32> {
    match state {
        Some(WorkloadState::Exited { code, signal, .. }) => code.or(signal.map(|s| 128 + s)),
        _ => None,
    }
}

/// The process exited while the instance was wanted running: EC2's instance-initiated
/// shutdown, which stops or terminates it per `spec.shutdownBehavior`.
async fn exited_on_its_own(
    object: Arc<Object>,
    ctx: &Context,
    code: Option<i32>,
    signal: Option<i32>,
    oom_killed: bool,
) -> Result<Action, Error> {
    let name = object.name().to_string();
    let i = object.as_instance().cloned().unwrap_or_default();
    let spec = i.spec.clone().unwrap_or_default();
    let exit = code.or(signal.map(|s| 128 + s));
    let reason = if oom_killed {
        let t = spec.instance_type.clone();
        ctx.emit(
            &object,
            "Warning",
            "OutOfMemory",
            format!("the process used more memory than its type {t} allows and was killed"),
        );
        format!("Server.OutOfMemory: the process exceeded the memory of {t} and was killed")
    } else {
        let how = match (code, signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "an unknown status".to_string(),
        };
        ctx.emit(
            &object,
            "Normal",
            "InstanceShutdown",
            format!("the process exited with {how}"),
        );
        INSTANCE_SHUTDOWN.to_string()
    };
    info!(instance = %name, ?code, ?signal, oom_killed, "An instance's process exited on its own.");
    match ShutdownBehavior::parse(&spec.shutdown_behavior).unwrap_or(ShutdownBehavior::Stop) {
        ShutdownBehavior::Terminate => {
            let written = write_status(ctx, &object, |s| {
                set_state(s, InstanceState::ShuttingDown);
                s.state_reason = reason.clone();
                s.exit_code = exit;
            })
            .await?;
            terminate(Arc::new(written), ctx).await
        }
        ShutdownBehavior::Stop => {
            // The wanted state follows, as EC2's: the instance stays stopped until started.
            let mut o = (*object).clone();
            if let Some(s) = o.as_instance_mut().and_then(|i| i.spec.as_mut()) {
                s.state = DesiredState::Stopped.as_str().into();
            }
            let updated = call(ctx, &name, "update", ctx.client.update(o)).await?;
            stopped(Arc::new(updated), ctx, exit, &reason).await
        }
    }
}

/// Finishes a stop: the workload is gone; wipe the instance store, release the volumes and
/// write `stopped`.
async fn stopped(
    object: Arc<Object>,
    ctx: &Context,
    exit: Option<i32>,
    reason: &str,
) -> Result<Action, Error> {
    let name = object.name().to_string();
    let root = ctx.dirs.root(&name);
    let wiped = tokio::task::spawn_blocking(move || launch::wipe_instance_store(&root))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = wiped {
        warn!(instance = %name, error = %e, "Could not wipe the instance store.");
    }
    let reason = reason.to_string();
    write_status(ctx, &object, |s| {
        set_state(s, InstanceState::Stopped);
        s.pid = 0;
        if exit.is_some() {
            s.exit_code = exit;
        }
        if !reason.is_empty() {
            s.state_reason = reason.clone();
        }
    })
    .await?;
    ctx.driver.forget(&name);
    ctx.hold(&name, None);
    release_volumes(ctx, &object, false).await;
    info!(instance = %name, "Instance stopped.");
    Ok(Action::await_change())
}

/// Shuts the instance down for good: stop, remove its directory (volumes kept on termination
/// stay), `terminated`; on delete, drop the finalizer.
async fn terminate(object: Arc<Object>, ctx: &Context) -> Result<Action, Error> {
    let name = object.name().to_string();
    let i = object.as_instance().cloned().unwrap_or_default();
    let status = i.status.clone().unwrap_or_default();

    // Only this node's instances get here (see `reconcile`).
    let mut object = object;
    if InstanceState::parse(&status.state) != Some(InstanceState::Terminated) {
        if InstanceState::parse(&status.state) != Some(InstanceState::ShuttingDown) {
            object = Arc::new(
                write_status(ctx, &object, |s| {
                    set_state(s, InstanceState::ShuttingDown);
                    s.state_reason = USER_SHUTDOWN.into();
                })
                .await?,
            );
        }
        ctx.driver.stop(&name, ctx.stop_grace).await?;
        let exit = exit_code(ctx.driver.state(&name));
        let root = ctx.dirs.root(&name);
        let removed = tokio::task::spawn_blocking(move || launch::remove_any(&root))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            warn!(instance = %name, error = %e, "Could not remove the instance's directory.");
        }
        release_volumes(ctx, &object, true).await;
        object = Arc::new(
            write_status(ctx, &object, |s| {
                set_state(s, InstanceState::Terminated);
                s.pid = 0;
                if exit.is_some() {
                    s.exit_code = exit;
                }
                s.ports.clear();
            })
            .await?,
        );
        ctx.driver.forget(&name);
        ctx.hold(&name, None);
        lock(&ctx.given_ports).remove(&name);
        info!(instance = %name, "Instance terminated.");
    }
    let meta = object.metadata().cloned().unwrap_or_default();
    if meta.deleted_at.is_some() && meta.finalizers.iter().any(|f| f == FINALIZER) {
        let mut o = (*object).clone();
        o.metadata_mut().finalizers.retain(|f| f != FINALIZER);
        match ctx.client.update(o).await {
            Ok(_) => {
                lock(&ctx.written).remove(&name);
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(source) => {
                return Err(Error::Api {
                    op: "update",
                    instance: name,
                    source,
                });
            }
        }
    }
    Ok(Action::await_change())
}

/// Launches (or, with `reboot`, relaunches) the instance: its image and type, host ports,
/// root and volumes, then the process; writes `running`.
async fn launch(
    object: Arc<Object>,
    ctx: &Context,
    reboot: Option<String>,
) -> Result<Action, Error> {
    let name = object.name().to_string();
    let i = object.as_instance().cloned().unwrap_or_default();
    let spec = i.spec.clone().unwrap_or_default();
    let status = i.status.clone().unwrap_or_default();
    let fail = |reason: String| Error::Launch {
        instance: name.clone(),
        reason,
    };
    let image = match ctx.client.get(Kind::Image, &spec.image).await {
        Ok(o) => match o.resource {
            Some(Resource::Image(im)) => im.spec.unwrap_or_default(),
            _ => return Err(fail(format!("Image/{} is not an image", spec.image))),
        },
        Err(s) if s.code() == Code::NotFound => {
            let reason = format!("image {:?} not found", spec.image);
            ctx.emit(&object, "Warning", "LaunchFailed", reason.clone());
            return Err(fail(reason));
        }
        Err(source) => return Err(api(&name, "get image", source)),
    };
    let size = match ctx
        .client
        .get(Kind::InstanceType, &spec.instance_type)
        .await
    {
        Ok(o) => match o.resource {
            Some(Resource::InstanceType(t)) => t.spec.unwrap_or_default(),
            _ => {
                return Err(fail(format!(
                    "{} is not an instance type",
                    spec.instance_type
                )));
            }
        },
        Err(source) => return Err(api(&name, "get instance type", source)),
    };
    ctx.hold(&name, Some(type_size(&size)));

    // Host ports: kept from before when possible, written down before the process sees them.
    let ports = assign_ports(ctx, &name, &spec.ports, &status.ports)
        .ok_or_else(|| fail(format!("no free host port left in {:?}", ctx.ports)))?;
    let mut object = object;
    if ports != status.ports.clone().into_iter().collect::<BTreeMap<_, _>>() {
        let ports = ports.clone();
        object = Arc::new(
            write_status(ctx, &object, move |s| {
                s.ports = ports.clone().into_iter().collect();
            })
            .await?,
        );
    }

    // Volumes: in the node's zone, and not held by another node or instance.
    let mut volumes = Vec::new();
    for VolumeAttachment { volume, mount_path } in &spec.volumes {
        check_volume(ctx, &name, volume).await.map_err(fail)?;
        volumes.push((volume.clone(), PathBuf::from(mount_path)));
    }

    let root = ctx.dirs.root(&name);
    let placement = Placement {
        instance: &name,
        node: &ctx.node,
        zone: &ctx.zone,
        metadata_url: format!("http://{}/{name}/latest", ctx.endpoint),
        ports: &ports,
    };
    let launch = launch::launch_spec(&spec, &image, &size, &root, &placement);
    {
        let (root, image, user, dirs) = (
            root.clone(),
            image.clone(),
            launch.user.clone(),
            ctx.dirs.clone(),
        );
        tokio::task::spawn_blocking(move || {
            launch::prepare_root(&root, &image, &user, &volumes, &dirs)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| {
            let reason = format!("preparing its directory: {e}");
            ctx.emit(&object, "Warning", "LaunchFailed", reason.clone());
            fail(reason)
        })?;
    }
    let pid = match ctx.driver.start(&launch).await {
        Ok(pid) => pid,
        Err(e) => {
            let reason = format!("{e}");
            ctx.emit(&object, "Warning", "LaunchFailed", reason.clone());
            return Err(Error::Driver(e));
        }
    };
    let address = ctx.address.clone();
    let user_data = !spec.user_data.is_empty();
    write_status(ctx, &object, move |s| {
        if reboot.is_none() || s.launch_time.is_none() {
            s.launch_time = Some(now());
        }
        set_state(s, InstanceState::Running);
        s.pid = i64::from(pid);
        s.private_ip = address.clone();
        s.exit_code = None;
        s.state_reason.clear();
        s.user_data_done = user_data;
        if let Some(at) = &reboot {
            s.reboot_handled = at.clone();
        }
    })
    .await?;
    for v in &spec.volumes {
        mark_volume(ctx, &v.volume, Some(&name)).await;
    }
    ctx.emit(
        &object,
        "Normal",
        "Started",
        format!("process {pid} started on {}", ctx.node),
    );
    info!(instance = %name, pid, "Instance running.");
    Ok(Action::await_change())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Host ports for `wanted`, avoiding every port another instance here holds.
fn assign_ports(
    ctx: &Context,
    name: &str,
    wanted: &[hanul_proto::v1::InstancePort],
    kept: &HashMap<String, u32>,
) -> Option<BTreeMap<String, u32>> {
    let mut given = lock(&ctx.given_ports);
    let mut taken: HashSet<u32> = HashSet::new();
    for (o, i) in ctx.mine() {
        if o.name() == name {
            continue;
        }
        if let Some(s) = &i.status {
            taken.extend(s.ports.values().copied());
        }
    }
    for (other, ports) in given.iter() {
        if other != name {
            taken.extend(ports.values().copied());
        }
    }
    let wanted: Vec<(String, String)> = wanted
        .iter()
        .map(|p| (p.name.clone(), p.protocol.clone()))
        .collect();
    let kept: BTreeMap<String, u32> = kept.clone().into_iter().collect();
    let got = ports::assign(&wanted, &kept, &taken, ctx.ports, |p, proto| {
        kept.values().any(|k| *k == u32::from(p)) || ports::host_port_is_free(p, proto)
    })?;
    given.insert(name.to_string(), got.clone());
    Some(got)
}

/// What an instance of type `t` holds on its node.
fn type_size(t: &hanul_proto::v1::InstanceTypeSpec) -> Capacity {
    Capacity {
        cpu_millis: t.vcpu.saturating_mul(1000),
        memory_mib: t.memory_mib,
    }
}

/// Records the instance type's size of an instance found running (after an agent restart).
async fn ensure_size(ctx: &Context, object: &Object) {
    let name = object.name();
    if lock(&ctx.sizes).contains_key(name) {
        return;
    }
    let t = object
        .as_instance()
        .and_then(|i| i.spec.as_ref())
        .map(|s| s.instance_type.clone())
        .unwrap_or_default();
    if let Ok(o) = ctx.client.get(Kind::InstanceType, &t).await
        && let Some(Resource::InstanceType(t)) = o.resource
    {
        ctx.hold(name, Some(type_size(&t.spec.unwrap_or_default())));
    }
}

/// Whether the volume may be used here: it exists, lives in this zone, and is not held by
/// another node or another running instance.
async fn check_volume(ctx: &Context, instance: &str, volume: &str) -> Result<(), String> {
    let o = match ctx.client.get(Kind::Volume, volume).await {
        Ok(o) => o,
        Err(s) if s.code() == Code::NotFound => return Err(format!("volume {volume:?} not found")),
        Err(s) => return Err(format!("reading volume {volume:?}: {}", s.message())),
    };
    let Some(Resource::Volume(v)) = &o.resource else {
        return Err(format!("{volume:?} is not a volume"));
    };
    let spec = v.spec.clone().unwrap_or_default();
    let status = v.status.clone().unwrap_or_default();
    if !spec.zone.is_empty() && spec.zone != ctx.zone {
        return Err(format!(
            "volume {volume:?} is in zone {}, the instance in {}",
            spec.zone, ctx.zone
        ));
    }
    if !status.node.is_empty() && status.node != ctx.node {
        return Err(format!(
            "volume {volume:?} holds its data on node {}",
            status.node
        ));
    }
    if !status.attached_to.is_empty() && status.attached_to != instance {
        return Err(format!(
            "volume {volume:?} is in use by instance {}",
            status.attached_to
        ));
    }
    Ok(())
}

/// Writes a volume's status: in use by `instance`, or available (`None`). Best effort.
async fn mark_volume(ctx: &Context, volume: &str, instance: Option<&str>) {
    if let Ok(o) = ctx.client.get(Kind::Volume, volume).await {
        set_volume_status(ctx, o, instance).await;
    }
}

/// Writes the status of the volume `o` (as just read): in use by `instance`, or available.
async fn set_volume_status(ctx: &Context, mut o: Object, instance: Option<&str>) {
    let volume = o.name().to_string();
    let Some(Resource::Volume(v)) = &mut o.resource else {
        return;
    };
    let s = v.status.get_or_insert_with(Default::default);
    s.node = ctx.node.clone();
    s.attached_to = instance.unwrap_or_default().to_string();
    s.state = if instance.is_some() {
        "in-use"
    } else {
        "available"
    }
    .into();
    if let Err(e) = ctx.client.update_status(o).await {
        warn!(%volume, error = %e, "Could not write the volume's status.");
    }
}

/// Frees the instance's volumes; on termination, deletes the data of those not kept.
async fn release_volumes(ctx: &Context, object: &Object, terminating: bool) {
    let spec = object
        .as_instance()
        .and_then(|i| i.spec.clone())
        .unwrap_or_default();
    for a in &spec.volumes {
        // A volume that cannot be read now has nothing to release.
        let Ok(o) = ctx.client.get(Kind::Volume, &a.volume).await else {
            continue;
        };
        let keep = match &o.resource {
            Some(Resource::Volume(v)) => v
                .spec
                .as_ref()
                .and_then(|s| s.keep_on_termination)
                .unwrap_or(true),
            _ => true,
        };
        if terminating && !keep {
            let data = ctx.dirs.volume(&a.volume);
            let _ = tokio::task::spawn_blocking(move || launch::remove_any(&data)).await;
            if let Err(e) = ctx.client.delete(Kind::Volume, &a.volume).await
                && e.code() != Code::NotFound
            {
                warn!(volume = %a.volume, error = %e, "Could not delete a volume not kept on termination.");
            }
        } else {
            set_volume_status(ctx, o, None).await;
        }
    }
}

/// Gives the memory freed after a burst of launches back to the system: glibc's allocator keeps
/// it otherwise, and an idle agent would stay as large as at its busiest.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel;
    // it has no preconditions and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// A console log is rotated past this size, keeping this many older copies.
const LOG_MAX_BYTES: u64 = 10 << 20;
const LOG_KEEP: usize = 3;

/// Rotates the console logs that grew past [`LOG_MAX_BYTES`].
fn rotate_logs(dirs: &Dirs) {
    let Ok(entries) = std::fs::read_dir(&dirs.instances) else {
        return;
    };
    for entry in entries.flatten() {
        let log = crate::driver::console_log(&entry.path());
        if let Err(e) = crate::driver::rotate_log_file(&log, LOG_MAX_BYTES, LOG_KEEP) {
            warn!(log = %log.display(), error = %e, "Could not rotate a console log.");
        }
    }
}

/// Stops and forgets workloads, and removes directories, of instances that are not bound to
/// this node in the API any more (deleted while the agent was away, or bound elsewhere); then
/// rotates the console logs.
pub async fn sweep(ctx: &Context) {
    let dirs = ctx.dirs.clone();
    let _ = tokio::task::spawn_blocking(move || rotate_logs(&dirs)).await;
    release_freed_memory();
    let mine: HashSet<String> = ctx
        .mine()
        .into_iter()
        .map(|(o, _)| o.name().to_string())
        .collect();
    for (name, _) in ctx.driver.list() {
        if mine.contains(&name) {
            continue;
        }
        // The cache may be behind a binding: only the server's word stops a workload.
        match ctx.client.get(Kind::Instance, &name).await {
            Ok(o)
                if o.as_instance()
                    .and_then(|i| i.status.as_ref())
                    .is_some_and(|s| s.node == ctx.node) =>
            {
                continue;
            }
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(_) => continue,
        }
        let known = ctx.cache.get(Kind::Instance, &name).is_some();
        info!(instance = %name, known, "Stopping a workload whose instance is not bound here.");
        if let Err(e) = ctx.driver.stop(&name, ctx.stop_grace).await {
            warn!(instance = %name, error = %e, "Could not stop a leftover workload.");
            continue;
        }
        ctx.driver.forget(&name);
        ctx.hold(&name, None);
    }
    let Ok(entries) = std::fs::read_dir(&ctx.dirs.instances) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if mine.contains(&name) || ctx.cache.get(Kind::Instance, &name).is_some() {
            continue;
        }
        if ctx.driver.state(&name).is_some() {
            continue;
        }
        info!(instance = %name, "Removing the directory of an instance that no longer exists.");
        let path = entry.path();
        let _ = tokio::task::spawn_blocking(move || launch::remove_any(&path)).await;
        lock(&ctx.given_ports).remove(&name);
    }
}

fn api(instance: &str, op: &'static str, source: tonic::Status) -> Error {
    Error::Api {
        op,
        instance: instance.to_string(),
        source,
    }
}

/// One write of the instance; remembers the resourceVersion it produced.
async fn call(
    ctx: &Context,
    instance: &str,
    op: &'static str,
    f: impl Future<Output = Result<Object, tonic::Status>>,
) -> Result<Object, Error> {
    let written = f.await.map_err(|s| api(instance, op, s))?;
    lock(&ctx.written).insert(instance.to_string(), written.resource_version());
    Ok(written)
}

/// Sets `status.state` (and its time when it changes).
fn set_state(s: &mut InstanceStatus, state: InstanceState) {
    if s.state != state.as_str() {
        s.state = state.as_str().into();
        s.state_time = Some(now());
    }
}

/// Writes the instance's status after `change`, with its resourceVersion as precondition.
async fn write_status(
    ctx: &Context,
    object: &Object,
    change: impl FnOnce(&mut InstanceStatus),
) -> Result<Object, Error> {
    let mut o = object.clone();
    let Some(i) = o.as_instance_mut() else {
        return Ok(o);
    };
    let generation = i.metadata.as_ref().map(|m| m.generation).unwrap_or(0);
    let s = i.status.get_or_insert_with(Default::default);
    change(s);
    s.observed_generation = generation;
    call(
        ctx,
        object.name(),
        "update status",
        ctx.client.update_status(o),
    )
    .await
}

impl MetadataSource for Context {
    fn metadata(&self, instance: &str) -> Option<InstanceMetadata> {
        let o = self.cache.get(Kind::Instance, instance)?;
        let i = o.as_instance()?;
        let status = i.status.clone().unwrap_or_default();
        if status.node != self.node {
            return None;
        }
        let spec = i.spec.clone().unwrap_or_default();
        let meta = o.metadata().cloned().unwrap_or_default();
        Some(InstanceMetadata {
            instance_id: instance.to_string(),
            instance_type: spec.instance_type,
            zone: status.zone,
            node: self.node.clone(),
            private_ip: status.private_ip,
            user_data: spec.user_data,
            tags: meta.labels.into_iter().collect(),
            ports: status.ports.into_iter().collect(),
            spot_interruption: meta
                .annotations
                .get(SPOT_INTERRUPTION_ANNOTATION)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
            lifecycle_state: meta.annotations.get(LIFECYCLE_STATE_ANNOTATION).cloned(),
        })
    }
}

#[cfg(test)]
mod tests;
