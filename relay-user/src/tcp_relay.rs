//! TCP allocations' sockets (RFC 6062): each TCP allocation's listening relayed socket, the
//! connections with peers, and the splice of a peer connection with its client's data
//! connection. The TURN core decides (see `turn_proto::server`'s `tcp` module); this carries
//! its commands out and reports back:
//!
//! - `ListenRelay`: a listening socket on the relayed address; every peer that connects is
//!   accepted and offered to the core ([`turn::Server::handle_peer_connection`]), which keeps it
//!   (a ConnectionAttempt goes to the client) or has it closed;
//! - `ConnectPeer`: a connection from the relayed address (`SO_REUSEADDR` and `SO_REUSEPORT`,
//!   next to the listening socket) to the peer, within [`CONNECT_TIMEOUT`];
//! - `BindData`: the data connection's task ([`crate::stream`]) takes the peer connection and
//!   [`splice`]s the two;
//! - `CloseConnection`: a peer connection still waiting is dropped, a connect or a splice in
//!   progress is stopped.
//!
//! Peer sockets keep TCP keepalive on, so a peer that vanished is noticed (a spliced connection
//! lives as long as both ends do, however quiet). What a splice relays is counted in atomics
//! and handed to the core's usage when it ends and before every read of the statistics
//! ([`TcpRelays::fold_into`]).
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::Notify,
    task::JoinHandle,
};
use tracing::{debug, trace, warn};
use turn_proto::server::{self as turn, BindFailure, ChannelTraffic};

use crate::server::{Shared, lock};

/// How long a Connect's connection to its peer may take (RFC 6062 §4.3 answers 447 then).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalive on peer connections: probes after this much quiet, then every this much.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Bytes read at once from either end of a splice.
const SPLICE_BUFFER: usize = 16 * 1024;

/// What one splice relayed since it was last folded into the core.
#[derive(Debug, Default)]
pub(crate) struct SpliceCounters {
    to_peer_reads: AtomicU64,
    to_peer_bytes: AtomicU64,
    to_client_reads: AtomicU64,
    to_client_bytes: AtomicU64,
}

impl SpliceCounters {
    fn take(&self) -> ChannelTraffic {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        ChannelTraffic {
            to_peer_packets: take(&self.to_peer_reads),
            to_peer_bytes: take(&self.to_peer_bytes),
            to_client_packets: take(&self.to_client_reads),
            to_client_bytes: take(&self.to_client_bytes),
            ..ChannelTraffic::default()
        }
    }
}

/// A splice in progress: whose usage it counts for, what it relayed, how to stop it.
struct Live {
    user: usize,
    counters: Arc<SpliceCounters>,
    stop: Arc<Notify>,
}

/// Every TCP allocation's sockets.
#[derive(Default)]
pub(crate) struct TcpRelays {
    /// Accept tasks of the listening relayed sockets, by relayed address.
    listeners: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    /// Peer connections waiting for their ConnectionBind, by CONNECTION-ID.
    waiting: Mutex<HashMap<u32, TcpStream>>,
    /// Connects in progress, by CONNECTION-ID.
    connecting: Mutex<HashMap<u32, Arc<Notify>>>,
    /// Splices in progress, by CONNECTION-ID.
    live: Mutex<HashMap<u32, Live>>,
}

/// What a data connection's task needs to splice it with its peer connection.
#[derive(Debug)]
pub(crate) struct SpliceJob {
    pub connection: u32,
    pub user: usize,
    pub peer: TcpStream,
}

