//! The kernel relay on crafted frames (`BPF_PROG_TEST_RUN`), at XDP and at TC: both directions ×
//! {IPv4, IPv6, IPv4↔IPv6}, padding, bad lengths, unbound channels, truncated headers, non-UDP,
//! unresolved next hops and hairpins. Output bytes, lengths and checksums are checked. Needs
//! root.
//!
//! The program runs inside a relay namespace with two veths and permanent neighbour entries, so
//! `bpf_fib_lookup` answers deterministically; nothing is transmitted.
use std::net::SocketAddr;

use relay_common::Reason;
use relay_user::ebpf::{BATCH_ENTRIES, ChannelEntry, FastPath};
use xturn_tests::{
    netns::NetNs,
    packet::{self, channel_data, parse_udp_frame, udp_frame},
    topology::Topology,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
const CLIENT2_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x01];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// `ip -j link show` output → (ifindex, MAC) of `ifname` in `ns`.
fn link_info(ns: &NetNs, ifname: &str) -> (u32, [u8; 6]) {
    let json = ns.run("ip", &["-j", "link", "show", ifname]);
    let field = |key: &str| -> String {
        let start = json.find(&format!("\"{key}\":")).expect("field present") + key.len() + 3;
        json[start..]
            .trim_start_matches('"')
            .split(['"', ',', '}'])
            .next()
            .expect("value")
            .to_owned()
    };
    let ifindex = field("ifindex").parse().expect("ifindex");
    let mac_text = field("address");
    let mut mac = [0u8; 6];
    for (i, part) in mac_text.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).expect("hex");
    }
    (ifindex, mac)
}

struct Rig {
    topology: Topology,
    client_side: (u32, [u8; 6]),
    peer_side: (u32, [u8; 6]),
}

impl Rig {
    fn new() -> Rig {
        let topology = Topology::new();
        let relay = &topology.relay;
        relay.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        relay.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        for (ip, m, dev) in [
            ("198.18.1.2", CLIENT_MAC, "xtr0"),
            ("198.18.1.3", CLIENT2_MAC, "xtr0"),
            ("2001:db8:1::2", CLIENT_MAC, "xtr0"),
            ("198.18.2.2", PEER_MAC, "xtr1"),
            ("2001:db8:2::2", PEER_MAC, "xtr1"),
        ] {
            relay.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        let client_side = link_info(relay, "xtr0");
        let peer_side = link_info(relay, "xtr1");
        Rig {
            topology,
            client_side,
            peer_side,
        }
    }

    /// Loads the program in the relay namespace and runs `f` there.
    fn run<T: Send>(&self, f: impl FnOnce(&mut FastPath, &Rig) -> T + Send) -> T {
        self.topology.relay.within(|| {
            let mut fast_path = FastPath::load_with_capacity(1024).expect("load the XDP program");
            for listener in ["198.18.1.1:3478", "[2001:db8:1::1]:3478"] {
                fast_path
                    .add_listener(addr(listener))
                    .expect("add listener");
            }
            f(&mut fast_path, self)
        })
    }
}

fn counter(fast_path: &FastPath, reason: Reason) -> u64 {
    fast_path
        .stats()
        .expect("stats")
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, c)| c.packets)
        .expect("reason present")
}

fn entry(client: &str, listener: &str, channel: u16, relayed: &str, peer: &str) -> ChannelEntry {
    ChannelEntry {
        client: addr(client),
        listener: addr(listener),
        channel,
        relayed: addr(relayed),
        peer: addr(peer),
        to_peer_ifindex: 0,
        to_client_ifindex: 0,
    }
}

/// (client, listener, relayed, peer) for IPv4, IPv6, IPv4 client with IPv6 peer and the
/// reverse.
const FAMILY_CASES: [(&str, &str, &str, &str); 4] = [
    (
        "198.18.1.2:40000",
        "198.18.1.1:3478",
        "198.18.2.1:50000",
        "198.18.2.2:3480",
    ),
    (
        "[2001:db8:1::2]:40001",
        "[2001:db8:1::1]:3478",
        "[2001:db8:2::1]:50001",
        "[2001:db8:2::2]:3481",
    ),
    (
        "198.18.1.2:40002",
        "198.18.1.1:3478",
        "[2001:db8:2::1]:50002",
        "[2001:db8:2::2]:3482",
    ),
    (
        "[2001:db8:1::2]:40003",
        "[2001:db8:1::1]:3478",
        "198.18.2.1:50003",
        "198.18.2.2:3483",
    ),
];

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

