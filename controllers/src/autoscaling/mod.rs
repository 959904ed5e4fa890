//! The Auto Scaling group controller: keeps each `AutoScalingGroup`'s instances at its desired
//! capacity, spread over its zones, replaces the unhealthy ones, holds instances at lifecycle
//! hooks, registers in-service instances with the group's target groups, and rolls out a new
//! launch template in batches (instance refresh).
//!
//! ```text
//!  AutoScalingGroup ─┐                                 ┌─▶ status (records, activities, refresh)
//!  owned Instances ──┼─▶ plan (pure, see [`plan`]) ────┤     written first, resourceVersion-checked
//!  TargetGroups ─────┤                                 └─▶ effects: create / annotate / terminate
//!  Nodes ────────────┘                                     instances, POST lifecycle messages
//! ```
//!
//! Registration goes through an annotation on the instance (`elb.hanul.dev/target-groups`) that
//! the agents running the load balancers read beside each target group's own targets; the
//! lifecycle state is an annotation too, which the metadata endpoint serves. Lifecycle actions
//! (`hanul asg complete-lifecycle-action`, `record-heartbeat`) arrive as annotations on the
//! instance.

pub mod launch_templates;
pub mod notify;
pub mod plan;

use crate::{
    Error, Result,
    node_lifecycle::CONDITION_STATUS_CHECK,
    runtime::{
        Action, Cache, Clock, Controller, KeyMapper, Metrics, ObjectKey, Shutdown,
        default_error_policy,
    },
    scheduler::{CONDITION_READY, CONDITION_SCHEDULED, REASON_INSUFFICIENT_CAPACITY, conditions},
};
use hanul_proto::{
    Client, Kind,
    autoscaling::{
        CANCEL_REFRESH_ANNOTATION, GROUP_LABEL, LIFECYCLE_STATE_ANNOTATION, LifecycleState,
        REFRESH_ANNOTATION, VERSION_LABEL, instance_spec,
    },
    elb::DEFAULT_DEREGISTRATION_DELAY,
    instance::DesiredState,
    time::system_time,
    v1::{AutoScalingGroupSpec, Instance, Object, ObjectMeta, OwnerReference, object::Resource},
};
use plan::{Effect, Input, Observed};
use rand::Rng;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};
use tonic::Code;
use tracing::{info, warn};

pub const CONTROLLER_NAME: &str = "auto-scaling-groups";

pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub instances: Cache,
    pub target_groups: Cache,
    pub nodes: Cache,
    pub instance_types: Cache,
    pub launch_templates: Cache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// A new instance name: the group's, a dash and five random characters (`web-7f3k2`).
pub fn instance_name(group: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{group}-{suffix}")
}

