//! `xturnd`'s configuration: its command-line flags, its YAML configuration file, and the
//! resolved, validated [`Config`] the rest of the agent runs from.
//!
//! The file has the shape of STUNner's dataplane configuration (what `stunnerd` reads), so a
//! dataplane config rendered by STUNner's gateway operator can be given to `xturnd` as is; see
//! [`FileConfig`]. The flags ([`XturndArgs`]) follow coturn's names where coturn has one. Flags
//! override the file; [`load`] merges both, fills in defaults and refuses anything invalid with
//! one message that names the offending field or flag ([`ConfigError`]).
//!
//! `docs/configuration.md` is the user-facing description of every flag and field.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use stunner_config::{
    Auth as FileAuth, Cluster as FileCluster, Credentials as FileCredentials,
    Listener as FileListener, StunnerConfig as FileConfig,
};

pub use crate::dataplane::Dataplane;
pub use crate::telemetry::LogFormat;
use turn_proto::policy::{Endpoint, PeerPolicy};

/// The standard TURN port, STUNner's default listener port.
const DEFAULT_PORT: u16 = 3478;
/// The default relay port range: the IANA dynamic range, as coturn uses.
const DEFAULT_MIN_PORT: u16 = 49152;
const DEFAULT_MAX_PORT: u16 = 65535;
const DEFAULT_REALM: &str = "xturn";
const DEFAULT_NAME: &str = "xturnd";
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_MAX_ALLOCATIONS: usize = 10_000;
const DEFAULT_MAX_ALLOCATIONS_PER_USER: usize = 100;
const DEFAULT_LIFETIME_SECS: u32 = 600;
const DEFAULT_MAX_LIFETIME_SECS: u32 = 3600;
/// Stream connections / DTLS sessions per listener.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 900;
/// How long a SIGTERM waits for allocations to end (Kubernetes' default grace period is 30 s).
const DEFAULT_DRAIN_TIMEOUT_SECS: u32 = 30;
/// STUNner's default ports for an `http://` endpoint given without one.
const DEFAULT_METRICS_PORT: u16 = 8080;
const DEFAULT_HEALTH_PORT: u16 = 8086;
/// More threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;
/// RFC 8489: USERNAME is at most 513 bytes, REALM fewer than 128 characters.
const MAX_USERNAME_BYTES: usize = 513;
const MAX_REALM_CHARS: usize = 127;

/// Why the configuration was refused. The binary prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape (unknown field, wrong type, ...); `message`
    /// names the field and the line.
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A field or flag has a value that cannot work.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A field asks for something STUNner has and xturnd does not have yet; `hint` says what
    /// to do instead.
    #[error("{field}: {what} is not supported yet ({hint})")]
    Unsupported {
        field: String,
        what: String,
        hint: String,
    },
}

impl ConfigError {
    /// The field or flag the error is about (`listeners[1].port`, `--user "bob"`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Unsupported { field, .. } => {
                Some(field)
            }
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn unsupported(
    field: impl Into<String>,
    what: impl Into<String>,
    hint: impl Into<String>,
) -> ConfigError {
    ConfigError::Unsupported {
        field: field.into(),
        what: what.into(),
        hint: hint.into(),
    }
}

/// `xturnd`'s command line. Every flag is optional; defaults are applied by [`load`] so that a
/// flag given explicitly can be told apart from a default (flags override the file, defaults
/// do not). `XturndArgs::default()` is "no flags at all".
#[derive(Clone, Default, clap::Parser)]
#[command(
    name = "xturnd",
    version,
    about = "xturn's TURN relay agent (RFC 8656) with an XDP fast path",
    long_about = "xturn's TURN relay agent (RFC 8656) with an XDP fast path.\n\nConfiguration \
                  comes from flags and, optionally, a YAML file in the shape of STUNner's \
                  dataplane configuration (--config). Flags override the file. See \
                  docs/configuration.md."
)]
pub struct XturndArgs {
    /// A listener: [udp://|tcp://|tls://|dtls://]IP:PORT (IPv6 as [IP]:PORT; no scheme means
    /// udp). Repeatable. When given, these replace the config file's listeners; one at the
    /// address and transport of a file listener keeps that listener's name and routes, the
    /// others are named <transport>-<n> (n counts the --listen flags from 0). tls:// and
    /// dtls:// need --tls-cert and --tls-key.
    #[arg(
        long = "listen",
        value_name = "[SCHEME://]ADDR:PORT",
        env = "XTURN_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<ListenArg>,

    /// PEM certificate chain for tls:// and dtls:// listeners (and file listeners without a
    /// cert). Reloaded when the file changes; sessions already open keep theirs.
    #[arg(long, value_name = "FILE", env = "XTURN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, value_name = "FILE", env = "XTURN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Most client connections (TCP/TLS) or sessions (DTLS) at once, per listener; more are
    /// refused and counted. Default: 10000.
    #[arg(long, value_name = "N", env = "XTURN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// A TCP/TLS connection or DTLS session that delivers no complete message for this many
    /// seconds is closed (its allocation with it). Default: 900 (an allocation's client
    /// refreshes well within that).
    #[arg(long, value_name = "SECS", env = "XTURN_IDLE_TIMEOUT")]
    pub idle_timeout_secs: Option<u32>,

    /// The address relayed transport addresses are allocated on. Repeatable, at most one IPv4
    /// and one IPv6 address. Default: the listeners' own address of each family (required when a
    /// listener binds a wildcard address such as 0.0.0.0).
    #[arg(
        long = "relay-ip",
        value_name = "IP",
        env = "XTURN_RELAY_IP",
        value_delimiter = ','
    )]
    pub relay_ip: Vec<IpAddr>,

    /// Lowest relay port. Default: the file's min_relay_port, else 49152.
    #[arg(long, value_name = "PORT", env = "XTURN_MIN_PORT")]
    pub min_port: Option<u16>,

    /// Highest relay port. Default: the file's max_relay_port, else 65535.
    #[arg(long, value_name = "PORT", env = "XTURN_MAX_PORT")]
    pub max_port: Option<u16>,

    /// The authentication realm. Default: the file's auth.realm, else "xturn".
    #[arg(long, value_name = "REALM", env = "XTURN_REALM")]
    pub realm: Option<String>,

    /// A long-term credential, NAME:PASSWORD. Repeatable. Replaces the file's static
    /// credentials.
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub users: Vec<String>,

    /// A TURN REST API shared secret (time-limited credentials). Repeatable, to rotate secrets:
    /// credentials made with any of them are accepted. Replaces the file's ephemeral secret.
    #[arg(
        long = "auth-secret",
        value_name = "SECRET",
        env = "XTURN_AUTH_SECRET",
        hide_env_values = true
    )]
    pub auth_secrets: Vec<String>,

    /// A YAML configuration file in the shape of STUNner's dataplane configuration.
    #[arg(long, short = 'c', value_name = "FILE", env = "XTURN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Take the configuration file's text from this Kubernetes ConfigMap instead, read
    /// through the API (in-cluster service account, or KUBECONFIG) and watched: changes apply
    /// within about a second. Not together with --config.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        env = "XTURN_CONFIG_MAP",
        conflicts_with = "config"
    )]
    pub config_map: Option<crate::configmap::ConfigMapRef>,

    /// The ConfigMap key holding the configuration. Default: stunnerd.conf.
    #[arg(long, value_name = "KEY", env = "XTURN_CONFIG_MAP_KEY")]
    pub config_map_key: Option<String>,

    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "relay_user=debug,info"; RUST_LOG
    /// wins when set). Default: the file's admin.loglevel, else "info".
    #[arg(long, value_name = "FILTER", env = "XTURN_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// SO_REUSEPORT sockets (and worker threads) per listener. Default: the number of CPUs.
    #[arg(long, value_name = "N", env = "XTURN_THREADS")]
    pub threads: Option<usize>,

    /// Most allocations at once, all users together. Default: 10000.
    #[arg(long, value_name = "N", env = "XTURN_MAX_ALLOCATIONS")]
    pub max_allocations: Option<usize>,

    /// Most allocations at once per user name. Default: the file's admin.user_quota, else 100.
    #[arg(long, value_name = "N", env = "XTURN_MAX_ALLOCATIONS_PER_USER")]
    pub max_allocations_per_user: Option<usize>,

    /// Longest allocation lifetime a client may ask for, in seconds. Default: 3600.
    #[arg(long, value_name = "SECS", env = "XTURN_MAX_LIFETIME_SECS")]
    pub max_lifetime_secs: Option<u32>,

    /// Allocation lifetime when the client asks for none, in seconds. Default: 600.
    #[arg(long, value_name = "SECS", env = "XTURN_DEFAULT_LIFETIME_SECS")]
    pub default_lifetime_secs: Option<u32>,

    /// Data plane. Default: the file's admin.offload_engine, else auto.
    #[arg(long, value_enum, value_name = "MODE", env = "XTURN_DATAPLANE")]
    pub dataplane: Option<Dataplane>,

    /// Channel bindings the XDP maps can hold (each direction); bindings beyond it are relayed
    /// in userspace. The maps are not preallocated. Default: 1048576.
    #[arg(long, value_name = "N", env = "XTURN_XDP_MAX_CHANNELS")]
    pub xdp_max_channels: Option<u32>,

    /// DANGEROUS, for tests only: let clients relay to loopback addresses (127.0.0.0/8, ::1),
    /// i.e. to any service listening on the relay host's loopback interface.
    #[arg(long)]
    pub allow_loopback_peers: bool,

    /// Serve Prometheus metrics (/metrics) and the admin endpoint (/log-level) on this
    /// address (alias: --metrics). Default: the file's admin.metrics_endpoint, else none.
    #[arg(
        long,
        alias = "metrics",
        value_name = "ADDR:PORT",
        env = "XTURN_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve health checks (/live, /ready) on this address. Default: the file's
    /// admin.healthcheck_endpoint, else none.
    #[arg(long, value_name = "ADDR:PORT", env = "XTURN_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// On SIGTERM (or SIGINT), refuse new allocations and keep relaying until every allocation
    /// is gone or this many seconds have passed, then exit; 0 exits at once. A second signal
    /// exits at once. Default: 30.
    #[arg(long, value_name = "SECS", env = "XTURN_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u32>,

    /// Hitless restart: keep the allocation state (`state.json`) and the nonce key in this
    /// directory, and adopt them when starting. Default: none (a restart ends every allocation).
    #[arg(long, value_name = "DIR", env = "XTURN_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Hitless restart: pin the XDP maps and links in this directory, which must be on a bpffs
    /// mount, and reuse them when starting, so the kernel relays while xturnd is down. Default:
    /// none (nothing pinned; the program goes with the process).
    #[arg(long, value_name = "DIR", env = "XTURN_BPF_PIN_DIR")]
    pub bpf_pin_dir: Option<std::path::PathBuf>,

    /// Log line format: text or json (one JSON object per line). Default: text.
    #[arg(long, value_enum, value_name = "FORMAT", env = "XTURN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Passwords and secrets stay out of logs: only user names and the number of secrets show.
