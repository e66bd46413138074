//! [`Server`]: its state, construction and accessors, and the helpers its procedures share.
//! Each procedure has a module of its own (request, authenticate, allocate, refresh,
//! permission, channel, data, timers, snapshot).
//!
//! Timers: every allocation, permission, channel and reservation has exactly one entry in an
//! ordered set, at `(timer_at, Timer)`. Refreshing only moves `expires` later; when the entry
//! comes due the item is either expired or the entry is inserted again at the new `expires`.
//! Whoever removes an item (or moves its timer earlier) removes its entry too, so the set holds
//! one entry per live item: its size follows live state, not how many items clients created and
//! deleted (a heap with lazily skipped stale entries would grow with churn).
use std::collections::{BTreeSet, VecDeque};

use super::answers::AnswerBudget;
use super::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stun_codec::Attribute as _;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use stun_codec::Message;
use stun_codec::rfc8656::attributes::AddressFamily;
use tracing::{debug, info, warn};

use super::allocation::Allocation;
use super::ports::Ports;
use super::stats::Stats;
use super::txcache::TransactionCache;
use super::usage::Usage;
use super::{Command, FiveTuple, ListenerId, ServerConfig};
use crate::attributes::{Attribute, IGNORED_REQUIRED, Lifetime, Software};
use crate::auth::{Credentials, NonceMint};
use crate::policy::PeerPolicy;
use crate::wire::{Header, StunFrame};

/// How many port choices one Allocate makes in all (each AddressInUse costs one) before 508.
pub(super) const MAX_BIND_ATTEMPTS: u32 = 16;
/// How long the port held by EVEN-PORT's R bit waits for its RESERVATION-TOKEN (RFC 8656 §7.2).
pub(super) const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// After a channel binding expires, neither its number nor its peer may be rebound to
/// something else for this long (RFC 8656 §12).
pub(super) const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// Attribute types listed in UNKNOWN-ATTRIBUTES. RFC 8489 §14.9 does not bound the list, but a
/// request can carry thousands of unknown attributes and the response (which gets cached)
/// would grow with them; the first few distinct ones are all a client needs to see the problem.
pub(super) const MAX_UNKNOWN_ATTRIBUTES: usize = 16;
/// Transaction cache entries live a little longer than a client's last retransmission.
pub(super) const TX_CACHE_TTL: Duration = Duration::from_secs(40);
pub(super) const TX_CACHE_CAPACITY: usize = 8192;
/// Total response bytes the transaction cache holds, whatever the entry count.
pub(super) const TX_CACHE_MAX_BYTES: usize = 8 << 20;
/// REQUESTED-TRANSPORT value of UDP.
pub(super) const PROTOCOL_UDP: u8 = 17;
/// REQUESTED-TRANSPORT value of TCP (RFC 6062).
pub(super) const PROTOCOL_TCP: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Allocation(FiveTuple),
    Permission(FiveTuple, IpAddr),
    Channel(FiveTuple, u16),
    Reservation(u64),
    /// A TCP allocation's peer connection waiting for its ConnectionBind (RFC 6062).
    Connection(u32),
}

/// Which quota an Allocate (or an adopted allocation) would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quota {
    /// The user's (486).
    User,
    /// The server's (508).
    Total,
}

/// Who sent an authenticated request, and how to sign the response.
#[derive(Debug, Clone)]
pub(super) struct AuthContext {
    pub(super) username: String,
    /// The key the request verified under, prepared for its MESSAGE-INTEGRITY algorithm: the
    /// response is signed with it.
    pub(super) key: crate::auth::IntegrityKey,
}

/// What a request handler decided.
#[derive(Debug)]
pub(super) enum Reply {
    Success(Vec<Attribute>),
    Error(u16, Vec<Attribute>),
    /// The response comes later (an Allocate waiting for its relayed sockets).
    Parked,
}

impl Reply {
    pub(super) fn error(code: u16) -> Self {
        Reply::Error(code, Vec::new())
    }
}

