//! STUN and ChannelData framing on raw bytes.
//!
//! This module owns everything that has to look at the exact bytes of a datagram:
//! demultiplexing (RFC 7983), the STUN header, walking attribute TLVs to find
//! MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 / FINGERPRINT, the HMAC inputs of RFC 8489
//! §14.5–14.6, CRC-32 fingerprints, and ChannelData (RFC 8656 §12.4). Typed attributes are
//! left to `stun_codec`, which is only ever given the attributes that precede the first
//! integrity attribute: what follows is ignored by the RFC, and keeping it away from the codec
//! keeps hostile messages from making it re-encode the message once per attribute.
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytecodec::DecodeExt as _;
use stun_codec::{Message, MessageClass, MessageDecoder, Method, TransactionId};

use crate::attributes::Attribute;
use crate::auth::{self, IntegrityAlgorithm};

/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const ATTR_DONT_FRAGMENT: u16 = 0x001A;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Message type of a Data indication (method 0x007, class indication).
const DATA_INDICATION: u16 = 0x0017;
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// What the first byte of a client datagram says it is (RFC 7983 §7, minus DTLS and RTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demux {
    Stun,
    ChannelData,
    Other,
}

pub fn demux(data: &[u8]) -> Demux {
    match data.first() {
        Some(0..=3) => Demux::Stun,
        // 64–79 per RFC 7983; up to 127 for RFC 5766 channel numbers (see ChannelNumber::MAX).
        Some(64..=127) => Demux::ChannelData,
        _ => Demux::Other,
    }
}

/// The fixed part of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub class: MessageClass,
    pub method: Method,
    pub transaction_id: TransactionId,
}

/// Why a datagram is not a usable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not STUN (bad cookie or length, truncated header): drop it.
    NotStun,
    /// The header is fine but the attributes cannot be walked, or integrity/fingerprint
    /// attributes are malformed or misplaced: a request gets a 400.
    BadAttributes(Header),
    /// FINGERPRINT present and wrong: not a STUN message after all; drop it.
    BadFingerprint,
}

/// A MESSAGE-INTEGRITY(-SHA256) attribute found in a message.
#[derive(Debug, Clone, Copy)]
pub struct IntegrityAttr<'a> {
    pub algorithm: IntegrityAlgorithm,
    /// Offset of the attribute's header in the message.
    pub offset: usize,
    pub tag: &'a [u8],
}

/// The fields of a Send indication made of the usual attributes only (see
/// [`StunFrame::simple_send`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleSend<'a> {
    pub peer: SocketAddr,
    pub data: &'a [u8],
    pub dont_fragment: bool,
}

/// A STUN message whose framing has been validated.
#[derive(Debug)]
pub struct StunFrame<'a> {
    bytes: &'a [u8],
    pub header: Header,
    /// Where the attributes given to `stun_codec` end: before the first integrity or
    /// fingerprint attribute.
    plain_end: usize,
    /// The integrity attribute to verify: MESSAGE-INTEGRITY-SHA256 when present (RFC 8489
    /// §9.2.4), else MESSAGE-INTEGRITY.
    pub integrity: Option<IntegrityAttr<'a>>,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn decode_type(message_type: u16) -> (MessageClass, Method) {
    let class = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10);
    let class = match class {
        0 => MessageClass::Request,
        1 => MessageClass::Indication,
        2 => MessageClass::SuccessResponse,
        _ => MessageClass::ErrorResponse,
    };
    let method =
        (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80);
    // 12 bits always fit a method.
    let method = Method::new(method).unwrap_or(Method::from(0u8));
    (class, method)
}

/// Parses the STUN header alone.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FrameError> {
    if bytes.len() < HEADER_LEN || bytes[0] & 0xC0 != 0 || bytes[4..8] != MAGIC_COOKIE {
        return Err(FrameError::NotStun);
    }
    let length = usize::from(be16(bytes, 2).ok_or(FrameError::NotStun)?);
    // Over UDP a datagram holds exactly one message; its length is a multiple of 4.
    if !length.is_multiple_of(4) || HEADER_LEN + length != bytes.len() {
        return Err(FrameError::NotStun);
    }
    let message_type = be16(bytes, 0).ok_or(FrameError::NotStun)?;
    let (class, method) = decode_type(message_type);
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&bytes[8..20]);
    Ok(Header {
        class,
        method,
        transaction_id: TransactionId::new(tid),
    })
}

