//! The vault and the rotation step, through the library, against real files in a tempdir.
//! Every test ends by scanning the files we write (state.yaml, rotation.log) for tokens.

#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use qwen_rotation::error::Error;
use qwen_rotation::model::Kind;
use qwen_rotation::model::Strategy;
use qwen_rotation::model::{Class, Hit};
use qwen_rotation::vault::Rotation;
use qwen_rotation::vault::state::Status;
use vault_home::*;

#[test]
fn first_prepare_installs_slot_one_as_a_regular_0600_file() {
    let h = Home::with_oauth(2);
    let launch = h.vault().prepare(None).unwrap();
    assert_eq!((launch.slot, launch.kind), (1, Kind::OAuth));
    assert!(launch.env.is_empty());
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    let meta = fs::symlink_metadata(&h.paths.live_creds).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600);
    let st = h.state();
    assert_eq!(
        (st.current_index, st.total_accounts, st.live_slot),
        (1, 2, Some(1))
    );
    assert_eq!(mode(&h.paths.state), 0o600);
    h.assert_counters_match();
    h.assert_no_secrets_in_our_files();
}

#[test]
fn a_steady_prepare_writes_nothing_and_takes_no_lock() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    let before = (
        h.state_text(),
        fs::metadata(&h.paths.state).unwrap().mtime_nsec(),
        h.log_text(),
    );
    // Hold rotation.lock ourselves: a fast path that tried to take it would time out.
    let lock = fs::File::open(&h.paths.lock).unwrap();
    lock.lock().unwrap();
    let v = h.vault_with(|c| c.lock_timeout = Duration::from_millis(50));
    for _ in 0..20 {
        assert_eq!(v.prepare(None).unwrap().slot, 1);
        assert_eq!(v.prepare(Some("1")).unwrap().slot, 1);
    }
    let after = (
        h.state_text(),
        fs::metadata(&h.paths.state).unwrap().mtime_nsec(),
        h.log_text(),
    );
    assert_eq!(before, after);
    assert!(!h.paths.cli_lock.as_deref().unwrap().exists());
}

#[test]
fn quota_hit_rotates_marks_and_logs_once() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    let before = Utc::now();
    let r = v.report(1, &hit(Class::Quota)).unwrap();
    let after = Utc::now();
    assert_eq!(r, Rotation::Switched { from: 1, to: 2 });
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    let st = h.state();
    assert_eq!(st.current_index, 2);
    assert_eq!(st.switches_total, 1);
    let a1 = &st.accounts[&1];
    assert_eq!(a1.status, Status::CoolingDown);
    // Five hours from the moment of the report, however long the report took (whole seconds,
    // so a stored time cut to the second still counts).
    let until = a1.cooldown_until.unwrap();
    assert!(
        (before + TimeDelta::hours(5)).timestamp() <= until.timestamp()
            && until <= after + TimeDelta::hours(5),
        "{until} not 5 h after the report ({before} to {after})"
    );
    assert_eq!(a1.hits.quota, 1);
    assert_eq!(st.accounts[&2].switches_count, 1);
    // Slot files are untouched by a rotation without a refresh.
    assert_eq!(h.slot(1).as_deref(), Some(creds("a").as_str()));
    assert_eq!(h.slot(2).as_deref(), Some(creds("b").as_str()));
    let ev = h.events();
    let switch = ev.iter().find(|e| e.event == "account_switch").unwrap();
    assert_eq!((switch.from, switch.to), (Some(1), Some(2)));
    assert_eq!(switch.reason.as_deref(), Some("quota_exhausted"));
    assert_eq!(switch.trigger.as_deref(), Some("auto"));
    assert_eq!(switch.class.as_deref(), Some("quota"));
    assert_eq!(switch.phrase.as_deref(), Some("insufficient_quota"));
    assert_eq!(h.count("cooldown"), 1);
    // The next prepare uses slot 2 without writing.
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    h.assert_counters_match();
    h.assert_no_secrets_in_our_files();
    assert!(
        !h.paths.cli_lock.as_deref().unwrap().exists(),
        "qwen's lock is released"
    );
}

#[test]
fn a_stale_report_does_not_rotate_again() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::AlreadyRotated { to: 2 }
    );
    assert_eq!(h.state().switches_total, 1);
    assert_eq!(
        h.state().accounts[&1].hits.quota,
        1,
        "the same hit is counted once"
    );
    h.assert_counters_match();
}

#[test]
fn a_refreshed_live_file_is_synced_back_before_switching() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    h.put_live(&refreshed("a", 1));
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert_eq!(h.slot(1).as_deref(), Some(refreshed("a", 1).as_str()));
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    assert_eq!(h.count("sync_back"), 1);
    // No backup: the refresh token proved whose it was.
    assert!(!h.paths.accounts.join("backup").exists());
    h.assert_no_secrets_in_our_files();
}

#[test]
fn a_refresh_that_rotated_the_refresh_token_is_synced_with_a_backup() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    let rotated = creds("a-rotated");
    h.put_live(&rotated);
    v.report(1, &hit(Class::Quota)).unwrap();
    assert_eq!(h.slot(1).as_deref(), Some(rotated.as_str()));
    let backups: Vec<_> = fs::read_dir(h.paths.accounts.join("backup"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(fs::read_to_string(backups[0].path()).unwrap(), creds("a"));
    assert_eq!(mode(&backups[0].path()), 0o600);
}

#[test]
fn a_deleted_live_file_is_never_copied_back_and_marks_needs_login() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    fs::remove_file(&h.paths.live_creds).unwrap();
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert_eq!(h.slot(1).as_deref(), Some(creds("a").as_str()));
    assert_eq!(h.state().accounts[&1].status, Status::NeedsLogin);
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    assert_eq!(h.count("needs_login"), 1);
}

