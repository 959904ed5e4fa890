//! The DB cluster controller: gives each `DBCluster` its members (`DBInstance`s placed on
//! nodes, run by their agents), names the writer of each epoch, runs failovers and
//! switchovers, and sums the members up in the cluster's status.
//!
//! ```text
//!  DBCluster ──────────┐                               ┌─▶ status (epoch, writer, failover,
//!  owned DBInstances ──┼─▶ plan (pure, see [`plan`]) ──┤     sync set, members, endpoints),
//!  Nodes ──────────────┘   + lease silence per member  │     written first, resourceVersion-checked
//!                                                      └─▶ effects: create / delete DBInstances
//! ```
//!
//! The writer's lease is watched here: every change of a member's `leaseEpoch` or
//! `leaseRenewals` is noted with this process's monotonic clock, and the planner is told how
//! long each member has been silent. A controller that restarts counts silence from its start,
//! so a restart never shortens a lease. The protocol is in `hanul_proto::db`.

pub mod plan;

use crate::{
    Error, Result,
    runtime::{
        Action, Cache, Clock, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
    scheduler::{CONDITION_READY, conditions},
};
use hanul_proto::{
    Client, Kind,
    db::{REBOOT_ANNOTATION, SWITCHOVER_ANNOTATION},
    events::{NORMAL, Recorder, WARNING},
    v1::{DbInstance, DbInstanceSpec, Object, ObjectMeta, OwnerReference, object::Resource},
};
use plan::{Effect, Input, Member, NodeInfo};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tonic::Code;
use tracing::{info, warn};

pub const CONTROLLER_NAME: &str = "db-clusters";

/// The label that names a member's cluster.
pub const CLUSTER_LABEL: &str = "db.hanul.dev/cluster";

pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    pub members: Cache,
    pub nodes: Cache,
    /// member → (leaseEpoch, leaseRenewals, when this process saw them change).
    leases: Mutex<HashMap<String, (u64, u64, Instant)>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// How long `member` has shown no lease change, noting the one it shows now.
    fn lease_silence(&self, member: &str, epoch: u64, renewals: u64) -> Duration {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        match leases.get_mut(member) {
            Some(seen) if (seen.0, seen.1) == (epoch, renewals) => now - seen.2,
            Some(seen) => {
                *seen = (epoch, renewals, now);
                Duration::ZERO
            }
            None => {
                // First sight (this process just started, or the member is new): its last
                // renewal may have been a moment ago, so the silence counts from now. That
                // only ever lengthens a lease, never shortens it.
                leases.insert(member.to_owned(), (epoch, renewals, now));
                Duration::ZERO
            }
        }
    }
}

fn member_of(o: &Object, ctx: &Context) -> Option<(String, Member)> {
    let Some(Resource::DbInstance(i)) = &o.resource else {
        return None;
    };
    let meta = o.metadata()?;
    let spec = i.spec.clone().unwrap_or_default();
    let status = i.status.clone().unwrap_or_default();
    let lease_silence = ctx.lease_silence(&meta.name, status.lease_epoch, status.lease_renewals);
    Some((
        meta.name.clone(),
        Member {
            spec_role: spec.role,
            zone: spec.zone,
            node: spec.node,
            readable: spec.readable,
            deleting: meta.deleted_at.is_some(),
            state: status.state,
            role: status.role,
            epoch: status.epoch,
            address: status.address,
            timeline: status.timeline,
            flush_lsn: status.flush_lsn,
            receive_lsn: status.receive_lsn,
            replay_lsn: status.replay_lsn,
            lag_seconds: status.lag_seconds,
            streaming: status.streaming,
            lease_epoch: status.lease_epoch,
            lease_silence,
            vote: status.vote.map(|v| (v.epoch, v.lsn, v.timeline)),
            parameter_apply_status: status.parameter_apply_status,
        },
    ))
}

