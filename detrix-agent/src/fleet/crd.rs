//! The `DetrixWake` object (`detrix.dev/v1alpha1`, `deploy/kubernetes/base/crd.yaml`) as Rust types,
//! with the `kube::Resource` impl that lets `kube::Api` list, watch, create and patch it. Written
//! by hand rather than derived (kube's `derive` feature pulls in schemars and a proc-macro
//! stack) — the CRD's YAML is the schema, and the manifest test validates the example object
//! against it. Field names are the CRD's (camelCase); optional fields are left out when unset.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "detrix.dev";
/// The API version within the group.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "DetrixWake";
/// The resource (plural) name.
pub const PLURAL: &str = "detrixwakes";

/// One staged wake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DetrixWake {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: WakeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WakeStatus>,
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn kind() -> String {
    KIND.to_owned()
}

impl DetrixWake {
    /// A new object named `name` in `namespace`.
    #[must_use]
    pub fn new(name: &str, namespace: &str, spec: WakeSpec) -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

/// What the CLI asks for; only the CLI writes it (`stage`, `halted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WakeSpec {
    /// Label selector of the pods, in the object's namespace.
    pub selector: String,
    #[serde(default = "one")]
    pub canary: u32,
    pub steps: Vec<u8>,
    #[serde(default = "thirty_s")]
    pub interval: String,
    pub ttl: String,
    #[serde(default)]
    pub safe_mode: bool,
    #[serde(default)]
    pub stage: u32,
    #[serde(default)]
    pub halted: bool,
}

fn one() -> u32 {
    1
}

fn thirty_s() -> String {
    "30s".to_owned()
}

/// Written by the node agents, each its own entry of `nodes` (server-side apply, one field
/// manager per node, `nodes` a list-map keyed by `node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WakeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
}

/// One node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    /// The stage this report is about.
    #[serde(default)]
    pub stage: u32,
    /// This node's targets that belong to that stage.
    #[serde(default)]
    pub wanted: u32,
    /// Of those, awake (woken by this object and still registered).
    #[serde(default)]
    pub awake: u32,
    /// Failed to wake, or lost their daemon session.
    #[serde(default)]
    pub failed: u32,
    /// Probes the CPU breaker switched off in the targets this object woke, since it woke
    /// them (their `/detrix/status` `probes_switched_off`, counted from the wake).
    #[serde(default)]
    pub breaker_trips: u32,
    /// Hits those targets dropped since the wake because the daemon read too slowly
    /// (`dropped_hits`): reported, not a trip.
    #[serde(default)]
    pub dropped_hits: u64,
    /// The first failure, or why every target sleeps (halted, expired).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl kube::Resource for DetrixWake {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
