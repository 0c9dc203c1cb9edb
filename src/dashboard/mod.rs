//! `qwen --rotation-dashboard` and `--rotation-report FILE.html`: the pool on a page.
//!
//! The dashboard reads the pool only through the vault's read API (the overview and history
//! that `--rotation-status` and `--rotation-stats` read), so it shows whatever store holds the
//! pool. Invariants: only labels, kinds, statuses, times and counts are ever served or written
//! (never a key, token, file's contents or base URL); the server listens on 127.0.0.1 only and
//! answers nothing without its token; the page needs nothing from outside the binary.
//!
//! Files, lowest first: `snapshot` (the pool as one JSON document) → `metrics` (that document
//! as Prometheus text), `page` (the embedded HTML/CSS/JS, live or with the data inlined, and
//! the report) → `http` (one bounded request, the token compare, answers) → `server` (the
//! listener, the watcher and the event streams).
//! Imports only what is below it (vocabulary, files, config, vault); only admin imports it.

mod http;
mod metrics;
mod page;
mod server;
mod snapshot;

pub use metrics::prometheus;
pub use page::{page, write_report};
pub use server::{MAX_CONNS, serve};
pub use snapshot::{build, snapshot};
