//! The event loop: runs the sans-IO [`turn::Server`] over real sockets.
//!
//! - Each UDP listener has `threads` sockets bound with `SO_REUSEPORT`, each read by its own
//!   task, so the kernel spreads clients over cores. With lanes ([`crate::lanes`]) socket `i`
//!   and reader `i` run on a thread pinned to a CPU of their own and the kernel steers each
//!   datagram to the socket of the CPU it arrived on; otherwise they are tasks of the main
//!   runtime. TCP and TLS listeners accept connections
//!   ([`crate::stream`]); DTLS listeners run sessions on one UDP socket ([`crate::dtls`]).
//! - Each relayed address is a real UDP socket owned by its allocation, read by one of
//!   `threads` reader tasks through that reader's epoll set ([`crate::relayed`]).
//! - A timer task drives expiry.
//!
//! The packet path of bound channels does not touch the protocol state: the core's channel
//! events fill a [`ChannelTable`] (see [`crate::channels`]), and UDP clients' ChannelData and
//! their peers' datagrams are relayed straight from it, many per system call: sockets are read
//! with `recvmmsg` (a batch of up to [`BATCH`] datagrams per wake-up), peer datagrams are
//! received behind four bytes of headroom so the ChannelData header is written in front of them
//! in place, and a batch's ChannelData to one client leaves with one `sendmmsg`.
//!
//! Everything else (requests, Send and Data indications, unbound channels, stream and DTLS
//! clients) goes to the protocol state, which sits behind one mutex. A task locks it only to
//! hand over one message (or tick) and to collect the resulting [`Command`]s; the commands are
//! carried out after the lock is released. Sends are non-blocking: a full socket buffer drops
//! the datagram, as UDP would.
//!
//! Every socket's datagrams are counted ([`IoCounters`], relaxed atomic adds, one per batch) for
//! metrics, which read them when scraped through a [`ServerHandle`].
use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use socket2::{Domain, Protocol, Socket, Type};
use std::os::fd::AsFd as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    task::JoinSet,
};
use tracing::{debug, info, trace, warn};

pub use crate::config::Transport;
use crate::{
    channels::{ChannelTable, ToPeer},
    dtls::DtlsListener,
    offload::ChannelOffload,
    relayed::{RelayShared, Relays},
    stream::{Connections, StreamListener},
    tls::CertStore,
};
use turn_proto::server::{self as turn, BindFailure, ChannelBinding, Command, ListenerId};
use turn_proto::wire;
use udp_batch::Batch;

/// Largest datagram we read: bigger than any MTU, so nothing is truncated silently.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams taken from a socket per `recvmmsg`.
const BATCH: usize = 32;
/// Bytes of a ChannelData header (RFC 8656 §12.4), written in front of a peer's datagram.
const CHANNEL_HEADER: usize = 4;
/// Socket buffer size asked for (the kernel caps it at `net.core.{r,w}mem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;
/// The timer wakes at least this often, so new deadlines are never missed by more than this.
const MAX_TICK: Duration = Duration::from_millis(500);
/// The allocation state is written at most this often (and at most this long after a change).
const STATE_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the per-user usage is written to the state directory (when it changed). Each
/// write folds the channel table into the core (a pass over every binding, see
/// [`crate::channels`]), so not often.
const USAGE_SAVE: Duration = Duration::from_secs(10);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind listener {addr}: {source}")]
    BindListener {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("DTLS listener {addr}: {message}")]
    Dtls { addr: SocketAddr, message: String },
    #[error("cannot create the epoll sets of the relayed sockets: {0}")]
    Relays(#[source] io::Error),
    #[error("cannot start a data-plane lane's thread: {0}")]
    Lanes(#[source] io::Error),
}

/// Where the core's channel events go: the data plane's kernel offload, for the clients of
/// UDP listeners only (the kernel speaks plain UDP to clients).
struct ChannelEvents {
    offload: Option<Arc<ChannelOffload>>,
    /// By [`ListenerId`].
    udp: Vec<bool>,
}

impl ChannelEvents {
    /// Whether `binding`'s client came through a UDP listener.
    fn is_udp(&self, binding: &ChannelBinding) -> bool {
        self.udp
            .get(usize::from(binding.listener.0))
            .copied()
            .unwrap_or(false)
    }

    /// The offload `binding`'s events go to, if any.
    fn offload_for(&self, binding: &ChannelBinding) -> Option<&ChannelOffload> {
        self.offload.as_deref().filter(|_| self.is_udp(binding))
    }
}

/// How often certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Reloads changed certificates; open TLS sessions keep theirs.
async fn certificate_task(stores: Vec<Arc<CertStore>>) {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for store in &stores {
            match store.reload_if_changed() {
                Ok(true) => info!(cert = %store.material().cert, "certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "certificate not reloaded; the previous one stays in use");
                }
            }
        }
    }
}

/// A listener to serve.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// For TLS and DTLS.
    pub tls: Option<Arc<CertStore>>,
}

impl From<SocketAddr> for ListenerSpec {
    fn from(addr: SocketAddr) -> Self {
        ListenerSpec {
            addr,
            transport: Transport::Udp,
            tls: None,
        }
    }
}

/// What the server needs to start, besides the protocol state.
pub struct ServerSpec {
    /// Each listener, indexed by [`ListenerId`].
    pub listeners: Vec<ListenerSpec>,
    /// TCP/TLS connections or DTLS sessions per listener.
    pub max_connections: usize,
    /// TCP/TLS connections per client IP address, per listener.
    pub max_connections_per_ip: usize,
    /// Stream connections and DTLS sessions without a complete message for this long close.
    pub idle_timeout: Duration,
    /// Sockets per listener (`SO_REUSEPORT`) and relayed-socket readers.
    pub threads: usize,
    /// The CPU of each data-plane lane ([`crate::lanes::plan`]; as many as `threads`), or
    /// `None` to run the data plane on the main runtime.
    pub lanes: Option<Vec<usize>>,
    /// Relayed addresses of allocations the core adopted ([`turn::Server::restore`]): bound
    /// before any listener is read; an address that cannot be bound drops its allocation.
    pub restored: Vec<SocketAddr>,
    /// Where to keep the allocation state ([`crate::state`]), written whenever it changes.
    pub state_dir: Option<PathBuf>,
}

