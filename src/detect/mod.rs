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
//! 2. Plain: the normalised text goes into a window that keeps only the last `KEEP` bytes;
//!    each step scans only the new text plus an `OVERLAP`, so a phrase cut by a read boundary
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
//! - Plain: from `LOOK_BACK` bytes before the first complete phrase (a longer phrase may have
//!   started earlier) to the first line feed after it at which qwen's `[API Error: …` bracket is
//!   closed (an error wrapped over lines stays one message), at most `MAX_MESSAGE` bytes. So a
//!   Plain hit is decided only when its line ends — the quota phrase of the 0.24 retry line may
//!   arrive in the read after the `[API Error: 429` — and a last line without a line feed is
//!   decided by [`Detector::finish`] (or read, still held, from [`Detector::hit`]).
//! - Screen: one `✕` block, from the `✕` to its end (see [`Detector`]).
//! - [`Patterns::classify`], [`classify_http`], [`classify_json_output`]: the text given.
//!
//! Files, lowest first (each imports only the ones above it): `normalize` (the byte-stream
//! normaliser) → `reset` (reset times in a message) → `patterns` (the profile's phrase table
//! compiled, with the `patterns:` section of `rotation.yaml`) → `google` (Google API error
//! answers by their structure, midnight Pacific time), `anthropic` (Anthropic API error answers
//! by their status, structure and headers) → `classify` (HTTP answers and json output), `detector` (the streaming window over a stream). The phrases, the json error
//! prefixes and the screen anchors (`✕`, the Ctrl+Y hint, the countdown) are the active
//! profile's (`crate::profile`). May import the ground floor
//! (`text`, `model`, `fault`, `profile`, `error`, `files`) and std/crates; nothing else of ours.
//!
//! [`Normalizer`]: normalize::Normalizer

mod anthropic;
mod classify;
mod detector;
mod google;
mod normalize;
mod patterns;
mod reset;
#[cfg(test)]
mod test_support;

pub use anthropic::classify_anthropic;
pub use classify::{classify_http, classify_json_output, classify_stream_event};
pub use detector::{Anchor, Detector};
pub use google::{classify_google, next_pacific_midnight};
pub use normalize::normalize;
pub use patterns::{PatternConfig, PatternMode, Patterns};
pub use reset::parse_reset;
