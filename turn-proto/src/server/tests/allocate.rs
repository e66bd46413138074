//! Binding, Allocate (incl. the relayed-port binding), Refresh, quotas, families, EVEN-PORT
//! and RESERVATION-TOKEN, the transaction cache and allocation expiry.
use std::net::SocketAddr;
use std::time::Duration;

use stun_codec::MessageClass;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};
use stun_codec::rfc8656::attributes::AddressFamily;

use bytecodec::EncodeExt as _;
use stun_codec::MessageEncoder;

use super::*;
use crate::attributes::{
    AdditionalAddressFamily, AddressErrorCode, DontFragment, EvenPort, Lifetime,
    PasswordAlgorithms, Realm, RequestedAddressFamily, ReservationToken, Software,
    UnknownAttributes, XorMappedAddress, XorPeerAddress,
};

#[test]
fn binding_request_gets_xor_mapped_address_without_auth() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let (tid, bytes) = client.build(MessageClass::Request, BINDING, vec![], false);
    let commands = h.client_sends(client.addr, &bytes);
    let response = response_in(&commands, client.addr);
    assert!(response.is_success());
    assert_eq!(response.transaction_id(), tid);
    assert_eq!(
        response.get::<XorMappedAddress>().unwrap().address(),
        client.addr
    );
    assert_eq!(
        response.get::<Software>().unwrap().description(),
        "xturn-test"
    );
    assert!(response.get::<crate::attributes::Fingerprint>().is_some());
    assert_eq!(response.integrity_algorithm(), None);
    assert_eq!(h.server.stats().binding_requests, 1);
    // Binding indications are keepalives: no answer.
    let indication = client.indication(BINDING, vec![]);
    assert!(h.client_sends(client.addr, &indication).is_empty());
    // Unknown comprehension-required attribute: 420.
    let mut message =
        stun_codec::Message::<Attribute>::new(MessageClass::Request, BINDING, client.next_tid());
    message.add_attribute(Software::new("x".to_owned()).unwrap());
    let mut bytes = MessageEncoder::<Attribute>::new()
        .encode_into_bytes(message)
        .unwrap();
    // Append the raw unknown attribute by hand.
    bytes.extend_from_slice(&[0x7F, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    let length = u16::try_from(bytes.len() - 20).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);
    let response = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(response.error_code(), Some(420));
    assert_eq!(
        response.get::<UnknownAttributes>().unwrap().unknowns()[0].as_u16(),
        0x7F00
    );
}

#[test]
fn allocate_challenge_then_success() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    // First, no credentials: 401 with REALM, NONCE, PASSWORD-ALGORITHMS; no state.
    let (_, bytes) = client.build(MessageClass::Request, ALLOCATE, vec![udp()], false);
    let commands = h.client_sends(client.addr, &bytes);
    let challenge = response_in(&commands, client.addr);
    assert_eq!(challenge.error_code(), Some(401));
    assert_eq!(challenge.get::<Realm>().unwrap().text(), REALM);
    assert!(
        challenge
            .get::<Nonce>()
            .unwrap()
            .value()
            .starts_with("obMatJos2")
    );
    assert_eq!(
        challenge.get::<PasswordAlgorithms>().unwrap(),
        &PasswordAlgorithms::new(&cred::PasswordAlgorithm::OFFERED)
    );
    assert_eq!(challenge.integrity_algorithm(), None);
    assert_eq!(h.server.stats().auth_failures, 0);
    client.learn(&challenge);

    // Authenticated: the server picks a port and asks for it to be bound.
    let bytes = client.request(ALLOCATE, vec![udp()]);
    let commands = h.client_sends(client.addr, &bytes);
    let binds = bind_requests(&commands);
    assert_eq!(binds.len(), 1);
    assert_eq!(binds[0].ip(), relay_v4());
    assert!((50000..=50999).contains(&binds[0].port()));
    assert!(sent_to(&commands, client.addr).is_empty());
    assert_eq!(h.server.allocation_count(), 0);

    let commands = h.bound(binds[0], Ok(()));
    let response = response_in(&commands, client.addr);
    assert!(response.is_success());
    assert_eq!(response.relayed(), vec![binds[0]]);
    assert_eq!(
        response.get::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(600)
    );
    assert_eq!(
        response.get::<XorMappedAddress>().unwrap().address(),
        client.addr
    );
    assert_eq!(
        response.integrity_algorithm(),
        Some(IntegrityAlgorithm::HmacSha1)
    );
    assert!(response.verifies_with(&client.key()));
    assert!(response.get::<crate::attributes::Fingerprint>().is_some());
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.stats().allocations_created, 1);
    let allocation = h.server.allocations().next().unwrap();
    assert_eq!(allocation.username(), "alice");
    assert_eq!(allocation.relayed_addresses()[0].0, binds[0]);
    assert!(h.server.poll_timeout().is_some());
}

