//! `xturnd`: the xturn TURN agent. See docs/configuration.md for flags and the config file.
use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use rand::{RngCore as _, SeedableRng as _};
use relay_user::{
    auth::Credentials,
    config::{self, Config, XturndArgs},
    dataplane::{self, XdpHook},
    policy::PeerPolicy,
    server::{self, ChannelHook, NoHook, RunningServer, ServerSpec},
    telemetry,
    turn::{self, Listener, ServerConfig},
};
use tracing::{error, info};

fn main() -> ExitCode {
    let args = XturndArgs::parse();
    let config = match config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("xturnd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(&config.log_level) {
        eprintln!("xturnd: {e}");
        return ExitCode::from(2);
    }
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .enable_all()
        .build();
    let result = runtime
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<()> {
    let listeners: Vec<SocketAddr> = config.listeners.iter().map(|l| l.addr).collect();
    let mut relay_ips: Vec<IpAddr> = Vec::new();
    relay_ips.extend(config.relay_ipv4.map(IpAddr::V4));
    relay_ips.extend(config.relay_ipv6.map(IpAddr::V6));
    let fast_path = dataplane::select(
        config.dataplane,
        &listeners,
        &relay_ips,
        config.xdp_max_channels,
    )?;
    let xdp_hook = fast_path.map(|mut fast_path| {
        fast_path.spawn_logger();
        Arc::new(XdpHook::new(fast_path))
    });
    let hook: Arc<dyn ChannelHook> = match &xdp_hook {
        Some(hook) => Arc::clone(hook) as Arc<dyn ChannelHook>,
        None => Arc::new(NoHook),
    };

    let core = build_core(&config);
    let spec = ServerSpec {
        listeners,
        threads: config.threads,
    };
    let mut running = RunningServer::start(core, &spec, hook)?;
    info!(
        listeners = ?running.local_addrs(),
        relay_ipv4 = ?config.relay_ipv4,
        relay_ipv6 = ?config.relay_ipv6,
        realm = %config.realm,
        dataplane = if xdp_hook.is_some() { "xdp" } else { "userspace" },
        "xturnd ready"
    );

    tokio::select! {
        signal = shutdown_signal() => signal?,
        failure = running.task_failed() => anyhow::bail!("{failure}; stopping so a supervisor can restart xturnd"),
    }
    info!("shutting down");
    log_final_stats(&running, xdp_hook.as_deref());
    drop(running);
    drop(xdp_hook);
    Ok(())
}

fn build_core(config: &Config) -> turn::Server {
    let listeners = config
        .listeners
        .iter()
        .map(|l| Listener {
            name: l.name.clone(),
            addr: l.addr,
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

    let mut credentials = Credentials::new(config.realm.clone());
    for (name, password) in &config.users {
        credentials = credentials.with_user(name.clone(), password.clone());
    }
    for secret in &config.auth_secrets {
        credentials = credentials.with_rest_secret(secret.clone());
    }
    // Besides the configured addresses, every address of this host is its own: a client must not
    // reach the host's services through the relay (wildcard listeners, other NICs, VIPs).
    let policy = PeerPolicy::from_config(config).own_host(
        dataplane::local_addresses(),
        (config.min_port, config.max_port),
    );

    // Nonces are HMACs under a per-process key: they stay valid only while this process runs.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut nonce_key = [0u8; 32];
    rng.fill_bytes(&mut nonce_key);
    // The core's RNG picks relayed ports and RESERVATION-TOKENs: seed it with a full 256 bits.
    let mut rng_seed = [0u8; 32];
    rng.fill_bytes(&mut rng_seed);
    let (start, start_unix) = server::clocks();
    turn::Server::new(
        server_config,
        credentials,
        policy,
        nonce_key,
        rng_seed,
        start,
        start_unix,
    )
}

fn log_final_stats(running: &RunningServer, xdp: Option<&XdpHook>) {
    let allocations = running.with_core(turn::Server::allocation_count);
    let stats = running.with_core(|core| format!("{:?}", core.stats()));
    info!(allocations, %stats, "userspace counters");
    let Some(xdp) = xdp else {
        return;
    };
    info!(
        installed = xdp.installed.load(Ordering::Relaxed),
        map_full = xdp.map_full.load(Ordering::Relaxed),
        install_errors = xdp.install_errors.load(Ordering::Relaxed),
        "XDP channel bindings"
    );
    match xdp.with_fast_path(|fp| fp.stats()) {
        Ok(counters) => {
            for (reason, counter) in counters {
                info!(
                    reason = reason.name(),
                    packets = counter.packets,
                    bytes = counter.bytes,
                    "XDP counter"
                );
            }
        }
        Err(e) => error!(error = %e, "cannot read XDP counters"),
    }
}

/// Every allocation holds a socket (two with dual stack or a reservation): lift the soft limit
/// on open files to the hard one, so the default 1024 does not cap the relay far below
/// `--max-allocations`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
    Ok(())
}
