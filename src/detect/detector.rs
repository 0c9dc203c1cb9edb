//! Quota detection: normalise qwen's output and match it against phrase patterns. Pure, no I/O.
//!
//! Invariant: a [`Detector`] holds at most [`Detector::MAX_BUFFERED`] bytes of text whatever it
//! is fed, never panics on any input, and reports a [`Hit`] only for a phrase standing where qwen
//! prints its errors — anywhere on stderr ([`Anchor::Plain`]), inside a `✕` error block on screen
//! ([`Anchor::Screen`]), in the `result` element of json output ([`classify_json_output`]) — never
//! for a model answer that quotes the same words (DESIGN.md, "Detection").
//!
//! The pipeline:
//! 1. [`Normalizer`]: escape sequences (CSI, OSC, DCS…, also when split across reads) removed,
//!    box drawing, spinner frames and zero-width characters removed, UTF-8 decoded lossily (a
//!    character split across reads still decodes), everything lowercased, and every run of
//!    whitespace — line breaks included, so wrapped lines join — turned into one space.
//! 2. Plain: the normalised text goes into a window that keeps only the last [`KEEP`] bytes;
//!    each step scans only the new text plus an [`OVERLAP`], so a phrase cut by a read boundary
//!    still matches and throughput does not depend on the window. Screen: only the text of `✕`
//!    blocks is kept, one bounded block at a time.
//! 3. [`Patterns`]: one combined regex finds the first candidate; the whole message around it is
//!    then classified with the precedence rule below, and a reset time is read from it.
//!
//! Precedence within one message: **quota > auth > throttle**.
//! - Quota outranks everything: qwen 0.24 wraps a quota answer in its rate-limit retry line
//!   (`Retrying in 60s (attempt 1/10): [API Error: 429 Free allocated quota exceeded.]`) and
//!   DashScope puts allocation quotas under a `Throttling.AllocationQuota` code; the quota
//!   phrase is the specific one. Quota over auth because a quota cooldown ends on its own
//!   (if the account was really unusable, the next run reports it again), while `needs_login`
//!   waits for a person.
//! - Auth outranks throttle: a rejected credential fails every retry, a rate limit passes.
//! - `Possible quota limitations in place or slow response times detected` is NOT a pattern:
//!   qwen 0.12 prints it after every 429, rate limits included (QWEN_FACTS_APIKEY.md §2).
//! - Never a bare number: `429`/`401`/`403` count only inside qwen's own `[API Error: NNN`
//!   shape, so a line number or a prompt that mentions 429 matches nothing.
//!
//! What "one message" is:
//! - Plain: from [`LOOK_BACK`] bytes before the first complete phrase (a longer phrase may have
//!   started earlier) to the first line feed after it at which qwen's `[API Error: …` bracket is
//!   closed (an error wrapped over lines stays one message), at most [`MAX_MESSAGE`] bytes. So a
//!   Plain hit is decided only when its line ends — the quota phrase of the 0.24 retry line may
//!   arrive in the read after the `[API Error: 429` — and a last line without a line feed is
//!   decided by [`Detector::finish`] (or read, still held, from [`Detector::hit`]).
//! - Screen: one `✕` block, from the `✕` to its end (see [`Detector`]).
//! - [`Patterns::classify`], [`classify_http`], [`classify_json_output`]: the text given.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;

pub use crate::model::{Class, Hit};

/// Where a stream's errors can stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// A stream that carries only errors and diagnostics (stderr): any match counts.
    Plain,
    /// The interactive screen: only a match inside qwen's `✕` error block counts.
    Screen,
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

/// How user patterns combine with the built-in ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PatternMode {
    #[default]
    Extend,
    Replace,
}

/// The `patterns:` section: extra (or replacement) phrases per class, as regular expressions.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternConfig {
    pub mode: PatternMode,
    pub quota: Vec<String>,
    pub throttle: Vec<String>,
    pub auth: Vec<String>,
}

/// The built-in phrases: (class, the name a [`Hit`] carries, a regex over *normalised* text —
/// lowercase, single spaces). Sources: QWEN_FACTS.md and QWEN_FACTS_APIKEY.md (verbatim messages
/// of qwen 0.12.0 and 0.24.4), DashScope's and OpenAI's error codes. `(?-u:\b)` is an ASCII word
/// boundary: the Unicode one would push the regex engine off its fast path on non-ASCII text.
const DEFAULTS: &[(Class, &str, &str)] = &[
    // quota
    (Class::Quota, "insufficient_quota", r"insufficient[ _]quota"),
    (
        Class::Quota,
        "Free allocated quota exceeded",
        r"free allocated quota exceeded",
    ),
    // DashScope `Throttling.AllocationQuota`: "Allocated quota exceeded, please increase …".
    (
        Class::Quota,
        "Allocated quota exceeded",
        r"allocated quota exceeded",
    ),
    (
        Class::Quota,
        "Qwen OAuth quota exceeded",
        r"qwen oauth quota exceeded",
    ),
    (
        Class::Quota,
        "free daily quota has been reached",
        r"free daily quota has been reached",
    ),
    // Coding Plan: "Your token-plan 1-week quota has been exhausted. The quota will reset at …"
    (
        Class::Quota,
        "quota has been exhausted",
        r"quota has been exhausted",
    ),
    // qwen 0.24's fail-fast prefix for the same answer.
    (Class::Quota, "Quota exhausted:", r"quota exhausted:"),
    // OpenAI's insufficient_quota message.
    (
        Class::Quota,
        "exceeded your current quota",
        r"exceeded your current quota",
    ),
    // auth
    (
        Class::Auth,
        "Refresh token expired or invalid",
        r"refresh token expired or invalid",
    ),
    (Class::Auth, "invalid access token", r"invalid access token"),
    (Class::Auth, "token expired", r"token (?:has )?expired"),
    (
        Class::Auth,
        "free tier was discontinued",
        r"free tier (?:was|has been) discontinued",
    ),
    (
        Class::Auth,
        "Incorrect API key provided",
        r"incorrect api[ _-]?key provided",
    ),
    (Class::Auth, "invalid_api_key", r"invalid[ _]?api[ _-]?key"),
    // qwen refreshes after a 401 (0.12: also a 403) or an expired token; when the refresh fails
    // the access token is unusable whatever the cause (QWEN_FACTS.md §2, §4, §5).
    (
        Class::Auth,
        "Network error during token refresh",
        r"network error during token refresh",
    ),
    (
        Class::Auth,
        "Unexpected error during token refresh",
        r"unexpected error during token refresh",
    ),
    (
        Class::Auth,
        "Device authorization flow failed",
        r"device authorization flow failed",
    ),
    (
        Class::Auth,
        "Missing API key for OpenAI-compatible auth",
        r"missing api key for openai-compatible auth",
    ),
    // DashScope 403 `Arrearage`: the account is unusable until it is paid up.
    (
        Class::Auth,
        "account not in good standing",
        r"make sure your account is in good standing",
    ),
    (Class::Auth, "Arrearage", r"(?-u:\b)arrearage(?-u:\b)"),
    (
        Class::Auth,
        "[API Error: 401 …]",
        r"\[api error: 401(?-u:\b)",
    ),
    (
        Class::Auth,
        "[API Error: 403 …]",
        r"\[api error: 403(?-u:\b)",
    ),
    // throttle
    (
        Class::Throttle,
        "Requests rate limit exceeded",
        r"requests rate limit exceeded",
    ),
    (
        Class::Throttle,
        "rate limit exceeded",
        r"rate[ _-]?limit(?:ed(?-u:\b)|[ _]exceeded|[ _]reached)",
    ),
    (Class::Throttle, "Throttling", r"(?-u:\b)throttling(?-u:\b)"),
    (Class::Throttle, "too many requests", r"too many requests"),
    (
        Class::Throttle,
        "limit_requests",
        r"(?-u:\b)limit_requests(?-u:\b)",
    ),
    // qwen prints `[API Error: 429 …]` only after its own retries (0.12: ~90 s), and 0.24 wraps
    // it in `Retrying in 60s (attempt 1/10): …` while it retries for an hour.
    (
        Class::Throttle,
        "[API Error: 429 …]",
        r"\[api error: 429(?-u:\b)",
    ),
];

/// Bound on one user pattern's compiled size: a pattern is a phrase, not a program.
const USER_REGEX_SIZE: usize = 1 << 20;
/// Bound on the combined regex.
const COMBINED_REGEX_SIZE: usize = 32 << 20;

#[derive(Clone, Debug)]
struct Entry {
    class: Class,
    /// What a [`Hit`] reports: the default's name, or a user pattern's source text.
    name: String,
    /// False for qwen's bare `[API Error: NNN` shapes: within a class, a phrase that says what
    /// happened names the hit better than the status code does.
    specific: bool,
    /// The pattern's own regex, compiled the first time the alternation matches: most runs never
    /// see an error, and compiling every entry at start-up was most of the shim's start-up work.
    source: String,
    user: bool,
    re: OnceLock<Option<Regex>>,
}

