//! The in-memory ordered index every backend serves reads from: key → latest key-value.
//!
//! The memory backend is just this index; the sled backend keeps it beside its write-ahead log
//! and checkpoints it into sled, so that neither reads nor writes touch sled on their path.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::KeyValue;

/// Every live key with its latest key-value, sorted by key.
#[derive(Debug, Default)]
pub(super) struct Index {
    data: Mutex<BTreeMap<Bytes, KeyValue>>,
}

impl Index {
    /// An index holding these key-values.
    pub(super) fn from_entries(entries: impl IntoIterator<Item = KeyValue>) -> Self {
        let data = entries.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        Self {
            data: Mutex::new(data),
        }
    }

    fn data(&self) -> MutexGuard<'_, BTreeMap<Bytes, KeyValue>> {
        // Map operations leave the map consistent even if a caller panicked.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.data().get(key).cloned()
    }

    /// Every key-value whose key starts with `prefix`, sorted by key.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.data()
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// Stores `kv` under `key` (its own key), or removes `key` when `kv` is `None`. Cheap: a
    /// key-value's bytes are shared, not copied.
    pub(super) fn apply(&self, key: &[u8], kv: Option<&KeyValue>) {
        let mut data = self.data();
        match kv {
            Some(kv) => data.insert(kv.key.clone(), kv.clone()),
            None => data.remove(key),
        };
    }

    pub(super) fn len(&self) -> usize {
        self.data().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: u64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: rev.to_string().into(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    #[test]
    fn a_prefix_scan_stops_at_the_first_key_past_the_prefix() {
        let index = Index::from_entries([kv("/a/1", 1), kv("/a/2", 2), kv("/b/1", 3)]);
        let keys: Vec<_> = index
            .scan_prefix(b"/a/")
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, [&b"/a/1"[..], &b"/a/2"[..]]);
        index.apply(b"/a/1", None);
        index.apply(b"/c", Some(&kv("/c", 4)));
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(b"/a/1"), None);
        assert_eq!(index.get(b"/c"), Some(kv("/c", 4)));
    }
}
