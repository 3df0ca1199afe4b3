//! A bounded verdict cache keyed by the SHA-256 of the scanned bytes.
//!
//! Only definite answers (clean, infected) are kept: unscannable depends on engine limits and
//! failures are not answers. Entries expire after a TTL so new signatures take effect; when
//! full, the oldest entry goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::ScanResult;

/// The cache key: SHA-256 of the bytes.
pub type Digest = [u8; 32];

/// Hashes a buffer for the cache.
pub fn digest(data: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Size and lifetime of a [`VerdictCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept.
    pub capacity: usize,
    /// How long an entry is trusted.
    pub ttl: Duration,
    /// Buffers smaller than this are not cached (hashing costs about what scanning saves).
    pub min_size: usize,
}

impl Default for CacheConfig {
    /// 10,000 entries, 10 minutes, from 1 KiB.
    fn default() -> Self {
        Self {
            capacity: 10_000,
            ttl: Duration::from_secs(600),
            min_size: 1024,
        }
    }
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Digest, (ScanResult, Instant)>,
    order: VecDeque<(Digest, Instant)>,
}

/// Bounded, TTL-limited map from content hash to verdict. Shared by every session.
///
/// A verdict is what one engine set said: share a cache only among stages that scan with the
/// same [`crate::EngineSet`].
#[derive(Debug)]
pub struct VerdictCache {
    cfg: CacheConfig,
    inner: Mutex<Inner>,
}

impl VerdictCache {
    /// An empty cache.
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> CacheConfig {
        self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached verdict for `key`, if present and fresh.
    pub fn get(&self, key: &Digest) -> Option<ScanResult> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &Digest, now: Instant) -> Option<ScanResult> {
        let mut inner = self.lock();
        match inner.map.get(key) {
            Some((r, at)) if now.duration_since(*at) < self.cfg.ttl => Some(r.clone()),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a definite verdict (unscannable results are ignored).
    pub fn put(&self, key: Digest, result: &ScanResult) {
        self.put_at(key, result, Instant::now());
    }

    fn put_at(&self, key: Digest, result: &ScanResult, now: Instant) {
        if self.cfg.capacity == 0 || matches!(result, ScanResult::Unscannable(_)) {
            return;
        }
        let mut inner = self.lock();
        // Evict from the front: expired entries, stale order records, then the oldest.
        while inner.map.len() >= self.cfg.capacity || inner.order.len() >= 2 * self.cfg.capacity {
            let Some((k, at)) = inner.order.pop_front() else {
                break;
            };
            // Only remove the map entry this order record belongs to (it may have been
            // replaced by a newer put of the same key).
            if inner.map.get(&k).is_some_and(|(_, t)| *t == at) {
                inner.map.remove(&k);
            }
        }
        inner.map.insert(key, (result.clone(), now));
        inner.order.push_back((key, now));
    }

    /// Entries held (some may have expired and not yet been dropped).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Digest {
        digest(&i.to_be_bytes())
    }

    #[test]
    fn bounded_and_expiring() {
        let c = VerdictCache::new(CacheConfig {
            capacity: 3,
            ttl: Duration::from_secs(60),
            min_size: 0,
        });
        let t0 = Instant::now();
        for i in 0..5 {
            c.put_at(key(i), &ScanResult::Clean, t0);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get_at(&key(0), t0), None, "oldest evicted");
        assert_eq!(c.get_at(&key(4), t0), Some(ScanResult::Clean));
        c.put_at(key(9), &ScanResult::Infected("E".into()), t0);
        assert_eq!(
            c.get_at(&key(9), t0 + Duration::from_secs(59)),
            Some(ScanResult::Infected("E".into()))
        );
        assert_eq!(c.get_at(&key(9), t0 + Duration::from_secs(60)), None);
        c.put_at(key(7), &ScanResult::Unscannable("big".into()), t0);
        assert_eq!(c.get_at(&key(7), t0), None, "unscannable not cached");
    }

    #[test]
    fn repeated_puts_of_one_key_stay_bounded() {
        let c = VerdictCache::new(CacheConfig {
            capacity: 2,
            ttl: Duration::from_secs(60),
            min_size: 0,
        });
        let t0 = Instant::now();
        for i in 0..1000u64 {
            c.put_at(key(1), &ScanResult::Clean, t0 + Duration::from_millis(i));
        }
        assert_eq!(c.len(), 1);
        assert!(c.lock().order.len() <= 4);
        assert_eq!(c.get_at(&key(1), t0), Some(ScanResult::Clean));
    }

    #[test]
    fn digest_is_sha256() {
        let d = digest(b"abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
