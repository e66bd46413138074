//! The `--threads` scaling step: xturnd's userspace data plane with `--threads 1` on one core,
//! then `--threads 2` on two, and coturn on one core, under a load side that takes almost no CPU
//! (so the relay is the limit: the userspace efficiency target is also measured here).
//!
//! On a machine with few CPUs a load generator needs a core of its own, so the relay cannot be
//! given every core while it is driven. Here the load side is two reflectors (`xturn-reflector`,
//! a TC program at the ingress of `xtb-c0` and `xtb-p0`) that send each of the relay's datagrams
//! straight back. The generator makes the allocations, puts a fixed number of ChannelData in
//! circulation once (a `reflected` phase) and sleeps; the datagrams then go client → relay →
//! peer → relay → client by themselves, as many in flight as the closed-loop phases allow. The
//! UDP datagrams the relay's namespace received over the window (`Udp InDatagrams`: each relayed
//! datagram is read once, and each datagram of a UDP GSO buffer counts) give the rate, in the
//! same unit as the other phases: relayed datagrams in both directions per second.
//!
//! The reflectors' own work (the program, and the veth transmit back) runs in the softirq of the
//! relay's own sends, on the relay's cores, the same per datagram in every round; its program
//! time is reported.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::*;

/// Allocations of a round: enough flows that `SO_REUSEPORT` spreads clients over two listener
/// sockets evenly (16 would split unevenly often).
const ALLOCATIONS: usize = 64;
/// Datagrams in circulation: the closed-loop phases' window.
const IN_FLIGHT: usize = WINDOW;
const PAYLOAD: usize = 100;
/// Rounds of each setting, alternating (1, 2, 1, 2, ...): the ratio is of their medians, so one
/// round disturbed by the shared machine does not decide it.
const REPEATS: usize = 3;
/// Each round's measuring window.
const SECONDS: f64 = 2.0;

/// The step's result.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadScaling {
    pub allocations: usize,
    pub in_flight: usize,
    pub payload: usize,
    pub seconds: f64,
    /// Every round, in the order they ran.
    pub rounds: Vec<ThreadRound>,
}

/// Who relays in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    /// `xturnd --dataplane userspace --threads N`.
    Xturnd,
    /// coturn on one core (`--relay-threads 0`), for the efficiency target at the relay's limit.
    Coturn,
}

/// One round: a relay and its thread count.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadRound {
    pub relay: Relay,
    pub threads: usize,
    /// The CPUs the relay (process and its interfaces' NAPI threads) was pinned to.
    pub cpus: String,
    /// Relayed datagrams per second, both directions.
    pub kpps: f64,
    /// The relay's CPU time over the window, in cores.
    pub relay_cores_used: Option<f64>,
    /// Datagrams the reflectors sent back over the whole round, and their program's mean run
    /// time per run (`kernel.bpf_stats_enabled`).
    pub reflected: u64,
    pub reflector_ns_per_run: Option<f64>,
}

impl ThreadScaling {
    /// The median rate of xturnd's rounds with `threads`.
    pub fn median_kpps(&self, threads: usize) -> Option<f64> {
        self.median_kpps_of(Relay::Xturnd, threads)
    }

    /// The median rate of `relay`'s rounds with `threads`.
    pub fn median_kpps_of(&self, relay: Relay, threads: usize) -> Option<f64> {
        median(
            self.rounds
                .iter()
                .filter(|r| r.relay == relay && r.threads == threads)
                .map(|r| r.kpps)
                .collect(),
        )
    }

    /// `--threads 2` over `--threads 1`: the ratio of their median rates.
    pub fn ratio(&self) -> Option<f64> {
        match (self.median_kpps(2), self.median_kpps(1)) {
            (Some(two), Some(one)) if one > 0.0 => Some(two / one),
            _ => None,
        }
    }

    /// xturnd's `--threads 1` over coturn, both on one core and at its limit: the ratio of
    /// their median rates, which is the ratio of packets per relay CPU-second when both rounds
    /// used their core fully (the report shows the cores used).
    pub fn coturn_ratio(&self) -> Option<f64> {
        match (self.median_kpps(1), self.median_kpps_of(Relay::Coturn, 1)) {
            (Some(x), Some(c)) if c > 0.0 => Some(x / c),
            _ => None,
        }
    }

    /// The median relay CPU time per relayed datagram (µs) of `relay`'s rounds with `threads`.
    pub fn median_us_per_packet(&self, relay: Relay, threads: usize) -> Option<f64> {
        median(
            self.rounds
                .iter()
                .filter(|r| r.relay == relay && r.threads == threads && r.kpps > 0.0)
                .filter_map(|r| r.relay_cores_used.map(|cores| cores / r.kpps * 1e3))
                .collect(),
        )
    }
}

