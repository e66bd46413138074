//! What the server may send to sources it has not authenticated: the answers a spoofed source
//! address would reflect onto someone else (401, 438, 400 and other error responses without
//! MESSAGE-INTEGRITY, Binding responses).
//!
//! Over UDP anyone can send a request with someone else's address as its source, and an answer
//! larger than the request makes the relay an amplifier. So every such answer is paid for from
//! two token buckets of bytes, one for the source address and one for its prefix (IPv4 /24,
//! IPv6 /48): each holds at most a burst, refills slowly with time, and is credited with the
//! bytes of every STUN message the source sends. An answer goes out only if both buckets hold
//! its size; otherwise it is dropped and counted. Beyond the burst, a source (or a network)
//! gets back no more bytes than it sent, plus the refill. Clients behind one NAT share their
//! address's bucket: the burst and refill are sized for many of them starting at once (an
//! unauthenticated Allocate costs its 401 less its own size).
//!
//! Answers protected by MESSAGE-INTEGRITY are never limited (a spoofer cannot make them), nor
//! are answers on stream transports (a TCP handshake proves the source).
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::HashMap;

/// The buckets' sizes and refill rates, in bytes and bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerLimits {
    /// Bytes a source address may get beyond what it sent, at once.
    pub source_burst: u32,
    /// Bytes per second a source address's allowance grows by.
    pub source_refill: u32,
    /// The same for a prefix (IPv4 /24, IPv6 /48).
    pub prefix_burst: u32,
    pub prefix_refill: u32,
    /// Sources (and, separately, prefixes) tracked at most; see [`AnswerBudget::charge`].
    pub max_tracked: usize,
}

impl Default for AnswerLimits {
    /// 8 KiB per source (about 60 unauthenticated Allocates from one NAT at once), 1 KiB/s
    /// after; 32 KiB per prefix, 4 KiB/s after; 65 536 of each tracked.
    fn default() -> Self {
        AnswerLimits {
            source_burst: 8 * 1024,
            source_refill: 1024,
            prefix_burst: 32 * 1024,
            prefix_refill: 4 * 1024,
            max_tracked: 65_536,
        }
    }
}

/// A token bucket of bytes.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills up to `now`.
    fn refill(&mut self, burst: u32, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
    }

    /// Whether it would be full at `now` (then it is the same as no bucket).
    fn is_full_at(&self, burst: u32, rate: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(burst)
    }
}

/// The prefix a source counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Prefix {
    fn of(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix::V4([a, b, c])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
                }
            },
        }
    }
}

/// Buckets of one kind (sources or prefixes), at most `max_tracked`.
#[derive(Debug)]
struct Buckets<K> {
    burst: u32,
    rate: u32,
    max: usize,
    buckets: HashMap<K, Bucket>,
    /// When full buckets were last swept out (at most once a second).
    swept: Option<Instant>,
}

/// How often a full table is swept at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn new(burst: u32, rate: u32, max: usize) -> Self {
        Buckets {
            burst,
            rate,
            max,
            buckets: HashMap::default(),
            swept: None,
        }
    }

    fn credit(&mut self, key: K, bytes: usize, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(&key) {
            bucket.refill(self.burst, self.rate, now);
            bucket.tokens = (bucket.tokens + bytes as f64).min(f64::from(self.burst));
        }
    }

    /// The tokens `key` has now; `None` when it has no bucket and none can be made (the table
    /// is full of buckets that are not).
    fn available(&mut self, key: K, now: Instant) -> Option<f64> {
        if let Some(bucket) = self.buckets.get_mut(&key) {
            bucket.refill(self.burst, self.rate, now);
            return Some(bucket.tokens);
        }
        if self.buckets.len() >= self.max {
            self.sweep(now);
        }
        (self.buckets.len() < self.max).then_some(f64::from(self.burst))
    }

    /// Takes `bytes` from `key`'s bucket (made full first if it has none).
    fn take(&mut self, key: K, bytes: usize, now: Instant) {
        let (burst, rate) = (self.burst, self.rate);
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        bucket.refill(burst, rate, now);
        bucket.tokens -= bytes as f64;
    }

    /// Drops the buckets that are full again (no different from none), at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        let (burst, rate) = (self.burst, self.rate);
        self.buckets.retain(|_, b| !b.is_full_at(burst, rate, now));
    }
}

