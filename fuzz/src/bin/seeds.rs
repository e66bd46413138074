//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from a real exchange: a
//! client session run against the harness's server (401 challenge, authenticated Allocate,
//! Refresh, CreatePermission, ChannelBind, ChannelData, Send, peer data, expiry, delete), over
//! UDP and over a TCP stream, recorded as scripts; every message either side sent, for the
//! parsers; RFC 5769's test vectors; Ethernet frames for the kernel program's parser; and
//! STUNner configurations. `cargo xtask fuzz` runs it before fuzzing.
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use turn_proto::client::AllocateOptions;
use turn_proto::client::message::{
    Request, Signing, TransactionId, build_request, build_send_indication, decode_stun,
    encode_channel_data, nonce,
};
use turn_proto::rfc5769;
use turn_proto::stream::frame_for_stream;
use xturn_fuzz::{CLIENT_0, FROM_PEER, Harness, PASSWORD, PEER, REALM, STREAM, USER, WAIT, record};

/// A harness with the script and messages recorded so far.
struct Recorder {
    harness: Harness,
    script: Vec<u8>,
    messages: Vec<Vec<u8>>,
    next_tid: u8,
}

impl Recorder {
    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        TransactionId::new([self.next_tid; 12])
    }

    /// Runs one record; keeps it, the message it carries (`None`: not a client message) and
    /// the answers.
    fn step(&mut self, op: u8, payload: &[u8], message: Option<Vec<u8>>) -> Vec<Vec<u8>> {
        self.script.extend(record(op, payload));
        let answers = self.harness.step(op, payload);
        self.messages.extend(message);
        self.messages.extend(answers.iter().cloned());
        answers
    }

    /// Sends a client message by `op` (a datagram, or framed on the stream).
    fn send(&mut self, op: u8, message: Vec<u8>) -> Vec<Vec<u8>> {
        let wire = if op == STREAM {
            frame_for_stream(message.clone())
        } else {
            message.clone()
        };
        self.step(op, &wire, Some(message))
    }
}

/// A session of client 0, by `op` (UDP datagrams or stream bytes): the script and every
/// message of it.
fn session(op: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut r = Recorder {
        harness: Harness::new(),
        script: Vec::new(),
        messages: Vec::new(),
        next_tid: 0,
    };
    let peer: SocketAddr = PEER.parse().expect("peer");
    let allocate = Request::Allocate(AllocateOptions::default());
    let tid = r.tid();
    let challenge = r.send(
        op,
        build_request(&allocate, tid, None, None).expect("allocate"),
    );
    let nonce = challenge
        .first()
        .and_then(|answer| decode_stun(answer).ok())
        .and_then(|message| nonce(&message).map(str::to_owned))
        .expect("a 401 with a nonce");
    let signing = Signing {
        username: USER,
        realm: REALM,
        nonce: &nonce,
        password: PASSWORD,
    };
    let requests = [
        allocate,
        Request::Refresh {
            lifetime: Duration::from_secs(600),
        },
        Request::CreatePermission { peers: vec![peer] },
        Request::ChannelBind {
            peer,
            channel: 0x4000,
        },
    ];
    for request in &requests {
        let tid = r.tid();
        let answers = r.send(
            op,
            build_request(request, tid, Some(signing), None).expect("request"),
        );
        assert!(
            answers
                .first()
                .and_then(|a| decode_stun(a).ok())
                .is_some_and(|m| m.class() == stun_codec::MessageClass::SuccessResponse),
            "the seed session must succeed"
        );
    }
    r.send(
        op,
        encode_channel_data(0x4000, b"media", op == STREAM).expect("channel data"),
    );
    let tid = r.tid();
    r.send(
        op,
        build_send_indication(peer, b"indication", tid).expect("send"),
    );
    r.step(FROM_PEER, b"from the peer", None);
    r.step(WAIT, &[200], None);
    let tid = r.tid();
    let delete = Request::Refresh {
        lifetime: Duration::ZERO,
    };
    r.send(
        op,
        build_request(&delete, tid, Some(signing), None).expect("delete"),
    );
    (r.script, r.messages)
}

