//! The streaming detector: a bounded window over one stream (stderr, or the interactive screen)
//! that reports a [`Hit`] only for a phrase standing where qwen prints its errors (see the folder
//! header for the pipeline and what "one message" is). Holds at most
//! [`Detector::MAX_BUFFERED`] bytes whatever it is fed; never panics.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::detect::normalize::{Mark, Normalizer};
use crate::detect::patterns::Patterns;
use crate::model::Hit;
use crate::profile::Screen;

/// Where a stream's errors can stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// A stream that carries only errors and diagnostics (stderr): any match counts.
    Plain,
    /// The interactive screen: only a match inside qwen's `✕` error block counts.
    Screen,
}

// ---------------------------------------------------------------------------------------------
// Detector
// ---------------------------------------------------------------------------------------------

/// Raw bytes normalised per step; the window and the marks are bounded by it.
const CHUNK: usize = 8 * 1024;
/// Plain: normalised text kept behind the newest byte (context for `\b` and for a held match).
const KEEP: usize = 4 * 1024;
/// Plain: bytes before the previous scan end scanned again, so a phrase cut by a read boundary
/// (up to this long) still matches.
const OVERLAP: usize = 512;
/// Plain: how far a message reaches past its first phrase when no line feed comes.
const MAX_MESSAGE: usize = 1024;
/// Plain: how far a message reaches back before its first complete phrase: a longer phrase may
/// have started earlier and completed later (`refresh token expired …` around `token expired`).
const LOOK_BACK: usize = 256;
/// Screen: the longest error block (qwen's longest, the 0.12 upgrade text, is ~400 bytes).
const MAX_BLOCK: usize = 2 * 1024;
/// Screen: letters of a block that identify it (its wording, not its countdown digits).
const FINGERPRINT_LETTERS: usize = 96;
/// Screen: fingerprints remembered for redraw suppression.
const KNOWN_BLOCKS: usize = 32;

/// Streaming detector: feed raw bytes as they arrive; constant memory.
///
/// # Deciding
/// `feed` returns a hit once, when it is decided: Plain at the end of the phrase's line (the
/// rest of the line may outrank it, module header), Screen at the end of the `✕` block (the
/// `(Press Ctrl+Y to retry)` hint, the next block, qwen's input box, or [`MAX_BLOCK`] bytes).
/// A phrase whose line or block has not ended yet is *held*: [`Detector::hit`] already shows
/// it, and [`Detector::finish`] decides it — call `finish` at end of stream, or when the stream
/// has been quiet for a moment.
///
/// # Re-arming (Screen)
/// After acting on a hit, call [`Detector::rearm`] — do not build a new detector. Ink draws the
/// same block again: on a resize, when Ctrl+Y is pressed (0.12 redraws the old block without its
/// hint), every second while 0.24 counts down a retry. So the detector remembers a fingerprint
/// (the first [`FINGERPRINT_LETTERS`] letters: wording, not digits) of every block that
/// produced a hit, also of those seen while disarmed. After `rearm`:
/// - a block with a new fingerprint is a new error and fires at once;
/// - a block with a known fingerprint is a redraw and is ignored — unless the caller has since
///   called [`Detector::request_sent`] (it forwarded Enter or Ctrl+Y, or pressed Ctrl+Y itself)
///   *and* the block is live: it carries the `(Press Ctrl+Y to retry)` hint or 0.24's
///   `(Retrying in …` countdown. A history block redrawn after a retry has lost its hint
///   (QWEN_FACTS.md §4), so only the retry's own failure — the next account failing with the
///   same words — fires.
///
/// Also `rearm` drops the block being drawn: a hit needs a fresh `✕` after it. Plain: `rearm`
/// only forgets the hit; text already seen is never scanned again.
#[derive(Debug)]
pub struct Detector {
    patterns: Arc<Patterns>,
    anchor: Anchor,
    /// The profile's screen anchors (error marker, hint, countdown).
    anchors: &'static Screen,
    norm: Normalizer,
    marks: Vec<(usize, Mark)>,
    // Plain
    window: Vec<u8>,
    /// Absolute offset (in normalised bytes) of `window[0]`.
    base: u64,
    /// The window end at the last scan.
    scanned: u64,
    /// No match may start before this (re-arm, a rejected candidate).
    floor: u64,
    /// A candidate phrase (absolute start, end) waiting for the end of its line.
    held: Option<(u64, u64)>,
    // Screen
    scratch: Vec<u8>,
    block: Vec<u8>,
    block_open: bool,
    known: VecDeque<u64>,
    since_request: bool,
    // Both
    decided: Option<Hit>,
    tentative: Option<Hit>,
    /// The held candidate or the open block changed since `tentative` was computed.
    dirty: bool,
}

impl Detector {
    /// Upper bound on the text a detector buffers (window, scratch and block together).
    pub const MAX_BUFFERED: usize = KEEP + MAX_BLOCK + 2 * (3 * CHUNK + 8);

