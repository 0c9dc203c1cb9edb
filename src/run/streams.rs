//! qwen's stdout and stderr on their way to ours: relayed live, held back, or released, by the
//! rules in `pipes.rs`'s header; every stderr chunk goes through the detector before it is shown.
//!
//! Invariant: what is held is bounded (`HOLD_LIMIT`, `HELD_STDERR_LIMIT`).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::signals::Outcome;
use crate::detect::{Anchor, Detector, Patterns, classify_stream_event};
use crate::model::{Class, Hit};
use crate::profile::Argv;

/// How qwen's stdout is to be treated, from `--output-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutMode {
    /// Our stdout is a terminal: the child gets it directly.
    Inherit,
    Text,
    /// `text`, held until the attempt ends (bounded by `HOLD_LIMIT`).
    HeldText,
    Json,
    StreamJson,
}

impl StdoutMode {
    /// Reads `--output-format X`, `--output-format=X`, `-o X` (the profile's `argv.output_format`)
    /// from the child's argv (before `--`).
    pub fn from_args(args: &[OsString], argv: &Argv) -> StdoutMode {
        let mut format = None;
        let mut it = args.iter().take_while(|a| *a != "--");
        while let Some(a) = it.next() {
            let a = a.to_string_lossy();
            if argv.output_format.contains(&a.as_ref()) {
                format = it.next().map(|v| v.to_string_lossy().into_owned());
            } else if let Some(v) = argv
                .output_format
                .iter()
                .filter(|o| o.starts_with("--"))
                .find_map(|o| a.strip_prefix(o).and_then(|r| r.strip_prefix('=')))
            {
                format = Some(v.to_string());
            }
        }
        match format.as_deref() {
            Some(f) if f == argv.json => StdoutMode::Json,
            Some(f) if f == argv.stream_json => StdoutMode::StreamJson,
            _ => StdoutMode::Text,
        }
    }

    /// `Text` becomes `HeldText` when `hold` is asked for; every other mode stays itself (a
    /// terminal is never held: the person reads the answer as it arrives).
    pub fn held(self, hold: bool) -> StdoutMode {
        match self {
            StdoutMode::Text if hold => StdoutMode::HeldText,
            other => other,
        }
    }
}

pub(super) enum Event {
    Hit(Class),
    Exited(Outcome),
    StdoutDone(StdoutResult),
    StderrDone(StderrResult),
}

pub(super) struct StdoutResult {
    pub(super) held: Vec<u8>,
    pub(super) committed: bool,
    pub(super) closed: bool,
    /// text: the last bytes of the output (at most `TEXT_TAIL`), shown or held, where a CLI
    /// that prints its errors on stdout (claude) leaves its error line.
    pub(super) tail: Vec<u8>,
}

/// text: how much of the end of the output is kept for a failed run's error line.
const TEXT_TAIL: usize = 4 * 1024;

pub(super) struct StderrResult {
    pub(super) held: Vec<u8>,
    pub(super) hit: Option<Hit>,
}

/// How long a partial stderr line waits for the rest of its line before it is released.
const PARTIAL_LINE_WAIT_MS: u16 = 20;

/// A partial stderr line longer than this is released without waiting for its end.
const PARTIAL_LINE_LIMIT: usize = 8 * 1024;

/// Held json or text output beyond this is released (and the attempt committed): memory stays
/// bounded. The rest then streams live, and a quota hit later in that attempt ends the run as
/// without the hold (qwen's error shown, the next run uses the next account): retrying would
/// repeat what the caller already has.
pub const HOLD_LIMIT: usize = 64 << 20;

/// Error text kept for a possible release; beyond it the block is dropped (a retry replaces it).
pub(super) const HELD_STDERR_LIMIT: usize = 1 << 20;

/// Writes to our stdout; false once the reader on the other side has gone.
pub(super) fn write_stdout(bytes: &[u8]) -> bool {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|_| out.flush()).is_ok()
}

