//! What sits in the place of our files is not ours to trust: a FIFO or a 100,000-`[` file
//! where a slot, state.yaml or rotation.yaml should be, a label hand-written with terminal
//! escapes, a base URL with a password in it, the temporaries a killed write left behind.
//! Every case runs the real shim as a caller would, with a deadline: a run that would hang
//! fails the test instead of hanging it.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sandbox::{COUNTING_FAKE as FAKE, Sandbox, counting_pool as pool, creds, output_within};

/// Long enough for any loaded machine, far shorter than "forever".
const DEADLINE: Duration = Duration::from_secs(30);

const WARNING: &str = "qwen-rotation: warning:";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shim(sb: &Sandbox, args: &[&str], fail: &str) -> Output {
    let mut cmd = sb.cmd(args);
    cmd.env("FAIL", fail);
    output_within(cmd, DEADLINE)
}

fn run(sb: &Sandbox, fail: &str) -> Output {
    shim(sb, &["-p", "hi"], fail)
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// qwen's run `n` answered, untouched.
fn assert_qwen_ran(case: &str, out: &Output, n: u32) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{case}: qwen's status\n{err}");
    assert_eq!(
        text(&out.stdout),
        format!("answer {n}\n"),
        "{case}: stdout\n{err}"
    );
}

/// The warnings of `out`, each checked to be one line (the caller checks what they say).
fn warnings(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with(WARNING))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- FIFOs (never block in open)

/// A repository is untrusted content: a FIFO as its `.qwen/settings.json` (read on every run
/// with API keys, to see where qwen would send the model) must not hang the run.
#[test]
fn a_fifo_as_a_workspace_settings_json_does_not_hang_a_run_with_api_keys() {
    let sb = Sandbox::new(FAKE);
    fs::create_dir_all(sb.path("work/.qwen")).unwrap();
    mkfifo(&sb.path("work/.qwen/settings.json"));
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("QWEN_ROTATION_KEYS", "sk-fifo-one,sk-fifo-two")
        .env("QWEN_ROTATION_BASE_URL", "http://127.0.0.1:9/v1")
        .env("FAIL", "");
    let started = Instant::now();
    let out = output_within(cmd, DEADLINE);
    println!("FIFO workspace settings: run took {:?}", started.elapsed());
    assert_qwen_ran("FIFO workspace settings.json", &out, 1);
}

/// The user's and the system's settings.json are read on every run that needs another auth
/// type than they select: a FIFO in either place must not hang it.
#[test]
fn a_fifo_as_the_users_or_the_system_settings_json_does_not_hang_a_run() {
    let sb = pool();
    mkfifo(&sb.qwen_home().join("settings.json"));
    mkfifo(&sb.path("system-settings.json"));
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env(
        "QWEN_CODE_SYSTEM_SETTINGS_PATH",
        sb.path("system-settings.json"),
    )
    .env("FAIL", "");
    let started = Instant::now();
    let out = output_within(cmd, DEADLINE);
    println!(
        "FIFO user and system settings: run took {:?}",
        started.elapsed()
    );
    assert_qwen_ran("FIFO user and system settings.json", &out, 1);
}

#[test]
fn a_fifo_as_a_slot_neither_hangs_a_run_nor_status() {
    let sb = pool();
    let slot = sb.qwen_home().join("accounts/oauth_creds_2.json");
    mkfifo(&slot);
    let started = Instant::now();
    let out = run(&sb, "");
    assert_qwen_ran("FIFO slot", &out, 1);
    let status = shim(&sb, &["--rotation-status"], "");
    let shown = text(&status.stdout);
    println!("FIFO slot: run and status took {:?}", started.elapsed());
    assert_eq!(status.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("account 2 is unusable")
            && shown.contains("named pipe (FIFO), not a regular file")
            && shown.contains(&format!("mv {0} {0}.bak", slot.display())),
        "{shown}"
    );
    let doctor = shim(&sb, &["--rotation-doctor"], "");
    assert!(
        text(&doctor.stdout).contains("named pipe (FIFO)"),
        "{}",
        text(&doctor.stdout)
    );
}

