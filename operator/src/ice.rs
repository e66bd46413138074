//! The credential service: an HTTP endpoint that hands WebRTC clients an ICE server
//! configuration for a Gateway — its public TURN URLs and credentials — with the API of
//! STUNner's auth service (`l7mp/stunner-auth-service`), so that STUNner clients work unchanged:
//!
//! `GET /ice?service=turn[&namespace=NS[&gateway=GW[&listener=L]]][&username=ID][&ttl=SECS]
//! [&public-addr=ADDR][&iceTransportPolicy=all|relay|public]`
//! → `{"iceServers":[{"urls":["turn:ADDR:PORT?transport=udp",...],"username":..,"credential":..}],
//!     "iceTransportPolicy":"all"}`: one ICE server per matching Gateway.
//!
//! `GET /?service=turn[&…the same filters…]` → `{"username":..,"password":..,"ttl":..,
//! "uris":[..]}`: the first matching Gateway's credentials in the shape of the TURN REST API
//! draft (draft-uberti-behave-turn-rest-00 §2.2).
//!
//! As in STUNner's, `gateway` filters only together with `namespace`, and `listener` only with
//! both; `key` is accepted and ignored; `public-addr` replaces the Gateway's public addresses in
//! the URLs; errors are plain text with STUNner's status codes and messages. With
//! `longterm`/`ephemeral` authentication the credentials are TURN REST API credentials (user
//! name `EXPIRY:ID`, password `base64(HMAC-SHA1(secret, user name))`) valid for `ttl` seconds
//! (default and upper bound: the GatewayConfig's `authLifetime`); with `static` authentication,
//! the static user. [`ice_config`] is the pure part; [`serve`] puts it on HTTP.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use turn_proto::auth::rest_credentials;
#[cfg(test)]
use turn_proto::auth::rest_password;

/// How clients authenticate at a Gateway, as the credential service needs it.
#[derive(Clone, PartialEq, Eq)]
pub enum IceAuth {
    Static {
        user: String,
        password: String,
    },
    /// A STUN server only (`stunMode`): no credentials.
    None,
    /// TURN REST API credentials.
    Rest {
        secret: String,
        /// The id put in minted user names when the client names none.
        user_id: Option<String>,
        lifetime_secs: i64,
    },
}

impl std::fmt::Debug for IceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IceAuth::Static { user, .. } => f.debug_struct("Static").field("user", user).finish(),
            IceAuth::None => f.write_str("None"),
            IceAuth::Rest {
                user_id,
                lifetime_secs,
                ..
            } => f
                .debug_struct("Rest")
                .field("user_id", user_id)
                .field("lifetime_secs", lifetime_secs)
                .finish(),
        }
    }
}

/// A listener's transport in a TURN URL (RFC 7065).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Dtls,
}

impl Transport {
    pub fn from_protocol(protocol: &str) -> Option<Transport> {
        match protocol {
            "TURN-UDP" => Some(Transport::Udp),
            "TURN-TCP" => Some(Transport::Tcp),
            "TURN-TLS" => Some(Transport::Tls),
            "TURN-DTLS" => Some(Transport::Dtls),
            _ => None,
        }
    }

    fn url(self, address: &str, port: u16) -> String {
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        let (scheme, transport) = match self {
            Transport::Udp => ("turn", "udp"),
            Transport::Tcp => ("turn", "tcp"),
            Transport::Tls => ("turns", "tcp"),
            Transport::Dtls => ("turns", "udp"),
        };
        format!("{scheme}:{host}:{port}?transport={transport}")
    }
}

/// What the credential service knows of one Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct IceSource {
    pub namespace: String,
    pub gateway: String,
    pub realm: String,
    pub auth: IceAuth,
    /// Public addresses (IPs or host names); empty until the Gateway has one.
    pub addresses: Vec<String>,
    /// (listener name, transport, public port).
    pub listeners: Vec<(String, Transport, u16)>,
}

/// The Gateways the service answers for, by `(namespace, name)`; the controller keeps it
/// current, `xturn-operator auth-service -f` fills it from files.
pub type Registry = Arc<RwLock<BTreeMap<(String, String), IceSource>>>;

