//! Framing TURN over streams (TCP, TLS; RFC 8656 §12.5): STUN and ChannelData messages back
//! to back, ChannelData padded to a multiple of 4. [`Framer`] cuts a byte stream into messages
//! (a STUN message is 20 bytes plus its length; ChannelData is 4 bytes plus its length and
//! padding), [`frame_for_stream`] pads what the server sends.
use crate::wire::{CHANNEL_DATA_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE};

/// The largest message a client may send: a STUN message of the largest length.
pub const MAX_MESSAGE: usize = HEADER_LEN + 0xFFFF;

/// Why a stream was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first byte is neither STUN (0b00) nor ChannelData (0b01): not TURN.
    NotTurn(u8),
}

/// Cuts a byte stream into STUN and ChannelData messages.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the next message starts in `buf` (consumed bytes are dropped on the next push,
    /// not on every message: no copying of the rest per message).
    start: usize,
}

impl Framer {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not a complete message yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the bytes held that are not part of a message handed out yet: a connection that
    /// stops carrying TURN messages (an RFC 6062 data connection after its ConnectionBind)
    /// passes them on as they are.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }

    /// The next complete message, with ChannelData padding removed; `Ok(None)`: more bytes
    /// are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let buf = &self.buf[self.start..];
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let (message, consumed) = match buf[0] >> 6 {
            0b00 => {
                // STUN: the magic cookie tells it from other protocols (a TLS ClientHello on
                // a plain TCP listener, say).
                if buf.len() < 8 {
                    return Ok(None);
                }
                if buf[4..8] != MAGIC_COOKIE {
                    return Err(FrameError::NotTurn(buf[0]));
                }
                (HEADER_LEN + length, HEADER_LEN + length)
            }
            0b01 => (
                CHANNEL_DATA_HEADER_LEN + length,
                (CHANNEL_DATA_HEADER_LEN + length).next_multiple_of(4),
            ),
            _ => return Err(FrameError::NotTurn(buf[0])),
        };
        if buf.len() < consumed {
            return Ok(None);
        }
        let message_bytes = buf[..message].to_vec();
        self.start += consumed;
        Ok(Some(message_bytes))
    }
}

/// A message for a stream client: ChannelData is padded to a multiple of 4 (RFC 8656 §12.5).
pub fn frame_for_stream(mut data: Vec<u8>) -> Vec<u8> {
    if data.first().is_some_and(|b| b >> 6 == 0b01) {
        let padded = data.len().next_multiple_of(4);
        data.resize(padded, 0);
    }
    data
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;

    fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = channel.to_be_bytes().to_vec();
        m.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn stun(length: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0xAB, usize::from(length)));
        m
    }

    #[test]
    fn what_follows_the_last_message_is_taken_as_it_is() {
        let a = stun(4);
        let mut framer = Framer::default();
        framer.push(&[&a[..], b"raw bytes"].concat());
        assert_eq!(framer.next_message().unwrap(), Some(a));
        assert_eq!(framer.take_rest(), b"raw bytes");
        assert_eq!(framer.pending(), 0);
        assert!(framer.take_rest().is_empty());
    }

    #[test]
    fn frames_messages_split_anywhere() {
        let a = stun(8);
        let b = channel_data(0x4001, b"hello"); // 9 bytes, 3 of padding on a stream
        let c = stun(0);
        let mut stream = a.clone();
        stream.extend(frame_for_stream(b.clone()));
        stream.extend(&c);
        assert_eq!(frame_for_stream(b.clone()).len(), 12);
        // Every split point, byte by byte included.
        for chunk in [1, 2, 3, 5, 7, stream.len()] {
            let mut framer = Framer::default();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.push(piece);
                while let Some(m) = framer.next_message().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, [a.clone(), b.clone(), c.clone()], "chunk {chunk}");
            assert_eq!(framer.pending(), 0);
        }
    }

    #[test]
    fn refuses_what_is_not_turn_and_waits_for_partial_messages() {
        let mut framer = Framer::default();
        framer.push(b"\x80\x01\x00\x00");
        assert_eq!(framer.next_message(), Err(FrameError::NotTurn(0x80)));
        // A TLS ClientHello starts like STUN (0x16) but has no magic cookie.
        let mut framer = Framer::default();
        framer.push(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC]);
        assert_eq!(framer.next_message(), Err(FrameError::NotTurn(0x16)));
        let mut framer = Framer::default();
        framer.push(&stun(100)[..50]);
        assert_eq!(framer.next_message(), Ok(None));
        assert_eq!(framer.pending(), 50);
        // A padded ChannelData needs its padding before it counts as complete.
        let mut framer = Framer::default();
        framer.push(&channel_data(0x4000, b"abcde"));
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(&[0, 0, 0]);
        assert_eq!(framer.next_message().unwrap().unwrap().len(), 9);
    }

    proptest::proptest! {
        /// Any sequence of STUN and ChannelData messages, as a client frames them, comes out
        /// whole and in order however the stream splits it.
        #[test]
        fn any_messages_split_any_way_come_out_whole(
            messages in proptest::collection::vec(
                proptest::prop_oneof![
                    (0u16..300).prop_map(|n| stun(n * 4)),
                    (0x4000u16..0x5000, proptest::collection::vec(proptest::num::u8::ANY, 0..300))
                        .prop_map(|(c, p)| channel_data(c, &p)),
                ],
                0..12,
            ),
            chunk in 1usize..200,
        ) {
            let stream: Vec<u8> =
                messages.iter().cloned().flat_map(frame_for_stream).collect();
            let mut framer = Framer::default();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.push(piece);
                while let Some(m) = framer.next_message().unwrap() {
                    out.push(m);
                }
            }
            proptest::prop_assert_eq!(out, messages);
            proptest::prop_assert_eq!(framer.pending(), 0);
        }

        /// Whatever a client sends, the framer answers (a message, more bytes needed, or
        /// not TURN) without panicking, and holds no more than one message's worth.
        #[test]
        fn any_bytes_are_framed_or_refused(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            chunk in 1usize..600,
        ) {
            let mut framer = Framer::default();
            'stream: for piece in bytes.chunks(chunk) {
                framer.push(piece);
                loop {
                    match framer.next_message() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'stream,
                    }
                }
                // Largest message: a STUN header and 65535 bytes, plus what one push adds.
                proptest::prop_assert!(framer.pending() < 20 + 65_536 + chunk);
            }
        }
    }

    #[test]
    fn stun_is_not_padded_channel_data_is() {
        assert_eq!(frame_for_stream(stun(4)).len(), 24);
        assert_eq!(frame_for_stream(channel_data(0x4000, &[1; 4])).len(), 8);
        assert_eq!(frame_for_stream(channel_data(0x4000, &[1; 1])).len(), 8);
    }
}
