//! `qwen --rotation-<command>`: the management commands a person (or a script) runs.

mod doctor_home;

pub use doctor_home::run;