/// The median of `values` (the mean of the middle two when their number is even).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[derive(Debug, Deserialize)]
struct ReflectorOut {
    counters: ReflectorCounts,
}

#[derive(Debug, Deserialize)]
struct ReflectorCounts {
    reflected: u64,
    runs: u64,
    run_time_ns: u64,
}

/// The relay's interfaces out of threaded NAPI for the step, back in it on drop.
///
/// Threaded NAPI is there to charge each side's receive work to its own threads; here the load
/// side has no core, only throughput counts, and a NAPI thread on the other CPU than the relay
/// thread that feeds it costs a cross-CPU wake-up (an IPI, a hypervisor exit on this VM) per poll
/// that one CPU never pays. Without it the receive work runs in the softirq of the CPU that
/// raised it, as a NIC's queue's does on its CPU: the same work in both settings.
struct SoftirqNapi;

impl SoftirqNapi {
    fn set(on: bool) -> Result<()> {
        for ifname in RELAY_IFS {
            let threaded = format!("echo {} > /sys/class/net/{ifname}/threaded", u8::from(on));
            run_quiet(netns_cmd(NAMES.relay, "sh", &["-c", &threaded]))?;
        }
        Ok(())
    }

    fn enter() -> Result<SoftirqNapi> {
        SoftirqNapi::set(false)?;
        Ok(SoftirqNapi)
    }
}

impl Drop for SoftirqNapi {
    fn drop(&mut self) {
        if let Err(e) = SoftirqNapi::set(true) {
            eprintln!("bench: threaded NAPI back on for {RELAY_IFS:?} failed: {e:#}");
        }
    }
}

/// Runs the three settings, alternating: xturnd with one thread, with two, coturn with one.
pub(super) fn thread_scaling(ctx: &Ctx) -> Result<ThreadScaling> {
    let _napi = SoftirqNapi::enter()?;
    let _tx_checksum = LoadTxChecksum::on(&LOAD_ENDS)?;
    let seconds = SECONDS;
    let mut rounds = Vec::new();
    for _ in 0..REPEATS {
        for (relay, threads) in [(Relay::Xturnd, 1), (Relay::Xturnd, 2), (Relay::Coturn, 1)] {
            rounds.push(
                round(ctx, relay, threads, seconds)
                    .with_context(|| format!("a {relay:?} round with {threads} thread(s)"))?,
            );
        }
    }
    Ok(ThreadScaling {
        allocations: ALLOCATIONS,
        in_flight: IN_FLIGHT,
        payload: PAYLOAD,
        seconds,
        rounds,
    })
}

