//! The kernel path where users run it: every interface with the kernel's default settings, no
//! helper programs on far ends, and `xturnd` with no `--dataplane` flag (auto). Needs root.
//!
//! - a plain host with forwarding off (its default), IPv4 and IPv6;
//! - a plain host with forwarding on;
//! - a Kubernetes-like pod: the relay in a pod behind a routing node, the media server (the echo
//!   peer) in another pod on the same node, forwarding on in the pods as they inherit it.
//!
//! In each, coturn's `turnutils_uclient` streams ChannelData with 0 loss, the kernel's counters
//! account for every ChannelData datagram while the userspace relay counters stay at 0, STUNner's
//! listener metrics count the kernel-relayed datagrams, and two clients of the relay reach each
//! other through a kernel hairpin. In the pod, the relay runs a STUNner-shaped configuration
//! whose clusters' metrics (`stunner_cluster_packets_total`) count what the kernel relayed.
use std::net::SocketAddr;

use xturn_tests::{
    admin::{metric, metric_sum, scrape},
    clients::{PEER_PORT, hairpin_rounds, log_path, uclient, xturnd_args},
    netns::ChildGuard,
    topology::{
        LISTENER_V4, LISTENER_V6, PEER_V4, PEER_V6, POD_PEER_V4, POD_V4, RELAY_V4, RELAY_V6,
        Topology,
    },
};

const MESSAGES: u64 = 100;
const CLIENTS: u64 = 2;

/// xturnd with default data plane (auto) on `listeners` and `relay_ips`, metrics on the first
/// listener's address, port 9100, then `extra` flags.
fn start(
    topology: &Topology,
    name: &str,
    listeners: &[&str],
    relay_ips: &[&str],
    extra: &[&str],
) -> Relay {
    let log = log_path(name);
    let metrics = format!("{}:9100", listeners[0].rsplit_once(':').expect("port").0);
    let mut flags = vec!["--metrics-listen", metrics.as_str()];
    flags.extend_from_slice(extra);
    let args = xturnd_args(listeners, relay_ips, &flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let guard = topology.start_xturnd_logged(&args, &log);
    Relay {
        guard: Some(guard),
        log,
        metrics,
    }
}

struct Relay {
    guard: Option<ChildGuard>,
    log: std::path::PathBuf,
    metrics: String,
}

impl Relay {
    fn scrape(&self, topology: &Topology) -> String {
        scrape(&topology.relay, &self.metrics)
    }

    /// Stops xturnd; returns its log.
    fn stop(mut self) -> String {
        if let Some(guard) = self.guard.take() {
            let _ = guard.terminate();
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        log
    }
}

/// `turnutils_uclient` with channels through the relay at `server` to `peer`: 0 loss, and every
/// ChannelData datagram and every echo relayed by the TC program, none in userspace.
fn channels_relayed_in_the_kernel(
    topology: &Topology,
    relay: &Relay,
    server: &str,
    peer: &str,
    extra: &[&str],
) {
    let before = relay.scrape(topology);
    let (m, n) = (CLIENTS.to_string(), MESSAGES.to_string());
    let mut args = vec![
        "-u",
        "alice",
        "-w",
        "wonderland",
        "-e",
        peer,
        "-r",
        PEER_PORT,
        "-m",
        &m,
        "-n",
        &n,
        "-l",
        "160",
        "-z",
        "5",
    ];
    args.extend_from_slice(extra);
    let totals = uclient(topology, &args, server);
    let after = relay.scrape(topology);
    let delta = |name: &str, labels: &[&str]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    let context = format!("uclient {totals:?} to {peer} via {server}\nmetrics:\n{after}");
    assert_eq!(totals.sent, CLIENTS * MESSAGES, "{context}");
    assert_eq!(totals.lost, 0, "ChannelData lost:\n{context}");
    assert_eq!(totals.received, totals.sent, "{context}");
    assert!(
        after.contains("xturn_dataplane_info{mode=\"tc\"} 1"),
        "auto chose TC on veths:\n{context}"
    );
    assert_eq!(
        delta("xturn_tc_packets_total", &["reason=\"relayed_to_peer\""]),
        CLIENTS * MESSAGES,
        "every ChannelData datagram relayed in the kernel:\n{context}"
    );
    assert_eq!(
        delta("xturn_tc_packets_total", &["reason=\"relayed_to_client\""]),
        CLIENTS * MESSAGES,
        "every echo relayed in the kernel:\n{context}"
    );
    assert_eq!(
        delta("xturn_relayed_packets_total", &["dataplane=\"userspace\""]),
        0,
        "nothing relayed in userspace:\n{context}"
    );
    // STUNner's listener metrics count the ChannelData the kernel relayed (and the STUN
    // messages the listener's sockets saw).
    for direction in ["direction=\"rx\"", "direction=\"tx\""] {
        assert!(
            delta("stunner_listener_packets_total", &[direction]) >= CLIENTS * MESSAGES,
            "{direction}: kernel-relayed ChannelData at the listener:\n{context}"
        );
        assert!(
            delta("stunner_listener_bytes_total", &[direction]) >= CLIENTS * MESSAGES * (160 + 4),
            "{direction}: kernel-relayed ChannelData bytes at the listener:\n{context}"
        );
    }
}

/// A STUNner-shaped configuration for the pod: its listener named as STUNner's operator names
/// it, routed to the media server pods' network (a prefix) and, for the hairpin, to the relay's
/// own relayed ports (STUNner's `IP:<min-max>`). Credentials and the rest come from the flags.
fn pod_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"{{
  "version": "v1",
  "admin": {{"name": "stunner/udp-gateway"}},
  "listeners": [{{
    "name": "{POD_LISTENER}",
    "protocol": "TURN-UDP",
    "address": "{POD_V4}",
    "port": 3478,
    "routes": ["{MEDIA_CLUSTER}", "stunner/hairpin"]
  }}],
  "clusters": [
    {{"name": "{MEDIA_CLUSTER}", "type": "STATIC", "protocol": "udp", "endpoints": ["198.18.30.0/24"]}},
    {{"name": "stunner/hairpin", "type": "STATIC", "protocol": "udp", "endpoints": ["{POD_V4}:<50000-50999>"]}}
  ]
}}"#
    );
    std::fs::create_dir_all(dir).expect("config dir");
    let path = dir.join("stunnerd.conf");
    std::fs::write(&path, text).expect("write config");
    path
}

