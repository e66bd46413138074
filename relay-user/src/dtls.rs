//! TURN over DTLS (RFC 8656 §3.1 with RFC 6347 DTLS 1.2): sessions on one UDP socket, run by
//! webrtc-rs's sans-IO DTLS ([`rtc_dtls::endpoint::Endpoint`]), which demultiplexes them by
//! client address. Each decrypted record is one STUN or ChannelData message for the core, as a
//! UDP datagram would be; replies are encrypted to the session.
//!
//! Limits: at most `max_sessions` sessions (a datagram from a new address must be a handshake
//! record, and is dropped and counted when the listener is full); a session must deliver its
//! first message within [`FIRST_MESSAGE_TIMEOUT`] of its first datagram and then one at least
//! every `idle_timeout`, or it is closed (its allocation with it). A failed handshake (say, a
//! DTLS 1.0 client, which gets a protocol_version alert) ends its session only.
//!
//! The certificate follows its files: after a reload, new sessions get the new one. (An inline
//! certificate from the configuration stays.)
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use rtc_dtls::{
    config::{ConfigBuilder, HandshakeConfig},
    crypto::Certificate,
    crypto_provider::{SignatureScheme, default_provider},
    endpoint::{Endpoint, EndpointEvent},
};
use rtc_shared::TransportProtocol;
use rustls::pki_types::PrivateKeyDer;
use tokio::net::UdpSocket;
use tracing::{debug, trace, warn};

use crate::{
    server::{Shared, lock},
    stream::{ConnectionCounters, FIRST_MESSAGE_TIMEOUT},
    tls::{CertStore, read_pem},
};
use turn_proto::server::ListenerId;

/// How often session deadlines and DTLS retransmissions are looked at.
const TICK: Duration = Duration::from_millis(100);
/// The DTLS record content type of handshake messages: what a new session must start with.
const HANDSHAKE: u8 = 22;
/// Sessions still in their handshake, at most (within `max_sessions`): a flood of (spoofable)
/// ClientHellos fills this pool, not the established sessions' room.
const MAX_HANDSHAKING: usize = 1024;

struct State {
    endpoint: Endpoint,
    /// Each session's deadline for its next complete message.
    deadlines: HashMap<SocketAddr, Instant>,
    /// Sessions whose handshake completed.
    established: std::collections::HashSet<SocketAddr>,
    /// The certificate store's reload count the endpoint's configuration was built from.
    cert_version: u64,
}

pub struct DtlsListener {
    id: ListenerId,
    socket: Arc<UdpSocket>,
    certs: Arc<CertStore>,
    state: Mutex<State>,
    max_sessions: usize,
    /// Sessions still in their handshake, at most: `MAX_HANDSHAKING` within `max_sessions`.
    max_handshaking: usize,
    idle_timeout: Duration,
    pub counters: ConnectionCounters,
}

