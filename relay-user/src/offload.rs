//! The kernel offload of channel bindings: the TURN core emits channel events
//! (`Command::ChannelBound`, `Command::ChannelUnbound`), the event loop hands the UDP clients'
//! ones to [`ChannelOffload`], which installs or removes their entries through the
//! [`KernelPath`] and owns the counters of what the kernel relayed; metrics read its
//! [`KernelSnapshot`].
//!
//! Relayed bytes in the kernel come from the per-binding counters of the maps, which count the
//! data of every datagram the program relayed: exact payload sizes, whatever the address
//! family. Map entries go away with their binding, so [`ChannelOffload`] keeps the set of
//! installed bindings and adds a binding's counters to a running total just before the binding
//! is removed. Each binding carries the cluster its traffic counts for (a slot of the core's
//! `Stats::clusters`, resolved when the channel was bound) and the listener its client came
//! through, so kernel traffic is split by cluster and by listener exactly as userspace traffic
//! is.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use relay_common::{Counter, Reason};
use tracing::{debug, error, info, warn};
use turn_proto::server::ChannelBinding;

use crate::{
    ebpf::{
        AllCounters, ChannelCounters, ChannelEntry, CounterMaps, FastPath, FastPathError, Hook,
    },
    route::Router,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The loaded kernel path: installs and removes the kernel entries of channel bindings, and
/// counts what it installed.
pub struct KernelPath {
    fast_path: Mutex<FastPath>,
    /// Route lookups for the TC program's egress interfaces.
    router: Mutex<Option<Router>>,
    /// The hook the programs run at.
    hook: Hook,
    /// Bindings installed in the kernel.
    pub installed: AtomicU64,
    /// Bindings left to userspace because a map was full.
    pub map_full: AtomicU64,
    /// Bindings left to userspace because of another error.
    pub install_errors: AtomicU64,
    /// Why the kernel path was withdrawn (it did not deliver), once it was.
    withdrawn: Mutex<Option<String>>,
    /// Batch reads of every binding's counters, while the kernel takes them.
    counter_maps: Option<CounterMaps>,
    /// The kernel refused a batch read: counters are read a binding at a time from then on.
    batch_refused: AtomicBool,
}

impl KernelPath {
    pub fn new(fast_path: FastPath) -> KernelPath {
        KernelPath::with_hook(fast_path, Hook::Xdp)
    }

    /// A hook for programs attached at `hook`.
    pub fn with_hook(fast_path: FastPath, hook: Hook) -> KernelPath {
        let counter_maps = match fast_path.counter_maps() {
            Ok(maps) => Some(maps),
            Err(e) => {
                warn!(error = %e, "counters are read a binding at a time");
                None
            }
        };
        let router = match Router::new() {
            Ok(router) => Some(router),
            Err(e) => {
                warn!(error = %e, "no route lookups: the TC path relays nothing in the kernel");
                None
            }
        };
        KernelPath {
            fast_path: Mutex::new(fast_path),
            router: Mutex::new(router),
            hook,
            installed: AtomicU64::new(0),
            map_full: AtomicU64::new(0),
            install_errors: AtomicU64::new(0),
            withdrawn: Mutex::new(None),
            counter_maps,
            batch_refused: AtomicBool::new(false),
        }
    }

    /// Every installed binding's counters in a few batch lookups, without the fast path's
    /// lock; `None` where the kernel has no batch lookups (Linux < 5.6), and the caller reads
    /// each binding with [`FastPath::channel_counters`].
    fn all_counters(&self) -> Option<AllCounters> {
        if self.batch_refused.load(Ordering::Relaxed) {
            return None;
        }
        match self.counter_maps.as_ref()?.read() {
            Ok(all) => Some(all),
            Err(e) => {
                if !self.batch_refused.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "no batch reads of the kernel's counters: reading them a binding at a time");
                }
                None
            }
        }
    }

    /// Why the kernel path was withdrawn, if it was.
    pub fn withdrawn(&self) -> Option<String> {
        self.withdrawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes the kernel path out of service: its programs are detached (every datagram goes to
    /// the agent's sockets, which relay it), and no binding is installed any more.
    pub fn withdraw(&self, why: String) {
        let mut withdrawn = self
            .withdrawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if withdrawn.is_some() {
            return;
        }
        error!(
            hook = %self.hook,
            why = %why,
            "kernel path withdrawn: it does not deliver; every channel is relayed in userspace now"
        );
        self.with_fast_path(FastPath::detach_all);
        *withdrawn = Some(why);
    }

    /// The hook the kernel programs run at.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Runs `f` with the fast path locked (counters, tests).
    pub fn with_fast_path<T>(&self, f: impl FnOnce(&mut FastPath) -> T) -> T {
        f(&mut self
            .fast_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// After a restart that adopted allocations: makes the kernel's channel entries exactly
    /// `bindings` (installing those missing, keeping those present with their counters,
    /// removing the rest) and its listener entries exactly `listeners`. Returns the bindings
    /// that have kernel entries now.
    pub fn adopt(
        &self,
        bindings: &[ChannelBinding],
        listeners: &[SocketAddr],
    ) -> Vec<ChannelBinding> {
        let mut installed = Vec::with_capacity(bindings.len());
        let entries: Vec<ChannelEntry> = bindings.iter().map(|b| self.entry(b)).collect();
        self.with_fast_path(|fp| {
            for (binding, entry) in bindings.iter().zip(&entries) {
                match fp.ensure_channel_binding(entry) {
                    Ok(_) => installed.push(*binding),
                    Err(e) => {
                        warn!(error = %e, ?entry, "adopted channel not in the kernel: relayed in userspace");
                    }
                }
            }
            let keep: Vec<ChannelEntry> = installed.iter().map(ChannelEntry::from).collect();
            match fp.retain(&keep, listeners) {
                Ok(removed) => info!(
                    kept = keep.len(),
                    removed, "kernel channel entries reconciled with the adopted allocations"
                ),
                Err(e) => warn!(error = %e, "cannot reconcile the kernel maps"),
            }
        });
        self.installed
            .fetch_add(installed.len() as u64, Ordering::Relaxed);
        installed
    }

    /// The kernel entry of `binding`, with the interfaces the host's output routes to the peer
    /// and to the client leave by (what the TC program sends on).
    fn entry(&self, binding: &ChannelBinding) -> ChannelEntry {
        let mut entry = ChannelEntry::from(binding);
        if self.hook != Hook::Tc {
            // XDP asks the FIB itself.
            return entry;
        }
        let mut router = self
            .router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(router) = router.as_mut() {
            let mut lookup = |src: SocketAddr, dst: SocketAddr| {
                router
                    .egress_ifindex(src.ip(), dst.ip())
                    .inspect_err(|e| {
                        debug!(error = %e, %src, %dst, "no route: relayed in userspace");
                    })
                    .unwrap_or(0)
            };
            entry.to_peer_ifindex = lookup(binding.relayed, binding.peer);
            entry.to_client_ifindex = lookup(binding.server, binding.client);
        }
        entry
    }
}

impl KernelPath {
    /// Installs `binding`'s entries; `false` if they are not in the kernel (withdrawn, map full,
    /// another error: the binding is relayed in userspace).
    fn install(&self, binding: &ChannelBinding) -> bool {
        if self.withdrawn().is_some() {
            return false;
        }
        let entry = self.entry(binding);
        match self.with_fast_path(|fp| fp.add_channel_binding(&entry)) {
            Ok(()) => {
                self.installed.fetch_add(1, Ordering::Relaxed);
                debug!(?entry, hook = %self.hook, "channel installed in the kernel");
                return true;
            }
            Err(FastPathError::MapFull { name, capacity }) => {
                self.map_full.fetch_add(1, Ordering::Relaxed);
                warn!(
                    map = name,
                    capacity,
                    ?entry,
                    "kernel map full: channel relayed in userspace"
                );
            }
            Err(e) => {
                self.install_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, ?entry, "channel not installed in the kernel: relayed in userspace");
            }
        }
        false
    }

    /// Removes `binding`'s entries.
    fn remove(&self, binding: &ChannelBinding) {
        let entry = ChannelEntry::from(binding);
        if let Err(e) = self.with_fast_path(|fp| fp.remove_channel_binding(&entry)) {
            warn!(error = %e, ?entry, "removing a channel from the kernel failed");
        } else {
            debug!(?entry, "channel removed from the kernel");
        }
    }
}

fn entry_of(binding: &ChannelBinding) -> ChannelEntry {
    ChannelEntry::from(binding)
}

fn add(a: ChannelCounters, b: ChannelCounters) -> ChannelCounters {
    ChannelCounters {
        to_peer: a.to_peer.plus(b.to_peer),
        to_client: a.to_client.plus(b.to_client),
    }
}

fn max_counter(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets.max(b.packets),
        bytes: a.bytes.max(b.bytes),
    }
}

fn max_counters(a: ChannelCounters, b: ChannelCounters) -> ChannelCounters {
    ChannelCounters {
        to_peer: max_counter(a.to_peer, b.to_peer),
        to_client: max_counter(a.to_client, b.to_client),
    }
}

/// Adds `counters` to `slot` of `by_cluster`, growing it as needed.
fn add_to(by_cluster: &mut Vec<ChannelCounters>, slot: usize, counters: ChannelCounters) {
    if by_cluster.len() <= slot {
        by_cluster.resize(slot + 1, ChannelCounters::default());
    }
    by_cluster[slot] = add(by_cluster[slot], counters);
}

/// What the kernel relayed on channel bindings: in all, per cluster slot, per listener and
/// per user slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Relayed {
    total: ChannelCounters,
    /// Indexed by cluster slot ([`turn::Stats::clusters`]); slots past its end relayed nothing.
    by_cluster: Vec<ChannelCounters>,
    /// Indexed by listener (`ListenerId`); listeners past its end relayed nothing.
    by_listener: Vec<ChannelCounters>,
    /// Indexed by user slot ([`turn::Usage::users`]); slots past its end relayed nothing.
    by_user: Vec<ChannelCounters>,
}

