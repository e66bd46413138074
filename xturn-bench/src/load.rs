//! The load generator: N allocations made with real TURN handshakes, then ChannelData on all
//! of them at a fixed rate or as fast as the path takes it, in phases.
//!
//! Handshakes use [`xturnctl::TurnClient`] (Allocate with long-term credentials,
//! ChannelBind to the peer). Then each allocation's client socket is replaced by a plain UDP
//! socket bound to the same port, and one thread sends batches with `sendmmsg` round-robin over
//! the sockets while another receives with `recvmmsg` behind `epoll`, counting per phase and
//! taking round-trip times from the stamps the payloads carry. The relay's CPU time is
//! sampled at each phase's edges ([`super::cpu`]).
//!
//! In raw mode (no credentials) no TURN exchange happens: every socket just sends ChannelData
//! on [`CHANNEL`] to the server address. That is how the ceiling (an XDP program with a fixed
//! rewrite) and the generator-alone baseline (an echo in place of the relay) are driven.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::cpu::{CpuSpec, CpuUse};
use super::hist::Histogram;
use super::wire::{self, CHANNEL, CHANNEL_HEADER_LEN, STAMP_LEN, Stamp};
use super::{BenchError, mono_ns, setup, tune_socket};
use turn_proto::client::Request;
use udp_batch::Batch;
use xturnctl::{AllocateOptions, ClientConfig, ClientCredentials, RetransmitPolicy, TurnClient};

/// How a phase offers load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// This many ChannelData messages per second, all allocations together.
    Rate(u64),
    /// As fast as the echoes come back: a window of datagrams in flight (see
    /// [`LoadSpec::window`]), so an overloaded path is measured at what it delivers rather than
    /// at how much it drops.
    Max,
    /// This many datagrams go out once, spread over the allocations, and circulate: reflectors
    /// at the client's and the peer's interfaces (`xturn-reflector`) send each straight back, so
    /// the generator adds no work per relayed datagram. Measured by the datagrams the relay's
    /// network namespace received (`/proc/RELAY_PID/net/snmp`), not by echoes.
    Reflected(u64),
}

/// One measurement: a kind of load, a payload size, a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseSpec {
    pub name: String,
    pub kind: PhaseKind,
    /// Bytes of ChannelData data (the relayed payload).
    pub payload: usize,
    pub duration: Duration,
}

impl FromStr for PhaseSpec {
    type Err = BenchError;

    /// `max:PAYLOAD:SECONDS`, `rate:PAYLOAD:SECONDS:PER_SECOND` or
    /// `reflected:PAYLOAD:SECONDS:DATAGRAMS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BenchError::Invalid(format!("phase {s:?}: {why}"));
        let parts: Vec<&str> = s.split(':').collect();
        let payload: usize = parts
            .get(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("no payload size"))?;
        if !(STAMP_LEN..=wire::MAX_PAYLOAD).contains(&payload) {
            return Err(bad(&format!(
                "payload must be {STAMP_LEN}..={} bytes",
                wire::MAX_PAYLOAD
            )));
        }
        let seconds: f64 = parts
            .get(2)
            .and_then(|p| p.parse().ok())
            .filter(|s: &f64| *s > 0.0 && *s <= 600.0)
            .ok_or_else(|| bad("duration must be 0 < seconds <= 600"))?;
        let kind = match (parts.first().copied(), parts.get(3)) {
            (Some("max"), None) => PhaseKind::Max,
            (Some("rate"), Some(r)) => PhaseKind::Rate(
                r.parse()
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or_else(|| bad("rate must be a positive integer"))?,
            ),
            (Some("reflected"), Some(n)) => PhaseKind::Reflected(
                n.parse()
                    .ok()
                    .filter(|n| (1..=MAX_REFLECTED).contains(n))
                    .ok_or_else(|| bad("datagrams must be 1..=65536"))?,
            ),
            _ => {
                return Err(bad(
                    "expected max:PAYLOAD:SECONDS, rate:PAYLOAD:SECONDS:RATE or \
                     reflected:PAYLOAD:SECONDS:DATAGRAMS",
                ));
            }
        };
        Ok(PhaseSpec {
            name: s.to_owned(),
            kind,
            payload,
            duration: Duration::from_secs_f64(seconds),
        })
    }
}

/// Datagrams a `reflected` phase puts in circulation at most.
const MAX_REFLECTED: u64 = 65_536;

/// Channels per allocation at most (numbers `CHANNEL..CHANNEL + 256`, peer ports likewise).
pub const MAX_CHANNELS: usize = 256;

