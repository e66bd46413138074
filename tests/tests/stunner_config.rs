//! The dataplane configuration STUNner's operator renders (`stunnerd.conf`, v1), given to the
//! real `xturnd` as its `--config`, unchanged but for two listener ports turned into `$VAR`s
//! (which is itself the test of `$VAR` expansion in numbers): `$STUNNER_ADDR` for every
//! listener address, inline base64 certificates for TURN-TLS and TURN-DTLS, STATIC clusters in
//! STUNner's `IP:<min-max>` syntax and a STRICT_DNS cluster, TURN REST credentials with a `$`
//! in the secret. Each test runs xturnd in a network namespace of its own, on 127.0.0.1 (only
//! `lo`), so the config's fixed ports and admin endpoints are free. Needs root.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use turn_proto::auth::rest_password;
use xturn_tests::{
    admin::{http, metric, scrape},
    clients::{block_on, log_path, uclient_totals},
    netns::{ChildGuard, NetNs},
    topology::{binary, binding_request},
};
use xturnctl::{AllocateOptions, ClientCredentials, ClientError, TurnClient, Via};

const FIXTURE: &str = include_str!("../fixtures/stunner/stunnerd-rendered.json");
/// The fixture's shared secret, `$` and all: credentials are never expanded.
const SECRET: &str = "my-$ecret";
const LOCALHOST: &str = "127.0.0.1";
/// The UDP listener's port: `$STUNNER_PORT`, unset, so `STUNNER_PUBLIC_PORT`.
const UDP_PORT: u16 = 3479;
/// The TLS listener's port: `${TLS_PORT}`.
const TLS_PORT: u16 = 5349;
/// The TCP and DTLS listeners keep the fixture's ports.
const DTLS_PORT: u16 = 443;
/// The echo peer, on the relay's own address: it (and the port above it, where coturn's
/// client sends too) must be in the relayed port range.
const PEER_PORT: u16 = 50990;
const UDP_LISTENER: &str = "stunner/stunner-gateway/udp-listener";
const TLS_LISTENER: &str = "stunner/stunner-gateway/tls-listener";
const DNS_CLUSTER: &str = "stunner/media-dns";

/// The fixture with the UDP listener's port as `$STUNNER_PORT` and the TLS listener's as
/// `${TLS_PORT}` (unquoted: numbers after expansion, as stunnerd reads them), and `edit`.
fn config_text(edit: impl Fn(String) -> String) -> String {
    let text = FIXTURE
        .replacen("\"port\": 3478", "\"port\": $STUNNER_PORT", 1)
        .replacen("\"port\": 443", "\"port\": ${TLS_PORT}", 1);
    assert_eq!(text.matches("$STUNNER_PORT").count(), 1);
    assert_eq!(text.matches("${TLS_PORT}").count(), 1);
    edit(text)
}

