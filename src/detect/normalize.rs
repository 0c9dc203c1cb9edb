//! The normaliser: qwen's output bytes → lowercase text with single spaces, escape sequences,
//! box drawing, spinners and zero-width characters removed, also when split across reads.
//! Bounded memory whatever it is fed; never panics.

use crate::profile::Screen;

/// Normalises a complete text (see [`Normalizer`]): what the patterns are matched against.
pub fn normalize(text: &[u8]) -> String {
    String::from_utf8_lossy(&normalize_bytes(text)).into_owned()
}

pub(super) fn normalize_bytes(text: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::new(false, false, &crate::profile::active().screen);
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
pub(super) enum Mark {
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
pub(super) struct Normalizer {
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
    /// The profile's screen anchors: the error marker opens a block when it stands at most
    /// `marker_indent` columns in (qwen draws its markers at column 2 and an answer's text at 4
    /// and deeper, so a `✕` inside an answer does not open one); the break characters end one.
    anchors: &'static Screen,
    /// The lowest and highest of those characters: most text is outside, and is told so by
    /// two comparisons.
    anchor_span: (char, char),
}

impl Normalizer {
    pub(super) fn new(
        newline_marks: bool,
        screen_marks: bool,
        anchors: &'static Screen,
    ) -> Normalizer {
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
            anchors,
            anchor_span: std::iter::once(anchors.error_marker)
                .chain(anchors.breaks.iter().copied())
                .fold(('\u{10FFFF}', '\0'), |(lo, hi), c| (lo.min(c), hi.max(c))),
        }
    }

    /// A screen anchor (error marker or break) on a screen stream: marks it and shows it.
    fn anchor(&mut self, c: char, out: &mut Vec<u8>, marks: &mut Vec<(usize, Mark)>) {
        if c == self.anchors.error_marker {
            if self.line_start && self.indent <= self.anchors.marker_indent {
                mark(marks, out.len(), Mark::Error);
            }
        } else if self.anchors.breaks.contains(&c) {
            mark(marks, out.len(), Mark::Break);
        } else if c.is_whitespace() {
            return self.space(out);
        }
        self.visible(out, c);
    }

    /// Normalises `input`, appending to `out`; positions in `marks` index `out`.
    pub(super) fn push(&mut self, input: &[u8], out: &mut Vec<u8>, marks: &mut Vec<(usize, Mark)>) {
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
    pub(super) fn flush(&mut self, out: &mut Vec<u8>) {
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
            c if self.screen_marks && (self.anchor_span.0..=self.anchor_span.1).contains(&c) => {
                self.anchor(c, out, marks)
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::detect::detector::Anchor;
    use crate::detect::test_support::{class, plain, run};
    use crate::model::Class;

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
}
