//! admin (stub until the management commands land)

pub fn run(_args: &[String], _paths: &crate::config::Paths) -> i32 {
    eprintln!("qwen-rotation: management commands are not built yet");
    2
}
