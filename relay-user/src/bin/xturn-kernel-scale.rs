//! `xturn-kernel-scale`: the kernel program's own time per datagram as its maps fill, for the
//! benchmark's scale figures. Loads the fast path (maps sized for the largest count), installs
//! channel bindings up to each count, and runs the XDP program with `BPF_PROG_TEST_RUN` on
//! ChannelData of bindings spread over the installed ones (client → peer) and on their peers'
//! datagrams (peer → client), one run per call so every run sees a fresh frame; the kernel
//! reports each run's time. Prints JSON. `cargo xtask bench` runs it in the relay namespace of
//! its topology, where `bpf_fib_lookup` resolves both next hops, so every run is a full relay
//! (lookup, rewrite, checksums, redirect). Nothing is transmitted. At each count it also times
//! reading every binding's counters, as a metrics scrape does: batch lookups against a lookup
//! per map entry.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use relay_ebpf::frames::{channel_data, udp4_frame};
use relay_user::ebpf::{ChannelEntry, FastPath};
use serde::Serialize;

/// XDP_REDIRECT: what a relayed datagram returns.
const XDP_REDIRECT: u32 = 4;
/// Client ports (and relayed ports) used per channel number (client side) or peer port.
const PORTS: u32 = 60_000;

#[derive(Parser)]
#[command(
    name = "xturn-kernel-scale",
    version,
    about = "The kernel program's per-datagram time as its channel maps fill (BPF_PROG_TEST_RUN)"
)]
struct Args {
    /// Interface the clients' datagrams arrive on.
    #[arg(long)]
    client_interface: String,
    /// Interface the peers' datagrams arrive on.
    #[arg(long)]
    peer_interface: String,
    /// The listener address.
    #[arg(long)]
    listen: SocketAddrV4,
    /// The clients' IP (ports vary per binding).
    #[arg(long)]
    client_ip: Ipv4Addr,
    /// The relayed addresses' IP (ports vary per binding).
    #[arg(long)]
    relay_ip: Ipv4Addr,
    /// The peers' IP (ports vary per binding).
    #[arg(long)]
    peer_ip: Ipv4Addr,
    /// Binding counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "16,1000,100000,1000000")]
    bindings: Vec<u32>,
    /// Bindings measured at each count, spread over the installed ones.
    #[arg(long, default_value_t = 64)]
    samples: u32,
    /// Runs per sampled binding and direction.
    #[arg(long, default_value_t = 100)]
    runs: u32,
    /// ChannelData data bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

#[derive(Serialize)]
struct Point {
    bindings: u32,
    /// Seconds it took to install the bindings added for this count.
    install_s: f64,
    /// Mean and 99th percentile of the program's own time per datagram, nanoseconds.
    to_peer_ns: f64,
    to_peer_p99_ns: f64,
    to_client_ns: f64,
    to_client_p99_ns: f64,
    runs: usize,
    /// Reading every binding's counters (a metrics scrape), nanoseconds per binding: with
    /// batch lookups of both maps whole, and with two lookups per binding (over at most
    /// [`EACH_READS`] bindings).
    read_batch_ns: f64,
    read_each_ns: f64,
}

/// Bindings read one at a time for [`Point::read_each_ns`].
const EACH_READS: u32 = 20_000;

#[derive(Serialize)]
struct Report {
    program: &'static str,
    payload: usize,
    capacity: u32,
    points: Vec<Point>,
}

/// Binding `k`'s entry: a unique (client port, channel) and a unique (relayed port, peer port).
fn entry(args: &Args, k: u32) -> Result<ChannelEntry> {
    let port = |n: u32| u16::try_from(1024 + n).context("port out of range");
    let channel = u16::try_from(0x4000 + k / PORTS).context("channel out of range")?;
    Ok(ChannelEntry {
        client: SocketAddr::from((args.client_ip, port(k % PORTS)?)),
        listener: SocketAddr::V4(args.listen),
        channel,
        relayed: SocketAddr::from((args.relay_ip, port(k % PORTS)?)),
        peer: SocketAddr::from((args.peer_ip, port(k / PORTS)?)),
        to_peer_ifindex: 0,
        to_client_ifindex: 0,
    })
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))
}

/// Mean and 99th percentile of `times`, in nanoseconds.
fn summary(times: &mut [Duration]) -> (f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0);
    }
    times.sort_unstable();
    let mean = times.iter().map(Duration::as_nanos).sum::<u128>() as f64 / times.len() as f64;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)].as_nanos() as f64;
    (mean, p99)
}

