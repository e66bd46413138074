//! Choosing the data plane: which kernel hook relays bound channels on which interface, or
//! userspace.
//!
//! `--dataplane auto` looks at every interface that owns a listener or relayed address: XDP
//! (native) only on a physical NIC whose driver runs XDP natively and that forwards (XDP's
//! next-hop lookup needs forwarding); TC on everything else (veths, whose far end the agent
//! does not own and which drop frames sent from XDP unless that end runs XDP; other virtual
//! devices; NICs without native XDP; hosts that do not forward). One hook serves all the
//! agent's interfaces: if any needs TC, all get TC. When nothing attaches it stays in
//! userspace. `xdp` and `tc` use that hook or refuse to start with the reason; `userspace`
//! never loads BPF. What was chosen, per interface and why, is logged and exported
//! (`xturn_dataplane_interface_info`).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use tracing::{info, warn};

use crate::{
    ebpf::{FastPath, FastPathError, Hook},
    offload::KernelPath,
};

/// Which data plane to run, as asked for on the command line (`offloadEngine` in STUNner's
/// configuration: `None`, `XDP`, `TC`, `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// Per interface: XDP on forwarding NICs with native XDP, TC elsewhere, userspace when
    /// neither attaches.
    #[default]
    Auto,
    /// XDP or refuse to start.
    Xdp,
    /// TC (clsact ingress) or refuse to start.
    Tc,
    /// Userspace relaying only.
    Userspace,
}

/// Errors choosing the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("--dataplane {mode}: {source}")]
    Attach {
        mode: &'static str,
        #[source]
        source: Box<FastPathError>,
    },
    #[error("--dataplane {mode}: no interface owns any of the addresses {addresses:?}")]
    NoInterface {
        mode: &'static str,
        addresses: Vec<IpAddr>,
    },
    #[error("listing interfaces failed: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("--dataplane {mode} needs listeners on specific addresses, not {addr}")]
    WildcardListener {
        mode: &'static str,
        addr: SocketAddr,
    },
    #[error(
        "--dataplane xdp: forwarding is off on {interface} ({path} = 0), so XDP cannot look up \
         next hops and would hand every datagram to userspace; use --dataplane tc (or auto), or \
         enable forwarding"
    )]
    XdpNeedsForwarding { interface: String, path: String },
    #[error("route lookups (netlink): {0}")]
    Route(#[source] crate::route::RouteError),
}

impl Dataplane {
    fn name(self) -> &'static str {
        match self {
            Dataplane::Auto => "auto",
            Dataplane::Xdp => "xdp",
            Dataplane::Tc => "tc",
            Dataplane::Userspace => "userspace",
        }
    }
}

/// What the agent chose for one interface, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceChoice {
    pub interface: String,
    /// `xdp`, `tc` or `userspace`.
    pub mode: &'static str,
    pub why: String,
}

