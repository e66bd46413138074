//! Choosing the data plane: the XDP fast path where it can be attached, userspace otherwise.
//!
//! `--dataplane auto` attaches XDP to every interface that owns a listener or relayed address
//! (native mode, then generic) and falls back to userspace relaying if that fails; `xdp` makes
//! the same attempt but fails hard; `userspace` never loads BPF.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing::{debug, info, warn};

use crate::{
    ebpf::{ChannelEntry, FastPath, FastPathError},
    server::ChannelHook,
    turn::ChannelBinding,
};

/// Which data plane to run, as asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// XDP where possible, userspace otherwise.
    #[default]
    Auto,
    /// XDP or fail.
    Xdp,
    /// Userspace relaying only.
    Userspace,
}

/// Errors choosing the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("--dataplane xdp: {0}")]
    Xdp(#[source] FastPathError),
    #[error("--dataplane xdp: no interface owns any of the addresses {addresses:?}")]
    NoInterface { addresses: Vec<IpAddr> },
    #[error("listing interfaces failed: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("--dataplane xdp needs listeners on specific addresses, not {addr}")]
    WildcardListener { addr: SocketAddr },
}

/// Loads and attaches the fast path according to `mode`. `listeners` are the listener
/// addresses (the kernel matches ChannelData on them, so they must be specific addresses);
/// `relay_ips` the addresses relayed ports are bound on; `pin_dir`: pin maps and links there
/// (see [`FastPath::load_pinned`]). Returns `None` when relaying stays in userspace.
pub fn select(
    mode: Dataplane,
    listeners: &[SocketAddr],
    relay_ips: &[IpAddr],
    max_channels: u32,
    pin_dir: Option<&Path>,
) -> Result<Option<FastPath>, DataplaneError> {
    if mode == Dataplane::Userspace {
        info!("data plane: userspace (as configured)");
        return Ok(None);
    }
    if let Some(&addr) = listeners.iter().find(|l| l.ip().is_unspecified()) {
        return fallback(mode, DataplaneError::WildcardListener { addr });
    }
    let mut addresses: Vec<IpAddr> = listeners.iter().map(SocketAddr::ip).collect();
    addresses.extend_from_slice(relay_ips);
    let interfaces = interfaces_owning(&addresses).map_err(DataplaneError::Interfaces)?;
    if interfaces.is_empty() {
        let error = DataplaneError::NoInterface { addresses };
        return fallback(mode, error);
    }
    match attach(&interfaces, listeners, max_channels, pin_dir) {
        Ok(fast_path) => {
            info!(interfaces = ?interfaces, max_channels, "data plane: XDP");
            for interface in &interfaces {
                warn_if_not_forwarding(interface);
            }
            Ok(Some(fast_path))
        }
        Err(error) => fallback(mode, DataplaneError::Xdp(error)),
    }
}

fn fallback(mode: Dataplane, error: DataplaneError) -> Result<Option<FastPath>, DataplaneError> {
    if mode == Dataplane::Xdp {
        return Err(error);
    }
    warn!(error = %error, "data plane: userspace (XDP unavailable)");
    Ok(None)
}

fn attach(
    interfaces: &BTreeSet<String>,
    listeners: &[SocketAddr],
    max_channels: u32,
    pin_dir: Option<&Path>,
) -> Result<FastPath, FastPathError> {
    let mut fast_path = FastPath::load_pinned(max_channels, pin_dir)?;
    for &listener in listeners {
        fast_path.add_listener(listener)?;
    }
    for interface in interfaces {
        fast_path.attach(interface)?;
        if let Some(peer) = veth_peer_here(interface) {
            // Frames sent into a veth with XDP_TX or a redirect are dropped unless the other
            // end runs XDP (or NAPI, `ethtool -K <peer> gro on`); give it a program that passes.
            if !interfaces.contains(&peer) {
                fast_path.attach_pass(&peer)?;
            }
        } else if is_paired(interface) {
            info!(
                interface,
                "the peer of this paired interface (veth) is in another network namespace: if it \
                 is a veth, attach an XDP program to the peer (GRO on the peer is enough for \
                 redirected frames but not for XDP_TX ones) and turn its TX checksum offload off \
                 (`ethtool -K <peer> tx off`): datagrams that cross a veth with a partial \
                 checksum cannot be relayed correctly in XDP; see docs/architecture.md"
            );
        }
    }
    Ok(fast_path)
}

fn sysfs(interface: &str, file: &str) -> Option<String> {
    let path = format!("/sys/class/net/{interface}/{file}");
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// True for a paired device (veth and the like): its `iflink` names another interface.
fn is_paired(interface: &str) -> bool {
    matches!((sysfs(interface, "ifindex"), sysfs(interface, "iflink")), (Some(a), Some(b)) if a != b)
}

/// The name of `interface`'s veth peer when that peer is in this network namespace: the
/// interface whose index is our `iflink` and whose `iflink` is our index.
fn veth_peer_here(interface: &str) -> Option<String> {
    let ifindex = sysfs(interface, "ifindex")?;
    let iflink = sysfs(interface, "iflink")?;
    if ifindex == iflink {
        return None; // not a paired device
    }
    let entries = std::fs::read_dir("/sys/class/net").ok()?;
    entries.filter_map(Result::ok).find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let matches = sysfs(&name, "ifindex").as_deref() == Some(iflink.as_str())
            && sysfs(&name, "iflink").as_deref() == Some(ifindex.as_str());
        matches.then_some(name)
    })
}

