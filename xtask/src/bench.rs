//! `cargo xtask bench`: every contender on the same topology, with the same traffic, in one run.
//!
//! ```text
//!  xturn-bench-client        xturn-bench-relay                     xturn-bench-peer
//!  xtb-c0 198.18.1.2  ──  xtb-r0 198.18.1.1 (listener :3478)
//!                         xtb-r1 198.18.2.1 (relayed)        ──  xtb-p0 198.18.2.2 (echo :4000)
//! ```
//!
//! The relay (whichever contender) and the NAPI threads of `xtb-r0`/`xtb-r1` are pinned to the
//! last core; the load generator, the echo and the NAPI threads of `xtb-c0`/`xtb-p0` to the
//! others. Every veth end has GRO on (NAPI) in threaded mode, so the receive work of each
//! namespace runs in its own kernel threads and can be charged to whoever owns it; the outer
//! ends have TX checksum offload off (see docs/architecture.md, "Running on veths"). The
//! contenders and what is measured are described in docs/benchmarks.md. Namespaces and
//! processes are removed at the end, also on failure.
mod chart;
mod checks;
mod output;
mod procs;
mod report;
pub mod soak;
mod threads;

use checks::*;
use output::*;
use procs::*;
use threads::{ThreadScaling, thread_scaling};

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    setup, sh,
    topology::{CLIENT_IP, LISTENER_IP, Names, PEER_IP, RELAY_IP, Topology, netns_cmd, run_quiet},
};

const NAMES: Names = Names::BENCH;

const LISTENER: &str = "198.18.1.1:3478";
const PEER: &str = "198.18.2.2:4000";
const REALM: &str = "bench.xturn";
const USER: &str = "bench:bench-password";

const RELAY_IFS: [&str; 2] = ["xtb-r0", "xtb-r1"];
/// Source addresses of the setup-rate round's clients: 8 in each of 198.18.4.0/24 to
/// 198.18.7.0/24 (from .10 on), added to the client's end (the relay reaches that /22 on-link
/// through `xtb-r0`). Real clients come from many addresses; from one, the relay's reflection
/// defence (unauthenticated answers paid from a byte budget per source address and per /24,
/// docs/security.md) would meter 256 handshakes at once and leave the relay idle while they
/// wait to retransmit. 32 addresses give each source 8 handshakes in flight, well inside its
/// burst; four /24s give each network 64, whose 401s not yet paid back by their authenticated
/// Allocates owe about 6 KiB of its 32 KiB burst (256 in one /24 would owe about 24). The
/// networks are also clear of the budget the other rounds' clients (198.18.1.2) spent just
/// before.
const SETUP_CLIENT_IPS: u8 = 32;
const SETUP_CLIENT_NET: &str = "198.18.4.0/22";

fn setup_client_ips() -> impl Iterator<Item = String> {
    (0..SETUP_CLIENT_IPS).map(|i| format!("198.18.{}.{}", 4 + i % 4, 10 + i / 4))
}
const LOAD_IFS: [&str; 2] = ["xtb-c0", "xtb-p0"];

/// The offered rate of the fixed-rate phases (ChannelData per second, client → relay; as many
/// come back). Moderate: every contender carries it without loss on this machine.
const FIXED_RATE: u64 = 20_000;
/// Datagrams in flight at most in a max phase: a veth's ring holds 256 frames, so a larger
/// window only overflows it.
const WINDOW: usize = 256;

/// What `cargo xtask bench` was asked for.
pub struct Options {
    pub quick: bool,
    /// Contender keys to run (all when empty).
    pub only: Vec<String>,
}

/// The traffic matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub allocations: Vec<usize>,
    pub payloads: Vec<usize>,
    pub phase_seconds: f64,
    pub fixed_rate: u64,
    pub window: usize,
    pub setup_allocations: usize,
    pub setup_concurrency: usize,
    /// Setup rounds per contender (against the same relay, each round's allocations deleted
    /// before the next); the reported round is the median one by rate.
    pub setup_rounds: usize,
    pub drain_ms: u64,
    pub warmup_ms: u64,
    /// The scale run (full runs only).
    pub scale: Option<ScalePlan>,
}

/// Many allocations with many channels each, one maximum-rate phase, against the headline's
/// per-packet cost; and the kernel program's own time as its maps fill.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePlan {
    pub allocations: usize,
    pub channels: usize,
    pub payload: usize,
    pub phase_seconds: f64,
    /// A fixed rate (ChannelData/s) every xturn contender carries both with the headline's 16
    /// allocations and at scale: the per-packet cost is compared at the same rate, so the
    /// batching a rate allows is the same on both sides (at the maximum the load generator,
    /// slower with 10 000 sockets, sets a different rate).
    pub rate: u64,
    /// Binding counts the kernel program is timed at (`xturn-kernel-scale`).
    pub kernel_bindings: Vec<u32>,
}

impl ScalePlan {
    fn rate_phase(&self) -> String {
        format!("rate:{}:{}:{}", self.payload, self.phase_seconds, self.rate)
    }

    fn phases(&self) -> Vec<String> {
        vec![
            self.rate_phase(),
            format!("max:{}:{}", self.payload, self.phase_seconds),
        ]
    }
}

