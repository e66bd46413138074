//! TCP allocations (RFC 6062): Allocate over TCP, Connect, ConnectionBind, ConnectionAttempt,
//! the ConnectionBind deadline, and connections ending with their allocation.
use std::time::Duration;

use stun_codec::rfc5766::methods::{CHANNEL_BIND, CREATE_PERMISSION};
use stun_codec::{MessageClass, Method};

use super::*;
use crate::attributes::{ChannelNumber, ConnectionId, XorPeerAddress};
use crate::server::{CONNECT, CONNECTION_BIND, Transport};

const TCP: ListenerId = ListenerId(1);

/// The test listeners plus a TCP one on the same address.
fn tcp_harness() -> Harness {
    let mut config = config();
    config.listeners.push(Listener {
        name: "tcp".to_owned(),
        addr: listener_addr(),
        transport: Transport::Tcp,
    });
    let mut h = Harness::with_config(config);
    h.listener = TCP;
    h
}

fn tcp() -> Attribute {
    RequestedTransport::new(6).into()
}

fn method(code: u16) -> Method {
    Method::new(code).unwrap()
}

fn connection_id(response: &Response) -> u32 {
    response.get::<ConnectionId>().unwrap().value()
}

/// A TCP allocation of alice with a permission for `peer()`; returns the relayed address.
fn tcp_allocation(h: &mut Harness, alice: &mut Client) -> SocketAddr {
    let (response, commands) = h.allocate_with(alice, vec![tcp()]);
    assert!(response.is_success(), "{response:?}");
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::ListenRelay { .. })),
        "a listening socket: {commands:?}"
    );
    assert!(h.server.allocation_count() == 1);
    let permitted = h.ask(
        alice,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert!(permitted.is_success());
    response.relayed()[0]
}

#[test]
fn tcp_allocations_only_over_streams_and_without_udp_options() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    let (response, _) = h.allocate_with(&mut alice, vec![tcp()]);
    assert_eq!(response.error_code(), Some(400), "over UDP");
    let mut h = tcp_harness();
    let (response, _) = h.allocate_with(
        &mut alice,
        vec![tcp(), crate::attributes::DontFragment.into()],
    );
    assert_eq!(response.error_code(), Some(400));
    let relayed = tcp_allocation(&mut h, &mut alice);
    assert!(h.server.allocations().next().unwrap().is_tcp());
    assert_eq!(relayed.ip(), relay_v4());
    // No channels on a TCP allocation.
    let r = h.ask(
        &mut alice,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4000).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert_eq!(r.error_code(), Some(400));
}

#[test]
fn connect_then_connection_bind_splices_a_data_connection() {
    let mut h = tcp_harness();
    let mut alice = Client::alice();
    let relayed = tcp_allocation(&mut h, &mut alice);
    // A peer the policy refuses, and one without a permission: 403.
    let denied = addr("127.0.0.1:80");
    let r = h.ask(
        &mut alice,
        method(CONNECT),
        vec![XorPeerAddress::new(denied).into()],
    );
    assert_eq!(r.error_code(), Some(403));
    let other = addr("203.0.113.77:6000");
    let r = h.ask(
        &mut alice,
        method(CONNECT),
        vec![XorPeerAddress::new(other).into()],
    );
    assert_eq!(r.error_code(), Some(403));

    // Connect: the I/O layer connects, then the answer comes with the CONNECTION-ID.
    let commands = h.call(
        &mut alice,
        method(CONNECT),
        vec![XorPeerAddress::new(peer()).into()],
    );
    let Some(Command::ConnectPeer {
        connection,
        relayed: from,
        peer: to,
    }) = commands
        .iter()
        .find(|c| matches!(c, Command::ConnectPeer { .. }))
        .cloned()
    else {
        panic!("no ConnectPeer: {commands:?}");
    };
    assert_eq!((from, to), (relayed, peer()));
    assert!(sent_to(&commands, alice.addr).is_empty(), "answered later");
    // A second Connect to the same peer meanwhile: 446.
    let r = h.ask(
        &mut alice,
        method(CONNECT),
        vec![XorPeerAddress::new(peer()).into()],
    );
    assert_eq!(r.error_code(), Some(446));
    h.server.handle_peer_connected(connection, true, h.now);
    let commands = h.drain();
    let r = response_in(&commands, alice.addr);
    assert!(r.is_success());
    assert_eq!(connection_id(&r), connection);

    // bob may not bind alice's connection; an unknown id is a 400.
    let mut bob = Client::new("192.0.2.2:40000", "bob", "bob-pw");
    let r = h.ask(
        &mut bob,
        method(CONNECTION_BIND),
        vec![ConnectionId::new(connection).into()],
    );
    assert_eq!(r.error_code(), Some(441));
    let mut data = Client::new("192.0.2.1:40001", "alice", "alice-pw");
    let r = h.ask(
        &mut data,
        method(CONNECTION_BIND),
        vec![ConnectionId::new(connection ^ 1).into()],
    );
    assert_eq!(r.error_code(), Some(400));
    // alice's new connection binds it: the response, then the splice.
    let commands = h.call(
        &mut data,
        method(CONNECTION_BIND),
        vec![ConnectionId::new(connection).into()],
    );
    let response = commands
        .iter()
        .position(|c| matches!(c, Command::SendToClient { client, .. } if *client == data.addr))
        .unwrap();
    let splice = commands
        .iter()
        .position(|c| {
            *c == Command::BindData {
                connection,
                listener: TCP,
                client: data.addr,
                user: 1,
            }
        })
        .unwrap();
    assert!(response < splice, "{commands:?}");
    assert!(response_in(&commands, data.addr).is_success());
    // Bound: no deadline closes it.
    let commands = h.advance(Duration::from_secs(31));
    assert!(!commands.contains(&Command::CloseConnection { connection }));
    assert_eq!(h.server.tcp_connection_count(), 1);
    // What it relayed counts for alice (slot 1).
    h.server.handle_connection_closed(connection);
    h.server.count_tcp_traffic(
        1,
        super::super::ChannelTraffic {
            to_peer_packets: 3,
            to_peer_bytes: 300,
            to_client_packets: 2,
            to_client_bytes: 200,
            ..Default::default()
        },
    );
    assert_eq!(h.server.tcp_connection_count(), 0);
    let alice_usage = h
        .server
        .usage()
        .users()
        .iter()
        .find(|u| u.user == "alice")
        .cloned()
        .unwrap();
    assert_eq!(
        (alice_usage.to_peer_bytes, alice_usage.to_client_bytes),
        (300, 200)
    );
}

