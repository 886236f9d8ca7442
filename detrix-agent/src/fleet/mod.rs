//! Fleet wake (issue #14 point 3), the part every node agent and the CLI must compute the same
//! way: which targets belong to a stage of a `DetrixWake` ([`plan`]). The reconciler (node
//! agents acting on the object and reporting in its status) and the CLI (`fleet wake`,
//! `fleet sleep`, `fleet status`) are not built yet.

pub mod plan;
