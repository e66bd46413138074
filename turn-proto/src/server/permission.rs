//! CreatePermission (RFC 8656 §9).
use std::collections::BTreeSet;

use super::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use stun_codec::Message;
use tracing::debug;

use super::allocation::{Allocation, Permission};
use super::state::*;
use super::{Command, FiveTuple, ListenerId};
use crate::attributes::Attribute;

impl Server {
    /// Installs or refreshes the permission for `peer` on `allocation`; `true` if it is new.
    pub(super) fn install_permission(
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

    pub(super) fn create_permission(
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
        let tcp = allocation.tcp;
        // All or nothing: check every peer before installing any.
        if let Some(denied) = peers
            .iter()
            .find_map(|peer| self.policy.permits_ip_over(&name, *peer, tcp).err())
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
}
