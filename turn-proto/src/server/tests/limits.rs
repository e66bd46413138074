//! Bounds on what clients can make the server hold: timer entries, channels and permissions
//! per allocation, reservations in the quotas, the size of 420 responses and of the cache.
use std::time::Duration;

use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};

use super::*;
use crate::attributes::{
    ChannelNumber, EvenPort, Lifetime, ReservationToken, UnknownAttributes, XorPeerAddress,
};

/// `n` distinct peer IPs none of which the default deny list refuses.
fn peer_ips(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let [_, _, hi, lo] = u32::try_from(i).unwrap().to_be_bytes();
            SocketAddr::new([10, 1, hi, lo].into(), 5000)
        })
        .collect()
}

fn permit_all(h: &mut Harness, client: &mut Client, peers: &[SocketAddr]) -> Response {
    let attributes = peers
        .iter()
        .map(|p| XorPeerAddress::new(*p).into())
        .collect();
    h.ask(client, CREATE_PERMISSION, attributes)
}

fn channel_bind(number: u16, peer: SocketAddr) -> Vec<Attribute> {
    vec![
        ChannelNumber::new(number).into(),
        XorPeerAddress::new(peer).into(),
    ]
}

fn delete(h: &mut Harness, client: &mut Client) -> Vec<Command> {
    let commands = h.call(client, REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert!(response_in(&commands, client.addr).is_success());
    commands
}

#[test]
fn timer_entries_follow_live_state_not_churn() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    assert_eq!(h.server.timer_count(), 1);
    // Lengthening and shortening the lifetime moves the one entry.
    h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(3600).into()]);
    h.ask(&mut client, REFRESH, vec![]);
    assert_eq!(h.server.timer_count(), 1);
    let peers = peer_ips(100);
    assert!(permit_all(&mut h, &mut client, &peers).is_success());
    assert!(permit_all(&mut h, &mut client, &peers).is_success());
    h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4000, peers[0]));
    assert_eq!(h.server.timer_count(), 1 + 100 + 1);
    delete(&mut h, &mut client);
    assert_eq!(h.server.timer_count(), 0);
    assert_eq!(h.server.poll_timeout(), None);

    // The attack of the review: long allocations full of permissions, deleted at once, over
    // and over. Nothing of them stays behind.
    let peers = peer_ips(1024);
    for round in 0..20 {
        let (r, _) = h.allocate_with(
            &mut client,
            vec![
                udp(),
                Lifetime::from_u32(3600).into(),
                EvenPort::new(round % 2 == 0).into(),
            ],
        );
        assert!(r.is_success());
        assert!(permit_all(&mut h, &mut client, &peers).is_success());
        h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4000, peers[1]));
        let reservations = usize::from(round % 2 == 0);
        assert_eq!(h.server.timer_count(), 1 + 1024 + 1 + reservations);
        delete(&mut h, &mut client);
        assert_eq!(h.server.timer_count(), 0, "round {round}");
    }
    assert_eq!(h.server.poll_timeout(), None);
    // Expiry cleans up as well.
    h.allocate(&mut client);
    permit_all(&mut h, &mut client, &peers[..10]);
    h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4000, peers[0]));
    h.advance(Duration::from_secs(600));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.timer_count(), 0);
}

#[test]
fn channels_per_allocation_are_capped() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    // One peer IP (one permission), many ports.
    let peer_port = |i: u16| SocketAddr::new(peer().ip(), 10_000 + i);
    for i in 0..1024 {
        let r = h.ask(
            &mut client,
            CHANNEL_BIND,
            channel_bind(0x4000 + i, peer_port(i)),
        );
        assert!(r.is_success(), "channel {i}: {r:?}");
    }
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000 + 1024, peer_port(1024)),
    );
    assert_eq!(r.error_code(), Some(508));
    assert!(r.verifies_with(&client.key()));
    // Refreshing a binding that exists is still fine.
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        channel_bind(0x4000, peer_port(0)),
    );
    assert!(r.is_success());
    assert_eq!(
        h.server
            .allocations()
            .next()
            .unwrap()
            .channel_bindings()
            .count(),
        1024
    );
    assert_eq!(h.server.stats().channels_bound, 1024);
}

