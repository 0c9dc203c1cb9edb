//! Figures for the shared pool on Redis (issue 15, item 6), each against the file pool measured
//! in the same run: the per-run read of the pool (`prepare`'s lock-free path), the rotation
//! step, and 64 concurrent hits spread over four hosts (four homes, one Redis).
//! Run: `cargo bench --bench fleet` (needs redis-server on PATH; prints SKIP without it).
//! The hosts' homes live in a tempdir on the filesystem that holds $TMPDIR (or BENCH_DIR).

#[path = "../tests/support/redis.rs"]
mod redis_server;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use qwen_rotation::config::{Config, Paths};
use qwen_rotation::model::{Class, Hit};
use qwen_rotation::vault::{Rotation, Vault};

/// A home with API-key slots 1..=n (the same keys in every home: one fleet).
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
        let p = paths.api_key_slot(n);
        let doc = format!(
            r#"{{"api_key":"sk-bench-key-{n}-0123456789abcdef","base_url":"http://127.0.0.1:9/v1","model":"m"}}"#
        );
        fs::write(&p, doc).expect("slot");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    (dir, paths)
}

fn config(pool: Option<&str>) -> Config {
    Config {
        pool: pool.map(str::to_string),
        // A throttle that cools for no time: every report is a full rotation step.
        throttle_cooldown: Duration::ZERO,
        pool_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_line(what: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.50);
    println!(
        "{what:<52} n={:<5} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    p50
}

fn bench_prepare(pool: Option<&str>, n: usize) -> Duration {
    let (_dir, paths) = home(4);
    let v = Vault::open(paths, config(pool));
    v.prepare(None).expect("prepare");
    v.prepare(None).expect("prepare");
    let samples = (0..n)
        .map(|_| {
            // A fresh vault per sample, as every run opens one.
            let v = Vault::open(v.paths.clone(), config(pool));
            let t = Instant::now();
            v.prepare(None).expect("prepare");
            t.elapsed()
        })
        .collect();
    let what = match pool {
        None => "prepare(): per-run read, file pool",
        Some(_) => "prepare(): per-run read, Redis pool (local)",
    };
    report_line(what, samples)
}

fn bench_report(pool: Option<&str>, n: usize) -> Duration {
    let (_dir, paths) = home(4);
    let v = Vault::open(paths, config(pool));
    v.prepare(None).expect("prepare");
    let throttle = Hit {
        class: Class::Throttle,
        phrase: "Throttling".into(),
        reset_at: None,
    };
    let samples = (0..n)
        .map(|_| {
            let current = v.prepare(None).expect("prepare").slot;
            let t = Instant::now();
            let r = v.report(current, &throttle).expect("report");
            let spent = t.elapsed();
            assert!(matches!(r, Rotation::Switched { .. }), "{r:?}");
            spent
        })
        .collect();
    let what = match pool {
        None => "report(): rotation step, file pool",
        Some(_) => "report(): rotation step, Redis pool (local)",
    };
    report_line(what, samples)
}

fn bench_concurrent(redis: &redis_server::Redis, pool: Option<&str>, rounds: usize) {
    let hosts_n = if pool.is_some() { 4 } else { 1 };
    let walls = (0..rounds)
        .map(|round| {
            let name = format!("bench{round}");
            let mut c = redis.client();
            redis::cmd("FLUSHALL").query::<()>(&mut c).expect("flush");
            let hosts: Vec<_> = (0..hosts_n).map(|_| home(3)).collect();
            for (_, p) in &hosts {
                let mut cfg = config(pool);
                cfg.pool_name = name.clone();
                Vault::open(p.clone(), cfg).prepare(None).expect("prepare");
            }
            let barrier = Arc::new(Barrier::new(65));
            let handles: Vec<_> = (0..64)
                .map(|t| {
                    let p = hosts[t % hosts_n].1.clone();
                    let b = Arc::clone(&barrier);
                    let mut cfg = config(pool);
                    cfg.pool_name = name.clone();
                    std::thread::spawn(move || {
                        let v = Vault::open(p, cfg);
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
            let switched = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .filter(|r| matches!(r, Rotation::Switched { .. }))
                .count();
            let wall = t.elapsed();
            assert_eq!(switched, 1);
            wall
        })
        .collect();
    let what = match pool {
        None => "64 concurrent hits, 1 host, file pool (wall)",
        Some(_) => "64 concurrent hits, 4 hosts, Redis pool (wall)",
    };
    report_line(what, walls);
}

#[allow(dead_code)] // Without `harness = false` in Cargo.toml, libtest supplies main.
fn main() {
    if !redis_server::installed() {
        println!("SKIP fleet bench: redis-server is not installed");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 50 } else { 500 };
    let redis = redis_server::Redis::start();
    let url = redis.url();
    println!(
        "qwen-rotation shared pool bench (redis-server on 127.0.0.1, homes under {})",
        std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())
    );
    let files = bench_prepare(None, n);
    let shared = bench_prepare(Some(&url), n);
    println!(
        "  added per run by the Redis pool: {:.3} ms p50 (goal ≤ 0.5 ms)",
        (shared.saturating_sub(files)).as_secs_f64() * 1e3
    );
    bench_report(None, n);
    bench_report(Some(&url), n);
    let rounds = if quick { 5 } else { 20 };
    bench_concurrent(&redis, None, rounds);
    bench_concurrent(&redis, Some(&url), rounds);
}
