//! `xturnd` end to end over UDP, in network namespaces, with real clients: coturn's
//! `turnutils_uclient`, `aioice`, and `xturnctl`. Needs root.
//!
//! Every test builds its own [`Topology`] (client ⇄ relay ⇄ peer namespaces), so tests run in
//! parallel without sharing anything, and every namespace and process goes away with the test.
use std::{
    net::UdpSocket,
    process::{Command, Output},
};

use xturn_tests::{
    clients::{PEER_PORT, assert_alive, assert_no_loss, start_echo_peers, uclient},
    netns::ChildGuard,
    topology::{LISTENER_V4, LISTENER_V6, PEER_V4, PEER_V6, RELAY_V4, RELAY_V6, Topology, binary},
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const REST_SECRET: &str = "rest-api-secret";
const REALM: &str = "xturn.test";

/// `xturnd` on both listener families, relaying on both families, userspace data plane.
fn start_relay(topology: &Topology) -> ChildGuard {
    topology.start_xturnd(&[
        "--listen",
        &format!("{LISTENER_V4}:3478"),
        "--listen",
        &format!("[{LISTENER_V6}]:3478"),
        "--relay-ip",
        RELAY_V4,
        "--relay-ip",
        RELAY_V6,
        "--realm",
        REALM,
        "--user",
        &format!("{USER}:{PASSWORD}"),
        "--auth-secret",
        REST_SECRET,
        "--min-port",
        "50000",
        "--max-port",
        "50999",
        "--threads",
        "2",
        "--dataplane",
        "userspace",
        "--log-level",
        "info",
    ])
}

/// Runs a command with a time limit (it is killed after `secs`).
fn timeout_output(cmd: &Command, secs: u64) -> Output {
    let mut full = Command::new("timeout");
    full.arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    full.output().expect("run command under timeout")
}

#[test]
fn uclient_channels_static_credentials_ipv4() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    // uclient's total for `-m 2 -n 50` is 100 messages (coturn's own turnserver reports the same
    // for these arguments); with `-m 1` it counts RTP and RTCP sessions, 2 × n.
    let r = uclient(
        &topology,
        &[
            "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n", "50", "-m", "2",
            "-l", "120", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("channels, static, IPv4", &r, 100);
    assert_alive(&mut relay);
}

#[test]
fn uclient_send_indications_rest_credentials_ipv4() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let r = uclient(
        &topology,
        &[
            "-s",
            "-u",
            "bob",
            "-W",
            REST_SECRET,
            "-e",
            PEER_V4,
            "-r",
            PEER_PORT,
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "200",
            "-z",
            "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("send indications, REST, IPv4", &r, 100);
    assert_alive(&mut relay);
}

#[test]
fn uclient_channels_rest_credentials_ipv6() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let r = uclient(
        &topology,
        &[
            "-x",
            "-u",
            "carol",
            "-W",
            REST_SECRET,
            "-e",
            PEER_V6,
            "-r",
            PEER_PORT,
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "120",
            "-z",
            "5",
        ],
        LISTENER_V6,
    );
    assert_no_loss("channels, REST, IPv6", &r, 100);
    assert_alive(&mut relay);
}

#[test]
fn uclient_send_indications_static_ipv6() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let r = uclient(
        &topology,
        &[
            "-s", "-x", "-u", USER, "-w", PASSWORD, "-e", PEER_V6, "-r", PEER_PORT, "-n", "50",
            "-m", "1", "-l", "120", "-z", "5",
        ],
        LISTENER_V6,
    );
    assert_no_loss("send indications, static, IPv6", &r, 100);
    assert_alive(&mut relay);
}

#[test]
fn uclient_ipv4_client_with_ipv6_relayed_address() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let r = uclient(
        &topology,
        &[
            "-x", "-u", USER, "-w", PASSWORD, "-e", PEER_V6, "-r", PEER_PORT, "-n", "30", "-m",
            "1", "-l", "120", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("IPv4 client, IPv6 relay", &r, 60);
    assert_alive(&mut relay);
}

#[test]
fn aioice_allocation_and_channel_round_trip() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/aioice_roundtrip.py");
    let out = timeout_output(
        &topology.client.command(
            "python3",
            &[
                script,
                LISTENER_V4,
                "3478",
                USER,
                PASSWORD,
                PEER_V4,
                PEER_PORT,
                "20",
            ],
        ),
        30,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aioice round trip failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sent=20 received=20 intact=True"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("relayed={RELAY_V4}:")),
        "relayed on the relay IP: {stdout}"
    );
    assert_alive(&mut relay);
}

/// Runs `xturnctl ARGS` in the client namespace.
fn xturnctl(topology: &Topology, args: &[&str]) -> Output {
    timeout_output(
        &topology
            .client
            .command(&binary("xturnctl").to_string_lossy(), args),
        30,
    )
}

fn ping_args<'a>(server: &'a str, peer: &'a str, mode: &'a str, family: &'a str) -> Vec<&'a str> {
    vec![
        "ping",
        "--server",
        server,
        "--user",
        "alice:wonderland",
        "--peer",
        peer,
        "--count",
        "100",
        "--size",
        "160",
        "--interval-ms",
        "2",
        "--mode",
        mode,
        "--family",
        family,
    ]
}

/// The CPUs in a `Cpus_allowed_list` line of `/proc/*/status` ("0-1", "0,2-3").
fn cpus_allowed(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).expect("read a status file");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().expect("a CPU")..=b.parse::<usize>().expect("a CPU"));
    }
    cpus
}

