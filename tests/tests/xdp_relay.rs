//! `xturnd --dataplane xdp` end to end across veths in network namespaces: bound channels are
//! relayed by the XDP program alone, everything else still works through userspace, and a
//! binding that expires stops kernel relaying. Needs root.
//!
//! The counters come from xturnd's own report when it stops (its `kernel counter` and `userspace
//! counters` log lines), so the test sees what an operator would.
use std::{net::SocketAddr, process::Command, time::Duration};

use xturn_tests::{
    clients::{
        PEER_PORT, UclientTotals, block_on, hairpin_rounds, log_path, number_after,
        start_echo_peers, uclient, xturnctl_ping_command,
    },
    netns::ChildGuard,
    topology::{LISTENER_V4, LISTENER_V6, PEER_V4, PEER_V6, RELAY_V4, RELAY_V6, Topology, binary},
};
use xturnctl::{AllocateOptions, ClientCredentials, TurnClient, Via};

fn start_xdp_relay(topology: &Topology, log: &std::path::Path, extra: &[&str]) -> ChildGuard {
    let mut args = vec![
        "--listen",
        "198.18.1.1:3478",
        "--listen",
        "[2001:db8:1::1]:3478",
        "--relay-ip",
        RELAY_V4,
        "--relay-ip",
        RELAY_V6,
        "--realm",
        "xturn.test",
        "--user",
        "alice:wonderland",
        "--min-port",
        "50000",
        "--max-port",
        "50999",
        "--dataplane",
        "xdp",
        // The tests stop xturnd with allocations still live: no drain (tests/tests/operations.rs
        // tests draining).
        "--drain-timeout",
        "0",
    ];
    if !extra.contains(&"--log-level") {
        args.extend_from_slice(&["--log-level", "info"]);
    }
    args.extend_from_slice(extra);
    topology.start_xturnd_logged(&args, log)
}

/// Stops xturnd and returns its log.
fn stop(relay: ChildGuard, log: &std::path::Path) -> String {
    let out = relay.terminate();
    assert!(
        out.status.success(),
        "xturnd exits cleanly on SIGTERM: {:?}",
        out.status
    );
    let text = std::fs::read_to_string(log).expect("read xturnd log");
    let _ = std::fs::remove_file(log);
    text
}

/// `packets` of the `kernel counter` line for `reason` in xturnd's shutdown report.
fn xdp_packets(log: &str, reason: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("kernel counter") && l.contains(&format!("reason=\"{reason}\"")))
        .find_map(|l| number_after(l, "packets="))
        .unwrap_or_else(|| panic!("no XDP counter for {reason} in:\n{log}"))
}

/// A field of the `userspace counters` line (the core's `Stats`).
fn userspace(log: &str, field: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("userspace counters"))
        .find_map(|l| number_after(l, &format!("{field}: ")))
        .unwrap_or_else(|| panic!("no userspace counter {field} in:\n{log}"))
}

fn xturnctl_ping(topology: &Topology, server: &str, peer: &str, mode: &str, count: &str) {
    let out = xturnctl_ping_command(
        topology,
        server,
        &[
            "--user",
            "alice:wonderland",
            "--peer",
            peer,
            "--count",
            count,
            "--size",
            "200",
            "--interval-ms",
            "1",
            "--mode",
            mode,
        ],
    )
    .output()
    .expect("run xturnctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xturnctl ping {mode}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("sent={count} received={count} lost=0")),
        "{stdout}"
    );
}

#[test]
fn bound_channels_are_relayed_in_the_kernel_and_the_rest_in_userspace() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let log = log_path("xdp-e2e");
    let relay = start_xdp_relay(&topology, &log, &[]);

    // Channels: coturn's client over IPv4, xturnctl over IPv6 (and IPv4 client → IPv6 relay).
    let UclientTotals {
        sent,
        received,
        lost,
    } = uclient(
        &topology,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            PEER_V4,
            "-r",
            PEER_PORT,
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "160",
            "-z",
            "5",
            "-c",
        ],
        LISTENER_V4,
    );
    assert_eq!(
        (sent, received, lost),
        (50, 50, 0),
        "uclient channels through XDP"
    );
    xturnctl_ping(
        &topology,
        &format!("[{LISTENER_V6}]:3478"),
        &format!("[{PEER_V6}]:{PEER_PORT}"),
        "channel",
        "100",
    );
    xturnctl_ping(
        &topology,
        "198.18.1.1:3478",
        &format!("[{PEER_V6}]:{PEER_PORT}"),
        "channel",
        "100",
    );
    let channel_datagrams = 50 + 100 + 100;

    // Send indications are not ChannelData: they go through userspace.
    let UclientTotals {
        sent,
        received,
        lost,
    } = uclient(
        &topology,
        &[
            "-s",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            PEER_V4,
            "-r",
            PEER_PORT,
            "-n",
            "40",
            "-m",
            "1",
            "-l",
            "160",
            "-z",
            "5",
            "-c",
        ],
        LISTENER_V4,
    );
    assert_eq!(
        (sent, received, lost),
        (40, 40, 0),
        "uclient send indications"
    );

    let log = stop(relay, &log);
    assert!(log.contains("data plane: XDP"), "XDP was attached:\n{log}");
    assert_eq!(
        xdp_packets(&log, "relayed_to_peer"),
        channel_datagrams,
        "every ChannelData went client→peer in XDP"
    );
    assert_eq!(
        xdp_packets(&log, "relayed_to_client"),
        channel_datagrams,
        "every echo went peer→client in XDP"
    );
    assert_eq!(xdp_packets(&log, "no_route"), 0);
    // Userspace relayed exactly the Send/Data indication traffic, none of the channel traffic.
    assert_eq!(userspace(&log, "relayed_to_peer_packets"), 40);
    assert_eq!(userspace(&log, "relayed_to_client_packets"), 40);
}

