//! Prometheus metrics, collected when scraped.
//!
//! Nothing here runs per packet. The TURN core counts in plain integers ([`turn::Stats`]), the
//! event loop in relaxed atomics ([`crate::server::IoCounters`]), the XDP program in its maps;
//! a scrape takes a [`Snapshot`] of all of them ([`MetricsSource::gather`]) and renders it in
//! the OpenMetrics text format with `prometheus-client` ([`render`]). docs/metrics.md lists
//! every metric and says exactly what it counts.
//!
//! What the kernel relayed is owned by the data plane ([`ChannelOffload`], in
//! [`crate::offload`]); a scrape reads its [`KernelSnapshot`].
use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use relay_common::Counter;

use crate::{
    offload::{ChannelOffload, KernelSnapshot},
    server::{ConnectionSnapshot, IoSnapshot, ServerHandle},
};
use turn_proto::server as turn;

/// The HTTP `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bytes of the ChannelData header (channel number and length) in front of relayed data.
const CHANNEL_DATA_HEADER: u64 = 4;

/// The name of a kernel path metric: `xturn_xdp_*` for XDP, `xturn_tc_*` for TC.
fn kernel_metric(hook: &str, suffix: &str) -> &'static str {
    let tc = hook == "tc";
    match suffix {
        "packets" if tc => "xturn_tc_packets",
        "packets" => "xturn_xdp_packets",
        "bytes" if tc => "xturn_tc_bytes",
        "bytes" => "xturn_xdp_bytes",
        "bindings_installed" if tc => "xturn_tc_bindings_installed",
        "bindings_installed" => "xturn_xdp_bindings_installed",
        "bindings_capacity" if tc => "xturn_tc_bindings_capacity",
        "bindings_capacity" => "xturn_xdp_bindings_capacity",
        "binding_installs" if tc => "xturn_tc_binding_installs",
        "binding_installs" => "xturn_xdp_binding_installs",
        _ if tc => "xturn_tc_binding_install_failures",
        _ => "xturn_xdp_binding_install_failures",
    }
}

/// Everything the metrics show, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `xdp`, `tc` or `userspace`.
    pub dataplane: &'static str,
    /// What the agent chose for each interface, and why.
    pub interfaces: Vec<crate::dataplane::InterfaceChoice>,
    /// The kernel path's hook (`xdp` or `tc`), if one was attached (even if withdrawn since).
    pub kernel_hook: Option<&'static str>,
    /// The kernel path did not deliver and was withdrawn: userspace relays everything.
    pub withdrawn: bool,
    /// Userspace sends runs of equal-sized datagrams as UDP GSO (the kernel has not refused it).
    pub gso: bool,
    pub draining: bool,
    pub allocations: u64,
    /// TCP allocations' connections with peers (RFC 6062), waiting or spliced.
    pub tcp_connections: u64,
    pub permissions: u64,
    pub channels: u64,
    pub stats: turn::Stats,
    /// Name and traffic of each listener.
    pub listeners: Vec<(String, IoSnapshot)>,
    /// Traffic of the relayed sockets.
    pub relay_io: IoSnapshot,
    pub xdp: Option<KernelSnapshot>,
    /// Name and connections of each TCP, TLS and DTLS listener.
    pub connections: Vec<(String, ConnectionSnapshot)>,
    /// The sockets of each UDP listener (`None` for the others), in the order of `listeners`.
    pub udp_sockets: Vec<Option<u64>>,
    /// STRICT_DNS lookups that failed since the start.
    pub dns_failures: u64,
    /// Per-user usage by slot (slot 0: the users past `--max-tracked-users`, together), what
    /// the kernel relayed for each added.
    pub usage: Vec<turn::UserUsage>,
    /// Users counted each on their own, and how many may be.
    pub users_tracked: u64,
    pub max_tracked_users: u64,
    /// Allocations made by users past the cap.
    pub untracked_allocations: u64,
}

impl Snapshot {
    /// `GET /usage`: every tracked user's usage, and the users past the cap together, as
    /// JSON (see docs/metrics.md).
    pub fn usage_json(&self) -> serde_json::Value {
        let entry = |u: &turn::UserUsage| {
            serde_json::json!({
                "allocations": u.allocations,
                "allocations_total": u.allocations_total,
                "to_peer": {"packets": u.to_peer_packets, "bytes": u.to_peer_bytes},
                "to_client": {"packets": u.to_client_packets, "bytes": u.to_client_bytes},
            })
        };
        let users: serde_json::Map<String, serde_json::Value> = self
            .usage
            .iter()
            .skip(1)
            .map(|u| (u.user.clone(), entry(u)))
            .collect();
        let untracked = self.usage.first().cloned().unwrap_or_default();
        serde_json::json!({
            "users": users,
            "untracked": entry(&untracked),
            "untracked_allocations": self.untracked_allocations,
            "users_tracked": self.users_tracked,
            "max_tracked_users": self.max_tracked_users,
        })
    }
}

impl Snapshot {
    /// `stunner_bytes_received_total`: UDP payload bytes received from clients and peers and
    /// relayed. A client's datagram counts whole (ChannelData header and data, or the whole
    /// Send indication); a peer's datagram is all data. In the kernel, ChannelData padding (0–3
    /// bytes, which clients rarely send over UDP) is not seen.
    pub fn bytes_received(&self) -> u64 {
        let userspace =
            self.stats.relayed_from_client_wire_bytes + self.stats.relayed_to_client_bytes;
        let kernel = self.xdp.as_ref().map_or(0, |x| {
            x.relayed.to_peer.bytes
                + CHANNEL_DATA_HEADER * x.relayed.to_peer.packets
                + x.relayed.to_client.bytes
        });
        userspace + kernel
    }

