//! Finding the real qwen: never the shim itself, whatever way the shim is installed or run.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sandbox::{SHIM, Sandbox, install_executable};

const REAL: &str = r#"echo "real qwen $*""#;

fn run_with_path(sb: &Sandbox, program: &std::path::Path, path: &str) -> std::process::Output {
    Command::new(program)
        .arg("hi")
        .env_clear()
        .env("PATH", path)
        .env("HOME", sb.home())
        .output()
        .unwrap()
}

#[test]
fn skips_itself_via_symlink() {
    let sb = Sandbox::new(REAL);
    let out = sb.run(["hi"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real qwen hi\n");
}

#[test]
fn two_copies_of_the_shim_on_path_reach_the_real_one() {
    let sb = Sandbox::new(REAL);
    fs::create_dir_all(sb.path("copy")).unwrap();
    install_executable(SHIM, &sb.path("copy/qwen"));
    let path = format!(
        "{}:{}:{}",
        sb.path("bin").display(),
        sb.path("copy").display(),
        sb.path("real").display()
    );
    let out = run_with_path(&sb, &sb.path("bin/qwen"), &path);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "real qwen hi\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And starting from the copy, the symlinked one is skipped too.
    let out = run_with_path(&sb, &sb.path("copy/qwen"), &path);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real qwen hi\n");
}

#[test]
fn a_hard_linked_shim_is_skipped() {
    let sb = Sandbox::new(REAL);
    fs::create_dir_all(sb.path("hard")).unwrap();
    // A hard link needs the same file system: link a copy that lives in the sandbox.
    install_executable(SHIM, &sb.path("shim-copy"));
    fs::hard_link(sb.path("shim-copy"), sb.path("hard/qwen")).unwrap();
    fs::create_dir_all(sb.path("other")).unwrap();
    fs::hard_link(sb.path("shim-copy"), sb.path("other/qwen")).unwrap();
    let path = format!(
        "{}:{}:{}",
        sb.path("hard").display(),
        sb.path("other").display(),
        sb.path("real").display()
    );
    let out = run_with_path(&sb, &sb.path("hard/qwen"), &path);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "real qwen hi\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_shim_run_by_absolute_path_from_outside_path_finds_the_real_one() {
    let sb = Sandbox::new(REAL);
    fs::create_dir_all(sb.path("elsewhere")).unwrap();
    install_executable(SHIM, &sb.path("elsewhere/qwen"));
    let path = format!("{}:{}", sb.path("bin").display(), sb.path("real").display());
    let out = run_with_path(&sb, &sb.path("elsewhere/qwen"), &path);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real qwen hi\n");
}

#[test]
fn a_qwen_started_from_inside_a_qwen_run_reaches_the_real_one() {
    // The real qwen runs a tool that calls `qwen` again (by PATH): it must not loop.
    let sb = Sandbox::new(
        r#"if [ -z "$NESTED" ]; then NESTED=1 qwen inner; else echo "real qwen $*"; fi"#,
    );
    for with_accounts in [false, true] {
        if with_accounts {
            sb.add_oauth_slot(1, "tok_one");
        }
        let out = sb.run(["outer"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "real qwen inner\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn override_names_the_real_qwen() {
    let sb = Sandbox::new("echo wrong");
    sb.write_fake(&sb.path("chosen"), REAL);
    let out = sb
        .cmd(["hi"])
        .env("QWEN_ROTATION_REAL", sb.path("chosen"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real qwen hi\n");
    let out = sb
        .cmd(["hi"])
        .env("QWEN_ROTATION_REAL", sb.path("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("QWEN_ROTATION_REAL"));
}

#[test]
fn not_found_exits_127_naming_what_was_searched() {
    let sb = Sandbox::new(REAL);
    fs::remove_file(sb.path("real/qwen")).unwrap();
    let out = sb.run(["hi"]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("qwen-rotation: the real qwen was not found"),
        "{err}"
    );
    assert!(
        err.contains(sb.path("real").to_str().unwrap()),
        "names the directories: {err}"
    );
    assert!(err.contains("npm install -g @qwen-code/qwen-code"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn not_executable_exits_126() {
    let sb = Sandbox::new(REAL);
    let chosen = sb.path("chosen");
    fs::write(&chosen, "not a program").unwrap();
    fs::set_permissions(&chosen, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sb
        .cmd(["hi"])
        .env("QWEN_ROTATION_REAL", &chosen)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod +x"));
}

#[test]
fn a_non_executable_qwen_on_path_is_passed_over() {
    let sb = Sandbox::new(REAL);
    fs::create_dir_all(sb.path("first")).unwrap();
    fs::write(sb.path("first/qwen"), "#!/bin/sh\necho wrong\n").unwrap();
    fs::set_permissions(sb.path("first/qwen"), fs::Permissions::from_mode(0o644)).unwrap();
    let path = format!(
        "{}:{}:{}",
        sb.path("bin").display(),
        sb.path("first").display(),
        sb.path("real").display()
    );
    let out = run_with_path(&sb, &sb.path("bin/qwen"), &path);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real qwen hi\n");
}
