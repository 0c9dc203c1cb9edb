//! Where our files live and what `rotation.yaml` says, resolved once per run.
//!
//! The qwen home is found as the real qwen finds it: `QWEN_HOME` when set (qwen 0.15+), else
//! `$HOME/.qwen` (the profile's `home.var` and `home.dir`; `Paths` carries its profile, and the
//! names of the live credentials, its lock (if it takes one) and settings.json are the profile's). Every default is compiled in; `rotation.yaml` only overrides. A broken
//! `rotation.yaml` never blocks qwen: `Config::load` returns the defaults plus a warning.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::detect::{PatternConfig, PatternMode};
pub use crate::model::Strategy;
use crate::model::{Order, Policy, Secret};
use crate::profile::Profile;
pub use crate::text::human_duration;

/// Every path the shim reads or writes under the qwen home.
#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
    pub accounts: PathBuf,
    pub live_creds: PathBuf,
    /// The lock the CLI holds while it rewrites `live_creds` (`None`: it takes none, and a swap
    /// waits for nothing).
    pub cli_lock: Option<PathBuf>,
    pub state: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub lock: PathBuf,
    pub settings: PathBuf,
    /// Our private settings override for qwen (`rotation-settings/`).
    pub private: PathBuf,
    /// The CLI these paths belong to.
    pub profile: &'static Profile,
}

impl Paths {
    /// The active profile's home from the environment (`QWEN_HOME`, else `$HOME/.qwen`).
    pub fn from_env() -> Paths {
        let profile = crate::profile::active();
        Paths::of(profile, home_of(profile))
    }

    /// The qwen profile's files under `home`.
    pub fn at(home: impl Into<PathBuf>) -> Paths {
        Paths::of(&crate::profile::QWEN, home)
    }

    /// `profile`'s files under `home`.
    pub fn of(profile: &'static Profile, home: impl Into<PathBuf>) -> Paths {
        let home = home.into();
        let cli_lock = profile.creds.lock.as_ref().map(|l| home.join(l.file));
        Paths {
            accounts: home.join("accounts"),
            live_creds: home.join(profile.creds.file),
            cli_lock,
            state: home.join("state.yaml"),
            log: home.join("rotation.log"),
            config: home.join("rotation.yaml"),
            lock: home.join("rotation.lock"),
            settings: home.join(profile.settings.file),
            private: home.join("rotation-settings"),
            profile,
            home,
        }
    }

    /// OAuth slot N (1-based), the seeds' layout.
    pub fn oauth_slot(&self, n: usize) -> PathBuf {
        self.accounts.join(format!("oauth_creds_{n}.json"))
    }

    /// The companion of OAuth slot N for one of the CLI's other login files (`Creds::extra`):
    /// `google_accounts.json` → `accounts/google_accounts_N.json`.
    pub fn extra_slot(&self, n: usize, file: &str) -> PathBuf {
        let stem = file.strip_suffix(".json").unwrap_or(file);
        self.accounts.join(format!("{stem}_{n}.json"))
    }

    /// API-key slot N (1-based): the environment for that key.
    pub fn api_key_slot(&self, n: usize) -> PathBuf {
        self.accounts.join(format!("api_key_{n}.json"))
    }
}

/// `QWEN_HOME` when set and non-empty, else `$HOME/.qwen` (the active profile's).
pub fn qwen_home() -> PathBuf {
    home_of(crate::profile::active())
}

/// The profile's home variable when set and non-empty (or its `home.dir` inside it, for a
/// variable that names the parent), else its directory under `$HOME`.
pub fn home_of(profile: &Profile) -> PathBuf {
    home_in(
        profile,
        std::env::var_os(profile.home.var),
        std::env::home_dir,
    )
}

fn home_in(profile: &Profile, var: Option<OsString>, user: fn() -> Option<PathBuf>) -> PathBuf {
    match var {
        Some(h) if !h.is_empty() && profile.home.var_is_parent => {
            PathBuf::from(h).join(profile.home.dir)
        }
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => user()
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(profile.home.dir),
    }
}

/// What to do when every account is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExhausted {
    /// Exit 75 at once, naming the earliest reset.
    Fail,
    /// Wait (bounded by `max_wait`) for the earliest account to return.
    Wait,
}

