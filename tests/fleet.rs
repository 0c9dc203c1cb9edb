//! One pool shared by several hosts through a real redis-server (`pool: redis://…`). A "host"
//! is its own qwen home (so hosts share no file lock), all pointing at the same Redis.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use qwen_rotation::config::Config;
use qwen_rotation::error::Error;
use qwen_rotation::model::Class;
use qwen_rotation::vault::state::Status;
use qwen_rotation::vault::{Rotation, Vault};
use redis_server::{Redis, write_private};
use vault_home::*;

const POOL: &str = "qwen-rotation:default:";

/// A host: its own home with API-key slots holding the keys `names` (slot 1 = names[0]…).
fn api_host(names: &[&str]) -> Home {
    let h = Home::new();
    for (i, who) in names.iter().enumerate() {
        h.put_api(i + 1, who);
    }
    h
}

fn pooled(h: &Home, url: &str) -> Vault {
    Vault::open(h.paths.clone(), pool_config(url))
}

/// The pool at `url`. The timeout is generous: these tests are about what the hosts agree on,
/// not about a Redis slowed down by a busy machine (the bound has its own test).
fn pool_config(url: &str) -> Config {
    Config {
        pool: Some(url.to_string()),
        pool_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// The pool's `current` identity and its switch count, as Redis holds them.
fn pool_current(r: &Redis) -> (Option<String>, Option<String>) {
    (
        r.hget(&format!("{POOL}pool"), "current"),
        r.hget(&format!("{POOL}pool"), "switches_total"),
    )
}

fn count(events: &[serde_json::Value], name: &str) -> usize {
    events.iter().filter(|e| e["event"] == name).count()
}

/// No key, value or stream entry in Redis holds key material (every fixture secret carries
/// `SECRET_MARK`).
fn assert_no_secrets_in(r: &Redis) {
    let dump = r.dump("");
    assert!(!dump.is_empty(), "the pool is in Redis");
    for (k, v) in dump {
        assert!(
            !k.contains(SECRET_MARK) && !v.contains(SECRET_MARK),
            "secret material in Redis key {k}"
        );
    }
}

#[test]
fn sixty_four_hits_across_four_hosts_move_the_pool_exactly_one_account() {
    let r = Redis::start();
    // Host 2 holds the same keys under other numbers: accounts are matched by identity.
    let keys: [&[&str]; 4] = [
        &["a", "b", "c"],
        &["b", "a", "c"],
        &["a", "b", "c"],
        &["a", "b", "c"],
    ];
    let hosts = keys.map(api_host);
    let slot_of = |host: usize, key: &str| keys[host].iter().position(|k| *k == key).unwrap() + 1;
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(
            pooled(h, &r.url()).prepare(None).unwrap().slot,
            slot_of(i, "a")
        );
    }
    let barrier = Arc::new(Barrier::new(64));
    let started = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|t| {
            let host = t % hosts.len();
            let paths = hosts[host].paths.clone();
            let url = r.url();
            let b = Arc::clone(&barrier);
            let failed = slot_of(host, "a");
            std::thread::spawn(move || {
                let v = Vault::open(paths, pool_config(&url));
                b.wait();
                (host, v.report(failed, &hit(Class::Quota)).unwrap())
            })
        })
        .collect();
    let results: Vec<(usize, Rotation)> = handles.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("64 hits on 4 hosts → 1 rotation in {:?}", started.elapsed());
    let switched = results
        .iter()
        .filter(|(_, r)| matches!(r, Rotation::Switched { .. }))
        .count();
    assert_eq!(switched, 1, "{results:?}");
    // Every host moved to the one key the winner picked (its own next one).
    let to_key = |host: usize, rot: &Rotation| match rot {
        Rotation::Switched { to, .. } | Rotation::AlreadyRotated { to } => keys[host][to - 1],
        other => panic!("host {host}: {other:?}"),
    };
    let next = to_key(results[0].0, &results[0].1);
    assert_ne!(next, "a");
    for (host, rot) in &results {
        assert_eq!(to_key(*host, rot), next, "host {host}: {rot:?}");
    }
    let events = r.events("default");
    assert_eq!(count(&events, "account_switch"), 1, "{events:#?}");
    assert_eq!(count(&events, "cooldown"), 1, "{events:#?}");
    assert_eq!(pool_current(&r).1.as_deref(), Some("1"));
    // Every host's next run uses that key, and sees key "a" cooling down.
    for (i, h) in hosts.iter().enumerate() {
        let v = pooled(h, &r.url());
        assert_eq!(v.prepare(None).unwrap().slot, slot_of(i, next), "host {i}");
        let o = v.overview().unwrap();
        assert_eq!(
            o.state.accounts[&slot_of(i, "a")].status,
            Status::CoolingDown
        );
        assert_eq!(o.state.accounts[&slot_of(i, "a")].hits.quota, 1);
        h.assert_no_secrets_in_our_files();
    }
    assert_no_secrets_in(&r);
}

