//! The engine as the DAP sessions see it: logpoints under ids that stay the same while all of
//! them are taken off the process and put back ([`Registry::suspend`], [`Registry::resume`]),
//! which a spawned debugger needs (both patch `int3` into the same text; design.md §7).

use std::collections::{BTreeMap, HashMap};

use crate::engine::{Engine, EngineError, Hit, LogpointId, LogpointSpec};

#[derive(Debug)]
struct Entry {
    file: String,
    spec: LogpointSpec,
    /// The engine's id while attached; `None` while suspended.
    engine_id: Option<LogpointId>,
}

/// Logpoints by stable id over one [`Engine`].
#[derive(Debug)]
pub struct Registry {
    engine: Engine,
    entries: BTreeMap<LogpointId, Entry>,
    by_engine: HashMap<LogpointId, LogpointId>,
    next: u64,
    suspended: bool,
}

impl Registry {
    #[must_use]
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            entries: BTreeMap::new(),
            by_engine: HashMap::new(),
            next: 1,
            suspended: false,
        }
    }

    /// The engine underneath (resolver, counters).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Installs a logpoint (only resolves and plans it while suspended; it is attached on
    /// [`Registry::resume`]).
    ///
    /// # Errors
    /// As [`Engine::add`].
    pub fn add(&mut self, file: &str, spec: &LogpointSpec) -> Result<LogpointId, EngineError> {
        let engine_id = if self.suspended {
            self.engine.resolver().prepare(file, spec)?;
            None
        } else {
            Some(self.engine.add(file, spec)?)
        };
        let id = LogpointId(self.next);
        self.next += 1;
        if let Some(e) = engine_id {
            self.by_engine.insert(e, id);
        }
        self.entries.insert(
            id,
            Entry {
                file: file.to_owned(),
                spec: spec.clone(),
                engine_id,
            },
        );
        Ok(id)
    }

    /// Removes a logpoint.
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove(&mut self, id: LogpointId) -> Result<(), EngineError> {
        let Some(e) = self.entries.remove(&id) else {
            return Ok(());
        };
        if let Some(eid) = e.engine_id {
            self.by_engine.remove(&eid);
            self.engine.remove(eid)?;
        }
        Ok(())
    }

    /// Removes every logpoint.
    ///
    /// # Errors
    /// The first detach error (the rest are still removed).
    pub fn remove_all(&mut self) -> Result<(), EngineError> {
        self.entries.clear();
        self.by_engine.clear();
        self.engine.remove_all()
    }

    /// Takes every uprobe off the process; the logpoints stay known.
    ///
    /// # Errors
    /// The first detach error.
    pub fn suspend(&mut self) -> Result<(), EngineError> {
        self.suspended = true;
        self.by_engine.clear();
        for e in self.entries.values_mut() {
            e.engine_id = None;
        }
        self.engine.remove_all()
    }

    /// Puts every logpoint back; returns the ones that could not be re-attached, with why.
    pub fn resume(&mut self) -> Vec<(LogpointId, String)> {
        self.suspended = false;
        let mut failed = Vec::new();
        for (id, e) in &mut self.entries {
            match self.engine.add(&e.file, &e.spec) {
                Ok(eid) => {
                    e.engine_id = Some(eid);
                    self.by_engine.insert(eid, *id);
                }
                Err(err) => failed.push((*id, err.to_string())),
            }
        }
        failed
    }

    /// Rewrites engine ids in `hits` to stable ids, dropping hits of probes no longer known.
    pub fn translate(&self, hits: Vec<Hit>) -> Vec<Hit> {
        hits.into_iter()
            .filter_map(|mut h| {
                let id = *self.by_engine.get(&h.logpoint)?;
                h.logpoint = id;
                Some(h)
            })
            .collect()
    }
}
