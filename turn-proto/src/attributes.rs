//! The STUN/TURN attributes xturn speaks, as one `stun_codec` attribute enum.
//!
//! `stun_codec` 0.4 provides the RFC 5389 / RFC 5766 / RFC 8656 attributes; this module adds
//! the RFC 8489 and RFC 8656 ones it lacks (MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM,
//! USERHASH, PASSWORD-ALGORITHMS, ADDRESS-ERROR-CODE) and a CHANNEL-NUMBER that decodes any
//! value, so that an out-of-range channel number is answered with an authenticated 400 rather
//! than failing to decode; and RFC 6062's CONNECTION-ID.
use std::fmt;
use std::marker::PhantomData;

use bytecodec::bytes::{BytesEncoder, RemainingBytesDecoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, ErrorKind, SizedEncode, TryTaggedDecode};
use stun_codec::AttributeType;
use stun_codec::rfc8656::attributes::AddressFamily;

pub use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm,
    Software, UnknownAttributes, Username, XorMappedAddress,
};
pub use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
pub use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};

/// An attribute whose value is parsed from, and serialised to, a byte string in one go.
pub trait AttributeValue: Sized {
    /// The attribute type.
    const TYPE: u16;
    /// Parses a value; `None` if it is malformed.
    fn decode_value(value: &[u8]) -> Option<Self>;
    /// Serialises the value (without padding).
    fn encode_value(&self) -> Vec<u8>;
}

/// Decoder of an [`AttributeValue`].
pub struct ValueDecoder<T> {
    bytes: RemainingBytesDecoder,
    _value: PhantomData<fn() -> T>,
}

impl<T> Default for ValueDecoder<T> {
    fn default() -> Self {
        ValueDecoder {
            bytes: RemainingBytesDecoder::default(),
            _value: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ValueDecoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValueDecoder")
    }
}

impl<T: AttributeValue> Decode for ValueDecoder<T> {
    type Item = T;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.bytes.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> bytecodec::Result<T> {
        let bytes = self.bytes.finish_decoding()?;
        T::decode_value(&bytes).ok_or_else(|| bytecodec::Error::from(ErrorKind::InvalidInput))
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.bytes.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.bytes.is_idle()
    }
}

impl<T: AttributeValue> TryTaggedDecode for ValueDecoder<T> {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: AttributeType) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == T::TYPE)
    }
}

/// Encoder of an [`AttributeValue`].
pub struct ValueEncoder<T> {
    bytes: BytesEncoder<Vec<u8>>,
    _value: PhantomData<fn(T)>,
}

impl<T> Default for ValueEncoder<T> {
    fn default() -> Self {
        ValueEncoder {
            bytes: BytesEncoder::default(),
            _value: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ValueEncoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValueEncoder")
    }
}

impl<T: AttributeValue> Encode for ValueEncoder<T> {
    type Item = T;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.bytes.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: T) -> bytecodec::Result<()> {
        self.bytes.start_encoding(item.encode_value())
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.bytes.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.bytes.is_idle()
    }
}

impl<T: AttributeValue> SizedEncode for ValueEncoder<T> {
    fn exact_requiring_bytes(&self) -> u64 {
        self.bytes.exact_requiring_bytes()
    }
}

macro_rules! value_attribute {
    ($name:ident) => {
        impl AttributeValue for $name {
            const TYPE: u16 = $name::CODEPOINT;
            fn decode_value(value: &[u8]) -> Option<Self> {
                $name::decode(value)
            }
            fn encode_value(&self) -> Vec<u8> {
                self.encode()
            }
        }
        impl stun_codec::Attribute for $name {
            type Decoder = ValueDecoder<$name>;
            type Encoder = ValueEncoder<$name>;
            fn get_type(&self) -> AttributeType {
                AttributeType::new($name::CODEPOINT)
            }
        }
    };
}

fn pad4(len: usize) -> usize {
    (len + 3) & !3
}

