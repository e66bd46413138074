//! [`Server`]: request handling, the data paths, the two-phase relayed-port binding and timers.
//!
//! Timers: every allocation, permission, channel and reservation has exactly one entry in an
//! ordered set, at `(timer_at, Timer)`. Refreshing only moves `expires` later; when the entry
//! comes due the item is either expired or the entry is inserted again at the new `expires`.
//! Whoever removes an item (or moves its timer earlier) removes its entry too, so the set holds
//! one entry per live item: its size follows live state, not how many items clients created and
//! deleted (a heap with lazily skipped stale entries would grow with churn).
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytecodec::{DecodeExt as _, EncodeExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use stun_codec::Attribute as _;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::rfc8656::attributes::AddressFamily;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use tracing::{debug, info, trace, warn};

use super::allocation::{Allocation, Channel, Permission};
use super::attributes::{
    AdditionalAddressFamily, AddressErrorCode, Attribute, ChannelNumber, Data, DontFragment,
    ErrorCode, EvenPort, IGNORED_REQUIRED, Lifetime, Nonce, PasswordAlgorithm, PasswordAlgorithms,
    Realm, RequestedAddressFamily, RequestedTransport, ReservationToken, Software,
    UnknownAttributes, UserHash, Username, XorMappedAddress, XorPeerAddress, XorRelayAddress,
};
use super::ports::Ports;
use super::snapshot::{
    AdoptionRefusal, AllocationState, ChannelState, PermissionState, ReservationState,
    RestoreOutcome, SNAPSHOT_VERSION, Snapshot,
};
use super::stats::Stats;
use super::txcache::TransactionCache;
use super::wire::{self, Demux, FrameError, Header, StunFrame};
use super::{
    BindFailure, ChannelBinding, Command, FiveTuple, ListenerId, RelayedAddress, ServerConfig,
    Transport,
};
use crate::auth::{self, Credentials, IntegrityAlgorithm, NonceCheck, NonceMint};
use crate::policy::PeerPolicy;

/// How many port choices one Allocate makes in all (each AddressInUse costs one) before 508.
const MAX_BIND_ATTEMPTS: u32 = 16;
/// How long the port held by EVEN-PORT's R bit waits for its RESERVATION-TOKEN (RFC 8656 §7.2).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// After a channel binding expires, neither its number nor its peer may be rebound to
/// something else for this long (RFC 8656 §12).
const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// Attribute types listed in UNKNOWN-ATTRIBUTES. RFC 8489 §14.9 does not bound the list, but a
/// request can carry thousands of unknown attributes and the response (which gets cached)
/// would grow with them; the first few distinct ones are all a client needs to see the problem.
const MAX_UNKNOWN_ATTRIBUTES: usize = 16;
/// Transaction cache entries live a little longer than a client's last retransmission.
const TX_CACHE_TTL: Duration = Duration::from_secs(40);
const TX_CACHE_CAPACITY: usize = 8192;
/// Total response bytes the transaction cache holds, whatever the entry count.
const TX_CACHE_MAX_BYTES: usize = 8 << 20;
/// REQUESTED-TRANSPORT value of UDP.
const PROTOCOL_UDP: u8 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(FiveTuple),
    Permission(FiveTuple, IpAddr),
    Channel(FiveTuple, u16),
    Reservation(u64),
}

/// Which quota an Allocate (or an adopted allocation) would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    /// The user's (486).
    User,
    /// The server's (508).
    Total,
}

/// Who sent an authenticated request, and how to sign the response.
#[derive(Debug, Clone)]
struct AuthContext {
    username: String,
    key: Vec<u8>,
    integrity: IntegrityAlgorithm,
}

/// What a request handler decided.
#[derive(Debug)]
enum Reply {
    Success(Vec<Attribute>),
    Error(u16, Vec<Attribute>),
    /// The response comes later (an Allocate waiting for its relayed sockets).
    Parked,
}

impl Reply {
    fn error(code: u16) -> Self {
        Reply::Error(code, Vec::new())
    }
}

/// A port held by EVEN-PORT's R bit until claimed with RESERVATION-TOKEN, expired, or its
/// allocation gone. It holds a socket, so it counts against its owner's quota and the total.
#[derive(Debug)]
struct Reservation {
    addr: SocketAddr,
    expires: Instant,
    /// The allocation made together with it.
    owner: FiveTuple,
    /// Who made it, for the per-user quota.
    username: String,
}

/// The relayed socket(s) of one address family of a parked Allocate.
#[derive(Debug)]
struct BindGroup {
    family: AddressFamily,
    ip: IpAddr,
    /// The additional family of a dual-stack Allocate: if it fails, the Allocate still
    /// succeeds with ADDRESS-ERROR-CODE.
    optional: bool,
    even: bool,
    /// EVEN-PORT with R: the group is `port` and `port + 1`; the second is reserved.
    pair: bool,
    /// Addresses being bound, and whether their bind succeeded yet.
    binds: Vec<(SocketAddr, bool)>,
}

/// An Allocate whose relayed sockets are being bound.
#[derive(Debug)]
struct PendingAllocate {
    five_tuple: FiveTuple,
    listener: ListenerId,
    header: Header,
    auth: AuthContext,
    lifetime: Duration,
    groups: Vec<BindGroup>,
    attempts: u32,
    /// Addresses that failed to bind: not tried again.
    tried: HashSet<SocketAddr>,
    address_error: Option<(AddressFamily, u16)>,
    /// Quota slots it holds: 1, or 2 when it will also make a reservation (EVEN-PORT with R).
    slots: usize,
}

/// The sans-IO TURN server. See the [module documentation](super).
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    credentials: Credentials,
    policy: PeerPolicy,
    /// The slot in `stats.clusters` of each of the policy's clusters (by its index).
    cluster_slots: Vec<usize>,
    nonces: NonceMint,
    rng: StdRng,
    start: Instant,
    start_unix: Duration,
    software: Software,

    allocations: HashMap<FiveTuple, Allocation>,
    by_relayed: HashMap<SocketAddr, FiveTuple>,
    /// Allocations and parked Allocates per user (see `Credentials::quota_key`).
    per_user: HashMap<String, usize>,
    pending: HashMap<u64, PendingAllocate>,
    pending_by_tuple: HashMap<FiveTuple, u64>,
    pending_by_addr: HashMap<SocketAddr, u64>,
    /// Sum of `slots` over `pending`, for the total quota.
    pending_slots: usize,
    next_pending: u64,
    /// Binds still outstanding for Allocates that no longer need them: released on arrival.
    abandoned: HashSet<SocketAddr>,
    reservations: HashMap<u64, Reservation>,
    ports: Ports,

    /// One entry per timed item; see the module documentation.
    timers: BTreeSet<(Instant, Timer)>,
    tx_cache: TransactionCache,
    commands: VecDeque<Command>,
    stats: Stats,
    /// Draining (the agent is shutting down): new Allocates get 508, the rest goes on.
    draining: bool,
    /// Bumped whenever state a [`Snapshot`] holds changes (see [`Server::state_version`]).
    state_version: u64,
}

fn reason_phrase(code: u16) -> &'static str {
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
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::V4
    } else {
        AddressFamily::V6
    }
}

fn lifetime_attr(lifetime: Duration) -> Lifetime {
    Lifetime::from_u32(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX))
}