/// A DTLS server configuration from the store's files (the key must be PKCS#8; ECDSA P-256 or
/// P-384, RSA or Ed25519).
fn handshake_config(certs: &CertStore) -> Result<Arc<HandshakeConfig>, String> {
    let pem = read_pem(certs.material()).map_err(|e| e.to_string())?;
    let PrivateKeyDer::Pkcs8(key) = pem.key else {
        return Err(format!(
            "key {}: DTLS needs a PKCS#8 key (\"BEGIN PRIVATE KEY\"); convert it with `openssl pkcs8 -topk8 -nocrypt`",
            certs.material().key
        ));
    };
    let provider = default_provider().map_err(|e| e.to_string())?;
    let signing_key = [
        SignatureScheme::EcdsaP256Sha256,
        SignatureScheme::EcdsaP384Sha384,
        SignatureScheme::RsaPkcs1Sha256,
        SignatureScheme::Ed25519,
    ]
    .into_iter()
    .find_map(|scheme| {
        provider
            .crypto()
            .import_signing_key(scheme, key.secret_pkcs8_der())
            .ok()
    })
    .ok_or_else(|| format!("key {}: unsupported key type", certs.material().key))?;
    let config = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_certificates(vec![Certificate::from_signing_key(pem.chain, signing_key)])
        .build(false, None)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

impl DtlsListener {
    pub fn new(
        id: ListenerId,
        socket: Arc<UdpSocket>,
        certs: Arc<CertStore>,
        max_sessions: usize,
        idle_timeout: Duration,
    ) -> Result<DtlsListener, String> {
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let config = handshake_config(&certs)?;
        let cert_version = certs.reloads();
        Ok(DtlsListener {
            id,
            socket,
            state: Mutex::new(State {
                endpoint: Endpoint::new(local, TransportProtocol::UDP, Some(config)),
                deadlines: HashMap::new(),
                established: std::collections::HashSet::new(),
                cert_version,
            }),
            certs,
            max_sessions,
            max_handshaking: MAX_HANDSHAKING.min(max_sessions),
            idle_timeout,
            counters: ConnectionCounters::default(),
        })
    }

    /// Open sessions (handshaking included).
    pub fn sessions(&self) -> usize {
        lock(&self.state).deadlines.len()
    }

    /// Encrypts `data` for `client`'s session and sends it; `false` if it could not be.
    pub fn send(&self, client: SocketAddr, data: &[u8]) -> bool {
        let mut state = lock(&self.state);
        if let Err(e) = state.endpoint.write(Instant::now(), client, data) {
            trace!(%client, error = %e, "DTLS send refused");
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.flush(&mut state)
    }

    /// Sends every datagram the endpoint queued; `false` if the kernel refused one.
    fn flush(&self, state: &mut State) -> bool {
        let mut all = true;
        while let Some(transmit) = state.endpoint.poll_transmit() {
            all &= crate::server::send(
                &self.socket,
                &transmit.message,
                transmit.transport.peer_addr,
            );
        }
        all
    }

    /// Ends `client`'s session (it is gone or misbehaved).
    fn stop(&self, state: &mut State, client: SocketAddr, now: Instant) {
        state.endpoint.stop(now, client);
        state.deadlines.remove(&client);
        state.established.remove(&client);
    }

    /// Takes one datagram; returns the messages it decrypted to and whether the session ended.
    fn receive(&self, client: SocketAddr, datagram: &[u8], now: Instant) -> (Vec<BytesMut>, bool) {
        let mut state = lock(&self.state);
        // New sessions get the certificate in force.
        let version = self.certs.reloads();
        if version != state.cert_version {
            match handshake_config(&self.certs) {
                Ok(config) => state.endpoint.set_server_config(Some(config)),
                Err(e) => warn!(error = %e, "DTLS keeps its previous certificate"),
            }
            state.cert_version = version;
        }
        if !state.deadlines.contains_key(&client) {
            let handshaking = state.deadlines.len() - state.established.len();
            let full =
                state.deadlines.len() >= self.max_sessions || handshaking >= self.max_handshaking;
            if full || datagram.first() != Some(&HANDSHAKE) {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return (Vec::new(), false);
            }
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            state.deadlines.insert(client, now + FIRST_MESSAGE_TIMEOUT);
        }
        let mut messages = Vec::new();
        let mut ended = false;
        match state
            .endpoint
            .read(now, client, None, BytesMut::from(datagram))
        {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::ApplicationData(data) => messages.push(data),
                        EndpointEvent::PeerClosed => ended = true,
                        EndpointEvent::HandshakeComplete => {
                            state.established.insert(client);
                        }
                        _ => {}
                    }
                }
            }
            // An established session outlives a bad datagram: it may not even be the client's.
            Err(e) if state.established.contains(&client) => {
                trace!(%client, error = %e, "DTLS record dropped");
                self.counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(%client, error = %e, "DTLS handshake failed");
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                ended = true;
            }
        }
        if !messages.is_empty() {
            state.deadlines.insert(client, now + self.idle_timeout);
        }
        // Send what the session queued (handshake flights, alerts) before ending it.
        self.flush(&mut state);
        if ended {
            self.stop(&mut state, client, now);
        }
        (messages, ended)
    }

    /// Retransmits handshake flights that are due and closes sessions past their deadline;
    /// returns the clients whose sessions ended.
    fn tick(&self, now: Instant) -> Vec<SocketAddr> {
        let mut state = lock(&self.state);
        let mut ended = Vec::new();
        let clients: Vec<(SocketAddr, Instant)> =
            state.deadlines.iter().map(|(c, d)| (*c, *d)).collect();
        for (client, deadline) in clients {
            if now >= deadline {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                ended.push(client);
                continue;
            }
            let due = state
                .endpoint
                .poll_timeout(&client)
                .is_some_and(|t| t <= now);
            if due && state.endpoint.handle_timeout(client, now).is_err() {
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                ended.push(client);
            }
        }
        self.flush(&mut state);
        for client in &ended {
            self.stop(&mut state, *client, now);
        }
        ended
    }
}

