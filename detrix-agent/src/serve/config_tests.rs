//! Every key of the file and the flags, and every error, with the exact sentence.

use super::*;
use crate::discover::Process;

const ID: &str = "3f4e2a8bd1c0975e6a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";

fn users(name: &str) -> Option<u32> {
    uid_in_passwd(
        "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1001::/home/app:/bin/sh\n",
        name,
    )
}

fn proc_() -> Process {
    Process {
        pid: 4242,
        ns_pid: 7,
        uid: 1001,
        comm: "orders".into(),
        exe: "/app/orders".into(),
        host_exe: "/srv/roots/a/app/orders".into(),
        cmdline: vec!["/app/orders".into(), "--port".into(), "8080".into()],
        cgroup: format!("/system.slice/docker-{ID}.scope"),
        container: Some(ID.into()),
        start_time: 99,
    }
}

fn file(text: &str) -> Result<Config, ConfigError> {
    merge(&Flags::default(), Some(("serve.toml", text)), &users)
}

fn flags(select: &[&str]) -> Flags {
    Flags {
        select: select.iter().map(|s| (*s).to_owned()).collect(),
        ..Flags::default()
    }
}

fn err(r: Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {} rules", c.rules.len()),
        Err(e) => e.0,
    }
}

fn selects(rule: &str) -> bool {
    let c = merge(&flags(&[rule]), None, &users).expect("rule parses");
    c.rules[0].select.matches(&proc_())
}

#[test]
fn every_select_key_matches_and_mismatches() {
    // exe: the path inside the process's root, and the host's path through it.
    assert!(selects("exe=/app/orders"));
    assert!(selects("exe=/srv/roots/*/app/orders"));
    assert!(selects("exe=**/orders"));
    assert!(!selects("exe=/app/order"));
    // comm: exact.
    assert!(selects("comm=orders"));
    assert!(!selects("comm=order"));
    // cmdline: a regex searched in the arguments joined by spaces.
    assert!(selects("cmdline=--port 80[0-9]0"));
    assert!(selects("cmdline=^/app/orders"));
    assert!(!selects("cmdline=--port 9090"));
    // cgroup: glob.
    assert!(selects("cgroup=/system.slice/docker-*.scope"));
    assert!(!selects("cgroup=/user.slice/*"));
    // container: id prefix, any case.
    assert!(selects("container=3f4e2a8b"));
    assert!(selects("container=3F4E2A8B"));
    assert!(!selects("container=3f4e2a8c"));
    // user: a name or a uid.
    assert!(selects("user=app"));
    assert!(selects("user=1001"));
    assert!(!selects("user=root"));
    // All must match.
    assert!(selects("exe=/app/orders,user=app,comm=orders"));
    assert!(!selects("exe=/app/orders,user=root"));
}

#[test]
fn a_host_process_has_no_container_to_match() {
    let c = merge(&flags(&["container=3f"]), None, &users).unwrap();
    let mut p = proc_();
    p.container = None;
    assert!(!c.rules[0].select.matches(&p));
}

#[test]
fn every_file_key_is_read() {
    let c = file(
        r#"
daemon_url = "http://10.0.0.1:8090"
wake = "auto"
control_host = "0.0.0.0"
control_port = 9100

[[rule]]
select = { exe = "/app/*", comm = "orders", cmdline = "--port", cgroup = "/system.slice/**", container = "3f4e", user = "app" }
name = "{comm}-{container}-{pid}-{ns_pid}-{uid}-{exe}-{exe_path}"
language = "go"
safe_mode = true
daemon_url = "http://10.0.0.2:8090"
wake = "manual"
build_commit = "4f1c2e9"
build_tag = "v1.4.0"

[[rule]]
select = { user = 0 }
"#,
    )
    .expect("valid config");
    assert_eq!(c.daemon_url, "http://10.0.0.1:8090");
    assert_eq!(c.wake, Wake::Auto);
    assert_eq!(c.control_host, "0.0.0.0");
    assert_eq!(c.control_port, 9100);
    assert_eq!(c.rules.len(), 2);
    let r = &c.rules[0];
    assert_eq!(r.origin, "serve.toml line 7");
    assert!(r.select.matches(&proc_()));
    assert_eq!(
        r.name.render(&proc_()),
        "orders-3f4e2a8bd1c0-4242-7-1001-orders-/app/orders"
    );
    assert_eq!(r.language, LanguageChoice::Go);
    assert!(r.safe_mode);
    assert_eq!(r.daemon_url.as_deref(), Some("http://10.0.0.2:8090"));
    assert_eq!(r.wake, Some(Wake::Manual));
    assert_eq!(
        r.build,
        crate::buildinfo::Explicit {
            commit: Some("4f1c2e9".into()),
            tag: Some("v1.4.0".into())
        }
    );
    let r = &c.rules[1];
    assert_eq!(r.origin, "serve.toml line 17");
    assert_eq!(r.select.user, Some(0));
    assert_eq!(r.name.render(&proc_()), "orders");
    assert_eq!(r.language, LanguageChoice::Auto);
    assert!(!r.safe_mode);
    assert_eq!(r.daemon_url, None);
    assert_eq!(r.wake, None);
    assert_eq!(r.build, crate::buildinfo::Explicit::default());
}

