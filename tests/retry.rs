//! Headless retries with a small fake qwen: stdin replayed, the bound on replay, and waiting for
//! an account to return when rotation.yaml asks for it.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandbox::{Sandbox, output_within};

/// Counts its runs, keeps each run's stdin, fails the runs listed in $FAIL with `$MESSAGE`.
const FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
cat > "$SANDBOX/stdin.$n"
case " $FAIL " in *" $n "*) printf '%s\n' "$MESSAGE" >&2; exit 1 ;; esac
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
