//! The sans-IO TURN server: RFC 8489 STUN and RFC 8656 TURN over UDP.
//!
//! [`Server`] owns all protocol state — allocations, permissions, channel bindings, relayed-port
//! reservations, the transaction cache — and nothing else: datagrams, bind outcomes and the
//! current time come in through `handle_*` calls, and everything the I/O layer must do comes
//! out as [`Command`]s from [`Server::poll_command`]. It reads no clock, opens no socket and uses
//! no global randomness, so every behaviour can be driven and checked from a test.
//!
//! Submodules:
//! - `allocation`: an [`Allocation`] with its permissions and channel bindings;
//! - `ports`: choosing relayed ports;
//! - `txcache`: responses kept for retransmitted requests;
//! - `snapshot`: the [`Snapshot`] a restarted agent adopts;
//! - `stats`: the [`Stats`] counters;
//! - `state`: [`Server`] itself: its state, construction and accessors;
//! - one module per procedure, each an `impl Server` block: `request` (demultiplexing, dispatch,
//!   responses), `authenticate` (RFC 8489 §9.2.4), `allocate` (RFC 8656 §7.2 and the relayed-port
//!   binding), `refresh` (§7.3), `permission` (§9), `channel` (§11), `data` (§10, §12: Send and
//!   Data indications, ChannelData), `timers` (expiry), `restore` (snapshot and adoption).
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The core's hash maps: keyed by what clients choose (addresses, transaction IDs), so seeded
/// per process (foldhash's `RandomState`), and cheaper than SipHash on every request.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

mod allocate;
mod allocation;
mod answers;
mod authenticate;
mod channel;
mod data;
mod permission;
mod ports;
mod refresh;
mod request;
mod restore;
mod snapshot;
mod state;
mod stats;
mod tcp;
mod timers;
mod txcache;
mod usage;

#[cfg(test)]
mod tests;

pub use allocation::{Allocation, ChannelRule, Permission, PermissionRule};
pub use answers::AnswerLimits;
pub use data::ChannelTraffic;
pub use snapshot::{
    AdoptionRefusal, AllocationChange, AllocationState, ChannelState, PermissionState,
    ReservationState, RestoreOutcome, SNAPSHOT_VERSION, Snapshot,
};
pub use state::{Revoked, Server};
pub use stats::{ClusterTraffic, Stats};
pub use tcp::{CONNECT, CONNECTION_ATTEMPT, CONNECTION_BIND, CONNECTION_BIND_TIMEOUT};
pub use usage::{Usage, UserUsage};

/// Index of a listener in [`ServerConfig::listeners`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u16);

/// A local address clients reach the server on.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Name used by the peer policy to pick the listener's routes.
    pub name: String,
    /// The listener's local address (the server side of clients' 5-tuples).
    pub addr: SocketAddr,
    /// UDP (plain or DTLS) or TCP (plain or TLS): the transport of its clients' 5-tuples.
    pub transport: Transport,
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// REALM of the long-term credential mechanism.
    pub realm: String,
    /// SOFTWARE attribute in responses, e.g. "xturn/0.1.0" (at most 127 characters are sent).
    pub software: String,
    /// Where clients reach the server; [`ListenerId`] indexes this.
    pub listeners: Vec<Listener>,
    /// Address IPv4 relayed ports are bound on; `None`: IPv4 allocations get 440.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Address IPv6 relayed ports are bound on; `None`: IPv6 allocations get 440.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Lowest relayed port (inclusive).
    pub min_port: u16,
    /// Highest relayed port (inclusive).
    pub max_port: u16,
    /// Allocation lifetime when the client asks for none or for less (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (RFC 8656: 3600 s).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a NONCE stays valid.
    pub nonce_lifetime: Duration,
    /// Total number of allocations (and Allocates being bound); beyond it: 508.
    pub max_allocations: usize,
    /// Allocations per username; beyond it: 486.
    pub max_allocations_per_user: usize,
    /// Allocations (and Allocates binding their sockets) per client IP address, whoever the
    /// user; beyond it: 486. Bounds what one host takes however many credentials it holds.
    pub max_allocations_per_ip: usize,
    /// A STUN server only (STUNner's `auth.type: none`): Binding requests are answered, every
    /// TURN request (Allocate, Refresh, CreatePermission, ChannelBind) is refused with 403
    /// Forbidden before any authentication and counted (`Stats::stun_only_refused`), so no
    /// credentials are needed and nothing is ever relayed.
    pub stun_only: bool,
    /// What a UDP source may get back without authenticating (see [`AnswerLimits`]).
    pub answer_limits: AnswerLimits,
    /// Users whose usage is counted each on its own ([`Usage`]); the rest count together.
    pub max_tracked_users: usize,
}

