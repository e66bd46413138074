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
//!
//! [`parse`] reads the text as it is; [`parse_with_env`] first expands `$VAR` and `${VAR}`
//! everywhere but in `auth.credentials`, as stunnerd does (the agent reads files that way).
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
///
/// `type: none` makes the agent a STUN server only: Binding requests are answered and every
/// TURN request is refused with 403, with no credentials (STUNner's "STUN mode").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `static` (alias `plaintext`), `ephemeral` (aliases `longterm`, `timewindowed`) or
    /// `none` (STUN only, no TURN); case ignored. Default `static` when credentials are given.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// `auth.credentials`. Its values are never `$VAR`-expanded (see [`parse_with_env`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// For `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// For `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// For `ephemeral`: the TURN REST API shared secret. A TURN REST username carries its
    /// expiry (UNIX seconds) as any of its `:`-separated parts: the first part that is a
    /// signed integer (`1700000000:alice`, `alice:1700000000`, `a:1700000000:b`); a username
    /// with none, or with 0 there, is refused, as is one whose expiry has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// xturn: read `username` from this file (absolute path) instead, and again whenever the
    /// file changes. What the operator writes: the values live in a Secret mounted into the
    /// agent's pod, never in the ConfigMap. One trailing newline is not part of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    /// xturn: `password` from a file, like `username_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// xturn: `secret` from a file, like `username_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
}

/// Secrets stay out of logs and test failure messages.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("secret", &hidden(&self.secret))
            .field("username_file", &self.username_file)
            .field("password_file", &self.password_file)
            .field("secret_file", &self.secret_file)
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
    /// The IP to bind. STUNner's operator writes `$STUNNER_ADDR` (the pod IP, from the
    /// environment; [`parse_with_env`] expands it, and the agent also reads a `$VAR` or
    /// `${VAR}` left here). Empty or absent: `0.0.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Default 3478. Written as `$STUNNER_PORT` it is that variable, else
    /// `STUNNER_PUBLIC_PORT`, else 3478 ([`parse_with_env`]).
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
    /// TURN-TLS / TURN-DTLS: the PEM certificate chain, either inline as STUNner's operator
    /// writes it (standard base64 of the PEM text) or as a file path (absolute or `./`,
    /// watched for changes). Absent: `--tls-cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// TURN-TLS / TURN-DTLS: the PEM private key, inline (base64 of the PEM text) or a file
    /// path, like `cert`. Absent: `--tls-key`.
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
    /// `STATIC` (the default: `endpoints` are addresses and prefixes) or `STRICT_DNS`
    /// (`endpoints` are host names, resolved (A and AAAA) at start and every 5 s; a peer is
    /// admitted when its address is one they resolved to, on any port). Case ignored.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `UDP` (the default); `TCP` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// STATIC: `IP[/LEN]`, optionally with ports, either STUNner's `IP[/LEN]:<MIN-MAX>`
    /// (literal angle brackets; IPv6 needs no brackets: `fd00::1:<1-100>`) or
    /// `IP[/LEN]:PORT[-ENDPORT]` (IPv6 in brackets: `[fd00::1]:5000`). No ports: every port.
    /// STRICT_DNS: host names, optionally with `:<MIN-MAX>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
}

impl StunnerConfig {
    /// The part of the configuration a running agent takes only when it starts: the listeners
    /// without their routes, the realm, and the admin settings but the name and log level.
    /// Users, secrets, routes, clusters and the log level are applied without a restart
    /// (docs/configuration.md, "Reloading the configuration"). The operator hashes this into the
    /// pod template, so that changing any of it rolls the agents.
    pub fn start_settings(&self) -> StunnerConfig {
        StunnerConfig {
            version: None,
            admin: Admin {
                name: None,
                loglevel: None,
                license_config: None,
                ..self.admin.clone()
            },
            auth: self.auth.as_ref().map(|auth| Auth {
                kind: None,
                realm: auth.realm.clone(),
                credentials: None,
            }),
            listeners: self
                .listeners
                .iter()
                .map(|listener| Listener {
                    routes: None,
                    ..listener.clone()
                })
                .collect(),
            clusters: Vec::new(),
        }
    }
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

/// A configuration read with [`parse_with_env`], and the environment variables its text named
/// that were not set (they read as empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub config: StunnerConfig,
    /// Names of unset variables the text referred to, in order of first use, each once.
    pub unset: Vec<String>,
}

