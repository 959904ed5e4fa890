//! The launch template controller: every change of a `LaunchTemplate`'s spec becomes a new
//! version in its status (numbered from 1, each keeping the template it was made from), as
//! EC2's CreateLaunchTemplateVersion; `$Default` is the version its annotation
//! [`DEFAULT_VERSION_ANNOTATION`] names, else the latest.

use crate::{
    Error, Result,
    runtime::{Action, Clock, Controller, Metrics, Shutdown, default_error_policy},
};
use hanul_proto::{
    Client, Kind,
    autoscaling::template_hash,
    time::timestamp,
    v1::{
        LaunchTemplate, LaunchTemplateData, LaunchTemplateStatus, LaunchTemplateVersion, Object,
        object::Resource,
    },
};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use tonic::Code;

pub const CONTROLLER_NAME: &str = "launch-templates";
/// Annotation on a launch template: the version `$Default` names.
pub const DEFAULT_VERSION_ANNOTATION: &str = "autoscaling.hanul.dev/default-version";

/// The status `lt` should have: a new version when its spec differs from the latest.
pub fn versions(lt: &LaunchTemplate, now: SystemTime) -> LaunchTemplateStatus {
    let mut status = lt.status.clone().unwrap_or_default();
    let spec = lt.spec.clone().unwrap_or_default();
    let latest = status.versions.last();
    if latest.is_none_or(|v| {
        template_hash(
            v.template
                .as_ref()
                .unwrap_or(&LaunchTemplateData::default()),
        ) != template_hash(&spec)
    }) {
        let version = status.latest_version + 1;
        status.versions.push(LaunchTemplateVersion {
            version,
            template: Some(spec),
            created_at: Some(timestamp(now)),
        });
        status.latest_version = version;
    }
    let meta = lt.metadata.clone().unwrap_or_default();
    status.observed_generation = meta.generation;
    status.default_version = meta
        .annotations
        .get(DEFAULT_VERSION_ANNOTATION)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| status.versions.iter().any(|x| x.version == *v))
        .unwrap_or(status.latest_version);
    status
}

/// The template a reference names: `$Latest`, `$Default` or a version number. Err says why
/// there is none.
pub fn resolve(
    lt: Option<&LaunchTemplate>,
    name: &str,
    version: &str,
) -> std::result::Result<(u32, LaunchTemplateData), String> {
    let Some(lt) = lt else {
        return Err(format!("launch template {name:?} does not exist"));
    };
    let status = lt.status.clone().unwrap_or_default();
    let number = match version {
        "$Latest" | "" => status.latest_version,
        "$Default" => status.default_version,
        n => n.parse().unwrap_or(0),
    };
    status
        .versions
        .iter()
        .find(|v| v.version == number)
        .and_then(|v| v.template.clone().map(|t| (number, t)))
        .ok_or_else(|| format!("launch template {name:?} has no version {version} (yet)"))
}

pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

pub async fn reconcile(object: Arc<Object>, ctx: Arc<Context>) -> Result<Action> {
    let Some(Resource::LaunchTemplate(lt)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let status = versions(lt, ctx.clock.now());
    if lt.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let mut updated = lt.clone();
    updated.status = Some(status);
    match ctx.client.update_status(Object::from(updated)).await {
        Ok(_) => Ok(Action::await_change()),
        Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
            Ok(Action::requeue(Duration::from_millis(50)))
        }
        Err(s) => Err(Error::api("update status", object.key(), s)),
    }
}

pub async fn run_with(client: Client, metrics: Metrics, shutdown: Shutdown, clock: Arc<dyn Clock>) {
    let controller = Controller::new(client.clone(), Kind::LaunchTemplate)
        .named(CONTROLLER_NAME)
        .metrics(metrics)
        .shutdown_on(shutdown);
    let ctx = Arc::new(Context { client, clock });
    controller
        .run(reconcile, default_error_policy, ctx, 1)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::ObjectMeta;

    #[test]
    fn each_change_is_a_version_and_default_follows_the_annotation() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut lt = LaunchTemplate {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                generation: 1,
                ..Default::default()
            }),
            spec: Some(LaunchTemplateData {
                image: "web-v1".into(),
                ..Default::default()
            }),
            status: None,
        };
        lt.status = Some(versions(&lt, t0));
        assert_eq!(lt.status.as_ref().unwrap().latest_version, 1);
        // Unchanged: no new version.
        assert_eq!(versions(&lt, t0), lt.status.clone().unwrap());
        lt.spec.as_mut().unwrap().image = "web-v2".into();
        lt.status = Some(versions(&lt, t0));
        let s = lt.status.clone().unwrap();
        assert_eq!((s.latest_version, s.default_version), (2, 2));
        assert_eq!(resolve(Some(&lt), "web", "1").unwrap().1.image, "web-v1");
        assert_eq!(
            resolve(Some(&lt), "web", "$Latest").unwrap().1.image,
            "web-v2"
        );
        lt.metadata
            .as_mut()
            .unwrap()
            .annotations
            .insert(DEFAULT_VERSION_ANNOTATION.into(), "1".into());
        lt.status = Some(versions(&lt, t0));
        assert_eq!(
            resolve(Some(&lt), "web", "$Default").unwrap(),
            (
                1,
                lt.status.as_ref().unwrap().versions[0]
                    .template
                    .clone()
                    .unwrap()
            )
        );
        assert!(
            resolve(Some(&lt), "web", "7")
                .unwrap_err()
                .contains("no version 7")
        );
        assert!(
            resolve(None, "web", "1")
                .unwrap_err()
                .contains("does not exist")
        );
    }
}
