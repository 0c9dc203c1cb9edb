//! What a test's mock provider shares between its connection threads and the test: every
//! request it saw (in arrival order, awaited with a deadline), the names made spent from now on,
//! and the gate that holds `…hold` answers until the test releases them.
//!
//! Included by the mocks of the real CLIs (tests/support/real_gemini.rs, real_claude.rs) with
//! `#[path = "recorder.rs"] mod recorder;`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub struct Recorder<S> {
    seen: Mutex<Vec<S>>,
    spent: Mutex<Vec<String>>,
    arrived: Condvar,
    released: Mutex<bool>,
    release: Condvar,
}

impl<S> Default for Recorder<S> {
    fn default() -> Self {
        Recorder {
            seen: Mutex::new(Vec::new()),
            spent: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            released: Mutex::new(false),
            release: Condvar::new(),
        }
    }
}

impl<S: Send + 'static> Recorder<S> {
    /// A recorder, and a server on 127.0.0.1 that hands each connection to `serve` in a thread
    /// of its own: its address.
    pub fn listen(serve: fn(TcpStream, &Recorder<S>)) -> (Arc<Recorder<S>>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Recorder::default());
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = Arc::clone(&s);
                thread::spawn(move || serve(conn, &s));
            }
        });
        (shared, addr)
    }
}

impl<S: Clone> Recorder<S> {
    /// A request arrived: recorded, and every waiter woken.
    pub fn record(&self, seen: S) {
        self.seen.lock().unwrap().push(seen);
        self.arrived.notify_all();
    }

    pub fn seen(&self) -> Vec<S> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until a request matching `pred` has arrived; false on timeout.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&S) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut seen = self.seen.lock().unwrap();
        loop {
            if seen.iter().any(&pred) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self.arrived.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// From now on, `key` answers as spent.
    pub fn spend(&self, key: &str) {
        self.spent.lock().unwrap().push(key.to_string());
    }

    pub fn is_spent(&self, key: &str) -> bool {
        self.spent.lock().unwrap().iter().any(|k| k == key)
    }

    /// Holds the caller (a held answer) until [`Recorder::release`], at most two minutes.
    pub fn hold(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut released = self.released.lock().unwrap();
        while !*released && Instant::now() < deadline {
            released = self
                .release
                .wait_timeout(released, Duration::from_secs(1))
                .unwrap()
                .0;
        }
    }

    /// Lets every held answer go.
    pub fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.release.notify_all();
    }
}