#[test]
fn an_unusable_live_file_is_never_copied_back() {
    for junk in [
        "",
        "{",
        "{\"access_token\":\"x\"}",
        "{\"access_token\":\"\",\"refresh_token\":\"r\"}",
        "[]",
    ] {
        let h = Home::with_oauth(2);
        let v = h.vault();
        v.prepare(None).unwrap();
        h.put_live(junk);
        v.report(1, &hit(Class::Quota)).unwrap();
        assert_eq!(h.slot(1).as_deref(), Some(creds("a").as_str()), "{junk:?}");
        assert_eq!(
            h.state().accounts[&1].status,
            Status::NeedsLogin,
            "{junk:?}"
        );
        assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    }
}

#[test]
fn every_account_spent_reports_the_earliest_return() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    let reset = Utc::now() + TimeDelta::hours(2);
    let q = Hit {
        class: Class::Quota,
        phrase: "insufficient_quota".into(),
        reset_at: Some(reset),
    };
    assert_eq!(
        v.report(1, &q).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    let r = v.report(2, &hit(Class::Quota)).unwrap();
    let Rotation::Exhausted { earliest: Some(t) } = r else {
        panic!("{r:?}")
    };
    assert_eq!(t.timestamp(), reset.timestamp());
    // The live file still holds a complete account (the last one used).
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    match v.prepare(None) {
        Err(Error::Exhausted { earliest: Some(t) }) => assert_eq!(t.timestamp(), reset.timestamp()),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.count("exhausted"), 1);
    // Reporting again on the spent account changes nothing and logs nothing.
    let lines = h.log_text();
    assert!(matches!(
        v.report(2, &hit(Class::Quota)).unwrap(),
        Rotation::Exhausted { .. }
    ));
    assert_eq!(h.log_text(), lines);
    h.assert_counters_match();
}

#[test]
fn throttle_is_short_and_auth_needs_login() {
    let h = Home::with_oauth(3);
    let v = h.vault_with(|c| c.throttle_cooldown = Duration::from_secs(90));
    v.prepare(None).unwrap();
    let before = Utc::now();
    v.report(1, &hit(Class::Throttle)).unwrap();
    let after = Utc::now();
    v.report(2, &hit(Class::Auth)).unwrap();
    let st = h.state();
    // throttle_cooldown (90 s) from the moment of the report, however long the report took.
    let until = st.accounts[&1].cooldown_until.unwrap();
    assert!(
        (before + TimeDelta::seconds(90)).timestamp() <= until.timestamp()
            && until <= after + TimeDelta::seconds(90),
        "{until} not 90 s after the report ({before} to {after})"
    );
    assert_eq!(st.accounts[&2].status, Status::NeedsLogin);
    assert_eq!(st.accounts[&2].cooldown_until, None);
    assert_eq!(st.current_index, 3);
    assert_eq!(
        (st.accounts[&1].hits.throttle, st.accounts[&2].hits.auth),
        (1, 1)
    );
}

#[test]
fn an_auth_report_that_lost_the_race_does_not_lock_out_the_launched_oauth_slot() {
    // A run launched on slot 1; before its qwen read the live file, another process moved on
    // to slot 2 (a switch, or a rotation that left slot 1 usable). The run's auth failure may
    // be slot 2's: slot 1 must stay usable. An API key, in the child's own environment, is
    // known to be the one that failed: it is marked.
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.switch("2").unwrap();
    assert_eq!(
        v.report(1, &hit(Class::Auth)).unwrap(),
        Rotation::AlreadyRotated { to: 2 }
    );
    let st = h.state();
    assert_eq!(st.accounts[&1].status, Status::Healthy);
    assert_eq!(st.accounts[&1].hits.auth, 0);
    assert_eq!(h.count("needs_login"), 0);
    // The same failure seen while slot 2 is live marks slot 2 and rotates.
    assert_eq!(
        v.report(2, &hit(Class::Auth)).unwrap(),
        Rotation::Switched { from: 2, to: 3 }
    );
    assert_eq!(h.state().accounts[&2].status, Status::NeedsLogin);
    // A quota report that lost the race still cools its slot down (it expires by itself).
    v.report(1, &hit(Class::Quota)).unwrap();
    assert_eq!(h.state().accounts[&1].status, Status::CoolingDown);
    h.assert_counters_match();

    let h = Home::new();
    h.put_api(1, "a");
    h.put_api(2, "b");
    let v = h.vault();
    v.prepare(None).unwrap();
    v.switch("2").unwrap();
    v.report(1, &hit(Class::Auth)).unwrap();
    assert_eq!(h.state().accounts[&1].status, Status::NeedsLogin);
}

/// Rewrites state.yaml through a closure (a hand edit, or time passing).
fn edit_state(h: &Home, f: impl FnOnce(&mut qwen_rotation::vault::state::State)) {
    let mut st = h.state();
    f(&mut st);
    fs::write(&h.paths.state, st.to_yaml()).unwrap();
}

#[test]
fn an_expired_cooldown_is_usable_without_a_write_and_fill_first_returns_to_it() {
    let h = Home::with_oauth(2);
    let v = h.vault_with(|c| c.strategy = Strategy::FillFirst);
    v.prepare(None).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    edit_state(&h, |st| {
        st.accounts.get_mut(&1).unwrap().cooldown_until = Some(Utc::now() - TimeDelta::minutes(1))
    });
    // Fill-first goes back to slot 1 as soon as it is usable.
    assert_eq!(v.prepare(None).unwrap().slot, 1);
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    let st = h.state();
    assert_eq!(st.accounts[&1].status, Status::Healthy);
    assert!(st.accounts[&1].last_reset.is_some());
    assert_eq!(st.switches_total, 2);
    h.assert_counters_match();

    // Round-robin stays where it is while that slot is fine.
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    edit_state(&h, |st| {
        st.accounts.get_mut(&1).unwrap().cooldown_until = Some(Utc::now() - TimeDelta::minutes(1))
    });
    let text = h.state_text();
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    assert_eq!(v.eligible_count(), 2);
    assert_eq!(h.state_text(), text, "nothing written");
}