    pub fn new(patterns: Arc<Patterns>, anchor: Anchor) -> Detector {
        Detector::with_screen(patterns, anchor, &crate::profile::active().screen)
    }

    /// A detector for the screen of a given profile rather than the active one's.
    pub(crate) fn with_screen(
        patterns: Arc<Patterns>,
        anchor: Anchor,
        anchors: &'static Screen,
    ) -> Detector {
        let screen = anchor == Anchor::Screen;
        Detector {
            patterns,
            anchor,
            anchors,
            norm: Normalizer::new(!screen, screen, anchors),
            marks: Vec::new(),
            window: Vec::new(),
            base: 0,
            scanned: 0,
            floor: 0,
            held: None,
            scratch: Vec::new(),
            block: Vec::new(),
            block_open: false,
            known: VecDeque::new(),
            since_request: false,
            decided: None,
            tentative: None,
            dirty: false,
        }
    }

    /// Returns the hit the first time one is seen (and `None` on every later call until
    /// [`Detector::rearm`] or [`Detector::reset`]).
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Hit> {
        let mut found = None;
        for chunk in bytes.chunks(CHUNK) {
            let hit = match self.anchor {
                Anchor::Plain => self.plain_chunk(chunk),
                Anchor::Screen => self.screen_chunk(chunk),
            };
            found = found.or(hit);
        }
        self.refresh_tentative();
        found
    }

    /// The decided hit, else the held one (what `finish` would decide now), else `None`.
    pub fn hit(&self) -> Option<&Hit> {
        self.decided.as_ref().or(self.tentative.as_ref())
    }

    /// Decides what is held as if the stream ended here; returns the hit if this decided it.
    pub fn finish(&mut self) -> Option<Hit> {
        self.marks.clear();
        match self.anchor {
            Anchor::Plain => {
                self.norm.flush(&mut self.window);
                let hit = if self.decided.is_none() {
                    self.plain_scan()
                } else {
                    None
                };
                let hit = hit.or_else(|| self.resolve_held(self.window.len()));
                self.tentative = None;
                hit
            }
            Anchor::Screen => {
                self.norm.flush(&mut self.scratch);
                let (from, to) = (0, self.scratch.len());
                let hit = self.block_text(from, to);
                self.scratch.clear();
                let hit = hit.or_else(|| self.close_block(false));
                self.tentative = None;
                hit
            }
        }
    }

    /// After acting on a hit: forget it and watch for the next one (see the type's docs).
    pub fn rearm(&mut self) {
        self.decided = None;
        self.tentative = None;
        self.dirty = false;
        self.held = None;
        let end = self.end();
        self.floor = end;
        self.scanned = end;
        self.block_open = false;
        self.block.clear();
    }

    /// The caller sent qwen a keystroke that starts a request (Enter, Ctrl+Y), or pressed Ctrl+Y
    /// itself: a live block with an already-reported wording counts again (Screen only).
    pub fn request_sent(&mut self) {
        self.since_request = true;
    }

    /// Back to a new detector's state (hit, window, remembered blocks), keeping only the position
    /// inside an escape sequence or a character, which belongs to the byte stream.
    pub fn reset(&mut self) {
        self.rearm();
        self.known.clear();
        self.since_request = false;
        self.base = self.end();
        self.window.clear();
        self.floor = self.base;
        self.scanned = self.base;
    }

    /// Bytes of text held right now (≤ [`Detector::MAX_BUFFERED`]).
    pub fn buffered(&self) -> usize {
        self.window.len() + self.scratch.len() + self.block.len()
    }

    fn end(&self) -> u64 {
        self.base + self.window.len() as u64
    }

    fn rel(&self, abs: u64) -> usize {
        (abs.saturating_sub(self.base) as usize).min(self.window.len())
    }

    fn refresh_tentative(&mut self) {
        if !self.dirty || self.decided.is_some() {
            return;
        }
        self.dirty = false;
        self.tentative = match self.anchor {
            Anchor::Plain => self.held.and_then(|(start, _)| {
                let s = self.rel(start);
                let e = (s + MAX_MESSAGE).min(self.window.len());
                self.patterns.judge(
                    &self.window[self.message_start(start)..e],
                    self.patterns.now(),
                )
            }),
            Anchor::Screen if self.block_open => {
                let live = contains(&self.block, self.anchors.countdown.as_bytes());
                self.judge_block()
                    .filter(|(_, fp)| self.counts(*fp, live))
                    .map(|(hit, _)| hit)
            }
            Anchor::Screen => None,
        };
    }

    // --- Plain ---------------------------------------------------------------------------------

    fn plain_chunk(&mut self, chunk: &[u8]) -> Option<Hit> {
        self.marks.clear();
        self.norm.push(chunk, &mut self.window, &mut self.marks);
        let hit = if self.decided.is_none() {
            self.plain_scan()
        } else {
            None
        };
        self.trim();
        hit
    }