/// The per-source and per-prefix buckets of answers to unauthenticated requests.
#[derive(Debug)]
pub(super) struct AnswerBudget {
    sources: Buckets<IpAddr>,
    prefixes: Buckets<Prefix>,
}

impl AnswerBudget {
    pub(super) fn new(limits: AnswerLimits) -> Self {
        AnswerBudget {
            sources: Buckets::new(
                limits.source_burst,
                limits.source_refill,
                limits.max_tracked,
            ),
            prefixes: Buckets::new(
                limits.prefix_burst,
                limits.prefix_refill,
                limits.max_tracked,
            ),
        }
    }

    /// `source` sent a STUN message of `bytes`: what it may get back grows by that much.
    pub(super) fn credit(&mut self, source: IpAddr, bytes: usize, now: Instant) {
        let source = canonical(source);
        self.sources.credit(source, bytes, now);
        self.prefixes.credit(Prefix::of(source), bytes, now);
    }

    /// May an answer of `bytes` go to `source` now? If so it is paid for. When a table is full
    /// of sources still paying off their bursts, a new source is refused until a sweep frees
    /// room: under a flood from that many addresses, unauthenticated answers stop first.
    pub(super) fn charge(&mut self, source: IpAddr, bytes: usize, now: Instant) -> bool {
        let source = canonical(source);
        let prefix = Prefix::of(source);
        let need = bytes as f64;
        let enough = |tokens: Option<f64>| tokens.is_some_and(|t| t >= need);
        if !enough(self.sources.available(source, now))
            || !enough(self.prefixes.available(prefix, now))
        {
            return false;
        }
        self.sources.take(source, bytes, now);
        self.prefixes.take(prefix, bytes, now);
        true
    }

    /// Sources and prefixes with a bucket now.
    #[cfg(test)]
    pub(super) fn tracked(&self) -> (usize, usize) {
        (self.sources.buckets.len(), self.prefixes.buckets.len())
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn limits() -> AnswerLimits {
        AnswerLimits {
            source_burst: 1000,
            source_refill: 100,
            prefix_burst: 3000,
            prefix_refill: 300,
            max_tracked: 4,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn beyond_the_burst_a_source_gets_what_it_sent_plus_the_refill() {
        let mut budget = AnswerBudget::new(limits());
        let now = Instant::now();
        let source = ip("198.18.0.7");
        let (mut asked, mut answered) = (0, 0);
        for _ in 0..1000 {
            budget.credit(source, 36, now);
            asked += 36;
            if budget.charge(source, 100, now) {
                answered += 100;
            }
        }
        assert!(answered <= asked + 1000, "{answered} > {asked} + burst");
        assert!(answered >= 1000, "the burst is answered: {answered}");
        // A second later the refill (100 B) pays for one more answer.
        let later = now + Duration::from_secs(1);
        assert!(budget.charge(source, 100, later));
        assert!(!budget.charge(source, 100, later));
    }

    #[test]
    fn a_prefix_is_bounded_across_its_addresses_and_others_are_not_affected() {
        let mut budget = AnswerBudget::new(AnswerLimits {
            max_tracked: 1000,
            ..limits()
        });
        let now = Instant::now();
        let mut answered = 0;
        for host in 0..=255u8 {
            if budget.charge(IpAddr::V4(Ipv4Addr::new(198, 18, 5, host)), 100, now) {
                answered += 100;
            }
        }
        assert_eq!(answered, 3000, "the prefix's burst");
        assert!(budget.charge(ip("198.18.6.1"), 100, now), "another prefix");
        // IPv4-mapped IPv6 counts as its IPv4 address.
        assert!(!budget.charge(ip("::ffff:198.18.5.1"), 100, now));
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
        assert!(budget.charge(IpAddr::V6(v6), 100, now));
    }

    #[test]
    fn full_tables_refuse_new_sources_until_their_buckets_refill() {
        let mut budget = AnswerBudget::new(limits());
        let now = Instant::now();
        for i in 0..4u8 {
            assert!(budget.charge(IpAddr::V4(Ipv4Addr::new(198, 18, i, 1)), 500, now));
        }
        assert_eq!(budget.tracked(), (4, 4));
        assert!(!budget.charge(ip("198.18.9.1"), 10, now), "no room");
        // 5 s later every bucket is full again: swept, and the new source fits.
        let later = now + Duration::from_secs(5);
        assert!(budget.charge(ip("198.18.9.1"), 10, later));
        assert_eq!(budget.tracked(), (1, 1));
    }
}
