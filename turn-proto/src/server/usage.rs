//! Per-user usage, for billing and dashboards: per user id, allocations now and in all, and
//! the datagrams and data bytes relayed for it in each direction.
//!
//! The user id is what quotas count by ([`Credentials::quota_key`]): a TURN REST username's id
//! part (`1700000000:alice` is `alice`), else the username. A user gets a slot with its first
//! allocation; at most [`ServerConfig::max_tracked_users`] users do, and slots are never
//! reused, so what others count by slot (the kernel path's per-binding counters, through
//! [`ChannelBinding::user`]) always counts for the right user. The allocations of users past
//! the cap are counted in [`Usage::untracked_allocations`] and their traffic in slot 0 (the
//! empty user id).
//!
//! [`Credentials::quota_key`]: crate::auth::Credentials::quota_key
//! [`ServerConfig::max_tracked_users`]: super::ServerConfig::max_tracked_users
//! [`ChannelBinding::user`]: super::ChannelBinding::user
use serde::{Deserialize, Serialize};

use super::HashMap;
use super::data::ChannelTraffic;

/// What one user used. Allocations now are not saved: adopted allocations count again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    /// The user id; empty for the users past the cap, together.
    pub user: String,
    /// Allocations now.
    #[serde(skip)]
    pub allocations: u64,
    /// Allocations made since counting began (adoptions after a restart are not new ones).
    pub allocations_total: u64,
    /// Datagrams relayed from the user's clients to peers, and their data bytes (what the
    /// peers receive).
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    /// Datagrams relayed from peers to the user's clients, and their data bytes (what the
    /// peers sent).
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl UserUsage {
    fn named(user: &str) -> UserUsage {
        UserUsage {
            user: user.to_owned(),
            ..UserUsage::default()
        }
    }

    /// Adds the counters of `other` (its allocations now too).
    pub fn add(&mut self, other: &UserUsage) {
        self.allocations += other.allocations;
        self.allocations_total += other.allocations_total;
        self.to_peer_packets += other.to_peer_packets;
        self.to_peer_bytes += other.to_peer_bytes;
        self.to_client_packets += other.to_client_packets;
        self.to_client_bytes += other.to_client_bytes;
    }
}

/// Every user's usage, by slot (see the module documentation).
#[derive(Debug, Clone)]
pub struct Usage {
    /// Slot 0 is the users past the cap.
    users: Vec<UserUsage>,
    slots: HashMap<String, usize>,
    max_users: usize,
    untracked_allocations: u64,
}

impl Usage {
    pub(crate) fn new(max_users: usize) -> Usage {
        Usage {
            users: vec![UserUsage::default()],
            slots: HashMap::default(),
            max_users,
            untracked_allocations: 0,
        }
    }

    /// The slot of `user`, given one now if there is room; 0 (untracked) if not.
    pub(crate) fn slot(&mut self, user: &str) -> usize {
        if let Some(slot) = self.slots.get(user) {
            return *slot;
        }
        if user.is_empty() || self.slots.len() >= self.max_users {
            return 0;
        }
        self.users.push(UserUsage::named(user));
        let slot = self.users.len() - 1;
        self.slots.insert(user.to_owned(), slot);
        slot
    }

    fn at(&mut self, slot: usize) -> &mut UserUsage {
        // Slots come from `slot`, so they are in range; an unknown one counts as untracked.
        let slot = if slot < self.users.len() { slot } else { 0 };
        &mut self.users[slot]
    }

    /// A new allocation of the user in `slot`.
    pub(crate) fn allocation_made(&mut self, slot: usize) {
        if slot == 0 {
            self.untracked_allocations += 1;
        }
        let user = self.at(slot);
        user.allocations += 1;
        user.allocations_total += 1;
    }

    /// An allocation adopted after a restart: made before, counted in the saved totals.
    pub(crate) fn allocation_adopted(&mut self, slot: usize) {
        self.at(slot).allocations += 1;
    }

    pub(crate) fn allocation_gone(&mut self, slot: usize) {
        let user = self.at(slot);
        user.allocations = user.allocations.saturating_sub(1);
    }