/// Relays the child's stdout by `mode`. stream-json: an event line before the gate opens that
/// reports a failing request (`detect::classify_stream_event`: claude's rejected
/// `rate_limit_event`, its `api_retry` of a 429 or 401) is handed to `on_hit`, so an attempt
/// that will be retried can be stopped instead of retrying by itself for minutes.
pub(super) fn relay_stdout(
    mut src: impl Read,
    mode: StdoutMode,
    patterns: &Patterns,
    on_hit: &dyn Fn(Class),
) -> StdoutResult {
    let mut r = StdoutResult {
        held: Vec::new(),
        committed: false,
        closed: false,
        tail: Vec::new(),
    };
    let text = matches!(mode, StdoutMode::Text | StdoutMode::HeldText);
    let mut buf = vec![0u8; 64 * 1024];
    // stream-json: lines held until the gate opens.
    let mut gate_open = mode == StdoutMode::Text;
    // stream-json: held text before this offset is complete lines already judged. Only lines
    // completed by a new read are judged, so a long line arriving in many reads costs linear
    // time, not a rescan of everything held on every read.
    let mut judged = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if r.closed {
            continue;
        }
        if text {
            keep_tail(&mut r.tail, chunk);
        }
        if !gate_open {
            r.held.extend_from_slice(chunk);
            gate_open = match mode {
                StdoutMode::Json | StdoutMode::HeldText => r.held.len() > HOLD_LIMIT,
                StdoutMode::StreamJson => {
                    let completed = chunk.iter().rposition(|&b| b == b'\n');
                    let opens =
                        completed.is_some() && stream_gate_opens(&r.held[judged..], patterns);
                    if let Some(at) = completed {
                        let end = r.held.len() - n + at + 1;
                        for line in r.held[judged..end].split(|&b| b == b'\n') {
                            if let Some(hit) = classify_stream_event(line, patterns.now()) {
                                on_hit(hit.class);
                            }
                        }
                        judged = end;
                    }
                    opens || r.held.len() > HOLD_LIMIT
                }
                _ => true,
            };
            if !gate_open {
                continue;
            }
            let held = std::mem::take(&mut r.held);
            r.committed = true;
            if !write_stdout(&held) {
                // Closing our end gives the child the same EPIPE/SIGPIPE it would get without us.
                r.closed = true;
                return r;
            }
            continue;
        }
        r.committed = true;
        if !write_stdout(chunk) {
            r.closed = true;
            return r;
        }
    }
    r
}

/// stream-json: the gate opens at the first complete line that is neither a `system` line (the
/// init line, claude's `api_retry`), a `rate_limit_event`, nor an error report (by its phrases,
/// or claude's `"is_api_error_message": true` on the message that carries an API error).
fn stream_gate_opens(held: &[u8], patterns: &Patterns) -> bool {
    held.split(|&b| b == b'\n').rev().skip(1).any(|line| {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return false;
        };
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match kind {
            "system" | "result" | "rate_limit_event" => false,
            _ if v.get("is_api_error_message") == Some(&serde_json::Value::Bool(true)) => false,
            _ => patterns.classify(&String::from_utf8_lossy(line)).is_none(),
        }
    })
}

/// Keeps the last `TEXT_TAIL` bytes of a text output.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    let from = chunk.len().saturating_sub(TEXT_TAIL);
    tail.extend_from_slice(&chunk[from..]);
    let excess = tail.len().saturating_sub(TEXT_TAIL);
    tail.drain(..excess);
}

/// The error a failed run of a CLI that prints its errors on stdout left as the last line of its
/// text output (`Credit balance is too low`, exit 1), by the phrases; an answer never counts,
/// since only a failed run's last line is read.
pub(super) fn text_error(tail: &[u8], patterns: &Patterns) -> Option<Hit> {
    let line = tail
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .rfind(|l| !l.is_empty())?;
    patterns.classify(&String::from_utf8_lossy(line))
}

