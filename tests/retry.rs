//! Headless retries with a small fake qwen: stdin replayed, the bound on replay, waiting for
//! an account to return when rotation.yaml asks for it, and held text output (an answer that
//! had started when the quota ran out).

#[path = "support/sandbox.rs"]
mod sandbox;
#[path = "support/pty.rs"]
mod tty;

use std::fs;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use sandbox::{Sandbox, output_within, read_until};

/// Counts its runs, keeps each run's stdin, fails the runs listed in $FAIL with `$MESSAGE`.
/// A failing run first prints `$PARTIAL` and `$PARTIAL_BYTES` bytes of `y` lines on stdout (an
/// agentic answer that had started), then with `$AWAIT` set waits for the file `go` (60 s at
/// most) before its error: the test's proof that the partial answer arrived while qwen ran.
const FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
cat > "$SANDBOX/stdin.$n"
case " $FAIL " in *" $n "*)
  printf '%s' "$PARTIAL"
  [ -z "$PARTIAL_BYTES" ] || yes | head -c "$PARTIAL_BYTES"
  i=0; while [ -n "$AWAIT" ] && [ ! -e "$SANDBOX/go" ]; do i=$((i+1)); [ $i -le 3000 ] || exit 9; sleep 0.02; done
  printf '%s\n' "$MESSAGE" >&2; exit 1 ;; esac
echo "answer $n""#;

const QUOTA: &str = "[API Error: 429 Free allocated quota exceeded.]";

fn pool() -> Sandbox {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    sb
}

