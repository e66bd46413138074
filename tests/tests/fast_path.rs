//! The XDP program, loaded by the agent's loader: on crafted frames through `BPF_PROG_TEST_RUN`,
//! and attached to a veth in a network namespace with real traffic. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use relay_common::{Counter, Reason};
use relay_user::ebpf::FastPath;
use xturn_tests::{
    netns::{NetNs, veth},
    packet,
};

const XDP_PASS: u32 = 2;

fn counter(fast_path: &FastPath, reason: Reason) -> Counter {
    fast_path
        .stats()
        .expect("read STATS")
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, c)| c)
        .expect("every reason is present")
}

#[test]
fn prog_test_run_classifies_crafted_frames() {
    let mut fast_path = FastPath::load().expect("load the XDP program (are you root?)");
    let udp = packet::udp4_frame(
        Ipv4Addr::new(198, 18, 0, 2),
        40000,
        Ipv4Addr::new(198, 18, 0, 1),
        3478,
        b"hello",
    );
    let cases: [(&str, Vec<u8>, Reason); 4] = [
        ("udp", udp.clone(), Reason::UdpPassed),
        (
            "icmp",
            packet::icmp4_echo_frame([198, 18, 0, 2].into(), [198, 18, 0, 1].into()),
            Reason::NotUdp,
        ),
        ("arp", packet::arp_frame(), Reason::NotIp),
        ("truncated ipv4", udp[..14 + 10].to_vec(), Reason::Truncated),
    ];
    for (what, frame, reason) in cases {
        let before = counter(&fast_path, reason);
        let outcome = fast_path.test_run(&frame, None).expect("BPF_PROG_TEST_RUN");
        assert_eq!(outcome.action, XDP_PASS, "{what}: action");
        assert_eq!(outcome.frame, frame, "{what}: a passed frame is unchanged");
        let after = counter(&fast_path, reason);
        assert_eq!(
            after.packets,
            before.packets + 1,
            "{what}: counted under {reason:?}"
        );
        assert_eq!(
            after.bytes,
            before.bytes + frame.len() as u64,
            "{what}: bytes"
        );
    }
    packet::assert_udp4_checksums(&udp);
}

#[test]
fn xdp_on_veth_counts_real_udp_datagrams() {
    const DATAGRAMS: u64 = 200;
    const PAYLOAD: usize = 100;
    let relay = NetNs::new("relay");
    let client = NetNs::new("client");
    veth(&relay, "xt0", &client, "xt1");
    relay.ip(&["addr", "add", "198.18.0.1/24", "dev", "xt0"]);
    client.ip(&["addr", "add", "198.18.0.2/24", "dev", "xt1"]);

    let fast_path = relay.within(|| {
        let mut fast_path = FastPath::load().expect("load the XDP program");
        fast_path.attach("xt0").expect("attach XDP to the veth");
        fast_path
    });
    // A receiver so the datagrams are wanted (no ICMP errors), bound inside the relay namespace.
    let receiver = relay.within(|| UdpSocket::bind("198.18.0.1:9999").expect("bind receiver"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");

    let to: SocketAddr = "198.18.0.1:9999".parse().expect("addr");
    let sender = client.within(|| UdpSocket::bind("198.18.0.2:0").expect("bind sender"));
    let mut buf = [0u8; 2048];
    // One datagram first, so ARP has resolved before the counted burst (the kernel queues only a
    // few packets while a neighbour is unresolved).
    sender.send_to(b"warm-up", to).expect("send warm-up");
    receiver
        .recv_from(&mut buf)
        .expect("warm-up datagram arrives");

    let before = counter(&fast_path, Reason::UdpPassed);
    // Sent in chunks and drained in between, so the receive buffer never overflows.
    let mut received = 0u64;
    for chunk in 0..DATAGRAMS / 20 {
        for i in 0..20 {
            let payload = [u8::try_from((chunk * 20 + i) % 251).expect("small"); PAYLOAD];
            sender.send_to(&payload, to).expect("send");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while received < (chunk + 1) * 20 && Instant::now() < deadline {
            let (n, _) = receiver.recv_from(&mut buf).expect("datagram arrives");
            assert_eq!(n, PAYLOAD);
            received += 1;
        }
    }
    assert_eq!(
        received, DATAGRAMS,
        "every datagram passed through XDP to the socket"
    );
    let after = counter(&fast_path, Reason::UdpPassed);
    assert_eq!(
        after.packets - before.packets,
        DATAGRAMS,
        "XDP counted each datagram once"
    );
    // Ethernet (14) + IPv4 (20) + UDP (8) + payload.
    assert_eq!(
        after.bytes - before.bytes,
        DATAGRAMS * (14 + 20 + 8 + PAYLOAD as u64)
    );
    drop(fast_path);
}
