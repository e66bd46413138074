//! Real TURN clients and peers the end-to-end tests drive, and where their output goes.
use std::path::PathBuf;

use crate::{
    netns::ChildGuard,
    topology::{LISTENER_V4, PEER_V4, PEER_V6, RELAY_V4, Topology, binary},
};

/// The UDP port of the echo peers.
pub const PEER_PORT: &str = "3480";

/// A per-process log file path for `name` in the temp directory.
pub fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xturn-{}-{name}.log", std::process::id()))
}

/// coturn's UDP echo peers (`turnutils_peer`) on both peer addresses, port [`PEER_PORT`].
pub fn start_echo_peers(topology: &Topology) -> Vec<ChildGuard> {
    [PEER_V4, PEER_V6]
        .iter()
        .map(|ip| {
            topology
                .peer
                .spawn("turnutils_peer", &["-L", ip, "-p", PEER_PORT])
        })
        .collect()
}

/// The totals `turnutils_uclient` prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UclientTotals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

/// `timeout 60 turnutils_uclient ARGS SERVER` in the client namespace, not started yet.
pub fn uclient_command(topology: &Topology, args: &[&str], server: &str) -> std::process::Command {
    let mut all = vec!["60", "turnutils_uclient"];
    all.extend_from_slice(args);
    all.push(server);
    topology.client.command("timeout", &all)
}

/// Runs `turnutils_uclient ARGS SERVER` in the client namespace (at most 60 s) and parses its
/// final totals; panics with its output if there are none.
pub fn uclient(topology: &Topology, args: &[&str], server: &str) -> UclientTotals {
    let out = uclient_command(topology, args, server)
        .output()
        .expect("run turnutils_uclient");
    uclient_totals(&out, &format!("turnutils_uclient {args:?} {server}"))
}

/// The final totals in `turnutils_uclient`'s output; panics naming `what` if there are none.
pub fn uclient_totals(out: &std::process::Output, what: &str) -> UclientTotals {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The last totals line is the whole run's (per-session lines carry "msz=").
    let last = |key: &str| {
        text.lines()
            .rev()
            .filter(|l| !l.contains("msz="))
            .find_map(|l| number_after(l, key))
            .unwrap_or_else(|| panic!("{what} gave no {key}:\n{text}"))
    };
    UclientTotals {
        sent: last("tot_send_msgs="),
        received: last("tot_recv_msgs="),
        lost: last("Total lost packets "),
    }
}

/// `timeout 30 xturnctl ping --server SERVER ARGS` in the client namespace, not started yet.
pub fn xturnctl_ping_command(
    topology: &Topology,
    server: &str,
    args: &[&str],
) -> std::process::Command {
    let xturnctl = binary("xturnctl").display().to_string();
    let mut all = vec!["30", &xturnctl, "ping", "--server", server];
    all.extend_from_slice(args);
    topology.client.command("timeout", &all)
}