impl TcpRelays {
    /// `ListenRelay`: listens on `addr`, accepting peers for the core.
    pub(crate) fn listen(&self, shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), BindFailure> {
        let listener = listening_socket(addr).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                BindFailure::AddressInUse
            } else {
                warn!(%addr, error = %e, "cannot listen on a TCP relayed address");
                BindFailure::Other
            }
        })?;
        let task = tokio::spawn(accept_peers(Arc::clone(shared), addr, listener));
        if let Some(old) = lock(&self.listeners).insert(addr, task) {
            old.abort();
        }
        Ok(())
    }

    /// `ReleaseRelay`: stops listening on `addr`; false if it was no TCP relayed address.
    pub(crate) fn release(&self, addr: &SocketAddr) -> bool {
        match lock(&self.listeners).remove(addr) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// `ConnectPeer`: connects from `relayed` to `peer` and tells the core.
    pub(crate) fn connect(
        &self,
        shared: &Arc<Shared>,
        connection: u32,
        relayed: SocketAddr,
        peer: SocketAddr,
    ) {
        let stop = Arc::new(Notify::new());
        lock(&self.connecting).insert(connection, Arc::clone(&stop));
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect_from(relayed, peer));
            let stream = tokio::select! {
                outcome = attempt => match outcome {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(e)) => {
                        debug!(%relayed, %peer, error = %e, "Connect: the peer did not accept");
                        None
                    }
                    Err(_) => {
                        debug!(%relayed, %peer, "Connect: timed out");
                        None
                    }
                },
                () = stop.notified() => return,
            };
            let tcp = shared.tcp_relays();
            if lock(&tcp.connecting).remove(&connection).is_none() {
                // Closed meanwhile.
                return;
            }
            shared.with_core_commands(|core| {
                let connected = stream.is_some();
                if let Some(stream) = stream {
                    lock(&tcp.waiting).insert(connection, stream);
                }
                core.handle_peer_connected(connection, connected, Instant::now());
            });
        });
    }

    /// `CloseConnection`.
    pub(crate) fn close(&self, connection: u32) {
        lock(&self.waiting).remove(&connection);
        if let Some(stop) = lock(&self.connecting).remove(&connection) {
            stop.notify_one();
        }
        if let Some(live) = lock(&self.live).get(&connection) {
            live.stop.notify_one();
        }
    }

    /// The waiting peer connection `connection`, for its data connection.
    pub(crate) fn take_waiting(&self, connection: u32) -> Option<TcpStream> {
        lock(&self.waiting).remove(&connection)
    }

    /// Hands what every splice relayed since the last fold to the core's statistics.
    pub(crate) fn fold_into(&self, core: &mut turn::Server) {
        for live in lock(&self.live).values() {
            let traffic = live.counters.take();
            if !traffic.is_empty() {
                core.count_tcp_traffic(live.user, traffic);
            }
        }
    }
}

/// Accepts peers on a TCP relayed address until the task is aborted.
async fn accept_peers(shared: Arc<Shared>, relayed: SocketAddr, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(%relayed, error = %e, "accept on a TCP relayed address failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        keepalive(&stream);
        let tcp = shared.tcp_relays();
        shared.with_core_commands(|core| {
            match core.handle_peer_connection(relayed, peer, Instant::now()) {
                // Kept before the ConnectionAttempt goes out: the ConnectionBind finds it.
                Some(connection) => {
                    lock(&tcp.waiting).insert(connection, stream);
                }
                None => trace!(%relayed, %peer, "peer connection refused"),
            }
        });
    }
}

/// Splices a client's data connection (`client`, with `first` already read from it) with its
/// peer connection until either side is done or `connection` is closed; then the core forgets
/// it. Runs in the data connection's task.
pub(crate) async fn splice<S>(shared: &Arc<Shared>, client: S, first: Vec<u8>, job: SpliceJob)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let SpliceJob {
        connection,
        user,
        peer,
    } = job;
    let tcp = shared.tcp_relays();
    let counters = Arc::new(SpliceCounters::default());
    let stop = Arc::new(Notify::new());
    lock(&tcp.live).insert(
        connection,
        Live {
            user,
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop),
        },
    );
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut peer_read, mut peer_write) = peer.into_split();
    let to_peer = async {
        if !first.is_empty() {
            if peer_write.write_all(&first).await.is_err() {
                return;
            }
            counters.to_peer_reads.fetch_add(1, Ordering::Relaxed);
            counters
                .to_peer_bytes
                .fetch_add(first.len() as u64, Ordering::Relaxed);
        }
        copy(
            &mut client_read,
            &mut peer_write,
            &counters.to_peer_reads,
            &counters.to_peer_bytes,
        )
        .await;
        let _ = peer_write.shutdown().await;
    };
    let to_client = async {
        copy(
            &mut peer_read,
            &mut client_write,
            &counters.to_client_reads,
            &counters.to_client_bytes,
        )
        .await;
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        ((), ()) = async { tokio::join!(to_peer, to_client) } => {}
        () = stop.notified() => debug!(connection, "splice stopped: its allocation ended"),
    }
    let live = lock(&tcp.live).remove(&connection);
    shared.with_core_commands(|core| {
        if let Some(live) = live {
            core.count_tcp_traffic(live.user, live.counters.take());
        }
        core.handle_connection_closed(connection);
    });
}

/// Copies `from` to `to` until the end of `from` or an error, counting reads and bytes.
async fn copy<R, W>(from: &mut R, to: &mut W, reads: &AtomicU64, bytes: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SPLICE_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        reads.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A listening TCP socket on exactly `addr`, sharing the port with the connections made from
/// it (`SO_REUSEADDR`, `SO_REUSEPORT`).
fn listening_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = relayed_socket(addr)?;
    socket.listen(1024)
}

/// A TCP connection from `relayed` to `peer`.
async fn connect_from(relayed: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let stream = relayed_socket(relayed)?.connect(peer).await?;
    keepalive(&stream);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A TCP socket bound to the relayed address `addr`.
fn relayed_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

fn keepalive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        trace!(error = %e, "keepalive not set on a peer connection");
    }
}
