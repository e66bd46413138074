//! The admin HTTP server: Prometheus metrics (`/metrics`), health checks (`/live`, `/ready`)
//! and the log filter (`/log-level`).
//!
//! A small HTTP/1.1 server, GET/HEAD/PUT only, one request per connection. It runs as its own
//! tasks and never touches a socket of the relay: every connection has a deadline for its
//! request (and one for the whole exchange), request heads and bodies have size limits, and at
//! most [`MAX_CONNECTIONS`] are served at once (more are closed at once). A scrape reads the
//! counters on a blocking thread, one scrape at a time, so neither a slow client nor a flood of
//! scrapes can hold up relaying. docs/metrics.md describes the endpoints.
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    metrics::{self, MetricsSource},
    server::ServerHandle,
    telemetry::LogControl,
};

/// Largest request line plus headers accepted.
const MAX_HEAD: usize = 8 << 10;
/// Largest request body accepted (a log filter).
const MAX_BODY: usize = 4 << 10;
/// Time a client has to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole exchange, the answer included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections served at once, per server.
pub const MAX_CONNECTIONS: usize = 64;
/// `/live` fails when the event loop's timer has not run for this long (it runs every 500 ms).
const LIVENESS_STALE: Duration = Duration::from_secs(10);
/// After answering, unread input is drained for this long at most (and up to
/// [`LINGER_BYTES`]) before the connection closes, so that closing with unread data (a refused
/// oversized request) does not reset the connection before the client reads the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

/// Errors starting an admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where the agent is in its life, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Binding listeners, choosing the data plane: not ready.
    Starting = 0,
    /// Serving: ready.
    Ready = 1,
    /// Shutting down, refusing new allocations: not ready.
    Draining = 2,
}

/// What the admin endpoints report on, shared by every admin server of the agent.
pub struct AdminState {
    phase: AtomicU8,
    server: OnceLock<ServerHandle>,
    metrics: OnceLock<Arc<MetricsSource>>,
    log: Option<LogControl>,
    /// One scrape at a time.
    scrape: tokio::sync::Mutex<()>,
}

impl AdminState {
    /// A state in [`Phase::Starting`]; `log` serves `/log-level` when given.
    pub fn new(log: Option<LogControl>) -> Arc<AdminState> {
        Arc::new(AdminState {
            phase: AtomicU8::new(Phase::Starting as u8),
            server: OnceLock::new(),
            metrics: OnceLock::new(),
            log,
            scrape: tokio::sync::Mutex::new(()),
        })
    }

    /// The relay runs: metrics and liveness read from it, and `/ready` answers 200.
    pub fn set_running(&self, server: ServerHandle, metrics: MetricsSource) {
        let _ = self.server.set(server);
        let _ = self.metrics.set(Arc::new(metrics));
        self.set_phase(Phase::Ready);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }

    /// The log filter control, if any.
    pub fn log_control(&self) -> Option<&LogControl> {
        self.log.as_ref()
    }
}

/// Which endpoints one server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routes {
    /// `/metrics` and `/log-level`.
    pub metrics: bool,
    /// `/live` and `/ready`.
    pub health: bool,
}

/// The servers to run for `--metrics-listen` and `--health-listen`: one per distinct address
/// (both sets of endpoints on one server when the addresses are equal).
pub fn plan(metrics: Option<SocketAddr>, health: Option<SocketAddr>) -> Vec<(SocketAddr, Routes)> {
    match (metrics, health) {
        (Some(m), Some(h)) if m == h => vec![(
            m,
            Routes {
                metrics: true,
                health: true,
            },
        )],
        (m, h) => m
            .map(|a| {
                (
                    a,
                    Routes {
                        metrics: true,
                        health: false,
                    },
                )
            })
            .into_iter()
            .chain(h.map(|a| {
                (
                    a,
                    Routes {
                        metrics: false,
                        health: true,
                    },
                )
            }))
            .collect(),
    }
}

/// A running admin server; dropping it stops it.
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// The bound address (useful when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `routes` from `state`. Must be called inside a tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    routes: Routes,
    state: Arc<AdminState>,
) -> Result<AdminServer, AdminError> {
    let what = match (routes.metrics, routes.health) {
        (true, true) => "metrics and health checks",
        (true, false) => "metrics",
        _ => "health checks",
    };
    let bind_error = |source| AdminError::Bind { addr, what, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    info!(%local_addr, what, "admin HTTP server listening");
    let task = tokio::spawn(accept_loop(listener, routes, state));
    Ok(AdminServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, routes: Routes, state: Arc<AdminState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "admin server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%from, "admin server: too many connections, closing one");
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, routes, &state))
                .await
                .is_err()
            {
                debug!(%from, "admin server: exchange timed out");
            }
        });
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Why a request could not be read; each becomes an error status.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    Malformed,
    HeadTooLarge,
    BodyTooLarge,
    /// Chunked bodies and other transfer codings are not supported.
    TransferEncoding,
}

