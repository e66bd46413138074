//! One [`Allocation`] (RFC 8656 §2.2): its relayed addresses, its [`Permission`]s and its
//! channel bindings, with their expiry times.
//!
//! This is plain state with lookups; when things are created, refreshed or expire, and which
//! commands that emits, is decided by `server`.
use std::collections::BTreeSet;

use super::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use stun_codec::TransactionId;

use super::{ChannelBinding, FiveTuple, ListenerId, RelayedAddress};

/// Permissions one allocation may hold (beyond: 508), whether made by CreatePermission or by
/// ChannelBind, to bound memory per client.
pub(crate) const MAX_PERMISSIONS_PER_ALLOCATION: usize = 1024;
/// Channel numbers one allocation may hold, bound or cooling down (beyond: 508), to bound
/// memory and kernel entries per client.
pub(crate) const MAX_CHANNELS_PER_ALLOCATION: usize = 1024;

/// Why a channel number cannot be bound to a peer on an allocation. The one statement of these
/// rules: ChannelBind answers them with an error code, the adoption of a saved state refuses
/// the allocation that breaks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelRule {
    #[error("the channel number is outside 0x4000-0x7FFF")]
    InvalidNumber,
    #[error("the allocation has no relayed address of the peer's family")]
    NoRelayedFamily,
    #[error("the channel number is bound to another peer")]
    NumberTaken,
    #[error("the peer is bound to another channel number")]
    PeerTaken,
    #[error("the allocation holds the most channels it may")]
    TooManyChannels,
    #[error("the allocation holds the most permissions it may")]
    TooManyPermissions,
}

impl ChannelRule {
    /// The error code ChannelBind answers with (RFC 8656 section 12).
    pub fn error_code(self) -> u16 {
        match self {
            ChannelRule::InvalidNumber | ChannelRule::NumberTaken | ChannelRule::PeerTaken => 400,
            ChannelRule::NoRelayedFamily => 443,
            ChannelRule::TooManyChannels | ChannelRule::TooManyPermissions => 508,
        }
    }
}

/// Why a permission cannot be installed on an allocation (CreatePermission's errors, and the
/// adoption of a saved state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PermissionRule {
    #[error("the allocation has no relayed address of the peer's family")]
    NoRelayedFamily,
    #[error("the allocation holds the most permissions it may")]
    TooManyPermissions,
}

impl PermissionRule {
    /// The error code CreatePermission answers with.
    pub fn error_code(self) -> u16 {
        match self {
            PermissionRule::NoRelayedFamily => 443,
            PermissionRule::TooManyPermissions => 508,
        }
    }
}

/// A permission: the allocation may exchange data with this peer IP until `expires`.
#[derive(Debug, Clone)]
pub struct Permission {
    pub(crate) expires: Instant,
    /// When the timer for this permission is due (see `server` for the re-arming scheme).
    pub(crate) timer_at: Instant,
}

impl Permission {
    /// When the permission expires unless refreshed.
    pub fn expires(&self) -> Instant {
        self.expires
    }
}

/// A channel number of an allocation, bound to a peer or cooling down after expiry.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
    pub(crate) timer_at: Instant,
    /// `false` once expired: for 5 more minutes neither the number nor the peer may be bound to
    /// anything else (RFC 8656 §12), and no data flows.
    pub(crate) bound: bool,
    /// The slot in `Stats::clusters` its traffic counts for, resolved when it was bound.
    pub(crate) cluster: usize,
}

/// An allocation: relayed transport address(es) held for one client 5-tuple.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) listener: ListenerId,
    pub(crate) username: String,
    /// One address, or two (IPv4 first) for a dual-stack allocation.
    pub(crate) relayed: Vec<RelayedAddress>,
    pub(crate) expires: Instant,
    pub(crate) timer_at: Instant,
    /// The Allocate that created it, to recognise retransmissions.
    pub(crate) transaction_id: TransactionId,
    pub(crate) permissions: HashMap<IpAddr, Permission>,
    pub(crate) channels: HashMap<u16, Channel>,
    pub(crate) channel_by_peer: HashMap<SocketAddr, u16>,
    /// `(peer IP, number)` of every channel: a permission's channels without a scan of all.
    pub(crate) channel_ips: BTreeSet<(IpAddr, u16)>,
    /// RESERVATION-TOKEN of the port reserved with it (EVEN-PORT with R): released with it
    /// unless claimed first.
    pub(crate) reservation: Option<u64>,
    /// Its user's slot in [`Usage`](super::Usage).
    pub(crate) user: usize,
    /// A TCP allocation (RFC 6062): its relayed address listens for TCP, it has connections
    /// with peers instead of channels.
    pub(crate) tcp: bool,
    /// A TCP allocation's connections with peers (at most one per peer address), by peer:
    /// their CONNECTION-IDs.
    pub(crate) connections: HashMap<SocketAddr, u32>,
}

impl Allocation {
    /// The client 5-tuple.
    pub fn five_tuple(&self) -> FiveTuple {
        self.five_tuple
    }

    /// The listener the client talks to.
    pub fn listener(&self) -> ListenerId {
        self.listener
    }

    /// The username that created it (later requests must use the same one).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Its relayed transport addresses.
    pub fn relayed_addresses(&self) -> &[RelayedAddress] {
        &self.relayed
    }

    /// Whether it is a TCP allocation (RFC 6062).
    pub fn is_tcp(&self) -> bool {
        self.tcp
    }

