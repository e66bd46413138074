//! Configuration reload: a changed config file (watched) or SIGHUP applies new users, secrets,
//! routes and clusters without dropping live allocations, and ends at once the permissions and
//! channels a narrowed route refuses (in userspace and in the kernel); an invalid file is
//! rejected with a clear log line and the running configuration stays in force. Needs root.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use std::time::Instant;

use xturn_tests::{
    admin::{metric, metric_sum, scrape},
    clients::{block_on, bound_client_as},
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

/// xturnd in `topology` with a config file (alice, routed to the peer network) in a new
/// scratch directory named after `tag`, and `extra` arguments: the directory, the file, the log
/// and the process.
fn start_with_config(
    topology: &Topology,
    tag: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf, PathBuf, ChildGuard) {
    let dir = scratch_dir(tag);
    start_with_config_text(
        topology,
        &dir,
        &config_yaml("alice", "one", "198.18.2.0/24"),
        extra,
    )
}

/// The scratch directory of the test `tag`.
fn scratch_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xturn-{tag}-{}", std::process::id()))
}

/// [`start_with_config`] with the file's text given, in `dir`.
fn start_with_config_text(
    topology: &Topology,
    dir: &Path,
    text: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf, PathBuf, ChildGuard) {
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("xturnd.yaml");
    let log = dir.join("xturnd.log");
    write(&file, text);
    let file_arg = file.to_string_lossy().into_owned();
    let mut args = vec![
        "--config",
        &file_arg,
        "--relay-ip",
        RELAY_V4,
        "--min-port",
        "50000",
        "--max-port",
        "50999",
        "--drain-timeout",
        "0",
    ];
    args.extend_from_slice(extra);
    let relay = topology.start_xturnd_logged(&args, &log);
    (dir, file, log, relay)
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
    let (dir, file, log, mut relay) =
        start_with_config(&topology, "reload", &["--dataplane", "userspace"]);
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let peer: SocketAddr = format!("{PEER_V4}:3480").parse().expect("peer");

    topology.client.within(|| {
        block_on(async {
            // alice, live across every reload below.
            let mut alice =
                bound_client_as(server, peer, 0x4000, ClientCredentials::new("alice", "one")).await;
            assert_eq!(
                round_trip(&mut alice, 1).await.expect("relayed"),
                vec![1; 32]
            );

            // 1. The file changes (no signal): alice is replaced by bob, the route narrows. Her
            // allocation lives on until its next refresh, but her channel to a peer the route
            // no longer reaches ends at once.
            write(&file, &config_yaml("bob", "two", "198.18.3.0/24"));
            wait_for_log(&log, "configuration reloaded", 1);
            assert!(
                round_trip(&mut alice, 2).await.is_err(),
                "the narrowed route ended alice's channel"
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
        text.contains("trigger=\"a configuration or credential file changed\""),
        "{text}"
    );
    assert!(text.contains("SIGHUP"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With ChannelData flowing through the relay (the kernel's TC path on default veths, and the
/// userspace path), a reload that narrows the route ends the channel to the peer it no longer
/// reaches within a second: no echo comes back after that, and the metrics count the revoked
/// permission and channel.
#[test]
fn a_narrowed_route_ends_flowing_channels_within_a_second() {
    const METRICS: &str = "198.18.1.1:9100";
    for dataplane in ["auto", "userspace"] {
        let topology = Topology::plain(false);
        let _peer = topology
            .peer
            .spawn("turnutils_peer", &["-L", PEER_V4, "-p", "3480"]);
        let (dir, file, log, mut relay) = start_with_config(
            &topology,
            &format!("revoke-{dataplane}"),
            &["--dataplane", dataplane, "--metrics-listen", METRICS],
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(relay.child().id()).expect("pid"));
        let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
        let peer: SocketAddr = format!("{PEER_V4}:3480").parse().expect("peer");
        let (before, after, late) = topology.client.within(|| {
            block_on(async {
                let mut alice =
                    bound_client_as(server, peer, 0x4000, ClientCredentials::new("alice", "one"))
                        .await;
                // ChannelData every few milliseconds for 1.5 s, then the reload, then 2 s more.
                let start = Instant::now();
                let mut reloaded: Option<Instant> = None;
                let (mut before, mut after) = (0u32, 0u32);
                let mut late = Duration::ZERO;
                let mut round = 0u8;
                while start.elapsed() < Duration::from_millis(3500) {
                    round = round.wrapping_add(1);
                    alice
                        .send_channel(0x4000, &[round; 32])
                        .await
                        .expect("send");
                    if let Ok(received) = alice.recv_timeout(Duration::from_millis(20)).await
                        && received.data.len() == 32
                    {
                        match reloaded {
                            None => before += 1,
                            Some(at) => {
                                after += 1;
                                late = late.max(at.elapsed());
                            }
                        }
                    }
                    if reloaded.is_none() && start.elapsed() > Duration::from_millis(1500) {
                        write(&file, &config_yaml("alice", "one", "198.18.3.0/24"));
                        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
                            .expect("SIGHUP");
                        reloaded = Some(Instant::now());
                    }
                }
                (before, after, late)
            })
        });
        let text = wait_for_log(&log, "configuration reloaded", 1);
        let metrics = scrape(&topology.relay, METRICS);
        let context = format!(
            "{dataplane}: {before} echoes before, {after} after (the last {late:?} after the reload)\n{text}\n{metrics}"
        );
        assert!(before > 10, "traffic flowed before the reload: {context}");
        assert!(
            late <= Duration::from_secs(1),
            "echoes more than a second after the reload: {context}"
        );
        assert_eq!(
            metric(&metrics, "xturn_revoked_total{kind=\"channel\"}"),
            1,
            "{context}"
        );
        assert_eq!(
            metric(&metrics, "xturn_revoked_total{kind=\"permission\"}"),
            1,
            "{context}"
        );
        if dataplane == "auto" {
            // The channel was relayed in the kernel (TC on these default veths) before.
            assert!(
                metric_sum(
                    &metrics,
                    "xturn_tc_packets_total",
                    &["reason=\"relayed_to_peer\""]
                ) > 10,
                "{context}"
            );
        }
        eprintln!(
            "revocation, {dataplane}: {before} echoes before the reload, {after} after, the last {late:?} after it"
        );
        drop(relay);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A Secret volume as the kubelet writes it: the keys are symlinks through `..data` to a
/// timestamped directory, and an update writes a new directory and swaps `..data` in one
/// rename.
struct SecretVolume {
    root: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(root: PathBuf, data: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(&root).expect("volume dir");
        let mut volume = SecretVolume {
            root,
            generation: 0,
        };
        volume.update(data);
        for (key, _) in data {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.root.join(key))
                .expect("key symlink");
        }
        volume
    }

    fn update(&mut self, data: &[(&str, &str)]) {
        self.generation += 1;
        let version = format!("..2026_12_04_{:02}", self.generation);
        let dir = self.root.join(&version);
        std::fs::create_dir_all(&dir).expect("version dir");
        for (key, value) in data {
            std::fs::write(dir.join(key), value).expect("key file");
        }
        let staged = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&version, &staged).expect("staged link");
        std::fs::rename(&staged, self.root.join("..data")).expect("swap ..data");
        if self.generation > 1 {
            let old = self
                .root
                .join(format!("..2026_12_04_{:02}", self.generation - 1));
            std::fs::remove_dir_all(old).expect("old version");
        }
    }
}

/// Credentials from files (what the operator renders: its Secret mounted into the pod). A
/// rotation, written as the kubelet writes it, is taken within about a second, with no restart
/// and no signal: the new password authenticates, the old one no longer does, and a live
/// allocation keeps relaying.
#[test]
fn rotated_credential_files_are_taken_without_a_restart() {
    let topology = Topology::new();
    let _peer = topology
        .peer
        .spawn("turnutils_peer", &["-L", PEER_V4, "-p", "3480"]);
    let dir = scratch_dir("rotation");
    let mut volume = SecretVolume::new(
        dir.join("auth"),
        &[("username", "alice\n"), ("password", "one\n")],
    );
    let auth = dir.join("auth");
    let config = config_yaml("alice", "one", "198.18.2.0/24").replace(
        "    username: alice\n    password: one\n",
        &format!(
            "    username_file: {}/username\n    password_file: {}/password\n",
            auth.display(),
            auth.display()
        ),
    );
    assert!(config.contains("password_file"), "{config}");
    let (_, _, log, _relay) =
        start_with_config_text(&topology, &dir, &config, &["--dataplane", "userspace"]);
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let peer: SocketAddr = format!("{PEER_V4}:3480").parse().expect("peer");
    let taken = topology.client.within(|| {
        block_on(async {
            let mut alice =
                bound_client_as(server, peer, 0x4000, ClientCredentials::new("alice", "one")).await;
            assert_eq!(round_trip(&mut alice, 1).await.expect("relayed"), [1; 32]);

            volume.update(&[("username", "alice\n"), ("password", "two\n")]);
            let rotated = Instant::now();
            // The new password works within a few seconds (polled every 100 ms).
            let taken = loop {
                let mut client =
                    TurnClient::connect(server, ClientCredentials::new("alice", "two"))
                        .await
                        .expect("connect");
                match client.allocate(AllocateOptions::default()).await {
                    Ok(_) => break rotated.elapsed(),
                    Err(e)
                        if e.code() == Some(401) && rotated.elapsed() < Duration::from_secs(5) =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("the rotated password was not taken in 5 s: {e:?}"),
                }
            };
            // The old one no longer authenticates.
            let mut stale = TurnClient::connect(server, ClientCredentials::new("alice", "one"))
                .await
                .expect("connect");
            match stale.allocate(AllocateOptions::default()).await {
                Err(e) if e.code() == Some(401) => {}
                other => panic!("the old password still authenticates: {other:?}"),
            }
            // The allocation made before the rotation still relays.
            assert_eq!(round_trip(&mut alice, 2).await.expect("relayed"), [2; 32]);
            taken
        })
    });
    let text = wait_for_log(&log, "a configuration or credential file changed", 1);
    assert!(
        !text.contains("one\n") && !text.contains("\"two\""),
        "no password in the log"
    );
    eprintln!("rotated credentials taken after {} ms", taken.as_millis());
    assert!(taken < Duration::from_secs(3), "{taken:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