pub(super) fn relay_stderr(
    mut src: impl Read + AsFd,
    patterns: Arc<Patterns>,
    tx: &Sender<Event>,
) -> StderrResult {
    let mut detector = Detector::new(patterns, Anchor::Plain);
    let mut r = StderrResult {
        held: Vec::new(),
        hit: None,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out_ok = true;
    // A hit decided on a line that is still held back: keep that line, tell the attempt.
    let decided = |hit: Hit, r: &mut StderrResult, pending: &mut Vec<u8>| {
        let _ = tx.send(Event::Hit(hit.class));
        r.hit = Some(hit);
        hold(&mut r.held, pending);
        pending.clear();
    };
    loop {
        if !pending.is_empty() && !readable_within(src.as_fd(), PARTIAL_LINE_WAIT_MS) {
            // A partial line followed by a pause: decide a phrase it holds, else show it now.
            match detector
                .hit()
                .is_some()
                .then(|| detector.finish())
                .flatten()
            {
                Some(hit) => decided(hit, &mut r, &mut pending),
                None => {
                    out_ok = out_ok && write_stderr(&pending);
                    pending.clear();
                }
            }
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if r.hit.is_some() {
            hold(&mut r.held, chunk);
            continue;
        }
        if let Some(hit) = detector.feed(chunk) {
            pending.extend_from_slice(chunk);
            decided(hit, &mut r, &mut pending);
            continue;
        }
        pending.extend_from_slice(chunk);
        // Release complete lines; a partial line waits for its end, but never beyond
        // PARTIAL_LINE_LIMIT (a stream with no newlines must not grow without bound).
        let end = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => Some(end + 1),
            None if pending.len() > PARTIAL_LINE_LIMIT => Some(pending.len()),
            None => None,
        };
        if let Some(end) = end {
            out_ok = out_ok && write_stderr(&pending[..end]);
            pending.drain(..end);
        }
    }
    if r.hit.is_none() {
        match detector.finish() {
            Some(hit) => decided(hit, &mut r, &mut pending),
            None if !pending.is_empty() => {
                let _ = out_ok && write_stderr(&pending);
            }
            None => {}
        }
    }
    r
}

pub(super) fn hold(held: &mut Vec<u8>, bytes: &[u8]) {
    let room = HELD_STDERR_LIMIT.saturating_sub(held.len());
    held.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

pub(super) fn write_stderr(bytes: &[u8]) -> bool {
    let mut err = io::stderr().lock();
    err.write_all(bytes).and_then(|_| err.flush()).is_ok()
}

/// True when `fd` has data (or EOF) within `ms` milliseconds.
fn readable_within(fd: BorrowedFd<'_>, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => n > 0,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A reader that returns the given chunks one read at a time.
    struct Reads(VecDeque<Vec<u8>>);

    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(c) = self.0.pop_front() else {
                return Ok(0);
            };
            buf[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    fn stream(chunks: &[&str]) -> StdoutResult {
        let reads = Reads(chunks.iter().map(|c| c.as_bytes().to_vec()).collect());
        relay_stdout(
            reads,
            StdoutMode::StreamJson,
            &Patterns::defaults(),
            &|_| {},
        )
    }

    const INIT: &str = "{\"type\":\"system\",\"subtype\":\"init\"}\n";
    const ERROR: &str = "{\"type\":\"result\",\"is_error\":true,\"result\":\"[API Error: 429 Free allocated quota exceeded.]\"}\n";

    #[test]
    fn stream_json_gate_opens_on_an_answer_line_completed_across_reads() {
        // The answer's line ends in a later read, together with the start of the next line.
        let r = stream(&[
            &INIT[..10],
            &INIT[10..],
            "{\"type\":\"assis",
            "tant\",\"message\":{}}",
            "\n{\"type\":\"res",
        ]);
        assert!(r.committed);
        assert!(r.held.is_empty());
    }

    #[test]
    fn claude_stream_json_events_keep_the_gate_shut_and_report_a_hit() {
        let retry = "{\"type\":\"system\",\"subtype\":\"api_retry\",\"attempt\":1,\"max_retries\":10,\"retry_delay_ms\":600,\"error_status\":429}\n";
        let limit = "{\"type\":\"rate_limit_event\",\"rate_limit_info\":{\"status\":\"rejected\",\"resetsAt\":1,\"rateLimitType\":\"five_hour\"}}\n";
        let api_error = "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"API Error: 500\"}]},\"is_api_error_message\":true}\n";
        let whole = format!("{INIT}{retry}{limit}{api_error}");
        for cut in [1, INIT.len() + 5, whole.len() - 3] {
            let hits = std::cell::RefCell::new(Vec::new());
            let reads = Reads(
                [&whole[..cut], &whole[cut..]]
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect(),
            );
            let r = relay_stdout(reads, StdoutMode::StreamJson, &Patterns::defaults(), &|c| {
                hits.borrow_mut().push(c)
            });
            assert!(!r.committed, "cut at {cut}");
            assert_eq!(r.held, whole.as_bytes(), "cut at {cut}");
            assert_eq!(
                hits.into_inner(),
                [Class::Throttle, Class::Quota],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_failed_text_runs_last_line_is_its_error() {
        let p = Patterns::for_profile(&crate::profile::CLAUDE);
        let judge = |text: &str| text_error(text.as_bytes(), &p).map(|h| h.class);
        assert_eq!(judge("Credit balance is too low\n"), Some(Class::Quota));
        assert_eq!(
            judge("\nInvalid API key \u{b7} Fix external API key\n\n"),
            Some(Class::Auth)
        );
        // Only the last line: an answer above it that quotes a phrase does not count.
        assert_eq!(
            judge("Credit balance is too low, you said.\nError: Reached max turns (1)\n"),
            None
        );
        assert_eq!(judge(""), None);
        // The tail is bounded and keeps the end.
        let mut tail = Vec::new();
        keep_tail(&mut tail, &vec![b'x'; 3 * TEXT_TAIL]);
        keep_tail(&mut tail, b"\nCredit balance is too low\n");
        assert_eq!(tail.len(), TEXT_TAIL);
        assert!(tail.ends_with(b"too low\n"));
        let text = format!("{}\nCredit balance is too low\n", "y".repeat(100_000));
        let reads = Reads(text.as_bytes().chunks(7000).map(<[u8]>::to_vec).collect());
        let r = relay_stdout(reads, StdoutMode::HeldText, &p, &|_| {});
        assert_eq!(r.held, text.as_bytes());
        assert_eq!(text_error(&r.tail, &p).map(|h| h.class), Some(Class::Quota));
    }

    #[test]
    fn stream_json_gate_stays_shut_for_init_and_error_lines_in_any_reads() {
        let whole = format!("{INIT}{ERROR}");
        for cut in 1..whole.len() {
            let r = stream(&[&whole[..cut], &whole[cut..]]);
            assert!(!r.committed, "cut at {cut}");
            assert_eq!(r.held, whole.as_bytes(), "cut at {cut}");
        }
    }
}