/// `--threads 2` where xturnd may use exactly two CPUs runs the data plane in lanes: a thread
/// pinned to each CPU (docs/architecture.md, "Lanes"); with any other count, no thread is pinned.
fn assert_lanes(relay: &mut ChildGuard) {
    let pid = relay.child().id();
    let mut lanes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("xturnd's threads") {
        let dir = task.expect("a thread").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("xturn-lane-") {
            let status = dir.join("status");
            lanes.push(cpus_allowed(&status.to_string_lossy()));
        }
    }
    let allowed = cpus_allowed(&format!("/proc/{pid}/status"));
    if allowed.len() == 2 {
        lanes.sort();
        let expected: Vec<Vec<usize>> = allowed.iter().map(|&cpu| vec![cpu]).collect();
        assert_eq!(lanes, expected, "one lane pinned to each of {allowed:?}");
    } else {
        assert!(lanes.is_empty(), "no lanes on {allowed:?}: {lanes:?}");
    }
}

/// xturnd sized its descriptor table at start for its allocations' sockets (default
/// `--max-allocations` 10 000: 2 × 10 000 + 1 024 slots, within the open-files limit), so a
/// burst of Allocates never waits for the table to grow (`relay_user::descriptors`).
fn assert_descriptor_table(relay: &mut ChildGuard) {
    let pid = relay.child().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("xturnd's status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in xturnd's status"))
    };
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("xturnd's limits");
    let open_files: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("xturnd's open-files limit");
    let wanted = (2 * 10_000 + 1_024).min(open_files);
    let size = field("FDSize:");
    assert!(
        size >= wanted,
        "descriptor table of {size} slots, wanted {wanted}"
    );
}

#[test]
fn xturnctl_round_trips_channels_and_send_ipv4_and_ipv6() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    assert_lanes(&mut relay);
    assert_descriptor_table(&mut relay);
    let v4_server = format!("{LISTENER_V4}:3478");
    let v6_server = format!("[{LISTENER_V6}]:3478");
    let v4_peer = format!("{PEER_V4}:{PEER_PORT}");
    let v6_peer = format!("[{PEER_V6}]:{PEER_PORT}");
    for (server, peer, family) in [
        (&v4_server, &v4_peer, "ipv4"),
        (&v6_server, &v6_peer, "ipv6"),
    ] {
        for mode in ["channel", "send"] {
            let out = xturnctl(&topology, &ping_args(server, peer, mode, family));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "xturnctl ping {mode} {family}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("sent=100 received=100 lost=0"),
                "{mode} {family}: {stdout}"
            );
        }
    }
    assert_alive(&mut relay);
}

