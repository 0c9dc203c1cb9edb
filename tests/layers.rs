//! The house rules of `src/`, checked over the code's own paths: layers import downward only,
//! no two files import each other in a circle, and no file grows past a size a reader can hold.
//!
//! The layers, bottom up (docs/ARCHITECTURE.md): the ground floor of vocabulary (`text`,
//! `fault`, then `model`, then the CLI's `profile`, then `error`, then `files`), then `cli`,
//! `locate`, `detect`, then `config`, then the vault, then `settings`, the relay, the run path,
//! the management commands, and the crate root. A file may name a module of a lower layer or of its own folder; never one above.
//!
//! Read as text (std only): every `crate::a`, `super::b` and `use` path outside `#[cfg(test)]`
//! and comments is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module's layer. A module missing here fails the test: place it.
const LAYERS: &[(&str, u32)] = &[
    ("text", 0),
    ("fault", 0),
    ("model", 1),
    ("profile", 2),
    ("error", 3),
    ("files", 4),
    ("cli", 10),
    ("locate", 10),
    ("detect", 10),
    ("config", 11),
    ("vault", 20),
    ("settings", 25),
    ("relay", 30),
    ("run", 40),
    ("demo", 45),
    ("dashboard", 48),
    ("admin", 50),
];

/// Non-test lines a file may have.
const MAX_LINES: usize = 650;

/// Edges and sizes that break the rules, each to be removed by the change that fixes it. None
/// today: the last upward edge (config → vault, while `Paths` carried the environment pool)
/// ended when the vault took over where its slots come from (`vault::SlotSource`).
const ALLOWED_UPWARD: &[(&str, &str)] = &[];
const ALLOWED_LARGE: &[&str] = &[];

#[test]
fn the_crate_root_is_a_module_list() {
    // Every path names the module that holds it: no item and no old name (a re-export of a
    // module that moved) at the root, so `crate::a::b` is always the file `src/a/b.rs`.
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let other: Vec<&str> = lib
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .filter(|l| !l.starts_with("pub mod ") || !l.ends_with(';'))
        .collect();
    assert!(
        other.is_empty(),
        "src/lib.rs holds more than `pub mod` lines: {other:?}"
    );
}

#[test]
fn layers_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    let mut problems = tree.upward_imports();
    problems.retain(|(from, to, _)| !ALLOWED_UPWARD.contains(&(from.as_str(), to.as_str())));
    assert!(
        problems.is_empty(),
        "imports that run upward (file → module it names):\n{}",
        problems
            .iter()
            .map(|(from, to, file)| format!("  {file}: {from} → {to}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let circle = Tree::read(&src).file_circle();
    assert!(
        circle.is_none(),
        "an import circle: {}",
        circle.unwrap().join(" → ")
    );
}

#[test]
fn no_file_is_longer_than_a_reader_can_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    let large: Vec<String> = tree
        .files
        .iter()
        .filter(|f| f.lines > MAX_LINES && !ALLOWED_LARGE.contains(&f.name.as_str()))
        .map(|f| format!("  {} ({} non-test lines)", f.name, f.lines))
        .collect();
    assert!(
        large.is_empty(),
        "files over {MAX_LINES} lines of non-test code:\n{}",
        large.join("\n")
    );
}

/// docs/ARCHITECTURE.md names only files and folders that exist, and names every folder.
#[test]
fn the_architecture_page_names_what_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let named: BTreeSet<&str> = page
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("src/"))
        .collect();
    let missing: Vec<&&str> = named.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(missing.is_empty(), "named but missing: {missing:?}");
    for dir in fs::read_dir(root.join("src")).unwrap().flatten() {
        if dir.path().is_dir() {
            let name = format!("src/{}/", dir.file_name().to_string_lossy());
            assert!(named.contains(name.as_str()), "{name} is not described");
        }
    }
}

/// The checker finds what it is meant to find: an upward import and a circle in a small tree.
#[test]
fn the_checker_finds_an_upward_import_and_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir_all(src.join("vault")).unwrap();
    fs::write(src.join("lib.rs"), "pub mod text;\npub mod vault;\n").unwrap();
    fs::write(src.join("text.rs"), "use crate::vault::Vault;\n").unwrap();
    fs::write(src.join("vault/mod.rs"), "mod a;\nmod b;\n").unwrap();
    fs::write(src.join("vault/a.rs"), "use super::b::B;\npub struct A;\n").unwrap();
    fs::write(
        src.join("vault/b.rs"),
        "use crate::vault::a::A;\npub struct B;\n#[cfg(test)]\nmod tests { use crate::admin::X; }\n",
    )
    .unwrap();
    let tree = Tree::read(src);
    let upward = tree.upward_imports();
    assert_eq!(
        upward,
        [(
            "text".to_string(),
            "vault".to_string(),
            "text.rs".to_string()
        )]
    );
    let circle = tree.file_circle().expect("the a ↔ b circle");
    assert!(
        circle.contains(&"vault/a.rs".to_string()) && circle.contains(&"vault/b.rs".to_string()),
        "{circle:?}"
    );
}

struct File {
    /// Path under src/, with `/`.
    name: String,
    /// The top-level module it belongs to (`vault` for `vault/tx.rs`; `lib` for lib.rs).
    module: String,
    /// Non-test lines.
    lines: usize,
    /// The paths it names: (top-level module, the file it resolves to if one does).
    names: BTreeSet<(String, Option<String>)>,
}

