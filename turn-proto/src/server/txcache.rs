//! The transaction cache: the exact response bytes sent to each authenticated request, kept
//! for a little longer than a client retransmits (RFC 8489 §6.3.1: 39.5 s), so that a
//! retransmission gets the same answer instead of being processed twice.
//!
//! Bounded both by entry count and by total bytes: responses can be large (a 420 listing
//! attributes, long error phrases), and the count alone would not bound memory.
use std::collections::VecDeque;

use super::HashMap;
use std::time::{Duration, Instant};

use stun_codec::{Method, TransactionId};

use super::FiveTuple;

/// A request is the same request if 5-tuple, transaction id and method match.
type Key = (FiveTuple, TransactionId, Method);

#[derive(Debug)]
pub(crate) struct TransactionCache {
    ttl: Duration,
    capacity: usize,
    max_bytes: usize,
    /// Total length of the responses in `entries`.
    bytes: usize,
    entries: HashMap<Key, (Instant, Vec<u8>)>,
    /// Keys in insertion (hence expiry) order.
    order: VecDeque<(Instant, Key)>,
}

impl TransactionCache {
    pub(crate) fn new(ttl: Duration, capacity: usize, max_bytes: usize) -> Self {
        TransactionCache {
            ttl,
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<&[u8]> {
        self.entries
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, bytes)| bytes.as_slice())
    }

    pub(crate) fn insert(&mut self, key: Key, response: Vec<u8>, now: Instant) {
        if response.len() > self.max_bytes {
            // Could never fit: not worth emptying the cache for.
            return;
        }
        self.prune(now);
        while self.entries.len() >= self.capacity || self.bytes + response.len() > self.max_bytes {
            // Full: the oldest entry goes first.
            let Some((expires, old)) = self.order.pop_front() else {
                break;
            };
            self.remove_if_expiring(&old, expires);
        }
        let expires = now + self.ttl;
        self.bytes += response.len();
        if let Some((_, replaced)) = self.entries.insert(key, (expires, response)) {
            self.bytes = self.bytes.saturating_sub(replaced.len());
        }
        self.order.push_back((expires, key));
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some((expires, key)) = self.order.front().copied() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.remove_if_expiring(&key, expires);
        }
    }

    /// Removes `key` if its entry is the one queued with `expires` (not a newer one).
    fn remove_if_expiring(&mut self, key: &Key, expires: Instant) {
        if self.entries.get(key).is_some_and(|(e, _)| *e == expires)
            && let Some((_, response)) = self.entries.remove(key)
        {
            self.bytes = self.bytes.saturating_sub(response.len());
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Transport;

    fn key(n: u8) -> Key {
        (
            FiveTuple {
                client: "192.0.2.1:1000".parse().unwrap(),
                server: "192.0.2.2:3478".parse().unwrap(),
                transport: Transport::Udp,
            },
            TransactionId::new([n; 12]),
            Method::new(3).unwrap(),
        )
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let t0 = Instant::now();
        let mut cache = TransactionCache::new(Duration::from_secs(40), 2, 1 << 20);
        cache.insert(key(1), vec![1], t0);
        assert_eq!(cache.get(&key(1), t0), Some(&[1u8][..]));
        assert_eq!(cache.get(&key(1), t0 + Duration::from_secs(40)), None);
        cache.insert(key(2), vec![2], t0 + Duration::from_secs(1));
        cache.insert(key(3), vec![3], t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(1), t0 + Duration::from_secs(2)), None);
        assert!(cache.get(&key(3), t0 + Duration::from_secs(2)).is_some());
        cache.prune(t0 + Duration::from_secs(100));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn total_bytes_are_bounded() {
        let t0 = Instant::now();
        let mut cache = TransactionCache::new(Duration::from_secs(40), 100, 1000);
        for n in 0..10 {
            cache.insert(key(n), vec![n; 300], t0);
            assert!(cache.bytes() <= 1000);
        }
        // Three fit; the newest are kept.
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), 900);
        assert!(cache.get(&key(9), t0).is_some());
        assert!(cache.get(&key(6), t0).is_none());
        // Too large for the cache at all: not cached, nothing evicted for it.
        cache.insert(key(20), vec![0; 1001], t0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(20), t0).is_none());
        // Replacing an entry accounts for the old bytes.
        cache.insert(key(9), vec![1; 10], t0 + Duration::from_secs(1));
        assert_eq!(cache.bytes(), 610);
        cache.prune(t0 + Duration::from_secs(100));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }
}
