//! STUNner's dataplane configuration (`stunnerd.conf`, stunnerd's `StunnerConfig`, API versions
//! `v1` and `v1alpha1`) as one schema. `xturn-operator` renders it into a ConfigMap; `xturnd`
//! reads it from `--config` or `--config-map`. Both use these types, so whatever the operator
//! writes the agent can read.
//!
//! The schema is what a file may say, not what it means: every field whose absence means
//! something (a default from the agent's flags, "every peer" for `routes`) is an `Option`, and
//! the agent's `config` module resolves and validates it. Unknown fields are refused; fields
//! STUNner has and xturnd does not use are accepted and ignored (each says so). `null` is
//! accepted wherever a value is optional, since STUNner's JSON rendering produces it for empty
//! maps and lists.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The ConfigMap key holding the configuration (STUNner's).
pub const CONFIG_KEY: &str = "stunnerd.conf";
/// Where STUNner's agents answer health checks.
pub const HEALTH_PORT: u16 = 8086;
/// Where STUNner's agents serve metrics.
pub const METRICS_PORT: u16 = 8080;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StunnerConfig {
    /// `v1` or `v1alpha1`; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The agent itself.
    #[serde(default, deserialize_with = "null_as_default")]
    pub admin: Admin,
    /// How clients authenticate; absent: from the agent's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub listeners: Vec<Listener>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub clusters: Vec<Cluster>,
}

/// `admin`: the agent itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Instance name, for logs (the operator writes `NAMESPACE/GATEWAY`). Default "xturnd".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// STUNner's `all:INFO,turn:DEBUG` syntax (only the `all` level is used) or a tracing
    /// filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loglevel: Option<String>,
    /// `http://ADDRESS[:PORT][/PATH]`; the path is ignored. Empty: no metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// `http://ADDRESS[:PORT]`; empty or absent: no health checks (unlike stunnerd, which
    /// defaults to `http://:8086`).
    #[serde(
        default,
        alias = "health_check_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck_endpoint: Option<String>,
    /// Allocations per user; 0 or less means "not set" (STUNner: no quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_quota: Option<i64>,
    /// `None` (userspace), `XDP`, `TC`, `Auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_engine: Option<String>,
    /// Ignored by the agent: it attaches where its listeners' traffic arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_interfaces: Option<Vec<String>>,
    /// Ignored: STUNner's licensing.
    #[serde(default, skip_serializing)]
    pub license_config: Option<serde_json::Value>,
}

/// `auth`: how clients authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `static` (alias `plaintext`) or `ephemeral` (aliases `longterm`, `timewindowed`).
    /// Default `static` when credentials are given.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// `auth.credentials`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// For `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// For `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// For `ephemeral`: the TURN REST API shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Secrets stay out of logs and test failure messages.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("secret", &hidden(&self.secret))
            .finish()
    }
}

/// One of `listeners`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Required; unique (the operator writes `NAMESPACE/GATEWAY/LISTENER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TURN-UDP` (alias `UDP`; the default), `TURN-TCP`, `TURN-TLS`, `TURN-DTLS` (or `TCP`,
    /// `TLS`, `DTLS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The IP to bind; `$VAR` or `${VAR}` is read from the environment (STUNner's
    /// `$STUNNER_ADDR`, the pod IP). Default `0.0.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Default 3478.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Ignored: the address clients are told about is the operator's business.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// Ignored, like `public_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_port: Option<i64>,
    /// `v1alpha1`: the relay port range. xturnd has one range, so every listener that sets
    /// these must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_relay_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relay_port: Option<i64>,
    /// TURN-TLS / TURN-DTLS: the PEM certificate chain's file path (default --tls-cert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// TURN-TLS / TURN-DTLS: the PEM private key's file path (default --tls-key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Names of clusters this listener may reach. Absent: every peer but the deny list. Present
    /// (even empty): only the endpoints of those clusters. The operator always writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
}

/// One of `clusters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Required; unique (the operator writes `NAMESPACE/ROUTE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `STATIC` (the default); `STRICT_DNS` is refused.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `UDP` (the default); `TCP` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `IP[/LEN][:PORT[-ENDPORT]]`, IPv6 in brackets when a port follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
}

/// `null` reads as the default (STUNner writes `null` for empty lists).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parses a configuration's text, YAML or JSON (JSON is YAML). An empty text is an empty
/// configuration.
pub fn parse(text: &str) -> Result<StunnerConfig, serde_norway::Error> {
    if text.trim().is_empty() {
        return Ok(StunnerConfig::default());
    }
    serde_norway::from_str(text)
}

/// The configuration as the operator publishes it: pretty JSON, as STUNner's operator does.
pub fn to_json(config: &StunnerConfig) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_the_same() {
        let config = StunnerConfig {
            version: Some("v1".into()),
            admin: Admin {
                name: Some("stunner/udp-gateway".into()),
                offload_engine: Some("TC".into()),
                ..Admin::default()
            },
            auth: Some(Auth {
                kind: Some("ephemeral".into()),
                realm: Some("stunner.l7mp.io".into()),
                credentials: Some(Credentials {
                    secret: Some("s3cret".into()),
                    ..Credentials::default()
                }),
            }),
            listeners: vec![Listener {
                name: Some("stunner/udp-gateway/udp".into()),
                protocol: Some("TURN-UDP".into()),
                address: Some("$STUNNER_ADDR".into()),
                port: Some(3478),
                routes: Some(Vec::new()),
                ..Listener::default()
            }],
            clusters: vec![Cluster {
                name: Some("stunner/media".into()),
                kind: Some("STATIC".into()),
                protocol: Some("UDP".into()),
                endpoints: Some(vec!["198.18.2.0/24".into()]),
            }],
        };
        let text = to_json(&config).expect("serialises");
        assert_eq!(parse(&text).expect("parses"), config);
        // An empty routes list is written (it means "no peer"), absent fields are not.
        assert!(text.contains("\"routes\": []"), "{text}");
        assert!(!text.contains("public_address"), "{text}");
    }

    #[test]
    fn nulls_and_empty_texts_read_as_defaults() {
        let config =
            parse("version: v1\nlisteners: null\nclusters: null\nadmin: null\n").expect("parses");
        assert_eq!(config.listeners, []);
        assert_eq!(config.admin, Admin::default());
        assert_eq!(parse(" \n").expect("empty"), StunnerConfig::default());
        assert!(parse("bogus: 1").is_err());
    }
}
