//! Google's Gemini CLI (`@google/gemini-cli`), as observed on 0.61.0 (offline, against a local
//! mock of the Gemini API; what was read in its bundled source rather than observed says so).

use super::{
    Api, Argv, Creds, Detection, Encrypted, Home, PoolVars, Profile, Screen, SettingsSpec, Wire,
};
use crate::model::{Class, Order};

pub static GEMINI: Profile = Profile {
    name: "gemini",
    product: "Gemini CLI",
    npm_package: "@google/gemini-cli",
    // Our own variables, named after the CLI they stand in front of.
    order: Order::Slots,
    pool_vars: PoolVars {
        off: "GEMINI_ROTATION",
        real: "GEMINI_ROTATION_REAL",
        keys: "GEMINI_ROTATION_KEYS",
        key_prefix: "GEMINI_ROTATION_KEY_",
        base_url: "GEMINI_ROTATION_BASE_URL",
        model: "GEMINI_ROTATION_MODEL",
        state_dir: "GEMINI_ROTATION_STATE_DIR",
        pool: "GEMINI_ROTATION_POOL",
        pool_name: "GEMINI_ROTATION_POOL_NAME",
        pool_password: "GEMINI_ROTATION_POOL_PASSWORD",
        pool_password_file: "GEMINI_ROTATION_POOL_PASSWORD_FILE",
    },
    // `GEMINI_CLI_HOME` replaces the home directory: the files live in `$GEMINI_CLI_HOME/.gemini`
    // (observed: nothing is written to `$HOME` then).
    home: Home {
        var: "GEMINI_CLI_HOME",
        dir: ".gemini",
        var_since: None,
        var_is_parent: true,
    },
    // The login is `oauth_creds.json` (google-auth-library `Credentials`), with
    // `google_accounts.json` beside it (a display cache, kept per slot). Gemini takes no lock,
    // builds its OAuth client once per process (no re-read: a swap takes effect at the next
    // start) and rewrites the file on refresh without a lock or a merge, keeping the refresh
    // token: a still-running process can overwrite a swapped file, which sync-back matches to
    // its slot by refresh token (never by position) and the next run installs the current slot
    // again. `GEMINI_FORCE_ENCRYPTED_FILE_STORAGE=true` moves the login to the keychain or to
    // `gemini-credentials.json` (read in source): no file to swap there.
    creds: Creds {
        file: "oauth_creds.json",
        lock: None,
        refresh: "/refresh_token",
        access: "/access_token",
        account: None,
        refresh_rotates: false,
        reread_after: None,
        retry_key: None,
        retry_hint: "the next start of gemini uses it",
        extra: &["google_accounts.json"],
        file_swap: true,
        encrypted: Some(Encrypted {
            var: "GEMINI_FORCE_ENCRYPTED_FILE_STORAGE",
            file: "gemini-credentials.json",
        }),
    },
    // API-key mode: `GEMINI_API_KEY` (sent as `x-goog-api-key`), `GOOGLE_GEMINI_BASE_URL` (the
    // SDK appends `/v1beta/models/<model>:…`), `GEMINI_MODEL`. No command-line option sets the
    // base URL or the key.
    api: Api {
        wire: Wire::Gemini,
        relay_path: "",
        default_base_url: Some("https://generativelanguage.googleapis.com"),
        key_var: "GEMINI_API_KEY",
        base_url_var: "GOOGLE_GEMINI_BASE_URL",
        model_vars: &["GEMINI_MODEL"],
        login_clears: &[
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GOOGLE_GEMINI_BASE_URL",
            "GEMINI_MODEL",
            "GOOGLE_GENAI_USE_VERTEXAI",
        ],
        argv_base_url: &[],
        argv_key: &[],
        example_base_url: "https://generativelanguage.googleapis.com",
        example_model: "gemini-2.5-pro",
        relay_needs_selected: true,
        relay_token_var: None,
        relay_unset: &[],
        relay_login_headers: None,
        example_plan_url: "https://generativelanguage.googleapis.com",
    },
    // Settings layers (read in source): system `GEMINI_CLI_SYSTEM_SETTINGS_PATH` (default
    // /etc/gemini-cli/settings.json) beats workspace `.gemini/settings.json` beats the user's.
    // With the base URL set and no selected type, gemini picks `gateway`, which headless runs
    // reject (exit 41): an API-key run needs `gemini-api-key` selected, which the private
    // system-settings file does, but gemini reads a system settings file only when root owns
    // it and every directory above it, none writable by group or others (observed: `Security
    // Warning: Skipping system settings file '…': Parent directory '/tmp' is insecure`).
    settings: SettingsSpec {
        file: "settings.json",
        system_var: "GEMINI_CLI_SYSTEM_SETTINGS_PATH",
        system_default: "/etc/gemini-cli/settings.json",
        defaults_var: "GEMINI_CLI_SYSTEM_DEFAULTS_PATH",
        defaults_default: "/etc/gemini-cli/system-defaults.json",
        workspace: ".gemini/settings.json",
        selected: &["security", "auth", "selectedType"],
        legacy_selected: "selectedAuthType",
        enforced: &["security", "auth", "enforcedType"],
        model: &["model", "name"],
        oauth_hides_env: None,
        providers: None,
        env: None,
        login_strip: &["/security/auth/selectedType"],
        system_root_only: true,
        auth_oauth: "oauth-personal",
        auth_api_key: "gemini-api-key",
        beats_login: &[],
    },
    // gemini --help (0.61.0): the options that take a value, one-shot and session prompts,
    // output formats.
    argv: Argv {
        value_options: &[
            "-m",
            "--model",
            "-o",
            "--output-format",
            "--approval-mode",
            "--policy",
            "--admin-policy",
            "-e",
            "--extensions",
            "--include-directories",
            "--allowed-tools",
            "--allowed-mcp-server-names",
            "-r",
            "--resume",
            "--session-file",
            "--session-id",
            "--delete-session",
        ],
        model: &["--model", "-m"],
        one_shot: &["-p", "--prompt"],
        session: &["-i", "--prompt-interactive"],
        output_format: &["--output-format", "-o"],
        json: "json",
        stream_json: "stream-json",
    },
    // GEMINI_FACTS.md (stderr of headless runs, the TUI's dialogs), and the Gemini API's error
    // statuses. A daily quota is final; a per-minute one gemini retries for about 6 minutes
    // (`Attempt N failed: You exceeded your current quota … Retrying after …`); the OAuth
    // capacity message sleeps the whole reset delay.
    detect: Detection {
        phrases: &[
            // quota
            (
                Class::Quota,
                "You have exhausted your daily quota",
                r"you have exhausted your daily quota",
            ),
            (
                Class::Quota,
                "You have exhausted your capacity on this model",
                r"you have exhausted your capacity on this model",
            ),
            (
                Class::Quota,
                "Usage limit reached for all Pro models",
                r"usage limit reached for all pro models",
            ),
            (
                Class::Quota,
                "all accounts exhausted",
                r"all accounts exhausted",
            ),
            // auth
            (
                Class::Auth,
                "API key not valid",
                r"api key not valid|(?-u:\b)api_key_invalid(?-u:\b)",
            ),
            (
                Class::Auth,
                "UNAUTHENTICATED",
                r"(?-u:\b)unauthenticated(?-u:\b)",
            ),
            (
                Class::Auth,
                "PERMISSION_DENIED",
                r"(?-u:\b)permission_denied(?-u:\b)",
            ),
            (
                Class::Auth,
                "no longer supported for Gemini Code Assist for individuals",
                r"no longer supported for gemini code assist for individuals",
            ),
            (
                Class::Auth,
                "Manual authorization is required",
                r"manual authorization is required",
            ),
            // throttle
            (
                Class::Throttle,
                "You exceeded your current quota (retried)",
                r"attempt \d+ failed: you exceeded your current quota",
            ),
            (
                Class::Throttle,
                "RESOURCE_EXHAUSTED",
                r"(?-u:\b)resource_exhausted(?-u:\b)",
            ),
            (
                Class::Throttle,
                "We are currently experiencing high demand",
                r"we are currently experiencing high demand",
            ),
            (Class::Throttle, "too many requests", r"too many requests"),
        ],
        // Gemini's json output has no `result` element that could carry its errors (they go to
        // stderr as `{"session_id":…,"error":{…}}`).
        json_error_prefixes: &[],
        auth_why: &[
            (
                "no longer supported for Gemini Code Assist for individuals",
                "Google no longer serves Gemini CLI's Login with Google to this account (only Code Assist Standard/Enterprise); log in with such an account or add API keys",
            ),
            (
                "Manual authorization is required",
                "gemini could not use the stored login (expired or revoked) and cannot ask for a new one without a terminal; run gemini --rotation-add --login on a terminal, or log in with gemini and add it again",
            ),
        ],
        stdout_errors: false,
    },
    // The TUI draws errors as `✕ [API Error: …]` and answers after `✦`; it shows no retry hint
    // and no countdown under an error.
    screen: Screen {
        error_marker: '✕',
        breaks: &['✦', '◆', '↻'],
        marker_indent: 3,
        live_hint: "",
        countdown: "",
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::QWEN;
    use crate::profile::tests::cli_values;

    #[test]
    fn no_qwen_value_is_in_the_gemini_profile_and_back() {
        let (q, g) = (cli_values(&QWEN), cli_values(&GEMINI));
        for text in &g {
            let t = text.to_ascii_lowercase();
            assert!(!t.contains("qwen") && !t.contains("openai"), "{text}");
        }
        for text in &q {
            assert!(!text.to_ascii_lowercase().contains("gemini"), "{text}");
        }
        for (_, _, re) in GEMINI.detect.phrases {
            assert!(!re.contains("qwen"), "{re}");
        }
    }

    #[test]
    fn gemini_phrases_classify_its_stderr() {
        use regex::Regex;
        let class_of = |line: &str| {
            let norm = line.to_lowercase();
            GEMINI
                .detect
                .phrases
                .iter()
                .find(|(_, _, re)| Regex::new(re).unwrap().is_match(&norm))
                .map(|(c, _, _)| *c)
        };
        let cases = [
            (
                "You have exhausted your daily quota on this model.",
                Some(Class::Quota),
            ),
            (
                "Attempt 1 failed: You have exhausted your capacity on this model. Your quota will reset after 2h3m4s.. Retrying after 8352610ms...",
                Some(Class::Quota),
            ),
            (
                "Attempt 3 failed: You exceeded your current quota, please check your plan and billing details. Retrying after 34498ms...",
                Some(Class::Throttle),
            ),
            (
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
                Some(Class::Auth),
            ),
            (
                "Manual authorization is required but the current session is non-interactive.",
                Some(Class::Auth),
            ),
            (
                "This client is no longer supported for Gemini Code Assist for individuals",
                Some(Class::Auth),
            ),
            ("Loaded cached credentials.", None),
            ("Here is how to handle quota in your code", None),
        ];
        for (line, want) in cases {
            assert_eq!(class_of(line), want, "{line}");
        }
    }
}
