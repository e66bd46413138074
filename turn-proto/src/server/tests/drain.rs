//! Draining: new Allocates are refused with 508, existing allocations carry on.
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};

use super::*;
use crate::attributes::{ChannelNumber, Lifetime, XorPeerAddress};

#[test]
fn draining_refuses_new_allocations_and_keeps_existing_ones() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    let relayed = h.allocate(&mut alice);

    // Carol's Allocate is sent before the drain; its retransmission comes after.
    let mut carol = Client::new("192.0.2.3:40000", "alice", "alice-pw");
    assert_eq!(h.ask(&mut carol, REFRESH, vec![]).error_code(), Some(437));
    let carol_allocate = carol.request(ALLOCATE, vec![udp()]);
    let commands = h.client_sends(carol.addr, &carol_allocate);
    let more = h.bind_all(&commands);
    assert!(response_in(&more, carol.addr).is_success());

    assert!(!h.server.is_draining());
    h.server.set_draining(true);
    assert!(h.server.is_draining());

    // A new Allocate: 508 at once, no socket bound.
    let mut bob = Client::bob();
    let commands = h.call(&mut bob, ALLOCATE, vec![udp()]);
    assert!(bind_requests(&commands).is_empty());
    assert_eq!(response_in(&commands, bob.addr).error_code(), Some(508));
    assert_eq!(h.server.stats().drain_rejections, 1);
    assert_eq!(h.server.stats().error_count(508), 1);
    assert_eq!(h.server.allocation_count(), 2);

    // The retransmission of an Allocate made before the drain still gets its success.
    let commands = h.client_sends(carol.addr, &carol_allocate);
    let response = response_in(&commands, carol.addr);
    assert!(response.is_success(), "{response:?}");

    // Alice refreshes, binds a channel and relays as before.
    assert!(h.ask(&mut alice, REFRESH, vec![]).is_success());
    let peer = peer();
    let r = h.ask(
        &mut alice,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4000).into(),
            XorPeerAddress::new(peer).into(),
        ],
    );
    assert!(r.is_success(), "{r:?}");
    let commands = h.client_sends(alice.addr, &[0x40, 0x00, 0x00, 0x02, 7, 7]);
    assert!(
        commands.iter().any(|c| matches!(
            c,
            Command::SendToPeer { relayed: from, peer: to, data, .. }
                if *from == relayed && *to == peer && data == &[7, 7]
        )),
        "{commands:?}"
    );
    let commands = h.peer_sends(relayed, peer, &[1, 2, 3]);
    assert_eq!(sent_to(&commands, alice.addr).len(), 1);

    // Deleting works, and the count goes down to what the agent waits for.
    let r = h.ask(&mut alice, REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert!(r.is_success());
    assert_eq!(h.server.allocation_count(), 1);

    // Draining can be called off.
    h.server.set_draining(false);
    h.allocate(&mut bob);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn wire_bytes_count_whole_datagrams() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    let relayed = h.allocate(&mut alice);
    let peer = peer();
    let r = h.ask(
        &mut alice,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4001).into(),
            XorPeerAddress::new(peer).into(),
        ],
    );
    assert!(r.is_success());
    // 3 data bytes, padded to 4 in a 8-byte ChannelData message.
    h.client_sends(alice.addr, &[0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]);
    let commands = h.peer_sends(relayed, peer, &[9; 10]);
    let to_client = sent_to(&commands, alice.addr);
    assert_eq!(to_client.len(), 1);
    let stats = h.server.stats();
    assert_eq!(
        (
            stats.relayed_to_peer_bytes,
            stats.relayed_from_client_wire_bytes
        ),
        (3, 8)
    );
    assert_eq!(
        (
            stats.relayed_to_client_bytes,
            stats.relayed_to_client_wire_bytes
        ),
        (10, to_client[0].len() as u64)
    );
}