/// Datagrams and UDP payload bytes through a group of sockets, both ways: a set of counters
/// per lane (each on cache lines of its own, so lanes on different CPUs never write the same
/// line), summed when read. Threads that are no lane count in the first set.
#[derive(Debug)]
pub struct IoCounters {
    lanes: Box<[LaneIo]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct LaneIo {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    /// Sends the kernel refused (full socket buffer, unreachable, too big): the datagram is lost.
    tx_errors: AtomicU64,
}

impl IoCounters {
    /// Counters for `lanes` lanes (at least one set).
    fn new(lanes: usize) -> IoCounters {
        IoCounters {
            lanes: (0..lanes.max(1)).map(|_| LaneIo::default()).collect(),
        }
    }

    /// This thread's set.
    fn mine(&self) -> &LaneIo {
        crate::lanes::current()
            .and_then(|lane| self.lanes.get(lane))
            .unwrap_or(&self.lanes[0])
    }

    fn received(&self, len: usize) {
        self.received_many(1, len);
    }

    fn received_many(&self, packets: usize, bytes: usize) {
        if packets > 0 {
            let io = self.mine();
            io.rx_packets.fetch_add(packets as u64, Ordering::Relaxed);
            io.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    fn sent(&self, len: usize, ok: bool) {
        if ok {
            self.sent_many(1, len, 0);
        } else {
            self.sent_many(0, 0, 1);
        }
    }

    /// `packets` datagrams of `bytes` in all sent, `errors` refused.
    fn sent_many(&self, packets: usize, bytes: usize, errors: usize) {
        let io = self.mine();
        if packets > 0 {
            io.tx_packets.fetch_add(packets as u64, Ordering::Relaxed);
            io.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if errors > 0 {
            io.tx_errors.fetch_add(errors as u64, Ordering::Relaxed);
        }
    }

    /// The counters now, every lane's together.
    pub fn snapshot(&self) -> IoSnapshot {
        let sum = |counter: fn(&LaneIo) -> &AtomicU64| {
            self.lanes
                .iter()
                .map(|io| counter(io).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        IoSnapshot {
            rx_packets: sum(|io| &io.rx_packets),
            rx_bytes: sum(|io| &io.rx_bytes),
            tx_packets: sum(|io| &io.tx_packets),
            tx_bytes: sum(|io| &io.tx_bytes),
            tx_errors: sum(|io| &io.tx_errors),
        }
    }
}

/// A stream or DTLS listener's connections, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    /// Connections (TCP/TLS) or sessions (DTLS) open now.
    pub open: u64,
    pub accepted: u64,
    /// Turned away at the connection limit (DTLS: also datagrams from new addresses that were
    /// no handshake).
    pub refused: u64,
    /// Turned away because their client's IP address had the most connections one may.
    pub refused_per_ip: u64,
    /// TLS handshakes failed or timed out; DTLS sessions ended by an error.
    pub handshake_failures: u64,
    /// Closed for no complete message in time.
    pub timed_out: u64,
    /// Closed for sending what is not STUN or ChannelData (DTLS: datagrams of an established
    /// session that did not decrypt, dropped; the session stays).
    pub protocol_errors: u64,
    /// Messages to clients dropped (full send queue; DTLS: no established session).
    pub dropped: u64,
}

/// [`IoCounters`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoSnapshot {
    /// Datagrams received, and their UDP payload bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Datagrams sent, and their UDP payload bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Datagrams whose send failed.
    pub tx_errors: u64,
}

/// How replies reach a listener's clients.
pub(crate) enum ClientIo {
    /// The listener's sockets, one per thread: a lane answers through its own
    /// ([`ClientIo::udp_socket`]), anybody else through the first.
    Udp(Vec<Arc<std::net::UdpSocket>>),
    /// The listener's connections.
    Stream(Arc<Connections>),
    Dtls(Arc<DtlsListener>),
}

impl ClientIo {
    /// The socket this thread sends a UDP listener's datagrams through.
    fn udp_socket(sockets: &[Arc<std::net::UdpSocket>]) -> Option<&Arc<std::net::UdpSocket>> {
        crate::lanes::current()
            .and_then(|lane| sockets.get(lane))
            .or_else(|| sockets.first())
    }
}

pub(crate) struct Shared {
    core: Mutex<turn::Server>,
    /// Bound channels of UDP clients, relayed without the core.
    channels: ChannelTable<RelayShared>,
    /// Each listener's way to its clients, indexed by [`ListenerId`].
    clients: Vec<ClientIo>,
    relays: Relays,
    /// TCP allocations' sockets (RFC 6062).
    tcp: crate::tcp_relay::TcpRelays,
    channel_events: ChannelEvents,
    /// Traffic of each listener's sockets, indexed by [`ListenerId`].
    listener_io: Vec<IoCounters>,
    /// Traffic of all relayed sockets together.
    relay_io: IoCounters,
    /// When the server started, and milliseconds from then to the timer task's last tick.
    started: Instant,
    last_tick_ms: AtomicU64,
}

/// A running server. Dropping it stops every task.
pub struct RunningServer {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    /// The data-plane lanes, when they run on threads of their own; stopped when dropped.
    _lanes: Vec<crate::lanes::Lane>,
    local_addrs: Vec<SocketAddr>,
    /// Adopted allocations dropped because a relayed address could not be bound.
    dropped: usize,
    state_dir: Option<PathBuf>,
}

impl RunningServer {
    /// Binds every listener and starts the tasks. Must be called inside a tokio runtime.
    pub fn start(
        core: turn::Server,
        spec: &ServerSpec,
        offload: Option<Arc<ChannelOffload>>,
    ) -> Result<RunningServer, ServerError> {
        let threads = spec.threads.max(1);
        // Only UDP clients' channels go to the kernel fast path: it speaks plain UDP to them.
        let udp: Vec<bool> = spec
            .listeners
            .iter()
            .map(|l| l.transport == Transport::Udp)
            .collect();
        let channel_events = ChannelEvents { offload, udp };
        let lanes = spec.lanes.as_ref().filter(|cpus| cpus.len() == threads);
        let mut udp_sockets: Vec<(ListenerId, Vec<Arc<std::net::UdpSocket>>)> = Vec::new();
        let mut tcp_sockets: Vec<(Arc<StreamListener>, tokio::net::TcpListener)> = Vec::new();
        let mut dtls: Vec<Arc<DtlsListener>> = Vec::new();
        let mut clients = Vec::new();
        let mut local_addrs = Vec::new();
        for (index, listener) in spec.listeners.iter().enumerate() {
            let addr = listener.addr;
            let id = ListenerId(u16::try_from(index).unwrap_or(u16::MAX));
            let bind_error = |source| ServerError::BindListener { addr, source };
            match listener.transport {
                Transport::Udp => {
                    let mut sockets = Vec::with_capacity(threads);
                    for _ in 0..threads {
                        sockets.push(Arc::new(bind_udp_socket(addr, true).map_err(bind_error)?));
                    }
                    let local = sockets[0].local_addr().map_err(bind_error)?;
                    if let Some(cpus) = lanes
                        && let Err(e) = crate::lanes::attach_steering(&*sockets[0], cpus)
                    {
                        // Still correct: the kernel hashes clients over the sockets instead.
                        warn!(%local, error = %e, "cannot steer datagrams to their CPU's socket");
                    }
                    info!(%local, sockets = sockets.len(), "listening (TURN over UDP)");
                    local_addrs.push(local);
                    clients.push(ClientIo::Udp(sockets.clone()));
                    udp_sockets.push((id, sockets));
                }
                Transport::Tcp | Transport::Tls => {
                    let socket = crate::stream::bind(addr).map_err(bind_error)?;
                    let local = socket.local_addr().map_err(bind_error)?;
                    info!(%local, transport = %listener.transport, "listening (TURN over a stream)");
                    local_addrs.push(local);
                    let connections = Arc::new(Connections::default());
                    clients.push(ClientIo::Stream(Arc::clone(&connections)));
                    let stream = StreamListener {
                        id,
                        connections,
                        tls: listener.tls.clone(),
                        max_connections: spec.max_connections,
                        max_connections_per_ip: spec.max_connections_per_ip,
                        idle_timeout: spec.idle_timeout,
                    };
                    tcp_sockets.push((Arc::new(stream), socket));
                }
                Transport::Dtls => {
                    let socket = Arc::new(bind_udp(addr, false).map_err(bind_error)?);
                    let local = socket.local_addr().map_err(bind_error)?;
                    let Some(certs) = listener.tls.clone() else {
                        return Err(ServerError::Dtls {
                            addr,
                            message: "no certificate".to_owned(),
                        });
                    };
                    let listener = DtlsListener::new(
                        id,
                        socket,
                        certs,
                        spec.max_connections,
                        spec.idle_timeout,
                    )
                    .map_err(|message| ServerError::Dtls { addr, message })?;
                    info!(%local, "listening (TURN over DTLS)");
                    local_addrs.push(local);
                    let listener = Arc::new(listener);
                    clients.push(ClientIo::Dtls(Arc::clone(&listener)));
                    dtls.push(listener);
                }
            }
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            channels: ChannelTable::new(),
            clients,
            relays: Relays::new(threads).map_err(ServerError::Relays)?,
            tcp: crate::tcp_relay::TcpRelays::default(),
            channel_events,
            listener_io: spec
                .listeners
                .iter()
                .map(|_| IoCounters::new(threads))
                .collect(),
            relay_io: IoCounters::new(threads),
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
        });
        let dropped = bind_restored(&shared, &spec.restored);
        shared.adopt_channels();
        let mut tasks = JoinSet::new();
        if let Some(dir) = &spec.state_dir {
            tasks.spawn(state_task(Arc::clone(&shared), dir.clone()));
            tasks.spawn(usage_task(Arc::clone(&shared), dir.clone()));
        }
        let mut running_lanes = Vec::new();
        if let Some(cpus) = lanes {
            for (index, &cpu) in cpus.iter().enumerate() {
                let lane_shared = Arc::clone(&shared);
                let sockets: Vec<_> = udp_sockets
                    .iter()
                    .filter_map(|(id, sockets)| Some((*id, Arc::clone(sockets.get(index)?))))
                    .collect();
                let (lane, ended) = crate::lanes::spawn(index, cpu, move |tasks| {
                    tasks.spawn(reader_task(Arc::clone(&lane_shared), index));
                    for (id, socket) in sockets {
                        tasks.spawn(listener_task(Arc::clone(&lane_shared), id, socket));
                    }
                })
                .map_err(ServerError::Lanes)?;
                running_lanes.push(lane);
                // A lane whose task ended stops the agent as a task of the main runtime would.
                tasks.spawn(async move {
                    if let Ok(message) = ended.await {
                        warn!("{message}");
                    }
                });
            }
            info!(?cpus, "data-plane lanes pinned to CPUs");
        } else {
            for index in 0..shared.relays.readers() {
                tasks.spawn(reader_task(Arc::clone(&shared), index));
            }
            for (id, sockets) in udp_sockets {
                for socket in sockets {
                    tasks.spawn(listener_task(Arc::clone(&shared), id, socket));
                }
            }
        }
        for (listener, socket) in tcp_sockets {
            tasks.spawn(crate::stream::accept_task(
                Arc::clone(&shared),
                listener,
                socket,
            ));
        }
        for listener in dtls {
            tasks.spawn(crate::dtls::receive_task(
                Arc::clone(&shared),
                Arc::clone(&listener),
            ));
            tasks.spawn(crate::dtls::timer_task(Arc::clone(&shared), listener));
        }
        // Only certificates from files can change.
        let certs: Vec<Arc<CertStore>> = spec
            .listeners
            .iter()
            .filter_map(|l| l.tls.clone())
            .filter(|store| store.has_files())
            .collect();
        if !certs.is_empty() {
            tasks.spawn(certificate_task(certs));
        }
        tasks.spawn(timer_task(Arc::clone(&shared)));
        Ok(RunningServer {
            shared,
            tasks,
            _lanes: running_lanes,
            local_addrs,
            dropped,
            state_dir: spec.state_dir.clone(),
        })
    }

    /// Adopted allocations dropped at start because a relayed address could not be bound.
    pub fn adoption_dropped(&self) -> usize {
        self.dropped
    }

    /// Writes the allocation state now (a clean shutdown), if there is a state directory.
    pub fn save_state(&self) -> Result<(), crate::state::StateError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        // Generation 0: no journal continues it.
        let snapshot = lock(&self.shared.core).snapshot(Instant::now());
        crate::state::save(dir, &snapshot)?;
        crate::state::save_usage(dir, &self.shared.usage_to_save())
    }

    /// The bound address of each listener (useful when a port 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Resolves when a listener or timer task has stopped. They loop forever, so this means one
    /// panicked: the agent must not go on with a listener nobody reads or a timer that no
    /// longer expires anything.
    pub async fn task_failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Err(e)) if e.is_panic() => format!("a server task panicked: {e}"),
            Some(Err(e)) => format!("a server task was cancelled: {e}"),
            Some(Ok(())) => "a server task ended".to_owned(),
            None => "no server task is running".to_owned(),
        }
    }

    /// Runs `f` with the protocol state locked (for stats and admin queries); the statistics
    /// include what the channel table and TCP splices relayed until now.
    pub fn with_core<T>(&self, f: impl FnOnce(&turn::Server) -> T) -> T {
        f(&self.shared.core_counted())
    }

    /// Runs `f` with the protocol state locked for changing (a configuration reload).
    pub fn with_core_mut<T>(&self, f: impl FnOnce(&mut turn::Server) -> T) -> T {
        f(&mut lock(&self.shared.core))
    }

    /// Replaces the peer policy ([`turn::Server::set_policy`]) and carries out what it ends
    /// before returning: the revoked channels are out of the channel table and the kernel maps.
    pub fn set_policy(&self, policy: turn_proto::policy::PeerPolicy) -> turn::Revoked {
        let mut commands = VecDeque::new();
        let revoked = {
            let mut core = lock(&self.shared.core);
            let revoked = core.set_policy(policy);
            drain(&mut core, &self.shared, &mut commands);
            revoked
        };
        execute(&self.shared, &mut commands);
        revoked
    }

    /// Starts or ends draining ([`turn::Server::set_draining`]).
    pub fn set_draining(&self, draining: bool) {
        lock(&self.shared.core).set_draining(draining);
    }

    /// A handle for observers (metrics, health checks) that does not keep the server alive.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// Read access to a [`RunningServer`] for metrics and health checks. Every method returns