/// The `--only` key of the `--threads` scaling step (`bench/threads.rs`).
const THREADS_SCALE: &str = "threads-scale";

/// The allocation count the scale run is compared with (the headline's).
const SCALE_BASE_ALLOCATIONS: usize = 16;

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                allocations: vec![16],
                payloads: vec![100],
                phase_seconds: 1.5,
                fixed_rate: FIXED_RATE,
                window: WINDOW,
                setup_allocations: 4000,
                setup_concurrency: 256,
                setup_rounds: SETUP_ROUNDS,
                drain_ms: 300,
                warmup_ms: 300,
                scale: None,
            }
        } else {
            Plan {
                allocations: vec![1, 16, 256],
                payloads: vec![100, 1200],
                phase_seconds: 4.0,
                fixed_rate: FIXED_RATE,
                window: WINDOW,
                setup_allocations: 10_000,
                setup_concurrency: 256,
                setup_rounds: SETUP_ROUNDS,
                drain_ms: 300,
                warmup_ms: 300,
                scale: Some(ScalePlan {
                    allocations: 10_000,
                    channels: 10,
                    payload: 100,
                    phase_seconds: 4.0,
                    rate: 60_000,
                    kernel_bindings: vec![16, 1_000, 100_000, 1_000_000],
                }),
            }
        }
    }

    /// The phases of one allocation count, in order: per payload, fixed rate then max.
    fn phases(&self) -> Vec<String> {
        let s = self.phase_seconds;
        self.payloads
            .iter()
            .flat_map(|p| {
                [
                    format!("rate:{p}:{s}:{}", self.fixed_rate),
                    format!("max:{p}:{s}"),
                ]
            })
            .collect()
    }

    /// Time the phases of one allocation count take, retries not counted.
    fn phases_seconds(&self) -> f64 {
        let phases = self.phases().len() as f64;
        phases * (self.phase_seconds + self.drain_ms as f64 / 1000.0)
    }

    /// Phases disturbed by other processes are run again within this budget (half the planned
    /// time), which bounds the whole run.
    fn retry_budget_seconds(&self) -> f64 {
        self.phases_seconds() * 0.5
    }

    fn load_seconds(&self) -> u64 {
        (self.phases_seconds() + self.retry_budget_seconds()) as u64 + 60
    }
}

/// How a contender relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No relay: an echo where the relay's listener is. What the load side can do.
    Generator,
    /// The ceiling XDP program.
    Ceiling,
    XturnXdp,
    XturnTc,
    XturnUserspace,
    Coturn,
}

impl Kind {
    fn turn(self) -> bool {
        matches!(
            self,
            Kind::XturnXdp | Kind::XturnTc | Kind::XturnUserspace | Kind::Coturn
        )
    }
}

struct Contender {
    key: &'static str,
    label: &'static str,
    kind: Kind,
    /// xturnd's `--threads`: cores the relay gets.
    threads: usize,
}

const CONTENDERS: [Contender; 7] = [
    Contender {
        key: "generator",
        label: "load generator alone (echo in place of the relay)",
        kind: Kind::Generator,
        threads: 1,
    },
    Contender {
        key: "ceiling",
        label: "ceiling (XDP rewrite, no lookups)",
        kind: Kind::Ceiling,
        threads: 1,
    },
    Contender {
        key: "xdp",
        label: "xturnd --dataplane xdp",
        kind: Kind::XturnXdp,
        threads: 1,
    },
    Contender {
        key: "tc",
        label: "xturnd --dataplane tc",
        kind: Kind::XturnTc,
        threads: 1,
    },
    Contender {
        key: "userspace",
        label: "xturnd --dataplane userspace",
        kind: Kind::XturnUserspace,
        threads: 1,
    },
    Contender {
        key: "userspace-2t",
        label: "xturnd --dataplane userspace --threads 2",
        kind: Kind::XturnUserspace,
        threads: 2,
    },
    Contender {
        key: "coturn",
        label: "coturn turnserver",
        kind: Kind::Coturn,
        threads: 1,
    },
];

/// Which cores do what.
#[derive(Debug, Clone, Serialize)]
pub struct Cores {
    pub relay: Vec<usize>,
    pub load: Vec<usize>,
}

impl Cores {
    fn detect() -> Result<Cores> {
        let n = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if n < 2 {
            bail!("the benchmark needs at least 2 CPUs (one for the relay, one for the load)");
        }
        Ok(Cores {
            relay: vec![n - 1],
            load: (0..n - 1).collect(),
        })
    }

    /// The cores of a relay with `threads` threads: the last `threads` CPUs, the load side the
    /// rest; when the machine has no CPU left for the load side, everything shares every CPU
    /// (the second value says so).
    fn for_threads(&self, threads: usize) -> (Cores, bool) {
        if threads <= self.relay.len() {
            return (self.clone(), false);
        }
        let mut all: Vec<usize> = self.load.iter().chain(&self.relay).copied().collect();
        all.sort_unstable();
        if all.len() > threads {
            let split = all.len() - threads;
            let cores = Cores {
                relay: all[split..].to_vec(),
                load: all[..split].to_vec(),
            };
            (cores, false)
        } else {
            let cores = Cores {
                relay: all.clone(),
                load: all,
            };
            (cores, true)
        }
    }

