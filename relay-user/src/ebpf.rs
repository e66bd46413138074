//! Loads the kernel programs (XDP and TC), attaches them to interfaces, and reads their maps.
//!
//! This is the only module that talks to the kernel's BPF subsystem. The object is built by
//! `build.rs` and embedded in the binary.
//!
//! With a pin directory (`--bpf-pin-dir`, see [`FastPath::load_pinned`]) the maps and the XDP
//! links are pinned there: a new process reuses the maps and swaps its program into the links
//! atomically, so the kernel relays on while the agent restarts.
use std::{
    collections::HashSet,
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use relay_common::{
    ChannelKey, ChannelToPeer, Counter, DEFAULT_MAX_CHANNELS, Endpoint, PeerKey, PeerToClient,
    Reason, names,
};
use tracing::{info, warn};

/// The eBPF object built from `relay-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-ebpf"));

/// Errors of the fast path's loader.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error(
        "this build has no eBPF object (built with XTURN_SKIP_EBPF); rebuild after `cargo xtask setup`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program {name:?}")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map {name:?}")]
    MissingMap { name: &'static str },
    #[error("program {name:?}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {hook} to {interface:?} failed (last: {source})")]
    Attach {
        hook: Hook,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name:?}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {name:?} is full ({capacity} entries); the binding stays in userspace")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("pinning the kernel program's link of {interface:?} at {path}: {message}")]
    Pin {
        interface: String,
        path: PathBuf,
        message: String,
    },
}

/// One channel binding as the kernel sees it: ChannelData from `client` to `listener` on
/// `channel` goes out from `relayed` to `peer`, and the peer's datagrams to `relayed` come back
/// to the client on that channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelEntry {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub channel: u16,
    pub relayed: SocketAddr,
    pub peer: SocketAddr,
    /// The interface the host's output route to the peer leaves by (0: unknown); the TC
    /// program sends the peer's datagrams there.
    pub to_peer_ifindex: u32,
    /// The same for the client.
    pub to_client_ifindex: u32,
}

impl From<&turn_proto::server::ChannelBinding> for ChannelEntry {
    /// The binding's entry, its egress interfaces not known yet (0).
    fn from(binding: &turn_proto::server::ChannelBinding) -> ChannelEntry {
        ChannelEntry {
            client: binding.client,
            listener: binding.server,
            channel: binding.channel,
            relayed: binding.relayed,
            peer: binding.peer,
            to_peer_ifindex: 0,
            to_client_ifindex: 0,
        }
    }
}

impl ChannelEntry {
    fn channel_key(&self) -> ChannelKey {
        ChannelKey {
            client: self.client.into(),
            listener: self.listener.into(),
            channel: self.channel.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    fn peer_key(&self) -> PeerKey {
        PeerKey {
            peer: self.peer.into(),
            relayed: self.relayed.into(),
        }
    }
}

/// What the kernel relayed for one channel binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    /// ChannelData relayed client → peer (payload bytes).
    pub to_peer: Counter,
    /// Datagrams relayed peer → client (payload bytes).
    pub to_client: Counter,
}

/// Read-only handles on the maps that hold the per-binding counters (`CHANNELS` and `PEERS`),
/// to read every binding's counters at once without the fast path's lock: batch lookups
/// (`BPF_MAP_LOOKUP_BATCH`), a syscall per [`BATCH_ENTRIES`] bindings instead of two per
/// binding.
pub struct CounterMaps {
    channels: OwnedFd,
    peers: OwnedFd,
}

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
pub const BATCH_ENTRIES: u32 = 1024;

impl CounterMaps {
    /// The counters of every binding in the maps now. An entry added or removed meanwhile may
    /// be in it or not; an entry present throughout is read once.
    pub fn read(&self) -> io::Result<AllCounters> {
        let mut all = AllCounters::default();
        lookup_batch::<ChannelKey, ChannelToPeer>(self.channels.as_fd(), |key, value| {
            all.to_peer.insert(
                key,
                Counter {
                    packets: value.packets,
                    bytes: value.bytes,
                },
            );
        })?;
        lookup_batch::<PeerKey, PeerToClient>(self.peers.as_fd(), |key, value| {
            all.to_client.insert(
                key,
                Counter {
                    packets: value.packets,
                    bytes: value.bytes,
                },
            );
        })?;
        Ok(all)
    }
}

/// Every binding's counters, as [`CounterMaps::read`] found them.
#[derive(Debug, Default)]
pub struct AllCounters {
    to_peer: std::collections::HashMap<ChannelKey, Counter, foldhash::fast::RandomState>,
    to_client: std::collections::HashMap<PeerKey, Counter, foldhash::fast::RandomState>,
}

impl AllCounters {
    /// `entry`'s counters, if both its map entries were there.
    pub fn get(&self, entry: &ChannelEntry) -> Option<ChannelCounters> {
        Some(ChannelCounters {
            to_peer: *self.to_peer.get(&entry.channel_key())?,
            to_client: *self.to_client.get(&entry.peer_key())?,
        })
    }

