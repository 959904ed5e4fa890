//! The runtime against a real, in-process API server (in-memory store).

use super::*;
use crate::{
    Error,
    testing::{TestServer, eventually, image},
};
use hanul_proto::{
    Kind,
    v1::{ImageStatus, Object, object::Resource},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_cache_follows_creates_updates_and_deletes_on_a_live_server() {
    let t = TestServer::start().await;
    let (trigger, shutdown) = Shutdown::new();
    let cache = Cache::new(Some(Kind::Image));
    let everything = Cache::new(None);
    cache.start(&t.client, shutdown.clone());
    everything.start(&t.client, shutdown.clone());
    cache.wait_synced().await;
    everything.wait_synced().await;
    assert!(
        everything.list_kind(Kind::InstanceType).len() > 1,
        "the all-kinds cache lists the built-in catalog"
    );

    let owner = t.client.create(image("owner", &[])).await.unwrap();
    let dependent = t
        .client
        .create(image("dependent", &[&owner]))
        .await
        .unwrap();
    let want = dependent.resource_version();
    eventually("the cache sees both creates", WITHIN, || async {
        let got = cache
            .get(Kind::Image, "dependent")
            .map(|o| o.resource_version());
        if got == Some(want) && cache.get(Kind::Image, "owner").is_some() {
            Ok(())
        } else {
            Err(format!("dependent at {got:?}, {} objects", cache.len()))
        }
    })
    .await;
    let owner_uid = owner.metadata().unwrap().uid.clone();
    assert_eq!(cache.by_owner_uid(&owner_uid).len(), 1);

    let mut changed = dependent.clone();
    changed
        .metadata_mut()
        .labels
        .insert("tier".into(), "web".into());
    let changed = t.client.update(changed).await.unwrap();
    eventually("the cache sees the update", WITHIN, || async {
        let got = cache.get(Kind::Image, "dependent");
        match got {
            Some(o) if o.resource_version() == changed.resource_version() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        cache
            .get(Kind::Image, "dependent")
            .unwrap()
            .metadata()
            .unwrap()
            .labels["tier"],
        "web"
    );

    t.client.delete(Kind::Image, "dependent").await.unwrap();
    eventually("the cache sees the delete", WITHIN, || async {
        match cache.get(Kind::Image, "dependent") {
            None => Ok(()),
            Some(o) => Err(format!("still there at {}", o.resource_version())),
        }
    })
    .await;
    assert!(cache.by_owner_uid(&owner_uid).is_empty());
    assert!(cache.revision() >= changed.resource_version());
    assert!(everything.get(Kind::Image, "owner").is_some());

    trigger.trigger();
    t.stop().await;
}

/// Calls per image name, with when they started.
type Calls = Mutex<HashMap<String, Vec<Instant>>>;

struct Ctx {
    client: hanul_proto::Client,
    calls: Calls,
}

/// Records the call, fails the first three calls for `flaky`, and writes
/// `status.observedGeneration` the way real controllers write status.
async fn reconcile(object: Arc<Object>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let n = {
        let mut calls = ctx.calls.lock().unwrap();
        let v = calls.entry(object.name().to_string()).or_default();
        v.push(Instant::now());
        v.len()
    };
    if object.name() == "flaky" && n <= 3 {
        return Err(Error::api(
            "get",
            object.key(),
            tonic::Status::unavailable("scripted outage"),
        ));
    }
    let Some(Resource::Image(img)) = &object.resource else {
        return Ok(Action::await_change());
    };
    let generation = img.metadata.as_ref().map(|m| m.generation).unwrap_or(0);
    if img.status.as_ref().map(|s| s.observed_generation) != Some(generation) {
        let mut next = (*object).clone();
        if let Some(Resource::Image(i)) = &mut next.resource {
            i.status = Some(ImageStatus {
                observed_generation: generation,
                conditions: vec![],
            });
        }
        ctx.client
            .update_status(next)
            .await
            .map_err(|s| Error::api("update status", object.key(), s))?;
    }
    Ok(Action::await_change())
}

#[tokio::test]
async fn a_controller_reconciles_each_object_and_retries_failures_with_backoff() {
    let t = TestServer::start().await;
    let (trigger, shutdown) = Shutdown::new();
    let backoff = Backoff {
        jitter: 0.0,
        ..Backoff::default()
    };
    let metrics = Metrics::default();
    let ctx = Arc::new(Ctx {
        client: t.client.clone(),
        calls: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(t.client.clone(), Kind::Image)
        .backoff(backoff)
        .metrics(metrics.clone())
        .shutdown_on(shutdown);
    let task = tokio::spawn(controller.run(reconcile, default_error_policy, ctx.clone(), 2));

    for name in ["a", "b", "flaky"] {
        t.client.create(image(name, &[])).await.unwrap();
    }
    for name in ["a", "b", "flaky"] {
        eventually(
            &format!("{name} has its status written"),
            WITHIN,
            || async {
                let o = t
                    .client
                    .get(Kind::Image, name)
                    .await
                    .map_err(|s| s.to_string())?;
                match &o.resource {
                    Some(Resource::Image(i))
                        if i.status
                            .as_ref()
                            .is_some_and(|s| s.observed_generation == 1) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }
    let flaky = ctx.calls.lock().unwrap()["flaky"].clone();
    assert!(flaky.len() >= 4, "three failures then a success: {flaky:?}");
    let gaps: Vec<Duration> = flaky.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().take(3).enumerate() {
        let nominal = backoff.nominal(i as u32 + 1);
        assert!(
            *gap >= nominal,
            "retry {i} after {gap:?}, before the {nominal:?} backoff"
        );
    }
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "the backoff grows: {gaps:?}"
    );
    assert_eq!(metrics.reconciles("images", ReconcileResult::Error), 3);
    assert!(metrics.reconciles("images", ReconcileResult::Success) >= 3);

    trigger.trigger();
    task.await.unwrap();
    t.stop().await;
}
