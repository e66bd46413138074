//! Listeners, clusters, relay addresses and the relay port range: from the file and the flags
//! to [`ListenerConfig`]s and [`ClusterConfig`]s.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use stunner_config::{
    Cluster as FileCluster, Listener as FileListener, StunnerConfig as FileConfig,
};

use turn_proto::policy::{DnsEndpoint, Endpoint, EndpointError};

use super::*;

pub(super) fn resolve_clusters(
    clusters: &[FileCluster],
) -> Result<Vec<ClusterConfig>, ConfigError> {
    let mut resolved: Vec<ClusterConfig> = Vec::with_capacity(clusters.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let field = format!("clusters[{i}]");
        let name = match cluster.name.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => {
                return Err(invalid(
                    format!("{field}.name"),
                    "missing (every cluster needs a name)",
                ));
            }
        };
        if let Some(first) = seen.insert(name, i) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{name:?} is also the name of clusters[{first}]"),
            ));
        }
        let type_field = format!("{field}.type");
        let strict_dns = match cluster
            .kind
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("" | "STATIC") => false,
            Some("STRICT_DNS") => true,
            Some(_) => {
                return Err(invalid(
                    type_field,
                    format!(
                        "unknown cluster type {:?} (expected STATIC or STRICT_DNS)",
                        cluster.kind.as_deref().unwrap_or_default()
                    ),
                ));
            }
        };
        let tcp = match cluster
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("" | "UDP") => false,
            Some("TCP") => true,
            Some(_) => {
                return Err(invalid(
                    format!("{field}.protocol"),
                    format!(
                        "unknown cluster protocol {:?} (expected UDP or TCP)",
                        cluster.protocol.as_deref().unwrap_or_default()
                    ),
                ));
            }
        };
        let texts = cluster.endpoints.as_deref().unwrap_or_default();
        let endpoint_error =
            |j: usize, e: EndpointError| invalid(format!("{field}.endpoints[{j}]"), e.to_string());
        let (endpoints, dns) = if strict_dns {
            let dns = texts
                .iter()
                .enumerate()
                .map(|(j, text)| {
                    text.parse::<DnsEndpoint>()
                        .map_err(|e| endpoint_error(j, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (Vec::new(), dns)
        } else {
            let endpoints = texts
                .iter()
                .enumerate()
                .map(|(j, text)| text.parse::<Endpoint>().map_err(|e| endpoint_error(j, e)))
                .collect::<Result<Vec<_>, _>>()?;
            (endpoints, Vec::new())
        };
        resolved.push(ClusterConfig {
            name: name.to_owned(),
            endpoints,
            dns,
            tcp,
        });
    }
    Ok(resolved)
}

/// A listener on its way to becoming a [`ListenerConfig`], with the label errors about it use.
pub(super) struct Draft {
    /// `listeners[i]` or `--listen ADDR`.
    field: String,
    /// The file listener it came from, for errors about its routes.
    file_field: Option<String>,
    name: String,
    transport: Transport,
    addr: SocketAddr,
    routes: Vec<String>,
    routed: bool,
    tls: Option<TlsMaterial>,
}

pub(super) fn resolve_file_listener(
    i: usize,
    listener: &FileListener,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Draft, ConfigError> {
    let field = format!("listeners[{i}]");
    let name = match listener.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            return Err(invalid(
                format!("{field}.name"),
                "missing (every listener needs a name)",
            ));
        }
    };
    let transport = check_protocol(&format!("{field}.protocol"), listener.protocol.as_deref())?;

    let address = listener.address.as_deref().unwrap_or_default().trim();
    let address = match env_reference(address) {
        Some(var) => env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            invalid(
                format!("{field}.address"),
                format!("{address:?} refers to environment variable {var}, which is not set"),
            )
        })?,
        None => address.to_owned(),
    };
    let ip = if address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        address.trim().parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("{field}.address"),
                format!("{address:?} is not an IP address"),
            )
        })?
    };
    let port = match listener.port {
        None => DEFAULT_PORT,
        Some(port) => port_in_range(port).ok_or_else(|| {
            invalid(
                format!("{field}.port"),
                format!("{port} is not a valid port"),
            )
        })?,
    };
    let routes = listener.routes.clone().unwrap_or_default();
    let tls = match (&listener.cert, &listener.key) {
        (None, None) => None,
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => Some(TlsMaterial {
            cert: pem_source(&format!("{field}.cert"), cert, PemKind::Certificate)?,
            key: pem_source(&format!("{field}.key"), key, PemKind::Key)?,
        }),
        (Some(c), Some(k)) if c.is_empty() && k.is_empty() => None,
        _ => {
            return Err(invalid(
                format!("{field}.cert"),
                "cert and key go together (give both or neither)",
            ));
        }
    };
    Ok(Draft {
        file_field: Some(field.clone()),
        field,
        name,
        transport,
        addr: SocketAddr::new(ip, port),
        routes,
        routed: listener.routes.is_some(),
        tls,
    })
}