impl BadRequest {
    fn response(&self) -> Response {
        match self {
            BadRequest::Malformed => Response::text(400, "malformed request"),
            BadRequest::HeadTooLarge => Response::text(431, "request head too large"),
            BadRequest::BodyTooLarge => Response::text(413, "request body too large"),
            BadRequest::TransferEncoding => Response::text(
                501,
                "transfer codings are not supported: send Content-Length",
            ),
        }
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n"),
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::text(405, "method not allowed")
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn exchange(mut stream: TcpStream, routes: Routes, state: &AdminState) {
    let (response, head_only) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
            Err(_) => (Response::text(408, "request timeout"), false),
            Ok(Err(_)) => return, // the client went away
            Ok(Ok(Err(bad))) => (bad.response(), false),
            Ok(Ok(Ok(request))) => {
                let head_only = request.method == "HEAD";
                let response = route(&request, routes, state).await;
                debug!(
                    method = %request.method,
                    path = %request.path,
                    status = response.status,
                    "admin request"
                );
                (response, head_only)
            }
        };
    if write_response(&mut stream, &response, head_only)
        .await
        .is_ok()
    {
        linger(&mut stream).await;
    }
}

/// Reads and discards what the client still sends, until it closes, [`LINGER`] passes or
/// [`LINGER_BYTES`] were read.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if let Some(allow) = response.allow {
        head.push_str("Allow: ");
        head.push_str(allow);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(response.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Reads one request: the head up to [`MAX_HEAD`] bytes, then a body of `Content-Length` up to
/// [`MAX_BODY`] bytes. The outer `Err` is an I/O error (the client went away).
async fn read_request(stream: &mut TcpStream) -> io::Result<Result<Request, BadRequest>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Err(BadRequest::HeadTooLarge));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Ok(Err(BadRequest::HeadTooLarge));
    }
    let (mut request, content_length) = match parse_head(&buf[..head_end]) {
        Ok(parsed) => parsed,
        Err(bad) => return Ok(Err(bad)),
    };
    if content_length > MAX_BODY {
        return Ok(Err(BadRequest::BodyTooLarge));
    }
    let mut body = buf.split_off(head_end);
    while body.len() < content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > MAX_BODY {
            return Ok(Err(BadRequest::BodyTooLarge));
        }
    }
    body.truncate(content_length);
    request.body = body;
    Ok(Ok(request))
}

/// The length of the head including its blank line, once it is complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses the request line and headers; returns the request (no body yet) and its
/// `Content-Length`.
fn parse_head(head: &[u8]) -> Result<(Request, usize), BadRequest> {
    let head = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    let mut content_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(BadRequest::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| BadRequest::Malformed)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BadRequest::TransferEncoding);
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    Ok((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            body: Vec::new(),
        },
        content_length,
    ))
}

async fn route(request: &Request, routes: Routes, state: &AdminState) -> Response {
    let read = matches!(request.method.as_str(), "GET" | "HEAD");
    match request.path.as_str() {
        "/metrics" if routes.metrics => {
            if read {
                scrape(state).await
            } else {
                Response::not_allowed("GET, HEAD")
            }
        }
        "/log-level" if routes.metrics => match (request.method.as_str(), state.log_control()) {
            (_, None) => Response::text(404, "the log filter cannot be changed here"),
            ("GET" | "HEAD", Some(log)) => Response::text(200, &log.current()),
            ("PUT", Some(log)) => set_log_level(log, &request.body),
            _ => Response::not_allowed("GET, HEAD, PUT"),
        },
        "/live" if routes.health => {
            if read {
                live(state)
            } else {
                Response::not_allowed("GET, HEAD")
            }
        }
        "/ready" if routes.health => {
            if !read {
                return Response::not_allowed("GET, HEAD");
            }
            match state.phase() {
                Phase::Ready => Response::text(200, "ready"),
                Phase::Starting => Response::text(503, "starting"),
                Phase::Draining => Response::text(503, "draining"),
            }
        }
        _ => Response::text(404, "not found"),
    }
}

fn live(state: &AdminState) -> Response {
    let Some(server) = state.server.get() else {
        return Response::text(200, "live (starting)");
    };
    match server.since_last_tick() {
        Some(since) if since > LIVENESS_STALE => Response::text(
            503,
            &format!(
                "the event loop's timer has not run for {} s",
                since.as_secs()
            ),
        ),
        Some(_) => Response::text(200, "live"),
        None => Response::text(503, "the relay has stopped"),
    }
}

