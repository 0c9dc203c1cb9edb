//! qwen-rotation: a drop-in `qwen` that rotates accounts when one runs out of quota.
//!
//! The binary (`src/main.rs`) reads like a contents page; each module answers one question.

pub mod admin;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod detect;
pub mod error;
pub mod fault;
pub mod files;
pub mod locate;
pub mod model;
pub mod profile;
pub mod relay;
pub mod run;
pub mod settings;
pub mod text;
pub mod vault;