/// Everything the generator needs.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The relay's listener.
    pub server: SocketAddr,
    /// Long-term credentials; `None` for raw mode (no TURN exchange).
    pub credentials: Option<ClientCredentials>,
    /// Where the channels are bound to (the echo): channel `CHANNEL + j` of every allocation
    /// goes to this address with the port `+ j`.
    pub peer: SocketAddr,
    pub allocations: usize,
    /// Channels bound per allocation (1 unless the scale run asks for more); the phases send
    /// on all of them, a batch on one.
    pub channels: usize,
    /// Handshakes in flight at once.
    pub setup_concurrency: usize,
    pub phases: Vec<PhaseSpec>,
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
    /// Datagrams in flight at most in a `max` phase, all allocations together. Datagrams not
    /// back within 5 ms of the last progress are written off as lost.
    pub window: usize,
    pub cpu: CpuSpec,
    /// How long to keep counting after a phase stops sending.
    pub drain: Duration,
    /// Load at a low rate before the first phase, not reported (caches, neighbours).
    pub warmup: Duration,
    /// Only make (and time) the allocations, then delete them.
    pub setup_only: bool,
    /// Source addresses the clients bind, in turn (empty: the route's, for all). Real clients
    /// come from many addresses; from one, the relay's reflection defence (a budget of
    /// unauthenticated answers per source address) would meter the handshakes.
    pub client_ips: Vec<IpAddr>,
    /// CPUs the clients' traffic leaves from: client `k`'s Allocate and its `reflected`
    /// datagrams from the `k mod n`-th (empty: wherever this process runs; Allocates then go
    /// one at a time). A veth delivers a datagram on the CPU that sent it, so this spreads the
    /// clients over the relay's CPUs as a multi-queue NIC's receive-side scaling would.
    pub spread_cpus: Vec<usize>,
    /// The LIFETIME the Allocates ask for (`None`: the server's default).
    pub lifetime: Option<Duration>,
    /// The whole run must end by then.
    pub max_total: Duration,
    /// A phase during which other processes used more than this share of the relay's or the
    /// load's cores ([`CpuUse::interference`]) is run again, while [`LoadSpec::retry_budget`]
    /// lasts; the attempt with the least interference is reported.
    pub interference_limit: f64,
    /// Time all repeated phases together may take.
    pub retry_budget: Duration,
    /// Attempts per phase at most.
    pub max_attempts: u32,
}

/// The allocation handshakes, timed.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub requested: usize,
    pub allocated: usize,
    pub failed: usize,
    /// Wall time for all Allocate transactions (each: request, 401, authenticated request).
    pub allocate_s: f64,
    pub allocations_per_s: f64,
    /// Allocations whose channels were all bound, and the ChannelBinds in all.
    pub bound: usize,
    pub channels_bound: usize,
    pub bind_s: f64,
    pub channel_binds_per_s: f64,
    pub concurrency: usize,
    /// Relay CPU while the allocations were made.
    pub cpu: CpuUse,
    /// The relay process's resident memory (`VmRSS`, KiB) before the handshakes, after the
    /// allocations and after the channel bindings (`None` where unreadable).
    pub relay_rss_kib: [Option<u64>; 3],
    pub first_error: Option<String>,
    /// Allocate requests sent again for want of an answer (counted by the one-thread setup
    /// engine, `--setup-only`; `None` otherwise).
    pub retransmissions: Option<u64>,
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Round-trip times of one phase, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RttReport {
    pub samples: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub mean_us: Option<f64>,
}

impl RttReport {
    fn from_histogram(h: &Histogram) -> RttReport {
        let us = |ns: u64| ns as f64 / 1000.0;
        RttReport {
            samples: h.count(),
            p50_us: h.quantile(0.5).map(us),
            p99_us: h.quantile(0.99).map(us),
            p999_us: h.quantile(0.999).map(us),
            max_us: (h.count() > 0).then(|| us(h.max())),
            mean_us: h.mean().map(|m| m / 1000.0),
        }
    }
}

/// What one phase sent and got back.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// The phase number in the payloads (the echo counts by it).
    pub id: u8,
    pub kind: &'static str,
    pub offered_pps: Option<u64>,
    pub payload: usize,
    pub allocations: usize,
    /// How long the phase sent.
    pub duration_s: f64,
    /// The counting window: sending plus the drain.
    pub window_s: f64,
    pub sent: u64,
    pub send_errors: u64,
    /// Echoes that came back within the window.
    pub received: u64,
    /// How many times the phase ran (more than once when others disturbed it).
    pub attempts: u32,
    /// `reflected` phases: UDP datagrams the relay's network namespace received in the window
    /// (`Udp InDatagrams`), i.e. relayed datagrams in both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_received: Option<u64>,
    pub rtt: RttReport,
    pub cpu: CpuUse,
}

/// The generator's output.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    pub allocations: usize,
    pub batch: usize,
    pub setup: Option<SetupReport>,
    pub phases: Vec<PhaseReport>,
    /// Allocations deleted at the end (TURN mode).
    pub deleted: usize,
}

/// Per-phase receive counters.
#[derive(Default)]
struct Received {
    count: u64,
    rtt: Histogram,
}

struct Shared {
    stop: AtomicBool,
    received: Mutex<Vec<Received>>,
    /// Echoes of the phase in progress so far, for the sender's window.
    current_received: AtomicU64,
}

/// The first phase number; 1 is the warm-up.
const WARMUP_ID: u8 = 1;
const FIRST_ID: u8 = 2;
/// How long a `max` phase waits for progress before writing its datagrams in flight off.
const LOSS_TIMEOUT: Duration = Duration::from_millis(5);
/// Socket buffers, forced past the sysctl limits (we are root in our namespace).
const SOCKET_BUFFER: usize = 4 << 20;

