//! What the loopback relay costs, against a baseline measured in the same run: a client talking
//! to the same mock provider directly.
//!
//! - added latency per request (small JSON answer with `usage` and `x-ratelimit-*` headers,
//!   keep-alive), p50 and p99, with the relay's metering on (it always is);
//! - time to the first streamed byte of an SSE answer;
//! - throughput of one large streamed answer (`BENCH_RELAY_STREAM_MIB`, default 100 MiB);
//! - the time from the provider's quota answer on key 1 to the same request reaching key 2
//!   (report + switch in the vault, with its lock, state.yaml and rotation.log writes).
//!
//! The same added latency, first byte and quota → next key for the Gemini API's wire (the
//! `gemini` profile: `x-goog-api-key`, `/v1beta/models/…:generateContent`, Google error bodies).
//!
//! Prints a table with ratios; targets are in docs/PERFORMANCE.md (≤ 1 ms p50 added, ≤ 10 ms
//! quota → next key). Bounded well under a minute. Not a pass/fail test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use qwen_rotation::config::{Config, Paths};
use qwen_rotation::detect::Patterns;
use qwen_rotation::profile::{GEMINI, QWEN};
use qwen_rotation::relay::{Relay, Setup};
use qwen_rotation::vault::Vault;

fn main() {
    let requests: usize = env_or("BENCH_RELAY_REQUESTS", 2000);
    let firsts: usize = env_or("BENCH_RELAY_FIRST_BYTE", 500);
    let mib: usize = env_or("BENCH_RELAY_STREAM_MIB", 100);
    let rotations: usize = env_or("BENCH_RELAY_ROTATIONS", 30);
    let started = Instant::now();

    let upstream = Upstream::start();
    let home = tempfile::tempdir().unwrap();
    let relay = relay_on(
        home.path(),
        &[&format!("{}/v1", upstream.url())],
        &["sk-bench-ok"],
        false,
    );
    let token = relay.token.expose().to_string();
    let relay_addr = relay
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let direct = Target {
        addr: upstream.addr(),
        bearer: "sk-bench-ok".into(),
        gemini: false,
    };
    let via = Target {
        addr: relay_addr,
        bearer: token,
        gemini: false,
    };

    // Warm both paths (connection pools, page cache, branch predictors).
    latencies(&direct, 200);
    latencies(&via, 200);

    // Interleaved halves so a load change on the machine hits both alike.
    let (mut d_lat, mut r_lat) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        d_lat.extend(latencies(&direct, requests / 2));
        r_lat.extend(latencies(&via, requests / 2));
    }
    let (mut d_first, mut r_first) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        d_first.extend(first_bytes(&direct, firsts / 2));
        r_first.extend(first_bytes(&via, firsts / 2));
    }
    // Best of three: one large transfer is at the mercy of the scheduler.
    let (mut d_tp, mut r_tp) = (0f64, 0f64);
    for _ in 0..3 {
        d_tp = d_tp.max(throughput(&direct, mib));
        r_tp = r_tp.max(throughput(&via, mib));
    }
    drop(relay);
    let disk = std::env::temp_dir();
    let rot_disk = rotation_times(&upstream, rotations, &disk, false);
    let gemini = gemini_figures(&upstream, requests, firsts, rotations, &disk);
    // The same on tmpfs: what is left is the relay's own part, without the vault's fsyncs.
    let shm = Path::new("/dev/shm");
    let rot_shm = tempfile::tempdir_in(shm)
        .is_ok()
        .then(|| rotation_times(&upstream, rotations, shm, false));

    println!(
        "loopback relay vs direct to the mock ({:.1?} in all)",
        started.elapsed()
    );
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>8}",
        "", "direct", "relay", "added", "ratio"
    );
    let row = |name: &str, d: Duration, r: Duration| {
        println!(
            "{name:<34} {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>7.2}x",
            ms(d),
            ms(r),
            ms(r.saturating_sub(d)),
            ratio(r, d)
        );
    };
    row(
        &format!("request, small JSON, p50 (n={requests})"),
        pct(&mut d_lat, 50),
        pct(&mut r_lat, 50),
    );
    row(
        "request, small JSON, p99",
        pct(&mut d_lat, 99),
        pct(&mut r_lat, 99),
    );
    row(
        &format!("first SSE byte, p50 (n={firsts})"),
        pct(&mut d_first, 50),
        pct(&mut r_first, 50),
    );
    row(
        "first SSE byte, p99",
        pct(&mut d_first, 99),
        pct(&mut r_first, 99),
    );
    println!(
        "{:<34} {:>6.0} MiB/s {:>6.0} MiB/s {:>11} {:>7.2}x",
        format!("stream of {mib} MiB (SSE, chunked)"),
        d_tp,
        r_tp,
        "",
        r_tp / d_tp
    );
    let show = |where_: String, mut rot: Vec<Duration>| {
        println!(
            "quota on key 1 → request at key 2, home on {where_} (n={rotations}): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(pct(&mut rot, 50)),
            ms(pct(&mut rot, 99)),
            ms(rot.iter().max().copied().unwrap_or_default())
        );
    };
    show(disk.display().to_string(), rot_disk);
    if let Some(rot) = rot_shm {
        show("tmpfs /dev/shm".into(), rot);
    }
    let (mut g_direct, mut g_relay, mut g_dfirst, mut g_rfirst, mut g_rot) = gemini;
    println!("the Gemini API's wire (the gemini profile):");
    row(
        "request, generateContent, p50",
        pct(&mut g_direct, 50),
        pct(&mut g_relay, 50),
    );
    row(
        "request, generateContent, p99",
        pct(&mut g_direct, 99),
        pct(&mut g_relay, 99),
    );
    row(
        "first SSE byte (alt=sse), p50",
        pct(&mut g_dfirst, 50),
        pct(&mut g_rfirst, 50),
    );
    show(
        format!("{} (gemini)", disk.display()),
        std::mem::take(&mut g_rot),
    );
    println!("targets: added p50 <= 1 ms; quota → next key <= 10 ms (docs/PERFORMANCE.md)");
}

