use super::*;
use hanul_proto::v1::BackupSettings;
use proptest::prelude::*;

fn at(t: f64) -> Option<Timestamp> {
    Some(ts(t))
}

fn first(timeline: u32, since: f64) -> DbTimeline {
    DbTimeline {
        timeline,
        since: at(since),
        ..Default::default()
    }
}

fn backtracked(timeline: u32, since: f64, to: f64) -> DbTimeline {
    DbTimeline {
        timeline,
        since: at(since),
        backtracked_to: at(to),
        ..Default::default()
    }
}

/// The module doc's picture: TL1 from 0, a backtrack to t1 = 10 at W1 = 30 (TL2), one to
/// t2 = 20 at W2 = 50 (TL3).
fn pictured() -> Vec<DbTimeline> {
    vec![
        DbTimeline {
            archived_until: at(29.0),
            ..first(1, 0.0)
        },
        DbTimeline {
            archived_until: at(49.0),
            ..backtracked(2, 30.0, 10.0)
        },
        backtracked(3, 50.0, 20.0),
    ]
}

fn auto(name: &str, complete: i64) -> Snapshot {
    Snapshot {
        name: name.into(),
        automated: true,
        phase: SNAPSHOT_AVAILABLE.into(),
        cluster_uid: "uid-1".into(),
        created: complete - 1,
        complete: Some(complete),
        path: format!("snapshots/{name}-x"),
        ..Default::default()
    }
}

#[test]
fn the_timeline_live_at_a_time_follows_backtracks_and_failovers() {
    let tl = pictured();
    assert_eq!(timeline_at(&[], 5.0), None);
    assert_eq!(timeline_at(&tl, -5.0), Some(1));
    assert_eq!(timeline_at(&tl, 15.0), Some(1));
    assert_eq!(timeline_at(&tl, 29.9), Some(1));
    assert_eq!(timeline_at(&tl, 30.0), Some(2));
    assert_eq!(timeline_at(&tl, 49.0), Some(2));
    assert_eq!(timeline_at(&tl, 50.0), Some(3));
    assert_eq!(timeline_at(&tl, 1e9), Some(3));
    // A failover's timeline continues its parent: the newest of the stretch is followed,
    // also for a time before the failover.
    let mut with_failover = tl.clone();
    with_failover.insert(2, first(4, 40.0));
    assert_eq!(timeline_at(&with_failover, 35.0), Some(4));
    assert_eq!(timeline_at(&with_failover, 45.0), Some(4));
    assert_eq!(timeline_at(&with_failover, 15.0), Some(1));
    assert_eq!(timeline_at(&with_failover, 55.0), Some(3));
    assert_eq!(archived_until(&tl, 15.0), Some(29.0));
    assert_eq!(archived_until(&tl, 35.0), Some(49.0));
    assert_eq!(archived_until(&tl, 55.0), None);
}

#[test]
fn a_snapshot_taken_after_a_rewind_target_on_the_old_history_is_no_base_after_the_rewind() {
    let tl = pictured();
    // s1 before t1, s2 between t1 and W1 on TL1 (between t2 too), s3 on TL2, s4 on TL3.
    let snaps = [
        auto("s1", 5),
        auto("s2", 25),
        auto("s3", 40),
        auto("s4", 60),
    ];
    let base = |t: f64| base_snapshot(&snaps, "uid-1", &tl, t).map(|s| s.name.as_str());
    assert_eq!(base(4.0), None);
    assert_eq!(base(8.0), Some("s1"));
    // Before W1 the old history is the live one: s2 is its own.
    assert_eq!(base(27.0), Some("s2"));
    // After W1 (TL2: TL1 up to 10), s2 holds rows TL2 never had.
    assert_eq!(base(35.0), Some("s1"));
    assert_eq!(base(45.0), Some("s3"));
    // After W2 (TL3: TL1 up to 20): s3 is TL2's, s2 (TL1 at 25) is past 20.
    assert_eq!(base(55.0), Some("s1"));
    assert_eq!(base(65.0), Some("s4"));
    assert!(is_prefix(&tl, 15.0, 55.0));
    assert!(!is_prefix(&tl, 22.0, 55.0));
    assert!(!is_prefix(&tl, 35.0, 55.0));
    assert!(is_prefix(&tl, 5.0, 35.0));
    assert!(!is_prefix(&tl, 15.0, 35.0));
    // A snapshot under way while a backtrack started holds the old history.
    let during = Snapshot {
        created: 29,
        ..auto("s5", 31)
    };
    assert_eq!(
        base_snapshot(std::slice::from_ref(&during), "uid-1", &tl, 45.0),
        None
    );
    // Not an automated one, not available, another cluster's: never.
    let others = [
        Snapshot {
            automated: false,
            ..auto("m", 6)
        },
        Snapshot {
            phase: "creating".into(),
            ..auto("c", 6)
        },
        Snapshot {
            cluster_uid: "uid-2".into(),
            ..auto("o", 6)
        },
    ];
    assert_eq!(base_snapshot(&others, "uid-1", &tl, 8.0), None);
}