#[test]
fn bind_failures_retry_then_508_and_release_nothing_twice() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let commands = h.call(&mut client, ALLOCATE, vec![udp()]);
    let mut binds = bind_requests(&commands);
    let mut seen = Vec::new();
    let mut attempts = 0;
    let response = loop {
        assert_eq!(binds.len(), 1);
        let addr = binds[0];
        assert!(!seen.contains(&addr), "port {addr} tried twice");
        seen.push(addr);
        attempts += 1;
        let commands = h.bound(addr, Err(BindFailure::AddressInUse));
        assert!(
            releases(&commands).is_empty(),
            "failed binds are not ours to release"
        );
        binds = bind_requests(&commands);
        if binds.is_empty() {
            break response_in(&commands, client.addr);
        }
    };
    assert_eq!(attempts, 16);
    assert_eq!(response.error_code(), Some(508));
    assert!(response.verifies_with(&client.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().relay_bind_failures, 16);

    // A later retry by the same client works (the 508 was not cached).
    let relayed = h.allocate(&mut client);
    assert_eq!(relayed.ip(), relay_v4());
}

#[test]
fn bind_failure_other_is_508_at_once() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let commands = h.call(&mut client, ALLOCATE, vec![udp()]);
    let binds = bind_requests(&commands);
    let commands = h.bound(binds[0], Err(BindFailure::Other));
    assert_eq!(response_in(&commands, client.addr).error_code(), Some(508));
    assert!(bind_requests(&commands).is_empty());
    // Bind outcomes nobody waits for are ignored (and a stray success released).
    let stray = addr("198.51.100.1:50500");
    assert_eq!(
        h.bound(stray, Ok(())),
        vec![Command::ReleaseRelay { addr: stray }]
    );
}

#[test]
fn retransmitted_allocate_is_answered_from_its_allocation() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.call(&mut client, REFRESH, vec![]); // learn a nonce (437 is fine)
    let cached = h.server.tx_cache_len(); // the 437
    let bytes = client.request(ALLOCATE, vec![udp()]);
    let first = h.client_sends(client.addr, &bytes);
    let binds = bind_requests(&first);
    assert_eq!(binds.len(), 1);
    // Retransmitted while the bind is outstanding: nothing new happens.
    assert!(h.client_sends(client.addr, &bytes).is_empty());
    let done = h.bound(binds[0], Ok(()));
    let original = sent_to(&done, client.addr);
    assert_eq!(original.len(), 1);
    // Retransmitted after success: the same answer (the allocation's), no second allocation
    // or bind, and no copy of the success kept in the transaction cache for it.
    assert_eq!(h.server.tx_cache_len(), cached);
    let again = h.client_sends(client.addr, &bytes);
    assert!(bind_requests(&again).is_empty());
    assert_eq!(sent_to(&again, client.addr), original);
    assert_eq!(h.server.stats().retransmissions_answered, 1);
    assert_eq!(h.server.allocation_count(), 1);

    // Later, with less of the lifetime left, it is still recognised.
    h.advance(Duration::from_secs(45));
    let late = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert!(late.is_success());
    assert_eq!(late.relayed(), vec![binds[0]]);
    assert_eq!(h.server.stats().retransmissions_answered, 2);
    // A new transaction on the same 5-tuple: 437.
    let response = h.ask(&mut client, ALLOCATE, vec![udp()]);
    assert_eq!(response.error_code(), Some(437));
    assert!(response.verifies_with(&client.key()));
}