impl Relayed {
    fn add(&mut self, owner: Owner, counters: ChannelCounters) {
        self.total = add(self.total, counters);
        add_to(&mut self.by_cluster, owner.cluster, counters);
        add_to(&mut self.by_listener, owner.listener, counters);
        add_to(&mut self.by_user, owner.user, counters);
    }
}

/// Whom a binding's kernel traffic counts for: its cluster slot, its client's listener and
/// its user's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    cluster: usize,
    listener: usize,
    user: usize,
}

impl Owner {
    fn of(binding: &ChannelBinding) -> Owner {
        Owner {
            cluster: binding.cluster,
            listener: usize::from(binding.listener.0),
            user: binding.user,
        }
    }
}

/// Clamps `now` to never be below `reported`, slot by slot, and makes it the new `reported`.
fn never_below(reported: &mut Vec<ChannelCounters>, now: &[ChannelCounters]) {
    if reported.len() < now.len() {
        reported.resize(now.len(), ChannelCounters::default());
    }
    for (slot, counters) in now.iter().enumerate() {
        reported[slot] = max_counters(reported[slot], *counters);
    }
}

/// The data plane's side of channel bindings: applies the TURN core's channel events
/// (`ChannelBound`, `ChannelUnbound`) to the [`KernelPath`], and owns what bound channels relayed
/// in the kernel (a binding's map counters go with its entries, so they are added to a running
/// total just before). Metrics read from it ([`ChannelOffload::snapshot`]).
pub struct ChannelOffload {
    hook: Arc<KernelPath>,
    /// Bindings with entries in the kernel now, with whom they count for.
    live: Mutex<HashMap<ChannelEntry, Owner>>,
    /// What bindings relayed before their entries were removed (or replaced).
    retired: Mutex<Relayed>,
    /// The totals last reported: totals never go down (see [`ChannelOffload::relayed`]).
    reported: Mutex<Relayed>,
}

