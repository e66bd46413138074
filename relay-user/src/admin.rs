//! The admin HTTP server: Prometheus metrics (`/metrics`), health checks (`/live`, `/ready`)
//! and the log filter (`/log-level`).
//!
//! An axum router served over HTTP/1.1 by hyper, one request per connection. It runs as its own
//! tasks and never touches a socket of the relay: every connection has a deadline for its
//! request head (hyper) and one for the whole exchange, request heads (hyper's buffer) and bodies
//! (tower-http's body limit) have size limits, handlers have a timeout (tower-http), and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once). A scrape reads the counters
//! on a blocking thread, one scrape at a time, so neither a slow client nor a flood of scrapes
//! can hold up relaying. docs/metrics.md describes the endpoints.
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};
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
    let task = tokio::spawn(accept_loop(listener, router(routes, state)));
    Ok(AdminServer { local_addr, task })
}

/// The endpoints `routes` selects, with the body limit, the handler timeout and the headers
/// every answer carries.
fn router(routes: Routes, state: Arc<AdminState>) -> Router {
    let mut router = Router::new();
    if routes.metrics {
        router = router
            .route("/metrics", get(scrape))
            .route("/usage", get(usage))
            .route("/log-level", get(log_level).put(set_log_level));
    }
    if routes.health {
        router = router.route("/live", get(live)).route("/ready", get(ready));
    }
    router
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn(refuse_transfer_codings))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            EXCHANGE_TIMEOUT,
        ))
        .layer(middleware::map_response(no_store))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn accept_loop(listener: TcpListener, router: Router) {
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
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, router))
                .await
                .is_err()
            {
                debug!(%from, "admin server: exchange timed out");
            }
        });
    }
}

/// One request on one connection: hyper reads the head (at most [`MAX_HEAD`] bytes, within
/// [`REQUEST_TIMEOUT`]; 431 and 400 for heads too large or malformed), the router answers.
async fn exchange(mut stream: TcpStream, router: Router) {
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(&mut stream), TowerToHyperService::new(router))
        .await;
    if let Err(e) = served {
        debug!(error = %e, "admin server: request refused or connection ended");
    }
    linger(&mut stream).await;
}

/// Closes the connection after the answer: reads and discards what the client still sends,
/// until it closes, [`LINGER`] passes or [`LINGER_BYTES`] were read. Closing with unread data
/// (a refused oversized request) would reset the connection before the client reads the answer.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
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

/// Chunked bodies and other transfer codings are refused (501): bodies are small and sized.
async fn refuse_transfer_codings(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::TRANSFER_ENCODING) {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "transfer codings are not supported: send Content-Length",
        );
    }
    next.run(request).await
}

/// Each request is logged at debug, once answered (a request that turns debug on is logged).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        "admin request"
    );
    response
}

/// Every answer is current: never cached.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain-text answer: `message` and a newline.
fn text(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    match state.phase() {
        Phase::Ready => text(StatusCode::OK, "ready"),
        Phase::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
        Phase::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining"),
    }
}

async fn live(State(state): State<Arc<AdminState>>) -> Response {
    let Some(server) = state.server.get() else {
        return text(StatusCode::OK, "live (starting)");
    };
    match server.since_last_tick() {
        Some(since) if since > LIVENESS_STALE => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the event loop's timer has not run for {} s",
                since.as_secs()
            ),
        ),
        Some(_) => text(StatusCode::OK, "live"),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "the relay has stopped"),
    }
}

async fn log_level(State(state): State<Arc<AdminState>>) -> Response {
    match state.log_control() {
        Some(log) => text(StatusCode::OK, &log.current()),
        None => no_log_control(),
    }
}

fn no_log_control() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "the log filter cannot be changed here",
    )
}

async fn set_log_level(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    let Some(log) = state.log_control() else {
        return no_log_control();
    };
    let Ok(directive) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the log filter must be UTF-8 text");
    };
    let directive = directive.trim();
    if directive.is_empty() {
        return text(StatusCode::BAD_REQUEST, "empty log filter");
    }
    let old = log.current();
    info!(old = %old, new = %directive, "log filter change requested");
    match log.set(directive) {
        Ok(()) => {
            info!(filter = %directive, "log filter changed");
            text(StatusCode::OK, directive)
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn scrape(State(state): State<Arc<AdminState>>) -> Response {
    let Some(source) = state.metrics.get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let _one_at_a_time = state.scrape.lock().await;
    let source = Arc::clone(source);
    // Gathering takes the core's lock and makes BPF syscalls: not on an async worker.
    let rendered = tokio::task::spawn_blocking(move || source.gather().map(metrics::render)).await;
    match rendered {
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the scrape failed: {e}"),
        ),
        Ok(None) => text(StatusCode::SERVICE_UNAVAILABLE, "the relay has stopped"),
        Ok(Some(Err(e))) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {e}"),
        ),
        Ok(Some(Ok(body))) => {
            ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
        }
    }
}

/// `GET /usage`: per-user usage as JSON, read as a scrape reads it.
async fn usage(State(state): State<Arc<AdminState>>) -> Response {
    let Some(source) = state.metrics.get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let _one_at_a_time = state.scrape.lock().await;
    let source = Arc::clone(source);
    let gathered = tokio::task::spawn_blocking(move || source.gather()).await;
    match gathered {
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reading the usage failed: {e}"),
        ),
        Ok(None) => text(StatusCode::SERVICE_UNAVAILABLE, "the relay has stopped"),
        Ok(Some(snapshot)) => (
            [(header::CONTENT_TYPE, "application/json")],
            snapshot.usage_json().to_string(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn malformed_heads_are_refused() {
        let state = AdminState::new(None);
        let routes = Routes {
            metrics: true,
            health: true,
        };
        let server = serve("127.0.0.1:0".parse().unwrap(), routes, state)
            .await
            .unwrap();
        let addr = server.local_addr();
        // The query is not part of the path.
        assert_eq!(
            exchange_raw(addr, b"GET /ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .0,
            503
        );
        assert_eq!(
            exchange_raw(
                addr,
                b"PUT /log-level HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .await
            .0,
            501
        );
        for bad in [
            &b"GET /x\r\n\r\n"[..],
            b"GET /x SPDY/3\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"\xff /x HTTP/1.1\r\n\r\n",
        ] {
            let (status, _) = exchange_raw(addr, bad).await;
            assert!(
                status == 400 || status == 505,
                "{status} for {:?}",
                String::from_utf8_lossy(bad)
            );
        }
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
