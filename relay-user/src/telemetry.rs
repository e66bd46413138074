//! Logging: `tracing` for the agent's own events, with `log` records (aya, aya-log's kernel
//! messages) forwarded into it.
use tracing_subscriber::{EnvFilter, fmt};

/// Errors while setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `relay_user=debug,info`; `RUST_LOG` overrides it when set.
pub fn init(filter: &str) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        filter: filter.clone(),
        source,
    })?;
    // `try_init` also installs the `log` → tracing bridge (tracing-subscriber's `tracing-log`
    // feature), so aya and aya-log's kernel records end up here too.
    fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)
}