#[test]
fn requests_without_allocation_get_437() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let response = h.ask(&mut client, REFRESH, vec![]);
    assert_eq!(response.error_code(), Some(437));
    let response = h.ask(
        &mut client,
        stun_codec::rfc5766::methods::CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert_eq!(response.error_code(), Some(437));
    let response = h.ask(
        &mut client,
        stun_codec::rfc5766::methods::CHANNEL_BIND,
        vec![
            crate::attributes::ChannelNumber::new(0x4000).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert_eq!(response.error_code(), Some(437));
    assert_eq!(h.server.stats().error_437, 3);
}

#[test]
fn refresh_clamps_defaults_and_deletes() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);

    let lifetime = |r: &Response| r.get::<Lifetime>().unwrap().lifetime().as_secs();
    let r = h.ask(
        &mut client,
        REFRESH,
        vec![Lifetime::from_u32(100_000).into()],
    );
    assert_eq!(lifetime(&r), 3600);
    let r = h.ask(&mut client, REFRESH, vec![]);
    assert_eq!(lifetime(&r), 600);
    let r = h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(10).into()]);
    assert_eq!(lifetime(&r), 600);
    let r = h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(1200).into()]);
    assert_eq!(lifetime(&r), 1200);
    assert!(r.verifies_with(&client.key()));

    // Refreshing keeps it alive past the original 600 s.
    assert!(releases(&h.advance(Duration::from_secs(700))).is_empty());
    assert_eq!(h.server.allocation_count(), 1);

    // A family the allocation does not have: 443.
    let r = h.ask(
        &mut client,
        REFRESH,
        vec![RequestedAddressFamily::new(AddressFamily::V6).into()],
    );
    assert_eq!(r.error_code(), Some(443));

    // Lifetime 0 deletes; a retransmission of it gets the same success from the cache.
    let bytes = client.request(REFRESH, vec![Lifetime::from_u32(0).into()]);
    let commands = h.client_sends(client.addr, &bytes);
    let r = response_in(&commands, client.addr);
    assert!(r.is_success());
    assert_eq!(lifetime(&r), 0);
    assert_eq!(releases(&commands), vec![relayed]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_deleted, 1);
    let again = h.client_sends(client.addr, &bytes);
    assert_eq!(
        sent_to(&again, client.addr),
        sent_to(&commands, client.addr)
    );
    // The port can be used again; nothing left to expire.
    assert!(h.advance(Duration::from_secs(4000)).is_empty());
}

#[test]
fn allocation_expires_and_releases_its_socket() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    assert!(h.advance(Duration::from_secs(599)).is_empty());
    let commands = h.advance(Duration::from_secs(1));
    assert_eq!(releases(&commands), vec![relayed]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    let r = h.ask(&mut client, REFRESH, vec![]);
    assert_eq!(r.error_code(), Some(437));
}

#[test]
fn shortening_the_lifetime_is_honoured() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(3600).into()]);
    h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(600).into()]);
    assert_eq!(
        releases(&h.advance(Duration::from_secs(601))),
        vec![relayed]
    );
}

#[test]
fn wrong_username_on_an_allocation_is_441() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    h.allocate(&mut alice);
    // Bob, with valid credentials, from alice's 5-tuple.
    let mut bob = Client::bob();
    bob.addr = alice.addr;
    let r = h.ask(&mut bob, REFRESH, vec![]);
    assert_eq!(r.error_code(), Some(441));
    assert!(r.verifies_with(&bob.key()));
}

