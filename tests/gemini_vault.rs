//! The gemini profile's OAuth slots through the library, against real files in a tempdir:
//! `google_accounts.json` kept per slot, and sync-back by identity while a gemini that never
//! re-reads its login keeps running on the previous account (GEMINI_FACTS.md: it rewrites
//! `oauth_creds.json` on refresh, without a lock, keeping the refresh token).

#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use qwen_rotation::config::Paths;
use qwen_rotation::model::Class;
use qwen_rotation::profile::GEMINI;
use qwen_rotation::vault::Rotation;
use vault_home::*;

/// A gemini home `<tmp>/home/.gemini` (0700) with an empty `accounts/`.
fn gemini_home() -> Home {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths::of(&GEMINI, dir.path().join("home/.gemini"));
    fs::create_dir_all(&paths.accounts).unwrap();
    for d in [&paths.home, &paths.accounts] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    Home { dir, paths }
}

/// A login as gemini writes it after "Login with Google".
fn login(who: &str) -> String {
    format!(
        r#"{{"access_token":"{}","refresh_token":"{}","scope":"https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","id_token":"{}","expiry_date":4102444800000}}"#,
        token(&format!("acc-{who}")),
        token(&format!("ref-{who}")),
        token(&format!("id-{who}")),
    )
}

/// The same login after gemini refreshed it: google-auth-library's `tokens` event, new access
/// token, the old refresh token kept, no id_token.
fn refreshed_login(who: &str, generation: u32) -> String {
    format!(
        r#"{{"access_token":"{}","token_type":"Bearer","scope":"https://www.googleapis.com/auth/cloud-platform","expiry_date":{},"refresh_token":"{}"}}"#,
        token(&format!("acc-{who}-r{generation}")),
        4102444800000u64 + u64::from(generation),
        token(&format!("ref-{who}")),
    )
}

