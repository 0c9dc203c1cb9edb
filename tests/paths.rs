//! Path tricks through the built binary: symlinked slots and live file, a qwen home that belongs
//! to another user, a full disk in the middle of a rotation, and the modes of everything the shim
//! creates under a wide umask. Nothing may be lost, nothing written through a link, and qwen
//! still runs.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sandbox::{Sandbox, as_nobody, creds, output_within, root};

/// Counts its runs; the runs listed in $FAIL report a spent quota; others answer.
const FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
case " $FAIL " in *" $n "*) printf '%s\n' "[API Error: 429 Free allocated quota exceeded.]" >&2; exit 1 ;; esac
echo "answer $n""#;

const WARNING: &str = "qwen-rotation: warning:";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn warnings(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with(WARNING))
        .map(str::to_string)
        .collect()
}

fn slot(sb: &Sandbox, n: usize) -> PathBuf {
    sb.qwen_home()
        .join(format!("accounts/oauth_creds_{n}.json"))
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Everything about a file a write through a link would change.
fn fingerprint(p: &Path) -> (Vec<u8>, u32, i64, i64) {
    let m = fs::metadata(p).unwrap();
    (
        fs::read(p).unwrap(),
        m.mode() & 0o7777,
        m.mtime(),
        m.mtime_nsec(),
    )
}

/// Lets `nobody` reach the sandbox (the tempdir is 0700 root).
fn open_sandbox_to_others(sb: &Sandbox) {
    for rel in ["", "bin", "real", "tools", "work", "home"] {
        fs::set_permissions(sb.path(rel), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(sb.path("work"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
}

fn chown_tree(p: &Path, uid: u32) {
    let st = Command::new("/usr/bin/chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A file outside the qwen home (0644, to see a chmod through a link), what a link points at.
fn outside(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    fs::create_dir_all(sb.path("elsewhere")).unwrap();
    let path = sb.path("elsewhere").join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// Symlinks
// ---------------------------------------------------------------------------------------------

#[test]
fn a_symlinked_slot_is_invalid_skipped_and_its_target_never_written() {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(3, "tok_three");
    // Slot 2 is a link to a file outside the home (a wider mode, to see a chmod through it).
    let target = outside(&sb, "creds.json", &creds("tok_two"));
    std::os::unix::fs::symlink(&target, slot(&sb, 2)).unwrap();
    let before = fingerprint(&target);

    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "1");
    let out = output_within(cmd, Duration::from_secs(60));
    println!("run: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "answer 2\n");
    assert!(
        text(&out.stderr).contains("switched to account 3"),
        "slot 2 is skipped: {}",
        text(&out.stderr)
    );
    assert!(sb.live_creds().unwrap().contains("tok_three"));

    // The person is told which file is wrong and how to fix it.
    let status = sb.run(["--rotation-status"]);
    let shown = text(&status.stdout) + &text(&status.stderr);
    println!("status:\n{shown}");
    assert!(shown.contains("invalid"), "{shown}");
    let doctor = sb.run(["--rotation-doctor"]);
    let said = text(&doctor.stdout);
    println!("doctor:\n{said}");
    assert!(
        said.contains("oauth_creds_2.json") && said.contains("symlink"),
        "{said}"
    );
    assert!(said.contains("cp --remove-destination"), "the fix: {said}");

    // Switching to it is refused in one line; nothing is written through the link.
    let sw = sb.run(["--rotation-switch", "2"]);
    println!("switch 2: {:?} {}", sw.status, text(&sw.stderr));
    assert_ne!(sw.status.code(), Some(0));
    assert_eq!(text(&sw.stderr).lines().count(), 1, "{}", text(&sw.stderr));
    assert!(sb.live_creds().unwrap().contains("tok_three"));

    assert!(fs::symlink_metadata(slot(&sb, 2)).unwrap().is_symlink());
    assert_eq!(
        fingerprint(&target),
        before,
        "the link's target is untouched"
    );
    assert!(
        fs::read_to_string(slot(&sb, 1))
            .unwrap()
            .contains("tok_one")
    );
    assert!(
        fs::read_to_string(slot(&sb, 3))
            .unwrap()
            .contains("tok_three")
    );
}

#[test]
fn a_symlinked_live_file_becomes_a_regular_file_and_its_target_is_never_written() {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    // The live file links to a copy of slot 1 outside the home (an old tool's layout).
    let target = outside(&sb, "live.json", &creds("tok_one"));
    let live = sb.qwen_home().join("oauth_creds.json");
    std::os::unix::fs::symlink(&target, &live).unwrap();
    let before = fingerprint(&target);

    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "1");
    let out = output_within(cmd, Duration::from_secs(60));
    println!("run: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "answer 2\n");

    let meta = fs::symlink_metadata(&live).unwrap();
    assert!(meta.is_file(), "migrated to a regular file");
    assert_eq!(mode(&live), 0o600);
    assert_eq!(sb.live_creds().unwrap(), creds("tok_two"));
    assert_eq!(fingerprint(&target), before, "the old target is untouched");
    assert_eq!(fs::read_to_string(slot(&sb, 1)).unwrap(), creds("tok_one"));
    assert_eq!(fs::read_to_string(slot(&sb, 2)).unwrap(), creds("tok_two"));
    let log = fs::read_to_string(sb.qwen_home().join("rotation.log")).unwrap();
    assert!(log.contains("symlink"), "the migration is logged: {log}");
}

#[test]
fn a_symlinked_rotation_log_is_never_appended_through() {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let target = outside(&sb, "precious.txt", "not a log\n");
    std::os::unix::fs::symlink(&target, sb.qwen_home().join("rotation.log")).unwrap();
    let before = fingerprint(&target);

    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "1");
    let out = output_within(cmd, Duration::from_secs(60));
    println!("run: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "answer 2\n");
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rotation.log") && w[0].contains("symbolic link"),
        "{w:?}"
    );
    assert_eq!(
        fingerprint(&target),
        before,
        "the link's target is untouched"
    );
    // The rotation itself happened.
    assert!(sb.live_creds().unwrap().contains("tok_two"));
}

// ---------------------------------------------------------------------------------------------
// A home that belongs to another user
// ---------------------------------------------------------------------------------------------

#[test]
fn a_home_owned_by_another_user_keeps_its_owner_and_doctor_says_so() {
    if !root("a_home_owned_by_another_user_keeps_its_owner_and_doctor_says_so") {
        return;
    }
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    chown_tree(&sb.qwen_home(), 65534);

    // root runs qwen in nobody's home (a container with a mounted home, say).
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "1");
    let out = output_within(cmd, Duration::from_secs(60));
    println!("run as root: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "answer 2\n");
    assert!(sb.live_creds().unwrap().contains("tok_two"));

    // Every file written there still belongs to nobody: the owner's own qwen can read it.
    let mut checked = 0;
    for entry in walk(&sb.qwen_home()) {
        let m = fs::symlink_metadata(&entry).unwrap();
        assert_eq!(m.uid(), 65534, "{} changed owner", entry.display());
        checked += 1;
    }
    println!("entries still owned by nobody: {checked}");

    // doctor (as root) names the ownership and the fix.
    let doctor = sb.run(["--rotation-doctor"]);
    let said = text(&doctor.stdout);
    println!("doctor as root:\n{said}");
    // Files that keep the home's owner are as they should be: doctor says whose home it is and
    // proposes no chown (one to root would lock the owner out).
    assert!(
        said.contains(
            "belongs to user 65534; running as root, files written there keep that owner"
        ),
        "{said}"
    );
    assert!(!said.contains("chown"), "{said}");
    // A file of root's in that home is the problem, and the fix gives it back to the owner.
    let log = sb.qwen_home().join("rotation.log");
    let lines = fs::read(&log).unwrap();
    fs::remove_file(&log).unwrap();
    fs::write(&log, lines).unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
    let said = text(&sb.run(["--rotation-doctor"]).stdout);
    assert!(
        said.contains("rotation.log belongs to user 0, the home to user 65534"),
        "{said}"
    );
    assert!(said.contains("chown 65534"), "{said}");
}

#[test]
fn links_planted_in_a_foreign_home_never_reach_a_file_elsewhere() {
    if !root("links_planted_in_a_foreign_home_never_reach_a_file_elsewhere") {
        return;
    }
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    chown_tree(&sb.qwen_home(), 65534);
    // root's files outside the home, and the home's owner's links to them.
    let victim = outside(&sb, "victim", "root's file\n");
    let missing = sb.path("elsewhere/not-there");
    let home = sb.qwen_home();
    std::os::unix::fs::symlink(&missing, home.join("rotation.lock")).unwrap();
    fs::hard_link(&victim, home.join("rotation.log")).unwrap();
    let before = fingerprint(&victim);
    let owner = |p: &Path| fs::metadata(p).unwrap().uid();

    // The lock is a link: no rotation this run, qwen runs, one warning.
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "");
    let out = output_within(cmd, Duration::from_secs(60));
    println!("lock is a symlink: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "answer 1\n");
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rotation.lock") && w[0].contains("symbolic link"),
        "{w:?}"
    );
    assert!(!missing.exists(), "the link's target was created");

    // With the lock fixed, a rotation runs; the hard-linked log is refused, never appended to.
    fs::remove_file(home.join("rotation.lock")).unwrap();
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", "2");
    let out = output_within(cmd, Duration::from_secs(60));
    println!(
        "log is a hard link: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "answer 3\n");
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rotation.log") && w[0].contains("hard links"),
        "{w:?}"
    );

    // doctor --fix names the hard link and repairs nothing through it.
    let doctor = sb.run(["--rotation-doctor", "--fix"]);
    let said = text(&doctor.stdout);
    println!("doctor --fix:\n{said}");
    assert!(said.contains("rotation.log has 2 hard links"), "{said}");

    assert_eq!(
        fingerprint(&victim),
        before,
        "the file elsewhere is untouched"
    );
    assert_eq!(
        owner(&victim),
        0,
        "the file elsewhere still belongs to root"
    );
    assert_eq!(
        owner(&home.join("rotation.lock")),
        65534,
        "the new lock is the home owner's"
    );
}

#[test]
fn nobody_running_against_a_home_it_cannot_read_still_gets_qwen_and_one_warning() {
    if !root("nobody_running_against_a_home_it_cannot_read_still_gets_qwen_and_one_warning") {
        return;
    }
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    open_sandbox_to_others(&sb);
    // The home stays root's and 0700.
    let out = output_within(as_nobody(&sb.cmd(["-p", "hi"])), Duration::from_secs(60));
    println!("run as nobody: {:?}\n{}", out.status, text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "answer 1\n");
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("accounts") && w[0].contains("ermission denied"),
        "{w:?}"
    );

    let doctor = output_within(
        as_nobody(&sb.cmd(["--rotation-doctor"])),
        Duration::from_secs(60),
    );
    let said = text(&doctor.stdout) + &text(&doctor.stderr);
    println!("doctor as nobody: {:?}\n{said}", doctor.status);
    assert!(said.contains("ermission denied"), "{said}");
    assert!(
        fs::read_to_string(slot(&sb, 1)).unwrap() == creds("tok_one")
            && fs::read_to_string(slot(&sb, 2)).unwrap() == creds("tok_two")
    );
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// Runs `script` in a private mount namespace (so a tmpfs mounted there vanishes with it).
/// `None` when this machine does not allow it.
fn in_mount_namespace(sb: &Sandbox, script: &str) -> Option<Output> {
    let probe = Command::new("/usr/bin/unshare")
        .args(["-m", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let shim = sb.cmd(std::iter::empty::<OsString>());
    let mut c = Command::new("/usr/bin/unshare");
    c.args(["-m", "sh", "-c", script]).env_clear();
    for (k, v) in shim.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.env("QWEN", sb.path("bin/qwen"))
        .current_dir(sb.path("work"));
    Some(output_within(c, Duration::from_secs(120)))
}

#[test]
fn a_full_disk_in_the_middle_of_a_rotation_loses_nothing_and_qwen_still_runs() {
    let sb = Sandbox::new(FAKE);
    fs::create_dir_all(sb.path("seed")).unwrap();
    for (n, tok) in [(1, "tok_one"), (2, "tok_two")] {
        let p = sb.path(&format!("seed/oauth_creds_{n}.json"));
        fs::write(&p, creds(tok)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::create_dir_all(sb.qwen_home()).unwrap();
    // Each phase leaves its output and a copy of the home (without the filler) in the sandbox.
    let script = r#"set -e
/bin/mount -t tmpfs -o size=96k,mode=0700 tmpfs "$QWEN_HOME"
mkdir -m 700 "$QWEN_HOME/accounts"
cp -p "$SANDBOX"/seed/*.json "$QWEN_HOME/accounts/"
"$QWEN" -p warmup > "$SANDBOX/warm.out" 2> "$SANDBOX/warm.err"
dd if=/dev/zero of="$QWEN_HOME/spare" bs=4096 count=1 2>/dev/null
dd if=/dev/zero of="$QWEN_HOME/filler" bs=4096 2>/dev/null || true
set +e
phase() {
    FAIL="$2" "$QWEN" -p "$1" > "$SANDBOX/$1.out" 2> "$SANDBOX/$1.err"; echo $? > "$SANDBOX/$1.code"
    mkdir "$SANDBOX/$1.home"; cp -a "$QWEN_HOME/." "$SANDBOX/$1.home/"; rm -f "$SANDBOX/$1.home/filler" "$SANDBOX/$1.home/spare"
    /bin/df -k "$QWEN_HOME" | tail -1 > "$SANDBOX/$1.df"
}
phase full 2
rm "$QWEN_HOME/spare"
phase onepage 3
rm "$QWEN_HOME/filler"
phase freed none
echo done
"#;
    let Some(out) = in_mount_namespace(&sb, script) else {
        eprintln!("SKIPPED: unshare -m is not permitted here; the full-disk test did not run");
        return;
    };
    assert!(
        out.status.success() && text(&out.stdout).contains("done"),
        "{out:?}"
    );
    assert_eq!(sb.read("warm.out"), "answer 1\n", "{}", sb.read("warm.err"));

    for (phase, run) in [("full", 2), ("onepage", 3), ("freed", 4)] {
        let err = sb.read(&format!("{phase}.err"));
        let code = sb.read(&format!("{phase}.code"));
        let stdout = sb.read(&format!("{phase}.out"));
        let df = sb.read(&format!("{phase}.df"));
        println!(
            "{phase}: exit {} stdout {stdout:?} df {df}stderr:\n{err}",
            code.trim()
        );
        let home = sb.path(&format!("{phase}.home"));
        // Nothing lost: both slots byte for byte, a complete live file of one account, a
        // state.yaml that loads, no temp file left behind.
        for (n, tok) in [(1, "tok_one"), (2, "tok_two")] {
            assert_eq!(
                fs::read_to_string(home.join(format!("accounts/oauth_creds_{n}.json"))).unwrap(),
                creds(tok),
                "{phase}: slot {n}"
            );
        }
        let live = fs::read_to_string(home.join("oauth_creds.json")).unwrap();
        assert!(
            live == creds("tok_one") || live == creds("tok_two"),
            "{phase}: live file {live:?}"
        );
        let state = fs::read_to_string(home.join("state.yaml")).unwrap();
        qwen_rotation::vault::state::State::parse(&state)
            .unwrap_or_else(|e| panic!("{phase}: state.yaml: {e}\n{state}"));
        let leftovers: Vec<_> = walk(&home)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".qwen-rotation-"))
            .collect();
        assert!(leftovers.is_empty(), "{phase}: {leftovers:?}");
        // qwen ran: its own answer or its own quota report, and its status.
        let w: Vec<&str> = err.lines().filter(|l| l.starts_with(WARNING)).collect();
        assert!(w.len() <= 1, "{phase}: at most one warning: {w:?}");
        match phase {
            "full" => {
                // The rotation could not write: qwen's own result, and one warning naming it.
                assert_eq!(code.trim(), "1", "{phase}");
                assert!(err.contains("Free allocated quota exceeded"), "{err}");
                assert_eq!(w.len(), 1, "{phase}: {err}");
                assert!(
                    w[0].contains("No space left on device")
                        && w[0].contains("free some space")
                        && !w[0].contains(".qwen-rotation-"),
                    "{w:?}"
                );
                assert_eq!(live, creds("tok_one"), "no switch without the state");
            }
            "freed" => {
                assert_eq!(code.trim(), "0", "{phase}: {err}");
                assert_eq!(stdout, format!("answer {run}\n"), "{phase}");
                assert!(w.is_empty(), "{phase}: {w:?}");
                // Account 1's spent quota (recorded by the run with one page free) still counts:
                // with space back, the run went to account 2.
                assert_eq!(live, creds("tok_two"), "{phase}");
            }
            _ => {
                // One page free: one of the two writes may land, the other not. Either way
                // qwen's own result comes through.
                assert_eq!(code.trim(), "1", "{phase}");
                assert!(err.contains("Free allocated quota exceeded"), "{err}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// umask
// ---------------------------------------------------------------------------------------------

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// `cmd` with the given umask (set in the child just before exec).
fn with_umask(mut cmd: Command, mask: u32) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
            Ok(())
        });
    }
    cmd
}

/// Counts runs; run 1 refreshes the live login (a new refresh token, as qwen does) and then
/// reports a spent quota, run 2 reports a spent quota, the rest answer.
const REFRESHING_FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
if [ $n = 1 ]; then
  (umask 077; printf '%s' '{"access_token":"acc-new","refresh_token":"ref-new","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}' > "$QWEN_HOME/oauth_creds.json")
fi
case $n in 1|2) printf '%s\n' "[API Error: 429 Free allocated quota exceeded.]" >&2; exit 1 ;; esac
echo "answer $n""#;

fn every_file_0600_every_dir_0700(mask: u32) {
    let sb = Sandbox::new(REFRESHING_FAKE);
    let home = sb.qwen_home();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = with_umask(sb.cmd(args), mask);
        let out = match stdin {
            None => output_within(cmd, Duration::from_secs(60)),
            Some(input) => {
                use std::io::Write;
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                sandbox::child::collect_within(child, Duration::from_secs(60), "the shim")
            }
        };
        println!(
            "umask {mask:03o} {args:?}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        out
    };
    // The home does not exist yet; the person logged in (qwen wrote the live file 0600).
    let login = |tok: &str| {
        fs::create_dir_all(&home).unwrap();
        let live = home.join("oauth_creds.json");
        let _ = fs::remove_file(&live);
        fs::write(&live, creds(tok)).unwrap();
        fs::set_permissions(&live, fs::Permissions::from_mode(0o600)).unwrap();
    };
    fs::remove_dir_all(&home).ok();
    assert!(
        run(
            &["--rotation-add", "--api-key", "key"],
            Some("sk-0123456789abcdef\n")
        )
        .status
        .success()
    );
    login("tok_one");
    assert!(run(&["--rotation-add", "one"], None).status.success());
    login("tok_two");
    assert!(run(&["--rotation-add", "two"], None).status.success());
    // Slot order: 1 = API key, 2 = one, 3 = two. Start on "one": refresh + quota, then quota on
    // "two" (a backup of the refreshed slot is kept), then the API key answers (its settings
    // override is written).
    assert!(run(&["--rotation-switch", "one"], None).status.success());
    let out = run(&["-p", "hi"], None);
    assert_eq!(text(&out.stdout), "answer 3\n", "{}", text(&out.stderr));
    // A corrupt state.yaml is kept as a .corrupt copy.
    fs::write(home.join("state.yaml"), "{{{{ not yaml").unwrap();
    assert!(run(&["--rotation-reset", "all"], None).status.success());

    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    for p in walk(&home) {
        let m = fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        let got = m.mode() & 0o7777;
        let rel = p.strip_prefix(&home).unwrap().display().to_string();
        if got != want {
            wrong.push(format!("{rel} {got:04o}"));
        }
        seen.push(format!("{rel} {got:04o}"));
    }
    let home_mode = mode(&home);
    println!(
        "umask {mask:03o}: home {home_mode:04o}, {} entries: {seen:?}",
        seen.len()
    );
    assert_eq!(home_mode, 0o700, "the home the shim created");
    for must in [
        "accounts/api_key_1.json",
        "accounts/oauth_creds_2.json",
        "accounts/oauth_creds_3.json",
        "accounts/backup",
        "oauth_creds.json",
        "state.yaml",
        "state.yaml.corrupt",
        "rotation.log",
        "rotation.lock",
        "rotation-settings",
    ] {
        assert!(
            seen.iter().any(|s| s.starts_with(must)),
            "{must} was not created: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|s| s.starts_with("accounts/backup/")),
        "a backup was written: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("rotation-settings/")),
        "a settings file was written: {seen:?}"
    );
    assert!(wrong.is_empty(), "umask {mask:03o}: wrong modes {wrong:?}");
}

#[test]
fn under_umask_000_every_file_is_0600_and_every_directory_0700() {
    every_file_0600_every_dir_0700(0o000);
}

#[test]
fn under_umask_022_every_file_is_0600_and_every_directory_0700() {
    every_file_0600_every_dir_0700(0o022);
}