#[test]
fn allocate_attribute_checks() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    // REQUESTED-TRANSPORT missing → 400, TCP over UDP → 400 (RFC 6062), SCTP → 442.
    assert_eq!(h.ask(&mut client, ALLOCATE, vec![]).error_code(), Some(400));
    let tcp = RequestedTransport::new(6).into();
    assert_eq!(
        h.ask(&mut client, ALLOCATE, vec![tcp]).error_code(),
        Some(400)
    );
    let sctp = RequestedTransport::new(132).into();
    assert_eq!(
        h.ask(&mut client, ALLOCATE, vec![sctp]).error_code(),
        Some(442)
    );
    // Both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY → 400.
    let both = vec![
        udp(),
        RequestedAddressFamily::new(AddressFamily::V4).into(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    assert_eq!(h.ask(&mut client, ALLOCATE, both).error_code(), Some(400));
    // ADDITIONAL-ADDRESS-FAMILY IPv4 → 400.
    let additional_v4 = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V4).into(),
    ];
    assert_eq!(
        h.ask(&mut client, ALLOCATE, additional_v4).error_code(),
        Some(400)
    );
    // RESERVATION-TOKEN with EVEN-PORT → 400; unknown token → 508.
    let token_and_even = vec![
        udp(),
        ReservationToken::new(1).into(),
        EvenPort::new(false).into(),
    ];
    assert_eq!(
        h.ask(&mut client, ALLOCATE, token_and_even).error_code(),
        Some(400)
    );
    let unknown_token = vec![udp(), ReservationToken::new(1).into()];
    assert_eq!(
        h.ask(&mut client, ALLOCATE, unknown_token).error_code(),
        Some(508)
    );
    // DONT-FRAGMENT is supported.
    let (r, _) = h.allocate_with(&mut client, vec![udp(), DontFragment.into()]);
    assert!(r.is_success());
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn unknown_comprehension_required_attribute_in_allocate_is_420() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.call(&mut client, REFRESH, vec![]); // learn a nonce
    // Encode with a raw attribute: build the message by hand around the unknown TLV.
    let tid = client.next_tid();
    let mut message = stun_codec::Message::<Attribute>::new(MessageClass::Request, ALLOCATE, tid);
    message.add_attribute(udp());
    let mut bytes = MessageEncoder::<Attribute>::new()
        .encode_into_bytes(message)
        .unwrap();
    bytes.extend_from_slice(&[0x7A, 0xBC, 0, 4, 0, 0, 0, 0]);
    // Credentials after it.
    let mut tail = stun_codec::Message::<Attribute>::new(MessageClass::Request, ALLOCATE, tid);
    tail.add_attribute(Username::new("alice".to_owned()).unwrap());
    tail.add_attribute(Realm::new(REALM.to_owned()).unwrap());
    tail.add_attribute(Nonce::new(client.nonce.clone().unwrap()).unwrap());
    let tail = MessageEncoder::<Attribute>::new()
        .encode_into_bytes(tail)
        .unwrap();
    bytes.extend_from_slice(&tail[20..]);
    let length = u16::try_from(bytes.len() - 20).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);
    wire::append_integrity(&mut bytes, IntegrityAlgorithm::HmacSha1, &client.key());
    wire::append_fingerprint(&mut bytes);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(
        r.get::<UnknownAttributes>().unwrap().unknowns()[0].as_u16(),
        0x7ABC
    );
    assert!(r.verifies_with(&client.key()));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn address_families_440_and_dual_stack() {
    // IPv6 relay not configured: IPv6 → 440; dual-stack → IPv4 only + ADDRESS-ERROR-CODE 440.
    let mut config = config();
    config.relay_ipv6 = None;
    let mut h = Harness::with_config(config);
    let mut client = Client::alice();
    let v6 = vec![udp(), RequestedAddressFamily::new(AddressFamily::V6).into()];
    assert_eq!(h.ask(&mut client, ALLOCATE, v6).error_code(), Some(440));
    let dual = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    let (r, commands) = h.allocate_with(&mut client, dual);
    assert!(r.is_success());
    assert_eq!(bind_requests(&commands).len(), 1);
    assert_eq!(r.relayed().len(), 1);
    assert!(r.relayed()[0].is_ipv4());
    let error = r.get::<AddressErrorCode>().unwrap();
    assert_eq!((error.family(), error.code()), (AddressFamily::V6, 440));

    // IPv4 relay not configured: the default family is unavailable.
    let mut config = super::config();
    config.relay_ipv4 = None;
    let mut h = Harness::with_config(config);
    let mut client = Client::alice();
    assert_eq!(
        h.ask(&mut client, ALLOCATE, vec![udp()]).error_code(),
        Some(440)
    );
    let v6 = vec![udp(), RequestedAddressFamily::new(AddressFamily::V6).into()];
    let (r, _) = h.allocate_with(&mut client, v6);
    assert!(r.is_success());
    assert_eq!(r.relayed()[0].ip(), relay_v6());
}