fn spec(window: u32) -> DbClusterSpec {
    DbClusterSpec {
        backtrack_window: window,
        backup: Some(BackupSettings {
            retention_days: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const NOW: f64 = 1_795_773_600.0;

fn status() -> DbClusterStatus {
    DbClusterStatus {
        earliest_restorable_time: at(NOW - 7200.0),
        latest_restorable_time: at(NOW - 10.0),
        timelines: vec![first(1, NOW - 9000.0)],
        ..Default::default()
    }
}

fn resolve_at(window: u32, to: f64, snaps: &[Snapshot]) -> Result<DbBacktrack, String> {
    let (spec, status) = (spec(window), status());
    let request = hanul_proto::db::backtrack_request(&ts(to), "r1");
    resolve(&Input {
        cluster: "orders",
        uid: "uid-1",
        spec: &spec,
        status: &status,
        snapshots: snaps,
        request: &request,
        now: NOW,
    })
}

#[test]
fn requests_outside_the_window_are_refused_saying_why() {
    let snaps = [auto("s1", (NOW - 7200.0) as i64)];
    let err = |window, to| resolve_at(window, to, &snaps).unwrap_err();
    assert!(err(0, NOW - 60.0).contains("spec.backtrackWindow is 0"));
    assert!(err(3600, NOW + 60.0).contains("in the future"));
    assert!(err(3600, NOW - 3601.0).contains("before the earliest backtrack time"));
    // The window reaches further than the backups: the earliest restorable time bounds it.
    assert!(err(86_400, NOW - 7300.0).contains("before the earliest backtrack time"));
    assert!(err(3600, NOW - 5.0).contains("after the latest restorable time"));
    let ok = resolve_at(3600, NOW - 60.0, &snaps).unwrap();
    assert_eq!(
        (ok.snapshot.as_str(), ok.timeline, ok.wal_path.as_str()),
        ("s1", 1, "wal/orders-uid-1")
    );
    assert_eq!(ok.target_time, at(NOW - 60.0));
    assert!(
        resolve_at(3600, NOW - 60.0, &[])
            .unwrap_err()
            .contains("no automated snapshot")
    );
    let (spec, status) = (spec(3600), status());
    let bad = resolve(&Input {
        cluster: "orders",
        uid: "uid-1",
        spec: &spec,
        status: &status,
        snapshots: &snaps,
        request: "soon@r2",
        now: NOW,
    });
    assert!(bad.unwrap_err().contains("not an RFC 3339 time"));
}

#[test]
fn the_earliest_backtrack_time_moves_once_a_minute() {
    let (hour, status) = (spec(3600), status());
    // NOW is on a minute: a second later the window's start is rounded up to the next one.
    let a = earliest_backtrack_status(&hour, &status, NOW + 1.0).unwrap();
    let b = earliest_backtrack_status(&hour, &status, NOW + 59.0).unwrap();
    assert_eq!(a, b);
    assert_eq!(secs(&a), NOW + 60.0 - 3600.0);
    // Bounded by the earliest restorable time, shown as it is.
    assert_eq!(
        earliest_backtrack_status(&spec(86_400), &status, NOW),
        status.earliest_restorable_time
    );
    assert_eq!(earliest_backtrack_status(&spec(0), &status, NOW), None);
}

/// A model of a cluster's life: one event per second (a write, a failover, or a backtrack to
/// an earlier second), with PostgreSQL's restore semantics: a restore to T on timeline X
/// replays X's ancestry (each parent up to where its child branched off), commits at or
/// before T.
#[derive(Clone, Debug)]
enum Event {
    Write,
    Failover,
    /// To this fraction of the time so far.
    Backtrack(f64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Write),
        1 => Just(Event::Failover),
        2 => (0.0..1.0f64).prop_map(Event::Backtrack),
    ]
}

struct Tl {
    parent: Option<(usize, f64)>,
    commits: Vec<(f64, u32)>,
}

/// The commits a restore to `t` on timeline `x` replays.
fn replay(tls: &[Tl], x: usize, t: f64) -> Vec<u32> {
    let mut out = match tls[x].parent {
        Some((p, branch)) => replay(tls, p, branch.min(t)),
        None => Vec::new(),
    };
    out.extend(
        tls[x]
            .commits
            .iter()
            .filter(|(at, _)| *at <= t)
            .map(|(_, id)| *id),
    );
    out
}

proptest! {
    /// Whatever the history, a restore to any second on the timeline `timeline_at` names
    /// brings back exactly the data the cluster had then, and the base snapshot chosen among
    /// those taken (at random seconds) holds a prefix of it.
    #[test]
    fn restoring_on_the_timeline_live_at_t_brings_back_the_data_of_t(
        events in proptest::collection::vec(event(), 1..40),
        taken in proptest::collection::vec(any::<bool>(), 41),
    ) {
        let mut tls = vec![Tl { parent: None, commits: Vec::new() }];
        let mut live = 0usize;
        let mut status: Vec<DbTimeline> = vec![first(1, 0.0)];
        // The data the cluster had at the end of each second.
        let mut truth: Vec<Vec<u32>> = vec![Vec::new()];
        for (i, e) in events.iter().enumerate() {
            let now = (i + 1) as f64;
            let mut data = truth[i].clone();
            match e {
                Event::Write => {
                    tls[live].commits.push((now, i as u32));
                    data.push(i as u32);
                }
                Event::Failover => {
                    tls.push(Tl { parent: Some((live, now)), commits: Vec::new() });
                    live = tls.len() - 1;
                    status.push(first(live as u32 + 1, now));
                }
                Event::Backtrack(f) => {
                    let to = (f * i as f64).floor();
                    // The controller's choice, carried out as PostgreSQL does.
                    let along = timeline_at(&status, to).unwrap() as usize - 1;
                    tls.push(Tl { parent: Some((along, to)), commits: Vec::new() });
                    live = tls.len() - 1;
                    status.last_mut().unwrap().archived_until = at(now);
                    status.push(backtracked(live as u32 + 1, now, to));
                    data = replay(&tls, live, now);
                    prop_assert_eq!(&data, &truth[to as usize]);
                }
            }
            truth.push(data);
        }
        let n = truth.len();
        for t in 0..n {
            let x = timeline_at(&status, t as f64).unwrap() as usize - 1;
            prop_assert_eq!(&replay(&tls, x, t as f64), &truth[t], "t = {}", t);
            for b in 0..=t {
                if is_prefix(&status, b as f64, t as f64) {
                    prop_assert!(truth[t].starts_with(&truth[b]), "b = {}, t = {}", b, t);
                }
            }
            // Snapshots complete at some seconds: the base is on t's chain.
            let snaps: Vec<Snapshot> = (1..n)
                .filter(|b| taken[*b])
                .map(|b| Snapshot { created: b as i64, ..auto(&b.to_string(), b as i64) })
                .collect();
            if let Some(s) = base_snapshot(&snaps, "uid-1", &status, t as f64) {
                let b = s.complete.unwrap() as usize;
                prop_assert!(b <= t && truth[t].starts_with(&truth[b]), "b = {}, t = {}", b, t);
            }
        }
    }
}
