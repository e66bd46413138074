//! Operating xturnd end to end, in network namespaces: Prometheus metrics after known traffic
//! (userspace and XDP), health checks, graceful drain on SIGTERM, JSON logs and changing the
//! log level at run time. Needs root.
//!
//! The admin endpoints listen on the relay's listener address (198.18.1.1) in the relay
//! namespace; the tests query them from there, as a kubelet or Prometheus on the node would.
use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use turn_proto::client::message::{Request, TransactionId, build_request, build_send_indication};
use xturn_tests::{
    admin::{self, http, metric},
    clients::block_on,
    netns::{ChildGuard, NetNs},
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology},
};
use xturnctl::{AllocateOptions, ClientCredentials, TurnClient, Via};

const PEER_PORT: u16 = 3480;
const METRICS: &str = "198.18.1.1:9100";
const HEALTH: &str = "198.18.1.1:9101";

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xturn-{}-ops-{name}.log", std::process::id()))
}

fn server() -> SocketAddr {
    format!("{LISTENER_V4}:3478").parse().expect("server")
}

fn peer() -> SocketAddr {
    format!("{PEER_V4}:{PEER_PORT}").parse().expect("peer")
}

/// Starts xturnd on the IPv4 listener with `extra` flags, its output in `log`.
fn start(topology: &Topology, log: &Path, extra: &[&str]) -> ChildGuard {
    let mut args = vec![
        "--listen",
        "198.18.1.1:3478",
        "--relay-ip",
        RELAY_V4,
        "--realm",
        "xturn.test",
        "--user",
        "alice:wonderland",
        "--min-port",
        "50000",
        "--max-port",
        "50999",
        "--threads",
        "2",
    ];
    if !extra.contains(&"--log-level") {
        args.extend_from_slice(&["--log-level", "info"]);
    }
    args.extend_from_slice(extra);
    topology.start_xturnd_logged(&args, log)
}