    fn list(cpus: &[usize]) -> String {
        cpus.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Facts about the machine and the build, for the top of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub date: String,
    pub command: String,
    pub commit: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory: String,
    pub virtualization: String,
    pub rustc: String,
    pub coturn: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub cores: Cores,
}

fn first_line(s: Option<String>) -> String {
    s.and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

impl Facts {
    fn collect(command: String, cores: Cores) -> Facts {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let hypervisor = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
        let memory = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0),
            );
        let dirty = sh::output(sh::cmd(
            "git",
            &["-C", &sh::root().to_string_lossy(), "status", "--porcelain"],
        ))
        .is_some_and(|s| !s.trim().is_empty());
        let commit = first_line(sh::output(sh::cmd(
            "git",
            &[
                "-C",
                &sh::root().to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        )));
        Facts {
            date: first_line(sh::output(sh::cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]))),
            command,
            commit: if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            },
            kernel: first_line(sh::output(sh::cmd("uname", &["-sr"]))),
            cpu_model,
            cpus: cores.relay.len() + cores.load.len(),
            memory,
            virtualization: if hypervisor {
                "virtual machine (hypervisor flag set)".into()
            } else {
                "bare metal (no hypervisor flag)".into()
            },
            rustc: first_line(sh::output(sh::cmd("rustc", &["--version"]))),
            coturn: format!(
                "coturn {}",
                first_line(sh::output(sh::cmd(
                    "dpkg-query",
                    &["-W", "-f=${Version}", "coturn"],
                )))
            ),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            cores,
        }
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- the run -----------------------------------------------------------------------------

/// Binaries and places one run uses.
#[derive(Clone)]
struct Ctx {
    bin: PathBuf,
    run_dir: PathBuf,
    plan: Plan,
    cores: Cores,
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut command = String::from("cargo xtask bench");
    if opts.quick {
        command.push_str(" --quick");
    }
    if !opts.only.is_empty() {
        command.push_str(&format!(" --only {}", opts.only.join(",")));
    }
    for key in &opts.only {
        if key != "kernel-scale" && key != THREADS_SCALE && !CONTENDERS.iter().any(|c| c.key == key)
        {
            bail!(
                "unknown contender {key:?}; known: {}, {THREADS_SCALE} and kernel-scale",
                CONTENDERS.map(|c| c.key).join(", ")
            );
        }
    }

    setup::run()?;
    sh::step(
        "bench: building xturnd, xturn-ceiling, xturn-reflector, xturnctl and xturn-bench (release)",
    );
    let bin = sh::build_release(&["relay-user", "xturnctl", "xturn-bench"])?;
    let cores = Cores::detect()?;
    let mut facts = Facts::collect(command, cores.clone());
    let run_dir = PathBuf::from("/tmp/xturn-bench-run");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let ctx = Ctx {
        bin,
        run_dir,
        plan: Plan::new(opts.quick),
        cores,
    };

    sh::step("bench: creating the topology (client ⇄ relay ⇄ peer namespaces)");
    let topology = Topology::create(&NAMES, true, true)?;
    for ip in setup_client_ips() {
        run_quiet(netns_cmd(
            NAMES.client,
            "ip",
            &["addr", "add", &format!("{ip}/22"), "dev", LOAD_IFS[0]],
        ))?;
    }
    run_quiet(netns_cmd(
        NAMES.relay,
        "ip",
        &["route", "add", SETUP_CLIENT_NET, "dev", RELAY_IFS[0]],
    ))?;
    let bpf_stats = BpfStats::enable();