#[test]
fn dual_stack_allocation_binds_both_families() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let dual = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    let commands = h.call(&mut client, ALLOCATE, dual);
    let binds = bind_requests(&commands);
    assert_eq!(binds.len(), 2);
    assert!(binds.iter().any(SocketAddr::is_ipv4));
    assert!(binds.iter().any(SocketAddr::is_ipv6));
    // One family done: still waiting.
    assert!(sent_to(&h.bound(binds[1], Ok(())), client.addr).is_empty());
    let r = response_in(&h.bound(binds[0], Ok(())), client.addr);
    assert!(r.is_success());
    let relayed = r.relayed();
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
    assert!(r.get::<AddressErrorCode>().is_none());
    // Peers of both families are accepted.
    let v6_peer = addr("[2001:db8:5::5]:7000");
    let r = h.ask(
        &mut client,
        stun_codec::rfc5766::methods::CREATE_PERMISSION,
        vec![
            XorPeerAddress::new(peer()).into(),
            XorPeerAddress::new(v6_peer).into(),
        ],
    );
    assert!(r.is_success());
    // Expiry releases both sockets.
    let mut released = releases(&h.advance(Duration::from_secs(600)));
    released.sort();
    let mut expected = relayed;
    expected.sort();
    assert_eq!(released, expected);
}

#[test]
fn dual_stack_survives_a_failing_additional_family() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let dual = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    let commands = h.call(&mut client, ALLOCATE, dual);
    let binds = bind_requests(&commands);
    let v6 = binds.iter().copied().find(SocketAddr::is_ipv6).unwrap();
    let v4 = binds.iter().copied().find(SocketAddr::is_ipv4).unwrap();
    assert!(h.bound(v6, Err(BindFailure::Other)).is_empty());
    let r = response_in(&h.bound(v4, Ok(())), client.addr);
    assert!(r.is_success());
    assert_eq!(r.relayed(), vec![v4]);
    let error = r.get::<AddressErrorCode>().unwrap();
    assert_eq!((error.family(), error.code()), (AddressFamily::V6, 508));
}

#[test]
fn failing_primary_releases_the_other_family() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let dual = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    let commands = h.call(&mut client, ALLOCATE, dual);
    let binds = bind_requests(&commands);
    let v6 = binds.iter().copied().find(SocketAddr::is_ipv6).unwrap();
    let v4 = binds.iter().copied().find(SocketAddr::is_ipv4).unwrap();
    assert!(h.bound(v6, Ok(())).is_empty());
    let commands = h.bound(v4, Err(BindFailure::Other));
    assert_eq!(response_in(&commands, client.addr).error_code(), Some(508));
    assert_eq!(releases(&commands), vec![v6]);
}

