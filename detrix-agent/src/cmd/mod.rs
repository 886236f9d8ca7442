//! Subcommands of the `detrix-agent` binary too long for `main.rs`: their flags and the code
//! that turns them into library calls and prints the result. Binary-only (the library has no
//! `cmd` module); the work itself stays in the library.

pub mod capture;
pub mod coverage;
pub mod fleet;
