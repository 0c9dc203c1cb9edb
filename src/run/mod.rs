//! The run path (being split into files).

mod interactive;
pub mod pipes;
pub mod signals;
pub mod terminal;

pub use interactive::{fail, main};