#[test]
fn an_expired_binding_stops_kernel_relaying() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let log = log_path("xdp-expiry");
    // Allocations live 2 s at most: the binding goes when the allocation expires.
    let relay = start_xdp_relay(
        &topology,
        &log,
        &["--max-lifetime-secs", "2", "--default-lifetime-secs", "2"],
    );

    let peer: SocketAddr = format!("{PEER_V4}:{PEER_PORT}").parse().expect("peer");
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let (relayed_before, after_expiry) = topology.client.within(|| {
        block_on(async {
            let mut client =
                TurnClient::connect(server, ClientCredentials::new("alice", "wonderland"))
                    .await
                    .expect("connect");
            let allocation = client
                .allocate(AllocateOptions::default())
                .await
                .expect("allocate");
            assert!(
                allocation.lifetime <= Duration::from_secs(2),
                "lifetime clamped: {allocation:?}"
            );
            client
                .channel_bind(peer, 0x4000)
                .await
                .expect("channel bind");
            let mut echoed = 0;
            for i in 0..10u8 {
                client.send_channel(0x4000, &[i; 64]).await.expect("send");
                if let Ok(r) = client.recv_timeout(Duration::from_secs(1)).await {
                    assert_eq!(r.via, Via::Channel(0x4000));
                    echoed += 1;
                }
            }
            // Let the allocation (and with it the binding) expire, then try again.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut late = 0;
            for i in 0..5u8 {
                client.send_channel(0x4000, &[i; 64]).await.expect("send");
                if client
                    .recv_timeout(Duration::from_millis(300))
                    .await
                    .is_ok()
                {
                    late += 1;
                }
            }
            (echoed, late)
        })
    });
    assert_eq!(relayed_before, 10, "relayed while bound");
    assert_eq!(after_expiry, 0, "nothing relayed after expiry");

    let log = stop(relay, &log);
    assert_eq!(
        xdp_packets(&log, "relayed_to_peer"),
        10,
        "only the bound datagrams in XDP"
    );
    assert_eq!(
        xdp_packets(&log, "channel_unbound"),
        5,
        "after expiry the kernel passes them up"
    );
    assert_eq!(
        userspace(&log, "relayed_to_peer_packets"),
        0,
        "and userspace drops them"
    );
}

