//! `xturnd`: the xturn TURN agent. See docs/configuration.md for flags and the config file,
//! docs/metrics.md for metrics, health checks, draining and logging.
use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use rand::{RngCore as _, SeedableRng as _};
use relay_user::{
    admin::{self, AdminState, Phase},
    config::{self, Config, Transport, XturndArgs},
    configmap, dataplane, descriptors, dns, lanes,
    metrics::MetricsSource,
    offload::{ChannelOffload, KernelPath},
    reload,
    server::{self, ListenerSpec, RunningServer, ServerSpec},
    state,
    telemetry::{self, LogControl},
    tls::CertStore,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{debug, error, info, warn};
use turn_proto::{
    policy::ResolvedNames,
    server::{self as turn, Listener, ServerConfig},
};

/// How often a drain checks whether the allocations are gone.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Drain progress is logged when the count changes, at most this often...
const DRAIN_LOG_MIN: Duration = Duration::from_secs(1);
/// ... and at least this often.
const DRAIN_LOG_MAX: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = XturndArgs::parse();
    // --config-map: the file's text comes from the Kubernetes API, read before anything else.
    let config_map_text = match &args.config_map {
        None => None,
        Some(reference) => match fetch_config_map(&args, reference) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("xturnd: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    let loaded = match (&config_map_text, &args.config_map) {
        (Some(text), Some(reference)) => {
            config::load_text(&args, text, &format!("ConfigMap {reference}"))
        }
        _ => config::load(&args),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("xturnd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match telemetry::init_agent(&config.log_level, config.log_format) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("xturnd: {e}");
            return ExitCode::from(2);
        }
    };
    descriptors::raise_open_files_limit();
    // Before the runtime starts threads: growing the table later costs a grace period a time.
    let slots = descriptors::reserve_table(config.max_allocations);
    debug!(slots = ?slots, max_allocations = config.max_allocations, "descriptor table sized");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .enable_all()
        .build();
    let result = runtime
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(&args, config, log, config_map_text)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_map_key(args: &XturndArgs) -> String {
    args.config_map_key
        .clone()
        .unwrap_or_else(|| configmap::DEFAULT_KEY.to_owned())
}

/// Reads the --config-map ConfigMap's text once, with a runtime of its own (the main runtime's
/// size depends on the configuration).
fn fetch_config_map(args: &XturndArgs, reference: &configmap::ConfigMapRef) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(configmap::connect_and_fetch(
        reference,
        &config_map_key(args),
    ))?)
}

