//! What the benchmark's datagrams carry.
//!
//! The client sends ChannelData (`channel`, `length`, data); the data starts with a stamp:
//!
//! ```text
//!  0      4       5      8           16               24
//!  "XTB1" | phase | 0 0 0 | seq (BE u64) | sent at (BE u64, ns) | zeros up to the payload size
//! ```
//!
//! The relay strips the ChannelData header towards the peer and adds it back towards the
//! client; the echo returns every datagram unchanged, so the stamp comes back as it left. The
//! phase number lets the echo count each phase apart and the client ignore late arrivals.
use turn_proto::wire;

/// The first bytes of every benchmark payload.
pub const MAGIC: [u8; 4] = *b"XTB1";
/// The stamp's size: the smallest payload the benchmark sends.
pub const STAMP_LEN: usize = 24;
/// A ChannelData header's size.
pub const CHANNEL_HEADER_LEN: usize = wire::CHANNEL_DATA_HEADER_LEN;
/// The channel every allocation binds (channels are per allocation, so one number serves all);
/// the ceiling program answers on it too.
pub const CHANNEL: u16 = relay_common::ceiling::CHANNEL;
/// The largest payload: ChannelData, UDP and IPv4 headers must fit a 1500-byte MTU.
pub const MAX_PAYLOAD: usize = 1500 - 20 - 8 - CHANNEL_HEADER_LEN;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub phase: u8,
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the datagram was sent.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp at the start of `payload` (at least [`STAMP_LEN`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        if payload.len() < STAMP_LEN {
            return;
        }
        payload[0..4].copy_from_slice(&MAGIC);
        payload[4] = self.phase;
        payload[5..8].fill(0);
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp from the start of `payload`.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let head = payload.get(..STAMP_LEN)?;
        if head[0..4] != MAGIC {
            return None;
        }
        let seq = u64::from_be_bytes(head[8..16].try_into().ok()?);
        let sent_ns = u64::from_be_bytes(head[16..24].try_into().ok()?);
        Some(Stamp {
            phase: head[4],
            seq,
            sent_ns,
        })
    }

    /// Reads a stamp from a datagram that is either a bare payload (what a peer receives) or
    /// ChannelData carrying one (what the echo receives when it stands in for the relay).
    pub fn find(datagram: &[u8]) -> Option<Stamp> {
        Stamp::read(datagram).or_else(|| {
            let (_, data) = parse_channel_data(datagram)?;
            Stamp::read(data)
        })
    }
}

/// A ChannelData message's channel and data (turn-proto's codec; padding is accepted).
pub fn parse_channel_data(datagram: &[u8]) -> Option<(u16, &[u8])> {
    wire::parse_channel_data(datagram)
        .ok()
        .map(|message| (message.channel, message.data))
}

/// Fills `slot` with a ChannelData message on `channel` whose data is `payload_len` bytes: the
/// header, the stamp, zeros. Returns the message's length.
pub fn fill_channel_data(slot: &mut [u8], channel: u16, payload_len: usize, stamp: Stamp) -> usize {
    let total = CHANNEL_HEADER_LEN + payload_len;
    let Some(message) = slot.get_mut(..total) else {
        return 0;
    };
    let len = u16::try_from(payload_len).unwrap_or(u16::MAX);
    message[..CHANNEL_HEADER_LEN].copy_from_slice(&wire::channel_data_header(channel, len));
    stamp.write(&mut message[CHANNEL_HEADER_LEN..]);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let stamp = Stamp {
            phase: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: 42,
        };
        let mut payload = [0xffu8; 100];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(Stamp::find(&payload), Some(stamp));
    }

    #[test]
    fn stamp_is_found_inside_channel_data() {
        let stamp = Stamp {
            phase: 3,
            seq: 9,
            sent_ns: 1_000,
        };
        let mut slot = [0u8; 200];
        let n = fill_channel_data(&mut slot, CHANNEL, 100, stamp);
        assert_eq!(n, 104);
        assert_eq!(&slot[..4], &[0x40, 0x00, 0x00, 100]);
        let (channel, data) = parse_channel_data(&slot[..n]).expect("channel data");
        assert_eq!((channel, data.len()), (CHANNEL, 100));
        assert_eq!(Stamp::find(&slot[..n]), Some(stamp));
    }

    #[test]
    fn garbage_has_no_stamp() {
        assert_eq!(Stamp::read(&[0u8; 30]), None);
        assert_eq!(Stamp::find(b"short"), None);
        // A ChannelData length beyond the datagram.
        assert_eq!(parse_channel_data(&[0x40, 0, 0, 50, 1, 2]), None);
        // Not ChannelData (a STUN message starts with 0b00).
        assert_eq!(parse_channel_data(&[0x00, 1, 0, 0]), None);
    }

    #[test]
    fn a_slot_too_small_writes_nothing() {
        let mut slot = [0u8; 10];
        let stamp = Stamp {
            phase: 1,
            seq: 1,
            sent_ns: 1,
        };
        assert_eq!(fill_channel_data(&mut slot, CHANNEL, 100, stamp), 0);
    }
}
