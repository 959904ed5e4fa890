//! The sled backend's write-ahead log: what makes a write durable before it is acknowledged.
//!
//! Each applied write is appended as one record to an in-memory buffer (under the engine's write
//! lock, so records are in revision order); each group commit writes the buffer to the current
//! segment file with one `write` and one `fdatasync`. That is the whole durable path, as in
//! etcd's WAL: sled is brought up to date later, in batches, by the checkpointer, and a segment
//! is deleted once a durable checkpoint covers its last record.
//!
//! ```text
//! wal/0000000000000007.log:  record*        record = len u32 LE | crc32(body) u32 LE | body
//! body = revision u64 LE | op u8 | key length u32 LE | key | put only: create_revision u64 LE | value
//! ```
//!
//! Opening reads every segment in order and returns its records. A segment ends at its first
//! record that is short or fails its checksum: that is the tail a crash tore, never acknowledged
//! (acknowledgement follows the `fdatasync`). Each opening starts a new segment, so a torn tail is
//! never appended to; the caller checks that the revisions it replays follow on without a gap,
//! which is what would show a record lost from the middle.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::{KeyValue, Revision};

const HEADER_LEN: usize = 8;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const SUFFIX: &str = ".log";

/// One write read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) rev: Revision,
    pub(super) key: Bytes,
    /// The key-value the put stored; `None` for a delete.
    pub(super) kv: Option<KeyValue>,
}

/// The log in one directory.
pub(super) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Records appended and not yet written, with the revision of the last one.
    buffer: Mutex<(Vec<u8>, Revision)>,
    /// The segment being written. Only the group commit writes it.
    current: Mutex<Segment>,
    /// Finished segments, oldest first: `(path, revision of its last record)`.
    sealed: Mutex<Vec<(PathBuf, Revision)>>,
}

struct Segment {
    file: File,
    path: PathBuf,
    seq: u64,
    len: u64,
    /// The revision of the last record written to it (0 for none).
    last: Revision,
    /// A spare buffer, swapped with the append buffer so neither is reallocated.
    spare: Vec<u8>,
}

/// What opening found: the log, every record in its segments in order, and how many segments
/// ended in a torn record.
pub(super) struct Opened {
    pub(super) wal: Wal,
    pub(super) records: Vec<Record>,
    pub(super) torn: usize,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), reads every record, and starts a new segment.
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> io::Result<Opened> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            if let Some(seq) = seq {
                segments.push((seq, path));
            }
        }
        segments.sort();

        let mut records = Vec::new();
        let mut sealed = Vec::with_capacity(segments.len());
        let mut torn = 0;
        for (_, path) in &segments {
            let bytes = fs::read(path)?;
            let (read, complete) = decode_all(&bytes);
            if !complete {
                torn += 1;
                tracing::warn!(
                    segment = %path.display(),
                    records = read.len(),
                    "The store's log ends in a torn record (a crash during a write that was \
                     never acknowledged); it is ignored."
                );
            }
            let last = read.last().map_or(0, |r| r.rev);
            records.extend(read);
            sealed.push((path.clone(), last));
        }

        let seq = segments.last().map_or(0, |(seq, _)| seq + 1);
        let current = Segment::create(dir, seq)?;
        Ok(Opened {
            wal: Wal {
                dir: dir.to_owned(),
                segment_bytes,
                buffer: Mutex::new((Vec::new(), 0)),
                current: Mutex::new(current),
                sealed: Mutex::new(sealed),
            },
            records,
            torn,
        })
    }

    /// Appends the record of one write to the buffer: `kv` stored under `key`, or `key`
    /// deleted when `kv` is `None`. Durable after the next [`sync`](Self::sync).
    pub(super) fn append(&self, rev: Revision, key: &[u8], kv: Option<&KeyValue>) {
        let mut buffer = lock(&self.buffer);
        encode(&mut buffer.0, rev, key, kv);
        buffer.1 = rev;
    }

    /// Writes every appended record to the current segment and `fdatasync`s it; starts a new
    /// segment when this one has grown past its size. Called by one thread at a time.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut current = lock(&self.current);
        let last = {
            let mut buffer = lock(&self.buffer);
            std::mem::swap(&mut buffer.0, &mut current.spare);
            buffer.1
        };
        if !current.spare.is_empty() {
            let Segment {
                file, spare, len, ..
            } = &mut *current;
            file.write_all(spare)?;
            *len += spare.len() as u64;
            spare.clear();
            current.file.sync_data()?;
            current.last = last;
        }
        if current.len >= self.segment_bytes {
            let next = Segment::create(&self.dir, current.seq + 1)?;
            let old = std::mem::replace(&mut *current, next);
            lock(&self.sealed).push((old.path, old.last));
        }
        Ok(())
    }

    /// Deletes the finished segments whose every record is at or before `rev` (covered by a
    /// durable checkpoint). Returns how many it deleted.
    pub(super) fn remove_through(&self, rev: Revision) -> io::Result<usize> {
        let mut sealed = lock(&self.sealed);
        let covered = sealed.iter().take_while(|(_, last)| *last <= rev).count();
        for (path, _) in sealed.iter().take(covered) {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sealed.drain(..covered);
        Ok(covered)
    }

    /// How many segment files the log has, the current one included.
    #[cfg(test)]
    pub(super) fn segments(&self) -> usize {
        lock(&self.sealed).len() + 1
    }
}

