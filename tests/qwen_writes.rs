//! qwen's own writes while shims rotate: a writer saves refreshed tokens into the live
//! `oauth_creds.json` exactly as qwen does (QWEN_FACTS.md §0: its `oauth_creds.lock` created
//! with O_CREAT|O_EXCL, the live file read, a temp file written and renamed over it, the lock
//! removed), for whichever account is live, while concurrent shim runs swap accounts under it.
//! No refreshed token may be lost, no file may ever hold a torn or mixed login, and every
//! refresh must end up in its own account's slot.

#[path = "support/sandbox.rs"]
mod sandbox;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/vault_home.rs"]
mod vault_home;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use qwen_rotation::config::Paths;
use sandbox::{Sandbox, output_within};
use vault_home::{account_of, assert_clean, assert_log_matches_state, creds, refreshed};

/// The live account is the owner of the live file (access token `SeCrEt-acc-NAME`, or
/// `SeCrEt-acc-NAME-rN` after a refresh). The prompt `ID x=quota` makes account x fail.
const FAKE: &str = r#"tok=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' "$QWEN_HOME/oauth_creds.json")
acct=${tok#SeCrEt-acc-}; acct=${acct%%-r*}
prompt="$2"
id=${prompt%% *}
case " $prompt " in
  *" $acct=quota "*) echo '[API Error: 429 Free allocated quota exceeded.]' >&2; exit 1 ;;
esac
printf 'answer %s from %s\n' "$id" "$acct""#;

const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];
/// qwen 0.12 takes over a lock older than this (QWEN_FACTS.md §0).
const QWEN_STALE: Duration = Duration::from_secs(10);

/// What the writer saw and did.
#[derive(Debug, Default)]
struct Writes {
    /// Newest generation written per account.
    newest: BTreeMap<String, u32>,
    total: u64,
    /// Times the lock was busy (held by a shim) when the writer wanted it.
    busy: u64,
    /// Torn or mixed live files the writer read (must stay 0).
    torn: Vec<String>,
    /// Locks taken over as stale (must stay 0: a shim holds it for milliseconds).
    stale: u64,
    /// Reads that found an account's login older than the newest refresh written for it: a
    /// refresh was overwritten (must stay empty).
    regressed: Vec<String>,
}

/// One refresh, the way qwen saves one: lock, read, temp + rename, unlock.
fn qwen_save(paths: &Paths, w: &mut Writes, seq: u64) {
    let lock = loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(paths.cli_lock.as_deref().unwrap())
        {
            Ok(mut f) => {
                let _ = f.write_all(format!("qwen-writer-{seq}").as_bytes());
                break f;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                w.busy += 1;
                let old = fs::metadata(paths.cli_lock.as_deref().unwrap())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age >= QWEN_STALE);
                if old {
                    w.stale += 1;
                    let _ = fs::remove_file(paths.cli_lock.as_deref().unwrap());
                }
                // qwen polls its lock; a shim holds it for a few milliseconds.
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) => panic!("qwen's lock: {e}"),
        }
    };
    drop(lock);
    let text = fs::read_to_string(&paths.live_creds).unwrap_or_default();
    match account_of(&text) {
        None => w.torn.push(format!("{} bytes", text.len())),
        Some(who) => {
            // Whenever an account is live, it is live with its newest refresh: installed from
            // its slot after the refresh was synced back there, or never swapped out at all.
            let newest = w.newest.get(&who).copied().unwrap_or(0);
            if generation(&text) != newest {
                w.regressed.push(format!(
                    "{who}: live r{} after r{newest} was saved",
                    generation(&text)
                ));
            }
            let generation = newest + 1;
            let tmp = paths.home.join(format!("oauth_creds.json.tmp.{seq}"));
            fs::write(&tmp, refreshed(&who, generation)).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
            fs::rename(&tmp, &paths.live_creds).unwrap();
            w.newest.insert(who, generation);
            w.total += 1;
        }
    }
    fs::remove_file(paths.cli_lock.as_deref().unwrap())
        .expect("the writer's own lock is still there");
}

/// The generation of a refreshed login (`…-rN`), 0 for the original.
fn generation(text: &str) -> u32 {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let access = v["access_token"].as_str().unwrap();
    access
        .rsplit_once("-r")
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or(0)
}