    /// Resolves a held candidate or finds the next one, in the new text plus the overlap.
    fn plain_scan(&mut self) -> Option<Hit> {
        loop {
            if let Some((start, end)) = self.held {
                let newline = self.message_end(start, end);
                let stop = match newline {
                    Some(p) => p,
                    None if self.window.len() - self.rel(start) >= MAX_MESSAGE => self.window.len(),
                    None => {
                        self.dirty = true;
                        return None;
                    }
                };
                if let Some(hit) = self.resolve_held(stop) {
                    return Some(hit);
                }
                // Rejected (a user pattern that needs more context than the line): go on after it.
                self.floor = end;
                self.scanned = end;
            }
            let from = self.floor.max(self.scanned.saturating_sub(OVERLAP as u64));
            // Nothing new since the last scan (or nothing at all): no match can start here, and
            // a run whose qwen printed nothing never compiles the alternation.
            if from >= self.end() {
                return None;
            }
            let any = self.patterns.any()?;
            let from_rel = self.rel(from);
            self.scanned = self.end();
            let m = any.find_at(&self.window, from_rel)?;
            let (s, e) = (self.base + m.start() as u64, self.base + m.end() as u64);
            // An empty match (only a user pattern with look-arounds can produce one) must not
            // stall the scan.
            if m.is_empty() {
                self.floor = e + 1;
                continue;
            }
            self.held = Some((s, e));
        }
    }

    /// The line feed (relative) that ends the message of the candidate `start..end`: the first
    /// one after the phrase where qwen's `[API Error: …` bracket is closed, so an error message
    /// wrapped over lines stays one message.
    fn message_end(&self, start: u64, end: u64) -> Option<usize> {
        let (s, e) = (self.rel(start), self.rel(end));
        let mut depth = 0i64;
        let mut counted = s;
        for &(p, kind) in &self.marks {
            if kind != Mark::Newline || p < e {
                continue;
            }
            for &b in self.window.get(counted..p).unwrap_or_default() {
                match b {
                    b'[' => depth += 1,
                    b']' => depth -= 1,
                    _ => {}
                }
            }
            counted = p;
            if depth <= 0 {
                return Some(p);
            }
        }
        None
    }

    /// Where the message of a candidate starting at `start` begins (relative): a little earlier,
    /// never before the floor.
    fn message_start(&self, start: u64) -> usize {
        self.rel(start.saturating_sub(LOOK_BACK as u64).max(self.floor))
    }

    /// Decides the held candidate with its message ending at `stop` (relative).
    fn resolve_held(&mut self, stop: usize) -> Option<Hit> {
        let (start, _) = self.held.take()?;
        let s = self.rel(start);
        let stop = stop.clamp(s, (s + MAX_MESSAGE).min(self.window.len()));
        let hit = self.patterns.judge(
            &self.window[self.message_start(start)..stop],
            self.patterns.now(),
        )?;
        self.decided = Some(hit.clone());
        self.tentative = None;
        Some(hit)
    }

    fn trim(&mut self) {
        if self.window.len() <= KEEP {
            return;
        }
        let mut cut = self.window.len() - KEEP;
        if let Some((s, _)) = self.held {
            cut = cut.min(self.message_start(s));
        }
        self.window.drain(..cut);
        self.base += cut as u64;
    }

    // --- Screen --------------------------------------------------------------------------------

    fn screen_chunk(&mut self, chunk: &[u8]) -> Option<Hit> {
        self.scratch.clear();
        self.marks.clear();
        self.norm.push(chunk, &mut self.scratch, &mut self.marks);
        let mut found = None;
        let mut cur = 0;
        for i in 0..self.marks.len() {
            let Some(&(pos, kind)) = self.marks.get(i) else {
                break;
            };
            found = found.or(self.block_text(cur, pos));
            cur = pos;
            match kind {
                Mark::Error => {
                    found = found.or(self.close_block(false));
                    self.block_open = true;
                    self.block.clear();
                }
                Mark::Break => found = found.or(self.close_block(false)),
                Mark::Newline => {}
            }
        }
        let len = self.scratch.len();
        found = found.or(self.block_text(cur, len));
        self.scratch.clear();
        found
    }

    /// Adds `scratch[from..to]` to the open block; the hint or the size bound closes it.
    fn block_text(&mut self, from: usize, to: usize) -> Option<Hit> {
        if !self.block_open || from >= to {
            return None;
        }
        let seg = self.scratch.get(from..to)?;
        let take = seg.len().min(MAX_BLOCK.saturating_sub(self.block.len()));
        let old = self.block.len();
        self.block.extend_from_slice(&seg[..take]);
        self.dirty = true;
        let hint = self.anchors.live_hint.as_bytes();
        let look = old.saturating_sub(hint.len().saturating_sub(1));
        if let Some(p) = find(&self.block[look..], hint) {
            // The block ends with its hint; the rest of the segment is outside any block.
            self.block.truncate(look + p + hint.len());
            return self.close_block(true);
        }
        if self.block.len() >= MAX_BLOCK {
            return self.close_block(false);
        }
        None
    }