#[test]
fn a_cooldown_set_on_host_a_is_skipped_by_host_b_on_its_next_run() {
    let r = Redis::start();
    let (a, b) = (api_host(&["a", "b"]), api_host(&["a", "b"]));
    assert_eq!(pooled(&b, &r.url()).prepare(None).unwrap().slot, 1);
    let va = pooled(&a, &r.url());
    assert_eq!(va.prepare(None).unwrap().slot, 1);
    assert_eq!(
        va.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    // Host B never saw key 1 fail: its next run goes straight to key 2.
    let launch = pooled(&b, &r.url()).prepare(None).unwrap();
    assert_eq!(launch.slot, 2);
    // B's own files follow the pool (a later run without Redis starts from here).
    assert_eq!(b.state().current_index, 2);
    assert_eq!(b.state().accounts[&1].status, Status::CoolingDown);
    // The cooldown is a key with a TTL in Redis.
    let mut c = r.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{POOL}cooldown:*"))
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut c).unwrap();
    assert!(ttl > 4 * 3600 * 1000 && ttl <= 5 * 3600 * 1000, "{ttl}");
    // An operator who deletes the key releases the account on every host.
    redis::cmd("DEL").arg(&keys[0]).query::<()>(&mut c).unwrap();
    let o = pooled(&b, &r.url()).overview().unwrap();
    assert_eq!(o.state.accounts[&1].status_at(o.now), Status::Healthy);
    assert_no_secrets_in(&r);
}

