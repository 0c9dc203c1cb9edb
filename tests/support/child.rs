//! Processes the tests start: a known signal state in, a deadline on every wait out.
//!
//! Invariant: a test never depends on the signal dispositions of whoever started `cargo test`.
//! An ignored signal survives execve(2) (signal(7): "During an execve, the dispositions of
//! handled signals are reset to the default; the dispositions of ignored signals are left
//! unchanged"), and so does the signal mask, so a suite started under `nohup` (SIGHUP ignored) or
//! from a shell that ignores SIGINT would hand those to every shim it runs. [`default_signals`]
//! gives each child every disposition at its default and an empty mask, as a login shell would.
//! And no wait is unbounded: [`wait_within`] fails the test with a message naming what hung.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};

/// Starts `cmd`'s process with every signal at its default action and none blocked.
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: runs in the forked child before exec; signal(2) and sigprocmask(2) are
    // async-signal-safe, and nothing here allocates or takes a lock.
    unsafe {
        cmd.pre_exec(|| {
            for sig in Signal::iterator() {
                if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
                    let _ = signal::signal(sig, SigHandler::SigDfl);
                }
            }
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            Ok(())
        })
    }
}

/// Waits for `child` to exit, or kills it (and what it started) after `limit` and fails the
/// test naming `what`. Polls `try_wait` every few milliseconds: the test keeps its `Child` (and
/// its pipes), which a waiting thread would have to own.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                kill_tree(child.id());
                let _ = child.wait();
                panic!("{what} (pid {}) did not exit within {limit:?}", child.id());
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// `child.wait_with_output()`, or kills it (and what it started) after `limit` and fails the
/// test naming `what`.
pub fn collect_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            kill_tree(pid);
            panic!("{what} (pid {pid}) did not finish within {limit:?}");
        }
    }
}

/// SIGKILL to `pid` and every descendant of it (children first found, then the root), so a
/// hung run leaves nothing behind that holds the test's pipes.
pub fn kill_tree(pid: u32) {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children_of(pids[i]));
        i += 1;
    }
    for p in pids.into_iter().rev() {
        let _ = signal::kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// The direct children of `pid` (/proc/PID/task/*/children, proc(5)).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
