//! Counters of what the TURN server did, for metrics and tests. Plain `u64`s that only grow.

use super::snapshot::AdoptionRefusal;

/// Counters of the TURN server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    // Requests (and indications) by method, counted when they parse.
    pub binding_requests: u64,
    pub allocate_requests: u64,
    pub refresh_requests: u64,
    pub create_permission_requests: u64,
    pub channel_bind_requests: u64,
    pub send_indications: u64,
    /// Requests of a method the server does not implement (answered 400).
    pub other_requests: u64,

    // Error responses sent, by code.
    pub error_400: u64,
    pub error_401: u64,
    pub error_403: u64,
    pub error_420: u64,
    pub error_437: u64,
    pub error_438: u64,
    pub error_440: u64,
    pub error_441: u64,
    pub error_442: u64,
    pub error_443: u64,
    pub error_446: u64,
    pub error_447: u64,
    pub error_486: u64,
    pub error_508: u64,
    /// Error responses with any other code.
    pub error_other: u64,

    pub allocations_created: u64,
    pub allocations_expired: u64,
    /// Deleted by a Refresh with LIFETIME 0.
    pub allocations_deleted: u64,
    /// New permissions (refreshes not counted).
    pub permissions_created: u64,
    /// New channel bindings (refreshes not counted).
    pub channels_bound: u64,
    /// Channel bindings that ended because their lifetime ran out (not counting those that
    /// ended with their allocation).
    pub channels_expired: u64,
    /// Peers refused by the peer policy (403s and dropped Send indications).
    pub peer_denied: u64,
    /// Requests whose credentials were wrong, unknown or expired (401 after MESSAGE-INTEGRITY).
    pub auth_failures: u64,
    /// `auth_failures` by reason.
    pub auth_failures_by_reason: AuthFailures,
    /// Requests with an expired or foreign NONCE (438).
    pub stale_nonces: u64,
    /// Client datagrams that are neither valid STUN nor valid ChannelData, and bad indications.
    pub malformed_dropped: u64,
    /// ChannelData or Send indications from a 5-tuple without an allocation.
    pub unknown_client_dropped: u64,
    /// ChannelData from a client on a channel number that is not bound.
    pub unbound_channel_dropped: u64,
    /// Send indications / ChannelData toward a peer without a permission.
    pub client_dropped_no_permission: u64,
    /// Peer datagrams on a relayed address without an allocation.
    pub peer_dropped_no_allocation: u64,
    /// Peer datagrams too large for a Data indication or ChannelData message.
    pub peer_dropped_oversized: u64,
    /// Peer datagrams from an address without a permission.
    pub peer_dropped_no_permission: u64,
    /// Datagrams relayed client → peer, and their data bytes (what the peer receives).
    pub relayed_to_peer_packets: u64,
    pub relayed_to_peer_bytes: u64,
    /// The whole client datagrams those were relayed from: ChannelData messages with their
    /// header and padding, Send indications with every attribute (UDP payload bytes).
    pub relayed_from_client_wire_bytes: u64,
    /// Datagrams relayed peer → client, and their data bytes (what the peer sent).
    pub relayed_to_client_packets: u64,
    pub relayed_to_client_bytes: u64,
    /// The ChannelData messages and Data indications those went to the client in (UDP payload
    /// bytes).
    pub relayed_to_client_wire_bytes: u64,
    pub retransmissions_answered: u64,
    /// Allocates refused by a quota (486 per user, 508 in total).
    pub quota_rejections: u64,
    /// Allocates refused (508) because the server is draining.
    pub drain_rejections: u64,
    /// TURN requests (Allocate, Refresh, CreatePermission, ChannelBind) refused with 403
    /// because the server is a STUN server only (`ServerConfig::stun_only`).
    pub stun_only_refused: u64,
    /// Allocates refused with 486 because their client's IP address held
    /// `ServerConfig::max_allocations_per_ip` allocations already.
    pub per_ip_rejections: u64,
    /// Permissions and channels a new peer policy refused after they were granted, ended at
    /// once (see `Server::set_policy`).
    pub permissions_revoked: u64,
    pub channels_revoked: u64,
    /// TCP allocations' connections with peers a new peer policy refused, closed at once.
    pub connections_revoked: u64,
    /// Answers sent to UDP sources without MESSAGE-INTEGRITY (error responses to requests
    /// that did not authenticate, Binding responses), and their bytes.
    pub unauthenticated_answers: u64,
    pub unauthenticated_answer_bytes: u64,
    /// Such answers dropped because their source (or its prefix) had received as many bytes as
    /// it sent, beyond its burst (see `AnswerLimits`), and their bytes.
    pub unauthenticated_answers_limited: u64,
    pub unauthenticated_answer_bytes_limited: u64,
    /// BindRelay outcomes that were failures.
    pub relay_bind_failures: u64,
    /// TCP allocations (RFC 6062): Connects tried, those whose connection failed (447),
    /// peers that connected and were offered to the client (ConnectionAttempt), those refused
    /// (a second connection from the same peer address, or the allocation's limit), connections
    /// bound to a data connection, and those closed unbound after 30 s.
    pub tcp_connects: u64,
    pub tcp_connect_failures: u64,
    pub tcp_connection_attempts: u64,
    pub tcp_connections_refused: u64,
    pub tcp_connections_bound: u64,
    pub tcp_connections_timed_out: u64,
    /// Saved allocations not adopted on a restart, by the rule that refused them (indexed like
    /// [`AdoptionRefusal::LABELS`]).
    pub adoption_refused: [u64; AdoptionRefusal::LABELS.len()],
    /// Relayed traffic per cluster, indexed by cluster slot: slot 0 is `""` (peers outside
    /// every routed cluster, and listeners without routes), then every cluster any peer policy
    /// in force has named, in the order first seen. Slots are never removed or renamed, so a
    /// configuration reload that drops or renames a cluster leaves its counters (which stop
    /// growing). Empty only in a `Stats::default()`.
    pub clusters: Vec<ClusterTraffic>,
}

