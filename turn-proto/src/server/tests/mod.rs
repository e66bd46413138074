//! Tests of the TURN server, driven through [`Server`] with injected time and no sockets.
//!
//! [`Harness`] owns a server and the clock; [`Client`] builds requests the way a TURN client
//! does (long-term credentials, NONCE learnt from 401/438, optional SHA-256 / USERHASH).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod allocate;
mod auth;
mod data;
mod drain;
mod fuzz;
mod limits;
mod permissions;
mod reflection;
mod restore;
mod rfc5769;
mod stun_only;
mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytecodec::{DecodeExt as _, EncodeExt as _};
use stun_codec::convert::TryAsRef;
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

use super::{BindFailure, Command, Listener, ListenerId, Server, ServerConfig};
use crate::attributes::{
    Attribute, ErrorCode, Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm, RequestedTransport,
    UserHash, Username, XorRelayAddress,
};
use crate::auth::{self as cred, Credentials, IntegrityAlgorithm};
use crate::policy::PeerPolicy;
use crate::wire;

pub(super) const REALM: &str = "example.org";
pub(super) const REST_SECRET: &str = "rest-secret";
pub(super) const MAIN: ListenerId = ListenerId(0);

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn listener_addr() -> SocketAddr {
    addr("192.0.2.10:3478")
}

pub(super) fn relay_v4() -> IpAddr {
    "198.51.100.1".parse().unwrap()
}

pub(super) fn relay_v6() -> IpAddr {
    "2001:db8:ffff::1".parse().unwrap()
}

/// A peer well outside every default-deny range.
pub(super) fn peer() -> SocketAddr {
    addr("203.0.113.5:6000")
}

pub(super) fn config() -> ServerConfig {
    let mut config = ServerConfig::new(
        REALM,
        vec![Listener {
            name: "main".to_owned(),
            addr: listener_addr(),
            transport: crate::server::Transport::Udp,
        }],
    );
    config.software = "xturn-test".to_owned();
    config.relay_ipv4 = Some("198.51.100.1".parse().unwrap());
    config.relay_ipv6 = Some("2001:db8:ffff::1".parse().unwrap());
    config.min_port = 50000;
    config.max_port = 50999;
    config
}

/// Decodes a whole message (integrity and fingerprint attributes included).
pub(super) fn decode_message(bytes: &[u8]) -> Message<Attribute> {
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(bytes)
        .expect("decodable")
        .expect("well-formed attributes")
}

/// A response the server sent.
#[derive(Debug, Clone)]
pub(super) struct Response {
    pub bytes: Vec<u8>,
    pub message: Message<Attribute>,
}

impl Response {
    pub fn parse(bytes: Vec<u8>) -> Self {
        let message = decode_message(&bytes);
        Response { bytes, message }
    }

    pub fn get<T>(&self) -> Option<&T>
    where
        T: stun_codec::Attribute,
        Attribute: TryAsRef<T>,
    {
        self.message.get_attribute::<T>()
    }

    pub fn all<'a, T>(&'a self) -> Vec<&'a T>
    where
        T: stun_codec::Attribute + 'a,
        Attribute: TryAsRef<T>,
    {
        self.message
            .attributes()
            .filter_map(|a| a.try_as_ref())
            .collect()
    }

    pub fn is_success(&self) -> bool {
        self.message.class() == MessageClass::SuccessResponse
    }

    pub fn error_code(&self) -> Option<u16> {
        self.get::<ErrorCode>().map(ErrorCode::code)
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.message.transaction_id()
    }

    /// Does it carry an integrity attribute that verifies under `key`?
    pub fn verifies_with(&self, key: &[u8]) -> bool {
        wire::StunFrame::parse(&self.bytes)
            .expect("valid framing")
            .verify_integrity(key)
    }

    pub fn integrity_algorithm(&self) -> Option<IntegrityAlgorithm> {
        wire::StunFrame::parse(&self.bytes)
            .expect("valid framing")
            .integrity
            .map(|i| i.algorithm)
    }

    pub fn relayed(&self) -> Vec<SocketAddr> {
        self.all::<XorRelayAddress>()
            .into_iter()
            .map(XorRelayAddress::address)
            .collect()
    }
}

/// The SendToClient payloads for `client`.
pub(super) fn sent_to(commands: &[Command], client: SocketAddr) -> Vec<Vec<u8>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SendToClient {
                client: to, data, ..
            } if *to == client => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// The single STUN response among `commands` for `client`.
