//! Test helpers shared by the detection tests: the default patterns on a fixed day, a detector
//! run over parts of a stream, and the recorded stderr transcripts.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use crate::detect::detector::{Anchor, Detector};
use crate::detect::patterns::Patterns;
use crate::model::{Class, Hit};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/", $name))
    };
}
pub(crate) use fixture;

/// The default patterns on the day the recorded transcripts were seen (their year-less
/// `11-30 09:25:00` reset is five days ahead), so no test depends on today's date.
pub(crate) fn pats() -> Arc<Patterns> {
    Patterns::defaults().with_clock(|| utc(2026, 11, 25, 12, 0, 0))
}

pub(crate) fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid test date")
}

/// Feeds the parts in order; the first hit a feed returns, else what `finish` decides.
pub(crate) fn run(anchor: Anchor, parts: &[&[u8]]) -> Option<Hit> {
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

pub(crate) fn plain(text: &str) -> Option<Hit> {
    run(Anchor::Plain, &[text.as_bytes()])
}

pub(crate) fn class(hit: &Option<Hit>) -> Option<Class> {
    hit.as_ref().map(|h| h.class)
}

/// A screen as tmux shows it → roughly what Ink writes: an erase of the previous frame,
/// colour around the error line, CRLF line ends.
pub(crate) fn ink(screen: &str) -> Vec<u8> {
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

pub(crate) fn screen(text: &str) -> Option<Hit> {
    run(Anchor::Screen, &[&ink(text)])
}

/// (name, transcript, expected class and phrase)
pub(crate) type Case = (&'static str, &'static str, Option<(Class, &'static str)>);

pub(crate) const STDERR: &[Case] = &[
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
