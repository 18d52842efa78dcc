//! A decoded-chunk cache bounded by bytes, not entries, with in-flight deduplication:
//! two readers asking for the same chunk at once cause one decode.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::stats::Stats;

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
}

/// What [`ChunkCache::lookup_or_claim`] found.
pub enum Lookup {
    Hit(Bytes),
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
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// (bytes, entries) held now.
    pub fn usage(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.bytes, g.lru.len() as u64)
    }

    pub fn contains(&self, key: Key) -> bool {
        self.inner.lock().lru.contains(&key) || self.inflight.lock().contains_key(&key)
    }

    /// Returns the cached chunk, or a ticket to wait on, or the duty to decode it.
    pub fn lookup_or_claim(&self, key: Key, stats: &Stats) -> Lookup {
        if let Some(e) = self.inner.lock().lru.get_mut(&key) {
            if e.prefetched {
                e.prefetched = false;
                stats.prefetch_hit();
            }
            return Lookup::Hit(e.data.clone());
        }
        let mut inf = self.inflight.lock();
        // Re-check under the in-flight lock: a decode may have completed in between.
        if let Some(e) = self.inner.lock().lru.get_mut(&key) {
            if e.prefetched {
                e.prefetched = false;
                stats.prefetch_hit();
            }
            return Lookup::Hit(e.data.clone());
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

    /// Publishes a decode result: successes enter the cache (evicting the least recently
    /// used chunks beyond the byte bound), and every waiter wakes up.
    pub fn complete(&self, ticket: &Ticket, result: Outcome, prefetched: bool, stats: &Stats) {
        if let Ok(data) = &result {
            let len = data.len() as u64;
            if len <= self.capacity {
                let mut g = self.inner.lock();
                let entry = Entry {
                    data: data.clone(),
                    prefetched,
                };
                if let Some(old) = g.lru.put(ticket.key, entry) {
                    g.bytes -= old.data.len() as u64;
                }
                g.bytes += len;
                while g.bytes > self.capacity {
                    match g.lru.pop_lru() {
                        Some((_, e)) => {
                            g.bytes -= e.data.len() as u64;
                            stats.eviction();
                        }
                        None => break,
                    }
                }
            }
        }
        // Remove from in-flight after the cache insert, so a new reader sees one or the other.
        self.inflight.lock().remove(&ticket.key);
        *ticket.slot.done.lock() = Some(result);
        ticket.slot.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_dedupes() {
        let stats = Stats::default();
        let c = ChunkCache::new(250);
        for i in 0..5u32 {
            match c.lookup_or_claim((0, i), &stats) {
                Lookup::Claimed(t) => c.complete(&t, Ok(Arc::new(vec![i as u8; 100])), false, &stats),
                _ => panic!("fresh key must be claimed"),
            }
            assert!(c.usage().0 <= 250);
        }
        assert_eq!(c.usage(), (200, 2));
        assert!(matches!(c.lookup_or_claim((0, 4), &stats), Lookup::Hit(_)));
        assert!(matches!(c.lookup_or_claim((0, 0), &stats), Lookup::Claimed(_)));
        // A second claimant of an in-flight key waits, then sees the first one's result.
        let t2 = match c.lookup_or_claim((0, 0), &stats) {
            Lookup::Wait(t) => t,
            _ => panic!("in-flight key must be waited on"),
        };
        let h = std::thread::spawn(move || t2.wait().map(|b| b.len()));
        // Complete key (0,0) through the claim the earlier lookup returned: find it again.
        let slot_key = (0, 0);
        let slot = c.inflight.lock().get(&slot_key).cloned().unwrap();
        let t = Ticket { key: slot_key, slot };
        c.complete(&t, Ok(Arc::new(vec![1; 10])), true, &stats);
        assert_eq!(h.join().unwrap().unwrap(), 10);
        // An entry larger than the cache is returned to waiters but not cached.
        if let Lookup::Claimed(t) = c.lookup_or_claim((1, 1), &stats) {
            c.complete(&t, Ok(Arc::new(vec![0; 1000])), false, &stats);
        }
        assert!(c.usage().0 <= 250);
        assert_eq!(stats.snapshot().evictions, 3);
        assert_eq!(stats.snapshot().prefetch_hits, 0);
        assert!(matches!(c.lookup_or_claim((0, 0), &stats), Lookup::Hit(_)));
        assert_eq!(stats.snapshot().prefetch_hits, 1);
    }
}