/// Schedules `timer` at `expires` unless its entry already comes due no later.
fn arm(
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
fn rearm(
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
fn unknown_required(message: &Message<Attribute>) -> Vec<stun_codec::AttributeType> {
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
fn owned_allocation<'a>(
    allocations: &'a mut HashMap<FiveTuple, Allocation>,
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
fn cluster_slot(policy: &PeerPolicy, slots: &[usize], listener: &str, peer: SocketAddr) -> usize {
    policy
        .cluster_of(listener, peer)
        .and_then(|index| slots.get(index).copied())
        .unwrap_or(0)
}

/// Registers the clusters of `policy` in `stats` and answers the slot of each.
fn cluster_slots(stats: &mut Stats, policy: &PeerPolicy) -> Vec<usize> {
    // Slot 0, no cluster, comes first.
    stats.cluster_slot("");
    policy
        .cluster_names()
        .iter()
        .map(|name| stats.cluster_slot(name))
        .collect()
}

fn decode(frame: &StunFrame<'_>) -> Option<Message<Attribute>> {
    let bytes = frame.codec_bytes();
    match MessageDecoder::<Attribute>::new().decode_from_bytes(&bytes) {
        Ok(Ok(message)) => Some(message),
        Ok(Err(broken)) => {
            debug!(error = %broken.error(), "undecodable STUN attributes");
            None
        }
        Err(error) => {
            debug!(%error, "undecodable STUN message");
            None
        }
    }
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
        let software: String = config.software.chars().take(127).collect();
        let software = Software::new(software).unwrap_or(Software::new_static("xturn"));
        let start_unix = start_unix.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut stats = Stats::default();
        let cluster_slots = cluster_slots(&mut stats, &policy);
        Server {
            ports: Ports::new(config.min_port, config.max_port),
            config,
            credentials,
            policy,
            cluster_slots,
            nonces: NonceMint::new(&nonce_key),
            rng: StdRng::from_seed(rng_seed),
            start,
            start_unix,
            software,
            allocations: HashMap::new(),
            by_relayed: HashMap::new(),
            per_user: HashMap::new(),
            pending: HashMap::new(),
            pending_by_tuple: HashMap::new(),
            pending_by_addr: HashMap::new(),
            pending_slots: 0,
            next_pending: 0,
            abandoned: HashSet::new(),
            reservations: HashMap::new(),
            timers: BTreeSet::new(),
            tx_cache: TransactionCache::new(TX_CACHE_TTL, TX_CACHE_CAPACITY, TX_CACHE_MAX_BYTES),
            commands: VecDeque::new(),
            stats,
            draining: false,
            state_version: 0,
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

    /// Replaces the peer policy (a configuration reload). It applies to every later
    /// CreatePermission, ChannelBind and Send; permissions and channels already granted stay
    /// until they expire or are refreshed (a refresh is checked against the new policy).
    ///
    /// Traffic is attributed to clusters (`Stats::clusters`) by the policy in force when its
    /// channel was bound (or, for Send and Data indications, when it is relayed): channels
    /// bound before the reload keep counting for the cluster they were bound under. New
    /// clusters get new slots; those the new policy drops keep theirs.
    pub fn set_policy(&mut self, policy: PeerPolicy) {
        self.cluster_slots = cluster_slots(&mut self.stats, &policy);
        self.policy = policy;
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
        self.allocations.values()
    }

    /// The allocation of a client 5-tuple.
    pub fn allocation(&self, five_tuple: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(five_tuple)
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

    fn unix_now(&self, now: Instant) -> u64 {
        (self.start_unix + now.saturating_duration_since(self.start)).as_secs()
    }

    fn listener_name(&self, listener: ListenerId) -> &str {
        self.config
            .listeners
            .get(usize::from(listener.0))
            .map_or("", |l| l.name.as_str())
    }

    fn relay_ip(&self, family: AddressFamily) -> Option<IpAddr> {
        match family {
            AddressFamily::V4 => self.config.relay_ipv4.map(IpAddr::V4),
            AddressFamily::V6 => self.config.relay_ipv6.map(IpAddr::V6),
        }
    }

    /// max(default, min(requested, max)) as RFC 8656 §7.2 and §7.3 prescribe.
    fn grant_lifetime(&self, requested: Option<Duration>) -> Duration {
        match requested {
            None => self.config.default_lifetime,
            Some(r) => r
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Client datagrams
    // ---------------------------------------------------------------------------------------

    /// A message from `client` arrived on listener `listener`: a UDP datagram, or one STUN
    /// message or ChannelData message (padding included) framed off a stream connection.
    pub fn handle_client_datagram(
        &mut self,
        listener: ListenerId,
        client: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let Some((server, transport)) = self
            .config
            .listeners
            .get(usize::from(listener.0))
            .map(|l| (l.addr, l.transport))
        else {
            warn!(?listener, "datagram on an unknown listener");
            self.stats.malformed_dropped += 1;
            return;
        };
        let five_tuple = FiveTuple {
            client,
            server,
            transport,
        };
        match wire::demux(data) {
            Demux::Stun => self.handle_stun(listener, five_tuple, data, now),
            Demux::ChannelData => self.handle_client_channel_data(five_tuple, data, now),
            Demux::Other => self.stats.malformed_dropped += 1,
        }
    }

    fn handle_stun(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        data: &[u8],
        now: Instant,
    ) {
        let frame = match StunFrame::parse(data) {
            Ok(frame) => frame,
            Err(FrameError::BadAttributes(header)) if header.class == MessageClass::Request => {
                self.count_request(header);
                self.respond(listener, five_tuple, header, Reply::error(400), None, None);
                return;
            }
            Err(error) => {
                trace!(client = %five_tuple.client, ?error, "dropping malformed STUN");
                self.stats.malformed_dropped += 1;
                return;
            }
        };
        match frame.header.class {
            MessageClass::Request => self.handle_request(listener, five_tuple, &frame, now),
            MessageClass::Indication => {
                self.handle_indication(listener, five_tuple, &frame, data.len(), now);
            }
            MessageClass::SuccessResponse | MessageClass::ErrorResponse => {
                self.stats.malformed_dropped += 1;
            }
        }
    }

    fn count_request(&mut self, header: Header) {
        let counter = match header.method {
            BINDING => &mut self.stats.binding_requests,
            ALLOCATE => &mut self.stats.allocate_requests,
            REFRESH => &mut self.stats.refresh_requests,
            CREATE_PERMISSION => &mut self.stats.create_permission_requests,
            CHANNEL_BIND => &mut self.stats.channel_bind_requests,
            _ => &mut self.stats.other_requests,
        };
        *counter += 1;
    }

    fn handle_request(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        frame: &StunFrame<'_>,
        now: Instant,
    ) {
        let header = frame.header;
        self.count_request(header);
        let key = (five_tuple, header.transaction_id, header.method);
        if let Some(response) = self.tx_cache.get(&key, now) {
            let data = response.to_vec();
            self.stats.retransmissions_answered_from_cache += 1;
            self.commands.push_back(Command::SendToClient {
                listener,
                client: five_tuple.client,
                data,
            });
            return;
        }
        if let Some(id) = self.pending_by_tuple.get(&five_tuple)
            && self
                .pending
                .get(id)
                .is_some_and(|p| p.header.transaction_id == header.transaction_id)
        {
            // A retransmission while its relayed sockets are being bound: the answer is coming.
            return;
        }
        let Some(message) = decode(frame) else {
            self.respond(listener, five_tuple, header, Reply::error(400), None, None);
            return;
        };
        if header.method == BINDING {
            let reply = match unknown_required(&message) {
                unknown if !unknown.is_empty() => {
                    Reply::Error(420, vec![UnknownAttributes::new(unknown).into()])
                }
                _ => Reply::Success(vec![XorMappedAddress::new(five_tuple.client).into()]),
            };
            self.respond(listener, five_tuple, header, reply, None, None);
            return;
        }
        if !matches!(
            header.method,
            ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND
        ) {
            self.respond(listener, five_tuple, header, Reply::error(400), None, None);
            return;
        }
        let auth = match self.authenticate(five_tuple.client, frame, &message, now) {
            Ok(auth) => auth,
            Err(reply) => {
                self.respond(listener, five_tuple, header, reply, None, None);
                return;
            }
        };
        let unknown = unknown_required(&message);
        let reply = if !unknown.is_empty() {
            Reply::Error(420, vec![UnknownAttributes::new(unknown).into()])
        } else {
            match header.method {
                ALLOCATE => self.allocate(listener, five_tuple, header, &message, &auth, now),
                REFRESH => self.refresh(five_tuple, &message, &auth, now),
                CREATE_PERMISSION => {
                    self.create_permission(listener, five_tuple, &message, &auth, now)
                }
                _ => self.channel_bind(listener, five_tuple, &message, &auth, now),
            }
        };
        if matches!(reply, Reply::Success(_)) {
            self.touch();
        }
        if !matches!(reply, Reply::Parked) {
            self.respond(listener, five_tuple, header, reply, Some(&auth), Some(now));
        }
    }

    /// Encodes and sends a response; `cache_at`: remember it for retransmissions.
    fn respond(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        header: Header,
        reply: Reply,
        auth: Option<&AuthContext>,
        cache_at: Option<Instant>,
    ) {
        let (class, mut attributes) = match reply {
            Reply::Success(attributes) => (MessageClass::SuccessResponse, attributes),
            Reply::Error(code, attributes) => {
                self.stats.count_error(code);
                let mut all = Vec::with_capacity(attributes.len() + 1);
                match ErrorCode::new(code, reason_phrase(code).to_owned()) {
                    Ok(error) => all.push(error.into()),
                    Err(error) => warn!(code, %error, "bad error code"),
                }
                all.extend(attributes);
                (MessageClass::ErrorResponse, all)
            }
            Reply::Parked => return,
        };
        attributes.push(self.software.clone().into());
        let mut message = Message::<Attribute>::new(class, header.method, header.transaction_id);
        for attribute in attributes {
            message.add_attribute(attribute);
        }
        let mut bytes = match MessageEncoder::<Attribute>::new().encode_into_bytes(message) {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(%error, "could not encode a response");
                return;
            }
        };
        if let Some(auth) = auth {
            wire::append_integrity(&mut bytes, auth.integrity, &auth.key);
        }
        wire::append_fingerprint(&mut bytes);
        if let Some(now) = cache_at {
            self.tx_cache.insert(
                (five_tuple, header.transaction_id, header.method),
                bytes.clone(),
                now,
            );
        }
        self.commands.push_back(Command::SendToClient {
            listener,
            client: five_tuple.client,
            data: bytes,
        });
    }

    // ---------------------------------------------------------------------------------------
    // Authentication (RFC 8489 §9.2.4)
    // ---------------------------------------------------------------------------------------

    /// A 401 or 438 carrying what the client needs to (re)authenticate.
    fn challenge(&self, code: u16, client: SocketAddr, unix_now: u64) -> Reply {
        let mut attributes: Vec<Attribute> = Vec::with_capacity(3);
        match Realm::new(self.config.realm.clone()) {
            Ok(realm) => attributes.push(realm.into()),
            Err(error) => warn!(%error, "realm cannot be sent"),
        }
        let expires = unix_now.saturating_add(self.config.nonce_lifetime.as_secs());
        match Nonce::new(self.nonces.issue(client, expires)) {
            Ok(nonce) => attributes.push(nonce.into()),
            Err(error) => warn!(%error, "nonce cannot be sent"),
        }
        attributes.push(PasswordAlgorithms::new(&auth::PasswordAlgorithm::OFFERED).into());
        Reply::Error(code, attributes)
    }

    fn authenticate(
        &mut self,
        client: SocketAddr,
        frame: &StunFrame<'_>,
        message: &Message<Attribute>,
        now: Instant,
    ) -> Result<AuthContext, Reply> {
        let unix_now = self.unix_now(now);
        let Some(integrity) = frame.integrity else {
            return Err(self.challenge(401, client, unix_now));
        };
        let username = message.get_attribute::<Username>();
        let userhash = message.get_attribute::<UserHash>();
        let (Some(_), Some(nonce)) = (
            message.get_attribute::<Realm>(),
            message.get_attribute::<Nonce>(),
        ) else {
            return Err(Reply::error(400));
        };
        if username.is_some() == userhash.is_some() {
            // Neither, or both.
            return Err(Reply::error(400));
        }
        match self.nonces.check(nonce.value(), client, unix_now) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.stats.stale_nonces += 1;
                return Err(self.challenge(438, client, unix_now));
            }
        }
        // The nonce is ours and announces PASSWORD-ALGORITHMS: guard against a downgrade.
        let algorithm = match (
            message.get_attribute::<PasswordAlgorithm>(),
            message.get_attribute::<PasswordAlgorithms>(),
        ) {
            (None, None) => auth::PasswordAlgorithm::Md5,
            (Some(chosen), Some(offered))
                if *offered == PasswordAlgorithms::new(&auth::PasswordAlgorithm::OFFERED)
                    && offered.contains(chosen) =>
            {
                chosen.algorithm().ok_or(Reply::error(400))?
            }
            _ => return Err(Reply::error(400)),
        };
        let username = match (username, userhash) {
            (Some(username), _) => username.name().to_owned(),
            (None, Some(hash)) => match self.credentials.username_by_hash(hash.hash()) {
                Some(name) => name.to_owned(),
                None => {
                    self.stats.auth_failures += 1;
                    self.stats.auth_failures_by_reason.unknown_userhash += 1;
                    debug!(%client, "unknown USERHASH");
                    return Err(self.challenge(401, client, unix_now));
                }
            },
            (None, None) => return Err(Reply::error(400)),
        };
        let keys = match self
            .credentials
            .keys(&username, &self.config.realm, algorithm, unix_now)
        {
            Ok(keys) => keys,
            Err(error) => {
                self.stats.auth_failures += 1;
                match error {
                    auth::AuthError::Expired { .. } => {
                        self.stats.auth_failures_by_reason.expired += 1;
                    }
                    auth::AuthError::UnknownUser(_) => {
                        self.stats.auth_failures_by_reason.unknown_user += 1;
                    }
                }
                debug!(%client, %error, "authentication failed");
                return Err(self.challenge(401, client, unix_now));
            }
        };
        match keys.into_iter().find(|key| frame.verify_integrity(key)) {
            Some(key) => Ok(AuthContext {
                username,
                key,
                integrity: integrity.algorithm,
            }),
            None => {
                self.stats.auth_failures += 1;
                self.stats.auth_failures_by_reason.wrong_integrity += 1;
                debug!(%client, %username, "wrong message integrity");
                Err(self.challenge(401, client, unix_now))
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Allocate (RFC 8656 §7.2) and the relayed-port binding
    // ---------------------------------------------------------------------------------------

    fn allocate(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        header: Header,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        if let Some(allocation) = self.allocations.get(&five_tuple) {
            if allocation.transaction_id == header.transaction_id
                && allocation.username == auth.username
            {
                // A retransmission whose cached response is gone: answer from the allocation.
                let lifetime = allocation.expires.saturating_duration_since(now);
                let relayed = allocation.relayed.clone();
                return Reply::Success(
                    self.allocate_success(&relayed, lifetime, five_tuple, None, None),
                );
            }
            return Reply::error(437);
        }
        if self.pending_by_tuple.contains_key(&five_tuple) {
            return Reply::error(437);
        }
        if self.draining {
            self.stats.drain_rejections += 1;
            return Reply::error(508);
        }
        let Some(transport) = message.get_attribute::<RequestedTransport>() else {
            return Reply::error(400);
        };
        if transport.protocol() != PROTOCOL_UDP {
            return Reply::error(442);
        }
        let token = message
            .get_attribute::<ReservationToken>()
            .map(ReservationToken::token);
        let even_port = message
            .get_attribute::<EvenPort>()
            .map(EvenPort::is_requested);
        let requested = message
            .get_attribute::<RequestedAddressFamily>()
            .map(RequestedAddressFamily::address_family);
        let additional = message
            .get_attribute::<AdditionalAddressFamily>()
            .map(AdditionalAddressFamily::address_family);
        if token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()) {
            return Reply::error(400);
        }
        if requested.is_some() && additional.is_some() {
            return Reply::error(400);
        }
        if additional.is_some() && (additional != Some(AddressFamily::V6) || even_port.is_some()) {
            return Reply::error(400);
        }
        let primary = requested.unwrap_or(AddressFamily::V4);
        let primary_ip = self.relay_ip(primary);
        if token.is_none() && primary_ip.is_none() {
            return Reply::error(440);
        }
        let quota_key = self.credentials.quota_key(&auth.username);
        // Quota slots this Allocate takes from the user and from the total: a reservation holds
        // a socket like an allocation does, so EVEN-PORT with R needs two; claiming a token
        // turns a slot that is counted already into the allocation.
        let (user_slots, total_slots) = match token {
            Some(token) => {
                let Some(reservation) = self.reservations.get(&token) else {
                    return Reply::error(508);
                };
                let same_user = self.credentials.quota_key(&reservation.username) == quota_key;
                (usize::from(!same_user), 0)
            }
            None => {
                let slots = 1 + usize::from(even_port == Some(true));
                (slots, slots)
            }
        };
        if let Err(quota) = self.check_quota(&auth.username, user_slots, total_slots) {
            self.stats.quota_rejections += 1;
            return Reply::error(match quota {
                Quota::User => 486,
                Quota::Total => 508,
            });
        }
        let lifetime =
            self.grant_lifetime(message.get_attribute::<Lifetime>().map(Lifetime::lifetime));

        if let Some(token) = token {
            // The reserved socket is bound already: the allocation takes it over as it is.
            let Some(reservation) = self.take_reservation(token) else {
                return Reply::error(508);
            };
            let relayed = vec![RelayedAddress(reservation.addr)];
            self.insert_allocation(
                listener,
                five_tuple,
                header.transaction_id,
                &auth.username,
                relayed.clone(),
                None,
                lifetime,
                now,
            );
            return Reply::Success(
                self.allocate_success(&relayed, lifetime, five_tuple, None, None),
            );
        }
        let Some(primary_ip) = primary_ip else {
            return Reply::error(440);
        };

        let mut groups = vec![BindGroup {
            family: primary,
            ip: primary_ip,
            optional: false,
            even: even_port.is_some(),
            pair: even_port == Some(true),
            binds: Vec::new(),
        }];
        let mut address_error = None;
        if additional == Some(AddressFamily::V6) {
            match self.relay_ip(AddressFamily::V6) {
                Some(ip) => groups.push(BindGroup {
                    family: AddressFamily::V6,
                    ip,
                    optional: true,
                    even: false,
                    pair: false,
                    binds: Vec::new(),
                }),
                None => address_error = Some((AddressFamily::V6, 440)),
            }
        }
        let tried = HashSet::new();
        let mut kept = Vec::with_capacity(groups.len());
        for mut group in groups {
            if self.pick_ports(&mut group, &tried) {
                kept.push(group);
            } else if group.optional {
                address_error = Some((group.family, 508));
            } else {
                for group in &kept {
                    for (addr, _) in &group.binds {
                        self.ports.release(*addr);
                    }
                }
                debug!(client = %five_tuple.client, "no relayed port free");
                return Reply::error(508);
            }
        }

        let id = self.next_pending;
        self.next_pending += 1;
        for group in &kept {
            for (addr, _) in &group.binds {
                self.pending_by_addr.insert(*addr, id);
                self.commands.push_back(Command::BindRelay { addr: *addr });
            }
        }
        self.count_user(&auth.username, user_slots);
        self.pending_slots += user_slots;
        self.pending_by_tuple.insert(five_tuple, id);
        self.pending.insert(
            id,
            PendingAllocate {
                five_tuple,
                listener,
                header,
                auth: auth.clone(),
                lifetime,
                groups: kept,
                attempts: 1,
                tried,
                address_error,
                slots: user_slots,
            },
        );
        Reply::Parked
    }

    /// Chooses (and claims) the port(s) of `group`. `false` if none is free.
    fn pick_ports(&mut self, group: &mut BindGroup, tried: &HashSet<SocketAddr>) -> bool {
        let Some(port) = self
            .ports
            .pick(group.ip, group.even, group.pair, tried, &mut self.rng)
        else {
            return false;
        };
        group.binds = vec![(SocketAddr::new(group.ip, port), false)];
        if group.pair
            && let Some(next) = port.checked_add(1)
        {
            group.binds.push((SocketAddr::new(group.ip, next), false));
        }
        for (addr, _) in &group.binds {
            self.ports.claim(*addr);
        }
        true
    }

    /// Outcome of a [`Command::BindRelay`].
    pub fn handle_relay_bound(
        &mut self,
        addr: SocketAddr,
        result: Result<(), BindFailure>,
        now: Instant,
    ) {
        if result.is_err() {
            self.stats.relay_bind_failures += 1;
        }
        if self.abandoned.remove(&addr) {
            if result.is_ok() {
                self.commands.push_back(Command::ReleaseRelay { addr });
            }
            self.ports.release(addr);
            return;
        }
        let Some(id) = self.pending_by_addr.remove(&addr) else {
            warn!(%addr, ?result, "bind outcome for an address nobody is binding");
            if result.is_ok() && !self.ports.is_claimed(addr) {
                self.commands.push_back(Command::ReleaseRelay { addr });
            }
            return;
        };
        let Some(mut pending) = self.pending.remove(&id) else {
            return;
        };
        let Some(index) = pending
            .groups
            .iter()
            .position(|g| g.binds.iter().any(|(a, _)| *a == addr))
        else {
            self.pending.insert(id, pending);
            return;
        };
        match result {
            Ok(()) => {
                for bind in &mut pending.groups[index].binds {
                    if bind.0 == addr {
                        bind.1 = true;
                    }
                }
            }
            Err(failure) => {
                self.ports.release(addr);
                pending.tried.insert(addr);
                let mut group = pending.groups.remove(index);
                // The rest of the group is useless without this address.
                for (other, bound) in group.binds.drain(..) {
                    if other == addr {
                        continue;
                    }
                    if bound {
                        self.ports.release(other);
                        self.commands
                            .push_back(Command::ReleaseRelay { addr: other });
                    } else {
                        self.pending_by_addr.remove(&other);
                        self.abandoned.insert(other);
                    }
                }
                let retried = failure == BindFailure::AddressInUse
                    && pending.attempts < MAX_BIND_ATTEMPTS
                    && self.pick_ports(&mut group, &pending.tried);
                if retried {
                    pending.attempts += 1;
                    for (other, _) in &group.binds {
                        self.pending_by_addr.insert(*other, id);
                        self.commands.push_back(Command::BindRelay { addr: *other });
                    }
                    pending.groups.insert(index, group);
                } else if group.optional {
                    debug!(%addr, ?failure, "additional address family unavailable");
                    pending.address_error = Some((group.family, 508));
                } else {
                    info!(%addr, ?failure, attempts = pending.attempts, "could not bind a relayed port");
                    self.fail_pending(&pending);
                    return;
                }
            }
        }
        let done = pending
            .groups
            .iter()
            .all(|g| g.binds.iter().all(|(_, bound)| *bound));
        if done {
            self.complete_pending(&pending, now);
        } else {
            self.pending.insert(id, pending);
        }
    }

    fn fail_pending(&mut self, pending: &PendingAllocate) {
        for group in &pending.groups {
            for (addr, bound) in &group.binds {
                if *bound {
                    self.ports.release(*addr);
                    self.commands
                        .push_back(Command::ReleaseRelay { addr: *addr });
                } else {
                    self.pending_by_addr.remove(addr);
                    self.abandoned.insert(*addr);
                }
            }
        }
        self.pending_by_tuple.remove(&pending.five_tuple);
        self.pending_slots = self.pending_slots.saturating_sub(pending.slots);
        self.forget_user(&pending.auth.username, pending.slots);
        // Not cached: a retransmission may try again.
        self.respond(
            pending.listener,
            pending.five_tuple,
            pending.header,
            Reply::error(508),
            Some(&pending.auth),
            None,
        );
    }

    fn complete_pending(&mut self, pending: &PendingAllocate, now: Instant) {
        self.pending_by_tuple.remove(&pending.five_tuple);
        // The parked slots become the allocation and reservation, counted as they are made.
        self.pending_slots = self.pending_slots.saturating_sub(pending.slots);
        self.forget_user(&pending.auth.username, pending.slots);
        let mut relayed = Vec::with_capacity(pending.groups.len());
        let mut token = None;
        for group in &pending.groups {
            let Some((addr, _)) = group.binds.first() else {
                continue;
            };
            relayed.push(RelayedAddress(*addr));
            if let Some((reserved, _)) = group.binds.get(1) {
                let mut value: u64 = self.rng.random();
                while self.reservations.contains_key(&value) {
                    value = self.rng.random();
                }
                let expires = now + RESERVATION_LIFETIME;
                self.reservations.insert(
                    value,
                    Reservation {
                        addr: *reserved,
                        expires,
                        owner: pending.five_tuple,
                        username: pending.auth.username.clone(),
                    },
                );
                self.timers.insert((expires, Timer::Reservation(value)));
                self.count_user(&pending.auth.username, 1);
                token = Some(value);
            }
        }
        // IPv4 first, as the RFC lists them.
        relayed.sort_by_key(|r| r.0.is_ipv6());
        self.insert_allocation(
            pending.listener,
            pending.five_tuple,
            pending.header.transaction_id,
            &pending.auth.username,
            relayed.clone(),
            token,
            pending.lifetime,
            now,
        );
        let attributes = self.allocate_success(
            &relayed,
            pending.lifetime,
            pending.five_tuple,
            token,
            pending.address_error,
        );
        self.respond(
            pending.listener,
            pending.five_tuple,
            pending.header,
            Reply::Success(attributes),
            Some(&pending.auth),
            Some(now),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_allocation(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        transaction_id: TransactionId,
        username: &str,
        relayed: Vec<RelayedAddress>,
        reservation: Option<u64>,
        lifetime: Duration,
        now: Instant,
    ) {
        let expires = now + lifetime;
        for r in &relayed {
            self.by_relayed.insert(r.0, five_tuple);
            self.ports.claim(r.0);
        }
        info!(client = %five_tuple.client, %username, relayed = ?relayed, "allocation created");
        self.allocations.insert(
            five_tuple,
            Allocation {
                five_tuple,
                listener,
                username: username.to_owned(),
                relayed,
                expires,
                timer_at: expires,
                transaction_id,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_by_peer: HashMap::new(),
                channel_ips: BTreeSet::new(),
                reservation,
            },
        );
        self.timers.insert((expires, Timer::Allocation(five_tuple)));
        self.count_user(username, 1);
        self.stats.allocations_created += 1;
        self.touch();
    }

    fn allocate_success(
        &self,
        relayed: &[RelayedAddress],
        lifetime: Duration,
        five_tuple: FiveTuple,
        token: Option<u64>,
        address_error: Option<(AddressFamily, u16)>,
    ) -> Vec<Attribute> {
        let mut attributes: Vec<Attribute> = relayed
            .iter()
            .map(|r| XorRelayAddress::new(r.0).into())
            .collect();
        attributes.push(lifetime_attr(lifetime).into());
        if let Some(token) = token {
            attributes.push(ReservationToken::new(token).into());
        }
        attributes.push(XorMappedAddress::new(five_tuple.client).into());
        if let Some((family, code)) = address_error {
            attributes.push(AddressErrorCode::new(family, code, reason_phrase(code)).into());
        }
        attributes
    }

    /// Adds `slots` to the quota count of `username`.
    /// May `username` take `user_slots` more quota slots, and the server `total_slots` more?
    /// Slots are allocations, Allocates binding their sockets and reservations.
    fn check_quota(
        &self,
        username: &str,
        user_slots: usize,
        total_slots: usize,
    ) -> Result<(), Quota> {
        let key = self.credentials.quota_key(username);
        let user_count = self.per_user.get(key).copied().unwrap_or(0);
        if user_count + user_slots > self.config.max_allocations_per_user {
            return Err(Quota::User);
        }
        if self.allocations.len() + self.pending_slots + self.reservations.len() + total_slots
            > self.config.max_allocations
        {
            return Err(Quota::Total);
        }
        Ok(())
    }

    /// May `addr` be a relayed address of a new allocation or reservation: on the relay IP of
    /// its family, in the port range, and neither claimed nor held by an allocation?
    fn check_relayed_address(&self, addr: SocketAddr) -> Result<(), AdoptionRefusal> {
        if self.relay_ip(family_of(addr.ip())) != Some(addr.ip())
            || !(self.config.min_port..=self.config.max_port).contains(&addr.port())
        {
            return Err(AdoptionRefusal::RelayedNotConfigured);
        }
        if self.by_relayed.contains_key(&addr) || self.ports.is_claimed(addr) {
            return Err(AdoptionRefusal::RelayedTaken);
        }
        Ok(())
    }

    fn count_user(&mut self, username: &str, slots: usize) {
        if slots == 0 {
            return;
        }
        let key = self.credentials.quota_key(username).to_owned();
        *self.per_user.entry(key).or_default() += slots;
    }

    /// Takes `slots` off the quota count of `username`.
    fn forget_user(&mut self, username: &str, slots: usize) {
        let key = self.credentials.quota_key(username);
        if let Some(count) = self.per_user.get_mut(key) {
            *count = count.saturating_sub(slots);
            if *count == 0 {
                self.per_user.remove(key);
            }
        }
    }

    /// Removes reservation `token` with its timer and its quota slot; the port stays claimed
    /// (the caller either hands it to an allocation or releases it).
    fn take_reservation(&mut self, token: u64) -> Option<Reservation> {
        let reservation = self.reservations.remove(&token)?;
        self.timers
            .remove(&(reservation.expires, Timer::Reservation(token)));
        self.forget_user(&reservation.username, 1);
        Some(reservation)
    }

    /// Ends reservation `token` unclaimed: its socket is closed.
    fn release_reservation(&mut self, token: u64) {
        if let Some(reservation) = self.take_reservation(token) {
            self.ports.release(reservation.addr);
            self.commands.push_back(Command::ReleaseRelay {
                addr: reservation.addr,
            });
        }
    }

    /// A stream client's connection ended: its allocation (if any) ends with it (RFC 8656 §3.1:
    /// an allocation over TCP is tied to its connection).
    pub fn handle_client_closed(&mut self, listener: ListenerId, client: SocketAddr) {
        let Some(l) = self.config.listeners.get(usize::from(listener.0)) else {
            return;
        };
        let five_tuple = FiveTuple {
            client,
            server: l.addr,
            transport: l.transport,
        };
        if self.allocations.contains_key(&five_tuple) {
            debug!(%client, "stream connection closed: deleting its allocation");
            self.remove_allocation(&five_tuple, false);
        }
    }

    /// Removes an allocation: its channels are unbound, its timers dropped, and its sockets
    /// (and a reservation it made that is still unclaimed) released.
    fn remove_allocation(&mut self, five_tuple: &FiveTuple, expired: bool) {
        let Some(allocation) = self.allocations.remove(five_tuple) else {
            return;
        };
        self.touch();
        // Only channels whose permission is installed have kernel entries to remove.
        for binding in allocation.installed_bindings() {
            self.commands.push_back(Command::ChannelUnbound(binding));
        }
        self.timers.remove(&(
            allocation.timer_at,
            Timer::Allocation(allocation.five_tuple),
        ));
        for (ip, permission) in &allocation.permissions {
            self.timers.remove(&(
                permission.timer_at,
                Timer::Permission(allocation.five_tuple, *ip),
            ));
        }
        for (number, channel) in &allocation.channels {
            self.timers.remove(&(
                channel.timer_at,
                Timer::Channel(allocation.five_tuple, *number),
            ));
        }
        for r in &allocation.relayed {
            self.by_relayed.remove(&r.0);
            self.ports.release(r.0);
            self.commands.push_back(Command::ReleaseRelay { addr: r.0 });
        }
        // A token may have been claimed by now (and, however unlikely, its value reused).
        if let Some(token) = allocation.reservation
            && self
                .reservations
                .get(&token)
                .is_some_and(|r| r.owner == allocation.five_tuple)
        {
            self.release_reservation(token);
        }
        self.forget_user(&allocation.username, 1);
        if expired {
            self.stats.allocations_expired += 1;
        } else {
            self.stats.allocations_deleted += 1;
        }
        info!(client = %five_tuple.client, expired, "allocation removed");
    }

    // ---------------------------------------------------------------------------------------
    // Refresh (§7.3), CreatePermission (§9), ChannelBind (§11)
    // ---------------------------------------------------------------------------------------

    fn refresh(
        &mut self,
        five_tuple: FiveTuple,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        let requested = message.get_attribute::<Lifetime>().map(Lifetime::lifetime);
        let lifetime = self.grant_lifetime(requested);
        let allocation = match owned_allocation(&mut self.allocations, &five_tuple, auth) {
            Ok(allocation) => allocation,
            Err(reply) => return reply,
        };
        if let Some(family) = message.get_attribute::<RequestedAddressFamily>()
            && !allocation
                .relayed
                .iter()
                .any(|r| family_of(r.0.ip()) == family.address_family())
        {
            return Reply::error(443);
        }
        if requested == Some(Duration::ZERO) {
            self.remove_allocation(&five_tuple, false);
            return Reply::Success(vec![lifetime_attr(Duration::ZERO).into()]);
        }
        allocation.expires = now + lifetime;
        arm(
            &mut self.timers,
            &mut allocation.timer_at,
            allocation.expires,
            Timer::Allocation(five_tuple),
        );
        Reply::Success(vec![lifetime_attr(lifetime).into()])
    }

    /// Installs or refreshes the permission for `peer` on `allocation`; `true` if it is new.
    fn install_permission(
        timers: &mut BTreeSet<(Instant, Timer)>,
        allocation: &mut Allocation,
        peer: IpAddr,
        expires: Instant,
    ) -> bool {
        let five_tuple = allocation.five_tuple;
        match allocation.permissions.get_mut(&peer) {
            Some(permission) => {
                permission.expires = expires;
                arm(
                    timers,
                    &mut permission.timer_at,
                    expires,
                    Timer::Permission(five_tuple, peer),
                );
                false
            }
            None => {
                allocation.permissions.insert(
                    peer,
                    Permission {
                        expires,
                        timer_at: expires,
                    },
                );
                timers.insert((expires, Timer::Permission(five_tuple, peer)));
                true
            }
        }
    }

    fn create_permission(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        let peers: Vec<IpAddr> = message
            .attributes()
            .filter_map(|a| match a {
                Attribute::XorPeerAddress(peer) => Some(peer.address().ip()),
                _ => None,
            })
            .collect();
        let name = self.listener_name(listener).to_owned();
        let allocation = match owned_allocation(&mut self.allocations, &five_tuple, auth) {
            Ok(allocation) => allocation,
            Err(reply) => return reply,
        };
        if peers.is_empty() {
            return Reply::error(400);
        }
        if let Err(rule) = allocation.check_permissions(&peers) {
            return Reply::error(rule.error_code());
        }
        // All or nothing: check every peer before installing any.
        if let Some(denied) = peers
            .iter()
            .find_map(|peer| self.policy.permits_ip(&name, *peer).err())
        {
            debug!(client = %five_tuple.client, %denied, "CreatePermission refused");
            self.stats.peer_denied += 1;
            return Reply::error(403);
        }
        let fresh: HashSet<IpAddr> = peers
            .iter()
            .filter(|peer| !allocation.permissions.contains_key(peer))
            .copied()
            .collect();
        let expires = now + self.config.permission_lifetime;
        for peer in peers {
            if Self::install_permission(&mut self.timers, allocation, peer, expires) {
                self.stats.permissions_created += 1;
            }
        }
        // Channels still bound to those peers relay again (RFC 8656 §12: a channel outlives a
        // lapse of its permission): their kernel entries come back.
        for ip in &fresh {
            for binding in allocation.bindings_to(*ip) {
                self.commands.push_back(Command::ChannelBound(binding));
            }
        }
        Reply::Success(Vec::new())
    }

    fn channel_bind(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        let name = self.listener_name(listener).to_owned();
        let channel_expires = now + self.config.channel_lifetime;
        let permission_expires = now + self.config.permission_lifetime;
        let allocation = match owned_allocation(&mut self.allocations, &five_tuple, auth) {
            Ok(allocation) => allocation,
            Err(reply) => return reply,
        };
        let (Some(number), Some(peer)) = (
            message.get_attribute::<ChannelNumber>().copied(),
            message
                .get_attribute::<XorPeerAddress>()
                .map(XorPeerAddress::address),
        ) else {
            return Reply::error(400);
        };
        let number = number.value();
        if let Err(rule) = allocation.check_channel(number, peer) {
            return Reply::error(rule.error_code());
        }
        if let Err(denied) = self.policy.permits(&name, peer) {
            debug!(client = %five_tuple.client, %denied, "ChannelBind refused");
            self.stats.peer_denied += 1;
            return Reply::error(403);
        }
        let cluster = cluster_slot(&self.policy, &self.cluster_slots, &name, peer);
        let newly_bound = match allocation.channels.get_mut(&number) {
            Some(channel) => {
                channel.expires = channel_expires;
                arm(
                    &mut self.timers,
                    &mut channel.timer_at,
                    channel_expires,
                    Timer::Channel(five_tuple, number),
                );
                let was_bound = channel.bound;
                channel.bound = true;
                if !was_bound {
                    // Bound anew (after its cooldown): counted by the policy in force now.
                    channel.cluster = cluster;
                }
                !was_bound
            }
            None => {
                allocation.add_channel(
                    number,
                    Channel {
                        peer,
                        expires: channel_expires,
                        timer_at: channel_expires,
                        bound: true,
                        cluster,
                    },
                );
                self.timers
                    .insert((channel_expires, Timer::Channel(five_tuple, number)));
                true
            }
        };
        let new_permission =
            Self::install_permission(&mut self.timers, allocation, peer.ip(), permission_expires);
        if new_permission {
            self.stats.permissions_created += 1;
            // Every channel bound to that IP (this one included) relays again.
            for binding in allocation.bindings_to(peer.ip()) {
                self.commands.push_back(Command::ChannelBound(binding));
            }
        } else if newly_bound && let Some(binding) = allocation.binding(number, peer) {
            self.commands.push_back(Command::ChannelBound(binding));
        }
        if newly_bound {
            self.stats.channels_bound += 1;
        }
        Reply::Success(Vec::new())
    }

    // ---------------------------------------------------------------------------------------
    // Data paths
    // ---------------------------------------------------------------------------------------

    /// A client's indication; `wire_len` is the size of its datagram.
    fn handle_indication(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        frame: &StunFrame<'_>,
        wire_len: usize,
        now: Instant,
    ) {
        if frame.header.method != SEND {
            // Binding indications are keepalives; anything else has no meaning here.
            return;
        }
        self.stats.send_indications += 1;
        let fields = match send_fields(frame) {
            SendFields::Malformed => {
                self.stats.malformed_dropped += 1;
                return;
            }
            fields => fields,
        };
        let Some(allocation) = self.allocations.get(&five_tuple) else {
            self.stats.unknown_client_dropped += 1;
            return;
        };
        let SendFields::Complete {
            peer,
            data,
            dont_fragment,
        } = fields
        else {
            self.stats.malformed_dropped += 1;
            return;
        };
        let Some(relayed) = allocation.relayed_for(peer.ip()) else {
            self.stats.client_dropped_no_permission += 1;
            return;
        };
        if let Err(denied) = self.policy.permits(self.listener_name(listener), peer) {
            debug!(client = %five_tuple.client, %denied, "Send indication refused");
            self.stats.peer_denied += 1;
            return;
        }
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.client_dropped_no_permission += 1;
            return;
        }
        // Send is the slow path: its cluster is looked up per indication.
        let cluster = cluster_slot(
            &self.policy,
            &self.cluster_slots,
            self.listener_name(listener),
            peer,
        );
        // A borrowed payload is copied once here; a decoded one is moved.
        let data = data.into_owned();
        self.stats.relayed_to_peer_packets += 1;
        self.stats.relayed_to_peer_bytes += data.len() as u64;
        self.stats.count_cluster_to_peer(cluster, data.len());
        self.stats.relayed_from_client_wire_bytes += wire_len as u64;
        self.commands.push_back(Command::SendToPeer {
            relayed,
            peer,
            data,
            dont_fragment,
        });
    }

    fn handle_client_channel_data(&mut self, five_tuple: FiveTuple, data: &[u8], now: Instant) {
        let channel_data = match wire::parse_channel_data(data) {
            Ok(channel_data) => channel_data,
            Err(error) => {
                trace!(client = %five_tuple.client, ?error, "dropping malformed ChannelData");
                self.stats.malformed_dropped += 1;
                return;
            }
        };
        let Some(allocation) = self.allocations.get(&five_tuple) else {
            self.stats.unknown_client_dropped += 1;
            return;
        };
        let Some((peer, cluster)) = allocation.channel_peer_cluster(channel_data.channel, now)
        else {
            self.stats.unbound_channel_dropped += 1;
            return;
        };
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.client_dropped_no_permission += 1;
            return;
        }
        let Some(relayed) = allocation.relayed_for(peer.ip()) else {
            self.stats.client_dropped_no_permission += 1;
            return;
        };
        self.stats.relayed_to_peer_packets += 1;
        self.stats.relayed_to_peer_bytes += channel_data.data.len() as u64;
        self.stats
            .count_cluster_to_peer(cluster, channel_data.data.len());
        self.stats.relayed_from_client_wire_bytes += data.len() as u64;
        self.commands.push_back(Command::SendToPeer {
            relayed,
            peer,
            data: channel_data.data.to_vec(),
            dont_fragment: false,
        });
    }

    /// A UDP datagram from `peer` arrived on the relayed socket bound at `relayed`.
    pub fn handle_peer_datagram(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let Some(allocation) = self
            .by_relayed
            .get(&relayed)
            .and_then(|five_tuple| self.allocations.get(five_tuple))
        else {
            self.stats.peer_dropped_no_allocation += 1;
            return;
        };
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.peer_dropped_no_permission += 1;
            return;
        }
        let (listener, client) = (allocation.listener, allocation.five_tuple.client);
        let (bytes, cluster) = match allocation.channel_to(peer, now) {
            Some((number, cluster)) => (wire::encode_channel_data(number, data), cluster),
            None => {
                // Data indications are the slow path: their cluster is looked up per datagram.
                let cluster = cluster_slot(
                    &self.policy,
                    &self.cluster_slots,
                    self.listener_name(listener),
                    peer,
                );
                let transaction_id: [u8; 12] = self.rng.random();
                let bytes = wire::encode_data_indication(transaction_id, peer, data);
                (bytes, cluster)
            }
        };
        let Some(bytes) = bytes else {
            trace!(%peer, len = data.len(), "peer datagram too large to relay");
            self.stats.peer_dropped_oversized += 1;
            return;
        };
        self.stats.relayed_to_client_packets += 1;
        self.stats.relayed_to_client_bytes += data.len() as u64;
        self.stats.count_cluster_to_client(cluster, data.len());
        self.stats.relayed_to_client_wire_bytes += bytes.len() as u64;
        self.commands.push_back(Command::SendToClient {
            listener,
            client,
            data: bytes,
        });
    }

    // ---------------------------------------------------------------------------------------
    // Timers
    // ---------------------------------------------------------------------------------------

    /// Expires whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx_cache.prune(now);
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Allocation(five_tuple) => self.allocation_timer(five_tuple, at, now),
                Timer::Permission(five_tuple, peer) => {
                    self.permission_timer(five_tuple, peer, at, now);
                }
                Timer::Channel(five_tuple, number) => {
                    self.channel_timer(five_tuple, number, at, now);
                }
                Timer::Reservation(token) => {
                    if self
                        .reservations
                        .get(&token)
                        .is_some_and(|r| r.expires <= now)
                    {
                        self.release_reservation(token);
                    }
                }
            }
        }
    }

    fn allocation_timer(&mut self, five_tuple: FiveTuple, at: Instant, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&five_tuple) else {
            return;
        };
        if allocation.timer_at != at {
            return;
        }
        if allocation.expires <= now {
            self.remove_allocation(&five_tuple, true);
        } else {
            allocation.timer_at = allocation.expires;
            self.timers
                .insert((allocation.expires, Timer::Allocation(five_tuple)));
        }
    }

    fn permission_timer(&mut self, five_tuple: FiveTuple, peer: IpAddr, at: Instant, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&five_tuple) else {
            return;
        };
        let Some(permission) = allocation.permissions.get_mut(&peer) else {
            return;
        };
        if permission.timer_at != at {
            return;
        }
        if permission.expires > now {
            permission.timer_at = permission.expires;
            self.timers
                .insert((permission.expires, Timer::Permission(five_tuple, peer)));
            return;
        }
        allocation.permissions.remove(&peer);
        self.state_version = self.state_version.wrapping_add(1);
        debug!(client = %five_tuple.client, %peer, "permission expired");
        // Channels to that peer carry nothing without the permission, so the fast path must
        // drop their entries; but the bindings themselves last their own lifetime (RFC 8656
        // §12), and a new permission makes them relay again.
        for binding in allocation.bindings_to(peer) {
            self.commands.push_back(Command::ChannelUnbound(binding));
        }
    }

    fn channel_timer(&mut self, five_tuple: FiveTuple, number: u16, at: Instant, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&five_tuple) else {
            return;
        };
        let Some(channel) = allocation.channels.get_mut(&number) else {
            return;
        };
        if channel.timer_at != at {
            return;
        }
        if channel.expires > now {
            channel.timer_at = channel.expires;
            self.timers
                .insert((channel.expires, Timer::Channel(five_tuple, number)));
        } else if channel.bound {
            // The binding ends; the cool-down begins.
            channel.bound = false;
            self.state_version = self.state_version.wrapping_add(1);
            let peer = channel.peer;
            rearm(
                &mut self.timers,
                &mut channel.timer_at,
                now + CHANNEL_COOLDOWN,
                Timer::Channel(five_tuple, number),
            );
            channel.expires = channel.timer_at;
            self.stats.channels_expired += 1;
            debug!(client = %five_tuple.client, %peer, number, "channel unbound");
            // Without its permission the channel's entries were withdrawn already.
            if allocation.permissions.contains_key(&peer.ip())
                && let Some(binding) = allocation.binding(number, peer)
            {
                self.commands.push_back(Command::ChannelUnbound(binding));
            }
        } else {
            // The cool-down is over: number and peer are free again.
            allocation.remove_channel(number);
            self.state_version = self.state_version.wrapping_add(1);
        }
    }
}

