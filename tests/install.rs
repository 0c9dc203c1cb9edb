//! install.sh: a dedicated directory first on PATH, idempotent, never over npm's qwen, and a
//! clean uninstall.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use sandbox::{SHIM, Sandbox};

fn install(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(args)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", sb.path("real").display()),
        )
        .env("HOME", sb.home())
        .env("QWEN_ROTATION_PROFILE", sb.path("profile"))
        .output()
        .unwrap()
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
