//! Long-term credentials, TURN REST API credentials and stateless nonces (being written).
