//! [`TurnClient`]: turn-proto's client state machine driven over a connected tokio UDP socket.
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

use turn_proto::client::auth::{AuthState, Step, Transaction};
use turn_proto::client::message::{self as proto, Incoming, Request, StunMessage, TransactionId};
use turn_proto::client::retransmit::RetransmitPolicy;
use turn_proto::client::{
    AllocateOptions, Allocation, ClientCredentials, ClientError, Received, Via,
};

/// The largest datagram the client reads.
const MAX_DATAGRAM: usize = 65_536;

thread_local! {
    /// Where datagrams are read: one buffer per thread, not one per client (a load generator
    /// holds thousands of clients).
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// The next datagram on `socket`, copied out of the thread's receive buffer.
async fn recv_datagram(socket: &UdpSocket) -> io::Result<Vec<u8>> {
    loop {
        socket.readable().await?;
        let received = RECV_BUF.with_borrow_mut(|buf| {
            socket
                .try_recv(buf)
                .map(|n| buf.get(..n).unwrap_or_default().to_vec())
        });
        match received {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// How a [`TurnClient`] behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Local address to bind; by default the unspecified address of the server's family, port 0.
    pub local: Option<SocketAddr>,
    /// Request retransmission and give-up times.
    pub retransmit: RetransmitPolicy,
    /// How long [`TurnClient::recv`] waits.
    pub recv_timeout: Duration,
    /// SOFTWARE attribute for requests, if any.
    pub software: Option<String>,
    /// Peer datagrams buffered while a request is in flight, at most; more are dropped.
    pub max_queued: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            local: None,
            retransmit: RetransmitPolicy::default(),
            recv_timeout: Duration::from_secs(2),
            software: Some(concat!("xturn-client/", env!("CARGO_PKG_VERSION")).to_owned()),
            max_queued: 4096,
        }
    }
}

/// A TURN client over UDP: one socket, connected to one server, at most one allocation.
///
/// Requests retransmit per [`RetransmitPolicy`] and answer authentication challenges
/// ([`Transaction`]). Peer data that arrives while a request is in flight is kept for
/// [`recv`](TurnClient::recv). Nothing is checked client-side that a server must check (a
/// second Allocate, a Refresh without allocation, a bad channel number in ChannelBind are all
/// sent), so tests can see the server's error codes.
#[derive(Debug)]
pub struct TurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    auth: AuthState,
    config: ClientConfig,
    channels: HashMap<u16, SocketAddr>,
    queue: VecDeque<Received>,
    allocation: Option<Allocation>,
}

fn new_tid() -> TransactionId {
    TransactionId::new(rand::random::<[u8; 12]>())
}

impl TurnClient {
    /// Binds a UDP socket and connects it to `server`, with the default [`ClientConfig`].
    pub async fn connect(
        server: SocketAddr,
        creds: ClientCredentials,
    ) -> Result<Self, ClientError> {
        Self::connect_with(server, creds, ClientConfig::default()).await
    }