#[test]
fn a_spent_current_slot_is_skipped_before_launch() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    edit_state(&h, |st| {
        let a = st.accounts.get_mut(&1).unwrap();
        a.status = Status::CoolingDown;
        a.cooldown_until = Some(Utc::now() + TimeDelta::hours(1));
    });
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    let sw = h
        .events()
        .into_iter()
        .find(|e| e.event == "account_switch")
        .unwrap();
    assert_eq!(sw.reason.as_deref(), Some("cooling_down"));
    h.assert_counters_match();
}

#[test]
fn a_seeds_home_with_a_symlink_is_migrated_without_loss() {
    let h = Home::with_oauth(3);
    fs::write(
        &h.paths.state,
        "current_index: 2\ntotal_accounts: 3\nlast_switch: \"2026-02-05T10:30:00Z\"\nswitches_total: 0\naccounts:\n  account1:\n    switches_count: 15\n    last_used: \"2026-02-05T10:28:00Z\"\n  account2:\n    switches_count: 8\n    last_used: \"2026-02-05T10:30:00Z\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("accounts/oauth_creds_2.json", &h.paths.live_creds).unwrap();
    let launch = h.vault().prepare(None).unwrap();
    assert_eq!(launch.slot, 2);
    let meta = fs::symlink_metadata(&h.paths.live_creds).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the symlink became a regular file"
    );
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    for (n, who) in [(1, "a"), (2, "b"), (3, "c")] {
        assert_eq!(h.slot(n).as_deref(), Some(creds(who).as_str()));
    }
    let st = h.state();
    assert_eq!(st.accounts[&1].switches_count, 15, "seed counters kept");
    assert_eq!(
        st.accounts[&3].kind,
        Some(Kind::OAuth),
        "slot 3 was added from accounts/"
    );
    assert_eq!(h.count("migrated_symlink"), 1);
    // A quota hit then rotates normally.
    assert_eq!(
        h.vault().report(2, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 2, to: 3 }
    );
    h.assert_counters_match();
}

#[test]
fn a_corrupt_state_is_kept_and_rebuilt_without_losing_a_slot() {
    let h = Home::with_oauth(3);
    h.put_live(&creds("c"));
    fs::write(&h.paths.state, "current_index: [\n\u{0}garbage: {").unwrap();
    let launch = h.vault().prepare(None).unwrap();
    assert_eq!(launch.slot, 3, "the live login's slot stays live");
    assert!(h.paths.home.join("state.yaml.corrupt").exists());
    let st = h.state();
    assert_eq!(st.accounts.len(), 3);
    assert_eq!(st.current_index, 3);
    assert_eq!(h.count("state_rebuilt"), 1);
    assert_eq!(h.live().as_deref(), Some(creds("c").as_str()));
}

#[test]
fn a_corrupt_slot_is_invalid_skipped_and_never_written() {
    let h = Home::with_oauth(3);
    write600(&h.paths.oauth_slot(2), "{ not json");
    let v = h.vault();
    v.prepare(None).unwrap();
    assert_eq!(h.state().accounts[&2].status, Status::Invalid);
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 3 }
    );
    assert_eq!(
        fs::read_to_string(h.paths.oauth_slot(2)).unwrap(),
        "{ not json"
    );
    // Fixing the file makes it usable again.
    h.put_oauth(2, "b");
    v.reset(None).unwrap();
    assert_eq!(h.state().accounts[&2].status, Status::Healthy);
}

#[test]
fn state_follows_the_files_in_accounts() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    h.put_oauth(5, "e");
    fs::remove_file(h.paths.oauth_slot(2)).unwrap();
    v.prepare(None).unwrap();
    let st = h.state();
    assert_eq!(st.accounts.keys().copied().collect::<Vec<_>>(), vec![1, 5]);
    assert_eq!(st.total_accounts, 2);
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 5 }
    );
}

#[test]
fn api_key_slots_launch_with_env_and_leave_the_live_file_alone() {
    let h = Home::new();
    h.put_api(1, "a");
    h.put_oauth(2, "b");
    h.put_live(&creds("someone"));
    let v = h.vault();
    let l = v.prepare(None).unwrap();
    assert_eq!((l.slot, l.kind), (1, Kind::ApiKey));
    let env: Vec<(String, String)> = l
        .env
        .iter()
        .map(|(k, s)| (k.clone(), s.expose().to_string()))
        .collect();
    assert_eq!(env[0], ("OPENAI_API_KEY".into(), token("key-a")));
    assert!(env.contains(&("OPENAI_BASE_URL".into(), "http://127.0.0.1:9/v1".into())));
    assert!(env.contains(&("OPENAI_MODEL".into(), "m-a".into())));
    let api = l.api.unwrap();
    assert_eq!(api.base_url, "http://127.0.0.1:9/v1");
    assert!(!format!("{:?}", l.env).contains(SECRET_MARK));
    assert_eq!(
        h.live().as_deref(),
        Some(creds("someone").as_str()),
        "untouched"
    );
    // Rotating to the OAuth slot keeps the unknown login in backup/ before replacing it.
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    let backup: Vec<_> = fs::read_dir(h.paths.accounts.join("backup"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        fs::read_to_string(backup[0].path()).unwrap(),
        creds("someone")
    );
    h.assert_no_secrets_in_our_files();
}

#[test]
fn a_pinned_run_uses_its_slot_without_moving_current() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.set_label("3", Some("night")).unwrap();
    let l = v.prepare(Some("night")).unwrap();
    assert_eq!(l.slot, 3);
    assert_eq!(l.label.as_deref(), Some("night"));
    assert_eq!(h.live().as_deref(), Some(creds("c").as_str()));
    assert_eq!(h.state().current_index, 1);
    assert_eq!(v.prepare(None).unwrap().slot, 1);
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    assert!(matches!(v.prepare(Some("9")), Err(Error::NoSuchSlot(_))));
    v.set_enabled("2", false).unwrap();
    assert!(matches!(
        v.prepare(Some("2")),
        Err(Error::Exhausted { earliest: None })
    ));
    h.assert_counters_match();
}