/// Runs the generator.
pub fn run(spec: &LoadSpec) -> Result<LoadReport, BenchError> {
    if spec.allocations == 0 {
        return Err(BenchError::Invalid("need at least one allocation".into()));
    }
    if spec.phases.len() + usize::from(FIRST_ID) > 255 {
        return Err(BenchError::Invalid("at most 253 phases".into()));
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let (locals, setup) = match &spec.credentials {
        Some(creds) if spec.setup_only => {
            let (setup, deleted) = if spec.spread_cpus.is_empty() {
                setup_only(spec, creds)?
            } else {
                let (clients, setup) = runtime.block_on(handshakes(spec, creds))?;
                (setup, runtime.block_on(delete_clients(clients)))
            };
            return Ok(LoadReport {
                mode: "turn",
                allocations: setup.allocated,
                batch: spec.batch,
                setup: Some(setup),
                phases: Vec::new(),
                deleted,
            });
        }
        Some(creds) => {
            let (clients, setup) = runtime.block_on(handshakes(spec, creds))?;
            let locals = clients
                .iter()
                .map(TurnClient::local_addr)
                .collect::<Result<Vec<_>, _>>()?;
            // Closing the client sockets frees their ports for the data sockets below.
            drop(clients);
            (locals, Some(setup))
        }
        None => (Vec::new(), None),
    };

    let sockets = open_sockets(spec, &locals)?;
    let phases = data_phases(spec, &sockets, started)?;
    drop(sockets);

    let deleted = match &spec.credentials {
        Some(creds) => runtime.block_on(delete_by_address(spec.server, creds, &locals)),
        None => 0,
    };
    Ok(LoadReport {
        mode: if spec.credentials.is_some() {
            "turn"
        } else {
            "raw"
        },
        allocations: sockets_count(spec, &locals),
        batch: spec.batch,
        setup,
        phases,
        deleted,
    })
}

fn sockets_count(spec: &LoadSpec, locals: &[SocketAddr]) -> usize {
    if spec.credentials.is_some() {
        locals.len()
    } else {
        spec.allocations
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        retransmit: RetransmitPolicy::with_budget(Duration::from_secs(8)),
        ..ClientConfig::default()
    }
}

/// The setup rate alone: every client's Allocate from this thread ([`crate::setup`]), timed,
/// then every allocation deleted (untimed). Returns the report and how many were deleted.
fn setup_only(
    spec: &LoadSpec,
    creds: &ClientCredentials,
) -> Result<(SetupReport, usize), BenchError> {
    let concurrency = spec.setup_concurrency.clamp(1, 1024);
    let relay_rss = || spec.cpu.relay_pids.first().and_then(|&pid| rss_kib(pid));
    let rss_before = relay_rss();
    // The clients' sockets are opened and registered before the clock starts.
    let clients = (0..spec.allocations)
        .map(|i| {
            let ip =
                (!spec.client_ips.is_empty()).then(|| spec.client_ips[i % spec.client_ips.len()]);
            setup::Client::open(spec.server, ip, creds.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = client_config();
    let mut clients = setup::Clients::new(clients, config.retransmit)?;
    let software = config.software.as_deref();
    let allocate = Request::Allocate(AllocateOptions {
        lifetime: spec.lifetime,
        ..AllocateOptions::default()
    });
    let cpu_start = spec.cpu.snapshot();
    let t0 = Instant::now();
    clients.run(&allocate, concurrency, software, t0 + spec.max_total)?;
    let allocate_s = t0.elapsed().as_secs_f64();
    let cpu = spec.cpu.between(&cpu_start, &spec.cpu.snapshot());
    let rss_allocated = relay_rss();
    let retransmissions = clients.retransmissions;
    let allocated = clients.count(&setup::Outcome::Done);
    let first_error = clients.first_error();
    if allocated == 0 {
        return Err(BenchError::Invalid(format!(
            "no allocation succeeded: {}",
            first_error.unwrap_or_default()
        )));
    }
    let delete = Request::Refresh {
        lifetime: Duration::ZERO,
    };
    clients.run(
        &delete,
        64,
        software,
        Instant::now() + Duration::from_secs(10),
    )?;
    let deleted = clients.count(&setup::Outcome::Done);
    let per_s = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let report = SetupReport {
        requested: spec.allocations,
        allocated,
        failed: spec.allocations - allocated,
        allocate_s,
        allocations_per_s: per_s(allocated, allocate_s),
        bound: 0,
        channels_bound: 0,
        bind_s: 0.0,
        channel_binds_per_s: 0.0,
        concurrency,
        cpu,
        relay_rss_kib: [rss_before, rss_allocated, rss_allocated],
        first_error,
        retransmissions: Some(retransmissions),
    };
    Ok((report, deleted))
}

/// Makes the allocations, then binds their channels, `setup_concurrency` at a time.
async fn handshakes(
    spec: &LoadSpec,
    creds: &ClientCredentials,
) -> Result<(Vec<TurnClient>, SetupReport), BenchError> {
    // Spread clients' Allocates leave one at a time, each from its client's CPU.
    let concurrency = if spec.spread_cpus.is_empty() {
        spec.setup_concurrency.clamp(1, 1024)
    } else {
        1
    };
    let home = Affinity::save(&spec.spread_cpus)?;
    let mut first_error: Option<String> = None;

    let relay_rss = || spec.cpu.relay_pids.first().and_then(|&pid| rss_kib(pid));
    let rss_before = relay_rss();
    // The clients' sockets are opened before the clock starts: the setup rate is the relay's.
    let mut unallocated = Vec::with_capacity(spec.allocations);
    for i in 0..spec.allocations {
        let config = ClientConfig {
            local: (!spec.client_ips.is_empty())
                .then(|| SocketAddr::new(spec.client_ips[i % spec.client_ips.len()], 0)),
            ..client_config()
        };
        unallocated.push(Mutex::new(Some(
            TurnClient::connect_with(spec.server, creds.clone(), config).await?,
        )));
    }
    let unallocated = Arc::new(unallocated);
    let cpu_start = spec.cpu.snapshot();
    let t0 = Instant::now();
    let lifetime = spec.lifetime;
    let results = bounded(spec.allocations, concurrency, |i| {
        let slots = Arc::clone(&unallocated);
        let cpu = spread_cpu(&spec.spread_cpus, i);
        async move {
            if let Some(cpu) = cpu {
                pin(cpu)?;
            }
            let mut client = take_slot(&slots[i])?;
            client
                .allocate(AllocateOptions {
                    lifetime,
                    ..AllocateOptions::default()
                })
                .await?;
            Ok::<_, BenchError>(client)
        }
    })
    .await;
    let allocate_s = t0.elapsed().as_secs_f64();
    let cpu = spec.cpu.between(&cpu_start, &spec.cpu.snapshot());
    home.restore()?;
    let mut clients = Vec::new();
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let allocated = clients.len();
    let failed = spec.allocations - allocated;
    let rss_allocated = relay_rss();
    if allocated == 0 {
        return Err(BenchError::Invalid(format!(
            "no allocation succeeded: {}",
            first_error.unwrap_or_default()
        )));
    }

    let (bound_clients, bind_s) = if spec.setup_only {
        (clients, 0.0)
    } else {
        let t1 = Instant::now();
        let peer = spec.peer;
        let channels = spec.channels.clamp(1, MAX_CHANNELS);
        let slots: Vec<Mutex<Option<TurnClient>>> =
            clients.into_iter().map(|c| Mutex::new(Some(c))).collect();
        let slots = Arc::new(slots);
        let results = bounded(slots.len(), concurrency, |i| {
            let slots = Arc::clone(&slots);
            async move {
                let mut client = take_slot(&slots[i])?;
                for j in 0..channels {
                    let mut to = peer;
                    to.set_port(peer.port().wrapping_add(j as u16));
                    client.channel_bind(to, CHANNEL + j as u16).await?;
                }
                Ok::<_, BenchError>(client)
            }
        })
        .await;
        let bind_s = t1.elapsed().as_secs_f64();
        let mut bound = Vec::new();
        for r in results {
            match r {
                Ok(c) => bound.push(c),
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        (bound, bind_s)
    };
    let bound = if spec.setup_only {
        0
    } else {
        bound_clients.len()
    };
    let channels_bound = bound * spec.channels.clamp(1, MAX_CHANNELS);
    let rss_bound = relay_rss();
    if !spec.setup_only && bound == 0 {
        return Err(BenchError::Invalid(format!(
            "no ChannelBind succeeded: {}",
            first_error.unwrap_or_default()
        )));
    }
    let per_s = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let report = SetupReport {
        requested: spec.allocations,
        allocated,
        failed,
        allocate_s,
        allocations_per_s: per_s(allocated, allocate_s),
        bound,
        channels_bound,
        bind_s,
        channel_binds_per_s: per_s(channels_bound, bind_s),
        concurrency,
        cpu,
        relay_rss_kib: [rss_before, rss_allocated, rss_bound],
        first_error,
        retransmissions: None,
    };
    Ok((bound_clients, report))
}

/// The client in `slot`, which only one task takes.
fn take_slot(slot: &Mutex<Option<TurnClient>>) -> Result<TurnClient, BenchError> {
    slot.lock()
        .map_err(|_| BenchError::Invalid("poisoned".into()))?
        .take()
        .ok_or_else(|| BenchError::Invalid("client taken twice".into()))
}

/// Runs `make(i)` for `i` in `0..count`, at most `concurrency` at a time, in order of `i`.
async fn bounded<T, F, Fut>(count: usize, concurrency: usize, make: F) -> Vec<Result<T, BenchError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut results: Vec<Option<Result<T, BenchError>>> = (0..count).map(|_| None).collect();
    let mut next = 0;
    while next < count.min(concurrency) {
        let fut = make(next);
        let i = next;
        set.spawn(async move { (i, fut.await) });
        next += 1;
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(e) => return vec![Err(BenchError::Invalid(format!("task failed: {e}")))],
        }
        if next < count {
            let fut = make(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(BenchError::Invalid("not run".into()))))
        .collect()
}

async fn delete_clients(clients: Vec<TurnClient>) -> usize {
    let slots: Arc<Vec<Mutex<Option<TurnClient>>>> =
        Arc::new(clients.into_iter().map(|c| Mutex::new(Some(c))).collect());
    let results = bounded(slots.len(), 64, |i| {
        let slots = Arc::clone(&slots);
        async move {
            let client = slots[i].lock().ok().and_then(|mut s| s.take());
            if let Some(mut client) = client {
                tokio::time::timeout(Duration::from_secs(3), client.delete())
                    .await
                    .map_err(|_| BenchError::Invalid("delete timed out".into()))??;
            }
            Ok(())
        }
    })
    .await;
    results.iter().filter(|r| r.is_ok()).count()
}

/// Deletes the allocations of these client addresses from fresh clients on the same ports
/// (the relay knows an allocation by its 5-tuple).
async fn delete_by_address(
    server: SocketAddr,
    creds: &ClientCredentials,
    locals: &[SocketAddr],
) -> usize {
    let locals = Arc::new(locals.to_vec());
    let results = bounded(locals.len(), 64, |i| {
        let creds = creds.clone();
        let locals = Arc::clone(&locals);
        async move {
            let config = ClientConfig {
                local: Some(locals[i]),
                retransmit: RetransmitPolicy::with_budget(Duration::from_secs(3)),
                ..ClientConfig::default()
            };
            let mut client = TurnClient::connect_with(server, creds, config).await?;
            client.delete().await?;
            Ok(())
        }
    })
    .await;
    results.iter().filter(|r| r.is_ok()).count()
}

/// The data sockets: one per allocation, on the allocation's client port (TURN mode), or on a
/// fresh port (raw mode); connected to the server.
fn open_sockets(spec: &LoadSpec, locals: &[SocketAddr]) -> Result<Vec<OwnedFd>, BenchError> {
    let domain = Domain::for_address(spec.server);
    let unspecified: SocketAddr = if spec.server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| BenchError::Invalid("address".into()))?;
    let binds: Vec<SocketAddr> = if spec.credentials.is_some() {
        locals.to_vec()
    } else {
        vec![unspecified; spec.allocations]
    };
    let mut sockets = Vec::with_capacity(binds.len());
    for local in binds {
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&local.into())?;
        socket.connect(&spec.server.into())?;
        tune_socket(&socket, SOCKET_BUFFER)?;
        sockets.push(OwnedFd::from(socket));
    }
    Ok(sockets)
}

/// The warm-up and every phase, with a receiver thread counting echoes.
fn data_phases(
    spec: &LoadSpec,
    sockets: &[OwnedFd],
    started: Instant,
) -> Result<Vec<PhaseReport>, BenchError> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        received: Mutex::new((0..=255).map(|_| Received::default()).collect()),
        current_received: AtomicU64::new(0),
    });
    let current = AtomicU8::new(0);
    // A scoped receiver borrows the sockets: no duplicated descriptors (the scale run has
    // 10 000 of them).
    std::thread::scope(|scope| {
        let receiver = std::thread::Builder::new()
            .name("xturn-bench-rx".into())
            .spawn_scoped(scope, || receive(sockets, &shared, &current))?;
        let result = phases_in_order(spec, sockets, &shared, &current, started);
        shared.stop.store(true, Ordering::Relaxed);
        match receiver.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(BenchError::Invalid("receiver thread panicked".into())),
        }
        result
    })
}