/// Everything `rotation.yaml` can set. Field names are the YAML keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub strategy: Strategy,
    /// Which accounts come first: `logins-first` (subscription logins, then API keys while
    /// every login cools down) or `slots` (slot order). Unset: the profile's default.
    pub order: Option<Order>,
    /// Attempts per run; 0 means "one per eligible slot".
    pub max_attempts: usize,
    /// Cooldown after a quota hit whose message names no reset time.
    #[serde(with = "duration_text")]
    pub quota_cooldown: Duration,
    /// Cooldown after a throttle (rate limit) hit.
    #[serde(with = "duration_text")]
    pub throttle_cooldown: Duration,
    pub on_exhausted: OnExhausted,
    /// Upper bound on waiting when `on_exhausted: wait`.
    #[serde(with = "duration_text")]
    pub max_wait: Duration,
    /// Stdin kept for replay on a retry; larger input disables the retry.
    pub stdin_limit: u64,
    /// How long to wait for `rotation.lock`.
    #[serde(with = "duration_text")]
    pub lock_timeout: Duration,
    /// Grace between TERM and KILL when an attempt is stopped.
    #[serde(with = "duration_text")]
    pub stop_grace: Duration,
    /// Interactive sessions: press Ctrl+Y for the person once the new credentials are live.
    pub auto_retry: bool,
    /// API-key slots: sit in the request path (loopback relay) instead of scanning output.
    pub relay: bool,
    /// A shell command run (detached, `notify_timeout` at most) with one JSON event on stdin
    /// when an account is spent, needs a login, comes back, or every account is spent.
    pub notify_command: Option<String>,
    #[serde(with = "duration_text")]
    pub notify_timeout: Duration,
    /// Relay: an account whose answer announces this much or less remaining quota
    /// (`x-ratelimit-remaining-requests` / `-tokens`) is cooled down until the announced reset
    /// before the next request.
    pub quota_floor: QuotaFloor,
    /// Headless `text` output to a pipe or file, in an attempt that may be retried: hold it until
    /// qwen ends (bounded), so a quota hit after the answer started is still retried
    /// (`--rotation-hold` for one run).
    pub hold_text_output: bool,
    pub patterns: PatternConfig,
    /// A pool shared by several hosts: `redis://[user:password@]host:port/db` (`rediss://` for
    /// TLS). `None`: the files in the qwen home. The environment's `QWEN_ROTATION_POOL` wins.
    /// Never written out (it may hold a password).
    #[serde(skip_serializing)]
    pub pool: Option<String>,
    /// The pool's name inside that Redis (one Redis holds several pools).
    pub pool_name: String,
    /// How long to wait for the shared pool to connect or answer one command (`100ms`); past
    /// it the run goes on with the host's own files.
    #[serde(with = "millis_text")]
    pub pool_timeout: Duration,
    /// The shared pool's password from the environment (never from rotation.yaml).
    #[serde(skip)]
    pub pool_password: Option<Secret>,
    /// A file holding the shared pool's password (read when the pool is first reached).
    #[serde(skip)]
    pub pool_password_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::RoundRobin,
            order: None,
            max_attempts: 0,
            quota_cooldown: Duration::from_secs(5 * 3600),
            throttle_cooldown: Duration::from_secs(5 * 60),
            on_exhausted: OnExhausted::Fail,
            max_wait: Duration::from_secs(30 * 60),
            stdin_limit: 64 << 20,
            lock_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(2),
            auto_retry: true,
            relay: true,
            notify_command: None,
            notify_timeout: Duration::from_secs(10),
            quota_floor: QuotaFloor::default(),
            hold_text_output: false,
            patterns: PatternConfig::default(),
            pool: None,
            pool_name: DEFAULT_POOL_NAME.into(),
            pool_timeout: Duration::from_millis(100),
            pool_password: None,
            pool_password_file: None,
        }
    }
}

/// The pool name when none is given.
pub const DEFAULT_POOL_NAME: &str = "default";

/// The shared pool's settings from the environment, read before the run removes them from its
/// own environment (qwen never sees a `QWEN_ROTATION_POOL*` variable).
#[derive(Debug, Clone, Default)]
pub struct PoolEnv {
    pub url: Option<String>,
    pub name: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

/// The names of the shared pool's variables set in our environment (every name starting with
/// the profile's `pool_vars.pool`): a child the shim starts gets none of them.
pub fn pool_variables() -> Vec<OsString> {
    let prefix = crate::profile::active().pool_vars.pool;
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_str().is_some_and(|k| k.starts_with(prefix)))
        .collect()
}

impl PoolEnv {
    /// The active profile's pool variables; empty ones count as unset.
    pub fn capture() -> PoolEnv {
        let v = &crate::profile::active().pool_vars;
        let get = |name: &str| std::env::var(name).ok().filter(|s| !s.trim().is_empty());
        PoolEnv {
            url: get(v.pool).map(|s| s.trim().to_string()),
            name: get(v.pool_name).map(|s| s.trim().to_string()),
            password: get(v.pool_password).map(Secret::new),
            password_file: std::env::var_os(v.pool_password_file)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        }
    }
}

