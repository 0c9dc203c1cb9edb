//! The Profile: everything specific to the CLI the shim stands in front of, as plain data.
//!
//! Ground floor: a [`Profile`] is a value of plain structs, strings, slices and durations (no
//! trait, no behaviour), so every layer above may read it. It imports only `model` (for the
//! [`Class`] of a phrase). One profile per CLI: `qwen` ([`QWEN`]), `gemini` ([`GEMINI`]) and
//! `claude` ([`CLAUDE`]).
//!
//! How a profile is chosen: `main` calls [`select`] with argv[0] first thing; the file name the
//! binary was run as picks a profile from [`ALL`] by [`Profile::name`], and any other name falls
//! back to [`QWEN`] (a shim installed under another name behaves as it always did). The choice
//! is stored once per process; [`active`] reads it, and returns [`QWEN`] when nothing was
//! selected (unit and integration tests). Code that holds a `Paths` reads `paths.profile`; only
//! context-free code (`Error`'s Display, cli messages, the default phrase table) reads
//! [`active`].
//!
//! Not in a profile: our own on-disk format (`accounts/oauth_creds_N.json`, `api_key_N.json`,
//! `rotation-settings/`, `.qwen-rotation-` temporaries, the shim marker), which is the same
//! whatever CLI a pool belongs to.
//!
//! Files: `qwen` (the [`QWEN`] value), `gemini` (the [`GEMINI`] value), `claude` (the
//! [`CLAUDE`] value), each group with the facts it comes from.

mod claude;
mod gemini;
mod qwen;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::model::{Class, Order};

pub use claude::CLAUDE;
pub use gemini::GEMINI;
pub use qwen::QWEN;

/// Every profile the binary knows, chosen by the name it was run as.
pub static ALL: &[&Profile] = &[&QWEN, &GEMINI, &CLAUDE];

/// One CLI: its names, files, variables, argv, output shapes and wording.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The name on PATH and in argv[0] (`qwen`); also how messages name the real CLI.
    pub name: &'static str,
    /// The product's own name (`Qwen Code`).
    pub product: &'static str,
    /// The npm package the real CLI comes from (its version is read from its package.json).
    pub npm_package: &'static str,
    /// The default order of the pool (`order` in rotation.yaml overrides it).
    pub order: Order,
    pub pool_vars: PoolVars,
    pub home: Home,
    pub creds: Creds,
    pub api: Api,
    pub settings: SettingsSpec,
    pub argv: Argv,
    pub detect: Detection,
    pub screen: Screen,
}

/// Our own variables for this profile: switch-off, real CLI, accounts from the environment.
#[derive(Debug, Clone)]
pub struct PoolVars {
    /// `off` or `0`: run the real CLI untouched.
    pub off: &'static str,
    /// The real CLI's path, instead of a PATH walk.
    pub real: &'static str,
    /// Several keys in one variable.
    pub keys: &'static str,
    /// One key per variable: the prefix of `…_N`.
    pub key_prefix: &'static str,
    /// Base URL for every key (`…_N` for one).
    pub base_url: &'static str,
    /// Model for every key (`…_N` for one).
    pub model: &'static str,
    /// Where state.yaml and rotation.log go when the accounts come from the environment.
    pub state_dir: &'static str,
    /// The shared pool's URL (`redis://…`); every variable starting with it is ours and never
    /// reaches the CLI.
    pub pool: &'static str,
    /// The shared pool's name (one Redis holds several pools).
    pub pool_name: &'static str,
    /// The shared pool's password (when the URL holds none).
    pub pool_password: &'static str,
    /// A file holding the shared pool's password.
    pub pool_password_file: &'static str,
}

/// Where the CLI keeps its files (and we keep the pool).
#[derive(Debug, Clone)]
pub struct Home {
    /// The variable that names the home (`QWEN_HOME`).
    pub var: &'static str,
    /// The directory under `$HOME` when the variable is unset (`.qwen`).
    pub dir: &'static str,
    /// The first version that honours [`Home::var`]; `None`: every version does.
    pub var_since: Option<Since>,
    /// The variable names the directory that holds [`Home::dir`] (a `$HOME` for the CLI), not
    /// the home itself.
    pub var_is_parent: bool,
}

/// A version from which the CLI does something, and how messages name the ones before it.
#[derive(Debug, Clone)]
pub struct Since {
    /// (major, minor).
    pub version: (u64, u64),
    /// The versions before it, as people know them (`0.12 and older`).
    pub older: &'static str,
}

