//! Logging: `tracing` for the agent's own events, with `log` records (aya, aya-log's kernel
//! messages) forwarded into it.
//!
//! [`init_agent`] picks the output format ([`LogFormat`]) and returns a [`LogControl`] that changes the filter while the
//! process runs (the admin endpoint `PUT /log-level`).
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

/// Errors while setting up or changing logging.
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
    #[error("the log filter cannot be changed: {0}")]
    Reload(#[source] reload::Error),
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log collectors.
    Json,
}

/// The filter to start with: `RUST_LOG` when set and non-empty, else `configured`.
fn initial_filter(configured: &str) -> String {
    match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => configured.to_owned(),
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    })
}

/// Changes the log filter of a running agent.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directive in force, as given (an `EnvFilter` does not print back what it parsed).
    current: Mutex<String>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl LogControl {
    /// The filter directive in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the filter with `directive` (`EnvFilter` syntax). An invalid directive changes
    /// nothing. Takes effect for every later event; records of the `log` crate (aya) follow
    /// the new most verbose level too. The XDP program's own records keep the level they were
    /// loaded with.
    pub fn set(&self, directive: &str) -> Result<(), TelemetryError> {
        let directive = directive.trim();
        let filter = parse_filter(directive)?;
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.handle.reload(filter).map_err(TelemetryError::Reload)?;
        // The reload recomputed the global most verbose level: let `log` records through up
        // to it (the bridge was installed with the level of the time).
        log::set_max_level(as_log(LevelFilter::current()));
        directive.clone_into(&mut current);
        Ok(())
    }
}

fn as_log(level: LevelFilter) -> log::LevelFilter {
    match level {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        LevelFilter::INFO => log::LevelFilter::Info,
        LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Installs the agent's global subscriber: `filter` as in [`init`] (`RUST_LOG` wins), lines in
/// `format` on stderr, and a [`LogControl`] to change the filter later.
pub fn init_agent(filter: &str, format: LogFormat) -> Result<LogControl, TelemetryError> {
    let filter = initial_filter(filter);
    let (filter_layer, handle) = reload::Layer::new(parse_filter(&filter)?);
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(LogControl {
        handle,
        current: Mutex::new(filter),
    })
}