/// The warm-up, then every phase.
fn phases_in_order(
    spec: &LoadSpec,
    sockets: &[OwnedFd],
    shared: &Shared,
    current: &AtomicU8,
    started: Instant,
) -> Result<Vec<PhaseReport>, BenchError> {
    let mut reports = Vec::new();
    let mut retry_spent = Duration::ZERO;
    // Every attempt of every phase has its own number, so the echo counts each apart.
    let mut next_id = FIRST_ID;
    if !spec.warmup.is_zero() {
        let warmup = PhaseSpec {
            name: "warmup".into(),
            kind: PhaseKind::Rate(5_000),
            payload: spec.phases.first().map_or(100, |p| p.payload),
            duration: spec.warmup,
        };
        run_attempt(spec, sockets, shared, current, &warmup, WARMUP_ID)?;
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        let needed = phase.duration + spec.drain;
        if started.elapsed() + needed > spec.max_total {
            return Err(BenchError::Invalid(format!(
                "phase {} would end past the {:?} limit",
                phase.name, spec.max_total
            )));
        }
        // Room for the first attempt of every phase still to come.
        let reserved = u8::try_from(spec.phases.len() - i).unwrap_or(u8::MAX);
        reports.push(run_phase(
            spec,
            sockets,
            shared,
            current,
            phase,
            (&mut next_id, reserved),
            &mut retry_spent,
        )?);
    }
    Ok(reports)
}

