//! The interactive relay (src/pty.rs) against util-linux `script`, each on a pseudo-terminal the
//! bench opens (as a terminal emulator would), measured in the same run:
//!
//! - throughput: a child prints N MiB of 80-column text (`yes … | head -c N`); the bench reads
//!   the terminal until EIO. Direct (the child on the bench's terminal), `script -q -c CMD
//!   /dev/null`, and the shim's relay path (one account configured, so the detector reads every
//!   byte too). Runs are interleaved; the median of 5 is shown, with the CPU time of the whole
//!   process tree (getrusage(RUSAGE_CHILDREN)) and, minus the direct run's, the relay's own.
//! - keystroke echo latency: the child puts its terminal in raw mode and echoes with `cat`, as a
//!   full-screen client (qwen's Ink) does; the bench writes one byte and times until it is back.
//!
//! Prints a table with ratios; targets are in docs/PERFORMANCE.md (throughput >= 0.9x script,
//! < 1 ms added latency). Env: BENCH_PTY_MIB (default 64), BENCH_PTY_KEYS (default 2000).
//! Wall-clock figures need an idle machine; the CPU columns hold up better on a busy one.

#[path = "../tests/support/pty.rs"]
mod tty;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::libc;

const SHIM: &str = env!("CARGO_BIN_EXE_qwen");
const ROWS: u16 = 50;
const COLS: u16 = 200;
const RUNS: usize = 5;
/// Set in this bench's own subprocess: relay `sh -c $value` through `pty::run` and exit.
const RELAY_ONLY: &str = "BENCH_PTY_RELAY_ONLY";

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Script,
    /// `pty::run` with a no-op `on_output`: the relay alone, without the shim's detector.
    Library,
    Shim,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct on the pty",
            Via::Script => "script -q -c",
            Via::Library => "pty::run, no detector",
            Via::Shim => "qwen shim (relay)",
        }
    }
}

fn main() {
    if let Ok(body) = std::env::var(RELAY_ONLY) {
        relay_only(&body);
    }
    let started = Instant::now();
    let mib: u64 = env_or("BENCH_PTY_MIB", 64);
    let keys: usize = env_or("BENCH_PTY_KEYS", 2000) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = account_home(dir.path());
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("util-linux `script` is not installed; nothing to compare with");
        return;
    }

    let line = "x".repeat(79);
    let producer = format!("yes '{line}' | head -c {}", mib << 20);
    let vias = [Via::Direct, Via::Script, Via::Library, Via::Shim];
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); vias.len()];
    let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); vias.len()];
    let mut bytes = 0;
    for _ in 0..RUNS {
        for (i, &via) in vias.iter().enumerate() {
            let run = throughput(via, &producer, &home);
            walls[i].push(run.wall);
            cpus[i].push(run.cpu);
            bytes = run.bytes;
        }
    }
    let wall: Vec<Duration> = walls.iter_mut().map(|t| median(t)).collect();
    let cpu: Vec<Duration> = cpus.iter_mut().map(|t| median(t)).collect();
    println!(
        "relay throughput: {mib} MiB of 80-column lines, {bytes} bytes on screen (median of {RUNS}, interleaved)"
    );
    println!(
        "  {:<22} {:>10} {:>10} {:>12} {:>12}",
        "", "MiB/s", "vs script", "tree CPU s", "relay CPU s"
    );
    for (i, &via) in vias.iter().enumerate() {
        let rate = mib as f64 / wall[i].as_secs_f64();
        let vs = wall[1].as_secs_f64() / wall[i].as_secs_f64();
        // The child's own work is the direct run's; what is left is the relay's.
        let relay_cpu = cpu[i].as_secs_f64() - cpu[0].as_secs_f64();
        let target = if via == Via::Shim {
            "  (target >= 0.90x)"
        } else {
            ""
        };
        println!(
            "  {:<22} {:>10.0} {:>9.2}x {:>12.3} {:>12.3}{target}",
            via.name(),
            rate,
            vs,
            cpu[i].as_secs_f64(),
            relay_cpu
        );
    }

    let echo = "stty raw -echo; printf R; exec cat";
    let mut lat: Vec<Vec<Duration>> = Vec::new();
    for &via in &vias {
        lat.push(echo_latency(via, echo, &home, keys));
    }
    let pct = |v: &mut Vec<Duration>, p: f64| -> f64 {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
    };
    let stats: Vec<(f64, f64)> = lat
        .iter_mut()
        .map(|v| (pct(v, 0.5), pct(v, 0.99)))
        .collect();
    println!(
        "keystroke echo latency, {keys} keys (child in raw mode echoing with cat), microseconds:"
    );
    println!(
        "  {:<22} {:>8} {:>8}   {:>22}",
        "", "p50", "p99", "added p50 / p99"
    );
    for (i, &via) in vias.iter().enumerate() {
        let (p50, p99) = stats[i];
        let added = match via {
            Via::Direct => String::new(),
            _ => format!(
                "{:+.0} / {:+.0} vs direct",
                p50 - stats[0].0,
                p99 - stats[0].1
            ),
        };
        println!("  {:<22} {:>8.0} {:>8.0}   {added}", via.name(), p50, p99);
    }
    let (shim, script) = (stats[3], stats[1]);
    println!(
        "  shim vs script: p50 {:+.0} us, p99 {:+.0} us (target: < 1000 us added)",
        shim.0 - script.0,
        shim.1 - script.1
    );
    println!("bench time {:.1} s", started.elapsed().as_secs_f64());
}

