//! Packet layouts and arithmetic of the XDP fast path.
//!
//! This library holds everything that does not touch the kernel: header layouts, offsets, the
//! parser and the internet checksum helpers. It is `no_std` for the BPF target and unit-tested on the host; the
//! program itself (`main.rs`) only reads packet memory and calls into here.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod checksum;
#[cfg(not(target_arch = "bpf"))]
pub mod frames;
pub mod headers;
pub mod parse;