impl ChannelOffload {
    pub fn new(hook: Arc<KernelPath>) -> ChannelOffload {
        ChannelOffload {
            hook,
            live: Mutex::new(HashMap::new()),
            retired: Mutex::new(Relayed::default()),
            reported: Mutex::new(Relayed::default()),
        }
    }

    /// Reconciles the kernel with adopted allocations ([`KernelPath::adopt`]); the installed
    /// bindings count as live.
    pub fn adopt(&self, bindings: &[ChannelBinding], listeners: &[std::net::SocketAddr]) {
        let installed = self.hook.adopt(bindings, listeners);
        lock(&self.live).extend(installed.iter().map(|b| (entry_of(b), Owner::of(b))));
    }

    /// The hook it wraps.
    pub fn hook(&self) -> &Arc<KernelPath> {
        &self.hook
    }

    /// Bindings installed in the kernel now.
    pub fn installed_now(&self) -> usize {
        lock(&self.live).len()
    }

    /// What the kernel path did, read now: its exit counters, its bindings and what they
    /// relayed. BPF syscalls (a few per thousand bindings; two per binding on kernels without
    /// batch lookups): not on an async worker.
    pub fn snapshot(&self) -> KernelSnapshot {
        let hook = &self.hook;
        let (reasons, capacity) = hook.with_fast_path(|fp| (fp.stats(), fp.capacity()));
        let reasons = reasons.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the kernel path's counters");
            Vec::new()
        });
        let relayed = self.relayed_split();
        KernelSnapshot {
            reasons,
            bindings_installed: self.installed_now() as u64,
            capacity: u64::from(capacity),
            installs: hook.installed.load(Ordering::Relaxed),
            map_full: hook.map_full.load(Ordering::Relaxed),
            install_errors: hook.install_errors.load(Ordering::Relaxed),
            relayed: relayed.total,
            relayed_by_cluster: relayed.by_cluster,
            relayed_by_listener: relayed.by_listener,
            relayed_by_user: relayed.by_user,
        }
    }

    /// What the kernel relayed per user slot that a restarted agent cannot read again: with
    /// pinned maps, what bindings whose entries are gone relayed (the entries the next agent
    /// adopts keep their counters, which it reads itself); without, everything.
    pub fn by_user_to_save(&self) -> Vec<ChannelCounters> {
        if self.hook.with_fast_path(|fp| fp.is_pinned()) {
            lock(&self.retired).by_user.clone()
        } else {
            self.relayed_split().by_user
        }
    }

    /// Adds what `entry` relayed so far to the retired totals of all, of its cluster slot and
    /// of its listener (before its entries go).
    fn retire(&self, entry: &ChannelEntry, owner: Owner) {
        if let Some(counters) = self.hook.with_fast_path(|fp| fp.channel_counters(entry)) {
            lock(&self.retired).add(owner, counters);
        }
    }

    /// Everything the kernel relayed on channel bindings since the start: the retired total
    /// plus the counters of every installed binding. A scrape reads both maps whole with batch
    /// lookups (a syscall per thousand bindings), without the fast path's lock, so channel
    /// binds do not wait for it; on kernels without batch lookups it reads two map entries per
    /// binding, each under the lock on its own.
    ///
    /// The kernel adds to the per-binding counters without atomics, and a binding removed
    /// during a scrape can be missed by it (and counted by the next): the totals are clamped
    /// so they never go down, as Prometheus counters must not.
    pub fn relayed(&self) -> ChannelCounters {
        self.relayed_split().total
    }

    /// [`ChannelOffload::relayed`], and the same split by cluster slot (a binding counts for the
    /// slot it was bound with; the vector ends after the last slot with traffic).
    pub fn relayed_by_cluster(&self) -> (ChannelCounters, Vec<ChannelCounters>) {
        let relayed = self.relayed_split();
        (relayed.total, relayed.by_cluster)
    }

    /// The totals, by cluster slot and by listener, each clamped never to go down.
    fn relayed_split(&self) -> Relayed {
        // Retired first: a binding retired after this read is still read live (or missed,
        // never counted twice).
        let mut now = lock(&self.retired).clone();
        let entries: Vec<(ChannelEntry, Owner)> =
            lock(&self.live).iter().map(|(e, o)| (*e, *o)).collect();
        let all = self.hook.all_counters();
        for (entry, owner) in &entries {
            let counters = match &all {
                Some(all) => all.get(entry),
                None => self.hook.with_fast_path(|fp| fp.channel_counters(entry)),
            };
            if let Some(counters) = counters {
                now.add(*owner, counters);
            }
        }
        let mut reported = lock(&self.reported);
        reported.total = max_counters(reported.total, now.total);
        never_below(&mut reported.by_cluster, &now.by_cluster);
        never_below(&mut reported.by_listener, &now.by_listener);
        never_below(&mut reported.by_user, &now.by_user);
        reported.clone()
    }
}

