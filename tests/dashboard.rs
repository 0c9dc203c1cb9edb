//! `--rotation-dashboard` and `--rotation-report`: the page in a real headless Chromium (driven
//! through chromedriver's WebDriver HTTP API, screenshots kept under
//! `target/test-artifacts/dashboard/`), a rotation shown live without a reload, the token, the
//! loopback-only listener, the bounds a hostile local client meets, and a scan of every byte
//! served for the fixture secrets in the slots. The browser tests print a line and pass when
//! chromium or chromedriver is not installed (`.ci/run` installs both).

#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qwen_rotation::model::Class;
use serde_json::{Value, json};
use vault_home::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

// -- the pool ---------------------------------------------------------------------------------

/// Three accounts: 3 live, 1 cooling down (a quota hit), 2 needing a login (an auth hit).
fn pool() -> Home {
    let h = Home::new();
    h.put_oauth(1, "a");
    h.put_oauth(2, "b");
    h.put_api(3, "c");
    let v = h.vault();
    v.set_label("1", Some("personal")).unwrap();
    v.set_label("2", Some("work")).unwrap();
    v.set_label("3", Some("plan")).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    v.report(2, &hit(Class::Auth)).unwrap();
    // What the relay metered on the API key: the remaining quota it announced, and one run.
    let now = chrono::Utc::now();
    let remaining = qwen_rotation::vault::usage::Remaining {
        requests: Some(7),
        tokens: Some(900),
        requests_reset: Some(now + chrono::Duration::minutes(6)),
        tokens_reset: None,
        seen: Some(now),
    };
    v.record_remaining(&[(3, remaining)].into_iter().collect())
        .unwrap();
    let usage = qwen_rotation::vault::usage::Usage {
        requests: 4,
        ok: 4,
        tokens_in: 40,
        tokens_out: 20,
        ..Default::default()
    };
    let mut run = qwen_rotation::vault::audit::Event::new("run", now).slot(3);
    run.usage = Some([(3, usage)].into_iter().collect());
    v.append_run(run);
    let st = h.state();
    assert_eq!(st.current_index, 3, "{}", h.state_text());
    h
}

// -- the server -------------------------------------------------------------------------------

/// A running dashboard; killed (and waited for) on drop.
struct Dashboard {
    child: Child,
    port: u16,
    token: String,
}