fn nodes(cache: &Cache) -> Vec<NodeInfo> {
    cache
        .list()
        .iter()
        .filter_map(|o| match &o.resource {
            Some(Resource::Node(n)) => {
                let spec = n.spec.clone().unwrap_or_default();
                let status = n.status.clone().unwrap_or_default();
                Some(NodeInfo {
                    name: o.name().to_owned(),
                    zone: spec.zone,
                    address: spec.address,
                    ready: !spec.unschedulable
                        && conditions::is_true(&status.conditions, CONDITION_READY),
                })
            }
            _ => None,
        })
        .collect()
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::DbCluster(cluster)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let Some(meta) = object.metadata() else {
        return Ok(Action::await_change());
    };
    if meta.deleted_at.is_some() {
        return Ok(Action::await_change());
    }
    let spec = cluster.spec.clone().unwrap_or_default();
    let old = cluster.status.clone().unwrap_or_default();
    let members: BTreeMap<String, Member> = ctx
        .members
        .by_owner_uid(&meta.uid)
        .iter()
        .filter_map(|o| member_of(o, &ctx))
        .collect();
    let nodes = nodes(&ctx.nodes);
    let input = Input {
        cluster: &meta.name,
        generation: meta.generation,
        spec: &spec,
        status: &old,
        members: &members,
        nodes: &nodes,
        switchover: meta
            .annotations
            .get(SWITCHOVER_ANNOTATION)
            .map(String::as_str),
        reboot: meta.annotations.get(REBOOT_ANNOTATION).map(String::as_str),
        now: ctx.clock.now(),
    };
    let plan = plan::plan(&input);

    if plan.status != old {
        let mut updated = cluster.clone();
        updated.status = Some(plan.status.clone());
        match ctx.client.update_status(Object::from(updated)).await {
            Ok(_) => {}
            // The cluster changed since it was read: plan again from the new one.
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                return Ok(Action::requeue(Duration::from_millis(20)));
            }
            Err(s) => return Err(Error::api("update status", object.key(), s)),
        }
        if plan.status.epoch != old.epoch || plan.status.failover != old.failover {
            info!(
                cluster = %meta.name,
                epoch = plan.status.epoch,
                writer = %plan.status.writer,
                failover = ?plan.status.failover,
                "Cluster writer state changed."
            );
        }
    }
    for e in &plan.events {
        let ty = if e.warning { WARNING } else { NORMAL };
        if let Err(err) = ctx.recorder.emit(&object, ty, e.reason, &e.message).await {
            warn!(cluster = %meta.name, error = %err, "Could not record an event.");
        }
    }
    for e in &plan.effects {
        match e {
            Effect::Create {
                name,
                role,
                zone,
                node,
                readable,
            } => {
                let member = DbInstance {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        labels: [(CLUSTER_LABEL.to_owned(), meta.name.clone())].into(),
                        owner_references: vec![OwnerReference {
                            kind: Kind::DbCluster.as_str().into(),
                            name: meta.name.clone(),
                            uid: meta.uid.clone(),
                            controller: true,
                        }],
                        ..Default::default()
                    }),
                    spec: Some(DbInstanceSpec {
                        cluster: meta.name.clone(),
                        role: role.clone(),
                        zone: zone.clone(),
                        node: node.clone(),
                        instance_class: spec.instance_class.clone(),
                        readable: *readable,
                        storage_gib: spec.storage_gib.unwrap_or_default(),
                    }),
                    status: None,
                };
                match ctx.client.create(Object::from(member)).await {
                    Ok(_) => info!(cluster = %meta.name, member = %name, %node, "Created member."),
                    Err(s) if s.code() == Code::AlreadyExists => {}
                    Err(s) => return Err(Error::api("create", format!("DBInstance/{name}"), s)),
                }
            }
            Effect::Delete { name } => match ctx.client.delete(Kind::DbInstance, name).await {
                Ok(_) => info!(cluster = %meta.name, member = %name, "Deleting member."),
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(Error::api("delete", format!("DBInstance/{name}"), s)),
            },
        }
    }
    // Members' lease silences grow without any change: look again at least once a second.
    let wake = plan
        .wake
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    Ok(Action::requeue(wake))
}

pub async fn run_with(client: Client, metrics: Metrics, shutdown: Shutdown, clock: Arc<dyn Clock>) {
    let controller = Controller::new(client.clone(), Kind::DbCluster)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown.clone());
    let clusters = controller.cache();
    let members = Cache::new(Some(Kind::DbInstance));
    let nodes = Cache::new(Some(Kind::Node));
    nodes.start(&client, shutdown.clone());
    // Node changes may concern any cluster: there are few of them.
    let every: KeyMapper = {
        let primary = clusters.clone();
        Arc::new(move |_, _| {
            primary
                .keys()
                .into_iter()
                .filter(|k: &ObjectKey| k.kind == Kind::DbCluster)
                .collect()
        })
    };
    let controller = controller
        .watches_owned_in(members.clone())
        .watches(nodes.clone(), every);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), CONTROLLER_NAME),
        client,
        clock,
        members,
        nodes,
        leases: Mutex::new(HashMap::new()),
    });
    controller
        .run(reconcile, default_error_policy, ctx, 4)
        .await;
}
