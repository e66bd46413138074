//! TURN over TCP and TLS (RFC 8656 §3.1, §12.5): clients on stream connections.
//!
//! A connection carries STUN messages and ChannelData messages back to back; turn-proto's
//! [`Framer`] cuts them apart. Each message goes to the core exactly as a UDP
//! datagram would, with the connection's remote address as the client's; the core's 5-tuple
//! says TCP, and the allocation ends when the connection does.
//!
//! Limits, per listener: at most `max_connections` at once, and `max_connections_per_ip` from
//! one client IP address (more are closed at once and counted); a TLS handshake and the first complete message must arrive within
//! [`FIRST_MESSAGE_TIMEOUT`]; after that a connection that delivers no complete message for
//! `idle_timeout` is closed (a slowloris client trickling bytes gets nowhere). What the server
//! sends a client waits in a bounded queue ([`SEND_QUEUE`] messages); when a client does not
//! read and the queue is full, messages for it are dropped and counted, and nobody else waits.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tracing::{debug, trace};

use turn_proto::server::ListenerId;
use turn_proto::stream::{Framer, MAX_MESSAGE, frame_for_stream};

use crate::{
    server::{ConnectionSnapshot, Shared, lock},
    tcp_relay::SpliceJob,
    tls::CertStore,
};

/// Time for the TLS handshake and the first complete message of a new connection.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting to be written to one client.
pub const SEND_QUEUE: usize = 256;
/// A listener's connection counters: TCP and TLS connections here, DTLS sessions in
/// [`crate::dtls`].
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections accepted (DTLS: sessions started).
    pub accepted: AtomicU64,
    /// Closed at once: the listener was at `max_connections` (DTLS: also datagrams from new
    /// addresses that were no handshake).
    pub refused: AtomicU64,
    /// Closed at once: the client's IP address had `max_connections_per_ip` open already.
    pub refused_per_ip: AtomicU64,
    /// TLS handshakes that failed or timed out (DTLS: sessions ended by a DTLS error).
    pub handshake_failures: AtomicU64,
    /// Closed for sending no complete message in time (first message or idle).
    pub timed_out: AtomicU64,
    /// Closed for sending something that is not STUN or ChannelData (DTLS: datagrams of an
    /// established session that did not decrypt or parse: dropped, the session stays).
    pub protocol_errors: AtomicU64,
    /// Messages for a client that were dropped (send queue full; DTLS: no session yet).
    pub dropped: AtomicU64,
}

impl ConnectionCounters {
    /// The counters now, with `open` connections or sessions.
    pub fn snapshot(&self, open: usize) -> ConnectionSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionSnapshot {
            open: open as u64,
            accepted: read(&self.accepted),
            refused: read(&self.refused),
            refused_per_ip: read(&self.refused_per_ip),
            handshake_failures: read(&self.handshake_failures),
            timed_out: read(&self.timed_out),
            protocol_errors: read(&self.protocol_errors),
            dropped: read(&self.dropped),
        }
    }
}

/// What the event loop hands a connection's task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A message to write.
    Message(Vec<u8>),
    /// After what was queued before: the connection is an RFC 6062 data connection now;
    /// the writer hands the stream back for the splice (the job is in the connection's
    /// [`ConnectionHandle::splice`]).
    Splice,
}

/// A connection as the event loop reaches it.
#[derive(Debug)]
struct ConnectionHandle {
    tx: mpsc::Sender<Outgoing>,
    /// Set by `BindData` (RFC 6062): the peer connection to splice with.
    splice: Arc<Mutex<Option<SpliceJob>>>,
}

/// A listener's open connections, by client address.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<HashMap<SocketAddr, ConnectionHandle>>,
    /// Open connections per client IP address (locked after `open` where both are).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub counters: ConnectionCounters,
}

impl Connections {
    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `data` for `client`; `false` when it has no connection or its queue is full.
    pub fn send(&self, client: SocketAddr, data: Vec<u8>) -> bool {
        let sender = lock(&self.open).get(&client).map(|c| c.tx.clone());
        let Some(sender) = sender else {
            trace!(%client, "no connection for a message");
            return false;
        };
        match sender.try_send(Outgoing::Message(frame_for_stream(data))) {
            Ok(()) => true,
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Makes `client`'s connection the data connection of `job`'s peer connection (RFC
    /// 6062), once what was queued for it is written; gives the job back when there is no
    /// such connection or its queue is full.
    pub(crate) fn splice(&self, client: SocketAddr, job: SpliceJob) -> Result<(), SpliceJob> {
        let open = lock(&self.open);
        let Some(connection) = open.get(&client) else {
            return Err(job);
        };
        let mut slot = lock(&connection.splice);
        if slot.is_some() || connection.tx.try_send(Outgoing::Splice).is_err() {
            return Err(job);
        }
        *slot = Some(job);
        Ok(())
    }
}

/// Everything a stream listener's tasks need.
pub struct StreamListener {
    pub id: ListenerId,
    pub connections: Arc<Connections>,
    /// `Some` for TLS.
    pub tls: Option<Arc<CertStore>>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
}

/// Accepts connections until the task is aborted.
pub(crate) async fn accept_task(
    shared: Arc<Shared>,
    listener: Arc<StreamListener>,
    socket: TcpListener,
) {
    let acceptor = match &listener.tls {
        Some(store) => match store.server_config() {
            Ok(config) => Some(tokio_rustls::TlsAcceptor::from(config)),
            Err(e) => {
                tracing::error!(error = %e, "TLS listener cannot start");
                return;
            }
        },
        None => None,
    };
    loop {
        let (stream, client) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let counters = &listener.connections.counters;
        if listener.connections.len() >= listener.max_connections {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            debug!(%client, "connection refused: listener at its connection limit");
            drop(stream);
            continue;
        }
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let mine = tx.clone();
        let splice = Arc::new(Mutex::new(None));
        let handle = ConnectionHandle {
            tx,
            splice: Arc::clone(&splice),
        };
        let replaced = {
            let mut open = lock(&listener.connections.open);
            let mut per_ip = lock(&listener.connections.per_ip);
            let from_ip = per_ip.entry(client.ip()).or_default();
            // A connection that replaces one from the same address takes its place in the count.
            if !open.contains_key(&client) && *from_ip >= listener.max_connections_per_ip {
                None
            } else {
                if !open.contains_key(&client) {
                    *from_ip += 1;
                }
                Some(open.insert(client, handle))
            }
        };
        let Some(replaced) = replaced else {
            counters.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            debug!(%client, "connection refused: its address has the most connections one may");
            drop(stream);
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        if replaced.is_some() {
            // A new connection from the address of one still open (a client reusing its port,
            // or another user behind the same NAT port): the old 5-tuple's allocation is not
            // the new connection's to inherit.
            shared.client_closed(listener.id, client);
        }
        let shared = Arc::clone(&shared);
        let listener = Arc::clone(&listener);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + FIRST_MESSAGE_TIMEOUT;
            match acceptor {
                None => serve(&shared, &listener, client, stream, rx, &splice, deadline).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            serve(&shared, &listener, client, tls, rx, &splice, deadline).await;
                        }
                        Ok(Err(e)) => {
                            listener
                                .connections
                                .counters
                                .handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(%client, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            listener
                                .connections
                                .counters
                                .handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(%client, "TLS handshake timed out");
                        }
                    }
                }
            }
            closed(&shared, &listener, client, &mine);
        });
    }
}

