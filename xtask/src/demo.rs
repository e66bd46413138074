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

use crate::{
    setup, sh,
    topology::{Names, Topology, netns_cmd},
};

const CLIENT: &str = "xturn-demo-client";
const RELAY: &str = "xturn-demo-relay";
const PEER: &str = "xturn-demo-peer";
const NAMES: Names = Names {
    client: CLIENT,
    relay: RELAY,
    peer: PEER,
    links: ["xtd-c0", "xtd-r0", "xtd-r1", "xtd-p0"],
};

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
    let _topology = Topology::create(&NAMES, false)?;

    sh::step("demo: starting the echo peer and xturnd");
    let _peer = spawn(
        PEER,
        "turnutils_peer",
        &["-L", "198.18.2.2", "-p", "3480"],
        false,
    )?;
    let xturnd = spawn(
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
            "xdp",
            "--drain-timeout",
            "0",
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

/// Starts `program ARGS` in namespace `ns`, its output captured or discarded.
fn spawn(ns: &str, program: &str, args: &[&str], capture: bool) -> Result<Process> {
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
