//! Test harness: runs a [`Facade`]'s effects against a fake probe set, the way the shell in
//! [`crate::daemon::session`] runs them against the registry, so tests speak in requests,
//! hits and the messages that come back.

use std::collections::VecDeque;

use serde_json::Value;

use super::facade::{Effect, Evaluated, Facade, Input, Job, Options, ProbeHit, ProbeId};
use crate::engine::LogpointSpec;

/// A probe set standing in for the engine.
pub trait FakeProbes {
    /// Installs `probe`, or says why not.
    fn add(&mut self, probe: ProbeId, file: &str, spec: &LogpointSpec) -> Result<(), String>;
    /// Removes an installed probe.
    fn remove(&mut self, probe: ProbeId);
}

/// A facade and the fake it installs into; debugger jobs are kept for the test to answer.
pub struct Driven<P: FakeProbes> {
    facade: Facade,
    probes: P,
    jobs: Vec<Job>,
}

impl<P: FakeProbes> Driven<P> {
    pub fn new(probes: P, daemon_language: &str) -> Self {
        Self::with_options(probes, Options::for_language(daemon_language))
    }

    pub fn with_options(probes: P, opts: Options) -> Self {
        Self {
            facade: Facade::new(0, opts),
            probes,
            jobs: Vec::new(),
        }
    }

    pub fn probes(&self) -> &P {
        &self.probes
    }

    /// [`Facade::stray_hits`].
    pub fn stray_hits(&self) -> u64 {
        self.facade.stray_hits()
    }

    /// Steps the facade with `input` and runs every effect, feeding install results back,
    /// until nothing is left; returns the messages sent, in order.
    fn drive(&mut self, input: Input<'_>) -> Vec<Value> {
        let mut sent = Vec::new();
        let mut effects: VecDeque<Effect> = self.facade.step(input).into();
        while let Some(fx) = effects.pop_front() {
            match fx {
                Effect::Send(m) => sent.push(m),
                Effect::Install { probe, file, spec } => {
                    let result = self.probes.add(probe, &file, &spec);
                    effects.extend(self.facade.step(Input::Installed { probe, result }));
                }
                Effect::Remove(probe) => self.probes.remove(probe),
                Effect::Evaluate(job) => self.jobs.push(job),
            }
        }
        sent
    }

    pub fn handle(&mut self, msg: &Value) -> Vec<Value> {
        self.drive(Input::Request(msg))
    }

    pub fn on_hits(&mut self, hits: &[ProbeHit]) -> Vec<Value> {
        self.drive(Input::Hits(hits))
    }

    pub fn job_done(&mut self, token: u64, outcome: Result<Vec<Evaluated>, String>) -> Vec<Value> {
        self.drive(Input::Evaluated { token, outcome })
    }

    pub fn target_exited(&mut self) -> Vec<Value> {
        self.drive(Input::TargetExited)
    }

    pub fn close(&mut self) {
        let sent = self.drive(Input::Close);
        assert!(sent.is_empty(), "closing sends nothing: {sent:?}");
    }

    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    pub fn is_stopped(&self) -> bool {
        self.facade.is_stopped()
    }

    pub fn dropped_stops(&self) -> u64 {
        self.facade.dropped_stops()
    }
}