    /// Bindings read (entries of the `CHANNELS` map).
    pub fn len(&self) -> usize {
        self.to_peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to_peer.is_empty()
    }
}

/// `bpf_attr` of the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Calls `each` on every entry of the hash map `map` (keys `K`, values `V`), [`BATCH_ENTRIES`]
/// per syscall.
fn lookup_batch<K: Pod, V: Pod>(map: BorrowedFd<'_>, mut each: impl FnMut(K, V)) -> io::Result<()> {
    let mut chunk = BATCH_ENTRIES;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The hash map's batch position: a bucket index the kernel hands back.
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        keys.resize_with(chunk as usize, MaybeUninit::uninit);
        values.resize_with(chunk as usize, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut position) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: u32::try_from(map.as_raw_fd()).unwrap_or_default(),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid BPF_MAP_LOOKUP_BATCH attribute whose buffers have room for
        // `count` keys and values of the map's sizes (K and V are its key and value types); the
        // kernel writes at most that many and says how many in `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc != 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than the buffers: larger buffers, same position.
            Some(libc::ENOSPC) if chunk < BATCH_ENTRIES * 64 => {
                chunk *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        let read = (attr.count as usize).min(keys.len());
        for (key, value) in keys.iter().zip(&values).take(read) {
            // SAFETY: the kernel wrote the first `count` keys and values.
            each(unsafe { key.assume_init_read() }, unsafe {
                value.assume_init_read()
            });
        }
        if error.is_some() {
            // ENOENT: no entries after these.
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// Which kernel hook runs the relay on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// XDP: on the driver's frame, before a socket buffer exists. Fastest; frames it sends are
    /// delivered only by devices that take XDP frames (a NIC; a veth only if its peer runs XDP).
    Xdp,
    /// TC clsact ingress: on the socket buffer. Works on every device, keeps partial checksums
    /// right, needs no forwarding.
    Tc,
}

impl Hook {
    /// The name used in logs, metrics and flags.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Hook::Xdp => names::XDP_PROGRAM,
            Hook::Tc => names::TC_PROGRAM,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic XDP, run by the kernel's network stack after the driver.
    Generic,
    /// TC clsact ingress (a TCX link on kernels that have them).
    TcIngress,
    /// The program replaced an earlier one in a pinned link, in whatever mode that link has.
    Adopted,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Driver => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::TcIngress => "tc ingress",
            AttachedMode::Adopted => "adopted pinned link",
        })
    }
}

/// The result of running the program once on a crafted frame (`BPF_PROG_TEST_RUN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP action the program returned (`XDP_PASS` = 2, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// How long the run took, as the kernel measured it (the program and the test harness's
    /// own small overhead).
    pub duration: std::time::Duration,
}

impl TestRunOutcome {
    /// What program `name`'s run says: its return value and the frame it left in `out`.
    fn of(
        name: &'static str,
        run: Result<aya::programs::TestRunResult, aya::programs::ProgramError>,
        mut out: Vec<u8>,
    ) -> Result<TestRunOutcome, FastPathError> {
        let result = run.map_err(|source| FastPathError::Program { name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value,
            frame: out,
            duration: result.duration,
        })
    }
}

/// A program attached to an interface by a [`FastPath`].
enum Attachment {
    /// Owned by the program: detached when it goes.
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// Pinned at `path`: outlives the process until unpinned.
    Pinned {
        link: FdLink,
        path: PathBuf,
    },
}