type Samples = Vec<Duration>;

/// The gemini profile's figures: (direct, relay) request latencies, (direct, relay) first SSE
/// bytes, and quota → next key times with the home under `disk`.
fn gemini_figures(
    upstream: &Upstream,
    requests: usize,
    firsts: usize,
    rotations: usize,
    disk: &Path,
) -> (Samples, Samples, Samples, Samples, Samples) {
    let home = tempfile::tempdir().unwrap();
    let relay = relay_on(home.path(), &[&upstream.url()], &["AIza-bench-ok"], true);
    let direct = Target {
        addr: upstream.addr(),
        bearer: "AIza-bench-ok".into(),
        gemini: true,
    };
    let via = Target {
        addr: relay.base_url.trim_start_matches("http://").to_string(),
        bearer: relay.token.expose().to_string(),
        gemini: true,
    };
    latencies(&direct, 200);
    latencies(&via, 200);
    let (mut d, mut r, mut df, mut rf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        d.extend(latencies(&direct, requests / 2));
        r.extend(latencies(&via, requests / 2));
        df.extend(first_bytes(&direct, firsts / 2));
        rf.extend(first_bytes(&via, firsts / 2));
    }
    drop(relay);
    let rot = rotation_times(upstream, rotations, disk, true);
    (d, r, df, rf, rot)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) * p).div_ceil(100).min(v.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// The relay under test
// ---------------------------------------------------------------------------------------------

/// A qwen (or gemini) home with API-key slots (`bases[i]`, `keys[i]`) and a relay on slot 1.
fn relay_on(dir: &Path, bases: &[&str], keys: &[&str], gemini: bool) -> Relay {
    let paths = if gemini {
        Paths::of(&GEMINI, dir.join(".gemini"))
    } else {
        Paths::of(&QWEN, dir.join(".qwen"))
    };
    for d in [&paths.home, &paths.accounts] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let base = bases[i.min(bases.len() - 1)];
        let doc = serde_json::json!({"api_key": k, "base_url": base, "model": "bench-model"});
        let p = paths.api_key_slot(i + 1);
        std::fs::write(&p, doc.to_string()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let vault = Vault::open(paths.clone(), Config::default());
    let launch = vault.prepare(None).expect("prepare");
    Relay::start(Setup {
        vault,
        patterns: Patterns::defaults(),
        launch,
        notify: Box::new(|_| {}),
    })
    .expect("relay")
}

// ---------------------------------------------------------------------------------------------
// A raw keep-alive client
// ---------------------------------------------------------------------------------------------

struct Target {
    addr: String,
    bearer: String,
    /// The Gemini API's wire: `x-goog-api-key` and its paths, not OpenAI's.
    gemini: bool,
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::with_capacity(256 * 1024, s),
        }
    }

    fn send(&mut self, path: &str, bearer: &str, stream: bool) {
        let body = format!(
            r#"{{"model":"bench-model","stream":{stream},"messages":[{{"role":"user","content":"hello"}}]}}"#
        );
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.w.write_all(req.as_bytes()).unwrap();
    }

    /// A request as gemini sends it: the model in the path, the key in `x-goog-api-key`.
    fn send_gemini(&mut self, key: &str, stream: bool) {
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;
        let path = if stream {
            "/v1beta/models/bench-model:streamGenerateContent?alt=sse"
        } else {
            "/v1beta/models/bench-model:generateContent"
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\nx-goog-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.w.write_all(req.as_bytes()).unwrap();
    }

    fn request(&mut self, t: &Target, stream: bool) {
        if t.gemini {
            self.send_gemini(&t.bearer, stream);
        } else {
            self.send("/v1/chat/completions", &t.bearer, stream);
        }
    }

    /// Reads the head; returns (status, chunked, content-length).
    fn head(&mut self) -> (u16, bool, Option<usize>) {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().ok();
            }
        }
        (status, chunked, length)
    }

    /// Reads the rest of the body; returns its size.
    fn body(&mut self, chunked: bool, length: Option<usize>) -> usize {
        if !chunked {
            let n = length.unwrap_or(0);
            let mut buf = vec![0u8; n];
            self.r.read_exact(&mut buf).unwrap();
            return n;
        }
        let mut total = 0;
        let mut line = String::new();
        let mut sink = vec![0u8; 256 * 1024];
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            if size == 0 {
                line.clear();
                self.r.read_line(&mut line).unwrap();
                return total;
            }
            let mut left = size + 2;
            while left > 0 {
                let n = left.min(sink.len());
                self.r.read_exact(&mut sink[..n]).unwrap();
                left -= n;
            }
            total += size;
        }
    }
}

