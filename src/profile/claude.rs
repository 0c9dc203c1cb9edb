//! Anthropic's Claude Code (`@anthropic-ai/claude-code`), as observed on 2.1.332 (offline,
//! against a local mock of the Messages API; what was read in the shipped binary rather than
//! observed says so). Subscription logins and API keys, in one pool: logins first.

use super::{Api, Argv, Creds, Detection, Home, PoolVars, Profile, Screen, SettingsSpec, Wire};
use std::time::Duration;

use crate::model::{Class, Order};

pub static CLAUDE: Profile = Profile {
    name: "claude",
    product: "Claude Code",
    npm_package: "@anthropic-ai/claude-code",
    // Our own variables, named after the CLI they stand in front of.
    order: Order::LoginsFirst,
    pool_vars: PoolVars {
        off: "CLAUDE_ROTATION",
        real: "CLAUDE_ROTATION_REAL",
        keys: "CLAUDE_ROTATION_KEYS",
        key_prefix: "CLAUDE_ROTATION_KEY_",
        base_url: "CLAUDE_ROTATION_BASE_URL",
        model: "CLAUDE_ROTATION_MODEL",
        state_dir: "CLAUDE_ROTATION_STATE_DIR",
        pool: "CLAUDE_ROTATION_POOL",
        pool_name: "CLAUDE_ROTATION_POOL_NAME",
        pool_password: "CLAUDE_ROTATION_POOL_PASSWORD",
        pool_password_file: "CLAUDE_ROTATION_POOL_PASSWORD_FILE",
    },
    // `CLAUDE_CONFIG_DIR` names the directory itself (observed: `.credentials.json`,
    // `.claude.json`, `projects/` and `sessions/` all move there; `$HOME` stays untouched).
    home: Home {
        var: "CLAUDE_CONFIG_DIR",
        dir: ".claude",
        var_since: None,
        var_is_parent: false,
    },
    // The subscription login is `.credentials.json` (`claudeAiOauth`, plaintext on Linux; read
    // in the binary). Claude re-reads it by mtime before a request (observed: a file swapped
    // between turns is used by the next request, with no key to press) and rewrites it on
    // refresh, when the refresh token rotates: the live file is synced back after every run.
    creds: Creds {
        file: ".credentials.json",
        lock: None,
        refresh: "/claudeAiOauth/refreshToken",
        access: "/claudeAiOauth/accessToken",
        account: Some("/claudeAiOauth/accountUuid"),
        refresh_rotates: true,
        reread_after: Some(Duration::ZERO),
        retry_key: None,
        retry_hint: "the next message you send goes out on it",
        extra: &[],
        file_swap: true,
        encrypted: None,
    },
    // API-key mode: `ANTHROPIC_API_KEY` (sent as `x-api-key`), `ANTHROPIC_BASE_URL` (a base URL
    // without a path: claude appends `/v1/messages?beta=true`), `ANTHROPIC_MODEL`. Through the
    // relay the run's token goes in `ANTHROPIC_AUTH_TOKEN` (sent as `Authorization: Bearer`;
    // observed: no "Detected a custom API key" prompt in the TUI, which a new
    // `ANTHROPIC_API_KEY` raises with "No" preselected), and a key of the person's own is kept
    // out of claude's environment (it would be sent beside the token, and it beats an OAuth
    // token). No command-line option sets the base URL or the key.
    api: Api {
        wire: Wire::Anthropic,
        relay_path: "",
        default_base_url: Some("https://api.anthropic.com"),
        key_var: "ANTHROPIC_API_KEY",
        base_url_var: "ANTHROPIC_BASE_URL",
        model_vars: &["ANTHROPIC_MODEL"],
        login_clears: &[
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_MODEL",
            "CLAUDE_CODE_OAUTH_TOKEN",
        ],
        argv_base_url: &[],
        argv_key: &[],
        example_base_url: "https://api.anthropic.com",
        example_model: "claude-sonnet-4-5",
        relay_needs_selected: false,
        relay_token_var: Some("ANTHROPIC_AUTH_TOKEN"),
        relay_unset: &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"],
        // Observed: with a stored login and `ANTHROPIC_BASE_URL`, claude sends each request to
        // the base URL with `Authorization: Bearer <accessToken>` (beta `oauth-2025-04-20`), and
        // every header of `ANTHROPIC_CUSTOM_HEADERS` beside it.
        relay_login_headers: Some("ANTHROPIC_CUSTOM_HEADERS"),
        example_plan_url: "https://api.anthropic.com",
    },
    // `~/.claude/settings.json` (user), `.claude/settings.json` (workspace), and managed
    // settings at /etc/claude-code/managed-settings.json (no variable moves them). Claude picks
    // its credentials from the environment, not from a selected auth type: there is nothing to
    // select or enforce, and no private system-settings override (an empty `system_var`).
    settings: SettingsSpec {
        file: "settings.json",
        system_var: "",
        system_default: "/etc/claude-code/managed-settings.json",
        defaults_var: "",
        defaults_default: "",
        workspace: ".claude/settings.json",
        selected: &[],
        legacy_selected: "",
        enforced: &[],
        model: &["model"],
        oauth_hides_env: None,
        providers: None,
        // Observed: `env.ANTHROPIC_BASE_URL` in settings.json beats the variable claude is
        // started with.
        env: Some("env"),
        login_strip: &[],
        system_root_only: false,
        auth_oauth: "claudeai",
        auth_api_key: "api-key",
        // Observed: `apiKeyHelper` beats a stored login (CLAUDE_FACTS.md, "Keys and their
        // precedence").
        beats_login: &["apiKeyHelper"],
    },
    // claude --help (2.1.332): the options whose value is the next argument (optional values
    // such as `-r [value]`, `-d [filter]` are not: a prompt may follow them), the one-shot
    // option, output formats.
    argv: Argv {
        value_options: &[
            "--add-dir",
            "--agent",
            "--agents",
            "--allowedTools",
            "--allowed-tools",
            "--append-system-prompt",
            "--autocompact",
            "--betas",
            "--debug-file",
            "--disallowedTools",
            "--disallowed-tools",
            "--effort",
            "--environment",
            "--fallback-model",
            "--file",
            "--input-format",
            "--json-schema",
            "--max-budget-usd",
            "--mcp-config",
            "--model",
            "-n",
            "--name",
            "--output-format",
            "--permission-mode",
            "--permission-prompts",
            "--plugin-dir",
            "--plugin-url",
            "--remote-control-session-name-prefix",
            "--session-id",
            "--setting-sources",
            "--settings",
            "--system-prompt",
            "--system-prompt-snapshot",
            "--tools",
        ],
        model: &["--model"],
        one_shot: &["-p", "--print"],
        session: &[],
        output_format: &["--output-format"],
        json: "json",
        stream_json: "stream-json",
    },
    // CLAUDE_FACTS.md: headless text errors go to stdout (exit 1), json carries them in
    // `result` with `is_error: true` (`subtype` says "success" even then). A subscription limit
    // is final until its reset; "not your usage limit" is the server limiting requests.
    detect: Detection {
        phrases: &[
            // quota
            (
                Class::Quota,
                "Credit balance is too low",
                r"credit balance (?:is )?too low",
            ),
            (
                Class::Quota,
                "You've hit your usage limit",
                r"you've hit your (5-hour|weekly|opus|sonnet|usage credit) limit",
            ),
            (
                Class::Quota,
                "You're out of usage credits",
                r"you're out of usage credits",
            ),
            // The TUI's line under a usage limit (`● Usage limit reached · set to continue
            // automatically at 4:35am`) and its footer.
            (
                Class::Quota,
                "Usage limit reached",
                r"(?-u:\b)usage limit reached(?-u:\b)",
            ),
            (
                Class::Quota,
                "usage_limit_reached",
                r"(?-u:\b)usage_limit_reached(?-u:\b)",
            ),
            (
                Class::Quota,
                "all accounts exhausted",
                r"all accounts exhausted",
            ),
            // auth
            (Class::Auth, "Invalid API key", r"invalid api key"),
            (
                Class::Auth,
                "Not logged in",
                r"not logged in\W+please run /login",
            ),
            (
                Class::Auth,
                "authentication_error",
                r"(?-u:\b)authentication_error(?-u:\b)",
            ),
            // throttle
            (
                Class::Throttle,
                "Server is temporarily limiting requests",
                r"server is temporarily limiting requests",
            ),
            (
                Class::Throttle,
                "Request rejected (429)",
                r"api error: request rejected \(429\)",
            ),
            (
                Class::Throttle,
                "rate_limit_error",
                r"(?-u:\b)rate_limit_error(?-u:\b)",
            ),
        ],
        json_error_prefixes: &["API Error"],
        auth_why: &[],
        stdout_errors: true,
    },
    // The TUI shows an error under `⎿` (after `●` for an API error) and its retry countdown as
    // `retrying in 11s · attempt 3/10`.
    screen: Screen {
        error_marker: '⎿',
        breaks: &['●', '✻', '>'],
        marker_indent: 4,
        live_hint: "",
        countdown: "retrying in",
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::tests::cli_values;
    use crate::profile::{GEMINI, QWEN};

    #[test]
    fn no_qwen_or_gemini_value_is_in_the_claude_profile() {
        for text in cli_values(&CLAUDE) {
            let t = text.to_ascii_lowercase();
            for other in ["qwen", "gemini", "google", "openai", "dashscope"] {
                assert!(!t.contains(other), "{text}");
            }
        }
        for (_, name, re) in CLAUDE.detect.phrases {
            for other in ["qwen", "gemini", "google"] {
                assert!(
                    !re.contains(other) && !name.to_lowercase().contains(other),
                    "{re}"
                );
            }
        }
        for text in cli_values(&QWEN).into_iter().chain(cli_values(&GEMINI)) {
            let t = text.to_ascii_lowercase();
            assert!(!t.contains("claude") && !t.contains("anthropic"), "{text}");
        }
    }

    #[test]
    fn claude_phrases_classify_its_error_lines() {
        use regex::Regex;
        let class_of = |line: &str| {
            let norm = line.to_lowercase();
            CLAUDE
                .detect
                .phrases
                .iter()
                .find(|(_, _, re)| Regex::new(re).unwrap().is_match(&norm))
                .map(|(c, _, _)| *c)
        };
        let cases = [
            ("Credit balance is too low", Some(Class::Quota)),
            (
                "You've hit your 5-hour limit · resets 4:18am (UTC)",
                Some(Class::Quota),
            ),
            (
                "You've hit your weekly limit · resets Dec 9, 1:25am (UTC)",
                Some(Class::Quota),
            ),
            (
                r#"{"api_error":"usage_limit_reached","is_error":true}"#,
                Some(Class::Quota),
            ),
            ("Invalid API key · Fix external API key", Some(Class::Auth)),
            (
                "API Error: Request rejected (429) · Number of request tokens has exceeded your per-minute rate limit",
                Some(Class::Throttle),
            ),
            (
                "API Error: Server is temporarily limiting requests (not your usage limit) · Rate limited",
                Some(Class::Throttle),
            ),
            ("Not logged in \u{b7} Please run /login", Some(Class::Auth)),
            (
                "\u{25cf} Usage limit reached \u{b7} set to continue automatically at 4:35am",
                Some(Class::Quota),
            ),
            // The TUI's wording drops the "is".
            (
                "\u{23bf}  Credit balance too low \u{b7} Add funds: https://x",
                Some(Class::Quota),
            ),
            ("Hello! How can I help you today?", None),
            ("Your usage limit advice: keep prompts short", None),
        ];
        for (line, want) in cases {
            assert_eq!(class_of(line), want, "{line}");
        }
    }
}
