//! Bound channels relayed in userspace without the TURN core.
//!
//! The core decides every channel binding and says so with `Command::ChannelBound` and
//! `Command::ChannelUnbound` (the same events the kernel path installs its map entries from).
//! The event loop applies them here too, under the core's lock, so this table follows the
//! core's decisions in order: a binding is in the table exactly while the core would relay its
//! ChannelData (bound, and its peer's permission installed).
//!
//! Two directions, two lookups, neither of which takes the core's lock:
//! - client → peer: `(listener, client, channel number)` in a sharded map ([`ChannelTable`]),
//!   giving the relayed socket and the peer;
//! - peer → client: each relayed socket's own small map ([`PeerChannels`]), peer → client and
//!   channel number, read by the task of that socket only.
//!
//! Anything not found (Send and Data indications, unbound channels, malformed messages, other
//! transports) goes to the core as before. What the table relays is counted per binding with
//! relaxed atomic adds and handed to the core's statistics ([`ChannelTable::fold_into`]) when the
//! binding goes and before every read of the statistics (metrics, admin), so the core's counters
//! and everything built on them (STUNner's cluster counters) see it. Only the usage writer folds
//! on a timer, every 10 s and only with `--state-dir`: a fold visits every binding (about 10 ms at
//! 100 000), which a scrape can afford but the packet path should not pay twice a second.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use turn_proto::server::{ChannelBinding, ChannelTraffic, ListenerId, Server};

use crate::server::lock;

/// What one binding relayed through the table since it was last folded into the core.
#[derive(Debug, Default)]
pub(crate) struct BindingCounters {
    to_peer_packets: AtomicU64,
    to_peer_bytes: AtomicU64,
    from_client_wire_bytes: AtomicU64,
    to_client_packets: AtomicU64,
    to_client_bytes: AtomicU64,
    to_client_wire_bytes: AtomicU64,
}

impl BindingCounters {
    /// `packets` ChannelData messages from the client (`data` bytes of data, `wire` bytes in
    /// all) relayed to the peer. Callers count a batch's messages of one binding at once: these
    /// are atomic adds on lines shared with the metrics reader, a cost per call.
    pub(crate) fn to_peer(&self, packets: u64, data: u64, wire: u64) {
        self.to_peer_packets.fetch_add(packets, Ordering::Relaxed);
        self.to_peer_bytes.fetch_add(data, Ordering::Relaxed);
        self.from_client_wire_bytes
            .fetch_add(wire, Ordering::Relaxed);
    }

    /// `packets` datagrams from the peer (`data` bytes in all) relayed to the client as
    /// ChannelData messages of `wire` bytes in all.
    pub(crate) fn to_client(&self, packets: u64, data: u64, wire: u64) {
        self.to_client_packets.fetch_add(packets, Ordering::Relaxed);
        self.to_client_bytes.fetch_add(data, Ordering::Relaxed);
        self.to_client_wire_bytes.fetch_add(wire, Ordering::Relaxed);
    }

    /// Takes what was counted, leaving zeros.
    fn take(&self) -> ChannelTraffic {
        let take = |counter: &AtomicU64| {
            // A load first: most bindings are idle between two folds, and a swap would write.
            if counter.load(Ordering::Relaxed) == 0 {
                0
            } else {
                counter.swap(0, Ordering::Relaxed)
            }
        };
        ChannelTraffic {
            to_peer_packets: take(&self.to_peer_packets),
            to_peer_bytes: take(&self.to_peer_bytes),
            from_client_wire_bytes: take(&self.from_client_wire_bytes),
            to_client_packets: take(&self.to_client_packets),
            to_client_bytes: take(&self.to_client_bytes),
            to_client_wire_bytes: take(&self.to_client_wire_bytes),
        }
    }
}

/// The peer → client half of a binding, kept by its relayed socket.
#[derive(Debug, Clone)]
pub(crate) struct ToClient {
    pub listener: ListenerId,
    pub client: SocketAddr,
    pub channel: u16,
    pub counters: Arc<BindingCounters>,
}

/// A relayed socket's bound peers: peer address → the binding's client half.
#[derive(Debug, Default)]
pub(crate) struct PeerChannels(RwLock<HashMap<SocketAddr, ToClient, RandomState>>);

