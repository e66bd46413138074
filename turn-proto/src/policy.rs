//! Which peers a client may reach through the relay.
//!
//! This module owns the peer policy: the default deny list (applied to every peer, on every
//! listener), the canonicalisation of IPv6 addresses that embed an IPv4 address (so that
//! `::ffff:127.0.0.1` is judged as `127.0.0.1`), STUNner-style routing (a listener's `routes` name
//! clusters, and a routed listener only reaches its clusters' endpoints), and the syntax of
//! cluster endpoints (`IP[/len][:port[-endport]]` and STUNner's `IP[/len]:<min-max>`, see
//! [`Endpoint`]; STRICT_DNS clusters' host names, see [`DnsEndpoint`]).
//!
//! The policy does no I/O: a STRICT_DNS cluster's endpoints are the addresses its host names
//! resolved to, which the agent's resolver keeps in a [`ResolvedNames`] and hands over
//! ([`DnsEndpoint::endpoints`]) whenever they change.
//!
//! The policy is consulted by the TURN server for CreatePermission ([`PeerPolicy::permits_ip`],
//! no port known) and for ChannelBind and Send ([`PeerPolicy::permits`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;

/// Why a peer address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerDenied {
    /// On the default deny list (loopback, unspecified, link-local, multicast, broadcast, the
    /// relay's own listeners), after canonicalising embedded IPv4 addresses.
    #[error("peer {peer} is forbidden: {why}")]
    DefaultDeny { peer: IpAddr, why: &'static str },
    /// Routes are configured for the listener and none of their clusters covers the peer.
    #[error("peer {peer} is not in any cluster routed from listener {listener:?}")]
    NoRoute { listener: String, peer: SocketAddr },
}

/// An inclusive range of UDP ports, `first..=last`, never empty and never including port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// `first..=last`; `None` when the range is empty or includes port 0.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first != 0 && first <= last).then_some(PortRange { first, last })
    }

    /// The lowest port of the range.
    pub fn first(self) -> u16 {
        self.first
    }

    /// The highest port of the range.
    pub fn last(self) -> u16 {
        self.last
    }

    /// Is `port` inside the range?
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One endpoint of a cluster: an IP prefix and, optionally, a port range.
///
/// Two syntaxes:
/// - xturn's `IP[/len][:port[-endport]]`. An IPv6 address or prefix needs brackets when a port
///   follows (`[2001:db8::1]:5000-6000`, `[2001:db8::/32]:5000`); without a port the brackets
///   are optional (`2001:db8::/32`).
/// - STUNner's `IP[/len]:<min-max>`, with literal angle brackets (`10.0.0.1:<1000-2000>`,
///   `10.0.0.0/8:<5000-5100>`, `fd00::1:<1-100>`): the suffix is unambiguous, so IPv6 needs no
///   brackets (they are accepted). A minimum of 0 reads as 1 (port 0 is no peer's port).
///
/// A bare address is a host prefix (`/32` or `/128`); host bits below the prefix length are
/// cleared, as STUNner does. No port means every port. Displayed in the first syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The addresses covered.
    pub net: IpNet,
    /// The ports covered; `None` is every port.
    pub ports: Option<PortRange>,
}

impl Endpoint {
    /// Does the endpoint cover `ip` (whatever the port)?
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip)
    }

    /// Does the endpoint cover `peer`, address and port?
    pub fn contains(&self, peer: SocketAddr) -> bool {
        self.contains_ip(peer.ip()) && self.ports.is_none_or(|ports| ports.contains(peer.port()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.net.prefix_len() == self.net.max_prefix_len();
        match (self.net, self.ports) {
            (IpNet::V6(net), Some(ports)) if host => write!(f, "[{}]:{ports}", net.addr()),
            (IpNet::V6(net), Some(ports)) => write!(f, "[{net}]:{ports}"),
            (net, Some(ports)) if host => write!(f, "{}:{ports}", net.addr()),
            (net, Some(ports)) => write!(f, "{net}:{ports}"),
            (net, None) if host => write!(f, "{}", net.addr()),
            (net, None) => write!(f, "{net}"),
        }
    }
}

/// Why an endpoint string does not parse. The messages quote the offending text and are meant
/// to follow a field name (`clusters[0].endpoints[2]: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The address part is not an IP address.
    #[error(
        "{text:?} is not an IP address (STATIC cluster endpoints are IP[/len][:port[-endport]] or IP[/len]:<min-max>; host names go in a STRICT_DNS cluster)"
    )]
    NotAnIp { text: String },
    /// The prefix length is not a number or too long for the address family.
    #[error("{text:?} is not an IP prefix")]
    NotAPrefix { text: String },
    /// A port is not a number in 1..=65535.
    #[error("{text:?}: {port:?} is not a valid port (1-65535)")]
    InvalidPort { text: String, port: String },
    /// The port range runs backwards.
    #[error("{text:?}: port range {first}-{last} is empty (the first port is above the last)")]
    EmptyPortRange { text: String, first: u16, last: u16 },
    /// Brackets, colons or slashes in the wrong place.
    #[error("{text:?} is not an endpoint: {why}")]
    Syntax { text: String, why: &'static str },
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let syntax = |why| EndpointError::Syntax {
            text: text.to_owned(),
            why,
        };
        if trimmed.is_empty() {
            return Err(syntax("it is empty"));
        }
        if let Some((addr_part, ports)) = stunner_port_suffix(trimmed) {
            let addr_part = match addr_part.strip_prefix('[') {
                Some(inside) => inside
                    .strip_suffix(']')
                    .ok_or_else(|| syntax("\"[\" without a matching \"]\""))?,
                None => addr_part,
            };
            let net = parse_prefix(text, addr_part)?;
            let ports = parse_angle_ports(text, ports)?;
            return Ok(Endpoint {
                net,
                ports: Some(ports),
            });
        }
        let (addr_part, port_part) = if let Some(rest) = trimmed.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(syntax("\"[\" without a matching \"]\""));
            };
            if after.is_empty() {
                (inside, None)
            } else if let Some(ports) = after.strip_prefix(':') {
                (inside, Some(ports))
            } else {
                return Err(syntax("only \":port\" may follow \"]\""));
            }
        } else {
            match trimmed.matches(':').count() {
                0 => (trimmed, None),
                // IPv4 (or a host name) with a port.
                1 => match trimmed.split_once(':') {
                    Some((addr, ports)) => (addr, Some(ports)),
                    None => (trimmed, None),
                },
                // Two or more colons: an IPv6 address, which cannot carry a port unbracketed.
                _ => (trimmed, None),
            }
        };
        let net = parse_prefix(text, addr_part)?;
        let ports = port_part.map(|p| parse_ports(text, p)).transpose()?;
        Ok(Endpoint { net, ports })
    }
}