/// The kernel path the agent runs: the loaded programs, the hook and the per-interface choice.
pub struct Selected {
    pub fast_path: FastPath,
    pub hook: Hook,
    pub interfaces: Vec<InterfaceChoice>,
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
) -> Result<Option<Selected>, DataplaneError> {
    if mode == Dataplane::Userspace {
        info!("data plane: userspace (as configured)");
        return Ok(None);
    }
    if let Some(&addr) = listeners.iter().find(|l| l.ip().is_unspecified()) {
        let error = DataplaneError::WildcardListener {
            mode: mode.name(),
            addr,
        };
        return fallback(mode, error);
    }
    let mut addresses: Vec<IpAddr> = listeners.iter().map(SocketAddr::ip).collect();
    addresses.extend_from_slice(relay_ips);
    let interfaces = interfaces_owning(&addresses).map_err(DataplaneError::Interfaces)?;
    if interfaces.is_empty() {
        let error = DataplaneError::NoInterface {
            mode: mode.name(),
            addresses,
        };
        return fallback(mode, error);
    }
    let mut choices: Vec<InterfaceChoice> = Vec::new();
    let hook = match mode {
        Dataplane::Xdp => {
            for interface in &interfaces {
                if let Some(path) = forwarding_off(interface, &addresses) {
                    return Err(DataplaneError::XdpNeedsForwarding {
                        interface: interface.clone(),
                        path,
                    });
                }
            }
            Hook::Xdp
        }
        Dataplane::Tc => Hook::Tc,
        _ => {
            let judged: Vec<(String, Hook, String)> = interfaces
                .iter()
                .map(|i| {
                    let (hook, why) = auto_hook(i, &addresses);
                    (i.clone(), hook, why)
                })
                .collect();
            let hook = if judged.iter().all(|(_, h, _)| *h == Hook::Xdp) {
                Hook::Xdp
            } else {
                Hook::Tc
            };
            for (interface, chosen, why) in judged {
                let why = if chosen == hook {
                    why
                } else {
                    format!(
                        "{why}; but another interface of this agent needs TC, and one hook serves all"
                    )
                };
                choices.push(InterfaceChoice {
                    interface,
                    mode: hook.name(),
                    why,
                });
            }
            hook
        }
    };
    if choices.is_empty() {
        choices = interfaces
            .iter()
            .map(|i| InterfaceChoice {
                interface: i.clone(),
                mode: hook.name(),
                why: format!("--dataplane {}", mode.name()),
            })
            .collect();
    }
    match attach(&interfaces, listeners, max_channels, pin_dir, hook) {
        Ok(fast_path) => {
            info!(interfaces = ?interfaces, max_channels, "data plane: {}", hook.name().to_uppercase());
            for choice in &choices {
                info!(
                    interface = %choice.interface,
                    mode = choice.mode,
                    why = %choice.why,
                    "data plane chosen"
                );
            }
            Ok(Some(Selected {
                fast_path,
                hook,
                interfaces: choices,
            }))
        }
        Err(source) => fallback(
            mode,
            DataplaneError::Attach {
                mode: hook.name(),
                source: Box::new(source),
            },
        ),
    }
}

fn fallback(mode: Dataplane, error: DataplaneError) -> Result<Option<Selected>, DataplaneError> {
    if mode != Dataplane::Auto {
        return Err(error);
    }
    warn!(error = %error, "data plane: userspace (no kernel path could be attached)");
    Ok(None)
}

/// `auto`'s choice for one interface, and why.
fn auto_hook(interface: &str, addresses: &[IpAddr]) -> (Hook, String) {
    if is_paired(interface) {
        return (
            Hook::Tc,
            "a veth: frames sent from XDP reach its far end only if that end runs XDP, which this \
             agent does not control"
                .to_owned(),
        );
    }
    let Some(driver) = driver(interface) else {
        return (
            Hook::Tc,
            "a virtual device (a veth or the like, whose far end this agent does not control)"
                .to_owned(),
        );
    };
    if let Some(path) = forwarding_off(interface, addresses) {
        return (
            Hook::Tc,
            format!("forwarding is off ({path} = 0): XDP's next-hop lookup needs it"),
        );
    }
    if !NATIVE_XDP_DRIVERS.contains(&driver.as_str()) {
        return (
            Hook::Tc,
            format!("driver {driver} is not known to run XDP natively"),
        );
    }
    (
        Hook::Xdp,
        format!("a NIC whose driver ({driver}) runs XDP natively, forwarding on"),
    )
}

/// Drivers with native XDP (including `XDP_TX` and redirects), as of Linux 6.x.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "mlx5_core",
    "mlx4_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "virtio_net",
    "ena",
    "gve",
    "tun",
    "netdevsim",
    "sfc",
    "mvneta",
    "mvpp2",
    "stmmac",
    "fec",
    "dpaa2-eth",
    "tsnep",
    "enetc",
    "hv_netvsc",
    "idpf",
    "octeontx2-nicpf",
];

