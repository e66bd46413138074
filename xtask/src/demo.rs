//! `cargo xtask demo`: a relay on a test topology of network namespaces, with real traffic.
//!
//! ```text
//!  xturn-demo-client  ── veth ──  xturn-demo-relay  ── veth ──  xturn-demo-peer
//!  198.18.1.2                     198.18.1.1 (listener)          198.18.2.2 (echo peer)
//!                                 198.18.2.1 (relayed)
//! ```
//! `xturnd` runs in the relay namespace with `--dataplane xdp`; coturn's `turnutils_uclient` and
//! `xturnctl ping` relay ChannelData to an echo peer, which the XDP program relays in the kernel;
//! `xturnd` reports its XDP and userspace counters when it stops. Namespaces and processes are
//! removed at the end, also on failure.
use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, sh};

const NAMESPACES: [&str; 3] = ["xturn-demo-client", "xturn-demo-relay", "xturn-demo-peer"];
const CLIENT: &str = NAMESPACES[0];
const RELAY: &str = NAMESPACES[1];
const PEER: &str = NAMESPACES[2];

pub fn run() -> Result<()> {
    setup::run()?;
    sh::step("demo: building xturnd and xturnctl");
    sh::run(sh::cargo(&[
        "build",
        "--release",
        "-p",
        "relay-user",
        "--bins",
    ]))?;
    let bin = sh::root().join("target/release");

    sh::step("demo: creating the topology (client ⇄ relay ⇄ peer namespaces)");
    let topology = Topology::create()?;

    sh::step("demo: starting the echo peer and xturnd");
    let _peer = topology.spawn(
        PEER,
        "turnutils_peer",
        &["-L", "198.18.2.2", "-p", "3480"],
        false,
    )?;
    let xturnd = topology.spawn(
        RELAY,
        &bin.join("xturnd").to_string_lossy(),
        &[
            "--listen",
            "198.18.1.1:3478",
            "--relay-ip",
            "198.18.2.1",
            "--realm",
            "demo.xturn",
            "--user",
            "demo:demo-password",
            "--dataplane",
            "auto",
            "--log-level",
            "info",
        ],
        true,
    )?;
    wait_for_stun(&bin)?;

    sh::step("demo: coturn's turnutils_uclient through xturn (channels, 2 clients × 100 messages)");
    sh::run(netns_cmd(
        CLIENT,
        "turnutils_uclient",
        &[
            "-u",
            "demo",
            "-w",
            "demo-password",
            "-e",
            "198.18.2.2",
            "-r",
            "3480",
            "-n",
            "100",
            "-m",
            "2",
            "-l",
            "200",
            "-z",
            "5",
            "198.18.1.1",
        ],
    ))?;

    sh::step("demo: xturnctl ping through xturn (channel mode, 200 datagrams)");
    sh::run(netns_cmd(
        CLIENT,
        &bin.join("xturnctl").to_string_lossy(),
        &[
            "ping",
            "--server",
            "198.18.1.1:3478",
            "--user",
            "demo:demo-password",
            "--peer",
            "198.18.2.2:3480",
            "--count",
            "200",
            "--interval-ms",
            "2",
            "--mode",
            "channel",
        ],
    ))?;

    sh::step("demo: a Send-indication session (not ChannelData: relayed in userspace)");
    sh::run(netns_cmd(
        CLIENT,
        "turnutils_uclient",
        &[
            "-s",
            "-c",
            "-u",
            "demo",
            "-w",
            "demo-password",
            "-e",
            "198.18.2.2",
            "-r",
            "3480",
            "-n",
            "50",
            "-m",
            "1",
            "-l",
            "200",
            "-z",
            "5",
            "198.18.1.1",
        ],
    ))?;

    sh::step("demo: stopping xturnd; its report shows where each datagram was relayed");
    let output = xturnd.stop()?;
    let log = String::from_utf8_lossy(&output);
    eprint!("{log}");
    let relayed_in_xdp = log
        .lines()
        .filter(|l| l.contains("XDP counter") && l.contains("relayed_to"))
        .count();
    if relayed_in_xdp == 0 || !log.contains("data plane: XDP") {
        bail!("xturnd did not report XDP relaying; see its log above");
    }
    eprintln!(
        "\ndemo: ChannelData went through the XDP program (the relayed_to_peer and \
         relayed_to_client counters above); Send indications through userspace (the \
         relayed_to_*_packets fields of the userspace counters)."
    );
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    sh::run(sh::cmd("ip", args))
}