/// The live login file and how the CLI treats it.
#[derive(Debug, Clone)]
pub struct Creds {
    /// The live credentials file in the home.
    pub file: &'static str,
    /// The lock file the CLI holds while it rewrites [`Creds::file`], if it takes one.
    pub lock: Option<Lock>,
    /// JSON pointer of the refresh token (what identifies a login).
    pub refresh: &'static str,
    /// JSON pointer of the access token.
    pub access: &'static str,
    /// JSON pointer of the account's own id, when the file holds one (claude's
    /// `accountUuid`): a live file naming another account is another login, never a refresh.
    pub account: Option<&'static str>,
    /// The CLI may save a new refresh token on refresh (qwen): a live file with an unknown
    /// refresh token is then taken for the slot installed last. False (gemini keeps the refresh
    /// token): the live file belongs to a slot only by its refresh token, so a process still
    /// running on another login can never write into the installed slot.
    pub refresh_rotates: bool,
    /// How long after a swap a running CLI has certainly re-read the file (`None`: never).
    pub reread_after: Option<Duration>,
    /// The key that retries the last request in a session (`None`: there is none).
    pub retry_key: Option<u8>,
    /// What to tell the person once a swapped login is live and we did not retry for them.
    pub retry_hint: &'static str,
    /// Other files of the live login, kept with it as each OAuth slot's companion
    /// (`accounts/<stem>_N.json`) and installed with it; a display cache, so a missing or
    /// unwritable one is no error.
    pub extra: &'static [&'static str],
    /// The login can be rotated by swapping [`Creds::file`]; false: OAuth accounts cannot be
    /// added (API keys only), and `--rotation-add` says so.
    pub file_swap: bool,
    /// Where the CLI keeps the login instead when it encrypts it, if it can: file swapping
    /// cannot work there.
    pub encrypted: Option<Encrypted>,
}

/// The CLI's encrypted credential storage: the variable that turns it on and the file it uses.
#[derive(Debug, Clone)]
pub struct Encrypted {
    pub var: &'static str,
    pub file: &'static str,
}

/// A lock file the CLI takes, and when a left-over one counts as abandoned.
#[derive(Debug, Clone)]
pub struct Lock {
    pub file: &'static str,
    pub stale: Duration,
}

/// How the CLI talks to an API-key provider, which is what the relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI-compatible: the key as `Authorization: Bearer`, a base URL ending in `/v1`, the
    /// model in the request body, errors as `{"error":{"message","type","code"}}`.
    OpenAi,
    /// The Gemini API: the key as `x-goog-api-key` (or `?key=`), paths
    /// `/v1beta/models/<model>:generateContent` under a base URL without a path, the model in
    /// the path, errors as `{"error":{"code","status","message","details"}}`.
    Gemini,
    /// Anthropic's Messages API: the key as `x-api-key` (a token as `Authorization: Bearer`),
    /// `POST /v1/messages` under a base URL without a path, the model in the request body,
    /// errors as `{"type":"error","error":{"type","message"}}`; the CLI probes `HEAD /api/hello`.
    Anthropic,
}

/// The API-key variables the CLI reads.
#[derive(Debug, Clone)]
pub struct Api {
    /// What the requests look like.
    pub wire: Wire,
    /// The path the relay's base URL ends in (`/v1`), stripped before the slot's base URL is
    /// put in front of a request's path; empty: the CLI adds the whole path itself.
    pub relay_path: &'static str,
    /// The provider's base URL for a key stored without one; `None`: the key's base URL comes
    /// from the CLI's settings.
    pub default_base_url: Option<&'static str>,
    /// The key (`OPENAI_API_KEY`): the default variable an API-key account sets.
    pub key_var: &'static str,
    /// The base URL (`OPENAI_BASE_URL`).
    pub base_url_var: &'static str,
    /// The model, the one we set first (`OPENAI_MODEL`, then `QWEN_MODEL`).
    pub model_vars: &'static [&'static str],
    /// Cleared from the environment of a fresh login, so it cannot pick an API key.
    pub login_clears: &'static [&'static str],
    /// Command-line options that set the base URL or the key (each also as `--x=value`): with
    /// them the CLI's requests cannot go through the relay.
    pub argv_base_url: &'static [&'static str],
    pub argv_key: &'static [&'static str],
    /// A base URL and a model for examples in help and messages.
    pub example_base_url: &'static str,
    pub example_model: &'static str,
    /// A subscription plan's base URL, for the `--rotation-add --api-key` example in help.
    pub example_plan_url: &'static str,
    /// With [`Api::base_url_var`] set, the CLI uses the key only while its settings select
    /// [`SettingsSpec::auth_api_key`] (else it picks another auth type): the relay needs that
    /// selection, from the user's settings or from the private system-settings override.
    pub relay_needs_selected: bool,
    /// The variable the relay's per-run token goes in when it is not the key's (claude takes a
    /// bearer token as `ANTHROPIC_AUTH_TOKEN` without asking the person to approve a new key);
    /// `None`: the slot's key variable.
    pub relay_token_var: Option<&'static str>,
    /// Removed from the CLI's environment while it talks through the relay: variables that
    /// would carry a key of their own beside (or over) the relay's token.
    pub relay_unset: &'static [&'static str],
    /// The relay serves the CLI's subscription logins too: the CLI sends its login's requests
    /// to the base URL it is given (claude: `Authorization: Bearer <access token>`), the relay
    /// sends them on with the current login's token (or a key, past the chain's logins). The
    /// run's token then travels in this variable as an extra header (claude's
    /// `ANTHROPIC_CUSTOM_HEADERS`), beside the login the CLI keeps using and refreshing.
    /// `None`: logins are swapped as files and the CLI's output is watched.
    pub relay_login_headers: Option<&'static str>,
}

