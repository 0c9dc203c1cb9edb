//! The phrase table and the compiled pattern set: built-in phrases extended or replaced by the
//! `patterns:` section of `rotation.yaml`, matched over normalised text with the precedence rule
//! (quota > auth > throttle; see the folder header). Pure, no I/O.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::detect::normalize::normalize_bytes;
use crate::detect::reset::parse_reset;
use crate::model::{Class, Hit};

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

/// The built-in phrases of the active profile (`detect.phrases`: class, the name a [`Hit`]
/// carries, a regex over *normalised* text — lowercase, single spaces).
fn defaults() -> &'static [(Class, &'static str, &'static str)] {
    crate::profile::active().detect.phrases
}

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

    /// The built-in set of `profile` rather than the active one's (another CLI's output judged
    /// in a test), not cached.
    #[cfg(test)]
    pub(crate) fn for_profile(profile: &crate::profile::Profile) -> Arc<Patterns> {
        Arc::new(Patterns::build(sources_of(profile.detect.phrases)).expect("built-in phrases"))
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
                let key = class.name();
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
    pub(super) fn any(&self) -> Option<&Regex> {
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
    pub(super) fn judge(&self, text: &[u8], now: DateTime<Utc>) -> Option<Hit> {
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
    sources_of(defaults())
}

fn sources_of(phrases: &[(Class, &'static str, &'static str)]) -> Vec<Source> {
    phrases
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::detect::detector::{Anchor, Detector};
    use crate::detect::test_support::{class, pats};

    #[test]
    fn defaults_compile() {
        let p = Patterns::build(default_sources()).expect("defaults compile");
        assert_eq!(p.entries.len(), defaults().len());
        // Compiled lazily in the shim: every one must compile, together and alone.
        assert!(p.compile_any().expect("the alternation compiles").is_some());
        for e in &p.entries {
            assert!(e.regex().is_some(), "{} compiles", e.name);
        }
        assert!(!Patterns::defaults().is_empty());
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
        assert_eq!(empty.entries.len(), defaults().len());
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
}
