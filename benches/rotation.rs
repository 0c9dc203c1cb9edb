//! Figures for the vault (issue 4, item 8): the rotation step with fsyncs on, state load/save,
//! the lock-free `prepare` every run pays, and 64 concurrent hits on one account.
//! Run: `cargo bench --bench rotation` (Cargo.toml: `[[bench]] name = "rotation" harness = false`).
//! Writes into a tempdir on the filesystem that holds $TMPDIR (or BENCH_DIR when set).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use qwen_rotation::config::{Config, Paths};
use qwen_rotation::files;
use qwen_rotation::model::{Class, Hit};
use qwen_rotation::vault::state::State;
use qwen_rotation::vault::{Rotation, Vault};

fn creds(name: &str) -> String {
    format!(
        r#"{{"access_token":"acc-{name}","refresh_token":"ref-{name}","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}}"#
    )
}

fn home(slots: usize) -> (tempfile::TempDir, Paths) {
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let paths = Paths::at(dir.path().join(".qwen"));
    fs::create_dir_all(&paths.accounts).expect("accounts");
    for d in [&paths.home, &paths.accounts] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    for n in 1..=slots {
        let p = paths.oauth_slot(n);
        fs::write(&p, creds(&format!("s{n}"))).expect("slot");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    (dir, paths)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<44} n={:<5} p50 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// A config whose throttle cooldown is zero: every report is a full rotation step (lock,
/// sync-back check, live file swap under qwen's lock, state, log) and the pool never runs dry.
fn endless() -> Config {
    Config {
        throttle_cooldown: Duration::ZERO,
        ..Config::default()
    }
}

fn bench_report(iterations: usize) {
    let (_dir, paths) = home(4);
    let v = Vault::open(paths.clone(), endless());
    v.prepare(None).expect("prepare");
    let throttle = Hit {
        class: Class::Throttle,
        phrase: "Throttling".into(),
        reset_at: None,
    };
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let current = v.prepare(None).expect("prepare").slot;
        let t = Instant::now();
        let r = v.report(current, &throttle).expect("report");
        samples.push(t.elapsed());
        assert!(matches!(r, Rotation::Switched { .. }), "{r:?}");
    }
    report_line("report(): rotation step, fsyncs on", samples);
    let switches = qwen_rotation::vault::audit::count_switches(&paths.log).expect("log");
    assert_eq!(switches, iterations);
}

fn bench_prepare(iterations: usize) {
    let (_dir, paths) = home(4);
    let v = Vault::open(paths, Config::default());
    v.prepare(None).expect("prepare");
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        v.prepare(None).expect("prepare");
        samples.push(t.elapsed());
    }
    report_line("prepare(): steady state (no lock, no write)", samples);
}

fn bench_state(iterations: usize) {
    let (_dir, paths) = home(10);
    let v = Vault::open(paths.clone(), Config::default());
    v.prepare(None).expect("prepare");
    v.reset(None).expect("reset");
    let mut load = Vec::with_capacity(iterations);
    let mut save = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let qwen_rotation::vault::state::Loaded::Ok(st) = State::load(&paths.state) else {
            panic!("state")
        };
        load.push(t.elapsed());
        let t = Instant::now();
        files::write_atomic(&paths.state, st.to_yaml().as_bytes()).expect("save");
        save.push(t.elapsed());
    }
    report_line("state.yaml load (10 accounts)", load);
    report_line("state.yaml save (10 accounts, atomic + fsync)", save);
}

fn bench_concurrent(rounds: usize) {
    let mut walls = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (_dir, paths) = home(3);
        Vault::open(paths.clone(), Config::default())
            .prepare(None)
            .expect("prepare");
        let barrier = Arc::new(Barrier::new(65));
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let b = Arc::clone(&barrier);
                let p = paths.clone();
                std::thread::spawn(move || {
                    let v = Vault::open(p, Config::default());
                    let quota = Hit {
                        class: Class::Quota,
                        phrase: "insufficient_quota".into(),
                        reset_at: None,
                    };
                    b.wait();
                    v.report(1, &quota).expect("report")
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<Rotation> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        walls.push(t.elapsed());
        let switched = results
            .iter()
            .filter(|r| matches!(r, Rotation::Switched { .. }))
            .count();
        assert_eq!(switched, 1);
        assert_eq!(
            qwen_rotation::vault::audit::count_switches(&paths.log).expect("log"),
            1
        );
    }
    report_line("64 concurrent hits -> 1 rotation (wall)", walls);
}

#[allow(dead_code)] // Without `harness = false` in Cargo.toml, libtest supplies main.
fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 50 } else { 500 };
    println!(
        "qwen-rotation vault bench (tempdir under {})",
        std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())
    );
    bench_report(n);
    bench_prepare(n * 4);
    bench_state(n);
    bench_concurrent(if quick { 5 } else { 20 });
}
