//! Scratch probes (ignored): run with --ignored --nocapture.
#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;
use mock::Mock;
use real_qwen::{Sandbox, Version};

#[test]
#[ignore]
fn probe_v024_env_alone() {
    for version_key in [None, Some(3), Some(4)] {
        let mock = Mock::start();
        let Some(mut sb) = Sandbox::new(Version::V0_24) else { return };
        let mut doc = serde_json::json!({"security":{"auth":{"selectedType":"qwen-oauth"}}});
        if let Some(v) = version_key { doc["$version"] = v.into(); }
        std::fs::write(sb.qwen_home.join("settings.json"), doc.to_string()).unwrap();
        sb.set_live_oauth("tokO_ok", &mock.url());
        sb.env("OPENAI_API_KEY", "keyK_ok").env("OPENAI_BASE_URL", mock.base_url()).env("OPENAI_MODEL", "m");
        for round in 0..2 {
            let out = sb.run_direct(&["-p", "hello"], None);
            eprintln!("== version {version_key:?} round {round}: rc {:?} tokens {:?}\n{}\nsettings now: {}", out.status.code(), mock.tokens(), out.stderr(),
                std::fs::read_to_string(sb.qwen_home.join("settings.json")).unwrap());
        }
    }
}

fn probe_case(version: Version, token: &str, oauth: bool, extra: serde_json::Value, args: &[&str]) -> String {
    let mock = Mock::start();
    let Some(mut sb) = Sandbox::new(version) else { return String::new() };
    sb.timeout = std::time::Duration::from_secs(240);
    if oauth {
        sb.write_settings(Some("qwen-oauth"), extra);
        sb.set_live_oauth(token, &mock.url());
    } else {
        sb.write_settings(Some("openai"), extra);
        sb.env("OPENAI_API_KEY", token).env("OPENAI_BASE_URL", mock.base_url()).env("OPENAI_MODEL", "m");
    }
    let out = sb.run_direct(args, None);
    let reqs = mock.chat_requests();
    let t0 = reqs.first().map(|r| r.at);
    let gaps: Vec<String> = reqs.iter().map(|r| format!("{:.1}", (r.at - t0.unwrap()).as_secs_f64())).collect();
    format!("{} {token} oauth={oauth} {args:?}: {:.1?} rc {:?} timed_out {} reqs {} at [{}]\nstderr: {}\n",
        version.as_str(), out.elapsed, out.status.code(), out.timed_out, reqs.len(), gaps.join(" "),
        out.stderr().chars().take(600).collect::<String>())
}

#[test]
#[ignore]
fn probe_retry_shortening() {
    let no = serde_json::json!({});
    let mr0 = serde_json::json!({"model":{"generationConfig":{"maxRetries":0}}});
    let cases: Vec<(Version, &str, bool, serde_json::Value)> = vec![
        (Version::V0_12, "t_fast_throttle", true, no.clone()),
        (Version::V0_12, "t_throttle", true, mr0.clone()),
        (Version::V0_12, "k_fast_throttle", false, no.clone()),
        (Version::V0_24, "k_fast_throttle", false, no.clone()),
        (Version::V0_24, "k_fast_throttle", false, mr0.clone()),
        (Version::V0_24, "k_fast_quota", false, mr0.clone()),
        (Version::V0_24, "k_fast_server_error", false, mr0.clone()),
    ];
    let handles: Vec<_> = cases.into_iter().map(|(v, t, o, e)| std::thread::spawn(move || probe_case(v, t, o, e, &["-p", "hello"]))).collect();
    for h in handles { eprintln!("{}", h.join().unwrap()); }
}