/// xturnd in its namespace, its config file and log.
struct Agent {
    ns: NetNs,
    relay: Option<ChildGuard>,
    dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `xturnd --config` with `text`, the environment a STUNner pod has (`STUNNER_ADDR`,
    /// `STUNNER_PUBLIC_PORT`) and `TLS_PORT`; waits until it answers STUN.
    fn start(tag: &str, text: &str) -> Agent {
        let ns = NetNs::new(tag);
        let dir = std::env::temp_dir().join(format!("xturn-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let config = dir.join("stunnerd.conf");
        std::fs::write(&config, text).expect("write config");
        let log = log_path(tag);
        let xturnd = binary("xturnd");
        let args = [
            "-u",
            "STUNNER_PORT",
            "STUNNER_ADDR=127.0.0.1",
            "STUNNER_PUBLIC_PORT=3479",
            &format!("TLS_PORT={TLS_PORT}"),
            &xturnd.to_string_lossy(),
            "--config",
            &config.to_string_lossy(),
            // Peers on this namespace's loopback, admitted by the STRICT_DNS cluster.
            "--allow-loopback-peers",
            "--min-port",
            "50000",
            "--max-port",
            "50999",
            "--drain-timeout",
            "0",
            // STUNner's syntax, on the command line too.
            "--log-level",
            "all:DEBUG,turn:INFO",
        ];
        let relay = ns.spawn_logged("env", &args, &log);
        let mut agent = Agent {
            ns,
            relay: Some(relay),
            dir,
            log,
        };
        agent.wait_for_stun();
        agent
    }

    fn wait_for_stun(&mut self) {
        let server = udp_server();
        let answered = self.ns.within(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe socket");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            for _ in 0..100 {
                let _ = socket.send_to(&binding_request(), server);
                if let Ok((n, _)) = socket.recv_from(&mut buf)
                    && n >= 20
                    && buf[..2] == [0x01, 0x01]
                {
                    return true;
                }
            }
            false
        });
        if !answered {
            let status = self.relay.as_mut().map(|r| r.child().try_wait());
            panic!(
                "xturnd did not answer STUN (exit status {status:?}); log:\n{}",
                self.log_text()
            );
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn scrape(&self) -> String {
        scrape(&self.ns, "127.0.0.1:8080")
    }

    /// Stops xturnd; returns its log.
    fn stop(mut self) -> String {
        if let Some(relay) = self.relay.take() {
            let _ = relay.terminate();
        }
        self.log_text()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.relay.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn udp_server() -> SocketAddr {
    SocketAddr::new(LOCALHOST.parse().expect("ip"), UDP_PORT)
}

fn peer() -> SocketAddr {
    SocketAddr::new(LOCALHOST.parse().expect("ip"), PEER_PORT)
}

/// Waits until the echo peer answers.
fn wait_for_echo(ns: &NetNs) {
    let echoed = ns.within(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        (0..100).any(|_| {
            let _ = socket.send_to(b"ping", peer());
            socket.recv_from(&mut buf).is_ok()
        })
    });
    assert!(echoed, "the echo peer did not answer");
}

/// A TURN REST username with the timestamp last (`user:timestamp`), and its password.
fn rest_user_last(user: &str) -> ClientCredentials {
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let username = format!("{user}:{expires}");
    let password = rest_password(SECRET, &username);
    ClientCredentials::new(username, password)
}

/// coturn's `turnutils_uclient ARGS 127.0.0.1` in `ns` (at most 60 s): 20 messages per session
/// through the relay to the echo peer, no loss.
fn uclient_no_loss(ns: &NetNs, what: &str, args: &[&str]) {
    let peer_port = PEER_PORT.to_string();
    let mut all = vec!["60", "turnutils_uclient"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "-u", "bob", "-W", SECRET, "-e", LOCALHOST, "-r", &peer_port, "-n", "20", "-m", "1", "-l",
        "100", "-z", "5", LOCALHOST,
    ]);
    let out = ns
        .command("timeout", &all)
        .output()
        .expect("run turnutils_uclient");
    let totals = uclient_totals(&out, what);
    assert!(totals.sent >= 20, "{what}: {totals:?}");
    assert_eq!(totals.lost, 0, "{what}: {totals:?}");
    assert_eq!(totals.received, totals.sent, "{what}: {totals:?}");
}

#[test]
fn a_stunner_rendered_config_runs_unchanged() {
    let agent = Agent::start("stunner-rendered", &config_text(|t| t));
    let _peer = agent.ns.spawn(
        "turnutils_peer",
        &["-L", LOCALHOST, "-p", &PEER_PORT.to_string()],
    );
    wait_for_echo(&agent.ns);
    let (status, body) = http(&agent.ns, "127.0.0.1:8086", "GET", "/ready", "");
    assert_eq!(status, 200, "{body}");

    // One allocation over UDP ($STUNNER_PORT), TURN REST credentials in `user:timestamp`
    // order; the peer is admitted by the STRICT_DNS cluster (localhost).
    agent.ns.within(|| {
        block_on(async {
            let mut client = TurnClient::connect(udp_server(), rest_user_last("alice"))
                .await
                .expect("connect");
            let allocation = client
                .allocate(AllocateOptions::default())
                .await
                .expect("allocate with a user:timestamp REST username");
            assert_eq!(allocation.relayed.ip(), udp_server().ip());
            client
                .channel_bind(peer(), 0x4000)
                .await
                .expect("channel bind to the STRICT_DNS cluster's peer");
            for round in 0..10u8 {
                client
                    .send_channel(0x4000, &[round; 64])
                    .await
                    .expect("send");
                let echo = client
                    .recv_timeout(Duration::from_secs(2))
                    .await
                    .expect("echo");
                assert_eq!(
                    (echo.peer, echo.via, echo.data),
                    (peer(), Via::Channel(0x4000), vec![round; 64])
                );
            }
            // Outside every cluster: refused.
            let refused = client
                .create_permission(&["198.51.100.1".parse().expect("ip")])
                .await;
            assert!(
                matches!(refused, Err(ClientError::ErrorResponse { code: 403, .. })),
                "{refused:?}"
            );
            // An expired REST username is refused whatever the position of its timestamp.
            let username = "carol:1000".to_owned();
            let password = rest_password(SECRET, &username);
            let mut late =
                TurnClient::connect(udp_server(), ClientCredentials::new(username, password))
                    .await
                    .expect("connect");
            let refused = late.allocate(AllocateOptions::default()).await;
            assert!(
                matches!(refused, Err(ClientError::ErrorResponse { code: 401, .. })),
                "{refused:?}"
            );
        });
    });

    // TLS (${TLS_PORT}) and DTLS with the inline certificate, TURN REST credentials the way
    // coturn's client makes them (`timestamp:user`).
    let tls_port = TLS_PORT.to_string();
    let dtls_port = DTLS_PORT.to_string();
    uclient_no_loss(&agent.ns, "TLS", &["-t", "-S", "-p", &tls_port]);
    uclient_no_loss(&agent.ns, "DTLS", &["-S", "-p", &dtls_port]);
    uclient_no_loss(&agent.ns, "TCP", &["-t", "-p", "3478"]);

    let metrics = agent.scrape();
    let series = |name: &str, labels: &str| metric(&metrics, &format!("{name}{{{labels}}}"));
    assert!(
        series(
            "stunner_listener_packets_total",
            &format!("name=\"{UDP_LISTENER}\",direction=\"rx\"")
        ) >= 10,
        "{metrics}"
    );
    assert!(
        series(
            "stunner_listener_connections_total",
            &format!("name=\"{TLS_LISTENER}\"")
        ) >= 1,
        "{metrics}"
    );
    // 10 ChannelData and 3 × 20 uclient messages (at least) to the peer of the DNS cluster,
    // and back.
    for direction in ["tx", "rx"] {
        let packets = series(
            "stunner_cluster_packets_total",
            &format!("name=\"{DNS_CLUSTER}\",direction=\"{direction}\""),
        );
        assert!(packets >= 10 + 3 * 20, "{direction}: {packets}\n{metrics}");
    }
    assert_eq!(metric(&metrics, "xturn_dns_resolution_failures_total"), 0);
    assert_eq!(
        series("xturn_dataplane_info", "mode=\"userspace\""),
        1,
        "offload_engine None"
    );
    let log = agent.stop();
    assert!(log.contains("STRICT_DNS endpoint resolved"), "{log}");
    assert!(log.contains("DEBUG"), "--log-level all:DEBUG: {log}");
}

#[test]
fn auth_type_none_is_a_stun_server() {
    let text = config_text(|t| t.replacen("\"type\": \"ephemeral\"", "\"type\": \"none\"", 1));
    assert!(text.contains("\"type\": \"none\""));
    let agent = Agent::start("stunner-none", &text);
    agent.ns.within(|| {
        block_on(async {
            let mut client = TurnClient::connect(udp_server(), ClientCredentials::anonymous())
                .await
                .expect("connect");
            let mapped = client.binding().await.expect("binding");
            assert_eq!(mapped.ip(), udp_server().ip());
            let refused = client.allocate(AllocateOptions::default()).await;
            assert!(
                matches!(refused, Err(ClientError::ErrorResponse { code: 403, .. })),
                "{refused:?}"
            );
            // With credentials too.
            let mut client = TurnClient::connect(udp_server(), rest_user_last("alice"))
                .await
                .expect("connect");
            let refused = client.allocate(AllocateOptions::default()).await;
            assert!(
                matches!(refused, Err(ClientError::ErrorResponse { code: 403, .. })),
                "{refused:?}"
            );
        });
    });
    let metrics = agent.scrape();
    assert_eq!(
        metric(&metrics, "xturn_stun_only_refused_total"),
        2,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "stunner_allocations_active"), 0);
    let log = agent.stop();
    assert!(log.contains("a STUN server only"), "{log}");
}
