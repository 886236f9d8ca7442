//! Node mode (`serve --kubernetes`): the pods of this node, as the API server lists them, turned
//! into `serve` rules — one per observed container, selecting the processes whose cgroup names
//! that container's id, so the existing discovery (the `/proc` scan and the exec/exit events)
//! finds them exactly as it finds processes for a file rule.
//!
//! This module is pure (pods in, rules out): which pods are observed ([`PodSelector`] or the
//! annotation `detrix.dev/observe`), how a container becomes a rule ([`container_rules`]), and
//! the set of them per pod ([`PodRules`]). [`watch`] is the I/O: kube-rs's watcher on the pods
//! of the node, feeding the set and sending `serve` a new config when the rules change.
//!
//! Why rules rather than a second table: `serve`'s host already keeps the targets, names them,
//! lets go of those no rule selects any more and adds running processes a new rule selects
//! ([`crate::serve::host::Host::reload`]). A pod deleted is its rules gone, so its targets go;
//! a restarted agent lists the pods again and builds the same rules, so nothing is added twice.

pub mod watch;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::serve::config::Config;
use crate::serve::rule::{LanguageChoice, Rule, Select, Template, Wake};

/// The annotation that observes a pod (`"true"`) or keeps it out whatever its labels (`"false"`).
pub const OBSERVE: &str = "detrix.dev/observe";
/// `auto`, `go` or `rust`, as a rule's `language`.
pub const LANGUAGE: &str = "detrix.dev/language";
/// `true` or `false`: register in SafeMode.
pub const SAFE_MODE: &str = "detrix.dev/safe-mode";
/// `manual` or `auto`, as a rule's `wake`.
pub const WAKE: &str = "detrix.dev/wake";

/// One requirement of an equality-based label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// An equality-based label selector (`app=orders,tier!=batch,canary,!legacy`), as
/// `kubectl get -l` takes it. Set-based forms (`in`, `notin`) are refused with a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodSelector(Vec<Requirement>);

impl PodSelector {
    /// Parses a selector; an empty text selects nothing (only annotated pods are observed).
    ///
    /// # Errors
    /// A sentence naming the faulty requirement.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim) {
            let bad = |why: &str| {
                format!("pod selector `{text}`: `{part}` {why}; use key=value, key!=value, key or !key, joined by commas")
            };
            if part.is_empty() {
                return Err(bad("is empty"));
            }
            if part.contains(" in ") || part.contains(" notin ") || part.contains('(') {
                return Err(bad("is a set-based requirement, which is not supported"));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) || key.contains('=') {
                return Err(bad("has no valid label key"));
            }
            reqs.push(req);
        }
        Ok(Some(Self(reqs)))
    }

    /// Whether `labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Whether `pod` is observed: `detrix.dev/observe: "true"`, or labels matching `selector`
/// unless `detrix.dev/observe: "false"`.
#[must_use]
pub fn observed(pod: &Pod, selector: Option<&PodSelector>) -> bool {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBSERVE))
        .map(String::as_str);
    match annotation {
        Some("true") => true,
        Some("false") => false,
        _ => selector
            .is_some_and(|s| s.matches(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))),
    }
}

/// The id in `containerd://<id>` (or `cri-o://`, `docker://`): lower-case, as the cgroup names it.
#[must_use]
pub fn container_id(status_id: &str) -> Option<String> {
    let (_, id) = status_id.split_once("://")?;
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// One rule per container of `pod` that has an id (it was started), named
/// `<namespace>/<pod>/<container>`; language, SafeMode and wake from the pod's annotations.
///
/// # Errors
/// A bad annotation value, in a sentence naming the pod, the annotation and the choices.
pub fn container_rules(pod: &Pod) -> Result<Vec<Rule>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let ann = |k: &str| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    let at = |k: &str, e: String| format!("pod {ns}/{name}: annotation `{k}`: {e}");
    let language = ann(LANGUAGE)
        .map(|v| LanguageChoice::parse(v).map_err(|e| at(LANGUAGE, e)))
        .transpose()?
        .unwrap_or(LanguageChoice::Auto);
    let safe_mode = match ann(SAFE_MODE) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(at(
                SAFE_MODE,
                format!("`{other}` is not a boolean; use \"true\" or \"false\""),
            ))
        }
    };
    let wake = ann(WAKE)
        .map(|v| Wake::parse(v).map_err(|e| at(WAKE, e)))
        .transpose()?;
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let mut rules = Vec::new();
    for c in statuses.into_iter().flatten() {
        let Some(id) = c.container_id.as_deref().and_then(container_id) else {
            continue;
        };
        let conn = format!("{ns}/{name}/{}", c.name);
        let template = Template::new(&conn).map_err(|e| format!("pod {ns}/{name}: {e}"))?;
        rules.push(Rule {
            origin: format!("pod {conn}"),
            select: Select {
                container: Some(id),
                ..Select::default()
            },
            name: template,
            language,
            safe_mode,
            daemon_url: None,
            wake,
            // No annotation names a build yet: found from the process (issue #17's order).
            build: crate::buildinfo::Explicit::default(),
        });
    }
    Ok(rules)
}

/// The observed pods' rules, by pod UID, and the config they make with the file's.
#[derive(Debug, Default)]
pub struct PodRules {
    by_pod: BTreeMap<String, Vec<Rule>>,
}

impl PodRules {
    /// Replaces what is known of `pod` (observed or not any more); returns whether the rules
    /// changed. A pod with a bad annotation is not observed, with one warning per change.
    pub fn apply(&mut self, pod: &Pod, selector: Option<&PodSelector>) -> bool {
        let uid = uid_of(pod);
        let rules = if observed(pod, selector) {
            container_rules(pod).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "pod not observed");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let before = self.by_pod.get(&uid).map(|r| keys(r));
        let after = (!rules.is_empty()).then(|| keys(&rules));
        if rules.is_empty() {
            self.by_pod.remove(&uid);
        } else {
            self.by_pod.insert(uid, rules);
        }
        before != after
    }

    /// Forgets `pod`; returns whether it had rules.
    pub fn delete(&mut self, pod: &Pod) -> bool {
        self.by_pod.remove(&uid_of(pod)).is_some()
    }

    /// How many containers are observed.
    #[must_use]
    pub fn containers(&self) -> usize {
        self.by_pod.values().map(Vec::len).sum()
    }

    /// `base` with the pods' rules first (in pod UID order), then the file's.
    #[must_use]
    pub fn config(&self, base: &Config) -> Config {
        let mut cfg = base.clone();
        cfg.rules = self
            .by_pod
            .values()
            .flatten()
            .cloned()
            .chain(base.rules.iter().cloned())
            .collect();
        cfg
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// What about a pod's rules matters for a change: name, container id, language, mode, wake.
fn keys(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            format!(
                "{}|{:?}|{:?}|{}|{:?}",
                r.origin, r.select.container, r.language, r.safe_mode, r.wake
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
