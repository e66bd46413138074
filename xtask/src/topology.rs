//! The namespace topology of `cargo xtask demo` and `cargo xtask bench`:
//!
//! ```text
//!  client ns  ── veth ──  relay ns  ── veth ──  peer ns
//!  198.18.1.2             198.18.1.1 (listener)  198.18.2.2 (peer)
//!                         198.18.2.1 (relayed)
//! ```
//! prepared the same way for every relay that runs in it, and for the XDP fast path in
//! particular (docs/architecture.md, "Running on veths"): forwarding in the relay namespace
//! (`bpf_fib_lookup` needs it), GRO on every veth end (a NAPI instance on the receiving ends of
//! redirected frames), TX checksum offload off at the outer ends (full checksums from the hosts'
//! sockets, as a NIC delivers them), and neighbours resolved before traffic starts. The namespaces
//! (and with them every interface) are removed on drop.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::sh;

pub const CLIENT_IP: &str = "198.18.1.2";
pub const LISTENER_IP: &str = "198.18.1.1";
pub const RELAY_IP: &str = "198.18.2.1";
pub const PEER_IP: &str = "198.18.2.2";

/// Names of the namespaces and of the four veth ends.
pub struct Names {
    pub client: &'static str,
    pub relay: &'static str,
    pub peer: &'static str,
    /// Client end, relay's client-side end, relay's peer-side end, peer end.
    pub links: [&'static str; 4],
}

impl Names {
    /// The demo's namespaces and links.
    pub const DEMO: Names = Names::of(
        ["xturn-demo-client", "xturn-demo-relay", "xturn-demo-peer"],
        ["xtd-c0", "xtd-r0", "xtd-r1", "xtd-p0"],
    );
    /// The benchmark's namespaces and links.
    pub const BENCH: Names = Names::of(
        [
            "xturn-bench-client",
            "xturn-bench-relay",
            "xturn-bench-peer",
        ],
        ["xtb-c0", "xtb-r0", "xtb-r1", "xtb-p0"],
    );

    /// Client, relay and peer namespaces, and the links (see [`Names::links`]).
    const fn of(namespaces: [&'static str; 3], links: [&'static str; 4]) -> Names {
        let [client, relay, peer] = namespaces;
        Names {
            client,
            relay,
            peer,
            links,
        }
    }

    fn namespaces(&self) -> [&'static str; 3] {
        [self.client, self.relay, self.peer]
    }

    /// (namespace, interface) of every veth end.
    pub fn ends(&self) -> [(&'static str, &'static str); 4] {
        [
            (self.client, self.links[0]),
            (self.relay, self.links[1]),
            (self.relay, self.links[2]),
            (self.peer, self.links[3]),
        ]
    }
}

/// The topology; removed on drop.
pub struct Topology {
    names: &'static Names,
}

/// A command that runs `program ARGS` inside namespace `ns`.
pub fn netns_cmd(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}

/// Runs `cmd` with its output discarded unless it fails.
pub fn run_quiet(mut cmd: Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// `GET /metrics` from `addr`, inside namespace `ns` (a thread that enters it).
pub fn metrics(ns: &str, addr: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            let file = std::fs::File::open(format!("/run/netns/{ns}"))
                .with_context(|| format!("open the namespace {ns}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter the namespace {ns}"))?;
            let mut stream = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connect to {addr} for metrics"))?;
            stream.write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the metrics thread panicked"))?
    })
}

/// The value of the series `name` (with its labels, as printed) in a metrics text; 0 if absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.trim().parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

fn ip(args: &[&str]) -> Result<()> {
    run_quiet(sh::cmd("ip", args))
}

impl Topology {
    /// Creates the topology. `tuned`: forwarding on in the relay namespace, GRO on every veth end
    /// and TX checksum offload off at the outer ends (what XDP on veths needs); otherwise every
    /// setting stays as the kernel makes it. `threaded_napi` moves every veth end's receive work
    /// into a kernel thread (the benchmark pins and accounts those threads).
    pub fn create(names: &'static Names, tuned: bool, threaded_napi: bool) -> Result<Topology> {
        // Leftovers of an interrupted run would make `ip netns add` fail.
        for ns in names.namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let topology = Topology { names };
        for ns in names.namespaces() {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let [c0, r0, r1, p0] = names.links;
        ip(&[
            "link",
            "add",
            c0,
            "netns",
            names.client,
            "type",
            "veth",
            "peer",
            "name",
            r0,
            "netns",
            names.relay,
        ])?;
        ip(&[
            "link",
            "add",
            r1,
            "netns",
            names.relay,
            "type",
            "veth",
            "peer",
            "name",
            p0,
            "netns",
            names.peer,
        ])?;
        let cidrs = [CLIENT_IP, LISTENER_IP, RELAY_IP, PEER_IP];
        for ((ns, ifname), address) in names.ends().into_iter().zip(cidrs) {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                ifname,
            ])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        if tuned {
            run_quiet(netns_cmd(
                names.relay,
                "sysctl",
                &["-qw", "net.ipv4.ip_forward=1"],
            ))?;
        }
        for (ns, ifname) in names.ends() {
            if tuned {
                let outer = ifname == c0 || ifname == p0;
                let mut args = vec!["-K", ifname, "gro", "on"];
                if outer {
                    args.extend(["tx", "off"]);
                }
                run_quiet(netns_cmd(ns, "ethtool", &args))?;
            }
            if threaded_napi {
                let threaded = format!("echo 1 > /sys/class/net/{ifname}/threaded");
                run_quiet(netns_cmd(ns, "sh", &["-c", &threaded]))?;
            }
        }
        for (ns, address) in [
            (names.relay, CLIENT_IP),
            (names.relay, PEER_IP),
            (names.client, LISTENER_IP),
            (names.peer, RELAY_IP),
        ] {
            run_quiet(netns_cmd(
                ns,
                "ping",
                &["-c", "1", "-W", "2", "-q", address],
            ))?;
        }
        Ok(topology)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.names.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        eprintln!("xtask: namespaces {:?} removed", self.names.namespaces());
    }
}
