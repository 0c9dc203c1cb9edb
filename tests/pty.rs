//! The interactive relay (src/pty.rs) through real terminals: the test opens a pseudo-terminal,
//! runs the built shim on it as a session leader with that terminal as its controlling terminal
//! (as a terminal emulator runs a shell), types into the master and reads the screen from it.
//!
//! "fast" is the exec path (no account: the fake qwen runs on the test's terminal itself), "relay"
//! the pty path (one account). Where behaviour must be the same, both are checked against each
//! other. The library API (`Control::Notice`, `Control::Input`, a panicking detector, setup
//! failures) is driven in a subprocess: this test binary re-run as `library_helper`, whose
//! stdin and stdout are a terminal the test opened.

#[path = "support/sandbox.rs"]
mod sandbox;
#[path = "support/pty.rs"]
mod tty;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{self, LocalFlags, Termios};
use nix::unistd::Pid;
use sandbox::{Sandbox, await_file};
use tty::spawn_on_pty;

const LIMIT: Duration = Duration::from_secs(20);
const NO_ARGS: [&str; 0] = [];

/// Reports its pid and runs until `stop` exists.
const WAITER: &str = r#"echo $$ > "$SANDBOX/ready"
while [ ! -e "$SANDBOX/stop" ]; do sleep 0.02; done
exit 0"#;

/// The test's side of a terminal: the pty master, the program running on the slave, and
/// everything the program drew (read by a thread until EIO, i.e. until every holder of the
/// slave is gone).
struct Outer {
    master: fs::File,
    child: Option<Child>,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// The terminal's settings before the program started.
    initial: Termios,
}

#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

impl Outer {
    fn start(cmd: Command, rows: u16, cols: u16) -> Outer {
        Outer::start_with(cmd, rows, cols, |_| {})
    }

    /// Like `start`, after `prepare` adjusted the fresh terminal's settings.
    fn start_with(cmd: Command, rows: u16, cols: u16, prepare: impl FnOnce(&mut Termios)) -> Outer {
        let (master, child, initial) = spawn_on_pty(cmd, rows, cols, prepare);
        let master = fs::File::from(master);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*sink;
                let mut s = lock.lock().unwrap();
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                s.bytes.extend_from_slice(&buf[..n]);
                cv.notify_all();
            }
        });
        Outer {
            master,
            child: Some(child),
            screen,
            initial,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    fn screen(&self) -> Vec<u8> {
        self.screen.0.lock().unwrap().bytes.clone()
    }

    /// Waits (with the deadline) until `done` holds for the screen; returns the screen.
    fn await_screen(&self, what: &str, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + LIMIT;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        while !done(&s.bytes) {
            let now = Instant::now();
            assert!(
                now < deadline && !s.closed,
                "{what} never appeared on the screen: {}",
                shown(&s.bytes)
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
        s.bytes.clone()
    }

    fn await_text(&self, needle: &str) -> Vec<u8> {
        self.await_screen(needle, |b| contains(b, needle.as_bytes()))
    }

    /// The terminal's settings now (on Linux, termios requests on the master act on the slave).
    fn termios(&self) -> Termios {
        termios::tcgetattr(self.master.as_fd()).unwrap()
    }

    /// TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground group.
    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a live local.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    /// Waits for the program's exit and for every byte it drew (EIO on the master).
    fn finish(self) -> (ExitStatus, Vec<u8>) {
        let (status, screen, _) = self.finish_with_termios();
        (status, screen)
    }

    /// `finish`, plus the terminal's settings once the program is gone.
    fn finish_with_termios(mut self) -> (ExitStatus, Vec<u8>, Termios) {
        let child = self.child.take().unwrap();
        let status = wait_within(child);
        let deadline = Instant::now() + LIMIT;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        while !s.closed {
            let now = Instant::now();
            assert!(
                now < deadline,
                "the terminal was never closed (a stray holder of the slave)"
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
        (status, s.bytes.clone(), self.termios())
    }
}

impl Drop for Outer {
    /// Also the secret scan of everything the terminal showed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            sandbox::secrets::assert_clean("the terminal", &self.screen.0.lock().unwrap().bytes);
        }
    }
}

/// Waits for `child`, killing it and failing the test after LIMIT.
fn wait_within(mut child: Child) -> ExitStatus {
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("{pid} did not exit within {LIMIT:?}");
        }
    }
}

