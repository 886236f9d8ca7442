//! `detrix-agent serve`: one agent for every matching process on the host. The rules that say
//! which processes ([`rule`], [`glob`]) and the file and flags they come from ([`config`]).

pub mod config;
pub mod glob;
pub mod rule;