fn observed(o: &Object, nodes: &Cache) -> Option<(String, Observed)> {
    let i = o.as_instance()?;
    let meta = o.metadata()?;
    let spec = i.spec.clone().unwrap_or_default();
    let status = i.status.clone().unwrap_or_default();
    let node_lost = !status.node.is_empty()
        && nodes
            .get(Kind::Node, &status.node)
            .is_some_and(|n| match &n.resource {
                Some(Resource::Node(n)) => !conditions::is_true(
                    &n.status.clone().unwrap_or_default().conditions,
                    CONDITION_READY,
                ),
                _ => false,
            });
    let impaired = conditions::find(&status.conditions, CONDITION_STATUS_CHECK)
        .is_some_and(|c| c.status == conditions::FALSE);
    let unschedulable = conditions::find(&status.conditions, CONDITION_SCHEDULED)
        .is_some_and(|c| c.status == conditions::FALSE && c.reason == REASON_INSUFFICIENT_CAPACITY);
    Some((
        o.name().to_owned(),
        Observed {
            zone: if status.zone.is_empty() {
                spec.zone.clone()
            } else {
                status.zone.clone()
            },
            state: status.state.clone(),
            terminate_requested: spec.state == DesiredState::Terminated.as_str(),
            impaired,
            node_lost,
            bound: !status.node.is_empty(),
            unschedulable,
            version: meta
                .labels
                .get(VERSION_LABEL)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            created: meta.created_at.as_ref().map(system_time),
            annotations: meta
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    ))
}

/// How many more instances of `instance_type` the Ready, schedulable nodes of each zone have
/// room for (by their allocatable less allocated CPU and memory, as the scheduler counts);
/// empty when the type is unknown.
fn room(instance_type: &str, types: &Cache, nodes: &Cache) -> BTreeMap<String, u32> {
    let Some(Resource::InstanceType(t)) = types
        .get(Kind::InstanceType, instance_type)
        .and_then(|o| o.resource.clone())
    else {
        return BTreeMap::new();
    };
    let t = t.spec.unwrap_or_default();
    let (cpu, mem) = (u64::from(t.vcpu.max(1)) * 1000, t.memory_mib.max(1));
    let mut room: BTreeMap<String, u32> = BTreeMap::new();
    for n in nodes.list() {
        let Some(Resource::Node(node)) = &n.resource else {
            continue;
        };
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let entry = room.entry(spec.zone.clone()).or_default();
        if spec.unschedulable || !conditions::is_true(&status.conditions, CONDITION_READY) {
            continue;
        }
        let (total, used) = (
            status.allocatable.unwrap_or_default(),
            status.allocated.unwrap_or_default(),
        );
        let free_cpu = u64::from(total.cpu_millis).saturating_sub(u64::from(used.cpu_millis));
        let free_mem = total.memory_mib.saturating_sub(used.memory_mib);
        *entry += (free_cpu / cpu).min(free_mem / mem) as u32;
    }
    room
}

/// The zones to spread over: the group's, else those of every node; each with whether a
/// Ready, schedulable node is there.
fn zones(listed: &[String], nodes: &Cache) -> Vec<(String, bool)> {
    let mut ready: BTreeSet<String> = BTreeSet::new();
    let mut all: BTreeSet<String> = BTreeSet::new();
    for n in nodes.list() {
        let Some(Resource::Node(node)) = &n.resource else {
            continue;
        };
        let spec = node.spec.clone().unwrap_or_default();
        all.insert(spec.zone.clone());
        let status = node.status.clone().unwrap_or_default();
        if !spec.unschedulable && conditions::is_true(&status.conditions, CONDITION_READY) {
            ready.insert(spec.zone);
        }
    }
    let names: Vec<String> = if listed.is_empty() {
        all.into_iter().collect()
    } else {
        listed.to_vec()
    };
    names
        .into_iter()
        .map(|z| {
            let ok = ready.contains(&z);
            (z, ok)
        })
        .collect()
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::AutoScalingGroup(group)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let Some(meta) = object.metadata() else {
        return Ok(Action::await_change());
    };
    if meta.deleted_at.is_some() {
        return Ok(Action::await_change());
    }
    let mut spec = group.spec.clone().unwrap_or_default();
    let old = group.status.clone().unwrap_or_default();
    // A referenced launch template: the version it names becomes the group's template.
    if let Some(r) = spec.launch_template_ref.clone() {
        let lt = ctx
            .launch_templates
            .get(Kind::LaunchTemplate, &r.name)
            .and_then(|o| match &o.resource {
                Some(Resource::LaunchTemplate(lt)) => Some(lt.clone()),
                _ => None,
            });
        match launch_templates::resolve(lt.as_ref(), &r.name, &r.version) {
            Ok((_, template)) => spec.launch_template = Some(template),
            Err(why) => {
                let mut status = old.clone();
                let changed = conditions::set(
                    &mut status.conditions,
                    plan::CONDITION_READY,
                    conditions::FALSE,
                    "LaunchTemplateNotFound",
                    &why,
                    ctx.clock.now(),
                );
                if changed {
                    let mut updated = group.clone();
                    updated.status = Some(status);
                    if let Err(s) = ctx.client.update_status(Object::from(updated)).await
                        && !matches!(s.code(), Code::Aborted | Code::NotFound)
                    {
                        return Err(Error::api("update status", object.key(), s));
                    }
                }
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
    }
    let instances: BTreeMap<String, Observed> = ctx
        .instances
        .by_owner_uid(&meta.uid)
        .iter()
        .filter_map(|o| observed(o, &ctx.nodes))
        .collect();
    let mut target_health: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut delay = 0u32;
    for name in &spec.target_groups {
        let Some(o) = ctx.target_groups.get(Kind::TargetGroup, name) else {
            continue;
        };
        let Some(Resource::TargetGroup(tg)) = &o.resource else {
            continue;
        };
        delay = delay.max(
            tg.spec
                .as_ref()
                .and_then(|s| s.deregistration_delay_seconds)
                .unwrap_or(DEFAULT_DEREGISTRATION_DELAY),
        );
        for t in tg.status.iter().flat_map(|s| &s.targets) {
            if !t.instance.is_empty() {
                target_health
                    .entry(t.instance.clone())
                    .or_default()
                    .push((name.clone(), t.health.clone()));
            }
        }
    }
    let zones = zones(&spec.zones, &ctx.nodes);
    let instance_type = spec
        .launch_template
        .as_ref()
        .map(|t| t.instance_type.as_str())
        .unwrap_or_default();
    let room = room(instance_type, &ctx.instance_types, &ctx.nodes);
    let input = Input {
        name: object.name(),
        generation: meta.generation,
        spec: &spec,
        status: &old,
        refresh_request: meta.annotations.get(REFRESH_ANNOTATION).map(String::as_str),
        cancel_request: meta
            .annotations
            .get(CANCEL_REFRESH_ANNOTATION)
            .map(String::as_str),
        instances: &instances,
        target_health: &target_health,
        deregistration_delay: Duration::from_secs(delay.into()),
        zones: &zones,
        room: &room,
        now: ctx.clock.now(),
    };
    let group_name = object.name().to_owned();
    let plan = plan::plan(&input, &mut || instance_name(&group_name));

    if plan.status != old {
        let mut updated = group.clone();
        updated.status = Some(plan.status.clone());
        match ctx.client.update_status(Object::from(updated)).await {
            Ok(_) => {}
            // The group changed since it was read: plan again from the new one.
            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(s) => return Err(Error::api("update status", object.key(), s)),
        }
    }
    let mut retry = false;
    let launches: Vec<_> = plan
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Launch {
                instance,
                zone,
                version,
            } => Some(launch(
                &ctx,
                object.as_ref(),
                &spec,
                instance,
                zone,
                *version,
            )),
            _ => None,
        })
        .collect();
    for r in futures::future::join_all(launches).await {
        retry |= !r?;
    }
    for e in &plan.effects {
        match e {
            Effect::Launch { .. } => {}
            Effect::Annotate {
                instance,
                annotations,
            } => {
                retry |= !update_instance(&ctx, instance, |i| {
                    let m = i.metadata.get_or_insert_with(ObjectMeta::default);
                    for (k, v) in annotations {
                        match v {
                            Some(v) => {
                                m.annotations.insert(k.clone(), v.clone());
                            }
                            None => {
                                m.annotations.remove(k);
                            }
                        }
                    }
                })
                .await?;
            }
            Effect::Terminate { instance } => {
                info!(group = %group_name, instance, "Terminating instance.");
                retry |= !update_instance(&ctx, instance, |i| {
                    if let Some(s) = &mut i.spec {
                        s.state = DesiredState::Terminated.as_str().into();
                    }
                })
                .await?;
            }
            Effect::Notify { hook, instance } => {
                if let Some(h) = spec.lifecycle_hooks.iter().find(|h| &h.name == hook) {
                    let record = plan
                        .status
                        .instances
                        .iter()
                        .find(|r| &r.instance == instance);
                    let message =
                        notify::message(&group_name, h, instance, record, ctx.clock.now());
                    tokio::spawn(notify::send(h.notification_target.clone(), message));
                }
            }
        }
    }
    if retry {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(match plan.wake {
        Some(w) => Action::requeue(w.max(Duration::from_millis(50))),
        None => Action::await_change(),
    })
}

/// Creates a recorded instance; true when it exists afterwards.
async fn launch(
    ctx: &Context,
    object: &Object,
    group: &AutoScalingGroupSpec,
    name: &str,
    zone: &str,
    version: u32,
) -> Result<bool> {
    let meta = object.metadata().cloned().unwrap_or_default();
    let template = group.launch_template.clone().unwrap_or_default();
    let mut spec = instance_spec(&template);
    spec.zone = zone.to_owned();
    let instance = Instance {
        metadata: Some(ObjectMeta {
            name: name.to_owned(),
            labels: [
                (GROUP_LABEL.to_owned(), meta.name.clone()),
                (VERSION_LABEL.to_owned(), version.to_string()),
            ]
            .into(),
            annotations: [(
                LIFECYCLE_STATE_ANNOTATION.to_owned(),
                LifecycleState::Pending.as_str().to_owned(),
            )]
            .into(),
            owner_references: vec![OwnerReference {
                kind: Kind::AutoScalingGroup.as_str().into(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                controller: true,
            }],
            ..Default::default()
        }),
        spec: Some(spec),
        status: None,
    };
    match ctx.client.create(Object::from(instance)).await {
        Ok(_) => {
            info!(group = %meta.name, instance = name, zone, "Launched instance.");
            Ok(true)
        }
        Err(s) if s.code() == Code::AlreadyExists => Ok(true),
        Err(s) if s.code() == Code::InvalidArgument => {
            // The launch template does not pass (an image or type since deleted): the record
            // times out as a failed launch and the reason is in the log and the activity.
            warn!(group = %meta.name, instance = name, error = %s.message(), "Launch refused.");
            Ok(true)
        }
        Err(s) => Err(Error::api("create", format!("Instance/{name}"), s)),
    }
}

/// Changes an instance as the cache shows it; false on a conflict (look again later).
async fn update_instance(
    ctx: &Context,
    name: &str,
    change: impl FnOnce(&mut Instance),
) -> Result<bool> {
    let Some(o) = ctx.instances.get(Kind::Instance, name) else {
        return Ok(true);
    };
    let Some(mut i) = o.as_instance().cloned() else {
        return Ok(true);
    };
    change(&mut i);
    match ctx.client.update(Object::from(i)).await {
        Ok(_) => Ok(true),
        Err(s) if matches!(s.code(), Code::Aborted) => Ok(false),
        Err(s) if matches!(s.code(), Code::NotFound) => Ok(true),
        Err(s) => Err(Error::api("update", format!("Instance/{name}"), s)),
    }
}

pub async fn run_with(client: Client, metrics: Metrics, shutdown: Shutdown, clock: Arc<dyn Clock>) {
    let controller = Controller::new(client.clone(), Kind::AutoScalingGroup)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown.clone());
    let groups = controller.cache();
    let start = |kind| {
        let cache = Cache::new(Some(kind));
        cache.start(&client, shutdown.clone());
        cache
    };
    let (instances, target_groups, nodes, instance_types, launch_templates) = (
        Cache::new(Some(Kind::Instance)),
        start(Kind::TargetGroup),
        start(Kind::Node),
        start(Kind::InstanceType),
        start(Kind::LaunchTemplate),
    );
    // Node and target group changes may concern any group: there are few of them.
    let every: KeyMapper = {
        let primary = groups.clone();
        Arc::new(move |_, _| {
            primary
                .keys()
                .into_iter()
                .filter(|k: &ObjectKey| k.kind == Kind::AutoScalingGroup)
                .collect()
        })
    };
    let controller = controller
        .watches_owned_in(instances.clone())
        .watches(nodes.clone(), every.clone())
        .watches(target_groups.clone(), every.clone())
        .watches(launch_templates.clone(), every);
    let ctx = Arc::new(Context {
        client,
        clock,
        instances,
        target_groups,
        nodes,
        instance_types,
        launch_templates,
    });
    controller
        .run(reconcile, default_error_policy, ctx, 4)
        .await;
}
