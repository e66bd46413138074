//! ChannelBind (RFC 8656 §11).
use std::time::Instant;

use stun_codec::Message;
use tracing::debug;

use super::allocation::Channel;
use super::state::*;
use super::{Command, FiveTuple, ListenerId};
use crate::attributes::{Attribute, ChannelNumber, XorPeerAddress};

impl Server {
    pub(super) fn channel_bind(
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
        // A TCP allocation (RFC 6062) has connections, not channels.
        if allocation.tcp {
            return Reply::error(400);
        }
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
}