/// STUNner's `ANYTHING:<min-max>` suffix: `(ANYTHING, "min-max")`.
fn stunner_port_suffix(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_suffix('>')?;
    let (before, ports) = inner.rsplit_once(":<")?;
    Some((before, ports))
}

/// The `min-max` of STUNner's `:<min-max>` (both given; a minimum of 0 reads as 1).
fn parse_angle_ports(text: &str, ports: &str) -> Result<PortRange, EndpointError> {
    let Some((first, last)) = ports.split_once('-') else {
        return Err(EndpointError::Syntax {
            text: text.to_owned(),
            why: "a port range in angle brackets is <min-max>",
        });
    };
    let port = |p: &str, zero_ok: bool| {
        p.parse::<u16>()
            .ok()
            .filter(|p| zero_ok || *p != 0)
            .ok_or_else(|| EndpointError::InvalidPort {
                text: text.to_owned(),
                port: p.to_owned(),
            })
    };
    let first = port(first, true)?.max(1);
    let last = port(last, false)?;
    PortRange::new(first, last).ok_or_else(|| EndpointError::EmptyPortRange {
        text: text.to_owned(),
        first,
        last,
    })
}

/// `IP` or `IP/len`, host bits cleared.
fn parse_prefix(text: &str, addr_part: &str) -> Result<IpNet, EndpointError> {
    let (ip_text, len_text) = match addr_part.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (addr_part, None),
    };
    let ip: IpAddr = ip_text.parse().map_err(|_| EndpointError::NotAnIp {
        text: text.to_owned(),
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| EndpointError::NotAPrefix {
                text: text.to_owned(),
            })?,
    };
    IpNet::new(ip, len)
        .map(|net| net.trunc())
        .map_err(|_| EndpointError::NotAPrefix {
            text: text.to_owned(),
        })
}

/// `port` or `port-endport`.
fn parse_ports(text: &str, ports: &str) -> Result<PortRange, EndpointError> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| EndpointError::InvalidPort {
                text: text.to_owned(),
                port: p.to_owned(),
            })
    };
    let (first, last) = match ports.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    PortRange::new(first, last).ok_or_else(|| EndpointError::EmptyPortRange {
        text: text.to_owned(),
        first,
        last,
    })
}

/// One endpoint of a STRICT_DNS cluster: a host name whose addresses (A and AAAA) are peers,
/// on every port or on STUNner's `:<min-max>` range if one follows the name
/// (`media.ns.svc.cluster.local`, `media.example.org:<10000-20000>`).
///
/// A peer is admitted when its address equals one the name resolved to ([`Self::endpoints`]);
/// the resolving is the agent's, which keeps the answers in a [`ResolvedNames`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsEndpoint {
    /// The host name, as written (case kept, no trailing-dot handling: the resolver's).
    pub host: String,
    /// The ports covered; `None` is every port.
    pub ports: Option<PortRange>,
}

impl DnsEndpoint {
    /// The endpoints `names` gives this host name now: one host prefix per address it
    /// resolved to, with this endpoint's ports. None before it first resolved.
    pub fn endpoints(&self, names: &ResolvedNames) -> Vec<Endpoint> {
        names
            .addresses(&self.host)
            .map(|ip| Endpoint {
                net: IpNet::from(ip),
                ports: self.ports,
            })
            .collect()
    }
}

impl fmt::Display for DnsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            Some(ports) => write!(f, "{}:<{}-{}>", self.host, ports.first(), ports.last()),
            None => f.write_str(&self.host),
        }
    }
}

impl FromStr for DnsEndpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let (host, ports) = match stunner_port_suffix(trimmed) {
            Some((host, ports)) => (host, Some(parse_angle_ports(text, ports)?)),
            None => (trimmed, None),
        };
        let syntax = |why| EndpointError::Syntax {
            text: text.to_owned(),
            why,
        };
        if host.is_empty() {
            return Err(syntax("the host name is empty"));
        }
        // Letters, digits, '-', '_' and '.' (and ':' for IPv6 literals, which resolve to
        // themselves); anything else cannot be a name a resolver answers for.
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(syntax(
                "a host name has letters, digits, '-', '_' and '.' only",
            ));
        }
        Ok(DnsEndpoint {
            host: host.to_owned(),
            ports,
        })
    }
}

/// What the host names of STRICT_DNS clusters resolved to, as last seen: the sans-IO half of
/// the agent's resolver. [`ResolvedNames::update`] applies one lookup's outcome: a success
/// replaces the name's addresses, a failure keeps the previous ones (as STUNner does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedNames {
    names: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// What [`ResolvedNames::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameUpdate {
    /// The name's addresses are different now (the policy must be rebuilt).
    Changed,
    /// The lookup answered the addresses the name had.
    Unchanged,
    /// The lookup failed (or answered nothing): the previous addresses stay.
    Failed,
}

impl ResolvedNames {
    /// The addresses `host` resolved to last (none if it never did).
    pub fn addresses(&self, host: &str) -> impl Iterator<Item = IpAddr> + '_ {
        self.names.get(host).into_iter().flatten().copied()
    }

    /// Applies a lookup of `host`: `Some(addresses)` on success, `None` on failure. An empty
    /// answer counts as a failure: a name that suddenly has no address is more likely a
    /// resolver hiccup than a deliberate change, and keeping the previous addresses is what
    /// STUNner does on a failed lookup.
    pub fn update(&mut self, host: &str, outcome: Option<Vec<IpAddr>>) -> NameUpdate {
        let Some(addresses) = outcome.filter(|a| !a.is_empty()) else {
            return NameUpdate::Failed;
        };
        let addresses: BTreeSet<IpAddr> = addresses.into_iter().collect();
        if self.names.get(host) == Some(&addresses) {
            return NameUpdate::Unchanged;
        }
        self.names.insert(host.to_owned(), addresses);
        NameUpdate::Changed
    }

    /// Forgets every name not in `hosts` (a reload removed its cluster). True if any went.
    pub fn retain(&mut self, hosts: &BTreeSet<String>) -> bool {
        let before = self.names.len();
        self.names.retain(|host, _| hosts.contains(host));
        self.names.len() != before
    }

    /// The names with addresses.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No name has addresses.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms that reach an IPv4