impl Entry {
    fn regex(&self) -> Option<&Regex> {
        self.re
            .get_or_init(|| {
                if self.user {
                    user_regex(&self.source).ok()
                } else {
                    default_regex(&self.source).ok()
                }
            })
            .as_ref()
    }
}

/// The compiled pattern set (defaults, extended or replaced by `rotation.yaml`).
#[derive(Debug)]
pub struct Patterns {
    entries: Vec<Entry>,
    /// Every pattern in one alternation: the fast first pass over streamed text. `None` when the
    /// set is empty (`mode: replace` with no entries). Compiled on first use: a run whose qwen
    /// prints nothing never pays for it.
    any: OnceLock<Option<Regex>>,
    combined: String,
    /// "Now", for a reset time without a year: `Utc::now` but in tests, which pin the date the
    /// recorded transcripts were seen on.
    clock: fn() -> DateTime<Utc>,
}

impl Patterns {
    /// The built-in set, compiled once per process.
    pub fn defaults() -> Arc<Patterns> {
        static DEFAULT: OnceLock<Arc<Patterns>> = OnceLock::new();
        Arc::clone(DEFAULT.get_or_init(|| {
            // The defaults are constants covered by a test; an empty set is the impossible
            // fallback, chosen over a panic (fail open: qwen still runs).
            Arc::new(Patterns::build(default_sources()).unwrap_or(Patterns {
                entries: Vec::new(),
                any: OnceLock::new(),
                combined: String::new(),
                clock: Utc::now,
            }))
        }))
    }

    /// Err names the class, the entry number and the regex error.
    pub fn from_config(cfg: &PatternConfig) -> Result<Arc<Patterns>, String> {
        let adds_nothing = cfg.quota.is_empty() && cfg.throttle.is_empty() && cfg.auth.is_empty();
        if cfg.mode == PatternMode::Extend && adds_nothing {
            return Ok(Patterns::defaults());
        }
        let mut sources = match cfg.mode {
            PatternMode::Extend => default_sources(),
            PatternMode::Replace => Vec::new(),
        };
        for (class, list) in [
            (Class::Quota, &cfg.quota),
            (Class::Throttle, &cfg.throttle),
            (Class::Auth, &cfg.auth),
        ] {
            for (i, source) in list.iter().enumerate() {
                let n = i + 1;
                let key = class.key();
                if source.trim().is_empty() {
                    return Err(format!("patterns.{key} entry {n} is empty"));
                }
                let re = user_regex(source)
                    .map_err(|e| format!("patterns.{key} entry {n} ({source:?}) is not a valid regular expression: {e}"))?;
                // A pattern that matches empty text would flag every output of every run.
                if re.is_match(b"") || re.find_iter(b"x y").any(|m| m.is_empty()) {
                    return Err(format!(
                        "patterns.{key} entry {n} ({source:?}) matches empty text"
                    ));
                }
                sources.push(Source {
                    class,
                    name: source.clone(),
                    regex: source.clone(),
                    user: true,
                });
            }
        }
        Patterns::build(sources).map(Arc::new)
    }

    /// Classifies one complete message (already normalised or not).
    pub fn classify(&self, text: &str) -> Option<Hit> {
        self.classify_at(text, self.now())
    }

    /// The same patterns reading "now" from `clock`.
    pub fn with_clock(&self, clock: fn() -> DateTime<Utc>) -> Arc<Patterns> {
        Arc::new(Patterns {
            entries: self.entries.clone(),
            any: self.any.clone(),
            combined: self.combined.clone(),
            clock,
        })
    }

    /// The current time as these patterns see it.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// [`Patterns::classify`] with the clock given (a reset time without a year needs "now").
    pub fn classify_at(&self, text: &str, now: DateTime<Utc>) -> Option<Hit> {
        self.judge(&normalize_bytes(text.as_bytes()), now)
    }

    /// Is the set empty (`mode: replace` without entries)?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries' own regexes are compiled when first needed: user patterns were compiled
    /// once already by `from_config` (which names a bad one), the defaults by a test. The
    /// alternation is compiled here only when user patterns could make it too large.
    fn build(sources: Vec<Source>) -> Result<Patterns, String> {
        let mut entries = Vec::with_capacity(sources.len());
        let mut combined = String::new();
        let any_user = sources.iter().any(|s| s.user);
        for s in sources {
            if !combined.is_empty() {
                combined.push('|');
            }
            // Each alternative in its own group, user ones case-insensitive (the text is lowercase
            // already; this keeps `[A-Z]` and the like meaning what the user meant).
            combined.push_str(if s.user { "(?i:" } else { "(?:" });
            combined.push_str(&s.regex);
            combined.push(')');
            let specific = s.user || !s.name.starts_with("[API Error");
            entries.push(Entry {
                class: s.class,
                name: s.name,
                specific,
                source: s.regex,
                user: s.user,
                re: OnceLock::new(),
            });
        }
        let patterns = Patterns {
            entries,
            any: OnceLock::new(),
            combined,
            clock: Utc::now,
        };
        if any_user {
            let any = patterns
                .compile_any()
                .map_err(|e| format!("patterns: together they are too large to compile: {e}"))?;
            let _ = patterns.any.set(any);
        }
        Ok(patterns)
    }

    fn compile_any(&self) -> Result<Option<Regex>, String> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        RegexBuilder::new(&self.combined)
            .size_limit(COMBINED_REGEX_SIZE)
            .build()
            .map(Some)
            .map_err(|e| one_line(&e))
    }

    /// The alternation of every pattern, None for an empty set.
    fn any(&self) -> Option<&Regex> {
        self.any
            .get_or_init(|| self.compile_any().ok().flatten())
            .as_ref()
    }

    /// The winning entry for normalised text: the highest class present (precedence), within it
    /// a specific phrase over a bare status shape, then the phrase that starts first (ties: list
    /// order).
    fn best(&self, text: &[u8]) -> Option<(Class, usize)> {
        if !self.any()?.is_match(text) {
            return None;
        }
        let mut best: Option<((u8, bool), usize, usize)> = None; // (tier, start, entry)
        for (i, e) in self.entries.iter().enumerate() {
            let tier = (e.class.rank(), e.specific);
            if best.is_some_and(|(t, _, _)| t > tier) {
                continue;
            }
            if let Some(m) = e.regex().and_then(|re| re.find(text)) {
                let better = match best {
                    None => true,
                    Some((t, start, _)) => tier > t || m.start() < start,
                };
                if better {
                    best = Some((tier, m.start(), i));
                }
            }
        }
        best.and_then(|(_, _, i)| self.entries.get(i).map(|e| (e.class, i)))
    }

    /// Classifies normalised text and reads its reset time.
    fn judge(&self, text: &[u8], now: DateTime<Utc>) -> Option<Hit> {
        let (class, i) = self.best(text)?;
        let reset_at = match class {
            Class::Quota | Class::Throttle => parse_reset(&String::from_utf8_lossy(text), now),
            Class::Auth => None,
        };
        Some(Hit {
            class,
            phrase: self.entries.get(i)?.name.clone(),
            reset_at,
        })
    }
}

struct Source {
    class: Class,
    name: String,
    regex: String,
    user: bool,
}

fn default_sources() -> Vec<Source> {
    DEFAULTS
        .iter()
        .map(|&(class, name, regex)| Source {
            class,
            name: name.to_string(),
            regex: regex.to_string(),
            user: false,
        })
        .collect()
}

fn default_regex(source: &str) -> Result<Regex, String> {
    RegexBuilder::new(source).build().map_err(|e| one_line(&e))
}

fn user_regex(source: &str) -> Result<Regex, String> {
    RegexBuilder::new(source)
        .case_insensitive(true)
        .size_limit(USER_REGEX_SIZE)
        .build()
        .map_err(|e| one_line(&e))
}

