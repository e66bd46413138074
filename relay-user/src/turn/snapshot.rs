//! [`Snapshot`]: the allocation state a restarted agent adopts (see [`Server::snapshot`] and
//! [`Server::restore`]).
//!
//! Times are UNIX milliseconds, so the time an agent spends down counts against every lifetime.
//! Relayed-port reservations (EVEN-PORT with R), Allocates still binding their sockets, the
//! transaction cache and the counters are not kept.
//!
//! [`Server::snapshot`]: super::Server::snapshot
//! [`Server::restore`]: super::Server::restore
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The version written in [`Snapshot::version`]; other versions are refused.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Every allocation of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// When it was taken (UNIX milliseconds).
    pub taken_unix_ms: u64,
    pub allocations: Vec<AllocationState>,
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
}
