//! The data paths: Send and Data indications, ChannelData both ways.
use std::time::Duration;

use stun_codec::rfc5766::methods::{CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

use super::*;
use crate::attributes::{ChannelNumber, Data, DontFragment, XorPeerAddress};

fn permit(h: &mut Harness, client: &mut Client, peer: SocketAddr) {
    let r = h.ask(
        client,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer).into()],
    );
    assert!(r.is_success());
}

fn send_indication(client: &mut Client, peer: SocketAddr, data: &[u8], df: bool) -> Vec<u8> {
    let mut attributes: Vec<Attribute> = vec![
        XorPeerAddress::new(peer).into(),
        Data::new(data.to_vec()).unwrap().into(),
    ];
    if df {
        attributes.push(DontFragment.into());
    }
    client.indication(SEND, attributes)
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = channel.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn send_indication_needs_a_permission_and_carries_df() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    // No allocation: dropped.
    let bytes = send_indication(&mut client, peer(), b"x", false);
    assert!(h.client_sends(client.addr, &bytes).is_empty());
    assert_eq!(h.server.stats().unknown_client_dropped, 1);

    let relayed = h.allocate(&mut client);
    let bytes = send_indication(&mut client, peer(), b"hello", false);
    assert!(h.client_sends(client.addr, &bytes).is_empty());
    assert_eq!(h.server.stats().client_dropped_no_permission, 1);

    permit(&mut h, &mut client, peer());
    let bytes = send_indication(&mut client, peer(), b"hello", true);
    assert_eq!(
        h.client_sends(client.addr, &bytes),
        vec![Command::SendToPeer {
            relayed,
            peer: peer(),
            data: b"hello".to_vec(),
            dont_fragment: true,
        }]
    );
    let bytes = send_indication(&mut client, peer(), b"again", false);
    assert!(matches!(
        h.client_sends(client.addr, &bytes)[0],
        Command::SendToPeer {
            dont_fragment: false,
            ..
        }
    ));
    // Permissions are per IP: another port of the same host is fine.
    let bytes = send_indication(&mut client, addr("203.0.113.5:1"), b"p", false);
    assert_eq!(h.client_sends(client.addr, &bytes).len(), 1);
    assert_eq!(h.server.stats().relayed_to_peer_packets, 3);
    assert_eq!(h.server.stats().relayed_to_peer_bytes, 11);
    assert_eq!(h.server.stats().send_indications, 5);
    // Without DATA: dropped as malformed.
    let bytes = client.indication(SEND, vec![XorPeerAddress::new(peer()).into()]);
    assert!(h.client_sends(client.addr, &bytes).is_empty());
    assert_eq!(h.server.stats().malformed_dropped, 1);
}

#[test]
fn peer_data_becomes_data_indication_without_channel() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    // No permission: dropped.
    assert!(h.peer_sends(relayed, peer(), b"early").is_empty());
    assert_eq!(h.server.stats().peer_dropped_no_permission, 1);
    // Unknown relayed address: dropped.
    assert!(
        h.peer_sends(addr("198.51.100.1:1"), peer(), b"?")
            .is_empty()
    );
    assert_eq!(h.server.stats().peer_dropped_no_allocation, 1);

    permit(&mut h, &mut client, peer());
    let commands = h.peer_sends(relayed, peer(), b"payload");
    let sent = sent_to(&commands, client.addr);
    assert_eq!(sent.len(), 1);
    let message = decode_message(&sent[0]);
    assert_eq!(message.class(), stun_codec::MessageClass::Indication);
    assert_eq!(message.method(), DATA);
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        peer()
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), b"payload");
    assert!(matches!(
        commands[0],
        Command::SendToClient { listener: MAIN, .. }
    ));
    assert_eq!(h.server.stats().relayed_to_client_packets, 1);
    assert_eq!(h.server.stats().relayed_to_client_bytes, 7);
}