pub(super) fn response_in(commands: &[Command], client: SocketAddr) -> Response {
    let sent = sent_to(commands, client);
    assert_eq!(sent.len(), 1, "expected one response in {commands:?}");
    Response::parse(sent.into_iter().next().unwrap())
}

pub(super) fn bind_requests(commands: &[Command]) -> Vec<SocketAddr> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::BindRelay { addr } | Command::ListenRelay { addr } => Some(*addr),
            _ => None,
        })
        .collect()
}

pub(super) fn releases(commands: &[Command]) -> Vec<SocketAddr> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ReleaseRelay { addr } => Some(*addr),
            _ => None,
        })
        .collect()
}

/// A TURN client speaking long-term credentials.
#[derive(Debug, Clone)]
pub(super) struct Client {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    /// Which integrity attribute to sign with.
    pub integrity: IntegrityAlgorithm,
    /// `Some`: send PASSWORD-ALGORITHM (this one) and PASSWORD-ALGORITHMS (as offered).
    pub password_algorithm: Option<cred::PasswordAlgorithm>,
    /// Send USERHASH instead of USERNAME.
    pub userhash: bool,
}

impl Client {
    pub fn new(at: &str, username: &str, password: &str) -> Self {
        Client {
            addr: addr(at),
            username: username.to_owned(),
            password: password.to_owned(),
            nonce: None,
            integrity: IntegrityAlgorithm::HmacSha1,
            password_algorithm: None,
            userhash: false,
        }
    }

    pub fn alice() -> Self {
        Client::new("192.0.2.1:40000", "alice", "alice-pw")
    }

    pub fn bob() -> Self {
        Client::new("192.0.2.2:40000", "bob", "bob-pw")
    }

    /// A transaction id no other request of the test process uses.
    pub fn next_tid(&mut self) -> TransactionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut id = [0u8; 12];
        id[4..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        TransactionId::new(id)
    }

    pub fn key(&self) -> Vec<u8> {
        cred::long_term_key(
            self.password_algorithm
                .unwrap_or(cred::PasswordAlgorithm::Md5),
            &self.username,
            REALM,
            &self.password,
        )
    }

    /// Encodes a message; with credentials (if a NONCE is known) when `authenticated`.
    pub fn build(
        &mut self,
        class: MessageClass,
        method: Method,
        attributes: Vec<Attribute>,
        authenticated: bool,
    ) -> (TransactionId, Vec<u8>) {
        let tid = self.next_tid();
        let mut message = Message::<Attribute>::new(class, method, tid);
        for attribute in attributes {
            message.add_attribute(attribute);
        }
        let nonce = self.nonce.clone().filter(|_| authenticated);
        if let Some(nonce) = &nonce {
            if self.userhash {
                message.add_attribute(UserHash::new(cred::userhash(&self.username, REALM)));
            } else {
                message.add_attribute(Username::new(self.username.clone()).unwrap());
            }
            message.add_attribute(Realm::new(REALM.to_owned()).unwrap());
            message.add_attribute(Nonce::new(nonce.clone()).unwrap());
            if let Some(algorithm) = self.password_algorithm {
                message.add_attribute(PasswordAlgorithms::new(&cred::PasswordAlgorithm::OFFERED));
                message.add_attribute(PasswordAlgorithm::new(algorithm));
            }
        }
        let mut bytes = MessageEncoder::<Attribute>::new()
            .encode_into_bytes(message)
            .unwrap();
        if nonce.is_some() {
            wire::append_integrity(&mut bytes, self.integrity, &self.key());
        }
        wire::append_fingerprint(&mut bytes);
        (tid, bytes)
    }

    pub fn request(&mut self, method: Method, attributes: Vec<Attribute>) -> Vec<u8> {
        self.build(MessageClass::Request, method, attributes, true)
            .1
    }

    pub fn indication(&mut self, method: Method, attributes: Vec<Attribute>) -> Vec<u8> {
        self.build(MessageClass::Indication, method, attributes, false)
            .1
    }

    /// Takes the NONCE of a 401/438.
    pub fn learn(&mut self, response: &Response) {
        if let Some(nonce) = response.get::<Nonce>() {
            self.nonce = Some(nonce.value().to_owned());
        }
    }
}