async fn run(
    args: &XturndArgs,
    config: Config,
    log: LogControl,
    config_map_text: Option<String>,
) -> Result<()> {
    // Signals are caught from the start: a SIGTERM while starting drains (nothing) and exits.
    let mut signals = Signals::new()?;
    // Health checks answer while the relay starts (/ready: 503 until it runs).
    let admin = AdminState::new(Some(log));
    let mut admin_servers = Vec::new();
    for (addr, routes) in admin::plan(config.metrics_listen, config.health_listen) {
        admin_servers.push(admin::serve(addr, routes, Arc::clone(&admin)).await?);
    }

    // The kernel fast path serves UDP clients only; TCP, TLS and DTLS clients go through
    // userspace both ways.
    let listeners: Vec<SocketAddr> = config
        .listeners
        .iter()
        .filter(|l| l.transport == Transport::Udp)
        .map(|l| l.addr)
        .collect();
    let mut relay_ips: Vec<IpAddr> = Vec::new();
    relay_ips.extend(config.relay_ipv4.map(IpAddr::V4));
    relay_ips.extend(config.relay_ipv6.map(IpAddr::V6));
    if let Some(dir) = &config.bpf_pin_dir {
        if config.dataplane == dataplane::Dataplane::Userspace {
            warn!(dir = %dir.display(), "--bpf-pin-dir is ignored with --dataplane userspace");
        } else {
            // A directory of its own on bpffs (the operator names one per pod) may not exist
            // yet: make it, then make sure it is on bpffs.
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--bpf-pin-dir: cannot create {}", dir.display()))?;
            }
            state::check_bpffs(dir).context("--bpf-pin-dir")?;
        }
    }
    let mode = if listeners.is_empty() {
        dataplane::Dataplane::Userspace
    } else {
        config.dataplane
    };
    let fast_path = dataplane::select(
        mode,
        &listeners,
        &relay_ips,
        config.xdp_max_channels,
        config.bpf_pin_dir.as_deref(),
    )?;
    // The data plane's kernel offload: it applies the core's channel events and keeps what the
    // kernel relayed, for the metrics.
    let interfaces = fast_path
        .as_ref()
        .map(|s| s.interfaces.clone())
        .unwrap_or_default();
    let xdp = fast_path.map(|selected| {
        let mut fast_path = selected.fast_path;
        fast_path.spawn_logger();
        Arc::new(ChannelOffload::new(Arc::new(KernelPath::with_hook(
            fast_path,
            selected.hook,
        ))))
    });

    let host_ips = dataplane::local_addresses();
    // STRICT_DNS clusters: their names are resolved before the first client, then every 5 s.
    let mut resolver = dns::DnsResolver::new(dns::system_lookup());
    let dns_failures = resolver.failures();
    resolver.set_hosts(config.dns_hosts()).await;
    let (dns_hosts, dns_hosts_rx) = tokio::sync::watch::channel(config.dns_hosts());
    let mut names = dns::spawn(resolver, dns_hosts_rx, dns::INTERVAL);
    let mut core = build_core(&config, &host_ips, &names.borrow_and_update())?;
    let adopted = adopt_state(&config, &mut core);
    if let Some(meter) = &xdp
        && (adopted.is_some() || config.bpf_pin_dir.is_some())
    {
        // Before any listener reads: the kernel's entries become exactly the adopted ones.
        let udp_bindings: Vec<_> = core
            .installed_channel_bindings()
            .into_iter()
            .filter(|b| {
                config
                    .listeners
                    .get(usize::from(b.listener.0))
                    .is_some_and(|l| l.transport == Transport::Udp)
            })
            .collect();
        meter.adopt(&udp_bindings, &listeners);
    }
    let mut specs = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let tls = match &listener.tls {
            Some(files) => Some(
                CertStore::load(files).with_context(|| format!("listener {}", listener.name))?,
            ),
            None => None,
        };
        specs.push(ListenerSpec {
            addr: listener.addr,
            transport: listener.transport,
            tls,
        });
    }
    let spec = ServerSpec {
        listeners: specs,
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        idle_timeout: config.idle_timeout,
        threads: config.threads,
        lanes: match lanes::allowed_cpus() {
            Ok(cpus) => lanes::plan(config.threads, config.cpu_affinity, &cpus),
            Err(e) => {
                warn!(error = %e, "cannot read the CPUs this process may use: no lanes");
                None
            }
        },
        restored: adopted
            .as_ref()
            .map(|a| a.relayed.clone())
            .unwrap_or_default(),
        state_dir: config.state_dir.clone(),
    };
    let mut running = RunningServer::start(core, &spec, xdp.clone())?;
    if let Some(outcome) = &adopted {
        let (allocations, channels) = running.with_core(|core| {
            let channels: usize = core
                .allocations()
                .map(|a| a.channel_bindings().count())
                .sum();
            (core.allocation_count(), channels)
        });
        info!(
            allocations,
            channels,
            dropped = running.adoption_dropped(),
            skipped = outcome.skipped,
            "adopted allocations from the state file"
        );
    }
    let listener_names = config.listeners.iter().map(|l| l.name.clone()).collect();
    // STUNner counts each UDP listener's sockets as its connections.
    let udp_sockets = config
        .listeners
        .iter()
        .map(|l| (l.transport == Transport::Udp).then_some(config.threads as u64))
        .collect();
    admin.set_running(
        running.handle(),
        MetricsSource::new(running.handle(), listener_names, xdp.as_ref())
            .with_interfaces(interfaces.clone())
            .with_udp_sockets(udp_sockets)
            .with_dns_failures(dns_failures),
    );
    // Never a blackhole: a kernel path whose egress drops what it relays is withdrawn.
    if let Some(meter) = &xdp {
        let hook = Arc::clone(meter.hook());
        let mut watch =
            dataplane::DeliveryWatch::new(interfaces.iter().map(|c| c.interface.clone()).collect());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(dataplane::DeliveryWatch::INTERVAL);
            loop {
                tick.tick().await;
                if !watch.check(&hook) {
                    break;
                }
            }
        });
    }
    info!(
        listeners = ?running.local_addrs(),
        relay_ipv4 = ?config.relay_ipv4,
        relay_ipv6 = ?config.relay_ipv6,
        realm = %config.realm,
        dataplane = xdp.as_ref().map_or("userspace", |m| m.hook().hook().name()),
        admin = ?admin_servers.iter().map(admin::AdminServer::local_addr).collect::<Vec<_>>(),
        "xturnd ready"
    );

    let mut config = config;
    // SIGHUP reloads the configuration, as does a change to the --config file or to a
    // credential file it names.
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut watched = WatchedFiles::new(args.config.as_deref(), &config.credential_files);
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // --config-map: the ConfigMap's changes, as they happen.
    let mut config_map = match (&args.config_map, config_map_text) {
        (Some(reference), Some(text)) => {
            Some(configmap::connect_and_watch(reference.clone(), config_map_key(args), text).await?)
        }
        _ => None,
    };
    let load = |args: &XturndArgs, config_map: &Option<tokio::sync::watch::Receiver<String>>| match (
        config_map,
        &args.config_map,
    ) {
        (Some(rx), Some(reference)) => {
            let text = rx.borrow().clone();
            config::load_text(args, &text, &format!("ConfigMap {reference}"))
        }
        _ => config::load(args),
    };
    loop {
        tokio::select! {
            signal = signals.recv() => {
                info!(signal, "signal received: draining");
                break;
            }
            _ = hangup.recv() => {
                let loaded = load(args, &config_map);
                reload(loaded, &mut config, &running, &host_ips, &names.borrow(), &admin, "SIGHUP");
                dns_hosts.send_if_modified(|hosts| replace(hosts, config.dns_hosts()));
            }
            Ok(()) = names.changed() => {
                let policy = reload::policy(&config, &host_ips, &names.borrow_and_update());
                let revoked = running.set_policy(policy);
                info!(
                    permissions_revoked = revoked.permissions,
                    channels_revoked = revoked.channels,
                    connections_revoked = revoked.connections,
                    "peer policy updated: STRICT_DNS addresses changed"
                );
            }
            Some(()) = async {
                match config_map.as_mut() {
                    Some(rx) => rx.changed().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let loaded = load(args, &config_map);
                reload(loaded, &mut config, &running, &host_ips, &names.borrow(), &admin, "ConfigMap changed");
                dns_hosts.send_if_modified(|hosts| replace(hosts, config.dns_hosts()));
            }
            _ = tick.tick() => {
                if watched.changed() {
                    let loaded = load(args, &config_map);
                    reload(loaded, &mut config, &running, &host_ips, &names.borrow(), &admin, "a configuration or credential file changed");
                    dns_hosts.send_if_modified(|hosts| replace(hosts, config.dns_hosts()));
                }
            }
            failure = running.task_failed() => anyhow::bail!("{failure}; stopping so a supervisor can restart xturnd"),
        }
        // A reload may have named other credential files.
        watched.watch(args.config.as_deref(), &config.credential_files);
    }
    admin.set_phase(Phase::Draining);
    running.set_draining(true);
    drain(&mut running, &mut signals, config.drain_timeout).await?;
    info!("shutting down");
    if let Err(e) = running.save_state() {
        error!(error = %e, "cannot write the allocation state");
    }
    log_final_stats(&running, xdp.as_deref());
    drop(admin_servers);
    drop(running);
    drop(xdp);
    Ok(())
}