/// `$NAME` or `${NAME}` → `NAME`.
pub(super) fn env_reference(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('$')?;
    let name = match rest.strip_prefix('{') {
        Some(braced) => braced.strip_suffix('}')?,
        None => rest,
    };
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

pub(super) fn port_in_range(port: i64) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// What a listener's `cert` or `key` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PemKind {
    Certificate,
    Key,
}

/// A certificate or key named by a listener, as STUNner's operator writes it (standard base64
/// of the PEM text) or as a file path. In order:
/// - the PEM text itself (it has a `-----BEGIN` line): inline;
/// - base64 (line breaks and spaces ignored) of text with a `-----BEGIN` line: inline;
/// - other valid base64: refused (neither PEM nor, most likely, a file name);
/// - anything else is the path of a PEM file (read at start, watched for changes).
///
/// Inline PEM is checked here, so a broken one is refused naming its field: a certificate
/// needs a CERTIFICATE block, a key a private key block (PKCS#8, PKCS#1 or SEC1).
pub(super) fn pem_source(
    field: &str,
    value: &str,
    kind: PemKind,
) -> Result<PemSource, ConfigError> {
    use base64::Engine as _;
    let value = value.trim();
    let pem = if value.contains("-----BEGIN") {
        Some(value.to_owned())
    } else {
        let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) if text.contains("-----BEGIN") => Some(text),
                _ => {
                    return Err(invalid(
                        field,
                        "is base64, but not of PEM text (expected the base64 of a PEM block, \
                         or a file path such as ./tls.crt)",
                    ));
                }
            },
            Err(_) => None,
        }
    };
    let Some(pem) = pem else {
        if value.contains('\n') {
            return Err(invalid(field, "neither PEM, base64 of PEM nor a file path"));
        }
        return Ok(PemSource::File(PathBuf::from(value)));
    };
    check_inline_pem(field, &pem, kind)?;
    Ok(PemSource::Inline(pem))
}

/// Does inline `pem` hold what `kind` needs?
fn check_inline_pem(field: &str, pem: &str, kind: PemKind) -> Result<(), ConfigError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    match kind {
        PemKind::Certificate => {
            let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(field, format!("inline certificate: {e}")))?;
            if chain.is_empty() {
                return Err(invalid(field, "inline certificate: no CERTIFICATE block"));
            }
        }
        PemKind::Key => {
            PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| invalid(field, format!("inline private key: {e}")))?;
        }
    }
    Ok(())
}

pub(super) fn check_protocol(
    field: &str,
    protocol: Option<&str>,
) -> Result<Transport, ConfigError> {
    let Some(protocol) = protocol else {
        return Ok(Transport::Udp);
    };
    Transport::from_protocol(protocol).ok_or_else(|| {
        invalid(
            field,
            format!(
                "unknown listener protocol {protocol:?} (expected TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS)"
            ),
        )
    })
}