/// A regex error on one line (its Display draws the pattern and a caret on several): the
/// `error: …` line when there is one, else everything joined.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    if let Some(line) = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
    {
        return line.trim().to_string();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Normaliser
// ---------------------------------------------------------------------------------------------

/// Normalises a complete text (see [`Normalizer`]): what the patterns are matched against.
pub fn normalize(text: &[u8]) -> String {
    String::from_utf8_lossy(&normalize_bytes(text)).into_owned()
}

fn normalize_bytes(text: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::new(false, false);
    let mut out = Vec::with_capacity(text.len().min(1 << 20));
    let mut marks = Vec::new();
    n.push(text, &mut out, &mut marks);
    n.flush(&mut out);
    out
}

/// Longest CSI we follow; beyond it the bytes count as text again (a broken sequence must not
/// swallow the rest of the stream).
const MAX_CSI: usize = 64;
/// Longest OSC/DCS/APC string we skip (titles and hyperlinks are far shorter).
const MAX_STRING: usize = 4096;
/// Longest run of ESC intermediates.
const MAX_INTERMEDIATE: usize = 16;
/// Screen: the deepest indent of an error block's `✕`. qwen draws its markers (`✕`, `✦`, `◆`,
/// `>`) at column 2 and an answer's text at column 4 and deeper, so a `✕` inside an answer
/// (a quoted error, a list) does not open a block.
const MAX_MARKER_INDENT: u32 = 3;

/// Where the normaliser stands inside an escape sequence; kept between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (`ESC ( B`).
    Intermediate,
    /// After `ESC [`: parameters until a final byte.
    Csi,
    /// Inside an OSC/DCS/SOS/PM/APC string, until BEL or `ESC \`.
    String,
    /// An ESC inside such a string: `\` ends it.
    StringEscape,
}

/// A position in the normalised output where something structural happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// A raw line feed (Plain: a message ends at the first one after its phrase).
    Newline,
    /// Something that ends a screen block: box drawing (qwen's input box, a tool frame), an
    /// answer marker (`✦` 0.12, `◆` 0.24) or qwen's retry marker (`↻`).
    Break,
    /// A `✕` at the start of a screen line: an error block starts here.
    Error,
}

/// Streaming normaliser: raw terminal bytes in, lowercase single-spaced text out. All state
/// between reads is a few bytes (escape state, a partial UTF-8 character).
#[derive(Debug)]
struct Normalizer {
    esc: Esc,
    /// Bytes consumed by the current escape sequence (bounded, see MAX_*).
    esc_len: usize,
    utf8: [u8; 4],
    utf8_have: usize,
    utf8_need: usize,
    /// The last output byte is a space (or nothing was output yet): collapses runs, trims the
    /// start.
    last_space: bool,
    /// Nothing visible since the start of a line (newline, CR, cursor positioning).
    line_start: bool,
    /// Columns of blank since the start of the line (while `line_start`).
    indent: u32,
    /// The first two numeric CSI parameters (cursor columns).
    csi_params: [u32; 2],
    csi_param: usize,
    newline_marks: bool,
    screen_marks: bool,
}

impl Normalizer {
    fn new(newline_marks: bool, screen_marks: bool) -> Normalizer {
        Normalizer {
            esc: Esc::Ground,
            esc_len: 0,
            utf8: [0; 4],
            utf8_have: 0,
            utf8_need: 0,
            last_space: true,
            line_start: true,
            indent: 0,
            csi_params: [0; 2],
            csi_param: 0,
            newline_marks,
            screen_marks,
        }
    }

    /// Normalises `input`, appending to `out`; positions in `marks` index `out`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>, marks: &mut Vec<(usize, Mark)>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.esc {
                Esc::Ground => {
                    if self.utf8_need > 0 {
                        if b & 0xC0 == 0x80 {
                            self.utf8[self.utf8_have] = b;
                            self.utf8_have += 1;
                            i += 1;
                            if self.utf8_have == self.utf8_need {
                                self.finish_utf8(out, marks);
                            }
                            continue;
                        }
                        // A character cut short: one replacement character, then this byte afresh.
                        self.utf8_need = 0;
                        self.utf8_have = 0;
                        self.visible(out, '\u{FFFD}');
                        continue;
                    }
                    if b == b' ' || (0x21..0x7f).contains(&b) {
                        i = self.ascii_run(input, i, out);
                        continue;
                    }
                    i += 1;
                    match b {
                        0x1b => {
                            self.esc = Esc::Escape;
                            self.esc_len = 0;
                        }
                        b'\n' => {
                            self.new_line(out, 0);
                            if self.newline_marks {
                                mark(marks, out.len(), Mark::Newline);
                            }
                        }
                        b'\r' | 0x0b | 0x0c => self.new_line(out, 0),
                        b'\t' => {
                            self.space(out);
                            self.indent = (self.indent / 8 + 1) * 8;
                        }
                        0x00..=0x1f | 0x7f => {} // BEL, BS and friends: invisible
                        0xc2..=0xdf => self.begin_utf8(b, 2),
                        0xe0..=0xef => self.begin_utf8(b, 3),
                        0xf0..=0xf4 => self.begin_utf8(b, 4),
                        _ => self.visible(out, '\u{FFFD}'),
                    }
                }
                Esc::Escape => {
                    self.esc_len += 1;
                    match b {
                        b'[' => {
                            self.esc = Esc::Csi;
                            self.esc_len = 0;
                            self.csi_params = [0; 2];
                            self.csi_param = 0;
                        }
                        b']' | b'P' | b'X' | b'^' | b'_' => {
                            self.esc = Esc::String;
                            self.esc_len = 0;
                        }
                        0x20..=0x2f => self.esc = Esc::Intermediate,
                        // Reverse index, index, next line, full reset, restore cursor: the text
                        // that follows stands elsewhere on the screen.
                        b'M' | b'D' | b'E' | b'c' | b'7' | b'8' => {
                            self.esc = Esc::Ground;
                            self.new_line(out, 0);
                        }
                        0x30..=0x7e | 0x18 | 0x1a => self.esc = Esc::Ground,
                        0x1b => {}
                        // Not an escape after all: the byte is text (or a control) again.
                        _ => {
                            self.esc = Esc::Ground;
                            continue;
                        }
                    }
                    i += 1;
                }
                Esc::Intermediate => {
                    self.esc_len += 1;
                    match b {
                        0x20..=0x2f if self.esc_len <= MAX_INTERMEDIATE => {}
                        0x30..=0x7e | 0x18 | 0x1a => self.esc = Esc::Ground,
                        0x1b => self.esc = Esc::Escape,
                        _ => {
                            self.esc = Esc::Ground;
                            continue;
                        }
                    }
                    i += 1;
                }
                Esc::Csi => {
                    self.esc_len += 1;
                    match b {
                        b'0'..=b'9' if self.esc_len <= MAX_CSI => {
                            if let Some(p) = self.csi_params.get_mut(self.csi_param) {
                                *p = p.saturating_mul(10).saturating_add(u32::from(b - b'0'));
                            }
                        }
                        b';' if self.esc_len <= MAX_CSI => self.csi_param += 1,
                        0x20..=0x3f if self.esc_len <= MAX_CSI => {}
                        0x40..=0x7e => {
                            self.esc = Esc::Ground;
                            self.csi_final(b, out);
                        }
                        0x1b => self.esc = Esc::Escape,
                        0x18 | 0x1a => self.esc = Esc::Ground,
                        // C0 controls inside a CSI are executed by terminals, not printed.
                        0x00..=0x1f => {}
                        _ => {
                            self.esc = Esc::Ground;
                            continue;
                        }
                    }
                    i += 1;
                }
                Esc::String => {
                    // Skip to the terminator in one step: titles and hyperlinks are common.
                    let rest = &input[i..];
                    let room = MAX_STRING.saturating_sub(self.esc_len);
                    match rest
                        .iter()
                        .take(room)
                        .position(|&c| matches!(c, 0x07 | 0x1b | 0x18 | 0x1a))
                    {
                        Some(p) => {
                            self.esc = if rest[p] == 0x1b {
                                Esc::StringEscape
                            } else {
                                Esc::Ground
                            };
                            i += p + 1;
                        }
                        None if rest.len() < room => {
                            self.esc_len += rest.len();
                            i = input.len();
                        }
                        None => {
                            // Unterminated for too long: give up and treat what follows as text.
                            self.esc = Esc::Ground;
                            i += room;
                        }
                    }
                }
                Esc::StringEscape => {
                    if b == b'\\' {
                        self.esc = Esc::Ground;
                        i += 1;
                    } else {
                        // ESC inside a string starts a new sequence (xterm does the same).
                        self.esc = Esc::Escape;
                        self.esc_len = 0;
                    }
                }
            }
        }
    }

    /// End of input: a character still cut short becomes a replacement character.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.utf8_need > 0 {
            self.utf8_need = 0;
            self.utf8_have = 0;
            self.visible(out, '\u{FFFD}');
        }
    }

    /// The hot path: printable ASCII and single spaces, copied in bulk and lowercased in place.
    /// Returns the index of the first byte it did not take.
    #[inline]
    fn ascii_run(&mut self, input: &[u8], start: usize, out: &mut Vec<u8>) -> usize {
        let mut i = start;
        // Blanks first: they collapse, and at a line start they are the indent.
        while input.get(i) == Some(&b' ') {
            if self.line_start {
                self.indent = self.indent.saturating_add(1);
            }
            i += 1;
        }
        if i > start {
            self.space(out);
        }
        // Then a run of words separated by single spaces, taken as it is: eight bytes at a time
        // while that holds, byte by byte where it stops.
        let run = i;
        let mut prev_space = self.last_space;
        while let Some(word) = input.get(i..i + 8) {
            match plain_word(word, prev_space) {
                Some(ends_in_space) => {
                    prev_space = ends_in_space;
                    i += 8;
                }
                None => break,
            }
        }
        while let Some(&c) = input.get(i) {
            if c > b' ' && c < 0x7f {
                prev_space = false;
            } else if c == b' ' && !prev_space {
                prev_space = true;
            } else {
                break;
            }
            i += 1;
        }
        if i > run {
            let old = out.len();
            out.extend_from_slice(&input[run..i]);
            out[old..].make_ascii_lowercase();
            self.last_space = prev_space;
            self.line_start = false;
        }
        i
    }

    fn begin_utf8(&mut self, lead: u8, need: usize) {
        self.utf8[0] = lead;
        self.utf8_have = 1;
        self.utf8_need = need;
    }

    fn finish_utf8(&mut self, out: &mut Vec<u8>, marks: &mut Vec<(usize, Mark)>) {
        let n = self.utf8_need;
        self.utf8_need = 0;
        self.utf8_have = 0;
        // from_utf8 also rejects overlong forms and surrogates that the lead byte let through.
        let c = std::str::from_utf8(&self.utf8[..n])
            .ok()
            .and_then(|s| s.chars().next())
            .unwrap_or('\u{FFFD}');
        self.char(c, out, marks);
    }

    fn char(&mut self, c: char, out: &mut Vec<u8>, marks: &mut Vec<(usize, Mark)>) {
        match c {
            // Box drawing and block elements: frames, rules, progress bars. What follows a frame's
            // border stands inside the frame (a tool's output), where qwen draws no error marker.
            '\u{2500}'..='\u{259f}' => {
                self.space(out);
                self.line_start = false;
                if self.screen_marks {
                    mark(marks, out.len(), Mark::Break);
                }
            }
            // Spinner frames: braille (⠋⠙⠹…, ⣾⣽…) and the circle/triangle sets.
            '\u{2800}'..='\u{28ff}'
            | '\u{25d0}'..='\u{25d3}'
            | '\u{25e2}'..='\u{25e5}'
            | '\u{25f0}'..='\u{25f7}' => self.space(out),
            // Line breaks outside ASCII: NEL, line and paragraph separators.
            '\u{85}' | '\u{2028}' | '\u{2029}' => self.new_line(out, 0),
            // Invisible: C1 controls, zero-width characters, variation selectors (`◆︎`), BOM.
            '\u{80}'..='\u{9f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2060}'..='\u{2064}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}' => {}
            '✕' => {
                if self.screen_marks && self.line_start && self.indent <= MAX_MARKER_INDENT {
                    mark(marks, out.len(), Mark::Error);
                }
                self.visible(out, c);
            }
            '✦' | '◆' | '↻' => {
                if self.screen_marks {
                    mark(marks, out.len(), Mark::Break);
                }
                self.visible(out, c);
            }
            c if c.is_whitespace() => self.space(out),
            c => self.visible(out, c),
        }
    }

    fn csi_final(&mut self, fin: u8, out: &mut Vec<u8>) {
        // A missing or zero parameter means 1 for cursor movement.
        let [p0, p1] = self.csi_params.map(|p| p.max(1));
        match fin {
            // To a column of some line (Ink's redraw ends its erase with ESC[G).
            b'G' | b'`' => self.new_line(out, p0 - 1),
            b'H' | b'f' => self.new_line(out, p1 - 1),
            // Other moves to another line, erase display, scroll, save/restore: what follows
            // is a new line of the screen (Ink's redraw starts with ESC[2K ESC[1A …).
            b'A' | b'B' | b'E' | b'F' | b'd' | b'J' | b'S' | b'T' | b'L' | b'M' | b's' | b'u' => {
                self.new_line(out, 0)
            }
            // Cursor forward stands for blanks (some renderers draw indentation with it).
            b'C' | b'a' => {
                self.space(out);
                self.indent = self.indent.saturating_add(p0);
            }
            // Erasures within a line and tabs: blanks.
            b'K' | b'X' | b'@' | b'P' | b'I' => self.space(out),
            // SGR (colours), modes and the rest change nothing in the text.
            _ => {}
        }
    }

    /// The cursor is now at `column` of some line: a word boundary, and a place where a marker
    /// may stand.
    fn new_line(&mut self, out: &mut Vec<u8>, column: u32) {
        self.space(out);
        self.line_start = true;
        self.indent = column;
    }

    fn space(&mut self, out: &mut Vec<u8>) {
        if !self.last_space {
            out.push(b' ');
            self.last_space = true;
        }
    }

    fn visible(&mut self, out: &mut Vec<u8>, c: char) {
        let mut buf = [0u8; 4];
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase() as u8);
        } else if c == '\u{FFFD}' {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        } else {
            for l in c.to_lowercase() {
                out.extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
            }
        }
        self.last_space = false;
        self.line_start = false;
    }
}