/// A server, its clock and convenience drivers.
pub(super) struct Harness {
    pub server: Server,
    pub now: Instant,
    /// The listener clients send on ([`MAIN`] unless a test says otherwise).
    pub listener: ListenerId,
}

pub(super) const START_UNIX: u64 = 1_700_000_000;

pub(super) fn credentials() -> Credentials {
    Credentials::new(REALM)
        .with_user("alice", "alice-pw")
        .with_user("bob", "bob-pw")
        .with_rest_secret(REST_SECRET)
}

impl Harness {
    pub fn new() -> Self {
        Harness::with_config(config())
    }

    pub fn with_config(config: ServerConfig) -> Self {
        Harness::with(config, credentials())
    }

    pub fn with(config: ServerConfig, credentials: Credentials) -> Self {
        Harness::with_policy(config, credentials, PeerPolicy::open(vec![listener_addr()]))
    }

    pub fn with_policy(config: ServerConfig, credentials: Credentials, policy: PeerPolicy) -> Self {
        let start = Instant::now();
        let server = Server::new(
            config,
            credentials,
            policy,
            [42; 32],
            [7; 32],
            start,
            UNIX_EPOCH + Duration::from_secs(START_UNIX),
        );
        Harness {
            server,
            now: start,
            listener: MAIN,
        }
    }

    pub fn drain(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    pub fn client_sends(&mut self, client: SocketAddr, data: &[u8]) -> Vec<Command> {
        self.server
            .handle_client_datagram(self.listener, client, data, self.now);
        self.drain()
    }

    pub fn peer_sends(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> Vec<Command> {
        self.server
            .handle_peer_datagram(relayed, peer, data, self.now);
        self.drain()
    }

    pub fn bound(&mut self, addr: SocketAddr, result: Result<(), BindFailure>) -> Vec<Command> {
        self.server.handle_relay_bound(addr, result, self.now);
        self.drain()
    }

    /// Answers every BindRelay in `commands` (and in what that produces) with success.
    pub fn bind_all(&mut self, commands: &[Command]) -> Vec<Command> {
        let mut out = Vec::new();
        for addr in bind_requests(commands) {
            let more = self.bound(addr, Ok(()));
            out.extend(self.bind_all(&more));
            out.extend(more);
        }
        out
    }

    /// Moves the clock forward and runs the timers.
    pub fn advance(&mut self, by: Duration) -> Vec<Command> {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.drain()
    }

    /// Sends a request, answering a 401/438 challenge once. Returns every command produced by
    /// the final attempt.
    pub fn call(
        &mut self,
        client: &mut Client,
        method: Method,
        attributes: Vec<Attribute>,
    ) -> Vec<Command> {
        let bytes = client.request(method, attributes.clone());
        let commands = self.client_sends(client.addr, &bytes);
        let sent = sent_to(&commands, client.addr);
        if let [only] = sent.as_slice() {
            let response = Response::parse(only.clone());
            if matches!(response.error_code(), Some(401 | 438)) && response.get::<Nonce>().is_some()
            {
                let had_nonce = client.nonce.is_some();
                client.learn(&response);
                if !had_nonce || response.error_code() == Some(438) {
                    let bytes = client.request(method, attributes);
                    return self.client_sends(client.addr, &bytes);
                }
            }
        }
        commands
    }

    /// A request that must be answered at once.
    pub fn ask(
        &mut self,
        client: &mut Client,
        method: Method,
        attributes: Vec<Attribute>,
    ) -> Response {
        let commands = self.call(client, method, attributes);
        response_in(&commands, client.addr)
    }

    /// An Allocate with `attributes`, every bind succeeding. Returns the response and all
    /// commands (BindRelay included).
    pub fn allocate_with(
        &mut self,
        client: &mut Client,
        attributes: Vec<Attribute>,
    ) -> (Response, Vec<Command>) {
        let mut commands = self.call(client, ALLOCATE, attributes);
        let more = self.bind_all(&commands);
        commands.extend(more);
        let response = response_in(&commands, client.addr);
        (response, commands)
    }

    /// A plain UDP Allocate that must succeed; returns the relayed address.
    pub fn allocate(&mut self, client: &mut Client) -> SocketAddr {
        let (response, _) = self.allocate_with(client, vec![udp()]);
        assert!(response.is_success(), "allocate failed: {response:?}");
        response.relayed()[0]
    }
}

pub(super) fn udp() -> Attribute {
    RequestedTransport::new(17).into()
}