impl<'a> StunFrame<'a> {
    /// Validates the framing of `bytes` and locates the integrity attributes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let header = parse_header(bytes)?;
        let bad = FrameError::BadAttributes(header);
        let mut offset = HEADER_LEN;
        let mut plain_end = None;
        let mut integrity: Option<IntegrityAttr<'a>> = None;
        let mut seen_sha256 = false;
        let mut fingerprint = None;
        while offset < bytes.len() {
            if fingerprint.is_some() {
                // FINGERPRINT must be the last attribute.
                return Err(bad);
            }
            let kind = be16(bytes, offset).ok_or(bad)?;
            let len = usize::from(be16(bytes, offset + 2).ok_or(bad)?);
            let value_start = offset + 4;
            let next = value_start + ((len + 3) & !3);
            if next > bytes.len() {
                return Err(bad);
            }
            let value = &bytes[value_start..value_start + len];
            match kind {
                ATTR_MESSAGE_INTEGRITY if integrity.is_none() => {
                    if len != 20 {
                        return Err(bad);
                    }
                    integrity = Some(IntegrityAttr {
                        algorithm: IntegrityAlgorithm::HmacSha1,
                        offset,
                        tag: value,
                    });
                    plain_end.get_or_insert(offset);
                }
                ATTR_MESSAGE_INTEGRITY_SHA256 if !seen_sha256 => {
                    if !(16..=32).contains(&len) || !len.is_multiple_of(4) {
                        return Err(bad);
                    }
                    seen_sha256 = true;
                    // Preferred over MESSAGE-INTEGRITY, which may precede it.
                    integrity = Some(IntegrityAttr {
                        algorithm: IntegrityAlgorithm::HmacSha256 { len },
                        offset,
                        tag: value,
                    });
                    plain_end.get_or_insert(offset);
                }
                ATTR_FINGERPRINT => {
                    if len != 4 {
                        return Err(bad);
                    }
                    fingerprint = Some((offset, value));
                    plain_end.get_or_insert(offset);
                }
                // Anything after an integrity attribute is ignored (RFC 8489 §14.5).
                _ => {}
            }
            offset = next;
        }
        if let Some((at, value)) = fingerprint {
            let expected = crc32(&bytes[..at]) ^ FINGERPRINT_XOR;
            if value != expected.to_be_bytes() {
                return Err(FrameError::BadFingerprint);
            }
        }
        Ok(StunFrame {
            bytes,
            header,
            plain_end: plain_end.unwrap_or(bytes.len()),
            integrity,
        })
    }

    /// The message as `stun_codec` should see it: the attributes before the first integrity
    /// or fingerprint attribute, with the length field to match.
    pub fn codec_bytes(&self) -> Cow<'a, [u8]> {
        if self.plain_end == self.bytes.len() {
            return Cow::Borrowed(self.bytes);
        }
        let mut out = self.bytes[..self.plain_end].to_vec();
        set_length(&mut out, self.plain_end - HEADER_LEN);
        Cow::Owned(out)
    }

    /// The message decoded by `stun_codec` from [`StunFrame::codec_bytes`]: its attributes up
    /// to its integrity or fingerprint attribute, which [`StunFrame::parse`] and
    /// [`StunFrame::verify_integrity`] check on the bytes (`stun_codec` would encode the message
    /// again to check each). How the server reads requests and the load generator responses.
    pub fn decode(&self) -> Result<Message<Attribute>, String> {
        match MessageDecoder::<Attribute>::new().decode_from_bytes(&self.codec_bytes()) {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(broken)) => Err(format!("undecodable STUN attributes: {}", broken.error())),
            Err(error) => Err(format!("undecodable STUN message: {error}")),
        }
    }

    /// The fields of a Send indication if its attributes (before any integrity or fingerprint)
    /// are exactly one well-formed XOR-PEER-ADDRESS, one DATA and at most one empty
    /// DONT-FRAGMENT, in any order; `None` for anything else, which the caller decodes with
    /// `stun_codec` as usual. This is the common case on the data path, read in place so the
    /// payload is copied only once, into the datagram for the peer.
    pub fn simple_send(&self) -> Option<SimpleSend<'a>> {
        let bytes: &'a [u8] = self.bytes;
        let mut peer = None;
        let mut data = None;
        let mut dont_fragment = false;
        let mut offset = HEADER_LEN;
        while offset < self.plain_end {
            let kind = be16(bytes, offset)?;
            let len = usize::from(be16(bytes, offset + 2)?);
            let value = bytes.get(offset + 4..offset + 4 + len)?;
            match kind {
                ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = Some(xor_address(value, self.header.transaction_id)?);
                }
                ATTR_DATA if data.is_none() => data = Some(value),
                ATTR_DONT_FRAGMENT if !dont_fragment && len == 0 => dont_fragment = true,
                _ => return None,
            }
            offset += 4 + ((len + 3) & !3);
        }
        Some(SimpleSend {
            peer: peer?,
            data: data?,
            dont_fragment,
        })
    }

    /// Does the integrity attribute verify under `key`?
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        self.integrity.is_some_and(|attr| {
            self.verify_integrity_with(&auth::IntegrityKey::new(attr.algorithm, key))
        })
    }

    /// Does the integrity attribute verify under `key`, prepared for the attribute's algorithm?
    pub fn verify_integrity_with(&self, key: &auth::IntegrityKey) -> bool {
        let Some(attr) = self.integrity else {
            return false;
        };
        if attr.algorithm != key.algorithm() {
            return false;
        }
        // The HMAC covers everything before the attribute, with the length field set as if
        // the attribute ended the message: the header is adjusted in a copy of its own.
        let (Some(head), Some(rest)) = (
            self.bytes.get(..HEADER_LEN),
            self.bytes.get(HEADER_LEN..attr.offset),
        ) else {
            return false;
        };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(head);
        set_length(&mut header, attr.offset + 4 + attr.tag.len() - HEADER_LEN);
        key.verify_parts(&[&header, rest], attr.tag)
    }
}