#[test]
fn defaults_without_a_file() {
    let c = merge(&flags(&["comm=orders"]), None, &users).unwrap();
    assert_eq!(c.daemon_url, DEFAULT_DAEMON_URL);
    assert_eq!(c.wake, Wake::Manual);
    assert_eq!(c.control_host, "127.0.0.1");
    assert_eq!(c.control_port, 0);
    assert_eq!(c.rules[0].origin, "--select #1");
    let mut p = proc_();
    p.container = None;
    assert_eq!(
        Template::new("{container}").unwrap().render(&p),
        "host",
        "outside a container"
    );
}

#[test]
fn flags_add_rules_and_replace_top_level_values() {
    let f = Flags {
        select: vec!["comm=orders".into(), "user=0".into()],
        wake: Some("manual".into()),
        daemon_url: Some("http://127.0.0.1:9".into()),
        control_host: Some("::1".into()),
        control_port: Some(7),
        config: None,
        kubernetes: false,
    };
    let text = "daemon_url = \"http://10.0.0.1:8090\"\nwake = \"auto\"\ncontrol_port = 9100\n[[rule]]\nselect = { exe = \"/x\" }\n";
    let c = merge(&f, Some(("serve.toml", text)), &users).unwrap();
    let origins: Vec<&str> = c.rules.iter().map(|r| r.origin.as_str()).collect();
    assert_eq!(origins, ["serve.toml line 4", "--select #1", "--select #2"]);
    assert_eq!(c.wake, Wake::Manual);
    assert_eq!(c.daemon_url, "http://127.0.0.1:9");
    assert_eq!(c.control_host, "::1");
    assert_eq!(c.control_port, 7);
}

#[test]
fn file_errors_name_the_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("[[rule]]\nselect = { exe = \"/x\" }\ncolour = 1\n",
         "serve.toml line 3 (`colour = 1`): unknown field `colour`, expected one of `select`, `name`, `language`, `safe_mode`, `daemon_url`, `wake`, `build_commit`, `build_tag`"),
        ("wake = \"sometimes\"\n[[rule]]\nselect = { exe = \"/x\" }\n",
         "serve.toml line 1: `wake` `sometimes` is not a wake policy; use \"manual\" or \"auto\""),
        ("daemon_url = \"10.0.0.1:8090\"\n[[rule]]\nselect = { exe = \"/x\" }\n",
         "serve.toml line 1: `daemon_url` `10.0.0.1:8090` is not an http:// URL (e.g. http://127.0.0.1:8090)"),
        ("[[rule]]\nname = \"x\"\n",
         "serve.toml line 1 (`[[rule]]`): missing field `select`"),
        ("[[rule]]\nselect = {}\n",
         "serve.toml line 2: `select` is empty; give at least one of exe, comm, cmdline, cgroup, container, user"),
        ("[[rule]]\nselect = { path = \"/x\" }\n",
         "serve.toml line 2: select `path` is not a select key; use exe, comm, cmdline, cgroup, container, user"),
        ("[[rule]]\nselect = { exe = 3 }\n",
         "serve.toml line 2: select key `exe` must be a string (got integer)"),
        ("[[rule]]\nselect = { exe = \"/bin/[ab\" }\n",
         "serve.toml line 2: select `exe` glob `/bin/[ab`: `[` at character 6 is never closed with `]`"),
        ("[[rule]]\nselect = { cgroup = \"[\" }\n",
         "serve.toml line 2: select `cgroup` glob `[`: `[` at character 1 is never closed with `]`"),
        ("[[rule]]\nselect = { cmdline = \"(\" }\n",
         "serve.toml line 2: select `cmdline` regex `(` does not compile (error: unclosed group)"),
        ("[[rule]]\nselect = { comm = \"a-very-long-command\" }\n",
         "serve.toml line 2: select `comm` `a-very-long-command` is longer than the 15 bytes the kernel keeps; use its first 15 (`a-very-long-com`) or match `exe` instead"),
        ("[[rule]]\nselect = { container = \"xyz\" }\n",
         "serve.toml line 2: select `container` `xyz` is not a container id prefix (up to 64 hex digits)"),
        ("[[rule]]\nselect = { user = \"nobody-here\" }\n",
         "serve.toml line 2: select `user` `nobody-here` is not a uid nor a user in /etc/passwd"),
        ("[[rule]]\nselect = { comm = \"\" }\n",
         "serve.toml line 2: select `comm` is empty; give a value or leave the key out"),
        ("[[rule]]\nselect = { comm = \"a\" }\nname = \"{host}\"\n",
         "serve.toml line 3: `name`: `{host}` is not a placeholder; use {comm}, {exe}, {exe_path}, {container}, {pid}, {ns_pid}, {uid}"),
        ("[[rule]]\nselect = { comm = \"a\" }\nname = \"x-{pid\"\n",
         "serve.toml line 3: `name`: `{` in `{pid` is never closed with `}`"),
        ("[[rule]]\nselect = { comm = \"a\" }\nname = \"x}\"\n",
         "serve.toml line 3: `name`: `}` at `}` closes no placeholder"),
        ("[[rule]]\nselect = { comm = \"a\" }\nname = \" \"\n",
         "serve.toml line 3: `name`: the name template is empty"),
        ("[[rule]]\nselect = { comm = \"a\" }\nlanguage = \"c\"\n",
         "serve.toml line 3: `language` `c` is not a language; use \"auto\", \"go\" or \"rust\""),
        ("[[rule]]\nselect = { comm = \"a\" }\nsafe_mode = \"yes\"\n",
         "serve.toml line 3 (`safe_mode = \"yes\"`): invalid type: string \"yes\", expected a boolean"),
        ("[[rule]]\nselect = { comm = \"a\" }\ndaemon_url = \"ftp://x\"\n",
         "serve.toml line 3: `daemon_url` `ftp://x` is not an http:// URL (e.g. http://127.0.0.1:8090)"),
        ("[[rule]]\nselect = { comm = \"a\" }\nwake = \"later\"\n",
         "serve.toml line 3: `wake` `later` is not a wake policy; use \"manual\" or \"auto\""),
        ("control_port = 70000\n",
         "serve.toml line 1 (`control_port = 70000`): invalid value: integer `70000`, expected u16"),
        ("rule = [\n",
         "serve.toml line 1 (`rule = [`): unclosed array, expected `]`"),
    ];
    for (text, want) in cases {
        assert_eq!(err(file(text)), *want, "config:\n{text}");
    }
}

