//! Repository hygiene as a test: every source file says what it owns (`//!` first), no
//! leftover `todo!`/`dbg!`/`unimplemented!`, lines within 100 columns, and the import
//! direction of `src/lib.rs` (storage never reaches up into net, shard or node).

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

/// Files of module `name` (`src/name.rs` and `src/name/`) never name `forbidden` paths.
fn assert_no_imports(name: &str, forbidden: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root.join(format!("{name}.rs"))];
    rust_files(&root.join(name), &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for upward in forbidden {
            assert!(!text.contains(upward), "{} imports {upward}", path.display());
        }
    }
}

#[test]
fn storage_does_not_import_upward() {
    assert_no_imports("storage", &["crate::net", "crate::shard", "crate::node", "crate::cli"]);
}

#[test]
fn resp_does_not_import_upward() {
    let forbidden = ["crate::net", "crate::shard", "crate::node", "crate::cli", "crate::storage"];
    assert_no_imports("resp", &forbidden);
}
