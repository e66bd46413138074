//! Timers: allocation, permission, channel and reservation expiry.
use std::net::IpAddr;
use std::time::Instant;

use tracing::debug;

use super::state::*;
use super::{Command, FiveTuple};

impl Server {
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
                Timer::Connection(id) => self.connection_timer(id, at),
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

    pub(super) fn allocation_timer(&mut self, five_tuple: FiveTuple, at: Instant, now: Instant) {
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

    pub(super) fn permission_timer(
        &mut self,
        five_tuple: FiveTuple,
        peer: IpAddr,
        at: Instant,
        now: Instant,
    ) {
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
        self.changes.mark(five_tuple, allocation.listener);
        debug!(client = %five_tuple.client, %peer, "permission expired");
        // Channels to that peer carry nothing without the permission, so the fast path must
        // drop their entries; but the bindings themselves last their own lifetime (RFC 8656
        // §12), and a new permission makes them relay again.
        for binding in allocation.bindings_to(peer) {
            self.commands.push_back(Command::ChannelUnbound(binding));
        }
    }

    pub(super) fn channel_timer(
        &mut self,
        five_tuple: FiveTuple,
        number: u16,
        at: Instant,
        now: Instant,
    ) {
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
            self.changes.mark(five_tuple, allocation.listener);
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
            self.changes.mark(five_tuple, allocation.listener);
        }
    }
}