fn run_with_stdin(sb: &Sandbox, input: &[u8], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the shim finished")
        .unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn piped_stdin_is_replayed_to_the_retry() {
    let sb = pool();
    let input = b"the whole prompt\x00with binary\xff bytes\n".repeat(1000);
    let out = run_with_stdin(&sb, &input, &[("FAIL", "1"), ("MESSAGE", QUOTA)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer 2\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qwen-rotation: account 1 quota exhausted; switched to account 2\n"
    );
    assert_eq!(fs::read(sb.path("stdin.1")).unwrap(), input);
    assert_eq!(
        fs::read(sb.path("stdin.2")).unwrap(),
        input,
        "the retry got the same stdin"
    );
}

#[test]
fn stdin_larger_than_the_limit_is_not_retried_and_the_message_says_why() {
    let sb = pool();
    fs::write(sb.qwen_home().join("rotation.yaml"), "stdin_limit: 1024\n").unwrap();
    let input = vec![b'x'; 200_000];
    let out = run_with_stdin(&sb, &input, &[("FAIL", "1"), ("MESSAGE", QUOTA)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "qwen's own status: {err}");
    assert!(
        err.contains(QUOTA),
        "qwen's error is shown when nothing replaces it: {err}"
    );
    assert!(
        err.contains("not retried: stdin was larger than stdin_limit, 1024 bytes"),
        "{err}"
    );
    assert_eq!(sb.read("count"), "1\n", "one attempt only");
    assert_eq!(
        fs::read(sb.path("stdin.1")).unwrap(),
        input,
        "the attempt still got all of it"
    );
    // The spent account was still rotated away from, for the next run.
    assert!(
        fs::read_to_string(sb.qwen_home().join("state.yaml"))
            .unwrap()
            .contains("current_index: 2")
    );
}

#[test]
fn on_exhausted_wait_waits_for_the_first_reset_then_runs() {
    let sb = pool();
    fs::write(
        sb.qwen_home().join("rotation.yaml"),
        "on_exhausted: wait\nmax_wait: 1m\n",
    )
    .unwrap();
    // Both accounts report a Coding Plan quota that resets two seconds from now.
    let reset = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let message = format!(
        "Quota exhausted: Your token-plan 1-week quota has been exhausted. The quota will reset at {} UTC.",
        reset.format("%m-%d %H:%M:%S")
    );
    let start = Instant::now();
    let out = output_within(
        {
            let mut c = sb.cmd(["-p", "hi"]);
            c.env("FAIL", "1 2").env("MESSAGE", &message);
            c
        },
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer 3\n");
    assert!(err.contains("waiting"), "{err}");
    // A lower bound the shim keeps by design: it sleeps until the announced reset, which is
    // at least a second away (two seconds from now, the seconds' fraction cut off). Load only
    // makes the run longer; a shim that did not wait answers at once and fails this.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "it waited for the reset"
    );
}

#[test]
fn every_account_spent_exits_75_naming_the_earliest_return() {
    let sb = pool();
    let out = output_within(
        {
            let mut c = sb.cmd(["-p", "hi"]);
            c.env("FAIL", "1 2 3").env("MESSAGE", QUOTA);
            c
        },
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("all accounts exhausted; the first one returns at"),
        "{err}"
    );
    assert!(
        !err.contains(QUOTA),
        "qwen's error blocks are replaced by notices: {err}"
    );
    // The next run sends nothing to a spent account: it ends at once with 75.
    let out = sb.run(["-p", "again"]);
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(sb.read("count"), "2\n");
}

/// The start of an agentic answer, printed before the request that hits the quota.
const PARTIAL: &str = "Reading the files first.\n";

/// The shim on a pool whose account 1 prints [`PARTIAL`] and then reports a quota error.
fn partial_then_quota(sb: &Sandbox, args: &[&str]) -> Command {
    let mut c = sb.cmd(args);
    c.env("FAIL", "1")
        .env("MESSAGE", QUOTA)
        .env("PARTIAL", PARTIAL);
    c
}

/// Runs `cmd` (a fake with `AWAIT`) and waits until its stdout so far satisfies `arrived` while
/// qwen still runs, then lets qwen go on (the file `go`) and collects the rest. Also returns the
/// shim's peak resident memory (KiB) at that moment. Every wait has a deadline.
fn run_seeing_stdout_live(
    sb: &Sandbox,
    mut cmd: Command,
    arrived: impl Fn(&[u8]) -> bool,
) -> (Output, u64) {
    let limit = Duration::from_secs(60);
    cmd.env("AWAIT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn shim");
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut go = false;
    let mut peak_kib = 0;
    loop {
        if !go && arrived(&seen) {
            peak_kib = vm_hwm_kib(child.id());
            fs::write(sb.path("go"), "").unwrap();
            go = true;
        }
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "after {limit:?}: {} bytes on stdout, {}",
                    seen.len(),
                    if go {
                        "qwen was let go"
                    } else {
                        "the expected output never arrived while qwen ran"
                    }
                );
            }
        }
    }
    assert!(
        go,
        "stdout ended before the expected output arrived: {} bytes",
        seen.len()
    );
    let mut out = output_within_for(child, limit.saturating_sub(start.elapsed()));
    out.stdout = seen;
    sandbox::secrets::assert_clean("the shim's stdout", &out.stdout);
    (out, peak_kib)
}

/// Peak resident memory of the live process `pid` in KiB (VmHWM in /proc/PID/status).
fn vm_hwm_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Waits for a spawned child (its stdout already read) with a deadline.
fn output_within_for(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait");
            sandbox::secrets::assert_clean("the shim's stderr", &out.stderr);
            out
        }
        Err(_) => {
            sandbox::kill("KILL", pid);
            panic!("the shim did not finish within {limit:?}");
        }
    }
}

#[test]
fn a_started_answer_is_retried_cleanly_when_text_output_is_held() {
    // Both ways of asking: the per-run flag, and the rotation.yaml key.
    for (how, flag) in [
        ("--rotation-hold", Some("--rotation-hold")),
        ("hold_text_output: true", None),
    ] {
        let sb = pool();
        if flag.is_none() {
            fs::write(sb.qwen_home().join("rotation.yaml"), format!("{how}\n")).unwrap();
        }
        let args: Vec<&str> = flag.into_iter().chain(["-p", "hi"]).collect();
        let out = output_within(partial_then_quota(&sb, &args), Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{how}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "answer 2\n",
            "{how}: the caller gets the retry's answer only"
        );
        assert_eq!(
            err, "qwen-rotation: account 1 quota exhausted; switched to account 2\n",
            "{how}"
        );
        assert_eq!(sb.read("count"), "2\n", "{how}");
    }
}

