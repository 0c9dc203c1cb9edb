//! What the `--rotation-demo` tests of every profile check the same way: the person's files
//! byte for byte (a snapshot) and untouched (inotify), what is left in a directory, the processes
//! a run left behind, the numbered step lines and the lines every demo prints, a demo stopped by
//! a signal once its CLI runs, the shim alone on PATH (no real CLI, one too new for the node at
//! hand, the help), and `install.sh --demo`.
//!
//! Included by tests/demo.rs, tests/demo_gemini.rs and tests/demo_claude.rs with
//! `#[path = "support/demo.rs"] mod demo;`; the support module of the profile's real CLI gives
//! the sandbox, and the including file brings its `Output`, `mkdir_private`, `run_with_timeout`,
//! `secrets` and `write_private` into scope (`use real_…::{…}`), which the code here uses.
#![allow(dead_code)]

#[path = "child.rs"]
mod child;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{Output, mkdir_private, run_with_timeout, secrets, write_private};

/// The demo's status table (after the line naming `--rotation-status in the demo home`):
/// account 1 cooling down, account 2 live, and, when `home` is given, the pool in a directory
/// whose path holds each of its parts (the demo's own home).
pub fn assert_status_table(stdout: &str, home: &[&str], dump: &str) {
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("--rotation-status in the demo home"))
        .collect();
    if !home.is_empty() {
        assert!(
            table
                .iter()
                .any(|l| l.starts_with("Accounts in ") && home.iter().all(|h| l.contains(h))),
            "{dump}"
        );
    }
    assert!(
        table
            .iter()
            .any(|l| l.contains("1  spent") && l.contains("cooling down")),
        "{dump}"
    );
    assert!(
        table.iter().any(|l| l.starts_with("  *  2  fresh")),
        "{dump}"
    );
}

/// Piped output is plain text: no escape sequence on either stream.
pub fn assert_plain(stdout: &[u8], stderr: &[u8], dump: &str) {
    assert!(!stdout.contains(&0x1b), "{dump}");
    assert!(!stderr.contains(&0x1b), "{dump}");
}

/// Every file under `dir` with its bytes and mode.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&path));
            out.insert(path, (Vec::new(), meta.permissions().mode()));
        } else {
            out.insert(
                path.clone(),
                (fs::read(&path).unwrap(), meta.permissions().mode()),
            );
        }
    }
    out
}

/// Watches each of `dirs` (the person's CLI home and what it holds) for any open, read or
/// change, and `home` for anything created, deleted or moved into it.
pub fn watch(dirs: &[&Path], home: &Path) -> Inotify {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    let everything = AddWatchFlags::IN_OPEN
        | AddWatchFlags::IN_ACCESS
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO;
    for dir in dirs {
        ino.add_watch(*dir, everything).unwrap();
    }
    ino.add_watch(
        home,
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_TO,
    )
    .unwrap();
    ino
}

/// The events seen so far (none is `EAGAIN`).
pub fn events(ino: &Inotify) -> Vec<String> {
    match ino.read_events() {
        Ok(evs) => evs
            .into_iter()
            .map(|e| format!("{:?} {:?}", e.mask, e.name))
            .collect(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("inotify: {e}"),
    }
}

pub fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Processes whose working directory is under `tmp` (left behind by this test's run).
pub fn processes_in(tmp: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cwd) = fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(tmp)
        {
            found.push(format!(
                "{} in {}",
                entry.file_name().to_string_lossy(),
                cwd.display()
            ));
        }
    }
    found
}

/// The step lines of the demo's `stdout` (`N. [ s.ss s] …`) are `count`, numbered 1 to `count`
/// in order, each with its time; `dump` is shown on a failure.
pub fn assert_numbered_steps(stdout: &str, count: usize, dump: &str) {
    let numbered: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let digits = t.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && t[digits..].starts_with(". [")
        })
        .collect();
    assert_eq!(numbered.len(), count, "{dump}");
    for (i, l) in numbered.iter().enumerate() {
        assert!(
            l.trim_start().starts_with(&format!("{}. [", i + 1)) && l.contains(" s] "),
            "step {} reads {l:?}",
            i + 1
        );
    }
}

