//! TCP allocations (RFC 6062) end to end, in network namespaces, with the kernel's default
//! settings. coturn's `turnutils_uclient -T` relays through TCP relayed addresses with 0 loss,
//! over TCP and over TLS: two clients reach each other, one with a Connect (the relay connects
//! from its relayed address), the other as the passive side (the relay accepts a peer on its
//! relayed address and sends a ConnectionAttempt), both binding data connections with
//! ConnectionBind; and `-P`, where uclient's own peer connects to the relayed address. What was
//! relayed counts, to the byte, for the user in `GET /usage`. A
//! client of our own then checks what uclient does not reach: a Connect to a peer the policy
//! refuses gets 403, and a peer that connects to a relayed address the client never binds is
//! disconnected after 30 s. Needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use turn_proto::{
    attributes::{ConnectionId, XorPeerAddress, XorRelayAddress},
    client::{
        AllocateOptions,
        message::{Request, Signing, StunMessage, TransactionId, build_request, decode_stun},
    },
    stream::{Framer, frame_for_stream},
};
use xturn_tests::{
    admin::{http, metric, scrape},
    clients::{assert_alive, assert_no_loss, log_path, stream_xturnd_args, uclient},
    netns::ChildGuard,
    topology::{CLIENT_V4, LISTENER_V4, PEER_V4, Topology},
};

const METRICS: &str = "198.18.1.1:9100";
const LEN: u64 = 120;

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(log_path("tcp-allocations"));
    }
}

/// xturnd with UDP and TCP on 3478 and TLS on 5349, userspace, metrics.
fn start(topology: &Topology, dir: &std::path::Path) -> ChildGuard {
    let args = stream_xturnd_args(dir, &["--metrics-listen", METRICS]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topology.start_xturnd_logged(&args, &log_path("tcp-allocations"))
}

/// A TURN client over one TCP connection, blocking, answering 401s once.
struct StreamClient {
    stream: TcpStream,
    framer: Framer,
    nonce: Option<String>,
    next: u8,
}

impl StreamClient {
    fn connect(server: SocketAddr) -> StreamClient {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .expect("timeout");
        StreamClient {
            stream,
            framer: Framer::default(),
            nonce: None,
            next: 0,
        }
    }

    /// The next message from the server.
    fn receive(&mut self) -> StunMessage {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(message) = self.framer.next_message().expect("TURN framing") {
                return decode_stun(&message).expect("STUN");
            }
            let n = self.stream.read(&mut buf).expect("read from the server");
            assert!(n > 0, "the server closed the connection");
            self.framer.push(&buf[..n]);
        }
    }

    fn send(&mut self, request: &Request) {
        self.next += 1;
        let signing = self.nonce.as_deref().map(|nonce| Signing {
            username: "alice",
            realm: "xturn.test",
            nonce,
            password: "wonderland",
        });
        let bytes = build_request(request, TransactionId::new([self.next; 12]), signing, None)
            .expect("encode");
        self.stream
            .write_all(&frame_for_stream(bytes))
            .expect("send");
    }

    /// Sends `request` (again with the nonce a 401 or 438 brings); the answer.
    fn request(&mut self, request: &Request) -> StunMessage {
        for _ in 0..2 {
            self.send(request);
            let answer = self.receive();
            let code = turn_proto::client::message::error_code(&answer).map(|(c, _)| c);
            if matches!(code, Some(401 | 438)) && self.nonce.is_none() {
                self.nonce = turn_proto::client::message::nonce(&answer).map(str::to_owned);
                continue;
            }
            return answer;
        }
        panic!("no answer after the challenge");
    }
}

fn code(message: &StunMessage) -> Option<u16> {
    turn_proto::client::message::error_code(message).map(|(c, _)| c)
}