/// Runs a phase, again while other processes disturbed it and the retry budget lasts; returns
/// the least disturbed attempt.
fn run_phase(
    spec: &LoadSpec,
    sockets: &[OwnedFd],
    shared: &Shared,
    current: &AtomicU8,
    phase: &PhaseSpec,
    (next_id, reserved): (&mut u8, u8),
    retry_spent: &mut Duration,
) -> Result<PhaseReport, BenchError> {
    fn take(next_id: &mut u8) -> u8 {
        let id = *next_id;
        *next_id = next_id.saturating_add(1);
        id
    }
    let mut best = run_attempt(spec, sockets, shared, current, phase, take(next_id))?;
    let mut attempts = 1;
    while best.cpu.interference() > spec.interference_limit
        && attempts < spec.max_attempts.max(1)
        && *retry_spent + phase.duration + spec.drain <= spec.retry_budget
        && u16::from(*next_id) + u16::from(reserved) < 255
    {
        *retry_spent += phase.duration + spec.drain;
        attempts += 1;
        let again = run_attempt(spec, sockets, shared, current, phase, take(next_id))?;
        if again.cpu.interference() < best.cpu.interference() {
            best = again;
        }
    }
    best.attempts = attempts;
    Ok(best)
}

fn run_attempt(
    spec: &LoadSpec,
    sockets: &[OwnedFd],
    shared: &Shared,
    current: &AtomicU8,
    phase: &PhaseSpec,
    id: u8,
) -> Result<PhaseReport, BenchError> {
    if let PhaseKind::Reflected(count) = phase.kind {
        return reflected_attempt(spec, sockets, phase, id, count);
    }
    current.store(id, Ordering::Relaxed);
    shared.current_received.store(0, Ordering::Relaxed);
    let batch_size = spec.batch.clamp(1, 1024);
    let window = spec.window.max(batch_size) as u64;
    let mut written_off: u64 = 0;
    let mut last_back: u64 = 0;
    let mut last_progress = Instant::now();
    let stride = CHANNEL_HEADER_LEN + phase.payload;
    let mut batch = Batch::new(batch_size, stride);
    for i in 0..batch_size {
        batch.slot_mut(i).fill(0);
    }

    let cpu_start = spec.cpu.snapshot();
    let t0 = Instant::now();
    let mut sent: u64 = 0;
    let mut send_errors: u64 = 0;
    let mut seq: u64 = 0;
    let mut next_socket = 0usize;
    // Each round over the sockets sends on the next channel of every allocation.
    let channels = spec.channels.clamp(1, MAX_CHANNELS);
    let mut channel = 0usize;
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= phase.duration {
            break;
        }
        let n = match phase.kind {
            PhaseKind::Max => {
                let back = shared.current_received.load(Ordering::Relaxed);
                let in_flight = sent.saturating_sub(back + written_off);
                if in_flight + batch_size as u64 > window {
                    let now = Instant::now();
                    if back != last_back {
                        last_back = back;
                        last_progress = now;
                    } else if now - last_progress > LOSS_TIMEOUT {
                        written_off += in_flight;
                        last_progress = now;
                    }
                    std::thread::sleep(Duration::from_micros(10));
                    continue;
                }
                batch_size
            }
            PhaseKind::Rate(rate) => {
                let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
                let owed = due.saturating_sub(sent + send_errors);
                if owed == 0 {
                    // Next datagram due in 1/rate s: sleep most of that, at most 200 µs.
                    let wait =
                        Duration::from_secs_f64(1.0 / rate as f64).min(Duration::from_micros(200));
                    std::thread::sleep(wait / 2);
                    continue;
                }
                usize::try_from(owed).unwrap_or(usize::MAX).min(batch_size)
            }
            // Sent by `reflected_attempt`, never here.
            PhaseKind::Reflected(_) => break,
        };
        let now = mono_ns();
        for i in 0..n {
            let stamp = Stamp {
                phase: id,
                seq,
                sent_ns: now,
            };
            seq += 1;
            let number = CHANNEL + channel as u16;
            let len = wire::fill_channel_data(batch.slot_mut(i), number, phase.payload, stamp);
            batch.set_len(i, len);
        }
        let socket = sockets[next_socket].as_fd();
        next_socket = (next_socket + 1) % sockets.len();
        if next_socket == 0 {
            channel = (channel + 1) % channels;
        }
        match batch.send(socket, n) {
            Ok(k) => {
                sent += k as u64;
                send_errors += (n - k.min(n)) as u64;
            }
            Err(_) => send_errors += n as u64,
        }
    }
    let duration_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(spec.drain);
    let window_s = t0.elapsed().as_secs_f64();
    let cpu = spec.cpu.between(&cpu_start, &spec.cpu.snapshot());
    let (received, rtt) = {
        let mut all = shared
            .received
            .lock()
            .map_err(|_| BenchError::Invalid("poisoned".into()))?;
        let r = std::mem::take(&mut all[usize::from(id)]);
        (r.count, RttReport::from_histogram(&r.rtt))
    };
    Ok(PhaseReport {
        name: phase.name.clone(),
        id,
        kind: match phase.kind {
            PhaseKind::Max => "max",
            PhaseKind::Rate(_) => "rate",
            PhaseKind::Reflected(_) => "reflected",
        },
        offered_pps: match phase.kind {
            PhaseKind::Rate(r) => Some(r),
            PhaseKind::Max | PhaseKind::Reflected(_) => None,
        },
        payload: phase.payload,
        allocations: sockets.len(),
        duration_s,
        window_s,
        sent,
        send_errors,
        received,
        attempts: 1,
        relay_received: None,
        rtt,
        cpu,
    })
}

