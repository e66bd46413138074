//! Who may authenticate: static users and TURN REST secrets, from the file and the flags.

use stunner_config::{Auth as FileAuth, Credentials as FileCredentials};

use super::*;

/// The kind of credentials the file's `auth` section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthKind {
    Static,
    Ephemeral,
    /// STUNner's `none`: a STUN server only.
    None,
}

/// Who may authenticate, resolved.
pub(super) struct Credentials {
    pub(super) users: Vec<(String, String)>,
    pub(super) secrets: Vec<String>,
    /// `auth.type: none` and no credential flags: STUN only.
    pub(super) stun_only: bool,
}

pub(super) fn resolve_credentials(
    args: &XturndArgs,
    auth: Option<&FileAuth>,
) -> Result<Credentials, ConfigError> {
    // The file's credentials, checked only when the flags do not replace them.
    let file_kind = match auth {
        // `auth` with neither a type nor credentials (only a realm, say) holds no credentials.
        Some(FileAuth {
            kind: None,
            credentials: None,
            ..
        })
        | None => None,
        Some(auth) => Some(
            match auth.kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("" | "static" | "plaintext") => AuthKind::Static,
                Some("ephemeral" | "longterm" | "timewindowed") => AuthKind::Ephemeral,
                Some("none") => AuthKind::None,
                Some(_) => {
                    return Err(invalid(
                        "auth.type",
                        format!(
                            "unknown authentication type {:?} (expected static, ephemeral or none)",
                            auth.kind.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            },
        ),
    };
    let no_credentials = FileCredentials::default();
    let credentials = auth
        .and_then(|a| a.credentials.as_ref())
        .unwrap_or(&no_credentials);
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());

    let users = if !args.users.is_empty() {
        parse_users(&args.users)?
    } else if file_kind == Some(AuthKind::Static) {
        let (Some(name), Some(password)) = (
            non_empty(&credentials.username),
            non_empty(&credentials.password),
        ) else {
            return Err(invalid(
                "auth",
                "type static needs credentials.username and credentials.password",
            ));
        };
        check_username("auth.credentials.username", &name)?;
        vec![(name, password)]
    } else {
        Vec::new()
    };

    let mut secrets: Vec<String> = Vec::new();
    if !args.auth_secrets.is_empty() {
        for SecretFlag(secret) in &args.auth_secrets {
            if secret.is_empty() {
                return Err(invalid("--auth-secret", "empty secret"));
            }
            if !secrets.contains(secret) {
                secrets.push(secret.clone());
            }
        }
    } else if file_kind == Some(AuthKind::Ephemeral) {
        let Some(secret) = non_empty(&credentials.secret) else {
            return Err(invalid("auth", "type ephemeral needs credentials.secret"));
        };
        secrets.push(secret);
    }

    if users.is_empty() && secrets.is_empty() {
        if file_kind == Some(AuthKind::None) {
            // A STUN server: nothing is relayed, so no credentials are needed.
            return Ok(Credentials {
                users,
                secrets,
                stun_only: true,
            });
        }
        return Err(invalid(
            "auth",
            "no credentials configured: give --user NAME:PASSWORD, --auth-secret SECRET or \
             auth.credentials in the config file (xturnd refuses to run as an open relay; \
             auth.type none makes it a STUN server only)",
        ));
    }
    Ok(Credentials {
        users,
        secrets,
        stun_only: false,
    })
}

pub(super) fn parse_users(flags: &[UserFlag]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut users: Vec<(String, String)> = Vec::with_capacity(flags.len());
    for UserFlag(flag) in flags {
        // No colon means no password, so the value can be quoted back safely; past this point
        // only the name is.
        let Some((name, password)) = flag.split_once(':') else {
            return Err(invalid(
                format!("--user {flag:?}"),
                "expected name:password",
            ));
        };
        if name.is_empty() {
            return Err(invalid(
                "--user",
                "empty user name (expected name:password)",
            ));
        }
        let field = format!("--user {name:?}");
        if password.is_empty() {
            return Err(invalid(field, "empty password (expected name:password)"));
        }
        check_username(&field, name)?;
        if users.iter().any(|(n, _)| n == name) {
            return Err(invalid(field, "user given twice"));
        }
        users.push((name.to_owned(), password.to_owned()));
    }
    Ok(users)
}

pub(super) fn check_username(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.len() > MAX_USERNAME_BYTES {
        return Err(invalid(
            field,
            format!("user name longer than {MAX_USERNAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub(super) fn check_realm(field: &str, realm: &str) -> Result<String, ConfigError> {
    if realm.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if realm.chars().count() > MAX_REALM_CHARS {
        return Err(invalid(
            field,
            format!("longer than {MAX_REALM_CHARS} characters"),
        ));
    }
    Ok(realm.to_owned())
}

/// Reads every `auth.credentials.*_file` into its value (through `read`, so tests need no
/// files) and returns the files read, which the agent then watches: a Secret mounted into the
/// pod is rewritten by the kubelet when it changes, and the agent reloads. One trailing
/// newline (`\n` or `\r\n`, as `echo` or an editor leaves) is not part of the value.
pub(super) fn read_credential_files(
    auth: Option<&mut FileAuth>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(credentials) = auth.and_then(|a| a.credentials.as_mut()) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    let FileCredentials {
        username,
        password,
        secret,
        username_file,
        password_file,
        secret_file,
    } = credentials;
    for (name, value, file) in [
        ("username", username, username_file),
        ("password", password, password_file),
        ("secret", secret, secret_file),
    ] {
        let Some(path) = file.take() else { continue };
        let field = format!("auth.credentials.{name}_file");
        if value.is_some() {
            return Err(invalid(
                field,
                format!("give {name} or {name}_file, not both"),
            ));
        }
        if path.is_empty() {
            return Err(invalid(field, "empty path"));
        }
        let path = PathBuf::from(path);
        let text = read(&path)
            .map_err(|e| invalid(&field, format!("cannot read {}: {e}", path.display())))?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        *value = Some(text.to_owned());
        files.push(path);
    }
    Ok(files)
}

/// The error for `*_file` credentials that reached [`resolve`](super::resolve) unread: only
/// the loading functions read files.
pub(super) fn unread_credential_files(auth: Option<&FileAuth>) -> Result<(), ConfigError> {
    let Some(credentials) = auth.and_then(|a| a.credentials.as_ref()) else {
        return Ok(());
    };
    for (name, file) in [
        ("username_file", &credentials.username_file),
        ("password_file", &credentials.password_file),
        ("secret_file", &credentials.secret_file),
    ] {
        if file.is_some() {
            return Err(invalid(
                format!("auth.credentials.{name}"),
                "files are read by config::load and load_text, not by resolve",
            ));
        }
    }
    Ok(())
}