impl Config {
    /// How the vault picks accounts: the strategy, in `order` or `profile`'s default order.
    pub fn policy(&self, profile: &crate::profile::Profile) -> Policy {
        Policy {
            strategy: self.strategy,
            order: self.order.unwrap_or(profile.order),
        }
    }

    /// `rotation.yaml`'s pool settings with the environment's on top (the environment wins).
    pub fn with_pool_env(mut self, env: &PoolEnv) -> Config {
        if let Some(url) = &env.url {
            self.pool = Some(url.clone());
        }
        if let Some(name) = &env.name {
            self.pool_name = name.clone();
        }
        self.pool_password = env.password.clone();
        self.pool_password_file = env.password_file.clone();
        self
    }

    /// Reads `rotation.yaml`. Missing file: defaults, no warning. Broken file: defaults and a
    /// one-line warning that names the file, the line and the fix.
    pub fn load(path: &Path) -> (Config, Option<String>) {
        // Bounded and non-blocking (see `files`): a FIFO, a 1 GiB file or 100,000 `[` in its
        // place cost a warning, never a stalled qwen.
        match crate::files::read_text(path, crate::files::MAX_OWN_FILE) {
            // A home that is not there (or is under a file) has no rotation.yaml either.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                (Config::default(), None)
            }
            Err(e) => (
                Config::default(),
                Some(format!(
                    "cannot read {}: {e}; using the defaults",
                    path.display()
                )),
            ),
            Ok(text) => match Config::parse(&text) {
                Ok(c) => (c, None),
                Err(problem) => (
                    Config::default(),
                    Some(format!(
                        "{}: {problem}; using the defaults until it is fixed",
                        path.display()
                    )),
                ),
            },
        }
    }

    /// Parses YAML text; an empty document is the defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        if let Some(problem) = crate::files::too_deep(text, crate::files::MAX_NESTING) {
            return Err(problem);
        }
        // The message may quote a key the user wrote: keep it on one line.
        yaml_serde::from_str::<Config>(text).map_err(|e| crate::text::printable(&e.to_string()))
    }
}

/// `quota_floor` in rotation.yaml: the remaining amounts at or under which an account is rested
/// until its reset. The default, 0 and 0, rests it when the provider says nothing is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaFloor {
    pub requests: u64,
    pub tokens: u64,
}

