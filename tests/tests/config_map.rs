//! `xturnd --config-map`: the configuration read from a ConfigMap through the Kubernetes API
//! and its changes applied as they are published, without dropping live allocations. The API
//! server is a stand-in ([`FakeApiServer`]: get, list, watch of one ConfigMap over HTTP) on the
//! relay namespace's loopback; no cluster is available here. Needs root.
use std::time::{Duration, Instant};

use xturn_tests::{
    clients::{PEER_PORT, log_path, start_echo_peers, xturnctl_ping, xturnctl_ping_command},
    fake_kube::FakeApiServer,
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology, binary},
};

fn config(users: &[(&str, &str)]) -> String {
    // Static credentials take one user; the second user comes with the change.
    let (user, password) = users[0];
    format!(
        "version: v1\nadmin: {{name: cm-test, loglevel: \"all:INFO\"}}\n\
         auth: {{type: static, realm: xturn.test, credentials: {{username: {user}, password: {password}}}}}\n\
         listeners:\n- {{name: udp, protocol: TURN-UDP, address: $STUNNER_ADDR, port: 3478, routes: [media]}}\n\
         clusters:\n- {{name: media, type: STATIC, protocol: UDP, endpoints: [{PEER_V4}]}}\n"
    )
}

/// Channel-mode echoes through the relay to the peer as `user` (`NAME:PASSWORD`).
fn ping(topology: &Topology, user: &str, count: &str) -> (bool, String) {
    let peer = format!("{PEER_V4}:{PEER_PORT}");
    xturnctl_ping(
        topology,
        &format!("{LISTENER_V4}:3478"),
        &[
            "--user",
            user,
            "--peer",
            &peer,
            "--count",
            count,
            "--interval-ms",
            "20",
            "--mode",
            "channel",
        ],
    )
}

#[test]
fn config_map_changes_apply_within_a_second_and_keep_allocations() {
    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    let listener = topology
        .relay
        .within(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the fake API server");
    let api = FakeApiServer::start(
        listener,
        "stunner",
        "gw",
        "stunnerd.conf",
        &config(&[("alice", "one")]),
    );
    let kubeconfig = std::env::temp_dir().join(format!("xturn-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig);
    let log = log_path("config-map");
    let xturnd = binary("xturnd").display().to_string();
    let mut relay = topology.relay.spawn_logged(
        "env",
        &[
            &format!("KUBECONFIG={}", kubeconfig.display()),
            &format!("STUNNER_ADDR={LISTENER_V4}"),
            &xturnd,
            "--config-map",
            &api.reference(),
            "--relay-ip",
            RELAY_V4,
            "--dataplane",
            "userspace",
            "--min-port",
            "50000",
            "--max-port",
            "50999",
        ],
        &log,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        topology.wait_for_stun(Topology::listener(false), Duration::from_secs(10)),
        "xturnd did not start from the ConfigMap: {:?}\n{}",
        relay.child().try_wait(),
        log_text()
    );

    // A live allocation of alice's, relaying through the change (about 4 s of channel data).
    let peer = format!("{PEER_V4}:{PEER_PORT}");
    let live = xturnctl_ping_command(
        &topology,
        &format!("{LISTENER_V4}:3478"),
        &[
            "--user",
            "alice:one",
            "--peer",
            &peer,
            "--count",
            "200",
            "--interval-ms",
            "20",
            "--mode",
            "channel",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start xturnctl");
    let (ok, text) = ping(&topology, "bob:two", "3");
    assert!(!ok && text.contains("401"), "bob is not a user yet: {text}");
    std::thread::sleep(Duration::from_millis(1000));

    // Publish a change: bob replaces alice as the static user. Measure until bob is served.
    let published = Instant::now();
    api.set(&config(&[("bob", "two")]));
    let deadline = published + Duration::from_secs(10);
    let applied = loop {
        if log_text().contains("trigger=\"ConfigMap changed\"")
            || log_text().contains("trigger=ConfigMap changed")
        {
            break published.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the ConfigMap change was not applied:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("ConfigMap change applied {applied:?} after it was published");
    assert!(
        applied < Duration::from_secs(2),
        "applied after {applied:?}"
    );
    let (ok, text) = ping(&topology, "bob:two", "3");
    assert!(ok, "bob is a user now: {text}");

    // alice's allocation (made before the change) relayed on, every echo back.
    let out = live.wait_with_output().expect("xturnctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent=200 received=200 lost=0"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        relay.child().try_wait().expect("query xturnd").is_none(),
        "xturnd exited"
    );
    std::fs::remove_file(&kubeconfig).ok();
}