/// A request's query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceQuery {
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub gateway: Option<String>,
    pub listener: Option<String>,
    pub username: Option<String>,
    pub ttl: Option<i64>,
    /// Replaces every Gateway's public addresses in the URLs.
    pub public_addr: Option<String>,
    /// Echoed in `/ice` answers; default `all`.
    pub ice_transport_policy: Option<String>,
}

impl IceQuery {
    /// The query of a request, from its `key=value` pairs. A `ttl` that is not an integer is
    /// refused as STUNner's service refuses it; unknown parameters (`key`) are ignored.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<IceQuery, IceError> {
        let mut query = IceQuery::default();
        for (name, value) in pairs {
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match name {
                "service" => query.service = value,
                "namespace" => query.namespace = value,
                "gateway" => query.gateway = value,
                "listener" => query.listener = value,
                "username" => query.username = value,
                "public-addr" => query.public_addr = value,
                "iceTransportPolicy" => query.ice_transport_policy = value,
                "ttl" => {
                    let Some(text) = value else { continue };
                    query.ttl = Some(text.parse().map_err(|e: std::num::ParseIntError| {
                        IceError::BadParameter("ttl", e.to_string())
                    })?);
                }
                _ => {}
            }
        }
        Ok(query)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceConfig {
    pub ice_servers: Vec<IceServer>,
    pub ice_transport_policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Why no configuration was handed out; each maps to STUNner's HTTP status and message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceError {
    #[error("Query argument service is required, but not found")]
    MissingService,
    #[error("Invalid format for parameter {0}: {1}")]
    BadParameter(&'static str, String),
    #[error("\"service\" must be \"turn\"")]
    UnknownService(String),
    /// The service knows no Gateway at all.
    #[error("no STUNner configuration available")]
    NoConfiguration,
    #[error("no valid listener found")]
    NoListener,
    /// Matching Gateways exist but none has a public address yet (STUNner's would hand out
    /// URLs with the pod address; we say so instead).
    #[error("no public address for the matching Gateways yet")]
    NoAddress,
}

impl IceError {
    fn status(&self) -> StatusCode {
        match self {
            IceError::MissingService | IceError::BadParameter(..) | IceError::UnknownService(_) => {
                StatusCode::BAD_REQUEST
            }
            IceError::NoConfiguration => StatusCode::INTERNAL_SERVER_ERROR,
            IceError::NoListener => StatusCode::NOT_FOUND,
            IceError::NoAddress => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The plain-text body STUNner's service answers with, for the endpoint `what` ("TURN auth
    /// token" at `/`, "ICE config" or "ICE auth token" at `/ice`).
    fn message(&self, endpoint: Endpoint) -> String {
        match self {
            IceError::MissingService | IceError::BadParameter(..) | IceError::NoConfiguration => {
                self.to_string()
            }
            IceError::UnknownService(_) => {
                let what = match endpoint {
                    Endpoint::Turn => "TURN auth token",
                    Endpoint::Ice => "ICE auth token",
                };
                format!("could not generate {what}: {:?}", self.to_string())
            }
            IceError::NoListener | IceError::NoAddress => {
                let what = match endpoint {
                    Endpoint::Turn => "TURN auth token",
                    Endpoint::Ice => "ICE config",
                };
                format!("could not generate {what}: {self}")
            }
        }
    }
}

/// Which of the two endpoints answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `GET /`, the TURN REST API.
    Turn,
    /// `GET /ice`.
    Ice,
}

/// The ICE configuration for `query` at `now` (Unix seconds).
pub fn ice_config<'a>(
    sources: impl IntoIterator<Item = &'a IceSource>,
    query: &IceQuery,
    now: i64,
) -> Result<IceConfig, IceError> {
    Ok(IceConfig {
        ice_servers: ice_servers(sources, query, now)?
            .into_iter()
            .map(|(server, _)| server)
            .collect(),
        ice_transport_policy: query
            .ice_transport_policy
            .clone()
            .unwrap_or_else(|| "all".to_owned()),
    })
}

/// The TURN REST API answer (draft-uberti-behave-turn-rest-00 §2.2), as STUNner's auth service
/// gives it at `GET /?service=turn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    /// Seconds the credentials are valid for.
    pub ttl: i64,
    pub uris: Vec<String>,
}

/// [`ice_config`] in the TURN REST API's shape: the first matching Gateway's credentials, with
/// the URIs of every matching Gateway that takes the same credentials.
pub fn turn_credentials<'a>(
    sources: impl IntoIterator<Item = &'a IceSource>,
    query: &IceQuery,
    now: i64,
) -> Result<TurnCredentials, IceError> {
    // `service` is required here (optional at /ice, where it defaults to `turn`).
    if query.service.is_none() {
        return Err(IceError::MissingService);
    }
    let servers = ice_servers(sources, query, now)?;
    let Some((first, ttl)) = servers.first() else {
        return Err(IceError::NoListener);
    };
    let uris = servers
        .iter()
        .filter(|(s, _)| s.username == first.username && s.credential == first.credential)
        .flat_map(|(s, _)| s.urls.iter().cloned())
        .collect();
    Ok(TurnCredentials {
        username: first.username.clone(),
        password: first.credential.clone(),
        ttl: *ttl,
        uris,
    })
}