/// A port held by EVEN-PORT's R bit until claimed with RESERVATION-TOKEN, expired, or its
/// allocation gone. It holds a socket, so it counts against its owner's quota and the total.
#[derive(Debug)]
pub(super) struct Reservation {
    pub(super) addr: SocketAddr,
    pub(super) expires: Instant,
    /// The allocation made together with it.
    pub(super) owner: FiveTuple,
    /// Who made it, for the per-user quota.
    pub(super) username: String,
}

/// The relayed socket(s) of one address family of a parked Allocate.
#[derive(Debug)]
pub(super) struct BindGroup {
    pub(super) family: AddressFamily,
    pub(super) ip: IpAddr,
    /// The additional family of a dual-stack Allocate: if it fails, the Allocate still
    /// succeeds with ADDRESS-ERROR-CODE.
    pub(super) optional: bool,
    pub(super) even: bool,
    /// EVEN-PORT with R: the group is `port` and `port + 1`; the second is reserved.
    pub(super) pair: bool,
    /// Addresses being bound, and whether their bind succeeded yet.
    pub(super) binds: Vec<(SocketAddr, bool)>,
}

/// An Allocate whose relayed sockets are being bound.
#[derive(Debug)]
pub(super) struct PendingAllocate {
    pub(super) five_tuple: FiveTuple,
    pub(super) listener: ListenerId,
    pub(super) header: Header,
    pub(super) auth: AuthContext,
    pub(super) lifetime: Duration,
    pub(super) groups: Vec<BindGroup>,
    pub(super) attempts: u32,
    /// Addresses that failed to bind: not tried again.
    pub(super) tried: HashSet<SocketAddr>,
    pub(super) address_error: Option<(AddressFamily, u16)>,
    /// Quota slots it holds: 1, or 2 when it will also make a reservation (EVEN-PORT with R).
    pub(super) slots: usize,
    /// A TCP allocation (RFC 6062): its relayed addresses listen for TCP.
    pub(super) tcp: bool,
}

/// The sans-IO TURN server. See the [module documentation](super).
#[derive(Debug)]
pub struct Server {
    pub(super) config: ServerConfig,
    pub(super) credentials: Credentials,
    pub(super) policy: PeerPolicy,
    /// The slot in `stats.clusters` of each of the policy's clusters (by its index).
    pub(super) cluster_slots: Vec<usize>,
    pub(super) nonces: NonceMint,
    /// The 401 to copy for requests without credentials (`authenticate.rs`).
    pub(super) challenge_template: Option<super::authenticate::ChallengeTemplate>,
    /// The plain Allocate success to copy (`allocate.rs`).
    pub(super) success_template: Option<crate::wire::MessageCopy>,
    /// What unauthenticated UDP sources may still get back.
    pub(super) answers: AnswerBudget,
    /// When the client message being handled arrived (answers are charged at that time).
    pub(super) arrived: Instant,
    pub(super) rng: StdRng,
    pub(super) start: Instant,
    pub(super) start_unix: Duration,
    pub(super) software: Software,

    /// Boxed: the table moves only keys and pointers when it grows (an allocation is a few
    /// hundred bytes; growing a table of them in place was a tenth of a fresh relay's setup time).
    pub(super) allocations: HashMap<FiveTuple, Box<Allocation>>,
    pub(super) by_relayed: HashMap<SocketAddr, FiveTuple>,
    /// Allocations and parked Allocates per user (see `Credentials::quota_key`).
    pub(super) per_user: HashMap<String, usize>,
    /// Allocations and parked Allocates per client IP address.
    pub(super) per_ip: HashMap<IpAddr, usize>,
    pub(super) pending: HashMap<u64, PendingAllocate>,
    pub(super) pending_by_tuple: HashMap<FiveTuple, u64>,
    pub(super) pending_by_addr: HashMap<SocketAddr, u64>,
    /// Sum of `slots` over `pending`, for the total quota.
    pub(super) pending_slots: usize,
    pub(super) next_pending: u64,
    /// Binds still outstanding for Allocates that no longer need them: released on arrival.
    pub(super) abandoned: HashSet<SocketAddr>,
    pub(super) reservations: HashMap<u64, Reservation>,
    pub(super) ports: Ports,