#[test]
fn auto_mode_falls_back_to_userspace_for_wildcard_listeners() {
    let topology = Topology::new();
    let log = log_path("auto-wildcard");
    let relay = topology.start_xturnd_logged(
        &[
            "--listen",
            "0.0.0.0:3478",
            "--relay-ip",
            RELAY_V4,
            "--user",
            "alice:wonderland",
            "--dataplane",
            "auto",
            "--log-level",
            "info",
        ],
        &log,
    );
    let log = stop(relay, &log);
    assert!(log.contains("data plane: userspace"), "{log}");

    // `--dataplane xdp` refuses it outright, with a message that says why.
    let out = Command::new(binary("xturnd"))
        .args([
            "--listen",
            "0.0.0.0:3478",
            "--relay-ip",
            RELAY_V4,
            "--user",
            "a:b",
            "--dataplane",
            "xdp",
        ])
        .output()
        .expect("run xturnd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("specific addresses"), "{stderr}");
}

#[test]
fn tcpdump_verifies_checksums_of_kernel_relayed_datagrams() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let log = log_path("xdp-tcpdump");
    let relay = start_xdp_relay(&topology, &log, &[]);

    // tcpdump verifies IP and UDP checksums with -vv ("udp sum ok" / "bad udp cksum").
    let capture = |ns: &xturn_tests::netns::NetNs, ifname: &str, filter: &str| {
        ns.command(
            "timeout",
            &[
                "15", "tcpdump", "-l", "-n", "-vv", "-i", ifname, "-c", "30", filter,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tcpdump")
    };
    // Datagrams the relay sends to the peer (from relayed addresses) and to the client (from the
    // listener): exactly the ones the XDP program wrote.
    let at_peer = capture(
        &topology.peer,
        "xtp0",
        "udp and (src host 198.18.2.1 or src host 2001:db8:2::1)",
    );
    // Only the relayed ChannelData (≥ 246-byte frames for 200-byte pings): xturnd's own STUN
    // responses leave its socket with checksum offload, so a capture on a veth shows them with
    // the partial checksum the kernel never completes there ("bad udp cksum", a capture artefact).
    let at_client = capture(
        &topology.client,
        "xtc0",
        "udp and src port 3478 and greater 240",
    );
    std::thread::sleep(Duration::from_millis(500));
    xturnctl_ping(
        &topology,
        "198.18.1.1:3478",
        &format!("{PEER_V4}:{PEER_PORT}"),
        "channel",
        "10",
    );
    xturnctl_ping(
        &topology,
        &format!("[{LISTENER_V6}]:3478"),
        &format!("[{PEER_V6}]:{PEER_PORT}"),
        "channel",
        "10",
    );
    xturnctl_ping(
        &topology,
        "198.18.1.1:3478",
        &format!("[{PEER_V6}]:{PEER_PORT}"),
        "channel",
        "10",
    );
    for (what, child) in [("peer side", at_peer), ("client side", at_client)] {
        let out = child.wait_with_output().expect("tcpdump");
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.matches("udp sum ok").count();
        assert!(
            !text.contains("bad udp cksum") && !text.contains("bad cksum"),
            "{what}:\n{text}"
        );
        assert!(
            ok >= 30,
            "{what}: {ok} datagrams with verified checksums:\n{text}"
        );
    }
    let log = stop(relay, &log);
    assert!(xdp_packets(&log, "relayed_to_peer") >= 30);
}

#[test]
fn kernel_log_records_reach_the_agent_log() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let log = log_path("xdp-log");
    let relay = start_xdp_relay(&topology, &log, &["--log-level", "debug"]);
    let peer: SocketAddr = format!("{PEER_V4}:{PEER_PORT}").parse().expect("peer");
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    topology.client.within(|| {
        block_on(async {
            let client = xturn_tests::clients::bound_client(server, peer, 0x4000).await;
            // A bound channel whose length field claims 256 bytes in a 4-byte datagram.
            client
                .send_raw(&[0x40, 0x00, 0x01, 0x00, 1, 2, 3, 4])
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    });
    let log = stop(relay, &log);
    assert_eq!(xdp_packets(&log, "channel_malformed"), 1);
    assert!(
        log.contains("dropped ChannelData whose length exceeds its datagram"),
        "the XDP program's aya-log record is in xturnd's log:\n{log}"
    );
}

#[test]
fn two_clients_of_one_relay_reach_each_other_through_the_kernel() {
    // The common WebRTC case: both ends use the same relay, so each one's peer is the other's
    // relayed address. The XDP program relays that hairpin without the stack.
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let log = log_path("xdp-hairpin");
    let relay = start_xdp_relay(&topology, &log, &[]);
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let rounds = hairpin_rounds(&topology.client, server, 20);
    let log = stop(relay, &log);
    let counters: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kernel counter") && !l.contains("packets=0"))
        .collect();
    assert_eq!(
        rounds, 20,
        "every round trip completed; XDP counters: {counters:#?}"
    );
    assert_eq!(
        xdp_packets(&log, "relayed_hairpin"),
        40,
        "both directions hairpinned in XDP"
    );
    assert_eq!(userspace(&log, "relayed_to_peer_packets"), 0);
}

/// TCP clients' channels stay in userspace (the kernel speaks plain UDP to clients) while UDP
/// clients' channels of the same relay run in XDP, on the same address and port.
#[test]
fn tcp_clients_stay_in_userspace_next_to_the_fast_path() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let log = log_path("xdp-tcp");
    let relay = start_xdp_relay(&topology, &log, &["--listen", "tcp://198.18.1.1:3478"]);
    let channels = |transport: &[&str]| {
        let mut args = transport.to_vec();
        args.extend([
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            PEER_V4,
            "-r",
            PEER_PORT,
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "160",
            "-z",
            "5",
            "-c",
        ]);
        let r = uclient(&topology, &args, LISTENER_V4);
        assert_eq!((r.sent, r.received, r.lost), (50, 50, 0), "{transport:?}");
    };
    channels(&[]);
    channels(&["-t"]);
    let log = stop(relay, &log);
    assert!(log.contains("data plane: XDP"), "XDP was attached:\n{log}");
    assert_eq!(
        xdp_packets(&log, "relayed_to_peer"),
        50,
        "the UDP client's channel data"
    );
    assert_eq!(
        xdp_packets(&log, "relayed_to_client"),
        50,
        "the UDP client's echoes"
    );
    assert_eq!(
        userspace(&log, "relayed_to_peer_packets"),
        50,
        "the TCP client's"
    );
    assert_eq!(
        userspace(&log, "relayed_to_client_packets"),
        50,
        "the TCP client's echoes"
    );
}