/// `None` once the server is gone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Weak<Shared>,
}

impl ServerHandle {
    /// Runs `f` with the protocol state locked (requests wait meanwhile: keep `f` short); the
    /// statistics include what the channel table relayed until now.
    pub fn with_core<T>(&self, f: impl FnOnce(&turn::Server) -> T) -> Option<T> {
        let shared = self.shared.upgrade()?;
        Some(f(&shared.core_counted()))
    }

    /// Traffic of each listener (indexed by [`ListenerId`]) and of the relayed sockets.
    pub fn io(&self) -> Option<(Vec<IoSnapshot>, IoSnapshot)> {
        let shared = self.shared.upgrade()?;
        let listeners = shared
            .listener_io
            .iter()
            .map(IoCounters::snapshot)
            .collect();
        Some((listeners, shared.relay_io.snapshot()))
    }

    /// Connection counters of each stream and DTLS listener (`None` for UDP listeners),
    /// indexed by [`ListenerId`].
    pub fn connections(&self) -> Option<Vec<Option<ConnectionSnapshot>>> {
        let shared = self.shared.upgrade()?;
        Some(
            shared
                .clients
                .iter()
                .map(|client| match client {
                    ClientIo::Udp(_) => None,
                    ClientIo::Stream(c) => Some(c.counters.snapshot(c.len())),
                    ClientIo::Dtls(d) => Some(d.counters.snapshot(d.sessions())),
                })
                .collect(),
        )
    }