/// Waits, while the relay keeps relaying (and refuses new allocations), until no allocation
/// is left, `timeout` has passed, or a second signal comes.
async fn drain(
    running: &mut RunningServer,
    signals: &mut Signals,
    timeout: Duration,
) -> Result<()> {
    let allocations = running.with_core(turn::Server::allocation_count);
    if timeout.is_zero() {
        info!(allocations, "drain timeout is 0: stopping at once");
        return Ok(());
    }
    info!(
        allocations,
        timeout_secs = timeout.as_secs(),
        "draining: not ready, new allocations refused (508), live allocations relayed until \
         they end or the timeout passes; a second SIGTERM or SIGINT stops at once"
    );
    let start = Instant::now();
    let deadline = start + timeout;
    let (mut reported, mut reported_at) = (allocations, start);
    loop {
        let now = Instant::now();
        let left = running.with_core(turn::Server::allocation_count);
        if left == 0 {
            info!(
                after_ms = now.duration_since(start).as_millis(),
                "drained: no allocation left"
            );
            return Ok(());
        }
        if now >= deadline {
            warn!(
                allocations = left,
                "drain timeout passed: stopping with allocations live"
            );
            return Ok(());
        }
        let since = now.duration_since(reported_at);
        if (left != reported && since >= DRAIN_LOG_MIN) || since >= DRAIN_LOG_MAX {
            info!(
                allocations = left,
                remaining_secs = deadline.duration_since(now).as_secs(),
                "draining"
            );
            (reported, reported_at) = (left, now);
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL.min(deadline - now)) => {}
            signal = signals.recv() => {
                warn!(signal, allocations = left, "second signal: stopping at once");
                return Ok(());
            }
            failure = running.task_failed() => {
                anyhow::bail!("{failure} while draining");
            }
        }
    }
}

