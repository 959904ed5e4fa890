//! End-to-end tests of the control-plane spine: the real `hanul server` process driven by the
//! real CLI (and, where the CLI has no verb, by the client library over gRPC).

use futures::StreamExt;
use hanul_e2e::{ServerProcess, poll, run_cli, write_manifest};
use hanul_proto::{
    Kind,
    client::WatchUpdate,
    v1::{EventType, Image, ImageSpec, Object, ObjectMeta, OwnerReference},
};
use std::time::Duration;

const WEB: &str = "\
apiVersion: hanul/v1
kind: Image
metadata: {name: web-v1, labels: {app: web}}
spec:
  command: [python3, -m, http.server]
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: web-1, labels: {app: web}}
spec:
  image: web-v1
  instanceType: t3.micro
  ports: [{name: http}]
";

fn image(name: &str, labels: &[(&str, &str)]) -> Object {
    Image {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        spec: Some(ImageSpec {
            command: vec!["true".into()],
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

#[test]
fn apply_get_diff_delete_round_trip() {
    let s = ServerProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = write_manifest(dir.path(), "web.yaml", WEB);

    let out = s.cli(&["apply", "-f", &f]).ok();
    assert!(
        out.stdout.contains("image/web-v1 created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("instance/web-1 created"),
        "{}",
        out.stdout
    );
    let out = s.cli(&["apply", "-f", &f]).ok();
    assert!(
        out.stdout.contains("instance/web-1 unchanged"),
        "{}",
        out.stdout
    );

    // diff: no change exits 0; a changed manifest exits 1 and shows the change.
    s.cli(&["diff", "-f", &f]).ok();
    let changed = write_manifest(
        dir.path(),
        "web2.yaml",
        &WEB.replace("t3.micro", "t3.small"),
    );
    let out = s.cli(&["diff", "-f", &changed]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("t3.small"), "{}", out.stdout);

    let out = s.cli(&["get", "instances", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["metadata"]["name"], "web-1");
    assert_eq!(
        v["items"][0]["spec"]["shutdownBehavior"], "stop",
        "defaults are filled by the server"
    );
    let out = s.cli(&["get", "i", "web-1", "-o", "yaml"]).ok();
    assert!(out.stdout.contains("kind: Instance"), "{}", out.stdout);
    let out = s.cli(&["get", "instancetypes"]).ok();
    assert!(
        out.stdout.contains("t3.nano") && out.stdout.contains("m5.2xlarge"),
        "{}",
        out.stdout
    );
    let out = s
        .cli(&["get", "images", "-l", "app=web", "-o", "name"])
        .ok();
    assert_eq!(out.stdout.trim(), "image/web-v1");

    let out = s.cli(&["apply", "-f", &changed]).ok();
    assert!(
        out.stdout.contains("instance/web-1 configured"),
        "{}",
        out.stdout
    );
    let out = s.cli(&["get", "instance", "web-1", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["metadata"]["generation"], "2",
        "a spec change bumps generation: {v}"
    );

    s.cli(&["delete", "instance", "web-1"]).ok();
    let out = s.cli(&["get", "instance", "web-1"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("NotFound"), "{}", out.stderr);
    s.cli(&["delete", "-f", &f, "--ignore-not-found"]).ok();
    assert_ne!(s.cli(&["get", "image", "web-v1"]).code, 0);
}

#[test]
fn a_bad_manifest_changes_nothing() {
    let s = ServerProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The first document is fine, the second refused by admission: nothing may be written.
    let bad = WEB.replace("instanceType: t3.micro", "instanceType: t3.micr");
    let f = write_manifest(dir.path(), "bad.yaml", &bad);
    let out = s.cli(&["apply", "-f", &f]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("spec.instanceType: unknown instance type \"t3.micr\""),
        "{}",
        out.stderr
    );
    assert_ne!(
        s.cli(&["get", "image", "web-v1"]).code,
        0,
        "the valid first document must not be applied"
    );

    // A parse error (unknown field) in the second document: the same.
    let bad = WEB.replace("ports:", "portz:");
    let f = write_manifest(dir.path(), "bad2.yaml", &bad);
    let out = s.cli(&["apply", "-f", &f]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("document 2") && out.stderr.contains("spec.portz"),
        "{}",
        out.stderr
    );
    assert_ne!(s.cli(&["get", "image", "web-v1"]).code, 0);
}

#[test]
fn a_missing_or_wrong_token_is_refused() {
    let s = ServerProcess::start().unwrap();
    let out = run_cli(&s.url, None, &["get", "instances"], None);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Unauthenticated"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let out = run_cli(&s.url, Some(&wrong), &["get", "instances"], None);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Unauthenticated"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_resource_version_is_a_conflict() {
    let s = ServerProcess::start().unwrap();
    let c = s.client().await.unwrap();
    let created = c.create(image("a", &[])).await.unwrap();
    let mut first = created.clone();
    first.metadata_mut().labels.insert("v".into(), "1".into());
    let updated = c.update(first).await.unwrap();
    assert!(updated.resource_version() > created.resource_version());

    let mut stale = created.clone();
    stale.metadata_mut().labels.insert("v".into(), "2".into());
    let err = c.update(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(
        err.message().contains("resourceVersion"),
        "{}",
        err.message()
    );
    let err = c.create(image("a", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[test]
fn finalizers_hold_a_deleted_object_until_removed() {
    let s = ServerProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let with = "apiVersion: hanul/v1\nkind: Image\nmetadata: {name: held, finalizers: [hanul.dev/test]}\nspec: {command: [\"true\"]}\n";
    let f = write_manifest(dir.path(), "held.yaml", with);
    s.cli(&["apply", "-f", &f]).ok();
    let out = s.cli(&["delete", "image", "held"]).ok();
    assert!(out.stdout.contains("marked for deletion"), "{}", out.stdout);
    let out = s.cli(&["get", "image", "held", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["metadata"]["deletedAt"].is_string(), "{v}");

    // Removing the finalizer (an update with none) lets the object go.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await.unwrap();
        let mut o = c.get(Kind::Image, "held").await.unwrap();
        o.metadata_mut().finalizers.clear();
        c.update(o).await.unwrap();
    });
    let out = s.cli(&["get", "image", "held"]);
    assert!(out.stderr.contains("NotFound"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_deletes_its_dependents() {
    let s = ServerProcess::start().unwrap();
    let c = s.client().await.unwrap();
    let owner = c.create(image("owner", &[])).await.unwrap();
    let other = c.create(image("other", &[])).await.unwrap();
    let owned_by = |o: &Object| OwnerReference {
        kind: "Image".into(),
        name: o.name().into(),
        uid: o.metadata().unwrap().uid.clone(),
        controller: true,
    };
    let mut dep = image("dependent", &[]);
    dep.metadata_mut().owner_references.push(owned_by(&owner));
    c.create(dep).await.unwrap();
    let mut shared = image("shared", &[]);
    shared.metadata_mut().owner_references = vec![owned_by(&owner), owned_by(&other)];
    c.create(shared).await.unwrap();

    c.delete(Kind::Image, "owner").await.unwrap();
    let url = s.url.clone();
    let token = s.token_file();
    tokio::task::spawn_blocking(move || {
        poll(
            Duration::from_secs(20),
            "the dependent to be collected",
            || {
                let out = run_cli(&url, Some(&token), &["get", "image", "dependent"], None);
                if out.stderr.contains("NotFound") {
                    Ok(Some(()))
                } else {
                    Err(format!("{out:?}"))
                }
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    // One of its two owners remains: it stays.
    c.get(Kind::Image, "shared")
        .await
        .expect("an object with a live owner is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_a_revision_and_relists_after_compaction() {
    let s = ServerProcess::start().unwrap();
    let c = s.client().await.unwrap();
    let (_, rev) = c.list(Some(Kind::Image), "").await.unwrap();
    c.create(image("w1", &[("app", "web")])).await.unwrap();
    c.create(image("w2", &[("app", "db")])).await.unwrap();
    c.delete(Kind::Image, "w1").await.unwrap();

    // Resume from the revision of the list: every change since, in order, filtered by label.
    let mut stream = c.watch(Some(Kind::Image), "app=web", rev).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.r#type() != EventType::Bookmark {
            seen.push((ev.r#type(), ev.object.unwrap().name().to_string()));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, "w1".to_string()),
            (EventType::Deleted, "w1".to_string())
        ]
    );

    // After a restart the history is gone: an old revision is OUT_OF_RANGE, and list_watch
    // re-lists on its own.
    let dir = s.kill();
    let s = ServerProcess::start_in(dir, &[]).unwrap();
    let c = s.client().await.unwrap();
    c.create(image("w3", &[("app", "web")])).await.unwrap();
    let err = match c.watch(Some(Kind::Image), "", rev).await {
        Ok(mut st) => st.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let mut lw = Box::pin(c.list_watch(Some(Kind::Image), "app=web"));
    match tokio::time::timeout(Duration::from_secs(10), lw.next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchUpdate::Listed { items, .. } => {
            let names: Vec<_> = items.iter().map(|o| o.name().to_string()).collect();
            assert_eq!(names, vec!["w3"]);
        }
        other => panic!("expected a list first, got {other:?}"),
    }
    c.create(image("w4", &[("app", "web")])).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), lw.next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchUpdate::Event(ev) => {
                assert_eq!(ev.object.unwrap().name(), "w4");
                break;
            }
            WatchUpdate::Error(e) => panic!("{e:?}"),
            WatchUpdate::Listed { .. } => {}
        }
    }
}

#[test]
fn get_watch_prints_changes_as_they_happen() {
    let s = ServerProcess::start().unwrap();
    let mut child = std::process::Command::new(hanul_e2e::hanul_bin())
        .args(["--server", &s.url, "--token-file"])
        .arg(s.token_file())
        .args(["get", "images", "-w", "-o", "name"])
        .env("HANUL_CONFIG", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = write_manifest(
        dir.path(),
        "i.yaml",
        "apiVersion: hanul/v1\nkind: Image\nmetadata: {name: watched}\nspec: {command: [\"true\"]}\n",
    );
    let mut lines = Vec::new();
    let got = poll(
        Duration::from_secs(20),
        "the watch to print the new image",
        || {
            // Apply until the watcher has started and seen it (the first applies may precede it).
            let _ = s.cli(&["apply", "-f", &f]);
            while let Ok(l) = rx.try_recv() {
                lines.push(l);
            }
            Ok(lines
                .iter()
                .any(|l| l.contains("image/watched"))
                .then_some(()))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    got.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_acknowledged_writes_loses_none() {
    let s = ServerProcess::start().unwrap();
    let c = s.client().await.unwrap();
    // 64 concurrent writers, 20 creates each; every acknowledged one is recorded.
    let mut tasks = Vec::new();
    for w in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..20 {
                let name = format!("k-{w}-{i}");
                if c.create(image(&name, &[("bench", "kill")])).await.is_ok() {
                    acked.push(name);
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 64 * 20);
    let dir = s.kill();
    let s = ServerProcess::start_in(dir, &[]).unwrap();
    let c = s.client().await.unwrap();
    let (items, _) = c.list(Some(Kind::Image), "bench=kill").await.unwrap();
    let found: std::collections::HashSet<_> = items.iter().map(|o| o.name().to_string()).collect();
    let lost: Vec<_> = acked.iter().filter(|n| !found.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "lost {} acknowledged writes: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_write_storm_keeps_every_acknowledged_write() {
    let s = ServerProcess::start().unwrap();
    let c = s.client().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (c, tx) = (c.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("s-{w}-{i}");
                match c.create(image(&name, &[("bench", "storm")])).await {
                    Ok(_) => {
                        let _ = tx.send(name);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    drop(tx);
    // Kill once a good number of writes were acknowledged, while writers are still going.
    let mut acked = Vec::new();
    while acked.len() < 500 {
        acked.push(rx.recv().await.unwrap());
    }
    let dir = s.kill();
    for t in tasks {
        let _ = t.await;
    }
    while let Ok(n) = rx.try_recv() {
        acked.push(n);
    }
    let s = ServerProcess::start_in(dir, &[]).unwrap();
    let c = s.client().await.unwrap();
    let (items, _) = c.list(Some(Kind::Image), "bench=storm").await.unwrap();
    let found: std::collections::HashSet<_> = items.iter().map(|o| o.name().to_string()).collect();
    let lost: Vec<_> = acked.iter().filter(|n| !found.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "lost {} of {} acknowledged writes: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}