impl fmt::Debug for XturndArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user_names = self
            .users
            .iter()
            .map(|u| u.split_once(':').map_or("<malformed>", |(name, _)| name))
            .collect::<Vec<_>>();
        f.debug_struct("XturndArgs")
            .field("listen", &self.listen)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("relay_ip", &self.relay_ip)
            .field("min_port", &self.min_port)
            .field("max_port", &self.max_port)
            .field("realm", &self.realm)
            .field("users", &user_names)
            .field(
                "auth_secrets",
                &format_args!("<{} hidden>", self.auth_secrets.len()),
            )
            .field("config", &self.config)
            .field("config_map", &self.config_map)
            .field("config_map_key", &self.config_map_key)
            .field("log_level", &self.log_level)
            .field("threads", &self.threads)
            .field("max_allocations", &self.max_allocations)
            .field("max_allocations_per_user", &self.max_allocations_per_user)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .field("default_lifetime_secs", &self.default_lifetime_secs)
            .field("dataplane", &self.dataplane)
            .field("allow_loopback_peers", &self.allow_loopback_peers)
            .field("metrics_listen", &self.metrics_listen)
            .field("health_listen", &self.health_listen)
            .field("drain_timeout", &self.drain_timeout)
            .field("log_format", &self.log_format)
            .field("state_dir", &self.state_dir)
            .field("bpf_pin_dir", &self.bpf_pin_dir)
            .finish()
    }
}

/// How clients reach a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
    Dtls,
}

impl Transport {
    /// The STUNner protocol name (`TURN-UDP`, ...).
    pub fn protocol(self) -> &'static str {
        match self {
            Transport::Udp => "TURN-UDP",
            Transport::Tcp => "TURN-TCP",
            Transport::Tls => "TURN-TLS",
            Transport::Dtls => "TURN-DTLS",
        }
    }

    /// The `--listen` scheme and default listener name prefix.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }

    /// Whether its clients' 5-tuples are TCP (TCP and TLS) rather than UDP (UDP and DTLS).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// Whether it needs a certificate.
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Dtls)
    }

    fn from_protocol(protocol: &str) -> Option<Transport> {
        match protocol.to_ascii_uppercase().as_str() {
            "" | "UDP" | "TURN-UDP" => Some(Transport::Udp),
            "TCP" | "TURN-TCP" => Some(Transport::Tcp),
            "TLS" | "TURN-TLS" => Some(Transport::Tls),
            "DTLS" | "TURN-DTLS" => Some(Transport::Dtls),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol())
    }
}

/// One `--listen` value: a transport and an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenArg {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (transport, rest) = match text.split_once("://") {
            None => (Transport::Udp, text),
            Some((scheme, rest)) => {
                let transport = match scheme.to_ascii_lowercase().as_str() {
                    "udp" | "turn" => Transport::Udp,
                    "tcp" => Transport::Tcp,
                    "tls" | "turns" => Transport::Tls,
                    "dtls" => Transport::Dtls,
                    other => {
                        return Err(format!(
                            "unknown scheme {other:?} (expected udp, tcp, tls or dtls)"
                        ));
                    }
                };
                (transport, rest)
            }
        };
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|_| format!("{rest:?} is not IP:PORT (IPv6 as [IP]:PORT)"))?;
        Ok(ListenArg { transport, addr })
    }
}

impl From<SocketAddr> for ListenArg {
    fn from(addr: SocketAddr) -> Self {
        ListenArg {
            transport: Transport::Udp,
            addr,
        }
    }
}

/// A listener's certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Parses a configuration file's text. `origin` names it in errors (usually its path).
pub fn parse_file(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    stunner_config::parse(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Reads and parses the file at `path`.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text, &path.display().to_string())
}

/// A listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique; what routes, metrics and [`PeerPolicy`] call the listener.
    pub name: String,
    pub transport: Transport,
    /// Where it binds; may be a wildcard address.
    pub addr: SocketAddr,
    /// Names of clusters (all present in [`Config::clusters`]).
    pub routes: Vec<String>,
    /// Whether `routes` restricts the peers: true when the file lists routes for the listener,
    /// even none (then it reaches no peer, as a STUNner listener without routes); false for a
    /// listener without a `routes` field or from `--listen` alone (every peer but the deny
    /// list).
    pub routed: bool,
    /// For TLS and DTLS.
    pub tls: Option<TlsFiles>,
}

/// A STATIC cluster: peers clients may reach through the listeners that route to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
}

/// The resolved configuration: flags merged over the file, defaults filled in, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Instance name (`admin.name`), for logs.
    pub name: String,
    pub realm: String,
    /// At least one; names and addresses unique.
    pub listeners: Vec<ListenerConfig>,
    /// Names unique.
    pub clusters: Vec<ClusterConfig>,
    /// Where IPv4 relayed addresses are allocated; `None`: no IPv4 relaying.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Where IPv6 relayed addresses are allocated; `None`: no IPv6 relaying.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Relay port range, inclusive; `1 <= min_port <= max_port`.
    pub min_port: u16,
    pub max_port: u16,
    /// Per stream/DTLS listener; at least 1.
    pub max_connections: usize,
    /// Stream connections and DTLS sessions without a complete message for this long close.
    pub idle_timeout: Duration,
    /// Long-term credentials, (name, password); names unique.
    pub users: Vec<(String, String)>,
    /// TURN REST API shared secrets; any of them verifies a credential. At least one of
    /// `users` and `auth_secrets` is non-empty.
    pub auth_secrets: Vec<String>,
    /// Test-only: loopback peers pass the deny list.
    pub allow_loopback_peers: bool,
    /// `0 < default_lifetime <= max_lifetime`.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// At least 1.
    pub max_allocations: usize,
    /// At least 1.
    pub max_allocations_per_user: usize,
    /// SO_REUSEPORT sockets per listener; at least 1.
    pub threads: usize,
    pub dataplane: Dataplane,
    /// Capacity of the XDP channel maps; at least 1.
    pub xdp_max_channels: u32,
    /// A tracing `EnvFilter` directive.
    pub log_level: String,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    /// How long a shutdown waits for allocations to end; zero: not at all.
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    /// Where the allocation state and nonce key are kept (`--state-dir`).
    pub state_dir: Option<std::path::PathBuf>,
    /// Where XDP maps and links are pinned (`--bpf-pin-dir`), on bpffs.
    pub bpf_pin_dir: Option<std::path::PathBuf>,
}

/// Passwords and secrets stay out of logs.
impl Config {
    /// The peer policy this configuration describes: its listeners' addresses are denied as peers (a wildcard
    /// listener stands for the relay addresses of its family, and an IPv6 wildcard also for the
    /// IPv4 relay address, since a dual-stack socket receives IPv4 too), each listener with
    /// routes reaches exactly the endpoints of its routed clusters, and
    /// `config.allow_loopback_peers` is applied.
    pub fn peer_policy(&self) -> PeerPolicy {
        let config = self;
        let mut own = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let port = listener.addr.port();
            match listener.addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    own.extend(config.relay_ipv4.map(|r| SocketAddr::new(r.into(), port)));
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    own.extend(config.relay_ipv6.map(|r| SocketAddr::new(r.into(), port)));
                    own.extend(config.relay_ipv4.map(|r| SocketAddr::new(r.into(), port)));
                }
                _ => own.push(listener.addr),
            }
        }
        let host_ips = config
            .listeners
            .iter()
            .map(|l| l.addr.ip())
            .chain(config.relay_ipv4.map(IpAddr::V4))
            .chain(config.relay_ipv6.map(IpAddr::V6));
        let mut policy = PeerPolicy::open(own)
            .own_host(host_ips, (config.min_port, config.max_port))
            .allow_loopback(config.allow_loopback_peers);
        // Every configured cluster has a name (and metrics), routed or not.
        for cluster in &config.clusters {
            policy.cluster_index(&cluster.name);
        }
        for listener in &config.listeners {
            if !listener.routed && listener.routes.is_empty() {
                continue;
            }
            // A routed listener whose clusters have no endpoints reaches nothing.
            policy = policy.route(listener.name.clone(), Vec::new());
            for cluster in config
                .clusters
                .iter()
                .filter(|cluster| listener.routes.contains(&cluster.name))
            {
                policy = policy.route_cluster(
                    listener.name.clone(),
                    &cluster.name,
                    cluster.endpoints.clone(),
                );
            }
        }
        policy
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user_names = self.users.iter().map(|(n, _)| n).collect::<Vec<_>>();
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("realm", &self.realm)
            .field("listeners", &self.listeners)
            .field("clusters", &self.clusters)
            .field("relay_ipv4", &self.relay_ipv4)
            .field("relay_ipv6", &self.relay_ipv6)
            .field("min_port", &self.min_port)
            .field("max_port", &self.max_port)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("users", &user_names)
            .field(
                "auth_secrets",
                &format_args!("<{} hidden>", self.auth_secrets.len()),
            )
            .field("allow_loopback_peers", &self.allow_loopback_peers)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .field("max_allocations", &self.max_allocations)
            .field("max_allocations_per_user", &self.max_allocations_per_user)
            .field("threads", &self.threads)
            .field("dataplane", &self.dataplane)
            .field("xdp_max_channels", &self.xdp_max_channels)
            .field("log_level", &self.log_level)
            .field("metrics_listen", &self.metrics_listen)
            .field("health_listen", &self.health_listen)
            .field("drain_timeout", &self.drain_timeout)
            .field("log_format", &self.log_format)
            .field("state_dir", &self.state_dir)
            .field("bpf_pin_dir", &self.bpf_pin_dir)
            .finish()
    }
}

