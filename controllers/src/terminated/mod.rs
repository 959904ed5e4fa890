//! Collects terminated instances: EC2 keeps showing a terminated instance for about an hour,
//! then it is gone. An instance whose `status.state` has been `terminated` for the retention
//! (one hour by default, from `status.stateTime`) is deleted; until then it is looked at again
//! when its time comes.
//!
//! It also settles instances that no agent will ever see: one never placed on a node whose
//! `spec.state` is `stopped` or `terminated` takes that state at once (nothing ran, so nothing
//! needs stopping).

use crate::{
    Error, Result,
    runtime::{Action, Clock, Controller, Metrics, Shutdown, default_error_policy},
};
use hanul_proto::{
    Client, Kind,
    instance::{DesiredState, InstanceState},
    time::{system_time, timestamp},
    v1::{Object, object::Resource},
};
use std::{sync::Arc, time::Duration};
use tonic::Code;
use tracing::info;

/// The controller's name in metrics and logs.
pub const CONTROLLER_NAME: &str = "terminated-instances";

/// How long terminated instances stay visible, as EC2's console shows them.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// Settings of the collector.
#[derive(Clone, Debug)]
pub struct Config {
    pub retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retention: DEFAULT_RETENTION,
        }
    }
}

/// What the reconcile needs.
pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// When `o` is to be collected: `None` unless it is a terminated instance.
pub fn collect_at(o: &Object, retention: Duration) -> Option<std::time::SystemTime> {
    let Some(Resource::Instance(i)) = &o.resource else {
        return None;
    };
    let status = i.status.as_ref()?;
    if InstanceState::parse(&status.state) != Some(InstanceState::Terminated) {
        return None;
    }
    let since = status
        .state_time
        .as_ref()
        .map(system_time)
        .or_else(|| o.metadata()?.created_at.as_ref().map(system_time))?;
    Some(since + retention)
}

/// The state an instance never placed on a node takes at once when it is not wanted running.
pub fn unplaced_settles_to(o: &Object) -> Option<InstanceState> {
    let Some(Resource::Instance(i)) = &o.resource else {
        return None;
    };
    let status = i.status.clone().unwrap_or_default();
    if !status.node.is_empty() {
        return None;
    }
    let want = match DesiredState::parse(&i.spec.as_ref()?.state)? {
        DesiredState::Running => return None,
        DesiredState::Stopped => InstanceState::Stopped,
        DesiredState::Terminated => InstanceState::Terminated,
    };
    let now = InstanceState::parse(&status.state);
    (now != Some(want) && now != Some(InstanceState::Terminated)).then_some(want)
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    if let Some(state) = unplaced_settles_to(&object) {
        let mut o = (*object).clone();
        if let Some(Resource::Instance(i)) = &mut o.resource {
            let s = i.status.get_or_insert_with(Default::default);
            s.state = state.as_str().into();
            s.state_time = Some(timestamp(ctx.clock.now()));
            s.state_reason = "Client.UserInitiatedShutdown: User initiated shutdown".into();
        }
        return match ctx.client.update_status(o).await {
            Ok(_) => Ok(Action::await_change()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::Aborted) => {
                Ok(Action::requeue(Duration::from_millis(200)))
            }
            Err(s) => Err(Error::api("update status", object.key(), s)),
        };
    }
    let Some(at) = collect_at(&object, ctx.config.retention) else {
        return Ok(Action::await_change());
    };
    let now = ctx.clock.now();
    if let Ok(left) = at.duration_since(now)
        && !left.is_zero()
    {
        return Ok(Action::requeue(left + Duration::from_millis(10)));
    }
    let rv = object.resource_version();
    match ctx
        .client
        .delete_at(Kind::Instance, object.name(), rv, false)
        .await
    {
        Ok(_) => {
            info!(instance = %object.name(), "Collected a terminated instance.");
            Ok(Action::await_change())
        }
        Err(s) if matches!(s.code(), Code::NotFound | Code::Aborted) => Ok(Action::await_change()),
        Err(s) => Err(Error::api("delete", object.key(), s)),
    }
}

/// Runs the collector until shutdown.
pub async fn run_with(
    client: Client,
    metrics: Metrics,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    config: Config,
) {
    let controller = Controller::new(client.clone(), Kind::Instance)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        client,
        clock,
        config,
    });
    controller
        .run(reconcile, default_error_policy, ctx, 2)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Instance, InstanceStatus, ObjectMeta};
    use std::time::SystemTime;

    fn instance(state: &str, at: SystemTime) -> Object {
        Instance {
            metadata: Some(ObjectMeta {
                name: "i".into(),
                ..Default::default()
            }),
            spec: None,
            status: Some(InstanceStatus {
                state: state.into(),
                state_time: Some(timestamp(at)),
                ..Default::default()
            }),
        }
        .into()
    }

    #[test]
    fn unplaced_instances_not_wanted_running_settle_at_once() {
        let t = SystemTime::UNIX_EPOCH;
        let mut o = instance("pending", t);
        let want = |o: &mut Object, state: &str| {
            if let Some(Resource::Instance(i)) = &mut o.resource {
                i.spec.get_or_insert_with(Default::default).state = state.into();
            }
        };
        want(&mut o, "running");
        assert_eq!(unplaced_settles_to(&o), None);
        want(&mut o, "stopped");
        assert_eq!(unplaced_settles_to(&o), Some(InstanceState::Stopped));
        want(&mut o, "terminated");
        assert_eq!(unplaced_settles_to(&o), Some(InstanceState::Terminated));
        // Placed: its agent does it.
        if let Some(Resource::Instance(i)) = &mut o.resource {
            i.status.as_mut().unwrap().node = "n1".into();
        }
        assert_eq!(unplaced_settles_to(&o), None);
    }

    #[test]
    fn only_terminated_instances_are_collected_after_the_retention() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(collect_at(&instance("terminated", t), hour), Some(t + hour));
        assert_eq!(collect_at(&instance("stopped", t), hour), None);
        assert_eq!(collect_at(&instance("running", t), hour), None);
    }
}