/// The TC program on the same cases as XDP: every family combination, both directions, padding
/// and a hairpin. It keeps the UDP header in place and moves the data, so lengths, checksums and
/// the data itself are what is checked; the neighbour subsystem fills in MAC addresses when the
/// frame is really sent, so they are not.
#[test]
fn tc_relays_every_family_combination_with_padding_and_hairpins() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        let (to_client_if, _) = rig.client_side;
        let (to_peer_if, _) = rig.peer_side;
        let cases = FAMILY_CASES;
        for (i, (client, listener, relayed, peer)) in cases.into_iter().enumerate() {
            let channel = [0x4000, 0x4FFF, 0x7FD9, 0x5000][i];
            let mut e = entry(client, listener, channel, relayed, peer);
            e.to_peer_ifindex = to_peer_if;
            e.to_client_ifindex = to_client_if;
            fp.add_channel_binding(&e).expect("install binding");
            for data_len in [1usize, 2, 3, 100 + i, 1001] {
                let data: Vec<u8> = (0..data_len).map(|b| (b * 7 + i) as u8).collect();
                let pad = (4 - data_len % 4) % 4;
                let padding = &[0xaa, 0xbb, 0xcc][..pad];
                let before = counter(fp, Reason::RelayedToPeer);
                let input = udp_frame(
                    addr(client),
                    addr(listener),
                    &channel_data(channel, &data, padding),
                );
                let out = fp.test_run_tc(&input).expect("BPF_PROG_TEST_RUN");
                assert_eq!(
                    out.action, TC_ACT_REDIRECT,
                    "case {i} len {data_len} to peer"
                );
                assert_eq!(counter(fp, Reason::RelayedToPeer), before + 1);
                let f = parse_udp_frame(&out.frame);
                assert_eq!((f.src, f.dst), (addr(relayed), addr(peer)), "case {i}");
                assert_eq!(f.payload, data, "case {i} len {data_len}: data intact");
                assert_eq!(f.ttl, 64);

                let before = counter(fp, Reason::RelayedToClient);
                let input = udp_frame(addr(peer), addr(relayed), &data);
                let out = fp.test_run_tc(&input).expect("BPF_PROG_TEST_RUN");
                assert_eq!(
                    out.action, TC_ACT_REDIRECT,
                    "case {i} len {data_len} to client"
                );
                assert_eq!(counter(fp, Reason::RelayedToClient), before + 1);
                let f = parse_udp_frame(&out.frame);
                assert_eq!((f.src, f.dst), (addr(listener), addr(client)), "case {i}");
                assert_eq!(f.payload, channel_data(channel, &data, &[]), "case {i}");
            }
        }

        // A hairpin: the first client's peer is the second allocation's relayed address.
        let mut a = entry(
            "198.18.1.2:41000",
            "198.18.1.1:3478",
            0x4001,
            "198.18.2.1:51000",
            "198.18.2.1:51001",
        );
        let mut b = entry(
            "198.18.1.3:41001",
            "198.18.1.1:3478",
            0x4002,
            "198.18.2.1:51001",
            "198.18.2.1:51000",
        );
        for e in [&mut a, &mut b] {
            e.to_peer_ifindex = to_peer_if;
            e.to_client_ifindex = to_client_if;
            fp.add_channel_binding(e).expect("install");
        }
        let data = b"hairpin through tc".to_vec();
        let input = udp_frame(a.client, a.listener, &channel_data(0x4001, &data, &[0, 0]));
        let before = counter(fp, Reason::RelayedHairpin);
        let out = fp.test_run_tc(&input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(counter(fp, Reason::RelayedHairpin), before + 1);
        let f = parse_udp_frame(&out.frame);
        assert_eq!((f.src, f.dst), (b.listener, b.client));
        assert_eq!(f.payload, channel_data(0x4002, &data, &[]));

        // Without an egress interface (no route found) the datagram goes to userspace as it is.
        let mut lost = entry(
            "198.18.1.2:42000",
            "198.18.1.1:3478",
            0x4003,
            "198.18.2.1:52000",
            "198.18.2.2:3490",
        );
        lost.to_client_ifindex = to_client_if;
        fp.add_channel_binding(&lost).expect("install");
        let input = udp_frame(
            lost.client,
            lost.listener,
            &channel_data(0x4003, b"abc", &[0]),
        );
        let before = counter(fp, Reason::NoRoute);
        let out = fp.test_run_tc(&input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(counter(fp, Reason::NoRoute), before + 1);
        assert_eq!(out.frame, input, "passed unchanged");
    });
}

