//! CreatePermission, ChannelBind and their expiry; the peer policy.
use std::time::Duration;

use stun_codec::rfc5766::methods::{CHANNEL_BIND, CREATE_PERMISSION, REFRESH};

use super::*;
use crate::attributes::{ChannelNumber, XorPeerAddress};
use crate::server::ChannelBinding;

fn channel_bind(number: u16, peer: SocketAddr) -> Vec<Attribute> {
    vec![
        ChannelNumber::new(number).into(),
        XorPeerAddress::new(peer).into(),
    ]
}

fn bound(commands: &[Command]) -> Vec<ChannelBinding> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ChannelBound(b) => Some(*b),
            _ => None,
        })
        .collect()
}

fn unbound(commands: &[Command]) -> Vec<ChannelBinding> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ChannelUnbound(b) => Some(*b),
            _ => None,
        })
        .collect()
}

#[test]
fn create_permission_all_or_nothing_and_443() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    // No XOR-PEER-ADDRESS: 400.
    assert_eq!(
        h.ask(&mut client, CREATE_PERMISSION, vec![]).error_code(),
        Some(400)
    );
    // An IPv6 peer on an IPv4 allocation: 443, and the IPv4 peer in the same request is not
    // installed either.
    let r = h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![
            XorPeerAddress::new(peer()).into(),
            XorPeerAddress::new(addr("[2001:db8:5::5]:1")).into(),
        ],
    );
    assert_eq!(r.error_code(), Some(443));
    assert_eq!(
        h.server.allocations().next().unwrap().permissions().count(),
        0
    );
    // Several peers at once.
    let r = h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![
            XorPeerAddress::new(peer()).into(),
            XorPeerAddress::new(addr("203.0.113.6:1")).into(),
        ],
    );
    assert!(r.is_success());
    assert!(r.verifies_with(&client.key()));
    assert_eq!(h.server.stats().permissions_created, 2);
    // Refreshing is not creating.
    h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert_eq!(h.server.stats().permissions_created, 2);
}

#[test]
fn permissions_expire_after_300_seconds_unless_refreshed() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    h.advance(Duration::from_secs(200));
    // Refresh at 200 s: now good until 500 s.
    h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    h.advance(Duration::from_secs(299));
    assert_eq!(
        sent_to(&h.peer_sends(relayed, peer(), b"hi"), client.addr).len(),
        1
    );
    h.advance(Duration::from_secs(1));
    assert!(h.peer_sends(relayed, peer(), b"hi").is_empty());
    assert_eq!(h.server.stats().peer_dropped_no_permission, 1);
    assert_eq!(
        h.server.allocations().next().unwrap().permissions().count(),
        0
    );
}

#[test]
fn channel_bind_rules() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    let other_peer = addr("203.0.113.9:9000");

    // Out of range: 400, authenticated.
    let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(0x3FFF, peer()));
    assert_eq!(r.error_code(), Some(400));
    assert!(r.verifies_with(&client.key()));
    assert_eq!(
        h.ask(&mut client, CHANNEL_BIND, channel_bind(0x8000, peer()))
            .error_code(),
        Some(400)
    );
    // Missing attributes: 400.
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        vec![ChannelNumber::new(0x4000).into()],
    );
    assert_eq!(r.error_code(), Some(400));
    // Family mismatch: 443.
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, addr("[2001:db8::9]:1")),
    );
    assert_eq!(r.error_code(), Some(443));

    // Bind 0x4000 → peer.
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    assert!(response_in(&commands, client.addr).is_success());
    let expected = ChannelBinding {
        listener: MAIN,
        client: client.addr,
        server: listener_addr(),
        relayed,
        peer: peer(),
        channel: 0x4000,
        cluster: 0,
        // The first user with an allocation.
        user: 1,
    };
    assert_eq!(bound(&commands), vec![expected]);
    // It also installed the permission.
    assert!(
        h.server
            .allocations()
            .next()
            .unwrap()
            .permissions()
            .any(|(ip, _)| ip == peer().ip())
    );
    assert_eq!(h.server.stats().channels_bound, 1);

    // Channel already bound to another peer: 400.
    let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4000, other_peer));
    assert_eq!(r.error_code(), Some(400));
    // Peer already bound to another channel: 400.
    let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4001, peer()));
    assert_eq!(r.error_code(), Some(400));
    // Same pair: refresh, no new ChannelBound.
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    assert!(response_in(&commands, client.addr).is_success());
    assert!(bound(&commands).is_empty());
    assert_eq!(h.server.stats().channels_bound, 1);
    // Another pair is fine.
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4FFF, other_peer));
    assert_eq!(bound(&commands).len(), 1);
    assert_eq!(
        h.server
            .allocations()
            .next()
            .unwrap()
            .channel_bindings()
            .count(),
        2
    );
}