fn latencies(t: &Target, n: usize) -> Vec<Duration> {
    let mut c = Conn::open(&t.addr);
    (0..n)
        .map(|_| {
            let start = Instant::now();
            c.request(t, false);
            let (status, chunked, len) = c.head();
            assert_eq!(status, 200);
            c.body(chunked, len);
            start.elapsed()
        })
        .collect()
}

fn first_bytes(t: &Target, n: usize) -> Vec<Duration> {
    let mut c = Conn::open(&t.addr);
    (0..n)
        .map(|_| {
            let start = Instant::now();
            c.request(t, true);
            let (status, chunked, len) = c.head();
            // The first byte of the body: the size line of the first chunk.
            c.r.fill_buf().unwrap();
            let first = start.elapsed();
            assert_eq!(status, 200);
            c.body(chunked, len);
            first
        })
        .collect()
}

/// MiB/s for one streamed answer of `mib` MiB.
fn throughput(t: &Target, mib: usize) -> f64 {
    let mut c = Conn::open(&t.addr);
    let start = Instant::now();
    c.send(&format!("/v1/big/{mib}"), &t.bearer, true);
    let (status, chunked, len) = c.head();
    assert_eq!(status, 200);
    let got = c.body(chunked, len);
    let secs = start.elapsed().as_secs_f64();
    assert!(got >= mib << 20, "short stream: {got}");
    got as f64 / (1 << 20) as f64 / secs
}