/// The loaded XDP program and its maps.
pub struct FastPath {
    ebpf: Ebpf,
    links: Vec<(String, &'static str, Attachment)>,
    /// Where maps and links are pinned, if they are.
    pin_dir: Option<PathBuf>,
    stats: PerCpuArray<MapData, Counter>,
    channels: HashMap<MapData, ChannelKey, ChannelToPeer>,
    peers: HashMap<MapData, PeerKey, PeerToClient>,
    listeners: HashMap<MapData, Endpoint, u8>,
    capacity: u32,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(FastPathError::MissingMap { name })?;
    T::try_from(map).map_err(|source| FastPathError::Map { name, source })
}

impl FastPath {
    /// Loads the embedded object and both programs into the kernel (not yet attached), with
    /// room for the default number of channel bindings.
    pub fn load() -> Result<Self, FastPathError> {
        Self::load_with_capacity(DEFAULT_MAX_CHANNELS)
    }

    /// Like [`FastPath::load`], with room for `max_channels` channel bindings. The maps are not
    /// preallocated: kernel memory follows the bindings actually installed.
    pub fn load_with_capacity(max_channels: u32) -> Result<Self, FastPathError> {
        Self::load_pinned(max_channels, None)
    }

    /// Like [`FastPath::load_with_capacity`]; with `pin_dir` (a directory on bpffs) the
    /// `CHANNELS`, `PEERS`, `LISTENERS` and `STATS` maps are those pinned there by an earlier
    /// run (with their entries), or new ones pinned there, and [`FastPath::attach`] pins its
    /// links there too. [`FastPath::detach_all`] (and dropping) removes every pin.
    pub fn load_pinned(max_channels: u32, pin_dir: Option<&Path>) -> Result<Self, FastPathError> {
        match (Self::load_once(max_channels, pin_dir), pin_dir) {
            (Ok(fast_path), _) => Ok(fast_path),
            // Maps pinned by another build may not fit these programs (an older value layout):
            // the verifier refuses them. Start the maps anew; pinned links are kept and get the
            // new programs, and adopted channels are installed again.
            // (The failed attempt's drop has unpinned them already; this makes sure.)
            (Err(e), Some(dir)) => {
                warn!(error = %e, dir = %dir.display(), "pinned maps unusable: creating new ones");
                for name in PINNED_MAPS {
                    let _ = std::fs::remove_file(dir.join(name));
                }
                // The drop may have removed the emptied directory too.
                let _ = std::fs::create_dir_all(dir);
                Self::load_once(max_channels, pin_dir)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn load_once(max_channels: u32, pin_dir: Option<&Path>) -> Result<Self, FastPathError> {
        if OBJECT.is_empty() {
            return Err(FastPathError::NoObject);
        }
        let capacity = max_channels.max(1);
        let log_level = kernel_log_level();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries(names::CHANNELS_MAP, capacity)
            .map_max_entries(names::PEERS_MAP, capacity);
        if let Some(dir) = pin_dir {
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| FastPathError::Load(Box::new(e)))?;
        let stats = take_map(&mut ebpf, names::STATS_MAP)?;
        let channels = take_map(&mut ebpf, names::CHANNELS_MAP)?;
        let peers = take_map(&mut ebpf, names::PEERS_MAP)?;
        let listeners = take_map(&mut ebpf, names::LISTENERS_MAP)?;
        let mut fast_path = FastPath {
            ebpf,
            links: Vec::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            stats,
            channels,
            peers,
            listeners,
            capacity,
        };
        for name in [names::XDP_PROGRAM, names::XDP_PASS_PROGRAM] {
            fast_path
                .xdp(name)?
                .load()
                .map_err(|source| FastPathError::Program { name, source })?;
        }
        let name = names::TC_PROGRAM;
        fast_path
            .tc()?
            .load()
            .map_err(|source| FastPathError::Program { name, source })?;
        Ok(fast_path)
    }

    /// Starts forwarding the program's `aya-log` records into `tracing`. Needs a tokio runtime;
    /// the task ends when the runtime does.
    pub fn spawn_logger(&mut self) {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => {
                tokio::spawn(async move {
                    // SAFETY: the logger owns its ring buffer's fd and keeps it open and
                    // unchanged for as long as it lives, which is as long as the AsyncFd.
                    let registered = unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            logger,
                            tokio::io::Interest::READABLE,
                        )
                    };
                    let mut logger = match registered {
                        Ok(fd) => fd,
                        Err(e) => {
                            warn!(error = %e, "cannot poll the eBPF log buffer");
                            return;
                        }
                    };
                    loop {
                        let Ok(mut guard) = logger.readable_mut().await else {
                            return;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => warn!(error = %e, "eBPF logging unavailable"),
        }
    }

    /// The program `name` of the object, as its type `P` (XDP or TC).
    fn program<P>(&mut self, name: &'static str) -> Result<&mut P, FastPathError>
    where
        for<'a> &'a mut P:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(FastPathError::MissingProgram { name })?;
        program
            .try_into()
            .map_err(|source| FastPathError::Program { name, source })
    }

    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, FastPathError> {
        self.program(name)
    }

    fn tc(&mut self) -> Result<&mut SchedClassifier, FastPathError> {
        self.program(names::TC_PROGRAM)
    }

    /// Attaches the fast path at XDP to `interface`: native mode first, generic mode when the
    /// driver has no XDP support.
    pub fn attach(&mut self, interface: &str) -> Result<AttachedMode, FastPathError> {
        self.attach_program(names::XDP_PROGRAM, interface)
    }

    /// Attaches the fast path at `hook` to `interface`.
    pub fn attach_hook(
        &mut self,
        interface: &str,
        hook: Hook,
    ) -> Result<AttachedMode, FastPathError> {
        self.attach_program(hook.program(), interface)
    }

    /// Attaches the trivial pass-everything program to `interface`. A veth drops frames
    /// transmitted or redirected into it unless its peer has an XDP program; this is that program.
    pub fn attach_pass(&mut self, interface: &str) -> Result<AttachedMode, FastPathError> {
        self.attach_program(names::XDP_PASS_PROGRAM, interface)
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        interface: &str,
    ) -> Result<AttachedMode, FastPathError> {
        if let Some(dir) = self.pin_dir.clone() {
            return self.attach_pinned(name, interface, &dir);
        }
        let (link, mode) = self.attach_new(name, interface)?;
        info!(interface, program = name, %mode, "kernel program attached");
        self.links.push((interface.to_owned(), name, link));
        Ok(mode)
    }

    fn attach_new(
        &mut self,
        name: &'static str,
        interface: &str,
    ) -> Result<(Attachment, AttachedMode), FastPathError> {
        if name == names::TC_PROGRAM {
            let link = self
                .tc()?
                .attach(interface, TcAttachType::Ingress)
                .map_err(|source| FastPathError::Attach {
                    hook: Hook::Tc,
                    interface: interface.to_owned(),
                    source,
                })?;
            return Ok((Attachment::Tc(link), AttachedMode::TcIngress));
        }
        let program = self.xdp(name)?;
        let (link, mode) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (link, AttachedMode::Driver),
            Err(native_error) => {
                warn!(interface, error = %native_error, "native XDP unavailable, trying generic");
                let link = program.attach(interface, XdpMode::Skb).map_err(|source| {
                    FastPathError::Attach {
                        hook: Hook::Xdp,
                        interface: interface.to_owned(),
                        source,
                    }
                })?;
                (link, AttachedMode::Generic)
            }
        };
        Ok((Attachment::Xdp(link), mode))
    }

    /// Attaches with a link pinned in `dir`: if one is pinned there for `interface` already
    /// (by an earlier run), the program replaces the old one in it atomically (no moment
    /// without a program); else a new link is made and pinned.
    fn attach_pinned(
        &mut self,
        name: &'static str,
        interface: &str,
        dir: &Path,
    ) -> Result<AttachedMode, FastPathError> {
        let path = dir.join(format!("link-{name}-{interface}"));
        let pin_error = |message: String| FastPathError::Pin {
            interface: interface.to_owned(),
            path: path.clone(),
            message,
        };
        if path.exists() {
            match self.adopt_link(name, &path) {
                Ok(link) => {
                    info!(interface, program = name, path = %path.display(), "kernel program replaced in the pinned link");
                    self.links.push((
                        interface.to_owned(),
                        name,
                        Attachment::Pinned { link, path },
                    ));
                    return Ok(AttachedMode::Adopted);
                }
                Err(e) => {
                    warn!(interface, path = %path.display(), error = %e, "pinned link unusable: attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (attachment, mode) = self.attach_new(name, interface)?;
        let link = match attachment {
            Attachment::Xdp(id) => {
                let link = self
                    .xdp(name)?
                    .take_link(id)
                    .map_err(|e| pin_error(e.to_string()))?;
                FdLink::try_from(link)
            }
            Attachment::Tc(id) => {
                let link = self
                    .tc()?
                    .take_link(id)
                    .map_err(|e| pin_error(e.to_string()))?;
                FdLink::try_from(link)
            }
            Attachment::Pinned { link, .. } => Ok(link),
        }
        .map_err(|e| {
            pin_error(format!(
                "{e} (the kernel attached the program through netlink, which cannot be pinned)"
            ))
        })?;
        let pinned = link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
        info!(interface, program = name, %mode, path = %path.display(), "kernel program attached and pinned");
        self.links.push((
            interface.to_owned(),
            name,
            Attachment::Pinned {
                link: FdLink::from(pinned),
                path,
            },
        ));
        Ok(mode)
    }

    fn adopt_link(&mut self, name: &'static str, path: &Path) -> Result<FdLink, String> {
        let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        if name == names::TC_PROGRAM {
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
            let program = self.tc().map_err(|e| e.to_string())?;
            let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
            let link = program.take_link(id).map_err(|e| e.to_string())?;
            return FdLink::try_from(link).map_err(|e| e.to_string());
        }
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
        let program = self.xdp(name).map_err(|e| e.to_string())?;
        let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
        let link = program.take_link(id).map_err(|e| e.to_string())?;
        FdLink::try_from(link).map_err(|e| e.to_string())
    }

    /// Detaches every program this `FastPath` attached. Dropping it does the same.
    /// With a pin directory, also unpins the links (the programs go) and the maps (freed when
    /// the last user closes them): nothing is left behind.
    pub fn detach_all(&mut self) {
        for (interface, name, attachment) in std::mem::take(&mut self.links) {
            let detached = match attachment {
                Attachment::Xdp(link) => self.xdp(name).and_then(|p| {
                    p.detach(link)
                        .map_err(|source| FastPathError::Program { name, source })
                }),
                Attachment::Tc(link) => self.tc().and_then(|p| {
                    p.detach(link)
                        .map_err(|source| FastPathError::Program { name, source })
                }),
                Attachment::Pinned { link, path } => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(path = %path.display(), error = %e, "cannot unpin a link");
                    }
                    // Closing the last descriptor of an unpinned link detaches it.
                    drop(link);
                    Ok(())
                }
            };
            match detached {
                Ok(()) => info!(interface, program = name, "kernel program detached"),
                Err(e) => warn!(interface, program = name, error = %e, "detach failed"),
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            for name in PINNED_MAPS {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!(path = %path.display(), error = %e, "cannot unpin a map"),
                }
            }
            // The directory too, when nothing else is in it (one per agent, say per pod).
            let _ = std::fs::remove_dir(&dir);
            info!(dir = %dir.display(), "kernel program pins removed");
        }
    }

    /// Installs `entry` unless both of its kernel entries are there already, as they are:
    /// their counters are kept. Returns whether it installed anything.
    pub fn ensure_channel_binding(&mut self, entry: &ChannelEntry) -> Result<bool, FastPathError> {
        let present = self.channels.get(&entry.channel_key(), 0).is_ok_and(|v| {
            v.relayed == entry.relayed.into()
                && v.peer == entry.peer.into()
                && v.egress_ifindex == entry.to_peer_ifindex
        }) && self.peers.get(&entry.peer_key(), 0).is_ok_and(|v| {
            v.listener == entry.listener.into()
                && v.client == entry.client.into()
                && v.channel == entry.channel.to_be_bytes()
                && v.egress_ifindex == entry.to_client_ifindex
        });
        if present {
            return Ok(false);
        }
        self.add_channel_binding(entry).map(|()| true)
    }

    /// Removes every channel entry that none of `keep` explains (left by an earlier run for
    /// bindings that ended meanwhile), and every listener entry not in `listeners`. Returns
    /// how many channel entries went (each direction counts).
    pub fn retain(
        &mut self,
        keep: &[ChannelEntry],
        listeners: &[SocketAddr],
    ) -> Result<usize, FastPathError> {
        let channel_keys: HashSet<ChannelKey> =
            keep.iter().map(ChannelEntry::channel_key).collect();
        let peer_keys: HashSet<PeerKey> = keep.iter().map(ChannelEntry::peer_key).collect();
        let listener_keys: HashSet<Endpoint> =
            listeners.iter().map(|l| Endpoint::from(*l)).collect();
        let stale_channels = stale(self.channels.keys(), &channel_keys, names::CHANNELS_MAP)?;
        let stale_peers = stale(self.peers.keys(), &peer_keys, names::PEERS_MAP)?;
        let stale_listeners = stale(self.listeners.keys(), &listener_keys, names::LISTENERS_MAP)?;
        let removed = stale_channels.len() + stale_peers.len();
        for key in &stale_channels {
            let _ = self.channels.remove(key);
        }
        for key in &stale_peers {
            let _ = self.peers.remove(key);
        }
        for key in &stale_listeners {
            let _ = self.listeners.remove(key);
        }
        Ok(removed)
    }

    /// The `STATS` counters, summed over CPUs, in [`Reason`] order.
    pub fn stats(&self) -> Result<Vec<(Reason, Counter)>, FastPathError> {
        let name = names::STATS_MAP;
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self
                    .stats
                    .get(&reason.index(), 0)
                    .map_err(|source| FastPathError::Map { name, source })?;
                let total = per_cpu
                    .iter()
                    .fold(Counter::default(), |acc, c| acc.plus(*c));
                Ok((reason, total))
            })
            .collect()
    }

    /// Whether the maps are pinned (`--bpf-pin-dir`): their entries and counters outlive the
    /// process, for the next one to adopt.
    pub fn is_pinned(&self) -> bool {
        self.pin_dir.is_some()
    }

    /// The capacity of each channel map.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Tells the program that `listener` is one of ours, so ChannelData to it without an entry
    /// is counted as unbound.
    pub fn add_listener(&mut self, listener: SocketAddr) -> Result<(), FastPathError> {
        let name = names::LISTENERS_MAP;
        self.listeners
            .insert(Endpoint::from(listener), 1, 0)
            .map_err(|source| FastPathError::Map { name, source })
    }

    /// Installs both directions of a channel binding. Either both entries are installed or
    /// neither is (a full map leaves the binding to userspace).
    pub fn add_channel_binding(&mut self, entry: &ChannelEntry) -> Result<(), FastPathError> {
        let to_peer = ChannelToPeer {
            relayed: entry.relayed.into(),
            peer: entry.peer.into(),
            egress_ifindex: entry.to_peer_ifindex,
            ..ChannelToPeer::default()
        };
        let to_client = PeerToClient {
            listener: entry.listener.into(),
            client: entry.client.into(),
            channel: entry.channel.to_be_bytes(),
            egress_ifindex: entry.to_client_ifindex,
            ..PeerToClient::default()
        };
        let capacity = self.capacity;
        let full = |name| move |e: MapError| map_error(name, capacity, e);
        self.peers
            .insert(entry.peer_key(), to_client, 0)
            .map_err(full(names::PEERS_MAP))?;
        if let Err(e) = self.channels.insert(entry.channel_key(), to_peer, 0) {
            let _ = self.peers.remove(&entry.peer_key());
            return Err(full(names::CHANNELS_MAP)(e));
        }
        Ok(())
    }

    /// Removes both directions of a channel binding; entries already gone are not an error.
    pub fn remove_channel_binding(&mut self, entry: &ChannelEntry) -> Result<(), FastPathError> {
        let gone = |name: &'static str| {
            move |e: MapError| match e {
                MapError::KeyNotFound | MapError::ElementNotFound => Ok(()),
                MapError::SyscallError(ref s)
                    if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                source => Err(FastPathError::Map { name, source }),
            }
        };
        let channels = self
            .channels
            .remove(&entry.channel_key())
            .or_else(gone(names::CHANNELS_MAP));
        let peers = self
            .peers
            .remove(&entry.peer_key())
            .or_else(gone(names::PEERS_MAP));
        channels.and(peers)
    }

    /// Handles for reading every binding's counters at once ([`CounterMaps`]).
    pub fn counter_maps(&self) -> io::Result<CounterMaps> {
        Ok(CounterMaps {
            channels: self.channels.map().fd().as_fd().try_clone_to_owned()?,
            peers: self.peers.map().fd().as_fd().try_clone_to_owned()?,
        })
    }

    /// What the kernel relayed for `entry` so far, or `None` if it is not installed.
    pub fn channel_counters(&self, entry: &ChannelEntry) -> Option<ChannelCounters> {
        let to_peer = self.channels.get(&entry.channel_key(), 0).ok()?;
        let to_client = self.peers.get(&entry.peer_key(), 0).ok()?;
        Some(ChannelCounters {
            to_peer: Counter {
                packets: to_peer.packets,
                bytes: to_peer.bytes,
            },
            to_client: Counter {
                packets: to_client.packets,
                bytes: to_client.bytes,
            },
        })
    }

    /// Runs the fast path once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`, as if it
    /// arrived on `ingress_ifindex` (an interface of the calling thread's network namespace; the
    /// loopback device when `None`). Maps are read and written as in real traffic; nothing is
    /// transmitted.
    pub fn test_run(
        &mut self,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
    ) -> Result<TestRunOutcome, FastPathError> {
        let name = names::XDP_PROGRAM;
        // Room for a frame that grows (a ChannelData header, an IPv6 header) by up to 256 bytes.
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the kernel wants data = 0 and data_end = the frame's length.
        let frame_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let ctx: Vec<u8> = [0, frame_len, 0, ingress_ifindex.unwrap_or(0), 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let program = self.xdp(name)?;
        let run = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ingress_ifindex.map(|_| ctx.as_slice()),
            ..TestRunOptions::default()
        });
        TestRunOutcome::of(name, run, out)
    }
}

impl FastPath {
    /// Runs the TC program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`. The
    /// returned action is a TC action (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2, `TC_ACT_REDIRECT`
    /// = 7); nothing is transmitted.
    pub fn test_run_tc(&mut self, frame: &[u8]) -> Result<TestRunOutcome, FastPathError> {
        let name = names::TC_PROGRAM;
        let mut out = vec![0u8; frame.len() + 256];
        let program = self.tc()?;
        let run = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        });
        TestRunOutcome::of(name, run, out)
    }
}

/// The maps pinned in a pin directory, each under its own name.
const PINNED_MAPS: [&str; 4] = [
    names::CHANNELS_MAP,
    names::PEERS_MAP,
    names::LISTENERS_MAP,
    names::STATS_MAP,
];

/// The most verbose level the program should emit, from the agent's tracing filter: records
/// the agent would discard are never written to the kernel's log buffer.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    let level = match LevelFilter::current() {
        LevelFilter::OFF => return 0,
        LevelFilter::ERROR => aya_log::Level::Error,
        LevelFilter::WARN => aya_log::Level::Warn,
        LevelFilter::INFO => aya_log::Level::Info,
        LevelFilter::DEBUG => aya_log::Level::Debug,
        _ => aya_log::Level::Trace,
    };
    level as u8
}

