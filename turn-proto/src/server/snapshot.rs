//! [`Snapshot`]: the allocation state a restarted agent adopts (see [`Server::snapshot`] and
//! [`Server::restore`]).
//!
//! Times are UNIX milliseconds, so the time an agent spends down counts against every lifetime.
//! Allocates still binding their sockets, the transaction cache and the counters are not kept.
//!
//! A saved allocation is adopted only if the live server could have made it: the rules are the
//! ones ChannelBind, CreatePermission and Allocate apply ([`ChannelRule`], [`PermissionRule`],
//! the quotas and the relayed address rules); what breaks one is refused with an
//! [`AdoptionRefusal`] that names it.
//!
//! [`Server::snapshot`]: super::Server::snapshot
//! [`Server::restore`]: super::Server::restore
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::allocation::{ChannelRule, PermissionRule};

/// The version written in [`Snapshot::version`]; other versions are refused.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Every allocation of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// When it was taken (UNIX milliseconds).
    pub taken_unix_ms: u64,
    /// Which journal of [`AllocationChange`]s continues it: the I/O layer's to set and check
    /// (0: none; absent in files written before there were journals).
    #[serde(default)]
    pub generation: u64,
    pub allocations: Vec<AllocationState>,
}

impl Snapshot {
    /// The snapshot with `changes` (taken after it, in order) applied: what a snapshot taken
    /// after them would hold. Allocations stay sorted as [`Server::snapshot`] sorts them.
    ///
    /// [`Server::snapshot`]: super::Server::snapshot
    #[must_use]
    pub fn with_changes(mut self, changes: impl IntoIterator<Item = AllocationChange>) -> Snapshot {
        let mut by_key: std::collections::BTreeMap<AllocationKey, AllocationState> = self
            .allocations
            .drain(..)
            .map(|a| ((a.client, a.server, a.listener), a))
            .collect();
        for change in changes {
            match change {
                AllocationChange::Put(state) => {
                    by_key.insert((state.client, state.server, state.listener), state);
                }
                AllocationChange::Remove {
                    client,
                    server,
                    listener,
                } => {
                    by_key.remove(&(client, server, listener));
                }
            }
        }
        self.allocations = by_key.into_values().collect();
        self.allocations.sort_by_key(|a| (a.client, a.server));
        self
    }
}

/// What names an allocation in a snapshot: its client, server and listener.
type AllocationKey = (SocketAddr, SocketAddr, u16);

/// One allocation's change since an earlier [`Snapshot`] (see
/// [`Server::take_changes`](super::Server::take_changes)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationChange {
    /// It was made or changed: its state now.
    Put(AllocationState),
    /// It went.
    Remove {
        client: SocketAddr,
        server: SocketAddr,
        listener: u16,
    },
}

impl AllocationChange {
    /// Its allocation's client and server (the order [`Server::take_changes`] lists them in).
    ///
    /// [`Server::take_changes`]: super::Server::take_changes
    pub fn key(&self) -> (SocketAddr, SocketAddr) {
        match self {
            AllocationChange::Put(state) => (state.client, state.server),
            AllocationChange::Remove { client, server, .. } => (*client, *server),
        }
    }
}

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationState {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Index of the listener (must name the same listener after a restart).
    pub listener: u16,
    pub username: String,
    /// One address, or two for a dual-stack allocation.
    pub relayed: Vec<SocketAddr>,
    pub expires_unix_ms: u64,
    /// The Allocate's transaction id (to recognise retransmissions).
    pub transaction_id: [u8; 12],
    pub permissions: Vec<PermissionState>,
    pub channels: Vec<ChannelState>,
    /// The port it reserved with EVEN-PORT's R bit, while unclaimed (absent in files written
    /// before reservations were kept: none is adopted then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationState>,
}

/// A relayed port held for a later Allocate with RESERVATION-TOKEN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    pub token: u64,
    pub relayed: SocketAddr,
    pub expires_unix_ms: u64,
}

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionState {
    pub peer: IpAddr,
    pub expires_unix_ms: u64,
}

/// One channel number: bound, or cooling down after its binding expired (`bound: false`,
/// `expires_unix_ms` is then the end of the cool-down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires_unix_ms: u64,
    pub bound: bool,
}

