//! install.sh: a dedicated directory first on PATH, idempotent, never over npm's qwen, the
//! build found wherever cargo put it, and a clean uninstall that removes the real qwen only when
//! `--with-qwen` installed it.
//!
//! cargo and npm are stand-ins here (small scripts that do what the real tools do to the file
//! system and report it as they do): a real release build takes minutes and a real npm install
//! needs the registry. `builds_with_the_real_cargo_into_cargo_target_dir` (ignored by default)
//! runs the real cargo.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Output};
use std::sync::mpsc;
use std::time::Duration;

use sandbox::{SHIM, Sandbox, output_within};

const LIMIT: Duration = Duration::from_secs(60);

/// install.sh with `args`, in a clean environment whose PATH is `path`.
fn install_cmd(sb: &Sandbox, path: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", sb.home())
        .env("QWEN_ROTATION_PROFILE", sb.path("profile"));
    c
}

fn install(sb: &Sandbox, args: &[&str]) -> Output {
    let path = format!("{}:/usr/bin:/bin", sb.path("real").display());
    output_within(install_cmd(sb, &path, args), LIMIT)
}

/// Runs `cmd` with stdout and stderr on one pipe, as a terminal shows them: their order counts.
fn interleaved(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    cmd.stdout(writer.try_clone().unwrap()).stderr(writer);
    let mut child = cmd.spawn().unwrap();
    // Our copies of the write end go, so the pipe ends with the script.
    drop(cmd);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send((child.wait().unwrap(), text));
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        sandbox::kill("KILL", pid);
        panic!("install.sh did not finish within {limit:?}")
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn installs_into_its_own_directory_idempotently_and_uninstalls_cleanly() {
    let sb = Sandbox::new(r#"echo "real qwen $*""#);
    let prefix = sb.path("prefix");
    let args = [
        "--binary",
        SHIM,
        "--prefix",
        prefix.to_str().unwrap(),
        "--write-profile",
    ];
    for round in 0..2 {
        let out = install(&sb, &args);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "the real qwen: {}",
                sb.path("real/qwen").display()
            )),
            "{}",
            text(&out)
        );
    }
    let target = prefix.join("bin/qwen");
    assert_eq!(fs::read(&target).unwrap(), fs::read(SHIM).unwrap());
    let profile = fs::read_to_string(sb.path("profile")).unwrap();
    assert_eq!(
        profile.lines().count(),
        1,
        "the PATH line is written once: {profile}"
    );
    assert!(profile.starts_with(&format!(
        "export PATH=\"{}:$PATH\"",
        prefix.join("bin").display()
    )));

    // The profile line puts the shim first, and the shim finds the real qwen behind it.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                ". {}; command -v qwen; qwen hello",
                sb.path("profile").display()
            ),
        ])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", sb.path("real").display()),
        )
        .env("HOME", sb.home())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nreal qwen hello\n", target.display())
    );

    let out = install(&sb, &["--prefix", prefix.to_str().unwrap(), "--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.exists());
    assert_eq!(fs::read_to_string(sb.path("profile")).unwrap(), "");
    assert!(
        sb.path("real/qwen").exists(),
        "the real qwen is never touched"
    );
    assert!(
        text(&out).contains(&format!(
            "kept the real qwen {} (install.sh did not install it)",
            sb.path("real/qwen").display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
fn never_overwrites_a_qwen_that_is_not_the_shim() {
    let sb = Sandbox::new("echo real");
    let prefix = sb.path("prefix");
    fs::create_dir_all(prefix.join("bin")).unwrap();
    sb.write_fake(&prefix.join("bin/qwen"), "echo npm's qwen");
    let out = install(
        &sb,
        &["--binary", SHIM, "--prefix", prefix.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is not the qwen-rotation shim"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::read_to_string(prefix.join("bin/qwen")).unwrap(),
        "#!/bin/sh\necho npm's qwen\n"
    );
    let out = install(&sb, &["--prefix", prefix.to_str().unwrap(), "--uninstall"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(prefix.join("bin/qwen").exists());
}

#[test]
fn refuses_a_shared_bin_directory_and_a_binary_that_is_not_the_shim() {
    let sb = Sandbox::new("echo real");
    let out = install(&sb, &["--binary", SHIM, "--prefix", "/usr/local"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("dedicated --prefix"), "{}", text(&out));
    let out = install(
        &sb,
        &[
            "--binary",
            "/bin/true",
            "--prefix",
            sb.path("p").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not a qwen-rotation shim build"),
        "{}",
        text(&out)
    );
    let out = install(&sb, &["--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("unknown option --bogus"));
}

/// A stand-in for `cargo build`: "builds" `$FAKE_CARGO_BUILDS` into the target directory cargo
/// would use and reports it as cargo does (progress on stderr, a `compiler-artifact` JSON
/// message naming the executable on stdout when JSON messages are asked for).
const FAKE_CARGO: &str = r#"[ "$1" = build ] || exit 101
[ -z "$FAKE_CARGO_FAIL" ] || { echo "error: could not compile qwen-rotation" >&2; exit 101; }
dir=${CARGO_TARGET_DIR:-$PWD/target}/release
mkdir -p "$dir" && cp "$FAKE_CARGO_BUILDS" "$dir/qwen"
case " $* " in *" --quiet "*) ;; *) echo "   Compiling qwen-rotation v0.1.0 ($PWD)" >&2 ;; esac
case " $* " in *" --message-format=json"*)
  printf '{"reason":"compiler-artifact","package_id":"path+file://%s#qwen-rotation@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"qwen","src_path":"%s/src/main.rs"},"filenames":["%s/qwen"],"executable":"%s/qwen","fresh":false}\n' "$PWD" "$PWD" "$dir" "$dir"
  echo '{"reason":"build-finished","success":true}' ;;
esac
case " $* " in *" --quiet "*) ;; *) echo '    Finished `release` profile [optimized] target(s) in 0.01s' >&2 ;; esac"#;

/// Writes the stand-in `name` running `script` into the sandbox directory `dir`; returns `dir`.
fn stand_in(sb: &Sandbox, dir: &str, name: &str, script: &str) -> std::path::PathBuf {
    let dir = sb.path(dir);
    fs::create_dir_all(&dir).unwrap();
    sb.write_fake(&dir.join(name), script);
    dir
}

/// The sandbox's PATH for install.sh with the cargo stand-in first.
fn with_fake_cargo(sb: &Sandbox) -> String {
    format!(
        "{}:{}:/usr/bin:/bin",
        stand_in(sb, "cargo-bin", "cargo", FAKE_CARGO).display(),
        sb.path("real").display()
    )
}

#[test]
fn builds_into_cargo_target_dir_and_says_so_before_the_build() {
    let sb = Sandbox::new(r#"echo "real qwen $*""#);
    let prefix = sb.path("prefix");
    let elsewhere = sb.path("elsewhere/target");
    let mut cmd = install_cmd(
        &sb,
        &with_fake_cargo(&sb),
        &["--prefix", prefix.to_str().unwrap()],
    );
    cmd.env("CARGO_TARGET_DIR", &elsewhere)
        .env("FAKE_CARGO_BUILDS", SHIM);
    let (status, out) = interleaved(cmd, LIMIT);
    assert!(status.success(), "{out}");
    let target = prefix.join("bin/qwen");
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from: {out}"))
    };
    let building = at("install.sh: building the shim with cargo build --release");
    assert!(
        building < at("   Compiling qwen-rotation")
            && at("    Finished `release`") < at(&format!("installed {}", target.display())),
        "the line comes first, then cargo's progress, then the result: {out}"
    );
    assert_eq!(
        fs::read(&target).unwrap(),
        fs::read(elsewhere.join("release/qwen")).unwrap(),
        "the build cargo made under CARGO_TARGET_DIR is installed"
    );
    // The installed shim works: it finds the real qwen behind it.
    let mut run = Command::new(&target);
    run.arg("hello")
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", sb.path("real").display()),
        )
        .env("HOME", sb.home());
    let ran = output_within(run, LIMIT);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "real qwen hello\n");

    // A failed build: one line that says so and what to do instead.
    let mut cmd = install_cmd(
        &sb,
        &with_fake_cargo(&sb),
        &["--prefix", sb.path("other").to_str().unwrap()],
    );
    cmd.env("CARGO_TARGET_DIR", &elsewhere)
        .env("FAKE_CARGO_BUILDS", SHIM)
        .env("FAKE_CARGO_FAIL", "1");
    let (status, out) = interleaved(cmd, LIMIT);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.ends_with(
            "install.sh: cargo build failed (its messages are above); fix that, or pass --binary FILE\n"
        ),
        "{out}"
    );
    assert!(!sb.path("other/bin/qwen").exists());
}

/// The real cargo: a release build into a CARGO_TARGET_DIR that is not the repository's target
/// directory (a link to this test build's own, so an up-to-date release build is reused).
#[test]
#[ignore = "runs a real release build: minutes when the release profile is not up to date"]
fn builds_with_the_real_cargo_into_cargo_target_dir() {
    let sb = Sandbox::new(r#"echo "real qwen $*""#);
    // CARGO_BIN_EXE_qwen is <target dir>/<profile>/qwen.
    let own_target = Path::new(SHIM).parent().unwrap().parent().unwrap();
    std::os::unix::fs::symlink(own_target, sb.path("linked-target")).unwrap();
    let cargo = std::env::var("CARGO").expect("run under cargo test");
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        Path::new(&cargo).parent().unwrap().display(),
        sb.path("real").display()
    );
    let prefix = sb.path("prefix");
    let mut cmd = install_cmd(&sb, &path, &["--prefix", prefix.to_str().unwrap()]);
    cmd.env("CARGO_TARGET_DIR", sb.path("linked-target"));
    for var in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    if std::env::var_os("RUSTUP_HOME").is_none()
        && let Some(home) = std::env::home_dir()
    {
        cmd.env("RUSTUP_HOME", home.join(".rustup"))
            .env("CARGO_HOME", home.join(".cargo"));
    }
    let (status, out) = interleaved(cmd, Duration::from_secs(30 * 60));
    assert!(status.success(), "{out}");
    assert_eq!(
        fs::read(prefix.join("bin/qwen")).unwrap(),
        fs::read(own_target.join("release/qwen")).unwrap()
    );
}

/// A stand-in for npm: `prefix -g` names `$FAKE_NPM_PREFIX`; `install -g [--prefix P] SPEC`
/// lays the package out as npm does (`lib/node_modules/@qwen-code/qwen-code`, `bin/qwen` a link
/// to its `cli.js`); `uninstall` removes both, or fails with `$FAKE_NPM_FAIL`. Every call is
/// logged to `$NPM_LOG`.
const FAKE_NPM: &str = r#"echo "npm $*" >> "$NPM_LOG"
p=$FAKE_NPM_PREFIX; prev=; for a in "$@"; do [ "$prev" = --prefix ] && p=$a; prev=$a; done
pkg="$p/lib/node_modules/@qwen-code/qwen-code"
case "$1" in
  prefix) echo "$FAKE_NPM_PREFIX" ;;
  install) mkdir -p "$pkg" "$p/bin"
    printf '#!/bin/sh\necho "npm qwen $*"\n' > "$pkg/cli.js"; chmod 755 "$pkg/cli.js"
    ln -sf ../lib/node_modules/@qwen-code/qwen-code/cli.js "$p/bin/qwen" ;;
  uninstall) [ -z "$FAKE_NPM_FAIL" ] || exit 1; rm -rf "$pkg" "$p/bin/qwen" ;;
  *) exit 1 ;;
