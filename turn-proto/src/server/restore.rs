//! Taking a [`Snapshot`] of the whole state and adopting one after a restart.
use std::collections::BTreeSet;

use super::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_codec::TransactionId;
use tracing::{debug, warn};

use super::allocation::{Allocation, Channel, Permission};
use super::snapshot::{
    AdoptionRefusal, AllocationChange, AllocationState, ChannelState, PermissionState,
    ReservationState, RestoreOutcome, SNAPSHOT_VERSION, Snapshot,
};
use super::state::*;
use super::{ChannelBinding, FiveTuple, ListenerId, RelayedAddress, Transport};

impl Server {
    /// A number that changes whenever allocations, permissions or channels do (created,
    /// refreshed, expired, deleted): the I/O layer writes a new [`Snapshot`] when it moves.
    /// ChannelData and Send never change it.
    pub fn state_version(&self) -> u64 {
        self.changes.version
    }

    /// From now on, keeps which allocations change, for [`Server::take_changes`] (an I/O layer
    /// that journals the state instead of writing whole snapshots).
    pub fn track_changes(&mut self) {
        self.changes.tracked.get_or_insert_with(HashMap::default);
    }

    /// The allocations changed since the last call (or since [`Server::track_changes`]): each
    /// one's state now, or its removal. Applied in order to a [`Snapshot`] taken before them
    /// ([`Snapshot::with_changes`]) they give the state now. Empty when not tracking.
    pub fn take_changes(&mut self) -> Vec<AllocationChange> {
        let Some(tracked) = self.changes.tracked.as_mut() else {
            return Vec::new();
        };
        let changed = std::mem::take(tracked);
        let mut changes: Vec<AllocationChange> = changed
            .into_iter()
            .map(
                |(five_tuple, listener)| match self.allocations.get(&five_tuple) {
                    Some(allocation) => AllocationChange::Put(self.allocation_state(allocation)),
                    None => AllocationChange::Remove {
                        client: five_tuple.client,
                        server: five_tuple.server,
                        listener: listener.0,
                    },
                },
            )
            .collect();
        changes.sort_by_key(AllocationChange::key);
        changes
    }

    /// Forgets the changes tracked so far (a whole [`Snapshot`] was just taken).
    pub fn clear_changes(&mut self) {
        if let Some(tracked) = &mut self.changes.tracked {
            tracked.clear();
        }
    }

    /// Bound channels whose permission is installed: those the fast path relays. After a
    /// [`Server::restore`] these are the kernel entries to keep.
    pub fn installed_channel_bindings(&self) -> Vec<ChannelBinding> {
        self.allocations
            .values()
            .flat_map(|a| a.installed_bindings())
            .collect()
    }

    pub(super) fn unix_ms(&self, at: Instant) -> u64 {
        let unix = self.start_unix + at.saturating_duration_since(self.start);
        u64::try_from(unix.as_millis()).unwrap_or(u64::MAX)
    }

    /// Every allocation with its permissions and channels, times in UNIX milliseconds.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut allocations: Vec<AllocationState> = self
            .allocations
            .values()
            .map(|a| self.allocation_state(a))
            .collect();
        allocations.sort_by_key(|a| (a.client, a.server));
        Snapshot {
            version: SNAPSHOT_VERSION,
            taken_unix_ms: self.unix_ms(now),
            generation: 0,
            allocations,
        }
    }

    /// One allocation as a [`Snapshot`] holds it.
    fn allocation_state(&self, a: &Allocation) -> AllocationState {
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
    pub(super) fn allocations_reservation(&self, state: &AllocationState) -> Option<SocketAddr> {
        let reservation = state.reservation.as_ref()?;
        self.reservations
            .get(&reservation.token)
            .map(|r| r.addr)
            .filter(|addr| *addr == reservation.relayed)
    }

    pub(super) fn restore_one(
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
            permissions: HashMap::default(),
            channels: HashMap::default(),
            channel_by_peer: HashMap::default(),
            channel_ips: BTreeSet::new(),
            reservation: reservation.map(|(r, _)| r.token),
            user: 0,
            tcp: false,
            connections: HashMap::default(),
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
        self.count_ip(five_tuple.client.ip(), 1);
        allocation.user = self
            .usage
            .slot(&self.credentials.quota_key(&state.username));
        self.usage.allocation_adopted(allocation.user);
        self.allocations.insert(five_tuple, Box::new(allocation));
        self.changes.mark(five_tuple, listener);
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
