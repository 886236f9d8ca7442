//! The DAP side of the agent: what the unchanged Detrix daemon talks to instead of Delve or
//! lldb-dap (contract.md §4–§9, Appendix B).
//!
//! [`codec`] frames bytes, [`template`] reads the daemon's logpoint templates and writes the
//! `output` text it parses, [`facade`] is the per-connection state machine. Sockets live in
//! [`crate::daemon`]; nothing here does I/O except [`codec::read_frame`].

pub mod codec;
pub mod facade;
pub mod template;

#[cfg(test)]
mod bp_tests;
#[cfg(test)]
mod replay_tests;

pub use facade::{Facade, ProbeSet};
