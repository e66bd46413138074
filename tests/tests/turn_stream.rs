//! `xturnd` over TCP, TLS and DTLS, in network namespaces, with real clients: coturn's
//! `turnutils_uclient` (`-t` TCP, `-t -S` TLS, `-S` DTLS) and `aioice` over TCP; a slowloris /
//! half-open client next to a good one; a certificate swapped under a live TLS session. Needs
//! root. Relayed transport to peers is UDP throughout.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use xturn_tests::{
    certificates::certificate,
    clients::{
        PEER_PORT, assert_alive, assert_no_loss, log_path, start_echo_peers, uclient,
        uclient_command, uclient_totals,
    },
    netns::ChildGuard,
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology},
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xturn-stream-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// What each test runs against: echo peers and [`start_relay`]'s xturnd with a fresh
/// certificate `relay.crt`/`relay.key` in a scratch directory (removed with the stage).
struct Stage {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    relay: ChildGuard,
    _peers: Vec<ChildGuard>,
    topology: Topology,
}

impl Stage {
    /// `extra`: more xturnd arguments; the relay logs to `log_path("stream-{tag}")`.
    fn new(tag: &str, extra: &[&str]) -> Stage {
        let dir = scratch_dir(tag);
        let (cert, key) = certificate(&dir, "relay");
        let topology = Topology::new();
        let peers = start_echo_peers(&topology);
        let relay = start_relay(
            &topology,
            &cert,
            &key.display().to_string(),
            extra,
            &format!("stream-{tag}"),
        );
        Stage {
            dir,
            cert,
            key,
            relay,
            _peers: peers,
            topology,
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// xturnd with a UDP listener (the readiness probe's), TCP on 3478, TLS and DTLS on 5349.
fn start_relay(
    topology: &Topology,
    cert: &Path,
    key: &str,
    extra: &[&str],
    log: &str,
) -> ChildGuard {
    let mut args = vec![
        "--listen".to_owned(),
        format!("{LISTENER_V4}:3478"),
        "--listen".to_owned(),
        format!("tcp://{LISTENER_V4}:3478"),
        "--listen".to_owned(),
        format!("tls://{LISTENER_V4}:5349"),
        "--listen".to_owned(),
        format!("dtls://{LISTENER_V4}:5349"),
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.to_owned(),
        "--relay-ip".to_owned(),
        RELAY_V4.to_owned(),
        "--realm".to_owned(),
        "xturn.test".to_owned(),
        "--user".to_owned(),
        format!("{USER}:{PASSWORD}"),
        "--min-port".to_owned(),
        "50000".to_owned(),
        "--max-port".to_owned(),
        "50999".to_owned(),
        "--dataplane".to_owned(),
        "userspace".to_owned(),
        "--log-level".to_owned(),
        "info,relay_user=debug".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topology.start_xturnd_logged(&args, &log_path(log))
}

fn log_text(name: &str) -> String {
    std::fs::read_to_string(log_path(name)).unwrap_or_default()
}

#[test]
fn uclient_over_tcp_with_padded_channel_data() {
    let mut stage = Stage::new("tcp", &[]);
    let topology = &stage.topology;
    // 121-byte messages: every ChannelData message carries 3 bytes of padding on the stream.
    let r = uclient(
        topology,
        &[
            "-t", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n", "50", "-m",
            "2", "-l", "121", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("TCP, channels", &r, 100);
    // And with Send/Data indications.
    let r = uclient(
        topology,
        &[
            "-t", "-s", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n", "50",
            "-m", "1", "-l", "100", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("TCP, send indications", &r, 100);
    assert_alive(&mut stage.relay);
}

#[test]
fn uclient_over_tls_and_dtls() {
    let mut stage = Stage::new("tls", &[]);
    let topology = &stage.topology;
    let r = uclient(
        topology,
        &[
            "-t", "-S", "-p", "5349", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT,
            "-n", "50", "-m", "2", "-l", "121", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("TLS", &r, 100);
    let r = uclient(
        topology,
        &[
            "-S", "-p", "5349", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n",
            "50", "-m", "2", "-l", "121", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("DTLS", &r, 100);
    assert_alive(&mut stage.relay);
}

#[test]
fn aioice_over_tcp() {
    let mut stage = Stage::new("aioice", &[]);
    let topology = &stage.topology;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/aioice_roundtrip.py");
    let out = topology
        .client
        .command(
            "timeout",
            &[
                "30",
                "python3",
                script,
                LISTENER_V4,
                "3478",
                USER,
                PASSWORD,
                PEER_V4,
                PEER_PORT,
                "20",
                "tcp",
            ],
        )
        .output()
        .expect("run aioice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aioice over TCP failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sent=20 received=20 intact=True"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("relayed={RELAY_V4}:")), "{stdout}");
    assert_alive(&mut stage.relay);
}

/// Opens a TCP connection to the relay from the client namespace.
fn connect(topology: &Topology, port: u16) -> TcpStream {
    let addr: SocketAddr = format!("{LISTENER_V4}:{port}").parse().expect("address");
    topology
        .client
        .within(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .expect("connect")
}

/// Whether the server closed `stream` within `within` (a read returns 0 or an error).
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    while start.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn slowloris_and_half_open_clients_do_not_disturb_a_good_one() {
    let mut stage = Stage::new(
        "slowloris",
        &[
            "--max-connections",
            "40",
            "--idle-timeout-secs",
            "60",
            "--metrics-listen",
            &format!("{LISTENER_V4}:9100"),
        ],
    );
    let topology = &stage.topology;
    // 20 slowloris connections, each trickling a STUN header one byte at a time, 10 half-open
    // TCP connections that never send, and 5 half-open TLS connections that never handshake.
    let header = [
        0x00u8, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    let mut slow: Vec<TcpStream> = (0..20).map(|_| connect(topology, 3478)).collect();
    let mut silent: Vec<TcpStream> = (0..10).map(|_| connect(topology, 3478)).collect();
    silent.extend((0..5).map(|_| connect(topology, 5349)));
    let trickle = std::thread::spawn(move || {
        // One byte per connection every 300 ms: never a complete message (bounded: 16 bytes).
        for byte in header {
            for s in &mut slow {
                let _ = s.write_all(&[byte]);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        slow
    });
    // Meanwhile a good client is served in full.
    let r = uclient(
        topology,
        &[
            "-t", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT, "-n", "100", "-m",
            "2", "-l", "120", "-z", "5",
        ],
        LISTENER_V4,
    );
    assert_no_loss("good TCP client next to 35 stalled ones", &r, 200);
    let mut slow = trickle.join().expect("trickle thread");
    // Every stalled connection is closed by the relay: none delivered a message within the
    // 10 s allowed for the first one.
    for s in slow.iter_mut().chain(silent.iter_mut()) {
        assert!(
            closed_within(s, Duration::from_secs(15)).is_some(),
            "a stalled connection stayed open"
        );
    }
    // The connection limit: 40 held open, the 41st is closed at once.
    let held: Vec<TcpStream> = (0..40).map(|_| connect(topology, 3478)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect(topology, 3478);
    let closed = closed_within(&mut extra, Duration::from_secs(2));
    assert!(closed.is_some(), "the 41st connection was not refused");
    // The metrics count what happened to the listener's connections.
    let metrics = http_get(topology, 9100, "/metrics");
    let tcp = "listener=\"tcp-1\"".to_owned();
    let value = |event: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("xturn_connection_events_total")
                    && l.contains(&tcp)
                    && l.contains(&format!("event=\"{event}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {event} in:\n{metrics}"))
    };
    assert!(
        value("timed_out") >= 30,
        "30 stalled TCP connections timed out"
    );
    assert!(value("refused") >= 1, "the 41st was refused");
    assert!(value("accepted") >= 70);
    drop(held);
    assert_alive(&mut stage.relay);
    let log = log_text("stream-slowloris");
    assert!(
        log.contains("without a complete message in time"),
        "timeouts logged"
    );
    assert!(
        log.contains("connection refused: listener at its connection limit"),
        "limit logged"
    );
}

/// One client address holds at most `--max-connections-per-ip` connections on a listener: the
/// next is closed at once and counted; a closed one frees its place.
#[test]
fn connections_per_client_address_are_capped() {
    let mut stage = Stage::new(
        "per-ip",
        &[
            "--max-connections-per-ip",
            "5",
            "--metrics-listen",
            &format!("{LISTENER_V4}:9100"),
        ],
    );
    let topology = &stage.topology;
    let mut held: Vec<TcpStream> = (0..5).map(|_| connect(topology, 3478)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut sixth = connect(topology, 3478);
    assert!(
        closed_within(&mut sixth, Duration::from_secs(2)).is_some(),
        "the sixth connection from one address was not refused"
    );
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_millis(300)).is_none(),
            "a connection within the cap was closed"
        );
    }
    // One goes: its place is free again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let mut again = connect(topology, 3478);
    assert!(
        closed_within(&mut again, Duration::from_secs(1)).is_none(),
        "a connection in a freed place was refused"
    );
    let metrics = http_get(topology, 9100, "/metrics");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("xturn_connection_events_total")
                && l.contains("listener=\"tcp-1\"")
                && l.contains("event=\"refused_per_ip\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(refused, Some(1), "{metrics}");
    drop(held);
    drop(again);
    assert_alive(&mut stage.relay);
    assert!(
        log_text("stream-per-ip")
            .contains("connection refused: its address has the most connections"),
        "refusal logged"
    );
}

/// GET `path` from the relay's LISTENER_V4:`port` (HTTP/1.1, from the client namespace).
fn http_get(topology: &Topology, port: u16, path: &str) -> String {
    let mut stream = connect(topology, port);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The SHA-256 fingerprint of the certificate the TLS listener presents to a new client.
fn served_fingerprint(topology: &Topology) -> String {
    let out = topology
        .client
        .command(
            "sh",
            &[
                "-c",
                &format!(
                    "timeout 10 openssl s_client -connect {LISTENER_V4}:5349 </dev/null 2>/dev/null \
                     | openssl x509 -noout -fingerprint -sha256"
                ),
            ],
        )
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn certificate_reload_keeps_live_tls_sessions() {
    let mut stage = Stage::new("reload", &[]);
    let topology = &stage.topology;
    let first = fingerprint(&stage.cert);
    assert_eq!(served_fingerprint(topology), first);
    // A TLS client relaying for ~6 s while the certificate is replaced under it.
    let client = uclient_command(
        topology,
        &[
            "-t", "-S", "-p", "5349", "-u", USER, "-w", PASSWORD, "-e", PEER_V4, "-r", PEER_PORT,
            "-n", "300", "-m", "1", "-l", "120", "-z", "20",
        ],
        LISTENER_V4,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start turnutils_uclient");
    std::thread::sleep(Duration::from_secs(2));
    let (new_cert, new_key) = certificate(&stage.dir, "second");
    // Replace the files the way a Secret update does: new files renamed into place.
    std::fs::rename(&new_key, &stage.key).expect("swap key");
    std::fs::rename(&new_cert, &stage.cert).expect("swap cert");
    let second = fingerprint(&stage.cert);
    assert_ne!(first, second);
    // New handshakes get the new certificate (the relay looks at the files every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_fingerprint(topology) != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The session that started with the old certificate went on undisturbed.
    let out = client.wait_with_output().expect("turnutils_uclient");
    let r = uclient_totals(&out, "the TLS client");
    assert_no_loss("TLS session across a certificate reload", &r, 600);
    assert!(log_text("stream-reload").contains("certificate reloaded"));
    assert_alive(&mut stage.relay);
}