/// How a demo stopped by a signal ended.
pub struct Interrupted {
    pub status: ExitStatus,
    /// The stdout lines read before the signal.
    pub seen: Vec<String>,
    pub stderr: String,
    /// From the signal to the exit.
    pub took: Duration,
}

/// Starts `cmd` (the demo, in its own process group), reads its stdout until a line contains
/// `started` (the demo's own line saying the CLI runs), then sends `signal` to the demo's
/// process group as a terminal's Ctrl-C would (its children have their own), and waits for the
/// exit. Every wait has `limit`.
pub fn interrupt_when(
    mut cmd: Command,
    started: &str,
    signal: Signal,
    limit: Duration,
) -> Interrupted {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = cmd.spawn().unwrap();
    let pid = Pid::from_raw(running.id() as i32);
    let (tx, rx) = mpsc::channel();
    let stdout = running.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let now = line.contains(started);
                seen.push(line);
                if now {
                    break;
                }
            }
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                panic!("the demo never said {started:?}: {seen:?}");
            }
        }
    }
    killpg(pid, signal).unwrap();
    let at = Instant::now();
    let status = child::wait_within(&mut running, Duration::from_secs(60), "the demo");
    let took = at.elapsed();
    let mut stderr = String::new();
    running
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Interrupted {
        status,
        seen,
        stderr,
        took,
    }
}

