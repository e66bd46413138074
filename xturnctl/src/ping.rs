//! `xturnctl ping`'s payload and statistics, without sockets.
//!
//! A payload is `size` bytes: the magic `xtP1`, the sequence number (u64, big-endian), the send
//! time in microseconds since the run started (u64, big-endian), then filler bytes that depend
//! on the sequence number and position. An echo counts as received only if it is byte-for-byte
//! the payload sent with that sequence number; otherwise it is corrupted (and its datagram lost).

/// The first bytes of every payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"xtP1";
/// Magic, sequence number and timestamp.
pub const PAYLOAD_HEADER_LEN: usize = 20;
/// The largest payload `xturnctl ping` sends.
pub const MAX_PAYLOAD_LEN: usize = 65_000;

/// The payload for `seq` sent at `sent_us`, `size` bytes long; `None` if `size` is shorter than
/// [`PAYLOAD_HEADER_LEN`].
pub fn encode_payload(seq: u64, sent_us: u64, size: usize) -> Option<Vec<u8>> {
    if size < PAYLOAD_HEADER_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&PAYLOAD_MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_us.to_be_bytes());
    let seed = seq.to_le_bytes()[0];
    out.extend((PAYLOAD_HEADER_LEN..size).map(|i| filler(seed, i)));
    Some(out)
}

fn filler(seed: u8, index: usize) -> u8 {
    (index as u8).wrapping_mul(31).wrapping_add(seed) ^ 0x5A
}

/// The sequence number and send time of a payload, if it starts with the magic.
pub fn decode_header(data: &[u8]) -> Option<(u64, u64)> {
    if data.get(..4)? != PAYLOAD_MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(data.get(4..12)?.try_into().ok()?);
    let sent_us = u64::from_be_bytes(data.get(12..20)?.try_into().ok()?);
    Some((seq, sent_us))
}

/// What an echo turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoOutcome {
    /// The payload of `seq`, intact, first time seen.
    Valid { seq: u64, rtt_us: u64 },
    /// An intact payload seen before.
    Duplicate { seq: u64 },
    /// Not a payload we sent, byte for byte (`seq` if the header still names a sent one).
    Corrupted { seq: Option<u64> },
}

/// Running RTT statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttStats {
    pub count: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub sum_us: u128,
}

impl RttStats {
    pub fn add(&mut self, rtt_us: u64) {
        if self.count == 0 {
            self.min_us = rtt_us;
            self.max_us = rtt_us;
        } else {
            self.min_us = self.min_us.min(rtt_us);
            self.max_us = self.max_us.max(rtt_us);
        }
        self.count += 1;
        self.sum_us += u128::from(rtt_us);
    }

    /// The mean, rounded to the nearest microsecond; `None` without samples.
    pub fn avg_us(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let count = u128::from(self.count);
        u64::try_from((self.sum_us + count / 2) / count).ok()
    }
}

/// Sent payloads and their echoes.
#[derive(Debug, Clone)]
pub struct PingTracker {
    size: usize,
    sent_at_us: Vec<u64>,
    received: Vec<bool>,
    rtt: RttStats,
    corrupted: u64,
    duplicates: u64,
}

impl PingTracker {
    /// A tracker for payloads of `size` bytes; `None` if `size` is shorter than the header.
    pub fn new(size: usize) -> Option<Self> {
        (size >= PAYLOAD_HEADER_LEN).then(|| PingTracker {
            size,
            sent_at_us: Vec::new(),
            received: Vec::new(),
            rtt: RttStats::default(),
            corrupted: 0,
            duplicates: 0,
        })
    }

    /// The next payload, recorded as sent at `now_us`.
    pub fn next_payload(&mut self, now_us: u64) -> Vec<u8> {
        let seq = self.sent();
        self.sent_at_us.push(now_us);
        self.received.push(false);
        // `new` checked the size, so this is always Some.
        encode_payload(seq, now_us, self.size).unwrap_or_default()
    }

