//! What a configuration means at run time, and what a changed configuration may change.
//!
//! Credentials (users, REST secrets) and the peer policy (routes, clusters) are applied to a
//! running relay without touching live allocations. Everything that shapes sockets, keys or
//! kernel maps (listeners' addresses, relay addresses and ports, the realm, threads, the data
//! plane, lifetimes and quotas) needs a restart; a reload that changes those applies the rest and
//! says which fields were left as they were. (The log level is applied by xturnd itself.)
use std::net::IpAddr;

use turn_proto::{
    auth::Credentials,
    policy::{PeerPolicy, ResolvedNames},
};

use crate::config::Config;

/// The credentials `config` describes.
pub fn credentials(config: &Config) -> Credentials {
    let mut credentials = Credentials::new(config.realm.clone());
    for (name, password) in &config.users {
        credentials = credentials.with_user(name.clone(), password.clone());
    }
    for secret in &config.auth_secrets {
        credentials = credentials.with_rest_secret(secret.clone());
    }
    credentials
}

/// The peer policy `config` describes, with `host_ips` (every address of this host) added to
/// the relay's own addresses, and its STRICT_DNS clusters' names resolved as in `names`.
pub fn policy(config: &Config, host_ips: &[IpAddr], names: &ResolvedNames) -> PeerPolicy {
    config
        .peer_policy_resolved(names)
        .own_host(host_ips.iter().copied(), (config.min_port, config.max_port))
}

/// The outcome of comparing a new configuration with the running one.
#[derive(Debug)]
pub struct Reload {
    /// Credentials to install (always: comparing secrets would mean keeping them around).
    pub credentials: Credentials,
    /// Peer policy to install.
    pub policy: PeerPolicy,
    /// Reloadable parts that changed, for the log.
    pub applied: Vec<&'static str>,
    /// Fields that changed but only take effect after a restart; the running values stay.
    pub needs_restart: Vec<&'static str>,
}