/// Reads `--config` (if given), merges the flags over it, and validates the result. Environment
/// references in the file (`$STUNNER_ADDR`) are read from the process environment.
pub fn load(args: &XturndArgs) -> Result<Config, ConfigError> {
    let file = args.config.as_deref().map(read_file).transpose()?;
    resolve(args, file.as_ref(), &|name| std::env::var(name).ok())
}

/// [`load`] with the file's text given (`--config-map`: the ConfigMap's); `origin` names it
/// in errors.
pub fn load_text(args: &XturndArgs, text: &str, origin: &str) -> Result<Config, ConfigError> {
    let file = parse_file(text, origin)?;
    resolve(args, Some(&file), &|name| std::env::var(name).ok())
}

/// [`load`] without the I/O: `file` is the parsed file (if any) and `env` looks up the
/// environment variables the file refers to.
pub fn resolve(
    args: &XturndArgs,
    file: Option<&FileConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let empty = FileConfig::default();
    let file = file.unwrap_or(&empty);
    let admin = &file.admin;

    if let Some(version) = file.version.as_deref()
        && !matches!(version, "v1" | "v1alpha1")
    {
        return Err(invalid(
            "version",
            format!("{version:?} is not supported (expected \"v1\")"),
        ));
    }

    let clusters = resolve_clusters(&file.clusters)?;
    let listeners = resolve_listeners(args, file, &clusters, env)?;
    let (users, auth_secrets) = resolve_credentials(args, file.auth.as_ref())?;
    let (relay_ipv4, relay_ipv6) = resolve_relay_ips(&args.relay_ip, &listeners)?;
    let (min_port, max_port) = resolve_port_range(args, file)?;

    let realm = match (
        &args.realm,
        file.auth.as_ref().and_then(|a| a.realm.as_ref()),
    ) {
        (Some(realm), _) => check_realm("--realm", realm)?,
        (None, Some(realm)) if !realm.is_empty() => check_realm("auth.realm", realm)?,
        (None, _) => DEFAULT_REALM.to_owned(),
    };

    let name = admin
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());

    let log_level = match (&args.log_level, &admin.loglevel) {
        (Some(level), _) if level.trim().is_empty() => {
            return Err(invalid("--log-level", "must not be empty"));
        }
        (Some(level), _) => level.clone(),
        (None, Some(level)) if !level.trim().is_empty() => {
            translate_log_level("admin.loglevel", level)?
        }
        (None, _) => DEFAULT_LOG_LEVEL.to_owned(),
    };

    let threads = match args.threads {
        Some(0) => return Err(invalid("--threads", "must be at least 1")),
        Some(n) if n > MAX_THREADS => {
            return Err(invalid(
                "--threads",
                format!("{n} is more than {MAX_THREADS}"),
            ));
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };

    let max_allocations = match args.max_allocations {
        Some(0) => return Err(invalid("--max-allocations", "must be at least 1")),
        Some(n) => n,
        None => DEFAULT_MAX_ALLOCATIONS,
    };
    let max_allocations_per_user = match (args.max_allocations_per_user, admin.user_quota) {
        (Some(0), _) => return Err(invalid("--max-allocations-per-user", "must be at least 1")),
        (Some(n), _) => n,
        (None, Some(quota)) if quota > 0 => usize::try_from(quota).unwrap_or(usize::MAX),
        (None, _) => DEFAULT_MAX_ALLOCATIONS_PER_USER,
    };

    let max_lifetime_secs = args.max_lifetime_secs.unwrap_or(DEFAULT_MAX_LIFETIME_SECS);
    let default_lifetime_secs = args.default_lifetime_secs.unwrap_or(DEFAULT_LIFETIME_SECS);
    if max_lifetime_secs == 0 {
        return Err(invalid("--max-lifetime-secs", "must be at least 1"));
    }
    if default_lifetime_secs == 0 {
        return Err(invalid("--default-lifetime-secs", "must be at least 1"));
    }
    if default_lifetime_secs > max_lifetime_secs {
        return Err(invalid(
            "--default-lifetime-secs",
            format!(
                "{default_lifetime_secs} is above the maximum lifetime {max_lifetime_secs} \
                 (--max-lifetime-secs)"
            ),
        ));
    }

    let dataplane = match (args.dataplane, &admin.offload_engine) {
        (Some(dataplane), _) => dataplane,
        (None, Some(engine)) if !engine.is_empty() => parse_offload_engine(engine)?,
        (None, _) => Dataplane::default(),
    };

    let metrics_listen = match (args.metrics_listen, &admin.metrics_endpoint) {
        (Some(addr), _) => Some(addr),
        (None, Some(url)) => {
            parse_http_endpoint("admin.metrics_endpoint", url, DEFAULT_METRICS_PORT)?
        }
        (None, None) => None,
    };
    let health_listen = match (args.health_listen, &admin.healthcheck_endpoint) {
        (Some(addr), _) => Some(addr),
        (None, Some(url)) => {
            parse_http_endpoint("admin.healthcheck_endpoint", url, DEFAULT_HEALTH_PORT)?
        }
        (None, None) => None,
    };

    Ok(Config {
        name,
        realm,
        listeners,
        clusters,
        relay_ipv4,
        relay_ipv6,
        min_port,
        max_port,
        max_connections: match args.max_connections {
            Some(0) => return Err(invalid("--max-connections", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        },
        idle_timeout: match args.idle_timeout_secs {
            Some(0) => return Err(invalid("--idle-timeout-secs", "must be at least 1")),
            Some(n) => Duration::from_secs(u64::from(n)),
            None => Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        },
        users,
        auth_secrets,
        allow_loopback_peers: args.allow_loopback_peers,
        default_lifetime: Duration::from_secs(u64::from(default_lifetime_secs)),
        max_lifetime: Duration::from_secs(u64::from(max_lifetime_secs)),
        max_allocations,
        max_allocations_per_user,
        threads,
        dataplane,
        xdp_max_channels: match args.xdp_max_channels {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    field: "--xdp-max-channels".to_owned(),
                    message: "must be at least 1".to_owned(),
                });
            }
            Some(n) => n,
            None => relay_common::DEFAULT_MAX_CHANNELS,
        },
        log_level,
        metrics_listen,
        health_listen,
        drain_timeout: Duration::from_secs(u64::from(
            args.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
        )),
        log_format: args.log_format.unwrap_or_default(),
        state_dir: args.state_dir.clone(),
        bpf_pin_dir: args.bpf_pin_dir.clone(),
    })
}

/// Checks a case-insensitive choice field: absent, empty or `accepted.0` passes; `unsupported.0`
/// is a known value we do not support yet (error with the hint `unsupported.1`); anything else is
/// invalid (`accepted.1` names what it is).
fn check_choice(
    field: &str,
    value: Option<&str>,
    accepted: (&str, &str),
    unsupported: (&'static str, &'static str),
) -> Result<(), ConfigError> {
    let upper = value.map(str::to_ascii_uppercase);
    match upper.as_deref() {
        None | Some("") => Ok(()),
        Some(v) if v == accepted.0 => Ok(()),
        Some(v) if v == unsupported.0 => {
            Err(self::unsupported(field, unsupported.0, unsupported.1))
        }
        Some(_) => Err(invalid(
            field.to_owned(),
            format!(
                "{} {:?} (expected {})",
                accepted.1,
                value.unwrap_or_default(),
                accepted.0
            ),
        )),
    }
}

fn resolve_clusters(clusters: &[FileCluster]) -> Result<Vec<ClusterConfig>, ConfigError> {
    let mut resolved: Vec<ClusterConfig> = Vec::with_capacity(clusters.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let field = format!("clusters[{i}]");
        let name = match cluster.name.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => {
                return Err(invalid(
                    format!("{field}.name"),
                    "missing (every cluster needs a name)",
                ));
            }
        };
        if let Some(first) = seen.insert(name, i) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{name:?} is also the name of clusters[{first}]"),
            ));
        }
        check_choice(
            &format!("{field}.type"),
            cluster.kind.as_deref(),
            ("STATIC", "unknown cluster type"),
            (
                "STRICT_DNS",
                "list the endpoints' IP addresses in a STATIC cluster",
            ),
        )?;
        check_choice(
            &format!("{field}.protocol"),
            cluster.protocol.as_deref(),
            ("UDP", "unknown cluster protocol"),
            ("TCP", "clusters are UDP only"),
        )?;
        let endpoints = cluster
            .endpoints
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(j, text)| {
                text.parse::<Endpoint>()
                    .map_err(|e| invalid(format!("{field}.endpoints[{j}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        resolved.push(ClusterConfig {
            name: name.to_owned(),
            endpoints,
        });
    }
    Ok(resolved)
}

/// A listener on its way to becoming a [`ListenerConfig`], with the label errors about it use.
struct Draft {
    /// `listeners[i]` or `--listen ADDR`.
    field: String,
    /// The file listener it came from, for errors about its routes.
    file_field: Option<String>,
    name: String,
    transport: Transport,
    addr: SocketAddr,
    routes: Vec<String>,
    routed: bool,
    tls: Option<TlsFiles>,
}

