//! Start-up and relay cost of the shim, against baselines measured in the same run.
//!
//! - wall time of a trivial child (`/bin/true`) run directly, through a `#!/bin/sh` exec wrapper
//!   (the baseline), through the shim's fast path (`QWEN_ROTATION=0`, or no accounts: it execs
//!   the real qwen) and its watched path (one OAuth account, headless), interleaved, with the
//!   goals against the wrapper (fast <= 1.1x, watched <= 1.5x);
//! - relay throughput: `generator | shim | sink` (the shim relays generator's stdout) versus
//!   `generator | cat | sink`, where generator writes 1 GiB.
//!
//! Prints figures and ratios; targets are in docs/PERFORMANCE.md. Not a pass/fail test.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
    // Warm the watched path once (first run installs the live file).
    shim("/bin/true", &account_home, &[]).status().unwrap();
    startup(dir.path(), runs, &empty_home, &account_home);
    real_qwen_version(&empty_home, &account_home);

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
    report_relay(c, s, gib);
    quota_to_retry(dir.path());
}

/// Start-up through PATH, as a user has it: `bin/qwen` is the shim and `real/qwen` the trivial
/// child (`/bin/true`), against the baseline any wrapper is measured by: `#!/bin/sh` + `exec
/// /bin/true "$@"`. All rows run interleaved, so a drift of the machine hits them alike. With
/// `BENCH_SHIM_BEFORE=/path/to/another/build` that build's rows run in the same loop (before and
/// after a change in one run).
fn startup(dir: &Path, runs: usize, empty_home: &Path, account_home: &Path) {
    let real = dir.join("real");
    fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink("/bin/true", real.join("qwen")).unwrap();
    let wrapper = dir.join("wrapper/qwen");
    fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    fs::write(&wrapper, "#!/bin/sh\nexec /bin/true \"$@\"\n").unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut shims = vec![("", PathBuf::from(SHIM))];
    if let Some(before) = std::env::var_os("BENCH_SHIM_BEFORE") {
        shims.push(("before: ", PathBuf::from(before)));
    }
    for (n, (_, build)) in shims.iter().enumerate() {
        let bin = dir.join(format!("bin{n}"));
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(build, bin.join("qwen")).unwrap();
    }
    let on_path = |n: usize, home: &Path| {
        let mut c = Command::new(dir.join(format!("bin{n}/qwen")));
        c.args(["-p", "hi"])
            .env(
                "PATH",
                format!(
                    "{}:{}:/usr/bin:/bin",
                    dir.join(format!("bin{n}")).display(),
                    real.display()
                ),
            )
            .env("HOME", home)
            .env("QWEN_HOME", home.join(".qwen"))
            .env_remove("QWEN_ROTATION_REAL")
            .env_remove("QWEN_ROTATION")
            .stderr(Stdio::null());
        c
    };
    // (label, goal against the wrapper, command)
    type Row<'a> = (String, &'static str, Box<dyn Fn() -> Command + 'a>);
    let mut rows: Vec<Row> = vec![
        (
            "direct /bin/true".into(),
            "",
            Box::new(|| Command::new("/bin/true")),
        ),
        (
            "sh exec wrapper".into(),
            "",
            Box::new(|| {
                let mut c = Command::new(&wrapper);
                c.args(["-p", "hi"]);
                c
            }),
        ),
    ];
    for (n, (tag, _)) in shims.iter().enumerate() {
        rows.push((
            format!("{tag}fast path, QWEN_ROTATION=0"),
            "<= 1.1x",
            Box::new(move || {
                let mut c = on_path(n, account_home);
                c.env("QWEN_ROTATION", "0");
                c
            }),
        ));
        rows.push((
            format!("{tag}fast path, no accounts"),
            "<= 1.1x",
            Box::new(move || on_path(n, empty_home)),
        ));
        rows.push((
            format!("{tag}watched path (OAuth, headless)"),
            "<= 1.5x",
            Box::new(move || on_path(n, account_home)),
        ));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); rows.len()];
    for _ in 0..runs {
        for (row, t) in rows.iter().zip(times.iter_mut()) {
            t.push(time((row.2)()));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    let wrapper_time = medians[1];
    println!("start-up through PATH, trivial child, {runs} interleaved runs each (median):");
    println!("  {:<40} {:>8}   {:>8}   goal", "", "", "/wrapper");
    for ((label, goal, _), m) in rows.iter().zip(&medians) {
        println!(
            "  {label:<40} {:>6.3} ms   {:>7.2}x   {goal}",
            ms(*m),
            ratio(*m, wrapper_time)
        );
    }
}

/// From the moment a (fake) qwen prints a quota error to the moment the retry starts: the
/// detection, stopping the attempt's tree, the rotation step (fsyncs), and the next spawn.
fn quota_to_retry(dir: &Path) {
    let fake = dir.join("quota-then-ok");
    fs::write(
        &fake,
        "#!/bin/sh\nif [ ! -e \"$RUN/first\" ]; then : > \"$RUN/first\"; date +%s%N > \"$RUN/t_quota\"\n\
         echo '[API Error: 429 Free allocated quota exceeded.]' >&2; exec sleep 30\n\
         else date +%s%N > \"$RUN/t_retry\"; fi\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let mut gaps = Vec::new();
    for i in 0..20 {
        let run = dir.join(format!("run{i}"));
        let accounts = run.join(".qwen/accounts");
        fs::create_dir_all(&accounts).unwrap();
        for p in [run.join(".qwen"), accounts.clone()] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        }
        for n in 1..=2 {
            let slot = accounts.join(format!("oauth_creds_{n}.json"));
            fs::write(&slot, format!(r#"{{"access_token":"t{n}","refresh_token":"r{n}","token_type":"Bearer","expiry_date":4102444800000}}"#)).unwrap();
            fs::set_permissions(&slot, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let status = shim(fake.to_str().unwrap(), &run, &[])
            .env("RUN", &run)
            .status()
            .unwrap();
        assert!(status.success());
        let read = |f: &str| -> u128 {
            fs::read_to_string(run.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        gaps.push(Duration::from_nanos(
            (read("t_retry") - read("t_quota")) as u64,
        ));
    }
    let p50 = median(&mut gaps);
    let p95 = gaps[gaps.len() * 95 / 100];
    println!(
        "quota message -> retry started (fake qwen, 20 runs, qwen home on {}):",
        fs_kind(dir)
    );
    println!(
        "  p50 {:>7.1} ms   p95 {:>7.1} ms   (target < 100 ms plus qwen's start-up)",
        ms(p50),
        ms(p95)
    );
}

fn fs_kind(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn report_relay(c: Duration, s: Duration, gib: u64) {
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

/// The same comparison with the real qwen's cheapest call, `qwen --version`, when the pinned
/// 0.24.4 is installed (.ci/install-qwen): the overhead a user actually pays.
fn real_qwen_version(empty_home: &Path, account_home: &Path) {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/qwen/0.24.4/bin/qwen");
    if !real.exists() {
        println!("real qwen --version: skipped (run .ci/install-qwen to include it)");
        return;
    }
    let real = real.to_str().unwrap_or_default().to_string();
    let (mut direct, mut fast, mut relay) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..30 {
        direct.push(time({
            let mut c = Command::new(&real);
            c.arg("--version").env("HOME", empty_home);
            c
        }));
        fast.push(time(shim(&real, empty_home, &["--version"])));
        relay.push(time(shim(&real, account_home, &["--version"])));
    }
    let (d, f, r) = (median(&mut direct), median(&mut fast), median(&mut relay));
    println!("real qwen 0.24.4 --version, 30 interleaved runs each (median):");
    println!("  direct       {:>8.2} ms", ms(d));
    println!(
        "  fast path    {:>8.2} ms   {:.2}x direct",
        ms(f),
        ratio(f, d)
    );
    println!(
        "  relay path   {:>8.2} ms   {:.2}x direct",
        ms(r),
        ratio(r, d)
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