/// host: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, but not `::` and `::1`,
/// which are IPv6's own unspecified and loopback addresses), 6to4 (`2002:AABB:CCDD::/48`), and
/// NAT64 with the well-known prefix `64:ff9b::/96` or the local-use prefix `64:ff9b:1::/48`
/// (RFC 8215; only the `/96`-style embedding in the last 32 bits is recognised, since the
/// operator's NAT64 prefix length is not known here).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let last32 = || {
        let o = ip.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    };
    match seg {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last32()),
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(last32()),
        [0x2002, hi, lo, ..] => {
            let [a, b] = hi.to_be_bytes();
            let [c, d] = lo.to_be_bytes();
            Some(Ipv4Addr::new(a, b, c, d))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(last32()),
        _ => None,
    }
}

/// The address the deny list and the routes judge: the embedded IPv4 address of an IPv6 address
/// that has one (see [`embedded_ipv4`]), otherwise the address itself. Idempotent.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A default-deny category. Each has a plain reason and one for when the address was found
/// embedded in an IPv6 address, so the log says how the client tried to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forbidden {
    Loopback,
    ThisNetwork,
    Broadcast,
    Multicast,
    LinkLocal,
    Unspecified6,
    Loopback6,
    LinkLocal6,
    Multicast6,
}

impl Forbidden {
    fn why(self, embedded: bool) -> &'static str {
        match (self, embedded) {
            (Forbidden::Loopback, false) => "IPv4 loopback address (127.0.0.0/8)",
            (Forbidden::Loopback, true) => {
                "IPv6 address embedding an IPv4 loopback address (127.0.0.0/8)"
            }
            (Forbidden::ThisNetwork, false) => {
                "unspecified or \"this network\" address (0.0.0.0/8)"
            }
            (Forbidden::ThisNetwork, true) => {
                "IPv6 address embedding an unspecified or \"this network\" address (0.0.0.0/8)"
            }
            (Forbidden::Broadcast, false) => "IPv4 broadcast address (255.255.255.255)",
            (Forbidden::Broadcast, true) => {
                "IPv6 address embedding the IPv4 broadcast address (255.255.255.255)"
            }
            (Forbidden::Multicast, false) => "IPv4 multicast address (224.0.0.0/4)",
            (Forbidden::Multicast, true) => {
                "IPv6 address embedding an IPv4 multicast address (224.0.0.0/4)"
            }
            (Forbidden::LinkLocal, false) => {
                "IPv4 link-local address (169.254.0.0/16, home of cloud metadata services)"
            }
            (Forbidden::LinkLocal, true) => {
                "IPv6 address embedding an IPv4 link-local address (169.254.0.0/16, home of cloud metadata services)"
            }
            (Forbidden::Unspecified6, _) => "IPv6 unspecified address (::)",
            (Forbidden::Loopback6, _) => "IPv6 loopback address (::1)",
            (Forbidden::LinkLocal6, _) => "IPv6 link-local address (fe80::/10)",
            (Forbidden::Multicast6, _) => "IPv6 multicast address (ff00::/8)",
        }
    }

    fn is_loopback(self) -> bool {
        matches!(self, Forbidden::Loopback | Forbidden::Loopback6)
    }
}

/// The default-deny category of a canonical address, if any.
fn forbidden(canonical: IpAddr) -> Option<Forbidden> {
    match canonical {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if a == 127 {
                Some(Forbidden::Loopback)
            } else if a == 0 {
                Some(Forbidden::ThisNetwork)
            } else if v4 == Ipv4Addr::BROADCAST {
                Some(Forbidden::Broadcast)
            } else if a & 0xf0 == 224 {
                Some(Forbidden::Multicast)
            } else if a == 169 && b == 254 {
                Some(Forbidden::LinkLocal)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some(Forbidden::Unspecified6)
            } else if v6.is_loopback() {
                Some(Forbidden::Loopback6)
            } else if first & 0xffc0 == 0xfe80 {
                Some(Forbidden::LinkLocal6)
            } else if first & 0xff00 == 0xff00 {
                Some(Forbidden::Multicast6)
            } else {
                None
            }
        }
    }
}

/// Why the relay's own listener addresses are refused as peers.
const OWN_LISTENER: &str = "the relay's own listener address (relaying to it would loop)";

/// Why other ports on the relay host's own addresses are refused as peers.
const OWN_HOST: &str = "an address of the relay host outside the relayed port range (it would \
                        reach the host's own services)";

/// The peer policy of the whole relay.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// The relay's listener addresses, IPs canonicalised; refused as peers (address and port).
    own: Vec<SocketAddr>,
    /// The relay host's own addresses, canonicalised: as peers they may only be reached on the
    /// relayed port range (another allocation of this relay), never on other ports, where the
    /// host's own services listen.
    host_ips: Vec<IpAddr>,
    /// The relayed port range, inclusive.
    relay_ports: (u16, u16),
    /// Listeners with routes, mapped to the endpoints of all their routed clusters. A listener
    /// with routes whose clusters have no endpoints is present with an empty list (reaches
    /// nothing); a listener absent from the map has no routes (reaches everything not denied).
    routed: HashMap<String, Vec<Endpoint>>,
    /// The same for TCP allocations (RFC 6062): the endpoints of a listener's routed TCP
    /// clusters. A routed listener is in both maps (a listener whose clusters are all UDP
    /// reaches nothing over TCP, and the other way round).
    tcp_routed: HashMap<String, Vec<Endpoint>>,
    /// The names of the clusters, for metrics: [`PeerPolicy::cluster_of`] answers an index
    /// into it.
    cluster_names: Vec<String>,
    /// Listeners with routes, mapped to the endpoints of their routed clusters, each with the
    /// index of its cluster in `cluster_names`, in the clusters' order. Only for attributing
    /// traffic to clusters: what a listener may reach is `routed`.
    cluster_routes: HashMap<String, Vec<(usize, Endpoint)>>,
    /// Test-only override letting loopback peers through the default deny list.
    allow_loopback: bool,
}