#[test]
fn every_account_spent_on_one_host_exits_75_on_every_host_naming_the_earliest_reset() {
    let r = Redis::start();
    let hosts = [
        api_host(&["a", "b"]),
        api_host(&["a", "b"]),
        api_host(&["a", "b"]),
    ];
    let v = pooled(&hosts[0], &r.url());
    v.prepare(None).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    let Rotation::Exhausted {
        earliest: Some(earliest),
    } = v.report(2, &hit(Class::Quota)).unwrap()
    else {
        panic!("both keys spent")
    };
    let shown = earliest.format("%H:%M").to_string();
    for h in &hosts {
        match pooled(h, &r.url()).prepare(None) {
            Err(Error::Exhausted { earliest: e }) => assert_eq!(e, Some(earliest)),
            other => panic!("{other:?}"),
        }
        let out = run_shim(h, &r.url(), &[], &["-p", "hi"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{err}");
        assert!(
            err.contains("all accounts exhausted; the first one returns at")
                && err.contains(&shown),
            "{err}"
        );
    }
}

/// A fake qwen that writes its environment to `env.txt` in the host's directory.
fn fake_qwen(h: &Home) -> std::path::PathBuf {
    let path = h.dir.path().join("fake-qwen");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nenv > '{}'\necho answer\n",
            h.dir.path().join("env.txt").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs the shim on host `h` with the pool in the environment (plus `env`).
fn run_shim(h: &Home, url: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = h.cmd(args);
    cmd.env("QWEN_ROTATION_REAL", fake_qwen(h))
        .env("QWEN_ROTATION_POOL", url)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the shim");
    secrets::assert_clean("stdout", &out.stdout);
    secrets::assert_clean("stderr", &out.stderr);
    out
}

#[test]
fn a_password_and_an_acl_user_are_honoured_and_a_wrong_one_is_told_and_the_run_goes_on() {
    let r = Redis::start_with(
        &[
            "--requirepass",
            "s3cret-pw",
            "--user",
            "fleet",
            "on",
            ">fleet-pw",
            "~qwen-rotation:*",
            "+hget",
            "+hset",
            "+hmget",
            "+hgetall",
            "+hincrby",
            "+exists",
            "+set",
            "+del",
            "+xadd",
            "+xrange",
            "+evalsha",
            "+eval",
            "--user",
            "weak",
            "on",
            ">weak-pw",
            "~qwen-rotation:*",
            "+hget",
            "+evalsha",
            "+eval",
        ],
        &["s3cret-pw"],
    );
    let h = api_host(&["a", "b"]);
    let base = format!("127.0.0.1:{}/0", r.port);
    // The password in the URL.
    let out = run_shim(
        &h,
        &format!("redis://:s3cret-pw@{base}"),
        &[],
        &["-p", "hi"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(r.hlen(&format!("{POOL}accounts")), 2);
    // From QWEN_ROTATION_POOL_PASSWORD, and from a file, for the ACL user.
    let out = run_shim(
        &h,
        &format!("redis://fleet@{base}"),
        &[("QWEN_ROTATION_POOL_PASSWORD", "fleet-pw")],
        &["--rotation-status"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Pool: redis://***@{base} (default).")),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = h.dir.path().join("pool-password");
    write_private(&file, "fleet-pw\n");
    let out = run_shim(
        &h,
        &format!("redis://fleet@{base}"),
        &[("QWEN_ROTATION_POOL_PASSWORD_FILE", file.to_str().unwrap())],
        &["--rotation-doctor"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pool: redis://***@{base} (default)")),
        "{text}"
    );
    assert!(!text.contains("cannot be used"), "{text}");
    // A wrong password: one clear line, no password shown, and qwen still runs (local state).
    let out = run_shim(&h, &format!("redis://:wrong-pw@{base}"), &[], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("the shared pool redis://***@{base} (default) cannot be used: it refused the user or password")),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"), "{err}");
    let out = run_shim(
        &h,
        &format!("redis://:wrong-pw@{base}"),
        &[],
        &["--rotation-doctor"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("it refused the user or password"), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");
    // A user without the commands the pool needs.
    let out = run_shim(
        &h,
        &format!("redis://weak:weak-pw@{base}"),
        &[],
        &["-p", "hi"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("its user may not run the commands the pool needs"),
        "{err}"
    );
    // No password at all against a server that wants one.
    let out = run_shim(&h, &format!("redis://{base}"), &[], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("it asks for a password"), "{err}");
}

#[test]
fn qwen_never_sees_the_pool_variables() {
    let r = Redis::start_with(&["--requirepass", "pw-in-env"], &["pw-in-env"]);
    let h = api_host(&["a"]);
    let env = [
        ("QWEN_ROTATION_POOL_NAME", "team"),
        ("QWEN_ROTATION_POOL_PASSWORD", "pw-in-env"),
    ];
    for extra in [None, Some(("QWEN_ROTATION", "off"))] {
        let mut all = env.to_vec();
        all.extend(extra);
        let out = run_shim(&h, &r.url(), &all, &["-p", "hi"]);
        assert_eq!(out.status.code(), Some(0));
        let seen = fs::read_to_string(h.dir.path().join("env.txt")).unwrap();
        assert!(!seen.contains("QWEN_ROTATION_POOL"), "{seen}");
        assert!(!seen.contains("pw-in-env"), "{seen}");
    }
    // The pool's name is its key prefix.
    assert_eq!(r.hlen("qwen-rotation:team:accounts"), 1);
}

#[test]
fn a_bad_url_is_one_clear_line_and_the_run_goes_on() {
    let h = api_host(&["a"]);
    let out = run_shim(&h, "http://user:pw@example.com/", &[], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not a Redis URL; write it as redis://[user:password@]host:port/db"),
        "{err}"
    );
    assert!(!err.contains(":pw@"), "{err}");
}

#[test]
fn redis_killed_in_the_middle_of_rotations_loses_nothing_and_a_restarted_empty_redis_is_rebuilt() {
    let mut r = Redis::start();
    let hosts = [Home::with_oauth(3), Home::with_oauth(3)];
    for h in &hosts {
        pooled(h, &r.url()).prepare(None).unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = hosts
        .iter()
        .flat_map(|h| [h.paths.clone(), h.paths.clone()])
        .map(|paths| {
            let url = r.url();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut done = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || done < 10 {
                    // A fresh vault per round, as a fresh run would have.
                    let v = Vault::open(paths.clone(), pool_config(&url));
                    v.next().expect("a switch works with or without Redis");
                    done += 1;
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    r.kill();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(rounds.iter().all(|n| *n >= 10), "{rounds:?}");
    for h in &hosts {
        // Every slot still holds its own account, and the live file one whole login.
        for n in 1..=3 {
            assert_eq!(account_of(&h.slot(n).unwrap()), Some(name(n)), "slot {n}");
        }
        let live = account_of(&h.live().unwrap()).expect("a whole login is live");
        let st = h.state();
        assert_eq!(name(st.live_slot.unwrap()), live);
        h.assert_no_secrets_in_our_files();
    }
    // Redis is back, empty: the next runs rebuild the pool from the hosts' slots.
    r.restart();
    let v = pooled(&hosts[0], &r.url());
    let launch = v.prepare(None).unwrap();
    assert_eq!(r.hlen(&format!("{POOL}accounts")), 3);
    assert_eq!(
        pool_current(&r).0,
        Some(format!("slot:{}", launch.slot)),
        "the host's live account becomes the pool's"
    );
    // And a rotation on one host is seen by the other again.
    assert!(matches!(
        v.report(launch.slot, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { .. }
    ));
    let now_current = pooled(&hosts[0], &r.url()).prepare(None).unwrap().slot;
    assert_eq!(
        pooled(&hosts[1], &r.url()).prepare(None).unwrap().slot,
        now_current
    );
    assert_no_secrets_in(&r);
}

#[test]
fn stats_and_log_read_the_fleet_s_events() {
    let r = Redis::start();
    let (a, b) = (api_host(&["a", "b"]), api_host(&["a", "b"]));
    let va = pooled(&a, &r.url());
    va.prepare(None).unwrap();
    va.report(1, &hit(Class::Quota)).unwrap();
    // Host B's log shows host A's switch.
    let out = run_shim(&b, &r.url(), &[], &["--rotation-log", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("account_switch"), "{text}");
    assert!(
        !b.log_text().contains("account_switch"),
        "not from B's own file"
    );
}

#[test]
fn a_redis_that_never_answers_costs_one_timeout_and_the_run_goes_on() {
    // Accepts connections (the kernel's backlog) and never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/0",
        silent.local_addr().unwrap().port()
    );
    let h = api_host(&["a", "b"]);
    let c = Config {
        pool: Some(url.clone()),
        ..Config::default()
    };
    assert_eq!(c.pool_timeout, Duration::from_millis(100), "the default");
    let v = Vault::open(h.paths.clone(), c);
    let started = Instant::now();
    assert_eq!(v.prepare(None).unwrap().slot, 1);
    assert_eq!(
        v.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    let spent = started.elapsed();
    let files = api_host(&["a", "b"]);
    let started = Instant::now();
    files.vault().prepare(None).unwrap();
    files.vault().report(1, &hit(Class::Quota)).unwrap();
    eprintln!(
        "prepare and a rotation against a silent Redis: {spent:?} (files only: {:?})",
        started.elapsed()
    );
    // One timeout (100 ms), then the local files for the rest of the process; a generous
    // bound for a loaded machine, far below what a second timeout per call would add up to.
    assert!(spent < Duration::from_secs(2), "{spent:?}");
    assert_eq!(
        h.state().current_index,
        2,
        "the rotation went to the local files"
    );
    let out = run_shim(&h, &url, &[], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot be used: no answer within 100 ms; this run uses the local state"),
        "{err}"
    );
}

/// A slow network in front of a real server: every chunk the server sends is held back
/// `delay` before it reaches the client. Counts the chunks it passed on.
struct SlowLink {
    port: u16,
    answers: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowLink {
    fn start(server_port: u16, delay: Duration) -> SlowLink {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = answers.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                let (mut s_in, mut c_out) = (server, client);
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // The slow network itself, not a wait for something to happen.
                        std::thread::sleep(delay);
                        counted.fetch_add(1, Ordering::SeqCst);
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SlowLink { port, answers }
    }

    fn answers(&self) -> usize {
        self.answers.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_slow_redis_costs_a_run_at_most_twice_the_timeout_in_all() {
    let r = Redis::start();
    // A 1 s timeout (a budget of 2 s) and every answer 700 ms late: each command alone is
    // within the timeout, with room for a busy machine, but a run's exchange (two round trips
    // for the read on a server that has not seen the script, then a first commit of a new
    // pool) would add up to more than the budget.
    let slow = SlowLink::start(r.port, Duration::from_millis(700));
    let url = format!("redis://127.0.0.1:{}/0", slow.port);
    let h = api_host(&["a", "b"]);
    fs::write(&h.paths.config, "pool_timeout: 1s\n").unwrap();
    let out = run_shim(&h, &url, &[], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "cannot be used: its answers took more than 2000 ms in all; this run uses the local state"
        ),
        "{err}"
    );
    // Two answers (1.4 s) fit the budget; the third gets the 0.6 s left and no more.
    assert!(slow.answers() <= 3, "{} answers waited for", slow.answers());
    // A Redis at full speed is used again by the next run.
    let out = run_shim(&h, &r.url(), &[], &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pool_current(&r).0.is_some(), "the pool is in Redis");
}

#[test]
fn a_key_spent_on_host_a_is_not_asked_again_by_host_b_s_running_relay() {
    use qwen_rotation::detect::Patterns;
    use qwen_rotation::relay::{Relay, Setup};
    let mock = mock::Mock::start();
    let r = Redis::start();
    let keys = [token("key-relay1-ok"), token("key-relay2-ok")];
    let hosts = [Home::new(), Home::new()];
    for h in &hosts {
        for (i, k) in keys.iter().enumerate() {
            let doc = serde_json::json!({"api_key": k, "base_url": mock.base_url(), "model": "mock-model"});
            write600(&h.paths.api_key_slot(i + 1), &doc.to_string());
        }
    }
    // Host B's run is under way on key 1, its relay in qwen's path.
    let vb = pooled(&hosts[1], &r.url());
    let launch = vb.prepare(None).unwrap();
    assert_eq!(launch.slot, 1);
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    let relay = Relay::start(Setup {
        vault: vb,
        patterns: Patterns::defaults(),
        launch,
        notify: Box::new(move |line| sink.lock().unwrap().push(line)),
        login_base: None,
    })
    .expect("relay starts");
    // Host A finds key 1 spent.
    let va = pooled(&hosts[0], &r.url());
    va.prepare(None).unwrap();
    assert_eq!(
        va.report(1, &hit(Class::Quota)).unwrap(),
        Rotation::Switched { from: 1, to: 2 }
    );
    // Host B's next request goes straight to key 2.
    let answer = ureq::post(&format!("{}/chat/completions", relay.base_url))
        .header("Authorization", &format!("Bearer {}", relay.token.expose()))
        .header("Content-Type", "application/json")
        .send(
            serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .expect("an answer")
        .into_body()
        .read_to_string()
        .unwrap();
    // (The mock quotes the key without the fixture mark, so no secret reaches an output.)
    assert!(
        answer.contains(&format!("REPLY-FROM-{}", secrets::unmarked(&keys[1]))),
        "{answer}"
    );
    assert_eq!(
        mock.tokens(),
        vec![secrets::unmarked(&keys[1]).to_string()],
        "key 1 was not asked"
    );
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains("the shared pool moved on from account 1; switched to account 2"),
        "{said}"
    );
    assert!(!said.contains(SECRET_MARK), "{said}");
}

#[test]
fn rediss_verifies_the_server_against_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (r, ca) = Redis::start_tls(dir.path());
    let h = api_host(&["a", "b"]);
    let url = format!("rediss://localhost:{}/0", r.port);
    // The test CA is trusted through SSL_CERT_FILE (read with the system's roots).
    let ca_env = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let out = run_shim(&h, &url, &ca_env, &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    let out = run_shim(&h, &url, &ca_env, &["--rotation-doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("pool: {url} (default)")), "{text}");
    assert!(!text.contains("cannot be used"), "{text}");
    // A server whose certificate no trusted root signed is refused, and the run goes on.
    let out = run_shim(&h, &url, &[("SSL_CERT_FILE", "/dev/null")], &["-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("cannot be used") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn doctor_tells_a_host_whose_accounts_differ_from_the_pool_s() {
    let r = Redis::start();
    let (a, b) = (api_host(&["a", "b"]), api_host(&["a", "c"]));
    pooled(&a, &r.url()).prepare(None).unwrap();
    let out = run_shim(&b, &r.url(), &[], &["--rotation-doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("this host's accounts differ from the pool's"),
        "{text}"
    );
    assert!(text.contains("this host has account 2 (key:"), "{text}");
    assert!(text.contains("that the pool does not know yet"), "{text}");
    assert!(text.contains("the pool has key:"), "{text}");
    assert!(text.contains("give every host the same accounts"), "{text}");
    // Host A, with the pool's accounts, is told nothing of the kind.
    let out = run_shim(&a, &r.url(), &[], &["--rotation-doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("differ from the pool"), "{text}");
}