fn map_error(name: &'static str, capacity: u32, e: MapError) -> FastPathError {
    match e {
        MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            FastPathError::MapFull { name, capacity }
        }
        source => FastPathError::Map { name, source },
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The keys of map `name` (read through `keys`) that are not in `keep`.
fn stale<K: Eq + std::hash::Hash>(
    keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
    keep: &HashSet<K>,
    name: &'static str,
) -> Result<Vec<K>, FastPathError> {
    let keys = keys
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FastPathError::Map { name, source })?;
    Ok(keys.into_iter().filter(|k| !keep.contains(k)).collect())
}

/// A benchmark program's object (the ceiling's, the reflector's) loaded, with its one-entry
/// configuration written and its per-CPU counters taken.
pub(crate) struct BenchObject<C: Pod> {
    pub(crate) ebpf: Ebpf,
    /// Kept open for as long as the program runs.
    pub(crate) config: aya::maps::Array<MapData, C>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
}

/// Loads `object` (`what` names it in errors), writes `config` as entry 0 of `config_map` and
/// takes `stats_map`. The error says what failed.
pub(crate) fn load_bench_object<C: Pod>(
    object: &[u8],
    what: &str,
    config_map: &str,
    config: C,
    stats_map: &str,
) -> Result<BenchObject<C>, String> {
    if object.is_empty() {
        return Err(
            "this build has no eBPF objects (XTURN_SKIP_EBPF); rebuild after `cargo xtask setup`"
                .into(),
        );
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .map_err(|e| fail(&format!("loading the {what} object"), &e))?;
    let mut table: aya::maps::Array<MapData, C> = ebpf
        .take_map(config_map)
        .ok_or_else(|| fail(config_map, &"missing"))?
        .try_into()
        .map_err(|e| fail(config_map, &e))?;
    table.set(0, config, 0).map_err(|e| fail(config_map, &e))?;
    let stats: PerCpuArray<MapData, u64> = ebpf
        .take_map(stats_map)
        .ok_or_else(|| fail(stats_map, &"missing"))?
        .try_into()
        .map_err(|e| fail(stats_map, &e))?;
    Ok(BenchObject {
        ebpf,
        config: table,
        stats,
    })
}