#[test]
fn channel_bind_permissions_count_against_the_permission_cap() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    let peers = peer_ips(1024);
    assert!(permit_all(&mut h, &mut client, &peers).is_success());
    // A ChannelBind to a new IP would be permission 1025: 508, and nothing changes.
    let commands = h.call(&mut client, CHANNEL_BIND, channel_bind(0x4000, peer()));
    assert_eq!(response_in(&commands, client.addr).error_code(), Some(508));
    assert!(
        !commands
            .iter()
            .any(|c| matches!(c, Command::ChannelBound(_)))
    );
    let allocation = h.server.allocations().next().unwrap();
    assert_eq!(allocation.permissions().count(), 1024);
    assert_eq!(allocation.channel_bindings().count(), 0);
    // To an IP that has its permission already: fine.
    let r = h.ask(&mut client, CHANNEL_BIND, channel_bind(0x4000, peers[7]));
    assert!(r.is_success());

    // Permissions made by ChannelBind count for CreatePermission too.
    let mut bob = Client::bob();
    h.allocate(&mut bob);
    for (i, peer) in peers[..10].iter().enumerate() {
        let number = 0x4000 + u16::try_from(i).unwrap();
        assert!(
            h.ask(&mut bob, CHANNEL_BIND, channel_bind(number, *peer))
                .is_success()
        );
    }
    let r = permit_all(&mut h, &mut bob, &peer_ips(1025)[10..]);
    assert_eq!(r.error_code(), Some(508));
    assert!(permit_all(&mut h, &mut bob, &peer_ips(1024)[10..]).is_success());
}

/// Allocates with EVEN-PORT and the R bit; returns the relayed port, the reserved one and the
/// token.
fn allocate_reserving(h: &mut Harness, client: &mut Client) -> (SocketAddr, SocketAddr, u64) {
    let (r, commands) = h.allocate_with(client, vec![udp(), EvenPort::new(true).into()]);
    assert!(r.is_success(), "{r:?}");
    let binds = bind_requests(&commands);
    assert_eq!(binds.len(), 2);
    let token = r.get::<ReservationToken>().unwrap().token();
    (binds[0], binds[1], token)
}

