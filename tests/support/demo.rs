//! What the `--rotation-demo` tests of every profile check the same way: the person's files
//! byte for byte (a snapshot) and untouched (inotify), what is left in a directory, the processes
//! a run left behind, the numbered step lines, and a demo stopped by a signal once its CLI runs.
//!
//! Included by tests/demo.rs, tests/demo_gemini.rs and tests/demo_claude.rs with
//! `#[path = "support/demo.rs"] mod demo;`; the support module of the profile's real CLI gives
//! the sandbox.
#![allow(dead_code)]

#[path = "child.rs"]
mod child;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The demo's status table (after the line naming `--rotation-status in the demo home`):
/// account 1 cooling down, account 2 live, and, when `home` is given, the pool in a directory
/// whose path holds each of its parts (the demo's own home).
pub fn assert_status_table(stdout: &str, home: &[&str], dump: &str) {
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("--rotation-status in the demo home"))
        .collect();
    if !home.is_empty() {
        assert!(
            table
                .iter()
                .any(|l| l.starts_with("Accounts in ") && home.iter().all(|h| l.contains(h))),
            "{dump}"
        );
    }
    assert!(
        table
            .iter()
            .any(|l| l.contains("1  spent") && l.contains("cooling down")),
        "{dump}"
    );
    assert!(
        table.iter().any(|l| l.starts_with("  *  2  fresh")),
        "{dump}"
    );
}

/// Piped output is plain text: no escape sequence on either stream.
pub fn assert_plain(stdout: &[u8], stderr: &[u8], dump: &str) {
    assert!(!stdout.contains(&0x1b), "{dump}");
    assert!(!stderr.contains(&0x1b), "{dump}");
}

/// Every file under `dir` with its bytes and mode.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&path));
            out.insert(path, (Vec::new(), meta.permissions().mode()));
        } else {
            out.insert(
                path.clone(),
                (fs::read(&path).unwrap(), meta.permissions().mode()),
            );
        }
    }
    out
}

/// Watches each of `dirs` (the person's CLI home and what it holds) for any open, read or
/// change, and `home` for anything created, deleted or moved into it.
pub fn watch(dirs: &[&Path], home: &Path) -> Inotify {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    let everything = AddWatchFlags::IN_OPEN
        | AddWatchFlags::IN_ACCESS
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO;
    for dir in dirs {
        ino.add_watch(*dir, everything).unwrap();
    }
    ino.add_watch(
        home,
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_TO,
    )
    .unwrap();
    ino
}

/// The events seen so far (none is `EAGAIN`).
pub fn events(ino: &Inotify) -> Vec<String> {
    match ino.read_events() {
        Ok(evs) => evs
            .into_iter()
            .map(|e| format!("{:?} {:?}", e.mask, e.name))
            .collect(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("inotify: {e}"),
    }
}

pub fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Processes whose working directory is under `tmp` (left behind by this test's run).
pub fn processes_in(tmp: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cwd) = fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(tmp)
        {
            found.push(format!(
                "{} in {}",
                entry.file_name().to_string_lossy(),
                cwd.display()
            ));
        }
    }
    found
}

/// The step lines of the demo's `stdout` (`N. [ s.ss s] …`) are `count`, numbered 1 to `count`
/// in order, each with its time; `dump` is shown on a failure.
pub fn assert_numbered_steps(stdout: &str, count: usize, dump: &str) {
    let numbered: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let digits = t.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && t[digits..].starts_with(". [")
        })
        .collect();
    assert_eq!(numbered.len(), count, "{dump}");
    for (i, l) in numbered.iter().enumerate() {
        assert!(
            l.trim_start().starts_with(&format!("{}. [", i + 1)) && l.contains(" s] "),
            "step {} reads {l:?}",
            i + 1
        );
    }
}

/// How a demo stopped by a signal ended.
pub struct Interrupted {
    pub status: ExitStatus,
    /// The stdout lines read before the signal.
    pub seen: Vec<String>,
    pub stderr: String,
    /// From the signal to the exit.
    pub took: Duration,
}

/// Starts `cmd` (the demo, in its own process group), reads its stdout until a line contains
/// `started` (the demo's own line saying the CLI runs), then sends `signal` to the demo's
/// process group as a terminal's Ctrl-C would (its children have their own), and waits for the
/// exit. Every wait has `limit`.
pub fn interrupt_when(
    mut cmd: Command,
    started: &str,
    signal: Signal,
    limit: Duration,
) -> Interrupted {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = cmd.spawn().unwrap();
    let pid = Pid::from_raw(running.id() as i32);
    let (tx, rx) = mpsc::channel();
    let stdout = running.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let now = line.contains(started);
                seen.push(line);
                if now {
                    break;
                }
            }
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                panic!("the demo never said {started:?}: {seen:?}");
            }
        }
    }
    killpg(pid, signal).unwrap();
    let at = Instant::now();
    let status = child::wait_within(&mut running, Duration::from_secs(60), "the demo");
    let took = at.elapsed();
    let mut stderr = String::new();
    running
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Interrupted {
        status,
        seen,
        stderr,
        took,
    }
}