impl Dashboard {
    fn start(h: &Home) -> Dashboard {
        let mut cmd = h.cmd(&["--rotation-dashboard"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the dashboard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the dashboard prints its URL within 20 s");
        assert_clean("the dashboard's first line", &line);
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .expect("a 127.0.0.1 URL");
        let (port, token) = rest.split_once("/?token=").expect("a token in the URL");
        assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        Dashboard {
            child,
            port: port.parse().unwrap(),
            token: token.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!(
            "http://127.0.0.1:{}{path}{sep}token={}",
            self.port, self.token
        )
    }

    /// `path` with the token, over plain HTTP.
    fn get(&self, path: &str) -> Answer {
        let target = format!("{path}?token={}", self.token);
        request("127.0.0.1", self.port, "GET", &target, &[], None)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 exchange (`Connection: close`), read to its Content-Length or the end; every
/// step within 10 s.
fn request(
    host: &str,
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut s = TcpStream::connect((host, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "{method} {target}: no whole answer"
        );
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                && all.len() >= end + 4 + len
            {
                break;
            }
        }
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {target}: no head in {all:?}"));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head,
        body: all[end + 4..].to_vec(),
    }
}

/// The first `n` bytes of the event stream (head included), read within `limit`.
fn stream_start(d: &Dashboard, want: &str, limit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /events?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        d.token
    )
    .unwrap();
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline && !String::from_utf8_lossy(&all).contains(want) {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

// -- tests without a browser ------------------------------------------------------------------

#[test]
fn nothing_is_served_without_the_token() {
    let h = pool();
    let d = Dashboard::start(&h);
    let wrong = "0".repeat(d.token.len());
    let cookie = format!("qwen_rotation_dashboard_{}={wrong}", d.port);
    for path in [
        "/",
        "/events",
        "/api/pool",
        "/metrics",
        "/nothing",
        "/favicon.ico",
    ] {
        for (target, headers) in [
            (path.to_string(), vec![]),
            (format!("{path}?token={wrong}"), vec![]),
            (format!("{path}?token={}", &d.token[1..]), vec![]),
            (format!("{path}?token="), vec![]),
            (path.to_string(), vec![("Cookie", cookie.as_str())]),
        ] {
            let a = request("127.0.0.1", d.port, "GET", &target, &headers, None);
            assert_eq!(a.status, 403, "GET {target} {headers:?}: {}", a.head);
            assert!(a.text().starts_with("forbidden"), "{}", a.text());
            assert!(!a.head.to_ascii_lowercase().contains("set-cookie"));
        }
        let a = request("127.0.0.1", d.port, "POST", path, &[], Some("{}"));
        assert_eq!(a.status, 403, "POST {path}");
    }
    // The right token opens every door; the cookie the page sets works alone.
    let page = d.get("/");
    assert_eq!(page.status, 200);
    let set = page
        .head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("the first visit sets the cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let pair = set["set-cookie:".len()..]
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let a = request(
        "127.0.0.1",
        d.port,
        "GET",
        "/api/pool",
        &[("Cookie", &pair)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(d.get("/metrics").status, 200);
    assert_eq!(d.get("/nothing").status, 404);
}

#[test]
fn the_listener_is_on_127_0_0_1_only() {
    let h = pool();
    let d = Dashboard::start(&h);
    // /proc/net/tcp lists the listening socket with its local address (little-endian hex).
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{:04X}", d.port);
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
        .collect();
    assert_eq!(listening.len(), 1, "{tcp}");
    assert!(
        listening[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:"),
        "bound to 127.0.0.1: {}",
        listening[0]
    );
    let v6 = fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    assert!(
        !v6.lines().any(|l| l
            .split_whitespace()
            .nth(1)
            .is_some_and(|a| a.ends_with(&port))),
        "no IPv6 listener: {v6}"
    );
    // Another loopback address does not reach it.
    assert!(TcpStream::connect(("127.0.0.2", d.port)).is_err());
    assert_eq!(d.get("/api/pool").status, 200);
}

#[test]
fn every_byte_served_and_the_report_are_free_of_secrets() {
    let h = pool();
    let d = Dashboard::start(&h);
    let mut served = Vec::new();
    for path in ["/", "/api/pool", "/metrics", "/nothing"] {
        let a = d.get(path);
        served.push((path, a.head.clone().into_bytes()));
        served.push((path, a.body));
    }
    served.push((
        "/events",
        stream_start(&d, "event: pool", Duration::from_secs(10)).into_bytes(),
    ));
    let report = h.dir.path().join("pool.html");
    let out = h.run(&["--rotation-report", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    served.push(("the report", fs::read(&report).unwrap()));
    for (what, bytes) in &served {
        vault_home::secrets::assert_clean(what, bytes);
        let text = String::from_utf8_lossy(bytes);
        for private in [
            "127.0.0.1:9/v1",
            "oauth_creds",
            "refresh_token",
            &h.paths.home.display().to_string(),
        ] {
            assert!(!text.contains(private), "{what} shows {private}");
        }
    }
    // The API and the report carry the same pool.
    let api: Value = serde_json::from_slice(&d.get("/api/pool").body).unwrap();
    let statuses: Vec<(u64, &str, bool)> = api["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["slot"].as_u64().unwrap(),
                a["status"].as_str().unwrap(),
                a["live"] == true,
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, "cooling_down", false),
            (2, "needs_login", false),
            (3, "healthy", true)
        ]
    );
    assert!(api["accounts"][0]["cooldown_until"].is_string());
    assert_eq!(api["accounts"][0]["label"], "personal");
    assert!(
        api["accounts"][0]["remaining"].is_null(),
        "nothing announced"
    );
    assert_eq!(api["accounts"][2]["remaining"]["requests"], 7);
    assert_eq!(api["accounts"][2]["remaining"]["tokens"], 900);
    assert!(api["accounts"][2]["remaining"]["requests_reset"].is_string());
    let today = api["days"].as_array().unwrap().last().unwrap();
    assert_eq!(today["accounts"]["3"]["requests"], 4, "{today}");
    assert_eq!(today["accounts"]["3"]["tokens"], 60, "{today}");
    let mode = fs::metadata(&report).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let metrics = d.get("/metrics").text();
    for line in [
        "qwen_rotation_account_status{slot=\"1\",label=\"personal\",status=\"cooling_down\"} 1",
        "qwen_rotation_account_status{slot=\"2\",label=\"work\",status=\"needs_login\"} 1",
        "qwen_rotation_account_live{slot=\"3\",label=\"plan\"} 1",
        "qwen_rotation_account_hits_total{slot=\"1\",label=\"personal\",class=\"quota\"} 1",
        "qwen_rotation_account_hits_total{slot=\"2\",label=\"work\",class=\"auth\"} 1",
        "qwen_rotation_live_account 3",
        "qwen_rotation_usable_accounts 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let cooldown: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("qwen_rotation_account_cooldown_seconds{slot=\"1\",label=\"personal\"} ")
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        cooldown > 60.0,
        "a quota hit cools down for a while: {cooldown}"
    );
}

#[test]
fn a_hostile_client_does_not_hang_it() {
    let h = pool();
    let d = Dashboard::start(&h);
    // A head that is too large is closed unanswered.
    let mut huge = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let _ = huge.write_all(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(40_000)).as_bytes());
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = huge.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a too-large head is closed unanswered");
    assert_eq!(d.get("/api/pool").status, 200);
    // More idle connections than it serves at once (32): those past the limit are closed at
    // once, well before the 5 s a request head may take.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", d.port)).ok())
        .collect();
    let mut closed = vec![false; silent.len()];
    while closed.iter().filter(|c| **c).count() < 8 && started.elapsed() < Duration::from_secs(3) {
        for (s, c) in silent
            .iter_mut()
            .zip(closed.iter_mut())
            .filter(|(_, c)| !**c)
        {
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            *c = matches!(s.read(&mut [0u8; 1]), Ok(0));
        }
    }
    let closed = closed.iter().filter(|c| **c).count();
    println!(
        "of 40 idle connections, {closed} were closed at once ({:?})",
        started.elapsed()
    );
    assert!(
        closed >= 8,
        "connections past the limit are closed: {closed}"
    );
    // The idle ones are dropped after the head timeout; then the dashboard answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = TcpStream::connect(("127.0.0.1", d.port))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                write!(s, "GET /api/pool?token={} HTTP/1.1\r\n\r\n", d.token).ok()?;
                let mut b = [0u8; 12];
                s.read_exact(&mut b).ok()?;
                (&b == b"HTTP/1.1 200").then_some(())
            });
        if ok.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard stays stuck behind idle clients"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    silent.clear();
}

#[test]
fn a_signal_stops_it_cleanly() {
    let h = pool();
    let mut d = Dashboard::start(&h);
    let _events = stream_start(&d, "event: pool", Duration::from_secs(10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status =
        vault_home::child::wait_within(&mut d.child, Duration::from_secs(10), "the dashboard");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    d.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("dashboard stopped"), "{err}");
    assert!(
        TcpStream::connect(("127.0.0.1", d.port)).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn bad_usage_is_one_line() {
    let h = pool();
    for (args, says) in [
        (
            &["--rotation-dashboard", "--port", "x"][..],
            "--port takes a port number",
        ),
        (
            &["--rotation-dashboard", "--port", "0"][..],
            "--port takes a port number",
        ),
        (&["--rotation-report"][..], "needs the file to write"),
        (&["--rotation-report", "pool.txt"][..], "ending in .html"),
    ] {
        let out = h.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // A port in use is named, with the fix.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = h.run(&["--rotation-dashboard", "--port", &port]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose another --port"));
}

// -- the browser ------------------------------------------------------------------------------

/// chromedriver on a free port with one headless Chromium session; both ended on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// None (with a line saying so) when chromium or chromedriver is not installed.
    fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            println!(
                "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && b.call("GET", "/status", None)["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1280,1700",
                         format!("--user-data-dir={}", b._profile.path().display())]
            }
        }}});
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(b)
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string);
        let a = request("127.0.0.1", self.port, method, path, &[], body.as_deref());
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        v.get("value").cloned().unwrap_or(Value::Null)
    }

    fn session(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        self.call(
            method,
            &path,
            if method == "GET" { None } else { Some(&body) },
        )
    }

    fn go(&self, url: &str) {
        self.session("POST", "url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.session(
            "POST",
            "execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Polls `script` until it returns a truthy value; fails after `limit`.
    fn wait_for(&self, script: &str, limit: Duration, what: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the viewport, kept as a test artifact.
    fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.session("GET", "screenshot", Value::Null);
        let png = base64(v.as_str().expect("a screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = artifacts();
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| self.call("DELETE", &path, None));
        }
        vault_home::child::kill_tree(self.driver.id());
        let _ = self.driver.wait();
    }
}

/// `target/test-artifacts/dashboard/` (beside this test's binary in the target directory).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    target.join("test-artifacts/dashboard")
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(value(*c)) << (18 - 6 * i))
        });
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Each account's row: its status and cooldown cells.
const ROWS: &str = "return [...document.querySelectorAll('#accounts tbody tr[data-slot]')].map(r => [r.dataset.slot, r.dataset.status, r.dataset.live, r.querySelector('.status').textContent, r.querySelector('.cooldown').textContent, r.querySelector('.remaining').textContent])";

#[test]
fn the_page_shows_the_pool_and_a_rotation_live_in_chromium() {
    let Some(b) = Browser::start() else { return };
    let h = pool();
    let d = Dashboard::start(&h);
    b.go(&d.url("/"));
    b.wait_for(
        "return document.body.dataset.updates !== '0' && document.querySelectorAll('#accounts tbody tr[data-slot]').length === 3",
        Duration::from_secs(20),
        "the page shows three accounts",
    );
    let rows = b.js(ROWS);
    println!("rows: {rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows[0][1], "cooling_down");
    assert_eq!(rows[0][3], "cooling down");
    let cooldown = rows[0][4].as_str().unwrap();
    assert!(
        cooldown.contains('h') || cooldown.contains('m'),
        "the cooldown counts down: {cooldown:?}"
    );
    assert_eq!(rows[1][1], "needs_login");
    assert_eq!(rows[1][3], "needs login");
    assert_eq!(rows[1][4], "—");
    assert_eq!(
        (&rows[2][1], &rows[2][2]),
        (&json!("healthy"), &json!("true"))
    );
    assert!(
        rows[..2].iter().all(|r| r[5] == "—"),
        "remaining quota: — when unknown"
    );
    assert_eq!(rows[2][5], "7 req · 900 tok", "the last announced amounts");
    assert_eq!(
        b.js("return document.querySelectorAll('#charts svg.tokens-chart').length"),
        json!(3),
        "a tokens chart per account"
    );
    // The countdown moves while nothing else changes.
    let first = rows[0][4].clone();
    b.wait_for(
        &format!("return document.querySelector('#accounts tr[data-slot=\"1\"] .cooldown').textContent !== {first}"),
        Duration::from_secs(5),
        "the cooldown ticks",
    );
    let charts = b.js("return document.querySelectorAll('#charts svg rect').length");
    assert!(charts.as_u64().unwrap() >= 2, "per-day bars: {charts}");
    let marks = b.js("return document.querySelectorAll('#timeline .mark').length");
    assert!(
        marks.as_u64().unwrap() >= 4,
        "two hits and two switches: {marks}"
    );
    let events = b.js("return document.querySelectorAll('#events tbody tr[data-event]').length");
    assert!(events.as_u64().unwrap() >= 4, "{events}");
    b.screenshot("pool");

    // A rotation while the page is open shows within 2 s, without a reload.
    b.js("window.__stillHere = 42; return true");
    let out = h.run(&["--rotation-switch", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = Instant::now();
    b.wait_for(
        "return document.body.dataset.live === '1' && document.querySelector('#accounts tr[data-slot=\"1\"]').dataset.status === 'healthy'",
        Duration::from_secs(2),
        "the switch to account 1 shows",
    );
    println!("the switch showed after {:?}", shown.elapsed());
    assert_eq!(b.js("return window.__stillHere"), 42, "no reload happened");
    let rows = b.js(ROWS);
    assert_eq!(rows[0][2], "true");
    assert_eq!(rows[2][2], "false");
    b.screenshot("after-switch");

    // Nothing the page fetched holds a secret, and it fetched nothing from outside.
    let urls = b.js("return performance.getEntriesByType('resource').map(e => e.name)");
    for u in urls.as_array().unwrap() {
        assert!(
            u.as_str()
                .unwrap()
                .starts_with(&format!("http://127.0.0.1:{}/", d.port)),
            "{u}"
        );
    }
    let html = b.js("return document.documentElement.outerHTML");
    assert_clean("the rendered page", html.as_str().unwrap());
}

#[test]
fn the_report_opens_offline_in_chromium() {
    let Some(b) = Browser::start() else { return };
    let h = pool();
    let report = h.dir.path().join("pool.html");
    let out = h.run(&["--rotation-report", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    b.go(&format!("file://{}", report.display()));
    b.wait_for(
        "return document.body.dataset.mode === 'report' && document.querySelectorAll('#accounts tbody tr[data-slot]').length === 3",
        Duration::from_secs(20),
        "the report shows three accounts",
    );
    let rows = b.js(ROWS);
    let statuses: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cooling_down", "needs_login", "healthy"]);
    assert!(rows[0][4].as_str().unwrap().contains('h'), "{rows}");
    b.screenshot("report");
}

#[test]
fn a_shared_pool_is_the_fleets_view() {
    // Two hosts with the same three keys on one Redis; the dashboard runs on host A.
    let r = redis_server::Redis::start();
    let hosts: Vec<Home> = (0..2)
        .map(|_| {
            let h = Home::new();
            for (i, who) in ["a", "b", "c"].iter().enumerate() {
                h.put_api(i + 1, who);
            }
            fs::write(
                h.paths.home.join("rotation.yaml"),
                format!("pool: {}\npool_timeout: 5000ms\n", r.url()),
            )
            .unwrap();
            h
        })
        .collect();
    let pooled = |h: &Home| {
        qwen_rotation::vault::Vault::open(
            h.paths.clone(),
            qwen_rotation::config::Config {
                pool: Some(r.url()),
                pool_timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
    };
    // Each host has run once (which maps its slots to the pool's accounts).
    pooled(&hosts[0]).prepare(None).unwrap();
    let b = pooled(&hosts[1]);
    b.prepare(None).unwrap();
    let d = Dashboard::start(&hosts[0]);
    let pool =
        |d: &Dashboard| -> Value { serde_json::from_slice(&d.get("/api/pool").body).unwrap() };
    assert_eq!(pool(&d)["pool"], "shared");
    // A hit on host B shows on host A's dashboard, through its event stream, within 2 s.
    b.report(1, &hit(Class::Quota)).unwrap();
    let seen = Instant::now();
    let text = stream_start(&d, "\"status\":\"cooling_down\"", Duration::from_secs(2));
    assert!(
        text.contains("\"status\":\"cooling_down\""),
        "host B's hit reaches host A's stream within 2 s: {text}"
    );
    println!(
        "host B's hit on host A's dashboard after {:?}",
        seen.elapsed()
    );
    let p = pool(&d);
    assert_eq!(p["accounts"][0]["status"], "cooling_down");
    assert_eq!(p["live"], 2);
    for path in ["/", "/api/pool", "/metrics"] {
        let a = d.get(path);
        vault_home::secrets::assert_clean(path, &a.body);
        assert!(
            !a.text().contains(&r.url()) && !a.text().contains(&format!(":{}", r.port)),
            "{path} names the Redis"
        );
    }
}
