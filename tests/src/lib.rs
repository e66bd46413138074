//! Test support: network namespaces with veth links, processes inside them, and crafted frames.
//!
//! Every resource is owned by a guard that removes it on drop, so a failing test cleans up too.
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32 only.
pub mod admin;
pub mod certificates;
pub mod clients;
pub mod fake_kube;
pub mod netns;
pub mod pod_files;
/// Crafted Ethernet frames (they live with the packet layouts in `relay-ebpf`).
pub use relay_ebpf::frames as packet;
pub mod topology;