#[test]
fn deleting_an_allocation_releases_its_reservation() {
    let mut h = Harness::new();
    let mut bob = Client::bob();
    let (relayed, reserved, token) = allocate_reserving(&mut h, &mut bob);
    assert_eq!(h.server.reservation_count(), 1);
    let commands = delete(&mut h, &mut bob);
    let mut released = releases(&commands);
    released.sort();
    assert_eq!(released, vec![relayed, reserved]);
    assert_eq!(h.server.reservation_count(), 0);
    // The token is gone, and nothing is released a second time when it would have expired.
    let mut carol = Client::new("192.0.2.3:40000", "bob", "bob-pw");
    let r = h.ask(
        &mut carol,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert_eq!(r.error_code(), Some(508));
    assert!(releases(&h.advance(Duration::from_secs(30))).is_empty());
    // The reserved port can be handed out again.
    assert_eq!(h.server.timer_count(), 0);
}

#[test]
fn an_expiring_allocation_releases_its_reservation() {
    let mut config = config();
    config.default_lifetime = Duration::from_secs(10);
    config.max_lifetime = Duration::from_secs(10);
    let mut h = Harness::with_config(config);
    let mut bob = Client::bob();
    let (relayed, reserved, _) = allocate_reserving(&mut h, &mut bob);
    assert!(h.advance(Duration::from_secs(9)).is_empty());
    let mut released = releases(&h.advance(Duration::from_secs(1)));
    released.sort();
    assert_eq!(released, vec![relayed, reserved]);
    assert_eq!(h.server.reservation_count(), 0);
    assert!(h.advance(Duration::from_secs(30)).is_empty());
}

#[test]
fn a_claimed_reservation_outlives_the_allocation_that_made_it() {
    let mut h = Harness::new();
    let mut bob = Client::bob();
    let (relayed, reserved, token) = allocate_reserving(&mut h, &mut bob);
    let mut carol = Client::new("192.0.2.3:40000", "alice", "alice-pw");
    let r = h.ask(
        &mut carol,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert_eq!(r.relayed(), vec![reserved]);
    assert_eq!(releases(&delete(&mut h, &mut bob)), vec![relayed]);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(releases(&delete(&mut h, &mut carol)), vec![reserved]);
}

#[test]
fn reservations_count_toward_the_quotas() {
    // Per user: a reservation takes a slot like an allocation.
    let mut config = config();
    config.max_allocations_per_user = 2;
    let mut h = Harness::with_config(config);
    let mut bob = Client::bob();
    let (_, reserved, token) = allocate_reserving(&mut h, &mut bob);
    let mut bob2 = Client::new("192.0.2.2:40001", "bob", "bob-pw");
    assert_eq!(
        h.ask(&mut bob2, ALLOCATE, vec![udp()]).error_code(),
        Some(486)
    );
    // Claiming his own token turns the reservation into an allocation: no extra slot.
    let r = h.ask(
        &mut bob2,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert_eq!(r.relayed(), vec![reserved]);
    let mut bob3 = Client::new("192.0.2.2:40002", "bob", "bob-pw");
    assert_eq!(
        h.ask(&mut bob3, ALLOCATE, vec![udp()]).error_code(),
        Some(486)
    );
    delete(&mut h, &mut bob2);
    h.allocate(&mut bob3);

    // With room for one only, EVEN-PORT with R (two sockets) is refused up front.
    let mut config = super::config();
    config.max_allocations_per_user = 1;
    let mut h = Harness::with_config(config);
    let mut bob = Client::bob();
    let commands = h.call(&mut bob, ALLOCATE, vec![udp(), EvenPort::new(true).into()]);
    assert!(bind_requests(&commands).is_empty());
    assert_eq!(response_in(&commands, bob.addr).error_code(), Some(486));
    // Another user at the quota cannot take bob's reservation either.
    let mut config = super::config();
    config.max_allocations_per_user = 2;
    let mut h = Harness::with_config(config);
    let (_, _, token) = allocate_reserving(&mut h, &mut Client::bob());
    let mut alice = Client::alice();
    h.allocate(&mut alice);
    h.allocate(&mut Client::new("192.0.2.1:40001", "alice", "alice-pw"));
    let mut alice3 = Client::new("192.0.2.1:40002", "alice", "alice-pw");
    let r = h.ask(
        &mut alice3,
        ALLOCATE,
        vec![udp(), ReservationToken::new(token).into()],
    );
    assert_eq!(r.error_code(), Some(486));
    assert_eq!(h.server.reservation_count(), 1);

    // In all: the reservation holds one of the server's slots until it goes.
    let mut config = super::config();
    config.max_allocations = 2;
    let mut h = Harness::with_config(config);
    allocate_reserving(&mut h, &mut Client::bob());
    let mut alice = Client::alice();
    assert_eq!(
        h.ask(&mut alice, ALLOCATE, vec![udp()]).error_code(),
        Some(508)
    );
    h.advance(Duration::from_secs(30));
    assert_eq!(h.server.reservation_count(), 0);
    h.allocate(&mut alice);
}

/// A signed Allocate carrying `unknown` comprehension-required attribute types (empty values).
fn allocate_with_unknown(client: &mut Client, unknown: &[u16]) -> Vec<u8> {
    use bytecodec::EncodeExt as _;
    use stun_codec::MessageEncoder;

    use crate::attributes::{Nonce, Realm, Username};
    let tid = client.next_tid();
    let mut message = stun_codec::Message::<Attribute>::new(MessageClass::Request, ALLOCATE, tid);
    message.add_attribute(udp());
    let mut bytes = MessageEncoder::<Attribute>::new()
        .encode_into_bytes(message)
        .unwrap();
    for kind in unknown {
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
    }
    let mut tail = stun_codec::Message::<Attribute>::new(MessageClass::Request, ALLOCATE, tid);
    tail.add_attribute(Username::new(client.username.clone()).unwrap());
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
    bytes
}

#[test]
fn unknown_attributes_are_listed_sixteen_at_most() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.call(&mut client, REFRESH, vec![]); // learn a nonce
    // 40 distinct types, each twice: the first 16 distinct ones, in order.
    let kinds: Vec<u16> = (0..40u16).flat_map(|i| [0x7A00 + i, 0x7A00 + i]).collect();
    let bytes = allocate_with_unknown(&mut client, &kinds);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(420));
    assert!(r.verifies_with(&client.key()));
    let listed: Vec<u16> = r
        .get::<UnknownAttributes>()
        .unwrap()
        .unknowns()
        .iter()
        .map(|t| t.as_u16())
        .collect();
    assert_eq!(listed, (0..16u16).map(|i| 0x7A00 + i).collect::<Vec<_>>());

    // The hostile case: a ~64 KB request of ~16k unknown attributes gets a small answer, and
    // the cache holds only that.
    let kinds: Vec<u16> = (0..15_000u16).map(|i| 0x4000 + (i % 0x3000)).collect();
    let bytes = allocate_with_unknown(&mut client, &kinds);
    assert!(bytes.len() > 60_000);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(r.get::<UnknownAttributes>().unwrap().unknowns().len(), 16);
    assert!(r.bytes.len() < 200, "{} bytes", r.bytes.len());
    assert!(h.server.tx_cache_bytes() < 1000);
    // Binding requests (unauthenticated) are bounded the same way.
    let mut binding = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    binding.extend_from_slice(client.next_tid().as_bytes());
    for kind in &kinds {
        binding.extend_from_slice(&kind.to_be_bytes());
        binding.extend_from_slice(&[0, 0]);
    }
    wire::append_fingerprint(&mut binding);
    let r = response_in(&h.client_sends(client.addr, &binding), client.addr);
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(r.get::<UnknownAttributes>().unwrap().unknowns().len(), 16);
}

/// One client address holds at most `max_allocations_per_ip` allocations, whatever users it
/// authenticates as; a freed slot is usable again, other addresses are not affected, and an
/// adopted state counts too.
#[test]
fn allocations_per_client_address_are_capped() {
    let mut config = config();
    config.max_allocations_per_ip = 3;
    let mut h = Harness::with_config(config);
    let mut clients: Vec<Client> = (0..4)
        .map(|i| {
            let (user, password) = if i % 2 == 0 {
                ("alice", "alice-pw")
            } else {
                ("bob", "bob-pw")
            };
            Client::new(&format!("203.0.113.50:{}", 41_000 + i), user, password)
        })
        .collect();
    for client in &mut clients[..3] {
        h.allocate(client);
    }
    let (r, _) = h.allocate_with(&mut clients[3], vec![udp()]);
    assert_eq!(r.error_code(), Some(486), "{r:?}");
    assert_eq!(h.server.stats().per_ip_rejections, 1);
    let mut elsewhere = Client::new("203.0.113.51:41000", "alice", "alice-pw");
    h.allocate(&mut elsewhere);

    delete(&mut h, &mut clients[0]);
    h.allocate(&mut clients[3]);

    // A restarted server that adopts the state counts the adopted allocations.
    let snapshot = h.server.snapshot(h.now);
    let mut config = super::config();
    config.max_allocations_per_ip = 3;
    let mut n = Harness::with_config(config);
    n.now = h.now;
    let outcome = n.server.restore(&snapshot, n.now);
    assert_eq!(outcome.allocations, 4);
    let mut fourth = Client::new("203.0.113.50:42000", "alice", "alice-pw");
    let (r, _) = n.allocate_with(&mut fourth, vec![udp()]);
    assert_eq!(r.error_code(), Some(486), "{r:?}");
}