    let mut contenders = Vec::new();
    for c in CONTENDERS
        .iter()
        .filter(|c| opts.only.is_empty() || opts.only.iter().any(|k| k == c.key))
    {
        sh::step(&format!("bench: {} ({})", c.key, c.label));
        let t = Instant::now();
        let (cores, shared) = ctx.cores.for_threads(c.threads);
        let ctx = Ctx {
            cores,
            ..ctx.clone()
        };
        let note = shared.then(|| {
            format!(
                "{} threads on this {}-CPU machine: the load side shares the relay's cores, so \
                 its figures are a lower bound",
                c.threads,
                ctx.cores.relay.len()
            )
        });
        let result = run_contender(&ctx, c).unwrap_or_else(|e| {
            eprintln!("bench: {} failed: {e:#}", c.key);
            ContenderResult {
                key: c.key.into(),
                label: c.label.into(),
                command: String::new(),
                measurements: Vec::new(),
                setup: None,
                scale: None,
                check: None,
                note: None,
                error: Some(format!("{e:#}")),
            }
        });
        let result = ContenderResult { note, ..result };
        eprintln!("bench: {} done in {:.1?}", c.key, t.elapsed());
        contenders.push(result);
    }
    let (thread_scaling, thread_scaling_error) = if opts.only.is_empty()
        || opts.only.iter().any(|k| k == THREADS_SCALE)
    {
        sh::step(
            "bench: threads-scale (xturnd --threads 1 and 2, coturn on one core; load reflected in the kernel)",
        );
        match thread_scaling(&ctx) {
            Ok(t) => (Some(t), None),
            Err(e) => {
                eprintln!("bench: threads-scale failed: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    } else {
        (None, None)
    };
    drop(bpf_stats);
    let (kernel_scale, kernel_scale_error) = match &ctx.plan.scale {
        Some(scale) if opts.only.is_empty() || opts.only.iter().any(|k| k == "kernel-scale") => {
            sh::step("bench: kernel-scale (the XDP program's own time as its maps fill)");
            match kernel_scale(&ctx, scale) {
                Ok(k) => (Some(k), None),
                Err(e) => {
                    eprintln!("bench: kernel-scale failed: {e:#}");
                    (None, Some(format!("{e:#}")))
                }
            }
        }
        _ => (None, None),
    };
    drop(topology);
    facts.loadavg_end = loadavg();

    let report = Report {
        quick: opts.quick,
        facts,
        plan: ctx.plan.clone(),
        contenders,
        thread_scaling,
        thread_scaling_error,
        kernel_scale,
        kernel_scale_error,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let out_dir = sh::root().join("bench/results");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stem = if opts.quick { "quick" } else { "latest" };
    let json_path = out_dir.join(format!("{stem}.json"));
    fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let png_name = format!("{stem}.png");
    let png_path = out_dir.join(&png_name);
    let chart_note = chart::draw(&report, &png_path)?;
    let markdown = report::markdown(&report, &png_name, &chart_note);
    let md_path = out_dir.join(format!("{stem}.md"));
    fs::write(&md_path, &markdown).with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("\n{markdown}");
    eprintln!(
        "bench: wrote {}, {} and {}",
        md_path.display(),
        png_path.display(),
        json_path.display()
    );
    if !opts.quick && opts.only.is_empty() {
        let docs = sh::root().join("docs/benchmarks.md");
        report::update_docs(&docs, &report, "../bench/results/latest.png", &chart_note)?;
        eprintln!("bench: updated {}", docs.display());
    }
    let mut failed: Vec<&str> = report
        .contenders
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.key.as_str())
        .collect();
    if report.kernel_scale_error.is_some() {
        failed.push("kernel-scale");
    }
    if report.thread_scaling_error.is_some() {
        failed.push(THREADS_SCALE);
    }
    if !failed.is_empty() {
        bail!(
            "contenders failed: {} (see above and {})",
            failed.join(", "),
            ctx.run_dir.display()
        );
    }
    Ok(())
}

fn run_contender(ctx: &Ctx, c: &Contender) -> Result<ContenderResult> {
    let bin = |name: &str| ctx.bin.join(name).to_string_lossy().into_owned();
    let relay_cpus = Cores::list(&ctx.cores.relay);

    let relay_cmd: Option<(String, Vec<String>)> = match c.kind {
        Kind::Generator => None,
        Kind::Ceiling => Some((
            bin("xturn-ceiling"),
            strings(&[
                "--listen",
                LISTENER,
                "--client-ip",
                CLIENT_IP,
                "--relay-ip",
                RELAY_IP,
                "--peer",
                PEER,
                "--interface",
                RELAY_IFS[0],
                "--interface",
                RELAY_IFS[1],
                "--max-seconds",
                "900",
            ]),
        )),
        Kind::XturnXdp | Kind::XturnTc | Kind::XturnUserspace => Some((
            bin("xturnd"),
            xturnd_args(
                match c.kind {
                    Kind::XturnXdp => "xdp",
                    Kind::XturnTc => "tc",
                    _ => "userspace",
                },
                &["--threads", &c.threads.to_string()],
            ),
        )),
        Kind::Coturn => Some(("turnserver".into(), coturn_args(ctx))),
    };
    let command = match &relay_cmd {
        Some((program, args)) => format!(
            "{} {}",
            Path::new(program)
                .file_name()
                .map_or_else(|| program.clone(), |f| f.to_string_lossy().into_owned()),
            args.join(" ")
        ),
        None => format!("xturn-bench echo --bind {LISTENER} (in the relay namespace)"),
    };

    let mut relay = match &relay_cmd {
        Some((program, args)) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let log = ctx.run_dir.join(format!("{}-relay", c.key));
            let proc = Proc::spawn(NAMES.relay, &relay_cpus, program, &args, &log)?;
            if c.kind == Kind::Ceiling {
                proc.wait_for_stderr("ready", Duration::from_secs(10))?;
            } else {
                wait_for_stun(ctx, &proc)?;
            }
            Some(proc)
        }
        None => None,
    };

    let mut measurements = Vec::new();
    let mut to_peer_total = 0u64;
    let scale = ctx.plan.scale.as_ref().filter(|_| {
        c.threads == 1
            && matches!(
                c.kind,
                Kind::XturnXdp | Kind::XturnTc | Kind::XturnUserspace
            )
    });
    let mut rounds: Vec<Round> = ctx
        .plan
        .allocations
        .iter()
        .map(|&n| {
            let mut phases = ctx.plan.phases();
            if let Some(scale) = scale.filter(|_| n == SCALE_BASE_ALLOCATIONS) {
                phases.push(scale.rate_phase());
            }
            Round {
                allocations: n,
                channels: 1,
                phases,
                retry_budget_s: ctx.plan.retry_budget_seconds(),
                max_seconds: ctx.plan.load_seconds(),
                warmup_ms: ctx.plan.warmup_ms,
            }
        })
        .collect();
    if let Some(scale) = scale {
        rounds.push(Round {
            allocations: scale.allocations,
            channels: scale.channels,
            phases: scale.phases(),
            retry_budget_s: 0.0,
            max_seconds: SCALE_SECONDS,
            warmup_ms: SCALE_WARMUP_MS,
        });
    }
    let mut scale_setup = None;
    for round in &rounds {
        let (phases, to_peer, setup) = load_round(ctx, c, relay.as_ref(), round)?;
        to_peer_total += to_peer;
        measurements.extend(phases);
        if round.channels > 1
            && let Some(setup) = setup
        {
            scale_setup = Some(ScaleSetup {
                allocations: setup.allocated,
                channels: setup.channels_bound,
                allocations_per_s: setup.allocations_per_s,
                channel_binds_per_s: if setup.bind_s > 0.0 {
                    setup.channels_bound as f64 / setup.bind_s
                } else {
                    0.0
                },
                relay_rss_kib: setup.relay_rss_kib,
            });
        }
    }

    let setup = if c.kind.turn() {
        Some(setup_rounds(ctx, c, relay.as_ref())?)
    } else {
        None
    };

    let program = matches!(c.kind, Kind::XturnXdp | Kind::Ceiling)
        .then(xdp_program_stats)
        .flatten();
    let check = match relay.take() {
        Some(proc) => {
            let (stdout, stderr) = proc.stop()?;
            let mut check = match c.kind {
                Kind::XturnXdp | Kind::XturnTc => {
                    Some(kernel_check(&stderr, to_peer_total).map_err(|why| anyhow!("{why}"))?)
                }
                Kind::Ceiling => Some(ceiling_check(&stdout, to_peer_total)),
                _ => None,
            };
            if let (Some(check), Some(p)) = (check.as_mut(), &program) {
                check.push_str(&format!("; {p}"));
            }
            check
        }
        None => None,
    };
    Ok(ContenderResult {
        key: c.key.into(),
        label: c.label.into(),
        command,
        measurements,
        setup,
        scale: scale_setup,
        check,
        note: None,
        error: None,
    })
}

/// Time limit of the scale run's load generator: handshakes for every allocation and channel,
/// the phase, and the deletions.
const SCALE_SECONDS: u64 = 300;
/// The scale run's warm-up. Right after 100 000 bindings were installed the XDP contender's
/// first phase costs 60–75 % more relay CPU per packet, whichever phase comes first, for a few
/// seconds (a one-off after the installs, not a per-packet cost: the same phase run second is
/// within 10 %); the measured phases start after it.
const SCALE_WARMUP_MS: u64 = 3_000;

/// One run of the load generator against a running relay: its allocations, channels per
/// allocation and phases.
struct Round {
    allocations: usize,
    channels: usize,
    phases: Vec<String>,
    retry_budget_s: f64,
    max_seconds: u64,
    warmup_ms: u64,
}

/// Starts the echo, runs the load generator for `round`, and measures every phase; returns
/// the measurements, the datagrams the echo received, and the generator's setup report.
fn load_round(
    ctx: &Ctx,
    c: &Contender,
    relay: Option<&Proc>,
    round: &Round,
) -> Result<(Vec<Measurement>, u64, Option<SetupOut>)> {
    let bin = |name: &str| ctx.bin.join(name).to_string_lossy().into_owned();
    let relay_cpus = Cores::list(&ctx.cores.relay);
    let load_cpus = Cores::list(&ctx.cores.load);
    let n = round.allocations;
    let (echo_ns, echo_addr, echo_cpus) = if c.kind == Kind::Generator {
        (NAMES.relay, LISTENER, &relay_cpus)
    } else {
        (NAMES.peer, PEER, &load_cpus)
    };
    let echo_log = ctx.run_dir.join(format!("{}-echo-{n}", c.key));
    let ports = round.channels.to_string();
    let echo = Proc::spawn(
        echo_ns,
        echo_cpus,
        &bin("xturn-bench"),
        &[
            "echo",
            "--bind",
            echo_addr,
            "--ports",
            &ports,
            "--max-seconds",
            "900",
        ],
        &echo_log,
    )?;
    echo.wait_for_stderr("ready", Duration::from_secs(10))?;
    pin_napi_threads(&ctx.cores)?;
    let relay_pid = relay.map_or(echo.pid(), Proc::pid);
    let mut pids = vec![relay_pid];
    pids.extend(napi_threads(&RELAY_IFS));
    let mut load_pids = napi_threads(&LOAD_IFS);
    if c.kind != Kind::Generator {
        load_pids.push(echo.pid());
    }

    let mut args = load_args(&[
        "--allocations",
        &n.to_string(),
        "--channels",
        &round.channels.to_string(),
        "--window",
        &ctx.plan.window.to_string(),
        "--relay-cpus",
        &relay_cpus,
        "--load-cpus",
        &load_cpus,
        "--drain-ms",
        &ctx.plan.drain_ms.to_string(),
        "--warmup-ms",
        &round.warmup_ms.to_string(),
        "--setup-concurrency",
        &ctx.plan.setup_concurrency.to_string(),
        "--max-seconds",
        &round.max_seconds.to_string(),
    ]);
    if c.kind.turn() {
        args.extend(strings(&["--user", USER]));
    }
    for phase in &round.phases {
        args.extend(["--phase".to_owned(), phase.clone()]);
    }
    for pid in &pids {
        args.extend(["--relay-pid".to_owned(), pid.to_string()]);
    }
    for pid in &load_pids {
        args.extend(["--load-pid".to_owned(), pid.to_string()]);
    }
    args.extend([
        "--retry-budget-s".to_owned(),
        format!("{:.1}", round.retry_budget_s),
    ]);
    eprintln!(
        "bench: {}: {n} allocation(s) × {} channel(s), phases {:?}",
        c.key, round.channels, round.phases
    );
    let load: LoadOut = run_load(ctx, c.key, n, &args, round.max_seconds + 30)?;
    let echo_out: EchoOut = parse_json(&echo.stop()?.0, "the echo")?;
    let mut measurements = Vec::new();
    let mut to_peer = 0;
    for phase in &load.phases {
        let counts = echo_out.phases.get(&phase.id).copied().unwrap_or_default();
        to_peer += counts.received;
        measurements.push(measure(c.key, phase, counts, round.channels));
    }
    Ok((measurements, to_peer, load.setup))
}

/// Starts `xturn-bench ARGS` in the client namespace on `load_cpus`, logging to `log`.
fn spawn_load(ctx: &Ctx, load_cpus: &str, args: &[&str], log: &Path) -> Result<Proc> {
    let bin = ctx.bin.join("xturn-bench");
    Proc::spawn(NAMES.client, load_cpus, &bin.to_string_lossy(), args, log)
}

/// xturnd on the topology's addresses with the benchmark's user, data plane `dataplane`, no
/// quota in the way (10 000 allocations come from one client address), then `extra`.
fn xturnd_args(dataplane: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "--listen",
        LISTENER,
        "--relay-ip",
        RELAY_IP,
        "--realm",
        REALM,
        "--user",
        USER,
        "--dataplane",
        dataplane,
        "--max-allocations",
        "100000",
        "--max-allocations-per-user",
        "100000",
        "--max-allocations-per-ip",
        "100000",
        "--log-level",
        "warn,xturnd=info",
    ]);
    args.extend(strings(extra));
    args
}

