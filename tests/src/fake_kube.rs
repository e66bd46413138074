//! A stand-in for the Kubernetes API server, serving one ConfigMap over plain HTTP: `get`,
//! `list` (by field selector) and `watch` (a chunked stream of `MODIFIED` events, one per
//! [`FakeApiServer::set`]). Enough for `xturnd --config-map` to run against it as it would
//! against a cluster; nothing else is served (404). Stops when dropped.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

struct State {
    version: u64,
    data: String,
    stop: bool,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    namespace: String,
    name: String,
    key: String,
    state: Arc<(Mutex<State>, Condvar)>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Serves on `listener` (bind it in the namespace the client runs in) a ConfigMap
    /// `namespace/name` whose `key` holds `data`.
    pub fn start(
        listener: TcpListener,
        namespace: &str,
        name: &str,
        key: &str,
        data: &str,
    ) -> Self {
        let addr = listener.local_addr().expect("listener address");
        let state = Arc::new((
            Mutex::new(State {
                version: 1,
                data: data.to_owned(),
                stop: false,
            }),
            Condvar::new(),
        ));
        let shared = Arc::clone(&state);
        let (ns, n, k) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = std::thread::spawn(move || {
            loop {
                if shared.0.lock().expect("state").stop {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&shared);
                        let (ns, n, k) = (ns.clone(), n.clone(), k.clone());
                        std::thread::spawn(move || serve(stream, &shared, &ns, &n, &k));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApiServer {
            addr,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Publishes new data: watchers get a `MODIFIED` event.
    pub fn set(&self, data: &str) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().expect("state");
        state.version += 1;
        data.clone_into(&mut state.data);
        changed.notify_all();
    }

    /// Writes a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {}\ncurrent-context: fake\n",
            self.addr, self.namespace
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let (lock, changed) = &*self.state;
        lock.lock().expect("state").stop = true;
        changed.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn config_map(namespace: &str, name: &str, key: &str, state: &State) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": namespace,
            "resourceVersion": state.version.to_string(), "uid": "fake-uid",
        },
        "data": { key: state.data },
    })
}

fn respond(stream: &mut TcpStream, status: &str, body: &serde_json::Value) {
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn chunk(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    stream.flush()
}

/// One connection: requests until it closes (a watch keeps it until the server stops).
fn serve(stream: TcpStream, shared: &(Mutex<State>, Condvar), ns: &str, name: &str, key: &str) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Headers, up to the blank line (GET requests have no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let collection = format!("/api/v1/namespaces/{ns}/configmaps");
        let (lock, changed) = shared;
        if path == format!("{collection}/{name}") {
            let state = lock.lock().expect("state");
            respond(&mut stream, "200 OK", &config_map(ns, name, key, &state));
        } else if path == collection && query.contains("watch=true") {
            let from: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("resourceVersion="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let mut seen = from;
            let mut state = lock.lock().expect("state");
            loop {
                if state.stop {
                    let _ = write!(stream, "0\r\n\r\n");
                    return;
                }
                if state.version > seen {
                    seen = state.version;
                    let event = serde_json::json!({
                        "type": "MODIFIED", "object": config_map(ns, name, key, &state),
                    });
                    if chunk(&mut stream, &event.to_string()).is_err() {
                        return;
                    }
                }
                state = changed
                    .wait_timeout(state, Duration::from_millis(200))
                    .expect("wait")
                    .0;
            }
        } else if path == collection {
            let state = lock.lock().expect("state");
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": [config_map(ns, name, key, &state)],
            });
            respond(&mut stream, "200 OK", &list);
        } else {
            respond(
                &mut stream,
                "404 Not Found",
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
            );
        }
    }
}