/// The CLI's settings files and the keys we read or write in them.
#[derive(Debug, Clone)]
pub struct SettingsSpec {
    /// The user settings file in the home.
    pub file: &'static str,
    /// The variable naming the system settings file, and its default path.
    pub system_var: &'static str,
    pub system_default: &'static str,
    /// The variable naming the system defaults file, and its default path.
    pub defaults_var: &'static str,
    pub defaults_default: &'static str,
    /// The workspace settings file, relative to the working directory.
    pub workspace: &'static str,
    /// Key path of the selected auth type, and the older top-level key.
    pub selected: &'static [&'static str],
    pub legacy_selected: &'static str,
    /// Key path of the enforced auth type.
    pub enforced: &'static [&'static str],
    /// Key path of the model name.
    pub model: &'static [&'static str],
    /// The versions that ignore an API key's environment while [`SettingsSpec::selected`] is
    /// [`SettingsSpec::auth_oauth`] (`version`: the first known to use it); `None`: none do.
    pub oauth_hides_env: Option<Since>,
    /// The key of the model providers table (entries with `id`, `baseUrl`, `envKey`), if any.
    pub providers: Option<&'static str>,
    /// The key of an object of variables the CLI applies over the environment it is given
    /// (claude's `env`), if any: a base URL or key set there beats the relay's.
    pub env: Option<&'static str>,
    /// JSON pointers removed from the user's settings for a fresh login's home (what could
    /// make the login pick an API key).
    pub login_strip: &'static [&'static str],
    /// The CLI reads a system settings file only when root owns it and every directory above
    /// it, none writable by group or others: a private override written by a user is skipped.
    pub system_root_only: bool,
    /// The auth-type names of an OAuth login and of an API key.
    pub auth_oauth: &'static str,
    pub auth_api_key: &'static str,
    /// Settings keys that make the CLI use another credential than its stored login (claude's
    /// `apiKeyHelper`): with one set, the pool's logins are not used.
    pub beats_login: &'static [&'static str],
}

/// The CLI's command line, as far as we read it.
#[derive(Debug, Clone)]
pub struct Argv {
    /// Options whose value is the next argument (so it is not taken for a positional prompt).
    pub value_options: &'static [&'static str],
    /// The options that name the model (each also as `--x=value`).
    pub model: &'static [&'static str],
    /// Options that ask for one answer and an exit; each also takes `--x=value`.
    pub one_shot: &'static [&'static str],
    /// Options that ask for a session even with a prompt.
    pub session: &'static [&'static str],
    /// The output-format options, and the values that mean json and stream-json.
    pub output_format: &'static [&'static str],
    pub json: &'static str,
    pub stream_json: &'static str,
}

/// What the CLI's errors look like in its output.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The built-in phrases: (class, the name a hit carries, a regex over normalised text —
    /// lowercase, single spaces).
    pub phrases: &'static [(Class, &'static str, &'static str)],
    /// How the CLI's own error reports begin in the `result` of a json run.
    pub json_error_prefixes: &'static [&'static str],
    /// Why an auth phrase (by its name) means the login needs attention, added to the notice
    /// when it is not plain from the phrase; empty: none.
    pub auth_why: &'static [(&'static str, &'static str)],
    /// Headless text mode prints the CLI's errors on stdout (one line, a non-zero exit) rather
    /// than on stderr: the last line of a failed run's text output is judged by the phrases.
    pub stdout_errors: bool,
}