/// Runs [`xturnctl_ping_command`]: whether it succeeded, and what it printed (stdout, then
/// stderr).
pub fn xturnctl_ping(topology: &Topology, server: &str, args: &[&str]) -> (bool, String) {
    let out = xturnctl_ping_command(topology, server, args)
        .output()
        .expect("run xturnctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `expected_sent` messages went out and every one came back.
pub fn assert_no_loss(what: &str, r: &UclientTotals, expected_sent: u64) {
    assert_eq!(r.sent, expected_sent, "{what}: sent");
    assert_eq!(r.received, r.sent, "{what}: every echo came back");
    assert_eq!(r.lost, 0, "{what}: Total lost packets");
}

/// The relay is still running.
pub fn assert_alive(relay: &mut ChildGuard) {
    let status = relay.child().try_wait().expect("query xturnd");
    assert!(status.is_none(), "xturnd exited: {status:?}");
}

/// The number right after `key` in `line`.
pub fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `future` to completion on a fresh single-threaded runtime (on the calling thread, so
/// inside `NetNs::within` its sockets belong to that namespace).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Two TURN clients in `ns` of the relay at `server`, each bound by a channel to the other's
/// relayed address (the common WebRTC case: both ends use the same relay), exchange up to
/// `rounds` round trips of ChannelData. Returns how many completed; panics in here are
/// avoided so the caller can collect the relay's counters whatever happens.
pub fn hairpin_rounds(ns: &crate::netns::NetNs, server: std::net::SocketAddr, rounds: u8) -> usize {
    use std::time::Duration;
    use xturnctl::{AllocateOptions, ClientCredentials, TurnClient, Via};
    ns.within(|| {
        block_on(async {
            let creds = || ClientCredentials::new("alice", "wonderland");
            let (Ok(mut a), Ok(mut b)) = (
                TurnClient::connect(server, creds()).await,
                TurnClient::connect(server, creds()).await,
            ) else {
                return 0;
            };
            let (Ok(ra), Ok(rb)) = (
                a.allocate(AllocateOptions::default()).await,
                b.allocate(AllocateOptions::default()).await,
            ) else {
                return 0;
            };
            let (relayed_a, relayed_b) = (ra.relayed, rb.relayed);
            if a.channel_bind(relayed_b, 0x4000).await.is_err()
                || b.channel_bind(relayed_a, 0x4001).await.is_err()
            {
                return 0;
            }
            let mut done = 0;
            for i in 0..rounds {
                if a.send_channel(0x4000, &[i; 100]).await.is_err() {
                    break;
                }
                match b.recv_timeout(Duration::from_secs(1)).await {
                    Ok(got)
                        if (got.peer, got.via, got.data.as_slice())
                            == (relayed_a, Via::Channel(0x4001), &[i; 100][..]) => {}
                    other => {
                        eprintln!("round {i}: b got {other:?}");
                        break;
                    }
                }
                if b.send_channel(0x4001, &[i; 60]).await.is_err() {
                    break;
                }
                match a.recv_timeout(Duration::from_secs(1)).await {
                    Ok(got)
                        if (got.peer, got.via, got.data.as_slice())
                            == (relayed_b, Via::Channel(0x4000), &[i; 60][..]) => {}
                    other => {
                        eprintln!("round {i}: a got {other:?}");
                        break;
                    }
                }
                done += 1;
            }
            done
        })
    })
}

/// The `xturnd` flags the end-to-end tests share: `listeners` and `relay_ips`, realm
/// `xturn.test`, user `alice:wonderland`, relayed ports 50000–50999, no drain, info logs, then
/// `extra`.
pub fn xturnd_args(listeners: &[&str], relay_ips: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for l in listeners {
        args.extend(["--listen".to_owned(), (*l).to_owned()]);
    }
    for r in relay_ips {
        args.extend(["--relay-ip".to_owned(), (*r).to_owned()]);
    }
    args.extend(
        [
            "--realm",
            "xturn.test",
            "--user",
            "alice:wonderland",
            "--min-port",
            "50000",
            "--max-port",
            "50999",
            "--drain-timeout",
            "0",
            "--log-level",
            "info",
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|e| (*e).to_owned()));
    args
}

/// [`xturnd_args`] for UDP and TCP on port 3478 and TLS on 5349 of [`LISTENER_V4`], relaying
/// from [`RELAY_V4`], with the certificate `relay.crt`/`relay.key` in `dir` (made if missing),
/// then `extra`.
pub fn stream_xturnd_args(dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    if !cert.exists() || !key.exists() {
        crate::certificates::certificate(dir, "relay");
    }
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut flags = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    flags.extend_from_slice(extra);
    xturnd_args(
        &[
            &format!("{LISTENER_V4}:3478"),
            &format!("tcp://{LISTENER_V4}:3478"),
            &format!("tls://{LISTENER_V4}:5349"),
        ],
        &[RELAY_V4],
        &flags,
    )
}

/// A TURN client of `server` as alice, with an allocation and `channel` bound to `peer`;
/// panics if any step fails. Call it inside the client namespace's runtime.
pub async fn bound_client(
    server: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    channel: u16,
) -> xturnctl::TurnClient {
    bound_client_as(
        server,
        peer,
        channel,
        xturnctl::ClientCredentials::new("alice", "wonderland"),
    )
    .await
}

/// [`bound_client`] with other credentials.
pub async fn bound_client_as(
    server: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    channel: u16,
    credentials: xturnctl::ClientCredentials,
) -> xturnctl::TurnClient {
    use xturnctl::{AllocateOptions, TurnClient};
    let mut client = TurnClient::connect(server, credentials)
        .await
        .expect("connect");
    client
        .allocate(AllocateOptions::default())
        .await
        .expect("allocate");
    client
        .channel_bind(peer, channel)
        .await
        .expect("channel bind");
    client
}
