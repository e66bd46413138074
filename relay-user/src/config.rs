//! xturnd configuration (being written).