#[test]
fn even_port_reservation_and_token() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    // EVEN-PORT without R: one even port.
    let (r, commands) = h.allocate_with(&mut alice, vec![udp(), EvenPort::new(false).into()]);
    assert!(r.is_success());
    assert_eq!(bind_requests(&commands).len(), 1);
    assert_eq!(r.relayed()[0].port() % 2, 0);
    assert!(r.get::<ReservationToken>().is_none());

    // EVEN-PORT with R: p and p + 1 are bound, p + 1 is reserved behind a token.
    let mut bob = Client::bob();
    let commands = h.call(&mut bob, ALLOCATE, vec![udp(), EvenPort::new(true).into()]);
    let binds = bind_requests(&commands);
    assert_eq!(binds.len(), 2);
    assert_eq!(binds[0].port() % 2, 0);
    assert_eq!(binds[1].port(), binds[0].port() + 1);
    let mut done = h.bound(binds[1], Ok(()));
    done.extend(h.bound(binds[0], Ok(())));
    let r = response_in(&done, bob.addr);
    assert!(r.is_success());
    assert_eq!(r.relayed(), vec![binds[0]]);
    let token = r.get::<ReservationToken>().unwrap().token();

    // Another client takes the reserved port with the token: no new bind.
    let mut carol = Client::new("192.0.2.3:40000", "alice", "alice-pw");
    let commands = h.call(
        &mut carol,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert!(bind_requests(&commands).is_empty());
    let r = response_in(&commands, carol.addr);
    assert!(r.is_success(), "{r:?}");
    assert_eq!(r.relayed(), vec![binds[1]]);
    // The token is used up.
    let mut dave = Client::new("192.0.2.4:40000", "alice", "alice-pw");
    let r = h.ask(
        &mut dave,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert_eq!(r.error_code(), Some(508));
    // The token cannot be combined with a family either.
    let r = h.ask(
        &mut dave,
        ALLOCATE,
        vec![
            udp(),
            ReservationToken::new(token).into(),
            RequestedAddressFamily::new(AddressFamily::V4).into(),
        ],
    );
    assert_eq!(r.error_code(), Some(400));
}

#[test]
fn a_retransmitted_allocate_gets_its_token_and_address_error_again() {
    let mut h = Harness::new();
    // EVEN-PORT with R: the token is in the first answer only, so that answer is cached.
    let mut bob = Client::bob();
    h.call(&mut bob, REFRESH, vec![]); // learn a nonce (437 is fine)
    let mut cached = h.server.tx_cache_len(); // the 437
    let bytes = bob.request(ALLOCATE, vec![udp(), EvenPort::new(true).into()]);
    let binds = bind_requests(&h.client_sends(bob.addr, &bytes));
    assert_eq!(binds.len(), 2);
    let mut done = h.bound(binds[1], Ok(()));
    done.extend(h.bound(binds[0], Ok(())));
    assert!(
        response_in(&done, bob.addr)
            .get::<ReservationToken>()
            .is_some()
    );
    assert_eq!(h.server.tx_cache_len(), cached + 1);
    let again = h.client_sends(bob.addr, &bytes);
    assert_eq!(sent_to(&again, bob.addr), sent_to(&done, bob.addr));

    // A family that could not be allocated: its ADDRESS-ERROR-CODE is in the first answer only.
    let mut alice = Client::alice();
    h.call(&mut alice, REFRESH, vec![]);
    cached = h.server.tx_cache_len();
    let dual = vec![
        udp(),
        AdditionalAddressFamily::new(AddressFamily::V6).into(),
    ];
    let bytes = alice.request(ALLOCATE, dual);
    let binds = bind_requests(&h.client_sends(alice.addr, &bytes));
    let v6 = binds.iter().copied().find(SocketAddr::is_ipv6).unwrap();
    let v4 = binds.iter().copied().find(SocketAddr::is_ipv4).unwrap();
    assert!(h.bound(v6, Err(BindFailure::Other)).is_empty());
    let done = h.bound(v4, Ok(()));
    assert!(
        response_in(&done, alice.addr)
            .get::<AddressErrorCode>()
            .is_some()
    );
    assert_eq!(h.server.tx_cache_len(), cached + 1);
    let again = h.client_sends(alice.addr, &bytes);
    assert_eq!(sent_to(&again, alice.addr), sent_to(&done, alice.addr));
    assert_eq!(h.server.stats().retransmissions_answered, 2);
}

#[test]
fn unused_reservations_expire_after_30_seconds() {
    let mut h = Harness::new();
    let mut bob = Client::bob();
    let (r, commands) = h.allocate_with(&mut bob, vec![udp(), EvenPort::new(true).into()]);
    assert!(r.is_success());
    let reserved = bind_requests(&commands)[1];
    assert!(h.advance(Duration::from_secs(29)).is_empty());
    assert_eq!(releases(&h.advance(Duration::from_secs(1))), vec![reserved]);
}

#[test]
fn quotas_486_and_508() {
    let mut config = config();
    config.max_allocations_per_user = 1;
    config.max_allocations = 2;
    let mut h = Harness::with_config(config);
    let mut a1 = Client::alice();
    h.allocate(&mut a1);
    let mut a2 = Client::new("192.0.2.1:40001", "alice", "alice-pw");
    assert_eq!(
        h.ask(&mut a2, ALLOCATE, vec![udp()]).error_code(),
        Some(486)
    );
    let mut b1 = Client::bob();
    h.allocate(&mut b1);
    let mut rest = {
        let (user, pass) = cred::rest_credentials(REST_SECRET, "carol", START_UNIX + 3600);
        Client::new("192.0.2.5:40000", &user, &pass)
    };
    assert_eq!(
        h.ask(&mut rest, ALLOCATE, vec![udp()]).error_code(),
        Some(508)
    );
    assert_eq!(h.server.stats().quota_rejections, 2);
    assert_eq!(h.server.stats().error_486, 1);
    assert_eq!(h.server.stats().error_count(508), 1);
    // Freeing one makes room again.
    h.ask(&mut a1, REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert!(h.allocate_with(&mut a2, vec![udp()]).0.is_success());
}

#[test]
fn rest_users_are_counted_by_user_id() {
    let mut config = config();
    config.max_allocations_per_user = 1;
    let mut h = Harness::with_config(config);
    let (user, pass) = cred::rest_credentials(REST_SECRET, "carol", START_UNIX + 3600);
    h.allocate(&mut Client::new("192.0.2.5:1", &user, &pass));
    // A fresh credential of the same user id has another username but the same quota.
    let (user, pass) = cred::rest_credentials(REST_SECRET, "carol", START_UNIX + 7200);
    let mut again = Client::new("192.0.2.5:2", &user, &pass);
    assert_eq!(
        h.ask(&mut again, ALLOCATE, vec![udp()]).error_code(),
        Some(486)
    );
    let (user, pass) = cred::rest_credentials(REST_SECRET, "dave", START_UNIX + 3600);
    h.allocate(&mut Client::new("192.0.2.5:3", &user, &pass));
}

#[test]
fn exhausted_port_range_is_508() {
    let mut config = config();
    config.min_port = 50000;
    config.max_port = 50001;
    let mut h = Harness::with_config(config);
    h.allocate(&mut Client::alice());
    h.allocate(&mut Client::bob());
    let mut c = Client::new("192.0.2.9:1000", "alice", "alice-pw");
    let commands = h.call(&mut c, ALLOCATE, vec![udp()]);
    assert!(bind_requests(&commands).is_empty());
    assert_eq!(response_in(&commands, c.addr).error_code(), Some(508));
}

#[test]
fn malformed_requests_get_400_and_other_garbage_is_dropped() {
    let mut h = Harness::new();
    let client = addr("192.0.2.1:1");
    // A Binding request whose attribute overruns the message: 400.
    let mut bytes = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    bytes.extend_from_slice(&[5; 12]);
    bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x10, b'a', b'b', b'c', b'd']);
    let r = response_in(&h.client_sends(client, &bytes), client);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.transaction_id(), TransactionId::new([5; 12]));
    // The same as an indication, a response, or with a bad cookie: dropped and counted.
    bytes[1] = 0x11;
    assert!(h.client_sends(client, &bytes).is_empty());
    bytes[1] = 0x01;
    bytes[0] = 0x01;
    assert!(h.client_sends(client, &bytes).is_empty());
    bytes[0] = 0x00;
    bytes[4] = 0;
    assert!(h.client_sends(client, &bytes).is_empty());
    // Neither STUN nor ChannelData.
    assert!(h.client_sends(client, &[0x80, 1, 2, 3]).is_empty());
    assert!(h.client_sends(client, &[]).is_empty());
    assert_eq!(h.server.stats().malformed_dropped, 5);
    // Unknown listener ids are dropped too.
    h.server
        .handle_client_datagram(ListenerId(9), client, &bytes, h.now);
    assert!(h.drain().is_empty());
    // A method the server does not implement: 400.
    let mut other = Client::alice();
    let (_, bytes) = other.build(
        MessageClass::Request,
        Method::new(0x00F).unwrap(),
        vec![],
        false,
    );
    let r = response_in(&h.client_sends(other.addr, &bytes), other.addr);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(h.server.stats().other_requests, 1);
}

