//! Start-up and relay cost of the shim, against baselines measured in the same run.
//!
//! - wall time of a trivial child (`/bin/true`) run directly, through the exec fast path (no
//!   accounts), and through the relay path (one account configured), interleaved;
//! - relay throughput: `generator | shim | sink` (the shim relays generator's stdout) versus
//!   `generator | cat | sink`, where generator writes 1 GiB.
//!
//! Prints figures and ratios; targets are in docs/PERFORMANCE.md. Not a pass/fail test.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_qwen");

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let gib: u64 = std::env::var("BENCH_RELAY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);

    let empty_home = dir.path().join("empty");
    let account_home = dir.path().join("accounts");
    fs::create_dir_all(empty_home.join(".qwen")).unwrap();
    fs::create_dir_all(account_home.join(".qwen/accounts")).unwrap();
    fs::write(
        account_home.join(".qwen/accounts/oauth_creds_1.json"),
        r#"{"access_token":"bench","refresh_token":"bench-r","token_type":"Bearer","expiry_date":4102444800000}"#,
    )
    .unwrap();
    for p in [
        account_home.join(".qwen"),
        account_home.join(".qwen/accounts"),
    ] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::set_permissions(
        account_home.join(".qwen/accounts/oauth_creds_1.json"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Warm the relay path once (first run installs the live file).
    shim("/bin/true", &account_home, &[]).status().unwrap();

    let mut direct = Vec::with_capacity(runs);
    let mut fast = Vec::with_capacity(runs);
    let mut relay = Vec::with_capacity(runs);
    for _ in 0..runs {
        direct.push(time(Command::new("/bin/true")));
        fast.push(time(shim("/bin/true", &empty_home, &[])));
        relay.push(time(shim("/bin/true", &account_home, &[])));
    }
    let (d, f, r) = (median(&mut direct), median(&mut fast), median(&mut relay));
    println!("start-up, trivial child, {runs} interleaved runs each (median):");
    println!("  direct       {:>8.3} ms", ms(d));
    println!(
        "  fast path    {:>8.3} ms   {:.2}x direct (target <= 1.3x)",
        ms(f),
        ratio(f, d)
    );
    println!(
        "  relay path   {:>8.3} ms   {:.2}x direct (target <= 1.5x)",
        ms(r),
        ratio(r, d)
    );

    let generator = dir.path().join("gen");
    fs::write(
        &generator,
        format!("#!/bin/sh\nexec head -c {} /dev/zero\n", gib << 20),
    )
    .unwrap();
    fs::set_permissions(&generator, fs::Permissions::from_mode(0o755)).unwrap();
    let mut via_cat = Vec::new();
    let mut via_shim = Vec::new();
    for _ in 0..3 {
        via_cat.push(pipeline_through_cat(&generator));
        via_shim.push(sink(shim(generator.to_str().unwrap(), &account_home, &[])));
    }
    let (c, s) = (median(&mut via_cat), median(&mut via_shim));
    let mib = gib as f64;
    println!("relay throughput, {gib} MiB of stdout (median of 3):");
    println!(
        "  generator | cat  | sink   {:>8.0} MiB/s",
        mib / c.as_secs_f64()
    );
    println!(
        "  generator | shim | sink   {:>8.0} MiB/s   {:.2}x cat (target >= 0.5x)",
        mib / s.as_secs_f64(),
        c.as_secs_f64() / s.as_secs_f64()
    );
}

fn shim(real: &str, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(SHIM);
    c.args(args)
        .env("QWEN_ROTATION_REAL", real)
        .env("HOME", home)
        .env("QWEN_HOME", home.join(".qwen"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn time(mut c: Command) -> Duration {
    let start = Instant::now();
    let status = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
    start.elapsed()
}

fn sink(mut c: Command) -> Duration {
    let start = Instant::now();
    let mut child = c.stdout(Stdio::piped()).spawn().expect("spawn");
    drain(child.stdout.take().expect("stdout"));
    assert!(child.wait().expect("wait").success());
    start.elapsed()
}

fn pipeline_through_cat(generator: &Path) -> Duration {
    let start = Instant::now();
    let mut producer = Command::new(generator)
        .stdout(Stdio::piped())
        .spawn()
        .expect("gen");
    let mut cat = Command::new("cat")
        .stdin(producer.stdout.take().expect("generator stdout"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat");
    drain(cat.stdout.take().expect("cat stdout"));
    producer.wait().expect("gen");
    cat.wait().expect("cat");
    start.elapsed()
}

fn drain(mut r: impl Read) -> u64 {
    let mut buf = vec![0u8; 1 << 17];
    let mut n = 0;
    while let Ok(k) = r.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    n
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