impl PeerChannels {
    /// Runs `f` with the bound peers read-locked (one lock for a whole batch of datagrams).
    /// `f` must not lock the core: the core's channel events write here under its lock.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&HashMap<SocketAddr, ToClient, RandomState>) -> T,
    ) -> T {
        f(&self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn insert(&self, peer: SocketAddr, to_client: ToClient) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer, to_client);
    }

    /// Removes `peer`'s entry if it is `channel`'s.
    fn remove(&self, peer: &SocketAddr, channel: u16) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(peer).is_some_and(|t| t.channel == channel) {
            map.remove(peer);
        }
    }
}

/// The client → peer half of a binding.
pub(crate) struct ToPeer<R> {
    /// The relayed socket (and what else the event loop keeps with it).
    pub relay: Arc<R>,
    pub peer: SocketAddr,
    pub counters: Arc<BindingCounters>,
}

impl<R> Clone for ToPeer<R> {
    fn clone(&self) -> Self {
        ToPeer {
            relay: Arc::clone(&self.relay),
            peer: self.peer,
            counters: Arc::clone(&self.counters),
        }
    }
}

/// A relayed socket as the table sees it: where its bound peers are kept.
pub(crate) trait Relay {
    fn peer_channels(&self) -> &PeerChannels;
}

/// Key of the client → peer map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientChannel {
    listener: ListenerId,
    client: SocketAddr,
    channel: u16,
}

/// The bound channels the event loop relays itself. See the [module documentation](self).
pub(crate) struct ChannelTable<R> {
    to_peer: DashMap<ClientChannel, ToPeer<R>, RandomState>,
    /// Every binding in the table with its counters and cluster slot, for folding.
    live: Mutex<HashMap<ChannelBinding, Arc<BindingCounters>>>,
}