#[test]
fn channel_data_both_ways() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4001).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert!(r.is_success());

    // Client → peer.
    let commands = h.client_sends(client.addr, &channel_data(0x4001, b"abc"));
    assert_eq!(
        commands,
        vec![Command::SendToPeer {
            relayed,
            peer: peer(),
            data: b"abc".to_vec(),
            dont_fragment: false,
        }]
    );
    // With padding.
    let mut padded = channel_data(0x4001, b"abc");
    padded.push(0);
    assert_eq!(h.client_sends(client.addr, &padded).len(), 1);
    // Length says more than there is: dropped.
    let mut short = channel_data(0x4001, b"abc");
    short[3] = 9;
    assert!(h.client_sends(client.addr, &short).is_empty());
    assert_eq!(h.server.stats().malformed_dropped, 1);
    // Unbound channel: dropped.
    assert!(
        h.client_sends(client.addr, &channel_data(0x4002, b"abc"))
            .is_empty()
    );
    assert_eq!(h.server.stats().unbound_channel_dropped, 1);
    // Another 5-tuple: no allocation.
    assert!(
        h.client_sends(addr("192.0.2.99:1"), &channel_data(0x4001, b"abc"))
            .is_empty()
    );
    assert_eq!(h.server.stats().unknown_client_dropped, 1);

    // Peer → client: ChannelData, unpadded.
    let commands = h.peer_sends(relayed, peer(), b"hello");
    assert_eq!(
        sent_to(&commands, client.addr),
        vec![vec![0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']]
    );
    // Another port of the permitted peer has no channel: Data indication.
    let sent = sent_to(
        &h.peer_sends(relayed, addr("203.0.113.5:1"), b"x"),
        client.addr,
    );
    assert_eq!(sent[0][0], 0x00);
    // Empty payloads are fine.
    assert_eq!(
        h.client_sends(client.addr, &channel_data(0x4001, b""))
            .len(),
        1
    );
}

#[test]
fn channel_data_does_not_refresh_permissions_or_channels() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    h.ask(
        &mut client,
        REFRESH,
        vec![crate::attributes::Lifetime::from_u32(3600).into()],
    );
    h.ask(
        &mut client,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4001).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    for _ in 0..29 {
        h.advance(Duration::from_secs(10));
        assert_eq!(
            h.client_sends(client.addr, &channel_data(0x4001, b"k"))
                .len(),
            1
        );
        assert_eq!(h.peer_sends(relayed, peer(), b"k").len(), 1);
    }
    // 300 s after the bind the permission is gone regardless of the traffic: the channel is
    // withdrawn from the fast path and relays nothing (it stays bound until its own expiry).
    let commands = h.advance(Duration::from_secs(10));
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::ChannelUnbound(_)))
    );
    assert!(
        h.client_sends(client.addr, &channel_data(0x4001, b"k"))
            .is_empty()
    );
    assert!(h.peer_sends(relayed, peer(), b"k").is_empty());
}

#[test]
fn oversized_peer_datagrams_are_dropped_not_panicking() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    permit(&mut h, &mut client, peer());
    let big = vec![7u8; 70_000];
    assert!(h.peer_sends(relayed, peer(), &big).is_empty());
    assert_eq!(h.server.stats().peer_dropped_oversized, 1);
    let fits = vec![7u8; 65_000];
    assert_eq!(h.peer_sends(relayed, peer(), &fits).len(), 1);
}

/// Send indications with attributes beyond the usual three take the decoder path and behave
/// the same; those with unknown comprehension-required attributes are dropped.
#[test]
fn send_indications_with_other_attributes_are_decoded() {
    use crate::attributes::Software;
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    permit(&mut h, &mut client, peer());
    let bytes = client.indication(
        SEND,
        vec![
            Software::new("client".to_owned()).unwrap().into(),
            XorPeerAddress::new(peer()).into(),
            Data::new(b"decoded".to_vec()).unwrap().into(),
            DontFragment.into(),
        ],
    );
    assert_eq!(
        h.client_sends(client.addr, &bytes),
        vec![Command::SendToPeer {
            relayed,
            peer: peer(),
            data: b"decoded".to_vec(),
            dont_fragment: true,
        }]
    );
    // The same payload with an unknown comprehension-required attribute: dropped.
    let mut bytes = client.indication(
        SEND,
        vec![
            XorPeerAddress::new(peer()).into(),
            Data::new(b"x".to_vec()).unwrap().into(),
        ],
    );
    // Drop the FINGERPRINT, add the unknown attribute, fix the length.
    bytes.truncate(bytes.len() - 8);
    bytes.extend_from_slice(&[0x7F, 0x01, 0, 0]);
    let length = u16::try_from(bytes.len() - 20).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);
    assert!(h.client_sends(client.addr, &bytes).is_empty());
    assert_eq!(h.server.stats().malformed_dropped, 1);
    assert_eq!(h.server.stats().relayed_to_peer_packets, 1);
}

/// `(name, to_peer packets, to_peer bytes, to_client packets, to_client bytes)` per slot.
fn cluster_counts(h: &Harness) -> Vec<(String, u64, u64, u64, u64)> {
    h.server
        .stats()
        .clusters
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.to_peer_packets,
                c.to_peer_bytes,
                c.to_client_packets,
                c.to_client_bytes,
            )
        })
        .collect()
}