/// CHANNEL-NUMBER (RFC 8656 §18.1), any 16-bit value; the range check is the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x000C;
    /// Lowest valid channel number.
    pub const MIN: u16 = relay_common::CHANNEL_NUMBER_MIN;
    /// Highest channel number accepted (see [`relay_common::CHANNEL_NUMBER_MAX`]).
    pub const MAX: u16 = relay_common::CHANNEL_NUMBER_MAX;

    /// A CHANNEL-NUMBER carrying `n` (not range-checked).
    pub fn new(n: u16) -> Self {
        ChannelNumber(n)
    }

    /// The channel number.
    pub fn value(self) -> u16 {
        self.0
    }

    /// Is it in 0x4000..=0x7FFF ([`relay_common::is_channel_number`])?
    pub fn is_valid(self) -> bool {
        relay_common::is_channel_number(self.0)
    }

    fn decode(value: &[u8]) -> Option<Self> {
        // Two bytes of number, two reserved (RFFU) bytes.
        match value {
            [a, b, _, _] => Some(ChannelNumber(u16::from_be_bytes([*a, *b]))),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let [a, b] = self.0.to_be_bytes();
        vec![a, b, 0, 0]
    }
}
value_attribute!(ChannelNumber);

/// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6): an HMAC-SHA256 tag, possibly truncated.
///
/// The server verifies and produces this attribute on raw bytes (see `turn::wire`); the type
/// exists so that messages carrying it decode and re-encode losslessly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageIntegritySha256(Vec<u8>);

impl MessageIntegritySha256 {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x001C;

    /// Wraps a tag (16..=32 bytes, a multiple of 4).
    pub fn new(tag: Vec<u8>) -> Self {
        MessageIntegritySha256(tag)
    }

    /// The tag.
    pub fn tag(&self) -> &[u8] {
        &self.0
    }

    fn decode(value: &[u8]) -> Option<Self> {
        ((16..=32).contains(&value.len()) && value.len().is_multiple_of(4))
            .then(|| MessageIntegritySha256(value.to_vec()))
    }

    fn encode(&self) -> Vec<u8> {
        self.0.clone()
    }
}
value_attribute!(MessageIntegritySha256);

/// One algorithm entry: a codepoint and its parameters.
fn decode_algorithm(value: &[u8]) -> Option<((u16, Vec<u8>), usize)> {
    let [a, b, c, d, rest @ ..] = value else {
        return None;
    };
    let algorithm = u16::from_be_bytes([*a, *b]);
    let params_len = usize::from(u16::from_be_bytes([*c, *d]));
    let params = rest.get(..params_len)?.to_vec();
    // Parameters are padded to 4 bytes inside the attribute; the last entry may end unpadded.
    let consumed = (4 + pad4(params_len)).min(value.len());
    Some(((algorithm, params), consumed))
}

fn encode_algorithm(out: &mut Vec<u8>, algorithm: u16, params: &[u8]) {
    out.extend_from_slice(&algorithm.to_be_bytes());
    let len = u16::try_from(params.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&params[..usize::from(len)]);
    out.resize(pad4(out.len()), 0);
}

/// PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client used for the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm {
    algorithm: u16,
    parameters: Vec<u8>,
}

impl PasswordAlgorithm {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x001D;

    /// An algorithm without parameters (MD5 and SHA-256 have none).
    pub fn new(algorithm: crate::auth::PasswordAlgorithm) -> Self {
        PasswordAlgorithm {
            algorithm: algorithm.code(),
            parameters: Vec::new(),
        }
    }

    /// The raw codepoint.
    pub fn code(&self) -> u16 {
        self.algorithm
    }

    /// The parameters.
    pub fn parameters(&self) -> &[u8] {
        &self.parameters
    }

