//! `cargo xtask soak`: minutes of churn next to live flows, once with the kernel path (`auto`:
//! TC on these default-settings veths) and once in userspace, on the benchmark's topology left
//! as the kernel makes it.
//!
//! Per data plane: 16 live allocations carry ChannelData at 2 000/s both ways for the whole
//! round (they ask for a 600 s lifetime; the round stays within their permissions' 300 s).
//! Meanwhile churners come and go: every round of churn makes 200 allocations with 2 channels
//! each, sends on them for 2 s and deletes them; every other round is killed with SIGKILL once
//! its channels are bound, so its allocations expire (the relay runs with a 20 s default
//! lifetime). The relay's resident memory and open descriptors are sampled after every round.
//! At the end the live flows must have lost nothing, memory and descriptors must be where they
//! were once churn had run 45 s (flat: the transaction cache is full by then), and, once
//! everything has ended, no allocation and no kernel channel entry may be left.
use std::{fs, path::PathBuf, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{LISTENER, NAMES, PEER, Proc, USER, output::LoadOut, parse_json, xturnd_args};
use crate::{
    setup, sh,
    topology::{Topology, metric, metrics},
};

const METRICS: &str = "198.18.1.1:9100";
/// Live allocations and their rate (ChannelData/s, all together, each way).
const LIVE: usize = 16;
const LIVE_RATE: u64 = 2_000;
/// One churn round: allocations, channels each, seconds of traffic.
const CHURN_ALLOCATIONS: usize = 200;
const CHURN_CHANNELS: usize = 2;
const CHURN_SECONDS: u64 = 2;
/// The relay's default allocation lifetime: killed churners' allocations expire after it.
const DEFAULT_LIFETIME_S: u64 = 20;
/// Longest round: the live flows' permissions last 300 s and are not refreshed.
const MAX_ROUND_S: u64 = 270;
/// Memory may grow this much from the baseline to the end (allocator caches), descriptors not
/// at all.
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// The baseline is taken once churn has run this long: responses stay in the transaction cache
/// for 40 s, so from then on the cache is as full as it gets.
const BASELINE_AFTER: Duration = Duration::from_secs(45);

pub struct Options {
    pub minutes: u64,
}

/// One data plane's round.
struct Round {
    dataplane: &'static str,
    seconds: u64,
    churn_rounds: usize,
    killed_rounds: usize,
    live_sent: u64,
    live_received: u64,
    /// (RSS KiB, open descriptors): the baseline (after [`BASELINE_AFTER`] of churn), at the end
    /// of the churn, the most.
    first: (u64, u64),
    baseline_taken: bool,
    last: (u64, u64),
    peak: (u64, u64),
    /// After everything ended: allocations and kernel channel entries left.
    allocations_left: u64,
    kernel_left: u64,
    kernel_installs: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    let total = opts.minutes.clamp(4, 9) * 60;
    let seconds = (total / 2).min(MAX_ROUND_S);
    setup::run()?;
    sh::step("soak: building xturnd, xturnctl and xturn-bench (release)");
    let bin = sh::build_release(&["relay-user", "xturnctl", "xturn-bench"])?;
    let run_dir = PathBuf::from("/tmp/xturn-soak-run");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let mut rounds = Vec::new();
    for dataplane in ["auto", "userspace"] {
        sh::step(&format!("soak: {dataplane}, {seconds} s"));
        rounds.push(round(&bin, &run_dir, dataplane, seconds)?);
    }
    let report = markdown(&rounds);
    println!("{report}");
    let out = sh::root().join("bench/results/soak.md");
    fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("soak: wrote {}", out.display());
    let failed: Vec<String> = rounds.iter().flat_map(verdicts).collect();
    if !failed.is_empty() {
        bail!("soak failed:\n- {}", failed.join("\n- "));
    }
    Ok(())
}

fn round(
    bin: &std::path::Path,
    dir: &std::path::Path,
    dataplane: &'static str,
    seconds: u64,
) -> Result<Round> {
    let _topology = Topology::create(&NAMES, false, false)?;
    let cpus = format!(
        "0-{}",
        thread::available_parallelism().map_or(0, |n| n.get() - 1)
    );
    let cpus = cpus.as_str();
    let path = |name: &str| bin.join(name).to_string_lossy().into_owned();
    let _echo = Proc::spawn(
        NAMES.peer,
        cpus,
        &path("xturn-bench"),
        &[
            "echo",
            "--bind",
            PEER,
            "--ports",
            "2",
            "--max-seconds",
            "900",
        ],
        &dir.join(format!("{dataplane}-echo")),
    )?;
    let lifetime = DEFAULT_LIFETIME_S.to_string();
    let relay_args = xturnd_args(
        dataplane,
        &[
            "--metrics-listen",
            METRICS,
            "--default-lifetime-secs",
            &lifetime,
        ],
    );
    let relay_args: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    let relay = Proc::spawn(
        NAMES.relay,
        cpus,
        &path("xturnd"),
        &relay_args,
        &dir.join(format!("{dataplane}-relay")),
    )?;
    wait_for_metrics(&relay)?;
    let pid = relay.pid();
    let load = |name: &str, args: &[&str]| -> Result<Proc> {
        let mut all = vec!["load", "--server", LISTENER, "--peer", PEER, "--user", USER];
        all.extend_from_slice(args);
        Proc::spawn(
            NAMES.client,
            cpus,
            &path("xturn-bench"),
            &all,
            &dir.join(name),
        )
    };
    let live_phase = format!("rate:100:{seconds}:{LIVE_RATE}");
    let live_allocations = LIVE.to_string();
    let live = load(
        &format!("{dataplane}-live"),
        &[
            "--allocations",
            &live_allocations,
            "--lifetime",
            "600",
            "--phase",
            &live_phase,
            "--max-seconds",
            "600",
        ],
    )?;
    let started = std::time::Instant::now();
    let churn_allocations = CHURN_ALLOCATIONS.to_string();
    let churn_channels = CHURN_CHANNELS.to_string();
    let churn_phase = format!("rate:100:{CHURN_SECONDS}:2000");
    // A killed round sends longer, so the kill falls in its traffic, after its binds.
    let killed_phase = format!("rate:100:{}:2000", 4 * CHURN_SECONDS);
    let (mut churn_rounds, mut killed_rounds) = (0, 0);
    let mut first = None;
    let mut last = (0, 0);
    let mut peak = (0, 0);
    // Churn until 30 s before the live flows end (so killed churners expire meanwhile).
    let churn_until = Duration::from_secs(seconds.saturating_sub(DEFAULT_LIFETIME_S + 10));
    while started.elapsed() < churn_until {
        let kill = churn_rounds % 2 == 1;
        let name = format!("{dataplane}-churn-{churn_rounds}");
        let churner = load(
            &name,
            &[
                "--allocations",
                &churn_allocations,
                "--channels",
                &churn_channels,
                "--phase",
                if kill { &killed_phase } else { &churn_phase },
                "--max-seconds",
                "120",
            ],
        )?;
        if kill {
            // Killed in its traffic phase (its channels bound): nothing is deleted.
            thread::sleep(Duration::from_secs(2 * CHURN_SECONDS + 1));
            drop(churner);
            killed_rounds += 1;
        } else {
            churner
                .wait(Duration::from_secs(120))
                .with_context(|| format!("churn round {churn_rounds}"))?;
        }
        churn_rounds += 1;
        let sample = usage(pid);
        peak = (peak.0.max(sample.0), peak.1.max(sample.1));
        if first.is_none() && started.elapsed() >= BASELINE_AFTER {
            first = Some(sample);
        }
        last = sample;
    }
    // The killed churners' allocations expire; the live flows end and delete theirs.
    let (stdout, stderr) = live
        .wait(Duration::from_secs(seconds + 120))
        .context("the live flows")?;
    if stdout.trim().is_empty() {
        bail!(
            "the live flows' generator printed nothing: {}",
            stderr.trim()
        );
    }
    let out: LoadOut = parse_json(&stdout, "the live flows")?;
    let (live_sent, live_received) = out
        .phases
        .iter()
        .fold((0, 0), |(s, r), p| (s + p.sent, r + p.received));
    let end = usage(pid);
    last = (last.0.max(end.0), end.1);
    thread::sleep(Duration::from_secs(DEFAULT_LIFETIME_S + 5));
    let text = metrics(NAMES.relay, METRICS)?;
    let kernel = |name: &str| {
        metric(&text, &format!("xturn_tc_{name}")) + metric(&text, &format!("xturn_xdp_{name}"))
    };
    let result = Round {
        dataplane,
        seconds,
        churn_rounds,
        killed_rounds,
        live_sent,
        live_received,
        first: first.unwrap_or(last),
        baseline_taken: first.is_some(),
        last,
        peak,
        allocations_left: metric(&text, "stunner_allocations_active"),
        kernel_left: kernel("bindings_installed"),
        kernel_installs: kernel("binding_installs_total"),
    };
    relay.stop()?;
    Ok(result)
}

/// Waits until xturnd serves its metrics.
fn wait_for_metrics(relay: &Proc) -> Result<()> {
    for _ in 0..100 {
        if metrics(NAMES.relay, METRICS).is_ok() {
            return Ok(());
        }
        if relay.exited() {
            let (_, err) = relay.output();
            bail!("xturnd exited at start: {}", err.trim());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("xturnd served no metrics within 10 s")
}

/// The process's resident memory (KiB) and open descriptors.
fn usage(pid: u32) -> (u64, u64) {
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// What failed in a round.
fn verdicts(r: &Round) -> Vec<String> {
    let mut failed = Vec::new();
    if r.live_received < r.live_sent || r.live_sent == 0 {
        failed.push(format!(
            "{}: the live flows lost {} of {} datagrams",
            r.dataplane,
            r.live_sent.saturating_sub(r.live_received),
            r.live_sent
        ));
    }
    if r.last.0 > r.first.0 + RSS_SLACK_KIB {
        failed.push(format!(
            "{}: memory grew from {} to {} KiB",
            r.dataplane, r.first.0, r.last.0
        ));
    }
    if r.last.1 > r.first.1 {
        failed.push(format!(
            "{}: descriptors grew from {} to {}",
            r.dataplane, r.first.1, r.last.1
        ));
    }
    if r.allocations_left > 0 || r.kernel_left > 0 {
        failed.push(format!(
            "{}: {} allocations and {} kernel channel entries left at the end",
            r.dataplane, r.allocations_left, r.kernel_left
        ));
    }
    if r.churn_rounds < 2 || !r.baseline_taken {
        failed.push(format!(
            "{}: too short to churn past the baseline (give --minutes 4 or more)",
            r.dataplane
        ));
    }
    failed
}

fn markdown(rounds: &[Round]) -> String {
    let mut s = String::from(
        "| data plane | seconds | churn rounds (killed, left to expire) | live flows: sent / lost | relay RSS KiB: after 45 s of churn → end (peak) | open descriptors: after 45 s of churn → end (peak) | left at the end: allocations, kernel channel entries (installs during the round) | verdict |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rounds {
        let failed = verdicts(r);
        s.push_str(&format!(
            "| {} | {} | {} ({}) | {} / {} | {} → {} ({}) | {} → {} ({}) | {}, {} ({}) | {} |\n",
            r.dataplane,
            r.seconds,
            r.churn_rounds,
            r.killed_rounds,
            r.live_sent,
            r.live_sent.saturating_sub(r.live_received),
            r.first.0,
            r.last.0,
            r.peak.0,
            r.first.1,
            r.last.1,
            r.peak.1,
            r.allocations_left,
            r.kernel_left,
            r.kernel_installs,
            if failed.is_empty() {
                "flat, nothing lost, nothing left"
            } else {
                "FAILED"
            },
        ));
    }
    s
}