/// What every profile's person has besides their own CLI's files and variables, none of which
/// the demo may use: a rotation.yaml that does not parse in `cli_home`, and proxies to a closed
/// port. Returns the demo's TMPDIR of its own (`tmpdir` beside `home`, made here, 0700) and the
/// variables to set, TMPDIR among them.
pub fn person_common(home: &Path, cli_home: &Path) -> (PathBuf, Vec<(&'static str, OsString)>) {
    let tmp = home.parent().unwrap().join("tmpdir");
    mkdir_private(&tmp);
    write_private(&cli_home.join("rotation.yaml"), b"strategy: [not yaml\n");
    let env = vec![
        ("TMPDIR", tmp.clone().into()),
        ("HTTPS_PROXY", "http://127.0.0.1:9".into()),
        ("HTTP_PROXY", "http://127.0.0.1:9".into()),
    ];
    (tmp, env)
}

/// A person's pool of two keys in the environment (fixture secrets), for `{NAME}_ROTATION_KEYS`.
pub fn person_pool_keys() -> String {
    format!(
        "{},{}",
        secrets::secret("person-pool-1"),
        secrets::secret("person-pool-2")
    )
}

/// Nothing is left in `tmp` (the run's TMPDIR).
pub fn assert_tmp_empty(tmp: &Path) {
    assert!(
        entries(tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(tmp)
    );
}

/// Nothing is left in `tmp` (the run's TMPDIR) and no process of the run is left.
pub fn assert_all_gone(tmp: &Path) {
    assert_tmp_empty(tmp);
    let left = processes_in(tmp);
    assert!(left.is_empty(), "processes of the demo left: {left:?}");
}

/// The lines every profile's demo prints on a successful piped run of the real `name` (in
/// `real_dir`, saying `version`), besides `steps` (the profile's own): exit 0, the numbered
/// steps 1 to 9, the status table of the demo home (`home`: parts of the pool's directory, as
/// [`assert_status_table`]), plain text, no fixture secret on either stream.
pub fn assert_rotation_shown(
    out: &Output,
    (name, real_dir, version): (&str, &Path, &str),
    steps: &[&str],
    home: &[&str],
) {
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    let common = [
        format!("{name} --rotation-demo: a quota rotation on the real {name}, offline"),
        format!(
            "the real {name}: {} (version {version})",
            real_dir.join(name).display()
        ),
        format!(
            "account 1 (spent) added: {name} --rotation-add --api-key spent --base-url http://127.0.0.1:"
        ),
        "account 2 (fresh) added".to_string(),
        "switch: the shim marked account 1 out of quota and sent the same request on account 2 → 200"
            .to_string(),
        format!(
            "{name} exited 0 and printed account 2's answer: \"Hello from account 2: account 1 ran \
             out of quota, and the shim moved this request here before {name} noticed.\""
        ),
        "stderr: qwen-rotation: account 1 (spent) quota exhausted; switched to account 2 (fresh)"
            .to_string(),
        // Key 1 was asked once: the relay moved that very request on, the CLI never saw the error.
        "provider: account 1 asked once, account 2 asked ".to_string(),
        "rotation.log: account_switch from 1 to 2, reason quota_exhausted".to_string(),
        format!("{name} --rotation-status in the demo home:"),
        "Rotation works: account 1 ran out of quota".to_string(),
        format!("and {name} answered without seeing the error"),
    ];
    for step in common
        .iter()
        .map(String::as_str)
        .chain(steps.iter().copied())
    {
        assert!(stdout.contains(step), "missing {step:?}\n{}", out.dump());
    }
    // The steps come in order, numbered, each with its time.
    assert_numbered_steps(&stdout, 9, &out.dump());
    // The status table of the demo home: account 2 live, account 1 cooling down.
    assert_status_table(&stdout, home, &out.dump());
    // Piped: plain text, no escape sequence anywhere.
    assert_plain(&out.stdout, &out.stderr, &out.dump());
    secrets::assert_clean("the demo's stdout", &out.stdout);
    secrets::assert_clean("the demo's stderr", &out.stderr);
}

/// What of the person's a demo run of `cli` (its name and version, for the log line) must leave
/// alone: their CLI home (every file under it; it and its `accounts` are watched), `files`
/// beside it in `home` (watched too), and what `home` holds (`holds`, sorted).
pub struct Person<'a> {
    pub cli: &'a str,
    pub home: &'a Path,
    pub cli_home: &'a Path,
    pub files: &'a [&'a Path],
    pub holds: &'a [&'a str],
}

/// Runs the demo `cmd` (stdout a pipe: not a terminal) within `limit` while watching the
/// person's files, checks the run with `check`, then: nothing of the person's was opened,
/// changed or added, the demo home is gone from `tmp` (its TMPDIR) and no process of the run is
/// left.
pub fn run_leaving_alone(
    cmd: Command,
    limit: Duration,
    person: &Person,
    tmp: &Path,
    check: impl FnOnce(&Output),
) -> Output {
    let look = || {
        let files: Vec<Vec<u8>> = person.files.iter().map(|f| fs::read(f).unwrap()).collect();
        (snapshot(person.cli_home), files)
    };
    let before = look();
    let accounts = person.cli_home.join("accounts");
    let mut watched = vec![person.cli_home, accounts.as_path()];
    watched.extend(person.files);
    let ino = watch(&watched, person.home);
    let out = run_with_timeout(cmd, None, limit);
    let touched = events(&ino);
    check(&out);
    assert!(
        touched.is_empty(),
        "the person's files were touched: {touched:?}"
    );
    assert_eq!(
        look(),
        before,
        "the person's {} or a file beside it changed",
        person.cli_home.display()
    );
    let mut holds = entries(person.home);
    holds.sort();
    assert_eq!(holds, person.holds, "something was added to HOME");
    assert_all_gone(tmp);
    eprintln!("demo on {}: {:.1?}", person.cli, out.elapsed);
    out
}

