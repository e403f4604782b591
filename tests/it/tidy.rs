//! Repository hygiene as a test: every source file says what it owns (`//!` first), no
//! leftover `todo!`/`dbg!`/`unimplemented!`, lines within 100 columns, the layers of
//! `src/` (each module names only the modules below it), and no import circle between files.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && name != "generated" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "schema/src", "client/src", "loadgen/src", "tests", "bench"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "tidy found too few files: {files:?}");
    files
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "files without a leading //! doc: {missing:?}");
}

#[test]
fn no_stubs_or_debug_macros_and_short_lines() {
    let banned = [concat!("todo", "!("), concat!("dbg", "!("), concat!("unimplemented", "!(")];
    let mut problems = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) {
                problems.push(format!("{}:{}: stub or debug macro", path.display(), n + 1));
            }
            if line.chars().count() > 100 {
                problems.push(format!("{}:{}: over 100 columns", path.display(), n + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The layers of `src/`, lowest first, as `(module, the crate modules it may name)`.
/// `schema` (the `corekv_schema` crate) is below them all; `testing` (cfg(test) helpers)
/// may be named by any test code. docs/ARCHITECTURE.md draws the same map.
const LAYERS: &[(&str, &[&str])] = &[
    ("tls", &[]),
    ("config", &["tls"]),
    ("error", &["config"]),
    ("time", &[]),
    ("counters", &[]),
    ("waiting", &[]),
    ("shutdown", &[]),
    ("testing", &[]),
    ("resp", &[]),
    ("auth", &["resp"]),
    ("storage", &["config", "error", "time", "counters"]),
    ("cluster", &["config", "error", "time", "counters", "waiting", "tls", "storage"]),
    (
        "shard",
        &[
            "config", "error", "time", "counters", "waiting", "shutdown", "resp", "auth",
            "storage", "cluster",
        ],
    ),
    ("net", &["config", "error", "time", "shutdown", "tls", "resp", "auth", "shard", "cluster"]),
    ("admin", &["config", "error", "time", "shutdown", "tls", "auth", "shard", "cluster"]),
    ("cli", &["config", "auth"]),
    ("devcluster", &["config"]),
    (
        "node",
        &[
            "config", "error", "time", "waiting", "shutdown", "tls", "auth", "storage", "cluster",
            "shard", "net", "admin",
        ],
    ),
];

/// The code of a file that counts for imports: no comment lines, and nothing from the first
/// `#[cfg(test)]` on (inline test modules sit at the end of a file).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::NAME` a text names.
fn crate_modules(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, _)| {
            code[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        })
        .collect()
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (module, allowed) in LAYERS {
        let mut files = vec![src.join(format!("{module}.rs"))];
        rust_files(&src.join(module), &mut files);
        for path in files.iter().filter(|p| p.exists()) {
            let code = code_of(path);
            for named in crate_modules(&code) {
                let free = named == *module || named == "testing";
                if !free && !allowed.contains(&named.as_str()) {
                    problems.push(format!("{} ({module}) names crate::{named}", path.display()));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "imports against the layers:\n{}", problems.join("\n"));
    // Every module of src/ has its place (a new one must be added above).
    let mut unplaced = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_string();
        if !["lib", "main"].contains(&name.as_str()) && !LAYERS.iter().any(|(m, _)| *m == name) {
            unplaced.push(name);
        }
    }
    assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
}

/// The file a module path names (`["shard", "mesh", "Call"]` → `src/shard/mesh.rs`): the
/// deepest prefix that is a file.
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let file = src.join(path[..n].join("/")).with_extension("rs");
        file.exists().then_some(file)
    })
}

/// The module path of a file (`src/shard/mesh.rs` → `["shard", "mesh"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    rel.iter().map(|c| c.to_string_lossy().into_owned()).collect()
}

/// The files `file` names: `crate::a::b` paths, `super::` paths, and paths through the child
/// modules it declares. A parent's `pub use child::Item` re-export is not a use of the child.
fn named_files(src: &Path, file: &Path) -> Vec<PathBuf> {
    let code = code_of(file);
    let me = module_of(src, file);
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_string)
        })
        .collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("pub use "))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = &code[..];
    while let Some(at) = rest.find(|c: char| c.is_alphabetic()) {
        let word: String = rest[at..].chars().take_while(|c| ident(*c)).collect();
        let before = rest[..at].chars().last();
        let after = &rest[at + word.len()..];
        rest = &rest[at + word.len().max(1)..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') || !word.contains("::") {
            continue;
        }
        let mut parts: Vec<String> =
            word.split("::").filter(|p| !p.is_empty()).map(str::to_string).collect();
        // `path::{a, b::c}`: each item of the group is a path of its own.
        let group: Vec<String> = match (word.ends_with("::"), after.strip_prefix('{')) {
            (true, Some(inner)) => inner[..inner.find('}').unwrap_or(0)]
                .split(',')
                .map(|i| i.trim().split("::").next().unwrap_or("").to_string())
                .filter(|i| i.chars().next().is_some_and(|c| c.is_alphabetic()))
                .collect(),
            _ => Vec::new(),
        };
        let Some(first) = parts.first().cloned() else { continue };
        let base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "super" => {
                let ups = parts.iter().take_while(|p| *p == "super").count();
                parts.drain(..ups);
                me[..me.len().saturating_sub(ups)].to_vec()
            }
            child if children.iter().any(|c| c == child) => me.clone(),
            _ => continue,
        };
        if first == "crate" {
            parts.remove(0);
        }
        let heads: Vec<Vec<String>> = if group.is_empty() {
            vec![parts.clone()]
        } else {
            group.iter().map(|g| parts.iter().cloned().chain([g.clone()]).collect()).collect()
        };
        for head in heads {
            let path: Vec<String> = base.iter().cloned().chain(head).collect();
            if let Some(target) = file_of(src, &path).filter(|t| t != file) {
                out.push(target);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn no_import_circle_between_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let edges: Vec<(PathBuf, Vec<PathBuf>)> =
        files.iter().map(|f| (f.clone(), named_files(&src, f))).collect();
    assert!(edges.iter().map(|(_, e)| e.len()).sum::<usize>() > 50, "too few imports found");
    // Depth-first search; a file met again while it is on the stack closes a circle.
    fn visit(
        f: &Path,
        edges: &[(PathBuf, Vec<PathBuf>)],
        stack: &mut Vec<PathBuf>,
        done: &mut Vec<PathBuf>,
        circles: &mut Vec<String>,
    ) {
        if done.iter().any(|d| d == f) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == f) {
            let names: Vec<_> = stack[at..].iter().map(|p| p.display().to_string()).collect();
            circles.push(names.join(" -> "));
            return;
        }
        stack.push(f.to_path_buf());
        let next = edges.iter().find(|(from, _)| from == f).map(|(_, to)| to.clone());
        for to in next.unwrap_or_default() {
            visit(&to, edges, stack, done, circles);
        }
        stack.pop();
        done.push(f.to_path_buf());
    }
    let (mut done, mut circles) = (Vec::new(), Vec::new());
    for f in &files {
        visit(f, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}