    /// How long ago the timer task last ran: it runs at least every 500 ms while the event
    /// loop is healthy (and the protocol state is not stuck behind its lock).
    pub fn since_last_tick(&self) -> Option<Duration> {
        let shared = self.shared.upgrade()?;
        let last = Duration::from_millis(shared.last_tick_ms.load(Ordering::Relaxed));
        Some(shared.started.elapsed().saturating_sub(last))
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.shared.relays.clear();
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the protocol state is
/// only changed through `&mut` methods that keep it consistent, so it stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the core's commands. Channel events go to the kernel path and the channel table here,
/// under the core lock, so that bindings and unbindings reach them in exactly the order the
/// core decided them, whichever task carries out the rest; they are short map updates.
/// Everything else is queued for `execute`.
fn drain(core: &mut turn::Server, shared: &Shared, into: &mut VecDeque<Command>) {
    while let Some(command) = core.poll_command() {
        match command {
            Command::ChannelBound(binding) => {
                if let Some(offload) = shared.channel_events.offload_for(&binding) {
                    offload.channel_bound(&binding);
                }
                shared.table_bound(&binding);
            }
            Command::ChannelUnbound(binding) => {
                if let Some(offload) = shared.channel_events.offload_for(&binding) {
                    offload.channel_unbound(&binding);
                }
                shared.channels.unbound(&binding, core);
            }
            other => into.push_back(other),
        }
    }
}

/// Binds the relayed sockets of adopted allocations; an allocation whose address cannot be
/// bound is dropped (its kernel entries removed, its other sockets closed). Returns how many
/// were dropped.
fn bind_restored(shared: &Arc<Shared>, restored: &[SocketAddr]) -> usize {
    let mut dropped = 0;
    let mut commands = VecDeque::new();
    for &addr in restored {
        if let Err(failure) = bind_relay(shared, addr) {
            let mut core = lock(&shared.core);
            if core.drop_restored(addr) {
                warn!(%addr, ?failure, "adopted allocation dropped: its relayed address cannot be bound");
                dropped += 1;
            }
            drain(&mut core, shared, &mut commands);
        }
    }
    execute(shared, &mut commands);
    dropped
}

impl Shared {
    /// The core, locked, with what the channel table and TCP splices relayed outside it
    /// counted in its statistics.
    fn core_counted(&self) -> std::sync::MutexGuard<'_, turn::Server> {
        let mut core = lock(&self.core);
        self.channels.fold_into(&mut core);
        self.tcp.fold_into(&mut core);
        core
    }

    /// The per-user usage as a restarted agent should start from: what userspace relayed
    /// (the channel table's too), plus what the kernel relayed that the next agent cannot read
    /// ([`ChannelOffload::by_user_to_save`]: with pinned maps, the installed entries keep their
    /// counters, and the agent that adopts them reads them whole).
    fn usage_to_save(&self) -> Vec<turn::UserUsage> {
        let mut users = self.core_counted().usage().users().to_vec();
        if let Some(offload) = &self.channel_events.offload {
            crate::metrics::add_kernel_usage(&mut users, &offload.by_user_to_save());
        }
        users
    }
}

/// Writes the per-user usage every [`USAGE_SAVE`] when it changed, so a restart (even a crash)
/// loses at most that much of it.
async fn usage_task(shared: Arc<Shared>, dir: PathBuf) {
    let mut written: Vec<turn::UserUsage> = Vec::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(USAGE_SAVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let shared = Arc::clone(&shared);
        let target = dir.clone();
        let last = std::mem::take(&mut written);
        let result = tokio::task::spawn_blocking(move || {
            let usage = shared.usage_to_save();
            if usage == last {
                return Ok(usage);
            }
            crate::state::save_usage(&target, &usage).map(|()| usage)
        })
        .await;
        match result {
            Ok(Ok(usage)) => {
                written = usage;
                if failing {
                    info!("usage written again");
                    failing = false;
                }
            }
            Ok(Err(e)) if !failing => {
                warn!(error = %e, "cannot write the usage; retrying");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(e) => warn!(error = %e, "the usage writer failed"),
        }
    }
}

/// What the state writer writes next.
enum StateWrite {
    /// A whole snapshot, and a new journal after it.
    Whole(turn_proto::server::Snapshot),
    /// The allocations changed since the last write, appended to the journal.
    Changes(
        crate::state::Journal,
        Vec<turn_proto::server::AllocationChange>,
    ),
}

/// The journal is replaced by a whole snapshot once it is larger than the last snapshot and
/// than this.
const MIN_JOURNAL_BYTES: u64 = 1 << 20;

/// Writes the allocation state whenever it changed, at most every [`STATE_DEBOUNCE`]: the
/// allocations changed since the last write, appended to the journal ([`crate::state`]), or a
/// whole snapshot when there is no journal yet (at start, after a write failed) or it has
/// outgrown the last snapshot. What is written is taken under the core lock (only the changed
/// allocations, most of the time); serialising and writing happen outside it.
async fn state_task(shared: Arc<Shared>, dir: PathBuf) {
    lock(&shared.core).track_changes();
    // `None`: the next write is a whole snapshot.
    let mut journal: Option<crate::state::Journal> = None;
    let mut snapshot_bytes = 0u64;
    let mut written: Option<u64> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(STATE_DEBOUNCE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (version, write) = {
            let mut core = lock(&shared.core);
            let version = core.state_version();
            if written == Some(version) {
                continue;
            }
            let write = match journal.take() {
                Some(j) if j.bytes() <= snapshot_bytes.max(MIN_JOURNAL_BYTES) => {
                    StateWrite::Changes(j, core.take_changes())
                }
                _ => {
                    let snapshot = core.snapshot(Instant::now());
                    core.clear_changes();
                    StateWrite::Whole(snapshot)
                }
            };
            (version, write)
        };
        let target = dir.clone();
        let result = tokio::task::spawn_blocking(move || match write {
            StateWrite::Whole(mut snapshot) => {
                // Non-zero: zero is a snapshot without journal.
                snapshot.generation = rand::random::<u64>() | 1;
                let bytes = crate::state::save(&target, &snapshot)?;
                let journal = crate::state::Journal::create(&target, snapshot.generation)?;
                Ok::<_, crate::state::StateError>((journal, Some(bytes)))
            }
            StateWrite::Changes(mut journal, changes) => {
                journal.append(&changes)?;
                Ok((journal, None))
            }
        })
        .await;
        match result {
            Ok(Ok((new, bytes))) => {
                journal = Some(new);
                if let Some(bytes) = bytes {
                    snapshot_bytes = bytes;
                }
                written = Some(version);
                if failing {
                    info!("allocation state written again");
                    failing = false;
                }
            }
            // The changes taken are in no file: the next write is a whole snapshot.
            Ok(Err(e)) if !failing => {
                warn!(error = %e, "cannot write the allocation state; retrying");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(e) => warn!(error = %e, "the state writer failed"),
        }
    }
}

/// Reads a UDP listener's socket a batch at a time: ChannelData of channels in the table goes
/// straight to the peer, everything else to the core.
async fn listener_task(
    shared: Arc<Shared>,
    listener: ListenerId,
    socket: Arc<std::net::UdpSocket>,
) {
    // Registered with the runtime this task runs on (its lane's, or the main one).
    // SAFETY: the AsyncFd holds a reference to the socket, so its descriptor stays open (and
    // the same) as long as it is registered.
    let socket = match unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) } {
        Ok(socket) => socket,
        Err(e) => {
            warn!(error = %e, "cannot watch a listener socket");
            return;
        }
    };
    let mut batch = Batch::new(BATCH, MAX_DATAGRAM);
    let mut commands = VecDeque::new();
    let mut to_peers = PeerSends::default();
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(error = %e, "listener socket failed");
                return;
            }
        };
        let n = match guard.try_io(|socket| batch.try_recv(socket.get_ref().as_fd())) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                // ICMP errors surface here on some kernels; they concern one peer, not us.
                trace!(error = %e, "listener receive error");
                continue;
            }
            Err(_would_block) => continue,
        };
        let mut received = 0;
        for i in 0..n {
            let Some(client) = batch.source(i) else {
                continue;
            };
            let message = batch.received(i);
            received += message.len();
            if !shared.channel_data_to_peer(listener, client, message, i, &mut to_peers) {
                shared.core_message(listener, client, message, &mut commands);
            }
        }
        if let Some(io) = shared.listener_io.get(usize::from(listener.0)) {
            io.received_many(n, received);
        }
        shared.send_to_peers(&batch, &mut to_peers);
    }
}

