//! qwen's stdin across attempts: inherited, rewound (a regular file) or pumped through a bounded
//! copy (a pipe), so a retry is given the same input as the first attempt.
//!
//! Invariant: a pumped copy never holds more than `limit` bytes; past it the run is unreplayable.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// Where the child's stdin comes from.
pub enum StdinSource {
    /// A terminal or nothing worth replaying: the child inherits our stdin.
    Inherit,
    /// A regular file: rewound to `offset` before every attempt after the first.
    Seekable { offset: u64 },
    /// A pipe or socket: pumped through a bounded copy.
    Pumped(Arc<StdinPump>),
    /// A pipe or socket that could not be pumped: inherited, and never replayed.
    Unreplayable,
}

impl StdinSource {
    /// Chooses by what fd 0 is.
    pub fn detect(limit: u64) -> StdinSource {
        use nix::sys::stat::{SFlag, fstat};
        let stdin = io::stdin();
        if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return StdinSource::Inherit;
        }
        match fstat(stdin.as_fd()) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {
                match nix::unistd::lseek(stdin.as_fd(), 0, nix::unistd::Whence::SeekCur) {
                    Ok(offset) if offset >= 0 => StdinSource::Seekable {
                        offset: offset as u64,
                    },
                    _ => StdinSource::Inherit,
                }
            }
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR => {
                // /dev/null and other devices: nothing to replay, and reading them is harmless.
                StdinSource::Inherit
            }
            Ok(_) => match StdinPump::start(limit) {
                Ok(pump) => StdinSource::Pumped(pump),
                // No thread for the copy (EAGAIN): qwen reads the pipe itself, unreplayable.
                Err(e) => {
                    crate::error::warn(format!(
                        "cannot start a thread to keep a copy of stdin ({e}); this run will not be retried"
                    ));
                    StdinSource::Unreplayable
                }
            },
            Err(_) => StdinSource::Inherit,
        }
    }

    /// Can the input be given again to another attempt?
    pub fn replayable(&self) -> bool {
        match self {
            StdinSource::Pumped(p) => !p.overflowed(),
            StdinSource::Unreplayable => false,
            _ => true,
        }
    }
}

/// Our stdin, read once and kept (up to `limit` bytes) so every attempt can be given all of it.
pub struct StdinPump {
    state: Mutex<PumpState>,
    changed: Condvar,
    limit: usize,
}

struct PumpState {
    data: Vec<u8>,
    /// Absolute offset of `data[0]`: non-zero once the limit was passed and old bytes dropped.
    start: usize,
    /// Furthest absolute offset a writer has reached.
    consumed: usize,
    eof: bool,
    overflowed: bool,
}

impl StdinPump {
    pub(super) fn start(limit: u64) -> io::Result<Arc<StdinPump>> {
        let pump = Arc::new(StdinPump {
            state: Mutex::new(PumpState {
                data: Vec::new(),
                start: 0,
                consumed: 0,
                eof: false,
                overflowed: false,
            }),
            changed: Condvar::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
        let p = Arc::clone(&pump);
        thread::Builder::new().spawn(move || p.fill()).map(|_| pump)
    }

    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PumpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self) {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let mut st = self.lock();
            if n == 0 {
                st.eof = true;
                self.changed.notify_all();
                return;
            }
            if st.data.len() + n > self.limit {
                // Past the limit the input cannot be replayed: keep only what the running
                // attempt has not read yet, so memory stays bounded by the limit.
                st.overflowed = true;
                while st.consumed < st.start + st.data.len() {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.start += st.data.len();
                st.data.clear();
            }
            st.data.extend_from_slice(&buf[..n]);
            self.changed.notify_all();
        }
    }

    /// Feeds everything (from the start) into one attempt's stdin, then closes it.
    pub(super) fn feed(&self, mut sink: impl Write) {
        let mut pos = 0usize;
        loop {
            let chunk = {
                let mut st = self.lock();
                while pos == st.start + st.data.len() && !st.eof {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if pos < st.start {
                    return; // dropped after an overflow: this attempt cannot be fed in full
                }
                let from = pos - st.start;
                if from == st.data.len() {
                    return; // EOF: dropping `sink` closes the child's stdin
                }
                let to = st.data.len().min(from + 64 * 1024);
                st.data[from..to].to_vec()
            };
            if sink.write_all(&chunk).is_err() {
                return; // the child closed its stdin or died
            }
            pos += chunk.len();
            let mut st = self.lock();
            st.consumed = st.consumed.max(pos);
            self.changed.notify_all();
        }
    }
}