/// Eight bytes that the hot path may copy as they are: all printable ASCII or space (0x20..=0x7e),
/// no two spaces in a row (`prev_space`: the byte before was one). Returns whether the last byte
/// is a space. Bit tricks on one u64 ("SWAR"); no byte can carry into its neighbour because
/// bytes with the high bit set are rejected first.
#[inline]
fn plain_word(bytes: &[u8], prev_space: bool) -> Option<bool> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let w = u64::from_le_bytes(bytes.try_into().ok()?);
    if w & HIGH != 0 {
        return None;
    }
    // Every byte ≥ 0x20 (adding 0x60 sets its high bit) and ≤ 0x7e (adding 1 does not).
    if w.wrapping_add(0x60 * ONES) & HIGH != HIGH || w.wrapping_add(ONES) & HIGH != 0 {
        return None;
    }
    // Exact mask of the spaces: the high bit of each byte that was 0x20.
    let x = w ^ (0x20 * ONES);
    let spaces = !((x & LOW7).wrapping_add(LOW7) | x | LOW7);
    if spaces & (spaces << 8) != 0 || (prev_space && spaces & 0x80 != 0) {
        return None;
    }
    Some(spaces >> 63 != 0)
}

fn mark(marks: &mut Vec<(usize, Mark)>, pos: usize, kind: Mark) {
    // Runs (a rule of 120 `─`, blank lines) collapse to one mark.
    if marks.last() != Some(&(pos, kind)) {
        marks.push((pos, kind));
    }
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
/// qwen's hint under a live error (normalised).
const HINT: &[u8] = b"(press ctrl+y to retry)";
/// qwen 0.24's countdown under an error it is still retrying (normalised).
const COUNTDOWN: &[u8] = b"(retrying in";

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
        let screen = anchor == Anchor::Screen;
        Detector {
            patterns,
            anchor,
            norm: Normalizer::new(!screen, screen),
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
                let live = contains(&self.block, COUNTDOWN);
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
        let look = old.saturating_sub(HINT.len() - 1);
        if let Some(p) = find(&self.block[look..], HINT) {
            // The block ends with its hint; the rest of the segment is outside any block.
            self.block.truncate(look + p + HINT.len());
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
        let live = hint || contains(&self.block, COUNTDOWN);
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
        Some((hit, fingerprint(&self.block)))
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
/// different reset time does not make a redraw look new), without qwen's hint.
fn fingerprint(block: &[u8]) -> u64 {
    let text = match find(block, HINT) {
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

// ---------------------------------------------------------------------------------------------
// Reset times
// ---------------------------------------------------------------------------------------------

/// A message this late after its reset time still means "reset at that time", not "next year".
const RESET_GRACE: TimeDelta = TimeDelta::days(1);

/// How far ahead a reset without a year may lie. Providers word daily, weekly and monthly
/// quotas this way; a `MM-DD` further ahead than a month is a message read long after its date
/// (or a garbled one), not a quota that lasts most of a year.
const YEARLESS_HORIZON: TimeDelta = TimeDelta::days(31);

/// The reset time a message announces: Coding Plan's `will reset at 11-30 09:25:00 UTC` (no
/// year: the first such instant not more than a day before `now` — this year, or next year
/// across New Year; a message read up to a day late still gives the past instant rather than
/// one a year away) and ISO-8601 forms (`resets at 2026-11-30T09:25:00Z`, `reset time:
/// 2026-11-30 17:25:00+08:00`). A time without a zone is UTC.
///
/// A year-less instant more than [`YEARLESS_HORIZON`] ahead gives `None`: the message names no
/// usable reset, so the account gets the configured `quota_cooldown`, as for a message without
/// one (benching it for eleven months, or silently for the 31-day cap, would be a guess).
pub fn parse_reset(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| {
            regex::Regex::new(
                r"(?ix)
                \breset(?:s|ting)?(?:\s+time)?(?:\s+(?:is|at|on|after))?\s*:?\s*
                (?: (?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
                  | (?P<mo2>\d{1,2})[-/](?P<d2>\d{1,2}) )
                (?: (?:t|\s+) (?P<h>\d{1,2}):(?P<mi>\d{2}) (?::(?P<s>\d{2})(?:[.,]\d+)?)? )?
                (?: \s*(?P<tz>z|utc|gmt|[+-]\d{2}:?\d{2}) )?",
            )
            .ok()
        })
        .as_ref()?;
    re.captures_iter(text).find_map(|c| reset_from(&c, now))
}

fn reset_from(c: &regex::Captures<'_>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let num = |name: &str| c.name(name).and_then(|m| m.as_str().parse::<u32>().ok());
    let (h, mi, s) = match c.name("h") {
        Some(_) => (num("h")?, num("mi")?, num("s").unwrap_or(0).min(59)),
        None => (0, 0, 0),
    };
    let offset = match c.name("tz").map(|m| m.as_str().to_ascii_lowercase()) {
        Some(tz) if tz.starts_with('+') || tz.starts_with('-') => {
            let digits: String = tz.chars().filter(char::is_ascii_digit).collect();
            let hh: i64 = digits.get(..2)?.parse().ok()?;
            let mm: i64 = digits.get(2..4)?.parse().ok()?;
            let secs = hh * 3600 + mm * 60;
            if tz.starts_with('-') { -secs } else { secs }
        }
        _ => 0,
    };
    let at = |year: i32, month: u32, day: u32| -> Option<DateTime<Utc>> {
        let naive = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, mi, s)?;
        Some(Utc.from_utc_datetime(&naive) - TimeDelta::seconds(offset))
    };
    if let Some(y) = c.name("y").and_then(|m| m.as_str().parse::<i32>().ok()) {
        return at(y, num("mo")?, num("d")?);
    }
    let (mo, d) = (num("mo2")?, num("d2")?);
    (now.year() - 1..=now.year() + 1)
        .filter_map(|y| at(y, mo, d))
        .find(|t| *t >= now - RESET_GRACE)
        .filter(|t| *t <= now + YEARLESS_HORIZON)
}

// ---------------------------------------------------------------------------------------------
// HTTP answers (the loopback relay)
// ---------------------------------------------------------------------------------------------

/// Classifies a provider's HTTP error answer: 429 with a quota phrase → Quota, any other 429 →
/// Throttle; 401 → Auth; 403 with a quota phrase → Quota, any other 403 → Auth; other 4xx → what
/// the body says, if anything; 5xx and everything else → `None` (a server fault is not the
/// account's). An error event inside a 200 SSE stream is not an HTTP status: classify its text
/// with [`Patterns::classify`].
pub fn classify_http(status: u16, body: &str, patterns: &Patterns) -> Option<Hit> {
    let found = patterns.classify(body);
    let status_hit = |class: Class| Hit {
        class,
        phrase: format!("HTTP {status}"),
        reset_at: if class == Class::Auth {
            None
        } else {
            parse_reset(body, patterns.now())
        },
    };
    match status {
        429 => match found {
            Some(h) if h.class != Class::Auth => Some(h),
            _ => Some(status_hit(Class::Throttle)),
        },
        401 => match found {
            Some(h) if h.class == Class::Auth => Some(h),
            _ => Some(status_hit(Class::Auth)),
        },
        403 => match found {
            Some(h) if h.class != Class::Throttle => Some(h),
            _ => Some(status_hit(Class::Auth)),
        },
        400..=499 => found,
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON output
// ---------------------------------------------------------------------------------------------

/// How deep `stats` is searched for an error count.
const STATS_DEPTH: usize = 6;

/// `--output-format json` / `stream-json`: looks only at the structure qwen uses for errors (the
/// result element), never at the text of a successful answer.
///
/// - `is_error: true` (0.24): classify `error.message` (else `result`).
/// - `is_error: false` (0.12 exits 0 with the error as the answer, QWEN_FACTS.md §2): only when
///   `stats` counts an API error (`stats.models.*.api.totalErrors > 0`) is the `result` text
///   classified; an answer that merely quotes `insufficient_quota` has no error count.
///
/// json is one array; stream-json is JSON Lines, of which the last parseable `result` line
/// counts. Truncated or invalid output gives `None`.
pub fn classify_json_output(stdout: &[u8], patterns: &Patterns) -> Option<Hit> {
    let result = result_element(stdout)?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let message = text(result.pointer("/error/message"))
            .or_else(|| text(result.get("result")))
            .or_else(|| text(result.get("error")))?;
        return patterns.classify(&message);
    }
    let answer = text(result.get("result"))?;
    match result.get("stats") {
        Some(stats) if !counts_errors(stats, STATS_DEPTH) => return None,
        Some(_) => {}
        // qwen 0.12's stream-json result line carries no stats: there, only a result that *is*
        // one of qwen's own error reports counts (it starts with the report's fixed prefix; a
        // model answer that merely quotes one does not).
        None if !ERROR_REPORT_PREFIXES
            .iter()
            .any(|p| answer.trim_start().starts_with(p)) =>
        {
            return None;
        }
        None => {}
    }
    patterns.classify(&answer)
}

/// How qwen's own error reports begin when it puts them in the `result` of a json run.
const ERROR_REPORT_PREFIXES: &[&str] = &[
    "Qwen OAuth quota exceeded",
    "[API Error:",
    "Quota exhausted:",
];

fn result_element(stdout: &[u8]) -> Option<Value> {
    let is_result = |v: &Value| v.get("type").and_then(Value::as_str) == Some("result");
    let trimmed = stdout.trim_ascii();
    if trimmed.starts_with(b"[")
        && let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(trimmed)
    {
        return items.into_iter().rev().find(is_result);
    }
    // stream-json (or an array cut short, whose lines may still parse): the last result line.
    trimmed
        .rsplit(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| l.starts_with(b"{"))
        .find_map(|line| {
            serde_json::from_slice::<Value>(line)
                .ok()
                .filter(|v| v.is_object() && is_result(v))
        })
}

/// Does `stats` count an API error anywhere (`totalErrors > 0`)?
fn counts_errors(v: &Value, depth: usize) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "totalErrors" && v.as_f64().is_some_and(|n| n > 0.0))
                || (depth > 0 && counts_errors(v, depth - 1))
        }),
        Value::Array(items) => depth > 0 && items.iter().any(|v| counts_errors(v, depth - 1)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::Timelike;
    use proptest::prelude::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/", $name))
        };
    }

    /// The default patterns on the day the recorded transcripts were seen (their year-less
    /// `11-30 09:25:00` reset is five days ahead), so no test depends on today's date.
    fn pats() -> Arc<Patterns> {
        Patterns::defaults().with_clock(|| utc(2026, 11, 25, 12, 0, 0))
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test date")
    }

    /// Feeds the parts in order; the first hit a feed returns, else what `finish` decides.
    fn run(anchor: Anchor, parts: &[&[u8]]) -> Option<Hit> {
        let mut d = Detector::new(pats(), anchor);
        let mut found = None;
        for p in parts {
            let hit = d.feed(p);
            assert!(
                found.is_none() || hit.is_none(),
                "a second hit without re-arming"
            );
            found = found.or(hit);
        }
        found.or_else(|| d.finish())
    }

    fn plain(text: &str) -> Option<Hit> {
        run(Anchor::Plain, &[text.as_bytes()])
    }

    fn class(hit: &Option<Hit>) -> Option<Class> {
        hit.as_ref().map(|h| h.class)
    }

    /// A screen as tmux shows it → roughly what Ink writes: an erase of the previous frame,
    /// colour around the error line, CRLF line ends.
    fn ink(screen: &str) -> Vec<u8> {
        let mut out = b"\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2K\x1b[G".to_vec();
        for line in screen.lines() {
            if line.contains('\u{2715}') {
                out.extend_from_slice(b"\x1b[31m");
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\x1b[39m");
            } else {
                out.extend_from_slice(line.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn screen(text: &str) -> Option<Hit> {
        run(Anchor::Screen, &[&ink(text)])
    }

    /// (name, transcript, expected class and phrase)
    type Case = (&'static str, &'static str, Option<(Class, &'static str)>);

    const STDERR: &[Case] = &[
        (
            "oauth_quota_0.12",
            fixture!("oauth_quota_0.12_stderr.txt"),
            Some((Class::Quota, "Qwen OAuth quota exceeded")),
        ),
        (
            "oauth_refresh_network_0.12",
            fixture!("oauth_refresh_network_0.12_stderr.txt"),
            Some((Class::Auth, "Network error during token refresh")),
        ),
        (
            "oauth_stream_quota_0.12",
            fixture!("oauth_stream_quota_0.12_stderr.txt"),
            Some((Class::Quota, "Free allocated quota exceeded")),
        ),
        (
            "throttle_0.12",
            fixture!("throttle_0.12_stderr.txt"),
            Some((Class::Throttle, "Requests rate limit exceeded")),
        ),
        (
            "server_error_0.12",
            fixture!("server_error_0.12_stderr.txt"),
            None,
        ),
        (
            "discontinued_0.24",
            fixture!("discontinued_0.24_stderr.txt"),
            Some((Class::Auth, "free tier was discontinued")),
        ),
        (
            "refresh_invalid_grant_0.12",
            fixture!("refresh_invalid_grant_0.12_stderr.txt"),
            Some((Class::Auth, "Refresh token expired or invalid")),
        ),
        (
            "refresh_invalid_client_0.12",
            fixture!("refresh_invalid_client_0.12_stderr.txt"),
            Some((Class::Auth, "Unexpected error during token refresh")),
        ),
        (
            "apikey_401_0.12",
            fixture!("apikey_401_0.12_stderr.txt"),
            Some((Class::Auth, "Incorrect API key provided")),
        ),
        (
            "apikey_401_0.24",
            fixture!("apikey_401_0.24_stderr.txt"),
            Some((Class::Auth, "Incorrect API key provided")),
        ),
        (
            "apikey_403_0.12",
            fixture!("apikey_403_0.12_stderr.txt"),
            Some((Class::Auth, "account not in good standing")),
        ),
        (
            "apikey_quota_0.12",
            fixture!("apikey_quota_0.12_stderr.txt"),
            Some((Class::Quota, "Free allocated quota exceeded")),
        ),
        (
            "apikey_quota_cp_0.12",
            fixture!("apikey_quota_cp_0.12_stderr.txt"),
            Some((Class::Quota, "quota has been exhausted")),
        ),
        (
            "apikey_throttle_0.12",
            fixture!("apikey_throttle_0.12_stderr.txt"),
            Some((Class::Throttle, "Requests rate limit exceeded")),
        ),
        (
            "apikey_quota_cp_0.24",
            fixture!("apikey_quota_cp_0.24_stderr.txt"),
            Some((Class::Quota, "Quota exhausted:")),
        ),
        (
            "apikey_retry_quota_0.24",
            fixture!("apikey_retry_quota_0.24_stderr.txt"),
            Some((Class::Quota, "Free allocated quota exceeded")),
        ),
        (
            "apikey_retry_throttle_0.24",
            fixture!("apikey_retry_throttle_0.24_stderr.txt"),
            Some((Class::Throttle, "Requests rate limit exceeded")),
        ),
        (
            "apikey_json_quota_cp_0.24",
            fixture!("apikey_json_quota_cp_0.24_stderr.txt"),
            Some((Class::Quota, "Quota exhausted:")),
        ),
        (
            "cancelled_0.24",
            fixture!("cancelled_0.24_stderr.txt"),
            None,
        ),
    ];

    #[test]
    fn defaults_compile() {
        let p = Patterns::build(default_sources()).expect("defaults compile");
        assert_eq!(p.entries.len(), DEFAULTS.len());
        // Compiled lazily in the shim: every one must compile, together and alone.
        assert!(p.compile_any().expect("the alternation compiles").is_some());
        for e in &p.entries {
            assert!(e.regex().is_some(), "{} compiles", e.name);
        }
        assert!(!Patterns::defaults().is_empty());
    }

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
    fn verbatim_one_liners_classify() {
        use Class::*;
        let cases: &[(&str, Option<Class>)] = &[
            (
                "Qwen OAuth quota exceeded: Your free daily quota has been reached.",
                Some(Quota),
            ),
            (
                "Error: Qwen OAuth quota exceeded: Your free daily quota has been reached.",
                Some(Quota),
            ),
            ("[API Error: Free allocated quota exceeded.]", Some(Quota)),
            (
                "[API Error: 429 Free allocated quota exceeded.]",
                Some(Quota),
            ),
            (
                "Retrying in 60s (attempt 1/10): [API Error: 429 Free allocated quota exceeded.]",
                Some(Quota),
            ),
            (
                "Retrying in 120s (attempt 2/10): [API Error: 429 Free allocated quota exceeded.]",
                Some(Quota),
            ),
            (
                "\u{2715} [API Error: 429 Free allocated quota exceeded.] (Retrying in 56s\u{2026} (attempt 1/10))",
                Some(Quota),
            ),
            (
                "[API Error: 429 Your token-plan 1-week quota has been exhausted. The quota will reset at 11-30 09:25:00 UTC.]",
                Some(Quota),
            ),
            (
                "Quota exhausted: Your token-plan 1-week quota has been exhausted.",
                Some(Quota),
            ),
            (
                "{\"code\":\"insufficient_quota\",\"message\":\"...\"}",
                Some(Quota),
            ),
            (
                "Throttling.AllocationQuota: Allocated quota exceeded, please increase your quota limit.",
                Some(Quota),
            ),
            (
                "You exceeded your current quota, please check your plan and billing details.",
                Some(Quota),
            ),
            (
                "[API Error: 429 Requests rate limit exceeded, please try again later.]",
                Some(Throttle),
            ),
            (
                "Throttling.RateQuota: Requests rate limit exceeded",
                Some(Throttle),
            ),
            ("{\"code\":\"limit_requests\"}", Some(Throttle)),
            ("429 Too Many Requests", Some(Throttle)),
            ("Rate limit reached for requests", Some(Throttle)),
            ("[API Error: 429 something new]", Some(Throttle)),
            ("[API Error: 401 Incorrect API key provided. ]", Some(Auth)),
            (
                "[API Error: 403 Access denied, please make sure your account is in good standing.]",
                Some(Auth),
            ),
            ("{\"code\":\"Arrearage\"}", Some(Auth)),
            (
                "[API Error: Network error during token refresh: fetch failed]",
                Some(Auth),
            ),
            (
                "[API Error: Network error during token refresh: Token refresh failed: fetch failed (cause: getaddrinfo ENOTFOUND chat.qwen.ai)",
                Some(Auth),
            ),
            (
                "[API Error: Refresh token expired or invalid. Please use '/auth' to re-authenticate.]",
                Some(Auth),
            ),
            (
                "Qwen OAuth free tier was discontinued on 2026-04-15. Run /auth to switch to Coding Plan or another provider.",
                Some(Auth),
            ),
            (
                "\u{2715} Qwen OAuth free tier has been discontinued as of 2026-04-15.",
                Some(Auth),
            ),
            ("invalid access token", Some(Auth)),
            ("The access token expired", Some(Auth)),
            ("{\"error\":{\"code\":\"invalid_api_key\"}}", Some(Auth)),
            ("Device authorization flow failed: fetch failed", Some(Auth)),
            (
                "Missing API key for OpenAI-compatible auth. Set settings.security.auth.apiKey, or set the 'OPENAI_API_KEY' environment variable.",
                Some(Auth),
            ),
            // Nothing an account can be blamed for.
            (
                "Possible quota limitations in place or slow response times detected. Please wait and try again later.",
                None,
            ),
            (
                "[API Error: 500 The server had an error while processing your request.]",
                None,
            ),
            ("[API Error: Connection error.]", None),
            (
                "Retrying provider attempt (0 buffered tool call(s) discarded).",
                None,
            ),
            (
                "\u{21bb} Retrying in 56 seconds\u{2026} (attempt 1/10)",
                None,
            ),
            ("Operation cancelled.", None),
            (
                "No auth type is selected. Please configure an auth type (e.g. via settings or `--auth-type`) before running in non-interactive mode.",
                None,
            ),
            (
                "Ripgrep not available: spawn /x/vendor/ripgrep/x64-linux/rg EACCES",
                None,
            ),
            (
                "(node:4821) MaxListenersExceededWarning: Possible EventTarget memory leak detected.",
                None,
            ),
        ];
        for &(text, want) in cases {
            assert_eq!(class(&pats().classify(text)), want, "{text}");
        }
    }

    #[test]
    fn precedence_is_quota_then_auth_then_throttle() {
        let p = pats();
        assert_eq!(
            class(&p.classify("rate limit exceeded; insufficient_quota")),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&p.classify("token expired, insufficient_quota")),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&p.classify("too many requests: invalid access token")),
            Some(Class::Auth)
        );
        assert_eq!(
            class(&p.classify("[API Error: 403 Free allocated quota exceeded.]")),
            Some(Class::Quota)
        );
        // Within a class the phrase beats the bare status shape.
        let h = p
            .classify("[API Error: 429 Requests rate limit exceeded]")
            .expect("hit");
        assert_eq!(h.phrase, "Requests rate limit exceeded");
        let h = p.classify("[API Error: 429 whatever]").expect("hit");
        assert_eq!(h.phrase, "[API Error: 429 \u{2026}]");
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
    fn escapes_inside_a_phrase_are_removed() {
        assert_eq!(
            class(&plain("insuff\x1b[1;31micient_quota\x1b[0m\n")),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&plain("rate \x1b]0;a title\x07limit exceeded\n")),
            Some(Class::Throttle)
        );
        assert_eq!(
            class(&plain("rate\x1b[1Climit exceeded\n")),
            Some(Class::Throttle)
        );
        assert_eq!(
            class(&plain(
                "invalid \x1b]8;;http://x\x1b\\access\x1b]8;;\x1b\\ token\n"
            )),
            Some(Class::Auth)
        );
        assert_eq!(
            class(&plain("Quota exhausted\x1bP+q544e\x1b\\: x\n")),
            Some(Class::Quota)
        );
        // The escape itself split across reads.
        let text = b"insuff\x1b[38;5;196micient_quota\n";
        for k in 0..=text.len() {
            assert_eq!(
                class(&run(Anchor::Plain, &[&text[..k], &text[k..]])),
                Some(Class::Quota),
                "split at {k}"
            );
        }
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
    fn the_eight_byte_fast_path_agrees_with_the_byte_loop() {
        let slow = |b: &[u8], prev: bool| -> Option<bool> {
            let mut prev = prev;
            for &c in b {
                if c == b' ' {
                    if prev {
                        return None;
                    }
                    prev = true;
                } else if (0x21..0x7f).contains(&c) {
                    prev = false;
                } else {
                    return None;
                }
            }
            Some(prev)
        };
        let mut r = 0x2545_f491_4f6c_dd1du64;
        for n in 0..200_000u32 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            // Mostly text-like bytes, with spaces and edge values mixed in.
            let pool = [
                b' ', b' ', b'a', b'Z', b'~', 0x7f, 0x1f, 0x20, 0x21, 0x80, 0xff, b'\n', b'q',
            ];
            let bytes: Vec<u8> = (0..8)
                .map(|k| pool[((r >> (k * 5)) % pool.len() as u64) as usize])
                .collect();
            let prev = n.is_multiple_of(2);
            assert_eq!(
                plain_word(&bytes, prev),
                slow(&bytes, prev),
                "{bytes:?} prev={prev}"
            );
        }
        assert_eq!(plain_word(b"abc defg", false), Some(false));
        assert_eq!(plain_word(b"abcdefg ", false), Some(true));
        assert_eq!(plain_word(b" abcdefg", true), None);
        assert_eq!(plain_word(b"ab  defg", false), None);
    }

    #[test]
    fn normalizer_strips_what_a_terminal_would_not_print_as_text() {
        assert_eq!(
            normalize(b"  Hello\x1b[31m  WORLD\x1b[0m\r\n\t x "),
            "hello world x "
        );
        assert_eq!(
            normalize("\u{2502} boxed \u{2502}\n\u{2570}\u{2500}\u{2500}\u{256f}".as_bytes()),
            "boxed "
        );
        assert_eq!(
            normalize("\u{280b} Thinking\u{2026} \u{28fe}".as_bytes()),
            "thinking\u{2026} "
        );
        assert_eq!(
            normalize("\u{25c6}\u{fe0e} zero\u{200b}width\u{feff}".as_bytes()),
            "\u{25c6} zerowidth"
        );
        assert_eq!(normalize(b"a\x1b7b\x1b8c\x1b(Bd\x07e\x08f"), "a b cdef");
        assert_eq!(normalize(b"x\x1b[?25l\x1b[?2026hy"), "xy");
        assert_eq!(normalize(b"\x1b]0;title\x1b\\T\x1b_apc\x1b\\U"), "tu");
        assert_eq!(normalize("ÄÖÜ İ".as_bytes()), "äöü i\u{307}");
        assert_eq!(normalize(b"a\x1b"), "a");
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

    // --- Configuration -------------------------------------------------------------------------

    fn config(
        mode: PatternMode,
        quota: &[&str],
        throttle: &[&str],
        auth: &[&str],
    ) -> PatternConfig {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PatternConfig {
            mode,
            quota: v(quota),
            throttle: v(throttle),
            auth: v(auth),
        }
    }

    #[test]
    fn user_patterns_extend_the_defaults() {
        let p = Patterns::from_config(&config(
            PatternMode::Extend,
            &["Out of Juice", r"credit\s+balance\s+is\s+too\s+low"],
            &[],
            &[],
        ))
        .expect("valid");
        let h = p.classify("ERROR: OUT OF JUICE for today").expect("hit");
        assert_eq!(
            (h.class, h.phrase.as_str()),
            (Class::Quota, "Out of Juice"),
            "the phrase is the pattern"
        );
        assert_eq!(
            class(&p.classify("Your credit balance is too low")),
            Some(Class::Quota)
        );
        assert_eq!(
            class(&p.classify("insufficient_quota")),
            Some(Class::Quota),
            "defaults kept"
        );
        let mut d = Detector::new(Arc::clone(&p), Anchor::Plain);
        assert_eq!(
            class(&d.feed(b"\x1b[1mout of\n juice\x1b[0m\n")),
            Some(Class::Quota)
        );
        let empty = Patterns::from_config(&PatternConfig::default()).expect("valid");
        assert_eq!(empty.entries.len(), DEFAULTS.len());
    }

    #[test]
    fn user_patterns_replace_the_defaults() {
        let p = Patterns::from_config(&config(PatternMode::Replace, &[], &["slow down"], &[]))
            .expect("valid");
        assert_eq!(p.classify("insufficient_quota"), None);
        assert_eq!(
            class(&p.classify("please SLOW DOWN")),
            Some(Class::Throttle)
        );
        let none =
            Patterns::from_config(&config(PatternMode::Replace, &[], &[], &[])).expect("valid");
        assert!(none.is_empty());
        assert_eq!(none.classify("insufficient_quota"), None);
        assert_eq!(run_with(&none, b"insufficient_quota\n"), None);
    }

    fn run_with(p: &Arc<Patterns>, bytes: &[u8]) -> Option<Hit> {
        let mut d = Detector::new(Arc::clone(p), Anchor::Plain);
        d.feed(bytes).or_else(|| d.finish())
    }

    #[test]
    fn an_invalid_user_pattern_names_class_entry_and_error() {
        let err = Patterns::from_config(&config(
            PatternMode::Extend,
            &["ok"],
            &["fine", "broken(", "x"],
            &[],
        ))
        .expect_err("invalid");
        assert!(
            err.contains("throttle") && err.contains("entry 2") && err.contains("unclosed group"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        let err = Patterns::from_config(&config(PatternMode::Extend, &[], &[], &["  "]))
            .expect_err("empty");
        assert!(
            err.contains("auth") && err.contains("entry 1") && err.contains("empty"),
            "{err}"
        );
        let err = Patterns::from_config(&config(PatternMode::Extend, &["a|", "b"], &[], &[]))
            .expect_err("matches empty");
        assert!(
            err.contains("quota") && err.contains("entry 1") && err.contains("empty text"),
            "{err}"
        );
        let err = Patterns::from_config(&config(PatternMode::Extend, &[r"\bx?\b"], &[], &[]))
            .expect_err("matches empty");
        assert!(err.contains("entry 1"), "{err}");
        let err = Patterns::from_config(&config(PatternMode::Extend, &[], &[], &["a{1000}{1000}"]))
            .expect_err("too big");
        assert!(err.contains("auth") && err.contains("entry 1"), "{err}");
    }

    // --- JSON --------------------------------------------------------------------------------

    #[test]
    fn json_output_is_judged_by_its_structure() {
        let p = pats();
        let cases: &[(&str, &str, Option<Class>)] = &[
            (
                "json_quota_0.12",
                fixture!("json_quota_0.12.txt"),
                Some(Class::Quota),
            ),
            (
                "stream_json_quota_0.12",
                fixture!("stream_json_quota_0.12.txt"),
                Some(Class::Quota),
            ),
            (
                "json_quota_cp_0.24",
                fixture!("json_quota_cp_0.24.txt"),
                Some(Class::Quota),
            ),
            (
                "json_discontinued_0.24",
                fixture!("json_discontinued_0.24.txt"),
                Some(Class::Auth),
            ),
            (
                "json_apikey_401_0.12",
                fixture!("json_apikey_401_0.12.txt"),
                Some(Class::Auth),
            ),
            (
                "json_answer_quoting_0.12",
                fixture!("json_answer_quoting_0.12.txt"),
                None,
            ),
        ];
        for &(name, text, want) in cases {
            assert_eq!(
                class(&classify_json_output(text.as_bytes(), &p)),
                want,
                "{name}"
            );
        }
        let hit =
            classify_json_output(fixture!("json_quota_cp_0.24.txt").as_bytes(), &p).expect("hit");
        assert!(
            hit.reset_at
                .is_some_and(|t| (t.month(), t.day(), t.hour(), t.minute()) == (11, 30, 9, 25))
        );
    }

    #[test]
    fn json_success_quoting_errors_is_not_a_hit() {
        let p = pats();
        let ok = r#"[{"type":"result","subtype":"success","is_error":false,"result":"insufficient_quota means your quota is spent","stats":{"models":{"m":{"api":{"totalRequests":1,"totalErrors":0}}}}}]"#;
        assert_eq!(classify_json_output(ok.as_bytes(), &p), None);
        // No stats (qwen 0.12 stream-json): only qwen's own report prefix counts, not a quote.
        let no_stats = r#"[{"type":"result","subtype":"success","is_error":false,"result":"It said: Qwen OAuth quota exceeded"}]"#;
        assert_eq!(classify_json_output(no_stats.as_bytes(), &p), None);
        let cancelled = r#"{"type":"result","subtype":"error_during_execution","is_error":true,"error":{"message":"Operation cancelled."}}"#;
        assert_eq!(classify_json_output(cancelled.as_bytes(), &p), None);
        // The error only in `result` (no `error` object).
        let result_only = r#"{"type":"result","is_error":true,"result":"[API Error: 401 Incorrect API key provided. ]"}"#;
        assert_eq!(
            class(&classify_json_output(result_only.as_bytes(), &p)),
            Some(Class::Auth)
        );
    }

    #[test]
    fn json_truncated_or_garbage_is_none_without_panic() {
        let p = pats();
        for text in [
            fixture!("json_quota_0.12.txt"),
            fixture!("json_quota_cp_0.24.txt"),
        ] {
            let b = text.trim_end().as_bytes();
            for k in 0..b.len() - 1 {
                assert_eq!(classify_json_output(&b[..k], &p), None, "cut at {k}");
            }
        }
        for junk in [
            &b""[..],
            b"   ",
            b"[",
            b"{",
            b"null",
            b"[1,2,3]",
            b"{\"type\":\"result\"}",
            b"\xff\xfe{]",
            b"[{\"type\":\"result\",\"is_error\":\"yes\"}]",
        ] {
            assert_eq!(
                classify_json_output(junk, &p),
                None,
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
        // stream-json cut in its last line: the last parseable result line still counts.
        let mut s = fixture!("stream_json_quota_0.12.txt").to_string();
        s.push_str("{\"type\":\"assis");
        assert_eq!(
            class(&classify_json_output(s.as_bytes(), &p)),
            Some(Class::Quota)
        );
        // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(classify_json_output(deep.as_bytes(), &p), None);
    }

    // --- HTTP --------------------------------------------------------------------------------

    #[test]
    fn http_answers_classify_by_status_and_body() {
        let p = pats();
        let quota = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let cp = r#"{"error":{"code":"insufficient_quota","message":"Your token-plan 1-week quota has been exhausted. The quota will reset at 11-30 09:25:00 UTC."}}"#;
        let throttle = r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","code":"limit_requests"}}"#;
        let arrearage = r#"{"error":{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing."}}"#;
        let c = |status, body| class(&classify_http(status, body, &p));
        assert_eq!(c(429, quota), Some(Class::Quota));
        assert_eq!(c(429, throttle), Some(Class::Throttle));
        assert_eq!(c(429, ""), Some(Class::Throttle));
        assert_eq!(
            c(429, r#"{"error":"invalid access token"}"#),
            Some(Class::Throttle)
        );
        assert_eq!(
            c(
                401,
                r#"{"error":{"message":"Incorrect API key provided."}}"#
            ),
            Some(Class::Auth)
        );
        assert_eq!(c(401, ""), Some(Class::Auth));
        assert_eq!(c(403, quota), Some(Class::Quota));
        assert_eq!(c(403, arrearage), Some(Class::Auth));
        assert_eq!(c(403, "forbidden"), Some(Class::Auth));
        assert_eq!(c(400, arrearage), Some(Class::Auth));
        assert_eq!(
            c(400, r#"{"error":{"message":"context length exceeded"}}"#),
            None
        );
        assert_eq!(c(500, quota), None);
        assert_eq!(c(503, "Throttling"), None);
        assert_eq!(c(200, quota), None);
        let h = classify_http(429, "", &p).expect("hit");
        assert_eq!(h.phrase, "HTTP 429");
        let h = classify_http(429, cp, &p).expect("hit");
        assert!(
            h.reset_at
                .is_some_and(|t| t.day() == 30 && t.hour() == 9 && t.minute() == 25)
        );
    }

    // --- Reset times ---------------------------------------------------------------------------

    #[test]
    fn reset_times_parse() {
        let now = utc(2026, 11, 24, 12, 0, 0);
        let text = "The quota will reset at 11-30 09:25:00 UTC.";
        assert_eq!(parse_reset(text, now), Some(utc(2026, 11, 30, 9, 25, 0)));
        assert_eq!(
            parse_reset(&text.to_lowercase(), now),
            Some(utc(2026, 11, 30, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("will reset at 11-30 09:25 UTC", now),
            Some(utc(2026, 11, 30, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("quota resets at 2026-12-01T00:00:00Z", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(
            parse_reset("reset time: 2026-12-01 08:00:00+08:00", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(
            parse_reset("resets at 2026-12-01T08:00:00.123-0130", now),
            Some(utc(2026, 12, 1, 9, 30, 0))
        );
        assert_eq!(
            parse_reset("reset on 2026-12-01", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(parse_reset("no reset here", now), None);
        assert_eq!(parse_reset("will reset at 13-40 09:25:00 UTC", now), None);
        assert_eq!(parse_reset("will reset at 11-30 25:00:00 UTC", now), None);
        assert_eq!(parse_reset("discontinued on 2026-04-15", now), None);
    }

    #[test]
    fn reset_times_without_a_year_pick_the_next_one() {
        let text = "will reset at 01-01 09:25:00 UTC";
        assert_eq!(
            parse_reset(text, utc(2026, 12, 31, 23, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0)),
            "across New Year"
        );
        assert_eq!(
            parse_reset(text, utc(2027, 1, 1, 9, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        // Read late (up to a day): the instant that just passed, not one a year away.
        assert_eq!(
            parse_reset(text, utc(2027, 1, 1, 10, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        assert_eq!(
            parse_reset(
                "will reset at 12-31 23:59:00 UTC",
                utc(2027, 1, 1, 0, 10, 0)
            ),
            Some(utc(2026, 12, 31, 23, 59, 0)),
            "printed before New Year, read after"
        );
        // Up to a month ahead is a reset; 02-29 in a leap year.
        assert_eq!(
            parse_reset(text, utc(2026, 12, 2, 0, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("will reset at 02-29 00:00:00 UTC", utc(2028, 2, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn reset_times_without_a_year_further_than_a_month_are_no_reset() {
        let text = "will reset at 01-01 09:25:00 UTC";
        // More than a day old: the next 01-01 is a year away, so the message names no reset.
        assert_eq!(parse_reset(text, utc(2027, 1, 3, 0, 0, 0)), None);
        assert_eq!(parse_reset(text, utc(2026, 11, 30, 9, 0, 0)), None);
        // 02-29 outside a leap year's February: no such day within a month.
        assert_eq!(
            parse_reset("will reset at 02-29 00:00:00 UTC", utc(2026, 3, 1, 0, 0, 0)),
            None
        );
        // A year given explicitly is taken as written (the cooldown cap applies later).
        assert_eq!(
            parse_reset("resets at 2027-06-01T00:00:00Z", utc(2026, 12, 6, 0, 0, 0)),
            Some(utc(2027, 6, 1, 0, 0, 0))
        );
    }

    #[test]
    fn stream_json_result_without_stats_counts_only_qwens_own_reports() {
        let p = Patterns::defaults();
        let quota = br#"{"type":"system","subtype":"init"}
{"type":"result","subtype":"success","is_error":false,"result":"Qwen OAuth quota exceeded: Your free daily quota has been reached."}
"#;
        assert_eq!(
            classify_json_output(quota, &p).map(|h| h.class),
            Some(Class::Quota)
        );
        let answer = br#"{"type":"result","subtype":"success","is_error":false,"result":"The error Qwen OAuth quota exceeded means insufficient_quota."}
"#;
        assert_eq!(classify_json_output(answer, &p), None);
    }
}
