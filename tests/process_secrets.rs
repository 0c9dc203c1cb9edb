//! What other processes can learn from the shim's own process: the pool's real keys are in no
//! `/proc/<pid>/environ` of the run while it is live (the shim's included, read as root), a
//! process of the same unprivileged user cannot read the shim's environment or memory at all,
//! and a crash of qwen mirrored by the shim leaves no core dump of the shim's memory.

#[path = "support/mock.rs"]
mod mock;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/real_qwen.rs"]
mod real_qwen;
#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mock::Mock;
use sandbox::child::collect_within;
use sandbox::{Sandbox, await_file, output_within};

/// A key that looks real; its tail is what no environment may show.
fn key(n: usize, behaviour: &str) -> String {
    format!("sk-proc{n}-{behaviour}-{TAIL}")
}
const TAIL: &str = "Z1x2C3v4B5n6M7a8S9d0";

const DEADLINE: Duration = Duration::from_secs(60);

/// Tells the test the run is live, then waits for `go` (at most about a minute): the run stays
/// up while the test looks. Before that it reads its parent's (the shim's) environment as any
/// tool could.
const FAKE: &str = r#"tr '\0' '\n' < /proc/$PPID/environ > "$SANDBOX/parent.environ" 2>/dev/null
echo $? > "$SANDBOX/parent.rc"
cat /proc/$PPID/mem > /dev/null 2> "$SANDBOX/parent.mem"
echo ready > "$SANDBOX/ready"
i=0; while [ ! -e "$SANDBOX/go" ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done
echo answered"#;

/// Lets the fake finish when the test ends, a failing one included.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, "");
    }
}

fn pool_sandbox(mock: &Mock) -> (Sandbox, Vec<String>, Command) {
    let sb = Sandbox::new(FAKE);
    fs::create_dir_all(sb.qwen_home()).unwrap();
    fs::write(
        sb.qwen_home().join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"openai"}}}"#,
    )
    .unwrap();
    let keys = vec![key(1, "ok"), key(2, "ok"), key(3, "ok")];
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("QWEN_ROTATION_KEYS", format!("{},{}", keys[0], keys[1]))
        .env("QWEN_ROTATION_KEY_3", &keys[2])
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    (sb, keys, cmd)
}

/// Every live descendant of `root`, from the parent pids in /proc/*/stat.
fn descendants(root: u32) -> Vec<u32> {
    let parent_of: Vec<(u32, u32)> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

/// Reads the environment of `pid` and of every descendant, and fails on any of `keys` (or the
/// keys' common tail). Returns how many environments were read.
fn assert_no_key_in_any_environ(shim: u32, keys: &[String]) -> usize {
    let mut read = 0;
    for pid in std::iter::once(shim).chain(descendants(shim)) {
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue; // gone meanwhile
        };
        let text = String::from_utf8_lossy(&env);
        println!(
            "pid {pid}: {} bytes of environ, {} entries",
            env.len(),
            text.split('\0').filter(|e| !e.is_empty()).count()
        );
        for k in keys {
            assert!(
                !text.contains(k.as_str()),
                "a pool key in /proc/{pid}/environ"
            );
        }
        assert!(!text.contains(TAIL), "a key's tail in /proc/{pid}/environ");
        assert!(
            !text.contains("QWEN_ROTATION_KEY"),
            "a key variable in /proc/{pid}/environ"
        );
        read += 1;
    }
    read
}

#[test]
fn pool_keys_are_in_no_environ_of_the_run_while_it_is_live() {
    let mock = Mock::start();
    let (sb, keys, mut cmd) = pool_sandbox(&mock);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let release = Release(sb.path("go"));
    await_file(&sb.path("ready"), DEADLINE);
    let shim = child.id();
    let read = assert_no_key_in_any_environ(shim, &keys);
    // Readable (root, or the same user reading itself in a test without root): the block is
    // there and holds the rest of the environment, only the key entries are gone.
    let own = fs::read(format!("/proc/{shim}/environ"));
    if let Ok(own) = &own {
        assert!(
            String::from_utf8_lossy(own).contains("OPENAI_MODEL=mock-model"),
            "the shim's environment block still holds the other variables"
        );
    }
    println!("{read} environments of the live run read (the shim and its descendants)");
    assert!(
        read >= 2 || own.is_err(),
        "the shim and qwen were both seen"
    );
    // What a tool sees reading its parent's environment, as root or not.
    let from_child = sb.read("parent.environ");
    println!(
        "the child read its parent's environ: status {}, {} bytes",
        sb.read("parent.rc").trim(),
        from_child.len()
    );
    for k in &keys {
        assert!(!from_child.contains(k.as_str()), "a key read by the child");
    }
    drop(release);
    let out = collect_within(child, DEADLINE, "the shim");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answered\n");
}