/// What [`Server::restore`](super::Server::restore) took and left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// Relayed addresses to bind, exactly (a failure: [`Server::drop_restored`](super::Server::drop_restored)).
    pub relayed: Vec<SocketAddr>,
    /// Allocations adopted.
    pub allocations: usize,
    /// Bound channels adopted.
    pub channels: usize,
    /// Allocations left out: expired meanwhile, unknown listener, invalid or conflicting.
    pub skipped: usize,
    /// Why each left-out allocation was refused (`skipped` of them in all).
    pub refused: Vec<(SocketAddr, AdoptionRefusal)>,
}

/// Why a saved allocation was not adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdoptionRefusal {
    #[error("the state file is of an unknown version")]
    UnknownVersion,
    #[error("its listener is not configured any more")]
    ListenerGone,
    #[error("its client's connection ended with the restart")]
    ConnectionEnded,
    #[error("it expired while the agent was down")]
    Expired,
    #[error("the client has an allocation already")]
    ClientHasAllocation,
    #[error("the allocation quota is full")]
    TotalQuota,
    #[error("the user's allocation quota is full")]
    UserQuota,
    #[error("its relayed addresses are not one address, or one of each family")]
    RelayedMalformed,
    #[error("a relayed address is not on a configured relay IP and port range")]
    RelayedNotConfigured,
    #[error("a relayed address is taken")]
    RelayedTaken,
    #[error("a permission: {0}")]
    Permission(PermissionRule),
    #[error("a channel: {0}")]
    Channel(ChannelRule),
    #[error("a permission is listed twice")]
    PermissionListedTwice,
    #[error("a channel number is listed twice")]
    ChannelListedTwice,
    #[error("its reservation's token or port is taken")]
    ReservationTaken,
    #[error("a relayed address could not be bound")]
    RelayedUnbindable,
}

impl AdoptionRefusal {
    /// Every label [`AdoptionRefusal::label`] returns, for exporters that list them all.
    pub const LABELS: [&'static str; 21] = [
        "unknown_version",
        "listener_gone",
        "connection_ended",
        "expired",
        "client_has_allocation",
        "total_quota",
        "user_quota",
        "relayed_malformed",
        "relayed_not_configured",
        "relayed_taken",
        "permission_family",
        "too_many_permissions",
        "permission_listed_twice",
        "channel_number",
        "channel_family",
        "channel_number_taken",
        "channel_peer_taken",
        "too_many_channels",
        "channel_listed_twice",
        "reservation_taken",
        "relayed_unbindable",
    ];

    /// The rule that refused it, as a metric label (`reason`).
    pub fn label(self) -> &'static str {
        match self {
            AdoptionRefusal::UnknownVersion => "unknown_version",
            AdoptionRefusal::ListenerGone => "listener_gone",
            AdoptionRefusal::ConnectionEnded => "connection_ended",
            AdoptionRefusal::Expired => "expired",
            AdoptionRefusal::ClientHasAllocation => "client_has_allocation",
            AdoptionRefusal::TotalQuota => "total_quota",
            AdoptionRefusal::UserQuota => "user_quota",
            AdoptionRefusal::RelayedMalformed => "relayed_malformed",
            AdoptionRefusal::RelayedNotConfigured => "relayed_not_configured",
            AdoptionRefusal::RelayedTaken => "relayed_taken",
            AdoptionRefusal::Permission(PermissionRule::NoRelayedFamily) => "permission_family",
            AdoptionRefusal::Permission(PermissionRule::TooManyPermissions)
            | AdoptionRefusal::Channel(ChannelRule::TooManyPermissions) => "too_many_permissions",
            AdoptionRefusal::Channel(ChannelRule::InvalidNumber) => "channel_number",
            AdoptionRefusal::Channel(ChannelRule::NoRelayedFamily) => "channel_family",
            AdoptionRefusal::Channel(ChannelRule::NumberTaken) => "channel_number_taken",
            AdoptionRefusal::Channel(ChannelRule::PeerTaken) => "channel_peer_taken",
            AdoptionRefusal::Channel(ChannelRule::TooManyChannels) => "too_many_channels",
            AdoptionRefusal::PermissionListedTwice => "permission_listed_twice",
            AdoptionRefusal::ChannelListedTwice => "channel_listed_twice",
            AdoptionRefusal::ReservationTaken => "reservation_taken",
            AdoptionRefusal::RelayedUnbindable => "relayed_unbindable",
        }
    }
}
