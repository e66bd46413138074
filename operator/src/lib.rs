//! `xturn-operator`: turns Gateway API resources (Gateway, GatewayClass) and STUNner's
//! `stunner.l7mp.io/v1` resources (GatewayConfig, UDPRoute, StaticService, Dataplane) into
//! running, configured `xturnd` relays.
//!
//! - [`crd`]: our custom resources; [`inputs`]: what rendering reads;
//! - [`render`]: Gateway → agent config, ConfigMap, workload, Service, RBAC, statuses (pure);
//! - [`reconcile`]: the controller that applies what [`render`] produced;
//! - [`ice`]: the credential service handing out ICE server configurations;
//! - [`leader`]: leader election among replicas; [`install`]: the objects that run the operator.
pub mod crd;
pub mod ice;
pub mod inputs;
pub mod install;
pub mod leader;
pub mod offline;
pub mod reconcile;
pub mod render;
