//! The in-memory backend, for tests: the same engine (revisions, group commit, hub) over a
//! `BTreeMap`, whose flush is a no-op.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::engine::{Backend, Engine, delegate_store};
use super::{KeyValue, Result, Revision, StoreOptions};

/// A [`Store`](super::Store) that keeps everything in memory, for tests. It behaves like
/// [`SledStore`](super::SledStore) in every way except that nothing survives a drop.
pub struct MemoryStore {
    engine: Engine<MemoryBackend>,
}

impl MemoryStore {
    /// An empty store with default options.
    pub fn new() -> Self {
        Self::with_options(&StoreOptions::default())
    }

    /// An empty store with these options.
    pub fn with_options(options: &StoreOptions) -> Self {
        let backend = MemoryBackend {
            data: Mutex::new(BTreeMap::new()),
        };
        // The memory backend's `revision` cannot fail; only spawning the flusher thread can,
        // which means the process is out of threads, as fatal as a failed allocation.
        let engine = Engine::new(backend, options).expect("starting the memory store's flusher");
        Self { engine }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

delegate_store!(MemoryStore);

struct MemoryBackend {
    data: Mutex<BTreeMap<Vec<u8>, KeyValue>>,
}

impl MemoryBackend {
    fn data(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, KeyValue>> {
        // Map operations leave the map consistent even if a caller panicked.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn revision(&self) -> Result<Revision> {
        Ok(0)
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.data().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let data = self.data();
        let kvs = data
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(kvs)
    }

    fn apply(&self, key: &[u8], kv: Option<&KeyValue>, _rev: Revision) -> Result<()> {
        let mut data = self.data();
        match kv {
            Some(kv) => data.insert(key.to_vec(), kv.clone()),
            None => data.remove(key),
        };
        Ok(())
    }

    fn flush(&self) -> Result<(), sled::Error> {
        Ok(())
    }
}
