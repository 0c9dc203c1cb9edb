//! A real redis-server for the shared-pool tests: started on a free port with no persistence,
//! ready when it answers PING (bounded wait), killed when dropped.
//! Use with `#[path = "support/redis.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary (Debian's `redis-server` package).
pub const SERVER: &str = "redis-server";

/// Is redis-server installed? The tests that need it say so and fail when it is not: `.ci/run`
/// installs it.
pub fn installed() -> bool {
    Command::new(SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// Extra arguments the server was started with (a restart keeps them).
    args: Vec<String>,
    /// How a client logs in to check readiness (`AUTH …` arguments), if it must.
    auth: Vec<String>,
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Redis {
    /// A server with no password.
    pub fn start() -> Redis {
        Redis::start_with(&[], &[])
    }

    /// A server with `args` (e.g. `--requirepass pw`); `auth` is what a readiness check sends
    /// to AUTH (empty: none).
    pub fn start_with(args: &[&str], auth: &[&str]) -> Redis {
        assert!(
            installed(),
            "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        );
        let mut r = Redis {
            child: None,
            port: free_port(),
            args: args.iter().map(|s| s.to_string()).collect(),
            auth: auth.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    /// A server that speaks only TLS on its port, with a certificate for `localhost` and
    /// 127.0.0.1 signed by a fresh CA in `dir` (made with openssl). Returns the CA's file.
    /// Readiness: the port accepts (a client would need the CA).
    pub fn start_tls(dir: &Path) -> (Redis, std::path::PathBuf) {
        assert!(installed(), "redis-server is not installed");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let subj = |cn: &str| format!("/CN={cn}");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &subj("qwen-rotation test CA"),
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            &subj("localhost"),
        ]);
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        let port = free_port();
        let child = Command::new(SERVER)
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--tls-port",
                &port.to_string(),
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("srv.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("srv.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = Redis {
            child: Some(child),
            port,
            args: Vec::new(),
            auth: Vec::new(),
        };
        (r, dir.join("ca.pem"))
    }

    fn spawn(&mut self) {
        let child = Command::new(SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A client connection (with the readiness login).
    pub fn client(&self) -> redis::Connection {
        let c = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis");
        let mut c = c;
        if !self.auth.is_empty() {
            redis::cmd("AUTH")
                .arg(&self.auth)
                .query::<()>(&mut c)
                .expect("AUTH");
        }
        c
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| {
                    if !self.auth.is_empty() {
                        redis::cmd("AUTH").arg(&self.auth).query::<()>(&mut c)?;
                    }
                    redis::cmd("PING").query::<String>(&mut c)
                })
                .is_ok();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait until it is gone (its port is free again).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every key under `prefix` with all its content as text (hash fields and values, string
    /// values, stream entries), for the secret scan.
    pub fn dump(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut c)
            .unwrap();
        keys.into_iter()
            .map(|k| {
                let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
                let text = match kind.as_str() {
                    "hash" => {
                        let all: Vec<String> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
                        all.join("\n")
                    }
                    "string" => redis::cmd("GET").arg(&k).query(&mut c).unwrap(),
                    "stream" => {
                        let v: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                            .arg(&k)
                            .arg("-")
                            .arg("+")
                            .query(&mut c)
                            .unwrap();
                        v.into_iter()
                            .map(|(id, f)| format!("{id} {}", f.join(" ")))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                    other => panic!("unexpected key type {other} for {k}"),
                };
                (k, text)
            })
            .collect()
    }

    /// The stream's events (their JSON lines) for `pool`.
    pub fn events(&self, pool: &str) -> Vec<serde_json::Value> {
        let mut c = self.client();
        let v: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("qwen-rotation:{pool}:events"))
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap();
        v.into_iter()
            .filter_map(|(_, f)| serde_json::from_str(f.get(1)?).ok())
            .collect()
    }

    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query(&mut self.client())
            .unwrap()
    }

    pub fn hlen(&self, key: &str) -> usize {
        redis::cmd("HLEN")
            .arg(key)
            .query(&mut self.client())
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `text` to `path` 0600.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