/// A UDP echo server in the peer namespace, stopped (and joined) on drop.
struct EchoPeer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoPeer {
    fn start(ns: &NetNs) -> EchoPeer {
        let name = ns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            enter(&name);
            let socket = UdpSocket::bind(peer()).expect("bind the echo peer");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let _ = ready_tx.send(());
            // Bounded: the test stops it, and it gives up after two minutes regardless.
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo peer started");
        EchoPeer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread into the namespace called `name`.
fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

fn scrape(topology: &Topology, at: &str) -> String {
    admin::scrape(&topology.relay, at)
}

/// Runs the future `f` makes on a tokio runtime, on a thread in the client namespace.
fn in_client<T: Send, F: std::future::Future<Output = T>>(
    topology: &Topology,
    f: impl FnOnce() -> F + Send,
) -> T {
    topology.client.within(|| block_on(f()))
}

async fn connect() -> TurnClient {
    TurnClient::connect(server(), ClientCredentials::new("alice", "wonderland"))
        .await
        .expect("connect")
}

/// Sends `count` ChannelData datagrams of `size` bytes on `channel` and waits for each echo;
/// returns how many came back.
async fn echo_channel(client: &mut TurnClient, channel: u16, count: usize, size: usize) -> usize {
    let mut echoed = 0;
    for i in 0..count {
        let data = vec![u8::try_from(i % 256).unwrap_or(0); size];
        client.send_channel(channel, &data).await.expect("send");
        match client.recv_timeout(Duration::from_secs(2)).await {
            Ok(r) if r.via == Via::Channel(channel) && r.data == data => echoed += 1,
            other => eprintln!("datagram {i}: {other:?}"),
        }
    }
    echoed
}

/// Sends a signal to the child.
fn signal(relay: &mut ChildGuard, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(relay.child().id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal xturnd");
}

/// Waits up to `within` for the child to exit.
fn wait_exit(relay: &mut ChildGuard, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = relay.child().try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Polls `/ready` until it answers `status` (at most 5 s).
fn wait_ready_status(topology: &Topology, at: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (got, body) = http(&topology.relay, at, "GET", "/ready", "");
        if got == status || Instant::now() > deadline {
            assert_eq!(got, status, "/ready: {body}");
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(log: &Path) -> String {
    let text = std::fs::read_to_string(log).expect("read xturnd log");
    let _ = std::fs::remove_file(log);
    text
}

#[test]
fn userspace_metrics_count_relayed_traffic() {
    let topology = Topology::new();
    let _peer = EchoPeer::start(&topology.peer);
    let log = log_path("userspace");
    // Metrics and health on one address: one server answers both.
    let mut relay = start(
        &topology,
        &log,
        &[
            "--dataplane",
            "userspace",
            "--metrics",
            METRICS,
            "--health-listen",
            METRICS,
        ],
    );
    assert_eq!(http(&topology.relay, METRICS, "GET", "/ready", "").0, 200);
    assert_eq!(http(&topology.relay, METRICS, "GET", "/live", "").0, 200);
    let before = scrape(&topology, METRICS);
    assert_eq!(metric(&before, "stunner_allocations_active"), 0);
    assert_eq!(
        metric(&before, "xturn_dataplane_info{mode=\"userspace\"}"),
        1
    );
    assert!(!before.contains("xturn_xdp_"), "{before}");

    const N: usize = 10;
    const SIZE: usize = 100; // a multiple of 4: no ChannelData padding either way
    const IND_SIZE: usize = 48;
    let topo = &topology;
    let (echoed, indications, after_traffic, after_second, after_delete) =
        in_client(&topology, move || async move {
            {
                let mut a = connect().await;
                a.allocate(AllocateOptions::default())
                    .await
                    .expect("allocate a");
                a.channel_bind(peer(), 0x4000).await.expect("bind");
                let echoed = echo_channel(&mut a, 0x4000, N, SIZE).await;
                let mut indications = 0;
                for _ in 0..5 {
                    a.send_indication(peer(), &[7; IND_SIZE])
                        .await
                        .expect("send indication");
                    // The channel to the peer exists: its echoes come back as ChannelData.
                    if a.recv_timeout(Duration::from_secs(2)).await.is_ok() {
                        indications += 1;
                    }
                }
                let after_traffic = scrape(topo, METRICS);
                let mut b = connect().await;
                b.allocate(AllocateOptions::default())
                    .await
                    .expect("allocate b");
                let after_second = scrape(topo, METRICS);
                b.delete().await.expect("delete b");
                a.delete().await.expect("delete a");
                let after_delete = scrape(topo, METRICS);
                (
                    echoed,
                    indications,
                    after_traffic,
                    after_second,
                    after_delete,
                )
            }
        });
    assert_eq!((echoed, indications), (N, 5));

    let m = &after_traffic;
    assert_eq!(metric(m, "stunner_allocations_active"), 1);
    assert_eq!(metric(m, "stunner_connections_total"), 1);
    // Received: each ChannelData (4 + 100) and each Send indication whole from the client; each
    // echo (100 or 48 bytes) from the peer. Sent: the data to the peer, the ChannelData (4 +
    // data) to the client.
    let send_indication =
        build_send_indication(peer(), &[7; IND_SIZE], TransactionId::new([0; 12]))
            .expect("encode")
            .len();
    let received = N * (4 + SIZE) + N * SIZE + 5 * send_indication + 5 * IND_SIZE;
    let sent = N * SIZE + N * (4 + SIZE) + 5 * IND_SIZE + 5 * (4 + IND_SIZE);
    assert_eq!(metric(m, "stunner_bytes_received_total"), received as u64);
    assert_eq!(metric(m, "stunner_bytes_sent_total"), sent as u64);
    assert_eq!(
        metric(
            m,
            "xturn_relayed_packets_total{direction=\"to_peer\",dataplane=\"userspace\"}"
        ),
        (N + 5) as u64
    );
    assert_eq!(
        metric(
            m,
            "xturn_relayed_data_bytes_total{direction=\"to_client\",dataplane=\"userspace\"}"
        ),
        (N * SIZE + 5 * IND_SIZE) as u64
    );
    // No routes: all of it counts for no cluster (cluster="").
    assert_eq!(
        metric(
            m,
            "xturn_cluster_packets_total{cluster=\"\",direction=\"to_peer\"}"
        ),
        (N + 5) as u64
    );
    assert_eq!(
        metric(
            m,
            "xturn_cluster_bytes_total{cluster=\"\",direction=\"to_client\"}"
        ),
        (N * SIZE + 5 * IND_SIZE) as u64
    );
    assert_eq!(metric(m, "xturn_channels_active"), 1);
    assert_eq!(metric(m, "xturn_channels_bound_total"), 1);
    assert_eq!(metric(m, "xturn_permissions_active"), 1);
    assert_eq!(metric(m, "xturn_send_indications_total"), 5);
    assert_eq!(
        metric(m, "xturn_relay_socket_packets_total{direction=\"rx\"}"),
        (N + 5) as u64
    );
    // The listener's sockets carried the requests and the relayed data both ways.
    let rx = "xturn_listener_packets_total{listener=\"udp-0\",direction=\"rx\"}";
    assert!(metric(m, rx) >= (N + 5 + 3) as u64, "{m}");
    assert!(metric(m, "xturn_error_responses_total{code=\"401\"}") >= 1);

    assert_eq!(metric(&after_second, "stunner_allocations_active"), 2);
    assert_eq!(metric(&after_second, "stunner_connections_total"), 2);
    assert_eq!(metric(&after_delete, "stunner_allocations_active"), 0);
    assert_eq!(metric(&after_delete, "stunner_connections_total"), 2);
    assert_eq!(
        metric(
            &after_delete,
            "xturn_allocations_ended_total{reason=\"deleted\"}"
        ),
        2
    );

    // Unknown paths and methods.
    assert_eq!(http(&topology.relay, METRICS, "GET", "/nope", "").0, 404);
    assert_eq!(
        http(&topology.relay, METRICS, "POST", "/metrics", "").0,
        405
    );

    signal(&mut relay, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut relay, Duration::from_secs(5));
    let text = read_log(&log);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
}

/// Bursts of ChannelData through the userspace relay, whose listener reads them a batch at a
/// time and sends each run of equal sizes to the peer as one UDP GSO send (and the peer's echoes
/// back to the client the same way): with the relay's interfaces at kernel defaults, and again
/// with their TX checksum offload off (an egress where the kernel may refuse GSO; the relay then
/// sends datagram by datagram). Every datagram arrives both ways, counted once.
#[test]
fn userspace_bursts_arrive_whole_with_and_without_checksum_offload() {
    const BURSTS: usize = 8;
    const PER_BURST: usize = 32;
    const SIZE: usize = 200;
    for offload in ["on", "off"] {
        let topology = Topology::new();
        for dev in ["xtr0", "xtr1"] {
            topology.relay.run("ethtool", &["-K", dev, "tx", offload]);
        }
        let _peer = EchoPeer::start(&topology.peer);
        let log = log_path(&format!("bursts-{offload}"));
        let _relay = start(
            &topology,
            &log,
            &["--dataplane", "userspace", "--metrics", METRICS],
        );
        let echoed = in_client(&topology, || async {
            let mut client = connect().await;
            client
                .allocate(AllocateOptions::default())
                .await
                .expect("allocate");
            client.channel_bind(peer(), 0x4000).await.expect("bind");
            let mut echoed = 0;
            for burst in 0..BURSTS {
                for i in 0..PER_BURST {
                    let data = [u8::try_from(i).unwrap_or(0); SIZE];
                    client.send_channel(0x4000, &data).await.expect("send");
                }
                for _ in 0..PER_BURST {
                    match client.recv_timeout(Duration::from_secs(2)).await {
                        Ok(r) if r.via == Via::Channel(0x4000) && r.data.len() == SIZE => {
                            echoed += 1;
                        }
                        other => {
                            eprintln!("burst {burst}: {other:?}");
                            break;
                        }
                    }
                }
            }
            echoed
        });
        let total = BURSTS * PER_BURST;
        assert_eq!(
            echoed, total,
            "TX checksum offload {offload}: every echo back"
        );
        let m = scrape(&topology, METRICS);
        for direction in ["to_peer", "to_client"] {
            assert_eq!(
                metric(
                    &m,
                    &format!(
                        "xturn_relayed_packets_total{{direction=\"{direction}\",dataplane=\"userspace\"}}"
                    )
                ),
                total as u64,
                "{direction}, TX checksum offload {offload}"
            );
        }
        let gso = metric(&m, "xturn_userspace_gso");
        eprintln!("TX checksum offload {offload}: xturn_userspace_gso {gso}");
        if offload == "on" {
            assert_eq!(gso, 1, "GSO works on a veth with kernel defaults");
        }
    }
}

#[test]
fn xdp_metrics_count_kernel_relayed_traffic() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peer = EchoPeer::start(&topology.peer);
    let log = log_path("xdp");
    // Metrics and health on separate servers.
    let mut relay = start(
        &topology,
        &log,
        &[
            "--dataplane",
            "xdp",
            "--metrics-listen",
            METRICS,
            "--health-listen",
            HEALTH,
            "--xdp-max-channels",
            "4096",
        ],
    );
    assert_eq!(http(&topology.relay, HEALTH, "GET", "/ready", "").0, 200);
    assert_eq!(http(&topology.relay, HEALTH, "GET", "/metrics", "").0, 404);
    assert_eq!(http(&topology.relay, METRICS, "GET", "/ready", "").0, 404);

    const N: usize = 20;
    const SIZE: usize = 200;
    let topo = &topology;
    let (echoed, live, after_delete) = in_client(&topology, move || async move {
        {
            let mut a = connect().await;
            a.allocate(AllocateOptions::default())
                .await
                .expect("allocate");
            a.channel_bind(peer(), 0x4000).await.expect("bind");
            let echoed = echo_channel(&mut a, 0x4000, N, SIZE).await;
            let live = scrape(topo, METRICS);
            // Deleting the allocation removes the binding's map entries: what they counted
            // must stay in the totals.
            a.delete().await.expect("delete");
            let after_delete = scrape(topo, METRICS);
            (echoed, live, after_delete)
        }
    });
    assert_eq!(echoed, N);

    let m = &live;
    assert_eq!(metric(m, "xturn_dataplane_info{mode=\"xdp\"}"), 1);
    assert_eq!(
        metric(m, "xturn_xdp_packets_total{reason=\"relayed_to_peer\"}"),
        N as u64
    );
    assert_eq!(
        metric(m, "xturn_xdp_packets_total{reason=\"relayed_to_client\"}"),
        N as u64
    );
    assert_eq!(metric(m, "xturn_xdp_packets_total{reason=\"no_route\"}"), 0);
    // Frame bytes: Ethernet 14 + IPv4 20 + UDP 8 + ChannelData 4 + data, and without the
    // ChannelData header from the peer.
    assert_eq!(
        metric(m, "xturn_xdp_bytes_total{reason=\"relayed_to_peer\"}"),
        (N * (14 + 20 + 8 + 4 + SIZE)) as u64
    );
    assert_eq!(
        metric(m, "xturn_xdp_bytes_total{reason=\"relayed_to_client\"}"),
        (N * (14 + 20 + 8 + SIZE)) as u64
    );
    assert_eq!(metric(m, "xturn_xdp_bindings_installed"), 1);
    assert_eq!(metric(m, "xturn_xdp_bindings_capacity"), 4096);
    assert_eq!(metric(m, "xturn_xdp_binding_installs_total"), 1);
    assert_eq!(
        metric(
            m,
            "xturn_relayed_packets_total{direction=\"to_peer\",dataplane=\"xdp\"}"
        ),
        N as u64
    );
    assert_eq!(
        metric(
            m,
            "xturn_relayed_packets_total{direction=\"to_peer\",dataplane=\"userspace\"}"
        ),
        0
    );
    // Kernel traffic counts per cluster too: no routes, so cluster="".
    assert_eq!(
        metric(
            m,
            "xturn_cluster_packets_total{cluster=\"\",direction=\"to_client\"}"
        ),
        N as u64
    );
    assert_eq!(
        metric(
            m,
            "xturn_cluster_bytes_total{cluster=\"\",direction=\"to_peer\"}"
        ),
        (N * SIZE) as u64
    );
    assert_eq!(metric(m, "stunner_allocations_active"), 1);
    assert_eq!(metric(m, "stunner_connections_total"), 1);
    // All of it in the kernel: ChannelData (4 + data) in and data out each way.
    let both = (N * (4 + SIZE) + N * SIZE) as u64;
    assert_eq!(metric(m, "stunner_bytes_received_total"), both);
    assert_eq!(metric(m, "stunner_bytes_sent_total"), both);

    let m = &after_delete;
    assert_eq!(metric(m, "stunner_allocations_active"), 0);
    assert_eq!(metric(m, "xturn_xdp_bindings_installed"), 0);
    assert_eq!(metric(m, "stunner_bytes_received_total"), both);
    assert_eq!(metric(m, "stunner_bytes_sent_total"), both);
    // Retired bindings keep their cluster's counts.
    assert_eq!(
        metric(
            m,
            "xturn_cluster_bytes_total{cluster=\"\",direction=\"to_peer\"}"
        ),
        (N * SIZE) as u64
    );

    // A hairpin: two clients of this relay, each the other's peer. Each datagram is one
    // client → peer leg and one peer → client leg, as it would be in userspace.
    const ROUNDS: usize = 5;
    let (rounds, hairpin) = in_client(&topology, move || async move {
        let (mut a, mut b) = (connect().await, connect().await);
        let relayed_a = a
            .allocate(AllocateOptions::default())
            .await
            .expect("a")
            .relayed;
        let relayed_b = b
            .allocate(AllocateOptions::default())
            .await
            .expect("b")
            .relayed;
        a.channel_bind(relayed_b, 0x4000).await.expect("a binds b");
        b.channel_bind(relayed_a, 0x4001).await.expect("b binds a");
        let mut rounds = 0;
        for i in 0..ROUNDS {
            let data = [u8::try_from(i).unwrap_or(0); SIZE];
            a.send_channel(0x4000, &data).await.expect("a sends");
            let to_b = b.recv_timeout(Duration::from_secs(2)).await;
            b.send_channel(0x4001, &data).await.expect("b sends");
            let to_a = a.recv_timeout(Duration::from_secs(2)).await;
            if to_b.is_ok_and(|r| r.data == data) && to_a.is_ok_and(|r| r.data == data) {
                rounds += 1;
            }
        }
        let hairpin = scrape(topo, METRICS);
        a.delete().await.expect("delete a");
        b.delete().await.expect("delete b");
        (rounds, hairpin)
    });
    assert_eq!(rounds, ROUNDS);
    let m = &hairpin;
    assert_eq!(
        metric(m, "xturn_xdp_packets_total{reason=\"relayed_hairpin\"}"),
        (2 * ROUNDS) as u64
    );
    let legs = (2 * ROUNDS * (4 + SIZE + SIZE)) as u64;
    assert_eq!(metric(m, "stunner_bytes_received_total"), both + legs);
    assert_eq!(metric(m, "stunner_bytes_sent_total"), both + legs);
    assert_eq!(metric(m, "xturn_xdp_bindings_installed"), 2);

    signal(&mut relay, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut relay, Duration::from_secs(5));
    let text = read_log(&log);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
}

#[test]
fn sigterm_drains_until_the_last_allocation_is_deleted() {
    let topology = Topology::new();
    let _peer = EchoPeer::start(&topology.peer);
    let log = log_path("drain-delete");
    let mut relay = start(
        &topology,
        &log,
        &[
            "--dataplane",
            "userspace",
            "--metrics-listen",
            METRICS,
            "--health-listen",
            HEALTH,
            "--drain-timeout",
            "30",
        ],
    );
    assert_eq!(wait_ready_status(&topology, HEALTH, 200), "ready\n");

    let relay_ref = &mut relay;
    let topology_ref = &topology;
    let (refused, echoed_during_drain, draining_metric, exited) =
        in_client(&topology, move || async move {
            let (topology, relay) = (topology_ref, relay_ref);
            {
                let mut a = connect().await;
                a.allocate(AllocateOptions::default())
                    .await
                    .expect("allocate");
                a.channel_bind(peer(), 0x4000).await.expect("bind");
                assert_eq!(echo_channel(&mut a, 0x4000, 3, 64).await, 3);

                signal(relay, nix::sys::signal::Signal::SIGTERM);
                assert_eq!(wait_ready_status(topology, HEALTH, 503), "draining\n");
                assert_eq!(http(&topology.relay, HEALTH, "GET", "/live", "").0, 200);
                let draining_metric = metric(&scrape(topology, METRICS), "xturn_draining");

                // A new allocation is refused; the live one goes on relaying and refreshing.
                let mut b = connect().await;
                let refused = b
                    .allocate(AllocateOptions::default())
                    .await
                    .expect_err("no allocation while draining")
                    .code();
                let echoed = echo_channel(&mut a, 0x4000, 3, 64).await;
                a.refresh(Duration::from_secs(600)).await.expect("refresh");
                assert!(
                    wait_exit(relay, Duration::from_millis(500)).is_none(),
                    "xturnd waits for the allocation"
                );
                a.delete().await.expect("delete");
                let exited = wait_exit(relay, Duration::from_secs(3));
                (refused, echoed, draining_metric, exited)
            }
        });
    let text = read_log(&log);
    assert_eq!(refused, Some(508), "{text}");
    assert_eq!(echoed_during_drain, 3, "{text}");
    assert_eq!(draining_metric, 1);
    assert!(
        exited.is_some_and(|s| s.success()),
        "exits 0 once the allocation is deleted: {exited:?}\n{text}"
    );
    assert!(text.contains("draining"), "{text}");
    assert!(text.contains("drained: no allocation left"), "{text}");
    assert!(text.contains("userspace counters"), "{text}");
}

#[test]
fn a_drain_ends_at_its_timeout_or_at_a_second_signal() {
    let topology = Topology::new();
    let log = log_path("drain-timeout");
    // One allocation left alone: the drain lasts its full 2 s.
    let mut relay = start(
        &topology,
        &log,
        &["--dataplane", "userspace", "--drain-timeout", "2"],
    );
    in_client(&topology, || async {
        let mut a = connect().await;
        a.allocate(AllocateOptions::default())
            .await
            .expect("allocate");
    });
    let start_drain = Instant::now();
    signal(&mut relay, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut relay, Duration::from_secs(2 + 2));
    let took = start_drain.elapsed();
    let text = read_log(&log);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
    assert!(
        took >= Duration::from_millis(1800),
        "waited for the timeout: {took:?}"
    );
    assert!(text.contains("drain timeout passed"), "{text}");

    // A second signal cuts a long drain short.
    let log = log_path("drain-second");
    let mut relay = start(
        &topology,
        &log,
        &["--dataplane", "userspace", "--drain-timeout", "60"],
    );
    in_client(&topology, || async {
        let mut a = connect().await;
        a.allocate(AllocateOptions::default())
            .await
            .expect("allocate");
    });
    signal(&mut relay, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        relay.child().try_wait().ok().flatten().is_none(),
        "draining"
    );
    let second = Instant::now();
    signal(&mut relay, nix::sys::signal::Signal::SIGINT);
    let status = wait_exit(&mut relay, Duration::from_secs(2));
    let text = read_log(&log);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
    assert!(second.elapsed() < Duration::from_secs(2));
    assert!(text.contains("second signal"), "{text}");
}

#[test]
fn json_logs_and_a_log_level_changed_at_run_time() {
    let topology = Topology::new();
    let log = log_path("json");
    let mut relay = start(
        &topology,
        &log,
        &[
            "--dataplane",
            "userspace",
            "--metrics-listen",
            METRICS,
            "--health-listen",
            METRICS,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
    );
    // At info, admin requests are not logged (they are at debug).
    assert_eq!(http(&topology.relay, METRICS, "GET", "/ready", "").0, 200);
    assert_eq!(
        http(&topology.relay, METRICS, "GET", "/log-level", ""),
        (200, "info\n".to_owned())
    );
    let (status, body) = http(
        &topology.relay,
        METRICS,
        "PUT",
        "/log-level",
        "not[a filter",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(&topology.relay, METRICS, "PUT", "/log-level", "debug");
    assert_eq!((status, body.as_str()), (200, "debug\n"));
    assert_eq!(http(&topology.relay, METRICS, "GET", "/live", "").0, 200);
    assert_eq!(
        http(&topology.relay, METRICS, "PUT", "/log-level", "warn\n").0,
        200
    );
    assert_eq!(http(&topology.relay, METRICS, "GET", "/ready", "").0, 200);

    signal(&mut relay, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut relay, Duration::from_secs(5));
    let text = read_log(&log);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");

    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    let requests: Vec<String> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "admin request")
        .map(|l| {
            assert_eq!(l["level"], "DEBUG", "{l}");
            l["fields"]["path"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    // Only the requests answered while the filter said debug: the change to debug itself (its
    // log line comes after the change) and /live; the change to warn is answered at warn.
    assert_eq!(requests, ["/log-level", "/live"], "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "xturnd ready" && l["level"] == "INFO"),
        "{text}"
    );
}

/// A flood of unauthenticated Allocates from one source (as a spoofer would aim them at that
/// address) gets back no more bytes than it sent, beyond the burst; the metrics count what was
/// held back; and a real client at that address still gets its allocation once the flood
/// stops. Kernel defaults on every interface.
#[test]
fn an_unauthenticated_flood_gets_back_no_more_than_it_sent() {
    const REQUESTS: usize = 5000;
    let topology = Topology::plain(false);
    let log = log_path("reflection");
    let _relay = start(&topology, &log, &["--metrics", METRICS]);
    let (asked, answered, elapsed) = topology.client.within(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.connect(server()).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let request = Request::Allocate(AllocateOptions::default());
        let started = Instant::now();
        let (mut asked, mut answered) = (0, 0);
        let mut buf = [0u8; 1500];
        for i in 0..REQUESTS {
            let tid = TransactionId::new(rand_tid(i));
            let bytes = build_request(&request, tid, None, None).expect("request");
            asked += socket.send(&bytes).expect("send");
            // Paced at about 5 000 per second; answers read as they come.
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(10));
                while let Ok(n) = recv_now(&socket, &mut buf) {
                    answered += n;
                }
            }
        }
        while let Ok(n) = socket.recv(&mut buf) {
            answered += n;
        }
        (asked, answered, started.elapsed())
    });
    // The default budget: 8 KiB of burst, 1 KiB/s of refill, and what was sent.
    let bound = asked + 8 * 1024 + 1024 * (elapsed.as_secs() as usize + 1);
    assert_eq!(asked, REQUESTS * 36, "36-byte Allocates");
    assert!(
        answered <= bound,
        "{answered} B answered for {asked} B asked in {elapsed:?}"
    );
    let m = scrape(&topology, METRICS);
    let limited = metric(
        &m,
        "xturn_unauthenticated_answers_total{outcome=\"limited\"}",
    );
    let sent_bytes = metric(
        &m,
        "xturn_unauthenticated_answer_bytes_total{outcome=\"sent\"}",
    );
    assert!(limited > 0, "{m}");
    // What the relay counts as sent bounds what arrived (UDP may lose some).
    assert!(
        answered <= sent_bytes as usize && sent_bytes as usize <= bound,
        "{sent_bytes} B counted, {answered} B arrived, {bound} B allowed"
    );
    eprintln!(
        "reflection: {answered} B answered for {asked} B asked ({:.2}x) in {elapsed:?}; {limited} answers held back",
        answered as f64 / asked as f64
    );
    // A client at the flooded address: its first Allocate's 401 may wait for the refill (it
    // retransmits), then it authenticates as usual.
    let allocated = in_client(&topology, || async {
        let mut client = connect().await;
        client.allocate(AllocateOptions::default()).await.is_ok()
    });
    assert!(allocated, "{}", read_log(&log));
}

/// A transaction id unique to request `i`.
fn rand_tid(i: usize) -> [u8; 12] {
    let mut tid = [0x5a; 12];
    tid[4..].copy_from_slice(&(i as u64).to_be_bytes());
    tid
}

/// A datagram already waiting on `socket`, without waiting.
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    socket.set_nonblocking(true)?;
    let n = socket.recv(buf);
    socket.set_nonblocking(false)?;
    n
}
