//! A notice on the terminal's last row, and the tracking of qwen's output (escape sequences,
//! split UTF-8) that tells when it can be written without splitting anything.
//!
//! Invariant: pure; no I/O.

/// One notice as terminal bytes: saved cursor, last row, cleared, the text cut to the width,
/// cursor and attributes restored (DECSC/DECRC save and restore SGR too).
pub(super) fn notice_bytes(line: &str, rows: u16, cols: u16, colour: bool) -> Vec<u8> {
    // One column short of the width: no autowrap, so never a scroll (terminfo "am").
    let width = usize::from(if cols == 0 { 80 } else { cols }).saturating_sub(1);
    let mut text = String::new();
    let mut used = 0;
    for c in sanitize(line).chars() {
        let w = char_width(c);
        if used + w > width {
            break;
        }
        used += w;
        text.push(c);
    }
    // CUP beyond the last row lands on the last row (ECMA-48 clamps); 999 when the size is unknown.
    let row = if rows == 0 { 999 } else { rows };
    let sgr = if colour { "0;7" } else { "0" };
    format!("\x1b7\x1b[{row};1H\x1b[2K\x1b[{sgr}m{text}\x1b[0m\x1b8").into_bytes()
}

/// Control characters would move the cursor or start a sequence: each becomes a space.
pub(super) fn sanitize(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Terminal columns of `c`: 2 for East Asian wide and emoji ranges, else 1 (good enough to keep a
/// notice on one row; Unicode UAX #11, simplified).
fn char_width(c: char) -> usize {
    match u32::from(c) {
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// Where the child's output stands between two chunks: inside an escape sequence or a UTF-8
/// character, or at rest. Only at rest may a notice be inserted (ECMA-48 sequence syntax).
#[derive(Default)]
pub(super) struct Escapes {
    state: EscState,
    /// Continuation bytes still expected for the last UTF-8 character.
    utf8_pending: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum EscState {
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// ESC followed by intermediate bytes (0x20..=0x2f), e.g. a charset designation.
    Intermediate,
    /// Control sequence (ESC [): parameters until a final byte 0x40..=0x7e.
    Csi,
    /// OSC, DCS, SOS, PM, APC strings: until BEL or ST (ESC \).
    Str,
}

impl Escapes {
    pub(super) fn at_rest(&self) -> bool {
        self.state == EscState::Ground && self.utf8_pending == 0
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        use EscState::*;
        const ESC: u8 = 0x1b;
        // Only what follows the last ESC decides: ESC starts a new sequence from any state (in a
        // string it is either ST's first byte or ends the string; the next byte decides both the
        // same way). `contains` is memchr, word-at-a-time: plain text costs next to nothing.
        let mut bytes = bytes;
        if bytes.contains(&ESC) {
            let last = bytes.iter().rposition(|&b| b == ESC).unwrap_or(0);
            self.state = Escape;
            self.utf8_pending = 0;
            bytes = &bytes[last + 1..];
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Ground {
                // No ESC left: the rest is text, and only its last character can be unfinished.
                self.utf8_pending = utf8_pending(self.utf8_pending, &bytes[i..]);
                return;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                // CAN and SUB abort any sequence.
                (_, 0x18 | 0x1a) => Ground,
                (Str, 0x07) => Ground,
                (Str, _) => Str,
                (Escape, b'[') => Csi,
                (Escape, b']' | b'P' | b'X' | b'^' | b'_') => Str,
                // C0 controls inside a sequence are executed without ending it.
                (s, 0x00..=0x1f) => s,
                (Escape | Intermediate, 0x20..=0x2f) => Intermediate,
                // Includes ST (ESC \) ending a string.
                (Escape | Intermediate, _) => Ground,
                (Csi, 0x40..=0x7e) => Ground,
                (Csi, _) => Csi,
                (Ground, _) => Ground,
            };
        }
    }
}

/// UTF-8 continuation bytes still missing after `bytes`, given `prev` missing before them.
fn utf8_pending(prev: usize, bytes: &[u8]) -> usize {
    let continuation = |b: u8| b & 0xc0 == 0x80;
    let mut skip = 0;
    while skip < bytes.len() && skip < prev && continuation(bytes[skip]) {
        skip += 1;
    }
    if skip == bytes.len() {
        return prev - skip;
    }
    let tail = &bytes[skip..];
    for i in (tail.len().saturating_sub(4)..tail.len()).rev() {
        if !continuation(tail[i]) {
            let need: usize = match tail[i] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            return need.saturating_sub(tail.len() - i);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_track_sequences_across_chunks() {
        let mut e = Escapes::default();
        e.feed(b"plain text");
        assert!(e.at_rest());
        e.feed(b"\x1b[3");
        assert!(!e.at_rest());
        e.feed(b"1mred");
        assert!(e.at_rest());
        e.feed(b"\x1b]0;title");
        assert!(!e.at_rest());
        e.feed(b" more\x1b");
        assert!(!e.at_rest());
        e.feed(b"\\after");
        assert!(e.at_rest());
        e.feed(b"\x1b]8;;http://x\x07link");
        assert!(e.at_rest());
        e.feed(b"\x1b(");
        assert!(!e.at_rest());
        e.feed(b"B");
        assert!(e.at_rest());
        e.feed(b"\x1b");
        assert!(!e.at_rest());
        e.feed(b"7");
        assert!(e.at_rest());
    }

    #[test]
    fn escapes_track_utf8_split_across_chunks() {
        let check = "✕ é 😀";
        let bytes = check.as_bytes();
        for cut in 0..=bytes.len() {
            let mut e = Escapes::default();
            e.feed(&bytes[..cut]);
            assert_eq!(e.at_rest(), check.is_char_boundary(cut), "cut at {cut}");
            e.feed(&bytes[cut..]);
            assert!(e.at_rest(), "cut at {cut}");
        }
        // Byte by byte.
        let mut e = Escapes::default();
        for (i, b) in bytes.iter().enumerate() {
            e.feed(std::slice::from_ref(b));
            assert_eq!(e.at_rest(), check.is_char_boundary(i + 1), "after byte {i}");
        }
    }

    #[test]
    fn escapes_give_the_same_answer_however_the_stream_is_cut() {
        let stream: &[u8] = "a\x1b[1;31m✕ red\x1b[0m\x1b]0;ti\x1btle\x07b\x1b]8;;u\x1b\\é\x1bP1$r\x1b\\\x1b(B\x1b[?25l😀z\x1b7\x1b8"
            .as_bytes();
        let whole = |bytes: &[u8]| {
            let mut e = Escapes::default();
            e.feed(bytes);
            e.at_rest()
        };
        let one_by_one = |bytes: &[u8]| {
            let mut e = Escapes::default();
            for b in bytes {
                e.feed(std::slice::from_ref(b));
            }
            e.at_rest()
        };
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(whole(a), one_by_one(a), "prefix of {cut} bytes");
            let mut e = Escapes::default();
            e.feed(a);
            e.feed(b);
            assert!(e.at_rest(), "split at {cut}");
        }
        // Inside an OSC across chunks, ended by BEL in a chunk without ESC.
        let mut e = Escapes::default();
        e.feed(b"\x1b]0;long title");
        e.feed(b" continues");
        assert!(!e.at_rest());
        e.feed(b" ends\x07");
        assert!(e.at_rest());
    }

    #[test]
    fn notice_is_one_row_and_restores_the_cursor() {
        let n = String::from_utf8(notice_bytes("quota\x1b[2Jgone\nnext", 24, 80, true)).unwrap();
        assert_eq!(
            n,
            "\x1b7\x1b[24;1H\x1b[2K\x1b[0;7mquota [2Jgone next\x1b[0m\x1b8"
        );
        let plain = String::from_utf8(notice_bytes("x", 0, 0, false)).unwrap();
        assert_eq!(plain, "\x1b7\x1b[999;1H\x1b[2K\x1b[0mx\x1b[0m\x1b8");
        let long = "y".repeat(300);
        let cut = String::from_utf8(notice_bytes(&long, 10, 40, false)).unwrap();
        assert!(
            cut.contains(&format!("m{}\x1b[0m", "y".repeat(39))),
            "{cut:?}"
        );
        let wide = String::from_utf8(notice_bytes(&"語".repeat(50), 10, 21, false)).unwrap();
        assert!(
            wide.contains(&format!("m{}\x1b[0m", "語".repeat(10))),
            "{wide:?}"
        );
    }
}
