//! Discovery of forked children: one that keeps its parent's image (a pre-fork server's
//! worker) is reported as a process of its own, as the start scan would have found it; one
//! that execs is reported once, by its exec. Its own test binary, apart from discover_churn,
//! whose fd and thread counts must see only its own test. Needs root (the netlink process
//! connector wants CAP_NET_ADMIN); prints NOT RUN otherwise.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use detrix_agent::discover::tracker::{Change, Tracker};

#[test]
fn a_forked_child_that_keeps_its_image_is_reported_and_one_that_execs_once_by_its_exec() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("NOT RUN: the netlink process connector needs root");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tracker = Tracker::open().expect("tracker opens as root");
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), tracker.next()).await
        {
        }
        // The shell forks a subshell that never execs and prints its pid; the subshell forks a
        // `sleep` every 100 ms, each of which execs at once.
        let mut sh = Command::new("/bin/sh")
            .args(["-c", "( while :; do sleep 0.1; done ) & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().expect("piped")),
            &mut line,
        )
        .expect("the subshell's pid");
        let sub: u32 = line.trim().parse().expect("a pid");
        let sh_exe = std::fs::read_link(format!("/proc/{}/exe", sh.id()))
            .expect("sh's executable")
            .display()
            .to_string();
        // Every start reported for 1.5 s: pid → (exe, exec_ns is set), once per report.
        let mut reports: HashMap<u32, Vec<(String, Vec<String>, bool)>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if let Ok(Ok(Change::Started { process, exec_ns })) =
                tokio::time::timeout(Duration::from_millis(100), tracker.next()).await
            {
                reports.entry(process.pid).or_default().push((
                    process.exe,
                    process.cmdline,
                    exec_ns.is_some(),
                ));
            }
        }
        // SAFETY: plain kill(2) of the children this test started.
        unsafe {
            libc::kill(sub as i32, libc::SIGKILL);
            libc::kill(sh.id() as i32, libc::SIGKILL);
        }
        let _ = sh.wait();
        assert_eq!(
            reports.get(&sub),
            Some(&vec![(
                sh_exe.clone(),
                vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    "( while :; do sleep 0.1; done ) & echo $!; wait".to_owned()
                ],
                false
            )]),
            "the subshell {sub} reported once, with its parent's image, as found (no exec) ({:?})",
            tracker.stats
        );
        let sleeps: Vec<&Vec<(String, Vec<String>, bool)>> = reports
            .values()
            .filter(|r| r.iter().any(|(_, cmd, _)| cmd == &["sleep", "0.1"]))
            .collect();
        assert!(
            sleeps.len() >= 5,
            "the subshell's sleeps were seen: {sleeps:?}"
        );
        for r in &sleeps {
            assert_eq!(r.len(), 1, "a sleep reported once: {r:?}");
            assert!(r[0].2, "by its exec: {r:?}");
        }
        assert!(tracker.stats.fork_events >= 6, "{:?}", tracker.stats);
        assert!(tracker.stats.forks_kept >= 1, "{:?}", tracker.stats);
    });
}
