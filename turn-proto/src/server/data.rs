//! The data paths in userspace: Send and Data indications (RFC 8656 §10), ChannelData (§12).
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng as _;
use stun_codec::rfc5766::methods::SEND;
use tracing::{debug, trace};

use super::state::*;
use super::{ChannelBinding, Command, FiveTuple, ListenerId};
use crate::attributes::{Data, DontFragment, XorPeerAddress};
use crate::wire::{self, StunFrame};

impl Server {
    // ---------------------------------------------------------------------------------------
    // Data paths
    // ---------------------------------------------------------------------------------------

    /// A client's indication; `wire_len` is the size of its datagram.
    pub(super) fn handle_indication(
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
        if allocation.tcp {
            // A TCP allocation's data goes over its connections (RFC 6062).
            self.stats.malformed_dropped += 1;
            return;
        }
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
        let user = allocation.user;
        // A borrowed payload is copied once here; a decoded one is moved.
        let data = data.into_owned();
        self.usage.relayed_to_peer(user, data.len());
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

    pub(super) fn handle_client_channel_data(
        &mut self,
        five_tuple: FiveTuple,
        data: &[u8],
        now: Instant,
    ) {
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
        self.usage
            .relayed_to_peer(allocation.user, channel_data.data.len());
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
        let (listener, client, user) = (
            allocation.listener,
            allocation.five_tuple.client,
            allocation.user,
        );
        let (bytes, cluster) = match allocation.channel_to(peer, now) {
            Some((number, cluster)) => {
                (wire::encode_channel_data(number, data, false).ok(), cluster)
            }
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
        self.usage.relayed_to_client(user, data.len());
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
}

/// ChannelData relayed on one channel binding outside the core, by the I/O layer's own copy of
/// the binding (see [`Command::ChannelBound`]); added with [`Server::count_channel_traffic`] so
/// the core's [`Stats`](super::Stats) count it as if the core had relayed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelTraffic {
    /// ChannelData from the client relayed to the peer: datagrams, data bytes, and the bytes of
    /// the ChannelData messages they came in.
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub from_client_wire_bytes: u64,
    /// Datagrams from the peer relayed to the client as ChannelData: datagrams, data bytes, and
    /// the bytes of the ChannelData messages sent.
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub to_client_wire_bytes: u64,
}

impl ChannelTraffic {
    pub fn is_empty(&self) -> bool {
        *self == ChannelTraffic::default()
    }
}

impl Server {
    /// Counts `traffic`, relayed outside the core on `binding`, in the relayed totals, its
    /// cluster's ([`ChannelBinding::cluster`]) and its user's ([`ChannelBinding::user`]).
    pub fn count_channel_traffic(&mut self, binding: &ChannelBinding, traffic: ChannelTraffic) {
        let cluster = binding.cluster;
        self.usage.add_traffic(binding.user, &traffic);
        let stats = &mut self.stats;
        stats.relayed_to_peer_packets += traffic.to_peer_packets;
        stats.relayed_to_peer_bytes += traffic.to_peer_bytes;
        stats.relayed_from_client_wire_bytes += traffic.from_client_wire_bytes;
        stats.relayed_to_client_packets += traffic.to_client_packets;
        stats.relayed_to_client_bytes += traffic.to_client_bytes;
        stats.relayed_to_client_wire_bytes += traffic.to_client_wire_bytes;
        if let Some(slot) = stats.clusters.get_mut(cluster) {
            slot.to_peer_packets += traffic.to_peer_packets;
            slot.to_peer_bytes += traffic.to_peer_bytes;
            slot.to_client_packets += traffic.to_client_packets;
            slot.to_client_bytes += traffic.to_client_bytes;
        }
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