#[test]
fn hostile_input_gets_errors_and_the_good_client_keeps_being_served() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let mut relay = start_relay(&topology);
    let server = format!("{LISTENER_V4}:3478");

    // Garbage, truncated STUN, oversized attribute lengths and bogus ChannelData.
    topology.client.within(|| {
        let socket = UdpSocket::bind("198.18.1.2:0").expect("bind");
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for i in 0..2_000u32 {
            let len = (next() % 1400) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = datagram.first_mut() {
                // A third look like STUN, a third like ChannelData, the rest anything.
                match i % 3 {
                    0 => *first &= 0x03,
                    1 => *first = 0x40 | (*first & 0x0f),
                    _ => {}
                }
            }
            if i % 3 == 0 && datagram.len() >= 20 {
                datagram[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            let _ = socket.send_to(&datagram, &server);
        }
        // A STUN Allocate header whose attribute claims 65535 bytes.
        let mut huge = vec![0x00, 0x03, 0x00, 0x08];
        huge.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        huge.extend_from_slice(b"hostile-tid!");
        huge.extend_from_slice(&[0x00, 0x19, 0xff, 0xff, 0x11, 0, 0, 0]);
        let _ = socket.send_to(&huge, &server);
        // ChannelData on an unbound channel, and one whose length exceeds the datagram.
        let _ = socket.send_to(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4], &server);
        let _ = socket.send_to(&[0x40, 0x01, 0x05, 0xdc, 1, 2, 3, 4], &server);
    });

    // Wrong password: 401, and the process carries on.
    let v4_peer = format!("{PEER_V4}:{PEER_PORT}");
    let mut wrong = ping_args(&server, &v4_peer, "channel", "ipv4");
    wrong[4] = "alice:not-the-password";
    let out = xturnctl(&topology, &wrong);
    assert!(!out.status.success(), "a wrong password must not work");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("401"), "wrong password → 401: {text}");

    // Forbidden peers: loopback (plain and smuggled in IPv6 forms) and the relay's own listener.
    let listener = format!("{LISTENER_V4}:3478");
    for forbidden in [
        "127.0.0.1:3480",
        "0.0.0.0:3480",
        "[::ffff:127.0.0.1]:3480",
        // The relay host's own address on a port outside the relayed range (its own services).
        "198.18.2.1:22",
        listener.as_str(),
    ] {
        let family = if forbidden.starts_with('[') {
            "ipv6"
        } else {
            "ipv4"
        };
        let out = xturnctl(&topology, &ping_args(&server, forbidden, "channel", family));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "peer {forbidden} must be refused: {text}"
        );
        assert!(text.contains("403"), "peer {forbidden} → 403: {text}");
    }

    // After all that, a good client is served without loss.
    assert_alive(&mut relay);
    let out = xturnctl(&topology, &ping_args(&server, &v4_peer, "channel", "ipv4"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "good client after hostile input: {stdout}"
    );
    assert!(stdout.contains("sent=100 received=100 lost=0"), "{stdout}");
    let r = uclient(
        &topology,
        &[
            "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n", "20", "-m", "1",
            "-l", "100", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("uclient after hostile input", &r, 40);
    assert_alive(&mut relay);
}

#[test]
fn bad_configuration_is_one_clear_error_and_a_nonzero_exit() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--listen", "198.18.1.1:3478", "--user", "no-colon"],
            "--user",
        ),
        (&["--listen", "not-an-address", "--user", "a:b"], "--listen"),
        (
            &[
                "--listen",
                "198.18.1.1:3478",
                "--user",
                "a:b",
                "--min-port",
                "6000",
                "--max-port",
                "5000",
            ],
            "port",
        ),
    ];
    for (args, names) in cases {
        let out = Command::new(binary("xturnd"))
            .args(args)
            .output()
            .expect("run xturnd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(names),
            "{args:?}: the error names {names}: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 3,
            "{args:?}: one clear error, not a dump: {stderr}"
        );
    }
}

#[test]
fn xturnctl_allocate_reports_the_relayed_address_of_each_family() {
    let topology = Topology::new();
    let mut relay = start_relay(&topology);
    let server = format!("{LISTENER_V4}:3478");
    for (family, relayed) in [("ipv4", RELAY_V4), ("ipv6", RELAY_V6)] {
        let out = xturnctl(
            &topology,
            &[
                "allocate",
                "--server",
                &server,
                "--user",
                "alice:wonderland",
                "--family",
                family,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "allocate {family}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(relayed),
            "{family} allocation relayed on {relayed}: {stdout}"
        );
    }
    assert_alive(&mut relay);
}