const POD_LISTENER: &str = "stunner/udp-gateway/udp-listener";
const MEDIA_CLUSTER: &str = "stunner/media-plane";

/// Two clients of the relay at `server` reach each other: 20 round trips, all in the kernel.
fn hairpin_in_the_kernel(topology: &Topology, relay: &Relay, server: SocketAddr) {
    let before = relay.scrape(topology);
    let rounds = hairpin_rounds(&topology.client, server, 20);
    let after = relay.scrape(topology);
    let hairpinned = metric_sum(
        &after,
        "xturn_tc_packets_total",
        &["reason=\"relayed_hairpin\""],
    ) - metric_sum(
        &before,
        "xturn_tc_packets_total",
        &["reason=\"relayed_hairpin\""],
    );
    assert_eq!(rounds, 20, "hairpin round trips:\n{after}");
    assert_eq!(
        hairpinned, 40,
        "both directions hairpinned in the kernel:\n{after}"
    );
    assert_eq!(
        metric_sum(
            &after,
            "xturn_relayed_packets_total",
            &["dataplane=\"userspace\""]
        ),
        0,
        "{after}"
    );
}

fn echo_peers(topology: &Topology, ips: &[&str]) -> Vec<ChildGuard> {
    ips.iter()
        .map(|ip| {
            topology
                .peer
                .spawn("turnutils_peer", &["-L", ip, "-p", PEER_PORT])
        })
        .collect()
}