/// Parses a configuration's text as stunnerd does, with environment variables expanded:
///
/// - `$NAME` and `${NAME}` anywhere in the text are replaced with the variable's value (Go's
///   `os.ExpandEnv` rules: `NAME` is letters, digits and `_`, or one of the shell's special
///   characters; an unset variable is empty; a `$` followed by nothing that can be a name
///   stays). Expansion is textual and comes before parsing, so a variable may fill a number
///   (`port: $STUNNER_PORT`) or any string (`realm: $REALM`).
/// - Except `auth.credentials`: its values are taken from the text as written, never expanded,
///   since a password or secret may contain `$`.
/// - `STUNNER_PORT` always has a value: the variable if it is a decimal number, else
///   `STUNNER_PUBLIC_PORT` if that is an integer, else `3478` (stunnerd's default; it sets the
///   variable, this only reads it that way).
///
/// `env` looks variables up (the process environment, or a test's map).
pub fn parse_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, serde_norway::Error> {
    let lookup = |name: &str| -> Option<String> {
        if name == "STUNNER_PORT" {
            return Some(stunner_port(env));
        }
        env(name)
    };
    let (expanded, _) = expand_env(text, &lookup);
    let mut config = parse(&expanded)?;
    // The text again with every `$` reference replaced by a placeholder that reads as a plain
    // string wherever it stands (`${TLS_PORT}` in a JSON number would not), to find the
    // credentials as written and the references outside them.
    let mut references: Vec<Reference<'_>> = Vec::new();
    let protected = rewrite_references(text, |reference| {
        references.push(reference);
        placeholder(references.len() - 1)
    });
    let raw: Option<serde_norway::Value> = serde_norway::from_str(&protected).ok();
    if let Some(auth) = config.auth.as_mut()
        && let Some(literal) = raw.as_ref().and_then(literal_credentials)
    {
        auth.credentials = literal.map(|credentials| Credentials {
            username: credentials.username.map(|v| restore(v, &references)),
            password: credentials.password.map(|v| restore(v, &references)),
            secret: credentials.secret.map(|v| restore(v, &references)),
            username_file: credentials.username_file.map(|v| restore(v, &references)),
            password_file: credentials.password_file.map(|v| restore(v, &references)),
            secret_file: credentials.secret_file.map(|v| restore(v, &references)),
        });
    }
    // The unset variables outside the credentials (whose text stays out of messages).
    let mut unset: Vec<String> = Vec::new();
    if let Some(mut raw) = raw {
        if let Some(auth) = raw.get_mut("auth").and_then(|a| a.as_mapping_mut()) {
            auth.remove("credentials");
        }
        let rest = serde_norway::to_string(&raw).unwrap_or_default();
        for (index, reference) in references.iter().enumerate() {
            if let Some(name) = reference.name
                && lookup(name).is_none()
                && rest.contains(&placeholder(index))
                && !unset.iter().any(|u| u == name)
            {
                unset.push(name.to_owned());
            }
        }
    }
    Ok(Expanded { config, unset })
}

/// The stand-in for the `index`th `$` reference: letters and digits only, closed by a letter
/// so that no placeholder is the start of another.
fn placeholder(index: usize) -> String {
    format!("xturnenvref{index}x")
}

/// `value` with the placeholders of `references` put back to the text they stood for.
fn restore(mut value: String, references: &[Reference<'_>]) -> String {
    for (index, reference) in references.iter().enumerate().rev() {
        let stand_in = placeholder(index);
        if value.contains(&stand_in) {
            value = value.replace(&stand_in, reference.text);
        }
    }
    value
}

/// What `$STUNNER_PORT` means (see [`parse_with_env`]).
fn stunner_port(env: &dyn Fn(&str) -> Option<String>) -> String {
    let decimal = |v: &String| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    if let Some(port) = env("STUNNER_PORT").filter(decimal) {
        return port;
    }
    env("STUNNER_PUBLIC_PORT")
        .and_then(|v| v.parse::<i64>().ok())
        .map_or_else(|| "3478".to_owned(), |port| port.to_string())
}

/// `auth.credentials` as the unexpanded text has it: `Some(None)` for none (or `null`), `None`
/// when they do not read (then the expanded credentials stand).
fn literal_credentials(raw: &serde_norway::Value) -> Option<Option<Credentials>> {
    match raw.get("auth").and_then(|auth| auth.get("credentials")) {
        None | Some(serde_norway::Value::Null) => Some(None),
        Some(credentials) => serde_norway::from_value(credentials.clone()).ok().map(Some),
    }
}

/// Go's `os.Expand` over `text`: returns the expanded text and the names `lookup` had no value
/// for (each once).
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut unset: Vec<String> = Vec::new();
    let out = rewrite_references(text, |reference| match reference.name {
        // Bad syntax (`${` without `}`, or `${}`): eaten.
        None => String::new(),
        Some(name) => lookup(name).unwrap_or_else(|| {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_owned());
            }
            String::new()
        }),
    });
    (out, unset)
}