/// Reads the listener's socket until the task is aborted.
pub(crate) async fn receive_task(shared: Arc<Shared>, listener: Arc<DtlsListener>) {
    let mut buf = vec![0u8; 65_536];
    let mut commands = std::collections::VecDeque::new();
    loop {
        let (len, client) = match listener.socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                trace!(error = %e, "DTLS listener receive error");
                continue;
            }
        };
        let (messages, ended) = listener.receive(client, &buf[..len], Instant::now());
        for message in messages {
            shared.client_message(listener.id, client, &message, &mut commands);
        }
        if ended {
            shared.client_closed(listener.id, client);
        }
    }
}

/// Drives retransmissions and deadlines until the task is aborted.
pub(crate) async fn timer_task(shared: Arc<Shared>, listener: Arc<DtlsListener>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for client in listener.tick(Instant::now()) {
            debug!(%client, "DTLS session ended");
            shared.client_closed(listener.id, client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsMaterial;
    use crate::tls::tests::{self_signed, self_signed_inline, tempdir};

    /// A client endpoint talking to `listener` over real loopback sockets, the test moving
    /// each datagram by hand.
    struct Client {
        endpoint: Endpoint,
        socket: std::net::UdpSocket,
        server: SocketAddr,
    }

    impl Client {
        fn addr(&self) -> SocketAddr {
            self.socket.local_addr().unwrap()
        }

        /// Queues the client's first flight.
        fn start_handshake(&mut self) {
            let config = client_config(self.server);
            self.endpoint
                .connect(Instant::now(), self.server, config, None)
                .unwrap();
        }

        /// Hands what the client queued to the listener; returns what the listener decrypted.
        fn send_queued(&mut self, listener: &DtlsListener) -> (Vec<BytesMut>, bool) {
            let mut messages = Vec::new();
            let mut ended = false;
            while let Some(transmit) = self.endpoint.poll_transmit() {
                let (got, end) = listener.receive(self.addr(), &transmit.message, Instant::now());
                messages.extend(got);
                ended |= end;
            }
            (messages, ended)
        }

        /// Reads what the listener sent until the socket stays quiet; whether the handshake
        /// completed.
        fn take_replies(&mut self) -> bool {
            let mut complete = false;
            let mut buf = [0u8; 2048];
            while let Ok(len) = self.socket.recv(&mut buf) {
                let events = self
                    .endpoint
                    .read(
                        Instant::now(),
                        self.server,
                        None,
                        BytesMut::from(&buf[..len]),
                    )
                    .unwrap();
                complete |= events
                    .iter()
                    .any(|e| matches!(e, EndpointEvent::HandshakeComplete));
            }
            complete
        }
    }

    async fn listener_and_client(tag: &str) -> (DtlsListener, Client) {
        let dir = tempdir(tag);
        listener_and_client_with(&self_signed(&dir, "relay")).await
    }

    async fn listener_and_client_with(material: &TlsMaterial) -> (DtlsListener, Client) {
        let certs = CertStore::load(material).unwrap();
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let server = socket.local_addr().unwrap();
        let listener =
            DtlsListener::new(ListenerId(0), socket, certs, 16, Duration::from_secs(60)).unwrap();
        let client_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client_socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let endpoint = Endpoint::new(
            client_socket.local_addr().unwrap(),
            TransportProtocol::UDP,
            None,
        );
        let client = Client {
            endpoint,
            socket: client_socket,
            server,
        };
        (listener, client)
    }

    /// A DTLS client's configuration (any server certificate will do).
    fn client_config(server: SocketAddr) -> Arc<HandshakeConfig> {
        let config = ConfigBuilder::default()
            .with_crypto_provider(default_provider().unwrap())
            .with_insecure_skip_verify(true)
            .build(true, Some(server))
            .unwrap();
        Arc::new(config)
    }

    fn connect(client: &mut Client, listener: &DtlsListener) {
        client.start_handshake();
        for _ in 0..10 {
            let (_, ended) = client.send_queued(listener);
            assert!(!ended, "the handshake failed");
            if client.take_replies() {
                // The client's last flight completes the listener's side.
                client.send_queued(listener);
                return;
            }
        }
        panic!("no handshake after 10 round trips");
    }

    /// A datagram that is no DTLS record at all, from the client's address.
    const JUNK: &[u8] = &[23, 0xfe, 0xfd, 0, 1, 0, 0];

    #[tokio::test]
    async fn a_bad_datagram_does_not_end_an_established_session() {
        let (listener, mut client) = listener_and_client("dtls-bad-record").await;
        connect(&mut client, &listener);
        assert_eq!(lock(&listener.state).established.len(), 1);

        client
            .endpoint
            .write(Instant::now(), client.server, b"first")
            .unwrap();
        let (messages, ended) = client.send_queued(&listener);
        assert_eq!(messages, [BytesMut::from(&b"first"[..])]);
        assert!(!ended);

        // Anyone can send this with the client's address as source.
        let (messages, ended) = listener.receive(client.addr(), JUNK, Instant::now());
        assert!(messages.is_empty());
        assert!(!ended, "a spoofable datagram ended the session");
        assert_eq!(listener.counters.protocol_errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            listener.counters.handshake_failures.load(Ordering::Relaxed),
            0
        );
        assert_eq!(listener.sessions(), 1);

        client
            .endpoint
            .write(Instant::now(), client.server, b"second")
            .unwrap();
        let (messages, _) = client.send_queued(&listener);
        assert_eq!(messages, [BytesMut::from(&b"second"[..])]);
        assert!(listener.send(client.addr(), b"reply"));
    }

    #[tokio::test]
    async fn an_inline_certificate_serves_sessions() {
        let dir = tempdir("dtls-inline");
        let material = self_signed_inline(&dir, "relay");
        std::fs::remove_dir_all(&dir).unwrap();
        let (listener, mut client) = listener_and_client_with(&material).await;
        connect(&mut client, &listener);
        client
            .endpoint
            .write(Instant::now(), client.server, b"inline")
            .unwrap();
        let (messages, _) = client.send_queued(&listener);
        assert_eq!(messages, [BytesMut::from(&b"inline"[..])]);
    }

    #[tokio::test]
    async fn a_bad_datagram_ends_a_session_in_its_handshake() {
        let (listener, mut client) = listener_and_client("dtls-bad-handshake").await;
        client.start_handshake();
        client.send_queued(&listener);
        assert_eq!(listener.sessions(), 1);
        let (_, ended) = listener.receive(client.addr(), JUNK, Instant::now());
        assert!(ended);
        assert_eq!(
            listener.counters.handshake_failures.load(Ordering::Relaxed),
            1
        );
        assert_eq!(listener.sessions(), 0);
    }

    #[tokio::test]
    async fn new_sessions_are_refused_while_too_many_handshakes_are_pending() {
        let (mut listener, mut client) = listener_and_client("dtls-handshakes").await;
        listener.max_handshaking = 4;
        connect(&mut client, &listener);
        // A ClientHello, replayed from other addresses (as a spoofing flood would).
        let mut other = Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            TransportProtocol::UDP,
            None,
        );
        other
            .connect(
                Instant::now(),
                client.server,
                client_config(client.server),
                None,
            )
            .unwrap();
        let hello = other.poll_transmit().unwrap().message;
        for port in 1..=5u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], 40_000 + port));
            listener.receive(from, &hello, Instant::now());
        }
        // The established session does not count against the handshake pool.
        assert_eq!(listener.sessions(), 5);
        assert_eq!(listener.counters.refused.load(Ordering::Relaxed), 1);
        // Nor is it disturbed by the flood.
        client
            .endpoint
            .write(Instant::now(), client.server, b"still here")
            .unwrap();
        let (messages, _) = client.send_queued(&listener);
        assert_eq!(messages, [BytesMut::from(&b"still here"[..])]);
        // The overall limit still holds: 16 sessions.
        listener.max_handshaking = 100;
        for port in 6..=20u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], 40_000 + port));
            listener.receive(from, &hello, Instant::now());
        }
        assert_eq!(listener.sessions(), 16);
        assert_eq!(listener.counters.refused.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn spoofed_plaintext_alerts_do_not_end_an_established_session() {
        let (listener, mut client) = listener_and_client("dtls-alerts").await;
        connect(&mut client, &listener);
        // Epoch-0 records: a fatal handshake_failure, then a close_notify.
        let fatal: &[u8] = &[21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 40];
        let close_notify: &[u8] = &[21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 10, 0, 2, 1, 0];
        for alert in [fatal, close_notify] {
            let (messages, ended) = listener.receive(client.addr(), alert, Instant::now());
            assert!(messages.is_empty());
            assert!(!ended, "a spoofed alert {alert:?} ended the session");
            client
                .endpoint
                .write(Instant::now(), client.server, b"after")
                .unwrap();
            let (messages, _) = client.send_queued(&listener);
            assert_eq!(messages, [BytesMut::from(&b"after"[..])]);
        }
        assert_eq!(listener.sessions(), 1);
    }
}