/// From the moment the provider finished writing its 429 for key 1 to the moment the same
/// request arrived with key 2. A fresh qwen home (under `parent`) per sample: the spent slot
/// stays spent.
fn rotation_times(upstream: &Upstream, n: usize, parent: &Path, gemini: bool) -> Vec<Duration> {
    let base = if gemini {
        upstream.url()
    } else {
        format!("{}/v1", upstream.url())
    };
    let wire = if gemini { "gemini" } else { "openai" };
    (0..n)
        .map(|i| {
            let dir = tempfile::tempdir_in(parent).unwrap();
            let k1 = format!("sk-bench-quota-{wire}-{}-{i}", parent.display());
            let k2 = format!("sk-bench-next-{wire}-{}-{i}", parent.display());
            let relay = relay_on(dir.path(), &[&base], &[&k1, &k2], gemini);
            let addr = relay
                .base_url
                .trim_start_matches("http://")
                .trim_end_matches("/v1")
                .to_string();
            let mut c = Conn::open(&addr);
            let target = Target {
                addr: addr.clone(),
                bearer: relay.token.expose().to_string(),
                gemini,
            };
            c.request(&target, false);
            let (status, chunked, len) = c.head();
            assert_eq!(status, 200);
            c.body(chunked, len);
            let log = upstream.log.lock().unwrap();
            let quota_done = log
                .iter()
                .find(|e| e.key == k1)
                .and_then(|e| e.answered)
                .expect("key 1 answered");
            let next = log
                .iter()
                .find(|e| e.key == k2)
                .expect("key 2 asked")
                .arrived;
            next - quota_done
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The mock provider: minimal, keep-alive, answers by key and path
// ---------------------------------------------------------------------------------------------

struct Entry {
    key: String,
    arrived: Instant,
    answered: Option<Instant>,
}

struct Upstream {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Entry>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&log);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = Arc::clone(&l2);
                thread::spawn(move || serve(conn, &log));
            }
        });
        Upstream { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Entry>>) {
    let _ = conn.set_nodelay(true);
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let arrived = Instant::now();
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut len, mut key) = (0usize, String::new());
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("authorization:") || lower.starts_with("x-goog-api-key:") {
                key = l.split_whitespace().last().unwrap_or("").to_string();
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let rotation = key.starts_with("sk-bench-quota") || key.starts_with("sk-bench-next");
        let index = rotation.then(|| {
            let mut l = log.lock().unwrap();
            l.push(Entry {
                key: key.clone(),
                arrived,
                answered: None,
            });
            l.len() - 1
        });
        let ok = if key.contains("quota") {
            let body: &[u8] = if key.contains("gemini") {
                br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"You exceeded your current quota.","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#
            } else {
                br#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","code":"insufficient_quota"}}"#
            };
            let head = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let ok = w
                .write_all(head.as_bytes())
                .and_then(|()| w.write_all(body))
                .is_ok();
            if let Some(i) = index {
                log.lock().unwrap()[i].answered = Some(Instant::now());
            }
            ok
        } else if let Some(mib) = path.strip_prefix("/v1/big/") {
            big_stream(&mut w, mib.parse().unwrap_or(1)).is_ok()
        } else if path.contains(":streamGenerateContent") {
            sse(
                &mut w,
                &[br#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"}}]}"#],
            )
            .is_ok()
        } else if String::from_utf8_lossy(&body).contains(r#""stream":true"#) {
            sse(
                &mut w,
                &[
                    br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
                    br#"{"choices":[{"delta":{"content":"hi"}}]}"#,
                    br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
                ],
            )
            .is_ok()
        } else {
            // What the relay meters: `usage`, and the remaining quota (well above the floor).
            let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 x-ratelimit-remaining-requests: 4999\r\nx-ratelimit-reset-requests: 12ms\r\n\
                 x-ratelimit-remaining-tokens: 799000\r\nx-ratelimit-reset-tokens: 6m0s\r\n\r\n",
                body.len()
            );
            w.write_all(head.as_bytes())
                .and_then(|()| w.write_all(body))
                .is_ok()
        };
        if !ok {
            return;
        }
    }
}

fn sse(w: &mut TcpStream, events: &[&[u8]]) -> std::io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    for e in events.iter().copied().chain([&b"[DONE]"[..]]) {
        let frame = [b"data: ", e, b"\n\n"].concat();
        w.write_all(format!("{:x}\r\n", frame.len()).as_bytes())?;
        w.write_all(&frame)?;
        w.write_all(b"\r\n")?;
    }
    w.write_all(b"0\r\n\r\n")
}

/// `mib` MiB of SSE events of 16 KiB each, one chunk per event.
fn big_stream(w: &mut TcpStream, mib: usize) -> std::io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    let mut event = b"data: ".to_vec();
    event.resize(16 * 1024 - 2, b'x');
    event.extend_from_slice(b"\n\n");
    let mut frame = format!("{:x}\r\n", event.len()).into_bytes();
    frame.extend_from_slice(&event);
    frame.extend_from_slice(b"\r\n");
    // Several events per write so the generator is not the bottleneck.
    let batch: Vec<u8> = frame.repeat(8);
    let per_batch = 8 * event.len();
    let mut sent = 0;
    while sent < mib << 20 {
        w.write_all(&batch)?;
        sent += per_batch;
    }
    w.write_all(b"0\r\n\r\n")
}