impl PeerPolicy {
    /// No routes: every peer is allowed except the default deny list. `own` are the relay's
    /// listener addresses (denied as peers, by address and port). Pass concrete addresses: a
    /// wildcard entry (`0.0.0.0:3478`) cannot tell which local addresses are the relay's.
    pub fn open(own: Vec<SocketAddr>) -> Self {
        let mut own = own;
        for addr in &mut own {
            addr.set_ip(canonical_ip(addr.ip()));
        }
        own.sort_unstable();
        own.dedup();
        PeerPolicy {
            own,
            host_ips: Vec::new(),
            relay_ports: (0, u16::MAX),
            routed: HashMap::new(),
            tcp_routed: HashMap::new(),
            cluster_names: Vec::new(),
            cluster_routes: HashMap::new(),
            allow_loopback: false,
        }
    }

    /// Declares the relay host's own addresses and the relayed port range: a peer on one of
    /// those addresses is refused unless its port is in the range. Adds to earlier calls.
    #[must_use]
    pub fn own_host(
        mut self,
        ips: impl IntoIterator<Item = IpAddr>,
        relay_ports: (u16, u16),
    ) -> Self {
        self.host_ips.extend(
            ips.into_iter()
                .map(canonical_ip)
                .filter(|ip| !ip.is_unspecified()),
        );
        self.host_ips.sort_unstable();
        self.host_ips.dedup();
        self.relay_ports = relay_ports;
        self
    }

    /// Restricts `listener` to `endpoints` (added to any it already has, as [`route`]
    /// does), and attributes the traffic to peers they cover to cluster `cluster` (see
    /// [`PeerPolicy::cluster_of`]). Clusters are matched in the order they were first named.
    ///
    /// [`route`]: PeerPolicy::route
    pub fn route_cluster(
        mut self,
        listener: impl Into<String>,
        cluster: &str,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        let listener = listener.into();
        let index = self.cluster_index(cluster);
        let routes = self.cluster_routes.entry(listener.clone()).or_default();
        routes.extend(endpoints.iter().map(|e| (index, *e)));
        routes.sort_by_key(|(index, _)| *index);
        self.route(listener, endpoints)
    }

    /// The index of cluster `name` in [`PeerPolicy::cluster_names`], added if new.
    pub fn cluster_index(&mut self, name: &str) -> usize {
        match self.cluster_names.iter().position(|n| n == name) {
            Some(index) => index,
            None => {
                self.cluster_names.push(name.to_owned());
                self.cluster_names.len() - 1
            }
        }
    }

    /// The names of the clusters, indexed by what [`PeerPolicy::cluster_of`] answers.
    pub fn cluster_names(&self) -> &[String] {
        &self.cluster_names
    }

    /// For metrics: the index (into [`PeerPolicy::cluster_names`]) of the first cluster routed
    /// from `listener` with an endpoint covering `peer` (address and port, either as given or
    /// canonicalised, as [`PeerPolicy::permits`] matches). `None` when the listener has no
    /// routes or no routed cluster covers the peer. It does not judge the deny list.
    pub fn cluster_of(&self, listener: &str, peer: SocketAddr) -> Option<usize> {
        let routes = self.cluster_routes.get(listener)?;
        let canonical = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        routes
            .iter()
            .find(|(_, e)| e.contains(peer) || e.contains(canonical))
            .map(|(index, _)| *index)
    }

    /// Restricts `listener` to `endpoints` (added to any it already has). A listener given an
    /// empty list reaches no peer at all, like a STUNner listener whose routes have no endpoints.
    pub fn route(mut self, listener: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        let listener = listener.into();
        self.tcp_routed.entry(listener.clone()).or_default();
        self.routed.entry(listener).or_default().extend(endpoints);
        self
    }

    /// Like [`PeerPolicy::route`], for TCP allocations (RFC 6062): `listener`'s clients
    /// reach `endpoints` over TCP relayed addresses (a STUNner cluster with `protocol: TCP`).
    pub fn route_tcp(mut self, listener: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        let listener = listener.into();
        self.routed.entry(listener.clone()).or_default();
        self.tcp_routed
            .entry(listener)
            .or_default()
            .extend(endpoints);
        self
    }

    /// The endpoints a routed `listener` reaches with UDP or TCP allocations; `None`: not
    /// routed (everything not denied).
    fn routes_of(&self, listener: &str, tcp: bool) -> Option<&Vec<Endpoint>> {
        if tcp {
            self.tcp_routed.get(listener)
        } else {
            self.routed.get(listener)
        }
    }

    /// Lets loopback peers (`127.0.0.0/8`, `::1`, and IPv6 forms embedding `127.0.0.0/8`) through
    /// the default deny list; nothing else on the list. Off by default. Only for tests that run
    /// peers on the relay's own host: in production it lets clients reach services listening on
    /// the relay's loopback interface.
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// For CreatePermission (no port known): may a client on `listener` reach `peer` at all?
    ///
    /// The relay's listener addresses are not refused here: relayed addresses share their IP
    /// with the listeners, and a permission towards another allocation of this relay must work.
    pub fn permits_ip(&self, listener: &str, peer: IpAddr) -> Result<(), PeerDenied> {
        self.permits_ip_over(listener, peer, false)
    }

    /// [`PeerPolicy::permits_ip`] for a UDP (`tcp` false) or TCP allocation.
    pub fn permits_ip_over(
        &self,
        listener: &str,
        peer: IpAddr,
        tcp: bool,
    ) -> Result<(), PeerDenied> {
        let canonical = self.check_deny_list(peer)?;
        match self.routes_of(listener, tcp) {
            None => Ok(()),
            Some(endpoints) => {
                if endpoints
                    .iter()
                    .any(|e| e.contains_ip(peer) || e.contains_ip(canonical))
                {
                    Ok(())
                } else {
                    Err(PeerDenied::NoRoute {
                        listener: listener.to_owned(),
                        peer: SocketAddr::new(peer, 0),
                    })
                }
            }
        }
    }

    /// For ChannelBind and Send: may a client on `listener` reach `peer` (address and port)?
    pub fn permits(&self, listener: &str, peer: SocketAddr) -> Result<(), PeerDenied> {
        self.permits_over(listener, peer, false)
    }