    /// One entry per timed item; see the module documentation.
    pub(super) timers: BTreeSet<(Instant, Timer)>,
    pub(super) tx_cache: TransactionCache,
    pub(super) commands: VecDeque<Command>,
    pub(super) stats: Stats,
    /// Per-user usage.
    pub(super) usage: Usage,
    /// TCP allocations' connections with peers (RFC 6062), by CONNECTION-ID.
    pub(super) tcp_connections: HashMap<u32, super::tcp::PeerConnection>,
    /// Commands that follow the response being made (ConnectionBind's `BindData`).
    pub(super) after_response: Vec<Command>,
    /// Draining (the agent is shutting down): new Allocates get 508, the rest goes on.
    pub(super) draining: bool,
    /// What changed of the state a [`Snapshot`] holds.
    pub(super) changes: Changes,
}

/// What [`Server::set_policy`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revoked {
    pub permissions: u64,
    pub channels: u64,
    /// TCP allocations' connections with peers (RFC 6062).
    pub connections: u64,
}

/// Changes to the state a [`Snapshot`] holds: a version bumped on each (see
/// [`Server::state_version`]) and, once [`Server::track_changes`] was called, the allocations
/// they concern (by their listener), until [`Server::take_changes`] takes them.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) version: u64,
    pub(super) tracked: Option<HashMap<FiveTuple, ListenerId>>,
}

impl Changes {
    /// The allocation `five_tuple` of `listener` changed (or went).
    pub(super) fn mark(&mut self, five_tuple: FiveTuple, listener: ListenerId) {
        self.version = self.version.wrapping_add(1);
        if let Some(tracked) = &mut self.tracked {
            tracked.insert(five_tuple, listener);
        }
    }
}

pub(super) fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

pub(super) fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::V4
    } else {
        AddressFamily::V6
    }
}

pub(super) fn lifetime_attr(lifetime: Duration) -> Lifetime {
    Lifetime::from_u32(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX))
}

/// Schedules `timer` at `expires` unless its entry already comes due no later.
pub(super) fn arm(
    timers: &mut BTreeSet<(Instant, Timer)>,
    timer_at: &mut Instant,
    expires: Instant,
    timer: Timer,
) {
    if expires < *timer_at {
        rearm(timers, timer_at, expires, timer);
    }
}

/// Moves the entry of `timer` from `timer_at` to `at` (if it was popped already, just inserts).
pub(super) fn rearm(
    timers: &mut BTreeSet<(Instant, Timer)>,
    timer_at: &mut Instant,
    at: Instant,
    timer: Timer,
) {
    timers.remove(&(*timer_at, timer));
    *timer_at = at;
    timers.insert((at, timer));
}

/// The comprehension-required attributes of `message` that we do not understand: the first
/// [`MAX_UNKNOWN_ATTRIBUTES`] distinct ones.
pub(super) fn unknown_required(message: &Message<Attribute>) -> Vec<stun_codec::AttributeType> {
    let mut unknown: Vec<stun_codec::AttributeType> = Vec::new();
    let required = message
        .unknown_attributes()
        .map(|a| a.get_type())
        .filter(|t| t.is_comprehension_required() && !IGNORED_REQUIRED.contains(&t.as_u16()));
    for kind in required {
        if unknown.len() == MAX_UNKNOWN_ATTRIBUTES {
            break;
        }
        // Linear, but over at most MAX_UNKNOWN_ATTRIBUTES entries.
        if !unknown.contains(&kind) {
            unknown.push(kind);
        }
    }
    unknown
}

