//! The xturn agent: STUN/TURN in userspace, the XDP fast path's loader, and their glue.
//!
//! The protocol itself (the TURN server state machine, credentials, peer policy, the codec) is
//! the `turn-proto` crate; this crate runs it over sockets and the kernel fast path.
//!
//! - [`config`]: `xturnd`'s flags and YAML configuration file.
//! - [`reload`]: what a configuration means at run time, and what a reload may change.
//! - [`dns`]: resolving STRICT_DNS clusters' host names, every 5 s.
//! - [`server`]: the tokio event loop that runs [`turn_proto::server::Server`] over real sockets.
//! - [`lanes`]: the data plane pinned one thread per CPU, with the kernel steering datagrams.
//! - [`dataplane`]: choosing XDP, TC or userspace relaying, attaching to interfaces.
//! - [`descriptors`]: the open-files limit and the descriptor table, sized at start.
//! - [`ceiling`]: the benchmark's ceiling XDP program (`xturn-ceiling`).
//! - [`offload`]: the kernel offload of channel bindings: applies the core's channel events,
//!   owns what the kernel relayed.
//! - [`ebpf`]: loading the kernel programs and reading their maps.
//! - [`metrics`]: Prometheus metrics, collected when scraped.
//! - [`admin`]: the HTTP server for metrics, health checks and the log level.
//! - [`telemetry`]: logging (text or JSON, filter changeable at run time).
pub mod admin;
pub mod ceiling;
pub mod channels;
pub mod config;
pub mod configmap;
pub mod dataplane;
pub mod descriptors;
pub mod dns;
pub mod dtls;
pub mod ebpf;
pub mod lanes;
pub mod metrics;
pub mod offload;
pub mod reflector;
pub(crate) mod relayed;
pub mod reload;
pub mod route;
pub mod server;
pub mod state;
pub mod stream;
pub(crate) mod tcp_relay;
pub mod telemetry;
pub mod tls;
