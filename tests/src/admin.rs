//! xturnd's admin endpoints (metrics, health, log level) as the tests query them: plain
//! HTTP/1.1 from inside a namespace, as Prometheus or a kubelet on the node would.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::NetNs;

/// One HTTP/1.1 request from inside `ns` to `to` (`IP:PORT`); returns the status and the body.
pub fn http(ns: &NetNs, to: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let to: SocketAddr = to.parse().expect("admin address");
    ns.within(|| {
        let mut stream =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect to xturnd");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

/// `GET /metrics` from inside `ns`; panics unless it answers 200.
pub fn scrape(ns: &NetNs, at: &str) -> String {
    let (status, body) = http(ns, at, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of `series` (name and labels exactly as exposed) in a scrape.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// The sum of every sample of metric `name` whose labels contain all of `labels` (each
/// `key="value"`), e.g. `xturn_xdp_packets_total` with `reason="relayed_to_peer"`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}