    pub(crate) fn relayed_to_peer(&mut self, slot: usize, bytes: usize) {
        let user = self.at(slot);
        user.to_peer_packets += 1;
        user.to_peer_bytes += bytes as u64;
    }

    pub(crate) fn relayed_to_client(&mut self, slot: usize, bytes: usize) {
        let user = self.at(slot);
        user.to_client_packets += 1;
        user.to_client_bytes += bytes as u64;
    }

    pub(crate) fn add_traffic(&mut self, slot: usize, traffic: &ChannelTraffic) {
        let user = self.at(slot);
        user.to_peer_packets += traffic.to_peer_packets;
        user.to_peer_bytes += traffic.to_peer_bytes;
        user.to_client_packets += traffic.to_client_packets;
        user.to_client_bytes += traffic.to_client_bytes;
    }

    /// Adds what was saved before a restart: each user's totals (not its allocations now,
    /// which adoption counts). Users without a slot get one, as far as the cap allows.
    pub(crate) fn add_saved(&mut self, saved: &[UserUsage]) {
        for entry in saved {
            let slot = self.slot(&entry.user);
            let user = self.at(slot);
            user.allocations_total += entry.allocations_total;
            user.to_peer_packets += entry.to_peer_packets;
            user.to_peer_bytes += entry.to_peer_bytes;
            user.to_client_packets += entry.to_client_packets;
            user.to_client_bytes += entry.to_client_bytes;
        }
    }

    /// Every user by slot: slot 0 (empty user id) is the users past the cap together.
    pub fn users(&self) -> &[UserUsage] {
        &self.users
    }

    /// Users with a slot of their own.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// How many users get a slot of their own at most.
    pub fn max_users(&self) -> usize {
        self.max_users
    }

    /// Allocations made by users past the cap.
    pub fn untracked_allocations(&self) -> u64 {
        self.untracked_allocations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_get_slots_up_to_the_cap_and_the_rest_count_together() {
        let mut usage = Usage::new(2);
        let alice = usage.slot("alice");
        let bob = usage.slot("bob");
        assert_eq!((alice, bob, usage.slot("alice")), (1, 2, 1));
        assert_eq!(usage.slot("carol"), 0, "past the cap");
        assert_eq!(usage.slot(""), 0);
        usage.allocation_made(alice);
        usage.allocation_made(0);
        usage.relayed_to_peer(alice, 100);
        usage.relayed_to_client(alice, 40);
        usage.add_traffic(
            alice,
            &ChannelTraffic {
                to_peer_packets: 2,
                to_peer_bytes: 10,
                to_client_packets: 3,
                to_client_bytes: 30,
                ..ChannelTraffic::default()
            },
        );
        usage.relayed_to_peer(0, 7);
        usage.allocation_gone(alice);
        let a = &usage.users()[alice];
        assert_eq!(
            (
                a.allocations,
                a.allocations_total,
                a.to_peer_packets,
                a.to_peer_bytes
            ),
            (0, 1, 3, 110)
        );
        assert_eq!((a.to_client_packets, a.to_client_bytes), (4, 70));
        assert_eq!(usage.untracked_allocations(), 1);
        assert_eq!(usage.users()[0].to_peer_bytes, 7);
        assert_eq!(usage.tracked(), 2);
    }

    #[test]
    fn saved_totals_add_up_and_allocations_now_are_not_saved() {
        let mut before = Usage::new(10);
        let slot = before.slot("alice");
        before.allocation_made(slot);
        before.relayed_to_peer(slot, 5);
        let saved: Vec<UserUsage> = before.users()[1..].to_vec();
        let json = serde_json::to_string(&saved).unwrap_or_default();
        let saved: Vec<UserUsage> = serde_json::from_str(&json).unwrap_or_default();
        let mut after = Usage::new(10);
        // The adopted allocation comes first, then the saved totals.
        let slot = after.slot("alice");
        after.allocation_adopted(slot);
        after.add_saved(&saved);
        let a = &after.users()[slot];
        assert_eq!(
            (a.allocations, a.allocations_total, a.to_peer_bytes),
            (1, 1, 5)
        );
    }
}