fn set_log_level(log: &LogControl, body: &[u8]) -> Response {
    let Ok(directive) = std::str::from_utf8(body) else {
        return Response::text(400, "the log filter must be UTF-8 text");
    };
    let directive = directive.trim();
    if directive.is_empty() {
        return Response::text(400, "empty log filter");
    }
    let old = log.current();
    info!(old = %old, new = %directive, "log filter change requested");
    match log.set(directive) {
        Ok(()) => {
            info!(filter = %directive, "log filter changed");
            Response::text(200, directive)
        }
        Err(e) => Response::text(400, &e.to_string()),
    }
}

async fn scrape(state: &AdminState) -> Response {
    let Some(source) = state.metrics.get() else {
        return Response::text(503, "starting");
    };
    let _one_at_a_time = state.scrape.lock().await;
    let source = Arc::clone(source);
    // Gathering takes the core's lock and makes BPF syscalls: not on an async worker.
    let rendered = tokio::task::spawn_blocking(move || source.gather().map(metrics::render)).await;
    match rendered {
        Err(e) => Response::text(500, &format!("the scrape failed: {e}")),
        Ok(None) => Response::text(503, "the relay has stopped"),
        Ok(Some(Err(e))) => Response::text(500, &format!("cannot encode the metrics: {e}")),
        Ok(Some(Ok(body))) => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body,
            allow: None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn heads_parse() {
        let (r, len) =
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
                .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), len),
            ("GET", "/metrics", 3)
        );
        assert_eq!(
            parse_head(b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            BadRequest::TransferEncoding
        );
        for bad in [
            &b"GET /x\r\n\r\n"[..],
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x SPDY/3\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"\xff /x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad).unwrap_err(),
                BadRequest::Malformed,
                "{bad:?}"
            );
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    /// Sends `request` raw and returns the status and body of the answer.
    async fn exchange_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("answered in time")
            .expect("read");
        let response = String::from_utf8(response).unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn bad_and_slow_clients_do_not_hold_up_the_others() {
        let state = AdminState::new(None);
        let routes = Routes {
            metrics: true,
            health: true,
        };
        let server = serve("127.0.0.1:0".parse().unwrap(), routes, Arc::clone(&state))
            .await
            .unwrap();
        let addr = server.local_addr();
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();

        // A client that sends half a request and waits: the others are served meanwhile.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ready HT").await.unwrap();
        assert_eq!(
            exchange_raw(addr, &get("/ready")).await,
            (503, "starting\n".to_owned())
        );
        assert_eq!(exchange_raw(addr, &get("/live")).await.0, 200);
        assert_eq!(exchange_raw(addr, &get("/metrics")).await.0, 503);
        state.set_phase(Phase::Ready);
        assert_eq!(
            exchange_raw(addr, &get("/ready?verbose")).await,
            (200, "ready\n".to_owned())
        );
        state.set_phase(Phase::Draining);
        assert_eq!(
            exchange_raw(addr, &get("/ready")).await,
            (503, "draining\n".to_owned())
        );
        // HEAD: the head only.
        let (status, body) = exchange_raw(addr, b"HEAD /ready HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (503, ""));

        // Oversized heads and bodies, chunked bodies, garbage, wrong methods.
        let mut huge = b"GET /ready HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(MAX_HEAD + 2000, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange_raw(addr, &huge).await.0, 431);
        let big_body = format!(
            "PUT /log-level HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(exchange_raw(addr, big_body.as_bytes()).await.0, 413);
        let chunked = b"PUT /log-level HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(exchange_raw(addr, chunked).await.0, 501);
        assert_eq!(exchange_raw(addr, b"hello\r\n\r\n").await.0, 400);
        assert_eq!(
            exchange_raw(addr, b"DELETE /ready HTTP/1.1\r\n\r\n")
                .await
                .0,
            405
        );
        assert_eq!(exchange_raw(addr, &get("/nope")).await.0, 404);
        // No log control here.
        assert_eq!(exchange_raw(addr, &get("/log-level")).await.0, 404);

        // Connections beyond the limit are closed without an answer...
        let mut hogs = vec![slow];
        for _ in 1..MAX_CONNECTIONS {
            let mut hog = TcpStream::connect(addr).await.unwrap();
            hog.write_all(b"G").await.unwrap();
            hogs.push(hog);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(&get("/ready")).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut answer))
            .await
            .expect("closed at once");
        assert!(read.is_err() || answer.is_empty(), "{answer:?}");
        // ... until the others go.
        drop(hogs);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&get("/ready")).await.unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            if answer.starts_with(b"HTTP/1.1 503") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "served again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn plan_merges_equal_addresses() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8086".parse().unwrap();
        let both = Routes {
            metrics: true,
            health: true,
        };
        assert_eq!(plan(Some(a), Some(a)), vec![(a, both)]);
        assert_eq!(plan(None, None), vec![]);
        let planned = plan(Some(a), Some(b));
        assert_eq!(planned.len(), 2);
        assert!(planned[0].1.metrics && !planned[0].1.health);
        assert!(!planned[1].1.metrics && planned[1].1.health);
    }
}
