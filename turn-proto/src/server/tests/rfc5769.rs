//! RFC 5769 test vectors: framing, MESSAGE-INTEGRITY, FINGERPRINT, XOR-MAPPED-ADDRESS, and a
//! lossless decode / re-encode through the attribute set.
use bytecodec::EncodeExt as _;
use stun_codec::{MessageClass, MessageEncoder};

use super::decode_message;
use crate::attributes::{Attribute, Nonce, Realm, Software, Username, XorMappedAddress};
use crate::auth::{self, PasswordAlgorithm};
use crate::rfc5769::{
    SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE, SAMPLE_LONG_TERM_REQUEST, SAMPLE_REQUEST,
};
use crate::wire::{FrameError, StunFrame};

const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

fn reencode(bytes: &[u8]) -> Vec<u8> {
    MessageEncoder::<Attribute>::new()
        .encode_into_bytes(decode_message(bytes))
        .unwrap()
}

#[test]
fn sample_request_short_term_integrity_and_fingerprint() {
    // Parsing checks FINGERPRINT; the short-term key is the password itself.
    let frame = StunFrame::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(frame.header.class, MessageClass::Request);
    assert!(frame.verify_integrity(SHORT_TERM_PASSWORD.as_bytes()));
    assert!(!frame.verify_integrity(b"wrong"));

    let message = decode_message(&SAMPLE_REQUEST);
    assert_eq!(
        message.get_attribute::<Software>().unwrap().description(),
        "STUN test client"
    );
    assert_eq!(
        message.get_attribute::<Username>().unwrap().name(),
        "evtj:h6vY"
    );
    // PRIORITY and ICE-CONTROLLED are not ours: kept raw, byte for byte.
    assert_eq!(message.unknown_attributes().count(), 2);
    assert_eq!(reencode(&SAMPLE_REQUEST), SAMPLE_REQUEST);

    let mut corrupted = SAMPLE_REQUEST;
    corrupted[30] ^= 1;
    assert_eq!(
        StunFrame::parse(&corrupted).unwrap_err(),
        FrameError::BadFingerprint
    );
}

#[test]
fn sample_ipv4_response() {
    let frame = StunFrame::parse(&SAMPLE_IPV4_RESPONSE).unwrap();
    assert_eq!(frame.header.class, MessageClass::SuccessResponse);
    assert!(frame.verify_integrity(SHORT_TERM_PASSWORD.as_bytes()));
    let message = decode_message(&SAMPLE_IPV4_RESPONSE);
    assert_eq!(
        message
            .get_attribute::<XorMappedAddress>()
            .unwrap()
            .address(),
        "192.0.2.1:32853".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(reencode(&SAMPLE_IPV4_RESPONSE), SAMPLE_IPV4_RESPONSE);
}

#[test]
fn sample_ipv6_response() {
    let frame = StunFrame::parse(&SAMPLE_IPV6_RESPONSE).unwrap();
    assert!(frame.verify_integrity(SHORT_TERM_PASSWORD.as_bytes()));
    let message = decode_message(&SAMPLE_IPV6_RESPONSE);
    assert_eq!(
        message
            .get_attribute::<XorMappedAddress>()
            .unwrap()
            .address(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse::<std::net::SocketAddr>()
            .unwrap()
    );
    assert_eq!(reencode(&SAMPLE_IPV6_RESPONSE), SAMPLE_IPV6_RESPONSE);
}

#[test]
fn sample_request_with_long_term_authentication() {
    let message = decode_message(&SAMPLE_LONG_TERM_REQUEST);
    let username = message.get_attribute::<Username>().unwrap().name();
    assert_eq!(username, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    assert_eq!(
        message.get_attribute::<Nonce>().unwrap().value(),
        "f//499k954d6OL34oL9FSTvy64sA"
    );
    let realm = message.get_attribute::<Realm>().unwrap().text();
    assert_eq!(realm, "example.org");
    // "TheMatrIX" is the password after SASLprep of "The<U+00AD>M<U+00AA>tr<U+2168>".
    let key = auth::long_term_key(PasswordAlgorithm::Md5, username, realm, "TheMatrIX");
    let frame = StunFrame::parse(&SAMPLE_LONG_TERM_REQUEST).unwrap();
    assert!(frame.verify_integrity(&key));
    let other = auth::long_term_key(PasswordAlgorithm::Md5, username, realm, "TheMatrix");
    assert!(!frame.verify_integrity(&other));
    assert_eq!(
        reencode(&SAMPLE_LONG_TERM_REQUEST),
        SAMPLE_LONG_TERM_REQUEST
    );
}

#[test]
fn our_integrity_and_fingerprint_match_the_vectors() {
    // Re-sign the IPv4 response: strip MESSAGE-INTEGRITY and FINGERPRINT (the last 32 bytes)
    // and append them with our encoder; the bytes must come out identical.
    let mut bytes = SAMPLE_IPV4_RESPONSE[..SAMPLE_IPV4_RESPONSE.len() - 32].to_vec();
    crate::wire::append_integrity(
        &mut bytes,
        auth::IntegrityAlgorithm::HmacSha1,
        SHORT_TERM_PASSWORD.as_bytes(),
    );
    crate::wire::append_fingerprint(&mut bytes);
    assert_eq!(bytes, SAMPLE_IPV4_RESPONSE);
}
