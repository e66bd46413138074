//! `xturn-reflector`: the benchmark's in-kernel load side. Attaches the reflector TC program
//! (`relay-ebpf/src/bin/reflector.rs`: every matching datagram goes straight back where it came
//! from) until SIGTERM, SIGINT or `--max-seconds`, then prints its counters as JSON. `cargo xtask
//! bench` runs one in the client's and one in the peer's namespace for the `--threads` scaling
//! step; it lives in the agent's package because that package builds the eBPF objects.
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use relay_user::reflector::{Reflector, ReflectorSpec};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "xturn-reflector",
    version,
    about = "The benchmark's reflector TC program: send datagrams straight back, count them"
)]
struct ReflectorArgs {
    /// Only datagrams to this UDP port (default: any).
    #[arg(long)]
    port: Option<u16>,
    /// Only ChannelData (STUN and everything else passes).
    #[arg(long)]
    channel_data: bool,
    /// Interfaces to attach to (TC ingress). Repeatable.
    #[arg(long = "interface", required = true)]
    interfaces: Vec<String>,
    /// Detach by itself after this long.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

fn main() -> Result<()> {
    let args = ReflectorArgs::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: ReflectorArgs) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let spec = ReflectorSpec {
        port: args.port,
        channel_data: args.channel_data,
        interfaces: args.interfaces,
    };
    let mut reflector = Reflector::start(&spec)?;
    eprintln!("xturn-reflector: ready on {:?}", spec.interfaces);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {}
    }
    let counters = reflector.counters()?;
    reflector.detach();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "counters": counters }))?
    );
    Ok(())
}
