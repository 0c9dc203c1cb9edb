//! The loopback relay for API-key slots (contents page; see the files below).

mod http;

pub use http::{Relay, Served, Setup, key_withheld, relay_possible, relay_possible_for};