/// How long a `reflected` phase lets its datagrams spread before the window opens.
const REFLECTED_SETTLE: Duration = Duration::from_millis(300);

/// A `reflected` phase: `count` datagrams out once, then the relay's received datagrams and CPU
/// over the phase's duration.
fn reflected_attempt(
    spec: &LoadSpec,
    sockets: &[OwnedFd],
    phase: &PhaseSpec,
    id: u8,
    count: u64,
) -> Result<PhaseReport, BenchError> {
    let relay = spec.cpu.relay_pids.first().copied().ok_or_else(|| {
        BenchError::Invalid("a reflected phase needs --relay-pid (its namespace's counters)".into())
    })?;
    let batch_size = spec.batch.clamp(1, 1024);
    let stride = CHANNEL_HEADER_LEN + phase.payload;
    let mut batch = Batch::new(batch_size, stride);
    let sockets_n = sockets.len() as u64;
    let (mut sent, mut send_errors, mut seq) = (0u64, 0u64, 0u64);
    let home = Affinity::save(&spec.spread_cpus)?;
    for (i, socket) in sockets.iter().enumerate() {
        // Socket `i` is client `i`'s (in the order they were allocated).
        if let Some(cpu) = spread_cpu(&spec.spread_cpus, i) {
            pin(cpu)?;
        }
        // An even share each; the first ones take the remainder.
        let mut share = count / sockets_n + u64::from((i as u64) < count % sockets_n);
        while share > 0 {
            let n = usize::try_from(share).unwrap_or(usize::MAX).min(batch_size);
            let now = mono_ns();
            for slot in 0..n {
                let stamp = Stamp {
                    phase: id,
                    seq,
                    sent_ns: now,
                };
                seq += 1;
                let len =
                    wire::fill_channel_data(batch.slot_mut(slot), CHANNEL, phase.payload, stamp);
                batch.set_len(slot, len);
            }
            match batch.send(socket.as_fd(), n) {
                Ok(k) => {
                    sent += k as u64;
                    send_errors += (n - k.min(n)) as u64;
                }
                Err(_) => send_errors += n as u64,
            }
            share -= n as u64;
        }
    }
    home.restore()?;
    std::thread::sleep(REFLECTED_SETTLE);
    let cpu_start = spec.cpu.snapshot();
    let rx_start = relay_received(relay)?;
    let t0 = Instant::now();
    std::thread::sleep(phase.duration);
    let rx_end = relay_received(relay)?;
    let window_s = t0.elapsed().as_secs_f64();
    let cpu = spec.cpu.between(&cpu_start, &spec.cpu.snapshot());
    Ok(PhaseReport {
        name: phase.name.clone(),
        id,
        kind: "reflected",
        offered_pps: None,
        payload: phase.payload,
        allocations: sockets.len(),
        duration_s: window_s,
        window_s,
        sent,
        send_errors,
        received: 0,
        attempts: 1,
        relay_received: Some(rx_end.saturating_sub(rx_start)),
        rtt: RttReport::default(),
        cpu,
    })
}