#[test]
fn a_fifo_as_state_yaml_warns_once_and_qwen_runs() {
    let sb = pool();
    let state = sb.qwen_home().join("state.yaml");
    mkfifo(&state);
    let out = run(&sb, "");
    assert_qwen_ran("FIFO state.yaml", &out, 1);
    let said = warnings(&out);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("state.yaml") && said[0].contains("named pipe (FIFO)"),
        "{said:?}"
    );
    let status = shim(&sb, &["--rotation-status"], "");
    assert_eq!(status.status.code(), Some(0));
    assert!(
        text(&status.stdout).contains("state.yaml is unreadable"),
        "{}",
        text(&status.stdout)
    );
    let doctor = shim(&sb, &["--rotation-doctor", "--fix"], "");
    let said = text(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{said}");
    assert!(
        said.contains("named pipe (FIFO)") && said.contains("fix: move it out of the way"),
        "{said}"
    );
    // Left alone: a FIFO is not corrupt text to rebuild over.
    assert!(fs::symlink_metadata(&state).unwrap().file_type().is_fifo());
}

#[test]
fn a_home_others_may_list_is_a_note_one_they_may_write_to_a_problem() {
    let sb = pool();
    // Installed: the live file exists, so the home's mode is doctor's only finding.
    assert_qwen_ran("first run", &run(&sb, ""), 1);
    let home = sb.qwen_home();
    for (mode, code, tag) in [
        (0o755, 0, "note"),
        (0o750, 0, "note"),
        (0o777, 1, "PROBLEM"),
    ] {
        fs::set_permissions(&home, fs::Permissions::from_mode(mode)).unwrap();
        let doctor = shim(&sb, &["--rotation-doctor"], "");
        let said = text(&doctor.stdout);
        let line = said
            .lines()
            .find(|l| l.contains(&format!("{} is {mode:04o}", home.display())))
            .unwrap_or_else(|| panic!("{mode:o}: {said}"));
        println!("home {mode:04o}: exit {:?}: {line}", doctor.status.code());
        assert_eq!(doctor.status.code(), Some(code), "{mode:o}: {said}");
        assert!(line.trim_start().starts_with(tag), "{mode:o}: {line}");
        assert!(
            said.contains(&format!("fix: chmod 700 {}", home.display())),
            "{said}"
        );
    }
    let fixed = shim(&sb, &["--rotation-doctor", "--fix"], "");
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed.stdout));
    assert_eq!(
        fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_fifo_as_rotation_yaml_warns_once_and_qwen_runs_on_the_defaults() {
    let sb = pool();
    mkfifo(&sb.qwen_home().join("rotation.yaml"));
    let out = run(&sb, "1");
    // Rotation works on the defaults: run 1 is spent, run 2 answers on account 2.
    assert_qwen_ran("FIFO rotation.yaml", &out, 2);
    let said = warnings(&out);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("rotation.yaml")
            && said[0].contains("named pipe (FIFO)")
            && said[0].contains("using the defaults"),
        "{said:?}"
    );
    assert!(text(&out.stderr).contains("switched to account 2"));
    let status = shim(&sb, &["--rotation-status"], "");
    assert_eq!(status.status.code(), Some(0));
}

#[test]
fn a_fifo_as_the_live_credentials_is_replaced_by_the_slot_and_qwen_runs() {
    let sb = pool();
    let live = sb.qwen_home().join("oauth_creds.json");
    mkfifo(&live);
    let status = shim(&sb, &["--rotation-status"], "");
    assert_eq!(status.status.code(), Some(0));
    let out = run(&sb, "");
    assert_qwen_ran("FIFO live file", &out, 1);
    assert_eq!(sb.live_creds().as_deref(), Some(creds("tok_one").as_str()));
}

#[test]
fn a_fifo_as_rotation_log_neither_hangs_a_rotation_nor_the_log_command() {
    let sb = pool();
    mkfifo(&sb.qwen_home().join("rotation.log"));
    let out = run(&sb, "1");
    assert_qwen_ran("FIFO rotation.log", &out, 2);
    assert!(
        warnings(&out)
            .iter()
            .any(|w| w.contains("rotation.log") && w.contains("not a regular file")),
        "{}",
        text(&out.stderr)
    );
    for cmd in ["--rotation-log", "--rotation-stats"] {
        let out = shim(&sb, &[cmd], "");
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("named pipe (FIFO)"), "{cmd}");
    }
}

// ---------------------------------------------------------------- size and depth bounds

/// 100,000 `[`: about 20 s of YAML parsing before the bound.
fn brackets() -> String {
    "[".repeat(100_000)
}

#[test]
fn a_deeply_nested_rotation_yaml_is_refused_at_once_and_qwen_runs() {
    let sb = pool();
    fs::write(sb.qwen_home().join("rotation.yaml"), brackets()).unwrap();
    let started = Instant::now();
    let out = run(&sb, "");
    println!(
        "rotation.yaml of 100,000 `[`: the run took {:?}",
        started.elapsed()
    );
    assert_qwen_ran("deep rotation.yaml", &out, 1);
    let said = warnings(&out);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("rotation.yaml")
            && said[0].contains("nests deeper than 64 levels")
            && said[0].contains("using the defaults"),
        "{said:?}"
    );
    let doctor = shim(&sb, &["--rotation-doctor"], "");
    assert!(text(&doctor.stdout).contains("nests deeper than 64 levels"));
}