impl Server {
    /// Marks the state a [`Snapshot`] holds as changed.
    fn touch(&mut self) {
        self.state_version = self.state_version.wrapping_add(1);
    }

    /// A number that changes whenever allocations, permissions or channels do (created,
    /// refreshed, expired, deleted): the I/O layer writes a new [`Snapshot`] when it moves.
    /// ChannelData and Send never change it.
    pub fn state_version(&self) -> u64 {
        self.state_version
    }

    /// Bound channels whose permission is installed: those the fast path relays. After a
    /// [`Server::restore`] these are the kernel entries to keep.
    pub fn installed_channel_bindings(&self) -> Vec<ChannelBinding> {
        self.allocations
            .values()
            .flat_map(Allocation::installed_bindings)
            .collect()
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        let unix = self.start_unix + at.saturating_duration_since(self.start);
        u64::try_from(unix.as_millis()).unwrap_or(u64::MAX)
    }

    /// Every allocation with its permissions and channels, times in UNIX milliseconds.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut allocations: Vec<AllocationState> = self
            .allocations
            .values()
            .map(|a| {
                let mut permissions: Vec<PermissionState> = a
                    .permissions
                    .iter()
                    .map(|(peer, p)| PermissionState {
                        peer: *peer,
                        expires_unix_ms: self.unix_ms(p.expires),
                    })
                    .collect();
                permissions.sort_by_key(|p| p.peer);
                let mut channels: Vec<ChannelState> = a
                    .channels
                    .iter()
                    .map(|(number, c)| ChannelState {
                        number: *number,
                        peer: c.peer,
                        expires_unix_ms: self.unix_ms(c.expires),
                        bound: c.bound,
                    })
                    .collect();
                channels.sort_by_key(|c| c.number);
                let mut transaction_id = [0u8; 12];
                transaction_id.copy_from_slice(a.transaction_id.as_bytes());
                let reservation = a.reservation.and_then(|token| {
                    let r = self.reservations.get(&token)?;
                    Some(ReservationState {
                        token,
                        relayed: r.addr,
                        expires_unix_ms: self.unix_ms(r.expires),
                    })
                });
                AllocationState {
                    client: a.five_tuple.client,
                    server: a.five_tuple.server,
                    listener: a.listener.0,
                    username: a.username.clone(),
                    relayed: a.relayed.iter().map(|r| r.0).collect(),
                    expires_unix_ms: self.unix_ms(a.expires),
                    transaction_id,
                    permissions,
                    channels,
                    reservation,
                }
            })
            .collect();
        allocations.sort_by_key(|a| (a.client, a.server));
        Snapshot {
            version: SNAPSHOT_VERSION,
            taken_unix_ms: self.unix_ms(now),
            allocations,
        }
    }

    /// Adopts the allocations of `snapshot` (taken by an earlier run of the agent) into this
    /// server, which should have none yet. Lifetimes run on from the snapshot's UNIX times, so
    /// the time spent down counts: whatever expired meanwhile is left out. An allocation is
    /// adopted only if this server could have made it, by the same rules as ChannelBind,
    /// CreatePermission and Allocate; what breaks one is refused whole, counted by reason in
    /// [`Stats::adoption_refused`] and listed in [`RestoreOutcome::refused`]. Quota counts
    /// include the adopted allocations. No command is emitted: the kernel entries of adopted
    /// channels are the caller's to reconcile ([`Server::installed_channel_bindings`]), and
    /// every address of [`RestoreOutcome::relayed`] (reserved ports included) must be bound,
    /// or its allocation dropped with [`Server::drop_restored`].
    pub fn restore(&mut self, snapshot: &Snapshot, now: Instant) -> RestoreOutcome {
        let mut outcome = RestoreOutcome::default();
        let now_ms = self.unix_ms(now);
        // UNIX milliseconds to a monotonic instant; `None` once passed.
        let at = |unix_ms: u64| {
            (unix_ms > now_ms).then(|| now + Duration::from_millis(unix_ms - now_ms))
        };
        for state in &snapshot.allocations {
            let adopted = if snapshot.version == SNAPSHOT_VERSION {
                self.restore_one(state, now, &at)
            } else {
                Err(AdoptionRefusal::UnknownVersion)
            };
            match adopted {
                Ok(channels) => {
                    outcome.allocations += 1;
                    outcome.channels += channels;
                    outcome.relayed.extend(state.relayed.iter().copied());
                    if let Some(token) = self.allocations_reservation(state) {
                        outcome.relayed.push(token);
                    }
                }
                Err(why) => {
                    warn!(
                        client = %state.client,
                        reason = why.label(),
                        why = %why,
                        "allocation not adopted"
                    );
                    self.stats.count_adoption_refused(why);
                    outcome.skipped += 1;
                    outcome.refused.push((state.client, why));
                }
            }
        }
        outcome
    }

    /// The reserved port adopted with `state`'s allocation, if any.
    fn allocations_reservation(&self, state: &AllocationState) -> Option<SocketAddr> {
        let reservation = state.reservation.as_ref()?;
        self.reservations
            .get(&reservation.token)
            .map(|r| r.addr)
            .filter(|addr| *addr == reservation.relayed)
    }

    fn restore_one(
        &mut self,
        state: &AllocationState,
        now: Instant,
        at: &impl Fn(u64) -> Option<Instant>,
    ) -> Result<usize, AdoptionRefusal> {
        let listener = ListenerId(state.listener);
        let five_tuple = FiveTuple {
            client: state.client,
            server: state.server,
            transport: Transport::Udp,
        };
        match self.config.listeners.get(usize::from(state.listener)) {
            Some(l) if l.addr == state.server && l.transport == Transport::Udp => {}
            // A stream client's connection did not survive the restart.
            Some(l) if l.transport == Transport::Tcp => {
                return Err(AdoptionRefusal::ConnectionEnded);
            }
            _ => return Err(AdoptionRefusal::ListenerGone),
        }
        let expires = at(state.expires_unix_ms).ok_or(AdoptionRefusal::Expired)?;
        if self.allocations.contains_key(&five_tuple)
            || self.pending_by_tuple.contains_key(&five_tuple)
        {
            return Err(AdoptionRefusal::ClientHasAllocation);
        }
        // A reservation that expired while down is left out; a live one needs its own slot.
        let reservation = state
            .reservation
            .as_ref()
            .and_then(|r| Some((r, at(r.expires_unix_ms)?)));
        let slots = 1 + usize::from(reservation.is_some());
        self.check_quota(&state.username, slots, slots)
            .map_err(|quota| match quota {
                Quota::User => AdoptionRefusal::UserQuota,
                Quota::Total => AdoptionRefusal::TotalQuota,
            })?;
        // What Allocate makes: one address, or one of each family (IPv4 first).
        let valid_relayed = match state.relayed.as_slice() {
            [_] => true,
            [a, b] => a.is_ipv4() && b.is_ipv6(),
            _ => false,
        };
        if !valid_relayed {
            return Err(AdoptionRefusal::RelayedMalformed);
        }
        for addr in &state.relayed {
            self.check_relayed_address(*addr)?;
        }
        if let Some((r, _)) = reservation {
            self.check_relayed_address(r.relayed)?;
            if self.reservations.contains_key(&r.token) || state.relayed.contains(&r.relayed) {
                return Err(AdoptionRefusal::ReservationTaken);
            }
        }
        let mut allocation = Allocation {
            five_tuple,
            listener,
            username: state.username.clone(),
            relayed: state.relayed.iter().map(|r| RelayedAddress(*r)).collect(),
            expires,
            timer_at: expires,
            transaction_id: TransactionId::new(state.transaction_id),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            channel_ips: BTreeSet::new(),
            reservation: reservation.map(|(r, _)| r.token),
        };
        let mut timers = Vec::new();
        let permitted: Vec<IpAddr> = state.permissions.iter().map(|p| p.peer).collect();
        allocation
            .check_permissions(&permitted)
            .map_err(AdoptionRefusal::Permission)?;
        if permitted.iter().collect::<HashSet<_>>().len() != permitted.len() {
            return Err(AdoptionRefusal::PermissionListedTwice);
        }
        for permission in &state.permissions {
            let Some(expires) = at(permission.expires_unix_ms) else {
                continue;
            };
            allocation.permissions.insert(
                permission.peer,
                Permission {
                    expires,
                    timer_at: expires,
                },
            );
            timers.push((expires, Timer::Permission(five_tuple, permission.peer)));
        }
        let mut bound = 0;
        for channel in &state.channels {
            if allocation.channels.contains_key(&channel.number) {
                return Err(AdoptionRefusal::ChannelListedTwice);
            }
            // Channels live on without a permission (RFC 8656 §12), so the permission part of
            // the rule is judged on the permissions adopted above only.
            allocation
                .check_channel(channel.number, channel.peer)
                .map_err(AdoptionRefusal::Channel)?;
            // A binding that expired while the agent was down is cooling down now.
            let (expires, is_bound) = match (channel.bound, at(channel.expires_unix_ms)) {
                (true, Some(expires)) => (expires, true),
                (true, None) => {
                    let cooldown = u64::try_from(CHANNEL_COOLDOWN.as_millis()).unwrap_or(u64::MAX);
                    match at(channel.expires_unix_ms.saturating_add(cooldown)) {
                        Some(expires) => (expires, false),
                        None => continue,
                    }
                }
                (false, Some(expires)) => (expires, false),
                (false, None) => continue,
            };
            allocation.add_channel(
                channel.number,
                Channel {
                    peer: channel.peer,
                    expires,
                    timer_at: expires,
                    bound: is_bound,
                    cluster: cluster_slot(
                        &self.policy,
                        &self.cluster_slots,
                        self.listener_name(listener),
                        channel.peer,
                    ),
                },
            );
            timers.push((expires, Timer::Channel(five_tuple, channel.number)));
            bound += usize::from(is_bound);
        }
        for r in &allocation.relayed {
            self.by_relayed.insert(r.0, five_tuple);
            self.ports.claim(r.0);
        }
        if let Some((r, expires)) = reservation {
            self.ports.claim(r.relayed);
            self.reservations.insert(
                r.token,
                Reservation {
                    addr: r.relayed,
                    expires,
                    owner: five_tuple,
                    username: state.username.clone(),
                },
            );
            self.timers.insert((expires, Timer::Reservation(r.token)));
            self.count_user(&state.username, 1);
        }
        self.timers.insert((expires, Timer::Allocation(five_tuple)));
        self.timers.extend(timers);
        self.count_user(&state.username, 1);
        self.allocations.insert(five_tuple, allocation);
        self.touch();
        debug!(client = %five_tuple.client, channels = bound, ?now, "allocation adopted");
        Ok(bound)
    }

    /// Drops the adopted allocation that holds `relayed` (its socket could not be bound): its
    /// channels are unbound (their kernel entries removed) and its other sockets released. For
    /// an adopted reservation's port, the reservation alone is released. Returns whether there
    /// was one.
    pub fn drop_restored(&mut self, relayed: SocketAddr) -> bool {
        if let Some(token) = self
            .reservations
            .iter()
            .find(|(_, r)| r.addr == relayed)
            .map(|(token, _)| *token)
        {
            self.release_reservation(token);
            self.stats
                .count_adoption_refused(AdoptionRefusal::RelayedUnbindable);
            self.touch();
            return true;
        }
        let Some(five_tuple) = self.by_relayed.get(&relayed).copied() else {
            return false;
        };
        self.remove_allocation(&five_tuple, false);
        self.stats
            .count_adoption_refused(AdoptionRefusal::RelayedUnbindable);
        true
    }
}