#[test]
fn text_output_streams_by_default_and_a_started_answer_is_not_retried() {
    // By default, and with the hold asked for on a run that cannot be retried anyway.
    for args in [
        &["-p", "hi"][..],
        &["--rotation-hold", "--rotation-no-retry", "-p", "hi"],
    ] {
        let sb = pool();
        let (out, _) = run_seeing_stdout_live(&sb, partial_then_quota(&sb, args), |seen| {
            seen == PARTIAL.as_bytes()
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: qwen's own status: {err}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), PARTIAL, "{args:?}");
        assert!(
            err.contains(QUOTA),
            "{args:?}: qwen's error is shown: {err}"
        );
        assert!(
            err.ends_with("account 1 quota exhausted; the next run uses account 2\n"),
            "{args:?}: {err}"
        );
        assert_eq!(sb.read("count"), "1\n", "{args:?}: one attempt only");
    }
}

#[test]
fn held_text_past_the_hold_limit_streams_on_and_is_not_retried() {
    let sb = pool();
    // Twice the hold limit: what is held is let go once it passes the limit, the rest streams.
    let total = 2 * qwen_rotation::run::streams::HOLD_LIMIT;
    let mut cmd = partial_then_quota(&sb, &["--rotation-hold", "-p", "hi"]);
    cmd.env("PARTIAL", "")
        .env("PARTIAL_BYTES", total.to_string());
    // The whole answer so far reaches the caller while qwen still runs: the hold let go of it.
    let (out, peak_kib) = run_seeing_stdout_live(&sb, cmd, |seen| seen.len() >= total);
    println!(
        "held text: {total} bytes, twice the hold limit, reached the caller while qwen ran; shim peak RSS {peak_kib} KiB"
    );
    // The hold limit (64 MiB) plus the relay's buffers: memory does not follow the output.
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(out.stdout.len(), total);
    assert!(out.stdout.chunks(2).all(|c| c == b"y\n" || c == b"y"));
    assert!(err.contains(QUOTA), "{err}");
    assert!(
        err.ends_with("account 1 quota exhausted; the next run uses account 2\n"),
        "{err}"
    );
    assert_eq!(sb.read("count"), "1\n", "one attempt only");
}

#[test]
fn a_terminal_stdout_is_never_held() {
    let sb = pool();
    let shim = partial_then_quota(&sb, &["--rotation-hold", "-p", "hi"]);
    // stdout and stderr on a terminal, stdin from /dev/null: a headless run whose answer a
    // person reads as it arrives.
    let mut cmd = Command::new(sb.path("tools/sh"));
    cmd.args(["-c", "exec \"$0\" \"$@\" </dev/null"])
        .arg(shim.get_program())
        .args(shim.get_args())
        .env_clear()
        .env("AWAIT", "1")
        .current_dir(sb.path("work"));
    for (k, v) in shim.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    // The master stays open until the shim is gone: closing it would hang the terminal up.
    let (master, child) = tty::start(cmd, 24, 80);
    let limit = Duration::from_secs(60);
    read_until(master.try_clone().unwrap(), PARTIAL.trim_end(), limit);
    // qwen still runs: the partial answer was not held.
    fs::write(sb.path("go"), "").unwrap();
    let rest = read_until(master.try_clone().unwrap(), "answer 2", limit);
    assert!(rest.contains("switched to account 2"), "{rest:?}");
    let out = output_within_for(child, limit);
    assert_eq!(out.status.code(), Some(0));
    drop(master);
}