/// The allocation of `five_tuple`, if `auth` may use it: else 437 or 441.
pub(super) fn owned_allocation<'a>(
    allocations: &'a mut HashMap<FiveTuple, Box<Allocation>>,
    five_tuple: &FiveTuple,
    auth: &AuthContext,
) -> Result<&'a mut Allocation, Reply> {
    match allocations.get_mut(five_tuple) {
        None => Err(Reply::error(437)),
        Some(allocation) if allocation.username != auth.username => Err(Reply::error(441)),
        Some(allocation) => Ok(allocation),
    }
}

/// The slot in `Stats::clusters` of the traffic a client on `listener` relays with `peer`: its
/// cluster's by `policy` (whose cluster indexes `slots` maps), or 0 when it has none.
pub(super) fn cluster_slot(
    policy: &PeerPolicy,
    slots: &[usize],
    listener: &str,
    peer: SocketAddr,
) -> usize {
    policy
        .cluster_of(listener, peer)
        .and_then(|index| slots.get(index).copied())
        .unwrap_or(0)
}

/// Registers the clusters of `policy` in `stats` and answers the slot of each.
pub(super) fn cluster_slots(stats: &mut Stats, policy: &PeerPolicy) -> Vec<usize> {
    // Slot 0, no cluster, comes first.
    stats.cluster_slot("");
    policy
        .cluster_names()
        .iter()
        .map(|name| stats.cluster_slot(name))
        .collect()
}

pub(super) fn decode(frame: &StunFrame<'_>) -> Option<Message<Attribute>> {
    frame
        .decode()
        .map_err(|error| debug!(%error, "request not decoded"))
        .ok()
}

