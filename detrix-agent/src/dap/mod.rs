//! The DAP side of the agent: what the unchanged Detrix daemon talks to instead of Delve or
//! lldb-dap (contract.md §4–§9, Appendix B).
//!
//! [`codec`] frames bytes, [`template`] reads the daemon's logpoint templates and writes the
//! `output` text it parses, [`facade`] is the per-connection state machine (pure: inputs in,
//! effects out), with [`snapshot`] answering breakpoint-mode requests from one captured hit and
//! [`calls`] describing the work only a debugger can do. Sockets, probes and debuggers live in
//! [`crate::daemon`]; nothing here does I/O except [`codec::read_frame`].

pub mod calls;
pub mod codec;
pub mod facade;
pub mod snapshot;
pub mod template;

#[cfg(test)]
mod bp_tests;
#[cfg(test)]
mod effect_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod replay_tests;

pub use facade::{Effect, Facade, Input, ProbeHit, ProbeId};