fn usage(topology: &Topology) -> Value {
    let (status, body) = http(&topology.relay, METRICS, "GET", "/usage", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn uclient_relays_through_tcp_allocations_and_unbound_peers_are_dropped() {
    let dir = std::env::temp_dir().join(format!("xturn-tcp-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    let topology = Topology::new();
    let mut relay = start(&topology, &dir);
    assert!(
        topology.wait_for_stun(
            format!("{LISTENER_V4}:3478").parse().expect("server"),
            Duration::from_secs(10)
        ),
        "xturnd answers"
    );

    // `-P`'s peer reaches the relayed address from the client's host, as a client on the
    // internet would: a route there through the relay.
    let routed = topology
        .client
        .command("ip", &["route", "add", "198.18.2.0/24", "via", LISTENER_V4])
        .status()
        .expect("ip route");
    assert!(routed.success());
    // Each run's data bytes, each way, as the relay counted them for alice.
    let relayed = |topology: &Topology| {
        let report = usage(topology);
        let alice = &report["users"]["alice"];
        let bytes = |direction: &str| alice[direction]["bytes"].as_u64().unwrap_or(0);
        (bytes("to_peer"), bytes("to_client"))
    };
    for (what, flags, port) in [
        ("client to client, TCP", &["-T"][..], "3478"),
        ("client to client, TLS", &["-T", "-S"][..], "5349"),
        // Passive: uclient's peer connects to the relayed address itself, from `-L` (else
        // from 127.0.0.1, which the relay refuses as a peer).
        ("passive", &["-P", "-L", CLIENT_V4][..], "3478"),
    ] {
        let mut args = flags.to_vec();
        args.extend_from_slice(&[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "120",
            "-z",
            "5",
            "-p",
            port,
        ]);
        let before = relayed(&topology);
        let r = uclient(&topology, &args, LISTENER_V4);
        let after = relayed(&topology);
        let delta = (after.0 - before.0, after.1 - before.1);
        if what == "passive" {
            // The client and its peer each sent 50; uclient counts only what its TURN client
            // received (50, "50 lost"), but the relay carried every byte both ways: the
            // client's 50 messages to the peer, the peer's 50 to the client.
            assert_eq!(r.sent, 100, "{what}: {r:?}");
            assert!(r.received >= 50, "{what}: {r:?}");
            assert_eq!(delta, (50 * LEN, 50 * LEN), "{what}");
        } else {
            assert_no_loss(what, &r, 100);
            // Every message left one client's data connection into its peer connection and
            // arrived through the other's.
            assert_eq!(delta, (100 * LEN, 100 * LEN), "{what}");
        }
    }
    assert_alive(&mut relay);

    // Our own client: a TCP allocation with a permission for the peer host.
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    topology.client.within(|| {
        let mut client = StreamClient::connect(server);
        let allocated = client.request(&Request::Allocate(AllocateOptions {
            transport: 6,
            ..AllocateOptions::default()
        }));
        assert_eq!(code(&allocated), None, "{allocated:?}");
        let relayed = allocated
            .get_attribute::<XorRelayAddress>()
            .expect("XOR-RELAYED-ADDRESS")
            .address();
        let peer_host: SocketAddr = format!("{PEER_V4}:0").parse().expect("peer");
        let permitted = client.request(&Request::CreatePermission {
            peers: vec![peer_host],
        });
        assert_eq!(code(&permitted), None, "{permitted:?}");
        // A peer the policy refuses (the relay's own listener): 403.
        let refused = client.request(&Request::Connect { peer: server });
        assert_eq!(code(&refused), Some(403), "{refused:?}");

        // A peer connects and nobody binds it: the client hears of it, the peer is dropped
        // after 30 s.
        let (tx, rx) = std::sync::mpsc::channel();
        let peer_ns = &topology.peer;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                peer_ns.within(|| {
                    let mut peer = TcpStream::connect_timeout(&relayed, Duration::from_secs(5))
                        .expect("the peer connects to the relayed address");
                    peer.set_read_timeout(Some(Duration::from_secs(45)))
                        .expect("timeout");
                    let local = peer.local_addr().expect("address");
                    let connected = Instant::now();
                    tx.send(local).expect("report");
                    let mut buf = [0u8; 16];
                    let read = peer.read(&mut buf);
                    assert!(
                        matches!(read, Ok(0)) || read.is_err(),
                        "dropped, not talked to: {read:?}"
                    );
                    let held = connected.elapsed();
                    assert!(
                        held >= Duration::from_secs(29) && held < Duration::from_secs(40),
                        "an unbound peer connection is dropped after 30 s, not {held:?}"
                    );
                });
            });
            let peer = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("peer connected");
            let attempt = client.receive();
            assert_eq!(
                attempt.method().as_u16(),
                turn_proto::server::CONNECTION_ATTEMPT,
                "{attempt:?}"
            );
            assert_eq!(
                attempt
                    .get_attribute::<XorPeerAddress>()
                    .expect("XOR-PEER-ADDRESS")
                    .address(),
                peer
            );
            assert!(attempt.get_attribute::<ConnectionId>().is_some());
        });
    });
    assert_alive(&mut relay);
    let metrics = scrape(&topology.relay, METRICS);
    let event = |name: &str| {
        metric(
            &metrics,
            &format!(r#"xturn_tcp_connection_events_total{{event="{name}"}}"#),
        )
    };
    // Both uclient runs bound a data connection on each side, through a Connect on one.
    assert!(event("connect") >= 2 && event("bound") >= 4, "{metrics}");
    assert_eq!(event("connect_failed"), 0, "{metrics}");
    assert_eq!(event("timed_out"), 1, "the unbound peer:\n{metrics}");
}
