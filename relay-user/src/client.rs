//! A TURN client for xturnctl and the tests (being written).