/// Reads messages into the core and writes queued messages out, until the connection ends
/// (or, as an RFC 6062 data connection, is spliced with its peer connection until both are
/// done).
async fn serve<S>(
    shared: &Arc<Shared>,
    listener: &StreamListener,
    client: SocketAddr,
    stream: S,
    mut outgoing: mpsc::Receiver<Outgoing>,
    splice: &Mutex<Option<SpliceJob>>,
    first_deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The writer runs on its own: a client that does not read blocks only its own writes. It
    // gives the stream's write half back when the connection becomes a data connection.
    let mut write_task = tokio::spawn(async move {
        while let Some(outgoing) = outgoing.recv().await {
            match outgoing {
                Outgoing::Message(message) => {
                    if writer.write_all(&message).await.is_err() {
                        break;
                    }
                }
                Outgoing::Splice => return Some(writer),
            }
        }
        let _ = writer.shutdown().await;
        None
    });
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut deadline = first_deadline;
    let mut commands = std::collections::VecDeque::new();
    let counters = &listener.connections.counters;
    'read: loop {
        let read = match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) => {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                debug!(%client, pending = framer.pending(), "closing a connection without a complete message in time");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                trace!(%client, error = %e, "connection read error");
                break;
            }
        };
        framer.push(&buf[..read]);
        loop {
            match framer.next_message() {
                Ok(Some(message)) => {
                    deadline = tokio::time::Instant::now() + listener.idle_timeout;
                    shared.client_message(listener.id, client, &message, &mut commands);
                    let job = lock(splice).take();
                    if let Some(job) = job {
                        // A data connection now: what follows is the peer's, as it is.
                        let rest = framer.take_rest();
                        let Ok(Some(writer)) = (&mut write_task).await else {
                            // The client went before the splice began: so does the peer.
                            let connection = job.connection;
                            shared.with_core_commands(|core| {
                                core.handle_connection_closed(connection);
                            });
                            return;
                        };
                        let stream = reader.unsplit(writer);
                        crate::tcp_relay::splice(shared, stream, rest, job).await;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(%client, error = ?e, "closing a connection that is not TURN");
                    break 'read;
                }
            }
        }
        if framer.pending() > MAX_MESSAGE {
            counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    write_task.abort();
}

/// Forgets a connection and ends its allocation, unless a newer connection from the same
/// address (a client reusing its port) has taken the slot meanwhile: that one stays.
fn closed(
    shared: &Arc<Shared>,
    listener: &StreamListener,
    client: SocketAddr,
    mine: &mpsc::Sender<Outgoing>,
) {
    {
        let mut open = lock(&listener.connections.open);
        if !open.get(&client).is_some_and(|c| c.tx.same_channel(mine)) {
            return;
        }
        open.remove(&client);
        let mut per_ip = lock(&listener.connections.per_ip);
        if let Some(count) = per_ip.get_mut(&client.ip()) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&client.ip());
            }
        }
    }
    shared.client_closed(listener.id, client);
}

/// Binds a TCP listener socket.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(length: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0xAB, usize::from(length)));
        m
    }

    #[tokio::test]
    async fn a_full_send_queue_drops_and_counts() {
        let connections = Connections::default();
        let client: SocketAddr = "198.18.0.9:5000".parse().unwrap();
        let (tx, _rx) = mpsc::channel(2);
        let handle = ConnectionHandle {
            tx,
            splice: Arc::default(),
        };
        lock(&connections.open).insert(client, handle);
        assert!(connections.send(client, stun(0)));
        assert!(connections.send(client, stun(0)));
        assert!(!connections.send(client, stun(0)));
        assert_eq!(connections.counters.dropped.load(Ordering::Relaxed), 1);
        assert!(!connections.send("198.18.0.10:1".parse().unwrap(), stun(0)));
    }
}
