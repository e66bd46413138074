//! Allocate (RFC 8656 §7.2), the two-phase relayed-port binding, reservations, and removing allocations.
use std::collections::BTreeSet;

use super::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng as _;
use stun_codec::rfc8656::attributes::AddressFamily;
use stun_codec::{Message, TransactionId};
use tracing::{debug, info, warn};

use super::allocation::Allocation;
use super::snapshot::AdoptionRefusal;
use super::state::*;
use super::{BindFailure, Command, FiveTuple, ListenerId, RelayedAddress};
use crate::attributes::{
    AdditionalAddressFamily, AddressErrorCode, Attribute, DontFragment, EvenPort, Lifetime,
    RequestedAddressFamily, RequestedTransport, ReservationToken, XorMappedAddress,
    XorRelayAddress,
};
use crate::wire::{self, Header, MessageCopy};

impl Server {
    // ---------------------------------------------------------------------------------------
    // Allocate (RFC 8656 §7.2) and the relayed-port binding
    // ---------------------------------------------------------------------------------------

    pub(super) fn allocate(
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
                // A retransmission: answer from the allocation (its success is not cached
                // unless it carried what the allocation cannot say again).
                self.stats.retransmissions_answered += 1;
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
        let tcp = match transport.protocol() {
            PROTOCOL_UDP => false,
            PROTOCOL_TCP => true,
            _ => return Reply::error(442),
        };
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
        // RFC 6062 §5.1: TCP allocations only over TCP/TLS, and without the UDP-only options
        // (nor a second family: a relayed TCP address is one listening socket).
        if tcp
            && (five_tuple.transport != super::Transport::Tcp
                || token.is_some()
                || even_port.is_some()
                || additional.is_some()
                || message.get_attribute::<DontFragment>().is_some())
        {
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
        let client_ip = five_tuple.client.ip();
        if self.per_ip.get(&client_ip).copied().unwrap_or(0) >= self.config.max_allocations_per_ip {
            self.stats.per_ip_rejections += 1;
            debug!(client = %five_tuple.client, "Allocate refused: its address holds the most allocations one address may");
            return Reply::error(486);
        }
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
                false,
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
        let tried = HashSet::default();
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
                self.commands.push_back(bind_command(*addr, tcp));
            }
        }
        self.count_user(&auth.username, user_slots);
        self.count_ip(five_tuple.client.ip(), 1);
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
                tcp,
            },
        );
        Reply::Parked
    }

    /// Chooses (and claims) the port(s) of `group`. `false` if none is free.
    pub(super) fn pick_ports(
        &mut self,
        group: &mut BindGroup,
        tried: &HashSet<SocketAddr>,
    ) -> bool {
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
                        self.commands.push_back(bind_command(*other, pending.tcp));
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

    pub(super) fn fail_pending(&mut self, pending: &PendingAllocate) {
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
        self.forget_ip(pending.five_tuple.client.ip(), 1);
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

    pub(super) fn complete_pending(&mut self, pending: &PendingAllocate, now: Instant) {
        self.pending_by_tuple.remove(&pending.five_tuple);
        // The parked slots become the allocation and reservation, counted as they are made.
        self.pending_slots = self.pending_slots.saturating_sub(pending.slots);
        self.forget_user(&pending.auth.username, pending.slots);
        self.forget_ip(pending.five_tuple.client.ip(), 1);
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
            pending.tcp,
            pending.lifetime,
            now,
        );
        // A retransmission of this Allocate is recognised by the allocation, which answers it
        // with the same addresses (`allocate`), so the success needs no copy in the transaction
        // cache; only what the allocation cannot say again (a reservation token, an address
        // family that failed) is kept there.
        if let ([only], None, None) = (relayed.as_slice(), token, pending.address_error)
            && let Some(bytes) = self.plain_allocate_success(
                pending.header,
                only.0,
                pending.lifetime,
                pending.five_tuple,
                &pending.auth,
            )
        {
            self.deliver(
                pending.listener,
                pending.five_tuple,
                pending.header,
                bytes,
                true,
                None,
            );
            return;
        }
        let attributes = self.allocate_success(
            &relayed,
            pending.lifetime,
            pending.five_tuple,
            token,
            pending.address_error,
        );
        let cache = token.is_some() || pending.address_error.is_some();
        self.respond(
            pending.listener,
            pending.five_tuple,
            pending.header,
            Reply::Success(attributes),
            Some(&pending.auth),
            cache.then_some(now),
        );
    }

    /// The success of an Allocate with one relayed address, no reservation token and no
    /// address error (nearly all of them), encoded and signed. Such successes differ only in
    /// transaction ID, the two addresses, LIFETIME and the signature, so the last one encoded
    /// (by [`Server::encode_plain`], like every response) is kept before its MESSAGE-INTEGRITY
    /// and copied with those rewritten; a new one is encoded when an address is of another
    /// family (a value of another length).
    pub(super) fn plain_allocate_success(
        &mut self,
        header: Header,
        relayed: SocketAddr,
        lifetime: Duration,
        five_tuple: FiveTuple,
        auth: &AuthContext,
    ) -> Option<Vec<u8>> {
        let client = five_tuple.client;
        let tid = header.transaction_id;
        let seconds = u32::try_from(lifetime.as_secs())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let (relayed_value, relayed_len) = wire::xor_address_value(relayed, tid);
        let (mapped_value, mapped_len) = wire::xor_address_value(client, tid);
        let values: [&[u8]; 3] = [
            &relayed_value[..relayed_len],
            &seconds,
            &mapped_value[..mapped_len],
        ];
        let copied = self
            .success_template
            .as_ref()
            .and_then(|copy| copy.with(tid, &values, wire::TRAILER_ROOM));
        let mut bytes = match copied {
            Some(bytes) => bytes,
            None => {
                let attributes = self.allocate_success(
                    &[RelayedAddress(relayed)],
                    lifetime,
                    five_tuple,
                    None,
                    None,
                );
                let plain = self.encode_plain(header, Reply::Success(attributes), true)?;
                self.success_template = MessageCopy::of(&plain, &SUCCESS_VALUES, tid, &values);
                plain
            }
        };
        wire::append_integrity_with(&mut bytes, &auth.key);
        wire::append_fingerprint(&mut bytes);
        Some(bytes)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_allocation(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        transaction_id: TransactionId,
        username: &str,
        relayed: Vec<RelayedAddress>,
        reservation: Option<u64>,
        tcp: bool,
        lifetime: Duration,
        now: Instant,
    ) {
        let expires = now + lifetime;
        for r in &relayed {
            self.by_relayed.insert(r.0, five_tuple);
            self.ports.claim(r.0);
        }
        info!(client = %five_tuple.client, %username, relayed = ?relayed, "allocation created");
        let user = self.usage.slot(&self.credentials.quota_key(username));
        self.usage.allocation_made(user);
        self.allocations.insert(
            five_tuple,
            Box::new(Allocation {
                five_tuple,
                listener,
                username: username.to_owned(),
                relayed,
                expires,
                timer_at: expires,
                transaction_id,
                permissions: HashMap::default(),
                channels: HashMap::default(),
                channel_by_peer: HashMap::default(),
                channel_ips: BTreeSet::new(),
                reservation,
                user,
                tcp,
                connections: HashMap::default(),
            }),
        );
        self.timers.insert((expires, Timer::Allocation(five_tuple)));
        self.count_user(username, 1);
        self.count_ip(five_tuple.client.ip(), 1);
        self.stats.allocations_created += 1;
        self.changes.mark(five_tuple, listener);
    }

    pub(super) fn allocate_success(
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

    /// May `username` take `user_slots` more quota slots, and the server `total_slots` more?
    /// Slots are allocations, Allocates binding their sockets and reservations.
    pub(super) fn check_quota(
        &self,
        username: &str,
        user_slots: usize,
        total_slots: usize,
    ) -> Result<(), Quota> {
        let key = self.credentials.quota_key(username);
        let user_count = self.per_user.get(key.as_ref()).copied().unwrap_or(0);
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
    pub(super) fn check_relayed_address(&self, addr: SocketAddr) -> Result<(), AdoptionRefusal> {
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

    /// Adds `slots` to the quota count of `username`.
    pub(super) fn count_user(&mut self, username: &str, slots: usize) {
        if slots == 0 {
            return;
        }
        let key = self.credentials.quota_key(username).into_owned();
        *self.per_user.entry(key).or_default() += slots;
    }

    /// Adds `slots` to the count of client address `ip`.
    pub(super) fn count_ip(&mut self, ip: IpAddr, slots: usize) {
        *self.per_ip.entry(ip).or_default() += slots;
    }

    /// Takes `slots` off the count of client address `ip`.
    pub(super) fn forget_ip(&mut self, ip: IpAddr, slots: usize) {
        take_slots(&mut self.per_ip, &ip, slots);
    }

    /// Takes `slots` off the quota count of `username`.
    pub(super) fn forget_user(&mut self, username: &str, slots: usize) {
        let key = self.credentials.quota_key(username);
        take_slots(&mut self.per_user, key.as_ref(), slots);
    }

    /// Removes reservation `token` with its timer and its quota slot; the port stays claimed
    /// (the caller either hands it to an allocation or releases it).
    pub(super) fn take_reservation(&mut self, token: u64) -> Option<Reservation> {
        let reservation = self.reservations.remove(&token)?;
        // The allocation that made it holds it in a snapshot.
        if let Some(owner) = self.allocations.get(&reservation.owner) {
            self.changes.mark(reservation.owner, owner.listener);
        }
        self.timers
            .remove(&(reservation.expires, Timer::Reservation(token)));
        self.forget_user(&reservation.username, 1);
        Some(reservation)
    }

    /// Ends reservation `token` unclaimed: its socket is closed.
    pub(super) fn release_reservation(&mut self, token: u64) {
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
    pub(super) fn remove_allocation(&mut self, five_tuple: &FiveTuple, expired: bool) {
        let Some(allocation) = self.allocations.remove(five_tuple) else {
            return;
        };
        self.changes.mark(*five_tuple, allocation.listener);
        self.close_connections(allocation.connections.values().copied());
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
        self.forget_ip(five_tuple.client.ip(), 1);
        self.usage.allocation_gone(allocation.user);
        if expired {
            self.stats.allocations_expired += 1;
        } else {
            self.stats.allocations_deleted += 1;
        }
        info!(client = %five_tuple.client, expired, "allocation removed");
    }
}

/// Takes `slots` off `key`'s count in `counts`, dropping the entry at zero.
/// The command binding a relayed address: a UDP socket, or a listening TCP socket for a TCP
/// allocation.
fn bind_command(addr: SocketAddr, tcp: bool) -> Command {
    if tcp {
        Command::ListenRelay { addr }
    } else {
        Command::BindRelay { addr }
    }
}

fn take_slots<K, Q>(counts: &mut super::HashMap<K, usize>, key: &Q, slots: usize)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(slots);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The attributes a plain Allocate success is copied with: XOR-RELAYED-ADDRESS, LIFETIME and
/// XOR-MAPPED-ADDRESS, in [`Server::plain_allocate_success`]'s order of values.
const SUCCESS_VALUES: [u16; 3] = [
    wire::ATTR_XOR_RELAYED_ADDRESS,
    wire::ATTR_LIFETIME,
    wire::ATTR_XOR_MAPPED_ADDRESS,
];