#[test]
fn success_lifts_needs_login_on_the_current_slot_only() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    let text = h.state_text();
    v.record_success(1).unwrap();
    assert_eq!(h.state_text(), text, "no write when already healthy");
    edit_state(&h, |st| {
        st.accounts.get_mut(&1).unwrap().status = Status::NeedsLogin
    });
    v.record_success(1).unwrap();
    assert_eq!(h.state().accounts[&1].status, Status::Healthy);
    // A success reported for a slot the vault moved away from is older news than the mark.
    v.report(1, &hit(Class::Auth)).unwrap();
    v.record_success(1).unwrap();
    assert_eq!(h.state().accounts[&1].status, Status::NeedsLogin);
    // An unexpired cooldown stays, even on the current slot.
    v.report(2, &hit(Class::Throttle)).unwrap();
    edit_state(&h, |st| st.current_index = 2);
    let text = h.state_text();
    v.record_success(2).unwrap();
    assert_eq!(h.state_text(), text);
    assert_eq!(h.state().accounts[&2].status, Status::CoolingDown);
}

#[test]
fn a_slot_file_replaced_by_hand_is_installed_and_lifts_needs_login() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    edit_state(&h, |st| {
        st.accounts.get_mut(&1).unwrap().status = Status::NeedsLogin
    });
    assert_eq!(v.prepare(None).unwrap().slot, 2);
    assert!(
        v.prepare(Some("1")).is_err(),
        "a pinned run refuses a slot that needs login"
    );
    // The person logs in again and drops the new file into the slot.
    h.put_oauth(1, "a-new");
    v.switch("1").unwrap();
    assert_eq!(h.live().as_deref(), Some(creds("a-new").as_str()));
    assert_eq!(h.state().accounts[&1].status, Status::Healthy);
    // Replacing the live slot's file is picked up by the next run.
    h.put_oauth(1, "a-newer");
    assert_eq!(v.prepare(None).unwrap().slot, 1);
    assert_eq!(h.live().as_deref(), Some(creds("a-newer").as_str()));
    assert_eq!(h.slot(1).as_deref(), Some(creds("a-newer").as_str()));
    // A refresh of the old login in the live file does not overwrite the new slot file.
    h.put_oauth(1, "a-newest");
    h.put_live(&creds("a-newer-rotated"));
    v.prepare(None).unwrap();
    assert_eq!(h.slot(1).as_deref(), Some(creds("a-newest").as_str()));
    assert_eq!(h.live().as_deref(), Some(creds("a-newest").as_str()));
    h.assert_counters_match();
}

#[test]
fn lock_timeout_is_bounded_and_a_dead_holder_never_blocks() {
    let h = Home::with_oauth(2);
    let v = h.vault_with(|c| c.lock_timeout = Duration::from_millis(300));
    v.prepare(None).unwrap();
    let held = fs::File::open(&h.paths.lock).unwrap();
    held.lock().unwrap();
    // Bounded: the report gives up with LockTimeout instead of waiting for the holder. It runs
    // on its own thread so a report that waited forever fails here, naming the hang, after a
    // generous deadline that detects a hang and is not a speed target.
    let paths = h.paths.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let config = qwen_rotation::config::Config {
            lock_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let v = qwen_rotation::vault::Vault::open(paths, config);
        let _ = tx.send(v.report(1, &hit(Class::Quota)));
    });
    let blocked = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a report behind a held rotation.lock did not give up within 60 s");
    assert!(
        matches!(blocked, Err(Error::LockTimeout { .. })),
        "{blocked:?}"
    );
    drop(held);
    // A holder that dies (SIGKILL) releases the lock with it.
    let me = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(me)
        .args([
            "--exact",
            "helper_hold_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VAULT_HELPER_LOCK", &h.paths.lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !line.contains("LOCKED") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "helper ended early"
        );
    }
    assert!(matches!(
        v.report(1, &hit(Class::Quota)),
        Err(Error::LockTimeout { .. })
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    // The dead holder's lock is free at once: a vault that never waits (a zero lock timeout
    // makes any wait a LockTimeout) takes it on the first try and rotates.
    let at_once = h.vault_with(|c| c.lock_timeout = Duration::ZERO);
    assert_eq!(
        at_once.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
}

/// Helper: holds rotation.lock until killed.
#[test]
fn helper_hold_lock() {
    let Some(path) = std::env::var_os("VAULT_HELPER_LOCK") else {
        return;
    };
    let f = fs::File::open(path).unwrap();
    f.lock().unwrap();
    println!("LOCKED");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn qwens_lock_is_respected_and_stale_ones_are_cleared() {
    let h = Home::with_oauth(3);
    let v = h.vault_with(|c| c.lock_timeout = Duration::from_millis(300));
    v.prepare(None).unwrap();
    // Held by a live qwen: we wait, then give up.
    fs::write(h.paths.cli_lock.as_deref().unwrap(), "some-uuid").unwrap();
    assert!(matches!(
        v.report(1, &hit(Class::Quota)),
        Err(Error::LockTimeout { .. })
    ));
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    // Older than 10 s: stale, removed.
    let old = std::time::SystemTime::now() - Duration::from_secs(30);
    fs::File::options()
        .write(true)
        .open(h.paths.cli_lock.as_deref().unwrap())
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    assert!(!h.paths.cli_lock.as_deref().unwrap().exists());
    // Left by a qwen-rotation process that died: removed at once.
    let ns = fs::read_link("/proc/self/ns/pid").unwrap();
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    fs::write(
        h.paths.cli_lock.as_deref().unwrap(),
        format!("qwen-rotation pid={dead} ns={}\n", ns.display()),
    )
    .unwrap();
    assert_eq!(
        v.report(2, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 2, to: 3 }
    );
}

#[test]
fn sixty_four_threads_hitting_the_same_account_rotate_once() {
    let h = Home::with_oauth(3);
    h.vault().prepare(None).unwrap();
    let barrier = Arc::new(Barrier::new(64));
    let paths = h.paths.clone();
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let b = Arc::clone(&barrier);
            let p = paths.clone();
            std::thread::spawn(move || {
                let v =
                    qwen_rotation::vault::Vault::open(p, qwen_rotation::config::Config::default());
                b.wait();
                v.report(1, &hit(Class::Quota))
            })
        })
        .collect();
    let results: Vec<Rotation> = handles
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let switched = results
        .iter()
        .filter(|r| matches!(r, Rotation::Switched { .. }))
        .count();
    assert_eq!(switched, 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(
        r,
        Rotation::Switched { to: 2, .. } | Rotation::AlreadyRotated { to: 2 }
    )));
    assert_eq!(h.count("account_switch"), 1);
    assert_eq!(h.state().switches_total, 1);
    assert_eq!(h.state().accounts[&1].hits.quota, 1);
    h.assert_counters_match();
}