/// One ICE server per matching Gateway, with how long its credentials are valid.
fn ice_servers<'a>(
    sources: impl IntoIterator<Item = &'a IceSource>,
    query: &IceQuery,
    now: i64,
) -> Result<Vec<(IceServer, i64)>, IceError> {
    if let Some(service) = query.service.as_deref().filter(|s| *s != "turn") {
        return Err(IceError::UnknownService(service.to_owned()));
    }
    let mut servers = Vec::new();
    let mut matched = false;
    let mut any = false;
    for source in sources {
        any = true;
        // STUNner's filters: the gateway only with a namespace, the listener only with both.
        let namespace_ok = query
            .namespace
            .as_ref()
            .is_none_or(|n| *n == source.namespace);
        let gateway_ok = query.namespace.is_none()
            || query.gateway.as_ref().is_none_or(|g| *g == source.gateway);
        if !(namespace_ok && gateway_ok) {
            continue;
        }
        let listener_filter = query
            .listener
            .as_ref()
            .filter(|_| query.namespace.is_some() && query.gateway.is_some());
        let addresses = match &query.public_addr {
            Some(address) => std::slice::from_ref(address),
            None => source.addresses.as_slice(),
        };
        let urls: Vec<String> = addresses
            .iter()
            .flat_map(|address| {
                source
                    .listeners
                    .iter()
                    .filter(|(name, _, _)| listener_filter.is_none_or(|l| l == name))
                    .map(move |(_, transport, port)| transport.url(address, *port))
            })
            .collect();
        matched |= source
            .listeners
            .iter()
            .any(|(name, _, _)| listener_filter.is_none_or(|l| l == name));
        if urls.is_empty() {
            continue;
        }
        let (username, credential, ttl) = match &source.auth {
            // Static credentials do not expire: the ttl asked for, else a day (STUNner's).
            IceAuth::Static { user, password } => (
                user.clone(),
                password.clone(),
                query.ttl.unwrap_or(STATIC_TTL_SECS),
            ),
            IceAuth::None => (
                String::new(),
                String::new(),
                query.ttl.unwrap_or(STATIC_TTL_SECS),
            ),
            IceAuth::Rest {
                secret,
                user_id,
                lifetime_secs,
            } => {
                let ttl = query.ttl.map_or(*lifetime_secs, |t| t.min(*lifetime_secs));
                // STUNner's: `EXPIRY:ID`, with an empty id when none is given.
                let id = query
                    .username
                    .clone()
                    .or_else(|| user_id.clone())
                    .unwrap_or_default();
                let expiry = u64::try_from(now.saturating_add(ttl)).unwrap_or(0);
                let (username, password) = rest_credentials(secret, &id, expiry);
                (username, password, ttl)
            }
        };
        servers.push((
            IceServer {
                urls,
                username,
                credential,
            },
            ttl,
        ));
    }
    if !any {
        return Err(IceError::NoConfiguration);
    }
    if servers.is_empty() {
        return Err(if matched {
            IceError::NoAddress
        } else {
            IceError::NoListener
        });
    }
    Ok(servers)
}

