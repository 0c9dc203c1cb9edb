//! Interactive sessions on a pseudo-terminal (being split into files).

mod session;

pub use session::*;