/// The helper half of the multi-process tests: when run with VAULT_HELPER_HOME set, this
/// "test" waits for the start file (if named) and runs VAULT_HELPER_OP (default: report one
/// quota hit on slot 1).
#[test]
fn helper_report_quota_hit() {
    let Some(home) = std::env::var_os("VAULT_HELPER_HOME") else {
        return;
    };
    if let Some(start) = std::env::var_os("VAULT_HELPER_START") {
        // Says it is at the start line (one file per helper), then waits for the start.
        if let Some(ready) = std::env::var_os("VAULT_HELPER_READY") {
            let me = std::path::Path::new(&ready).join(std::process::id().to_string());
            fs::write(me, "").unwrap();
        }
        let start = std::path::PathBuf::from(start);
        while !start.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let v = qwen_rotation::vault::Vault::open(
        qwen_rotation::config::Paths::at(home),
        qwen_rotation::config::Config::default(),
    );
    match std::env::var("VAULT_HELPER_OP").as_deref() {
        Ok("prepare") => println!("RESULT {:?}", v.prepare(None).map(|l| l.slot)),
        Ok("add") => println!(
            "RESULT {:?}",
            v.add_oauth(
                creds("added").as_bytes(),
                std::path::Path::new("/nonexistent/login.json"),
                Some("new")
            )
        ),
        Ok("remove") => println!("RESULT {:?}", v.remove("1")),
        Ok("switch") => println!("RESULT {:?}", v.switch("3")),
        Ok("next") => println!("RESULT {:?}", v.next()),
        Ok("disable") => println!("RESULT {:?}", v.set_enabled("1", false)),
        _ => println!("RESULT {:?}", v.report(1, &hit(Class::Quota)).unwrap()),
    }
}

/// Runs `op` on the home at `home` in a helper process that SIGKILLs itself at `fault`.
#[cfg(feature = "fault-injection")]
fn crash_at(home: &std::path::Path, op: &str, fault: &str) -> std::process::Output {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "helper_report_quota_hit",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("VAULT_HELPER_HOME", home)
    .env("VAULT_HELPER_OP", op)
    .env("QWEN_ROTATION_FAULT", fault)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    child::collect_within(
        c.spawn().unwrap(),
        Duration::from_secs(60),
        "the crash helper",
    )
}

/// A SIGKILL between writing a temporary and renaming it leaves a full credential copy under
/// our temp name; the next operation (the lock-free run path included) removes it under the
/// lock and leaves every other file alone. Built with `--features fault-injection` only.
#[cfg(feature = "fault-injection")]
#[test]
fn a_crash_in_the_middle_of_a_write_leaves_a_temporary_the_next_run_removes() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    let temps = || -> Vec<std::path::PathBuf> {
        [h.paths.home.clone(), h.paths.accounts.clone()]
            .iter()
            .flat_map(|d| fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(qwen_rotation::files::is_temp_name)
            })
            .collect()
    };
    let out = crash_at(&h.paths.home, "switch", "write.temp_synced");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "the point was not reached");
    let left = temps();
    assert_eq!(
        left.len(),
        1,
        "the killed write left its temporary: {left:?}"
    );
    assert_eq!(mode(&left[0]), 0o600);
    let others = || -> Vec<std::path::PathBuf> {
        [h.paths.home.clone(), h.paths.accounts.clone()]
            .iter()
            .flat_map(|d| fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
            // The killed process's qwen lock is stale, and removed as such.
            .filter(|p| !left.contains(p) && *p != h.paths.cli_lock.as_deref().unwrap())
            .collect()
    };
    let before = others();
    let launch = v.prepare(None).unwrap();
    assert_eq!(
        temps(),
        Vec::<std::path::PathBuf>::new(),
        "swept by the next run"
    );
    let after = others();
    for p in &before {
        assert!(after.contains(p), "{} was removed", p.display());
    }
    assert_eq!(h.live().as_deref(), h.slot(launch.slot).as_deref());
    assert!(
        h.log_text()
            .contains("removed 1 leftover temporary file(s)")
    );
}

