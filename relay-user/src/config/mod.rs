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
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use stunner_config::StunnerConfig as FileConfig;

pub use crate::dataplane::Dataplane;
pub use crate::telemetry::LogFormat;
use turn_proto::policy::{DnsEndpoint, Endpoint, PeerPolicy, ResolvedNames};

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
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;
const DEFAULT_MAX_ALLOCATIONS_PER_IP: usize = 1000;
const DEFAULT_MAX_TRACKED_USERS: usize = 10_000;
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
    /// An error in a file that refers to environment variables that are not set (they read
    /// as empty, as in stunnerd), which may be why.
    #[error("{error} (the configuration refers to environment variables that are not set and read as empty: {})", vars.join(", "))]
    UnsetEnv {
        error: Box<ConfigError>,
        vars: Vec<String>,
    },
}

impl ConfigError {
    /// The field or flag the error is about (`listeners[1].port`, `--user "bob"`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::UnsetEnv { error, .. } => error.field(),
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

mod args;
mod credentials;
mod listeners;

pub use args::{SecretFlag, UserFlag, XturndArgs};
use credentials::*;
use listeners::*;

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

/// Where a PEM certificate chain or key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file, read at start and again whenever it changes.
    File(PathBuf),
    /// The PEM text itself, from the configuration (STUNner's inline base64 `cert`/`key`).
    Inline(String),
}

impl PemSource {
    /// The file, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(path) => Some(path),
            PemSource::Inline(_) => None,
        }
    }
}

/// A path as itself, inline PEM by its size only (a key must not reach a log).
impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "{}", path.display()),
            PemSource::Inline(pem) => write!(f, "inline PEM ({} bytes)", pem.len()),
        }
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Inline(pem) => write!(f, "Inline(<{} bytes>)", pem.len()),
        }
    }
}

/// A listener's certificate chain and key: files, or PEM from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub cert: PemSource,
    pub key: PemSource,
}

impl TlsMaterial {
    /// Both from files.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsMaterial {
        TlsMaterial {
            cert: PemSource::File(cert.into()),
            key: PemSource::File(key.into()),
        }
    }
}

/// Parses a configuration file's text as it is (no `$VAR` expansion; see
/// [`parse_file_with_env`]). `origin` names it in errors (usually its path).
pub fn parse_file(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    stunner_config::parse(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Parses a configuration file's text as stunnerd does: `$VAR` and `${VAR}` expanded
/// everywhere but in `auth.credentials`, unset variables empty, `$STUNNER_PORT` defaulting to
/// `STUNNER_PUBLIC_PORT` or 3478 ([`stunner_config::parse_with_env`]). Returns the file and the
/// unset variables it named.
pub fn parse_file_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(FileConfig, Vec<String>), ConfigError> {
    stunner_config::parse_with_env(text, env)
        .map(|expanded| (expanded.config, expanded.unset))
        .map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
}

/// Reads and parses the file at `path` (no `$VAR` expansion).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    parse_file(&read_text(path)?, &path.display().to_string())
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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
    pub tls: Option<TlsMaterial>,
}

/// A cluster: peers clients may reach through the listeners that route to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// STATIC: its endpoints (empty for STRICT_DNS).
    pub endpoints: Vec<Endpoint>,
    /// STRICT_DNS: the host names whose addresses are its endpoints, resolved at run time
    /// ([`crate::dns`]; empty for STATIC).
    pub dns: Vec<DnsEndpoint>,
    /// `protocol: TCP`: reached through TCP allocations (RFC 6062), not UDP ones.
    pub tcp: bool,
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
    /// TCP/TLS connections per client IP address, per listener; at least 1.
    pub max_connections_per_ip: usize,
    /// Stream connections and DTLS sessions without a complete message for this long close.
    pub idle_timeout: Duration,
    /// Long-term credentials, (name, password); names unique.
    pub users: Vec<(String, String)>,
    /// TURN REST API shared secrets; any of them verifies a credential. At least one of
    /// `users` and `auth_secrets` is non-empty, unless `stun_only`.
    pub auth_secrets: Vec<String>,
    /// A STUN server only (`auth.type: none` and no credential flags): TURN requests get 403.
    pub stun_only: bool,
    /// The files `users` and `auth_secrets` were read from (`auth.credentials.*_file`): a
    /// change to any of them reloads the configuration.
    pub credential_files: Vec<PathBuf>,
    /// Test-only: loopback peers pass the deny list.
    pub allow_loopback_peers: bool,
    /// `0 < default_lifetime <= max_lifetime`.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// At least 1.
    pub max_allocations: usize,
    /// At least 1.
    pub max_allocations_per_user: usize,
    /// At least 1.
    pub max_allocations_per_ip: usize,
    /// Users counted each on its own in the usage; 0: none (all count together).
    pub max_tracked_users: usize,
    /// SO_REUSEPORT sockets per listener; at least 1.
    pub threads: usize,
    /// Whether the data plane may be pinned to CPUs ([`crate::lanes`]).
    pub cpu_affinity: crate::lanes::CpuAffinity,
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

impl Config {
    /// The host names of every STRICT_DNS cluster, for the resolver.
    pub fn dns_hosts(&self) -> std::collections::BTreeSet<String> {
        self.clusters
            .iter()
            .flat_map(|c| c.dns.iter().map(|d| d.host.clone()))
            .collect()
    }

    /// [`Config::peer_policy_resolved`] before any host name resolved: STRICT_DNS clusters
    /// admit no peer.
    pub fn peer_policy(&self) -> PeerPolicy {
        self.peer_policy_resolved(&ResolvedNames::default())
    }

    /// The peer policy this configuration describes: its listeners' addresses are denied as peers (a wildcard
    /// listener stands for the relay addresses of its family, and an IPv6 wildcard also for the
    /// IPv4 relay address, since a dual-stack socket receives IPv4 too), each listener with
    /// routes reaches exactly the endpoints of its routed clusters (a STRICT_DNS cluster's:
    /// the addresses `names` has for its host names), and `config.allow_loopback_peers` is
    /// applied.
    pub fn peer_policy_resolved(&self, names: &ResolvedNames) -> PeerPolicy {
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
                let mut endpoints = cluster.endpoints.clone();
                endpoints.extend(cluster.dns.iter().flat_map(|d| d.endpoints(names)));
                policy = if cluster.tcp {
                    policy.route_tcp(listener.name.clone(), endpoints)
                } else {
                    policy.route_cluster(listener.name.clone(), &cluster.name, endpoints)
                };
            }
        }
        policy
    }
}