/// Stopped by `signal` once the demo `cmd` says `name` runs: exit 128 + signal, the line saying
/// so, the home removed from `tmp` (its TMPDIR), no process of the run left.
pub fn assert_interrupted(name: &str, cmd: Command, tmp: &Path, signal: Signal, limit: Duration) {
    // The demo's own line says the CLI was started: interrupt it then.
    let Interrupted {
        status,
        seen,
        stderr,
        took,
    } = interrupt_when(cmd, &format!("running {name}"), signal, limit);
    assert_eq!(
        status.code(),
        Some(128 + signal as i32),
        "{status:?}\n{seen:?}\n{stderr}"
    );
    assert!(
        stderr.contains("qwen-rotation: demo: interrupted"),
        "{stderr}"
    );
    assert_all_gone(tmp);
    eprintln!("demo on {name} stopped by {signal:?} in {took:.1?}");
}

/// Runs `cmd` in a clean process group of its own, stdin empty, both streams read, within
/// `limit`.
pub fn run_piped(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    child::default_signals(&mut cmd);
    run_with_timeout(cmd, None, limit)
}

/// The shim as `name` (a symlink in `dir/shim`), with `path` after it on PATH, `dir/home` as
/// HOME and `dir/tmp` as a TMPDIR of its own.
pub fn alone(name: &str, dir: &Path, path: &str, args: &[&str]) -> Output {
    let shim = dir.join("shim");
    fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim.join(name));
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(shim.join(name));
    cmd.args(args)
        .env_clear()
        .env("PATH", format!("{}:{path}", shim.display()))
        .env("HOME", dir.join("home"))
        .env("TMPDIR", &tmp);
    run_piped(cmd, Duration::from_secs(60))
}