pub(super) fn resolve_listeners(
    args: &XturndArgs,
    file: &FileConfig,
    clusters: &[ClusterConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let file_listeners = file.listeners.as_slice();
    let drafts = if args.listen.is_empty() {
        file_listeners
            .iter()
            .enumerate()
            .map(|(i, l)| resolve_file_listener(i, l, env))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        // --listen replaces the file's listeners. File listeners are consulted only for the
        // name and routes of one at the same address, so a file listener xturnd could not run
        // (TURN-TCP, an unset $STUNNER_ADDR) does not stand in the way of the flags.
        let usable = file_listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| resolve_file_listener(i, l, env).ok())
            .collect::<Vec<_>>();
        args.listen
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let addr = listen.addr;
                let transport = listen.transport;
                let field = format!("--listen {}://{addr}", transport.scheme());
                match usable
                    .iter()
                    .find(|d| d.addr == addr && d.transport == transport)
                {
                    Some(from_file) => Draft {
                        field,
                        file_field: from_file.file_field.clone(),
                        name: from_file.name.clone(),
                        transport,
                        addr,
                        routes: from_file.routes.clone(),
                        routed: from_file.routed,
                        tls: from_file.tls.clone(),
                    },
                    None => Draft {
                        field,
                        file_field: None,
                        name: format!("{}-{i}", transport.scheme()),
                        transport,
                        addr,
                        routes: Vec::new(),
                        routed: false,
                        tls: None,
                    },
                }
            })
            .collect()
    };

    if drafts.is_empty() {
        return Err(invalid(
            "listeners",
            "no listener configured (give --listen ADDR:PORT or listeners in the config file)",
        ));
    }

    let cluster_names = clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect::<HashSet<_>>();
    for (i, draft) in drafts.iter().enumerate() {
        let ip = draft.addr.ip();
        if draft.addr.port() == 0 {
            return Err(invalid(&draft.field, "0 is not a valid port"));
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(invalid(
                &draft.field,
                format!("{ip} is not a unicast address"),
            ));
        }
        for earlier in drafts[..i].iter() {
            if earlier.name == draft.name {
                return Err(invalid(
                    &draft.field,
                    format!(
                        "listener name {:?} is also used by {}",
                        draft.name, earlier.field
                    ),
                ));
            }
            // A TCP and a UDP socket may share an address (TURN-UDP and TURN-TCP on 3478).
            if earlier.transport.is_stream() != draft.transport.is_stream() {
                continue;
            }
            if earlier.addr == draft.addr {
                return Err(invalid(
                    &draft.field,
                    format!("{} is also the address of {}", draft.addr, earlier.field),
                ));
            }
            let (a, b) = (earlier.addr.ip(), ip);
            if earlier.addr.port() == draft.addr.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.is_unspecified() || b.is_unspecified())
            {
                return Err(invalid(
                    &draft.field,
                    format!(
                        "{} overlaps {} at {}",
                        draft.addr, earlier.field, earlier.addr
                    ),
                ));
            }
        }
        for (j, route) in draft.routes.iter().enumerate() {
            if !cluster_names.contains(route.as_str()) {
                let base = draft.file_field.as_deref().unwrap_or(&draft.field);
                return Err(invalid(
                    format!("{base}.routes[{j}]"),
                    format!("no cluster named {route:?}"),
                ));
            }
        }
    }

    drafts
        .into_iter()
        .map(|d| {
            let tls = if d.transport.is_secure() {
                let files = d.tls.or_else(|| match (&args.tls_cert, &args.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsMaterial::files(cert, key)),
                    _ => None,
                });
                Some(files.ok_or_else(|| {
                    invalid(
                        &d.field,
                        format!(
                            "a {} listener needs a certificate and key (cert/key in the file, or --tls-cert and --tls-key)",
                            d.transport
                        ),
                    )
                })?)
            } else {
                None
            };
            Ok(ListenerConfig {
                name: d.name,
                transport: d.transport,
                addr: d.addr,
                routes: d.routes,
                routed: d.routed,
                tls,
            })
        })
        .collect()
}

pub(super) fn resolve_relay_ips(
    flags: &[IpAddr],
    listeners: &[ListenerConfig],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ConfigError> {
    let mut v4: Option<Ipv4Addr> = None;
    let mut v6: Option<Ipv6Addr> = None;
    for ip in flags {
        if ip.is_unspecified() || ip.is_multicast() || *ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(invalid(
                format!("--relay-ip {ip}"),
                "not a unicast address relayed addresses can be allocated on",
            ));
        }
        let duplicate = match ip {
            IpAddr::V4(ip) => v4.replace(*ip).filter(|prev| prev != ip).map(IpAddr::V4),
            IpAddr::V6(ip) => v6.replace(*ip).filter(|prev| prev != ip).map(IpAddr::V6),
        };
        if let Some(prev) = duplicate {
            return Err(invalid(
                format!("--relay-ip {ip}"),
                format!(
                    "a second address of the same family as {prev} (give at most one IPv4 and one IPv6 address)"
                ),
            ));
        }
    }
    if v4.is_none() {
        v4 = relay_ip_from_listeners(listeners, "IPv4", |ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })?;
    }
    if v6.is_none() {
        v6 = relay_ip_from_listeners(listeners, "IPv6", |ip| match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })?;
    }
    Ok((v4, v6))
}