esac"#;

/// PATH for the --with-qwen tests: the npm stand-in, npm's global bin directory, and only the
/// tools install.sh uses (no qwen this machine may have in /usr/bin).
fn npm_path(sb: &Sandbox) -> String {
    let npm = stand_in(sb, "npm-bin", "npm", FAKE_NPM);
    let tools = sb.path("install-tools");
    fs::create_dir_all(&tools).unwrap();
    for tool in [
        "sh", "cat", "grep", "sed", "cp", "mv", "chmod", "mkdir", "rm", "rmdir", "tail", "id",
        "dirname", "ln",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
        let _ = std::os::unix::fs::symlink(found, tools.join(tool));
    }
    format!(
        "{}:{}:{}",
        npm.display(),
        sb.path("npm-global/bin").display(),
        tools.display()
    )
}

#[test]
fn uninstall_removes_the_real_qwen_that_with_qwen_installed_and_only_that() {
    let sb = Sandbox::new("echo unused");
    let prefix = sb.path("prefix");
    let npm_prefix = sb.path("npm-global");
    fs::create_dir_all(&npm_prefix).unwrap();
    let path = npm_path(&sb);
    let run = |args: &[&str], fail: bool| {
        let mut cmd = install_cmd(&sb, &path, args);
        cmd.env("FAKE_NPM_PREFIX", &npm_prefix)
            .env("NPM_LOG", sb.path("npm.log"));
        if fail {
            cmd.env("FAKE_NPM_FAIL", "1");
        }
        output_within(cmd, LIMIT)
    };
    let real = npm_prefix.join("bin/qwen");
    // Twice: the second run finds the qwen the first installed and installs nothing.
    for round in 0..2 {
        let out = run(
            &[
                "--binary",
                SHIM,
                "--prefix",
                prefix.to_str().unwrap(),
                "--with-qwen=0.12.0",
            ],
            false,
        );
        assert!(out.status.success(), "round {round}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("the real qwen: {}", real.display())),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        sb.read("npm.log").matches("npm install").count(),
        1,
        "{}",
        sb.read("npm.log")
    );
    assert_eq!(
        fs::read_to_string(prefix.join("installed-qwen")).unwrap(),
        format!(
            "# install.sh --with-qwen installed the real qwen here; ./install.sh --uninstall removes it\nnpm_prefix={}\n",
            npm_prefix.display()
        )
    );

    // npm cannot remove it: the shim goes, the exact command is given, and the record stays
    // so that the next --uninstall tries again.
    let uninstall = ["--prefix", prefix.to_str().unwrap(), "--uninstall"];
    let out = run(&uninstall, true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let command = format!(
        "npm uninstall -g --prefix {} @qwen-code/qwen-code",
        npm_prefix.display()
    );
    assert!(
        text(&out).contains(&format!(
            "could not remove the real qwen that --with-qwen installed; run: {command}, then ./install.sh --uninstall again"
        )),
        "{}",
        text(&out)
    );
    assert!(!prefix.join("bin/qwen").exists());
    assert!(real.exists() && prefix.join("installed-qwen").exists());

    let out = run(&uninstall, false);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "removed the real qwen that --with-qwen installed: {command}"
        )),
        "{}",
        text(&out)
    );
    assert!(!real.exists());
    assert!(!prefix.exists(), "nothing of ours is left");
}

