//! Detrix Agent: watch values inside a running native program at any source line, through
//! uprobes and one prebuilt, plan-driven eBPF program.
//!
//! Data flows one way: request → [`debuginfo`] (resolve) → [`plan`] (build) → [`probe`]
//! (attach, drain) → [`plan::decode`] → output. [`capture`] chains them for the one-shot CLI.

pub mod buildinfo;
pub mod capture;
pub mod control;
pub mod daemon;
pub mod dap;
pub mod debuginfo;
pub mod discover;
pub mod engine;
pub mod expr;
pub mod fallback;
pub mod forward;
pub mod peer;
pub mod place;
pub mod plan;
pub mod privs;
pub mod probe;
pub mod serve;
pub mod target;