/// The end of a screen, for failure messages.
fn shown(screen: &[u8]) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(&screen[screen.len().saturating_sub(600)..])
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The same fake behind the exec path and behind the relay.
fn both(script: &str) -> [(&'static str, Sandbox); 2] {
    let fast = Sandbox::new(script);
    let relay = Sandbox::new(script);
    relay.add_oauth_slot(1, "tok_one");
    [("fast", fast), ("relay", relay)]
}

fn relay(script: &str) -> Sandbox {
    let sb = Sandbox::new(script);
    sb.add_oauth_slot(1, "tok_one");
    sb
}

fn is_raw(t: &Termios) -> bool {
    !t.local_flags
        .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
}

/// Process state letter from /proc (R, S, T, Z, …).
fn state(pid: Pid) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

/// Polls until `done` holds, failing after LIMIT: a process's state (/proc) and a terminal's
/// settings have no channel that could wake the test.
fn await_true(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LIMIT, "never {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn await_state(pid: Pid, want: impl Fn(char) -> bool, what: &str) {
    await_true(&format!("{what}: {pid} is in state {}", state(pid)), || {
        want(state(pid))
    });
}

fn fresh(sb: &Sandbox, files: &[&str]) {
    for f in files {
        let _ = fs::remove_file(sb.path(f));
    }
}

#[test]
fn child_sees_the_outer_window_size() {
    for (path, sb) in both(r#"stty size > "$SANDBOX/size""#) {
        let (status, _) = Outer::start(sb.cmd(NO_ARGS), 37, 101).finish();
        assert!(status.success(), "{path}: {status:?}");
        assert_eq!(sb.read("size"), "37 101\n", "{path}");
    }
}

#[test]
fn child_gets_the_outer_terminal_settings() {
    // Non-default settings, so a copy is told apart from a fresh terminal's defaults.
    let script = r#"stty -g > "$SANDBOX/settings""#;
    let mut seen = Vec::new();
    for (path, sb) in both(script) {
        let (status, _) = Outer::start_with(sb.cmd(NO_ARGS), 24, 80, |t| {
            t.control_chars[termios::SpecialCharacterIndices::VERASE as usize] = 0x08;
            t.control_chars[termios::SpecialCharacterIndices::VINTR as usize] = 0x07;
            t.local_flags.remove(LocalFlags::ECHOCTL);
        })
        .finish();
        assert!(status.success(), "{path}: {status:?}");
        seen.push(sb.read("settings"));
    }
    assert_ne!(seen[0], "", "stty -g printed nothing");
    assert_eq!(
        seen[0], seen[1],
        "qwen's terminal through the relay has the outer terminal's settings"
    );
}

#[test]
fn a_resize_reaches_the_child() {
    let script = r#"trap 'stty size > "$SANDBOX/size.tmp"; mv "$SANDBOX/size.tmp" "$SANDBOX/resized"' WINCH
echo $$ > "$SANDBOX/ready"
while [ ! -e "$SANDBOX/stop" ]; do sleep 0.02; done"#;
    for (path, sb) in both(script) {
        let t = Outer::start(sb.cmd(NO_ARGS), 24, 80);
        await_file(&sb.path("ready"), LIMIT);
        t.resize(50, 132);
        assert_eq!(await_file(&sb.path("resized"), LIMIT), "50 132\n", "{path}");
        fs::write(sb.path("stop"), "").unwrap();
        let (status, _) = t.finish();
        assert!(status.success(), "{path}: {status:?}");
    }
}

#[test]
fn terminal_settings_are_restored_on_every_exit_path() {
    let sb = relay(WAITER);
    type Action = fn(&Sandbox, &Outer, Pid);
    let cases: [(&str, Action, Option<i32>, Option<i32>); 4] = [
        (
            "child exits",
            |sb, _, _| fs::write(sb.path("stop"), "").unwrap(),
            Some(0),
            None,
        ),
        (
            "child killed by SIGKILL",
            |_, _, fake| kill(fake, Signal::SIGKILL).unwrap(),
            None,
            Some(9),
        ),
        (
            "shim gets SIGTERM",
            |_, t, _| kill(t.pid(), Signal::SIGTERM).unwrap(),
            None,
            Some(15),
        ),
        (
            "shim gets SIGHUP",
            |_, t, _| kill(t.pid(), Signal::SIGHUP).unwrap(),
            None,
            Some(1),
        ),
    ];
    for (what, action, code, signal) in cases {
        fresh(&sb, &["ready", "stop"]);
        let t = Outer::start(sb.cmd(NO_ARGS), 24, 80);
        let before = t.initial.clone();
        assert!(!is_raw(&before));
        let fake = Pid::from_raw(await_file(&sb.path("ready"), LIMIT).trim().parse().unwrap());
        assert!(
            is_raw(&t.termios()),
            "{what}: the relay put the terminal in raw mode"
        );
        action(&sb, &t, fake);
        let (status, screen, after) = t.finish_with_termios();
        assert_eq!(
            status.code(),
            code,
            "{what}: {status:?} {:?}",
            shown(&screen)
        );
        assert_eq!(status.signal(), signal, "{what}: {status:?}");
        assert_eq!(
            before, after,
            "{what}: the terminal's settings are as before"
        );
    }
}

#[test]
fn ctrl_c_reaches_the_child_once() {
    let script = r#"trap 'echo INT >> "$SANDBOX/signals"' INT
echo $$ > "$SANDBOX/ready"
while [ ! -e "$SANDBOX/stop" ]; do sleep 0.02; done
exit 0"#;
    for (path, sb) in both(script) {
        let mut t = Outer::start(sb.cmd(NO_ARGS), 24, 80);
        await_file(&sb.path("ready"), LIMIT);
        t.type_bytes(b"\x03");
        await_file(&sb.path("signals"), LIMIT);
        fs::write(sb.path("stop"), "").unwrap();
        let (status, _) = t.finish();
        assert_eq!(
            status.code(),
            Some(0),
            "{path}: the shim itself did not die of the Ctrl-C"
        );
        assert_eq!(
            sb.read("signals"),
            "INT\n",
            "{path}: one Ctrl-C, one SIGINT"
        );
    }
}

#[test]
fn typed_lines_and_ctrl_d_reach_the_child() {
    let script = r#"echo $$ > "$SANDBOX/ready"
while :; do
  if read line; then echo "line:$line" >> "$SANDBOX/result"; else echo eof >> "$SANDBOX/result"; break; fi
done"#;
    for (path, sb) in both(script) {
        let mut t = Outer::start(sb.cmd(NO_ARGS), 24, 80);
        await_file(&sb.path("ready"), LIMIT);
        // Enter sends CR; the child's terminal (ICRNL) makes it a newline, as a real one does.
        t.type_bytes(b"hello\r");
        t.await_text("hello\r\n");
        t.type_bytes(b"\x04");
        let (status, _) = t.finish();
        assert!(status.success(), "{path}: {status:?}");
        assert_eq!(sb.read("result"), "line:hello\neof\n", "{path}");
    }
}

#[test]
fn output_is_drained_before_the_shim_exits() {
    // 1 MiB, then the fake exits at once: most of it is still in the pty when qwen is gone.
    for (path, sb) in both(r#"head -c 1048576 /dev/zero | tr '\0' x"#) {
        for round in 0..5 {
            let (status, screen) = Outer::start(sb.cmd(NO_ARGS), 24, 80).finish();
            assert!(status.success(), "{path}: {status:?}");
            assert_eq!(
                screen.len(),
                1 << 20,
                "{path}, round {round}: every byte arrived"
            );
            assert!(
                screen.iter().all(|&b| b == b'x'),
                "{path}, round {round}: nothing else"
            );
        }
    }
}

#[test]
fn exit_codes_and_signal_deaths_pass_through() {
    let script = r#"case "$1" in sig:*) kill -"${1#sig:}" $$ ;; *) exit "$1" ;; esac"#;
    for (path, sb) in both(script) {
        for code in [0, 1, 2, 3, 42, 75, 126, 127, 128, 255] {
            let (status, _) = Outer::start(sb.cmd([code.to_string()]), 24, 80).finish();
            assert_eq!(status.code(), Some(code), "{path}: exit {code}: {status:?}");
        }
        for (name, sig) in [
            ("HUP", 1),
            ("INT", 2),
            ("USR1", 10),
            ("KILL", 9),
            ("TERM", 15),
        ] {
            let (status, _) = Outer::start(sb.cmd([format!("sig:{name}")]), 24, 80).finish();
            assert_eq!(status.signal(), Some(sig), "{path}: SIG{name}: {status:?}");
        }
    }
}

#[test]
fn newlines_become_crlf_as_on_a_real_terminal() {
    let mut screens = Vec::new();
    for (path, sb) in both(r#"printf 'one\ntwo\n'; printf 'three\r\n' >&2"#) {
        let (status, screen) = Outer::start(sb.cmd(NO_ARGS), 24, 80).finish();
        assert!(status.success(), "{path}: {status:?}");
        screens.push(screen);
    }
    assert_eq!(
        String::from_utf8_lossy(&screens[0]),
        "one\r\ntwo\r\nthree\r\r\n"
    );
    assert_eq!(
        screens[0], screens[1],
        "the relay's screen is byte for byte the direct one"
    );
}

#[test]
fn stops_give_the_terminal_back_and_fg_redraws() {
    // A job-control shell on the test's terminal runs the shim, as a person's shell would.
    // `sleep &` + `wait`: a shell blocked in vfork(2) for a stopped child shows as D, not T.
    let script = r#"trap 'echo WINCH >> "$SANDBOX/winch"' WINCH
echo "$$ $PPID" > "$SANDBOX/ready"
while [ ! -e "$SANDBOX/stop" ]; do sleep 0.02 & wait $!; done
exit 0"#;
    let sb = relay(script);
    let mut bash = Command::new("bash");
    bash.args(["--norc", "--noprofile", "-i"])
        .env_clear()
        .env("PATH", sb.path_var())
        .env("HOME", sb.home())
        .env("QWEN_HOME", sb.qwen_home())
        .env("SANDBOX", sb.dir.path())
        .env("TERM", "dumb")
        .env("PS1", "$ ")
        .current_dir(sb.path("work"));
    let mut t = Outer::start(bash, 24, 80);
    t.type_bytes(b"qwen\n");
    let ready = await_file(&sb.path("ready"), LIMIT);
    let pids: Vec<Pid> = ready
        .split_whitespace()
        .map(|p| Pid::from_raw(p.parse().unwrap()))
        .collect();
    let (fake, shim) = (pids[0], pids[1]);
    await_true("raw", || is_raw(&t.termios()));

    // 1. A SIGTSTP from outside: the shim gives the terminal back, stops qwen and itself.
    kill(shim, Signal::SIGTSTP).unwrap();
    await_state(shim, |s| s == 'T', "stopped");
    await_state(fake, |s| s == 'T', "stopped");
    t.await_screen("Stopped", |b| count(b, b"Stopped") == 1);
    t.type_bytes(b"fg\n");
    assert_eq!(
        await_file(&sb.path("winch"), LIMIT),
        "WINCH\n",
        "resumed qwen was asked to redraw"
    );
    await_state(fake, |s| s != 'T', "running again");
    await_true("raw again", || is_raw(&t.termios()));

    // 2. Ctrl-Z typed while the child's terminal has ISIG: the job stops as it would without the shim.
    t.type_bytes(b"\x1a");
    await_state(shim, |s| s == 'T', "stopped by Ctrl-Z");
    await_state(fake, |s| s == 'T', "stopped by Ctrl-Z");
    t.await_screen("a second Stopped", |b| count(b, b"Stopped") == 2);
    // `fg` returns the job's status (bash runs the rest of a list as soon as a job stops).
    t.type_bytes(b"fg; echo \"rc=$?\" > \"$SANDBOX/rc\"\n");
    await_state(fake, |s| s != 'T', "running after the second fg");
    await_true("redrawn after the second fg", || {
        sb.read("winch") == "WINCH\nWINCH\n"
    });

    fs::write(sb.path("stop"), "").unwrap();
    assert_eq!(
        await_file(&sb.path("rc"), LIMIT),
        "rc=0\n",
        "{:?}",
        shown(&t.screen())
    );
}

// ---- the library API, in a subprocess whose stdin and stdout are the test's terminal ----------

/// Runs this test binary as `library_helper` in `mode` on a terminal of its own.
fn helper(mode: &str, out: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "library_helper",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("PTY_HELPER", mode)
    .env("PTY_HELPER_OUT", out)
    .env_remove("NO_COLOR")
    .env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Not a test on its own: the body of the subprocess above (does nothing without PTY_HELPER).
#[test]
fn library_helper() {
    use qwen_rotation::run::terminal::{self, Control};
    let Ok(mode) = std::env::var("PTY_HELPER") else {
        return;
    };
    let out = std::env::var_os("PTY_HELPER_OUT").unwrap();
    let (controller, controls) = terminal::controls();
    let mut seen = Vec::new();
    let result = match mode.as_str() {
        "controls" => {
            let c = controller.clone();
            std::thread::spawn(move || {
                c.send(Control::Input(b"typed by control\r".to_vec()));
                c.send(Control::Notice(
                    "account 1 quota exhausted\x07; switched to account 2".into(),
                ));
                c.send(Control::Notice(format!("long {}", "n".repeat(200))));
            });
            terminal::run(
                Command::new("cat"),
                &mut |b: &[u8]| seen.extend_from_slice(b),
                controls,
            )
        }
        "panic" => {
            let mut first = true;
            terminal::run(
                Command::new("cat"),
                &mut |_: &[u8]| {
                    if std::mem::take(&mut first) {
                        panic!("detector boom");
                    }
                },
                controls,
            )
        }
        "missing" => terminal::run(
            Command::new("/nonexistent/qwen"),
            &mut |_: &[u8]| {},
            controls,
        ),
        other => panic!("unknown helper mode {other}"),
    };
    let report = match result {
        Ok(outcome) => format!("Ok({outcome:?})\n{}", String::from_utf8_lossy(&seen)),
        Err(e) => format!("Err({e})\n"),
    };
    fs::write(out, report).unwrap();
    std::process::exit(0);
}

#[test]
fn notice_and_input_reach_the_screen_and_the_child() {
    let dir = tempfile::tempdir().unwrap();
    for no_color in [false, true] {
        let out = dir.path().join(format!("out-{no_color}"));
        let env: &[(&str, &str)] = if no_color { &[("NO_COLOR", "1")] } else { &[] };
        let mut t = Outer::start(helper("controls", &out, env), 24, 60);
        let sgr = if no_color { "0" } else { "0;7" };
        // BEL became a space; the line sits on row 24; cursor and attributes are restored.
        let notice = format!(
            "\x1b7\x1b[24;1H\x1b[2K\x1b[{sgr}maccount 1 quota exhausted ; switched to account 2\x1b[0m\x1b8"
        );
        t.await_text(&notice);
        let long = format!(
            "\x1b7\x1b[24;1H\x1b[2K\x1b[{sgr}mlong {}\x1b[0m\x1b8",
            "n".repeat(54)
        );
        t.await_text(&long);
        // Control::Input is typed into cat: the pty echoes it and cat prints it.
        t.await_screen("the input twice", |b| {
            count(b, b"typed by control\r\n") == 2
        });
        t.type_bytes(b"\x04");
        let (status, screen) = t.finish();
        assert!(status.success(), "{status:?}: {:?}", shown(&screen));
        let report = fs::read_to_string(&out).unwrap();
        assert!(report.starts_with("Ok(Exited(0))\n"), "{report}");
        assert_eq!(
            count(report.as_bytes(), b"typed by control"),
            2,
            "on_output saw the child's output: {report}"
        );
        assert!(
            !report.contains("quota exhausted"),
            "notices are ours, not the child's output: {report}"
        );
    }
}

#[test]
fn a_panicking_detector_restores_the_terminal_first_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut t = Outer::start(helper("panic", &out, &[]), 24, 80);
    let before = t.initial.clone();
    await_true("raw", || is_raw(&t.termios()));
    // cat's echo of the first line is the first output: the detector panics on it.
    t.type_bytes(b"first\r");
    // Printed with the terminal restored: the message's newlines arrive as CR LF (ONLCR).
    t.await_text("detector boom\r\n");
    await_true("raw again after the panic", || is_raw(&t.termios()));
    t.type_bytes(b"after\r");
    // The pty's echo and cat's copy, and no echo from our terminal: it is raw again.
    t.await_screen("cat's answer after the panic", |b| {
        count(b, b"after\r\n") == 2
    });
    t.type_bytes(b"\x04");
    let (status, screen, after) = t.finish_with_termios();
    assert!(status.success(), "{status:?}: {:?}", shown(&screen));
    assert!(
        fs::read_to_string(&out)
            .unwrap()
            .starts_with("Ok(Exited(0))")
    );
    assert_eq!(before, after);
}

#[test]
fn a_child_that_cannot_start_is_an_error_and_leaves_the_terminal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let t = Outer::start(helper("missing", &out, &[]), 24, 80);
    let before = t.initial.clone();
    let (status, screen, after) = t.finish_with_termios();
    assert!(status.success(), "{status:?}: {:?}", shown(&screen));
    let report = fs::read_to_string(&out).unwrap();
    assert!(report.starts_with("Err("), "{report}");
    assert_eq!(before, after);
}

#[test]
fn a_hang_up_ends_stdin_with_eof_for_the_child() {
    // The fake ignores SIGHUP, as a program may: it still learns of the hang-up from `read`.
    let script = r#"trap '' HUP
echo $$ > "$SANDBOX/ready"
if read line; then echo "line:$line"; else echo eof; fi > "$SANDBOX/result.tmp"
mv "$SANDBOX/result.tmp" "$SANDBOX/result""#;
    for (path, sb) in both(script) {
        let (master, child, _) = spawn_on_pty(sb.cmd(NO_ARGS), 24, 80, |_| {});
        await_file(&sb.path("ready"), LIMIT);
        // Closing the only master hangs the terminal up (pty(7)): SIGHUP, then reads end.
        drop(master);
        assert_eq!(await_file(&sb.path("result"), LIMIT), "eof\n", "{path}");
        let status = wait_within(child);
        assert_eq!(status.code(), Some(0), "{path}: {status:?}");
    }
}