/// ChannelData of a listener's batch on its way to peers.
struct PeerSends<R = RelayShared> {
    /// The bindings they go through, each looked up once for a run of messages on it.
    bindings: Vec<ToPeer<R>>,
    /// Where each message's data is in the batch, in the order they came.
    sends: Vec<PeerSend>,
    /// The channel of the last message queued and its binding (in `bindings`), while no message
    /// went to the core since: the next message on the same channel reuses the binding without
    /// a lookup (no shard lock, no reference counts: these atomics were a fifth of the fast
    /// path's own time).
    last: Option<((ListenerId, SocketAddr, u16), usize)>,
}

impl<R> Default for PeerSends<R> {
    fn default() -> Self {
        PeerSends {
            bindings: Vec::new(),
            sends: Vec::new(),
            last: None,
        }
    }
}

impl<R> PeerSends<R> {
    /// Queues a message of `len` data bytes at `offset` in slot `slot` for channel `key`: on
    /// the binding of the message before it if that was on the same channel, else on the one
    /// `lookup` finds. Whether it was queued (`lookup` found nothing: the core's to handle).
    fn push(
        &mut self,
        key: (ListenerId, SocketAddr, u16),
        lookup: impl FnOnce() -> Option<ToPeer<R>>,
        slot: usize,
        offset: usize,
        len: usize,
    ) -> bool {
        let binding = match self.last {
            Some((last, binding)) if last == key => binding,
            _ => {
                let Some(to) = lookup() else {
                    self.last = None;
                    return false;
                };
                self.bindings.push(to);
                let binding = self.bindings.len() - 1;
                self.last = Some((key, binding));
                binding
            }
        };
        self.sends.push(PeerSend {
            binding,
            slot,
            offset,
            len,
        });
        true
    }