fn resolve_file_listener(
    i: usize,
    listener: &FileListener,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Draft, ConfigError> {
    let field = format!("listeners[{i}]");
    let name = match listener.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            return Err(invalid(
                format!("{field}.name"),
                "missing (every listener needs a name)",
            ));
        }
    };
    let transport = check_protocol(&format!("{field}.protocol"), listener.protocol.as_deref())?;

    let address = listener.address.as_deref().unwrap_or_default().trim();
    let address = match env_reference(address) {
        Some(var) => env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            invalid(
                format!("{field}.address"),
                format!("{address:?} refers to environment variable {var}, which is not set"),
            )
        })?,
        None => address.to_owned(),
    };
    let ip = if address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        address.trim().parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("{field}.address"),
                format!("{address:?} is not an IP address"),
            )
        })?
    };
    let port = match listener.port {
        None => DEFAULT_PORT,
        Some(port) => port_in_range(port).ok_or_else(|| {
            invalid(
                format!("{field}.port"),
                format!("{port} is not a valid port"),
            )
        })?,
    };
    let routes = listener.routes.clone().unwrap_or_default();
    let tls = match (&listener.cert, &listener.key) {
        (None, None) => None,
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => Some(TlsFiles {
            cert: tls_path(&format!("{field}.cert"), cert)?,
            key: tls_path(&format!("{field}.key"), key)?,
        }),
        (Some(c), Some(k)) if c.is_empty() && k.is_empty() => None,
        _ => {
            return Err(invalid(
                format!("{field}.cert"),
                "cert and key go together (give both or neither)",
            ));
        }
    };
    Ok(Draft {
        file_field: Some(field.clone()),
        field,
        name,
        transport,
        addr: SocketAddr::new(ip, port),
        routes,
        routed: listener.routes.is_some(),
        tls,
    })
}

/// `$NAME` or `${NAME}` → `NAME`.
fn env_reference(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('$')?;
    let name = match rest.strip_prefix('{') {
        Some(braced) => braced.strip_suffix('}')?,
        None => rest,
    };
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

fn port_in_range(port: i64) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A certificate or key named by a listener: a file path. (STUNner's operator puts inline
/// base64 PEM here; ours mounts the Secret and names the files.)
fn tls_path(field: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let looks_like_path =
        value.starts_with('/') || value.starts_with("./") || value.starts_with("../");
    if looks_like_path {
        Ok(PathBuf::from(value))
    } else {
        Err(unsupported(
            field,
            "an inline certificate or key",
            "give the path of a PEM file (absolute, or starting with ./)",
        ))
    }
}

fn check_protocol(field: &str, protocol: Option<&str>) -> Result<Transport, ConfigError> {
    let Some(protocol) = protocol else {
        return Ok(Transport::Udp);
    };
    Transport::from_protocol(protocol).ok_or_else(|| {
        invalid(
            field,
            format!(
                "unknown listener protocol {protocol:?} (expected TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS)"
            ),
        )
    })
}

fn resolve_listeners(
    args: &XturndArgs,
    file: &FileConfig,
    clusters: &[ClusterConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let file_listeners = file.listeners.as_slice();
    let drafts = if args.listen.is_empty() {
        file_listeners
            .iter()
            .enumerate()
            .map(|(i, l)| resolve_file_listener(i, l, env))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        // --listen replaces the file's listeners. File listeners are consulted only for the
        // name and routes of one at the same address, so a file listener xturnd could not run
        // (TURN-TCP, an unset $STUNNER_ADDR) does not stand in the way of the flags.
        let usable = file_listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| resolve_file_listener(i, l, env).ok())
            .collect::<Vec<_>>();
        args.listen
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let addr = listen.addr;
                let transport = listen.transport;
                let field = format!("--listen {}://{addr}", transport.scheme());
                match usable
                    .iter()
                    .find(|d| d.addr == addr && d.transport == transport)
                {
                    Some(from_file) => Draft {
                        field,
                        file_field: from_file.file_field.clone(),
                        name: from_file.name.clone(),
                        transport,
                        addr,
                        routes: from_file.routes.clone(),
                        routed: from_file.routed,
                        tls: from_file.tls.clone(),
                    },
                    None => Draft {
                        field,
                        file_field: None,
                        name: format!("{}-{i}", transport.scheme()),
                        transport,
                        addr,
                        routes: Vec::new(),
                        routed: false,
                        tls: None,
                    },
                }
            })
            .collect()
    };

    if drafts.is_empty() {
        return Err(invalid(
            "listeners",
            "no listener configured (give --listen ADDR:PORT or listeners in the config file)",
        ));
    }

    let cluster_names = clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect::<HashSet<_>>();
    for (i, draft) in drafts.iter().enumerate() {
        let ip = draft.addr.ip();
        if draft.addr.port() == 0 {
            return Err(invalid(&draft.field, "0 is not a valid port"));
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(invalid(
                &draft.field,
                format!("{ip} is not a unicast address"),
            ));
        }
        for earlier in drafts[..i].iter() {
            if earlier.name == draft.name {
                return Err(invalid(
                    &draft.field,
                    format!(
                        "listener name {:?} is also used by {}",
                        draft.name, earlier.field
                    ),
                ));
            }
            // A TCP and a UDP socket may share an address (TURN-UDP and TURN-TCP on 3478).
            if earlier.transport.is_stream() != draft.transport.is_stream() {
                continue;
            }
            if earlier.addr == draft.addr {
                return Err(invalid(
                    &draft.field,
                    format!("{} is also the address of {}", draft.addr, earlier.field),
                ));
            }
            let (a, b) = (earlier.addr.ip(), ip);
            if earlier.addr.port() == draft.addr.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.is_unspecified() || b.is_unspecified())
            {
                return Err(invalid(
                    &draft.field,
                    format!(
                        "{} overlaps {} at {}",
                        draft.addr, earlier.field, earlier.addr
                    ),
                ));
            }
        }
        for (j, route) in draft.routes.iter().enumerate() {
            if !cluster_names.contains(route.as_str()) {
                let base = draft.file_field.as_deref().unwrap_or(&draft.field);
                return Err(invalid(
                    format!("{base}.routes[{j}]"),
                    format!("no cluster named {route:?}"),
                ));
            }
        }
    }

    drafts
        .into_iter()
        .map(|d| {
            let tls = if d.transport.is_secure() {
                let files = d.tls.or_else(|| match (&args.tls_cert, &args.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                });
                Some(files.ok_or_else(|| {
                    invalid(
                        &d.field,
                        format!(
                            "a {} listener needs a certificate and key (cert/key in the file, or --tls-cert and --tls-key)",
                            d.transport
                        ),
                    )
                })?)
            } else {
                None
            };
            Ok(ListenerConfig {
                name: d.name,
                transport: d.transport,
                addr: d.addr,
                routes: d.routes,
                routed: d.routed,
                tls,
            })
        })
        .collect()
}

fn resolve_relay_ips(
    flags: &[IpAddr],
    listeners: &[ListenerConfig],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ConfigError> {
    let mut v4: Option<Ipv4Addr> = None;
    let mut v6: Option<Ipv6Addr> = None;
    for ip in flags {
        if ip.is_unspecified() || ip.is_multicast() || *ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(invalid(
                format!("--relay-ip {ip}"),
                "not a unicast address relayed addresses can be allocated on",
            ));
        }
        let duplicate = match ip {
            IpAddr::V4(ip) => v4.replace(*ip).filter(|prev| prev != ip).map(IpAddr::V4),
            IpAddr::V6(ip) => v6.replace(*ip).filter(|prev| prev != ip).map(IpAddr::V6),
        };
        if let Some(prev) = duplicate {
            return Err(invalid(
                format!("--relay-ip {ip}"),
                format!(
                    "a second address of the same family as {prev} (give at most one IPv4 and one IPv6 address)"
                ),
            ));
        }
    }
    if v4.is_none() {
        v4 = relay_ip_from_listeners(listeners, "IPv4", |ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })?;
    }
    if v6.is_none() {
        v6 = relay_ip_from_listeners(listeners, "IPv6", |ip| match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })?;
    }
    Ok((v4, v6))
}