    /// Records an echo that arrived at `now_us`.
    pub fn on_echo(&mut self, data: &[u8], now_us: u64) -> EchoOutcome {
        let sent = decode_header(data).and_then(|(seq, _)| {
            let index = usize::try_from(seq).ok()?;
            Some((seq, index, *self.sent_at_us.get(index)?))
        });
        let Some((seq, index, sent_at_us)) = sent else {
            self.corrupted += 1;
            return EchoOutcome::Corrupted { seq: None };
        };
        if encode_payload(seq, sent_at_us, self.size).as_deref() != Some(data) {
            self.corrupted += 1;
            return EchoOutcome::Corrupted { seq: Some(seq) };
        }
        if self.received[index] {
            self.duplicates += 1;
            return EchoOutcome::Duplicate { seq };
        }
        self.received[index] = true;
        let rtt_us = now_us.saturating_sub(sent_at_us);
        self.rtt.add(rtt_us);
        EchoOutcome::Valid { seq, rtt_us }
    }

    pub fn sent(&self) -> u64 {
        self.sent_at_us.len() as u64
    }

    pub fn received(&self) -> u64 {
        self.rtt.count
    }

    /// Every payload sent so far has come back.
    pub fn all_received(&self) -> bool {
        self.received() == self.sent()
    }

    pub fn summary(&self) -> Summary {
        Summary::new(self.sent(), self.rtt, self.corrupted, self.duplicates)
    }
}

/// The result of a ping run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub sent: u64,
    /// Intact echoes, each sequence number counted once.
    pub received: u64,
    /// `sent - received`: corrupted echoes count as lost.
    pub lost: u64,
    pub corrupted: u64,
    pub duplicates: u64,
    pub rtt_min_us: Option<u64>,
    pub rtt_avg_us: Option<u64>,
    pub rtt_max_us: Option<u64>,
}

impl Summary {
    pub fn new(sent: u64, rtt: RttStats, corrupted: u64, duplicates: u64) -> Self {
        let some = |v| (rtt.count > 0).then_some(v);
        Summary {
            sent,
            received: rtt.count,
            lost: sent.saturating_sub(rtt.count),
            corrupted,
            duplicates,
            rtt_min_us: some(rtt.min_us),
            rtt_avg_us: rtt.avg_us(),
            rtt_max_us: some(rtt.max_us),
        }
    }

    /// `sent=N received=M lost=L rtt_min_us=.. rtt_avg_us=.. rtt_max_us=.. relayed=.. mapped=..
    /// corrupted=K duplicates=D` (RTTs are 0 when nothing came back).
    pub fn line(&self, relayed: &str, mapped: &str) -> String {
        format!(
            "sent={} received={} lost={} rtt_min_us={} rtt_avg_us={} rtt_max_us={} relayed={relayed} mapped={mapped} corrupted={} duplicates={}",
            self.sent,
            self.received,
            self.lost,
            self.rtt_min_us.unwrap_or(0),
            self.rtt_avg_us.unwrap_or(0),
            self.rtt_max_us.unwrap_or(0),
            self.corrupted,
            self.duplicates,
        )
    }

