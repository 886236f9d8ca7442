//! Detrix Agent: watch values inside a running native program at any source line, through
//! uprobes and one prebuilt, plan-driven eBPF program.
//!
//! Data flows one way: request → [`debuginfo`] (resolve) → [`plan`] (build) → [`probe`]
//! (attach, drain) → [`decode`] → [`render`] → output. [`capture`] chains them for the one-shot CLI.

pub mod addr;
pub mod capture;
pub mod control;
pub mod daemon;
pub mod dap;
pub mod debuginfo;
pub mod decode;
pub mod engine;
pub mod expr;
pub mod fallback;
pub mod forward;
pub mod place;
pub mod plan;
pub mod probe;
pub mod render;
pub mod target;
