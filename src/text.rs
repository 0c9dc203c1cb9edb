//! Text we print that came from somewhere else: a label hand-written in state.yaml, a file
//! name, a base URL.
//!
//! Invariants: `printable` output holds no character a terminal acts on (C0/C1 controls, DEL,
//! and the Unicode bidi controls that reorder what is shown), so quoted text stays on its line
//! and cannot set the title, write the clipboard (OSC 52), clear the screen or forge a line;
//! `redact_url` output holds no user:password and no query or fragment (where providers put
//! `?api_key=`). Also the short forms we print: durations, timestamps, io reasons. This module
//! imports nothing of ours.

/// `text` with its control characters (line breaks, escapes, NUL) and bidi controls written
/// as escapes (`\u{1b}`, `\r`, `\u{202e}`), so a message that quotes what a user typed or
/// wrote stays on one line and cannot drive the terminal.
pub fn printable(text: &str) -> String {
    if !text.chars().any(acts_on_terminal) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if acts_on_terminal(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `printable` of a path (lossy for bytes that are not UTF-8).
pub fn printable_path(path: &std::path::Path) -> String {
    printable(&path.to_string_lossy())
}

/// A character a terminal interprets instead of showing: controls (Cc), and the bidi
/// embedding, override and isolate marks (Trojan Source, CVE-2021-42574).
pub fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `url` as it may be shown: `scheme://host[:port]/path`, with a `user:password@` part and a
/// `?query` or `#fragment` replaced by `***` (providers accept keys in both), and anything a
/// terminal would act on escaped. Text that is not a URL is shown as `<not a URL>`.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return "<not a URL>".into();
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let (path, tail) = after.split_at(path_end);
    let tail = if tail.is_empty() { "" } else { "?***" };
    printable(&format!("{scheme}://{host}{path}{tail}"))
}

/// "3s", "2m", "1h 5m", "2d 3h": short and readable.
pub fn human_duration(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ if s % 86400 / 3600 == 0 => format!("{}d", s / 86400),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// RFC 3339, whole seconds, `Z`.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An io error's reason without the OS error number noise.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_well() {
        assert_eq!(human_duration(chrono::TimeDelta::seconds(5)), "5s");
        assert_eq!(human_duration(chrono::TimeDelta::seconds(125)), "2m");
        assert_eq!(human_duration(chrono::TimeDelta::seconds(3600)), "1h");
        assert_eq!(human_duration(chrono::TimeDelta::seconds(3900)), "1h 5m");
        assert_eq!(human_duration(chrono::TimeDelta::seconds(90000)), "1d 1h");
    }

    #[test]
    fn printable_escapes_every_terminal_control() {
        let hostile = "w\x1b]52;c;aGk=\x07\x1b[2J\r\nx\u{202e}y\u{2066}\u{7f}\u{9b}";
        let shown = printable(hostile);
        assert!(!shown.chars().any(acts_on_terminal), "{shown:?}");
        assert_eq!(
            shown,
            "w\\u{1b}]52;c;aGk=\\u{7}\\u{1b}[2J\\r\\nx\\u{202e}y\\u{2066}\\u{7f}\\u{9b}"
        );
        assert_eq!(printable("work@example.com ü"), "work@example.com ü");
    }

    #[test]
    fn urls_lose_credentials_query_and_fragment() {
        assert_eq!(
            redact_url("https://user:pa55@api.example.com:8443/v1?api_key=sk-1#frag"),
            "https://***@api.example.com:8443/v1?***"
        );
        assert_eq!(
            redact_url("https://api.example.com/compatible-mode/v1"),
            "https://api.example.com/compatible-mode/v1"
        );
        assert_eq!(redact_url("http://h?key=1"), "http://h?***");
        assert_eq!(redact_url("http://a@b@h/p"), "http://***@h/p");
        assert_eq!(redact_url("sk-not-a-url"), "<not a URL>");
        assert_eq!(redact_url("http://h/\x1b[2J"), "http://h/\\u{1b}[2J");
    }
}
