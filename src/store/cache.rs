//! A decoded-chunk cache bounded by bytes, not entries, with in-flight deduplication:
//! two readers asking for the same chunk at once cause one decode.
//!
//! The bound counts each entry's bookkeeping ([`ENTRY_OVERHEAD`]) as well as its data, so
//! a pack of tiny chunks cannot grow the daemon far past the bound. The most recently
//! decoded chunk is always kept, even alone above the bound, so a chunk larger than the
//! cache is decoded once per pass, not once per read request.
//!
//! The cache keeps no counters: lookups say whether they were the first read of a
//! prefetched chunk, and completions say how many chunks they evicted.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::pool::BufPool;

/// Bytes charged per cached entry besides its data: the LRU node with its key and the
/// `Arc` pointer, the hash-map slot, the `Arc<Vec>` header and the allocator's rounding.
/// Measured on x86_64 glibc: 1M one-byte entries raise RSS by 163 bytes each.
pub const ENTRY_OVERHEAD: u64 = 160;

/// (file number, chunk number).
pub type Key = (u32, u32);

/// Decoded bytes shared between the cache and readers.
pub type Bytes = Arc<Vec<u8>>;

/// The outcome of a decode as seen by every waiter (shared, so all of them get it).
pub type Outcome = Result<Bytes, Arc<crate::Error>>;

struct Slot {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

struct Entry {
    data: Bytes,
    /// Decoded by prefetch and not yet read: the first read counts as a prefetch hit.
    prefetched: bool,
}

struct Inner {
    lru: lru::LruCache<Key, Entry>,
    bytes: u64,
}

pub struct ChunkCache {
    inner: Mutex<Inner>,
    inflight: Mutex<HashMap<Key, Arc<Slot>>>,
    capacity: u64,
    /// Where the buffers of chunks leaving the cache go, for the next decodes.
    pool: BufPool,
}

/// Free buffers kept for reuse: an eighth of the cache, at most 32 MiB (a few prefetch
/// windows of 1 MiB chunks), so the daemon stays within the cache bound plus 64 MiB.
fn pool_bytes(capacity: u64) -> usize {
    (capacity / 8).min(32 << 20) as usize
}

/// What [`ChunkCache::lookup_or_claim`] found.
pub enum Lookup {
    /// Cached; `prefetch_hit` when this is the first read of a chunk prefetch decoded.
    Hit { data: Bytes, prefetch_hit: bool },
    /// Someone else is decoding it: wait on the ticket.
    Wait(Ticket),
    /// The caller must decode it and call [`ChunkCache::complete`].
    Claimed(Ticket),
}

#[derive(Clone)]
pub struct Ticket {
    key: Key,
    slot: Arc<Slot>,
}

impl Ticket {
    pub fn key(&self) -> Key {
        self.key
    }

    /// Blocks until the decode finishes.
    pub fn wait(&self) -> Outcome {
        let mut g = self.slot.done.lock();
        while g.is_none() {
            self.slot.cv.wait(&mut g);
        }
        g.clone().expect("set before notify")
    }
}

impl ChunkCache {
    pub fn new(capacity: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            inflight: Mutex::new(HashMap::new()),
            capacity,
            pool: BufPool::new(pool_bytes(capacity)),
        }
    }

    /// A buffer for a decode of `len` bytes, recycled from a chunk that left the cache when
    /// one fits. Its contents are unspecified: the decoder writes every byte.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        self.pool.take(len)
    }

    /// Drops `key` from the cache (its reader has moved past it and the kernel's page cache
    /// holds what was served); its buffer is recycled unless a reader still holds it.
    /// Returns whether it was cached.
    pub fn remove(&self, key: Key) -> bool {
        let gone = {
            let mut g = self.inner.lock();
            let e = g.lru.pop(&key);
            if let Some(e) = &e {
                g.bytes -= charge(&e.data);
            }
            e
        };
        match gone {
            Some(e) => {
                self.recycle(e.data);
                true
            }
            None => false,
        }
    }

    /// Bytes of free buffers kept for reuse.
    pub fn pooled(&self) -> u64 {
        self.pool.bytes() as u64
    }

    fn recycle(&self, data: Bytes) {
        if let Ok(v) = Arc::try_unwrap(data) {
            self.pool.give(v);
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// (bytes charged against the bound, entries held now); the charge includes
    /// [`ENTRY_OVERHEAD`] per entry.
    pub fn usage(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.bytes, g.lru.len() as u64)
    }

    pub fn contains(&self, key: Key) -> bool {
        self.inner.lock().lru.contains(&key) || self.inflight.lock().contains_key(&key)
    }

    /// Returns the cached chunk, or a ticket to wait on, or the duty to decode it.
    pub fn lookup_or_claim(&self, key: Key) -> Lookup {
        if let Some(hit) = self.hit(key) {
            return hit;
        }
        let mut inf = self.inflight.lock();
        // Re-check under the in-flight lock: a decode may have completed in between.
        if let Some(hit) = self.hit(key) {
            return hit;
        }
        if let Some(slot) = inf.get(&key) {
            return Lookup::Wait(Ticket {
                key,
                slot: slot.clone(),
            });
        }
        let slot = Arc::new(Slot {
            done: Mutex::new(None),
            cv: Condvar::new(),
        });
        inf.insert(key, slot.clone());
        Lookup::Claimed(Ticket { key, slot })
    }

    fn hit(&self, key: Key) -> Option<Lookup> {
        let mut g = self.inner.lock();
        let e = g.lru.get_mut(&key)?;
        let prefetch_hit = std::mem::replace(&mut e.prefetched, false);
        Some(Lookup::Hit {
            data: e.data.clone(),
            prefetch_hit,
        })
    }

    /// Publishes a decode result: successes enter the cache (evicting the least recently
    /// used chunks beyond the byte bound, but never the one just added), and every waiter
    /// wakes up. Returns how many chunks it evicted.
    pub fn complete(&self, ticket: &Ticket, result: Outcome, prefetched: bool) -> u64 {
        let mut evicted = 0;
        let mut gone = Vec::new();
        if let Ok(data) = &result {
            let cost = charge(data);
            let mut g = self.inner.lock();
            let entry = Entry {
                data: data.clone(),
                prefetched,
            };
            if let Some(old) = g.lru.put(ticket.key, entry) {
                g.bytes -= charge(&old.data);
                gone.push(old.data);
            }
            g.bytes += cost;
            // The new entry is the most recent, so it is the last to go: it stays even when
            // it alone exceeds the bound, or readers of a huge chunk would decode it again
            // for every request.
            while g.bytes > self.capacity && g.lru.len() > 1 {
                match g.lru.pop_lru() {
                    Some((_, e)) => {
                        g.bytes -= charge(&e.data);
                        evicted += 1;
                        gone.push(e.data);
                    }
                    None => break,
                }
            }
        }
        // Remove from in-flight after the cache insert, so a new reader sees one or the other.
        self.inflight.lock().remove(&ticket.key);
        *ticket.slot.done.lock() = Some(result);
        ticket.slot.cv.notify_all();
        for d in gone {
            self.recycle(d);
        }
        evicted
    }
}