    /// When it expires unless refreshed.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Its permissions, by peer IP.
    pub fn permissions(&self) -> impl Iterator<Item = (IpAddr, &Permission)> {
        self.permissions.iter().map(|(ip, p)| (*ip, p))
    }

    /// Its bound channels (not those cooling down after expiry). A channel whose peer's
    /// permission has lapsed stays bound until its own lifetime ends (RFC 8656 §12) but relays
    /// nothing until the permission is installed again.
    pub fn channel_bindings(&self) -> impl Iterator<Item = ChannelBinding> + '_ {
        self.channels
            .iter()
            .filter(|(_, c)| c.bound)
            .filter_map(|(number, c)| self.binding(*number, c.peer))
    }

    /// Bound channels to peers on `ip` (any port).
    pub(crate) fn bindings_to(&self, ip: IpAddr) -> impl Iterator<Item = ChannelBinding> + '_ {
        self.channel_ips
            .range((ip, 0)..=(ip, u16::MAX))
            .filter_map(|(_, number)| {
                let channel = self.channels.get(number).filter(|c| c.bound)?;
                self.binding(*number, channel.peer)
            })
    }

    /// Bound channels that also have their permission: those the fast path relays (each
    /// announced with `ChannelBound` and not yet withdrawn).
    pub(crate) fn installed_bindings(&self) -> impl Iterator<Item = ChannelBinding> + '_ {
        self.channel_bindings()
            .filter(|b| self.permissions.contains_key(&b.peer.ip()))
    }

    /// Adds channel `number` (not present yet) with its indexes.
    pub(crate) fn add_channel(&mut self, number: u16, channel: Channel) {
        self.channel_by_peer.insert(channel.peer, number);
        self.channel_ips.insert((channel.peer.ip(), number));
        self.channels.insert(number, channel);
    }

    /// Removes channel `number` with its indexes.
    pub(crate) fn remove_channel(&mut self, number: u16) {
        if let Some(channel) = self.channels.remove(&number) {
            self.channel_by_peer.remove(&channel.peer);
            self.channel_ips.remove(&(channel.peer.ip(), number));
        }
    }

    /// The relayed address of the same family as `peer`, if the allocation has one.
    pub fn relayed_for(&self, peer: IpAddr) -> Option<SocketAddr> {
        self.relayed
            .iter()
            .map(|r| r.0)
            .find(|r| r.is_ipv4() == peer.is_ipv4())
    }

    /// May permissions for `peers` be installed (all of them)? Peers already permitted are
    /// refreshes and take no room.
    pub(crate) fn check_permissions(&self, peers: &[IpAddr]) -> Result<(), PermissionRule> {
        if peers.iter().any(|peer| self.relayed_for(*peer).is_none()) {
            return Err(PermissionRule::NoRelayedFamily);
        }
        let mut fresh: Vec<IpAddr> = peers
            .iter()
            .filter(|peer| !self.permissions.contains_key(peer))
            .copied()
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if self.permissions.len() + fresh.len() > MAX_PERMISSIONS_PER_ALLOCATION {
            return Err(PermissionRule::TooManyPermissions);
        }
        Ok(())
    }

    /// May channel `number` be bound (or its binding refreshed) to `peer`? This includes the
    /// permission the binding installs for the peer's IP.
    pub(crate) fn check_channel(&self, number: u16, peer: SocketAddr) -> Result<(), ChannelRule> {
        if !relay_common::is_channel_number(number) {
            return Err(ChannelRule::InvalidNumber);
        }
        if self.relayed_for(peer.ip()).is_none() {
            return Err(ChannelRule::NoRelayedFamily);
        }
        if self.channels.get(&number).is_some_and(|c| c.peer != peer) {
            return Err(ChannelRule::NumberTaken);
        }
        if self
            .channel_by_peer
            .get(&peer)
            .is_some_and(|bound| *bound != number)
        {
            return Err(ChannelRule::PeerTaken);
        }
        if !self.channels.contains_key(&number)
            && self.channels.len() >= MAX_CHANNELS_PER_ALLOCATION
        {
            return Err(ChannelRule::TooManyChannels);
        }
        if !self.permissions.contains_key(&peer.ip())
            && self.permissions.len() >= MAX_PERMISSIONS_PER_ALLOCATION
        {
            return Err(ChannelRule::TooManyPermissions);
        }
        Ok(())
    }

    pub(crate) fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions.get(&peer).is_some_and(|p| p.expires > now)
    }

    /// The peer and cluster slot of a bound, unexpired channel.
    pub(crate) fn channel_peer_cluster(
        &self,
        number: u16,
        now: Instant,
    ) -> Option<(SocketAddr, usize)> {
        self.channels
            .get(&number)
            .filter(|c| c.bound && c.expires > now)
            .map(|c| (c.peer, c.cluster))
    }

    /// The bound, unexpired channel to `peer`, with its cluster slot.
    pub(crate) fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<(u16, usize)> {
        let number = *self.channel_by_peer.get(&peer)?;
        self.channel_peer_cluster(number, now)
            .map(|(_, cluster)| (number, cluster))
    }

    /// The [`ChannelBinding`] of `number` to `peer`.
    pub(crate) fn binding(&self, number: u16, peer: SocketAddr) -> Option<ChannelBinding> {
        Some(ChannelBinding {
            listener: self.listener,
            client: self.five_tuple.client,
            server: self.five_tuple.server,
            relayed: self.relayed_for(peer.ip())?,
            peer,
            channel: number,
            cluster: self.channels.get(&number).map_or(0, |c| c.cluster),
            user: self.user,
        })
    }
}