/// Crash (SIGKILL) at every step of the rotation step and of add/remove/switch: afterwards the
/// live file is one whole account, every slot is intact, state.yaml loads, no lock is held,
/// and the next operation succeeds. Built with `--features fault-injection` only.
#[cfg(feature = "fault-injection")]
#[test]
fn a_crash_at_any_step_loses_nothing() {
    // (operation, fault point, how to prepare the home)
    let cases: &[(&str, &str, &str)] = &[
        // The rotation step: every point it passes (DESIGN.md steps 1-7).
        ("report", "rotate.locked", "refreshed"),
        ("report", "rotate.qwen_locked", "refreshed"),
        ("report", "rotate.synced_back", "refreshed"),
        ("report", "rotate.backup_written", "rotated"),
        ("report", "rotate.migrated", "symlink"),
        ("report", "rotate.live_written", ""),
        ("report", "rotate.live_written", "refreshed"),
        ("report", "rotate.state_written", "refreshed"),
        ("report", "rotate.logged", ""),
        ("prepare", "prepare.migrated", "symlink"),
        ("prepare", "prepare.live_written", "pinned-away"),
        ("prepare", "prepare.state_written", "pinned-away"),
        ("prepare", "prepare.logged", "symlink"),
        ("add", "add.locked", ""),
        ("add", "add.slot_written", ""),
        ("add", "add.state_written", ""),
        ("add", "add.logged", ""),
        ("remove", "remove.locked", "refreshed"),
        ("remove", "remove.qwen_locked", "refreshed"),
        ("remove", "remove.synced_back", "refreshed"),
        ("remove", "remove.backup_written", "rotated"),
        ("remove", "remove.migrated", "symlink"),
        ("remove", "remove.slot_moved", "refreshed"),
        ("remove", "remove.live_written", "refreshed"),
        ("remove", "remove.state_written", ""),
        ("remove", "remove.logged", ""),
        ("switch", "switch.locked", "refreshed"),
        ("switch", "switch.qwen_locked", "refreshed"),
        ("switch", "switch.synced_back", "refreshed"),
        ("switch", "switch.backup_written", "rotated"),
        ("switch", "switch.migrated", "symlink"),
        ("switch", "switch.live_written", "refreshed"),
        ("switch", "switch.state_written", ""),
        ("switch", "switch.logged", ""),
        ("next", "next.live_written", ""),
        ("disable", "disable.live_written", ""),
    ];
    let rounds: u32 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (mut sigkills, mut kept, mut losses) = (0u32, 0u32, 0u32);
    for (op, fault, setup) in cases {
        for round in 0..rounds {
            let h = Home::with_oauth(3);
            let v = h.vault_with(|c| c.lock_timeout = Duration::from_secs(2));
            v.prepare(None).unwrap();
            let refreshed_text = match *setup {
                "refreshed" => Some(refreshed("a", round + 1)),
                "rotated" => Some(creds("a-rotated")),
                _ => None,
            };
            match *setup {
                "refreshed" | "rotated" => h.put_live(refreshed_text.as_deref().unwrap()),
                "symlink" => {
                    fs::remove_file(&h.paths.live_creds).unwrap();
                    std::os::unix::fs::symlink("accounts/oauth_creds_1.json", &h.paths.live_creds)
                        .unwrap();
                }
                "pinned-away" => {
                    v.prepare(Some("2")).unwrap();
                }
                _ => {}
            }
            let out = crash_at(&h.paths.home, op, fault);
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{fault}: the point was not reached: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            // No lock is held: rotation.lock is free at once, and a qwen lock left by the dead
            // process is recognised as stale (qwen itself would wait 10 s for it).
            let lock = fs::File::open(&h.paths.lock).unwrap();
            lock.try_lock()
                .unwrap_or_else(|e| panic!("{fault}: rotation.lock still held: {e:?}"));
            drop(lock);
            if h.paths.cli_lock.as_deref().unwrap().exists() {
                assert!(
                    qwen_rotation::vault::cli_lock_is_stale(
                        h.paths.cli_lock.as_deref().unwrap(),
                        &qwen_rotation::profile::QWEN
                    ),
                    "{fault}: oauth_creds.lock left and not recognisably stale"
                );
            }
            // The live file is one whole, valid account we know.
            let live = h.live().expect("live file exists");
            let who = account_of(&live)
                .unwrap_or_else(|| panic!("{fault}: live file is not one whole account"));
            assert!(
                ["a", "b", "c", "a-rotated"].contains(&who.as_str()),
                "{fault}: live holds {who}"
            );
            // Every slot is intact and valid (slot 1 may hold its own refreshed login).
            for (n, who) in [(1, "a"), (2, "b"), (3, "c")] {
                match h.slot(n) {
                    Some(text) => {
                        let owner = account_of(&text).unwrap_or_else(|| {
                            panic!("{fault}: slot {n} is not one whole account")
                        });
                        let ok = owner == who || (n == 1 && owner == "a-rotated");
                        assert!(ok, "{fault}: slot {n} holds {owner}");
                    }
                    None => {
                        // Only remove moves a slot, and then it is in removed/.
                        assert_eq!((*op, n), ("remove", 1), "{fault}: slot {n} lost");
                        assert_eq!(
                            fs::read_dir(h.paths.accounts.join("removed"))
                                .unwrap()
                                .count(),
                            1
                        );
                    }
                }
            }
            // state.yaml parses, or the next operation rebuilds it with a warning.
            if h.paths.state.exists() {
                qwen_rotation::vault::state::State::parse(&h.state_text())
                    .expect("state.yaml parses");
            }
            // The next operations go through at once: with a zero lock timeout any wait for
            // rotation.lock or for a qwen lock the dead process left is a LockTimeout.
            let launch = h
                .vault_with(|c| c.lock_timeout = Duration::ZERO)
                .prepare(None)
                .unwrap_or_else(|e| panic!("{fault}: next prepare waited or failed: {e}"));
            assert_eq!(
                h.live().unwrap(),
                h.slot(launch.slot).unwrap(),
                "{fault}: the launched slot is installed"
            );
            v.report(launch.slot, &hit(Class::Quota))
                .unwrap_or_else(|e| panic!("{fault}: next report: {e}"));
            assert!(
                !h.paths.cli_lock.as_deref().unwrap().exists(),
                "{fault}: qwen's lock left behind"
            );
            // qwen's refreshed login survived the crash: in its slot, or kept aside (removed/
            // or backup/) when its slot was being removed, or still live.
            if let Some(written) = &refreshed_text {
                let mut places = vec![h.slot(1), h.live()];
                for dir in ["removed", "backup"] {
                    if let Ok(entries) = fs::read_dir(h.paths.accounts.join(dir)) {
                        places.extend(entries.flatten().map(|e| fs::read_to_string(e.path()).ok()));
                    }
                }
                if places.iter().flatten().any(|p| p == written) {
                    kept += 1;
                } else {
                    losses += 1;
                    eprintln!("{fault} round {round}: the refreshed login is nowhere");
                }
            }
            h.assert_no_secrets_in_our_files();
            sigkills += 1;
        }
    }
    assert_eq!(losses, 0, "refreshed logins lost");
    // Every round above asserted that nothing was lost: reaching here means zero losses.
    println!(
        "crash sweep: {} steps x {rounds} rounds = {sigkills} SIGKILLs, {kept} refreshed logins kept, {losses} losses",
        cases.len(),
    );
}

