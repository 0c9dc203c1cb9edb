//! The Qwen Code CLI (`@qwen-code/qwen-code`), as observed on 0.12.0 and 0.24.4.

use std::time::Duration;

use super::{
    Api, Argv, Creds, Detection, Home, Lock, PoolVars, Profile, Screen, SettingsSpec, Since, Wire,
};
use crate::model::{Class, Order};

pub static QWEN: Profile = Profile {
    name: "qwen",
    product: "Qwen Code",
    npm_package: "@qwen-code/qwen-code",
    // Our own variables (README, docs/CI.md): named after the CLI they stand in front of.
    order: Order::Slots,
    pool_vars: PoolVars {
        off: "QWEN_ROTATION",
        real: "QWEN_ROTATION_REAL",
        keys: "QWEN_ROTATION_KEYS",
        key_prefix: "QWEN_ROTATION_KEY_",
        base_url: "QWEN_ROTATION_BASE_URL",
        model: "QWEN_ROTATION_MODEL",
        state_dir: "QWEN_ROTATION_STATE_DIR",
        pool: "QWEN_ROTATION_POOL",
        pool_name: "QWEN_ROTATION_POOL_NAME",
        pool_password: "QWEN_ROTATION_POOL_PASSWORD",
        pool_password_file: "QWEN_ROTATION_POOL_PASSWORD_FILE",
    },
    // QWEN_FACTS.md: `QWEN_HOME` replaces `~/.qwen` since 0.15; 0.12 ignores it.
    home: Home {
        var: "QWEN_HOME",
        dir: ".qwen",
        var_since: Some(Since {
            version: (0, 15),
            older: "0.12 and older",
        }),
        var_is_parent: false,
    },
    // QWEN_FACTS.md §2–§5: the live login is `oauth_creds.json`, rewritten under
    // `oauth_creds.lock` (0.12 takes a lock over after 10 s, 0.24 after 35 s: the shorter); a running qwen re-reads the file at most every
    // 5 s (CACHE_CHECK_INTERVAL_MS) counted from the failed request; Ctrl+Y retries.
    creds: Creds {
        file: "oauth_creds.json",
        lock: Some(Lock {
            file: "oauth_creds.lock",
            stale: Duration::from_secs(10),
        }),
        refresh: "/refresh_token",
        access: "/access_token",
        account: None,
        refresh_rotates: true,
        reread_after: Some(Duration::from_millis(5_200)),
        retry_key: Some(0x19),
        retry_hint: "press Ctrl+Y to retry",
        extra: &[],
        file_swap: true,
        encrypted: None,
    },
    // QWEN_FACTS_APIKEY.md §1: the OpenAI-compatible variables; DashScope examples.
    api: Api {
        wire: Wire::OpenAi,
        relay_path: "/v1",
        default_base_url: None,
        key_var: "OPENAI_API_KEY",
        base_url_var: "OPENAI_BASE_URL",
        model_vars: &["OPENAI_MODEL", "QWEN_MODEL"],
        login_clears: &[
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OPENAI_MODEL",
            "QWEN_MODEL",
        ],
        argv_base_url: &["--openai-base-url", "--openaiBaseUrl"],
        argv_key: &["--openai-api-key", "--openaiApiKey"],
        example_base_url: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        example_model: "qwen3-coder-plus",
        relay_needs_selected: false,
        relay_token_var: None,
        relay_unset: &[],
        relay_login_headers: None,
        example_plan_url: "https://coding-intl.dashscope.aliyuncs.com/v1",
    },
    // QWEN_FACTS_APIKEY.md §4 (settings layers and auth types).
    settings: SettingsSpec {
        file: "settings.json",
        system_var: "QWEN_CODE_SYSTEM_SETTINGS_PATH",
        system_default: "/etc/qwen-code/settings.json",
        defaults_var: "QWEN_CODE_SYSTEM_DEFAULTS_PATH",
        defaults_default: "/etc/qwen-code/system-defaults.json",
        workspace: ".qwen/settings.json",
        selected: &["security", "auth", "selectedType"],
        legacy_selected: "selectedAuthType",
        enforced: &["security", "auth", "enforcedType"],
        model: &["model", "name"],
        oauth_hides_env: Some(Since {
            version: (0, 24),
            older: "0.12",
        }),
        providers: Some("modelProviders"),
        env: None,
        login_strip: &["/env", "/security/auth/apiKey", "/security/auth/baseUrl"],
        system_root_only: false,
        auth_oauth: "qwen-oauth",
        auth_api_key: "openai",
        beats_login: &[],
    },
    // qwen --help (0.12, 0.24): the options that take a value, one-shot and session prompts,
    // output formats.
    argv: Argv {
        value_options: &[
            "-m",
            "--model",
            "-o",
            "--output-format",
            "--input-format",
            "--approval-mode",
            "--auth-type",
            "-e",
            "--extensions",
            "--include-directories",
            "--proxy",
            "--openai-api-key",
            "--openaiApiKey",
            "--openai-base-url",
            "--openaiBaseUrl",
            "--allowed-tools",
            "--exclude-tools",
            "--core-tools",
            "--allowed-mcp-server-names",
            "--max-session-turns",
            "--telemetry-target",
            "-r",
            "--resume",
            "--session-id",
            "--channel",
        ],
        model: &["--model", "-m"],
        one_shot: &["-p", "--prompt"],
        session: &["-i", "--prompt-interactive"],
        output_format: &["--output-format", "-o"],
        json: "json",
        stream_json: "stream-json",
    },
    // Sources: QWEN_FACTS.md and QWEN_FACTS_APIKEY.md (verbatim messages of qwen 0.12.0 and
    // 0.24.4), DashScope's and OpenAI's error codes. `(?-u:\b)` is an ASCII word boundary: the
    // Unicode one would push the regex engine off its fast path on non-ASCII text.
    detect: Detection {
        phrases: &[
            // quota
            (Class::Quota, "insufficient_quota", r"insufficient[ _]quota"),
            (
                Class::Quota,
                "Free allocated quota exceeded",
                r"free allocated quota exceeded",
            ),
            // DashScope `Throttling.AllocationQuota`: "Allocated quota exceeded, please increase …".
            (
                Class::Quota,
                "Allocated quota exceeded",
                r"allocated quota exceeded",
            ),
            (
                Class::Quota,
                "Qwen OAuth quota exceeded",
                r"qwen oauth quota exceeded",
            ),
            (
                Class::Quota,
                "free daily quota has been reached",
                r"free daily quota has been reached",
            ),
            // Coding Plan: "Your token-plan 1-week quota has been exhausted. The quota will reset at …"
            (
                Class::Quota,
                "quota has been exhausted",
                r"quota has been exhausted",
            ),
            // qwen 0.24's fail-fast prefix for the same answer.
            (Class::Quota, "Quota exhausted:", r"quota exhausted:"),
            // OpenAI's insufficient_quota message.
            (
                Class::Quota,
                "exceeded your current quota",
                r"exceeded your current quota",
            ),
            // auth
            (
                Class::Auth,
                "Refresh token expired or invalid",
                r"refresh token expired or invalid",
            ),
            (Class::Auth, "invalid access token", r"invalid access token"),
            (Class::Auth, "token expired", r"token (?:has )?expired"),
            (
                Class::Auth,
                "free tier was discontinued",
                r"free tier (?:was|has been) discontinued",
            ),
            (
                Class::Auth,
                "Incorrect API key provided",
                r"incorrect api[ _-]?key provided",
            ),
            (Class::Auth, "invalid_api_key", r"invalid[ _]?api[ _-]?key"),
            // qwen refreshes after a 401 (0.12: also a 403) or an expired token; when the refresh fails
            // the access token is unusable whatever the cause (QWEN_FACTS.md §2, §4, §5).
            (
                Class::Auth,
                "Network error during token refresh",
                r"network error during token refresh",
            ),
            (
                Class::Auth,
                "Unexpected error during token refresh",
                r"unexpected error during token refresh",
            ),
            (
                Class::Auth,
                "Device authorization flow failed",
                r"device authorization flow failed",
            ),
            (
                Class::Auth,
                "Missing API key for OpenAI-compatible auth",
                r"missing api key for openai-compatible auth",
            ),
            // DashScope 403 `Arrearage`: the account is unusable until it is paid up.
            (
                Class::Auth,
                "account not in good standing",
                r"make sure your account is in good standing",
            ),
            (Class::Auth, "Arrearage", r"(?-u:\b)arrearage(?-u:\b)"),
            (
                Class::Auth,
                "[API Error: 401 …]",
                r"\[api error: 401(?-u:\b)",
            ),
            (
                Class::Auth,
                "[API Error: 403 …]",
                r"\[api error: 403(?-u:\b)",
            ),
            // throttle
            (
                Class::Throttle,
                "Requests rate limit exceeded",
                r"requests rate limit exceeded",
            ),
            (
                Class::Throttle,
                "rate limit exceeded",
                r"rate[ _-]?limit(?:ed(?-u:\b)|[ _]exceeded|[ _]reached)",
            ),
            (Class::Throttle, "Throttling", r"(?-u:\b)throttling(?-u:\b)"),
            (Class::Throttle, "too many requests", r"too many requests"),
            (
                Class::Throttle,
                "limit_requests",
                r"(?-u:\b)limit_requests(?-u:\b)",
            ),
            // qwen prints `[API Error: 429 …]` only after its own retries (0.12: ~90 s), and 0.24 wraps
            // it in `Retrying in 60s (attempt 1/10): …` while it retries for an hour.
            (
                Class::Throttle,
                "[API Error: 429 …]",
                r"\[api error: 429(?-u:\b)",
            ),
        ],
        // How qwen's own error reports begin when it puts them in the `result` of a json run.
        json_error_prefixes: &[
            "Qwen OAuth quota exceeded",
            "[API Error:",
            "Quota exhausted:",
        ],
        auth_why: &[],
        stdout_errors: false,
    },
    // QWEN_FACTS.md (screen transcripts): qwen draws its markers (`✕`, `✦`, `◆`, `>`) at column
    // 2 and an answer's text at column 4 and deeper; an error it will not retry ends with the
    // Ctrl+Y hint, one it retries shows a countdown.
    screen: Screen {
        error_marker: '✕',
        breaks: &['✦', '◆', '↻'],
        marker_indent: 3,
        live_hint: "(press ctrl+y to retry)",
        countdown: "(retrying in",
    },
};
