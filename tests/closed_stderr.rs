//! A caller whose stderr is a pipe nobody reads any more (`qwen … 2>&- | …` in a script whose
//! log reader died): our notices fail with EPIPE and are dropped; the rotation and the retry
//! still run, and the caller gets account 2's answer on stdout with status 0.

#[path = "support/mock.rs"]
mod mock;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/real_qwen.rs"]
mod real_qwen;
#[path = "support/sandbox.rs"]
mod sandbox;

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sandbox::Sandbox;

const DEADLINE: Duration = Duration::from_secs(90);

/// Answers according to the live login: account 1 is out of quota, any other answers.
const FAKE: &str = r#"case "$(cat "$HOME/.qwen/oauth_creds.json")" in
*tok_one*) echo "[API Error: 429 Free allocated quota exceeded.]" >&2; exit 1 ;;
*) echo "answer from account 2" ;;
esac"#;

/// The write end of a pipe whose read end is already closed: every write to it fails (EPIPE).
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

/// Runs `cmd` with its stderr on a closed pipe and stdout captured, within `DEADLINE`; the
/// run's process group is killed afterwards (0.12.0's node child may linger).
fn run_with_closed_stderr(mut cmd: Command) -> Output {
    cmd.stderr(Stdio::from(closed_pipe()))
        .stdout(Stdio::piped())
        .process_group(0);
    let child: Child = cmd.spawn().expect("spawn the shim");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(DEADLINE);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    out.unwrap_or_else(|_| panic!("the shim did not finish within {DEADLINE:?}"))
        .expect("wait")
}

#[test]
fn oauth_quota_rotates_and_retries_when_the_callers_stderr_is_closed() {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let out = run_with_closed_stderr(sb.cmd(["-p", "hi"]));
    println!("status {:?}", out.status);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "answer from account 2\n"
    );
    assert!(sb.live_creds().unwrap().contains("tok_two"), "rotated");
}

#[test]
fn real_qwen_0_12_oauth_quota_is_retried_when_the_callers_stderr_is_closed() {
    let mock = mock::Mock::start();
    let Some(sb) = real_qwen::Sandbox::new(real_qwen::Version::V0_12) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.oauth_pool(&["tok1_quota", "tok2_ok"], &mock.url());
    let out = run_with_closed_stderr(sb.command("qwen", &["-p", "hello"], false, false));
    println!("status {:?}", out.status);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "REPLY-FROM-tok2_ok");
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
}
