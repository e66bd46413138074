//! TCP allocations (RFC 6062): Connect, ConnectionBind, ConnectionAttempt, and the peer
//! connections of TCP allocations.
//!
//! A client on a TCP or TLS connection (the control connection) allocates with
//! REQUESTED-TRANSPORT TCP; its relayed address is a listening TCP socket ([`Command::ListenRelay`]).
//! A connection with a peer comes about two ways:
//! - the client sends Connect: the I/O layer connects from the relayed address
//!   ([`Command::ConnectPeer`]) and reports the outcome ([`Server::handle_peer_connected`]),
//!   which answers the Connect with a CONNECTION-ID or 447;
//! - a peer connects to the relayed address: the I/O layer accepts and asks
//!   ([`Server::handle_peer_connection`]); with a permission for the peer the client gets a
//!   ConnectionAttempt indication with a CONNECTION-ID, without one the connection is closed.
//!
//! Either way the client then opens a new TCP connection (a data connection) and sends
//! ConnectionBind with that CONNECTION-ID; on success ([`Command::BindData`]) the I/O layer
//! splices the two connections' bytes and the core sees no more of them. A connection not bound
//! within [`CONNECTION_BIND_TIMEOUT`] is closed ([`Command::CloseConnection`]), as is every
//! connection of an allocation that ends. The I/O layer reports a splice's end with
//! [`Server::handle_connection_closed`] and what it relayed with [`Server::count_tcp_traffic`].
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng as _;
use stun_codec::{Message, MessageClass};
use tracing::debug;

use super::data::ChannelTraffic;
use super::state::*;
use super::{Command, FiveTuple, ListenerId};
use crate::attributes::{Attribute, ConnectionId, XorPeerAddress};
use crate::wire::Header;

/// How long a peer connection waits for its ConnectionBind (RFC 6062: 30 s).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one TCP allocation may hold with peers, pending or bound (beyond: 508).
pub(crate) const MAX_CONNECTIONS_PER_ALLOCATION: usize = 64;
/// RFC 6062's methods.
pub const CONNECT: u16 = 0x000A;
pub const CONNECTION_BIND: u16 = 0x000B;
pub const CONNECTION_ATTEMPT: u16 = 0x000C;

/// Where a peer connection of a TCP allocation stands.
#[derive(Debug)]
pub(super) enum PeerConnectionState {
    /// A Connect waits for the I/O layer's connection to the peer.
    Connecting {
        listener: ListenerId,
        header: Header,
        /// Boxed: its prepared key makes it the largest variant by far.
        auth: Box<AuthContext>,
    },
    /// Connected, waiting for the client's ConnectionBind until its timer.
    Unbound,
    /// Spliced with the client's data connection.
    Bound,
}

/// A TCP connection with a peer of a TCP allocation.
#[derive(Debug)]
pub(super) struct PeerConnection {
    pub(super) owner: FiveTuple,
    pub(super) peer: SocketAddr,
    pub(super) state: PeerConnectionState,
    /// When its ConnectionBind deadline is due (only while `Unbound`).
    pub(super) timer_at: Option<Instant>,
}

impl Server {
    /// Connect (RFC 6062 §4.3): a connection from the allocation's relayed address to a peer.
    pub(super) fn connect(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        header: Header,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        let name = self.listener_name(listener).to_owned();
        let allocation = match owned_allocation(&mut self.allocations, &five_tuple, auth) {
            Ok(allocation) => allocation,
            Err(reply) => return reply,
        };
        if !allocation.tcp {
            return Reply::error(400);
        }
        let Some(peer) = message
            .get_attribute::<XorPeerAddress>()
            .map(XorPeerAddress::address)
        else {
            return Reply::error(400);
        };
        let Some(relayed) = allocation.relayed_for(peer.ip()) else {
            return Reply::error(443);
        };
        if let Err(denied) = self.policy.permits_over(&name, peer, true) {
            debug!(client = %five_tuple.client, %denied, "Connect refused");
            self.stats.peer_denied += 1;
            return Reply::error(403);
        }
        if !allocation.has_permission(peer.ip(), now) {
            return Reply::error(403);
        }
        if allocation.connections.contains_key(&peer) {
            return Reply::error(446);
        }
        if allocation.connections.len() >= MAX_CONNECTIONS_PER_ALLOCATION {
            return Reply::error(508);
        }
        let id = self.new_connection_id();
        self.insert_connection(
            id,
            PeerConnection {
                owner: five_tuple,
                peer,
                state: PeerConnectionState::Connecting {
                    listener,
                    header,
                    auth: Box::new(auth.clone()),
                },
                timer_at: None,
            },
        );
        self.stats.tcp_connects += 1;
        self.commands.push_back(Command::ConnectPeer {
            connection: id,
            relayed,
            peer,
        });
        Reply::Parked
    }