#[test]
fn uninstall_removes_a_real_qwen_installed_beside_the_shim() {
    // What --with-qwen leaves when npm's global prefix is not writable (a plain user): the real
    // qwen in PREFIX/npm, recorded as `beside-the-shim`.
    let sb = Sandbox::new("echo unused");
    let prefix = sb.path("prefix");
    let out = install(
        &sb,
        &["--binary", SHIM, "--prefix", prefix.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let package = prefix.join("npm/lib/node_modules/@qwen-code/qwen-code");
    fs::create_dir_all(&package).unwrap();
    fs::create_dir_all(prefix.join("npm/bin")).unwrap();
    sb.write_fake(&package.join("cli.js"), "echo npm qwen");
    std::os::unix::fs::symlink(package.join("cli.js"), prefix.join("npm/bin/qwen")).unwrap();
    fs::write(
        prefix.join("installed-qwen"),
        "npm_prefix=beside-the-shim\n",
    )
    .unwrap();

    let out = install(&sb, &["--prefix", prefix.to_str().unwrap(), "--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "removed the real qwen that --with-qwen installed in {}",
            prefix.join("npm").display()
        )),
        "{}",
        text(&out)
    );
    assert!(!prefix.exists(), "nothing of ours is left");
    assert!(
        sb.path("real/qwen").exists(),
        "a qwen we did not install stays"
    );
}