/// The driver behind `interface`, or `None` for a virtual device (no `device` link in sysfs).
fn driver(interface: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{interface}/device/driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The sysctl path that shows forwarding off on `interface`, if it is off for a family of
/// `addresses` (the relay's listeners and relayed addresses).
fn forwarding_off(interface: &str, addresses: &[IpAddr]) -> Option<String> {
    let mut families = Vec::new();
    if addresses.iter().any(IpAddr::is_ipv4) {
        families.push("ipv4");
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        families.push("ipv6");
    }
    families.into_iter().find_map(|family| {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        std::fs::read_to_string(&path)
            .is_ok_and(|v| v.trim() == "0")
            .then_some(path)
    })
}

fn attach(
    interfaces: &BTreeSet<String>,
    listeners: &[SocketAddr],
    max_channels: u32,
    pin_dir: Option<&Path>,
    hook: Hook,
) -> Result<FastPath, FastPathError> {
    let mut fast_path = FastPath::load_pinned(max_channels, pin_dir)?;
    for &listener in listeners {
        fast_path.add_listener(listener)?;
    }
    for interface in interfaces {
        fast_path.attach_hook(interface, hook)?;
        if hook == Hook::Tc {
            continue;
        }
        if let Some(peer) = veth_peer_here(interface) {
            // Frames sent into a veth with XDP_TX or a redirect are dropped unless the other
            // end runs XDP (or NAPI, `ethtool -K <peer> gro on`); give it a program that passes.
            if !interfaces.contains(&peer) {
                fast_path.attach_pass(&peer)?;
            }
        } else if is_paired(interface) {
            warn!(
                interface,
                "XDP on a veth whose far end is in another network namespace: frames sent from \
                 XDP are dropped unless that end runs an XDP program, and datagrams sent by local \
                 sockets across it may carry partial checksums; --dataplane tc (or auto) has \
                 neither problem; see docs/architecture.md"
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

/// Never a blackhole: watches that what the kernel path relays is delivered, by the drop
/// counters of the interfaces it runs on. A veth counts every frame it cannot hand to its far
/// end: in `tx_dropped` for what the stack or TC sends (the far end down or gone), in the
/// receiving interface's `rx_dropped` for an XDP redirect or `XDP_TX` it refuses (the far end
/// runs no XDP program and no GRO). When, over a [`DeliveryWatch::INTERVAL`], at least [`DeliveryWatch::MIN_DROPS`]
/// frames were dropped there and they amount to half or more of what the kernel relayed, the
/// path is withdrawn ([`KernelPath::withdraw`]) and userspace relays from then on.
pub struct DeliveryWatch {
    interfaces: Vec<String>,
    last: Option<(u64, u64)>,
}

impl DeliveryWatch {
    /// How often the counters are compared.
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
    /// Fewer drops than this in an interval are noise (a peer restarting, a queue overflowing).
    pub const MIN_DROPS: u64 = 8;

    /// A watch over the interfaces the kernel path sends on.
    pub fn new(interfaces: Vec<String>) -> DeliveryWatch {
        DeliveryWatch {
            interfaces,
            last: None,
        }
    }

    /// Compares the counters with the last look; withdraws the path if it does not deliver.
    /// Returns whether it is (still) in service.
    pub fn check(&mut self, hook: &KernelPath) -> bool {
        if hook.withdrawn().is_some() {
            return false;
        }
        let relayed = hook.with_fast_path(|fp| fp.stats()).map_or(0, |reasons| {
            reasons
                .iter()
                .filter(|(r, _)| {
                    matches!(
                        r,
                        relay_common::Reason::RelayedToPeer
                            | relay_common::Reason::RelayedToClient
                            | relay_common::Reason::RelayedHairpin
                    )
                })
                .map(|(_, c)| c.packets)
                .sum()
        });
        let dropped: u64 = self
            .interfaces
            .iter()
            .flat_map(|i| ["statistics/tx_dropped", "statistics/rx_dropped"].map(|f| (i, f)))
            .filter_map(|(i, f)| sysfs(i, f)?.parse::<u64>().ok())
            .sum();
        let now = (relayed, dropped);
        let Some((relayed_before, dropped_before)) = self.last.replace(now) else {
            return true;
        };
        let relayed = relayed.saturating_sub(relayed_before);
        let dropped = dropped.saturating_sub(dropped_before);
        if dropped >= Self::MIN_DROPS && dropped * 2 >= relayed && relayed > 0 {
            hook.withdraw(format!(
                "{dropped} frames dropped on {:?} while the kernel relayed {relayed}",
                self.interfaces
            ));
            return false;
        }
        true
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
