//! The shim as a stand-in for the real qwen: argv, env, cwd, stdin, stdout, stderr, exit
//! status and signals pass through unchanged, on the exec fast path (no accounts) and on the
//! relay path (accounts configured).

#[path = "support/sandbox.rs"]
mod sandbox;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use sandbox::child::{collect_within, wait_within};
use sandbox::{Sandbox, await_file, kill, output_within, read_until};

const SECOND: Duration = Duration::from_secs(1);

/// Both paths: `false` = exec fast path, `true` = relay path (an account exists).
fn both(script: &str) -> [Sandbox; 2] {
    let fast = Sandbox::new(script);
    let relay = Sandbox::new(script);
    relay.add_oauth_slot(1, "tok_one");
    [fast, relay]
}

#[test]
fn exit_codes_pass_through_on_both_paths() {
    for sb in both(r#"exit "$1""#) {
        for code in 0..=255 {
            let out = sb.run([code.to_string()]);
            assert_eq!(
                out.status.code(),
                Some(code),
                "code {code}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn argv_reaches_the_child_byte_for_byte() {
    for sb in both(r#"for a in "$@"; do printf '%s\0' "$a"; done > "$SANDBOX/argv""#) {
        let args: Vec<OsString> = vec![
            OsString::from_vec(vec![0xff, 0xfe, b'x']),
            OsString::new(),
            OsString::from("line\nbreak"),
            OsString::from("--output-format"),
            OsString::from("text"),
            OsString::from("ünïcode ✓"),
        ];
        let out = sb.run(&args);
        assert!(out.status.success());
        let expected: Vec<u8> = args
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        assert_eq!(fs::read(sb.path("argv")).unwrap(), expected);
    }
}

#[test]
fn rotation_flags_are_removed_and_double_dash_ends_interception() {
    for sb in both(r#"for a in "$@"; do printf '%s\n' "$a"; done > "$SANDBOX/argv""#) {
        let out = sb.run(["-p", "hi", "--rotation-no-retry", "--", "--rotation-status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sb.read("argv"), "-p\nhi\n--\n--rotation-status\n");
    }
}

#[test]
fn unknown_rotation_flag_exits_2_with_a_suggestion() {
    let sb = Sandbox::new("echo should-not-run");
    let out = sb.run(["--rotation-doctr"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean --rotation-doctor?"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn env_and_cwd_pass_through() {
    for sb in both(r#"pwd > "$SANDBOX/cwd"; printf '%s' "$PROBE" > "$SANDBOX/env""#) {
        let sub = sb.path("work/deeper");
        fs::create_dir_all(&sub).unwrap();
        let out = sandbox::output_within(
            {
                let mut c = sb.cmd(["x"]);
                c.env("PROBE", "value with spaces\tand tab")
                    .current_dir(&sub);
                c
            },
            10 * SECOND,
        );
        assert!(out.status.success());
        assert_eq!(
            sb.read("cwd").trim_end(),
            fs::canonicalize(&sub).unwrap().to_str().unwrap()
        );
        assert_eq!(sb.read("env"), "value with spaces\tand tab");
    }
}

#[test]
fn stdout_and_stderr_stay_separate() {
    for sb in both("printf 'to-out'; printf 'to-err' >&2; printf 'more-out\\n'") {
        let out = sb.run(["x"]);
        assert_eq!(out.stdout, b"to-outmore-out\n");
        assert_eq!(out.stderr, b"to-err");
    }
}

#[test]
fn binary_stdin_reaches_the_child_with_eof() {
    for sb in both(r#"cat > "$SANDBOX/stdin"; echo done"#) {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut child = sb
            .cmd(["x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feed = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&feed));
        let out = collect_within(child, 60 * SECOND, "the shim");
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"done\n", "cat saw EOF and finished");
        assert_eq!(fs::read(sb.path("stdin")).unwrap(), data);
    }
}

#[test]
fn stdin_from_a_regular_file_reaches_the_child() {
    for sb in both(r#"cat > "$SANDBOX/stdin""#) {
        fs::write(sb.path("input"), b"file input\x00\xff").unwrap();
        let out = sb
            .cmd(["x"])
            .stdin(fs::File::open(sb.path("input")).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(fs::read(sb.path("stdin")).unwrap(), b"file input\x00\xff");
    }
}

#[test]
fn child_killed_by_a_signal_kills_the_shim_with_the_same_signal() {
    for sb in both("kill -s $1 $$") {
        for (name, number) in [
            ("TERM", 15),
            ("KILL", 9),
            ("SEGV", 11),
            ("HUP", 1),
            ("ABRT", 6),
        ] {
            let out = sb.run([name]);
            assert_eq!(
                out.status.signal(),
                Some(number),
                "{name}: {:?}",
                out.status
            );
        }
    }
}

/// A fake that says "ready", then records each TERM/HUP/INT it gets and exits 7 on TERM/HUP.
const TRAPS: &str = r#"
trap 'echo TERM >> "$SANDBOX/signals"; exit 7' TERM
trap 'echo HUP >> "$SANDBOX/signals"; exit 7' HUP
trap 'echo INT >> "$SANDBOX/signals"' INT
echo ready > "$SANDBOX/ready"
while :; do sleep 0.05; done
"#;

#[test]
fn sigterm_and_sighup_sent_to_the_shim_reach_qwen() {
    for sig in ["TERM", "HUP"] {
        for sb in both(TRAPS) {
            let mut child = sb.spawn(&["x"]);
            await_file(&sb.path("ready"), 10 * SECOND);
            kill(sig, child.id());
            let status = wait_within(&mut child, 30 * SECOND, "the shim");
            assert_eq!(
                status.code(),
                Some(7),
                "{sig}: qwen's own exit code comes back"
            );
            assert_eq!(
                sb.read("signals"),
                format!("{sig}\n"),
                "delivered exactly once"
            );
        }
    }
}

#[test]
fn sigint_sent_to_the_shim_reaches_qwen_once() {
    let sb = &both(TRAPS)[1];
    let mut child = sb.spawn(&["x"]);
    await_file(&sb.path("ready"), 10 * SECOND);
    kill("INT", child.id());
    await_file(&sb.path("signals"), 10 * SECOND);
    kill("TERM", child.id());
    assert_eq!(
        wait_within(&mut child, 30 * SECOND, "the shim").code(),
        Some(7)
    );
    assert_eq!(sb.read("signals"), "INT\nTERM\n");
}

#[test]
fn the_fast_path_replaces_the_shim_process() {
    let sb = Sandbox::new(r#"echo $$ > "$SANDBOX/pid""#);
    let child = sb.cmd(["x"]).spawn().unwrap();
    let pid = child.id();
    let out = collect_within(child, 60 * SECOND, "the shim");
    assert!(out.status.success());
    assert_eq!(
        sb.read("pid").trim(),
        pid.to_string(),
        "exec: qwen runs in the shim's own process"
    );

    // QWEN_ROTATION=off does the same even with accounts configured.
    sb.add_oauth_slot(1, "tok_one");
    let child = sb.cmd(["x"]).env("QWEN_ROTATION", "off").spawn().unwrap();
    let pid = child.id();
    collect_within(child, 60 * SECOND, "the shim");
    assert_eq!(sb.read("pid").trim(), pid.to_string());
}

#[test]
fn a_partial_line_shows_at_once_on_the_relay_path() {
    let sb = &both(
        r#"printf 'partial-out'; printf 'partial-err' >&2; while [ ! -e "$SANDBOX/go" ]; do sleep 0.01; done; echo end"#,
    )[1];
    let mut child = sb.spawn(&["x"]);
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    read_until(stdout, "partial-out", 10 * SECOND);
    read_until(stderr, "partial-err", 10 * SECOND);
    fs::write(sb.path("go"), "").unwrap();
    assert!(wait_within(&mut child, 30 * SECOND, "the shim").success());
}

#[test]
fn a_gigabyte_of_output_keeps_memory_flat() {
    let sb = &both("head -c 1073741824 /dev/zero; head -c 268435456 /dev/zero >&2")[1];
    let mut child = sb.spawn(&["x"]);
    let pid = child.id();
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = err.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let mut out = child.stdout.take().unwrap();
    let mut total = 0u64;
    let mut peak_kib = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = out.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        total += k as u64;
        if total % (64 << 20) < k as u64 {
            peak_kib = peak_kib.max(rss_kib(pid));
        }
    }
    assert!(wait_within(&mut child, 30 * SECOND, "the shim").success());
    assert_eq!(total, 1 << 30);
    assert_eq!(err_reader.join().unwrap(), 1 << 28);
    println!("relay of 1 GiB stdout + 256 MiB stderr: shim peak RSS {peak_kib} KiB");
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "RSS stayed {peak_kib} KiB"
    );
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn a_closed_stdout_reaches_qwen_as_it_would_without_the_shim() {
    // `yes` dies of SIGPIPE when its reader goes away; through the shim it must too.
    for sb in both("exec yes") {
        let out = output_within(
            {
                let mut c = std::process::Command::new("sh");
                c.args(["-c", "qwen x | head -n 1"])
                    .env_clear()
                    .env("PATH", sb.path_var())
                    .env("HOME", sb.home())
                    .env("QWEN_HOME", sb.qwen_home())
                    .env("SANDBOX", sb.dir.path());
                c
            },
            20 * SECOND,
        );
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().next(),
            Some("y")
        );
    }
    // And the exit status the shell sees is the child's signal death.
    for sb in both("exec yes") {
        let mut c = sb.cmd(["x"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 2];
        out.read_exact(&mut first).unwrap();
        drop(out);
        let status = wait_within(&mut child, 30 * SECOND, "the shim");
        assert_eq!(
            status.signal(),
            Some(13),
            "SIGPIPE, as `yes` alone: {status:?}"
        );
    }
}

#[test]
fn no_orphan_survives_a_forwarded_term() {
    // The fake starts a grandchild (as qwen's node parent starts a node child) and both trap
    // nothing: TERM to the shim must end the grandchild too.
    let script = r#"sh -c 'echo $$ > "$SANDBOX/grandchild"; echo >> "$SANDBOX/grandchild"; while :; do sleep 0.05; done' &
wait"#;
    for sb in both(script) {
        let mut child = sb.spawn(&["x"]);
        let pid = await_file(&sb.path("grandchild"), 10 * SECOND);
        let grandchild: u32 = pid.trim().parse().unwrap();
        kill("TERM", child.id());
        let status = wait_within(&mut child, 30 * SECOND, "the shim");
        assert_eq!(status.signal(), Some(15), "{status:?}");
        if sb.qwen_home().join("accounts").exists() {
            // Relay path: the whole tree got the signal.
            wait_gone(grandchild);
        } else {
            // Fast path: exactly as without the shim, the grandchild outlives its parent.
            let _ = std::process::Command::new("kill")
                .arg(grandchild.to_string())
                .status();
        }
    }
}

/// The grandchild must die; a zombie waiting for its reaper counts as gone, and so does a
/// process that reused its pid (another start time, field 22 of /proc/PID/stat). The deadline
/// detects a grandchild that never dies; it is not a speed target.
fn wait_gone(pid: u32) {
    let start = std::time::Instant::now();
    // "pid (comm) S ...": the fields after the last ')' start at field 3.
    let fields = |s: &str| -> Vec<String> {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let born = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| fields(&s).get(19).cloned())
        .unwrap_or_default();
    loop {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(s) => {
                let f = fields(&s);
                if f.first().is_some_and(|state| state == "Z") || f.get(19) != born.as_ref() {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < 30 * SECOND,
            "grandchild {pid} is still running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A suite started under `nohup`, or from a shell that ignores SIGINT, hands those ignored
/// dispositions to every process it starts (they survive execve). The signal tests above run
/// again in such a test process, and must still pass and must not hang.
#[test]
fn signal_tests_pass_when_the_suite_itself_ignores_hup_and_int() {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "--test-threads=1",
        "sigterm_and_sighup_sent_to_the_shim_reach_qwen",
        "sigint_sent_to_the_shim_reaches_qwen_once",
        "child_killed_by_a_signal_kills_the_shim_with_the_same_signal",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            use nix::sys::signal::{SigHandler, Signal, signal};
            for s in [Signal::SIGHUP, Signal::SIGINT] {
                let _ = signal(s, SigHandler::SigIgn);
            }
            Ok(())
        });
    }
    let out = collect_within(c.spawn().unwrap(), 120 * SECOND, "the inner test run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("3 passed"),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