    /// Outcome of a [`Command::ConnectPeer`]: the Connect is answered, with its CONNECTION-ID
    /// (and the client has [`CONNECTION_BIND_TIMEOUT`] to bind it) or with 447.
    pub fn handle_peer_connected(&mut self, connection: u32, connected: bool, now: Instant) {
        let Some(entry) = self.tcp_connections.get_mut(&connection) else {
            // Its allocation went meanwhile: the I/O layer was told to close it.
            return;
        };
        let PeerConnectionState::Connecting {
            listener,
            header,
            auth,
        } = std::mem::replace(&mut entry.state, PeerConnectionState::Unbound)
        else {
            return;
        };
        let five_tuple = entry.owner;
        if connected {
            let at = now + CONNECTION_BIND_TIMEOUT;
            entry.timer_at = Some(at);
            self.timers.insert((at, Timer::Connection(connection)));
            let reply = Reply::Success(vec![ConnectionId::new(connection).into()]);
            self.respond(listener, five_tuple, header, reply, Some(&auth), Some(now));
        } else {
            self.stats.tcp_connect_failures += 1;
            self.remove_connection(connection);
            self.respond(
                listener,
                five_tuple,
                header,
                Reply::error(447),
                Some(&auth),
                Some(now),
            );
        }
    }

    /// A peer connected to the TCP relayed address `relayed` (RFC 6062 §4.5): with a
    /// permission for it, the client gets a ConnectionAttempt and the connection's id is
    /// returned (the I/O layer keeps the connection until it is bound or closed); without, or
    /// on an address that is no TCP allocation's, `None`: the I/O layer closes it.
    pub fn handle_peer_connection(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<u32> {
        let five_tuple = *self.by_relayed.get(&relayed)?;
        let allocation = self.allocations.get(&five_tuple)?;
        let listener = allocation.listener;
        let permitted = allocation.tcp
            && allocation.has_permission(peer.ip(), now)
            && self
                .policy
                .permits_over(self.listener_name(listener), peer, true)
                .is_ok();
        if !permitted {
            self.stats.peer_dropped_no_permission += 1;
            return None;
        }
        if allocation.connections.contains_key(&peer)
            || allocation.connections.len() >= MAX_CONNECTIONS_PER_ALLOCATION
        {
            self.stats.tcp_connections_refused += 1;
            return None;
        }
        let id = self.new_connection_id();
        let at = now + CONNECTION_BIND_TIMEOUT;
        self.insert_connection(
            id,
            PeerConnection {
                owner: five_tuple,
                peer,
                state: PeerConnectionState::Unbound,
                timer_at: Some(at),
            },
        );
        self.timers.insert((at, Timer::Connection(id)));
        self.stats.tcp_connection_attempts += 1;
        let transaction_id: [u8; 12] = self.rng.random();
        if let Some(data) = connection_attempt(transaction_id, peer, id) {
            self.commands.push_back(Command::SendToClient {
                listener,
                client: five_tuple.client,
                data,
            });
        }
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §4.4), on a new TCP connection of the client: it becomes the
    /// data connection of a connection with a peer.
    pub(super) fn connection_bind(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        message: &Message<Attribute>,
        auth: &AuthContext,
    ) -> Reply {
        if five_tuple.transport != super::Transport::Tcp
            || self.allocations.contains_key(&five_tuple)
        {
            return Reply::error(400);
        }
        let Some(id) = message.get_attribute::<ConnectionId>().map(|c| c.value()) else {
            return Reply::error(400);
        };
        let Some(entry) = self.tcp_connections.get(&id) else {
            return Reply::error(400);
        };
        if !matches!(entry.state, PeerConnectionState::Unbound) {
            return Reply::error(400);
        }
        let owner = entry.owner;
        let user = match self.allocations.get(&owner) {
            Some(allocation) if allocation.username == auth.username => allocation.user,
            Some(_) => return Reply::error(441),
            None => return Reply::error(400),
        };
        if let Some(entry) = self.tcp_connections.get_mut(&id) {
            entry.state = PeerConnectionState::Bound;
            if let Some(at) = entry.timer_at.take() {
                self.timers.remove(&(at, Timer::Connection(id)));
            }
        }
        self.stats.tcp_connections_bound += 1;
        // After the response: from then on the connection carries the peer's bytes.
        self.after_response.push(Command::BindData {
            connection: id,
            listener,
            client: five_tuple.client,
            user,
        });
        Reply::Success(Vec::new())
    }

    /// A peer connection's ConnectionBind deadline came: still unbound, it is closed.
    pub(super) fn connection_timer(&mut self, id: u32, at: Instant) {
        let due = self
            .tcp_connections
            .get(&id)
            .is_some_and(|c| c.timer_at == Some(at));
        if due {
            self.stats.tcp_connections_timed_out += 1;
            debug!(
                connection = id,
                "no ConnectionBind in time: peer connection closed"
            );
            self.remove_connection(id);
            self.commands
                .push_back(Command::CloseConnection { connection: id });
        }
    }

    /// A peer connection, or its client's data connection, closed (the I/O layer closes the
    /// other): forgotten.
    pub fn handle_connection_closed(&mut self, connection: u32) {
        self.remove_connection(connection);
    }

    /// Counts what a spliced connection relayed (data bytes each way; "packets" are the reads
    /// that carried them) in the totals and in the usage of the user in slot `user`
    /// ([`Command::BindData`]'s).
    pub fn count_tcp_traffic(&mut self, user: usize, traffic: ChannelTraffic) {
        self.usage.add_traffic(user, &traffic);
        let stats = &mut self.stats;
        stats.relayed_to_peer_packets += traffic.to_peer_packets;
        stats.relayed_to_peer_bytes += traffic.to_peer_bytes;
        stats.relayed_to_client_packets += traffic.to_client_packets;
        stats.relayed_to_client_bytes += traffic.to_client_bytes;
    }

    /// Closes the connections `ids` of an allocation that is going.
    pub(super) fn close_connections(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            self.close_connection(id);
        }
    }