impl<R: Relay> ChannelTable<R> {
    pub(crate) fn new() -> Self {
        ChannelTable {
            to_peer: DashMap::with_hasher(RandomState::default()),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Bindings in the table now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Where `client`'s ChannelData on `channel` goes, if the channel is in the table.
    pub(crate) fn to_peer(
        &self,
        listener: ListenerId,
        client: SocketAddr,
        channel: u16,
    ) -> Option<ToPeer<R>> {
        let key = ClientChannel {
            listener,
            client,
            channel,
        };
        self.to_peer.get(&key).map(|entry| entry.value().clone())
    }

    /// `Command::ChannelBound`: `binding` relays through `relay` now (again, when its peer's
    /// permission was installed anew: its counters go on).
    pub(crate) fn bound(&self, binding: &ChannelBinding, relay: Arc<R>) {
        let counters = Arc::clone(
            lock(&self.live)
                .entry(*binding)
                .or_insert_with(|| Arc::new(BindingCounters::default())),
        );
        relay.peer_channels().insert(
            binding.peer,
            ToClient {
                listener: binding.listener,
                client: binding.client,
                channel: binding.channel,
                counters: Arc::clone(&counters),
            },
        );
        let key = ClientChannel {
            listener: binding.listener,
            client: binding.client,
            channel: binding.channel,
        };
        self.to_peer.insert(
            key,
            ToPeer {
                relay,
                peer: binding.peer,
                counters,
            },
        );
    }

    /// `Command::ChannelUnbound`: `binding` leaves the table; what it relayed is counted in
    /// `core` now.
    pub(crate) fn unbound(&self, binding: &ChannelBinding, core: &mut Server) {
        let key = ClientChannel {
            listener: binding.listener,
            client: binding.client,
            channel: binding.channel,
        };
        if let Some((_, to_peer)) = self
            .to_peer
            .remove_if(&key, |_, to_peer| to_peer.peer == binding.peer)
        {
            to_peer
                .relay
                .peer_channels()
                .remove(&binding.peer, binding.channel);
        }
        if let Some(counters) = lock(&self.live).remove(binding) {
            core.count_channel_traffic(binding, counters.take());
        }
    }

    /// Hands what every binding relayed since the last fold to the core's statistics.
    pub(crate) fn fold_into(&self, core: &mut Server) {
        for (binding, counters) in lock(&self.live).iter() {
            let traffic = counters.take();
            if !traffic.is_empty() {
                core.count_channel_traffic(binding, traffic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};
    use turn_proto::auth::Credentials;
    use turn_proto::policy::PeerPolicy;
    use turn_proto::server::ServerConfig;

    #[derive(Default)]
    struct TestRelay(PeerChannels);

    impl Relay for TestRelay {
        fn peer_channels(&self) -> &PeerChannels {
            &self.0
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn core() -> Server {
        let config = ServerConfig::new("test", Vec::new());
        Server::new(
            config,
            Credentials::new("test"),
            PeerPolicy::open(Vec::new()),
            [1; 32],
            [2; 32],
            Instant::now(),
            SystemTime::now(),
        )
    }

    fn binding(channel: u16, peer: &str) -> ChannelBinding {
        ChannelBinding {
            listener: ListenerId(0),
            client: addr("198.18.0.2:5000"),
            server: addr("198.18.0.1:3478"),
            relayed: addr("198.18.1.1:50000"),
            peer: addr(peer),
            channel,
            cluster: 0,
            user: 0,
        }
    }

    fn bound_peer(relay: &TestRelay, peer: &str) -> Option<u16> {
        relay
            .0
            .with(|peers| peers.get(&addr(peer)).map(|t| t.channel))
    }

    #[test]
    fn a_bound_channel_is_found_both_ways_until_unbound() {
        let table = ChannelTable::new();
        let relay = Arc::new(TestRelay::default());
        let mut core = core();
        let a = binding(0x4000, "198.18.2.2:4000");
        let b = binding(0x4001, "198.18.2.3:4000");
        table.bound(&a, Arc::clone(&relay));
        table.bound(&b, Arc::clone(&relay));
        let to = table
            .to_peer(ListenerId(0), a.client, 0x4000)
            .expect("client → peer");
        assert_eq!(to.peer, a.peer);
        assert!(Arc::ptr_eq(&to.relay, &relay));
        assert_eq!(bound_peer(&relay, "198.18.2.2:4000"), Some(0x4000));
        assert_eq!(bound_peer(&relay, "198.18.2.3:4000"), Some(0x4001));
        // Another listener, client or channel number is not it.
        assert!(table.to_peer(ListenerId(1), a.client, 0x4000).is_none());
        assert!(table.to_peer(ListenerId(0), a.server, 0x4000).is_none());
        assert!(table.to_peer(ListenerId(0), a.client, 0x4002).is_none());

        table.unbound(&a, &mut core);
        assert!(table.to_peer(ListenerId(0), a.client, 0x4000).is_none());
        assert_eq!(bound_peer(&relay, "198.18.2.2:4000"), None);
        assert_eq!(bound_peer(&relay, "198.18.2.3:4000"), Some(0x4001));
        assert_eq!(table.len(), 1);
        // Unbinding again, or a binding never bound, changes nothing.
        table.unbound(&a, &mut core);
        table.unbound(&binding(0x4005, "198.18.2.9:1"), &mut core);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn what_the_table_relayed_reaches_the_core_once() {
        let table = ChannelTable::new();
        let relay = Arc::new(TestRelay::default());
        let mut core = core();
        let a = binding(0x4000, "198.18.2.2:4000");
        table.bound(&a, Arc::clone(&relay));
        let to = table
            .to_peer(ListenerId(0), a.client, 0x4000)
            .expect("bound");
        to.counters.to_peer(1, 100, 104);
        to.counters.to_peer(1, 50, 56);
        let back = relay.0.with(|p| p.get(&a.peer).cloned()).expect("bound");
        back.counters.to_client(3, 300, 312);
        table.fold_into(&mut core);
        let stats = core.stats();
        assert_eq!(
            (
                stats.relayed_to_peer_packets,
                stats.relayed_to_peer_bytes,
                stats.relayed_from_client_wire_bytes
            ),
            (2, 150, 160)
        );
        assert_eq!(
            (
                stats.relayed_to_client_packets,
                stats.relayed_to_client_bytes,
                stats.relayed_to_client_wire_bytes
            ),
            (3, 300, 312)
        );
        // Folding again adds nothing; traffic after the fold is counted when the binding goes.
        table.fold_into(&mut core);
        assert_eq!(core.stats().relayed_to_peer_packets, 2);
        to.counters.to_peer(1, 10, 14);
        // Bound again (a new permission for its peer): the counters go on.
        table.bound(&a, Arc::clone(&relay));
        table.unbound(&a, &mut core);
        assert_eq!(core.stats().relayed_to_peer_packets, 3);
        assert_eq!(core.stats().relayed_to_peer_bytes, 160);
    }
}