/// Parses "90s", "5m", "1h30m", "2d", or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "`{t}` is not a duration (use e.g. 90s, 5m, 1h30m, 2d)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{t}` is not a duration (use e.g. 90s, 5m, 1h30m, 2d)"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or("duration too large")?;
        digits.clear();
    }
    if !digits.is_empty() || t.is_empty() {
        return Err(format!(
            "`{t}` is not a duration (use e.g. 90s, 5m, 1h30m, 2d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// A duration that may be shorter than a second: "150ms", or any `parse_duration` text.
mod millis_text {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::duration_text::read(d, parse)
    }

    /// "100ms", or anything `parse_duration` takes.
    fn parse(text: &str) -> Result<Duration, String> {
        match text.trim().strip_suffix("ms").map(str::trim) {
            Some(ms) if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => ms
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| "duration too large".to_string()),
            _ => super::parse_duration(text)
                .map_err(|_| format!("`{}` is not a duration (use e.g. 100ms, 2s)", text.trim())),
        }
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        read(d, super::parse_duration)
    }

    /// A bare number of seconds, or text for `parse`.
    pub(super) fn read<'de, D: Deserializer<'de>>(
        d: D,
        parse: fn(&str) -> Result<Duration, String>,
    ) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_floor_defaults_to_nothing_left_and_reads_both_amounts() {
        assert_eq!(Config::default().quota_floor, QuotaFloor::default());
        let c = Config::parse("quota_floor:\n  requests: 2\n  tokens: 1000\n").unwrap();
        assert_eq!(
            c.quota_floor,
            QuotaFloor {
                requests: 2,
                tokens: 1000
            }
        );
        assert_eq!(
            Config::parse("quota_floor: {requests: 5}\n")
                .unwrap()
                .quota_floor
                .tokens,
            0
        );
        let bad = Config::parse("quota_floor: {request: 5}\n").unwrap_err();
        assert!(bad.contains("request"), "{bad}");
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_pool_comes_from_rotation_yaml_and_the_environment_wins() {
        let c = Config::parse("pool: redis://a:6379/0\npool_name: team\npool_timeout: 250ms\n")
            .unwrap();
        assert_eq!(c.pool.as_deref(), Some("redis://a:6379/0"));
        assert_eq!(c.pool_name, "team");
        assert_eq!(c.pool_timeout, Duration::from_millis(250));
        assert_eq!(
            Config::parse("pool_timeout: 2s\n").unwrap().pool_timeout,
            Duration::from_secs(2)
        );
        assert!(Config::parse("pool_timeout: soon\n").is_err());
        let d = Config::default();
        assert_eq!((d.pool.as_deref(), d.pool_name.as_str()), (None, "default"));
        assert_eq!(d.pool_timeout, Duration::from_millis(100));
        let env = PoolEnv {
            url: Some("redis://b:6379/1".into()),
            name: None,
            password: Some(Secret::new("pw")),
            password_file: None,
        };
        let c = c.with_pool_env(&env);
        assert_eq!(c.pool.as_deref(), Some("redis://b:6379/1"));
        assert_eq!(c.pool_name, "team", "kept when the environment names none");
        assert_eq!(c.pool_password.as_ref().map(Secret::expose), Some("pw"));
        // Never written out: it may hold a password.
        let yaml = yaml_serde::to_string(&c).unwrap();
        assert!(
            !yaml.contains("redis://") && !yaml.contains("pw\n"),
            "{yaml}"
        );
    }

    #[test]
    fn paths_name_the_cli_files_of_their_profile() {
        let p = Paths::at("/h");
        assert!(std::ptr::eq(p.profile, &crate::profile::QWEN));
        assert_eq!(p.live_creds, Path::new("/h/oauth_creds.json"));
        assert_eq!(
            p.cli_lock.as_deref(),
            Some(Path::new("/h/oauth_creds.lock"))
        );
        assert_eq!(
            p.cli_lock.as_deref(),
            Some(Path::new("/h/oauth_creds.lock"))
        );
        assert_eq!(p.settings, Path::new("/h/settings.json"));
        // Our own files are the same whatever the CLI.
        assert_eq!(p.oauth_slot(2), Path::new("/h/accounts/oauth_creds_2.json"));
        assert_eq!(p.private, Path::new("/h/rotation-settings"));
    }

    #[test]
    fn a_home_variable_names_the_home_or_its_parent() {
        let user = || Some(PathBuf::from("/u"));
        let mut profile = crate::profile::QWEN.clone();
        for (var, want) in [
            (Some("/q"), "/q"),
            (Some(""), "/u/.qwen"),
            (None, "/u/.qwen"),
        ] {
            assert_eq!(
                home_in(&profile, var.map(OsString::from), user),
                Path::new(want)
            );
        }
        profile.home.var_is_parent = true;
        let under = home_in(&profile, Some(OsString::from("/q")), user);
        assert_eq!(under, Path::new("/q/.qwen"));
        assert_eq!(home_in(&profile, None, user), Path::new("/u/.qwen"));
    }

    #[test]
    fn claude_config_dir_names_the_home_itself() {
        let user = || Some(PathBuf::from("/u"));
        let claude = &crate::profile::CLAUDE;
        let set = home_in(claude, Some(OsString::from("/cfg/claude-work")), user);
        assert_eq!(set, Path::new("/cfg/claude-work"));
        assert_eq!(home_in(claude, None, user), Path::new("/u/.claude"));
    }

    #[test]
    fn a_cli_without_a_lock_has_no_lock_path() {
        let mut profile = crate::profile::QWEN.clone();
        profile.creds.lock = None;
        let p = Paths::of(Box::leak(Box::new(profile)), "/h");
        assert_eq!(p.cli_lock, None);
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert_eq!(c.stdin_limit, 64 << 20);
        assert!(!c.hold_text_output, "text output streams unless asked");
    }

    #[test]
    fn config_reads_every_kind_of_value() {
        let c = Config::parse(
            "strategy: fill-first\nthrottle_cooldown: 2m\nmax_attempts: 3\nhold_text_output: true\npatterns:\n  mode: replace\n  quota: ['out of juice']\n",
        )
        .unwrap();
        assert_eq!(c.strategy, Strategy::FillFirst);
        assert_eq!(c.throttle_cooldown, Duration::from_secs(120));
        assert_eq!(c.max_attempts, 3);
        assert!(c.hold_text_output);
        assert_eq!(c.patterns.mode, PatternMode::Replace);
        assert_eq!(c.patterns.quota, vec!["out of juice".to_string()]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let err = Config::parse("strategy: round-robin\nstratgy: fill-first\n").unwrap_err();
        assert!(err.contains("stratgy") && err.contains("line 2"), "{err}");
        let err = Config::parse("\"stra\\ntegy\": x\n").unwrap_err();
        assert!(err.contains(r"stra\ntegy") && !err.contains('\n'), "{err}");
        let err = Config::parse("throttle_cooldown: soon\n").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn broken_file_falls_back_to_defaults_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rotation.yaml");
        std::fs::write(&p, "strategy: [").unwrap();
        let (c, warning) = Config::load(&p);
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert!(warning.unwrap().contains("rotation.yaml"));
        let (_, none) = Config::load(&dir.path().join("absent.yaml"));
        assert!(none.is_none());
    }
}