impl Server {
    /// A server with no allocations. `nonce_key` keys the stateless nonces, `rng_seed` (256
    /// bits, so that the stream cannot be recovered by trying seeds) seeds every random choice
    /// (ports, reservation tokens, transaction ids of Data indications),
    /// `start` and `start_unix` are the same moment on the monotonic and the wall clock.
    pub fn new(
        config: ServerConfig,
        credentials: Credentials,
        policy: PeerPolicy,
        nonce_key: [u8; 32],
        rng_seed: [u8; 32],
        start: Instant,
        start_unix: SystemTime,
    ) -> Self {
        if credentials.realm() != config.realm {
            warn!(
                server_realm = %config.realm,
                credentials_realm = %credentials.realm(),
                "credentials were made for another realm: USERHASH lookups will fail"
            );
        }
        let answers = AnswerBudget::new(config.answer_limits);
        let software: String = config.software.chars().take(127).collect();
        let software = Software::new(software).unwrap_or(Software::new_static("xturn"));
        let start_unix = start_unix.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut stats = Stats::default();
        let cluster_slots = cluster_slots(&mut stats, &policy);
        let usage = Usage::new(config.max_tracked_users);
        Server {
            ports: Ports::new(config.min_port, config.max_port),
            config,
            credentials,
            policy,
            cluster_slots,
            nonces: NonceMint::new(&nonce_key),
            challenge_template: None,
            success_template: None,
            answers,
            arrived: start,
            rng: StdRng::from_seed(rng_seed),
            start,
            start_unix,
            software,
            allocations: HashMap::default(),
            by_relayed: HashMap::default(),
            per_user: HashMap::default(),
            per_ip: HashMap::default(),
            pending: HashMap::default(),
            pending_by_tuple: HashMap::default(),
            pending_by_addr: HashMap::default(),
            pending_slots: 0,
            next_pending: 0,
            abandoned: HashSet::default(),
            reservations: HashMap::default(),
            timers: BTreeSet::new(),
            tx_cache: TransactionCache::new(TX_CACHE_TTL, TX_CACHE_CAPACITY, TX_CACHE_MAX_BYTES),
            commands: VecDeque::new(),
            stats,
            usage,
            tcp_connections: HashMap::default(),
            after_response: Vec::new(),
            draining: false,
            changes: Changes::default(),
        }
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Per-user usage: what userspace relayed, and what the I/O layer handed in with
    /// [`Server::count_channel_traffic`] (the kernel path's traffic is the I/O layer's to add,
    /// by [`ChannelBinding::user`](super::ChannelBinding::user)).
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Adds the usage saved before a restart (each user's totals; their allocations now are
    /// counted by adoption).
    pub fn restore_usage(&mut self, saved: &[super::UserUsage]) {
        self.usage.add_saved(saved);
    }

    /// Replaces the credentials (a configuration reload). Live allocations stay and keep
    /// relaying; their next Refresh, CreatePermission or ChannelBind is checked against the new
    /// credentials, so a removed user's allocations end at their next refresh or expiry. The
    /// per-user quota counts are recomputed, since the new credentials may map usernames to
    /// quota keys differently.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
        let holders: Vec<(String, usize)> = self
            .allocations
            .values()
            .map(|a| (a.username.clone(), 1))
            .chain(self.reservations.values().map(|r| (r.username.clone(), 1)))
            .chain(
                self.pending
                    .values()
                    .map(|p| (p.auth.username.clone(), p.slots)),
            )
            .collect();
        self.per_user.clear();
        for (username, slots) in holders {
            self.count_user(&username, slots);
        }
    }

    /// Replaces the peer policy (a configuration reload, a route or endpoint change). It
    /// applies to every later CreatePermission, ChannelBind and Send, and to what was granted
    /// before: every permission whose peer the new policy refuses ends now, with the channels
    /// to that peer, and so does every channel whose peer (address and port) it refuses. The
    /// kernel entries of the channels that end are withdrawn (`ChannelUnbound`); the counts are
    /// in [`Stats::permissions_revoked`] and [`Stats::channels_revoked`], and returned.
    ///
    /// Traffic is attributed to clusters (`Stats::clusters`) by the policy in force when its
    /// channel was bound (or, for Send and Data indications, when it is relayed): channels
    /// bound before the reload that the new policy keeps count for the cluster they were bound
    /// under. New clusters get new slots; those the new policy drops keep theirs.
    pub fn set_policy(&mut self, policy: PeerPolicy) -> Revoked {
        self.cluster_slots = cluster_slots(&mut self.stats, &policy);
        self.policy = policy;
        self.revoke_refused()
    }

    /// Ends the permissions and channels the policy in force refuses.
    fn revoke_refused(&mut self) -> Revoked {
        let mut revoked = Revoked::default();
        let names: Vec<String> = self
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        for (five_tuple, allocation) in &mut self.allocations {
            let name = names
                .get(usize::from(allocation.listener.0))
                .map_or("", String::as_str);
            let mut changed = false;
            let refused_ips: Vec<IpAddr> = allocation
                .permissions
                .keys()
                .filter(|ip| {
                    self.policy
                        .permits_ip_over(name, **ip, allocation.tcp)
                        .is_err()
                })
                .copied()
                .collect();
            for ip in refused_ips {
                // Channels to the peer relay nothing from now on: their kernel entries go.
                for binding in allocation.bindings_to(ip) {
                    self.commands.push_back(Command::ChannelUnbound(binding));
                }
                if let Some(permission) = allocation.permissions.remove(&ip) {
                    self.timers
                        .remove(&(permission.timer_at, Timer::Permission(*five_tuple, ip)));
                }
                revoked.permissions += 1;
                changed = true;
                debug!(client = %five_tuple.client, peer = %ip, "permission revoked by the new policy");
            }
            let refused_channels: Vec<(u16, SocketAddr)> = allocation
                .channels
                .iter()
                .filter(|(_, c)| self.policy.permits(name, c.peer).is_err())
                .map(|(number, c)| (*number, c.peer))
                .collect();
            for (number, peer) in refused_channels {
                // Still installed only if bound and its permission is there.
                if allocation.permissions.contains_key(&peer.ip())
                    && allocation.channels.get(&number).is_some_and(|c| c.bound)
                    && let Some(binding) = allocation.binding(number, peer)
                {
                    self.commands.push_back(Command::ChannelUnbound(binding));
                }
                if let Some(channel) = allocation.channels.get(&number) {
                    self.timers
                        .remove(&(channel.timer_at, Timer::Channel(*five_tuple, number)));
                }
                allocation.remove_channel(number);
                revoked.channels += 1;
                changed = true;
                debug!(client = %five_tuple.client, %peer, number, "channel revoked by the new policy");
            }
            if changed {
                self.changes.mark(*five_tuple, allocation.listener);
            }
        }
        // TCP allocations' connections: to a peer the policy refuses now, or whose permission
        // went with it.
        let refused_connections: Vec<u32> = self
            .tcp_connections
            .iter()
            .filter(|(_, c)| {
                self.allocations.get(&c.owner).is_none_or(|allocation| {
                    let name = names
                        .get(usize::from(allocation.listener.0))
                        .map_or("", String::as_str);
                    !allocation.permissions.contains_key(&c.peer.ip())
                        || self.policy.permits_over(name, c.peer, true).is_err()
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in refused_connections {
            self.close_connection(id);
            revoked.connections += 1;
        }
        self.stats.permissions_revoked += revoked.permissions;
        self.stats.channels_revoked += revoked.channels;
        self.stats.connections_revoked += revoked.connections;
        if revoked != Revoked::default() {
            info!(
                permissions = revoked.permissions,
                channels = revoked.channels,
                connections = revoked.connections,
                "the new peer policy ended permissions, channels and connections it refuses"
            );
        }
        revoked
    }

    /// Starts (or ends) draining: while draining, every new Allocate is refused with 508
    /// (Insufficient Capacity), so clients pick another relay, while existing allocations are
    /// refreshed, get permissions and channels and relay as before. A retransmitted Allocate of
    /// an allocation made before the drain is still answered with its success.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether the server is draining (see [`Server::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Number of allocations (not counting Allocates still binding their sockets).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The allocations.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values().map(|a| &**a)
    }

    /// The allocation of a client 5-tuple.
    pub fn allocation(&self, five_tuple: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(five_tuple).map(|a| &**a)
    }

    #[cfg(test)]
    pub(crate) fn tx_cache_len(&self) -> usize {
        self.tx_cache.len()
    }

    #[cfg(test)]
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len() + self.pending_by_addr.len() + self.abandoned.len()
    }

    /// Entries in the timer set (one per allocation, permission, channel and reservation).
    #[cfg(test)]
    pub(crate) fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Live relayed-port reservations.
    #[cfg(test)]
    pub(crate) fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Bytes held by the transaction cache.
    #[cfg(test)]
    pub(crate) fn tx_cache_bytes(&self) -> usize {
        self.tx_cache.bytes()
    }

    /// The next command for the I/O layer. Drain after every `handle_*` call.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called: the earliest expiry of anything
    /// (possibly a little early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub(super) fn unix_now(&self, now: Instant) -> u64 {
        (self.start_unix + now.saturating_duration_since(self.start)).as_secs()
    }

    pub(super) fn listener_name(&self, listener: ListenerId) -> &str {
        self.config
            .listeners
            .get(usize::from(listener.0))
            .map_or("", |l| l.name.as_str())
    }

    pub(super) fn relay_ip(&self, family: AddressFamily) -> Option<IpAddr> {
        match family {
            AddressFamily::V4 => self.config.relay_ipv4.map(IpAddr::V4),
            AddressFamily::V6 => self.config.relay_ipv6.map(IpAddr::V6),
        }
    }

    /// max(default, min(requested, max)) as RFC 8656 §7.2 and §7.3 prescribe.
    pub(super) fn grant_lifetime(&self, requested: Option<Duration>) -> Duration {
        match requested {
            None => self.config.default_lifetime,
            Some(r) => r
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
        }
    }
}
