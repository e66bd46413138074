//! The end-to-end test topology: three namespaces, the relay in the middle.
//!
//! ```text
//!  client ns                relay ns                       peer ns
//!  xtc0 198.18.1.2   ──  xtr0 198.18.1.1  (listener)
//!       2001:db8:1::2         2001:db8:1::1
//!                           xtr1 198.18.2.1  (relayed)  ──  xtp0 198.18.2.2
//!                                2001:db8:2::1                   2001:db8:2::2
//! ```
//! Clients talk only to the listener; peers only to relayed addresses. Nothing routes between
//! the client and peer links, so every datagram that arrives was relayed by xturn.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::netns::{ChildGuard, NetNs, veth, veth_default};

pub const LISTENER_V4: &str = "198.18.1.1";
pub const LISTENER_V6: &str = "2001:db8:1::1";
pub const CLIENT_V4: &str = "198.18.1.2";
pub const CLIENT_V6: &str = "2001:db8:1::2";
pub const RELAY_V4: &str = "198.18.2.1";
pub const RELAY_V6: &str = "2001:db8:2::1";
pub const PEER_V4: &str = "198.18.2.2";
pub const PEER_V6: &str = "2001:db8:2::2";
pub const TURN_PORT: u16 = 3478;

/// The three namespaces and their links (and, for [`Topology::pod`], the node between them).
pub struct Topology {
    pub client: NetNs,
    pub relay: NetNs,
    pub peer: NetNs,
    /// The routing node of [`Topology::pod`].
    pub node: Option<NetNs>,
    /// Where xturnd's IPv4 listener is (what start-up waits for).
    stun_server: SocketAddr,
}

/// The relay pod's address in [`Topology::pod`]: listener and relayed addresses, as STUNner
/// runs in a pod.
pub const POD_V4: &str = "198.18.20.2";
/// The media server's pod on the same node.
pub const POD_PEER_V4: &str = "198.18.30.2";
/// The client, outside the node.
pub const POD_CLIENT_V4: &str = "198.18.10.2";

impl Topology {
    pub fn new() -> Topology {
        Topology::three(veth)
    }

    /// The same three namespaces with every setting as the kernel makes it: veths with their
    /// default offloads, forwarding as a plain host has it (off) unless `forwarding`.
    pub fn plain(forwarding: bool) -> Topology {
        let topology = Topology::three(veth_default);
        // Said either way: a new namespace inherits IPv4 forwarding from the host's, which a
        // container runtime or a router may have turned on.
        let on = u8::from(forwarding);
        topology
            .relay
            .run("sysctl", &["-qw", &format!("net.ipv4.ip_forward={on}")]);
        topology.relay.run(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.all.forwarding={on}")],
        );
        topology
    }

    /// A Kubernetes node with default settings, as the relay sees it from its pod:
    /// ```text
    ///  client ns                 node ns (forwarding on)            relay pod ns
    ///  eth0 198.18.10.2  ──  xn0 198.18.10.1   xn1 198.18.20.1  ──  eth0 198.18.20.2
    ///                                          xn2 198.18.30.1  ──  eth0 198.18.30.2
    ///                                                               media server pod ns
    /// ```
    /// Every veth keeps its default settings; the pods route by their default gateway, the node;
    /// forwarding is on in the pods too, as they inherit it from a node that routes.
    pub fn pod() -> Topology {
        let client = NetNs::new("client");
        let node = NetNs::new("node");
        let relay = NetNs::new("relay");
        let peer = NetNs::new("peer");
        for (ns, ifname, node_if, ns_ip, node_ip) in [
            (&client, "eth0", "xn0", POD_CLIENT_V4, "198.18.10.1"),
            (&relay, "eth0", "xn1", POD_V4, "198.18.20.1"),
            (&peer, "eth0", "xn2", POD_PEER_V4, "198.18.30.1"),
        ] {
            veth_default(ns, ifname, &node, node_if);
            ns.ip(&["addr", "add", &format!("{ns_ip}/24"), "dev", ifname]);
            node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", node_if]);
            ns.ip(&["route", "add", "default", "via", node_ip]);
        }
        for ns in [&node, &relay, &peer] {
            ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        }
        Topology {
            client,
            relay,
            peer,
            node: Some(node),
            stun_server: SocketAddr::new(POD_V4.parse().expect("ip"), TURN_PORT),
        }
    }

