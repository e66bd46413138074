//! The xturn agent: STUN/TURN in userspace, the XDP fast path's loader, and their glue.
//!
//! - [`turn`]: the sans-IO TURN server (bytes, addresses and `now` in; commands out).
//! - [`auth`]: long-term credentials, TURN REST API credentials, stateless nonces.
//! - [`policy`]: which peers a client may reach (routes, clusters, the default deny list).
//! - [`config`]: `xturnd`'s flags and YAML configuration file.
//! - [`reload`]: what a configuration means at run time, and what a reload may change.
//! - [`server`]: the tokio event loop that runs [`turn::Server`] over real sockets.
//! - [`client`]: a TURN client, used by `xturnctl` and the tests.
//! - [`dataplane`]: choosing XDP or userspace relaying, attaching to interfaces.
//! - [`ebpf`]: loading the XDP program and reading its maps.
//! - [`metrics`]: Prometheus metrics, collected when scraped.
//! - [`admin`]: the HTTP server for metrics, health checks and the log level.
//! - [`telemetry`]: logging (text or JSON, filter changeable at run time).
pub mod admin;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod configmap;
pub mod dataplane;
pub mod dtls;
pub mod ebpf;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod route;
pub mod server;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod turn;