    /// [`PeerPolicy::permits`] for a UDP (`tcp` false) or TCP allocation (Connect, and peers
    /// that connect to a TCP relayed address).
    pub fn permits_over(
        &self,
        listener: &str,
        peer: SocketAddr,
        tcp: bool,
    ) -> Result<(), PeerDenied> {
        let canonical = self.check_deny_list(peer.ip())?;
        if self
            .own
            .binary_search(&SocketAddr::new(canonical, peer.port()))
            .is_ok()
        {
            return Err(PeerDenied::DefaultDeny {
                peer: peer.ip(),
                why: OWN_LISTENER,
            });
        }
        let (first, last) = self.relay_ports;
        if self.host_ips.binary_search(&canonical).is_ok() && !(first..=last).contains(&peer.port())
        {
            return Err(PeerDenied::DefaultDeny {
                peer: peer.ip(),
                why: OWN_HOST,
            });
        }
        match self.routes_of(listener, tcp) {
            None => Ok(()),
            Some(endpoints) => {
                let canonical_peer = SocketAddr::new(canonical, peer.port());
                if endpoints
                    .iter()
                    .any(|e| e.contains(peer) || e.contains(canonical_peer))
                {
                    Ok(())
                } else {
                    Err(PeerDenied::NoRoute {
                        listener: listener.to_owned(),
                        peer,
                    })
                }
            }
        }
    }