fn accounts_json(email: &str) -> String {
    format!(r#"{{"active":"{email}","old":[]}}"#)
}

/// Slots 1 and 2 (a, b), each added from the live login as a person does: log in with gemini,
/// `gemini --rotation-add`.
fn two_accounts() -> Home {
    let h = gemini_home();
    let v = h.vault();
    for who in ["a", "b"] {
        h.put_live(&login(who));
        write600(
            &h.paths.home.join("google_accounts.json"),
            &accounts_json(&format!("{who}@example.com")),
        );
        v.add_oauth(login(who).as_bytes(), &h.paths.live_creds, Some(who))
            .unwrap();
    }
    h
}

#[test]
fn an_added_login_keeps_its_google_accounts_file_and_a_swap_installs_both() {
    let h = two_accounts();
    for (n, who) in [(1, "a"), (2, "b")] {
        let companion = h.paths.accounts.join(format!("google_accounts_{n}.json"));
        assert_eq!(
            fs::read_to_string(&companion).unwrap(),
            accounts_json(&format!("{who}@example.com"))
        );
        assert_eq!(mode(&companion), 0o600);
        assert_eq!(mode(&h.paths.oauth_slot(n)), 0o600);
    }
    let v = h.vault();
    v.switch("1").unwrap();
    assert_eq!(h.live().as_deref(), Some(login("a").as_str()));
    let live_accounts = h.paths.home.join("google_accounts.json");
    assert_eq!(
        fs::read_to_string(&live_accounts).unwrap(),
        accounts_json("a@example.com")
    );
    assert_eq!(mode(&live_accounts), 0o600);
    assert_eq!(mode(&h.paths.live_creds), 0o600);
    // Removing a slot takes its companion along to removed/.
    v.remove("2").unwrap();
    assert!(!h.paths.accounts.join("google_accounts_2.json").exists());
    let removed: Vec<String> = fs::read_dir(h.paths.accounts.join("removed"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        removed
            .iter()
            .any(|n| n.starts_with("google_accounts_2.json")),
        "{removed:?}"
    );
    h.assert_no_secrets_in_our_files();
}

#[test]
fn a_slot_without_a_companion_leaves_the_clis_file_alone() {
    let h = gemini_home();
    h.put_oauth(1, "a");
    h.put_oauth(2, "b");
    let live_accounts = h.paths.home.join("google_accounts.json");
    write600(&live_accounts, &accounts_json("someone@example.com"));
    let v = h.vault();
    v.prepare(None).unwrap();
    v.switch("2").unwrap();
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    assert_eq!(
        fs::read_to_string(&live_accounts).unwrap(),
        accounts_json("someone@example.com")
    );
}

/// Helper process: a gemini still running on the account it read at start. It reads the live
/// file, says whose it is, waits for a line on stdin (EOF: the test ended, it writes nothing)
/// and then saves a refresh the way gemini does: the same path truncated and rewritten, 0600,
/// no lock, no rename.
#[test]
fn helper_gemini_on_the_old_account() {
    let Some(live) = std::env::var_os("GEMINI_HELPER_LIVE") else {
        return;
    };
    let text = fs::read_to_string(&live).unwrap();
    let who = account_of(&text);
    println!("STARTED {}", who.as_deref().unwrap_or("?"));
    let Some(who) = who else {
        return;
    };
    let mut go = String::new();
    if std::io::stdin().read_line(&mut go).unwrap() == 0 {
        return;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&live)
        .unwrap();
    f.write_all(refreshed_login(&who, 7).as_bytes()).unwrap();
    f.sync_all().unwrap();
    println!("WROTE {who}");
}

#[test]
fn a_gemini_still_running_on_account_1_can_only_ever_update_slot_1() {
    let h = two_accounts();
    let v = h.vault();
    v.switch("1").unwrap();
    assert_eq!(v.prepare(None).unwrap().slot, 1);
    // gemini starts on account 1 and keeps running.
    let me = std::env::current_exe().unwrap();
    let mut old = Command::new(me)
        .args([
            "--exact",
            "helper_gemini_on_the_old_account",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GEMINI_HELPER_LIVE", &h.paths.live_creds)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(old.stdout.take().unwrap());
    let mut wait_for = |word: &str| {
        // libtest prints `test NAME ... ` before the helper's own output, on the same line.
        let mut line = String::new();
        while !line.contains(word) {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "helper ended before {word}"
            );
        }
        line[line.find(word).unwrap_or(0)..].trim().to_string()
    };
    assert_eq!(wait_for("STARTED"), "STARTED a");
    // Another run hits a quota on account 1: the shim swaps account 2 in.
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert_eq!(h.live().as_deref(), Some(login("b").as_str()));
    // The old gemini now refreshes account 1 over the swapped file.
    writeln!(old.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(wait_for("WROTE"), "WROTE a");
    let status = child::wait_within(&mut old, Duration::from_secs(30), "the old gemini");
    assert!(status.success());
    assert_eq!(h.live().as_deref(), Some(refreshed_login("a", 7).as_str()));
    // The next run: the live file holds account 1 while the state says 2. The refresh goes to
    // slot 1 (its refresh token says whose it is), slot 2 is untouched and installed again.
    let launch = v.prepare(None).unwrap();
    assert_eq!(launch.slot, 2);
    assert_eq!(h.slot(1).as_deref(), Some(refreshed_login("a", 7).as_str()));
    assert_eq!(h.slot(2).as_deref(), Some(login("b").as_str()));
    assert_eq!(h.live().as_deref(), Some(login("b").as_str()));
    assert_eq!(
        fs::read_to_string(h.paths.home.join("google_accounts.json")).unwrap(),
        accounts_json("b@example.com")
    );
    let st = h.state();
    assert_eq!((st.current_index, st.live_slot), (2, Some(2)));
    assert_eq!(h.count("sync_back"), 1);
    for n in [1, 2] {
        assert_eq!(mode(&h.paths.oauth_slot(n)), 0o600);
    }
    assert_eq!(mode(&h.paths.live_creds), 0o600);
    // No backup: identity, not position, decided.
    assert!(!h.paths.accounts.join("backup").exists());
    h.assert_no_secrets_in_our_files();
}

#[test]
fn an_unknown_login_in_the_live_file_never_lands_in_the_installed_slot() {
    let h = two_accounts();
    let v = h.vault();
    v.switch("2").unwrap();
    // A gemini on a login that is in no slot (logged in by hand) saves a refresh.
    let stranger = refreshed_login("stranger", 3);
    h.put_live(&stranger);
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    // qwen may rotate its refresh token, so it would take this for slot 2's; gemini never
    // does: slot 2 keeps its login, and the stranger's is kept as a backup.
    assert_eq!(h.slot(2).as_deref(), Some(login("b").as_str()));
    assert_eq!(h.slot(1).as_deref(), Some(login("a").as_str()));
    assert_eq!(h.live().as_deref(), Some(login("b").as_str()));
    let backups: Vec<String> = fs::read_dir(h.paths.accounts.join("backup"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(backups, [stranger]);
    assert_eq!(h.count("sync_back"), 0);
}