    /// `stunner_bytes_sent_total`: UDP payload bytes sent to peers and clients while relaying:
    /// the data to peers, the ChannelData messages or Data indications to clients.
    pub fn bytes_sent(&self) -> u64 {
        let userspace = self.stats.relayed_to_peer_bytes + self.stats.relayed_to_client_wire_bytes;
        let kernel = self.xdp.as_ref().map_or(0, |x| {
            x.relayed.to_peer.bytes
                + x.relayed.to_client.bytes
                + CHANNEL_DATA_HEADER * x.relayed.to_client.packets
        });
        userspace + kernel
    }
}

impl Snapshot {
    /// Each cluster's relayed traffic, userspace and kernel together: (slot, name,
    /// [to-peer, to-client] as (packets, bytes)). Slot 0 is "peers of no cluster".
    fn cluster_traffic(&self) -> impl Iterator<Item = (usize, &str, [(u64, u64); 2])> {
        self.stats
            .clusters
            .iter()
            .enumerate()
            .map(|(slot, cluster)| {
                let kernel = self
                    .xdp
                    .as_ref()
                    .and_then(|x| x.relayed_by_cluster.get(slot).copied())
                    .unwrap_or_default();
                let to_peer = (
                    cluster.to_peer_packets + kernel.to_peer.packets,
                    cluster.to_peer_bytes + kernel.to_peer.bytes,
                );
                let to_client = (
                    cluster.to_client_packets + kernel.to_client.packets,
                    cluster.to_client_bytes + kernel.to_client.bytes,
                );
                (slot, cluster.name.as_str(), [to_peer, to_client])
            })
    }
}

/// Where a scrape reads from. It holds no strong reference to the relay or the data plane:
/// they go (and XDP is detached) when the agent drops them, whatever the admin server does.
pub struct MetricsSource {
    server: ServerHandle,
    listener_names: Vec<String>,
    xdp: Option<Weak<ChannelOffload>>,
    interfaces: Vec<crate::dataplane::InterfaceChoice>,
    udp_sockets: Vec<Option<u64>>,
    dns_failures: Option<Arc<AtomicU64>>,
}

impl MetricsSource {
    /// `listener_names` in [`turn::ListenerId`] order; `xdp` when the XDP data plane runs.
    pub fn new(
        server: ServerHandle,
        listener_names: Vec<String>,
        xdp: Option<&Arc<ChannelOffload>>,
    ) -> MetricsSource {
        MetricsSource {
            server,
            listener_names,
            xdp: xdp.map(Arc::downgrade),
            interfaces: Vec::new(),
            udp_sockets: Vec::new(),
            dns_failures: None,
        }
    }

    /// Adds the number of sockets of each UDP listener (`None` for the others), in
    /// [`turn::ListenerId`] order: stunnerd counts them as the listener's connections.
    #[must_use]
    pub fn with_udp_sockets(mut self, sockets: Vec<Option<u64>>) -> Self {
        self.udp_sockets = sockets;
        self
    }

    /// Adds the STRICT_DNS resolver's failure counter.
    #[must_use]
    pub fn with_dns_failures(mut self, failures: Arc<AtomicU64>) -> Self {
        self.dns_failures = Some(failures);
        self
    }

    /// Adds what the agent chose for each interface (`xturn_dataplane_interface_info`).
    #[must_use]
    pub fn with_interfaces(mut self, interfaces: Vec<crate::dataplane::InterfaceChoice>) -> Self {
        self.interfaces = interfaces;
        self
    }

    /// Reads every counter; `None` once the server is gone. It holds the TURN core's lock for
    /// one pass over the allocations (to count permissions and channels) and makes a few BPF
    /// syscalls per installed binding: run it off the async workers (`spawn_blocking`).
    pub fn gather(&self) -> Option<Snapshot> {
        let (allocations, tcp_connections, permissions, channels, stats, draining, usage) =
            self.server.with_core(|core| {
                let (permissions, channels) = core.allocations().fold((0u64, 0u64), |(p, c), a| {
                    (
                        p + a.permissions().count() as u64,
                        c + a.channel_bindings().count() as u64,
                    )
                });
                (
                    core.allocation_count() as u64,
                    core.tcp_connection_count() as u64,
                    permissions,
                    channels,
                    core.stats().clone(),
                    core.is_draining(),
                    // The users' counters only (the core's slot index is not needed here).
                    {
                        let usage = core.usage();
                        (
                            usage.users().to_vec(),
                            usage.tracked() as u64,
                            usage.max_users() as u64,
                            usage.untracked_allocations(),
                        )
                    },
                )
            })?;
        let (listener_io, relay_io) = self.server.io()?;
        let connections = self
            .listener_names
            .iter()
            .cloned()
            .zip(self.server.connections()?)
            .filter_map(|(name, c)| Some((name, c?)))
            .collect();
        let listeners = self
            .listener_names
            .iter()
            .cloned()
            .zip(listener_io)
            .collect();
        let meter = match &self.xdp {
            Some(weak) => Some(weak.upgrade()?),
            None => None,
        };
        let withdrawn = meter.as_ref().and_then(|m| m.hook().withdrawn());
        let dataplane = match &meter {
            Some(m) if withdrawn.is_none() => m.hook().hook().name(),
            _ => "userspace",
        };
        let kernel_hook = meter.as_ref().map(|m| m.hook().hook().name());
        let xdp = meter.map(|offload| offload.snapshot());
        let (mut users, users_tracked, max_tracked_users, untracked_allocations) = usage;
        if let Some(kernel) = &xdp {
            add_kernel_usage(&mut users, &kernel.relayed_by_user);
        }
        Some(Snapshot {
            dataplane,
            kernel_hook,
            withdrawn: withdrawn.is_some(),
            gso: crate::relayed::GSO.in_use(),
            interfaces: self.interfaces.clone(),
            draining,
            allocations,
            tcp_connections,
            permissions,
            channels,
            stats,
            listeners,
            relay_io,
            xdp,
            connections,
            udp_sockets: self.udp_sockets.clone(),
            dns_failures: self
                .dns_failures
                .as_ref()
                .map_or(0, |f| f.load(Ordering::Relaxed)),
            usage: users,
            users_tracked,
            max_tracked_users,
            untracked_allocations,
        })
    }
}