#[test]
fn sixty_four_processes_hitting_the_same_account_rotate_once() {
    let h = Home::with_oauth(3);
    h.vault().prepare(None).unwrap();
    let start = h.dir.path().join("start");
    let ready = h.dir.path().join("ready");
    fs::create_dir(&ready).unwrap();
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..64)
        .map(|_| {
            std::process::Command::new(&me)
                .args([
                    "--exact",
                    "helper_report_quota_hit",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("VAULT_HELPER_HOME", &h.paths.home)
                .env("VAULT_HELPER_START", &start)
                .env("VAULT_HELPER_READY", &ready)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every helper at the start line before the start: they race from one instant.
    let all_ready = Instant::now() + Duration::from_secs(60);
    while fs::read_dir(&ready).unwrap().count() < 64 {
        if Instant::now() >= all_ready {
            // Let the helpers that did start end rather than wait for ever.
            let _ = fs::write(&start, "go");
            panic!("the helpers did not all start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    fs::write(&start, "go").unwrap();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| child::collect_within(c, Duration::from_secs(60), "a shim"))
        .collect();
    let wall = t.elapsed();
    let mut switched = 0;
    for out in &outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean("helper output", &text);
        assert_clean("helper stderr", &String::from_utf8_lossy(&out.stderr));
        switched += text.matches("RESULT Switched").count();
        assert!(
            text.contains("RESULT Switched { from: 1, to: 2 }")
                || text.contains("RESULT AlreadyRotated { to: 2 }"),
            "{text}"
        );
    }
    eprintln!("64 processes → 1 rotation in {wall:?}");
    assert_eq!(switched, 1);
    assert_eq!(h.count("account_switch"), 1);
    assert_eq!(h.state().switches_total, 1);
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    h.assert_counters_match();
}

#[test]
fn world_readable_files_are_reported() {
    let h = Home::with_oauth(2);
    fs::set_permissions(h.paths.oauth_slot(2), fs::Permissions::from_mode(0o644)).unwrap();
    let o = h.vault().overview().unwrap();
    assert_eq!(o.slots[&2].mode & 0o777, 0o644);
    assert!(qwen_rotation::files::too_open(o.slots[&2].mode));
    assert!(!qwen_rotation::files::too_open(o.slots[&1].mode));
}

mod sequences {
    //! Random sequences of management operations and hits keep the vault's invariants:
    //! exactly one live account among enabled slots, no slot file lost or holding another
    //! account's credentials, the live file always one whole account, and switches_total
    //! equal to the account_switch lines.
    use super::*;
    use proptest::prelude::{
        Just, ProptestConfig, Strategy, prop_assert, prop_assert_eq, prop_oneof, proptest,
    };
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Prepare,
        Pinned(usize),
        Switch(usize),
        Next,
        AddOAuth,
        AddApi,
        Remove(usize),
        Disable(usize),
        Enable(usize),
        Reset(Option<usize>),
        Hit(u8),
        StaleHit(usize, u8),
        Refresh,
        Success,
    }

    fn op() -> impl Strategy<Value = Op> {
        let slot = 1usize..7;
        prop_oneof![
            3 => Just(Op::Prepare),
            1 => slot.clone().prop_map(Op::Pinned),
            2 => slot.clone().prop_map(Op::Switch),
            2 => Just(Op::Next),
            2 => Just(Op::AddOAuth),
            1 => Just(Op::AddApi),
            1 => slot.clone().prop_map(Op::Remove),
            1 => slot.clone().prop_map(Op::Disable),
            1 => slot.clone().prop_map(Op::Enable),
            1 => proptest::option::of(slot.clone()).prop_map(Op::Reset),
            4 => (0u8..3).prop_map(Op::Hit),
            1 => (slot, 0u8..3).prop_map(|(s, c)| Op::StaleHit(s, c)),
            2 => Just(Op::Refresh),
            1 => Just(Op::Success),
        ]
    }

    fn class(c: u8) -> Class {
        match c {
            0 => Class::Quota,
            1 => Class::Throttle,
            _ => Class::Auth,
        }
    }

    /// The account name a credentials file belongs to (from its refresh token).
    fn owner_name(text: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let rt = v["refresh_token"].as_str()?;
        let name = rt.strip_prefix(&format!("{SECRET_MARK}-ref-"))?.to_string();
        let at = v["access_token"].as_str()?;
        at.starts_with(&format!("{SECRET_MARK}-acc-{name}"))
            .then_some(name)
    }

    fn check(
        h: &Home,
        names: &BTreeMap<usize, (Kind, String)>,
        removed: &mut BTreeMap<usize, (Kind, String)>,
    ) {
        let st = h.state();
        // The state knows exactly the slots on disk.
        assert_eq!(
            st.accounts.keys().copied().collect::<Vec<_>>(),
            names.keys().copied().collect::<Vec<_>>()
        );
        assert_eq!(st.total_accounts, names.len());
        // Exactly one live account among enabled slots, whenever any is enabled.
        if st.accounts.values().any(|a| a.enabled) {
            let cur = st
                .accounts
                .get(&st.current_index)
                .expect("current names a slot");
            assert!(cur.enabled, "current {} is disabled", st.current_index);
        }
        // Every slot file holds its own account, valid.
        for (n, (kind, name)) in names {
            match kind {
                Kind::OAuth => {
                    let text = h.slot(*n).unwrap_or_else(|| panic!("slot {n} lost"));
                    assert_eq!(
                        owner_name(&text).as_deref(),
                        Some(name.as_str()),
                        "slot {n}"
                    );
                }
                Kind::ApiKey => {
                    let text = fs::read_to_string(h.paths.api_key_slot(*n)).unwrap();
                    assert_eq!(
                        text,
                        qwen_rotation::vault::ApiKeySlot {
                            key: qwen_rotation::model::Secret::new(token(&format!("key-{name}"))),
                            base_url: None,
                            model: None,
                            env_key: "OPENAI_API_KEY".into(),
                        }
                        .to_json()
                    );
                }
            }
        }
        // Removed slots are kept aside, not destroyed.
        let kept = fs::read_dir(h.paths.accounts.join("removed"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(kept, removed.len());
        // The live file, when present, is one whole account we know.
        if let Some(text) = h.live() {
            let who = owner_name(&text).expect("live file is a valid credential");
            let known = names
                .values()
                .chain(removed.values())
                .any(|(k, n)| *k == Kind::OAuth && *n == who);
            assert!(known, "live file belongs to {who}");
        }
        h.assert_counters_match();
        h.assert_no_secrets_in_our_files();
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES raises it for a longer soak.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
            ..ProptestConfig::default()
        })]

        #[test]
        fn invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..24)) {
            let h = Home::new();
            let v = h.vault_with(|c| c.lock_timeout = Duration::from_secs(5));
            let mut names: BTreeMap<usize, (Kind, String)> = BTreeMap::new();
            let mut removed: BTreeMap<usize, (Kind, String)> = BTreeMap::new();
            let mut counter = 0u32;
            let mut generation = 0u32;
            let src = h.dir.path().join("login.json");
            // Start with two OAuth accounts so most operations have something to act on.
            for _ in 0..2 {
                counter += 1;
                let name = format!("p{counter}");
                let n = v.add_oauth(creds(&name).as_bytes(), &src, None).unwrap();
                names.insert(n, (Kind::OAuth, name));
            }
            for op in ops {
                match op {
                    Op::Prepare => {
                        if let Ok(l) = v.prepare(None) {
                            let (kind, name) = &names[&l.slot];
                            prop_assert_eq!(*kind, l.kind);
                            if l.kind == Kind::OAuth {
                                prop_assert_eq!(owner_name(&h.live().unwrap()), Some(name.clone()));
                            }
                        }
                    }
                    Op::Pinned(n) => {
                        if let Ok(l) = v.prepare(Some(&n.to_string())) {
                            prop_assert_eq!(l.slot, n);
                        }
                    }
                    Op::Switch(n) => { let _ = v.switch(&n.to_string()); }
                    Op::Next => { let _ = v.next(); }
                    Op::AddOAuth => {
                        counter += 1;
                        let name = format!("p{counter}");
                        let n = v.add_oauth(creds(&name).as_bytes(), &src, None).unwrap();
                        names.insert(n, (Kind::OAuth, name));
                    }
                    Op::AddApi => {
                        counter += 1;
                        let name = format!("k{counter}");
                        let slot = qwen_rotation::vault::ApiKeySlot {
                            key: qwen_rotation::model::Secret::new(token(&format!("key-{name}"))),
                            base_url: None,
                            model: None,
                            env_key: "OPENAI_API_KEY".into(),
                        };
                        let n = v.add_api_key(&slot, None).unwrap();
                        names.insert(n, (Kind::ApiKey, name));
                    }
                    Op::Remove(n) => {
                        if v.remove(&n.to_string()).is_ok() {
                            let gone = names.remove(&n).unwrap();
                            removed.insert(n + 1000 * removed.len(), gone);
                        }
                    }
                    Op::Disable(n) => { let _ = v.set_enabled(&n.to_string(), false); }
                    Op::Enable(n) => { let _ = v.set_enabled(&n.to_string(), true); }
                    Op::Reset(n) => { let _ = v.reset(n.map(|n| n.to_string()).as_deref()); }
                    Op::Hit(c) => {
                        let cur = h.state().current_index;
                        if names.contains_key(&cur) {
                            v.report(cur, &hit(class(c))).unwrap();
                        }
                    }
                    Op::StaleHit(n, c) => {
                        if names.contains_key(&n) && h.state().current_index != n {
                            let r = v.report(n, &hit(class(c))).unwrap();
                            let switched = matches!(r, Rotation::Switched { .. });
                            prop_assert!(!switched, "a stale report rotated: {:?}", r);
                        }
                    }
                    Op::Refresh => {
                        // qwen refreshes the live login: new access token, same refresh token,
                        // written the way qwen writes (temp + rename).
                        if let Some(who) = h.live().and_then(|t| owner_name(&t)) {
                            generation += 1;
                            let tmp = h.paths.home.join("oauth_creds.json.tmp");
                            write600(&tmp, &refreshed(&who, generation));
                            fs::rename(&tmp, &h.paths.live_creds).unwrap();
                        }
                    }
                    Op::Success => {
                        let cur = h.state().current_index;
                        v.record_success(cur).unwrap();
                    }
                }
                check(&h, &names, &mut removed);
            }
        }
    }
}

#[test]
fn removing_a_reused_slot_number_twice_keeps_both_logins() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    let src = h.dir.path().join("login.json");
    v.remove("2").unwrap();
    assert_eq!(
        v.add_oauth(creds("z").as_bytes(), &src, None).unwrap(),
        2,
        "the number is free again"
    );
    v.remove("2").unwrap();
    let mut kept: Vec<String> = fs::read_dir(h.paths.accounts.join("removed"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    kept.sort();
    let mut want = vec![creds("b"), creds("z")];
    want.sort();
    assert_eq!(kept, want);
}