#[test]
fn requests_without_credentials_are_challenged_before_their_attributes_are_decoded() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.ask(&mut client, REFRESH, vec![]); // learn a nonce (437 is fine)
    // An XOR-PEER-ADDRESS of no address family: framed well, but undecodable.
    let bad = [0x00, 0x12, 0x00, 0x08, 0x00, 0x03, 0x12, 0x34, 1, 2, 3, 4];
    let with_bad = |mut bytes: Vec<u8>, trailer: usize| {
        bytes.truncate(bytes.len() - trailer);
        bytes.extend_from_slice(&bad);
        let length = u16::try_from(bytes.len() - 20).expect("short");
        bytes[2..4].copy_from_slice(&length.to_be_bytes());
        bytes
    };
    // Without MESSAGE-INTEGRITY: the challenge, as for any request without credentials.
    let (_, bytes) = client.build(MessageClass::Request, ALLOCATE, vec![udp()], false);
    let mut bytes = with_bad(bytes, 8);
    wire::append_fingerprint(&mut bytes);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(401));
    assert!(r.get::<Nonce>().is_some());
    // With valid credentials the attributes are decoded: 400.
    let (_, bytes) = client.build(MessageClass::Request, ALLOCATE, vec![udp()], true);
    let mut bytes = with_bad(bytes, 24 + 8);
    wire::append_integrity(&mut bytes, client.integrity, &client.key());
    wire::append_fingerprint(&mut bytes);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn copied_challenges_equal_challenges_encoded_afresh() {
    use stun_codec::TransactionId;
    use stun_codec::rfc5766::methods::CHANNEL_BIND;
    let mut h = Harness::new();
    // Methods change (a new copy is made), clients and transactions change (the copy is used).
    for (i, method) in [
        ALLOCATE,
        ALLOCATE,
        REFRESH,
        ALLOCATE,
        CHANNEL_BIND,
        CHANNEL_BIND,
    ]
    .into_iter()
    .enumerate()
    {
        let n = u8::try_from(i).unwrap();
        let client = SocketAddr::from(([192, 0, 2, 10 + n], 40_000 + u16::from(n)));
        let header = crate::wire::Header {
            class: MessageClass::Request,
            method,
            transaction_id: TransactionId::new([n + 1; 12]),
        };
        let unix_now = 1_700_000_000 + u64::from(n) * 7;
        let copied = h.server.challenge_401(header, client, unix_now).unwrap();
        let nonce = h.server.issue_nonce(client, unix_now);
        let reply = h.server.challenge_with(401, nonce);
        let fresh = h.server.encode_response(header, reply, None).unwrap();
        assert_eq!(copied, fresh, "challenge {i}");
        let response = Response::parse(copied);
        assert_eq!(response.error_code(), Some(401));
    }
    // Each challenge counted once, and once more for each made afresh here.
    assert_eq!(h.server.stats().error_401, 12);
}