/// coturn on the topology's addresses with the benchmark's user: UDP only, every relay in the
/// listener's thread (`--relay-threads 0`), so it uses one core as `xturnd --threads 1` does.
fn coturn_args(ctx: &Ctx) -> Vec<String> {
    let pidfile = ctx.run_dir.join("turnserver.pid");
    let userdb = ctx.run_dir.join("turndb");
    strings(&[
        "-n",
        "--listening-ip",
        LISTENER_IP,
        "--listening-port",
        "3478",
        "--relay-ip",
        RELAY_IP,
        "--min-port",
        "49152",
        "--max-port",
        "65535",
        "--realm",
        REALM,
        "--lt-cred-mech",
        "--user",
        USER,
        "--relay-threads",
        "0",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-tcp-relay",
        "--no-cli",
        "--log-file",
        "/dev/null",
        "--simple-log",
        "--no-stdout-log",
        "--pidfile",
        &pidfile.to_string_lossy(),
        "--userdb",
        &userdb.to_string_lossy(),
    ])
}

/// `xturn-bench load` against the relay's listener and the echo, then `extra`.
fn load_args(extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["load", "--server", LISTENER, "--peer", PEER]);
    args.extend(strings(extra));
    args
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `xturn-bench load ARGS` in the client namespace and parses its report.
fn run_load(ctx: &Ctx, key: &str, n: usize, args: &[String], timeout_s: u64) -> Result<LoadOut> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = ctx.run_dir.join(format!("{key}-load-{n}"));
    let load_cpus = Cores::list(&ctx.cores.load);
    let proc = spawn_load(ctx, &load_cpus, &args, &log)?;
    let (stdout, stderr) = proc.wait(Duration::from_secs(timeout_s))?;
    if stdout.trim().is_empty() {
        bail!("xturn-bench load printed nothing: {}", stderr.trim());
    }
    parse_json(&stdout, "xturn-bench load")
}