    /// The next message is looked up in the table whatever its channel.
    fn forget_last(&mut self) {
        self.last = None;
    }
}

/// One ChannelData message's data: its binding (in [`PeerSends::bindings`]) and where the data
/// is in the batch (slot, offset of the data in it, length).
struct PeerSend {
    binding: usize,
    slot: usize,
    offset: usize,
    len: usize,
}

impl Shared {
    /// `ChannelBound` for the channel table: a UDP client's binding whose relayed socket is
    /// open goes in.
    fn table_bound(&self, binding: &ChannelBinding) {
        if !self.channel_events.is_udp(binding) {
            return;
        }
        if let Some(relay) = self.relays.get(&binding.relayed) {
            self.channels.bound(binding, relay);
        }
    }

    /// Puts the bindings the core adopted from a state file in the channel table.
    fn adopt_channels(&self) {
        let core = lock(&self.core);
        for binding in core.installed_channel_bindings() {
            self.table_bound(&binding);
        }
    }

    /// If `message` (slot `slot` of a listener's batch) from `client` is ChannelData of a
    /// channel in the table, queues it for [`Shared::send_to_peers`] and says `true`; else it
    /// is the core's to handle, and as the core may change the table, the next ChannelData is
    /// looked up afresh.
    fn channel_data_to_peer(
        &self,
        listener: ListenerId,
        client: SocketAddr,
        message: &[u8],
        slot: usize,
        to_peers: &mut PeerSends,
    ) -> bool {
        let Ok(channel_data) = wire::parse_channel_data(message) else {
            to_peers.forget_last();
            return false;
        };
        let channel = channel_data.channel;
        to_peers.push(
            (listener, client, channel),
            || self.channels.to_peer(listener, client, channel),
            slot,
            CHANNEL_HEADER,
            channel_data.data.len(),
        )
    }

    /// Sends the ChannelData data queued from a listener's batch: each relayed socket's
    /// datagrams to one peer together ([`udp_batch::send_all_to`]: one GSO send for a run of
    /// equal sizes), in the order they came.
    fn send_to_peers(&self, batch: &Batch, to_peers: &mut PeerSends) {
        let PeerSends {
            bindings,
            sends,
            last,
        } = to_peers;
        *last = None;
        if sends.is_empty() {
            return;
        }
        // Stable: a peer's datagrams keep their order.
        sends.sort_by_key(|s| {
            let to = &bindings[s.binding];
            (Arc::as_ptr(&to.relay), to.peer)
        });
        let mut slices: Vec<&[u8]> = Vec::with_capacity(sends.len());
        let (mut packets, mut bytes, mut errors) = (0, 0, 0);
        for group in sends.chunk_by(|a, b| {
            let (a, b) = (&bindings[a.binding], &bindings[b.binding]);
            // The counters too: a binding removed and added again meanwhile has new ones.
            Arc::ptr_eq(&a.relay, &b.relay)
                && a.peer == b.peer
                && Arc::ptr_eq(&a.counters, &b.counters)
        }) {
            slices.clear();
            slices.extend(
                group
                    .iter()
                    .map(|s| &batch.received(s.slot)[s.offset..s.offset + s.len]),
            );
            let to = &bindings[group[0].binding];
            let sent = to.relay.send_all_to_peer(to.peer, &slices);
            // One binding (relayed socket, peer and counters): counted once for the group.
            let data: usize = slices.iter().take(sent).map(|d| d.len()).sum();
            if sent > 0 {
                let wire = group.iter().take(sent).map(|s| s.offset).sum::<usize>() + data;
                to.counters.to_peer(sent as u64, data as u64, wire as u64);
            }
            bytes += data;
            packets += sent;
            errors += group.len() - sent;
        }
        self.relay_io.sent_many(packets, bytes, errors);
        sends.clear();
        bindings.clear();
    }