/// Called by the event loop under the TURN core's lock, so events come one at a time and in the
/// core's order.
impl ChannelOffload {
    /// `Command::ChannelBound`: the binding's entries go into the kernel (or it stays in
    /// userspace).
    pub fn channel_bound(&self, binding: &ChannelBinding) {
        let entry = entry_of(binding);
        let previous = lock(&self.live).get(&entry).copied();
        if let Some(owner) = previous {
            // Installing again resets the kernel's counters: keep what they hold.
            self.retire(&entry, owner);
        }
        let installed = self.hook.install(binding);
        let mut live = lock(&self.live);
        if installed {
            live.insert(entry, Owner::of(binding));
        } else {
            live.remove(&entry);
        }
    }

    /// `Command::ChannelUnbound`: what the binding relayed is kept, its entries go.
    pub fn channel_unbound(&self, binding: &ChannelBinding) {
        let entry = entry_of(binding);
        let was_live = lock(&self.live).remove(&entry);
        if let Some(owner) = was_live {
            self.retire(&entry, owner);
        }
        self.hook.remove(binding);
    }
}

/// What the XDP data plane did, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSnapshot {
    /// The program's `STATS` counters (frames and frame bytes per exit reason); empty if the
    /// map could not be read.
    pub reasons: Vec<(Reason, Counter)>,
    /// Bindings with kernel entries now, and how many the maps hold.
    pub bindings_installed: u64,
    pub capacity: u64,
    /// Bindings installed since the start, and those left to userspace (map full, other errors).
    pub installs: u64,
    pub map_full: u64,
    pub install_errors: u64,
    /// Datagrams and data bytes relayed on channel bindings, per direction.
    pub relayed: ChannelCounters,
    /// The same per cluster slot ([`turn::Stats::clusters`]); may be shorter than the slots.
    pub relayed_by_cluster: Vec<ChannelCounters>,
    /// The same per listener (by `ListenerId`); may be shorter than the listeners.
    pub relayed_by_listener: Vec<ChannelCounters>,
    /// The same per user slot ([`turn::Usage::users`]); may be shorter than the slots.
    pub relayed_by_user: Vec<ChannelCounters>,
}