/// The demo of the shim as `name` alone (see [`alone`]) with `path` after it on PATH: it exits
/// `code` with one line on stderr, which is returned, and leaves nothing in its TMPDIR.
pub fn demo_alone_says(name: &str, dir: &Path, path: &str, code: i32) -> String {
    let out = alone(name, dir, path, &["--rotation-demo"]);
    assert_eq!(out.code(), code, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert_tmp_empty(&dir.join("tmp"));
    err
}

/// Without a real `name` on PATH the demo says so in one line naming `npm install -g {package}`,
/// exits 127 and leaves nothing in its TMPDIR.
pub fn assert_no_real_cli_exits_127(name: &str, package: &str) {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let err = demo_alone_says(name, dir.path(), &empty.to_string_lossy(), 127);
    assert!(
        err.starts_with(&format!(
            "qwen-rotation: demo: the real {name} was not found on PATH"
        )) && err.contains(&format!("npm install -g {package}")),
        "{err}"
    );
}

/// A real `name` too new for the node at hand: an npm layout `bin/{name}` →
/// `lib/node_modules/{package}/{cli}`, whose package asks for Node.js `engines` (no machine has
/// it); `node` is the machine's. The demo exits 1 with one line naming both versions and leaves
/// nothing in its TMPDIR; that line is returned for the fix it names. `None`: node is not on
/// PATH (SKIP; a failure under CI).
pub fn too_new_for_node(name: &str, package: &str, cli: &str, engines: &str) -> Option<String> {
    let Some(node) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
    else {
        assert!(std::env::var_os("CI").is_none(), "node is not on PATH");
        eprintln!("SKIP: node is not on PATH");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("lib/node_modules").join(package);
    let cli = pkg.join(cli);
    fs::create_dir_all(cli.parent().unwrap()).unwrap();
    fs::write(
        pkg.join("package.json"),
        serde_json::json!({"name": package, "version": "9.9.9", "engines": {"node": engines}})
            .to_string(),
    )
    .unwrap();
    fs::write(&cli, "#!/usr/bin/env node\nconsole.log(\"9.9.9\");\n").unwrap();
    fs::set_permissions(&cli, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&cli, bin.join(name)).unwrap();
    std::os::unix::fs::symlink(&node, bin.join("node")).unwrap();
    let err = demo_alone_says(name, dir.path(), &bin.to_string_lossy(), 1);
    assert!(
        err.contains(&format!(
            "demo: the real {name} 9.9.9 needs Node.js {engines} and node on PATH is v"
        )),
        "{err}"
    );
    Some(err)
}

/// `name --rotation-help` lists the demo (what it does) with an example, and the demo takes no
/// argument: one line says so, exit 2.
pub fn assert_help_lists_the_demo(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = alone(name, dir.path(), "/nonexistent", &["--rotation-help"]);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let help = out.stdout();
    assert!(
        help.lines().any(|l| l.starts_with("  --rotation-demo ")
            && l.contains(&format!("a quota rotation on the real {name}"))),
        "{help}"
    );
    assert!(
        help.contains(&format!("  {name} --rotation-demo\n")),
        "{help}"
    );
    let out = alone(
        name,
        dir.path(),
        "/nonexistent",
        &["--rotation-demo", "now"],
    );
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert_eq!(
        out.stderr(),
        format!(
            "qwen-rotation: unexpected argument `now` for --rotation-demo; usage: {name} --rotation-demo\n"
        )
    );
}

/// `dir/fake-bin/{name}`: a "real CLI" that prints `version` and answers without asking any
/// provider, so no demo can show a rotation on it. Returns `dir/fake-bin`.
pub fn fake_cli(dir: &Path, name: &str, version: &str) -> PathBuf {
    let bin = dir.join("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join(name), format!("#!/bin/sh\necho {version}\n")).unwrap();
    fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `install.sh --binary SHIM --prefix DIR/prefix ARGS` in a clean environment with `path` as
/// PATH, `dir/home` as HOME and `dir/tmp` as TMPDIR, within `limit`.
pub fn install_sh(dir: &Path, path: &str, args: &[&str], limit: Duration) -> Output {
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("home")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_qwen"), "--prefix"])
        .arg(dir.join("prefix"))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"));
    run_piped(cmd, limit)
}

/// `install.sh … --demo` with the real qwen at `qwen` and the real `name` at `cli` on PATH
/// (`args` after the prefix) ran qwen's demo, then `name`'s (with the installed shim first on
/// PATH), each to its end, and left nothing in TMPDIR. Returns its output.
pub fn install_shows_qwen_then(name: &str, qwen: &Path, cli: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        qwen.parent().unwrap().display(),
        cli.parent().unwrap().display()
    );
    let out = install_sh(dir.path(), &path, args, Duration::from_secs(240));
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    let bindir = dir.path().join("prefix/bin");
    let qwen_demo = stdout
        .find("install.sh: running: qwen --rotation-demo")
        .unwrap_or_else(|| panic!("no qwen demo: {}", out.dump()));
    let cli_demo = stdout
        .find(&format!(
            "install.sh: running: {name} --rotation-demo (with {} first on PATH)",
            bindir.display()
        ))
        .unwrap_or_else(|| panic!("no {name} demo: {}", out.dump()));
    assert!(qwen_demo < cli_demo, "{}", out.dump());
    assert!(
        stdout[qwen_demo..cli_demo].contains("and qwen answered without seeing the error"),
        "{}",
        out.dump()
    );
    assert!(
        stdout[cli_demo..].contains(&format!("and {name} answered without seeing the error")),
        "{}",
        out.dump()
    );
    assert_tmp_empty(&dir.path().join("tmp"));
    out
}

/// install.sh (run in `dir`) exited 1 and its last line names `which` demo failed, with the
/// shim still installed; nothing is left in TMPDIR.
pub fn assert_install_names_the_failed_demo(out: &Output, which: &str, dir: &Path) {
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.stderr().trim_end().ends_with(&format!(
            "install.sh: {which} failed (exit 1; its line above says why); the shim is installed in {}",
            dir.join("prefix/bin").display()
        )),
        "{}",
        out.dump()
    );
    assert_tmp_empty(&dir.join("tmp"));
}
