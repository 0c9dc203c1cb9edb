//! Messages another thread sends into a running session (a notice, typed bytes), and the
//! wake-up that reaches the relay's ppoll.
//!
//! Invariant: a send after the session ended is harmless (EPIPE, never SIGPIPE).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, mpsc};

/// Messages another thread sends into a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Show one line to the person without corrupting qwen's screen.
    Notice(String),
    /// Type these bytes into qwen (e.g. Ctrl+Y, 0x19, to retry).
    Input(Vec<u8>),
}

/// The sending side: cheap to clone, usable from any thread, wakes the relay loop.
#[derive(Clone)]
pub struct Controller {
    tx: mpsc::Sender<Control>,
    /// One byte per message wakes the relay's ppoll. A socket, not a pipe: std writes to sockets
    /// with MSG_NOSIGNAL, so a send after the session ended is EPIPE, never SIGPIPE.
    wake: Option<Arc<UnixStream>>,
}

impl Controller {
    pub fn send(&self, c: Control) {
        if self.tx.send(c).is_ok()
            && let Some(wake) = &self.wake
        {
            // WouldBlock means bytes are already waiting: the relay is woken either way.
            let _ = (&**wake).write(&[1]);
        }
    }
}

/// The receiving side, owned by the relay loop.
pub struct Controls {
    pub(super) rx: mpsc::Receiver<Control>,
    pub(super) wake: Option<UnixStream>,
}

pub fn controls() -> (Controller, Controls) {
    let (tx, rx) = mpsc::channel();
    // Without the socket (fd exhaustion) the relay polls the channel every 100 ms instead.
    let pair = UnixStream::pair()
        .ok()
        .filter(|(a, b)| a.set_nonblocking(true).is_ok() && b.set_nonblocking(true).is_ok());
    let (send_end, recv_end) = match pair {
        Some((a, b)) => (Some(Arc::new(a)), Some(b)),
        None => (None, None),
    };
    (
        Controller { tx, wake: send_end },
        Controls { rx, wake: recv_end },
    )
}
