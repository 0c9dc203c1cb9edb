//! The loopback relay end to end: the REAL qwen 0.24.4 (from `.ci/install-qwen`) runs through
//! the shim, which puts the relay in its request path; the mock provider behind it decides each
//! key's fate (tests/support/mock.rs). Without the installed release these print SKIP (and fail
//! under CI).
//!
//! The settings are qwen's defaults on purpose (no `maxRetries: 0`): a plain 429 "Free allocated
//! quota exceeded." makes 0.24.4 retry for about an hour when it talks to the provider itself
//! (QWEN_FACTS_APIKEY.md §2); through the relay the answer must come in about one request's time.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;

use std::sync::Arc;
use std::time::Duration;

use mock::Mock;
use real_qwen::{Output, Sandbox, Version};

/// Keys that look real (`sk-…`, long): `real_looking_secrets` and the leak checks find them.
fn key(n: usize, behaviour: &str) -> String {
    format!("sk-e2e{n}-{behaviour}-A1b2C3d4E5f6G7h8I9j0K1l2M3n4")
}

/// 0.24.4 with API-key slots 1..=n on the mock, settings select openai, nothing else changed.
fn api_pool(behaviours: &[&str]) -> Option<(Mock, Sandbox, Vec<String>)> {
    let mock = Mock::start();
    let sb = Sandbox::new(Version::V0_24)?;
    sb.write_settings(Some("openai"), serde_json::json!({}));
    let keys: Vec<String> = behaviours
        .iter()
        .enumerate()
        .map(|(i, b)| key(i + 1, b))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        sb.add_api_key_slot(i + 1, k, &mock.base_url(), "mock-model");
    }
    Some((mock, sb, keys))
}

fn switches(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .collect()
}

/// No key on stderr, nor in what the shim wrote. (stdout is the mock's answer, which quotes the
/// key it was asked with by design: `REPLY-FROM-<key>`.)
fn assert_no_key_anywhere(sb: &Sandbox, out: &Output, keys: &[String]) {
    let files = [
        std::fs::read_to_string(sb.qwen_home.join("rotation.log")).unwrap_or_default(),
        sb.state_yaml(),
    ];
    for k in keys {
        assert!(
            !out.stderr().contains(k.as_str()),
            "a key on stderr\n{}",
            out.dump()
        );
        for f in &files {
            assert!(
                !f.contains(k.as_str()),
                "a key in rotation.log or state.yaml: {f}"
            );
        }
    }
}

/// Every bearer the mock saw is one of the real keys: the per-run token never left the shim.
fn assert_mock_saw_only_real_keys(mock: &Mock, keys: &[String]) {
    for t in mock.tokens() {
        assert!(
            keys.contains(&t),
            "the provider saw a bearer that is not a real key (the relay token?): {t:?}"
        );
    }
}

