//! Logging for the command-line tools: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG`.
use tracing_subscriber::EnvFilter;

/// The log filter was not understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?}: {source}")]
pub struct LogFilterError {
    filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `xturnctl=debug,info`; `RUST_LOG` overrides it when set and non-empty. A second call keeps
/// the first subscriber.
pub fn init(filter: &str) -> Result<(), LogFilterError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| LogFilterError {
        filter: filter.clone(),
        source,
    })?;
    let _already_installed = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}
