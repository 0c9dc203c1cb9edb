//! The shared pool with the REAL qwen 0.24.4: two hosts (two sandboxes, two qwen homes) with
//! the same two API keys, one Redis, the mock provider behind the relay. Without the installed
//! release these print SKIP (and fail under CI).

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;
#[path = "support/redis.rs"]
mod redis_server;

use mock::Mock;
use real_qwen::{Sandbox, Version};
use redis_server::Redis;

fn key(n: usize, behaviour: &str) -> String {
    format!("sk-fleet{n}-{behaviour}-A1b2C3d4E5f6G7h8I9j0K1l2M3n4")
}

/// A host: 0.24.4 with API-key slots for `keys` on the mock, the pool in Redis.
fn host(mock: &Mock, redis: &Redis, keys: &[String]) -> Option<Sandbox> {
    let mut sb = Sandbox::new(Version::V0_24)?;
    sb.write_settings(Some("openai"), serde_json::json!({}));
    for (i, k) in keys.iter().enumerate() {
        sb.add_api_key_slot(i + 1, k, &mock.base_url(), "mock-model");
    }
    sb.env("QWEN_ROTATION_POOL", redis.url());
    Some(sb)
}

#[test]
fn key_1_spent_on_host_a_sends_host_b_straight_to_key_2() {
    let mock = Mock::start();
    let redis = Redis::start();
    let keys = vec![key(1, "quota"), key(2, "ok")];
    let (Some(a), Some(b)) = (host(&mock, &redis, &keys), host(&mock, &redis, &keys)) else {
        return;
    };
    let out = a.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    let asked_key_1 = |tokens: &[String]| tokens.iter().filter(|t| **t == keys[0]).count();
    assert_eq!(asked_key_1(&mock.tokens()), 1, "{:?}", mock.tokens());
    // Host B never saw key 1 fail: its run goes to key 2 at once, key 1 is not asked again.
    let before = mock.tokens().len();
    let out = b.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(
        out.stdout(),
        format!("REPLY-FROM-{}\n", keys[1]),
        "{}",
        out.dump()
    );
    let tokens = mock.tokens();
    assert!(tokens.len() > before, "{tokens:?}");
    assert_eq!(asked_key_1(&tokens), 1, "key 1 was asked again: {tokens:?}");
    assert!(
        !out.stderr().contains("quota exhausted"),
        "host B saw no quota hit of its own: {}",
        out.dump()
    );
    // One switch in the fleet's log, and no key in Redis.
    let switches = redis
        .events("default")
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .count();
    assert_eq!(switches, 1);
    for (k, v) in redis.dump("") {
        for key in &keys {
            assert!(
                !v.contains(key.as_str()) && !k.contains(key.as_str()),
                "a key in Redis: {k}"
            );
        }
    }
}