/// Runs a frame through the program and checks action and counted reason.
fn run_expect(
    fast_path: &mut FastPath,
    frame: &[u8],
    ingress: u32,
    action: u32,
    reason: Reason,
) -> Vec<u8> {
    let before = counter(fast_path, reason);
    let out = fast_path
        .test_run(frame, Some(ingress))
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(out.action, action, "action for reason {reason:?}");
    assert_eq!(
        counter(fast_path, reason),
        before + 1,
        "counted as {reason:?}"
    );
    out.frame
}

#[test]
fn both_directions_every_family_combination() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        let (in_client, client_dev_mac) = rig.client_side;
        let (in_peer, peer_dev_mac) = rig.peer_side;
        let cases = FAMILY_CASES;
        for (i, (client, listener, relayed, peer)) in cases.into_iter().enumerate() {
            // Both ends of RFC 8656's range and RFC 5766 numbers (coturn's client uses them).
            let channel = [0x4000, 0x4FFF, 0x7FD9, 0x5000][i];
            let e = entry(client, listener, channel, relayed, peer);
            fp.add_channel_binding(&e).expect("install binding");
            let data: Vec<u8> = (0..(100 + i)).map(|b| (b * 7) as u8).collect();

            // Client → peer: the ChannelData header is stripped, addresses rewritten.
            let input = udp_frame(
                addr(client),
                addr(listener),
                &channel_data(channel, &data, &[]),
            );
            let out = run_expect(fp, &input, in_client, XDP_REDIRECT, Reason::RelayedToPeer);
            let f = parse_udp_frame(&out);
            assert_eq!(
                (f.src, f.dst),
                (addr(relayed), addr(peer)),
                "case {i} to peer"
            );
            assert_eq!(f.payload, data, "case {i}: data intact");
            assert_eq!(
                (f.dmac, f.smac),
                (PEER_MAC, peer_dev_mac),
                "case {i}: next hop MACs"
            );
            assert_eq!(f.ttl, 64);

            // Peer → client: a ChannelData header is added.
            let input = udp_frame(addr(peer), addr(relayed), &data);
            let out = run_expect(fp, &input, in_peer, XDP_REDIRECT, Reason::RelayedToClient);
            let f = parse_udp_frame(&out);
            assert_eq!(
                (f.src, f.dst),
                (addr(listener), addr(client)),
                "case {i} to client"
            );
            assert_eq!(
                f.payload,
                channel_data(channel, &data, &[]),
                "case {i}: ChannelData"
            );
            assert_eq!((f.dmac, f.smac), (CLIENT_MAC, client_dev_mac));

            let counters = fp.channel_counters(&e).expect("installed");
            assert_eq!(counters.to_peer.packets, 1, "case {i}");
            assert_eq!(counters.to_peer.bytes, data.len() as u64);
            assert_eq!(counters.to_client.packets, 1);
            assert_eq!(counters.to_client.bytes, data.len() as u64);
        }
    });
}

#[test]
fn padding_is_removed_and_odd_lengths_keep_checksums_right() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        let e = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4000,
            "198.18.2.1:50000",
            "198.18.2.2:3480",
        );
        fp.add_channel_binding(&e).expect("install");
        for data_len in [1usize, 2, 3, 5, 1001] {
            let data: Vec<u8> = (0..data_len).map(|b| (b * 31 + 7) as u8).collect();
            let pad = (4 - data_len % 4) % 4;
            let padding = &[0xaa, 0xbb, 0xcc][..pad];
            let input = udp_frame(e.client, e.listener, &channel_data(0x4000, &data, padding));
            let out = run_expect(
                fp,
                &input,
                rig.client_side.0,
                XDP_REDIRECT,
                Reason::RelayedToPeer,
            );
            let f = parse_udp_frame(&out);
            assert_eq!(
                f.payload, data,
                "data of {data_len} bytes with {pad} padding"
            );
        }
    });
}