    /// The default deny list; returns the canonical address when the peer passes.
    fn check_deny_list(&self, peer: IpAddr) -> Result<IpAddr, PeerDenied> {
        let canonical = canonical_ip(peer);
        match forbidden(canonical) {
            Some(category) if !(self.allow_loopback && category.is_loopback()) => {
                Err(PeerDenied::DefaultDeny {
                    peer,
                    why: category.why(canonical != peer),
                })
            }
            _ => Ok(canonical),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    fn open() -> PeerPolicy {
        PeerPolicy::open(vec![sa("198.51.100.1:3478"), sa("[2001:db8::100]:3478")])
    }

    #[track_caller]
    fn assert_denied(policy: &PeerPolicy, peer: &str) {
        let peer = ip(peer);
        let Err(PeerDenied::DefaultDeny {
            peer: reported,
            why,
        }) = policy.permits_ip("l", peer)
        else {
            panic!("{peer} should be on the default deny list");
        };
        assert_eq!(reported, peer);
        assert!(!why.is_empty());
        assert!(
            matches!(
                policy.permits("l", SocketAddr::new(peer, 5000)),
                Err(PeerDenied::DefaultDeny { .. })
            ),
            "{peer} (with a port) should be on the default deny list"
        );
    }

    #[test]
    fn bypass_forms_are_denied() {
        let policy = open();
        for peer in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "169.254.169.254",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            // IPv4-mapped
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:169.254.169.254",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            // IPv4-compatible
            "::127.0.0.1",
            "::169.254.169.254",
            "::0.0.0.2",
            // 6to4
            "2002:7f00:0001::",
            "2002:7f00:1:ffff:1:2:3:4",
            "2002:e000:0001::",
            "2002:a9fe:a9fe::1",
            "2002::",
            // NAT64, well-known and local-use prefixes
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:abcd::e000:1",
        ] {
            assert_denied(&policy, peer);
        }
    }

    #[test]
    fn reasons_say_what_and_how() {
        let policy = open();
        let Err(PeerDenied::DefaultDeny { why, .. }) = policy.permits_ip("l", ip("127.0.0.1"))
        else {
            panic!("loopback must be denied");
        };
        assert!(why.contains("loopback"), "{why}");
        let Err(PeerDenied::DefaultDeny { why, .. }) =
            policy.permits_ip("l", ip("::ffff:169.254.169.254"))
        else {
            panic!("mapped link-local must be denied");
        };
        assert!(
            why.contains("embedding") && why.contains("link-local"),
            "{why}"
        );
        let err = policy.permits_ip("l", ip("ff02::1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer ff02::1 is forbidden: IPv6 multicast address (ff00::/8)"
        );
    }

    #[test]
    fn ordinary_addresses_pass() {
        let policy = open();
        for peer in [
            "198.18.0.5",
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db8::5",
            "::ffff:198.18.0.5",
            "::198.18.0.5",
            "2002:c612:0005::1",
            "64:ff9b::c612:5",
            "64:ff9b:1::c612:5",
            "fec0::1",
            "fd00::1",
        ] {
            assert_eq!(policy.permits_ip("l", ip(peer)), Ok(()), "{peer}");
            assert_eq!(
                policy.permits("l", SocketAddr::new(ip(peer), 5000)),
                Ok(()),
                "{peer}"
            );
        }
    }

    #[test]
    fn the_relay_hosts_other_ports_are_denied_but_relayed_ports_are_not() {
        let policy = PeerPolicy::open(vec![sa("198.18.1.1:3478")]).own_host(
            ["198.18.1.1".parse().unwrap(), "198.18.2.1".parse().unwrap()],
            (50000, 50999),
        );
        for denied in [
            "198.18.2.1:161",
            "198.18.2.1:22",
            "198.18.1.1:53",
            "[::ffff:198.18.2.1]:161",
        ] {
            assert!(policy.permits("l", sa(denied)).is_err(), "{denied}");
        }
        // Another allocation of this relay (the hairpin case) and foreign hosts stay reachable.
        for allowed in ["198.18.2.1:50000", "198.18.2.1:50999", "198.18.2.2:161"] {
            assert_eq!(policy.permits("l", sa(allowed)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn own_listeners_are_denied_by_address_and_port_only() {
        let policy = open();
        for peer in [
            "198.51.100.1:3478",
            "[::ffff:198.51.100.1]:3478",
            "[2001:db8::100]:3478",
        ] {
            let err = policy.permits("any", sa(peer)).unwrap_err();
            assert!(
                matches!(err, PeerDenied::DefaultDeny { why, .. } if why == OWN_LISTENER),
                "{peer}"
            );
        }
        // Other ports on the same IP are relayed addresses: relaying between allocations works.
        assert_eq!(policy.permits("any", sa("198.51.100.1:50000")), Ok(()));
        assert_eq!(policy.permits_ip("any", ip("198.51.100.1")), Ok(()));
        assert_eq!(policy.permits_ip("any", ip("2001:db8::100")), Ok(()));
    }

    #[test]
    fn allow_loopback_allows_loopback_only() {
        let policy = PeerPolicy::open(vec![sa("127.0.0.1:3478")]).allow_loopback(true);
        for peer in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert_eq!(policy.permits_ip("l", ip(peer)), Ok(()), "{peer}");
        }
        assert_eq!(policy.permits("l", sa("127.0.0.1:5000")), Ok(()));
        // The listener itself stays forbidden.
        assert!(policy.permits("l", sa("127.0.0.1:3478")).is_err());
        for peer in [
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "224.0.0.1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(policy.permits_ip("l", ip(peer)).is_err(), "{peer}");
        }
        // Off by default.
        assert!(open().permits_ip("l", ip("127.0.0.1")).is_err());
        assert!(PeerPolicy::default().permits_ip("l", ip("::1")).is_err());
    }

    #[test]
    fn routes_restrict_a_listener_to_its_endpoints() {
        let policy = open()
            .route("media", vec![ep("10.0.0.0/8"), ep("192.0.2.7:5000-6000")])
            .route("v6", vec![ep("[2001:db8:1::/48]:9000")])
            .route("closed", vec![]);

        assert_eq!(policy.permits("media", sa("10.1.2.3:1")), Ok(()));
        assert_eq!(policy.permits("media", sa("[::ffff:10.1.2.3]:1")), Ok(()));
        assert_eq!(policy.permits("media", sa("192.0.2.7:5000")), Ok(()));
        assert_eq!(policy.permits("media", sa("192.0.2.7:6000")), Ok(()));
        assert_eq!(
            policy.permits("media", sa("192.0.2.7:6001")),
            Err(PeerDenied::NoRoute {
                listener: "media".into(),
                peer: sa("192.0.2.7:6001"),
            })
        );
        assert!(policy.permits("media", sa("192.0.2.8:5000")).is_err());
        assert!(policy.permits("media", sa("11.0.0.1:5000")).is_err());
        // CreatePermission has no port: an IP matching any endpoint passes.
        assert_eq!(policy.permits_ip("media", ip("192.0.2.7")), Ok(()));
        assert!(matches!(
            policy.permits_ip("media", ip("192.0.2.8")),
            Err(PeerDenied::NoRoute { .. })
        ));

        assert_eq!(policy.permits("v6", sa("[2001:db8:1:2::5]:9000")), Ok(()));
        assert!(policy.permits("v6", sa("[2001:db8:1:2::5]:9001")).is_err());
        assert!(policy.permits("v6", sa("[2001:db8:2::5]:9000")).is_err());
        assert!(policy.permits_ip("v6", ip("10.0.0.1")).is_err());

        assert!(policy.permits_ip("closed", ip("8.8.8.8")).is_err());

        // No routes, or an unknown listener: everything but the deny list.
        assert_eq!(policy.permits("other", sa("8.8.8.8:53")), Ok(()));
        assert!(policy.permits("other", sa("127.0.0.1:53")).is_err());
        // Routes never override the deny list.
        let loose = open().route("all", vec![ep("0.0.0.0/0"), ep("::/0")]);
        assert!(loose.permits_ip("all", ip("127.0.0.1")).is_err());
        assert!(loose.permits_ip("all", ip("::ffff:127.0.0.1")).is_err());
        assert!(loose.permits("all", sa("198.51.100.1:3478")).is_err());
        assert_eq!(loose.permits("all", sa("8.8.8.8:53")), Ok(()));
    }

    #[test]
    fn routes_match_embedded_and_literal_forms() {
        let policy = open()
            .route("v4", vec![ep("198.18.0.0/15")])
            .route("nat64", vec![ep("64:ff9b::/96")]);
        assert_eq!(policy.permits_ip("v4", ip("64:ff9b::c612:5")), Ok(()));
        assert_eq!(policy.permits_ip("v4", ip("::ffff:198.18.0.5")), Ok(()));
        assert_eq!(policy.permits_ip("nat64", ip("64:ff9b::c612:5")), Ok(()));
        assert!(policy.permits_ip("nat64", ip("198.18.0.5")).is_err());
    }

    #[test]
    fn endpoint_syntax() {
        let cases = [
            ("10.0.0.1", "10.0.0.1/32", None),
            ("10.0.0.1/8", "10.0.0.0/8", None),
            ("10.0.0.0/8:5000", "10.0.0.0/8", Some((5000, 5000))),
            ("10.0.0.5:5000-6000", "10.0.0.5/32", Some((5000, 6000))),
            (" 10.0.0.5:1-65535 ", "10.0.0.5/32", Some((1, 65535))),
            ("2001:db8::1", "2001:db8::1/128", None),
            ("2001:db8::/32", "2001:db8::/32", None),
            ("[2001:db8::1]", "2001:db8::1/128", None),
            (
                "[2001:db8::1]:5000-6000",
                "2001:db8::1/128",
                Some((5000, 6000)),
            ),
            ("[2001:db8::/32]:5000", "2001:db8::/32", Some((5000, 5000))),
            ("[10.0.0.1]:80", "10.0.0.1/32", Some((80, 80))),
            ("::ffff:10.0.0.1", "::ffff:10.0.0.1/128", None),
            ("0.0.0.0/0", "0.0.0.0/0", None),
        ];
        for (text, net, ports) in cases {
            let e: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.net, net.parse::<IpNet>().unwrap(), "{text}");
            assert_eq!(e.ports.map(|p| (p.first(), p.last())), ports, "{text}");
            // Display round-trips.
            assert_eq!(e.to_string().parse::<Endpoint>(), Ok(e), "{text} -> {e}");
        }
        assert_eq!(
            ep("[2001:db8::1]:5000-6000").to_string(),
            "[2001:db8::1]:5000-6000"
        );
        assert_eq!(ep("10.0.0.0/8:7").to_string(), "10.0.0.0/8:7");
    }

    #[test]
    fn stunner_endpoint_syntax() {
        let cases = [
            ("10.0.0.1:<1000-2000>", "10.0.0.1/32", (1000, 2000)),
            ("10.0.0.0/8:<5000-5100>", "10.0.0.0/8", (5000, 5100)),
            ("10.1.2.3/8:<1-65535>", "10.0.0.0/8", (1, 65535)),
            ("fd00::1:<1-100>", "fd00::1/128", (1, 100)),
            ("fd00::/64:<7-7>", "fd00::/64", (7, 7)),
            ("[fd00::1]:<1-100>", "fd00::1/128", (1, 100)),
            ("0.0.0.0/0:<0-65535>", "0.0.0.0/0", (1, 65535)),
            (" 192.0.2.1:<80-81> ", "192.0.2.1/32", (80, 81)),
        ];
        for (text, net, ports) in cases {
            let e: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.net, net.parse::<IpNet>().unwrap(), "{text}");
            assert_eq!(
                e.ports.map(|p| (p.first(), p.last())),
                Some(ports),
                "{text}"
            );
            // Displayed in xturn's syntax, which reads back the same.
            assert_eq!(e.to_string().parse::<Endpoint>(), Ok(e), "{text} -> {e}");
        }
        let e = ep("fd00::1:<1-100>");
        assert!(e.contains(sa("[fd00::1]:100")));
        assert!(!e.contains(sa("[fd00::1]:101")));
        let bad = |text: &str| text.parse::<Endpoint>().unwrap_err();
        assert!(matches!(
            bad("10.0.0.1:<2000-1000>"),
            EndpointError::EmptyPortRange { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:<1-65536>"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:<1000>"),
            EndpointError::Syntax { .. }
        ));
        assert!(matches!(
            bad("media.svc:<1-2>"),
            EndpointError::NotAnIp { .. }
        ));
        assert!(matches!(
            bad("[fd00::1:<1-2>"),
            EndpointError::Syntax { .. }
        ));
    }

    #[test]
    fn dns_endpoints_admit_exactly_the_resolved_addresses() {
        let media: DnsEndpoint = "media.example.org".parse().unwrap();
        assert_eq!(media.ports, None);
        assert_eq!(media.to_string(), "media.example.org");
        let rtp: DnsEndpoint = "rtp.example.org:<10000-20000>".parse().unwrap();
        assert_eq!(rtp.host, "rtp.example.org");
        assert_eq!(rtp.to_string(), "rtp.example.org:<10000-20000>");
        assert!("".parse::<DnsEndpoint>().is_err());
        assert!("bad host".parse::<DnsEndpoint>().is_err());
        assert!("a/b".parse::<DnsEndpoint>().is_err());

        let mut names = ResolvedNames::default();
        // Nothing resolved yet: no endpoint, the routed listener reaches nothing.
        assert!(media.endpoints(&names).is_empty());
        assert_eq!(
            names.update(
                "media.example.org",
                Some(vec![ip("192.0.2.7"), ip("2001:db8::7")])
            ),
            NameUpdate::Changed
        );
        assert_eq!(
            names.update(
                "media.example.org",
                Some(vec![ip("2001:db8::7"), ip("192.0.2.7")])
            ),
            NameUpdate::Unchanged
        );
        assert_eq!(
            names.update("rtp.example.org", Some(vec![ip("192.0.2.8")])),
            NameUpdate::Changed
        );
        let policy = open()
            .route_cluster("l", "media", media.endpoints(&names))
            .route_cluster("l", "rtp", rtp.endpoints(&names));
        // Any port of a resolved address; nothing else.
        assert_eq!(policy.permits("l", sa("192.0.2.7:1")), Ok(()));
        assert_eq!(policy.permits("l", sa("[2001:db8::7]:65535")), Ok(()));
        assert_eq!(policy.permits("l", sa("[::ffff:192.0.2.7]:5")), Ok(()));
        assert_eq!(policy.permits_ip("l", ip("192.0.2.7")), Ok(()));
        assert!(policy.permits("l", sa("192.0.2.6:1")).is_err());
        assert!(policy.permits_ip("l", ip("2001:db8::8")).is_err());
        // The port range of a DNS endpoint applies.
        assert_eq!(policy.permits("l", sa("192.0.2.8:10000")), Ok(()));
        assert!(policy.permits("l", sa("192.0.2.8:9999")).is_err());
        assert_eq!(policy.cluster_of("l", sa("192.0.2.8:10000")), Some(1));
        assert_eq!(policy.cluster_of("l", sa("192.0.2.7:10000")), Some(0));

        // A failed or empty lookup keeps what the name had.
        assert_eq!(names.update("media.example.org", None), NameUpdate::Failed);
        assert_eq!(
            names.update("media.example.org", Some(Vec::new())),
            NameUpdate::Failed
        );
        assert_eq!(media.endpoints(&names).len(), 2);
        // A new answer replaces the old one.
        assert_eq!(
            names.update("media.example.org", Some(vec![ip("192.0.2.9")])),
            NameUpdate::Changed
        );
        assert_eq!(media.endpoints(&names), vec![ep("192.0.2.9")]);
        // Names no cluster has any more are forgotten.
        let keep: BTreeSet<String> = ["rtp.example.org".to_owned()].into();
        assert!(names.retain(&keep));
        assert!(!names.retain(&keep));
        assert_eq!(names.len(), 1);
        assert!(media.endpoints(&names).is_empty());
    }

    #[test]
    fn endpoint_errors() {
        let bad = |text: &str| text.parse::<Endpoint>().unwrap_err();
        assert!(matches!(
            bad("10.0.0.0/33"),
            EndpointError::NotAPrefix { .. }
        ));
        assert_eq!(
            bad("10.0.0.0/33").to_string(),
            r#""10.0.0.0/33" is not an IP prefix"#
        );
        assert!(matches!(
            bad("2001:db8::/129"),
            EndpointError::NotAPrefix { .. }
        ));
        assert!(matches!(
            bad("10.0.0.0/x"),
            EndpointError::NotAPrefix { .. }
        ));
        assert!(matches!(
            bad("10.0.0.0/-1"),
            EndpointError::NotAPrefix { .. }
        ));
        assert!(matches!(
            bad("media.svc.cluster.local"),
            EndpointError::NotAnIp { .. }
        ));
        assert!(matches!(bad("10.0.0"), EndpointError::NotAnIp { .. }));
        assert!(matches!(
            bad("10.0.0.1:0"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:65536"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:5-"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:a-b"),
            EndpointError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("10.0.0.1:6000-5000"),
            EndpointError::EmptyPortRange {
                first: 6000,
                last: 5000,
                ..
            }
        ));
        assert!(matches!(bad(""), EndpointError::Syntax { .. }));
        assert!(matches!(bad("[2001:db8::1"), EndpointError::Syntax { .. }));
        assert!(matches!(
            bad("[2001:db8::1]5000"),
            EndpointError::Syntax { .. }
        ));
        assert!(matches!(
            bad("[2001:db8::1]:"),
            EndpointError::InvalidPort { .. }
        ));
        // An unbracketed IPv6 address cannot carry a port: the last group is part of it.
        assert_eq!(ep("2001:db8::1:5000").ports, None);
    }

    #[test]
    fn canonicalisation() {
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::")), ip("::"));
        assert_eq!(canonical_ip(ip("::1")), ip("::1"));
        assert_eq!(canonical_ip(ip("::2")), ip("0.0.0.2"));
        assert_eq!(canonical_ip(ip("2002:0102:0304:5::6")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("64:ff9b::102:304")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("64:ff9b:1:2:3:4:102:304")), ip("1.2.3.4"));
        // Outside the NAT64 /96 (bits 32..96 not zero) and not local-use: left alone.
        assert_eq!(
            canonical_ip(ip("64:ff9b:2::102:304")),
            ip("64:ff9b:2::102:304")
        );
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(canonical_ip(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    /// STUNner's `protocol: TCP` clusters: reached by TCP allocations only, and UDP clusters
    /// by UDP allocations only; a listener without routes reaches both as before.
    #[test]
    fn tcp_and_udp_clusters_are_reached_over_their_own_allocations() {
        let policy = open()
            .route_cluster("media", "rtp", vec![ep("10.0.0.0/8")])
            .route_tcp("media", vec![ep("192.0.2.0/24:443")])
            .route("udp-only", vec![ep("10.0.0.0/8")]);
        assert_eq!(policy.permits("media", sa("10.1.2.3:5000")), Ok(()));
        assert!(
            policy
                .permits_over("media", sa("10.1.2.3:5000"), true)
                .is_err()
        );
        assert_eq!(
            policy.permits_over("media", sa("192.0.2.7:443"), true),
            Ok(())
        );
        assert!(
            policy
                .permits_over("media", sa("192.0.2.7:444"), true)
                .is_err()
        );
        assert!(policy.permits("media", sa("192.0.2.7:443")).is_err());
        assert_eq!(
            policy.permits_ip_over("media", ip("192.0.2.7"), true),
            Ok(())
        );
        assert!(policy.permits_ip("media", ip("192.0.2.7")).is_err());
        // Routed to UDP clusters only: nothing over TCP.
        assert!(
            policy
                .permits_over("udp-only", sa("10.1.2.3:5000"), true)
                .is_err()
        );
        // Not routed: everything not denied, either way.
        assert_eq!(
            policy.permits_over("open", sa("10.1.2.3:5000"), true),
            Ok(())
        );
        assert_eq!(policy.permits("open", sa("10.1.2.3:5000")), Ok(()));
    }

    #[test]
    fn cluster_of_names_the_first_covering_cluster() {
        let policy = open()
            .route_cluster("media", "rtp", vec![ep("10.0.0.0/8:5000-6000")])
            .route_cluster("media", "wide", vec![ep("10.0.0.0/8")])
            .route_cluster("other", "wide", vec![ep("192.0.2.0/24")])
            .route("plain", vec![ep("198.18.0.0/15")]);
        assert_eq!(policy.cluster_names(), ["rtp", "wide"]);
        assert_eq!(policy.cluster_of("media", sa("10.1.2.3:5000")), Some(0));
        assert_eq!(
            policy.cluster_of("media", sa("[::ffff:10.1.2.3]:5000")),
            Some(0)
        );
        assert_eq!(policy.cluster_of("media", sa("10.1.2.3:7000")), Some(1));
        assert_eq!(policy.cluster_of("media", sa("192.0.2.1:7000")), None);
        assert_eq!(policy.cluster_of("other", sa("192.0.2.1:7000")), Some(1));
        assert_eq!(policy.cluster_of("plain", sa("198.18.0.1:7000")), None);
        assert_eq!(policy.cluster_of("nope", sa("10.1.2.3:5000")), None);
        // Routing is unchanged by the cluster names.
        assert_eq!(policy.permits("media", sa("10.1.2.3:7000")), Ok(()));
        assert!(policy.permits("media", sa("192.0.2.1:7000")).is_err());
    }

    /// A random address in one of the forbidden IPv4 ranges.
    fn denied_v4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(|x| Ipv4Addr::from((127 << 24) | (x & 0x00ff_ffff))),
            any::<u32>().prop_map(|x| Ipv4Addr::from(x & 0x00ff_ffff)),
            any::<u32>().prop_map(|x| Ipv4Addr::from((224 << 24) | (x & 0x0fff_ffff))),
            any::<u32>().prop_map(|x| Ipv4Addr::from((169 << 24) | (254 << 16) | (x & 0xffff))),
            Just(Ipv4Addr::BROADCAST),
        ]
    }

    /// `v4` embedded in an IPv6 address in one of the recognised ways, with arbitrary bits
    /// wherever the form leaves them free.
    fn embed(v4: Ipv4Addr, form: u8, noise: u128) -> Ipv6Addr {
        let v4 = u128::from(u32::from(v4));
        Ipv6Addr::from(match form % 5 {
            0 => (0xffff << 32) | v4,
            1 => v4,
            // 6to4: 2002:AABB:CCDD, then any subnet and interface identifier.
            2 => (0x2002 << 112) | (v4 << 80) | (noise & ((1 << 80) - 1)),
            3 => (0x0064_ff9b << 96) | v4,
            // Local-use NAT64: 64:ff9b:1::/48, any bits up to the embedded address.
            _ => (0x0064_ff9b_0001 << 80) | ((noise & ((1 << 48) - 1)) << 32) | v4,
        })
    }

    proptest! {
        #[test]
        fn canonicalisation_is_idempotent(bits in any::<u128>(), v4 in any::<u32>()) {
            for addr in [IpAddr::V6(Ipv6Addr::from(bits)), IpAddr::V4(Ipv4Addr::from(v4))] {
                let once = canonical_ip(addr);
                prop_assert_eq!(canonical_ip(once), once);
            }
        }

        #[test]
        fn embedded_denied_ipv4_is_denied(v4 in denied_v4(), form in any::<u8>(), noise in any::<u128>()) {
            let v6 = embed(v4, form, noise);
            let policy = open().route("l", vec![ep("::/0"), ep("0.0.0.0/0")]);
            prop_assert!(
                matches!(policy.permits_ip("l", IpAddr::V6(v6)), Err(PeerDenied::DefaultDeny { .. })),
                "{} (embedding {}) passed", v6, v4
            );
            prop_assert!(
                matches!(policy.permits("x", SocketAddr::new(IpAddr::V6(v6), 5000)), Err(PeerDenied::DefaultDeny { .. })),
                "{} (embedding {}) passed with a port", v6, v4
            );
        }

        #[test]
        fn permits_implies_permits_ip(bits in any::<u128>(), port in 1u16.., v4 in any::<u32>()) {
            let policy = open().route("l", vec![ep("10.0.0.0/8:5000-6000"), ep("[2000::/3]:1-1000")]);
            for addr in [IpAddr::V6(Ipv6Addr::from(bits)), IpAddr::V4(Ipv4Addr::from(v4))] {
                if policy.permits("l", SocketAddr::new(addr, port)).is_ok() {
                    prop_assert!(policy.permits_ip("l", addr).is_ok());
                }
            }
        }
    }
}