fn set_length(message: &mut [u8], length: usize) {
    // Callers only pass lengths of real messages (< 64 KiB).
    let length = u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(field) = message.get_mut(2..4) {
        field.copy_from_slice(&length);
    }
}

/// The XOR mask of an address: the magic cookie, then (IPv6) the transaction id.
fn xor_mask(transaction_id: TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE);
    mask[4..].copy_from_slice(transaction_id.as_bytes());
    mask
}

/// Decodes an XOR-…-ADDRESS value; `None` unless the family and the length agree.
fn xor_address(value: &[u8], transaction_id: TransactionId) -> Option<SocketAddr> {
    let port = be16(value, 2)? ^ u16::from_be_bytes([MAGIC_COOKIE[0], MAGIC_COOKIE[1]]);
    let mask = xor_mask(transaction_id);
    let mut octets = [0u8; 16];
    let address = value.get(4..)?;
    for ((out, byte), m) in octets.iter_mut().zip(address).zip(mask) {
        *out = byte ^ m;
    }
    let ip = match (value.get(1)?, address.len()) {
        (&FAMILY_IPV4, 4) => IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        (&FAMILY_IPV6, 16) => IpAddr::V6(Ipv6Addr::from(octets)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// `addr` as the value of an XOR-…-ADDRESS attribute (RFC 8489 §14.2) under
/// `transaction_id`: the first 8 bytes (IPv4) or 20 (IPv6) of the array, and that length.
pub fn xor_address_value(addr: SocketAddr, transaction_id: TransactionId) -> ([u8; 20], usize) {
    let mut octets = [0u8; 16];
    let (family, len) = match addr.ip() {
        IpAddr::V4(ip) => {
            octets[..4].copy_from_slice(&ip.octets());
            (FAMILY_IPV4, 4)
        }
        IpAddr::V6(ip) => {
            octets.copy_from_slice(&ip.octets());
            (FAMILY_IPV6, 16)
        }
    };
    let mut value = [0u8; 20];
    let port = addr.port() ^ u16::from_be_bytes([MAGIC_COOKIE[0], MAGIC_COOKIE[1]]);
    value[..2].copy_from_slice(&[0, family]);
    value[2..4].copy_from_slice(&port.to_be_bytes());
    let mask = xor_mask(transaction_id);
    for ((out, byte), m) in value[4..].iter_mut().zip(&octets[..len]).zip(mask) {
        *out = byte ^ m;
    }
    (value, 4 + len)
}

/// Encodes a Data indication from `peer` carrying `data` (XOR-PEER-ADDRESS, then DATA; no
/// FINGERPRINT), written in one pass into one buffer. `None` if it does not fit a STUN
/// message.
pub fn encode_data_indication(
    transaction_id: [u8; 12],
    peer: SocketAddr,
    data: &[u8],
) -> Option<Vec<u8>> {
    let (family, address_len): (u8, u16) = match peer.ip() {
        IpAddr::V4(_) => (FAMILY_IPV4, 4),
        IpAddr::V6(_) => (FAMILY_IPV6, 16),
    };
    let data_len = u16::try_from(data.len()).ok()?;
    let padding = (4 - data.len() % 4) % 4;
    // Two attribute headers, the address value (family, port, address), the padded data.
    let attributes_len = 4 + 4 + usize::from(address_len) + 4 + data.len() + padding;
    let message_len = u16::try_from(attributes_len).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + attributes_len);
    out.extend_from_slice(&DATA_INDICATION.to_be_bytes());
    out.extend_from_slice(&message_len.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(&transaction_id);
    // XOR-PEER-ADDRESS.
    out.extend_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(4 + address_len).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    let port = peer.port() ^ u16::from_be_bytes([MAGIC_COOKIE[0], MAGIC_COOKIE[1]]);
    out.extend_from_slice(&port.to_be_bytes());
    let mask = xor_mask(TransactionId::new(transaction_id));
    match peer.ip() {
        IpAddr::V4(ip) => out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
        IpAddr::V6(ip) => out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
    }
    // DATA, padded to 4 bytes.
    out.extend_from_slice(&ATTR_DATA.to_be_bytes());
    out.extend_from_slice(&data_len.to_be_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&[0; 3][..padding]);
    Some(out)
}

/// NONCE (RFC 8489 §14.10).
pub const ATTR_NONCE: u16 = 0x0015;
/// LIFETIME (RFC 8656 §18.2).
pub const ATTR_LIFETIME: u16 = 0x000D;
/// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Where the value of the first attribute of type `kind` is in an encoded message, if it has
/// one and its attributes are well formed up to it.
pub fn attribute_value(message: &[u8], kind: u16) -> Option<std::ops::Range<usize>> {
    let mut offset = HEADER_LEN;
    while offset + 4 <= message.len() {
        let len = usize::from(be16(message, offset + 2)?);
        let value = offset + 4..offset + 4 + len;
        if value.end > message.len() {
            return None;
        }
        if be16(message, offset)? == kind {
            return Some(value);
        }
        offset = value.start + ((len + 3) & !3);
    }
    None
}

/// Writes again the FINGERPRINT that ends `message` (its last 8 bytes), for what precedes it.
pub fn rewrite_fingerprint(message: &mut [u8]) {
    let Some(start) = message.len().checked_sub(8) else {
        return;
    };
    let crc = crc32(&message[..start]) ^ FINGERPRINT_XOR;
    message[start + 4..].copy_from_slice(&crc.to_be_bytes());
}

/// An encoded message kept to be copied with another transaction ID and other values of some of
/// its attributes, each of the length it had: for responses that differ only in those (the
/// server's 401s and plain Allocate successes), which are then encoded once and copied.
#[derive(Debug, Clone)]
pub struct MessageCopy {
    bytes: Vec<u8>,
    /// Where the value of each rewritten attribute is.
    values: Vec<std::ops::Range<usize>>,
}

impl MessageCopy {
    /// `message` to copy with the values of its first attributes of `kinds` rewritten; `None`
    /// unless each is there and rewriting them with `values` (what `message` was made of, one
    /// for each kind) under `transaction_id` gives `message` back.
    pub fn of(
        message: &[u8],
        kinds: &[u16],
        transaction_id: TransactionId,
        values: &[&[u8]],
    ) -> Option<MessageCopy> {
        let copy = MessageCopy {
            bytes: message.to_vec(),
            values: kinds
                .iter()
                .map(|&kind| attribute_value(message, kind))
                .collect::<Option<_>>()?,
        };
        (copy.with(transaction_id, values, 0)? == message).then_some(copy)
    }

    /// The message with `transaction_id` and `values` (one for each kind, each of the length it
    /// had), with `room` bytes to spare; `None` if a value does not fit.
    pub fn with(
        &self,
        transaction_id: TransactionId,
        values: &[&[u8]],
        room: usize,
    ) -> Option<Vec<u8>> {
        if values.len() != self.values.len() {
            return None;
        }
        let mut bytes = Vec::with_capacity(self.bytes.len() + room);
        bytes.extend_from_slice(&self.bytes);
        bytes
            .get_mut(8..HEADER_LEN)?
            .copy_from_slice(transaction_id.as_bytes());
        for (range, value) in self.values.iter().zip(values) {
            let slot = bytes.get_mut(range.clone())?;
            if slot.len() != value.len() {
                return None;
            }
            slot.copy_from_slice(value);
        }
        Some(bytes)
    }
}

/// Room for what is appended to an encoded message: MESSAGE-INTEGRITY(-SHA256) at its longest
/// and FINGERPRINT (each with its 4-byte attribute header).
pub const TRAILER_ROOM: usize = 4 + 32 + 4 + 4;

/// Encodes `message` into a buffer with [`TRAILER_ROOM`] spare, so that appending integrity and
/// a fingerprint does not move it.
pub fn encode_message(message: Message<Attribute>) -> bytecodec::Result<Vec<u8>> {
    use bytecodec::io::IoEncodeExt as _;
    use bytecodec::{ByteCount, Encode as _, Eos};
    let mut encoder = stun_codec::MessageEncoder::<Attribute>::new();
    encoder.start_encoding(message)?;
    let ByteCount::Finite(size) = encoder.requiring_bytes() else {
        // A STUN message always knows its length once started; keep the library's way if not.
        let mut bytes = Vec::with_capacity(TRAILER_ROOM);
        encoder.encode_all(&mut bytes)?;
        return Ok(bytes);
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut bytes = Vec::with_capacity(size.saturating_add(TRAILER_ROOM));
    bytes.resize(size, 0);
    encoder.encode(&mut bytes, Eos::new(true))?;
    Ok(bytes)
}

/// Appends MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 under `key` to an encoded message.
pub fn append_integrity(message: &mut Vec<u8>, algorithm: IntegrityAlgorithm, key: &[u8]) {
    append_integrity_with(message, &auth::IntegrityKey::new(algorithm, key));
}

/// [`append_integrity`] with a key prepared for its algorithm.
pub fn append_integrity_with(message: &mut Vec<u8>, key: &auth::IntegrityKey) {
    let algorithm = key.algorithm();
    let tag_len = algorithm.tag_len();
    let length = message.len() + 4 + tag_len - HEADER_LEN;
    set_length(message, length);
    let tag = key.tag(message);
    let kind = match algorithm {
        IntegrityAlgorithm::HmacSha1 => ATTR_MESSAGE_INTEGRITY,
        IntegrityAlgorithm::HmacSha256 { .. } => ATTR_MESSAGE_INTEGRITY_SHA256,
    };
    message.extend_from_slice(&kind.to_be_bytes());
    message.extend_from_slice(&u16::try_from(tag_len).unwrap_or(32).to_be_bytes());
    message.extend_from_slice(&tag);
}

/// Appends FINGERPRINT to an encoded message.
pub fn append_fingerprint(message: &mut Vec<u8>) {
    let length = message.len() + 8 - HEADER_LEN;
    set_length(message, length);
    let crc = crc32(message) ^ FINGERPRINT_XOR;
    message.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    message.extend_from_slice(&4u16.to_be_bytes());
    message.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO-HDLC, as in FINGERPRINT).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Length of the ChannelData header (channel number, length).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message (RFC 8656 §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

/// Why a ChannelData message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Shorter than its header.
    #[error("shorter than the 4-byte ChannelData header")]
    Truncated,
    /// The first two bytes are not a channel number (0x4000–0x7FFF).
    #[error("{0:#06x} is not a channel number")]
    NotAChannel(u16),
    /// The length field says more than the datagram holds.
    #[error("the length field exceeds the bytes after the header")]
    LengthOverrun,
    /// More bytes follow the data than padding to 4 bytes explains.
    #[error("more bytes follow the data than padding explains")]
    TrailingBytes,
    /// The data does not fit the 16-bit length field.
    #[error("{0} bytes do not fit in ChannelData")]
    TooLong(usize),
}

/// The ChannelData header for `len` bytes of data on `channel`.
pub fn channel_data_header(channel: u16, len: u16) -> [u8; CHANNEL_DATA_HEADER_LEN] {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    [c0, c1, l0, l1]
}

/// Parses a ChannelData message. Padding after the data (up to a multiple of 4) is accepted and
/// ignored: optional over UDP, required over streams (see [`crate::stream::Framer`]).
pub fn parse_channel_data(bytes: &[u8]) -> Result<ChannelData<'_>, ChannelDataError> {
    let (Some(channel), Some(length)) = (be16(bytes, 0), be16(bytes, 2)) else {
        return Err(ChannelDataError::Truncated);
    };
    if !relay_common::is_channel_number(channel) {
        return Err(ChannelDataError::NotAChannel(channel));
    }
    let length = usize::from(length);
    let data = bytes
        .get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + length)
        .ok_or(ChannelDataError::LengthOverrun)?;
    if bytes.len() > CHANNEL_DATA_HEADER_LEN + length.next_multiple_of(4) {
        return Err(ChannelDataError::TrailingBytes);
    }
    Ok(ChannelData { channel, data })
}

/// Encodes a ChannelData message: header, data and, if `pad`, zeros up to a multiple of 4
/// (required over TCP/TLS, optional over UDP). The channel number is not checked.
pub fn encode_channel_data(
    channel: u16,
    data: &[u8],
    pad: bool,
) -> Result<Vec<u8>, ChannelDataError> {
    let length = u16::try_from(data.len()).map_err(|_| ChannelDataError::TooLong(data.len()))?;
    let padding = if pad {
        data.len().next_multiple_of(4) - data.len()
    } else {
        0
    };
    let mut out = Vec::with_capacity(CHANNEL_DATA_HEADER_LEN + data.len() + padding);
    out.extend_from_slice(&channel_data_header(channel, length));
    out.extend_from_slice(data);
    out.resize(out.len() + padding, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_addresses_written_read_back() {
        let tid = TransactionId::new([0xA5; 12]);
        for addr in [
            "192.0.2.1:3478",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[2001:db8::1]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (value, len) = xor_address_value(addr, tid);
            assert_eq!(len, if addr.is_ipv4() { 8 } else { 20 });
            assert_eq!(xor_address(&value[..len], tid), Some(addr));
        }
    }

    #[test]
    fn message_copies_rewrite_the_transaction_and_values_of_their_length_only() {
        // Header, then NONCE "abcd" and LIFETIME 600.
        let mut message = vec![0x01, 0x13, 0, 16, 0x21, 0x12, 0xA4, 0x42];
        message.extend_from_slice(&[1; 12]);
        message.extend_from_slice(&[0x00, 0x15, 0, 4, b'a', b'b', b'c', b'd']);
        message.extend_from_slice(&[0x00, 0x0D, 0, 4, 0, 0, 0x02, 0x58]);
        let kinds = [ATTR_NONCE, ATTR_LIFETIME];
        let tid = TransactionId::new([1; 12]);
        let copy = MessageCopy::of(&message, &kinds, tid, &[b"abcd", &600u32.to_be_bytes()])
            .expect("a copy");
        // What it was not made of is refused.
        assert!(
            MessageCopy::of(&message, &kinds, tid, &[b"abce", &600u32.to_be_bytes()]).is_none()
        );
        assert!(
            MessageCopy::of(
                &message,
                &[ATTR_NONCE, ATTR_FINGERPRINT],
                tid,
                &[b"abcd", b""]
            )
            .is_none()
        );
        let other = copy
            .with(
                TransactionId::new([2; 12]),
                &[b"wxyz", &1u32.to_be_bytes()],
                8,
            )
            .expect("same lengths");
        assert_eq!(&other[8..20], &[2; 12]);
        assert_eq!(&other[24..28], b"wxyz");
        assert_eq!(&other[32..36], &[0, 0, 0, 1]);
        assert_eq!(other.len(), message.len());
        assert!(other.capacity() >= message.len() + 8);
        // A value of another length, or a value too few, is refused.
        assert!(
            copy.with(tid, &[b"abc", &600u32.to_be_bytes()], 0)
                .is_none()
        );
        assert!(copy.with(tid, &[b"abcd"], 0).is_none());
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn demux_by_first_byte() {
        assert_eq!(demux(&[0]), Demux::Stun);
        assert_eq!(demux(&[3]), Demux::Stun);
        assert_eq!(demux(&[4]), Demux::Other);
        assert_eq!(demux(&[64]), Demux::ChannelData);
        assert_eq!(demux(&[79]), Demux::ChannelData);
        assert_eq!(demux(&[80]), Demux::ChannelData);
        assert_eq!(demux(&[127]), Demux::ChannelData);
        assert_eq!(demux(&[128]), Demux::Other);
        assert_eq!(demux(&[]), Demux::Other);
    }

    #[test]
    fn message_types_decode() {
        assert_eq!(
            decode_type(0x0001),
            (MessageClass::Request, Method::new(1).unwrap())
        );
        assert_eq!(
            decode_type(0x0113),
            (MessageClass::ErrorResponse, Method::new(3).unwrap())
        );
        assert_eq!(
            decode_type(0x0016),
            (MessageClass::Indication, Method::new(6).unwrap())
        );
        assert_eq!(
            decode_type(0x0109),
            (MessageClass::SuccessResponse, Method::new(9).unwrap())
        );
    }

    #[test]
    fn channel_data_framing() {
        let ok = [0x40, 0x00, 0x00, 0x03, 1, 2, 3];
        assert_eq!(
            parse_channel_data(&ok),
            Ok(ChannelData {
                channel: 0x4000,
                data: &[1, 2, 3]
            })
        );
        let padded = [0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0];
        assert_eq!(parse_channel_data(&padded).unwrap().data, &[1, 2, 3]);
        let too_much = [0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0, 0];
        assert_eq!(
            parse_channel_data(&too_much),
            Err(ChannelDataError::TrailingBytes)
        );
        let short = [0x40, 0x00, 0x00, 0x05, 1, 2, 3];
        assert_eq!(
            parse_channel_data(&short),
            Err(ChannelDataError::LengthOverrun)
        );
        assert_eq!(
            parse_channel_data(&[0x40, 0]),
            Err(ChannelDataError::Truncated)
        );
        assert_eq!(
            encode_channel_data(0x4001, &[9, 9], false).unwrap(),
            [0x40, 0x01, 0, 2, 9, 9]
        );
        assert!(encode_channel_data(0x4001, &vec![0; 70_000], false).is_err());
    }

    #[test]
    fn frames_with_misplaced_fingerprint_are_bad() {
        // Binding request with FINGERPRINT followed by another attribute.
        let mut msg = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[1; 12]);
        append_fingerprint(&mut msg);
        assert!(StunFrame::parse(&msg).is_ok());
        let mut tampered = msg.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            StunFrame::parse(&tampered).unwrap_err(),
            FrameError::BadFingerprint
        );
        msg.extend_from_slice(&[0x80, 0x22, 0, 0]);
        let length = msg.len() - HEADER_LEN;
        set_length(&mut msg, length);
        assert!(matches!(
            StunFrame::parse(&msg),
            Err(FrameError::BadAttributes(_))
        ));
    }

    #[test]
    fn headers_are_validated() {
        assert_eq!(parse_header(&[0; 19]), Err(FrameError::NotStun));
        let mut msg = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[1; 12]);
        assert!(parse_header(&msg).is_ok());
        msg[4] = 0;
        assert_eq!(parse_header(&msg), Err(FrameError::NotStun));
        msg[4] = 0x21;
        msg.push(0);
        assert_eq!(parse_header(&msg), Err(FrameError::NotStun));
    }

    /// The Data indication `stun_codec` would encode (what the server sent before).
    fn codec_data_indication(tid: [u8; 12], peer: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        use bytecodec::EncodeExt as _;
        use stun_codec::MessageEncoder;
        use stun_codec::rfc5766::methods::DATA;

        use crate::attributes::{Attribute, Data, XorPeerAddress};
        let mut message = stun_codec::Message::<Attribute>::new(
            MessageClass::Indication,
            DATA,
            TransactionId::new(tid),
        );
        message.add_attribute(XorPeerAddress::new(peer));
        message.add_attribute(Data::new(data.to_vec()).ok()?);
        MessageEncoder::<Attribute>::new()
            .encode_into_bytes(message)
            .ok()
    }

    #[test]
    fn data_indications_match_the_codec_byte_for_byte() {
        let tid = [0x5A, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xF0];
        let peers: [SocketAddr; 3] = [
            "203.0.113.5:6000".parse().unwrap(),
            "[2001:db8:5::5]:1".parse().unwrap(),
            "10.0.0.1:65535".parse().unwrap(),
        ];
        for peer in peers {
            for len in [0, 1, 2, 3, 4, 5, 7, 8, 1200, 65_000] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let ours = encode_data_indication(tid, peer, &data).unwrap();
                assert_eq!(
                    Some(&ours),
                    codec_data_indication(tid, peer, &data).as_ref()
                );
                assert!(StunFrame::parse(&ours).is_ok());
            }
        }
        // Around what the 16-bit message length can say: refused exactly when the codec
        // refuses (IPv4: 16 bytes of attribute overhead, IPv6: 28; DATA is padded).
        for (peer, fits) in [(peers[0], 65_516), (peers[1], 65_504)] {
            for len in [fits, fits + 1, fits + 3, fits + 4, 65_535, 65_536, 70_000] {
                let data = vec![0; len];
                let ours = encode_data_indication(tid, peer, &data);
                assert_eq!(ours.is_some(), len <= fits, "{peer} {len}");
                assert_eq!(
                    ours,
                    codec_data_indication(tid, peer, &data),
                    "{peer} {len}"
                );
            }
        }
    }

    fn send_indication(attributes: Vec<crate::attributes::Attribute>) -> Vec<u8> {
        use bytecodec::EncodeExt as _;
        use stun_codec::MessageEncoder;
        use stun_codec::rfc5766::methods::SEND;

        use crate::attributes::Attribute;
        let mut message = stun_codec::Message::<Attribute>::new(
            MessageClass::Indication,
            SEND,
            TransactionId::new([3; 12]),
        );
        for attribute in attributes {
            message.add_attribute(attribute);
        }
        MessageEncoder::<Attribute>::new()
            .encode_into_bytes(message)
            .unwrap()
    }

    #[test]
    fn simple_send_indications_are_read_in_place() {
        use crate::attributes::{Data, DontFragment, Software, XorPeerAddress};
        let v4: SocketAddr = "203.0.113.5:6000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:5::5]:1".parse().unwrap();
        for peer in [v4, v6] {
            let mut bytes = send_indication(vec![
                XorPeerAddress::new(peer).into(),
                Data::new(b"hello".to_vec()).unwrap().into(),
            ]);
            append_fingerprint(&mut bytes);
            let send = StunFrame::parse(&bytes).unwrap().simple_send().unwrap();
            assert_eq!(
                send,
                SimpleSend {
                    peer,
                    data: b"hello",
                    dont_fragment: false
                }
            );
        }
        // Any order, with DONT-FRAGMENT.
        let bytes = send_indication(vec![
            Data::new(vec![1, 2, 3, 4]).unwrap().into(),
            DontFragment.into(),
            XorPeerAddress::new(v4).into(),
        ]);
        let send = StunFrame::parse(&bytes).unwrap().simple_send().unwrap();
        assert_eq!(
            (send.peer, send.data, send.dont_fragment),
            (v4, &[1, 2, 3, 4][..], true)
        );
        // Anything else is left to the codec: another attribute, a duplicate, a missing one.
        let other = send_indication(vec![
            XorPeerAddress::new(v4).into(),
            Data::new(vec![1]).unwrap().into(),
            Software::new("x".to_owned()).unwrap().into(),
        ]);
        let twice = send_indication(vec![
            XorPeerAddress::new(v4).into(),
            XorPeerAddress::new(v6).into(),
            Data::new(vec![1]).unwrap().into(),
        ]);
        let no_data = send_indication(vec![XorPeerAddress::new(v4).into()]);
        for bytes in [other, twice, no_data] {
            assert_eq!(StunFrame::parse(&bytes).unwrap().simple_send(), None);
        }
        // An IPv4 family with an IPv6-sized address.
        let mut bad = send_indication(vec![
            XorPeerAddress::new(v6).into(),
            Data::new(vec![1]).unwrap().into(),
        ]);
        bad[HEADER_LEN + 5] = FAMILY_IPV4;
        assert_eq!(StunFrame::parse(&bad).unwrap().simple_send(), None);
    }
}
