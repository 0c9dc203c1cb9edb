//! Run counts: every watched run appends one `run` line to rotation.log, and `--rotation-stats`
//! counts them per account and per day (human and `--json`). Through the built binary, with a
//! small fake qwen that fails the runs listed in $FAIL with a quota error.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;

use sandbox::Sandbox;
use serde_json::Value;

/// Counts its runs; fails the runs listed in $FAIL with a quota error, and exits $CODE otherwise.
const FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
case " $FAIL " in *" $n "*) echo '[API Error: 429 Free allocated quota exceeded.]' >&2; exit 1 ;; esac
echo "answer $n"; exit ${CODE:-0}"#;

const PROMPT: &str = "a-private-prompt-that-must-not-be-logged";

fn pool() -> Sandbox {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    sb
}

fn run(sb: &Sandbox, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = sb.cmd(["-p", PROMPT]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    sandbox::output_within(cmd, std::time::Duration::from_secs(60))
}

fn log_lines(sb: &Sandbox) -> Vec<Value> {
    fs::read_to_string(sb.qwen_home().join("rotation.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn stats_json(sb: &Sandbox) -> Value {
    let out = sb.run(["--rotation-stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("stats --json is JSON")
}

#[test]
fn runs_are_counted_per_account_and_per_day() {
    let sb = pool();
    // Three runs on account 1, then a quota hit on run 4 that reruns on account 2 (run 5), then
    // one more run on account 2 that exits 3.
    for _ in 0..3 {
        assert_eq!(run(&sb, &[]).status.code(), Some(0));
    }
    let out = run(&sb, &[("FAIL", "4")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer 5\n");
    assert_eq!(run(&sb, &[("CODE", "3")]).status.code(), Some(3));

    let runs: Vec<Value> = log_lines(&sb)
        .into_iter()
        .filter(|e| e["event"] == "run")
        .collect();
    println!("run lines: {}", runs.len());
    for r in &runs {
        println!("  {r}");
    }
    assert_eq!(runs.len(), 5, "one line per run, not per attempt");
    let slots: Vec<u64> = runs.iter().map(|r| r["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, vec![1, 1, 1, 2, 2]);
    assert_eq!(
        runs[3]["attempts"], 2,
        "the rerun counts as one run of two attempts"
    );
    assert_eq!(runs[4]["code"], 3);
    assert!(runs.iter().all(|r| r["duration_ms"].is_u64()));
    let log = fs::read_to_string(sb.qwen_home().join("rotation.log")).unwrap();
    assert!(!log.contains(PROMPT), "argv never reaches the log");

    let v = stats_json(&sb);
    println!("stats: {v}");
    assert_eq!(v["runs_total"], 5);
    let acc = |n: usize| v["accounts"][n - 1].clone();
    assert_eq!(acc(1)["runs"], 3);
    assert_eq!(acc(1)["runs_failed"], 0);
    assert_eq!(acc(2)["runs"], 2);
    assert_eq!(acc(2)["runs_failed"], 1);
    assert_eq!(acc(2)["runs_retried"], 1);
    assert!(acc(1)["run_avg_ms"].is_u64() && acc(1)["last_run"].is_string());
    assert!(acc(1)["last_reset"].is_null(), "{}", acc(1));
    assert_eq!(acc(1)["cooldowns"], 1);
    let history = v["history"].as_array().unwrap();
    let today = chrono::Utc::now().date_naive().to_string();
    let day = history
        .iter()
        .find(|d| d["date"] == today.as_str())
        .unwrap();
    assert_eq!(day["runs"], 5);
    assert_eq!(day["switches"], 1);

    let text = sb.run(["--rotation-stats"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    println!("{text}");
    assert!(
        text.contains("RUNS") && text.contains("Total runs: 5."),
        "{text}"
    );
    assert!(text.contains("2 (1 failed)"), "{text}");
    assert!(text.contains(&format!("{today}  5 runs")), "{text}");
}

#[test]
fn runs_without_accounts_and_with_rotation_off_write_nothing() {
    let sb = Sandbox::new(FAKE);
    assert_eq!(run(&sb, &[]).status.code(), Some(0));
    assert!(!sb.qwen_home().join("rotation.log").exists());
    let sb = pool();
    assert_eq!(run(&sb, &[("QWEN_ROTATION", "off")]).status.code(), Some(0));
    assert!(
        !sb.qwen_home().join("rotation.log").exists(),
        "the exec path logs nothing"
    );
}

#[test]
fn stats_read_the_previous_log_generation_too() {
    let sb = pool();
    assert_eq!(run(&sb, &[]).status.code(), Some(0));
    let log = sb.qwen_home().join("rotation.log");
    fs::rename(&log, sb.qwen_home().join("rotation.log.1")).unwrap();
    assert_eq!(run(&sb, &[]).status.code(), Some(0));
    let v = stats_json(&sb);
    println!(
        "runs_total across rotation.log.1 and rotation.log: {}",
        v["runs_total"]
    );
    assert_eq!(v["runs_total"], 2);
    assert_eq!(v["accounts"][0]["runs"], 2);
    let out = sb.run(["--rotation-log", "--tail", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("exit 0, 1 attempt").count(), 2, "{text}");
}

#[test]
fn a_log_past_the_size_cap_moves_aside_on_the_next_run() {
    let sb = pool();
    assert_eq!(run(&sb, &[]).status.code(), Some(0));
    let log = sb.qwen_home().join("rotation.log");
    // Old run lines past the 8 MiB cap (one account, a steady pool: no rotation step runs).
    let line = fs::read_to_string(&log).unwrap();
    let line = line.lines().last().unwrap().to_string() + "\n";
    let copies = (8 << 20) / line.len() + 1;
    fs::write(&log, line.repeat(copies)).unwrap();
    assert_eq!(run(&sb, &[]).status.code(), Some(0));
    let now = fs::read_to_string(&log).unwrap();
    let old = fs::read_to_string(sb.qwen_home().join("rotation.log.1")).unwrap();
    println!(
        "rotation.log.1: {} lines; rotation.log: {} line(s)",
        old.lines().count(),
        now.lines().count()
    );
    assert_eq!(old.lines().count(), copies);
    assert_eq!(now.lines().count(), 1, "{now}");
    let v = stats_json(&sb);
    assert_eq!(v["runs_total"].as_u64(), Some(copies as u64 + 1));
}

#[test]
fn status_watch_refuses_a_pipe_and_help_gives_every_flag_an_example() {
    let sb = pool();
    let out = sb.run(["--rotation-status", "--watch"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--watch redraws a terminal"), "{err}");
    let help = sb.run(["--rotation-help"]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let lines: Vec<&str> = help.lines().collect();
    let flags: Vec<&str> = qwen_rotation::cli::COMMANDS
        .iter()
        .chain(qwen_rotation::cli::MODIFIERS)
        .copied()
        .collect();
    for flag in &flags {
        // The flag's entry: its line and the indented lines under it, up to the next entry.
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag) && l.starts_with("  --"))
            .unwrap_or_else(|| panic!("{flag} has no entry in --rotation-help"));
        let entry: Vec<&str> = lines[at..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.starts_with("  --"))
            .map(|(_, l)| *l)
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(
            entry.iter().any(|l| l.contains(&format!("qwen {flag}"))),
            "{flag} has no example in --rotation-help: {entry:?}"
        );
    }
    println!("{} flags, each with an example", flags.len());
}

/// `--rotation-status --watch` on a terminal: the first frame clears the screen, later frames
/// go back to the top and redraw in place; Ctrl+C ends it.
#[test]
fn status_watch_redraws_in_place_on_a_terminal() {
    use std::io::{Read, Write};
    use std::os::unix::process::ExitStatusExt;

    let sb = pool();
    let (mut master, mut child) = spawn_on_pty(sb.cmd(["--rotation-status", "--watch"]));
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut screen = Vec::new();
    let frames = |s: &[u8]| String::from_utf8_lossy(s).matches("Accounts in").count();
    while frames(&screen) < 2 {
        let chunk = rx
            // A frame every 2 s: the deadline detects a watch that stopped, not a speed.
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a second frame within 30 s");
        screen.extend(chunk);
    }
    let text = String::from_utf8_lossy(&screen).into_owned();
    println!(
        "two frames in {:.1?}, {} bytes",
        started.elapsed(),
        screen.len()
    );
    assert!(text.starts_with("\x1b[H\x1b[2J"), "{text:?}");
    assert_eq!(
        text.matches("\x1b[2J").count(),
        1,
        "only the first frame clears: {text:?}"
    );
    let second = text
        .rfind("\x1b[HAccounts in")
        .expect("the second frame starts at the top");
    assert!(second > 0 && text[second..].contains("\x1b[K"), "{text:?}");
    // Ctrl+C from the terminal ends it.
    master.write_all(&[0x03]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("--watch did not end on Ctrl+C within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    println!("ended by {:?}", status.signal());
    assert_eq!(status.signal(), Some(2), "{status:?}");
}

/// Starts `cmd` as session leader on a new pseudo-terminal (stdin, stdout and stderr), as a
/// terminal emulator starts a shell. Returns the master side and the child.
fn spawn_on_pty(mut cmd: std::process::Command) -> (std::fs::File, std::process::Child) {
    use std::os::unix::process::CommandExt;
    let ws = nix::libc::winsize {
        ws_row: 40,
        ws_col: 140,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).expect("openpty");
    cmd.stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn on a pty");
    drop(cmd);
    drop(pty.slave);
    (std::fs::File::from(pty.master), child)
}

/// An interactive session (a terminal on both ends) is one run too.
#[test]
fn an_interactive_session_is_counted_as_a_run() {
    use std::io::Read;
    let sb = pool();
    let (mut master, mut child) = spawn_on_pty(sb.cmd(["--approval-mode", "yolo"]));
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = master.read_to_end(&mut all); // EIO once the session's side closes
        all
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let screen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    println!("session ended {status:?}; screen {screen:?}");
    assert_eq!(status.code(), Some(0));
    assert!(screen.contains("answer 1"), "{screen:?}");
    let runs: Vec<Value> = log_lines(&sb)
        .into_iter()
        .filter(|e| e["event"] == "run")
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0]["slot"].as_u64(), runs[0]["code"].as_i64()),
        (Some(1), Some(0))
    );
}
