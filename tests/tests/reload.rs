//! Configuration reload: a changed config file (watched) or SIGHUP applies new users, secrets,
//! routes and clusters without dropping live allocations; an invalid file is rejected with a
//! clear log line and the running configuration stays in force. Needs root.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use xturn_tests::{
    clients::block_on,
    netns::ChildGuard,
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology},
};
use xturnctl::{AllocateOptions, ClientCredentials, ClientError, TurnClient};

/// A STUNner-shaped dataplane configuration: one static user, one listener routed to `cluster`.
fn config_yaml(user: &str, password: &str, cluster: &str) -> String {
    format!(
        r#"version: v1
admin:
  name: reload-test
  loglevel: all:INFO
auth:
  type: static
  realm: xturn.test
  credentials:
    username: {user}
    password: {password}
listeners:
  - name: udp
    protocol: TURN-UDP
    address: {LISTENER_V4}
    port: 3478
    routes: [media]
clusters:
  - name: media
    type: STATIC
    protocol: udp
    endpoints: ["{cluster}"]
"#
    )
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do: the watcher never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn sighup(relay: &mut ChildGuard) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(relay.child().id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
}

/// Waits until xturnd's log contains `needle` `count` times.
fn wait_for_log(log: &Path, needle: &str, count: usize) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "xturnd never logged {needle:?} {count} time(s):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// ChannelData on 0x4000 and its echo.
async fn round_trip(client: &mut TurnClient, round: u8) -> Result<Vec<u8>, ClientError> {
    client.send_channel(0x4000, &[round; 32]).await?;
    client
        .recv_timeout(Duration::from_secs(2))
        .await
        .map(|r| r.data)
}

#[test]
fn reload_applies_users_and_routes_keeps_allocations_and_rejects_bad_files() {
    let topology = Topology::new();
    let _peer = topology
        .peer
        .spawn("turnutils_peer", &["-L", PEER_V4, "-p", "3480"]);
    let dir = std::env::temp_dir().join(format!("xturn-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file: PathBuf = dir.join("xturnd.yaml");
    let log = dir.join("xturnd.log");
    write(&file, &config_yaml("alice", "one", "198.18.2.0/24"));
    let mut relay = topology.start_xturnd_logged(
        &[
            "--config",
            &file.to_string_lossy(),
            "--relay-ip",
            RELAY_V4,
            "--min-port",
            "50000",
            "--max-port",
            "50999",
            "--dataplane",
            "userspace",
            "--drain-timeout",
            "0",
        ],
        &log,
    );
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let peer: SocketAddr = format!("{PEER_V4}:3480").parse().expect("peer");

    topology.client.within(|| {
        block_on(async {
            // alice, live across every reload below.
            let mut alice = TurnClient::connect(server, ClientCredentials::new("alice", "one"))
                .await
                .expect("connect");
            alice
                .allocate(AllocateOptions::default())
                .await
                .expect("alice allocates");
            alice.channel_bind(peer, 0x4000).await.expect("alice binds");
            assert_eq!(
                round_trip(&mut alice, 1).await.expect("relayed"),
                vec![1; 32]
            );

            // 1. The file changes (no signal): alice is replaced by bob, the route narrows.
            write(&file, &config_yaml("bob", "two", "198.18.3.0/24"));
            wait_for_log(&log, "configuration reloaded", 1);
            assert_eq!(
                round_trip(&mut alice, 2)
                    .await
                    .expect("alice's live allocation relays"),
                vec![2; 32]
            );
            let mut bob = TurnClient::connect(server, ClientCredentials::new("bob", "two"))
                .await
                .expect("connect");
            bob.allocate(AllocateOptions::default())
                .await
                .expect("bob is a user now");
            match bob.channel_bind(peer, 0x4000).await {
                Err(ClientError::ErrorResponse { code: 403, .. }) => {}
                other => panic!("the narrowed route refuses 198.18.2.2: {other:?}"),
            }
            let mut alice_again =
                TurnClient::connect(server, ClientCredentials::new("alice", "one"))
                    .await
                    .expect("connect");
            match alice_again.allocate(AllocateOptions::default()).await {
                Err(e) if e.code() == Some(401) => {}
                other => panic!("alice is no longer a user: {other:?}"),
            }

            // 2. An invalid file, then SIGHUP: rejected, bob and the live allocation unaffected.
            write(
                &file,
                "version: v1\nlisteners: [ {name: udp, protocol: TURN-UDP, port: 0} ]\nbogus: 1\n",
            );
            sighup(&mut relay);
            wait_for_log(&log, "configuration reload rejected", 1);
            assert_eq!(
                round_trip(&mut alice, 3).await.expect("still relayed"),
                vec![3; 32]
            );
            let mut bob2 = TurnClient::connect(server, ClientCredentials::new("bob", "two"))
                .await
                .expect("connect");
            bob2.allocate(AllocateOptions::default())
                .await
                .expect("bob still a user");
        });
    });
    let status = relay.child().try_wait().expect("status");
    assert!(status.is_none(), "xturnd still running: {status:?}");
    let out = relay.terminate();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("trigger=\"config file changed\"") || text.contains("config file changed"),
        "{text}"
    );
    assert!(text.contains("SIGHUP"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