fn parse_json<T: for<'de> Deserialize<'de>>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).with_context(|| format!("parsing the report of {what}: {text}"))
}

fn measure(key: &str, p: &PhaseOut, echo: EchoCounts, channels: usize) -> Measurement {
    let to_peer = echo.received;
    let to_client = p.received;
    let relayed = to_peer + to_client;
    let duration = p.duration_s.max(1e-9);
    let relay_cpu_s = p.cpu.relay_s();
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    Measurement {
        contender: key.into(),
        allocations: p.allocations,
        channels,
        payload: p.payload,
        kind: p.kind.clone(),
        offered_pps: p.offered_pps,
        duration_s: p.duration_s,
        sent: p.sent,
        to_peer,
        to_client,
        relayed_pps: relayed as f64 / duration,
        gbps: (relayed * p.payload as u64 * 8) as f64 / duration / 1e9,
        loss: (1.0 - ratio(to_client, p.sent)).max(0.0),
        loss_to_peer: (1.0 - ratio(to_peer, p.sent)).max(0.0),
        loss_to_client: (1.0 - ratio(to_client, echo.echoed)).max(0.0),
        relay_cpu_s,
        cpu_s_per_mpkt: relay_cpu_s
            .filter(|_| relayed > 0)
            .map(|c| c / (relayed as f64 / 1e6)),
        // Over the sending time: the drain after it is mostly idle.
        relay_core_share: relay_cpu_s.map(|c| c / duration),
        load_core_busy: p.cpu.load_cores_busy_s / (duration * p.cpu.load_cores.max(1) as f64),
        relay_core_busy: p.cpu.relay_cores_busy_s / p.window_s.max(1e-9),
        relay_core_others: p.cpu.relay_others,
        load_core_others: p.cpu.load_others,
        attempts: p.attempts,
        rtt_p50_us: p.rtt.p50_us,
        rtt_p99_us: p.rtt.p99_us,
        rtt_p999_us: p.rtt.p999_us,
    }
}

