//! The GatewayConfig's authentication, resolved from its Secrets: what the agent and the credential service get.

use k8s_openapi::api::core::v1::Secret;
use stunner_config::{self as agent};

use crate::{
    crd::{GatewayConfig, GatewayConfigSpec, SecretKeyReference, StringOrSecretRef},
    ice::IceAuth,
    inputs::{Inputs, namespace_of},
};

use super::*;

/// The authentication a GatewayConfig asks for, for the agent and the credential service.
#[derive(Clone, Debug)]
pub struct ResolvedAuth {
    /// What the ConfigMap says: the type, the realm, and the files under [`AUTH_MOUNT_ROOT`]
    /// the credentials are read from — never the credentials themselves.
    pub agent: agent::Auth,
    /// The agent's Secret, mounted at [`AUTH_MOUNT_ROOT`]: `username`, `password` (static)
    /// or `secret` (TURN REST).
    pub secret_data: BTreeMap<String, String>,
    pub ice: IceAuth,
}

/// The file under [`AUTH_MOUNT_ROOT`] holding the Secret's `key`.
fn mounted(key: &str) -> Option<String> {
    Some(format!("{AUTH_MOUNT_ROOT}/{key}"))
}

pub(super) fn resolve_auth(
    inputs: &Inputs,
    gwconfig: &GatewayConfig,
) -> Result<ResolvedAuth, String> {
    let spec: &GatewayConfigSpec = &gwconfig.spec;
    let namespace = namespace_of(gwconfig);
    let realm = spec
        .realm
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| DEFAULT_REALM.to_owned());
    let lifetime = spec.auth_lifetime.unwrap_or(DEFAULT_AUTH_LIFETIME_SECS);
    if lifetime <= 0 {
        return Err(format!("authLifetime must be positive, not {lifetime}"));
    }
    // authRef: one Secret with the whole setting (STUNner's).
    let (kind, user, password, secret) =
        if let Some((ns, name)) = auth_ref_secret(inputs, gwconfig)? {
            let found = inputs
                .secret(&ns, &name)
                .ok_or_else(|| format!("authRef: Secret {ns}/{name} not found"))?;
            (
                secret_value(found, "type").or(spec.auth_type.clone()),
                secret_value(found, "username"),
                secret_value(found, "password"),
                secret_value(found, "secret").or_else(|| secret_value(found, "sharedSecret")),
            )
        } else {
            let value = |field: &str, v: &Option<StringOrSecretRef>| {
                v.as_ref()
                    .map(|v| resolve_value(inputs, &namespace, field, v))
                    .transpose()
            };
            (
                spec.auth_type.clone(),
                spec.user_name.clone(),
                value("password", &spec.password)?,
                value("sharedSecret", &spec.shared_secret)?,
            )
        };
    if spec.stun_mode == Some(true) {
        // A STUN server only: the agent refuses every TURN request, so no credentials.
        return Ok(ResolvedAuth {
            agent: agent::Auth {
                kind: Some("none".to_owned()),
                realm: Some(realm),
                credentials: None,
            },
            secret_data: BTreeMap::new(),
            ice: IceAuth::None,
        });
    }
    let kind = kind.unwrap_or_else(|| "static".to_owned());
    match kind.to_ascii_lowercase().as_str() {
        "static" | "plaintext" => {
            let user = user
                .filter(|u| !u.is_empty())
                .ok_or("authType static needs userName")?;
            let password = password
                .filter(|p| !p.is_empty())
                .ok_or("authType static needs a password")?;
            Ok(ResolvedAuth {
                agent: agent::Auth {
                    kind: Some("static".to_owned()),
                    realm: Some(realm),
                    credentials: Some(agent::Credentials {
                        username_file: mounted("username"),
                        password_file: mounted("password"),
                        ..agent::Credentials::default()
                    }),
                },
                secret_data: BTreeMap::from([
                    ("username".to_owned(), user.clone()),
                    ("password".to_owned(), password.clone()),
                ]),
                ice: IceAuth::Static { user, password },
            })
        }
        // longterm with a password: the password is the TURN REST API shared secret, and the
        // credential service mints `expiry:userName` credentials valid for authLifetime.
        "ephemeral" | "longterm" | "timewindowed" => {
            let secret = secret.or(password).filter(|s| !s.is_empty()).ok_or(
                "authType longterm needs sharedSecret or password (used as the shared secret)",
            )?;
            Ok(ResolvedAuth {
                agent: agent::Auth {
                    kind: Some("ephemeral".to_owned()),
                    realm: Some(realm),
                    credentials: Some(agent::Credentials {
                        secret_file: mounted("secret"),
                        ..agent::Credentials::default()
                    }),
                },
                secret_data: BTreeMap::from([("secret".to_owned(), secret.clone())]),
                ice: IceAuth::Rest {
                    secret,
                    user_id: user.filter(|u| !u.is_empty()),
                    lifetime_secs: lifetime,
                },
            })
        }
        other => Err(format!(
            "authType {other:?} is not one of static, plaintext, longterm, ephemeral, timewindowed"
        )),
    }
}

