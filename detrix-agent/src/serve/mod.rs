//! `detrix-agent serve`: one agent for every matching process on the host. The rules that say
//! which processes ([`rule`], [`glob`]) and the file and flags they come from ([`config`]); the
//! table of targets, each running the agent `attach` runs, fed by discovery ([`host`]); and the
//! host control plane over it ([`control`], [`metrics`]); the host-wide CPU budget
//! ([`budget`]).

pub mod budget;
pub mod config;
pub mod control;
pub mod glob;
pub mod host;
pub mod metrics;
pub mod rule;