/// What an entry costs against the bound: the memory its buffer holds (a recycled buffer
/// may be larger than its chunk) and its bookkeeping.
fn charge(data: &Vec<u8>) -> u64 {
    data.capacity() as u64 + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts a fresh chunk; returns the evictions it caused.
    fn put(c: &ChunkCache, key: Key, len: usize) -> u64 {
        match c.lookup_or_claim(key) {
            Lookup::Claimed(t) => c.complete(&t, Ok(Arc::new(vec![key.1 as u8; len])), false),
            _ => panic!("fresh key {key:?} must be claimed"),
        }
    }

    #[test]
    fn bounded_by_bytes_and_dedupes() {
        let cap = 2 * (100 + ENTRY_OVERHEAD) + 50;
        let c = ChunkCache::new(cap);
        let mut evictions = 0;
        for i in 0..5u32 {
            evictions += put(&c, (0, i), 100);
            assert!(c.usage().0 <= cap);
        }
        assert_eq!(c.usage(), (2 * (100 + ENTRY_OVERHEAD), 2));
        assert!(matches!(
            c.lookup_or_claim((0, 4)),
            Lookup::Hit {
                prefetch_hit: false,
                ..
            }
        ));
        assert!(matches!(c.lookup_or_claim((0, 0)), Lookup::Claimed(_)));
        // A second claimant of an in-flight key waits, then sees the first one's result.
        let t2 = match c.lookup_or_claim((0, 0)) {
            Lookup::Wait(t) => t,
            _ => panic!("in-flight key must be waited on"),
        };
        let h = std::thread::spawn(move || t2.wait().map(|b| b.len()));
        // Complete key (0,0) through the claim the earlier lookup returned: find it again.
        let slot_key = (0, 0);
        let slot = c.inflight.lock().get(&slot_key).cloned().unwrap();
        let t = Ticket { key: slot_key, slot };
        evictions += c.complete(&t, Ok(Arc::new(vec![1; 10])), true);
        assert_eq!(h.join().unwrap().unwrap(), 10);
        assert_eq!(evictions, 4);
        // The first read of a prefetched chunk is a prefetch hit; the next is not.
        for want in [true, false] {
            match c.lookup_or_claim((0, 0)) {
                Lookup::Hit { prefetch_hit, .. } => assert_eq!(prefetch_hit, want),
                _ => panic!("cached key must hit"),
            }
        }
    }

    /// A million one-byte chunks once grew the daemon by 290 MB under a 32 MiB bound,
    /// because only data bytes were counted: each entry's bookkeeping counts now.
    #[test]
    fn tiny_entries_are_charged_their_bookkeeping() {
        let cap = 100 * (1 + ENTRY_OVERHEAD);
        let c = ChunkCache::new(cap);
        for i in 0..10_000u32 {
            put(&c, (0, i), 1);
        }
        let (bytes, entries) = c.usage();
        assert!(bytes <= cap, "{bytes} charged over a bound of {cap}");
        assert_eq!(entries, 100, "{entries} one-byte entries held under a bound of {cap}");
        assert_eq!(bytes, entries * (1 + ENTRY_OVERHEAD));
    }

    /// A chunk larger than the whole cache stays (alone) until the next chunk arrives, so
    /// a reader walking through it in small requests decodes it once.
    #[test]
    fn oversized_chunk_is_kept_alone_until_replaced() {
        let c = ChunkCache::new(1000);
        let mut evictions = put(&c, (0, 0), 10);
        evictions += put(&c, (0, 1), 10);
        evictions += put(&c, (0, 2), 10_000);
        assert_eq!(c.usage(), (10_000 + ENTRY_OVERHEAD, 1));
        for _ in 0..5 {
            assert!(matches!(c.lookup_or_claim((0, 2)), Lookup::Hit { .. }));
        }
        // The next chunk replaces it: the bound holds again.
        evictions += put(&c, (0, 3), 10);
        assert_eq!(c.usage(), (10 + ENTRY_OVERHEAD, 1));
        assert_eq!(evictions, 3);
    }
}
