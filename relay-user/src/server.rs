//! The tokio event loop (being written).
