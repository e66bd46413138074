//! STUN only (STUNner's `auth.type: none`): Binding answered, every TURN request refused with
//! 403 before authentication, nothing allocated.
use stun_codec::MessageClass;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};

use super::*;
use crate::attributes::{ChannelNumber, XorMappedAddress, XorPeerAddress};

fn stun_only() -> Harness {
    let mut config = config();
    config.stun_only = true;
    // No credentials at all: none are needed.
    Harness::with(config, Credentials::new(REALM))
}

#[test]
fn binding_is_answered_and_every_turn_request_is_forbidden() {
    let mut h = stun_only();
    let mut client = Client::new("192.0.2.1:40000", "", "");
    let (_, bytes) = client.build(MessageClass::Request, BINDING, vec![], false);
    let response = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert!(response.is_success());
    assert_eq!(
        response
            .get::<XorMappedAddress>()
            .map(XorMappedAddress::address),
        Some(client.addr)
    );

    let peer = XorPeerAddress::new(peer());
    let requests: [(_, Vec<Attribute>); 4] = [
        (ALLOCATE, vec![udp()]),
        (REFRESH, vec![]),
        (CREATE_PERMISSION, vec![peer.clone().into()]),
        (
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4000).into(), peer.into()],
        ),
    ];
    for (method, attributes) in requests {
        // Unauthenticated: 403 at once, no 401 challenge.
        let (_, bytes) = client.build(MessageClass::Request, method, attributes, false);
        let commands = h.client_sends(client.addr, &bytes);
        assert!(bind_requests(&commands).is_empty(), "{method:?}");
        let response = response_in(&commands, client.addr);
        assert_eq!(response.error_code(), Some(403), "{method:?}");
        assert_eq!(response.integrity_algorithm(), None);
    }
    // Even with credentials that would be valid elsewhere.
    let mut alice = Client::alice();
    alice.nonce = Some("whatever".to_owned());
    let bytes = alice.request(ALLOCATE, vec![udp()]);
    let response = response_in(&h.client_sends(alice.addr, &bytes), alice.addr);
    assert_eq!(response.error_code(), Some(403));

    let stats = h.server.stats();
    assert_eq!(stats.stun_only_refused, 5);
    assert_eq!(stats.error_count(403), 5);
    assert_eq!(stats.error_count(401), 0);
    assert_eq!(stats.binding_requests, 1);
    assert_eq!(stats.allocate_requests, 2);
    assert_eq!(h.server.allocation_count(), 0);
    // ChannelData and Send indications have no allocation to go through.
    let commands = h.client_sends(client.addr, &[0x40, 0x00, 0x00, 0x02, 7, 7]);
    assert!(commands.is_empty());
}

#[test]
fn a_turn_server_is_not_stun_only() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    h.allocate(&mut alice);
    assert_eq!(h.server.stats().stun_only_refused, 0);
}