#[test]
fn channels_expire_after_600_seconds_with_cooldown() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(
        &mut client,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(3600).into()],
    );
    h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    // Keep the permission alive independently, so only the channel expires.
    for _ in 0..2 {
        h.advance(Duration::from_secs(250));
        h.ask(
            &mut client,
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(peer()).into()],
        );
    }
    let commands = h.advance(Duration::from_secs(99));
    assert!(unbound(&commands).is_empty());
    let commands = h.advance(Duration::from_secs(1));
    assert_eq!(unbound(&commands).len(), 1);
    assert_eq!(unbound(&commands)[0].channel, 0x4000);
    assert_eq!(unbound(&commands)[0].relayed, relayed);
    // Peer data now comes as Data indications.
    let sent = sent_to(&h.peer_sends(relayed, peer(), b"x"), client.addr);
    assert_eq!(sent[0][0], 0x00);
    // During the cool-down the number cannot go to another peer...
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, addr("203.0.113.9:1")),
    );
    assert_eq!(r.error_code(), Some(400));
    // ...but the same pair can be bound again.
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    assert_eq!(bound(&commands).len(), 1);
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = channel.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Does ChannelData on `number` get through both ways?
fn channel_relays(h: &mut Harness, client: &Client, relayed: SocketAddr, number: u16) -> bool {
    let to_peer = h.client_sends(client.addr, &channel_data(number, b"up"));
    let to_client = sent_to(&h.peer_sends(relayed, peer(), b"down"), client.addr);
    let up = matches!(to_peer.as_slice(), [Command::SendToPeer { .. }]);
    let down = to_client == vec![channel_data(number, b"down")];
    assert_eq!(up, down, "one way only: {to_peer:?} {to_client:?}");
    up
}

/// RFC 8656 §12: a channel binding lasts its own 600 s. When the permission of its peer
/// lapses, nothing is relayed (and the fast path drops its entries), but a new permission
/// before the channel expires brings it back.
#[test]
fn permission_expiry_suspends_channels_until_a_new_permission() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(
        &mut client,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(3600).into()],
    );
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    let binding = bound(&commands)[0];
    assert!(channel_relays(&mut h, &client, relayed, 0x4000));

    let commands = h.advance(Duration::from_secs(300));
    assert_eq!(unbound(&commands), vec![binding]);
    assert!(!channel_relays(&mut h, &client, relayed, 0x4000));
    // Still bound: the number cannot go to another peer, the peer not to another number.
    let allocation = h.server.allocations().next().unwrap();
    assert_eq!(
        allocation.channel_bindings().collect::<Vec<_>>(),
        vec![binding]
    );
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, addr("203.0.113.9:1")),
    );
    assert_eq!(r.error_code(), Some(400));
    let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4001, peer()));
    assert_eq!(r.error_code(), Some(400));

    // CreatePermission brings the channel back, kernel entries included.
    h.advance(Duration::from_secs(100));
    let commands = h.call(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert!(response_in(&commands, client.addr).is_success());
    assert_eq!(bound(&commands), vec![binding]);
    assert!(channel_relays(&mut h, &client, relayed, 0x4000));
    // Refreshing that permission announces nothing new.
    let commands = h.call(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert!(bound(&commands).is_empty());
    assert_eq!(h.server.stats().channels_bound, 1);

    // At 600 s the channel itself expires: withdrawn once, then the cool-down.
    let commands = h.advance(Duration::from_secs(200));
    assert_eq!(unbound(&commands), vec![binding]);
    assert!(!channel_relays(&mut h, &client, relayed, 0x4000));
    // A new permission does not revive an expired channel.
    let commands = h.advance(Duration::from_secs(100));
    assert!(unbound(&commands).is_empty());
    let commands = h.call(
        &mut client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert!(bound(&commands).is_empty());
    // After the cool-down the number is free for anyone.
    h.advance(Duration::from_secs(200));
    let commands = h.call(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, addr("203.0.113.9:1")),
    );
    assert_eq!(bound(&commands).len(), 1);
}

#[test]
fn channel_bind_refresh_after_a_lapsed_permission_rebinds_every_channel_of_that_ip() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(
        &mut client,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(3600).into()],
    );
    let same_host = addr("203.0.113.5:7000");
    h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    h.call(&mut client, CHANNEL_BIND, channel_bind(0x4001, same_host));
    // The permission is per IP: both channels are withdrawn with it.
    let commands = h.advance(Duration::from_secs(300));
    assert_eq!(unbound(&commands).len(), 2);
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    assert!(response_in(&commands, client.addr).is_success());
    let mut rebound: Vec<u16> = bound(&commands).iter().map(|b| b.channel).collect();
    rebound.sort_unstable();
    assert_eq!(rebound, vec![0x4000, 0x4001]);
    assert!(channel_relays(&mut h, &client, relayed, 0x4000));
    // Not new bindings, a new permission.
    assert_eq!(h.server.stats().channels_bound, 2);
    assert_eq!(h.server.stats().permissions_created, 2);

    // An allocation deleted while its channel is suspended withdraws nothing twice.
    let mut bob = Client::bob();
    h.allocate(&mut bob);
    h.ask(
        &mut bob,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(3600).into()],
    );
    h.call(&mut bob, CHANNEL_BIND, channel_bind(0x4000, peer()));
    let commands = h.advance(Duration::from_secs(300));
    // Alice's permission (re-made at 300 s) lapses now too.
    assert_eq!(unbound(&commands).len(), 3);
    let commands = h.call(
        &mut bob,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(0).into()],
    );
    assert!(unbound(&commands).is_empty());
    assert_eq!(releases(&commands).len(), 1);
}