#[test]
fn qwens_own_token_saves_are_never_lost_while_shims_rotate() {
    const CALLERS: u64 = 8;
    const EACH: u64 = 40;
    let sb = Arc::new(Sandbox::new(FAKE));
    let paths = Paths::at(sb.qwen_home());
    fs::create_dir_all(&paths.accounts).unwrap();
    for d in [&paths.home, &paths.accounts] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    for (n, who) in ACCOUNTS.iter().enumerate() {
        vault_home::write600(&paths.oauth_slot(n + 1), &creds(who));
    }
    // Zero cooldowns: every failure rotates and no account is ever spent.
    vault_home::write600(
        &paths.config,
        "quota_cooldown: 0\nthrottle_cooldown: 0\nmax_attempts: 16\nrelay: false\n",
    );
    let out = sb.run(["-p", "0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let writer = {
        let (stop, writes, paths) = (Arc::clone(&stop), Arc::clone(&writes), paths.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                qwen_save(&paths, &mut writes.lock().unwrap(), seq);
                // A refresh now and then, not a lock held all the time.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // A watcher reads every file we care about, all the time: each read must be one whole
    // login, and slot N must always hold account N's.
    let looks = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, paths, looks) = (Arc::clone(&stop), paths.clone(), Arc::clone(&looks));
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(text) = fs::read_to_string(&paths.live_creds)
                    && account_of(&text).is_none()
                {
                    bad.push("live file".to_string());
                }
                for (n, who) in ACCOUNTS.iter().enumerate() {
                    let text = fs::read_to_string(paths.oauth_slot(n + 1)).unwrap();
                    if account_of(&text).as_deref() != Some(*who) {
                        bad.push(format!("slot {} holds {:?}", n + 1, account_of(&text)));
                    }
                }
                looks.fetch_add(1, Ordering::Relaxed);
            }
            bad
        })
    };

    let barrier = Arc::new(Barrier::new(CALLERS as usize));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (sb, barrier) = (Arc::clone(&sb), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for k in 0..EACH {
                    let id = 1 + c * EACH + k;
                    // Two runs in three fail on one account: the live account changes often.
                    let failing = ACCOUNTS[(id % 4) as usize];
                    let spec = if id.is_multiple_of(3) {
                        String::new()
                    } else {
                        format!("{failing}=quota")
                    };
                    let out = output_within(
                        sb.cmd(["-p".to_string(), format!("{id} {spec}")]),
                        Duration::from_secs(30),
                    );
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert_eq!(out.status.code(), Some(0), "{id} {spec}: {stderr}");
                    assert!(!stderr.contains("warning"), "{id}: {stderr}");
                    assert_clean("stderr", &stderr);
                    let from = stdout
                        .strip_prefix(&format!("answer {id} from "))
                        .and_then(|s| s.strip_suffix('\n'))
                        .unwrap_or_else(|| panic!("{id}: {stdout:?}"));
                    assert!(
                        ACCOUNTS.contains(&from) && (spec.is_empty() || from != failing),
                        "{id} {spec}: {stdout:?}"
                    );
                }
            })
        })
        .collect();
    for c in callers {
        c.join().expect("a caller failed");
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let bad = watcher.join().unwrap();
    let w = writes.lock().unwrap();
    assert!(bad.is_empty(), "torn or mixed files seen: {bad:?}");
    assert!(
        w.torn.is_empty(),
        "the writer read torn live files: {:?}",
        w.torn
    );
    assert_eq!(w.stale, 0, "a shim held qwen's lock for 10 s");
    assert!(
        !paths.cli_lock.as_deref().unwrap().exists(),
        "a lock was left behind"
    );

    // No write lost: each account's newest refresh is in its slot, or still live.
    let live = fs::read_to_string(&paths.live_creds).unwrap();
    let live_who = account_of(&live).unwrap();
    let mut lost = Vec::new();
    for (n, who) in ACCOUNTS.iter().enumerate() {
        let Some(&newest) = w.newest.get(*who) else {
            continue;
        };
        let slot = fs::read_to_string(paths.oauth_slot(n + 1)).unwrap();
        assert_eq!(account_of(&slot).as_deref(), Some(*who), "slot {}", n + 1);
        let kept = generation(&slot) == newest || (live_who == *who && generation(&live) == newest);
        if !kept {
            lost.push(format!(
                "{who}: wrote r{newest}, slot has r{}, live is {live_who} r{}",
                generation(&slot),
                generation(&live)
            ));
        }
    }
    // The next locked step syncs the live account's refresh into its slot too.
    let out = sb.run(["--rotation-next"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let n = ACCOUNTS.iter().position(|a| *a == live_who).unwrap() + 1;
    let slot = fs::read_to_string(paths.oauth_slot(n)).unwrap();
    assert_eq!(slot, live, "the live refresh was synced back into slot {n}");

    let counts = assert_log_matches_state(&paths);
    let log = fs::read_to_string(&paths.log).unwrap();
    assert_clean("rotation.log", &log);
    assert_clean("state.yaml", &fs::read_to_string(&paths.state).unwrap());
    let sync_backs = log.matches("\"event\":\"sync_back\"").count();
    println!(
        "qwen writes: {} runs by {CALLERS} callers in {wall:.2?}; {} rotations; writer saved {} refreshes (newest per account {:?}), found qwen's lock busy {} times; {sync_backs} sync-backs; watcher looked {} times; lost {} at the end, {} overwritten on the way",
        CALLERS * EACH,
        counts.switches,
        w.total,
        w.newest,
        w.busy,
        looks.load(Ordering::Relaxed),
        lost.len(),
        w.regressed.len()
    );
    assert!(lost.is_empty(), "refreshes lost: {lost:#?}");
    assert!(
        w.regressed.is_empty(),
        "refreshes overwritten: {:#?}",
        w.regressed
    );
    assert!(
        counts.switches > 20 && w.total > 100,
        "the test exercised little"
    );
}
