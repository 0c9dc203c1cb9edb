//! Detector throughput (MB/s) on realistic and adversarial output.
//!
//! `cargo bench --bench detect`. Each case feeds a few MiB through a fresh `Detector` in reads of
//! the size a pipe or a pty delivers, repeating for about a quarter of a second; the whole run
//! takes a few seconds. No case contains a real error phrase, so the detector never stops early:
//! the figures are for the full scanning path.
//!
//! Two figures per case: wall-clock MB/s (`Instant`), and MB/s per second of this thread's own
//! CPU time (Linux `/proc/thread-self/schedstat`), which stays meaningful on a loaded machine.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen_rotation::detect::{Anchor, Detector, Patterns, classify_json_output, normalize};

const SIZE: usize = 4 << 20;
const BUDGET: Duration = Duration::from_millis(250);

/// A small deterministic generator (no dependency, same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

const WORDS: &[&str] = &[
    "the",
    "function",
    "returns",
    "a",
    "value",
    "when",
    "called",
    "with",
    "quota",
    "request",
    "limit",
    "error",
    "rate",
    "token",
    "account",
    "allocated",
    "free",
    "retry",
    "is",
    "of",
    "to",
    "and",
    "in",
    "Rust",
    "`Vec<u8>`",
    "buffer",
    "window",
    "match",
    "pattern",
    "429",
    "403",
    "line",
    "file",
    "src/main.rs:42",
    "HTTP",
    "status",
    "response",
];

/// A long model answer (prose, lists, code) with stderr noise between paragraphs.
fn realistic_text() -> Vec<u8> {
    let mut r = Lcg(1);
    let mut out = String::with_capacity(SIZE + 4096);
    while out.len() < SIZE {
        match r.next() % 10 {
            0 => out.push_str("```rust\nfn main() {\n    let v: Vec<u8> = Vec::with_capacity(4096);\n    println!(\"{}\", v.len());\n}\n```\n"),
            1 => out.push_str("(node:4821) MaxListenersExceededWarning: Possible EventTarget memory leak detected. 11 abort listeners added to [AbortSignal]. Use events.setMaxListeners() to increase limit\n    at file:///usr/lib/node_modules/@qwen-code/qwen-code/cli.js:407466:19\n"),
            2 => out.push_str("- a list item about `config.yaml` and line 429 of the parser\n"),
            _ => {
                for _ in 0..60 {
                    out.push_str(r.pick(WORDS));
                    out.push(' ');
                }
                out.push_str(".\n\n");
            }
        }
    }
    out.into_bytes()
}

/// What Ink writes: spinner frames redrawn with erase sequences, coloured answer lines, rules.
fn realistic_screen() -> Vec<u8> {
    let mut r = Lcg(2);
    let spinner = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
    let mut out = String::with_capacity(SIZE + 4096);
    let mut i = 0usize;
    while out.len() < SIZE {
        i += 1;
        if i.is_multiple_of(3) {
            out.push_str(&format!(
                "\x1b[2K\x1b[1A\x1b[2K\x1b[G\x1b[35m{}\x1b[39m \x1b[3mThinking… \x1b[90m(esc to cancel, {}s)\x1b[39m\x1b[23m\r\n",
                spinner[i % spinner.len()],
                i % 60
            ));
        } else {
            out.push_str("  \x1b[36m✦\x1b[39m ");
            for _ in 0..18 {
                out.push_str(r.pick(WORDS));
                out.push(' ');
            }
            out.push_str("\x1b[1mbold\x1b[22m text\r\n");
        }
        if i.is_multiple_of(50) {
            out.push_str("\x1b[90m");
            out.push_str(&"─".repeat(120));
            out.push_str("\x1b[39m\r\n>   Type your message or @path/to/file\r\n");
        }
    }
    out.into_bytes()
}

fn escape_storm() -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 64);
    let mut i = 0u32;
    while out.len() < SIZE {
        i = i.wrapping_add(1);
        out.extend_from_slice(
            format!(
                "\x1b[{};{}H\x1b[38;5;{}m\x1b]0;title {}\x07\x1b[2K\x1b[1A\x1b[?25l\x1bP+q\x1b\\",
                i % 50,
                i % 120,
                i % 256,
                i
            )
            .as_bytes(),
        );
    }
    out
}

fn no_newlines() -> Vec<u8> {
    let mut r = Lcg(3);
    let mut out = String::with_capacity(SIZE + 64);
    while out.len() < SIZE {
        out.push_str(r.pick(WORDS));
        out.push(' ');
    }
    out.into_bytes()
}

fn invalid_utf8() -> Vec<u8> {
    let mut r = Lcg(4);
    (0..SIZE).map(|_| r.next() as u8).collect()
}

