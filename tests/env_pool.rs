//! The account pool declared in the environment (`QWEN_ROTATION_KEYS`, `QWEN_ROTATION_KEY_N`),
//! through the built binary: a fake qwen (bash, speaking HTTP/1.1 over /dev/tcp to whatever
//! `OPENAI_BASE_URL` it is given) sends one chat request through the relay to the mock provider
//! (tests/support/mock.rs: each key names its fate), and records its own /proc environ. One
//! test runs the real qwen 0.24.4 instead (SKIP when it is not installed).

#[path = "support/mock.rs"]
mod mock;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/real_qwen.rs"]
mod real_qwen;
#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::process::Output;
use std::time::Duration;

use mock::Mock;
use sandbox::Sandbox;
use serde_json::Value;

/// Keys that look real and carry a secret-looking tail that no output may show.
fn key(n: usize, behaviour: &str) -> String {
    format!("sk-env{n}-{behaviour}-Q9w8E7r6T5y4U3i2O1p0")
}

/// The fake qwen: its environment into `environ.N` (and what `$TMPDIR` holds into `tmpdir.N`), one chat request to `OPENAI_BASE_URL` with
/// the key it was given, then the status line and which account answered (the key's prefix only).
const FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
tr '\0' '\n' < /proc/$$/environ > "$SANDBOX/environ.$n"
[ -n "$TMPDIR" ] && ls "$TMPDIR" > "$SANDBOX/tmpdir.$n"
exec bash "$SANDBOX/request.bash""#;

const REQUEST: &str = r#"hp=${OPENAI_BASE_URL#http://}; hp=${hp%%/*}; host=${hp%:*}; port=${hp##*:}
body='{"model":"'"$OPENAI_MODEL"'","messages":[{"role":"user","content":"hi"}]}'
exec 3<>"/dev/tcp/$host/$port" || { echo "no connection to $hp" >&2; exit 7; }
printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
  "$hp" "$OPENAI_API_KEY" "${#body}" "$body" >&3
resp=$(cat <&3)
printf '%s\n' "$resp" | head -1 | tr -d '\r'
printf '%s' "$resp" | grep -o 'REPLY-FROM-sk-env[0-9]*' | head -1
case "$resp" in "HTTP/1.1 200"*) exit 0 ;; *) exit 1 ;; esac"#;

fn sandbox() -> Sandbox {
    let sb = Sandbox::new(FAKE);
    fs::write(sb.path("request.bash"), REQUEST).unwrap();
    // qwen's settings select API keys, so no auth-type override is needed.
    fs::create_dir_all(sb.qwen_home()).unwrap();
    fs::write(
        sb.qwen_home().join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"openai"}}}"#,
    )
    .unwrap();
    sb
}

/// A shim command with the pool and the mock as the base URL for every key.
fn cmd(sb: &Sandbox, mock: &Mock, keys: &str, args: &[&str]) -> std::process::Command {
    let mut c = sb.cmd(args);
    c.env("QWEN_ROTATION_KEYS", keys)
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    c
}