#[test]
fn a_rotation_yaml_over_1_mib_is_refused_and_qwen_runs() {
    let sb = pool();
    let mut big = String::from("strategy: round-robin\n");
    big.push_str(&"# padding\n".repeat(120_000));
    fs::write(sb.qwen_home().join("rotation.yaml"), big).unwrap();
    let out = run(&sb, "");
    assert_qwen_ran("big rotation.yaml", &out, 1);
    let said = warnings(&out);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("larger than 1 MiB"), "{said:?}");
}

#[test]
fn a_deeply_nested_state_yaml_is_kept_as_corrupt_and_rebuilt_at_once() {
    let sb = pool();
    let state = sb.qwen_home().join("state.yaml");
    fs::write(&state, brackets()).unwrap();
    let started = Instant::now();
    let status = shim(&sb, &["--rotation-status"], "");
    assert!(
        text(&status.stdout).contains("nests deeper than 64 levels"),
        "{}",
        text(&status.stdout)
    );
    let out = run(&sb, "");
    println!(
        "state.yaml of 100,000 `[`: status and the run took {:?}",
        started.elapsed()
    );
    assert_qwen_ran("deep state.yaml", &out, 1);
    let said = warnings(&out);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("nests deeper than 64 levels") && said[0].contains("kept a copy"),
        "{said:?}"
    );
    let copy = sb.qwen_home().join("state.yaml.corrupt");
    assert_eq!(fs::read_to_string(&copy).unwrap(), brackets());
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Rebuilt: the next run is quiet.
    let out = run(&sb, "");
    assert!(warnings(&out).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn a_corrupt_state_yaml_that_links_elsewhere_is_copied_and_the_other_file_left_alone() {
    for how in ["symlink", "hard link"] {
        let sb = pool();
        let outside = sb.path("outside.yaml");
        fs::write(&outside, brackets()).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        let state = sb.qwen_home().join("state.yaml");
        match how {
            "symlink" => std::os::unix::fs::symlink(&outside, &state).unwrap(),
            _ => fs::hard_link(&outside, &state).unwrap(),
        }
        let out = run(&sb, "");
        assert_qwen_ran(how, &out, 1);
        assert!(
            text(&out.stderr).contains("kept a copy"),
            "{how}: {}",
            text(&out.stderr)
        );
        let copy = sb.qwen_home().join("state.yaml.corrupt");
        let meta = fs::symlink_metadata(&copy).unwrap();
        assert!(meta.is_file(), "{how}: the copy is a file of its own");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{how}");
        assert_eq!(fs::read_to_string(&copy).unwrap(), brackets(), "{how}");
        let theirs = fs::metadata(&outside).unwrap();
        assert_eq!(
            theirs.permissions().mode() & 0o777,
            0o644,
            "{how}: not chmodded"
        );
        assert_eq!(fs::read_to_string(&outside).unwrap(), brackets(), "{how}");
    }
}

#[test]
fn a_deeply_nested_or_huge_slot_file_is_an_invalid_slot_and_qwen_runs() {
    let sb = pool();
    let accounts = sb.qwen_home().join("accounts");
    fs::write(accounts.join("oauth_creds_2.json"), brackets()).unwrap();
    fs::write(accounts.join("api_key_3.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    for n in ["oauth_creds_2.json", "api_key_3.json"] {
        fs::set_permissions(accounts.join(n), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let started = Instant::now();
    let out = run(&sb, "");
    assert_qwen_ran("deep slot", &out, 1);
    let status = shim(&sb, &["--rotation-status"], "");
    println!(
        "slot files of 100,000 `[` and 1 MiB + 1: run and status took {:?}",
        started.elapsed()
    );
    let shown = text(&status.stdout);
    assert!(shown.contains("account 2 is unusable"), "{shown}");
    assert!(
        shown.contains("account 3 is unusable: cannot read it: it is larger than 1 MiB"),
        "{shown}"
    );
}

#[test]
fn a_deeply_nested_settings_json_is_read_promptly_by_doctor() {
    let sb = Sandbox::new(FAKE);
    let accounts = sb.qwen_home().join("accounts");
    fs::create_dir_all(&accounts).unwrap();
    fs::set_permissions(sb.qwen_home(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&accounts, fs::Permissions::from_mode(0o700)).unwrap();
    let slot = accounts.join("api_key_1.json");
    fs::write(
        &slot,
        r#"{"api_key":"k-123","base_url":"http://127.0.0.1:9/v1","model":"m"}"#,
    )
    .unwrap();
    fs::set_permissions(&slot, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(sb.qwen_home().join("settings.json"), brackets()).unwrap();
    let started = Instant::now();
    let doctor = shim(&sb, &["--rotation-doctor"], "");
    println!(
        "settings.json of 100,000 `[`: doctor took {:?}",
        started.elapsed()
    );
    assert!(
        text(&doctor.stdout).contains("settings.json is not valid JSON"),
        "{}",
        text(&doctor.stdout)
    );
    let out = run(&sb, "");
    assert_qwen_ran("deep settings.json", &out, 1);
}

// ---------------------------------------------------------------- hand-written labels

/// A label as someone could write it into state.yaml: an OSC 52 clipboard write, a screen
/// clear, a CR and an LF that forge a line, and a right-to-left override.
const HOSTILE_YAML: &str = r#""evil\e]52;c;aGk=\a\e[2J\r\nqwen-rotation: forged\u202Eeno""#;
const HOSTILE: &str = "evil\x1b]52;c;aGk=\x07\x1b[2J\r\nqwen-rotation: forged\u{202e}eno";

/// What a terminal would act on: C0 controls other than the line feed that ends a line, DEL,
/// C1 controls, bidi controls.
fn terminal_controls(out: &str) -> Vec<char> {
    out.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn with_hostile_label() -> Sandbox {
    let sb = pool();
    assert_eq!(
        shim(&sb, &["--rotation-label", "1", "work"], "")
            .status
            .code(),
        Some(0)
    );
    let state = sb.qwen_home().join("state.yaml");
    let yaml = fs::read_to_string(&state).unwrap();
    assert!(yaml.contains("label: work"), "{yaml}");
    fs::write(
        &state,
        yaml.replace("label: work", &format!("label: {HOSTILE_YAML}")),
    )
    .unwrap();
    // A hand-written log line too (rotation.log is as editable as state.yaml).
    let line = serde_json::json!({
        "timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "event": "label",
        "slot": 1, "label": HOSTILE, "reason": HOSTILE, "trigger": HOSTILE,
    });
    let log = sb.qwen_home().join("rotation.log");
    let mut text = fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&format!("{line}\n"));
    fs::write(&log, text).unwrap();
    sb
}

#[test]
fn a_hand_written_label_never_reaches_the_terminal_raw() {
    let sb = with_hostile_label();
    let mut seen = Vec::new();
    // (command, whether it names account 1 by its label); the last leaves account 1 live.
    for (args, names_it) in [
        (&["--rotation-status"][..], true),
        (&["--rotation-list"], true),
        (&["--rotation-stats"], true),
        (&["--rotation-log"], true),
        (&["--rotation-doctor"], false),
        (&["--rotation-switch", "1"], true),
        (&["--rotation-disable", "1"], true),
        (&["--rotation-enable", "1"], true),
        (&["--rotation-next"], true),
        (&["--rotation-switch", "1"], true),
    ] {
        let out = shim(&sb, args, "");
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(
            !names_it || all.contains("evil"),
            "{args:?} shows the label: {all}"
        );
        assert_eq!(terminal_controls(&all), vec![], "{args:?}: {all:?}");
        assert!(
            !all.lines().any(|l| l.starts_with("qwen-rotation: forged")),
            "{args:?} forged a line: {all}"
        );
        seen.push(args[0]);
    }
    // The run's notice: account 1 (the label) is spent, account 2 answers.
    let out = run(&sb, "1");
    assert_qwen_ran("hostile label", &out, 2);
    let err = text(&out.stderr);
    assert!(err.contains("account 1 (evil"), "{err}");
    assert_eq!(terminal_controls(&err), vec![], "run notice: {err:?}");
    println!("no terminal control in: {seen:?}, the run notice");
}

#[test]
fn json_output_carries_the_label_exactly_with_every_control_escaped() {
    let sb = with_hostile_label();
    for (args, list) in [
        (&["--rotation-status", "--json"][..], "/accounts"),
        (&["--rotation-stats", "--json"], "/accounts"),
        (&["--rotation-log", "--json"], ""),
    ] {
        let out = shim(&sb, args, "");
        let raw = text(&out.stdout);
        assert_eq!(terminal_controls(&raw), vec![], "{args:?}: {raw:?}");
        let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let items = doc.pointer(list).and_then(|v| v.as_array()).unwrap();
        assert!(
            items.iter().any(|a| a["label"].as_str() == Some(HOSTILE)),
            "{args:?}: the exact label in {raw}"
        );
    }
}

#[test]
fn a_label_with_bidi_controls_is_refused_on_the_command_line() {
    let sb = pool();
    let out = shim(&sb, &["--rotation-label", "1", "abc\u{202e}def"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("control characters"), "{err}");
    assert_eq!(terminal_controls(&err), vec![], "{err:?}");
}

// ---------------------------------------------------------------- base URLs and temporaries

#[test]
fn a_base_url_with_credentials_is_never_printed_whole() {
    let sb = Sandbox::new(FAKE);
    let key = sb.path("key");
    fs::write(&key, "k-1234567890").unwrap();
    let url = "https://alice:hunter2@api.example.com:8443/v1?api_key=qs-secret#frag";
    let mut add = sb.cmd([
        "--rotation-add",
        "--api-key",
        "work",
        "--base-url",
        url,
        "--model",
        "m",
    ]);
    add.stdin(Stdio::from(fs::File::open(&key).unwrap()));
    let out = output_within(add, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("for https://***@api.example.com:8443/v1?***"),
        "{said}"
    );
    let mut outputs = vec![("--rotation-add", said)];
    for args in [
        &["--rotation-status"][..],
        &["--rotation-status", "--json"],
        &["--rotation-stats"],
        &["--rotation-stats", "--json"],
        &["--rotation-log"],
        &["--rotation-log", "--json"],
        &["--rotation-doctor"],
        &["--rotation-doctor", "--json"],
    ] {
        let out = shim(&sb, args, "");
        outputs.push((args[0], text(&out.stdout) + &text(&out.stderr)));
    }
    let bad = shim(
        &sb,
        &[
            "--rotation-add",
            "--api-key",
            "x",
            "--base-url",
            "ftp://alice:hunter2@h/",
        ],
        "",
    );
    assert_eq!(bad.status.code(), Some(2));
    outputs.push(("bad --base-url", text(&bad.stderr)));
    for (what, out) in &outputs {
        for part in ["hunter2", "qs-secret", "frag"] {
            assert!(!out.contains(part), "{what} shows {part}: {out}");
        }
    }
}

/// Our temporaries a write killed midway leaves (`replace_file`'s names), and look-alikes that
/// are not ours to remove.
const TEMPS: &[&str] = &[".qwen-rotation-a1B2c3", ".qwen-rotation-ZZZZZZ"];
const LOOK_ALIKES: &[&str] = &[
    ".qwen-rotation-a1B2c3d",
    ".qwen-rotation-a1B2",
    ".qwen-rotation-a1B2c.",
    "qwen-rotation-a1B2c3",
    ".qwen-rotation-notes.txt",
];

#[test]
fn a_normal_run_removes_temporaries_left_by_a_killed_write_and_nothing_else() {
    let sb = pool();
    // The steady state first: the next run takes the lock-free path unless it finds leftovers.
    assert_qwen_ran("first run", &run(&sb, ""), 1);
    let home = sb.qwen_home();
    let dirs = [
        home.clone(),
        home.join("accounts"),
        home.join("accounts/backup"),
    ];
    fs::create_dir_all(&dirs[2]).unwrap();
    let mut planted = Vec::new();
    let mut kept = Vec::new();
    for dir in &dirs {
        for t in TEMPS {
            let p = dir.join(t);
            fs::write(&p, creds("tok_one")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            planted.push(p);
        }
        for t in LOOK_ALIKES {
            let p = dir.join(t);
            fs::write(&p, "not ours").unwrap();
            kept.push(p);
        }
        // A directory with our name pattern is not a temporary file either.
        let d = dir.join(".qwen-rotation-Dir123");
        fs::create_dir_all(&d).unwrap();
        kept.push(d);
    }
    let before: Vec<_> = walk(&home)
        .into_iter()
        .filter(|p| !planted.contains(p))
        .collect();
    let out = run(&sb, "");
    assert_qwen_ran("run with leftovers", &out, 2);
    assert!(warnings(&out).is_empty(), "{}", text(&out.stderr));
    for p in &planted {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    let after = walk(&home);
    for p in &before {
        assert!(after.contains(p), "{} was removed", p.display());
    }
    let log = fs::read_to_string(home.join("rotation.log")).unwrap();
    assert!(
        log.contains("removed 6 leftover temporary file(s)"),
        "{log}"
    );
    println!(
        "removed {} temporaries, kept {} look-alikes and every other file ({} entries)",
        planted.len(),
        kept.len(),
        before.len()
    );
    for p in kept {
        let _ = fs::remove_file(&p);
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
