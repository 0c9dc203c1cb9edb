//! Job control through a real pseudo-terminal: an interactive bash runs the shim as a job, the
//! test types Ctrl-C, Ctrl-Z and `fg` into the terminal, and the fake qwen records what it got.

#[path = "support/sandbox.rs"]
mod sandbox;
#[path = "support/pty.rs"]
mod tty;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandbox::{Sandbox, await_file};

const LIMIT: Duration = Duration::from_secs(20);

/// The fake: reports its pid, counts INTs, runs until `stop` exists.
const FAKE: &str = r#"trap 'echo INT >> "$SANDBOX/signals"' INT
echo $$ > "$SANDBOX/ready"
while [ ! -e "$SANDBOX/stop" ]; do sleep 0.02; done
exit 0"#;

struct Terminal {
    master: File,
    shell: Child,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// An interactive bash on a new pty, in its own session with the pty as controlling tty.
    fn bash(sb: &Sandbox) -> Terminal {
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-i"])
            .env_clear()
            .env("PATH", sb.path_var())
            .env("HOME", sb.home())
            .env("QWEN_HOME", sb.qwen_home())
            .env("SANDBOX", sb.dir.path())
            .env("TERM", "dumb")
            .env("PS1", "$ ")
            .current_dir(sb.path("work"));
        let (master, shell) = tty::start(cmd, 24, 80);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master,
            shell,
            screen,
        }
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }
}

impl Drop for Terminal {
    /// Also the secret scan of everything the terminal showed.
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        if !std::thread::panicking() {
            sandbox::secrets::assert_clean("the terminal", &self.screen.lock().unwrap());
        }
    }
}

/// Process state letter from /proc (R, S, T, Z, …).
fn state(pid: &str) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

fn await_state(pid: &str, want: impl Fn(char) -> bool, what: &str) {
    let start = Instant::now();
    while !want(state(pid)) {
        assert!(
            start.elapsed() < LIMIT,
            "{pid} never became {what} (state {})",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sandboxes() -> Vec<(&'static str, Sandbox)> {
    let fast = Sandbox::new(FAKE);
    let relay = Sandbox::new(FAKE);
    relay.add_oauth_slot(1, "tok_one");
    vec![("fast path", fast), ("relay path", relay)]
}

/// Both the terminal session case (`qwen x`) and the headless-in-a-terminal case (stdout
/// redirected, stdin still the terminal).
const JOBS: [&str; 2] = ["qwen x", "qwen x > \"$SANDBOX/out\""];

/// The job as a subshell, so its status is recorded when it really ends (bash runs the rest
/// of a command list as soon as a job stops).
fn typed(job: &str) -> String {
    format!("( {job}; echo \"rc=$?\" > \"$SANDBOX/rc\" )\n")
}

#[test]
fn ctrl_c_reaches_qwen_exactly_once() {
    for (path, sb) in sandboxes() {
        for job in JOBS {
            let _ = fs::remove_file(sb.path("signals"));
            let _ = fs::remove_file(sb.path("ready"));
            let _ = fs::remove_file(sb.path("stop"));
            let _ = fs::remove_file(sb.path("rc"));
            let mut t = Terminal::bash(&sb);
            t.type_text(&typed(job));
            await_file(&sb.path("ready"), LIMIT);
            t.type_text("\x03");
            await_file(&sb.path("signals"), LIMIT);
            fs::write(sb.path("stop"), "").unwrap();
            let rc = await_file(&sb.path("rc"), LIMIT);
            assert_eq!(
                sb.read("signals"),
                "INT\n",
                "{path}, `{job}`: one Ctrl-C, one SIGINT"
            );
            assert_eq!(rc, "rc=0\n", "{path}, `{job}`: {}", t.screen());
        }
    }
}

#[test]
fn ctrl_z_stops_the_job_and_fg_resumes_it() {
    for (path, sb) in sandboxes() {
        for job in JOBS {
            for f in ["ready", "stop", "rc", "signals"] {
                let _ = fs::remove_file(sb.path(f));
            }
            let mut t = Terminal::bash(&sb);
            t.type_text(&typed(job));
            let pid = await_file(&sb.path("ready"), LIMIT).trim().to_string();
            t.type_text("\x1a");
            // bash's report is the proof of the stop: the fake itself may show as D rather than T
            // when ^Z lands while dash waits in vfork(2) for its `sleep` to exec.
            let start = Instant::now();
            while !t.screen().contains("Stopped") {
                assert!(
                    start.elapsed() < LIMIT,
                    "{path}: bash never reported the job stopped: {}",
                    t.screen()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            t.type_text("fg\n");
            await_state(&pid, |s| s != 'T', "running again");
            fs::write(sb.path("stop"), "").unwrap();
            let rc = await_file(&sb.path("rc"), LIMIT);
            assert_eq!(rc, "rc=0\n", "{path}, `{job}`: {}", t.screen());
            assert_eq!(sb.read("signals"), "", "no stray SIGINT");
            let _ = t.master.as_raw_fd();
        }
    }
}

#[test]
fn a_one_shot_run_in_a_terminal_is_rerun_on_the_next_account() {
    // `qwen -p …` with the terminal on stdin and stdout: qwen exits after the error, and the run
    // goes again with the same argv, as a headless run would.
    let sb = Sandbox::new(
        r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
if [ "$n" = 1 ]; then echo '[API Error: 429 Free allocated quota exceeded.]' >&2; exit 1; fi
echo "answer $n for $*""#,
    );
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let mut t = Terminal::bash(&sb);
    t.type_text("qwen -p hi; echo \"rc=$?\" > \"$SANDBOX/rc\"\n");
    let rc = await_file(&sb.path("rc"), LIMIT);
    let screen = t.screen();
    assert_eq!(rc, "rc=0\n", "{screen}");
    assert!(screen.contains("answer 2 for -p hi"), "{screen}");
    assert!(
        screen.contains("qwen-rotation: account 1 quota exhausted; switched to account 2"),
        "{screen}"
    );
    assert_eq!(sb.read("count"), "2\n");
}