fn run(c: std::process::Command) -> Output {
    sandbox::output_within(c, Duration::from_secs(60))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_key(what: &str, body: &str, keys: &[String]) {
    for k in keys {
        assert!(!body.contains(k.as_str()), "a key in {what}:\n{body}");
        // Not even the secret tail on its own.
        assert!(
            !body.contains("Q9w8E7r6T5y4U3i2O1p0"),
            "a key's tail in {what}:\n{body}"
        );
    }
}

#[test]
fn quota_on_key_1_is_answered_by_key_2_and_no_key_shows_anywhere() {
    let mock = Mock::start();
    let sb = sandbox();
    let keys = vec![key(1, "quota"), key(2, "ok")];
    let list = format!("{}, {}\n", keys[0], keys[1]);
    let out = run(cmd(&sb, &mock, &list, &["-p", "hello"]));
    println!("stdout: {}stderr: {}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "HTTP/1.1 200 OK\nREPLY-FROM-sk-env2\n");
    let tokens = mock.tokens();
    println!("the provider saw {} requests", tokens.len());
    assert_eq!(tokens, keys, "key 1 once, then key 2 for the same request");
    assert!(
        text(&out.stderr).contains("account 1 quota exhausted; switched to account 2"),
        "{}",
        text(&out.stderr)
    );
    // One qwen run: the relay moved the request, qwen never restarted.
    assert_eq!(sb.read("count"), "1\n");

    // The child's own environment: no key, no key variable; its key is the relay's token.
    let environ = sb.read("environ.1");
    assert_no_key("the child's /proc environ", &environ, &keys);
    assert!(!environ.contains("QWEN_ROTATION_KEYS"), "{environ}");
    assert!(environ.contains("OPENAI_API_KEY="), "{environ}");
    assert!(
        environ.contains("OPENAI_BASE_URL=http://127.0.0.1:"),
        "{environ}"
    );

    // Every management view and every file we wrote.
    let mut seen = 0;
    for args in [
        &["--rotation-status"][..],
        &["--rotation-status", "--json"],
        &["--rotation-stats"],
        &["--rotation-stats", "--json"],
        &["--rotation-log", "--tail", "0"],
        &["--rotation-log", "--json"],
        &["--rotation-doctor"],
        &["--rotation-doctor", "--json"],
    ] {
        let o = run(cmd(&sb, &mock, &list, args));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {o:?}");
        assert_no_key(&format!("{args:?} stdout"), &text(&o.stdout), &keys);
        assert_no_key(&format!("{args:?} stderr"), &text(&o.stderr), &keys);
        seen += 1;
    }
    println!("{seen} management views checked for keys");
    for f in ["state.yaml", "rotation.log"] {
        let body = fs::read_to_string(sb.qwen_home().join(f)).unwrap();
        assert_no_key(f, &body, &keys);
    }
    assert_no_key("stderr", &text(&out.stderr), &keys);
    assert_no_key("stdout", &text(&out.stdout), &keys);

    let status: Value = serde_json::from_slice(
        &run(cmd(&sb, &mock, &list, &["--rotation-status", "--json"])).stdout,
    )
    .unwrap();
    assert_eq!(status["pool"], "environment");
    assert_eq!(status["accounts"][0]["status"], "cooling_down");
    assert_eq!(status["accounts"][1]["watch"], "relay");
    assert_eq!(status["current"], 2);
    let human = text(&run(cmd(&sb, &mock, &list, &["--rotation-status"])).stdout);
    assert!(
        human.contains("accounts come from the environment (QWEN_ROTATION_KEYS[1], QWEN_ROTATION_KEYS[2]); slot files"),
        "{human}"
    );
    let doctor = text(&run(cmd(&sb, &mock, &list, &["--rotation-doctor"])).stdout);
    assert!(
        doctor.contains("accounts come from the environment"),
        "{doctor}"
    );
    let stats: Value = serde_json::from_slice(
        &run(cmd(&sb, &mock, &list, &["--rotation-stats", "--json"])).stdout,
    )
    .unwrap();
    assert_eq!(stats["accounts"][1]["runs"], 1, "{stats}");
    // The relay answered the run's one request on account 2.
    assert_eq!(stats["accounts"][0]["relay_requests"], 0, "{stats}");
    assert_eq!(stats["accounts"][1]["relay_requests"], 1, "{stats}");
    let log = fs::read_to_string(sb.qwen_home().join("rotation.log")).unwrap();
    let run_line = log
        .lines()
        .find(|l| l.contains(r#""event":"run""#))
        .unwrap();
    println!("run line: {run_line}");
    assert!(run_line.contains(r#""requests":{"2":1}"#), "{run_line}");
    let human = text(&run(cmd(&sb, &mock, &list, &["--rotation-stats"])).stdout);
    assert!(
        human.contains("Requests answered through the relay: account 2: 1."),
        "{human}"
    );
}

#[test]
fn numbered_keys_take_their_own_model_and_slot_files_are_ignored() {
    let mock = Mock::start();
    let sb = sandbox();
    // A slot file that would be account 1 if the files were the pool.
    let file_key = key(9, "file");
    fs::create_dir_all(sb.qwen_home().join("accounts")).unwrap();
    fs::write(
        sb.qwen_home().join("accounts/api_key_1.json"),
        format!(
            r#"{{"api_key":"{file_key}","base_url":"{}"}}"#,
            mock.base_url()
        ),
    )
    .unwrap();
    let keys = vec![key(1, "quota"), key(2, "ok")];
    let mut c = sb.cmd(["-p", "hello"]);
    c.env("QWEN_ROTATION_KEY_1", &keys[0])
        .env("QWEN_ROTATION_KEY_2", &keys[1])
        .env("QWEN_ROTATION_BASE_URL", mock.base_url())
        .env("QWEN_ROTATION_MODEL", "model-one")
        .env("QWEN_ROTATION_MODEL_2", "model-two");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reqs = mock.chat_requests();
    let seen: Vec<(String, Option<String>)> = reqs
        .iter()
        .map(|r| (r.token.clone(), r.model.clone()))
        .collect();
    println!(
        "provider saw: {:?}",
        seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );
    assert_eq!(
        seen,
        vec![
            (keys[0].clone(), Some("model-one".into())),
            (keys[1].clone(), Some("model-two".into()))
        ]
    );
    assert!(!mock.tokens().contains(&file_key), "the slot file was used");
    let environ = sb.read("environ.1");
    assert!(!environ.contains("QWEN_ROTATION_KEY_"), "{environ}");
    assert_no_key("environ", &environ, &keys);
    // Adding or removing accounts is a change of the variables, not of files.
    let mut add = sb.cmd(["--rotation-remove", "1"]);
    add.env("QWEN_ROTATION_KEY_1", &keys[0]);
    let o = run(add);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        text(&o.stderr).contains("change those variables instead"),
        "{o:?}"
    );
    assert!(sb.qwen_home().join("accounts/api_key_1.json").exists());
}

#[test]
fn a_read_only_home_keeps_state_for_the_run_and_still_rotates() {
    let mock = Mock::start();
    let sb = sandbox();
    // A QWEN_HOME under a regular file cannot be created, whoever runs the test (root included).
    fs::write(sb.path("not-a-dir"), "").unwrap();
    fs::create_dir_all(sb.path("tmp")).unwrap();
    let keys = vec![key(1, "quota"), key(2, "ok")];
    let mut c = cmd(
        &sb,
        &mock,
        &format!("{} {}", keys[0], keys[1]),
        &["-p", "hi"],
    );
    c.env("QWEN_HOME", sb.path("not-a-dir/.qwen"))
        .env("TMPDIR", sb.path("tmp"));
    let out = run(c);
    let err = text(&out.stderr);
    println!("stderr:\n{err}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(mock.tokens(), keys, "rotated within the run");
    assert_eq!(err.matches("note:").count(), 1, "{err}");
    assert!(err.contains("kept for this run only"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let during = sb.read("tmpdir.1");
    println!("TMPDIR while qwen ran: {during:?}");
    assert!(during.starts_with("qwen-rotation-state-"), "{during:?}");
    let left: Vec<_> = fs::read_dir(sb.path("tmp")).unwrap().collect();
    println!("entries left in TMPDIR after the run: {}", left.len());
    assert!(
        left.is_empty(),
        "the run's state directory was removed: {left:?}"
    );
}

#[test]
fn the_state_dir_variable_is_honoured_across_runs() {
    let mock = Mock::start();
    let sb = sandbox();
    let state = sb.path("ci-state");
    let keys = vec![key(1, "quota"), key(2, "ok")];
    let list = format!("{},{}", keys[0], keys[1]);
    for round in 1..=2 {
        let mut c = cmd(&sb, &mock, &list, &["-p", "hi"]);
        c.env("QWEN_ROTATION_STATE_DIR", &state);
        let out = run(c);
        assert_eq!(out.status.code(), Some(0), "round {round}: {out:?}");
    }
    // Round 2 remembered that key 1 is spent: the provider saw it once in all.
    let tokens = mock.tokens();
    println!(
        "provider saw {} requests: key 1 {} time(s)",
        tokens.len(),
        tokens.iter().filter(|t| **t == keys[0]).count()
    );
    assert_eq!(
        tokens,
        vec![keys[0].clone(), keys[1].clone(), keys[1].clone()]
    );
    assert!(state.join("state.yaml").exists() && state.join("rotation.log").exists());
    assert!(!sb.qwen_home().join("state.yaml").exists());
    assert!(!sb.qwen_home().join("rotation.log").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let st = fs::read_to_string(state.join("state.yaml")).unwrap();
    assert!(st.contains("QWEN_ROTATION_KEYS[1]:"), "{st}");
    assert_no_key("state.yaml", &st, &keys);
}

#[test]
fn a_changed_key_starts_with_a_clean_slate() {
    let mock = Mock::start();
    let sb = sandbox();
    let first = [key(1, "quota"), key(2, "ok")];
    let out = run(cmd(&sb, &mock, &first.join(","), &["-p", "hi"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Slot 1 gets a new key: its cooldown belonged to the old one.
    let second = [key(1, "renewed"), key(2, "ok")];
    let status: Value = serde_json::from_slice(
        &run(cmd(
            &sb,
            &mock,
            &second.join(","),
            &["--rotation-status", "--json"],
        ))
        .stdout,
    )
    .unwrap();
    println!(
        "account 1 after the key changed: {}",
        status["accounts"][0]["status"]
    );
    assert_eq!(status["accounts"][0]["status"], "healthy");
    let out = run(cmd(
        &sb,
        &mock,
        &second.join(","),
        &["--rotation-switch", "1"],
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(cmd(&sb, &mock, &second.join(","), &["-p", "hi"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(mock.tokens().last(), Some(&second[0]));
    let log = fs::read_to_string(sb.qwen_home().join("rotation.log")).unwrap();
    assert!(
        log.contains("the key in QWEN_ROTATION_KEYS[1] changed"),
        "{log}"
    );
    // A key taken out of the list: its account is dropped, and the warning says why.
    let out = run(cmd(&sb, &mock, &second[0], &["-p", "hi"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("account 2 is in state.yaml but no key variable declares it any more"),
        "{err}"
    );
}

#[test]
fn a_malformed_variable_is_named_with_the_fix_and_qwen_still_runs() {
    let mock = Mock::start();
    let sb = sandbox();
    let secret = "sk-envX-Q9w8E7r6T5y4U3i2O1p0 tail";
    for (var, value, must) in [
        ("QWEN_ROTATION_KEY_1", "", "QWEN_ROTATION_KEY_1 is empty"),
        (
            "QWEN_ROTATION_KEY_1",
            secret,
            "QWEN_ROTATION_KEY_1 contains spaces or non-printable characters",
        ),
        (
            "QWEN_ROTATION_KEYS",
            " ,\n",
            "QWEN_ROTATION_KEYS is set but holds no key",
        ),
        (
            "QWEN_ROTATION_KEY_one",
            "sk-ok",
            "QWEN_ROTATION_KEY_one does not end in an account number",
        ),
    ] {
        // A management command: exit 2, one line.
        let mut c = sb.cmd(["--rotation-status"]);
        c.env(var, value);
        let o = run(c);
        let err = text(&o.stderr);
        println!("{var}: {err}");
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(must) && err.contains("; "), "{err}");
        assert!(!err.contains("Q9w8E7r6T5y4U3i2O1p0"), "{err}");
        // A run: one warning, then qwen runs (without the variable).
        let _ = fs::remove_file(sb.path("count"));
        let mut c = sb.cmd(["-p", "hi"]);
        c.env(var, value).env("OPENAI_BASE_URL", mock.base_url());
        let o = run(c);
        let err = text(&o.stderr);
        assert!(
            err.contains(must) && err.contains("running qwen without rotation"),
            "{err}"
        );
        assert!(!err.contains("Q9w8E7r6T5y4U3i2O1p0"), "{err}");
        assert_eq!(sb.read("count"), "1\n", "qwen ran");
        let environ = sb.read("environ.1");
        assert!(!environ.contains(var), "{environ}");
    }
    // A bad URL names the variable it came from, never its value.
    let mut c = sb.cmd(["--rotation-status"]);
    c.env("QWEN_ROTATION_KEY_1", key(1, "ok")).env(
        "QWEN_ROTATION_BASE_URL_1",
        "htp://user:Q9w8E7r6T5y4U3i2O1p0@host",
    );
    let o = run(c);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("QWEN_ROTATION_BASE_URL_1 is not an http(s) URL"),
        "{err}"
    );
    assert!(!err.contains("Q9w8E7r6T5y4U3i2O1p0"), "{err}");
}

#[test]
fn real_qwen_0_24_rotates_keys_from_the_environment() {
    let mock = Mock::start();
    let Some(mut sb) = real_qwen::Sandbox::new(real_qwen::Version::V0_24) else {
        return;
    };
    sb.write_settings(Some("openai"), serde_json::json!({}));
    let keys = [key(1, "quota"), key(2, "ok")];
    sb.env("QWEN_ROTATION_KEYS", format!("{}\n{}\n", keys[0], keys[1]))
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let out = sb.run(&["-p", "hello"], None);
    println!("real qwen 0.24.4 run took {:.1?}", out.elapsed);
    assert_eq!(out.code(), 0, "{}", out.dump());
    // The mock quotes the key it answered with: the answer came from key 2.
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    let tokens = mock.tokens();
    assert_eq!(tokens.first(), Some(&keys[0]), "{tokens:?}");
    assert!(tokens[1..].iter().all(|t| *t == keys[1]), "{tokens:?}");
    for k in &keys {
        assert!(!out.stderr().contains(k.as_str()), "{}", out.dump());
    }
    for f in ["state.yaml", "rotation.log"] {
        let body = fs::read_to_string(sb.qwen_home.join(f)).unwrap_or_default();
        assert!(!body.is_empty(), "{f} written");
        assert_no_key(f, &body, &keys);
    }
}
