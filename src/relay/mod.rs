//! The loopback relay for API-key slots: qwen talks to us on 127.0.0.1, we talk to the provider.
//!
//! Invariant: a request that carries the run's token is sent to exactly one slot at a time, the
//! slot the relay holds as current when the request starts, with that slot's real key; a quota,
//! throttle or auth answer is never shown to qwen while another API-key slot can take the same
//! request (each move goes through [`Vault::report`], the one rotation step with its lock, its
//! log line and its counters), and every other answer reaches qwen unchanged and unbuffered. The
//! real keys never leave this process except in the `Authorization` header sent upstream; the
//! per-run token never leaves it except in qwen's environment (wherever qwen puts it in a
//! request, a header, the query, the path or the body, it is dropped or replaced before the
//! request goes upstream).
//!
//! Why it exists (DESIGN.md, "Request-level rotation"): qwen 0.24 retries a plain 429 for about
//! an hour and never re-reads its key, so output scanning alone is slow and needs a restart. In
//! the request path a quota answer is seen in milliseconds and the same request is re-sent on
//! the next key; qwen, headless or interactive, only sees the answer that worked.
//!
//! Anyone on this machine can connect to the port, so the relay assumes hostile local clients:
//! at most [`MAX_CONNS`] connections are held, of which a quarter may not have shown
//! the token (the oldest of those is dropped for a newcomer, so a flood of token-less
//! connections never locks qwen out), a request head must arrive whole within [`HEAD_TIMEOUT`]
//! (a total, not an idle timeout each byte resets: slowloris), and a request without the token
//! is answered from its head alone, before any byte of its body is read into memory. A panic in
//! a connection thread still answers the request it was serving (a 502 qwen shows and gives up
//! on), and a notice that cannot be printed never stops a request.
//!
//! Shape: plain std threads, one per connection (undici keeps a few connections alive and
//! reuses them), HTTP/1.1 with keep-alive; upstream through one `ureq` agent per proxy route
//! (connection pool, system trust store, `HTTPS_PROXY`/`NO_PROXY`). Answers are streamed back
//! chunk by chunk and flushed per chunk, so server-sent events reach qwen as they arrive.
//!
//! Files, lowest first (a file imports only siblings above it; `meter`, `proxy` and `http` import none):
//! - `meter`: what is measured as an answer passes (tokens, an error event in a stream,
//!   the `x-ratelimit-*` headers), without holding a byte back;
//! - `proxy`: one `ureq` agent per way out (`HTTPS_PROXY`/`NO_PROXY` as curl reads them);
//! - `http`: qwen's requests read within limits, the relay's own answers, answers written back;
//! - `shared`: what connection threads share (current slot, rotation step, connection table);
//! - `upstream`: a request sent to the provider, classified, re-sent on the next slot;
//! - `server`: the accept loop, one thread per connection, the token check;
//! - `start`: [`Relay`] (start, stop, qwen's environment) and [`Setup`];
//! - `gate`: whether the relay can stand in qwen's path ([`relay_possible_for`]) and whether a
//!   key must be withheld ([`key_withheld`]); uses only `upstream::shown_url`.
//!
//! May import: the ground floor (text, model, fault, error, files), config, detect and vault.
//!
//! [`Vault::report`]: crate::vault::Vault::report
//! [`MAX_CONNS`]: shared::MAX_CONNS
//! [`HEAD_TIMEOUT`]: server::HEAD_TIMEOUT

mod gate;
mod http;
mod meter;
mod proxy;
mod server;
mod shared;
mod start;
mod upstream;

pub use gate::{key_withheld, relay_possible, relay_possible_for};
pub use meter::{Metered, Seen};
pub use shared::Served;
pub use start::{Relay, Setup, apply_env, inside_login_run, login_base};