/// What a Send indication carries.
enum SendFields<'a> {
    /// Undecodable, or with comprehension-required attributes we do not know: dropped.
    Malformed,
    /// Decodable but without XOR-PEER-ADDRESS or DATA.
    Incomplete,
    Complete {
        peer: SocketAddr,
        data: Cow<'a, [u8]>,
        dont_fragment: bool,
    },
}

/// The fields of a Send indication: read straight from the datagram when it holds only the
/// usual attributes (no decoder copy of the payload), else through `stun_codec`.
fn send_fields<'a>(frame: &StunFrame<'a>) -> SendFields<'a> {
    if let Some(send) = frame.simple_send() {
        return SendFields::Complete {
            peer: send.peer,
            data: Cow::Borrowed(send.data),
            dont_fragment: send.dont_fragment,
        };
    }
    let Some(message) = decode(frame) else {
        return SendFields::Malformed;
    };
    if !unknown_required(&message).is_empty() {
        return SendFields::Malformed;
    }
    let (Some(peer), Some(data)) = (
        message
            .get_attribute::<XorPeerAddress>()
            .map(XorPeerAddress::address),
        message.get_attribute::<Data>(),
    ) else {
        return SendFields::Incomplete;
    };
    SendFields::Complete {
        peer,
        data: Cow::Owned(data.data().to_vec()),
        dont_fragment: message.get_attribute::<DontFragment>().is_some(),
    }
}
