//! `cargo xtask demo`: a relay on a test topology of network namespaces, with real traffic.
//!
//! ```text
//!  xturn-demo-client  ── veth ──  xturn-demo-relay  ── veth ──  xturn-demo-peer
//!  198.18.1.2                     198.18.1.1 (listener)          198.18.2.2 (echo peer)
//!                                 198.18.2.1 (relayed)
//! ```
//! Every interface keeps the kernel's default settings (veth offloads as they come, forwarding
//! off: a plain host), and `xturnd` runs with its default data plane (`auto`, which chooses TC on
//! veths). coturn's `turnutils_uclient` and `xturnctl ping` relay ChannelData to an echo peer
//! (relayed in the kernel), then a Send-indication session (relayed in userspace). The demo ends
//! with a table of what was relayed where, from xturnd's metrics. Namespaces and processes are
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

const NAMES: Names = Names::DEMO;
/// xturnd's metrics endpoint, in the relay namespace.
const METRICS: &str = "198.18.1.1:9100";

pub fn run() -> Result<()> {
    setup::run()?;
    sh::step("demo: building xturnd and xturnctl");
    let bin = sh::build_release(&["relay-user", "xturnctl"])?;

    sh::step("demo: creating the topology (client ⇄ relay ⇄ peer namespaces, default settings)");
    let _topology = Topology::create(&NAMES, false, false)?;

    sh::step("demo: starting the echo peer and xturnd");
    let _peer = spawn(
        NAMES.peer,
        "turnutils_peer",
        &["-L", "198.18.2.2", "-p", "3480"],
        false,
    )?;
    let xturnd = spawn(
        NAMES.relay,
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
            "--metrics-listen",
            METRICS,
            "--drain-timeout",
            "0",
            "--log-level",
            "info",
        ],
        true,
    )?;
    wait_for_stun(&bin)?;

    // Each session's traffic, with what the relay's counters say it relayed where.
    const UCLIENT_TO_PEER: [&str; 8] = [
        "-u",
        "demo",
        "-w",
        "demo-password",
        "-e",
        "198.18.2.2",
        "-r",
        "3480",
    ];
    const UCLIENT_TIMING: [&str; 5] = ["-l", "200", "-z", "5", "198.18.1.1"];
    let xturnctl = bin.join("xturnctl").to_string_lossy().into_owned();
    let sessions: [(&str, &str, &str, Vec<&str>); 3] = [
        (
            "demo: coturn's turnutils_uclient through xturn (channels, 2 clients × 100 messages)",
            "turnutils_uclient, channels",
            "turnutils_uclient",
            [
                &UCLIENT_TO_PEER[..],
                &["-n", "100", "-m", "2"],
                &UCLIENT_TIMING,
            ]
            .concat(),
        ),
        (
            "demo: xturnctl ping through xturn (channel mode, 200 datagrams)",
            "xturnctl ping, channel",
            &xturnctl,
            vec![
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
        ),
        (
            "demo: a Send-indication session (not ChannelData: relayed in userspace)",
            "turnutils_uclient, Send indications",
            "turnutils_uclient",
            [
                &["-s", "-c"][..],
                &UCLIENT_TO_PEER,
                &["-n", "50", "-m", "1"],
                &UCLIENT_TIMING,
            ]
            .concat(),
        ),
    ];
    let mut rows = Vec::new();
    let mut last = Relayed::read()?;
    for (title, label, program, args) in &sessions {
        sh::step(title);
        sh::run(netns_cmd(NAMES.client, program, args))?;
        let now = Relayed::read()?;
        rows.push((*label, now.minus(&last)));
        last = now;
    }
    let interfaces = last.interfaces;

    sh::step("demo: stopping xturnd");
    let output = xturnd.stop()?;
    let log = String::from_utf8_lossy(&output);
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();

    eprintln!("\nWhere xturn relayed each datagram (datagrams to the peer / to the client):\n");
    eprintln!("| traffic | in the kernel | in userspace |");
    eprintln!("|---|---|---|");
    for (what, r) in &rows {
        eprintln!(
            "| {what} | {} / {} | {} / {} |",
            r.kernel_to_peer, r.kernel_to_client, r.user_to_peer, r.user_to_client
        );
    }
    eprintln!("\nData plane per interface:");
    for line in &interfaces {
        eprintln!("  {line}");
    }
    if !problems.is_empty() {
        eprintln!("\nxturnd warned:");
        for line in &problems {
            eprintln!("  {line}");
        }
    }
    let channels = &rows[0].1;
    if channels.kernel_to_peer == 0 || channels.user_to_peer != 0 {
        bail!("ChannelData was not relayed in the kernel; xturnd's log:\n{log}");
    }
    Ok(())
}

/// Datagrams relayed so far, from xturnd's metrics.
#[derive(Debug, Default, Clone)]
struct Relayed {
    kernel_to_peer: u64,
    kernel_to_client: u64,
    user_to_peer: u64,
    user_to_client: u64,
    /// `interface: mode (why)` for each interface.
    interfaces: Vec<String>,
}

impl Relayed {
    fn read() -> Result<Relayed> {
        let text = scrape_metrics()?;
        let mut r = Relayed::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: u64 = value.parse::<f64>().map_or(0, |v| v as u64);
            if let Some(labels) = series.strip_prefix("xturn_relayed_packets_total") {
                let user = labels.contains("dataplane=\"userspace\"");
                match (user, labels.contains("to_peer")) {
                    (true, true) => r.user_to_peer += value,
                    (true, false) => r.user_to_client += value,
                    (false, true) => r.kernel_to_peer += value,
                    (false, false) => r.kernel_to_client += value,
                }
            } else if let Some(labels) = series.strip_prefix("xturn_dataplane_interface_info") {
                let field = |key: &str| {
                    labels
                        .split(&format!("{key}=\""))
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or("")
                        .to_owned()
                };
                r.interfaces.push(format!(
                    "{}: {} ({})",
                    field("interface"),
                    field("mode"),
                    field("why")
                ));
            }
        }
        Ok(r)
    }

    fn minus(&self, before: &Relayed) -> Relayed {
        Relayed {
            kernel_to_peer: self.kernel_to_peer - before.kernel_to_peer,
            kernel_to_client: self.kernel_to_client - before.kernel_to_client,
            user_to_peer: self.user_to_peer - before.user_to_peer,
            user_to_client: self.user_to_client - before.user_to_client,
            interfaces: self.interfaces.clone(),
        }
    }
}

/// `GET /metrics` from inside the relay namespace.
fn scrape_metrics() -> Result<String> {
    crate::topology::metrics(NAMES.relay, METRICS)
}

fn wait_for_stun(bin: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let probe = netns_cmd(
            NAMES.client,
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
