use super::*;
use crate::{
    runtime::{Shutdown, ShutdownTrigger},
    testing::{TestServer, eventually, image},
};
use hanul_proto::v1::{Image, ObjectMeta};
use std::{collections::HashMap, sync::Mutex, time::Duration};

const WITHIN: Duration = Duration::from_secs(10);

// ---- The verdict, without a server ----

fn stored(name: &str, uid: &str, deleting: bool) -> Arc<Object> {
    Arc::new(
        Image {
            metadata: Some(ObjectMeta {
                name: name.into(),
                uid: uid.into(),
                deleted_at: deleting.then(Default::default),
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into(),
    )
}

fn dependent_of(owners: &[(&str, &str)]) -> Object {
    Image {
        metadata: Some(ObjectMeta {
            name: "dependent".into(),
            owner_references: owners
                .iter()
                .map(|(name, uid)| OwnerReference {
                    kind: "Image".into(),
                    name: (*name).into(),
                    uid: (*uid).into(),
                    controller: false,
                })
                .collect(),
            ..Default::default()
        }),
        spec: None,
        status: None,
    }
    .into()
}

fn world(objects: &[Arc<Object>]) -> impl Fn(Kind, &str) -> Option<Arc<Object>> + '_ {
    move |kind, name| {
        objects
            .iter()
            .find(|o| o.kind() == Some(kind) && o.name() == name)
            .cloned()
    }
}

#[test]
fn an_object_without_owner_references_is_not_judged() {
    assert_eq!(judge(&dependent_of(&[]), world(&[])), Verdict::NoOwners);
}

#[test]
fn an_object_is_orphaned_only_when_every_owner_is_gone() {
    let a = stored("a", "ua", false);
    let b = stored("b", "ub", false);
    let both = dependent_of(&[("a", "ua"), ("b", "ub")]);
    assert_eq!(judge(&both, world(&[a.clone(), b.clone()])), Verdict::Keep);
    assert_eq!(judge(&both, world(&[b])), Verdict::Keep);
    assert_eq!(judge(&both, world(&[a])), Verdict::Keep);
    assert_eq!(judge(&both, world(&[])), Verdict::Orphaned);
}

#[test]
fn an_owner_recreated_with_another_uid_counts_as_gone() {
    let recreated = stored("a", "ua-2", false);
    let d = dependent_of(&[("a", "ua-1")]);
    assert_eq!(judge(&d, world(&[recreated])), Verdict::Orphaned);
}

#[test]
fn an_owner_being_deleted_is_not_gone_yet() {
    let deleting = stored("a", "ua", true);
    let r = &dependent_of(&[("a", "ua")])
        .metadata()
        .unwrap()
        .owner_references[0]
        .clone();
    assert_eq!(owner_state(r, Some(&deleting)), OwnerState::Deleting);
    assert_eq!(
        judge(&dependent_of(&[("a", "ua")]), world(&[deleting])),
        Verdict::Keep
    );
}

#[test]
fn an_owner_of_an_unknown_kind_is_never_gone() {
    let mut d = dependent_of(&[("a", "ua")]);
    d.metadata_mut().owner_references[0].kind = "Martian".into();
    assert_eq!(
        owner_state(&d.metadata().unwrap().owner_references[0], None),
        OwnerState::Unknown
    );
    assert_eq!(judge(&d, world(&[])), Verdict::Keep);
}

// ---- The collector against a live server ----

/// A server and a running collector that counts its reconciles per object.
struct Harness {
    t: TestServer,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    judged: Arc<Mutex<HashMap<String, usize>>>,
}

impl Harness {
    async fn start() -> Harness {
        let t = TestServer::start().await;
        let (trigger, shutdown) = Shutdown::new();
        let (controller, ctx) = controller(t.client.clone(), Metrics::default(), shutdown);
        let judged: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = judged.clone();
        let task = tokio::spawn(controller.run(
            move |object: Arc<Object>, ctx| {
                let counts = counts.clone();
                async move {
                    let result = reconcile(object.clone(), ctx).await;
                    *counts.lock().unwrap().entry(object.key()).or_default() += 1;
                    result
                }
            },
            default_error_policy,
            ctx,
            CONCURRENCY,
        ));
        Harness {
            t,
            trigger,
            task,
            judged,
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.task.await.unwrap();
        self.t.stop().await;
    }

    async fn create(&self, name: &str, owners: &[&Object]) -> Object {
        self.t.client.create(image(name, owners)).await.unwrap()
    }

    async fn delete(&self, name: &str) {
        self.t.client.delete(Kind::Image, name).await.unwrap();
    }

    fn judged(&self, name: &str) -> usize {
        let key = format!("Image/{name}");
        self.judged.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    /// Waits until the collector has judged `name` more than `times` times.
    async fn judged_more_than(&self, name: &str, times: usize) {
        eventually(
            &format!("the collector judges {name} again"),
            WITHIN,
            || async {
                let n = self.judged(name);
                if n > times {
                    Ok(())
                } else {
                    Err(format!("judged {n} times"))
                }
            },
        )
        .await
    }

    async fn exists(&self, name: &str) -> bool {
        match self.t.client.get(Kind::Image, name).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("get {name}: {s}"),
        }
    }

    async fn gone(&self, name: &str) {
        eventually(&format!("{name} is deleted"), WITHIN, || async {
            match self.t.client.get(Kind::Image, name).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// Changes `name`'s labels so that the collector judges it again.
    async fn touch(&self, name: &str) {
        let mut o = self.t.client.get(Kind::Image, name).await.unwrap();
        let n = o.resource_version().to_string();
        o.metadata_mut().labels.insert("touched".into(), n);
        self.t.client.update(o).await.unwrap();
    }
}

#[tokio::test]
async fn gc_deletes_a_dependent_whose_owner_was_deleted() {
    let h = Harness::start().await;
    let owner = h.create("owner", &[]).await;
    h.create("dependent", &[&owner]).await;
    h.judged_more_than("dependent", 0).await;
    assert!(h.exists("dependent").await);
    h.delete("owner").await;
    h.gone("dependent").await;
    h.stop().await;
}

#[tokio::test]
async fn gc_keeps_a_dependent_whose_owner_exists() {
    let h = Harness::start().await;
    let owner = h.create("owner", &[]).await;
    h.create("dependent", &[&owner]).await;
    h.judged_more_than("dependent", 0).await;
    h.touch("dependent").await;
    h.judged_more_than("dependent", 1).await;
    assert!(h.exists("dependent").await);
    assert!(h.exists("owner").await);
    h.stop().await;
}

#[tokio::test]
async fn gc_keeps_a_dependent_while_one_of_two_owners_remains() {
    let h = Harness::start().await;
    let first = h.create("first", &[]).await;
    let second = h.create("second", &[]).await;
    h.create("dependent", &[&first, &second]).await;
    h.judged_more_than("dependent", 0).await;
    let before = h.judged("dependent");
    h.delete("first").await;
    // The deletion of an owner makes the collector judge its dependents.
    h.judged_more_than("dependent", before).await;
    assert!(
        h.exists("dependent").await,
        "the second owner still holds it"
    );
    h.delete("second").await;
    h.gone("dependent").await;
    h.stop().await;
}

#[tokio::test]
async fn gc_deletes_a_dependent_whose_owner_was_recreated_with_a_new_uid() {
    let h = Harness::start().await;
    let old = h.create("owner", &[]).await;
    h.create("dependent", &[&old]).await;
    h.judged_more_than("dependent", 0).await;
    h.delete("owner").await;
    let new = h.create("owner", &[]).await;
    assert_ne!(old.metadata().unwrap().uid, new.metadata().unwrap().uid);
    h.gone("dependent").await;

    // A dependent created later that still names the old uid goes too.
    h.create("late", &[&old]).await;
    h.gone("late").await;
    assert!(h.exists("owner").await, "the new owner is not touched");
    h.stop().await;
}

#[tokio::test]
async fn gc_keeps_dependents_of_an_owner_being_deleted_until_it_is_gone() {
    let h = Harness::start().await;
    let mut held = image("owner", &[]);
    held.metadata_mut().finalizers = vec!["test.hanul/hold".into()];
    let owner = h.t.client.create(held).await.unwrap();
    h.create("dependent", &[&owner]).await;
    h.judged_more_than("dependent", 0).await;

    let resp = h.t.client.delete(Kind::Image, "owner").await.unwrap();
    assert!(!resp.removed, "the finalizer holds the owner");
    h.touch("dependent").await;
    h.judged_more_than("dependent", 1).await;
    assert!(
        h.exists("dependent").await,
        "the owner is being deleted, not gone"
    );

    let mut owner = h.t.client.get(Kind::Image, "owner").await.unwrap();
    owner.metadata_mut().finalizers.clear();
    h.t.client.update(owner).await.unwrap();
    h.gone("owner").await;
    h.gone("dependent").await;
    h.stop().await;
}

#[tokio::test]
async fn gc_deletion_cascades_through_a_chain_of_owners() {
    let h = Harness::start().await;
    let root = h.create("root", &[]).await;
    let middle = h.create("middle", &[&root]).await;
    h.create("leaf", &[&middle]).await;
    h.judged_more_than("leaf", 0).await;
    h.delete("root").await;
    h.gone("middle").await;
    h.gone("leaf").await;
    h.stop().await;
}

#[tokio::test]
async fn gc_collects_dependents_whose_owner_went_while_it_was_not_running() {
    let t = TestServer::start().await;
    let owner = t.client.create(image("owner", &[])).await.unwrap();
    t.client
        .create(image("dependent", &[&owner]))
        .await
        .unwrap();
    t.client.delete(Kind::Image, "owner").await.unwrap();

    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(run(t.client.clone(), Metrics::default(), shutdown));
    eventually("the dependent is deleted", WITHIN, || async {
        match t.client.get(Kind::Image, "dependent").await {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    trigger.trigger();
    task.await.unwrap();
    t.stop().await;
}