    fn three(link: fn(&NetNs, &str, &NetNs, &str)) -> Topology {
        let client = NetNs::new("client");
        let relay = NetNs::new("relay");
        let peer = NetNs::new("peer");
        link(&client, "xtc0", &relay, "xtr0");
        link(&relay, "xtr1", &peer, "xtp0");
        for (ns, ifname, v4, v6) in [
            (&client, "xtc0", CLIENT_V4, CLIENT_V6),
            (&relay, "xtr0", LISTENER_V4, LISTENER_V6),
            (&relay, "xtr1", RELAY_V4, RELAY_V6),
            (&peer, "xtp0", PEER_V4, PEER_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname]);
            // nodad: usable at once, without waiting for duplicate address detection.
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
        }
        Topology {
            client,
            relay,
            peer,
            node: None,
            stun_server: Self::listener(false),
        }
    }

    pub fn listener(v6: bool) -> SocketAddr {
        let ip: IpAddr = if v6 { LISTENER_V6 } else { LISTENER_V4 }
            .parse()
            .expect("ip");
        SocketAddr::new(ip, TURN_PORT)
    }

    /// Starts `xturnd ARGS` in the relay namespace and waits until it answers STUN on the IPv4
    /// listener.
    pub fn start_xturnd(&self, args: &[&str]) -> ChildGuard {
        let guard = self.relay.spawn(&binary("xturnd").to_string_lossy(), args);
        self.wait_for_xturnd(guard)
    }

    /// Like [`Topology::start_xturnd`], with xturnd's output written to `log`.
    pub fn start_xturnd_logged(&self, args: &[&str], log: &std::path::Path) -> ChildGuard {
        let guard = self
            .relay
            .spawn_logged(&binary("xturnd").to_string_lossy(), args, log);
        self.wait_for_xturnd(guard)
    }

    fn wait_for_xturnd(&self, mut guard: ChildGuard) -> ChildGuard {
        if !self.wait_for_stun(self.stun_server, Duration::from_secs(10)) {
            let status = guard.child().try_wait();
            panic!("xturnd did not answer STUN within 10 s (exit status: {status:?})");
        }
        guard
    }

    /// Sends STUN Binding requests from the client namespace until one is answered.
    pub fn wait_for_stun(&self, server: SocketAddr, within: Duration) -> bool {
        self.client.within(|| {
            let bind = if server.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = UdpSocket::bind(bind).expect("bind probe socket");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let deadline = Instant::now() + within;
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                let _ = socket.send_to(&binding_request(), server);
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    // A Binding success response (0x0101) to our request.
                    if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 {
                        return true;
                    }
                }
            }
            false
        })
    }
}

/// Readies the topology for the XDP fast path:
/// - forwarding on in the relay namespace (`bpf_fib_lookup` resolves next hops only for
///   interfaces that forward);
/// - an XDP program (xturn's pass-everything one) on the outer veth ends: frames the relay's
///   program redirects into a veth are delivered only if the other end runs NAPI (GRO or XDP),
///   and frames it sends back with `XDP_TX` (a hairpin) are flushed promptly only if the other
///   end runs an XDP program — with GRO alone they wait for unrelated traffic;
/// - TX checksum offload off at the outer veth ends: a local socket's datagram crosses a veth
///   with only a partial checksum (the skb says "to be completed"), which XDP cannot know; a
///   NIC always delivers full checksums, and so do the test hosts then;
/// - the relay's neighbour entries for client and peer resolved, so the first datagrams do not
///   take the userspace path while ARP/ND runs.
impl Topology {
    /// Returns the pass programs attached to the outer veth ends; keep it alive while the test
    /// runs (dropping it detaches them).
    #[must_use]
    pub fn prepare_for_xdp(&self) -> Vec<relay_user::ebpf::FastPath> {
        self.relay.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        self.relay
            .run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        self.client
            .run("ethtool", &["-K", "xtc0", "tx", "off", "gro", "on"]);
        self.peer
            .run("ethtool", &["-K", "xtp0", "tx", "off", "gro", "on"]);
        for ip in [CLIENT_V4, PEER_V4, CLIENT_V6, PEER_V6] {
            self.relay.run("ping", &["-c", "1", "-W", "2", ip]);
        }
        [(&self.client, "xtc0"), (&self.peer, "xtp0")]
            .into_iter()
            .map(|(ns, ifname)| {
                ns.within(|| {
                    let mut pass = relay_user::ebpf::FastPath::load_with_capacity(1)
                        .expect("load the XDP program");
                    pass.attach_pass(ifname).expect("attach the pass program");
                    pass
                })
            })
            .collect()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A STUN Binding request with a fixed transaction id.
pub fn binding_request() -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..20].copy_from_slice(b"xturn-probe!");
    m
}

/// The path of a binary built from this workspace (`xturnd`, `xturnctl`), next to the test
/// executable's directory. `cargo xtask test` builds them before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build --workspace --bins`; `cargo xtask test` does)",
        path.display()
    );
    path
}
