//! Hitless restart: `xturnd --state-dir S --bpf-pin-dir P` is killed with SIGKILL in the middle
//! of an offloaded ChannelData stream and started again. The pinned XDP program and maps relay
//! on while it is down, so no datagram is lost; the new agent adopts the allocation, which can
//! then be refreshed and deleted; after the delete the kernel relays no more. Needs root.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use xturn_tests::{
    admin::{metric, metric_sum, scrape},
    clients::{block_on, log_path, start_echo_peers, uclient_command, uclient_totals},
    netns::ChildGuard,
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology},
};
use xturnctl::Via;

const PEER_PORT: &str = "3480";
const CHANNEL: u16 = 0x4000;
/// The stream: this many datagrams, one every `INTERVAL`.
const COUNT: u32 = 1000;
const INTERVAL: Duration = Duration::from_millis(5);
/// When xturnd is killed, after the stream starts.
const KILL_AFTER: Duration = Duration::from_millis(1500);

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("xturn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private bpffs mounted on a scratch directory; unmounted and removed on drop (also when
/// the test fails).
struct BpfMount(TempDir);

impl BpfMount {
    fn new(name: &str) -> BpfMount {
        let dir = TempDir::new(&format!("bpffs-{name}"));
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t bpf failed: {status}");
        BpfMount(dir)
    }

    fn path(&self) -> &Path {
        &self.0.0
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

fn payload(seq: u32) -> Vec<u8> {
    let mut data = seq.to_be_bytes().to_vec();
    data.extend((0..96u32).map(|i| (seq.wrapping_mul(31).wrapping_add(i) & 0xff) as u8));
    data
}

#[test]
fn a_killed_agent_restarts_without_losing_offloaded_packets() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peer = topology
        .peer
        .spawn("turnutils_peer", &["-L", PEER_V4, "-p", PEER_PORT]);
    let bpffs = BpfMount::new("sdk");
    let state = TempDir::new("state");
    // A directory that does not exist yet, as the operator names one per pod: xturnd makes it,
    // and a clean stop removes it with the pins.
    let pin_dir = bpffs.path().join("pod-0b7d").to_string_lossy().into_owned();
    let state_dir = state.0.to_string_lossy().into_owned();
    let args = xturn_tests::clients::xturnd_args(
        &["198.18.1.1:3478"],
        &[RELAY_V4],
        &[
            "--dataplane",
            "xdp",
            "--state-dir",
            &state_dir,
            "--bpf-pin-dir",
            &pin_dir,
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (log1, log2) = (log_path("restart-1"), log_path("restart-2"));
    let first = topology.start_xturnd_logged(&args, &log1);

    let peer: SocketAddr = format!("{PEER_V4}:{PEER_PORT}").parse().expect("peer");
    let server: SocketAddr = format!("{LISTENER_V4}:3478").parse().expect("server");
    let (bound_tx, bound_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();

    let (second, outcome) = std::thread::scope(|s| {
        // Kills the agent (SIGKILL: ChildGuard's drop) mid-stream and starts it again.
        let restarter = s.spawn(|| {
            let bound_rx = bound_rx;
            bound_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the client bound its channel");
            std::thread::sleep(KILL_AFTER);
            drop(first);
            let second: ChildGuard = topology.start_xturnd_logged(&args, &log2);
            let _ = ready_tx.send(());
            second
        });
        let outcome = topology.client.within(|| {
            let ready_rx = ready_rx;
            block_on(async {
                let mut client = xturn_tests::clients::bound_client(server, peer, CHANNEL).await;
                // Wait for the offload: the first echo.
                let mut warm = false;
                for _ in 0..20 {
                    client
                        .send_channel(CHANNEL, b"warm-up")
                        .await
                        .expect("send");
                    if client
                        .recv_timeout(Duration::from_millis(200))
                        .await
                        .is_ok()
                    {
                        warm = true;
                        break;
                    }
                }
                assert!(warm, "no echo before the stream");
                tokio::time::sleep(Duration::from_millis(200)).await;
                while client.recv_timeout(Duration::from_millis(50)).await.is_ok() {}
                let _ = bound_tx.send(());

                let mut received = BTreeSet::new();
                let mut corrupt = 0u32;
                let start = Instant::now();
                let stream_end = start + INTERVAL * COUNT + Duration::from_millis(1000);
                let mut next = 0u32;
                while Instant::now() < stream_end {
                    let due = start + INTERVAL * next;
                    if next < COUNT && Instant::now() >= due {
                        client
                            .send_channel(CHANNEL, &payload(next))
                            .await
                            .expect("send");
                        next += 1;
                        continue;
                    }
                    let wake = if next < COUNT { due } else { stream_end };
                    let wait = wake.saturating_duration_since(Instant::now());
                    if let Ok(r) = client
                        .recv_timeout(wait.max(Duration::from_millis(1)))
                        .await
                    {
                        let seq = r
                            .data
                            .get(..4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        match seq {
                            Some(seq)
                                if r.via == Via::Channel(CHANNEL) && r.data == payload(seq) =>
                            {
                                received.insert(seq);
                            }
                            _ => corrupt += 1,
                        }
                    }
                }

                ready_rx
                    .recv_timeout(Duration::from_secs(15))
                    .expect("xturnd restarted");
                let refreshed = client.refresh(Duration::from_secs(300)).await;
                let deleted = client.delete().await;
                // After the delete the kernel entries are gone: nothing comes back.
                let mut after_delete = 0;
                for i in 0..5u32 {
                    client
                        .send_channel(CHANNEL, &payload(COUNT + i))
                        .await
                        .expect("send");
                    if client
                        .recv_timeout(Duration::from_millis(200))
                        .await
                        .is_ok()
                    {
                        after_delete += 1;
                    }
                }
                (received, corrupt, refreshed, deleted, after_delete)
            })
        });
        let second = restarter.join().expect("restarter");
        (second, outcome)
    });
    let (received, corrupt, refreshed, deleted, after_delete) = outcome;
    let first_log = std::fs::read_to_string(&log1).unwrap_or_default();
    let out = second.terminate();
    let second_log = std::fs::read_to_string(&log2).unwrap_or_default();
    let _ = std::fs::remove_file(&log1);
    let _ = std::fs::remove_file(&log2);
    let context = format!("first xturnd:\n{first_log}\nsecond xturnd:\n{second_log}");

    let missing: Vec<u32> = (0..COUNT).filter(|s| !received.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {COUNT} echoes lost (first: {:?}):\n{context}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    assert_eq!(corrupt, 0, "corrupt echoes:\n{context}");
    let adopted = second_log
        .lines()
        .find(|l| l.contains("adopted allocations from the state file"))
        .unwrap_or_else(|| panic!("no adoption logged:\n{context}"));
    assert!(
        adopted.contains("allocations=1") && adopted.contains("channels=1"),
        "{adopted}"
    );
    assert!(
        second_log.contains("kernel program replaced in the pinned link"),
        "the second agent reused the pinned link:\n{context}"
    );
    assert!(
        refreshed.is_ok(),
        "refresh after restart: {refreshed:?}\n{context}"
    );
    assert!(
        deleted.is_ok(),
        "delete after restart: {deleted:?}\n{context}"
    );
    assert_eq!(after_delete, 0, "relayed after delete:\n{context}");
    assert!(
        out.status.success(),
        "second xturnd exits cleanly: {:?}",
        out.status
    );
    // A clean stop leaves no pin, and no pin directory, behind.
    let left: Vec<_> = std::fs::read_dir(bpffs.path())
        .expect("read pin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The kernel's own bpffs entries (BPF preload), not ours.
        .filter(|name| !name.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "pins left after SIGTERM: {left:?}");
}

/// coturn's `turnutils_uclient` picks channel numbers above 0x4FFF; before the adoption rules
/// were shared with the live server, a restarted agent refused every such allocation and
/// removed its kernel entries. Four clients stream ChannelData through the XDP path, xturnd is
/// killed with SIGKILL mid-stream and started again at once: every allocation is adopted, no
/// ChannelData is lost, and the clients' refreshes are answered by the new agent.
#[test]
fn coturn_clients_keep_every_allocation_across_a_kill() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    coturn_clients_across_a_kill(&topology, "xdp", "uclient");
}

/// The same with every setting as the kernel makes it (veths with default offloads, forwarding
/// off, no helper programs) and no `--dataplane` flag: the TC path, its TCX links pinned.
#[test]
fn coturn_clients_keep_every_allocation_across_a_kill_on_default_settings() {
    let topology = Topology::plain(false);
    coturn_clients_across_a_kill(&topology, "auto", "uclient-tc");
}

fn coturn_clients_across_a_kill(topology: &Topology, dataplane: &str, name: &str) {
    const METRICS: &str = "198.18.1.1:9100";
    const CLIENTS: u64 = 4;
    const MESSAGES: u64 = 400;
    let hook = if dataplane == "xdp" { "xdp" } else { "tc" };
    let packets = format!("xturn_{hook}_packets_total");
    let _peers = start_echo_peers(topology);
    let bpffs = BpfMount::new(name);
    let state = TempDir::new(&format!("{name}-state"));
    let pin_dir = bpffs.path().join("pod").to_string_lossy().into_owned();
    let state_dir = state.0.to_string_lossy().into_owned();
    let args = xturn_tests::clients::xturnd_args(
        &["198.18.1.1:3478"],
        &[RELAY_V4],
        &[
            "--dataplane",
            dataplane,
            "--metrics-listen",
            METRICS,
            "--state-dir",
            &state_dir,
            "--bpf-pin-dir",
            &pin_dir,
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (log1, log2) = (
        log_path(&format!("{name}-restart-1")),
        log_path(&format!("{name}-restart-2")),
    );
    let first = topology.start_xturnd_logged(&args, &log1);
    // 4 clients x 400 messages, one every 20 ms each: about 8 s of ChannelData.
    let (clients, messages) = (CLIENTS.to_string(), MESSAGES.to_string());
    let uclient = uclient_command(
        topology,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            PEER_V4,
            "-r",
            "3480",
            "-m",
            &clients,
            "-n",
            &messages,
            "-l",
            "120",
            "-z",
            "20",
        ],
        LISTENER_V4,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start turnutils_uclient");
    // Kill once the stream runs through the kernel, a second into it.
    let relayed_in_xdp = || {
        metric_sum(
            &scrape(&topology.relay, METRICS),
            &packets,
            &["reason=\"relayed_to_peer\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while relayed_in_xdp() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let before_kill = scrape(&topology.relay, METRICS);
    // The allocations made after start-up are in the journal, not in the whole snapshot the
    // agent wrote when it started: the next agent has them from there.
    let journal = std::fs::read_to_string(state.0.join("journal.jsonl")).unwrap_or_default();
    let journaled = journal
        .lines()
        .filter(|l| l.starts_with("{\"put\""))
        .count();
    drop(first);
    let second = topology.start_xturnd_logged(&args, &log2);
    let out = uclient.wait_with_output().expect("turnutils_uclient ends");
    let totals = uclient_totals(&out, "turnutils_uclient across the restart");
    let after = scrape(&topology.relay, METRICS);
    let first_log = std::fs::read_to_string(&log1).unwrap_or_default();
    let _ = second.terminate();
    let second_log = std::fs::read_to_string(&log2).unwrap_or_default();
    let _ = std::fs::remove_file(&log1);
    let _ = std::fs::remove_file(&log2);
    let context = format!(
        "uclient: {totals:?}\nfirst xturnd:\n{first_log}\nsecond xturnd:\n{second_log}\nmetrics after:\n{after}"
    );

    // The stream was under way through the kernel before the kill.
    let before = metric_sum(&before_kill, &packets, &["reason=\"relayed_to_peer\""]);
    assert!(
        before > 0,
        "nothing relayed in XDP before the kill:\n{context}"
    );
    // Every allocation adopted, none refused.
    assert!(
        !second_log.contains("allocation not adopted"),
        "an allocation was refused:\n{context}"
    );
    // turnutils_uclient makes more allocations than clients (-m): compare with what the first
    // agent had.
    let (allocations, channels) = (
        metric(&before_kill, "stunner_allocations_active"),
        metric(&before_kill, "xturn_channels_active"),
    );
    assert!(allocations >= CLIENTS && channels >= CLIENTS, "{context}");
    assert!(
        journaled >= 1,
        "no allocation in the journal before the kill:\n{journal}\n{context}"
    );
    let adopted = second_log
        .lines()
        .find(|l| l.contains("adopted allocations from the state file"))
        .unwrap_or_else(|| panic!("no adoption logged:\n{context}"));
    assert!(
        adopted.contains(&format!(
            "allocations={allocations} channels={channels} dropped=0 skipped=0"
        )),
        "{adopted}\n{context}"
    );
    assert_eq!(
        metric_sum(&after, "xturn_adoption_refused_total", &[]),
        0,
        "{context}"
    );
    // No ChannelData lost across the restart, all of it relayed in the kernel: the pinned
    // counters span both agents; the second agent relayed none of it in userspace.
    assert_eq!(totals.sent, CLIENTS * MESSAGES, "{context}");
    assert_eq!(
        totals.lost, 0,
        "ChannelData lost across the restart:\n{context}"
    );
    assert_eq!(totals.received, totals.sent, "{context}");
    assert_eq!(
        metric_sum(&after, &packets, &["reason=\"relayed_to_peer\""]),
        CLIENTS * MESSAGES,
        "{context}"
    );
    assert_eq!(
        metric_sum(&after, &packets, &["reason=\"relayed_to_client\""]),
        CLIENTS * MESSAGES,
        "{context}"
    );
    assert_eq!(
        metric(
            &after,
            "xturn_relayed_packets_total{direction=\"to_peer\",dataplane=\"userspace\"}"
        ),
        0,
        "{context}"
    );
    // The clients' refreshes reached the new agent and were answered.
    let refreshes = metric(&after, "xturn_requests_total{method=\"refresh\"}")
        + metric(&after, "xturn_requests_total{method=\"channel_bind\"}")
        + metric(&after, "xturn_requests_total{method=\"create_permission\"}");
    assert!(
        refreshes > 0,
        "no refresh reached the new agent:\n{context}"
    );
    assert_eq!(
        metric_sum(&after, "xturn_error_responses_total", &[]),
        metric(&after, "xturn_error_responses_total{code=\"401\"}"),
        "only authentication challenges may be errors:\n{context}"
    );
}

/// Maps pinned by a build with another value layout (here a `PEERS` map with the 56-byte values
/// of earlier builds) cannot serve this program: xturnd replaces them instead of failing, and
/// relays in the kernel.
#[test]
fn pinned_maps_of_another_layout_are_replaced() {
    let topology = Topology::new();
    let _pass = topology.prepare_for_xdp();
    let _peers = start_echo_peers(&topology);
    let bpffs = BpfMount::new("layout");
    let pin_dir = bpffs.path().join("pod");
    std::fs::create_dir_all(&pin_dir).expect("pin dir");
    let old = pin_dir.join("PEERS");
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old)
        .args([
            "type", "hash", "key", "36", "value", "56", "entries", "16", "name", "PEERS", "flags",
            "1",
        ])
        .status()
        .expect("run bpftool");
    assert!(status.success(), "bpftool map create: {status}");
    let pin_dir = pin_dir.to_string_lossy().into_owned();
    let log = log_path("layout");
    let args = xturn_tests::clients::xturnd_args(
        &["198.18.1.1:3478"],
        &[RELAY_V4],
        &["--dataplane", "xdp", "--bpf-pin-dir", &pin_dir],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = topology.start_xturnd_logged(&args, &log);
    let totals = xturn_tests::clients::uclient(
        &topology,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            PEER_V4,
            "-r",
            "3480",
            "-n",
            "50",
            "-m",
            "1",
            "-z",
            "5",
        ],
        LISTENER_V4,
    );
    let _ = relay.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("pinned maps unusable"), "{text}");
    assert!(text.contains("data plane: XDP"), "{text}");
    assert!(totals.sent >= 50 && totals.lost == 0, "{totals:?}\n{text}");
    let relayed: u64 = text
        .lines()
        .filter(|l| l.contains("kernel counter") && l.contains("reason=\"relayed_to_peer\""))
        .filter_map(|l| xturn_tests::clients::number_after(l, "packets="))
        .sum();
    // turnutils_uclient's totals count one session's messages; the kernel sees every session's.
    assert!(
        relayed >= totals.sent,
        "relayed in the kernel with the new maps ({relayed}):\n{text}"
    );
}