/// Adds what the kernel relayed for each user slot (`by_user`) to `users`.
pub fn add_kernel_usage(users: &mut [turn::UserUsage], by_user: &[crate::ebpf::ChannelCounters]) {
    for (user, kernel) in users.iter_mut().zip(by_user) {
        user.to_peer_packets += kernel.to_peer.packets;
        user.to_peer_bytes += kernel.to_peer.bytes;
        user.to_client_packets += kernel.to_client.packets;
        user.to_client_bytes += kernel.to_client.bytes;
    }
}

/// Renders `snapshot` in the OpenMetrics text format.
pub fn render(snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Labels as `prometheus-client` encodes them.
type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Writes metric families (`name` without the `_total` the encoder appends to counters).
/// One (packets, bytes) row per direction of `owner`'s traffic.
fn push_traffic(
    owner: (&'static str, &str),
    directions: [(&'static str, (u64, u64)); 2],
    packets: &mut Vec<(Labels, u64)>,
    bytes: &mut Vec<(Labels, u64)>,
) {
    for (direction, (p, b)) in directions {
        let row = labels([owner, ("direction", direction)]);
        packets.push((row.clone(), p));
        bytes.push((row, b));
    }
}

struct Out<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    fn counter(&mut self, name: &'static str, help: &str, value: u64) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    fn gauge(&mut self, name: &'static str, help: &str, value: u64) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&value)
    }

    fn gauges(&mut self, name: &'static str, help: &str, rows: &[(Labels, u64)]) -> fmt::Result {
        let mut metric = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in rows {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    /// Untyped samples named exactly `name` (for a counter whose OpenMetrics family name
    /// would clash with another family).
    fn unknowns(&mut self, name: &'static str, help: &str, rows: &[(Labels, u64)]) -> fmt::Result {
        let mut metric = self
            .0
            .encode_descriptor(name, help, None, MetricType::Unknown)?;
        for (labels, value) in rows {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn counters(&mut self, name: &'static str, help: &str, rows: &[(Labels, u64)]) -> fmt::Result {
        let mut metric = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }

    fn info(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &impl EncodeLabelSet,
    ) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Info)?
            .encode_info(labels)
    }
}

/// STUNner's per-listener and per-cluster metrics, with its names and labels (`name` is the
/// listener's or cluster's name as configured, `direction` is `rx` or `tx` as seen from the
/// relay), counting what the kernel relayed as well as userspace.
fn stunner_listener_and_cluster_metrics(out: &mut Out<'_, '_>, s: &Snapshot) -> fmt::Result {
    let kernel_listener = |index: usize| {
        s.xdp
            .as_ref()
            .and_then(|x| x.relayed_by_listener.get(index).copied())
            .unwrap_or_default()
    };
    let mut packets = Vec::with_capacity(2 * s.listeners.len());
    let mut bytes = Vec::with_capacity(2 * s.listeners.len());
    for (index, (name, io)) in s.listeners.iter().enumerate() {
        let kernel = kernel_listener(index);
        // The kernel's clients send and receive ChannelData: data plus its 4-byte header.
        let rx_packets = io.rx_packets + kernel.to_peer.packets;
        let rx_bytes =
            io.rx_bytes + kernel.to_peer.bytes + CHANNEL_DATA_HEADER * kernel.to_peer.packets;
        let tx_packets = io.tx_packets + kernel.to_client.packets;
        let tx_bytes =
            io.tx_bytes + kernel.to_client.bytes + CHANNEL_DATA_HEADER * kernel.to_client.packets;
        for (direction, p, b) in [("rx", rx_packets, rx_bytes), ("tx", tx_packets, tx_bytes)] {
            let row = labels([("name", name), ("direction", direction)]);
            packets.push((row.clone(), p));
            bytes.push((row, b));
        }
    }
    out.counters(
        "stunner_listener_packets",
        "Number of datagrams sent or received at a listener (userspace and kernel).",
        &packets,
    )?;
    out.counters(
        "stunner_listener_bytes",
        "Number of bytes sent or received at a listener (userspace and kernel).",
        &bytes,
    )?;
    // Connections: TCP/TLS connections and DTLS sessions; a UDP listener's sockets.
    let mut open = Vec::with_capacity(s.listeners.len());
    let mut total = Vec::with_capacity(s.listeners.len());
    for (index, (name, _)) in s.listeners.iter().enumerate() {
        let row = labels([("name", name)]);
        if let Some(sockets) = s.udp_sockets.get(index).copied().flatten() {
            open.push((row.clone(), sockets));
            total.push((row, sockets));
        } else if let Some((_, c)) = s.connections.iter().find(|(n, _)| n == name) {
            open.push((row.clone(), c.open));
            total.push((row, c.accepted));
        }
    }
    out.gauges(
        "stunner_listener_connections",
        "Number of active downstream connections at a listener (a UDP listener's sockets count as connections).",
        &open,
    )?;
    // A counter, but OpenMetrics would name its family `stunner_listener_connections`, which
    // is the gauge's: it goes out as an untyped family under its full sample name.
    out.unknowns(
        "stunner_listener_connections_total",
        "Number of all downstream connections observed at a listener (a counter).",
        &total,
    )?;
    // Clusters: traffic with the peers each cluster admitted (tx: to peers, rx: from peers).
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for (slot, name, [to_peer, to_client]) in s.cluster_traffic() {
        if slot == 0 || name.is_empty() {
            // Peers of no cluster: STUNner has no such series.
            continue;
        }
        push_traffic(
            ("name", name),
            [("tx", to_peer), ("rx", to_client)],
            &mut packets,
            &mut bytes,
        );
    }
    out.counters(
        "stunner_cluster_packets",
        "Number of datagrams sent to or received from backends (userspace and kernel).",
        &packets,
    )?;
    out.counters(
        "stunner_cluster_bytes",
        "Number of bytes sent to or received from backends (userspace and kernel).",
        &bytes,
    )
}

/// Per-user usage (`xturn_user_*{user}`): each tracked user's allocations and what was
/// relayed for it, userspace and kernel.
fn user_metrics(out: &mut Out<'_, '_>, s: &Snapshot) -> fmt::Result {
    let users = s.usage.iter().skip(1);
    let mut allocations = Vec::new();
    let mut created = Vec::new();
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for u in users {
        let user = ("user", u.user.as_str());
        allocations.push((labels([user]), u.allocations));
        created.push((labels([user]), u.allocations_total));
        push_traffic(
            user,
            [
                ("to_peer", (u.to_peer_packets, u.to_peer_bytes)),
                ("to_client", (u.to_client_packets, u.to_client_bytes)),
            ],
            &mut packets,
            &mut bytes,
        );
    }
    out.gauges(
        "xturn_user_allocations",
        "Allocations of each user now (a TURN REST username counts as its id part).",
        &allocations,
    )?;
    out.counters(
        "xturn_user_allocations_created",
        "Allocations each user made (adoptions after a hitless restart are not new).",
        &created,
    )?;
    out.counters(
        "xturn_user_packets",
        "Datagrams relayed for each user, to its peers and to its clients (userspace and kernel).",
        &packets,
    )?;
    out.counters(
        "xturn_user_bytes",
        "Data bytes relayed for each user, to its peers and to its clients (userspace and kernel).",
        &bytes,
    )?;
    out.gauge(
        "xturn_users_tracked",
        "Users whose usage is counted each on its own (at most --max-tracked-users).",
        s.users_tracked,
    )?;
    out.counter(
        "xturn_users_untracked_allocations",
        "Allocations of users past --max-tracked-users (their usage counts together, in GET /usage's `untracked`).",
        s.untracked_allocations,
    )
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let st = &s.stats;
        let mut out = Out(&mut encoder);

        // STUNner's names: dashboards and autoscalers (KEDA) use them.
        out.gauge(
            "stunner_allocations_active",
            "TURN allocations that exist now.",
            s.allocations,
        )?;
        out.counter(
            "stunner_connections",
            "TURN allocations created since the start.",
            st.allocations_created,
        )?;
        out.counter(
            "stunner_bytes_received",
            "UDP payload bytes received from clients and peers and relayed (userspace and XDP).",
            s.bytes_received(),
        )?;
        out.counter(
            "stunner_bytes_sent",
            "UDP payload bytes sent to peers and clients while relaying (userspace and XDP).",
            s.bytes_sent(),
        )?;

        stunner_listener_and_cluster_metrics(&mut out, s)?;

        out.info(
            "xturn_dataplane",
            "The data plane in use: xdp, tc or userspace.",
            &labels([("mode", s.dataplane)]),
        )?;
        out.gauge(
            "xturn_userspace_gso",
            "1 while the userspace relay sends runs of equal-sized datagrams to one destination as one UDP GSO send; 0 once the kernel refused GSO (then datagram by datagram).",
            u64::from(s.gso),
        )?;
        if let Some(hook) = s.kernel_hook {
            out.gauges(
                "xturn_dataplane_withdrawn",
                "1 once the kernel path was withdrawn because it did not deliver (its egress dropped what it relayed); userspace relays everything then.",
                &[(labels([("hook", hook)]), u64::from(s.withdrawn))],
            )?;
        }
        for choice in &s.interfaces {
            out.info(
                "xturn_dataplane_interface",
                "What the agent chose for each interface it relays on, and why.",
                &vec![
                    ("interface", choice.interface.clone()),
                    ("mode", choice.mode.to_owned()),
                    ("why", choice.why.clone()),
                ],
            )?;
        }
        out.info(
            "xturn_build",
            "The xturnd version.",
            &labels([("version", env!("CARGO_PKG_VERSION"))]),
        )?;
        out.gauge(
            "xturn_draining",
            "1 while shutting down: new allocations are refused, live ones still relay.",
            u64::from(s.draining),
        )?;
        out.gauge(
            "xturn_permissions_active",
            "Permissions that exist now.",
            s.permissions,
        )?;
        out.gauge(
            "xturn_channels_active",
            "Channel bindings that exist now (not those cooling down after expiry).",
            s.channels,
        )?;
        out.counters(
            "xturn_allocations_ended",
            "Allocations that ended, by how.",
            &[
                (labels([("reason", "expired")]), st.allocations_expired),
                (labels([("reason", "deleted")]), st.allocations_deleted),
            ],
        )?;
        out.counter(
            "xturn_permissions_created",
            "Permissions created (refreshes not counted).",
            st.permissions_created,
        )?;
        out.counter(
            "xturn_channels_bound",
            "Channel bindings created (refreshes not counted).",
            st.channels_bound,
        )?;
        out.counter(
            "xturn_channels_expired",
            "Channel bindings whose lifetime ran out.",
            st.channels_expired,
        )?;
        out.counters(
            "xturn_requests",
            "STUN/TURN requests received, by method.",
            &[
                (labels([("method", "binding")]), st.binding_requests),
                (labels([("method", "allocate")]), st.allocate_requests),
                (labels([("method", "refresh")]), st.refresh_requests),
                (
                    labels([("method", "create_permission")]),
                    st.create_permission_requests,
                ),
                (
                    labels([("method", "channel_bind")]),
                    st.channel_bind_requests,
                ),
                (labels([("method", "other")]), st.other_requests),
            ],
        )?;
        out.counter(
            "xturn_send_indications",
            "Send indications received.",
            st.send_indications,
        )?;
        out.counter(
            "xturn_stun_only_refused",
            "TURN requests refused with 403 because the agent is a STUN server only (auth.type none).",
            st.stun_only_refused,
        )?;
        out.counters(
            "xturn_revoked",
            "Permissions and channels ended because a new peer policy (a reload, a route, endpoint or STRICT_DNS change) refuses their peer.",
            &[
                (labels([("kind", "permission")]), st.permissions_revoked),
                (labels([("kind", "channel")]), st.channels_revoked),
                (labels([("kind", "connection")]), st.connections_revoked),
            ],
        )?;
        out.counters(
            "xturn_unauthenticated_answers",
            "Answers to UDP sources that did not authenticate (error responses without MESSAGE-INTEGRITY, Binding responses): sent, or dropped because the source or its prefix got as many bytes as it sent, beyond a burst.",
            &[
                (labels([("outcome", "sent")]), st.unauthenticated_answers),
                (
                    labels([("outcome", "limited")]),
                    st.unauthenticated_answers_limited,
                ),
            ],
        )?;
        out.counters(
            "xturn_unauthenticated_answer_bytes",
            "Bytes of the answers of xturn_unauthenticated_answers_total, by outcome.",
            &[
                (
                    labels([("outcome", "sent")]),
                    st.unauthenticated_answer_bytes,
                ),
                (
                    labels([("outcome", "limited")]),
                    st.unauthenticated_answer_bytes_limited,
                ),
            ],
        )?;
        out.counter(
            "xturn_dns_resolution_failures",
            "Lookups of STRICT_DNS cluster host names that failed or answered no address (the previous addresses stay).",
            s.dns_failures,
        )?;
        user_metrics(&mut out, s)?;
        out.gauge(
            "xturn_tcp_connections_active",
            "TCP allocations' connections with peers now (RFC 6062): waiting for their ConnectionBind or spliced with a data connection.",
            s.tcp_connections,
        )?;
        out.counters(
            "xturn_tcp_connection_events",
            "TCP allocations' connections with peers (RFC 6062), by what happened: connect (a Connect), connect_failed (447), attempt (a peer connected, ConnectionAttempt sent), refused (a second connection from one peer address, or the allocation's limit of 64), bound (ConnectionBind), timed_out (no ConnectionBind in 30 s).",
            &[
                (labels([("event", "connect")]), st.tcp_connects),
                (labels([("event", "connect_failed")]), st.tcp_connect_failures),
                (labels([("event", "attempt")]), st.tcp_connection_attempts),
                (labels([("event", "refused")]), st.tcp_connections_refused),
                (labels([("event", "bound")]), st.tcp_connections_bound),
                (labels([("event", "timed_out")]), st.tcp_connections_timed_out),
            ],
        )?;
        let errors: Vec<(Labels, u64)> = st
            .error_responses()
            .iter()
            .map(|(code, n)| {
                let code = if *code == 0 {
                    "other".to_owned()
                } else {
                    code.to_string()
                };
                (vec![("code", code)], *n)
            })
            .collect();
        out.counters(
            "xturn_error_responses",
            "Error responses sent, by code.",
            &errors,
        )?;
        let auth_failures: Vec<_> = st
            .auth_failures_by_reason
            .by_reason()
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect();
        out.counters(
            "xturn_auth_failures",
            "Requests with wrong, unknown or expired credentials, by reason.",
            &auth_failures,
        )?;
        let adoption: Vec<_> = st
            .adoption_refusals()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect();
        out.counters(
            "xturn_adoption_refused",
            "Saved allocations not adopted on a restart (--state-dir), by the rule that refused them.",
            &adoption,
        )?;
        out.counter(
            "xturn_stale_nonces",
            "Requests with an expired or foreign NONCE (438).",
            st.stale_nonces,
        )?;
        out.counter(
            "xturn_peer_denied",
            "Peers refused by the peer policy (403s and dropped Send indications).",
            st.peer_denied,
        )?;
        out.counters(
            "xturn_allocations_refused",
            "Allocates refused for capacity, by why.",
            &[
                (labels([("reason", "quota")]), st.quota_rejections),
                (labels([("reason", "per_ip")]), st.per_ip_rejections),
                (labels([("reason", "draining")]), st.drain_rejections),
                (labels([("reason", "bind_failure")]), st.relay_bind_failures),
            ],
        )?;
        out.counter(
            "xturn_retransmissions_answered",
            "Retransmitted requests answered from the transaction cache.",
            st.retransmissions_answered,
        )?;
        out.counters(
            "xturn_dropped",
            "Datagrams the userspace relay dropped, by why.",
            &[
                (labels([("reason", "malformed")]), st.malformed_dropped),
                (
                    labels([("reason", "unknown_client")]),
                    st.unknown_client_dropped,
                ),
                (
                    labels([("reason", "unbound_channel")]),
                    st.unbound_channel_dropped,
                ),
                (
                    labels([("reason", "client_no_permission")]),
                    st.client_dropped_no_permission,
                ),
                (
                    labels([("reason", "peer_no_allocation")]),
                    st.peer_dropped_no_allocation,
                ),
                (
                    labels([("reason", "peer_no_permission")]),
                    st.peer_dropped_no_permission,
                ),
                (
                    labels([("reason", "peer_oversized")]),
                    st.peer_dropped_oversized,
                ),
            ],
        )?;

        // Relayed data by direction and data plane.
        let kernel = s.xdp.as_ref().map(|x| x.relayed).unwrap_or_default();
        let mut packets = vec![
            (
                labels([("direction", "to_peer"), ("dataplane", "userspace")]),
                st.relayed_to_peer_packets,
            ),
            (
                labels([("direction", "to_client"), ("dataplane", "userspace")]),
                st.relayed_to_client_packets,
            ),
        ];
        let mut bytes = vec![
            (
                labels([("direction", "to_peer"), ("dataplane", "userspace")]),
                st.relayed_to_peer_bytes,
            ),
            (
                labels([("direction", "to_client"), ("dataplane", "userspace")]),
                st.relayed_to_client_bytes,
            ),
        ];
        if s.xdp.is_some() {
            packets.push((
                labels([
                    ("direction", "to_peer"),
                    ("dataplane", s.kernel_hook.unwrap_or("xdp")),
                ]),
                kernel.to_peer.packets,
            ));
            packets.push((
                labels([
                    ("direction", "to_client"),
                    ("dataplane", s.kernel_hook.unwrap_or("xdp")),
                ]),
                kernel.to_client.packets,
            ));
            bytes.push((
                labels([
                    ("direction", "to_peer"),
                    ("dataplane", s.kernel_hook.unwrap_or("xdp")),
                ]),
                kernel.to_peer.bytes,
            ));
            bytes.push((
                labels([
                    ("direction", "to_client"),
                    ("dataplane", s.kernel_hook.unwrap_or("xdp")),
                ]),
                kernel.to_client.bytes,
            ));
        }
        out.counters(
            "xturn_relayed_packets",
            "Datagrams relayed, by direction and data plane.",
            &packets,
        )?;
        out.counters(
            "xturn_relayed_data_bytes",
            "Application data bytes relayed (no TURN framing), by direction and data plane.",
            &bytes,
        )?;

        // Relayed data by cluster, both data planes together.
        let mut cluster_packets = Vec::with_capacity(2 * st.clusters.len());
        let mut cluster_bytes = Vec::with_capacity(2 * st.clusters.len());
        for (_, name, [to_peer, to_client]) in s.cluster_traffic() {
            push_traffic(
                ("cluster", name),
                [("to_peer", to_peer), ("to_client", to_client)],
                &mut cluster_packets,
                &mut cluster_bytes,
            );
        }
        out.counters(
            "xturn_cluster_packets",
            "Datagrams relayed, by cluster of the peer (\"\": none) and direction (userspace and XDP).",
            &cluster_packets,
        )?;
        out.counters(
            "xturn_cluster_bytes",
            "Application data bytes relayed, by cluster of the peer (\"\": none) and direction (userspace and XDP).",
            &cluster_bytes,
        )?;

        // The agent's sockets.
        let mut io_packets = Vec::new();
        let mut io_bytes = Vec::new();
        let mut io_errors = Vec::new();
        for (name, io) in &s.listeners {
            for (direction, p, b) in [
                ("rx", io.rx_packets, io.rx_bytes),
                ("tx", io.tx_packets, io.tx_bytes),
            ] {
                io_packets.push((labels([("listener", name), ("direction", direction)]), p));
                io_bytes.push((labels([("listener", name), ("direction", direction)]), b));
            }
            io_errors.push((labels([("listener", name)]), io.tx_errors));
        }
        out.counters(
            "xturn_listener_packets",
            "Datagrams through each listener's sockets in userspace (STUN and relayed data).",
            &io_packets,
        )?;
        out.counters(
            "xturn_listener_bytes",
            "UDP payload bytes through each listener's sockets in userspace.",
            &io_bytes,
        )?;
        out.counters(
            "xturn_listener_send_errors",
            "Datagrams to clients the kernel refused to send (full socket buffer, ...).",
            &io_errors,
        )?;
        // TCP, TLS and DTLS clients' connections.
        let mut open = Vec::new();
        let mut events = Vec::new();
        let mut dropped = Vec::new();
        for (name, c) in &s.connections {
            open.push((labels([("listener", name)]), c.open));
            for (event, value) in [
                ("accepted", c.accepted),
                ("refused", c.refused),
                ("refused_per_ip", c.refused_per_ip),
                ("handshake_failed", c.handshake_failures),
                ("timed_out", c.timed_out),
                ("protocol_error", c.protocol_errors),
            ] {
                events.push((labels([("listener", name), ("event", event)]), value));
            }
            dropped.push((labels([("listener", name)]), c.dropped));
        }
        out.gauges(
            "xturn_connections_open",
            "TCP/TLS connections or DTLS sessions open now, per listener.",
            &open,
        )?;
        out.counters(
            "xturn_connection_events",
            "Connections (DTLS: sessions) accepted, refused at the limit, failed in the handshake, closed for no complete message in time, closed for not speaking TURN.",
            &events,
        )?;
        out.counters(
            "xturn_connection_dropped_messages",
            "Messages to stream/DTLS clients dropped: the client's send queue was full (it does not read) or its session was not established.",
            &dropped,
        )?;
        let r = &s.relay_io;
        out.counters(
            "xturn_relay_socket_packets",
            "Datagrams through the relayed sockets in userspace.",
            &[
                (labels([("direction", "rx")]), r.rx_packets),
                (labels([("direction", "tx")]), r.tx_packets),
            ],
        )?;
        out.counters(
            "xturn_relay_socket_bytes",
            "UDP payload bytes through the relayed sockets in userspace.",
            &[
                (labels([("direction", "rx")]), r.rx_bytes),
                (labels([("direction", "tx")]), r.tx_bytes),
            ],
        )?;
        out.counter(
            "xturn_relay_socket_send_errors",
            "Datagrams to peers the kernel refused to send.",
            r.tx_errors,
        )?;

        let Some(x) = &s.xdp else {
            return Ok(());
        };
        // The kernel path's metrics: `xturn_xdp_*` for XDP, `xturn_tc_*` for TC.
        let hook = s.kernel_hook.unwrap_or("xdp");
        let name = |suffix: &str| kernel_metric(hook, suffix);
        let reason_rows = |f: fn(&Counter) -> u64| -> Vec<(Labels, u64)> {
            x.reasons
                .iter()
                .map(|(reason, counter)| (labels([("reason", reason.name())]), f(counter)))
                .collect()
        };
        out.counters(
            name("packets"),
            "Frames the kernel program handled, by where they went (see docs/architecture.md).",
            &reason_rows(|c| c.packets),
        )?;
        out.counters(
            name("bytes"),
            "Bytes of the frames the kernel program handled (Ethernet frames as received), by reason.",
            &reason_rows(|c| c.bytes),
        )?;
        out.gauge(
            name("bindings_installed"),
            "Channel bindings with entries in the kernel maps now.",
            x.bindings_installed,
        )?;
        out.gauge(
            name("bindings_capacity"),
            "Channel bindings the kernel maps hold at most (--xdp-max-channels).",
            x.capacity,
        )?;
        out.counter(
            name("binding_installs"),
            "Channel bindings installed in the kernel maps since the start.",
            x.installs,
        )?;
        out.counters(
            name("binding_install_failures"),
            "Channel bindings left to userspace relaying, by why.",
            &[
                (labels([("reason", "map_full")]), x.map_full),
                (labels([("reason", "error")]), x.install_errors),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ebpf::ChannelCounters;
    use relay_common::Reason;

    fn value(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn per_user_usage_adds_the_kernel_and_renders_as_series_and_json() {
        let user = |name: &str, allocations, to_peer_bytes| turn::UserUsage {
            user: name.to_owned(),
            allocations,
            allocations_total: allocations + 1,
            to_peer_packets: 1,
            to_peer_bytes,
            to_client_packets: 2,
            to_client_bytes: 20,
        };
        let mut users = vec![user("", 0, 5), user("alice", 2, 100), user("bob", 1, 7)];
        let kernel = |packets, bytes| Counter { packets, bytes };
        // The kernel relayed for alice (slot 1) only.
        add_kernel_usage(
            &mut users,
            &[
                ChannelCounters::default(),
                ChannelCounters {
                    to_peer: kernel(10, 1000),
                    to_client: kernel(4, 400),
                },
            ],
        );
        let snapshot = Snapshot {
            usage: users,
            users_tracked: 2,
            max_tracked_users: 10,
            untracked_allocations: 3,
            ..sample()
        };
        let json = snapshot.usage_json();
        assert_eq!(json["users"]["alice"]["to_peer"]["bytes"], 1100);
        assert_eq!(json["users"]["alice"]["to_client"]["packets"], 6);
        assert_eq!(json["users"]["bob"]["allocations"], 1);
        assert_eq!(json["untracked"]["to_peer"]["bytes"], 5);
        assert_eq!(json["untracked_allocations"], 3);
        let text = render(snapshot).unwrap();
        let series = |s: &str| value(&text, s);
        assert_eq!(series(r#"xturn_user_allocations{user="alice"}"#), 2);
        assert_eq!(
            series(r#"xturn_user_allocations_created_total{user="bob"}"#),
            2
        );
        assert_eq!(
            series(r#"xturn_user_bytes_total{user="alice",direction="to_peer"}"#),
            1100
        );
        assert_eq!(
            series(r#"xturn_user_packets_total{user="alice",direction="to_client"}"#),
            6
        );
        assert_eq!(series("xturn_users_tracked"), 2);
        assert_eq!(series("xturn_users_untracked_allocations_total"), 3);
        assert!(
            !text.contains(r#"user="""#),
            "the untracked users are not a series"
        );
    }

    fn sample() -> Snapshot {
        let mut stats = turn::Stats {
            allocations_created: 7,
            relayed_to_peer_packets: 2,
            relayed_to_peer_bytes: 100,
            relayed_from_client_wire_bytes: 108,
            relayed_to_client_packets: 3,
            relayed_to_client_bytes: 30,
            relayed_to_client_wire_bytes: 42,
            ..turn::Stats::default()
        };
        stats.count_error(401);
        stats.count_error(599);
        stats.clusters = vec![
            turn::ClusterTraffic {
                to_peer_packets: 2,
                to_peer_bytes: 100,
                ..turn::ClusterTraffic::new("")
            },
            turn::ClusterTraffic {
                to_client_packets: 3,
                to_client_bytes: 30,
                ..turn::ClusterTraffic::new("media")
            },
        ];
        Snapshot {
            dataplane: "userspace",
            allocations: 3,
            stats,
            listeners: vec![(
                "udp-0".to_owned(),
                IoSnapshot {
                    rx_packets: 5,
                    rx_bytes: 500,
                    ..IoSnapshot::default()
                },
            )],
            ..Snapshot::default()
        }
    }

    #[test]
    fn stunner_names_and_userspace_bytes() {
        let text = render(sample()).unwrap();
        assert_eq!(value(&text, "stunner_allocations_active"), 3);
        assert_eq!(value(&text, "stunner_connections_total"), 7);
        // Received: whole client datagrams (108) + peer data (30).
        assert_eq!(value(&text, "stunner_bytes_received_total"), 138);
        // Sent: data to peers (100) + messages to clients (42).
        assert_eq!(value(&text, "stunner_bytes_sent_total"), 142);
        assert_eq!(value(&text, "xturn_dataplane_info{mode=\"userspace\"}"), 1);
        assert_eq!(value(&text, "xturn_error_responses_total{code=\"401\"}"), 1);
        assert_eq!(
            value(&text, "xturn_error_responses_total{code=\"other\"}"),
            1
        );
        assert_eq!(
            value(
                &text,
                "xturn_listener_packets_total{listener=\"udp-0\",direction=\"rx\"}"
            ),
            5
        );
        assert_eq!(
            value(
                &text,
                "xturn_cluster_packets_total{cluster=\"\",direction=\"to_peer\"}"
            ),
            2
        );
        assert_eq!(
            value(
                &text,
                "xturn_cluster_bytes_total{cluster=\"media\",direction=\"to_client\"}"
            ),
            30
        );
        assert!(text.contains("# TYPE stunner_allocations_active gauge"));
        assert!(!text.contains("xturn_xdp_"), "no XDP metrics without XDP");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn stunners_listener_and_cluster_metrics_count_userspace_and_kernel() {
        let mut snapshot = sample();
        snapshot.listeners.push((
            "ns/gw/tls".to_owned(),
            IoSnapshot {
                rx_packets: 2,
                rx_bytes: 200,
                tx_packets: 1,
                tx_bytes: 80,
                ..IoSnapshot::default()
            },
        ));
        snapshot.udp_sockets = vec![Some(4), None];
        snapshot.connections = vec![(
            "ns/gw/tls".to_owned(),
            ConnectionSnapshot {
                open: 2,
                accepted: 9,
                ..ConnectionSnapshot::default()
            },
        )];
        snapshot.dns_failures = 3;
        snapshot.stats.stun_only_refused = 5;
        snapshot.stats.unauthenticated_answers_limited = 7;
        snapshot.stats.unauthenticated_answer_bytes = 900;
        let kernel = ChannelCounters {
            to_peer: Counter {
                packets: 10,
                bytes: 1000,
            },
            to_client: Counter {
                packets: 5,
                bytes: 400,
            },
        };
        snapshot.kernel_hook = Some("tc");
        snapshot.xdp = Some(KernelSnapshot {
            relayed: kernel,
            relayed_by_cluster: vec![ChannelCounters::default(), kernel],
            relayed_by_listener: vec![kernel],
            ..KernelSnapshot::default()
        });
        let text = render(snapshot).unwrap();
        let v = |series: &str| value(&text, series);
        // udp-0: 5 received in userspace + 10 ChannelData in the kernel.
        assert_eq!(
            v("stunner_listener_packets_total{name=\"udp-0\",direction=\"rx\"}"),
            15
        );
        assert_eq!(
            v("stunner_listener_bytes_total{name=\"udp-0\",direction=\"rx\"}"),
            500 + 1000 + 4 * 10
        );
        assert_eq!(
            v("stunner_listener_packets_total{name=\"udp-0\",direction=\"tx\"}"),
            5
        );
        assert_eq!(
            v("stunner_listener_bytes_total{name=\"udp-0\",direction=\"tx\"}"),
            400 + 4 * 5
        );
        // A listener the kernel does not serve: userspace only.
        assert_eq!(
            v("stunner_listener_bytes_total{name=\"ns/gw/tls\",direction=\"tx\"}"),
            80
        );
        // Connections: a UDP listener's sockets; a TLS listener's connections.
        assert_eq!(v("stunner_listener_connections{name=\"udp-0\"}"), 4);
        assert_eq!(v("stunner_listener_connections_total{name=\"udp-0\"}"), 4);
        assert_eq!(v("stunner_listener_connections{name=\"ns/gw/tls\"}"), 2);
        assert_eq!(
            v("stunner_listener_connections_total{name=\"ns/gw/tls\"}"),
            9
        );
        assert!(text.contains("# TYPE stunner_listener_connections gauge"));
        assert!(text.contains("# TYPE stunner_listener_connections_total unknown"));
        // Clusters: tx to peers, rx from peers; userspace plus kernel; no "" cluster.
        assert_eq!(
            v("stunner_cluster_packets_total{name=\"media\",direction=\"tx\"}"),
            10
        );
        assert_eq!(
            v("stunner_cluster_packets_total{name=\"media\",direction=\"rx\"}"),
            3 + 5
        );
        assert_eq!(
            v("stunner_cluster_bytes_total{name=\"media\",direction=\"rx\"}"),
            30 + 400
        );
        assert!(
            !text.contains("stunner_cluster_packets_total{name=\"\""),
            "{text}"
        );
        assert_eq!(v("stunner_allocations_active"), 3);
        assert_eq!(v("xturn_dns_resolution_failures_total"), 3);
        assert_eq!(v("xturn_stun_only_refused_total"), 5);
        assert_eq!(
            v("xturn_unauthenticated_answers_total{outcome=\"limited\"}"),
            7
        );
        assert_eq!(
            v("xturn_unauthenticated_answer_bytes_total{outcome=\"sent\"}"),
            900
        );
    }

    #[test]
    fn kernel_bytes_add_the_channel_data_header_on_the_client_side() {
        let mut snapshot = sample();
        snapshot.dataplane = "xdp";
        snapshot.kernel_hook = Some("xdp");
        snapshot.xdp = Some(KernelSnapshot {
            reasons: vec![(
                Reason::RelayedToPeer,
                Counter {
                    packets: 10,
                    bytes: 1460,
                },
            )],
            bindings_installed: 2,
            capacity: 1024,
            relayed: ChannelCounters {
                to_peer: Counter {
                    packets: 10,
                    bytes: 1000,
                },
                to_client: Counter {
                    packets: 5,
                    bytes: 400,
                },
            },
            relayed_by_cluster: vec![
                ChannelCounters::default(),
                ChannelCounters {
                    to_peer: Counter {
                        packets: 10,
                        bytes: 1000,
                    },
                    to_client: Counter {
                        packets: 5,
                        bytes: 400,
                    },
                },
            ],
            ..KernelSnapshot::default()
        });
        let text = render(snapshot).unwrap();
        // Userspace 138 + client ChannelData (1000 + 4·10) + peer data 400.
        assert_eq!(
            value(&text, "stunner_bytes_received_total"),
            138 + 1040 + 400
        );
        // Userspace 142 + data to peers 1000 + ChannelData to clients (400 + 4·5).
        assert_eq!(value(&text, "stunner_bytes_sent_total"), 142 + 1000 + 420);
        assert_eq!(value(&text, "xturn_dataplane_info{mode=\"xdp\"}"), 1);
        assert_eq!(
            value(&text, "xturn_xdp_packets_total{reason=\"relayed_to_peer\"}"),
            10
        );
        assert_eq!(
            value(
                &text,
                "xturn_relayed_packets_total{direction=\"to_client\",dataplane=\"xdp\"}"
            ),
            5
        );
        assert_eq!(value(&text, "xturn_xdp_bindings_installed"), 2);
        assert_eq!(value(&text, "xturn_xdp_bindings_capacity"), 1024);
        // Per cluster: userspace plus the kernel's slot 1 ("media").
        assert_eq!(
            value(
                &text,
                "xturn_cluster_packets_total{cluster=\"media\",direction=\"to_client\"}"
            ),
            3 + 5
        );
        assert_eq!(
            value(
                &text,
                "xturn_cluster_bytes_total{cluster=\"media\",direction=\"to_peer\"}"
            ),
            1000
        );
        assert_eq!(
            value(
                &text,
                "xturn_cluster_bytes_total{cluster=\"\",direction=\"to_peer\"}"
            ),
            100
        );
    }
}
