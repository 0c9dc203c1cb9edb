//! The ways out to the provider: one `ureq` agent per route (direct, HTTPS proxy, HTTP proxy),
//! chosen per target URL by curl's `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` rules.
//! Invariant: only the connection is bounded in time; a slow answer is never cut off here.

use std::time::Duration;

/// Connecting to the provider (DNS, TCP, proxy tunnel and TLS handshake together). Only the
/// connection is bounded: a model may think for minutes before its first byte, and a stream may
/// pause, so nothing else is (qwen has its own request timeout and closes the connection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Proxies: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, as curl reads them
// ---------------------------------------------------------------------------------------------

/// One agent (and connection pool) per way out. ureq's own `Proxy::try_from_env` takes the
/// first of ALL_PROXY, HTTPS_PROXY, HTTP_PROXY for every scheme; curl, node and qwen choose by
/// the target's scheme, so the relay does too.
pub(super) struct Routes {
    direct: ureq::Agent,
    https: Option<ureq::Agent>,
    http: Option<ureq::Agent>,
    no_proxy: Vec<String>,
}

impl Routes {
    pub(super) fn from_env() -> Routes {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let proxy = |names: &[&str]| var(names).and_then(|v| ureq::Proxy::new(v.trim()).ok());
        let https = proxy(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]);
        let http = proxy(&["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"]);
        let no_proxy = var(&["NO_PROXY", "no_proxy"])
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Routes {
            direct: agent(None),
            https: https.map(|p| agent(Some(p))),
            http: http.map(|p| agent(Some(p))),
            no_proxy,
        }
    }

    pub(super) fn agent_for(&self, url: &str) -> &ureq::Agent {
        let Ok(uri) = url.parse::<ureq::http::Uri>() else {
            return &self.direct;
        };
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if no_proxy_matches(&self.no_proxy, &host) {
            return &self.direct;
        }
        let via = if uri.scheme_str() == Some("https") {
            &self.https
        } else {
            &self.http
        };
        via.as_ref().unwrap_or(&self.direct)
    }
}

/// curl's rules: `*` matches everything; `example.com` and `.example.com` match the host and
/// its subdomains; a `:port` suffix is ignored.
fn no_proxy_matches(entries: &[String], host: &str) -> bool {
    entries.iter().any(|e| {
        if e == "*" {
            return true;
        }
        let e = e.trim_start_matches("*.").trim_start_matches('.');
        let e = match e.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => e,
        };
        let e = e.trim_start_matches('[').trim_end_matches(']');
        !e.is_empty() && (host == e || host.strip_suffix(e).is_some_and(|rest| rest.ends_with('.')))
    })
}

fn agent(proxy: Option<ureq::Proxy>) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    let config = ureq::Agent::config_builder()
        // Error statuses are answers to relay (and to classify), not failures.
        .http_status_as_error(false)
        // Redirects go back to qwen as they came.
        .max_redirects(0)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .proxy(proxy)
        // The system's trust store, so a corporate CA installed on the machine works.
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        // ureq's own defaults (`accept: */*`, its user agent) are not added when qwen set none.
        .accept("")
        .max_idle_connections_per_host(8)
        .max_idle_age(Duration::from_secs(60))
        .build();
    ureq::Agent::new_with_config(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_follows_curl() {
        let entries: Vec<String> = [
            "localhost",
            ".internal.test",
            "10.0.0.1:8080",
            "*.corp.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(no_proxy_matches(&entries, "localhost"));
        assert!(no_proxy_matches(&entries, "a.internal.test"));
        assert!(no_proxy_matches(&entries, "internal.test"));
        assert!(no_proxy_matches(&entries, "10.0.0.1"));
        assert!(no_proxy_matches(&entries, "x.corp.test"));
        assert!(!no_proxy_matches(&entries, "notinternal.test"));
        assert!(!no_proxy_matches(&entries, "api.example.com"));
        assert!(no_proxy_matches(&["*".to_string()], "anything"));
    }
}
