//! The sans-IO TURN server (being written).