#[test]
fn relayed_traffic_is_counted_per_cluster() {
    let ep = |s: &str| s.parse::<crate::policy::Endpoint>().unwrap();
    // Two clusters routed from "main" (the first covering a peer wins), one from a listener
    // this server does not have.
    let policy = PeerPolicy::open(vec![listener_addr()])
        .route_cluster("main", "rtp", vec![ep("203.0.113.0/24:6000")])
        .route_cluster("main", "media", vec![ep("203.0.113.0/24")])
        .route_cluster("edge", "other", vec![ep("10.0.0.0/8")]);
    let mut h = Harness::with_policy(config(), credentials(), policy);
    let row = |name: &str, counts: [u64; 4]| {
        let [a, b, c, d] = counts;
        (name.to_owned(), a, b, c, d)
    };
    assert_eq!(
        cluster_counts(&h),
        vec![
            row("", [0; 4]),
            row("rtp", [0; 4]),
            row("media", [0; 4]),
            row("other", [0; 4]),
        ]
    );

    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    // A channel to a peer of "rtp", resolved when bound.
    let commands = h.call(
        &mut client,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4001).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert!(response_in(&commands, client.addr).is_success());
    let bound: Vec<usize> = commands
        .iter()
        .filter_map(|c| match c {
            Command::ChannelBound(b) => Some(b.cluster),
            _ => None,
        })
        .collect();
    assert_eq!(bound, vec![1]);
    assert_eq!(
        h.client_sends(client.addr, &channel_data(0x4001, b"abcd"))
            .len(),
        1
    );
    assert_eq!(
        sent_to(&h.peer_sends(relayed, peer(), b"xy"), client.addr).len(),
        1
    );
    // Send and Data indications to and from another port: "media".
    let other_port = addr("203.0.113.5:7000");
    let bytes = send_indication(&mut client, other_port, b"hello", false);
    assert_eq!(h.client_sends(client.addr, &bytes).len(), 1);
    assert_eq!(
        sent_to(&h.peer_sends(relayed, other_port, b"abc"), client.addr).len(),
        1
    );
    assert_eq!(
        cluster_counts(&h),
        vec![
            row("", [0; 4]),
            row("rtp", [1, 4, 1, 2]),
            row("media", [1, 5, 1, 3]),
            row("other", [0; 4]),
        ]
    );

    // A reload drops the routes of "main" and names a new cluster: the channel keeps counting
    // for the cluster it was bound under, indications count for no cluster, and the old
    // clusters keep their counters.
    h.server.set_policy(
        PeerPolicy::open(vec![listener_addr()])
            .route_cluster("edge", "other", vec![ep("10.0.0.0/8")])
            .route_cluster("edge", "new", vec![ep("10.0.0.0/8")]),
    );
    assert_eq!(
        h.client_sends(client.addr, &channel_data(0x4001, b"abcdef"))
            .len(),
        1
    );
    let bytes = send_indication(&mut client, other_port, b"hi", false);
    assert_eq!(h.client_sends(client.addr, &bytes).len(), 1);
    assert_eq!(
        sent_to(&h.peer_sends(relayed, other_port, b"z"), client.addr).len(),
        1
    );
    assert_eq!(
        cluster_counts(&h),
        vec![
            row("", [1, 2, 1, 1]),
            row("rtp", [2, 10, 1, 2]),
            row("media", [1, 5, 1, 3]),
            row("other", [0; 4]),
            row("new", [0; 4]),
        ]
    );
    // Every relayed datagram counted for exactly one cluster.
    let stats = h.server.stats();
    let clusters = &stats.clusters;
    assert_eq!(
        clusters.iter().map(|c| c.to_peer_packets).sum::<u64>(),
        stats.relayed_to_peer_packets
    );
    assert_eq!(
        clusters.iter().map(|c| c.to_peer_bytes).sum::<u64>(),
        stats.relayed_to_peer_bytes
    );
    assert_eq!(
        clusters.iter().map(|c| c.to_client_packets).sum::<u64>(),
        stats.relayed_to_client_packets
    );
    assert_eq!(
        clusters.iter().map(|c| c.to_client_bytes).sum::<u64>(),
        stats.relayed_to_client_bytes
    );
}

