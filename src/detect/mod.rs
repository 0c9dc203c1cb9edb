//! Quota detection (being split into files).

mod detector;

pub use detector::*;