impl ServerConfig {
    /// RFC 8656 defaults: ports 49152..=65535, 600 s / 3600 s allocation lifetimes, 300 s
    /// permissions, 600 s channels and nonces, quotas 10000 in all, 100 per user and 1000 per
    /// client IP; SOFTWARE
    /// "xturn/<version>"; no relay address (set `relay_ipv4` / `relay_ipv6`).
    pub fn new(realm: impl Into<String>, listeners: Vec<Listener>) -> Self {
        ServerConfig {
            realm: realm.into(),
            software: concat!("xturn/", env!("CARGO_PKG_VERSION")).to_owned(),
            listeners,
            relay_ipv4: None,
            relay_ipv6: None,
            min_port: 49152,
            max_port: 65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            max_allocations_per_ip: 1000,
            stun_only: false,
            answer_limits: AnswerLimits::default(),
            max_tracked_users: 10_000,
        }
    }
}

/// Why a [`Command::BindRelay`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindFailure {
    /// The port is taken by someone else: the server tries another one.
    AddressInUse,
    /// Anything else: the server gives up on that family.
    Other,
}

/// What the I/O layer must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send `data` to `client` from `listener`.
    SendToClient {
        listener: ListenerId,
        client: SocketAddr,
        data: Vec<u8>,
    },
    /// Send `data` to `peer` from the relayed socket `relayed` (with the DF bit if asked).
    SendToPeer {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
        dont_fragment: bool,
    },
    /// Bind a UDP socket on exactly `addr`; answer with [`Server::handle_relay_bound`].
    BindRelay { addr: SocketAddr },
    /// A TCP allocation's relayed address (RFC 6062): listen for TCP on exactly `addr`; answer
    /// with [`Server::handle_relay_bound`]. Peers that connect are reported with
    /// [`Server::handle_peer_connection`]. `ReleaseRelay` closes it.
    ListenRelay { addr: SocketAddr },
    /// Connect over TCP from `relayed` to `peer` (a Connect); answer with
    /// [`Server::handle_peer_connected`]. The connection is `connection` from then on.
    ConnectPeer {
        connection: u32,
        relayed: SocketAddr,
        peer: SocketAddr,
    },
    /// The client's TCP connection from `client` on `listener` became the data connection of
    /// peer connection `connection` (after the ConnectionBind response queued before this):
    /// splice their bytes, and report the end with [`Server::handle_connection_closed`].
    BindData {
        connection: u32,
        listener: ListenerId,
        client: SocketAddr,
        /// The slot of the allocation's user in [`Usage`], for [`Server::count_tcp_traffic`].
        user: usize,
    },
    /// Close peer connection `connection` (and its data connection, if bound).
    CloseConnection { connection: u32 },
    /// Close the relayed socket at `addr` (allocation gone, or a reservation expired).
    ReleaseRelay { addr: SocketAddr },
    /// A channel relays now: the fast path may install its kernel entries. Sent when it is
    /// bound, and again when the permission of its peer is installed anew while it is still
    /// bound.
    ChannelBound(ChannelBinding),
    /// A channel relays no longer: the fast path removes its kernel entries. Sent when it
    /// expires or its allocation goes, and when the permission of its peer expires (the
    /// binding itself lasts until its own expiry; a new permission brings a `ChannelBound`).
    ChannelUnbound(ChannelBinding),
}

/// A channel binding, with everything the fast path needs to relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelBinding {
    pub listener: ListenerId,
    pub client: SocketAddr,
    /// The listener's address.
    pub server: SocketAddr,
    pub relayed: SocketAddr,
    pub peer: SocketAddr,
    pub channel: u16,
    /// The cluster its traffic counts for: a slot of [`Stats::clusters`] (0 is no cluster),
    /// resolved by the peer policy in force when the channel was bound.
    pub cluster: usize,
    /// The user its traffic counts for: a slot of [`Usage::users`] (0: users past the cap).
    pub user: usize,
}

/// The transport between client and server (RFC 8656 §2: TLS runs over TCP, DTLS over UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Transport {
    #[default]
    Udp,
    /// A stream: one TCP connection per client 5-tuple. Its allocations end with it.
    Tcp,
}

/// The client side of an allocation (RFC 8656 §2): client address, server address, transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// A relayed transport address: where a relayed socket of an allocation is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayedAddress(pub SocketAddr);