/// SIGTERM and SIGINT, both of which start a drain (and the second one ends it).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// With `--state-dir`, adopts the allocations of the state file into `core`. A missing file is a
/// fresh start; an unreadable or corrupt one is logged and ignored (a fresh start too).
fn adopt_state(config: &Config, core: &mut turn::Server) -> Option<turn::RestoreOutcome> {
    let dir = config.state_dir.as_ref()?;
    match state::load_usage(dir) {
        Ok(saved) if !saved.is_empty() => {
            core.restore_usage(&saved);
            info!(users = saved.len(), "usage read");
        }
        Ok(_) => {}
        Err(e) => error!(error = %e, "usage file unusable: usage counted from zero"),
    }
    match state::load(dir) {
        Ok(Some(mut snapshot)) => {
            // A DTLS client's session did not survive the restart (TCP and TLS clients' are
            // skipped by the core, which knows them by their 5-tuple's transport).
            let before = snapshot.allocations.len();
            snapshot.allocations.retain(|a| {
                config
                    .listeners
                    .get(usize::from(a.listener))
                    .is_none_or(|l| l.transport != Transport::Dtls)
            });
            let dtls = before - snapshot.allocations.len();
            if dtls > 0 {
                info!(
                    allocations = dtls,
                    "DTLS clients' allocations not adopted: their sessions ended with the restart"
                );
            }
            let outcome = core.restore(&snapshot, Instant::now());
            info!(
                allocations = outcome.allocations,
                channels = outcome.channels,
                skipped = outcome.skipped,
                "allocation state read"
            );
            Some(outcome)
        }
        Ok(None) => {
            info!(dir = %dir.display(), "no allocation state: fresh start");
            None
        }
        Err(e) => {
            error!(error = %e, "allocation state unusable: starting fresh");
            None
        }
    }
}

/// Sets `*slot` to `new`; true if it changed.
fn replace<T: PartialEq>(slot: &mut T, new: T) -> bool {
    if *slot == new {
        return false;
    }
    *slot = new;
    true
}

fn build_core(config: &Config, host_ips: &[IpAddr], names: &ResolvedNames) -> Result<turn::Server> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| Listener {
            name: l.name.clone(),
            addr: l.addr,
            transport: if l.transport.is_stream() {
                turn::Transport::Tcp
            } else {
                turn::Transport::Udp
            },
        })
        .collect();
    let mut server_config = ServerConfig::new(config.realm.clone(), listeners);
    server_config.software = format!("xturn/{}", env!("CARGO_PKG_VERSION"));
    server_config.relay_ipv4 = config.relay_ipv4;
    server_config.relay_ipv6 = config.relay_ipv6;
    server_config.min_port = config.min_port;
    server_config.max_port = config.max_port;
    server_config.default_lifetime = config.default_lifetime;
    server_config.max_lifetime = config.max_lifetime;
    server_config.max_allocations = config.max_allocations;
    server_config.max_allocations_per_user = config.max_allocations_per_user;
    server_config.max_allocations_per_ip = config.max_allocations_per_ip;
    server_config.max_tracked_users = config.max_tracked_users;
    server_config.stun_only = config.stun_only;
    if config.stun_only {
        info!("auth type none: a STUN server only, every TURN request is refused (403)");
    }

    let credentials = reload::credentials(config);
    // Besides the configured addresses, every address of this host is its own: a client must not
    // reach the host's services through the relay (wildcard listeners, other NICs, VIPs).
    let policy = reload::policy(config, host_ips, names);

    // Nonces are HMACs under a per-process key: they stay valid only while this process runs
    // (or, with --state-dir, while the key file there is kept).
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut nonce_key = [0u8; 32];
    rng.fill_bytes(&mut nonce_key);
    // With a state directory the key is kept there, so nonces survive a restart.
    if let Some(dir) = &config.state_dir {
        nonce_key = state::nonce_key(dir, nonce_key).context("--state-dir")?;
    }
    // The core's RNG picks relayed ports and RESERVATION-TOKENs: seed it with a full 256 bits.
    let mut rng_seed = [0u8; 32];
    rng.fill_bytes(&mut rng_seed);
    let (start, start_unix) = server::clocks();
    Ok(turn::Server::new(
        server_config,
        credentials,
        policy,
        nonce_key,
        rng_seed,
        start,
        start_unix,
    ))
}