/// Compares `new` with the running `old` configuration; `names` is what STRICT_DNS names
/// resolved to so far.
pub fn plan(old: &Config, new: &Config, host_ips: &[IpAddr], names: &ResolvedNames) -> Reload {
    let mut applied = Vec::new();
    if old.users != new.users {
        applied.push("users");
    }
    if old.auth_secrets != new.auth_secrets {
        applied.push("auth secrets");
    }
    let routes = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.routes.clone(), l.routed))
            .collect::<Vec<_>>()
    };
    if old.clusters != new.clusters || routes(old) != routes(new) {
        applied.push("routes and clusters");
    }
    if old.allow_loopback_peers != new.allow_loopback_peers {
        applied.push("allow_loopback_peers");
    }

    let mut needs_restart = Vec::new();
    let addresses = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr, l.transport, l.tls.clone()))
            .collect::<Vec<_>>()
    };
    let restart_fields: [(&'static str, bool); 11] = [
        ("listeners", addresses(old) != addresses(new)),
        ("realm", old.realm != new.realm),
        (
            "relay addresses",
            (old.relay_ipv4, old.relay_ipv6) != (new.relay_ipv4, new.relay_ipv6),
        ),
        (
            "relay port range",
            (old.min_port, old.max_port) != (new.min_port, new.max_port),
        ),
        ("threads", old.threads != new.threads),
        ("dataplane", old.dataplane != new.dataplane),
        (
            "xdp_max_channels",
            old.xdp_max_channels != new.xdp_max_channels,
        ),
        (
            "lifetimes",
            (old.default_lifetime, old.max_lifetime) != (new.default_lifetime, new.max_lifetime),
        ),
        (
            "quotas",
            (
                old.max_allocations,
                old.max_allocations_per_user,
                old.max_allocations_per_ip,
                old.max_connections_per_ip,
            ) != (
                new.max_allocations,
                new.max_allocations_per_user,
                new.max_allocations_per_ip,
                new.max_connections_per_ip,
            ),
        ),
        (
            "admin endpoints",
            (old.metrics_listen, old.health_listen) != (new.metrics_listen, new.health_listen),
        ),
        ("auth type none (STUN only)", old.stun_only != new.stun_only),
    ];
    for (field, changed) in restart_fields {
        if changed {
            needs_restart.push(field);
        }
    }

    // The realm and port range stay as running: the policy must use the running ones.
    let mut effective = new.clone();
    effective.realm.clone_from(&old.realm);
    effective.min_port = old.min_port;
    effective.max_port = old.max_port;
    effective.listeners.clone_from(&old.listeners);
    for listener in &mut effective.listeners {
        if let Some(updated) = new.listeners.iter().find(|l| l.name == listener.name) {
            listener.routes.clone_from(&updated.routes);
            listener.routed = updated.routed;
        }
    }
    effective.relay_ipv4 = old.relay_ipv4;
    effective.relay_ipv6 = old.relay_ipv6;
    Reload {
        credentials: credentials(&effective),
        policy: policy(&effective, host_ips, names),
        applied,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{XturndArgs, resolve};

    fn config(yaml: &str) -> Config {
        let file = crate::config::parse_file(yaml, "test").expect("parses");
        resolve(&XturndArgs::default(), Some(&file), &|_| None).expect("valid")
    }

    const BASE: &str = r#"
version: v1
auth:
  type: static
  realm: example.org
  credentials: { username: alice, password: one }
listeners:
  - name: udp
    protocol: TURN-UDP
    address: 198.18.1.1
    port: 3478
    routes: [media]
clusters:
  - name: media
    type: STATIC
    endpoints: ["198.18.2.0/24"]
"#;

    #[test]
    fn users_and_routes_apply_without_restart() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace(
                    "username: alice, password: one",
                    "username: bob, password: two",
                )
                .replace("198.18.2.0/24", "198.18.3.0/24"),
        );
        let reload = plan(&old, &new, &[], &ResolvedNames::default());
        assert_eq!(reload.applied, vec!["users", "routes and clusters"]);
        assert!(
            reload.needs_restart.is_empty(),
            "{:?}",
            reload.needs_restart
        );
        assert!(reload.credentials.passwords("bob", 0).is_ok());
        assert!(reload.credentials.passwords("alice", 0).is_err());
        let peer_old = "198.18.2.5:5000".parse().expect("addr");
        let peer_new = "198.18.3.5:5000".parse().expect("addr");
        assert!(reload.policy.permits("udp", peer_old).is_err());
        assert!(reload.policy.permits("udp", peer_new).is_ok());
    }

    #[test]
    fn socket_and_key_shaping_fields_need_a_restart_and_keep_running_values() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("realm: example.org", "realm: other.org")
                .replace("port: 3478", "port: 3479"),
        );
        let reload = plan(&old, &new, &[], &ResolvedNames::default());
        assert_eq!(reload.needs_restart, vec!["listeners", "realm"]);
        // Credentials stay in the running realm, so live allocations' keys still verify.
        assert_eq!(reload.credentials.realm(), "example.org");
    }

    #[test]
    fn the_relay_hosts_own_addresses_stay_denied_after_a_reload() {
        let old = config(BASE);
        let reload = plan(
            &old,
            &old,
            &["198.18.2.9".parse().expect("ip")],
            &ResolvedNames::default(),
        );
        assert!(reload.applied.is_empty());
        assert!(
            reload
                .policy
                .permits("udp", "198.18.2.9:22".parse().expect("addr"))
                .is_err()
        );
    }

    #[test]
    fn a_listener_that_starts_naming_routes_is_restricted_to_them() {
        // No `routes`: the listener reaches every cluster. `routes: []`: it reaches none.
        let old = config(&BASE.replace("    routes: [media]\n", ""));
        let peer = "198.18.2.5:5000".parse().expect("addr");
        assert!(
            plan(&old, &old, &[], &ResolvedNames::default())
                .policy
                .permits("udp", peer)
                .is_ok()
        );
        let new = config(&BASE.replace("routes: [media]", "routes: []"));
        let reload = plan(&old, &new, &[], &ResolvedNames::default());
        assert!(
            reload.needs_restart.is_empty(),
            "{:?}",
            reload.needs_restart
        );
        assert!(reload.policy.permits("udp", peer).is_err());
    }

    #[test]
    fn dns_clusters_admit_what_their_names_resolved_to() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "    type: STATIC\n    endpoints: [\"198.18.2.0/24\"]",
            "    type: STRICT_DNS\n    endpoints: [media.example.org]",
        ));
        assert_eq!(new.dns_hosts().len(), 1);
        let mut names = ResolvedNames::default();
        let peer = "198.18.7.7:5000".parse().expect("addr");
        let reload = plan(&old, &new, &[], &names);
        assert_eq!(reload.applied, vec!["routes and clusters"]);
        assert!(reload.policy.permits("udp", peer).is_err());
        names.update("media.example.org", Some(vec![peer.ip()]));
        assert!(policy(&new, &[], &names).permits("udp", peer).is_ok());
        // auth type none cannot be switched on in a running relay.
        let none = config(&BASE.replace(
            "  type: static\n  realm: example.org\n  credentials: { username: alice, password: one }",
            "  type: none\n  realm: example.org",
        ));
        assert!(none.stun_only);
        assert_eq!(
            plan(&old, &none, &[], &names).needs_restart,
            vec!["auth type none (STUN only)"]
        );
    }

    #[test]
    fn a_listener_changing_transport_needs_a_restart() {
        let old = config(BASE);
        let new = config(&BASE.replace("protocol: TURN-UDP", "protocol: TURN-TCP"));
        assert_eq!(
            plan(&old, &new, &[], &ResolvedNames::default()).needs_restart,
            vec!["listeners"]
        );
    }
}