/// The relay address of one family, taken from the listeners: their one specific address of
/// that family, `None` if no listener has that family.
fn relay_ip_from_listeners<T>(
    listeners: &[ListenerConfig],
    family: &str,
    of_family: impl Fn(IpAddr) -> Option<T>,
) -> Result<Option<T>, ConfigError>
where
    T: Copy + PartialEq + fmt::Display + Into<IpAddr>,
{
    let mut specific: Option<(T, &str)> = None;
    let mut wildcard: Option<&ListenerConfig> = None;
    for listener in listeners {
        let Some(ip) = of_family(listener.addr.ip()) else {
            continue;
        };
        if ip.into().is_unspecified() {
            wildcard = wildcard.or(Some(listener));
            continue;
        }
        match specific {
            None => specific = Some((ip, &listener.name)),
            Some((first, first_name)) if first != ip => {
                return Err(invalid(
                    "--relay-ip",
                    format!(
                        "listeners {first_name:?} ({first}) and {:?} ({ip}) bind different {family} \
                         addresses; give --relay-ip to choose the one to relay from",
                        listener.name
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    match (specific, wildcard) {
        (Some((ip, _)), _) => Ok(Some(ip)),
        (None, Some(listener)) => Err(invalid(
            "--relay-ip",
            format!(
                "listener {:?} binds the wildcard address {}; give --relay-ip with the {family} \
                 address to relay from",
                listener.name,
                listener.addr.ip()
            ),
        )),
        (None, None) => Ok(None),
    }
}

/// One end of the relay port range and the field it came from.
struct PortSetting {
    port: u16,
    field: String,
}

fn resolve_port_range(args: &XturndArgs, file: &FileConfig) -> Result<(u16, u16), ConfigError> {
    let file_listeners = file.listeners.as_slice();
    let from_file = |get: fn(&FileListener) -> Option<i64>,
                     key: &str|
     -> Result<Option<PortSetting>, ConfigError> {
        let mut found: Option<PortSetting> = None;
        for (i, listener) in file_listeners.iter().enumerate() {
            let Some(value) = get(listener) else {
                continue;
            };
            let field = format!("listeners[{i}].{key}");
            let port = port_in_range(value)
                .ok_or_else(|| invalid(&field, format!("{value} is not a valid port")))?;
            match &found {
                None => found = Some(PortSetting { port, field }),
                Some(first) if first.port != port => {
                    return Err(invalid(
                        field,
                        format!(
                            "{port} differs from {} {} (xturnd has one relay port range)",
                            first.field, first.port
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(found)
    };
    let file_min = from_file(|l| l.min_relay_port, "min_relay_port")?;
    let file_max = from_file(|l| l.max_relay_port, "max_relay_port")?;

    let pick =
        |flag: Option<u16>, name: &str, file: Option<PortSetting>, default: u16| match (flag, file)
        {
            (Some(0), _) => Err(invalid(name, "0 is not a valid port")),
            (Some(port), _) => Ok(PortSetting {
                port,
                field: name.to_owned(),
            }),
            (None, Some(from_file)) => Ok(from_file),
            (None, None) => Ok(PortSetting {
                port: default,
                field: format!("{name} (default)"),
            }),
        };
    let min = pick(args.min_port, "--min-port", file_min, DEFAULT_MIN_PORT)?;
    let max = pick(args.max_port, "--max-port", file_max, DEFAULT_MAX_PORT)?;
    if min.port > max.port {
        return Err(invalid(
            format!("{}, {}", min.field, max.field),
            format!("min_port {} > max_port {}", min.port, max.port),
        ));
    }
    Ok((min.port, max.port))
}

/// The kind of credentials the file's `auth` section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Static,
    Ephemeral,
}

type Credentials = (Vec<(String, String)>, Vec<String>);

fn resolve_credentials(
    args: &XturndArgs,
    auth: Option<&FileAuth>,
) -> Result<Credentials, ConfigError> {
    // The file's credentials, checked only when the flags do not replace them.
    let file_kind = match auth {
        // `auth` with neither a type nor credentials (only a realm, say) holds no credentials.
        Some(FileAuth {
            kind: None,
            credentials: None,
            ..
        })
        | None => None,
        Some(auth) => Some(
            match auth.kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("" | "static" | "plaintext") => AuthKind::Static,
                Some("ephemeral" | "longterm" | "timewindowed") => AuthKind::Ephemeral,
                Some(_) => {
                    return Err(invalid(
                        "auth.type",
                        format!(
                            "unknown authentication type {:?} (expected static or ephemeral)",
                            auth.kind.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            },
        ),
    };
    let no_credentials = FileCredentials::default();
    let credentials = auth
        .and_then(|a| a.credentials.as_ref())
        .unwrap_or(&no_credentials);
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());

    let users = if !args.users.is_empty() {
        parse_users(&args.users)?
    } else if file_kind == Some(AuthKind::Static) {
        let (Some(name), Some(password)) = (
            non_empty(&credentials.username),
            non_empty(&credentials.password),
        ) else {
            return Err(invalid(
                "auth",
                "type static needs credentials.username and credentials.password",
            ));
        };
        check_username("auth.credentials.username", &name)?;
        vec![(name, password)]
    } else {
        Vec::new()
    };

    let mut secrets: Vec<String> = Vec::new();
    if !args.auth_secrets.is_empty() {
        for secret in &args.auth_secrets {
            if secret.is_empty() {
                return Err(invalid("--auth-secret", "empty secret"));
            }
            if !secrets.contains(secret) {
                secrets.push(secret.clone());
            }
        }
    } else if file_kind == Some(AuthKind::Ephemeral) {
        let Some(secret) = non_empty(&credentials.secret) else {
            return Err(invalid("auth", "type ephemeral needs credentials.secret"));
        };
        secrets.push(secret);
    }

    if users.is_empty() && secrets.is_empty() {
        return Err(invalid(
            "auth",
            "no credentials configured: give --user NAME:PASSWORD, --auth-secret SECRET or \
             auth.credentials in the config file (xturnd refuses to run as an open relay)",
        ));
    }
    Ok((users, secrets))
}

fn parse_users(flags: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut users: Vec<(String, String)> = Vec::with_capacity(flags.len());
    for flag in flags {
        // No colon means no password, so the value can be quoted back safely; past this point
        // only the name is.
        let Some((name, password)) = flag.split_once(':') else {
            return Err(invalid(
                format!("--user {flag:?}"),
                "expected name:password",
            ));
        };
        if name.is_empty() {
            return Err(invalid(
                "--user",
                "empty user name (expected name:password)",
            ));
        }
        let field = format!("--user {name:?}");
        if password.is_empty() {
            return Err(invalid(field, "empty password (expected name:password)"));
        }
        check_username(&field, name)?;
        if users.iter().any(|(n, _)| n == name) {
            return Err(invalid(field, "user given twice"));
        }
        users.push((name.to_owned(), password.to_owned()));
    }
    Ok(users)
}

fn check_username(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.len() > MAX_USERNAME_BYTES {
        return Err(invalid(
            field,
            format!("user name longer than {MAX_USERNAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_realm(field: &str, realm: &str) -> Result<String, ConfigError> {
    if realm.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if realm.chars().count() > MAX_REALM_CHARS {
        return Err(invalid(
            field,
            format!("longer than {MAX_REALM_CHARS} characters"),
        ));
    }
    Ok(realm.to_owned())
}

/// STUNner's `all:INFO,turn:DEBUG` becomes the tracing filter `info` (component names are
/// STUNner's, so only `all` carries over); anything else is taken as a tracing filter already.
fn translate_log_level(field: &str, level: &str) -> Result<String, ConfigError> {
    let items = level.split(',').map(str::trim).collect::<Vec<_>>();
    let stunner_style = items.iter().all(|item| {
        item.split_once(':').is_some_and(|(component, level)| {
            !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && !level.is_empty()
                && level.chars().all(|c| c.is_ascii_alphabetic())
        })
    });
    if !stunner_style {
        return Ok(level.trim().to_owned());
    }
    let mut result = DEFAULT_LOG_LEVEL.to_owned();
    for item in items {
        let Some((component, level)) = item.split_once(':') else {
            continue;
        };
        if !component.eq_ignore_ascii_case("all") {
            continue;
        }
        result = match level.to_ascii_lowercase().as_str() {
            lower @ ("trace" | "debug" | "info" | "warn" | "error") => lower.to_owned(),
            "warning" => "warn".to_owned(),
            "disable" | "disabled" | "off" | "none" => "off".to_owned(),
            _ => {
                return Err(invalid(
                    field,
                    format!(
                        "unknown log level {level:?} (expected TRACE, DEBUG, INFO, WARN, ERROR \
                         or DISABLE)"
                    ),
                ));
            }
        };
    }
    Ok(result)
}

fn parse_offload_engine(engine: &str) -> Result<Dataplane, ConfigError> {
    const FIELD: &str = "admin.offload_engine";
    match engine.to_ascii_lowercase().as_str() {
        "none" => Ok(Dataplane::Userspace),
        "xdp" => Ok(Dataplane::Xdp),
        "auto" => Ok(Dataplane::Auto),
        "tc" => Ok(Dataplane::Tc),
        _ => Err(invalid(
            FIELD,
            format!("unknown offload engine {engine:?} (expected None, XDP, TC or Auto)"),
        )),
    }
}

/// STUNner's `http://ADDRESS[:PORT][/PATH]` as a listen address; empty: none. An empty address
/// is every address, `localhost` is 127.0.0.1, anything else must be an IP address.
fn parse_http_endpoint(
    field: &str,
    url: &str,
    default_port: u16,
) -> Result<Option<SocketAddr>, ConfigError> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| invalid(field, format!("{url:?}: {why}"));
    let Some(rest) = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .and_then(|_| url.get(7..))
    else {
        return Err(bad("expected http://ADDRESS:PORT"));
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(bad("\"[\" without a matching \"]\""));
        };
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("only \":PORT\" may follow \"]\"")),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        host => host
            .parse::<IpAddr>()
            .map_err(|_| bad(&format!("{host:?} is not an IP address")))?,
    };
    let port = match port {
        None | Some("") => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("{port:?} is not a valid port")))?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use turn_proto::policy::PeerDenied;

    const STATIC_FIXTURE: &str = include_str!("../tests/fixtures/stunner-static.yaml");
    const EPHEMERAL_FIXTURE: &str = include_str!("../tests/fixtures/stunner-ephemeral.json");

    fn args(flags: &[&str]) -> XturndArgs {
        XturndArgs::try_parse_from(std::iter::once("xturnd").chain(flags.iter().copied()))
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn pod_env(name: &str) -> Option<String> {
        (name == "STUNNER_ADDR").then(|| "10.244.1.7".to_owned())
    }

    fn file(text: &str) -> FileConfig {
        parse_file(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn resolve_with(flags: &[&str], text: Option<&str>) -> Result<Config, ConfigError> {
        let parsed = text.map(file);
        resolve(&args(flags), parsed.as_ref(), &pod_env)
    }

    #[track_caller]
    fn err(flags: &[&str], text: Option<&str>) -> ConfigError {
        match resolve_with(flags, text) {
            Ok(config) => panic!("{flags:?} should be refused, got {config:?}"),
            Err(e) => e,
        }
    }

    /// The error's message starts with `field: ` and contains `needle`.
    #[track_caller]
    fn assert_err(e: &ConfigError, field: &str, needle: &str) {
        let message = e.to_string();
        assert_eq!(e.field(), Some(field), "{message}");
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }

    #[test]
    fn listeners_of_every_transport() {
        let c = resolve_with(
            &[
                "--listen",
                "tcp://192.0.2.1:3478",
                "--listen",
                "192.0.2.1:3478",
                "--listen",
                "tls://192.0.2.1:443",
                "--listen",
                "dtls://192.0.2.1:443",
                "--tls-cert",
                "/etc/xturn/tls.crt",
                "--tls-key",
                "/etc/xturn/tls.key",
                "--user",
                "u:p",
            ],
            None,
        )
        .unwrap();
        let got: Vec<_> = c
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.transport, l.addr.port(), l.tls.is_some()))
            .collect();
        assert_eq!(
            got,
            [
                ("tcp-0", Transport::Tcp, 3478, false),
                ("udp-1", Transport::Udp, 3478, false),
                ("tls-2", Transport::Tls, 443, true),
                ("dtls-3", Transport::Dtls, 443, true),
            ]
        );
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        // Two listeners of one socket type on one address still clash.
        let e = err(
            &[
                "--listen",
                "tcp://192.0.2.1:3478",
                "--listen",
                "tls://192.0.2.1:3478",
                "--tls-cert",
                "/c",
                "--tls-key",
                "/k",
                "--user",
                "u:p",
            ],
            None,
        );
        assert_err(&e, "--listen tls://192.0.2.1:3478", "also the address");
        assert!(XturndArgs::try_parse_from(["xturnd", "--listen", "sctp://192.0.2.1:1"]).is_err());
    }

    #[test]
    fn file_routes_present_but_empty_reach_nothing() {
        // The operator renders `routes: []` for a Gateway without UDPRoutes.
        let c = resolve_with(
            &["--user", "u:p"],
            Some(
                "listeners:\n- {name: u, address: 192.0.2.1, protocol: TURN-UDP, routes: []}\n\
                 - {name: t, address: 192.0.2.1, protocol: TURN-TCP}\n",
            ),
        )
        .unwrap();
        assert!(c.listeners[0].routed && c.listeners[0].routes.is_empty());
        assert!(!c.listeners[1].routed);
        let policy = c.peer_policy();
        let peer: SocketAddr = "198.18.2.1:5000".parse().unwrap();
        assert!(policy.permits("u", peer).is_err());
        assert!(policy.permits("t", peer).is_ok());
    }

    #[test]
    fn stunner_static_config() {
        let c = resolve_with(&[], Some(STATIC_FIXTURE)).unwrap();
        assert_eq!(c.name, "stunner/udp-gateway");
        assert_eq!(c.realm, "stunner.l7mp.io");
        assert_eq!(c.users, vec![("user-1".to_owned(), "pass-1".to_owned())]);
        assert!(c.auth_secrets.is_empty());
        assert_eq!(
            c.listeners,
            vec![ListenerConfig {
                name: "stunner/udp-gateway/udp-listener".into(),
                transport: Transport::Udp,
                addr: "10.244.1.7:3478".parse().unwrap(),
                routes: vec!["stunner/media-plane".into()],
                routed: true,
                tls: None,
            }]
        );
        assert_eq!(c.relay_ipv4, Some(Ipv4Addr::new(10, 244, 1, 7)));
        assert_eq!(c.relay_ipv6, None);
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].name, "stunner/media-plane");
        assert_eq!(
            c.clusters[0]
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "10.244.0.0/16",
                "10.96.12.34",
                "[fd00:10:244::/64]:10000-20000"
            ]
        );
        assert_eq!(c.log_level, "info");
        assert_eq!(c.metrics_listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.health_listen, Some("0.0.0.0:8086".parse().unwrap()));
        assert_eq!(c.dataplane, Dataplane::Userspace);
        assert_eq!(c.max_allocations_per_user, 20);
        // Defaults.
        assert_eq!((c.min_port, c.max_port), (49152, 65535));
        assert_eq!(c.max_allocations, 10_000);
        assert_eq!(c.default_lifetime, Duration::from_secs(600));
        assert_eq!(c.max_lifetime, Duration::from_secs(3600));
        assert!(c.threads >= 1);
        assert!(!c.allow_loopback_peers);
    }

    #[test]
    fn stunner_ephemeral_config_in_json() {
        let c = resolve_with(&[], Some(EPHEMERAL_FIXTURE)).unwrap();
        assert!(c.users.is_empty());
        assert_eq!(c.auth_secrets, ["my-shared-secret"]);
        assert_eq!(c.realm, "example.org");
        assert_eq!(c.log_level, "debug");
        assert_eq!((c.min_port, c.max_port), (32768, 60999));
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.health_listen, None);
        assert_eq!(c.dataplane, Dataplane::Auto);
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.listeners[1].addr,
            "[2001:db8::7]:3478".parse::<SocketAddr>().unwrap()
        );
        assert!(c.listeners[1].routes.is_empty());
        assert_eq!(c.relay_ipv4, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(c.relay_ipv6, Some("2001:db8::7".parse().unwrap()));
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("```yaml\n").map(|i| i + "```yaml\n".len());
        let example = start.and_then(|s| doc[s..].find("\n```").map(|e| &doc[s..s + e]));
        let example = example.expect("docs/configuration.md has a YAML example");
        let c = resolve_with(&[], Some(example)).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.auth_secrets, ["change-me"]);
        assert_eq!(c.clusters[0].endpoints.len(), 3);
        assert_eq!(c.relay_ipv6, Some("2001:db8::10".parse().unwrap()));
    }

    #[test]
    fn auth_type_aliases() {
        for (kind, creds, static_) in [
            ("plaintext", "{username: u, password: p}", true),
            ("Static", "{username: u, password: p}", true),
            ("longterm", "{secret: s}", false),
            ("timewindowed", "{secret: s}", false),
        ] {
            let text = format!(
                "auth: {{type: {kind}, credentials: {creds}}}\nlisteners: [{{name: l, address: 192.0.2.1}}]"
            );
            let c = resolve_with(&[], Some(&text)).unwrap();
            assert_eq!(!c.users.is_empty(), static_, "{kind}");
            assert_eq!(!c.auth_secrets.is_empty(), !static_, "{kind}");
        }
    }

    #[test]
    fn load_reads_the_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/xturnd-minimal.yaml"
        );
        let c = load(&args(&["--config", path])).unwrap();
        assert_eq!(c.listeners[0].name, "udp");
        assert_eq!(
            c.listeners[0].addr,
            "192.0.2.1:3478".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.users, [("alice".to_owned(), "secret".to_owned())]);

        let missing = load(&args(&["--config", "/nonexistent/xturnd.yaml"])).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        assert!(missing.to_string().contains("/nonexistent/xturnd.yaml"));
    }

    #[test]
    fn flags_only() {
        let c = resolve_with(
            &[
                "--listen",
                "192.0.2.1:3478",
                "--listen",
                "[2001:db8::1]:3478",
                "--user",
                "alice:pa:ss",
                "--user=bob:x",
                "--auth-secret",
                "s1",
                "--auth-secret",
                "s2",
                "--realm",
                "example.com",
                "--min-port",
                "40000",
                "--max-port",
                "40100",
                "--threads",
                "3",
                "--max-allocations",
                "5",
                "--max-allocations-per-user",
                "2",
                "--max-lifetime-secs",
                "1200",
                "--default-lifetime-secs",
                "300",
                "--dataplane",
                "xdp",
                "--log-level",
                "relay_user=debug,info",
                "--metrics-listen",
                "127.0.0.1:9090",
                "--health-listen",
                "[::]:8086",
                "--allow-loopback-peers",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            c.listeners,
            vec![
                ListenerConfig {
                    name: "udp-0".into(),
                    transport: Transport::Udp,
                    addr: "192.0.2.1:3478".parse().unwrap(),
                    routes: vec![],
                    routed: false,
                    tls: None,
                },
                ListenerConfig {
                    name: "udp-1".into(),
                    transport: Transport::Udp,
                    addr: "[2001:db8::1]:3478".parse().unwrap(),
                    routes: vec![],
                    routed: false,
                    tls: None,
                },
            ]
        );
        assert_eq!(c.relay_ipv4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(c.relay_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            c.users,
            [("alice".into(), "pa:ss".into()), ("bob".into(), "x".into())]
        );
        assert_eq!(c.auth_secrets, ["s1", "s2"]);
        assert_eq!(c.realm, "example.com");
        assert_eq!((c.min_port, c.max_port), (40000, 40100));
        assert_eq!(c.threads, 3);
        assert_eq!(c.max_allocations, 5);
        assert_eq!(c.max_allocations_per_user, 2);
        assert_eq!(c.max_lifetime, Duration::from_secs(1200));
        assert_eq!(c.default_lifetime, Duration::from_secs(300));
        assert_eq!(c.dataplane, Dataplane::Xdp);
        assert_eq!(c.log_level, "relay_user=debug,info");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.health_listen, Some("[::]:8086".parse().unwrap()));
        assert!(c.allow_loopback_peers);
        assert!(c.clusters.is_empty());
        assert_eq!(c.name, "xturnd");

        // The minimum: one listener, one credential.
        let c = resolve_with(&["--listen", "127.0.0.1:3478", "--auth-secret", "s"], None).unwrap();
        assert_eq!(c.realm, "xturn");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.dataplane, Dataplane::Auto);
        assert_eq!(c.max_allocations_per_user, 100);
        assert_eq!(c.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn stunner_offload_engines_map_to_data_planes() {
        for (engine, plane) in [
            ("None", Dataplane::Userspace),
            ("XDP", Dataplane::Xdp),
            ("TC", Dataplane::Tc),
            ("tc", Dataplane::Tc),
            ("Auto", Dataplane::Auto),
        ] {
            assert_eq!(parse_offload_engine(engine).unwrap(), plane, "{engine}");
        }
        assert!(parse_offload_engine("eBPF").is_err());
    }

    #[test]
    fn operations_flags() {
        let base = ["--listen", "127.0.0.1:3478", "--user", "a:b"];
        let c = resolve_with(&base, None).unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_listen, None);

        let mut flags = base.to_vec();
        flags.extend([
            "--drain-timeout",
            "0",
            "--log-format",
            "json",
            "--metrics",
            "127.0.0.1:9100",
        ]);
        let c = resolve_with(&flags, None).unwrap();
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));

        let mut flags = base.to_vec();
        flags.extend(["--log-format", "xml"]);
        assert!(
            XturndArgs::try_parse_from(std::iter::once("xturnd").chain(flags.iter().copied()))
                .is_err()
        );
    }

    #[test]
    fn flags_override_the_file() {
        let c = resolve_with(
            &[
                "--listen",
                "10.244.1.7:3478",
                "--listen",
                "10.244.1.7:3479",
                "--user",
                "carol:pw",
                "--realm",
                "override.example",
                "--log-level",
                "warn",
                "--dataplane",
                "xdp",
                "--max-allocations-per-user",
                "7",
                "--metrics-listen",
                "127.0.0.1:1",
                "--min-port",
                "50000",
            ],
            Some(STATIC_FIXTURE),
        )
        .unwrap();
        // The listener at the file listener's address keeps its name and routes.
        assert_eq!(c.listeners[0].name, "stunner/udp-gateway/udp-listener");
        assert_eq!(c.listeners[0].routes, ["stunner/media-plane"]);
        assert_eq!(c.listeners[1].name, "udp-1");
        assert!(c.listeners[1].routes.is_empty());
        assert_eq!(c.users, [("carol".to_owned(), "pw".to_owned())]);
        assert_eq!(c.realm, "override.example");
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.dataplane, Dataplane::Xdp);
        assert_eq!(c.max_allocations_per_user, 7);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(c.health_listen, Some("0.0.0.0:8086".parse().unwrap()));
        assert_eq!((c.min_port, c.max_port), (50000, 65535));

        // --listen replaces file listeners xturnd could not run.
        let text = "listeners: [{name: tcp, protocol: TURN-TCP, address: $UNSET}]\n\
                    auth: {credentials: {username: u, password: p}}";
        let c = resolve_with(&["--listen", "192.0.2.9:3478"], Some(text)).unwrap();
        assert_eq!(c.listeners[0].name, "udp-0");
        // ... and --auth-secret adds to the file's static credentials.
        let c = resolve_with(
            &["--listen", "192.0.2.9:3478", "--auth-secret", "s"],
            Some(text),
        )
        .unwrap();
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.auth_secrets, ["s"]);
    }

    #[test]
    fn ipv6_listeners() {
        let c = resolve_with(
            &[
                "--listen",
                "[::]:3478",
                "--relay-ip",
                "2001:db8::9",
                "--user",
                "u:p",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.relay_ipv6, Some("2001:db8::9".parse().unwrap()));
        assert_eq!(c.relay_ipv4, None);

        let e = err(&["--listen", "[::]:3478", "--user", "u:p"], None);
        assert_err(&e, "--relay-ip", "IPv6");
        let e = err(&["--listen", "0.0.0.0:3478", "--user", "u:p"], None);
        assert_err(&e, "--relay-ip", "wildcard");
        // One relay IP per family, and the listeners' family is not constrained by the flag.
        let c = resolve_with(
            &[
                "--listen",
                "0.0.0.0:3478",
                "--listen",
                "[2001:db8::2]:3478",
                "--relay-ip",
                "192.0.2.3",
                "--user",
                "u:p",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.relay_ipv4, Some(Ipv4Addr::new(192, 0, 2, 3)));
        assert_eq!(c.relay_ipv6, Some("2001:db8::2".parse().unwrap()));

        let text = "listeners: [{name: v6, address: '2001:db8::5', port: 3479}]\n\
                    auth: {credentials: {username: u, password: p}}";
        let c = resolve_with(&[], Some(text)).unwrap();
        assert_eq!(
            c.listeners[0].addr,
            "[2001:db8::5]:3479".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let creds = "auth: {credentials: {username: u, password: p}}\n";
        let with = |rest: &str| format!("{creds}{rest}");

        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1}, {name: b, address: 192.0.2.1, port: 0}]",
            )),
        );
        assert_err(&e, "listeners[1].port", "0 is not a valid port");
        assert_eq!(e.to_string(), "listeners[1].port: 0 is not a valid port");

        let e = err(&[], Some(&with("listeners: [{name: a, port: 70000}]")));
        assert_err(&e, "listeners[0].port", "70000 is not a valid port");

        let e = err(
            &["--listen", "192.0.2.1:3478"],
            Some(&with(
                "clusters: [{name: c, endpoints: [10.0.0.1, '10.0.0.2:5000', 10.0.0.0/33]}]",
            )),
        );
        assert_eq!(
            e.to_string(),
            r#"clusters[0].endpoints[2]: "10.0.0.0/33" is not an IP prefix"#
        );

        let e = err(&["--listen", "192.0.2.1:3478", "--user", "bob"], None);
        assert_eq!(e.to_string(), r#"--user "bob": expected name:password"#);
        let e = err(&["--listen", "192.0.2.1:3478", "--user", ":pw"], None);
        assert_err(&e, "--user", "empty user name");
        let e = err(&["--listen", "192.0.2.1:3478", "--user", "bob:"], None);
        assert_err(&e, r#"--user "bob""#, "empty password");
        let e = err(
            &[
                "--listen",
                "192.0.2.1:3478",
                "--user",
                "bob:a",
                "--user",
                "bob:b",
            ],
            None,
        );
        assert_err(&e, r#"--user "bob""#, "twice");
        assert!(!e.to_string().contains(":a") && !e.to_string().contains(":b"));
        let e = err(&["--listen", "192.0.2.1:3478", "--auth-secret", ""], None);
        assert_err(&e, "--auth-secret", "empty");

        let e = err(
            &[],
            Some("auth: {type: static, credentials: {username: u}}\nlisteners: [{name: l}]"),
        );
        assert_eq!(
            e.to_string(),
            "auth: type static needs credentials.username and credentials.password"
        );
        let e = err(
            &[],
            Some("auth: {type: ephemeral, credentials: {username: u}}\nlisteners: [{name: l}]"),
        );
        assert_err(&e, "auth", "credentials.secret");
        let e = err(&[], Some("auth: {type: oauth}\nlisteners: [{name: l}]"));
        assert_err(&e, "auth.type", "oauth");

        let e = err(
            &[
                "--listen",
                "192.0.2.1:3478",
                "--user",
                "u:p",
                "--min-port",
                "60000",
                "--max-port",
                "50000",
            ],
            None,
        );
        assert_err(
            &e,
            "--min-port, --max-port",
            "min_port 60000 > max_port 50000",
        );
        let e = err(
            &[
                "--listen",
                "192.0.2.1:3478",
                "--user",
                "u:p",
                "--min-port",
                "0",
            ],
            None,
        );
        assert_err(&e, "--min-port", "0 is not a valid port");
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, min_relay_port: 40000}, \
                 {name: b, address: 192.0.2.1, port: 1, min_relay_port: 41000}]",
            )),
        );
        assert_err(&e, "listeners[1].min_relay_port", "differs");

        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, routes: [c, nope]}]\nclusters: [{name: c}]",
            )),
        );
        assert_eq!(
            e.to_string(),
            r#"listeners[0].routes[1]: no cluster named "nope""#
        );

        let e = err(&["--user", "u:p"], None);
        assert_err(&e, "listeners", "no listener");
        let e = err(&["--user", "u:p"], Some("listeners: []"));
        assert_err(&e, "listeners", "no listener");

        let e = err(&["--listen", "192.0.2.1:3478"], None);
        assert_err(&e, "auth", "open relay");
        let e = err(&["--listen", "192.0.2.1:3478"], Some("auth: {realm: r}"));
        assert_err(&e, "auth", "open relay");

        let e = err(&[], Some(&with("listeners: [{address: 192.0.2.1}]")));
        assert_err(&e, "listeners[0].name", "missing");
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1}, {name: a, address: 192.0.2.2}]",
            )),
        );
        assert_err(&e, "listeners[1]", "also used by listeners[0]");
        let e = err(
            &[
                "--listen",
                "192.0.2.1:3478",
                "--listen",
                "192.0.2.1:3478",
                "--user",
                "u:p",
            ],
            None,
        );
        assert_err(&e, "--listen udp://192.0.2.1:3478", "also the address");
        let e = err(
            &[
                "--listen",
                "0.0.0.0:3478",
                "--listen",
                "192.0.2.1:3478",
                "--user",
                "u:p",
            ],
            None,
        );
        assert_err(&e, "--listen udp://192.0.2.1:3478", "overlaps");
        let e = err(&["--listen", "192.0.2.1:0", "--user", "u:p"], None);
        assert_err(&e, "--listen udp://192.0.2.1:0", "0 is not a valid port");
        let e = err(&["--listen", "224.0.0.1:3478", "--user", "u:p"], None);
        assert_err(&e, "--listen udp://224.0.0.1:3478", "unicast");
        let e = err(
            &[],
            Some(&with("listeners: [{name: a, address: example.com}]")),
        );
        assert_err(&e, "listeners[0].address", "not an IP address");
        let e = err(
            &[],
            Some(&with("listeners: [{name: a, address: $UNSET_VAR}]")),
        );
        assert_err(&e, "listeners[0].address", "UNSET_VAR, which is not set");

        let e = err(
            &[],
            Some(&with("listeners: [{name: a, protocol: TURN-SCTP}]")),
        );
        assert_err(&e, "listeners[0].protocol", "unknown listener protocol");
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, protocol: TURN-TLS}]",
            )),
        );
        assert_err(&e, "listeners[0]", "needs a certificate and key");
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, protocol: TURN-TLS, cert: LS0tLS1CRUdJTg==, key: /k.pem}]",
            )),
        );
        assert_err(&e, "listeners[0].cert", "inline certificate");
        assert!(matches!(e, ConfigError::Unsupported { .. }));
        for proto in ["tls", "DTLS", "TURN-TLS", "TURN-DTLS"] {
            let e = err(
                &[],
                Some(&with(&format!(
                    "listeners: [{{name: a, address: 192.0.2.1, protocol: {proto}}}]"
                ))),
            );
            assert_err(&e, "listeners[0]", "needs a certificate and key");
        }
        let e = err(&[], Some(&with("listeners: [{name: a, protocol: SCTP}]")));
        assert_err(&e, "listeners[0].protocol", "unknown listener protocol");

        let base = "listeners: [{name: a, address: 192.0.2.1}]\n";
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}clusters: [{{name: c, type: STRICT_DNS, endpoints: [media.svc]}}]"
            ))),
        );
        assert!(matches!(e, ConfigError::Unsupported { .. }), "{e}");
        assert_eq!(e.field(), Some("clusters[0].type"));
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}clusters: [{{name: c, protocol: TCP}}]"
            ))),
        );
        assert_eq!(e.field(), Some("clusters[0].protocol"));
        let e = err(
            &[],
            Some(&with(&format!("{base}clusters: [{{name: c, type: EDS}}]"))),
        );
        assert_err(
            &e,
            "clusters[0].type",
            "unknown cluster type \"EDS\" (expected STATIC)",
        );
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}clusters: [{{name: c, protocol: sctp}}]"
            ))),
        );
        assert_err(
            &e,
            "clusters[0].protocol",
            "unknown cluster protocol \"sctp\" (expected UDP)",
        );
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}clusters: [{{name: c}}, {{name: c}}]"
            ))),
        );
        assert_err(&e, "clusters[1].name", "clusters[0]");
        let e = err(
            &[],
            Some(&with(&format!("{base}clusters: [{{endpoints: []}}]"))),
        );
        assert_err(&e, "clusters[0].name", "missing");

        let e = err(&[], Some(&with(&format!("{base}version: v2"))));
        assert_err(&e, "version", "v2");
        let e = err(
            &[],
            Some(&with(&format!("{base}admin: {{offload_engine: eBPF}}"))),
        );
        assert_err(&e, "admin.offload_engine", "eBPF");
        let e = err(
            &[],
            Some(&with(&format!("{base}admin: {{loglevel: 'all:LOUD'}}"))),
        );
        assert_err(&e, "admin.loglevel", "LOUD");
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}admin: {{metrics_endpoint: ':8080'}}"
            ))),
        );
        assert_err(&e, "admin.metrics_endpoint", "http://");
        let e = err(
            &[],
            Some(&with(&format!(
                "{base}admin: {{healthcheck_endpoint: 'http://pod:1'}}"
            ))),
        );
        assert_err(&e, "admin.healthcheck_endpoint", "not an IP address");

        let flags = ["--listen", "192.0.2.1:3478", "--user", "u:p"];
        let with_flags =
            |extra: &[&'static str]| -> Vec<&'static str> { [&flags[..], extra].concat() };
        assert_err(
            &err(&with_flags(&["--threads", "0"]), None),
            "--threads",
            "at least 1",
        );
        assert_err(
            &err(&with_flags(&["--max-allocations", "0"]), None),
            "--max-allocations",
            "at least 1",
        );
        assert_err(
            &err(&with_flags(&["--max-allocations-per-user", "0"]), None),
            "--max-allocations-per-user",
            "at least 1",
        );
        assert_err(
            &err(&with_flags(&["--default-lifetime-secs", "7200"]), None),
            "--default-lifetime-secs",
            "above the maximum lifetime 3600",
        );
        assert_err(
            &err(&with_flags(&["--max-lifetime-secs", "0"]), None),
            "--max-lifetime-secs",
            "at least 1",
        );
        assert_err(
            &err(&with_flags(&["--realm", ""]), None),
            "--realm",
            "empty",
        );
        assert_err(
            &err(
                &with_flags(&["--relay-ip", "192.0.2.1", "--relay-ip", "192.0.2.2"]),
                None,
            ),
            "--relay-ip 192.0.2.2",
            "at most one IPv4",
        );
        assert_err(
            &err(&with_flags(&["--relay-ip", "0.0.0.0"]), None),
            "--relay-ip 0.0.0.0",
            "unicast",
        );
        assert_err(
            &err(
                &[
                    "--listen",
                    "192.0.2.1:3478",
                    "--listen",
                    "192.0.2.2:3478",
                    "--user",
                    "u:p",
                ],
                None,
            ),
            "--relay-ip",
            "different IPv4",
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        for (text, field) in [
            ("listeners: [{name: a, adress: 192.0.2.1}]", "adress"),
            ("admin: {log_level: INFO}", "log_level"),
            ("auth: {credentials: {user: u}}", "user"),
            ("clusters: [{name: c, endpoint: []}]", "endpoint"),
            ("listener: []", "listener"),
        ] {
            let e = parse_file(text, "x.yaml").unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }));
            let message = e.to_string();
            assert!(
                message.contains(&format!("unknown field `{field}`")),
                "{message}"
            );
            assert!(message.starts_with("config file x.yaml: "), "{message}");
        }
        let e = parse_file("listeners: [{name: a, port: udp}]", "x.yaml").unwrap_err();
        assert!(e.to_string().contains("listeners[0].port"), "{e}");
        // STUNner fields xturnd ignores are accepted.
        parse_file(
            "admin: {offload_interfaces: [eth0], license_config: {key: k, hmac: h}}\n\
             listeners: [{name: a, public_address: 1.2.3.4, public_port: 3478, cert: c, key: k}]",
            "x.yaml",
        )
        .unwrap();
        // Nulls, as STUNner's JSON rendering has them, and an empty file.
        parse_file(r#"{"auth": {"credentials": null}, "listeners": null}"#, "x").unwrap();
        parse_file("  \n", "x").unwrap();
    }

    #[test]
    fn environment_references() {
        assert_eq!(env_reference("$STUNNER_ADDR"), Some("STUNNER_ADDR"));
        assert_eq!(env_reference("${STUNNER_ADDR}"), Some("STUNNER_ADDR"));
        assert_eq!(env_reference("$"), None);
        assert_eq!(env_reference("${A"), None);
        assert_eq!(env_reference("10.0.0.1"), None);
        let text = "listeners: [{name: a, address: '${STUNNER_ADDR}'}]\n\
                    auth: {credentials: {username: u, password: p}}";
        let parsed = file(text);
        let c = resolve(&XturndArgs::default(), Some(&parsed), &pod_env).unwrap();
        assert_eq!(
            c.listeners[0].addr,
            "10.244.1.7:3478".parse::<SocketAddr>().unwrap()
        );
        let e = resolve(&XturndArgs::default(), Some(&parsed), &no_env).unwrap_err();
        assert_err(&e, "listeners[0].address", "STUNNER_ADDR");
    }

    #[test]
    fn log_levels() {
        let t = |s| translate_log_level("f", s).unwrap();
        assert_eq!(t("all:INFO"), "info");
        assert_eq!(t("all:WARN,turn:DEBUG"), "warn");
        assert_eq!(t("turn:DEBUG,all:trace"), "trace");
        assert_eq!(t("stunner:DEBUG"), "info");
        assert_eq!(t("all:DISABLE"), "off");
        assert_eq!(t("debug"), "debug");
        assert_eq!(
            t("relay_user::server=trace,info"),
            "relay_user::server=trace,info"
        );
    }

    #[test]
    fn http_endpoints() {
        let p = |s| parse_http_endpoint("f", s, 8080);
        assert_eq!(p("").unwrap(), None);
        assert_eq!(
            p("http://:9000").unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(p("http://").unwrap(), Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(
            p("HTTP://10.0.0.1/metrics").unwrap(),
            Some("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            p("http://[::1]:81/x/y").unwrap(),
            Some("[::1]:81".parse().unwrap())
        );
        assert_eq!(
            p("http://[::]").unwrap(),
            Some("[::]:8080".parse().unwrap())
        );
        assert_eq!(
            p("http://localhost:1").unwrap(),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert!(p("https://:1").is_err());
        assert!(p("http://:0").is_err());
        assert!(p("http://[::1").is_err());
        assert!(p("http://a:b:c").is_err());
        assert!(p("h").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let a = args(&[
            "--listen",
            "192.0.2.1:3478",
            "--user",
            "alice:hunter2",
            "--auth-secret",
            "topsecret",
        ]);
        let c = resolve(&a, None, &no_env).unwrap();
        for debug in [format!("{a:?}"), format!("{c:?}")] {
            assert!(debug.contains("alice"), "{debug}");
            assert!(
                !debug.contains("hunter2") && !debug.contains("topsecret"),
                "{debug}"
            );
        }
        let f = file("auth: {credentials: {username: u, password: hunter2}}");
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn policy_from_config() {
        let c = resolve_with(
            &[
                "--listen",
                "10.244.1.7:3479",
                "--listen",
                "[::]:3478",
                "--relay-ip",
                "2001:db8::1",
            ],
            Some(STATIC_FIXTURE),
        )
        .unwrap();
        // The first --listen matches no file listener: open; the file's routed listener is gone.
        let policy = c.peer_policy();
        assert_eq!(
            policy.permits("udp-0", "8.8.8.8:53".parse().unwrap()),
            Ok(())
        );

        let c = resolve_with(&[], Some(STATIC_FIXTURE)).unwrap();
        let policy = c.peer_policy();
        let routed = "stunner/udp-gateway/udp-listener";
        assert_eq!(
            policy.permits(routed, "10.244.3.4:40000".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            policy.permits(routed, "10.96.12.34:1".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            policy.permits(routed, "[fd00:10:244::5]:15000".parse().unwrap()),
            Ok(())
        );
        assert!(matches!(
            policy.permits(routed, "[fd00:10:244::5]:9999".parse().unwrap()),
            Err(PeerDenied::NoRoute { .. })
        ));
        assert!(matches!(
            policy.permits(routed, "8.8.8.8:53".parse().unwrap()),
            Err(PeerDenied::NoRoute { .. })
        ));
        assert_eq!(
            policy.permits_ip(routed, "fd00:10:244::5".parse().unwrap()),
            Ok(())
        );
        // The listener itself is inside the routed cluster but still refused.
        assert!(matches!(
            policy.permits(routed, "10.244.1.7:3478".parse().unwrap()),
            Err(PeerDenied::DefaultDeny { .. })
        ));
        // Other listeners (none here) are unrouted.
        assert_eq!(
            policy.permits("other", "8.8.8.8:53".parse().unwrap()),
            Ok(())
        );

        // Wildcard listeners stand for the relay addresses; loopback follows the config.
        let c = resolve_with(
            &[
                "--listen",
                "[::]:3478",
                "--relay-ip",
                "2001:db8::1",
                "--relay-ip",
                "192.0.2.1",
                "--user",
                "u:p",
                "--allow-loopback-peers",
            ],
            None,
        )
        .unwrap();
        let policy = c.peer_policy();
        assert!(
            policy
                .permits("udp-0", "[2001:db8::1]:3478".parse().unwrap())
                .is_err()
        );
        assert!(
            policy
                .permits("udp-0", "192.0.2.1:3478".parse().unwrap())
                .is_err()
        );
        assert_eq!(
            policy.permits("udp-0", "192.0.2.1:50000".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            policy.permits("udp-0", "127.0.0.1:5000".parse().unwrap()),
            Ok(())
        );
        assert!(
            policy
                .permits_ip("udp-0", "169.254.169.254".parse().unwrap())
                .is_err()
        );
    }
}