#[test]
fn malformed_unbound_truncated_and_foreign_traffic() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        let ingress = rig.client_side.0;
        let e = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4000,
            "198.18.2.1:50000",
            "198.18.2.2:3480",
        );
        fp.add_channel_binding(&e).expect("install");

        // The length field claims more than the datagram holds: ours but broken → dropped.
        let mut bad = channel_data(0x4000, &[1, 2, 3, 4], &[]);
        bad[2..4].copy_from_slice(&100u16.to_be_bytes());
        let input = udp_frame(e.client, e.listener, &bad);
        run_expect(fp, &input, ingress, XDP_DROP, Reason::ChannelMalformed);

        // Unbound channel, and a bound channel from another client: the agent decides.
        for (client, channel) in [(e.client, 0x4001u16), (addr("198.18.1.9:40000"), 0x4000)] {
            let input = udp_frame(client, e.listener, &channel_data(channel, b"data", &[]));
            let out = run_expect(fp, &input, ingress, XDP_PASS, Reason::ChannelUnbound);
            assert_eq!(out, input, "passed unchanged");
        }

        // STUN to the listener goes to the agent.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        let input = udp_frame(e.client, e.listener, &stun);
        assert_eq!(
            run_expect(fp, &input, ingress, XDP_PASS, Reason::ListenerPassed),
            input
        );

        // Datagrams for someone else, non-UDP, not IP, truncated headers.
        let input = udp_frame(
            e.client,
            addr("198.18.1.1:9999"),
            &channel_data(0x4000, b"x", &[]),
        );
        assert_eq!(
            run_expect(fp, &input, ingress, XDP_PASS, Reason::UdpPassed),
            input
        );
        let icmp = packet::icmp4_echo_frame([198, 18, 1, 2].into(), [198, 18, 1, 1].into());
        run_expect(fp, &icmp, ingress, XDP_PASS, Reason::NotUdp);
        run_expect(fp, &packet::arp_frame(), ingress, XDP_PASS, Reason::NotIp);
        let full = udp_frame(e.client, e.listener, &channel_data(0x4000, b"data", &[]));
        run_expect(
            fp,
            &full[..14 + 20 + 4],
            ingress,
            XDP_PASS,
            Reason::Truncated,
        );
        // An IPv4 length larger than the frame.
        let mut lying = full.clone();
        lying[16..18].copy_from_slice(&2000u16.to_be_bytes());
        run_expect(fp, &lying, ingress, XDP_PASS, Reason::Truncated);
        // Fragments and IPv4 options are left to the stack.
        let mut fragment = full.clone();
        fragment[20] = 0x20; // MF
        run_expect(fp, &fragment, ingress, XDP_PASS, Reason::Unsupported);
    });
}

#[test]
fn unresolved_next_hop_passes_the_frame_unchanged() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        // No neighbour entry for 198.18.2.77: the kernel must resolve it, so the agent relays.
        let e = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4000,
            "198.18.2.1:50000",
            "198.18.2.77:3480",
        );
        fp.add_channel_binding(&e).expect("install");
        let input = udp_frame(e.client, e.listener, &channel_data(0x4000, b"hello", &[]));
        let out = run_expect(fp, &input, rig.client_side.0, XDP_PASS, Reason::NoRoute);
        assert_eq!(out, input);
        let counters = fp.channel_counters(&e).expect("installed");
        assert_eq!(counters.to_peer.packets, 0, "not relayed in the kernel");
    });
}

#[test]
fn hairpin_between_two_allocations_of_this_relay() {
    let rig = Rig::new();
    rig.run(|fp, rig| {
        // Client A's peer is B's relayed address and vice versa (two WebRTC clients, one relay).
        let a = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4000,
            "198.18.2.1:50000",
            "198.18.2.1:50001",
        );
        let b = entry(
            "198.18.1.3:40000",
            "198.18.1.1:3478",
            0x4001,
            "198.18.2.1:50001",
            "198.18.2.1:50000",
        );
        fp.add_channel_binding(&a).expect("install a");
        fp.add_channel_binding(&b).expect("install b");
        let input = udp_frame(a.client, a.listener, &channel_data(0x4000, b"media", &[0]));
        let out = run_expect(
            fp,
            &input,
            rig.client_side.0,
            XDP_TX,
            Reason::RelayedHairpin,
        );
        let f = parse_udp_frame(&out);
        assert_eq!((f.src, f.dst), (b.listener, b.client));
        assert_eq!(
            f.payload,
            channel_data(0x4001, b"media", &[]),
            "on B's channel"
        );
        assert_eq!(f.dmac, CLIENT2_MAC);
        assert_eq!(fp.channel_counters(&a).expect("a").to_peer.packets, 1);
        assert_eq!(fp.channel_counters(&b).expect("b").to_client.packets, 1);
    });
}