/// Traffic relayed in userspace for one cluster (see [`Stats::clusters`]): datagrams and their
/// data bytes (what the peer receives, or what it sent), as `relayed_to_*_packets` and
/// `relayed_to_*_bytes` count them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTraffic {
    /// The cluster's name; `""` for slot 0.
    pub name: String,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl ClusterTraffic {
    /// No traffic yet, for cluster `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ClusterTraffic {
            name: name.into(),
            ..ClusterTraffic::default()
        }
    }
}

impl Stats {
    /// Error responses by code, for exporters: `(code, count)`, `0` standing for "other".
    pub fn error_responses(&self) -> [(u16, u64); 15] {
        [
            (400, self.error_400),
            (401, self.error_401),
            (403, self.error_403),
            (420, self.error_420),
            (437, self.error_437),
            (438, self.error_438),
            (440, self.error_440),
            (441, self.error_441),
            (442, self.error_442),
            (443, self.error_443),
            (446, self.error_446),
            (447, self.error_447),
            (486, self.error_486),
            (508, self.error_508),
            (0, self.error_other),
        ]
    }

    /// Error responses sent with `code`.
    pub fn error_count(&self, code: u16) -> u64 {
        self.error_responses()
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(self.error_other, |(_, n)| *n)
    }

    /// Saved allocations refused on adoption: `(reason label, count)` for every reason.
    pub fn adoption_refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        AdoptionRefusal::LABELS
            .iter()
            .copied()
            .zip(self.adoption_refused.iter().copied())
    }

    pub(crate) fn count_adoption_refused(&mut self, why: AdoptionRefusal) {
        if let Some(i) = AdoptionRefusal::LABELS
            .iter()
            .position(|l| *l == why.label())
        {
            self.adoption_refused[i] += 1;
        }
    }

    /// Counts a datagram of `bytes` data bytes relayed to a peer of the cluster in `slot`.
    pub(crate) fn count_cluster_to_peer(&mut self, slot: usize, bytes: usize) {
        if let Some(cluster) = self.clusters.get_mut(slot) {
            cluster.to_peer_packets += 1;
            cluster.to_peer_bytes += bytes as u64;
        }
    }

    /// Counts a datagram of `bytes` data bytes relayed to a client from a peer of the cluster
    /// in `slot`.
    pub(crate) fn count_cluster_to_client(&mut self, slot: usize, bytes: usize) {
        if let Some(cluster) = self.clusters.get_mut(slot) {
            cluster.to_client_packets += 1;
            cluster.to_client_bytes += bytes as u64;
        }
    }

    /// The slot of cluster `name`, added (with no traffic) if new.
    pub(crate) fn cluster_slot(&mut self, name: &str) -> usize {
        if self.clusters.is_empty() {
            self.clusters.push(ClusterTraffic::new(""));
        }
        match self.clusters.iter().position(|c| c.name == name) {
            Some(index) => index,
            None => {
                self.clusters.push(ClusterTraffic::new(name));
                self.clusters.len() - 1
            }
        }
    }

    /// Counts an error response with `code` (codes without a counter of their own: `other`).
    pub fn count_error(&mut self, code: u16) {
        let counter = match code {
            400 => &mut self.error_400,
            401 => &mut self.error_401,
            403 => &mut self.error_403,
            420 => &mut self.error_420,
            437 => &mut self.error_437,
            438 => &mut self.error_438,
            440 => &mut self.error_440,
            441 => &mut self.error_441,
            442 => &mut self.error_442,
            443 => &mut self.error_443,
            446 => &mut self.error_446,
            447 => &mut self.error_447,
            486 => &mut self.error_486,
            508 => &mut self.error_508,
            _ => &mut self.error_other,
        };
        *counter += 1;
    }
}

/// Authentication failures by reason (they add up to `Stats::auth_failures`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthFailures {
    /// Neither a static user nor a valid TURN REST username.
    pub unknown_user: u64,
    /// A TURN REST username whose expiry has passed.
    pub expired: u64,
    /// MESSAGE-INTEGRITY(-SHA256) did not verify with the user's key: a wrong password.
    pub wrong_integrity: u64,
    /// A USERHASH that matches no static user.
    pub unknown_userhash: u64,
}

impl AuthFailures {
    /// (label, count) pairs for metrics.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("unknown_user", self.unknown_user),
            ("expired", self.expired),
            ("wrong_integrity", self.wrong_integrity),
            ("unknown_userhash", self.unknown_userhash),
        ]
    }
}
