//! The account vault (being split into files by concern).

pub mod audit;
pub mod env_pool;
mod manage;
pub mod state;

pub use manage::*;