pub(super) fn resolve_value(
    inputs: &Inputs,
    namespace: &str,
    field: &str,
    value: &StringOrSecretRef,
) -> Result<String, String> {
    match value {
        StringOrSecretRef::Value(value) => Ok(value.clone()),
        StringOrSecretRef::Secret(reference) => {
            let (ns, name) = value_secret(inputs, namespace, field, reference)?;
            let secret = inputs
                .secret(&ns, &name)
                .ok_or_else(|| format!("{field}: Secret {ns}/{name} not found"))?;
            secret_value(secret, &reference.key).ok_or_else(|| {
                format!("{field}: Secret {ns}/{name} has no key {:?}", reference.key)
            })
        }
    }
}

/// The Secret (namespace, name) a GatewayConfig's `authRef` names, if it has one — or why it
/// may not be used: not a core Secret, or in another namespace without a ReferenceGrant there.
fn auth_ref_secret(
    inputs: &Inputs,
    gwconfig: &GatewayConfig,
) -> Result<Option<(String, String)>, String> {
    let Some(reference) = &gwconfig.spec.auth_ref else {
        return Ok(None);
    };
    if !matches!(reference.group.as_deref(), None | Some("" | "v1"))
        || !matches!(reference.kind.as_deref(), None | Some("Secret"))
    {
        return Err(format!(
            "authRef {}: only core Secrets are supported",
            reference.name
        ));
    }
    let namespace = namespace_of(gwconfig);
    let ns = reference
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    if ns != namespace
        && !inputs.reference_granted(&namespace, "GatewayConfig", &ns, &reference.name)
    {
        return Err(format!(
            "authRef: Secret {ns}/{} is in another namespace and no ReferenceGrant there \
             allows GatewayConfigs of {namespace} to use it",
            reference.name
        ));
    }
    Ok(Some((ns, reference.name.clone())))
}

/// The Secret (namespace, name) a `password` or `sharedSecret` reference names, in the
/// GatewayConfig's `namespace` unless it says otherwise; another namespace needs a
/// ReferenceGrant there, as `authRef` does.
fn value_secret(
    inputs: &Inputs,
    namespace: &str,
    field: &str,
    reference: &SecretKeyReference,
) -> Result<(String, String), String> {
    let SecretKeyReference {
        name,
        namespace: ns,
        ..
    } = reference;
    let ns = ns.as_deref().unwrap_or(namespace);
    if ns != namespace && !inputs.reference_granted(namespace, "GatewayConfig", ns, name) {
        return Err(format!(
            "{field}: Secret {ns}/{name} is in another namespace and no ReferenceGrant there \
             allows GatewayConfigs of {namespace} to use it"
        ));
    }
    Ok((ns.to_owned(), name.clone()))
}

/// Every Secret (namespace, name) a GatewayConfig may read: its `authRef`, `password` and
/// `sharedSecret` references that are allowed.
pub(super) fn gateway_config_secrets(
    inputs: &Inputs,
    gwconfig: &GatewayConfig,
) -> Vec<(String, String)> {
    let namespace = namespace_of(gwconfig);
    let mut secrets: Vec<(String, String)> = auth_ref_secret(inputs, gwconfig)
        .ok()
        .flatten()
        .into_iter()
        .collect();
    for (field, value) in [
        ("password", &gwconfig.spec.password),
        ("sharedSecret", &gwconfig.spec.shared_secret),
    ] {
        if let Some(StringOrSecretRef::Secret(reference)) = value
            && let Ok(secret) = value_secret(inputs, &namespace, field, reference)
        {
            secrets.push(secret);
        }
    }
    secrets
}

/// A Secret's value for `key`, from `data` (what the API server holds) or `stringData` (what a
/// manifest may say).
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.clone());
    }
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}
