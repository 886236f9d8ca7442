//! `detrix-agent serve` as the tests run it (serve.rs, node_mode.rs): started with a clean
//! environment, its host control plane found from the line it prints, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use detrix_e2e::{agent_bin, Lines};
use serde_json::Value;

use super::{http, json_body};

/// A running `detrix-agent serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:<port>` of its host control plane.
    pub control: String,
    pub stderr: Lines,
}

impl Serve {
    /// Starts `detrix-agent serve ARGS` with the `DETRIX_*` variables of the test's own
    /// environment removed and `envs` set; returns once it printed its control plane.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("serve").args(args);
        for k in [
            "DETRIX_DAEMON_URL",
            "DETRIX_CONTROL_HOST",
            "DETRIX_CONTROL_PORT",
            "DETRIX_TOKEN",
            "DETRIX_HOME",
            "DETRIX_POD_SELECTOR",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(envs.iter().copied())
            // DETRIX_TEST_SERVE_LOG (e.g. `detrix_agent=debug`) to see more when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("DETRIX_TEST_SERVE_LOG")
                    .unwrap_or_else(|_| "detrix_agent=info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, control, _stdout, stderr) = super::spawn_with_control_plane(&mut cmd);
        Serve {
            child,
            control,
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, b) = http("GET", &format!("{}{path}", self.control), None);
        (s, json_body(&b))
    }

    pub fn post(&self, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = http("POST", &format!("{}{path}", self.control), body);
        (s, json_body(&b))
    }

    /// `GET /detrix/targets`'s list.
    pub fn targets(&self) -> Vec<Value> {
        let (s, v) = self.get("/detrix/targets");
        assert_eq!(s, 200, "{v}");
        v["targets"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `pred` holds on the target list; returns the list.
    pub fn wait_targets(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.targets();
            if pred(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: targets {t:#?}\nserve stderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
