//! A real browser through the relay: headless Chromium (Debian's `chromium`, driven through
//! `chromium-driver` over WebDriver) with two `RTCPeerConnection`s limited to relay candidates
//! (`iceTransportPolicy: "relay"`) exchanges 200 data-channel messages through `xturnd` in a
//! Kubernetes-like pod (default settings everywhere, no `--dataplane` flag). Both ends use the
//! same relay, so every datagram is a hairpin, which the TC program carries. Needs root.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xturn_tests::{
    admin::{metric_sum, scrape},
    clients::log_path,
    netns::{ChildGuard, NetNs},
    topology::{POD_V4, Topology},
};

const DRIVER_PORT: u16 = 9515;

/// One WebDriver command from inside `ns` (chromedriver answers with a Content-Length and
/// closes the connection when asked to).
fn webdriver(ns: &NetNs, method: &str, path: &str, body: &Value) -> Value {
    ns.within(|| {
        let mut stream = TcpStream::connect(("127.0.0.1", DRIVER_PORT)).expect("chromedriver");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        // Read the head, then exactly Content-Length bytes: the driver may keep the
        // connection open.
        let mut response = Vec::new();
        let mut byte = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut byte) {
                Ok(0) => return json!({"error": format!("{method} {path}: closed")}),
                Ok(n) => response.extend_from_slice(&byte[..n]),
                Err(e) => return json!({"error": format!("{method} {path}: {e}")}),
            }
        };
        let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while response.len() < head_end + length {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&byte[..n]),
                Err(e) => return json!({"error": format!("{method} {path}: {e}")}),
            }
        }
        let body = &response[head_end..];
        serde_json::from_slice(body).unwrap_or_else(|e| {
            json!({"error": format!("{method} {path}: {e}: {}", String::from_utf8_lossy(body))})
        })
    })
}

/// Waits until chromedriver answers `/status`.
fn wait_for_driver(ns: &NetNs) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let up = ns.within(|| TcpStream::connect(("127.0.0.1", DRIVER_PORT)).is_ok());
        if up {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not start");
}

/// Two peer connections in one page, relay candidates only, 200 ordered messages one way; the
/// answer names how many arrived and the selected pair's candidate types.
const SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
const server = arguments[0];
const timeout = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(what)), ms));
(async () => {
  const config = {
    iceServers: [{ urls: `turn:${server}?transport=udp`, username: "alice", credential: "wonderland" }],
    iceTransportPolicy: "relay",
  };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  const channel = a.createDataChannel("xturn", { ordered: true });
  let received = 0;
  const all = new Promise((resolve) => {
    b.ondatachannel = (event) => {
      event.channel.onmessage = () => { received += 1; if (received === 200) resolve(); };
    };
  });
  const open = new Promise((resolve) => { channel.onopen = resolve; });
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  await Promise.race([open, timeout(30000, "the data channel did not open")]);
  for (let i = 0; i < 200; i++) channel.send(`message ${i}`);
  await Promise.race([all, timeout(30000, `only ${received} of 200 messages arrived`)]);
  const stats = await a.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  const local = pair && stats.get(pair.localCandidateId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  done(JSON.stringify({
    received,
    local: local ? local.candidateType : null,
    remote: remote ? remote.candidateType : null,
    relayProtocol: local ? local.relayProtocol : null,
  }));
})().catch((e) => done(JSON.stringify({ error: String(e), received })));
"#;

#[test]
fn chromium_data_channels_relay_through_the_kernel_path_in_a_pod() {
    let topology = Topology::pod();
    let listener = format!("{POD_V4}:3478");
    let metrics_at = format!("{POD_V4}:9100");
    let log = log_path("browser-xturnd");
    let relay = topology.start_xturnd_logged(
        &[
            "--listen",
            &listener,
            "--relay-ip",
            POD_V4,
            "--realm",
            "xturn.test",
            "--user",
            "alice:wonderland",
            "--drain-timeout",
            "0",
            "--metrics-listen",
            &metrics_at,
        ],
        &log,
    );
    let profile = std::env::temp_dir().join(format!("xturn-chromium-{}", std::process::id()));
    let driver_log = log_path("chromedriver");
    let driver: ChildGuard = topology.client.spawn_logged(
        "chromedriver",
        &[&format!("--port={DRIVER_PORT}"), "--verbose"],
        &driver_log,
    );
    wait_for_driver(&topology.client);
    let before = scrape(&topology.relay, &metrics_at);
    let session = webdriver(
        &topology.client,
        "POST",
        "/session",
        &json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-features=WebRtcHideLocalIpsWithMdns",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}}),
    );
    let id = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(&driver_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("no session: {session}\n{}", tail.join("\n"))
        })
        .to_owned();
    webdriver(
        &topology.client,
        "POST",
        &format!("/session/{id}/timeouts"),
        &json!({"script": 90_000}),
    );
    let answer = webdriver(
        &topology.client,
        "POST",
        &format!("/session/{id}/execute/async"),
        &json!({"script": SCRIPT, "args": [listener]}),
    );
    webdriver(
        &topology.client,
        "DELETE",
        &format!("/session/{id}"),
        &json!({}),
    );
    drop(driver);
    // Whatever the driver left behind goes with this profile.
    let _ = Command::new("pkill")
        .args(["-f", &format!("user-data-dir={}", profile.display())])
        .status();
    let _ = std::fs::remove_dir_all(&profile);
    let after = scrape(&topology.relay, &metrics_at);
    let _ = relay.terminate();
    let relay_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let driver_text = std::fs::read_to_string(&driver_log).unwrap_or_default();
    let _ = std::fs::remove_file(&driver_log);
    let driver_tail: String = driver_text
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");

    let result: Value = answer["value"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| {
            panic!("no result: {answer}\nchromedriver:\n{driver_tail}\nxturnd:\n{relay_log}")
        });
    let delta = |name: &str, labels: &[&str]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    let hairpinned = delta("xturn_tc_packets_total", &["reason=\"relayed_hairpin\""]);
    let userspace = delta("xturn_relayed_packets_total", &["dataplane=\"userspace\""]);
    let context = format!(
        "browser: {result}\nhairpinned in TC: {hairpinned}, relayed in userspace: {userspace}\n{after}\n{relay_log}"
    );
    eprintln!(
        "browser: {result}; hairpinned in TC: {hairpinned}; relayed in userspace: {userspace}"
    );
    assert_eq!(result["received"], 200, "{context}");
    assert_eq!(result["local"], "relay", "{context}");
    assert_eq!(result["remote"], "relay", "{context}");
    assert!(
        after.contains("xturn_dataplane_info{mode=\"tc\"} 1"),
        "{context}"
    );
    // The 200 messages (and the DTLS and SCTP around them) went through the kernel hairpin;
    // userspace carried at most what came before the channels were bound.
    assert!(hairpinned >= 200, "{context}");
    assert!(userspace * 10 <= hairpinned, "{context}");
}