/// One `$` reference in a text.
#[derive(Debug, Clone, Copy)]
struct Reference<'a> {
    /// The variable's name; `None` for bad syntax (`${` without `}`, or `${}`).
    name: Option<&'a str>,
    /// The whole reference as written, `$` included.
    text: &'a str,
}

/// `text` with every `$` reference (Go's `os.Expand` syntax) replaced by what `replace` makes
/// of it; a `$` that no name follows stays.
fn rewrite_references<'a>(
    text: &'a str,
    mut replace: impl FnMut(Reference<'a>) -> String,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if after.is_empty() {
            // A `$` at the very end stays.
            out.push('$');
            rest = after;
            break;
        }
        let (name, width) = shell_name(after);
        if name.is_none() && width == 0 {
            // No name follows: the `$` stays.
            out.push('$');
        } else {
            out.push_str(&replace(Reference {
                name,
                text: &rest[at..=at + width],
            }));
        }
        rest = &after[width..];
    }
    out.push_str(rest);
    out
}

/// The shell's one-character special parameters, which Go's expansion also takes as names.
fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

/// The variable name at the start of `s` (just after a `$`) and how many bytes it takes;
/// `(None, n)` for bad syntax to drop (`n > 0`) or no name at all (`n == 0`).
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'{') {
        if bytes.len() > 2 && is_special(bytes[1]) && bytes[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match s[1..].find('}') {
            Some(0) => (None, 2),
            Some(end) => (Some(&s[1..=end]), end + 2),
            None => (None, 1),
        };
    }
    if bytes.first().copied().is_some_and(is_special) {
        return (Some(&s[..1]), 1);
    }
    let end = bytes
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(bytes.len());
    if end == 0 {
        (None, 0)
    } else {
        (Some(&s[..end]), end)
    }
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
    fn start_settings_leave_out_what_applies_without_a_restart() {
        let base = parse(
            "admin: {loglevel: 'all:INFO', offload_engine: TC}\n\
             auth: {type: static, realm: r1, credentials: {username: u, password: p}}\n\
             listeners: [{name: l, port: 3478, routes: [a]}]\n\
             clusters: [{name: a, endpoints: [198.18.2.1]}]\n",
        )
        .expect("parses");
        let mut reloadable = base.clone();
        reloadable.admin.loglevel = Some("all:DEBUG".into());
        reloadable.auth = Some(Auth {
            credentials: Some(Credentials {
                username: Some("v".into()),
                ..Credentials::default()
            }),
            ..base.auth.clone().expect("auth")
        });
        reloadable.listeners[0].routes = Some(vec!["b".into()]);
        reloadable.clusters.clear();
        assert_eq!(reloadable.start_settings(), base.start_settings());
        for change in [
            |c: &mut StunnerConfig| c.listeners[0].port = Some(3479),
            |c: &mut StunnerConfig| c.admin.offload_engine = Some("None".into()),
            |c: &mut StunnerConfig| {
                c.auth.as_mut().expect("auth").realm = Some("r2".into());
            },
        ] {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(changed.start_settings(), base.start_settings());
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "STUNNER_ADDR" => Some("10.0.0.7".into()),
            "REALM" => Some("example.org".into()),
            "PORT" => Some("3479".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_expanded_everywhere_but_in_credentials() {
        let text = "admin: {name: '${REALM}/gw'}\n\
                    auth: {type: ephemeral, realm: $REALM, credentials: {secret: 'pa$$word${REALM}'}}\n\
                    listeners:\n\
                    - {name: udp, address: \"$STUNNER_ADDR\", port: $PORT, routes: [c]}\n\
                    - {name: tcp, protocol: TURN-TCP, address: $UNSET_ONE, port: $STUNNER_PORT, \
                       public_address: '${UNSET_TWO}x'}\n";
        let Expanded { config, unset } = parse_with_env(text, &env).expect("parses");
        assert_eq!(config.admin.name.as_deref(), Some("example.org/gw"));
        let auth = config.auth.expect("auth");
        assert_eq!(auth.realm.as_deref(), Some("example.org"));
        // Credentials exactly as written.
        assert_eq!(
            auth.credentials.and_then(|c| c.secret).as_deref(),
            Some("pa$$word${REALM}")
        );
        assert_eq!(config.listeners[0].address.as_deref(), Some("10.0.0.7"));
        assert_eq!(config.listeners[0].port, Some(3479));
        // Unset: empty.
        assert_eq!(config.listeners[1].address, None);
        assert_eq!(config.listeners[1].public_address.as_deref(), Some("x"));
        assert_eq!(config.listeners[1].port, Some(3478));
        assert_eq!(unset, ["UNSET_ONE", "UNSET_TWO"]);
        // JSON with `${VAR}` where a number goes (no plain YAML scalar there) keeps its
        // credentials as written too.
        let json = r#"{"auth": {"credentials": {"username": "u$A", "password": "${B}:$"}},
                       "listeners": [{"name": "a", "port": ${PORT}}]}"#;
        let Expanded { config, unset } = parse_with_env(json, &env).expect("parses");
        let credentials = config
            .auth
            .and_then(|a| a.credentials)
            .expect("credentials");
        assert_eq!(credentials.username.as_deref(), Some("u$A"));
        assert_eq!(credentials.password.as_deref(), Some("${B}:$"));
        assert_eq!(config.listeners[0].port, Some(3479));
        // A and B are unset, but only in the credentials: not reported.
        assert!(unset.is_empty(), "{unset:?}");
        // No credentials, or null ones, stay that way.
        let Expanded { config, .. } =
            parse_with_env("auth: {type: none, credentials: null}", &env).expect("parses");
        assert_eq!(config.auth.and_then(|a| a.credentials), None);
    }

    #[test]
    fn stunner_port_defaults_like_stunnerd() {
        let port = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let env =
                move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            parse_with_env("listeners: [{name: a, port: $STUNNER_PORT}]", &env)
                .expect("parses")
                .config
                .listeners[0]
                .port
        };
        assert_eq!(port(&[]), Some(3478));
        assert_eq!(port(&[("STUNNER_PORT", "4000")]), Some(4000));
        assert_eq!(port(&[("STUNNER_PUBLIC_PORT", "5000")]), Some(5000));
        assert_eq!(
            port(&[("STUNNER_PORT", "x"), ("STUNNER_PUBLIC_PORT", "5000")]),
            Some(5000)
        );
        assert_eq!(
            port(&[("STUNNER_PORT", ""), ("STUNNER_PUBLIC_PORT", "nope")]),
            Some(3478)
        );
    }

    #[test]
    fn expansion_follows_go_rules() {
        let lookup = |name: &str| match name {
            "A" => Some("1".to_owned()),
            "A_B2" => Some("2".to_owned()),
            _ => None,
        };
        let x = |text: &str| expand_env(text, &lookup);
        assert_eq!(x("$A"), ("1".to_owned(), vec![]));
        assert_eq!(x("${A}x"), ("1x".to_owned(), vec![]));
        assert_eq!(x("$A_B2-$A"), ("2-1".to_owned(), vec![]));
        assert_eq!(x("a$"), ("a$".to_owned(), vec![]));
        assert_eq!(x("$ a"), ("$ a".to_owned(), vec![]));
        assert_eq!(x("$/"), ("$/".to_owned(), vec![]));
        // Unset: empty, and reported once.
        assert_eq!(
            x("[$NOPE,${NOPE}]"),
            ("[,]".to_owned(), vec!["NOPE".to_owned()])
        );
        // Special one-character names, and bad syntax eaten.
        assert_eq!(x("$1x"), ("x".to_owned(), vec!["1".to_owned()]));
        assert_eq!(x("${}x"), ("x".to_owned(), vec![]));
        assert_eq!(x("${Ax"), ("Ax".to_owned(), vec![]));
        assert_eq!(x("é$Aé"), ("é1é".to_owned(), vec![]));
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