#[test]
fn copied_allocate_successes_equal_successes_encoded_afresh() {
    use crate::auth::{IntegrityAlgorithm, IntegrityKey};
    use crate::server::state::{AuthContext, Reply};
    use crate::server::{FiveTuple, RelayedAddress, Transport};
    use stun_codec::TransactionId;
    let mut h = Harness::new();
    // Families change (a new copy is made), addresses, ports and lifetimes change (the copy is
    // used); the ports include 65535 and the lifetimes 0 and more than a u16.
    let cases = [
        ("192.0.2.10:40000", "198.51.100.1:50000", 600),
        ("192.0.2.11:40001", "198.51.100.1:50002", 3_600),
        ("192.0.2.255:65535", "198.51.100.200:65535", 0),
        ("[2001:db8::1]:40000", "198.51.100.1:50004", 600),
        ("[2001:db8::2]:1", "[2001:db8:1::1]:50006", 100_000),
        ("[2001:db8::3]:2", "[2001:db8:1::ff]:49152", 1),
        ("192.0.2.12:40002", "198.51.100.1:50008", 600),
    ];
    for (i, (client, relayed, seconds)) in cases.into_iter().enumerate() {
        let n = u8::try_from(i).unwrap();
        let header = crate::wire::Header {
            class: MessageClass::Request,
            method: ALLOCATE,
            transaction_id: TransactionId::new([n + 1; 12]),
        };
        let client: SocketAddr = client.parse().unwrap();
        let relayed: SocketAddr = relayed.parse().unwrap();
        let five_tuple = FiveTuple {
            client,
            server: "192.0.2.2:3478".parse().unwrap(),
            transport: Transport::Udp,
        };
        let auth = AuthContext {
            username: "alice".into(),
            key: IntegrityKey::new(IntegrityAlgorithm::HmacSha1, &[n; 16]),
        };
        let lifetime = Duration::from_secs(seconds);
        let copied = h
            .server
            .plain_allocate_success(header, relayed, lifetime, five_tuple, &auth)
            .unwrap();
        let attributes =
            h.server
                .allocate_success(&[RelayedAddress(relayed)], lifetime, five_tuple, None, None);
        let fresh = h
            .server
            .encode_response(header, Reply::Success(attributes), Some(&auth))
            .unwrap();
        assert_eq!(copied, fresh, "case {i}");
    }
}
