//! `xturnd`'s command line ([`XturndArgs`]).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use super::*;

/// `xturnd`'s command line. Every flag is optional; defaults are applied by [`load`] so that a
/// flag given explicitly can be told apart from a default (flags override the file, defaults
/// do not). `XturndArgs::default()` is "no flags at all".
/// Passwords and secrets stay out of `Debug` (see [`UserFlag`], [`SecretFlag`]).
#[derive(Clone, Default, Debug, clap::Parser)]
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

    /// Most TCP/TLS connections at once from one client IP address, per listener; more are
    /// closed at once and counted. Default: 100.
    #[arg(long, value_name = "N", env = "XTURN_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

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
    pub users: Vec<UserFlag>,

    /// A TURN REST API shared secret (time-limited credentials). Repeatable, to rotate secrets:
    /// credentials made with any of them are accepted. Replaces the file's ephemeral secret.
    #[arg(
        long = "auth-secret",
        value_name = "SECRET",
        env = "XTURN_AUTH_SECRET",
        hide_env_values = true
    )]
    pub auth_secrets: Vec<SecretFlag>,

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

    /// Log filter: STUNner's syntax ("all:INFO,turn:DEBUG"; the `all` level is used) or a
    /// tracing EnvFilter ("info", "relay_user=debug,info"); RUST_LOG wins when set. Default:
    /// the file's admin.loglevel, else "info".
    #[arg(long, value_name = "FILTER", env = "XTURN_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Worker threads, SO_REUSEPORT sockets per UDP listener, and relayed-socket readers.
    /// Default: the number of CPUs.
    #[arg(long, value_name = "N", env = "XTURN_THREADS")]
    pub threads: Option<usize>,

    /// "auto": when --threads equals the number of CPUs the agent may run on, pin one
    /// data-plane thread to each CPU and have the kernel hand each UDP datagram to the thread on
    /// the CPU that received it. "off": never pin.
    #[arg(
        long,
        value_name = "auto|off",
        env = "XTURN_CPU_AFFINITY",
        default_value = "auto"
    )]
    pub cpu_affinity: crate::lanes::CpuAffinity,

    /// Most allocations at once, all users together. Default: 10000.
    #[arg(long, value_name = "N", env = "XTURN_MAX_ALLOCATIONS")]
    pub max_allocations: Option<usize>,

    /// Most allocations at once per user name. Default: the file's admin.user_quota, else 100.
    #[arg(long, value_name = "N", env = "XTURN_MAX_ALLOCATIONS_PER_USER")]
    pub max_allocations_per_user: Option<usize>,

    /// Most allocations at once from one client IP address, whatever users it authenticates
    /// as (486 beyond it). Default: 1000.
    #[arg(long, value_name = "N", env = "XTURN_MAX_ALLOCATIONS_PER_IP")]
    pub max_allocations_per_ip: Option<usize>,

    /// Users whose usage is counted each on its own (`xturn_user_*`, `GET /usage`); the
    /// users past it count together. Default: 10000.
    #[arg(long, value_name = "N", env = "XTURN_MAX_TRACKED_USERS")]
    pub max_tracked_users: Option<usize>,

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

/// A `--user NAME:PASSWORD` value. Its `Debug` shows the name only, so the flags can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct UserFlag(pub String);

impl std::str::FromStr for UserFlag {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(UserFlag(value.to_owned()))
    }
}

impl fmt::Debug for UserFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .0
            .split_once(':')
            .map_or("<malformed>", |(name, _)| name);
        write!(f, "{name:?}")
    }
}

/// An `--auth-secret` value. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFlag(pub String);

impl std::str::FromStr for SecretFlag {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(SecretFlag(value.to_owned()))
    }
}

impl fmt::Debug for SecretFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}
