//! `qwen --rotation-demo`, `gemini --rotation-demo`, `claude --rotation-demo`: the whole job shown
//! on the real CLI of the profile, offline, in seconds, touching none of the person's files.
//!
//! A private temporary home, a provider built into the shim on 127.0.0.1 that speaks the
//! profile's wire format (`Profile::api.wire`: the OpenAI-compatible API for qwen, the Gemini API
//! for gemini, Anthropic's Messages API for claude; key 1 answers with the provider's quota
//! error, key 2 answers), two API-key accounts added by this same binary run as the CLI's name
//! (`--rotation-add --api-key`), one headless run of the real CLI through this same binary, and
//! the status table; each step is printed with the time it took.
//!
//! Invariants:
//! - Nothing of the person's is read or written: every child runs in the temporary home with a
//!   scrubbed environment (`home::KEPT`), and the home is removed on every way out, Ctrl-C and
//!   SIGTERM included, and a reader that goes away (`| head`) does not stop the clean-up.
//! - Every wait has a deadline.
//! - Output is plain text (the status table is coloured only when stdout is a terminal, by the
//!   status command itself).
//!
//! Exit codes: 0 the rotation worked · 1 it did not (one line on stderr says why: a port that
//! cannot be opened, a real CLI too new for this Node.js or one that does not start, the answer
//! never came) · 126/127 the real CLI is not executable / not found · 130, 143, 129 interrupted
//! by SIGINT, SIGTERM, SIGHUP.
//!
//! Files, lowest first: `http` (the provider's requests and answers) → `provider` (the built-in
//! provider) and `home` (the temporary home, the children, the deadlines and signals) → `child`
//! (running one child to its end, why a step failed) → `real` (the real CLI: what the demo does
//! differently per CLI, whether it starts here, the Node.js it needs) → `script` (the steps).
//! May import every layer below the management commands (admin dispatches here); nothing
//! imports demo but admin.

mod child;
mod home;
mod http;
mod provider;
mod real;
mod script;

pub use script::run;
