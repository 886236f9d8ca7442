//! The `DetrixWake` object as the tests build and read it: typed structs written from the
//! CRD's schema (`deploy/kubernetes/base/crd.yaml`), independent of the agent's own types, so a
//! wire-format mistake on either side shows as a failing test rather than agreeing with itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetrixWake {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub selector: String,
    pub canary: u32,
    pub steps: Vec<u32>,
    pub interval: String,
    pub ttl: String,
    pub safe_mode: bool,
    pub stage: u32,
    pub halted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub node: String,
    #[serde(default)]
    pub stage: u32,
    #[serde(default)]
    pub wanted: u32,
    #[serde(default)]
    pub awake: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub breaker_trips: u32,
    #[serde(default)]
    pub dropped_hits: u64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub updated_at: Option<String>,
}

impl DetrixWake {
    /// A wake of `selector` in `namespace`, as `fleet wake` would create it.
    pub fn new(name: &str, namespace: &str, spec: Spec) -> DetrixWake {
        DetrixWake {
            api_version: "detrix.dev/v1alpha1".to_owned(),
            kind: "DetrixWake".to_owned(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    /// Each node's report, by node name (`(stage, wanted, awake, failed, trips)`).
    pub fn reports(&self) -> std::collections::BTreeMap<String, (u32, u32, u32, u32, u32)> {
        self.status
            .iter()
            .flat_map(|s| s.nodes.iter())
            .map(|n| {
                (
                    n.node.clone(),
                    (n.stage, n.wanted, n.awake, n.failed, n.breaker_trips),
                )
            })
            .collect()
    }
}