/// The relay address of one family, taken from the listeners: their one specific address of
/// that family, `None` if no listener has that family.
pub(super) fn relay_ip_from_listeners<T>(
    listeners: &[ListenerConfig],
    family: &str,
    of_family: impl Fn(IpAddr) -> Option<T>,
) -> Result<Option<T>, ConfigError>
where
    T: Copy + PartialEq + fmt::Display + Into<IpAddr>,
{
    let mut specific: Option<(T, &str)> = None;
    let mut wildcard: Option<&ListenerConfig> = None;
    for listener in listeners {
        let Some(ip) = of_family(listener.addr.ip()) else {
            continue;
        };
        if ip.into().is_unspecified() {
            wildcard = wildcard.or(Some(listener));
            continue;
        }
        match specific {
            None => specific = Some((ip, &listener.name)),
            Some((first, first_name)) if first != ip => {
                return Err(invalid(
                    "--relay-ip",
                    format!(
                        "listeners {first_name:?} ({first}) and {:?} ({ip}) bind different {family} \
                         addresses; give --relay-ip to choose the one to relay from",
                        listener.name
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    match (specific, wildcard) {
        (Some((ip, _)), _) => Ok(Some(ip)),
        (None, Some(listener)) => Err(invalid(
            "--relay-ip",
            format!(
                "listener {:?} binds the wildcard address {}; give --relay-ip with the {family} \
                 address to relay from",
                listener.name,
                listener.addr.ip()
            ),
        )),
        (None, None) => Ok(None),
    }
}

/// One end of the relay port range and the field it came from.
pub(super) struct PortSetting {
    port: u16,
    field: String,
}

pub(super) fn resolve_port_range(
    args: &XturndArgs,
    file: &FileConfig,
) -> Result<(u16, u16), ConfigError> {
    let file_listeners = file.listeners.as_slice();
    let from_file = |get: fn(&FileListener) -> Option<i64>,
                     key: &str|
     -> Result<Option<PortSetting>, ConfigError> {
        let mut found: Option<PortSetting> = None;
        for (i, listener) in file_listeners.iter().enumerate() {
            let Some(value) = get(listener) else {
                continue;
            };
            let field = format!("listeners[{i}].{key}");
            let port = port_in_range(value)
                .ok_or_else(|| invalid(&field, format!("{value} is not a valid port")))?;
            match &found {
                None => found = Some(PortSetting { port, field }),
                Some(first) if first.port != port => {
                    return Err(invalid(
                        field,
                        format!(
                            "{port} differs from {} {} (xturnd has one relay port range)",
                            first.field, first.port
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(found)
    };
    let file_min = from_file(|l| l.min_relay_port, "min_relay_port")?;
    let file_max = from_file(|l| l.max_relay_port, "max_relay_port")?;

    let pick =
        |flag: Option<u16>, name: &str, file: Option<PortSetting>, default: u16| match (flag, file)
        {
            (Some(0), _) => Err(invalid(name, "0 is not a valid port")),
            (Some(port), _) => Ok(PortSetting {
                port,
                field: name.to_owned(),
            }),
            (None, Some(from_file)) => Ok(from_file),
            (None, None) => Ok(PortSetting {
                port: default,
                field: format!("{name} (default)"),
            }),
        };
    let min = pick(args.min_port, "--min-port", file_min, DEFAULT_MIN_PORT)?;
    let max = pick(args.max_port, "--max-port", file_max, DEFAULT_MAX_PORT)?;
    if min.port > max.port {
        return Err(invalid(
            format!("{}, {}", min.field, max.field),
            format!("min_port {} > max_port {}", min.port, max.port),
        ));
    }
    Ok((min.port, max.port))
}