    /// The algorithm, if known and given without parameters.
    pub fn algorithm(&self) -> Option<crate::auth::PasswordAlgorithm> {
        if self.parameters.is_empty() {
            crate::auth::PasswordAlgorithm::from_code(self.algorithm)
        } else {
            None
        }
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let ((algorithm, parameters), consumed) = decode_algorithm(value)?;
        (consumed == value.len()).then_some(PasswordAlgorithm {
            algorithm,
            parameters,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_algorithm(&mut out, self.algorithm, &self.parameters);
        out
    }
}
value_attribute!(PasswordAlgorithm);

/// PASSWORD-ALGORITHMS (RFC 8489 §14.11): the algorithms the server offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithms(Vec<(u16, Vec<u8>)>);

impl PasswordAlgorithms {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x8002;

    /// The list `algorithms`, in that order, without parameters.
    pub fn new(algorithms: &[crate::auth::PasswordAlgorithm]) -> Self {
        PasswordAlgorithms(algorithms.iter().map(|a| (a.code(), Vec::new())).collect())
    }

    /// The raw entries: codepoint and parameters.
    pub fn entries(&self) -> &[(u16, Vec<u8>)] {
        &self.0
    }

    /// Does the list contain `algorithm` (without parameters)?
    pub fn contains(&self, algorithm: &PasswordAlgorithm) -> bool {
        self.0
            .iter()
            .any(|(code, params)| *code == algorithm.code() && *params == algorithm.parameters)
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let mut entries = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            let (entry, consumed) = decode_algorithm(rest)?;
            entries.push(entry);
            rest = rest.get(consumed..)?;
        }
        Some(PasswordAlgorithms(entries))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (code, params) in &self.0 {
            encode_algorithm(&mut out, *code, params);
        }
        out
    }
}
value_attribute!(PasswordAlgorithms);

/// USERHASH (RFC 8489 §14.4): SHA-256(username ":" realm) in place of USERNAME.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserHash([u8; 32]);

impl UserHash {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x001E;

    /// Wraps a hash (see [`crate::auth::userhash`]).
    pub fn new(hash: [u8; 32]) -> Self {
        UserHash(hash)
    }

    /// The hash.
    pub fn hash(&self) -> &[u8; 32] {
        &self.0
    }

    fn decode(value: &[u8]) -> Option<Self> {
        value.try_into().ok().map(UserHash)
    }

    fn encode(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}
value_attribute!(UserHash);

/// ADDRESS-ERROR-CODE (RFC 8656 §18.13): why one family of a dual-stack Allocate failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressErrorCode {
    family: AddressFamily,
    code: u16,
    reason: String,
}

impl AddressErrorCode {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x8001;

    /// `code` (300..=699) for `family`, with a reason phrase.
    pub fn new(family: AddressFamily, code: u16, reason: impl Into<String>) -> Self {
        AddressErrorCode {
            family,
            code,
            reason: reason.into(),
        }
    }

    /// The family that failed.
    pub fn family(&self) -> AddressFamily {
        self.family
    }

    /// The error code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The reason phrase.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let [family, _, class, number, reason @ ..] = value else {
            return None;
        };
        let family = match family {
            1 => AddressFamily::V4,
            2 => AddressFamily::V6,
            _ => return None,
        };
        let code = u16::from(class & 0x07) * 100 + u16::from(*number);
        let reason = std::str::from_utf8(reason).ok()?.to_owned();
        Some(AddressErrorCode {
            family,
            code,
            reason,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let family = match self.family {
            AddressFamily::V4 => 1,
            AddressFamily::V6 => 2,
        };
        // The code is ours (a constant 440/508), so the narrowing cannot lose anything.
        let class = u8::try_from(self.code / 100).unwrap_or(5) & 0x07;
        let number = u8::try_from(self.code % 100).unwrap_or(0);
        let mut out = vec![family, 0, class, number];
        out.extend_from_slice(self.reason.as_bytes());
        out
    }
}
value_attribute!(AddressErrorCode);

/// CONNECTION-ID (RFC 6062 §6.2.1): names a TCP connection with a peer of a TCP allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u32);

impl ConnectionId {
    /// Attribute type.
    pub const CODEPOINT: u16 = 0x002A;