fn netns_cmd(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}

fn wait_for_stun(bin: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let probe = netns_cmd(
            CLIENT,
            &bin.join("xturnctl").to_string_lossy(),
            &["binding", "--server", "198.18.1.1:3478"],
        );
        if sh::succeeds(probe) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("xturnd did not answer a STUN Binding within 10 s")
}

/// The demo namespaces; deleted on drop.
struct Topology;

impl Topology {
    fn create() -> Result<Topology> {
        // Leftovers of an interrupted demo would make `ip netns add` fail.
        for ns in NAMESPACES {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let topology = Topology;
        for ns in NAMESPACES {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "xtd-c0", "netns", CLIENT, "type", "veth", "peer", "name", "xtd-r0",
            "netns", RELAY,
        ])?;
        ip(&[
            "link", "add", "xtd-r1", "netns", RELAY, "type", "veth", "peer", "name", "xtd-p0",
            "netns", PEER,
        ])?;
        for (ns, ifname, cidr) in [
            (CLIENT, "xtd-c0", "198.18.1.2/24"),
            (RELAY, "xtd-r0", "198.18.1.1/24"),
            (RELAY, "xtd-r1", "198.18.2.1/24"),
            (PEER, "xtd-p0", "198.18.2.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", cidr, "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        // What the XDP fast path needs on veths (see docs/architecture.md, "Running on veths"):
        // forwarding for bpf_fib_lookup, NAPI (GRO) on the receiving ends of redirected frames,
        // and full checksums from the hosts' sockets (TX checksum offload off).
        sh::run(netns_cmd(
            RELAY,
            "sysctl",
            &["-qw", "net.ipv4.ip_forward=1"],
        ))?;
        for (ns, ifname) in [(CLIENT, "xtd-c0"), (PEER, "xtd-p0")] {
            sh::run(netns_cmd(
                ns,
                "ethtool",
                &["-K", ifname, "tx", "off", "gro", "off"],
            ))?;
            sh::run(netns_cmd(ns, "ethtool", &["-K", ifname, "gro", "on"]))?;
        }
        for ip in ["198.18.1.2", "198.18.2.2"] {
            sh::run(netns_cmd(RELAY, "ping", &["-c", "1", "-W", "2", "-q", ip]))?;
        }
        Ok(topology)
    }

    fn spawn(&self, ns: &str, program: &str, args: &[&str], capture: bool) -> Result<Process> {
        let mut cmd = netns_cmd(ns, program, args);
        cmd.stdin(Stdio::null());
        if capture {
            cmd.stderr(Stdio::piped()).stdout(Stdio::piped());
        } else {
            cmd.stderr(Stdio::null()).stdout(Stdio::null());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {program} in {ns}"))?;
        Ok(Process(Some(child)))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in NAMESPACES {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        eprintln!("demo: namespaces removed");
    }
}

/// A process in a namespace, killed on drop.
struct Process(Option<Child>);

impl Process {
    /// SIGTERM, wait up to 10 s, and return what it wrote (stderr then stdout).
    fn stop(mut self) -> Result<Vec<u8>> {
        let child = self.0.take().context("process already stopped")?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let output = child
            .wait_with_output()
            .context("waiting for the process")?;
        let mut all = output.stderr;
        all.extend_from_slice(&output.stdout);
        Ok(all)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