/// The `ttl` reported for static credentials when the client asks for none (STUNner's default).
const STATIC_TTL_SECS: i64 = 86_400;

async fn handle_ice(
    State(registry): State<Registry>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    answer(&registry, &pairs, Endpoint::Ice, |sources, query, now| {
        ice_config(sources.iter().copied(), query, now)
    })
}

async fn handle_turn(
    State(registry): State<Registry>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    answer(&registry, &pairs, Endpoint::Turn, |sources, query, now| {
        turn_credentials(sources.iter().copied(), query, now)
    })
}

/// `make`'s answer for the query `pairs` now, as JSON, or the error with STUNner's status and
/// plain-text message.
fn answer<T: Serialize>(
    registry: &Registry,
    pairs: &[(String, String)],
    endpoint: Endpoint,
    make: impl Fn(&[&IceSource], &IceQuery, i64) -> Result<T, IceError>,
) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let result = IceQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .and_then(|query| match registry.read() {
            Ok(sources) => make(&sources.values().collect::<Vec<_>>(), &query, now),
            Err(_) => Err(IceError::NoConfiguration),
        });
    match result {
        Ok(config) => (StatusCode::OK, Json(config)).into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "ICE configuration refused");
            (e.status(), format!("{}\n", e.message(endpoint))).into_response()
        }
    }
}

/// The HTTP routes: `/ice`, `/` (the TURN REST API) and a `/healthz` for probes.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/ice", get(handle_ice))
        .route("/", get(handle_turn))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry)
}

/// Serves only `GET /healthz` on `addr` (the controller's probes), like [`serve`].
pub async fn serve_health(
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let router = Router::new().route("/healthz", get(|| async { "ok" }));
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((local, task))
}