/// The CPU client `k`'s traffic leaves from ([`LoadSpec::spread_cpus`]).
fn spread_cpu(cpus: &[usize], k: usize) -> Option<usize> {
    (!cpus.is_empty()).then(|| cpus[k % cpus.len()])
}

/// Moves the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<(), BenchError> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set))
        .map_err(|e| BenchError::Invalid(format!("cannot move to CPU {cpu}: {e}")))
}

/// The calling thread's CPUs before it was moved, to return to (nothing to do unless spreading).
struct Affinity(Option<CpuSet>);

impl Affinity {
    fn save(spread: &[usize]) -> Result<Affinity, BenchError> {
        if spread.is_empty() {
            return Ok(Affinity(None));
        }
        sched_getaffinity(Pid::from_raw(0))
            .map(|set| Affinity(Some(set)))
            .map_err(|e| BenchError::Invalid(format!("cannot read this thread's CPUs: {e}")))
    }

    fn restore(&self) -> Result<(), BenchError> {
        match &self.0 {
            Some(set) => sched_setaffinity(Pid::from_raw(0), set).map_err(|e| {
                BenchError::Invalid(format!("cannot return to this thread's CPUs: {e}"))
            }),
            None => Ok(()),
        }
    }
}

/// UDP datagrams the sockets of `pid`'s network namespace received (`InDatagrams` of
/// `/proc/PID/net/snmp`): every datagram the relay relays, in either direction, is one it read,
/// and unlike interface counters this counts each datagram of a UDP GSO buffer.
fn relay_received(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/net/snmp");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Invalid(format!("reading {path}: {e}")))?;
    udp_in_datagrams(&text)
        .ok_or_else(|| BenchError::Invalid(format!("no Udp InDatagrams in {path}")))
}

