//! `xturn-bench`: the benchmark's load generator and echo (the ceiling XDP program is loaded by
//! `xturn-ceiling`, in the agent's package, which builds the eBPF objects). `cargo xtask bench`
//! runs it in network namespaces; see docs/benchmarks.md. Every subcommand is bounded in time
//! and prints its results as JSON on stdout.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use turn_proto::client::ClientCredentials;
use xturn_bench::{
    cpu::CpuSpec,
    echo::{self, EchoSpec},
    load::{self, LoadSpec, PhaseSpec},
};

#[derive(Parser)]
#[command(
    name = "xturn-bench",
    version,
    about = "xturn's benchmark tools: load generator and echo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make N allocations with TURN handshakes, then send ChannelData in phases and report.
    Load(Box<LoadArgs>),
    /// Echo every datagram back to its sender, counting per phase, until SIGTERM.
    Echo(EchoArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The relay's TURN listener.
    #[arg(long)]
    server: SocketAddr,
    /// The peer the channels are bound to (the echo).
    #[arg(long)]
    peer: SocketAddr,
    /// Long-term credential NAME:PASSWORD, split at the last `:` (a TURN REST username such as
    /// `1700000000:alice` has one; its password, base64, has none). Without it: raw mode, no
    /// TURN exchange.
    #[arg(long)]
    user: Option<String>,
    /// Allocations (each with one channel), or sockets in raw mode.
    #[arg(long, default_value_t = 16)]
    allocations: usize,
    /// Channels per allocation, to the peer's port and the next ones.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// A phase: max:PAYLOAD:SECONDS, rate:PAYLOAD:SECONDS:PER_SECOND or
    /// reflected:PAYLOAD:SECONDS:DATAGRAMS (DATAGRAMS sent once and sent back by reflectors at
    /// both ends; needs --relay-pid). Repeatable, in order.
    #[arg(long = "phase")]
    phases: Vec<String>,
    /// Datagrams per sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Datagrams in flight at most in a max phase (all allocations together).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// A process whose threads' CPU time is the relay's (the relay, its NAPI threads).
    /// Repeatable.
    #[arg(long = "relay-pid")]
    relay_pids: Vec<u32>,
    /// A process of the load side besides this one (the echo, NAPI threads), to tell other
    /// processes' use of the load cores apart. Repeatable.
    #[arg(long = "load-pid")]
    load_pids: Vec<u32>,
    /// Run a phase again when other processes used more than this share of the relay's or the
    /// load's cores during it (0..1).
    #[arg(long, default_value_t = 0.15)]
    interference_limit: f64,
    /// Seconds all repeated phases together may take (0: never repeat).
    #[arg(long, default_value_t = 0.0)]
    retry_budget_s: f64,
    /// Attempts per phase at most.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// The cores the relay is pinned to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    relay_cpus: Vec<usize>,
    /// The cores the load generator and echo are pinned to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    load_cpus: Vec<usize>,
    /// Counting continues this long after a phase stops sending.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// Low-rate traffic before the first phase, not reported.
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    /// Only time the allocations (then delete them); no data.
    #[arg(long)]
    setup_only: bool,
    /// A source address for the clients (repeatable): client `i` binds the `i mod n`-th.
    /// Default: the address the route to the server gives, for all of them.
    #[arg(long = "client-ip")]
    client_ips: Vec<std::net::IpAddr>,
    /// CPUs the clients' traffic leaves from (comma-separated): client `k`'s Allocate and its
    /// `reflected` datagrams from the `k mod n`-th, as a multi-queue NIC would spread clients
    /// over CPUs (a veth delivers on the sending CPU). Allocates then go one at a time.
    #[arg(long, value_delimiter = ',')]
    spread_cpus: Vec<usize>,
    /// The LIFETIME (seconds) the Allocates ask for; default: none (the server's default).
    #[arg(long)]
    lifetime: Option<u64>,
    /// Upper bound for the whole run.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(clap::Args)]
struct EchoArgs {
    #[arg(long)]
    bind: SocketAddr,
    /// Listen on this many consecutive ports from `--bind`'s (a thread each): peers of
    /// allocations with several channels.
    #[arg(long, default_value_t = 1)]
    ports: u16,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Stop by itself after this long.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Load(args) => run_load(*args),
        Command::Echo(args) => run_echo(&args),
    }
}

fn run_load(args: LoadArgs) -> Result<()> {
    raise_open_files_limit();
    let credentials = match &args.user {
        Some(user) => {
            let (name, password) = user
                .rsplit_once(':')
                .context("--user must be NAME:PASSWORD")?;
            Some(ClientCredentials::new(name, password))
        }
        None => None,
    };
    let phases = args
        .phases
        .iter()
        .map(|p| p.parse::<PhaseSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    if phases.is_empty() && !args.setup_only {
        bail!("give at least one --phase, or --setup-only");
    }
    let spec = LoadSpec {
        server: args.server,
        credentials,
        peer: args.peer,
        allocations: args.allocations,
        channels: args.channels,
        setup_concurrency: args.setup_concurrency,
        phases,
        batch: args.batch,
        window: args.window,
        cpu: CpuSpec {
            relay_pids: args.relay_pids,
            relay_cpus: args.relay_cpus,
            load_cpus: args.load_cpus,
            load_pids: args.load_pids,
        },
        drain: Duration::from_millis(args.drain_ms),
        warmup: Duration::from_millis(args.warmup_ms),
        setup_only: args.setup_only,
        client_ips: args.client_ips,
        spread_cpus: args.spread_cpus,
        lifetime: args.lifetime.map(Duration::from_secs),
        max_total: Duration::from_secs(args.max_seconds),
        interference_limit: args.interference_limit,
        retry_budget: Duration::from_secs_f64(args.retry_budget_s.clamp(0.0, 3600.0)),
        max_attempts: args.max_attempts,
    };
    let report = load::run(&spec)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A socket per allocation, and one per data socket after them (the client sockets may still be
/// closing): the limit on open files goes up to at least [`OPEN_FILES`] where the process may
/// raise it (root), else the soft limit to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.max(OPEN_FILES);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Open files the load generator asks for: two sockets per allocation of the largest run.
const OPEN_FILES: u64 = 65_536;

fn run_echo(args: &EchoArgs) -> Result<()> {
    stop_on_signals()?;
    let mut sockets = Vec::new();
    for i in 0..args.ports.max(1) {
        let mut bind = args.bind;
        bind.set_port(
            args.bind
                .port()
                .checked_add(i)
                .context("--ports runs past port 65535")?,
        );
        let spec = EchoSpec {
            bind,
            batch: args.batch,
            max_duration: Duration::from_secs(args.max_seconds),
        };
        let socket = echo::bind(&spec).with_context(|| format!("binding {bind}"))?;
        sockets.push((spec, socket));
    }
    eprintln!(
        "xturn-bench echo: ready on {} ({} port(s))",
        args.bind,
        sockets.len()
    );
    let reports = std::thread::scope(|scope| {
        let threads: Vec<_> = sockets
            .iter()
            .map(|(spec, socket)| scope.spawn(move || echo::run(spec, socket, &STOP)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(xturn_bench::BenchError::Invalid("echo panicked".into()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut report = echo::EchoReport {
        bind: args.bind.to_string(),
        ..echo::EchoReport::default()
    };
    for r in reports {
        report.merge(r);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
