//! The xturn agent: STUN/TURN in userspace, the XDP fast path's loader, and their glue.
pub mod ebpf;
pub mod telemetry;
