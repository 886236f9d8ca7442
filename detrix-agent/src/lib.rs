//! Detrix Agent: watch values inside a running native program at any source line, through
//! uprobes and one prebuilt, plan-driven eBPF program.
//!
//! Data flows one way: request → [`debuginfo`] (resolve) → [`plan`] (build) → [`place`] and
//! [`forward`] (over one [`codegen`] decode) → [`probe`] (attach, drain) → [`decode`] (record →
//! value tree) → [`render`] (lldb, Delve, JSON) → output. [`engine`] runs the stages, with
//! [`target`] (the process, its maps) and [`addr`] (address spaces, the load bias) under them;
//! [`capture`] drives it for the one-shot CLI, [`dap`] and [`daemon`] for the daemon.

pub mod addr;
pub mod buildinfo;
pub mod capture;
pub mod codegen;
pub mod control;
pub mod daemon;
pub mod dap;
pub mod debuginfo;
pub mod decode;
pub mod discover;
pub mod ebpflog;
pub mod engine;
pub mod expr;
pub mod fallback;
pub mod fleet;
pub mod forward;
pub mod peer;
pub mod place;
pub mod plan;
pub mod pods;
pub mod privs;
pub mod probe;
pub mod render;
pub mod serve;
pub mod sockdiag;
pub mod target;
