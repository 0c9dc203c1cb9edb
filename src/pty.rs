//! Interactive sessions: the real qwen on a pseudo-terminal, relayed to ours.
//! (Interface stub: the implementation fills these in; signatures are the contract.)

use std::io;
use std::process::Command;
use std::sync::mpsc;

use crate::signals::Outcome;

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
}

impl Controller {
    pub fn send(&self, c: Control) {
        let _ = self.tx.send(c);
    }
}

/// The receiving side, owned by the relay loop.
pub struct Controls {
    rx: mpsc::Receiver<Control>,
}

pub fn controls() -> (Controller, Controls) {
    let (tx, rx) = mpsc::channel();
    (Controller { tx }, Controls { rx })
}

/// Runs `cmd` on a new pseudo-terminal relayed to our terminal (stdin and stdout are terminals)
/// until it exits. `on_output` sees every chunk of the child's output after it was written to
/// our terminal. Err only when the terminal could not be set up (the caller then runs qwen
/// directly).
pub fn run(cmd: Command, on_output: &mut dyn FnMut(&[u8]), controls: Controls) -> io::Result<Outcome> {
    let _ = (cmd, on_output, controls.rx);
    Err(io::Error::other("the terminal relay is not built yet"))
}