#[test]
fn another_process_of_the_same_user_cannot_read_the_shims_environment_or_memory() {
    let mock = Mock::start();
    let (sb, keys, mut cmd) = pool_sandbox(&mock);
    // Without root this test already runs as an ordinary user; as root, the run drops to nobody
    // (root may read any process, non-dumpable or not).
    sb.run_as_nobody(&mut cmd, &["work"]);
    fs::write(sb.path("go"), "").unwrap();
    let out = output_within(cmd, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let rc = sb.read("parent.rc");
    let mem = sb.read("parent.mem");
    println!(
        "as an ordinary user, the child read its parent's environ: status {}; its mem: {}",
        rc.trim(),
        mem.trim()
    );
    assert_ne!(rc.trim(), "0", "the shim's environ was readable");
    assert!(sb.read("parent.environ").is_empty());
    assert!(mem.contains("Permission denied"), "{mem}");
    for k in &keys {
        assert!(!sb.read("parent.environ").contains(k.as_str()));
    }
}

#[test]
fn real_qwen_0_24_run_shows_no_pool_key_in_any_environ() {
    let mock = Mock::start();
    let Some(mut sb) = real_qwen::Sandbox::new(real_qwen::Version::V0_24) else {
        return;
    };
    sb.write_settings(Some("openai"), serde_json::json!({}));
    // A slow answer keeps the run live while the test looks at every process of it.
    mock.set_slow_delay(Duration::from_secs(10));
    let keys = vec![key(1, "slow"), key(2, "ok")];
    sb.env("QWEN_ROTATION_KEYS", keys.join("\n"))
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let child = sb
        .command("qwen", &["-p", "hello"], false, false)
        .spawn()
        .unwrap();
    let shim = child.id();
    let asked = mock.wait_for(1, DEADLINE, |r| r.token == keys[0]);
    let read = if asked {
        assert_no_key_in_any_environ(shim, &keys)
    } else {
        0
    };
    let out = collect_within(child, DEADLINE, "the shim");
    // The run's own group: node's child may outlive the shim by a moment.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(asked, "qwen's request never reached the provider: {out:?}");
    println!("{read} environments read while real qwen 0.24.4 waited for its answer");
    assert!(read >= 2, "the shim and node were both read");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("REPLY-FROM-{}", keys[0])),
        "{out:?}"
    );
}

/// RLIMIT_CORE raised to its hard limit in the child (the caller's shell may have `ulimit -c 0`).
fn allow_core_dumps(cmd: &mut Command) {
    // SAFETY: getrlimit/setrlimit are async-signal-safe and touch only the child's limits.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = nix::libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            nix::libc::getrlimit(nix::libc::RLIMIT_CORE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &lim);
            Ok(())
        });
    }
}

fn cores_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("core"))
        .collect()
}

#[test]
fn a_crash_of_qwen_is_mirrored_without_a_core_dump_of_the_shim() {
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    // The control: a plain process in the same conditions. Where it dumps core into its working
    // directory, a dump of the shim would show up the same way.
    let control_dir = tempfile::tempdir().unwrap();
    let mut control = Command::new("/bin/sh");
    control
        .args(["-c", "kill -ABRT $$"])
        .current_dir(control_dir.path());
    allow_core_dumps(&mut control);
    let control = control.status().unwrap();
    let visible = control.core_dumped() && !cores_in(control_dir.path()).is_empty();
    println!(
        "core_pattern {:?}: a plain process dumps core into its directory: {visible}",
        pattern.trim()
    );

    // qwen aborts (its own dump switched off, so any core file is the shim's).
    let sb = Sandbox::new("ulimit -c 0\necho about to abort\nkill -ABRT $$");
    sb.add_oauth_slot(1, "tok_one");
    let mut cmd = sb.cmd(["-p", "hi"]);
    allow_core_dumps(&mut cmd);
    let out = output_within(cmd, DEADLINE);
    println!(
        "the shim ended by signal {:?}, core dumped: {}",
        out.status.signal(),
        out.status.core_dumped()
    );
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGABRT),
        "the caller sees qwen's death by SIGABRT: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "about to abort\n");
    assert!(!out.status.core_dumped(), "the shim dumped core");
    assert_eq!(cores_in(&sb.path("work")), Vec::<String>::new());
}
