//! Room given away that the caches do not show yet.
//!
//! Two placers decide where things run: the scheduler binds instances, and the DB cluster
//! controller places DB members. Each counts what is free on a node from its own caches, and a
//! cache shows a placement only once its write has come back through the watch. Without a shared
//! record, both could give the same room away in the same instant. So a placer notes each
//! placement here while it decides, under the ledger's lock, and then the store revision of its
//! write. Every placer counts the notes its caches do not show yet against their nodes.
//! kube-scheduler "assumes" the pods it binds likewise, until its informers show them.
//!
//! A note is shown to a cache once the cache reflects the note's write: the cache's revision is
//! at least the write's. A note whose write has not returned counts everywhere. A note lives at
//! most [`TTL`]: a write that failed before it could be forgotten, or a placement that was never
//! written.

use super::plan::Size;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a note lives at most.
pub const TTL: Duration = Duration::from_secs(10);

/// What holds the room.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    Instance(String),
    /// A member of a DB cluster.
    DbMember {
        cluster: String,
        name: String,
    },
}

/// Where a holder was placed, and how big it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub zone: String,
    /// Its instance type or DB instance class.
    pub class: String,
    pub size: Size,
}

#[derive(Clone, Debug)]
struct Note {
    placement: Placement,
    /// The store revision of the write that placed it, once it has returned.
    revision: Option<u64>,
    at: Instant,
}

/// The ledger of placements the placers of one process have made. Shared through an `Arc`.
#[derive(Debug, Default)]
pub struct Assumed {
    notes: Mutex<HashMap<Holder, Note>>,
}

impl Assumed {
    /// The ledger, for one decision: read what is unseen, decide, note what was decided. Held
    /// only while deciding (never across an await), so that two placers decide one at a time.
    pub fn lock(&self) -> Ledger<'_> {
        Ledger {
            notes: self.notes.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The write that placed `holder` returned at store revision `revision`.
    pub fn written(&self, holder: &Holder, revision: u64) {
        if let Some(note) = self.lock().notes.get_mut(holder) {
            note.revision = Some(revision);
        }
    }

    /// The placement of `holder` was not written: its room is free again.
    pub fn forget(&self, holder: &Holder) {
        self.lock().notes.remove(holder);
    }
}

/// The locked ledger.
pub struct Ledger<'a> {
    notes: MutexGuard<'a, HashMap<Holder, Note>>,
}

impl Ledger<'_> {
    /// Notes that `holder` was placed. A note of the same placement keeps the revision of its
    /// write (a plan that decides a placement again, before its cache shows the first one).
    pub fn assume(&mut self, holder: Holder, placement: Placement) {
        let revision = self
            .notes
            .get(&holder)
            .filter(|n| n.placement == placement)
            .and_then(|n| n.revision);
        self.notes.insert(
            holder,
            Note {
                placement,
                revision,
                at: Instant::now(),
            },
        );
    }

    /// The placements that caches at these revisions do not show yet: `instances` is the
    /// revision of the reader's instances cache, `members` of its DB members cache. Drops the
    /// notes past [`TTL`].
    pub fn unseen(&mut self, instances: u64, members: u64) -> Vec<(Holder, Placement)> {
        self.notes.retain(|_, n| n.at.elapsed() < TTL);
        let mut unseen: Vec<(Holder, Placement)> = self
            .notes
            .iter()
            .filter(|(holder, note)| {
                let cache = match holder {
                    Holder::Instance(_) => instances,
                    Holder::DbMember { .. } => members,
                };
                note.revision.is_none_or(|r| r > cache)
            })
            .map(|(h, n)| (h.clone(), n.placement.clone()))
            .collect();
        unseen.sort_by(|a, b| a.0.cmp(&b.0));
        unseen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(node: &str) -> Placement {
        Placement {
            node: node.into(),
            zone: "az-a".into(),
            class: "db.t3.micro".into(),
            size: Size::new(2000, 1024),
        }
    }

    fn member(name: &str) -> Holder {
        Holder::DbMember {
            cluster: "orders".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_note_counts_until_a_cache_reflects_its_write() {
        let assumed = Assumed::default();
        assumed
            .lock()
            .assume(Holder::Instance("web-1".into()), on("node-a"));
        assumed.lock().assume(member("orders-1"), on("node-b"));
        // Not written yet: unseen by any cache.
        assert_eq!(assumed.lock().unseen(u64::MAX - 1, u64::MAX - 1).len(), 2);

        assumed.written(&Holder::Instance("web-1".into()), 40);
        assumed.written(&member("orders-1"), 41);
        let unseen = assumed.lock().unseen(39, 41);
        assert_eq!(
            unseen,
            vec![(Holder::Instance("web-1".into()), on("node-a"))]
        );
        // Each kind is judged by its own cache.
        let unseen = assumed.lock().unseen(40, 40);
        assert_eq!(unseen, vec![(member("orders-1"), on("node-b"))]);
        assert!(assumed.lock().unseen(40, 41).is_empty());
    }

    #[test]
    fn a_forgotten_note_frees_its_room_and_deciding_again_keeps_the_write() {
        let assumed = Assumed::default();
        assumed.lock().assume(member("orders-1"), on("node-a"));
        assumed.written(&member("orders-1"), 7);
        // Decided again, the same: still shown once the cache passes the first write.
        assumed.lock().assume(member("orders-1"), on("node-a"));
        assert!(assumed.lock().unseen(0, 7).is_empty());
        // Decided again elsewhere: a new placement, unwritten.
        assumed.lock().assume(member("orders-1"), on("node-b"));
        assert_eq!(assumed.lock().unseen(0, 7).len(), 1);
        assumed.forget(&member("orders-1"));
        assert!(assumed.lock().unseen(0, 0).is_empty());
        // Writes of holders never noted change nothing.
        assumed.written(&member("orders-2"), 9);
        assert!(assumed.lock().unseen(0, 0).is_empty());
    }
}