    /// Ends the open block: classify it, apply the redraw rule, remember its fingerprint.
    fn close_block(&mut self, hint: bool) -> Option<Hit> {
        if !self.block_open {
            return None;
        }
        self.block_open = false;
        self.dirty = true;
        let live = hint || contains(&self.block, self.anchors.countdown.as_bytes());
        let judged = self.judge_block();
        self.block.clear();
        let (hit, fp) = judged?;
        if self.decided.is_some() {
            // Seen while the caller acts on the previous hit: its redraws must not fire later.
            self.remember(fp);
            return None;
        }
        if !self.counts(fp, live) {
            return None;
        }
        self.remember(fp);
        self.since_request = false;
        self.decided = Some(hit.clone());
        self.tentative = None;
        Some(hit)
    }

    fn judge_block(&self) -> Option<(Hit, u64)> {
        let hit = self.patterns.judge(&self.block, self.patterns.now())?;
        Some((
            hit,
            fingerprint(&self.block, self.anchors.live_hint.as_bytes()),
        ))
    }

    /// The redraw rule (type docs): new wording counts; known wording only when live and after a
    /// request.
    fn counts(&self, fp: u64, live: bool) -> bool {
        !self.known.contains(&fp) || (self.since_request && live)
    }

    fn remember(&mut self, fp: u64) {
        if !self.known.contains(&fp) {
            if self.known.len() == KNOWN_BLOCKS {
                self.known.pop_front();
            }
            self.known.push_back(fp);
        }
    }
}