#[test]
fn allocation_expiry_unbinds_channels_and_releases() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    let commands = h.advance(Duration::from_secs(600));
    assert_eq!(unbound(&commands).len(), 1);
    assert_eq!(releases(&commands), vec![relayed]);
    // Unbinds come before the socket goes.
    let unbind_at = commands
        .iter()
        .position(|c| matches!(c, Command::ChannelUnbound(_)));
    let release_at = commands
        .iter()
        .position(|c| matches!(c, Command::ReleaseRelay { .. }));
    assert!(unbind_at < release_at);
    assert_eq!(h.server.allocation_count(), 0);
}

/// The default deny list (loopback, the relay's own listeners) answers 403 through the core.
#[test]
fn peer_policy_denial_is_403() {
    let policy = PeerPolicy::open(vec![listener_addr()]);
    assert!(
        policy
            .permits_ip("main", "127.0.0.1".parse().unwrap())
            .is_err()
    );
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    let loopback = addr("127.0.0.1:9");
    let r = h.ask(
        &mut client,
        CREATE_PERMISSION,
        vec![
            XorPeerAddress::new(peer()).into(),
            XorPeerAddress::new(loopback).into(),
        ],
    );
    assert_eq!(r.error_code(), Some(403));
    assert!(r.verifies_with(&client.key()));
    assert_eq!(
        h.server.allocations().next().unwrap().permissions().count(),
        0
    );
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, listener_addr()),
    );
    assert_eq!(r.error_code(), Some(403));
    assert_eq!(h.server.stats().peer_denied, 2);
    assert_eq!(h.server.stats().error_403, 2);
}

/// A new policy (a reload, a route or endpoint change) ends at once what it refuses: the
/// permission to a peer no route reaches, with its channel, and a channel to a port the routes
/// leave out; their kernel entries are withdrawn, the rest stays, and data to and from the
/// revoked peers is dropped from then on.
#[test]
fn a_new_policy_ends_the_permissions_and_channels_it_refuses() {
    use crate::policy::PeerPolicy;

    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    let kept = addr("203.0.113.5:6000");
    let other_port = addr("203.0.113.5:7000");
    let gone = addr("198.18.44.7:6000");
    for (number, peer) in [(0x4000, kept), (0x4001, other_port), (0x4002, gone)] {
        let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(number, peer));
        assert!(r.is_success(), "{r:?}");
    }
    let version = h.server.state_version();
    let ep = |s: &str| s.parse().expect("endpoint");
    let revoked = h.server.set_policy(
        PeerPolicy::open(vec![listener_addr()]).route("main", vec![ep("203.0.113.0/24:6000")]),
    );
    assert_eq!((revoked.permissions, revoked.channels), (1, 2));
    let commands = h.drain();
    let mut withdrawn: Vec<(u16, SocketAddr)> = unbound(&commands)
        .iter()
        .map(|b| (b.channel, b.peer))
        .collect();
    withdrawn.sort_unstable();
    assert_eq!(withdrawn, vec![(0x4001, other_port), (0x4002, gone)]);
    let stats = h.server.stats();
    assert_eq!((stats.permissions_revoked, stats.channels_revoked), (1, 2));
    assert_ne!(h.server.state_version(), version, "the state changed");

    // The kept channel relays; the revoked ones and the revoked peer do not.
    let data = |number: u16| {
        let mut out = number.to_be_bytes().to_vec();
        out.extend_from_slice(&3u16.to_be_bytes());
        out.extend_from_slice(b"abc");
        out
    };
    assert_eq!(h.client_sends(client.addr, &data(0x4000)).len(), 1);
    assert!(h.client_sends(client.addr, &data(0x4001)).is_empty());
    assert!(h.client_sends(client.addr, &data(0x4002)).is_empty());
    assert!(
        sent_to(&h.peer_sends(relayed, gone, b"hi"), client.addr).is_empty(),
        "no permission for the revoked peer"
    );
    assert_eq!(
        sent_to(&h.peer_sends(relayed, kept, b"hi"), client.addr).len(),
        1
    );
    // Setting the same policy again revokes nothing more.
    let again = h.server.set_policy(
        PeerPolicy::open(vec![listener_addr()]).route("main", vec![ep("203.0.113.0/24:6000")]),
    );
    assert_eq!((again.permissions, again.channels), (0, 0));
}