/// How often the configuration and credential files are checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// The files the configuration comes from — the `--config` file and the credential files it
/// names (`auth.credentials.password_file`, ...) — by content, to notice edits, renames into
/// place and the kubelet's updates of a mounted ConfigMap or Secret (which swap a symlink).
/// Their contents are kept only as a hash.
struct WatchedFiles {
    files: Vec<(std::path::PathBuf, Option<u64>)>,
}

impl WatchedFiles {
    fn new(config: Option<&std::path::Path>, credentials: &[std::path::PathBuf]) -> WatchedFiles {
        let mut watched = WatchedFiles { files: Vec::new() };
        watched.watch(config, credentials);
        watched
    }

    fn digest(path: &std::path::Path) -> Option<u64> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let bytes = std::fs::read(path).ok()?;
        Some(BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes))
    }

    /// Watches these files from now on (a reload may name other credential files); a file
    /// watched already keeps what was seen of it.
    fn watch(&mut self, config: Option<&std::path::Path>, credentials: &[std::path::PathBuf]) {
        let previous = std::mem::take(&mut self.files);
        for path in config
            .into_iter()
            .chain(credentials.iter().map(AsRef::as_ref))
        {
            let seen = previous
                .iter()
                .find(|(p, _)| p == path)
                .map_or_else(|| Self::digest(path), |(_, seen)| *seen);
            self.files.push((path.to_path_buf(), seen));
        }
    }

    /// True once per change of any of the files (one that cannot be read is a change when it
    /// comes back, not when it goes: a half-rotated mount leaves the running values in force).
    fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.files {
            let now = Self::digest(path);
            if now.is_some() && now != *seen {
                *seen = now;
                changed = true;
            }
        }
        changed
    }
}

/// Reads the configuration again and applies what can change at run time: users, secrets,
/// routes and clusters (live allocations stay), and the log level. An invalid configuration is
/// rejected as a whole and the running one stays in force.
fn reload(
    loaded: Result<Config, config::ConfigError>,
    config: &mut Config,
    running: &RunningServer,
    host_ips: &[IpAddr],
    names: &ResolvedNames,
    admin: &AdminState,
    trigger: &str,
) {
    let new = match loaded {
        Ok(new) => new,
        Err(e) => {
            error!(trigger, error = %e, "configuration reload rejected; the running configuration stays in force");
            return;
        }
    };
    let plan = reload::plan(config, &new, host_ips, names);
    running.with_core_mut(|core| core.set_credentials(plan.credentials));
    running.set_policy(plan.policy);
    let mut applied = plan.applied;
    if new.log_level != config.log_level {
        match admin.log_control().map(|log| log.set(&new.log_level)) {
            Some(Ok(())) => applied.push("log level"),
            Some(Err(e)) => warn!(error = %e, "new log level refused"),
            None => {}
        }
    }
    info!(trigger, ?applied, "configuration reloaded");
    if !plan.needs_restart.is_empty() {
        warn!(
            fields = ?plan.needs_restart,
            "these changes take effect only after a restart; their running values stay"
        );
    }
    config.users = new.users;
    config.auth_secrets = new.auth_secrets;
    config.credential_files = new.credential_files;
    config.clusters = new.clusters;
    config.allow_loopback_peers = new.allow_loopback_peers;
    config.log_level = new.log_level;
    for listener in &mut config.listeners {
        if let Some(updated) = new.listeners.iter().find(|l| l.name == listener.name) {
            listener.routes.clone_from(&updated.routes);
            listener.routed = updated.routed;
        }
    }
}

fn log_final_stats(running: &RunningServer, xdp: Option<&ChannelOffload>) {
    let allocations = running.with_core(turn::Server::allocation_count);
    let stats = running.with_core(|core| format!("{:?}", core.stats()));
    info!(allocations, %stats, "userspace counters");
    let Some(meter) = xdp else {
        return;
    };
    let xdp = meter.hook();
    let hook = xdp.hook().name();
    info!(
        hook,
        installed = xdp.installed.load(Ordering::Relaxed),
        map_full = xdp.map_full.load(Ordering::Relaxed),
        install_errors = xdp.install_errors.load(Ordering::Relaxed),
        "kernel channel bindings"
    );
    match xdp.with_fast_path(|fp| fp.stats()) {
        Ok(counters) => {
            for (reason, counter) in counters {
                info!(
                    hook,
                    reason = reason.name(),
                    packets = counter.packets,
                    bytes = counter.bytes,
                    "kernel counter"
                );
            }
        }
        Err(e) => error!(error = %e, "cannot read the kernel counters"),
    }
}
