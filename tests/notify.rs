//! `notify_command` in rotation.yaml: one JSON event on the command's stdin when an account is
//! spent, needs a login, comes back, or every account is spent; the command runs detached with
//! a reduced environment and is stopped after `notify_timeout`.

#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use qwen_rotation::model::Class;
use serde_json::Value;
use vault_home::*;

/// A command that keeps each event and its environment in `dir`, one file per run.
fn keeper(dir: &Path) -> String {
    format!(
        "d='{}'; n=$(date +%s%N)-$$; env > \"$d/env-$n.tmp\"; cat > \"$d/ev-$n.tmp\"; mv \"$d/env-$n.tmp\" \"$d/env-$n.txt\"; mv \"$d/ev-$n.tmp\" \"$d/ev-$n.json\"",
        dir.display()
    )
}

/// The events kept in `dir`, once there are `n` of them (or the test fails after 10 s).
fn kept(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        if files.len() >= n {
            files.sort();
            return files
                .iter()
                .map(|p| {
                    let text = fs::read_to_string(p).unwrap();
                    assert_clean("an alert", &text);
                    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
                    serde_json::from_str(&text).unwrap()
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{n} alerts within 10 s, got {}",
            files.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(events: &[Value]) -> Vec<(String, Option<u64>)> {
    let mut v: Vec<(String, Option<u64>)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["slot"].as_u64()))
        .collect();
    v.sort();
    v
}

fn clear(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
}

#[test]
fn spent_needs_login_all_spent_and_back_each_reach_the_command() {
    let h = Home::with_oauth(3);
    let out = tempfile::tempdir().unwrap();
    let v = h.vault_with(|c| c.notify_command = Some(keeper(out.path())));
    v.set_label("1", Some("personal")).unwrap();

    v.report(1, &hit(Class::Quota)).unwrap();
    let got = kept(out.path(), 1);
    assert_eq!(names(&got), vec![("account_spent".into(), Some(1))]);
    let e = &got[0];
    assert_eq!(e["label"], "personal");
    assert_eq!(e["kind"], "oauth");
    assert_eq!(e["cli"], "qwen");
    assert!(e["until"].is_string() && e["time"].is_string(), "{e}");
    assert_eq!(
        (e["usable"].as_u64(), e["total"].as_u64()),
        (Some(2), Some(3))
    );
    clear(out.path());

    v.report(2, &hit(Class::Auth)).unwrap();
    assert_eq!(
        names(&kept(out.path(), 1)),
        vec![("needs_login".into(), Some(2))]
    );
    clear(out.path());

    v.report(3, &hit(Class::Quota)).unwrap();
    let got = kept(out.path(), 2);
    assert_eq!(
        names(&got),
        vec![
            ("account_spent".into(), Some(3)),
            ("all_spent".into(), None)
        ]
    );
    let all = got.iter().find(|e| e["event"] == "all_spent").unwrap();
    assert!(all["earliest_return"].is_string(), "{all}");
    assert_eq!(all["usable"], 0);
    clear(out.path());

    // A report another process already made announces nothing a second time.
    v.report(3, &hit(Class::Quota)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "no second alert"
    );

    // Back by hand, through the binary, with a key in its environment that must not reach
    // the command.
    fs::write(
        h.paths.home.join("rotation.yaml"),
        format!(
            "notify_command: \"{}\"\n",
            keeper(out.path())
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        ),
    )
    .unwrap();
    let secret_key = token("env-key");
    let mut cmd = h.cmd(&["--rotation-reset", "1"]);
    cmd.env("OPENAI_API_KEY", &secret_key)
        .env("QWEN_ROTATION_REAL", "/nonexistent");
    let run = vault_home::child::collect_within(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
        "--rotation-reset",
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let got = kept(out.path(), 1);
    assert_eq!(names(&got), vec![("account_back".into(), Some(1))]);
    let env: String = fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(env.contains("QWEN_ROTATION_EVENT=account_back"), "{env}");
    for private in [
        "OPENAI_API_KEY",
        "QWEN_HOME",
        "QWEN_ROTATION_REAL",
        SECRET_MARK,
    ] {
        assert!(
            !env.contains(private),
            "{private} reaches the command:\n{env}"
        );
    }
}

#[test]
fn a_command_that_hangs_holds_nothing_up_and_is_stopped() {
    let h = Home::with_oauth(2);
    let out = tempfile::tempdir().unwrap();
    let pid_file = out.path().join("pid");
    let v = h.vault_with(|c| {
        c.notify_command = Some(format!("echo $$ > '{}'; exec sleep 60", pid_file.display()));
        c.notify_timeout = Duration::from_secs(3);
    });
    let started = Instant::now();
    v.report(1, &hit(Class::Quota)).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the report does not wait for the command: {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the command is stopped after notify_timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "it had its notify_timeout to run: {:?}",
        started.elapsed()
    );
}

#[test]
fn without_a_command_nothing_runs_and_the_setting_parses() {
    let c = qwen_rotation::config::Config::parse(
        "notify_command: notify-send qwen\nnotify_timeout: 30s\n",
    )
    .unwrap();
    assert_eq!(c.notify_command.as_deref(), Some("notify-send qwen"));
    assert_eq!(c.notify_timeout, Duration::from_secs(30));
    let d = qwen_rotation::config::Config::default();
    assert_eq!(
        (d.notify_command, d.notify_timeout),
        (None, Duration::from_secs(10))
    );
}