/// Passwords and secrets stay out of logs.
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
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("idle_timeout", &self.idle_timeout)
            .field("users", &user_names)
            .field(
                "auth_secrets",
                &format_args!("<{} hidden>", self.auth_secrets.len()),
            )
            .field("stun_only", &self.stun_only)
            .field("allow_loopback_peers", &self.allow_loopback_peers)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .field("max_allocations", &self.max_allocations)
            .field("max_allocations_per_user", &self.max_allocations_per_user)
            .field("max_allocations_per_ip", &self.max_allocations_per_ip)
            .field("max_tracked_users", &self.max_tracked_users)
            .field("credential_files", &self.credential_files)
            .field("threads", &self.threads)
            .field("cpu_affinity", &self.cpu_affinity)
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

/// Reads `--config` (if given), merges the flags over it, and validates the result. The file's
/// `$VAR`s are expanded from the process environment ([`parse_file_with_env`]).
pub fn load(args: &XturndArgs) -> Result<Config, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    match args.config.as_deref() {
        None => resolve(args, None, &env),
        Some(path) => {
            let text = read_text(path)?;
            resolve_text(args, &text, &path.display().to_string(), &env, &|path| {
                std::fs::read_to_string(path)
            })
        }
    }
}

/// [`load`] with the file's text given (`--config-map`: the ConfigMap's); `origin` names it
/// in errors.
pub fn load_text(args: &XturndArgs, text: &str, origin: &str) -> Result<Config, ConfigError> {
    resolve_text(
        args,
        text,
        origin,
        &|name| std::env::var(name).ok(),
        &|path| std::fs::read_to_string(path),
    )
}

