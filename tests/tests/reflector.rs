//! The benchmark's reflector TC program (`xturn-reflector`, the in-kernel load side of the
//! `--threads` scaling step) on crafted frames through `BPF_PROG_TEST_RUN`: what it sends back
//! comes back with addresses and ports swapped and valid checksums, and what it must leave alone
//! (STUN to the clients, other ports, non-UDP) passes unchanged. Needs root.
use std::net::{Ipv4Addr, SocketAddr};

use relay_user::reflector::{Reflector, ReflectorSpec};
use xturn_tests::packet::{self, parse_udp_frame, udp_frame};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn reflector(port: Option<u16>, channel_data: bool) -> Reflector {
    Reflector::load(&ReflectorSpec {
        port,
        channel_data,
        interfaces: Vec::new(),
    })
    .expect("load the reflector program (are you root?)")
}

#[test]
fn datagrams_to_the_port_go_back_with_addresses_swapped() {
    let mut peer_side = reflector(Some(4000), false);
    let (relayed, peer) = (addr("198.18.2.1:50000"), addr("198.18.2.2:4000"));
    let frame = udp_frame(relayed, peer, b"relayed data");
    let (action, out) = peer_side.test_run(&frame).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, TC_ACT_REDIRECT);
    // Checksums are verified by the parser.
    let back = parse_udp_frame(&out);
    let sent = parse_udp_frame(&frame);
    assert_eq!((back.src, back.dst), (peer, relayed));
    assert_eq!((back.smac, back.dmac), (sent.dmac, sent.smac));
    assert_eq!(back.payload, b"relayed data");
    assert_eq!(back.ttl, sent.ttl);

    let elsewhere = udp_frame(relayed, addr("198.18.2.2:4001"), b"x");
    let (action, out) = peer_side.test_run(&elsewhere).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, TC_ACT_OK, "another port passes");
    assert_eq!(out, elsewhere, "unchanged");
    let icmp = packet::icmp4_echo_frame(Ipv4Addr::new(198, 18, 2, 1), Ipv4Addr::new(198, 18, 2, 2));
    let (action, out) = peer_side.test_run(&icmp).expect("BPF_PROG_TEST_RUN");
    assert_eq!((action, out), (TC_ACT_OK, icmp), "non-UDP passes unchanged");

    let counters = peer_side.counters().expect("counters");
    assert_eq!((counters.reflected, counters.passed), (1, 2));
}

#[test]
fn on_the_client_side_only_channel_data_goes_back() {
    let mut client_side = reflector(None, true);
    let (listener, client) = (addr("198.18.1.1:3478"), addr("198.18.1.10:40000"));
    let channel_data = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4];
    let frame = udp_frame(listener, client, &channel_data);
    let (action, out) = client_side.test_run(&frame).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, TC_ACT_REDIRECT);
    let back = parse_udp_frame(&out);
    assert_eq!((back.src, back.dst), (client, listener));
    assert_eq!(back.payload, channel_data);

    // A STUN response (first two bits 00) reaches the client.
    let stun = udp_frame(
        listener,
        client,
        &[
            0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let (action, out) = client_side.test_run(&stun).expect("BPF_PROG_TEST_RUN");
    assert_eq!((action, out), (TC_ACT_OK, stun));
    let counters = client_side.counters().expect("counters");
    assert_eq!((counters.reflected, counters.passed), (1, 1));
}