    /// The same as one JSON object (RTTs are null when nothing came back), plus `mode` and `ok`.
    pub fn json(&self, relayed: &str, mapped: &str, mode: &str, ok: bool) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
        format!(
            "{{\"sent\":{},\"received\":{},\"lost\":{},\"corrupted\":{},\"duplicates\":{},\"rtt_min_us\":{},\"rtt_avg_us\":{},\"rtt_max_us\":{},\"relayed\":{},\"mapped\":{},\"mode\":{},\"ok\":{ok}}}",
            self.sent,
            self.received,
            self.lost,
            self.corrupted,
            self.duplicates,
            opt(self.rtt_min_us),
            opt(self.rtt_avg_us),
            opt(self.rtt_max_us),
            json_string(relayed),
            json_string(mapped),
            json_string(mode),
        )
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let p = encode_payload(0x0102_0304_0506_0708, 123_456, 100).expect("payload");
        assert_eq!(p.len(), 100);
        assert_eq!(&p[..4], b"xtP1");
        assert_eq!(&p[4..12], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode_header(&p), Some((0x0102_0304_0506_0708, 123_456)));
        assert_eq!(
            encode_payload(1, 0, PAYLOAD_HEADER_LEN).map(|p| p.len()),
            Some(20)
        );
        assert_eq!(encode_payload(1, 0, 19), None);
        assert_eq!(decode_header(&p[..19]), None);
        assert_eq!(decode_header(b"nopeXXXXXXXXXXXXXXXXXXX"), None);
        // Different sequence numbers give different filler.
        let q = encode_payload(0x0102_0304_0506_0709, 123_456, 100).expect("payload");
        assert_ne!(p[20..], q[20..]);
    }

    #[test]
    fn tracker_counts_valid_duplicate_and_corrupted() {
        let mut t = PingTracker::new(64).expect("tracker");
        assert!(PingTracker::new(10).is_none());
        let p0 = t.next_payload(1_000);
        let p1 = t.next_payload(2_000);
        let p2 = t.next_payload(3_000);
        assert_eq!(t.sent(), 3);
        assert_eq!(
            t.on_echo(&p1, 2_500),
            EchoOutcome::Valid {
                seq: 1,
                rtt_us: 500
            }
        );
        assert_eq!(t.on_echo(&p1, 2_600), EchoOutcome::Duplicate { seq: 1 });
        assert_eq!(
            t.on_echo(&p0, 4_000),
            EchoOutcome::Valid {
                seq: 0,
                rtt_us: 3_000
            }
        );
        // One flipped filler byte, a truncated echo, a bad timestamp, junk, an unsent seq.
        let mut bad = p2.clone();
        bad[40] ^= 1;
        assert_eq!(
            t.on_echo(&bad, 5_000),
            EchoOutcome::Corrupted { seq: Some(2) }
        );
        assert_eq!(
            t.on_echo(&p2[..63], 5_000),
            EchoOutcome::Corrupted { seq: Some(2) }
        );
        let forged_time = encode_payload(2, 2_999, 64).expect("payload");
        assert_eq!(
            t.on_echo(&forged_time, 5_000),
            EchoOutcome::Corrupted { seq: Some(2) }
        );
        assert_eq!(
            t.on_echo(b"junk", 5_000),
            EchoOutcome::Corrupted { seq: None }
        );
        let unsent = encode_payload(9, 0, 64).expect("payload");
        assert_eq!(
            t.on_echo(&unsent, 5_000),
            EchoOutcome::Corrupted { seq: None }
        );
        assert!(!t.all_received());
        let s = t.summary();
        assert_eq!(
            s,
            Summary {
                sent: 3,
                received: 2,
                lost: 1,
                corrupted: 5,
                duplicates: 1,
                rtt_min_us: Some(500),
                rtt_avg_us: Some(1_750),
                rtt_max_us: Some(3_000),
            }
        );
        assert_eq!(
            t.on_echo(&p2, 3_001),
            EchoOutcome::Valid { seq: 2, rtt_us: 1 }
        );
        assert!(t.all_received());
    }

    #[test]
    fn rtt_arithmetic() {
        let mut r = RttStats::default();
        assert_eq!(r.avg_us(), None);
        for v in [10, 20, 31] {
            r.add(v);
        }
        assert_eq!((r.min_us, r.max_us, r.count), (10, 31, 3));
        // 61 / 3 = 20.33 -> 20; rounding to nearest.
        assert_eq!(r.avg_us(), Some(20));
        r.add(0);
        // 61 / 4 = 15.25 -> 15
        assert_eq!(r.avg_us(), Some(15));
        assert_eq!(r.min_us, 0);
        let mut big = RttStats::default();
        big.add(u64::MAX);
        big.add(u64::MAX);
        assert_eq!(big.avg_us(), Some(u64::MAX));
        let mut half = RttStats::default();
        half.add(1);
        half.add(2);
        assert_eq!(half.avg_us(), Some(2));
    }

    #[test]
    fn summary_without_echoes_and_formats() {
        let s = Summary::new(10, RttStats::default(), 0, 0);
        assert_eq!(s.lost, 10);
        assert_eq!(
            s.line("127.0.0.1:50000", "127.0.0.1:40000"),
            "sent=10 received=0 lost=10 rtt_min_us=0 rtt_avg_us=0 rtt_max_us=0 relayed=127.0.0.1:50000 mapped=127.0.0.1:40000 corrupted=0 duplicates=0"
        );
        assert_eq!(
            s.json("[::1]:5", "[::1]:6", "send", false),
            r#"{"sent":10,"received":0,"lost":10,"corrupted":0,"duplicates":0,"rtt_min_us":null,"rtt_avg_us":null,"rtt_max_us":null,"relayed":"[::1]:5","mapped":"[::1]:6","mode":"send","ok":false}"#
        );
        let mut r = RttStats::default();
        r.add(100);
        r.add(300);
        let s = Summary::new(2, r, 0, 0);
        assert_eq!(
            s.line("a", "b"),
            "sent=2 received=2 lost=0 rtt_min_us=100 rtt_avg_us=200 rtt_max_us=300 relayed=a mapped=b corrupted=0 duplicates=0"
        );
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
