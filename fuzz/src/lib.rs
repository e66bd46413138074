//! The harness of xturn's fuzz targets: a TURN server (turn-proto's sans-IO core) with fixed
//! keys, credentials and clock, driven by a script of records. The same script format serves
//! the `server` target and the seeds (`src/bin/seeds.rs`), so seeds recorded from a real
//! exchange authenticate when the target replays them.
//!
//! A script is a sequence of records `[op][length: u16, big-endian][payload]` (a truncated
//! record ends it). `op % 5`: 0 and 1, a UDP datagram from client 0 or 1; 2, a datagram from
//! the peer to the first relayed address; 3, `payload[0]` seconds pass (timers run); 4, bytes
//! on client 0's TCP connection (framed as a stream listener frames them; a framing error
//! closes the connection). Every relayed socket the server asks for is bound.
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turn_proto::auth::Credentials;
use turn_proto::policy::PeerPolicy;
use turn_proto::server::{Command, Listener, ListenerId, Server, ServerConfig, Transport};
use turn_proto::stream::Framer;

pub const REALM: &str = "fuzz.xturn";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland";
pub const CLIENTS: [&str; 2] = ["198.18.0.10:40000", "198.18.0.11:40001"];
pub const PEER: &str = "198.18.3.5:6000";
const LISTENER: &str = "198.18.1.1:3478";
const START_UNIX: u64 = 1_700_000_000;
const UDP: ListenerId = ListenerId(0);
const TCP: ListenerId = ListenerId(1);

/// Record kinds.
pub const CLIENT_0: u8 = 0;
pub const CLIENT_1: u8 = 1;
pub const FROM_PEER: u8 = 2;
pub const WAIT: u8 = 3;
pub const STREAM: u8 = 4;

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// One record of a script.
pub fn record(op: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = vec![op];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len)]);
    out
}

/// The server and what the script has made of it.
pub struct Harness {
    pub server: Server,
    pub now: Instant,
    /// Relayed addresses the server bound, in order.
    pub relayed: Vec<SocketAddr>,
    framer: Framer,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let listeners = vec![
            Listener {
                name: "udp".to_owned(),
                addr: addr(LISTENER),
                transport: Transport::Udp,
            },
            Listener {
                name: "tcp".to_owned(),
                addr: addr(LISTENER),
                transport: Transport::Tcp,
            },
        ];
        let mut config = ServerConfig::new(REALM, listeners);
        config.relay_ipv4 = Some([198, 18, 2, 1].into());
        config.relay_ipv6 = Some(
            "2001:db8:2::1"
                .parse()
                .unwrap_or(std::net::Ipv6Addr::LOCALHOST),
        );
        config.min_port = 50_000;
        config.max_port = 50_063;
        let now = Instant::now();
        let server = Server::new(
            config,
            Credentials::new(REALM).with_user(USER, PASSWORD),
            PeerPolicy::open(vec![addr(LISTENER)]),
            [7; 32],
            [9; 32],
            now,
            UNIX_EPOCH + Duration::from_secs(START_UNIX),
        );
        Harness {
            server,
            now,
            relayed: Vec::new(),
            framer: Framer::default(),
        }
    }

    /// Runs a whole script.
    pub fn run(&mut self, script: &[u8]) {
        let mut rest = script;
        while let [op, hi, lo, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
            let (payload, next) = tail.split_at(len);
            self.step(*op, payload);
            rest = next;
        }
    }

    /// Applies one record; returns what the server sent to clients meanwhile.
    pub fn step(&mut self, op: u8, payload: &[u8]) -> Vec<Vec<u8>> {
        match op % 5 {
            CLIENT_0 | CLIENT_1 => {
                let client = addr(CLIENTS[usize::from(op % 5)]);
                self.server
                    .handle_client_datagram(UDP, client, payload, self.now);
            }
            FROM_PEER => {
                if let Some(&relayed) = self.relayed.first() {
                    self.server
                        .handle_peer_datagram(relayed, addr(PEER), payload, self.now);
                }
            }
            WAIT => {
                let secs = payload.first().copied().unwrap_or(1);
                self.now += Duration::from_secs(u64::from(secs));
                self.server.handle_timeout(self.now);
            }
            _ => {
                let client = addr(CLIENTS[0]);
                self.framer.push(payload);
                loop {
                    match self.framer.next_message() {
                        Ok(Some(message)) => {
                            self.server
                                .handle_client_datagram(TCP, client, &message, self.now);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            self.server.handle_client_closed(TCP, client);
                            self.framer = Framer::default();
                            break;
                        }
                    }
                }
            }
        }
        self.settle()
    }

    /// Carries out the server's commands: binds every relayed socket it asks for (and what
    /// that leads to); returns what it sent to clients.
    fn settle(&mut self) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        // Bounded: every bind answer can lead to more commands, but not forever.
        for _ in 0..64 {
            let mut binds = Vec::new();
            while let Some(command) = self.server.poll_command() {
                match command {
                    Command::BindRelay { addr } => binds.push(addr),
                    Command::SendToClient { data, .. } => sent.push(data),
                    _ => {}
                }
            }
            if binds.is_empty() {
                break;
            }
            for addr in binds {
                self.relayed.push(addr);
                self.server.handle_relay_bound(addr, Ok(()), self.now);
            }
        }
        sent
    }
}

/// `SystemTime` of the harness's start (for seeds that need the server's clock).
pub fn start_unix() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START_UNIX)
}