#[test]
fn flag_errors_name_the_flag_and_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["exe"], "--select #1 `exe`: `exe` is not key=value (keys: exe, comm, cmdline, cgroup, container, user)"),
        (&["comm=a", "colour=red"], "--select #2 `colour=red`: `colour` is not a select key; use exe, comm, cmdline, cgroup, container, user"),
        (&["comm=a,comm=b"], "--select #1 `comm=a,comm=b`: `comm` is given twice"),
        (&["exe="], "--select #1 `exe=`: `exe` is empty; give a value or leave the key out"),
        (&["user=ghost"], "--select #1 `user=ghost`: `user` `ghost` is not a uid nor a user in /etc/passwd"),
        (&[], "no rule selects any process; pass --select exe=/path/glob or a --config file with a [[rule]]"),
    ];
    for (sel, want) in cases {
        assert_eq!(err(merge(&flags(sel), None, &users)), *want);
    }
    let mut f = flags(&["comm=a"]);
    f.wake = Some("never".into());
    assert_eq!(
        err(merge(&f, None, &users)),
        "--wake `never` is not a wake policy; use \"manual\" or \"auto\""
    );
    let mut f = flags(&["comm=a"]);
    f.daemon_url = Some("localhost:8090".into());
    assert_eq!(
        err(merge(&f, None, &users)),
        "`--daemon-url` `localhost:8090` is not an http:// URL (e.g. http://127.0.0.1:8090)"
    );
    let f = Flags {
        config: Some("/nonexistent/serve.toml".into()),
        ..flags(&[])
    };
    assert_eq!(
        err(load(&f)),
        "cannot read the config file /nonexistent/serve.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn passwd_lookup() {
    assert_eq!(users("root"), Some(0));
    assert_eq!(users("app"), Some(1001));
    assert_eq!(users("ap"), None);
}

#[test]
fn the_shipped_sample_config_is_valid() {
    let text = include_str!("../../../deploy/systemd/serve.toml");
    let c = merge(&Flags::default(), Some(("serve.toml", text)), &users).expect("sample parses");
    assert_eq!(c.daemon_url, "http://127.0.0.1:8090");
    assert_eq!(c.wake, Wake::Manual);
    assert_eq!(
        (c.control_host.as_str(), c.control_port),
        ("127.0.0.1", 8091)
    );
    assert_eq!(c.rules.len(), 2);
    let mut p = proc_();
    p.exe = "/srv/orders/v2/bin/orders-service".into();
    p.host_exe = p.exe.clone();
    assert!(c.rules[0].select.matches(&p));
    assert_eq!(c.rules[0].wake, Some(Wake::Auto));
    assert_eq!(c.rules[0].name.render(&p), "orders-service");
    let mut q = proc_();
    q.uid = 1000;
    q.cmdline = vec!["/app/orders".into(), "--serve".into()];
    assert!(c.rules[1].select.matches(&q));
    assert!(c.rules[1].safe_mode);
    assert_eq!(c.rules[1].name.render(&q), "orders-3f4e2a8bd1c0");
    assert_eq!(
        c.rules[1].daemon_url.as_deref(),
        Some("http://10.0.0.5:8090")
    );
}