/// [`load_text`] without the I/O: `env` looks up the environment variables the text names,
/// `read` reads the credential files it names (`auth.credentials.password_file`, ...).
pub fn resolve_text(
    args: &XturndArgs,
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Config, ConfigError> {
    let (mut file, unset) = parse_file_with_env(text, origin, env)?;
    let credential_files = read_credential_files(file.auth.as_mut(), read)?;
    let mut config = resolve(args, Some(&file), env).map_err(|error| {
        if unset.is_empty() {
            error
        } else {
            ConfigError::UnsetEnv {
                error: Box::new(error),
                vars: unset,
            }
        }
    })?;
    config.credential_files = credential_files;
    Ok(config)
}

/// [`load`] without the I/O: `file` is the parsed file (if any) and `env` looks up the
/// environment variables a listener `address` still refers to (`$STUNNER_ADDR` in a file
/// parsed without expansion; an unset one is an error here).
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

    unread_credential_files(file.auth.as_ref())?;
    let clusters = resolve_clusters(&file.clusters)?;
    let listeners = resolve_listeners(args, file, &clusters, env)?;
    let Credentials {
        users,
        secrets: auth_secrets,
        stun_only,
    } = resolve_credentials(args, file.auth.as_ref())?;
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
        (Some(level), _) => translate_log_level("--log-level", level)?,
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
    let max_allocations_per_ip = match args.max_allocations_per_ip {
        Some(0) => return Err(invalid("--max-allocations-per-ip", "must be at least 1")),
        Some(n) => n,
        None => DEFAULT_MAX_ALLOCATIONS_PER_IP,
    };
    let max_tracked_users = args.max_tracked_users.unwrap_or(DEFAULT_MAX_TRACKED_USERS);

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
        max_connections_per_ip: match args.max_connections_per_ip {
            Some(0) => return Err(invalid("--max-connections-per-ip", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS_PER_IP,
        },
        idle_timeout: match args.idle_timeout_secs {
            Some(0) => return Err(invalid("--idle-timeout-secs", "must be at least 1")),
            Some(n) => Duration::from_secs(u64::from(n)),
            None => Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        },
        users,
        auth_secrets,
        stun_only,
        credential_files: Vec::new(),
        allow_loopback_peers: args.allow_loopback_peers,
        default_lifetime: Duration::from_secs(u64::from(default_lifetime_secs)),
        max_lifetime: Duration::from_secs(u64::from(max_lifetime_secs)),
        max_allocations,
        max_allocations_per_user,
        max_allocations_per_ip,
        max_tracked_users,
        threads,
        cpu_affinity: args.cpu_affinity,
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

    const STATIC_FIXTURE: &str = include_str!("../../tests/fixtures/stunner-static.yaml");
    const EPHEMERAL_FIXTURE: &str = include_str!("../../tests/fixtures/stunner-ephemeral.json");

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
        let doc = include_str!("../../../docs/configuration.md");
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
        // Base64 of "-----BEGIN" alone: inline, but no certificate in it.
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, protocol: TURN-TLS, cert: LS0tLS1CRUdJTg==, key: /k.pem}]",
            )),
        );
        assert_err(&e, "listeners[0].cert", "inline certificate");
        // Base64 of something else.
        let e = err(
            &[],
            Some(&with(
                "listeners: [{name: a, address: 192.0.2.1, protocol: TURN-TLS, cert: /c.pem, key: aGVsbG8=}]",
            )),
        );
        assert_err(&e, "listeners[0].key", "not of PEM text");
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
                "{base}clusters: [{{name: c, type: STRICT_DNS, endpoints: [media.svc, 'a b']}}]"
            ))),
        );
        assert_err(&e, "clusters[0].endpoints[1]", "host name");
        let e = err(
            &[],
            Some(&with(&format!("{base}clusters: [{{name: c, type: EDS}}]"))),
        );
        assert_err(
            &e,
            "clusters[0].type",
            "unknown cluster type \"EDS\" (expected STATIC or STRICT_DNS)",
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
            "unknown cluster protocol \"sctp\" (expected UDP or TCP)",
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
    fn inline_certificates_files_and_bad_values() {
        use base64::Engine as _;
        let dir = crate::tls::tests::tempdir("config-inline");
        let material = crate::tls::tests::self_signed_inline(&dir, "relay");
        std::fs::remove_dir_all(&dir).unwrap();
        let (PemSource::Inline(cert_pem), PemSource::Inline(key_pem)) =
            (&material.cert, &material.key)
        else {
            panic!("inline material");
        };
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let yaml = |cert: &str, key: &str, protocol: &str| {
            format!(
                "auth: {{credentials: {{username: u, password: p}}}}\n\
                 listeners: [{{name: t, address: 192.0.2.1, protocol: {protocol}, cert: '{cert}', key: '{key}'}}]"
            )
        };
        // STUNner's form: base64 of the PEM text, for TLS and DTLS alike.
        for protocol in ["TURN-TLS", "TURN-DTLS"] {
            let c =
                resolve_with(&[], Some(&yaml(&b64(cert_pem), &b64(key_pem), protocol))).unwrap();
            assert_eq!(c.listeners[0].tls.as_ref(), Some(&material), "{protocol}");
        }
        // Base64 wrapped over lines (as `base64` writes it) reads too.
        let wrapped: String = b64(cert_pem)
            .as_bytes()
            .chunks(76)
            .map(|line| String::from_utf8(line.to_vec()).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        let c = resolve_with(&[], Some(&yaml(&wrapped, &b64(key_pem), "TURN-TLS"))).unwrap();
        assert_eq!(c.listeners[0].tls.as_ref(), Some(&material));
        // File paths, absolute or relative, are files.
        let c = resolve_with(&[], Some(&yaml("/etc/tls/tls.crt", "tls.key", "TURN-TLS"))).unwrap();
        assert_eq!(
            c.listeners[0].tls,
            Some(TlsMaterial::files("/etc/tls/tls.crt", "tls.key"))
        );
        // The key stays out of Debug and Display.
        let debug = format!("{c:?} {material:?} {}", material.key);
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        // A broken inline key is refused, naming the field.
        let e = err(
            &[],
            Some(&yaml(
                &b64(cert_pem),
                &b64("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n"),
                "TURN-TLS",
            )),
        );
        assert_err(&e, "listeners[0].key", "inline private key");
        // A certificate where the key goes is no key either.
        let e = err(
            &[],
            Some(&yaml(&b64(cert_pem), &b64(cert_pem), "TURN-DTLS")),
        );
        assert_err(&e, "listeners[0].key", "inline private key");
    }

    /// `env` as a lookup over `vars`.
    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn no_files(path: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no file {} in this test", path.display()),
        ))
    }

    /// A mounted Secret: `DIR/KEY` reads `KEY`'s value.
    fn secret_mount(
        dir: &'static str,
        data: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&Path) -> std::io::Result<String> {
        move |path| {
            data.iter()
                .find(|(key, _)| Path::new(dir).join(key) == path)
                .map(|(_, value)| (*value).to_owned())
                .ok_or_else(|| no_files(path).unwrap_err())
        }
    }

    #[test]
    fn credentials_are_read_from_files_and_the_files_are_watched() {
        let listener = "listeners: [{name: l, address: 192.0.2.1}]\n";
        let mount = secret_mount(
            "/etc/xturn/auth",
            &[
                ("username", "alice\n"),
                ("password", "pa$$word\r\n"),
                ("secret", "s3cret"),
            ],
        );
        let text = format!(
            "auth: {{type: static, credentials: {{username_file: /etc/xturn/auth/username, \
             password_file: /etc/xturn/auth/password}}}}\n{listener}"
        );
        let c = resolve_text(&XturndArgs::default(), &text, "t", &|_| None, &mount).unwrap();
        // One trailing newline is not part of the value; `$` is not expanded.
        assert_eq!(c.users, [("alice".to_owned(), "pa$$word".to_owned())]);
        assert_eq!(
            c.credential_files,
            [
                PathBuf::from("/etc/xturn/auth/username"),
                PathBuf::from("/etc/xturn/auth/password")
            ]
        );
        let text = format!(
            "auth: {{type: ephemeral, credentials: {{secret_file: /etc/xturn/auth/secret}}}}\n{listener}"
        );
        let c = resolve_text(&XturndArgs::default(), &text, "t", &|_| None, &mount).unwrap();
        assert_eq!(c.auth_secrets, ["s3cret"]);
        assert_eq!(
            c.credential_files,
            [PathBuf::from("/etc/xturn/auth/secret")]
        );

        // A file that cannot be read names the field and the path, not a value.
        let text = format!(
            "auth: {{type: ephemeral, credentials: {{secret_file: /etc/xturn/auth/gone}}}}\n{listener}"
        );
        let e = resolve_text(&XturndArgs::default(), &text, "t", &|_| None, &mount).unwrap_err();
        assert_err(&e, "auth.credentials.secret_file", "/etc/xturn/auth/gone");
        // A value and its file: refused rather than one silently winning.
        let text = format!(
            "auth: {{credentials: {{username: u, password: p, password_file: /etc/xturn/auth/password}}}}\n{listener}"
        );
        let e = resolve_text(&XturndArgs::default(), &text, "t", &|_| None, &mount).unwrap_err();
        assert_err(&e, "auth.credentials.password_file", "not both");
        // Inline credentials name no file.
        let text = format!("auth: {{credentials: {{username: u, password: p}}}}\n{listener}");
        let c = resolve_text(&XturndArgs::default(), &text, "t", &|_| None, &mount).unwrap();
        assert!(c.credential_files.is_empty());
        // `resolve` does no I/O: files left unread are an error, not an open relay.
        let file = parse_file(
            "auth: {type: ephemeral, credentials: {secret_file: /s}}\nlisteners: [{name: l, address: 192.0.2.1}]",
            "t",
        )
        .unwrap();
        let e = resolve(&XturndArgs::default(), Some(&file), &|_| None).unwrap_err();
        assert_err(&e, "auth.credentials.secret_file", "not by resolve");
    }

    #[test]
    fn variables_are_expanded_in_the_whole_file_but_the_credentials() {
        let text = r#"{
  "version": "v1",
  "admin": {"name": "$NAMESPACE/gw", "loglevel": "${LOGLEVEL}"},
  "auth": {"type": "ephemeral", "realm": "$REALM", "credentials": {"secret": "s$ecret"}},
  "listeners": [
    {"name": "udp", "address": "$STUNNER_ADDR", "port": $STUNNER_PORT, "routes": ["media"]},
    {"name": "tcp", "protocol": "TURN-TCP", "address": "$STUNNER_ADDR", "port": $TCP_PORT}
  ],
  "clusters": [{"name": "media", "endpoints": ["$PEER_NET:<5000-5100>"]}]
}"#;
        let env = env_of(&[
            ("NAMESPACE", "ns"),
            ("LOGLEVEL", "all:DEBUG"),
            ("REALM", "example.org"),
            ("STUNNER_ADDR", "192.0.2.1"),
            ("STUNNER_PUBLIC_PORT", "3479"),
            ("TCP_PORT", "443"),
            ("PEER_NET", "198.18.0.0/16"),
        ]);
        let c = resolve_text(&XturndArgs::default(), text, "test.json", &env, &no_files).unwrap();
        assert_eq!(c.name, "ns/gw");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.realm, "example.org");
        assert_eq!(c.auth_secrets, ["s$ecret"]);
        // $STUNNER_PORT, unset: STUNNER_PUBLIC_PORT.
        assert_eq!(
            c.listeners[0].addr,
            "192.0.2.1:3479".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.listeners[1].addr,
            "192.0.2.1:443".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.clusters[0].endpoints[0].to_string(),
            "198.18.0.0/16:5000-5100"
        );
        // Unset variables read as empty; when the configuration is then refused, the error
        // says which were unset.
        let env = env_of(&[("TCP_PORT", "443"), ("PEER_NET", "198.18.0.0/16")]);
        let e =
            resolve_text(&XturndArgs::default(), text, "test.json", &env, &no_files).unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, ConfigError::UnsetEnv { .. }), "{message}");
        assert!(
            message.contains("not set and read as empty: NAMESPACE, LOGLEVEL, REALM, STUNNER_ADDR"),
            "{message}"
        );
        // `--listen` replaces the unset address: then nothing is refused.
        let args = args(&["--listen", "192.0.2.1:3478"]);
        let text = text.replace("\"$REALM\"", "\"r\"");
        let c = resolve_text(&args, &text, "test.json", &env, &no_files).unwrap();
        assert_eq!(c.realm, "r");
    }

    #[test]
    fn tcp_clusters_are_for_tcp_allocations() {
        let text = "auth: {credentials: {username: u, password: p}}\n\
                    listeners: [{name: l, protocol: TURN-TCP, address: 192.0.2.1, routes: [media, web]}]\n\
                    clusters:\n\
                    - {name: media, endpoints: ['10.0.0.0/8']}\n\
                    - {name: web, protocol: tcp, endpoints: ['198.51.100.0/24:443']}\n";
        let c = resolve_with(&[], Some(text)).unwrap();
        assert_eq!(
            c.clusters.iter().map(|c| c.tcp).collect::<Vec<_>>(),
            [false, true]
        );
        let policy = c.peer_policy();
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(
            policy
                .permits_over("l", peer("198.51.100.9:443"), true)
                .is_ok()
        );
        assert!(policy.permits("l", peer("198.51.100.9:443")).is_err());
        assert!(policy.permits("l", peer("10.1.1.1:5000")).is_ok());
        assert!(
            policy
                .permits_over("l", peer("10.1.1.1:5000"), true)
                .is_err()
        );
    }

    #[test]
    fn stunner_port_ranges_and_dns_clusters() {
        let text = "auth: {credentials: {username: u, password: p}}\n\
                    listeners: [{name: l, address: 192.0.2.1, routes: [rtp, media]}]\n\
                    clusters:\n\
                    - {name: rtp, type: STATIC, endpoints: ['10.0.0.1:<1000-2000>', 'fd00::/64:<1-100>']}\n\
                    - {name: media, type: strict_dns, endpoints: [media.svc, 'rtp.svc:<7-8>']}\n";
        let c = resolve_with(&[], Some(text)).unwrap();
        assert_eq!(c.clusters[1].endpoints, []);
        assert_eq!(
            c.clusters[1]
                .dns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["media.svc", "rtp.svc:<7-8>"]
        );
        assert_eq!(
            c.dns_hosts().into_iter().collect::<Vec<_>>(),
            ["media.svc", "rtp.svc"]
        );
        let policy = c.peer_policy();
        assert!(
            policy
                .permits("l", "10.0.0.1:1500".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .permits("l", "10.0.0.1:999".parse().unwrap())
                .is_err()
        );
        assert!(
            policy
                .permits("l", "[fd00::9]:100".parse().unwrap())
                .is_ok()
        );
        // Before the names resolve, the DNS cluster admits nothing.
        assert!(policy.permits("l", "10.9.9.9:5".parse().unwrap()).is_err());
        let mut names = ResolvedNames::default();
        names.update("media.svc", Some(vec!["10.9.9.9".parse().unwrap()]));
        names.update("rtp.svc", Some(vec!["10.9.9.10".parse().unwrap()]));
        let policy = c.peer_policy_resolved(&names);
        assert!(policy.permits("l", "10.9.9.9:5".parse().unwrap()).is_ok());
        assert!(
            policy
                .permits("l", "10.9.9.9:65000".parse().unwrap())
                .is_ok()
        );
        assert!(policy.permits("l", "10.9.9.10:7".parse().unwrap()).is_ok());
        assert!(policy.permits("l", "10.9.9.10:9".parse().unwrap()).is_err());
        assert_eq!(
            policy.cluster_of("l", "10.9.9.9:5".parse().unwrap()),
            Some(1)
        );
    }

    #[test]
    fn auth_type_none_is_a_stun_server() {
        let listener = "listeners: [{name: l, address: 192.0.2.1}]\n";
        let c = resolve_with(&[], Some(&format!("{listener}auth: {{type: none}}"))).unwrap();
        assert!(c.stun_only);
        assert!(c.users.is_empty() && c.auth_secrets.is_empty());
        let c = resolve_with(
            &[],
            Some(&format!(
                "{listener}auth: {{type: NONE, credentials: null}}"
            )),
        )
        .unwrap();
        assert!(c.stun_only);
        // Credentials from flags make it a TURN server again.
        let c = resolve_with(
            &["--user", "u:p"],
            Some(&format!("{listener}auth: {{type: none}}")),
        )
        .unwrap();
        assert!(!c.stun_only);
        assert_eq!(c.users.len(), 1);
        // Without a file or credentials: still refused.
        let e = err(&["--listen", "192.0.2.1:3478"], None);
        assert_err(&e, "auth", "auth.type none");
        let e = err(&[], Some(&format!("{listener}auth: {{type: open}}")));
        assert_err(&e, "auth.type", "expected static, ephemeral or none");
    }

    #[test]
    fn log_level_flag_takes_stunners_syntax() {
        let base = ["--listen", "192.0.2.1:3478", "--user", "u:p", "--log-level"];
        let level = |value: &'static str| {
            resolve_with(&[&base[..], &[value]].concat(), None)
                .unwrap()
                .log_level
        };
        assert_eq!(level("all:INFO,turn:DEBUG"), "info");
        assert_eq!(level("all:TRACE"), "trace");
        assert_eq!(level("relay_user=debug,info"), "relay_user=debug,info");
        let e = err(&[&base[..], &["all:LOUD"]].concat(), None);
        assert_err(&e, "--log-level", "LOUD");
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