/// [`Point::read_batch_ns`] and [`Point::read_each_ns`] with `count` bindings installed.
fn counter_reads(fast_path: &FastPath, args: &Args, count: u32) -> Result<(f64, f64)> {
    let maps = fast_path.counter_maps().context("counter maps")?;
    let started = Instant::now();
    let all = maps.read().context("batch lookups")?;
    let batch = started.elapsed();
    if all.len() != count as usize {
        bail!("a batch read found {} bindings of {count}", all.len());
    }
    let each = count.min(EACH_READS);
    let started = Instant::now();
    for k in 0..each {
        if fast_path.channel_counters(&entry(args, k)?).is_none() {
            bail!("binding {k} is not installed");
        }
    }
    let per = |d: Duration, n: u32| d.as_nanos() as f64 / f64::from(n.max(1));
    Ok((per(batch, count), per(started.elapsed(), each)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(&largest) = args.bindings.iter().max() else {
        bail!("no binding counts given");
    };
    if args.bindings.windows(2).any(|w| w[0] > w[1]) {
        bail!("--bindings must be ascending");
    }
    if largest / PORTS > 0x3FFF {
        bail!("at most {} bindings", 0x4000 * PORTS);
    }
    let client_if = ifindex(&args.client_interface)?;
    let peer_if = ifindex(&args.peer_interface)?;
    let mut fast_path = FastPath::load_with_capacity(largest).context("loading the fast path")?;
    fast_path.add_listener(SocketAddr::V4(args.listen))?;
    let data = vec![0x5a; args.payload];
    let mut installed = 0;
    let mut points = Vec::new();
    for &count in &args.bindings {
        let started = Instant::now();
        while installed < count {
            fast_path
                .add_channel_binding(&entry(&args, installed)?)
                .with_context(|| format!("installing binding {installed}"))?;
            installed += 1;
        }
        let install_s = started.elapsed().as_secs_f64();
        let samples = args.samples.clamp(1, count);
        let mut to_peer = Vec::new();
        let mut to_client = Vec::new();
        for i in 0..samples {
            let k = u32::try_from(u64::from(i) * u64::from(count) / u64::from(samples))?;
            let e = entry(&args, k)?;
            let (SocketAddr::V4(client), SocketAddr::V4(relayed), SocketAddr::V4(peer)) =
                (e.client, e.relayed, e.peer)
            else {
                bail!("IPv4 only");
            };
            let from_client = udp4_frame(
                *client.ip(),
                client.port(),
                *args.listen.ip(),
                args.listen.port(),
                &channel_data(e.channel, &data, &[]),
            );
            let from_peer = udp4_frame(
                *peer.ip(),
                peer.port(),
                *relayed.ip(),
                relayed.port(),
                &data,
            );
            for _ in 0..args.runs {
                for (frame, ingress, times) in [
                    (&from_client, client_if, &mut to_peer),
                    (&from_peer, peer_if, &mut to_client),
                ] {
                    let run = fast_path.test_run(frame, Some(ingress))?;
                    if run.action != XDP_REDIRECT {
                        bail!(
                            "binding {k}: the program returned {} instead of relaying (routes \
                             and neighbours of the relay namespace must resolve both sides)",
                            run.action
                        );
                    }
                    times.push(run.duration);
                }
            }
        }
        let runs = to_peer.len();
        let (to_peer_ns, to_peer_p99_ns) = summary(&mut to_peer);
        let (to_client_ns, to_client_p99_ns) = summary(&mut to_client);
        let (read_batch_ns, read_each_ns) = counter_reads(&fast_path, &args, count)?;
        eprintln!(
            "xturn-kernel-scale: {count} bindings: client → peer {to_peer_ns:.0} ns, peer → client \
             {to_client_ns:.0} ns per datagram ({runs} runs each; installed in {install_s:.1} s); \
             counters read in {read_batch_ns:.0} ns per binding in batches, {read_each_ns:.0} ns \
             a binding at a time"
        );
        points.push(Point {
            bindings: count,
            install_s,
            to_peer_ns,
            to_peer_p99_ns,
            to_client_ns,
            to_client_p99_ns,
            runs,
            read_batch_ns,
            read_each_ns,
        });
    }
    let report = Report {
        program: relay_common::names::XDP_PROGRAM,
        payload: args.payload,
        capacity: fast_path.capacity(),
        points,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