    /// Datagrams `0..n` of `batch`, from peers to `relay`: those of bound channels go to their
    /// client as ChannelData in one `sendmmsg`, the rest to the core.
    fn peer_datagrams(
        &self,
        relay: &RelayShared,
        batch: &mut Batch,
        n: usize,
        commands: &mut VecDeque<Command>,
    ) {
        // Slots relayed from the table (a bit each; BATCH ≤ 64), and to whom: one allocation
        // has one client, so every bound peer of a relayed socket has the same one.
        let mut fast: u64 = 0;
        let mut to: Option<(ListenerId, SocketAddr)> = None;
        let mut received = 0;
        relay.peers.with(|peers| {
            // Counted per run of datagrams from one peer (one binding), not per datagram.
            let mut run: Option<(&crate::channels::ToClient, u64, u64)> = None;
            let count = |run: Option<(&crate::channels::ToClient, u64, u64)>| {
                if let Some((binding, packets, data)) = run {
                    let wire = data + packets * CHANNEL_HEADER as u64;
                    binding.counters.to_client(packets, data, wire);
                }
            };
            for i in 0..n {
                let len = batch.received(i).len();
                received += len;
                let Some(peer) = batch.source(i) else {
                    continue;
                };
                let Some(binding) = peers.get(&peer) else {
                    continue;
                };
                let Ok(length) = u16::try_from(len) else {
                    continue; // too large for ChannelData: the core counts it
                };
                batch.frame_mut(i, CHANNEL_HEADER)[..CHANNEL_HEADER]
                    .copy_from_slice(&wire::channel_data_header(binding.channel, length));
                match &mut run {
                    Some((current, packets, data))
                        if Arc::ptr_eq(&current.counters, &binding.counters) =>
                    {
                        *packets += 1;
                        *data += len as u64;
                    }
                    _ => count(run.replace((binding, 1, len as u64))),
                }
                to = Some((binding.listener, binding.client));
                fast |= 1 << i;
            }
            count(run);
        });
        self.relay_io.received_many(n, received);
        let relayed = fast.count_ones() as usize;
        if let Some((listener, client)) = to {
            let index = usize::from(listener.0);
            if let Some(ClientIo::Udp(sockets)) = self.clients.get(index)
                && let Some(socket) = ClientIo::udp_socket(sockets)
            {
                let is_fast = |i: &usize| fast & (1 << i) != 0;
                let frames: Vec<&[u8]> = (0..n)
                    .filter(is_fast)
                    .map(|i| batch.frame(i, CHANNEL_HEADER))
                    .collect();
                let sent =
                    udp_batch::send_all_to(socket.as_fd(), client, &frames, &crate::relayed::GSO);
                // The kernel takes a prefix of the batch: only a full buffer stops it short.
                let bytes: usize = frames.iter().take(sent).map(|f| f.len()).sum();
                if let Some(io) = self.listener_io.get(index) {
                    io.sent_many(sent, bytes, relayed - sent);
                }
            }
        }
        if relayed == n {
            return;
        }
        let now = Instant::now();
        let mut core = lock(&self.core);
        for i in (0..n).filter(|i| fast & (1 << i) == 0) {
            if let Some(peer) = batch.source(i) {
                core.handle_peer_datagram(relay.addr, peer, batch.received(i), now);
            }
        }
        drain(&mut core, self, commands);
    }

    /// One message from a client (a datagram, or one framed off a stream or out of DTLS):
    /// counted, handed to the core, and its commands carried out.
    pub(crate) fn client_message(
        self: &Arc<Self>,
        listener: ListenerId,
        client: SocketAddr,
        message: &[u8],
        commands: &mut VecDeque<Command>,
    ) {
        if let Some(io) = self.listener_io.get(usize::from(listener.0)) {
            io.received(message.len());
        }
        self.core_message(listener, client, message, commands);
    }

    /// [`Shared::client_message`] without counting it (the caller did).
    fn core_message(
        self: &Arc<Self>,
        listener: ListenerId,
        client: SocketAddr,
        message: &[u8],
        commands: &mut VecDeque<Command>,
    ) {
        {
            let mut core = lock(&self.core);
            core.handle_client_datagram(listener, client, message, Instant::now());
            drain(&mut core, self, commands);
        }
        execute(self, commands);
    }

    /// A stream connection or DTLS session ended: so does its allocation.
    /// TCP allocations' sockets.
    pub(crate) fn tcp_relays(&self) -> &crate::tcp_relay::TcpRelays {
        &self.tcp
    }

    /// Runs `f` on the core, then carries out the commands it made.
    pub(crate) fn with_core_commands(self: &Arc<Self>, f: impl FnOnce(&mut turn::Server)) {
        let mut commands = VecDeque::new();
        {
            let mut core = lock(&self.core);
            f(&mut core);
            drain(&mut core, self, &mut commands);
        }
        execute(self, &mut commands);
    }

    pub(crate) fn client_closed(self: &Arc<Self>, listener: ListenerId, client: SocketAddr) {
        let mut commands = VecDeque::new();
        {
            let mut core = lock(&self.core);
            core.handle_client_closed(listener, client);
            drain(&mut core, self, &mut commands);
        }
        execute(self, &mut commands);
    }
}

/// Reads the relayed sockets of reader `index` ([`Relays`]): waits for its epoll set, then takes
/// one batch from each socket it reports ([`Shared::peer_datagrams`]); a socket with more
/// waiting is reported again (level-triggered), after the others had their turn.
async fn reader_task(shared: Arc<Shared>, index: usize) {
    let Some(fd) = shared.relays.epoll(index) else {
        return;
    };
    let set = EpollSet {
        _owner: Arc::clone(&shared),
        fd,
    };
    // SAFETY: `set` keeps `shared`, which owns the epoll descriptor, alive as long as the
    // AsyncFd, and always returns that same descriptor.
    let epoll = match unsafe { AsyncFd::register_with_interest(set, Interest::READABLE) } {
        Ok(epoll) => epoll,
        Err(e) => {
            warn!(error = %e, "cannot watch the relayed sockets");
            return;
        }
    };
    let mut batch = Batch::with_headroom(BATCH, MAX_DATAGRAM, CHANNEL_HEADER);
    let mut ready = Vec::new();
    let mut commands = VecDeque::new();
    loop {
        let mut guard = match epoll.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(error = %e, "relayed sockets' epoll set failed");
                return;
            }
        };
        if let Err(e) = shared.relays.ready(index, &mut ready) {
            warn!(error = %e, "cannot read the relayed sockets' epoll set");
        }
        if ready.is_empty() {
            guard.clear_ready();
            continue;
        }
        for relay in &ready {
            match batch.try_recv(relay.socket()) {
                Ok(n) => shared.peer_datagrams(relay, &mut batch, n, &mut commands),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => trace!(relayed = %relay.addr, error = %e, "relay receive error"),
            }
        }
        if !commands.is_empty() {
            execute(&shared, &mut commands);
        }
    }
}

/// A reader's epoll descriptor for tokio to watch, with the [`Shared`] whose [`Relays`] owns it
/// (so it stays open as long as it is watched).
struct EpollSet {
    _owner: Arc<Shared>,
    fd: std::os::fd::RawFd,
}

impl std::os::fd::AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }
}