/// What the CLI's interactive screen looks like around an error.
#[derive(Debug, Clone)]
pub struct Screen {
    /// The character that opens an error block.
    pub error_marker: char,
    /// Characters that start something else (an answer, a tool), ending a block.
    pub breaks: &'static [char],
    /// The deepest indent (columns) of an error block's marker.
    pub marker_indent: u32,
    /// The hint under a retryable error (normalised: lowercase; empty: the CLI shows none).
    pub live_hint: &'static str,
    /// The countdown of an error the CLI retries by itself (normalised; empty: none).
    pub countdown: &'static str,
}

static SELECTED: OnceLock<&'static Profile> = OnceLock::new();

/// The profile for the name the binary was run as; any other name is [`QWEN`].
pub fn for_name(argv0: Option<&OsStr>) -> &'static Profile {
    let name = argv0.and_then(|a| Path::new(a).file_name());
    ALL.iter()
        .copied()
        .find(|p| name.is_some_and(|n| n == p.name))
        .unwrap_or(&QWEN)
}

/// Chooses the process's profile from argv[0] (once: a later call returns the first choice).
pub fn select(argv0: Option<&OsStr>) -> &'static Profile {
    SELECTED.get_or_init(|| for_name(argv0))
}

/// The process's profile: the one [`select`] chose, else [`QWEN`].
pub fn active() -> &'static Profile {
    SELECTED.get().copied().unwrap_or(&QWEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of a profile that names something of its CLI.
    pub(super) fn cli_values(p: &Profile) -> Vec<&'static str> {
        let mut v = vec![p.name, p.product, p.npm_package, p.home.var, p.home.dir];
        let pv = &p.pool_vars;
        v.extend([
            pv.off,
            pv.real,
            pv.keys,
            pv.key_prefix,
            pv.base_url,
            pv.model,
            pv.state_dir,
            pv.pool,
            pv.pool_name,
            pv.pool_password,
            pv.pool_password_file,
        ]);
        let a = &p.api;
        v.extend([
            a.key_var,
            a.base_url_var,
            a.example_base_url,
            a.example_model,
            a.example_plan_url,
        ]);
        v.extend(a.model_vars.iter().copied());
        v.extend(a.login_clears.iter().copied());
        v.extend(a.relay_unset.iter().copied());
        v.extend(a.relay_token_var);
        v.extend(a.relay_login_headers);
        v.extend(a.default_base_url);
        let s = &p.settings;
        v.extend([
            s.file,
            s.system_var,
            s.system_default,
            s.defaults_var,
            s.defaults_default,
            s.workspace,
            s.auth_oauth,
            s.auth_api_key,
        ]);
        v.extend([p.creds.file, p.creds.retry_hint]);
        v
    }

    #[test]
    fn the_name_run_as_picks_the_profile_and_any_other_name_is_qwen() {
        for argv0 in ["qwen", "/usr/local/bin/qwen", "./qwen"] {
            assert!(std::ptr::eq(for_name(Some(OsStr::new(argv0))), &QWEN));
        }
        for argv0 in ["qwen-rotation", "/opt/x/q", "", "/"] {
            assert!(
                std::ptr::eq(for_name(Some(OsStr::new(argv0))), &QWEN),
                "{argv0}"
            );
        }
        assert!(std::ptr::eq(for_name(None), &QWEN));
    }

    #[test]
    fn the_name_gemini_picks_the_gemini_profile() {
        for argv0 in ["gemini", "/usr/local/bin/gemini", "./gemini"] {
            assert!(std::ptr::eq(for_name(Some(OsStr::new(argv0))), &GEMINI));
        }
        assert!(!std::ptr::eq(
            for_name(Some(OsStr::new("gemini-cli"))),
            &GEMINI
        ));
    }

    #[test]
    fn the_name_claude_picks_the_claude_profile() {
        for argv0 in ["claude", "/usr/local/bin/claude", "./claude"] {
            assert!(std::ptr::eq(for_name(Some(OsStr::new(argv0))), &CLAUDE));
        }
        assert!(!std::ptr::eq(
            for_name(Some(OsStr::new("claude-code"))),
            &CLAUDE
        ));
    }

    #[test]
    fn every_profile_has_its_own_name() {
        let mut names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
