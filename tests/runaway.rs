//! No runaway: `QWEN_ROTATION_REAL` naming the shim (itself, a symlink, a hard link or a copy)
//! is refused at once with exit 127 instead of starting the next shim without end, and a shim
//! that cannot start a thread or a process (RLIMIT_NPROC) still runs qwen instead of panicking.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sandbox::{SHIM, Sandbox, install_executable};

const DEADLINE: Duration = Duration::from_secs(20);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` in its own process group, within `DEADLINE`; afterwards reports whether any
/// process was left in that group (a chain of shims would be) and kills it.
fn run_alone(mut cmd: Command) -> (Output, bool) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("spawn the shim");
    let group = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(DEADLINE);
    let left = killpg(group, None).is_ok();
    let _ = killpg(group, Signal::SIGKILL);
    let out = out
        .unwrap_or_else(|_| panic!("the shim did not finish within {DEADLINE:?}"))
        .expect("wait");
    (out, left)
}

#[test]
fn an_override_naming_the_shim_is_refused_with_127() {
    let sb = Sandbox::new("echo fake ran");
    // With an account, a shim that accepted the override would start the next one as its child.
    sb.add_oauth_slot(1, "tok_one");
    fs::create_dir_all(sb.path("copy")).unwrap();
    install_executable(SHIM, &sb.path("copy/qwen"));
    let mut names: Vec<(&str, PathBuf)> = vec![
        ("the shim's own file", PathBuf::from(SHIM)),
        ("a symlink to it", sb.path("bin/qwen")),
        ("a copy of it", sb.path("copy/qwen")),
    ];
    // A hard link needs the same file system as the build; elsewhere the copy stands in.
    let hard = sb.path("copy/hard-linked");
    if fs::hard_link(SHIM, &hard).is_ok() {
        names.push(("a hard link to it", hard));
    } else {
        println!("no hard link across file systems; that case is not run here");
    }
    for (what, path) in names {
        let mut cmd = sb.cmd(["-p", "hi"]);
        cmd.env("QWEN_ROTATION_REAL", &path);
        let started = Instant::now();
        let (out, left) = run_alone(cmd);
        let err = text(&out.stderr);
        println!(
            "{what}: {:?} in {:.0?}: {err}",
            out.status,
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(127), "{what}: {out:?}");
        assert_eq!(
            err,
            format!(
                "qwen-rotation: QWEN_ROTATION_REAL={} is this qwen-rotation shim (or a copy of it), \
                 not the real qwen; point it at the real qwen's own file or unset it\n",
                path.display()
            ),
            "{what}"
        );
        assert!(out.stdout.is_empty(), "{what}: something ran: {out:?}");
        assert!(!left, "{what}: processes were left in the run's group");
    }
    // The real qwen named directly still runs.
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("QWEN_ROTATION_REAL", sb.path("real/qwen"));
    let (out, _) = run_alone(cmd);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "fake ran\n");
}

#[test]
fn a_shim_that_cannot_start_threads_or_processes_still_runs_qwen() {
    // Builtins only: the fake cannot fork either.
    let sb = Sandbox::new("read -r line\necho \"fake ran: $line\"\nexit 3");
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let mut cmd = sb.cmd(["-p", "hi"]);
    // Piped stdin, which the shim would copy on a thread to replay it: qwen must still get it.
    let (input, mut feed) = std::io::pipe().unwrap();
    feed.write_all(b"the prompt\n").unwrap();
    drop(feed);
    cmd.stdin(input);
    // RLIMIT_NPROC binds every user but root: as root the run becomes nobody first (the limit
    // is set after the uid change, so the exec itself is not refused, execve(2) EAGAIN).
    sb.run_as_nobody(&mut cmd, &[]);
    // SAFETY: setrlimit is async-signal-safe and changes only the child's limits.
    unsafe {
        cmd.pre_exec(|| {
            let one = nix::libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_NPROC, &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (out, _) = run_alone(cmd);
    let err = text(&out.stderr);
    println!("under RLIMIT_NPROC=1: {:?}\n{err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(3), "qwen's own status: {out:?}");
    assert_eq!(text(&out.stdout), "fake ran: the prompt\n");
    assert!(
        err.lines()
            .all(|l| l.starts_with("qwen-rotation: warning: ")),
        "{err}"
    );
    assert!(err.contains("running qwen without rotation"), "{err}");
    assert!(err.contains("a copy of stdin"), "{err}");
}