async fn timer_task(shared: Arc<Shared>) {
    let mut commands = VecDeque::new();
    loop {
        let now = Instant::now();
        let next = {
            let mut core = lock(&shared.core);
            core.handle_timeout(now);
            drain(&mut core, &shared, &mut commands);
            core.poll_timeout()
        };
        let tick_ms = u64::try_from(now.saturating_duration_since(shared.started).as_millis())
            .unwrap_or(u64::MAX);
        shared.last_tick_ms.store(tick_ms, Ordering::Relaxed);
        execute(&shared, &mut commands);
        let wake = next
            .map_or(now + MAX_TICK, |t| t.min(now + MAX_TICK))
            .max(now);
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// Carries out commands in order. Binding a relayed socket feeds its outcome back into the core,
/// which may produce more commands; they join the queue.
fn execute(shared: &Arc<Shared>, commands: &mut VecDeque<Command>) {
    while let Some(command) = commands.pop_front() {
        match command {
            Command::SendToClient {
                listener,
                client,
                data,
            } => {
                let index = usize::from(listener.0);
                let len = data.len();
                let sent = match shared.clients.get(index) {
                    Some(ClientIo::Udp(sockets)) => {
                        ClientIo::udp_socket(sockets).is_some_and(|s| send(s, &data, client))
                    }
                    Some(ClientIo::Stream(connections)) => connections.send(client, data),
                    Some(ClientIo::Dtls(dtls)) => dtls.send(client, &data),
                    None => false,
                };
                if let Some(io) = shared.listener_io.get(index) {
                    io.sent(len, sent);
                }
            }
            Command::SendToPeer {
                relayed,
                peer,
                data,
                dont_fragment,
            } => match shared.relays.get(&relayed) {
                Some(relay) => {
                    let sent = relay.send_to_peer(&data, peer, dont_fragment);
                    shared.relay_io.sent(data.len(), sent);
                }
                None => trace!(%relayed, "no relayed socket for a send"),
            },
            Command::BindRelay { addr } => {
                let result = bind_relay(shared, addr);
                let mut core = lock(&shared.core);
                core.handle_relay_bound(addr, result, Instant::now());
                drain(&mut core, shared, commands);
            }
            Command::ReleaseRelay { addr } => {
                if !shared.tcp.release(&addr) {
                    shared.relays.release(&addr);
                }
            }
            Command::ListenRelay { addr } => {
                let result = shared.tcp.listen(shared, addr);
                let mut core = lock(&shared.core);
                core.handle_relay_bound(addr, result, Instant::now());
                drain(&mut core, shared, commands);
            }
            Command::ConnectPeer {
                connection,
                relayed,
                peer,
            } => shared.tcp.connect(shared, connection, relayed, peer),
            Command::CloseConnection { connection } => shared.tcp.close(connection),
            Command::BindData {
                connection,
                listener,
                client,
                user,
            } => {
                let job =
                    shared
                        .tcp
                        .take_waiting(connection)
                        .map(|peer| crate::tcp_relay::SpliceJob {
                            connection,
                            user,
                            peer,
                        });
                let handed = match (job, shared.clients.get(usize::from(listener.0))) {
                    (Some(job), Some(ClientIo::Stream(connections))) => {
                        connections.splice(client, job).is_ok()
                    }
                    _ => false,
                };
                if !handed {
                    debug!(connection, %client, "ConnectionBind without a peer connection or a data connection to splice");
                    let mut core = lock(&shared.core);
                    core.handle_connection_closed(connection);
                    drain(&mut core, shared, commands);
                }
            }
            // Applied in `drain`, under the core lock.
            Command::ChannelBound(_) | Command::ChannelUnbound(_) => {}
        }
    }
}

fn bind_relay(shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), BindFailure> {
    match shared.relays.bind(addr) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BindFailure::AddressInUse),
        Err(e) => {
            warn!(%addr, error = %e, "cannot bind a relayed socket");
            Err(BindFailure::Other)
        }
    }
}

/// A plain non-blocking `sendto`: a full socket buffer drops the datagram, as UDP would. Not
/// tokio's `try_send_to`, which gives up without trying until its reactor has seen the socket
/// become writable once, and so could drop the first datagrams of a new relayed socket.
/// Returns whether the kernel took the datagram (failures are counted, not logged: under
/// overload they come one per datagram).
pub(crate) fn send<S: std::os::fd::AsFd>(socket: &S, data: &[u8], to: SocketAddr) -> bool {
    socket2::SockRef::from(socket)
        .send_to(data, &to.into())
        .is_ok()
}

/// A non-blocking UDP socket bound to `addr`, registered with tokio.
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_udp_socket(addr, reuse_port)?)
}

/// A non-blocking UDP socket bound to `addr`, for whichever runtime reads it.
fn bind_udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: larger buffers absorb bursts; the kernel caps them.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The wall clock and monotonic clock read together, for [`turn::Server::new`].
pub fn clocks() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_peer(peer: &str) -> ToPeer<()> {
        ToPeer {
            relay: Arc::new(()),
            peer: peer.parse().expect("address"),
            counters: Arc::default(),
        }
    }

    #[test]
    fn a_run_on_one_channel_is_looked_up_once_and_the_core_breaks_the_run() {
        let client: SocketAddr = "198.18.0.2:5000".parse().expect("address");
        let (a, b) = (
            (ListenerId(0), client, 0x4000),
            (ListenerId(0), client, 0x4001),
        );
        let mut sends = PeerSends::default();
        let mut lookups = 0;
        let mut lookup = |peer: &str| {
            lookups += 1;
            Some(to_peer(peer))
        };
        assert!(sends.push(a, || lookup("198.18.1.1:1"), 0, 4, 10));
        assert!(sends.push(a, || lookup("198.18.1.1:1"), 1, 4, 10));
        assert!(sends.push(b, || lookup("198.18.1.2:1"), 2, 4, 10));
        // A message for the core in between: the same channel is looked up again.
        sends.forget_last();
        assert!(sends.push(b, || lookup("198.18.1.2:1"), 4, 4, 10));
        // Not in the table: not queued, and the next message is looked up even on the channel
        // queued before it.
        assert!(!sends.push(a, || None, 5, 4, 10));
        assert!(sends.push(b, || lookup("198.18.1.2:1"), 6, 4, 10));
        assert_eq!(lookups, 4);
        let queued: Vec<(usize, usize)> = sends.sends.iter().map(|s| (s.slot, s.binding)).collect();
        assert_eq!(queued, [(0, 0), (1, 0), (2, 1), (4, 2), (6, 3)]);
        assert_eq!(sends.bindings[3].peer.to_string(), "198.18.1.2:1");
    }
}
