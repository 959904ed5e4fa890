//! The in-memory backend, for tests: the same engine (revisions, group commit, hub) over
//! the in-memory index alone, whose flush is a no-op.

use super::engine::{Backend, Engine, delegate_store};
use super::index::Index;
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
            index: Index::default(),
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
    index: Index,
}

impl Backend for MemoryBackend {
    fn revision(&self) -> Result<Revision> {
        Ok(0)
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.index.get(key))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(self.index.scan_prefix(prefix))
    }

    fn apply(&self, key: &[u8], kv: Option<&KeyValue>, _rev: Revision) -> Result<()> {
        self.index.apply(key, kv);
        Ok(())
    }

    fn flush(&self) -> Result<(), sled::Error> {
        Ok(())
    }
}
