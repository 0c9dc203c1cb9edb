//! `qwen --rotation-dashboard`: what it costs while it sits there, and with 10 pages open.
//!
//! A home with 3 accounts and a rotation.log of `BENCH_DASH_LINES` run lines (default 5000, so
//! every snapshot reads and counts a realistic log). The dashboard runs as the built binary; the
//! bench reads its CPU time (/proc/PID/stat) and memory (VmRSS, VmHWM) over:
//!
//! - idle: `BENCH_DASH_SECS` (default 10) seconds, no client;
//! - 10 clients: ten `/events` streams open for the same time while the live account is
//!   switched once a second (`--rotation-switch`, another process); each switch's arrival at
//!   every stream is timed (from the switch command's exit).
//!
//! Prints one table; figures in docs/PERFORMANCE.md.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_qwen");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn home(lines: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join(".qwen");
    fs::create_dir_all(q.join("accounts")).unwrap();
    for d in [&q, &q.join("accounts")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    for n in 1..=3 {
        let p = q.join(format!("accounts/oauth_creds_{n}.json"));
        fs::write(
            &p,
            format!(r#"{{"access_token":"a{n}","refresh_token":"r{n}","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}}"#),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut log = String::new();
    for i in 0..lines {
        let day = 1 + (i * 13 / lines.max(1));
        log.push_str(&format!(
            r#"{{"timestamp":"2026-03-{day:02}T10:00:00Z","level":"INFO","event":"run","slot":{},"code":0,"attempts":1,"duration_ms":1200,"pid":1}}"#,
            1 + i % 3
        ));
        log.push('\n');
    }
    fs::write(q.join("rotation.log"), log).unwrap();
    dir
}

fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(SHIM);
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("QWEN_HOME", home.join(".qwen"))
        .env("NO_COLOR", "1");
    c
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn mem_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }) as f64
}

struct Server {
    child: Child,
    port: u16,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &Path) -> Server {
    let mut child = cmd(home, &["--rotation-dashboard"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, token) = rest.split_once("/?token=").unwrap();
    Server {
        child,
        port: port.parse().unwrap(),
        token: token.to_string(),
    }
}

/// One `/events` stream: sends the time of every `event: pool` whose live account is `1`/`2`.
fn client(s: &Server, tx: mpsc::Sender<(usize, u64, Instant)>, id: usize) {
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        conn,
        "GET /events?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        s.token
    )
    .unwrap();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(json) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(json)
                && let Some(live) = v["live"].as_u64()
                && tx.send((id, live, Instant::now())).is_err()
            {
                return;
            }
            line.clear();
        }
    });
}

fn main() {
    let secs = env_num("BENCH_DASH_SECS", 10);
    let lines = env_num("BENCH_DASH_LINES", 5000);
    let dir = home(lines);
    let server = start(dir.path());
    let pid = server.child.id();
    let hz = ticks_per_sec();
    // Let it settle (the first snapshot is built before the URL is printed).
    std::thread::sleep(Duration::from_millis(500));

    let t0 = cpu_ticks(pid);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let idle_cpu = (cpu_ticks(pid) - t0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    let idle_rss = mem_kib(pid, "VmRSS:");

    let (tx, rx) = mpsc::channel();
    for id in 0..10 {
        client(&server, tx.clone(), id);
    }
    // Each stream's first event (the pool as it is).
    let mut first = 0;
    while first < 10 {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("every stream starts");
        first += 1;
    }
    let t1 = cpu_ticks(pid);
    let w1 = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut target = 1;
    let mut switches = 0;
    while w1.elapsed() < Duration::from_secs(secs) {
        target = if target == 1 { 2 } else { 1 };
        let status = cmd(dir.path(), &["--rotation-switch", &target.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let done = Instant::now();
        switches += 1;
        let mut seen = 0;
        let deadline = done + Duration::from_secs(5);
        while seen < 10 {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, live, at) = rx.recv_timeout(left).expect("every stream sees the switch");
            if live == target {
                seen += 1;
                latencies.push(at.saturating_duration_since(done));
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(done.elapsed()));
    }
    let busy_cpu = (cpu_ticks(pid) - t1) as f64 / hz / w1.elapsed().as_secs_f64() * 100.0;
    let busy_rss = mem_kib(pid, "VmRSS:");
    let hwm = mem_kib(pid, "VmHWM:");
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let mut page = Vec::new();
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(c, "GET /?token={} HTTP/1.1\r\n\r\n", server.token).unwrap();
    c.read_to_end(&mut page).unwrap();

    println!("dashboard: 3 accounts, rotation.log of {lines} run lines, {secs} s per phase");
    println!("  {:<36} {:>8} {:>10}", "phase", "CPU", "RSS");
    println!(
        "  {:<36} {:>7.2}% {:>7} KiB",
        "idle (no client)", idle_cpu, idle_rss
    );
    println!(
        "  {:<36} {:>7.2}% {:>7} KiB",
        format!("10 /events clients, {switches} switches"),
        busy_cpu,
        busy_rss
    );
    println!(
        "  peak RSS (VmHWM): {hwm} KiB; the page: {} bytes",
        page.len()
    );
    println!(
        "  switch → event on every stream: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} arrivals)",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.9).as_secs_f64() * 1000.0,
        pct(1.0).as_secs_f64() * 1000.0,
        latencies.len()
    );
}