/// A block's identity: its first letters (not digits, spaces or punctuation, so a countdown or a
/// different reset time does not make a redraw look new), without the CLI's `hint`.
fn fingerprint(block: &[u8], hint: &[u8]) -> u64 {
    let text = match find(block, hint) {
        Some(p) => &block[..p],
        None => block,
    };
    let mut h = DefaultHasher::new();
    String::from_utf8_lossy(text)
        .chars()
        .filter(|c| c.is_alphabetic())
        .take(FINGERPRINT_LETTERS)
        .for_each(|c| c.hash(&mut h));
    h.finish()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::{Datelike, Timelike, Utc};
    use proptest::prelude::*;

    use crate::detect::classify::classify_json_output;
    use crate::detect::normalize::normalize;
    use crate::detect::reset::parse_reset;
    use crate::detect::test_support::{STDERR, class, fixture, ink, pats, plain, run, screen};
    use crate::model::Class;

    #[test]
    fn stderr_transcripts_classify_as_the_real_client_means() {
        for &(name, text, want) in STDERR {
            let got = plain(text);
            assert_eq!(
                got.as_ref().map(|h| (h.class, h.phrase.as_str())),
                want,
                "{name} (detector)"
            );
            let whole = pats().classify(text);
            assert_eq!(
                whole.as_ref().map(|h| (h.class, h.phrase.as_str())),
                want,
                "{name} (classify)"
            );
        }
    }

    #[test]
    fn bare_numbers_and_prompts_do_not_match() {
        for text in [
            "SyntaxError at line 429: unexpected token\n",
            "Explain what HTTP 429 and 403 mean\n",
            "  File \"x.py\", line 401, in <module>\n",
            "exit status 429\n",
            "HTTP/1.1 403 Forbidden\n",
            "status=401 user=bob\n",
            "quota: 429 requests left\n",
            "Possible quota limitations in place or slow response times detected.\n",
        ] {
            assert_eq!(plain(text), None, "{text}");
        }
    }

    #[test]
    fn a_split_at_every_offset_changes_nothing() {
        for &(name, text, want) in STDERR {
            let bytes = text.as_bytes();
            for k in 0..=bytes.len() {
                let got = run(Anchor::Plain, &[&bytes[..k], &bytes[k..]]);
                assert_eq!(
                    got.as_ref().map(|h| (h.class, h.phrase.as_str())),
                    want,
                    "{name} split at {k}"
                );
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_changes_nothing() {
        for &(name, text, want) in STDERR {
            let parts: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
            let got = run(Anchor::Plain, &parts);
            assert_eq!(
                got.as_ref().map(|h| (h.class, h.phrase.as_str())),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn quota_outranks_the_retry_line_even_when_split_between_the_phrases() {
        let line =
            b"Retrying in 60s (attempt 1/10): [API Error: 429 Free allocated quota exceeded.]\n";
        let cut = line.windows(4).position(|w| w == b"Free").expect("phrase");
        let mut d = Detector::new(pats(), Anchor::Plain);
        assert_eq!(d.feed(&line[..cut]), None, "the line has not ended");
        assert_eq!(
            class(&d.hit().cloned()),
            Some(Class::Throttle),
            "held, visible as tentative"
        );
        assert_eq!(class(&d.feed(&line[cut..])), Some(Class::Quota));
    }

    #[test]
    fn the_reset_time_reaches_the_hit() {
        let hit = plain(fixture!("apikey_quota_cp_0.24_stderr.txt")).expect("hit");
        let at = hit.reset_at.expect("reset time");
        assert_eq!(
            (at.month(), at.day(), at.hour(), at.minute()),
            (11, 30, 9, 25)
        );
        let text = fixture!("apikey_quota_cp_0.12_stderr.txt").as_bytes();
        let cut = text.windows(5).position(|w| w == b"09:25").expect("time");
        for k in cut.saturating_sub(30)..cut + 10 {
            let hit = run(Anchor::Plain, &[&text[..k], &text[k..]]).expect("hit");
            assert!(
                hit.reset_at
                    .is_some_and(|t| t.hour() == 9 && t.minute() == 25),
                "split at {k}"
            );
        }
        assert_eq!(
            plain("[API Error: 401 Incorrect API key provided. ] reset at 11-30 09:25:00 UTC\n")
                .and_then(|h| h.reset_at),
            None
        );
    }

    #[test]
    fn wrapped_lines_join() {
        assert_eq!(
            class(&plain(
                "[API Error: 429 Free allocated\n    quota exceeded.]\n"
            )),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&plain(
                "Qwen OAuth quota\r\n  exceeded: Your free daily\tquota\n"
            )),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&plain("too\nmany\n\n\nrequests\n")),
            Some(Class::Throttle)
        );
    }

    #[test]
    fn invalid_utf8_is_tolerated_and_split_characters_decode() {
        assert_eq!(class(&plain("\u{fffd}")), None);
        let mut text = b"\xff\xfe\xc3 \xe2\x82 garbage \xf0\x9f\x98".to_vec();
        text.extend_from_slice(b" insufficient_quota \xed\xa0\x80\n");
        assert_eq!(class(&run(Anchor::Plain, &[&text])), Some(Class::Quota));
        assert_eq!(normalize(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
        assert_eq!(normalize(b"\xe2\x9c"), "\u{fffd}");
        // "✕" (3 bytes) and "é" (2 bytes) split across reads.
        let mut d = Detector::new(pats(), Anchor::Plain);
        for part in [&b"caf\xc3"[..], b"\xa9 \xe2", b"\x9c", b"\x95 ok\n"] {
            assert_eq!(d.feed(part), None);
        }
        assert!(
            d.window.ends_with("café ✕ ok ".as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&d.window)
        );
        // Garbage inside a phrase breaks it, as it should.
        assert_eq!(plain("insuff\u{fffd}icient_quota\n"), None);
    }

    #[test]
    fn a_ten_mebibyte_line_costs_bounded_memory() {
        let mut d = Detector::new(pats(), Anchor::Plain);
        let block = vec![b'a'; 64 * 1024];
        for _ in 0..160 {
            assert_eq!(d.feed(&block), None);
            assert!(d.buffered() <= Detector::MAX_BUFFERED, "{}", d.buffered());
            assert!(d.window.capacity() <= 2 * Detector::MAX_BUFFERED);
        }
        assert_eq!(
            d.feed(b" insufficient_quota"),
            None,
            "held until its line ends"
        );
        assert_eq!(class(&d.finish()), Some(Class::Quota));
        // A held phrase whose line never ends is decided after MAX_MESSAGE bytes.
        let mut d = Detector::new(pats(), Anchor::Plain);
        assert_eq!(d.feed(b"too many requests "), None);
        assert_eq!(
            class(&d.feed(&vec![b'x'; 2 * MAX_MESSAGE])),
            Some(Class::Throttle)
        );
    }

    #[test]
    fn an_escape_storm_costs_bounded_memory_and_blinds_nothing() {
        let mut storm = Vec::new();
        for i in 0..20_000u32 {
            storm.extend_from_slice(
                format!(
                    "\x1b[{};{}H\x1b[38;5;{}m\x1b]0;t{}\x07\x1b[2K\x1b[1A",
                    i % 50,
                    i % 120,
                    i % 256,
                    i
                )
                .as_bytes(),
            );
        }
        storm.extend_from_slice(b"\x1b[");
        storm.extend(std::iter::repeat_n(b'1', 100_000)); // an endless CSI
        storm.extend_from_slice(b"\x1b]");
        storm.extend(std::iter::repeat_n(b'x', 1 << 20)); // an unterminated OSC
        storm.extend(std::iter::repeat_n(0x1b, 100_000)); // bare ESCs
        storm.extend_from_slice(b"\x1bP");
        storm.extend(std::iter::repeat_n(b'y', 10_000)); // an unterminated DCS
        for anchor in [Anchor::Plain, Anchor::Screen] {
            let mut d = Detector::new(pats(), anchor);
            for part in storm.chunks(7919) {
                assert_eq!(d.feed(part), None);
                assert!(d.buffered() <= Detector::MAX_BUFFERED);
            }
            // The stream recovers: qwen's next error is still seen.
            let tail = match anchor {
                Anchor::Plain => b"\x07\nFree allocated quota exceeded\n".to_vec(),
                Anchor::Screen => ink(
                    "  \u{2715} [API Error: Free allocated quota exceeded.] (Press Ctrl+Y to retry)",
                ),
            };
            let hit = d.feed(&tail).or_else(|| d.finish());
            assert_eq!(class(&hit), Some(Class::Quota), "{anchor:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_never_panic_and_stay_bounded(data in proptest::collection::vec(any::<u8>(), 0..20_000), cut in 0usize..20_000) {
            for anchor in [Anchor::Plain, Anchor::Screen] {
                let mut d = Detector::new(pats(), anchor);
                let cut = cut.min(data.len());
                let _ = d.feed(&data[..cut]);
                let _ = d.feed(&data[cut..]);
                prop_assert!(d.buffered() <= Detector::MAX_BUFFERED);
                let _ = d.finish();
                d.rearm();
                let _ = d.feed(&data);
                d.reset();
            }
            let _ = classify_json_output(&data, &pats());
            let _ = pats().classify(&String::from_utf8_lossy(&data));
            let _ = parse_reset(&String::from_utf8_lossy(&data), Utc::now());
        }

        #[test]
        fn three_way_splits_change_nothing(which in 0usize..STDERR.len(), a in 0usize..2000, b in 0usize..2000) {
            let (name, text, want) = STDERR[which];
            let bytes = text.as_bytes();
            let (a, b) = (a.min(bytes.len()), b.min(bytes.len()));
            let (a, b) = (a.min(b), a.max(b));
            let got = run(Anchor::Plain, &[&bytes[..a], &bytes[a..b], &bytes[b..]]);
            prop_assert_eq!(got.as_ref().map(|h| (h.class, h.phrase.as_str())), want, "{}", name);
        }
    }

    // --- Screen --------------------------------------------------------------------------------

    const SCREENS: &[(&str, &str, Option<Class>)] = &[
        (
            "oauth_quota_0.12",
            fixture!("screen_oauth_quota_0.12.txt"),
            Some(Class::Quota),
        ),
        (
            "discontinued_0.24",
            fixture!("screen_discontinued_0.24.txt"),
            Some(Class::Auth),
        ),
        (
            "throttle_0.12",
            fixture!("screen_throttle_0.12.txt"),
            Some(Class::Throttle),
        ),
        (
            "quota_cp_0.24",
            fixture!("screen_quota_cp_0.24.txt"),
            Some(Class::Quota),
        ),
        (
            "quota_cp_0.12",
            fixture!("screen_quota_cp_0.12.txt"),
            Some(Class::Quota),
        ),
        (
            "retry_quota_0.24",
            fixture!("screen_retry_quota_0.24.txt"),
            Some(Class::Quota),
        ),
        ("401", fixture!("screen_401.txt"), Some(Class::Auth)),
        (
            "refresh_network_0.12",
            fixture!("screen_refresh_network_0.12.txt"),
            Some(Class::Auth),
        ),
        (
            "refresh_network_0.24",
            fixture!("screen_refresh_network_0.24.txt"),
            Some(Class::Auth),
        ),
        (
            "refresh_invalid",
            fixture!("screen_refresh_invalid.txt"),
            Some(Class::Auth),
        ),
        ("banner_0.24", fixture!("screen_banner_0.24.txt"), None),
        (
            "answer_quoting_0.12",
            fixture!("screen_answer_quoting.txt"),
            None,
        ),
        (
            "answer_quoting_0.24",
            fixture!("screen_answer_quoting_0.24.txt"),
            None,
        ),
    ];

    #[test]
    fn screen_error_blocks_hit_and_answers_do_not() {
        for &(name, text, want) in SCREENS {
            assert_eq!(class(&screen(text)), want, "{name}");
        }
        let hit = screen(fixture!("screen_quota_cp_0.24.txt")).expect("hit");
        assert!(
            hit.reset_at
                .is_some_and(|t| t.month() == 11 && t.day() == 30 && t.hour() == 9)
        );
    }

    /// Claude Code's TUI (2.1.332) as a terminal shows it, the detector on its screen anchors
    /// and phrases, on 2026-12-06 at 09:00 UTC.
    fn claude_screen(text: &str) -> Option<Hit> {
        let patterns = Patterns::for_profile(&crate::profile::CLAUDE)
            .with_clock(|| crate::detect::test_support::utc(2026, 12, 6, 9, 0, 0));
        let mut d = Detector::with_screen(patterns, Anchor::Screen, &crate::profile::CLAUDE.screen);
        let bytes = text.replace('\n', "\r\n");
        d.feed(bytes.as_bytes()).or_else(|| d.finish())
    }

    #[test]
    fn claude_screen_usage_limit_is_quota_until_its_reset() {
        let limit = "> hello\n  \u{23bf}  You've hit your 5-hour limit \u{b7} resets 4:35am (UTC)\n\n\u{25cf} Usage limit reached \u{b7} set to continue automatically at 4:35am\n\n\u{26a0} Usage limit reached \u{b7} limit resets 4:35am / Continuing automatically at 4:35am \u{b7} Esc to cancel\n";
        let hit = claude_screen(limit).expect("hit");
        assert_eq!(hit.class, Class::Quota);
        assert_eq!(
            hit.reset_at,
            Some(crate::detect::test_support::utc(2026, 12, 7, 4, 35, 0))
        );
        let weekly =
            "> hello\n  \u{23bf}  You've hit your weekly limit \u{b7} resets Dec 9, 1:25am (UTC)\n";
        let hit = claude_screen(weekly).expect("hit");
        assert_eq!(
            hit.reset_at,
            Some(crate::detect::test_support::utc(2026, 12, 9, 1, 25, 0))
        );
        let credit = "> hello\n  \u{23bf}  Credit balance too low \u{b7} Add funds: https://console.anthropic.com/settings/billing\n";
        assert_eq!(class(&claude_screen(credit)), Some(Class::Quota));
        let key = "> hello\n  \u{23bf}  Invalid API key \u{b7} Fix external API key\n";
        assert_eq!(class(&claude_screen(key)), Some(Class::Auth));
        // An answer (after `\u{25cf}`) or the person's prompt quoting the words is no hit.
        let answer = "> what does Credit balance too low mean?\n\n\u{25cf} \"You've hit your 5-hour limit\" means the usage limit reached its cap.\n";
        assert_eq!(claude_screen(answer), None);
    }

    #[test]
    fn screen_raw_ink_transcript_hits_once() {
        let raw = fixture!("screen_raw_oauth_quota_0.12.txt").as_bytes();
        let mut d = Detector::new(pats(), Anchor::Screen);
        let hits: Vec<Hit> = raw.chunks(97).filter_map(|c| d.feed(c)).collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].class, Class::Quota);
        assert_eq!(hits[0].phrase, "Qwen OAuth quota exceeded");
        for k in (0..raw.len()).step_by(13) {
            assert_eq!(
                class(&run(Anchor::Screen, &[&raw[..k], &raw[k..]])),
                Some(Class::Quota),
                "split at {k}"
            );
        }
    }

    #[test]
    fn screen_block_split_at_every_offset() {
        let raw = ink(fixture!("screen_quota_cp_0.24.txt"));
        for k in 0..=raw.len() {
            assert_eq!(
                class(&run(Anchor::Screen, &[&raw[..k], &raw[k..]])),
                Some(Class::Quota),
                "split at {k}"
            );
        }
    }

    #[test]
    fn screen_ignores_plain_text_and_markers_in_the_middle_of_a_line() {
        assert_eq!(
            run(
                Anchor::Screen,
                &[b"insufficient_quota\r\nQwen OAuth quota exceeded\r\n"]
            ),
            None
        );
        assert_eq!(
            run(
                Anchor::Screen,
                &["  \u{2726} see \u{2715} insufficient_quota\r\n".as_bytes()]
            ),
            None
        );
        assert_eq!(
            run(
                Anchor::Screen,
                &["      \u{2715} insufficient_quota (Press Ctrl+Y to retry)\r\n".as_bytes()]
            ),
            None
        );
        // Inside a frame (a tool's output box).
        let framed = "\u{256d}\u{2500}\u{256e}\r\n\u{2502} \u{2715} curl: rate limit exceeded \u{2502}\r\n\u{2570}\u{2500}\u{256f}\r\n";
        assert_eq!(run(Anchor::Screen, &[framed.as_bytes()]), None);
        // The person typing in the input box.
        let typing = "\u{2500}\u{2500}\u{2500}\r\n> why do I get insufficient_quota and token expired?\r\n\u{2500}\u{2500}\u{2500}\r\n";
        assert_eq!(run(Anchor::Screen, &[typing.as_bytes()]), None);
        // Drawn by cursor addressing instead of line feeds.
        let placed = "\x1b[12;3H\u{2715} [API Error: 401 Incorrect API key provided. ] (Press Ctrl+Y to retry)";
        assert_eq!(
            class(&run(Anchor::Screen, &[placed.as_bytes()])),
            Some(Class::Auth)
        );
        let deep = "\x1b[12;9H\u{2715} [API Error: 401 Incorrect API key provided. ] (Press Ctrl+Y to retry)";
        assert_eq!(run(Anchor::Screen, &[deep.as_bytes()]), None);
    }

    #[test]
    fn screen_block_without_an_end_is_held_until_finish() {
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(
            d.feed("  \u{2715} [API Error: 401 Incorrect API key provided. ]".as_bytes()),
            None
        );
        assert_eq!(
            class(&d.hit().cloned()),
            Some(Class::Auth),
            "visible while held"
        );
        assert_eq!(class(&d.finish()), Some(Class::Auth));
        // Or the next thing Ink draws ends it.
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(
            d.feed("  \u{2715} [API Error: 401 Incorrect API key provided. ]\r\n".as_bytes()),
            None
        );
        assert_eq!(
            class(&d.feed("\u{2500}\u{2500}\u{2500}\r\n> ".as_bytes())),
            Some(Class::Auth)
        );
    }

    #[test]
    fn screen_redraws_after_rearm_do_not_fire_again() {
        let block = ink(fixture!("screen_oauth_quota_0.12.txt"));
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(class(&d.feed(&block)), Some(Class::Quota));
        assert_eq!(d.feed(&block), None, "not re-armed yet");
        d.rearm();
        for _ in 0..3 {
            assert_eq!(d.feed(&block), None, "a redraw (resize) of the same block");
        }
        // A full-screen refresh: clear, history again, the old block among it.
        let mut refresh = b"\x1b[2J\x1b[3J\x1b[H".to_vec();
        refresh.extend_from_slice(&ink("  > earlier\r\n  \u{2726} an earlier answer\r\n"));
        refresh.extend_from_slice(&block);
        assert_eq!(d.feed(&refresh), None);
        assert_eq!(d.hit(), None);
    }

    #[test]
    fn screen_countdown_redraws_fire_once() {
        let mut d = Detector::new(pats(), Anchor::Screen);
        let frame = |s: u32| {
            ink(&format!(
                "  \u{2715} [API Error: 429 Free allocated quota exceeded.] (Retrying in {s}s\u{2026} (attempt 1/10))\n  \u{21bb} Retrying in {s} seconds\u{2026} (attempt 1/10)"
            ))
        };
        assert_eq!(class(&d.feed(&frame(56))), Some(Class::Quota));
        d.rearm();
        for s in (1..56).rev() {
            assert_eq!(d.feed(&frame(s)), None, "countdown at {s}");
        }
    }

    #[test]
    fn screen_new_block_after_rearm_fires() {
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(
            class(&d.feed(&ink(fixture!("screen_oauth_quota_0.12.txt")))),
            Some(Class::Quota)
        );
        d.rearm();
        assert_eq!(d.feed(&ink(fixture!("screen_oauth_quota_0.12.txt"))), None);
        assert_eq!(
            class(&d.feed(&ink(fixture!("screen_refresh_invalid.txt")))),
            Some(Class::Auth)
        );
        d.rearm();
        assert_eq!(d.feed(&ink(fixture!("screen_refresh_invalid.txt"))), None);
    }

    #[test]
    fn screen_same_wording_fires_again_only_after_a_request_and_only_when_live() {
        let quota = fixture!("screen_oauth_quota_0.12.txt");
        let without_hint = quota.replace(" (Press Ctrl+Y to retry)", "");
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(class(&d.feed(&ink(quota))), Some(Class::Quota));
        d.rearm();
        d.request_sent(); // Ctrl+Y after the swap
        // 0.12 redraws the old block without its hint: history, not a new error.
        assert_eq!(d.feed(&ink(&without_hint)), None);
        // The retry on the next account fails the same way: live, fires.
        assert_eq!(class(&d.feed(&ink(quota))), Some(Class::Quota));
        d.rearm();
        assert_eq!(d.feed(&ink(quota)), None, "its redraw does not");
        // request_sent before rearm (the caller pressed Ctrl+Y first) works as well.
        d.request_sent();
        d.rearm();
        assert_eq!(class(&d.feed(&ink(quota))), Some(Class::Quota));
    }

    #[test]
    fn screen_blocks_seen_while_disarmed_count_as_known() {
        let mut d = Detector::new(pats(), Anchor::Screen);
        assert_eq!(
            class(&d.feed(&ink(fixture!("screen_oauth_quota_0.12.txt")))),
            Some(Class::Quota)
        );
        assert_eq!(d.feed(&ink(fixture!("screen_401.txt"))), None, "disarmed");
        d.rearm();
        assert_eq!(
            d.feed(&ink(fixture!("screen_401.txt"))),
            None,
            "a redraw of a block from before the re-arm"
        );
        d.reset();
        assert_eq!(
            class(&d.feed(&ink(fixture!("screen_401.txt")))),
            Some(Class::Auth),
            "reset forgets"
        );
    }

    #[test]
    fn plain_rearm_never_rescans_old_text() {
        let mut d = Detector::new(pats(), Anchor::Plain);
        assert_eq!(
            class(&d.feed(b"[API Error: 401 Incorrect API key provided. ]\n")),
            Some(Class::Auth)
        );
        assert_eq!(d.feed(b"insufficient_quota\n"), None, "disarmed");
        d.rearm();
        assert_eq!(d.hit(), None);
        assert_eq!(d.feed(b"all good\n"), None);
        assert_eq!(d.finish(), None);
        assert_eq!(
            class(&d.feed(b"too many requests\n")),
            Some(Class::Throttle)
        );
    }
}