#[test]
fn plain_host_with_forwarding_off_relays_in_the_kernel() {
    let topology = Topology::plain(false);
    assert_eq!(
        topology
            .relay
            .run("sysctl", &["-n", "net.ipv4.conf.all.forwarding"])
            .trim(),
        "0"
    );
    let _peers = echo_peers(&topology, &[PEER_V4, PEER_V6]);
    let relay = start(
        &topology,
        "kernel-plain-off",
        &["198.18.1.1:3478", "[2001:db8:1::1]:3478"],
        &[RELAY_V4, RELAY_V6],
        &[],
    );
    channels_relayed_in_the_kernel(&topology, &relay, LISTENER_V4, PEER_V4, &[]);
    channels_relayed_in_the_kernel(&topology, &relay, LISTENER_V6, PEER_V6, &["-x"]);
    hairpin_in_the_kernel(&topology, &relay, Topology::listener(false));
    let metrics = relay.scrape(&topology);
    for interface in ["xtr0", "xtr1"] {
        assert!(
            metrics.contains(&format!(
                "xturn_dataplane_interface_info{{interface=\"{interface}\",mode=\"tc\""
            )),
            "{metrics}"
        );
    }
    let log = relay.stop();
    assert!(log.contains("data plane chosen"), "{log}");
}

#[test]
fn plain_host_with_forwarding_on_relays_in_the_kernel() {
    let topology = Topology::plain(true);
    let _peers = echo_peers(&topology, &[PEER_V4]);
    let relay = start(
        &topology,
        "kernel-plain-on",
        &["198.18.1.1:3478"],
        &[RELAY_V4],
        &[],
    );
    channels_relayed_in_the_kernel(&topology, &relay, LISTENER_V4, PEER_V4, &[]);
    hairpin_in_the_kernel(&topology, &relay, Topology::listener(false));
    relay.stop();
}