impl Segment {
    /// Creates segment `seq` and makes its directory entry durable before anything is written
    /// to it, so an acknowledged record can never be in a file a crash forgets.
    fn create(dir: &Path, seq: u64) -> io::Result<Segment> {
        let path = dir.join(format!("{seq:016x}{SUFFIX}"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            file,
            path,
            seq,
            len: 0,
            last: 0,
            spare: Vec::new(),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode(out: &mut Vec<u8>, rev: Revision, key: &[u8], kv: Option<&KeyValue>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&rev.to_le_bytes());
    out.push(if kv.is_some() { OP_PUT } else { OP_DELETE });
    // Keys are object paths, far below 4 GiB; the API server refuses larger messages.
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    if let Some(kv) = kv {
        out.extend_from_slice(&kv.create_revision.to_le_bytes());
        out.extend_from_slice(&kv.value);
    }
    let body = &out[start + HEADER_LEN..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc);
}

/// Decodes the records of one segment; `false` when it ends in a torn record.
fn decode_all(mut bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        match decode_one(bytes) {
            Some((record, used)) => {
                records.push(record);
                bytes = &bytes[used..];
            }
            None => return (records, false),
        }
    }
    (records, true)
}

fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    if len == 0 || crc32fast::hash(body) != crc {
        return None;
    }
    let rev = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let op = *body.get(8)?;
    let key_len = u32::from_le_bytes(body.get(9..13)?.try_into().ok()?) as usize;
    let key = Bytes::copy_from_slice(body.get(13..13 + key_len)?);
    let rest = &body[13 + key_len..];
    let kv = match op {
        OP_PUT => Some(KeyValue {
            key: key.clone(),
            create_revision: u64::from_le_bytes(rest.get(..8)?.try_into().ok()?),
            mod_revision: rev,
            value: Bytes::copy_from_slice(&rest[8..]),
        }),
        OP_DELETE if rest.is_empty() => None,
        _ => return None,
    };
    Some((Record { rev, key, kv }, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: Revision, value: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn write(wal: &Wal, rev: Revision, kv: Option<&KeyValue>, key: &str) {
        wal.append(rev, key.as_bytes(), kv);
        wal.sync().unwrap();
    }

    #[test]
    fn records_round_trip_through_segments_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let a = put("/a", 1, "one");
        let a2 = put("/a", 3, "three");
        {
            let opened = Wal::open(dir.path(), 1 << 20).unwrap();
            assert!(opened.records.is_empty());
            write(&opened.wal, 1, Some(&a), "/a");
            write(&opened.wal, 2, None, "/b");
        }
        let opened = Wal::open(dir.path(), 1 << 20).unwrap();
        write(&opened.wal, 3, Some(&a2), "/a");
        let records = Wal::open(dir.path(), 1 << 20).unwrap().records;
        assert_eq!(
            records,
            [
                Record {
                    rev: 1,
                    key: Bytes::from_static(b"/a"),
                    kv: Some(a)
                },
                Record {
                    rev: 2,
                    key: Bytes::from_static(b"/b"),
                    kv: None
                },
                Record {
                    rev: 3,
                    key: Bytes::from_static(b"/a"),
                    kv: Some(a2)
                },
            ]
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_its_segment_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let opened = Wal::open(dir.path(), 1 << 20).unwrap();
            write(&opened.wal, 1, Some(&put("/a", 1, "x")), "/a");
            write(&opened.wal, 2, Some(&put("/b", 2, "y")), "/b");
            lock(&opened.wal.current).path.clone()
        };
        let whole = fs::read(&path).unwrap();
        for cut in [whole.len() - 1, whole.len() - 12] {
            fs::write(&path, &whole[..cut]).unwrap();
            let opened = Wal::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(opened.torn, 1, "cut at {cut}");
            assert_eq!(
                opened.records.iter().map(|r| r.rev).collect::<Vec<_>>(),
                [1]
            );
        }
        // A flipped bit in the last record's value fails its checksum.
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        let opened = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(opened.records.len(), 1);
    }

    #[test]
    fn segments_rotate_by_size_and_go_once_a_checkpoint_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Wal::open(dir.path(), 100).unwrap();
        let wal = opened.wal;
        for rev in 1..=6 {
            write(&wal, rev, Some(&put("/k", rev, &"v".repeat(100))), "/k");
        }
        assert_eq!(wal.segments(), 7, "each record fills a segment");
        assert_eq!(wal.remove_through(3).unwrap(), 3);
        assert_eq!(wal.segments(), 4);
        let reopened = Wal::open(dir.path(), 100).unwrap();
        assert_eq!(
            reopened.records.iter().map(|r| r.rev).collect::<Vec<_>>(),
            [4, 5, 6]
        );
    }

    #[test]
    fn an_empty_sync_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Wal::open(dir.path(), 1 << 20).unwrap();
        opened.wal.sync().unwrap();
        let path = lock(&opened.wal.current).path.clone();
        assert_eq!(fs::metadata(path).unwrap().len(), 0);
    }
}