/// STUNner dataplane configurations of the shapes the operator and users write.
const CONFIGS: [&str; 3] = [
    r#"version: v1
admin: {name: seed, loglevel: "all:INFO"}
auth: {type: static, realm: seed.example, credentials: {username: user, password: pass}}
listeners:
  - {name: udp, protocol: TURN-UDP, address: "$STUNNER_ADDR", port: 3478, routes: [media]}
  - {name: tls, protocol: TURN-TLS, address: 0.0.0.0, port: 443, cert: ZmFrZQ==, key: ZmFrZQ==}
clusters:
  - {name: media, type: STATIC, protocol: udp, endpoints: ["10.0.0.0/8", "192.0.2.1:5000-6000"]}
"#,
    r#"{"version":"v1","auth":{"type":"ephemeral","credentials":{"secret":"s"}},"listeners":[{"name":"l","protocol":"TURN-TCP","port":3478,"routes":["dns"]}],"clusters":[{"name":"dns","type":"STRICT_DNS","endpoints":["media.default.svc.cluster.local"]}]}"#,
    "version: v1\nauth: {type: none}\nlisteners: []\n",
];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    let mut all_messages = Vec::new();
    for (name, op) in [("udp-session", CLIENT_0), ("tcp-session", STREAM)] {
        let (script, messages) = session(op);
        write(&root.join("server"), name, &script);
        write(
            &root.join("stream_framer"),
            name,
            &[&[7u8][..], &script].concat(),
        );
        all_messages.extend(messages);
    }
    for (i, message) in all_messages.iter().enumerate() {
        write(&root.join("messages"), &format!("message-{i:02}"), message);
    }
    // RFC 5769's vectors: for the parsers, and as datagrams of client 0 to the server.
    let vectors: [(&str, &[u8]); 4] = [
        ("rfc5769-request", &rfc5769::SAMPLE_REQUEST),
        ("rfc5769-ipv4-response", &rfc5769::SAMPLE_IPV4_RESPONSE),
        ("rfc5769-ipv6-response", &rfc5769::SAMPLE_IPV6_RESPONSE),
        (
            "rfc5769-long-term-request",
            &rfc5769::SAMPLE_LONG_TERM_REQUEST,
        ),
    ];
    for (name, vector) in vectors {
        write(&root.join("messages"), name, vector);
        write(&root.join("server"), name, &record(CLIENT_0, vector));
    }
    let stream: Vec<u8> = all_messages
        .iter()
        .flat_map(|m| frame_for_stream(m.clone()))
        .collect();
    write(
        &root.join("stream_framer"),
        "messages",
        &[&[13u8][..], &stream].concat(),
    );
    // Frames as the kernel program sees them: ChannelData (with padding) and STUN to a
    // listener, and a peer's datagram, over IPv4 and IPv6.
    let mut frames = 0;
    for (client, listener, peer) in [
        ("198.18.1.2:40000", "198.18.1.1:3478", "198.18.2.2:5000"),
        (
            "[2001:db8::2]:40000",
            "[2001:db8::1]:3478",
            "[2001:db8:2::2]:5000",
        ),
    ] {
        let [client, listener, peer]: [SocketAddr; 3] =
            [client, listener, peer].map(|a| a.parse().expect("address"));
        let payloads: [(&str, SocketAddr, SocketAddr, Vec<u8>); 3] = [
            (
                "channel-data",
                client,
                listener,
                encode_channel_data(0x4000, b"media", false).expect("channel data"),
            ),
            ("stun", client, listener, all_messages[0].clone()),
            ("peer", peer, listener, b"from the peer".to_vec()),
        ];
        for (name, src, dst, payload) in payloads {
            let frame = relay_ebpf::frames::udp_frame(src, dst, &payload);
            let family = if src.is_ipv4() { "v4" } else { "v6" };
            write(
                &root.join("kernel_parser"),
                &format!("{name}-{family}"),
                &frame,
            );
            frames += 1;
        }
    }
    for (i, config) in CONFIGS.iter().enumerate() {
        write(
            &root.join("config"),
            &format!("config-{i}"),
            config.as_bytes(),
        );
    }
    eprintln!(
        "seeds: 2 sessions, {} messages, {frames} frames, {} configurations in {}",
        all_messages.len(),
        CONFIGS.len(),
        root.display()
    );
}
