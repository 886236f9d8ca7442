//! Control-plane bodies: `/detrix/wake` (which daemon to register with) and
//! `/detrix/files/read` (which file), including the path check that keeps a read inside the
//! workspace root.
#![no_main]

use detrix_agent::control::{files, wake_daemon_url};
use libfuzzer_sys::fuzz_target;

const ROOT: &str = "/src/app";

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(Some(url)) = wake_daemon_url(body, |u| u == "http://127.0.0.1:8090") {
            assert_eq!(
                url, "http://127.0.0.1:8090",
                "a wake accepted a daemon url not allowed"
            );
        }
        return;
    }
    let Ok((path, req_root)) = files::parse_body(body) else {
        return;
    };
    if let Ok(rel) = files::relative_path(ROOT, req_root.as_deref(), &path) {
        assert!(!rel.is_empty());
        assert!(!rel.starts_with('/'), "relative path {rel:?} is absolute");
        assert!(
            !rel.split('/')
                .any(|c| c == ".." || c == "." || c.is_empty()),
            "{path:?} under {req_root:?} gave {rel:?}, which is not a plain relative path"
        );
    }
});