#[test]
fn a_pod_behind_a_node_relays_in_the_kernel_to_a_media_server_on_the_node() {
    let topology = Topology::pod();
    let _peers = echo_peers(&topology, &[POD_PEER_V4]);
    let listener = format!("{POD_V4}:3478");
    let dir = std::env::temp_dir().join(format!("xturn-kernel-pod-{}", std::process::id()));
    let config = pod_config(&dir);
    let relay = start(
        &topology,
        "kernel-pod",
        &[&listener],
        &[POD_V4],
        &["--config", &config.to_string_lossy()],
    );
    let before = relay.scrape(&topology);
    channels_relayed_in_the_kernel(&topology, &relay, POD_V4, POD_PEER_V4, &[]);
    let after = relay.scrape(&topology);
    let delta = |name: &str, labels: &[&str]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    // Every ChannelData datagram to the media server, and every echo, counted for its cluster
    // and its listener, by STUNner's names.
    let to_peer = delta("xturn_tc_packets_total", &["reason=\"relayed_to_peer\""]);
    let to_client = delta("xturn_tc_packets_total", &["reason=\"relayed_to_client\""]);
    let cluster = format!("name=\"{MEDIA_CLUSTER}\"");
    let listener_name = format!("name=\"{POD_LISTENER}\"");
    assert_eq!(to_peer, CLIENTS * MESSAGES, "{after}");
    assert_eq!(
        delta(
            "stunner_cluster_packets_total",
            &[&cluster, "direction=\"tx\""]
        ),
        to_peer,
        "{after}"
    );
    assert_eq!(
        delta(
            "stunner_cluster_packets_total",
            &[&cluster, "direction=\"rx\""]
        ),
        to_client,
        "{after}"
    );
    assert_eq!(
        delta(
            "stunner_cluster_bytes_total",
            &[&cluster, "direction=\"tx\""]
        ),
        to_peer * 160,
        "{after}"
    );
    assert!(
        delta(
            "stunner_listener_packets_total",
            &[&listener_name, "direction=\"rx\""]
        ) >= to_peer,
        "{after}"
    );
    assert!(
        delta(
            "stunner_listener_packets_total",
            &[&listener_name, "direction=\"tx\""]
        ) >= to_client,
        "{after}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    hairpin_in_the_kernel(&topology, &relay, listener.parse().expect("listener"));
    let metrics = relay.scrape(&topology);
    assert_eq!(
        metric(
            &metrics,
            "xturn_dataplane_interface_info{interface=\"eth0\",mode=\"tc\",why=\"a veth: frames sent from XDP reach its far end only if that end runs XDP, which this agent does not control\"}"
        ),
        1
    );
    relay.stop();
}

/// Never a blackhole: XDP relays on a tuned veth testbed until the far ends lose what made XDP
/// frames deliverable there (their XDP programs and GRO, as when someone else's tooling resets
/// a node's veths). The agent sees its egress drop what the kernel relays, withdraws the kernel
/// path (log, `xturn_dataplane_withdrawn`), and the same channel is relayed from userspace with
/// no loss.
#[test]
fn a_kernel_path_that_stops_delivering_is_withdrawn_to_userspace() {
    use std::time::{Duration, Instant};

    use xturn_tests::clients::block_on;

    const CHANNEL: u16 = 0x4000;
    let topology = Topology::new();
    let pass = topology.prepare_for_xdp();
    let _peers = echo_peers(&topology, &[PEER_V4]);
    let log = log_path("kernel-withdraw");
    let metrics = "198.18.1.1:9100";
    let args = xturnd_args(
        &["198.18.1.1:3478"],
        &[RELAY_V4],
        &["--dataplane", "xdp", "--metrics-listen", metrics],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let guard = topology.start_xturnd_logged(&args, &log);
    let relay = Relay {
        guard: Some(guard),
        log,
        metrics: metrics.to_owned(),
    };
    let server = Topology::listener(false);
    let peer: SocketAddr = format!("{PEER_V4}:{PEER_PORT}").parse().expect("peer");
    let withdrawn = |text: &str| text.contains("xturn_dataplane_withdrawn{hook=\"xdp\"} 1");

    let mut pass = Some(pass);
    let (before, during, after) = topology.client.within(|| {
        block_on(async {
            let mut client = xturn_tests::clients::bound_client(server, peer, CHANNEL).await;
            let mut before = 0;
            for i in 0..50u32 {
                client
                    .send_channel(CHANNEL, &i.to_be_bytes())
                    .await
                    .expect("send");
                if client
                    .recv_timeout(Duration::from_millis(200))
                    .await
                    .is_ok()
                {
                    before += 1;
                }
            }
            // The far ends lose their XDP programs and GRO: XDP frames into them are dropped.
            drop(pass.take());
            for (ns, ifname) in [(&topology.client, "xtc0"), (&topology.peer, "xtp0")] {
                ns.run("ethtool", &["-K", ifname, "gro", "off"]);
            }
            // Traffic while the path blackholes, until the agent withdraws it (at most 15 s).
            let broken = Instant::now();
            let deadline = broken + Duration::from_secs(15);
            let mut during = 0u32;
            let mut sent = 0u32;
            while Instant::now() < deadline {
                client.send_channel(CHANNEL, b"during").await.expect("send");
                sent += 1;
                if client.recv_timeout(Duration::from_millis(10)).await.is_ok() {
                    during += 1;
                }
                if sent.is_multiple_of(20) && withdrawn(&relay.scrape(&topology)) {
                    break;
                }
            }
            eprintln!(
                "withdrawn {:?} after the far ends broke; {during} of {sent} echoed meanwhile",
                broken.elapsed()
            );
            while client
                .recv_timeout(Duration::from_millis(100))
                .await
                .is_ok()
            {}
            // After the switch: every datagram on the same channel comes back.
            let mut after = 0;
            for i in 0..100u32 {
                client
                    .send_channel(CHANNEL, &i.to_be_bytes())
                    .await
                    .expect("send");
                if client
                    .recv_timeout(Duration::from_millis(500))
                    .await
                    .is_ok()
                {
                    after += 1;
                }
            }
            (before, during, after)
        })
    });
    let text = relay.scrape(&topology);
    let log = relay.stop();
    let context = format!("before {before}, during {during}, after {after}\n{text}\n{log}");
    assert_eq!(
        before, 50,
        "the XDP path relayed while it delivered:\n{context}"
    );
    assert!(withdrawn(&text), "withdrawn:\n{context}");
    assert!(
        log.contains("kernel path withdrawn"),
        "the withdrawal is logged:\n{context}"
    );
    assert!(
        text.contains("xturn_dataplane_info{mode=\"userspace\"} 1"),
        "{context}"
    );
    assert_eq!(after, 100, "no loss after the switch:\n{context}");
    assert!(
        metric(
            &text,
            "xturn_relayed_packets_total{direction=\"to_peer\",dataplane=\"userspace\"}"
        ) >= 100,
        "relayed from userspace after the switch:\n{context}"
    );
}