/// TX checksum offload back on at load-side interfaces, its kernel default, while it lives (off
/// again when dropped). The topology turns it off at the outer ends for XDP's ChannelData
/// redirects. Rounds without XDP put it back:
/// - the setup round at the client's end: with it off, a threaded-NAPI veth at the relay's end
///   doubled xturnd's CPU per Allocate (21 → 42–47 µs on a bare veth pair) and left both sides
///   half idle, a testbed artifact no pod has;
/// - the reflected rounds at both ends: a reflector's redirect out of an interface without
///   checksum offload checksums every datagram in software and cuts every UDP GSO buffer into
///   datagrams there, in the softirq of the relay's send, so on the relay's core: load-side work
///   a pod's NIC does in hardware.
struct LoadTxChecksum {
    ends: &'static [(&'static str, &'static str)],
}

/// The client's end, with its namespace.
const CLIENT_END: [(&str, &str); 1] = [(NAMES.client, LOAD_IFS[0])];
/// Both load-side ends, with their namespaces.
const LOAD_ENDS: [(&str, &str); 2] = [(NAMES.client, LOAD_IFS[0]), (NAMES.peer, LOAD_IFS[1])];

impl LoadTxChecksum {
    fn set(ends: &[(&str, &str)], on: bool) -> Result<()> {
        let value = if on { "on" } else { "off" };
        for &(ns, ifname) in ends {
            run_quiet(netns_cmd(ns, "ethtool", &["-K", ifname, "tx", value]))?;
        }
        Ok(())
    }

    fn on(ends: &'static [(&'static str, &'static str)]) -> Result<LoadTxChecksum> {
        let guard = LoadTxChecksum { ends };
        LoadTxChecksum::set(ends, true)?;
        Ok(guard)
    }
}

impl Drop for LoadTxChecksum {
    fn drop(&mut self) {
        if let Err(e) = LoadTxChecksum::set(self.ends, false) {
            eprintln!(
                "bench: cannot turn TX checksum offload off again on {:?}: {e:#}",
                self.ends
            );
        }
    }
}

/// Setup rounds per contender. One round's rate moved by 10–20 % between full runs on this
/// shared machine (relay cores at 92–100 %); the median of three alternating with nothing else
/// is steadier, as the `--threads` step's medians are.
const SETUP_ROUNDS: usize = 3;

/// [`setup_rate`] `plan.setup_rounds` times: the median round by rate, with every round's rate.
fn setup_rounds(ctx: &Ctx, c: &Contender, relay: Option<&Proc>) -> Result<SetupResult> {
    let mut rounds = Vec::with_capacity(ctx.plan.setup_rounds);
    for _ in 0..ctx.plan.setup_rounds.max(1) {
        rounds.push(setup_rate(ctx, c, relay)?);
    }
    let rates: Vec<f64> = rounds.iter().map(|r| r.allocations_per_s).collect();
    let mut median = median_round(rounds);
    median.rounds_per_s = rates;
    Ok(median)
}

/// The round whose rate is the median (the lower middle one of an even count).
fn median_round(mut rounds: Vec<SetupResult>) -> SetupResult {
    rounds.sort_by(|a, b| a.allocations_per_s.total_cmp(&b.allocations_per_s));
    let middle = rounds.len().saturating_sub(1) / 2;
    rounds.swap_remove(middle)
}