    pub fn new(id: u32) -> Self {
        ConnectionId(id)
    }

    pub fn value(self) -> u32 {
        self.0
    }

    fn decode(value: &[u8]) -> Option<Self> {
        Some(ConnectionId(u32::from_be_bytes(value.try_into().ok()?)))
    }

    fn encode(&self) -> Vec<u8> {
        self.0.to_be_bytes().to_vec()
    }
}
value_attribute!(ConnectionId);

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        // RFC 5389 / RFC 8489
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        AlternateServer,
        Fingerprint,
        MessageIntegritySha256,
        PasswordAlgorithm,
        UserHash,
        PasswordAlgorithms,
        // RFC 5766 / RFC 8656
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily,
        AddressErrorCode,
        // RFC 6062
        ConnectionId
    ]
);

/// Comprehension-required attribute types that are not in [`Attribute`] but that a TURN server
/// may safely ignore: ICE's PRIORITY and USE-CANDIDATE, which show up in Binding requests.
pub(crate) const IGNORED_REQUIRED: [u16; 2] = [0x0024, 0x0025];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth;

    fn round_trip<T: AttributeValue + PartialEq + fmt::Debug>(value: &T) {
        let bytes = value.encode_value();
        assert_eq!(T::decode_value(&bytes).as_ref(), Some(value));
    }

    #[test]
    fn custom_attributes_round_trip() {
        round_trip(&ConnectionId::new(0xdead_beef));
        assert_eq!(ConnectionId::decode_value(&[1, 2, 3]), None);
        round_trip(&ChannelNumber::new(0x4001));
        round_trip(&ChannelNumber::new(0x1234));
        round_trip(&MessageIntegritySha256::new(vec![1; 32]));
        round_trip(&PasswordAlgorithm::new(auth::PasswordAlgorithm::Sha256));
        round_trip(&PasswordAlgorithms::new(&auth::PasswordAlgorithm::OFFERED));
        round_trip(&UserHash::new([9; 32]));
        round_trip(&AddressErrorCode::new(
            AddressFamily::V6,
            440,
            "Address Family not Supported",
        ));
        assert_eq!(
            PasswordAlgorithms::new(&[
                auth::PasswordAlgorithm::Md5,
                auth::PasswordAlgorithm::Sha256
            ])
            .encode_value(),
            [0, 1, 0, 0, 0, 2, 0, 0]
        );
    }

    #[test]
    fn malformed_custom_attributes_are_rejected() {
        assert_eq!(ChannelNumber::decode_value(&[0x40]), None);
        assert_eq!(MessageIntegritySha256::decode_value(&[0; 12]), None);
        assert_eq!(MessageIntegritySha256::decode_value(&[0; 18]), None);
        assert_eq!(PasswordAlgorithm::decode_value(&[0, 1, 0, 9]), None);
        assert_eq!(PasswordAlgorithms::decode_value(&[0, 1, 0]), None);
        assert_eq!(UserHash::decode_value(&[0; 31]), None);
        assert_eq!(AddressErrorCode::decode_value(&[3, 0, 4, 40]), None);
        assert_eq!(AddressErrorCode::decode_value(&[1, 0, 4, 40, 0xff]), None);
        // Parameters are padded inside the list.
        let algs = PasswordAlgorithms::decode_value(&[0, 9, 0, 1, 7, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(algs.entries(), &[(9, vec![7]), (1, vec![])]);
        assert!(algs.contains(&PasswordAlgorithm::new(auth::PasswordAlgorithm::Md5)));
        assert!(!algs.contains(&PasswordAlgorithm::new(auth::PasswordAlgorithm::Sha256)));
    }
}