/// Serves the credential service on `addr` until the task is dropped. Returns the bound
/// address (port 0 picks one) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move { axum::serve(listener, router(registry)).await });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(auth: IceAuth) -> IceSource {
        IceSource {
            namespace: "stunner".into(),
            gateway: "stunner-gateway".into(),
            realm: "stunner.example.com".into(),
            auth,
            addresses: vec!["198.18.1.1".into(), "2001:db8:1::1".into()],
            listeners: vec![
                ("udp-listener".into(), Transport::Udp, 3478),
                ("tcp-listener".into(), Transport::Tcp, 3478),
            ],
        }
    }

    fn rest() -> IceAuth {
        IceAuth::Rest {
            secret: "s3cret".into(),
            user_id: Some("stunner".into()),
            lifetime_secs: 86_400,
        }
    }

    #[test]
    fn rest_credentials_expire_after_the_lifetime_and_verify() {
        let sources = [source(rest())];
        let config = ice_config(&sources, &IceQuery::default(), 1_000).unwrap();
        assert_eq!(config.ice_transport_policy, "all");
        let server = &config.ice_servers[0];
        assert_eq!(server.username, "87400:stunner");
        assert_eq!(server.credential, rest_password("s3cret", "87400:stunner"));
        assert_eq!(
            server.urls,
            [
                "turn:198.18.1.1:3478?transport=udp",
                "turn:198.18.1.1:3478?transport=tcp",
                "turn:[2001:db8:1::1]:3478?transport=udp",
                "turn:[2001:db8:1::1]:3478?transport=tcp",
            ]
        );
        // A shorter ttl and a named user; a longer ttl is capped at authLifetime.
        let query = IceQuery {
            username: Some("alice".into()),
            ttl: Some(60),
            ..IceQuery::default()
        };
        let config = ice_config(&sources, &query, 1_000).unwrap();
        assert_eq!(config.ice_servers[0].username, "1060:alice");
        let query = IceQuery {
            ttl: Some(10_000_000),
            ..IceQuery::default()
        };
        let config = ice_config(&sources, &query, 1_000).unwrap();
        assert_eq!(config.ice_servers[0].username, "87400:stunner");
    }

    #[test]
    fn the_rest_password_is_the_drafts_hmac() {
        // draft-uberti-behave-turn-rest: base64(HMAC-SHA1(secret, username)); computed
        // independently with `printf %s 1700000000:alice | openssl dgst -sha1 -hmac s3cret -binary | base64`.
        assert_eq!(
            rest_password("s3cret", "1700000000:alice"),
            "TtElzSjT0GdnTQ9xdcRNxx96yQs="
        );
    }

    #[test]
    fn static_credentials_and_filters() {
        let auth = IceAuth::Static {
            user: "stunner".into(),
            password: "pass".into(),
        };
        let sources = [source(auth)];
        let query = IceQuery {
            service: Some("turn".into()),
            namespace: Some("stunner".into()),
            gateway: Some("stunner-gateway".into()),
            listener: Some("tcp-listener".into()),
            ..IceQuery::default()
        };
        let config = ice_config(&sources, &query, 0).unwrap();
        assert_eq!(config.ice_servers[0].username, "stunner");
        assert_eq!(config.ice_servers[0].credential, "pass");
        assert_eq!(config.ice_servers[0].urls.len(), 2);
        assert!(
            config.ice_servers[0]
                .urls
                .iter()
                .all(|u| u.ends_with("tcp"))
        );
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        let sources = [source(rest())];
        let q = |f: fn(&mut IceQuery)| {
            let mut q = IceQuery::default();
            f(&mut q);
            ice_config(&sources, &q, 0).unwrap_err()
        };
        assert_eq!(
            q(|q| q.service = Some("stun".into())),
            IceError::UnknownService("stun".into())
        );
        // STUNner's filters: the listener only with a namespace and a gateway.
        let filtered = |f: fn(&mut IceQuery)| {
            let mut q = IceQuery::default();
            f(&mut q);
            ice_config(&sources, &q, 0)
        };
        assert_eq!(
            filtered(|q| {
                q.namespace = Some("stunner".into());
                q.gateway = Some("other".into());
            }),
            Err(IceError::NoListener)
        );
        assert_eq!(
            filtered(|q| {
                q.namespace = Some("stunner".into());
                q.gateway = Some("stunner-gateway".into());
                q.listener = Some("nope".into());
            }),
            Err(IceError::NoListener)
        );
        assert!(filtered(|q| q.gateway = Some("other".into())).is_ok());
        assert!(filtered(|q| q.listener = Some("nope".into())).is_ok());
        assert_eq!(
            ice_config(&[], &IceQuery::default(), 0),
            Err(IceError::NoConfiguration)
        );
        let mut pending = source(rest());
        pending.addresses.clear();
        assert_eq!(
            ice_config(&[pending], &IceQuery::default(), 0).unwrap_err(),
            IceError::NoAddress
        );
        // Query parsing: a ttl that is not a number; `key` ignored; empty values are absent.
        assert!(matches!(
            IceQuery::from_pairs([("service", "turn"), ("ttl", "soon")]),
            Err(IceError::BadParameter("ttl", _))
        ));
        let query = IceQuery::from_pairs([
            ("service", "turn"),
            ("key", "k"),
            ("username", ""),
            ("public-addr", "198.18.9.9"),
            ("iceTransportPolicy", "relay"),
            ("ttl", "-5"),
        ])
        .unwrap();
        assert_eq!(query.username, None);
        assert_eq!(query.ttl, Some(-5));
        let config = ice_config(&sources, &query, 1_000).unwrap();
        assert_eq!(config.ice_transport_policy, "relay");
        assert_eq!(
            config.ice_servers[0].urls[0],
            "turn:198.18.9.9:3478?transport=udp"
        );
    }

    #[test]
    fn turns_urls_for_tls_and_dtls() {
        assert_eq!(
            Transport::Tls.url("turn.example.com", 443),
            "turns:turn.example.com:443?transport=tcp"
        );
        assert_eq!(
            Transport::Dtls.url("198.18.1.1", 443),
            "turns:198.18.1.1:443?transport=udp"
        );
    }

    #[test]
    fn the_turn_rest_api_answer_carries_the_same_credentials() {
        let sources = [source(rest())];
        let query = IceQuery {
            service: Some("turn".into()),
            username: Some("alice".into()),
            ttl: Some(600),
            ..IceQuery::default()
        };
        let ice = ice_config(&sources, &query, 1_000).unwrap();
        let turn = turn_credentials(&sources, &query, 1_000).unwrap();
        assert_eq!(turn.username, "1600:alice");
        assert_eq!(turn.password, rest_password("s3cret", "1600:alice"));
        assert_eq!(turn.ttl, 600);
        assert_eq!(turn.uris, ice.ice_servers[0].urls);
        // Static credentials: the static user, a day unless a ttl is asked for.
        let sources = [source(IceAuth::Static {
            user: "user-1".into(),
            password: "pass-1".into(),
        })];
        let turn_query = IceQuery {
            service: Some("turn".into()),
            ..IceQuery::default()
        };
        let turn = turn_credentials(&sources, &turn_query, 1_000).unwrap();
        assert_eq!(
            (turn.username.as_str(), turn.password.as_str(), turn.ttl),
            ("user-1", "pass-1", 86_400)
        );
        // `service` is required here.
        assert_eq!(
            turn_credentials(&sources, &IceQuery::default(), 1_000),
            Err(IceError::MissingService)
        );
        // The same refusals as /ice.
        let stun = IceQuery {
            service: Some("stun".into()),
            ..IceQuery::default()
        };
        assert_eq!(
            turn_credentials(&sources, &stun, 1_000),
            Err(IceError::UnknownService("stun".into()))
        );
        let none = IceQuery {
            service: Some("turn".into()),
            namespace: Some("nope".into()),
            ..IceQuery::default()
        };
        assert_eq!(
            turn_credentials(&sources, &none, 1_000),
            Err(IceError::NoListener)
        );
    }

    /// The service on a free loopback port, answering for the REST-auth test Gateway.
    async fn serve_test_gateway() -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let registry: Registry = Arc::default();
        registry
            .write()
            .unwrap()
            .insert(("stunner".into(), "stunner-gateway".into()), source(rest()));
        serve("127.0.0.1:0".parse().unwrap(), registry)
            .await
            .unwrap()
    }

    /// `GET path` on its own connection; the whole response, head and body.
    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_the_turn_rest_api_over_http() {
        let (addr, task) = serve_test_gateway().await;
        let response = http_get(addr, "/?service=turn&username=bob&ttl=60").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split_once("\r\n\r\n").unwrap().1;
        let turn: TurnCredentials = serde_json::from_str(body).unwrap();
        assert!(turn.username.ends_with(":bob"), "{body}");
        assert_eq!(turn.ttl, 60);
        assert_eq!(turn.uris.len(), 4, "{body}");
        task.abort();
    }

    #[tokio::test]
    async fn serves_over_http() {
        let (addr, task) = serve_test_gateway().await;
        let get = |path: &'static str| http_get(addr, path);
        let ok = get("/ice?service=turn&username=bob").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains(":bob\""), "{ok}");
        // Errors as STUNner's service answers them: status, plain text, its messages.
        let bad = get("/ice?service=stun").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        assert!(bad.contains("text/plain"), "{bad}");
        assert!(
            bad.ends_with(
                "could not generate ICE auth token: \"\\\"service\\\" must be \\\"turn\\\"\"\n"
            ),
            "{bad}"
        );
        let missing = get("/ice?service=turn&namespace=nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(
            missing.ends_with("could not generate ICE config: no valid listener found\n"),
            "{missing}"
        );
        let no_service = get("/").await;
        assert!(no_service.starts_with("HTTP/1.1 400"), "{no_service}");
        assert!(
            no_service.ends_with("Query argument service is required, but not found\n"),
            "{no_service}"
        );
        let bad_ttl = get("/?service=turn&ttl=x").await;
        assert!(bad_ttl.starts_with("HTTP/1.1 400"), "{bad_ttl}");
        assert!(
            bad_ttl.contains("Invalid format for parameter ttl"),
            "{bad_ttl}"
        );
        let no_turn = get("/?service=turn&namespace=stunner&gateway=nope").await;
        assert!(
            no_turn.ends_with("could not generate TURN auth token: no valid listener found\n"),
            "{no_turn}"
        );
        task.abort();
    }
}