/// Allocations per second with authentication, from `--setup-only`.
fn setup_rate(ctx: &Ctx, c: &Contender, relay: Option<&Proc>) -> Result<SetupResult> {
    let relay_cpus = Cores::list(&ctx.cores.relay);
    let load_cpus = Cores::list(&ctx.cores.load);
    let mut args = load_args(&[
        "--user",
        USER,
        "--setup-only",
        "--allocations",
        &ctx.plan.setup_allocations.to_string(),
        "--setup-concurrency",
        &ctx.plan.setup_concurrency.to_string(),
        "--relay-cpus",
        &relay_cpus,
        "--load-cpus",
        &load_cpus,
        "--max-seconds",
        "120",
    ]);
    for ip in setup_client_ips() {
        args.extend(["--client-ip".to_owned(), ip]);
    }
    if let Some(relay) = relay {
        args.extend(["--relay-pid".to_owned(), relay.pid().to_string()]);
        for pid in napi_threads(&RELAY_IFS) {
            args.extend(["--relay-pid".to_owned(), pid.to_string()]);
        }
    }
    eprintln!(
        "bench: {}: allocation setup rate ({} allocations, {} in flight)",
        c.key, ctx.plan.setup_allocations, ctx.plan.setup_concurrency
    );
    let log = ctx.run_dir.join(format!("{}-setup", c.key));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tx_checksum = LoadTxChecksum::on(&CLIENT_END)?;
    let proc = spawn_load(ctx, &load_cpus, &args, &log)?;
    let (stdout, stderr) = proc.wait(Duration::from_secs(150))?;
    drop(tx_checksum);
    if stdout.trim().is_empty() {
        bail!(
            "xturn-bench load --setup-only printed nothing: {}",
            stderr.trim()
        );
    }
    let out: LoadOut = parse_json(&stdout, "xturn-bench load --setup-only")?;
    let setup = out.setup.context("no setup report")?;
    Ok(SetupResult {
        allocations: setup.allocated,
        failed: setup.failed,
        allocations_per_s: setup.allocations_per_s,
        relay_cpu_us_per_allocation: setup
            .cpu
            .relay_s()
            .filter(|_| setup.allocated > 0)
            .map(|s| s / setup.allocated as f64 * 1e6),
        relay_core_share: setup.cpu.relay_s().map(|s| s / setup.allocate_s.max(1e-9)),
        load_core_busy: setup.cpu.load_cores_busy_s
            / (setup.allocate_s.max(1e-9) * setup.cpu.load_cores.max(1) as f64),
        retransmissions: setup.retransmissions,
        first_error: setup.first_error,
        rounds_per_s: vec![setup.allocations_per_s],
    })
}

/// Binding requests from the client namespace until the relay answers (10 s at most).
fn wait_for_stun(ctx: &Ctx, relay: &Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let xturnctl = ctx.bin.join("xturnctl");
    while Instant::now() < deadline {
        let mut probe = Command::new("ip");
        probe
            .args(["netns", "exec", NAMES.client])
            .arg(&xturnctl)
            .args(["binding", "--server", LISTENER]);
        if sh::succeeds(probe) {
            return Ok(());
        }
        if relay.exited() {
            bail!(
                "the relay exited at start: {}",
                fs::read_to_string(relay.log_path("err")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("the relay did not answer a STUN Binding within 10 s")
}

/// Runs `xturn-kernel-scale` in the relay namespace (where both next hops resolve) and parses
/// its report.
fn kernel_scale(ctx: &Ctx, scale: &ScalePlan) -> Result<KernelScale> {
    let bin = ctx.bin.join("xturn-kernel-scale");
    let counts = scale
        .kernel_bindings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let payload = scale.payload.to_string();
    let args = [
        "--client-interface",
        RELAY_IFS[0],
        "--peer-interface",
        RELAY_IFS[1],
        "--listen",
        LISTENER,
        "--client-ip",
        CLIENT_IP,
        "--relay-ip",
        RELAY_IP,
        "--peer-ip",
        PEER_IP,
        "--bindings",
        &counts,
        "--payload",
        &payload,
    ];
    let log = ctx.run_dir.join("kernel-scale");
    let relay_cpus = Cores::list(&ctx.cores.relay);
    let proc = Proc::spawn(
        NAMES.relay,
        &relay_cpus,
        &bin.to_string_lossy(),
        &args,
        &log,
    )?;
    let (stdout, stderr) = proc.wait(Duration::from_secs(300))?;
    if stdout.trim().is_empty() {
        bail!("xturn-kernel-scale printed nothing: {}", stderr.trim());
    }
    parse_json(&stdout, "xturn-kernel-scale")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rate: f64) -> SetupResult {
        SetupResult {
            allocations: 10,
            failed: 0,
            allocations_per_s: rate,
            relay_cpu_us_per_allocation: Some(1e6 / rate),
            relay_core_share: None,
            load_core_busy: 0.0,
            retransmissions: Some(0),
            first_error: None,
            rounds_per_s: vec![rate],
        }
    }

    #[test]
    fn the_median_setup_round_is_reported_whole() {
        let median = median_round(vec![round(300.0), round(100.0), round(200.0)]);
        assert_eq!(median.allocations_per_s, 200.0);
        assert_eq!(median.relay_cpu_us_per_allocation, Some(5000.0));
        // An even count takes the lower middle round; one round is itself.
        assert_eq!(
            median_round(vec![round(4.0), round(1.0), round(3.0), round(2.0)]).allocations_per_s,
            2.0
        );
        assert_eq!(median_round(vec![round(7.0)]).allocations_per_s, 7.0);
    }
}