    /// Forgets connection `id` and has the I/O layer close it.
    pub(super) fn close_connection(&mut self, id: u32) {
        self.remove_connection(id);
        self.commands
            .push_back(Command::CloseConnection { connection: id });
    }

    fn new_connection_id(&mut self) -> u32 {
        loop {
            let id: u32 = self.rng.random();
            if id != 0 && !self.tcp_connections.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert_connection(&mut self, id: u32, connection: PeerConnection) {
        if let Some(allocation) = self.allocations.get_mut(&connection.owner) {
            allocation.connections.insert(connection.peer, id);
        }
        self.tcp_connections.insert(id, connection);
    }

    fn remove_connection(&mut self, id: u32) {
        if let Some(connection) = self.tcp_connections.remove(&id) {
            if let Some(allocation) = self.allocations.get_mut(&connection.owner) {
                allocation.connections.remove(&connection.peer);
            }
            if let Some(at) = connection.timer_at {
                self.timers.remove(&(at, Timer::Connection(id)));
            }
        }
    }

    /// The control connection's client address of the connection a ConnectionBind names.
    pub(super) fn connection_owner(&self, message: &Message<Attribute>) -> Option<SocketAddr> {
        let id = message.get_attribute::<ConnectionId>()?.value();
        Some(self.tcp_connections.get(&id)?.owner.client)
    }

    /// Peer connections now (pending and bound).
    pub fn tcp_connection_count(&self) -> usize {
        self.tcp_connections.len()
    }
}

/// A ConnectionAttempt indication: the peer and the CONNECTION-ID, with a FINGERPRINT.
fn connection_attempt(transaction_id: [u8; 12], peer: SocketAddr, id: u32) -> Option<Vec<u8>> {
    use bytecodec::EncodeExt as _;
    let method = stun_codec::Method::new(CONNECTION_ATTEMPT).ok()?;
    let mut message = Message::<Attribute>::new(
        MessageClass::Indication,
        method,
        stun_codec::TransactionId::new(transaction_id),
    );
    message.add_attribute(XorPeerAddress::new(peer));
    message.add_attribute(ConnectionId::new(id));
    let mut bytes = stun_codec::MessageEncoder::<Attribute>::new()
        .encode_into_bytes(message)
        .ok()?;
    crate::wire::append_fingerprint(&mut bytes);
    Some(bytes)
}