#[test]
fn removed_bindings_stop_kernel_relaying_and_a_full_map_is_reported() {
    let rig = Rig::new();
    rig.topology.relay.within(|| {
        let mut fp = FastPath::load_with_capacity(2).expect("load");
        fp.add_listener(addr("198.18.1.1:3478")).expect("listener");
        let e = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4000,
            "198.18.2.1:50000",
            "198.18.2.2:3480",
        );
        fp.add_channel_binding(&e).expect("install");
        let input = udp_frame(e.client, e.listener, &channel_data(0x4000, b"x", &[]));
        run_expect(
            &mut fp,
            &input,
            rig.client_side.0,
            XDP_REDIRECT,
            Reason::RelayedToPeer,
        );
        fp.remove_channel_binding(&e).expect("remove");
        fp.remove_channel_binding(&e)
            .expect("removing twice is fine");
        run_expect(
            &mut fp,
            &input,
            rig.client_side.0,
            XDP_PASS,
            Reason::ChannelUnbound,
        );
        assert!(fp.channel_counters(&e).is_none());

        // Capacity 2: the third binding does not fit, and neither direction is installed.
        for i in 0..2u16 {
            let e = entry(
                "198.18.1.2:40000",
                "198.18.1.1:3478",
                0x4000 + i,
                "198.18.2.1:50000",
                &format!("198.18.2.2:{}", 4000 + i),
            );
            fp.add_channel_binding(&e).expect("fits");
        }
        let third = entry(
            "198.18.1.2:40000",
            "198.18.1.1:3478",
            0x4002,
            "198.18.2.1:50000",
            "198.18.2.2:4002",
        );
        let err = fp.add_channel_binding(&third).expect_err("map full");
        assert!(err.to_string().contains("full"), "{err}");
        assert!(fp.channel_counters(&third).is_none());
    });
}

/// A scrape reads every binding's counters with batch lookups: over several batches, each
/// binding once, with the counters a lookup of its own entries gives; removed bindings are
/// gone from it.
#[test]
fn batch_reads_of_the_counters_match_lookups_of_each_binding() {
    let rig = Rig::new();
    rig.topology.relay.within(|| {
        let bindings = BATCH_ENTRIES * 2 + 100;
        let mut fp = FastPath::load_with_capacity(bindings).expect("load");
        fp.add_listener(addr("198.18.1.1:3478")).expect("listener");
        let entries: Vec<ChannelEntry> = (0..bindings)
            .map(|i| {
                entry(
                    &format!("198.18.1.2:{}", 10_000 + i),
                    "198.18.1.1:3478",
                    0x4000,
                    &format!("198.18.2.1:{}", 10_000 + i),
                    "198.18.2.2:3480",
                )
            })
            .collect();
        for e in &entries {
            fp.add_channel_binding(e).expect("install");
        }
        // Traffic on a few of them, both ways, so counters differ between bindings.
        for (n, e) in entries.iter().step_by(500).enumerate() {
            for _ in 0..=n {
                let input = udp_frame(e.client, e.listener, &channel_data(0x4000, b"abc", &[]));
                run_expect(
                    &mut fp,
                    &input,
                    rig.client_side.0,
                    XDP_REDIRECT,
                    Reason::RelayedToPeer,
                );
            }
            let input = udp_frame(e.peer, e.relayed, b"hello");
            run_expect(
                &mut fp,
                &input,
                rig.peer_side.0,
                XDP_REDIRECT,
                Reason::RelayedToClient,
            );
        }
        let maps = fp.counter_maps().expect("counter maps");
        let all = maps.read().expect("batch read");
        assert_eq!(all.len(), entries.len());
        for e in &entries {
            assert_eq!(all.get(e), fp.channel_counters(e), "{e:?}");
        }
        let busy = all.get(&entries[500]).expect("read");
        assert_eq!((busy.to_peer.packets, busy.to_peer.bytes), (2, 6));
        assert_eq!((busy.to_client.packets, busy.to_client.bytes), (1, 5));

        fp.remove_channel_binding(&entries[0]).expect("remove");
        let all = maps.read().expect("batch read");
        assert_eq!(all.len(), entries.len() - 1);
        assert!(all.get(&entries[0]).is_none());
    });
}
