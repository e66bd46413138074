//! What the benchmark's tools print (xturn-bench load and echo), and the results measured from it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

// ---- what xturn-bench prints -------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
pub(super) struct LoadOut {
    pub(super) setup: Option<SetupOut>,
    pub(super) phases: Vec<PhaseOut>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct SetupOut {
    pub(super) allocated: usize,
    pub(super) allocate_s: f64,
    pub(super) failed: usize,
    pub(super) allocations_per_s: f64,
    pub(super) first_error: Option<String>,
    pub(super) cpu: CpuOut,
    #[serde(default)]
    pub(super) channels_bound: usize,
    #[serde(default)]
    pub(super) bind_s: f64,
    #[serde(default)]
    pub(super) relay_rss_kib: [Option<u64>; 3],
    /// Requests the load generator sent again for want of an answer (`--setup-only`).
    #[serde(default)]
    pub(super) retransmissions: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct PhaseOut {
    pub(super) id: u8,
    pub(super) kind: String,
    pub(super) offered_pps: Option<u64>,
    pub(super) payload: usize,
    pub(super) allocations: usize,
    pub(super) duration_s: f64,
    pub(super) window_s: f64,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) attempts: u32,
    /// `reflected` phases: UDP datagrams the relay's namespace received in the window.
    #[serde(default)]
    pub(super) relay_received: Option<u64>,
    pub(super) rtt: RttOut,
    pub(super) cpu: CpuOut,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RttOut {
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
    pub(super) p999_us: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct CpuOut {
    pub(super) relay_threads_s: Option<f64>,
    pub(super) relay_others: f64,
    pub(super) load_others: f64,
    pub(super) relay_cores_busy_s: f64,
    pub(super) load_cores_busy_s: f64,
    pub(super) load_cores: usize,
}

impl CpuOut {
    /// The relay's CPU: the run time of its threads (process and the NAPI threads of its
    /// interfaces, where its share of the network stack and any XDP program run). This kernel
    /// has no IRQ time accounting, so interrupts and softirqs are in the run time of the thread
    /// they interrupted; the irq/softirq ticks of `/proc/stat` are not added (they would count
    /// the same time twice) but kept in the JSON.
    pub(super) fn relay_s(&self) -> Option<f64> {
        self.relay_threads_s
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct EchoOut {
    pub(super) phases: BTreeMap<u8, EchoCounts>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(super) struct EchoCounts {
    pub(super) received: u64,
    pub(super) echoed: u64,
}

// ---- results -----------------------------------------------------------------------------

/// One phase of one contender, both directions.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub contender: String,
    pub allocations: usize,
    /// Channels per allocation.
    pub channels: usize,
    pub payload: usize,
    /// "rate" or "max".
    pub kind: String,
    pub offered_pps: Option<u64>,
    pub duration_s: f64,
    /// ChannelData the client sent.
    pub sent: u64,
    /// Relayed client → peer (what the echo received).
    pub to_peer: u64,
    /// Relayed peer → client (echoes the client received).
    pub to_client: u64,
    /// Relayed datagrams per second, both directions.
    pub relayed_pps: f64,
    /// Relayed payload (ChannelData data) in Gbit/s, both directions.
    pub gbps: f64,
    /// Round-trip loss: 1 - echoes received / sent.
    pub loss: f64,
    /// Client → peer: 1 - received by the echo / sent.
    pub loss_to_peer: f64,
    /// Peer → client: 1 - received by the client / echoed.
    pub loss_to_client: f64,
    pub relay_cpu_s: Option<f64>,
    /// Relay CPU seconds per million relayed datagrams.
    pub cpu_s_per_mpkt: Option<f64>,
    /// Relay CPU / sending time: the share of its core the relay used.
    pub relay_core_share: Option<f64>,
    /// How busy the load cores were (ticks from /proc/stat), 0..=1.
    pub load_core_busy: f64,
    /// How busy the relay core was (ticks, whoever ran there), 0..=1.
    pub relay_core_busy: f64,
    /// The share of the relay core that others used (busy ticks beyond the relay's own time,
    /// e.g. another build on the shared machine), 0..=1.
    pub relay_core_others: f64,
    /// The same for the load cores (beyond the generator, the echo and their NAPI threads).
    pub load_core_others: f64,
    /// Runs of the phase (more than one when others disturbed it; the least disturbed counts).
    pub attempts: u32,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub rtt_p999_us: Option<f64>,
}

impl Measurement {
    /// Relayed datagrams per relay CPU-second.
    pub fn pkts_per_cpu_s(&self) -> Option<f64> {
        self.cpu_s_per_mpkt.filter(|c| *c > 0.0).map(|c| 1e6 / c)
    }
}

/// Allocation setup of one contender.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    pub allocations: usize,
    pub failed: usize,
    pub allocations_per_s: f64,
    pub relay_cpu_us_per_allocation: Option<f64>,
    /// The share of its core the relay used while the allocations were made.
    pub relay_core_share: Option<f64>,
    /// How busy the load cores were meanwhile.
    pub load_core_busy: f64,
    /// Requests sent again for want of an answer: a relay that drops requests under the load
    /// pays for them here (and is slower for it).
    pub retransmissions: Option<u64>,
    pub first_error: Option<String>,
    /// Every round's allocations per second, in the order they ran; the figures above are the
    /// median round's.
    pub rounds_per_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContenderResult {
    pub key: String,
    pub label: String,
    pub command: String,
    pub measurements: Vec<Measurement>,
    pub setup: Option<SetupResult>,
    /// The scale run's setup and memory, when there was one.
    pub scale: Option<ScaleSetup>,
    /// Where the datagrams went, from the relay's own counters.
    pub check: Option<String>,
    /// How it ran differently from the others (cores shared with the load side).
    pub note: Option<String>,
    pub error: Option<String>,
}

/// How the scale run's allocations and channels were made, and the relay's memory.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleSetup {
    pub allocations: usize,
    pub channels: usize,
    pub allocations_per_s: f64,
    pub channel_binds_per_s: f64,
    /// The relay's `VmRSS` (KiB) before the handshakes, after the allocations, after the
    /// channel bindings.
    pub relay_rss_kib: [Option<u64>; 3],
}

impl ScaleSetup {
    /// Resident memory the relay added per allocation (allocations only), KiB.
    pub fn kib_per_allocation(&self) -> Option<f64> {
        let [before, allocated, _] = self.relay_rss_kib;
        Some((allocated?.saturating_sub(before?)) as f64 / self.allocations.max(1) as f64)
    }

    /// Resident memory per allocation with its channels, KiB.
    pub fn kib_per_allocation_with_channels(&self) -> Option<f64> {
        let [before, _, bound] = self.relay_rss_kib;
        Some((bound?.saturating_sub(before?)) as f64 / self.allocations.max(1) as f64)
    }
}

/// What `xturn-kernel-scale` printed: the kernel program's own time per datagram by the number
/// of bindings in its maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelScale {
    pub program: String,
    pub payload: usize,
    pub capacity: u32,
    pub points: Vec<KernelScalePoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelScalePoint {
    pub bindings: u32,
    pub install_s: f64,
    pub to_peer_ns: f64,
    pub to_peer_p99_ns: f64,
    pub to_client_ns: f64,
    pub to_client_p99_ns: f64,
    pub runs: usize,
    /// Reading every binding's counters (a scrape), ns per binding: batch lookups, and a
    /// lookup per map entry.
    pub read_batch_ns: f64,
    pub read_each_ns: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quick: bool,
    pub facts: Facts,
    pub plan: Plan,
    pub contenders: Vec<ContenderResult>,
    /// `--threads 1` against `--threads 2` under a reflected load.
    pub thread_scaling: Option<ThreadScaling>,
    /// Why there is none, when the step failed.
    pub thread_scaling_error: Option<String>,
    /// The kernel program's scale figures (full runs).
    pub kernel_scale: Option<KernelScale>,
    /// Why there are none, when the step failed.
    pub kernel_scale_error: Option<String>,
    pub elapsed_s: f64,
}