/// The `Via::Library` subprocess: stdin and stdout are the bench's pty.
fn relay_only(body: &str) -> ! {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", body]);
    let (_controller, controls) = qwen_rotation::run::terminal::controls();
    match qwen_rotation::run::terminal::run(cmd, &mut |_: &[u8]| {}, controls) {
        Ok(outcome) => qwen_rotation::run::signals::exit_with(outcome),
        Err(e) => panic!("relay: {e}"),
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A home with one OAuth slot, so the shim takes the relay path.
fn account_home(dir: &Path) -> std::path::PathBuf {
    let home = dir.join("home");
    let accounts = home.join(".qwen/accounts");
    fs::create_dir_all(&accounts).unwrap();
    for p in [home.join(".qwen"), accounts.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
    let slot = accounts.join("oauth_creds_1.json");
    fs::write(
        &slot,
        r#"{"access_token":"bench","refresh_token":"bench-r","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}"#,
    )
    .unwrap();
    fs::set_permissions(&slot, fs::Permissions::from_mode(0o600)).unwrap();
    home
}

/// `sh -c body` directly, under `script`, or under the shim (QWEN_ROTATION_REAL=/bin/sh).
fn command(via: Via, body: &str, home: &Path) -> Command {
    let mut c = match via {
        Via::Direct => {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", body]);
            c
        }
        Via::Script => {
            let mut c = Command::new("script");
            c.args(["-q", "-c", body, "/dev/null"]);
            c
        }
        Via::Library => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.env(RELAY_ONLY, body);
            c
        }
        Via::Shim => {
            let mut c = Command::new(SHIM);
            c.args(["-c", body]).env("QWEN_ROTATION_REAL", "/bin/sh");
            c
        }
    };
    c.env("HOME", home)
        .env("QWEN_HOME", home.join(".qwen"))
        .env_remove("QWEN_ROTATION");
    c
}

/// Starts `cmd` on a new pty as session leader with the pty as controlling terminal.
fn on_pty(cmd: Command) -> (File, Child) {
    tty::start(cmd, ROWS, COLS)
}

struct Run {
    wall: Duration,
    cpu: Duration,
    bytes: u64,
}

/// Wall time from start until the terminal reads EIO (every byte drawn), the CPU time of the
/// process tree, and the bytes read.
fn throughput(via: Via, producer: &str, home: &Path) -> Run {
    let cpu_before = children_cpu();
    let start = Instant::now();
    let (mut master, mut child) = on_pty(command(via, producer, home));
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    while let Ok(k) = master.read(&mut buf) {
        if k == 0 {
            break;
        }
        bytes += k as u64;
    }
    let wall = start.elapsed();
    assert!(child.wait().unwrap().success(), "{} failed", via.name());
    Run {
        wall,
        cpu: children_cpu() - cpu_before,
        bytes,
    }
}

/// User + system time of every waited-for descendant so far (getrusage(2), RUSAGE_CHILDREN:
/// a child's figure includes the descendants it waited for, e.g. script's or the shim's child).
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value; getrusage(2) overwrites it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one struct rusage through the pointer, a live local.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Round trips of one byte through the terminal and the echoing child.
fn echo_latency(via: Via, body: &str, home: &Path, keys: usize) -> Vec<Duration> {
    let (mut master, mut child) = on_pty(command(via, body, home));
    // Wait for the child's "ready" marker (it is in raw mode from then on).
    let mut one = [0u8; 1];
    loop {
        master.read_exact(&mut one).expect("child output");
        if one[0] == b'R' {
            break;
        }
    }
    let mut out = Vec::with_capacity(keys);
    for i in 0..keys + 50 {
        let key = b'a' + (i % 26) as u8;
        let start = Instant::now();
        master.write_all(&[key]).unwrap();
        loop {
            master.read_exact(&mut one).unwrap();
            if one[0] == key {
                break;
            }
        }
        // The first round trips warm caches and the scheduler; they are not counted.
        if i >= 50 {
            out.push(start.elapsed());
        }
    }
    // Ctrl-C is a byte for the raw child: end it with a signal instead.
    let _ = child.kill();
    let _ = child.wait();
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