fn round(ctx: &Ctx, relay: Relay, threads: usize, seconds: f64) -> Result<ThreadRound> {
    let bin = |name: &str| ctx.bin.join(name).to_string_lossy().into_owned();
    // One round: the relay on the last CPU; two: on every CPU (the load side needs none).
    let relay_cpus: Vec<usize> = if threads == 1 {
        ctx.cores.relay.clone()
    } else {
        let mut all: Vec<usize> = ctx
            .cores
            .load
            .iter()
            .chain(&ctx.cores.relay)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    if relay_cpus.len() < threads {
        bail!(
            "{threads} threads need {threads} CPUs; this machine has {}",
            relay_cpus.len()
        );
    }
    let relay_list = Cores::list(&relay_cpus);
    let load_list = Cores::list(&ctx.cores.load);
    // The relay's interfaces poll in softirq here (`SoftirqNapi`); the load side's threads stay
    // off the relay's core.
    for pid in napi_threads(&LOAD_IFS) {
        run_quiet(sh::cmd("taskset", &["-pc", &load_list, &pid.to_string()]))?;
    }
    let key = match relay {
        Relay::Xturnd => format!("threads-{threads}"),
        Relay::Coturn => "threads-coturn".to_owned(),
    };

    let reflectors = [
        (NAMES.client, LOAD_IFS[0], vec!["--channel-data"]),
        (NAMES.peer, LOAD_IFS[1], vec!["--port", "4000"]),
    ]
    .into_iter()
    .map(|(ns, interface, extra)| {
        let mut args = vec!["--interface", interface, "--max-seconds", "300"];
        args.extend(extra);
        let log = ctx.run_dir.join(format!("{key}-reflector-{interface}"));
        let proc = Proc::spawn(ns, &load_list, &bin("xturn-reflector"), &args, &log)?;
        proc.wait_for_stderr("ready", Duration::from_secs(10))?;
        Ok(proc)
    })
    .collect::<Result<Vec<_>>>()?;

    let (program, args) = match relay {
        Relay::Xturnd => (
            bin("xturnd"),
            xturnd_args("userspace", &["--threads", &threads.to_string()]),
        ),
        Relay::Coturn => ("turnserver".to_owned(), coturn_args(ctx)),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay_proc = Proc::spawn(
        NAMES.relay,
        &relay_list,
        &program,
        &args,
        &ctx.run_dir.join(format!("{key}-relay")),
    )?;
    wait_for_stun(ctx, &relay_proc)?;

    let mut load = load_args(&[
        "--user",
        USER,
        "--allocations",
        &ALLOCATIONS.to_string(),
        "--setup-concurrency",
        &ALLOCATIONS.to_string(),
        "--phase",
        &format!("reflected:{PAYLOAD}:{seconds}:{IN_FLIGHT}"),
        "--warmup-ms",
        "0",
        "--relay-cpus",
        &relay_list,
        "--load-cpus",
        &load_list,
        // Each client's Allocate and datagrams from one of the relay's CPUs in turn, as a
        // multi-queue NIC would deliver them (the veths deliver on the sending CPU).
        "--spread-cpus",
        &relay_list,
        "--max-seconds",
        "60",
    ]);
    load.extend(["--relay-pid".to_owned(), relay_proc.pid().to_string()]);
    for pid in napi_threads(&RELAY_IFS) {
        load.extend(["--relay-pid".to_owned(), pid.to_string()]);
    }
    eprintln!(
        "bench: {key}: {ALLOCATIONS} allocations, {IN_FLIGHT} datagrams reflected for {seconds} s, \
         relay on CPU {relay_list}"
    );
    let out = run_load(ctx, &key, ALLOCATIONS, &load, 90);
    relay_proc.stop()?;
    let mut reflected = 0;
    let (mut runs, mut run_ns) = (0, 0);
    for proc in reflectors {
        let (stdout, _) = proc.stop()?;
        let r: ReflectorOut = parse_json(&stdout, "xturn-reflector")?;
        reflected += r.counters.reflected;
        runs += r.counters.runs;
        run_ns += r.counters.run_time_ns;
    }
    let out = out?;
    let phase = out
        .phases
        .first()
        .context("the generator reported no phase")?;
    let received = phase
        .relay_received
        .context("the generator reported no datagrams received by the relay")?;
    let window = phase.window_s.max(1e-9);
    Ok(ThreadRound {
        relay,
        threads,
        cpus: relay_list,
        kpps: received as f64 / window / 1e3,
        relay_cores_used: phase.cpu.relay_s().map(|s| s / window),
        reflected,
        reflector_ns_per_run: (runs > 0).then(|| run_ns as f64 / runs as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(relay: Relay, threads: usize, kpps: f64, cores: f64) -> ThreadRound {
        ThreadRound {
            relay,
            threads,
            cpus: String::new(),
            kpps,
            relay_cores_used: Some(cores),
            reflected: 0,
            reflector_ns_per_run: None,
        }
    }

    #[test]
    fn ratios_are_of_each_settings_medians() {
        let t = ThreadScaling {
            allocations: 64,
            in_flight: 256,
            payload: 100,
            seconds: 2.0,
            rounds: vec![
                round(Relay::Xturnd, 1, 900.0, 1.0),
                round(Relay::Xturnd, 2, 1700.0, 2.0),
                round(Relay::Coturn, 1, 500.0, 1.0),
                round(Relay::Xturnd, 1, 1000.0, 1.0),
                round(Relay::Xturnd, 2, 1900.0, 2.0),
                round(Relay::Coturn, 1, 450.0, 1.0),
                round(Relay::Xturnd, 1, 400.0, 1.0),
                round(Relay::Xturnd, 2, 1800.0, 2.0),
                round(Relay::Coturn, 1, 400.0, 0.8),
            ],
        };
        assert_eq!(t.median_kpps(1), Some(900.0));
        assert_eq!(t.median_kpps_of(Relay::Coturn, 1), Some(450.0));
        assert_eq!(t.ratio(), Some(2.0));
        assert_eq!(t.coturn_ratio(), Some(2.0));
        // 1 core / 900 kpps; coturn: 1/500, 1/450, 0.8/400 µs → the middle one.
        let us = |relay| {
            t.median_us_per_packet(relay, 1)
                .map(|v| (v * 1e4).round() / 1e4)
        };
        assert_eq!(us(Relay::Xturnd), Some(1.1111));
        assert_eq!(us(Relay::Coturn), Some(2.0));
    }
}