/// `bpf_fib_lookup` refuses to resolve next hops for traffic arriving on an interface that
/// does not forward; the program then passes every relayed datagram to userspace.
fn warn_if_not_forwarding(interface: &str) {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            warn!(
                interface,
                family,
                "forwarding is disabled ({path} = 0): the XDP fast path cannot resolve next hops \
                 there and hands those datagrams to userspace; enable it with sysctl to relay in \
                 the kernel"
            );
        }
    }
}

/// Installs kernel entries for channel bindings as the TURN core reports them.
pub struct XdpHook {
    fast_path: Mutex<FastPath>,
    /// Bindings installed in the kernel.
    pub installed: AtomicU64,
    /// Bindings left to userspace because a map was full.
    pub map_full: AtomicU64,
    /// Bindings left to userspace because of another error.
    pub install_errors: AtomicU64,
}

impl XdpHook {
    pub fn new(fast_path: FastPath) -> XdpHook {
        XdpHook {
            fast_path: Mutex::new(fast_path),
            installed: AtomicU64::new(0),
            map_full: AtomicU64::new(0),
            install_errors: AtomicU64::new(0),
        }
    }

    /// Runs `f` with the fast path locked (counters, tests).
    pub fn with_fast_path<T>(&self, f: impl FnOnce(&mut FastPath) -> T) -> T {
        f(&mut self
            .fast_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// After a restart that adopted allocations: makes the kernel's channel entries exactly
    /// `bindings` (installing those missing, keeping those present with their counters,
    /// removing the rest) and its listener entries exactly `listeners`. Returns the bindings
    /// that have kernel entries now.
    pub fn adopt(
        &self,
        bindings: &[ChannelBinding],
        listeners: &[SocketAddr],
    ) -> Vec<ChannelBinding> {
        let mut installed = Vec::with_capacity(bindings.len());
        self.with_fast_path(|fp| {
            for binding in bindings {
                let entry = Self::entry(binding);
                match fp.ensure_channel_binding(&entry) {
                    Ok(_) => installed.push(*binding),
                    Err(e) => {
                        warn!(error = %e, ?entry, "adopted channel not in XDP: relayed in userspace");
                    }
                }
            }
            let keep: Vec<ChannelEntry> = installed.iter().map(Self::entry).collect();
            match fp.retain(&keep, listeners) {
                Ok(removed) => info!(
                    kept = keep.len(),
                    removed, "XDP channel entries reconciled with the adopted allocations"
                ),
                Err(e) => warn!(error = %e, "cannot reconcile the XDP maps"),
            }
        });
        self.installed
            .fetch_add(installed.len() as u64, Ordering::Relaxed);
        installed
    }

    fn entry(binding: &ChannelBinding) -> ChannelEntry {
        ChannelEntry {
            client: binding.client,
            listener: binding.server,
            channel: binding.channel,
            relayed: binding.relayed,
            peer: binding.peer,
        }
    }
}

impl ChannelHook for XdpHook {
    fn channel_bound(&self, binding: &ChannelBinding) {
        let entry = Self::entry(binding);
        match self.with_fast_path(|fp| fp.add_channel_binding(&entry)) {
            Ok(()) => {
                self.installed.fetch_add(1, Ordering::Relaxed);
                debug!(?entry, "channel installed in XDP");
            }
            Err(FastPathError::MapFull { name, capacity }) => {
                self.map_full.fetch_add(1, Ordering::Relaxed);
                warn!(
                    map = name,
                    capacity,
                    ?entry,
                    "XDP map full: channel relayed in userspace"
                );
            }
            Err(e) => {
                self.install_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, ?entry, "channel not installed in XDP: relayed in userspace");
            }
        }
    }

    fn channel_unbound(&self, binding: &ChannelBinding) {
        let entry = Self::entry(binding);
        if let Err(e) = self.with_fast_path(|fp| fp.remove_channel_binding(&entry)) {
            warn!(error = %e, ?entry, "removing a channel from XDP failed");
        } else {
            debug!(?entry, "channel removed from XDP");
        }
    }
}

/// Every address of every local interface (for the peer policy: the relay host's own
/// addresses). Empty if the interfaces cannot be listed.
pub fn local_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|ifaddr| ifaddr.address.as_ref().and_then(sockaddr_ip))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list local addresses for the peer policy");
            Vec::new()
        }
    }
}

/// Names of the interfaces that own one of `addresses` (all non-loopback interfaces of a family
/// for its unspecified address).
fn interfaces_owning(addresses: &[IpAddr]) -> Result<BTreeSet<String>, nix::Error> {
    let mut names = BTreeSet::new();
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        let Some(ip) = ifaddr.address.as_ref().and_then(sockaddr_ip) else {
            continue;
        };
        let wanted = addresses.iter().any(|&a| {
            a == ip
                || (a == IpAddr::V4(Ipv4Addr::UNSPECIFIED) && ip.is_ipv4() && !ip.is_loopback())
                || (a == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && ip.is_ipv6() && !ip.is_loopback())
        });
        if wanted {
            names.insert(ifaddr.interface_name);
        }
    }
    Ok(names)
}

fn sockaddr_ip(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_owned_by_lo() {
        let names = interfaces_owning(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("getifaddrs");
        assert!(names.contains("lo"), "{names:?}");
    }

    #[test]
    fn unspecified_never_selects_loopback() {
        let names = interfaces_owning(&[IpAddr::V4(Ipv4Addr::UNSPECIFIED)]).expect("getifaddrs");
        assert!(!names.contains("lo"), "{names:?}");
    }

    #[test]
    fn userspace_loads_nothing() {
        let selected =
            select(Dataplane::Userspace, &[], &[], 16, None).expect("userspace always works");
        assert!(selected.is_none());
    }
}
