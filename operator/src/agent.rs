//! The agent configuration the operator renders for each Gateway: STUNner's dataplane
//! configuration shape (`{version, admin, auth, listeners, clusters}`), which `xturnd --config`
//! and `xturnd --config-map` read. Only what the operator sets is modelled here; the agent's
//! reader (`relay-user`'s `config::FileConfig`) documents every field.
use serde::{Deserialize, Serialize};

/// The ConfigMap key holding the rendered configuration (STUNner's).
pub const CONFIG_KEY: &str = "stunnerd.conf";

/// Where the agents' health checks and metrics listen (STUNner's ports).
pub const HEALTH_PORT: u16 = 8086;
pub const METRICS_PORT: u16 = 8080;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub version: String,
    pub admin: Admin,
    pub auth: Auth,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// `NAMESPACE/GATEWAY`.
    pub name: String,
    pub loglevel: String,
    pub metrics_endpoint: String,
    pub healthcheck_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_quota: Option<i64>,
    /// `None`, `XDP` or `Auto`.
    pub offload_engine: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offload_interfaces: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// `static` or `ephemeral`.
    #[serde(rename = "type")]
    pub kind: String,
    pub realm: String,
    pub credentials: Credentials,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Secrets stay out of logs and test failure messages.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `NAMESPACE/GATEWAY/LISTENER`.
    pub name: String,
    /// `TURN-UDP`, `TURN-TCP`, `TURN-TLS` or `TURN-DTLS`.
    pub protocol: String,
    /// `$STUNNER_ADDR`: the pod's IP, from the downward API.
    pub address: String,
    pub port: u16,
    /// For TURN-TLS and TURN-DTLS: files, mounted from the listener's certificate Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Cluster names. Always present: an empty list reaches no peer at all.
    pub routes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `NAMESPACE/ROUTE`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub protocol: String,
    /// `IP[/LEN][:PORT[-ENDPORT]]`, IPv6 in brackets when a port follows.
    pub endpoints: Vec<String>,
}