/// Almost-phrases: every one a prefilter candidate, none a match.
fn near_misses() -> Vec<u8> {
    let near = [
        "insufficient_quot ",
        "free allocated quota exceede ",
        "[api error: 42 ",
        "[API Error: 4290] ",
        "quota has been exhauste ",
        "rate limit exceede ",
        "too many request ",
        "token expire ",
        "throttlin ",
        "invalid access toke ",
        "qwen oauth quota exceede ",
        "Possible quota limitations in place or slow response times detected. ",
    ];
    let mut r = Lcg(5);
    let mut out = String::with_capacity(SIZE + 128);
    while out.len() < SIZE {
        out.push_str(r.pick(&near));
        if r.next().is_multiple_of(8) {
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Screen: error markers everywhere, each opening a block that holds a near-miss.
fn marker_storm() -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 128);
    while out.len() < SIZE {
        out.extend_from_slice(
            "\r\n  ✕ [API Error: 42 insufficient_quot] (Press Ctrl+Y to retry)".as_bytes(),
        );
    }
    out
}

/// `--output-format json`: one array whose answer is a few MiB (parsed whole).
fn json_array() -> Vec<u8> {
    let mut r = Lcg(6);
    let mut answer = String::with_capacity(SIZE);
    while answer.len() < SIZE {
        answer.push_str(r.pick(WORDS));
        answer.push(' ');
    }
    let answer = answer.replace('`', "");
    format!(
        "[{{\"type\":\"system\",\"subtype\":\"init\",\"qwen_code_version\":\"0.24.4\"}},\
         {{\"type\":\"assistant\",\"message\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{answer}\"}}]}}}},\
         {{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"{answer}\",\
         \"stats\":{{\"models\":{{\"m\":{{\"api\":{{\"totalErrors\":0}}}}}}}}}}]"
    )
    .into_bytes()
}

/// Runs `f` over `data` until the budget is spent.
fn whole(data: &[u8], mut f: impl FnMut(&[u8])) -> (f64, Option<f64>) {
    let (start, cpu0) = (Instant::now(), cpu_ns());
    let mut bytes = 0usize;
    while start.elapsed() < BUDGET {
        f(black_box(data));
        bytes += data.len();
    }
    rates(bytes, start, cpu0)
}

/// Nanoseconds this thread has spent on a CPU, when the kernel tells.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (wall MB/s, CPU MB/s) for `bytes` processed since `start` / `cpu0`.
fn rates(bytes: usize, start: Instant, cpu0: Option<u64>) -> (f64, Option<f64>) {
    let wall = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    let cpu = cpu0
        .zip(cpu_ns())
        .map(|(a, b)| bytes as f64 / ((b.saturating_sub(a)).max(1) as f64 / 1e9) / 1e6);
    (wall, cpu)
}

fn row(name: &str, anchor: &str, read: &str, (wall, cpu): (f64, Option<f64>)) {
    let cpu = cpu.map_or_else(|| "-".to_string(), |c| format!("{c:.0}"));
    println!("{name:<38} {anchor:<7} {read:>6} {wall:>10.0} {cpu:>10}");
}

/// Feeds `data` in reads of `read` bytes until the budget is spent.
fn throughput(
    patterns: &Arc<Patterns>,
    anchor: Anchor,
    data: &[u8],
    read: usize,
) -> (f64, Option<f64>) {
    let (start, cpu0) = (Instant::now(), cpu_ns());
    let mut bytes = 0usize;
    while start.elapsed() < BUDGET {
        let mut d = Detector::new(Arc::clone(patterns), anchor);
        for part in data.chunks(read) {
            if black_box(d.feed(part)).is_some() {
                eprintln!("unexpected hit: {:?}", d.hit());
            }
        }
        black_box(d.finish());
        bytes += data.len();
    }
    rates(bytes, start, cpu0)
}

fn main() {
    let patterns = Patterns::defaults();
    let text = realistic_text();
    let screen = realistic_screen();
    let storm = escape_storm();
    let line = no_newlines();
    let garbage = invalid_utf8();
    let near = near_misses();
    let markers = marker_storm();
    let cases: Vec<(&str, Anchor, &[u8], usize)> = vec![
        ("answer + stderr noise", Anchor::Plain, &text, 64 * 1024),
        (
            "answer + stderr noise, 4 KiB reads",
            Anchor::Plain,
            &text,
            4096,
        ),
        (
            "Ink screen (spinner, SGR, redraws)",
            Anchor::Screen,
            &screen,
            4096,
        ),
        ("Ink screen, 64-byte reads", Anchor::Screen, &screen, 64),
        ("escape storm", Anchor::Plain, &storm, 64 * 1024),
        ("escape storm", Anchor::Screen, &storm, 4096),
        ("one line, no newlines", Anchor::Plain, &line, 64 * 1024),
        (
            "random bytes (invalid UTF-8)",
            Anchor::Plain,
            &garbage,
            64 * 1024,
        ),
        (
            "random bytes (invalid UTF-8)",
            Anchor::Screen,
            &garbage,
            4096,
        ),
        ("near-miss phrases", Anchor::Plain, &near, 64 * 1024),
        ("near-miss blocks (✕ storm)", Anchor::Screen, &markers, 4096),
    ];
    println!(
        "{:<38} {:<7} {:>6} {:>10} {:>10}",
        "input", "anchor", "read", "MB/s wall", "MB/s cpu"
    );
    println!("{}", "-".repeat(75));
    for (name, anchor, data, read) in cases {
        row(
            name,
            &format!("{anchor:?}"),
            &read.to_string(),
            throughput(&patterns, anchor, data, read),
        );
    }
    // Components, for reading the figures above; the baseline shows what this machine does
    // with the same bytes when nothing is decided per byte.
    let r = whole(&text, |d| {
        let mut v = d.to_vec();
        v.make_ascii_lowercase();
        black_box(v);
    });
    row("baseline: copy + lowercase", "-", "all", r);
    let r = whole(&text, |d| {
        black_box(normalize(d));
    });
    row("normalize() only, answer text", "-", "all", r);
    let r = whole(&garbage, |d| {
        black_box(normalize(d));
    });
    row("normalize() only, random bytes", "-", "all", r);
    let json = json_array();
    let r = whole(&json, |d| {
        black_box(classify_json_output(d, &patterns));
    });
    row("json array, classify_json_output", "-", "all", r);
}