#[test]
fn headless_quota_on_key_1_is_answered_by_key_2_at_once() {
    let Some((mock, sb, keys)) = api_pool(&["quota", "ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    // Not qwen's hour of 429 retries: key 1 was asked once and every later request went to key
    // 2 (counted below, whatever the machine's load; the run's time is printed as a figure).
    let tokens = mock.tokens();
    assert_eq!(tokens.first(), Some(&keys[0]), "{tokens:?}");
    assert_eq!(
        tokens.iter().filter(|t| **t == keys[0]).count(),
        1,
        "key 1 was tried again: {tokens:?}"
    );
    assert!(tokens[1..].iter().all(|t| *t == keys[1]), "{tokens:?}");
    let sw = switches(&sb);
    assert_eq!(sw.len(), 1, "{sw:?}");
    assert_eq!(
        (sw[0]["from"].as_u64(), sw[0]["to"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(
        out.stderr()
            .contains("account 1 quota exhausted; switched to account 2"),
        "{}",
        out.dump()
    );
    assert_mock_saw_only_real_keys(&mock, &keys);
    assert_no_key_anywhere(&sb, &out, &keys);
    // The retried request reaches key 2 right after key 1's answer: no backoff of qwen's.
    let reqs = mock.chat_requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap < Duration::from_secs(2),
        "key 2 was asked {gap:?} after key 1"
    );
    eprintln!(
        "relay quota → key 2: run {:.1?}, key 1 → key 2 {gap:.1?}, {} requests",
        out.elapsed,
        tokens.len()
    );
}

#[test]
fn headless_all_keys_spent_ends_fast_with_exit_75() {
    let Some((mock, sb, keys)) = api_pool(&["quota_cp", "quota"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert_eq!(out.stdout(), "", "{}", out.dump());
    assert!(
        out.stderr().contains("all accounts exhausted"),
        "{}",
        out.dump()
    );
    // qwen gives up on the relay's answer at once (no SDK retries, no hour of rate-limit
    // rounds): each key is asked exactly once.
    assert_eq!(
        mock.tokens().iter().filter(|t| **t == keys[0]).count(),
        1,
        "{:?}",
        mock.tokens()
    );
    assert_eq!(
        mock.tokens().iter().filter(|t| **t == keys[1]).count(),
        1,
        "{:?}",
        mock.tokens()
    );
    assert_mock_saw_only_real_keys(&mock, &keys);
    assert_no_key_anywhere(&sb, &out, &keys);
}

/// The variables of every process of this sandbox's run (found by its unique QWEN_HOME).
fn sandbox_processes(sb: &Sandbox) -> Vec<(u32, Vec<String>, String)> {
    let marker = format!("QWEN_HOME={}", sb.qwen_home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if !vars.contains(&marker) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((pid, vars, cmdline));
    }
    found
}

#[test]
fn real_keys_never_enter_qwens_environment() {
    let Some((mock, sb, keys)) = api_pool(&["slow", "ok"]) else {
        return;
    };
    mock.set_slow_delay(Duration::from_secs(6));
    let sb = Arc::new(sb);
    let runner = {
        let sb = Arc::clone(&sb);
        std::thread::spawn(move || sb.run(&["-p", "hello"], None))
    };
    // A request is in flight (the mock holds it): qwen and the shim are all alive now.
    assert!(
        mock.wait_for(1, Duration::from_secs(60), |r| r
            .path
            .ends_with("/chat/completions")),
        "no request came"
    );
    let procs = sandbox_processes(&sb);
    let node: Vec<_> = procs
        .iter()
        .filter(|(_, _, cmd)| cmd.contains("node"))
        .collect();
    assert!(!node.is_empty(), "no qwen (node) process found: {procs:?}");
    for (pid, vars, cmd) in &procs {
        for k in &keys {
            assert!(
                !vars.iter().any(|v| v.contains(k.as_str())),
                "pid {pid} ({cmd}) has a real key in its environment"
            );
            assert!(
                !cmd.contains(k.as_str()),
                "pid {pid} has a real key in its argv"
            );
        }
    }
    for (pid, vars, cmd) in node {
        let get = |name: &str| {
            vars.iter()
                .find_map(|v| v.strip_prefix(&format!("{name}=")).map(str::to_string))
        };
        let base = get("OPENAI_BASE_URL").unwrap_or_default();
        assert!(
            base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
            "pid {pid} ({cmd}): OPENAI_BASE_URL={base}"
        );
        let token = get("OPENAI_API_KEY").unwrap_or_default();
        assert!(
            token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "pid {pid}: the key is not the run's token"
        );
        assert_eq!(get("OPENAI_MODEL").as_deref(), Some("mock-model"));
    }
    let out = runner.join().unwrap();
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[0]),
        "{}",
        out.dump()
    );
    assert!(
        real_qwen::real_looking_secrets(&out.stderr()).is_empty(),
        "{}",
        out.dump()
    );
    assert_mock_saw_only_real_keys(&mock, &keys);
    assert_no_key_anywhere(&sb, &out, &keys);
}

// The interactive (pseudo-terminal) relay test belongs to the terminal suite (tests/pty.rs).

#[test]
fn a_proxy_in_the_environment_does_not_capture_the_relay() {
    // qwen 0.24 sends every request through HTTPS_PROXY (undici's EnvHttpProxyAgent) unless
    // NO_PROXY exempts the host: the shim must exempt its relay on 127.0.0.1. The provider here
    // is plain http, which the relay (like curl) does not send through an HTTPS_PROXY.
    let Some((mock, mut sb, keys)) = api_pool(&["quota", "ok"]) else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_proxy = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    sb.env("HTTPS_PROXY", &dead_proxy)
        .env("https_proxy", &dead_proxy);
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    assert_mock_saw_only_real_keys(&mock, &keys);
}

#[test]
fn headless_quota_inside_a_stream_reruns_on_key_2() {
    // 200 and then an error event: only output scanning sees it. run.rs rotates and reruns
    // qwen; the relay must follow that rotation (Relay::switch_to), or the rerun would go to
    // the spent key again.
    let Some((mock, sb, keys)) = api_pool(&["stream_quota", "ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    let tokens = mock.tokens();
    assert_eq!(tokens.first(), Some(&keys[0]), "{tokens:?}");
    assert!(
        tokens[1..].iter().all(|t| *t == keys[1]),
        "the rerun went to the spent key: {tokens:?}"
    );
    assert_eq!(switches(&sb).len(), 1, "{:?}", switches(&sb));
    assert_mock_saw_only_real_keys(&mock, &keys);
    assert_no_key_anywhere(&sb, &out, &keys);
}

/// A repository's `.qwen/settings.json` (untrusted content) that names the pool's model under
/// `modelProviders` with its own `baseUrl` cannot collect the real key: the relay cannot sit in
/// that path, and the shim then gives qwen no key for it (one warning naming the file) instead
/// of the real key qwen 0.24.4 would send to that URL. Before, the key reached that endpoint.
#[test]
fn a_workspace_model_provider_never_receives_the_real_key() {
    let Some((mock, sb, keys)) = api_pool(&["ok"]) else {
        return;
    };
    let collector = Mock::start();
    let workspace = sb.work.join(".qwen");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(
        workspace.join("settings.json"),
        serde_json::json!({"modelProviders": {"openai": [{
            "id": "mock-model",
            "baseUrl": collector.base_url(),
            "envKey": "OPENAI_API_KEY",
        }]}})
        .to_string(),
    )
    .unwrap();
    let out = sb.run(&["-p", "hello"], None);
    let seen = collector.requests();
    println!(
        "workspace provider: exit {:?}, {} requests at the repository's endpoint, tokens {:?}",
        out.status.code(),
        seen.len(),
        seen.iter().map(|r| r.token.len()).collect::<Vec<_>>()
    );
    for r in &seen {
        assert!(
            !keys.iter().any(|k| r.token.contains(k.as_str())),
            "the repository's endpoint received the real key\n{}",
            out.dump()
        );
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    let stderr = out.stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("qwen-rotation:"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line expected\n{}", out.dump());
    assert!(
        warnings[0].contains("work/.qwen/settings.json")
            && warnings[0].contains("mock-model")
            && warnings[0].contains("without that key"),
        "{}",
        out.dump()
    );
    // qwen's own failure without the key is not the account's: nothing marked, nothing rotated.
    assert!(
        !sb.state_yaml().contains("needs_login"),
        "{}",
        sb.state_yaml()
    );
    assert_ne!(out.status.code(), Some(75), "{}", out.dump());
    assert_no_key_anywhere(&sb, &out, &keys);
}

/// The caller's stderr is a pipe nobody reads any more (`qwen … 2>&1 | head -0`, a closed log):
/// the relay's notice of the switch cannot be printed, and the switch still answers qwen's
/// request from key 2. Before, the notice's `eprintln!` panicked the connection thread and
/// qwen waited about 2 minutes for an answer that never came.
#[test]
fn a_closed_stderr_does_not_stop_a_relayed_quota_switch() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let Some((mock, sb, keys)) = api_pool(&["quota", "ok"]) else {
        return;
    };
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let mut cmd = Command::new(sb.shim_dir.join("qwen"));
    cmd.args(["-p", "hello"])
        .current_dir(&sb.work)
        .env_clear()
        .env("PATH", sb.path_var(false))
        .env("HOME", &sb.home)
        .env("QWEN_HOME", &sb.qwen_home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(write_end))
        .process_group(0);
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = child.stdout.take().unwrap();
    let (tx, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        let _ = tx.send(text);
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            panic!("no answer within 60 s with stderr closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let stdout = got
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    println!(
        "closed stderr: {status:?} after {:.1?}, stdout {stdout:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0), "stdout: {stdout}");
    assert_eq!(stdout, format!("REPLY-FROM-{}\n", keys[1]));
    assert_eq!(switches(&sb).len(), 1);
    assert_mock_saw_only_real_keys(&mock, &keys);
}

/// Metering with the real qwen: the run line holds the tokens the provider reported, stats
/// shows them per account and day, an answer saying no request is left on key 1 rests it
/// before the next request (key 1 is asked once, qwen never sees a 429), status shows the last
/// remaining amounts, and no byte of the prompt or the answer is in the log or the state.
#[test]
fn metering_counts_tokens_and_remaining_zero_moves_the_next_run_to_key_2() {
    let Some((mock, sb, keys)) = api_pool(&["ok-remaining0", "ok"]) else {
        return;
    };
    let marker = "PROMPT-MARKER-7f3a";
    let out = sb.run(&["-p", &format!("say {marker}")], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[0]),
        "{}",
        out.dump()
    );
    // qwen may send more than one request in a run (the answer, then its own follow-ups):
    // the ones after key 1's answer already go to key 2.
    let first = 1;
    // The next run starts on key 2: key 1 said it had nothing left.
    let out2 = sb.run(&["-p", &format!("again {marker}")], None);
    assert_eq!(out2.code(), 0, "{}", out2.dump());
    assert_eq!(
        out2.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out2.dump()
    );
    let tokens = mock.tokens();
    assert_eq!(
        tokens.iter().filter(|t| **t == keys[0]).count(),
        first,
        "key 1 was asked after it said nothing was left: {tokens:?}"
    );
    assert_eq!(tokens.first(), Some(&keys[0]), "{tokens:?}");
    assert!(tokens[first..].iter().all(|t| *t == keys[1]), "{tokens:?}");
    let log = sb.rotation_log();
    let runs: Vec<&serde_json::Value> = log.iter().filter(|e| e["event"] == "run").collect();
    assert_eq!(runs.len(), 2, "{log:?}");
    let u1 = &runs[0]["usage"]["1"];
    assert_eq!(u1["requests"].as_u64(), Some(first as u64), "{:?}", runs[0]);
    assert_eq!(u1["ok"].as_u64(), Some(first as u64));
    // The mock reports 10 prompt and 5 answer tokens per answer.
    assert_eq!(u1["tokens_in"].as_u64(), Some(10 * first as u64));
    assert_eq!(u1["tokens_out"].as_u64(), Some(5 * first as u64));
    assert!(
        runs[1]["usage"]["2"]["tokens_in"].as_u64() >= Some(10),
        "{:?}",
        runs[1]
    );
    assert!(runs[1]["usage"].get("1").is_none(), "{:?}", runs[1]);
    let hits: Vec<&serde_json::Value> = log.iter().filter(|e| e["event"] == "cooldown").collect();
    assert_eq!(hits.len(), 1, "{log:?}");
    assert_eq!(hits[0]["phrase"], "remaining requests reached 0");
    assert!(
        out.stderr()
            .contains("account 1 has 0 requests left; switched to account 2"),
        "{}",
        out.dump()
    );
    // Neither the prompt nor the answer is kept.
    let kept = format!(
        "{}{}",
        std::fs::read_to_string(sb.qwen_home.join("rotation.log")).unwrap_or_default(),
        sb.state_yaml()
    );
    assert!(!kept.contains(marker), "the prompt was kept: {kept}");
    assert!(!kept.contains("REPLY-FROM"), "the answer was kept: {kept}");
    // Stats: requests and tokens per account and day, in JSON and in the table.
    let stats = sb.run(&["--rotation-stats", "--json"], None);
    assert_eq!(stats.code(), 0, "{}", stats.dump());
    let doc: serde_json::Value = serde_json::from_str(&stats.stdout()).unwrap();
    let day: Vec<&serde_json::Value> = doc["usage_by_day"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["slot"] == 1)
        .collect();
    assert_eq!(day.len(), 1, "{doc}");
    assert_eq!(day[0]["tokens_in"].as_u64(), Some(10 * first as u64));
    assert_eq!(
        doc["accounts"][0]["metered"]["requests"].as_u64(),
        Some(first as u64)
    );
    let table = sb.run(&["--rotation-stats"], None);
    assert!(
        table
            .stdout()
            .contains("Requests and tokens through the relay, by day and account:"),
        "{}",
        table.dump()
    );
    // Status: the last remaining amounts key 1 announced.
    let status = sb.run(&["--rotation-status", "--json"], None);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let a1 = doc["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["slot"] == 1)
        .unwrap();
    assert_eq!(a1["remaining"]["requests"].as_u64(), Some(0), "{doc}");
    assert_eq!(a1["remaining"]["tokens"].as_u64(), Some(90000), "{doc}");
    assert!(a1["remaining"]["requests_reset"].is_string(), "{doc}");
    let text = sb.run(&["--rotation-status"], None);
    assert!(
        text.stdout().contains("account 1: 0 requests (reset in"),
        "{}",
        text.dump()
    );
    assert_mock_saw_only_real_keys(&mock, &keys);
    assert_no_key_anywhere(&sb, &out, &keys);
}
