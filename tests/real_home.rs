//! The qwen home's permissions as a new user meets them, with the REAL qwen 0.24.4: qwen itself
//! creates `~/.qwen` 0755 on its first run. Doctor's verdict must not flip on that default
//! (a note with the chmod, exit 0), and adding an account makes the home private (0700).

#[path = "support/real_qwen.rs"]
mod real_qwen;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use real_qwen::{Sandbox, Version};

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn doctor_stays_ok_after_qwen_creates_its_home_and_adding_an_account_makes_it_private() {
    let Some(sb) = Sandbox::new(Version::V0_24) else {
        return;
    };
    // qwen's own default applies under the usual umask; set it so the test does not depend on
    // the caller's (the only test in this binary, so no other thread creates files meanwhile).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // A fresh home: no ~/.qwen yet.
    fs::remove_dir(&sb.qwen_home).unwrap();

    let doctor = sb.run(&["--rotation-doctor"], None);
    assert_eq!(doctor.code(), 0, "fresh home: {}", doctor.dump());
    assert!(
        doctor.stdout().contains("No problems found"),
        "{}",
        doctor.dump()
    );

    for args in [&["--version"][..], &["-p", "hi"]] {
        let out = sb.run(args, None);
        println!("qwen {args:?} through the shim: exit {}", out.code());
    }
    assert_eq!(
        mode(&sb.qwen_home),
        0o755,
        "qwen 0.24.4 created its home with its own default"
    );

    let doctor = sb.run(&["--rotation-doctor"], None);
    println!("doctor after qwen's first run:\n{}", doctor.stdout());
    assert_eq!(doctor.code(), 0, "{}", doctor.dump());
    assert!(!doctor.stdout().contains("PROBLEM"), "{}", doctor.dump());
    assert!(
        doctor.stdout().contains("is 0755 (qwen's default)")
            && doctor
                .stdout()
                .contains(&format!("fix: chmod 700 {}", sb.qwen_home.display())),
        "a note with the fix: {}",
        doctor.dump()
    );

    sb.add_api_key_via_shim("work", "k1", "http://127.0.0.1:9/v1", "qwen3-coder-plus");
    assert_eq!(
        mode(&sb.qwen_home),
        0o700,
        "--rotation-add makes the home private"
    );
    assert_eq!(mode(&sb.accounts()), 0o700);
    let doctor = sb.run(&["--rotation-doctor"], None);
    assert_eq!(doctor.code(), 0, "{}", doctor.dump());
    assert!(
        doctor.stdout().contains("files 0600, directories 0700"),
        "{}",
        doctor.dump()
    );
}