    /// Binds a UDP socket and connects it to `server`.
    pub async fn connect_with(
        server: SocketAddr,
        creds: ClientCredentials,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let local = config.local.unwrap_or(match server.ip() {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        });
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        tracing::debug!(local = %socket.local_addr()?, %server, "client socket ready");
        Ok(TurnClient {
            socket,
            server,
            auth: AuthState::new(creds),
            config,
            channels: HashMap::new(),
            queue: VecDeque::new(),
            allocation: None,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.socket.local_addr()?)
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The realm and nonce learnt so far.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current allocation, if [`allocate`](Self::allocate) succeeded and it was not deleted.
    pub fn allocation(&self) -> Option<Allocation> {
        self.allocation
    }

    /// The peer of a channel bound by [`channel_bind`](Self::channel_bind).
    pub fn channel_peer(&self, channel: u16) -> Option<SocketAddr> {
        self.channels.get(&channel).copied()
    }

    /// Sends `request` (retransmitting, answering 401/438) and returns the success response.
    pub async fn request(&mut self, request: Request) -> Result<StunMessage, ClientError> {
        let mut tx = Transaction::new(request, new_tid());
        self.run(&mut tx).await
    }

    async fn run(&mut self, tx: &mut Transaction) -> Result<StunMessage, ClientError> {
        let policy = self.config.retransmit;
        let offsets = policy.send_offsets();
        let give_up = policy.give_up_after();
        'attempt: loop {
            let bytes = tx.encode(&self.auth, self.config.software.as_deref())?;
            let start = Instant::now();
            let mut sends = 0;
            loop {
                let now = Instant::now();
                if let Some(offset) = offsets.get(sends)
                    && now >= start + *offset
                {
                    tracing::debug!(
                        method = tx.request().name(),
                        attempt = tx.attempts(),
                        transmission = sends + 1,
                        "sending request"
                    );
                    self.socket.send(&bytes).await?;
                    sends += 1;
                    continue;
                }
                let deadline = start + offsets.get(sends).copied().unwrap_or(give_up);
                if sends >= offsets.len() && now >= deadline {
                    let sends = u32::try_from(sends).unwrap_or(u32::MAX);
                    return Err(tx.timeout_error(sends, now - start));
                }
                let datagram = match timeout_at(deadline, recv_datagram(&self.socket)).await {
                    Err(_elapsed) => continue,
                    Ok(Ok(datagram)) => datagram,
                    Ok(Err(e)) => return Err(e.into()),
                };
                match self.dispatch(&datagram, Some(tx)) {
                    None | Some(Step::Ignore | Step::Discard) => {}
                    Some(Step::Retry) => {
                        tx.restart(new_tid());
                        continue 'attempt;
                    }
                    Some(Step::Success(message)) => return Ok(*message),
                    Some(Step::Failed(e)) => return Err(e),
                }
            }
        }
    }

    /// Handles one datagram: peer data is queued, a response goes to `tx`.
    fn dispatch(&mut self, raw: &[u8], tx: Option<&mut Transaction>) -> Option<Step> {
        match proto::parse_datagram(raw) {
            Err(e) => {
                tracing::debug!("dropping a datagram from the server: {e}");
                None
            }
            Ok(Incoming::ChannelData { channel, data }) => {
                match self.channels.get(&channel) {
                    Some(&peer) => self.enqueue(Received {
                        peer,
                        data,
                        via: Via::Channel(channel),
                    }),
                    None => tracing::debug!(channel, "dropping ChannelData on an unbound channel"),
                }
                None
            }
            Ok(Incoming::Stun(message)) => {
                if let Some((peer, data)) = proto::data_indication(&message) {
                    self.enqueue(Received {
                        peer,
                        data,
                        via: Via::DataIndication,
                    });
                    return None;
                }
                match tx {
                    Some(tx) => Some(tx.on_message(&mut self.auth, *message, raw)),
                    None => {
                        tracing::debug!(
                            method = proto::method_name(message.method()),
                            class = %message.class(),
                            "dropping an unexpected STUN message"
                        );
                        None
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, received: Received) {
        if self.queue.len() >= self.config.max_queued {
            tracing::warn!(peer = %received.peer, "receive queue full, dropping peer data");
            return;
        }
        self.queue.push_back(received);
    }

    /// STUN Binding: the client's address as the server sees it.
    pub async fn binding(&mut self) -> Result<SocketAddr, ClientError> {
        let response = self.request(Request::Binding).await?;
        proto::mapped_address(&response).ok_or_else(|| {
            ClientError::Malformed("Binding success without XOR-MAPPED-ADDRESS".into())
        })
    }

    /// Allocate: a relayed address.
    pub async fn allocate(&mut self, opts: AllocateOptions) -> Result<Allocation, ClientError> {
        let response = self.request(Request::Allocate(opts)).await?;
        let allocation = proto::allocation(&response)?;
        tracing::info!(
            relayed = %allocation.relayed,
            mapped = %allocation.mapped,
            lifetime = allocation.lifetime.as_secs(),
            "allocated"
        );
        self.allocation = Some(allocation);
        Ok(allocation)
    }

    /// Refresh with `lifetime` (zero deletes the allocation); returns the granted lifetime.
    pub async fn refresh(&mut self, lifetime: Duration) -> Result<Duration, ClientError> {
        let response = self.request(Request::Refresh { lifetime }).await?;
        let granted = proto::lifetime(&response).unwrap_or(lifetime);
        if granted.is_zero() {
            self.allocation = None;
            self.channels.clear();
        } else if let Some(allocation) = self.allocation.as_mut() {
            allocation.lifetime = granted;
        }
        Ok(granted)
    }

    /// Deletes the allocation (Refresh with LIFETIME 0).
    pub async fn delete(&mut self) -> Result<(), ClientError> {
        self.refresh(Duration::ZERO).await.map(|_| ())
    }

    /// CreatePermission for these peer addresses (one XOR-PEER-ADDRESS each).
    pub async fn create_permission(&mut self, peers: &[IpAddr]) -> Result<(), ClientError> {
        let peers = peers.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
        self.request(Request::CreatePermission { peers }).await?;
        Ok(())
    }

    /// ChannelBind `channel` to `peer` (also refreshes an existing binding).
    pub async fn channel_bind(
        &mut self,
        peer: SocketAddr,
        channel: u16,
    ) -> Result<(), ClientError> {
        self.request(Request::ChannelBind { peer, channel }).await?;
        self.channels.insert(channel, peer);
        Ok(())
    }

    /// Sends `data` to `peer` in a Send indication.
    pub async fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> Result<(), ClientError> {
        let bytes = proto::build_send_indication(peer, data, new_tid())?;
        self.socket.send(&bytes).await?;
        Ok(())
    }

    /// Sends `data` as ChannelData on `channel` (unpadded, as over UDP).
    pub async fn send_channel(&self, channel: u16, data: &[u8]) -> Result<(), ClientError> {
        let bytes = proto::encode_channel_data(channel, data, false)?;
        self.socket.send(&bytes).await?;
        Ok(())
    }

    /// Sends raw bytes to the server (for tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.socket.send(bytes).await?;
        Ok(())
    }

    /// The next datagram from a peer, waiting at most the configured receive timeout.
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        self.recv_timeout(self.config.recv_timeout).await
    }

    /// The next datagram from a peer, waiting at most `timeout`. Cancel-safe.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Received, ClientError> {
        if let Some(received) = self.queue.pop_front() {
            return Ok(received);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match timeout_at(deadline, recv_datagram(&self.socket)).await {
                Err(_elapsed) => break Err(ClientError::RecvTimeout(timeout)),
                Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::debug!("ICMP error from the server's address: {e}");
                }
                Ok(Err(e)) => break Err(e.into()),
                Ok(Ok(datagram)) => {
                    // Not awaiting from here on: nothing is lost if the caller drops us.
                    let _ = self.dispatch(&datagram, None);
                    if let Some(received) = self.queue.pop_front() {
                        break Ok(received);
                    }
                }
            }
        }
    }
}
