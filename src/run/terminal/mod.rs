//! Interactive sessions: the real qwen on a pseudo-terminal of its own, relayed to ours, in the
//! manner of util-linux script(1).
//!
//! Invariant: the person's terminal looks exactly as it did before the shim started, whatever
//! way the session ends — qwen exits, qwen is killed, the shim receives TERM or HUP, the shim is
//! stopped from outside, or code in this process panics. Between those moments the terminal is
//! raw and every byte flows through one loop, so everything the person types reaches qwen's
//! own terminal, and everything qwen draws reaches theirs, in order and complete.
//!
//! How it is built (script(1), pty(7), termios(3), tty_ioctl(4)):
//! - `openpty` with the outer terminal's termios and window size, so qwen starts on a terminal
//!   that looks like ours. In `pre_exec` the child calls setsid(2) and TIOCSCTTY, so the pty is
//!   its controlling terminal and its process group is the pty's foreground group: Ctrl-C,
//!   Ctrl-\ and Ctrl-D typed by the person are plain bytes in our raw terminal and the *pty's*
//!   line discipline turns them into SIGINT/SIGQUIT/EOF for qwen, once.
//! - Our terminal goes raw (cfmakeraw) and is restored by a guard (`RawMode`, in `Drop`), by a
//!   panic hook before the panic message is printed, and around every stop.
//! - One thread runs the relay: ppoll(2) on our stdin, the pty master, a self-pipe written by
//!   the signal handler, and a wake-up socket written by `Controller::send`. Our handled signals
//!   are blocked everywhere except inside ppoll (and, while output floods in and ppoll never
//!   blocks, for a moment every `SIGNAL_LATENCY`); threads started from the relay thread inherit
//!   the block, so no other system call of the process sees EINTR because of them.
//! - Output: child bytes are written to our stdout first, then given to `on_output` (the
//!   detector), so detection never delays what the person sees. After the child exits the master
//!   is read until EIO: every byte qwen wrote is on the screen before the shim exits (a stray
//!   grandchild still holding the pty open ends the drain after `DRAIN_IDLE` of silence).
//! - Signals aimed at the shim (a kill(2); the raw terminal generates none): TERM, HUP, INT,
//!   QUIT, USR1 and USR2 are forwarded to the child's process group and the relay keeps running
//!   until qwen exits (its last frame is drawn), then restores and reports qwen's status. WINCH
//!   copies our window size to the pty (TIOCSWINSZ); the kernel then signals qwen.
//! - Job control. A person's Ctrl-Z is a byte for qwen, as without the shim (qwen's raw TUI
//!   reads it; it does not suspend itself). When the child's terminal is in a mode where the
//!   line discipline would turn Ctrl-Z into SIGTSTP (ISIG set, e.g. a plain shell script), the
//!   kernel would discard that signal: the child's group is orphaned (its leader's parent, the
//!   shim, is in another session; POSIX "orphaned process group", and Linux's get_signal drops
//!   TSTP/TTIN/TTOU there). So the relay does what the outer terminal would have done without
//!   the shim: it stops the child (SIGSTOP always works), restores the terminal and stops
//!   itself with SIGTSTP, so the shell shows the job as stopped. The same happens for a TSTP,
//!   TTIN or TTOU sent to the shim, and, as script(1) does, when the child stops itself (we
//!   follow it). On SIGCONT (`fg`) the terminal goes raw again, the child is continued and gets
//!   a SIGWINCH, so a full-screen client redraws. Resumed in the background (`bg`), the raw
//!   tcsetattr(3) stops the shim again with SIGTTOU until `fg`, as with any full-screen program.
//! - `Control::Notice` draws one line on the terminal's last row without moving qwen's cursor:
//!   DECSC (ESC 7), CUP to the last row, EL 2, the text (inverse video unless NO_COLOR is set),
//!   SGR 0, DECRC (ESC 8). It is written only between qwen's escape sequences (we track where
//!   qwen's output stands), so it never splits one; it does not scroll and does not change what
//!   Ink believes is on screen, and qwen's next redraw of that row replaces it. The cost: it
//!   overwrites the terminal's single saved-cursor slot (qwen does not use DECSC). `Input` bytes
//!   are queued with the person's keystrokes and written to the master as if typed.
//! - On EOF from our stdin (a hung-up terminal) the pty's EOF character (VEOF) is sent once if
//!   the child's terminal is canonical, and our stdin is no longer read.
//!
//! Only when stdin *and* stdout are terminals does run.rs come here. When only one is (`qwen |
//! less`, `qwen < prompt.txt`), the run is headless (pipes.rs): there is no screen to relay, and
//! a terminal on one side stays the child's, untouched, exactly as if the shell had started qwen.
//!
//! `run` returns Err only before the child is started (our terminal is then as it was), so the
//! caller can still exec qwen directly. One relay per process (signal handlers and the panic
//! hook are process-wide): a second concurrent `run` returns Err. `run` reaps every child of the
//! process (waitpid(-1)): the shim is a subreaper, and orphaned descendants of qwen must not stay
//! zombies. Linux only, like the rest of the shim: ppoll(2), /proc, termios on the pty master.
//!
//! Files, lowest first (each imports only files earlier in this list): `signals` (our
//! handlers, stopping ourselves, one relay per process) → `raw` (raw mode and its restoration),
//! `notice` (the last-row notice, escape tracking), `controls` (messages into a session) →
//! `session` (the relay loop) → `start` (`run`: pty, spawn, loop). May import `run::signals` and
//! everything below the run path.

mod controls;
mod notice;
mod raw;
mod session;
mod signals;
mod start;

pub use controls::{Control, Controller, Controls, controls};
pub use start::run;