/// Per-user usage: each user id (a TURN REST username's id part) counts its allocations and
/// the data relayed each way, by Send/Data indications, ChannelData, and what the I/O layer
/// relayed on its bindings; allocations now follow the allocations, totals survive a snapshot
/// and restore.
#[test]
fn usage_is_counted_per_user_id() {
    let mut h = Harness::new();
    let expiry = START_UNIX + 3600;
    let rest = |at: &str, id: &str| {
        let (username, password) = cred::rest_credentials(REST_SECRET, id, expiry);
        Client::new(at, &username, &password)
    };
    // Two credentials of carol (two clients), one of dave.
    let mut carol = rest("192.0.2.1:40000", "carol");
    let mut carol2 = rest("192.0.2.1:40001", "carol");
    let mut dave = rest("192.0.2.3:40000", "dave");
    let relayed = h.allocate(&mut carol);
    h.allocate(&mut carol2);
    let dave_relayed = h.allocate(&mut dave);
    permit(&mut h, &mut carol, peer());
    permit(&mut h, &mut dave, peer());
    // carol: a Send of 5 bytes, a ChannelData of 7; the peer answers 11 (Data indication)
    // then 13 (ChannelData).
    let bytes = send_indication(&mut carol, peer(), b"hello", false);
    h.client_sends(carol.addr, &bytes);
    h.peer_sends(relayed, peer(), &[0; 11]);
    let r = h.ask(
        &mut carol,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4000).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert!(r.is_success());
    h.client_sends(carol.addr, &channel_data(0x4000, &[1; 7]));
    h.peer_sends(relayed, peer(), &[2; 13]);
    // dave: 3 bytes out; and what the I/O layer relayed on carol's binding.
    let bytes = send_indication(&mut dave, peer(), b"abc", false);
    h.client_sends(dave.addr, &bytes);
    let binding = h
        .server
        .allocation(&super::super::FiveTuple {
            client: carol.addr,
            server: listener_addr(),
            transport: crate::server::Transport::Udp,
        })
        .unwrap()
        .channel_bindings()
        .next()
        .unwrap();
    h.server.count_channel_traffic(
        &binding,
        super::super::ChannelTraffic {
            to_peer_packets: 2,
            to_peer_bytes: 100,
            to_client_packets: 1,
            to_client_bytes: 50,
            ..Default::default()
        },
    );
    let usage = |h: &Harness, id: &str| {
        h.server
            .usage()
            .users()
            .iter()
            .find(|u| u.user == id)
            .cloned()
            .unwrap()
    };
    let c = usage(&h, "carol");
    assert_eq!((c.allocations, c.allocations_total), (2, 2));
    assert_eq!((c.to_peer_packets, c.to_peer_bytes), (4, 5 + 7 + 100));
    assert_eq!((c.to_client_packets, c.to_client_bytes), (3, 11 + 13 + 50));
    let d = usage(&h, "dave");
    assert_eq!(
        (d.allocations, d.to_peer_packets, d.to_peer_bytes),
        (1, 1, 3)
    );
    assert_eq!(d.to_client_packets, 0);
    assert_eq!(h.server.usage().tracked(), 2);
    assert_eq!(binding.user, 1, "carol's slot");
    let _ = dave_relayed;

    // Totals survive a restart: the adopted allocations count now, the saved totals add.
    let snapshot = h.server.snapshot(h.now);
    let saved: Vec<_> = h.server.usage().users().to_vec();
    let mut after = Harness::new();
    after.server.restore(&snapshot, after.now);
    after.server.restore_usage(&saved);
    let c = usage(&after, "carol");
    assert_eq!((c.allocations, c.allocations_total), (2, 2));
    assert_eq!((c.to_peer_bytes, c.to_client_bytes), (112, 74));

    // An allocation deleted: carol has one now, two in all.
    let r = h.ask(
        &mut carol2,
        REFRESH,
        vec![
            crate::attributes::Lifetime::new(Duration::ZERO)
                .unwrap()
                .into(),
        ],
    );
    assert!(r.is_success());
    let c = usage(&h, "carol");
    assert_eq!((c.allocations, c.allocations_total), (1, 2));
}

/// Past the cap, users count together (slot 0) and their allocations are counted.
#[test]
fn users_past_the_cap_count_together() {
    let mut config = config();
    config.max_tracked_users = 1;
    let mut h = Harness::with_config(config);
    let mut alice = Client::alice();
    let mut bob = Client::bob();
    h.allocate(&mut alice);
    let bob_relayed = h.allocate(&mut bob);
    permit(&mut h, &mut bob, peer());
    let bytes = send_indication(&mut bob, peer(), b"xyz", false);
    h.client_sends(bob.addr, &bytes);
    let usage = h.server.usage();
    assert_eq!(usage.tracked(), 1);
    assert_eq!(usage.untracked_allocations(), 1);
    assert_eq!(usage.users()[0].user, "");
    assert_eq!(usage.users()[0].to_peer_bytes, 3);
    assert_eq!(usage.users()[1].user, "alice");
    let _ = bob_relayed;
}
