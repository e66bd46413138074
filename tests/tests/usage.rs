//! Per-user usage end to end: two TURN REST users (`EXPIRY:alice`, `EXPIRY:bob`: the id part is
//! the user) relay with coturn's `turnutils_uclient` over UDP, where the kernel path (auto, on
//! default veths) relays every ChannelData datagram and echo, and over TCP (alice) and TLS
//! (bob), in userspace. `GET /usage` and the `xturn_user_*` series add up exactly to what their
//! clients sent and received, and a restart with `--state-dir` keeps every total. Needs root.
use std::path::PathBuf;

use serde_json::Value;
use xturn_tests::{
    admin::{http, metric, metric_sum, scrape},
    clients::{PEER_PORT, assert_no_loss, log_path, start_echo_peers, stream_xturnd_args, uclient},
    netns::ChildGuard,
    topology::{LISTENER_V4, PEER_V4, Topology},
};

const SECRET: &str = "usage-secret";
/// Bytes of every message the clients send (and the peers echo).
const LEN: u64 = 120;
const METRICS: &str = "198.18.1.1:9100";

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        for log in ["usage", "usage-restarted"] {
            let _ = std::fs::remove_file(log_path(log));
        }
    }
}

/// xturnd with UDP and TCP on 3478, TLS on 5349, TURN REST credentials, metrics, and its state
/// in `dir`.
fn start(topology: &Topology, dir: &std::path::Path, log: &str) -> ChildGuard {
    let state = dir.join("state").display().to_string();
    let args = stream_xturnd_args(
        dir,
        &[
            "--auth-secret",
            SECRET,
            "--metrics-listen",
            METRICS,
            "--state-dir",
            &state,
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topology.start_xturnd_logged(&args, &log_path(log))
}

/// `turnutils_uclient` as `user` (TURN REST) with `transport` flags: 2 sessions of 25
/// messages of [`LEN`] bytes through channels to the echo peer, none lost. Returns the
/// messages sent (each came back).
fn relay_as(topology: &Topology, user: &str, transport: &[&str]) -> u64 {
    let mut args = transport.to_vec();
    args.extend_from_slice(&[
        "-u", user, "-W", SECRET, "-e", PEER_V4, "-r", PEER_PORT, "-n", "25", "-m", "1", "-l",
        "120", "-z", "5",
    ]);
    let port = if transport.contains(&"-S") {
        "5349"
    } else {
        "3478"
    };
    args.extend_from_slice(&["-p", port]);
    let totals = uclient(topology, &args, LISTENER_V4);
    assert_no_loss(&format!("{user} {transport:?}"), &totals, 50);
    totals.sent
}

fn usage(topology: &Topology) -> Value {
    let (status, body) = http(&topology.relay, METRICS, "GET", "/usage", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn usage_adds_up_per_user_over_udp_tcp_and_tls_and_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("xturn-usage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let scratch = Scratch(dir.clone());
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let relay = start(&topology, &dir, "usage");
    assert!(
        topology.wait_for_stun(
            format!("{LISTENER_V4}:3478").parse().expect("server"),
            std::time::Duration::from_secs(10)
        ),
        "xturnd answers"
    );
    let before = scrape(&topology.relay, METRICS);

    // alice: UDP (the kernel path) and TCP; bob: UDP and TLS.
    let alice_udp = relay_as(&topology, "alice", &[]);
    let alice_tcp = relay_as(&topology, "alice", &["-t"]);
    let bob_udp = relay_as(&topology, "bob", &[]);
    let bob_tls = relay_as(&topology, "bob", &["-t", "-S"]);

    let after = scrape(&topology.relay, METRICS);
    let delta = |name: &str, labels: &[&str]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    assert!(
        after.contains("xturn_dataplane_info{mode=\"tc\"} 1"),
        "the kernel path runs:\n{after}"
    );
    assert_eq!(
        delta("xturn_tc_packets_total", &["reason=\"relayed_to_peer\""]),
        alice_udp + bob_udp,
        "every UDP ChannelData datagram was relayed in the kernel:\n{after}"
    );
    let report = usage(&topology);
    let log = std::fs::read_to_string(log_path("usage")).unwrap_or_default();
    for (user, sent) in [("alice", alice_udp + alice_tcp), ("bob", bob_udp + bob_tls)] {
        let u = &report["users"][user];
        let context = format!("{user}: {u}\n{report}");
        assert_eq!(u["to_peer"]["packets"], sent, "{context}");
        assert_eq!(u["to_peer"]["bytes"], sent * LEN, "{context}");
        assert_eq!(u["to_client"]["packets"], sent, "{context}");
        assert_eq!(u["to_client"]["bytes"], sent * LEN, "{context}");
        // As many as the log says were made for this user id (uclient makes three a run).
        let made = log
            .lines()
            .filter(|l| l.contains("allocation created"))
            .filter(|l| l.contains(&format!(":{user} ")))
            .count();
        assert!(made >= 2, "{context}");
        assert_eq!(u["allocations_total"], made, "{context}");
        let bytes = |direction: &str| {
            metric(
                &after,
                &format!(r#"xturn_user_bytes_total{{user="{user}",direction="{direction}"}}"#),
            )
        };
        assert_eq!(
            (bytes("to_peer"), bytes("to_client")),
            (sent * LEN, sent * LEN)
        );
    }
    assert_eq!(report["users"].as_object().map(|u| u.len()), Some(2));
    assert_eq!(report["untracked"]["to_peer"]["bytes"], 0);

    // A restart: every total is still there.
    let out = relay.terminate();
    assert!(out.status.success(), "xturnd stopped cleanly");
    let _relay = start(&topology, &dir, "usage-restarted");
    assert!(
        topology.wait_for_stun(
            format!("{LISTENER_V4}:3478").parse().expect("server"),
            std::time::Duration::from_secs(10)
        ),
        "xturnd answers again"
    );
    let restarted = usage(&topology);
    for user in ["alice", "bob"] {
        for field in ["allocations_total", "to_peer", "to_client"] {
            assert_eq!(
                restarted["users"][user][field], report["users"][user][field],
                "{user} {field} across the restart:\n{report}\n{restarted}"
            );
        }
    }
    drop(scratch);
}
