//! Fleet wake (issue #14 point 3): a `DetrixWake` object ([`crd`]) asks for a staged wake of
//! the targets a label selector picks. [`plan`] decides which targets each stage holds, the
//! same on every node (pod-UID hash order); [`reconcile`] is a node agent's pure state machine
//! for every object (wake this node's members of the stage, report, sleep on a halt, at the TTL
//! or when the object goes) and [`node`] its I/O shell inside `serve --kubernetes`; [`cli`] is
//! `detrix-agent fleet wake | sleep | status`, which only writes the spec and reads the reports,
//! following the object with a watch ([`follow`]).

pub mod cli;
pub mod crd;
pub mod follow;
pub mod node;
pub mod plan;
pub mod reconcile;