struct Tree {
    files: Vec<File>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut paths = Vec::new();
        walk(src, &mut paths);
        paths.sort();
        let known: BTreeSet<String> = paths.iter().map(|p| rel(src, p)).collect();
        let files = paths
            .iter()
            .map(|p| {
                let name = rel(src, p);
                let code = non_test_code(&fs::read_to_string(p).unwrap());
                let module = name
                    .split(['/', '.'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let names = named(&code, &name, &known);
                File {
                    lines: code.lines().count(),
                    name,
                    module,
                    names,
                }
            })
            .collect();
        Tree { files }
    }

    /// (from module, to module, file) for every name of a higher layer.
    fn upward_imports(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for f in &self.files {
            if matches!(f.module.as_str(), "lib" | "main") {
                continue;
            }
            let from = layer(&f.module);
            for (to, _) in &f.names {
                if *to != f.module && layer(to) >= from {
                    out.push((f.module.clone(), to.clone(), f.name.clone()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A cycle among files (a file naming another file), if there is one. A folder's mod.rs
    /// declaring its children is not an edge; a child naming something its folder re-exports
    /// is an edge to mod.rs.
    fn file_circle(&self) -> Option<Vec<String>> {
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for f in &self.files {
            let set = edges.entry(f.name.as_str()).or_default();
            for (module, target) in &f.names {
                let allowed = ALLOWED_UPWARD.contains(&(f.module.as_str(), module.as_str()));
                if let Some(t) = target
                    && t != &f.name
                    && !allowed
                {
                    set.insert(t.as_str());
                }
            }
        }
        // Depth-first search with colours: grey on the stack, black done.
        let mut colour: BTreeMap<&str, u8> = BTreeMap::new();
        let mut stack: Vec<&str> = Vec::new();
        fn visit<'a>(
            n: &'a str,
            edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
            colour: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            colour.insert(n, 1);
            stack.push(n);
            for &m in edges.get(n).into_iter().flatten() {
                match colour.get(m) {
                    Some(1) => {
                        let start = stack.iter().position(|s| *s == m).unwrap();
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|s| s.to_string()).collect();
                        cycle.push(m.to_string());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(m, edges, colour, stack) {
                            return Some(c);
                        }
                    }
                }
            }
            stack.pop();
            colour.insert(n, 2);
            None
        }
        let nodes: Vec<&str> = edges.keys().copied().collect();
        for n in nodes {
            if !colour.contains_key(n)
                && let Some(c) = visit(n, &edges, &mut colour, &mut stack)
            {
                return Some(c);
            }
        }
        None
    }
}

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in tests/layers.rs: place it"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn rel(src: &Path, p: &Path) -> String {
    p.strip_prefix(src)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// The text before the first `#[cfg(test)]`, without `//` comments.
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string ("http://…") is not a comment; such lines name no module.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules (and files) a file's code names through `crate::` and `super::` paths,
/// including those inside `use a::{b, c}` groups.
fn named(code: &str, file: &str, known: &BTreeSet<String>) -> BTreeSet<(String, Option<String>)> {
    let mut out = BTreeSet::new();
    // The folders a file sits in (`vault/tx.rs` → ["vault"]; a top-level file → none).
    let mut folder: Vec<&str> = file.split('/').collect();
    folder.pop();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", parent_of(file, &folder)),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            for path in expand(rest) {
                let mut segs = base.clone();
                segs.extend(path.iter().map(String::as_str));
                if let Some(n) = resolve(&segs, known) {
                    out.insert(n);
                }
            }
        }
    }
    out.retain(|(m, target)| m != "lib" && target.as_deref() != Some(file) && !m.is_empty());
    out
}

/// The module path a file's `super::` starts from.
fn parent_of<'a>(file: &'a str, folder: &[&'a str]) -> Vec<&'a str> {
    if file.ends_with("/mod.rs") {
        folder[..folder.len().saturating_sub(1)].to_vec()
    } else {
        folder.to_vec()
    }
}

/// The paths named at the start of `text` (`a::b::C`, or every leaf of `a::{b, c::D}`), as
/// lists of segments.
fn expand(text: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix("::") {
            rest = r;
            if let Some(group) = rest.strip_prefix('{') {
                let close = matching_brace(group);
                return split_top(&group[..close])
                    .into_iter()
                    .flat_map(|item| {
                        expand(item.trim())
                            .into_iter()
                            .map(|tail| segs.iter().cloned().chain(tail).collect())
                            .collect::<Vec<Vec<String>>>()
                    })
                    .collect();
            }
        } else {
            break;
        }
    }
    vec![segs]
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The top-level module a path names, and the deepest file of the tree it reaches.
fn resolve(segs: &[&str], known: &BTreeSet<String>) -> Option<(String, Option<String>)> {
    let module = *segs.first()?;
    // Only modules of the tree count: `super::f` inside an inline module (`mod ts { … }`)
    // names its own file's items, and the crate root holds no items (see `the_crate_root_is_a_module_list`).
    if !known.contains(&format!("{module}.rs")) && !known.contains(&format!("{module}/mod.rs")) {
        return None;
    }
    let mut file = None;
    for depth in 1..=segs.len() {
        let dir = segs[..depth].join("/");
        for candidate in [format!("{dir}.rs"), format!("{dir}/mod.rs")] {
            if known.contains(&candidate) {
                file = Some(candidate);
            }
        }
    }
    Some((module.to_string(), file))
}