/// `InDatagrams` of the `Udp:` lines (names, then values) of `/proc/net/snmp`.
fn udp_in_datagrams(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let column = names.split_whitespace().position(|n| n == "InDatagrams")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// The receiver: every socket behind one epoll set; counts echoes per phase and records their
/// round-trip times.
fn receive(sockets: &[OwnedFd], shared: &Shared, current: &AtomicU8) -> Result<(), BenchError> {
    let epoll = super::epoll_set(sockets.iter().map(AsRawFd::as_raw_fd))?;
    let mut batch = Batch::new(64, 2048);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut local: Vec<(u8, u64)> = Vec::with_capacity(64);
    while !shared.stop.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for the count we pass.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                20,
            )
        };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in &events[..usize::try_from(ready).unwrap_or(0)] {
            let Some(socket) = usize::try_from(event.u64).ok().and_then(|i| sockets.get(i)) else {
                continue;
            };
            // Drain this socket, a bounded number of batches so others get their turn.
            for _ in 0..16 {
                // ICMP errors (a relay that is not there) and the like: keep going.
                let n = batch.recv(socket.as_fd()).unwrap_or_default();
                if n == 0 {
                    break;
                }
                let now = mono_ns();
                local.clear();
                for i in 0..n {
                    let Some((_, data)) = wire::parse_channel_data(batch.received(i)) else {
                        continue;
                    };
                    if let Some(stamp) = Stamp::read(data) {
                        local.push((stamp.phase, now.saturating_sub(stamp.sent_ns)));
                    }
                }
                let mut all = shared
                    .received
                    .lock()
                    .map_err(|_| BenchError::Invalid("poisoned".into()))?;
                let now_phase = current.load(Ordering::Relaxed);
                let mut of_current = 0;
                for &(phase, rtt) in &local {
                    let r = &mut all[usize::from(phase)];
                    r.count += 1;
                    r.rtt.record(rtt);
                    of_current += u64::from(phase == now_phase);
                }
                drop(all);
                shared
                    .current_received
                    .fetch_add(of_current, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse() {
        let max: PhaseSpec = "max:100:4".parse().expect("max");
        assert_eq!(max.kind, PhaseKind::Max);
        assert_eq!((max.payload, max.duration), (100, Duration::from_secs(4)));
        let rate: PhaseSpec = "rate:1200:1.5:20000".parse().expect("rate");
        assert_eq!(rate.kind, PhaseKind::Rate(20_000));
        assert_eq!(rate.duration, Duration::from_millis(1500));
        let reflected: PhaseSpec = "reflected:100:3:256".parse().expect("reflected");
        assert_eq!(reflected.kind, PhaseKind::Reflected(256));
        for bad in [
            "reflected:100:3",
            "reflected:100:3:0",
            "reflected:100:3:65537",
            "max:10:4",
            "max:100:0",
            "max:100:601",
            "rate:100:4",
            "rate:100:4:0",
            "burst:100:4",
            "max:100000:4",
            "",
        ] {
            assert!(bad.parse::<PhaseSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn udp_in_datagrams_are_read_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 418788 0 0 416558 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
UdpLite: 0 0 0 0 0 0
";
        assert_eq!(udp_in_datagrams(snmp), Some(418_788));
        assert_eq!(udp_in_datagrams("Udp: InDatagrams\n"), None);
        assert_eq!(udp_in_datagrams(""), None);
    }

    /// The whole generator in raw mode against an echo on loopback.
    #[test]
    fn raw_mode_against_a_loopback_echo() {
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("echo");
        echo.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let server = echo.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let echo_thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = echo.recv_from(&mut buf) {
                        let _ = echo.send_to(&buf[..n], from);
                    }
                }
            })
        };
        let spec = LoadSpec {
            server,
            credentials: None,
            peer: server,
            allocations: 3,
            channels: 1,
            setup_concurrency: 1,
            phases: vec!["rate:100:0.3:2000".parse().expect("phase")],
            batch: 8,
            window: 64,
            cpu: CpuSpec::default(),
            drain: Duration::from_millis(200),
            warmup: Duration::ZERO,
            setup_only: false,
            client_ips: Vec::new(),
            spread_cpus: Vec::new(),
            lifetime: None,
            max_total: Duration::from_secs(10),
            interference_limit: 1.0,
            retry_budget: Duration::ZERO,
            max_attempts: 1,
        };
        let report = run(&spec).expect("run");
        stop.store(true, Ordering::Relaxed);
        echo_thread.join().expect("echo");
        let phase = &report.phases[0];
        assert_eq!((report.mode, report.allocations), ("raw", 3));
        assert!(phase.sent >= 400 && phase.sent <= 700, "{phase:?}");
        assert!(phase.received * 10 >= phase.sent * 9, "{phase:?}");
        assert_eq!(phase.rtt.samples, phase.received);
        assert!(phase.rtt.p50_us.is_some());
    }
}