#[test]
fn a_failed_connect_is_a_447() {
    let mut h = tcp_harness();
    let mut alice = Client::alice();
    tcp_allocation(&mut h, &mut alice);
    let commands = h.call(
        &mut alice,
        method(CONNECT),
        vec![XorPeerAddress::new(peer()).into()],
    );
    let connection = commands
        .iter()
        .find_map(|c| match c {
            Command::ConnectPeer { connection, .. } => Some(*connection),
            _ => None,
        })
        .unwrap();
    h.server.handle_peer_connected(connection, false, h.now);
    let r = response_in(&h.drain(), alice.addr);
    assert_eq!(r.error_code(), Some(447));
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert_eq!(h.server.stats().tcp_connect_failures, 1);
}

#[test]
fn peers_that_connect_need_a_permission_and_a_binding_within_30_s() {
    let mut h = tcp_harness();
    let mut alice = Client::alice();
    let relayed = tcp_allocation(&mut h, &mut alice);
    // No permission for this peer: closed at once, nothing told.
    assert_eq!(
        h.server
            .handle_peer_connection(relayed, addr("203.0.113.77:6000"), h.now),
        None
    );
    assert!(h.drain().is_empty());
    // With one: a ConnectionAttempt with the peer and a CONNECTION-ID.
    let id = h
        .server
        .handle_peer_connection(relayed, peer(), h.now)
        .unwrap();
    let commands = h.drain();
    let [indication] = sent_to(&commands, alice.addr).try_into().unwrap();
    let message = decode_message(&indication);
    assert_eq!(message.class(), MessageClass::Indication);
    assert_eq!(message.method().as_u16(), crate::server::CONNECTION_ATTEMPT);
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        peer()
    );
    assert_eq!(message.get_attribute::<ConnectionId>().unwrap().value(), id);
    // Not bound in 30 s: closed.
    let commands = h.advance(Duration::from_secs(29));
    assert!(!commands.contains(&Command::CloseConnection { connection: id }));
    let commands = h.advance(Duration::from_secs(2));
    assert!(commands.contains(&Command::CloseConnection { connection: id }));
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert_eq!(h.server.stats().tcp_connections_timed_out, 1);
    // An address that is no TCP allocation's.
    assert_eq!(
        h.server
            .handle_peer_connection(addr("198.51.100.1:1"), peer(), h.now),
        None
    );
}

#[test]
fn connections_end_with_their_allocation() {
    let mut h = tcp_harness();
    let mut alice = Client::alice();
    let relayed = tcp_allocation(&mut h, &mut alice);
    let id = h
        .server
        .handle_peer_connection(relayed, peer(), h.now)
        .unwrap();
    h.drain();
    // The control connection closes: the allocation goes, and its connections are closed.
    h.server.handle_client_closed(TCP, alice.addr);
    let commands = h.drain();
    assert!(commands.contains(&Command::CloseConnection { connection: id }));
    assert!(commands.contains(&Command::ReleaseRelay { addr: relayed }));
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn a_new_policy_closes_connections_to_peers_it_refuses() {
    let mut h = tcp_harness();
    let mut alice = Client::alice();
    let relayed = tcp_allocation(&mut h, &mut alice);
    let id = h
        .server
        .handle_peer_connection(relayed, peer(), h.now)
        .unwrap();
    h.drain();
    // The TCP listener is routed to a cluster without the peer now.
    let policy = crate::policy::PeerPolicy::open(vec![listener_addr()])
        .route_tcp("tcp", vec!["192.0.2.0/24".parse().unwrap()]);
    let revoked = h.server.set_policy(policy);
    assert_eq!((revoked.permissions, revoked.connections), (1, 1));
    assert!(
        h.drain()
            .contains(&Command::CloseConnection { connection: id })
    );
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert_eq!(h.server.stats().connections_revoked, 1);
}
