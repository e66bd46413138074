//! `xturn-ceiling`: the benchmark's ceiling contender. Attaches the ceiling XDP program
//! (`relay-ebpf/src/bin/ceiling.rs`: the per-packet work of the fast path without its lookups)
//! until SIGTERM, SIGINT or `--max-seconds`, then prints its counters as JSON. `cargo xtask
//! bench` runs it in the relay namespace; it lives in the agent's package because that package
//! builds the eBPF objects.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use relay_user::ceiling::{Ceiling, CeilingSpec};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "xturn-ceiling",
    version,
    about = "The benchmark's ceiling XDP program: attach, count, report"
)]
struct CeilingArgs {
    /// The listener address clients send ChannelData to.
    #[arg(long)]
    listen: SocketAddrV4,
    /// The (one) client IP.
    #[arg(long)]
    client_ip: Ipv4Addr,
    /// The relayed address's IP (the client's port is reused as the relayed port).
    #[arg(long)]
    relay_ip: Ipv4Addr,
    /// The (one) peer.
    #[arg(long)]
    peer: SocketAddrV4,
    /// The channel number of the ChannelData sent back to clients.
    #[arg(long, default_value_t = relay_common::ceiling::CHANNEL)]
    channel: u16,
    /// Interfaces to attach to. Repeatable.
    #[arg(long = "interface", required = true)]
    interfaces: Vec<String>,
    /// Detach by itself after this long.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

fn main() -> Result<()> {
    let args = CeilingArgs::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: CeilingArgs) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let spec = CeilingSpec {
        listener: args.listen,
        client_ip: args.client_ip,
        relay_ip: args.relay_ip,
        peer: args.peer,
        channel: args.channel,
        interfaces: args.interfaces,
    };
    let mut ceiling = Ceiling::start(&spec)?;
    eprintln!(
        "xturn-ceiling: ready, attached {:?}",
        ceiling.modes.as_slice()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {}
    }
    let counters = ceiling.counters()?;
    ceiling.detach();
    let modes: serde_json::Map<String, serde_json::Value> = ceiling
        .modes
        .iter()
        .map(|(i, m)| (i.clone(), serde_json::Value::from(*m)))
        .collect();
    let report = serde_json::json!({ "counters": counters, "modes": modes });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
